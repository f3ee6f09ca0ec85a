//! Cluster mode (`OTR_CLUSTER=true`): this instance publishes only the
//! shards whose Redis lease it holds, every publish fenced by that lease.
//!
//! The leases, ranking and fenced script live in the Mongo-free `cluster`
//! crate; this module is the pipeline side: it follows the coordinator's
//! [`::cluster::Assignment`], routes each publication to its shard, takes a
//! shard over from its checkpoint (asking the source to read again when the
//! checkpoint is behind the stream, or publishing from the standby window
//! that kept the shard's recent changes), and hands shards back cleanly.

mod connect;
mod shard_call;
mod shard_state;
mod stage;
mod standby_window;

pub use connect::{ClusterSettings, ShardingError, join_cluster};
pub use stage::{ShardedPublishing, ShardedStage};
