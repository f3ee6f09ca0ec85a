//! A borrowed, typed view of one oplog entry.
//!
//! The hot path reads a handful of top-level fields out of every entry, so
//! [`OplogEntry::parse`] walks the top level once and keeps borrowed
//! references; nothing is copied or decoded until an accessor asks for it,
//! and a field of the wrong type only matters if someone asks for it.

use bson::{RawArray, RawBsonRef, RawDocument};
use thiserror::Error;

use super::ejson::type_name;
use crate::position::OplogPosition;

/// Why an oplog entry (or one operation inside a transaction) cannot be read.
///
/// These never abort the tail: the entry is skipped with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TransformError {
    /// A field the entry's kind requires is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field is present with a type the oplog never uses for it.
    #[error("field {field} is {found}, expected {expected}")]
    WrongType {
        /// Dotted name of the field.
        field: &'static str,
        /// What the oplog format says it should be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A CRUD namespace without the `<db>.<coll>` dot.
    #[error("namespace {0:?} has no collection part")]
    NamespaceWithoutCollection(String),
    /// The BSON bytes are corrupt.
    #[error("corrupt BSON: {0}")]
    CorruptBson(String),
    /// Documents or `applyOps` nested beyond any sane depth.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
}

impl From<bson::error::Error> for TransformError {
    fn from(error: bson::error::Error) -> Self {
        Self::CorruptBson(error.to_string())
    }
}

/// The `op` field: what kind of entry this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind<'a> {
    /// `i`
    Insert,
    /// `u`
    Update,
    /// `d`
    Delete,
    /// `c`: DDL, transactions, `applyOps`.
    Command,
    /// `n`: periodic and informational no-ops.
    NoOp,
    /// Anything else (the legacy `db` declaration, future kinds).
    Other(&'a str),
}

/// Identifies one multi-entry transaction: the session (`lsid`, compared as
/// raw bytes) and its `txnNumber`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    lsid: Vec<u8>,
    txn_number: i64,
}

/// Top-level fields of an entry, borrowed from its raw bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct OplogEntry<'a> {
    op: Option<RawBsonRef<'a>>,
    ns: Option<RawBsonRef<'a>>,
    ts: Option<RawBsonRef<'a>>,
    wall: Option<RawBsonRef<'a>>,
    o: Option<RawBsonRef<'a>>,
    o2: Option<RawBsonRef<'a>>,
    lsid: Option<RawBsonRef<'a>>,
    txn_number: Option<RawBsonRef<'a>>,
    partial_txn: Option<RawBsonRef<'a>>,
    prepare: Option<RawBsonRef<'a>>,
}

impl<'a> OplogEntry<'a> {
    /// Walks the top level of `doc` once. Fails only on corrupt BSON.
    pub fn parse(doc: &'a RawDocument) -> Result<Self, TransformError> {
        let mut entry = Self::default();
        for element in doc.iter() {
            let (key, value) = element?;
            let slot = match key.as_str() {
                "op" => &mut entry.op,
                "ns" => &mut entry.ns,
                "ts" => &mut entry.ts,
                "wall" => &mut entry.wall,
                "o" => &mut entry.o,
                "o2" => &mut entry.o2,
                "lsid" => &mut entry.lsid,
                "txnNumber" => &mut entry.txn_number,
                "partialTxn" => &mut entry.partial_txn,
                "prepare" => &mut entry.prepare,
                _ => continue,
            };
            *slot = Some(value);
        }
        Ok(entry)
    }

    /// The entry's position: its `ts`.
    pub fn position(&self) -> Result<OplogPosition, TransformError> {
        match required(self.ts, "ts")? {
            RawBsonRef::Timestamp(ts) => Ok(ts.into()),
            other => Err(wrong_type("ts", "Timestamp", other)),
        }
    }

    /// The primary's wall clock in ms since the epoch; absent before 3.6.
    pub fn wall_ms(&self) -> Option<i64> {
        match self.wall {
            Some(RawBsonRef::DateTime(dt)) => Some(dt.timestamp_millis()),
            _ => None,
        }
    }

