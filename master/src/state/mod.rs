//! State shared by the master's tasks: who this master is in the database,
//! whether it is alive, the workers routed to it, the builds it runs, its
//! gateway links and its shutdown signals.
//!
//! Everything here is at the bottom of the master: the tasks that use it
//! (the claim loop, builds, maintenance, the HTTP API, schedulers, change
//! sources, the janitor) depend on this module, and it depends on none of
//! them. [`crate::master`] creates it and starts the tasks.

mod liveness;
mod running;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::db::Store;

pub(crate) use liveness::Liveness;
pub use running::AbortReason;
pub(crate) use running::RunningBuild;
pub use workers::{CommandEvent, IdleWorker, WorkerKey, WorkerRegistry};

/// The two shutdown signals: graceful first, immediate on a second signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub immediate: CancellationToken,
}

/// State shared by the master's tasks, in four parts: who this master is,
/// whether it may work, its work (workers and builds), and its gateway
/// links and shutdown.
#[derive(Debug)]
pub struct MasterState {
    // Who this master is.
    pub config: Arc<ClusterConfig>,
    pub store: Store,
    /// This master's name; its identity is the name plus the current incarnation.
    pub name: String,
    /// `masters.id` of the current incarnation (a new one after being declared dead).
    master_id: AtomicI64,
    /// Announces a new incarnation to the gateway links.
    pub(crate) incarnation: watch::Sender<i64>,
    /// Builder name to `builders.id`.
    pub builder_ids: HashMap<String, i64>,
    /// Worker name to password, read once at start.
    pub(crate) passwords: HashMap<String, String>,

    // Whether it may work.
    /// Whether the last heartbeat reached the database.
    pub db_healthy: AtomicBool,
    /// Heartbeats confirmed, by this master's clock, and the fence.
    pub(crate) live: Liveness,
    /// Set by `flotilla drain` (read from the database) or by shutdown.
    pub draining: AtomicBool,
    /// Set when this master must stop for good (its name is taken).
    fatal: Mutex<Option<String>>,

    // Its work.
    pub workers: WorkerRegistry,
    /// Wakes the claim loop: new work submitted here, a worker became idle.
    pub wake: Notify,
    pub(crate) running: Mutex<HashMap<i64, RunningBuild>>,
    pub(crate) next_command: AtomicU64,
    /// Builds and helper tasks, awaited on the way out.
    pub(crate) tasks: TaskTracker,

    // Its gateway links and shutdown.
    /// Gateway links attached now.
    pub gateway_links: AtomicUsize,
    /// Outgoing queues of the attached gateway links, to announce new work.
    pub(crate) link_senders:
        Mutex<HashMap<u64, tokio::sync::mpsc::Sender<flotilla_proto::v1::MasterToGateway>>>,
    pub shutdown: Shutdown,
}

impl MasterState {
    /// The state of incarnation `master_id`, newly registered: no worker,
    /// no build, healthy, not draining.
    pub(crate) fn new(
        config: Arc<ClusterConfig>,
        store: Store,
        name: String,
        master_id: i64,
        builder_ids: HashMap<String, i64>,
        passwords: HashMap<String, String>,
        shutdown: Shutdown,
    ) -> MasterState {
        let live = Liveness::new(
            config.cluster.master_timeout.get(),
            config.cluster.heartbeat_interval.get(),
        );
        let (incarnation, _) = watch::channel(master_id);
        MasterState {
            config,
            store,
            name,
            master_id: AtomicI64::new(master_id),
            incarnation,
            builder_ids,
            passwords,
            db_healthy: AtomicBool::new(true),
            live,
            draining: AtomicBool::new(false),
            fatal: Mutex::new(None),
            workers: WorkerRegistry::default(),
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            next_command: AtomicU64::new(1),
            tasks: TaskTracker::new(),
            gateway_links: AtomicUsize::new(0),
            link_senders: Mutex::new(HashMap::new()),
            shutdown,
        }
    }

    pub fn master_id(&self) -> i64 {
        self.master_id.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether this master may claim and start builds now: its database
    /// answers and its latest confirmed heartbeat is younger than the fence.
    pub fn may_claim(&self) -> bool {
        self.db_healthy.load(Ordering::SeqCst) && self.live.fresh() && !self.live.is_fenced()
    }

    /// Stop this master for good with `reason` (exit 78).
    pub(crate) fn fatal(&self, reason: String) {
        *self.fatal.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.shutdown.graceful.cancel();
        self.shutdown.immediate.cancel();
    }

    /// Why this master must stop for good, once (see [`MasterState::fatal`]).
    pub(crate) fn take_fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Makes `master_id` the current incarnation and tells the gateway links.
    pub(crate) fn begin_incarnation(&self, master_id: i64) {
        self.master_id.store(master_id, Ordering::SeqCst);
        self.incarnation.send_replace(master_id);
    }

    /// New build requests were created here: wake this master's claim loop
    /// and tell the other masters through the gateway(s), so they need not
    /// wait for their next poll.
    pub fn work_submitted(&self, builder_ids: &[i64]) {
        self.wake.notify_one();
        let msg = flotilla_proto::v1::MasterToGateway {
            msg: Some(flotilla_proto::v1::master_to_gateway::Msg::WorkAvailable(
                flotilla_proto::v1::WorkAvailable {
                    builder_ids: builder_ids.to_vec(),
                },
            )),
        };
        let senders = self.link_senders.lock().unwrap_or_else(|e| e.into_inner());
        for tx in senders.values() {
            // A hint: when the link is busy the others find the work at their next poll.
            let _ = tx.try_send(msg.clone());
        }
    }
}
