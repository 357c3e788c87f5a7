//! Test databases for the store tests: a fresh, uniquely named MariaDB
//! database per test (dropped when the guard goes, even on panic) or a SQLite
//! file in a temporary directory.
//!
//! MariaDB is found at `FLOTILLA_TEST_MYSQL` (default
//! `mysql://root@127.0.0.1:3306`).

#![allow(dead_code)]

/// The store suite's one runner: each case is an `async fn(&TestDb)` and
/// runs on all four paths — `mysql::<case>` (a fresh MariaDB database,
/// single-request claims and completions as stored procedures, batches as
/// one-trip scripts), `mysql_scripts::<case>` (scripts only, the path where
/// routines may not be created), `mysql_stepwise::<case>` (statement by
/// statement, the path a server that rejects the scripts takes, and Galera)
/// and `sqlite::<case>` (a temporary file). Needs `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! store_suite {
    ($($case:ident),* $(,)?) => {
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::mysql().await;
                    super::$case(&db).await;
                }
            )*
        }
        mod mysql_scripts {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::mysql_scripts().await;
                    super::$case(&db).await;
                }
            )*
        }
        mod mysql_stepwise {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::mysql_stepwise().await;
                    super::$case(&db).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let db = super::TestDb::sqlite();
                    super::$case(&db).await;
                }
            )*
        }
    };
}

use std::time::Duration;

use flotilla_master::db::{Backend, BuilderId, ClaimRound, DbError, MasterId, NewBuildset, Store};
use sqlx::{AssertSqlSafe, Connection, Executor};

