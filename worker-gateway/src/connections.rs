//! Accepting TCP connections with limits.
//!
//! Each IP address may hold at most `max_connections_per_address`
//! connections at once; past that, new ones are closed as soon as they are
//! accepted. A connection must complete its handshake — a worker's
//! `Register` or a master's `MasterHello` — within `handshake_deadline`,
//! or it is closed: a peer that connects and never sends a byte (or stops
//! half-way) holds nothing for long.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Live connections per address, and the handshake flag of each connection.
#[derive(Default)]
pub(crate) struct Connections {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    per_addr: HashMap<IpAddr, usize>,
    handshaken: HashMap<SocketAddr, Arc<AtomicBool>>,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the connection from `peer` as past its handshake.
    pub fn handshaken(&self, peer: Option<SocketAddr>) {
        if let Some(flag) = peer.and_then(|p| self.lock().handshaken.get(&p).cloned()) {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn admit(
        self: &Arc<Self>,
        peer: SocketAddr,
        max_per_addr: usize,
    ) -> Option<(Slot, Arc<AtomicBool>)> {
        let mut inner = self.lock();
        let count = inner.per_addr.entry(peer.ip()).or_default();
        if *count >= max_per_addr {
            return None;
        }
        *count += 1;
        let flag = Arc::new(AtomicBool::new(false));
        inner.handshaken.insert(peer, flag.clone());
        metrics::gauge!("flotilla_gateway_connections").increment(1.0);
        Some((
            Slot {
                conns: self.clone(),
                peer,
            },
            flag,
        ))
    }
}

/// Frees a connection's place when the connection is dropped.
struct Slot {
    conns: Arc<Connections>,
    peer: SocketAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.conns.lock();
        inner.handshaken.remove(&self.peer);
        if let Some(n) = inner.per_addr.get_mut(&self.peer.ip()) {
            *n -= 1;
            if *n == 0 {
                inner.per_addr.remove(&self.peer.ip());
            }
        }
        metrics::gauge!("flotilla_gateway_connections").decrement(1.0);
    }
}

/// An accepted connection that fails with `TimedOut` once its handshake
/// deadline passes without a handshake (the server then closes it).
pub(crate) struct GuardedStream {
    inner: TcpStream,
    handshaken: Arc<AtomicBool>,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl GuardedStream {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self._slot.peer
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.handshaken.load(Ordering::SeqCst) {
            self.deadline = None;
            return false;
        }
        match &mut self.deadline {
            Some(d) => d.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

use std::future::Future;

fn handshake_timeout() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no Register or MasterHello within the handshake deadline",
    )
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.expired(cx) {
            debug!(peer = %self._slot.peer, "closing a connection that did not complete its handshake in time");
            metrics::counter!("flotilla_gateway_connections_closed_total", "reason" => "handshake deadline").increment(1);
            return Poll::Ready(Err(handshake_timeout()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for GuardedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts connections from `listener` for as long as the stream is polled.
pub(crate) fn accept(
    listener: TcpListener,
    conns: Arc<Connections>,
    handshake_deadline: Duration,
    max_per_addr: usize,
) -> impl Stream<Item = Result<GuardedStream, io::Error>> {
    async_stream::stream! {
        let mut last_refusal_log: Option<tokio::time::Instant> = None;
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some((slot, handshaken)) = conns.admit(peer, max_per_addr) else {
                metrics::counter!("flotilla_gateway_connections_closed_total", "reason" => "per-address limit").increment(1);
                if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warn!(address = %peer.ip(), limit = max_per_addr, "connection refused: too many connections from this address (logged once a minute)");
                    last_refusal_log = Some(tokio::time::Instant::now());
                }
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            yield Ok(GuardedStream {
                inner: tcp,
                handshaken,
                deadline: Some(Box::pin(tokio::time::sleep(handshake_deadline))),
                _slot: slot,
            });
        }
    }
}
