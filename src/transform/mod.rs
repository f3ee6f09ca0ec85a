//! Transform: oplog entry -> Redis publications, the way redis-oplog wants them.
//!
//! Everything here is pure: no I/O, no clocks, no globals. A [`Transformer`]
//! keeps only the state that oplog semantics force on it (transactions whose
//! chunks arrive across several entries), so the same code serves the live
//! pipeline, `redtail explain` and the table tests over real fixtures.
//!
//! One concept per module: [`entry`](OplogEntry) reads an entry's fields
//! lazily from its raw bytes, `ejson` writes Meteor EJSON, `id_channel`
//! spells the per-document channel, `fields` derives the changed-field list,
//! `message` assembles the JSON, and `txn` expands and assembles
//! transactions. Entries are never converted to `bson::Document`: the hot
//! path borrows from the cursor's raw batch and allocates only what a
//! [`Publication`] owns.

mod ejson;
mod entry;
mod fields;
mod id_channel;
mod message;
mod txn;

use std::fmt;

use bson::{RawArray, RawDocument};

pub use ejson::{
    EjsonError, type_name, write_document as write_ejson_document, write_value as write_ejson_value,
};
pub use ejson::{write_js_number, write_json_string};
pub use entry::{OpKind, OplogEntry, SessionKey, TransformError, split_namespace};
pub use fields::{FieldSink, UpdateShape, changed_fields, update_shape};
pub use id_channel::{IdChannelStyle, document_channel};
pub use message::{EventKind, Message, MessageError, build_message};
pub use txn::{
    BufferedChunk, InnerOperation, ResumeHold, TransactionAssembler, TransactionStep,
    for_each_operation,
};

use crate::position::OplogPosition;

/// One Redis notification: the same `message` published to each channel, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// `<db>.<coll>` first, then `<db>.<coll>::<idstr>` when the id has one.
    pub channels: Vec<String>,
    /// The exact JSON redis-oplog parses: `{"e":..,"d":{"_id":..},"f":[..]}`.
    pub message: String,
    /// The `ts` that names this change in the dedup key
    /// `<prefix>processed::<origin>::<tx_index>` (oplogtoredis-compatible).
    pub origin: OplogPosition,
    /// Depth-first index of the operation inside its `applyOps`; 0 outside transactions.
    pub tx_index: u32,
    /// The primary's wall clock when the change was written (ms since the epoch),
    /// used to measure end-to-end latency. Absent on pre-3.6 entries.
    pub wall_ms: Option<i64>,
    /// `<db>.<coll>`, for sharding, the denylist and tracing.
    pub namespace: String,
}

impl Publication {
    /// The database part of the namespace (split at the first dot).
    pub fn database(&self) -> &str {
        self.namespace
            .split_once('.')
            .map_or(self.namespace.as_str(), |(db, _)| db)
    }
}

/// The knobs that change what is published (both oplogtoredis-compatible by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransformSettings {
    /// `OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES`: list full dotted paths for
    /// 5.0+ (`$v: 2`) updates instead of top-level field names.
    pub extract_subfield_changes: bool,
    /// How the per-document channel spells the `_id`.
    pub id_channel_style: IdChannelStyle,
}

/// Why an entry (or one operation of a transaction) publishes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// `op: "n"`: periodic and informational no-ops.
    NoOp,
    /// A command other than a transaction (DDL, index builds, ...); holds
    /// the command's name.
    Command(String),
    /// A `system.*` collection (index specs, users, cluster keys...).
    SystemCollection,
    /// The `config` or `local` database: server internals.
    InternalDatabase,
    /// An `op` this version does not know.
    UnsupportedOp(String),
    /// An `_id` Meteor's EJSON cannot carry (holds the BSON type's name).
    UnsupportedId(&'static str),
    /// The entry cannot be read.
    Malformed(TransformError),
    /// A `partialTxn` chunk, held until its transaction's last chunk.
    TransactionBuffered,
    /// A prepared transaction, held until its `commitTransaction`.
    PreparedTransactionBuffered,
    /// A chunk already buffered (read again after a restart).
    DuplicateChunk,
    /// `abortTransaction`: the buffered transaction is discarded.
    AbortedTransaction,
    /// `commitTransaction` for a transaction whose chunks were never read
    /// (they precede the position this tail started from).
    UnknownTransaction,
    /// A transaction none of whose operations can be published.
    NothingInTransaction,
}

