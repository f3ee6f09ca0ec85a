//! The context one data command runs in: the store it may change (the live
//! one, or a transaction's private copy) and the oplog records it produces.
//! Keeping commands unaware of which store they touch is what lets the same
//! code serve plain writes and transactions.

use bson::{Bson, Document, doc};

use super::oplog::OpRecord;
use super::store::{Collection, Store, id_index_spec};
use super::{CommandError, MongoVersion};

/// Arguments every command may carry that are not command options.
pub(crate) const GENERIC_ARGS: &[&str] = &[
    "$db",
    "$clusterTime",
    "$readPreference",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "writeConcern",
    "readConcern",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "$audit",
    "stmtId",
    "stmtIds",
];

/// A running command's view of the database.
pub(crate) struct Exec<'a> {
    pub version: MongoVersion,
    pub store: &'a mut Store,
    pub records: Vec<OpRecord>,
    /// Inside a multi-document transaction (DDL is restricted).
    pub in_txn: bool,
}

/// `code 26 NamespaceNotFound`.
pub(crate) fn namespace_not_found(ns: &str) -> CommandError {
    CommandError::new(26, "NamespaceNotFound", format!("ns not found: {ns}"))
}

/// The string value of the command's first field (the collection name).
pub(crate) fn target_name<'c>(cmd: &'c Document, name: &str) -> Result<&'c str, CommandError> {
    match cmd.iter().next() {
        Some((_, Bson::String(coll))) => Ok(coll.as_str()),
        _ => Err(CommandError::new(
            73,
            "InvalidNamespace",
            format!("collection name has invalid type for '{name}'"),
        )),
    }
}

/// Validates a collection name the way the server does (no `$`, not empty).
pub(crate) fn check_collection_name(db: &str, coll: &str) -> Result<(), CommandError> {
    if coll.is_empty() || coll.contains('$') || db.is_empty() || db.contains('.') {
        return Err(CommandError::new(
            73,
            "InvalidNamespace",
            format!("Invalid namespace specified '{db}.{coll}'"),
        ));
    }
    Ok(())
}

impl Exec<'_> {
    /// The collection, created implicitly (with its `create` oplog entry) if
    /// it does not exist yet, as an insert or upsert does.
    pub(crate) fn collection_for_write(
        &mut self,
        db: &str,
        coll: &str,
    ) -> Result<&mut Collection, CommandError> {
        check_collection_name(db, coll)?;
        if self.store.collection(db, coll).is_none() {
            self.create_collection(db, coll, Document::new());
        }
        Ok(self.store.collection_mut(db, coll).expect("created above"))
    }

    /// Creates a collection and records `{create, <options>, idIndex}`.
    pub(crate) fn create_collection(&mut self, db: &str, coll: &str, options: Document) {
        let collection = Collection::new(options.clone());
        let mut o = doc! {"create": coll};
        for (key, value) in options {
            o.insert(key, value);
        }
        o.insert("idIndex", id_index_spec());
        self.records.push(OpRecord::new(
            "c",
            format!("{db}.$cmd"),
            Some(collection.uuid.clone()),
            o,
            None,
        ));
        self.store.put(db, coll, collection);
    }

    /// Refuses DDL inside a transaction, as servers do.
    pub(crate) fn forbid_in_txn(&self, name: &str) -> Result<(), CommandError> {
        if self.in_txn {
            return Err(CommandError::new(
                263,
                "OperationNotSupportedInTransaction",
                format!("Cannot run '{name}' in a multi-document transaction."),
            ));
        }
        Ok(())
    }
}
