//! Child processes of a run — the real `flotilla` binary as gateway, master
//! or worker — and their memory as the kernel reports it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The `flotilla` binary: `FLOTILLA_BIN`, else the one built next to this one.
pub fn flotilla_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locate the flotilla-bench binary")?;
    let candidate = me.with_file_name("flotilla");
    anyhow::ensure!(
        candidate.is_file(),
        "no flotilla binary at {} (build it with `cargo build -p flotilla --bin flotilla` \
         in the same profile, or set FLOTILLA_BIN)",
        candidate.display()
    );
    Ok(candidate)
}

/// A port for a process to listen on, free when handed out.
///
/// Not the kernel's pick (port 0): that comes from the ephemeral range, from
/// which every outgoing connection also takes its local port, so between this
/// answer and the process's bind another connection could take it. Ports here
/// come from outside the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`),
/// each run starting at its own place (by process id) and moving on with a
/// counter, and each is checked bindable before it is handed out.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = listen_port_range();
    let span = hi - lo + 1;
    let start = (std::process::id() % (span / 64).max(1)) * 64;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (lo + (start + n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            return Ok(port);
        }
    }
    anyhow::bail!("no bindable port in {lo}..={hi}")
}

/// Ports outside the kernel's ephemeral range: below it when there is room
/// (above 10000, clear of well-known services), else above it.
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

/// A child process whose output goes to a log file; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().cloned())
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {} ({name})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of its output.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_every(what, timeout, Duration::from_millis(20), check).await
}

/// Polls `check` every `every` until it returns `Some`, or fails after `timeout`.
pub async fn wait_for_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}
