//! The redtail replicas of one configuration: real release binaries, all
//! spawned before any is waited for, so they join the cluster together and
//! the rendezvous ranking (not start order) decides who leads what.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::processes::{free_port, http_get};

/// The Prometheus gauge of the shards an instance leads.
const LEASES_GAUGE: &str = "redtail_shard_leases_held";

/// One running `redtail` process, killed when dropped (each configuration
/// has a fresh Redis, so nothing a graceful stop would save is needed).
pub struct Replica {
    child: Child,
    http_port: u16,
}

impl Replica {
    /// Spawns `binary` with `settings` (on top of the Mongo, Redis and HTTP
    /// addresses), its output in `<logs>/<label>.log`; does not wait.
    pub fn spawn(
        binary: &Path,
        mongo_url: &str,
        redis_url: &str,
        settings: &[(&str, String)],
        logs: &Path,
        label: &str,
    ) -> Result<Self> {
        let http_port = free_port()?;
        std::fs::create_dir_all(logs)?;
        let log_path = logs.join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(binary);
        command
            .env("OTR_MONGO_URL", mongo_url)
            .env("OTR_REDIS_URL", redis_url)
            .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        for (key, value) in settings {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self { child, http_port })
    }

    /// Waits until `/readyz` answers 200 (the tail is positioned), failing
    /// at `deadline` or as soon as the process exits.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("redtail exited before it was ready ({status}); see target/scale/*.log");
            }
            if matches!(http_get(self.http_port, "/readyz"), Some((200, _))) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("redtail on port {} was not ready in time", self.http_port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shards this replica leads now, from its `/metrics` (`None` when the
    /// gauge cannot be read).
    pub fn leases_held(&self) -> Option<u64> {
        let (status, body) = http_get(self.http_port, "/metrics")?;
        (status == 200).then(|| gauge_value(&body, LEASES_GAUGE))?
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `count` replicas at once, then waits for each to be ready.
pub fn start_all(
    count: usize,
    spawn: impl Fn(usize) -> Result<Replica>,
    timeout: Duration,
) -> Result<Vec<Replica>> {
    let mut replicas = (0..count).map(spawn).collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + timeout;
    for replica in &mut replicas {
        replica.wait_ready(deadline)?;
    }
    Ok(replicas)
}

/// How the shards are spread over the replicas, as last observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseSpread {
    /// Shards led by each replica, in start order.
    pub per_replica: Vec<u64>,
    /// Whether every shard is led and every replica leads at least one.
    pub settled: bool,
    /// How long it took to get there (or how long was waited).
    pub waited: Duration,
}

/// Whether `held` covers all `shards` with every replica leading some.
pub fn is_settled(held: &[u64], shards: u64) -> bool {
    !held.is_empty() && held.iter().sum::<u64>() == shards && held.iter().all(|&h| h >= 1)
}

/// Polls the gauges until the shards are settled (stable over two reads
/// 300 ms apart) or `timeout` passes; an unsettled spread is returned, not
/// an error, so the run can go on and say so.
pub fn wait_for_leases(replicas: &[Replica], shards: u64, timeout: Duration) -> LeaseSpread {
    let started = Instant::now();
    let read = || -> Vec<u64> {
        replicas
            .iter()
            .map(|r| r.leases_held().unwrap_or(0))
            .collect()
    };
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        if is_settled(&now, shards) && now == last {
            return LeaseSpread {
                per_replica: now,
                settled: true,
                waited: started.elapsed(),
            };
        }
        if started.elapsed() >= timeout {
            return LeaseSpread {
                per_replica: now,
                settled: false,
                waited: started.elapsed(),
            };
        }
        last = now;
    }
}

/// The value of an unlabelled gauge in Prometheus text format.
pub fn gauge_value(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leases_gauge_is_read_from_metrics_text() {
        let cases = [
            ("# HELP x\nredtail_shard_leases_held 12\n", Some(12)),
            (
                "redtail_shard_leases_held_total 3\nredtail_shard_leases_held 0\n",
                Some(0),
            ),
            ("redtail_other 5\n", None),
            ("redtail_shard_leases_held NaNx\n", None),
        ];
        for (text, expected) in cases {
            assert_eq!(gauge_value(text, LEASES_GAUGE), expected, "{text:?}");
        }
    }

    #[test]
    fn settled_means_all_shards_led_and_nobody_idle() {
        let cases: [(&[u64], bool); 5] = [
            (&[64], true),
            (&[30, 34], true),
            (&[64, 0], false),
            (&[30, 30], false),
            (&[], false),
        ];
        for (held, expected) in cases {
            assert_eq!(is_settled(held, 64), expected, "{held:?}");
        }
    }
}
