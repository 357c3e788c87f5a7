//! Schedulers against MariaDB: the branch schedulers (tree-stable timer,
//! file filter, any-branch), push webhooks and their secrets, dependent and
//! triggerable schedulers with real builds, a periodic scheduler on three
//! masters whose owner is killed, a nightly scheduler driven by a manual
//! clock, and a cron expression that does not parse.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, ClusterSpec, TestDb, eventually, flotilla_bin};
use flotilla_master::config::ClusterConfig;
use flotilla_master::db::Store;
use flotilla_master::schedulers::{Clock, Engine, SchedCtx};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sqlx::Row;

/// (buildset id, branch, revision) of every buildset of `scheduler`, in order.
async fn buildsets_of(c: &Cluster, scheduler: &str) -> Vec<(i64, String, String)> {
    let mut conn = c.connect_db().await;
    sqlx::query(
        "SELECT bs.id, COALESCE(ss.branch, '') AS branch, COALESCE(ss.revision, '') AS revision \
         FROM buildsets bs JOIN buildset_sourcestamps bss ON bss.buildsetid = bs.id \
         JOIN sourcestamps ss ON ss.id = bss.sourcestampid WHERE bs.scheduler = ? ORDER BY bs.id",
    )
    .bind(scheduler)
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("id"), r.get("branch"), r.get("revision")))
    .collect()
}

