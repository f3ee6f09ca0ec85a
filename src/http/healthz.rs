//! `/healthz`: oplogtoredis's liveness check, byte-compatible.
//!
//! Load balancers and monitors already parse `{"mongoOK":b,"redisOK":b}`
//! with 200/500, so the shape is kept exactly. Like oplogtoredis it reports
//! connectivity only; whether the pipeline publishes is `/readyz`'s job.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures_util::future::BoxFuture;

use super::HttpState;

/// The connectivity checks behind `/healthz`, supplied by whoever owns the
/// MongoDB and Redis clients. Boxed futures keep it usable as a trait object.
pub trait HealthProbe: Send + Sync {
    /// True if MongoDB answers (a ping of the primary), within the probe's own timeout.
    fn mongo_ok(&self) -> BoxFuture<'_, bool>;
    /// True if every Redis answers a PING, within the probe's own timeout.
    fn redis_ok(&self) -> BoxFuture<'_, bool>;
}

/// The outcome of both probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthReport {
    /// MongoDB answered.
    pub mongo_ok: bool,
    /// Every Redis answered.
    pub redis_ok: bool,
}

impl HealthReport {
    /// oplogtoredis's body: `{"mongoOK":true,"redisOK":false}`.
    pub fn body(self) -> String {
        format!(
            r#"{{"mongoOK":{},"redisOK":{}}}"#,
            self.mongo_ok, self.redis_ok
        )
    }

    /// 200 when both are fine, 500 otherwise.
    pub fn status(self) -> StatusCode {
        if self.mongo_ok && self.redis_ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// Runs both probes concurrently (any method, as in oplogtoredis).
pub(super) async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let (mongo_ok, redis_ok) = tokio::join!(state.health.mongo_ok(), state.health.redis_ok());
    let report = HealthReport { mongo_ok, redis_ok };
    (
        report.status(),
        [(header::CONTENT_TYPE, "application/json")],
        report.body(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_and_status_table() {
        let cases = [
            (
                true,
                true,
                r#"{"mongoOK":true,"redisOK":true}"#,
                StatusCode::OK,
            ),
            (
                true,
                false,
                r#"{"mongoOK":true,"redisOK":false}"#,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                false,
                true,
                r#"{"mongoOK":false,"redisOK":true}"#,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                false,
                false,
                r#"{"mongoOK":false,"redisOK":false}"#,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (mongo_ok, redis_ok, body, status) in cases {
            let report = HealthReport { mongo_ok, redis_ok };
            assert_eq!(report.body(), body);
            assert_eq!(report.status(), status);
        }
    }
}
