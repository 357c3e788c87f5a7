//! Test databases: a uniquely named MariaDB database dropped when its guard
//! goes (even on a panic), or a SQLite file in a temporary folder.
//!
//! MariaDB is found at `FLOTILLA_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`).

use anyhow::Context;
use sqlx::Connection;
use sqlx::mysql::MySqlConnection;

/// The MariaDB server tests use, without a database.
pub fn server_url() -> String {
    std::env::var("FLOTILLA_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A MariaDB database of one test (or one bench run), dropped on drop.
#[derive(Debug)]
pub struct TestDb {
    pub name: String,
    /// `mysql://.../<name>`.
    pub url: String,
    server: String,
}

impl TestDb {
    /// A fresh database `flotilla_<prefix>_…` on [`server_url`]; panics when it cannot.
    pub async fn create(prefix: &str) -> TestDb {
        Self::try_create_on(&server_url(), prefix, "")
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A fresh database `flotilla_<prefix>_…` on `server`, created with
    /// `options` (e.g. `CHARACTER SET utf8mb4 COLLATE utf8mb4_bin`; empty:
    /// the server's defaults).
    pub async fn try_create_on(
        server: &str,
        prefix: &str,
        options: &str,
    ) -> anyhow::Result<TestDb> {
        let server = server.trim_end_matches('/').to_owned();
        let name = format!(
            "flotilla_{prefix}_{}_{}",
            std::process::id(),
            unique_suffix()
        );
        let mut conn = MySqlConnection::connect(&format!("{server}/"))
            .await
            .with_context(|| {
                format!("connect to MariaDB at {server} (run scripts/ensure-mariadb, or set FLOTILLA_TEST_MYSQL)")
            })?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` {options}"
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("create the test database {name}"))?;
        let _ = conn.close().await;
        Ok(TestDb {
            url: format!("{server}/{name}"),
            name,
            server,
        })
    }

    pub async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// Unique within this process (a counter) and across processes started at
/// the same time (the clock's nanoseconds).
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{nanos:x}{n}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (server, name) = (self.server.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async work on a thread
        // with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = MySqlConnection::connect(&format!("{server}/")).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS `{name}`"
                        )))
                        .execute(&mut conn)
                        .await;
                        let _ = conn.close().await;
                    }
                });
            }
        })
        .join();
    }
}

/// A SQLite database file in a temporary folder of its own, removed on drop.
#[derive(Debug)]
pub struct SqliteDb {
    /// `sqlite://<folder>/state.sqlite`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl SqliteDb {
    pub fn create() -> SqliteDb {
        let dir = tempfile::tempdir().expect("tempdir");
        SqliteDb {
            url: format!("sqlite://{}", dir.path().join("state.sqlite").display()),
            _dir: dir,
        }
    }
}
