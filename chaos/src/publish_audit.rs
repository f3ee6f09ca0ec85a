//! Which epoch published each delivered change.
//!
//! In cluster mode the fenced publish stores the publishing epoch as the value
//! of the change's dedup key `<prefix>processed::<(T<<32)|I>::<txIdx>`. The
//! message itself carries no position, so this task keeps an index from each
//! document id to its oplog position (tailing `local.oplog.rs` directly on the
//! simulator) and reads the dedup keys of delivered changes shortly (~100 ms)
//! after they are heard, well within the keys' 150 s life.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::redis_read::mget_within;
use crate::subscriber::Subscriber;

/// The `_id` named by a redis-oplog message (`{"e":..,"d":{"_id":..},..}`),
/// as text when it is a string.
pub fn message_id(payload: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(payload).ok()?;
    value.get("d")?.get("_id")?.as_str().map(str::to_string)
}

/// oplogtoredis's position: `(T << 32) | I`.
pub fn position(ts: bson::Timestamp) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

/// `T:I` (and the txIdx) of a dedup key, as redtail logs positions.
fn readable_position(key: &str) -> String {
    let mut parts = key.rsplit("::");
    let tx_index = parts.next().unwrap_or_default();
    match parts.next().and_then(|p| p.parse::<u64>().ok()) {
        Some(p) => format!(
            "{{ time: {}, increment: {} }} txIdx {tx_index}",
            p >> 32,
            p & 0xffff_ffff
        ),
        None => key.to_string(),
    }
}

/// The (document id, dedup key) pairs of one oplog entry: an insert, or a
/// transaction's `applyOps` whose CRUD operations are numbered by `txIdx`.
pub fn dedup_keys(entry: &Document, prefix: &str) -> Vec<(String, String)> {
    let Ok(ts) = entry.get_timestamp("ts") else {
        return Vec::new();
    };
    let origin = position(ts);
    let key = |tx_index: usize| format!("{prefix}processed::{origin}::{tx_index}");
    let id_of = |op: &Document| match op.get_document("o").ok()?.get("_id")? {
        Bson::String(id) => Some(id.clone()),
        _ => None,
    };
    match entry.get_str("op") {
        Ok("i" | "u" | "d") => id_of(entry)
            .map(|id| vec![(id, key(0))])
            .unwrap_or_default(),
        Ok("c") => {
            let Ok(ops) = entry
                .get_document("o")
                .and_then(|o| o.get_array("applyOps"))
            else {
                return Vec::new();
            };
            ops.iter()
                .filter_map(Bson::as_document)
                .filter(|op| matches!(op.get_str("op"), Ok("i" | "u" | "d")))
                .enumerate()
                .filter_map(|(tx_index, op)| id_of(op).map(|id| (id, key(tx_index))))
                .collect()
        }
        _ => Vec::new(),
    }
}

/// What the audit found: the dedup value of each delivered change.
#[derive(Debug, Default, Clone)]
pub struct PublishEpochs {
    /// Document id -> the dedup key's value (the publishing epoch in cluster
    /// mode), read shortly after delivery.
    pub values: HashMap<String, String>,
    /// Delivered ids whose dedup key was already gone (e.g. Redis restarted).
    pub missing: usize,
    /// Delivered ids never seen in the oplog index.
    pub unindexed: usize,
}

