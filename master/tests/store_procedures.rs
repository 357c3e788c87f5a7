//! The claim procedures on MariaDB: created on first use, versioned by
//! name, and a user who may not create routines still claims (with the
//! one-trip scripts).

mod common;

use common::{TestDb, builder, master, seed};
use flotilla_master::db::{BuilderId, ClaimRound, Results, Store};

/// The claim procedures present in the database `db`.
async fn procedures(db: &TestDb) -> i64 {
    db.scalar_i64(
        "SELECT COUNT(*) FROM information_schema.ROUTINES \
         WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_NAME LIKE 'flotilla\\_%'",
    )
    .await
}

/// One request of `b` claimed and completed by `s` as master `name`.
async fn claim_and_complete(s: &Store, name: &str, b: i64) {
    let me = master(s, name).await;
    let r = seed(s, b, 1, 0).await;
    let round = s
        .pick_and_claim_per_builder(me, &[(BuilderId(b), 1)])
        .await
        .unwrap();
    assert!(
        matches!(&round, ClaimRound::Won(w) if w.len() == 1 && w[0].request.0 == r[0]),
        "{round:?}"
    );
    assert_eq!(
        s.complete_requests(me, &r, Results::Success).await.unwrap(),
        r
    );
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(row.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedures_are_created_on_first_use() {
    let db = TestDb::mysql().await;
    let s = db.upgraded_store().await;
    assert_eq!(procedures(&db).await, 0, "none before the first claim");
    let b = builder(&s, "unit").await;
    claim_and_complete(&s, "a", b).await;
    assert_eq!(procedures(&db).await, 2, "the claim and the completion");
    // Another store (another master) finds them there and uses them.
    let s2 = db.store().await;
    claim_and_complete(&s2, "b", b).await;
    assert_eq!(procedures(&db).await, 2);
    assert_eq!(
        db.scalar_i64("SELECT CAST(claimed_requests AS SIGNED) FROM builders")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_create_routines_claims_with_scripts() {
    claims_without_routines("SELECT, INSERT, UPDATE, DELETE, EXECUTE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_call_routines_claims_with_scripts() {
    claims_without_routines("SELECT, INSERT, UPDATE, DELETE").await;
}

/// A user with `privileges` on the database (not CREATE ROUTINE) claims and
/// completes requests.
async fn claims_without_routines(privileges: &str) {
    let db = TestDb::mysql().await;
    db.upgraded_store().await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let user = format!("np_{:08x}", rand::random::<u32>());
    for host in ["%", "localhost"] {
        db.exec(&format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'"))
            .await;
        db.exec(&format!(
            "GRANT {privileges} ON `{name}`.* TO '{user}'@'{host}'"
        ))
        .await;
    }
    let base = common::mysql_base();
    let url = base.replacen("mysql://root@", &format!("mysql://{user}:pw@"), 1);
    assert_ne!(url, base, "FLOTILLA_TEST_MYSQL names root@");
    let s = Store::connect(&format!("{url}/{name}")).await.unwrap();
    let b = builder(&s, "unit").await;
    for i in 0..2 {
        claim_and_complete(&s, &format!("m{i}"), b).await;
    }
    assert_eq!(procedures(&db).await, 0, "it could create none");
    s.close().await;
    for host in ["%", "localhost"] {
        db.exec(&format!("DROP USER '{user}'@'{host}'")).await;
    }
}
