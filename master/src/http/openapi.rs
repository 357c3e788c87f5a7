//! `GET /api/v1/openapi.json`: the OpenAPI 3.0 description of this API,
//! embedded in the binary. The tests keep it true: every route of the
//! router is in it, and a fuzzer (schemathesis) checks the running API
//! against it (no 5xx, every answer matches its schema).

use axum::http::header;
use axum::response::IntoResponse;

const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}
