//! `logs`: one step writes a large log (`yes … | head -c N` on a real
//! worker). Reports the rate at which the master stored it (bytes in
//! `logchunks` / the step's duration in the database) and the master's
//! resident memory before the build and at its peak, sampled every 50 ms
//! while it runs: it must stay flat, not grow with the log.
//!
//! Then the log is read back through the API (`GET …/steps/0/log`), by one
//! reader and then by three at once, sampling the master's memory the same
//! way: the route streams the log from the database in chunks, so the
//! master's peak must not grow with the log either.
//!
//! Correctness: the request completes successfully with exactly one build,
//! the stored log holds every byte written (plus the worker's header
//! lines), and every read returns exactly the announced `X-Log-Length`
//! bytes, which equal the stored bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono::NaiveDateTime;

use crate::cluster::{Spec, force};
use crate::database::BenchDb;
use crate::report::{Report, round3};
use crate::timing::{check_exactly_once, ms_between, wait_complete};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Size of the step's output, MiB.
    #[arg(long, default_value_t = 200, value_parser = crate::positive::<u64>())]
    mb: u64,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

/// Room for the header lines the worker and master add to a log.
const HEADER_SLACK: i64 = 64 * 1024;

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.mb = a.mb.min(20);
    }
    anyhow::ensure!(a.mb > 0, "--mb must be positive");
    let bytes = a.mb * 1024 * 1024;
    let mut report = Report::new("logs");
    report.set("mb", a.mb);

    let builders = format!(
        "[[builders]]\nname = \"logs\"\nworkers = [\"w0001\"]\n  [[builders.steps]]\n  \
         name = \"spew\"\n  command = [\"sh\", \"-c\", \"yes 'flotilla benchmark log line \
         0123456789 abcdefghijklmnopqrstuvwxyz' | head -c {bytes}\"]\n\n"
    );
    let mut cluster = Spec::new(&db.url, vec!["w0001".into()], builders).cluster()?;
    cluster.try_start_all(1, Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = cluster.masters[0].proc.pid();
    let before = flotilla_testkit::proc::rss_kib(pid).unwrap_or(0);

    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Some(kib) = flotilla_testkit::proc::rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    let id = force(&cluster, 0, "logs").await?;
    let waited = wait_complete(&db.pool, &[id], Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    waited?;
    let after = flotilla_testkit::proc::rss_kib(pid).unwrap_or(0);

    for p in check_exactly_once(&db.pool, &[id]).await? {
        report.check(false, || p);
    }
    let (stored, step_start, step_end): (
        Option<i64>,
        Option<NaiveDateTime>,
        Option<NaiveDateTime>,
    ) = sqlx::query_as(
        "SELECT (SELECT CAST(SUM(LENGTH(c.content)) AS SIGNED) FROM logs l \
                     JOIN logchunks c ON c.logid = l.id \
                     WHERE l.stepid = s.id), s.started_at, s.complete_at \
             FROM builds b JOIN steps s ON s.buildid = b.id \
             WHERE b.buildrequestid = ? AND b.results = 0 ORDER BY s.number LIMIT 1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    let stored = stored.unwrap_or(0);
    let want = bytes as i64;
    report.check(stored >= want && stored <= want + HEADER_SLACK, || {
        format!("stored {stored} bytes of log for {want} written")
    });
    let step_ms = match (step_start, step_end) {
        (Some(s), Some(e)) => ms_between(s, e),
        _ => elapsed.as_secs_f64() * 1000.0,
    };
    let mb_per_sec = stored as f64 / (1024.0 * 1024.0) / (step_ms / 1000.0);
    eprintln!("[logs] stored {stored} bytes in {step_ms:.0} ms: {mb_per_sec:.1} MiB/s");

    let (build_id,): (i64,) = sqlx::query_as(
        "SELECT id FROM builds WHERE buildrequestid = ? AND results = 0 ORDER BY id LIMIT 1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await?;
    let url = format!("{}/api/v1/builds/{build_id}/steps/0/log", cluster.api(0));
    let read_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    let rss_idle = flotilla_testkit::proc::rss_kib(pid).unwrap_or(0);
    let mut read_peaks = Vec::new();
    let mut read_rate = 0.0;
    for readers in [1usize, 3] {
        let peak = Arc::new(AtomicU64::new(rss_idle));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    if let Some(kib) = flotilla_testkit::proc::rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let started = std::time::Instant::now();
        let reads: Vec<_> = (0..readers)
            .map(|_| {
                let (client, url) = (read_client.clone(), url.clone());
                tokio::spawn(async move { read_all(&client, &url).await })
            })
            .collect();
        let mut results = Vec::new();
        for r in reads {
            results.push(r.await?);
        }
        let secs = started.elapsed().as_secs_f64();
        done.store(true, Ordering::SeqCst);
        let _ = sampler.await;
        for r in results {
            let (announced, got) = r?;
            report.check(announced == got && got == stored as u64, || {
                format!("log read returned {got} bytes, announced {announced}, stored {stored}")
            });
        }
        if readers == 1 {
            read_rate = stored as f64 / (1024.0 * 1024.0) / secs;
        }
        read_peaks.push(peak.load(Ordering::SeqCst));
        eprintln!(
            "[logs] {readers} reader(s) of the {stored}-byte log: {secs:.1} s, master RSS peak {:.1} MiB",
            peak.load(Ordering::SeqCst) as f64 / 1024.0
        );
    }

    let mib = |kib: u64| round3(kib as f64 / 1024.0);
    report.set("read_mb_per_sec", round3(read_rate));
    report.set("master_rss_read_idle_mb", mib(rss_idle));
    report.set("master_rss_read1_peak_mb", mib(read_peaks[0]));
    report.set("master_rss_read3_peak_mb", mib(read_peaks[1]));
    report.set("stored_bytes", stored);
    report.set("step_ms", round3(step_ms));
    report.set("mb_per_sec", round3(mb_per_sec));
    report.set("end_to_end_sec", round3(elapsed.as_secs_f64()));
    report.set("master_rss_before_mb", mib(before));
    report.set("master_rss_peak_mb", mib(peak.load(Ordering::SeqCst)));
    report.set("master_rss_after_mb", mib(after));
    drop(cluster);
    Ok(report)
}

/// Reads the whole log through the API without keeping it; returns the
/// announced `X-Log-Length` and the bytes received.
async fn read_all(client: &reqwest::Client, url: &str) -> anyhow::Result<(u64, u64)> {
    let mut resp = client.get(url).send().await?.error_for_status()?;
    let announced: u64 = resp
        .headers()
        .get("x-log-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("log response without X-Log-Length"))?;
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len() as u64;
    }
    Ok((announced, got))
}
