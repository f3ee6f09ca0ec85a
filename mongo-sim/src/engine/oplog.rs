//! `local.oplog.rs`: a capped, byte-bounded log with a cluster clock and a
//! sequence number per entry (so a cursor can tell it fell off the end), the
//! exact entry layouts per server version, and the change-stream pre/post
//! images that live and die with the entries they belong to.

use std::collections::{BTreeMap, VecDeque};

use bson::{Binary, Bson, DateTime, Document, Timestamp, doc};

use super::{CommandError, MongoVersion};

/// A write as the oplog records it, before it is given a time.
#[derive(Debug, Clone)]
pub(crate) struct OpRecord {
    pub op: &'static str,
    pub ns: String,
    pub ui: Option<Binary>,
    pub o: Document,
    pub o2: Option<Document>,
    /// The document before the write, kept for change-stream
    /// `fullDocumentBeforeChange` when the collection records images.
    pub pre_image: Option<Document>,
    /// The document after the write, for `fullDocument: whenAvailable`.
    pub post_image: Option<Document>,
}

impl OpRecord {
    /// A record without images.
    pub(crate) fn new(
        op: &'static str,
        ns: String,
        ui: Option<Binary>,
        o: Document,
        o2: Option<Document>,
    ) -> Self {
        Self {
            op,
            ns,
            ui,
            o,
            o2,
            pre_image: None,
            post_image: None,
        }
    }
}

/// Session fields of a retryable write's entry.
#[derive(Debug, Clone)]
pub(crate) struct RetryableInfo {
    pub lsid: Document,
    pub txn_number: i64,
    pub stmt_id: i32,
    pub prev: Option<Timestamp>,
}

/// The optime of the previous entry of a chain, or the null optime.
pub(crate) fn prev_op_time(prev: Option<Timestamp>) -> Document {
    match prev {
        Some(ts) => doc! {"ts": ts, "t": 1i64},
        None => doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64},
    }
}

fn version_field(version: MongoVersion) -> Bson {
    if version == MongoVersion::V4_4 {
        Bson::Int32(2)
    } else {
        Bson::Int64(2)
    }
}

/// Lays out a CRUD or command entry exactly as the version writes it:
/// 5.0+ `[lsid, txnNumber,] op, ns, ui, o, o2, ts, t, v, wall[, stmtId, prevOpTime]`,
/// 4.4 `ts, t, h, v, op, ns, ui, o2, wall[, lsid, txnNumber, stmtId, prevOpTime], o`.
pub(crate) fn format_entry(
    version: MongoVersion,
    record: &OpRecord,
    ts: Timestamp,
    wall: DateTime,
    retryable: Option<&RetryableInfo>,
) -> Document {
    let mut entry = Document::new();
    if version == MongoVersion::V4_4 {
        entry.insert("ts", ts);
        entry.insert("t", 1i64);
        entry.insert("h", 0i64);
        entry.insert("v", version_field(version));
        entry.insert("op", record.op);
        entry.insert("ns", record.ns.clone());
        if let Some(ui) = &record.ui {
            entry.insert("ui", ui.clone());
        }
        if let Some(o2) = &record.o2 {
            entry.insert("o2", o2.clone());
        }
        entry.insert("wall", wall);
        if let Some(info) = retryable {
            insert_session(&mut entry, info);
            entry.insert("stmtId", info.stmt_id);
            entry.insert("prevOpTime", prev_op_time(info.prev));
        }
        entry.insert("o", record.o.clone());
        return entry;
    }
    if let Some(info) = retryable {
        insert_session(&mut entry, info);
    }
    entry.insert("op", record.op);
    entry.insert("ns", record.ns.clone());
    if let Some(ui) = &record.ui {
        entry.insert("ui", ui.clone());
    }
    entry.insert("o", record.o.clone());
    if let Some(o2) = &record.o2 {
        entry.insert("o2", o2.clone());
    }
    entry.insert("ts", ts);
    entry.insert("t", 1i64);
    entry.insert("v", version_field(version));
    entry.insert("wall", wall);
    if let Some(info) = retryable {
        entry.insert("stmtId", info.stmt_id);
        entry.insert("prevOpTime", prev_op_time(info.prev));
    }
    entry
}

