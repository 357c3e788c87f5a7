//! The dashboard in a real browser: headless Chromium loads `/` from a live
//! master, a forced build appears in the page and finishes there (polled
//! without a reload), the build page shows its steps and log, the schedulers
//! show the master running them, and screenshots are saved under the cargo
//! target directory.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{Cluster, ClusterSpec, eventually};

const BUILDERS: &str = r#"
[[builders]]
name = "webecho"
workers = ["w1"]
  [[builders.steps]]
  name = "hello"
  command = ["sh", "-c", "echo hello from the dashboard test; sleep 2"]
  [[builders.steps]]
  name = "bye"
  command = ["sh", "-c", "echo goodbye $FLOTILLA_REVISION"]

[[schedulers]]
name = "leap-night"
kind = "nightly"
cron = "0 3 29 2 *"
builders = ["webecho"]
"#;

/// Virtual time the page's scripts get before the DOM is read: enough for
/// the first poll and a few more.
const BUDGET_MS: u64 = 2500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_build_appears_and_finishes_in_the_dashboard() {
    let cluster = Cluster::start("browser", ClusterSpec::new(1, 1, BUILDERS)).await;
    let browser = Browser::new();
    let base = cluster.api(0);

    let dom = browser.dump_dom(&format!("{base}/"), BUDGET_MS);
    assert!(dom.contains(r#"data-builder="webecho""#), "{dom}");
    assert!(dom.contains(r#"data-master="m1""#), "masters listed: {dom}");
    assert!(dom.contains(r#"data-worker="w1""#), "workers listed: {dom}");

    let request = cluster.force(0, "webecho", "rev-web").await;
    let build = eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, request).await.into_iter().next()
    })
    .await;
    let id = build["id"].as_i64().unwrap();
    let row = format!(r#"data-build-id="{id}""#);

    // It appears (running, or already done) ...
    let dom = browser.dump_dom(&format!("{base}/"), BUDGET_MS);
    assert!(dom.contains(&row), "build {id} not in the page: {dom}");
    // ... and finishes there. The browser's virtual time runs ahead of the
    // real 2 s step on a loaded machine, so wait for the end in real time first.
    cluster
        .wait_complete(0, &[request], Duration::from_secs(60))
        .await;
    let dom = browser.dump_dom(&format!("{base}/#/builds/{id}"), BUDGET_MS);
    assert!(
        dom.contains(&format!(r#"data-build-id="{id}" data-results="success""#)),
        "build {id} did not finish in the page: {dom}"
    );
    assert!(
        dom.contains(r#"data-step="0" data-results="success""#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"data-step="1" data-results="success""#),
        "{dom}"
    );
    assert!(
        dom.contains("goodbye rev-web"),
        "log of the last step: {dom}"
    );

    let dom = browser.dump_dom(&format!("{base}/"), BUDGET_MS);
    assert!(
        dom.contains(&format!(r#"{row} data-results="success""#)),
        "overview shows the result: {dom}"
    );
    // By now the only master runs the nightly scheduler.
    assert!(
        dom.contains(r#"data-scheduler="leap-night" data-owner="m1""#),
        "schedulers with the master running each: {dom}"
    );

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let overview = browser.screenshot(&format!("{base}/"), BUDGET_MS, &dir.join("overview.png"));
    let page = browser.screenshot(
        &format!("{base}/#/builds/{id}"),
        BUDGET_MS,
        &dir.join("build.png"),
    );
    println!("screenshots: {} {}", overview.display(), page.display());
}
