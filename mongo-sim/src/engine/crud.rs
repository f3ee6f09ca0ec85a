//! CRUD commands: insert, update, delete, find, count, distinct,
//! findAndModify and simple aggregation pipelines, with replies shaped like a
//! real server's and the oplog records a real server writes.

use std::cmp::Ordering;

use bson::{Bson, Document, doc, oid::ObjectId};

use super::diff::{v1_update, v2_update};
use super::exec::{Exec, target_name};
use super::matcher::Filter;
use super::oplog::OpRecord;
use super::path;
use super::update::{apply_operators, apply_replacement, is_replacement};
use super::value::{as_i64, compare, is_truthy, values_equal};
use super::{CommandError, CommandReply, MongoVersion};

fn failed_to_parse(message: String) -> CommandError {
    CommandError::new(9, "FailedToParse", message)
}

fn doc_arg<'c>(cmd: &'c Document, key: &str) -> Result<Option<&'c Document>, CommandError> {
    match cmd.get(key) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(doc)) => Ok(Some(doc)),
        Some(_) => Err(CommandError::new(
            14,
            "TypeMismatch",
            format!("'{key}' must be an object"),
        )),
    }
}

/// A document with `_id` first, generating an ObjectId if it has none.
fn with_id_first(doc: &Document) -> Document {
    let mut out = Document::new();
    out.insert(
        "_id",
        doc.get("_id")
            .cloned()
            .unwrap_or_else(|| Bson::ObjectId(ObjectId::new())),
    );
    for (k, v) in doc {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

fn duplicate_key_message(ns: &str, id: &Bson) -> String {
    format!("E11000 duplicate key error collection: {ns} index: _id_ dup key: {{ _id: {id} }}")
}

fn write_error(index: usize, error: &CommandError) -> Document {
    doc! {"index": index as i32, "code": error.code, "errmsg": error.message.clone()}
}

/// `insert`: `{n, writeErrors?}`.
pub(crate) fn insert(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "insert")?;
    let Ok(documents) = cmd.get_array("documents") else {
        return Err(failed_to_parse("insert needs a 'documents' array".into()));
    };
    let ordered = cmd.get("ordered").is_none_or(|v| is_truthy(Some(v)));
    let mut n = 0;
    let mut errors = Vec::new();
    for (index, item) in documents.iter().enumerate() {
        let Bson::Document(item) = item else {
            return Err(CommandError::new(
                14,
                "TypeMismatch",
                "documents must be objects".into(),
            ));
        };
        let doc = with_id_first(item);
        match insert_one(ex, db, coll, doc) {
            Ok(()) => n += 1,
            Err(error) => {
                errors.push(write_error(index, &error));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! {"n": n};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(CommandReply::Document(reply))
}

fn insert_one(ex: &mut Exec<'_>, db: &str, coll: &str, doc: Document) -> Result<(), CommandError> {
    let ns = format!("{db}.{coll}");
    let collection = ex.collection_for_write(db, coll)?;
    let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
    if collection.insert(doc.clone()).is_err() {
        return Err(CommandError::new(
            11000,
            "DuplicateKey",
            duplicate_key_message(&ns, &id),
        ));
    }
    let uuid = collection.uuid.clone();
    ex.records
        .push(OpRecord::new("i", ns, Some(uuid), doc, None));
    Ok(())
}

/// Result of one update statement.
struct UpdateOutcome {
    matched: i64,
    modified: i64,
    upserted: Option<Bson>,
    /// The last document before/after the write (for findAndModify).
    before: Option<Document>,
    after: Option<Document>,
}

fn matching_ids(
    ex: &Exec<'_>,
    db: &str,
    coll: &str,
    filter: &Filter,
    sort: Option<&Document>,
    many: bool,
) -> Vec<Bson> {
    let Some(collection) = ex.store.collection(db, coll) else {
        return Vec::new();
    };
    let mut docs: Vec<&Document> = collection
        .documents()
        .filter(|d| filter.matches(d))
        .collect();
    if let Some(sort) = sort {
        sort_documents(&mut docs, sort);
    }
    let take = if many { usize::MAX } else { 1 };
    docs.into_iter()
        .take(take)
        .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
        .collect()
}

/// One update statement (`{q, u, upsert, multi}`), plus the sort a
/// findAndModify picks its document with.
struct UpdateStatement<'s> {
    query: &'s Document,
    update: &'s Document,
    upsert: bool,
    multi: bool,
    sort: Option<&'s Document>,
}

/// Applies one update statement.
fn update_one_statement(
    ex: &mut Exec<'_>,
    db: &str,
    coll: &str,
    statement: &UpdateStatement<'_>,
) -> Result<UpdateOutcome, CommandError> {
    let UpdateStatement {
        query,
        update,
        upsert,
        multi,
        sort,
    } = *statement;
    let filter = Filter::parse(query)?;
    let replacement = is_replacement(update);
    if replacement && multi {
        return Err(failed_to_parse(
            "multi update is not supported for replacement-style update".into(),
        ));
    }
    let ids = matching_ids(ex, db, coll, &filter, sort, multi);
    let mut outcome = UpdateOutcome {
        matched: 0,
        modified: 0,
        upserted: None,
        before: None,
        after: None,
    };
    let version = ex.version;
    let ns = format!("{db}.{coll}");
    for id in ids {
        let Some(collection) = ex.store.collection_mut(db, coll) else {
            break;
        };
        let Some(old) = collection.get(&id).cloned() else {
            continue;
        };
        outcome.matched += 1;
        let (new, o) = if replacement {
            let new = apply_replacement(&old, update)?;
            let o = new.clone();
            (new, o)
        } else {
            let applied = apply_operators(&old, update, false, query)?;
            if applied.log.is_empty() {
                outcome.before = Some(old.clone());
                outcome.after = Some(old);
                continue;
            }
            let o = match version {
                MongoVersion::V4_4 => v1_update(&applied.log),
                _ => v2_update(&old, &applied.doc, &applied.log),
            };
            (applied.doc, o)
        };
        outcome.before = Some(old.clone());
        outcome.after = Some(new.clone());
        if new == old {
            continue;
        }
        collection.replace(new.clone());
        outcome.modified += 1;
        let mut record = OpRecord::new(
            "u",
            ns.clone(),
            Some(collection.uuid.clone()),
            o,
            Some(doc! {"_id": id}),
        );
        if collection.records_images() {
            record.pre_image = Some(old);
            record.post_image = Some(new);
        }
        ex.records.push(record);
    }
    if outcome.matched == 0 && upsert {
        let doc = upsert_document(query, update, replacement)?;
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        insert_one(ex, db, coll, doc.clone())?;
        outcome.upserted = Some(id);
        outcome.after = Some(doc);
    }
    Ok(outcome)
}

/// The document an upsert inserts: the query's equality fields, then the
/// update applied as on insert, `_id` first.
fn upsert_document(
    query: &Document,
    update: &Document,
    replacement: bool,
) -> Result<Document, CommandError> {
    let mut base = Document::new();
    if let Some(id) = equality_value(query.get("_id")) {
        base.insert("_id", id);
    }
    if !replacement {
        for (key, value) in query {
            if key.starts_with('$') || key == "_id" {
                continue;
            }
            if let Some(v) = equality_value(Some(value)) {
                path::set(&mut base, &path::split(key), v)
                    .map_err(|c| CommandError::new(28, "PathNotViable", c.0))?;
            }
        }
    }
    let doc = if replacement {
        let mut doc = Document::new();
        if let Some(id) = base.get("_id").or_else(|| update.get("_id")) {
            doc.insert("_id", id.clone());
        }
        for (k, v) in update {
            if k != "_id" {
                doc.insert(k.clone(), v.clone());
            }
        }
        doc
    } else {
        let seed = with_id_first(&base);
        let applied = apply_operators(&seed, update, true, query)?;
        applied.doc
    };
    Ok(with_id_first(&doc))
}

fn equality_value(value: Option<&Bson>) -> Option<Bson> {
    match value? {
        Bson::Document(ops) if ops.keys().next().is_some_and(|k| k.starts_with('$')) => {
            ops.get("$eq").cloned()
        }
        Bson::RegularExpression(_) => None,
        other => Some(other.clone()),
    }
}

/// `update`: `{n, nModified, upserted?, writeErrors?}`.
pub(crate) fn update(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "update")?;
    let Ok(statements) = cmd.get_array("updates") else {
        return Err(failed_to_parse("update needs an 'updates' array".into()));
    };
    let ordered = cmd.get("ordered").is_none_or(|v| is_truthy(Some(v)));
    let (mut n, mut modified) = (0i64, 0i64);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let result = run_update_statement(ex, db, coll, statement);
        match result {
            Ok(outcome) => {
                n += outcome.matched;
                modified += outcome.modified;
                if let Some(id) = outcome.upserted {
                    n += 1;
                    upserted.push(doc! {"index": index as i32, "_id": id});
                }
            }
            Err(error) => {
                errors.push(write_error(index, &error));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! {"n": n as i32, "nModified": modified as i32};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(CommandReply::Document(reply))
}

fn run_update_statement(
    ex: &mut Exec<'_>,
    db: &str,
    coll: &str,
    statement: &Bson,
) -> Result<UpdateOutcome, CommandError> {
    let Bson::Document(statement) = statement else {
        return Err(failed_to_parse("update statements must be objects".into()));
    };
    let query = doc_arg(statement, "q")?.cloned().unwrap_or_default();
    let update = match statement.get("u") {
        Some(Bson::Document(u)) => u.clone(),
        Some(Bson::Array(_)) => {
            return Err(CommandError::new(
                9,
                "FailedToParse",
                "pipeline-style updates are not supported by mongo-sim".into(),
            ));
        }
        _ => return Err(failed_to_parse("update statement needs 'u'".into())),
    };
    let upsert = is_truthy(statement.get("upsert"));
    let multi = is_truthy(statement.get("multi"));
    let statement = UpdateStatement {
        query: &query,
        update: &update,
        upsert,
        multi,
        sort: None,
    };
    update_one_statement(ex, db, coll, &statement)
}

/// `delete`: `{n, writeErrors?}`; `limit` 1 deletes one document, 0 all.
pub(crate) fn delete(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "delete")?;
    let Ok(statements) = cmd.get_array("deletes") else {
        return Err(failed_to_parse("delete needs a 'deletes' array".into()));
    };
    let mut n = 0i64;
    let mut errors = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let Bson::Document(statement) = statement else {
            return Err(failed_to_parse("delete statements must be objects".into()));
        };
        let query = doc_arg(statement, "q")?.cloned().unwrap_or_default();
        let many = statement.get("limit").and_then(as_i64) != Some(1);
        match Filter::parse(&query) {
            Ok(filter) => n += delete_matching(ex, db, coll, &filter, None, many).len() as i64,
            Err(error) => errors.push(write_error(index, &error)),
        }
    }
    let mut reply = doc! {"n": n as i32};
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    Ok(CommandReply::Document(reply))
}

fn delete_matching(
    ex: &mut Exec<'_>,
    db: &str,
    coll: &str,
    filter: &Filter,
    sort: Option<&Document>,
    many: bool,
) -> Vec<Document> {
    let ids = matching_ids(ex, db, coll, filter, sort, many);
    let ns = format!("{db}.{coll}");
    let mut removed = Vec::new();
    for id in ids {
        let Some(collection) = ex.store.collection_mut(db, coll) else {
            break;
        };
        let Some(old) = collection.remove(&id) else {
            continue;
        };
        let mut record = OpRecord::new(
            "d",
            ns.clone(),
            Some(collection.uuid.clone()),
            doc! {"_id": id},
            None,
        );
        if collection.records_images() {
            record.pre_image = Some(old.clone());
        }
        ex.records.push(record);
        removed.push(old);
    }
    removed
}

/// Sorts by a `{field: 1|-1}` spec (dotted paths; missing sorts as null).
pub(crate) fn sort_documents(docs: &mut [&Document], spec: &Document) {
    let keys: Vec<(Vec<&str>, bool)> = spec
        .iter()
        .map(|(k, v)| (path::split(k), as_i64(v).unwrap_or(1) < 0))
        .collect();
    docs.sort_by(|a, b| {
        for (parts, descending) in &keys {
            let order = compare(&sort_key(a, parts), &sort_key(b, parts));
            let order = if *descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    });
}

fn sort_key(doc: &Document, parts: &[&str]) -> Bson {
    path::get_exact(doc, parts).cloned().unwrap_or(Bson::Null)
}

/// Applies an inclusion or exclusion projection.
pub(crate) fn project(doc: &Document, projection: &Document) -> Document {
    let including = projection
        .iter()
        .any(|(k, v)| k != "_id" && is_truthy(Some(v)));
    if !including {
        let mut out = doc.clone();
        for (key, value) in projection {
            if !is_truthy(Some(value)) {
                path::unset(&mut out, &path::split(key));
            }
        }
        return out;
    }
    let mut out = Document::new();
    let keep_id = projection.get("_id").is_none_or(|v| is_truthy(Some(v)));
    if keep_id && let Some(id) = doc.get("_id") {
        out.insert("_id", id.clone());
    }
    for (key, value) in projection {
        if key == "_id" || !is_truthy(Some(value)) {
            continue;
        }
        let parts = path::split(key);
        if let Some(found) = path::get_exact(doc, &parts) {
            let _ = path::set(&mut out, &parts, found.clone());
        }
    }
    // Keep the document's own field order, as the server does.
    let mut ordered = Document::new();
    for key in doc.keys() {
        if let Some(value) = out.get(key) {
            ordered.insert(key.clone(), value.clone());
        }
    }
    ordered
}

/// What a find-like read asks for.
struct ReadSpec<'s> {
    filter: &'s Filter,
    sort: Option<&'s Document>,
    skip: usize,
    limit: usize,
    projection: Option<&'s Document>,
}

impl<'s> ReadSpec<'s> {
    /// Every matching document, unsorted and whole.
    fn all(filter: &'s Filter) -> Self {
        Self {
            filter,
            sort: None,
            skip: 0,
            limit: usize::MAX,
            projection: None,
        }
    }
}

/// The documents a find-like read returns.
fn query_documents(ex: &Exec<'_>, db: &str, coll: &str, spec: &ReadSpec<'_>) -> Vec<Document> {
    let ReadSpec {
        filter,
        sort,
        skip,
        limit,
        projection,
    } = *spec;
    let Some(collection) = ex.store.collection(db, coll) else {
        return Vec::new();
    };
    let mut docs: Vec<&Document> = collection
        .documents()
        .filter(|d| filter.matches(d))
        .collect();
    if let Some(sort) = sort.filter(|s| !s.is_empty() && !s.contains_key("$natural")) {
        sort_documents(&mut docs, sort);
    } else if sort.is_some_and(|s| s.get("$natural").and_then(as_i64) == Some(-1)) {
        docs.reverse();
    }
    docs.into_iter()
        .skip(skip)
        .take(limit)
        .map(|d| projection.map_or_else(|| d.clone(), |p| project(d, p)))
        .collect()
}

fn count_arg(cmd: &Document, key: &str) -> usize {
    cmd.get(key)
        .and_then(as_i64)
        .map_or(0, |n| n.unsigned_abs() as usize)
}

/// `find` (non-tailable): documents for the server to serve by cursor.
pub(crate) fn find(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "find")?;
    let filter = Filter::parse(&doc_arg(cmd, "filter")?.cloned().unwrap_or_default())?;
    let limit = match count_arg(cmd, "limit") {
        0 => usize::MAX,
        n => n,
    };
    let spec = ReadSpec {
        filter: &filter,
        sort: doc_arg(cmd, "sort")?,
        skip: count_arg(cmd, "skip"),
        limit,
        projection: doc_arg(cmd, "projection")?,
    };
    let documents = query_documents(ex, db, coll, &spec);
    Ok(CommandReply::Cursor {
        ns: format!("{db}.{coll}"),
        documents,
    })
}

/// `count`: `{n}`.
pub(crate) fn count(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "count")?;
    let filter = Filter::parse(&doc_arg(cmd, "query")?.cloned().unwrap_or_default())?;
    let limit = match count_arg(cmd, "limit") {
        0 => usize::MAX,
        n => n,
    };
    let spec = ReadSpec {
        skip: count_arg(cmd, "skip"),
        limit,
        ..ReadSpec::all(&filter)
    };
    let n = query_documents(ex, db, coll, &spec).len();
    Ok(CommandReply::Document(doc! {"n": n as i32}))
}

