//! Publish: delivers [`Publication`]s to every configured Redis, exactly once
//! per change and in order, and records how far that got.
//!
//! - [`target`]: one Redis destination from its URL (plain, TLS, ACL, Sentinel).
//! - [`dedup_script`]: the oplogtoredis-compatible dedup-and-publish Lua script.
//! - [`call_queue`]: cutting queued batches into script calls (pure).
//! - [`publisher`]: the task that pipelines calls, retries and fans out.
//! - [`position_store`]: the `lastProcessedEntry` resume keys.
//!
//! The pipeline feeds a bounded channel of [`PublishBatch`]es into
//! [`Publisher::run`]; the source reads where to resume from
//! [`Publisher::position_store`].

pub mod call_queue;
pub mod dedup_script;
pub mod error;
pub mod position_store;
pub mod publisher;
pub mod settings;
pub mod target;

pub use error::PublishError;
pub use position_store::{PositionStore, ResumeReadPolicy};
pub use publisher::Publisher;
pub use settings::PublisherSettings;
pub use target::redact_url;

use crate::position::OplogPosition;
use crate::transform::Publication;

/// What the tail hands to the publisher: publications, in oplog order, and how
/// far the tail has got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishBatch {
    /// Publications to deliver, in order (may be empty).
    pub publications: Vec<Publication>,
    /// The position the tail may resume after once this batch and every
    /// earlier one are delivered. Set even without publications (after skipped
    /// entries) so the resume position keeps moving on quiet namespaces.
    pub resume_position: Option<OplogPosition>,
}
