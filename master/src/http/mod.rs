//! The HTTP API and dashboard every master serves. Everything it shows comes
//! from the shared database, so any master answers the same; writes (force,
//! changes, drain) go to the database and wake this master's claim loop.

mod auth;
mod build_control;
mod dashboard;
mod deliveries;
mod error;
mod force_defaults;
mod hooks;
mod limits;
mod metrics_route;
mod openapi;
mod params;
mod provenance;
mod reads;
mod try_route;
mod writes;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ApiResult};
pub use metrics_route::serve_metrics_only;

use crate::state::MasterState;

/// Largest request body accepted (a try patch fits well within).
const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn router(state: Arc<MasterState>) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(reads::healthz))
        .route("/readyz", get(reads::readyz))
        .route("/metrics", get(metrics_route::metrics))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/masters", get(reads::masters))
        .route("/api/v1/builders", get(reads::builders))
        .route("/api/v1/builders/{name}", get(reads::builder))
        .route("/api/v1/workers", get(reads::workers))
        .route("/api/v1/buildrequests", get(reads::requests))
        .route("/api/v1/buildrequests/{id}", get(reads::request))
        .route(
            "/api/v1/buildrequests/{id}/cancel",
            post(build_control::cancel_request),
        )
        .route("/api/v1/buildsets/{id}", get(provenance::buildset))
        .route("/api/v1/builds", get(reads::builds))
        .route("/api/v1/builds/{id}", get(reads::build))
        .route("/api/v1/builds/{id}/stop", post(build_control::stop_build))
        .route("/api/v1/builds/{id}/rebuild", post(build_control::rebuild))
        .route("/api/v1/builds/{id}/steps", get(reads::steps))
        .route(
            "/api/v1/builds/{id}/deliveries",
            get(deliveries::build_deliveries),
        )
        .route("/api/v1/builds/{id}/steps/{n}/log", get(reads::step_log))
        .route("/api/v1/force", post(writes::force))
        .route("/api/v1/changes", get(reads::changes).post(writes::changes))
        .route("/api/v1/changes/{id}", get(reads::change))
        .route("/api/v1/schedulers", get(reads::schedulers))
        .route("/api/v1/try", post(try_route::try_build))
        .route("/api/v1/hooks/github", post(hooks::github))
        .route("/api/v1/hooks/gitlab", post(hooks::gitlab))
        .route("/api/v1/masters/{name}/drain", post(writes::drain))
        .route("/api/v1/masters/{name}/undrain", post(writes::undrain))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_tokens,
        ))
        .layer(middleware::from_fn(count_requests))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, state: Arc<MasterState>, stop: CancellationToken) {
    let app = router(state);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "HTTP API listening");
    }
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no such route: {}", uri.path()))
}

/// Counts answered requests by status class (`2xx`, `4xx`, ...).
async fn count_requests(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let class = match resp.status().as_u16() / 100 {
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    };
    ::metrics::counter!(crate::metrics::HTTP_REQUESTS, "status" => class).increment(1);
    resp
}
