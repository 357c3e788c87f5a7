//! The database layer: the schema, its migrations, and every SQL statement the
//! master runs, including the claim protocol (DESIGN.md, "The claim protocol").
//!
//! A [`Store`] wraps a connection pool to MySQL/MariaDB or SQLite and is cheap
//! to clone. Each query is written once: the `with_pool!` macro expands a body
//! for both pool types, and [`dialect::Dialect`] supplies the few fragments
//! that differ (the clock, `SKIP LOCKED`, `INSERT IGNORE`).
//!
//! Rules every statement here keeps:
//! - Time is the database's clock (`NOW(6)` / `strftime(..,'now')`), never ours.
//! - A claim is a compare-and-swap: an `UPDATE` whose `WHERE` names the state
//!   it expects, and the rows it changed are the ones won.
//! - Every write about a request or build a master owns carries
//!   `claimed_by_masterid = me` (fencing); taking over or releasing another
//!   master's claim names both its old owner and its old `claimed_at`.
//! - Write transactions on SQLite start with `BEGIN IMMEDIATE`, so concurrent
//!   writers queue on the busy timeout up front instead of failing when a
//!   read lock cannot be upgraded; on MySQL sessions run READ COMMITTED (no
//!   gap locks) in UTC.
//!
//! Submodules: [`types`] (data in and out), [`error`], `dialect`, `schema`
//! (migrations), `masters`, [`claims`] (the whole claim protocol, from pick
//! to reaping, and its two paths: stepwise and one trip on MySQL),
//! `buildset_finish`, `requests` (changes, buildsets), `buildset_reads`
//! (provenance), `builds` (steps), `logs`, `reads` and `change_reads` (API
//! listings), `outbox` and `report_deliveries` (the reporters' queue), `state` (key/value state and
//! object ownership), `janitor`, `presence`, `control`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Executor, Row};

/// Expand `$body` once per backend with `$pool` bound to the concrete pool and
/// `$d` to its [`dialect::Dialect`].
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $d:ident| $body:expr) => {
        match &$store.pool {
            $crate::db::Pool::MySql($pool) => {
                #[allow(unused_variables)]
                let $d = $crate::db::dialect::Dialect::MySql;
                // An early return (`?`) also leaves the guard armed: that
                // only costs a rollback on release, which is harmless.
                let guard = $crate::db::cancel::Guard::arm();
                #[allow(clippy::let_unit_value)]
                let value = $body;
                guard.disarm();
                value
            }
            $crate::db::Pool::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $d = $crate::db::dialect::Dialect::Sqlite;
                $body
            }
        }
    };
}

/// As `with_pool!` for a body that is one write transaction returning a
/// `Result`: run it again when the database aborted it as a deadlock victim,
/// lock-wait timeout or Galera certification failure (1213, also at
/// `COMMIT`), refused it on a Galera node not yet ready (1047), or found the
/// database busy (SQLite). Safe because such a transaction was rolled back
/// whole (or never began).
macro_rules! with_pool_retry {
    ($store:expr, |$pool:ident, $d:ident| $body:expr) => {
        $crate::db::retry_conflicts(|| async move { with_pool!($store, |$pool, $d| $body) }).await
    };
}

/// Commit the write transaction `$tx` of dialect `$d`, first making sure
/// (on MySQL) that the session is still inside it: if the server ended it
/// without telling the client (seen on Galera), the statements since then
/// ran on their own, guarded by `Dialect::in_tx` so that they changed
/// nothing, and the whole transaction must run again
/// (`DbError::TransactionEnded`, retried like a lock conflict).
macro_rules! commit_checked {
    ($tx:expr, $d:expr) => {{
        ensure_in_tx!($tx, $d);
        $tx.commit().await?;
    }};
}

/// Return `DbError::TransactionEnded` if the write transaction `$tx` of
/// dialect `$d` has ended under it (MySQL); see `commit_checked!`. Also for a
/// guarded compare-and-swap that changed nothing, before taking that as a
/// lost race.
macro_rules! ensure_in_tx {
    ($tx:expr, $d:expr) => {{
        if $d == $crate::db::dialect::Dialect::MySql {
            let open: i64 = sqlx::query_scalar("SELECT CAST(@@in_transaction AS SIGNED)")
                .fetch_one(&mut *$tx)
                .await?;
            if open != 1 {
                return Err($crate::db::DbError::TransactionEnded.into());
            }
        }
    }};
}

