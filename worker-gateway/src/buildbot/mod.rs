//! Unmodified Buildbot workers (`buildbot-worker` 4.x, msgpack over
//! WebSocket) attached to the gateway.
//!
//! Each accepted connection sends an HTTP upgrade with Basic credentials.
//! The gateway starts an ordinary worker session for that name and password
//! (admission, authentication by a master, routing: exactly as for a gRPC
//! worker) and answers `101` only once a master accepted it, `401` before
//! any upgrade otherwise. A [`driver`] then translates between the session
//! and the worker's msgpack messages.
//!
//! A Buildbot worker never stops its commands when its connection drops, so
//! the gateway keeps, per worker name and across connections, every command
//! it started that has not completed, and interrupts all of them on the
//! worker's next connection before it sends anything else (see
//! `docs/buildbot-workers.md`).

mod codec;
mod driver;
mod http;
mod translate;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::connections::Connections;
use crate::worker_session::WorkerGatewayService;

pub(crate) use driver::Resume;

/// Gateway-wide state of the Buildbot listener.
pub(crate) struct Shared {
    sessions: WorkerGatewayService,
    connections: Arc<Connections>,
    names: Mutex<HashMap<String, NameState>>,
    /// Command ids on the wire: unique per gateway process, never reused.
    next_wire_id: AtomicU64,
    wire_prefix: String,
}

/// What the gateway remembers about one Buildbot worker name.
#[derive(Default)]
struct NameState {
    /// Wire ids of the commands started on this name, over any connection,
    /// that have neither completed nor been interrupted over a later one.
    started: BTreeSet<String>,
    /// A driver whose connection dropped while commands ran, holding its
    /// session until the worker returns (or the liveness deadline passes).
    parked: Option<Parked>,
    /// Facts from the last `get_worker_info` (kind, version, os, cpus).
    facts: HashMap<String, String>,
}

struct Parked {
    password: String,
    resume: mpsc::Sender<Resume>,
}

impl Shared {
    fn names(&self) -> MutexGuard<'_, HashMap<String, NameState>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn new_wire_id(&self) -> String {
        let n = self.next_wire_id.fetch_add(1, Ordering::SeqCst);
        format!("{}{n}", self.wire_prefix)
    }

    fn started(&self, name: &str, wire: &str) {
        self.names()
            .entry(name.to_owned())
            .or_default()
            .started
            .insert(wire.to_owned());
    }

    fn ended(&self, name: &str, wire: &str) {
        if let Some(s) = self.names().get_mut(name) {
            s.started.remove(wire);
        }
    }

    fn orphans(&self, name: &str) -> Vec<String> {
        self.names()
            .get(name)
            .map(|s| s.started.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn facts(&self, name: &str) -> HashMap<String, String> {
        self.names()
            .get(name)
            .map(|s| s.facts.clone())
            .unwrap_or_default()
    }

    fn set_facts(&self, name: &str, facts: HashMap<String, String>) {
        self.names().entry(name.to_owned()).or_default().facts = facts;
    }

    fn park(&self, name: &str, password: &str, resume: mpsc::Sender<Resume>) {
        self.names().entry(name.to_owned()).or_default().parked = Some(Parked {
            password: password.to_owned(),
            resume,
        });
    }

    fn unpark(&self, name: &str) {
        if let Some(s) = self.names().get_mut(name) {
            s.parked = None;
        }
    }

    /// The parked driver of `name` if `password` is the one it was accepted
    /// with (the same worker coming back), taken out of the table.
    fn take_parked(&self, name: &str, password: &str) -> Option<mpsc::Sender<Resume>> {
        let mut names = self.names();
        let state = names.get_mut(name)?;
        let same = state
            .parked
            .as_ref()
            .is_some_and(|p| constant_time_eq(p.password.as_bytes(), password.as_bytes()));
        if same {
            state.parked.take().map(|p| p.resume)
        } else {
            None
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Accepts Buildbot workers on `listener` (same per-address limit and
/// handshake deadline as the gRPC port) until the task is aborted.
pub(crate) fn listen(
    listener: TcpListener,
    sessions: WorkerGatewayService,
    connections: Arc<Connections>,
) -> std::io::Result<JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let opts = sessions.opts.clone();
    let shared = Arc::new(Shared {
        sessions,
        connections: connections.clone(),
        names: Mutex::new(HashMap::new()),
        next_wire_id: AtomicU64::new(1),
        wire_prefix: format!("f{:06x}-", rand::random::<u32>() & 0xff_ffff),
    });
    info!(%addr, "listening for Buildbot workers (msgpack over WebSocket)");
    Ok(tokio::spawn(async move {
        let incoming = crate::connections::accept(
            listener,
            connections,
            opts.handshake_deadline,
            opts.max_connections_per_address,
        );
        tokio::pin!(incoming);
        while let Some(conn) = incoming.next().await {
            let Ok(stream) = conn else { continue };
            let peer = stream.peer();
            tokio::spawn(driver::handle(shared.clone(), stream, peer));
        }
    }))
}

/// Logs a refused upgrade (at warn: a misconfigured worker retries forever).
fn log_refusal(peer: SocketAddr, name: Option<&str>, status: u16, why: &str) {
    metrics::counter!("flotilla_gateway_buildbot_refused_total", "status" => status.to_string())
        .increment(1);
    if status == 503 {
        debug!(%peer, worker = name.unwrap_or("?"), status, why, "Buildbot worker not upgraded");
    } else {
        warn!(%peer, worker = name.unwrap_or("?"), status, why, "Buildbot worker refused before the upgrade");
    }
}
