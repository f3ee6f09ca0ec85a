//! Traffic counters, so benchmarks and tests can see what a client really
//! asked for and received (e.g. that a tailer did not re-read the oplog).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bson::{Document, doc};

/// Which kind of cursor returned documents; the three are counted apart
/// because they stress different paths of a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CursorKind {
    /// A `find` on `local.oplog.rs` (tailable or not).
    OplogTail,
    /// An `aggregate` with `$changeStream`.
    ChangeStream,
    /// Any other cursor (`find`, `aggregate`, `listCollections`, ...).
    Other,
}

impl CursorKind {
    fn index(self) -> usize {
        match self {
            CursorKind::OplogTail => 0,
            CursorKind::ChangeStream => 1,
            CursorKind::Other => 2,
        }
    }
}

/// Documents and BSON bytes returned through one kind of cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Documents returned in `firstBatch`/`nextBatch` arrays.
    pub documents: u64,
    /// Their total BSON size.
    pub bytes: u64,
}

/// A consistent-enough copy of all counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Commands received, by the name the client used (e.g. `hello`, `getMore`).
    pub commands: BTreeMap<String, u64>,
    /// Returned through oplog cursors.
    pub oplog_tail: Traffic,
    /// Returned through change-stream cursors.
    pub change_stream: Traffic,
    /// Returned through every other cursor.
    pub other: Traffic,
}

impl CountersSnapshot {
    /// How many times a command arrived (0 if never).
    pub fn command(&self, name: &str) -> u64 {
        self.commands.get(name).copied().unwrap_or(0)
    }

    /// The reply body of the `mongoSimCounters` admin command.
    pub fn to_document(&self) -> Document {
        let commands: Document = self
            .commands
            .iter()
            .map(|(name, count)| (name.clone(), bson::Bson::Int64(*count as i64)))
            .collect();
        let traffic = |t: Traffic| doc! {"documents": t.documents as i64, "bytes": t.bytes as i64};
        doc! {
            "commands": commands,
            "oplogTail": traffic(self.oplog_tail),
            "changeStream": traffic(self.change_stream),
            "other": traffic(self.other),
        }
    }
}

/// Live counters, shared by every connection task.
#[derive(Debug, Default)]
pub struct Counters {
    commands: Mutex<HashMap<String, u64>>,
    documents: [AtomicU64; 3],
    bytes: [AtomicU64; 3],
}

impl Counters {
    /// Copies the current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        let commands = self
            .commands
            .lock()
            .expect("counters lock")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let traffic = |kind: CursorKind| Traffic {
            documents: self.documents[kind.index()].load(Ordering::Relaxed),
            bytes: self.bytes[kind.index()].load(Ordering::Relaxed),
        };
        CountersSnapshot {
            commands,
            oplog_tail: traffic(CursorKind::OplogTail),
            change_stream: traffic(CursorKind::ChangeStream),
            other: traffic(CursorKind::Other),
        }
    }

    /// Sets everything back to zero, so a benchmark can measure one phase.
    pub fn reset(&self) {
        self.commands.lock().expect("counters lock").clear();
        for counter in self.documents.iter().chain(self.bytes.iter()) {
            counter.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_command(&self, name: &str) {
        let mut commands = self.commands.lock().expect("counters lock");
        match commands.get_mut(name) {
            Some(count) => *count += 1,
            None => {
                commands.insert(name.to_owned(), 1);
            }
        }
    }

    pub(crate) fn count_returned(&self, kind: CursorKind, documents: u64, bytes: u64) {
        self.documents[kind.index()].fetch_add(documents, Ordering::Relaxed);
        self.bytes[kind.index()].fetch_add(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_resets() {
        let counters = Counters::default();
        counters.count_command("find");
        counters.count_command("find");
        counters.count_command("getMore");
        counters.count_returned(CursorKind::OplogTail, 3, 300);
        counters.count_returned(CursorKind::OplogTail, 1, 50);
        counters.count_returned(CursorKind::ChangeStream, 2, 10);
        let snap = counters.snapshot();
        assert_eq!(snap.command("find"), 2);
        assert_eq!(snap.command("getMore"), 1);
        assert_eq!(snap.command("insert"), 0);
        assert_eq!(
            snap.oplog_tail,
            Traffic {
                documents: 4,
                bytes: 350
            }
        );
        assert_eq!(
            snap.change_stream,
            Traffic {
                documents: 2,
                bytes: 10
            }
        );
        assert_eq!(snap.other, Traffic::default());
        let doc = snap.to_document();
        assert_eq!(
            doc.get_document("commands")
                .unwrap()
                .get_i64("find")
                .unwrap(),
            2
        );
        assert_eq!(
            doc.get_document("oplogTail")
                .unwrap()
                .get_i64("bytes")
                .unwrap(),
            350
        );

        counters.reset();
        assert_eq!(counters.snapshot(), CountersSnapshot::default());
    }
}
