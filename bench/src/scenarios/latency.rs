//! `latency`: the whole stack as processes — one gateway, M masters, W real
//! idle workers — and B builds forced one after another through the masters'
//! APIs in turn. Each build's single step writes `date +%s%N` into a file
//! named after its request id; latency = that time minus the time taken
//! just before `POST /api/v1/force`. The next build is forced once the
//! previous request is complete, so every build finds idle workers.
//!
//! Also reported: the share of builds run by the master that received the
//! API call (it is woken at once; the others find work by polling every
//! `cluster.poll_interval`) and the latency of each kind.
//!
//! Correctness: every request completed successfully by exactly one build.

use std::collections::HashMap;
use std::time::Duration;

use crate::cluster::{Spec, force, worker_names};
use crate::database::BenchDb;
use crate::report::{Report, round3};
use crate::stats::{max, percentile};
use crate::timing::{check_exactly_once, now_ns, wait_complete};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 3, value_parser = crate::positive::<usize>())]
    masters: usize,
    /// Real worker processes, all serving the one builder.
    #[arg(long, default_value_t = 6, value_parser = crate::positive::<usize>())]
    workers: usize,
    /// Builds to force, one at a time.
    #[arg(long, default_value_t = 300, value_parser = crate::positive::<usize>())]
    builds: usize,
    /// `cluster.poll_interval` to run with (default: the cluster default).
    #[arg(long)]
    poll_interval: Option<String>,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.builds = a.builds.min(30);
        a.workers = a.workers.min(3);
    }
    anyhow::ensure!(
        a.masters > 0 && a.workers > 0 && a.builds > 0,
        "sizes must be positive"
    );
    let mut report = Report::new("latency");
    report.set("masters", a.masters);
    report.set("workers", a.workers);
    report.set("builds", a.builds);
    report.set(
        "poll_interval",
        a.poll_interval.clone().unwrap_or_else(|| "default".into()),
    );

    let workers = worker_names(a.workers);
    let stamps = tempfile::Builder::new()
        .prefix("flotilla-bench-stamps-")
        .tempdir()?;
    let builders = format!(
        "[[builders]]\nname = \"lat\"\nworkers = {}\n  [[builders.steps]]\n  name = \"stamp\"\n  \
         command = [\"sh\", \"-c\", \"date +%s%N > {}/$FLOTILLA_BUILDREQUEST_ID.tmp && mv {}/$FLOTILLA_BUILDREQUEST_ID.tmp {}/$FLOTILLA_BUILDREQUEST_ID\"]\n\n",
        Spec::toml_list(&workers),
        stamps.path().display(),
        stamps.path().display(),
        stamps.path().display(),
    );
    let mut spec = Spec::new(&db.url, workers.clone(), builders);
    spec.poll_interval = a.poll_interval.clone();
    let mut cluster = spec.cluster()?;
    cluster
        .try_start_all(a.masters, Duration::from_secs(60))
        .await?;
    eprintln!(
        "[latency] cluster up: {} masters, {} workers",
        a.masters, a.workers
    );

    let mut samples = Vec::with_capacity(a.builds);
    let mut received_by = HashMap::new();
    let mut ids = Vec::with_capacity(a.builds);
    for i in 0..a.builds {
        let m = i % a.masters;
        let t0 = now_ns();
        let id = force(&cluster, m, "lat").await?;
        let path = stamps.path().join(id.to_string());
        let started: i128 = flotilla_testkit::wait_for_every(
            &format!("the step of request {id} to start"),
            Duration::from_secs(60),
            Duration::from_millis(2),
            || async {
                let text = tokio::fs::read_to_string(&path).await.ok()?;
                text.trim().parse().ok()
            },
        )
        .await?;
        samples.push((started - t0) as f64 / 1e6);
        received_by.insert(id, cluster.masters[m].name.clone());
        ids.push(id);
        wait_complete(&db.pool, &[id], Duration::from_secs(60)).await?;
        if (i + 1) % 50 == 0 {
            eprintln!("[latency] {} builds", i + 1);
        }
    }

    // Which master ran each build?
    let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let ran_by: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT b.buildrequestid, m.name FROM builds b JOIN masters m ON m.id = b.masterid \
         WHERE b.buildrequestid IN ({list}) AND b.results = 0"
    )))
    .fetch_all(&db.pool)
    .await?;
    let ran_by: HashMap<i64, String> = ran_by.into_iter().collect();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for (id, ms) in ids.iter().zip(&samples) {
        if ran_by.get(id) == received_by.get(id) {
            local.push(*ms);
        } else {
            remote.push(*ms);
        }
    }

    for p in check_exactly_once(&db.pool, &ids).await? {
        report.check(false, || p);
    }
    report.set("p50_ms", round3(percentile(&samples, 50.0)));
    report.set("p99_ms", round3(percentile(&samples, 99.0)));
    report.set("max_ms", round3(max(&samples)));
    report.set(
        "same_master_share",
        round3(local.len() as f64 / samples.len() as f64),
    );
    // null where no build was of that kind.
    let pct = |v: &[f64], p: f64| (!v.is_empty()).then(|| round3(percentile(v, p)));
    report.set("same_master_p50_ms", pct(&local, 50.0));
    report.set("other_master_p50_ms", pct(&remote, 50.0));
    report.set("other_master_p99_ms", pct(&remote, 99.0));
    drop(cluster);
    Ok(report)
}
