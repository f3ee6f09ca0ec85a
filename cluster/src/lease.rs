//! The lease that makes one member the leader of a shard.
//!
//! The lease key is the single source of truth for leadership: `SET NX PX`
//! admits at most one holder at a time, whatever each member believes about
//! the membership. Its value is a token `<epoch>:<uuid>`: the epoch comes from
//! an `INCR` done in the same script as the `SET`, so it grows with every
//! acquisition and makes generations readable in audits; the UUID keeps tokens
//! unique even if a Redis failover rolls the counter back. Renewal and release
//! are compare-and-set scripts on the token, so a member can never extend or
//! delete a lease that has moved on. Release also publishes the shard number
//! on the release channel so a standby takes over at once instead of at its
//! next poll.
//!
//! A lease alone does not stop a paused leader from acting late (Redis TTLs
//! run on Redis's clock, the holder's pause is invisible to it): that is what
//! the fenced publish script is for. The timing below only makes it rare.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::error::{ClusterError, Result};
use crate::keys::{ClusterKeys, ShardKeys};
use crate::member_id::MemberId;
use crate::shard_map::{ShardId, ShardMap};

/// `KEYS = {lease, epoch, holder}`, `ARGV = {uuid, ttl_ms, member}`: the new
/// epoch, or 0 when the lease is held.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ':' .. ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
return epoch
",
    )
});

/// `KEYS = {lease, holder}`, `ARGV = {token, ttl_ms}`: 1 renewed, 0 not ours.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
",
    )
});

/// `KEYS = {lease, holder}`, `ARGV = {token, channel, shard}`: 1 released
/// (and announced), 0 not ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
",
    )
});

/// The timing of leases, heartbeats and polls.
///
/// The defaults follow the design card: a 10 s lease renewed every 2 s
/// (±10 % jitter so members do not renew in lockstep), self-demotion 7 s after
/// the send time of the last confirmed renewal (so the leader stops at least
/// 3 s before the lease can expire on Redis, measured on a monotonic clock),
/// and followers polling every second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseTiming {
    /// The lease (and membership heartbeat) TTL.
    pub ttl: Duration,
    /// How often held leases are renewed and the heartbeat sent.
    pub renew_interval: Duration,
    /// Random spread of each renewal, as a fraction of `renew_interval`.
    pub renew_jitter: f64,
    /// Give a shard up when no renewal sent this long ago succeeded.
    pub demote_after: Duration,
    /// How often followers look for free shards and refresh the membership.
    pub poll_interval: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            renew_jitter: 0.1,
            demote_after: Duration::from_secs(7),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl LeaseTiming {
    /// Checks `renew_interval < demote_after < ttl`: a leader must get
    /// several renewal attempts before demoting, and must demote before its
    /// lease can expire under it.
    pub fn validate(&self) -> Result<()> {
        let ok = !self.renew_interval.is_zero()
            && !self.poll_interval.is_zero()
            && self.renew_interval < self.demote_after
            && self.demote_after < self.ttl
            && (0.0..0.5).contains(&self.renew_jitter);
        if ok {
            Ok(())
        } else {
            Err(ClusterError::Settings(format!(
                "lease timing must satisfy 0 < renew ({:?}) < demote ({:?}) < TTL ({:?}), \
                 a non-zero poll ({:?}) and a jitter in [0, 0.5) ({})",
                self.renew_interval,
                self.demote_after,
                self.ttl,
                self.poll_interval,
                self.renew_jitter
            )))
        }
    }

    /// The next renewal delay: `renew_interval` ± the jitter.
    pub fn next_renewal(&self) -> Duration {
        let spread = rand::random_range(-self.renew_jitter..=self.renew_jitter);
        self.renew_interval.mul_f64(1.0 + spread)
    }
}

/// A lease's token: the epoch it was acquired in and the full stored value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseToken {
    /// The acquisition number of the shard (from `INCR`).
    pub epoch: u64,
    /// The stored value, `<epoch>:<uuid>`: what the fence compares.
    pub token: String,
}

impl LeaseToken {
    /// Reads a stored lease value; `None` when it is not `<epoch>:<rest>`.
    pub fn parse(value: &str) -> Option<Self> {
        let (epoch, rest) = value.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        Some(Self {
            epoch: epoch.parse().ok()?,
            token: value.to_string(),
        })
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token)
    }
}

/// A lease this member acquired on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLease {
    shard: ShardId,
    keys: ShardKeys,
    token: LeaseToken,
}

