//! The HTTP API (docs/http-api.md) on a real two-master cluster: every route,
//! bad ids (404), bad filters (400), missing or wrong token (401),
//! pagination, cluster-wide workers, stop (local and through another
//! master), cancel, rebuild and `max_concurrent_builds`.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The admin token, given to the masters in this environment variable.
const TOKEN_ENV: &str = "FLOTILLA_TEST_ADMIN_TOKEN";

fn token() -> String {
    "api-test-admin-token".to_owned()
}

fn cluster_toml(workers: &str) -> String {
    format!(
        r#"
[[builders]]
name = "echo"
workers = {workers}
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo revision=$FLOTILLA_REVISION; echo second line"]

[[builders]]
name = "slow"
workers = {workers}
  [[builders.steps]]
  name = "sleep"
  command = ["sh", "-c", "echo sleeping; sleep 60"]

[[builders]]
name = "limited"
workers = {workers}
max_concurrent_builds = 1
  [[builders.steps]]
  name = "short"
  command = ["sh", "-c", "sleep 1"]

[[builders]]
name = "queued"
workers = ["ghost"]
  [[builders.steps]]
  name = "never"
  command = ["true"]

[[workers]]
name = "ghost"
password = "ghost-secret"

[api]
admin_token_env = "{TOKEN_ENV}"
"#
    )
}

/// An RFC 3339 UTC time as (date and seconds, nanoseconds), which sorts in time order.
type Instant = (String, u64);

fn instant(v: &Value) -> Instant {
    let s = v.as_str().expect("a time").trim_end_matches('Z');
    let (main, frac) = s.split_once('.').unwrap_or((s, ""));
    let nanos = format!("{frac:0<9}")[..9].parse().expect("fraction");
    (main.to_owned(), nanos)
}

struct Api<'a> {
    c: &'a Cluster,
}

