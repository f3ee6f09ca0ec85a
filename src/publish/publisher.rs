//! The publisher: delivers queued batches to every Redis destination.
//!
//! Shape: [`Publisher::run`] reads the pipeline's channel and fans every batch
//! out to one loop per destination, each behind its own bounded queue
//! (`destination_queue` batches). A slow or failing destination therefore
//! does not hold the others back until its queue is full; past that, the
//! fan-out waits, which backpressures the tail instead of growing memory or
//! dropping changes.
//!
//! Each destination loop:
//! - cuts queued batches into script calls of up to `batch_size` publications,
//!   without waiting for more (see [`super::call_queue`]);
//! - keeps up to `max_in_flight` calls on one multiplexed connection of its
//!   own (health probes use another). Each call is written to the socket
//!   before the next is created, and Redis runs commands in arrival order, so
//!   publications keep their order. The connection is only replaced while
//!   nothing is in flight: calls split over two connections could run out of
//!   order;
//! - acknowledges calls strictly in order. When one fails it stops sending,
//!   collects the replies of the calls already sent, then retries each failed
//!   call in order (100 ms doubling to 1 s) until it succeeds or has been
//!   failing for `max_outage`, when it is dropped and counted `failed`. A later
//!   call that had already succeeded is kept as is (the dedup key makes a
//!   replay of the earlier one safe), so only a server-side error on one call
//!   that spares the next could reorder, not a lost or stalled connection;
//! - writes the position of the newest acknowledged call (every earlier call
//!   acknowledged too) to `lastProcessedEntry.<ordinal>` on its own Redis, at
//!   most once per `flush_interval`, and once more when it stops.
//!
//! Shutdown: on cancellation (or when the pipeline drops its sender) the
//! fan-out stops taking new batches, forwards what was already queued, and
//! every destination loop publishes all of it and flushes its position
//! before [`Publisher::run`] returns.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::sync::CancellationToken;

use super::PublishBatch;
use super::call_queue::{Call, CallQueue};
use super::dedup_script::{DedupScript, Outcome};
use super::error::PublishError;
use super::position_store::PositionStore;
use super::settings::PublisherSettings;
use super::target::Target;
use crate::position::OplogPosition;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::traces::{DestinationTracer, PublishTracer, TracedMessage};
use crate::telemetry::unix_millis;

/// First pause after a failed call; doubled per retry up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries (oplogtoredis retries every 1 s).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Attempts at the final position write on shutdown.
const FINAL_FLUSH_ATTEMPTS: u32 = 3;

/// The publish stage. Cheap to clone: the HTTP health probe keeps a clone
/// while [`Publisher::run`] works.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    settings: PublisherSettings,
    /// For health probes and the position store.
    targets: Vec<Arc<Target>>,
    /// The same destinations again, one connection each for the publishing
    /// loops alone, so a health probe can never swap a connection that has
    /// calls in flight (calls on two connections could run out of order).
    publishing_targets: Vec<Arc<Target>>,
    script: DedupScript,
    metrics: Metrics,
    /// `None` when tracing is off: then acknowledging a call costs one branch.
    tracer: Option<PublishTracer>,
}

impl Publisher {
    /// Validates the settings and parses every URL; no I/O, so a bad URL or
    /// setting fails at start with an error naming it (password redacted).
    /// Spans go to the tracer set up by
    /// [`install_from_env`](crate::telemetry::traces::install_from_env), if any.
    pub fn new(settings: PublisherSettings, metrics: Metrics) -> Result<Self, PublishError> {
        Self::with_tracer(settings, metrics, PublishTracer::installed())
    }

