//! The master's link to one gateway: the master dials out, says hello with
//! its identity, heartbeats on the link (so the gateway can fence it when it
//! freezes), answers worker authentication, and carries commands to and
//! output from the workers routed here. Reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::master_link_client::MasterLinkClient;
use flotilla_proto::v1::{
    AuthRequest, AuthResult, FromWorker, GatewayToMaster, MasterHeartbeat, MasterHello,
    MasterToGateway, gateway_to_master, master_to_gateway, worker_message,
};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::state::{CommandEvent, MasterState, WorkerKey};

const OUTBOUND_QUEUE: usize = 1024;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why the commands on a link's workers are lost when the link ends; their
/// end is unknown until the gateway has fenced the link.
pub(crate) const LINK_CLOSED: &str = "the link to the gateway closed";

/// Keeps a link to the gateway at `url` up until `stop`.
pub async fn run(state: Arc<MasterState>, link: u64, url: String, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = session(&state, link, &url) => r,
            _ = stop.cancelled() => Ok(()),
        };
        state.workers.detach_link(link, LINK_CLOSED);
        let deadline = state.config.cluster.master_timeout.get() / 2;
        let record = state.store.workers_detached_link(state.master_id(), link);
        if let Err(e) = crate::db::within(deadline, record).await {
            tracing::debug!(error = %e, "could not record the link's workers as gone");
        }
        state.wake.notify_one();
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(gateway = %url, "gateway link ended; reconnecting"),
            Err(e) => {
                tracing::warn!(gateway = %url, error = %e, "gateway link failed; reconnecting")
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let jitter = rand::rng().random_range(0..=backoff.as_millis() as u64 / 2);
        tokio::select! {
            _ = tokio::time::sleep(backoff + Duration::from_millis(jitter)) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// How long the gateway lets this master's link be silent before it fences
/// the master (`silence_timeout_ms` in the hello).
pub(crate) fn link_silence(state: &MasterState) -> Duration {
    state.config.cluster.master_timeout.get() / 2
}

fn heartbeat_every(state: &MasterState) -> Duration {
    let silence = state.config.cluster.master_timeout.get() / 2;
    (silence / 4).clamp(
        Duration::from_millis(50),
        state.config.cluster.heartbeat_interval.get(),
    )
}

async fn session(state: &Arc<MasterState>, link: u64, url: &str) -> Result<(), String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("bad gateway URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A link that goes silent without closing (packets dropped) is found
        // by HTTP/2 pings: the gateway sends the master nothing on its own.
        .http2_keep_alive_interval(heartbeat_every(state))
        .keep_alive_timeout(link_silence(state))
        .keep_alive_while_idle(true);
    let ca = state
        .config
        .gateway
        .tls_ca
        .as_deref()
        .map(std::path::Path::new);
    if let Some(tls) = flotilla_proto::tls::client_tls(url, ca)? {
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {}", error_chain(&e)))?;
    let mut client = MasterLinkClient::new(channel)
        .max_decoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<MasterToGateway>(OUTBOUND_QUEUE);
    let mut incarnation = state.incarnation.subscribe();
    let master_id = *incarnation.borrow_and_update();
    let hello = MasterHello {
        master_id,
        name: state.name.clone(),
        draining: state.is_draining(),
        silence_timeout_ms: link_silence(state).as_millis() as u64,
    };
    tx.send(msg(master_to_gateway::Msg::Hello(hello)))
        .await
        .map_err(|_| "link closed".to_string())?;
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("attach refused: {s}"))?
        .into_inner();
    tracing::info!(gateway = %url, "attached to gateway");
    state
        .gateway_links
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    state
        .link_senders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(link, tx.clone());

    let beat = heartbeat_every(state);
    let hb_tx = tx.clone();
    let hb_state = state.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(beat);
        loop {
            tick.tick().await;
            // Only beat while the database has confirmed a heartbeat of ours
            // within the fence: a master cut off from the database (even
            // silently, with no error yet) must be fenced by the gateway too.
            if !hb_state.live.fresh() || hb_state.live.is_fenced() {
                continue;
            }
            let m = msg(master_to_gateway::Msg::Heartbeat(MasterHeartbeat {
                draining: hb_state.is_draining(),
            }));
            if hb_tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let result = loop {
        tokio::select! {
            m = inbound.message() => match m {
                Ok(Some(m)) => handle(state, link, &tx, m).await,
                Ok(None) => break Ok(()),
                Err(status) => break Err(format!("stream error: {status}")),
            },
            // A new incarnation says hello on a new link; the gateway moves
            // the old incarnation's workers when this one closes.
            _ = incarnation.changed() => break Err("this master joined again as a new incarnation".into()),
        }
    };
    heartbeat.abort();
    state
        .gateway_links
        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    state
        .link_senders
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&link);
    result
}

fn msg(m: master_to_gateway::Msg) -> MasterToGateway {
    MasterToGateway { msg: Some(m) }
}

async fn handle(
    state: &Arc<MasterState>,
    link: u64,
    tx: &mpsc::Sender<MasterToGateway>,
    m: GatewayToMaster,
) {
    match m.msg {
        Some(gateway_to_master::Msg::AuthRequest(req)) => {
            let (result, accepted) = authenticate(state, &req).await;
            // A credentials check for a name with a live session elsewhere:
            // answer, attach nothing.
            let accepted = accepted.filter(|_| !req.check_only);
            // The answer goes out before the worker is attached, so no command
            // for this session can reach the gateway ahead of it.
            let ok = tx
                .send(msg(master_to_gateway::Msg::AuthResult(result)))
                .await
                .is_ok();
            if let (true, Some((worker_id, builders))) = (ok, accepted) {
                let key = WorkerKey {
                    link,
                    session: req.session,
                };
                state
                    .workers
                    .attach(key, req.name.clone(), worker_id, builders, tx.clone());
                tracing::info!(worker = %req.name, "worker attached");
                let me = state.master_id();
                let deadline = state.config.cluster.master_timeout.get() / 2;
                let record = state
                    .store
                    .worker_attached(&req.name, me, link, req.session);
                if let Err(e) = crate::db::within(deadline, record).await {
                    tracing::debug!(worker = %req.name, error = %e, "could not record the worker as attached");
                }
                state.wake.notify_one();
            }
        }
        Some(gateway_to_master::Msg::Detached(d)) => {
            state.workers.detach(
                WorkerKey {
                    link,
                    session: d.session,
                },
                &format!("worker left: {}", d.reason),
            );
            // Recorded in the background: when many workers leave at once, every
            // one of them must be out of the registry before the claim loop
            // picks workers again, not one database write apart. (The write is
            // keyed by session, so it cannot undo a later attach.)
            let st = state.clone();
            tokio::spawn(async move {
                if let Err(e) = st
                    .store
                    .worker_detached(st.master_id(), link, d.session)
                    .await
                {
                    tracing::debug!(error = %e, "could not record the worker as gone");
                }
            });
            state.wake.notify_one();
        }
        Some(gateway_to_master::Msg::FromWorker(FromWorker {
            session,
            msg: Some(wm),
        })) => {
            let from = WorkerKey { link, session };
            match wm.msg {
                Some(worker_message::Msg::Output(o)) => {
                    deliver(state, from, o.command_id, CommandEvent::Output(o.data)).await
                }
                Some(worker_message::Msg::Exit(e)) => {
                    deliver(state, from, e.command_id, CommandEvent::Exit(e)).await
                }
                Some(worker_message::Msg::Heartbeat(_))
                | Some(worker_message::Msg::Register(_))
                | None => {}
            }
        }
        // Another master announced new work: look now rather than at the next poll.
        Some(gateway_to_master::Msg::WorkAvailable(_)) => state.wake.notify_one(),
        Some(gateway_to_master::Msg::FromWorker(_))
        | Some(gateway_to_master::Msg::Hello(_))
        | None => {}
    }
}

async fn deliver(state: &MasterState, from: WorkerKey, command_id: u64, event: CommandEvent) {
    if let Some(tx) = state.workers.command_sender(from, command_id) {
        // Waiting here is the back-pressure that keeps a huge log from piling up in memory.
        let _ = tx.send(event).await;
    }
}

/// Checks a worker's password against the cluster file. On success also
/// returns the worker's id and the builders it serves.
async fn authenticate(
    state: &Arc<MasterState>,
    req: &AuthRequest,
) -> (AuthResult, Option<(i64, Vec<i64>)>) {
    let refuse = |reason: &str| {
        // The gateway logs refusals once per burst and slows repeats down.
        tracing::debug!(worker = %req.name, reason, "worker refused");
        (
            AuthResult {
                session: req.session,
                accepted: false,
                reason: reason.to_owned(),
            },
            None,
        )
    };
    let Some(expected) = state.passwords.get(&req.name) else {
        return refuse("unknown worker name");
    };
    if !constant_time_eq(expected.as_bytes(), req.password.as_bytes()) {
        return refuse("wrong password");
    }
    if req.protocol_version == 0 || req.protocol_version > flotilla_proto::PROTOCOL_VERSION {
        return refuse("unsupported protocol version");
    }
    let info = serde_json::to_value(&req.facts).unwrap_or_default();
    // The link's messages wait behind this: never longer than its deadline.
    let deadline = state.config.cluster.master_timeout.get() / 2;
    let worker_id = match crate::db::within(deadline, state.store.ensure_worker(&req.name, &info))
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(worker = %req.name, error = %e, "cannot record worker; refusing for now");
            return refuse("the master cannot reach its database; try again");
        }
    };
    let builders: Vec<i64> = state
        .config
        .builders
        .iter()
        .filter(|b| b.workers.iter().any(|w| w == &req.name))
        .filter_map(|b| state.builder_ids.get(&b.name).copied())
        .collect();
    let accepted = AuthResult {
        session: req.session,
        accepted: true,
        reason: String::new(),
    };
    (accepted, Some((worker_id, builders)))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error and its causes on one line ("transport error" alone says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
