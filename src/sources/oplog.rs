//! The oplog tailer: `local.oplog.rs`, `ts` ordered, tailable await cursor.
//!
//! It is oplogtoredis-compatible in what it reads (every entry, natural
//! order) and stricter in what it notices: each (re)query asks for
//! `ts >= last` and checks that the first entry returned is `last` itself, so
//! a position that fell off the capped oplog is reported as a loss instead of
//! silently skipped.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use bson::{RawDocument, Timestamp, doc};
use mongodb::options::{ClientOptions, CursorType};
use mongodb::{Client, Collection};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::start::{StartPlan, StartReason};
use super::{SourceError, SourceRecord};
use crate::position::OplogPosition;
use crate::telemetry::metrics::Metrics;

/// Server error codes after which the tail simply re-queries from the last
/// position read: CappedPositionLost, ChangeStreamFatalError,
/// ChangeStreamHistoryLost (DESIGN.md section 4).
const REQUERY_CODES: [i32; 3] = [136, 280, 286];

/// Settings of the oplog tailer.
#[derive(Debug, Clone)]
pub struct OplogSettings {
    /// How long the server may hold a `getMore` waiting for new entries.
    pub max_await: Duration,
    /// Bound on the first query and on silence from a live cursor, after which
    /// the cursor is re-issued (oplogtoredis's `OTR_MONGO_QUERY_TIMEOUT`).
    pub query_timeout: Duration,
    /// Entries per batch the server may return.
    pub batch_size: u32,
    /// First and largest pause between failed attempts.
    pub backoff: (Duration, Duration),
}

