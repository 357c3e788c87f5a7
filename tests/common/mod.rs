//! Test harness: a fresh MariaDB database per test, and a cluster of real
//! `flotilla` processes (gateway, masters, workers) on loopback ports.
//! Every process is killed when the harness is dropped, and its output is
//! kept in files that a failing test prints.

#![allow(dead_code)]

pub mod bad_worker;
pub mod browser;
pub mod cluster;
pub mod code_host;
pub mod database;
pub mod galera;
pub mod ledger;
pub mod mariadb;
pub mod metrics_text;
pub mod relay;

use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use cluster::{Cluster, ClusterSpec};
#[allow(unused_imports)]
pub use database::TestDb;

/// The binary under test.
pub fn flotilla_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

/// A port for a process to listen on, free when handed out.
///
/// Not the kernel's pick (port 0): that comes from the ephemeral range, from
/// which every outgoing connection also takes its local port, so between this
/// answer and the process's bind another connection (or another test binary)
/// could take it. Ports here come from outside the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), each test binary starting at
/// its own place (by process id) and moving on with a counter, and each is
/// checked bindable before it is handed out.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = listen_port_range();
    let span = hi - lo + 1;
    // Blocks of 64 ports per process id, so concurrent test binaries start apart.
    let start = (std::process::id() % (span / 64).max(1)) * 64;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no bindable port in {lo}..={hi}");
}

/// The ports outside the kernel's ephemeral range that tests listen on:
/// below it when there is room (above 10000, clear of well-known services
/// such as MariaDB's 3306), else above it.
fn listen_port_range() -> (u32, u32) {
    let (eph_lo, eph_hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if eph_lo > 12000 {
        (10000, eph_lo - 1)
    } else if eph_hi < 63000 {
        (eph_hi + 1, 65535)
    } else {
        (1024, eph_lo.max(1025) - 1)
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
