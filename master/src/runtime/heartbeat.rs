//! The heartbeat task and the fence watchdog: nothing else runs in them, so
//! neither ever waits behind reaping, renewals, rebalancing, a pool
//! exhausted by builds, or a row lock.
//!
//! - The heartbeat refreshes `masters.last_active` every
//!   `heartbeat_interval` over its own connection, each beat with a
//!   deadline, and records the send time of every beat the database
//!   confirmed (`Liveness::confirm`).
//! - The watchdog looks at the age of that record many times per
//!   `heartbeat_interval` and fences this master when it reaches
//!   `fence_after`, whether or not any statement has returned.
//! - A beat that finds this incarnation inactive (declared dead) stops every
//!   build and joins again as a new incarnation.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::db::HeartbeatLink;
use crate::metrics as m;
use crate::state::{AbortReason, MasterState};

pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let beat = state.config.cluster.heartbeat_interval.get();
    // A beat may take a while (a slow link still confirms the send time),
    // but never past the fence.
    let deadline = (beat * 2).min(state.live.fence_after);
    let mut link = HeartbeatLink::new(state.store.clone());
    let mut tick = tokio::time::interval(beat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let sent = Instant::now();
        match link.beat(state.master_id(), deadline).await {
            Ok(true) => {
                state.live.confirm(sent);
                if !state.db_healthy.swap(true, Ordering::SeqCst) {
                    tracing::info!("database reachable again");
                    metrics::counter!(m::DATABASE_RECONNECTS).increment(1);
                    state.wake.notify_one();
                }
            }
            Ok(false) => {
                tracing::error!(
                    "this incarnation was declared dead by the cluster; stopping its builds and joining again"
                );
                state.db_healthy.store(false, Ordering::SeqCst);
                match super::incarnation::rejoin(&state).await {
                    Ok(()) => {
                        state.live.reset(Instant::now());
                        state.db_healthy.store(true, Ordering::SeqCst);
                        state.wake.notify_one();
                    }
                    Err(super::incarnation::RejoinError::NameInUse(msg)) => {
                        tracing::error!("{msg}");
                        state.fatal(msg);
                        return;
                    }
                    Err(super::incarnation::RejoinError::Db(e)) => {
                        tracing::warn!(error = %e, "could not join again; retrying")
                    }
                }
            }
            Err(e) => {
                metrics::counter!(m::DATABASE_ERRORS).increment(1);
                if state.db_healthy.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "heartbeat failed; not claiming until the database is back");
                }
            }
        }
    }
}

/// Fences this master when its latest confirmed heartbeat grows older than
/// `fence_after`, and lifts the fence when a fresh one is confirmed.
pub async fn watchdog(state: Arc<MasterState>, stop: CancellationToken) {
    let every =
        (state.live.fence_after / 20).clamp(Duration::from_millis(10), Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !state.live.fresh() {
            if state.live.set_fenced(true) {
                tracing::error!(
                    since_last_confirmed_heartbeat = ?state.live.age(),
                    running = state.running_count(),
                    "no heartbeat confirmed in time: fenced; stopping every build before other masters may take them over"
                );
                metrics::counter!(m::FENCED).increment(1);
                state.db_healthy.store(false, Ordering::SeqCst);
            }
            // Every tick, so a build that was starting at the moment of the
            // fence is stopped too.
            state.abort_builds(None, AbortReason::LostClaim);
        } else if state.live.is_fenced() && state.live.set_fenced(false) {
            tracing::warn!("heartbeats confirmed again: fence lifted");
        }
    }
}
