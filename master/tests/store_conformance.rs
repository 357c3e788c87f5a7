//! The store conformance suite: every case runs against MariaDB (a fresh
//! database each) and SQLite (a temporary file), with the same test code.
//!
//! Leases and timeouts are real but short (1 s) and the tests sleep past them:
//! the clock that matters is the database's, so there is nothing to inject.

#[macro_use]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestDb, builder, master, outlive, seed};
use flotilla_master::db::{
    BuildFilter, DbError, NewBuildset, NewChange, Patch, RequestFilter, Results, SourceStamp,
};

const SHORT: Duration = Duration::from_secs(1);

both_backends!(
    schema_status_and_upgrade_are_idempotent,
    claim_one_and_many,
    claimed_by_another_is_not_yours,
    missing_id_is_not_an_error,
    unclaim_touches_only_own,
    complete_is_fenced,
    renew_refreshes_and_reports_lost,
    expired_lease_is_released_once,
    dead_master_is_reaped,
    a_dead_incarnation_claims_and_starts_nothing,
    two_reapers_race,
    restart_releases_older_incarnation,
    start_build_is_fenced,
    finish_build_with_lost_claim,
    finish_build_without_completing_requeues,
    pick_orders_by_priority_then_age,
    pick_per_builder,
    add_buildset_creates_requests,
    cancel_pending_request,
    steps_and_logs,
    masters_flags_and_listing,
    object_ownership,
    object_state,
    cas_state_and_changes_with_state,
    buildsets_with_state_commit_together,
    buildsets_with_state_race,
    reads_and_counts,
    a_buildset_completes_once_when_its_requests_finish_together,
);

async fn schema_status_and_upgrade_are_idempotent(db: &TestDb) {
    let s = db.store().await;
    let st = s.schema_status().await.unwrap();
    assert_eq!(st.current, None);
    assert!(!st.is_current());
    assert_eq!(st.pending.len() as i64, st.latest);
    match s.ensure_current().await {
        Err(e @ DbError::SchemaNotCurrent { .. }) => {
            assert!(e.to_string().contains("flotilla db upgrade"), "{e}")
        }
        other => panic!("expected SchemaNotCurrent, got {other:?}"),
    }
    let applied = s.upgrade().await.unwrap();
    assert_eq!(applied.len() as i64, st.latest);
    let st = s.schema_status().await.unwrap();
    assert!(st.is_current(), "{st:?}");
    assert_eq!(st.current, Some(st.latest));
    assert!(s.upgrade().await.unwrap().is_empty());
    s.ensure_current().await.unwrap();
}

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

async fn expired_lease_is_released_once(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(a, &r[..2]).await.unwrap();
    let build = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    outlive(SHORT).await;
    s.claim_requests(a, &[r[2]]).await.unwrap();
    s.renew_claims(a, &[r[1]]).await.unwrap();
    assert_eq!(s.release_expired_claims(SHORT).await.unwrap(), vec![r[0]]);
    assert!(s.release_expired_claims(SHORT).await.unwrap().is_empty());
    let row = s.get_request(r[0]).await.unwrap().unwrap();
    assert_eq!(row.claimed_by_masterid, None);
    // The old owner's build is over (Retry) and the old owner is fenced off.
    let b = s.get_build(build.id).await.unwrap().unwrap();
    assert_eq!(b.results, Some(Results::Retry));
    assert!(b.complete_at.is_some());
    assert!(s.start_build(a, r[0], bl, w).await.unwrap().is_none());
    assert!(
        !s.finish_build(a, build.id, r[0], Results::Success, true)
            .await
            .unwrap()
    );
    assert!(!s.get_request(r[0]).await.unwrap().unwrap().complete);
}

async fn dead_master_is_reaped(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(a, &r[..2]).await.unwrap();
    s.claim_requests(b, &[r[2]]).await.unwrap();
    let build = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert!(
        s.claim_object(a, "scheduler", "nightly", SHORT * 60)
            .await
            .unwrap()
    );
    outlive(SHORT).await;
    assert!(s.heartbeat(b).await.unwrap());
    let rep = s.reap_dead_masters(SHORT).await.unwrap();
    assert_eq!(rep.dead_masters, vec![a]);
    assert_eq!(rep.released, vec![r[0], r[1]]);
    assert!(!s.heartbeat(a).await.unwrap(), "a dead master learns it");
    let flags = s.master_flags(a).await.unwrap().unwrap();
    assert!(!flags.active);
    assert_eq!(
        s.get_build(build.id).await.unwrap().unwrap().results,
        Some(Results::Retry)
    );
    assert_eq!(
        s.get_request(r[2])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        Some(b)
    );
    let names: Vec<String> = s
        .list_masters(false)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["b".to_string()]);
    assert_eq!(s.list_masters(true).await.unwrap().len(), 2);
    // Its scheduler is free for others.
    assert!(
        s.claim_object(b, "scheduler", "nightly", SHORT * 60)
            .await
            .unwrap()
    );
    let rep = s.reap_dead_masters(SHORT).await.unwrap();
    assert!(rep.dead_masters.is_empty() && rep.released.is_empty());
}

