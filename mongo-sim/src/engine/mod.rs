//! The storage engine of the simulator: databases, collections, the capped
//! oplog and change events, with no networking.
//!
//! INTERFACE CONTRACT (agreed between the engine and the server modules; the
//! signatures below are fixed, the bodies are the engine's to write):
//! - `Engine` is shared as `Arc<Engine>`; every method takes `&self` and locks
//!   internally, so the server can call it from many connection tasks.
//! - `run_command` executes every data command (see its doc); the server only
//!   handles handshake, cursors (`getMore`, `killCursors`, tailing,
//!   `$changeStream`), sessions bookkeeping it needs, and fault injection.
//! - Oplog entries are written exactly as the configured MongoDB version writes
//!   them (v1 updates for 4.4, v2 diffs for 5.0+), with `ts` from a
//!   monotonically increasing cluster clock.

use std::sync::Arc;

use bson::{Document, Timestamp};

/// The MongoDB release whose behaviour and oplog format the simulator copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MongoVersion {
    /// 4.4: v1 (`$set`/`$unset`, `$v:1`) update entries; wire version 9.
    V4_4,
    /// 5.0: v2 (`$v:2`, `diff`) update entries; wire version 13.
    V5_0,
    /// 6.0; wire version 17.
    V6_0,
    /// 7.0; wire version 21.
    V7_0,
    /// 8.0; wire version 25.
    V8_0,
}

impl MongoVersion {
    /// Parses `4.4`, `5.0`, `6.0`, `7.0` or `8.0`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "4.4" => Some(Self::V4_4),
            "5.0" => Some(Self::V5_0),
            "6.0" => Some(Self::V6_0),
            "7.0" => Some(Self::V7_0),
            "8.0" => Some(Self::V8_0),
            _ => None,
        }
    }

    /// `maxWireVersion` a server of this version reports in `hello`.
    pub fn max_wire_version(self) -> i32 {
        match self {
            Self::V4_4 => 9,
            Self::V5_0 => 13,
            Self::V6_0 => 17,
            Self::V7_0 => 21,
            Self::V8_0 => 25,
        }
    }

    /// The version string `buildInfo` reports, e.g. `"7.0.0"`.
    pub fn version_string(self) -> &'static str {
        match self {
            Self::V4_4 => "4.4.29",
            Self::V5_0 => "5.0.31",
            Self::V6_0 => "6.0.20",
            Self::V7_0 => "7.0.16",
            Self::V8_0 => "8.0.4",
        }
    }
}

/// Settings fixed when the engine is created.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Which server's oplog format to write.
    pub version: MongoVersion,
    /// Capacity of `local.oplog.rs` in bytes of BSON; the oldest entries are
    /// dropped past it, as a capped collection does.
    pub oplog_capacity_bytes: usize,
    /// Operations per `applyOps` chunk above which a committed transaction is
    /// split into `partialTxn` chunks (a real server splits at 16 MB; tests
    /// want small numbers).
    pub txn_chunk_ops: usize,
}

/// A command failure, rendered by the server as `{ok:0, errmsg, code, codeName}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code_name} ({code}): {message}")]
pub struct CommandError {
    /// MongoDB's numeric error code, e.g. 59 CommandNotFound, 11000 DuplicateKey.
    pub code: i32,
    /// MongoDB's name for the code.
    pub code_name: &'static str,
    /// Human-readable detail.
    pub message: String,
    /// Error labels such as `TransientTransactionError`.
    pub labels: Vec<String>,
}

/// What a data command produced.
#[derive(Debug, Clone)]
pub enum CommandReply {
    /// A complete reply document (without `ok`, which the server adds).
    Document(Document),
    /// Documents for the server to serve through a cursor (`find`,
    /// non-change-stream `aggregate`, `listCollections`, ...), on namespace `ns`.
    Cursor { ns: String, documents: Vec<Document> },
}