mod builds;
pub(crate) mod buildset_finish;
mod buildset_reads;
mod cancel;
mod change_reads;
pub mod claims;
mod control;
pub(crate) mod dialect;
pub mod error;
mod heartbeat;
mod janitor;
mod logs;
mod masters;
pub mod outbox;
mod presence;
mod reads;
mod recount;
mod report_deliveries;
mod requests;
pub(crate) mod rows;
mod schedulers;
mod schema;
mod state;
pub mod types;

pub use claims::{Claim, ClaimRound};
pub use control::LastBuild;
pub use error::DbError;
pub use heartbeat::HeartbeatLink;
pub use janitor::{Cutoffs, JanitorCounts};
pub use presence::WorkerPresence;
pub use report_deliveries::*;
pub use schedulers::{BuildsetStatus, ChangeRow};
pub use types::*;

/// Default pool size for MySQL; SQLite uses fewer (one writer at a time anyway).
const DEFAULT_MYSQL_CONNECTIONS: u32 = 10;
const DEFAULT_SQLITE_CONNECTIONS: u32 = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// `innodb_lock_wait_timeout` of every MySQL session.
const LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(5);
/// `idle_transaction_timeout` (whole seconds) of every MariaDB session
/// opened from now on: none of flotilla's transactions waits on its client
/// for more than a round trip. A master sets it to `master_timeout / 2`.
static IDLE_TRANSACTION_TIMEOUT_SECS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(10);

/// Set the `idle_transaction_timeout` of MariaDB sessions opened from now
/// on (at least one second).
pub fn set_idle_transaction_timeout(d: Duration) {
    let secs = d.as_secs_f64().ceil().max(1.0) as u64;
    IDLE_TRANSACTION_TIMEOUT_SECS.store(secs, std::sync::atomic::Ordering::Relaxed);
}

#[derive(Clone)]
pub(crate) enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Handle on the shared database. Cheap to clone; all clones share one pool.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// Whether the hot transactions go to MySQL as one-trip scripts
    /// (`claims::script`); cleared, for every clone, when the server turns out
    /// not to accept them.
    scripts: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Whether the claim loop's single-request rounds call stored procedures
    /// (`claims::procedures`) when the scripts are on; cleared, for every
    /// clone, when the procedures cannot be created.
    procedures: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Which reporters want which builds (`outbox`).
    outbox: outbox::Routes,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish()
    }
}

/// Opening a write transaction: plain `BEGIN` on MySQL (row locks do the
/// rest), `BEGIN IMMEDIATE` on SQLite so the write lock is taken up front and
/// waits out `busy_timeout` instead of failing on upgrade.
pub(crate) trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send;
}

impl BeginWrite for MySqlPool {
    type Db = sqlx::MySql;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin()
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    fn begin_write(
        &self,
    ) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>>
    + Send {
        self.begin_with("BEGIN IMMEDIATE")
    }
}

/// Attempts at a write transaction that keeps losing lock conflicts.
/// (Deadlocks are detected at once, and on a busy server several masters
/// claiming and completing one builder's requests can meet a few times in a
/// row: the waits between attempts grow, so the whole is a fraction of a
/// second unless the conflict is a lock wait.)
const CONFLICT_ATTEMPTS: u32 = 10;

/// `wsrep_retry_autocommit` of every session: on Galera the server itself
/// runs a single-statement transaction again when certification aborts it
/// (the statements outside explicit transactions — heartbeats, renewals,
/// compare-and-swaps on one row — are all safe to run again).
const WSREP_RETRY_AUTOCOMMIT: u32 = 4;

