//! The flotilla worker gateway.
//!
//! Masters dial in over `MasterLink.Attach` and workers over
//! `WorkerGateway.Session`, both on one port (plus `grpc.health.v1`). The
//! gateway routes each worker to one live, non-draining master by rendezvous
//! hashing, lets that master authenticate it, then relays messages both ways.
//! When a master's link dies or goes silent, the gateway interrupts the
//! commands it was running and sends its workers to register again, so they
//! land on another master. The gateway keeps no state beyond its connections.

mod admission;
mod buildbot;
mod connections;
mod error;
mod master_link;
mod options;
mod registry;
pub mod routing;
mod worker_session;

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::MAX_MESSAGE_BYTES;
use flotilla_proto::v1::master_link_server::MasterLinkServer;
use flotilla_proto::v1::worker_gateway_server::WorkerGatewayServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{info, warn};

pub use error::GatewayError;
pub use options::{GatewayOptions, TlsFiles};

use master_link::MasterLinkService;
use registry::Registry;
use worker_session::WorkerGatewayService;

/// HTTP/2 PING interval; a peer that does not answer within the timeout is
/// dropped, so a vanished worker or master is noticed even when idle.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long in-flight streams get to close after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the gateway on `listener` until `shutdown` is cancelled.
///
/// On shutdown every worker is told to reconnect and every master link is
/// closed; the function returns once the connections are closed (or after a
/// short grace period).
pub async fn serve(
    listener: TcpListener,
    opts: GatewayOptions,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    serve_with(listener, None, opts, shutdown).await
}

/// Like [`serve`], and also accepts unmodified Buildbot workers (msgpack over
/// WebSocket) on `buildbot`, when given.
pub async fn serve_with(
    listener: TcpListener,
    buildbot: Option<TcpListener>,
    opts: GatewayOptions,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let tls = opts.tls.as_ref().map(server_tls).transpose()?;
    let addr = listener.local_addr()?;
    let registry = Arc::new(Registry::new(gateway_id()));
    let opts = Arc::new(opts);
    let connections = Arc::new(connections::Connections::default());

    let sessions = WorkerGatewayService {
        registry: registry.clone(),
        opts: opts.clone(),
        shutdown: shutdown.clone(),
        throttle: Arc::new(admission::Throttle::default()),
        connections: connections.clone(),
    };
    let buildbot_task = buildbot
        .map(|l| buildbot::listen(l, sessions.clone(), connections.clone()))
        .transpose()?;
    let workers = WorkerGatewayServer::new(sessions)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let masters = MasterLinkServer::new(MasterLinkService {
        registry: registry.clone(),
        opts: opts.clone(),
        shutdown: shutdown.clone(),
        connections: connections.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<WorkerGatewayServer<WorkerGatewayService>>()
        .await;
    health
        .set_serving::<MasterLinkServer<MasterLinkService>>()
        .await;

    let incoming = connections::accept(
        listener,
        connections,
        opts.handshake_deadline,
        opts.max_connections_per_address,
    );
    let stop = shutdown.clone();
    let signal = async move {
        stop.cancelled().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<WorkerGatewayServer<WorkerGatewayService>>()
            .await;
        health
            .set_not_serving::<MasterLinkServer<MasterLinkService>>()
            .await;
    };
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let server = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(workers)
        .add_service(masters)
        .serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);

    info!(%addr, gateway_id = %registry.gateway_id, "worker gateway listening");
    tokio::select! {
        result = &mut server => result?,
        _ = shutdown.cancelled() => {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result?,
                Err(_) => warn!("gateway connections still open after {SHUTDOWN_GRACE:?}; closing them"),
            }
        }
    }
    if let Some(task) = buildbot_task {
        task.abort();
    }
    info!(%addr, "worker gateway stopped");
    Ok(())
}

/// A name for this gateway process, unique enough for logs.
fn gateway_id() -> String {
    let host = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "gateway".to_owned());
    format!(
        "{host}-{}-{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Loads the gateway's certificate chain and private key (PEM files).
fn server_tls(
    files: &options::TlsFiles,
) -> Result<tonic::transport::ServerTlsConfig, GatewayError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| GatewayError::Tls {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let identity = tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    Ok(tonic::transport::ServerTlsConfig::new().identity(identity))
}
