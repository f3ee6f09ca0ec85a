//! Databases and collections in memory. Documents keep insertion (natural)
//! order and an `_id` index enforces uniqueness like the `_id_` index does.

use std::collections::{BTreeMap, HashMap};

use bson::{Binary, Bson, Document, doc, spec::BinarySubtype};

use super::value::id_key;

/// The `_id_` index spec every collection has.
pub(crate) fn id_index_spec() -> Document {
    doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}
}

/// A fresh collection UUID (`ui` in the oplog), BSON binary subtype 4.
pub(crate) fn new_collection_uuid() -> Binary {
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: bson::Uuid::new().bytes().to_vec(),
    }
}

/// One collection: documents in natural order plus its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Collection {
    pub uuid: Binary,
    /// Creation options as given to `create` (e.g. `changeStreamPreAndPostImages`).
    pub options: Document,
    /// Index specs, `_id_` first.
    pub indexes: Vec<Document>,
    docs: BTreeMap<u64, Document>,
    by_id: HashMap<String, u64>,
    next_slot: u64,
}

/// An insert refused because the `_id` exists.
#[derive(Debug)]
pub(crate) struct DuplicateKey;

impl Collection {
    /// An empty collection with the given creation options.
    pub(crate) fn new(options: Document) -> Self {
        Self {
            uuid: new_collection_uuid(),
            options,
            indexes: vec![id_index_spec()],
            docs: BTreeMap::new(),
            by_id: HashMap::new(),
            next_slot: 0,
        }
    }

    /// Documents in natural order.
    pub(crate) fn documents(&self) -> impl Iterator<Item = &Document> {
        self.docs.values()
    }

    /// Number of documents.
    pub(crate) fn len(&self) -> usize {
        self.docs.len()
    }

    /// Adds a document (which must already carry its `_id`).
    pub(crate) fn insert(&mut self, doc: Document) -> Result<(), DuplicateKey> {
        let key = id_key(doc.get("_id").unwrap_or(&Bson::Null));
        if self.by_id.contains_key(&key) {
            return Err(DuplicateKey);
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.by_id.insert(key, slot);
        self.docs.insert(slot, doc);
        Ok(())
    }

    /// The document with this `_id`.
    pub(crate) fn get(&self, id: &Bson) -> Option<&Document> {
        self.by_id
            .get(&id_key(id))
            .and_then(|slot| self.docs.get(slot))
    }

    /// Replaces the document with the same `_id` in place (updates keep
    /// natural order).
    pub(crate) fn replace(&mut self, doc: Document) -> bool {
        let key = id_key(doc.get("_id").unwrap_or(&Bson::Null));
        match self
            .by_id
            .get(&key)
            .and_then(|slot| self.docs.get_mut(slot))
        {
            Some(existing) => {
                *existing = doc;
                true
            }
            None => false,
        }
    }

    /// Removes the document with this `_id`.
    pub(crate) fn remove(&mut self, id: &Bson) -> Option<Document> {
        let slot = self.by_id.remove(&id_key(id))?;
        self.docs.remove(&slot)
    }

    /// Whether change-stream pre- and post-images are recorded.
    pub(crate) fn records_images(&self) -> bool {
        matches!(
            self.options.get("changeStreamPreAndPostImages"),
            Some(Bson::Document(spec)) if spec.get_bool("enabled").ok() == Some(true)
        )
    }
}

/// All databases: `db -> collection name -> collection`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Store {
    pub dbs: BTreeMap<String, BTreeMap<String, Collection>>,
}

/// Splits `db.coll` at the first dot.
pub(crate) fn split_ns(ns: &str) -> (&str, &str) {
    ns.split_once('.').unwrap_or((ns, ""))
}

impl Store {
    /// A collection, if it exists.
    pub(crate) fn collection(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db)?.get(coll)
    }

    /// A collection to change, if it exists.
    pub(crate) fn collection_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs.get_mut(db)?.get_mut(coll)
    }

    /// Adds a collection, creating its database.
    pub(crate) fn put(&mut self, db: &str, coll: &str, collection: Collection) {
        self.dbs
            .entry(db.to_string())
            .or_default()
            .insert(coll.to_string(), collection);
    }

    /// Removes a collection; an emptied database disappears as on a server.
    pub(crate) fn take(&mut self, db: &str, coll: &str) -> Option<Collection> {
        let collections = self.dbs.get_mut(db)?;
        let taken = collections.remove(coll);
        if collections.is_empty() {
            self.dbs.remove(db);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_ids_are_refused_across_numeric_types() {
        let mut coll = Collection::new(Document::new());
        coll.insert(doc! {"_id": 1, "a": 1}).unwrap();
        assert!(coll.insert(doc! {"_id": 1.0, "a": 2}).is_err());
        coll.insert(doc! {"_id": "1"}).unwrap();
        assert_eq!(coll.len(), 2);
        assert!(coll.replace(doc! {"_id": 1i64, "a": 3}));
        let first = coll.documents().next().unwrap();
        assert_eq!(first, &doc! {"_id": 1i64, "a": 3});
        assert!(coll.remove(&Bson::Int32(1)).is_some());
        assert_eq!(coll.len(), 1);
    }
}
