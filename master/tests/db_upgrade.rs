//! `flotilla db upgrade` semantics on MariaDB and SQLite: idempotent, safe
//! when several run at once (each migration applied exactly once, same schema
//! as a sequential upgrade), and refusing a database newer than the binary.

mod common;

use std::collections::BTreeSet;

use common::TestDb;
use flotilla_master::db::{Backend, DbError};

async fn twice_then_four_at_once(backend: Backend) {
    // Sequential: the second run applies nothing.
    let seq = TestDb::new(backend).await;
    let s = seq.store().await;
    let latest = s.schema_status().await.unwrap().latest;
    let first = s.upgrade().await.unwrap();
    assert_eq!(first.len() as i64, latest);
    assert_eq!(first.last().copied(), Some(latest));
    assert!(s.upgrade().await.unwrap().is_empty());
    assert!(s.schema_status().await.unwrap().is_current());

    // Concurrent: four upgraders, each with its own pool.
    let conc = TestDb::new(backend).await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(conc.store().await);
    }
    let runs = futures::future::join_all(stores.iter().map(|s| s.upgrade())).await;
    let mut applied = Vec::new();
    for r in runs {
        applied.extend(r.expect("a concurrent upgrade failed"));
    }
    let unique: BTreeSet<i64> = applied.iter().copied().collect();
    assert_eq!(applied.len(), unique.len(), "a migration applied twice");
    assert_eq!(unique.len() as i64, latest);
    for s in &stores {
        s.ensure_current().await.unwrap();
    }
    assert_eq!(seq.schema_dump().await, conc.schema_dump().await);
}

async fn refuses_newer_database(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = db.upgraded_store().await;
    let latest = s.schema_status().await.unwrap().latest;
    let future = latest + 1000;
    db.exec(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({future}, 'from the future', TRUE, X'00', 0)"
    ))
    .await;
    let st = s.schema_status().await.unwrap();
    assert!(st.newer_than_binary && !st.is_current());
    assert_eq!(st.current, Some(future));
    match s.upgrade().await {
        Err(DbError::SchemaNewer { current, latest: l }) => {
            assert_eq!((current, l), (future, latest))
        }
        other => panic!("expected SchemaNewer, got {other:?}"),
    }
    assert!(matches!(
        s.ensure_current().await,
        Err(DbError::SchemaNewer { .. })
    ));
}

/// A database two migrations behind gets exactly those migrations.
async fn upgrades_an_older_schema(backend: Backend) {
    let db = TestDb::new(backend).await;
    let s = db.upgraded_store().await;
    let latest = s.schema_status().await.unwrap().latest;
    // Roll the last two migrations (0024, the reporters' table, and 0025,
    // the changes behind buildsets) back by hand.
    db.exec("DROP TABLE buildset_changes").await;
    db.exec("DROP TABLE report_deliveries").await;
    db.exec(&format!(
        "DELETE FROM _sqlx_migrations WHERE version >= {}",
        latest - 1
    ))
    .await;
    let st = s.schema_status().await.unwrap();
    assert_eq!(st.current, Some(latest - 2));
    assert_eq!(st.pending.len(), 2);
    assert_eq!(s.upgrade().await.unwrap(), vec![latest - 1, latest]);
    s.ensure_current().await.unwrap();
    let fresh = TestDb::new(backend).await;
    fresh.upgraded_store().await;
    assert_eq!(db.schema_dump().await, fresh.schema_dump().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_upgrades_an_older_schema() {
    upgrades_an_older_schema(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrades_an_older_schema() {
    upgrades_an_older_schema(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_upgrade_twice_and_concurrently() {
    twice_then_four_at_once(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_twice_and_concurrently() {
    twice_then_four_at_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_refuses_newer_database() {
    refuses_newer_database(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_newer_database() {
    refuses_newer_database(Backend::Sqlite).await;
}

#[tokio::test]
async fn connect_errors_are_classified() {
    assert!(matches!(
        flotilla_master::db::Store::connect("postgres://x/y").await,
        Err(DbError::BadUrl(_))
    ));
    // Nothing listens on port 1.
    let e = flotilla_master::db::Store::connect_with_timeout(
        "mysql://root@127.0.0.1:1/x",
        1,
        std::time::Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DbError::Unreachable(_)), "{e:?}");
    assert!(e.is_transient());
    let e = flotilla_master::db::Store::connect(&format!(
        "{}/flotilla_no_such_db",
        common::mysql_base()
    ))
    .await
    .unwrap_err();
    // MySQL error 1049 is not an authentication failure.
    assert!(
        matches!(&e, DbError::UnknownDatabase { name } if name == "flotilla_no_such_db"),
        "{e:?}"
    );
    assert!(e.to_string().contains("CREATE DATABASE"), "{e}");
    let base = common::mysql_base();
    let bad_user = base.replacen("mysql://root@", "mysql://flotilla_nobody:wrong@", 1);
    let e = flotilla_master::db::Store::connect(&format!("{bad_user}/mysql"))
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::AccessDenied(_)), "{e:?}");
    // In-memory SQLite shares one connection, so the schema is visible.
    let s = flotilla_master::db::Store::connect("sqlite::memory:")
        .await
        .unwrap();
    s.upgrade().await.unwrap();
    s.ensure_current().await.unwrap();
}
