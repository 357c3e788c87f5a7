//! The `WorkerGateway` service: one task per worker `Session` stream.
//!
//! A session goes through three phases: waiting for a routable master,
//! authenticating through the chosen master (`AuthRequest` / `AuthResult`),
//! and attached, when it relays messages both ways. It ends when the worker
//! leaves, when its master dies (running commands are interrupted and the
//! worker told to reconnect, so it is routed to another master), when the
//! master hands it back with `Reconnect`, when the worker falls silent (no
//! heartbeat, no answer to `Ping`) for the liveness deadline, or when a newer
//! session of the same worker name replaces it.
//!
//! Admission: a `Register` under a name that already has a live session
//! changes nothing until the newcomer's password is checked (by a master,
//! `AuthRequest.check_only`) *and* the old session fails a liveness probe (a
//! `Ping` it must answer within `probe_timeout`). If the old session answers,
//! the newcomer is refused ("worker name in use"). Refusals are slowed down
//! per name and address (see `admission`).
//!
//! Ownership: a `CommandOutput` or `CommandExit` is relayed only for a
//! command this session was sent; anything else is dropped, logged and
//! counted (`flotilla_gateway_foreign_messages_total`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as ToWorkerMsg;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::worker_gateway_server::WorkerGateway;
use flotilla_proto::v1::worker_message::Msg as FromWorkerMsg;
use flotilla_proto::v1::{
    AuthRequest, FromWorker, GatewayMessage, GatewayToMaster, Interrupt, Ping, Reconnect, Refused,
    Register, Registered, WorkerDetached, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::admission::Throttle;
use crate::connections::Connections;
use crate::options::GatewayOptions;
use crate::registry::{
    Holder, Liveness, MasterHandle, Registry, SessionEvent, SessionId, WorkerTx, clock_ms,
};

/// Messages queued towards one worker before the sender waits.
const WORKER_QUEUE: usize = 64;
/// How long a new session waits for the session it replaces to detach.
const REPLACE_WAIT: Duration = Duration::from_secs(3);
/// How long final messages to a peer may wait for room before being dropped.
const FINAL_SEND_WAIT: Duration = Duration::from_secs(2);
/// How often a worker waiting for a master is logged again.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);
/// Largest `CommandOutput.data` accepted (the reference worker sends 64 KiB).
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Limits on `Register`.
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_PASSWORD_BYTES: usize = 1024;
pub const MAX_FACTS: usize = 64;
pub const MAX_FACTS_BYTES: usize = 16 * 1024;
/// How often a newcomer re-checks a name whose holder is being replaced.
const CLAIM_ATTEMPTS: usize = 3;
/// Foreign messages of one session logged at warn before the rest go to debug.
const FOREIGN_LOGGED: u32 = 3;

/// Implements `flotilla.v1.WorkerGateway`; also starts the sessions of
/// workers that speak another protocol (see `buildbot`).
#[derive(Clone)]
pub(crate) struct WorkerGatewayService {
    pub registry: Arc<Registry>,
    pub opts: Arc<GatewayOptions>,
    pub shutdown: CancellationToken,
    pub throttle: Arc<Throttle>,
    pub connections: Arc<Connections>,
}

/// Checks the sizes in a `Register`, so a hostile one cannot make the
/// gateway or a master carry megabytes per attempt.
pub(crate) fn check_register(r: &Register) -> Result<(), Status> {
    if r.name.is_empty() {
        return Err(Status::invalid_argument("Register.name must not be empty"));
    }
    if r.name.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "Register.name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if r.password.len() > MAX_PASSWORD_BYTES {
        return Err(Status::invalid_argument(format!(
            "Register.password is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let facts_bytes: usize = r.facts.iter().map(|(k, v)| k.len() + v.len()).sum();
    if r.facts.len() > MAX_FACTS || facts_bytes > MAX_FACTS_BYTES {
        return Err(Status::invalid_argument(format!(
            "Register.facts: at most {MAX_FACTS} entries and {MAX_FACTS_BYTES} bytes (got {} entries, {facts_bytes} bytes)",
            r.facts.len()
        )));
    }
    Ok(())
}

/// The status ending a stream whose message was over a size limit.
fn too_large(what: &str) -> Status {
    metrics::counter!("flotilla_gateway_oversize_messages_total").increment(1);
    Status::resource_exhausted(what.to_owned())
}

#[tonic::async_trait]
impl WorkerGateway for WorkerGatewayService {
    type SessionStream = ReceiverStream<Result<GatewayMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.opts.handshake_deadline, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Register received within the handshake deadline of {:?}",
                    self.opts.handshake_deadline
                ))
            })?
            .map_err(|status| match status.code() {
                tonic::Code::OutOfRange => too_large(&format!(
                    "message larger than the limit of {} bytes",
                    flotilla_proto::MAX_MESSAGE_BYTES
                )),
                _ => status,
            })?;
        let register = match first.and_then(|m| m.msg) {
            Some(FromWorkerMsg::Register(r)) => r,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Register",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "expected Register, got an empty message or end of stream",
                ));
            }
        };
        check_register(&register)?;
        self.connections.handshaken(peer);
        let worker_rx = self.start_session(register, peer, WorkerInbound::Grpc(Box::new(inbound)));
        Ok(Response::new(ReceiverStream::new(worker_rx)))
    }
}

