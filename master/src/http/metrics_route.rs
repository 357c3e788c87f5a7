//! `/metrics`: the process's metrics in Prometheus text format. The
//! recorder is installed once per process with the bucket bounds and help
//! texts of [`crate::metrics`]; gauges read from the database or the worker
//! registry are refreshed on each scrape.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::metrics::{CONNECTED_WORKERS, HISTOGRAM_BUCKETS, PENDING_REQUESTS};
use crate::state::MasterState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install_metrics() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in HISTOGRAM_BUCKETS {
                builder =
                    match builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets) {
                        Ok(b) => b,
                        Err(e) => {
                            tracing::warn!(metric = name, error = %e, "bad histogram buckets");
                            return None;
                        }
                    };
            }
            match builder.install_recorder() {
                Ok(h) => {
                    // The master and the gateway may share a process (quickstart).
                    crate::metrics::describe();
                    crate::metrics::describe_gateway();
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

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
    let body = install_metrics().map(|h| h.render()).unwrap_or_default();
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
    install_metrics();
    let stopping = stop.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async {
                let body = install_metrics().map(|h| h.render()).unwrap_or_default();
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
