//! One Buildbot worker: its connection (one at a time) and the ordinary
//! worker sessions it has through it.
//!
//! The driver answers every request of the worker exactly once, numbers its
//! own requests per connection from 0, and keeps a table of those awaiting
//! an answer: a response it did not ask for is dropped (never echoed), and it
//! never sends a response the worker is not waiting for.
//!
//! Lifecycle:
//! - after the `101`, before anything else, every command this worker name
//!   was sent over an earlier connection and that did not complete is
//!   interrupted (`interrupt_command` with its old id); then
//!   `get_worker_info` and `set_worker_settings` (short `buffer_timeout` for
//!   live logs). Nothing from the session is sent until those are answered;
//! - a session that ends while the connection lives (its master died or
//!   handed it back) is followed by a new one on the same connection;
//! - a connection that drops while commands run is *parked*: the session is
//!   kept (its master is not told) until the same worker comes back, or
//!   until the session's liveness deadline ends it. A worker that comes back
//!   has those commands interrupted first, and only then is the session
//!   ended, so the master learns they are lost only after the kill.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as ToWorkerMsg;
use flotilla_proto::v1::worker_message::Msg as FromWorkerMsg;
use flotilla_proto::v1::{
    CommandExit, CommandOutput, GatewayMessage, Heartbeat, Register, RunCommand, WorkerMessage,
};
use futures::{SinkExt, StreamExt};
use rmpv::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tonic::Status;
use tracing::{debug, info, warn};

use super::codec::{self, Message};
use super::http::{self, Upgrade};
use super::translate::{self, KIND, Progress};
use super::{Shared, log_refusal};
use crate::connections::GuardedStream;
use crate::options::GatewayOptions;
use crate::worker_session::{WorkerInbound, WorkerRx, check_register};

type Ws = WebSocketStream<GuardedStream>;
type InboundTx = mpsc::Sender<Result<WorkerMessage, Status>>;

/// Worker messages queued towards the session.
const INBOUND_QUEUE: usize = 64;
/// Largest WebSocket message accepted from a worker.
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// `buffer_timeout` sent to the worker: output reaches the log within it.
const BUFFER_TIMEOUT_S: f64 = 0.2;
/// Buildbot's own values for the other three settings.
const BUFFER_SIZE: u64 = 64 * 1024;
const MAX_LINE_LENGTH: u64 = 4096;
const NEWLINE_RE: &str = "(\\r\\n|\\r(?=.)|\\033\\[u|\\033\\[[0-9]+;[0-9]+[Hf]|\\033\\[2J|\\x08+)";
/// Stray responses of one connection logged at warn before the rest go to debug.
const STRAY_LOGGED: u32 = 3;

/// A new connection of a worker whose driver is parked.
pub(crate) struct Resume {
    stream: GuardedStream,
    upgrade: Upgrade,
    peer: SocketAddr,
}