/// Where a session reads its worker's messages from: a gRPC stream, or a
/// translator for another worker protocol feeding a channel (its end is the
/// worker's end of stream).
pub(crate) enum WorkerInbound {
    Grpc(Box<Streaming<WorkerMessage>>),
    Channel(mpsc::Receiver<Result<WorkerMessage, Status>>),
}

impl WorkerInbound {
    /// The next message (cancel-safe); `Ok(None)` at the end of the stream.
    async fn message(&mut self) -> Result<Option<WorkerMessage>, Status> {
        match self {
            Self::Grpc(s) => s.message().await,
            Self::Channel(rx) => rx.recv().await.transpose(),
        }
    }
}

/// What a session sends towards its worker.
pub(crate) type WorkerRx = mpsc::Receiver<Result<GatewayMessage, Status>>;

impl WorkerGatewayService {
    /// Starts the session of a worker whose `Register` was checked; returns
    /// the messages for the worker. The session goes through admission,
    /// authentication and routing exactly as a gRPC worker's does.
    pub(crate) fn start_session(
        &self,
        register: Register,
        peer: Option<std::net::SocketAddr>,
        inbound: WorkerInbound,
    ) -> WorkerRx {
        let (worker_tx, worker_rx) = mpsc::channel(WORKER_QUEUE);
        let (events_tx, events) = mpsc::unbounded_channel();
        let liveness = Arc::new(Liveness::new());
        let id = self.registry.new_session(
            &register.name,
            events_tx,
            liveness.clone(),
            worker_tx.clone(),
        );
        info!(worker = %register.name, session = id, ?peer, "worker connected");
        let session = Session {
            id,
            register,
            addr: peer.map(|p| p.ip()),
            inbound,
            worker_tx,
            events,
            running: BTreeSet::new(),
            liveness,
            foreign: 0,
            registry: self.registry.clone(),
            opts: self.opts.clone(),
            shutdown: self.shutdown.clone(),
            throttle: self.throttle.clone(),
        };
        tokio::spawn(session.run());
        worker_rx
    }
}

/// How a session ends.
#[derive(Default)]
struct Finish {
    /// Last messages for the worker.
    to_worker: Vec<GatewayMessage>,
    /// Error status ending the worker's stream (none: a clean end).
    status: Option<Status>,
    /// Master to send `WorkerDetached` to, and why.
    detach: Option<(MasterHandle, String)>,
    /// For the log.
    why: String,
}

impl Finish {
    fn worker_gone(why: String, master: Option<MasterHandle>) -> Self {
        Self {
            detach: master.map(|m| (m, why.clone())),
            why,
            ..Self::default()
        }
    }

    fn reconnect(why: &str, master: Option<MasterHandle>) -> Self {
        Self {
            to_worker: vec![reconnect_msg(why)],
            detach: master.map(|m| (m, why.to_owned())),
            why: why.to_owned(),
            ..Self::default()
        }
    }

