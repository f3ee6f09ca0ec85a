//! OpenTelemetry spans of the publish stage, captured with the SDK's
//! in-memory exporter while the real publisher talks to a real `redis-server`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use redtail::position::OplogPosition;
use redtail::publish::{PublishBatch, Publisher, PublisherSettings};
use redtail::telemetry::metrics::Metrics;
use redtail::telemetry::traces::PublishTracer;
use redtail::transform::Publication;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::redis_server::{RedisServer, Subscriber};
use crate::support::relay::Relay;

const WAIT: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A change of `namespace` written `age_ms` ago by the primary's clock.
fn publication(namespace: &str, i: u32, age_ms: i64) -> Publication {
    let wall_ms = now_ms() - age_ms;
    let id = format!("doc{i}");
    Publication {
        channels: vec![namespace.to_owned(), format!("{namespace}::{id}")],
        message: format!(r#"{{"e":"i","d":{{"_id":"{id}"}},"f":["_id"]}}"#),
        origin: OplogPosition::new((wall_ms / 1000) as u32, i),
        tx_index: 0,
        wall_ms: Some(wall_ms),
        namespace: namespace.to_owned(),
    }
}

fn settings(url: String) -> PublisherSettings {
    PublisherSettings {
        redis_urls: vec![url],
        batch_size: 10,
        flush_interval: Duration::from_millis(200),
        max_outage: Duration::from_secs(15),
        response_timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..PublisherSettings::default()
    }
}

/// A provider exporting synchronously to memory, so spans are there as soon
/// as they end.
fn capture() -> (SdkTracerProvider, InMemorySpanExporter) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    (provider, exporter)
}

/// Publishes `batch` through a publisher traced by `provider`, then drains it.
async fn publish_one_batch(
    settings: PublisherSettings,
    provider: &SdkTracerProvider,
    metrics: &Metrics,
    batch: PublishBatch,
) -> Result<()> {
    let tracer = PublishTracer::from_provider(provider);
    let publisher = Publisher::with_tracer(settings, metrics.clone(), Some(tracer))?;
    let (input, receiver) = mpsc::channel(10);
    input.send(batch).await?;
    drop(input);
    tokio::time::timeout(
        Duration::from_secs(30),
        publisher.run(receiver, CancellationToken::new()),
    )
    .await
    .context("the publisher drains and stops")?;
    provider.force_flush()?;
    Ok(())
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::from(key.to_owned()))
        .map(|kv| kv.value.clone())
}

fn int(span: &SpanData, key: &str) -> i64 {
    match attribute(span, key) {
        Some(Value::I64(n)) => n,
        other => panic!("{key} on {:?} is {other:?}", span.name),
    }
}

fn text(span: &SpanData, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::String(s)) => s.to_string(),
        other => panic!("{key} on {:?} is {other:?}", span.name),
    }
}

fn span_named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}: {:?}", names(spans)))
}

fn names(spans: &[SpanData]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_ref()).collect()
}

fn millis_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn a_script_call_becomes_one_producer_span_per_collection() -> Result<()> {
    let redis = RedisServer::start()?;
    let subscriber = Subscriber::all(&redis)?;
    let before_ms = now_ms();
    // The oldest change was already published by a peer: it starts the span
    // but, like in the histogram, does not count as latency.
    let duplicate = publication("app.items", 1, 3_000);
    let items = [
        publication("app.items", 2, 1_500),
        publication("app.items", 3, 1_000),
    ];
    let other = publication("app.other", 4, 700);
    redis.command::<()>(&[
        "SET",
        &format!("oplogtoredis::processed::{}::0", duplicate.origin),
        "1",
    ])?;
    let publications = vec![
        duplicate.clone(),
        items[0].clone(),
        items[1].clone(),
        other.clone(),
    ];
    let batch = PublishBatch {
        resume_position: Some(other.origin),
        publications,
    };
    let (provider, exporter) = capture();
    let metrics = Metrics::new();

    publish_one_batch(settings(redis.url()), &provider, &metrics, batch).await?;
    let after_ms = now_ms();
    assert_eq!(
        subscriber.wait_for(6, WAIT).await.len(),
        6,
        "3 changes, 2 channels each"
    );

    let spans = exporter.get_finished_spans()?;
    assert_eq!(names(&spans), ["publish app.items", "publish app.other"]);
    let span = span_named(&spans, "publish app.items");
    assert_eq!(span.span_kind, SpanKind::Producer);
    assert_eq!(span.status, Status::Unset);
    assert_eq!(span.parent_span_id, opentelemetry::trace::SpanId::INVALID);
    let expected_text = [
        ("messaging.system", "redis"),
        ("messaging.operation.name", "publish"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "app.items"),
        ("messaging.destination.template", "app.items::{id}"),
        ("server.address", "127.0.0.1"),
    ];
    for (key, value) in expected_text {
        assert_eq!(text(span, key), value, "{key}");
    }
    assert_eq!(int(span, "server.port"), i64::from(redis.port()));
    assert_eq!(int(span, "messaging.batch.message_count"), 3);
    assert_eq!(int(span, "redtail.call.message_count"), 4);
    assert_eq!(int(span, "redtail.duplicate_count"), 1);
    assert_eq!(
        attribute(span, "messaging.message.id"),
        None,
        "a batch of 3"
    );

    // The injected delays are lower bounds; the upper bound is the test's own time.
    let slack = after_ms - before_ms;
    let (max, min) = (
        int(span, "redtail.latency.max_ms"),
        int(span, "redtail.latency.min_ms"),
    );
    assert!(
        (1_500..=1_500 + slack).contains(&max),
        "max {max} (slack {slack})"
    );
    assert!(
        (1_000..=1_000 + slack).contains(&min),
        "min {min} (slack {slack})"
    );
    // The span runs from the oldest change's wall time to the acknowledgement.
    assert_eq!(
        millis_since_epoch(span.start_time),
        duplicate.wall_ms.unwrap()
    );
    let end_ms = millis_since_epoch(span.end_time);
    assert!(
        (before_ms..=after_ms).contains(&end_ms),
        "ended at {end_ms}"
    );
    assert_eq!(
        end_ms - items[0].wall_ms.unwrap(),
        max,
        "latency = ack - wall"
    );

    let single = span_named(&spans, "publish app.other");
    assert_eq!(int(single, "messaging.batch.message_count"), 1);
    assert_eq!(
        text(single, "messaging.message.id"),
        format!("{}:0", other.origin.as_u64())
    );
    let latency = int(single, "redtail.latency.max_ms");
    assert!(latency >= 700, "{latency}");
    assert_eq!(int(single, "redtail.latency.min_ms"), latency);

    // The Prometheus histogram saw the very same figures.
    let histogram = &metrics.end_to_end_latency;
    assert_eq!(histogram.get_sample_count(), 3);
    let from_spans = (max + min + latency) as f64 / 1000.0;
    let sum = histogram.get_sample_sum();
    assert!(
        (sum - from_spans).abs() < 1e-6,
        "histogram {sum} vs spans {from_spans}"
    );
    Ok(())
}

