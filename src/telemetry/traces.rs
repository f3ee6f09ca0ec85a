//! OpenTelemetry traces: one PRODUCER span per collection per Redis script
//! call, following the messaging semantic conventions, exported over OTLP.
//!
//! Why spans at all when Prometheus already has the latency histogram: a
//! histogram says *that* p99 is slow, a span says *which* collection, how big
//! the call was and which Redis answered. The redis-oplog payload has no room
//! for trace context, so every span is a root span: traces end at the publish.
//!
//! Shape of a span (see docs/metrics.md for the full list):
//! - name `publish <db>.<coll>`, kind PRODUCER, `messaging.system=redis`,
//!   `messaging.operation.name=publish`, `messaging.operation.type=send`;
//! - `messaging.destination.name` is the collection channel (low cardinality)
//!   and `messaging.destination.template` the per-document channel pattern;
//! - it starts at the oldest entry's oplog `wall` time and ends when Redis
//!   acknowledged the call, so its duration *is* the end-to-end latency of the
//!   oldest change; `redtail.latency.max_ms`/`min_ms` carry the same figure
//!   as `redtail_end_to_end_latency_seconds` (published changes only).
//!
//! A script call may carry changes of several collections. Rather than name
//! the span after the first one and mislabel the rest, each collection gets
//! its own span (`redtail.call.message_count` tells the whole call's size),
//! so searching a trace viewer by destination finds every change of it.
//!
//! Configuration is the SDK's own: `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` turns export on; without either,
//! nothing is installed and the publisher does no tracing work at all.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanBuilder, SpanKind, Status, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::{Layer, Registry};

/// The instrumentation scope name spans are reported under.
pub const SCOPE: &str = "redtail";
/// `service.name` when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names the service (the SDK would say
/// `unknown_service`).
pub const DEFAULT_SERVICE_NAME: &str = "redtail";
/// How long shutdown waits for the last spans to be exported: the rest of
/// the 30 s grace period belongs to draining publications.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);

/// The tracer installed by [`install_from_env`], read by publishers built
/// afterwards. A process-wide slot (like OpenTelemetry's own global provider)
/// so wiring code need not thread a tracer through every constructor; unlike
/// the global provider it can tell "off" apart, which keeps the hot path free.
static INSTALLED: OnceLock<PublishTracer> = OnceLock::new();

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// A variable asks for something this build cannot do.
    #[error("{variable}={value:?} is not supported: {hint}")]
    Unsupported {
        /// The variable's name.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What would work instead.
        hint: &'static str,
    },
    /// The OTLP exporter rejected its configuration (e.g. a malformed endpoint).
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// No export, and which variable (or its absence) decided it.
    Off(&'static str),
    /// OTLP over HTTP/protobuf.
    Otlp,
}

impl TraceExport {
    /// Decides from the environment (`lookup` is `std::env::var` in
    /// production): pure, so the rules are table-tested.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TracesError> {
        let get = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(TraceExport::Off("OTEL_SDK_DISABLED=true"));
        }
        match get("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(TraceExport::Off("OTEL_TRACES_EXPORTER=none")),
            Some(other) => {
                return Err(TracesError::Unsupported {
                    variable: "OTEL_TRACES_EXPORTER",
                    value: other.to_owned(),
                    hint: "use otlp or none",
                });
            }
        }
        if get("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
            && get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        {
            return Ok(TraceExport::Off("no OTLP endpoint is set"));
        }
        // The SDK would fall back to HTTP silently, sending to a gRPC port
        // (4317) that never answers: say so at start instead.
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = get(variable).filter(|v| v != "http/protobuf") {
                return Err(TracesError::Unsupported {
                    variable,
                    value,
                    hint: "redtail exports OTLP over http/protobuf (usually port 4318)",
                });
            }
        }
        Ok(TraceExport::Otlp)
    }
}

/// Whether the environment names the service itself.
fn service_named(lookup: impl Fn(&str) -> Option<String>) -> bool {
    let non_empty = |name: &str| lookup(name).is_some_and(|v| !v.trim().is_empty());
    non_empty("OTEL_SERVICE_NAME")
        || lookup("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .any(|pair| pair.trim_start().starts_with("service.name="))
        })
}

/// Keeps the tracer provider alive; [`TracesGuard::shutdown`] exports what
/// is still buffered.
pub struct TracesGuard {
    provider: SdkTracerProvider,
}

