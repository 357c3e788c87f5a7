//! Chaos tests of the cluster lifecycle: masters killed, restarted one by
//! one, frozen; the database and the gateway taken away. Each drives 300+
//! short builds whose step writes a ledger (an independent record of what
//! ran), then checks: every request completed with success, no request has
//! two successful builds, no two executions of one request overlapped, no
//! request stayed pending. Each prints its seed; `FLOTILLA_CHAOS_SEED`
//! replays one. The tests run one at a time (they load the machine).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::ledger::{self, Execution};
use common::mariadb::PrivateMariadb;
use common::{Cluster, ClusterSpec};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::Row;
use tokio::task::JoinHandle;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BUILDS: usize = 300;
const BUILDER: &str = "ledger";

fn seed() -> u64 {
    let seed = std::env::var("FLOTILLA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed: {seed} (FLOTILLA_CHAOS_SEED={seed} replays it)");
    seed
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

struct Chaos {
    cluster: Cluster,
    ledger: PathBuf,
    rng: StdRng,
    submitter: Option<JoinHandle<Vec<i64>>>,
}

impl Chaos {
    async fn start(prefix: &str, mut spec: ClusterSpec) -> Chaos {
        let rng = StdRng::seed_from_u64(seed());
        let ledger_dir = tempfile::tempdir().unwrap().keep();
        let ledger = ledger_dir.join("ledger.txt");
        spec.builders_toml = ledger::ledger_builder(BUILDER, &spec.worker_list(), &ledger, "0.3");
        let cluster = Cluster::start(prefix, spec).await;
        Chaos {
            cluster,
            ledger,
            rng,
            submitter: None,
        }
    }

    /// Submits `BUILDS` builds in the background through random live masters.
    fn start_load(&mut self) {
        let apis: Vec<String> = (0..self.cluster.masters.len())
            .map(|i| self.cluster.api(i))
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut rng = StdRng::seed_from_u64(self.rng.random());
        self.submitter = Some(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(BUILDS);
            while ids.len() < BUILDS {
                let api = &apis[rng.random_range(0..apis.len())];
                let body =
                    serde_json::json!({"builder": BUILDER, "revision": format!("r{}", ids.len())});
                let resp = http
                    .post(format!("{api}/api/v1/force"))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = resp
                    && r.status().is_success()
                    && let Ok(v) = r.json::<serde_json::Value>().await
                {
                    ids.push(v["buildrequest_ids"][0].as_i64().unwrap());
                    if ids.len() % 5 == 0 {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    continue;
                }
                // That master is down (or the database is): try another soon.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        }));
    }

    fn load_running(&self) -> bool {
        self.submitter.as_ref().is_some_and(|h| !h.is_finished())
    }

    async fn sleep_ms(&mut self, lo: u64, hi: u64) {
        let ms = self.rng.random_range(lo..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Waits for every submitted request and checks the database and the ledger.
    async fn verify(mut self) -> (Cluster, Vec<Execution>) {
        let ids = self.submitter.take().unwrap().await.unwrap();
        assert!(ids.len() >= BUILDS);
        let start = Instant::now();
        loop {
            let mut conn = self.cluster.connect_db().await;
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM buildrequests WHERE complete = 0")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            if pending == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "{pending} requests still pending after 240 s\n{}",
                self.cluster.dump()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut conn = self.cluster.connect_db().await;
        let rows = sqlx::query(
            "SELECT r.id, CAST(r.results AS SIGNED) AS results, \
             CAST(COALESCE(SUM(b.results = 0), 0) AS SIGNED) AS ok, COUNT(b.id) AS builds \
             FROM buildrequests r LEFT JOIN builds b ON b.buildrequestid = r.id GROUP BY r.id, r.results",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        // Every acknowledged request is there. A force whose answer was lost
        // with a killed master may have been submitted again: more rows is fine,
        // and they must complete too.
        let in_db: std::collections::HashSet<i64> =
            rows.iter().map(|r| r.get::<i64, _>("id")).collect();
        let missing: Vec<&i64> = ids.iter().filter(|id| !in_db.contains(id)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged requests missing: {missing:?}"
        );
        let mut retried = 0;
        for r in &rows {
            let id: i64 = r.get("id");
            assert_eq!(
                r.get::<i64, _>("results"),
                0,
                "request {id} did not succeed"
            );
            assert_eq!(
                r.get::<i64, _>("ok"),
                1,
                "request {id} has {} successful builds",
                r.get::<i64, _>("ok")
            );
            retried += r.get::<i64, _>("builds") - 1;
        }
        // The written counts agree with the rows: nothing is claimed or
        // open any more, so every builder's and buildset's count is zero.
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT CONCAT('builder ', name), CAST(claimed_requests AS SIGNED) FROM builders \
             WHERE claimed_requests <> 0 UNION ALL \
             SELECT CONCAT('buildset ', id), CAST(open_requests AS SIGNED) FROM buildsets \
             WHERE open_requests <> 0",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        assert!(
            counts.is_empty(),
            "written counts not back at zero: {counts:?}"
        );
        let executions = ledger::read(&self.ledger);
        let problems = ledger::check(&executions);
        assert!(
            problems.is_empty(),
            "ledger problems:\n{}",
            problems.join("\n")
        );
        let killed = executions.iter().filter(|e| e.killed).count();
        eprintln!(
            "{} requests complete once each; {} extra builds (retried); {} executions in the ledger, {killed} killed",
            rows.len(),
            retried,
            executions.len()
        );
        (self.cluster, executions)
    }
}

/// For each kill (time, master name): time until every execution that master
/// had running was started again elsewhere.
fn failover_ms(executions: &[Execution], kills: &[(i128, String)]) -> Vec<i128> {
    let mut out = Vec::new();
    for (at, name) in kills {
        let victims: Vec<&Execution> = executions
            .iter()
            .filter(|e| {
                &e.master == name
                    && e.start_ns < *at
                    && e.end_ns.is_some_and(|end| end >= *at && e.killed)
            })
            .collect();
        let mut worst = 0;
        for v in victims {
            if let Some(next) = executions
                .iter()
                .filter(|e| e.request == v.request && e.began() > v.start_ns)
                .map(|e| e.began())
                .min()
            {
                worst = worst.max((next - at) / 1_000_000);
            }
        }
        out.push(worst);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn masters_killed_at_random_and_restarted() {
    let _serial = SERIAL.lock().await;
    let mut chaos = Chaos::start("chaos_kill", ClusterSpec::new(3, 6, "")).await;
    chaos.start_load();
    let mut kills = Vec::new();
    while chaos.load_running() {
        chaos.sleep_ms(2000, 4000).await;
        let i = chaos.rng.random_range(0..3);
        let name = chaos.cluster.masters[i].name.clone();
        chaos.cluster.kill9_master(i);
        kills.push((now_ns(), name.clone()));
        eprintln!("kill -9 master {name}");
        chaos.sleep_ms(300, 1500).await;
        chaos.cluster.restart_master(i);
    }
    let timeout_ms = 4000;
    let (_cluster, executions) = chaos.verify().await;
    let failovers = failover_ms(&executions, &kills);
    eprintln!(
        "failover after kill -9 (ms, kill to the last of its builds running elsewhere): {failovers:?}; master_timeout = {timeout_ms} ms"
    );
    assert!(!kills.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_twice_under_load() {
    let _serial = SERIAL.lock().await;
    let mut chaos = Chaos::start("chaos_roll", ClusterSpec::new(3, 6, "")).await;
    chaos.start_load();
    for round in 0..2 {
        for i in 0..3 {
            chaos.sleep_ms(500, 1500).await;
            let name = chaos.cluster.masters[i].name.clone();
            eprintln!("round {round}: SIGTERM master {name}");
            chaos.cluster.signal_master(i, Signal::SIGTERM);
            let code = chaos.cluster.masters[i]
                .proc
                .wait_exit(Duration::from_secs(40));
            assert_eq!(
                code,
                Some(0),
                "master {name} exits 0 after SIGTERM\n{}",
                chaos.cluster.dump()
            );
            chaos.cluster.restart_master(i);
            chaos.cluster.wait_ready().await;
        }
    }
    let (cluster, _) = chaos.verify().await;
    // Graceful stops hand nothing back half-done: the drained masters' logs say they stopped.
    let stopped = cluster
        .retired
        .iter()
        .filter(|p| p.output().contains("master stopped"))
        .count();
    assert_eq!(stopped, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_master_loses_its_claims_and_does_not_finish_them() {
    let _serial = SERIAL.lock().await;
    let mut chaos = Chaos::start("chaos_stop", ClusterSpec::new(3, 6, "")).await;
    chaos.start_load();
    chaos.sleep_ms(3000, 4000).await;
    eprintln!("SIGSTOP master m1 for 7 s (master_timeout is 4 s)");
    chaos.cluster.signal_master(0, Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(7)).await;
    chaos.cluster.signal_master(0, Signal::SIGCONT);
    let (cluster, _) = chaos.verify().await;
    let log = cluster.masters[0].proc.output();
    assert!(
        log.contains("declared dead"),
        "the frozen master noticed:\n{log}"
    );
    assert!(
        log.contains("joined the cluster again"),
        "and came back as a new incarnation:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_stopped_for_twenty_seconds() {
    let _serial = SERIAL.lock().await;
    let mut db = PrivateMariadb::start();
    {
        use sqlx::Connection;
        let mut conn = sqlx::mysql::MySqlConnection::connect(&db.url(""))
            .await
            .unwrap();
        sqlx::query("CREATE DATABASE flotilla")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut spec = ClusterSpec::new(3, 6, "");
    spec.database_url = Some(db.url("flotilla"));
    let mut chaos = Chaos::start("chaos_db", spec).await;
    chaos.start_load();
    chaos.sleep_ms(3000, 5000).await;
    eprintln!("stopping MariaDB for 20 s");
    db.stop();
    tokio::time::sleep(Duration::from_secs(20)).await;
    db.resume();
    eprintln!("MariaDB is back");
    let (mut cluster, _) = chaos.verify().await;
    for m in cluster.masters.iter_mut() {
        assert!(
            matches!(m.proc.child.try_wait(), Ok(None)),
            "master {} kept running through the outage",
            m.name
        );
        assert!(!m.proc.output().contains("panicked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    let mut chaos = Chaos::start("chaos_gw", ClusterSpec::new(3, 6, "")).await;
    chaos.start_load();
    chaos.sleep_ms(3000, 5000).await;
    eprintln!("kill -9 the gateway; restart it 2 s later");
    chaos.cluster.restart_gateway(Duration::from_secs(2));
    chaos.cluster.wait_ready().await;
    chaos.verify().await;
}
