//! The gateway's in-memory state: live master links and worker sessions.
//!
//! Nothing here survives a gateway restart, and nothing needs to: masters
//! re-attach and workers re-register. The registry is a plain mutex-protected
//! map; every method holds the lock briefly and never across an `.await`.
//! Work that must happen when state changes (telling a session its master is
//! gone, waking sessions waiting for a master) goes out through channels.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use flotilla_proto::v1::{GatewayMessage, GatewayToMaster};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::routing;

/// Identifies one `Attach` stream (unique for the gateway's lifetime).
pub(crate) type LinkId = u64;
/// Identifies one worker `Session` stream; also the `session` field on the wire.
pub(crate) type SessionId = u64;

/// Sender half of a worker's outgoing stream.
pub(crate) type WorkerTx = mpsc::Sender<Result<GatewayMessage, Status>>;

/// How long a worker is not routed back to a master that handed it back.
const AVOID_FOR: Duration = Duration::from_secs(10);

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on the gateway's monotonic clock.
pub(crate) fn clock_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// When a worker was last heard from, shared between its session task and
/// sessions that probe it.
#[derive(Debug)]
pub(crate) struct Liveness {
    last_heard_ms: AtomicU64,
    /// The session is not reading the worker because its master is slow
    /// (back-pressure): silence is then not the worker's fault.
    blocked: AtomicBool,
}

impl Liveness {
    pub fn new() -> Self {
        Self {
            last_heard_ms: AtomicU64::new(clock_ms()),
            blocked: AtomicBool::new(false),
        }
    }

    pub fn heard(&self) {
        self.last_heard_ms.fetch_max(clock_ms(), Ordering::SeqCst);
    }

    pub fn set_blocked(&self, blocked: bool) {
        if !blocked {
            self.heard();
        }
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    /// Heard from at or after `since_ms`, or not read through no fault of its own.
    pub fn heard_since(&self, since_ms: u64) -> bool {
        self.blocked.load(Ordering::SeqCst) || self.last_heard_ms.load(Ordering::SeqCst) >= since_ms
    }

    /// How long the worker has been silent (zero while blocked).
    pub fn silent_for(&self) -> Duration {
        if self.blocked.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        Duration::from_millis(clock_ms().saturating_sub(self.last_heard_ms.load(Ordering::SeqCst)))
    }
}

/// The live session holding a worker name, for a newcomer to probe.
pub(crate) struct Holder {
    pub liveness: Arc<Liveness>,
    pub worker_tx: WorkerTx,
    pub done: CancellationToken,
}

/// Sender half of a master's outgoing stream.
pub(crate) type MasterTx = mpsc::Sender<Result<GatewayToMaster, Status>>;

/// A cheap handle on a live master link, held by the sessions routed to it.
#[derive(Clone)]
pub(crate) struct MasterHandle {
    pub link: LinkId,
    pub name: String,
    pub master_id: i64,
    tx: MasterTx,
    /// Cancelled when the link is declared dead.
    pub dead: CancellationToken,
    /// Status ending the master's stream when the gateway cut the link.
    final_status: Arc<Mutex<Option<Status>>>,
}

impl fmt::Display for MasterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.master_id)
    }
}

impl MasterHandle {
    /// Sends to the master, waiting for room (back-pressure), unless the link
    /// dies first. Returns false when the message could not be queued.
    pub async fn send(&self, msg: GatewayToMaster) -> bool {
        tokio::select! {
            biased;
            _ = self.dead.cancelled() => false,
            r = self.tx.send(Ok(msg)) => r.is_ok(),
        }
    }

    /// Queues a message only if there is room now: for hints that a busy
    /// master may miss (it polls anyway).
    pub fn try_send(&self, msg: GatewayToMaster) -> bool {
        !self.dead.is_cancelled() && self.tx.try_send(Ok(msg)).is_ok()
    }

    /// Waits for room in the master's queue (cancel-safe: nothing is lost
    /// if the wait is abandoned). `None` once the link is dead.
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, Result<GatewayToMaster, Status>>> {
        tokio::select! {
            biased;
            _ = self.dead.cancelled() => None,
            permit = self.tx.reserve() => permit.ok(),
        }
    }

    /// Room in the master's queue if there is some right now.
    pub fn reserve_now(&self) -> Option<mpsc::Permit<'_, Result<GatewayToMaster, Status>>> {
        if self.dead.is_cancelled() {
            return None;
        }
        self.tx.try_reserve().ok()
    }

    /// The status to end the master's stream with, once the link is dead.
    pub fn take_final_status(&self) -> Option<Status> {
        lock(&self.final_status).take()
    }
}

/// Something a worker session must react to, sent by the registry or a
/// master link's reader. `link` lets a session ignore events from a master it
/// is no longer routed to. (No `Debug`: commands may carry secrets in env.)
pub(crate) enum SessionEvent {
    AuthResult {
        link: LinkId,
        accepted: bool,
        reason: String,
    },
    ToWorker {
        link: LinkId,
        msg: GatewayMessage,
    },
    MasterGone {
        link: LinkId,
        reason: String,
    },
    /// A newer session with the right password registered the same worker
    /// name, and this one failed its liveness probe.
    Superseded,
}

