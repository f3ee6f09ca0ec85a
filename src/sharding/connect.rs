//! Joining the cluster at start: agree on the shard count, start the lease
//! coordinator, and find the oldest shard checkpoint to start reading from.

use std::time::Duration;

use ::cluster::{
    ClusterError, ClusterKeys, Coordinator, CoordinatorSettings, FencedPublisher, LeaseTiming,
    MemberId, ShardId, ShardMap,
};
use redis::aio::ConnectionManager;

use super::ShardedPublishing;
use crate::position::OplogPosition;
use crate::sources::reachability::ReachabilitySettings;

/// Cluster-mode settings, from `OTR_CLUSTER_*` and the Redis settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The one Redis the cluster coordinates through and publishes to.
    pub redis_url: String,
    /// `OTR_REDIS_METADATA_PREFIX`.
    pub prefix: String,
    /// `OTR_CLUSTER_SHARDS`.
    pub shards: u16,
    /// `OTR_CLUSTER_LEASE_TTL`.
    pub lease_ttl: Duration,
    /// `OTR_CLUSTER_RENEW_INTERVAL`.
    pub renew_interval: Duration,
    /// `OTR_CLUSTER_STANDBYS`.
    pub standbys: u16,
    /// `OTR_CLUSTER_STANDBY_WINDOW`: publications kept per standby shard.
    pub standby_window: usize,
    /// `OTR_REDIS_DEDUPE_EXPIRATION`.
    pub dedupe_expiration: Duration,
    /// `OTR_TIMESTAMP_FLUSH_INTERVAL`: how often idle shards checkpoint.
    pub checkpoint_interval: Duration,
    /// `OTR_REDIS_MAX_OUTAGE`.
    pub max_outage: Duration,
}

impl ClusterSettings {
    /// The coordinator's timing, derived from the TTL and renew interval:
    /// demote at 70% of the TTL (before the lease can expire under a paused
    /// leader), poll at most every second, and bound each Redis call so a
    /// renewal attempt cannot overrun the demotion point.
    pub fn coordinator(&self) -> CoordinatorSettings {
        let demote_after = self.lease_ttl.mul_f64(0.7);
        let timing = LeaseTiming {
            ttl: self.lease_ttl,
            renew_interval: self.renew_interval,
            renew_jitter: 0.1,
            demote_after,
            poll_interval: Duration::from_secs(1).min(self.lease_ttl / 4),
        };
        let request_timeout = Duration::from_secs(1)
            .min(self.renew_interval)
            .min((self.lease_ttl - demote_after) / 2);
        CoordinatorSettings {
            prefix: self.prefix.clone(),
            shards: self.shards,
            timing,
            standbys: usize::from(self.standbys),
            request_timeout,
            ..CoordinatorSettings::default()
        }
    }

    /// How MongoDB's reachability is probed: an instance steps aside after
    /// half a lease TTL without an answer, so its standbys take its shards
    /// sooner than a crash would be noticed, and a blip shorter than that
    /// moves nothing.
    pub fn reachability(&self) -> ReachabilitySettings {
        ReachabilitySettings {
            interval: Duration::from_secs(1).min(self.lease_ttl / 8),
            unreachable_after: self.lease_ttl / 2,
        }
    }
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    /// The Redis URL cannot be used by a plain client.
    #[error("cluster mode cannot use this OTR_REDIS_URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis refused or the settings disagree with the cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A connection for publishing could not be made.
    #[error("connecting to Redis for cluster publishing: {0}")]
    Connect(#[source] redis::RedisError),
}

/// Joins the cluster. Also returns the oldest checkpoint of any shard, where
/// a (re)starting member should begin reading: every shard it may lead is
/// at or after it.
pub async fn join_cluster(
    settings: &ClusterSettings,
) -> Result<(ShardedPublishing, Option<OplogPosition>), ShardingError> {
    let client = redis::Client::open(settings.redis_url.as_str()).map_err(ShardingError::Url)?;
    let coordinator_settings = settings.coordinator();
    coordinator_settings.validate()?;
    let coordinator = Coordinator::start(
        client.clone(),
        MemberId::for_this_host(),
        coordinator_settings,
    )
    .await?;
    tracing::info!(member = %coordinator.member().as_str(), shards = settings.shards, "joined the cluster");
    let mut connection = ConnectionManager::new(client)
        .await
        .map_err(ShardingError::Connect)?;
    let keys = ClusterKeys::new(&settings.prefix)?;
    let map = ShardMap::new(settings.shards)?;
    let oldest = oldest_checkpoint(&mut connection, &keys, &map).await?;
    let publishing = ShardedPublishing {
        coordinator,
        connection,
        fenced: FencedPublisher::new(keys.clone(), settings.dedupe_expiration.as_secs()),
        keys,
        map,
        checkpoint_interval: settings.checkpoint_interval,
        max_outage: settings.max_outage,
        standby_window: settings.standby_window,
        mongo_reachable: None,
    };
    Ok((publishing, oldest))
}

/// The smallest checkpoint over all shards (one MGET), None when no shard
/// has one yet (a new cluster).
async fn oldest_checkpoint(
    connection: &mut ConnectionManager,
    keys: &ClusterKeys,
    map: &ShardMap,
) -> Result<Option<OplogPosition>, ShardingError> {
    let shards: Vec<ShardId> = map.all().collect();
    let checkpoints = ::cluster::read_checkpoints(connection, keys, &shards).await?;
    Ok(checkpoints
        .into_iter()
        .flatten()
        .min()
        .map(OplogPosition::from_u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ttl: u64, renew_ms: u64) -> ClusterSettings {
        ClusterSettings {
            redis_url: "redis://127.0.0.1:1".into(),
            prefix: "oplogtoredis::".into(),
            shards: 64,
            lease_ttl: Duration::from_secs(ttl),
            renew_interval: Duration::from_millis(renew_ms),
            standbys: 1,
            standby_window: 100,
            dedupe_expiration: Duration::from_secs(150),
            checkpoint_interval: Duration::from_secs(1),
            max_outage: Duration::from_secs(30),
        }
    }

    #[test]
    fn derived_timing_is_valid_for_defaults_and_fast_test_settings() {
        for (ttl, renew) in [(10, 2000), (2, 400), (3, 500), (60, 10_000)] {
            let coordinator = settings(ttl, renew).coordinator();
            assert!(
                coordinator.validate().is_ok(),
                "ttl {ttl}s renew {renew}ms: {coordinator:?}"
            );
        }
        let defaults = settings(10, 2000).coordinator();
        assert_eq!(defaults.timing.demote_after, Duration::from_secs(7));
        assert_eq!(defaults.timing.poll_interval, Duration::from_secs(1));
    }
}
