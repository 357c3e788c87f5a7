//! Schema migrations: `migrations/mysql` and `migrations/sqlite`, built into
//! the binary, applied by `flotilla db upgrade`, and checked at master start.
//!
//! Both backends record applied versions in sqlx's `_sqlx_migrations` table
//! (same layout and checksums as `sqlx::migrate`), but we apply migrations
//! ourselves: sqlx's SQLite migrator does not lock, and its `run` future is not
//! `Send`. Concurrent upgrades are safe: on MySQL every upgrader takes a named
//! lock per database (`GET_LOCK`) and then applies one migration (one DDL
//! statement, which commits on its own) at a time, marked unfinished until it
//! is done, as sqlx does; on SQLite all pending migrations run in one
//! `BEGIN IMMEDIATE` transaction (SQLite DDL is transactional), which
//! serialises upgraders through the busy timeout. Either way the versions an
//! upgrade reports are the ones *it* applied, and an applied version this
//! binary does not know refuses the upgrade (`SchemaNewer`).

use std::collections::{BTreeMap, BTreeSet};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Executor, Row};

use super::{BeginWrite, DbError, SchemaStatus, Store};

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Named lock serialising `flotilla db upgrade` runs on one MySQL database
/// (lock names are server-wide and at most 64 characters).
const MYSQL_UPGRADE_LOCK: &str = "CONCAT('flotilla_upgrade_', SHA1(DATABASE()))";
const MYSQL_UPGRADE_LOCK_TIMEOUT_SECS: i64 = 300;

/// sqlx's own table (the same DDL on both backends), so the `sqlx` CLI and
/// `sqlx::migrate` still read what we record.
const MIGRATIONS_DDL: &str = "CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL,
    checksum BLOB NOT NULL,
    execution_time BIGINT NOT NULL
)";

/// One applied row of `_sqlx_migrations`.
struct Applied {
    success: bool,
    checksum: Vec<u8>,
}

impl Store {
    fn migrator(&self) -> &'static Migrator {
        match self.backend() {
            super::Backend::MySql => &MYSQL_MIGRATIONS,
            super::Backend::Sqlite => &SQLITE_MIGRATIONS,
        }
    }

    /// Apply pending migrations; returns the versions applied by this call.
    /// Safe when several run at once; refuses a database newer than the binary.
    pub async fn upgrade(&self) -> Result<Vec<i64>, DbError> {
        let migrator = self.migrator();
        with_pool!(self, |pool, d| {
            match d {
                super::dialect::Dialect::MySql => {
                    let mut conn = pool.acquire().await?;
                    let sql = format!("SELECT GET_LOCK({MYSQL_UPGRADE_LOCK}, ?)");
                    let got: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(MYSQL_UPGRADE_LOCK_TIMEOUT_SECS)
                        .fetch_one(&mut *conn)
                        .await?;
                    if got != Some(1) {
                        return Err(DbError::Other(
                            "timed out waiting for another schema upgrade to finish".into(),
                        ));
                    }
                    let result = async {
                        conn.execute(MIGRATIONS_DDL).await?;
                        let before = read_applied!(conn, d)?;
                        let mut applied = Vec::new();
                        for m in to_apply(migrator, &before)? {
                            // MySQL DDL commits on its own: mark the version
                            // applied-but-unfinished first, as sqlx does, so a
                            // crash leaves it visibly dirty.
                            let start = std::time::Instant::now();
                            sqlx::query(
                                "INSERT INTO _sqlx_migrations \
                                 (version, description, success, checksum, execution_time) \
                                 VALUES (?, ?, FALSE, ?, -1)",
                            )
                            .bind(m.version)
                            .bind(&*m.description)
                            .bind(&*m.checksum)
                            .execute(&mut *conn)
                            .await?;
                            conn.execute(m.sql.clone())
                                .await
                                .map_err(|e| MigrateError::ExecuteMigration(e, m.version))?;
                            sqlx::query(
                                "UPDATE _sqlx_migrations SET success = TRUE, execution_time = ? \
                                 WHERE version = ?",
                            )
                            .bind(nanos_since(start))
                            .bind(m.version)
                            .execute(&mut *conn)
                            .await?;
                            applied.push(m.version);
                        }
                        Ok(applied)
                    }
                    .await;
                    let sql = format!("SELECT RELEASE_LOCK({MYSQL_UPGRADE_LOCK})");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut *conn)
                        .await;
                    result
                }
                super::dialect::Dialect::Sqlite => {
                    // SQLite DDL is transactional: everything in one
                    // transaction that holds the write lock from the start.
                    let mut tx = pool.begin_write().await?;
                    tx.execute(MIGRATIONS_DDL).await?;
                    let before = read_applied!(tx, d)?;
                    let mut applied = Vec::new();
                    for m in to_apply(migrator, &before)? {
                        let start = std::time::Instant::now();
                        tx.execute(m.sql.clone())
                            .await
                            .map_err(|e| MigrateError::ExecuteMigration(e, m.version))?;
                        sqlx::query(
                            "INSERT INTO _sqlx_migrations \
                             (version, description, success, checksum, execution_time) \
                             VALUES (?, ?, TRUE, ?, ?)",
                        )
                        .bind(m.version)
                        .bind(&*m.description)
                        .bind(&*m.checksum)
                        .bind(nanos_since(start))
                        .execute(&mut *tx)
                        .await?;
                        applied.push(m.version);
                    }
                    tx.commit().await?;
                    Ok(applied)
                }
            }
        })
    }

    pub async fn schema_status(&self) -> Result<SchemaStatus, DbError> {
        let migrator = self.migrator();
        let applied = with_pool!(self, |pool, d| {
            let mut conn = pool.acquire().await?;
            read_applied!(conn, d)?
        });
        Ok(status_of(migrator, &applied))
    }

    /// `Ok` only when every migration this binary knows is applied and none
    /// it does not know is.
    pub async fn ensure_current(&self) -> Result<(), DbError> {
        let s = self.schema_status().await?;
        if s.newer_than_binary {
            return Err(DbError::SchemaNewer {
                current: s.current.unwrap_or_default(),
                latest: s.latest,
            });
        }
        if !s.pending.is_empty() {
            return Err(DbError::SchemaNotCurrent {
                current: s.current,
                latest: s.latest,
            });
        }
        Ok(())
    }
}

