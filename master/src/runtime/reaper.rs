//! Declaring other masters dead, judged by this master's own clock.
//!
//! A master is dead when its `last_active` has stood still for
//! `master_timeout`, as measured by the observer's monotonic clock, while
//! the observer's own heartbeats succeeded the whole time. The database's
//! `NOW()` never enters the judgement: a step of the database's clock (NTP,
//! a VM restored, a failover to a server with another clock) moves every
//! `last_active` and every `NOW()` alike, and comparing the two would turn
//! it into a mass false death.
//!
//! The observer notes the moment it *received* each new value: the heartbeat
//! that wrote it was sent before then, so the watched master fences itself
//! (`fence_after` after that send, see `liveness`) well before the observer
//! can declare it dead (`master_timeout` after receipt). The declaration is
//! a compare-and-swap on the value watched, so a master that beat in between
//! survives, and of several observers exactly one wins.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use crate::db::{DbError, MasterId};
use crate::metrics as m;
use crate::state::MasterState;

/// What an observer has seen of each other active master.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    seen: HashMap<MasterId, Seen>,
}

#[derive(Debug)]
struct Seen {
    last_active: DateTime<Utc>,
    /// When this observer received that value (or, after its own health was
    /// broken, when it started watching again).
    since: Instant,
}

impl Reaper {
    /// One round: watch every active master, declare dead those silent long
    /// enough, and give back what inactive masters hold. Does nothing while
    /// this master's own heartbeats are not healthy.
    pub async fn run_once(&mut self, state: &MasterState) -> Result<(), DbError> {
        let Some(healthy_since) = state.live.healthy_since() else {
            return Ok(());
        };
        if state.live.is_fenced() {
            return Ok(());
        }
        let timeout = state.config.cluster.master_timeout.get();
        let me = state.master_id();
        let asked = Instant::now();
        let current = state.store.active_heartbeats().await?;
        let received = Instant::now();
        self.seen
            .retain(|id, _| current.iter().any(|(c, _)| c == id));
        let mut silent = Vec::new();
        for (id, last_active) in current {
            if id == me {
                continue;
            }
            let entry = self.seen.entry(id).or_insert(Seen {
                last_active,
                since: received,
            });
            if entry.last_active != last_active {
                entry.last_active = last_active;
                entry.since = received;
            } else if entry.since < healthy_since {
                // This observer was not healthy for part of the watch (an
                // outage everyone may have seen): start watching afresh.
                entry.since = received;
            } else if asked.duration_since(entry.since) >= timeout {
                silent.push((id, last_active, asked.duration_since(entry.since)));
            }
        }
        let mut declared = Vec::new();
        for (id, last_active, silent_for) in silent {
            // Re-check our own health right before the write.
            if !state.live.fresh() || state.live.healthy_since().is_none() {
                return Ok(());
            }
            if state.store.declare_dead(id, last_active).await? {
                tracing::warn!(
                    master_id = id,
                    ?silent_for,
                    "declared master dead: its heartbeat stood still"
                );
                metrics::counter!(m::MASTERS_DECLARED_DEAD).increment(1);
                declared.push(id);
            }
            self.seen.remove(&id);
        }
        let released = state.store.release_inactive().await?;
        if !declared.is_empty() || !released.is_empty() {
            tracing::warn!(
                dead = ?declared,
                released = released.len(),
                "released the claims of dead masters"
            );
            metrics::counter!(m::REAPED_CLAIMS).increment(released.len() as u64);
            state.wake.notify_one();
        }
        Ok(())
    }
}
