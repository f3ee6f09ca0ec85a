//! Telemetry: logs, Prometheus metrics and OpenTelemetry traces.

pub mod metrics;