impl Default for OplogSettings {
    fn default() -> Self {
        Self {
            max_await: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            batch_size: 1000,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// Tails `local.oplog.rs` and forwards every entry as a [`SourceRecord`].
pub struct OplogSource {
    oplog: Collection<bson::RawDocumentBuf>,
    settings: OplogSettings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    rewind: Option<mpsc::UnboundedReceiver<OplogPosition>>,
    excluded: Option<watch::Receiver<ExcludedNamespaces>>,
    /// The exclusion list the current cursor was opened with, so a change is
    /// announced downstream once.
    announced_exclusions: Option<ExcludedNamespaces>,
}

/// Namespaces the server need not return (another instance publishes them).
pub type ExcludedNamespaces = Arc<Vec<String>>;

/// How one cursor's life ended.
enum TailEnd {
    /// Shutdown was requested.
    Shutdown,
    /// The server closed the cursor or went quiet for too long: re-query.
    Requery(&'static str),
    /// Asked to read again from this (older) position.
    Rewind(OplogPosition),
}

/// Connects a MongoDB client with redtail's options (app name, timeouts).
pub async fn connect(url: &str, connect_timeout: Duration) -> Result<Client, SourceError> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(SourceError::Client)?;
    options.app_name = Some("redtail".to_owned());
    options.connect_timeout = Some(connect_timeout);
    options.server_selection_timeout = Some(connect_timeout);
    Client::with_options(options).map_err(SourceError::Client)
}

/// Whether MongoDB answers a `ping` in time (for `/healthz`).
pub async fn ping(client: &Client, timeout: Duration) -> bool {
    let admin = client.database("admin");
    let ping = admin.run_command(doc! { "ping": 1 });
    matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
}

impl OplogSource {
    /// A tailer reading through `client`.
    pub fn new(client: &Client, settings: OplogSettings, metrics: Metrics) -> Self {
        let oplog = client.database("local").collection("oplog.rs");
        Self {
            oplog,
            settings,
            metrics,
            ready: Arc::default(),
            rewind: None,
            excluded: None,
            announced_exclusions: None,
        }
    }

    /// Follows a list of namespaces to leave out of the server-side query, so
    /// MongoDB returns only what this instance publishes. A change of the
    /// list re-issues the query from the last entry read, and the list a
    /// query applies is announced with [`SourceRecord::Filtered`] before the
    /// entries it returns.
    pub fn with_excluded_namespaces(
        mut self,
        excluded: watch::Receiver<ExcludedNamespaces>,
    ) -> Self {
        self.excluded = Some(excluded);
        self
    }

    /// Accepts requests to read again from an older position (a shard taking
    /// over from its checkpoint). The tail re-queries from there and sends a
    /// [`SourceRecord::Rewound`] marker first.
    pub fn with_rewind(mut self, requests: mpsc::UnboundedReceiver<OplogPosition>) -> Self {
        self.rewind = Some(requests);
        self
    }

    /// Sets `flag` once the tail is positioned: from then on, every write to
    /// MongoDB is certain to be read (this is what `/readyz` reports).
    pub fn with_ready(mut self, flag: Arc<AtomicBool>) -> Self {
        self.ready = flag;
        self
    }

    /// Tails from `plan` until `shutdown`, sending every entry to `out`.
    ///
    /// Transient failures (network, step-downs, lost cursors) are retried
    /// with backoff from the last position read: entries already handed
    /// downstream are never re-read, and none is skipped without being
    /// reported.
    pub async fn run(
        mut self,
        plan: StartPlan,
        out: mpsc::Sender<SourceRecord>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let mut last_read = match plan {
            StartPlan::After(position) => Some(position),
            StartPlan::AtEnd(reason) => {
                log_start_at_end(reason);
                None
            }
        };
        let mut failures = 0u32;
        let mut announced = false;
        while !shutdown.is_cancelled() {
            if last_read.is_none() {
                match self.newest_position(&shutdown).await {
                    Ok(position) => {
                        // An empty oplog: read from its very beginning, which
                        // the zero position stands for (no entry has it).
                        last_read = Some(position.unwrap_or_default());
                        announced = false;
                    }
                    Err(error) => {
                        self.record_failure("start_time", &error);
                        failures += 1;
                        self.pause(failures, &shutdown).await;
                        continue;
                    }
                }
            }
            if let (false, Some(position)) = (announced, last_read) {
                // Tell downstream where this run's stream begins.
                out.send(SourceRecord::Rewound(position))
                    .await
                    .map_err(|_| SourceError::DownstreamClosed)?;
                announced = true;
            }
            match self.tail(&mut last_read, &out, &shutdown).await {
                Ok(TailEnd::Shutdown) => break,
                Ok(TailEnd::Rewind(position)) => {
                    last_read = Some(position);
                    announced = false;
                    self.metrics
                        .source_restarts
                        .with_label_values(&["rewind"])
                        .inc();
                    tracing::info!(%position, "reading the oplog again from an older checkpoint");
                }
                Ok(TailEnd::Requery(reason)) => {
                    failures = 0;
                    self.metrics
                        .source_restarts
                        .with_label_values(&[reason])
                        .inc();
                    tracing::debug!(reason, "re-issuing the oplog query");
                }
                Err(TailError::Downstream) => return Err(SourceError::DownstreamClosed),
                Err(TailError::Mongo(error)) if requery_code(&error).is_some() => {
                    let code = requery_code(&error).unwrap_or_default();
                    tracing::warn!(
                        code,
                        "oplog cursor lost its position; re-querying from the last entry read"
                    );
                    self.metrics
                        .source_restarts
                        .with_label_values(&["position_lost"])
                        .inc();
                }
                Err(TailError::Mongo(error)) => {
                    failures += 1;
                    self.record_failure("query", &error);
                    self.pause(failures, &shutdown).await;
                }
            }
        }
        Ok(())
    }

    /// One cursor: query from `last_read`, stream until it ends.
    async fn tail(
        &mut self,
        last_read: &mut Option<OplogPosition>,
        out: &mpsc::Sender<SourceRecord>,
        shutdown: &CancellationToken,
    ) -> Result<TailEnd, TailError> {
        let (filter, applied) = self.query_filter(*last_read);
        self.announce_exclusions(applied, out).await?;
        let find = self
            .oplog
            .find(filter)
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(self.settings.max_await)
            .batch_size(self.settings.batch_size);
        let mut cursor = tokio::select! {
            _ = shutdown.cancelled() => return Ok(TailEnd::Shutdown),
            found = tokio::time::timeout(self.settings.query_timeout, find) => match found {
                Err(_) => return Ok(TailEnd::Requery("query_timeout")),
                Ok(cursor) => cursor?,
            },
        };
        crate::pipeline::mark_ready(&self.ready);
        let silence = self.settings.query_timeout.max(self.settings.max_await * 2);
        let mut expect_resume_entry = last_read.is_some_and(|p| p != OplogPosition::default());
        loop {
            let rewind = next_rewind(&mut self.rewind);
            let excluded_changed = next_change(&mut self.excluded);
            let advanced = tokio::select! {
                _ = shutdown.cancelled() => return Ok(TailEnd::Shutdown),
                () = excluded_changed => return Ok(TailEnd::Requery("filter")),
                Some(position) = rewind => {
                    // Also when the position is ahead of what was read: the
                    // query restarts with the current filter (a shard just
                    // taken over was excluded until now), and the marker
                    // tells the taker where the new stream begins.
                    let from = last_read.map_or(position, |read| read.min(position));
                    return Ok(TailEnd::Rewind(from));
                }
                advanced = tokio::time::timeout(silence, cursor.advance()) => advanced,
            };
            match advanced {
                Err(_) => return Ok(TailEnd::Requery("idle")),
                Ok(Ok(false)) => return Ok(TailEnd::Requery("cursor_closed")),
                Ok(Err(error)) => return Err(TailError::Mongo(error)),
                Ok(Ok(true)) => {}
            }
            let entry = cursor.current();
            let Some(position) = entry_position(entry) else {
                // Without a ts the entry cannot be ordered; the transform
                // stage reports it as malformed.
                out.send(SourceRecord::OplogEntry(entry.to_owned()))
                    .await
                    .map_err(|_| TailError::Downstream)?;
                continue;
            };
            if expect_resume_entry {
                expect_resume_entry = false;
                if Some(position) == *last_read {
                    continue;
                }
                self.report_gap(*last_read, position);
            }
            *last_read = Some(position);
            out.send(SourceRecord::OplogEntry(entry.to_owned()))
                .await
                .map_err(|_| TailError::Downstream)?;
        }
    }

    /// `ts >= last` (the entry at `last` itself always matches, so the resume
    /// check works whatever its namespace), minus excluded namespaces.
    /// Also returns the list applied (`None` without an exclusion watch).
    fn query_filter(
        &mut self,
        last_read: Option<OplogPosition>,
    ) -> (bson::Document, Option<ExcludedNamespaces>) {
        let applied = self
            .excluded
            .as_mut()
            .map(|rx| rx.borrow_and_update().clone());
        let excluded = applied.clone().filter(|list| !list.is_empty());
        let filter = match (last_read, excluded) {
            (None, None) => doc! {},
            (None, Some(list)) => doc! { "ns": { "$nin": list.as_slice() } },
            (Some(position), None) => doc! { "ts": { "$gte": Timestamp::from(position) } },
            (Some(position), Some(list)) => {
                let ts = Timestamp::from(position);
                doc! {
                    "ts": { "$gte": ts },
                    "$or": [
                        { "ts": { "$gte": ts, "$lte": ts } },
                        { "ns": { "$nin": list.as_slice() } },
                    ],
                }
            }
        };
        (filter, applied)
    }

    /// Sends [`SourceRecord::Filtered`] when this query leaves out another
    /// list of namespaces than the previous one.
    async fn announce_exclusions(
        &mut self,
        applied: Option<ExcludedNamespaces>,
        out: &mpsc::Sender<SourceRecord>,
    ) -> Result<(), TailError> {
        let Some(applied) = applied else {
            return Ok(());
        };
        if self.announced_exclusions.as_ref() == Some(&applied) {
            return Ok(());
        }
        self.announced_exclusions = Some(applied.clone());
        out.send(SourceRecord::Filtered(applied))
            .await
            .map_err(|_| TailError::Downstream)
    }

    /// The `ts` of the newest entry, or None for an empty oplog.
    async fn newest_position(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<OplogPosition>, mongodb::error::Error> {
        let newest = self.oplog.find_one(doc! {}).sort(doc! { "$natural": -1 });
        let found = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            found = tokio::time::timeout(self.settings.query_timeout, newest) => found,
        };
        let entry = found.map_err(|_| {
            mongodb::error::Error::custom("timed out reading the newest oplog entry")
        })??;
        Ok(entry.as_deref().and_then(entry_position))
    }

    /// The entry we resumed after is gone: everything between it and `found`
    /// was overwritten before we could read it.
    fn report_gap(&self, expected: Option<OplogPosition>, found: OplogPosition) {
        self.metrics.oplog_gaps.inc();
        tracing::error!(
            resume_after = %expected.map(|p| p.to_string()).unwrap_or_default(),
            first_available = %found,
            "the position to resume from is no longer in the oplog: changes in between were lost \
             (the oplog is too short for this outage; see the runbook)"
        );
    }

    fn record_failure(&self, reason: &'static str, error: &mongodb::error::Error) {
        self.metrics
            .tail_failed_to_start
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(reason, %error, "oplog tailing stopped prematurely; retrying");
    }

    /// Exponential backoff, cut short by shutdown.
    async fn pause(&self, failures: u32, shutdown: &CancellationToken) {
        let (first, cap) = self.settings.backoff;
        let delay = first.saturating_mul(1 << failures.min(16)).min(cap);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Failure of one cursor.
enum TailError {
    Mongo(mongodb::error::Error),
    Downstream,
}

impl From<mongodb::error::Error> for TailError {
    fn from(error: mongodb::error::Error) -> Self {
        Self::Mongo(error)
    }
}

/// The next rewind request, or a future that never completes without a channel.
async fn next_rewind(
    requests: &mut Option<mpsc::UnboundedReceiver<OplogPosition>>,
) -> Option<OplogPosition> {
    match requests {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

/// Completes when the watched value changes; never without a watch (or
/// once its sender is gone).
async fn next_change<T>(watched: &mut Option<watch::Receiver<T>>) {
    let changed = match watched {
        Some(rx) => rx.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

fn requery_code(error: &mongodb::error::Error) -> Option<i32> {
    match error.kind.as_ref() {
        mongodb::error::ErrorKind::Command(e) if REQUERY_CODES.contains(&e.code) => Some(e.code),
        _ => None,
    }
}

fn entry_position(entry: &RawDocument) -> Option<OplogPosition> {
    entry.get_timestamp("ts").ok().map(OplogPosition::from)
}

fn log_start_at_end(reason: StartReason) {
    match reason {
        StartReason::NoStoredPosition => tracing::warn!(
            "no last processed position found in Redis; starting from the end of the oplog"
        ),
        StartReason::TooFarBehind { gap_seconds } => tracing::error!(
            gap_seconds,
            "the last processed position is older than OTR_MAX_CATCH_UP; starting from the end \
             of the oplog, changes in the gap are NOT published (set OTR_CATCH_UP_POLICY=replay \
             to replay them instead)"
        ),
    }
}
