//! The pipeline: source -> transform -> publish, each stage a task joined to
//! the next by a bounded channel, so a slow Redis slows the reading of the
//! oplog instead of filling memory.
//!
//! Shutdown flows downstream: the source stops reading when asked, the
//! transform stage finishes what the source handed it, and each publisher
//! lane drains its queue and flushes its position before returning.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::RawDocument;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::denylist::Denylist;
use crate::position::OplogPosition;
use crate::publish::{PublishBatch, Publisher};
use crate::sharding::{ShardedPublishing, ShardedStage};
use crate::sources::oplog::OplogSource;
use crate::sources::start::StartPlan;
use crate::sources::{SourceError, SourceRecord};
use crate::telemetry::metrics::Metrics;
use crate::transform::{EntryOutcome, Publication, SkipReason, Transformer};

/// How many records the transform stage folds into one batch per lane when
/// the source is ahead (bigger batches mean fewer Redis round trips).
const MAX_RECORDS_PER_BATCH: usize = 512;

/// Everything a running relay is made of, built by `main` from the configuration.
pub struct Relay {
    /// Reads the oplog.
    pub source: OplogSource,
    /// Where the source starts.
    pub start: StartPlan,
    /// Turns entries into publications.
    pub transformer: Transformer,
    /// Databases whose changes are not published.
    pub denylist: Denylist,
    /// How publications reach Redis.
    pub publishing: Publishing,
    /// Capacity of the channels between stages (`OTR_BUFFER_SIZE`).
    pub buffer: usize,
    /// How long draining may take after shutdown is requested.
    pub grace: Duration,
    /// Metrics shared by every stage.
    pub metrics: Metrics,
}

/// The two ways of publishing.
pub enum Publishing {
    /// Every change, deduplicated: one instance, or oplogtoredis-style HA.
    /// One publisher per write lane (`OTR_WRITE_PARALLELISM`); lane `n` keeps
    /// its position under `lastProcessedEntry.<n>`.
    Lanes(Vec<Publisher>),
    /// Cluster mode: only the shards this instance leads, fenced by lease.
    Sharded(ShardedPublishing),
}

/// Why the relay stopped other than by request.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source gave up.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stage's task panicked or was cancelled.
    #[error("the {stage} stage failed: {source}")]
    Task {
        /// Which stage.
        stage: &'static str,
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

impl Relay {
    /// Runs until `shutdown` is cancelled (then drains within the grace
    /// period) or a stage fails. `ready` turns true once the source is
    /// positioned, so writes made after it are certain to be relayed.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Arc<AtomicBool>,
    ) -> Result<(), PipelineError> {
        let (records_tx, records_rx) = mpsc::channel(self.buffer.max(1));
        let source = self.source.with_ready(ready);
        let grace = self.grace;
        match self.publishing {
            Publishing::Lanes(lanes) => {
                let stage = TransformStage {
                    transformer: self.transformer,
                    denylist: self.denylist,
                    lanes: Vec::new(),
                    lane_of_db: HashMap::new(),
                    metrics: self.metrics,
                };
                let source_run = source.run(self.start, records_tx, shutdown);
                run_lanes(stage, lanes, records_rx, source_run, self.buffer, grace).await
            }
            Publishing::Sharded(publishing) => {
                let (rewind_tx, rewind_rx) = mpsc::unbounded_channel();
                let (excluded_tx, excluded_rx) = tokio::sync::watch::channel(Default::default());
                let stage = ShardedStage {
                    transformer: self.transformer,
                    denylist: self.denylist,
                    metrics: self.metrics,
                    publishing,
                    rewind: rewind_tx,
                    excluded: excluded_tx,
                };
                let stage_task = tokio::spawn(stage.run(records_rx));
                let source = source
                    .with_rewind(rewind_rx)
                    .with_excluded_namespaces(excluded_rx);
                let source_result = source.run(self.start, records_tx, shutdown).await;
                // The stage finishes what the source read, checkpoints and
                // reports every shard drained; then the leases are released
                // and standbys take over at once.
                let handed_back = tokio::time::timeout(grace, async {
                    let coordinator = join("sharded publish", stage_task).await?;
                    if let Err(error) = coordinator.shutdown().await {
                        tracing::warn!(%error, "leaving the cluster cleanly failed; leases will expire");
                    }
                    Ok::<(), PipelineError>(())
                })
                .await;
                match handed_back {
                    Ok(result) => result?,
                    Err(_) => tracing::error!(
                        ?grace,
                        "handing shards back did not finish within the grace period"
                    ),
                }
                source_result.map_err(PipelineError::from)
            }
        }
    }
}

