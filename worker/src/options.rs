//! Configuration of a worker ([`WorkerOptions`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How a worker connects and where it works.
#[derive(Clone)]
pub struct WorkerOptions {
    /// Gateway URL, e.g. `http://127.0.0.1:9989`.
    pub gateway: String,
    /// Worker name, as configured in the cluster's `[[workers]]`.
    pub name: String,
    /// Worker password (never logged).
    pub password: String,
    /// Directory under which every command's `workdir` lives.
    pub basedir: PathBuf,
    /// How often a registered worker reports its running commands.
    pub heartbeat_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// CA certificate (PEM) to trust for an `https://` gateway; the system's roots when unset.
    pub tls_ca: Option<PathBuf>,
    /// Refusals of the worker's name, password or protocol version in a row
    /// after which it stops (0: never).
    pub give_up_after_refusals: u32,
}

impl WorkerOptions {
    /// Options with the default heartbeat (5 s) and maximum backoff (30 s).
    pub fn new(
        gateway: impl Into<String>,
        name: impl Into<String>,
        password: impl Into<String>,
        basedir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            gateway: gateway.into(),
            name: name.into(),
            password: password.into(),
            basedir: basedir.into(),
            heartbeat_interval: Duration::from_secs(5),
            max_backoff: Duration::from_secs(30),
            give_up_after_refusals: crate::GIVE_UP_AFTER_REFUSALS,
            tls_ca: None,
        }
    }
}

impl fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerOptions")
            .field("gateway", &self.gateway)
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("basedir", &self.basedir)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("max_backoff", &self.max_backoff)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}