async fn a_dead_incarnation_claims_and_starts_nothing(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 3, 0).await;
    assert_eq!(s.claim_requests(a, &[r[0]]).await.unwrap(), vec![r[0]]);
    outlive(SHORT).await;
    assert!(s.heartbeat(b).await.unwrap());
    assert_eq!(
        s.reap_dead_masters(SHORT).await.unwrap().dead_masters,
        vec![a]
    );
    // Woken after being declared dead, before its next heartbeat tells it so:
    assert!(s.claim_requests(a, &[r[1]]).await.is_err());
    assert!(s.pick_and_claim(a, &[bl], 2).await.is_err());
    assert!(s.pick_and_claim_per_builder(a, &[(bl, 1)]).await.is_err());
    assert!(s.pick_and_claim_per_builder(a, &[(bl, 2)]).await.is_err());
    assert!(s.start_build(a, r[0], bl, w).await.unwrap().is_none());
    let pending = s.get_request(r[1]).await.unwrap().unwrap();
    assert_eq!(pending.claimed_by_masterid, None);
    // The live master takes them.
    assert_eq!(s.pick_and_claim(b, &[bl], 3).await.unwrap().len(), 3);
}

async fn two_reapers_race(db: &TestDb) {
    let s = db.upgraded_store().await;
    let dead = master(&s, "dead").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 60, 0).await;
    assert_eq!(s.claim_requests(dead, &r).await.unwrap().len(), 60);
    let s1 = db.store().await;
    let s2 = db.store().await;
    let m1 = master(&s1, "reaper1").await;
    let m2 = master(&s2, "reaper2").await;
    outlive(SHORT).await;
    s1.heartbeat(m1).await.unwrap();
    s2.heartbeat(m2).await.unwrap();
    let (a, b) = tokio::join!(s1.reap_dead_masters(SHORT), s2.reap_dead_masters(SHORT));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut dead_masters = a.dead_masters.clone();
    dead_masters.extend(&b.dead_masters);
    assert_eq!(
        dead_masters,
        vec![dead],
        "exactly one reaper declares it dead"
    );
    let sa: BTreeSet<i64> = a.released.iter().copied().collect();
    let sb: BTreeSet<i64> = b.released.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "a request released twice");
    assert_eq!(a.released.len() + b.released.len(), r.len());
    let all: BTreeSet<i64> = sa.union(&sb).copied().collect();
    assert_eq!(all, r.iter().copied().collect());
    println!(
        "reaper 1 released {}, reaper 2 released {}",
        a.released.len(),
        b.released.len()
    );
}

async fn restart_releases_older_incarnation(db: &TestDb) {
    let s = db.upgraded_store().await;
    let old = s.register_master("m1").await.unwrap();
    let other = master(&s, "m2").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 3, 0).await;
    s.claim_requests(old.id, &r[..2]).await.unwrap();
    s.claim_requests(other, &[r[2]]).await.unwrap();
    let new = s.register_master("m1").await.unwrap();
    assert_ne!(new.id, old.id);
    assert!(new.boot_time >= old.boot_time);
    assert_ne!((new.boot_time, &new.nonce), (old.boot_time, &old.nonce));
    assert_eq!(
        s.release_older_incarnations(&new).await.unwrap(),
        vec![r[0], r[1]]
    );
    assert!(!s.master_flags(old.id).await.unwrap().unwrap().active);
    assert!(!s.heartbeat(old.id).await.unwrap());
    assert!(s.heartbeat(new.id).await.unwrap());
    assert_eq!(
        s.get_request(r[2])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        Some(other)
    );
    assert!(s.release_older_incarnations(&new).await.unwrap().is_empty());
    // The old incarnation does not release the new one.
    let r2 = seed(&s, bl, 1, 0).await;
    s.claim_requests(new.id, &r2).await.unwrap();
    assert!(s.release_older_incarnations(&old).await.unwrap().is_empty());
}

