//! The maintenance loop of a master: heartbeat (`masters.last_active`),
//! pick up `draining` set through any master's API, release the claims of
//! dead masters and of expired leases, and renew this master's own claims.
//!
//! It also fences: when heartbeats have failed for `master_timeout / 2`, the
//! builds here are stopped before any other master may take them over; and
//! when the database says this incarnation was declared dead, everything it
//! ran is stopped and it joins again as a new incarnation.
//!
//! A master reaps others only after its own heartbeats have succeeded for a
//! whole `master_timeout`: when the database comes back after an outage,
//! every master's `last_active` is old, and without this grace the first
//! master to recover would declare all the others dead.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AbortReason, MasterState};
use crate::metrics as m;

pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let t = state.config.cluster.clone();
    let beat = t.heartbeat_interval.get();
    let fence_after = t.master_timeout.get() / 2;
    let mut last_ok = Instant::now();
    // Since when heartbeats have succeeded without a gap.
    let mut healthy_since = Instant::now();
    let mut rebalancer = super::rebalance::Rebalancer::default();
    let mut fenced_builds = false;
    let mut next_renew = Instant::now() + t.claim_renew_interval.get();
    let mut was_draining = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = stop.cancelled() => return,
        }
        match state.store.heartbeat(state.master_id()).await {
            Ok(true) => {
                if !state.db_healthy.swap(true, Ordering::SeqCst) {
                    tracing::info!("database reachable again");
                    metrics::counter!(m::DATABASE_RECONNECTS).increment(1);
                    healthy_since = Instant::now();
                    state.wake.notify_one();
                }
                last_ok = Instant::now();
                fenced_builds = false;
            }
            Ok(false) => {
                tracing::error!(
                    "this incarnation was declared dead by the cluster; stopping its builds and joining again"
                );
                state.db_healthy.store(false, Ordering::SeqCst);
                match super::rejoin(&state).await {
                    Ok(()) => {
                        state.db_healthy.store(true, Ordering::SeqCst);
                        last_ok = Instant::now();
                        healthy_since = Instant::now();
                        fenced_builds = false;
                        state.wake.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "could not join again; retrying"),
                }
                continue;
            }
            Err(e) => {
                metrics::counter!(m::DATABASE_ERRORS).increment(1);
                if state.db_healthy.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "heartbeat failed; not claiming until the database is back");
                }
                if !fenced_builds && last_ok.elapsed() >= fence_after {
                    tracing::error!(
                        "no heartbeat for {:?}: stopping running builds before other masters may take them over",
                        last_ok.elapsed()
                    );
                    state.abort_builds(None, AbortReason::LostClaim);
                    fenced_builds = true;
                }
                continue;
            }
        }
        let may_reap = healthy_since.elapsed() >= t.master_timeout.get();
        if let Err(e) = housekeeping(&state, may_reap, &mut was_draining, &mut next_renew).await {
            metrics::counter!(m::DATABASE_ERRORS).increment(1);
            tracing::warn!(error = %e, "maintenance step failed; will retry");
        }
        if let Err(e) = rebalancer.run_once(&state).await {
            tracing::debug!(error = %e, "rebalancing idle workers failed; will retry");
        }
    }
}

async fn housekeeping(
    state: &Arc<MasterState>,
    may_reap: bool,
    was_draining: &mut bool,
    next_renew: &mut Instant,
) -> Result<(), crate::db::DbError> {
    let t = &state.config.cluster;
    let store = &state.store;
    if let Some(row) = store.master_flags(state.master_id()).await?
        && !state.shutdown.graceful.is_cancelled()
        && row.draining != *was_draining
    {
        *was_draining = row.draining;
        state.draining.store(row.draining, Ordering::SeqCst);
        tracing::info!(draining = row.draining, "drain flag changed");
        state.wake.notify_one();
    }
    if may_reap {
        reap_others(state).await?;
    }
    crate::http::pick_up_stop_requests(state).await?;
    if Instant::now() >= *next_renew {
        *next_renew = Instant::now() + t.claim_renew_interval.get();
        let held = state.running_requests();
        if !held.is_empty() {
            let renewal = store.renew_claims(state.master_id(), &held).await?;
            metrics::counter!(m::CLAIM_RENEWALS).increment(renewal.renewed.len() as u64);
            if !renewal.lost.is_empty() {
                tracing::error!(lost = ?renewal.lost, "claims lost; stopping those builds");
                metrics::counter!(m::CLAIMS_LOST).increment(renewal.lost.len() as u64);
                state.abort_builds(Some(&renewal.lost), AbortReason::LostClaim);
            }
        }
    }
    Ok(())
}

/// Releases the claims of dead masters and of expired leases.
async fn reap_others(state: &MasterState) -> Result<(), crate::db::DbError> {
    let t = &state.config.cluster;
    let reap = state
        .store
        .reap_dead_masters(t.master_timeout.get())
        .await?;
    if !reap.dead_masters.is_empty() || !reap.released.is_empty() {
        tracing::warn!(
            dead = ?reap.dead_masters,
            released = reap.released.len(),
            "released the claims of dead masters"
        );
        metrics::counter!(m::REAPED_CLAIMS).increment(reap.released.len() as u64);
        state.wake.notify_one();
    }
    let expired = state
        .store
        .release_expired_claims(t.claim_lease.get())
        .await?;
    if !expired.is_empty() {
        tracing::warn!(
            released = expired.len(),
            "released claims whose lease expired"
        );
        metrics::counter!(m::REAPED_CLAIMS).increment(expired.len() as u64);
        state.wake.notify_one();
    }
    Ok(())
}
