//! The suite's real `redis-server`: no persistence, on a free loopback port,
//! restartable on the same port so the "Redis lost its data" scenario looks
//! to redtail like a crashed and recreated server.

use anyhow::Result;

/// A running `redis-server`, killed on drop (the workspace's shared
/// `redis-test-server`, named for what the scenarios do with it).
pub struct RedisServer {
    inner: redis_test_server::RedisServer,
}

impl RedisServer {
    /// Starts a server without persistence (`save ""`, no AOF).
    pub fn start() -> Result<Self> {
        let inner = redis_test_server::RedisServer::start()?;
        Ok(Self { inner })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// `redis://127.0.0.1:<port>`, the direct (unproxied) URL.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// Kills the server (SIGKILL) and starts an empty one on the same port.
    pub fn restart_empty(&mut self) -> Result<()> {
        Ok(self.inner.restart()?)
    }
}
