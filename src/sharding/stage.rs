//! The cluster-mode stage: transform, route each publication to its shard,
//! and publish the shards this instance leads through the fenced script.
//!
//! It runs batch by batch: one fenced call per led shard per batch, all
//! shards' calls concurrently on one multiplexed connection, so order holds
//! within a shard while Redis round trips are shared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ::cluster::{
    Assignment, ClusterKeys, Coordinator, FencedPublisher, LeaseToken, PublishItem, ShardId,
    ShardMap, ShardReleaser,
};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::shard_state::ShardState;
use crate::denylist::Denylist;
use crate::pipeline::observe_entry;
use crate::position::OplogPosition;
use crate::sources::SourceRecord;
use crate::sources::oplog::ExcludedNamespaces;
use crate::telemetry::metrics::Metrics;
use crate::transform::{Publication, Transformer};

/// Records folded into one batch when the source is ahead.
const MAX_RECORDS_PER_BATCH: usize = 512;
/// Pause after the first failed publish; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Everything cluster-mode publishing needs, built by `main`.
pub struct ShardedPublishing {
    /// The lease coordinator of this member.
    pub coordinator: Coordinator,
    /// The Redis the cluster lives in (the first `OTR_REDIS_URL`).
    pub connection: ConnectionManager,
    /// Key names.
    pub keys: ClusterKeys,
    /// Namespace -> shard.
    pub map: ShardMap,
    /// The fenced dedup-and-publish script.
    pub fenced: FencedPublisher,
    /// How often idle shards' checkpoints follow the stream.
    pub checkpoint_interval: Duration,
    /// How long one batch is retried through a Redis outage before it is
    /// given up (`OTR_REDIS_MAX_OUTAGE`).
    pub max_outage: Duration,
}

/// The stage itself.
pub struct ShardedStage {
    /// Oplog entry -> publications.
    pub transformer: Transformer,
    /// Databases not to publish.
    pub denylist: Denylist,
    /// Shared metrics.
    pub metrics: Metrics,
    /// Leases and the fenced publisher.
    pub publishing: ShardedPublishing,
    /// Asks the source to read again from an older checkpoint.
    pub rewind: mpsc::UnboundedSender<OplogPosition>,
    /// Tells the source which namespaces other instances publish, so the
    /// server stops returning them (MongoDB load stays flat with replicas).
    pub excluded: watch::Sender<ExcludedNamespaces>,
}

/// Discovered namespaces are pushed to the source's filter every this many
/// checkpoint intervals, within [1 s, 5 s] (each push re-issues the query);
/// a takeover pushes at once.
const EXCLUSION_PUSH_EVERY: u32 = 5;

