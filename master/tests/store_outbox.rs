//! The reporters' outbox in the store: events written with the build
//! change (once, however often the change is replayed, on every path
//! including the one-trip MySQL script), deliveries of one topic claimed
//! one at a time in order, an older one superseded by a newer one sent,
//! claims taken from dead masters only, and a lost claim recording nothing.

#[macro_use]
mod common;

use std::time::Duration;

use common::{TestClaims, TestDb, builder, master, outlive, seed};
use flotilla_master::db::outbox::{Phase, ReportRoute};
use flotilla_master::db::{DeliveryOutcome, DeliveryState, MasterId, Prepared, Results, Store};

store_suite!(
    starts_and_finishes_enqueue_one_delivery_each_even_when_replayed,
    a_topic_is_delivered_in_order_and_an_outdated_status_is_superseded,
    a_dead_masters_delivery_is_taken_over_and_the_loser_records_nothing,
    failures_are_retried_until_the_horizon,
    builds_ended_by_reaping_report_their_end,
);

const LEASE: Duration = Duration::from_secs(600);

fn route(reporter: &str, builder_id: Option<i64>) -> ReportRoute {
    ReportRoute {
        reporter: reporter.into(),
        builder_id,
        started: true,
        finished: true,
    }
}

/// Start and finish one build of a new request of `bl`; its id.
async fn one_build(s: &Store, me: MasterId, bl: i64, w: i64) -> i64 {
    let r = seed(s, bl, 1, 0).await;
    s.claim_requests(me, &r).await.unwrap();
    let b = s.start_build(me, r[0], bl, w).await.unwrap().unwrap();
    assert!(
        s.finish_build(me, b.id, r[0], Results::Success, true)
            .await
            .unwrap()
    );
    b.id
}

/// Prepare every new delivery with `topic`, status = the event's name.
async fn prepare_all(s: &Store, topic: &str) {
    for n in s.new_deliveries(100).await.unwrap() {
        let p = Prepared {
            topic: topic.into(),
            status: n.phase.name().into(),
            target: format!("/b/{}", n.build_id),
            body: "{}".into(),
        };
        s.prepare_delivery(n.id, Ok(p)).await.unwrap();
    }
}

async fn starts_and_finishes_enqueue_one_delivery_each_even_when_replayed(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let unit = builder(&s, "unit").await;
    let other = builder(&s, "other").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    s.set_report_routes(vec![
        route("everything", None),
        route("unit-only", Some(unit)),
        ReportRoute {
            started: false,
            ..route("ends", Some(other))
        },
    ]);
    let r = seed(&s, unit, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let b = s.start_build(a, r[0], unit, w).await.unwrap().unwrap();
    // A replayed start (its answer lost) adds nothing.
    s.start_build(a, r[0], unit, w).await.unwrap().unwrap();
    let count = |phase: i64, id: i64| {
        format!("SELECT COUNT(*) FROM report_deliveries WHERE buildid = {id} AND phase = {phase}")
    };
    assert_eq!(db.scalar_i64(&count(0, b.id)).await, 2);
    assert_eq!(db.scalar_i64(&count(1, b.id)).await, 0);
    for _ in 0..2 {
        s.finish_build(a, b.id, r[0], Results::Success, true)
            .await
            .unwrap();
    }
    assert_eq!(db.scalar_i64(&count(1, b.id)).await, 2);
    // The other builder: only the reporter that wants it, and only its end.
    let o = one_build(&s, a, other, w).await;
    assert_eq!(db.scalar_i64(&count(0, o)).await, 1);
    assert_eq!(db.scalar_i64(&count(1, o)).await, 2);
    let mut ends: Vec<String> = s
        .build_deliveries(o)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.event == "finished")
        .map(|d| d.reporter)
        .collect();
    ends.sort();
    assert_eq!(ends, ["ends", "everything"]);
    // A build given back (not completing its request) reports its end too.
    let r = seed(&s, unit, 1, 0).await;
    s.claim_requests(a, &r).await.unwrap();
    let g = s.start_build(a, r[0], unit, w).await.unwrap().unwrap();
    s.finish_build(a, g.id, r[0], Results::Retry, false)
        .await
        .unwrap();
    assert_eq!(db.scalar_i64(&count(1, g.id)).await, 2);
    // Without routes, nothing is written.
    s.set_report_routes(Vec::new());
    let quiet = one_build(&s, a, unit, w).await;
    assert_eq!(
        db.scalar_i64(&format!(
            "SELECT COUNT(*) FROM report_deliveries WHERE buildid = {quiet}"
        ))
        .await,
        0
    );
}

