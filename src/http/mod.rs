//! The HTTP server: health, readiness, metrics, the denylist API and the
//! cluster's status.
//!
//! Paths, bodies and status codes follow oplogtoredis where it has the
//! endpoint (`/healthz`, `/metrics`, `/denylist`), so existing probes,
//! scrapers and scripts keep working; `/readyz` is redtail's addition for
//! orchestrators that must not send traffic (or a rolling deploy's next
//! step) before the pipeline is up.

mod admin;
mod denylist_api;
mod healthz;
mod metrics_endpoint;
mod status;
mod status_page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Secret;
use crate::denylist::Denylist;
use crate::status::StatusSource;
use crate::telemetry::metrics::Metrics;

pub use admin::is_authorized;
pub use healthz::{HealthProbe, HealthReport};

/// Why the HTTP server could not run.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound (in use, not local, bad name).
    #[error("cannot listen on {addr} (OTR_HTTP_SERVER_ADDR): {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Everything the handlers need; cheap to clone (all shared handles).
#[derive(Clone)]
pub struct HttpState {
    /// Rendered by `/metrics`.
    pub metrics: Metrics,
    /// Served and changed by `/denylist`.
    pub denylist: Denylist,
    /// Asked by `/healthz`.
    pub health: Arc<dyn HealthProbe>,
    /// Set by the pipeline once it is publishing; read by `/readyz`.
    pub ready: Arc<AtomicBool>,
    /// `OTR_HTTP_ADMIN_TOKEN`: guards the denylist's PUT and DELETE.
    pub admin_token: Option<Secret>,
    /// Read by `/status`; `None` outside cluster mode (`/status` is then 404).
    pub status: Option<StatusSource>,
}

impl HttpState {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The routes, for [`serve_on`] or for merging more routes (a status view).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", any(healthz::healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint::metrics))
        .route("/status", get(status::status))
        .route("/status/page", get(status_page::status_page))
        .merge(denylist_api::routes())
        .fallback(not_found)
        .with_state(state)
}

/// Binds `addr` (`host:port`) so that a bad or busy address fails at start,
/// before anything else is running; port 0 picks a free port.
pub async fn bind(addr: &str) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Binds `addr` and serves until `shutdown` is cancelled.
pub async fn serve(
    addr: &str,
    state: HttpState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let listener = bind(addr).await?;
    serve_on(listener, state, shutdown).await
}

/// Serves on an already bound listener until `shutdown` is cancelled;
/// requests in progress are allowed to finish.
pub async fn serve_on(
    listener: TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "HTTP server listening");
    }
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(HttpError::Serve)
}

/// `/readyz`: 200 once the pipeline is publishing, 503 before (and while
/// shutting down, when the pipeline clears the flag).
async fn readyz(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> StatusCode {
    StatusCode::NOT_FOUND
}