/// Handles one accepted TCP connection: the upgrade, then either the
/// worker's parked driver takes it over or a new driver starts.
pub(crate) async fn handle(shared: Arc<Shared>, mut stream: GuardedStream, peer: SocketAddr) {
    let mut upgrade = match http::read_upgrade(&mut stream).await {
        Ok(Some(Ok(u))) => u,
        Ok(Some(Err(bad))) => {
            log_refusal(peer, None, bad.status, &bad.why);
            let _ = http::refuse(&mut stream, bad.status, &bad.why).await;
            return;
        }
        Ok(None) | Err(_) => return,
    };
    let Some((name, password)) = upgrade.credentials.clone() else {
        let why = "no credentials: the upgrade needs HTTP Basic authorization with the worker's name and password";
        log_refusal(peer, None, 401, why);
        let _ = http::refuse(&mut stream, 401, why).await;
        return;
    };
    let mut facts = shared.facts(&name);
    facts.insert("kind".to_owned(), KIND.to_owned());
    let register = Register {
        name: name.clone(),
        password: password.clone(),
        protocol_version: flotilla_proto::PROTOCOL_VERSION,
        facts,
    };
    if let Err(status) = check_register(&register) {
        log_refusal(peer, Some(&name), 400, status.message());
        let _ = http::refuse(&mut stream, 400, status.message()).await;
        return;
    }
    if let Some(resume) = shared.take_parked(&name, &password) {
        match resume
            .send(Resume {
                stream,
                upgrade,
                peer,
            })
            .await
        {
            Ok(()) => return,
            // The parked driver ended meanwhile: start afresh.
            Err(mpsc::error::SendError(r)) => {
                stream = r.stream;
                upgrade = r.upgrade;
            }
        }
    }
    let opts = shared.sessions.opts.clone();
    let (inbound, session) = start(&shared, register.clone(), peer);
    let mut driver = Driver::new(shared.clone(), opts, register, peer, inbound, session);
    match driver.wait_accepted().await {
        Ok(()) => {}
        Err((status, why)) => {
            log_refusal(peer, Some(&name), status, &why);
            let _ = http::refuse(&mut stream, status, &why).await;
            return;
        }
    }
    let Some(ws) = upgrade_to_ws(&shared, stream, upgrade, peer).await else {
        return;
    };
    info!(worker = %name, %peer, "Buildbot worker connected");
    driver.run(ws).await;
}

fn start(shared: &Shared, register: Register, peer: SocketAddr) -> (InboundTx, WorkerRx) {
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let session = shared
        .sessions
        .start_session(register, Some(peer), WorkerInbound::Channel(rx));
    (tx, session)
}

/// Answers `101` and wraps the connection.
async fn upgrade_to_ws(
    shared: &Shared,
    mut stream: GuardedStream,
    upgrade: Upgrade,
    peer: SocketAddr,
) -> Option<Ws> {
    if let Err(e) = http::accept(&mut stream, &upgrade.key).await {
        debug!(%peer, error = %e, "Buildbot worker left during the upgrade");
        return None;
    }
    shared.connections.handshaken(Some(peer));
    let config = WebSocketConfig::default().max_message_size(Some(MAX_FRAME_BYTES));
    Some(
        WebSocketStream::from_partially_read(stream, upgrade.rest, Role::Server, Some(config))
            .await,
    )
}

/// What a request of ours is waiting for.
enum Pending {
    Keepalive,
    Info,
    Settings,
    Start(String),
    Interrupt,
    /// The interrupt of a command left from an earlier connection.
    Orphan(String),
}

/// A command started on the worker and not yet complete.
struct Cmd {
    id: u64,
    generation: u64,
    conn: u64,
    progress: Progress,
    started: Instant,
    interrupted: bool,
}

/// The live connection.
struct Conn {
    ws: Ws,
    number: u64,
    seq: u64,
    pending: HashMap<u64, Pending>,
    keepalive_sent: Option<Instant>,
    last_heard: Instant,
    /// Answers awaited (orphan interrupts, worker info) before anything
    /// from the session is sent.
    gate: usize,
    basedir: Option<String>,
    stray: u32,
}

struct Driver {
    shared: Arc<Shared>,
    opts: Arc<GatewayOptions>,
    register: Register,
    peer: SocketAddr,
    inbound: Option<InboundTx>,
    session: Option<WorkerRx>,
    generation: u64,
    /// flotilla command id (of the current session) → wire id.
    by_id: HashMap<u64, String>,
    cmds: HashMap<String, Cmd>,
    conn: Option<Conn>,
    conn_count: u64,
    /// Set when a send failed: the connection is then dropped.
    broken: Option<String>,
    /// A master refused the worker: end when the session ends.
    refused: bool,
    /// The orphans of a parked session are being interrupted; end that
    /// session once they are.
    resuming: bool,
    /// When to end the parked session whose orphans were interrupted (after
    /// the worker's TERM grace, since their end is never reported).
    end_session_at: Option<Instant>,
    resume_tx: mpsc::Sender<Resume>,
    resume_rx: mpsc::Receiver<Resume>,
}

