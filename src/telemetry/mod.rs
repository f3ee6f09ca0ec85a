//! Telemetry: logs, Prometheus metrics and OpenTelemetry traces.

pub mod logging;
pub mod metrics;
pub mod traces;
