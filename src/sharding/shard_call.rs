//! One shard's share of a batch: a fenced publish call, retried through
//! transient Redis failures like the single-instance publisher, stopped at
//! once by FENCED.

use std::time::Duration;

use ::cluster::{ClusterKeys, FencedPublisher, LeaseToken, PublishItem, ShardId};
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::position::OplogPosition;
use crate::telemetry::metrics::Metrics;
use crate::transform::Publication;

/// Pause after the first failed publish; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The `ordinal` label of cluster-mode staleness metrics (there are no
/// write lanes: shards are published concurrently instead).
const CLUSTER_LANE: &str = "cluster";

/// One shard's share of a batch.
pub(super) struct ShardCall {
    pub shard: ShardId,
    pub token: LeaseToken,
    pub publications: Vec<Publication>,
    pub checkpoint: Option<OplogPosition>,
}

/// How one shard's call ended.
pub(super) enum CallResult {
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
    pub async fn run(
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
        let now_ms = crate::telemetry::unix_millis();
        let delivered = self.publications.iter().zip(published.iter().copied());
        metrics.record_acknowledged(CLUSTER_LANE, now_ms, delivered);
    }
}
