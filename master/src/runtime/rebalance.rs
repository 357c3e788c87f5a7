//! Moving idle workers to the master the gateway would pick for them now.
//!
//! The gateway routes a worker once, when it registers (rendezvous hashing
//! over the live masters), and never moves a worker on its own: only the
//! master knows where one build ends and the next begins. Without more, the
//! last master of a rolling restart would come back to no workers at all. So
//! every heartbeat a master compares its idle workers with the active,
//! non-draining masters in the database, and hands back to the gateway those
//! that another master now wins; the gateway routes them there. A worker is
//! moved at most once per [`COOLDOWN`], so a master that the database lists
//! but the gateway does not know (its link is down) cannot make workers
//! bounce.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::db::DbError;
use crate::state::MasterState;

/// How long a worker this master handed away stays put.
pub const COOLDOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Rebalancer {
    moved: HashMap<String, Instant>,
}

impl Rebalancer {
    /// One pass; returns how many workers were handed back.
    pub async fn run_once(&mut self, state: &MasterState) -> Result<usize, DbError> {
        if state.is_draining() {
            return Ok(0);
        }
        self.moved.retain(|_, at| at.elapsed() < COOLDOWN);
        let idle = state.workers.idle();
        if idle.iter().all(|w| self.moved.contains_key(&w.name)) {
            return Ok(0);
        }
        let masters: Vec<_> = state
            .store
            .list_masters(false)
            .await?
            .into_iter()
            .filter(|m| !m.draining)
            .collect();
        let me = state.master_id();
        if masters.len() < 2 || !masters.iter().any(|m| m.id == me) {
            return Ok(0);
        }
        let elsewhere: HashSet<String> = idle
            .iter()
            .filter(|w| !self.moved.contains_key(&w.name))
            .filter(|w| {
                let best = flotilla_gateway::routing::pick(
                    &w.name,
                    masters.iter().map(|m| (m.name.as_str(), m.id, m.id)),
                );
                best.is_some_and(|id| id != me)
            })
            .map(|w| w.name.clone())
            .collect();
        if elsewhere.is_empty() {
            return Ok(0);
        }
        let n = state
            .workers
            .release_to_gateway(
                |name| elsewhere.contains(name),
                "another master is now this worker's place; moving while idle",
            )
            .await;
        let now = Instant::now();
        for name in elsewhere {
            self.moved.insert(name, now);
        }
        if n > 0 {
            tracing::info!(
                workers = n,
                "handed idle workers to the masters rendezvous hashing picks"
            );
        }
        Ok(n)
    }
}
