//! Unmodified `buildbot-worker` processes (PyPI, in the virtualenvs
//! `scripts/ensure-tools` makes under /opt/flotilla-buildbot-worker) attached
//! to a real cluster through the gateway's `buildbot_listen` port. Every
//! test runs against each installed version: the pinned one and, when PyPI
//! had a newer 4.x, that one too.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::ledger;
use common::relay::Relay;
use common::{Cluster, ClusterSpec, eventually, free_port};
use serde_json::{Value, json};

/// The version tests/buildbot.rs was written against (see scripts/ensure-tools).
const PINNED: &str = "4.3.0";
const VENVS: &str = "/opt/flotilla-buildbot-worker";
const WAIT: Duration = Duration::from_secs(60);

/// Every installed buildbot-worker: (version, executable); the pinned one first.
fn versions() -> Vec<(String, PathBuf)> {
    let pinned = Path::new(VENVS).join(PINNED).join("bin/buildbot-worker");
    assert!(
        pinned.exists(),
        "buildbot-worker {PINNED} is not installed at {}: run scripts/ensure-tools",
        pinned.display()
    );
    let mut out = vec![(PINNED.to_owned(), pinned)];
    for entry in std::fs::read_dir(VENVS).unwrap().flatten() {
        let v = entry.file_name().to_string_lossy().into_owned();
        let bin = entry.path().join("bin/buildbot-worker");
        if v != PINNED && bin.exists() {
            out.push((v, bin));
        }
    }
    out
}

/// A running `buildbot-worker` in its own process group.
struct BbWorker {
    child: Child,
    basedir: PathBuf,
}

impl BbWorker {
    fn start(bin: &Path, dir: &Path, name: &str, password: &str, master: &str) -> BbWorker {
        let basedir = dir.join(format!("bb-{name}-{}", password.len()));
        let status = Command::new(bin)
            .args(["create-worker", "--protocol=msgpack_experimental_v7"])
            .arg(&basedir)
            .args([master, name, password])
            .stdout(Stdio::null())
            .status()
            .expect("run buildbot-worker create-worker");
        assert!(status.success(), "create-worker failed");
        let log = std::fs::File::create(dir.join(format!("bb-{name}.out"))).unwrap();
        let child = Command::new(bin)
            .args(["start", "--nodaemon"])
            .arg(&basedir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start buildbot-worker");
        BbWorker { child, basedir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.basedir.join("twistd.log")).unwrap_or_default()
    }
}

impl Drop for BbWorker {
    fn drop(&mut self) {
        // The worker leaves its commands running when it exits: take its
        // whole group (the commands have groups of their own, found below).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        kill_under(&self.basedir);
    }
}

/// Live processes whose command line (arguments joined by spaces) is
/// exactly `cmdline`, or holds it when `cmdline` ends with `*`.
fn pids_with(cmdline: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .is_some_and(|s| s == "Z" || s == "X");
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let cmd = cmd.trim_end();
            !zombie
                && match cmdline.strip_suffix('*') {
                    Some(part) => cmd.contains(part),
                    None => cmd == cmdline,
                }
        })
        .collect()
}

/// Kills every process working under `dir` (what a worker left running).
fn kill_under(dir: &Path) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A cluster of `masters` masters, no flotilla worker, and one Buildbot
/// worker `bb` (reached through a relay) serving `builders`.
struct Setup {
    cluster: Cluster,
    relay: Relay,
    worker: Option<BbWorker>,
}

impl Setup {
    async fn start(prefix: &str, masters: usize, builders: &str, bin: &Path) -> Setup {
        let port = free_port();
        let spec = ClusterSpec {
            gateway_extra: format!("buildbot_listen = \"127.0.0.1:{port}\"\n"),
            builders_toml: format!(
                "[[workers]]\nname = \"bb\"\npassword = \"bb-secret\"\n\n{builders}"
            ),
            ..ClusterSpec::new(masters, 0, "")
        };
        let cluster = Cluster::start(prefix, spec).await;
        let relay = Relay::start("buildbot", format!("127.0.0.1:{port}").parse().unwrap());
        let worker = BbWorker::start(bin, cluster.dir.path(), "bb", "bb-secret", &relay.addr());
        let s = Setup {
            cluster,
            relay,
            worker: Some(worker),
        };
        s.wait_connected().await;
        s
    }