/// A filter over oplog entries, as parsed from a `find` on `local.oplog.rs`:
/// `ts` `$gt`/`$gte`, `ns`/`op` equality, `$in`, `$nin`, `$regex`, and `$or`/`$and`
/// of those.
#[derive(Debug, Clone)]
pub struct OplogFilter {
    filter: Document,
}

impl OplogFilter {
    /// Validates and keeps a `find` filter; unsupported operators are an error
    /// (code 2 BadValue) rather than silently matching everything.
    pub fn parse(filter: &Document) -> Result<Self, CommandError> {
        let _ = filter;
        todo!("engine: parse oplog filter")
    }

    /// Whether an oplog entry matches.
    pub fn matches(&self, entry: &Document) -> bool {
        let _ = (&self.filter, entry);
        todo!("engine: match oplog entry")
    }
}

/// A read position of a tailable cursor in the oplog. Entries carry a sequence
/// number so a cursor can tell that its next entry was overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogCursorPos {
    /// Sequence number of the last entry the cursor has passed (matching or not).
    pub seq: u64,
}

/// Result of reading the oplog from a cursor position.
#[derive(Debug, Clone)]
pub struct OplogRead {
    /// Matching entries in oplog order, at most the requested limit.
    pub entries: Vec<Document>,
    /// Where the next read continues.
    pub next: OplogCursorPos,
}

/// The in-memory database.
pub struct Engine {
    config: EngineConfig,
}

impl Engine {
    /// Creates an empty engine (with an empty oplog).
    pub fn new(config: EngineConfig) -> Arc<Self> {
        Arc::new(Self { config })
    }

    /// The settings the engine was created with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Runs a data command against database `db`. `command` is the whole
    /// command document as received (kind-1 sections already merged in,
    /// `lsid`/`txnNumber`/`startTransaction`/`autocommit` included).
    ///
    /// Handles: insert, update (replacement and operators `$set`, `$unset`,
    /// `$inc`, `$push` (with `$each`/`$position`), `$pull`, `$addToSet`,
    /// dotted and positional-index paths, upsert, multi), delete (limit 0/1),
    /// find (non-tailable; equality, `$in`, `$nin`, `$gt`/`$gte`/`$lt`/`$lte`/`$ne`,
    /// `$exists`, `$or`/`$and`; sort, skip, limit, projection of included
    /// fields), count, findAndModify, create, drop, dropDatabase,
    /// renameCollection, createIndexes, dropIndexes, listDatabases,
    /// listCollections, listIndexes, and transactions: a command carrying
    /// `lsid`+`txnNumber`+`autocommit:false` buffers its writes (visible to the
    /// same transaction only) until `commitTransaction` writes them and one
    /// `applyOps` oplog entry (or `partialTxn` chunks) or `abortTransaction`
    /// drops them. Every write appends the oplog entries a real server writes.
    pub fn run_command(&self, db: &str, command: &Document) -> Result<CommandReply, CommandError> {
        let _ = (db, command);
        todo!("engine: run_command")
    }

    /// Looks a document up by `_id` (for change-stream `updateLookup`).
    pub fn find_by_id(&self, ns: &str, id: &bson::Bson) -> Option<Document> {
        let _ = (ns, id);
        todo!("engine: find_by_id")
    }

    /// Appends a raw entry to the oplog as is (tests feed fixture entries this
    /// way). A missing `ts` is filled from the clock; a given `ts` advances the
    /// clock past it.
    pub fn append_oplog_entry(&self, entry: Document) -> Timestamp {
        let _ = entry;
        todo!("engine: append_oplog_entry")
    }

    /// Appends an `n` no-op (`{msg: "periodic noop"}`), as an idle primary does every 10 s.
    pub fn append_noop(&self) -> Timestamp {
        todo!("engine: append_noop")
    }

    /// Changes the oplog capacity (bytes), dropping the oldest entries if needed.
    pub fn set_oplog_capacity(&self, bytes: usize) {
        let _ = bytes;
        todo!("engine: set_oplog_capacity")
    }

