//! The real processes the benchmark drives: a `redis-server` of its own and
//! the release `redtail` binary. Both listen on 127.0.0.1 only, and both are
//! killed when dropped so an aborted run leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis_test_server::RedisServerOptions;

/// A port nobody listens on right now.
pub use redis_test_server::free_port;

/// A `redis-server` started for this run, without persistence (so no fork
/// or disk write disturbs a measurement) and with no output-buffer limit for
/// subscribers (so a momentarily slow bench subscriber is not disconnected).
pub struct RedisServer {
    inner: redis_test_server::RedisServer,
}

impl RedisServer {
    /// Starts it and waits until it answers PING.
    pub fn start() -> Result<Self> {
        let inner = redis_test_server::RedisServer::start_with(RedisServerOptions {
            extra_args: vec!["--client-output-buffer-limit".into(), "pubsub 0 0 0".into()],
            ..RedisServerOptions::default()
        })
        .context("starting redis-server (scripts/setup.sh installs it)")?;
        Ok(Self { inner })
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.inner.url()
    }
}

/// How many redtail processes this run started.
static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// A running `redtail` child.
pub struct Redtail {
    child: Child,
    http_port: u16,
}

impl Redtail {
    /// Starts `binary` against `mongo_url`/`redis_url` with `extra` settings
    /// and waits (at most `timeout`) until `/readyz` answers 200, i.e. the
    /// tail is positioned and later writes are certain to be relayed.
    pub fn start(
        binary: &Path,
        mongo_url: &str,
        redis_url: &str,
        extra: &[(&str, String)],
        logs: &Path,
        timeout: Duration,
    ) -> Result<Self> {
        let http_port = free_port()?;
        std::fs::create_dir_all(logs)?;
        // Numbered, so a restarted redtail does not overwrite its predecessor's logs.
        let number = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = extra
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let log_file = |suffix: &str| -> Result<std::fs::File> {
            let path: PathBuf = logs.join(format!("redtail-{number}[{name}].{suffix}"));
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))
        };
        let mut command = Command::new(binary);
        command
            .env("OTR_MONGO_URL", mongo_url)
            .env("OTR_REDIS_URL", redis_url)
            .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
            .stdout(log_file("log")?)
            .stderr(log_file("stderr.log")?);
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut redtail = Self { child, http_port };
        redtail.wait_ready(timeout)?;
        Ok(redtail)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "redtail exited before it was ready ({status}); see its log under target/bench/"
                );
            }
            if matches!(http_get(self.http_port, "/readyz"), Some((200, _))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redtail was not ready within {timeout:?}")
    }

    /// `/metrics`, for the record of a run.
    pub fn metrics(&self) -> Option<String> {
        http_get(self.http_port, "/metrics").map(|(_, body)| body)
    }

    /// Peak and current resident set size in KiB (`VmHWM`, `VmRSS`).
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .with_context(|| format!("no {name} in /proc/<pid>/status"))
        };
        Ok((field("VmHWM:")?, field("VmRSS:")?))
    }

    /// SIGTERM (redtail drains and saves its position), then SIGKILL after 10 s.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Redtail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (status, body), `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Some((status, body))
}
