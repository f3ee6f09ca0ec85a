//! Every Redis key and channel name the cluster uses, in one place.
//!
//! Why a module of its own: the names are a contract between instances of
//! different versions and with operators' tooling (ACL key patterns, alerts),
//! so they must be spelled once and tested as a table.
//!
//! Layout, for a prefix `p` (oplogtoredis's `OTR_REDIS_METADATA_PREFIX`,
//! default `oplogtoredis::`):
//! - per shard `N`, all under the Redis Cluster hash tag `{psN}` so one Lua
//!   script may touch them together: `p{psN}:lease` (the token),
//!   `p{psN}:holder` (the member id, same TTL), `p{psN}:epoch` (the `INCR`
//!   counter), `p{psN}:checkpoint` (20-digit zero-padded position);
//! - cluster-wide, under `{pcluster}`: `p{pcluster}:shards` (the shard count)
//!   and `p{pcluster}:members` (the membership sorted set);
//! - channels (not keys, so untagged): `pcluster:released` (payload: the shard
//!   number) and `pcluster:membership` (`joined:<id>` / `left:<id>`);
//! - dedup markers keep oplogtoredis's exact name `pprocessed::<ts>::<txIdx>`
//!   so a mixed fleet still deduplicates during a migration.
//!
//! Every key starts with the prefix, so an ACL pattern `~p*` covers them. The
//! prefix is repeated inside the tag so two deployments sharing a Redis
//! Cluster spread over different slots.

use crate::error::{ClusterError, Result};
use crate::member_id::MemberId;
use crate::shard_map::ShardId;

/// The names of one deployment's keys, derived from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    prefix: String,
}

/// The keys of one shard; all share one hash tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeys {
    /// The lease: value `<epoch>:<uuid>`, with a TTL.
    pub lease: String,
    /// Who holds the lease (a [`MemberId`]), same TTL as the lease, for the
    /// status view; never used for fencing.
    pub holder: String,
    /// The acquisition counter (`INCR`), never expires.
    pub epoch: String,
    /// The shard's checkpoint: 20-digit zero-padded `(T<<32)|I`.
    pub checkpoint: String,
}

impl ClusterKeys {
    /// Keys under `prefix`. Braces are refused: they would open a hash tag of
    /// their own and scatter a shard's keys over several Redis Cluster slots.
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.contains(['{', '}']) {
            return Err(ClusterError::Settings(format!(
                "the Redis key prefix {prefix:?} must not contain '{{' or '}}' \
                 (they would break the per-shard hash tags)"
            )));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of `shard`.
    pub fn shard(&self, shard: ShardId) -> ShardKeys {
        let p = &self.prefix;
        let base = format!("{p}{{{p}s{}}}", shard.0);
        ShardKeys {
            lease: format!("{base}:lease"),
            holder: format!("{base}:holder"),
            epoch: format!("{base}:epoch"),
            checkpoint: format!("{base}:checkpoint"),
        }
    }

    fn cluster_key(&self, name: &str) -> String {
        let p = &self.prefix;
        format!("{p}{{{p}cluster}}:{name}")
    }

    /// The cluster's shard count (set once, never changed).
    pub fn shard_count(&self) -> String {
        self.cluster_key("shards")
    }

    /// The membership sorted set: member id scored by expiry (ms, Redis clock).
    pub fn members(&self) -> String {
        self.cluster_key("members")
    }

    /// The channel a released lease is announced on (payload: shard number).
    pub fn released_channel(&self) -> String {
        format!("{}cluster:released", self.prefix)
    }

    /// The channel joins and leaves are announced on.
    pub fn membership_channel(&self) -> String {
        format!("{}cluster:membership", self.prefix)
    }

    /// oplogtoredis's dedup marker for the change at `position` (`(T<<32)|I`)
    /// and transaction index `tx_index`, byte-identical to its own.
    pub fn dedup_key(&self, position: u64, tx_index: u32) -> String {
        format!("{}processed::{position}::{tx_index}", self.prefix)
    }
}

/// A membership announcement, as carried on [`ClusterKeys::membership_channel`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member sent its first heartbeat.
    Joined(MemberId),
    /// A member left gracefully.
    Left(MemberId),
}

impl MembershipEvent {
    /// The channel payload.
    pub fn encode(&self) -> String {
        match self {
            MembershipEvent::Joined(id) => format!("joined:{id}"),
            MembershipEvent::Left(id) => format!("left:{id}"),
        }
    }