    /// [`Publisher::new`] with an explicit tracer (or none), so tests can
    /// capture spans without touching process-wide state.
    pub fn with_tracer(
        settings: PublisherSettings,
        metrics: Metrics,
        tracer: Option<PublishTracer>,
    ) -> Result<Self, PublishError> {
        settings.validate()?;
        let options = settings.target_options()?;
        let parse_all = || {
            settings
                .redis_urls
                .iter()
                .map(|url| Target::new(url, &options).map(Arc::new))
                .collect::<Result<Vec<_>, _>>()
        };
        let (targets, publishing_targets) = (parse_all()?, parse_all()?);
        let script = DedupScript::new(
            &settings.metadata_prefix,
            settings.dedupe_expiration.as_secs(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                settings,
                targets,
                publishing_targets,
                script,
                metrics,
                tracer,
            }),
        })
    }

    /// The destinations' URLs, passwords redacted, in configuration order.
    pub fn destinations(&self) -> Vec<String> {
        self.shared
            .targets
            .iter()
            .map(|t| t.redacted_url().to_string())
            .collect()
    }

    /// The position keys of the FIRST Redis URL, where the source reads its
    /// resume position (as oplogtoredis does). Shares that destination's connection.
    pub fn position_store(&self) -> PositionStore {
        let first = Arc::clone(&self.shared.targets[0]);
        PositionStore::new(
            first,
            &self.shared.settings.metadata_prefix,
            self.shared.settings.resume_read,
        )
    }

    /// PINGs every destination concurrently: `true` when all answer. For
    /// `/healthz`'s `redisOK` and the start-up check.
    pub async fn ping_all(&self) -> bool {
        let pings = self.shared.targets.iter().map(|target| async move {
            match target.ping().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "Redis health check failed");
                    false
                }
            }
        });
        futures_util::future::join_all(pings)
            .await
            .into_iter()
            .all(|ok| ok)
    }

    /// Publishes everything received on `input` until `shutdown` is cancelled or
    /// `input` closes; then drains what was queued, flushes the positions and
    /// returns. Run it once per `Publisher`.
    pub async fn run(&self, mut input: mpsc::Receiver<PublishBatch>, shutdown: CancellationToken) {
        let shared = &self.shared;
        let mut queues = Vec::with_capacity(shared.targets.len());
        let mut loops = Vec::with_capacity(shared.targets.len());
        for target in &shared.publishing_targets {
            let (sender, receiver) = mpsc::channel(shared.settings.destination_queue);
            queues.push(sender);
            loops.push(DestinationLoop::new(shared, Arc::clone(target), receiver).run());
        }
        let fan_out = async move {
            let mut closing = false;
            loop {
                let batch = tokio::select! {
                    biased;
                    () = shutdown.cancelled(), if !closing => {
                        // Stop accepting, but keep what the tail already queued.
                        input.close();
                        closing = true;
                        continue;
                    }
                    batch = input.recv() => batch,
                };
                let Some(batch) = batch else { break };
                let batch = Arc::new(batch);
                for queue in &queues {
                    // A destination loop only ends after its queue closes, so
                    // this cannot fail; ignoring it would be harmless anyway.
                    let _ = queue.send(Arc::clone(&batch)).await;
                }
            }
            drop(queues);
        };
        futures_util::future::join(fan_out, futures_util::future::join_all(loops)).await;
    }
}

/// What came back from one attempt at a call.
struct Reply {
    result: Result<Vec<i64>, PublishError>,
    elapsed: Duration,
}

type PendingReply = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Delivery to one destination.
struct DestinationLoop {
    target: Arc<Target>,
    script: DedupScript,
    metrics: Metrics,
    tracer: Option<DestinationTracer>,
    positions: PositionStore,
    ordinal: u32,
    ordinal_label: String,
    max_in_flight: usize,
    flush_interval: Duration,
    max_outage: Duration,
    input: mpsc::Receiver<Arc<PublishBatch>>,
    input_open: bool,
    queue: CallQueue,
    in_flight: VecDeque<Call>,
    replies: FuturesOrdered<PendingReply>,
    acknowledged: Option<OplogPosition>,
    flushed: Option<OplogPosition>,
}

impl DestinationLoop {
    fn new(shared: &Shared, target: Arc<Target>, input: mpsc::Receiver<Arc<PublishBatch>>) -> Self {
        let settings = &shared.settings;
        Self {
            positions: PositionStore::new(
                Arc::clone(&target),
                &settings.metadata_prefix,
                settings.resume_read,
            ),
            tracer: shared
                .tracer
                .as_ref()
                .map(|tracer| tracer.for_destination(target.redacted_url())),
            target,
            script: shared.script.clone(),
            metrics: shared.metrics.clone(),
            ordinal: settings.ordinal,
            ordinal_label: settings.ordinal.to_string(),
            max_in_flight: settings.max_in_flight,
            flush_interval: settings.flush_interval,
            max_outage: settings.max_outage,
            input,
            input_open: true,
            queue: CallQueue::new(settings.batch_size),
            in_flight: VecDeque::new(),
            replies: FuturesOrdered::new(),
            acknowledged: None,
            flushed: None,
        }
    }

