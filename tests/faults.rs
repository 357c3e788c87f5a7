//! Fault-injection tests: partial faults a master meets in production, each
//! injected with real sockets, processes and clocks, and judged by the
//! ledger (an independent record, written by the build steps, of what ran):
//!
//! - a master cut off from the database (bytes held, sockets open, no error);
//! - a master cut off from the gateway only;
//! - every master cut off from the database at once, then healed;
//! - 300 ms added to every database round trip of one master;
//! - the database's clock stepped forward by 2 x `master_timeout` and back;
//! - a master frozen while its transaction holds row locks.
//!
//! Each master reaches the database and the gateway through relays of its
//! own (`common::relay`). The verdicts: no two runs of one request alive at
//! once, every request complete exactly once with one successful build,
//! nothing left pending, and per scenario no false death and a bounded
//! failover. Each test prints its seed; `FLOTILLA_FAULTS_SEED` replays one.
//! At most two run at a time (each starts about ten processes).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::ledger::{self, Execution};
use common::mariadb::PrivateMariadb;
use common::{Cluster, ClusterSpec, eventually};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use sqlx::mysql::MySqlConnection;

/// Two fault tests at a time: their timing bounds are seconds, and this
/// keeps a loaded two-core machine from stretching them.
static GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

const BUILDER: &str = "ledger";
/// `master_timeout` of every cluster here (the spec's default).
const MASTER_TIMEOUT: Duration = Duration::from_secs(4);
/// The bound on failover the issue sets: `master_timeout` + 2 s.
const FAILOVER_BOUND: Duration = Duration::from_secs(6);
const DEAD_LINE: &str = "declared master dead";

