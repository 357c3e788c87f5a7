//! Turning flotilla commands into Buildbot `shell` commands, and the
//! worker's `update`/`complete` back into `CommandOutput`/`CommandExit`.

use std::path::{Component, Path};

use base64::Engine as _;
use flotilla_proto::v1::{CommandExit, OutputStream, RunCommand};
use rmpv::Value;

use super::codec::map;

/// The worker kind named in refusals and facts.
pub(crate) const KIND: &str = "buildbot";
/// Seconds between SIGTERM and SIGKILL when a command is interrupted or
/// times out, as a flotilla worker does.
pub(crate) const TERM_GRACE_S: u64 = 3;
/// Largest file (try patch, git's patch file) a command may carry to a
/// Buildbot worker: files travel in the command's environment.
pub(crate) const MAX_FILE_BYTES: usize = 64 * 1024;

/// A relative path without `..`, or why not.
fn checked_relative(path: &str, what: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("{what} {path:?} must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{what} {path:?} must be relative"));
            }
        }
    }
    Ok(parts.join("/"))
}

/// The `args` of the `start_command shell` for `run`. `basedir` is the
/// worker's base directory from `get_worker_info` (a relative workdir
/// resolves against the worker's cwd, its basedir, when it is unknown).
///
/// The command's files (git's patch file, a try patch) are written by a
/// small `sh` preamble from environment variables (base64, decoded with the
/// worker's `base64 -d`), since a `shell` command carries no files: up to
/// [`MAX_FILE_BYTES`] each. A larger one is refused with a message naming
/// the worker kind.
pub(crate) fn start_args(run: &RunCommand, basedir: Option<&str>) -> Result<Value, String> {
    if run.argv.is_empty() {
        return Err("the command has no argv".to_owned());
    }
    let rel = checked_relative(&run.workdir, "workdir")?;
    let workdir = match basedir.filter(|b| !b.is_empty()) {
        Some(base) => format!("{}/{rel}", base.trim_end_matches('/')),
        None => rel,
    };
    let mut env: Vec<(String, String)> = run
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.sort();
    let mut argv = run.argv.clone();
    if !run.files.is_empty() {
        let mut script = String::new();
        let mut paths = Vec::new();
        for (i, f) in run.files.iter().enumerate() {
            let path = checked_relative(&f.path, "file path")?;
            if f.content.len() > MAX_FILE_BYTES {
                return Err(format!(
                    "file {:?} has {} bytes: a {KIND} worker takes files of at most {MAX_FILE_BYTES} bytes (send it to a flotilla worker)",
                    f.path,
                    f.content.len()
                ));
            }
            // Base64 so that the worker's `${NAME}` substitution in env
            // values cannot touch the content.
            let text = base64::engine::general_purpose::STANDARD.encode(&f.content);
            let var = format!("FLOTILLA_FILE_{i}");
            // $1.. are the paths; each file is written from its variable.
            script.push_str(&format!(
                "mkdir -p \"$(dirname \"${n}\")\" && printf %s \"${var}\" | base64 -d > \"${n}\" || exit 120; ",
                n = i + 1
            ));
            env.push((var, text));
            paths.push(path);
        }
        script.push_str(&format!("shift {}; exec \"$@\"", paths.len()));
        let mut wrapped = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            script,
            "flotilla-files".to_owned(),
        ];
        wrapped.extend(paths);
        wrapped.append(&mut argv);
        argv = wrapped;
    }
    let max_time = match run.timeout_ms {
        0 => Value::Nil,
        ms => Value::from(ms.div_ceil(1000).max(1)),
    };
    Ok(map(vec![
        ("workdir", Value::from(workdir)),
        (
            "command",
            Value::Array(argv.into_iter().map(Value::from).collect()),
        ),
        (
            "env",
            Value::Map(
                env.into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v)))
                    .collect(),
            ),
        ),
        ("want_stdout", Value::from(true)),
        ("want_stderr", Value::from(true)),
        ("logfiles", Value::Map(vec![])),
        ("timeout", Value::Nil),
        ("maxTime", max_time),
        ("max_lines", Value::Nil),
        ("sigtermTime", Value::from(TERM_GRACE_S)),
        ("usePTY", Value::from(false)),
        ("logEnviron", Value::from(false)),
        ("initial_stdin", Value::Nil),
        ("interruptSignal", Value::from("KILL")),
    ]))
}

