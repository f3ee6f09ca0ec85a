//! Sources: where changes come from.
//!
//! A source reads MongoDB and hands raw records to the transform stage over a
//! channel; it never interprets them beyond what it needs to keep its own
//! position. Today there is the oplog tailer ([`oplog`]); a change-stream
//! source is a new file here plus a new [`SourceRecord`] variant.

pub mod oplog;
pub mod reachability;
pub mod start;

use bson::RawDocumentBuf;

/// One record read from MongoDB, still in raw BSON so nothing is decoded twice.
#[derive(Debug, Clone)]
pub enum SourceRecord {
    /// A `local.oplog.rs` document.
    OplogEntry(RawDocumentBuf),
    /// The records that follow come from just after this position: sent when
    /// the tail first positions itself and whenever it goes back to read
    /// again (a shard taking over from an older checkpoint), in which case
    /// they may repeat records already seen.
    Rewound(crate::position::OplogPosition),
    /// The records that follow were read with this list of namespaces left
    /// out by the server (sent whenever a (re)query applies another list
    /// than the previous one). A cluster standby needs to know exactly from
    /// where its window of a shard is complete.
    Filtered(oplog::ExcludedNamespaces),
}

/// Why a source stopped for good (transient failures are retried inside).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The MongoDB URL or client options could not be used.
    #[error("cannot create the MongoDB client: {0}")]
    Client(#[source] mongodb::error::Error),
    /// The transform stage went away, so there is nobody to read for.
    #[error("the pipeline downstream of the source has stopped")]
    DownstreamClosed,
}
