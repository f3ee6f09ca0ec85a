//! Change streams derived from the oplog, the way a server's change-stream
//! pipeline does: each entry (or each op of a committed transaction) becomes
//! an event with a KeyString resume token, filtered by scope and `$match`,
//! with `fullDocument`/`fullDocumentBeforeChange` applied.

use bson::{Binary, Bson, DateTime, Document, Timestamp, doc};

use super::matcher::Filter;
use super::oplog::Images;
use super::resume_token::{self, EVENT_TOKEN, HIGH_WATER_MARK, ResumePoint, TokenParts};
use super::store::split_ns;
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

/// How `fullDocument` / `fullDocumentBeforeChange` are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImageMode {
    Off,
    UpdateLookup,
    WhenAvailable,
    Required,
}

/// The options of a stream, re-read from the spec on every batch (the
/// cursor type is shared with the server and carries only the spec).
struct Options {
    full_document: ImageMode,
    before_change: ImageMode,
    show_expanded: bool,
    /// Events at or before this point were already delivered.
    resume: Option<ResumePoint>,
    filters: Vec<Filter>,
}

fn bad_value(message: String) -> CommandError {
    CommandError::new(2, "BadValue", message)
}

fn history_lost(message: String) -> CommandError {
    CommandError::new(286, "ChangeStreamHistoryLost", message)
}

fn parse_options(spec: &ChangeStreamSpec) -> Result<Options, CommandError> {
    let stage = &spec.stage;
    let full_document = match stage.get_str("fullDocument").unwrap_or("default") {
        "default" => ImageMode::Off,
        "updateLookup" => ImageMode::UpdateLookup,
        "whenAvailable" => ImageMode::WhenAvailable,
        "required" => ImageMode::Required,
        other => return Err(bad_value(format!("unknown fullDocument mode '{other}'"))),
    };
    let before_change = match stage.get_str("fullDocumentBeforeChange").unwrap_or("off") {
        "off" => ImageMode::Off,
        "whenAvailable" => ImageMode::WhenAvailable,
        "required" => ImageMode::Required,
        other => {
            return Err(bad_value(format!(
                "unknown fullDocumentBeforeChange mode '{other}'"
            )));
        }
    };
    let token = stage.get("resumeAfter").or_else(|| stage.get("startAfter"));
    let resume = token.map(resume_token::decode).transpose()?;
    let mut filters = Vec::new();
    for extra in &spec.rest {
        match extra.iter().next() {
            Some((name, Bson::Document(filter))) if name == "$match" => {
                filters.push(Filter::parse(filter)?)
            }
            Some((name, _))
                if matches!(
                    name.as_str(),
                    "$project"
                        | "$addFields"
                        | "$set"
                        | "$unset"
                        | "$replaceRoot"
                        | "$replaceWith"
                        | "$redact"
                ) => {}
            Some((name, _)) => {
                return Err(CommandError::new(
                    20,
                    "IllegalOperation",
                    format!("{name} is not permitted in a $changeStream pipeline"),
                ));
            }
            None => return Err(bad_value("empty pipeline stage".into())),
        }
    }
    Ok(Options {
        full_document,
        before_change,
        show_expanded: is_truthy(stage.get("showExpandedEvents")),
        resume,
        filters,
    })
}

/// One op an entry contributes (a transaction contributes several).
struct SourceOp {
    index: u32,
    op: Document,
    session: Option<(Bson, Bson)>,
    images: Option<Images>,
}

/// An oplog entry with the ops it expands to.
struct SourceEntry {
    seq: u64,
    ts: Timestamp,
    wall: Option<DateTime>,
    ops: Vec<SourceOp>,
}

/// Ordering key of an event: (clusterTime, txnOpIndex, is-invalidate).
type EventKey = (Timestamp, u64, bool);

struct Built {
    key: EventKey,
    event: Document,
    invalidate: bool,
}

/// Entries scanned per lock hold, to keep other connections moving.
const SCAN_CHUNK: usize = 1024;
/// Entries scanned per batch at most (an idle stream comes back later).
const SCAN_LIMIT: usize = 200_000;

