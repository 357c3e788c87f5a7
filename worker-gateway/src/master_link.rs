//! The `MasterLink` service: masters attach here, and their link's liveness
//! decides which masters workers may be routed to.
//!
//! A link is dead when its stream ends or fails, when it sends a malformed
//! message, or when it is silent longer than its `silence_timeout_ms`
//! (a frozen master is fenced: its workers' commands are interrupted and
//! the workers re-routed, before the database hands its builds to others).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::master_link_server::MasterLink;
use flotilla_proto::v1::master_to_gateway::Msg as FromMaster;
use flotilla_proto::v1::{GatewayHello, GatewayToMaster, MasterHello, MasterToGateway};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::connections::Connections;
use crate::options::GatewayOptions;
use crate::registry::{MasterHandle, Registry, SessionEvent};

/// Messages queued towards one master before senders wait (back-pressure).
const MASTER_QUEUE: usize = 1024;

/// Implements `flotilla.v1.MasterLink`.
pub(crate) struct MasterLinkService {
    pub registry: Arc<Registry>,
    pub opts: Arc<GatewayOptions>,
    pub shutdown: CancellationToken,
    pub connections: Arc<Connections>,
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<GatewayToMaster, Status>> + Send>>;

#[tonic::async_trait]
impl MasterLink for MasterLinkService {
    type AttachStream = AttachStream;

    async fn attach(
        &self,
        request: Request<Streaming<MasterToGateway>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let hello = first_hello(&mut inbound, self.opts.handshake_deadline).await?;
        self.connections.handshaken(peer);
        if hello.name.is_empty() {
            return Err(Status::invalid_argument(
                "MasterHello.name must not be empty",
            ));
        }
        let silence = match hello.silence_timeout_ms {
            0 => self.opts.default_silence_timeout,
            ms => Duration::from_millis(ms),
        };

        let (tx, mut rx) = mpsc::channel(MASTER_QUEUE);
        let greeting = GatewayToMaster {
            msg: Some(ToMaster::Hello(GatewayHello {
                gateway_id: self.registry.gateway_id.clone(),
            })),
        };
        tx.try_send(Ok(greeting))
            .map_err(|_| Status::internal("fresh master queue is full"))?;
        let handle =
            self.registry
                .attach_master(hello.name.clone(), hello.master_id, hello.draining, tx);
        info!(
            master = %handle,
            ?peer,
            draining = hello.draining,
            silence_timeout = ?silence,
            "master attached"
        );
        metrics::counter!("flotilla_gateway_master_attaches_total").increment(1);

        tokio::spawn(read_link(
            handle.clone(),
            inbound,
            silence,
            self.registry.clone(),
            self.shutdown.clone(),
        ));

        let out = async_stream::stream! {
            loop {
                tokio::select! {
                    biased;
                    _ = handle.dead.cancelled() => {
                        if let Some(status) = handle.take_final_status() {
                            yield Err(status);
                        }
                        break;
                    }
                    msg = rx.recv() => match msg {
                        Some(msg) => yield msg,
                        None => break,
                    },
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
}

async fn first_hello(
    inbound: &mut Streaming<MasterToGateway>,
    wait: Duration,
) -> Result<MasterHello, Status> {
    let first = tokio::time::timeout(wait, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no MasterHello received in time"))??;
    match first.and_then(|m| m.msg) {
        Some(FromMaster::Hello(hello)) => Ok(hello),
        Some(_) => Err(Status::invalid_argument(
            "the first message on a master link must be MasterHello",
        )),
        None => Err(Status::invalid_argument(
            "expected MasterHello, got an empty message or end of stream",
        )),
    }
}

/// Reads one master's stream until the link dies, then declares it dead.
async fn read_link(
    handle: MasterHandle,
    mut inbound: Streaming<MasterToGateway>,
    silence: Duration,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    let link = handle.link;
    let (reason, status) = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                break ("gateway shutting down".to_owned(), Some(Status::unavailable("gateway shutting down")));
            }
            _ = handle.dead.cancelled() => return, // cut by the registry (replaced)
            next = tokio::time::timeout(silence, inbound.message()) => next,
        };
        let msg = match next {
            Err(_) => {
                let reason = format!("master link silent for more than {silence:?}; fenced");
                warn!(master = %handle, "{reason}");
                metrics::counter!("flotilla_gateway_master_fenced_total").increment(1);
                break (reason.clone(), Some(Status::unavailable(reason)));
            }
            Ok(Err(status)) => {
                break (format!("master link failed: {}", status.message()), None);
            }
            Ok(Ok(None)) => break ("master link closed".to_owned(), None),
            Ok(Ok(Some(msg))) => msg,
        };
        match msg.msg {
            None => {
                let reason = "malformed MasterToGateway (no message set)".to_owned();
                warn!(master = %handle, "{reason}; closing link");
                break (reason.clone(), Some(Status::invalid_argument(reason)));
            }
            Some(FromMaster::Hello(h)) => registry.set_draining(link, h.draining),
            Some(FromMaster::Heartbeat(h)) => registry.set_draining(link, h.draining),
            Some(FromMaster::AuthResult(r)) => {
                let event = SessionEvent::AuthResult {
                    link,
                    accepted: r.accepted,
                    reason: r.reason,
                };
                if !registry.deliver(link, r.session, event) {
                    debug!(master = %handle, session = r.session, "AuthResult for a session not waiting on this master");
                }
            }
            Some(FromMaster::WorkAvailable(w)) => {
                // A hint: a master with a full queue misses it and finds the work at its next poll.
                let hint = GatewayToMaster {
                    msg: Some(ToMaster::WorkAvailable(w)),
                };
                for other in registry.other_masters(link) {
                    other.try_send(hint.clone());
                }
            }
            Some(FromMaster::ToWorker(t)) => {
                let Some(inner) = t.msg.filter(|m| m.msg.is_some()) else {
                    warn!(master = %handle, session = t.session, "ignoring ToWorker without a message");
                    continue;
                };
                metrics::counter!("flotilla_gateway_routed_messages_total", "direction" => "to_worker")
                    .increment(1);
                let event = SessionEvent::ToWorker { link, msg: inner };
                if !registry.deliver(link, t.session, event) {
                    debug!(master = %handle, session = t.session, "ToWorker for an unknown session; ignored");
                }
            }
        }
    };
    if registry.detach_master(link, &reason, status) {
        let (live, routable) = registry.master_counts();
        info!(master = %handle, %reason, live, routable, "master detached");
    }
}
