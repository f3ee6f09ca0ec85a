//! One scenario's world: a fresh redis-server, an in-process mongo-sim, the
//! redtail instances (each behind its own proxies), and the observers (the
//! recording subscriber, the lease auditor and the publish-epoch auditor).
//!
//! Every scenario gets a new environment so no state leaks between them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use cluster::{ClusterKeys, ShardMap};
use mongo_sim::{MongoSim, SimOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::analysis::{self, FaultMark};
use crate::instance::{Instance, InstanceConfig, owner_of_member};
use crate::lease_audit::{LeaseAudit, LeaseAuditor};
use crate::publish_audit::PublishAuditor;
use crate::redis_server::RedisServer;
use crate::report::{Check, ScenarioReport, Verdict};
use crate::subscriber::Subscriber;
use crate::writer::{self, Namespace, WriterOutcome, WriterPlan};

/// The key prefix (redtail's default `OTR_REDIS_METADATA_PREFIX`).
pub const PREFIX: &str = "oplogtoredis::";
/// The databases written to.
pub const DATABASES: [&str; 3] = ["chaos_a", "chaos_b", "chaos_c"];

/// The suite's knobs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The redtail binary.
    pub binary: PathBuf,
    /// Instances at the start of each scenario.
    pub instances: usize,
    /// `OTR_CLUSTER`.
    pub cluster: bool,
    /// `OTR_CLUSTER_SHARDS`.
    pub shards: u16,
    /// `OTR_CLUSTER_LEASE_TTL`.
    pub lease_ttl: Duration,
    /// `OTR_CLUSTER_RENEW_INTERVAL`.
    pub renew_interval: Duration,
    /// Writes per second.
    pub rate: u32,
    /// Steady writing time of the simple scenarios.
    pub write_for: Duration,
    /// Collections written to.
    pub collections: usize,
    /// Where run logs go.
    pub log_root: PathBuf,
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Settings {
    /// The `OTR_*` environment every instance gets.
    pub fn redtail_env(&self) -> Vec<(String, String)> {
        [
            ("OTR_CLUSTER", self.cluster.to_string()),
            ("OTR_CLUSTER_SHARDS", self.shards.to_string()),
            ("OTR_CLUSTER_LEASE_TTL", go_duration(self.lease_ttl)),
            (
                "OTR_CLUSTER_RENEW_INTERVAL",
                go_duration(self.renew_interval),
            ),
            ("OTR_CLUSTER_STANDBYS", "1".to_string()),
            ("OTR_TIMESTAMP_FLUSH_INTERVAL", "200ms".to_string()),
            ("OTR_SHUTDOWN_GRACE", "10s".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The mode's name in reports.
    pub fn mode(&self) -> &'static str {
        if self.cluster {
            "cluster"
        } else {
            "all-publish"
        }
    }
}

/// A running scenario world.
pub struct Environment {
    /// The knobs.
    pub settings: Settings,
    /// The real Redis.
    pub redis: RedisServer,
    /// mongo-sim, in process (for its faults).
    pub sim: MongoSim,
    mongo_addr: SocketAddr,
    mongo: mongodb::Client,
    /// The recording subscriber.
    pub subscriber: Arc<Subscriber>,
    /// The lease auditor.
    pub leases: LeaseAuditor,
    publish: PublishAuditor,
    /// The redtail instances, oldest first.
    pub instances: Vec<Instance>,
    config: InstanceConfig,
    next_name: usize,
    /// The collections written to.
    pub namespaces: Vec<Namespace>,
    /// Where this scenario's logs are.
    pub log_dir: PathBuf,
    writer: Option<(watch::Sender<bool>, JoinHandle<WriterOutcome>)>,
    generations: Vec<Instant>,
}

impl Environment {
    /// Starts everything for scenario `name` and waits until the cluster
    /// has settled (every shard leased, in cluster mode).
    pub async fn start(settings: &Settings, name: &str) -> Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let log_dir = settings.log_root.join(format!("{name}-{stamp}"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        let redis = RedisServer::start()?;
        let sim = MongoSim::start(SimOptions::default()).context("starting mongo-sim")?;
        let mongo_addr: SocketAddr = format!("127.0.0.1:{}", sim.port()).parse()?;
        let mongo = mongodb::Client::with_uri_str(sim.url()).await?;
        let subscriber = Arc::new(Subscriber::start(redis.port()).await?);
        let keys = ClusterKeys::new(PREFIX)?;
        let leases = LeaseAuditor::start(&redis.url(), keys, settings.shards)?;
        let publish = PublishAuditor::start(
            mongo.clone(),
            &redis.url(),
            PREFIX,
            DATABASES.iter().map(|d| d.to_string()).collect(),
            subscriber.clone(),
        )?;
        let map = ShardMap::new(settings.shards)?;
        let namespaces = writer::plan_namespaces(&DATABASES, settings.collections, map);
        let config = InstanceConfig {
            binary: settings.binary.clone(),
            log_dir: log_dir.clone(),
            env: settings.redtail_env(),
        };
        let mut env = Self {
            settings: settings.clone(),
            redis,
            sim,
            mongo_addr,
            mongo,
            subscriber,
            leases,
            publish,
            instances: Vec::new(),
            config,
            next_name: 0,
            namespaces,
            log_dir,
            writer: None,
            generations: Vec::new(),
        };
        for _ in 0..settings.instances {
            env.add_instance().await?;
        }
        env.settle().await?;
        Ok(env)
    }

    /// Starts one more instance and waits until it is ready.
    pub async fn add_instance(&mut self) -> Result<()> {
        let name = format!("chaos-i{}", self.next_name);
        self.next_name += 1;
        let redis: SocketAddr = format!("127.0.0.1:{}", self.redis.port()).parse()?;
        let instance = Instance::start(&self.config, &name, redis, self.mongo_addr).await?;
        self.instances.push(instance);
        Ok(())
    }

    /// In cluster mode, waits (at most 20 s) until every shard has a lease.
    async fn settle(&self) -> Result<()> {
        if !self.settings.cluster {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let current = self.leases.snapshot().current();
            if current.iter().all(Option::is_some) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let held = self
            .leases
            .snapshot()
            .current()
            .iter()
            .filter(|l| l.is_some())
            .count();
        bail!(
            "cluster mode: only {held} of {} shards were leased within 20s (is cluster mode wired into this redtail?)",
            self.settings.shards
        )
    }

    /// Records that Redis just lost its data: epochs and checkpoints restart,
    /// so the audits start a new generation.
    pub fn redis_lost_data(&mut self) {
        self.generations.push(Instant::now());
        self.leases.with(|audit| {
            audit.check_checkpoints = false;
            audit.new_generation();
        });
    }

    /// Starts the steady writer (`txn_every`: see [`WriterPlan`]); it runs
    /// until [`Environment::finish`] or at most 10 minutes.
    pub fn start_writing(&mut self, txn_every: Option<u64>) {
        let plan = WriterPlan {
            namespaces: self.namespaces.clone(),
            rate: self.settings.rate,
            duration: Duration::from_secs(600),
            txn_every,
        };
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(writer::run(self.mongo.clone(), plan, stopped));
        self.writer = Some((stop, task));
    }

    /// Per instance index, the shards it leads with their epochs, from the
    /// auditor's latest sample; plus the holders no instance answers to.
    pub fn lease_owners(&self) -> (Vec<BTreeMap<u16, u64>>, Vec<String>) {
        let mut owners = vec![BTreeMap::new(); self.instances.len()];
        let mut unmapped = Vec::new();
        for (shard, lease) in self.leases.snapshot().current().into_iter().enumerate() {
            let Some(lease) = lease else { continue };
            let holder = lease.holder.clone().unwrap_or_default();
            let owner = owner_of_member(&holder)
                .and_then(|name| self.instances.iter().position(|i| i.name == name));
            match owner {
                Some(index) => {
                    owners[index].insert(shard as u16, lease.epoch);
                }
                None => unmapped.push(holder),
            }
        }
        (owners, unmapped)
    }

    /// The instance to hit: the one leading the most shards (cluster mode),
    /// else the first. Falls back to `redtail_shard_leases_held` on /metrics
    /// when no holder key maps to an instance.
    pub async fn pick_leader(&self) -> Result<(usize, FaultMark)> {
        let at = Instant::now();
        if !self.settings.cluster {
            return Ok((
                0,
                FaultMark {
                    at,
                    shards: BTreeMap::new(),
                },
            ));
        }
        let (owners, unmapped) = self.lease_owners();
        if let Some((index, shards)) = owners
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .max_by_key(|(_, s)| s.len())
        {
            return Ok((
                index,
                FaultMark {
                    at,
                    shards: shards.clone(),
                },
            ));
        }
        let mut best = None;
        for (index, instance) in self.instances.iter().enumerate() {
            let held = instance
                .metric("redtail_shard_leases_held")
                .await
                .unwrap_or(0.0);
            if held > 0.0 && best.is_none_or(|(_, h)| held > h) {
                best = Some((index, held));
            }
        }
        match best {
            Some((index, _)) => Ok((
                index,
                FaultMark {
                    at: Instant::now(),
                    shards: BTreeMap::new(),
                },
            )),
            None => bail!("no instance leads a shard (holders seen: {unmapped:?})"),
        }
    }

    /// Stops the writer, waits for delivery to complete (at most 20 s),
    /// stops the observers and judges the scenario.
    pub async fn finish(
        mut self,
        name: &str,
        fault: Option<FaultMark>,
        mut extra: Vec<Check>,
    ) -> Result<ScenarioReport> {
        let (stop, task) = self.writer.take().context("the writer was never started")?;
        let _ = stop.send(true);
        let outcome = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .context("the writer did not stop within 30s")??;
        let expected = outcome.written.len();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let heard = self.subscriber.snapshot();
            let f = analysis::analyse(
                &outcome.written,
                &heard,
                &Default::default(),
                false,
                None,
                &[],
            );
            if f.delivered == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let unheard = analysis::analyse(
            &outcome.written,
            &self.subscriber.snapshot(),
            &Default::default(),
            false,
            None,
            &[],
        )
        .lost_ids;
        let (indexed, marked, keys) = self.publish.markers(&unheard).await;
        let epochs = self.publish.stop().await;
        let audit = self.leases.stop().await;
        let deliveries = self.subscriber.snapshot();
        let cluster = self.settings.cluster;
        let findings = analysis::analyse(
            &outcome.written,
            &deliveries,
            &epochs.values,
            cluster,
            fault.as_ref(),
            &self.generations,
        );

        let mut checks = vec![Check::judged(
            "no write lost",
            findings.lost == 0 && outcome.failed.is_empty(),
            format!(
                "{} written, {} delivered on both channels, {} lost {:?}, {} writes never acknowledged",
                findings.written,
                findings.delivered,
                findings.lost,
                findings.lost_examples,
                outcome.failed.len()
            ),
        )];
        if !unheard.is_empty() {
            checks.push(Check::with(
                "lost writes diagnosed",
                Verdict::Info,
                format!(
                    "{} unheard writes: {indexed} found in the oplog, {marked} of them have a dedup marker \
                     in Redis (published by some instance but not heard), the rest were never published; {keys:?}",
                    unheard.len()
                ),
            ));
        }
        checks.push(Check::with(
            "duplicates",
            Verdict::Info,
            format!(
                "{} extra copies heard {:?}",
                findings.duplicates, findings.duplicate_examples
            ),
        ));
        checks.push(lease_check(&audit, cluster));
        checks.push(epoch_check(&findings, &epochs, cluster));
        if let Some(fault) = &fault {
            checks.push(takeover_check(&findings, fault, cluster));
        }
        if outcome.transactions > 0 {
            checks.push(Check::with(
                "transactions",
                Verdict::Info,
                format!("{} committed, each over 3 shards", outcome.transactions),
            ));
        }
        checks.append(&mut extra);
        Ok(ScenarioReport {
            name: name.to_string(),
            mode: self.settings.mode().to_string(),
            findings,
            checks,
            log_dir: self.log_dir.display().to_string(),
        })
    }
}

fn lease_check(audit: &LeaseAudit, cluster: bool) -> Check {
    let figures = format!(
        "{} samples ({} with a lease, longest interval {:?}, {} failed), {} lease changes",
        audit.samples,
        audit.samples_with_leases,
        audit.longest_interval,
        audit.failed_samples,
        audit.changes.len()
    );
    if !audit.violations.is_empty() {
        return Check::with(
            "one holder per shard, epochs and checkpoints forward",
            Verdict::Fail,
            format!("{:?}; {figures}", audit.violations),
        );
    }
    match (cluster, audit.samples_with_leases > 0) {
        (true, true) => Check::judged(
            "one holder per shard, epochs and checkpoints forward",
            true,
            figures,
        ),
        (true, false) => Check::with(
            "one holder per shard, epochs and checkpoints forward",
            Verdict::Fail,
            format!("no lease was ever observed in cluster mode: {figures}"),
        ),
        (false, _) => Check::with(
            "one holder per shard, epochs and checkpoints forward",
            Verdict::Skip,
            format!("cluster mode off (no leases expected): {figures}"),
        ),
    }
}

fn epoch_check(
    findings: &analysis::Findings,
    epochs: &crate::publish_audit::PublishEpochs,
    cluster: bool,
) -> Check {
    let name = "no publish from a superseded epoch";
    let figures = format!(
        "{} delivered changes with a known epoch ({} dedup values read, {} dedup keys already gone, {} not in the oplog index)",
        findings.epochs_known,
        epochs.values.len(),
        epochs.missing,
        epochs.unindexed
    );
    if !cluster {
        return Check::with(name, Verdict::Skip, format!("cluster mode off: {figures}"));
    }
    if findings.epochs_known == 0 {
        return Check::with(
            name,
            Verdict::Fail,
            format!("no publishing epoch observed: {figures}"),
        );
    }
    if findings.epoch_regressions.is_empty() {
        Check::judged(name, true, figures)
    } else {
        let some: Vec<_> = findings.epoch_regressions.iter().take(5).collect();
        Check::judged(
            name,
            false,
            format!(
                "{} regressions, e.g. {some:?}; {figures}",
                findings.epoch_regressions.len()
            ),
        )
    }
}

fn takeover_check(findings: &analysis::Findings, fault: &FaultMark, cluster: bool) -> Check {
    let name = "affected shards taken over";
    if !cluster {
        return Check::with(name, Verdict::Skip, "cluster mode off");
    }
    if fault.shards.is_empty() {
        return Check::with(
            name,
            Verdict::Skip,
            "the victim's shards were not known at fault time",
        );
    }
    Check::judged(
        name,
        findings.not_taken_over.is_empty(),
        format!(
            "{} shards {:?}; slowest first new-epoch delivery after {:?}; never: {:?}",
            fault.shards.len(),
            fault.shards.keys().collect::<Vec<_>>(),
            findings.takeover,
            findings.not_taken_over
        ),
    )
}
