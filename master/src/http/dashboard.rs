//! The web dashboard: one page embedded in the binary (no Node toolchain at
//! run time) that polls the JSON API and redraws without a reload.

use axum::response::Html;

const PAGE: &str = include_str!("dashboard.html");

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
