//! Logical sessions: multi-document transactions (writes buffered in a
//! private copy of the collections they touch until commit) and the memory
//! of the last retryable write, so a driver's retry after a dropped
//! connection is answered instead of executed twice.

use std::collections::{HashMap, HashSet};

use bson::{Bson, Document, doc};

use super::oplog::{OpRecord, format_inner};
use super::store::{Store, split_ns};
use super::value::id_key;

/// A transaction in progress.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub number: i64,
    pub lsid: Document,
    /// Private copies of the collections the transaction has touched.
    pub store: Store,
    loaded: HashSet<String>,
    pub records: Vec<OpRecord>,
}

impl Transaction {
    pub(crate) fn new(number: i64, lsid: Document) -> Self {
        Self {
            number,
            lsid,
            store: Store::default(),
            loaded: HashSet::new(),
            records: Vec::new(),
        }
    }

    /// Copies `db.coll` from the live store on first use, so the
    /// transaction sees its own writes and nobody else sees them.
    pub(crate) fn load(&mut self, live: &Store, db: &str, coll: &str) {
        let ns = format!("{db}.{coll}");
        if !self.loaded.insert(ns) {
            return;
        }
        if let Some(collection) = live.collection(db, coll) {
            self.store.put(db, coll, collection.clone());
        }
    }

    /// Writes the touched collections back into the live store.
    pub(crate) fn publish(&mut self, live: &mut Store) {
        let mut touched: Vec<(String, String)> = Vec::new();
        for record in &self.records {
            let (db, coll) = split_ns(&record.ns);
            let coll = match (record.op, record.o.get_str("create")) {
                ("c", Ok(created)) => created,
                _ => coll,
            };
            let pair = (db.to_string(), coll.to_string());
            if !touched.contains(&pair) {
                touched.push(pair);
            }
        }
        for (db, coll) in touched {
            if let Some(collection) = self.store.take(&db, &coll) {
                live.put(&db, &coll, collection);
            }
        }
    }
}

/// Per-session state.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub txn: Option<Transaction>,
    /// Number of the last committed transaction (a retried commit succeeds).
    pub committed: Option<i64>,
    /// The last retryable write's txnNumber and reply.
    pub retry: Option<(i64, Document)>,
}

/// All sessions by `lsid.id`.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: HashMap<String, Session>,
}

/// The key of a session: its `lsid.id` (the whole lsid if it has no id).
pub(crate) fn session_key(lsid: &Document) -> String {
    match lsid.get("id") {
        Some(id) => id_key(id),
        None => id_key(&Bson::Document(lsid.clone())),
    }
}

impl Sessions {
    pub(crate) fn get_mut(&mut self, lsid: &Document) -> &mut Session {
        self.map.entry(session_key(lsid)).or_default()
    }
}

/// The `o` documents of a committed transaction's oplog entries: one
/// `{applyOps}` when it fits in `chunk_ops`, otherwise `{applyOps,
/// partialTxn: true}` chunks and a last `{applyOps, count}`.
pub(crate) fn apply_ops_chunks(records: &[OpRecord], chunk_ops: usize) -> Vec<Document> {
    let ops: Vec<Bson> = records
        .iter()
        .map(|r| Bson::Document(format_inner(r)))
        .collect();
    let chunk_ops = chunk_ops.max(1);
    if ops.len() <= chunk_ops {
        return vec![doc! {"applyOps": ops}];
    }
    let total = ops.len();
    let chunks: Vec<&[Bson]> = ops.chunks(chunk_ops).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            if i == last {
                doc! {"applyOps": chunk.to_vec(), "count": total as i64}
            } else {
                doc! {"applyOps": chunk.to_vec(), "partialTxn": true}
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(i: i32) -> OpRecord {
        OpRecord::new("i", "txntest.d".into(), None, doc! {"_id": i, "x": i}, None)
    }

    #[test]
    fn chunks_follow_the_partial_txn_layout() {
        let records: Vec<OpRecord> = (0..6).map(insert).collect();
        let chunks = apply_ops_chunks(&records, 2);
        let keys: Vec<Vec<&str>> = chunks
            .iter()
            .map(|c| c.keys().map(String::as_str).collect())
            .collect();
        // oplog-mongotools-txn-large-unprepared-1..3
        assert_eq!(
            keys,
            vec![
                vec!["applyOps", "partialTxn"],
                vec!["applyOps", "partialTxn"],
                vec!["applyOps", "count"]
            ]
        );
        assert_eq!(chunks[2].get_i64("count").ok(), Some(6));
        let single = apply_ops_chunks(&records, 10);
        assert_eq!(single.len(), 1);
        assert_eq!(single[0].keys().collect::<Vec<_>>(), vec!["applyOps"]);
    }
}
