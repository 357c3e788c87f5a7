//! Configuration of the gateway ([`GatewayOptions`]).

use std::path::PathBuf;
use std::time::Duration;

/// How the gateway behaves; `Default` gives the production defaults.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Silence allowed on a master link whose `MasterHello` says 0.
    pub default_silence_timeout: Duration,
    /// How long a peer may take to send its first message, and how long a
    /// master may take to answer an `AuthRequest` before the worker is routed
    /// again.
    pub auth_timeout: Duration,
    /// Serve TLS with this certificate and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// How often a registered worker that has said nothing is sent `Ping`.
    pub ping_interval: Duration,
    /// A worker that sends nothing (no heartbeat, no answer to `Ping`, no
    /// output) for this long is dropped and its commands reported lost.
    pub liveness_deadline: Duration,
    /// How long a live session of the same name has to answer the `Ping` of
    /// a liveness probe before a newcomer (with the right password) may
    /// replace it.
    pub probe_timeout: Duration,
    /// A TCP connection that has not sent `Register` (or `MasterHello`)
    /// within this long is closed.
    pub handshake_deadline: Duration,
    /// Most TCP connections open at once from one IP address.
    pub max_connections_per_address: usize,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            default_silence_timeout: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            tls: None,
            ping_interval: Duration::from_secs(5),
            liveness_deadline: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(3),
            handshake_deadline: Duration::from_secs(10),
            max_connections_per_address: 512,
        }
    }
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}
