//! The cluster-mode stage: transform, route each publication to its shard,
//! publish the shards this instance leads through the fenced script, and
//! keep a window of the shards it stands by for.
//!
//! It runs batch by batch: one fenced call per led shard per batch, all
//! shards' calls concurrently on one multiplexed connection, so order holds
//! within a shard while Redis round trips are shared.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ::cluster::{
    Assignment, ClusterKeys, Coordinator, FencedPublisher, LeaseToken, ShardId, ShardMap,
    ShardReleaser,
};
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::shard_call::{CallResult, ShardCall};
use super::shard_state::ShardState;
use super::standby_window::StandbyWindow;
use crate::denylist::Denylist;
use crate::pipeline::observe_entry;
use crate::position::OplogPosition;
use crate::sources::SourceRecord;
use crate::sources::oplog::ExcludedNamespaces;
use crate::telemetry::metrics::Metrics;
use crate::transform::{Publication, Transformer};

/// Records folded into one batch when the source is ahead.
const MAX_RECORDS_PER_BATCH: usize = 512;

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
    /// Publications kept per standby shard; 0 tails no standby shard.
    pub standby_window: usize,
    /// Whether MongoDB answers this instance: while it does not, the
    /// instance steps aside so its standbys publish its shards.
    pub mongo_reachable: Option<watch::Receiver<bool>>,
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

/// Discovered namespaces are pushed to the source's filter, and standby
/// windows trimmed to their leaders' checkpoints, every this many checkpoint
/// intervals, within [1 s, 5 s] (each push re-issues the query); a takeover
/// pushes at once.
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
            standby_window,
            mut mongo_reachable,
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
            applied_exclusions: Arc::default(),
            shards: BTreeMap::new(),
            windows: BTreeMap::new(),
            window_capacity: standby_window,
            catching_up: HashMap::new(),
            shard_of_namespace: HashMap::new(),
            stream_start: None,
            stream_at: None,
            stream_high: None,
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
                Some(reachable) = next_reachability(&mut mongo_reachable) => {
                    runner.metrics.stepped_aside.set(i64::from(!reachable));
                    coordinator.set_available(reachable);
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
                        runner.trim_windows().await;
                    }
                }
            }
        }
        runner.hand_back_all().await;
        coordinator
    }
}

/// The next change of MongoDB's reachability; never without a watch (or
/// once its sender is gone).
async fn next_reachability(watched: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    let Some(reachable) = watched.as_mut() else {
        return std::future::pending().await;
    };
    if reachable.changed().await.is_err() {
        *watched = None;
        return None;
    }
    Some(*reachable.borrow_and_update())
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
    /// Namespaces seen whose shard this instance neither leads nor stands
    /// by for.
    foreign: BTreeSet<String>,
    foreign_changed: bool,
    last_exclusion_push: Instant,
    /// The list the source's current query leaves out (as it announced).
    applied_exclusions: ExcludedNamespaces,
    /// The shards this instance leads and publishes.
    shards: BTreeMap<ShardId, ShardState>,
    /// The shards this instance stands by for, each with its window.
    windows: BTreeMap<ShardId, StandbyWindow>,
    window_capacity: usize,
    /// Shards taken over whose publishing has not caught up yet.
    catching_up: HashMap<ShardId, CatchUp>,
    shard_of_namespace: HashMap<String, ShardId>,
    /// Where this run's stream began (the source's first position): a shard
    /// nobody ever checkpointed is published from there.
    stream_start: Option<OplogPosition>,
    /// The position of the last record read (it goes back on a rewind).
    stream_at: Option<OplogPosition>,
    /// The newest position ever read.
    stream_high: Option<OplogPosition>,
    /// The transform's latest safe resume position: what checkpoints carry.
    resume: Option<OplogPosition>,
}

/// A takeover in progress, for `redtail_takeover_gap_seconds`.
struct CatchUp {
    since: Instant,
    /// Caught up once a checkpoint of the shard reaches this position.
    target: OplogPosition,
    path: &'static str,
}

/// How a shard taken over resumes.
enum Resumption {
    /// Publish these from the standby window first, then go on live.
    Window(Vec<Publication>),
    /// The source must read again from this checkpoint.
    ReadAgain(OplogPosition),
    /// Nothing to catch up (no checkpoint anywhere yet, or given back).
    Live,
}

