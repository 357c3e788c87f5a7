//! `memory`: one master and the gateway with N simulated workers attached
//! (each its own gRPC connection; see `sim_worker`). Reports the master's
//! resident memory with them attached and after running builds on them,
//! and the gateway's memory per worker: (RSS with the workers − RSS before)
//! / N. The cluster file lists all N workers.
//!
//! Correctness: every forced build completes successfully exactly once,
//! and the simulated workers answered exactly one command per build.

use std::time::Duration;

use crate::cluster::{Spec, force, worker_names};
use crate::database::BenchDb;
use crate::report::{Report, round3};
use crate::sim_worker::SimWorkers;
use crate::timing::{check_exactly_once, wait_complete};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Simulated workers.
    #[arg(long, default_value_t = 1000, value_parser = crate::positive::<usize>())]
    workers: usize,
    /// Builds run on them after they attached.
    #[arg(long, default_value_t = 200, value_parser = crate::positive::<usize>())]
    builds: usize,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

fn mib(kib: u64) -> f64 {
    round3(kib as f64 / 1024.0)
}

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.workers = a.workers.min(100);
        a.builds = a.builds.min(20);
    }
    anyhow::ensure!(a.workers > 0, "need at least one worker");
    let mut report = Report::new("memory");
    report.set("workers", a.workers);
    report.set("builds", a.builds);

    let workers = worker_names(a.workers);
    let builders = format!(
        "[[builders]]\nname = \"mem\"\nworkers = {}\n  [[builders.steps]]\n  name = \"noop\"\n  \
         command = [\"true\"]\n\n",
        Spec::toml_list(&workers)
    );
    let mut cluster = Spec::new(&db.url, workers.clone(), builders).cluster()?;
    cluster.try_start_gateway()?;
    cluster.try_start_master("m1")?;
    cluster
        .wait_master_linked(0, Duration::from_secs(60))
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gateway_pid = cluster.gateway.as_ref().map(|g| g.pid()).unwrap_or(0);
    let master_pid = cluster.masters[0].proc.pid();
    let rss = |pid| flotilla_testkit::proc::rss_kib(pid).unwrap_or(0);
    let (gw_before, master_before) = (rss(gateway_pid), rss(master_pid));

    let sims = SimWorkers::start(&cluster.gateway_url(), &workers)?;
    flotilla_testkit::wait_for(
        &format!("{} simulated workers registered", a.workers),
        Duration::from_secs(180),
        || async { (sims.registered() >= a.workers).then_some(()) },
    )
    .await?;
    cluster
        .wait_workers(a.workers, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (gw_with, master_with) = (rss(gateway_pid), rss(master_pid));
    eprintln!(
        "[memory] {} workers attached: gateway {} -> {} KiB, master {} -> {} KiB",
        a.workers, gw_before, gw_with, master_before, master_with
    );

    let mut ids = Vec::new();
    for _ in 0..a.builds {
        ids.push(force(&cluster, 0, "mem").await?);
    }
    wait_complete(&db.pool, &ids, Duration::from_secs(120)).await?;
    let master_after = rss(master_pid);
    let gw_after = rss(gateway_pid);
    for p in check_exactly_once(&db.pool, &ids).await? {
        report.check(false, || p);
    }
    let answered = sims.commands.load(std::sync::atomic::Ordering::SeqCst);
    report.check(answered == a.builds as u64, || {
        format!(
            "simulated workers answered {answered} commands for {} builds",
            a.builds
        )
    });

    report.set("master_rss_before_mb", mib(master_before));
    report.set("master_rss_mb", mib(master_with.max(master_after)));
    report.set("master_rss_after_builds_mb", mib(master_after));
    report.set("gateway_rss_before_mb", mib(gw_before));
    report.set("gateway_rss_mb", mib(gw_with));
    report.set("gateway_rss_after_builds_mb", mib(gw_after));
    report.set(
        "gateway_kib_per_worker",
        round3(gw_with.saturating_sub(gw_before) as f64 / a.workers as f64),
    );
    drop(sims);
    drop(cluster);
    Ok(report)
}