/// `distinct`: `{values}`.
pub(crate) fn distinct(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "distinct")?;
    let key = cmd
        .get_str("key")
        .map_err(|_| failed_to_parse("distinct needs 'key'".into()))?;
    let filter = Filter::parse(&doc_arg(cmd, "query")?.cloned().unwrap_or_default())?;
    let docs = query_documents(ex, db, coll, &ReadSpec::all(&filter));
    let parts = path::split(key);
    let mut values: Vec<Bson> = Vec::new();
    for doc in &docs {
        let root = Bson::Document(doc.clone());
        let mut found = Vec::new();
        path::query_values(&root, &parts, &mut found);
        for value in found.into_iter().flatten() {
            let items = match value {
                Bson::Array(items) => items.clone(),
                other => vec![other.clone()],
            };
            for item in items {
                if !values.iter().any(|v| values_equal(v, &item)) {
                    values.push(item);
                }
            }
        }
    }
    Ok(CommandReply::Document(doc! {"values": values}))
}

/// `findAndModify`: `{lastErrorObject: {n, updatedExisting, upserted?}, value}`.
pub(crate) fn find_and_modify(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "findAndModify")?;
    let query = doc_arg(cmd, "query")?.cloned().unwrap_or_default();
    let sort = doc_arg(cmd, "sort")?.cloned();
    let fields = doc_arg(cmd, "fields")?.cloned();
    let shape = |doc: Option<Document>| match (doc, &fields) {
        (Some(doc), Some(fields)) => Bson::Document(project(&doc, fields)),
        (Some(doc), None) => Bson::Document(doc),
        (None, _) => Bson::Null,
    };
    if is_truthy(cmd.get("remove")) {
        let filter = Filter::parse(&query)?;
        let removed = delete_matching(ex, db, coll, &filter, sort.as_ref(), false);
        let n = removed.len() as i32;
        return Ok(CommandReply::Document(doc! {
            "lastErrorObject": {"n": n},
            "value": shape(removed.into_iter().next()),
        }));
    }
    let update = match cmd.get("update") {
        Some(Bson::Document(u)) => u.clone(),
        _ => {
            return Err(failed_to_parse(
                "Either an update or remove=true must be specified".into(),
            ));
        }
    };
    let return_new = is_truthy(cmd.get("new"));
    let upsert = is_truthy(cmd.get("upsert"));
    let statement = UpdateStatement {
        query: &query,
        update: &update,
        upsert,
        multi: false,
        sort: sort.as_ref(),
    };
    let outcome = update_one_statement(ex, db, coll, &statement)?;
    let mut last_error =
        doc! {"n": (outcome.matched + i64::from(outcome.upserted.is_some())) as i32};
    last_error.insert("updatedExisting", outcome.matched > 0);
    if let Some(id) = &outcome.upserted {
        last_error.insert("upserted", id.clone());
    }
    let value = if return_new {
        outcome.after
    } else if outcome.upserted.is_some() {
        None
    } else {
        outcome.before
    };
    Ok(CommandReply::Document(
        doc! {"lastErrorObject": last_error, "value": shape(value)},
    ))
}