    /// The `op` field.
    pub fn op(&self) -> Result<OpKind<'a>, TransformError> {
        match required(self.op, "op")? {
            RawBsonRef::String(op) => Ok(match op {
                "i" => OpKind::Insert,
                "u" => OpKind::Update,
                "d" => OpKind::Delete,
                "c" => OpKind::Command,
                "n" => OpKind::NoOp,
                other => OpKind::Other(other),
            }),
            other => Err(wrong_type("op", "String", other)),
        }
    }

    /// The `ns` field, `<db>.<coll>` (or `<db>.$cmd` for commands).
    pub fn namespace(&self) -> Result<&'a str, TransformError> {
        match required(self.ns, "ns")? {
            RawBsonRef::String(ns) => Ok(ns),
            other => Err(wrong_type("ns", "String", other)),
        }
    }

    /// The `o` document: the inserted document, the update, the command.
    pub fn o(&self) -> Result<&'a RawDocument, TransformError> {
        document(self.o, "o")
    }

    /// The `o2` document: for updates, the query (`{_id: ...}`).
    pub fn o2(&self) -> Result<&'a RawDocument, TransformError> {
        document(self.o2, "o2")
    }

    /// The `_id` of the changed document: `o2._id` for updates, `o._id` otherwise.
    pub fn document_id(&self, kind: OpKind<'_>) -> Result<RawBsonRef<'a>, TransformError> {
        let (holder, field) = match kind {
            OpKind::Update => (self.o2()?, "o2._id"),
            _ => (self.o()?, "o._id"),
        };
        holder
            .get("_id")?
            .ok_or(TransformError::MissingField(field))
    }

    /// `o.applyOps`, when this command carries a list of operations.
    pub fn apply_ops(&self) -> Result<Option<&'a RawArray>, TransformError> {
        let Some(RawBsonRef::Document(o)) = self.o else {
            return Ok(None);
        };
        match o.get("applyOps")? {
            None => Ok(None),
            Some(RawBsonRef::Array(ops)) => Ok(Some(ops)),
            Some(other) => Err(wrong_type("o.applyOps", "Array", other)),
        }
    }

    /// True for a chunk of a large transaction that more chunks will follow
    /// (`partialTxn: true`, inside `o` as servers write it, or at the top level).
    pub fn is_partial_transaction(&self) -> bool {
        self.flag_in_o_or_top("partialTxn", self.partial_txn)
    }

    /// True for the (last) chunk of a prepared transaction: its operations
    /// only count once a `commitTransaction` entry arrives.
    pub fn is_prepare(&self) -> bool {
        self.flag_in_o_or_top("prepare", self.prepare)
    }

    /// The name of the command in `o` (its first key), for skip reasons and
    /// to recognise `commitTransaction` / `abortTransaction`.
    pub fn command_name(&self) -> Option<&'a str> {
        let Some(RawBsonRef::Document(o)) = self.o else {
            return None;
        };
        o.iter().next()?.ok().map(|(key, _)| key.as_str())
    }

    /// The transaction this entry belongs to, when it carries both `lsid`
    /// and `txnNumber` (retryable writes carry them too: callers decide).
    pub fn session_key(&self) -> Option<SessionKey> {
        let Some(RawBsonRef::Document(lsid)) = self.lsid else {
            return None;
        };
        let txn_number = match self.txn_number? {
            RawBsonRef::Int64(n) => n,
            RawBsonRef::Int32(n) => i64::from(n),
            _ => return None,
        };
        Some(SessionKey {
            lsid: lsid.as_bytes().to_vec(),
            txn_number,
        })
    }

    fn flag_in_o_or_top(&self, name: &str, top_level: Option<RawBsonRef<'a>>) -> bool {
        if let Some(RawBsonRef::Boolean(true)) = top_level {
            return true;
        }
        let Some(RawBsonRef::Document(o)) = self.o else {
            return false;
        };
        matches!(o.get(name), Ok(Some(RawBsonRef::Boolean(true))))
    }
}