    fn invalid(why: &str, master: Option<MasterHandle>) -> Self {
        Self {
            status: Some(Status::invalid_argument(why)),
            detach: master.map(|m| (m, why.to_owned())),
            why: why.to_owned(),
            ..Self::default()
        }
    }

    fn refused(reason: &str, why: String) -> Self {
        Self {
            to_worker: vec![GatewayMessage {
                msg: Some(ToWorkerMsg::Refused(Refused {
                    reason: reason.to_owned(),
                })),
            }],
            status: Some(Status::unauthenticated(format!("refused: {reason}"))),
            detach: None,
            why,
        }
    }

    /// The worker's stream failed; an over-limit message is said so.
    fn stream_failed(status: Status, master: Option<MasterHandle>) -> Self {
        if status.code() == tonic::Code::OutOfRange {
            let why = format!(
                "message larger than the limit of {} bytes ({})",
                flotilla_proto::MAX_MESSAGE_BYTES,
                status.message()
            );
            return Self {
                status: Some(too_large(&why)),
                detach: master.map(|m| (m, why.clone())),
                why,
                ..Self::default()
            };
        }
        let why =
            if status.code() == tonic::Code::Cancelled || status.code() == tonic::Code::Unknown {
                format!("closed: worker stream failed: {}", status.message())
            } else {
                format!("worker stream failed: {}", status.message())
            };
        Self::worker_gone(why, master)
    }
}

fn ping_msg() -> GatewayMessage {
    GatewayMessage {
        msg: Some(ToWorkerMsg::Ping(Ping {})),
    }
}

fn reconnect_msg(reason: &str) -> GatewayMessage {
    GatewayMessage {
        msg: Some(ToWorkerMsg::Reconnect(Reconnect {
            reason: reason.to_owned(),
        })),
    }
}

/// What a worker sent while it is not attached to a master.
enum Inbound {
    Ignore,
    End(Finish),
}

struct Session {
    id: SessionId,
    register: Register,
    addr: Option<IpAddr>,
    inbound: WorkerInbound,
    worker_tx: WorkerTx,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    /// Commands forwarded to the worker whose `CommandExit` was not yet seen.
    running: BTreeSet<u64>,
    liveness: Arc<Liveness>,
    /// Messages about commands this session was never sent.
    foreign: u32,
    registry: Arc<Registry>,
    opts: Arc<GatewayOptions>,
    shutdown: CancellationToken,
    throttle: Arc<Throttle>,
}

const SUPERSEDED: &str =
    "superseded: this session failed a liveness probe when the same worker registered again";

/// Removes the session from the registry however its task ends.
struct SessionGuard {
    registry: Arc<Registry>,
    id: SessionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.registry.remove_session(self.id);
    }
}

