//! Transactions: `applyOps` expansion and multi-entry assembly.
//!
//! A committed transaction reaches the oplog as one `admin.$cmd` command
//! whose `o.applyOps` lists the operations (nested `applyOps` included).
//! Two shapes span several entries:
//! - a large transaction is split into `partialTxn: true` chunks (linked by
//!   `prevOpTime`) and is committed by its last chunk, the one without
//!   `partialTxn`;
//! - a prepared transaction (sharded two-phase commit) ends with a
//!   `prepare: true` chunk and takes effect only when a `commitTransaction`
//!   entry with the same `lsid` + `txnNumber` follows; `abortTransaction`
//!   discards it.
//!
//! oplogtoredis publishes every chunk as it reads it, so it announces prepared
//! transactions that may still abort. [`TransactionAssembler`] holds chunks
//! back until the transaction commits, but keeps oplogtoredis's identity for
//! each operation (the `ts` of its own chunk and its index in that chunk) so
//! that both can share dedup keys during a migration.

use std::collections::HashMap;

use bson::{RawArray, RawBsonRef, RawDocument, RawDocumentBuf};

use super::SkipReason;
use super::entry::{OpKind, OplogEntry, SessionKey, TransformError, wrong_type};
use crate::position::OplogPosition;

/// Nested `applyOps` deeper than this is treated as malformed.
const MAX_APPLY_OPS_DEPTH: usize = 16;

/// One operation found while expanding an `applyOps` list.
#[derive(Debug)]
pub struct InnerOperation<'a> {
    /// oplogtoredis's `txIdx`: the depth-first index among the CRUD
    /// operations (`i`, `u`, `d`) of the chunk. `None` for an operation that
    /// is not CRUD (no-ops, commands), which takes no index.
    pub tx_index: Option<u32>,
    /// The operation, or why it cannot be read.
    pub entry: Result<OplogEntry<'a>, TransformError>,
}

/// Calls `visit` for every operation in `ops`, depth-first through nested
/// `applyOps`, numbering CRUD operations from 0 the way oplogtoredis does.
pub fn for_each_operation<'a>(
    ops: &'a RawArray,
    visit: &mut impl FnMut(InnerOperation<'a>),
) -> Result<(), TransformError> {
    let mut next_index = 0;
    expand(ops, 0, &mut next_index, visit)
}

fn expand<'a>(
    ops: &'a RawArray,
    depth: usize,
    next_index: &mut u32,
    visit: &mut impl FnMut(InnerOperation<'a>),
) -> Result<(), TransformError> {
    if depth > MAX_APPLY_OPS_DEPTH {
        return Err(TransformError::TooDeep(MAX_APPLY_OPS_DEPTH));
    }
    for op in ops {
        let parsed = match op? {
            RawBsonRef::Document(doc) => OplogEntry::parse(doc),
            other => Err(wrong_type("o.applyOps[]", "Document", other)),
        };
        let entry = match parsed {
            Ok(entry) => entry,
            Err(error) => {
                visit(InnerOperation {
                    tx_index: None,
                    entry: Err(error),
                });
                continue;
            }
        };
        match entry.op() {
            Ok(OpKind::Insert | OpKind::Update | OpKind::Delete) => {
                visit(InnerOperation {
                    tx_index: Some(*next_index),
                    entry: Ok(entry),
                });
                *next_index += 1;
            }
            Ok(OpKind::Command) if entry.namespace() == Ok("admin.$cmd") => match entry.apply_ops()
            {
                Ok(Some(nested)) => expand(nested, depth + 1, next_index, visit)?,
                Ok(None) => visit(InnerOperation {
                    tx_index: None,
                    entry: Ok(entry),
                }),
                Err(error) => visit(InnerOperation {
                    tx_index: None,
                    entry: Err(error),
                }),
            },
            _ => visit(InnerOperation {
                tx_index: None,
                entry: Ok(entry),
            }),
        }
    }
    Ok(())
}

