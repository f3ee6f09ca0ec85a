//! Open cursors, found again by id on `getMore` and `killCursors`.
//!
//! Cursors belong to the server, not to a connection (as in MongoDB): a
//! client whose connection dropped may continue a cursor on another one.
//! Each cursor sits behind its own async mutex so a long-waiting `getMore`
//! blocks nobody else, and a second `getMore` on the same id is refused.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use bson::Document;

use crate::counters::CursorKind;
use crate::engine::change_stream::ChangeStreamCursor;
use crate::engine::{CommandError, Engine, OplogCursorPos, OplogFilter};

/// Where a cursor's documents come from.
pub(crate) enum CursorSource {
    /// Documents computed up front (find, aggregate, listCollections, and
    /// non-tailable reads of the oplog).
    Batch(VecDeque<Document>),
    /// A tailable cursor's read position in `local.oplog.rs`; it stays open
    /// at the end of the oplog.
    Oplog {
        filter: OplogFilter,
        pos: OplogCursorPos,
        /// `getMore` waits for new entries instead of answering at once.
        await_data: bool,
    },
    /// A change stream over the oplog.
    ChangeStream(Box<ChangeStreamCursor>),
}

/// A cursor between two batches.
pub(crate) struct OpenCursor {
    /// `db.collection` reported in each batch.
    pub ns: String,
    /// Which counters its documents go to.
    pub kind: CursorKind,
    pub source: CursorSource,
}

/// One batch taken from a cursor.
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    pub documents: Vec<Document>,
    /// No more batches will come; the reply gets cursor id 0.
    pub exhausted: bool,
    /// Change streams only.
    pub post_batch_resume_token: Option<Document>,
}

impl OpenCursor {
    /// Whether an empty `getMore` should wait for new oplog entries.
    pub fn awaits_data(&self) -> bool {
        match self.source {
            CursorSource::Batch(_) => false,
            CursorSource::Oplog { await_data, .. } => await_data,
            CursorSource::ChangeStream(_) => true,
        }
    }

    /// Whether the cursor follows the oplog, so a step-down interrupts it.
    pub fn follows_oplog(&self) -> bool {
        !matches!(self.source, CursorSource::Batch(_))
    }

    /// Takes up to `limit` documents without waiting.
    pub fn fetch(&mut self, engine: &Engine, limit: usize) -> Result<Fetched, CommandError> {
        match &mut self.source {
            CursorSource::Batch(remaining) => {
                let take = limit.min(remaining.len());
                let documents: Vec<Document> = remaining.drain(..take).collect();
                Ok(Fetched {
                    documents,
                    exhausted: remaining.is_empty(),
                    post_batch_resume_token: None,
                })
            }
            CursorSource::Oplog { filter, pos, .. } => {
                let read = engine.read_oplog(*pos, filter, limit)?;
                *pos = read.next;
                Ok(Fetched {
                    documents: read.entries,
                    exhausted: false,
                    post_batch_resume_token: None,
                })
            }
            CursorSource::ChangeStream(cursor) => {
                let batch = engine.read_change_stream(cursor, limit)?;
                Ok(Fetched {
                    documents: batch.events,
                    exhausted: cursor.invalidated,
                    post_batch_resume_token: Some(batch.post_batch_resume_token),
                })
            }
        }
    }
}

/// A shared handle to one open cursor.
pub(crate) type CursorHandle = Arc<tokio::sync::Mutex<OpenCursor>>;

/// Every open cursor of the server.
pub(crate) struct CursorRegistry {
    next_id: AtomicI64,
    open: Mutex<HashMap<i64, CursorHandle>>,
}

impl CursorRegistry {
    /// Ids start at a random point so ids from a previous server instance
    /// (after a test restarts it) are unlikely to hit a live cursor.
    pub fn new() -> Self {
        let start = rand::random_range(1_000_000i64..(1i64 << 40));
        Self {
            next_id: AtomicI64::new(start),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Stores a cursor and returns its (non-zero) id.
    pub fn register(&self, cursor: OpenCursor) -> i64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .insert(id, Arc::new(tokio::sync::Mutex::new(cursor)));
        id
    }

    pub fn get(&self, id: i64) -> Option<CursorHandle> {
        self.lock().get(&id).cloned()
    }

    /// Forgets a cursor; returns whether it existed.
    pub fn remove(&self, id: i64) -> bool {
        self.lock().remove(&id).is_some()
    }

    /// How many cursors are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, CursorHandle>> {
        self.open.lock().expect("cursor registry lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, MongoVersion};
    use bson::doc;

    fn engine() -> Arc<Engine> {
        Engine::new(EngineConfig {
            version: MongoVersion::V7_0,
            oplog_capacity_bytes: 1 << 20,
            txn_chunk_ops: 1000,
        })
    }

    #[test]
    fn batch_cursors_drain_in_order() {
        let engine = engine();
        let docs: VecDeque<Document> = (0..5).map(|i| doc! {"i": i}).collect();
        let mut cursor = OpenCursor {
            ns: "db.c".into(),
            kind: CursorKind::Other,
            source: CursorSource::Batch(docs),
        };
        assert!(!cursor.awaits_data());
        assert!(!cursor.follows_oplog());
        // (limit, expected first i, expected count, exhausted)
        let steps = [(2, 0, 2, false), (2, 2, 2, false), (2, 4, 1, true)];
        for (limit, first, count, exhausted) in steps {
            let fetched = cursor.fetch(&engine, limit).unwrap();
            assert_eq!(fetched.documents.len(), count);
            assert_eq!(fetched.documents[0].get_i32("i").unwrap(), first);
            assert_eq!(fetched.exhausted, exhausted);
        }
    }

    #[test]
    fn registry_hands_out_distinct_ids() {
        let registry = CursorRegistry::new();
        let make = || OpenCursor {
            ns: "db.c".into(),
            kind: CursorKind::Other,
            source: CursorSource::Batch(VecDeque::new()),
        };
        let a = registry.register(make());
        let b = registry.register(make());
        assert!(a > 0 && b > 0 && a != b);
        assert_eq!(registry.len(), 2);
        assert!(registry.get(a).is_some());
        assert!(registry.remove(a));
        assert!(!registry.remove(a));
        assert!(registry.get(a).is_none());
        assert_eq!(registry.len(), 1);
    }
}
