//! No client can displace, impersonate or stall another: a misbehaving
//! worker (`common::bad_worker`) against a real cluster (gateway, master,
//! real workers, MariaDB). For each misbehaviour, the live workers' builds
//! are untouched, the ledger shows every request ran exactly once, and the
//! recovery time is printed.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::bad_worker::{self, BadWorker};
use common::ledger;
use common::{Cluster, ClusterSpec, eventually};
use serde_json::Value;

const BUILDER: &str = "ledger";
/// The gateway's documented liveness deadline (docs/worker-protocol.md).
const LIVENESS_DEADLINE: Duration = Duration::from_secs(15);

struct Setup {
    cluster: Cluster,
    ledger: PathBuf,
}

/// One master, workers w1 and w2 (both serve the ledger builder, unless
/// `builder_workers` says otherwise), each step sleeping `sleep` seconds.
async fn setup(prefix: &str, sleep: &str, builder_workers: Option<&str>, timeout: &str) -> Setup {
    let ledger = tempfile::tempdir().unwrap().keep().join("ledger.txt");
    let mut spec = ClusterSpec::new(1, 2, "");
    let workers = builder_workers
        .map(str::to_owned)
        .unwrap_or_else(|| spec.worker_list());
    spec.builders_toml = ledger::ledger_builder(BUILDER, &workers, &ledger, sleep)
        .replace("timeout = \"60s\"", &format!("timeout = \"{timeout}\""));
    let cluster = Cluster::start(prefix, spec).await;
    Setup { cluster, ledger }
}

impl Setup {
    /// Kills real worker `i` (its name becomes free for a bad worker).
    async fn kill_worker(&mut self, i: usize) {
        self.kill_workers(i..i + 1).await;
    }

    /// Kills real workers `range` at once and waits until they are shown gone.
    async fn kill_workers(&mut self, range: std::ops::Range<usize>) {
        let mut names = Vec::new();
        for i in range {
            if let Some(mut p) = self.cluster.workers[i].take() {
                p.kill9();
                self.cluster.retired.push(p);
            }
            names.push(self.cluster.spec.workers[i].0.clone());
        }
        let url = format!("{}/api/v1/workers", self.cluster.api(0));
        eventually(
            &format!("{names:?} shown disconnected"),
            Duration::from_secs(30),
            || async {
                let ws = self.cluster.get(&url).await?;
                let gone = ws.as_array()?.iter().all(|w| {
                    !names.iter().any(|n| w["name"].as_str() == Some(n.as_str()))
                        || w["connected"] != Value::Bool(true)
                });
                gone.then_some(())
            },
        )
        .await;
    }

    async fn bad(&self, name: &str, password: &str) -> BadWorker {
        bad_worker::connect(self.cluster.gateway_port, name, password)
            .await
            .expect("open a session")
    }

    async fn force(&self, n: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(self.cluster.force(0, BUILDER, &format!("rev{i}")).await);
        }
        ids
    }

    /// Every request succeeded with `builds_each` build rows, the last a
    /// success on a real worker; the ledger shows one execution per
    /// request, ended, never overlapping. Returns the builds.
    async fn exactly_once(&self, ids: &[i64], builds_each: usize) -> Vec<Vec<Value>> {
        self.exactly_once_with(ids, |_| builds_each).await
    }

    /// As `exactly_once`, with `builds_of(id)` build rows for request `id`.
    async fn exactly_once_with(
        &self,
        ids: &[i64],
        builds_of: impl Fn(i64) -> usize,
    ) -> Vec<Vec<Value>> {
        let rows = self
            .cluster
            .wait_complete(0, ids, Duration::from_secs(90))
            .await;
        let mut all = Vec::new();
        for (row, id) in rows.iter().zip(ids) {
            assert_eq!(row["results"], "success", "request {id}: {row}");
            let builds = self.cluster.builds_of(0, *id).await;
            assert_eq!(builds.len(), builds_of(*id), "request {id}: {builds:?}");
            all.push(builds);
        }
        let executions = ledger::read(&self.ledger);
        let problems = ledger::check(&executions);
        assert!(problems.is_empty(), "{problems:?}");
        for id in ids {
            let runs: Vec<_> = executions.iter().filter(|e| e.request == *id).collect();
            assert_eq!(runs.len(), 1, "request {id} ran {} times", runs.len());
            assert!(!runs[0].killed, "request {id}: its only run was killed");
        }
        all
    }
}