/// A chunk held back until its transaction commits.
#[derive(Debug, Clone)]
pub struct BufferedChunk {
    /// The chunk's `o` (holding `applyOps`), copied out of the cursor batch.
    o: RawDocumentBuf,
    /// The chunk's own `ts`: the dedup identity of its operations.
    pub origin: OplogPosition,
    /// The chunk's `wall`.
    pub wall_ms: Option<i64>,
}

impl BufferedChunk {
    /// The chunk's operations.
    pub fn apply_ops(&self) -> Result<&RawArray, TransformError> {
        match self.o.get("applyOps")? {
            Some(RawBsonRef::Array(ops)) => Ok(ops),
            Some(other) => Err(wrong_type("o.applyOps", "Array", other)),
            None => Err(TransformError::MissingField("o.applyOps")),
        }
    }
}

/// What to do with a transaction entry.
#[derive(Debug)]
pub enum TransactionStep {
    /// The entry's own `applyOps` is complete: publish it now.
    PublishCurrent,
    /// The transaction committed: publish these chunks in order, then the
    /// current entry's own `applyOps` when `include_current` is set.
    Release {
        /// Earlier chunks, oldest first.
        buffered: Vec<BufferedChunk>,
        /// Whether the current entry is itself the final chunk.
        include_current: bool,
    },
    /// Nothing to publish for this entry (held back, discarded or unknown).
    Nothing(SkipReason),
}

/// Where a restarted tail must resume so that no open transaction is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeHold {
    /// No transaction is open: any position read so far is safe.
    Free,
    /// Resume after this position (the entry read before the oldest open
    /// transaction's first chunk).
    At(OplogPosition),
    /// A transaction is open whose first chunk was the first entry seen, so
    /// no safe position is known yet.
    Unknown,
}

#[derive(Debug)]
struct OpenTransaction {
    chunks: Vec<BufferedChunk>,
    /// Position of the entry read just before the first chunk.
    hold: Option<OplogPosition>,
}

/// Buffers multi-entry transactions until they commit or abort.
#[derive(Debug, Default)]
pub struct TransactionAssembler {
    open: HashMap<SessionKey, OpenTransaction>,
}

impl TransactionAssembler {
    /// Decides what to do with an `applyOps` entry read at `position`.
    /// `previous` is the position of the entry read before it, remembered as
    /// the resume hold if this entry opens a transaction.
    pub fn on_apply_ops(
        &mut self,
        entry: &OplogEntry<'_>,
        o: &RawDocument,
        position: OplogPosition,
        previous: Option<OplogPosition>,
    ) -> TransactionStep {
        let partial = entry.is_partial_transaction();
        let prepare = entry.is_prepare();
        // Without lsid + txnNumber chunks cannot be linked: publish them as
        // read (oplogtoredis's behaviour) rather than hold them forever.
        // 8.0 batched writes (multiOpType: 1) land here or in the final-chunk
        // branch below: either way they are published at once.
        let Some(key) = entry.session_key() else {
            return TransactionStep::PublishCurrent;
        };
        if !partial && !prepare {
            return match self.open.remove(&key) {
                Some(open) => TransactionStep::Release {
                    buffered: open.chunks,
                    include_current: true,
                },
                None => TransactionStep::PublishCurrent,
            };
        }
        let open = self.open.entry(key).or_insert_with(|| OpenTransaction {
            chunks: Vec::new(),
            hold: previous,
        });
        if open
            .chunks
            .last()
            .is_some_and(|chunk| chunk.origin >= position)
        {
            // Re-read after a tail restart from the hold: already buffered.
            return TransactionStep::Nothing(SkipReason::DuplicateChunk);
        }
        open.chunks.push(BufferedChunk {
            o: o.to_owned(),
            origin: position,
            wall_ms: entry.wall_ms(),
        });
        TransactionStep::Nothing(if prepare {
            SkipReason::PreparedTransactionBuffered
        } else {
            SkipReason::TransactionBuffered
        })
    }

