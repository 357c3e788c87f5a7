//! Errors returned by [`crate::serve`].

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// TLS files were configured, but this build has no TLS support.
    #[error(
        "TLS not built in: this flotilla build cannot serve TLS (configured cert {cert}); \
         terminate TLS in front of the gateway or remove tls_cert/tls_key"
    )]
    TlsNotBuiltIn {
        /// The configured certificate path, for the message.
        cert: String,
    },
    /// The listening socket failed.
    #[error("gateway socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gateway gRPC server error: {0}")]
    Transport(#[from] tonic::transport::Error),
}
