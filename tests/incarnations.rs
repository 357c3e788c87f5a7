//! One name, one live master: a second process started under the name of a
//! master that still heartbeats is refused (exit 78) and takes nothing from
//! it; a master restarted after kill -9 takes over its old incarnation's
//! work at once.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, ClusterSpec};

fn slow_builder(workers: &str) -> String {
    format!(
        r#"
[[builders]]
name = "slow"
workers = {workers}
  [[builders.steps]]
  name = "sleep"
  command = ["sh", "-c", "sleep 4; echo done $FLOTILLA_BUILDREQUEST_ID"]
  timeout = "60s"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_process_under_a_live_name_is_refused_and_takes_nothing() {
    let spec = ClusterSpec::new(1, 1, "");
    let spec = ClusterSpec {
        builders_toml: slow_builder(&spec.worker_list()),
        ..spec
    };
    let mut cluster = Cluster::start("samename", spec).await;
    let id = cluster.force(0, "slow", "r1").await;
    common::eventually("the build to start", Duration::from_secs(20), || async {
        (!cluster.builds_of(0, id).await.is_empty()).then_some(())
    })
    .await;
    // An operator starts another master and forgets --name.
    let second = cluster.start_master("m1");
    let code = cluster.masters[second]
        .proc
        .wait_exit(Duration::from_secs(15));
    let out = cluster.masters[second].proc.output();
    assert_eq!(
        code,
        Some(78),
        "the second m1 must refuse to start; its log:\n{out}\n{}",
        cluster.dump()
    );
    assert!(out.contains("another master named"), "{out}");
    let rows = cluster
        .wait_complete(0, &[id], Duration::from_secs(60))
        .await;
    assert_eq!(rows[0]["results"], "success", "{}", cluster.dump());
    let builds = cluster.builds_of(0, id).await;
    assert_eq!(
        builds.len(),
        1,
        "the live master's claim was released under it: {builds:?}"
    );
    assert!(
        !cluster.masters[0].proc.output().contains("declared dead"),
        "{}",
        cluster.dump()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_restarted_after_kill_9_takes_over_its_work_at_once() {
    let spec = ClusterSpec::new(1, 1, "");
    let spec = ClusterSpec {
        builders_toml: slow_builder(&spec.worker_list()),
        master_timeout: "30s",
        ..spec
    };
    let mut cluster = Cluster::start("restart9", spec).await;
    let id = cluster.force(0, "slow", "r1").await;
    common::eventually("the build to start", Duration::from_secs(20), || async {
        (!cluster.builds_of(0, id).await.is_empty()).then_some(())
    })
    .await;
    cluster.kill9_master(0);
    let killed = Instant::now();
    cluster.restart_master(0);
    // Declared dead by others only after master_timeout (30 s): done well
    // before, the restarted master released its old incarnation itself once
    // that incarnation's heartbeat had stood still for the fence.
    let rows = cluster
        .wait_complete(0, &[id], Duration::from_secs(28))
        .await;
    println!(
        "kill -9 and restart: request complete {:?} after the kill (master_timeout 30 s)",
        killed.elapsed()
    );
    assert_eq!(rows[0]["results"], "success", "{}", cluster.dump());
}
