//! The load every configuration gets: the same inserts over the same
//! collections at the same rate, and a subscriber that counts what Redis
//! delivered per (channel, id).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, DateTime, Document, doc};
use futures_util::StreamExt;
use mongo_sim::MongoSim;
use tokio::task::JoinHandle;

/// Databases the collections are spread over.
pub const DATABASES: usize = 4;
/// Collections in all.
pub const COLLECTIONS: usize = 100;

/// The namespace of write `seq`: collections are taken in turn, so each
/// gets the same share and the shards get what their namespaces hash to.
pub fn namespace_of(seq: u64) -> String {
    let collection = seq as usize % COLLECTIONS;
    format!("scale{}.c{collection:02}", collection % DATABASES)
}

/// The `_id` of write `seq`: an ObjectId for even writes, a string for odd
/// ones (both shapes Meteor apps have), each carrying `seq` so a delivery
/// names its write.
pub fn id_of(seq: u64) -> bson::Bson {
    if seq.is_multiple_of(2) {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&seq.to_be_bytes());
        bson::Bson::ObjectId(ObjectId::from_bytes(bytes))
    } else {
        bson::Bson::String(format!("doc-{seq}"))
    }
}

/// The write a delivered `_id` (as redis-oplog's JSON carries it) belongs to.
pub fn seq_of_id(id: &serde_json::Value) -> Option<u64> {
    match id {
        serde_json::Value::String(text) => text.strip_prefix("doc-")?.parse().ok(),
        serde_json::Value::Object(fields) if fields.get("$type")? == "oid" => {
            let hex = fields.get("$value")?.as_str()?;
            if hex.len() != 24 || !hex.starts_with("00000000") {
                return None;
            }
            u64::from_str_radix(&hex[8..], 16).ok()
        }
        _ => None,
    }
}

/// An insert shaped like MongoDB 7.0's (`ts` is left to the simulator).
pub fn insert_entry(seq: u64) -> Document {
    doc! {
        "op": "i",
        "ns": namespace_of(seq),
        "ui": Binary { subtype: BinarySubtype::Uuid, bytes: uuid_of(seq).to_vec() },
        "o": {
            "_id": id_of(seq),
            "title": format!("item {seq}"),
            "count": seq as i64,
            "done": seq.is_multiple_of(3),
            "owner": { "id": "u42", "team": "core" },
        },
        "t": 1i64,
        "v": 2i64,
        "wall": DateTime::now(),
    }
}

/// A stable per-collection UUID, as a real collection has.
fn uuid_of(seq: u64) -> [u8; 16] {
    let mut bytes = [0x5a; 16];
    bytes[15] = (seq as usize % COLLECTIONS) as u8;
    bytes
}

/// Appends `writes` entries at `rate` per second, in 10 ms slices so the
/// pace is steady; returns how long it took.
pub fn write_steadily(sim: &MongoSim, writes: u64, rate: f64) -> Duration {
    let entries: Vec<Document> = (0..writes).map(insert_entry).collect();
    let started = Instant::now();
    for (seq, mut entry) in entries.into_iter().enumerate() {
        let due = started + Duration::from_secs_f64(seq as f64 / rate);
        let now = Instant::now();
        if due > now + Duration::from_millis(10) {
            std::thread::sleep(due - now);
        }
        entry.insert("wall", DateTime::now());
        sim.engine().append_oplog_entry(entry);
    }
    started.elapsed()
}

/// Deliveries per write and channel, fed by the subscriber task.
#[derive(Debug, Default)]
pub struct Tally {
    /// How many times each (collection channel, write) arrived.
    received: HashMap<(String, u64), u32>,
    /// Messages on collection channels that named no write of this load.
    pub foreign: u64,
}

impl Tally {
    /// Notes one message of a collection channel.
    pub fn record(&mut self, channel: &str, payload: &[u8]) {
        let seq = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|message| seq_of_id(message.get("d")?.get("_id")?));
        match seq {
            Some(seq) => *self.received.entry((channel.to_owned(), seq)).or_default() += 1,
            None => self.foreign += 1,
        }
    }

    /// Distinct (channel, write) pairs delivered.
    pub fn distinct(&self) -> u64 {
        self.received.len() as u64
    }

    /// Deliveries beyond the first of each (channel, write).
    pub fn duplicates(&self) -> u64 {
        self.received.values().map(|&n| u64::from(n) - 1).sum()
    }

    /// Writes `0..writes` delivered on their own collection channel.
    pub fn delivered_of(&self, writes: u64) -> u64 {
        (0..writes)
            .filter(|&seq| self.received.contains_key(&(namespace_of(seq), seq)))
            .count() as u64
    }
}