/// Sets up OTLP export when the `OTEL_*` variables ask for it, and makes the
/// tracer available to publishers created afterwards ([`PublishTracer::installed`]).
/// `None` when tracing is off. Must run inside the Tokio runtime: the batch
/// span processor exports from a task on it.
pub fn install_from_env() -> Result<Option<TracesGuard>, TracesError> {
    let lookup = |name: &str| std::env::var(name).ok();
    if let TraceExport::Off(_) = TraceExport::from_env(lookup)? {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    // The async-runtime processor, so the async HTTP client runs on our
    // runtime; it reads OTEL_BSP_* itself. Spans are handed over with a
    // non-blocking try_send: a slow collector drops spans, never stalls
    // publishing.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !service_named(lookup) {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    // The sampler comes from OTEL_TRACES_SAMPLER/OTEL_TRACES_SAMPLER_ARG
    // (read by the SDK's default configuration).
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    let _ = INSTALLED.set(PublishTracer::from_provider(&provider));
    Ok(Some(TracesGuard { provider }))
}

impl TracesGuard {
    /// A `tracing` layer that turns redtail's own `tracing` spans into
    /// OpenTelemetry spans of the same provider. Only redtail's targets: the
    /// HTTP client that exports spans must not be traced into itself.
    pub fn layer(&self) -> Box<dyn Layer<Registry> + Send + Sync> {
        let tracer = self.provider.tracer_with_scope(scope());
        let only_redtail =
            tracing_subscriber::filter::Targets::new().with_target("redtail", tracing::Level::INFO);
        Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(only_redtail),
        )
    }

    /// Exports the buffered spans and stops the exporter, waiting at most
    /// [`SHUTDOWN_BUDGET`]. The SDK's shutdown blocks its thread until the
    /// export task (on the runtime) answers, so it runs on a thread of its own.
    pub async fn shutdown(self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let provider = self.provider;
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match tokio::time::timeout(SHUTDOWN_BUDGET, finished).await {
            Ok(Ok(Ok(()))) => tracing::debug!("exported the last spans"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "exporting the last spans failed"),
            Ok(Err(_)) => tracing::warn!("the span exporter shut down abnormally"),
            Err(_) => tracing::warn!(
                budget = ?SHUTDOWN_BUDGET,
                "the last spans were not exported in time; giving up on them"
            ),
        }
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// Makes the publish spans. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PublishTracer {
    tracer: SdkTracer,
}

impl PublishTracer {
    /// Spans of `provider` (tests pass one with an in-memory exporter).
    pub fn from_provider(provider: &SdkTracerProvider) -> Self {
        Self {
            tracer: provider.tracer_with_scope(scope()),
        }
    }

    /// The tracer set up by [`install_from_env`], `None` when tracing is off.
    pub fn installed() -> Option<Self> {
        INSTALLED.get().cloned()
    }

    /// The tracer for one Redis destination, identified by its URL (password
    /// already redacted) for `server.address`/`server.port`.
    pub fn for_destination(&self, redacted_url: &str) -> DestinationTracer {
        let mut server = Vec::with_capacity(2);
        let url = url::Url::parse(redacted_url).ok();
        if let Some(host) = url.as_ref().and_then(|url| url.host_str()) {
            server.push(KeyValue::new("server.address", host.to_owned()));
            // redis:// and rediss:// both default to 6379.
            let port = url.as_ref().and_then(url::Url::port).unwrap_or(6379);
            server.push(KeyValue::new("server.port", i64::from(port)));
        }
        DestinationTracer {
            tracer: self.tracer.clone(),
            server,
        }
    }
}

/// One change of a script call, as the spans need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedMessage<'a> {
    /// `<db>.<coll>`: the collection channel.
    pub namespace: &'a str,
    /// The oplog entry's `wall` time (ms since the epoch), when it has one.
    pub wall_ms: Option<i64>,
    /// The dedup key said another publisher (or an earlier try) sent it.
    pub duplicate: bool,
    /// `<ts>:<txIdx>`, the change's identity (`messaging.message.id`).
    pub id: (u64, u32),
}

/// Spans for one Redis destination.
#[derive(Clone, Debug)]
pub struct DestinationTracer {
    tracer: SdkTracer,
    server: Vec<KeyValue>,
}

