//! The store suite, releasing others' claims: expired leases, dead masters
//! (declared by compare-and-swap, claims released once), older incarnations,
//! and the masters table itself.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{TestClaims, TestDb, builder, master, outlive, seed};
use flotilla_master::db::Results;

const SHORT: Duration = Duration::from_secs(1);

store_suite!(
    expired_lease_is_released_once,
    dead_master_is_reaped,
    two_reapers_race,
    restart_releases_older_incarnation,
    masters_flags_and_listing,
);

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
    let seen = s.master_flags(a).await.unwrap().unwrap().last_active;
    assert!(s.heartbeat(b).await.unwrap());
    assert!(s.declare_dead(a, seen).await.unwrap());
    assert_eq!(s.release_inactive().await.unwrap(), vec![r[0], r[1]]);
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
    assert!(!s.declare_dead(a, seen).await.unwrap(), "dead once");
    assert!(s.release_inactive().await.unwrap().is_empty());
}

async fn two_reapers_race(db: &TestDb) {
    let s = db.upgraded_store().await;
    let dead = master(&s, "dead").await;
    let bl = builder(&s, "unit").await;
    let r = seed(&s, bl, 60, 0).await;
    assert_eq!(s.claim_requests(dead, &r).await.unwrap().len(), 60);
    let seen = s.master_flags(dead).await.unwrap().unwrap().last_active;
    let s1 = db.store().await;
    let s2 = db.store().await;
    let (d1, d2) = tokio::join!(s1.declare_dead(dead, seen), s2.declare_dead(dead, seen));
    assert!(
        d1.unwrap() ^ d2.unwrap(),
        "exactly one reaper declares it dead"
    );
    let (a, b) = tokio::join!(s1.release_inactive(), s2.release_inactive());
    let (a, b) = (a.unwrap(), b.unwrap());
    let sa: BTreeSet<i64> = a.iter().copied().collect();
    let sb: BTreeSet<i64> = b.iter().copied().collect();
    assert!(sa.is_disjoint(&sb), "a request released twice");
    assert_eq!(a.len() + b.len(), r.len());
    let all: BTreeSet<i64> = sa.union(&sb).copied().collect();
    assert_eq!(all, r.iter().copied().collect());
    println!(
        "reaper 1 released {}, reaper 2 released {}",
        a.len(),
        b.len()
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
