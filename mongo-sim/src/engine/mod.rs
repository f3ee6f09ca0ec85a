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

use std::sync::{Arc, Mutex, MutexGuard};

use bson::{Bson, DateTime, Document, Timestamp};

mod crud;
mod ddl;
mod diff;
mod exec;
mod matcher;
mod oplog;
mod path;
mod resume_token;
mod store;
mod txn;
mod update;
mod value;

pub mod change_stream;

use exec::{Exec, target_name};
use matcher::Filter;
use oplog::{Images, OpRecord, Oplog, RetryableInfo};
use store::{Store, split_ns};
use txn::{Sessions, Transaction, apply_ops_chunks};
use value::{as_i64, is_truthy};

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
    Cursor {
        ns: String,
        documents: Vec<Document>,
    },
}

impl CommandError {
    /// An error without labels.
    pub fn new(code: i32, code_name: &'static str, message: String) -> Self {
        Self {
            code,
            code_name,
            message,
            labels: Vec::new(),
        }
    }

    /// 59 CommandNotFound, for commands the simulator does not implement.
    pub fn command_not_found(name: &str) -> Self {
        Self::new(59, "CommandNotFound", format!("no such command: '{name}'"))
    }
}

/// A filter over oplog entries, as parsed from a `find` on `local.oplog.rs`:
/// `ts` `$gt`/`$gte`, `ns`/`op` equality, `$in`, `$nin`, `$regex`, and `$or`/`$and`
/// of those.
#[derive(Debug, Clone)]
pub struct OplogFilter {
    filter: Document,
    compiled: Filter,
}

impl OplogFilter {
    /// Validates and keeps a `find` filter; unsupported operators are an error
    /// (code 2 BadValue) rather than silently matching everything.
    pub fn parse(filter: &Document) -> Result<Self, CommandError> {
        Ok(Self {
            filter: filter.clone(),
            compiled: Filter::parse(filter)?,
        })
    }

    /// Whether an oplog entry matches.
    pub fn matches(&self, entry: &Document) -> bool {
        self.compiled.matches(entry)
    }

    /// The tightest lower bound on `ts` the filter states at top level or
    /// inside `$and` (`(bound, inclusive)`), where a cursor can start.
    fn ts_lower_bound(&self) -> Option<(Timestamp, bool)> {
        lower_bound_in(&self.filter)
    }
}

