//! Secrets on a real cluster: steps refer to secrets from a directory of
//! files and from the master's environment; the values reach the commands,
//! every occurrence in the logs is masked (also one printed in two halves
//! with a pause between, so it reaches the master in two output messages),
//! and no trace of a value is left in any table of the database or in any
//! API answer. A secret that no provider has fails the build, naming it.

mod common;

use std::time::Duration;

use common::{Cluster, ClusterSpec};
use sqlx::{Column, Row};

/// In a file of the directory provider.
const FILE_SECRET: &str = "file-secret-Q8s7d6f5g4h3";
/// In the master's environment.
const ENV_SECRET: &str = "tok-7f3a9c2e5b1d8f6a4c0e";
const ENV_PREFIX: &str = "FLOTILLA_TEST_SECRET_";

fn cluster_toml(dir: &std::path::Path) -> String {
    format!(
        r#"
[[builders]]
name = "deploy"
workers = ["w1"]
env = {{ FROM_BUILDER = "${{secret:from_file}}" }}
  [[builders.steps]]
  name = "use"
  command = ["sh", "-c", "echo \"token=$DEPLOY_TOKEN\"; echo \"arg=$0\"; echo \"builder=$FROM_BUILDER\"; echo \"escaped=$LITERAL\"", "${{secret:from_file}}"]
  env = {{ DEPLOY_TOKEN = "${{secret:deploy_token}}", LITERAL = "$${{secret:deploy_token}}" }}
  [[builders.steps]]
  name = "split"
  command = ["sh", "-c", "printf 'half: %s' \"$(printf %s \"$DEPLOY_TOKEN\" | cut -c1-12)\"; sleep 1; printf '%s end\n' \"$(printf %s \"$DEPLOY_TOKEN\" | cut -c13-)\""]
  env = {{ DEPLOY_TOKEN = "${{secret:deploy_token}}" }}

[[builders]]
name = "missing"
workers = ["w1"]
  [[builders.steps]]
  name = "needs"
  command = ["sh", "-c", "echo \"never $T\""]
  env = {{ T = "${{secret:nowhere_to_be_found}}" }}

[[secrets.providers]]
kind = "files"
path = "{}"

[[secrets.providers]]
kind = "env"
prefix = "{ENV_PREFIX}"
"#,
        dir.display()
    )
}

/// Every value a test must never find, and the halves of the split one.
fn forbidden() -> Vec<&'static str> {
    vec![
        FILE_SECRET,
        ENV_SECRET,
        &ENV_SECRET[..12],
        &ENV_SECRET[12..],
    ]
}

fn assert_clean(what: &str, text: &str) {
    for v in forbidden() {
        assert!(!text.contains(v), "{what} holds {v:?}: {text}");
    }
}

