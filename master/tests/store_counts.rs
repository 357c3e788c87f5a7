//! The written counts that decide buildset completion and
//! `max_concurrent_builds`: `buildsets.open_requests` (with `worst_rank`)
//! and `builders.claimed_requests`. Every path that completes a request or
//! changes a claim keeps them exact; each case checks them against a count
//! of the requests after every step, on MariaDB (scripts and stepwise) and
//! SQLite.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestClaims, TestDb, builder, master, outlive, seed};
use flotilla_master::db::{BuilderId, NewBuildset, RequestFilter, Results, Store};

const SHORT: Duration = Duration::from_secs(1);

store_suite!(
    counts_follow_every_claim_and_completion_path,
    a_batch_completion_counts_each_buildset_down,
    limited_claims_race_and_never_exceed_the_limit,
    the_upgrade_backfills_both_counts,
);

/// Every builder's `claimed_requests` equals its claimed, incomplete
/// requests; every buildset's `open_requests` its incomplete requests, and a
/// buildset with requests is complete exactly when that is zero.
async fn assert_counts_exact(db: &TestDb, step: &str) {
    let wrong_builders = db
        .scalar_i64(
            "SELECT COUNT(*) FROM builders b WHERE b.claimed_requests <> \
             (SELECT COUNT(*) FROM buildrequests br WHERE br.builderid = b.id \
              AND br.complete = 0 AND br.claimed_by_masterid IS NOT NULL)",
        )
        .await;
    assert_eq!(wrong_builders, 0, "{step}: builders.claimed_requests");
    let wrong_buildsets = db
        .scalar_i64(
            "SELECT COUNT(*) FROM buildsets bs WHERE bs.open_requests <> \
             (SELECT COUNT(*) FROM buildrequests br WHERE br.buildsetid = bs.id \
              AND br.complete = 0)",
        )
        .await;
    assert_eq!(wrong_buildsets, 0, "{step}: buildsets.open_requests");
    let wrong_complete = db
        .scalar_i64(
            "SELECT COUNT(*) FROM buildsets bs WHERE \
             EXISTS (SELECT 1 FROM buildrequests br WHERE br.buildsetid = bs.id) \
             AND bs.complete <> CASE WHEN bs.open_requests = 0 THEN 1 ELSE 0 END",
        )
        .await;
    assert_eq!(wrong_complete, 0, "{step}: buildsets.complete");
}

async fn claimed_of(db: &TestDb, builder: i64) -> i64 {
    db.scalar_i64(&format!(
        "SELECT claimed_requests FROM builders WHERE id = {builder}"
    ))
    .await
}

async fn buildset_of(s: &Store, request: i64) -> i64 {
    s.get_request(request).await.unwrap().unwrap().buildset_id
}