impl Engine {
    /// Opens a change stream (`resumeAfter`/`startAfter`/`startAtOperationTime`
    /// honoured). Fails with 286 ChangeStreamHistoryLost when the resume point
    /// is older than the oplog, 260 InvalidResumeToken for a token it cannot read.
    pub fn open_change_stream(
        &self,
        spec: ChangeStreamSpec,
    ) -> Result<ChangeStreamCursor, CommandError> {
        let options = parse_options(&spec)?;
        let resumes_after_invalidate = options.resume.as_ref().is_some_and(|p| p.from_invalidate);
        if resumes_after_invalidate && spec.stage.contains_key("resumeAfter") {
            return Err(CommandError::new(
                260,
                "InvalidResumeToken",
                "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification".into(),
            ));
        }
        let start_at = match spec.stage.get("startAtOperationTime") {
            None => None,
            Some(Bson::Timestamp(ts)) => Some(*ts),
            Some(_) => return Err(bad_value("startAtOperationTime must be a Timestamp".into())),
        };
        let oplog = lock(&self.oplog);
        let seq = match (&options.resume, start_at) {
            (Some(point), _) => {
                check_history(oplog.lost_before(), point.cluster_time)?;
                // A high-water mark or an invalidate token means "after every
                // event at that time"; an event token means "after that event",
                // which the read skips to within its entry.
                let past_entry = point.token_type == HIGH_WATER_MARK || point.from_invalidate;
                oplog.position_before(point.cluster_time, !past_entry)
            }
            (None, Some(ts)) => {
                check_history(oplog.lost_before(), ts)?;
                oplog.position_before(ts, true)
            }
            (None, None) => oplog.last_seq(),
        };
        Ok(ChangeStreamCursor {
            spec,
            pos: OplogCursorPos { seq },
            invalidated: false,
        })
    }