/// The background task.
pub struct PublishAuditor {
    found: Arc<Mutex<PublishEpochs>>,
    index: Arc<Mutex<HashMap<String, String>>>,
    redis: redis::Client,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Rounds at 100 ms: bounds the task to ~30 minutes.
const MAX_ROUNDS: usize = 18_000;
/// How long a delivered id may wait for its oplog entry to be indexed.
const INDEX_PATIENCE: Duration = Duration::from_secs(20);
/// Bound on one dedup-value read's connection and reply.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

struct Pending {
    id: String,
    heard: Instant,
}

impl PublishAuditor {
    /// Starts following `subscriber`'s deliveries on the channels of `dbs`.
    pub fn start(
        mongo: Client,
        redis_url: &str,
        prefix: &str,
        dbs: Vec<String>,
        subscriber: Arc<Subscriber>,
    ) -> anyhow::Result<Self> {
        let redis = redis::Client::open(redis_url)?;
        let found = Arc::new(Mutex::new(PublishEpochs::default()));
        let index = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stopped) = watch::channel(false);
        let state = LoopState {
            mongo,
            redis: redis.clone(),
            index: index.clone(),
            prefix: prefix.to_string(),
            dbs,
            subscriber,
            found: found.clone(),
        };
        let task = tokio::spawn(state.run(stopped));
        Ok(Self {
            found,
            index,
            redis,
            stop,
            task,
        })
    }

    /// Of `ids` (writes never heard), how many are in the oplog index and how
    /// many of those have a dedup marker in Redis: a marker means some
    /// instance did publish the change, so the subscriber missed it (or it
    /// went to a Redis that was then wiped); no marker means nobody did.
    /// Also returns a few `id = dedup key` pairs: the key holds the oplog
    /// position, to compare with the checkpoints in the instances' logs.
    pub async fn markers(&self, ids: &[String]) -> (usize, usize, Vec<String>) {
        let pairs: Vec<(String, String)> = {
            let index = self.index.lock().expect("index lock");
            ids.iter()
                .filter_map(|id| index.get(id).map(|key| (id.clone(), key.clone())))
                .collect()
        };
        let examples = pairs
            .iter()
            .take(5)
            .map(|(id, key)| format!("{id} at {}", readable_position(key)))
            .collect();
        let keys: Vec<String> = pairs.into_iter().map(|(_, key)| key).collect();
        if keys.is_empty() {
            return (0, 0, examples);
        }
        let lookup = async {
            let mut conn = self.redis.get_multiplexed_async_connection().await.ok()?;
            let mut mget = redis::cmd("MGET");
            mget.arg(&keys);
            mget.query_async::<Vec<Option<String>>>(&mut conn)
                .await
                .ok()
        };
        let marked = tokio::time::timeout(Duration::from_secs(2), lookup)
            .await
            .ok()
            .flatten()
            .map_or(0, |values| values.iter().filter(|v| v.is_some()).count());
        (keys.len(), marked, examples)
    }

    /// Stops, after one more round so late deliveries are looked up too.
    pub async fn stop(self) -> PublishEpochs {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.found.lock().expect("epochs lock").clone()
    }
}

struct LoopState {
    mongo: Client,
    redis: redis::Client,
    index: Arc<Mutex<HashMap<String, String>>>,
    prefix: String,
    dbs: Vec<String>,
    subscriber: Arc<Subscriber>,
    found: Arc<Mutex<PublishEpochs>>,
}