/// `aggregate` without `$changeStream`: `$match`, `$sort`, `$skip`,
/// `$limit`, `$project` and `$count` over one collection.
pub(crate) fn aggregate(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "aggregate")?;
    let Ok(pipeline) = cmd.get_array("pipeline") else {
        return Err(failed_to_parse("aggregate needs a 'pipeline' array".into()));
    };
    let mut docs: Vec<Document> = ex
        .store
        .collection(db, coll)
        .map(|c| c.documents().cloned().collect())
        .unwrap_or_default();
    for stage in pipeline {
        let Some((name, arg)) = stage.as_document().and_then(|s| s.iter().next()) else {
            return Err(failed_to_parse("pipeline stages must be objects".into()));
        };
        docs = match (name.as_str(), arg) {
            ("$match", Bson::Document(filter)) => {
                let filter = Filter::parse(filter)?;
                docs.into_iter().filter(|d| filter.matches(d)).collect()
            }
            ("$sort", Bson::Document(spec)) => {
                let mut refs: Vec<&Document> = docs.iter().collect();
                sort_documents(&mut refs, spec);
                refs.into_iter().cloned().collect()
            }
            ("$skip", n) => docs
                .into_iter()
                .skip(as_i64(n).unwrap_or(0).max(0) as usize)
                .collect(),
            ("$limit", n) => docs
                .into_iter()
                .take(as_i64(n).unwrap_or(0).max(0) as usize)
                .collect(),
            ("$project", Bson::Document(spec)) => docs.iter().map(|d| project(d, spec)).collect(),
            ("$count", Bson::String(field)) => {
                let n = docs.len() as i32;
                if n == 0 {
                    Vec::new()
                } else {
                    vec![doc! {field.clone(): n}]
                }
            }
            (other, _) => {
                return Err(CommandError::new(
                    40324,
                    "Location40324",
                    format!("Unrecognized pipeline stage name: '{other}'"),
                ));
            }
        };
    }
    Ok(CommandReply::Cursor {
        ns: format!("{db}.{coll}"),
        documents: docs,
    })
}
