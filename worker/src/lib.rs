//! The flotilla worker agent.
//!
//! A worker dials the gateway, registers (name, password, facts), and runs
//! the commands its master sends: each in its own process group under the
//! worker's basedir, with output streamed back in chunks and an exit report
//! after the output. It reconnects forever with jittered exponential
//! backoff; whenever a connection ends, the commands it started are killed
//! first.

mod backoff;
mod command;
mod connection;
mod error;
mod options;
mod outbox;
mod process_group;

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{error, info, warn};

pub use error::WorkerError;
pub use options::WorkerOptions;

use backoff::Backoff;
use connection::Outcome;

/// Largest chunk of command output sent in one message.
pub const OUTPUT_CHUNK_BYTES: usize = command::CHUNK_BYTES;

/// Runs the worker until `shutdown` is cancelled, reconnecting forever.
///
/// Returns `Ok(())` on shutdown, after killing running commands; an error
/// only for configuration that can never work (bad URL, empty name,
/// uncreatable basedir).
pub async fn run(opts: WorkerOptions, shutdown: CancellationToken) -> Result<(), WorkerError> {
    if opts.name.is_empty() {
        return Err(WorkerError::EmptyName);
    }
    let endpoint = endpoint(&opts.gateway, opts.tls_ca.as_deref())?;
    tokio::fs::create_dir_all(&opts.basedir)
        .await
        .map_err(|source| WorkerError::Basedir {
            path: opts.basedir.clone(),
            source,
        })?;
    info!(worker = %opts.name, gateway = %opts.gateway, basedir = %opts.basedir.display(), "worker starting");

    let mut backoff = Backoff::new(opts.max_backoff);
    // Refusals of this worker's credentials in a row (not of the moment:
    // a name in use, a master without its database).
    let mut refused = 0u32;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let delay = match connection::run_once(&opts, &endpoint, &shutdown).await {
            Outcome::Shutdown => break,
            Outcome::Reconnect { registered, reason } => {
                if registered {
                    refused = 0;
                }
                info!(worker = %opts.name, %reason, "gateway asked to reconnect");
                if registered {
                    backoff.reset();
                    // Immediately, with a little jitter so a master handing
                    // back many workers does not get them all in one instant.
                    Duration::from_millis(rand::rng().random_range(0..50))
                } else {
                    backoff.next_delay()
                }
            }
            Outcome::Refused(reason) => {
                if refused_for_credentials(&reason) {
                    refused += 1;
                    if opts.give_up_after_refusals > 0 && refused >= opts.give_up_after_refusals {
                        error!(worker = %opts.name, %reason, attempts = refused, "worker refused by the cluster every time; giving up");
                        return Err(WorkerError::Refused {
                            reason,
                            attempts: refused,
                        });
                    }
                } else {
                    refused = 0;
                }
                let delay = backoff.next_delay();
                error!(worker = %opts.name, %reason, retry_in = ?delay, "worker refused by the cluster");
                delay
            }
            Outcome::Lost { registered, error } => {
                if registered {
                    refused = 0;
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                warn!(worker = %opts.name, %error, retry_in = ?delay, "not connected to the gateway");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    info!(worker = %opts.name, "worker stopped");
    Ok(())
}

/// Default number of consecutive refusals of the worker's credentials after
/// which it stops (with the backoff, a minute or more of trying): an unknown
/// name or a wrong password does not mend by waiting, and a supervisor shows
/// a stopped worker where a retrying one would look healthy.
pub const GIVE_UP_AFTER_REFUSALS: u32 = 10;

/// Whether a refusal is about this worker's name, password or protocol
/// version, as opposed to a passing state of the cluster.
fn refused_for_credentials(reason: &str) -> bool {
    [
        "unknown worker name",
        "wrong password",
        "unsupported protocol version",
    ]
    .iter()
    .any(|r| reason.contains(r))
}

fn endpoint(url: &str, tls_ca: Option<&std::path::Path>) -> Result<Endpoint, WorkerError> {
    let invalid = |source| WorkerError::InvalidGatewayUrl {
        url: url.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(invalid)?;
    if let Some(tls) = flotilla_proto::tls::client_tls(url, tls_ca).map_err(WorkerError::Tls)? {
        endpoint = endpoint.tls_config(tls).map_err(invalid)?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}
