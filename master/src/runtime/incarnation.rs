//! This master's incarnations: joining the cluster under a name that no
//! live process holds, and joining again as a new incarnation after the
//! cluster declared the current one dead.

use std::sync::Arc;
use std::time::Duration;

use crate::db::{DbError, Store};
use crate::state::{AbortReason, MasterState};

#[derive(Debug)]
pub(crate) enum RejoinError {
    NameInUse(String),
    Db(DbError),
}

impl From<DbError> for RejoinError {
    fn from(e: DbError) -> Self {
        RejoinError::Db(e)
    }
}

/// Whether `name` may (re)join: its latest incarnation (other than `mine`)
/// must be inactive, or its heartbeat must have stood still for the fence
/// (`fence_after`), so that process, if it lives, has stopped its builds
/// before its claims are released. The database's own record of how long it
/// has been silent counts toward that wait; a heartbeat seen to advance
/// means another live process has this name.
pub(crate) async fn name_free(
    store: &Store,
    name: &str,
    mine: Option<i64>,
    beat: Duration,
    fence_after: Duration,
) -> Result<(), RejoinError> {
    let Some(first) = store.latest_incarnation(name).await? else {
        return Ok(());
    };
    if !first.active || Some(first.id) == mine {
        return Ok(());
    }
    let silent = (store.db_now().await? - first.last_active)
        .to_std()
        .unwrap_or_default();
    let wait = fence_after
        .saturating_sub(silent)
        .max(beat + Duration::from_millis(250));
    tracing::info!(
        previous = first.id,
        ?wait,
        "an earlier incarnation of this name is marked active; checking that its heartbeat has stopped"
    );
    let until = tokio::time::Instant::now() + wait;
    loop {
        let now = store.latest_incarnation(name).await?;
        let advanced = match &now {
            Some(row) => row.id != first.id || row.last_active != first.last_active,
            None => false,
        };
        if advanced && now.as_ref().is_some_and(|r| r.active) {
            return Err(RejoinError::NameInUse(format!(
                "another master named {name:?} is running (its heartbeat advances); \
                 give each master its own --name"
            )));
        }
        if tokio::time::Instant::now() >= until {
            return Ok(());
        }
        tokio::time::sleep(beat.min(Duration::from_millis(200))).await;
    }
}

/// This incarnation was declared dead (it could not heartbeat in time, so
/// other masters may already run its requests): stop every build without
/// recording anything, then join again as a new incarnation.
pub(crate) async fn rejoin(state: &Arc<MasterState>) -> Result<(), RejoinError> {
    state.abort_builds(None, AbortReason::LostClaim);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while state.running_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let beat = state.config.cluster.heartbeat_interval.get();
    name_free(
        &state.store,
        &state.name,
        Some(state.master_id()),
        beat,
        state.live.fence_after,
    )
    .await?;
    let me = state.store.register_master(&state.name).await?;
    state.store.release_older_incarnations(&me).await?;
    if state.is_draining() && !state.shutdown.graceful.is_cancelled() {
        state.store.set_draining(me.id, true).await?;
    }
    state.begin_incarnation(me.id);
    tracing::warn!(id = me.id, "joined the cluster again as a new incarnation");
    Ok(())
}