pub fn mysql_base() -> String {
    std::env::var("FLOTILLA_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

/// How a test's stores send their claim transactions to MySQL (on SQLite
/// every path is statement by statement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClaimPath {
    /// Stored procedures for single-request rounds, scripts for batches.
    Procedures,
    /// One-trip scripts only.
    Scripts,
    /// Statement by statement.
    Stepwise,
}

/// One test's database. Dropping it drops the MariaDB database.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// How stores send their claim transactions to MySQL.
    path: ClaimPath,
    mysql_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::MySql => Self::mysql().await,
            Backend::Sqlite => Self::sqlite(),
        }
    }

    /// A fresh empty MariaDB database.
    pub async fn mysql() -> TestDb {
        let name = format!(
            "flotilla_t_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut admin = sqlx::MySqlConnection::connect(&format!("{}/", mysql_base()))
            .await
            .expect("connect to MariaDB (set FLOTILLA_TEST_MYSQL)");
        admin
            .execute(AssertSqlSafe(format!(
                "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        TestDb {
            url: format!("{}/{name}", mysql_base()),
            backend: Backend::MySql,
            path: ClaimPath::Procedures,
            mysql_name: Some(name),
            _dir: None,
        }
    }

    /// A fresh empty MariaDB database whose stores run statement by statement,
    /// as on a server that rejects the one-trip scripts.
    pub async fn mysql_stepwise() -> TestDb {
        let mut db = Self::mysql().await;
        db.path = ClaimPath::Stepwise;
        db
    }

    /// A fresh empty MariaDB database whose stores send the single-request
    /// claim and completion as one-trip scripts, not stored procedures (as
    /// where the user may not create routines).
    pub async fn mysql_scripts() -> TestDb {
        let mut db = Self::mysql().await;
        db.path = ClaimPath::Scripts;
        db
    }

    /// A fresh SQLite file in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("state.sqlite").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            path: ClaimPath::Procedures,
            mysql_name: None,
            _dir: Some(dir),
        }
    }

    /// A new store (its own pool) on this database.
    pub async fn store(&self) -> Store {
        self.mode(Store::connect(&self.url).await.expect("connect store"))
    }

    pub async fn store_with(&self, max_connections: u32) -> Store {
        self.mode(
            Store::connect_with(&self.url, max_connections)
                .await
                .expect("connect store"),
        )
    }

    fn mode(&self, s: Store) -> Store {
        match self.path {
            ClaimPath::Procedures => s,
            ClaimPath::Scripts => s.without_procedures(),
            ClaimPath::Stepwise => s.stepwise(),
        }
    }

    /// A new store on an upgraded schema.
    pub async fn upgraded_store(&self) -> Store {
        let s = self.store().await;
        s.upgrade().await.expect("upgrade");
        s
    }

    /// Run one raw statement on this database, outside the store.
    pub async fn exec(&self, sql: &str) {
        match self.backend {
            Backend::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                c.execute(AssertSqlSafe(sql.to_string())).await.unwrap();
                let _ = c.close().await;
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                c.execute(AssertSqlSafe(sql.to_string())).await.unwrap();
                let _ = c.close().await;
            }
        }
    }

    /// A one-column integer query, outside the store.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let v = sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                let _ = c.close().await;
                v
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let v = sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                let _ = c.close().await;
                v
            }
        }
    }

    /// The schema as text (tables, columns, indexes), to compare databases.
    pub async fn schema_dump(&self) -> Vec<String> {
        match self.backend {
            Backend::MySql => {
                let mut c = sqlx::MySqlConnection::connect(&self.url).await.unwrap();
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
                     WHERE table_schema = DATABASE() ORDER BY table_name",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let mut out = Vec::new();
                for t in tables {
                    let row: (String, String) =
                        sqlx::query_as(AssertSqlSafe(format!("SHOW CREATE TABLE `{t}`")))
                            .fetch_one(&mut c)
                            .await
                            .unwrap();
                    // AUTO_INCREMENT=n differs with how many rows were written.
                    let ddl: String = row
                        .1
                        .split(' ')
                        .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                        .collect::<Vec<_>>()
                        .join(" ");
                    out.push(ddl);
                }
                let _ = c.close().await;
                out
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                    "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                let _ = c.close().await;
                rows.into_iter()
                    .map(|(n, s)| format!("{n}: {}", s.unwrap_or_default()))
                    .collect()
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.mysql_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime: do the async work on a thread
        // of its own.
        let base = mysql_base();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::MySqlConnection::connect(&format!("{base}/")).await {
                    let _ = c
                        .execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// `n` pending requests of `builder` in one buildset, all priority `priority`.
pub async fn seed(store: &Store, builder: i64, n: usize, priority: i32) -> Vec<i64> {
    let (_, ids) = store
        .add_buildset(&NewBuildset {
            reason: "test".into(),
            builders: vec![(builder, priority); n],
            ..Default::default()
        })
        .await
        .expect("add_buildset");
    ids
}

pub async fn builder(store: &Store, name: &str) -> i64 {
    store
        .ensure_builders(&[name.to_string()])
        .await
        .expect("ensure_builders")[name]
}

pub async fn master(store: &Store, name: &str) -> MasterId {
    store.register_master(name).await.expect("register").id
}

/// Sleep long enough for the database clock to pass a `d` lease.
pub async fn outlive(d: Duration) {
    tokio::time::sleep(d + Duration::from_millis(150)).await;
}

/// Claims as tests make them, with bare ids. Production claims through
/// `pick_and_claim_per_builder` and `claim_within_limit`; a test that needs
/// a particular request held claims it exactly
/// (`flotilla_master::db::claims::testing`).
pub trait TestClaims {
    /// The requests among `ids` won for `me` (none when refused).
    fn claim_requests(
        &self,
        me: MasterId,
        ids: &[i64],
    ) -> impl std::future::Future<Output = Result<Vec<i64>, DbError>> + Send;

    /// `pick_and_claim_per_builder` with bare builder ids: the (request,
    /// builder) pairs won (none when refused or nothing was claimable).
    fn pick_per_builder(
        &self,
        me: MasterId,
        wants: &[(i64, usize)],
    ) -> impl std::future::Future<Output = Result<Vec<(i64, i64)>, DbError>> + Send;

    /// The round `pick_and_claim_per_builder` ends in, with bare builder ids.
    fn pick_round(
        &self,
        me: MasterId,
        wants: &[(i64, usize)],
    ) -> impl std::future::Future<Output = Result<ClaimRound, DbError>> + Send;
}

impl TestClaims for Store {
    async fn claim_requests(&self, me: MasterId, ids: &[i64]) -> Result<Vec<i64>, DbError> {
        flotilla_master::db::claims::testing::claim_requests(self, me, ids).await
    }

    async fn pick_per_builder(
        &self,
        me: MasterId,
        wants: &[(i64, usize)],
    ) -> Result<Vec<(i64, i64)>, DbError> {
        let round = self.pick_round(me, wants).await?;
        Ok(round
            .won()
            .iter()
            .map(|c| (c.request.0, c.builder.0))
            .collect())
    }

    async fn pick_round(
        &self,
        me: MasterId,
        wants: &[(i64, usize)],
    ) -> Result<ClaimRound, DbError> {
        let wants: Vec<(BuilderId, usize)> =
            wants.iter().map(|(b, n)| (BuilderId(*b), *n)).collect();
        self.pick_and_claim_per_builder(me, &wants).await
    }
}