/// Splits `<db>.<coll>` at the first dot, as MongoDB and redis-oplog do.
pub fn split_namespace(ns: &str) -> Option<(&str, &str)> {
    ns.split_once('.')
}

fn required<'a>(
    value: Option<RawBsonRef<'a>>,
    field: &'static str,
) -> Result<RawBsonRef<'a>, TransformError> {
    value.ok_or(TransformError::MissingField(field))
}

fn document<'a>(
    value: Option<RawBsonRef<'a>>,
    field: &'static str,
) -> Result<&'a RawDocument, TransformError> {
    match required(value, field)? {
        RawBsonRef::Document(doc) => Ok(doc),
        other => Err(wrong_type(field, "Document", other)),
    }
}

/// Builds [`TransformError::WrongType`] for a value found where `expected` belonged.
pub fn wrong_type(
    field: &'static str,
    expected: &'static str,
    found: RawBsonRef<'_>,
) -> TransformError {
    TransformError::WrongType {
        field,
        expected,
        found: type_name(found.element_type()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, Timestamp, doc, rawdoc};

    #[test]
    fn reads_the_fields_of_a_crud_entry() {
        let raw = rawdoc! {
            "ts": Timestamp { time: 10, increment: 3 }, "op": "u", "ns": "db.c",
            "wall": bson::DateTime::from_millis(99), "o2": { "_id": 5 }, "o": { "$set": { "a": 1 } },
        };
        let entry = OplogEntry::parse(&raw).unwrap();
        assert_eq!(entry.position().unwrap(), OplogPosition::new(10, 3));
        assert_eq!(entry.op().unwrap(), OpKind::Update);
        assert_eq!(entry.namespace().unwrap(), "db.c");
        assert_eq!(entry.wall_ms(), Some(99));
        assert_eq!(
            entry.document_id(OpKind::Update).unwrap(),
            RawBsonRef::Int32(5)
        );
        assert_eq!(entry.session_key(), None);
    }

    #[test]
    fn reports_missing_and_mistyped_fields() {
        let raw = rawdoc! { "op": "i", "ns": 5, "o": { "x": 1 } };
        let entry = OplogEntry::parse(&raw).unwrap();
        assert_eq!(
            entry.position().unwrap_err().to_string(),
            "missing field ts"
        );
        assert_eq!(
            entry.namespace().unwrap_err().to_string(),
            "field ns is Int32, expected String"
        );
        assert_eq!(
            entry.document_id(OpKind::Insert).unwrap_err().to_string(),
            "missing field o._id"
        );
        assert_eq!(
            entry.document_id(OpKind::Update).unwrap_err().to_string(),
            "missing field o2"
        );
    }

    #[test]
    fn reads_transaction_markers_inside_o_and_at_top_level() {
        let inside = rawdoc! { "op": "c", "o": { "applyOps": [], "partialTxn": true } };
        let top = rawdoc! { "op": "c", "prepare": true, "o": { "applyOps": [] } };
        let neither = rawdoc! { "op": "c", "o": { "applyOps": [], "partialTxn": false } };
        assert!(OplogEntry::parse(&inside).unwrap().is_partial_transaction());
        assert!(OplogEntry::parse(&top).unwrap().is_prepare());
        let entry = OplogEntry::parse(&neither).unwrap();
        assert!(!entry.is_partial_transaction() && !entry.is_prepare());
        assert_eq!(entry.command_name(), Some("applyOps"));
    }

    #[test]
    fn session_key_needs_lsid_and_txn_number() {
        let lsid = doc! { "id": Bson::Int32(1) };
        let both =
            bson::RawDocumentBuf::try_from(&doc! { "lsid": lsid.clone(), "txnNumber": 7_i64 })
                .unwrap();
        let no_number = bson::RawDocumentBuf::try_from(&doc! { "lsid": lsid }).unwrap();
        let a = OplogEntry::parse(&both).unwrap().session_key().unwrap();
        assert_eq!(a.txn_number, 7);
        assert!(
            OplogEntry::parse(&no_number)
                .unwrap()
                .session_key()
                .is_none()
        );
    }
}