    /// Reads a payload; `None` for anything this version does not know.
    pub fn decode(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = MemberId::from_stored(id)?;
        match kind {
            "joined" => Some(MembershipEvent::Joined(id)),
            "left" => Some(MembershipEvent::Left(id)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis Cluster hash tag of a key: the first `{...}` with content.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open..].find('}').expect("closed") + open;
        &key[open + 1..close]
    }

    #[test]
    fn shard_keys_table() {
        let cases = [
            (
                "oplogtoredis::",
                17,
                "oplogtoredis::{oplogtoredis::s17}:lease",
                "oplogtoredis::{oplogtoredis::s17}:holder",
                "oplogtoredis::{oplogtoredis::s17}:epoch",
                "oplogtoredis::{oplogtoredis::s17}:checkpoint",
            ),
            (
                "",
                0,
                "{s0}:lease",
                "{s0}:holder",
                "{s0}:epoch",
                "{s0}:checkpoint",
            ),
            (
                "t.",
                63,
                "t.{t.s63}:lease",
                "t.{t.s63}:holder",
                "t.{t.s63}:epoch",
                "t.{t.s63}:checkpoint",
            ),
        ];
        for (prefix, shard, lease, holder, epoch, checkpoint) in cases {
            let keys = ClusterKeys::new(prefix).unwrap().shard(ShardId(shard));
            assert_eq!(keys.lease, lease);
            assert_eq!(keys.holder, holder);
            assert_eq!(keys.epoch, epoch);
            assert_eq!(keys.checkpoint, checkpoint);
        }
    }

    #[test]
    fn a_shards_keys_share_one_tag_and_shards_differ() {
        let keys = ClusterKeys::new("oplogtoredis::").unwrap();
        let a = keys.shard(ShardId(1));
        let b = keys.shard(ShardId(11));
        let tag = hash_tag(&a.lease);
        for key in [&a.holder, &a.epoch, &a.checkpoint] {
            assert_eq!(hash_tag(key), tag);
        }
        assert_ne!(hash_tag(&b.lease), tag);
        assert_eq!(hash_tag(&keys.shard_count()), hash_tag(&keys.members()));
    }

    #[test]
    fn cluster_keys_table() {
        let keys = ClusterKeys::new("oplogtoredis::").unwrap();
        let cases = [
            (
                keys.shard_count(),
                "oplogtoredis::{oplogtoredis::cluster}:shards",
            ),
            (
                keys.members(),
                "oplogtoredis::{oplogtoredis::cluster}:members",
            ),
            (keys.released_channel(), "oplogtoredis::cluster:released"),
            (
                keys.membership_channel(),
                "oplogtoredis::cluster:membership",
            ),
            (
                keys.dedup_key(7301444403200000001, 0),
                "oplogtoredis::processed::7301444403200000001::0",
            ),
            (
                keys.dedup_key(u64::MAX, 3),
                "oplogtoredis::processed::18446744073709551615::3",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn every_key_starts_with_the_prefix() {
        let keys = ClusterKeys::new("acl.scope:").unwrap();
        let shard = keys.shard(ShardId(5));
        for key in [
            shard.lease,
            shard.holder,
            shard.epoch,
            shard.checkpoint,
            keys.shard_count(),
            keys.members(),
            keys.dedup_key(1, 0),
        ] {
            assert!(key.starts_with("acl.scope:"), "{key}");
        }
    }

    #[test]
    fn braces_in_the_prefix_are_refused() {
        for prefix in ["{x}", "a{", "b}"] {
            assert!(ClusterKeys::new(prefix).is_err(), "{prefix}");
        }
    }

    #[test]
    fn membership_events_round_trip() {
        let id = MemberId::from_stored("host-1:a").unwrap();
        let cases = [
            (MembershipEvent::Joined(id.clone()), "joined:host-1:a"),
            (MembershipEvent::Left(id), "left:host-1:a"),
        ];
        for (event, payload) in cases {
            assert_eq!(event.encode(), payload);
            assert_eq!(MembershipEvent::decode(payload), Some(event));
        }
        for bad in ["", "joined", "moved:x", "left:"] {
            assert_eq!(MembershipEvent::decode(bad), None, "{bad}");
        }
    }
}
