//! `/metrics` of a real master, scraped before and after builds: the claim,
//! build and HTTP counters move, the histograms count the builds, and the
//! scrape-time gauges (pending requests per builder, connected workers)
//! are there.

mod common;

use std::time::Duration;

use common::metrics_text::sample;
use common::{Cluster, ClusterSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_move_when_builds_run() {
    let builders = r#"
[[builders]]
name = "echo"
workers = ["w1"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo hello"]
"#;
    let cluster = Cluster::start("metrics", ClusterSpec::new(1, 1, builders)).await;
    let url = format!("{}/metrics", cluster.api(0));
    let before = cluster.get_text(&url).await.expect("scrape /metrics");
    assert!(
        before.contains("# HELP flotilla_connected_workers"),
        "{before}"
    );
    assert_eq!(sample(&before, "flotilla_connected_workers", &[]), 1.0);

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(cluster.force(0, "echo", &format!("m{i}")).await);
    }
    cluster
        .wait_complete(0, &ids, Duration::from_secs(60))
        .await;
    let after = cluster.get_text(&url).await.expect("scrape /metrics");
    println!("----- /metrics after 3 builds -----\n{after}");

    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert!(moved("flotilla_claims_won_total", &[]) >= 3.0, "{after}");
    assert!(moved("flotilla_claims_attempted_total", &[]) >= 3.0);
    assert!(moved("flotilla_claim_seconds_count", &[]) >= 1.0);
    let echo_ok = ["builder=\"echo\"", "results=\"success\""];
    assert_eq!(
        moved("flotilla_build_duration_seconds_count", &echo_ok),
        3.0
    );
    assert_eq!(moved("flotilla_builds_finished_total", &echo_ok), 3.0);
    assert!(
        after.contains("flotilla_build_duration_seconds_bucket{"),
        "histograms have buckets: {after}"
    );
    assert!(moved("flotilla_http_requests_total", &["status=\"2xx\""]) >= 3.0);
    assert_eq!(sample(&after, "flotilla_running_builds", &[]), 0.0);
    assert!(
        after.contains("flotilla_pending_requests{builder=\"echo\"} 0"),
        "{after}"
    );
}