impl ShardedStage {
    /// Runs until `records` closes (the source stopped), then writes a final
    /// checkpoint for every led shard and reports them drained. Returns the
    /// coordinator so the caller can release and leave.
    pub async fn run(self, mut records: mpsc::Receiver<SourceRecord>) -> Coordinator {
        let ShardedPublishing {
            coordinator,
            connection,
            keys,
            map,
            fenced,
            checkpoint_interval,
            max_outage,
        } = self.publishing;
        self.metrics.cluster_shards.set(i64::from(map.shards()));
        let mut runner = Runner {
            transformer: self.transformer,
            denylist: self.denylist,
            metrics: self.metrics,
            assignment: coordinator.assignment(),
            releaser: coordinator.releaser(),
            connection,
            keys,
            map,
            fenced,
            max_outage,
            rewind: self.rewind,
            excluded: self.excluded,
            foreign: BTreeSet::new(),
            foreign_changed: false,
            last_exclusion_push: Instant::now(),
            shards: BTreeMap::new(),
            shard_of_namespace: HashMap::new(),
            stream_start: None,
            resume: None,
        };
        let exclusion_push_interval = (checkpoint_interval * EXCLUSION_PUSH_EVERY)
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        let mut ticker = tokio::time::interval(checkpoint_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = Vec::with_capacity(MAX_RECORDS_PER_BATCH);
        runner.follow_assignment().await;
        loop {
            tokio::select! {
                biased;
                changed = runner.assignment.changed() => {
                    if changed.is_err() {
                        tracing::error!("the cluster coordinator stopped; publishing stops");
                        break;
                    }
                    runner.follow_assignment().await;
                }
                received = records.recv_many(&mut buffer, MAX_RECORDS_PER_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    let batches = runner.route(buffer.drain(..));
                    runner.publish(batches).await;
                }
                _ = ticker.tick() => {
                    runner.checkpoint_idle_shards().await;
                    if runner.last_exclusion_push.elapsed() >= exclusion_push_interval {
                        runner.push_exclusions();
                    }
                }
            }
        }
        runner.hand_back_all().await;
        coordinator
    }
}

/// The stage's working state.
struct Runner {
    transformer: Transformer,
    denylist: Denylist,
    metrics: Metrics,
    assignment: watch::Receiver<Assignment>,
    releaser: ShardReleaser,
    connection: ConnectionManager,
    keys: ClusterKeys,
    map: ShardMap,
    fenced: FencedPublisher,
    max_outage: Duration,
    rewind: mpsc::UnboundedSender<OplogPosition>,
    excluded: watch::Sender<ExcludedNamespaces>,
    /// Namespaces seen whose shard another instance leads.
    foreign: BTreeSet<String>,
    foreign_changed: bool,
    last_exclusion_push: Instant,
    /// The shards this instance leads and publishes.
    shards: BTreeMap<ShardId, ShardState>,
    shard_of_namespace: HashMap<String, ShardId>,
    /// Where this run's stream began (the source's first position): a shard
    /// nobody ever checkpointed is published from there.
    stream_start: Option<OplogPosition>,
    /// The transform's latest safe resume position: what checkpoints carry.
    resume: Option<OplogPosition>,
}

impl Runner {
    /// Applies the coordinator's latest assignment: shards lost stop at
    /// once, shards to hand off get a final checkpoint and are released,
    /// new shards are taken over from their checkpoint.
    async fn follow_assignment(&mut self) {
        let assignment = self.assignment.borrow_and_update().clone();
        let lost: Vec<ShardId> = self
            .shards
            .iter()
            .filter(|(shard, state)| {
                let current = assignment
                    .leading
                    .get(shard)
                    .or(assignment.draining.get(shard));
                current != Some(&state.token)
            })
            .map(|(shard, _)| *shard)
            .collect();
        for shard in lost {
            self.shards.remove(&shard);
            self.metrics
                .lease_transitions
                .with_label_values(&["lost"])
                .inc();
            tracing::warn!(%shard, "lost the lease of a shard; stopped publishing it");
        }
        for (shard, token) in &assignment.draining {
            self.hand_back(*shard, token.clone()).await;
        }
        let mut rewind_to: Option<OplogPosition> = None;
        for (shard, token) in &assignment.leading {
            if !self.shards.contains_key(shard) {
                let from = self.take_over(*shard, token.clone()).await;
                rewind_to = match (rewind_to, from) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        // The source must query with new shards' namespaces included before
        // it reads again from their checkpoints, and can drop those of
        // shards handed away at once.
        let led = &self.shards;
        let foreign: BTreeSet<String> = self
            .shard_of_namespace
            .iter()
            .filter(|(_, shard)| !led.contains_key(shard))
            .map(|(namespace, _)| namespace.clone())
            .collect();
        if foreign != self.foreign {
            self.foreign = foreign;
            self.foreign_changed = true;
            self.push_exclusions();
        }
        if let Some(from) = rewind_to {
            let _ = self.rewind.send(from);
        }
        self.metrics.shard_leases_held.set(self.shards.len() as i64);
    }

    /// Hands the source the current list of namespaces to leave out.
    fn push_exclusions(&mut self) {
        if self.foreign_changed || self.excluded.borrow().len() != self.foreign.len() {
            let list: Vec<String> = self.foreign.iter().cloned().collect();
            tracing::info!(
                namespaces = list.len(),
                "leaving other instances' namespaces out of the oplog query"
            );
            self.excluded.send_replace(Arc::new(list));
        }
        self.foreign_changed = false;
        self.last_exclusion_push = Instant::now();
    }

    /// Starts publishing `shard` from its checkpoint; returns where the
    /// source must read again from, when the stream is already past it.
    async fn take_over(&mut self, shard: ShardId, token: LeaseToken) -> Option<OplogPosition> {
        let checkpoint = match self.checkpoint_of(shard).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::error!(%shard, %error, "cannot read the shard's checkpoint; giving the shard back");
                self.releaser.drained(shard);
                return None;
            }
        };
        let state = ShardState::taken_over(token, checkpoint);
        let rewind = state.awaiting_replay_from;
        tracing::info!(%shard, epoch = state.token.epoch, checkpoint = ?checkpoint, "took over a shard");
        self.metrics
            .lease_transitions
            .with_label_values(&["acquired"])
            .inc();
        self.shards.insert(shard, state);
        rewind
    }

