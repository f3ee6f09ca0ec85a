//! Transform: oplog entry -> Redis publications, the way redis-oplog wants them.
//!
//! Everything here is pure: no I/O, no clocks, no globals. A [`Transformer`]
//! keeps only the state that oplog semantics force on it (transactions whose
//! chunks arrive across several entries), so the same code serves the live
//! pipeline, `redtail explain` and the table tests over real fixtures.

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
        self.namespace.split_once('.').map_or(self.namespace.as_str(), |(db, _)| db)
    }
}