impl Api<'_> {
    async fn get(&self, m: usize, path: &str) -> (StatusCode, Value) {
        let r = self
            .c
            .http
            .get(format!("{}{path}", self.c.api(m)))
            .send()
            .await
            .expect("GET");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn status(&self, m: usize, path: &str) -> StatusCode {
        self.get(m, path).await.0
    }

    async fn ok(&self, m: usize, path: &str) -> Value {
        let (s, v) = self.get(m, path).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }

    async fn post_with(
        &self,
        m: usize,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .c
            .http
            .post(format!("{}{path}", self.c.api(m)))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("POST");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn post(&self, m: usize, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_with(m, path, body, Some(&token())).await
    }

    async fn force(&self, m: usize, builder: &str, revision: &str) -> i64 {
        let (s, v) = self
            .post(
                m,
                "/api/v1/force",
                &json!({"builder": builder, "revision": revision}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "force: {v}");
        v["buildrequest_ids"][0].as_i64().expect("request id")
    }

    /// The build of a request once it has one.
    async fn build_of(&self, request: i64) -> Value {
        eventually(
            &format!("a build of request {request}"),
            Duration::from_secs(30),
            || async {
                let v = self
                    .ok(0, &format!("/api/v1/builds?buildrequest_id={request}"))
                    .await;
                v.as_array().and_then(|a| a.first().cloned())
            },
        )
        .await
    }

    async fn wait_results(&self, request: i64) -> String {
        let rows = self
            .c
            .wait_complete(0, &[request], Duration::from_secs(60))
            .await;
        rows[0]["results"].as_str().unwrap_or_default().to_owned()
    }
}

async fn start() -> Cluster {
    let spec = ClusterSpec::new(2, 2, "");
    let spec = ClusterSpec {
        builders_toml: cluster_toml(&spec.worker_list()),
        master_env: vec![(TOKEN_ENV.to_owned(), token())],
        ..spec
    };
    Cluster::start("api", spec).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_and_refuses_bad_input() {
    let cluster = start().await;
    let api = Api { c: &cluster };

    // Health and readiness.
    assert_eq!(api.get(0, "/healthz").await.1, "ok");
    assert_eq!(api.ok(1, "/readyz").await["ready"], true);

    // Unknown routes are JSON 404s.
    let (s, v) = api.get(0, "/api/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("no such route"));

    // Masters, paginated; bad filters are 400.
    let masters = api.ok(0, "/api/v1/masters").await;
    assert_eq!(masters.as_array().unwrap().len(), 2, "{masters}");
    for key in [
        "id",
        "name",
        "boot_time",
        "active",
        "draining",
        "last_active",
    ] {
        assert!(
            masters[0].get(key).is_some(),
            "masters lack {key}: {masters}"
        );
    }
    assert_eq!(
        api.ok(0, "/api/v1/masters?all=true")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.ok(0, "/api/v1/masters?limit=1")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    for bad in [
        "/api/v1/masters?all=maybe",
        "/api/v1/masters?limit=0",
        "/api/v1/masters?limit=x",
        "/api/v1/masters?offset=-1",
        "/api/v1/masters?colour=blue",
        "/api/v1/buildrequests?complete=perhaps",
        "/api/v1/buildrequests?buildset_id=abc",
        "/api/v1/builds?buildrequest_id=abc",
        "/api/v1/builds?limit=100000",
        "/api/v1/workers?connected=sometimes",
        "/api/v1/builders?offset=nope",
    ] {
        assert_eq!(api.status(0, bad).await, StatusCode::BAD_REQUEST, "{bad}");
    }

    // Writes: missing or wrong token is 401 on every POST.
    let force = json!({"builder": "echo", "revision": "r1"});
    for path in [
        "/api/v1/force",
        "/api/v1/changes",
        "/api/v1/masters/m1/drain",
        "/api/v1/builds/1/stop",
        "/api/v1/builds/1/rebuild",
        "/api/v1/buildrequests/1/cancel",
    ] {
        let (s, _) = api.post_with(0, path, &force, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} without a token");
        let (s, _) = api.post_with(1, path, &force, Some("wrong")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path} with a wrong token");
    }
    let (s, _) = api
        .post(0, "/api/v1/force", &json!({"builder": "no-such-builder"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .post(
            0,
            "/api/v1/force",
            &json!({"builder": "echo", "colour": "blue"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // A build, seen from both masters the same.
    let id = api.force(0, "echo", "r1").await;
    assert_eq!(api.wait_results(id).await, "success");
    let req = api.ok(1, &format!("/api/v1/buildrequests/{id}")).await;
    assert_eq!(req["complete"], true);
    assert_eq!(req["builder"], "echo");
    assert_eq!(req["results"], "success");
    assert_eq!(
        api.status(0, "/api/v1/buildrequests/999999999").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status(0, "/api/v1/buildrequests/abc").await,
        StatusCode::BAD_REQUEST
    );
    let listed = api
        .ok(0, "/api/v1/buildrequests?complete=true&builder=echo")
        .await;
    assert!(
        listed.as_array().unwrap().iter().any(|r| r["id"] == id),
        "{listed}"
    );
    let pending = api
        .ok(0, "/api/v1/buildrequests?complete=false&builder=echo")
        .await;
    assert!(
        pending.as_array().unwrap().iter().all(|r| r["id"] != id),
        "{pending}"
    );

    let build = api.build_of(id).await;
    let build_id = build["id"].as_i64().unwrap();
    for key in [
        "id",
        "number",
        "builder",
        "buildrequest_id",
        "master",
        "worker",
        "started_at",
        "complete_at",
        "results",
    ] {
        assert!(build.get(key).is_some(), "builds lack {key}: {build}");
    }
    // One build is its row plus its whole buildset.
    let mut one = api.ok(1, &format!("/api/v1/builds/{build_id}")).await;
    let buildset = one
        .as_object_mut()
        .unwrap()
        .remove("buildset")
        .expect("one build carries its buildset");
    assert_eq!(buildset["id"], build["buildset_id"], "{buildset}");
    assert_eq!(one, build);
    assert_eq!(
        api.status(0, "/api/v1/builds/999999999").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.status(0, "/api/v1/builds/x").await,
        StatusCode::BAD_REQUEST
    );
    let steps = api.ok(0, &format!("/api/v1/builds/{build_id}/steps")).await;
    assert_eq!(steps[0]["number"], 0, "{steps}");
    assert_eq!(steps[0]["name"], "print");
    assert_eq!(steps[0]["results"], "success");
    assert_eq!(
        api.status(0, "/api/v1/builds/999999999/steps").await,
        StatusCode::NOT_FOUND
    );
    let log = api
        .ok(1, &format!("/api/v1/builds/{build_id}/steps/0/log"))
        .await;
    let log = log.as_str().unwrap().to_owned();
    assert!(log.contains("revision=r1"), "{log}");
    let tail = api
        .ok(
            0,
            &format!("/api/v1/builds/{build_id}/steps/0/log?offset=5"),
        )
        .await;
    assert_eq!(tail.as_str().unwrap(), &log[5..]);
    for (path, want) in [
        (
            format!("/api/v1/builds/{build_id}/steps/7/log"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/api/v1/builds/{build_id}/steps/x/log"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/v1/builds/{build_id}/steps/0/log?offset=-1"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/builds/999999999/steps/0/log".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(api.status(0, &path).await, want, "{path}");
    }

    // Builders: queue counts and the last result; single-builder route.
    let builders = api.ok(0, "/api/v1/builders").await;
    let echo = builders
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "echo")
        .cloned()
        .unwrap();
    assert_eq!(echo["last_results"], "success", "{echo}");
    assert_eq!(echo["last_build"]["id"], build_id);
    assert_eq!(api.ok(1, "/api/v1/builders/echo").await["name"], "echo");
    assert_eq!(
        api.status(0, "/api/v1/builders/nope").await,
        StatusCode::NOT_FOUND
    );

    // Pagination of builds: newest first, pages do not overlap.
    let mut more = Vec::new();
    for i in 2..=4 {
        more.push(api.force(i % 2, "echo", &format!("r{i}")).await);
    }
    for r in &more {
        assert_eq!(api.wait_results(*r).await, "success");
    }
    let all = api.ok(0, "/api/v1/builds?builder=echo").await;
    let all: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let page = |v: Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_i64().unwrap())
            .collect()
    };
    let p1 = page(api.ok(0, "/api/v1/builds?builder=echo&limit=2").await);
    let p2 = page(
        api.ok(1, "/api/v1/builds?builder=echo&limit=2&offset=2")
            .await,
    );
    let p3 = page(
        api.ok(0, "/api/v1/builds?builder=echo&limit=2&offset=4")
            .await,
    );
    assert_eq!([p1, p2].concat(), all);
    assert!(p3.is_empty());
    let reqs = page(
        api.ok(0, "/api/v1/buildrequests?builder=echo&limit=3&offset=1")
            .await,
    );
    assert_eq!(reqs.len(), 3);

    // Workers: the whole cluster's, the same from every master.
    let w0 = api.ok(0, "/api/v1/workers").await;
    let w1 = api.ok(1, "/api/v1/workers").await;
    let view = |v: &Value| -> Vec<(String, bool, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_owned(),
                    w["connected"] == true,
                    w["master"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(view(&w0), view(&w1));
    let connected: Vec<&Value> = w0
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["connected"] == true)
        .collect();
    assert_eq!(connected.len(), 2, "{w0}");
    for w in &connected {
        assert!(w["master"] == "m1" || w["master"] == "m2", "{w}");
        assert!(
            w["builders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|b| b == "echo")
        );
        assert!(w["idle"].is_boolean());
    }
    let ghost = w0
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "ghost")
        .unwrap();
    assert_eq!(ghost["connected"], false);
    assert_eq!(ghost["idle"], Value::Null);
    assert_eq!(
        api.ok(1, "/api/v1/workers?connected=true")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Drain and undrain any master through any master; unknown names 404.
    let (s, v) = api.post(0, "/api/v1/masters/m2/drain", &json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let drained = eventually("m2 draining", Duration::from_secs(10), || async {
        let ms = api.ok(0, "/api/v1/masters").await;
        ms.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "m2" && m["draining"] == true)
            .cloned()
    })
    .await;
    assert_eq!(drained["draining"], true);
    let (s, _) = api.post(1, "/api/v1/masters/m2/undrain", &json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .post(0, "/api/v1/masters/nobody/drain", &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    cluster.wait_ready().await;

    // Changes are accepted.
    let (s, v) = api
        .post(
            1,
            "/api/v1/changes",
            &json!({"repository": "repo", "branch": "main", "revision": "abc"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["change_id"].as_i64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_cancel_rebuild_and_max_concurrent_builds() {
    let cluster = start().await;
    let api = Api { c: &cluster };

    // Cancel a pending request (its only worker never connects).
    let queued = api.force(0, "queued", "q").await;
    let (s, v) = api
        .post(
            1,
            &format!("/api/v1/buildrequests/{queued}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["cancelled"], true);
    assert_eq!(api.wait_results(queued).await, "cancelled");
    let (s, _) = api
        .post(
            0,
            &format!("/api/v1/buildrequests/{queued}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "cancelling twice");
    let (s, _) = api
        .post(0, "/api/v1/buildrequests/999999999/cancel", &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .post(0, "/api/v1/buildrequests/abc/cancel", &json!({}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Stop a running build through the master that does NOT run it (the
    // stop goes through the database), then one through its own master.
    for through_owner in [false, true] {
        let id = api
            .force(0, "slow", if through_owner { "own" } else { "other" })
            .await;
        let build = api.build_of(id).await;
        let build_id = build["id"].as_i64().unwrap();
        let owner = if build["master"] == "m1" { 0 } else { 1 };
        let via = if through_owner { owner } else { 1 - owner };
        let (s, v) = api
            .post(via, &format!("/api/v1/builds/{build_id}/stop"), &json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let expected = if through_owner { "here" } else { "owner" };
        assert_eq!(v["stopped_by"], expected, "{v}");
        assert_eq!(api.wait_results(id).await, "cancelled");
        let b = api.ok(0, &format!("/api/v1/builds/{build_id}")).await;
        assert_eq!(b["results"], "cancelled", "{b}");
        let (s, _) = api
            .post(via, &format!("/api/v1/builds/{build_id}/stop"), &json!({}))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "stopping a finished build");
    }
    let (s, _) = api
        .post(0, "/api/v1/builds/999999999/stop", &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Cancelling a request that already runs stops its build.
    let id = api.force(1, "slow", "cancel-running").await;
    api.build_of(id).await;
    let (s, v) = api
        .post(0, &format!("/api/v1/buildrequests/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stopping"], true);
    assert_eq!(api.wait_results(id).await, "cancelled");

    // Rebuild: a new request for the same builder and revision.
    let first = api.force(0, "echo", "again").await;
    assert_eq!(api.wait_results(first).await, "success");
    let b = api.build_of(first).await;
    let (s, v) = api
        .post(
            1,
            &format!("/api/v1/builds/{}/rebuild", b["id"]),
            &json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let again = v["buildrequest_ids"][0].as_i64().unwrap();
    assert_ne!(again, first);
    assert_eq!(api.wait_results(again).await, "success");
    let rb = api.build_of(again).await;
    assert_eq!(rb["builder"], "echo");
    let log = cluster.step_log(0, rb["id"].as_i64().unwrap(), 0).await;
    assert!(log.contains("revision=again"), "{log}");
    let (s, _) = api
        .post(0, "/api/v1/builds/999999999/rebuild", &json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // max_concurrent_builds = 1 across both masters and both workers:
    // the builds of "limited" never overlap in time.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(api.force(i % 2, "limited", &format!("l{i}")).await);
    }
    for id in &ids {
        assert_eq!(api.wait_results(*id).await, "success");
    }
    let builds = api.ok(0, "/api/v1/builds?builder=limited").await;
    let mut spans: Vec<(Instant, Instant)> = builds
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (instant(&b["started_at"]), instant(&b["complete_at"])))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 4, "{builds}");
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "limited builds overlapped: {w:?}");
    }
}
