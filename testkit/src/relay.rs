//! A TCP relay in front of one address, for injecting network faults between
//! two real processes: it listens on a loopback port and passes every byte of
//! every connection on to the target, until told otherwise:
//!
//! - **cut**: move no byte in either direction; every socket stays open and
//!   new connections are accepted (and connected onwards) but carry nothing,
//!   as when packets are dropped or the far host freezes. What was in flight
//!   is held and delivered on heal, as TCP would retransmit it.
//! - **heal**: move bytes again.
//! - **reset**: close every current connection on both sides with a TCP RST.
//! - **delay(d)**: every chunk leaves `d` after it arrived, in each
//!   direction (a round trip gains `2 d`); order and throughput are kept.
//!
//! It runs on the test's tokio runtime; dropping the relay closes its
//! listener and resets every connection it carries.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Clone, Debug, Default)]
struct State {
    cut: bool,
    delay: Duration,
    /// Bumped by every reset; a connection opened under generation g resets when it changes.
    resets: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    /// Local ports of the relay's connections to the target (what the target
    /// sees as the peer port, e.g. `HOST` in MariaDB's processlist).
    upstream_ports: Mutex<BTreeSet<u16>>,
    /// The first bytes the target sent on each open connection, by upstream
    /// port (e.g. a MariaDB greeting, which carries the connection id).
    greetings: Mutex<HashMap<u16, Vec<u8>>>,
    accepted: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub struct Relay {
    pub name: String,
    pub port: u16,
    pub target: SocketAddr,
    state: watch::Sender<State>,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Starts relaying `127.0.0.1:<port>` to `target`. Must be called inside a tokio runtime.
    pub fn start(name: &str, target: SocketAddr) -> Relay {
        // The relay keeps its listener, so the kernel's pick of port is safe here.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a relay port");
        listener
            .set_nonblocking(true)
            .expect("nonblocking relay listener");
        let listener = TcpListener::from_std(listener).expect("relay listener on the runtime");
        let port = listener.local_addr().expect("relay address").port();
        let (state, _) = watch::channel(State::default());
        let shared = Arc::new(Shared::default());
        let accept = tokio::spawn(accept_loop(listener, target, state.clone(), shared.clone()));
        Relay {
            name: name.to_owned(),
            port,
            target,
            state,
            shared,
            accept,
        }
    }

    /// `127.0.0.1:<port>`, the address to give the client instead of the target.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop moving bytes both ways; keep every socket open.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cut = true);
        eprintln!("relay {}: cut", self.name);
    }

    pub fn heal(&self) {
        self.state.send_modify(|s| s.cut = false);
        eprintln!("relay {}: healed", self.name);
    }

    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    /// Close every current connection with an RST on both sides.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.resets += 1);
        eprintln!("relay {}: reset every connection", self.name);
    }

    /// Add `d` to each direction (zero: no delay).
    pub fn delay(&self, d: Duration) {
        self.state.send_modify(|s| s.delay = d);
        eprintln!("relay {}: delay {d:?} each way", self.name);
    }

    /// Local ports of the relay's open connections to the target.
    pub fn upstream_ports(&self) -> BTreeSet<u16> {
        self.shared.upstream_ports.lock().unwrap().clone()
    }

    /// The first bytes the target sent on each open connection (that got any).
    pub fn greetings(&self) -> Vec<Vec<u8>> {
        self.shared
            .greetings
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.send_modify(|s| s.closed = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Sender<State>,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rx = state.subscribe();
        tokio::spawn(connection(client, target, rx, shared.clone()));
    }
}

/// One relayed connection, until both directions end, either side fails, or a reset.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<State>,
    shared: Arc<Shared>,
) {
    let generation = rx.borrow().resets;
    let _ = client.set_nodelay(true);
    let upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(_) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let up_port = upstream.local_addr().map(|a| a.port()).unwrap_or(0);
    shared.upstream_ports.lock().unwrap().insert(up_port);
    let (mut client, mut upstream) = (client, upstream);
    let outcome = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let (rx_up, rx_down) = (rx.clone(), rx.clone());
        let greeted = shared.clone();
        let on_first = move |bytes: &[u8]| {
            let head = bytes[..bytes.len().min(128)].to_vec();
            greeted.greetings.lock().unwrap().insert(up_port, head);
        };
        let both = async {
            tokio::try_join!(
                pump(cr, uw, rx_up, None),
                pump(ur, cw, rx_down, Some(Box::new(on_first)))
            )
        };
        tokio::select! {
            r = both => r.is_ok(),
            _ = rx.wait_for(|s| s.resets != generation || s.closed) => false,
        }
    };
    shared.upstream_ports.lock().unwrap().remove(&up_port);
    shared.greetings.lock().unwrap().remove(&up_port);
    if !outcome {
        // An RST to both sides: linger zero, then close.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
    drop(client);
    drop(upstream);
}

/// Told the first bytes a direction carries.
type OnFirst = Box<dyn FnOnce(&[u8]) + Send>;

/// One direction: a reader that stamps each chunk with the time it may
/// leave, and a writer that waits for that time and for the link to be up.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    rx: watch::Receiver<State>,
    mut on_first: Option<OnFirst>,
) -> std::io::Result<()> {
    let (tx, mut chunks) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let mut rx_read = rx.clone();
    let read = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // While cut, leave the bytes in the kernel: the sender's window fills.
            if rx_read.wait_for(|s| !s.cut).await.is_err() {
                return Ok::<(), std::io::Error>(());
            }
            let n = from.read(&mut buf).await?;
            if n > 0
                && let Some(f) = on_first.take()
            {
                f(&buf[..n]);
            }
            let leave = Instant::now() + rx_read.borrow().delay;
            if tx.send((leave, buf[..n].to_vec())).await.is_err() || n == 0 {
                return Ok(());
            }
        }
    };
    let mut rx_write = rx;
    let write = async move {
        while let Some((leave, chunk)) = chunks.recv().await {
            tokio::time::sleep_until(leave).await;
            if rx_write.wait_for(|s| !s.cut).await.is_err() {
                return Ok(());
            }
            if chunk.is_empty() {
                // The sender closed its side: pass the FIN on.
                to.shutdown().await?;
                return Ok(());
            }
            to.write_all(&chunk).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    tokio::try_join!(read, write).map(|_| ())
}