/// Wrong passwords under a live worker's name, hammered, and a duplicate
/// with the right password: the live workers keep every build; the
/// newcomers are refused and slowed down.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn impostors_under_live_names_change_nothing() {
    let s = setup("adm_impostor", "2", None, "60s").await;
    let ids = s.force(6).await;
    let port = s.cluster.gateway_port;
    let hammer = tokio::spawn(async move {
        let started = Instant::now();
        let mut attempts = 0u32;
        while started.elapsed() < Duration::from_secs(8) {
            let mut b = bad_worker::connect(port, "w1", "not-the-password")
                .await
                .expect("session");
            let answer = b.registration().await;
            assert_eq!(answer, Err("wrong password".to_owned()));
            attempts += 1;
        }
        attempts
    });
    let mut twins = 0;
    for _ in 0..3 {
        let mut twin = s.bad("w2", "w2-secret").await;
        assert_eq!(twin.registration().await, Err("worker name in use".into()));
        twins += 1;
    }
    let attempts = hammer.await.unwrap();
    let builds = s.exactly_once(&ids, 1).await;
    for b in builds.iter().flatten() {
        assert_eq!(b["results"], "success", "{b}");
    }
    assert!(
        attempts < 20,
        "{attempts} wrong-password attempts served in 8 s: not slowed down"
    );
    println!(
        "impostors: {attempts} wrong-password attempts in 8 s and {twins} duplicate-name attempts refused; \
         0 of {} builds disturbed; recovery time 0 s (the live workers never left)",
        ids.len()
    );
}

