//! The store's part in fencing: writes that are safe to replay after an
//! answer was lost, death declared by compare-and-swap on the heartbeat an
//! observer watched, releases that never wait on a row a frozen master
//! holds locked, and orphaned claims given back. Each case runs on MariaDB
//! (with and without the one-trip scripts) and SQLite.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{TestClaims, TestDb, builder, master, seed};
use flotilla_master::db::{Backend, BuilderId, ClaimRound, Results};
use sqlx::{AssertSqlSafe, Connection, Executor};

store_suite!(
    a_replayed_finish_keeps_the_outcome,
    a_replayed_start_finds_the_same_build,
    death_is_a_compare_and_swap_on_the_watched_heartbeat,
    releases_skip_rows_a_frozen_master_holds_locked,
    orphaned_claims_are_released_only_if_unchanged,
    a_drifted_claim_count_is_recounted,
    a_dead_incarnation_claims_nothing_of_a_limited_builder,
);

/// The limited claim (`max_concurrent_builds`) is fenced like every other
/// claim: an incarnation already declared dead wins nothing, even with room
/// under the limit and claimable requests waiting.
async fn a_dead_incarnation_claims_nothing_of_a_limited_builder(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "limited").await;
    let r = seed(&s, bl, 3, 0).await;
    let seen = s.master_flags(a).await.unwrap().unwrap().last_active;
    assert!(s.declare_dead(a, seen).await.unwrap());
    // Woken after being declared dead, before its next heartbeat tells it so:
    let round = s.claim_within_limit(a, BuilderId(bl), 2, 5).await.unwrap();
    assert_eq!(round, ClaimRound::RefusedInactive);
    for id in &r {
        let req = s.get_request(*id).await.unwrap().unwrap();
        assert_eq!(req.claimed_by_masterid, None, "request {id}");
    }
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT claimed_requests FROM builders WHERE id = {bl}"
        ))
        .await,
        0
    );
    // A live master still claims within the limit.
    let round = s.claim_within_limit(b, BuilderId(bl), 2, 5).await.unwrap();
    assert_eq!(round.won().len(), 2);
}

async fn a_replayed_finish_keeps_the_outcome(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let build = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert!(
        s.finish_build(a, build.id, r[0], Results::Success, true)
            .await
            .unwrap()
    );
    let first = s.get_build(build.id).await.unwrap().unwrap();
    // The same call again, as after a commit whose answer was lost.
    s.finish_build(a, build.id, r[0], Results::Success, true)
        .await
        .unwrap();
    s.finish_build(a, build.id, r[0], Results::Failure, false)
        .await
        .unwrap();
    let again = s.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(again.results, Some(Results::Success));
    assert_eq!(again.complete_at, first.complete_at);
    let req = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(req.complete);
    assert_eq!(req.results, Some(Results::Success));
}

async fn a_replayed_start_finds_the_same_build(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let first = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    let replay = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert_eq!(replay.id, first.id);
    assert_eq!(replay.number, first.number);
    let rows = db
        .scalar_i64(&format!(
            "SELECT COUNT(*) FROM builds WHERE buildrequestid = {}",
            r[0]
        ))
        .await;
    assert_eq!(rows, 1, "a replayed start made a phantom build row");
    // Once that build is over, a new attempt is a new build.
    s.finish_build(a, first.id, r[0], Results::Retry, false)
        .await
        .unwrap();
    s.claim_requests(a, &r).await.unwrap();
    let next = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert_ne!(next.id, first.id);
}

async fn death_is_a_compare_and_swap_on_the_watched_heartbeat(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let _b = master(&s, "b").await;
    let watched = s
        .active_heartbeats()
        .await
        .unwrap()
        .into_iter()
        .find(|(id, _)| *id == a)
        .unwrap()
        .1;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.heartbeat(a).await.unwrap());
    // It beat after the observer's look: the observer's value is stale.
    assert!(!s.declare_dead(a, watched).await.unwrap());
    let now = s
        .active_heartbeats()
        .await
        .unwrap()
        .into_iter()
        .find(|(id, _)| *id == a)
        .unwrap()
        .1;
    assert!(s.declare_dead(a, now).await.unwrap());
    // Exactly one observer wins.
    assert!(!s.declare_dead(a, now).await.unwrap());
    assert!(
        !s.heartbeat(a).await.unwrap(),
        "a dead incarnation cannot beat"
    );
}

async fn releases_skip_rows_a_frozen_master_holds_locked(db: &TestDb) {
    if db.backend == Backend::Sqlite {
        // One writer at a time: no row locks to skip.
        return;
    }
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    // Master a, frozen inside a transaction that holds r[0] locked.
    let mut frozen = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    frozen.execute("BEGIN").await.unwrap();
    frozen
        .execute(AssertSqlSafe(format!(
            "SELECT id FROM buildrequests WHERE id = {} FOR UPDATE",
            r[0]
        )))
        .await
        .unwrap();
    db.exec(&format!("UPDATE masters SET active = 0 WHERE id = {a}"))
        .await;
    let started = Instant::now();
    let released = s.release_inactive().await.unwrap();
    let took = started.elapsed();
    assert_eq!(
        released,
        vec![r[1]],
        "the locked row is skipped, the other released"
    );
    assert!(
        took < Duration::from_secs(3),
        "a release waited {took:?} on a locked row"
    );
    frozen.execute("ROLLBACK").await.unwrap();
    assert_eq!(s.release_inactive().await.unwrap(), vec![r[0]]);
}

async fn orphaned_claims_are_released_only_if_unchanged(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    assert!(s.claims_held(b).await.unwrap().is_empty());
    let held = s.claims_held(a).await.unwrap();
    assert_eq!(held.iter().map(|(id, _)| *id).collect::<Vec<_>>(), r);
    // r[1] is renewed after the look: its claimed_at moved on.
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.renew_claims(a, &[r[1]]).await.unwrap();
    assert_eq!(
        s.release_orphaned_claims(a, &held).await.unwrap(),
        vec![r[0]]
    );
    // Another master's claims are never anyone's orphans but its own.
    assert!(s.claim_requests(b, &[r[0]]).await.unwrap() == vec![r[0]]);
    let theirs = s.claims_held(b).await.unwrap();
    assert!(
        s.release_orphaned_claims(a, &theirs)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_drifted_claim_count_is_recounted(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let other = builder(&s, "other").await;
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(a, &r[..2]).await.unwrap();
    assert!(
        s.recount_claimed().await.unwrap().is_empty(),
        "counts kept by the claims"
    );
    db.exec(&format!(
        "UPDATE builders SET claimed_requests = 7 WHERE id = {bl}"
    ))
    .await;
    db.exec(&format!(
        "UPDATE builders SET claimed_requests = 1 WHERE id = {other}"
    ))
    .await;
    let mut drift = s.recount_claimed().await.unwrap();
    drift.sort();
    let mut want = vec![(bl, 7, 2), (other, 1, 0)];
    want.sort();
    assert_eq!(drift, want);
    assert!(s.recount_claimed().await.unwrap().is_empty());
}
