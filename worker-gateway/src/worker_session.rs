//! The `WorkerGateway` service: one task per worker `Session` stream.
//!
//! A session goes through three phases: waiting for a routable master,
//! authenticating through the chosen master (`AuthRequest` / `AuthResult`),
//! and attached, when it relays messages both ways. It ends when the worker
//! leaves, when its master dies (running commands are interrupted and the
//! worker told to reconnect, so it is routed to another master), when the
//! master hands it back with `Reconnect`, or when a newer session of the same
//! worker name replaces it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as ToWorkerMsg;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::worker_gateway_server::WorkerGateway;
use flotilla_proto::v1::worker_message::Msg as FromWorkerMsg;
use flotilla_proto::v1::{
    AuthRequest, FromWorker, GatewayMessage, GatewayToMaster, Interrupt, Reconnect, Refused,
    Register, Registered, WorkerDetached, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::options::GatewayOptions;
use crate::registry::{MasterHandle, Registry, SessionEvent, SessionId};

/// Messages queued towards one worker before the sender waits.
const WORKER_QUEUE: usize = 64;
/// How long a new session waits for the session it replaces to detach.
const REPLACE_WAIT: Duration = Duration::from_secs(3);
/// How long final messages to a peer may wait for room before being dropped.
const FINAL_SEND_WAIT: Duration = Duration::from_secs(2);
/// How often a worker waiting for a master is logged again.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(60);

type WorkerTx = mpsc::Sender<Result<GatewayMessage, Status>>;

/// Implements `flotilla.v1.WorkerGateway`.
pub(crate) struct WorkerGatewayService {
    pub registry: Arc<Registry>,
    pub opts: Arc<GatewayOptions>,
    pub shutdown: CancellationToken,
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
        let first = tokio::time::timeout(self.opts.auth_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Register received in time"))??;
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
        if register.name.is_empty() {
            return Err(Status::invalid_argument("Register.name must not be empty"));
        }

        let (worker_tx, worker_rx) = mpsc::channel(WORKER_QUEUE);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (id, previous) = self.registry.new_session(&register.name, events_tx);
        info!(worker = %register.name, session = id, ?peer, "worker connected");
        let session = Session {
            id,
            register,
            inbound,
            worker_tx,
            events,
            running: BTreeSet::new(),
            registry: self.registry.clone(),
            opts: self.opts.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(session.run(previous));
        Ok(Response::new(ReceiverStream::new(worker_rx)))
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
    inbound: Streaming<WorkerMessage>,
    worker_tx: WorkerTx,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    /// Commands forwarded to the worker whose `CommandExit` was not yet seen.
    running: BTreeSet<u64>,
    registry: Arc<Registry>,
    opts: Arc<GatewayOptions>,
    shutdown: CancellationToken,
}

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
    async fn run(mut self, previous: Option<CancellationToken>) {
        let _guard = SessionGuard {
            registry: self.registry.clone(),
            id: self.id,
        };
        if let Some(previous) = previous {
            // Let the replaced session tell its master it left before this one
            // asks a master to accept the same worker.
            let _ = tokio::time::timeout(REPLACE_WAIT, previous.cancelled()).await;
        }
        let finish = match self.authenticate().await {
            Ok(master) => self.attached(master).await,
            Err(finish) => finish,
        };
        self.finish(finish).await;
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

    async fn to_worker(&self, msg: GatewayMessage) -> bool {
        self.worker_tx.send(Ok(msg)).await.is_ok()
    }

    /// Handles a worker message received before the session is attached.
    fn before_attached(
        &self,
        msg: Result<Option<WorkerMessage>, Status>,
        master: Option<&MasterHandle>,
    ) -> Inbound {
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
                "worker closed the stream".to_owned(),
                master.cloned(),
            )),
            Err(status) => Inbound::End(Finish::worker_gone(
                format!("worker stream failed: {}", status.message()),
                master.cloned(),
            )),
        }
    }

    /// Finds a master and gets the worker accepted by it.
    async fn authenticate(&mut self) -> Result<MasterHandle, Finish> {
        let mut changes = self.registry.subscribe();
        let mut waiting_since: Option<tokio::time::Instant> = None;
        loop {
            changes.borrow_and_update();
            let Some(master) = self.registry.route(self.name()) else {
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
                        if matches!(ev, Some(SessionEvent::Replaced) | None) {
                            return Err(Finish::reconnect("replaced by a newer session of the same worker", None));
                        }
                    }
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
                            warn!(worker = %self.name(), master = %master, %reason, "worker refused");
                            metrics::counter!("flotilla_gateway_workers_refused_total").increment(1);
                            return Err(Finish {
                                to_worker: vec![GatewayMessage {
                                    msg: Some(ToWorkerMsg::Refused(Refused { reason: reason.clone() })),
                                }],
                                status: Some(Status::unauthenticated(format!("refused: {reason}"))),
                                detach: None,
                                why: format!("refused by master {master}: {reason}"),
                            });
                        }
                        Some(SessionEvent::MasterGone { link, reason }) if link == master.link => {
                            info!(worker = %self.name(), master = %master, %reason, "master lost during authentication; routing again");
                            break;
                        }
                        Some(SessionEvent::Replaced) | None => {
                            return Err(Finish::reconnect("replaced by a newer session of the same worker", Some(master)));
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
        // A worker message waiting for room in the master's queue. While it
        // waits, events (an Interrupt, the master's death) are still handled
        // and the worker is not read (back-pressure reaches its commands).
        let mut pending: Option<GatewayToMaster> = None;
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
                            return Finish::worker_gone("worker stream closed".to_owned(), Some(master.clone()));
                        }
                        if let Some(reason) = reconnect {
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
                    Some(SessionEvent::Replaced) | None => {
                        return Finish::reconnect("replaced by a newer session of the same worker", Some(master.clone()));
                    }
                    Some(other) => debug!(worker = %self.name(), event = other.kind(), "ignoring stale event"),
                },
                permit = master.reserve(), if pending.is_some() => {
                    // Without a permit the link is dead; its MasterGone event follows.
                    if let (Some(permit), Some(msg)) = (permit, pending.take()) {
                        permit.send(Ok(msg));
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
                        if let Some(FromWorkerMsg::Exit(exit)) = &msg.msg {
                            self.running.remove(&exit.command_id);
                        }
                        metrics::counter!("flotilla_gateway_routed_messages_total", "direction" => "to_master")
                            .increment(1);
                        pending = Some(GatewayToMaster {
                            msg: Some(ToMaster::FromWorker(FromWorker { session: self.id, msg: Some(msg) })),
                        });
                    }
                    Ok(None) => {
                        return Finish::worker_gone("worker closed the stream".to_owned(), Some(master.clone()));
                    }
                    Err(status) => {
                        return Finish::worker_gone(format!("worker stream failed: {}", status.message()), Some(master.clone()));
                    }
                },
                _ = self.shutdown.cancelled() => {
                    return Finish::reconnect("gateway shutting down", Some(master.clone()));
                }
            }
        }
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