    /// The shard's checkpoint, seeded with this run's start when it has none
    /// (a new cluster, or a shard nobody published yet).
    async fn checkpoint_of(
        &mut self,
        shard: ShardId,
    ) -> Result<Option<OplogPosition>, ::cluster::ClusterError> {
        let stored = ::cluster::read_checkpoint(&mut self.connection, &self.keys, shard).await?;
        if let Some(stored) = stored {
            return Ok(Some(OplogPosition::from_u64(stored)));
        }
        let Some(start) = self.stream_start else {
            return Ok(None);
        };
        ::cluster::initialize_checkpoint(&mut self.connection, &self.keys, shard, start.as_u64())
            .await?;
        let stored = ::cluster::read_checkpoint(&mut self.connection, &self.keys, shard).await?;
        Ok(stored.map(OplogPosition::from_u64))
    }

    /// Final checkpoint with the old token, then release.
    async fn hand_back(&mut self, shard: ShardId, token: LeaseToken) {
        if let Some(state) = self.shards.remove(&shard)
            && state.awaiting_replay_from.is_none()
        {
            let checkpoint = self.resume.map(OplogPosition::as_u64);
            if let Err(error) = self
                .fenced
                .publish(&mut self.connection, shard, &token, &[], checkpoint)
                .await
            {
                tracing::warn!(%shard, %error, "final checkpoint before handing a shard back failed");
            }
        }
        self.releaser.drained(shard);
        self.metrics
            .lease_transitions
            .with_label_values(&["released"])
            .inc();
        tracing::info!(%shard, "handed a shard back");
    }

    async fn hand_back_all(&mut self) {
        let shards: Vec<(ShardId, LeaseToken)> = self
            .shards
            .iter()
            .map(|(shard, state)| (*shard, state.token.clone()))
            .collect();
        for (shard, token) in shards {
            self.hand_back(shard, token).await;
        }
        self.metrics.shard_leases_held.set(0);
    }

    /// Transforms records and sorts the publications of led shards by shard.
    fn route(
        &mut self,
        records: impl Iterator<Item = SourceRecord>,
    ) -> BTreeMap<ShardId, Vec<Publication>> {
        let mut batches: BTreeMap<ShardId, Vec<Publication>> = BTreeMap::new();
        for record in records {
            let raw = match record {
                SourceRecord::Rewound(from) => {
                    self.stream_start.get_or_insert(from);
                    self.shards
                        .values_mut()
                        .for_each(|state| state.replay_started(from));
                    continue;
                }
                SourceRecord::OplogEntry(raw) => raw,
            };
            let outcome = self.transformer.apply(&raw);
            observe_entry(&self.metrics, &raw, &outcome);
            for publication in outcome.publications {
                if self.denylist.skip_if_denied(publication.database()) {
                    continue;
                }
                let shard = self.shard_of(&publication.namespace);
                match self.shards.get(&shard) {
                    Some(state) if state.wants(outcome.position) => {
                        batches.entry(shard).or_default().push(publication);
                    }
                    Some(_) => {}
                    None => {
                        if self.foreign.insert(publication.namespace.clone()) {
                            self.foreign_changed = true;
                        }
                    }
                }
            }
            if let Some(position) = outcome.position {
                self.shards
                    .values_mut()
                    .for_each(|state| state.handled(position));
            }
            self.resume = outcome.resume_position.or(self.resume);
        }
        batches
    }

    fn shard_of(&mut self, namespace: &str) -> ShardId {
        if let Some(shard) = self.shard_of_namespace.get(namespace) {
            return *shard;
        }
        let shard = self.map.shard_of(namespace);
        self.shard_of_namespace.insert(namespace.to_owned(), shard);
        shard
    }

    /// One fenced call per shard, all at once; a FENCED reply stops that
    /// shard immediately.
    async fn publish(&mut self, batches: BTreeMap<ShardId, Vec<Publication>>) {
        let checkpoint = self.resume;
        let calls = batches.into_iter().filter_map(|(shard, publications)| {
            let token = self.shards.get(&shard)?.token.clone();
            let call = ShardCall {
                shard,
                token,
                publications,
                checkpoint,
            };
            Some(call.run(
                self.connection.clone(),
                &self.fenced,
                &self.keys,
                &self.metrics,
                self.max_outage,
            ))
        });
        let results = futures_util::future::join_all(calls).await;
        self.apply_results(results);
    }