fn up_migrations(m: &Migrator) -> impl Iterator<Item = &sqlx::migrate::Migration> {
    m.iter().filter(|m| !m.migration_type.is_down_migration())
}

fn status_of(migrator: &Migrator, applied: &BTreeMap<i64, Applied>) -> SchemaStatus {
    let known: BTreeSet<i64> = up_migrations(migrator).map(|m| m.version).collect();
    let latest = known.last().copied().unwrap_or(0);
    let pending = up_migrations(migrator)
        .filter(|m| !applied.get(&m.version).is_some_and(|a| a.success))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    let current = applied
        .iter()
        .filter(|(_, a)| a.success)
        .map(|(v, _)| *v)
        .max();
    let newer_than_binary = applied.keys().any(|v| !known.contains(v));
    SchemaStatus {
        current,
        latest,
        pending,
        newer_than_binary,
    }
}

fn check_not_newer(migrator: &Migrator, applied: &BTreeMap<i64, Applied>) -> Result<(), DbError> {
    let s = status_of(migrator, applied);
    if s.newer_than_binary {
        return Err(DbError::SchemaNewer {
            current: s.current.unwrap_or_default(),
            latest: s.latest,
        });
    }
    Ok(())
}

/// The migrations still to apply, after checking that the applied ones are
/// known, finished and unchanged.
fn to_apply<'m>(
    migrator: &'m Migrator,
    applied: &BTreeMap<i64, Applied>,
) -> Result<Vec<&'m sqlx::migrate::Migration>, DbError> {
    check_not_newer(migrator, applied)?;
    let mut out = Vec::new();
    for m in up_migrations(migrator) {
        match applied.get(&m.version) {
            Some(a) if !a.success => return Err(MigrateError::Dirty(m.version).into()),
            Some(a) if a.checksum != *m.checksum => {
                return Err(MigrateError::VersionMismatch(m.version).into());
            }
            Some(_) => {}
            None => out.push(m),
        }
    }
    Ok(out)
}

fn nanos_since(start: std::time::Instant) -> i64 {
    i64::try_from(start.elapsed().as_nanos()).unwrap_or(i64::MAX)
}

/// The rows of `_sqlx_migrations` read through `$conn`, empty when the table
/// does not exist yet. A macro because the executor types differ per backend.
macro_rules! read_applied {
    ($conn:expr, $d:expr) => {{
        let exists_sql = match $d {
            super::dialect::Dialect::MySql => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'"
            }
            super::dialect::Dialect::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master \
                 WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
        };
        let n: i64 = sqlx::query_scalar(exists_sql)
            .fetch_one(&mut *$conn)
            .await?;
        let mut applied = BTreeMap::new();
        if n > 0 {
            let rows = sqlx::query("SELECT version, success, checksum FROM _sqlx_migrations")
                .fetch_all(&mut *$conn)
                .await?;
            for r in rows {
                applied.insert(
                    r.try_get::<i64, _>("version")?,
                    Applied {
                        success: r.try_get("success")?,
                        checksum: r.try_get("checksum")?,
                    },
                );
            }
        }
        Result::<BTreeMap<i64, Applied>, DbError>::Ok(applied)
    }};
}
use read_applied;
