//! Reporters against real processes: masters on MariaDB post commit
//! statuses and signed build documents to a local stand-in for the GitHub
//! and GitLab APIs (`common::code_host`), which records every call and can
//! answer 500, 429, hang or go away.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::code_host::{Answer, Call, CodeHost};
use common::{Cluster, ClusterSpec, eventually};
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use serde_json::Value;
use sha2::Sha256;

const GITHUB_REPO: &str = "https://github.com/acme/widget.git";
const GITLAB_REPO: &str = "git@gitlab.example.com:group/sub/proj.git";

fn builder(name: &str, workers: &str, sleep: &str) -> String {
    format!(
        "[[builders]]\nname = \"{name}\"\nworkers = {workers}\n\
         [[builders.steps]]\nname = \"work\"\ncommand = [\"sh\", \"-c\", \"sleep {sleep}\"]\n\n"
    )
}

/// A sha-like revision for build `i` of a test.
fn sha(tag: u32, i: usize) -> String {
    format!("{tag:08x}{i:032x}")
}

async fn force(c: &Cluster, m: usize, builder: &str, repo: &str, rev: &str) -> i64 {
    let body = serde_json::json!({"builder": builder, "revision": rev, "branch": "main", "repository": repo});
    let resp: Value = c
        .http
        .post(format!("{}/api/v1/force", c.api(m)))
        .json(&body)
        .send()
        .await
        .expect("force")
        .json()
        .await
        .expect("force answer");
    resp["buildrequest_ids"][0].as_i64().expect("a request id")
}

/// The build that completed request `id` (its last build).
async fn final_build(c: &Cluster, id: i64) -> Value {
    let builds = c.builds_of(0, id).await;
    builds
        .into_iter()
        .max_by_key(|b| b["id"].as_i64())
        .expect("a build")
}

/// The statuses posted for commit `rev`, in arrival order.
fn statuses_for(calls: &[Call], rev: &str) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.path.ends_with(&format!("/statuses/{rev}")))
        .cloned()
        .collect()
}