impl Runner {
    /// Applies the coordinator's latest assignment: shards lost stop at
    /// once, shards to hand off get a final checkpoint and are released,
    /// new shards are taken over from their checkpoint (from the standby
    /// window when it covers it), and windows follow the standby set.
    async fn follow_assignment(&mut self) {
        let assignment = self.assignment.borrow_and_update().clone();
        self.drop_lost_shards(&assignment);
        for (shard, token) in &assignment.draining {
            self.hand_back(*shard, token.clone()).await;
        }
        let mut rewind_to: Option<OplogPosition> = None;
        let mut from_windows = BTreeMap::new();
        for (shard, token) in &assignment.leading {
            if self.shards.contains_key(shard) {
                continue;
            }
            match self.take_over(*shard, token.clone()).await {
                Resumption::Window(publications) => {
                    from_windows.insert(*shard, publications);
                }
                Resumption::ReadAgain(from) => {
                    rewind_to = Some(rewind_to.map_or(from, |r| r.min(from)));
                }
                Resumption::Live => {}
            }
        }
        self.follow_standby(&assignment.standby);
        // The source must query with new shards' namespaces included before
        // it reads again from their checkpoints, and can drop those of
        // shards handed away at once.
        self.refresh_foreign();
        if let Some(from) = rewind_to {
            let _ = self.rewind.send(from);
        }
        if !from_windows.is_empty() {
            self.publish(from_windows).await;
        }
        self.metrics.shard_leases_held.set(self.shards.len() as i64);
    }

