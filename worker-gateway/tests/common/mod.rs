//! Test harness: a real gateway on a free port, masters played by the real
//! generated `MasterLink` client, and real `flotilla_worker` agents or raw
//! `WorkerGateway` clients.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_gateway::{GatewayError, GatewayOptions};
use flotilla_proto::v1::gateway_message::Msg as GwMsg;
use flotilla_proto::v1::gateway_to_master::Msg as ToMaster;
use flotilla_proto::v1::master_link_client::MasterLinkClient;
use flotilla_proto::v1::master_to_gateway::Msg as FromMaster;
use flotilla_proto::v1::worker_gateway_client::WorkerGatewayClient;
use flotilla_proto::v1::worker_message::Msg as WMsg;
use flotilla_proto::v1::{
    AuthResult, CommandExit, GatewayMessage, GatewayToMaster, Interrupt, MasterHeartbeat,
    MasterHello, MasterToGateway, OutputStream, Register, RunCommand, ToWorker, WorkerMessage,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Awaits `fut`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

pub struct Gateway {
    pub url: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), GatewayError>>,
}

pub async fn start_gateway(opts: GatewayOptions) -> Gateway {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(flotilla_gateway::serve(listener, opts, shutdown.clone()));
    Gateway {
        url,
        shutdown,
        task,
    }
}

pub fn fast_opts() -> GatewayOptions {
    GatewayOptions {
        default_silence_timeout: Duration::from_secs(5),
        auth_timeout: Duration::from_secs(2),
        tls: None,
        ping_interval: Duration::from_millis(300),
        liveness_deadline: Duration::from_secs(2),
        probe_timeout: Duration::from_millis(500),
        handshake_deadline: Duration::from_secs(2),
        max_connections_per_address: 64,
    }
}

/// A master, played through the real `MasterLink` client.
pub struct TestMaster {
    pub name: String,
    pub id: i64,
    pub tx: mpsc::Sender<MasterToGateway>,
    pub events: mpsc::UnboundedReceiver<GatewayToMaster>,
    /// Worker name → session, for accepted workers.
    pub sessions: Arc<Mutex<HashMap<String, u64>>>,
    /// Cancel to stop heartbeating (a frozen master).
    pub heartbeat: CancellationToken,
    /// Draining flag sent with every heartbeat.
    pub draining: Arc<AtomicBool>,
    /// How the gateway ended this link, once it did.
    pub ended: Arc<Mutex<Option<Result<(), Status>>>>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct MasterSpec {
    pub name: &'static str,
    pub id: i64,
    pub draining: bool,
    pub silence_ms: u64,
    /// Answer AuthRequests automatically: accept when the password is "pw".
    pub auto_auth: bool,
}

impl MasterSpec {
    pub fn new(name: &'static str, id: i64) -> Self {
        Self {
            name,
            id,
            draining: false,
            silence_ms: 0,
            auto_auth: true,
        }
    }
}

pub async fn attach(url: &str, spec: MasterSpec) -> TestMaster {
    let mut client = MasterLinkClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(64);
    tx.send(MasterToGateway {
        msg: Some(FromMaster::Hello(MasterHello {
            master_id: spec.id,
            name: spec.name.to_owned(),
            draining: spec.draining,
            silence_timeout_ms: spec.silence_ms,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = within("GatewayHello", inbound.message())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first.msg, Some(ToMaster::Hello(ref h)) if !h.gateway_id.is_empty()),
        "{first:?}"
    );

    let (ev_tx, events) = mpsc::unbounded_channel();
    let sessions = Arc::new(Mutex::new(HashMap::new()));
    let ended = Arc::new(Mutex::new(None));
    let reader = tokio::spawn(read_master(
        inbound,
        tx.clone(),
        ev_tx,
        spec.auto_auth,
        sessions.clone(),
        ended.clone(),
    ));
    let heartbeat = CancellationToken::new();
    let draining = Arc::new(AtomicBool::new(spec.draining));
    let hb = {
        let tx = tx.clone();
        let stop = heartbeat.clone();
        let draining = draining.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let hb = MasterToGateway {
                    msg: Some(FromMaster::Heartbeat(MasterHeartbeat {
                        draining: draining.load(Ordering::SeqCst),
                    })),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
        })
    };
    TestMaster {
        name: spec.name.to_owned(),
        id: spec.id,
        tx,
        events,
        sessions,
        heartbeat,
        draining,
        ended,
        tasks: vec![reader, hb],
    }
}

async fn read_master(
    mut inbound: Streaming<GatewayToMaster>,
    tx: mpsc::Sender<MasterToGateway>,
    events: mpsc::UnboundedSender<GatewayToMaster>,
    auto_auth: bool,
    sessions: Arc<Mutex<HashMap<String, u64>>>,
    ended: Arc<Mutex<Option<Result<(), Status>>>>,
) {
    loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                if let Some(ToMaster::AuthRequest(req)) = &msg.msg
                    && auto_auth
                {
                    let accepted = req.password == "pw";
                    if accepted {
                        sessions
                            .lock()
                            .unwrap()
                            .insert(req.name.clone(), req.session);
                    }
                    let _ = tx
                        .send(MasterToGateway {
                            msg: Some(FromMaster::AuthResult(AuthResult {
                                session: req.session,
                                accepted,
                                reason: if accepted {
                                    String::new()
                                } else {
                                    "bad password".into()
                                },
                            })),
                        })
                        .await;
                }
                let _ = events.send(msg);
            }
            Ok(None) => {
                *ended.lock().unwrap() = Some(Ok(()));
                return;
            }
            Err(status) => {
                *ended.lock().unwrap() = Some(Err(status));
                return;
            }
        }
    }
}

