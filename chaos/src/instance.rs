//! One real `redtail` process, wired to Redis and Mongo through its own
//! [`FaultProxy`]s so a scenario can isolate exactly this instance.
//!
//! Each instance is started with `HOSTNAME=<name>`: redtail's cluster member
//! id is `<HOSTNAME>-<32 hex uuid>` (`MemberId::for_this_host`), so the holder
//! key of a shard names the instance that leads it (see [`owner_of_member`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::http_probe;
use crate::proxy::FaultProxy;

/// How long an instance may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What every instance of a run shares.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The redtail binary.
    pub binary: PathBuf,
    /// Where logs go (one file per instance).
    pub log_dir: PathBuf,
    /// `OTR_*` settings (cluster timings etc.).
    pub env: Vec<(String, String)>,
}

/// A running redtail, killed on drop.
pub struct Instance {
    /// Its name, also its `HOSTNAME` (`chaos-i<n>`).
    pub name: String,
    child: Child,
    http_port: u16,
    log_path: PathBuf,
    /// Its path to Redis.
    pub redis_proxy: FaultProxy,
    /// Its path to Mongo.
    pub mongo_proxy: FaultProxy,
    exited: Option<ExitStatus>,
}

impl Instance {
    /// Starts instance `name` with fresh proxies to `redis` and `mongo`, and
    /// waits for `/readyz` to answer 200.
    pub async fn start(
        config: &InstanceConfig,
        name: &str,
        redis: SocketAddr,
        mongo: SocketAddr,
    ) -> Result<Self> {
        let redis_proxy = FaultProxy::start(redis).await?;
        let mongo_proxy = FaultProxy::start(mongo).await?;
        let http_port = crate::free_port()?;
        let log_path = config.log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&config.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOSTNAME", name)
            .env(
                "OTR_MONGO_URL",
                // directConnection: the driver must not discover the real
                // address behind the proxy and bypass it.
                format!(
                    "mongodb://127.0.0.1:{}/?directConnection=true",
                    mongo_proxy.port()
                ),
            )
            .env(
                "OTR_REDIS_URL",
                format!("redis://127.0.0.1:{}", redis_proxy.port()),
            )
            .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in &config.env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", config.binary.display()))?;
        let mut instance = Self {
            name: name.to_string(),
            child,
            http_port,
            log_path,
            redis_proxy,
            mongo_proxy,
            exited: None,
        };
        instance.wait_ready().await?;
        Ok(instance)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                bail!(
                    "{} exited during start-up ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Some((200, _)) = http_probe::get(self.http_port, "/readyz").await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} was not ready within {READY_TIMEOUT:?}:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Everything it logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.child.id());
        }
        Ok(())
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits at most `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The sum of a metric on its `/metrics` (`None` when unreachable or absent).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (status, body) = http_probe::get(self.http_port, "/metrics").await?;
        (status == 200)
            .then(|| http_probe::metric_sum(&body, name))
            .flatten()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The instance name inside a member id `<name>-<32 hex>`, if it is one.
pub fn owner_of_member(member_id: &str) -> Option<&str> {
    let (name, uuid) = member_id.rsplit_once('-')?;
    (uuid.len() == 32 && uuid.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_map_to_instances() {
        let cases = [
            (
                "chaos-i3-0123456789abcdef0123456789abcdef",
                Some("chaos-i3"),
            ),
            ("chaos-i3-0123", None),
            ("nodash", None),
            ("x-0123456789abcdef0123456789abcdeg", None),
        ];
        for (member, expected) in cases {
            assert_eq!(owner_of_member(member), expected, "{member}");
        }
    }
}
