//! Test harness: a fresh MariaDB database per test, and a cluster of real
//! `flotilla` processes (gateway, masters, workers) on loopback ports.
//! Every process is killed when the harness is dropped, and its output is
//! kept in files that a failing test prints.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod database;
pub mod galera;
pub mod ledger;
pub mod mariadb;
pub mod metrics_text;

use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use cluster::{Cluster, ClusterSpec};
#[allow(unused_imports)]
pub use database::TestDb;

/// The binary under test.
pub fn flotilla_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
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
