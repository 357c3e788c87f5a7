//! Retention: the janitor deletes what is older than the horizons of the
//! `[retention]` section, so the database does not grow without bound.
//!
//! [`run_once`] is what `flotilla janitor` runs; [`run_periodic`] is the
//! task every master starts, of which only the master that owns the
//! `janitor` object (the same lease that gives each scheduler one master)
//! actually cleans up, every `retention.interval`.
//!
//! Deletes go in batches of `retention.batch_size` rows by primary key,
//! each its own short statement, with `retention.pause` between batches:
//! the claim path works on incomplete requests only, and never waits long
//! behind a clean-up. The order (log contents, builds, buildsets, source
//! stamps, changes, then old master incarnations that nothing refers to any
//! more) deletes children before what they hang off.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::db::{Cutoffs, DbError, JanitorCounts, Store};
use crate::metrics::{JANITOR_DELETED, JANITOR_RUNS};
use crate::state::MasterState;

/// `object_owners` kind and name of the periodic janitor.
const OWNER_KIND: &str = "janitor";
const OWNER_NAME: &str = "janitor";
/// `object_state` entry: log contents of builds finished before this are gone.
const STATE_OBJECT: &str = "janitor";
const LOGS_DONE_UNTIL: &str = "logs_done_until";
/// The first periodic run waits at most this long after the master starts.
const FIRST_RUN_AFTER: Duration = Duration::from_secs(60);

/// The cut-off times for these horizons, from the database's clock.
pub async fn cutoffs(store: &Store, cfg: &RetentionConfig) -> Result<Cutoffs, DbError> {
    let now = store.db_now().await?;
    let before = |h: Option<crate::config::Dur>| {
        h.and_then(|d| chrono::Duration::from_std(d.get()).ok())
            .map(|d| now - d)
    };
    Ok(Cutoffs {
        logs: before(cfg.logs),
        builds: before(cfg.builds),
        requests: before(cfg.requests),
        changes: before(cfg.changes),
    })
}

/// Deletes (or with `dry_run`, counts) everything past the horizons once.
pub async fn run_once(
    store: &Store,
    cfg: &RetentionConfig,
    dry_run: bool,
) -> Result<JanitorCounts, DbError> {
    let c = cutoffs(store, cfg).await?;
    if dry_run {
        return store.janitor_counts(&c).await;
    }
    let batch = i64::from(cfg.batch_size.max(1));
    let pause = cfg.pause.get();
    let mut out = JanitorCounts::default();
    if let Some(cut) = c.logs {
        let done_until = logs_done_until(store).await;
        // Only builds newer than the last run's cut-off can still hold chunks.
        let after = done_until.filter(|d| *d <= cut);
        loop {
            let ids = store.janitor_old_logs(cut, after, batch).await?;
            if ids.is_empty() {
                break;
            }
            out.log_chunks += counted("log_chunks", store.janitor_delete_log_chunks(&ids).await?);
            tokio::time::sleep(pause).await;
        }
        let mark = serde_json::Value::String(cut.to_rfc3339());
        store
            .set_state(STATE_OBJECT, LOGS_DONE_UNTIL, &mark)
            .await?;
    }
    if let Some(cut) = c.builds {
        loop {
            let ids = store.janitor_old_builds(cut, batch).await?;
            if ids.is_empty() {
                break;
            }
            out.builds += counted("builds", store.janitor_delete_builds(&ids).await?);
            tokio::time::sleep(pause).await;
        }
    }
    if let Some(cut) = c.requests {
        loop {
            let ids = store.janitor_old_buildsets(&c, batch).await?;
            if ids.is_empty() {
                break;
            }
            out.buildsets += counted("buildsets", store.janitor_delete_buildsets(&ids).await?);
            tokio::time::sleep(pause).await;
        }
        loop {
            let ids = store.janitor_orphan_sourcestamps(cut, batch).await?;
            if ids.is_empty() {
                break;
            }
            out.sourcestamps += counted(
                "sourcestamps",
                store.janitor_delete_sourcestamps(&ids).await?,
            );
            tokio::time::sleep(pause).await;
        }
    }
    if let Some(cut) = c.changes {
        loop {
            let ids = store.janitor_old_changes(cut, batch).await?;
            if ids.is_empty() {
                break;
            }
            out.changes += counted("changes", store.janitor_delete_changes(&ids).await?);
            tokio::time::sleep(pause).await;
        }
    }
    // Old incarnations of masters go with the build horizon, last, once the
    // builds and requests that referred to them are gone.
    if c.builds.is_some() {
        // A candidate that gained a reference since it was read stays (the
        // delete re-checks), so stop when a batch removes nothing.
        loop {
            let ids = store.janitor_old_masters(&c, batch).await?;
            if ids.is_empty() {
                break;
            }
            let n = counted("masters", store.janitor_delete_masters(&c, &ids).await?);
            out.masters += n;
            if n == 0 {
                break;
            }
            tokio::time::sleep(pause).await;
        }
    }
    store.prune_stop_requests().await?;
    ::metrics::counter!(JANITOR_RUNS).increment(1);
    Ok(out)
}

fn counted(kind: &'static str, n: u64) -> u64 {
    ::metrics::counter!(JANITOR_DELETED, "kind" => kind).increment(n);
    n
}

async fn logs_done_until(store: &Store) -> Option<DateTime<Utc>> {
    let v = store
        .get_state(STATE_OBJECT, LOGS_DONE_UNTIL)
        .await
        .ok()??;
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Every master runs this; the one that owns the janitor cleans up every
/// `retention.interval`. Does nothing when no horizon is set.
pub async fn run_periodic(state: Arc<MasterState>, stop: CancellationToken) {
    let cfg = state.config.retention.clone();
    if !cfg.enabled() {
        return;
    }
    let interval = cfg.interval.get().max(Duration::from_secs(1));
    // The owner renews by claiming again each interval; the lease outlives that.
    let lease = interval * 2 + state.config.cluster.master_timeout.get();
    let mut wait = interval.min(FIRST_RUN_AFTER);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = interval;
        if state.is_draining() {
            continue;
        }
        let me = state.master_id();
        match state
            .store
            .claim_object(me, OWNER_KIND, OWNER_NAME, lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                ::metrics::counter!(crate::metrics::DATABASE_ERRORS).increment(1);
                tracing::warn!(error = %e, "janitor: cannot claim ownership; will retry");
                continue;
            }
        }
        let started = std::time::Instant::now();
        let run = tokio::select! {
            r = run_once(&state.store, &cfg, false) => r,
            _ = stop.cancelled() => return,
        };
        match run {
            Ok(n) => tracing::info!(
                log_chunks = n.log_chunks,
                builds = n.builds,
                buildsets = n.buildsets,
                sourcestamps = n.sourcestamps,
                changes = n.changes,
                masters = n.masters,
                took = ?started.elapsed(),
                "janitor run finished"
            ),
            Err(e) => {
                ::metrics::counter!(crate::metrics::DATABASE_ERRORS).increment(1);
                tracing::warn!(error = %e, "janitor run failed; will retry next interval");
            }
        }
    }
}
