//! The denylist: databases whose changes are not published.
//!
//! oplogtoredis keeps its denylist per process (optionally loaded from
//! Postgres at start), so replicas disagree after an update. redtail keeps
//! it in Redis, which every replica already shares:
//!
//! - the Redis SET `<prefix>denylist` holds the names (exact database names);
//! - after each change an instance PUBLISHes on `<prefix>denylist-changed`;
//! - every instance re-reads the SET on that notification and, in case a
//!   notification was missed (reconnects), every few seconds.
//!
//! The hot path, [`Denylist::is_denied`], only reads an in-memory copy.
//! A change that cannot be persisted is kept in memory, reported to the
//! caller (the HTTP API answers 500, as oplogtoredis does) and written again
//! at the next refresh, so a Redis outage loses nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::Metrics;

/// Default period of the safety-net refresh.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// How long one Redis command of the denylist may take; the HTTP API waits
/// on it, so it must not hang while Redis is down.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the denylist could not reach Redis.
#[derive(Debug, thiserror::Error)]
pub enum DenylistError {
    /// Connecting to Redis failed.
    #[error("denylist: cannot connect to Redis: {0}")]
    Connect(#[source] redis::RedisError),
    /// A command failed; in-memory changes stay pending and are retried.
    #[error("denylist: Redis {operation} failed: {source}")]
    Redis {
        /// What was attempted (`SADD`, `SMEMBERS`, ...).
        operation: &'static str,
        /// Redis's error.
        source: redis::RedisError,
    },
}

/// A change made here that Redis has not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingChange {
    Add(String),
    Remove(String),
}

/// The shared, Redis-backed set of denylisted database names. Cloning is
/// cheap and every clone sees the same set.
#[derive(Clone)]
pub struct Denylist {
    inner: Arc<Inner>,
}

struct Inner {
    entries: RwLock<BTreeSet<String>>,
    /// Changes not yet acknowledged by Redis, oldest first.
    pending: Mutex<Vec<PendingChange>>,
    /// Serialises writers of `pending` to Redis.
    flush_lock: tokio::sync::Mutex<()>,
    store: Option<RedisStore>,
    metrics: Metrics,
    refresh_interval: Duration,
}

/// Where the denylist lives in Redis.
struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    set_key: String,
    channel: String,
}

impl Denylist {
    /// A denylist that lives only in this process (tests, `explain`).
    pub fn in_memory(metrics: Metrics) -> Self {
        Self::build(None, metrics, DEFAULT_REFRESH_INTERVAL)
    }

    /// Connects to Redis and loads the stored denylist. `prefix` is
    /// `OTR_REDIS_METADATA_PREFIX`, so fleets sharing a Redis with other
    /// prefixes keep separate lists. Call [`Denylist::run_sync`] to follow
    /// changes made by other instances.
    pub async fn connect(
        client: redis::Client,
        prefix: &str,
        metrics: Metrics,
    ) -> Result<Self, DenylistError> {
        Self::connect_with_interval(client, prefix, metrics, DEFAULT_REFRESH_INTERVAL).await
    }