#[tokio::test]
async fn a_call_given_up_on_ends_its_span_with_an_error() -> Result<()> {
    let mut redis = RedisServer::start()?;
    let url = redis.url();
    redis.stop();
    let mut s = settings(url);
    s.max_outage = Duration::from_millis(400);
    s.connect_timeout = Duration::from_millis(100);
    s.response_timeout = Duration::from_millis(100);
    let lost = publication("app.items", 1, 50);
    let batch = PublishBatch {
        resume_position: Some(lost.origin),
        publications: vec![lost],
    };
    let (provider, exporter) = capture();
    let metrics = Metrics::new();

    publish_one_batch(s, &provider, &metrics, batch).await?;

    assert_eq!(
        metrics
            .processed_messages
            .with_label_values(&["failed"])
            .get(),
        1
    );
    let spans = exporter.get_finished_spans()?;
    assert_eq!(names(&spans), ["publish app.items"]);
    let span = &spans[0];
    assert!(
        matches!(&span.status, Status::Error { description } if description.contains("127.0.0.1")),
        "{:?}",
        span.status
    );
    assert!(
        ["timeout", "redis_error"].contains(&text(span, "error.type").as_str()),
        "{}",
        text(span, "error.type")
    );
    assert_eq!(
        attribute(span, "redtail.latency.max_ms"),
        None,
        "nothing was acknowledged"
    );
    assert_eq!(metrics.end_to_end_latency.get_sample_count(), 0);
    Ok(())
}

/// What the collector received: path, content type, body.
type Received = Vec<(String, String, Vec<u8>)>;

/// A minimal OTLP/HTTP collector: records every request's path, content type
/// and body, answers 200. Enough to see what the real binary exports.
struct OtlpCollector {
    port: u16,
    requests: Arc<Mutex<Received>>,
}

impl OtlpCollector {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(64).flatten() {
                let sink = Arc::clone(&sink);
                std::thread::spawn(move || serve_connection(stream, &sink));
            }
        });
        Ok(Self { port, requests })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Received {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves keep-alive requests on one connection until it closes (bounded).
fn serve_connection(stream: TcpStream, sink: &Mutex<Received>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for _ in 0..64 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().unwrap().push((path, content_type, body));
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_spans_over_otlp_and_flushes_them_on_shutdown() -> Result<()> {
    let collector = OtlpCollector::start()?;
    let endpoint = collector.endpoint();
    // A one-minute export delay: spans can only arrive through the flush on shutdown.
    let mut relay = Relay::start(
        "otlp",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "redtail-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ],
    )
    .await;
    relay
        .collection("Traced")
        .insert_one(bson::doc! { "_id": "t1", "n": 1 })
        .await?;
    assert_eq!(relay.wait_for(2).await.len(), 2, "published");
    assert!(
        collector.requests().is_empty(),
        "nothing exported before shutdown"
    );

    relay.redtail.signal("TERM");
    let status = relay.redtail.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        relay.redtail.logs()
    );
    let requests = collector.requests();
    let (path, content_type, body) = requests
        .iter()
        .find(|(path, ..)| path == "/v1/traces")
        .with_context(|| format!("no export: {requests:?}\n{}", relay.redtail.logs()))?;
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    let span_name = format!("publish {}", relay.channel("Traced"));
    for needle in [
        span_name.as_str(),
        "redtail-under-test",
        "messaging.destination.template",
        "redtail.latency.max_ms",
    ] {
        assert!(contains(body, needle), "{needle} missing from the export");
    }
    Ok(())
}
