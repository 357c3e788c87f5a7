//! Builds end to end across real processes: a gateway, masters and workers
//! as `flotilla` processes on loopback ports, against a fresh MariaDB database.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually};
use serde_json::Value;
use sqlx::Row;

fn echo_builder(workers: &str) -> String {
    format!(
        r#"
[[builders]]
name = "echo"
workers = {workers}
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo revision=$FLOTILLA_REVISION request=$FLOTILLA_BUILDREQUEST_ID worker=$FLOTILLA_WORKER"]
  timeout = "30s"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_builds_on_two_masters_and_three_workers_each_complete_once() {
    let spec = ClusterSpec::new(2, 3, "");
    let spec = ClusterSpec {
        builders_toml: echo_builder(&spec.worker_list()),
        ..spec
    };
    let cluster = Cluster::start("fifty", spec).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        // Submit through both masters.
        ids.push(cluster.force(i % 2, "echo", &format!("rev{i:03}")).await);
    }
    let rows = cluster
        .wait_complete(0, &ids, Duration::from_secs(120))
        .await;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["results"], "success", "request {}: {row}", ids[i]);
        let builds = cluster.builds_of(0, ids[i]).await;
        assert_eq!(
            builds.len(),
            1,
            "request {} has {} builds",
            ids[i],
            builds.len()
        );
        let log = cluster
            .step_log(0, builds[0]["id"].as_i64().unwrap(), 0)
            .await;
        assert!(
            log.contains(&format!("revision=rev{i:03} request={}", ids[i])),
            "log of request {} lacks its revision: {log}",
            ids[i]
        );
    }
    // The database agrees: every request complete exactly once, one successful build each.
    let mut conn = cluster.connect_db().await;
    let rows = sqlx::query(
        "SELECT r.id, CAST(r.complete AS SIGNED) AS complete, COUNT(b.id) AS builds \
         FROM buildrequests r LEFT JOIN builds b ON b.buildrequestid = r.id GROUP BY r.id, r.complete",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 50);
    for r in &rows {
        assert_eq!(r.get::<i64, _>("complete"), 1);
        assert_eq!(r.get::<i64, _>("builds"), 1);
    }
    let masters: HashSet<String> =
        sqlx::query("SELECT DISTINCT m.name FROM builds b JOIN masters m ON m.id = b.masterid")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>("name"))
            .collect();
    eprintln!("builds ran on masters {masters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_step_halts_and_a_timed_out_step_is_killed() {
    let builders = r#"
[[builders]]
name = "fails"
workers = ["w1"]
  [[builders.steps]]
  name = "break"
  command = ["sh", "-c", "echo about to fail; exit 3"]
  [[builders.steps]]
  name = "never"
  command = ["sh", "-c", "echo should not run"]

[[builders]]
name = "slow"
workers = ["w1"]
  [[builders.steps]]
  name = "hang"
  command = ["sh", "-c", "sleep 60 & sleep 60"]
  timeout = "1s"

[[builders]]
name = "quick"
workers = ["w1"]
  [[builders.steps]]
  name = "ok"
  command = ["true"]
"#;
    let cluster = Cluster::start("fail", ClusterSpec::new(1, 1, builders)).await;
    let fail = cluster.force(0, "fails", "r1").await;
    let slow = cluster.force(0, "slow", "r2").await;
    let rows = cluster
        .wait_complete(0, &[fail, slow], Duration::from_secs(60))
        .await;
    assert_eq!(rows[0]["results"], "failure");
    assert_eq!(rows[1]["results"], "failure");

    let b = &cluster.builds_of(0, fail).await[0];
    let steps = cluster
        .get(&format!(
            "{}/api/v1/builds/{}/steps",
            cluster.api(0),
            b["id"]
        ))
        .await
        .unwrap();
    assert_eq!(steps[0]["results"], "failure");
    assert_eq!(steps[1]["results"], "skipped");
    assert!(
        cluster
            .step_log(0, b["id"].as_i64().unwrap(), 0)
            .await
            .contains("about to fail")
    );

    let b = &cluster.builds_of(0, slow).await[0];
    let log = cluster.step_log(0, b["id"].as_i64().unwrap(), 0).await;
    assert!(log.contains("timed out"), "{log}");

    // The worker is free again.
    let quick = cluster.force(0, "quick", "r3").await;
    let rows = cluster
        .wait_complete(0, &[quick], Duration::from_secs(30))
        .await;
    assert_eq!(rows[0]["results"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_with_a_wrong_password_is_refused() {
    let mut spec = ClusterSpec::new(1, 2, "");
    spec.workers[1].1 = "not-the-password".into();
    spec.builders_toml = echo_builder(&spec.worker_list());
    let cluster = Cluster::start("badpw", spec).await;
    let out = eventually("refusal logged", Duration::from_secs(15), || async {
        let out = cluster.workers[1].as_ref().unwrap().output();
        out.contains("refused").then_some(out)
    })
    .await;
    assert!(out.to_lowercase().contains("wrong password"), "{out}");
    assert!(cluster.masters[0].proc.output().contains("worker refused"));
    let workers = cluster
        .get(&format!("{}/api/v1/workers", cluster.api(0)))
        .await
        .unwrap();
    let w2 = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "w2")
        .unwrap();
    assert_eq!(w2["connected"], false);
    // The good worker still builds.
    let id = cluster.force(0, "echo", "r").await;
    let rows = cluster
        .wait_complete(0, &[id], Duration::from_secs(30))
        .await;
    assert_eq!(rows[0]["results"], "success");
    assert_eq!(cluster.builds_of(0, id).await[0]["worker"], "w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_lost_mid_build_hands_the_request_to_another() {
    let builders = r#"
[[builders]]
name = "long"
workers = ["w1", "w2"]
  [[builders.steps]]
  name = "work"
  command = ["sh", "-c", "echo started on $FLOTILLA_WORKER; sleep 3; echo done"]
"#;
    let mut cluster = Cluster::start("lost", ClusterSpec::new(1, 2, builders)).await;
    let id = cluster.force(0, "long", "r").await;
    let first = eventually("build started", Duration::from_secs(20), || async {
        cluster.builds_of(0, id).await.into_iter().next()
    })
    .await;
    let worker = first["worker"].as_str().unwrap().to_owned();
    let idx = if worker == "w1" { 0 } else { 1 };
    cluster.workers[idx].as_mut().unwrap().kill9();
    let rows = cluster
        .wait_complete(0, &[id], Duration::from_secs(60))
        .await;
    assert_eq!(rows[0]["results"], "success");
    let builds = cluster.builds_of(0, id).await;
    assert_eq!(builds.len(), 2, "{builds:?}");
    let ok: Vec<&Value> = builds
        .iter()
        .filter(|b| b["results"] == "success")
        .collect();
    assert_eq!(ok.len(), 1);
    assert_ne!(ok[0]["worker"], worker.as_str());
    let retried: Vec<&Value> = builds.iter().filter(|b| b["results"] == "retry").collect();
    assert_eq!(retried.len(), 1, "{builds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_line_of_many_megabytes_is_stored_in_chunks() {
    let builders = r#"
[[builders]]
name = "big"
workers = ["w1"]
  [[builders.steps]]
  name = "flood"
  command = ["sh", "-c", "head -c 24000000 /dev/zero | tr '\\0' 'x'; echo; echo tail-marker"]
"#;
    let cluster = Cluster::start("biglog", ClusterSpec::new(1, 1, builders)).await;
    let id = cluster.force(0, "big", "r").await;
    let rows = cluster
        .wait_complete(0, &[id], Duration::from_secs(120))
        .await;
    assert_eq!(rows[0]["results"], "success");
    let build = cluster.builds_of(0, id).await[0]["id"].as_i64().unwrap();
    let log = cluster.step_log(0, build, 0).await;
    assert!(log.len() > 24_000_000, "log is {} bytes", log.len());
    assert!(log.contains("tail-marker"));
    let mut conn = cluster.connect_db().await;
    let chunks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM logchunks")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(chunks >= 24_000_000 / (128 * 1024), "{chunks} chunks");
    let largest: i64 =
        sqlx::query_scalar("SELECT CAST(MAX(LENGTH(content)) AS SIGNED) FROM logchunks")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(largest <= 128 * 1024, "a chunk of {largest} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_submitted_to_a_master_without_workers_reaches_the_others_at_once() {
    let mut spec = ClusterSpec::new(2, 1, "");
    spec.builders_toml = echo_builder(&spec.worker_list());
    // No polling to speak of: only the gateway's work-available hint can start the build.
    spec.poll_interval = "1h";
    let cluster = Cluster::start("hint", spec).await;
    let workers = cluster
        .get(&format!("{}/api/v1/workers", cluster.api(0)))
        .await
        .unwrap();
    let owner = workers[0]["master"].as_str().unwrap().to_owned();
    let other = if owner == "m1" { 1 } else { 0 };
    // Let the worker's master settle into its (hour-long) poll wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = cluster.force(other, "echo", "hinted").await;
    let rows = cluster
        .wait_complete(other, &[id], Duration::from_secs(30))
        .await;
    assert_eq!(rows[0]["results"], "success");
    assert_eq!(
        cluster.builds_of(other, id).await[0]["master"],
        owner.as_str()
    );
}

/// A worker whose password the cluster keeps refusing stops with exit 77
/// after the refusals it was told to bear, instead of retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_refused_every_time_gives_up_with_77() {
    let spec = ClusterSpec::new(1, 0, &echo_builder("[\"w1\"]"));
    let mut spec = spec;
    spec.workers = vec![("w1".to_owned(), "w1-secret".to_owned())];
    let cluster = Cluster::start("giveup", spec).await;
    let basedir = tempfile::tempdir().unwrap();
    let mut worker = common::cluster::Proc::spawn(
        "w1-wrong",
        &[
            "worker".to_owned(),
            "--gateway".to_owned(),
            format!("http://127.0.0.1:{}", cluster.gateway_port),
            "--name".to_owned(),
            "w1".to_owned(),
            "--password-env".to_owned(),
            "W1_WRONG".to_owned(),
            "--basedir".to_owned(),
            basedir.path().display().to_string(),
            "--give-up-after-refusals".to_owned(),
            "3".to_owned(),
        ],
        &[("W1_WRONG".to_owned(), "not-the-password".to_owned())],
        basedir.path(),
    );
    let code = worker.wait_exit(Duration::from_secs(60));
    let out = worker.output();
    assert_eq!(code, Some(77), "{out}");
    assert!(out.contains("refused 3 times in a row"), "{out}");
    assert!(out.contains("wrong password"), "{out}");
}