fn insert_session(entry: &mut Document, info: &RetryableInfo) {
    entry.insert("lsid", info.lsid.clone());
    entry.insert("txnNumber", info.txn_number);
}

/// An op inside `applyOps`: `op, ns, ui, o[, o2]` (no time fields).
pub(crate) fn format_inner(record: &OpRecord) -> Document {
    let mut inner = Document::new();
    inner.insert("op", record.op);
    inner.insert("ns", record.ns.clone());
    if let Some(ui) = &record.ui {
        inner.insert("ui", ui.clone());
    }
    inner.insert("o", record.o.clone());
    if let Some(o2) = &record.o2 {
        inner.insert("o2", o2.clone());
    }
    inner
}

/// A transaction's `admin.$cmd` applyOps entry (5.0+: `lsid, txnNumber, op,
/// ns, o, ts, t, v, wall, prevOpTime`; 4.4: `ts, t, h, v, op, ns, wall, lsid,
/// txnNumber, prevOpTime, o`).
pub(crate) fn format_apply_ops(
    version: MongoVersion,
    o: Document,
    ts: Timestamp,
    wall: DateTime,
    lsid: &Document,
    txn_number: i64,
    prev: Option<Timestamp>,
) -> Document {
    let mut entry = Document::new();
    if version == MongoVersion::V4_4 {
        entry.insert("ts", ts);
        entry.insert("t", 1i64);
        entry.insert("h", 0i64);
        entry.insert("v", version_field(version));
        entry.insert("op", "c");
        entry.insert("ns", "admin.$cmd");
        entry.insert("wall", wall);
        entry.insert("lsid", lsid.clone());
        entry.insert("txnNumber", txn_number);
        entry.insert("prevOpTime", prev_op_time(prev));
        entry.insert("o", o);
        return entry;
    }
    entry.insert("lsid", lsid.clone());
    entry.insert("txnNumber", txn_number);
    entry.insert("op", "c");
    entry.insert("ns", "admin.$cmd");
    entry.insert("o", o);
    entry.insert("ts", ts);
    entry.insert("t", 1i64);
    entry.insert("v", version_field(version));
    entry.insert("wall", wall);
    entry.insert("prevOpTime", prev_op_time(prev));
    entry
}

/// The periodic no-op an idle primary writes.
pub(crate) fn format_noop(version: MongoVersion, ts: Timestamp, wall: DateTime) -> Document {
    let record = OpRecord::new(
        "n",
        String::new(),
        None,
        doc! {"msg": "periodic noop"},
        None,
    );
    format_entry(version, &record, ts, wall, None)
}

/// The size of a document's BSON encoding, computed without encoding it
/// (appends must stay cheap: the capped oplog needs every entry's size).
pub(crate) fn encoded_size(doc: &Document) -> usize {
    // int32 length + elements + trailing NUL.
    4 + doc
        .iter()
        .map(|(key, value)| element_size(key.len(), value))
        .sum::<usize>()
        + 1
}

fn element_size(key_len: usize, value: &Bson) -> usize {
    // type byte + key cstring + value.
    1 + key_len + 1 + value_size(value)
}

fn string_size(text: &str) -> usize {
    4 + text.len() + 1
}

