//! How errors from a real MariaDB are classified: SQL the server does not
//! accept (which switches the one-trip scripts off) against other failures.

mod common;

use common::TestDb;
use flotilla_master::db::DbError;
use sqlx::{AssertSqlSafe, Connection, Executor};

async fn error_of(db: &TestDb, sql: &str) -> DbError {
    let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    let e = c
        .execute(AssertSqlSafe(sql.to_string()))
        .await
        .expect_err("the statement must fail");
    let _ = c.close().await;
    DbError::from(e)
}

#[tokio::test]
async fn unsupported_sql_is_told_apart_from_other_failures() {
    let db = TestDb::mysql().await;
    for sql in [
        "SELEC 1",
        "SELECT NO_SUCH_FUNCTION_HERE(1)",
        "SELECT * FROM JSON_TABLE('[1]', '$[*]' COLUMNS (a INT PATH '$')) AS j \
         FOR UPDATE SKIP LOCKED NOWAIT",
    ] {
        let e = error_of(&db, sql).await;
        assert!(e.is_unsupported_sql(), "{sql}: {e}");
    }
    for sql in [
        "SELECT * FROM no_such_table",
        "CREATE TABLE t (id INT PRIMARY KEY)",
    ] {
        // The second succeeds the first time; run it twice to fail.
        if sql.starts_with("CREATE") {
            db.exec(sql).await;
        }
        let e = error_of(&db, sql).await;
        assert!(!e.is_unsupported_sql(), "{sql}: {e}");
        assert!(!e.is_lock_conflict(), "{sql}: {e}");
    }
}