async fn start_build_is_fenced(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s
        .ensure_worker("w1", &serde_json::json!({"os": "linux"}))
        .await
        .unwrap();
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    assert!(s.start_build(b, r[0], bl, w).await.unwrap().is_none());
    let b1 = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert_eq!(
        (b1.number, b1.request_id, b1.master_id, b1.worker_id),
        (1, r[0], a, w)
    );
    let b2 = s.start_build(a, r[1], bl, w).await.unwrap().unwrap();
    assert_eq!(b2.number, 2);
    s.complete_requests(a, &[r[1]], Results::Success)
        .await
        .unwrap();
    assert!(s.start_build(a, r[1], bl, w).await.unwrap().is_none());
}

async fn finish_build_with_lost_claim(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let lost = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    let kept = s.start_build(a, r[1], bl, w).await.unwrap().unwrap();
    // r[0] goes to b behind a's back.
    s.unclaim(a, &[r[0]]).await.unwrap();
    s.claim_requests(b, &[r[0]]).await.unwrap();
    assert!(
        !s.finish_build(a, lost.id, r[0], Results::Success, true)
            .await
            .unwrap()
    );
    let info = s.get_build(lost.id).await.unwrap().unwrap();
    assert_eq!(info.results, Some(Results::Retry));
    assert!(info.complete_at.is_some());
    let req = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(!req.complete);
    assert_eq!(req.claimed_by_masterid, Some(b));
    // The happy path completes both.
    assert!(
        s.finish_build(a, kept.id, r[1], Results::Failure, true)
            .await
            .unwrap()
    );
    let req = s.get_request(r[1]).await.unwrap().unwrap();
    assert!(req.complete);
    assert_eq!(req.results, Some(Results::Failure));
    assert_eq!(
        s.get_build(kept.id).await.unwrap().unwrap().results,
        Some(Results::Failure)
    );
}