/// A pattern subscriber on every collection channel of the load.
pub struct Subscriber {
    tally: Arc<Mutex<Tally>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes (confirmed by Redis before this returns) to `scale*`;
    /// per-document channels (`<ns>::<id>`) are skipped, so each write is
    /// counted once per delivery of its collection message.
    pub async fn start(redis_url: &str) -> Result<Self> {
        let mut pubsub = redis::Client::open(redis_url)?
            .get_async_pubsub()
            .await
            .context("connecting the subscriber")?;
        pubsub.psubscribe("scale*").await.context("PSUBSCRIBE")?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let task = tokio::spawn({
            let tally = tally.clone();
            async move {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let channel = message.get_channel_name();
                    if channel.contains("::") {
                        continue;
                    }
                    let mut tally = tally.lock().expect("tally lock");
                    tally.record(channel, message.get_payload_bytes());
                }
            }
        });
        Ok(Self { tally, task })
    }

    /// Distinct (channel, write) pairs delivered so far.
    pub fn distinct(&self) -> u64 {
        self.tally.lock().expect("tally lock").distinct()
    }

    /// Waits until `writes` distinct deliveries arrived, `deadline` passed,
    /// or nothing new arrived for `stall`; then waits `linger` more so late
    /// duplicates are counted too.
    pub async fn wait_for(
        &self,
        writes: u64,
        deadline: Instant,
        stall: Duration,
        linger: Duration,
    ) {
        let mut last = (self.distinct(), Instant::now());
        loop {
            let now = self.distinct();
            if now >= writes || Instant::now() >= deadline || last.1.elapsed() >= stall {
                break;
            }
            if now != last.0 {
                last = (now, Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(linger).await;
    }

    /// Stops listening and returns the final counts.
    pub fn finish(self) -> Tally {
        self.task.abort();
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_write_in_both_shapes() {
        for seq in [0u64, 1, 2, 77, 19_999, u32::MAX as u64 + 5] {
            let json = serde_json::to_value(match id_of(seq) {
                bson::Bson::ObjectId(oid) => {
                    serde_json::json!({"$type": "oid", "$value": oid.to_hex()})
                }
                bson::Bson::String(text) => serde_json::json!(text),
                other => panic!("unexpected id {other:?}"),
            })
            .unwrap();
            assert_eq!(seq_of_id(&json), Some(seq), "{json}");
        }
        for foreign in [
            serde_json::json!("other-1"),
            serde_json::json!({"$type": "oid", "$value": "ffffffff0000000000000001"}),
            serde_json::json!(5),
        ] {
            assert_eq!(seq_of_id(&foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_tally_counts_distinct_and_duplicate_deliveries() {
        let message = |id: &str| format!(r#"{{"e":"i","d":{{"_id":"{id}"}},"f":["_id"]}}"#);
        let mut tally = Tally::default();
        tally.record(&namespace_of(1), message("doc-1").as_bytes());
        tally.record(&namespace_of(1), message("doc-1").as_bytes());
        tally.record(&namespace_of(3), message("doc-3").as_bytes());
        tally.record("scale0.c00", message("doc-5").as_bytes());
        tally.record("scale0.c00", b"not json");
        assert_eq!(tally.distinct(), 3);
        assert_eq!(tally.duplicates(), 1);
        assert_eq!(tally.foreign, 1);
        // doc-5 came on the wrong channel: not a delivery of write 5.
        assert_eq!(tally.delivered_of(6), 2);
    }

    #[test]
    fn writes_cover_every_collection_evenly() {
        let mut per_ns: HashMap<String, u64> = HashMap::new();
        for seq in 0..(COLLECTIONS as u64 * 3) {
            *per_ns.entry(namespace_of(seq)).or_default() += 1;
        }
        assert_eq!(per_ns.len(), COLLECTIONS);
        assert!(per_ns.values().all(|&n| n == 3));
    }
}