impl Driver {
    fn new(
        shared: Arc<Shared>,
        opts: Arc<GatewayOptions>,
        register: Register,
        peer: SocketAddr,
        inbound: InboundTx,
        session: WorkerRx,
    ) -> Self {
        let (resume_tx, resume_rx) = mpsc::channel(1);
        Self {
            shared,
            opts,
            register,
            peer,
            inbound: Some(inbound),
            session: Some(session),
            generation: 1,
            by_id: HashMap::new(),
            cmds: HashMap::new(),
            conn: None,
            conn_count: 0,
            broken: None,
            refused: false,
            resuming: false,
            end_session_at: None,
            resume_tx,
            resume_rx,
        }
    }

    fn name(&self) -> &str {
        &self.register.name
    }

    /// Waits until a master accepted the worker (before the upgrade).
    async fn wait_accepted(&mut self) -> Result<(), (u16, String)> {
        let deadline = Instant::now() + self.opts.handshake_deadline;
        loop {
            let next = tokio::time::timeout_at(deadline, next_session(&mut self.session)).await;
            match next {
                Ok(Some(Ok(GatewayMessage {
                    msg: Some(ToWorkerMsg::Registered(r)),
                }))) => {
                    debug!(worker = %self.name(), master = %r.master, "Buildbot worker accepted");
                    return Ok(());
                }
                Ok(Some(Ok(GatewayMessage {
                    msg: Some(ToWorkerMsg::Refused(r)),
                }))) => return Err((401, format!("refused: {}", r.reason))),
                // A probe of this session, as holder of the name: it has no
                // connection yet to answer with.
                Ok(Some(Ok(GatewayMessage {
                    msg: Some(ToWorkerMsg::Ping(_)),
                }))) => continue,
                Ok(Some(Ok(_))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Err((503, "the gateway ended the session; try again".to_owned()));
                }
                Err(_) => {
                    return Err((
                        503,
                        format!(
                            "no master accepted the worker within {:?}; try again",
                            self.opts.handshake_deadline
                        ),
                    ));
                }
            }
        }
    }

    async fn run(mut self, ws: Ws) {
        self.open(ws, false).await;
        let every = self
            .opts
            .ping_interval
            .min(self.opts.liveness_deadline / 5)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shared.sessions.shutdown.clone();
        loop {
            if let Some(why) = self.broken.take()
                && !self.conn_lost(&why)
            {
                return;
            }
            let gate_open =
                self.conn.as_ref().is_none_or(|c| c.gate == 0) && self.end_session_at.is_none();
            tokio::select! {
                frame = next_frame(&mut self.conn) => match frame {
                    Some(Ok(Frame::Binary(bytes))) => self.on_worker(&bytes).await,
                    Some(Ok(Frame::Close(_))) | None => self.broken = Some("the worker closed the connection".to_owned()),
                    Some(Ok(Frame::Text(_))) => debug!(worker = %self.name(), "ignoring a text frame"),
                    Some(Ok(_)) => {} // ping/pong: answered by the WebSocket layer
                    Some(Err(e)) => self.broken = Some(format!("connection failed: {e}")),
                },
                msg = next_session(&mut self.session), if gate_open => match msg {
                    Some(Ok(msg)) => self.on_session(msg).await,
                    Some(Err(status)) => {
                        debug!(worker = %self.name(), status = %status.message(), "the session ended with an error");
                    }
                    None => {
                        if !self.session_ended().await {
                            return;
                        }
                    }
                },
                resume = self.resume_rx.recv(), if self.conn.is_none() => {
                    let Some(Resume { stream, upgrade, peer }) = resume else { return };
                    let Some(ws) = upgrade_to_ws(&self.shared, stream, upgrade, peer).await else {
                        // Gone again: wait for the next one (or the deadline).
                        let (name, password) = (self.register.name.clone(), self.register.password.clone());
                        self.shared.park(&name, &password, self.resume_tx.clone());
                        continue;
                    };
                    self.peer = peer;
                    info!(worker = %self.name(), %peer, "Buildbot worker reconnected; interrupting what it ran before");
                    self.open(ws, true).await;
                }
                _ = tick.tick() => self.tick().await,
                _ = shutdown.cancelled() => {
                    self.shared.unpark(&self.register.name);
                    return;
                }
            }
        }
    }

