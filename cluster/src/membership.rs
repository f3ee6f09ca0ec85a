//! Who is alive: each instance heartbeats its [`MemberId`] into Redis.
//!
//! The index is one sorted set, member id scored by its expiry in
//! milliseconds of the *Redis* clock (read with `TIME` inside the scripts), so
//! instances with skewed clocks still agree on who expired, and listing the
//! live members is one command with no `SCAN`. Expired entries are trimmed on
//! every heartbeat, so a crashed member's entry disappears on its own one TTL
//! after its last heartbeat. Joins and graceful leaves are announced on a
//! channel so the others re-rank at once instead of at their next poll.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::error::{ClusterError, Result};
use crate::keys::{ClusterKeys, MembershipEvent};
use crate::member_id::MemberId;

/// `KEYS = {members}`, `ARGV = {id, ttl_ms, announcement or ""}`, where the
/// channel is `ARGV[4]`. Returns the Redis clock in ms.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[3]) end
return now
",
    )
});

/// `KEYS = {members}`: the ids whose expiry lies in the future.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
",
    )
});

/// `KEYS = {members}`, `ARGV = {id, announcement, channel}`.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return removed
",
    )
});

/// This instance's entry in the membership set.
#[derive(Debug, Clone)]
pub struct Membership {
    keys: ClusterKeys,
    member: MemberId,
    ttl: Duration,
}

impl Membership {
    /// The entry of `member`, expiring `ttl` after each heartbeat.
    pub fn new(keys: ClusterKeys, member: MemberId, ttl: Duration) -> Self {
        Self { keys, member, ttl }
    }

    /// This member's id.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    /// The first heartbeat, announced so the others re-rank at once.
    pub async fn join(&self, conn: &mut impl ConnectionLike) -> Result<()> {
        let event = MembershipEvent::Joined(self.member.clone()).encode();
        self.beat(conn, &event).await
    }

    /// Extends this member's expiry by the TTL (and trims expired members).
    pub async fn heartbeat(&self, conn: &mut impl ConnectionLike) -> Result<()> {
        self.beat(conn, "").await
    }

    async fn beat(&self, conn: &mut impl ConnectionLike, announcement: &str) -> Result<()> {
        let _: i64 = HEARTBEAT
            .key(self.keys.members())
            .arg(self.member.as_str())
            .arg(self.ttl.as_millis() as u64)
            .arg(announcement)
            .arg(self.keys.membership_channel())
            .invoke_async(conn)
            .await
            .map_err(|e| ClusterError::redis(format!("heartbeating member {}", self.member), e))?;
        Ok(())
    }

    /// Removes this member at once and announces it, so the others stop
    /// ranking it before its leases are released (a graceful shutdown).
    pub async fn leave(&self, conn: &mut impl ConnectionLike) -> Result<()> {
        let _: i64 = LEAVE
            .key(self.keys.members())
            .arg(self.member.as_str())
            .arg(MembershipEvent::Left(self.member.clone()).encode())
            .arg(self.keys.membership_channel())
            .invoke_async(conn)
            .await
            .map_err(|e| ClusterError::redis(format!("removing member {}", self.member), e))?;
        Ok(())
    }
}

/// The members whose heartbeat has not expired, sorted by id.
pub async fn live_members(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
) -> Result<Vec<MemberId>> {
    let ids: Vec<String> = LIVE
        .key(keys.members())
        .invoke_async(conn)
        .await
        .map_err(|e| ClusterError::redis("listing live members", e))?;
    let mut members: Vec<MemberId> = ids
        .iter()
        .filter_map(|id| MemberId::from_stored(id))
        .collect();
    members.sort();
    Ok(members)
}