fn value_size(value: &Bson) -> usize {
    match value {
        Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) | Bson::Int64(_) => 8,
        Bson::Int32(_) => 4,
        Bson::Boolean(_) => 1,
        Bson::Null | Bson::Undefined | Bson::MinKey | Bson::MaxKey => 0,
        Bson::ObjectId(_) => 12,
        Bson::Decimal128(_) => 16,
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => string_size(s),
        Bson::Document(doc) => encoded_size(doc),
        Bson::Array(items) => {
            let elements: usize = items
                .iter()
                .enumerate()
                .map(|(i, item)| element_size(decimal_len(i), item))
                .sum();
            4 + elements + 1
        }
        Bson::Binary(bin) => {
            let old_style = bin.subtype == bson::spec::BinarySubtype::BinaryOld;
            4 + 1 + bin.bytes.len() + if old_style { 4 } else { 0 }
        }
        Bson::RegularExpression(re) => {
            re.pattern.as_str().len() + 1 + re.options.as_str().len() + 1
        }
        Bson::JavaScriptCodeWithScope(code) => {
            4 + string_size(&code.code) + encoded_size(&code.scope)
        }
        Bson::DbPointer(_) => {
            // Its fields are private to the bson crate: measure by encoding.
            let wrapped = doc! {"": value.clone()};
            wrapped.to_vec().map_or(0, |bytes| bytes.len()) - 4 - 1 - 2
        }
    }
}

fn decimal_len(mut n: usize) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// Pre- and post-images of one change (keyed by clusterTime and the index
/// inside a transaction).
#[derive(Debug, Clone, Default)]
pub(crate) struct Images {
    pub pre: Option<Document>,
    pub post: Option<Document>,
}

#[derive(Debug)]
struct StoredEntry {
    seq: u64,
    ts: Timestamp,
    bytes: usize,
    doc: Document,
}

/// The capped oplog and the cluster clock.
#[derive(Debug)]
pub(crate) struct Oplog {
    entries: VecDeque<StoredEntry>,
    total_bytes: usize,
    capacity: usize,
    next_seq: u64,
    /// Whether entries were ever dropped (history before the first entry is lost).
    dropped_any: bool,
    last_ts: Timestamp,
    images: BTreeMap<(Timestamp, u32), Images>,
}

/// Error for a cursor whose next entry was overwritten.
pub(crate) fn capped_position_lost(seq: u64) -> CommandError {
    CommandError::new(
        136,
        "CappedPositionLost",
        format!(
            "CollectionScan died due to position in capped collection being deleted. Last seen record id: RecordId({seq})"
        ),
    )
}

