//! The gateway's own `/metrics`: a worker that connects shows up in its
//! gauges and counters.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, flotilla_bin, free_port};

#[tokio::test]
async fn the_gateway_serves_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://unused.sqlite\"\n").unwrap();
    let (grpc, metrics) = (free_port(), free_port());
    let mut gateway = Command::new(flotilla_bin())
        .args(["gateway", "--config", config.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = Command::new(flotilla_bin())
        .args([
            "worker",
            "--gateway",
            &format!("http://127.0.0.1:{grpc}"),
            "--name",
            "w1",
        ])
        .args([
            "--password-env",
            "PW",
            "--basedir",
            dir.path().join("w").to_str().unwrap(),
        ])
        .env("PW", "secret")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let text = eventually("the worker counted", Duration::from_secs(20), || async {
        let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
        body.lines()
            .any(|l| l.starts_with("flotilla_gateway_connected_workers") && l.ends_with(" 1"))
            .then_some(body)
    })
    .await;
    assert!(
        text.contains("flotilla_gateway_connected_masters"),
        "{text}"
    );
    let health = reqwest::get(format!("http://127.0.0.1:{metrics}/healthz"))
        .await
        .unwrap();
    assert!(health.status().is_success());
    let _ = worker.kill();
    let _ = gateway.kill();
    let _ = worker.wait();
    let _ = gateway.wait();
}
