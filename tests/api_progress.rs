//! What the API, the CLI and `status` say while things happen: a build's
//! `state_string` follows its steps and ends with its result, and a master
//! draining after SIGTERM is shown as draining by every view of it.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually, flotilla_bin};
use serde_json::Value;

const BUILDERS: &str = r#"
[[builders]]
name = "stages"
workers = ["w1"]
  [[builders.steps]]
  name = "first"
  command = ["sh", "-c", "echo one; sleep 1.5"]
  [[builders.steps]]
  name = "second"
  command = ["sh", "-c", "echo two; sleep 1.5; exit 3"]
  [[builders.steps]]
  name = "third"
  command = ["sh", "-c", "echo three"]

[[builders]]
name = "quick"
workers = ["w1"]
  [[builders.steps]]
  name = "only"
  command = ["sh", "-c", "echo fine"]

[[builders]]
name = "slow"
workers = ["w1"]
  [[builders.steps]]
  name = "wait"
  command = ["sh", "-c", "sleep 6"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_string_follows_the_build() {
    let cluster = Cluster::start("api_state", ClusterSpec::new(1, 1, BUILDERS)).await;
    let request = cluster.force(0, "stages", "s1").await;
    let build = eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, request).await.into_iter().next()
    })
    .await;
    let url = format!("{}/api/v1/builds/{}", cluster.api(0), build["id"]);
    let mut seen = BTreeSet::new();
    let start = std::time::Instant::now();
    let last = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "build did not end: {seen:?}"
        );
        if let Some(b) = cluster.get(&url).await {
            seen.insert(b["state_string"].as_str().unwrap_or_default().to_owned());
            if !b["complete_at"].is_null() {
                break b;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(seen.contains("running first"), "{seen:?}");
    assert!(seen.contains("running second"), "{seen:?}");
    assert!(
        !seen.contains("running third"),
        "a skipped step never runs: {seen:?}"
    );
    assert_eq!(last["results"], "failure");
    assert_eq!(last["state_string"], "failure in second", "{last}");

    let steps = cluster.get(&format!("{url}/steps")).await.expect("steps");
    let results: Vec<&str> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["results"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(results, ["success", "failure", "skipped"]);

    let ok = cluster.force(0, "quick", "q1").await;
    cluster
        .wait_complete(0, &[ok], Duration::from_secs(60))
        .await;
    let b = &cluster.builds_of(0, ok).await[0];
    assert_eq!(b["state_string"], "success", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_draining_after_sigterm_is_shown_as_draining() {
    let mut spec = ClusterSpec::new(1, 1, BUILDERS);
    spec.shutdown_grace = "30s";
    let cluster = Cluster::start("api_drain", spec).await;
    let api = cluster.api(0);
    let request = cluster.force(0, "slow", "d1").await;
    // (What happens to the running build is the drain tests' business; here
    // only what the views say while it drains.)
    eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, request).await.into_iter().next()
    })
    .await;
    let before = cluster.get(&format!("{api}/api/v1/masters")).await.unwrap();
    assert_eq!(before[0]["draining"], false, "{before}");

    cluster.signal_master(0, nix::sys::signal::Signal::SIGTERM);
    // The master still serves its API while its build finishes.
    let masters: Value = eventually(
        "the API shows the drain",
        Duration::from_secs(5),
        || async {
            cluster
                .get(&format!("{api}/api/v1/masters"))
                .await
                .filter(|v| v[0]["draining"] == true)
        },
    )
    .await;
    assert_eq!(masters[0]["name"], "m1");

    let out = Command::new(flotilla_bin())
        .args(["--api", &api, "status", "masters"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let col = header
        .iter()
        .position(|h| *h == "DRAINING")
        .expect("DRAINING column");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.contains("m1"))
        .expect("m1 listed")
        .split_whitespace()
        .collect();
    assert_eq!(row[col], "true", "{table}");

    let out = Command::new(flotilla_bin())
        .args(["status", "masters", "--json", "--api", &api])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["draining"], true, "{v}");
}