    /// Moves idle shards' checkpoints along with the stream.
    async fn checkpoint_idle_shards(&mut self) {
        let Some(resume) = self.resume else { return };
        let calls = self.shards.iter().filter_map(|(shard, state)| {
            let stale = state.awaiting_replay_from.is_none()
                && state.checkpointed.is_none_or(|c| c < resume);
            stale.then(|| {
                let call = ShardCall {
                    shard: *shard,
                    token: state.token.clone(),
                    publications: Vec::new(),
                    checkpoint: Some(resume),
                };
                call.run(
                    self.connection.clone(),
                    &self.fenced,
                    &self.keys,
                    &self.metrics,
                    self.max_outage,
                )
            })
        });
        let results = futures_util::future::join_all(calls).await;
        self.apply_results(results);
    }

    fn apply_results(&mut self, results: Vec<(ShardId, CallResult)>) {
        for (shard, result) in results {
            match result {
                CallResult::Done(checkpoint) => {
                    if let (Some(state), Some(checkpoint)) =
                        (self.shards.get_mut(&shard), checkpoint)
                    {
                        state.checkpointed = Some(checkpoint);
                    }
                }
                CallResult::Fenced => {
                    self.shards.remove(&shard);
                    self.metrics.fenced_batches.inc();
                    self.metrics
                        .lease_transitions
                        .with_label_values(&["fenced"])
                        .inc();
                    tracing::warn!(%shard, "publish FENCED: another instance leads this shard now; stopped publishing it");
                }
                CallResult::GivenUp => {}
            }
        }
        self.metrics.shard_leases_held.set(self.shards.len() as i64);
    }
}

/// One shard's share of a batch.
struct ShardCall {
    shard: ShardId,
    token: LeaseToken,
    publications: Vec<Publication>,
    checkpoint: Option<OplogPosition>,
}

enum CallResult {
    /// Published (or duplicates) and checkpointed at this position.
    Done(Option<OplogPosition>),
    /// The lease moved on: nothing was published.
    Fenced,
    /// Redis stayed unreachable for the whole outage budget.
    GivenUp,
}

impl ShardCall {
    /// Publishes with retries through transient Redis failures, bounded by
    /// `max_outage`, like the single-instance publisher.
    async fn run(
        self,
        mut connection: ConnectionManager,
        fenced: &FencedPublisher,
        keys: &ClusterKeys,
        metrics: &Metrics,
        max_outage: Duration,
    ) -> (ShardId, CallResult) {
        let items: Vec<PublishItem> = self
            .publications
            .iter()
            .map(|p| PublishItem {
                dedup_key: keys.dedup_key(p.origin.as_u64(), p.tx_index),
                message: p.message.clone(),
                channels: p.channels.clone(),
            })
            .collect();
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let checkpoint = self.checkpoint.map(OplogPosition::as_u64);
        loop {
            match fenced
                .publish(&mut connection, self.shard, &self.token, &items, checkpoint)
                .await
            {
                Ok(outcome) => {
                    self.record_sent(metrics, &outcome.published);
                    return (self.shard, CallResult::Done(self.checkpoint));
                }
                Err(error) if error.is_fenced() => return (self.shard, CallResult::Fenced),
                Err(error) if started.elapsed() >= max_outage => {
                    metrics
                        .processed_messages
                        .with_label_values(&["failed"])
                        .inc_by(items.len() as u64);
                    tracing::error!(shard = %self.shard, %error, publications = items.len(), "giving up a batch after OTR_REDIS_MAX_OUTAGE");
                    return (self.shard, CallResult::GivenUp);
                }
                Err(error) => {
                    metrics.temporary_send_failures.inc_by(items.len() as u64);
                    tracing::warn!(shard = %self.shard, %error, "publishing to Redis failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn record_sent(&self, metrics: &Metrics, published: &[bool]) {
        metrics
            .processed_messages
            .with_label_values(&["sent"])
            .inc_by(published.len() as u64);
        let now_ms = crate::telemetry::unix_millis();
        for (publication, &fresh) in self.publications.iter().zip(published) {
            if let (true, Some(wall)) = (fresh, publication.wall_ms) {
                metrics
                    .end_to_end_latency
                    .observe((now_ms - wall).max(0) as f64 / 1000.0);
            }
        }
    }
}
