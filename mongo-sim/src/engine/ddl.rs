//! Collection and database commands (create, drop, dropDatabase,
//! renameCollection, createIndexes, dropIndexes, collMod) and the catalog
//! listings, each writing the `c` oplog entries a real server writes.

use bson::{Bson, Document, doc};

use super::exec::{Exec, GENERIC_ARGS, check_collection_name, namespace_not_found, target_name};
use super::matcher::Filter;
use super::oplog::OpRecord;
use super::store::split_ns;
use super::value::is_truthy;
use super::{CommandError, CommandReply, MongoVersion};

fn namespace_exists(ns: &str) -> CommandError {
    CommandError::new(
        48,
        "NamespaceExists",
        format!("Collection {ns} already exists."),
    )
}

/// The command's options without its name and generic arguments.
fn options_of(cmd: &Document) -> Document {
    cmd.iter()
        .skip(1)
        .filter(|(k, _)| !GENERIC_ARGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `create`: records `{create, <options>, idIndex}`.
pub(crate) fn create(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "create")?;
    check_collection_name(db, coll)?;
    if ex.store.collection(db, coll).is_some() {
        return Err(namespace_exists(&format!("{db}.{coll}")));
    }
    ex.create_collection(db, coll, options_of(cmd));
    Ok(CommandReply::Document(Document::new()))
}

/// Drops one collection, recording `{drop}` with `o2: {numRecords}`.
fn drop_collection(ex: &mut Exec<'_>, db: &str, coll: &str) -> Option<(usize, usize)> {
    let collection = ex.store.take(db, coll)?;
    let counts = (collection.indexes.len(), collection.len());
    ex.records.push(OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        Some(collection.uuid),
        doc! {"drop": coll},
        Some(doc! {"numRecords": counts.1 as i32}),
    ));
    Some(counts)
}

/// `drop`: `{nIndexesWas, ns}`; a missing collection is an error before 7.0.
pub(crate) fn drop(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    ex.forbid_in_txn("drop")?;
    let coll = target_name(cmd, "drop")?;
    let ns = format!("{db}.{coll}");
    match drop_collection(ex, db, coll) {
        Some((indexes, _)) => Ok(CommandReply::Document(
            doc! {"nIndexesWas": indexes as i32, "ns": ns},
        )),
        None if ex.version >= MongoVersion::V7_0 => Ok(CommandReply::Document(Document::new())),
        None => Err(namespace_not_found(&ns)),
    }
}

/// `dropDatabase`: one `drop` per collection, then `{dropDatabase: 1}`.
pub(crate) fn drop_database(ex: &mut Exec<'_>, db: &str) -> Result<CommandReply, CommandError> {
    ex.forbid_in_txn("dropDatabase")?;
    let names: Vec<String> = ex
        .store
        .dbs
        .get(db)
        .map(|c| c.keys().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() {
        return Ok(CommandReply::Document(Document::new()));
    }
    for name in names {
        drop_collection(ex, db, &name);
    }
    ex.records.push(OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        None,
        doc! {"dropDatabase": 1},
        None,
    ));
    Ok(CommandReply::Document(doc! {"dropped": db}))
}

/// `renameCollection` (run on `admin`): records `{renameCollection, to,
/// stayTemp[, dropTarget: <uuid>]}` on the source database.
pub(crate) fn rename_collection(
    ex: &mut Exec<'_>,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    ex.forbid_in_txn("renameCollection")?;
    let from = target_name(cmd, "renameCollection")?.to_string();
    let to = cmd
        .get_str("to")
        .map_err(|_| CommandError::new(9, "FailedToParse", "renameCollection needs 'to'".into()))?
        .to_string();
    let (from_db, from_coll) = split_ns(&from);
    let (to_db, to_coll) = split_ns(&to);
    check_collection_name(to_db, to_coll)?;
    if from_db != to_db {
        return Err(CommandError::new(
            20,
            "IllegalOperation",
            "mongo-sim renames only within one database".into(),
        ));
    }
    if ex.store.collection(from_db, from_coll).is_none() {
        return Err(CommandError::new(
            26,
            "NamespaceNotFound",
            format!("Source collection {from} does not exist"),
        ));
    }
    let drop_target = is_truthy(cmd.get("dropTarget"));
    let target_uuid = match ex.store.collection(to_db, to_coll) {
        Some(_) if !drop_target => return Err(namespace_exists(&to)),
        Some(target) => Some(target.uuid.clone()),
        None => None,
    };
    if target_uuid.is_some() {
        ex.store.take(to_db, to_coll);
    }
    let collection = ex.store.take(from_db, from_coll).expect("checked above");
    let mut o = doc! {"renameCollection": from.clone(), "to": to.clone(), "stayTemp": false};
    if let Some(uuid) = target_uuid {
        o.insert("dropTarget", uuid);
    }
    ex.records.push(OpRecord::new(
        "c",
        format!("{from_db}.$cmd"),
        Some(collection.uuid.clone()),
        o,
        None,
    ));
    ex.store.put(to_db, to_coll, collection);
    Ok(CommandReply::Document(Document::new()))
}