async fn a_topic_is_delivered_in_order_and_an_outdated_status_is_superseded(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    s.set_report_routes(vec![route("gh", None)]);
    let first = one_build(&s, a, bl, w).await;
    let second = one_build(&s, a, bl, w).await;
    prepare_all(&s, "commit-1").await;
    // One topic: one delivery at a time, oldest event first.
    let mut order = Vec::new();
    loop {
        let got = s.claim_deliveries(a, 10, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        assert_eq!(got.len(), 1, "only the head of a topic is claimable");
        // While it is claimed, nothing else of the topic is.
        assert!(s.claim_deliveries(a, 10, LEASE).await.unwrap().is_empty());
        let d = &got[0];
        order.push((d.build_id, d.phase));
        let done = s
            .record_delivery(a, d.id, &DeliveryOutcome::Sent { http_status: 201 })
            .await
            .unwrap();
        assert_eq!(done, Some(DeliveryState::Sent));
    }
    assert_eq!(
        order,
        [
            (first, Phase::Started),
            (first, Phase::Finished),
            (second, Phase::Started),
            (second, Phase::Finished),
        ]
    );
    // A delivery of an older build prepared late (e.g. a build closed by
    // its fenced master after a newer one reported) is never sent.
    db.exec(&format!(
        "UPDATE report_deliveries SET state = 1, sent_at = NULL WHERE buildid = {first} AND phase = 1"
    ))
    .await;
    let got = s.claim_deliveries(a, 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(s.supersede_if_outdated(a, &got[0]).await.unwrap());
    let rows = s.build_deliveries(first).await.unwrap();
    assert_eq!(rows[1].state, "superseded");
    // Another topic is independent of this one.
    let third = one_build(&s, a, bl, w).await;
    prepare_all(&s, "commit-2").await;
    let got = s.claim_deliveries(a, 10, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].build_id, got[0].phase), (third, Phase::Started));
    assert!(!s.supersede_if_outdated(a, &got[0]).await.unwrap());
}

async fn a_dead_masters_delivery_is_taken_over_and_the_loser_records_nothing(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    s.set_report_routes(vec![ReportRoute {
        started: false,
        ..route("gh", None)
    }]);
    one_build(&s, a, bl, w).await;
    prepare_all(&s, "t").await;
    let held = s.claim_deliveries(a, 10, LEASE).await.unwrap();
    assert_eq!(held.len(), 1);
    // Held by a live master: nobody else gets it.
    assert!(s.claim_deliveries(b, 10, LEASE).await.unwrap().is_empty());
    // An inactive master can claim nothing.
    s.deactivate_master(a).await.unwrap();
    assert!(s.claim_deliveries(a, 10, LEASE).await.unwrap().is_empty());
    // Its delivery is taken over...
    let taken = s.claim_deliveries(b, 10, LEASE).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, held[0].id);
    // ...and what the old owner learns afterwards changes nothing.
    let late = s
        .record_delivery(a, held[0].id, &DeliveryOutcome::Sent { http_status: 201 })
        .await
        .unwrap();
    assert_eq!(late, None);
    let row = &s.build_deliveries(held[0].build_id).await.unwrap()[0];
    assert_eq!(row.state, "queued");
    assert_eq!(row.attempts, 0);
    let done = s
        .record_delivery(b, taken[0].id, &DeliveryOutcome::Sent { http_status: 200 })
        .await
        .unwrap();
    assert_eq!(done, Some(DeliveryState::Sent));
}