/// A worker forging output and exits for every command id a master may
/// have handed out, then sending a 20 MB message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_outputs_and_exits_finish_no_build() {
    let mut s = setup("adm_forge", "1", Some("[\"w1\"]"), "60s").await;
    s.kill_worker(1).await;
    let mut forger = s.bad("w2", "w2-secret").await;
    assert!(forger.registration().await.is_ok());
    let ids = s.force(5).await;
    let ledger = s.ledger.clone();
    let forging = tokio::spawn(async move {
        let mut sent = 0u64;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until
            && ledger::read(&ledger)
                .iter()
                .filter(|e| e.end_ns.is_some())
                .count()
                < 5
        {
            for id in 1..=100 {
                forger.forge_output(id, b"FORGED OUTPUT\n").await;
                forger.forge_exit(id, if id % 2 == 0 { 0 } else { 1 }).await;
                sent += 2;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (forger, sent)
    });
    let builds = s.exactly_once(&ids, 1).await;
    let (forger, sent) = forging.await.unwrap();
    for b in builds.iter().flatten() {
        assert_eq!(b["worker"], "w1", "{b}");
        let log = s.cluster.step_log(0, b["id"].as_i64().unwrap(), 0).await;
        assert!(
            !log.contains("FORGED"),
            "forged output in build {}: {log}",
            b["id"]
        );
    }
    println!(
        "forger: {sent} forged messages; 0 of {} builds affected",
        ids.len()
    );

    // An oversize message ends the forger's stream, saying why.
    let mut forger = forger;
    forger.oversize(20 * 1024 * 1024).await;
    let end = forger.ended(Duration::from_secs(20)).await;
    match end {
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("limit"), "{status:?}");
            println!(
                "oversize: stream ended with {:?}: {}",
                status.code(),
                status.message()
            );
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    // The honest worker is still there and still builds.
    let more = s.force(1).await;
    s.cluster
        .wait_complete(0, &more, Duration::from_secs(30))
        .await;
}

/// (worker, results) of each build, sorted by worker name.
fn runs_by_worker(builds: &[Value]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = builds
        .iter()
        .map(|b| {
            (
                b["worker"].as_str().unwrap_or("?"),
                b["results"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    v.sort();
    v
}

/// Waits until the ledger shows the request started; returns when.
async fn ledger_start(ledger: &std::path::Path, request: i64) -> Instant {
    eventually(
        "the request to run on a live worker",
        Duration::from_secs(90),
        || async {
            ledger::read(ledger)
                .iter()
                .any(|e| e.request == request && e.start_ns != 0)
                .then(Instant::now)
        },
    )
    .await
}

/// A worker that takes a build, then falls silent with its socket open:
/// the build runs on a live worker within the liveness deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_workers_build_runs_elsewhere_within_the_deadline() {
    let mut s = setup("adm_silent", "1", None, "60s").await;
    s.kill_worker(0).await;
    s.kill_worker(1).await;
    let mut silent = s.bad("w1", "w1-secret").await;
    assert!(silent.registration().await.is_ok());
    let ids = s.force(1).await;
    let run = silent
        .wait_run(Duration::from_secs(30))
        .await
        .expect("the build's command reaches the only worker");
    silent.go_silent();
    let since = Instant::now();
    s.cluster.workers[1] = Some(s.cluster.spawn_worker(1));
    let started = ledger_start(&s.ledger, ids[0]).await;
    let recovery = started.duration_since(since);
    let builds = s.exactly_once(&ids, 2).await;
    assert_eq!(
        runs_by_worker(&builds[0]),
        [("w1", "retry"), ("w2", "success")]
    );
    println!(
        "silent worker (command {}): its build ran on a live worker {recovery:?} after it fell silent (deadline {LIVENESS_DEADLINE:?})",
        run.command_id
    );
    assert!(
        recovery < LIVENESS_DEADLINE + Duration::from_secs(8),
        "{recovery:?}"
    );
    drop(silent);
}

/// A worker that keeps heartbeating but never ends its command: the master
/// enforces the step's timeout itself, interrupts, then gives the worker up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_past_its_timeout_is_taken_back_by_the_master() {
    let mut s = setup("adm_timeout", "1", None, "3s").await;
    s.kill_worker(0).await;
    s.kill_worker(1).await;
    let mut wedged = s.bad("w1", "w1-secret").await;
    assert!(wedged.registration().await.is_ok());
    let ids = s.force(1).await;
    let run = wedged
        .wait_run(Duration::from_secs(30))
        .await
        .expect("the build's command reaches the only worker");
    assert_eq!(run.timeout_ms, 3000);
    let since = Instant::now();
    s.cluster.workers[1] = Some(s.cluster.spawn_worker(1));
    // It answers pings (so the gateway keeps it) and ignores the interrupt.
    let started = ledger_start(&s.ledger, ids[0]).await;
    let recovery = started.duration_since(since);
    let builds = s.exactly_once(&ids, 2).await;
    assert_eq!(
        runs_by_worker(&builds[0]),
        [("w1", "retry"), ("w2", "success")]
    );
    // The master told the gateway to drop it.
    assert!(wedged.ended(Duration::from_secs(10)).await.is_some());
    println!(
        "wedged command (timeout 3 s): the build ran on another worker {recovery:?} after it started"
    );
    assert!(
        recovery < Duration::from_secs(3 + 5 + 10 + 8),
        "{recovery:?}"
    );
}

/// Many workers drop at once while builds run on them: their builds go back
/// to the queue and run on the workers still connected; no build row is
/// made for a worker that is already gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mass_drop_sends_retries_only_to_connected_workers() {
    const DROPPED: usize = 30;
    let ledger = tempfile::tempdir().unwrap().keep().join("ledger.txt");
    let mut spec = ClusterSpec::new(1, 2 + DROPPED, "");
    spec.builders_toml = ledger::ledger_builder(BUILDER, &spec.worker_list(), &ledger, "1");
    let cluster = Cluster::start("adm_massdrop", spec).await;
    let mut s = Setup { cluster, ledger };
    // w1 and w2 stay real; w3.. become hand-driven workers that take commands.
    s.kill_workers(2..2 + DROPPED).await;
    // Keep the real workers busy first, so the requests go to the others.
    let mut ids = s.force(2).await;
    eventually("the real workers busy", Duration::from_secs(30), || async {
        (ledger::read(&s.ledger).len() >= 2).then_some(())
    })
    .await;
    let mut bad: Vec<BadWorker> = Vec::new();
    for i in 2..2 + DROPPED {
        let name = s.cluster.spec.workers[i].0.clone();
        let mut b = s.bad(&name, &format!("{name}-secret")).await;
        assert!(b.registration().await.is_ok());
        bad.push(b);
    }
    // Up to half of them get a command; the rest are idle when they drop.
    // (A real worker done with its first build may take some requests
    // meanwhile: which requests a hand-driven worker was sent is read from
    // the commands themselves.)
    const BUSY: usize = DROPPED / 2;
    ids.extend(s.force(BUSY).await);
    let mut received: BTreeSet<i64> = BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(30);
    while received.len() < BUSY && Instant::now() < until {
        for b in &mut bad {
            if let Some(run) = b.wait_run(Duration::from_millis(20)).await {
                let request = run.env.get("FLOTILLA_BUILDREQUEST_ID");
                let request = request.and_then(|r| r.parse::<i64>().ok());
                received.insert(request.expect("a build's command names its request"));
            }
        }
        let taken = ledger::read(&s.ledger).len().saturating_sub(2);
        if received.len() + taken >= BUSY {
            break;
        }
    }
    assert!(
        !received.is_empty(),
        "no hand-driven worker was sent a command"
    );
    let since = Instant::now();
    drop(bad); // every hand-driven worker's connection closes at once
    // A request sent to a dropped worker has its retry row, then the build
    // that succeeded; any other ran once.
    s.exactly_once_with(&ids[2..], |id| 1 + usize::from(received.contains(&id)))
        .await;
    let recovery = since.elapsed();
    // Every build row on a dropped worker is one it was actually sent.
    let mut on_dropped = BTreeSet::new();
    for id in &ids {
        for b in s.cluster.builds_of(0, *id).await {
            let worker = b["worker"].as_str().unwrap_or("");
            if worker != "w1" && worker != "w2" {
                assert!(
                    on_dropped.insert(*id),
                    "two rows for request {id} on dropped workers"
                );
                assert_eq!(b["results"], "retry", "{b}");
            }
        }
    }
    assert_eq!(on_dropped, received, "build rows for workers already gone");
    println!(
        "mass drop of {DROPPED} workers ({} busy): {} retry rows (one per command they held), \
         all {BUSY} requests done on the remaining workers {recovery:?} after the drop",
        received.len(),
        on_dropped.len()
    );
}

/// A log of several megabytes (many chunks, several streamed batches) reads
/// back whole and from an offset, byte for byte, with its length announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_log_streams_whole_and_from_an_offset() {
    let builder = "[[builders]]\nname = \"spew\"\nworkers = [\"w1\"]\n  [[builders.steps]]\n  \
                   name = \"numbers\"\n  command = [\"seq\", \"1\", \"400000\"]\n";
    let cluster = Cluster::start("adm_biglog", ClusterSpec::new(1, 1, builder)).await;
    let id = cluster.force(0, "spew", "r").await;
    cluster
        .wait_complete(0, &[id], Duration::from_secs(60))
        .await;
    let build = cluster.builds_of(0, id).await[0]["id"].as_i64().unwrap();
    let url = format!("{}/api/v1/builds/{build}/steps/0/log", cluster.api(0));
    let resp = cluster.http.get(&url).send().await.unwrap();
    let len: usize = resp.headers()["x-log-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let whole = resp.bytes().await.unwrap();
    assert_eq!(whole.len(), len);
    let text = String::from_utf8_lossy(&whole);
    let numbers: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(numbers.len(), 400_000);
    assert!(numbers.iter().enumerate().all(|(i, n)| *n == i as u64 + 1));
    let offset = len / 2 + 7;
    let tail = cluster
        .http
        .get(format!("{url}?offset={offset}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&tail[..], &whole[offset..]);
    let past = cluster
        .http
        .get(format!("{url}?offset={}", len + 10))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(past.is_empty());
}

/// A real worker process frozen (SIGSTOP) while its step runs: the gateway
/// drops it by the clock and the build runs on a live worker. The frozen
/// worker's step itself cannot be stopped by anyone (its processes are not
/// frozen) — it ends on its own; the retry must not overlap it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_workers_build_runs_elsewhere_within_the_deadline() {
    let mut s = setup("adm_frozen", "1", None, "60s").await;
    s.kill_worker(1).await;
    let ids = s.force(1).await;
    eventually(
        "the build running on w1",
        Duration::from_secs(30),
        || async { (!ledger::read(&s.ledger).is_empty()).then_some(()) },
    )
    .await;
    s.cluster.workers[0]
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGSTOP);
    let since = Instant::now();
    s.cluster.workers[1] = Some(s.cluster.spawn_worker(1));
    let rerun = eventually(
        "the build to run again",
        Duration::from_secs(90),
        || async { (ledger::read(&s.ledger).len() >= 2).then(Instant::now) },
    )
    .await;
    let recovery = rerun.duration_since(since);
    let rows = s
        .cluster
        .wait_complete(0, &ids, Duration::from_secs(60))
        .await;
    assert_eq!(rows[0]["results"], "success");
    let builds = s.cluster.builds_of(0, ids[0]).await;
    assert_eq!(
        runs_by_worker(&builds),
        [("w1", "retry"), ("w2", "success")]
    );
    let problems = ledger::check(&ledger::read(&s.ledger));
    assert!(problems.is_empty(), "{problems:?}");
    s.cluster.workers[0]
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGCONT);
    println!(
        "frozen worker: its build ran on a live worker {recovery:?} after the freeze (deadline {LIVENESS_DEADLINE:?})"
    );
    assert!(
        recovery < LIVENESS_DEADLINE + Duration::from_secs(8),
        "{recovery:?}"
    );
}
