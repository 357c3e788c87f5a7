//! The store suite, builds: starting and finishing them fenced on the claim,
//! steps and logs.
//! Every case runs on MariaDB (with and without the one-trip scripts) and
//! SQLite (`store_suite!`).

#[macro_use]
mod common;

use common::{TestClaims, TestDb, builder, master, seed};
use flotilla_master::db::Results;

store_suite!(
    start_build_is_fenced,
    finish_build_with_lost_claim,
    finish_build_without_completing_requeues,
    steps_and_logs,
    many_masters_start_builds_of_one_builder_at_once,
);

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

/// Build numbers are per builder, max + 1: masters starting builds of one
/// builder side by side must each get a number, never a duplicate key, and
/// the numbers run without a gap.
async fn many_masters_start_builds_of_one_builder_at_once(db: &TestDb) {
    const MASTERS: usize = 8;
    const EACH: usize = 30;
    let s = db.upgraded_store().await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let mut tasks = Vec::new();
    for m in 0..MASTERS {
        let store = db.store().await;
        let me = master(&store, &format!("m{m}")).await;
        let r = seed(&store, bl, EACH, 0).await;
        store.claim_requests(me, &r).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut numbers = Vec::new();
            for id in r {
                let b = store.start_build(me, id, bl, w).await;
                let b = b.unwrap_or_else(|e| panic!("start of request {id}: {e}"));
                numbers.push(b.expect("claim held").number);
            }
            numbers
        }));
    }
    let mut numbers = Vec::new();
    for t in tasks {
        numbers.extend(t.await.unwrap());
    }
    numbers.sort_unstable();
    let expected: Vec<i64> = (1..=(MASTERS * EACH) as i64).collect();
    assert_eq!(numbers, expected);
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
    assert_eq!(
        s.pick_per_builder(b, &[(bl, 5)]).await.unwrap(),
        vec![(r[0], bl)]
    );
    let again = s.start_build(b, r[0], bl, w).await.unwrap().unwrap();
    assert_eq!(again.number, 2);
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
