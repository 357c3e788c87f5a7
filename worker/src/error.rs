//! Errors that stop a worker ([`WorkerError`]); connection problems never
//! do — the worker retries those forever.

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
    /// An `https://` gateway URL, but this build has no TLS support.
    #[error("TLS not built in: cannot connect to {url}; use an http:// gateway URL")]
    TlsNotBuiltIn {
        /// The URL as given.
        url: String,
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
