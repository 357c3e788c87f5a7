//! The OpenAPI document served at `/api/v1/openapi.json` is true: it names
//! every route of the router and nothing else, and schemathesis (from PyPI,
//! installed by `scripts/ensure-tools`) fuzzes a running master against it
//! with every check: no 5xx, every answer matches its schema, requests the
//! schema allows are accepted and requests it forbids are refused.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{Cluster, ClusterSpec};
use serde_json::Value;

const TOKEN_ENV: &str = "FLOTILLA_TEST_OPENAPI_TOKEN";
const TOKEN: &str = "openapi-admin";

fn routed() -> BTreeSet<String> {
    let src = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/master/src/http/mod.rs"
    ))
    .unwrap();
    src.split(".route(")
        .skip(1)
        .map(|part| {
            let path = part.trim_start().trim_start_matches('"');
            path[..path.find('"').unwrap()].to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_running_api_matches_its_openapi_document() {
    let builders = format!(
        r#"
[[builders]]
name = "echo"
workers = ["w1"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo hello"]

[[schedulers]]
name = "try"
kind = "try"
builders = ["echo"]

[api]
admin_token_env = "{TOKEN_ENV}"
"#
    );
    let mut spec = ClusterSpec::new(1, 1, &builders);
    spec.master_env = vec![(TOKEN_ENV.to_owned(), TOKEN.to_owned())];
    let cluster = Cluster::start("openapi", spec).await;
    let api = cluster.api(0);

    let doc: Value = cluster
        .get(&format!("{api}/api/v1/openapi.json"))
        .await
        .expect("the document is served");
    assert_eq!(doc["openapi"], "3.0.3");
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(documented, routed(), "documented vs routed paths");

    // A finished build, so the id routes have something to find.
    let resp = cluster
        .http
        .post(format!("{api}/api/v1/force"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"builder": "echo"}))
        .send()
        .await
        .unwrap();
    let created: Value = resp.json().await.unwrap();
    let id = created["buildrequest_ids"][0].as_i64().unwrap();
    cluster
        .wait_complete(0, &[id], Duration::from_secs(60))
        .await;

    // A fixed seed keeps the suite reproducible; FLOTILLA_FUZZ_SEED and
    // FLOTILLA_FUZZ_EXAMPLES explore further by hand.
    let examples = std::env::var("FLOTILLA_FUZZ_EXAMPLES").unwrap_or_else(|_| "25".into());
    let seed = std::env::var("FLOTILLA_FUZZ_SEED").unwrap_or_else(|_| "20261130".into());
    // schemathesis keeps a cache folder where it runs: not in the repository.
    let scratch = tempfile::tempdir().unwrap();
    let cwd = scratch.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .current_dir(cwd)
            .args([
                "run",
                &format!("{api}/api/v1/openapi.json"),
                "--url",
                &api,
                "--checks",
                "all",
                "--max-examples",
                &examples,
                "--seed",
                &seed,
                "--header",
                &format!("Authorization: Bearer {TOKEN}"),
                "--no-color",
            ])
            .output()
            .expect("schemathesis is installed by scripts/ensure-tools")
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("passed"), "{text}");
}
