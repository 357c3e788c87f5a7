//! A running master: its identity in the database, its links to the
//! gateway(s), the workers routed to it, the claim loop, the builds it runs,
//! the maintenance loop (heartbeat, reaping, renewal) and its HTTP API.
//!
//! Shutdown is one tree of cancellation tokens: the graceful token stops
//! claiming and lets builds finish for up to `shutdown_grace`; the immediate
//! token (or the end of the grace) interrupts what still runs and hands the
//! requests back to the queue before the master marks itself inactive.

mod build;
mod build_log;
mod claim_loop;
mod heartbeat;
mod link;
mod liveness;
mod maintenance;
mod reaper;
mod rebalance;
mod steps;
mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::db::{DbError, Store};

pub use build::AbortReason;
pub use workers::WorkerRegistry;

/// What `flotilla master` (or the quickstart) hands to [`run`].
#[derive(Debug)]
pub struct MasterOptions {
    pub config: Arc<ClusterConfig>,
    pub name: String,
    /// The HTTP API listener (bind port 0 in tests).
    pub http: TcpListener,
    /// A store whose schema is current.
    pub store: Store,
}

/// The two shutdown signals: graceful first, immediate on a second signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub immediate: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this master was declared dead by the cluster (it could not heartbeat in time); its builds were stopped"
    )]
    Fenced,
    /// Another live process runs under this master's name.
    #[error("{0}")]
    NameInUse(String),
}

impl MasterError {
    /// Exit code of the contract for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            MasterError::Config(_) | MasterError::NameInUse(_) => 78,
            MasterError::Db(DbError::Unreachable(_)) => 69,
            MasterError::Db(DbError::BadUrl(_) | DbError::AccessDenied(_)) => 78,
            MasterError::Db(DbError::SchemaNotCurrent { .. } | DbError::SchemaNewer { .. }) => 78,
            _ => 1,
        }
    }
}

/// A build this master runs now.
#[derive(Debug)]
pub(crate) struct RunningBuild {
    pub request_id: i64,
    pub cancel: CancellationToken,
    pub reason: Arc<Mutex<Option<AbortReason>>>,
}

/// State shared by the master's tasks.
#[derive(Debug)]
pub struct MasterState {
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
    pub workers: WorkerRegistry,
    /// Wakes the claim loop: new work submitted here, a worker became idle.
    pub wake: Notify,
    /// Set by `flotilla drain` (read from the database) or by shutdown.
    pub draining: AtomicBool,
    /// Whether the last heartbeat reached the database.
    pub db_healthy: AtomicBool,
    /// Heartbeats confirmed, by this master's clock, and the fence.
    pub(crate) live: liveness::Liveness,
    /// Set when this master must stop for good (its name is taken).
    fatal: Mutex<Option<String>>,
    /// Gateway links attached now.
    pub gateway_links: AtomicUsize,
    /// Outgoing queues of the attached gateway links, to announce new work.
    pub(crate) link_senders:
        Mutex<HashMap<u64, tokio::sync::mpsc::Sender<flotilla_proto::v1::MasterToGateway>>>,
    pub(crate) running: Mutex<HashMap<i64, RunningBuild>>,
    pub(crate) next_command: AtomicU64,
    pub shutdown: Shutdown,
    /// Builds and helper tasks, awaited on the way out.
    pub(crate) tasks: TaskTracker,
}

impl MasterState {
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

    /// Request ids of the builds running here.
    pub fn running_requests(&self) -> Vec<i64> {
        self.lock_running().values().map(|b| b.request_id).collect()
    }

    pub fn running_count(&self) -> usize {
        self.lock_running().len()
    }

    pub(crate) fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, RunningBuild>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Stops the builds of these requests (or all, for `None`) for `reason`.
    pub fn abort_builds(&self, requests: Option<&[i64]>, reason: AbortReason) {
        for b in self.lock_running().values() {
            if requests.is_none_or(|r| r.contains(&b.request_id)) {
                let mut slot = b.reason.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(reason);
                b.cancel.cancel();
            }
        }
    }
}