    /// [`Denylist::connect`] with a chosen safety-net refresh period.
    pub async fn connect_with_interval(
        client: redis::Client,
        prefix: &str,
        metrics: Metrics,
        refresh_interval: Duration,
    ) -> Result<Self, DenylistError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(DenylistError::Connect)?;
        let store = RedisStore {
            client,
            conn,
            set_key: format!("{prefix}denylist"),
            channel: format!("{prefix}denylist-changed"),
        };
        let denylist = Self::build(Some(store), metrics, refresh_interval);
        denylist.refresh().await?;
        Ok(denylist)
    }

    fn build(store: Option<RedisStore>, metrics: Metrics, refresh_interval: Duration) -> Self {
        let inner = Inner {
            entries: RwLock::new(BTreeSet::new()),
            pending: Mutex::new(Vec::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            store,
            metrics,
            refresh_interval,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Whether changes to `db` must be skipped. Cheap: a read lock on a
    /// small in-memory set.
    pub fn is_denied(&self, db: &str) -> bool {
        self.read().contains(db)
    }

    /// [`Denylist::is_denied`], counting a skip in
    /// `otr_oplog_entries_filtered{database}` as oplogtoredis does.
    pub fn skip_if_denied(&self, db: &str) -> bool {
        let denied = self.is_denied(db);
        if denied {
            self.inner
                .metrics
                .entries_filtered
                .with_label_values(&[db])
                .inc();
        }
        denied
    }

    /// The denylisted names, sorted.
    pub fn entries(&self) -> Vec<String> {
        self.read().iter().cloned().collect()
    }

    /// Adds `db`. `Ok(true)` if it was not listed before. On `Err` the
    /// entry is listed in memory anyway and persisted at the next refresh.
    pub async fn add(&self, db: &str) -> Result<bool, DenylistError> {
        let added = self.change(PendingChange::Add(db.to_owned()));
        self.set_metric(db, true);
        self.flush_pending().await?;
        Ok(added)
    }

    /// Removes `db`. `Ok(true)` if it was listed. On `Err` the entry is
    /// gone from memory anyway and removed from Redis at the next refresh.
    pub async fn remove(&self, db: &str) -> Result<bool, DenylistError> {
        let removed = self.change(PendingChange::Remove(db.to_owned()));
        self.set_metric(db, false);
        self.flush_pending().await?;
        Ok(removed)
    }

    /// Applies a change in memory and queues it for Redis, under the
    /// pending lock so a concurrent refresh sees both or neither.
    fn change(&self, change: PendingChange) -> bool {
        let mut pending = self.inner.pending.lock().expect("denylist lock");
        let changed = apply(&mut self.write(), &change);
        if self.inner.store.is_some() {
            pending.push(change);
        }
        changed
    }

    /// Writes any unpersisted changes, then replaces the in-memory set with
    /// Redis's (keeping changes that still could not be written).
    pub async fn refresh(&self) -> Result<(), DenylistError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let _serialised = self.inner.flush_lock.lock().await;
        self.flush_locked(store).await?;
        let mut conn = store.conn.clone();
        let mut stored: BTreeSet<String> =
            conn.smembers(&store.set_key)
                .await
                .map_err(|source| DenylistError::Redis {
                    operation: "SMEMBERS",
                    source,
                })?;
        let previous = {
            let pending = self.inner.pending.lock().expect("denylist lock");
            for change in pending.iter() {
                apply(&mut stored, change);
            }
            std::mem::replace(&mut *self.write(), stored.clone())
        };
        for gone in previous.difference(&stored) {
            self.set_metric(gone, false);
        }
        for name in &stored {
            self.set_metric(name, true);
        }
        Ok(())
    }

    /// Follows changes made by other instances until `shutdown`: refreshes
    /// on each `<prefix>denylist-changed` notification and every refresh
    /// interval. Errors are logged and retried at the next tick.
    pub async fn run_sync(self, shutdown: CancellationToken) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let mut ticker = tokio::time::interval(self.inner.refresh_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; each subscription is followed by a
        // refresh anyway, so skip it.
        ticker.tick().await;
        loop {
            let subscription = tokio::select! {
                _ = shutdown.cancelled() => return,
                sub = subscribe(&store.client, &store.channel) => sub,
            };
            let mut messages = match subscription {
                Ok(pubsub) => Some(pubsub.into_on_message()),
                Err(err) => {
                    tracing::warn!(error = %err, "denylist: cannot subscribe to changes; polling");
                    None
                }
            };
            // Anything published while we were not subscribed is caught here.
            self.refresh_logged().await;
            loop {
                let notified = async {
                    match messages.as_mut() {
                        Some(stream) => stream.next().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => self.refresh_logged().await,
                    alive = notified => {
                        if !alive {
                            break; // connection lost: resubscribe
                        }
                        self.refresh_logged().await;
                    }
                }
                if messages.is_none() {
                    break; // retry the subscription after each poll
                }
            }
        }
    }

    async fn refresh_logged(&self) {
        if let Err(err) = self.refresh().await {
            tracing::warn!(error = %err, "denylist: refresh from Redis failed; will retry");
        }
    }

    /// Writes pending changes to Redis, one writer at a time so they land
    /// in the order they were made.
    async fn flush_pending(&self) -> Result<(), DenylistError> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        let _serialised = self.inner.flush_lock.lock().await;
        self.flush_locked(store).await
    }

    async fn flush_locked(&self, store: &RedisStore) -> Result<(), DenylistError> {
        let changes = self.inner.pending.lock().expect("denylist lock").clone();
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for change in &changes {
            match change {
                PendingChange::Add(db) => pipe.sadd(&store.set_key, db).ignore(),
                PendingChange::Remove(db) => pipe.srem(&store.set_key, db).ignore(),
            };
        }
        pipe.publish(&store.channel, "changed").ignore();
        let mut conn = store.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|source| DenylistError::Redis {
                operation: "SADD/SREM",
                source,
            })?;
        // Changes queued while this write was in flight stay pending.
        self.inner
            .pending
            .lock()
            .expect("denylist lock")
            .drain(..changes.len());
        Ok(())
    }

    fn set_metric(&self, db: &str, enabled: bool) {
        let value = if enabled { 1.0 } else { 0.0 };
        self.inner
            .metrics
            .denylist_filter_enabled
            .with_label_values(&[db])
            .set(value);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<String>> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<String>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::fmt::Debug for Denylist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denylist")
            .field("entries", &*self.read())
            .finish_non_exhaustive()
    }
}

/// Applies a change to a set; true if the set changed.
fn apply(set: &mut BTreeSet<String>, change: &PendingChange) -> bool {
    match change {
        PendingChange::Add(db) => set.insert(db.clone()),
        PendingChange::Remove(db) => set.remove(db),
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "subscribe timed out")))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_add_remove_and_metrics() {
        let metrics = Metrics::new();
        let list = Denylist::in_memory(metrics.clone());
        assert!(!list.is_denied("a"));
        assert!(list.add("a").await.unwrap());
        assert!(!list.add("a").await.unwrap());
        assert!(list.add("b").await.unwrap());
        assert!(list.is_denied("a") && !list.is_denied("ab") && !list.is_denied("A"));
        assert_eq!(list.entries(), ["a", "b"]);
        let text = metrics.render();
        assert!(
            text.contains(r#"otr_denylist_filter_enabled{db="a"} 1"#),
            "{text}"
        );
        assert!(list.remove("a").await.unwrap());
        assert!(!list.remove("a").await.unwrap());
        assert!(!list.is_denied("a"));
        assert!(
            metrics
                .render()
                .contains(r#"otr_denylist_filter_enabled{db="a"} 0"#)
        );
        assert!(list.skip_if_denied("b") && !list.skip_if_denied("c"));
        assert!(
            metrics
                .render()
                .contains(r#"otr_oplog_entries_filtered{database="b"} 1"#)
        );
    }

    #[test]
    fn pending_changes_apply_in_order() {
        let mut set = BTreeSet::from(["x".to_owned()]);
        let changes = [
            PendingChange::Add("y".into()),
            PendingChange::Remove("x".into()),
            PendingChange::Remove("y".into()),
            PendingChange::Add("z".into()),
        ];
        for change in &changes {
            apply(&mut set, change);
        }
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["z"]);
    }
}