async fn counts_follow_every_claim_and_completion_path(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let unit = builder(&s, "unit").await;
    let lint = builder(&s, "lint").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let (_, r) = s
        .add_buildset(&NewBuildset {
            reason: "counts".into(),
            builders: vec![
                (unit, 0),
                (unit, 0),
                (unit, 0),
                (lint, 0),
                (lint, 0),
                (unit, 0),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let other = seed(&s, unit, 3, 0).await;
    assert_counts_exact(db, "created").await;

    assert_eq!(s.claim_requests(a, &r[..2]).await.unwrap().len(), 2);
    assert_counts_exact(db, "claim_requests").await;
    assert_eq!(claimed_of(db, unit).await, 2);

    let limited = s
        .claim_within_limit(a, BuilderId(lint), 1, 10)
        .await
        .unwrap();
    assert_eq!(limited.won().len(), 1);
    assert_counts_exact(db, "claim_within_limit").await;

    let per = s.pick_per_builder(b, &[(unit, 1)]).await.unwrap();
    assert_eq!(per.len(), 1);
    assert_counts_exact(db, "pick_and_claim_per_builder, one").await;
    let per = s
        .pick_per_builder(b, &[(lint, 2), (unit, 1)])
        .await
        .unwrap();
    assert_eq!(per.len(), 2, "{per:?}");
    assert_counts_exact(db, "pick_and_claim_per_builder, several").await;

    // Unclaim, including an id that is not ours (no change for it).
    let mine_b: Vec<i64> = per.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        s.unclaim(b, &[mine_b[0], r[0]]).await.unwrap(),
        vec![mine_b[0]]
    );
    assert_counts_exact(db, "unclaim").await;

    // Completion: one request, then a batch with a foreign id in it.
    assert_eq!(
        s.complete_requests(a, &[r[0]], Results::Success)
            .await
            .unwrap(),
        vec![r[0]]
    );
    assert_counts_exact(db, "complete one").await;
    let held_a: Vec<i64> = s
        .claims_held(a)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.0)
        .collect();
    let mut batch = held_a.clone();
    batch.push(mine_b[1]);
    let mut done = s
        .complete_requests(a, &batch, Results::Warnings)
        .await
        .unwrap();
    done.sort_unstable();
    assert_eq!(done, held_a, "only a's requests complete");
    assert_counts_exact(db, "complete several").await;
    // Completing again changes nothing.
    assert!(
        s.complete_requests(a, &batch, Results::Failure)
            .await
            .unwrap()
            .is_empty()
    );
    assert_counts_exact(db, "complete replayed").await;

    // finish_build, completing and not.
    let free = s.pick_per_builder(a, &[(unit, 2)]).await.unwrap();
    assert_eq!(free.len(), 2, "{free:?}");
    let b0 = s.start_build(a, free[0].0, unit, w).await.unwrap().unwrap();
    let b1 = s.start_build(a, free[1].0, unit, w).await.unwrap().unwrap();
    assert!(
        s.finish_build(a, b0.id, free[0].0, Results::Success, true)
            .await
            .unwrap()
    );
    assert_counts_exact(db, "finish_build completing").await;
    assert!(
        s.finish_build(a, b1.id, free[1].0, Results::Exception, false)
            .await
            .unwrap()
    );
    assert_counts_exact(db, "finish_build requeueing").await;
    // A replayed finish changes no count.
    assert!(
        !s.finish_build(a, b0.id, free[0].0, Results::Success, true)
            .await
            .unwrap()
    );
    assert_counts_exact(db, "finish_build replayed").await;

    // Cancel and the reaper's releases.
    let pending: Vec<i64> = r.iter().chain(&other).copied().collect::<Vec<_>>();
    let mut cancelled = 0;
    for id in &pending {
        let req = s.get_request(*id).await.unwrap().unwrap();
        if !req.complete && req.claimed_by_masterid.is_none() && cancelled == 0 {
            assert!(s.cancel_pending_request(*id).await.unwrap());
            cancelled += 1;
        }
    }
    assert_eq!(cancelled, 1);
    assert_counts_exact(db, "cancel").await;

    let won = s.pick_per_builder(b, &[(unit, 1)]).await.unwrap();
    assert_eq!(won.len(), 1);
    outlive(SHORT).await;
    let released = s.release_expired_claims(SHORT).await.unwrap();
    assert!(released.contains(&won[0].0), "{released:?}");
    assert_counts_exact(db, "release_expired_claims").await;

    let won = s.pick_per_builder(a, &[(unit, 1)]).await.unwrap();
    assert_eq!(won.len(), 1);
    let held = s.claims_held(a).await.unwrap();
    let released = s.release_orphaned_claims(a, &held).await.unwrap();
    assert!(released.contains(&won[0].0), "{released:?}");
    assert_eq!(released.len(), held.len());
    assert_counts_exact(db, "release_orphaned_claims").await;

    let won = s.pick_per_builder(a, &[(unit, 1)]).await.unwrap();
    assert_eq!(won.len(), 1);
    let seen = s.master_flags(a).await.unwrap().unwrap().last_active;
    assert!(s.declare_dead(a, seen).await.unwrap());
    assert_eq!(s.release_inactive().await.unwrap(), vec![won[0].0]);
    assert_counts_exact(db, "release_inactive").await;

    // Finish the rest: the buildset completes with the worst rank any of its
    // requests completed with (one of them was cancelled).
    loop {
        let won = s
            .pick_per_builder(b, &[(unit, 3), (lint, 3)])
            .await
            .unwrap();
        if won.is_empty() {
            break;
        }
        let ids: Vec<i64> = won.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            s.complete_requests(b, &ids, Results::Skipped)
                .await
                .unwrap()
                .len(),
            ids.len()
        );
        assert_counts_exact(db, "drain").await;
    }
    assert_eq!(claimed_of(db, unit).await, 0);
    assert_eq!(claimed_of(db, lint).await, 0);
    let bs = buildset_of(&s, r[0]).await;
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
            .await,
        Results::Cancelled.as_i64(),
        "the cancelled request ranks worst"
    );
}

