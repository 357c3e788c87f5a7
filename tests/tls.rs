//! The gateway over TLS: masters and workers dial `https://` with the CA
//! certificate they trust, and a build runs end to end; a worker speaking
//! plain HTTP to the TLS port is never registered, and nothing crashes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::Proc;
use common::{TestDb, eventually, flotilla_bin};

/// A private CA and a certificate for `localhost` signed by it:
/// (CA certificate, server certificate, server key).
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=flotilla test CA",
    ]
    .into_iter()
    .chain(["-keyout", "ca.key", "-out", "ca.pem"])
    .collect::<Vec<_>>());
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_build_runs_through_a_tls_gateway() {
    let db = TestDb::create("tls").await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let config = dir.path().join("cluster.toml");
    // The gateway binds a port of its own choosing (gw = 0); the file is
    // written again with that port before the master reads it.
    let write_config = |gw: u16| {
        std::fs::write(
            &config,
            format!(
                r#"
[database]
url = "{url}"

[cluster]
heartbeat_interval = "500ms"
master_timeout = "4s"

[gateway]
listen = "127.0.0.1:{gw}"
urls = ["https://localhost:{gw}"]
tls_cert = "{cert}"
tls_key = "{key}"
tls_ca = "{ca}"

[[workers]]
name = "w1"
password = "pw1"

[[workers]]
name = "plain"
password = "pw2"

[[builders]]
name = "echo"
workers = ["w1", "plain"]
  [[builders.steps]]
  name = "e"
  command = ["sh", "-c", "echo over tls"]
"#,
                url = db.url
            ),
        )
        .unwrap()
    };
    write_config(0);
    assert!(
        Command::new(flotilla_bin())
            .args(["db", "upgrade", "--config", config.to_str().unwrap()])
            .status()
            .unwrap()
            .success()
    );
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cfg = config.to_str().unwrap();
    let (_gateway, bound) = Proc::listening(
        "gateway",
        &s(&["gateway", "--config", cfg]),
        &[],
        dir.path(),
    );
    let gw = bound.get("grpc").unwrap().port();
    write_config(gw);
    let (_master, bound) = Proc::listening(
        "master",
        &s(&[
            "master",
            "--config",
            cfg,
            "--name",
            "m1",
            "--http",
            "127.0.0.1:0",
        ]),
        &[],
        dir.path(),
    );
    let http = bound.get("http").unwrap().port();
    let basedir = dir.path().join("w1");
    let worker = Proc::spawn(
        "worker",
        &s(&[
            "worker",
            "--gateway",
            &format!("https://localhost:{gw}"),
            "--tls-ca",
            &ca,
            "--name",
            "w1",
            "--password-env",
            "PW",
            "--basedir",
            basedir.to_str().unwrap(),
        ]),
        &[("PW".to_owned(), "pw1".to_owned())],
        dir.path(),
    );
    let plain = Proc::spawn(
        "plain-worker",
        &s(&[
            "worker",
            "--gateway",
            &format!("http://127.0.0.1:{gw}"),
            "--name",
            "plain",
            "--password-env",
            "PW",
            "--basedir",
            dir.path().join("plain").to_str().unwrap(),
        ]),
        &[("PW".to_owned(), "pw2".to_owned())],
        dir.path(),
    );
    let api = format!("http://127.0.0.1:{http}");
    let client = reqwest::Client::new();
    eventually(
        "the TLS worker attached",
        Duration::from_secs(30),
        || async {
            let ws: serde_json::Value = client
                .get(format!("{api}/api/v1/workers"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let w1 = ws.as_array()?.iter().find(|w| w["name"] == "w1")?.clone();
            (w1["connected"] == true).then_some(())
        },
    )
    .await;
    let created: serde_json::Value = client
        .post(format!("{api}/api/v1/force"))
        .json(&serde_json::json!({"builder": "echo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["buildrequest_ids"][0].as_i64().unwrap();
    let row = eventually("the build finished", Duration::from_secs(30), || async {
        let r: serde_json::Value = client
            .get(format!("{api}/api/v1/buildrequests/{id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (r["complete"] == true).then_some(r)
    })
    .await;
    assert_eq!(
        row["results"],
        "success",
        "{}\n{}",
        worker.output(),
        plain.output()
    );
    let ws: serde_json::Value = client
        .get(format!("{api}/api/v1/workers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = ws
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "plain")
        .unwrap();
    assert_eq!(
        p["connected"], false,
        "a plain-HTTP worker cannot register on the TLS port"
    );
    assert!(!plain.output().contains("panicked"));
}