impl ShardLease {
    /// Tries to take `shard`'s lease for `holder` for `ttl`. `None` when
    /// someone holds it; otherwise the lease, with a fresh epoch.
    pub async fn acquire(
        conn: &mut impl ConnectionLike,
        keys: &ClusterKeys,
        shard: ShardId,
        holder: &MemberId,
        ttl: Duration,
    ) -> Result<Option<Self>> {
        let shard_keys = keys.shard(shard);
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let epoch: u64 = ACQUIRE
            .key(&shard_keys.lease)
            .key(&shard_keys.epoch)
            .key(&shard_keys.holder)
            .arg(&uuid)
            .arg(ttl_millis(ttl))
            .arg(holder.as_str())
            .invoke_async(conn)
            .await
            .map_err(|e| ClusterError::redis(format!("acquiring the lease of shard {shard}"), e))?;
        if epoch == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            shard,
            keys: shard_keys,
            token: LeaseToken {
                epoch,
                token: format!("{epoch}:{uuid}"),
            },
        }))
    }

    /// The shard this lease is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The token to pass to the fenced publish.
    pub fn token(&self) -> &LeaseToken {
        &self.token
    }

    /// Extends the lease to `ttl` from now if it still holds our token.
    /// `Ok(false)` means it expired or moved on: we are no longer the leader.
    pub async fn renew(&self, conn: &mut impl ConnectionLike, ttl: Duration) -> Result<bool> {
        let renewed: i64 = RENEW
            .key(&self.keys.lease)
            .key(&self.keys.holder)
            .arg(&self.token.token)
            .arg(ttl_millis(ttl))
            .invoke_async(conn)
            .await
            .map_err(|e| {
                ClusterError::redis(format!("renewing the lease of shard {}", self.shard), e)
            })?;
        Ok(renewed == 1)
    }

    /// Deletes the lease if it still holds our token, and announces the
    /// release on `keys.released_channel()`. `Ok(false)`: it was not ours any
    /// more, nothing was deleted.
    pub async fn release(
        &self,
        conn: &mut impl ConnectionLike,
        keys: &ClusterKeys,
    ) -> Result<bool> {
        let released: i64 = RELEASE
            .key(&self.keys.lease)
            .key(&self.keys.holder)
            .arg(&self.token.token)
            .arg(keys.released_channel())
            .arg(self.shard.0)
            .invoke_async(conn)
            .await
            .map_err(|e| {
                ClusterError::redis(format!("releasing the lease of shard {}", self.shard), e)
            })?;
        Ok(released == 1)
    }
}

/// The current lease token of every shard (`None`: nobody holds it), in one
/// round trip. A value that is not a token counts as held (by a stranger),
/// so nobody overwrites it.
pub async fn read_leases(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
    map: ShardMap,
) -> Result<Vec<Option<String>>> {
    let mut pipe = redis::pipe();
    for shard in map.all() {
        pipe.get(keys.shard(shard).lease);
    }
    pipe.query_async(conn)
        .await
        .map_err(|e| ClusterError::redis("reading every shard's lease", e))
}

fn ttl_millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_table() {
        let cases = [
            ("7:abc", Some(7)),
            ("18446744073709551615:x", Some(u64::MAX)),
            ("7:", None),
            ("abc", None),
            (":x", None),
            ("-1:x", None),
            ("", None),
        ];
        for (value, epoch) in cases {
            assert_eq!(LeaseToken::parse(value).map(|t| t.epoch), epoch, "{value}");
        }
        assert_eq!(LeaseToken::parse("3:u").unwrap().to_string(), "3:u");
    }

    #[test]
    fn default_timing_is_valid_and_bad_timings_are_refused() {
        assert!(LeaseTiming::default().validate().is_ok());
        let base = LeaseTiming::default();
        let bad = [
            LeaseTiming {
                demote_after: base.ttl,
                ..base
            },
            LeaseTiming {
                renew_interval: base.demote_after,
                ..base
            },
            LeaseTiming {
                renew_interval: Duration::ZERO,
                ..base
            },
            LeaseTiming {
                poll_interval: Duration::ZERO,
                ..base
            },
            LeaseTiming {
                renew_jitter: 0.7,
                ..base
            },
        ];
        for timing in bad {
            assert!(timing.validate().is_err(), "{timing:?}");
        }
    }

    #[test]
    fn renewal_delays_stay_within_the_jitter() {
        let timing = LeaseTiming::default();
        for _ in 0..200 {
            let delay = timing.next_renewal();
            assert!(delay >= Duration::from_millis(1800) && delay <= Duration::from_millis(2200));
        }
    }
}