    /// Stops publishing shards whose lease is no longer ours.
    fn drop_lost_shards(&mut self, assignment: &Assignment) {
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
            self.stop_leading(shard);
            self.metrics
                .lease_transitions
                .with_label_values(&["lost"])
                .inc();
            tracing::warn!(%shard, "lost the lease of a shard; stopped publishing it");
        }
    }

    fn stop_leading(&mut self, shard: ShardId) -> Option<ShardState> {
        self.catching_up.remove(&shard);
        let state = self.shards.remove(&shard)?;
        self.report_led(shard, false);
        Some(state)
    }

    /// Keeps a window for every standby shard (when windows are on): a new
    /// one is complete at once unless the source's query leaves some of the
    /// shard's namespaces out, in which case it completes when the source
    /// announces a query without them.
    fn follow_standby(&mut self, standby: &BTreeSet<ShardId>) {
        let wanted: BTreeSet<ShardId> = if self.window_capacity == 0 {
            BTreeSet::new()
        } else {
            standby
                .iter()
                .filter(|shard| !self.shards.contains_key(shard))
                .copied()
                .collect()
        };
        self.windows.retain(|shard, _| wanted.contains(shard));
        let excluded = self.shards_of(&self.applied_exclusions.clone());
        for shard in wanted {
            if self.windows.contains_key(&shard) {
                continue;
            }
            let window = match self.stream_at {
                Some(at) if !excluded.contains(&shard) => {
                    StandbyWindow::complete_from(at, self.window_capacity)
                }
                _ => StandbyWindow::incomplete(self.window_capacity),
            };
            self.windows.insert(shard, window);
        }
        self.report_windows();
    }

    /// Recomputes which known namespaces no shard of ours needs, and pushes
    /// the list to the source when it changed.
    fn refresh_foreign(&mut self) {
        let (led, windows) = (&self.shards, &self.windows);
        let foreign: BTreeSet<String> = self
            .shard_of_namespace
            .iter()
            .filter(|(_, shard)| !led.contains_key(shard) && !windows.contains_key(shard))
            .map(|(namespace, _)| namespace.clone())
            .collect();
        if foreign != self.foreign {
            self.foreign = foreign;
            self.foreign_changed = true;
            self.push_exclusions();
        }
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

    /// Starts publishing `shard` from its checkpoint: from the standby
    /// window when it holds everything after the checkpoint, else by asking
    /// the source to read again from there (it may have read past it with
    /// a query that left this shard's namespaces out).
    async fn take_over(&mut self, shard: ShardId, token: LeaseToken) -> Resumption {
        let window = self.windows.remove(&shard);
        let checkpoint = match self.checkpoint_of(shard).await {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::error!(%shard, %error, "cannot read the shard's checkpoint; giving the shard back");
                self.releaser.drained(shard);
                return Resumption::Live;
            }
        };
        let from_window = checkpoint.zip(window).and_then(|(c, w)| w.take_over(c));
        let (state, resumption, path) = match (checkpoint, from_window) {
            (Some(checkpoint), Some(taken)) => (
                ShardState::resumed_from_window(token, checkpoint, taken.handled_upto),
                Resumption::Window(taken.publications),
                "window",
            ),
            (Some(checkpoint), None) => (
                ShardState::taken_over(token, Some(checkpoint)),
                Resumption::ReadAgain(checkpoint),
                "replay",
            ),
            (None, _) => (ShardState::taken_over(token, None), Resumption::Live, ""),
        };
        if let Some(checkpoint) = checkpoint {
            let target = self
                .stream_high
                .map_or(checkpoint, |high| high.max(checkpoint));
            let since = Instant::now();
            self.catching_up.insert(
                shard,
                CatchUp {
                    since,
                    target,
                    path,
                },
            );
        }
        tracing::info!(%shard, epoch = state.token.epoch, checkpoint = ?checkpoint, path, "took over a shard");
        self.metrics
            .lease_transitions
            .with_label_values(&["acquired"])
            .inc();
        self.report_led(shard, true);
        self.shards.insert(shard, state);
        resumption
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
        if let Some(state) = self.stop_leading(shard)
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

    /// Transforms records and sorts the publications of led shards by
    /// shard; those of standby shards go to their windows.
    fn route(
        &mut self,
        records: impl Iterator<Item = SourceRecord>,
    ) -> BTreeMap<ShardId, Vec<Publication>> {
        let mut batches: BTreeMap<ShardId, Vec<Publication>> = BTreeMap::new();
        for record in records {
            let raw = match record {
                SourceRecord::Rewound(from) => {
                    self.on_rewound(from);
                    continue;
                }
                SourceRecord::Filtered(list) => {
                    self.on_filtered(list);
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
                if let Some(state) = self.shards.get(&shard) {
                    if state.wants(outcome.position) {
                        batches.entry(shard).or_default().push(publication);
                    }
                } else if let Some(window) = self.windows.get_mut(&shard) {
                    if let Some(position) = outcome.position {
                        window.record(position, publication);
                    }
                } else if self.foreign.insert(publication.namespace.clone()) {
                    self.foreign_changed = true;
                }
            }
            if let Some(position) = outcome.position {
                self.shards
                    .values_mut()
                    .for_each(|state| state.handled(position));
                self.windows
                    .values_mut()
                    .for_each(|window| window.advance(position));
                self.stream_at = Some(position);
                self.stream_high = self.stream_high.max(Some(position));
            }
            self.resume = outcome.resume_position.or(self.resume);
        }
        self.report_windows();
        batches
    }

    /// The source reads from just after `from` again (or for the first time).
    fn on_rewound(&mut self, from: OplogPosition) {
        self.stream_start.get_or_insert(from);
        self.stream_at = Some(from);
        self.shards
            .values_mut()
            .for_each(|state| state.replay_started(from));
        // Windows waiting for their first position start here; a Filtered
        // announcement right after corrects those the new query leaves out.
        let excluded = self.shards_of(&self.applied_exclusions.clone());
        for (shard, window) in &mut self.windows {
            if !excluded.contains(shard) {
                window.include_from(from);
            }
        }
    }

    /// The source's query now leaves `list` out: windows of shards with a
    /// namespace in it are no longer complete; the others are from here.
    fn on_filtered(&mut self, list: ExcludedNamespaces) {
        let excluded = self.shards_of(&list);
        self.applied_exclusions = list;
        let stream_at = self.stream_at;
        for (shard, window) in &mut self.windows {
            if excluded.contains(shard) {
                window.invalidate();
            } else if let Some(at) = stream_at {
                window.include_from(at);
            }
        }
    }

    fn shards_of(&mut self, namespaces: &[String]) -> BTreeSet<ShardId> {
        namespaces.iter().map(|ns| self.shard_of(ns)).collect()
    }

    fn shard_of(&mut self, namespace: &str) -> ShardId {
        if let Some(shard) = self.shard_of_namespace.get(namespace) {
            return *shard;
        }
        let shard = self.map.shard_of(namespace);
        self.shard_of_namespace.insert(namespace.to_owned(), shard);
        shard
    }

    /// Drops from each window what its leader's checkpoint already covers,
    /// so windows hold about one lease TTL of changes, not their capacity.
    async fn trim_windows(&mut self) {
        let shards: Vec<ShardId> = self
            .windows
            .iter()
            .filter(|(_, window)| !window.is_empty())
            .map(|(shard, _)| *shard)
            .collect();
        match ::cluster::read_checkpoints(&mut self.connection, &self.keys, &shards).await {
            Ok(checkpoints) => {
                for (shard, checkpoint) in shards.iter().zip(checkpoints) {
                    if let (Some(window), Some(checkpoint)) =
                        (self.windows.get_mut(shard), checkpoint)
                    {
                        window.trim(OplogPosition::from_u64(checkpoint));
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "cannot read standby shards' checkpoints; trimming later")
            }
        }
        self.report_windows();
    }

    /// `redtail_shard_lease_held{shard}`.
    fn report_led(&self, shard: ShardId, led: bool) {
        self.metrics
            .shard_lease_held
            .with_label_values(&[&shard.0.to_string()])
            .set(i64::from(led));
    }

    fn report_windows(&self) {
        self.metrics.standby_shards.set(self.windows.len() as i64);
        let held: usize = self.windows.values().map(StandbyWindow::len).sum();
        self.metrics.standby_window_publications.set(held as i64);
    }

    /// One fenced call per shard, all at once; a FENCED reply stops that
    /// shard immediately.
    async fn publish(&mut self, batches: BTreeMap<ShardId, Vec<Publication>>) {
        let checkpoint = self.resume;
        let calls = batches
            .into_iter()
            .filter_map(|(shard, publications)| {
                let token = self.shards.get(&shard)?.token.clone();
                Some(ShardCall {
                    shard,
                    token,
                    publications,
                    checkpoint,
                })
            })
            .collect();
        self.run_calls(calls).await;
    }

    /// Moves idle shards' checkpoints along with the stream.
    async fn checkpoint_idle_shards(&mut self) {
        let Some(resume) = self.resume else { return };
        let calls = self
            .shards
            .iter()
            .filter(|(_, state)| {
                state.awaiting_replay_from.is_none()
                    && state.checkpointed.is_none_or(|c| c < resume)
            })
            .map(|(shard, state)| ShardCall {
                shard: *shard,
                token: state.token.clone(),
                publications: Vec::new(),
                checkpoint: Some(resume),
            })
            .collect();
        self.run_calls(calls).await;
    }

    /// Runs the calls concurrently on the shared connection, then applies
    /// their outcomes.
    async fn run_calls(&mut self, calls: Vec<ShardCall>) {
        let running = calls.into_iter().map(|call| {
            call.run(
                self.connection.clone(),
                &self.fenced,
                &self.keys,
                &self.metrics,
                self.max_outage,
            )
        });
        let results = futures_util::future::join_all(running).await;
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
                        self.caught_up(shard, checkpoint);
                    }
                }
                CallResult::Fenced => {
                    self.stop_leading(shard);
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
        self.report_checkpoint_age();
    }

    /// Observes the takeover gap of `shard` once a checkpoint reaches where
    /// the stream was when it was taken over.
    fn caught_up(&mut self, shard: ShardId, checkpoint: OplogPosition) {
        if self
            .catching_up
            .get(&shard)
            .is_some_and(|c| checkpoint >= c.target)
            && let Some(done) = self.catching_up.remove(&shard)
        {
            let gap = done.since.elapsed();
            self.metrics
                .takeover_gap
                .with_label_values(&[done.path])
                .observe(gap.as_secs_f64());
            tracing::info!(%shard, path = done.path, gap_ms = gap.as_millis() as u64, "shard caught up after takeover");
        }
    }

    /// `redtail_checkpoint_age_seconds`: the age of the oldest checkpoint
    /// among led shards (how far behind the furthest-behind one is).
    fn report_checkpoint_age(&self) {
        let oldest = self.shards.values().filter_map(|s| s.checkpointed).min();
        if let Some(oldest) = oldest {
            let age = oldest.age_seconds(crate::telemetry::unix_millis());
            self.metrics.checkpoint_age.set(age);
        }
    }
}
