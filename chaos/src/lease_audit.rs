//! The lease auditor: samples every shard's lease, holder and checkpoint key
//! in one `MGET` every few milliseconds, straight from redis-server, and
//! checks per shard that the epoch never decreases, that an epoch never
//! carries two different tokens (two holders of one shard), and that the
//! checkpoint never moves backwards.
//!
//! The checks are a pure state machine ([`LeaseAudit`]) fed by the sampling
//! task, so they are table-tested without Redis. A Redis that lost its data
//! starts a new generation: epochs restart from 1 there by design.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{ClusterKeys, ShardId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::redis_read::mget_within;

/// The lease of one shard as sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The epoch part of the token.
    pub epoch: u64,
    /// The whole token `<epoch>:<uuid>`.
    pub token: String,
    /// The holder's member id, when the holder key was there too.
    pub holder: Option<String>,
}

/// A change of a shard's lease, as the auditor saw it.
#[derive(Debug, Clone)]
pub struct LeaseChange {
    /// When it was first seen.
    pub at: Instant,
    /// The shard.
    pub shard: u16,
    /// The new lease (`None`: expired or released).
    pub lease: Option<Lease>,
}

#[derive(Debug, Default, Clone)]
struct ShardState {
    last_epoch: Option<u64>,
    tokens: HashMap<u64, String>,
    last_checkpoint: Option<u64>,
    current: Option<Lease>,
}

/// The checks over a sequence of samples.
#[derive(Debug, Clone)]
pub struct LeaseAudit {
    shards: Vec<ShardState>,
    /// Whether checkpoints must never move back (off after Redis data loss).
    pub check_checkpoints: bool,
    /// Every invariant violation, described.
    pub violations: Vec<String>,
    /// Every lease change, in order.
    pub changes: Vec<LeaseChange>,
    /// Samples taken.
    pub samples: u64,
    /// Samples in which at least one lease was held.
    pub samples_with_leases: u64,
    /// The longest time between two samples (the audit's resolution).
    pub longest_interval: Duration,
    /// Failed samples (Redis unreachable).
    pub failed_samples: u64,
    last_sample: Option<Instant>,
}

/// Parses a lease token `<epoch>:<uuid>`.
pub fn parse_token(token: &str) -> Option<u64> {
    let (epoch, uuid) = token.split_once(':')?;
    (!uuid.is_empty()).then_some(())?;
    epoch.parse().ok()
}

impl LeaseAudit {
    /// An audit of `shards` shards.
    pub fn new(shards: u16) -> Self {
        Self {
            shards: vec![ShardState::default(); usize::from(shards)],
            check_checkpoints: true,
            violations: Vec::new(),
            changes: Vec::new(),
            samples: 0,
            samples_with_leases: 0,
            longest_interval: Duration::ZERO,
            failed_samples: 0,
            last_sample: None,
        }
    }

    /// Forgets epochs and checkpoints: Redis lost its data, so they restart.
    pub fn new_generation(&mut self) {
        for shard in &mut self.shards {
            let current = shard.current.take();
            *shard = ShardState {
                current,
                ..ShardState::default()
            };
        }
    }

    /// The lease each shard had at the last sample.
    pub fn current(&self) -> Vec<Option<Lease>> {
        self.shards.iter().map(|s| s.current.clone()).collect()
    }

    /// Feeds one sample: per shard (lease, holder, checkpoint) as read.
    pub fn observe(
        &mut self,
        at: Instant,
        rows: &[(Option<String>, Option<String>, Option<String>)],
    ) {
        self.samples += 1;
        if let Some(last) = self.last_sample {
            self.longest_interval = self.longest_interval.max(at - last);
        }
        self.last_sample = Some(at);
        if rows.iter().any(|(lease, _, _)| lease.is_some()) {
            self.samples_with_leases += 1;
        }
        for (shard, (lease, holder, checkpoint)) in rows.iter().enumerate() {
            self.observe_shard(
                at,
                shard,
                lease.as_deref(),
                holder.as_deref(),
                checkpoint.as_deref(),
            );
        }
    }

    fn observe_shard(
        &mut self,
        at: Instant,
        shard: usize,
        lease: Option<&str>,
        holder: Option<&str>,
        checkpoint: Option<&str>,
    ) {
        let check_checkpoints = self.check_checkpoints;
        let state = &mut self.shards[shard];
        let lease = match lease {
            None => None,
            Some(token) => match parse_token(token) {
                Some(epoch) => Some(Lease {
                    epoch,
                    token: token.to_string(),
                    holder: holder.map(str::to_string),
                }),
                None => {
                    self.violations
                        .push(format!("shard {shard}: malformed lease token {token:?}"));
                    None
                }
            },
        };
        if let Some(lease) = &lease {
            if state.last_epoch.is_some_and(|last| lease.epoch < last) {
                self.violations.push(format!(
                    "shard {shard}: epoch went back from {} to {}",
                    state.last_epoch.unwrap_or_default(),
                    lease.epoch
                ));
            }
            state.last_epoch = Some(state.last_epoch.unwrap_or(0).max(lease.epoch));
            match state.tokens.get(&lease.epoch) {
                Some(known) if known != &lease.token => self.violations.push(format!(
                    "shard {shard}: epoch {} held by two tokens ({known} and {})",
                    lease.epoch, lease.token
                )),
                Some(_) => {}
                None => {
                    state.tokens.insert(lease.epoch, lease.token.clone());
                }
            }
        }
        if let Some(text) = checkpoint {
            match text.parse::<u64>() {
                Ok(position) => {
                    if check_checkpoints
                        && state.last_checkpoint.is_some_and(|last| position < last)
                    {
                        self.violations.push(format!(
                            "shard {shard}: checkpoint went back from {} to {position}",
                            state.last_checkpoint.unwrap_or_default()
                        ));
                    }
                    state.last_checkpoint = Some(state.last_checkpoint.unwrap_or(0).max(position));
                }
                Err(_) => self
                    .violations
                    .push(format!("shard {shard}: malformed checkpoint {text:?}")),
            }
        }
        let token_changed =
            state.current.as_ref().map(|l| &l.token) != lease.as_ref().map(|l| &l.token);
        let holder_arrived = matches!((&state.current, &lease), (Some(a), Some(b)) if a.holder.is_none() && b.holder.is_some());
        if token_changed || holder_arrived {
            self.changes.push(LeaseChange {
                at,
                shard: u16::try_from(shard).unwrap_or(u16::MAX),
                lease: lease.clone(),
            });
            state.current = lease;
        }
    }
}