fn states(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| c.json()["state"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn deliveries(c: &Cluster, build: i64) -> Vec<Value> {
    match c
        .get(&format!("{}/api/v1/builds/{build}/deliveries", c.api(0)))
        .await
    {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statuses_reach_github_gitlab_and_a_signed_webhook_in_order() {
    let host = CodeHost::start().await;
    let mut spec = ClusterSpec::new(2, 2, "");
    let workers = spec.worker_list();
    // The GitLab token and the webhook key come from a directory of
    // secret files (as Kubernetes mounts them), the GitHub token from the
    // environment.
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("gl_token"), "gl-secret-token\n").unwrap();
    std::fs::write(secret_dir.path().join("hook_key"), "hook-key").unwrap();
    spec.master_env = vec![("GH_TOKEN".into(), "gh-secret-token".into())];
    spec.builders_toml = format!(
        "[[secrets.providers]]\nkind = \"files\"\npath = \"{}\"\n\n{}{}\
         [[reporters]]\nname = \"github\"\nkind = \"github\"\nbuilders = [\"unit\"]\n\
         token_env = \"GH_TOKEN\"\napi_url = \"{url}/api/v3\"\ncontext = \"ci/{{builder}}\"\n\
         dashboard_url = \"https://ci.example.org\"\n\n\
         [[reporters]]\nname = \"gitlab\"\nkind = \"gitlab\"\nbuilders = [\"lab\"]\n\
         token_secret = \"gl_token\"\napi_url = \"{url}/gl/api/v4\"\n\n\
         [[reporters]]\nname = \"chat\"\nkind = \"http\"\nbuilders = [\"unit\"]\n\
         events = [\"finished\"]\nurl = \"{url}/hook\"\nsigning_secret = \"hook_key\"\n\n",
        secret_dir.path().display(),
        builder("unit", &workers, "0.2"),
        builder("lab", &workers, "0.2"),
        url = host.url(),
    );
    let c = Cluster::start("reporters_order", spec).await;
    let mut requests = Vec::new();
    for i in 0..4 {
        let rev = sha(1, i);
        requests.push((force(&c, i % 2, "unit", GITHUB_REPO, &rev).await, rev));
    }
    let lab_rev = sha(2, 0);
    let lab = force(&c, 1, "lab", GITLAB_REPO, &lab_rev).await;
    let ids: Vec<i64> = requests.iter().map(|(id, _)| *id).chain([lab]).collect();
    c.wait_complete(0, &ids, Duration::from_secs(120)).await;

    // GitHub: pending then success for every commit, nothing else.
    for (id, rev) in &requests {
        let build = final_build(&c, *id).await;
        let calls = eventually(
            &format!("both statuses of {rev}"),
            Duration::from_secs(60),
            || {
                let got = statuses_for(&host.calls(), rev);
                async move { (got.len() >= 2).then_some(got) }
            },
        )
        .await;
        assert_eq!(states(&calls), ["pending", "success"], "{rev}");
        for call in &calls {
            assert_eq!(call.method, "POST");
            assert_eq!(
                call.path,
                format!("/api/v3/repos/acme/widget/statuses/{rev}")
            );
            assert_eq!(
                call.headers.get("authorization").map(String::as_str),
                Some("Bearer gh-secret-token")
            );
            let body = call.json();
            assert_eq!(body["context"], "ci/unit");
            assert_eq!(
                body["target_url"],
                format!("https://ci.example.org/#/builds/{}", build["id"])
            );
        }
        // The API shows the build's deliveries, all sent.
        let shown = eventually("deliveries shown sent", Duration::from_secs(30), || async {
            let d = deliveries(&c, build["id"].as_i64().unwrap()).await;
            (d.len() == 3 && d.iter().all(|x| x["state"] == "sent")).then_some(d)
        })
        .await;
        let mut kinds: Vec<(String, String)> = shown
            .iter()
            .map(|d| {
                (
                    d["reporter"].as_str().unwrap().to_owned(),
                    d["event"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                ("chat".to_owned(), "finished".to_owned()),
                ("github".to_owned(), "finished".to_owned()),
                ("github".to_owned(), "started".to_owned()),
            ]
        );
    }

    // GitLab: the encoded project path, running then success, its token header.
    let calls = eventually("gitlab statuses", Duration::from_secs(60), || {
        let got = statuses_for(&host.calls(), &lab_rev);
        async move { (got.len() >= 2).then_some(got) }
    })
    .await;
    assert_eq!(states(&calls), ["running", "success"]);
    for call in &calls {
        assert_eq!(
            call.path,
            format!("/gl/api/v4/projects/group%2Fsub%2Fproj/statuses/{lab_rev}")
        );
        assert_eq!(
            call.headers.get("private-token").map(String::as_str),
            Some("gl-secret-token")
        );
        assert_eq!(call.json()["name"], "lab");
        assert_eq!(call.json()["ref"], "main");
    }

    // The webhook: one signed document per finished build of "unit".
    let builds = requests.len();
    let hooks = eventually("webhook documents", Duration::from_secs(60), || {
        let got: Vec<Call> = host
            .calls()
            .into_iter()
            .filter(|c| c.path == "/hook")
            .collect();
        async move { (got.len() >= builds).then_some(got) }
    })
    .await;
    assert_eq!(hooks.len(), requests.len(), "one document per build");
    for call in &hooks {
        let sig = call
            .headers
            .get("x-flotilla-signature")
            .expect("signed")
            .strip_prefix("sha256=")
            .expect("sha256=")
            .to_owned();
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"hook-key").unwrap();
        mac.update(&call.body);
        mac.verify_slice(&hex::decode(sig).unwrap())
            .expect("the HMAC verifies");
        let doc = call.json();
        assert_eq!(doc["event"], "finished");
        assert_eq!(doc["build"]["builder"], "unit");
        assert_eq!(doc["build"]["results"], "success");
        assert_eq!(doc["sources"][0]["repository"], GITHUB_REPO);
    }
    // A tampered body does not verify.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"another-key").unwrap();
    mac.update(&hooks[0].body);
    assert!(
        mac.verify_slice(&hex::decode(&hooks[0].headers["x-flotilla-signature"][7..]).unwrap())
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_deliveries_are_retried_and_a_refusal_is_final() {
    let mut host = CodeHost::start().await;
    let mut spec = ClusterSpec::new(1, 1, "");
    let workers = spec.worker_list();
    spec.master_env = vec![("GH_TOKEN".into(), "t".into())];
    spec.builders_toml = format!(
        "{}[[reporters]]\nname = \"github\"\nkind = \"github\"\nevents = [\"finished\"]\n\
         token_env = \"GH_TOKEN\"\napi_url = \"{}\"\ntimeout = \"1s\"\n\n",
        builder("unit", &workers, "0"),
        host.url(),
    );
    let c = Cluster::start("reporters_retry", spec).await;

    // 500, then 429 with Retry-After, then GitHub's 403 of a spent rate
    // limit, then a hang (timed out): all retried.
    host.plan(&[
        Answer::Status(500),
        Answer::TooMany(1),
        Answer::RateLimited(1),
        Answer::Hang,
        Answer::Close,
    ]);
    let rev = sha(3, 0);
    let id = force(&c, 0, "unit", GITHUB_REPO, &rev).await;
    c.wait_complete(0, &[id], Duration::from_secs(60)).await;
    let build = final_build(&c, id).await["id"].as_i64().unwrap();
    let calls = eventually("the status accepted", Duration::from_secs(90), || {
        let got = statuses_for(&host.calls(), &rev);
        async move { got.iter().any(|c| c.answered == 201).then_some(got) }
    })
    .await;
    let answered: Vec<u16> = calls.iter().map(|c| c.answered).collect();
    assert_eq!(answered, [500, 429, 403, 0, 0, 201]);
    assert!(calls.iter().all(|c| c.body == calls[0].body));
    let d = eventually("recorded sent", Duration::from_secs(30), || async {
        deliveries(&c, build)
            .await
            .into_iter()
            .find(|d| d["state"] == "sent")
    })
    .await;
    assert_eq!(d["attempts"], 6);
    assert_eq!(d["http_status"], 201);

    // A 404 is final: tried once, marked failed, never again.
    host.plan(&[Answer::Status(404)]);
    let refused_rev = sha(3, 1);
    let refused = force(&c, 0, "unit", GITHUB_REPO, &refused_rev).await;
    c.wait_complete(0, &[refused], Duration::from_secs(60))
        .await;
    let refused_build = final_build(&c, refused).await["id"].as_i64().unwrap();
    let d = eventually("recorded failed", Duration::from_secs(60), || async {
        deliveries(&c, refused_build)
            .await
            .into_iter()
            .find(|d| d["state"] == "failed")
    })
    .await;
    assert_eq!(d["http_status"], 404);
    assert_eq!(d["attempts"], 1);

    // The host goes away: the next status waits, and arrives once it is back.
    host.stop();
    let late_rev = sha(3, 2);
    let late = force(&c, 0, "unit", GITHUB_REPO, &late_rev).await;
    c.wait_complete(0, &[late], Duration::from_secs(60)).await;
    let late_build = final_build(&c, late).await["id"].as_i64().unwrap();
    eventually(
        "a failed attempt recorded",
        Duration::from_secs(60),
        || async {
            deliveries(&c, late_build)
                .await
                .into_iter()
                .find(|d| d["state"] == "queued" && d["attempts"].as_i64() >= Some(1))
        },
    )
    .await;
    host.resume().await;
    eventually("the late status", Duration::from_secs(90), || {
        let got = statuses_for(&host.calls(), &late_rev);
        async move { got.iter().any(|c| c.answered == 201).then_some(()) }
    })
    .await;
    // Still one call for the refused status, after later ones were sent.
    assert_eq!(statuses_for(&host.calls(), &refused_rev).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_final_status_arrives_and_none_is_overwritten_while_masters_are_killed() {
    const BUILDS: usize = 100;
    let host = CodeHost::start().await;
    host.fail_percent(20);
    let mut spec = ClusterSpec::new(3, 4, "");
    let workers = spec.worker_list();
    spec.master_env = vec![("GH_TOKEN".into(), "t".into())];
    spec.builders_toml = format!(
        "{}[[reporters]]\nname = \"github\"\nkind = \"github\"\n\
         token_env = \"GH_TOKEN\"\napi_url = \"{}\"\ntimeout = \"1s\"\nretry_horizon = \"10m\"\n\n",
        builder("unit", &workers, "0.3"),
        host.url(),
    );
    let mut c = Cluster::start("reporters_chaos", spec).await;
    let apis: Vec<String> = (0..3).map(|i| c.api(i)).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let submitter = tokio::spawn(async move {
        let mut ids: Vec<(i64, String)> = Vec::new();
        let mut i = 0;
        while ids.len() < BUILDS {
            let api = &apis[rand::rng().random_range(0..apis.len())];
            let rev = sha(4, i);
            let body = serde_json::json!({"builder": "unit", "revision": rev, "branch": "main", "repository": GITHUB_REPO});
            let resp = http
                .post(format!("{api}/api/v1/force"))
                .json(&body)
                .send()
                .await;
            // A new revision for every attempt: a force whose answer was
            // lost with a killed master is a build of another commit.
            i += 1;
            if let Ok(r) = resp
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
            {
                ids.push((v["buildrequest_ids"][0].as_i64().unwrap(), rev));
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ids
    });
    let mut kills = 0;
    while !submitter.is_finished() {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(2000..4000))).await;
        let i = rand::rng().random_range(0..3);
        c.kill9_master(i);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..1500))).await;
        c.restart_master(i);
    }
    let requests = submitter.await.unwrap();
    let ids: Vec<i64> = requests.iter().map(|(id, _)| *id).collect();
    c.wait_complete(0, &ids, Duration::from_secs(240)).await;
    // A request forced twice (its answer lost with a killed master) is
    // reported under its own revision too; only the acknowledged ones are judged.
    let calls = eventually("every final status", Duration::from_secs(240), || {
        let calls = host.calls();
        let done = requests.iter().all(|(_, rev)| {
            statuses_for(&calls, rev)
                .iter()
                .any(|c| c.answered == 201 && c.json()["state"] == "success")
        });
        async move { done.then_some(calls) }
    })
    .await;
    let mut by_rev: HashMap<&str, Vec<String>> = HashMap::new();
    for (_, rev) in &requests {
        // What the code host holds is the last status it accepted.
        let accepted: Vec<Call> = statuses_for(&calls, rev)
            .into_iter()
            .filter(|c| c.answered == 201)
            .collect();
        let seq = states(&accepted);
        let first_success = seq.iter().position(|s| s == "success").unwrap();
        assert!(
            seq[first_success..].iter().all(|s| s == "success"),
            "{rev}: an older status overwrote success: {seq:?}"
        );
        by_rev.insert(rev, seq);
    }
    // Nothing given up, and nothing left to deliver once the older
    // deliveries of retried builds have been superseded or sent.
    let mut conn = c.connect_db().await;
    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM report_deliveries WHERE state = 3")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(failed, 0, "deliveries given up\n{}", c.dump());
    let open = eventually("no delivery left queued", Duration::from_secs(120), || {
        let url = c.db_url.clone();
        async move {
            let mut conn = <sqlx::MySqlConnection as sqlx::Connection>::connect(&url)
                .await
                .ok()?;
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM report_deliveries WHERE state IN (0, 1)")
                    .fetch_one(&mut conn)
                    .await
                    .ok()?;
            (n == 0).then_some(n)
        }
    })
    .await;
    let failed_attempts = calls.iter().filter(|c| c.answered == 500).count();
    eprintln!(
        "{kills} masters killed; {} calls, {failed_attempts} answered 500; e.g. {:?}",
        calls.len(),
        by_rev.values().next()
    );
    assert!(kills > 0);
    assert_eq!(open, 0);
}