fn lower_bound_in(filter: &Document) -> Option<(Timestamp, bool)> {
    let mut best: Option<(Timestamp, bool)> = None;
    let mut consider = |candidate: (Timestamp, bool)| {
        best = Some(match best {
            Some(current)
                if current.0 > candidate.0 || (current.0 == candidate.0 && !current.1) =>
            {
                current
            }
            _ => candidate,
        });
    };
    match filter.get("ts") {
        Some(Bson::Document(ops)) => {
            for (op, inclusive) in [("$gt", false), ("$gte", true), ("$eq", true)] {
                if let Some(Bson::Timestamp(ts)) = ops.get(op) {
                    consider((*ts, inclusive));
                }
            }
        }
        Some(Bson::Timestamp(ts)) => consider((*ts, true)),
        _ => {}
    }
    if let Ok(clauses) = filter.get_array("$and") {
        for clause in clauses.iter().filter_map(Bson::as_document) {
            if let Some(bound) = lower_bound_in(clause) {
                consider(bound);
            }
        }
    }
    best
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

/// Everything commands change, behind one lock so that a write and its
/// oplog entries are ordered together.
#[derive(Debug, Default)]
struct State {
    store: Store,
    sessions: Sessions,
}

/// The in-memory database.
pub struct Engine {
    config: EngineConfig,
    /// Lock order: `state` before `oplog`, never the reverse.
    state: Mutex<State>,
    oplog: Mutex<Oplog>,
    appended: tokio::sync::watch::Sender<u64>,
}

/// Locks a mutex, recovering from a poisoned one: a panicking test thread
/// must not wedge every other connection.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Commands whose retries a session must answer from memory.
fn is_retryable_write(name: &str) -> bool {
    matches!(
        name,
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify"
    )
}

fn no_such_transaction(number: i64) -> CommandError {
    let mut error = CommandError::new(
        251,
        "NoSuchTransaction",
        format!("Transaction with txnNumber {number} has been aborted or is not in progress."),
    );
    error.labels.push("TransientTransactionError".into());
    error
}

impl Engine {
    /// Creates an empty engine (with an empty oplog).
    pub fn new(config: EngineConfig) -> Arc<Self> {
        let oplog = Oplog::new(config.oplog_capacity_bytes);
        let (appended, _) = tokio::sync::watch::channel(0);
        Arc::new(Self {
            config,
            state: Mutex::new(State::default()),
            oplog: Mutex::new(oplog),
            appended,
        })
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
        let Some(name) = command.keys().next().map(String::as_str) else {
            return Err(CommandError::new(
                59,
                "CommandNotFound",
                "empty command".into(),
            ));
        };
        match name {
            "commitTransaction" => return self.commit_transaction(command),
            "abortTransaction" => return self.abort_transaction(command),
            "find" if db == "local" && command.get_str("find").ok() == Some("oplog.rs") => {
                return self.find_oplog(command);
            }
            _ => {}
        }
        let lsid = command.get_document("lsid").ok();
        let txn_number = command.get("txnNumber").and_then(as_i64);
        let in_txn = command.contains_key("autocommit") && !is_truthy(command.get("autocommit"));
        match (lsid, txn_number) {
            (Some(lsid), Some(number)) if in_txn => {
                self.run_in_transaction(db, name, command, lsid, number)
            }
            (Some(lsid), Some(number)) if is_retryable_write(name) => {
                self.run_retryable(db, name, command, lsid, number)
            }
            _ if in_txn => Err(CommandError::new(
                72,
                "InvalidOptions",
                "autocommit:false needs lsid and txnNumber".into(),
            )),
            _ => {
                let mut state = lock(&self.state);
                let (result, records) = self.execute(&mut state.store, db, name, command, false);
                self.append_records(&records, None);
                result
            }
        }
    }

    /// Runs one command against `store`, returning its result and the oplog
    /// records of whatever it changed (even when it then failed).
    fn execute(
        &self,
        store: &mut Store,
        db: &str,
        name: &str,
        command: &Document,
        in_txn: bool,
    ) -> (Result<CommandReply, CommandError>, Vec<OpRecord>) {
        let mut ex = Exec {
            version: self.config.version,
            store,
            records: Vec::new(),
            in_txn,
        };
        let result = self.dispatch(&mut ex, db, name, command);
        (result, ex.records)
    }

    fn dispatch(
        &self,
        ex: &mut Exec<'_>,
        db: &str,
        name: &str,
        cmd: &Document,
    ) -> Result<CommandReply, CommandError> {
        match name {
            "insert" => crud::insert(ex, db, cmd),
            "update" => crud::update(ex, db, cmd),
            "delete" => crud::delete(ex, db, cmd),
            "find" => crud::find(ex, db, cmd),
            "count" => crud::count(ex, db, cmd),
            "distinct" => crud::distinct(ex, db, cmd),
            "findAndModify" | "findandmodify" => crud::find_and_modify(ex, db, cmd),
            "aggregate" => crud::aggregate(ex, db, cmd),
            "create" => ddl::create(ex, db, cmd),
            "drop" => ddl::drop(ex, db, cmd),
            "dropDatabase" => ddl::drop_database(ex, db),
            "renameCollection" => ddl::rename_collection(ex, cmd),
            "createIndexes" => ddl::create_indexes(ex, db, cmd),
            "dropIndexes" | "deleteIndexes" => ddl::drop_indexes(ex, db, cmd),
            "collMod" => ddl::coll_mod(ex, db, cmd),
            "listDatabases" => ddl::list_databases(ex, cmd, self.oplog_stats().0),
            "listCollections" => ddl::list_collections(
                ex,
                db,
                cmd,
                lock(&self.oplog)
                    .stats()
                    .0
                    .max(self.config.oplog_capacity_bytes),
            ),
            "listIndexes" => ddl::list_indexes(ex, db, cmd),
            other => Err(CommandError::command_not_found(other)),
        }
    }

    /// A retryable write: executed once per `(lsid, txnNumber)`; a retry gets
    /// the first reply back. Entries carry `lsid`/`txnNumber`/`stmtId`/`prevOpTime`.
    fn run_retryable(
        &self,
        db: &str,
        name: &str,
        command: &Document,
        lsid: &Document,
        number: i64,
    ) -> Result<CommandReply, CommandError> {
        let mut state = lock(&self.state);
        if let Some((done, reply)) = &state.sessions.get_mut(lsid).retry
            && *done == number
        {
            return Ok(CommandReply::Document(reply.clone()));
        }
        let (result, records) = self.execute(&mut state.store, db, name, command, false);
        self.append_records(&records, Some((lsid, number)));
        if let Ok(CommandReply::Document(reply)) = &result {
            state.sessions.get_mut(lsid).retry = Some((number, reply.clone()));
        }
        result
    }

    /// Writes records as separate oplog entries (each with its own time).
    fn append_records(&self, records: &[OpRecord], session: Option<(&Document, i64)>) {
        if records.is_empty() {
            return;
        }
        let version = self.config.version;
        let mut oplog = lock(&self.oplog);
        let mut prev = None;
        let mut stmt_id = 0;
        let mut last_seq = 0;
        for record in records {
            let ts = oplog.tick();
            let retryable = match session {
                Some((lsid, txn_number)) if record.op != "c" => {
                    let info = RetryableInfo {
                        lsid: lsid.clone(),
                        txn_number,
                        stmt_id,
                        prev,
                    };
                    stmt_id += 1;
                    prev = Some(ts);
                    Some(info)
                }
                _ => None,
            };
            let entry =
                oplog::format_entry(version, record, ts, DateTime::now(), retryable.as_ref());
            last_seq = oplog.push(entry);
            if record.pre_image.is_some() || record.post_image.is_some() {
                let images = Images {
                    pre: record.pre_image.clone(),
                    post: record.post_image.clone(),
                };
                oplog.put_images(ts, 0, images);
            }
        }
        drop(oplog);
        self.appended.send_replace(last_seq);
    }

    fn run_in_transaction(
        &self,
        db: &str,
        name: &str,
        command: &Document,
        lsid: &Document,
        number: i64,
    ) -> Result<CommandReply, CommandError> {
        let mut guard = lock(&self.state);
        let State { store, sessions } = &mut *guard;
        let session = sessions.get_mut(lsid);
        if is_truthy(command.get("startTransaction")) {
            session.txn = Some(Transaction::new(number, lsid.clone()));
        }
        let Some(txn) = session.txn.as_mut().filter(|t| t.number == number) else {
            return Err(no_such_transaction(number));
        };
        if let Ok(coll) = target_name(command, name) {
            txn.load(store, db, coll);
        }
        let (result, records) = self.execute(&mut txn.store, db, name, command, true);
        txn.records.extend(records);
        result
    }

    /// `commitTransaction`: publishes the transaction's writes and writes one
    /// `applyOps` entry, or `partialTxn` chunks past `txn_chunk_ops`.
    fn commit_transaction(&self, command: &Document) -> Result<CommandReply, CommandError> {
        let (lsid, number) = session_of(command)?;
        let mut guard = lock(&self.state);
        let State { store, sessions } = &mut *guard;
        let session = sessions.get_mut(lsid);
        let mut txn = match session.txn.take() {
            Some(txn) if txn.number == number => txn,
            other => {
                session.txn = other;
                if session.committed == Some(number) {
                    return Ok(CommandReply::Document(Document::new()));
                }
                return Err(no_such_transaction(number));
            }
        };
        session.committed = Some(number);
        txn.publish(store);
        if txn.records.is_empty() {
            return Ok(CommandReply::Document(Document::new()));
        }
        let chunks = apply_ops_chunks(&txn.records, self.config.txn_chunk_ops);
        let mut oplog = lock(&self.oplog);
        let mut prev = None;
        let mut last_seq = 0;
        for o in chunks {
            let ts = oplog.tick();
            let entry = oplog::format_apply_ops(
                self.config.version,
                o,
                ts,
                DateTime::now(),
                &txn.lsid,
                number,
                prev,
            );
            last_seq = oplog.push(entry);
            prev = Some(ts);
        }
        let commit_ts = prev.expect("at least one chunk");
        for (index, record) in txn.records.iter().enumerate() {
            if record.pre_image.is_some() || record.post_image.is_some() {
                let images = Images {
                    pre: record.pre_image.clone(),
                    post: record.post_image.clone(),
                };
                oplog.put_images(commit_ts, index as u32, images);
            }
        }
        drop(oplog);
        self.appended.send_replace(last_seq);
        Ok(CommandReply::Document(Document::new()))
    }

    /// `abortTransaction`: drops the buffered writes; nothing is logged.
    fn abort_transaction(&self, command: &Document) -> Result<CommandReply, CommandError> {
        let (lsid, number) = session_of(command)?;
        let mut state = lock(&self.state);
        let session = state.sessions.get_mut(lsid);
        match session.txn.take() {
            Some(txn) if txn.number == number => Ok(CommandReply::Document(Document::new())),
            other => {
                session.txn = other;
                Err(no_such_transaction(number))
            }
        }
    }

    /// A non-tailable `find` on `local.oplog.rs` (e.g. the newest entry via
    /// `sort: {$natural: -1}, limit: 1`).
    fn find_oplog(&self, command: &Document) -> Result<CommandReply, CommandError> {
        let filter = match command.get("filter") {
            Some(Bson::Document(filter)) => OplogFilter::parse(filter)?,
            _ => OplogFilter::parse(&Document::new())?,
        };
        let newest_first = matches!(command.get("sort"), Some(Bson::Document(sort))
            if sort.get("$natural").and_then(as_i64) == Some(-1));
        let skip = command.get("skip").and_then(as_i64).unwrap_or(0).max(0) as usize;
        let limit = match command.get("limit").and_then(as_i64).map(i64::unsigned_abs) {
            None | Some(0) => usize::MAX,
            Some(n) => n as usize,
        };
        let oplog = lock(&self.oplog);
        let matching = |d: &&Document| filter.matches(d);
        let documents: Vec<Document> = if newest_first {
            oplog
                .newest_first()
                .filter(matching)
                .skip(skip)
                .take(limit)
                .cloned()
                .collect()
        } else {
            oplog
                .oldest_first()
                .filter(matching)
                .skip(skip)
                .take(limit)
                .cloned()
                .collect()
        };
        Ok(CommandReply::Cursor {
            ns: "local.oplog.rs".into(),
            documents,
        })
    }

    /// Looks a document up by `_id` (for change-stream `updateLookup`).
    pub fn find_by_id(&self, ns: &str, id: &bson::Bson) -> Option<Document> {
        let (db, coll) = split_ns(ns);
        lock(&self.state)
            .store
            .collection(db, coll)?
            .get(id)
            .cloned()
    }

    /// Appends a raw entry to the oplog as is (tests feed fixture entries this
    /// way). A missing `ts` is filled from the clock; a given `ts` advances the
    /// clock past it.
    pub fn append_oplog_entry(&self, entry: Document) -> Timestamp {
        let mut entry = entry;
        let mut oplog = lock(&self.oplog);
        let ts = match entry.get("ts") {
            Some(Bson::Timestamp(ts)) => *ts,
            _ => {
                let ts = oplog.tick();
                entry.insert("ts", ts);
                ts
            }
        };
        let seq = oplog.push(entry);
        drop(oplog);
        self.appended.send_replace(seq);
        ts
    }

    /// Appends an `n` no-op (`{msg: "periodic noop"}`), as an idle primary does every 10 s.
    pub fn append_noop(&self) -> Timestamp {
        let mut oplog = lock(&self.oplog);
        let ts = oplog.tick();
        let seq = oplog.push(oplog::format_noop(self.config.version, ts, DateTime::now()));
        drop(oplog);
        self.appended.send_replace(seq);
        ts
    }

    /// Changes the oplog capacity (bytes), dropping the oldest entries if needed.
    pub fn set_oplog_capacity(&self, bytes: usize) {
        lock(&self.oplog).set_capacity(bytes);
    }

    /// Drops the oldest entries, keeping only the newest `keep` entries.
    pub fn truncate_oplog(&self, keep: usize) {
        lock(&self.oplog).truncate(keep);
    }

    /// Timestamp of the newest oplog entry (or the clock's current time if empty).
    pub fn last_optime(&self) -> Timestamp {
        lock(&self.oplog).last_optime()
    }

    /// Positions a new tailable cursor just before the first entry matching
    /// `ts` constraints of `filter` (the read itself applies the filter).
    /// An entry exactly at a requested `$gte` ts must be included.
    pub fn oplog_cursor_start(&self, filter: &OplogFilter) -> OplogCursorPos {
        let oplog = lock(&self.oplog);
        let seq = match filter.ts_lower_bound() {
            Some((bound, inclusive)) => oplog.position_before(bound, inclusive),
            None => oplog.start_position(),
        };
        OplogCursorPos { seq }
    }

    /// Reads up to `limit` matching entries after `pos`. Fails with code 136
    /// CappedPositionLost when the entry after `pos` has been dropped from the
    /// capped oplog. A `limit` of 0 means no limit.
    pub fn read_oplog(
        &self,
        pos: OplogCursorPos,
        filter: &OplogFilter,
        limit: usize,
    ) -> Result<OplogRead, CommandError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let (entries, next) =
            lock(&self.oplog).read_after(pos.seq, limit, |d| filter.matches(d))?;
        Ok(OplogRead {
            entries,
            next: OplogCursorPos { seq: next },
        })
    }

    /// A receiver that changes whenever an entry is appended, so a blocked
    /// `getMore` can wait for new entries instead of polling.
    pub fn oplog_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Total bytes and entries currently held in the oplog (for counters and tests).
    pub fn oplog_stats(&self) -> (usize, usize) {
        lock(&self.oplog).stats()
    }
}

/// `lsid` and `txnNumber` of a transaction command.
fn session_of(command: &Document) -> Result<(&Document, i64), CommandError> {
    let lsid = command.get_document("lsid").map_err(|_| {
        CommandError::new(
            72,
            "InvalidOptions",
            "transaction commands need lsid".into(),
        )
    })?;
    let number = command.get("txnNumber").and_then(as_i64).ok_or_else(|| {
        CommandError::new(
            72,
            "InvalidOptions",
            "transaction commands need txnNumber".into(),
        )
    })?;
    Ok((lsid, number))
}

#[cfg(test)]
mod tests;
