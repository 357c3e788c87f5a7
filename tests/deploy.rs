//! The deployment files: the compose topology comes up as plain processes
//! (deploy/local-cluster) and takes a build through every master's API, and
//! every healthcheck of the compose file, run as written, passes against the
//! real process it checks (and fails when that process cannot serve).

mod common;
#[path = "support/compose.rs"]
mod compose;

use std::process::Command;
use std::time::Duration;

use common::cluster::Proc;
use common::{Cluster, ClusterSpec, eventually};
use serde_json::Value;

#[test]
fn the_compose_topology_runs_as_processes() {
    let out = Command::new("deploy/local-cluster")
        .args(["--check", "--bin", common::flotilla_bin()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run deploy/local-cluster");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for m in ["master1", "master2", "master3"] {
        assert!(text.contains(m), "status lists {m}: {text}");
    }
    assert_eq!(text.matches("): success").count(), 3, "{text}");
}

#[test]
fn the_compose_file_parses() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("docker-compose is installed by scripts/ensure-tools");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service's healthcheck command, run as the container would run it: the
/// argv of its `CMD` form with the service's environment, `flotilla` being
/// the binary the image installs on its PATH. The container's own loopback
/// ports are where the test's processes listen instead (`ports` maps them).
fn run_healthcheck(service: &Value, ports: &[(u16, u16)]) -> (Option<i32>, String) {
    let test: Vec<String> = service["healthcheck"]["test"]
        .as_array()
        .expect("healthcheck.test is a list")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        test[0], "CMD",
        "the image has no shell for CMD-SHELL: {test:?}"
    );
    assert_eq!(test[1], "flotilla", "{test:?}");
    let mut cmd = Command::new(common::flotilla_bin());
    cmd.args(&test[2..]).env_remove("FLOTILLA_API");
    if let Some(env) = service["environment"].as_object() {
        for (k, v) in env {
            let mut v = v.as_str().unwrap_or_default().to_owned();
            for (inside, outside) in ports {
                v = v.replace(
                    &format!("127.0.0.1:{inside}"),
                    &format!("127.0.0.1:{outside}"),
                );
            }
            cmd.env(k, v);
        }
    }
    // Without FLOTILLA_API the binary asks 127.0.0.1:8010, the master's port in the image.
    if service["environment"].get("FLOTILLA_API").is_none() {
        let (_, outside) = ports.iter().find(|(i, _)| *i == 8010).expect("8010 mapped");
        cmd.env("FLOTILLA_API", format!("http://127.0.0.1:{outside}"));
    }
    let out = cmd.output().expect("run the healthcheck");
    (
        out.status.code(),
        format!(
            "{test:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_compose_healthcheck_passes_against_the_real_process() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("/usr/local/bin/flotilla"),
        "the image puts flotilla on its PATH"
    );
    let services = compose::services();
    let checked: Vec<&String> = services
        .iter()
        // Services built from deploy/Dockerfile (the database is MySQL's own image).
        .filter(|(_, s)| s.get("healthcheck").is_some() && s.get("build").is_some())
        .map(|(n, _)| n)
        .collect();
    for name in ["master1", "master2", "master3", "gateway"] {
        assert!(
            checked.contains(&&name.to_string()),
            "{name} has a healthcheck"
        );
    }

    let builders = r#"
[[builders]]
name = "slow"
workers = ["w1"]
  [[builders.steps]]
  name = "wait"
  command = ["sh", "-c", "sleep 30"]
"#;
    let mut spec = ClusterSpec::new(1, 1, builders);
    spec.shutdown_grace = "30s";
    let mut cluster = Cluster::start("deploy_health", spec).await;
    let master_port = cluster.masters[0].http;

    // The gateway's metrics address, as [gateway] metrics_listen gives it in the image.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://unused.sqlite\"\n").unwrap();
    let args: Vec<String> = [
        "gateway",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (gateway, bound) = Proc::listening("gateway-health", &args, &[], dir.path());
    let gw_metrics = bound.get("metrics").unwrap().port();
    let ports = [(8010, master_port), (9990, gw_metrics)];

    for name in &checked {
        let service = &services[name.as_str()];
        let (code, text) = eventually(
            &format!("{name}'s healthcheck passes"),
            Duration::from_secs(20),
            || async {
                let (code, text) = run_healthcheck(service, &ports);
                (code == Some(0)).then_some((code, text))
            },
        )
        .await;
        assert_eq!(code, Some(0), "{name}: {text}");
    }

    // A master that drains is not ready: its healthcheck says so (exit 1).
    let id = cluster.force(0, "slow", "health").await;
    eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, id).await.into_iter().next()
    })
    .await;
    cluster.signal_master(0, nix::sys::signal::Signal::SIGTERM);
    let (code, text) = eventually(
        "the draining master fails its healthcheck",
        Duration::from_secs(10),
        || async {
            let (code, text) = run_healthcheck(&services["master1"], &ports);
            (code == Some(1)).then_some((code, text))
        },
    )
    .await;
    assert!(text.contains("\"draining\":true"), "{code:?} {text}");
    // And nothing listening at all is "unreachable" (69).
    cluster.kill9_master(0);
    drop(gateway);
    let (code, text) = run_healthcheck(&services["master1"], &ports);
    assert_eq!(code, Some(69), "{text}");
    let (code, text) = run_healthcheck(&services["gateway"], &ports);
    assert_eq!(code, Some(69), "{text}");
}