/// Run `f` until it succeeds, fails for another reason than a lock
/// conflict, or has tried [`CONFLICT_ATTEMPTS`] times. Each retry is
/// counted in [`crate::metrics::DATABASE_RETRIES`] by reason.
pub(crate) async fn retry_conflicts<T, F, Fut>(mut f: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < CONFLICT_ATTEMPTS && e.is_lock_conflict() => {
                let reason = e.conflict_reason().unwrap_or("deadlock");
                metrics::counter!(crate::metrics::DATABASE_RETRIES, "reason" => reason)
                    .increment(1);
                tracing::debug!(attempt, error = %e, "retrying transaction after lock conflict");
                let jitter = rand::random::<u64>() % 8;
                let grow = (1u64 << attempt.min(6)).min(64);
                tokio::time::sleep(Duration::from_millis(grow + jitter)).await;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// A stored time (naive, UTC by construction) as a `DateTime<Utc>`.
pub(crate) fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

impl Store {
    /// Connect without migrating. URLs: `mysql://user:pass@host:port/db`,
    /// `sqlite://path`, `sqlite:path`, `sqlite::memory:`.
    pub async fn connect(url: &str) -> Result<Store, DbError> {
        let n = if is_sqlite_url(url) {
            DEFAULT_SQLITE_CONNECTIONS
        } else {
            DEFAULT_MYSQL_CONNECTIONS
        };
        Self::connect_with(url, n).await
    }

    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Store, DbError> {
        Self::connect_with_timeout(url, max_connections, CONNECT_TIMEOUT).await
    }

    /// As [`Store::connect_with`], giving up (`Unreachable`) after `timeout`
    /// of retrying; the same timeout bounds waiting for a pooled connection.
    pub async fn connect_with_timeout(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Store, DbError> {
        let max_connections = max_connections.max(1);
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            let opts =
                MySqlConnectOptions::from_str(&url).map_err(|e| DbError::BadUrl(e.to_string()))?;
            let pool = MySqlPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(timeout)
                // No ping before each use: it would double the round trips of
                // every short query. A connection that died (database
                // restarted) fails its next query and is dropped; callers
                // already treat database errors as transient and retry.
                .test_before_acquire(false)
                .after_connect(|conn, _meta| Box::pin(prepare_mysql_session(conn)))
                .after_release(|conn, _meta| {
                    Box::pin(async move {
                        if cancel::recently() {
                            // Possibly left inside a transaction by a
                            // cancelled operation (see `cancel`).
                            conn.execute("ROLLBACK").await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(opts)
                .await
                .map_err(DbError::from_connect)?;
            // On Galera a transaction aborted by another node's write set
            // while the server works through a multi-statement request can
            // end as if it had committed (seen here: the script answered
            // with its outcome, its writes were gone). Statement by
            // statement, the abort is the answer to the next statement.
            let galera = is_galera(&pool).await;
            if galera {
                tracing::info!(
                    "the database is a Galera node: transactions run statement by statement"
                );
            }
            return Ok(Store {
                pool: Pool::MySql(pool),
                scripts: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!galera)),
                procedures: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(!galera)),
                outbox: Default::default(),
            });
        }
        if is_sqlite_url(url) {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| DbError::BadUrl(e.to_string()))?
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut pool_opts = SqlitePoolOptions::new().acquire_timeout(timeout);
            let opts = if memory {
                // One connection, kept forever: it *is* the database.
                pool_opts = pool_opts
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
                opts
            } else {
                pool_opts = pool_opts.max_connections(max_connections);
                opts.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
            };
            let pool = pool_opts
                .connect_with(opts)
                .await
                .map_err(DbError::from_connect)?;
            return Ok(Store {
                pool: Pool::Sqlite(pool),
                scripts: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
                procedures: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
                outbox: Default::default(),
            });
        }
        Err(DbError::BadUrl(format!(
            "{}: expected mysql://, mariadb:// or sqlite:",
            redact(url)
        )))
    }

    /// Run every transaction statement by statement, also on MySQL (the
    /// one-trip scripts off), as on a server that lacks what they use.
    pub fn stepwise(self) -> Store {
        self.scripts
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.without_procedures()
    }

    /// Run the single-request claim and completion as one-trip scripts, not
    /// as stored procedures (the benchmark compares the two).
    pub fn without_procedures(self) -> Store {
        self.procedures
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Call a claim procedure (retrying lock conflicts). `None` when the
    /// procedures or the scripts are off, or when the procedures cannot be
    /// created here: then they are switched off for good and the caller
    /// runs its script.
    pub(crate) async fn try_procedure<T, F, Fut>(&self, mut f: F) -> Option<Result<T, DbError>>
    where
        F: FnMut(MySqlPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        if !self.procedures.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let pool = self.script_pool()?.clone();
        match retry_conflicts(|| f(pool.clone())).await {
            Err(e @ DbError::NoProcedures(_)) => {
                tracing::warn!(error = %e, "claiming with one-trip scripts instead of stored procedures");
                self.procedures
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                None
            }
            r => Some(r),
        }
    }

    /// The MySQL pool when the one-trip scripts are on.
    pub(crate) fn script_pool(&self) -> Option<&MySqlPool> {
        match &self.pool {
            Pool::MySql(p) if self.scripts.load(std::sync::atomic::Ordering::Relaxed) => Some(p),
            _ => None,
        }
    }

    /// Run a one-trip script (retrying lock conflicts). `None` when the
    /// scripts are off, or when the server rejects the script's SQL: then
    /// they are switched off for good and the caller runs its stepwise path.
    pub(crate) async fn try_script<T, F, Fut>(&self, mut f: F) -> Option<Result<T, DbError>>
    where
        F: FnMut(MySqlPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        let pool = self.script_pool()?.clone();
        match retry_conflicts(|| f(pool.clone())).await {
            Err(e) if e.is_unsupported_sql() => {
                tracing::warn!(error = %e, "the database rejects one-trip claim scripts; running those transactions statement by statement");
                self.scripts
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                None
            }
            r => Some(r),
        }
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::MySql(_) => Backend::MySql,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Close the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        with_pool!(self, |pool, d| pool.close().await)
    }

    /// The database's clock.
    pub async fn db_now(&self) -> Result<DateTime<Utc>, DbError> {
        with_pool!(self, |pool, d| {
            let sql = format!("SELECT {} AS now", d.now());
            let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?;
            Ok(utc(row.try_get::<NaiveDateTime, _>("now")?))
        })
    }
}

/// Whether the server is a node of a Galera cluster (`wsrep_on`; MySQL
/// has no such variable).
/// Whether the server may run the one-trip scripts: not on a Galera node.
/// An unknown answer counts as Galera (statement by statement is correct
/// everywhere, the scripts only faster): a read that failed under load must
/// not switch on a path that can lose a claim's abort on Galera.
async fn is_galera(pool: &MySqlPool) -> bool {
    let mut last = None;
    for attempt in 0..3u32 {
        match sqlx::query_scalar::<_, Option<i64>>("SELECT @@wsrep_on")
            .fetch_one(pool)
            .await
        {
            Ok(on) => return on == Some(1),
            // A server without the variable (MySQL) is not Galera.
            Err(sqlx::Error::Database(e)) if e.message().contains("Unknown system variable") => {
                return false;
            }
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
    }
    tracing::warn!(
        error = last.as_deref().unwrap_or_default(),
        "cannot tell whether the database is a Galera node; running transactions statement by statement"
    );
    true
}

/// Every MySQL session of a master, pooled or not: UTC, READ COMMITTED, and
/// bounded lock waits.
pub(crate) async fn prepare_mysql_session(
    conn: &mut sqlx::MySqlConnection,
) -> Result<(), sqlx::Error> {
    conn.execute("SET time_zone = '+00:00'").await?;
    // No gap locks: a claim pick must not block inserts of new requests.
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        .await?;
    // A row lock held by a frozen or cut-off master must not stall anyone for
    // the default 50 s: a lock-wait timeout aborts the statement and the
    // transaction is retried (paths that must never wait skip locked rows).
    conn.execute(AssertSqlSafe(format!(
        "SET SESSION innodb_lock_wait_timeout = {}",
        LOCK_WAIT_TIMEOUT.as_secs()
    )))
    .await?;
    // Galera (MariaDB with wsrep): the server retries single statements
    // aborted by certification; elsewhere the variable is unknown or inert.
    if let Err(e) = conn
        .execute(AssertSqlSafe(format!(
            "SET SESSION wsrep_retry_autocommit = {WSREP_RETRY_AUTOCOMMIT}"
        )))
        .await
    {
        tracing::debug!(error = %e, "the server has no wsrep_retry_autocommit");
    }
    // MariaDB ends a session left idle inside a transaction, which is how
    // the row locks of a master frozen mid-transaction are given back; MySQL
    // lacks the variable (the locks then last until its connection closes).
    if let Err(e) = conn
        .execute(AssertSqlSafe(format!(
            "SET SESSION idle_transaction_timeout = {}",
            IDLE_TRANSACTION_TIMEOUT_SECS.load(std::sync::atomic::Ordering::Relaxed)
        )))
        .await
    {
        tracing::debug!(error = %e, "the server has no idle_transaction_timeout");
    }
    Ok(())
}

/// Runs one database operation with a deadline. sqlx has no read timeout: a
/// connection that goes silent without an error (packets dropped, database
/// host frozen) would otherwise hang its caller forever. On expiry the
/// operation is abandoned and its outcome is unknown.
pub async fn within<T>(
    limit: Duration,
    op: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, DbError> {
    let op = std::pin::pin!(op);
    tokio::select! {
        r = op => r,
        _ = tokio::time::sleep(limit) => {
            // Noted before the operation is dropped, so its connection is
            // rolled back when it returns to the pool.
            cancel::noted();
            Err(DbError::Timeout(limit))
        }
    }
}

fn is_sqlite_url(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
