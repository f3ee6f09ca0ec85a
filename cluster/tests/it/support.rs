//! A real `redis-server` per test on a free loopback port, killed on drop,
//! and a pub/sub recorder. Adapted from redtail's own tests/it/support.
//!
//! Every wait is bounded: a server that does not come up or messages that do
//! not arrive fail the test instead of hanging it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::time::Instant;

const START_TIMEOUT: Duration = Duration::from_secs(10);
const PORT_ATTEMPTS: usize = 5;

/// A running `redis-server` without persistence.
pub struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    /// Starts a server, retrying on a port collision, and waits for `PING`.
    pub async fn start() -> Result<Self> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning redis-server (is it installed?)")?;
            let mut server = Self { port, child };
            match server.wait_for_ping().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    async fn wait_for_ping(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited ({status}) on port {}", self.port);
            }
            if let Ok(mut conn) = self.connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok_and(|p| p == "PONG") {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "redis-server on port {} not ready within {START_TIMEOUT:?}",
            self.port
        )
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port)).expect("a valid URL")
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
}

impl RedisServer {
    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) -> Result<()> {
        self.signal("-STOP")
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
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
