//! One connection to the gateway: register, run the commands the master
//! sends, heartbeat, and — however the connection ends — kill every command
//! it started before returning.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1::gateway_message::Msg as FromGateway;
use flotilla_proto::v1::worker_gateway_client::WorkerGatewayClient;
use flotilla_proto::v1::worker_message::Msg as ToGateway;
use flotilla_proto::v1::{Heartbeat, Register, RunCommand, WorkerMessage};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::command::{StopReason, run_command};
use crate::options::WorkerOptions;
use crate::outbox::{OUTBOX_CAPACITY, Outbox};

/// How long stopped commands may take to report before the connection is
/// closed under them (SIGTERM→SIGKILL grace plus a little).
const STOP_REPORT_WAIT: Duration = Duration::from_secs(4);

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The worker is shutting down.
    Shutdown,
    /// The gateway asked the worker to register again.
    Reconnect { registered: bool, reason: String },
    /// The master refused the worker's credentials.
    Refused(String),
    /// Could not connect, or the connection failed.
    Lost { registered: bool, error: String },
}

/// Commands running on this connection.
struct Commands {
    basedir: Arc<PathBuf>,
    out: Outbox,
    running: HashMap<u64, watch::Sender<Option<StopReason>>>,
    tracker: TaskTracker,
    finished_tx: mpsc::UnboundedSender<u64>,
}

impl Commands {
    fn start(&mut self, cmd: RunCommand) {
        let id = cmd.command_id;
        if self.running.contains_key(&id) {
            warn!(
                command = id,
                "ignoring RunCommand for a command id already running"
            );
            return;
        }
        // Arguments may carry secrets the master filled in: log only the program.
        let program = cmd.argv.first().map(String::as_str).unwrap_or_default();
        info!(command = id, program, args = cmd.argv.len(), workdir = %cmd.workdir, "starting command");
        let (stop_tx, stop) = watch::channel(None);
        self.running.insert(id, stop_tx);
        let basedir = self.basedir.clone();
        let out = self.out.clone();
        let finished = self.finished_tx.clone();
        self.tracker.spawn(async move {
            run_command(cmd, &basedir, out, stop).await;
            let _ = finished.send(id);
        });
    }

    fn stop(&self, id: u64, reason: StopReason) {
        match self.running.get(&id) {
            Some(stop) => {
                info!(command = id, ?reason, "stopping command");
                stop.send_replace(Some(reason));
            }
            None => debug!(command = id, "stop for a command not running"),
        }
    }

    fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.running.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Stops everything, gives the commands a moment to report on the
    /// still-open connection, then closes it and waits for them all.
    async fn stop_all(mut self, why: &str, closed: &CancellationToken) {
        if !self.running.is_empty() {
            info!(
                commands = self.running.len(),
                reason = why,
                "killing running commands"
            );
        }
        for stop in self.running.values() {
            stop.send_replace(Some(StopReason::Disconnected(why.to_owned())));
        }
        self.tracker.close();
        let _ = tokio::time::timeout(STOP_REPORT_WAIT, self.tracker.wait()).await;
        closed.cancel();
        self.tracker.wait().await;
        self.running.clear();
    }
}

fn register_message(opts: &WorkerOptions) -> WorkerMessage {
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let facts = [
        ("os", std::env::consts::OS.to_owned()),
        ("arch", std::env::consts::ARCH.to_owned()),
        ("hostname", hostname),
        ("basedir", opts.basedir.display().to_string()),
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    WorkerMessage {
        msg: Some(ToGateway::Register(Register {
            name: opts.name.clone(),
            password: opts.password.clone(),
            protocol_version: flotilla_proto::PROTOCOL_VERSION,
            facts,
        })),
    }
}

/// Connects once and serves the connection until it ends.
pub(crate) async fn run_once(
    opts: &WorkerOptions,
    endpoint: &Endpoint,
    shutdown: &CancellationToken,
) -> Outcome {
    let channel = tokio::select! {
        _ = shutdown.cancelled() => return Outcome::Shutdown,
        c = endpoint.connect() => match c {
            Ok(c) => c,
            Err(e) => return Outcome::Lost {
                registered: false,
                error: format!("cannot connect to gateway {}: {}", opts.gateway, error_chain(&e)),
            },
        },
    };
    let mut client = WorkerGatewayClient::new(channel)
        .max_decoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flotilla_proto::MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
    let closed = CancellationToken::new();
    let out = Outbox::new(tx, closed.clone());
    out.try_send(register_message(opts));

    let response = tokio::select! {
        _ = shutdown.cancelled() => return Outcome::Shutdown,
        r = client.session(ReceiverStream::new(rx)) => r,
    };
    let mut inbound = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Outcome::Lost {
                registered: false,
                error: format!("gateway rejected the session: {status}"),
            };
        }
    };

    let (finished_tx, mut finished) = mpsc::unbounded_channel();
    let mut commands = Commands {
        basedir: Arc::new(opts.basedir.clone()),
        out: out.clone(),
        running: HashMap::new(),
        tracker: TaskTracker::new(),
        finished_tx,
    };
    let period = opts.heartbeat_interval.max(Duration::from_millis(10));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut registered = false;

    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Outcome::Shutdown,
            _ = heartbeat.tick(), if registered => {
                // Never block the loop for a heartbeat: a full queue means
                // output is flowing, which says as much.
                out.try_send(WorkerMessage {
                    msg: Some(ToGateway::Heartbeat(Heartbeat { running: commands.ids() })),
                });
            }
            Some(id) = finished.recv() => {
                commands.running.remove(&id);
            }
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => match msg.msg {
                    Some(FromGateway::Registered(r)) => {
                        registered = true;
                        info!(worker = %opts.name, master = %r.master, "registered");
                    }
                    Some(FromGateway::Refused(r)) => break Outcome::Refused(r.reason),
                    Some(FromGateway::Run(cmd)) => commands.start(cmd),
                    Some(FromGateway::Interrupt(i)) => {
                        commands.stop(i.command_id, StopReason::Interrupted(i.reason));
                    }
                    Some(FromGateway::Ping(_)) => {
                        out.try_send(WorkerMessage {
                            msg: Some(ToGateway::Heartbeat(Heartbeat { running: commands.ids() })),
                        });
                    }
                    Some(FromGateway::Reconnect(r)) => {
                        break Outcome::Reconnect { registered, reason: r.reason };
                    }
                    // A message kind this worker does not know (newer gateway).
                    None => debug!("ignoring an unknown message from the gateway"),
                },
                Ok(None) => break Outcome::Lost {
                    registered,
                    error: "gateway closed the session".to_owned(),
                },
                Err(status) if status.code() == Code::Unauthenticated => {
                    break Outcome::Refused(status.message().to_owned());
                }
                Err(status) => break Outcome::Lost {
                    registered,
                    error: format!("session failed: {}", status.message()),
                },
            },
        }
    };
    let why = match &outcome {
        Outcome::Shutdown => "worker shutting down".to_owned(),
        Outcome::Reconnect { reason, .. } => {
            format!("gateway asked the worker to reconnect ({reason})")
        }
        Outcome::Refused(reason) => format!("worker refused ({reason})"),
        Outcome::Lost { error, .. } => format!("connection to the gateway lost ({error})"),
    };
    commands.stop_all(&why, &closed).await;
    outcome
}

/// `e` and its sources, joined with ": " (tonic's top-level transport error
/// alone just says "transport error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
