//! Headless Chromium (Debian's `chromium`, installed by
//! `scripts/ensure-chromium`) driven from its command line: load a page,
//! let its scripts run for a budget of virtual time, then dump the rendered
//! DOM or save a screenshot.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one Chromium run may take before it is abandoned.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Browser {
    profile: tempfile::TempDir,
}

impl Browser {
    pub fn new() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/ensure-chromium (scripts/test does)"
        );
        Browser {
            profile: tempfile::tempdir().expect("browser profile dir"),
        }
    }

    fn command(&self, budget_ms: u64) -> Command {
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", self.profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"));
        cmd
    }

    fn run(mut cmd: Command) -> std::process::Output {
        use std::io::Read;
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start chromium");
        let mut stdout = child.stdout.take().expect("chromium stdout");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("chromium status") {
                break s;
            }
            if start.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                panic!("chromium did not finish within {RUN_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = Vec::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_end(&mut stderr);
        }
        std::process::Output {
            status,
            stdout: reader.join().unwrap_or_default(),
            stderr,
        }
    }

    /// The DOM of `url` after its scripts ran for `budget_ms` of virtual time.
    pub fn dump_dom(&self, url: &str, budget_ms: u64) -> String {
        let mut cmd = self.command(budget_ms);
        cmd.arg("--dump-dom").arg(url);
        let out = Self::run(cmd);
        assert!(
            out.status.success(),
            "chromium --dump-dom failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Saves a PNG of `url` after `budget_ms` of virtual time.
    pub fn screenshot(&self, url: &str, budget_ms: u64, path: &Path) -> PathBuf {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        let mut cmd = self.command(budget_ms);
        cmd.arg(format!("--screenshot={}", path.display())).arg(url);
        let out = Self::run(cmd);
        assert!(
            out.status.success() && path.exists(),
            "chromium --screenshot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path.to_owned()
    }
}
