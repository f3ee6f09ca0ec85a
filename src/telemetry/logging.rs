//! Logs: JSON lines by default, human-readable with `OTR_LOG_DEBUG`,
//! nothing with `OTR_LOG_QUIET` (oplogtoredis's three modes).
//!
//! JSON at info level is what log pipelines of a production fleet ingest;
//! the debug mode is for a person at a terminal, so it trades structure for
//! readability. `RUST_LOG`, when set, replaces the level filter in either
//! mode, e.g. `RUST_LOG=info,redtail::publish=trace`.

use tracing::Subscriber;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The variable that overrides the level filter.
pub const FILTER_VARIABLE: &str = "RUST_LOG";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` is not a valid filter.
    #[error("invalid RUST_LOG filter {directives:?}: {source}")]
    Filter {
        /// The text given.
        directives: String,
        /// The parser's complaint.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStyle {
    /// One JSON object per line, info level and up.
    Json,
    /// Human-readable lines, debug level and up for redtail itself.
    Human,
    /// No output at all.
    Off,
}

impl LogStyle {
    /// oplogtoredis's rule: quiet wins over debug, debug over the default.
    pub fn from_switches(debug: bool, quiet: bool) -> Self {
        match (debug, quiet) {
            (_, true) => LogStyle::Off,
            (true, false) => LogStyle::Human,
            (false, false) => LogStyle::Json,
        }
    }

    /// The filter used when `RUST_LOG` is unset. In debug mode only redtail
    /// goes to debug: the drivers' debug output would drown it.
    pub fn default_directives(self) -> &'static str {
        match self {
            LogStyle::Json => "info",
            LogStyle::Human => "info,redtail=debug,mongo_sim=debug",
            LogStyle::Off => "off",
        }
    }
}

/// Installs the global subscriber with just the logging layer.
pub fn init_logging(debug: bool, quiet: bool) -> Result<(), LoggingError> {
    init_logging_with(debug, quiet, None)
}

/// Installs the global subscriber: the logging layer, plus `extra` (the
/// OpenTelemetry layer when traces are on) sharing the same span registry.
/// Each layer keeps its own filter, so `OTR_LOG_QUIET` silences logs without
/// silencing traces.
pub fn init_logging_with(
    debug: bool,
    quiet: bool,
    extra: Option<Box<dyn Layer<Registry> + Send + Sync>>,
) -> Result<(), LoggingError> {
    let rust_log = std::env::var(FILTER_VARIABLE).ok();
    let mut layers = vec![layer(
        LogStyle::from_switches(debug, quiet),
        rust_log.as_deref(),
    )?];
    layers.extend(extra);
    tracing_subscriber::registry().with(layers).try_init()?;
    Ok(())
}

/// The logging layer for `style`, writing to stderr, with its own filter so
/// it does not limit what other layers of the same subscriber see.
pub fn layer<S>(
    style: LogStyle,
    rust_log: Option<&str>,
) -> Result<Box<dyn Layer<S> + Send + Sync>, LoggingError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    layer_with_writer(style, rust_log, std::io::stderr)
}

/// [`layer`] with a chosen writer, so tests can read what was logged.
pub fn layer_with_writer<S, W>(
    style: LogStyle,
    rust_log: Option<&str>,
    writer: W,
) -> Result<Box<dyn Layer<S> + Send + Sync>, LoggingError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    if style == LogStyle::Off {
        // Quiet means quiet: RUST_LOG does not bring logs back.
        return Ok(Box::new(tracing_subscriber::layer::Identity::new()));
    }
    let filter = filter(style, rust_log)?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    Ok(match style {
        LogStyle::Json => Box::new(
            fmt.json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_filter(filter),
        ),
        _ => Box::new(fmt.with_ansi(false).with_filter(filter)),
    })
}

/// `RUST_LOG` when set and non-empty, else the style's default.
fn filter(style: LogStyle, rust_log: Option<&str>) -> Result<EnvFilter, LoggingError> {
    let directives = rust_log
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .unwrap_or(style.default_directives());
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| LoggingError::Filter {
            directives: directives.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Logs one debug and one info event under `style` and returns the output.
    fn emit(style: LogStyle, rust_log: Option<&str>) -> String {
        let out = Captured::default();
        let logs = layer_with_writer(style, rust_log, out.clone()).unwrap();
        let subscriber = tracing_subscriber::registry().with(logs);
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "redtail::test", "detail");
            tracing::info!(target: "redtail::test", shard = 7, "started");
        });
        out.text()
    }

    #[test]
    fn switches_follow_oplogtoredis() {
        let cases = [
            (false, false, LogStyle::Json),
            (true, false, LogStyle::Human),
            (false, true, LogStyle::Off),
            (true, true, LogStyle::Off),
        ];
        for (debug, quiet, want) in cases {
            assert_eq!(
                LogStyle::from_switches(debug, quiet),
                want,
                "{debug} {quiet}"
            );
        }
    }

    #[test]
    fn default_is_json_lines_at_info() {
        let text = emit(LogStyle::Json, None);
        let lines = text.lines().collect::<Vec<_>>();
        assert_eq!(lines.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["message"], "started");
        assert_eq!(event["shard"], 7);
        assert_eq!(event["target"], "redtail::test");
        assert!(event["timestamp"].is_string());
    }

    #[test]
    fn debug_is_human_readable_and_includes_debug_events() {
        let text = emit(LogStyle::Human, None);
        assert!(text.contains("detail"), "{text}");
        assert!(
            text.contains("started") && text.contains("shard=7"),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
    }

    #[test]
    fn quiet_writes_nothing_even_with_rust_log() {
        assert_eq!(emit(LogStyle::Off, None), "");
        assert_eq!(emit(LogStyle::Off, Some("trace")), "");
    }

    #[test]
    fn rust_log_overrides_the_level() {
        assert!(emit(LogStyle::Json, Some("debug")).contains("detail"));
        assert_eq!(emit(LogStyle::Json, Some("warn")), "");
        assert!(emit(LogStyle::Json, Some("  ")).contains("started"));
        assert!(
            emit(LogStyle::Human, Some("info"))
                .lines()
                .all(|l| !l.contains("detail"))
        );
    }

    #[test]
    fn invalid_rust_log_is_an_error() {
        let err = layer_with_writer::<tracing_subscriber::Registry, _>(
            LogStyle::Json,
            Some("redtail=loud"),
            Captured::default(),
        )
        .err()
        .expect("invalid filter");
        assert!(err.to_string().contains("redtail=loud"), "{err}");
    }
}
