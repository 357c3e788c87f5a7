//! `/metrics` of a real master, scraped before and after builds: the claim,
//! build and HTTP counters move, the histograms count the builds, and the
//! scrape-time gauges (pending requests per builder, connected workers)
//! are there, and `promtool check metrics` passes on the scrape (every
//! metric has help text). The gateway's own scrape: `gateway_metrics.rs`.

mod common;
#[path = "support/promtool.rs"]
mod promtool;

use std::time::Duration;

use common::metrics_text::sample;
use common::{Cluster, ClusterSpec, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_move_when_builds_run() {
    let builders = r#"
[[builders]]
name = "echo"
workers = ["w1"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo hello"]

[[builders]]
name = "on-change"
workers = ["w1"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo changed"]

# Builds its own builder, so the counts of "echo" stay the forced three.
[[schedulers]]
name = "on-main"
kind = "single-branch"
branch = "main"
builders = ["on-change"]
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
    // A request reads complete as soon as its build's end commits; the
    // master counts the build just after. Scrape until all three are in.
    let echo_ok = ["builder=\"echo\"", "results=\"success\""];
    let after = eventually(
        "three finished builds counted",
        Duration::from_secs(30),
        || async {
            let text = cluster.get_text(&url).await?;
            (sample(&text, "flotilla_builds_finished_total", &echo_ok) >= 3.0
                && sample(&text, "flotilla_build_duration_seconds_count", &echo_ok) >= 3.0)
                .then_some(text)
        },
    )
    .await;
    println!("----- /metrics after 3 builds -----\n{after}");

    let moved =
        |name: &str, labels: &[&str]| sample(&after, name, labels) - sample(&before, name, labels);
    assert!(moved("flotilla_claims_won_total", &[]) >= 3.0, "{after}");
    // Every round asks for at least what it wins (a scrape can fall between
    // a round's two counters, so compare the totals of one scrape).
    assert!(
        sample(&after, "flotilla_claims_attempted_total", &[])
            >= sample(&after, "flotilla_claims_won_total", &[]),
        "{after}"
    );
    assert!(sample(&after, "flotilla_claims_attempted_total", &[]) >= 3.0);
    assert!(moved("flotilla_claim_seconds_count", &[]) >= 1.0);
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
    // A change on main: the scheduler's buildset counter appears too.
    let change = serde_json::json!({"repository": "r", "branch": "main", "revision": "c1"});
    let resp = cluster
        .http
        .post(format!("{}/api/v1/changes", cluster.api(0)))
        .json(&change)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let after = eventually(
        "the scheduler's buildset counted",
        Duration::from_secs(30),
        || async {
            let text = cluster.get_text(&url).await?;
            (sample(&text, "flotilla_scheduler_buildsets_total", &[]) >= 1.0).then_some(text)
        },
    )
    .await;
    assert!(
        after.contains("flotilla_pending_requests{builder=\"echo\"}"),
        "{after}"
    );
    promtool::check_metrics("a master's /metrics", &after);
}
