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

const FAILING: &str = r#"
[[builders]]
name = "halting"
workers = ["w1"]
  [[builders.steps]]
  name = "prepare"
  command = ["sh", "-c", "echo ready"]
  [[builders.steps]]
  name = "explode"
  command = ["sh", "-c", "echo boom-output; exit 1"]
  [[builders.steps]]
  name = "after"
  command = ["sh", "-c", "echo never"]

[[builders]]
name = "slow"
workers = ["w1"]
  [[builders.steps]]
  name = "wait"
  command = ["sh", "-c", "sleep 20"]
"#;

/// The text of the element that starts at `marker`, up to its closing `tag`.
fn element<'a>(dom: &'a str, marker: &str, tag: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in {dom}"));
    let rest = &dom[start..];
    let end = rest.find(&format!("</{tag}>")).unwrap_or(rest.len());
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_opens_its_failed_step_and_a_draining_master_shows_it() {
    let mut spec = ClusterSpec::new(1, 1, FAILING);
    spec.shutdown_grace = "30s";
    let cluster = Cluster::start("browser_fail", spec).await;
    let browser = Browser::new();
    let base = cluster.api(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");

    let earlier = cluster.force(0, "halting", "rev-first").await;
    cluster
        .wait_complete(0, &[earlier], Duration::from_secs(60))
        .await;
    let request = cluster.force(0, "halting", "rev-fail").await;
    cluster
        .wait_complete(0, &[request], Duration::from_secs(60))
        .await;
    let id = cluster.builds_of(0, request).await[0]["id"]
        .as_i64()
        .unwrap();
    let page = format!("{base}/#/builds/{id}");
    let dom = browser.dump_dom(&page, BUDGET_MS);
    // Every step, with its result; the failed one's log is the one open.
    for (n, results) in [(0, "success"), (1, "failure"), (2, "skipped")] {
        assert!(
            dom.contains(&format!(r#"data-step="{n}" data-results="{results}""#)),
            "step {n} {results}: {dom}"
        );
    }
    assert!(dom.contains(r#"data-log-step="1""#), "{dom}");
    let log = element(&dom, r#"id="logtext""#, "pre");
    assert!(log.contains("boom-output"), "{log}");
    assert!(!log.contains("(empty)"), "{log}");
    // Steps are numbered from 1, as the CLI does; times say they are UTC;
    // a step of a few milliseconds does not read "0s".
    let steps = element(&dom, r#"data-step="0""#, "tr");
    assert!(steps.contains("<td>1</td>"), "{steps}");
    assert!(steps.contains(" UTC"), "{steps}");
    assert!(!steps.contains("<td>0s</td>"), "{steps}");
    assert!(
        dom.contains("failure in explode"),
        "the build's state: {dom}"
    );
    let shot = browser.screenshot(&page, BUDGET_MS, &dir.join("failed-build.png"));

    let list = browser.dump_dom(&format!("{base}/#/builds"), BUDGET_MS);
    assert!(
        list.contains(&format!(r#"data-build-id="{id}" data-results="failure""#)),
        "{list}"
    );
    let list_shot = browser.screenshot(
        &format!("{base}/#/builds"),
        BUDGET_MS,
        &dir.join("build-list.png"),
    );
    // Filtered by builder, from the list's own filter.
    let filtered = browser.dump_dom(&format!("{base}/#/builds?builder=slow"), BUDGET_MS);
    assert!(
        filtered.contains(r#"data-filter-builder="slow""#),
        "{filtered}"
    );
    assert!(
        !filtered.contains(&format!(r#"data-build-id="{id}""#)),
        "{filtered}"
    );

    // The builder's own page: its recent builds and their duration trend.
    let builder_page = format!("{base}/#/builders/halting");
    let dom = browser.dump_dom(&builder_page, BUDGET_MS);
    assert!(dom.contains(r#"data-builder-page="halting""#), "{dom}");
    assert!(dom.contains(&format!(r#"data-build-id="{id}""#)), "{dom}");
    assert_eq!(
        element(&dom, r#"id="trend""#, "svg")
            .matches("<rect")
            .count(),
        2,
        "{dom}"
    );
    assert!(dom.contains("0 of 2 recent builds succeeded"), "{dom}");
    let builder_shot = browser.screenshot(&builder_page, BUDGET_MS, &dir.join("builder.png"));

    // The changes view.
    let change = serde_json::json!({"repository": "https://example.invalid/r.git", "branch": "main",
        "revision": "0123456789abcdef", "author": "ada", "comments": "first line\nmore"});
    let resp = cluster
        .http
        .post(format!("{base}/api/v1/changes"))
        .json(&change)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let changes = browser.dump_dom(&format!("{base}/#/changes"), BUDGET_MS);
    let row = element(&changes, "data-change-id=", "tr");
    assert!(
        row.contains("0123456789ab") && row.contains("first line") && !row.contains("more"),
        "{row}"
    );
    let changes_shot = browser.screenshot(
        &format!("{base}/#/changes"),
        BUDGET_MS,
        &dir.join("changes.png"),
    );

    // SIGTERM with a build running: the master drains, and says so.
    let slow = cluster.force(0, "slow", "rev-slow").await;
    eventually(
        "the slow build started",
        Duration::from_secs(30),
        || async { cluster.builds_of(0, slow).await.into_iter().next() },
    )
    .await;
    cluster.signal_master(0, nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dom = browser.dump_dom(&format!("{base}/"), BUDGET_MS);
    let row = element(&dom, r#"data-master="m1""#, "tr");
    assert!(row.contains("badge draining"), "{row}");
    let drain_shot = browser.screenshot(&format!("{base}/"), BUDGET_MS, &dir.join("draining.png"));
    for s in [shot, list_shot, builder_shot, changes_shot, drain_shot] {
        println!("screenshot: {}", s.display());
    }
}
