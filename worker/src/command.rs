//! Running one `RunCommand`: prepare the work directory, spawn the process in
//! its own process group, stream its output, enforce its timeout, kill it on
//! request, and report its `CommandExit` after all of its output.

use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_proto::v1::worker_message::Msg;
use flotilla_proto::v1::{CommandExit, CommandOutput, OutputStream, RunCommand, WorkerMessage};
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::outbox::Outbox;
use crate::process_group::ProcessGroup;

/// Largest output chunk sent in one `CommandOutput`.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;
/// Time between SIGTERM and SIGKILL when a command is stopped.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long processes left behind by a command that exited may keep its
/// output open before they are killed.
const LINGER_GRACE: Duration = Duration::from_secs(2);
/// How long output held open by processes outside the group is waited for.
const ORPHAN_PIPE_GRACE: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a process group to die.
const POLL: Duration = Duration::from_millis(25);

/// Why a running command is being stopped.
#[derive(Debug, Clone)]
pub(crate) enum StopReason {
    /// The master sent `Interrupt`.
    Interrupted(String),
    /// The connection ended (lost, `Reconnect`, or worker shutdown).
    Disconnected(String),
}

/// Watches for a stop request; `None` while the command may run.
pub(crate) type StopSignal = watch::Receiver<Option<StopReason>>;

/// Runs `cmd` to completion and reports its output and exit through `out`.
pub(crate) async fn run_command(
    cmd: RunCommand,
    basedir: &Path,
    out: Outbox,
    mut stop: StopSignal,
) {
    let id = cmd.command_id;
    let started = Instant::now();
    let exit = match execute(&cmd, basedir, &out, &mut stop).await {
        Ok(exit) => exit,
        Err(error) => {
            warn!(command = id, %error, "command could not start");
            header(&out, id, &format!("{error}\n")).await;
            CommandExit {
                command_id: id,
                error,
                elapsed_ms: millis(started.elapsed()),
                ..CommandExit::default()
            }
        }
    };
    info!(
        command = id,
        exit_code = ?exit.exit_code,
        signal = ?exit.signal,
        timed_out = exit.timed_out,
        interrupted = exit.interrupted,
        elapsed_ms = exit.elapsed_ms,
        "command finished"
    );
    out.send(WorkerMessage {
        msg: Some(Msg::Exit(exit)),
    })
    .await;
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    TimedOut(Duration),
    Stopped(StopReason),
}

async fn execute(
    cmd: &RunCommand,
    basedir: &Path,
    out: &Outbox,
    stop: &mut StopSignal,
) -> Result<CommandExit, String> {
    let id = cmd.command_id;
    let (program, args) = cmd
        .argv
        .split_first()
        .ok_or_else(|| "command has an empty argv".to_owned())?;
    let workdir = prepare(cmd, basedir).await?;
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .envs(&cmd.env)
        .current_dir(&workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {program:?} in {}: {e}", workdir.display()))?;
    let mut group = match child.id().and_then(ProcessGroup::led_by) {
        Some(group) => group,
        None => {
            let _ = child.start_kill();
            return Err("spawned process has no pid".to_owned());
        }
    };
    debug!(command = id, pgid = group.id(), program = ?cmd.argv.first(), "command started");

    let progress = Arc::new(AtomicU64::new(0));
    let mut pumps = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(
            id,
            OutputStream::Stdout,
            stdout,
            out.clone(),
            progress.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(
            id,
            OutputStream::Stderr,
            stderr,
            out.clone(),
            progress.clone(),
        )));
    }

    let timeout = (cmd.timeout_ms > 0).then(|| Duration::from_millis(cmd.timeout_ms));
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status),
        _ = sleep_for(timeout) => Ended::TimedOut(timeout.unwrap_or_default()),
        reason = stopped(stop) => Ended::Stopped(reason),
    };
    let (status, timed_out, interrupted) = match ended {
        Ended::Exited(status) => (status, false, false),
        Ended::TimedOut(after) => {
            let status = terminate(&mut child, &group).await;
            let note = format!(
                "command timed out after {}; killed process group\n",
                human(after)
            );
            header(out, id, &note).await;
            (status, true, false)
        }
        Ended::Stopped(reason) => {
            let status = terminate(&mut child, &group).await;
            let note = match &reason {
                StopReason::Interrupted(why) if why.is_empty() => {
                    "command interrupted; killed process group\n".to_owned()
                }
                StopReason::Interrupted(why) => {
                    format!("command interrupted ({why}); killed process group\n")
                }
                StopReason::Disconnected(why) => format!("{why}; killed process group\n"),
            };
            header(out, id, &note).await;
            (status, false, true)
        }
    };
    let elapsed = started.elapsed();
    drain_output(pumps, &group, &progress, out, id).await;
    group.disarm();

    let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
    Ok(CommandExit {
        command_id: id,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        interrupted,
        error: String::new(),
        elapsed_ms: millis(elapsed),
    })
}