    /// A `commitTransaction` entry: releases the matching prepared transaction.
    pub fn on_commit(&mut self, entry: &OplogEntry<'_>) -> TransactionStep {
        match entry.session_key().and_then(|key| self.open.remove(&key)) {
            Some(open) => TransactionStep::Release {
                buffered: open.chunks,
                include_current: false,
            },
            None => TransactionStep::Nothing(SkipReason::UnknownTransaction),
        }
    }

    /// An `abortTransaction` entry: the matching transaction never happened.
    pub fn on_abort(&mut self, entry: &OplogEntry<'_>) -> TransactionStep {
        if let Some(key) = entry.session_key() {
            self.open.remove(&key);
        }
        TransactionStep::Nothing(SkipReason::AbortedTransaction)
    }

    /// How far a restarted tail may skip without cutting an open transaction.
    pub fn resume_hold(&self) -> ResumeHold {
        let mut oldest: Option<OplogPosition> = None;
        for open in self.open.values() {
            match open.hold {
                None => return ResumeHold::Unknown,
                Some(hold) => oldest = Some(oldest.map_or(hold, |current| current.min(hold))),
            }
        }
        oldest.map_or(ResumeHold::Free, ResumeHold::At)
    }

    /// Transactions currently held back.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }

    /// Operations currently held back, over all open transactions.
    pub fn buffered_chunks(&self) -> usize {
        self.open.values().map(|open| open.chunks.len()).sum()
    }

    /// Forgets every open transaction (the tail restarts from an earlier
    /// checkpoint and will read their chunks again).
    pub fn clear(&mut self) {
        self.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn indices(o: &RawDocumentBuf) -> Vec<(Option<u32>, String)> {
        let ops = o.get_array("applyOps").unwrap();
        let mut seen = Vec::new();
        for_each_operation(ops, &mut |inner: InnerOperation<'_>| {
            let label = match inner.entry {
                Ok(entry) => format!("{:?}", entry.op().unwrap()),
                Err(error) => error.to_string(),
            };
            seen.push((inner.tx_index, label));
        })
        .unwrap();
        seen
    }

    #[test]
    fn numbers_crud_operations_depth_first() {
        let o = rawdoc! { "applyOps": [
            { "op": "i", "ns": "a.b", "o": { "_id": 1 } },
            { "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [
                { "op": "u", "ns": "a.b", "o2": { "_id": 1 }, "o": { "$set": { "x": 1 } } },
                { "op": "n", "ns": "", "o": { "msg": "x" } },
                { "op": "d", "ns": "a.b", "o": { "_id": 1 } },
            ] } },
            { "op": "c", "ns": "a.$cmd", "o": { "create": "b" } },
            5,
            { "op": "i", "ns": "a.b", "o": { "_id": 2 } },
        ] };
        let expected = vec![
            (Some(0), "Insert".to_owned()),
            (Some(1), "Update".to_owned()),
            (None, "NoOp".to_owned()),
            (Some(2), "Delete".to_owned()),
            (None, "Command".to_owned()),
            (
                None,
                "field o.applyOps[] is Int32, expected Document".to_owned(),
            ),
            (Some(3), "Insert".to_owned()),
        ];
        assert_eq!(indices(&o), expected);
    }

    #[test]
    fn refuses_runaway_nesting() {
        let mut o = rawdoc! { "applyOps": [] };
        for _ in 0..(MAX_APPLY_OPS_DEPTH + 2) {
            o = rawdoc! { "applyOps": [ { "op": "c", "ns": "admin.$cmd", "o": o } ] };
        }
        let ops = o.get_array("applyOps").unwrap();
        let error = for_each_operation(ops, &mut |_| {}).unwrap_err();
        assert_eq!(error, TransformError::TooDeep(MAX_APPLY_OPS_DEPTH));
    }
}
