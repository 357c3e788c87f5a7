//! `claim`: N independent stores (own pools, own master rows) run the real
//! claim code — `pick_and_claim_per_builder`, as the claim loop does, then
//! `complete_requests` — until R pending requests are
//! all complete. In the same run, the same N-way concurrency does only what
//! a claim minimally costs: one bare primary-key compare-and-swap `UPDATE`
//! to claim and one to complete per request, over R other requests.
//! `ratio` = real / bare.
//!
//! Correctness: every request completed exactly once — each completion
//! reported by exactly one store, and the database agrees.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_master::db::{BuilderId, Results, Store};
use sqlx::Executor;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use crate::database::BenchDb;
use crate::delay_proxy;
use crate::report::{Report, round3};
use crate::seed;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Competing masters (each with its own pool).
    #[arg(long, default_value_t = 4, value_parser = crate::positive::<usize>())]
    masters: usize,
    /// Pending requests to claim and complete.
    #[arg(long, default_value_t = 20_000, value_parser = crate::positive::<usize>())]
    requests: usize,
    /// Requests claimed (and completed) per round.
    #[arg(long, default_value_t = 1, value_parser = crate::positive::<usize>())]
    batch: usize,
    /// Connections in each master's pool.
    #[arg(long, default_value_t = 2)]
    pool: u32,
    /// Added round-trip time to the database, in milliseconds (a relay on
    /// loopback delays each direction by half): the masters' and the bare
    /// baseline's connections go through it, as if the database were on
    /// another host. 0: direct.
    #[arg(long, default_value_t = 0.0)]
    db_rtt_ms: f64,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
    /// Server URLs of the nodes of a Galera cluster (comma-separated, e.g.
    /// `mysql://root@127.0.0.1:4001,...`; `--mysql` names one of them and
    /// creates the database): master i and baseline connection pool i use
    /// node i mod n, so each master is on its own node.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Start a three-node Galera cluster on loopback ports for this run
    /// (Debian's `galera-4`; the test kit's nodes, which write their log
    /// to disk once a second) and run on it as with `--nodes`: master i on
    /// node i mod 3. `--mysql` is then ignored.
    #[arg(long, conflicts_with_all = ["nodes", "db_rtt_ms"])]
    pub galera: bool,
    /// How the store sends its claim transactions to MySQL: `procedures`
    /// (the default: stored procedures for single-request rounds, scripts
    /// for batches), `scripts` (one-trip scripts only) or `stepwise`
    /// (statement by statement), to compare the paths in one run.
    #[arg(long, value_enum, default_value_t = ClaimPath::Procedures)]
    path: ClaimPath,
}

/// The store's ways of sending a claim transaction (`--path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClaimPath {
    Procedures,
    Scripts,
    Stepwise,
}

