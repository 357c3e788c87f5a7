//! Provenance on a real cluster: a build made from a change and a forced
//! build both say where they came from — in the API (fields on builds and
//! requests, the whole buildset on one build and at
//! `/api/v1/buildsets/{id}`, `?branch=` and `?revision=` filters), in
//! `flotilla status builds` and `flotilla status build N`, and on the
//! dashboard's build page. A force naming a branch, revision and repository
//! checks that revision out; a force naming none (what the dashboard's
//! button used to send) builds the repository of the builder's scheduler
//! instead of failing with "no repository to check out", and the
//! dashboard's force form offers those defaults.

mod common;
#[path = "common/gitrepo.rs"]
mod gitrepo;

use std::process::Command;
use std::time::Duration;

use common::browser::Browser;
use common::{Cluster, ClusterSpec, eventually, flotilla_bin};
use gitrepo::GitRepo;
use serde_json::{Value, json};

fn cluster_toml(repo: &str) -> String {
    format!(
        r#"
[[builders]]
name = "prov"
workers = ["w1"]
  [[builders.steps]]
  name = "checkout"
  kind = "git"
  [[builders.steps]]
  name = "show"
  command = ["sh", "-c", "cat VERSION; echo branch=$FLOTILLA_BRANCH"]

[[schedulers]]
name = "on-main"
kind = "single-branch"
branch = "main"
tree_stable_timer = "0s"
builders = ["prov"]

[[builders]]
name = "checkout"
workers = ["w1"]
  [[builders.steps]]
  name = "checkout"
  kind = "git"
  [[builders.steps]]
  name = "show"
  command = ["sh", "-c", "cat VERSION"]

[[schedulers]]
name = "by-hand"
kind = "force"
repository = "{repo}"
branch = "main"
builders = ["checkout"]
  [schedulers.properties]
  channel = "nightly"
"#
    )
}

