//! flotilla on a three-node Galera cluster (loopback), each master or store
//! on its own node, where row locks hold on one node only and conflicting
//! writes from two nodes are settled at commit by certification.
//!
//! - Store level: requests of one buildset completed at the same moment on
//!   three nodes (on Galera every transaction runs statement by statement:
//!   see `is_galera` in the store), and limited claims made at
//!   the same moment on three nodes. Decided by reading sibling requests (the
//!   code before the written counts), both go wrong here: a buildset stays
//!   open with all its requests complete, two nodes each see room under
//!   `max_concurrent_builds`.
//! - The claim race: six stores, two per node, pick, claim and complete one
//!   builder's requests until none is left: each completed exactly once.
//! - Process level: three masters, each on its own node, build upstream
//!   buildsets of three requests whose completions land on different nodes,
//!   a dependent scheduler waiting on them, and a limited builder, while one
//!   master is killed with SIGKILL and started again, or one database node
//!   is stopped for 20 s and started again. Verdicts: every request
//!   complete with exactly one successful build, no two executions of one
//!   request overlapping (ledger), every buildset complete and every
//!   dependent fired, the limited builder never running two builds at once.
//!   The written counts are printed, not judged, here: after these faults
//!   `builders.claimed_requests` has been seen to end above zero (open).
//!
//! The tests run one at a time: each starts three database servers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::Proc;
use common::galera::Galera;
use common::{eventually, flotilla_bin, ledger};
use flotilla_master::db::claims::testing::claim_requests;
use flotilla_master::db::{BuilderId, MasterId, NewBuildset, Results, Store};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A connection to node `i` whose reads wait until the node has applied
/// every write set the cluster committed before them (`wsrep_sync_wait`),
/// for verdicts.
async fn synced_conn(g: &Galera, i: usize, db: &str) -> sqlx::MySqlConnection {
    let mut c = sqlx::MySqlConnection::connect(&g.url(i, db))
        .await
        .expect("connect to a Galera node");
    c.execute("SET SESSION wsrep_sync_wait = 1")
        .await
        .expect("wsrep_sync_wait");
    c
}

async fn scalar(c: &mut sqlx::MySqlConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Store `i` of three, on node `i`.
async fn node_stores(g: &Galera, db: &str, stepwise: bool) -> Vec<(Store, MasterId)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let s = Store::connect_with(&g.url(i, db), 4).await.unwrap();
        let s = if stepwise { s.stepwise() } else { s };
        let me = s
            .register_master(&format!(
                "node{}-{}",
                i + 1,
                if stepwise { "s" } else { "t" }
            ))
            .await
            .unwrap()
            .id;
        out.push((s, me));
    }
    out
}