    /// Drops the oldest entries, keeping only the newest `keep` entries.
    pub fn truncate_oplog(&self, keep: usize) {
        let _ = keep;
        todo!("engine: truncate_oplog")
    }

    /// Timestamp of the newest oplog entry (or the clock's current time if empty).
    pub fn last_optime(&self) -> Timestamp {
        todo!("engine: last_optime")
    }

    /// Positions a new tailable cursor just before the first entry matching
    /// `ts` constraints of `filter` (the read itself applies the filter).
    /// An entry exactly at a requested `$gte` ts must be included.
    pub fn oplog_cursor_start(&self, filter: &OplogFilter) -> OplogCursorPos {
        let _ = filter;
        todo!("engine: oplog_cursor_start")
    }

    /// Reads up to `limit` matching entries after `pos`. Fails with code 136
    /// CappedPositionLost when the entry after `pos` has been dropped from the
    /// capped oplog.
    pub fn read_oplog(
        &self,
        pos: OplogCursorPos,
        filter: &OplogFilter,
        limit: usize,
    ) -> Result<OplogRead, CommandError> {
        let _ = (pos, filter, limit);
        todo!("engine: read_oplog")
    }

    /// A receiver that changes whenever an entry is appended, so a blocked
    /// `getMore` can wait for new entries instead of polling.
    pub fn oplog_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        todo!("engine: oplog_watch")
    }

    /// Total bytes and entries currently held in the oplog (for counters and tests).
    pub fn oplog_stats(&self) -> (usize, usize) {
        todo!("engine: oplog_stats")
    }
}

/// Change streams derived from the oplog.
pub mod change_stream {
    use super::*;

    /// A parsed `$changeStream` aggregate: the stage options plus the rest of
    /// the pipeline (`$match` on event fields, `$project` ignored).
    #[derive(Debug, Clone)]
    pub struct ChangeStreamSpec {
        /// `db.coll` for a collection stream, `db` for a database stream,
        /// None for a cluster-wide stream (`allChangesForCluster`).
        pub scope: Option<String>,
        /// The `$changeStream` stage document.
        pub stage: Document,
        /// The stages after it.
        pub rest: Vec<Document>,
    }

    /// A change-stream cursor's state.
    #[derive(Debug, Clone)]
    pub struct ChangeStreamCursor {
        /// Parsed request.
        pub spec: ChangeStreamSpec,
        /// Position in the oplog.
        pub pos: OplogCursorPos,
        /// Set once an invalidate event was returned; the server then closes the cursor.
        pub invalidated: bool,
    }

    /// One batch of events.
    #[derive(Debug, Clone)]
    pub struct ChangeBatch {
        /// Events, each with `_id` = its resume token.
        pub events: Vec<Document>,
        /// The `postBatchResumeToken`: the last event's `_id`, or a high-water-mark
        /// token at the oplog position reached when the batch is empty.
        pub post_batch_resume_token: Document,
    }

    impl Engine {
        /// Opens a change stream (`resumeAfter`/`startAfter`/`startAtOperationTime`
        /// honoured). Fails with 286 ChangeStreamHistoryLost when the resume point
        /// is older than the oplog, 260 InvalidResumeToken for a token it cannot read.
        pub fn open_change_stream(
            &self,
            spec: ChangeStreamSpec,
        ) -> Result<ChangeStreamCursor, CommandError> {
            let _ = spec;
            todo!("engine: open_change_stream")
        }

        /// Reads up to `limit` events after the cursor's position, advancing it.
        /// fullDocument (updateLookup/whenAvailable/required) and
        /// fullDocumentBeforeChange are applied here.
        pub fn read_change_stream(
            &self,
            cursor: &mut ChangeStreamCursor,
            limit: usize,
        ) -> Result<ChangeBatch, CommandError> {
            let _ = (cursor, limit);
            todo!("engine: read_change_stream")
        }
    }
}
