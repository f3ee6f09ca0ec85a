//! `/status`: the cluster's shard table as JSON (see [`crate::status`]).
//!
//! Open like `/metrics`: it reveals member ids and positions, nothing that
//! changes anything. Answers:
//! - 200 and the [`ClusterStatusReport`] plus `"cluster": true`;
//! - 404 and `{"cluster":false,...}` when this instance does not run in
//!   cluster mode: there is no shard table to show, and a 404 lets a probe
//!   tell "not a cluster" from "cluster unreadable";
//! - 503 and `{"cluster":true,"error":...}` when Redis cannot be read, so a
//!   monitor sees the outage rather than an empty table.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::HttpState;
use crate::status::ClusterStatusReport;

/// The body of a successful `/status`: the report, flagged as a cluster.
#[derive(Serialize)]
struct StatusBody {
    cluster: bool,
    #[serde(flatten)]
    report: ClusterStatusReport,
}

pub(super) async fn status(State(state): State<HttpState>) -> Response {
    let Some(source) = state.status else {
        let body = json!({
            "cluster": false,
            "message": "cluster mode is off (OTR_CLUSTER=false): every instance publishes \
                        everything and there are no shards to show",
        });
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    };
    match source.report().await {
        Ok(report) => Json(StatusBody {
            cluster: true,
            report,
        })
        .into_response(),
        Err(error) => {
            let message = source.redact(&error.to_string());
            tracing::warn!(error = %message, "/status could not read the cluster");
            let body = json!({ "cluster": true, "error": message });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