fn flotilla(api: &str, args: &[&str]) -> String {
    let o = Command::new(flotilla_bin())
        .arg("--api")
        .arg(api)
        .args(args)
        .output()
        .expect("run flotilla");
    assert!(
        o.status.success(),
        "flotilla {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn builds(cluster: &Cluster, query: &str) -> Vec<i64> {
    let v = cluster
        .get(&format!("{}/api/v1/builds?{query}", cluster.api(0)))
        .await
        .unwrap_or_else(|| panic!("builds?{query}"));
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_from_a_change_and_from_a_force_show_where_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("repo"));
    let first = repo.commit("VERSION", "one\n", "first version");
    let second = repo.commit("VERSION", "two\n", "second version\n\nwith a body");
    let cluster = Cluster::start(
        "provenance",
        ClusterSpec::new(1, 1, &cluster_toml(&repo.url())),
    )
    .await;
    let api = cluster.api(0);

    // A change on main makes the scheduler build it.
    let change = json!({"repository": repo.url(), "branch": "main", "revision": second,
        "author": "Ada <ada@example.com>", "comments": "second version\n\nwith a body",
        "files": ["VERSION"], "project": "proj", "codebase": "cb"});
    let resp: Value = cluster
        .http
        .post(format!("{api}/api/v1/changes"))
        .json(&change)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let change_id = resp["change_id"].as_i64().unwrap();
    let from_change = eventually("a build of the change", Duration::from_secs(60), || async {
        cluster
            .get(&format!("{api}/api/v1/builds?builder=prov"))
            .await
            .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
            .filter(|b| !b["complete_at"].is_null())
    })
    .await;
    assert_eq!(from_change["results"], "success", "{from_change}");
    assert_eq!(from_change["branch"], "main");
    assert_eq!(from_change["revision"], second.as_str());
    assert_eq!(from_change["repository"], repo.url().as_str());
    let reason = from_change["reason"].as_str().unwrap();
    assert!(reason.contains("on-main"), "{reason}");
    let id = from_change["id"].as_i64().unwrap();
    let log = cluster.step_log(0, id, 1).await;
    assert!(
        log.contains("two\n") && log.contains("branch=main"),
        "{log}"
    );

    let detail = cluster
        .get(&format!("{api}/api/v1/builds/{id}"))
        .await
        .unwrap();
    let bs = &detail["buildset"];
    assert_eq!(bs["id"], from_change["buildset_id"]);
    assert_eq!(bs["scheduler"], "on-main");
    let ss = &bs["sourcestamps"][0];
    assert_eq!(ss["repository"], repo.url().as_str());
    assert_eq!(
        (&ss["project"], &ss["codebase"]),
        (&json!("proj"), &json!("cb"))
    );
    assert_eq!(ss["patch"], false);
    let changes = bs["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{bs}");
    assert_eq!(changes[0]["id"], change_id);
    assert_eq!(changes[0]["author"], "Ada <ada@example.com>");
    assert_eq!(changes[0]["files"], json!(["VERSION"]));
    assert!(changes[0]["when_timestamp"].is_string());
    assert_eq!(bs["properties"]["scheduler"], "on-main");
    // The request says the same, and the buildset has its own endpoint.
    let request = cluster
        .get(&format!(
            "{api}/api/v1/buildrequests/{}",
            from_change["buildrequest_id"]
        ))
        .await
        .unwrap();
    assert_eq!(request["revision"], second.as_str());
    assert_eq!(request["buildset"]["changes"][0]["id"], change_id);
    let buildset = cluster
        .get(&format!("{api}/api/v1/buildsets/{}", bs["id"]))
        .await
        .unwrap();
    assert_eq!(&buildset, bs);
    assert_eq!(
        buildset["buildrequest_ids"],
        json!([from_change["buildrequest_id"]])
    );
    let missing = cluster
        .http
        .get(format!("{api}/api/v1/buildsets/987654"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // A forced build of an older revision, with a property, through the CLI.
    let forced = flotilla(
        &api,
        &[
            "force",
            "prov",
            "--repository",
            &repo.url(),
            "--branch",
            "main",
            "--revision",
            &first,
            "--property",
            "tier=gold",
            "--reason",
            "checking the first version",
            "--wait",
        ],
    );
    assert!(forced.contains("buildset"), "{forced}");
    let forced_id = builds(&cluster, &format!("revision={first}")).await;
    assert_eq!(forced_id.len(), 1);
    let forced_id = forced_id[0];
    let log = cluster.step_log(0, forced_id, 1).await;
    assert!(
        log.contains("one\n"),
        "the forced revision was checked out: {log}"
    );
    let detail = cluster
        .get(&format!("{api}/api/v1/builds/{forced_id}"))
        .await
        .unwrap();
    let bs = &detail["buildset"];
    assert_eq!(bs["reason"], "checking the first version");
    assert_eq!(bs["changes"], json!([]));
    assert_eq!(bs["properties"]["tier"], "gold");
    assert_eq!(bs["sourcestamps"][0]["revision"], first.as_str());

    // Filters.
    assert_eq!(
        builds(&cluster, &format!("revision={second}")).await,
        vec![id]
    );
    assert_eq!(builds(&cluster, "branch=main").await, vec![forced_id, id]);
    assert!(builds(&cluster, "branch=elsewhere").await.is_empty());
    assert_eq!(
        builds(&cluster, &format!("branch=main&revision={first}")).await,
        vec![forced_id]
    );

    // The CLI.
    let table = flotilla(&api, &["status", "builds"]);
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("BRANCH") && header.contains("REVISION"),
        "{table}"
    );
    assert!(table.contains(&second) && table.contains(&first), "{table}");
    let one = flotilla(&api, &["status", "build", &id.to_string()]);
    for needle in [
        second.as_str(),
        "main",
        repo.url().as_str(),
        "Ada <ada@example.com>",
        "with a body",
        "VERSION",
        "on-main",
        "proj",
        "patch:",
    ] {
        assert!(one.contains(needle), "{needle:?} missing from:\n{one}");
    }
    let one = flotilla(&api, &["status", "build", &forced_id.to_string()]);
    assert!(
        one.contains("tier") && one.contains("gold") && one.contains("changes:     none"),
        "{one}"
    );
    let json_out: Value = serde_json::from_str(&flotilla(
        &api,
        &["status", "build", &id.to_string(), "--json"],
    ))
    .unwrap();
    assert_eq!(json_out["buildset"]["changes"][0]["id"], change_id);

    // The dashboard's build page.
    let browser = Browser::new();
    let dom = browser.dump_dom(&format!("{api}/#/builds/{id}"), 2500);
    let buildset_attr = format!(r#"data-buildset-id="{}""#, from_change["buildset_id"]);
    assert!(dom.contains(&buildset_attr), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-change-id="{change_id}""#)),
        "{dom}"
    );
    assert!(dom.contains("Ada &lt;ada@example.com&gt;"), "{dom}");
    assert!(dom.contains(&second), "{dom}");
    let list = browser.dump_dom(&format!("{api}/#/builds"), 2500);
    assert!(
        list.contains(&second[..12]),
        "the build list shows revisions: {list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_without_a_source_builds_the_schedulers_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("repo"));
    let head = repo.commit("VERSION", "forced\n", "a version");
    let cluster = Cluster::start(
        "provenance_force",
        ClusterSpec::new(1, 1, &cluster_toml(&repo.url())),
    )
    .await;
    let api = cluster.api(0);

    // What the dashboard's force button sent: a builder and a reason only.
    // Before builds were forced from the scheduler's source, this failed
    // its git step with "no repository to check out".
    let body = json!({"builder": "checkout", "reason": "forced from the dashboard"});
    let resp: Value = cluster
        .http
        .post(format!("{api}/api/v1/force"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let request = resp["buildrequest_ids"][0].as_i64().unwrap();
    let done = cluster
        .wait_complete(0, &[request], Duration::from_secs(60))
        .await;
    let build = cluster.builds_of(0, request).await[0]["id"]
        .as_i64()
        .unwrap();
    let checkout = cluster.step_log(0, build, 0).await;
    assert!(
        !checkout.contains("no repository to check out"),
        "{checkout}"
    );
    assert_eq!(done[0]["results"], "success", "{checkout}");
    assert!(
        checkout.contains(&format!("checked out {head}")),
        "{checkout}"
    );
    assert_eq!(done[0]["repository"], repo.url().as_str());
    assert_eq!(done[0]["branch"], "main");

    // The builder says what a force builds, and the dashboard's form offers it.
    let builder = cluster
        .get(&format!("{api}/api/v1/builders/checkout"))
        .await
        .unwrap();
    let d = &builder["force_defaults"];
    assert_eq!(d["repository"], repo.url().as_str());
    assert_eq!(d["branch"], "main");
    assert_eq!(d["properties"]["channel"], "nightly");
    assert_eq!(d["from"], "scheduler by-hand");
    let browser = Browser::new();
    let form = browser.dump_dom(&format!("{api}/#/force/checkout"), 2500);
    assert!(form.contains(r#"data-force-builder="checkout""#), "{form}");
    assert!(
        form.contains(&format!(r#"value="{}""#, repo.url())),
        "{form}"
    );
    assert!(
        form.contains(r#"name="branch" size="60" value="main""#),
        "{form}"
    );
    assert!(form.contains("channel=nightly"), "{form}");
    assert!(form.contains(r#"id="force-revision""#), "{form}");
}