impl Oplog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            total_bytes: 0,
            capacity,
            next_seq: 1,
            dropped_any: false,
            last_ts: Timestamp {
                time: 0,
                increment: 0,
            },
            images: BTreeMap::new(),
        }
    }

    /// The next cluster time: `(unix seconds, increment within that second)`,
    /// strictly increasing even if the wall clock goes back.
    pub(crate) fn tick(&mut self) -> Timestamp {
        let now = u32::try_from(DateTime::now().timestamp_millis() / 1000).unwrap_or(u32::MAX);
        let next = if now > self.last_ts.time {
            Timestamp {
                time: now,
                increment: 1,
            }
        } else {
            Timestamp {
                time: self.last_ts.time,
                increment: self.last_ts.increment + 1,
            }
        };
        self.last_ts = next;
        next
    }

    /// The latest time issued (or observed).
    pub(crate) fn clock(&self) -> Timestamp {
        self.last_ts
    }

    /// Appends an entry that already carries its `ts`; returns its sequence number.
    pub(crate) fn push(&mut self, doc: Document) -> u64 {
        let ts = match doc.get("ts") {
            Some(Bson::Timestamp(ts)) => *ts,
            _ => self.tick(),
        };
        if ts > self.last_ts {
            self.last_ts = ts;
        }
        let bytes = encoded_size(&doc);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.total_bytes += bytes;
        self.entries.push_back(StoredEntry {
            seq,
            ts,
            bytes,
            doc,
        });
        self.evict();
        seq
    }

    fn evict(&mut self) {
        while self.total_bytes > self.capacity && self.entries.len() > 1 {
            self.drop_oldest();
        }
    }

    fn drop_oldest(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            self.total_bytes -= old.bytes;
            self.dropped_any = true;
        }
        self.prune_images();
    }

    fn prune_images(&mut self) {
        let Some(oldest) = self.entries.front().map(|e| e.ts) else {
            self.images.clear();
            return;
        };
        while let Some(entry) = self.images.first_entry() {
            if entry.key().0 >= oldest {
                break;
            }
            entry.remove();
        }
    }

    pub(crate) fn set_capacity(&mut self, bytes: usize) {
        self.capacity = bytes;
        self.evict();
    }

    /// Keeps only the newest `keep` entries.
    pub(crate) fn truncate(&mut self, keep: usize) {
        while self.entries.len() > keep {
            self.drop_oldest();
        }
    }

    pub(crate) fn stats(&self) -> (usize, usize) {
        (self.total_bytes, self.entries.len())
    }

    /// Newest entry's ts, or the clock when empty.
    pub(crate) fn last_optime(&self) -> Timestamp {
        self.entries.back().map_or(self.last_ts, |e| e.ts)
    }

    /// Oldest entry's ts, if entries were ever dropped (otherwise nothing is
    /// lost before the first entry).
    pub(crate) fn lost_before(&self) -> Option<Timestamp> {
        if !self.dropped_any {
            return None;
        }
        Some(self.entries.front().map_or(self.last_ts, |e| e.ts))
    }

    /// Sequence number of the newest entry (0 when none was ever written).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The position just before the first entry with `ts > bound` (or
    /// `>= bound` when inclusive).
    pub(crate) fn position_before(&self, bound: Timestamp, inclusive: bool) -> u64 {
        let index = self.entries.partition_point(|e| {
            if inclusive {
                e.ts < bound
            } else {
                e.ts <= bound
            }
        });
        match self.entries.get(index) {
            Some(entry) => entry.seq - 1,
            None => self.last_seq(),
        }
    }

    /// The position before the oldest entry.
    pub(crate) fn start_position(&self) -> u64 {
        self.entries.front().map_or(self.last_seq(), |e| e.seq - 1)
    }

    /// The entries after `pos` (up to `limit` that pass `keep`), or
    /// CappedPositionLost when the entry right after `pos` is gone.
    pub(crate) fn read_after(
        &self,
        pos: u64,
        limit: usize,
        mut keep: impl FnMut(&Document) -> bool,
    ) -> Result<(Vec<Document>, u64), CommandError> {
        let Some(first) = self.entries.front() else {
            if pos < self.last_seq() {
                return Err(capped_position_lost(pos));
            }
            return Ok((Vec::new(), pos));
        };
        if pos + 1 < first.seq {
            return Err(capped_position_lost(pos));
        }
        let start = usize::try_from(pos + 1 - first.seq)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        let mut out = Vec::new();
        let mut next = pos;
        for entry in self.entries.range(start..) {
            if out.len() >= limit {
                break;
            }
            next = entry.seq;
            if keep(&entry.doc) {
                out.push(entry.doc.clone());
            }
        }
        Ok((out, next))
    }

    /// Entries after `pos` with their sequence numbers (for change streams).
    pub(crate) fn entries_after(
        &self,
        pos: u64,
        max: usize,
    ) -> Result<Vec<(u64, Document)>, CommandError> {
        let Some(first) = self.entries.front() else {
            if pos < self.last_seq() {
                return Err(capped_position_lost(pos));
            }
            return Ok(Vec::new());
        };
        if pos + 1 < first.seq {
            return Err(capped_position_lost(pos));
        }
        let start = usize::try_from(pos + 1 - first.seq)
            .unwrap_or(usize::MAX)
            .min(self.entries.len());
        Ok(self
            .entries
            .range(start..)
            .take(max)
            .map(|e| (e.seq, e.doc.clone()))
            .collect())
    }

    /// The ts of the entry with this sequence number, if still held.
    pub(crate) fn ts_of(&self, seq: u64) -> Option<Timestamp> {
        let first = self.entries.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get(index).map(|e| e.ts)
    }

    /// The entry written at `ts` (for walking a transaction's chunk chain).
    pub(crate) fn entry_at(&self, ts: Timestamp) -> Option<&Document> {
        let index = self.entries.partition_point(|e| e.ts < ts);
        self.entries
            .get(index)
            .filter(|e| e.ts == ts)
            .map(|e| &e.doc)
    }

    /// Newest entries first (for `find` with `$natural: -1`).
    pub(crate) fn newest_first(&self) -> impl Iterator<Item = &Document> {
        self.entries.iter().rev().map(|e| &e.doc)
    }

    /// Oldest entries first.
    pub(crate) fn oldest_first(&self) -> impl Iterator<Item = &Document> {
        self.entries.iter().map(|e| &e.doc)
    }

    pub(crate) fn put_images(&mut self, ts: Timestamp, index: u32, images: Images) {
        self.images.insert((ts, index), images);
    }

    pub(crate) fn images(&self, ts: Timestamp, index: u32) -> Option<&Images> {
        self.images.get(&(ts, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> Document {
        doc! {"op": "n", "ns": "", "o": {"msg": "periodic noop"}, "ts": Timestamp { time: 100, increment: i }}
    }

    #[test]
    fn capacity_drops_oldest_and_reports_lost_positions() {
        let size = encoded_size(&entry(1));
        let mut log = Oplog::new(size * 3);
        for i in 1..=5 {
            log.push(entry(i));
        }
        assert_eq!(log.stats(), (size * 3, 3));
        // Positions 0 and 1 point before dropped entries 1 and 2.
        assert_eq!(log.read_after(0, 10, |_| true).unwrap_err().code, 136);
        assert_eq!(log.read_after(1, 10, |_| true).unwrap_err().code, 136);
        let (docs, next) = log.read_after(2, 10, |_| true).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(next, 5);
        let (docs, next) = log.read_after(9, 10, |_| true).unwrap();
        assert!(docs.is_empty(), "a position past the end reads nothing");
        assert_eq!(next, 9);
        assert_eq!(
            log.lost_before(),
            Some(Timestamp {
                time: 100,
                increment: 3
            })
        );
    }

    #[test]
    fn encoded_size_matches_the_encoder() {
        let fixtures: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../../testdata/oplog_entries.json")).unwrap();
        let mut checked = 0;
        for item in fixtures {
            let Ok(Bson::Document(entry)) = Bson::try_from(item["entry"].clone()) else {
                panic!("fixture entry is not a document");
            };
            assert_eq!(
                encoded_size(&entry),
                entry.to_vec().unwrap().len(),
                "{entry}"
            );
            checked += 1;
        }
        let odd = doc! {
            "arr": (0..12).map(Bson::Int32).collect::<Vec<_>>(),
            "re": bson::Regex { pattern: "^a".try_into().unwrap(), options: "i".try_into().unwrap() },
            "js": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: "x".into(), scope: doc! {"a": 1} }),
            "nil": null, "max": Bson::MaxKey, "d": 1.5, "old": bson::Binary { subtype: bson::spec::BinarySubtype::BinaryOld, bytes: vec![1, 2] },
        };
        assert_eq!(encoded_size(&odd), odd.to_vec().unwrap().len());
        assert!(checked > 40);
    }

    #[test]
    fn clock_is_strictly_increasing_past_given_times() {
        let mut log = Oplog::new(1 << 20);
        let far = Timestamp {
            time: u32::MAX - 10,
            increment: 7,
        };
        log.push(doc! {"ts": far});
        let next = log.tick();
        assert!(next > far);
        assert!(log.tick() > next);
    }

    #[test]
    fn positions_by_timestamp() {
        let mut log = Oplog::new(1 << 20);
        for i in 1..=3 {
            log.push(entry(i));
        }
        let ts2 = Timestamp {
            time: 100,
            increment: 2,
        };
        assert_eq!(log.position_before(ts2, true), 1);
        assert_eq!(log.position_before(ts2, false), 2);
        assert_eq!(
            log.position_before(
                Timestamp {
                    time: 200,
                    increment: 0
                },
                false
            ),
            3
        );
    }
}
