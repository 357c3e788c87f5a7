//! Errors returned by [`crate::serve`].

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A TLS certificate or key file could not be read.
    #[error("cannot read TLS file {path}: {message}")]
    Tls {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The listening socket failed.
    #[error("gateway socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gateway gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}
