//! The listings beyond the contract on a real two-master cluster:
//! `/api/v1/changes` (newest first, filters, one by id, 404 and 400) and
//! `/api/v1/schedulers` (every scheduler and change source of the cluster
//! file with the master that owns it, which moves when that master dies).

mod common;
#[path = "common/gitrepo.rs"]
mod gitrepo;

use std::time::Duration;

use common::{Cluster, ClusterSpec, eventually};
use gitrepo::GitRepo;
use reqwest::StatusCode;
use serde_json::{Value, json};

const REPO: &str = "https://example.test/listings.git";

async fn get(c: &Cluster, m: usize, path: &str) -> (StatusCode, Value) {
    let r = c
        .http
        .get(format!("{}{path}", c.api(m)))
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

async fn ok(c: &Cluster, m: usize, path: &str) -> Value {
    let (s, v) = get(c, m, path).await;
    assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
    v
}

async fn post_change(c: &Cluster, m: usize, body: Value) -> i64 {
    let r = c
        .http
        .post(format!("{}/api/v1/changes", c.api(m)))
        .json(&body)
        .send()
        .await
        .expect("POST change");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("JSON");
    v["change_id"].as_i64().expect("change_id")
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

/// The listing entry named `name`.
fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .expect("a list")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The live owner of `name` (master name), once the listing shows one.
fn live_owner(list: &Value, name: &str) -> Option<String> {
    let e = entry(list, name);
    if e["owner_active"] != true {
        return None;
    }
    e["owner"]["master_name"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_and_schedulers_are_listed_by_every_master() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let repo = GitRepo::init(&scratch.path().join("repo"));
    repo.commit("README", "hello\n", "first commit");
    // The poller follows a branch that does not exist: it is owned and
    // polled, but records no change of its own.
    let toml = format!(
        r#"
[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[schedulers]]
name = "hourly"
kind = "periodic"
interval = "1h"
builders = ["b"]

[[schedulers]]
name = "manual"
kind = "force"
builders = ["b"]

[[change_sources]]
name = "poller"
kind = "git"
repository = "{}"
branches = ["no-such-branch"]
poll_interval = "1h"
"#,
        repo.url()
    );
    let mut c = Cluster::start("api_listings", ClusterSpec::new(2, 0, &toml)).await;

    // Changes: two on different branches, through different masters.
    let a = post_change(
        &c,
        0,
        json!({
            "repository": REPO,
            "branch": "main",
            "revision": "aaa111",
            "author": "alice",
            "comments": "first change",
            "files": ["src/lib.rs", "README"],
            "project": "proj",
            "category": "push",
            "properties": {"ticket": 42},
        }),
    )
    .await;
    let b = post_change(
        &c,
        1,
        json!({"repository": REPO, "branch": "feature", "revision": "bbb222"}),
    )
    .await;
    assert!(b > a);
    for m in 0..2 {
        assert_eq!(ids(&ok(&c, m, "/api/v1/changes").await), vec![b, a]);
        assert_eq!(
            ids(&ok(&c, m, "/api/v1/changes?branch=main").await),
            vec![a]
        );
        assert_eq!(
            ids(&ok(&c, m, "/api/v1/changes?branch=feature").await),
            vec![b]
        );
    }
    let repo_q = format!("/api/v1/changes?repository={}", urlencode(REPO));
    assert_eq!(ids(&ok(&c, 0, &repo_q).await), vec![b, a]);
    assert_eq!(
        ids(&ok(&c, 0, "/api/v1/changes?repository=elsewhere").await),
        Vec::<i64>::new()
    );
    assert_eq!(ids(&ok(&c, 0, "/api/v1/changes?limit=1").await), vec![b]);
    assert_eq!(
        ids(&ok(&c, 0, "/api/v1/changes?limit=1&offset=1").await),
        vec![a]
    );

    let one = ok(&c, 1, &format!("/api/v1/changes/{a}")).await;
    assert_eq!(one["id"], a);
    assert_eq!(one["author"], "alice");
    assert_eq!(one["comments"], "first change");
    assert_eq!(one["branch"], "main");
    assert_eq!(one["revision"], "aaa111");
    assert_eq!(one["repository"], REPO);
    assert_eq!(one["project"], "proj");
    assert_eq!(one["codebase"], "");
    assert_eq!(one["files"], json!(["src/lib.rs", "README"]));
    assert_eq!(one["properties"], json!({"ticket": 42}));
    assert_eq!(one["category"], "push");
    assert!(one["when_timestamp"].is_string(), "{one}");
    assert!(one["created_at"].is_string(), "{one}");
    let listed = ok(&c, 0, "/api/v1/changes?branch=main").await;
    assert_eq!(listed[0], one, "the listing and the single change agree");

    let (s, v) = get(&c, 0, "/api/v1/changes/999999999").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(
        v["error"].as_str().is_some_and(|e| e.contains("999999999")),
        "{v}"
    );
    for bad in [
        "/api/v1/changes?limit=abc",
        "/api/v1/changes?limit=0",
        "/api/v1/changes?offset=-1",
        "/api/v1/changes?brnch=main",
        "/api/v1/changes/abc",
    ] {
        let (s, v) = get(&c, 0, bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].is_string(), "{bad}: {v}");
    }

    // Schedulers and change sources, with their owners.
    let masters = ok(&c, 0, "/api/v1/masters").await;
    let master_id = |name: &str| {
        masters
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["id"].as_i64())
            .unwrap_or_else(|| panic!("no master {name} in {masters}"))
    };
    let list = eventually(
        "the periodic scheduler and the poller owned by live masters",
        Duration::from_secs(30),
        || async {
            let l = ok(&c, 0, "/api/v1/schedulers").await;
            (live_owner(&l, "hourly").is_some() && live_owner(&l, "poller").is_some()).then_some(l)
        },
    )
    .await;
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "every scheduler and change source of the cluster file: {list}"
    );
    let hourly = entry(&list, "hourly");
    assert_eq!(hourly["kind"], "periodic");
    assert_eq!(hourly["type"], "scheduler");
    let owner = live_owner(&list, "hourly").unwrap();
    assert!(owner == "m1" || owner == "m2", "{list}");
    assert_eq!(hourly["owner"]["master_id"], master_id(&owner), "{list}");
    let manual = entry(&list, "manual");
    assert_eq!(
        (&manual["kind"], &manual["type"]),
        (&json!("force"), &json!("scheduler"))
    );
    assert_eq!(manual["owner"], Value::Null, "{list}");
    assert_eq!(manual["owner_active"], false, "{list}");
    let poller = entry(&list, "poller");
    assert_eq!(
        (&poller["kind"], &poller["type"]),
        (&json!("git"), &json!("change_source"))
    );
    let poller_owner = live_owner(&list, "poller").unwrap();
    assert_eq!(
        poller["owner"]["master_id"],
        master_id(&poller_owner),
        "{list}"
    );
    let from_other = ok(&c, 1, "/api/v1/schedulers").await;
    assert_eq!(
        live_owner(&from_other, "hourly").as_deref(),
        Some(owner.as_str()),
        "every master answers the same: {from_other}"
    );
    let (s, v) = get(&c, 0, "/api/v1/schedulers?limit=abc").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // The owner dies: the listing shows the survivor taking over.
    let dead = c.masters.iter().position(|m| m.name == owner).unwrap();
    let survivor = 1 - dead;
    let survivor_name = c.masters[survivor].name.clone();
    c.kill9_master(dead);
    let list = eventually(
        "the periodic scheduler owned by the surviving master",
        Duration::from_secs(30),
        || async {
            let l = ok(&c, survivor, "/api/v1/schedulers").await;
            (live_owner(&l, "hourly").as_deref() == Some(survivor_name.as_str())).then_some(l)
        },
    )
    .await;
    assert_eq!(entry(&list, "hourly")["owner_active"], true, "{list}");
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