impl DestinationTracer {
    /// Records the spans of a script call Redis acknowledged at `acked_ms`
    /// after `round_trip` (the span start for changes without a wall time).
    pub fn acknowledged<'a>(
        &self,
        messages: impl IntoIterator<Item = TracedMessage<'a>>,
        acked_ms: i64,
        round_trip: Duration,
    ) {
        let sent_ms = acked_ms - i64::try_from(round_trip.as_millis()).unwrap_or(i64::MAX);
        let groups = group_by_collection(messages);
        let call_size = groups.iter().map(|g| g.count).sum::<u64>();
        for group in &groups {
            let plan = SpanPlan::acknowledged(group, call_size, acked_ms, sent_ms);
            self.emit(plan, None);
        }
    }

    /// Records the spans of a script call given up on after `retries`:
    /// status error, `error.type` from `error_type`, ending now.
    pub fn failed<'a>(
        &self,
        messages: impl IntoIterator<Item = TracedMessage<'a>>,
        failed_ms: i64,
        error_type: &'static str,
        description: String,
    ) {
        let groups = group_by_collection(messages);
        let call_size = groups.iter().map(|g| g.count).sum::<u64>();
        for group in &groups {
            let mut plan = SpanPlan::acknowledged(group, call_size, failed_ms, failed_ms);
            // Nothing was acknowledged, so there is no latency to report.
            plan.attributes
                .retain(|kv| !kv.key.as_str().starts_with("redtail.latency."));
            plan.attributes
                .push(KeyValue::new("error.type", error_type));
            self.emit(plan, Some(description.clone()));
        }
    }

    fn emit(&self, plan: SpanPlan, error: Option<String>) {
        let mut attributes = plan.attributes;
        attributes.extend(self.server.iter().cloned());
        let builder = SpanBuilder::from_name(plan.name)
            .with_kind(SpanKind::Producer)
            .with_start_time(millis_to_time(plan.start_ms))
            .with_attributes(attributes);
        // An explicit empty parent: these spans start traces, whatever
        // context happens to be current on this task.
        let mut span = self.tracer.build_with_context(builder, &Context::new());
        if let Some(description) = error {
            opentelemetry::trace::Span::set_status(&mut span, Status::error(description));
        }
        opentelemetry::trace::Span::end_with_timestamp(&mut span, millis_to_time(plan.end_ms));
    }
}

/// The changes of one collection within a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionGroup<'a> {
    /// `<db>.<coll>`.
    pub namespace: &'a str,
    /// Changes in the call for this collection.
    pub count: u64,
    /// How many of them were duplicates.
    pub duplicates: u64,
    /// Oldest wall time of any change (the span's start).
    pub oldest_wall_ms: Option<i64>,
    /// Oldest and newest wall time of the published (non-duplicate) changes:
    /// the latency figures, like the Prometheus histogram's.
    pub published_wall_ms: Option<(i64, i64)>,
    /// The identity of the first change, reported when it is the only one.
    pub first_id: (u64, u32),
}

