//! The HTTP surface, served in-process on a free loopback port, with the
//! denylist backed by a real `redis-server`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::BoxFuture;
use redtail::config::Secret;
use redtail::denylist::Denylist;
use redtail::http::{self, HealthProbe, HttpState};
use redtail::telemetry::metrics::Metrics;
use reqwest::{Method, StatusCode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::redis_server::RedisServer;

const PREFIX: &str = "oplogtoredis::";

/// Probes with fixed answers.
struct FixedProbe {
    mongo: bool,
    redis: bool,
}

impl HealthProbe for FixedProbe {
    fn mongo_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.mongo })
    }
    fn redis_ok(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.redis })
    }
}

/// A running server; stopped (and awaited) on [`Server::stop`].
struct Server {
    base: String,
    ready: Arc<AtomicBool>,
    metrics: Metrics,
    denylist: Denylist,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), http::HttpError>>,
    client: reqwest::Client,
}

impl Server {
    async fn start(
        denylist: Denylist,
        metrics: Metrics,
        probe: FixedProbe,
        token: Option<&str>,
    ) -> Result<Self> {
        let listener = http::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let ready = Arc::new(AtomicBool::new(false));
        let state = HttpState {
            metrics: metrics.clone(),
            denylist: denylist.clone(),
            health: Arc::new(probe),
            ready: Arc::clone(&ready),
            admin_token: token.map(Secret::new),
            status: None,
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(http::serve_on(listener, state, shutdown.clone()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            base: format!("http://{addr}"),
            ready,
            metrics,
            denylist,
            shutdown,
            task,
            client,
        })
    }

    async fn request(&self, method: Method, path: &str) -> Result<(StatusCode, String)> {
        self.request_with(method, path, None).await
    }

    async fn request_with(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<(StatusCode, String)> {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok((status, response.text().await?))
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task).await???;
        Ok(())
    }
}

async fn redis_denylist(redis: &RedisServer, metrics: &Metrics) -> Result<Denylist> {
    let client = redis::Client::open(redis.url())?;
    Ok(Denylist::connect(client, PREFIX, metrics.clone()).await?)
}

async fn healthy_server(redis: &RedisServer, token: Option<&str>) -> Result<Server> {
    let metrics = Metrics::new();
    let denylist = redis_denylist(redis, &metrics).await?;
    Server::start(
        denylist,
        metrics,
        FixedProbe {
            mongo: true,
            redis: true,
        },
        token,
    )
    .await
}

fn stored_denylist(redis: &RedisServer) -> Result<Vec<String>> {
    let mut members: Vec<String> = redis.command(&["SMEMBERS", "oplogtoredis::denylist"])?;
    members.sort();
    Ok(members)
}

/// Polls `condition` every 20ms for at most `timeout`.
async fn eventually(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    condition()
}

#[tokio::test]
async fn denylist_api_follows_oplogtoredis_status_codes() -> Result<()> {
    let redis = RedisServer::start()?;
    let server = healthy_server(&redis, None).await?;
    let steps: &[(Method, &str, StatusCode, Option<&str>)] = &[
        (Method::GET, "/denylist", StatusCode::OK, Some("[]")),
        (Method::GET, "/denylist/foo", StatusCode::NOT_FOUND, None),
        (Method::PUT, "/denylist/foo", StatusCode::CREATED, None),
        (Method::PUT, "/denylist/foo", StatusCode::NO_CONTENT, None),
        (Method::PUT, "/denylist/bar", StatusCode::CREATED, None),
        (
            Method::GET,
            "/denylist/foo",
            StatusCode::OK,
            Some(r#""foo""#),
        ),
        (
            Method::GET,
            "/denylist",
            StatusCode::OK,
            Some(r#"["bar","foo"]"#),
        ),
        (Method::GET, "/denylist/foo/x", StatusCode::NOT_FOUND, None),
        (Method::PUT, "/denylist/foo/x", StatusCode::NOT_FOUND, None),
        (Method::PUT, "/denylist/a%2Fb", StatusCode::NOT_FOUND, None),
        (Method::POST, "/denylist/foo", StatusCode::NOT_FOUND, None),
        (Method::POST, "/denylist", StatusCode::NOT_FOUND, None),
        (Method::PATCH, "/denylist/foo", StatusCode::NOT_FOUND, None),
        (
            Method::DELETE,
            "/denylist/foo",
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            Method::DELETE,
            "/denylist/foo",
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            Method::DELETE,
            "/denylist/never-there",
            StatusCode::NO_CONTENT,
            None,
        ),
        (Method::GET, "/denylist/foo", StatusCode::NOT_FOUND, None),
        (Method::GET, "/denylist", StatusCode::OK, Some(r#"["bar"]"#)),
        (Method::GET, "/nowhere", StatusCode::NOT_FOUND, None),
    ];
    for (method, path, status, body) in steps {
        let (got_status, got_body) = server.request(method.clone(), path).await?;
        assert_eq!(got_status, *status, "{method} {path}: {got_body}");
        if let Some(body) = body {
            assert_eq!(got_body, *body, "{method} {path}");
        }
    }
    assert_eq!(stored_denylist(&redis)?, ["bar"]);
    assert!(server.denylist.is_denied("bar") && !server.denylist.is_denied("foo"));
    let metrics = server.metrics.render();
    assert!(
        metrics.contains(r#"otr_denylist_filter_enabled{db="bar"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"otr_denylist_filter_enabled{db="foo"} 0"#),
        "{metrics}"
    );
    server.stop().await
}

#[tokio::test]
async fn denylist_survives_a_restart() -> Result<()> {
    let redis = RedisServer::start()?;
    let server = healthy_server(&redis, None).await?;
    assert_eq!(
        server.request(Method::PUT, "/denylist/kept").await?.0,
        StatusCode::CREATED
    );
    server.stop().await?;

    // A new process: a new Denylist and server on the same Redis.
    let server = healthy_server(&redis, None).await?;
    assert!(server.denylist.is_denied("kept"));
    assert_eq!(
        server.request(Method::GET, "/denylist/kept").await?,
        (StatusCode::OK, r#""kept""#.to_owned())
    );
    server.stop().await
}

#[tokio::test]
async fn changes_reach_other_instances_by_notification() -> Result<()> {
    let redis = RedisServer::start()?;
    let metrics = Metrics::new();
    let client = redis::Client::open(redis.url())?;
    let writer = Denylist::connect(client.clone(), PREFIX, metrics.clone()).await?;
    // A refresh period far beyond the test: only the notification can explain a change.
    let reader =
        Denylist::connect_with_interval(client, PREFIX, Metrics::new(), Duration::from_secs(3600))
            .await?;
    let shutdown = CancellationToken::new();
    let sync = tokio::spawn(reader.clone().run_sync(shutdown.clone()));
    let subscribed = eventually(Duration::from_secs(5), || {
        let reply: Vec<redis::Value> = redis
            .command(&["PUBSUB", "NUMSUB", "oplogtoredis::denylist-changed"])
            .unwrap_or_default();
        matches!(reply.get(1), Some(redis::Value::Int(n)) if *n >= 1)
    })
    .await;
    assert!(subscribed, "the reader never subscribed");
    assert!(writer.add("shared").await?);
    assert!(
        eventually(Duration::from_secs(5), || reader.is_denied("shared")).await,
        "add did not propagate"
    );
    assert!(writer.remove("shared").await?);
    assert!(
        eventually(Duration::from_secs(5), || !reader.is_denied("shared")).await,
        "remove did not propagate"
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), sync).await??;
    Ok(())
}

#[tokio::test]
async fn periodic_refresh_catches_unannounced_changes() -> Result<()> {
    let redis = RedisServer::start()?;
    let client = redis::Client::open(redis.url())?;
    let reader =
        Denylist::connect_with_interval(client, PREFIX, Metrics::new(), Duration::from_millis(200))
            .await?;
    let shutdown = CancellationToken::new();
    let sync = tokio::spawn(reader.clone().run_sync(shutdown.clone()));
    // Written behind redtail's back, without a notification.
    let _: i64 = redis.command(&["SADD", "oplogtoredis::denylist", "quiet"])?;
    assert!(eventually(Duration::from_secs(5), || reader.is_denied("quiet")).await);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), sync).await??;
    Ok(())
}

#[tokio::test]
async fn persistence_failure_is_500_and_the_change_is_kept_and_stored_later() -> Result<()> {
    let mut redis = RedisServer::start()?;
    let server = healthy_server(&redis, None).await?;
    redis.stop();
    let (status, body) = server.request(Method::PUT, "/denylist/offline").await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        server.denylist.is_denied("offline"),
        "the in-memory change must be kept"
    );
    assert_eq!(
        server.request(Method::GET, "/denylist/offline").await?.0,
        StatusCode::OK
    );

    // Redis comes back empty (it was killed): the pending change is written at
    // the next refresh instead of being lost.
    redis.restart()?;
    let mut refreshed = false;
    for _ in 0..50 {
        if server.denylist.refresh().await.is_ok() {
            refreshed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refreshed, "refresh never succeeded after Redis restarted");
    assert_eq!(stored_denylist(&redis)?, ["offline"]);
    assert!(server.denylist.is_denied("offline"));
    server.stop().await
}

#[tokio::test]
async fn admin_token_guards_changes_but_not_reads() -> Result<()> {
    let redis = RedisServer::start()?;
    let server = healthy_server(&redis, Some("t0ken")).await?;
    let steps: &[(Method, &str, Option<&str>, StatusCode)] = &[
        (Method::PUT, "/denylist/db1", None, StatusCode::FORBIDDEN),
        (
            Method::PUT,
            "/denylist/db1",
            Some("wrong"),
            StatusCode::FORBIDDEN,
        ),
        (Method::GET, "/denylist/db1", None, StatusCode::NOT_FOUND),
        (
            Method::PUT,
            "/denylist/db1",
            Some("t0ken"),
            StatusCode::CREATED,
        ),
        (Method::GET, "/denylist/db1", None, StatusCode::OK),
        (Method::GET, "/denylist", None, StatusCode::OK),
        (Method::DELETE, "/denylist/db1", None, StatusCode::FORBIDDEN),
        (
            Method::DELETE,
            "/denylist/db1",
            Some("t0ke"),
            StatusCode::FORBIDDEN,
        ),
        (Method::GET, "/denylist/db1", None, StatusCode::OK),
        (
            Method::DELETE,
            "/denylist/db1",
            Some("t0ken"),
            StatusCode::NO_CONTENT,
        ),
        (Method::GET, "/denylist/db1", None, StatusCode::NOT_FOUND),
    ];
    for (method, path, bearer, status) in steps {
        let (got, body) = server.request_with(method.clone(), path, *bearer).await?;
        assert_eq!(got, *status, "{method} {path} {bearer:?}: {body}");
    }
    assert!(stored_denylist(&redis)?.is_empty());
    server.stop().await
}

#[tokio::test]
async fn healthz_reports_both_probes() -> Result<()> {
    let redis = RedisServer::start()?;
    let cases = [
        (
            true,
            true,
            StatusCode::OK,
            r#"{"mongoOK":true,"redisOK":true}"#,
        ),
        (
            true,
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"mongoOK":true,"redisOK":false}"#,
        ),
        (
            false,
            true,
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"mongoOK":false,"redisOK":true}"#,
        ),
        (
            false,
            false,
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"mongoOK":false,"redisOK":false}"#,
        ),
    ];
    for (mongo, redis_ok, status, body) in cases {
        let metrics = Metrics::new();
        let denylist = redis_denylist(&redis, &metrics).await?;
        let server = Server::start(
            denylist,
            metrics,
            FixedProbe {
                mongo,
                redis: redis_ok,
            },
            None,
        )
        .await?;
        for method in [Method::GET, Method::POST, Method::HEAD] {
            let (got_status, got_body) = server.request(method.clone(), "/healthz").await?;
            assert_eq!(
                got_status, status,
                "{method} mongo={mongo} redis={redis_ok}"
            );
            if method != Method::HEAD {
                assert_eq!(got_body, body);
            }
        }
        server.stop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn readyz_follows_the_pipeline_flag() -> Result<()> {
    let redis = RedisServer::start()?;
    let server = healthy_server(&redis, None).await?;
    assert_eq!(
        server.request(Method::GET, "/readyz").await?.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.ready.store(true, Ordering::Release);
    assert_eq!(
        server.request(Method::GET, "/readyz").await?.0,
        StatusCode::OK
    );
    server.ready.store(false, Ordering::Release);
    assert_eq!(
        server.request(Method::GET, "/readyz").await?.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    server.stop().await
}

#[tokio::test]
async fn metrics_are_prometheus_text() -> Result<()> {
    let redis = RedisServer::start()?;
    let server = healthy_server(&redis, None).await?;
    server
        .metrics
        .processed_messages
        .with_label_values(&["sent"])
        .inc_by(3);
    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()?
        .to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let text = response.text().await?;
    assert!(
        text.contains("# TYPE otr_redispub_processed_messages counter"),
        "{text}"
    );
    assert!(
        text.contains(r#"otr_redispub_processed_messages{status="sent"} 3"#),
        "{text}"
    );
    server.stop().await
}

#[tokio::test]
async fn bind_fails_at_start_for_a_busy_or_bad_address() -> Result<()> {
    let taken = http::bind("127.0.0.1:0").await?;
    let busy = taken.local_addr()?.to_string();
    for addr in [busy.as_str(), "203.0.113.7:9000"] {
        let err = http::bind(addr).await.expect_err(addr);
        assert!(err.to_string().contains(addr), "{err}");
        assert!(err.to_string().contains("OTR_HTTP_SERVER_ADDR"), "{err}");
    }
    Ok(())
}
