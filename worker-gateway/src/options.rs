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
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            default_silence_timeout: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            tls: None,
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
