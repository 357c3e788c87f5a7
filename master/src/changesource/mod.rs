//! Change sources: pollers that turn new commits into changes. Like the
//! schedulers, each runs on exactly one live master at a time (its
//! `object_owners` row, kind `changesource`), and keeps what it has seen in
//! its database state, so a restart or a move to another master neither
//! misses nor repeats a change. The changes it records are picked up by the
//! schedulers like any other.

pub mod git;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::schedulers::ownership::Ownership;
use crate::state::MasterState;

/// `object_owners.kind` of change sources.
pub const OWNER_KIND: &str = "changesource";

/// Default time between two polls of one source.
pub const DEFAULT_POLL: Duration = Duration::from_secs(60);

/// Runs this master's share of the change sources until `stop`.
pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let config = state.config.clone();
    if config.change_sources.is_empty() {
        return;
    }
    let t = &config.cluster;
    let mut owners = Ownership::new(
        OWNER_KIND,
        t.master_timeout.get(),
        t.heartbeat_interval.get(),
    );
    let every = crate::schedulers::tick_interval(&config);
    let mut next_poll: HashMap<String, Instant> = HashMap::new();
    let cache = git::cache_root();
    let mut owner_id = state.master_id();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let me = state.master_id();
        if me != owner_id {
            owner_id = me;
            owners.clear();
        }
        if state.is_draining() {
            // The scheduler loop releases every object of this master.
            owners.clear();
            continue;
        }
        for cs in &config.change_sources {
            if next_poll.get(&cs.name).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            match owners.owns(&state.store, owner_id, &cs.name).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(source = %cs.name, error = %e, "could not claim change source");
                    continue;
                }
            }
            let poll = cs.poll_interval.map_or(DEFAULT_POLL, |d| d.get());
            next_poll.insert(cs.name.clone(), Instant::now() + poll);
            match git::poll(&state.store, cs, &cache).await {
                Ok(ids) if !ids.is_empty() => {
                    tracing::info!(source = %cs.name, changes = ?ids, "new changes");
                    if let Some(last) = ids.last() {
                        crate::schedulers::on_change(*last);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %cs.name, error = %e, "poll failed; will retry");
                }
            }
        }
    }
}