/// What the worker has said about one command so far.
#[derive(Debug, Default, Clone)]
pub(crate) struct Progress {
    pub rc: Option<i64>,
    pub signal: Option<i32>,
    pub failure_reason: Option<String>,
    pub elapsed_s: Option<f64>,
}

/// Applies one `update`'s `args` (a list of `[key, value]` pairs): returns
/// the output to relay, in order, and notes rc, signal and the rest.
pub(crate) fn apply_update(args: &Value, progress: &mut Progress) -> Vec<(OutputStream, Vec<u8>)> {
    let mut out = Vec::new();
    let Some(items) = args.as_array() else {
        return out;
    };
    for item in items {
        let Some([key, value]) = item.as_array().map(Vec::as_slice) else {
            continue;
        };
        let text = || {
            value
                .as_array()
                .and_then(|v| v.first())
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        match key.as_str() {
            Some("stdout") => out.extend(text().map(|t| (OutputStream::Stdout, t.into_bytes()))),
            Some("stderr") => out.extend(text().map(|t| (OutputStream::Stderr, t.into_bytes()))),
            Some("header") => {
                if let Some(t) = text() {
                    if let Some(sig) = killed_by_signal(&t) {
                        progress.signal = Some(sig);
                    }
                    out.push((OutputStream::Header, t.into_bytes()));
                }
            }
            Some("rc") => progress.rc = value.as_i64(),
            Some("failure_reason") => progress.failure_reason = value.as_str().map(str::to_owned),
            Some("elapsed") => progress.elapsed_s = value.as_f64(),
            _ => {}
        }
    }
    out
}

/// The signal of a "process killed by signal N" header line.
fn killed_by_signal(text: &str) -> Option<i32> {
    let rest = text.split("process killed by signal ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The `CommandExit` for a `complete` whose `args` is `complete_args`.
/// `interrupted` comes from the gateway's own record (with a TERM grace the
/// rc is the process's own code), `fallback_elapsed_ms` from its own clock.
pub(crate) fn exit(
    command_id: u64,
    progress: &Progress,
    complete_args: Option<&Value>,
    interrupted: bool,
    fallback_elapsed_ms: u64,
) -> CommandExit {
    let error = match complete_args {
        Some(Value::String(s)) => s
            .as_str()
            .unwrap_or("command failed on the worker")
            .to_owned(),
        Some(Value::Nil) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let (exit_code, signal) = match (progress.rc, progress.signal) {
        (Some(-1), Some(sig)) => (None, Some(sig)),
        (Some(rc), _) => (
            Some(rc.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32),
            None,
        ),
        (None, sig) => (None, sig),
    };
    let error = if error.is_empty() && exit_code.is_none() && signal.is_none() && !interrupted {
        "the worker reported no exit status".to_owned()
    } else {
        error
    };
    CommandExit {
        command_id,
        exit_code,
        signal,
        timed_out: progress
            .failure_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("timeout")),
        interrupted,
        error,
        elapsed_ms: progress
            .elapsed_s
            .map(|s| (s * 1000.0).round() as u64)
            .unwrap_or(fallback_elapsed_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::lookup;
    use super::*;
    use flotilla_proto::v1::FileUpload;

    fn run() -> RunCommand {
        RunCommand {
            command_id: 9,
            argv: vec!["make".into(), "test".into()],
            env: [("FLOTILLA_BUILD_ID".to_owned(), "4".to_owned())].into(),
            workdir: "b/build".into(),
            timeout_ms: 1500,
            files: vec![],
        }
    }

    #[test]
    fn a_run_becomes_a_shell_command_under_the_basedir() {
        let args = start_args(&run(), Some("/srv/w/")).unwrap();
        assert_eq!(
            lookup(&args, "workdir"),
            Some(&Value::from("/srv/w/b/build"))
        );
        assert_eq!(lookup(&args, "maxTime"), Some(&Value::from(2u64)));
        assert_eq!(lookup(&args, "logEnviron"), Some(&Value::from(false)));
        assert_eq!(
            lookup(lookup(&args, "env").unwrap(), "FLOTILLA_BUILD_ID"),
            Some(&Value::from("4"))
        );
        let rel = start_args(&run(), None).unwrap();
        assert_eq!(lookup(&rel, "workdir"), Some(&Value::from("b/build")));
    }

    #[test]
    fn escaping_workdirs_and_large_files_are_refused_naming_the_kind() {
        let mut r = run();
        r.workdir = "../x".into();
        assert!(start_args(&r, None).unwrap_err().contains(".."));
        let mut r = run();
        r.files = vec![FileUpload {
            path: "p".into(),
            content: vec![7; MAX_FILE_BYTES + 1],
        }];
        assert!(
            start_args(&r, None)
                .unwrap_err()
                .contains("buildbot worker")
        );
    }

    #[test]
    fn text_files_are_written_by_a_preamble() {
        let mut r = run();
        r.files = vec![FileUpload {
            path: ".flotilla/patch".into(),
            content: b"diff\n".to_vec(),
        }];
        let args = start_args(&r, None).unwrap();
        let cmd = lookup(&args, "command").unwrap().as_array().unwrap();
        assert_eq!(cmd[0], Value::from("sh"));
        assert_eq!(cmd[4], Value::from(".flotilla/patch"));
        assert_eq!(cmd[5], Value::from("make"));
        assert_eq!(
            lookup(lookup(&args, "env").unwrap(), "FLOTILLA_FILE_0"),
            Some(&Value::from("ZGlmZgo="))
        );
    }

    fn line(key: &str, text: &str) -> Value {
        Value::Array(vec![
            Value::from(key),
            Value::Array(vec![
                Value::from(text),
                Value::Array(vec![]),
                Value::Array(vec![]),
            ]),
        ])
    }

    #[test]
    fn updates_give_output_and_the_exit() {
        let mut p = Progress::default();
        let args = Value::Array(vec![
            line("stdout", "hello\n"),
            line("stderr", "err\n"),
            Value::Array(vec![Value::from("rc"), Value::from(3)]),
            Value::Array(vec![Value::from("elapsed"), Value::from(0.25)]),
        ]);
        let out = apply_update(&args, &mut p);
        assert_eq!(out[0], (OutputStream::Stdout, b"hello\n".to_vec()));
        assert_eq!(out[1], (OutputStream::Stderr, b"err\n".to_vec()));
        let e = exit(9, &p, Some(&Value::Nil), false, 7);
        assert_eq!((e.exit_code, e.signal, e.elapsed_ms), (Some(3), None, 250));
        assert!(e.error.is_empty());
    }

    #[test]
    fn a_kill_gives_the_signal_and_a_timeout_says_so() {
        let mut p = Progress::default();
        let args = Value::Array(vec![
            Value::Array(vec![Value::from("failure_reason"), Value::from("timeout")]),
            line("header", "process killed by signal 9\n"),
            Value::Array(vec![Value::from("rc"), Value::from(-1)]),
        ]);
        apply_update(&args, &mut p);
        let e = exit(9, &p, None, false, 7);
        assert_eq!((e.exit_code, e.signal, e.timed_out), (None, Some(9), true));
        assert_eq!(e.elapsed_ms, 7);
    }

    #[test]
    fn a_failure_string_is_the_error() {
        let e = exit(
            9,
            &Progress::default(),
            Some(&Value::from("[Failure instance: x]")),
            false,
            1,
        );
        assert_eq!(e.error, "[Failure instance: x]");
        let none = exit(9, &Progress::default(), None, false, 1);
        assert!(!none.error.is_empty());
    }
}
