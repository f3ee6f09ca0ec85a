//! redtail's real HTTP router serving a cluster status source in process,
//! for the `/status` and `/status/page` tests.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use futures_util::future::BoxFuture;
use redtail::denylist::Denylist;
use redtail::http::{self, HealthProbe, HttpState};
use redtail::status::StatusSource;
use redtail::telemetry::metrics::Metrics;
use tokio_util::sync::CancellationToken;

/// Probes that always pass: the status views do not depend on them.
pub struct Healthy;

impl HealthProbe for Healthy {
    fn mongo_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
    fn redis_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// The router's state around `status` (`None`: cluster mode off).
pub fn status_state(status: Option<StatusSource>) -> HttpState {
    let metrics = Metrics::new();
    HttpState {
        metrics: metrics.clone(),
        denylist: Denylist::in_memory(metrics),
        health: Arc::new(Healthy),
        ready: Arc::new(AtomicBool::new(true)),
        admin_token: None,
        status,
    }
}

/// Serves the real router on a free port; returns the base URL and the
/// token that stops it.
pub async fn serve_status(status: Option<StatusSource>) -> Result<(String, CancellationToken)> {
    let listener = http::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    tokio::spawn(http::serve_on(listener, status_state(status), stop.clone()));
    Ok((base, stop))
}
