//! `/denylist`: oplogtoredis's API, paths and status codes unchanged.
//!
//! - `GET /denylist` -> 200, JSON array of names
//! - `GET /denylist/<db>` -> 200 with the JSON string, or 404
//! - `PUT /denylist/<db>` -> 201 if new, 204 if already listed
//! - `DELETE /denylist/<db>` -> 204 always
//! - an id containing `/`, or any other method -> 404
//! - the change could not be stored in Redis -> 500 (it still applies here
//!   and is stored at the next refresh)
//!
//! redtail adds one rule: PUT and DELETE are refused with 403 unless the
//! client is allowed (see [`super::admin`]).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::admin::is_authorized;
use super::{HttpState, not_found};

pub(super) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/denylist", get(list).fallback(not_found))
        .route(
            "/denylist/{id}",
            get(show).put(add).delete(remove).fallback(not_found),
        )
}

async fn list(State(state): State<HttpState>) -> Json<Vec<String>> {
    Json(state.denylist.entries())
}

async fn show(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    if id.contains('/') || !state.denylist.is_denied(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(id).into_response()
}

async fn add(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refusal) = refuse(&state, peer, &headers, &id) {
        return refusal;
    }
    match state.denylist.add(&id).await {
        Ok(true) => {
            tracing::info!(db = %id, %peer, "database added to the denylist");
            StatusCode::CREATED.into_response()
        }
        Ok(false) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => persistence_failed(&err),
    }
}

async fn remove(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refusal) = refuse(&state, peer, &headers, &id) {
        return refusal;
    }
    match state.denylist.remove(&id).await {
        Ok(removed) => {
            if removed {
                tracing::info!(db = %id, %peer, "database removed from the denylist");
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => persistence_failed(&err),
    }
}

/// The 404 for ids with `/` (percent-encoded, since a raw one does not
/// match the route) and the 403 for clients that may not change the list.
fn refuse(state: &HttpState, peer: SocketAddr, headers: &HeaderMap, id: &str) -> Option<Response> {
    if id.contains('/') {
        return Some(StatusCode::NOT_FOUND.into_response());
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if !is_authorized(state.admin_token.as_ref(), peer.ip(), authorization) {
        tracing::warn!(%peer, "refused a denylist change: not authorized");
        let hint = if state.admin_token.is_some() {
            "a valid Authorization: Bearer token is required\n"
        } else {
            "changes are only accepted from loopback unless OTR_HTTP_ADMIN_TOKEN is set\n"
        };
        return Some((StatusCode::FORBIDDEN, hint).into_response());
    }
    None
}

fn persistence_failed(err: &crate::denylist::DenylistError) -> Response {
    tracing::error!(error = %err, "denylist change applied locally but not stored in Redis");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response()
}
