//! `scale`: claim time and master start time with P pending requests over
//! 100 builders.
//!
//! 1. With 1,000 pending (the baseline), then with P, a store claims one
//!    request of one builder (`pick_and_claim_per_builder`, as the claim
//!    loop does) and of any of the 100 builders (`claim_candidates`, then
//!    `pick_and_claim_per_builder` on the best, as the claim loop serves a
//!    worker of every builder), and
//!    gives it back untimed; `claim_p50_ms` is the median of the first, and
//!    `claim_ratio_vs_1k` compares it with the baseline of the same run.
//! 2. A real master process starts with one real worker waiting at the
//!    gateway for builder 1; `master_start_ms` runs from spawning the
//!    process to its first claim appearing in `buildrequests`.
//!
//! Correctness: the queue still holds every request (none lost), the
//! master's first request completes with exactly one successful build.

use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_master::db::{BuilderId, Store};

use crate::cluster::Spec;
use crate::database::BenchDb;
use crate::report::{Report, ms, round3};
use crate::seed;
use crate::stats::percentile;
use crate::timing::{check_exactly_once, wait_complete};

const BASELINE: usize = 1000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pending requests.
    #[arg(long, default_value_t = 100_000, value_parser = crate::positive::<usize>())]
    pending: usize,
    #[arg(long, default_value_t = 100, value_parser = crate::positive::<usize>())]
    builders: usize,
    /// Timed claims per measurement.
    #[arg(long, default_value_t = 200, value_parser = crate::positive::<usize>())]
    samples: usize,
    /// Small sizes, for CI.
    #[arg(long)]
    quick: bool,
}

pub async fn run(db: &BenchDb, mut a: Args) -> anyhow::Result<Report> {
    if a.quick {
        a.pending = a.pending.min(BASELINE);
        a.samples = a.samples.min(50);
    }
    anyhow::ensure!(
        a.pending >= a.builders && a.builders > 0 && a.samples > 0,
        "need at least one pending request per builder"
    );
    let mut report = Report::new("scale");
    report.set("pending", a.pending);
    report.set("builders", a.builders);
    report.set("samples", a.samples);

    let builders = seed::builders(db, "b", a.builders).await?;
    let store = Store::connect_with(&db.url, 2).await?;
    let me = store.register_master("bench-claimer").await?.id;

    let base = a.pending.min(BASELINE);
    seed::pending(db, &builders, base).await?;
    let (base_one, base_any) = time_claims(&store, me, &builders, a.samples).await?;
    eprintln!("[scale] {base} pending: claim p50 {base_one:.3} ms (any builder {base_any:.3} ms)");
    let (one, any) = if a.pending > base {
        let t = Instant::now();
        seed::pending(db, &builders, a.pending - base).await?;
        eprintln!(
            "[scale] seeded {} more in {:?}",
            a.pending - base,
            t.elapsed()
        );
        time_claims(&store, me, &builders, a.samples).await?
    } else {
        (base_one, base_any)
    };
    eprintln!(
        "[scale] {} pending: claim p50 {one:.3} ms (any builder {any:.3} ms)",
        a.pending
    );
    store.deactivate_master(me).await?;
    store.close().await;
    report.set("baseline_pending", base);
    report.set("baseline_claim_p50_ms", round3(base_one));
    report.set("claim_p50_ms", round3(one));
    report.set("claim_ratio_vs_1k", round3(one / base_one));
    report.set("baseline_claim_any_p50_ms", round3(base_any));
    report.set("claim_any_p50_ms", round3(any));

    // A real master starting on the full queue.
    let names: Vec<String> = (0..a.builders)
        .map(|i| seed::builder_name("b", i))
        .collect();
    let mut toml = String::new();
    for (i, name) in names.iter().enumerate() {
        // Builder 1 is served by the running worker; the others by one
        // that never connects.
        let worker = if i == 0 { "w0001" } else { "w0002" };
        toml.push_str(&format!(
            "[[builders]]\nname = \"{name}\"\nworkers = [\"{worker}\"]\n  [[builders.steps]]\n  \
             name = \"ok\"\n  command = [\"true\"]\n\n"
        ));
    }
    let spec = Spec::new(&db.url, vec!["w0001".into(), "w0002".into()], toml);
    let mut cluster = spec.cluster()?;
    cluster.try_start_gateway()?;
    cluster.try_start_worker("w0001")?;
    // Let the worker reach the gateway and wait there for a master.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spawned = Instant::now();
    cluster.try_start_master("m1")?;
    let first: i64 = flotilla_testkit::wait_for_every(
        "the master's first claim",
        Duration::from_secs(120),
        Duration::from_millis(2),
        || async {
            sqlx::query_scalar(
                "SELECT br.id FROM masters m JOIN buildrequests br \
                 ON br.claimed_by_masterid = m.id WHERE m.name = 'm1' LIMIT 1",
            )
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await?;
    let start_ms = ms(spawned.elapsed());
    eprintln!("[scale] master start to first claim: {start_ms:.1} ms");
    report.set("master_start_ms", start_ms);

    wait_complete(&db.pool, &[first], Duration::from_secs(60))
        .await
        .context("the master's first build")?;
    for p in check_exactly_once(&db.pool, &[first]).await? {
        report.check(false, || p);
    }
    let total = db.scalar("SELECT COUNT(*) FROM buildrequests").await?;
    report.check(total == a.pending as i64, || {
        format!("{total} requests in the queue, seeded {}", a.pending)
    });
    drop(cluster);
    Ok(report)
}

/// Median time (ms) to claim one request of one builder, and of any builder.
async fn time_claims(
    store: &Store,
    me: i64,
    builders: &[i64],
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut one, mut any) = (Vec::new(), Vec::new());
    for s in 0..samples {
        let b = builders[s % builders.len()];
        let t = Instant::now();
        let won = store
            .pick_and_claim_per_builder(me, &[(BuilderId(b), 1)])
            .await?
            .request_ids();
        one.push(ms(t.elapsed()));
        anyhow::ensure!(won.len() == 1, "builder {b} had nothing to claim");
        store.unclaim(me, &won).await?;

        // A worker serving every builder, as the claim loop serves it: look
        // at each builder's best request, then claim the best of them.
        let t = Instant::now();
        let wants: Vec<(i64, usize)> = builders.iter().map(|b| (*b, 1)).collect();
        let best = store
            .claim_candidates(&wants)
            .await?
            .into_iter()
            .min_by_key(|c| (std::cmp::Reverse(c.priority), c.submitted_at, c.id));
        let best = best.context("nothing to claim")?;
        let won = store
            .pick_and_claim_per_builder(me, &[(BuilderId(best.builder_id), 1)])
            .await?
            .request_ids();
        any.push(ms(t.elapsed()));
        anyhow::ensure!(won.len() == 1, "nothing to claim");
        store.unclaim(me, &won).await?;
    }
    Ok((percentile(&one, 50.0), percentile(&any, 50.0)))
}
