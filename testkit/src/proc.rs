//! Child processes — the real `flotilla` binary as gateway, master or worker,
//! or any other program — with their output in a log file, killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::Signal;

use crate::ports::{Bound, spawn_listening};

/// The log filter a spawned `flotilla` gets unless its environment names one.
pub const DEFAULT_RUST_LOG: &str = "info,flotilla_master=debug";

/// The `flotilla` binary: `FLOTILLA_BIN`, else the one cargo built next to
/// the running executable (a test binary runs from `target/<profile>/deps`,
/// the bench from `target/<profile>`).
pub fn try_flotilla_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locate the running executable")?;
    let dir = me
        .parent()
        .context("the running executable has no folder")?;
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let candidate = profile_dir.join("flotilla");
    anyhow::ensure!(
        candidate.is_file(),
        "no flotilla binary at {} (build it with `cargo build -p flotilla --bin flotilla` \
         in the same profile, or set FLOTILLA_BIN)",
        candidate.display()
    );
    Ok(candidate)
}

/// [`try_flotilla_bin`], panicking when there is none.
pub fn flotilla_bin() -> PathBuf {
    try_flotilla_bin().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A child process whose output (stdout and stderr) goes to `log`; killed
/// (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `flotilla ARGS` with its output in `<log_dir>/<name>.log`;
    /// panics when it cannot.
    pub fn spawn(name: &str, args: &[String], env: &[(String, String)], log_dir: &Path) -> Proc {
        Self::try_spawn(name, &flotilla_bin(), args, env, log_dir)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `flotilla ARGS --ready-file …` (ARGS with port 0 in the
    /// addresses to listen on) and waits until it listens; returns the
    /// addresses it bound. Panics when it exits first.
    pub fn listening(
        name: &str,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> (Proc, Bound) {
        match spawn_listening(name, &flotilla_bin(), args, env, log_dir) {
            Ok((p, Some(bound))) => (p, bound),
            Ok((p, None)) => panic!("{name} exited before it listened:\n{}", p.tail(30)),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts `program ARGS` with `env` (which may override the default
    /// `RUST_LOG`) and its output in `<log_dir>/<name>.log`.
    pub fn try_spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone().context("clone the log handle")?;
        let child = Command::new(program)
            .args(args)
            .env("RUST_LOG", DEFAULT_RUST_LOG)
            .envs(env.iter().cloned())
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

    pub fn signal(&self, sig: Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Stops the process where it stands (SIGSTOP), as a frozen host would.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        stop_child(&mut self.child, grace);
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its output.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.output();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits for the process to exit on its own; None if it did not in time.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The resident memory (`VmRSS`) of process `pid` in KiB, while it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Asks `child` to stop (SIGTERM, as `systemctl stop` would) and waits up to
/// `grace` for it to exit; kills it (SIGKILL) if it has not.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The last `lines` lines of each process's output under a header with its
/// name, for a failing test.
pub fn dump<'a>(procs: impl IntoIterator<Item = &'a Proc>, lines: usize) -> String {
    let mut out = String::new();
    for p in procs {
        out.push_str(&format!("===== {} =====\n{}\n", p.name, p.tail(lines)));
    }
    out
}
