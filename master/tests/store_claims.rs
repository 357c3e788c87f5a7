//! The store suite, the claim protocol's steps on one request at a time:
//! claim, pick order, renew, give back, complete (fenced), cancel, and a dead
//! incarnation fenced on every claim path.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{TestClaims, TestDb, builder, master, seed};
use flotilla_master::db::claims::testing::claim_exactly;
use flotilla_master::db::{BuilderId, ClaimRound, Results};

store_suite!(
    claim_one_and_many,
    claimed_by_another_is_not_yours,
    missing_id_is_not_an_error,
    unclaim_touches_only_own,
    complete_is_fenced,
    renew_refreshes_and_reports_lost,
    pick_orders_by_priority_then_age,
    pick_per_builder,
    cancel_pending_request,
    a_dead_incarnation_claims_and_starts_nothing,
);

async fn claim_one_and_many(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = builder(&s, "unit").await;
    let r = seed(&s, b, 4, 0).await;
    assert_eq!(s.claim_requests(a, &r[..1]).await.unwrap(), vec![r[0]]);
    let mut won = s.claim_requests(a, &r[1..]).await.unwrap();
    won.sort();
    assert_eq!(won, r[1..].to_vec());
    // Claiming again wins nothing: a claim is a compare-and-swap.
    assert!(s.claim_requests(a, &r).await.unwrap().is_empty());
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert_eq!(row.claimed_by_masterid, Some(a));
    assert_eq!(row.claimed_by_master.as_deref(), Some("a"));
    assert!(row.claimed_at.is_some());
    assert!(!row.complete);
}

async fn claimed_by_another_is_not_yours(db: &TestDb) {
    let s = db.upgraded_store().await;
    let s2 = db.store().await;
    let a = master(&s, "a").await;
    let b2 = master(&s2, "b").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 3, 0).await;
    assert_eq!(s.claim_requests(a, &[r[0]]).await.unwrap(), vec![r[0]]);
    let mut won = s2.claim_requests(b2, &r).await.unwrap();
    won.sort();
    assert_eq!(won, vec![r[1], r[2]]);
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert_eq!(row.claimed_by_masterid, Some(a));
}

async fn missing_id_is_not_an_error(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 1, 0).await;
    let missing = 987_654_321;
    assert_eq!(
        s.claim_requests(a, &[missing, r[0]]).await.unwrap(),
        vec![r[0]]
    );
    let ren = s.renew_claims(a, &[r[0], missing]).await.unwrap();
    assert_eq!(ren.renewed, vec![r[0]]);
    assert_eq!(ren.lost, vec![missing]);
    assert!(s.unclaim(a, &[missing]).await.unwrap().is_empty());
    assert!(
        s.complete_requests(a, &[missing], Results::Success)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.start_build(a, missing, bl, 1).await.unwrap().is_none());
    assert!(s.get_request(missing).await.unwrap().is_none());
    assert!(s.request_details(&[missing]).await.unwrap().is_empty());
    assert!(!s.cancel_pending_request(missing).await.unwrap());
}

async fn unclaim_touches_only_own(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(a, &[r[0]]).await.unwrap();
    s.claim_requests(b, &[r[1]]).await.unwrap();
    assert_eq!(s.unclaim(a, &r).await.unwrap(), vec![r[0]]);
    let r0 = s.get_request(r[0]).await.unwrap().unwrap();
    assert_eq!((r0.claimed_by_masterid, r0.claimed_at), (None, None));
    assert_eq!(
        s.get_request(r[1])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        Some(b)
    );
    // Back in the queue at once.
    assert_eq!(s.claim_requests(b, &[r[0]]).await.unwrap(), vec![r[0]]);
}

async fn complete_is_fenced(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    assert!(
        s.complete_requests(b, &r, Results::Success)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.complete_requests(a, &[r[0]], Results::Warnings)
            .await
            .unwrap(),
        vec![r[0]]
    );
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(row.complete);
    assert_eq!(row.results, Some(Results::Warnings));
    assert!(row.complete_at.is_some());
    // Already complete: refused, and the result does not change.
    assert!(
        s.complete_requests(a, &[r[0]], Results::Failure)
            .await
            .unwrap()
            .is_empty()
    );
    let bs = row.buildset_id;
    let open = BuildFilterHelper::buildset_complete(db, bs).await;
    assert_eq!(open, 0, "buildset completes only with its last request");
    assert_eq!(
        s.complete_requests(a, &[r[1]], Results::Failure)
            .await
            .unwrap(),
        vec![r[1]]
    );
    assert_eq!(BuildFilterHelper::buildset_complete(db, bs).await, 1);
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
            .await,
        Results::Failure.as_i64()
    );
    // A completed request cannot be claimed, renewed or unclaimed.
    assert!(s.claim_requests(b, &r).await.unwrap().is_empty());
    assert_eq!(s.renew_claims(a, &r).await.unwrap().lost, r);
    assert!(s.unclaim(a, &r).await.unwrap().is_empty());
}

struct BuildFilterHelper;
impl BuildFilterHelper {
    async fn buildset_complete(db: &TestDb, bs: i64) -> i64 {
        db.scalar_i64(&format!("SELECT complete FROM buildsets WHERE id = {bs}"))
            .await
    }
}

