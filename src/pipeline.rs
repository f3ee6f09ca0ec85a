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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::RawDocument;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::denylist::Denylist;
use crate::position::OplogPosition;
use crate::publish::{PublishBatch, Publisher};
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
    /// One publisher per write lane (`OTR_WRITE_PARALLELISM`); lane `n` keeps
    /// its position under `lastProcessedEntry.<n>`.
    pub lanes: Vec<Publisher>,
    /// Capacity of the channels between stages (`OTR_BUFFER_SIZE`).
    pub buffer: usize,
    /// How long draining may take after shutdown is requested.
    pub grace: Duration,
    /// Metrics shared by every stage.
    pub metrics: Metrics,
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
        // Publishers stop when their input closes, after the transform stage
        // has handed over everything; this token only cuts a drain that
        // overruns the grace period.
        let drain_deadline = CancellationToken::new();
        let mut lane_inputs = Vec::with_capacity(self.lanes.len());
        let mut lane_tasks = Vec::with_capacity(self.lanes.len());
        for publisher in self.lanes {
            let (tx, rx) = mpsc::channel(self.buffer.max(1));
            lane_inputs.push(tx);
            let token = drain_deadline.clone();
            lane_tasks.push(tokio::spawn(async move { publisher.run(rx, token).await }));
        }
        let stage = TransformStage {
            transformer: self.transformer,
            denylist: self.denylist,
            lanes: lane_inputs,
            lane_of_db: HashMap::new(),
            metrics: self.metrics,
        };
        let transform_task = tokio::spawn(stage.run(records_rx));
        let source = self.source.with_ready(ready);
        let source_result = source.run(self.start, records_tx, shutdown.clone()).await;

        let grace = self.grace;
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
                let SourceRecord::OplogEntry(raw) = record;
                let outcome = self.transformer.apply(&raw);
                self.observe(&raw, &outcome);
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

    /// Metrics and logs for one entry.
    fn observe(&self, raw: &RawDocument, outcome: &EntryOutcome) {
        let database = raw
            .get_str("ns")
            .ok()
            .map(|ns| ns.split_once('.').map_or(ns, |(db, _)| db))
            .unwrap_or("");
        let size = raw.as_bytes().len();
        let status = entry_status(outcome);
        let m = &self.metrics;
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
            let age_ns = (now_ms() - wall).max(0) as f64 * 1e6;
            m.last_received_staleness
                .with_label_values(&["0"])
                .set(age_ns);
        }
        for reason in outcome.skip_reasons() {
            report_skip(m, reason, outcome.position);
        }
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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