impl SkipReason {
    /// A fixed label per kind, for metric labels (the [`fmt::Display`] form
    /// may carry a detail such as the command name).
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoOp => "no-op",
            Self::Command(_) => "command",
            Self::SystemCollection => "system collection",
            Self::InternalDatabase => "config/local database",
            Self::UnsupportedOp(_) => "unsupported op",
            Self::UnsupportedId(_) => "unsupported _id type",
            Self::Malformed(_) => "malformed",
            Self::TransactionBuffered => "transaction buffered",
            Self::PreparedTransactionBuffered => "prepared transaction buffered",
            Self::DuplicateChunk => "transaction chunk already buffered",
            Self::AbortedTransaction => "aborted transaction",
            Self::UnknownTransaction => "commit of unknown transaction",
            Self::NothingInTransaction => "nothing to publish in transaction",
        }
    }
}

/// Short and stable: `no-op`, `command: drop`, `unsupported _id type: Timestamp`,
/// `malformed: missing field ns`, `transaction buffered`...
impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command(name) => write!(f, "command: {name}"),
            Self::UnsupportedOp(op) => write!(f, "unsupported op: {op}"),
            Self::UnsupportedId(type_name) => write!(f, "unsupported _id type: {type_name}"),
            Self::Malformed(error) => write!(f, "malformed: {error}"),
            other => f.write_str(other.label()),
        }
    }
}

impl From<TransformError> for SkipReason {
    fn from(error: TransformError) -> Self {
        Self::Malformed(error)
    }
}

impl From<MessageError> for SkipReason {
    fn from(error: MessageError) -> Self {
        match error {
            MessageError::UnsupportedId(type_name) => Self::UnsupportedId(type_name),
            MessageError::Malformed(error) => Self::Malformed(error),
        }
    }
}

/// An entry that publishes nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Why.
    pub reason: SkipReason,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.reason.fmt(f)
    }
}

/// One operation of a transaction that was skipped while others published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationSkip {
    /// The `ts` of the chunk the operation came from.
    pub origin: OplogPosition,
    /// Its `txIdx`, when it is a CRUD operation.
    pub tx_index: Option<u32>,
    /// Why.
    pub reason: SkipReason,
}

/// Everything one oplog entry leads to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryOutcome {
    /// The entry's own `ts`, when readable.
    pub position: Option<OplogPosition>,
    /// The entry's `wall`, when present (for staleness even of skipped entries).
    pub wall_ms: Option<i64>,
    /// What to publish, in order. A committing transaction entry may release
    /// operations of earlier (buffered) entries.
    pub publications: Vec<Publication>,
    /// Set when the entry publishes nothing.
    pub skip: Option<Skip>,
    /// Operations skipped inside a transaction (also when the entry as a
    /// whole published something or was skipped as empty).
    pub operation_skips: Vec<OperationSkip>,
    /// Parts of update descriptions that yielded no field name
    /// (oplogtoredis's `otr_oplog_unprocessable_changed_fields`).
    pub unprocessable_fields: u32,
    /// Where a restarted tail may resume (query `ts > resume_position`) once
    /// every publication returned so far has been delivered. It is the
    /// entry's own `ts`, except that it never passes the first chunk of a
    /// transaction still held back: then it stays at the entry read just
    /// before that chunk, or is `None` when that is unknown (and the caller
    /// keeps its previous checkpoint).
    pub resume_position: Option<OplogPosition>,
}