    async fn wait_connected(&self) {
        eventually("the Buildbot worker attached", WAIT, || async {
            (self.cluster.connected_workers().await >= 1).then_some(())
        })
        .await;
    }

    fn bb(&self) -> &BbWorker {
        self.worker.as_ref().unwrap()
    }

    /// The process logs, for a failing assertion.
    fn dump(&self) -> String {
        format!(
            "{}\n--- buildbot-worker ---\n{}",
            self.cluster.dump(),
            self.bb().log()
        )
    }

    async fn wait_complete(&self, ids: &[i64]) -> Vec<Value> {
        self.cluster.wait_complete(0, ids, WAIT).await
    }

    async fn only_build(&self, request: i64) -> Value {
        let builds = self.cluster.builds_of(0, request).await;
        assert_eq!(
            builds.len(),
            1,
            "request {request}: {builds:?}\n{}",
            self.dump()
        );
        builds[0].clone()
    }

    /// Waits until request `id` has a build running; returns its id.
    async fn running_build(&self, id: i64) -> i64 {
        eventually(&format!("request {id} running"), WAIT, || async {
            self.cluster
                .builds_of(0, id)
                .await
                .into_iter()
                .find(|b| b["complete_at"].is_null())
                .and_then(|b| b["id"].as_i64())
        })
        .await
    }
}

/// Whether the log has `text` as a whole line (the command line shown at
/// the top of a step's log holds the script's text too).
fn has_line(log: &str, text: &str) -> bool {
    log.lines().any(|l| l.trim_end() == text)
}

fn step(name: &str, script: &str, timeout: &str) -> String {
    let script = script.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "[[builders]]\nname = \"{name}\"\nworkers = [\"bb\"]\n  [[builders.steps]]\n  name = \"{name}\"\n  command = [\"sh\", \"-c\", \"{script}\"]\n  timeout = \"{timeout}\"\n\n"
    )
}

