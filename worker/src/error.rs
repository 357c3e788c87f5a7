//! Errors that stop a worker ([`WorkerError`]); connection problems never
//! do — the worker retries those forever. A registration refused for its
//! credentials again and again stops it: that does not mend by waiting.

use std::path::PathBuf;

/// A configuration problem that makes running the worker pointless.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The gateway URL cannot be parsed.
    #[error("invalid gateway URL {url:?}: {source}")]
    InvalidGatewayUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        source: tonic::transport::Error,
    },
    /// The TLS settings for the gateway URL cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The cluster refused this worker's name, password or protocol version
    /// on every one of several attempts in a row.
    #[error("refused {attempts} times in a row ({reason}); giving up")]
    Refused {
        /// The cluster's reason, as last given.
        reason: String,
        /// Consecutive refusals.
        attempts: u32,
    },
    /// The worker name is empty.
    #[error("the worker name must not be empty")]
    EmptyName,
    /// The base directory cannot be created.
    #[error("cannot create worker basedir {path}: {source}")]
    Basedir {
        /// The configured basedir.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