impl Session {
    async fn run(mut self) {
        let _guard = SessionGuard {
            registry: self.registry.clone(),
            id: self.id,
        };
        let hold = self.throttle.hold(self.name(), self.addr);
        if !hold.is_zero() {
            debug!(worker = %self.name(), ?hold, "holding back a registration after recent refusals");
            tokio::select! {
                _ = tokio::time::sleep(hold) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
        let finish = match self.admit().await {
            Ok(()) => match self.authenticate(false).await {
                Ok(master) => {
                    self.throttle.succeeded(self.name());
                    self.attached(master).await
                }
                Err(finish) => finish,
            },
            Err(finish) => finish,
        };
        self.finish(finish).await;
    }

    /// Makes this session the holder of its worker name. When a live session
    /// holds it, the newcomer's password is checked first (nothing changes on
    /// a wrong one), then the holder is probed: if it answers, the newcomer
    /// is refused; if not, it is replaced.
    async fn admit(&mut self) -> Result<(), Finish> {
        let mut superseded: Option<(SessionId, CancellationToken)> = None;
        for _ in 0..CLAIM_ATTEMPTS {
            let name = self.register.name.clone();
            if self
                .registry
                .claim_name(&name, self.id, superseded.as_ref().map(|(id, _)| *id))
                .is_ok()
            {
                {
                    if let Some((old, done)) = superseded {
                        // Let the replaced session tell its master it left before
                        // this one asks a master to accept the same worker.
                        if tokio::time::timeout(REPLACE_WAIT, done.cancelled())
                            .await
                            .is_err()
                        {
                            warn!(worker = %name, session = self.id, old, "the replaced session did not end in time");
                        }
                    }
                    return Ok(());
                }
            }
            let Some((holder_id, holder)) = self.registry.holder(&name, self.id) else {
                continue;
            };
            let master = self.authenticate(true).await?;
            self.registry.unassign(self.id);
            if self.probe(&holder).await {
                let reason = "worker name in use";
                self.throttle.failed(&name, self.addr, reason);
                metrics::counter!("flotilla_gateway_workers_refused_total", "reason" => "name in use").increment(1);
                return Err(Finish::refused(
                    reason,
                    format!(
                        "refused: worker name in use (session {holder_id} answered a liveness probe; checked by {master})"
                    ),
                ));
            }
            info!(worker = %name, session = self.id, old = holder_id,
                "the live session of this worker failed its liveness probe; replacing it");
            metrics::counter!("flotilla_gateway_sessions_replaced_total").increment(1);
            superseded = Some((holder_id, holder.done));
        }
        Err(Finish::refused(
            "worker name in use",
            "refused: worker name in use (the name kept changing hands)".to_owned(),
        ))
    }

    /// Sends the holder a `Ping`: true if it was heard from within the probe
    /// timeout (or it is not being read only because its master is slow).
    async fn probe(&self, holder: &Holder) -> bool {
        let since = clock_ms();
        match holder.worker_tx.try_send(Ok(ping_msg())) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Closed(_)) => return false,
        }
        let deadline = tokio::time::Instant::now() + self.opts.probe_timeout;
        loop {
            if holder.liveness.heard_since(since) {
                return true;
            }
            if holder.done.is_cancelled() || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                _ = holder.done.cancelled() => return false,
            }
        }
    }

    fn name(&self) -> &str {
        &self.register.name
    }

    async fn finish(self, finish: Finish) {
        let Finish {
            to_worker,
            status,
            detach,
            why,
        } = finish;
        info!(worker = %self.name(), session = self.id, reason = %why, "worker session ended");
        for msg in to_worker {
            let _ = tokio::time::timeout(FINAL_SEND_WAIT, self.worker_tx.send(Ok(msg))).await;
        }
        if let Some(status) = status {
            let _ = tokio::time::timeout(FINAL_SEND_WAIT, self.worker_tx.send(Err(status))).await;
        }
        if let Some((master, reason)) = detach {
            let msg = GatewayToMaster {
                msg: Some(ToMaster::Detached(WorkerDetached {
                    session: self.id,
                    name: self.register.name.clone(),
                    reason,
                })),
            };
            let _ = tokio::time::timeout(FINAL_SEND_WAIT, master.send(msg)).await;
        }
        // Dropping `worker_tx` ends the worker's stream.
    }

    /// Sends to the worker, waiting for room at most the liveness deadline
    /// (a worker that does not read its stream for that long is frozen).
    async fn to_worker(&self, msg: GatewayMessage) -> bool {
        matches!(
            tokio::time::timeout(self.opts.liveness_deadline, self.worker_tx.send(Ok(msg))).await,
            Ok(Ok(()))
        )
    }

    /// Handles a worker message received before the session is attached.
    fn before_attached(
        &self,
        msg: Result<Option<WorkerMessage>, Status>,
        master: Option<&MasterHandle>,
    ) -> Inbound {
        if let Ok(Some(_)) = &msg {
            self.liveness.heard();
        }
        match msg {
            Ok(Some(WorkerMessage { msg: None })) => Inbound::End(Finish::invalid(
                "malformed WorkerMessage (no message set)",
                master.cloned(),
            )),
            Ok(Some(WorkerMessage {
                msg: Some(FromWorkerMsg::Register(_)),
            })) => Inbound::End(Finish::invalid(
                "Register sent twice on one session",
                master.cloned(),
            )),
            Ok(Some(_)) => {
                debug!(worker = %self.name(), "dropping a message sent before the worker was accepted");
                Inbound::Ignore
            }
            Ok(None) => Inbound::End(Finish::worker_gone(
                "closed: worker closed the stream".to_owned(),
                master.cloned(),
            )),
            Err(status) => Inbound::End(Finish::stream_failed(status, master.cloned())),
        }
    }

    /// Finds a master and gets the worker accepted by it; with `check_only`
    /// the master only checks the credentials and does not attach it.
    async fn authenticate(&mut self, check_only: bool) -> Result<MasterHandle, Finish> {
        let mut changes = self.registry.subscribe();
        let mut waiting_since: Option<tokio::time::Instant> = None;
        loop {
            changes.borrow_and_update();
            let routed = self.registry.route(self.name());
            let Ok(master) = routed else {
                let retry_at = routed.err().flatten();
                if waiting_since.is_none() {
                    info!(worker = %self.name(), session = self.id, "no live master to route to; worker waits");
                    waiting_since = Some(tokio::time::Instant::now());
                }
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = self.shutdown.cancelled() => {
                        return Err(Finish::reconnect("gateway shutting down", None));
                    }
                    msg = self.inbound.message() => {
                        if let Inbound::End(f) = self.before_attached(msg, None) {
                            return Err(f);
                        }
                    }
                    ev = self.events.recv() => {
                        if matches!(ev, Some(SessionEvent::Superseded) | None) {
                            return Err(Finish::reconnect(SUPERSEDED, None));
                        }
                    }
                    _ = sleep_until_opt(retry_at) => {}
                    _ = tokio::time::sleep(WAITING_LOG_EVERY) => {
                        let waited = waiting_since.map(|t| t.elapsed()).unwrap_or_default();
                        warn!(worker = %self.name(), session = self.id, ?waited, "worker still waiting for a live, non-draining master");
                    }
                }
                continue;
            };
            if !self.registry.assign(self.id, master.link) {
                continue;
            }
            info!(worker = %self.name(), session = self.id, master = %master, "routing worker to master");
            let request = GatewayToMaster {
                msg: Some(ToMaster::AuthRequest(AuthRequest {
                    session: self.id,
                    name: self.register.name.clone(),
                    password: self.register.password.clone(),
                    protocol_version: self.register.protocol_version,
                    facts: self.register.facts.clone(),
                    check_only,
                })),
            };
            if !master.send(request).await {
                self.registry.unassign(self.id);
                continue;
            }
            let deadline = tokio::time::sleep(self.opts.auth_timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    ev = self.events.recv() => match ev {
                        Some(SessionEvent::AuthResult { link, accepted, reason }) if link == master.link => {
                            if accepted {
                                return Ok(master);
                            }
                            // Logged once per burst by the throttle.
                            debug!(worker = %self.name(), master = %master, %reason, "worker refused");
                            self.throttle.failed(self.name(), self.addr, &reason);
                            metrics::counter!("flotilla_gateway_workers_refused_total", "reason" => "credentials").increment(1);
                            self.registry.unassign(self.id);
                            return Err(Finish::refused(&reason, format!("refused by master {master}: {reason}")));
                        }
                        Some(SessionEvent::MasterGone { link, reason }) if link == master.link => {
                            info!(worker = %self.name(), master = %master, %reason, "master lost during authentication; routing again");
                            break;
                        }
                        Some(SessionEvent::Superseded) | None => {
                            return Err(Finish::reconnect(SUPERSEDED, Some(master)));
                        }
                        Some(other) => debug!(worker = %self.name(), event = other.kind(), "ignoring stale event"),
                    },
                    _ = &mut deadline => {
                        warn!(worker = %self.name(), master = %master, timeout = ?self.opts.auth_timeout,
                            "master did not answer the worker's authentication in time; routing again");
                        let msg = GatewayToMaster {
                            msg: Some(ToMaster::Detached(WorkerDetached {
                                session: self.id,
                                name: self.register.name.clone(),
                                reason: "authentication timed out".to_owned(),
                            })),
                        };
                        let _ = tokio::time::timeout(FINAL_SEND_WAIT, master.send(msg)).await;
                        self.registry.unassign(self.id);
                        break;
                    }
                    msg = self.inbound.message() => {
                        if let Inbound::End(f) = self.before_attached(msg, Some(&master)) {
                            return Err(f);
                        }
                    }
                    _ = self.shutdown.cancelled() => {
                        return Err(Finish::reconnect("gateway shutting down", Some(master)));
                    }
                }
            }
        }
    }

    /// Relays messages between the worker and its master until one side ends.
    async fn attached(&mut self, master: MasterHandle) -> Finish {
        let registered = GatewayMessage {
            msg: Some(ToWorkerMsg::Registered(Registered {
                master: master.name.clone(),
                protocol_version: flotilla_proto::PROTOCOL_VERSION,
            })),
        };
        if !self.to_worker(registered).await {
            return Finish::worker_gone("worker stream closed".to_owned(), Some(master.clone()));
        }
        info!(worker = %self.name(), session = self.id, master = %master, "worker attached");
        self.liveness.heard();
        // A worker message waiting for room in the master's queue. While it
        // waits, events (an Interrupt, the master's death) are still handled
        // and the worker is not read (back-pressure reaches its commands).
        let mut pending: Option<GatewayToMaster> = None;
        // Checked several times per deadline, so a silent worker is dropped
        // close to the deadline, not up to a ping interval after it.
        let every = self
            .opts
            .ping_interval
            .min(self.opts.liveness_deadline / 5)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        let mut last_ping = tokio::time::Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(SessionEvent::ToWorker { link, msg }) if link == master.link => {
                        let reconnect = match &msg.msg {
                            Some(ToWorkerMsg::Run(run)) => {
                                self.running.insert(run.command_id);
                                None
                            }
                            Some(ToWorkerMsg::Reconnect(r)) => Some(r.reason.clone()),
                            _ => None,
                        };
                        if !self.to_worker(msg).await {
                            return self.not_reading(&master);
                        }
                        if let Some(reason) = reconnect {
                            // Not back to this master at once: it may be starting
                            // to drain before its heartbeat says so.
                            self.registry.avoid(self.name(), master.link);
                            return Finish {
                                detach: Some((master.clone(), format!("handed back by master: {reason}"))),
                                why: format!("master asked the worker to reconnect: {reason}"),
                                ..Finish::default()
                            };
                        }
                    }
                    Some(SessionEvent::MasterGone { link, reason }) if link == master.link => {
                        return self.master_gone(&master, &reason);
                    }
                    Some(SessionEvent::Superseded) | None => {
                        return Finish::reconnect(SUPERSEDED, Some(master.clone()));
                    }
                    Some(other) => debug!(worker = %self.name(), event = other.kind(), "ignoring stale event"),
                },
                permit = master.reserve(), if pending.is_some() => {
                    // Without a permit the link is dead; its MasterGone event follows.
                    if let (Some(permit), Some(msg)) = (permit, pending.take()) {
                        permit.send(Ok(msg));
                    }
                    self.liveness.set_blocked(false);
                }
                _ = tick.tick() => {
                    let silent = self.liveness.silent_for();
                    if silent >= self.opts.liveness_deadline {
                        let why = format!(
                            "silent: no heartbeat, output or answer to Ping for {silent:?} (deadline {:?}); the worker is wedged, frozen or unreachable",
                            self.opts.liveness_deadline
                        );
                        warn!(worker = %self.name(), session = self.id, running = self.running.len(), "{why}");
                        metrics::counter!("flotilla_gateway_workers_dropped_total", "reason" => "silent").increment(1);
                        return Finish::reconnect(&why, Some(master.clone()));
                    }
                    if silent >= self.opts.ping_interval && last_ping.elapsed() >= self.opts.ping_interval {
                        // Never wait here: a worker that does not read is what this detects.
                        let _ = self.worker_tx.try_send(Ok(ping_msg()));
                        last_ping = tokio::time::Instant::now();
                    }
                }
                msg = self.inbound.message(), if pending.is_none() => match msg {
                    Ok(Some(WorkerMessage { msg: None })) => {
                        return Finish::invalid("malformed WorkerMessage (no message set)", Some(master.clone()));
                    }
                    Ok(Some(WorkerMessage { msg: Some(FromWorkerMsg::Register(_)) })) => {
                        return Finish::invalid("Register sent twice on one session", Some(master.clone()));
                    }
                    Ok(Some(msg)) => {
                        self.liveness.heard();
                        match &msg.msg {
                            Some(FromWorkerMsg::Output(o)) => {
                                if o.data.len() > MAX_OUTPUT_BYTES {
                                    let why = format!(
                                        "CommandOutput.data of {} bytes is over the limit of {MAX_OUTPUT_BYTES} bytes",
                                        o.data.len()
                                    );
                                    warn!(worker = %self.name(), session = self.id, "{why}; ending the session");
                                    return Finish {
                                        status: Some(too_large(&why)),
                                        detach: Some((master.clone(), why.clone())),
                                        why,
                                        ..Finish::default()
                                    };
                                }
                                if !self.owns(o.command_id, "CommandOutput") {
                                    continue;
                                }
                            }
                            Some(FromWorkerMsg::Exit(exit)) => {
                                if !self.owns(exit.command_id, "CommandExit") {
                                    continue;
                                }
                                self.running.remove(&exit.command_id);
                            }
                            _ => {}
                        }
                        metrics::counter!("flotilla_gateway_routed_messages_total", "direction" => "to_master")
                            .increment(1);
                        let msg = GatewayToMaster {
                            msg: Some(ToMaster::FromWorker(FromWorker { session: self.id, msg: Some(msg) })),
                        };
                        match master.reserve_now() {
                            Some(permit) => permit.send(Ok(msg)),
                            None => {
                                pending = Some(msg);
                                self.liveness.set_blocked(true);
                            }
                        }
                    }
                    Ok(None) => {
                        return Finish::worker_gone("closed: worker closed the stream".to_owned(), Some(master.clone()));
                    }
                    Err(status) => {
                        return Finish::stream_failed(status, Some(master.clone()));
                    }
                },
                _ = self.shutdown.cancelled() => {
                    return Finish::reconnect("gateway shutting down", Some(master.clone()));
                }
            }
        }
    }

    /// Whether command `id` was sent to this session (and has not exited);
    /// a message about any other command is dropped, logged and counted.
    fn owns(&mut self, id: u64, kind: &'static str) -> bool {
        if self.running.contains(&id) {
            return true;
        }
        self.foreign += 1;
        metrics::counter!("flotilla_gateway_foreign_messages_total", "kind" => kind).increment(1);
        if self.foreign <= FOREIGN_LOGGED {
            warn!(worker = %self.name(), session = self.id, command = id, kind,
                "dropped a message about a command this session was not sent (or that already exited)");
            if self.foreign == FOREIGN_LOGGED {
                warn!(worker = %self.name(), session = self.id,
                    "further such messages of this session are dropped and counted (flotilla_gateway_foreign_messages_total), not logged");
            }
        } else {
            debug!(worker = %self.name(), session = self.id, command = id, kind, "dropped a foreign message");
        }
        false
    }

    /// The worker did not take a message within the liveness deadline.
    fn not_reading(&mut self, master: &MasterHandle) -> Finish {
        let why = format!(
            "frozen: the worker has not read its stream for {:?}",
            self.opts.liveness_deadline
        );
        warn!(worker = %self.name(), session = self.id, "{why}");
        metrics::counter!("flotilla_gateway_workers_dropped_total", "reason" => "frozen")
            .increment(1);
        Finish::worker_gone(why, Some(master.clone()))
    }

    /// The master died: stop what it was running on this worker and send the
    /// worker off to register again.
    fn master_gone(&mut self, master: &MasterHandle, reason: &str) -> Finish {
        let why = format!("master {master} lost: {reason}");
        let mut to_worker: Vec<GatewayMessage> = std::mem::take(&mut self.running)
            .into_iter()
            .map(|command_id| GatewayMessage {
                msg: Some(ToWorkerMsg::Interrupt(Interrupt {
                    command_id,
                    reason: why.clone(),
                })),
            })
            .collect();
        if !to_worker.is_empty() {
            info!(worker = %self.name(), master = %master, commands = to_worker.len(), "interrupting commands of a lost master");
        }
        to_worker.push(reconnect_msg(&why));
        Finish {
            to_worker,
            status: None,
            detach: None,
            why,
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
