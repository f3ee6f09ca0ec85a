//! `/metrics`: the Prometheus text exposition of every redtail metric.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::HttpState;

/// The content type of Prometheus's text format, version 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

pub(super) async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
}
