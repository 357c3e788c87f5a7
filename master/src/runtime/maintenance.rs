//! The maintenance loop of a master, every `heartbeat_interval`: pick up
//! `draining` set through any master's API, declare silent masters dead and
//! give back what dead masters hold (`reaper`), act on stop requests, renew
//! this master's claims, and give back claims it holds but does not run.
//!
//! The heartbeat and the fence are not here (`heartbeat`): nothing in this
//! loop, however slow, can delay them. Every step here has a deadline, and
//! the loop does nothing while this master is fenced or its database is
//! unreachable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reaper::Reaper;
use super::stop_requests;
use crate::db::{DbError, within};
use crate::metrics as m;
use crate::state::{AbortReason, MasterState};

/// How often a master checks the builders' written claim counts.
const RECOUNT_EVERY: Duration = Duration::from_secs(60);

pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let t = state.config.cluster.clone();
    let beat = t.heartbeat_interval.get();
    // One round's database work never takes longer than this.
    let deadline = t.master_timeout.get();
    let mut loop_state = Rounds {
        reaper: Reaper::default(),
        rebalancer: super::rebalance::Rebalancer::default(),
        next_renew: Instant::now() + t.claim_renew_interval.get(),
        next_recount: Instant::now() + RECOUNT_EVERY,
        was_draining: false,
        suspects: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(beat) => {}
            _ = stop.cancelled() => return,
        }
        if !state.db_healthy.load(Ordering::SeqCst) || state.live.is_fenced() {
            continue;
        }
        if let Err(e) = within(deadline, loop_state.housekeeping(&state)).await {
            metrics::counter!(m::DATABASE_ERRORS).increment(1);
            tracing::warn!(error = %e, "maintenance step failed; will retry");
        }
        if let Err(e) = within(deadline, loop_state.rebalancer.run_once(&state)).await {
            tracing::debug!(error = %e, "rebalancing idle workers failed; will retry");
        }
    }
}

struct Rounds {
    reaper: Reaper,
    rebalancer: super::rebalance::Rebalancer,
    next_renew: Instant,
    next_recount: Instant,
    was_draining: bool,
    /// Claims of this incarnation seen held but not run, with when first seen.
    suspects: HashMap<i64, (DateTime<Utc>, Instant)>,
}

impl Rounds {
    async fn housekeeping(&mut self, state: &Arc<MasterState>) -> Result<(), DbError> {
        let t = &state.config.cluster;
        let store = &state.store;
        if let Some(row) = store.master_flags(state.master_id()).await?
            && !state.shutdown.graceful.is_cancelled()
            && row.draining != self.was_draining
        {
            self.was_draining = row.draining;
            state.draining.store(row.draining, Ordering::SeqCst);
            tracing::info!(draining = row.draining, "drain flag changed");
            state.wake.notify_one();
        }
        self.reaper.run_once(state).await?;
        stop_requests::pick_up_stop_requests(state).await?;
        if Instant::now() >= self.next_renew {
            let held = state.running_requests();
            if !held.is_empty() {
                // Not renewed: try again next round, not a whole interval later.
                let renewal = store.renew_claims(state.master_id(), &held).await?;
                metrics::counter!(m::CLAIM_RENEWALS).increment(renewal.renewed.len() as u64);
                if !renewal.lost.is_empty() {
                    tracing::error!(lost = ?renewal.lost, "claims lost; stopping those builds");
                    metrics::counter!(m::CLAIMS_LOST).increment(renewal.lost.len() as u64);
                    state.abort_builds(Some(&renewal.lost), AbortReason::LostClaim);
                }
            }
            self.next_renew = Instant::now() + t.claim_renew_interval.get();
        }
        self.release_orphans(state).await?;
        if Instant::now() >= self.next_recount {
            self.next_recount = Instant::now() + RECOUNT_EVERY;
            for (builder, was, now) in store.recount_claimed().await? {
                tracing::warn!(
                    builder,
                    was,
                    now,
                    "a builder's claim count had drifted; corrected"
                );
                metrics::counter!(m::CLAIM_COUNTS_CORRECTED).increment(1);
            }
        }
        Ok(())
    }

    /// Gives back claims this incarnation holds but runs no build for: a
    /// claim whose commit succeeded while its answer was lost, a partial
    /// claim round, an unclaim that failed during an outage. A claim counts
    /// as orphaned when two rounds at least `heartbeat_interval` apart both
    /// find it held, unchanged, and not running here (the claim loop starts
    /// a build within moments of winning its claim).
    async fn release_orphans(&mut self, state: &MasterState) -> Result<(), DbError> {
        let me = state.master_id();
        let held = state.store.claims_held(me).await?;
        let running = state.running_requests();
        let now = Instant::now();
        let settle = state
            .config
            .cluster
            .heartbeat_interval
            .get()
            .max(Duration::from_millis(500));
        let mut orphans = Vec::new();
        let mut next = HashMap::new();
        for (id, at) in held {
            if running.contains(&id) {
                continue;
            }
            let first = match self.suspects.get(&id) {
                Some((seen_at, first)) if *seen_at == at => *first,
                _ => now,
            };
            if now.duration_since(first) >= settle {
                orphans.push((id, at));
            } else {
                next.insert(id, (at, first));
            }
        }
        self.suspects = next;
        if orphans.is_empty() {
            return Ok(());
        }
        // The running set is read again: a build may have started meanwhile.
        let running = state.running_requests();
        orphans.retain(|(id, _)| !running.contains(id));
        let released = state.store.release_orphaned_claims(me, &orphans).await?;
        if !released.is_empty() {
            tracing::warn!(requests = ?released, "gave back claims held here but not run");
            metrics::counter!(m::ORPHANED_CLAIMS).increment(released.len() as u64);
            state.wake.notify_one();
        }
        Ok(())
    }
}