async fn post(cluster: &Cluster, path: &str) -> reqwest::StatusCode {
    cluster
        .http
        .post(format!("{}{path}", cluster.api(0)))
        .json(&json!({}))
        .send()
        .await
        .expect("POST")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn builds_run_once_with_live_logs_and_their_exit_codes() {
    for (version, bin) in versions() {
        eprintln!("buildbot-worker {version}");
        let dir = tempfile::tempdir().unwrap();
        let ledger_path = dir.path().join("ledger");
        let gate = dir.path().join("gate");
        let builders = format!(
            "{}{}{}",
            ledger::ledger_builder("ledger", "[\"bb\"]", &ledger_path, "0.3"),
            step("fails", "echo about to fail; echo oops >&2; exit 3", "30s"),
            step(
                "live",
                &format!(
                    "echo first line; while [ ! -e {} ]; do sleep 0.1; done; echo second line",
                    gate.display()
                ),
                "60s"
            ),
        );
        let s = Setup::start("bbonce", 2, &builders, &bin).await;

        // The API and the dashboard's data say what the worker is (once it
        // registered again with the facts of its first `get_worker_info`).
        let url = format!("{}/api/v1/workers", s.cluster.api(0));
        eventually("the worker's kind and version listed", WAIT, || async {
            let workers = s.cluster.get(&url).await?;
            let bb = workers
                .as_array()?
                .iter()
                .find(|w| w["name"] == "bb")?
                .clone();
            (bb["kind"] == "buildbot" && bb["version"].as_str() == Some(version.as_str()))
                .then_some(())
        })
        .await;

        // A second process under the same name with a wrong password is
        // refused before the upgrade, logged, and changes nothing.
        let impostor = BbWorker::start(
            &bin,
            s.cluster.dir.path(),
            "bb",
            "not-the-secret",
            &s.relay.addr(),
        );
        eventually("the refusal logged", WAIT, || async {
            let logs = s.cluster.dump();
            (logs.contains("Buildbot worker refused before the upgrade")
                && logs.contains("wrong password"))
            .then_some(())
        })
        .await;

        // Output reaches the step log while the command still runs.
        let live = s.cluster.force(0, "live", "r-live").await;
        let build = s.running_build(live).await;
        eventually("the first line in the live log", WAIT, || async {
            has_line(&s.cluster.step_log(0, build, 0).await, "first line").then_some(())
        })
        .await;
        assert!(!has_line(
            &s.cluster.step_log(0, build, 0).await,
            "second line"
        ));
        std::fs::write(&gate, "").unwrap();

        // Exactly once, through both masters.
        let mut ids = Vec::new();
        for i in 0..6 {
            ids.push(s.cluster.force(i % 2, "ledger", &format!("r{i}")).await);
        }
        let failing = s.cluster.force(1, "fails", "r-fail").await;
        let rows = s.wait_complete(&ids).await;
        for (row, id) in rows.iter().zip(&ids) {
            assert_eq!(
                row["results"],
                "success",
                "request {id}: {row}\n{}",
                s.dump()
            );
            s.only_build(*id).await;
        }
        let executions = ledger::read(&ledger_path);
        assert_eq!(executions.len(), ids.len(), "{executions:?}");
        assert!(
            ledger::check(&executions).is_empty(),
            "{:?}",
            ledger::check(&executions)
        );

        // A failing command fails its build, with its exit code and output.
        let row = &s.wait_complete(&[failing]).await[0];
        assert_eq!(row["results"], "failure", "{row}");
        let b = s.only_build(failing).await;
        let log = s.cluster.step_log(0, b["id"].as_i64().unwrap(), 0).await;
        assert!(
            has_line(&log, "about to fail") && has_line(&log, "oops"),
            "{log}"
        );
        assert!(log.contains("exit code 3"), "{log}");
        let row = &s.wait_complete(&[live]).await[0];
        assert_eq!(row["results"], "success", "{row}");
        let log = s.cluster.step_log(0, build, 0).await;
        assert!(has_line(&log, "second line"), "{log}");
        // The worker's environment never reaches a log (logEnviron is off).
        assert!(!log.contains("environment:"), "{log}");
        drop(impostor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_build_and_a_step_timeout_kill_the_command() {
    for (version, bin) in versions() {
        eprintln!("buildbot-worker {version}");
        let builders = format!(
            "{}{}",
            step("stoppable", "echo started; sleep 301", "120s"),
            step("slow", "echo started; sleep 302", "2s"),
        );
        let s = Setup::start("bbstop", 1, &builders, &bin).await;
        let basedir = s.bb().basedir.display().to_string();
        let sleeping = |n: &'static str| {
            let basedir = basedir.clone();
            move || {
                pids_with(&format!("sleep {n}")).into_iter().any(|p| {
                    std::fs::read_link(format!("/proc/{p}/cwd"))
                        .is_ok_and(|cwd| cwd.display().to_string().starts_with(&basedir))
                })
            }
        };

        let id = s.cluster.force(0, "stoppable", "r1").await;
        let build = s.running_build(id).await;
        let alive = sleeping("301");
        eventually("the command running", WAIT, || async {
            alive().then_some(())
        })
        .await;
        assert!(
            post(&s.cluster, &format!("/api/v1/builds/{build}/stop"))
                .await
                .is_success()
        );
        let row = &s.wait_complete(&[id]).await[0];
        assert_ne!(row["results"], "success", "{row}");
        eventually("the stopped command gone", WAIT, || async {
            (!alive()).then_some(())
        })
        .await;

        let id = s.cluster.force(0, "slow", "r2").await;
        let row = &s.wait_complete(&[id]).await[0];
        assert_eq!(row["results"], "failure", "{row}");
        let b = s.only_build(id).await;
        let log = s.cluster.step_log(0, b["id"].as_i64().unwrap(), 0).await;
        assert!(log.contains("timed out"), "{log}\n{}", s.dump());
        let alive = sleeping("302");
        eventually("the timed-out command gone", WAIT, || async {
            (!alive()).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_s_build_reruns_elsewhere_without_overlap_on_one_connection() {
    for (version, bin) in versions() {
        eprintln!("buildbot-worker {version}");
        let dir = tempfile::tempdir().unwrap();
        let ledger_path = dir.path().join("ledger");
        let builders = ledger::ledger_builder("ledger", "[\"bb\"]", &ledger_path, "4");
        let mut s = Setup::start("bbkill", 2, &builders, &bin).await;
        let connections = s.relay.accepted();
        let id = s.cluster.force(0, "ledger", "r1").await;
        let build = s.running_build(id).await;
        eventually("the step started", WAIT, || async {
            (!ledger::read(&ledger_path).is_empty()).then_some(())
        })
        .await;
        let b = s.cluster.builds_of(0, id).await;
        let master = b
            .iter()
            .find(|x| x["id"].as_i64() == Some(build))
            .and_then(|x| x["master"].as_str())
            .map(str::to_owned)
            .expect("the build's master");
        let i = s.cluster.master_index(&master);
        s.cluster.kill9_master(i);
        let other = 1 - i;
        let row = eventually("the request complete", WAIT * 2, || async {
            s.cluster
                .get(&format!(
                    "{}/api/v1/buildrequests/{id}",
                    s.cluster.api(other)
                ))
                .await
                .filter(|r| r["complete"] == Value::Bool(true))
        })
        .await;
        assert_eq!(row["results"], "success", "{row}\n{}", s.dump());
        let executions = ledger::read(&ledger_path);
        assert!(executions.len() >= 2, "{executions:?}");
        assert!(
            ledger::check(&executions).is_empty(),
            "{:?}\n{}",
            ledger::check(&executions),
            s.dump()
        );
        assert_eq!(
            s.relay.accepted(),
            connections,
            "the worker connected again\n{}",
            s.dump()
        );
        s.worker.take();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_link_leaves_no_orphan_after_the_worker_reconnects() {
    for (version, bin) in versions() {
        eprintln!("buildbot-worker {version}");
        let dir = tempfile::tempdir().unwrap();
        let ledger_path = dir.path().join("ledger");
        let builders = ledger::ledger_builder("ledger", "[\"bb\"]", &ledger_path, "303");
        let s = Setup::start("bbcut", 1, &builders, &bin).await;
        let id = s.cluster.force(0, "ledger", "r1").await;
        s.running_build(id).await;
        eventually("the step started", WAIT, || async {
            (!ledger::read(&ledger_path).is_empty()).then_some(())
        })
        .await;
        let connections = s.relay.accepted();
        // Both sides see the link die; the worker's command keeps running.
        s.relay.reset();
        eventually("the worker reconnected", WAIT, || async {
            (s.relay.accepted() > connections).then_some(())
        })
        .await;
        // The first run is killed (its trap writes the ledger), and a second
        // run starts only after that.
        let executions = eventually("the re-run started", WAIT, || async {
            let e = ledger::read(&ledger_path);
            (e.len() >= 2).then_some(e)
        })
        .await;
        assert!(executions[0].killed, "{executions:?}\n{}", s.dump());
        assert!(
            ledger::check(&executions)
                .iter()
                .all(|p| p.contains("never ended")),
            "{:?}",
            ledger::check(&executions)
        );
        // Exactly one `sleep 303` runs: the re-run's.
        eventually("one copy running", WAIT, || async {
            (pids_with("sleep 303").len() == 1).then_some(())
        })
        .await;
        let _ = post(&s.cluster, &format!("/api/v1/buildrequests/{id}/cancel")).await;
    }
}