    /// Starts using a new connection: orphans first, then the worker's facts
    /// and settings.
    async fn open(&mut self, ws: Ws, resuming: bool) {
        self.conn_count += 1;
        self.conn = Some(Conn {
            ws,
            number: self.conn_count,
            seq: 0,
            pending: HashMap::new(),
            keepalive_sent: None,
            last_heard: Instant::now(),
            gate: 0,
            basedir: None,
            stray: 0,
        });
        self.resuming = resuming;
        let orphans = self.shared.orphans(self.name());
        if !orphans.is_empty() {
            info!(worker = %self.name(), commands = orphans.len(),
                "interrupting commands left running from an earlier connection (their results are lost)");
        }
        for wire in orphans {
            if let Some(cmd) = self.cmds.get_mut(&wire) {
                cmd.interrupted = true;
            }
            let why = "flotilla: the connection to the worker dropped while this command ran; its result is lost";
            let fields = vec![
                ("command_id", Value::from(wire.as_str())),
                ("why", Value::from(why)),
            ];
            if self
                .request("interrupt_command", fields, Pending::Orphan(wire))
                .await
            {
                self.gate_add();
            }
        }
        if self.request("get_worker_info", vec![], Pending::Info).await {
            self.gate_add();
        }
        let settings = codec::map(vec![
            ("buffer_size", Value::from(BUFFER_SIZE)),
            ("buffer_timeout", Value::from(BUFFER_TIMEOUT_S)),
            ("newline_re", Value::from(NEWLINE_RE)),
            ("max_line_length", Value::from(MAX_LINE_LENGTH)),
        ]);
        self.request(
            "set_worker_settings",
            vec![("args", settings)],
            Pending::Settings,
        )
        .await;
    }

    fn gate_add(&mut self) {
        if let Some(c) = self.conn.as_mut() {
            c.gate += 1;
        }
    }

    /// One answer the gate waited for has come.
    fn gate_done(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        c.gate = c.gate.saturating_sub(1);
        if c.gate == 0 && self.resuming {
            // The old commands got SIGTERM, and SIGKILL follows after the
            // grace: only then may their master learn they are lost (and
            // run them elsewhere).
            self.resuming = false;
            self.end_session_at = Some(
                Instant::now()
                    + Duration::from_secs(translate::TERM_GRACE_S)
                    + Duration::from_millis(500),
            );
        }
    }

    /// Ends the current session (its master is told the worker left); a new
    /// one starts when it has ended, if the connection lives.
    fn end_session(&mut self) {
        self.inbound = None;
    }

