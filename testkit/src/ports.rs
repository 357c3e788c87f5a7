//! Ports. A process that listens binds port 0 itself and reports the
//! address it got in its ready file ([`wait_ready_file`]); nothing picks a
//! port for it that someone else could take before it binds.
//!
//! [`free_port`] remains for servers that cannot report their port (MariaDB,
//! Galera) and for tests of fixed addresses.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proc::Proc;

/// The addresses a process wrote to its ready file, by listener name
/// (`http` for a master; `grpc` and `metrics` for a gateway).
#[derive(Clone, Debug, Default)]
pub struct Bound(Vec<(String, SocketAddr)>);

impl Bound {
    /// Parses `NAME HOST:PORT` lines.
    pub fn parse(text: &str) -> anyhow::Result<Bound> {
        let mut v = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (name, addr) = line
                .split_once(' ')
                .ok_or_else(|| anyhow::anyhow!("bad ready-file line {line:?}"))?;
            let addr: SocketAddr = addr
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("bad address in ready-file line {line:?}: {e}"))?;
            v.push((name.to_owned(), addr));
        }
        Ok(Bound(v))
    }

    /// The address of listener `name`.
    pub fn get(&self, name: &str) -> anyhow::Result<SocketAddr> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| anyhow::anyhow!("no {name} address in the ready file: {:?}", self.0))
    }
}

/// Waits until `proc` has written its ready file `path` (it is written
/// whole, by a rename) and returns the addresses in it. Fails when the
/// process exits first, or after `timeout`. Blocks the calling thread.
pub fn wait_ready_file(proc: &mut Proc, path: &Path, timeout: Duration) -> anyhow::Result<Bound> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Bound::parse(&text);
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            anyhow::bail!(
                "{} exited ({status}) before it listened:\n{}",
                proc.name,
                proc.tail(20)
            );
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "{} did not listen within {timeout:?}:\n{}",
                proc.name,
                proc.tail(20)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `program ARGS --ready-file <log_dir>/<name>.ready` (see
/// [`Proc::try_spawn`]) and waits until it listens; the addresses are None
/// if it exited before (its log says why). A process told to bind an address
/// it had before is started again while a connection that took that
/// address as its local port still holds it.
pub fn spawn_listening(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log_dir: &Path,
) -> anyhow::Result<(Proc, Option<Bound>)> {
    let ready = log_dir.join(format!("{name}.ready"));
    let mut args = args.to_vec();
    args.extend(["--ready-file".to_owned(), ready.display().to_string()]);
    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let _ = std::fs::remove_file(&ready);
        let mut proc = Proc::try_spawn(name, program, &args, env, log_dir)?;
        match wait_ready_file(&mut proc, &ready, LISTEN_TIMEOUT) {
            Ok(bound) => return Ok((proc, Some(bound))),
            Err(_)
                if proc.output().contains("Address already in use")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(_) if !proc.running() => return Ok((proc, None)),
            Err(e) => return Err(e),
        }
    }
}

/// How long a process may take from its start to listening.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// A port for a server that cannot bind port 0 and report it, free when
/// handed out.
///
/// Not the kernel's pick (port 0): that comes from the ephemeral range, from
/// which every outgoing connection also takes its local port, so between this
/// answer and the server's bind another connection (or another test binary)
/// could take it. Ports here come from outside the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), each process starting at its
/// own place (by process id) and moving on with a counter, and each is
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

/// The ports outside the kernel's ephemeral range: below it when there is
/// room (above 10000, clear of well-known services such as MariaDB's 3306),
/// else above it.
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

#[cfg(test)]
mod tests {
    use super::Bound;

    #[test]
    fn a_ready_file_names_each_listener() {
        let b = Bound::parse("grpc 127.0.0.1:4100\nmetrics [::1]:4101\n").unwrap();
        assert_eq!(b.get("grpc").unwrap().port(), 4100);
        assert_eq!(b.get("metrics").unwrap().port(), 4101);
        assert!(b.get("http").is_err());
        assert!(Bound::parse("grpc nowhere").is_err());
    }
}