/// The sampling task.
pub struct LeaseAuditor {
    audit: Arc<Mutex<LeaseAudit>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Most samples over an auditor's life (at 15 ms: ~25 minutes).
const MAX_SAMPLES: u64 = 100_000;
const SAMPLE_EVERY: Duration = Duration::from_millis(15);
/// Bound on one sample's connection and reply.
const SAMPLE_TIMEOUT: Duration = Duration::from_millis(500);

impl LeaseAuditor {
    /// Starts sampling `redis_url` (direct, not proxied).
    pub fn start(redis_url: &str, keys: ClusterKeys, shards: u16) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let audit = Arc::new(Mutex::new(LeaseAudit::new(shards)));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(sample_loop(client, keys, shards, audit.clone(), stopped));
        Ok(Self { audit, stop, task })
    }

    /// A copy of the audit so far.
    pub fn snapshot(&self) -> LeaseAudit {
        self.audit.lock().expect("audit lock").clone()
    }

    /// Runs `f` on the live audit (to start a generation, or disable checks).
    pub fn with<R>(&self, f: impl FnOnce(&mut LeaseAudit) -> R) -> R {
        f(&mut self.audit.lock().expect("audit lock"))
    }

    /// Stops sampling and returns the audit.
    pub async fn stop(self) -> LeaseAudit {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
        self.audit.lock().expect("audit lock").clone()
    }
}

async fn sample_loop(
    client: redis::Client,
    keys: ClusterKeys,
    shards: u16,
    audit: Arc<Mutex<LeaseAudit>>,
    stopped: watch::Receiver<bool>,
) {
    let mut names = Vec::with_capacity(usize::from(shards) * 3);
    for shard in 0..shards {
        let k = keys.shard(ShardId(shard));
        names.extend([k.lease, k.holder, k.checkpoint]);
    }
    let mut conn = None;
    for _ in 0..MAX_SAMPLES {
        if *stopped.borrow() {
            return;
        }
        match mget_within(&client, &mut conn, &names, SAMPLE_TIMEOUT).await {
            Some(values) => {
                let rows: Vec<_> = values
                    .chunks(3)
                    .map(|c| (c[0].clone(), c[1].clone(), c[2].clone()))
                    .collect();
                audit
                    .lock()
                    .expect("audit lock")
                    .observe(Instant::now(), &rows);
            }
            None => audit.lock().expect("audit lock").failed_samples += 1,
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = (Option<String>, Option<String>, Option<String>);

    fn row(lease: Option<&str>, checkpoint: Option<&str>) -> Row {
        (
            lease.map(str::to_string),
            Some("h-x".to_string()),
            checkpoint.map(str::to_string),
        )
    }

    #[test]
    fn tokens_parse() {
        let cases = [
            ("3:abc", Some(3)),
            ("3:", None),
            ("x:abc", None),
            ("nocolon", None),
        ];
        for (token, expected) in cases {
            assert_eq!(parse_token(token), expected, "{token}");
        }
    }

    #[test]
    fn violations_table() {
        let cases: Vec<(&str, Vec<Row>, usize)> = vec![
            (
                "steady",
                vec![row(Some("1:a"), Some("5")), row(Some("1:a"), Some("6"))],
                0,
            ),
            (
                "takeover",
                vec![
                    row(Some("1:a"), None),
                    row(None, None),
                    row(Some("2:b"), None),
                ],
                0,
            ),
            (
                "epoch back",
                vec![row(Some("2:b"), None), row(Some("1:a"), None)],
                1,
            ),
            (
                "two tokens",
                vec![row(Some("2:b"), None), row(Some("2:c"), None)],
                1,
            ),
            (
                "checkpoint back",
                vec![row(None, Some("7")), row(None, Some("6"))],
                1,
            ),
            ("bad token", vec![row(Some("zz"), None)], 1),
        ];
        for (name, rows, expected) in cases {
            let mut audit = LeaseAudit::new(1);
            for r in rows {
                audit.observe(Instant::now(), &[r]);
            }
            assert_eq!(
                audit.violations.len(),
                expected,
                "{name}: {:?}",
                audit.violations
            );
        }
    }

    #[test]
    fn a_new_generation_allows_restarted_epochs_and_changes_are_recorded() {
        let mut audit = LeaseAudit::new(1);
        audit.observe(Instant::now(), &[row(Some("5:a"), Some("9"))]);
        audit.new_generation();
        audit.check_checkpoints = false;
        audit.observe(Instant::now(), &[row(Some("1:b"), Some("3"))]);
        assert!(audit.violations.is_empty(), "{:?}", audit.violations);
        assert_eq!(audit.changes.len(), 2);
        assert_eq!(audit.samples_with_leases, 2);
        assert_eq!(audit.current()[0].as_ref().map(|l| l.epoch), Some(1));
    }
}