/// One batch completing several requests of two buildsets (two of one, one
/// of the other): each buildset counts down by its own requests and
/// completes at zero, with the worst results.
async fn a_batch_completion_counts_each_buildset_down(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let unit = builder(&s, "unit").await;
    let first = seed(&s, unit, 2, 0).await;
    let second = seed(&s, unit, 2, 0).await;
    let ids = [first[0], first[1], second[0]];
    assert_eq!(s.claim_requests(a, &ids).await.unwrap().len(), 3);
    assert_eq!(
        s.complete_requests(a, &ids, Results::Failure)
            .await
            .unwrap(),
        ids.to_vec()
    );
    assert_counts_exact(db, "batch").await;
    let (bs1, bs2) = (
        buildset_of(&s, first[0]).await,
        buildset_of(&s, second[0]).await,
    );
    assert_eq!(
        db.scalar_i64(&format!("SELECT complete FROM buildsets WHERE id = {bs1}"))
            .await,
        1
    );
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs1}"))
            .await,
        Results::Failure.as_i64()
    );
    assert_eq!(
        db.scalar_i64(&format!("SELECT complete FROM buildsets WHERE id = {bs2}"))
            .await,
        0
    );
    assert_eq!(s.claim_requests(a, &[second[1]]).await.unwrap().len(), 1);
    assert_eq!(
        s.complete_requests(a, &[second[1]], Results::Success)
            .await
            .unwrap(),
        vec![second[1]]
    );
    assert_counts_exact(db, "second buildset").await;
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs2}"))
            .await,
        Results::Failure.as_i64()
    );
}

/// Masters claiming one limited builder at once, completing and giving back
/// as they go: the claimed, unfinished requests never exceed the limit, and
/// the count is exact when they stop.
async fn limited_claims_race_and_never_exceed_the_limit(db: &TestDb) {
    const MAX: u32 = 3;
    let setup = db.upgraded_store().await;
    let unit = builder(&setup, "limited").await;
    let all = seed(&setup, unit, 40, 0).await;
    let peak = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let s = db.store().await;
        let me = master(&s, &format!("m{i}")).await;
        let peak = peak.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            for round in 0..2000 {
                let won = s
                    .claim_within_limit(me, BuilderId(unit), 2, MAX)
                    .await
                    .unwrap()
                    .request_ids();
                let open = s
                    .list_requests(&RequestFilter {
                        complete: Some(false),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let claimed = open
                    .iter()
                    .filter(|r| r.claimed_by_masterid.is_some())
                    .count();
                peak.fetch_max(claimed as i64, std::sync::atomic::Ordering::Relaxed);
                if won.is_empty() {
                    if open.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                // Give one back now and then, complete the rest.
                let (back, keep) = if round % 3 == 0 {
                    won.split_at(1)
                } else {
                    won.split_at(0)
                };
                s.unclaim(me, back).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                done += s
                    .complete_requests(me, keep, Results::Success)
                    .await
                    .unwrap()
                    .len();
            }
            s.close().await;
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, all.len(), "every request completed once");
    assert!(
        peak.load(std::sync::atomic::Ordering::Relaxed) <= i64::from(MAX),
        "limit exceeded: {}",
        peak.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_counts_exact(db, "limited race").await;
    assert_eq!(claimed_of(db, unit).await, 0);
}

/// A database whose counts predate them (the columns at their defaults):
/// re-running the two backfill migrations makes them exact.
async fn the_upgrade_backfills_both_counts(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let unit = builder(&s, "unit").await;
    let lint = builder(&s, "lint").await;
    let r = seed(&s, unit, 3, 0).await;
    let l = seed(&s, lint, 2, 0).await;
    s.claim_requests(a, &[r[0], r[1], l[0]]).await.unwrap();
    s.complete_requests(a, &[r[0]], Results::Failure)
        .await
        .unwrap();
    s.complete_requests(a, &[l[0]], Results::Success)
        .await
        .unwrap();
    db.exec("UPDATE buildsets SET open_requests = 0, worst_rank = 0")
        .await;
    db.exec("UPDATE builders SET claimed_requests = 0").await;
    db.exec("DELETE FROM _sqlx_migrations WHERE version IN (21, 23)")
        .await;
    assert_eq!(s.upgrade().await.unwrap(), vec![21, 23]);
    assert_counts_exact(db, "backfilled").await;
    assert_eq!(claimed_of(db, unit).await, 1);
    // The remembered worst rank: Failure, although the last request succeeds.
    s.complete_requests(a, &[r[1]], Results::Success)
        .await
        .unwrap();
    s.claim_requests(a, &[r[2], l[1]]).await.unwrap();
    s.complete_requests(a, &[r[2], l[1]], Results::Success)
        .await
        .unwrap();
    assert_counts_exact(db, "after the backfill").await;
    let bs = buildset_of(&s, r[0]).await;
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
            .await,
        Results::Failure.as_i64()
    );
    let bs = buildset_of(&s, l[0]).await;
    assert_eq!(
        db.scalar_i64(&format!("SELECT results FROM buildsets WHERE id = {bs}"))
            .await,
        Results::Success.as_i64()
    );
}