impl EntryOutcome {
    /// Every skip reason in this outcome, entry-level first, for metrics.
    pub fn skip_reasons(&self) -> impl Iterator<Item = &SkipReason> {
        self.skip
            .iter()
            .map(|skip| &skip.reason)
            .chain(self.operation_skips.iter().map(|skip| &skip.reason))
    }
}

/// Turns oplog entries, in oplog order, into [`Publication`]s.
///
/// One per tail: it carries the transactions whose chunks are still open.
#[derive(Debug, Default)]
pub struct Transformer {
    settings: TransformSettings,
    transactions: TransactionAssembler,
    /// Position of the last entry read (whatever became of it).
    last_position: Option<OplogPosition>,
    /// The last `resume_position` handed out, repeated for unreadable entries.
    last_resume: Option<OplogPosition>,
}

impl Transformer {
    /// A transformer with no open transactions.
    pub fn new(settings: TransformSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &TransformSettings {
        &self.settings
    }

    /// Transactions currently held back (prepared or partial).
    pub fn open_transactions(&self) -> usize {
        self.transactions.open_transactions()
    }

    /// Forgets open transactions and positions: call it when the tail
    /// restarts from an earlier checkpoint, so chunks are read afresh.
    pub fn reset(&mut self) {
        self.transactions.clear();
        self.last_position = None;
    }

    /// Transforms one entry. Never panics on bad input: anything unreadable
    /// becomes a [`Skip`] with its reason.
    pub fn apply(&mut self, raw: &RawDocument) -> EntryOutcome {
        let mut outcome = EntryOutcome::default();
        match OplogEntry::parse(raw)
            .and_then(|entry| entry.position().map(|position| (entry, position)))
        {
            Ok((entry, position)) => {
                outcome.position = Some(position);
                outcome.wall_ms = entry.wall_ms();
                let previous = self.last_position.replace(position);
                if let Err(reason) = self.dispatch(&entry, position, previous, &mut outcome) {
                    outcome.skip = Some(Skip { reason });
                }
                self.last_resume = match self.transactions.resume_hold() {
                    ResumeHold::Free => Some(position),
                    ResumeHold::At(hold) => Some(hold),
                    ResumeHold::Unknown => None,
                };
            }
            Err(error) => {
                outcome.skip = Some(Skip {
                    reason: SkipReason::Malformed(error),
                })
            }
        }
        outcome.resume_position = self.last_resume;
        outcome
    }

    fn dispatch(
        &mut self,
        entry: &OplogEntry<'_>,
        position: OplogPosition,
        previous: Option<OplogPosition>,
        outcome: &mut EntryOutcome,
    ) -> Result<(), SkipReason> {
        match entry.op()? {
            OpKind::NoOp => Err(SkipReason::NoOp),
            OpKind::Other(op) => Err(SkipReason::UnsupportedOp(op.to_owned())),
            OpKind::Command => self.command(entry, position, previous, outcome),
            kind => {
                let (publication, unprocessable) =
                    self.operation(entry, kind, position, entry.wall_ms(), 0)?;
                outcome.unprocessable_fields += unprocessable;
                outcome.publications.push(publication);
                Ok(())
            }
        }
    }

    fn command(
        &mut self,
        entry: &OplogEntry<'_>,
        position: OplogPosition,
        previous: Option<OplogPosition>,
        outcome: &mut EntryOutcome,
    ) -> Result<(), SkipReason> {
        let name = entry.command_name().unwrap_or_default();
        if entry.namespace()? != "admin.$cmd" {
            return Err(SkipReason::Command(name.to_owned()));
        }
        let current_ops = entry.apply_ops()?;
        let step = match (current_ops, name) {
            (Some(_), _) => self
                .transactions
                .on_apply_ops(entry, entry.o()?, position, previous),
            (None, "commitTransaction") => self.transactions.on_commit(entry),
            (None, "abortTransaction") => self.transactions.on_abort(entry),
            (None, _) => return Err(SkipReason::Command(name.to_owned())),
        };
        match step {
            TransactionStep::Nothing(reason) => return Err(reason),
            TransactionStep::PublishCurrent => {
                if let Some(ops) = current_ops {
                    self.expand(ops, position, entry.wall_ms(), outcome)?;
                }
            }
            TransactionStep::Release {
                buffered,
                include_current,
            } => {
                for chunk in &buffered {
                    self.expand(chunk.apply_ops()?, chunk.origin, chunk.wall_ms, outcome)?;
                }
                if let (true, Some(ops)) = (include_current, current_ops) {
                    self.expand(ops, position, entry.wall_ms(), outcome)?;
                }
            }
        }
        if outcome.publications.is_empty() {
            Err(SkipReason::NothingInTransaction)
        } else {
            Ok(())
        }
    }

    /// Publishes the operations of one `applyOps` chunk.
    fn expand(
        &self,
        ops: &RawArray,
        origin: OplogPosition,
        wall_ms: Option<i64>,
        outcome: &mut EntryOutcome,
    ) -> Result<(), SkipReason> {
        for_each_operation(ops, &mut |inner: InnerOperation<'_>| {
            let result = inner.entry.map_err(SkipReason::from).and_then(|entry| {
                match (inner.tx_index, entry.op()) {
                    (Some(tx_index), Ok(kind)) => {
                        self.operation(&entry, kind, origin, wall_ms, tx_index)
                    }
                    (_, Ok(OpKind::NoOp)) => Err(SkipReason::NoOp),
                    (_, Ok(OpKind::Other(op))) => Err(SkipReason::UnsupportedOp(op.to_owned())),
                    (_, Ok(_)) => Err(SkipReason::Command(
                        entry.command_name().unwrap_or_default().to_owned(),
                    )),
                    (_, Err(error)) => Err(SkipReason::Malformed(error)),
                }
            });
            match result {
                Ok((publication, unprocessable)) => {
                    outcome.unprocessable_fields += unprocessable;
                    outcome.publications.push(publication);
                }
                Err(reason) => outcome.operation_skips.push(OperationSkip {
                    origin,
                    tx_index: inner.tx_index,
                    reason,
                }),
            }
        })?;
        Ok(())
    }