/// Creates the work directory and writes the command's files.
async fn prepare(cmd: &RunCommand, basedir: &Path) -> Result<PathBuf, String> {
    let workdir = basedir.join(checked_relative(&cmd.workdir, "workdir")?);
    tokio::fs::create_dir_all(&workdir)
        .await
        .map_err(|e| format!("cannot create workdir {}: {e}", workdir.display()))?;
    for file in &cmd.files {
        let rel = checked_relative(&file.path, "file path")?;
        if rel.as_os_str().is_empty() {
            return Err("file path must not be empty".to_owned());
        }
        let path = workdir.join(rel);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        tokio::fs::write(&path, &file.content)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(workdir)
}

/// `path` as a relative path that stays below its base: no root, no `..`.
pub(crate) fn checked_relative(path: &str, what: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{what} {path:?} must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{what} {path:?} must be relative"));
            }
        }
    }
    Ok(out)
}

/// Copies one pipe into `CommandOutput` chunks as soon as data arrives.
async fn pump(
    id: u64,
    stream: OutputStream,
    mut reader: impl AsyncRead + Unpin,
    out: Outbox,
    progress: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut deliver = true;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        progress.fetch_add(1, Ordering::Relaxed);
        if deliver {
            // When the connection is gone keep reading (and dropping) so the
            // process is not blocked on a full pipe while it is being killed.
            deliver = out
                .send(WorkerMessage {
                    msg: Some(Msg::Output(CommandOutput {
                        command_id: id,
                        stream: stream as i32,
                        data: buf[..n].to_vec(),
                    })),
                })
                .await;
            progress.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Waits until the output pumps are done. Processes of the group that keep
/// the pipes open after the command ended are killed after a grace period;
/// pipes held open from outside the group are abandoned.
async fn drain_output(
    pumps: Vec<JoinHandle<()>>,
    group: &ProcessGroup,
    progress: &AtomicU64,
    out: &Outbox,
    id: u64,
) {
    let aborts: Vec<_> = pumps.iter().map(JoinHandle::abort_handle).collect();
    let all = futures::future::join_all(pumps);
    tokio::pin!(all);
    let ended = Instant::now();
    let mut last = progress.load(Ordering::Relaxed);
    let mut idle_since = Instant::now();
    let mut killed_lingering = false;
    loop {
        tokio::select! {
            _ = &mut all => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let now = progress.load(Ordering::Relaxed);
        if now != last {
            last = now;
            idle_since = Instant::now();
        }
        if group.is_alive() {
            if !killed_lingering && ended.elapsed() >= LINGER_GRACE {
                killed_lingering = true;
                group.signal(Signal::SIGKILL);
                let note = "the command exited but processes it started still hold its output open; \
                            killed its process group\n";
                header(out, id, note).await;
            }
        } else if idle_since.elapsed() >= ORPHAN_PIPE_GRACE {
            let note = "output is held open by a process outside the command's process group; \
                        no longer reading it\n";
            header(out, id, note).await;
            aborts.iter().for_each(|a| a.abort());
            return;
        }
    }
}

/// SIGTERM to the group, SIGKILL if anything is left after [`KILL_GRACE`].
async fn terminate(child: &mut Child, group: &ProcessGroup) -> std::io::Result<ExitStatus> {
    group.signal(Signal::SIGTERM);
    let deadline = Instant::now() + KILL_GRACE;
    let mut status = None;
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        if status.is_some() && !group.is_alive() {
            break;
        }
        if Instant::now() >= deadline {
            debug!(
                pgid = group.id(),
                "process group survived SIGTERM; sending SIGKILL"
            );
            group.signal(Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    match status {
        Some(status) => Ok(status),
        None => child.wait().await,
    }
}

async fn stopped(stop: &mut StopSignal) -> StopReason {
    loop {
        if let Some(reason) = stop.borrow_and_update().clone() {
            return reason;
        }
        if stop.changed().await.is_err() {
            return StopReason::Disconnected("worker connection ended".to_owned());
        }
    }
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn header(out: &Outbox, id: u64, text: &str) {
    out.send(WorkerMessage {
        msg: Some(Msg::Output(CommandOutput {
            command_id: id,
            stream: OutputStream::Header as i32,
            data: text.as_bytes().to_vec(),
        })),
    })
    .await;
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "10s", "1.5s", "250ms", "2m30s".
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(1000) && ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else if ms < 60_000 {
        format!("{}s", ms / 1000)
    } else {
        let s = d.as_secs();
        match (s / 60, s % 60) {
            (m, 0) => format!("{m}m"),
            (m, s) => format!("{m}m{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1::FileUpload;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn relative_paths_are_checked() {
        assert_eq!(checked_relative("a/b", "x").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            checked_relative("./a/./b", "x").unwrap(),
            PathBuf::from("a/b")
        );
        assert_eq!(checked_relative("", "x").unwrap(), PathBuf::new());
        assert!(checked_relative("/etc", "x").is_err());
        assert!(checked_relative("a/../../b", "x").is_err());
        assert!(checked_relative("..", "x").is_err());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(10)), "10s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(150)), "2m30s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
    }

    struct Run {
        out: Vec<(i32, Vec<u8>)>,
        exit: CommandExit,
    }

    impl Run {
        fn text(&self, stream: OutputStream) -> String {
            let bytes: Vec<u8> = self
                .out
                .iter()
                .filter(|(s, _)| *s == stream as i32)
                .flat_map(|(_, d)| d.clone())
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    async fn run(cmd: RunCommand, basedir: &Path) -> Run {
        let (tx, mut rx) = mpsc::channel(4);
        let out = Outbox::new(tx, CancellationToken::new());
        let (_stop_tx, stop) = watch::channel(None);
        let basedir = basedir.to_owned();
        let task = tokio::spawn(async move { run_command(cmd, &basedir, out, stop).await });
        let mut outputs = Vec::new();
        while let Some(msg) = rx.recv().await {
            match msg.msg {
                Some(Msg::Output(o)) => {
                    assert!(o.data.len() <= CHUNK_BYTES);
                    outputs.push((o.stream, o.data));
                }
                Some(Msg::Exit(exit)) => {
                    task.await.unwrap();
                    return Run { out: outputs, exit };
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no exit");
    }

    fn sh(script: &str) -> RunCommand {
        RunCommand {
            command_id: 7,
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..RunCommand::default()
        }
    }

    #[tokio::test]
    async fn runs_in_workdir_with_env_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = sh("pwd; echo $FOO; cat sub/patch.diff; echo err >&2; exit 3");
        cmd.workdir = "build/src".into();
        cmd.env.insert("FOO".into(), "bar".into());
        cmd.files.push(FileUpload {
            path: "sub/patch.diff".into(),
            content: b"PATCH\n".to_vec(),
        });
        let r = run(cmd, dir.path()).await;
        assert_eq!(r.exit.exit_code, Some(3));
        assert!(r.exit.error.is_empty());
        let expected_dir = dir.path().join("build/src").canonicalize().unwrap();
        assert_eq!(
            r.text(OutputStream::Stdout),
            format!("{}\nbar\nPATCH\n", expected_dir.display())
        );
        assert_eq!(r.text(OutputStream::Stderr), "err\n");
    }

    #[tokio::test]
    async fn bad_paths_and_programs_are_error_exits() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = sh("true");
        cmd.workdir = "../escape".into();
        let r = run(cmd, dir.path()).await;
        assert!(r.exit.error.contains(".."), "{}", r.exit.error);
        assert_eq!(r.exit.exit_code, None);

        let mut cmd = sh("true");
        cmd.files.push(FileUpload {
            path: "/etc/passwd".into(),
            content: vec![],
        });
        let r = run(cmd, dir.path()).await;
        assert!(r.exit.error.contains("relative"), "{}", r.exit.error);

        let mut cmd = sh("true");
        cmd.argv = vec!["/nonexistent/program".into()];
        let r = run(cmd, dir.path()).await;
        assert!(r.exit.error.contains("cannot start"), "{}", r.exit.error);
        assert!(r.text(OutputStream::Header).contains("cannot start"));

        let mut cmd = sh("true");
        cmd.argv.clear();
        let r = run(cmd, dir.path()).await;
        assert!(r.exit.error.contains("empty argv"));
    }

    #[tokio::test]
    async fn big_output_is_chunked_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        // 5 MB on one "line", through a 4-message channel.
        let r = run(sh("head -c 5000000 /dev/zero | tr '\\0' x"), dir.path()).await;
        assert_eq!(r.exit.exit_code, Some(0));
        let total: usize = r.out.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(total, 5_000_000);
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = sh("echo $$; sleep 100 & sleep 100");
        cmd.timeout_ms = 300;
        let t = Instant::now();
        let r = run(cmd, dir.path()).await;
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(r.exit.timed_out);
        assert_eq!(r.exit.signal, Some(15));
        assert!(
            r.text(OutputStream::Header)
                .contains("timed out after 300ms")
        );
        let pgid: u32 = r.text(OutputStream::Stdout).trim().parse().unwrap();
        let mut group = ProcessGroup::led_by(pgid).unwrap();
        group.disarm();
        assert!(!group.is_alive());
    }

    #[tokio::test]
    async fn sigterm_ignored_means_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let out = Outbox::new(tx, CancellationToken::new());
        let (stop_tx, stop) = watch::channel(None);
        let base = dir.path().to_owned();
        tokio::spawn(async move {
            run_command(
                sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
                &base,
                out,
                stop,
            )
            .await
        });
        // Wait for the trap to be installed.
        loop {
            if let Some(Msg::Output(o)) = rx.recv().await.unwrap().msg
                && o.data.starts_with(b"ready")
            {
                break;
            }
        }
        stop_tx.send_replace(Some(StopReason::Interrupted("stop".into())));
        let exit = loop {
            if let Some(Msg::Exit(e)) = rx.recv().await.unwrap().msg {
                break e;
            }
        };
        assert!(exit.interrupted);
        assert_eq!(exit.signal, Some(9));
    }

    #[tokio::test]
    async fn output_arrives_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let out = Outbox::new(tx, CancellationToken::new());
        let (_stop_tx, stop) = watch::channel(None);
        let base = dir.path().to_owned();
        tokio::spawn(async move { run_command(sh("echo hi; sleep 2"), &base, out, stop).await });
        let t = Instant::now();
        let msg = rx.recv().await.unwrap();
        assert!(matches!(msg.msg, Some(Msg::Output(ref o)) if o.data == b"hi\n"));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
    }
}