async fn failures_are_retried_until_the_horizon(db: &TestDb) {
    let s = db.upgraded_store().await;
    let a = master(&s, "a").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    s.set_report_routes(vec![ReportRoute {
        started: false,
        ..route("gh", None)
    }]);
    let build = one_build(&s, a, bl, w).await;
    prepare_all(&s, "t").await;
    let failed = |delay: u64, horizon: u64| DeliveryOutcome::Failed {
        http_status: Some(503),
        error: "HTTP 503".into(),
        delay: Duration::from_secs(delay),
        horizon: Duration::from_secs(horizon),
    };
    let d = s.claim_deliveries(a, 10, LEASE).await.unwrap().remove(0);
    let kept = s.record_delivery(a, d.id, &failed(0, 3600)).await.unwrap();
    assert_eq!(kept, Some(DeliveryState::Queued));
    // Due again at once (no delay): claimable again, one attempt counted.
    let d = s.claim_deliveries(a, 10, LEASE).await.unwrap().remove(0);
    assert_eq!(d.attempts, 1);
    let kept = s
        .record_delivery(a, d.id, &failed(600, 3600))
        .await
        .unwrap();
    assert_eq!(kept, Some(DeliveryState::Queued));
    // Not due for ten minutes.
    assert!(s.claim_deliveries(a, 10, LEASE).await.unwrap().is_empty());
    db.exec("UPDATE report_deliveries SET next_attempt_at = created_at")
        .await;
    let d = s.claim_deliveries(a, 10, LEASE).await.unwrap().remove(0);
    // The next attempt would pass the horizon: given up.
    let gone = s.record_delivery(a, d.id, &failed(60, 30)).await.unwrap();
    assert_eq!(gone, Some(DeliveryState::Failed));
    let row = &s.build_deliveries(build).await.unwrap()[0];
    assert_eq!((row.state, row.attempts), ("failed", 3));
    assert_eq!(row.http_status, Some(503));
    assert!(s.claim_deliveries(a, 10, LEASE).await.unwrap().is_empty());
}

/// A build that another master ends as Retry (its claim's lease ran out,
/// or its master was declared dead) reports its end like any other, once:
/// a reporter that heard it start is never left waiting.
async fn builds_ended_by_reaping_report_their_end(db: &TestDb) {
    const SHORT: Duration = Duration::from_millis(300);
    let s = db.upgraded_store().await;
    s.set_report_routes(vec![route("everything", None)]);
    let a = master(&s, "a").await;
    let b = master(&s, "b").await;
    let bl = builder(&s, "unit").await;
    let w = s.ensure_worker("w1", &serde_json::json!({})).await.unwrap();
    let r = seed(&s, bl, 3, 0).await;
    let ends = |id: i64| {
        format!("SELECT COUNT(*) FROM report_deliveries WHERE buildid = {id} AND phase = 1")
    };
    // The lease runs out.
    s.claim_requests(a, &[r[0]]).await.unwrap();
    let expired = s.start_build(a, r[0], bl, w).await.unwrap().unwrap();
    outlive(SHORT).await;
    assert_eq!(s.release_expired_claims(SHORT).await.unwrap(), vec![r[0]]);
    assert_eq!(db.scalar_i64(&ends(expired.id)).await, 1);
    // The old owner's own late finish adds nothing.
    assert!(
        !s.finish_build(a, expired.id, r[0], Results::Success, true)
            .await
            .unwrap()
    );
    assert_eq!(db.scalar_i64(&ends(expired.id)).await, 1);
    // The master dies holding a claim with a build, and a build whose
    // claim it had already given back.
    s.claim_requests(a, &r[1..]).await.unwrap();
    let claimed = s.start_build(a, r[1], bl, w).await.unwrap().unwrap();
    let orphan = s.start_build(a, r[2], bl, w).await.unwrap().unwrap();
    s.unclaim(a, &[r[2]]).await.unwrap();
    let seen = s.master_flags(a).await.unwrap().unwrap().last_active;
    assert!(s.heartbeat(b).await.unwrap());
    assert!(s.declare_dead(a, seen).await.unwrap());
    assert_eq!(s.release_inactive().await.unwrap(), vec![r[1]]);
    for build in [expired.id, claimed.id, orphan.id] {
        let row = s.get_build(build).await.unwrap().unwrap();
        assert_eq!(row.results, Some(Results::Retry), "build {build}");
        assert_eq!(db.scalar_i64(&ends(build)).await, 1, "build {build}");
    }
    // Nothing more on a second pass.
    assert!(s.release_inactive().await.unwrap().is_empty());
    for build in [expired.id, claimed.id, orphan.id] {
        assert_eq!(db.scalar_i64(&ends(build)).await, 1, "build {build}");
    }
}
