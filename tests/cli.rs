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
    let o = flotilla(&[
        "master",
        "--config",
        config.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
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
fn unreachable_or_unknown_databases_say_what_and_where() {
    use std::io::BufRead;
    // Unreachable: said at once with the host and port, not after a silent wait.
    let started = std::time::Instant::now();
    let mut child = Command::new(flotilla_bin())
        .args([
            "db",
            "status",
            "--database-url",
            "mysql://root@127.0.0.1:1/nothing",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a line on stderr").unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "first word after {:?}: {first}",
        started.elapsed()
    );
    assert!(first.contains("127.0.0.1:1"), "{first}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(69), "{first} {rest:?}");
    let last = rest.last().expect("a final line");
    assert!(
        last.contains("unreachable") && last.contains("127.0.0.1:1"),
        "{last}"
    );
    assert!(!last.contains("pool timed out"), "{last}");

    // A database the server does not have is not an access problem.
    let o = flotilla(&[
        "db",
        "upgrade",
        "--database-url",
        "mysql://root@127.0.0.1:3306/flotilla_no_such_database",
    ]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("`flotilla_no_such_database` does not exist") && e.contains("CREATE DATABASE"),
        "{e}"
    );
    assert!(!e.to_lowercase().contains("denied"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

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

[[schedulers]]
name = "by-hand"
kind = "force"
builders = ["echo", "broken"]

[[schedulers]]
name = "on-main"
kind = "single-branch"
branch = "main"
builders = ["echo"]
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
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("=== step 1/1: explode ===") && out.contains("the failing line"),
        "the failing step's output, streamed: {out}"
    );
    assert!(out.contains("explode: failure ==="), "{out}");

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
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(table.contains("MASTER_NAME"), "{table}");
    assert_aligned(&table);
    // A force scheduler has no owner to be active or not.
    let by_hand: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("by-hand"))
        .expect("by-hand listed")
        .split_whitespace()
        .collect();
    assert_eq!(by_hand.last(), Some(&"-"), "{table}");

    // Finished requests are listed too, with their result.
    let o = run(&["status", "requests"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_aligned(&table);
    assert!(
        table
            .lines()
            .any(|l| l.contains("echo") && l.contains("true") && l.contains("success")),
        "{table}"
    );
    let o = run(&["status", "builds"]);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains("STATE_STRING") && table.contains("failure in explode"),
        "{table}"
    );

    // An unknown builder is a 404 for try as for force.
    for (path, body) in [
        ("force", serde_json::json!({"builder": "nope"})),
        (
            "try",
            serde_json::json!({"builders": ["nope"], "diff": "--- a/x\n+++ b/x\n"}),
        ),
    ] {
        let resp = cluster
            .http
            .post(format!("{api}/api/v1/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{path}");
    }

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
    // --once stops the dashboard too: no link to a page that is gone.
    assert!(!text.contains("; see http"), "{text}");
    let written = std::fs::read_to_string(qs.join("cluster.toml")).unwrap();
    assert!(written.contains("docs/configuration.md"), "{written}");
    assert!(!written.contains("CONTRACT"), "{written}");
    assert!(qs.join("state.sqlite").exists());
}

#[test]
fn check_validates_a_cluster_file_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    // Nothing listens on port 1: check must not need the database.
    std::fs::write(
        &good,
        r#"
[database]
url = "mysql://ci:secret@127.0.0.1:1/ci"

[[workers]]
name = "w1"
password = "pw"

[[builders]]
name = "unit"
workers = ["w1"]
  [[builders.steps]]
  name = "test"
  command = ["make", "test"]

[[schedulers]]
name = "nightly"
kind = "nightly"
cron = "0 3 * * *"
timezone = "Europe/Paris"
builders = ["unit"]

[[change_sources]]
name = "poll"
kind = "git"
repository = "https://example.invalid/repo.git"
"#,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let o = flotilla(&["check", "--config", good.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));

    // A reference to a builder no [[builders]] defines: key named, exit 78.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace(r#"builders = ["unit"]"#, r#"builders = ["unti"]"#);
    std::fs::write(&bad, text).unwrap();
    let o = flotilla(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    assert!(
        stderr(&o).contains("schedulers[0].builders") && stderr(&o).contains("unti"),
        "{}",
        stderr(&o)
    );

    // A bad cron expression is found too.
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("0 3 * * *", "0 25 * * *");
    std::fs::write(&bad, text).unwrap();
    let o = flotilla(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(stderr(&o).contains("cron"), "{}", stderr(&o));

    // A TOML error keeps its line breaks: the caret stands under the key.
    let text = std::fs::read_to_string(&good)
        .unwrap()
        .replace("[[workers]]", "[[workers]]\nnmae = \"x\"");
    std::fs::write(&bad, text).unwrap();
    let o = flotilla(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(78));
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("nmae") && e.contains("line 6"),
        "{e}"
    );
    assert!(e.lines().count() >= 3, "{e}");
    assert!(e.lines().any(|l| l.contains("^")), "{e}");
}

/// `--long` options listed in a `--help` page, with whether a description follows.
fn options_of(help: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = help.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        if !(t.starts_with("--") || (t.starts_with('-') && t.get(2..4) == Some(", "))) {
            continue;
        }
        let Some(long) = t.split_whitespace().find(|w| w.starts_with("--")) else {
            continue;
        };
        let long = long.trim_end_matches(',').to_owned();
        // clap writes the description after two spaces, or on the next lines when long.
        let spec_end = t.find("  ").unwrap_or(t.len());
        let inline = !t[spec_end..].trim().is_empty();
        let below = lines
            .get(i + 1)
            .is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
        out.push((long, inline || below));
    }
    out
}

#[test]
fn every_option_is_described_and_api_is_offered_where_it_works() {
    let commands: &[&[&str]] = &[
        &[],
        &["quickstart"],
        &["db", "upgrade"],
        &["db", "status"],
        &["master"],
        &["gateway"],
        &["worker"],
        &["sendchange"],
        &["force"],
        &["try"],
        &["status"],
        &["drain"],
        &["undrain"],
        &["janitor"],
        &["check"],
        &["health"],
        &["logs"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = flotilla(&args);
        assert!(o.status.success(), "{cmd:?}");
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        for (option, described) in options_of(&help) {
            assert!(described, "{cmd:?} {option} has no help text:\n{help}");
        }
        let offers_api = help.contains("--api");
        let talks_to_api = matches!(
            cmd.first().copied(),
            Some(
                "sendchange" | "force" | "try" | "status" | "drain" | "undrain" | "health" | "logs"
            )
        ) || cmd.is_empty();
        assert_eq!(offers_api, talks_to_api, "{cmd:?} and --api:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_follow_streams_step_output_as_it_is_written() {
    let builders = r#"
[[builders]]
name = "ticker"
workers = ["w1"]
  [[builders.steps]]
  name = "tick"
  command = ["sh", "-c", "echo tick-1; sleep 3; echo tick-2"]
  [[builders.steps]]
  name = "fail"
  command = ["sh", "-c", "echo about to fail; exit 2"]
"#;
    let cluster = Cluster::start("cli_logs", ClusterSpec::new(1, 1, builders)).await;
    let api = cluster.api(0);
    let request = cluster.force(0, "ticker", "t1").await;
    let build = common::eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, request).await.into_iter().next()
    })
    .await;
    let id = build["id"].to_string();
    let mut child = Command::new(flotilla_bin())
        .args(["logs", &id, "--follow", "--api", &api])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (std::time::Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines = reader.join().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let at = |needle: &str| {
        lines
            .iter()
            .find(|(_, l)| l == needle)
            .map(|(t, _)| *t)
            .unwrap_or_else(|| panic!("{needle} not in {text:#?}"))
    };
    // tick-1 is printed while the step still runs, well before tick-2.
    let t0 = lines[0].0;
    let timed: Vec<String> = lines
        .iter()
        .map(|(t, l)| format!("{:>6} ms {l}", t.duration_since(t0).as_millis()))
        .collect();
    assert!(
        at("tick-2").duration_since(at("tick-1")) > Duration::from_millis(1500),
        "{timed:#?}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let order = [
        "=== step 1/2: tick ===",
        "tick-1",
        "tick-2",
        "=== step 1/2: tick: success ===",
        "=== step 2/2: fail ===",
        "about to fail",
        "=== step 2/2: fail: failure ===",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|n| text.iter().position(|l| l == n).unwrap_or(usize::MAX))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text:#?}");
    assert_eq!(text.iter().filter(|l| **l == "tick-1").count(), 1);
    // It exits with the build's result.
    assert_eq!(
        status.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Without --follow, a finished build's logs are printed once.
    let o = flotilla(&["logs", &id, "--api", &api]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("tick-2") && out.contains("about to fail"),
        "{out}"
    );
    assert_eq!(
        flotilla(&["logs", "999999", "--api", &api]).status.code(),
        Some(1)
    );
}

/// Every column of a `status` table starts at the same place on every line.
fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header");
    let starts: Vec<usize> = header
        .char_indices()
        .filter(|&(i, c)| c != ' ' && (i == 0 || header[..i].ends_with("  ")))
        .map(|(i, _)| i)
        .collect();
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        for &s in &starts[1..] {
            if s >= chars.len() {
                continue;
            }
            assert!(
                chars[s] != ' ' && chars[s - 1] == ' ' && chars[s - 2] == ' ',
                "column at {s} misaligned in {line:?}:\n{table}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_follow_ends_when_the_build_is_cut_short() {
    let builders = r#"
[[builders]]
name = "long"
workers = ["w1"]
  [[builders.steps]]
  name = "wait"
  command = ["sh", "-c", "echo waiting; sleep 60"]
"#;
    let spec = ClusterSpec::new(2, 1, builders);
    let mut cluster = Cluster::start("cli_logs_cut", spec).await;
    let request = cluster.force(0, "long", "cut").await;
    let build = common::eventually("the build started", Duration::from_secs(30), || async {
        cluster.builds_of(0, request).await.into_iter().next()
    })
    .await;
    let runner = cluster
        .masters
        .iter()
        .position(|m| build["master"] == m.name.as_str())
        .expect("the master running it");
    // Follow through the other master: any master answers the same.
    let other = cluster.api(1 - runner);
    let child = Command::new(flotilla_bin())
        .args([
            "logs",
            &build["id"].to_string(),
            "--follow",
            "--api",
            &other,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Killed outright: its step never records an end; the build is ended
    // (retry) by the master that reaps it after master_timeout.
    cluster.kill9_master(runner);
    let started = std::time::Instant::now();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("waiting"), "{text}");
    assert!(
        text.contains("=== step 1/1: wait: interrupted ==="),
        "{text}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retry"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its state does not claim a step still runs.
    let b = cluster
        .get(&format!("{other}/api/v1/builds/{}", build["id"]))
        .await
        .unwrap();
    assert_eq!(b["state_string"], "retry (interrupted)", "{b}");
}
