//! The maintenance loop of a master: heartbeat (`masters.last_active`),
//! pick up `draining` set through any master's API, release the claims of
//! dead masters and of expired leases, and renew this master's own claims.
//!
//! It also fences: when heartbeats have failed for `master_timeout / 2`, the
//! builds here are stopped before any other master may take them over; and
//! when the database says this incarnation was declared dead, everything
//! stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AbortReason, MasterState};

pub fn declared_dead(state: &MasterState) -> bool {
    state.declared_dead.load(Ordering::SeqCst)
}

pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let t = state.config.cluster.clone();
    let beat = t.heartbeat_interval.get();
    let fence_after = t.master_timeout.get() / 2;
    let mut last_ok = Instant::now();
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
                }
                last_ok = Instant::now();
                fenced_builds = false;
            }
            Ok(false) => {
                tracing::error!(
                    "this master was declared dead by the cluster; stopping everything it ran"
                );
                state.db_healthy.store(false, Ordering::SeqCst);
                state.declared_dead.store(true, Ordering::SeqCst);
                state.abort_builds(None, AbortReason::LostClaim);
                return;
            }
            Err(e) => {
                metrics::counter!("flotilla_database_errors_total").increment(1);
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
        if let Err(e) = housekeeping(&state, &mut was_draining, &mut next_renew).await {
            metrics::counter!("flotilla_database_errors_total").increment(1);
            tracing::warn!(error = %e, "maintenance step failed; will retry");
        }
    }
}

async fn housekeeping(
    state: &Arc<MasterState>,
    was_draining: &mut bool,
    next_renew: &mut Instant,
) -> Result<(), crate::db::DbError> {
    let t = &state.config.cluster;
    let store = &state.store;
    if let Some(row) = store.master_flags(state.master_id()).await? {
        if !state.shutdown.graceful.is_cancelled() && row.draining != *was_draining {
            *was_draining = row.draining;
            state.draining.store(row.draining, Ordering::SeqCst);
            tracing::info!(draining = row.draining, "drain flag changed");
            state.wake.notify_one();
        }
    }
    let reap = store.reap_dead_masters(t.master_timeout.get()).await?;
    if !reap.dead_masters.is_empty() || !reap.released.is_empty() {
        tracing::warn!(
            dead = ?reap.dead_masters,
            released = reap.released.len(),
            "released the claims of dead masters"
        );
        metrics::counter!("flotilla_reaped_claims_total").increment(reap.released.len() as u64);
        state.wake.notify_one();
    }
    let expired = store.release_expired_claims(t.claim_lease.get()).await?;
    if !expired.is_empty() {
        tracing::warn!(
            released = expired.len(),
            "released claims whose lease expired"
        );
        metrics::counter!("flotilla_reaped_claims_total").increment(expired.len() as u64);
        state.wake.notify_one();
    }
    if Instant::now() >= *next_renew {
        *next_renew = Instant::now() + t.claim_renew_interval.get();
        let held = state.running_requests();
        if !held.is_empty() {
            let renewal = store.renew_claims(state.master_id(), &held).await?;
            metrics::counter!("flotilla_claim_renewals_total")
                .increment(renewal.renewed.len() as u64);
            if !renewal.lost.is_empty() {
                tracing::error!(lost = ?renewal.lost, "claims lost; stopping those builds");
                metrics::counter!("flotilla_claims_lost_total")
                    .increment(renewal.lost.len() as u64);
                state.abort_builds(Some(&renewal.lost), AbortReason::LostClaim);
            }
        }
    }
    Ok(())
}