    /// One insert, update or delete (top-level or inside a transaction).
    fn operation(
        &self,
        entry: &OplogEntry<'_>,
        kind: OpKind<'_>,
        origin: OplogPosition,
        wall_ms: Option<i64>,
        tx_index: u32,
    ) -> Result<(Publication, u32), SkipReason> {
        let event = match kind {
            OpKind::Insert => EventKind::Insert,
            OpKind::Update => EventKind::Update,
            OpKind::Delete => EventKind::Remove,
            _ => {
                return Err(SkipReason::Command(
                    entry.command_name().unwrap_or_default().to_owned(),
                ));
            }
        };
        let namespace = entry.namespace()?;
        let (database, collection) = split_namespace(namespace)
            .filter(|(_, collection)| !collection.is_empty())
            .ok_or_else(|| TransformError::NamespaceWithoutCollection(namespace.to_owned()))?;
        if database == "config" || database == "local" {
            return Err(SkipReason::InternalDatabase);
        }
        if collection.starts_with("system.") {
            return Err(SkipReason::SystemCollection);
        }
        let id = entry.document_id(kind)?;
        let message = build_message(
            event,
            id,
            entry.o()?,
            self.settings.extract_subfield_changes,
        )?;
        let mut channels = Vec::with_capacity(2);
        channels.push(namespace.to_owned());
        channels.extend(document_channel(
            namespace,
            id,
            self.settings.id_channel_style,
        ));
        let publication = Publication {
            channels,
            message: message.text,
            origin,
            tx_index,
            wall_ms,
            namespace: namespace.to_owned(),
        };
        Ok((publication, message.unprocessable_fields))
    }
}

#[cfg(test)]
mod tests;
