//! The crate's one error type.
//!
//! Callers need to tell three situations apart, because each calls for a
//! different reaction: a configuration that must stop the instance (another
//! shard count than the cluster's), a fenced publish (this instance lost the
//! shard: stop its loop at once, never retry), and a Redis failure (retry or
//! demote after the lease timing says so).

use std::time::Duration;

/// Everything that can go wrong in cluster coordination.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configured shard count differs from the one the cluster stored in
    /// Redis. Shards name checkpoints, so two counts would split the same
    /// namespace between two leaders: the instance must refuse to start.
    #[error(
        "OTR_CLUSTER_SHARDS={configured} but the cluster in Redis uses {stored} shards \
         (key {key}); start this instance with OTR_CLUSTER_SHARDS={stored}, or stop the \
         whole fleet and migrate the shard checkpoints to change it"
    )]
    ShardCountMismatch {
        /// What this instance was started with.
        configured: u16,
        /// What Redis holds (verbatim, it may be garbage).
        stored: String,
        /// The Redis key holding it.
        key: String,
    },

    /// A setting is out of range or inconsistent with another.
    #[error("invalid cluster setting: {0}")]
    Settings(String),

    /// The fenced publish found that the shard's lease no longer holds the
    /// caller's token: another instance leads now (or nobody does). Nothing
    /// was published and the checkpoint did not move. Stop publishing this
    /// shard synchronously; retrying cannot succeed.
    #[error("shard {shard} is fenced: its lease no longer holds token {token}")]
    Fenced {
        /// The shard whose publish was refused.
        shard: u16,
        /// The caller's stale token.
        token: String,
    },

    /// Redis answered with an error or the connection failed.
    #[error("Redis failed while {context}: {source}")]
    Redis {
        /// What was being done, for the operator.
        context: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },

    /// Redis answered something this crate did not write (a value edited by
    /// hand, another program using the same keys).
    #[error("unexpected Redis reply while {context}: {detail}")]
    Reply {
        /// What was being done.
        context: String,
        /// What was wrong with the reply.
        detail: String,
    },

    /// A call did not complete in time.
    #[error("Redis did not answer within {timeout:?} while {context}")]
    Timeout {
        /// What was being done.
        context: String,
        /// The bound that elapsed.
        timeout: Duration,
    },
}

/// The error of a fenced publish: [`ClusterError::Fenced`] when the lease is
/// lost, any other variant for transport trouble. An alias rather than a
/// second type so the crate keeps one error type.
pub type FenceError = ClusterError;

impl ClusterError {
    /// True when a publish was refused because the lease moved on.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ClusterError::Fenced { .. })
    }

    /// Wraps a client error with what was being done.
    pub(crate) fn redis(context: impl Into<String>, source: redis::RedisError) -> Self {
        ClusterError::Redis {
            context: context.into(),
            source,
        }
    }

    /// An unexpected reply.
    pub(crate) fn reply(context: impl Into<String>, detail: impl Into<String>) -> Self {
        ClusterError::Reply {
            context: context.into(),
            detail: detail.into(),
        }
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