async fn finish_build_without_completing_requeues(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let build = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    assert!(
        s.finish_build(a, build.id, r[0], Results::Retry, false)
            .await
            .unwrap()
    );
    let req = s.get_request(r[0]).await.unwrap().unwrap();
    assert!(!req.complete);
    assert_eq!(req.claimed_by_masterid, None);
    assert_eq!(
        s.get_build(build.id).await.unwrap().unwrap().results,
        Some(Results::Retry)
    );
    assert_eq!(s.pick_and_claim(b, &[bl], 5).await.unwrap(), r);
    let again = s.start_build(b, r[0], bl, w).await.unwrap().unwrap();
    assert_eq!(again.number, 2);
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
    assert_eq!(s.pick_and_claim(a, &[x], 1).await.unwrap(), vec![high]);
    assert_eq!(s.pick_and_claim(a, &[x], 1).await.unwrap(), vec![old_low]);
    assert_eq!(s.pick_and_claim(a, &[x], 5).await.unwrap(), vec![new_low]);
    assert!(s.pick_and_claim(a, &[x], 5).await.unwrap().is_empty());
    assert!(s.pick_and_claim(a, &[], 5).await.unwrap().is_empty());
    assert!(s.pick_and_claim(a, &[y], 0).await.unwrap().is_empty());
    assert_eq!(
        s.pick_and_claim(a, &[x, y], 5).await.unwrap(),
        vec![other_builder]
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
        .pick_and_claim_per_builder(a, &[(x, 2), (y, 5), (z, 4)])
        .await
        .unwrap();
    let mut want: Vec<(i64, i64)> = rx[..2].iter().map(|id| (*id, x)).collect();
    want.extend(ry.iter().map(|id| (*id, y)));
    assert_eq!(got, want);
    let got = s
        .pick_and_claim_per_builder(b, &[(x, 5), (y, 5)])
        .await
        .unwrap();
    assert_eq!(got, vec![(rx[2], x)]);
    // One request at a time (the claim loop's round with one idle worker),
    // best first: priority, then age.
    let rz = seed(&s, z, 2, 0).await;
    let urgent = seed(&s, z, 1, 5).await;
    for want in [urgent[0], rz[0], rz[1]] {
        assert_eq!(
            s.pick_and_claim_per_builder(a, &[(z, 1)]).await.unwrap(),
            vec![(want, z)]
        );
    }
    assert!(
        s.pick_and_claim_per_builder(a, &[(z, 1)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.pick_and_claim_per_builder(b, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn add_buildset_creates_requests(db: &TestDb) {
    let s = db.upgraded_store().await;
    let ids = s
        .ensure_builders(&["unit".to_string(), "lint".to_string()])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    // Idempotent, also concurrently.
    let s2 = db.store().await;
    let names = vec!["unit".to_string(), "lint".to_string(), "docs".to_string()];
    let (i1, i2) = tokio::join!(s.ensure_builders(&names), s2.ensure_builders(&names));
    let (i1, i2) = (i1.unwrap(), i2.unwrap());
    assert_eq!(i1, i2);
    assert_eq!(i1["unit"], ids["unit"]);
    let mut props = BTreeMap::new();
    props.insert("owner".to_string(), serde_json::json!("alice"));
    props.insert("n".to_string(), serde_json::json!([1, 2]));
    let stamps = vec![
        SourceStamp {
            repository: "https://example.com/r.git".into(),
            branch: Some("main".into()),
            revision: Some("abc123".into()),
            project: "p".into(),
            codebase: "".into(),
            patch: Some(Patch {
                body: b"--- a\n+++ b\n\xff".to_vec(),
                level: 1,
                subdir: Some("sub".into()),
                author: "bob".into(),
                comment: "try".into(),
            }),
        },
        SourceStamp {
            repository: "https://example.com/lib.git".into(),
            codebase: "lib".into(),
            ..Default::default()
        },
    ];
    let (bs, reqs) = s
        .add_buildset(&NewBuildset {
            reason: "force".into(),
            external_idstring: Some("ext-1".into()),
            scheduler: Some("force".into()),
            sourcestamps: stamps.clone(),
            properties: props.clone(),
            builders: vec![(ids["unit"], 3), (ids["lint"], 0)],
            parent_buildid: None,
            change_ids: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(reqs.len(), 2);
    let details = s.request_details(&reqs).await.unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0].id, reqs[0]);
    assert_eq!(details[0].buildset_id, bs);
    assert_eq!(details[0].builder, "unit");
    assert_eq!(details[0].builder_id, ids["unit"]);
    assert_eq!(details[0].priority, 3);
    assert_eq!(details[0].reason, "force");
    assert_eq!(details[0].sourcestamps, stamps);
    assert_eq!(details[0].properties, props);
    assert_eq!(details[1].builder, "lint");
    let listed = s
        .list_requests(&RequestFilter {
            buildset_id: Some(bs),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|r| !r.complete && r.claimed_by_master.is_none())
    );
    let change = s
        .add_change(&NewChange {
            author: "alice".into(),
            comments: "fix".into(),
            branch: Some("main".into()),
            revision: Some("abc".into()),
            repository: "r".into(),
            files: vec!["a.rs".into()],
            when: Some(chrono::Utc::now()),
            ..Default::default()
        })
        .await
        .unwrap();
    let change2 = s.add_change(&NewChange::default()).await.unwrap();
    assert!(change2 > change);
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
    assert!(s.pick_and_claim(a, &[bl], 5).await.unwrap().is_empty());
}

async fn steps_and_logs(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let build = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    let st0 = s.add_step(build.id, 0, "checkout").await.unwrap();
    let st1 = s.add_step(build.id, 1, "test").await.unwrap();
    assert_eq!(s.add_step(build.id, 1, "test").await.unwrap(), st1);
    let steps = s.list_steps(build.id).await.unwrap();
    assert_eq!(steps.len(), 2);
    assert!(steps[0].started_at.is_none());
    s.start_step(st0).await.unwrap();
    let log = s.create_log(st0, "stdio").await.unwrap();
    assert_eq!(s.create_log(st0, "stdio").await.unwrap(), log);
    s.append_log_chunk(log, 0, b"hello ").await.unwrap();
    s.append_log_chunk(log, 2, b"!\n").await.unwrap();
    s.append_log_chunk(log, 1, b"world").await.unwrap();
    s.append_log_chunk(log, 1, b"world").await.unwrap();
    assert_eq!(s.read_log(log).await.unwrap(), b"hello world!\n");
    assert_eq!(
        s.step_log_id(build.id, 0, "stdio").await.unwrap(),
        Some(log)
    );
    assert_eq!(s.step_log_id(build.id, 1, "stdio").await.unwrap(), None);
    s.finish_step(st0, Results::Success, "checked out")
        .await
        .unwrap();
    let steps = s.list_steps(build.id).await.unwrap();
    assert_eq!(steps[0].results, Some(Results::Success));
    assert_eq!(steps[0].state_string, "checked out");
    assert!(steps[0].started_at.is_some() && steps[0].complete_at.is_some());
    assert_eq!(steps[1].name, "test");
    assert!(steps[1].results.is_none());
    assert!(s.read_log(987_654).await.unwrap().is_empty());
}

async fn masters_flags_and_listing(db: &TestDb) {
    let s = db.upgraded_store().await;
    let before = s.db_now().await.unwrap();
    let m = s.register_master("m1").await.unwrap();
    assert!(m.active && !m.draining);
    assert!(m.boot_time >= before && m.boot_time <= s.db_now().await.unwrap());
    assert_eq!(m.boot_time, m.last_active);
    s.set_draining(m.id, true).await.unwrap();
    assert!(s.master_flags(m.id).await.unwrap().unwrap().draining);
    assert_eq!(s.set_draining_by_name("m1", false).await.unwrap(), 1);
    assert!(!s.master_flags(m.id).await.unwrap().unwrap().draining);
    assert_eq!(s.set_draining_by_name("nobody", true).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(s.heartbeat(m.id).await.unwrap());
    let m2 = s.master_flags(m.id).await.unwrap().unwrap();
    assert!(m2.last_active > m.last_active);
    assert!(s.master_flags(987_654).await.unwrap().is_none());
    let json = serde_json::to_value(&m2).unwrap();
    assert!(json["boot_time"].as_str().unwrap().contains('T'));
    // Clean exit gives everything back.
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 2, 0).await;
    s.claim_requests(m.id, &r).await.unwrap();
    let build = s.start_build(m.id, r[0], bl, w).await.unwrap().unwrap();
    s.claim_object(m.id, "poller", "git", SHORT * 60)
        .await
        .unwrap();
    s.deactivate_master(m.id).await.unwrap();
    assert!(!s.heartbeat(m.id).await.unwrap());
    assert!(s.list_masters(false).await.unwrap().is_empty());
    assert_eq!(
        s.get_request(r[0])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        None
    );
    assert_eq!(
        s.get_request(r[1])
            .await
            .unwrap()
            .unwrap()
            .claimed_by_masterid,
        None
    );
    assert_eq!(
        s.get_build(build.id).await.unwrap().unwrap().results,
        Some(Results::Retry)
    );
    assert_eq!(s.object_owner("poller", "git").await.unwrap(), None);
}

async fn object_ownership(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let lease = SHORT;
    assert!(s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    assert!(!s.claim_object(b, "scheduler", "main", lease).await.unwrap());
    assert!(
        s.claim_object(a, "scheduler", "main", lease).await.unwrap(),
        "renew"
    );
    assert!(
        s.claim_object(b, "scheduler", "other", lease)
            .await
            .unwrap()
    );
    outlive(lease).await;
    // a did not renew: b may take it; then a may not.
    assert!(s.claim_object(b, "scheduler", "main", lease).await.unwrap());
    assert!(!s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    assert_eq!(s.object_owner("scheduler", "main").await.unwrap(), Some(b));
    assert_eq!(s.release_objects(b).await.unwrap(), 2);
    assert!(s.claim_object(a, "scheduler", "main", lease).await.unwrap());
    // Owned by an inactive master: free at once.
    s.deactivate_master(a).await.unwrap();
    assert!(
        !s.claim_object(a, "scheduler", "x", lease).await.unwrap(),
        "inactive"
    );
    assert!(s.claim_object(b, "scheduler", "main", lease).await.unwrap());
}

async fn object_state(db: &TestDb) {
    let s = db.upgraded_store().await;
    assert_eq!(s.get_state("sched", "last").await.unwrap(), None);
    let v = serde_json::json!({"rev": "abc", "n": [1, 2, 3]});
    s.set_state("sched", "last", &v).await.unwrap();
    assert_eq!(s.get_state("sched", "last").await.unwrap(), Some(v));
    s.set_state("sched", "last", &serde_json::json!(7))
        .await
        .unwrap();
    assert_eq!(
        s.get_state("sched", "last").await.unwrap(),
        Some(serde_json::json!(7))
    );
}

async fn cas_state_and_changes_with_state(db: &TestDb) {
    let s = db.upgraded_store().await;
    let (v1, v2) = (serde_json::json!({"n": 1}), serde_json::json!({"n": 2}));
    // Absent: created once; a second creator loses.
    assert!(s.cas_state("src", "revs", None, &v1).await.unwrap());
    assert!(!s.cas_state("src", "revs", None, &v2).await.unwrap());
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v1.clone()));
    // Present: moved only from the value it holds.
    assert!(!s.cas_state("src", "revs", Some(&v2), &v1).await.unwrap());
    assert!(s.cas_state("src", "revs", Some(&v1), &v2).await.unwrap());
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v2.clone()));
    // Expecting a value where there is none creates nothing.
    assert!(!s.cas_state("src", "other", Some(&v1), &v2).await.unwrap());
    assert_eq!(s.get_state("src", "other").await.unwrap(), None);

    let change = |rev: &str| NewChange {
        author: "alice".into(),
        revision: Some(rev.into()),
        repository: "r".into(),
        ..Default::default()
    };
    let v3 = serde_json::json!({"n": 3});
    let ids = s
        .add_changes_with_state(&[change("a"), change("b")], "src", "revs", Some(&v2), &v3)
        .await
        .unwrap()
        .expect("the move from the current value wins");
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    // A stale or absent expectation records nothing.
    assert_eq!(
        s.add_changes_with_state(&[change("c")], "src", "revs", Some(&v2), &v1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.add_changes_with_state(&[change("c")], "src", "revs", None, &v1)
            .await
            .unwrap(),
        None
    );
    assert_eq!(db.scalar_i64("SELECT COUNT(*) FROM changes").await, 2);
    assert_eq!(s.get_state("src", "revs").await.unwrap(), Some(v3));
    let fresh = s
        .add_changes_with_state(&[change("d")], "src2", "revs", None, &v1)
        .await
        .unwrap()
        .expect("absent state is created");
    assert_eq!(fresh.len(), 1);
    assert_eq!(s.get_state("src2", "revs").await.unwrap(), Some(v1));
}

/// Rows in every table a buildset writes, to see that a lost move wrote none.
async fn buildset_rows(db: &TestDb) -> [i64; 5] {
    let mut out = [0; 5];
    let tables = [
        "buildsets",
        "sourcestamps",
        "buildset_sourcestamps",
        "buildset_properties",
        "buildrequests",
    ];
    for (n, t) in out.iter_mut().zip(tables) {
        *n = db.scalar_i64(&format!("SELECT COUNT(*) FROM {t}")).await;
    }
    out
}

async fn buildsets_with_state_commit_together(db: &TestDb) {
    let s = db.upgraded_store().await;
    let ids = s
        .ensure_builders(&["unit".to_string(), "lint".to_string()])
        .await
        .unwrap();
    let fired = |rev: &str| NewBuildset {
        reason: format!("nightly {rev}"),
        scheduler: Some("nightly".into()),
        sourcestamps: vec![SourceStamp {
            repository: "https://example.com/r.git".into(),
            branch: Some("main".into()),
            revision: Some(rev.into()),
            ..Default::default()
        }],
        properties: BTreeMap::from([("rev".to_string(), serde_json::json!(rev))]),
        builders: vec![(ids["unit"], 1), (ids["lint"], 0)],
        ..Default::default()
    };
    let obj = "scheduler:nightly";
    let (v1, v2) = (
        serde_json::json!({"checked": "01:00"}),
        serde_json::json!({"checked": "02:00"}),
    );

    // Absent state, the move wins: state and buildsets both there.
    let made = s
        .add_buildsets_with_state(&[fired("a"), fired("b")], obj, "state", None, &v1)
        .await
        .unwrap()
        .expect("creating absent state wins");
    assert_eq!(made.len(), 2);
    assert!(made[0].0 < made[1].0);
    for ((bs, reqs), rev) in made.iter().zip(["a", "b"]) {
        assert_eq!(reqs.len(), 2);
        let details = s.request_details(reqs).await.unwrap();
        assert_eq!(details.len(), 2);
        assert!(details.iter().all(|d| d.buildset_id == *bs));
        assert_eq!(details[0].builder, "unit");
        assert_eq!(details[0].priority, 1);
        assert_eq!(details[1].builder, "lint");
        assert_eq!(details[0].reason, format!("nightly {rev}"));
        assert_eq!(details[0].sourcestamps, fired(rev).sourcestamps);
        assert_eq!(details[0].properties, fired(rev).properties);
    }
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1.clone()));
    assert_eq!(buildset_rows(db).await, [2, 2, 2, 2, 4]);

    // Absent expected but present: lost, nothing written.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("c")], obj, "state", None, &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1.clone()));
    assert_eq!(buildset_rows(db).await, [2, 2, 2, 2, 4]);

    // Present state, the move wins.
    let (bs, reqs) = s
        .add_buildsets_with_state(&[fired("d")], obj, "state", Some(&v1), &v2)
        .await
        .unwrap()
        .expect("the move from the current value wins")
        .pop()
        .unwrap();
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v2.clone()));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);
    let listed = s
        .list_requests(&RequestFilter {
            buildset_id: Some(bs),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut listed: Vec<i64> = listed.iter().map(|r| r.id).collect();
    listed.sort_unstable();
    assert_eq!(listed, reqs);
    let status = s.buildset_status(bs).await.unwrap().unwrap();
    assert!(!status.complete);

    // Someone else moved the state: lost, no buildset, source stamp,
    // property or request, the state untouched.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("e"), fired("f")], obj, "state", Some(&v1), &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v2.clone()));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);

    // Expecting a value where there is no state: lost, and no state created.
    assert_eq!(
        s.add_buildsets_with_state(&[fired("g")], "scheduler:other", "state", Some(&v1), &v2)
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.get_state("scheduler:other", "state").await.unwrap(), None);
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);

    // No buildset: just the move, in the same way.
    assert_eq!(
        s.add_buildsets_with_state(&[], obj, "state", Some(&v2), &v1)
            .await
            .unwrap(),
        Some(vec![])
    );
    assert_eq!(s.get_state(obj, "state").await.unwrap(), Some(v1));
    assert_eq!(buildset_rows(db).await, [3, 3, 3, 3, 6]);
}

/// Two masters that both believe they own a scheduler fire the same tick at
/// once: exactly one buildset is created each time.
async fn buildsets_with_state_race(db: &TestDb) {
    let s1 = db.upgraded_store().await;
    let s2 = db.store().await;
    let b = builder(&s1, "unit").await;
    let bs = NewBuildset {
        reason: "periodic".into(),
        scheduler: Some("periodic".into()),
        sourcestamps: vec![SourceStamp {
            repository: "r".into(),
            ..Default::default()
        }],
        builders: vec![(b, 0)],
        ..Default::default()
    };
    let mut expected: Option<serde_json::Value> = None;
    for tick in 0..6 {
        let new = serde_json::json!({ "tick": tick });
        let (r1, r2) = tokio::join!(
            s1.add_buildsets_with_state(
                std::slice::from_ref(&bs),
                "scheduler:p",
                "state",
                expected.as_ref(),
                &new
            ),
            s2.add_buildsets_with_state(
                std::slice::from_ref(&bs),
                "scheduler:p",
                "state",
                expected.as_ref(),
                &new
            ),
        );
        let (r1, r2) = (r1.unwrap(), r2.unwrap());
        assert!(
            r1.is_some() != r2.is_some(),
            "tick {tick}: exactly one wins, got {r1:?} and {r2:?}"
        );
        assert_eq!(
            db.scalar_i64("SELECT COUNT(*) FROM buildsets").await,
            tick + 1
        );
        assert_eq!(
            s1.get_state("scheduler:p", "state").await.unwrap(),
            Some(new.clone())
        );
        expected = Some(new);
    }
    assert_eq!(buildset_rows(db).await, [6, 6, 6, 0, 6]);
}

async fn reads_and_counts(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let x = builder(&s, "x").await;
    let y = builder(&s, "y").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let rx = seed(&s, x, 3, 0).await;
    seed(&s, y, 1, 0).await;
    s.claim_requests(a, &rx[..2]).await.unwrap();
    let b1 = s.start_build(a, rx[0], x, w).await.unwrap().unwrap();
    s.complete_requests(a, &[rx[1]], Results::Success)
        .await
        .unwrap();
    let counts = s.builder_counts().await.unwrap();
    let by: BTreeMap<_, _> = counts
        .iter()
        .map(|c| (c.name.as_str(), (c.pending, c.running)))
        .collect();
    assert_eq!(by["x"], (1, 1));
    assert_eq!(by["y"], (1, 0));
    let pending = s
        .list_requests(&RequestFilter {
            complete: Some(false),
            builder: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![rx[2], rx[0]],
        "newest first"
    );
    let page = s
        .list_requests(&RequestFilter {
            limit: 1,
            offset: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    let json = serde_json::to_value(&pending[1]).unwrap();
    assert_eq!(json["claimed_by_master"], "a");
    assert_eq!(json["builder"], "x");
    let done = s.get_request(rx[1]).await.unwrap().unwrap();
    assert_eq!(serde_json::to_value(&done).unwrap()["results"], "success");
    let builds = s
        .list_builds(&BuildFilter {
            builder: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(builds.len(), 1);
    let info = &builds[0];
    assert_eq!(
        (info.id, info.number, info.buildrequest_id),
        (b1.id, 1, rx[0])
    );
    assert_eq!(
        (info.master.as_str(), info.worker.as_deref()),
        ("a", Some("w1"))
    );
    assert_eq!(info.started_at, b1.started_at);
    assert!(info.complete_at.is_none() && info.results.is_none());
    assert!(
        s.list_builds(&BuildFilter {
            request_id: Some(rx[2]),
            ..Default::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
    assert!(s.get_build(987_654).await.unwrap().is_none());
}

/// Every store future must be `Send`, so masters can spawn them on tokio.
/// Compiling is the test.
#[allow(dead_code, clippy::let_underscore_future)]
fn store_futures_are_send(s: flotilla_master::db::Store, m: flotilla_master::db::MasterRow) {
    fn send<T: Send>(_: T) {}
    let d = Duration::from_secs(1);
    let v = serde_json::json!({});
    send(flotilla_master::db::Store::connect("sqlite::memory:"));
    send(s.close());
    send(s.upgrade());
    send(s.schema_status());
    send(s.ensure_current());
    send(s.db_now());
    send(s.register_master("m"));
    send(s.heartbeat(1));
    send(s.set_draining(1, true));
    send(s.set_draining_by_name("m", true));
    send(s.master_flags(1));
    send(s.deactivate_master(1));
    send(s.list_masters(true));
    send(s.release_older_incarnations(&m));
    send(s.reap_dead_masters(d));
    send(s.release_expired_claims(d));
    send(s.ensure_builders(&[]));
    send(s.ensure_worker("w", &v));
    send(s.add_change(&NewChange::default()));
    send(s.add_buildset(&NewBuildset::default()));
    send(s.add_buildsets_with_state(&[], "o", "n", None, &v));
    send(s.cas_state("o", "n", None, &v));
    send(s.add_changes_with_state(&[], "o", "n", None, &v));
    send(s.request_details(&[]));
    send(s.claim_requests(1, &[]));
    send(s.pick_and_claim(1, &[], 1));
    send(s.pick_and_claim_per_builder(1, &[]));
    send(s.renew_claims(1, &[]));
    send(s.unclaim(1, &[]));
    send(s.complete_requests(1, &[], Results::Success));
    send(s.cancel_pending_request(1));
    send(s.start_build(1, 1, 1, 1));
    send(s.finish_build(1, 1, 1, Results::Success, true));
    send(s.add_step(1, 0, "s"));
    send(s.start_step(1));
    send(s.finish_step(1, Results::Success, ""));
    send(s.create_log(1, "l"));
    send(s.append_log_chunk(1, 0, b""));
    send(s.read_log(1));
    send(s.step_log_id(1, 0, "l"));
    send(s.list_requests(&RequestFilter::default()));
    send(s.get_request(1));
    send(s.list_builds(&BuildFilter::default()));
    send(s.get_build(1));
    send(s.list_steps(1));
    send(s.builder_counts());
    send(s.get_state("o", "n"));
    send(s.set_state("o", "n", &v));
    send(s.claim_object(1, "k", "n", d));
    send(s.release_objects(1));
}

/// Masters finishing the requests of one buildset at the same moment, through
/// both completion paths: the buildset completes with its last request, once,
/// with the worst results by rank (Warnings is worse than Skipped although
/// its code is lower).
async fn a_buildset_completes_once_when_its_requests_finish_together(db: &TestDb) {
    let setup = db.upgraded_store().await;
    let bl = builder(&setup, "unit").await;
    let w = setup
        .ensure_worker("w1", &serde_json::json!({}))
        .await
        .unwrap();
    let outcomes = [
        Results::Success,
        Results::Skipped,
        Results::Warnings,
        Results::Success,
    ];
    for round in 0..6 {
        let r = seed(&setup, bl, outcomes.len(), 0).await;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(outcomes.len()));
        let mut tasks = Vec::new();
        for (i, (id, outcome)) in r.iter().copied().zip(outcomes).enumerate() {
            let s = db.store().await;
            let m = master(&s, &format!("m{round}-{i}")).await;
            assert_eq!(s.claim_requests(m, &[id]).await.unwrap(), vec![id]);
            let build = if i % 2 == 1 {
                Some(s.start_build(m, id, bl, w).await.unwrap().unwrap())
            } else {
                None
            };
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let done = match build {
                    Some(b) => s.finish_build(m, b.id, id, outcome, true).await.unwrap(),
                    None => s.complete_requests(m, &[id], outcome).await.unwrap() == vec![id],
                };
                s.close().await;
                done
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap(), "every completion is accepted");
        }
        let bs = setup.get_request(r[0]).await.unwrap().unwrap().buildset_id;
        assert_eq!(
            db.scalar_i64(&format!("SELECT complete FROM buildsets WHERE id = {bs}"))
                .await,
            1,
            "round {round}: the buildset completes with its last request"
        );
        assert_eq!(
            db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
                .await,
            Results::Warnings.as_i64(),
            "round {round}: worst results by rank"
        );
    }
}