/// Runs a master until shutdown. Registers a new incarnation, releases the
/// claims of older incarnations of the same name, and serves.
pub async fn run(opts: MasterOptions, shutdown: Shutdown) -> Result<(), MasterError> {
    crate::http::install_metrics();
    let store = opts.store;
    let config = opts.config;
    let mut passwords = HashMap::new();
    for w in &config.workers {
        let pw = w.resolve_password().map_err(MasterError::Config)?;
        passwords.insert(w.name.clone(), pw);
    }
    let names: Vec<String> = config.builders.iter().map(|b| b.name.clone()).collect();
    let builder_ids = store.ensure_builders(&names).await?;
    let beat = config.cluster.heartbeat_interval.get();
    let fence_after =
        liveness::Liveness::new(config.cluster.master_timeout.get(), beat).fence_after;
    if let Err(e) = name_free(&store, &opts.name, None, beat, fence_after).await {
        return Err(match e {
            RejoinError::NameInUse(msg) => MasterError::NameInUse(msg),
            RejoinError::Db(e) => MasterError::Db(e),
        });
    }
    let registered_at = tokio::time::Instant::now();
    let me = store.register_master(&opts.name).await?;
    let released = store.release_older_incarnations(&me).await?;
    tracing::info!(
        master = %me.name,
        id = me.id,
        boot_time = %me.boot_time,
        released_from_older_incarnations = released.len(),
        "master registered"
    );
    let (incarnation, _) = watch::channel(me.id);
    let state = Arc::new(MasterState {
        config: config.clone(),
        store: store.clone(),
        name: me.name.clone(),
        master_id: AtomicI64::new(me.id),
        incarnation,
        builder_ids,
        passwords,
        workers: WorkerRegistry::default(),
        wake: Notify::new(),
        draining: AtomicBool::new(false),
        db_healthy: AtomicBool::new(true),
        live: liveness::Liveness::new(config.cluster.master_timeout.get(), beat),
        fatal: Mutex::new(None),
        gateway_links: AtomicUsize::new(0),
        link_senders: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        next_command: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        tasks: TaskTracker::new(),
    });

    // Services that run until the very end (HTTP, links) stop on `stop_all`.
    let stop_all = CancellationToken::new();
    let http_state = state.clone();
    let http_stop = stop_all.clone();
    let http = tokio::spawn(crate::http::serve(opts.http, http_state, http_stop));
    let mut links = Vec::new();
    for (i, url) in config.gateway.master_urls().into_iter().enumerate() {
        links.push(tokio::spawn(link::run(
            state.clone(),
            i as u64,
            url,
            stop_all.clone(),
        )));
    }
    state.live.reset(registered_at);
    let beats = tokio::spawn(heartbeat::run(state.clone(), stop_all.clone()));
    let watchdog = tokio::spawn(heartbeat::watchdog(state.clone(), stop_all.clone()));
    let maintenance = tokio::spawn(maintenance::run(state.clone(), stop_all.clone()));
    tokio::spawn(crate::janitor::run_periodic(
        state.clone(),
        stop_all.clone(),
    ));
    crate::reporters::start(&state, &stop_all);
    let claim_stop = CancellationToken::new();
    let claimer = tokio::spawn(claim_loop::run(state.clone(), claim_stop.clone()));
    let schedulers = tokio::spawn(crate::schedulers::run(state.clone(), stop_all.clone()));
    let change_sources = tokio::spawn(crate::changesource::run(state.clone(), stop_all.clone()));

    shutdown.graceful.cancelled().await;
    state.draining.store(true, Ordering::SeqCst);
    // Recorded so that every master's API and dashboard show the drain.
    // Bounded: a database that is down must not hold up the drain itself.
    match tokio::time::timeout(
        Duration::from_secs(2),
        store.set_draining(state.master_id(), true),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not record draining in the database"),
        Err(_) => tracing::warn!("recording draining in the database timed out"),
    }
    state.wake.notify_waiters();
    drain_running(&state).await;
    claim_stop.cancel();
    let _ = claimer.await;
    state.tasks.close();
    state.tasks.wait().await;
    // Hand back anything still claimed (nothing, normally) and leave the cluster.
    if let Err(e) = build::retry_transient(|| store.deactivate_master(state.master_id())).await {
        tracing::error!(error = %e, "could not mark this master inactive; others will reap it after master_timeout");
    }
    stop_all.cancel();
    let _ = beats.await;
    let _ = watchdog.await;
    let _ = maintenance.await;
    let _ = schedulers.await;
    let _ = change_sources.await;
    for l in links {
        let _ = l.await;
    }
    let _ = http.await;
    if let Some(reason) = state.fatal.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(MasterError::NameInUse(reason));
    }
    tracing::info!("master stopped");
    Ok(())
}

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
async fn name_free(
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
    state.master_id.store(me.id, Ordering::SeqCst);
    state.incarnation.send_replace(me.id);
    tracing::warn!(id = me.id, "joined the cluster again as a new incarnation");
    Ok(())
}

/// Lets running builds finish for up to `shutdown_grace` (less on a second
/// signal), then interrupts the rest; their requests go back to the queue.
async fn drain_running(state: &MasterState) {
    let grace = state.config.cluster.shutdown_grace.get();
    let count = state.running_count();
    if count > 0 {
        tracing::info!(running = count, grace = ?grace, "waiting for running builds to finish");
    }
    let deadline = tokio::time::Instant::now() + grace;
    while state.running_count() > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = state.shutdown.immediate.cancelled() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    if state.running_count() > 0 {
        tracing::warn!(
            running = state.running_count(),
            "handing unfinished builds back to the queue"
        );
        state.abort_builds(None, AbortReason::Shutdown);
    }
}