impl SessionEvent {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AuthResult { .. } => "AuthResult",
            Self::ToWorker { .. } => "ToWorker",
            Self::MasterGone { .. } => "MasterGone",
            Self::Superseded => "Superseded",
        }
    }
}

struct MasterEntry {
    handle: MasterHandle,
    draining: bool,
    sessions: HashSet<SessionId>,
}

struct SessionEntry {
    name: String,
    events: mpsc::UnboundedSender<SessionEvent>,
    master: Option<LinkId>,
    /// Cancelled when the session's task has finished (including telling its
    /// master it detached).
    done: CancellationToken,
    liveness: Arc<Liveness>,
    worker_tx: WorkerTx,
}

#[derive(Default)]
struct Inner {
    masters: HashMap<LinkId, MasterEntry>,
    sessions: HashMap<SessionId, SessionEntry>,
    by_name: HashMap<String, SessionId>,
    /// Worker name → the master that handed it back, and until when.
    avoid: HashMap<String, (LinkId, Instant)>,
    next_link: LinkId,
    next_session: SessionId,
}

/// Shared state of one gateway.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Bumped whenever the set of routable masters may have changed.
    masters_changed: watch::Sender<u64>,
    pub gateway_id: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these maps half-updated in a
    // way worse than losing the gateway, so keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new(gateway_id: String) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            masters_changed: watch::channel(0).0,
            gateway_id,
        }
    }

    fn bump(&self) {
        self.masters_changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Receives a change whenever masters attach, detach or (un)drain.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.masters_changed.subscribe()
    }

    /// Registers a new master link. An older link of the same master
    /// incarnation (same name and id) is cut: the master has reconnected.
    pub fn attach_master(
        &self,
        name: String,
        master_id: i64,
        draining: bool,
        tx: MasterTx,
    ) -> MasterHandle {
        let (handle, stale) = {
            let mut inner = lock(&self.inner);
            inner.next_link += 1;
            let link = inner.next_link;
            let stale: Vec<LinkId> = inner
                .masters
                .iter()
                .filter(|(_, m)| m.handle.name == name && m.handle.master_id == master_id)
                .map(|(l, _)| *l)
                .collect();
            let handle = MasterHandle {
                link,
                name,
                master_id,
                tx,
                dead: CancellationToken::new(),
                final_status: Arc::new(Mutex::new(None)),
            };
            inner.masters.insert(
                link,
                MasterEntry {
                    handle: handle.clone(),
                    draining,
                    sessions: HashSet::new(),
                },
            );
            metrics::gauge!("flotilla_gateway_connected_masters").set(inner.masters.len() as f64);
            (handle, stale)
        };
        for link in stale {
            self.detach_master(
                link,
                "the same master attached again",
                Some(Status::aborted(
                    "replaced by a newer link of the same master",
                )),
            );
        }
        self.bump();
        handle
    }

    /// Every live master link except `link`, for a broadcast.
    pub fn other_masters(&self, link: LinkId) -> Vec<MasterHandle> {
        lock(&self.inner)
            .masters
            .iter()
            .filter(|(l, _)| **l != link)
            .map(|(_, m)| m.handle.clone())
            .collect()
    }

    /// Updates a master's draining flag.
    pub fn set_draining(&self, link: LinkId, draining: bool) {
        let changed = {
            let mut inner = lock(&self.inner);
            match inner.masters.get_mut(&link) {
                Some(m) if m.draining != draining => {
                    m.draining = draining;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// Declares a link dead: removes it, ends its stream with `status` (if
    /// any) and tells every session routed to it. Returns false if it was
    /// already gone.
    pub fn detach_master(&self, link: LinkId, reason: &str, status: Option<Status>) -> bool {
        let (entry, sessions) = {
            let mut inner = lock(&self.inner);
            let Some(entry) = inner.masters.remove(&link) else {
                return false;
            };
            metrics::gauge!("flotilla_gateway_connected_masters").set(inner.masters.len() as f64);
            let mut sessions = Vec::new();
            for id in &entry.sessions {
                if let Some(s) = inner.sessions.get_mut(id) {
                    if s.master == Some(link) {
                        s.master = None;
                    }
                    sessions.push(s.events.clone());
                }
            }
            (entry, sessions)
        };
        *lock(&entry.handle.final_status) = status;
        entry.handle.dead.cancel();
        for events in sessions {
            let _ = events.send(SessionEvent::MasterGone {
                link,
                reason: reason.to_owned(),
            });
        }
        self.bump();
        true
    }

    /// The master a worker of this name should go to now, if any is
    /// routable. Draining masters never are; neither is, for a while, the
    /// master that just handed this worker back (a master starting to drain
    /// hands back its workers before its heartbeat says so). `Err` carries
    /// when that exclusion ends, if it is what leaves no master.
    pub fn route(&self, worker: &str) -> Result<MasterHandle, Option<Instant>> {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        let avoided = match inner.avoid.get(worker) {
            Some((link, until)) if *until > now => Some((*link, *until)),
            Some(_) => {
                inner.avoid.remove(worker);
                None
            }
            None => None,
        };
        routing::pick(
            worker,
            inner
                .masters
                .values()
                .filter(|m| !m.draining)
                .filter(|m| avoided.is_none_or(|(l, _)| l != m.handle.link))
                .map(|m| (m.handle.name.as_str(), m.handle.master_id, &m.handle)),
        )
        .cloned()
        .ok_or(avoided.map(|(_, until)| until))
    }

    /// Keeps `worker` away from master `link` for a while.
    pub fn avoid(&self, worker: &str, link: LinkId) {
        let mut inner = lock(&self.inner);
        let now = Instant::now();
        if inner.avoid.len() > 4096 {
            inner.avoid.retain(|_, (_, until)| *until > now);
        }
        inner
            .avoid
            .insert(worker.to_owned(), (link, now + AVOID_FOR));
    }

    /// Adds a session for worker `name`. It does not hold the name until
    /// [`Registry::claim_name`] succeeds.
    pub fn new_session(
        &self,
        name: &str,
        events: mpsc::UnboundedSender<SessionEvent>,
        liveness: Arc<Liveness>,
        worker_tx: WorkerTx,
    ) -> SessionId {
        let mut inner = lock(&self.inner);
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            SessionEntry {
                name: name.to_owned(),
                events,
                master: None,
                done: CancellationToken::new(),
                liveness,
                worker_tx,
            },
        );
        metrics::gauge!("flotilla_gateway_connected_workers").set(inner.sessions.len() as f64);
        id
    }

    /// The live session holding `name`, other than `me`, with its id.
    pub fn holder(&self, name: &str, me: SessionId) -> Option<(SessionId, Holder)> {
        let inner = lock(&self.inner);
        let id = *inner.by_name.get(name)?;
        if id == me {
            return None;
        }
        let s = inner.sessions.get(&id)?;
        Some((
            id,
            Holder {
                liveness: s.liveness.clone(),
                worker_tx: s.worker_tx.clone(),
                done: s.done.clone(),
            },
        ))
    }

    /// Makes `me` the holder of `name` if nobody (alive) holds it, or if the
    /// holder is `superseded`, which is told to end. Otherwise returns the
    /// holder.
    pub fn claim_name(
        &self,
        name: &str,
        me: SessionId,
        superseded: Option<SessionId>,
    ) -> Result<(), SessionId> {
        let mut inner = lock(&self.inner);
        if let Some(h) = inner.by_name.get(name).copied()
            && h != me
            && let Some(old) = inner.sessions.get(&h)
        {
            if Some(h) != superseded {
                return Err(h);
            }
            let _ = old.events.send(SessionEvent::Superseded);
        }
        inner.by_name.insert(name.to_owned(), me);
        Ok(())
    }

    /// Routes `session` to `link`. False if the link has died meanwhile.
    pub fn assign(&self, session: SessionId, link: LinkId) -> bool {
        let mut inner = lock(&self.inner);
        if !inner.masters.contains_key(&link) {
            return false;
        }
        let Some(s) = inner.sessions.get_mut(&session) else {
            return false;
        };
        let previous = s.master.replace(link);
        if let Some(prev) = previous.filter(|p| *p != link)
            && let Some(m) = inner.masters.get_mut(&prev)
        {
            m.sessions.remove(&session);
        }
        if let Some(m) = inner.masters.get_mut(&link) {
            m.sessions.insert(session);
        }
        true
    }

    /// Un-routes `session` (e.g. after its master failed to answer in time).
    pub fn unassign(&self, session: SessionId) {
        let mut inner = lock(&self.inner);
        let Some(prev) = inner
            .sessions
            .get_mut(&session)
            .and_then(|s| s.master.take())
        else {
            return;
        };
        if let Some(m) = inner.masters.get_mut(&prev) {
            m.sessions.remove(&session);
        }
    }

    /// Delivers an event from master `link` to `session`, but only if the
    /// session is routed to that master. Returns false otherwise.
    pub fn deliver(&self, link: LinkId, session: SessionId, event: SessionEvent) -> bool {
        let inner = lock(&self.inner);
        match inner.sessions.get(&session) {
            Some(s) if s.master == Some(link) => s.events.send(event).is_ok(),
            _ => false,
        }
    }

    /// Forgets a finished session and marks it done.
    pub fn remove_session(&self, session: SessionId) {
        let mut inner = lock(&self.inner);
        let Some(entry) = inner.sessions.remove(&session) else {
            return;
        };
        if inner.by_name.get(&entry.name) == Some(&session) {
            inner.by_name.remove(&entry.name);
        }
        if let Some(m) = entry.master.and_then(|l| inner.masters.get_mut(&l)) {
            m.sessions.remove(&session);
        }
        metrics::gauge!("flotilla_gateway_connected_workers").set(inner.sessions.len() as f64);
        entry.done.cancel();
    }

    /// Number of live master links, and how many of them are routable.
    pub fn master_counts(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        let routable = inner.masters.values().filter(|m| !m.draining).count();
        (inner.masters.len(), routable)
    }
}