async fn change_count(c: &Cluster) -> i64 {
    let mut conn = c.connect_db().await;
    sqlx::query_scalar("SELECT COUNT(*) FROM changes")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn send_change(c: &Cluster, m: usize, branch: &str, revision: &str, files: &[&str]) {
    let body =
        json!({"repository": "repo", "branch": branch, "revision": revision, "files": files});
    let resp = c
        .http
        .post(format!("{}/api/v1/changes", c.api(m)))
        .json(&body)
        .send()
        .await
        .expect("send change");
    assert!(resp.status().is_success(), "change refused: {resp:?}");
}

/// The active master that owns the periodic scheduler.
async fn periodic_owner(c: &Cluster) -> Option<String> {
    let mut conn = c.connect_db().await;
    sqlx::query_scalar::<_, String>(
        "SELECT m.name FROM object_owners o JOIN masters m ON m.id = o.masterid \
         WHERE o.kind = 'scheduler' AND o.name = 'every2s' AND m.active = 1",
    )
    .fetch_optional(&mut conn)
    .await
    .unwrap()
}

fn sign(key: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn branch_schedulers_and_webhooks_turn_changes_into_buildsets() {
    // The masters get the shared webhook secret in this variable.
    let secret = "webhook-test-secret".to_owned();
    let toml = r#"
[hooks]
github_secret_env = "FLOTILLA_TEST_HOOK_SECRET"
gitlab_token_env = "FLOTILLA_TEST_HOOK_SECRET"

[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[schedulers]]
name = "main-stable"
kind = "single-branch"
branch = "main"
tree_stable_timer = "2s"
builders = ["b"]

[[schedulers]]
name = "main-src"
kind = "single-branch"
branch = "main"
files = ["src/"]
builders = ["b"]

[[schedulers]]
name = "ab"
kind = "any-branch"
branches = ["a", "b"]
builders = ["b"]

[[builders]]
name = "collapsing"
workers = []
collapse_requests = true
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[schedulers]]
name = "on-c"
kind = "any-branch"
branches = ["c"]
builders = ["collapsing"]
"#;
    let mut spec = ClusterSpec::new(2, 0, toml);
    spec.master_env = vec![("FLOTILLA_TEST_HOOK_SECRET".to_owned(), secret.clone())];
    let c = Cluster::start("sched_branch", spec).await;
    // Three quick changes, through both masters: one owns each scheduler.
    send_change(&c, 0, "main", "r1", &["README"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_change(&c, 1, "main", "r2", &["src/lib.rs"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_change(&c, 0, "main", "r3", &["README"]).await;
    send_change(&c, 1, "a", "ra", &[]).await;
    send_change(&c, 0, "b", "rb", &[]).await;
    send_change(&c, 1, "c", "rc", &[]).await;
    let stable = eventually(
        "the tree-stable buildset",
        Duration::from_secs(20),
        || async {
            let b = buildsets_of(&c, "main-stable").await;
            (!b.is_empty()).then_some(b)
        },
    )
    .await;
    // Let a wrong second buildset have its chance to appear.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stable_now = buildsets_of(&c, "main-stable").await;
    assert_eq!(
        stable_now.len(),
        1,
        "three quick changes make one buildset: {stable_now:?}"
    );
    assert_eq!(stable[0].2, "r3", "built at the last change");
    let src = buildsets_of(&c, "main-src").await;
    assert_eq!(
        src.iter().map(|b| b.2.as_str()).collect::<Vec<_>>(),
        ["r2"],
        "only the change touching src/ starts a build"
    );
    let ab: HashSet<(String, String)> = buildsets_of(&c, "ab")
        .await
        .into_iter()
        .map(|b| (b.1, b.2))
        .collect();
    assert_eq!(
        ab,
        HashSet::from([("a".into(), "ra".into()), ("b".into(), "rb".into())])
    );

    // Collapsing: each new request on branch c supersedes the pending older ones.
    send_change(&c, 0, "c", "rc2", &[]).await;
    send_change(&c, 1, "c", "rc3", &[]).await;
    eventually("three buildsets on c", Duration::from_secs(20), || async {
        (buildsets_of(&c, "on-c").await.len() == 3).then_some(())
    })
    .await;
    let mut conn = c.connect_db().await;
    let rows: Vec<(i64, Option<i64>)> = sqlx::query(
        "SELECT CAST(br.complete AS SIGNED) AS complete, br.results FROM buildrequests br \
         JOIN builders b ON b.id = br.builderid WHERE b.name = 'collapsing' ORDER BY br.id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<i64, _>("complete"),
            r.get::<Option<i16>, _>("results").map(i64::from),
        )
    })
    .collect();
    // 3 = skipped.
    assert_eq!(
        rows,
        [(1, Some(3)), (1, Some(3)), (0, None)],
        "collapsed requests"
    );

    // Webhooks: a bad or missing signature, or a malformed body, creates nothing.
    let before = change_count(&c).await;
    let push = json!({
        "ref": "refs/heads/a",
        "after": "gh2",
        "repository": {"clone_url": "https://example.com/o/r.git", "full_name": "o/r"},
        "commits": [
            {"id": "gh1", "message": "one", "added": ["x"], "modified": [], "removed": []},
            {"id": "gh2", "message": "two", "added": [], "modified": ["y"], "removed": []}
        ]
    })
    .to_string();
    let hook = |path: &str| c.http.post(format!("{}/api/v1/hooks/{path}", c.api(0)));
    let r = hook("github")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign("wrong secret", push.as_bytes()))
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = hook("github")
        .header("X-GitHub-Event", "push")
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let junk = b"{\"ref\": 5".to_vec();
    let r = hook("github")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&secret, &junk))
        .body(junk)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = hook("gitlab")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", "nope")
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(
        change_count(&c).await,
        before,
        "refused hooks created changes"
    );

    let r = hook("github")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sign(&secret, push.as_bytes()))
        .body(push.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let gitlab_push = json!({
        "ref": "refs/heads/b",
        "after": "gl1",
        "project": {"git_http_url": "https://gitlab.example.com/o/r.git", "path_with_namespace": "o/r"},
        "commits": [{"id": "gl1", "message": "m", "timestamp": "2026-11-01T10:00:00+01:00",
                     "author": {"name": "N", "email": "n@x"}, "added": [], "modified": ["z"], "removed": []}]
    })
    .to_string();
    let r = hook("gitlab")
        .header("X-Gitlab-Event", "Push Hook")
        .header("X-Gitlab-Token", &secret)
        .body(gitlab_push)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(change_count(&c).await, before + 3);
    let revs = eventually(
        "buildsets from the pushes",
        Duration::from_secs(20),
        || async {
            let revs: HashSet<String> = buildsets_of(&c, "ab")
                .await
                .into_iter()
                .map(|b| b.2)
                .collect();
            (revs.contains("gh1") && revs.contains("gh2") && revs.contains("gl1")).then_some(revs)
        },
    )
    .await;
    assert_eq!(revs.len(), 5, "{revs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependent_follows_upstream_success_and_trigger_waits_for_its_builds() {
    let spec = ClusterSpec::new(1, 2, "");
    let workers = spec.worker_list();
    let toml = format!(
        r#"
[[builders]]
name = "up"
workers = {workers}
  [[builders.steps]]
  name = "check"
  command = ["sh", "-c", "test \"$FLOTILLA_REVISION\" != bad"]

[[builders]]
name = "down"
workers = {workers}
  [[builders.steps]]
  name = "s"
  command = ["sh", "-c", "echo downstream of $FLOTILLA_REVISION"]

[[builders]]
name = "parent"
workers = {workers}
  [[builders.steps]]
  name = "trigger"
  kind = "trigger"
  schedulers = ["child"]
  wait_for_finish = true
  [[builders.steps]]
  name = "after"
  command = ["echo", "parent done"]

[[builders]]
name = "child"
workers = {workers}
  [[builders.steps]]
  name = "check"
  command = ["sh", "-c", "echo mode=$FLOTILLA_PROP_MODE; test \"$FLOTILLA_PROP_MODE\" != fail"]

[[schedulers]]
name = "up-sched"
kind = "single-branch"
branch = "main"
builders = ["up"]

[[schedulers]]
name = "down-sched"
kind = "dependent"
upstream = "up-sched"
builders = ["down"]

[[schedulers]]
name = "child"
kind = "triggerable"
builders = ["child"]
"#
    );
    let c = Cluster::start(
        "sched_dep",
        ClusterSpec {
            builders_toml: toml,
            ..spec
        },
    )
    .await;
    let complete = |id: i64| {
        let c = &c;
        async move {
            let mut conn = c.connect_db().await;
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(complete AS SIGNED) FROM buildsets WHERE id = ?",
            )
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap()
                == 1
        }
    };
    send_change(&c, 0, "main", "good1", &[]).await;
    let down = eventually(
        "the dependent buildset",
        Duration::from_secs(60),
        || async {
            let b = buildsets_of(&c, "down-sched").await;
            (!b.is_empty()).then_some(b)
        },
    )
    .await;
    assert_eq!(down[0].2, "good1", "the dependent builds upstream's source");
    send_change(&c, 0, "main", "bad", &[]).await;
    let bad = eventually(
        "the failing upstream buildset",
        Duration::from_secs(60),
        || async {
            let b = buildsets_of(&c, "up-sched").await;
            b.iter().find(|b| b.2 == "bad").map(|b| b.0)
        },
    )
    .await;
    eventually(
        "upstream failure complete",
        Duration::from_secs(60),
        || async { complete(bad).await.then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        buildsets_of(&c, "down-sched").await.len(),
        1,
        "no dependent build after an upstream failure"
    );

    // Trigger: the parent's step waits for the child and takes its result.
    for (mode, expected) in [("ok", "success"), ("fail", "failure")] {
        let body = json!({"builder": "parent", "revision": "p1", "branch": "main",
                          "repository": "repo", "properties": {"mode": mode}});
        let v: Value = c
            .http
            .post(format!("{}/api/v1/force", c.api(0)))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let req = v["buildrequest_ids"][0].as_i64().unwrap();
        let row = &c.wait_complete(0, &[req], Duration::from_secs(60)).await[0];
        assert_eq!(row["results"], expected, "parent with mode={mode}");
        let build = c.builds_of(0, req).await[0]["id"].as_i64().unwrap();
        let log = c.step_log(0, build, 0).await;
        assert!(log.contains("triggered child"), "{log}");
        assert!(log.contains(&format!("finished: {expected}")), "{log}");
        let mut conn = c.connect_db().await;
        let children: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM buildsets WHERE parent_buildid = ? AND scheduler = 'child'",
        )
        .bind(build)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(children, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_fires_once_per_tick_on_three_masters_and_moves_when_its_owner_dies() {
    let toml = r#"
[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[schedulers]]
name = "every2s"
kind = "periodic"
interval = "2s"
builders = ["b"]
"#;
    let mut c = Cluster::start("sched_periodic", ClusterSpec::new(3, 0, toml)).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    let first = periodic_owner(&c)
        .await
        .expect("someone owns the scheduler");
    let i = c.masters.iter().position(|m| m.name == first).unwrap();
    c.kill9_master(i);
    let killed_at = std::time::Instant::now();
    let second = eventually("a new owner", Duration::from_secs(20), || async {
        periodic_owner(&c).await.filter(|o| *o != first)
    })
    .await;
    eprintln!(
        "owner {first} killed; {second} owns the scheduler after {:?}",
        killed_at.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let mut conn = c.connect_db().await;
    let times: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(UNIX_TIMESTAMP(submitted_at) * 1000 AS SIGNED) FROM buildsets \
         WHERE scheduler = 'every2s' ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let gaps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("{} buildsets; gaps in ms: {gaps:?}", times.len());
    assert!(times.len() >= 8, "too few ticks: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g >= 1500),
        "two buildsets for one tick: {gaps:?}"
    );
    // master_timeout (4s) + one tick (2s), with room for a poll and a heartbeat.
    assert!(
        gaps.iter().all(|g| *g <= 8000),
        "a gap beyond the takeover time: {gaps:?}"
    );
    assert!(
        gaps.iter().filter(|g| **g > 2600).count() <= 1,
        "ticks missed outside the takeover: {gaps:?}"
    );
}

#[tokio::test]
async fn nightly_fires_once_at_its_time_in_its_time_zone_across_owners() {
    let db = TestDb::create("sched_nightly").await;
    let store = Store::connect(&db.url).await.unwrap();
    store.upgrade().await.unwrap();
    let toml = r#"
[cluster]
heartbeat_interval = "100ms"
master_timeout = "1s"

[[builders]]
name = "nb"

[[schedulers]]
name = "nightly"
kind = "nightly"
cron = "30 2 * * *"
timezone = "Europe/Paris"
builders = ["nb"]
"#;
    let config =
        Arc::new(ClusterConfig::from_toml(toml, Path::new("nightly.toml"), Vec::new()).unwrap());
    let builder_ids = store.ensure_builders(&["nb".to_owned()]).await.unwrap();
    let m1 = store.register_master("n1").await.unwrap();
    let m2 = store.register_master("n2").await.unwrap();
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let clock = Clock::manual(at("2026-01-15T01:29:30Z"));
    let ctx = |me| SchedCtx {
        store: store.clone(),
        config: config.clone(),
        builder_ids: builder_ids.clone(),
        me,
        clock: clock.clone(),
    };
    let mut e1 = Engine::new(ctx(m1.id));
    let mut e2 = Engine::new(ctx(m2.id));
    let mut fired = 0;
    // In January Paris is UTC+1: 02:30 there is 01:30 UTC.
    for t in ["2026-01-15T01:29:30Z", "2026-01-15T01:29:59Z"] {
        clock.set(at(t));
        fired += e1.tick().await + e2.tick().await;
    }
    assert_eq!(fired, 0, "fired before its time");
    clock.set(at("2026-01-15T01:30:05Z"));
    fired += e1.tick().await + e2.tick().await;
    assert_eq!(fired, 1, "fires at its time, once for both masters");
    clock.set(at("2026-01-15T01:30:50Z"));
    fired += e1.tick().await + e2.tick().await;
    // The owner leaves; the other takes over where it stopped.
    store.deactivate_master(m1.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    clock.set(at("2026-01-15T01:31:10Z"));
    fired += e2.tick().await;
    assert_eq!(fired, 1, "fired twice for one night");
    clock.set(at("2026-01-16T01:30:00Z"));
    fired += e2.tick().await;
    assert_eq!(
        fired, 2,
        "the next night fires once (and 02:30 UTC did not)"
    );
    let owner = store.object_owner("scheduler", "nightly").await.unwrap();
    assert_eq!(owner, Some(m2.id));
    // Months later (the cluster was down): one catch-up build, not one per night.
    clock.set(at("2026-10-25T00:00:00Z"));
    fired += e2.tick().await;
    assert_eq!(fired, 3, "one catch-up build after a long outage");
    // On 2026-10-25 Paris goes back from 03:00 to 02:00: 02:30 happens
    // twice (00:30 and 01:30 UTC) but the nightly build runs once.
    for t in ["2026-10-25T00:31:00Z", "2026-10-25T01:31:00Z"] {
        clock.set(at(t));
        fired += e2.tick().await;
    }
    assert_eq!(fired, 4, "one build for the night the clocks go back");
}

#[test]
fn a_cron_expression_that_does_not_parse_exits_78_naming_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.toml");
    std::fs::write(
        &file,
        r#"
[database]
url = "sqlite::memory:"

[[builders]]
name = "b"

[[schedulers]]
name = "broken-nightly"
kind = "nightly"
cron = "61 25 * * *"
builders = ["b"]
"#,
    )
    .unwrap();
    let out = std::process::Command::new(flotilla_bin())
        .args(["master", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("broken-nightly") && err.contains("cron"),
        "{err}"
    );
}

/// A change whose insert commits after a change with a higher id (two
/// webhooks or pollers at once) still reaches the scheduler, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_committed_after_a_higher_one_is_not_skipped() {
    let toml = r#"
[[builders]]
name = "b"
workers = []
  [[builders.steps]]
  name = "s"
  command = ["true"]

[[schedulers]]
name = "main"
kind = "single-branch"
branch = "main"
builders = ["b"]
"#;
    let c = Cluster::start("sched_late", ClusterSpec::new(1, 0, toml)).await;
    // The scheduler has run once (its watermark is set) before the race.
    send_change(&c, 0, "main", "first", &[]).await;
    eventually("the first buildset", Duration::from_secs(20), || async {
        (buildsets_of(&c, "main").await.len() == 1).then_some(())
    })
    .await;
    // A slow writer takes an id and holds its transaction open...
    let mut slow = c.connect_db().await;
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO changes (author, comments, branch, revision, repository, files, \
         properties, when_timestamp, created_at) \
         VALUES ('slow', '', 'main', 'late', 'repo', '[]', '{}', NOW(6), NOW(6))",
    )
    .execute(&mut slow)
    .await
    .unwrap();
    // ...while a change with a higher id commits and is built.
    send_change(&c, 0, "main", "early", &[]).await;
    eventually(
        "the early change's buildset",
        Duration::from_secs(20),
        || async {
            buildsets_of(&c, "main")
                .await
                .iter()
                .any(|b| b.2 == "early")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    let all = eventually(
        "the late change's buildset",
        Duration::from_secs(20),
        || async {
            let all = buildsets_of(&c, "main").await;
            all.iter().any(|b| b.2 == "late").then_some(all)
        },
    )
    .await;
    // Give the scheduler a few more passes: nothing is built twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_after = buildsets_of(&c, "main").await;
    assert_eq!(all_after.len(), 3, "{all:?} then {all_after:?}");
    let revisions: HashSet<&str> = all_after.iter().map(|b| b.2.as_str()).collect();
    assert_eq!(revisions, HashSet::from(["first", "early", "late"]));
}
