//! A private MariaDB server for one test, on its own port and data folder,
//! so the test may stop and start it without disturbing anything else, and
//! optionally with a clock the test can step (libfaketime).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::proc::stop_child;

#[derive(Debug)]
pub struct PrivateMariadb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    /// libfaketime's offset file, when the server runs on a steppable clock.
    clock_file: Option<PathBuf>,
}

/// Debian's libfaketime (package `libfaketime`; `scripts/ensure-tools` installs it).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl PrivateMariadb {
    /// Creates a data folder and starts the server (a few seconds).
    pub fn start() -> PrivateMariadb {
        Self::start_with(false)
    }

    /// A server whose wall clock (`NOW()`, `UTC_TIMESTAMP()`) the test can
    /// step with [`PrivateMariadb::set_clock_offset`] while it runs.
    pub fn start_with_steppable_clock() -> PrivateMariadb {
        Self::start_with(true)
    }

    fn start_with(steppable_clock: bool) -> PrivateMariadb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        install_db(&data);
        let mut db = PrivateMariadb {
            port: free_port(),
            clock_file: steppable_clock.then(|| dir.path().join("faketime.rc")),
            dir,
            child: None,
        };
        if steppable_clock {
            assert!(
                std::path::Path::new(LIBFAKETIME).exists(),
                "{LIBFAKETIME} is missing: run scripts/ensure-tools"
            );
            db.set_clock_offset(0);
        }
        db.resume();
        db
    }

    /// Steps the server's wall clock to real time + `secs` (read at every
    /// clock call: libfaketime's cache is off). Its monotonic clock is left alone.
    pub fn set_clock_offset(&self, secs: i64) {
        let file = self
            .clock_file
            .as_ref()
            .expect("a server with a steppable clock");
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("write the clock offset");
        std::fs::rename(&tmp, file).expect("move the clock offset in place");
    }

    pub fn url(&self, database: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server on the same port and data, and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let mut cmd = mariadbd(self.dir.path(), self.port);
        if let Some(file) = &self.clock_file {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        self.child = Some(child);
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "private MariaDB did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Shuts the server down (clean shutdown, as `systemctl stop` would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Duration::from_secs(30));
        }
    }
}

impl Drop for PrivateMariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates a MariaDB data folder at `datadir` (root without a password).
/// The bootstrap server it runs has been seen to fail now and then on a
/// loaded machine; a failed attempt's folder is removed and the install
/// tried again, and the last failure's output is in the panic.
pub fn install_db(datadir: &Path) {
    const ATTEMPTS: u32 = 3;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", datadir.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run mariadb-install-db");
        if out.status.success() {
            return;
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        last = lines[lines.len().saturating_sub(30)..].join("\n");
        eprintln!(
            "mariadb-install-db attempt {attempt} of {ATTEMPTS} failed ({}):\n{last}",
            out.status
        );
        let _ = std::fs::remove_dir_all(datadir);
        std::thread::sleep(std::time::Duration::from_secs(u64::from(attempt)));
    }
    panic!("mariadb-install-db failed {ATTEMPTS} times; last output:\n{last}");
}

/// `mariadbd` on loopback port `port` with its data in `<dir>/data` and its
/// socket and pid file in `dir`, for tests: no grants, a small buffer pool,
/// no binary log.
pub fn mariadbd(dir: &Path, port: u16) -> Command {
    let mut cmd = Command::new("/usr/sbin/mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        .args([
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-grant-tables",
            "--innodb-buffer-pool-size=64M",
            "--skip-log-bin",
            "--max-connections=500",
        ]);
    cmd
}
