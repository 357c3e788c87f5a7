//! A TCP relay that delays every byte by a fixed one-way time, to run a
//! scenario as if the database were on another host (masters are stateless
//! and, in production, rarely share a machine with the database).
//!
//! Each direction of each connection has a reader thread that stamps what it
//! reads with the time it may leave, and a writer thread that sleeps until
//! then and passes it on: order and throughput are kept, only latency is
//! added. OS threads rather than tokio tasks because tokio's timer ticks in
//! whole milliseconds, too coarse for sub-millisecond delays.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

/// A running relay; it lives as long as the process (threads are detached).
pub struct DelayProxy {
    pub port: u16,
}

impl DelayProxy {
    /// Relay `127.0.0.1:<port>` to `target` (`host:port`), delaying each
    /// direction by `one_way`.
    pub fn start(target: String, one_way: Duration) -> anyhow::Result<DelayProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the delay proxy")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let target = target.clone();
                std::thread::spawn(move || {
                    if let Err(e) = relay(client, &target, one_way) {
                        eprintln!("[delay-proxy] connection to {target} failed: {e}");
                    }
                });
            }
        });
        Ok(DelayProxy { port })
    }
}

fn relay(client: TcpStream, target: &str, one_way: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(target)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    pipe(client.try_clone()?, server.try_clone()?, one_way);
    pipe(server, client, one_way);
    Ok(())
}

/// Copy `from` to `to`, each chunk held back until `one_way` after it arrived.
fn pipe(mut from: TcpStream, mut to: TcpStream, one_way: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + one_way, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping `tx` ends the writer once everything read has been sent.
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// `mysql://user@host:port/db` with host:port replaced by the proxy's, and
/// the original `host:port`.
pub fn reroute(url: &str, port: u16) -> anyhow::Result<(String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .context("database URL without scheme")?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (creds, hostport) = match authority.rsplit_once('@') {
        Some((c, h)) => (format!("{c}@"), h),
        None => (String::new(), authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:3306")
    };
    Ok((
        format!("{scheme}://{creds}127.0.0.1:{port}/{path}"),
        hostport,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reroute_keeps_credentials_and_database() {
        let (url, target) = reroute("mysql://root:pw@db.example:3307/flotilla_x", 4000).unwrap();
        assert_eq!(url, "mysql://root:pw@127.0.0.1:4000/flotilla_x");
        assert_eq!(target, "db.example:3307");
        let (url, target) = reroute("mysql://root@localhost/d", 5).unwrap();
        assert_eq!(url, "mysql://root@127.0.0.1:5/d");
        assert_eq!(target, "localhost:3306");
    }

    #[test]
    fn delays_each_way() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                s.write_all(&b).unwrap();
            }
        });
        let proxy = DelayProxy::start(addr, Duration::from_millis(20)).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
        let t = Instant::now();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        assert!(
            t.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t.elapsed()
        );
    }
}