async fn renew_refreshes_and_reports_lost(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(a, &r[..2]).await.unwrap();
    let before = s
        .get_request(r[0])
        .await
        .unwrap()
        .unwrap()
        .claimed_at
        .unwrap();
    // r[1] is taken from us (given back, then claimed by b).
    s.unclaim(a, &[r[1]]).await.unwrap();
    s.claim_requests(b, &[r[1]]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ren = s.renew_claims(a, &r).await.unwrap();
    assert_eq!(ren.renewed, vec![r[0]]);
    assert_eq!(ren.lost, vec![r[1], r[2]]);
    let after = s
        .get_request(r[0])
        .await
        .unwrap()
        .unwrap()
        .claimed_at
        .unwrap();
    assert!(after > before, "{after} > {before}");
    assert_eq!(
        s.get_request(r[1])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        Some(b)
    );
}

/// Every claim path is fenced on the active-master condition: an
/// incarnation declared dead, woken before its next heartbeat tells it so,
/// wins nothing on any of them and starts no build.
async fn a_dead_incarnation_claims_and_starts_nothing(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 3, 0).await;
    assert_eq!(s.claim_requests(a, &[r[0]]).await.unwrap(), vec![r[0]]);
    let seen = s.master_flags(a).await.unwrap().unwrap().last_active;
    assert!(s.declare_dead(a, seen).await.unwrap());
    let refused = ClaimRound::RefusedInactive;
    assert_eq!(claim_exactly(&s, a, &[r[1]]).await.unwrap(), refused);
    assert_eq!(s.pick_round(a, &[(bl, 1)]).await.unwrap(), refused);
    assert_eq!(s.pick_round(a, &[(bl, 2)]).await.unwrap(), refused);
    assert_eq!(
        s.claim_within_limit(a, BuilderId(bl), 2, 5).await.unwrap(),
        refused
    );
    assert!(s.start_build(a, r[0], bl, w).await.unwrap().is_none());
    let pending = s.get_request(r[1]).await.unwrap().unwrap();
    assert_eq!(pending.claimed_by_masterid, None);
    // The live master takes them, once the dead one's claim is released.
    assert_eq!(s.release_inactive().await.unwrap(), vec![r[0]]);
    assert_eq!(s.pick_per_builder(b, &[(bl, 3)]).await.unwrap().len(), 3);
}

async fn pick_orders_by_priority_then_age(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let x = builder(&s, "x").await;
    let y = builder(&s, "y").await;
    let old_low = seed(&s, x, 1, 0).await[0];
    tokio::time::sleep(Duration::from_millis(5)).await;
    let high = seed(&s, x, 1, 10).await[0];
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new_low = seed(&s, x, 1, 0).await[0];
    let other_builder = seed(&s, y, 1, 100).await[0];
    let taken = seed(&s, x, 1, 50).await[0];
    s.claim_requests(a, &[taken]).await.unwrap();
    let pick = |wants: &'static [(usize, usize)]| {
        let s = s.clone();
        let ids = [x, y];
        async move {
            let wants: Vec<(i64, usize)> = wants.iter().map(|(b, n)| (ids[*b], *n)).collect();
            s.pick_per_builder(a, &wants).await.unwrap()
        }
    };
    assert_eq!(pick(&[(0, 1)]).await, vec![(high, x)]);
    assert_eq!(pick(&[(0, 1)]).await, vec![(old_low, x)]);
    assert_eq!(pick(&[(0, 5)]).await, vec![(new_low, x)]);
    assert!(pick(&[(0, 5)]).await.is_empty());
    assert!(pick(&[]).await.is_empty());
    assert!(pick(&[(1, 0)]).await.is_empty());
    assert_eq!(pick(&[(0, 5), (1, 5)]).await, vec![(other_builder, y)]);
    assert_eq!(
        s.pick_round(a, &[(x, 5)]).await.unwrap(),
        ClaimRound::NothingToDo
    );
}

async fn pick_per_builder(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let x = builder(&s, "x").await;
    let y = builder(&s, "y").await;
    let z = builder(&s, "z").await;
    let rx = seed(&s, x, 3, 0).await;
    let ry = seed(&s, y, 3, 0).await;
    let got = s
        .pick_per_builder(a, &[(x, 2), (y, 5), (z, 4)])
        .await
        .unwrap();
    let mut want: Vec<(i64, i64)> = rx[..2].iter().map(|id| (*id, x)).collect();
    want.extend(ry.iter().map(|id| (*id, y)));
    assert_eq!(got, want);
    let got = s.pick_per_builder(b, &[(x, 5), (y, 5)]).await.unwrap();
    assert_eq!(got, vec![(rx[2], x)]);
    // One request at a time (the claim loop's round with one idle worker),
    // best first: priority, then age.
    let rz = seed(&s, z, 2, 0).await;
    let urgent = seed(&s, z, 1, 5).await;
    for want in [urgent[0], rz[0], rz[1]] {
        assert_eq!(
            s.pick_per_builder(a, &[(z, 1)]).await.unwrap(),
            vec![(want, z)]
        );
    }
    assert!(s.pick_per_builder(a, &[(z, 1)]).await.unwrap().is_empty());
    assert!(s.pick_per_builder(b, &[]).await.unwrap().is_empty());
}

async fn cancel_pending_request(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &[r[1]]).await.unwrap();
    assert!(s.cancel_pending_request(r[0]).await.unwrap());
    assert!(!s.cancel_pending_request(r[0]).await.unwrap());
    assert!(!s.cancel_pending_request(r[1]).await.unwrap(), "claimed");
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(row.complete);
    assert_eq!(row.results, Some(Results::Cancelled));
    assert!(s.pick_per_builder(a, &[(bl, 5)]).await.unwrap().is_empty());
}