/// Groups a call's changes by collection, in order of first appearance. A
/// call holds at most `batch_size` changes of a handful of collections, so a
/// linear search beats hashing.
pub fn group_by_collection<'a>(
    messages: impl IntoIterator<Item = TracedMessage<'a>>,
) -> Vec<CollectionGroup<'a>> {
    let mut groups: Vec<CollectionGroup<'a>> = Vec::new();
    for message in messages {
        let index = match groups.iter().position(|g| g.namespace == message.namespace) {
            Some(index) => index,
            None => {
                groups.push(CollectionGroup {
                    namespace: message.namespace,
                    count: 0,
                    duplicates: 0,
                    oldest_wall_ms: None,
                    published_wall_ms: None,
                    first_id: message.id,
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        group.count += 1;
        if message.duplicate {
            group.duplicates += 1;
        }
        if let Some(wall) = message.wall_ms {
            group.oldest_wall_ms = Some(group.oldest_wall_ms.map_or(wall, |w| w.min(wall)));
            if !message.duplicate {
                group.published_wall_ms = Some(
                    group
                        .published_wall_ms
                        .map_or((wall, wall), |(lo, hi)| (lo.min(wall), hi.max(wall))),
                );
            }
        }
    }
    groups
}

/// A span to emit, decided without touching the SDK.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanPlan {
    /// `publish <db>.<coll>`.
    pub name: String,
    /// Start: the oldest wall time, else when the call was sent; never after
    /// the end (clock skew between MongoDB's primary and this host).
    pub start_ms: i64,
    /// End: Redis's acknowledgement.
    pub end_ms: i64,
    /// The semantic-convention and redtail attributes.
    pub attributes: Vec<KeyValue>,
}

impl SpanPlan {
    /// The span of `group`, part of a call of `call_size` changes sent at
    /// `sent_ms` and acknowledged at `acked_ms`.
    pub fn acknowledged(
        group: &CollectionGroup<'_>,
        call_size: u64,
        acked_ms: i64,
        sent_ms: i64,
    ) -> Self {
        let count = i64::try_from(group.count).unwrap_or(i64::MAX);
        let mut attributes = vec![
            KeyValue::new("messaging.system", "redis"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", group.namespace.to_owned()),
            KeyValue::new(
                "messaging.destination.template",
                format!("{}::{{id}}", group.namespace),
            ),
            KeyValue::new("messaging.batch.message_count", count),
            KeyValue::new(
                "redtail.call.message_count",
                i64::try_from(call_size).unwrap_or(i64::MAX),
            ),
            KeyValue::new(
                "redtail.duplicate_count",
                i64::try_from(group.duplicates).unwrap_or(i64::MAX),
            ),
        ];
        if group.count == 1 {
            let (ts, tx_index) = group.first_id;
            attributes.push(KeyValue::new(
                "messaging.message.id",
                format!("{ts}:{tx_index}"),
            ));
        }
        if let Some((oldest, newest)) = group.published_wall_ms {
            attributes.push(KeyValue::new(
                "redtail.latency.max_ms",
                latency_ms(acked_ms, oldest),
            ));
            attributes.push(KeyValue::new(
                "redtail.latency.min_ms",
                latency_ms(acked_ms, newest),
            ));
        }
        let start_ms = group.oldest_wall_ms.unwrap_or(sent_ms).min(acked_ms);
        Self {
            name: format!("publish {}", group.namespace),
            start_ms,
            end_ms: acked_ms,
            attributes,
        }
    }
}

/// `acked − wall`, clamped at 0: a primary whose clock runs ahead must not
/// yield negative latencies (the Prometheus histogram clamps the same way).
pub fn latency_ms(acked_ms: i64, wall_ms: i64) -> i64 {
    acked_ms.saturating_sub(wall_ms).max(0)
}

fn millis_to_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn export_is_on_only_with_an_endpoint() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let traces_endpoint = (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces",
        );
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")], false),
            (&[endpoint], true),
            (&[traces_endpoint], true),
            (&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")], false),
            (&[endpoint, ("OTEL_SDK_DISABLED", "false")], true),
            (&[endpoint, ("OTEL_TRACES_EXPORTER", "none")], false),
            (&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")], true),
            (&[("OTEL_SERVICE_NAME", "relay")], false),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
                true,
            ),
        ];
        for (pairs, on) in cases {
            let got = TraceExport::from_env(env(pairs)).unwrap();
            assert_eq!(got == TraceExport::Otlp, *on, "{pairs:?} gave {got:?}");
        }
    }

    #[test]
    fn unsupported_choices_are_errors_naming_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                &[
                    endpoint,
                    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                &[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
                "OTEL_TRACES_EXPORTER",
            ),
        ];
        for (pairs, variable) in cases {
            let err = TraceExport::from_env(env(pairs)).expect_err("unsupported");
            assert!(err.to_string().contains(variable), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn service_name_defaults_only_when_unnamed() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[], false),
            (&[("OTEL_SERVICE_NAME", "relay-eu")], true),
            (&[("OTEL_SERVICE_NAME", "")], false),
            (&[("OTEL_RESOURCE_ATTRIBUTES", "a=b, service.name=x")], true),
            (
                &[("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=x")],
                false,
            ),
        ];
        for (pairs, named) in cases {
            assert_eq!(service_named(env(pairs)), *named, "{pairs:?}");
        }
    }

    fn message(namespace: &str, wall_ms: Option<i64>, duplicate: bool) -> TracedMessage<'_> {
        TracedMessage {
            namespace,
            wall_ms,
            duplicate,
            id: (u64::try_from(wall_ms.unwrap_or(0)).unwrap(), 0),
        }
    }

    #[test]
    fn changes_are_grouped_per_collection_in_order() {
        let messages = [
            message("app.b", Some(1_000), false),
            message("app.a", Some(900), false),
            message("app.b", Some(800), true),
            message("app.b", Some(1_200), false),
            message("app.a", None, false),
        ];
        let groups = group_by_collection(messages);
        let summary: Vec<_> = groups
            .iter()
            .map(|g| {
                (
                    g.namespace,
                    g.count,
                    g.duplicates,
                    g.oldest_wall_ms,
                    g.published_wall_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("app.b", 3, 1, Some(800), Some((1_000, 1_200))),
                ("app.a", 2, 0, Some(900), Some((900, 900))),
            ]
        );
    }

    fn attribute(plan: &SpanPlan, key: &str) -> Option<opentelemetry::Value> {
        plan.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn span_plans_follow_the_messaging_conventions() {
        let groups = group_by_collection([
            message("app.items", Some(10_000), false),
            message("app.items", Some(10_400), false),
        ]);
        let plan = SpanPlan::acknowledged(&groups[0], 5, 12_000, 11_990);
        assert_eq!(plan.name, "publish app.items");
        assert_eq!((plan.start_ms, plan.end_ms), (10_000, 12_000));
        let expect: &[(&str, opentelemetry::Value)] = &[
            ("messaging.system", "redis".into()),
            ("messaging.operation.name", "publish".into()),
            ("messaging.operation.type", "send".into()),
            ("messaging.destination.name", "app.items".into()),
            ("messaging.destination.template", "app.items::{id}".into()),
            ("messaging.batch.message_count", 2i64.into()),
            ("redtail.call.message_count", 5i64.into()),
            ("redtail.latency.max_ms", 2_000i64.into()),
            ("redtail.latency.min_ms", 1_600i64.into()),
        ];
        for (key, value) in expect {
            assert_eq!(attribute(&plan, key).as_ref(), Some(value), "{key}");
        }
        assert_eq!(attribute(&plan, "messaging.message.id"), None);
    }

    #[test]
    fn span_plan_edge_cases() {
        // (wall times, duplicate, acked, sent) -> (start, max latency, message id)
        type Case = (
            &'static [Option<i64>],
            bool,
            i64,
            i64,
            i64,
            Option<i64>,
            bool,
        );
        let cases: &[Case] = &[
            // No wall time: the span covers the round trip, no latency.
            (&[None], false, 5_000, 4_990, 4_990, None, true),
            // The primary's clock is ahead: clamped at 0, start not after end.
            (&[Some(6_000)], false, 5_000, 4_990, 5_000, Some(0), true),
            // Duplicates start the span but report no latency.
            (&[Some(1_000)], true, 5_000, 4_990, 1_000, None, true),
            (
                &[Some(1_000), Some(2_000)],
                false,
                5_000,
                4_990,
                1_000,
                Some(4_000),
                false,
            ),
        ];
        for (walls, duplicate, acked, sent, start, max_latency, single) in cases {
            let messages: Vec<_> = walls
                .iter()
                .map(|wall| message("db.c", *wall, *duplicate))
                .collect();
            let groups = group_by_collection(messages);
            let plan = SpanPlan::acknowledged(&groups[0], 1, *acked, *sent);
            assert_eq!(plan.start_ms, *start, "{walls:?}");
            assert_eq!(
                attribute(&plan, "redtail.latency.max_ms"),
                max_latency.map(opentelemetry::Value::from),
                "{walls:?}"
            );
            assert_eq!(
                attribute(&plan, "messaging.message.id").is_some(),
                *single,
                "{walls:?}"
            );
        }
    }

    #[test]
    fn server_attributes_come_from_the_redacted_url() {
        let provider = SdkTracerProvider::builder().build();
        let tracer = PublishTracer::from_provider(&provider);
        let cases = [
            (
                "redis://:***@cache.internal:6380/0",
                Some("cache.internal"),
                Some(6380),
            ),
            ("rediss://cache", Some("cache"), Some(6379)),
            ("not a url", None, None),
        ];
        for (url, host, port) in cases {
            let server = tracer.for_destination(url).server;
            let find = |key: &str| {
                server
                    .iter()
                    .find(|kv| kv.key.as_str() == key)
                    .map(|kv| kv.value.clone())
            };
            assert_eq!(
                find("server.address"),
                host.map(|h| h.to_owned().into()),
                "{url}"
            );
            assert_eq!(
                find("server.port"),
                port.map(opentelemetry::Value::from),
                "{url}"
            );
        }
    }
}
