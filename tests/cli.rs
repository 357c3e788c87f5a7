//! The `flotilla` command line: exit codes, error messages, the database
//! commands, client commands against a running master, and the quickstart.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{Cluster, ClusterSpec, TestDb, flotilla_bin, free_port};

fn flotilla(args: &[&str]) -> Output {
    Command::new(flotilla_bin())
        .args(args)
        .output()
        .expect("run flotilla")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_describes_every_command() {
    let o = flotilla(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "quickstart",
        "db",
        "master",
        "gateway",
        "worker",
        "sendchange",
        "force",
        "try",
        "status",
        "drain",
        "undrain",
        "janitor",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}");
    }
    assert_eq!(flotilla(&["frobnicate"]).status.code(), Some(2));
}

#[tokio::test]
async fn db_upgrade_is_idempotent_and_status_reports() {
    let db = TestDb::create("cli_db").await;
    let o = flotilla(&["db", "status", "--database-url", &db.url]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "fresh database is not current: {}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("flotilla db upgrade"));
    assert!(
        flotilla(&["db", "upgrade", "--database-url", &db.url])
            .status
            .success()
    );
    let again = flotilla(&["db", "upgrade", "--database-url", &db.url]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"));
    let o = flotilla(&["db", "status", "--database-url", &db.url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[tokio::test]
async fn a_master_refuses_a_schema_that_is_not_current() {
    let db = TestDb::create("cli_refuse").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
    let port = free_port().to_string();
    let o = flotilla(&[
        "master",
        "--config",
        config.to_str().unwrap(),
        "--http",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("flotilla db upgrade"), "{}", stderr(&o));
}

#[test]
fn bad_configuration_names_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"sqlite://x.sqlite\"\n\n[cluster]\nheartbeat = \"5s\"\n",
    )
    .unwrap();
    let o = flotilla(&["db", "status", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    let e = stderr(&o);
    assert!(
        e.contains("heartbeat") && e.contains("line 5") && e.contains("cluster.toml"),
        "{e}"
    );
}

#[test]
fn unreachable_or_unknown_databases_give_one_clear_line() {
    let o = flotilla(&[
        "db",
        "status",
        "--database-url",
        "mysql://root@127.0.0.1:1/nothing",
    ]);
    assert_eq!(o.status.code(), Some(69), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
    let o = flotilla(&["db", "status", "--database-url", "oracle://db/x"]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let o = flotilla(&[
        "db",
        "status",
        "--database-url",
        "mysql://nobody:wrong@127.0.0.1:3306/test",
    ]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("ccess denied"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim().lines().count(), 1, "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_commands_against_a_running_master() {
    let builders = r#"
[[builders]]
name = "echo"
workers = ["w1"]
  [[builders.steps]]
  name = "print"
  command = ["sh", "-c", "echo built $FLOTILLA_REVISION with $FLOTILLA_PROP_FLAVOUR"]

[[builders]]
name = "broken"
workers = ["w1"]
  [[builders.steps]]
  name = "explode"
  command = ["sh", "-c", "echo the failing line; exit 1"]
"#;
    let cluster = Cluster::start("cli", ClusterSpec::new(1, 1, builders)).await;
    let api = cluster.api(0);
    let run = |args: &[&str]| {
        let mut full = vec!["--api", api.as_str()];
        full.extend_from_slice(args);
        flotilla(&full)
    };
    let o = run(&[
        "force",
        "echo",
        "--revision",
        "abc",
        "--property",
        "flavour=mint",
        "--wait",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("success"), "{}", stderr(&o));

    let o = run(&["force", "echo", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints JSON only");
    assert_eq!(v.as_object().unwrap().len(), 2);
    assert!(v["buildset_id"].is_i64() && v["buildrequest_ids"][0].is_i64());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("{\"buildset_id\": "), "{text}");

    let o = run(&["force", "no-such-builder"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no-such-builder"), "{}", stderr(&o));

    let o = run(&["force", "broken", "--wait"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("the failing line"),
        "failing step's log tail: {}",
        stderr(&o)
    );

    let o = run(&["status", "builders", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().iter().any(|b| b["name"] == "echo"));
    let o = run(&["status", "masters"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("m1"));

    let o = run(&[
        "sendchange",
        "--repository",
        "r",
        "--branch",
        "main",
        "--revision",
        "x1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["status", "changes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("main") && l.contains("x1")),
        "{table}"
    );
    let o = run(&["status", "schedulers", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.is_array(), "{v}");
    let o = run(&["status", "schedulers"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("MASTER_NAME"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    let o = run(&["drain", "m1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["undrain", "m1"]);
    assert!(o.status.success());
    assert_eq!(run(&["drain", "no-such-master"]).status.code(), Some(1));

    let o = flotilla(&[
        "--api",
        &format!("http://127.0.0.1:{}", free_port()),
        "status",
    ]);
    assert_eq!(o.status.code(), Some(69));
}

#[test]
fn quickstart_runs_its_sample_build_to_success() {
    let dir = tempfile::tempdir().unwrap();
    let qs = dir.path().join("qs");
    let http = format!("127.0.0.1:{}", free_port());
    let gateway = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(flotilla_bin())
        .args([
            "quickstart",
            "--once",
            "--dir",
            qs.to_str().unwrap(),
            "--http",
            &http,
            "--gateway",
            &gateway,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("quickstart did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(status.success(), "{text}");
    assert!(text.contains("sample build succeeded"), "{text}");
    assert!(qs.join("cluster.toml").exists());
    assert!(qs.join("state.sqlite").exists());
}
