//! A real `redis-server` per test on a free loopback port, killed on drop
//! (the workspace's `redis-test-server`), and a pub/sub recorder.
//!
//! Every wait is bounded: a server that does not come up or messages that do
//! not arrive fail the test instead of hanging it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use futures_util::StreamExt;
use tokio::time::Instant;

/// A running `redis-server` without persistence, killed on drop: the shared
/// harness's server plus the async `redis` clients these tests use.
pub struct RedisServer {
    inner: redis_test_server::RedisServer,
}

impl RedisServer {
    /// Starts a server, retrying on a port collision, and waits for `PING`.
    pub async fn start() -> Result<Self> {
        // Starting polls with short sleeps: keep them off the runtime's threads.
        let inner = tokio::task::spawn_blocking(redis_test_server::RedisServer::start).await??;
        Ok(Self { inner })
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.inner.url()).expect("a valid URL")
    }

    /// A multiplexed connection with a reply timeout.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        Ok(self
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        Ok(self.inner.pause()?)
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        Ok(self.inner.resume()?)
    }
}

/// Records every `(channel, message)` published on the server, in Redis's
/// delivery order, from the moment [`Recorder::start`] returns.
pub struct Recorder {
    received: Arc<Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// `PSUBSCRIBE *` on `server`.
    pub async fn start(server: &RedisServer) -> Result<Self> {
        let mut pubsub = server.client().get_async_pubsub().await?;
        pubsub.psubscribe("*").await?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(message) = stream.next().await {
                let payload: String = message.get_payload().unwrap_or_default();
                sink.lock()
                    .unwrap()
                    .push((message.get_channel_name().to_string(), payload));
            }
        });
        Ok(Self { received, task })
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }

    /// The messages received on `channel`.
    pub fn on(&self, channel: &str) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|(c, _)| c == channel)
            .map(|(_, m)| m)
            .collect()
    }

    /// Waits until `done` holds for what arrived, or `timeout`; returns
    /// whether it held (the caller asserts).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[(String, String)]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.messages()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` every 10 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