impl TestMaster {
    /// Starts or stops draining, announced at once.
    pub async fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::SeqCst);
        self.tx
            .send(MasterToGateway {
                msg: Some(FromMaster::Heartbeat(MasterHeartbeat { draining })),
            })
            .await
            .unwrap();
    }

    /// Waits for an event `f` accepts, skipping others.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&GatewayToMaster) -> Option<T>,
    ) -> T {
        within(what, async {
            loop {
                let ev = self.events.recv().await.expect("master event stream ended");
                if let Some(v) = f(&ev) {
                    return v;
                }
            }
        })
        .await
    }

    /// Waits until worker `name` asked to join; returns its session.
    pub async fn auth_request(&mut self, name: &str) -> u64 {
        self.expect(
            &format!("AuthRequest for {name} at {}", self.name),
            |ev| match &ev.msg {
                Some(ToMaster::AuthRequest(r)) if r.name == name => Some(r.session),
                _ => None,
            },
        )
        .await
    }

    pub async fn detached(&mut self, session: u64) -> String {
        self.expect(&format!("WorkerDetached {session}"), |ev| match &ev.msg {
            Some(ToMaster::Detached(d)) if d.session == session => Some(d.reason.clone()),
            _ => None,
        })
        .await
    }

    pub async fn to_worker(&self, session: u64, msg: GwMsg) {
        self.tx
            .send(MasterToGateway {
                msg: Some(FromMaster::ToWorker(ToWorker {
                    session,
                    msg: Some(GatewayMessage { msg: Some(msg) }),
                })),
            })
            .await
            .unwrap();
    }

    pub async fn run(&self, session: u64, cmd: RunCommand) {
        self.to_worker(session, GwMsg::Run(cmd)).await;
    }

    pub async fn interrupt(&self, session: u64, command_id: u64) {
        self.to_worker(
            session,
            GwMsg::Interrupt(Interrupt {
                command_id,
                reason: "test".into(),
            }),
        )
        .await;
    }

    /// Output of `command_id` until its first line is complete.
    pub async fn first_line(&mut self, session: u64, command_id: u64) -> String {
        let mut text = String::new();
        while !text.contains('\n') {
            let chunk = self
                .expect("command output", |ev| match &ev.msg {
                    Some(ToMaster::FromWorker(f)) if f.session == session => match &f.msg {
                        Some(WorkerMessage {
                            msg: Some(WMsg::Output(o)),
                        }) if o.command_id == command_id
                            && o.stream == OutputStream::Stdout as i32 =>
                        {
                            Some(String::from_utf8_lossy(&o.data).into_owned())
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .await;
            text.push_str(&chunk);
        }
        text
    }

    /// All output (by stream) of `command_id` until its exit.
    pub async fn finish(
        &mut self,
        session: u64,
        command_id: u64,
    ) -> (HashMap<i32, String>, CommandExit) {
        let mut out: HashMap<i32, String> = HashMap::new();
        loop {
            let msg = self
                .expect("command output or exit", |ev| match &ev.msg {
                    Some(ToMaster::FromWorker(f)) if f.session == session => f.msg.clone(),
                    _ => None,
                })
                .await;
            match msg.msg {
                Some(WMsg::Output(o)) if o.command_id == command_id => {
                    out.entry(o.stream)
                        .or_default()
                        .push_str(&String::from_utf8_lossy(&o.data));
                }
                Some(WMsg::Exit(e)) if e.command_id == command_id => return (out, e),
                _ => {}
            }
        }
    }

    /// Drops the link: the request stream ends and the tasks stop.
    pub fn disconnect(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub fn sh(id: u64, script: &str) -> RunCommand {
    RunCommand {
        command_id: id,
        argv: vec!["sh".into(), "-c".into(), script.into()],
        ..RunCommand::default()
    }
}

/// A real worker agent with its own temporary basedir.
pub struct Worker {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), flotilla_worker::WorkerError>>,
    pub dir: tempfile::TempDir,
}

pub fn start_worker(url: &str, name: &str, password: &str) -> Worker {
    let dir = tempfile::tempdir().unwrap();
    let mut opts =
        flotilla_worker::WorkerOptions::new(url, name, password, dir.path().join("base"));
    opts.heartbeat_interval = Duration::from_millis(200);
    opts.max_backoff = Duration::from_millis(400);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(flotilla_worker::run(opts, shutdown.clone()));
    Worker {
        shutdown,
        task,
        dir,
    }
}

impl Worker {
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("worker to stop", self.task).await.unwrap().unwrap();
    }
}

/// A hand-driven worker session (raw `WorkerGateway` client).
pub struct RawWorker {
    pub tx: mpsc::Sender<WorkerMessage>,
    pub inbound: Streaming<GatewayMessage>,
}

pub async fn raw_session(url: &str, first: WorkerMessage) -> Result<RawWorker, Status> {
    let mut client = WorkerGatewayClient::connect(url.to_owned()).await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok(RawWorker { tx, inbound })
}

pub fn register(name: &str, password: &str) -> WorkerMessage {
    WorkerMessage {
        msg: Some(WMsg::Register(Register {
            name: name.into(),
            password: password.into(),
            protocol_version: flotilla_proto::PROTOCOL_VERSION,
            facts: HashMap::from([("os".into(), "test".into())]),
        })),
    }
}

impl RawWorker {
    /// The next message other than the gateway's liveness `Ping`s.
    pub async fn next(&mut self) -> Result<Option<GwMsg>, Status> {
        loop {
            match self.next_raw().await {
                Ok(Some(GwMsg::Ping(_))) => continue,
                other => return other,
            }
        }
    }

    /// The next message, whatever it is.
    pub async fn next_raw(&mut self) -> Result<Option<GwMsg>, Status> {
        within("gateway message", self.inbound.message())
            .await
            .map(|m| m.and_then(|m| m.msg))
    }

    /// Waits for `Registered`; returns the master's name.
    pub async fn registered(&mut self) -> String {
        match self.next().await {
            Ok(Some(GwMsg::Registered(r))) => r.master,
            other => panic!("expected Registered, got {other:?}"),
        }
    }
}

pub async fn registered_raw(url: &str, name: &str) -> (RawWorker, String) {
    let mut w = raw_session(url, register(name, "pw")).await.unwrap();
    let master = w.registered().await;
    (w, master)
}

/// Whether any non-zombie process is in group `pgid` (zombies linger where
/// PID 1 does not reap orphans).
pub fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some(end) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
        fields.len() > 2 && fields[2] == pgid.to_string() && !matches!(fields[0], "Z" | "X")
    })
}

pub async fn wait_group_gone(pgid: i32) {
    within(&format!("process group {pgid} to die"), async {
        while group_alive(pgid) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