/// What one competing master did.
#[derive(Debug, Default)]
struct MasterTally {
    completed: Vec<i64>,
    lost_races: u64,
    short_completions: u64,
    /// Calls to the pick, and their total time.
    picks: u64,
    pick_time: Duration,
    /// Calls to `complete_requests`, and their total time.
    completes: u64,
    complete_time: Duration,
    /// Store calls that failed transiently past the store's own retries
    /// (certification conflicts on Galera), tried again.
    transient_errors: u64,
}

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.requests = a.requests.min(2000);
    }
    anyhow::ensure!(
        a.masters > 0 && a.requests > 0 && a.batch > 0,
        "sizes must be positive"
    );
    let mut report = Report::new("claim");
    report.set("masters", a.masters);
    report.set("requests", a.requests);
    report.set("batch", a.batch);
    report.set("pool", a.pool);
    anyhow::ensure!(
        a.db_rtt_ms.is_finite() && a.db_rtt_ms >= 0.0,
        "--db-rtt-ms must be a non-negative number"
    );
    anyhow::ensure!(
        a.nodes.is_empty() || a.db_rtt_ms == 0.0,
        "--nodes and --db-rtt-ms do not combine"
    );
    report.set("nodes", a.nodes.len().max(1));
    report.set("path", format!("{:?}", a.path).to_lowercase());
    // Where the competing stores and the bare baseline connect.
    let url = if a.db_rtt_ms > 0.0 {
        let one_way = Duration::from_secs_f64(a.db_rtt_ms / 2000.0);
        let (_, target) = delay_proxy::reroute(&db.url, 0)?;
        let proxy = delay_proxy::DelayProxy::start(target, one_way)?;
        let (url, _) = delay_proxy::reroute(&db.url, proxy.port)?;
        let rtt = measured_rtt_ms(&url).await?;
        eprintln!("[claim] database round trip through the relay: {rtt:.3} ms");
        report.set("db_rtt_ms", round3(rtt));
        url
    } else {
        db.url.clone()
    };

    let builders = seed::builders(db, "claim", 2).await?;
    let (real_builder, raw_builder) = (builders[0], builders[1]);
    seed::pending(db, &[real_builder], a.requests).await?;
    let raw_ids = seed::pending(db, &[raw_builder], a.requests).await?;
    eprintln!("[claim] seeded 2 x {} pending requests", a.requests);

    // Real claim code.
    let mut stores = Vec::new();
    let url_of = |i: usize| match a.nodes.len() {
        0 => url.clone(),
        n => format!("{}/{}", a.nodes[i % n].trim_end_matches('/'), db.name),
    };
    for i in 0..a.masters {
        let store = Store::connect_with(&url_of(i), a.pool).await?;
        let store = match a.path {
            ClaimPath::Procedures => store,
            ClaimPath::Scripts => store.without_procedures(),
            ClaimPath::Stepwise => store.stepwise(),
        };
        let me = store.register_master(&format!("bench-m{i}")).await?;
        stores.push((store, me.id));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (store, me) in stores.clone() {
        let pool = db.pool.clone();
        let batch = a.batch;
        tasks.push(tokio::spawn(async move {
            claim_until_empty(&store, me, real_builder, batch, &pool).await
        }));
    }
    let mut tallies = Vec::new();
    for t in tasks {
        tallies.push(t.await.context("claiming task")??);
    }
    let real_elapsed = start.elapsed();
    for (store, _) in &stores {
        store.close().await;
    }
    let real_rate = a.requests as f64 / real_elapsed.as_secs_f64();
    eprintln!("[claim] real: {real_rate:.0} requests/s in {real_elapsed:?}");

    // Bare compare-and-swap, same concurrency.
    let raw_ids = Arc::new(raw_ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut pools = Vec::new();
    for i in 0..a.masters {
        pools.push(raw_pool(&url_of(i), a.pool).await?);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, pool) in pools.iter().enumerate() {
        let (pool, ids, next) = (pool.clone(), raw_ids.clone(), next.clone());
        let me = 1_000_000 + i as i64;
        tasks.push(tokio::spawn(async move {
            bare_cas(&pool, me, &ids, &next).await
        }));
    }
    let mut raw_failed = 0u64;
    for t in tasks {
        raw_failed += t.await.context("bare CAS task")??;
    }
    let raw_elapsed = start.elapsed();
    for p in &pools {
        p.close().await;
    }
    let raw_rate = a.requests as f64 / raw_elapsed.as_secs_f64();
    eprintln!("[claim] bare CAS: {raw_rate:.0} requests/s in {raw_elapsed:?}");

    // Checks.
    let mut seen = HashSet::new();
    let mut doubled = 0usize;
    for t in &tallies {
        for id in &t.completed {
            if !seen.insert(*id) {
                doubled += 1;
            }
        }
    }
    let in_db_done = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM buildrequests WHERE builderid = {real_builder} \
             AND complete = 1 AND claimed_by_masterid IS NOT NULL"
        ))
        .await?;
    let in_db_open = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM buildrequests WHERE builderid = {real_builder} AND complete = 0"
        ))
        .await?;
    let mut per_master_agrees = true;
    for ((_, me), t) in stores.iter().zip(&tallies) {
        let n = db
            .scalar(&format!(
                "SELECT COUNT(*) FROM buildrequests WHERE builderid = {real_builder} \
                 AND complete = 1 AND claimed_by_masterid = {me}"
            ))
            .await?;
        per_master_agrees &= n == t.completed.len() as i64;
    }
    let short: u64 = tallies.iter().map(|t| t.short_completions).sum();
    let exactly_once = doubled == 0
        && seen.len() == a.requests
        && in_db_done == a.requests as i64
        && in_db_open == 0
        && per_master_agrees
        && short == 0;
    report.check(exactly_once, || {
        format!(
            "not completed exactly once: {} distinct completions of {} (doubled {doubled}), \
             database: {in_db_done} complete, {in_db_open} open, per-master counts agree: \
             {per_master_agrees}, completions refused after a won claim: {short}",
            seen.len(),
            a.requests
        )
    });
    let raw_done = db
        .scalar(&format!(
            "SELECT COUNT(*) FROM buildrequests WHERE builderid = {raw_builder} AND complete = 1"
        ))
        .await?;
    report.check(raw_failed == 0 && raw_done == a.requests as i64, || {
        format!("bare CAS baseline: {raw_failed} failed updates, {raw_done} complete")
    });

    report.set("requests_per_sec", real_rate.round());
    report.set(
        "lost_races",
        tallies.iter().map(|t| t.lost_races).sum::<u64>(),
    );
    report.set(
        "transient_errors",
        tallies.iter().map(|t| t.transient_errors).sum::<u64>(),
    );
    report.set("completed_exactly_once", exactly_once);
    report.set("raw_per_sec", raw_rate.round());
    report.set("ratio", round3(real_rate / raw_rate));
    let mean_ms = |n: u64, t: Duration| round3(t.as_secs_f64() * 1000.0 / n.max(1) as f64);
    let picks: u64 = tallies.iter().map(|t| t.picks).sum();
    let pick_time: Duration = tallies.iter().map(|t| t.pick_time).sum();
    let completes: u64 = tallies.iter().map(|t| t.completes).sum();
    let complete_time: Duration = tallies.iter().map(|t| t.complete_time).sum();
    report.set("pick_mean_ms", mean_ms(picks, pick_time));
    report.set("complete_mean_ms", mean_ms(completes, complete_time));
    report.set(
        "raw_pair_mean_ms",
        round3(a.masters as f64 * 1000.0 / raw_rate),
    );
    report.set(
        "per_master_completed",
        tallies
            .iter()
            .map(|t| t.completed.len())
            .collect::<Vec<_>>(),
    );
    Ok(report)
}

