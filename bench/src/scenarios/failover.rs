//! `failover`: three masters busy with short builds; one of them, while it
//! runs builds, is killed with SIGKILL. `failover_ms` runs from the kill
//! (database clock) to the moment the last of the requests it held started
//! a build on another master (`builds.started_at`). Target: at most
//! `master_timeout` + 2 s.
//!
//! Correctness: every request, the dead master's included, ends with
//! exactly one successful build, and no two builds of a request overlap.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDateTime;

use crate::cluster::{Spec, force, worker_names};
use crate::database::BenchDb;
use crate::report::{Report, round3};
use crate::timing::{check_exactly_once, db_now, ms_between, wait_complete};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Real worker processes, all serving the one builder.
    #[arg(long, default_value_t = 6, value_parser = crate::positive::<usize>())]
    workers: usize,
    /// Builds forced before the kill (round-robin over the masters).
    #[arg(long, default_value_t = 24, value_parser = crate::positive::<usize>())]
    builds: usize,
    /// How long each build's step sleeps, in seconds.
    #[arg(long, default_value_t = 2.0)]
    step_secs: f64,
    /// `cluster.master_timeout`.
    #[arg(long, default_value = "10s")]
    master_timeout: String,
    /// `cluster.heartbeat_interval`.
    #[arg(long, default_value = "1s")]
    heartbeat_interval: String,
    /// Small sizes and short timeouts, for CI.
    #[arg(long)]
    quick: bool,
}

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.workers = a.workers.min(3);
        a.builds = a.builds.min(9);
        a.step_secs = a.step_secs.min(1.0);
        a.master_timeout = "3s".into();
        a.heartbeat_interval = "500ms".into();
    }
    anyhow::ensure!(a.workers > 0 && a.builds > 0, "sizes must be positive");
    let mut report = Report::new("failover");
    report.set("masters", 3);
    report.set("workers", a.workers);
    report.set("builds", a.builds);
    report.set("step_secs", a.step_secs);
    report.set("master_timeout", a.master_timeout.clone());
    report.set("heartbeat_interval", a.heartbeat_interval.clone());

    let workers = worker_names(a.workers);
    let builders = format!(
        "[[builders]]\nname = \"fo\"\nworkers = {}\n  [[builders.steps]]\n  name = \"work\"\n  \
         command = [\"sleep\", \"{}\"]\n\n",
        Spec::toml_list(&workers),
        a.step_secs
    );
    let mut spec = Spec::new(&db.url, workers.clone(), builders);
    spec.master_timeout = a.master_timeout.clone();
    spec.heartbeat_interval = a.heartbeat_interval.clone();
    let mut cluster = spec.cluster()?;
    cluster.try_start_all(3, Duration::from_secs(60)).await?;
    let per_master: Vec<usize> = {
        let mut v = Vec::new();
        for m in 0..3 {
            v.push(cluster.workers_on(m).await);
        }
        v
    };
    eprintln!("[failover] cluster up; workers per master {per_master:?}");
    // The victim: the master with the most workers, so it surely runs builds.
    let victim = (0..3).max_by_key(|m| per_master[*m]).unwrap_or(0);
    let victim_name = cluster.masters[victim].name.clone();
    let victim_id: i64 = sqlx::query_scalar(
        "SELECT id FROM masters WHERE name = ? AND active = 1 ORDER BY id DESC LIMIT 1",
    )
    .bind(&victim_name)
    .fetch_one(&db.pool)
    .await
    .context("find the victim's master row")?;

    let mut ids = Vec::new();
    for i in 0..a.builds {
        ids.push(force(&cluster, i % 3, "fo").await?);
    }
    flotilla_testkit::wait_for(
        "the victim to run builds",
        Duration::from_secs(60),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM builds WHERE masterid = ? AND complete_at IS NULL",
            )
            .bind(victim_id)
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (n > 0).then_some(())
        },
    )
    .await?;
    let killed_at = db_now(&db.pool).await?;
    cluster.masters[victim].proc.kill9();
    let held: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM buildrequests WHERE claimed_by_masterid = ? AND complete = 0 ORDER BY id",
    )
    .bind(victim_id)
    .fetch_all(&db.pool)
    .await?;
    eprintln!("[failover] killed {victim_name} (master id {victim_id}) holding requests {held:?}");
    anyhow::ensure!(!held.is_empty(), "the victim held no requests when killed");

    let list = held
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!(
        "SELECT buildrequestid, MIN(started_at) FROM builds \
         WHERE buildrequestid IN ({list}) AND masterid <> {victim_id} GROUP BY buildrequestid"
    );
    let master_timeout = a
        .master_timeout
        .parse::<flotilla_master::config::Dur>()
        .map_err(|e| anyhow::anyhow!("--master-timeout {}: {e}", a.master_timeout))?
        .get();
    let restarted: HashMap<i64, NaiveDateTime> = flotilla_testkit::wait_for(
        "the dead master's requests to run elsewhere",
        master_timeout + Duration::from_secs(120),
        || async {
            let rows: Vec<(i64, NaiveDateTime)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                .fetch_all(&db.pool)
                .await
                .ok()?;
            (rows.len() == held.len()).then(|| rows.into_iter().collect())
        },
    )
    .await?;
    let last = restarted.values().max().copied().unwrap_or(killed_at);
    let failover_ms = ms_between(killed_at, last);
    eprintln!("[failover] last request restarted {failover_ms:.0} ms after the kill");

    wait_complete(
        &db.pool,
        &ids,
        Duration::from_secs_f64(60.0 + a.step_secs * a.builds as f64),
    )
    .await?;
    for p in check_exactly_once(&db.pool, &ids).await? {
        report.check(false, || p);
    }
    report.set("victim_requests", held.len());
    report.set("failover_ms", round3(failover_ms));
    report.set(
        "target_ms",
        round3(master_timeout.as_secs_f64() * 1000.0 + 2000.0),
    );
    drop(cluster);
    Ok(report)
}
