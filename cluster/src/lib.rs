//! Cluster coordination for redtail: which instance publishes which namespaces.
//!
//! Every instance relays the same oplog, so without coordination every change
//! is published once per replica (oplogtoredis's model, absorbed by dedup at a
//! cost that grows with the fleet). This crate cuts the namespace space into
//! shards, lets exactly one instance lead each shard through a Redis lease,
//! and fences every publish with that lease so a deposed leader cannot
//! publish late. It knows nothing about MongoDB or redtail's types: the
//! pipeline maps its publications onto [`PublishItem`] and follows the
//! [`Assignment`] a [`Coordinator`] publishes.
//!
//! One concept per module:
//! - [`shard_map`]: namespace -> shard, and the cluster-wide shard count;
//! - [`keys`]: every Redis key and channel name;
//! - [`member_id`] and [`membership`]: who is alive;
//! - [`rendezvous`]: who *should* lead each shard (a preference only);
//! - [`lease`]: who *does* lead each shard (the truth);
//! - [`fenced_publish`]: publishing only while holding the lease;
//! - [`checkpoint`]: where each shard's publishing got to;
//! - [`coordinator`]: the state machine tying them together;
//! - [`status`]: the cluster as an operator's `/status` view shows it.

#![warn(missing_docs)]

pub mod checkpoint;
pub mod coordinator;
pub mod error;
pub mod fenced_publish;
pub mod keys;
pub mod lease;
pub mod member_id;
pub mod membership;
pub mod rendezvous;
pub mod shard_map;
pub mod status;

pub use checkpoint::{
    decode_checkpoint, encode_checkpoint, initialize_checkpoint, read_checkpoint, read_checkpoints,
};
pub use coordinator::{Assignment, Coordinator, CoordinatorSettings, ShardReleaser};
pub use error::{ClusterError, FenceError};
pub use fenced_publish::{FencedPublisher, Outcome, PublishItem};
pub use keys::{ClusterKeys, ShardKeys};
pub use lease::{LeaseTiming, LeaseToken, ShardLease};
pub use member_id::MemberId;
pub use membership::{Membership, live_members};
pub use rendezvous::{rank, rank_of};
pub use shard_map::{ShardId, ShardMap};
pub use status::{ShardStatus, cluster_status};