impl LoopState {
    async fn run(self, stopped: watch::Receiver<bool>) {
        let mut last_ts: Option<bson::Timestamp> = None;
        let mut next_delivery = 0usize;
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut conn = None;
        for _ in 0..MAX_ROUNDS {
            let stopping = *stopped.borrow();
            self.index_oplog(&mut last_ts).await;
            for delivery in self.subscriber.since(next_delivery) {
                next_delivery += 1;
                let Some((db, rest)) = delivery.channel.split_once('.') else {
                    continue;
                };
                if rest.contains("::") || !self.dbs.iter().any(|d| d == db) {
                    continue;
                }
                if let Some(id) = message_id(&delivery.payload) {
                    pending.push_back(Pending {
                        id,
                        heard: delivery.at,
                    });
                }
            }
            self.look_up(&mut pending, &mut conn, stopping).await;
            if stopping {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn index_oplog(&self, last_ts: &mut Option<bson::Timestamp>) {
        let oplog = self
            .mongo
            .database("local")
            .collection::<Document>("oplog.rs");
        let filter = match last_ts {
            Some(ts) => doc! { "ts": { "$gt": *ts } },
            None => doc! {},
        };
        let read = async {
            let mut cursor = oplog.find(filter).await?;
            let mut entries = Vec::new();
            while let Some(entry) = cursor.try_next().await? {
                entries.push(entry);
                if entries.len() >= 20_000 {
                    break;
                }
            }
            Ok::<_, mongodb::error::Error>(entries)
        };
        let Ok(Ok(entries)) = tokio::time::timeout(Duration::from_secs(5), read).await else {
            return;
        };
        for entry in entries {
            if let Ok(ts) = entry.get_timestamp("ts") {
                *last_ts =
                    Some(last_ts.map_or(ts, |l| if position(ts) > position(l) { ts } else { l }));
            }
            let keys = dedup_keys(&entry, &self.prefix);
            self.index.lock().expect("index lock").extend(keys);
        }
    }

    async fn look_up(
        &self,
        pending: &mut VecDeque<Pending>,
        conn: &mut Option<redis::aio::MultiplexedConnection>,
        final_round: bool,
    ) {
        let mut ready = Vec::new();
        let mut waiting = VecDeque::new();
        let mut unindexed = 0;
        let index = self.index.lock().expect("index lock").clone();
        for p in pending.drain(..) {
            match index.get(&p.id) {
                Some(key) => ready.push((p.id, key.clone())),
                None if final_round || p.heard.elapsed() > INDEX_PATIENCE => unindexed += 1,
                None => waiting.push_back(p),
            }
        }
        *pending = waiting;
        self.found.lock().expect("epochs lock").unindexed += unindexed;
        for chunk in ready.chunks(500) {
            let keys: Vec<&String> = chunk.iter().map(|(_, key)| key).collect();
            let values = mget_within(&self.redis, conn, &keys, READ_TIMEOUT).await;
            let mut found = self.found.lock().expect("epochs lock");
            match values {
                Some(values) => {
                    for ((id, _), value) in chunk.iter().zip(values) {
                        match value {
                            Some(v) => {
                                found.values.entry(id.clone()).or_insert(v);
                            }
                            None => found.missing += 1,
                        }
                    }
                }
                None => found.missing += chunk.len(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_table() {
        let cases = [
            (
                r#"{"e":"i","d":{"_id":"w0000001"},"f":["_id"]}"#,
                Some("w0000001"),
            ),
            (r#"{"e":"u","d":{"_id":1},"f":[]}"#, None),
            ("not json", None),
        ];
        for (payload, expected) in cases {
            assert_eq!(message_id(payload).as_deref(), expected, "{payload}");
        }
    }

    #[test]
    fn dedup_keys_of_inserts_and_transactions() {
        let ts = bson::Timestamp {
            time: 1_700_000_000,
            increment: 3,
        };
        let origin = (1_700_000_000u64 << 32) | 3;
        let insert = doc! { "ts": ts, "op": "i", "ns": "a.c1", "o": { "_id": "w1" } };
        assert_eq!(
            dedup_keys(&insert, "p::"),
            vec![("w1".to_string(), format!("p::processed::{origin}::0"))]
        );
        let txn = doc! { "ts": ts, "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [
            { "op": "i", "ns": "a.c1", "o": { "_id": "x1-0" } },
            { "op": "n", "ns": "", "o": {} },
            { "op": "i", "ns": "b.c2", "o": { "_id": "x1-1" } },
        ] } };
        assert_eq!(
            dedup_keys(&txn, "p::"),
            vec![
                ("x1-0".to_string(), format!("p::processed::{origin}::0")),
                ("x1-1".to_string(), format!("p::processed::{origin}::1")),
            ]
        );
        assert_eq!(
            readable_position(&format!("p::processed::{origin}::2")),
            "{ time: 1700000000, increment: 3 } txIdx 2"
        );
        let noop = doc! { "ts": ts, "op": "n", "ns": "", "o": { "msg": "x" } };
        assert!(dedup_keys(&noop, "p::").is_empty());
    }
}