/// Runs the single-instance publishing lanes next to the source.
async fn run_lanes(
    mut stage: TransformStage,
    lanes: Vec<Publisher>,
    records: mpsc::Receiver<SourceRecord>,
    source_run: impl std::future::Future<Output = Result<(), SourceError>>,
    buffer: usize,
    grace: Duration,
) -> Result<(), PipelineError> {
    // Publishers stop when their input closes, after the transform stage
    // has handed over everything; this token only cuts a drain that
    // overruns the grace period.
    let drain_deadline = CancellationToken::new();
    let mut lane_tasks = Vec::with_capacity(lanes.len());
    // OTR_BUFFER_SIZE counts publications; each batch carries up to
    // MAX_RECORDS_PER_BATCH entries' worth, so the queue holds that many fewer.
    let lane_capacity = (buffer / MAX_RECORDS_PER_BATCH).max(2);
    for publisher in lanes {
        let (tx, rx) = mpsc::channel(lane_capacity);
        stage.lanes.push(tx);
        let token = drain_deadline.clone();
        lane_tasks.push(tokio::spawn(async move { publisher.run(rx, token).await }));
    }
    let transform_task = tokio::spawn(stage.run(records));
    let source_result = source_run.await;
    let drained = tokio::time::timeout(grace, async {
        join("transform", transform_task).await?;
        for task in lane_tasks {
            join("publish", task).await?;
        }
        Ok::<(), PipelineError>(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => {
            tracing::error!(
                ?grace,
                "draining did not finish within the grace period; stopping"
            );
            drain_deadline.cancel();
        }
    }
    source_result.map_err(PipelineError::from)
}

async fn join<T>(stage: &'static str, task: JoinHandle<T>) -> Result<T, PipelineError> {
    task.await
        .map_err(|source| PipelineError::Task { stage, source })
}

/// The transform stage's state: the transformer, the denylist and the lanes.
struct TransformStage {
    transformer: Transformer,
    denylist: Denylist,
    lanes: Vec<mpsc::Sender<PublishBatch>>,
    lane_of_db: HashMap<String, usize>,
    metrics: Metrics,
}

impl TransformStage {
    async fn run(mut self, mut records: mpsc::Receiver<SourceRecord>) {
        let mut buffer = Vec::with_capacity(MAX_RECORDS_PER_BATCH);
        while records.recv_many(&mut buffer, MAX_RECORDS_PER_BATCH).await > 0 {
            let mut batches = vec![Vec::new(); self.lanes.len()];
            let mut resume = None;
            for record in buffer.drain(..) {
                // Without shards nothing asks the source to rewind.
                let SourceRecord::OplogEntry(raw) = record else {
                    continue;
                };
                let outcome = self.transformer.apply(&raw);
                observe_entry(&self.metrics, &raw, &outcome);
                resume = outcome.resume_position.or(resume);
                for publication in outcome.publications {
                    if !self.denylist.skip_if_denied(publication.database()) {
                        let lane = self.lane(publication.database());
                        batches[lane].push(publication);
                    }
                }
            }
            if !self.send(batches, resume).await {
                tracing::error!("a publisher lane stopped; the transform stage stops too");
                return;
            }
        }
    }

    /// Hands each lane its publications. Every lane gets the resume position,
    /// so a lane without traffic still moves its position forward.
    async fn send(&self, batches: Vec<Vec<Publication>>, resume: Option<OplogPosition>) -> bool {
        for (lane, publications) in self.lanes.iter().zip(batches) {
            if publications.is_empty() && resume.is_none() {
                continue;
            }
            let batch = PublishBatch {
                publications,
                resume_position: resume,
            };
            if lane.send(batch).await.is_err() {
                return false;
            }
        }
        true
    }

    /// oplogtoredis's lane function, so a database keeps the lane (and the
    /// order) it had there: SHA-256 of the name, last 8 bytes little-endian
    /// as a signed integer, Euclidean remainder.
    fn lane(&mut self, database: &str) -> usize {
        let lanes = self.lanes.len();
        if lanes == 1 {
            return 0;
        }
        if let Some(&lane) = self.lane_of_db.get(database) {
            return lane;
        }
        let lane = lane_for_database(database, lanes);
        self.lane_of_db.insert(database.to_owned(), lane);
        lane
    }
}

/// Metrics and logs for one entry, the same in every publishing mode.
pub(crate) fn observe_entry(metrics: &Metrics, raw: &RawDocument, outcome: &EntryOutcome) {
    let database = raw
        .get_str("ns")
        .ok()
        .map(|ns| ns.split_once('.').map_or(ns, |(db, _)| db))
        .unwrap_or("");
    let size = raw.as_bytes().len();
    let status = entry_status(outcome);
    let m = metrics;
    m.entries_received
        .with_label_values(&[database, status])
        .inc();
    m.entries_received_size
        .with_label_values(&[database])
        .inc_by(size as u64);
    m.entries_by_size
        .with_label_values(&[database, status])
        .observe(size as f64);
    if outcome.unprocessable_fields > 0 {
        m.unprocessable_changed_fields
            .inc_by(u64::from(outcome.unprocessable_fields));
    }
    if let Some(wall) = outcome.wall_ms {
        let age_ns = (crate::telemetry::unix_millis() - wall).max(0) as f64 * 1e6;
        m.last_received_staleness
            .with_label_values(&["0"])
            .set(age_ns);
    }
    for reason in outcome.skip_reasons() {
        report_skip(m, reason, outcome.position);
    }
}

/// oplogtoredis's statuses: `processed` (something published), `error`
/// (could not be read or encoded), `ignored` (nothing to publish).
fn entry_status(outcome: &EntryOutcome) -> &'static str {
    match outcome.skip.as_ref().map(|s| &s.reason) {
        None => "processed",
        Some(
            SkipReason::Malformed(_) | SkipReason::UnsupportedId(_) | SkipReason::UnsupportedOp(_),
        ) => "error",
        Some(_) => "ignored",
    }
}

fn report_skip(metrics: &Metrics, reason: &SkipReason, position: Option<OplogPosition>) {
    let at = position.map(|p| p.to_string()).unwrap_or_default();
    match reason {
        SkipReason::Malformed(_) | SkipReason::UnsupportedOp(_) => {
            metrics
                .malformed_entries
                .with_label_values(&[reason.label()])
                .inc();
            tracing::warn!(position = %at, %reason, "skipping an oplog entry that cannot be read");
        }
        SkipReason::UnsupportedId(_) => {
            metrics.unencodable_ids.inc();
            tracing::warn!(position = %at, %reason, "skipping a change whose _id cannot be published");
        }
        SkipReason::UnknownTransaction => {
            tracing::error!(
                position = %at,
                "a prepared transaction committed whose prepare entry precedes this tail's start; \
                 its changes are not published"
            );
        }
        _ => tracing::trace!(position = %at, %reason, "entry publishes nothing"),
    }
}

/// The lane of a database among `lanes`, as oplogtoredis computes it.
pub fn lane_for_database(database: &str, lanes: usize) -> usize {
    let digest = Sha256::digest(database.as_bytes());
    let tail: [u8; 8] = digest[24..32]
        .try_into()
        .expect("a SHA-256 digest has 32 bytes");
    let key = i64::from_le_bytes(tail);
    key.rem_euclid(lanes as i64) as usize
}

/// Marks the relay ready; kept here so the source's notion of "positioned"
/// and `/readyz` agree.
pub fn mark_ready(flag: &AtomicBool) {
    flag.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_match_oplogtoredis() {
        // oplogtoredis's test vector: "foo" hashes to -5843589418109203719.
        let digest = Sha256::digest(b"foo");
        let key = i64::from_le_bytes(digest[24..32].try_into().unwrap());
        assert_eq!(key, -5843589418109203719);
        assert_eq!(lane_for_database("foo", 1), 0);
        assert_eq!(
            lane_for_database("foo", 7),
            (-5843589418109203719i64).rem_euclid(7) as usize
        );
        for lanes in 1..10 {
            assert!(lane_for_database("anything", lanes) < lanes);
        }
    }
}
