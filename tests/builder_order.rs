//! Claiming for workers that serve several builders: a freed worker takes
//! the oldest waiting request across its builders of equal priority, and a
//! master claims only as many requests as its idle workers can run.

mod common;

use std::time::Duration;

use common::metrics_text::sample;
use common::{Cluster, ClusterSpec, eventually};

const BUILDERS: &str = r#"
[[builders]]
name = "alpha"
workers = ["w1"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 0.8"]
  timeout = "30s"

[[builders]]
name = "beta"
workers = ["w1"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 0.8"]
  timeout = "30s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freed_worker_takes_the_oldest_request_across_its_builders() {
    let cluster = Cluster::start("builder_order", ClusterSpec::new(1, 1, BUILDERS)).await;
    // Builder names are unordered in the master (a hash map): ask in both
    // arrangements, several times, so luck cannot pass the test.
    for round in 0..4 {
        let (first, second) = if round % 2 == 0 {
            ("beta", "alpha")
        } else {
            ("alpha", "beta")
        };
        // Keep the only worker busy, then queue one request on each builder.
        let blocker = cluster.force(0, second, &format!("block{round}")).await;
        eventually("the blocker running", Duration::from_secs(30), || async {
            (!cluster.builds_of(0, blocker).await.is_empty()).then_some(())
        })
        .await;
        let older = cluster.force(0, first, &format!("older{round}")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let newer = cluster.force(0, second, &format!("newer{round}")).await;
        cluster
            .wait_complete(0, &[blocker, older, newer], Duration::from_secs(60))
            .await;
        let started = |b: Vec<serde_json::Value>| {
            let at = b[0]["started_at"].as_str().expect("a start time");
            chrono::DateTime::parse_from_rfc3339(at).expect("an RFC 3339 time")
        };
        let older_start = started(cluster.builds_of(0, older).await);
        let newer_start = started(cluster.builds_of(0, newer).await);
        assert!(
            older_start < newer_start,
            "round {round}: the request on {first} waited longer but started at {older_start}, \
             after the one on {second} at {newer_start}"
        );
    }
}

const SHARED: &str = r#"
[[builders]]
name = "alpha"
workers = ["w1", "w2"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 0.5"]
  timeout = "30s"

[[builders]]
name = "beta"
workers = ["w1", "w2"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 0.5"]
  timeout = "30s"

[[builders]]
name = "gamma"
workers = ["w1", "w2"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 0.5"]
  timeout = "30s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_every_builder_claim_only_what_they_can_run() {
    let cluster = Cluster::start("claim_fit", ClusterSpec::new(1, 2, SHARED)).await;
    // Both workers busy, then work waiting on every builder: each time a
    // worker frees up, all three builders have work it could run.
    let mut ids = vec![
        cluster.force(0, "alpha", "a0").await,
        cluster.force(0, "alpha", "a1").await,
    ];
    for id in ids.clone() {
        eventually("the blockers running", Duration::from_secs(30), || async {
            (!cluster.builds_of(0, id).await.is_empty()).then_some(())
        })
        .await;
    }
    for (builder, rev) in [
        ("beta", "b0"),
        ("gamma", "g0"),
        ("alpha", "a2"),
        ("beta", "b1"),
        ("gamma", "g1"),
    ] {
        ids.push(cluster.force(0, builder, rev).await);
    }
    let rows = cluster
        .wait_complete(0, &ids, Duration::from_secs(60))
        .await;
    assert!(rows.iter().all(|r| r["results"] == "success"), "{rows:?}");
    let metrics = cluster
        .get_text(&format!("{}/metrics", cluster.api(0)))
        .await
        .expect("scrape /metrics");
    // One master, no competition: every claim won went to a worker.
    assert_eq!(
        sample(&metrics, "flotilla_claims_won_total", &[]),
        ids.len() as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "flotilla_claims_given_back_total", &[]),
        0.0
    );
    for id in &ids {
        assert_eq!(cluster.builds_of(0, *id).await.len(), 1, "request {id}");
    }
}

const LIMITED: &str = r#"
[[builders]]
name = "limited"
workers = ["w1", "w2"]
max_concurrent_builds = 1
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "sleep 3"]
  timeout = "30s"

[[builders]]
name = "open"
workers = ["w2"]
  [[builders.steps]]
  name = "work"
  command = ["true"]
  timeout = "30s"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_held_back_by_a_builder_limit_does_not_idle_a_worker() {
    let cluster = Cluster::start("claim_limit", ClusterSpec::new(1, 2, LIMITED)).await;
    let running = cluster.force(0, "limited", "l0").await;
    eventually(
        "the limited build running",
        Duration::from_secs(30),
        || async { (!cluster.builds_of(0, running).await.is_empty()).then_some(()) },
    )
    .await;
    // Older, but held back by the limit; then work only w2 can do.
    let held = cluster.force(0, "limited", "l1").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let open = cluster.force(0, "open", "o1").await;
    cluster
        .wait_complete(0, &[open], Duration::from_secs(30))
        .await;
    let first = &cluster.builds_of(0, running).await[0];
    assert!(
        first["complete_at"].is_null(),
        "the open builder's request waited for the limited build to end: {first}"
    );
    cluster
        .wait_complete(0, &[running, held], Duration::from_secs(60))
        .await;
}