/// Every table of the test database as text: each row's columns, and the
/// chunks of each log joined in order (a value could straddle two chunks).
async fn dump_database(cluster: &Cluster) -> String {
    let mut conn = cluster.connect_db().await;
    let tables: Vec<String> = sqlx::query_scalar("SHOW TABLES")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(tables.len() > 10, "{tables:?}");
    let mut out = String::new();
    for t in &tables {
        out.push_str(&format!("== {t}\n"));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM `{t}`")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for r in &rows {
            for (i, c) in r.columns().iter().enumerate() {
                let v = if let Ok(v) = r.try_get::<Option<String>, _>(i) {
                    v.unwrap_or_default()
                } else if let Ok(v) = r.try_get::<Option<Vec<u8>>, _>(i) {
                    String::from_utf8_lossy(&v.unwrap_or_default()).into_owned()
                } else if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                    v.map(|v| v.to_string()).unwrap_or_default()
                } else if let Ok(v) = r.try_get::<Option<chrono::NaiveDateTime>, _>(i) {
                    v.map(|v| v.to_string()).unwrap_or_default()
                } else {
                    format!("<{} undecoded>", c.name())
                };
                out.push_str(&v);
                out.push('|');
            }
            out.push('\n');
        }
    }
    sqlx::query("SET SESSION group_concat_max_len = 67108864")
        .execute(&mut conn)
        .await
        .unwrap();
    let logs: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT GROUP_CONCAT(content ORDER BY seq SEPARATOR '') FROM logchunks GROUP BY logid",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for l in logs {
        out.push_str(&String::from_utf8_lossy(&l));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_reach_commands_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("from_file"), format!("{FILE_SECRET}\n")).unwrap();
    let mut spec = ClusterSpec::new(1, 1, &cluster_toml(dir.path()));
    spec.master_env = vec![(format!("{ENV_PREFIX}deploy_token"), ENV_SECRET.to_owned())];
    let cluster = Cluster::start("secrets", spec).await;
    let api = cluster.api(0);

    let request = cluster.force(0, "deploy", "rev-secret").await;
    let done = cluster
        .wait_complete(0, &[request], Duration::from_secs(90))
        .await;
    assert_eq!(done[0]["results"], "success", "{done:?}");
    let build = cluster.builds_of(0, request).await[0]["id"]
        .as_i64()
        .unwrap();

    // The commands got the values (the logs show each masked where it was).
    let used = cluster.step_log(0, build, 0).await;
    assert!(used.contains("token=***\n"), "{used}");
    assert!(used.contains("arg=***\n"), "{used}");
    assert!(used.contains("builder=***\n"), "{used}");
    // The escaped form is text, not a reference.
    assert!(used.contains("escaped=${secret:deploy_token}\n"), "{used}");
    // The step as shown keeps its reference.
    assert!(used.contains("${secret:from_file}"), "{used}");
    assert_clean("the log of step 0", &used);
    // Printed in two halves a second apart: two output messages.
    let split = cluster.step_log(0, build, 1).await;
    assert!(split.contains("half: *** end\n"), "{split}");
    assert_clean("the log of step 1", &split);

    // A secret nobody has fails the build, naming the secret.
    let missing = cluster.force(0, "missing", "rev-missing").await;
    let done = cluster
        .wait_complete(0, &[missing], Duration::from_secs(90))
        .await;
    assert_eq!(done[0]["results"], "failure", "{done:?}");
    let failed = cluster.builds_of(0, missing).await[0].clone();
    let log = cluster.step_log(0, failed["id"].as_i64().unwrap(), 0).await;
    assert!(
        log.contains("secret \"nowhere_to_be_found\" is not set"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{ENV_PREFIX}nowhere_to_be_found")),
        "{log}"
    );
    assert!(!log.contains("\nnever "), "the command must not run: {log}");
    let steps = cluster
        .get(&format!("{api}/api/v1/builds/{}/steps", failed["id"]))
        .await
        .unwrap();
    assert_eq!(
        steps[0]["state_string"], "secret nowhere_to_be_found unavailable",
        "{steps}"
    );

    // No API answer holds a value.
    let buildset = done[0]["buildset_id"].as_i64().unwrap();
    let mut paths = vec![
        "/api/v1/builds".to_owned(),
        "/api/v1/buildrequests".to_owned(),
        "/api/v1/builders".to_owned(),
        "/api/v1/builders/deploy".to_owned(),
        "/api/v1/changes".to_owned(),
        "/api/v1/schedulers".to_owned(),
        "/api/v1/workers".to_owned(),
        "/api/v1/masters".to_owned(),
        format!("/api/v1/buildsets/{buildset}"),
        format!("/api/v1/buildrequests/{request}"),
        "/api/v1/openapi.json".to_owned(),
        "/metrics".to_owned(),
        "/".to_owned(),
    ];
    for b in [build, failed["id"].as_i64().unwrap()] {
        paths.push(format!("/api/v1/builds/{b}"));
        paths.push(format!("/api/v1/builds/{b}/steps"));
        for n in 0..2 {
            paths.push(format!("/api/v1/builds/{b}/steps/{n}/log"));
        }
    }
    for p in &paths {
        let resp = cluster.http.get(format!("{api}{p}")).send().await.unwrap();
        let text = resp.text().await.unwrap();
        assert_clean(p, &text);
    }

    // Nor does any table of the database, while the mask and the
    // reference are there (so the dump does read the logs and steps).
    let dump = dump_database(&cluster).await;
    assert!(dump.contains("token=***"), "the dump misses the logs");
    assert!(dump.contains("half: *** end"), "the dump misses the logs");
    assert_clean("the database", &dump);
    // Used values never reach the master's own log either.
    assert_clean("the master's output", &cluster.masters[0].proc.output());
}