    async fn run(mut self) {
        let start = tokio::time::Instant::now() + self.flush_interval;
        let mut flush_timer = tokio::time::interval_at(start, self.flush_interval);
        flush_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Loading up front spares the first pipelined calls a NOSCRIPT round;
        // if Redis is down now, the retry path loads it later.
        if let Err(e) = self.load_script().await {
            tracing::warn!(error = %e, "cannot reach Redis yet; publications will be retried");
        }
        loop {
            self.send_what_fits().await;
            if self.in_flight.is_empty() && self.queue.is_empty() && !self.input_open {
                break;
            }
            let room = self.in_flight.len() < self.max_in_flight;
            tokio::select! {
                Some(reply) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(reply).await;
                }
                batch = self.input.recv(), if self.input_open && room && self.queue.is_empty() => {
                    match batch {
                        Some(batch) => self.queue.push(batch),
                        None => self.input_open = false,
                    }
                }
                _ = flush_timer.tick() => {
                    self.flush_position().await;
                }
            }
        }
        self.final_flush().await;
    }

    /// Sends calls while there is room and something queued (or already in
    /// the channel): never waits for more.
    async fn send_what_fits(&mut self) {
        while self.in_flight.len() < self.max_in_flight {
            let input = &mut self.input;
            let input_open = &mut self.input_open;
            let next = self.queue.next_call(|| match input.try_recv() {
                Ok(batch) => Some(batch),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    *input_open = false;
                    None
                }
            });
            let Some(call) = next else { break };
            let (reply, unreachable) = self.send(&call).await;
            self.in_flight.push_back(call);
            self.replies.push_back(reply);
            if unreachable {
                // No point queueing more connection attempts behind this one.
                break;
            }
        }
    }

    /// Starts `call` and makes sure it is on its way to Redis before returning,
    /// so calls reach the socket in the order they were made. The flag is set
    /// when Redis could not even be connected to.
    async fn send(&mut self, call: &Call) -> (PendingReply, bool) {
        if call.is_empty() {
            let reply = Reply {
                result: Ok(Vec::new()),
                elapsed: Duration::ZERO,
            };
            return (ready(reply), false);
        }
        let lease = match self.target.connection().await {
            Ok(lease) => lease,
            Err(e) => {
                return (
                    ready(Reply {
                        result: Err(e),
                        elapsed: Duration::ZERO,
                    }),
                    true,
                );
            }
        };
        let command = self.script.call_command(call.publications());
        let target = Arc::clone(&self.target);
        let mut pending: PendingReply = Box::pin(async move {
            let started = Instant::now();
            let result = target.query_on(&lease, &command, "publish").await;
            Reply {
                result,
                elapsed: started.elapsed(),
            }
        });
        // One poll hands the command to the connection's writer queue.
        match futures_util::poll!(pending.as_mut()) {
            Poll::Ready(reply) => (ready(reply), false),
            Poll::Pending => (pending, false),
        }
    }

    async fn on_reply(&mut self, reply: Reply) {
        let call = self
            .in_flight
            .pop_front()
            .expect("one call per pending reply");
        match reply.result {
            Ok(flags) => self.acknowledge(&call, &flags, reply.elapsed),
            Err(error) => self.recover(call, error, Instant::now()).await,
        }
    }

    /// The head call failed: stop sending, collect the replies of every call
    /// already sent, then settle each call in order.
    async fn recover(&mut self, failed: Call, error: PublishError, failed_at: Instant) {
        if !error.is_noscript() {
            tracing::warn!(
                redis = self.target.redacted_url(),
                error = %error,
                publications = failed.len(),
                "publishing to Redis failed; retrying"
            );
        }
        let mut outcomes = vec![(failed, Err(error), Duration::ZERO, failed_at)];
        while let Some(reply) = self.replies.next().await {
            let call = self
                .in_flight
                .pop_front()
                .expect("one call per pending reply");
            outcomes.push((call, reply.result, reply.elapsed, Instant::now()));
        }
        for (call, result, elapsed, answered_at) in outcomes {
            match result {
                Ok(flags) => self.acknowledge(&call, &flags, elapsed),
                Err(error) => self.retry(&call, error, answered_at).await,
            }
        }
    }

    /// Retries `call` alone (nothing else is in flight) until it succeeds or
    /// has been failing for `max_outage` (counted from `failing_since`).
    async fn retry(&mut self, call: &Call, mut error: PublishError, failing_since: Instant) {
        let mut backoff = FIRST_BACKOFF;
        let mut reloads = 0u32;
        let mut retries = 0u32;
        loop {
            let failing_for = failing_since.elapsed();
            if failing_for >= self.max_outage {
                self.drop_call(call, &error, retries);
                return;
            }
            let missing_script = error.is_noscript();
            // The first NOSCRIPT is routine (restart, failover, SCRIPT FLUSH):
            // reload and retry at once. Anything else is an outage: back off.
            if !missing_script || reloads > 0 {
                self.metrics
                    .temporary_send_failures
                    .inc_by(call.len() as u64);
                tracing::debug!(redis = self.target.redacted_url(), error = %error, "retrying a publish call");
                tokio::time::sleep(backoff.min(self.max_outage - failing_for)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            if missing_script {
                reloads += 1;
                if let Err(e) = self.load_script().await {
                    error = e;
                    continue;
                }
            } else {
                // Nothing else is in flight, so a new connection cannot reorder.
                self.target.reset().await;
            }
            retries += 1;
            let started = Instant::now();
            match self.send(call).await.0.await.result {
                Ok(flags) => {
                    if !missing_script {
                        tracing::info!(
                            redis = self.target.redacted_url(),
                            retries,
                            "publishing to Redis recovered"
                        );
                    }
                    self.acknowledge(call, &flags, started.elapsed());
                    return;
                }
                Err(e) => error = e,
            }
        }
    }

    async fn load_script(&mut self) -> Result<(), PublishError> {
        self.target
            .query::<String>(&self.script.load_command(), "SCRIPT LOAD")
            .await
            .map(drop)
    }

    fn acknowledge(&mut self, call: &Call, flags: &[i64], elapsed: Duration) {
        if call.is_empty() {
            self.advance(call.resume);
            return;
        }
        let outcomes = match DedupScript::parse_reply(flags, call.len()) {
            Ok(outcomes) => outcomes,
            Err(reason) => {
                let error = PublishError::UnexpectedReply {
                    url: self.target.redacted_url().to_string(),
                    detail: reason,
                };
                self.drop_call(call, &error, 0);
                return;
            }
        };
        let label = self.ordinal_label.as_str();
        self.metrics
            .redis_batch_size
            .with_label_values(&[label])
            .observe(call.len() as f64);
        self.metrics
            .redis_command_duration
            .with_label_values(&[label])
            .observe(elapsed.as_secs_f64());
        let now_ms = unix_millis();
        let delivered = call
            .publications()
            .zip(&outcomes)
            .map(|(p, &outcome)| (p, outcome == Outcome::Published));
        self.metrics.record_acknowledged(label, now_ms, delivered);
        if let Some(tracer) = &self.tracer {
            let messages = call.publications().zip(&outcomes).map(|(p, &outcome)| {
                let mut message = traced(p);
                message.duplicate = outcome == Outcome::Duplicate;
                message
            });
            tracer.acknowledged(messages, now_ms, elapsed);
        }
        self.advance(call.resume);
    }

    fn drop_call(&self, call: &Call, error: &PublishError, retries: u32) {
        self.metrics
            .processed_messages
            .with_label_values(&["failed"])
            .inc_by(call.len() as u64);
        let first = call.publications().next();
        tracing::error!(
            redis = self.target.redacted_url(),
            error = %error,
            retries,
            publications = call.len(),
            first_origin = first.map(|p| p.origin.to_string()),
            first_namespace = first.map(|p| p.namespace.as_str()),
            "giving up on publishing to Redis; these changes are lost for this destination"
        );
        if let Some(tracer) = &self.tracer {
            let error_type = match error {
                PublishError::Timeout { .. } => "timeout",
                PublishError::Redis { .. } => "redis_error",
                PublishError::UnexpectedReply { .. } => "unexpected_reply",
                _ => "_OTHER",
            };
            let messages = call.publications().map(traced);
            tracer.failed(messages, unix_millis(), error_type, error.to_string());
        }
    }

    fn advance(&mut self, resume: Option<OplogPosition>) {
        if let Some(position) = resume {
            self.acknowledged = Some(self.acknowledged.map_or(position, |p| p.max(position)));
        }
    }

    /// Writes the acknowledged position if it moved since the last write.
    /// Runs on the publishing connection but never resets it: calls may be in
    /// flight, and a failed write is simply tried again at the next tick.
    async fn flush_position(&mut self) -> bool {
        let Some(position) = self.acknowledged else {
            return true;
        };
        if self.flushed.is_some_and(|flushed| flushed >= position) {
            return true;
        }
        let command = self.positions.write_command(self.ordinal, position);
        let written = match self.target.connection().await {
            Ok(lease) => {
                self.target
                    .query_on::<()>(&lease, &command, "SET lastProcessedEntry")
                    .await
            }
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => {
                self.flushed = Some(position);
                let age = position.age_seconds(unix_millis());
                self.metrics.checkpoint_age.set(age);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "writing the resume position failed; will retry");
                false
            }
        }
    }

    async fn final_flush(&mut self) {
        for attempt in 0..FINAL_FLUSH_ATTEMPTS {
            if self.flush_position().await {
                return;
            }
            tokio::time::sleep(FIRST_BACKOFF * (attempt + 1)).await;
        }
        tracing::error!(
            redis = self.target.redacted_url(),
            "could not write the final resume position; a restart will replay (deduplicated) changes"
        );
    }
}

/// What a span needs to know about `publication`.
fn traced(publication: &crate::transform::Publication) -> TracedMessage<'_> {
    TracedMessage {
        namespace: &publication.namespace,
        wall_ms: publication.wall_ms,
        duplicate: false,
        id: (publication.origin.as_u64(), publication.tx_index),
    }
}

fn ready(reply: Reply) -> PendingReply {
    Box::pin(std::future::ready(reply))
}
