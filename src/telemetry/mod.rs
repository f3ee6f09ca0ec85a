//! Telemetry: logs, Prometheus metrics and OpenTelemetry traces.

pub mod logging;
pub mod metrics;
pub mod traces;

/// Milliseconds since the Unix epoch on this machine's wall clock: the scale
/// of oplog entries' `wall` field, so ages and end-to-end latencies are the
/// difference of the two (clamped at 0 by callers for clock skew).
pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