    /// Reads up to `limit` events after the cursor's position, advancing it.
    /// fullDocument (updateLookup/whenAvailable/required) and
    /// fullDocumentBeforeChange are applied here. A `limit` of 0 means no
    /// limit; a transaction's events are never split across batches.
    pub fn read_change_stream(
        &self,
        cursor: &mut ChangeStreamCursor,
        limit: usize,
    ) -> Result<ChangeBatch, CommandError> {
        let options = parse_options(&cursor.spec)?;
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut events: Vec<Document> = Vec::new();
        let mut last_event_seq = None;
        let mut scanned = 0;
        let mut full = false;
        'scan: while !cursor.invalidated && !full && scanned < SCAN_LIMIT {
            let chunk = self.source_entries(cursor.pos.seq, SCAN_CHUNK)?;
            if chunk.is_empty() {
                break;
            }
            for entry in chunk {
                if events.len() >= limit {
                    full = true;
                    break 'scan;
                }
                scanned += 1;
                let built = self.events_for_entry(&entry, &cursor.spec, &options)?;
                cursor.pos.seq = entry.seq;
                for item in built {
                    if options
                        .resume
                        .as_ref()
                        .is_some_and(|p| item.key <= resume_key(p))
                    {
                        continue;
                    }
                    events.push(item.event);
                    last_event_seq = Some(entry.seq);
                    if item.invalidate {
                        cursor.invalidated = true;
                        break 'scan;
                    }
                }
            }
        }
        let post_batch_resume_token = match events.last() {
            Some(last) if full || cursor.invalidated || last_event_seq == Some(cursor.pos.seq) => {
                last.get_document("_id").cloned().unwrap_or_default()
            }
            _ => resume_token::high_water_mark(self.position_time(cursor.pos.seq)),
        };
        Ok(ChangeBatch {
            events,
            post_batch_resume_token,
        })
    }

    /// The cluster time a position stands for (for high-water marks).
    fn position_time(&self, seq: u64) -> Timestamp {
        let oplog = lock(&self.oplog);
        if let Some(ts) = oplog.ts_of(seq) {
            return ts;
        }
        if seq >= oplog.last_seq() {
            return oplog.clock();
        }
        // Before an entry that is still held: just before its time.
        match oplog.ts_of(seq + 1) {
            Some(Timestamp { time, increment }) if increment > 0 => Timestamp {
                time,
                increment: increment - 1,
            },
            Some(Timestamp { time, .. }) => Timestamp {
                time: time.saturating_sub(1),
                increment: u32::MAX,
            },
            None => oplog.clock(),
        }
    }

    /// Reads entries after `seq` and expands transactions, under one short
    /// lock of the oplog.
    fn source_entries(&self, seq: u64, max: usize) -> Result<Vec<SourceEntry>, CommandError> {
        let oplog = lock(&self.oplog);
        let raw = oplog.entries_after(seq, max).map_err(|e| {
            history_lost(format!(
                "the change stream's position was dropped from the oplog: {}",
                e.message
            ))
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for (seq, doc) in raw {
            let ts = match doc.get("ts") {
                Some(Bson::Timestamp(ts)) => *ts,
                _ => continue,
            };
            let wall = doc.get_datetime("wall").ok().copied();
            let ops = expand_entry(&oplog, &doc, ts);
            out.push(SourceEntry { seq, ts, wall, ops });
        }
        Ok(out)
    }

    fn events_for_entry(
        &self,
        entry: &SourceEntry,
        spec: &ChangeStreamSpec,
        options: &Options,
    ) -> Result<Vec<Built>, CommandError> {
        let mut out = Vec::new();
        for op in &entry.ops {
            for built in self.events_for_op(entry, op, spec, options)? {
                let passes =
                    built.invalidate || options.filters.iter().all(|f| f.matches(&built.event));
                if passes {
                    out.push(built);
                }
            }
        }
        Ok(out)
    }

    fn events_for_op(
        &self,
        entry: &SourceEntry,
        source: &SourceOp,
        spec: &ChangeStreamSpec,
        options: &Options,
    ) -> Result<Vec<Built>, CommandError> {
        let op = &source.op;
        let kind = op.get_str("op").unwrap_or("");
        let ns = op.get_str("ns").unwrap_or("");
        let (db, coll) = split_ns(ns);
        let o = op.get_document("o").cloned().unwrap_or_default();
        let ui = match op.get("ui") {
            Some(Bson::Binary(b)) => Some(b.clone()),
            _ => None,
        };
        let ctx = EventContext {
            engine: self,
            entry,
            source,
            options,
            ui: ui.as_ref(),
        };
        let mut out = Vec::new();
        match kind {
            "i" | "u" | "d" => {
                if !in_scope(spec, db, Some(coll)) {
                    return Ok(out);
                }
                out.push(ctx.crud_event(kind, db, coll, &o, op.get_document("o2").ok())?);
            }
            "c" => {
                let Some((command, _)) = o.iter().next() else {
                    return Ok(out);
                };
                match command.as_str() {
                    "drop" => {
                        let target = o.get_str("drop").unwrap_or("");
                        if in_scope(spec, db, Some(target)) {
                            let mut event = ctx.start("drop", ui.as_ref(), None, false);
                            event.insert("ns", doc! {"db": db, "coll": target});
                            out.push(ctx.built(event, false));
                            if spec.scope.as_deref() == Some(&format!("{db}.{target}")) {
                                out.push(ctx.invalidate(ui.as_ref()));
                            }
                        }
                    }
                    "renameCollection" => {
                        let from = o.get_str("renameCollection").unwrap_or("");
                        let to = o.get_str("to").unwrap_or("");
                        let (from_db, from_coll) = split_ns(from);
                        let (to_db, to_coll) = split_ns(to);
                        if in_scope(spec, from_db, Some(from_coll)) {
                            let mut event = doc! {"to": {"db": to_db, "coll": to_coll}};
                            for (k, v) in ctx.start("rename", ui.as_ref(), None, false) {
                                event.insert(k, v);
                            }
                            event.insert("ns", doc! {"db": from_db, "coll": from_coll});
                            out.push(ctx.built(event, false));
                            if spec.scope.as_deref() == Some(from) {
                                out.push(ctx.invalidate(ui.as_ref()));
                            }
                        }
                    }
                    "dropDatabase" => {
                        let database_stream = spec.scope.as_deref() == Some(db);
                        if spec.scope.is_none() && in_scope(spec, db, None) || database_stream {
                            let mut event = ctx.start("dropDatabase", None, None, false);
                            event.insert("ns", doc! {"db": db});
                            out.push(ctx.built(event, false));
                            if database_stream {
                                out.push(ctx.invalidate(None));
                            }
                        }
                    }
                    "create" | "createIndexes" | "dropIndexes" | "collMod"
                        if options.show_expanded =>
                    {
                        let target = o.get_str(command).unwrap_or("");
                        if in_scope(spec, db, Some(target)) {
                            out.push(ctx.expanded_event(
                                command,
                                db,
                                target,
                                &o,
                                op.get_document("o2").ok(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        Ok(out)
    }
}

fn resume_key(point: &ResumePoint) -> EventKey {
    (
        point.cluster_time,
        point.txn_op_index,
        point.from_invalidate,
    )
}

fn check_history(lost_before: Option<Timestamp>, wanted: Timestamp) -> Result<(), CommandError> {
    match lost_before {
        Some(oldest) if wanted < oldest => Err(history_lost(format!(
            "Resume of change stream was not possible, as the resume point ({}, {}) may no longer be in the oplog.",
            wanted.time, wanted.increment
        ))),
        _ => Ok(()),
    }
}

/// Databases and collections no user stream sees.
fn is_internal(db: &str, coll: Option<&str>) -> bool {
    matches!(db, "admin" | "config" | "local") || coll.is_some_and(|c| c.starts_with("system."))
}

fn in_scope(spec: &ChangeStreamSpec, db: &str, coll: Option<&str>) -> bool {
    match spec.scope.as_deref() {
        None => !is_internal(db, coll),
        Some(scope) => match scope.split_once('.') {
            Some((scope_db, scope_coll)) => scope_db == db && coll == Some(scope_coll),
            None => scope == db && !coll.is_some_and(|c| c.starts_with("system.")),
        },
    }
}

/// The ops of one oplog entry: itself, or the inner ops of a committed
/// transaction (a `partialTxn` chunk contributes nothing until the chunk
/// carrying `count` arrives, which then expands the whole chain).
fn expand_entry(oplog: &oplog::Oplog, doc: &Document, ts: Timestamp) -> Vec<SourceOp> {
    let o = doc.get_document("o").ok();
    let is_apply_ops =
        doc.get_str("op").ok() == Some("c") && o.is_some_and(|o| o.contains_key("applyOps"));
    if !is_apply_ops {
        let images = oplog.images(ts, 0).cloned();
        return vec![SourceOp {
            index: 0,
            op: doc.clone(),
            session: None,
            images,
        }];
    }
    let o = o.expect("checked above");
    if is_truthy(o.get("partialTxn")) || is_truthy(o.get("prepare")) {
        return Vec::new();
    }
    let mut chunks = vec![doc.clone()];
    if o.contains_key("count") {
        let mut current = doc.clone();
        while let Some(prev) = previous_chunk(oplog, &current) {
            chunks.push(prev.clone());
            current = prev.clone();
        }
        chunks.reverse();
    }
    let session = match (doc.get("lsid"), doc.get("txnNumber")) {
        (Some(lsid), Some(number)) => Some((lsid.clone(), number.clone())),
        _ => None,
    };
    let mut ops = Vec::new();
    for chunk in &chunks {
        let Ok(inner) = chunk
            .get_document("o")
            .and_then(|o| o.get_array("applyOps"))
        else {
            continue;
        };
        for op in inner.iter().filter_map(Bson::as_document) {
            let index = ops.len() as u32;
            let images = oplog.images(ts, index).cloned();
            ops.push(SourceOp {
                index,
                op: op.clone(),
                session: session.clone(),
                images,
            });
        }
    }
    ops
}

fn previous_chunk<'a>(oplog: &'a oplog::Oplog, entry: &Document) -> Option<&'a Document> {
    let prev = entry.get_document("prevOpTime").ok()?;
    let ts = prev.get_timestamp("ts").ok()?;
    if ts
        == (Timestamp {
            time: 0,
            increment: 0,
        })
    {
        return None;
    }
    oplog.entry_at(ts)
}

/// What every event of one op shares.
struct EventContext<'a> {
    engine: &'a Engine,
    entry: &'a SourceEntry,
    source: &'a SourceOp,
    options: &'a Options,
    ui: Option<&'a Binary>,
}

fn required_missing(what: &str) -> CommandError {
    CommandError::new(
        280,
        "ChangeStreamFatalError",
        format!("{what} was requested as 'required' but no image is available for this event"),
    )
}

impl EventContext<'_> {
    fn version(&self) -> MongoVersion {
        self.engine.config.version
    }

    fn key(&self, invalidate: bool) -> EventKey {
        (self.entry.ts, u64::from(self.source.index), invalidate)
    }

    /// `_id, operationType, clusterTime[, collectionUUID][, wallTime]`.
    fn start(
        &self,
        operation: &str,
        uuid: Option<&Binary>,
        document_key: Option<&Document>,
        invalidate: bool,
    ) -> Document {
        let token = resume_token::encode(&TokenParts {
            cluster_time: self.entry.ts,
            token_type: EVENT_TOKEN,
            txn_op_index: u64::from(self.source.index),
            from_invalidate: invalidate,
            uuid,
            document_key,
        });
        let mut event =
            doc! {"_id": token, "operationType": operation, "clusterTime": self.entry.ts};
        if self.options.show_expanded
            && !invalidate
            && let Some(uuid) = uuid
        {
            event.insert("collectionUUID", uuid.clone());
        }
        if self.version() >= MongoVersion::V6_0 {
            event.insert("wallTime", self.entry.wall.unwrap_or_else(DateTime::now));
        }
        event
    }

    fn built(&self, event: Document, invalidate: bool) -> Built {
        Built {
            key: self.key(invalidate),
            event,
            invalidate,
        }
    }

    fn invalidate(&self, uuid: Option<&Binary>) -> Built {
        let event = self.start("invalidate", uuid, None, true);
        self.built(event, true)
    }

    fn add_session(&self, event: &mut Document) {
        if let Some((lsid, number)) = &self.source.session {
            event.insert("lsid", lsid.clone());
            event.insert("txnNumber", number.clone());
        }
    }

    fn crud_event(
        &self,
        kind: &str,
        db: &str,
        coll: &str,
        o: &Document,
        o2: Option<&Document>,
    ) -> Result<Built, CommandError> {
        let ns = doc! {"db": db, "coll": coll};
        let images = self.source.images.clone().unwrap_or_default();
        let (operation, document_key) = match kind {
            "i" => (
                "insert",
                doc! {"_id": o.get("_id").cloned().unwrap_or(Bson::Null)},
            ),
            "d" => ("delete", o.clone()),
            _ if super::update::is_replacement(o) => ("replace", o2.cloned().unwrap_or_default()),
            _ => ("update", o2.cloned().unwrap_or_default()),
        };
        let mut event = self.start(operation, self.ui, Some(&document_key), false);
        match operation {
            "insert" | "replace" => {
                event.insert("fullDocument", o.clone());
            }
            "update" => {
                if let Some(full) = self.post_image(db, coll, &document_key, &images)? {
                    event.insert("fullDocument", full);
                }
            }
            _ => {}
        }
        event.insert("ns", ns);
        event.insert("documentKey", document_key);
        if operation == "update" {
            event.insert("updateDescription", update_description(o, self.version()));
        }
        self.add_session(&mut event);
        if operation != "insert" {
            match self.options.before_change {
                ImageMode::Off | ImageMode::UpdateLookup => {}
                ImageMode::WhenAvailable => {
                    event.insert(
                        "fullDocumentBeforeChange",
                        images.pre.map_or(Bson::Null, Bson::Document),
                    );
                }
                ImageMode::Required => {
                    let pre = images
                        .pre
                        .ok_or_else(|| required_missing("fullDocumentBeforeChange"))?;
                    event.insert("fullDocumentBeforeChange", pre);
                }
            }
        }
        Ok(self.built(event, false))
    }

    fn post_image(
        &self,
        db: &str,
        coll: &str,
        key: &Document,
        images: &Images,
    ) -> Result<Option<Bson>, CommandError> {
        Ok(match self.options.full_document {
            ImageMode::Off => None,
            ImageMode::UpdateLookup => {
                let id = key.get("_id").cloned().unwrap_or(Bson::Null);
                Some(
                    self.engine
                        .find_by_id(&format!("{db}.{coll}"), &id)
                        .map_or(Bson::Null, Bson::Document),
                )
            }
            ImageMode::WhenAvailable => {
                Some(images.post.clone().map_or(Bson::Null, Bson::Document))
            }
            ImageMode::Required => Some(Bson::Document(
                images
                    .post
                    .clone()
                    .ok_or_else(|| required_missing("fullDocument"))?,
            )),
        })
    }

    /// 6.0+ expanded DDL events (`showExpandedEvents: true`).
    fn expanded_event(
        &self,
        command: &str,
        db: &str,
        coll: &str,
        o: &Document,
        o2: Option<&Document>,
    ) -> Built {
        let operation = if command == "collMod" {
            "modify"
        } else {
            command
        };
        let mut description = Document::new();
        match command {
            "createIndexes" => {
                let spec: Document = o
                    .iter()
                    .skip(1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                description.insert("indexes", vec![Bson::Document(spec)]);
            }
            "dropIndexes" => {
                description.insert(
                    "indexes",
                    vec![Bson::Document(o2.cloned().unwrap_or_default())],
                );
            }
            _ => {
                for (k, v) in o.iter().skip(1) {
                    description.insert(k.clone(), v.clone());
                }
            }
        }
        let token_key =
            doc! {"operationType": operation, "operationDescription": description.clone()};
        let mut event = self.start(operation, self.ui, Some(&token_key), false);
        event.insert("ns", doc! {"db": db, "coll": coll});
        event.insert("operationDescription", description);
        self.built(event, false)
    }
}

/// `updateDescription` from a v1 (`$set`/`$unset`) or v2 (`diff`) update.
fn update_description(o: &Document, version: MongoVersion) -> Document {
    let mut updated = Document::new();
    let mut removed: Vec<Bson> = Vec::new();
    let mut truncated: Vec<Bson> = Vec::new();
    match o.get_document("diff") {
        Ok(diff) if o.get("$v").and_then(value::as_i64) == Some(2) => {
            walk_object_diff(diff, "", &mut updated, &mut removed, &mut truncated);
        }
        _ => {
            if let Ok(sets) = o.get_document("$set") {
                for (k, v) in sets {
                    updated.insert(k.clone(), v.clone());
                }
            }
            if let Ok(unsets) = o.get_document("$unset") {
                removed.extend(unsets.keys().map(|k| Bson::String(k.clone())));
            }
        }
    }
    let mut description = doc! {"updatedFields": updated, "removedFields": removed};
    if version >= MongoVersion::V5_0 {
        description.insert("truncatedArrays", truncated);
    }
    description
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn walk_object_diff(
    diff: &Document,
    prefix: &str,
    updated: &mut Document,
    removed: &mut Vec<Bson>,
    truncated: &mut Vec<Bson>,
) {
    for (section, body) in diff {
        match (section.as_str(), body) {
            ("d", Bson::Document(fields)) => {
                removed.extend(fields.keys().map(|k| Bson::String(join(prefix, k))));
            }
            ("u" | "i", Bson::Document(fields)) => {
                for (k, v) in fields {
                    updated.insert(join(prefix, k), v.clone());
                }
            }
            (name, Bson::Document(sub)) if name.starts_with('s') => {
                let path = join(prefix, &name[1..]);
                if is_truthy(sub.get("a")) {
                    walk_array_diff(sub, &path, updated, removed, truncated);
                } else {
                    walk_object_diff(sub, &path, updated, removed, truncated);
                }
            }
            _ => {}
        }
    }
}

fn walk_array_diff(
    diff: &Document,
    prefix: &str,
    updated: &mut Document,
    removed: &mut Vec<Bson>,
    truncated: &mut Vec<Bson>,
) {
    for (key, body) in diff {
        if key == "a" {
            continue;
        }
        if key == "l" {
            let size = value::as_i64(body).unwrap_or(0) as i32;
            truncated.push(Bson::Document(doc! {"field": prefix, "newSize": size}));
            continue;
        }
        let (kind, index) = key.split_at(1);
        let path = join(prefix, index);
        match (kind, body) {
            ("u", value) => {
                updated.insert(path, value.clone());
            }
            ("s", Bson::Document(sub)) if is_truthy(sub.get("a")) => {
                walk_array_diff(sub, &path, updated, removed, truncated)
            }
            ("s", Bson::Document(sub)) => walk_object_diff(sub, &path, updated, removed, truncated),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_descriptions_from_v2_diffs() {
        let cases: Vec<(Document, Document)> = vec![
            (
                doc! {"$v": 2, "diff": {"sb": {"i": {"d": 2}}}},
                doc! {"updatedFields": {"b.d": 2}, "removedFields": [], "truncatedArrays": []},
            ),
            (
                doc! {"$v": 2, "diff": {"d": {"b": false}}},
                doc! {"updatedFields": {}, "removedFields": ["b"], "truncatedArrays": []},
            ),
            (
                // oplog-jstest-u-v2-array-resize-subdiff
                doc! {"$v": 2, "diff": {"u": {"a": 2, "arrayForReplacement": [0]}, "i": {"c": 3},
                "sarrayForSubdiff": {"a": true, "l": 2, "s1": {"i": {"b": 3}}}}},
                doc! {"updatedFields": {"a": 2, "arrayForReplacement": [0], "c": 3, "arrayForSubdiff.1.b": 3},
                "removedFields": [], "truncatedArrays": [{"field": "arrayForSubdiff", "newSize": 2}]},
            ),
            (
                doc! {"$v": 2, "diff": {"sarr": {"a": true, "s1": {"u": {"value": 3}}}}},
                doc! {"updatedFields": {"arr.1.value": 3}, "removedFields": [], "truncatedArrays": []},
            ),
        ];
        for (o, want) in cases {
            assert_eq!(update_description(&o, MongoVersion::V6_0), want, "{o}");
        }
        // cs-mongoshake42-update: 4.x has no truncatedArrays.
        let v1 = doc! {"$v": 1, "$unset": {"ok": true}, "$set": {"plus_field": 2}};
        assert_eq!(
            update_description(&v1, MongoVersion::V4_4),
            doc! {"updatedFields": {"plus_field": 2}, "removedFields": ["ok"]}
        );
    }

    #[test]
    fn scopes_hide_internal_namespaces() {
        let spec = |scope: Option<&str>| ChangeStreamSpec {
            scope: scope.map(String::from),
            stage: Document::new(),
            rest: Vec::new(),
        };
        let cases = [
            (None, "app", Some("users"), true),
            (None, "admin", Some("users"), false),
            (None, "app", Some("system.views"), false),
            (Some("app"), "app", Some("users"), true),
            (Some("app"), "other", Some("users"), false),
            (Some("app.users"), "app", Some("users"), true),
            (Some("app.users"), "app", Some("orders"), false),
        ];
        for (scope, db, coll, want) in cases {
            assert_eq!(
                in_scope(&spec(scope), db, coll),
                want,
                "{scope:?} {db} {coll:?}"
            );
        }
    }
}