/// One master's loop: claim a batch, complete it, until nothing is left to claim.
async fn claim_until_empty(
    store: &Store,
    me: i64,
    builder: i64,
    batch: usize,
    check: &MySqlPool,
) -> anyhow::Result<MasterTally> {
    let mut tally = MasterTally::default();
    loop {
        let t = Instant::now();
        let picked = store
            .pick_and_claim_per_builder(me, &[(BuilderId(builder), batch)])
            .await
            .map(|round| round.request_ids());
        let won: Vec<i64> = match picked {
            Ok(won) => won,
            // A conflict that outlasted the store's retries (on Galera, a
            // certification failure): as the claim loop does, try again.
            Err(e) if e.is_transient() => {
                tally.transient_errors += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        tally.picks += 1;
        tally.pick_time += t.elapsed();
        if won.is_empty() {
            // Lost to another master, or the queue is empty?
            let unclaimed: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM buildrequests WHERE builderid = ? AND complete = 0 \
                 AND claimed_by_masterid IS NULL LIMIT 1",
            )
            .bind(builder)
            .fetch_optional(check)
            .await?;
            if unclaimed.is_none() {
                return Ok(tally);
            }
            tally.lost_races += 1;
            continue;
        }
        let t = Instant::now();
        let done = loop {
            match store.complete_requests(me, &won, Results::Success).await {
                Ok(done) => break done,
                Err(e) if e.is_transient() => tally.transient_errors += 1,
                Err(e) => return Err(e.into()),
            }
        };
        tally.completes += 1;
        tally.complete_time += t.elapsed();
        if done.len() != won.len() {
            tally.short_completions += (won.len() - done.len()) as u64;
        }
        tally.completed.extend(done);
    }
}

/// Median time of a trivial query over one connection to `url`.
async fn measured_rtt_ms(url: &str) -> anyhow::Result<f64> {
    let pool = raw_pool(url, 1).await?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        sqlx::query("SELECT 1").execute(&pool).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    pool.close().await;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

async fn raw_pool(url: &str, connections: u32) -> anyhow::Result<MySqlPool> {
    // The same session settings as the Store's pool.
    Ok(MySqlPoolOptions::new()
        .max_connections(connections)
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET time_zone = '+00:00'").await?;
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect(url)
        .await?)
}

/// Bare claim + complete, one autocommit primary-key CAS each, over ids
/// handed out by a shared counter; returns the updates that changed no row.
async fn bare_cas(
    pool: &MySqlPool,
    me: i64,
    ids: &[i64],
    next: &AtomicUsize,
) -> anyhow::Result<u64> {
    let mut failed = 0;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(id) = ids.get(i) else {
            return Ok(failed);
        };
        let claimed = sqlx::query(
            "UPDATE buildrequests SET claimed_by_masterid = ?, claimed_at = NOW(6) \
             WHERE id = ? AND claimed_by_masterid IS NULL AND complete = 0",
        )
        .bind(me)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected();
        let completed = sqlx::query(
            "UPDATE buildrequests SET complete = 1, results = 0, complete_at = NOW(6) \
             WHERE id = ? AND claimed_by_masterid = ? AND complete = 0",
        )
        .bind(id)
        .bind(me)
        .execute(pool)
        .await?
        .rows_affected();
        failed += u64::from(claimed != 1) + u64::from(completed != 1);
    }
}