/// Claims `id` for `me` through `s`, waiting until the request has
/// replicated to that node.
async fn claim_when_there(s: &Store, me: MasterId, id: i64) {
    let start = Instant::now();
    loop {
        if claim_requests(s, me, &[id]).await.unwrap() == vec![id] {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "request {id} never claimable on its node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_and_limited_claims_on_three_nodes() {
    let _serial = SERIAL.lock().await;
    let g = Galera::start().await;
    let db = g.create_database("galera_store").await;
    let setup = Store::connect(&g.url(0, &db)).await.unwrap();
    setup.upgrade().await.unwrap();
    let names: Vec<String> = ["a", "b", "c", "limited"].map(String::from).to_vec();
    let ids = setup.ensure_builders(&names).await.unwrap();
    let worker = setup
        .ensure_worker("w", &serde_json::json!({}))
        .await
        .unwrap();
    let outcomes = [Results::Success, Results::Warnings, Results::Skipped];

    // Buildsets of three requests, each request completed on its own node
    // at the same moment: one-trip scripts, then statement by statement.
    const ROUNDS: usize = 30;
    let mut buildsets = Vec::new();
    for stepwise in [false, true] {
        let stores = node_stores(&g, &db, stepwise).await;
        for round in 0..ROUNDS {
            let (bs, reqs) = setup
                .add_buildset(&NewBuildset {
                    reason: format!("round {round}"),
                    builders: vec![(ids["a"], 0), (ids["b"], 0), (ids["c"], 0)],
                    ..Default::default()
                })
                .await
                .unwrap();
            buildsets.push(bs);
            let barrier = Arc::new(tokio::sync::Barrier::new(3));
            let mut tasks = Vec::new();
            for (i, (s, me)) in stores.iter().enumerate() {
                let (s, me, id) = (s.clone(), *me, reqs[i]);
                let builder = [ids["a"], ids["b"], ids["c"]][i];
                let barrier = barrier.clone();
                let outcome = outcomes[i];
                tasks.push(tokio::spawn(async move {
                    claim_when_there(&s, me, id).await;
                    let build = if (round + i) % 2 == 1 {
                        Some(
                            s.start_build(me, id, builder, worker)
                                .await
                                .unwrap()
                                .unwrap(),
                        )
                    } else {
                        None
                    };
                    barrier.wait().await;
                    match build {
                        Some(b) => s.finish_build(me, b.id, id, outcome, true).await.unwrap(),
                        None => s.complete_requests(me, &[id], outcome).await.unwrap() == vec![id],
                    }
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                if !t.await.unwrap() {
                    let mut c = synced_conn(&g, 0, &db).await;
                    let st: Vec<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                        "SELECT id, CAST(complete AS SIGNED), CAST(results AS SIGNED), claimed_by_masterid \
                         FROM buildrequests WHERE buildsetid = ?",
                    )
                    .bind(bs)
                    .fetch_all(&mut c)
                    .await
                    .unwrap();
                    let b: (i64, i64, i64) = sqlx::query_as(
                        "SELECT CAST(complete AS SIGNED), CAST(open_requests AS SIGNED), CAST(worst_rank AS SIGNED) FROM buildsets WHERE id = ?",
                    )
                    .bind(bs)
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                    let mut stats = String::new();
                    for n in 0..3 {
                        for v in [
                            "wsrep_local_bf_aborts",
                            "wsrep_local_cert_failures",
                            "wsrep_local_replays",
                        ] {
                            stats.push_str(&format!(
                                "node{} {v}={:?} ",
                                n + 1,
                                g.status(n, v).await
                            ));
                        }
                    }
                    panic!(
                        "completion {i} of round {round} (stepwise {stepwise}, build {}) not accepted: \
                         requests {st:?}, buildset {b:?}; {stats}",
                        (round + i) % 2 == 1
                    );
                }
            }
        }
        for (s, _) in &stores {
            s.close().await;
        }
    }
    let mut c = synced_conn(&g, 0, &db).await;
    let list = buildsets
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let bad: Vec<(i64, Option<i64>, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, CAST(results AS SIGNED), CAST(complete AS SIGNED), CAST(open_requests AS SIGNED), \
         CAST(worst_rank AS SIGNED) FROM buildsets WHERE id IN ({list}) \
         AND (complete = 0 OR results <> {} OR open_requests <> 0)",
        Results::Warnings.as_i64()
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    if !bad.is_empty() {
        let mut detail = String::new();
        for (bs, results, complete, open, worst) in &bad {
            let round = buildsets.iter().position(|b| b == bs).unwrap_or(usize::MAX);
            let reqs: Vec<(i64, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT id, CAST(complete AS SIGNED), CAST(results AS SIGNED), claimed_by_masterid \
                 FROM buildrequests WHERE buildsetid = ?",
            )
            .bind(bs)
            .fetch_all(&mut c)
            .await
            .unwrap();
            detail.push_str(&format!(
                "buildset {bs} (round {round} of {ROUNDS} per mode): complete {complete}, \
                 results {results:?}, open {open}, worst rank {worst}; requests {reqs:?}\n"
            ));
        }
        panic!(
            "every buildset completes, with the worst results by rank and its count at zero, \
             although its requests completed on three nodes at once:\n{detail}"
        );
    }

    // Limited claims at the same moment on three nodes: never more claimed,
    // unfinished requests than the limit.
    const MAX: u32 = 1;
    const LIMITED: usize = 24;
    let (_, limited) = setup
        .add_buildset(&NewBuildset {
            reason: "limited".into(),
            builders: vec![(ids["limited"], 0); LIMITED],
            ..Default::default()
        })
        .await
        .unwrap();
    let stores = node_stores(&g, &db, false).await;
    let mut completed = 0;
    let mut peak = 0;
    let started = Instant::now();
    while completed < LIMITED {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "limited requests not all built: {completed} of {LIMITED}"
        );
        let barrier = Arc::new(tokio::sync::Barrier::new(3));
        let mut tasks = Vec::new();
        for (s, me) in &stores {
            let (s, me, barrier, b) = (s.clone(), *me, barrier.clone(), ids["limited"]);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let won = s
                    .claim_within_limit(me, BuilderId(b), 2, MAX)
                    .await
                    .unwrap()
                    .request_ids();
                (s, me, won)
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await.unwrap());
        }
        let claimed: usize = held.iter().map(|(_, _, w)| w.len()).sum();
        let in_db = scalar(
            &mut c,
            &format!(
                "SELECT COUNT(*) FROM buildrequests WHERE builderid = {} \
                 AND complete = 0 AND claimed_by_masterid IS NOT NULL",
                ids["limited"]
            ),
        )
        .await;
        peak = peak.max(claimed).max(in_db as usize);
        assert!(
            claimed <= MAX as usize && in_db <= i64::from(MAX),
            "the limit of {MAX} was exceeded: {claimed} claimed in one round, {in_db} in the database"
        );
        for (s, me, won) in held {
            completed += s
                .complete_requests(me, &won, Results::Success)
                .await
                .unwrap()
                .len();
        }
    }
    assert_eq!(peak, MAX as usize);
    let done = scalar(
        &mut c,
        &format!(
            "SELECT COUNT(*) FROM buildrequests WHERE id IN ({}) AND complete = 1",
            limited
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(done, LIMITED as i64);
    let counts = scalar(
        &mut c,
        "SELECT CAST(COALESCE(SUM(ABS(claimed_requests)), 0) AS SIGNED) FROM builders",
    )
    .await;
    assert_eq!(counts, 0, "claimed counts back at zero");
}

/// Retries a store call while it fails transiently (a certification
/// conflict that outlasted the store's own retries); counts those.
macro_rules! retrying {
    ($errors:expr, $call:expr) => {
        loop {
            match $call.await {
                Ok(v) => break v,
                Err(e) if e.is_transient() => {
                    $errors += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("store error: {e}"),
            }
        }
    };
}

/// The claim race on three nodes: two stores per node pick, claim and
/// complete batches of one builder's requests (buildsets of three, so their
/// completions land on different nodes) until none is left. Each request is
/// completed exactly once, every buildset completes, the counts end at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claim_race_on_three_nodes() {
    const BUILDSETS: usize = 200;
    let _serial = SERIAL.lock().await;
    let g = Galera::start().await;
    let db = g.create_database("galera_race").await;
    let setup = Store::connect(&g.url(0, &db)).await.unwrap();
    setup.upgrade().await.unwrap();
    let race = setup.ensure_builders(&["race".to_owned()]).await.unwrap()["race"];
    let mut all = Vec::new();
    for n in 0..BUILDSETS {
        let (_, ids) = setup
            .add_buildset(&NewBuildset {
                reason: format!("race {n}"),
                builders: vec![(race, 0); 3],
                ..Default::default()
            })
            .await
            .unwrap();
        all.extend(ids);
    }
    // Every node has every request before the race starts.
    let mut c = synced_conn(&g, 2, &db).await;
    assert_eq!(
        scalar(
            &mut c,
            "SELECT COUNT(*) FROM buildrequests WHERE complete = 0"
        )
        .await,
        all.len() as i64
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..6 {
        let node = k % 3;
        let url = g.url(node, &db);
        tasks.push(tokio::spawn(async move {
            let s = Store::connect_with(&url, 2).await.unwrap();
            let me = s.register_master(&format!("racer{k}")).await.unwrap().id;
            let (mut done, mut errors, mut idle) = (Vec::new(), 0usize, 0);
            loop {
                let won = retrying!(
                    errors,
                    s.pick_and_claim_per_builder(me, &[(BuilderId(race), 4)])
                )
                .request_ids();
                if won.is_empty() {
                    idle += 1;
                    let left = retrying!(
                        errors,
                        s.list_requests(&flotilla_master::db::RequestFilter {
                            complete: Some(false),
                            limit: 1,
                            ..Default::default()
                        })
                    );
                    if left.is_empty() && idle > 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                let ids = won;
                let completed = retrying!(errors, s.complete_requests(me, &ids, Results::Success));
                assert_eq!(
                    completed.len(),
                    ids.len(),
                    "racer{k}: a claim won was not ours to complete"
                );
                done.extend(completed);
            }
            s.close().await;
            (done, errors)
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut errors = 0;
    for t in tasks {
        let (done, e) = t.await.unwrap();
        errors += e;
        for id in done {
            assert!(seen.insert(id), "request {id} completed twice");
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(
        seen,
        all.iter().copied().collect(),
        "every request completed once"
    );
    let mut c = synced_conn(&g, 1, &db).await;
    assert_eq!(
        scalar(&mut c, "SELECT COUNT(*) FROM buildsets WHERE complete = 0").await,
        0,
        "every buildset complete"
    );
    assert_eq!(
        scalar(
            &mut c,
            "SELECT CAST((SELECT COALESCE(SUM(ABS(claimed_requests)), 0) FROM builders) + \
             (SELECT COALESCE(SUM(ABS(open_requests)), 0) FROM buildsets) AS SIGNED)"
        )
        .await,
        0,
        "the written counts are back at zero"
    );
    let mut cert = String::new();
    for n in 0..3 {
        cert.push_str(&format!(
            " node{}: {:?}",
            n + 1,
            g.status(n, "wsrep_local_cert_failures").await
        ));
    }
    println!(
        "6 stores on 3 nodes completed {} requests in {elapsed:.2?} ({:.0}/s); \
         {errors} transient errors past the store's retries; certification failures{cert}",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64()
    );
}

/// Three masters, each on its own Galera node, with one gateway and workers.
struct Fleet {
    dir: tempfile::TempDir,
    /// One cluster file per master (they differ only in the database URL).
    configs: Vec<PathBuf>,
    gateway: Option<Proc>,
    masters: Vec<(Proc, u16)>,
    workers: Vec<Proc>,
    retired: Vec<Proc>,
    boots: usize,
    http: reqwest::Client,
}

impl Fleet {
    async fn start(g: &Galera, db: &str, builders_toml: &str, workers: usize) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        // The gateway binds a port of its own choosing: the files are
        // written with port 0 for it, then again with its port for the masters.
        let folder = dir.path().to_owned();
        let write_configs = |gateway_port: u16| {
            let mut configs = Vec::new();
            for i in 0..3 {
                let mut toml = format!(
                    "[database]\nurl = \"{}\"\n\n[cluster]\nheartbeat_interval = \"500ms\"\n\
                     master_timeout = \"4s\"\nclaim_renew_interval = \"2s\"\nclaim_lease = \"60s\"\n\
                     shutdown_grace = \"20s\"\npoll_interval = \"200ms\"\n\n\
                     [gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\n\n",
                    g.url(i, db)
                );
                for w in 1..=workers {
                    toml.push_str(&format!(
                        "[[workers]]\nname = \"w{w}\"\npassword = \"w{w}-secret\"\n\n"
                    ));
                }
                toml.push_str(builders_toml);
                let path = folder.join(format!("cluster-node{}.toml", i + 1));
                std::fs::write(&path, toml).unwrap();
                configs.push(path);
            }
            configs
        };
        let configs = write_configs(0);
        let status = std::process::Command::new(flotilla_bin())
            .args(["db", "upgrade", "--config"])
            .arg(&configs[0])
            .status()
            .unwrap();
        assert!(status.success(), "db upgrade on Galera failed");
        let mut f = Fleet {
            dir,
            configs,
            gateway: None,
            masters: Vec::new(),
            workers: Vec::new(),
            retired: Vec::new(),
            boots: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let args = vec![
            "gateway".to_owned(),
            "--config".to_owned(),
            f.configs[0].display().to_string(),
        ];
        let (gateway, bound) = Proc::listening("gateway", &args, &[], f.dir.path());
        f.gateway = Some(gateway);
        let gateway_port = bound.get("grpc").unwrap().port();
        write_configs(gateway_port);
        for i in 0..3 {
            let m = f.spawn_master(i, 0);
            f.masters.push(m);
        }
        for i in 0..3 {
            f.wait_linked(i).await;
        }
        for w in 1..=workers {
            let args = vec![
                "worker".to_owned(),
                "--gateway".to_owned(),
                format!("http://127.0.0.1:{gateway_port}"),
                "--name".to_owned(),
                format!("w{w}"),
                "--password-env".to_owned(),
                "WORKER_PASSWORD".to_owned(),
                "--basedir".to_owned(),
                f.dir
                    .path()
                    .join(format!("basedir-w{w}"))
                    .display()
                    .to_string(),
            ];
            let env = vec![("WORKER_PASSWORD".to_owned(), format!("w{w}-secret"))];
            f.workers.push(Proc::spawn(
                &format!("worker-w{w}"),
                &args,
                &env,
                f.dir.path(),
            ));
        }
        eventually("workers attached", Duration::from_secs(60), || async {
            let v = f.get(&format!("{}/api/v1/workers", f.api(0))).await?;
            let n = v
                .as_array()?
                .iter()
                .filter(|w| w["connected"] == Value::Bool(true))
                .count();
            (n >= workers).then_some(())
        })
        .await;
        f
    }

    /// Master `i` with its API on `http` (0: a port of its own choosing);
    /// returns the process and its API's port.
    fn spawn_master(&mut self, i: usize, http: u16) -> (Proc, u16) {
        self.boots += 1;
        let args = vec![
            "master".to_owned(),
            "--config".to_owned(),
            self.configs[i].display().to_string(),
            "--name".to_owned(),
            format!("m{}", i + 1),
            "--http".to_owned(),
            format!("127.0.0.1:{http}"),
        ];
        let (p, bound) = Proc::listening(
            &format!("master-m{}-boot{}", i + 1, self.boots),
            &args,
            &[],
            self.dir.path(),
        );
        (p, bound.get("http").unwrap().port())
    }

    fn api(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.masters[i].1)
    }

    async fn get(&self, url: &str) -> Option<Value> {
        let r = self.http.get(url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    async fn wait_linked(&self, i: usize) {
        let url = format!("{}/readyz", self.api(i));
        eventually(
            &format!("master m{} linked", i + 1),
            Duration::from_secs(120),
            || async {
                self.get(&url)
                    .await
                    .filter(|v| v["gateway_links"].as_u64() >= Some(1))
                    .map(|_| ())
            },
        )
        .await;
    }

    fn kill9(&mut self, i: usize) {
        self.masters[i].0.kill9();
    }

    fn restart(&mut self, i: usize) {
        let port = self.masters[i].1;
        let (p, _) = self.spawn_master(i, port);
        let old = std::mem::replace(&mut self.masters[i].0, p);
        self.retired.push(old);
    }

    /// Stops master `i` with SIGTERM, checks that it drained and exited 0,
    /// and starts it again under its name on the same port.
    async fn restart_gracefully(&mut self, i: usize) {
        eprintln!("rolling restart: SIGTERM master m{}", i + 1);
        self.masters[i].0.signal(nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while self.masters[i].0.running() {
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "master m{} did not exit within 40 s of SIGTERM\n{}",
                i + 1,
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let code = self.masters[i].0.wait_exit(Duration::from_secs(1));
        assert_eq!(code, Some(0), "master m{} exits 0 after SIGTERM", i + 1);
        assert!(
            self.masters[i].0.output().contains("master stopped"),
            "master m{} says it stopped:\n{}",
            i + 1,
            self.masters[i].0.tail(30)
        );
        self.restart(i);
        self.wait_linked(i).await;
    }

    /// POSTs `body` to `path` on the first master (from `first`) that takes it.
    async fn post(&self, first: usize, path: &str, body: &Value) -> Value {
        let start = Instant::now();
        let mut i = first;
        loop {
            let url = format!("{}{path}", self.api(i % 3));
            if let Ok(r) = self.http.post(&url).json(body).send().await
                && r.status().is_success()
                && let Ok(v) = r.json::<Value>().await
            {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no master took POST {path}"
            );
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many lines of every process's output, retired ones included,
    /// contain `needle`.
    fn count_in_logs(&self, needle: &str) -> usize {
        self.gateway
            .iter()
            .chain(self.masters.iter().map(|(p, _)| p))
            .chain(self.retired.iter())
            .map(|p| p.output().lines().filter(|l| l.contains(needle)).count())
            .sum()
    }

    fn dump(&self) -> String {
        let procs = self
            .gateway
            .iter()
            .chain(self.masters.iter().map(|(p, _)| p))
            .chain(self.workers.iter())
            .chain(self.retired.iter());
        common::proc::dump(procs, 40)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// The ledger builder `name` with `max_concurrent_builds = max`.
fn limited_builder(name: &str, workers: &str, ledger_path: &Path, max: u32) -> String {
    ledger::ledger_builder(name, workers, ledger_path, "0.3").replacen(
        &format!("workers = {workers}\n"),
        &format!("workers = {workers}\nmax_concurrent_builds = {max}\n"),
        1,
    )
}

/// What goes wrong while the fleet builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Master m2 is killed with SIGKILL and started again.
    KillMaster,
    /// Node 3 (master m3's) is stopped for 20 s and started again; it
    /// rejoins by incremental state transfer.
    StopNode,
    /// Each master in turn is stopped gracefully (SIGTERM: it drains its
    /// builds and gives back its claims, written on its own node) and
    /// started again under its name, while the load goes on.
    RollingRestart,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_masters_on_three_nodes_with_a_master_killed() {
    fleet_case(Fault::KillMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_masters_on_three_nodes_with_a_node_stopped_for_20s() {
    fleet_case(Fault::StopNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_masters_on_three_nodes_restarted_one_by_one() {
    fleet_case(Fault::RollingRestart).await;
}

async fn fleet_case(fault: Fault) {
    const CHANGES: usize = 24;
    const LIMITED: usize = 10;
    const NODE_DOWN: Duration = Duration::from_secs(20);
    let _serial = SERIAL.lock().await;
    let mut g = Galera::start().await;
    let db = g.create_database("galera_fleet").await;
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger_path = ledger_dir.path().join("ledger.txt");
    let limited_ledger = ledger_dir.path().join("limited.txt");
    // Enough workers that rendezvous routing gives more than one master
    // some (all nine on one master: 3 / 3^9).
    let workers = 9;
    let worker_list = format!(
        "[{}]",
        (1..=workers)
            .map(|w| format!("\"w{w}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut toml = String::new();
    for b in ["up-a", "up-b", "up-c", "down"] {
        toml.push_str(&ledger::ledger_builder(
            b,
            &worker_list,
            &ledger_path,
            "0.3",
        ));
        toml.push('\n');
    }
    toml.push_str(&limited_builder(
        "limited",
        &worker_list,
        &limited_ledger,
        1,
    ));
    toml.push_str(
        "\n[[schedulers]]\nname = \"up\"\nkind = \"single-branch\"\nbranch = \"main\"\n\
         builders = [\"up-a\", \"up-b\", \"up-c\"]\n\n\
         [[schedulers]]\nname = \"down\"\nkind = \"dependent\"\nupstream = \"up\"\n\
         builders = [\"down\"]\n",
    );
    let mut f = Fleet::start(&g, &db, &toml, workers).await;

    // Load through all three masters, with the fault in the middle.
    let mut stopped: Option<Instant> = None;
    for n in 0..CHANGES {
        let body = json!({"repository": "repo", "branch": "main", "revision": format!("r{n}"), "files": []});
        f.post(n, "/api/v1/changes", &body).await;
        if n < LIMITED {
            let body = json!({"builder": "limited", "revision": format!("l{n}"), "branch": "main", "repository": "repo"});
            f.post(n + 1, "/api/v1/force", &body).await;
        }
        match fault {
            Fault::KillMaster if n == CHANGES / 2 => f.kill9(1),
            // Its name is taken over by a new incarnation.
            Fault::KillMaster if n == CHANGES / 2 + 4 => f.restart(1),
            Fault::RollingRestart if n % (CHANGES / 4) == CHANGES / 8 && n < CHANGES * 3 / 4 => {
                f.restart_gracefully(n / (CHANGES / 4)).await;
            }
            Fault::StopNode if n == CHANGES / 3 => {
                g.stop_node(2).await;
                stopped = Some(Instant::now());
            }
            _ => {}
        }
        if stopped.is_some_and(|t| t.elapsed() >= NODE_DOWN) {
            g.start_node(2).await;
            stopped = None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(t) = stopped {
        tokio::time::sleep(NODE_DOWN.saturating_sub(t.elapsed())).await;
        g.start_node(2).await;
    }

    // Everything settles: every request complete, every upstream buildset
    // complete, one dependent buildset per upstream one, all complete.
    let mut c = synced_conn(&g, 0, &db).await;
    let start = Instant::now();
    loop {
        let pending = scalar(
            &mut c,
            "SELECT COUNT(*) FROM buildrequests WHERE complete = 0",
        )
        .await;
        let open = scalar(&mut c, "SELECT COUNT(*) FROM buildsets WHERE complete = 0").await;
        let up = scalar(
            &mut c,
            "SELECT COUNT(*) FROM buildsets WHERE scheduler = 'up'",
        )
        .await;
        let down = scalar(
            &mut c,
            "SELECT COUNT(*) FROM buildsets WHERE scheduler = 'down'",
        )
        .await;
        if pending == 0 && open == 0 && up == CHANGES as i64 && down == up {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "not settled after 180 s: {pending} requests pending, {open} buildsets open, \
             {up} upstream buildsets, {down} dependent\n{}",
            f.dump()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let not_once = scalar(
        &mut c,
        &format!(
            "SELECT COUNT(*) FROM buildrequests br WHERE (SELECT COUNT(*) FROM builds b \
             WHERE b.buildrequestid = br.id AND b.results = {}) <> 1",
            Results::Success.as_i64()
        ),
    )
    .await;
    if not_once != 0 {
        /// (request, build, build results, master, number, request results)
        type BuildOfRequest = (i64, i64, Option<i64>, i64, i64, Option<i64>);
        let rows: Vec<BuildOfRequest> = sqlx::query_as(
            "SELECT br.id, b.id, CAST(b.results AS SIGNED), b.masterid, b.number, \
             CAST(br.results AS SIGNED) FROM buildrequests br LEFT JOIN builds b \
             ON b.buildrequestid = br.id WHERE (SELECT COUNT(*) FROM builds b2 \
             WHERE b2.buildrequestid = br.id AND b2.results = 0) <> 1 ORDER BY br.id, b.id",
        )
        .fetch_all(&mut c)
        .await
        .unwrap_or_default();
        let runs = ledger::read(&ledger_path);
        panic!(
            "{not_once} requests without exactly one successful build: \
             (request, build, results, master, number, request results) {rows:?}\n\
             ledger problems: {:?}\n{}",
            ledger::check(&runs),
            f.dump()
        );
    }
    let failed = scalar(
        &mut c,
        &format!(
            "SELECT COUNT(*) FROM buildrequests WHERE results <> {}",
            Results::Success.as_i64()
        ),
    )
    .await;
    assert_eq!(failed, 0, "every request succeeded");
    let counts = scalar(
        &mut c,
        "SELECT CAST((SELECT COALESCE(SUM(ABS(claimed_requests)), 0) FROM builders) + \
         (SELECT COALESCE(SUM(ABS(open_requests)), 0) FROM buildsets) AS SIGNED)",
    )
    .await;
    // The written counts are a verdict too: a transaction that a node ended
    // without telling the client used to leave a builder's count raised
    // while its claims were gone (`Dialect::in_tx`, `commit_checked!`).
    if counts != 0 {
        let builders: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, CAST(claimed_requests AS SIGNED) FROM builders WHERE claimed_requests <> 0",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let buildsets: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT id, CAST(open_requests AS SIGNED), CAST(complete AS SIGNED) FROM buildsets \
             WHERE open_requests <> 0",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        panic!(
            "the written counts are not back at zero: builders {builders:?}, buildsets {buildsets:?}"
        );
    }
    let ended = f.count_in_logs("ended the transaction without an error");
    println!("transactions found ended by the database and run again: {ended}");
    let masters_on = scalar(&mut c, "SELECT COUNT(DISTINCT b.masterid) FROM builds b").await;
    assert!(
        masters_on >= 3,
        "builds ran on several masters: {masters_on}"
    );

    // The ledgers: every execution ended, none of one request overlapped
    // another, and the limited builder never ran two at once.
    let runs = ledger::read(&ledger_path);
    let problems = ledger::check(&runs);
    assert!(problems.is_empty(), "ledger: {problems:#?}");
    let mut limited_runs = ledger::read(&limited_ledger);
    assert!(ledger::check(&limited_runs).is_empty());
    limited_runs.sort_by_key(|e| e.began());
    for pair in limited_runs.windows(2) {
        let a_end = pair[0].end_ns.unwrap_or(i128::MAX);
        assert!(
            pair[1].began() >= a_end,
            "max_concurrent_builds = 1 exceeded: builds {} and {} overlapped",
            pair[0].build,
            pair[1].build
        );
    }
    assert!(limited_runs.len() >= LIMITED);
    drop(f);
}
