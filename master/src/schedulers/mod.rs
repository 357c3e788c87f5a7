//! Schedulers: what turns changes, time and other builds into buildsets.
//!
//! Every master runs [`run`], but each scheduler that acts on its own
//! (`single-branch`, `any-branch`, `periodic`, `nightly`, `dependent`) runs
//! on exactly one live master at a time: the one that holds its row in
//! `object_owners` (see [`ownership`]). A master that dies loses them after
//! `master_timeout` and another takes over; a draining master gives them up
//! at once. All of a scheduler's memory — the last change it saw, the
//! changes waiting for the tree to be stable, the last periodic tick, the
//! last nightly minute checked, the last upstream buildset — lives in its
//! database state (`object_state`), moved by compare-and-swap in the same
//! transaction that creates the buildsets the move decided on
//! ([`buildsets::create_with_state`]), so a new owner continues exactly
//! where the old one stopped, two owners can never both fire, and a master
//! that dies mid-tick loses no firing.
//!
//! Changes reach the owner through the database: a change submitted to any
//! master is read by the owning master's next tick ([`on_change`] only
//! shortens the wait on the master that received it).
//!
//! The other kinds are started from outside: `force` by the API, `try` by
//! `flotilla try` ([`buildsets::start_try`]), `triggerable` by a `trigger`
//! step ([`buildsets::trigger`]).

pub mod buildsets;
mod changes;
pub mod clock;
mod dependent;
pub mod ownership;
mod timed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use buildsets::{Created, StartError, TryRequest};
pub use changes::glob_match;
pub use clock::Clock;

use crate::config::{ClusterConfig, SchedulerConfig};
use crate::db::{DbError, MasterId, Store};
use crate::state::MasterState;
use ownership::Ownership;

/// `object_owners.kind` of schedulers.
pub const OWNER_KIND: &str = "scheduler";

/// Kinds that run on their own and so need an owner.
const OWNED_KINDS: &[&str] = &[
    "single-branch",
    "any-branch",
    "periodic",
    "nightly",
    "dependent",
];

/// Wakes the scheduler loop of this process when a change arrives here.
static WAKE: Notify = Notify::const_new();

/// What schedulers need from a master, apart from the master itself (tests
/// build one by hand, with a manual clock).
#[derive(Clone, Debug)]
pub struct SchedCtx {
    pub store: Store,
    pub config: Arc<ClusterConfig>,
    pub builder_ids: HashMap<String, i64>,
    pub me: MasterId,
    pub clock: Clock,
}

impl SchedCtx {
    pub fn of(state: &MasterState) -> SchedCtx {
        SchedCtx {
            store: state.store.clone(),
            config: state.config.clone(),
            builder_ids: state.builder_ids.clone(),
            me: state.master_id(),
            clock: Clock::Database,
        }
    }
}

/// The `object_state` object of a scheduler.
pub fn object_name(s: &SchedulerConfig) -> String {
    format!("scheduler:{}", s.name)
}

/// A change was recorded through this master: look at it now rather than
/// at the next tick (the owner may be another master, which reads it from
/// the database at its own next tick).
pub fn on_change(_change_id: i64) {
    WAKE.notify_one();
}

/// The schedulers of one master, with the ownership it holds.
#[derive(Debug)]
pub struct Engine {
    pub ctx: SchedCtx,
    owners: Ownership,
}

impl Engine {
    pub fn new(ctx: SchedCtx) -> Engine {
        let t = &ctx.config.cluster;
        let owners = Ownership::new(
            OWNER_KIND,
            t.master_timeout.get(),
            t.heartbeat_interval.get(),
        );
        Engine { ctx, owners }
    }

    /// One pass over every scheduler this master owns (claiming the free
    /// ones); returns how many buildsets were created.
    pub async fn tick(&mut self) -> usize {
        let mut created = 0;
        let config = self.ctx.config.clone();
        for s in &config.schedulers {
            if !OWNED_KINDS.contains(&s.kind.as_str()) {
                continue;
            }
            match self.tick_one(s).await {
                Ok(n) => created += n,
                Err(e) => {
                    metrics::counter!(crate::metrics::DATABASE_ERRORS).increment(1);
                    tracing::warn!(scheduler = %s.name, error = %e, "scheduler tick failed; will retry");
                }
            }
        }
        created
    }

    async fn tick_one(&mut self, s: &SchedulerConfig) -> Result<usize, DbError> {
        if !self
            .owners
            .owns(&self.ctx.store, self.ctx.me, &s.name)
            .await?
        {
            return Ok(0);
        }
        match s.kind.as_str() {
            "single-branch" | "any-branch" => changes::tick(&self.ctx, s).await,
            "periodic" => timed::periodic(&self.ctx, s).await,
            "nightly" => timed::nightly(&self.ctx, s).await,
            "dependent" => dependent::tick(&self.ctx, s).await,
            _ => Ok(0),
        }
    }

    /// Gives every scheduler (and change source) of this master back.
    pub async fn release(&mut self) -> Result<(), DbError> {
        if self.owners.holds_any() {
            self.ctx.store.release_objects(self.ctx.me).await?;
        }
        self.owners.clear();
        Ok(())
    }
}

/// How often schedulers look at the clock and for new changes.
pub fn tick_interval(config: &ClusterConfig) -> Duration {
    config
        .cluster
        .poll_interval
        .get()
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Runs this master's share of the schedulers until `stop`. While the
/// master drains it owns none.
pub async fn run(state: Arc<MasterState>, stop: CancellationToken) {
    let mut engine = Engine::new(SchedCtx::of(&state));
    let every = tick_interval(&state.config);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
            _ = WAKE.notified() => {}
        }
        let me = state.master_id();
        if me != engine.ctx.me {
            // A new incarnation (this one was declared dead): it owns nothing yet.
            engine.ctx.me = me;
            engine.owners.clear();
        }
        if state.is_draining() {
            if let Err(e) = engine.release().await {
                tracing::warn!(error = %e, "could not give up schedulers; they move after master_timeout");
            }
            continue;
        }
        if engine.tick().await > 0 {
            state.work_submitted(&[]);
        }
    }
}
