//! Namespace -> shard, and the shard count every instance must agree on.
//!
//! Leadership is per shard rather than per namespace so the number of leases
//! stays fixed and small however many collections exist, and new collections
//! need no assignment step: their shard follows from their name. Per-document
//! order only needs every document of a collection to go through one leader,
//! so the shard key is `db.collection`.
//!
//! The hash is XXH3-64 (seed 0), whose output is fixed by its published
//! specification, so every instance and every future build maps a namespace
//! to the same shard. std's `DefaultHasher` is explicitly not stable across
//! Rust versions, so a rolling upgrade could otherwise put a collection under
//! two leaders.

use std::fmt;

use redis::aio::ConnectionLike;
use xxhash_rust::xxh3::xxh3_64;

use crate::error::{ClusterError, Result};
use crate::keys::ClusterKeys;

/// One shard, `0..shards`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How the namespace space is cut: `shards` shards by a stable hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardMap {
    shards: u16,
}

impl Default for ShardMap {
    fn default() -> Self {
        Self {
            shards: Self::DEFAULT_SHARDS,
        }
    }
}

impl ShardMap {
    /// 64 shards: enough to spread over a few dozen instances, few enough
    /// that renewing every lease stays cheap.
    pub const DEFAULT_SHARDS: u16 = 64;

    /// A map of `shards` shards; zero is refused since nothing could lead.
    pub fn new(shards: u16) -> Result<Self> {
        if shards == 0 {
            return Err(ClusterError::Settings(
                "the shard count must be at least 1".to_string(),
            ));
        }
        Ok(Self { shards })
    }

    /// The number of shards.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Every shard, in order.
    pub fn all(&self) -> impl Iterator<Item = ShardId> + use<> {
        (0..self.shards).map(ShardId)
    }

    /// The shard of the namespace `db.collection`.
    pub fn shard_of(&self, namespace: &str) -> ShardId {
        ShardId((xxh3_64(namespace.as_bytes()) % u64::from(self.shards)) as u16)
    }

    /// Stores `shards` as the cluster's shard count if none is stored yet,
    /// and refuses with [`ClusterError::ShardCountMismatch`] when Redis holds
    /// another value. The stored value never changes afterwards, so a plain
    /// `SET NX` followed by `GET` cannot race into disagreement.
    pub async fn agree(
        conn: &mut impl ConnectionLike,
        keys: &ClusterKeys,
        shards: u16,
    ) -> Result<Self> {
        let map = Self::new(shards)?;
        let key = keys.shard_count();
        let context = || format!("agreeing on the shard count ({key})");
        let (stored,): (Option<String>,) = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(shards)
            .arg("NX")
            .ignore()
            .get(&key)
            .query_async(conn)
            .await
            .map_err(|e| ClusterError::redis(context(), e))?;
        let stored = stored.ok_or_else(|| ClusterError::reply(context(), "the key vanished"))?;
        if stored.parse::<u16>() == Ok(shards) {
            Ok(map)
        } else {
            Err(ClusterError::ShardCountMismatch {
                configured: shards,
                stored,
                key,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_namespaces_map_to_fixed_shards() {
        // Pinned values: if a dependency bump changed the hash, a rolling
        // upgrade would move collections between leaders. The empty input's
        // shard follows from the specification's XXH3-64("") below.
        let map = ShardMap::default();
        let cases = [("meteor.users", 12), ("app.tasks", 52), ("", 2)];
        for (namespace, expected) in cases {
            assert_eq!(map.shard_of(namespace), ShardId(expected), "{namespace}");
        }
        // The XXH3-64 of the empty input is fixed by the specification.
        assert_eq!(xxh3_64(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn every_namespace_lands_in_range() {
        for shards in [1u16, 2, 7, 64, 1024] {
            let map = ShardMap::new(shards).unwrap();
            for i in 0..500 {
                let shard = map.shard_of(&format!("db{}.coll{}", i % 7, i));
                assert!(shard.0 < shards);
            }
        }
    }

    #[test]
    fn namespaces_spread_over_all_shards() {
        let map = ShardMap::default();
        let mut counts = [0u32; 64];
        for i in 0..6400 {
            counts[map.shard_of(&format!("app.collection_{i}")).0 as usize] += 1;
        }
        // 100 expected per shard; a sound hash stays well within 50..=150.
        for (shard, count) in counts.iter().enumerate() {
            assert!((50..=150).contains(count), "shard {shard}: {count}");
        }
    }

    #[test]
    fn zero_shards_is_refused() {
        assert!(ShardMap::new(0).is_err());
        assert_eq!(ShardMap::new(3).unwrap().all().count(), 3);
    }
}