/// `createIndexes`: recorded (uniqueness other than `_id` is not enforced);
/// one `{createIndexes, v, key, name, ...}` entry per new index.
pub(crate) fn create_indexes(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "createIndexes")?;
    let Ok(specs) = cmd.get_array("indexes") else {
        return Err(CommandError::new(
            9,
            "FailedToParse",
            "createIndexes needs 'indexes'".into(),
        ));
    };
    let created_automatically = ex.store.collection(db, coll).is_none();
    let collection = ex.collection_for_write(db, coll)?;
    let before = collection.indexes.len();
    let uuid = collection.uuid.clone();
    let mut new_entries = Vec::new();
    for spec in specs {
        let Some(spec) = spec.as_document() else {
            return Err(CommandError::new(
                14,
                "TypeMismatch",
                "index specs must be objects".into(),
            ));
        };
        let (Ok(key), Ok(name)) = (spec.get_document("key"), spec.get_str("name")) else {
            return Err(CommandError::new(
                9,
                "FailedToParse",
                "index specs need 'key' and 'name'".into(),
            ));
        };
        if collection
            .indexes
            .iter()
            .any(|i| i.get_str("name").ok() == Some(name))
        {
            continue;
        }
        let mut stored = doc! {"v": 2, "key": key.clone(), "name": name};
        for (k, v) in spec {
            if !matches!(k.as_str(), "v" | "key" | "name" | "ns") {
                stored.insert(k.clone(), v.clone());
            }
        }
        collection.indexes.push(stored.clone());
        let mut o = doc! {"createIndexes": coll};
        for (k, v) in stored {
            o.insert(k, v);
        }
        new_entries.push(o);
    }
    let after = collection.indexes.len();
    for o in new_entries {
        ex.records.push(OpRecord::new(
            "c",
            format!("{db}.$cmd"),
            Some(uuid.clone()),
            o,
            None,
        ));
    }
    let mut reply = doc! {
        "numIndexesBefore": before as i32,
        "numIndexesAfter": after as i32,
        "createdCollectionAutomatically": created_automatically,
    };
    if before == after {
        reply.insert("note", "all indexes already exist");
    }
    Ok(CommandReply::Document(reply))
}

/// `dropIndexes`: one `{dropIndexes, index}` entry per index, `o2` = its spec.
pub(crate) fn drop_indexes(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    ex.forbid_in_txn("dropIndexes")?;
    let coll = target_name(cmd, "dropIndexes")?;
    let ns = format!("{db}.{coll}");
    let Some(collection) = ex.store.collection_mut(db, coll) else {
        return Err(namespace_not_found(&ns));
    };
    let was = collection.indexes.len();
    let wanted: Vec<usize> = match cmd.get("index") {
        Some(Bson::String(name)) if name == "*" => (1..was).collect(),
        Some(Bson::String(name)) => vec![index_position(&collection.indexes, |i| {
            i.get_str("name").ok() == Some(name)
        })?],
        Some(Bson::Array(names)) => names
            .iter()
            .map(|n| {
                index_position(&collection.indexes, |i| {
                    Some(i.get_str("name").ok()) == Some(n.as_str())
                })
            })
            .collect::<Result<_, _>>()?,
        Some(Bson::Document(key)) => vec![index_position(&collection.indexes, |i| {
            i.get_document("key").ok() == Some(key)
        })?],
        _ => {
            return Err(CommandError::new(
                9,
                "FailedToParse",
                "dropIndexes needs 'index'".into(),
            ));
        }
    };
    if wanted.contains(&0) {
        return Err(CommandError::new(
            72,
            "InvalidOptions",
            "cannot drop _id index".into(),
        ));
    }
    let uuid = collection.uuid.clone();
    let mut removed = Vec::new();
    for position in wanted.iter().rev() {
        removed.push(collection.indexes.remove(*position));
    }
    removed.reverse();
    for spec in removed {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        ex.records.push(OpRecord::new(
            "c",
            format!("{db}.$cmd"),
            Some(uuid.clone()),
            doc! {"dropIndexes": coll, "index": name},
            Some(spec),
        ));
    }
    Ok(CommandReply::Document(doc! {"nIndexesWas": was as i32}))
}

