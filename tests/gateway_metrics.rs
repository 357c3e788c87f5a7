//! The gateway's own `/metrics`: a worker that connects shows up in its
//! gauges, `promtool check metrics` passes on the scrape (every metric has
//! help text), and the metrics address answers `/healthz` and `/readyz`.

mod common;
#[path = "support/promtool.rs"]
mod promtool;

use std::time::Duration;

use common::cluster::Proc;
use common::eventually;

#[tokio::test]
async fn the_gateway_serves_prometheus_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, "[database]\nurl = \"sqlite://unused.sqlite\"\n").unwrap();
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (_gateway, bound) = Proc::listening(
        "gateway",
        &args(&[
            "gateway",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ]),
        &[],
        dir.path(),
    );
    let (grpc, metrics) = (bound.get("grpc").unwrap(), bound.get("metrics").unwrap());
    let _worker = Proc::spawn(
        "worker",
        &args(&[
            "worker",
            "--gateway",
            &format!("http://{grpc}"),
            "--name",
            "w1",
            "--password-env",
            "PW",
            "--basedir",
            dir.path().join("w").to_str().unwrap(),
        ]),
        &[("PW".to_owned(), "secret".to_owned())],
        dir.path(),
    );
    let url = format!("http://{metrics}/metrics");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let text = eventually("the worker counted", Duration::from_secs(20), || async {
        let body = http.get(&url).send().await.ok()?.text().await.ok()?;
        body.lines()
            .any(|l| l.starts_with("flotilla_gateway_connected_workers") && l.ends_with(" 1"))
            .then_some(body)
    })
    .await;
    assert!(
        text.contains("# TYPE flotilla_gateway_connected_workers gauge"),
        "{text}"
    );
    promtool::check_metrics("the gateway's /metrics", &text);
    for probe in ["healthz", "readyz"] {
        let r = http
            .get(format!("http://{metrics}/{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "/{probe}");
    }
}