    /// Sends one request; false if the connection is gone.
    async fn request(&mut self, op: &str, fields: Vec<(&str, Value)>, pending: Pending) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let seq = c.seq;
        c.seq += 1;
        c.pending.insert(seq, pending);
        let bytes = codec::encode(op, seq, fields);
        self.send_frame(bytes).await
    }

    async fn send_frame(&mut self, bytes: Vec<u8>) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let wait = self.opts.liveness_deadline;
        match tokio::time::timeout(wait, c.ws.send(Frame::Binary(bytes.into()))).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                self.broken.get_or_insert(format!("cannot send: {e}"));
                false
            }
            Err(_) => {
                self.broken
                    .get_or_insert(format!("the worker has not read for {wait:?}"));
                false
            }
        }
    }

    /// Sends to the session (none when it was ended).
    async fn send_session(&mut self, msg: FromWorkerMsg) {
        if let Some(tx) = &self.inbound {
            let _ = tx.send(Ok(WorkerMessage { msg: Some(msg) })).await;
        }
    }

    async fn on_worker(&mut self, bytes: &[u8]) {
        if let Some(c) = self.conn.as_mut() {
            c.last_heard = Instant::now();
        }
        let m = match codec::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                // The worker does the same with a message it cannot read.
                warn!(worker = %self.name(), error = %e, "dropping a message from the Buildbot worker");
                return;
            }
        };
        match m.op.as_str() {
            "response" => self.response(m).await,
            "update" => {
                self.send_frame(codec::response(m.seq, None)).await;
                self.update(&m).await;
            }
            "complete" => {
                self.send_frame(codec::response(m.seq, None)).await;
                self.complete(&m).await;
            }
            other => {
                debug!(worker = %self.name(), op = other, "unknown request from the Buildbot worker");
                let text = format!("Command {other} does not exist.");
                self.send_frame(codec::response(m.seq, Some(&text))).await;
            }
        }
    }

    async fn response(&mut self, m: Message) {
        let Some(c) = self.conn.as_mut() else { return };
        let Some(pending) = c.pending.remove(&m.seq) else {
            c.stray += 1;
            metrics::counter!("flotilla_gateway_buildbot_stray_responses_total").increment(1);
            if c.stray <= STRAY_LOGGED {
                warn!(worker = %self.name(), seq = m.seq, "dropped a response to no request of ours");
            }
            return;
        };
        let error = m
            .get("is_exception")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .then(|| {
                m.get("result")
                    .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned))
                    .unwrap_or_default()
            });
        match pending {
            Pending::Keepalive => {
                c.keepalive_sent = None;
                let running: Vec<u64> = self
                    .cmds
                    .values()
                    .filter(|cmd| cmd.generation == self.generation)
                    .map(|cmd| cmd.id)
                    .collect();
                if let Some(tx) = &self.inbound {
                    let msg = FromWorkerMsg::Heartbeat(Heartbeat { running });
                    let _ = tx.try_send(Ok(WorkerMessage { msg: Some(msg) }));
                }
            }
            Pending::Info => {
                if let Some(info) = m.get("result").filter(|_| error.is_none()) {
                    self.worker_info(info);
                }
                self.gate_done();
            }
            Pending::Settings => {
                if let Some(e) = error {
                    warn!(worker = %self.name(), error = %e, "the Buildbot worker refused set_worker_settings; its output will come late");
                }
            }
            Pending::Start(wire) => {
                if let Some(e) = error {
                    self.shared.ended(&self.register.name, &wire);
                    if let Some(cmd) = self.cmds.remove(&wire)
                        && cmd.generation == self.generation
                    {
                        let exit = CommandExit {
                            command_id: cmd.id,
                            error: format!("the {KIND} worker refused the command: {e}"),
                            ..CommandExit::default()
                        };
                        self.send_session(FromWorkerMsg::Exit(exit)).await;
                    }
                }
            }
            Pending::Interrupt => {}
            Pending::Orphan(wire) => {
                metrics::counter!("flotilla_gateway_buildbot_orphans_interrupted_total")
                    .increment(1);
                self.shared.ended(&self.register.name, &wire);
                self.cmds.remove(&wire);
                self.gate_done();
            }
        }
    }

    /// Takes the facts worth showing from `get_worker_info` (never its
    /// `environ`, which holds the worker's whole environment).
    fn worker_info(&mut self, info: &Value) {
        let text = |k: &str| {
            codec::lookup(info, k).and_then(|v| {
                v.as_str()
                    .map(|s| s.trim().chars().take(200).collect::<String>())
                    .or_else(|| v.as_i64().map(|n| n.to_string()))
            })
        };
        if let Some(c) = self.conn.as_mut() {
            c.basedir = text("basedir").filter(|b| b.starts_with('/'));
        }
        let mut facts = HashMap::new();
        facts.insert("kind".to_owned(), KIND.to_owned());
        for (fact, key) in [
            ("version", "version"),
            ("os", "os_pretty_name"),
            ("system", "system"),
            ("cpus", "numcpus"),
            ("basedir", "basedir"),
        ] {
            if let Some(v) = text(key).filter(|v| !v.is_empty()) {
                facts.insert(fact.to_owned(), v);
            }
        }
        self.shared.set_facts(self.name(), facts.clone());
        let idle = !self.cmds.values().any(|c| c.generation == self.generation);
        if facts != self.register.facts && idle && !self.resuming {
            // First contact: register again so the masters see the version.
            debug!(worker = %self.name(), "registering again with the worker's facts");
            self.register.facts = facts;
            self.end_session();
        }
    }

    fn wire_id(m: &Message) -> Option<String> {
        let v = m.get("command_id")?;
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
    }

    async fn update(&mut self, m: &Message) {
        let Some(wire) = Self::wire_id(m) else { return };
        let Some(cmd) = self.cmds.get_mut(&wire) else {
            debug!(worker = %self.name(), command = %wire, "update for a command not running here");
            return;
        };
        let Some(args) = m.get("args") else { return };
        let out = translate::apply_update(args, &mut cmd.progress);
        let (id, current) = (cmd.id, cmd.generation == self.generation);
        if !current {
            return;
        }
        for (stream, data) in out {
            let o = CommandOutput {
                command_id: id,
                stream: stream as i32,
                data,
            };
            self.send_session(FromWorkerMsg::Output(o)).await;
        }
    }

    async fn complete(&mut self, m: &Message) {
        let Some(wire) = Self::wire_id(m) else { return };
        let Some(cmd) = self.cmds.remove(&wire) else {
            debug!(worker = %self.name(), command = %wire, "complete for a command not running here");
            return;
        };
        self.shared.ended(&self.register.name, &wire);
        if cmd.generation != self.generation {
            return;
        }
        self.by_id.remove(&cmd.id);
        let exit = translate::exit(
            cmd.id,
            &cmd.progress,
            m.get("args"),
            cmd.interrupted,
            cmd.started.elapsed().as_millis() as u64,
        );
        self.send_session(FromWorkerMsg::Exit(exit)).await;
    }

    async fn on_session(&mut self, msg: GatewayMessage) {
        match msg.msg {
            Some(ToWorkerMsg::Registered(r)) => {
                info!(worker = %self.name(), master = %r.master, "Buildbot worker attached");
            }
            Some(ToWorkerMsg::Refused(r)) => {
                warn!(worker = %self.name(), reason = %r.reason, "Buildbot worker refused by a master; closing its connection");
                self.refused = true;
            }
            Some(ToWorkerMsg::Run(run)) => self.run_command(run).await,
            Some(ToWorkerMsg::Interrupt(i)) => {
                let Some(wire) = self.by_id.get(&i.command_id).cloned() else {
                    return;
                };
                self.interrupt(&wire, &i.reason).await;
            }
            Some(ToWorkerMsg::Ping(_)) => self.keepalive().await,
            Some(ToWorkerMsg::Reconnect(r)) => {
                debug!(worker = %self.name(), reason = %r.reason, "session over; registering again on the same connection");
                // Everything started in the session stops, as a worker does on Reconnect.
                let wires: Vec<String> = self
                    .cmds
                    .iter()
                    .filter(|(_, c)| c.generation == self.generation)
                    .map(|(w, _)| w.clone())
                    .collect();
                for wire in wires {
                    self.interrupt(&wire, &r.reason).await;
                }
                self.end_session();
            }
            None => {}
        }
    }

    async fn interrupt(&mut self, wire: &str, why: &str) {
        let conn = self.conn.as_ref().map(|c| c.number);
        let Some(cmd) = self.cmds.get_mut(wire) else {
            return;
        };
        if cmd.interrupted {
            return;
        }
        cmd.interrupted = true;
        if Some(cmd.conn) != conn {
            // Not reachable now: interrupted on the worker's next connection.
            return;
        }
        let fields = vec![("command_id", Value::from(wire)), ("why", Value::from(why))];
        self.request("interrupt_command", fields, Pending::Interrupt)
            .await;
    }

    async fn run_command(&mut self, run: RunCommand) {
        let Some(conn) = self.conn.as_ref() else {
            // Parked: the session ends before this could run; it is lost.
            debug!(worker = %self.name(), command = run.command_id, "a command for a disconnected Buildbot worker; dropped");
            return;
        };
        let (number, basedir) = (conn.number, conn.basedir.clone());
        let args = match translate::start_args(&run, basedir.as_deref()) {
            Ok(a) => a,
            Err(why) => {
                let exit = CommandExit {
                    command_id: run.command_id,
                    error: why,
                    ..CommandExit::default()
                };
                self.send_session(FromWorkerMsg::Exit(exit)).await;
                return;
            }
        };
        let wire = self.shared.new_wire_id();
        self.shared.started(&self.register.name, &wire);
        self.by_id.insert(run.command_id, wire.clone());
        self.cmds.insert(
            wire.clone(),
            Cmd {
                id: run.command_id,
                generation: self.generation,
                conn: number,
                progress: Progress::default(),
                started: Instant::now(),
                interrupted: false,
            },
        );
        let fields = vec![
            ("command_id", Value::from(wire.as_str())),
            ("command_name", Value::from("shell")),
            ("args", args),
        ];
        self.request("start_command", fields, Pending::Start(wire))
            .await;
    }

    async fn keepalive(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        if c.keepalive_sent.is_some() {
            return;
        }
        c.keepalive_sent = Some(Instant::now());
        self.request("keepalive", vec![], Pending::Keepalive).await;
    }

    async fn tick(&mut self) {
        if self.end_session_at.is_some_and(|at| at <= Instant::now()) {
            self.end_session_at = None;
            self.end_session();
        }
        let Some(c) = self.conn.as_ref() else { return };
        // Half the session's own deadline: the connection is judged dead
        // before the session gives the worker up (and registers it again).
        let deadline = self.opts.liveness_deadline / 2;
        if let Some(sent) = c.keepalive_sent
            && sent.elapsed() >= deadline
        {
            metrics::counter!("flotilla_gateway_workers_dropped_total", "reason" => "silent")
                .increment(1);
            self.broken = Some(format!("no answer to keepalive within {deadline:?}"));
            return;
        }
        if c.last_heard.elapsed() >= self.opts.ping_interval {
            self.keepalive().await;
        }
    }

    /// The session ended. Returns false when the driver should end.
    async fn session_ended(&mut self) -> bool {
        self.session = None;
        self.inbound = None;
        self.by_id.clear();
        self.generation += 1;
        if self.refused || self.conn.is_none() {
            self.shared.unpark(&self.register.name);
            info!(worker = %self.name(), "Buildbot worker session over");
            return false;
        }
        let (inbound, session) = start(&self.shared, self.register.clone(), self.peer);
        self.inbound = Some(inbound);
        self.session = Some(session);
        true
    }

    /// The connection is gone. Returns false when the driver should end.
    fn conn_lost(&mut self, why: &str) -> bool {
        self.conn = None;
        self.resuming = false;
        self.end_session_at = None;
        let running = self
            .cmds
            .values()
            .filter(|c| c.generation == self.generation)
            .count();
        info!(worker = %self.name(), reason = why, running, "Buildbot worker connection lost");
        if running == 0 || self.inbound.is_none() || self.refused {
            return false;
        }
        // Keep the session (and the master's view) until the worker comes
        // back and its commands are interrupted, or the session's liveness
        // deadline ends it.
        let (name, password) = (self.register.name.clone(), self.register.password.clone());
        self.shared.park(&name, &password, self.resume_tx.clone());
        true
    }
}

async fn next_frame(
    conn: &mut Option<Conn>,
) -> Option<Result<Frame, tokio_tungstenite::tungstenite::Error>> {
    match conn {
        Some(c) => c.ws.next().await,
        None => std::future::pending().await,
    }
}

async fn next_session(session: &mut Option<WorkerRx>) -> Option<Result<GatewayMessage, Status>> {
    match session {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
