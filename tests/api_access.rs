//! Read access control: with `[api] read_token_env`, the dashboard and the
//! API answer only to the read or admin token (bearer, or the password of
//! HTTP basic auth, which browsers ask for); health checks, `/metrics` and
//! webhooks stay open; writes still need the admin token; and the CLI sends
//! `FLOTILLA_READ_TOKEN` or `FLOTILLA_ADMIN_TOKEN`.

mod common;

use std::process::Command;

use common::{Cluster, ClusterSpec, flotilla_bin};
use reqwest::StatusCode;

const READ_ENV: &str = "FLOTILLA_TEST_READ_TOKEN";
const ADMIN_ENV: &str = "FLOTILLA_TEST_ADMIN_TOKEN";
const READ: &str = "read-secret";
const ADMIN: &str = "admin-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_need_the_read_token_when_the_cluster_sets_one() {
    let toml = format!(
        r#"
[[builders]]
name = "echo"
  [[builders.steps]]
  name = "print"
  command = ["echo", "hi"]

[api]
read_token_env = "{READ_ENV}"
admin_token_env = "{ADMIN_ENV}"
"#
    );
    let mut spec = ClusterSpec::new(1, 0, &toml);
    spec.master_env = vec![
        (READ_ENV.to_owned(), READ.to_owned()),
        (ADMIN_ENV.to_owned(), ADMIN.to_owned()),
    ];
    let cluster = Cluster::start("api_access", spec).await;
    let api = cluster.api(0);
    let http = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status();

    for path in [
        "/",
        "/api/v1/builds",
        "/api/v1/builders",
        "/api/v1/builds/1/steps/0/log",
    ] {
        let r = http.get(format!("{api}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
        let challenge = r.headers()[reqwest::header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Basic"), "{challenge}");
        let wrong = http
            .get(format!("{api}{path}"))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    for auth in [
        http.get(format!("{api}/api/v1/builders")).bearer_auth(READ),
        http.get(format!("{api}/api/v1/builders"))
            .bearer_auth(ADMIN),
        http.get(format!("{api}/api/v1/builders"))
            .basic_auth("anyone", Some(READ)),
        http.get(format!("{api}/")).basic_auth("ops", Some(READ)),
    ] {
        assert_eq!(status(auth.send().await.unwrap()), StatusCode::OK);
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        let r = http.get(format!("{api}{open}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{open} stays open");
    }
    let ping = http
        .post(format!("{api}/api/v1/hooks/github"))
        .header("x-github-event", "ping")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ping.status(),
        StatusCode::OK,
        "webhooks check their own secret"
    );

    // Writes: the read token is not enough.
    let force = |token: &'static str| {
        http.post(format!("{api}/api/v1/force"))
            .bearer_auth(token)
            .json(&serde_json::json!({"builder": "echo"}))
            .send()
    };
    assert_eq!(
        force(READ).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(force(ADMIN).await.unwrap().status(), StatusCode::OK);

    // The CLI: 77 without a token, the read token reads, only the admin token writes.
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(flotilla_bin());
        c.args(args)
            .arg("--api")
            .arg(&api)
            .env_remove("FLOTILLA_ADMIN_TOKEN")
            .env_remove("FLOTILLA_READ_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap().status.code()
    };
    assert_eq!(cli(&["status", "builders"], &[]), Some(77));
    assert_eq!(
        cli(&["status", "builders"], &[("FLOTILLA_READ_TOKEN", READ)]),
        Some(0)
    );
    assert_eq!(
        cli(&["force", "echo"], &[("FLOTILLA_READ_TOKEN", READ)]),
        Some(77)
    );
    assert_eq!(
        cli(&["force", "echo"], &[("FLOTILLA_ADMIN_TOKEN", ADMIN)]),
        Some(0)
    );
}