fn seed(test: &str) -> u64 {
    let seed = std::env::var("FLOTILLA_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ns() as u64);
    eprintln!("{test}: seed {seed} (FLOTILLA_FAULTS_SEED={seed} replays it)");
    seed
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn ms(ns: i128) -> i128 {
    ns / 1_000_000
}

/// A cluster whose every build step writes the ledger, and what the test saw.
struct Fault {
    cluster: Cluster,
    ledger: PathBuf,
    rng: StdRng,
    ids: Vec<i64>,
    /// Verdicts that failed, all reported together at the end.
    problems: Vec<String>,
    name: &'static str,
}

impl Fault {
    /// A cluster of `masters` masters and `workers` workers whose one builder
    /// sleeps `step` seconds between its ledger lines.
    async fn start(name: &'static str, mut spec: ClusterSpec, step: &str) -> Fault {
        let rng = StdRng::seed_from_u64(seed(name));
        let ledger_dir = tempfile::tempdir().unwrap().keep();
        let ledger = ledger_dir.join("ledger.txt");
        spec.builders_toml = ledger::ledger_builder(BUILDER, &spec.worker_list(), &ledger, step);
        let cluster = Cluster::start(name, spec).await;
        // A master reaps others only after its own heartbeats have held for
        // `master_timeout`: inject faults once every reaper is live.
        tokio::time::sleep(MASTER_TIMEOUT + Duration::from_secs(1)).await;
        Fault {
            cluster,
            ledger,
            rng,
            ids: Vec::new(),
            problems: Vec::new(),
            name,
        }
    }

    fn spec(masters: usize, workers: usize, relays: bool) -> ClusterSpec {
        let mut spec = ClusterSpec::new(masters, workers, "");
        spec.relays = relays;
        // Masters in production do not heartbeat in the same millisecond:
        // start them apart, so their heartbeat loops are out of step.
        spec.master_start_gap = Duration::from_millis(170);
        spec
    }

    /// Submits `n` requests, each through a master that answers (tried in turn).
    async fn submit(&mut self, n: usize) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let masters = self.cluster.masters.len();
        let mut m = self.rng.random_range(0..masters);
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..n {
            loop {
                assert!(Instant::now() < deadline, "no master took a request");
                let body = serde_json::json!({"builder": BUILDER, "revision": format!("r{}", self.ids.len())});
                let resp = http
                    .post(format!("{}/api/v1/force", self.cluster.api(m)))
                    .json(&body)
                    .send()
                    .await;
                m = (m + 1) % masters;
                if let Ok(r) = resp
                    && r.status().is_success()
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && let Some(id) = v["buildrequest_ids"][0].as_i64()
                {
                    self.ids.push(id);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn executions(&self) -> Vec<Execution> {
        ledger::read(&self.ledger)
    }

    /// Executions started and not yet ended, by master name.
    fn running(&self) -> Vec<Execution> {
        self.executions()
            .into_iter()
            .filter(|e| e.start_ns > 0 && e.end_ns.is_none())
            .collect()
    }

    /// Waits until at least `n` executions run at once.
    async fn wait_running(&self, n: usize) -> Vec<Execution> {
        eventually(
            &format!("{n} builds running"),
            Duration::from_secs(60),
            || async {
                let r = self.running();
                (r.len() >= n).then_some(r)
            },
        )
        .await
    }

    /// Idle connected workers by master name.
    async fn idle_workers(&self) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for i in 0..self.cluster.masters.len() {
            if let Some(serde_json::Value::Array(ws)) = self
                .cluster
                .get(&format!("{}/api/v1/workers", self.cluster.api(i)))
                .await
            {
                for w in ws {
                    if w["connected"] == serde_json::Value::Bool(true)
                        && w["idle"] == serde_json::Value::Bool(true)
                        && let Some(m) = w["master"].as_str()
                    {
                        *out.entry(m.to_owned()).or_default() += 1;
                    }
                }
                return out;
            }
        }
        out
    }

    /// A master running a long build whose runs other masters have idle
    /// workers to take over (so failover is bounded by the masters alone).
    async fn pick_victim(&mut self) -> (String, Vec<Execution>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running = self.running();
            let idle = self.idle_workers().await;
            let mut by_master: BTreeMap<String, Vec<Execution>> = BTreeMap::new();
            for e in running {
                by_master.entry(e.master.clone()).or_default().push(e);
            }
            let candidates: Vec<&String> = by_master
                .iter()
                .filter(|(m, runs)| {
                    let elsewhere: usize =
                        idle.iter().filter(|(n, _)| n != m).map(|(_, c)| c).sum();
                    elsewhere >= runs.len()
                })
                .map(|(m, _)| m)
                .collect();
            if !candidates.is_empty() {
                let m = candidates[self.rng.random_range(0..candidates.len())].clone();
                let runs = by_master.remove(&m).unwrap();
                eprintln!(
                    "victim: master {m}, running requests {:?}; idle workers by master: {idle:?}",
                    runs.iter().map(|e| e.request).collect::<Vec<_>>()
                );
                return (m, runs);
            }
            assert!(
                Instant::now() < deadline,
                "no master runs a build that others have idle workers for: {by_master:?}, idle {idle:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn db(&self) -> MySqlConnection {
        self.cluster.connect_db().await
    }

    fn problem(&mut self, p: String) {
        eprintln!("{}: VERDICT FAILED: {p}", self.name);
        self.problems.push(p);
    }

    /// Every "declared master dead" in any master's log, and the
    /// incarnations the masters table holds inactive.
    async fn deaths(&self) -> (Vec<String>, Vec<(i64, String)>) {
        let mut lines = Vec::new();
        let procs = self
            .cluster
            .masters
            .iter()
            .map(|m| &m.proc)
            .chain(self.cluster.retired.iter());
        for p in procs {
            for l in p.output().lines().filter(|l| l.contains(DEAD_LINE)) {
                lines.push(format!("{}: {}", p.name, l.trim()));
            }
        }
        let mut conn = self.db().await;
        let inactive = sqlx::query("SELECT id, name FROM masters WHERE active = 0 ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<i64, _>("id"), r.get::<String, _>("name")))
            .collect();
        (lines, inactive)
    }

    /// No master may have been declared dead.
    async fn expect_no_deaths(&mut self) {
        let (lines, inactive) = self.deaths().await;
        if !lines.is_empty() || !inactive.is_empty() {
            self.problem(format!(
                "false deaths: {} '{DEAD_LINE}' log lines, inactive incarnations {inactive:?}:\n  {}",
                lines.len(),
                lines.join("\n  ")
            ));
        } else {
            eprintln!("{}: no master was declared dead", self.name);
        }
    }

    /// Waits for every request, then judges the database and the ledger.
    async fn settle(&mut self, timeout: Duration) -> Vec<Execution> {
        let start = Instant::now();
        loop {
            let mut conn = self.db().await;
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM buildrequests WHERE complete = 0")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if pending == 0 {
                eprintln!(
                    "{}: all requests complete {:.1} s after the fault ended",
                    self.name,
                    start.elapsed().as_secs_f64()
                );
                break;
            }
            if start.elapsed() > timeout {
                self.problem(format!(
                    "{pending} requests still pending {timeout:?} after the fault ended"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut conn = self.db().await;
        let rows = sqlx::query(
            "SELECT r.id, r.complete, CAST(COALESCE(r.results, -1) AS SIGNED) AS results, \
             CAST(COALESCE(SUM(b.results = 0), 0) AS SIGNED) AS ok, COUNT(b.id) AS builds \
             FROM buildrequests r LEFT JOIN builds b ON b.buildrequestid = r.id \
             GROUP BY r.id, r.complete, r.results",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let in_db: std::collections::HashSet<i64> =
            rows.iter().map(|r| r.get::<i64, _>("id")).collect();
        let missing: Vec<&i64> = self.ids.iter().filter(|id| !in_db.contains(id)).collect();
        if !missing.is_empty() {
            self.problem(format!("acknowledged requests missing: {missing:?}"));
        }
        let mut retried = 0;
        for r in &rows {
            let id: i64 = r.get("id");
            let (results, ok) = (r.get::<i64, _>("results"), r.get::<i64, _>("ok"));
            if results != 0 && r.get::<i64, _>("complete") != 0 {
                self.problem(format!("request {id} completed with results {results}"));
            }
            if ok > 1 {
                self.problem(format!("request {id} has {ok} successful builds"));
            }
            retried += r.get::<i64, _>("builds") - 1;
        }
        let executions = self.executions();
        for p in ledger::check(&executions) {
            self.problem(format!("ledger: {p}"));
        }
        let killed = executions.iter().filter(|e| e.killed).count();
        eprintln!(
            "{}: {} requests; {retried} extra builds (retried); {} executions in the ledger, {killed} killed",
            self.name,
            rows.len(),
            executions.len()
        );
        executions
    }

    /// Fails the test with every verdict that failed.
    fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "{}: {} verdicts failed:\n{}",
            self.name,
            self.problems.len(),
            self.problems.join("\n")
        );
        eprintln!("{}: every verdict holds", self.name);
    }
}

/// For runs of `victim` alive at `at`: when each request ran again
/// elsewhere, in ms after `at` (None: it never ran again).
fn failover_ms(
    executions: &[Execution],
    victims: &[Execution],
    at: i128,
) -> Vec<(i64, Option<i128>)> {
    victims
        .iter()
        .map(|v| {
            let next = executions
                .iter()
                .filter(|e| e.request == v.request && e.build != v.build && e.began() > v.start_ns)
                .map(|e| e.began())
                .min();
            (v.request, next.map(|n| ms(n - at)))
        })
        .collect()
}

/// Longest stretch two runs of one request were alive at once, over all requests (ms).
fn worst_overlap_ms(executions: &[Execution]) -> i128 {
    let mut worst = 0;
    for a in executions {
        for b in executions {
            if a.request == b.request && a.build != b.build && a.began() <= b.began() {
                let a_end = a.end_ns.unwrap_or_else(now_ns);
                let b_end = b.end_ns.unwrap_or_else(now_ns);
                worst = worst.max(ms(a_end.min(b_end) - b.began()));
            }
        }
    }
    worst
}

/// Checks failover of `victims` (runs of one master alive when its fault
/// began at `at`) against `bound`, and reports the overlap.
fn judge_failover(
    f: &mut Fault,
    executions: &[Execution],
    victims: &[Execution],
    at: i128,
    bound: Option<Duration>,
) {
    let failovers = failover_ms(executions, victims, at);
    eprintln!(
        "{}: failover (ms from the fault to the request running elsewhere): {failovers:?}; \
         master_timeout {} ms; worst overlap {} ms",
        f.name,
        MASTER_TIMEOUT.as_millis(),
        worst_overlap_ms(executions)
    );
    if let Some(bound) = bound {
        for (req, fo) in failovers {
            match fo {
                Some(t) if t <= bound.as_millis() as i128 => {}
                Some(t) => f.problem(format!(
                    "request {req}: failover took {t} ms (bound {} ms)",
                    bound.as_millis()
                )),
                None => f.problem(format!(
                    "request {req}: never ran elsewhere (its master kept it through the fault)"
                )),
            }
        }
    }
}

/// Master cut off from the database (bytes held, sockets open) for
/// 4 x `master_timeout` while it runs a long build: the others take the
/// build over within `master_timeout` + 2 s, and the cut-off master has
/// stopped its run by then (no overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_cut_off_from_the_database_stops_before_others_take_over() {
    let _gate = GATE.acquire().await.unwrap();
    let mut f = Fault::start("faults_dbcut", Fault::spec(3, 5, true), "25").await;
    f.submit(2).await;
    f.wait_running(2).await;
    let (victim, runs) = f.pick_victim().await;
    let i = f.cluster.master_index(&victim);
    let at = now_ns();
    f.cluster.links(i).db.cut();
    tokio::time::sleep(MASTER_TIMEOUT * 4).await;
    f.cluster.links(i).db.heal();
    let executions = f.settle(Duration::from_secs(120)).await;
    judge_failover(&mut f, &executions, &runs, at, Some(FAILOVER_BOUND));
    f.finish();
}

/// Master cut off from the gateway only (its database link is fine) for
/// 4 x `master_timeout` while it runs a long build: nothing overlaps and
/// every request completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_cut_off_from_the_gateway_only() {
    let _gate = GATE.acquire().await.unwrap();
    let mut f = Fault::start("faults_gwcut", Fault::spec(3, 5, true), "20").await;
    f.submit(2).await;
    f.wait_running(2).await;
    let (victim, runs) = f.pick_victim().await;
    let i = f.cluster.master_index(&victim);
    let at = now_ns();
    f.cluster.links(i).gateway.cut();
    tokio::time::sleep(MASTER_TIMEOUT * 4).await;
    f.cluster.links(i).gateway.heal();
    let executions = f.settle(Duration::from_secs(120)).await;
    judge_failover(&mut f, &executions, &runs, at, None);
    f.finish();
}

/// Every master cut off from the database at once for 20 s, healed one
/// by one within a second: no master declares another dead for an outage
/// they all saw, nothing overlaps, and the work resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_master_cut_off_from_the_database_at_once() {
    let _gate = GATE.acquire().await.unwrap();
    let mut f = Fault::start("faults_allcut", Fault::spec(3, 4, true), "10").await;
    f.submit(6).await;
    f.wait_running(3).await;
    for i in 0..3 {
        f.cluster.links(i).db.cut();
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut order: Vec<usize> = (0..3).collect();
    for k in (1..order.len()).rev() {
        order.swap(k, f.rng.random_range(0..=k));
    }
    for i in order {
        f.cluster.links(i).db.heal();
        let gap = f.rng.random_range(0..=800);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    f.settle(Duration::from_secs(120)).await;
    f.expect_no_deaths().await;
    f.finish();
}

/// 150 ms each way (300 ms per round trip) on one master's database link
/// for 30 s while builds come and go: it is slow, not dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_database_link_is_not_a_death() {
    let _gate = GATE.acquire().await.unwrap();
    let mut f = Fault::start("faults_slow", Fault::spec(3, 4, true), "3").await;
    f.submit(4).await;
    f.wait_running(2).await;
    let i = f.rng.random_range(0..3);
    eprintln!(
        "adding 300 ms to every database round trip of {}",
        f.cluster.masters[i].name
    );
    f.cluster.links(i).db.delay(Duration::from_millis(150));
    // Work keeps coming while the link is slow.
    for _ in 0..6 {
        f.submit(3).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    f.cluster.links(i).db.delay(Duration::ZERO);
    f.settle(Duration::from_secs(120)).await;
    f.expect_no_deaths().await;
    f.finish();
}

/// The database's clock stepped forward by 2 x `master_timeout` for a
/// while, then back: clocks are not liveness, so no master dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_clock_stepped_forward_and_back() {
    let _gate = GATE.acquire().await.unwrap();
    let db = PrivateMariadb::start_with_steppable_clock();
    let mut conn = {
        use sqlx::Connection;
        MySqlConnection::connect(&db.url("")).await.unwrap()
    };
    sqlx::query("CREATE DATABASE flotilla")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut spec = Fault::spec(3, 4, false);
    spec.database_url = Some(db.url("flotilla"));
    let mut f = Fault::start("faults_clock", spec, "8").await;
    f.submit(6).await;
    f.wait_running(3).await;
    let step = (MASTER_TIMEOUT * 2).as_secs() as i64;
    let before: String = sqlx::query_scalar("SELECT CAST(NOW(6) AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    db.set_clock_offset(step);
    let after: String = sqlx::query_scalar("SELECT CAST(NOW(6) AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    eprintln!("database clock stepped forward {step} s: NOW(6) {before} -> {after}");
    assert!(after > before, "the server's clock moved");
    f.submit(3).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    db.set_clock_offset(0);
    let back: String = sqlx::query_scalar("SELECT CAST(NOW(6) AS CHAR)")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    eprintln!("database clock stepped back: NOW(6) {back}");
    f.submit(3).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    f.settle(Duration::from_secs(120)).await;
    f.expect_no_deaths().await;
    f.finish();
    drop(db);
}

/// An open transaction of `ports` (the relay's connections of one master)
/// holding row locks and having changed nothing yet (as `start_build`
/// after its `FOR UPDATE`): (thread id, rows locked).
async fn lock_holder(
    conn: &mut MySqlConnection,
    ports: &std::collections::BTreeSet<u16>,
) -> Option<(i64, i64)> {
    let rows = sqlx::query(
        "SELECT CAST(t.trx_mysql_thread_id AS SIGNED) AS thread, CAST(t.trx_rows_locked AS SIGNED) AS locked, \
         CAST(t.trx_rows_modified AS SIGNED) AS modified, t.trx_state AS state, p.HOST AS host \
         FROM information_schema.INNODB_TRX t JOIN information_schema.PROCESSLIST p \
         ON p.ID = t.trx_mysql_thread_id",
    )
    .fetch_all(conn)
    .await
    .ok()?;
    rows.iter().find_map(|r| {
        let host: String = r.try_get("host").ok()?;
        let port: u16 = host.rsplit(':').next()?.parse().ok()?;
        let (locked, modified): (i64, i64) = (r.get("locked"), r.get("modified"));
        let state: String = r.get("state");
        (ports.contains(&port) && locked > 0 && modified == 0 && state == "RUNNING")
            .then(|| (r.get::<i64, _>("thread"), locked))
    })
}

/// How many unfinished requests claimed by `master` are row-locked by
/// someone: a locking read that skips locked rows finds fewer than a plain one.
async fn locked_claims(conn: &mut MySqlConnection, master: i64) -> i64 {
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM buildrequests WHERE claimed_by_masterid = ? AND complete = 0",
    )
    .bind(master)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    // Read committed: the probe keeps no lock on rows it does not return.
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
        .execute(&mut *conn)
        .await
        .unwrap();
    let free: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT id FROM buildrequests \
         WHERE claimed_by_masterid = ? AND complete = 0 FOR UPDATE SKIP LOCKED) AS f",
    )
    .bind(master)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    total - free
}

/// A master frozen (SIGSTOP) while its open transaction holds row locks:
/// the other masters keep heartbeating and claiming, and declare it dead and
/// release its claims within `master_timeout` + 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_frozen_holding_row_locks_is_reaped_in_time() {
    let _gate = GATE.acquire().await.unwrap();
    let mut f = Fault::start("faults_locks", Fault::spec(3, 5, true), "1").await;
    // Work for the whole test: short builds, so builds start all the time.
    f.submit(12).await;
    f.wait_running(2).await;
    let victim = f.rng.random_range(0..3);
    let name = f.cluster.masters[victim].name.clone();
    // Longer round trips keep the victim's transactions open longer.
    f.cluster.links(victim).db.delay(Duration::from_millis(40));
    let mut conn = f.db().await;
    let mut caught = None;
    let mut attempts = 0;
    let hunt = Instant::now();
    while caught.is_none() && hunt.elapsed() < Duration::from_secs(90) {
        let pending: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM buildrequests WHERE complete = 0")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if pending < 5 {
            f.submit(4).await;
        }
        let master_id: i64 = sqlx::query_scalar(
            "SELECT id FROM masters WHERE name = ? AND active = 1 ORDER BY id DESC LIMIT 1",
        )
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        attempts += 1;
        let relay = &f.cluster.links(victim).db;
        relay.cut();
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Its open transaction holds locks, among them a request it claimed
        // (what the reaper must release): as inside `start_build` after its
        // `FOR UPDATE`.
        let holder = match lock_holder(&mut conn, &relay.upstream_ports()).await {
            Some(h) if locked_claims(&mut conn, master_id).await > 0 => Some(h),
            _ => None,
        };
        if let Some(holder) = holder {
            f.cluster.signal_master(victim, Signal::SIGSTOP);
            caught = Some((holder, master_id));
        } else {
            relay.heal();
            let pause = f.rng.random_range(50..300);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    let ((thread, locked), master_id) =
        caught.expect("caught the master inside a transaction holding locks");
    let at = now_ns();
    let frozen = Instant::now();
    eprintln!(
        "SIGSTOP master {name} (id {master_id}) after {attempts} tries: its connection {thread} holds {locked} row locks in an open transaction"
    );
    // Watch for 3 x master_timeout: the others' heartbeats, the victim's
    // death and its claims.
    let mut worst_silence: BTreeMap<String, f64> = BTreeMap::new();
    let mut dead_after = None;
    let mut claims_at_bound = None;
    while frozen.elapsed() < MASTER_TIMEOUT * 3 {
        let rows = sqlx::query(
            "SELECT name, id, active, \
             CAST(TIMESTAMPDIFF(MICROSECOND, last_active, NOW(6)) AS SIGNED) AS silent_us FROM masters",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        for r in &rows {
            let (n, id, active): (String, i64, i64) = (r.get("name"), r.get("id"), r.get("active"));
            if id == master_id {
                if active == 0 && dead_after.is_none() {
                    dead_after = Some(frozen.elapsed());
                }
            } else if n != name && active == 1 {
                let s = r.get::<i64, _>("silent_us") as f64 / 1e6;
                let w = worst_silence.entry(n).or_insert(0.0);
                *w = w.max(s);
            }
        }
        if claims_at_bound.is_none() && frozen.elapsed() >= FAILOVER_BOUND {
            let held: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM buildrequests WHERE claimed_by_masterid = ? AND complete = 0",
            )
            .bind(master_id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            claims_at_bound = Some(held);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started_by_others = f
        .executions()
        .iter()
        .filter(|e| e.start_ns > at + 1_000_000_000 && e.master != name)
        .count();
    eprintln!(
        "while {name} was frozen: declared dead after {dead_after:?}; its claims still held at +{} s: {claims_at_bound:?}; \
         longest heartbeat silence of the others: {worst_silence:?} s; builds the others started: {started_by_others}",
        FAILOVER_BOUND.as_secs()
    );
    match dead_after {
        Some(d) if d <= FAILOVER_BOUND => {}
        other => f.problem(format!(
            "master {name} declared dead after {other:?} (bound {FAILOVER_BOUND:?})"
        )),
    }
    // Its one locked row may wait for the lock; every other claim goes back.
    if claims_at_bound.unwrap_or(i64::MAX) > 1 {
        f.problem(format!(
            "master {name} still held {claims_at_bound:?} claims {FAILOVER_BOUND:?} after it froze"
        ));
    }
    for (n, s) in &worst_silence {
        if *s >= MASTER_TIMEOUT.as_secs_f64() {
            f.problem(format!(
                "master {n} did not heartbeat for {s:.1} s while {name} was frozen (master_timeout {MASTER_TIMEOUT:?})"
            ));
        }
    }
    if started_by_others == 0 {
        f.problem(format!(
            "no other master started a build while {name} was frozen"
        ));
    }
    f.cluster.signal_master(victim, Signal::SIGCONT);
    f.cluster.links(victim).db.delay(Duration::ZERO);
    f.cluster.links(victim).db.heal();
    f.settle(Duration::from_secs(150)).await;
    // Only the frozen master may have died.
    let (lines, inactive) = f.deaths().await;
    let others: Vec<&(i64, String)> = inactive.iter().filter(|(_, n)| *n != name).collect();
    if !others.is_empty() {
        f.problem(format!(
            "masters other than {name} declared dead: {others:?}\n  {}",
            lines.join("\n  ")
        ));
    }
    f.finish();
}

/// The relay itself, on real sockets against an echo server: bytes pass,
/// a delay adds to each direction, a cut holds bytes (and new connections'
/// bytes) with the sockets open and delivers them on heal, and a reset
/// closes the client's connection with an RST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_cuts_heals_resets_and_delays() {
    use common::relay::Relay;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay = Relay::start("echo", target);
    async fn round_trip(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<Duration> {
        let t = Instant::now();
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"ping" => Some(t.elapsed()),
            _ => None,
        }
    }
    let mut a = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let plain = round_trip(&mut a, Duration::from_secs(2))
        .await
        .expect("bytes pass");
    relay.delay(Duration::from_millis(100));
    let slow = round_trip(&mut a, Duration::from_secs(2))
        .await
        .expect("bytes pass slowly");
    assert!(
        slow >= Duration::from_millis(200),
        "delay adds to both directions: {slow:?}"
    );
    relay.delay(Duration::ZERO);
    relay.cut();
    assert_eq!(
        round_trip(&mut a, Duration::from_millis(500)).await,
        None,
        "a cut holds bytes"
    );
    let mut b = tokio::net::TcpStream::connect(relay.addr())
        .await
        .expect("a cut relay accepts");
    assert_eq!(
        round_trip(&mut b, Duration::from_millis(300)).await,
        None,
        "and moves nothing"
    );
    relay.heal();
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut buf))
        .await
        .expect("held bytes arrive on heal")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), b.read_exact(&mut buf))
        .await
        .expect("the new connection's bytes arrive on heal")
        .unwrap();
    assert!(round_trip(&mut a, Duration::from_secs(2)).await.is_some());
    eprintln!("relay: plain round trip {plain:?}, with 100 ms each way {slow:?}");
    relay.reset();
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(2), a.read(&mut buf))
        .await
        .expect("a reset is seen at once");
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a connection reset, read {n} bytes"),
    }
}
