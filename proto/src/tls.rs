//! TLS for the clients of the gateway (workers and masters): an `https://`
//! gateway URL is dialled over TLS, trusting the CA certificate given (a
//! private CA, or the gateway's self-signed certificate) or else the
//! system's roots.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig};

/// The TLS settings for dialling `url`, or `None` for a plain `http://` URL.
pub fn client_tls(url: &str, ca_file: Option<&Path>) -> Result<Option<ClientTlsConfig>, String> {
    if !url.starts_with("https://") {
        if let Some(ca) = ca_file {
            return Err(format!(
                "a TLS CA certificate ({}) was given but the gateway URL {url} is not https://",
                ca.display()
            ));
        }
        return Ok(None);
    }
    let tls = ClientTlsConfig::new();
    Ok(Some(match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!("cannot read the TLS CA certificate {}: {e}", path.display())
            })?;
            tls.ca_certificate(Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    }))
}