fn index_position(
    indexes: &[Document],
    wanted: impl Fn(&Document) -> bool,
) -> Result<usize, CommandError> {
    indexes
        .iter()
        .position(wanted)
        .ok_or_else(|| CommandError::new(27, "IndexNotFound", "index not found".into()))
}

/// `collMod`: changes options (e.g. `changeStreamPreAndPostImages`).
pub(crate) fn coll_mod(
    ex: &mut Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    ex.forbid_in_txn("collMod")?;
    let coll = target_name(cmd, "collMod")?;
    let Some(collection) = ex.store.collection_mut(db, coll) else {
        return Err(namespace_not_found(&format!("{db}.{coll}")));
    };
    let options = options_of(cmd);
    let old = doc! {"collectionOptions_old": {"uuid": collection.uuid.clone()}};
    for (k, v) in &options {
        collection.options.insert(k.clone(), v.clone());
    }
    let mut o = doc! {"collMod": coll};
    for (k, v) in options {
        o.insert(k, v);
    }
    let uuid = collection.uuid.clone();
    ex.records.push(OpRecord::new(
        "c",
        format!("{db}.$cmd"),
        Some(uuid),
        o,
        Some(old),
    ));
    Ok(CommandReply::Document(Document::new()))
}

/// `listDatabases`.
pub(crate) fn list_databases(
    ex: &Exec<'_>,
    cmd: &Document,
    oplog_bytes: usize,
) -> Result<CommandReply, CommandError> {
    let name_only = is_truthy(cmd.get("nameOnly"));
    let filter = match cmd.get("filter") {
        Some(Bson::Document(f)) => Some(Filter::parse(f)?),
        _ => None,
    };
    let mut names: Vec<(String, usize)> = vec![
        ("admin".into(), 4096),
        ("config".into(), 4096),
        ("local".into(), oplog_bytes),
    ];
    for (db, collections) in &ex.store.dbs {
        if names.iter().any(|(n, _)| n == db) {
            continue;
        }
        let size: usize = collections
            .values()
            .map(|c| {
                c.documents()
                    .map(|d| d.to_vec().map_or(0, |v| v.len()))
                    .sum::<usize>()
            })
            .sum();
        names.push((db.clone(), size.max(8192)));
    }
    names.sort();
    let mut databases = Vec::new();
    let mut total = 0i64;
    for (name, size) in names {
        let entry = if name_only {
            doc! {"name": name}
        } else {
            doc! {"name": name, "sizeOnDisk": size as i64, "empty": false}
        };
        if filter.as_ref().is_none_or(|f| f.matches(&entry)) {
            total += size as i64;
            databases.push(entry);
        }
    }
    let mut reply = doc! {"databases": databases};
    if !name_only {
        reply.insert("totalSize", total);
        reply.insert("totalSizeMb", total / (1024 * 1024));
    }
    Ok(CommandReply::Document(reply))
}

/// `listCollections`: served as a cursor on `<db>.$cmd.listCollections`.
pub(crate) fn list_collections(
    ex: &Exec<'_>,
    db: &str,
    cmd: &Document,
    capacity: usize,
) -> Result<CommandReply, CommandError> {
    let name_only = is_truthy(cmd.get("nameOnly"));
    let filter = match cmd.get("filter") {
        Some(Bson::Document(f)) => Some(Filter::parse(f)?),
        _ => None,
    };
    let mut documents = Vec::new();
    if db == "local" {
        documents.push(doc! {
            "name": "oplog.rs", "type": "collection",
            "options": {"capped": true, "size": capacity as i64},
            "info": {"readOnly": false},
        });
    }
    if let Some(collections) = ex.store.dbs.get(db) {
        for (name, collection) in collections {
            documents.push(if name_only {
                doc! {"name": name, "type": "collection"}
            } else {
                doc! {
                    "name": name, "type": "collection", "options": collection.options.clone(),
                    "info": {"readOnly": false, "uuid": collection.uuid.clone()},
                    "idIndex": super::store::id_index_spec(),
                }
            });
        }
    }
    if let Some(filter) = filter {
        documents.retain(|d| filter.matches(d));
    }
    Ok(CommandReply::Cursor {
        ns: format!("{db}.$cmd.listCollections"),
        documents,
    })
}

/// `listIndexes`: served as a cursor.
pub(crate) fn list_indexes(
    ex: &Exec<'_>,
    db: &str,
    cmd: &Document,
) -> Result<CommandReply, CommandError> {
    let coll = target_name(cmd, "listIndexes")?;
    let Some(collection) = ex.store.collection(db, coll) else {
        return Err(namespace_not_found(&format!("{db}.{coll}")));
    };
    Ok(CommandReply::Cursor {
        ns: format!("{db}.{coll}"),
        documents: collection.indexes.clone(),
    })
}
