//! `/metrics`: the process's metrics in Prometheus text format, from the
//! recorder that [`crate::metrics::install`] installs once per process;
//! gauges read from the database or the worker registry are refreshed on
//! each scrape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::metrics::{CONNECTED_WORKERS, PENDING_REQUESTS, install};
use crate::state::MasterState;

pub async fn metrics(State(st): State<Arc<MasterState>>) -> impl IntoResponse {
    ::metrics::gauge!(CONNECTED_WORKERS).set(st.workers.count() as f64);
    match st.store.builder_counts().await {
        Ok(counts) => {
            for c in counts {
                ::metrics::gauge!(PENDING_REQUESTS, "builder" => c.name).set(c.pending as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read queue depth"),
    }
    let body = install().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// A listener that serves only `/metrics`, `/healthz` and `/readyz`, for
/// processes without the API (the gateway). Runs until `stop`. The gateway
/// needs neither the database nor a master to accept workers, so it is
/// ready from the moment it listens (before this is called) until it is
/// told to stop.
pub async fn serve_metrics_only(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    install();
    let stopping = stop.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                let body = install().map(|h| h.render()).unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = !stopping.is_cancelled();
                async move {
                    let status = if ready {
                        axum::http::StatusCode::OK
                    } else {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        status,
                        axum::Json(serde_json::json!({"ready": ready, "stopping": !ready})),
                    )
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}
