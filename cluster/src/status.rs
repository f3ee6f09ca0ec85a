//! The cluster as an operator sees it: who leads and who stands by for
//! each shard, in which epoch, and how stale each checkpoint is.
//!
//! Read straight from Redis rather than from one instance's memory, so any
//! instance's `/status` shows the same picture, including shards nobody
//! leads. One round trip: `TIME` and a per-shard `MGET` pipelined (each
//! `MGET` stays within one shard's hash tag, so this also works on a Redis
//! Cluster), plus the live-member listing for the standby column.

use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::checkpoint::decode_checkpoint;
use crate::error::{ClusterError, Result};
use crate::keys::ClusterKeys;
use crate::lease::LeaseToken;
use crate::member_id::MemberId;
use crate::membership::live_members;
use crate::rendezvous::rank;
use crate::shard_map::{ShardId, ShardMap};

/// One row of the status view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: ShardId,
    /// The lease holder, `None` while nobody leads.
    pub leader: Option<MemberId>,
    /// The epoch of the current lease.
    pub epoch: Option<u64>,
    /// The best-ranked live member other than the leader: who takes over if
    /// the leader goes.
    pub standby: Option<MemberId>,
    /// The live member the ranking prefers as leader (differs from `leader`
    /// while a voluntary handoff is pending).
    pub preferred: Option<MemberId>,
    /// The checkpoint position `(T<<32)|I`.
    pub checkpoint: Option<u64>,
    /// Redis's clock minus the checkpoint's oplog time (whole seconds).
    pub checkpoint_age: Option<Duration>,
}

/// The status of every shard of `map`.
pub async fn cluster_status(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
    map: ShardMap,
) -> Result<Vec<ShardStatus>> {
    let members = live_members(conn, keys).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("TIME");
    for shard in map.all() {
        let k = keys.shard(shard);
        pipe.cmd("MGET")
            .arg(k.lease)
            .arg(k.holder)
            .arg(k.checkpoint);
    }
    let (time, rows): ((u64, u64), Vec<Vec<Option<String>>>) = {
        let mut replies: Vec<redis::Value> = pipe
            .query_async(conn)
            .await
            .map_err(|e| ClusterError::redis("reading the cluster status", e))?;
        if replies.len() != usize::from(map.shards()) + 1 {
            return Err(ClusterError::reply(
                "reading the cluster status",
                "short pipeline reply",
            ));
        }
        let rows = replies.split_off(1);
        let parse = |e: redis::ParsingError| {
            ClusterError::reply("reading the cluster status", e.to_string())
        };
        let time: (u64, u64) = redis::from_redis_value(replies.remove(0)).map_err(parse)?;
        let rows = rows
            .into_iter()
            .map(|row| redis::from_redis_value(row).map_err(parse))
            .collect::<Result<_>>()?;
        (time, rows)
    };
    let now_secs = time.0;
    Ok(map
        .all()
        .zip(rows)
        .map(|(shard, row)| shard_status(shard, &row, &members, now_secs))
        .collect())
}

fn shard_status(
    shard: ShardId,
    row: &[Option<String>],
    members: &[MemberId],
    now_secs: u64,
) -> ShardStatus {
    let field = |i: usize| row.get(i).cloned().flatten();
    let token = field(0).as_deref().and_then(LeaseToken::parse);
    let leader = field(0)
        .and(field(1))
        .as_deref()
        .and_then(MemberId::from_stored);
    let ranking = rank(shard, members);
    let checkpoint = field(2).as_deref().and_then(decode_checkpoint);
    ShardStatus {
        shard,
        standby: ranking
            .iter()
            .find(|m| Some(*m) != leader.as_ref())
            .cloned(),
        preferred: ranking.first().cloned(),
        leader,
        epoch: token.map(|t| t.epoch),
        checkpoint,
        checkpoint_age: checkpoint
            .map(|position| Duration::from_secs(now_secs.saturating_sub(position >> 32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_table() {
        let a = MemberId::from_stored("a-1").unwrap();
        let b = MemberId::from_stored("b-2").unwrap();
        let members = vec![a.clone(), b.clone()];
        let shard = ShardId(4);
        let order = rank(shard, &members);
        let s = |v: &str| Some(v.to_string());
        let position = (1_000u64 << 32) | 7;
        let cases = [
            // Led by the preferred member, with a checkpoint 500 s old.
            (
                vec![
                    s("3:u"),
                    Some(order[0].to_string()),
                    s(&format!("{position:020}")),
                ],
                Some(order[0].clone()),
                Some(3),
                Some(order[1].clone()),
                Some(Duration::from_secs(500)),
            ),
            // Led by the other one: the standby is then the preferred member.
            (
                vec![s("9:u"), Some(order[1].to_string()), None],
                Some(order[1].clone()),
                Some(9),
                Some(order[0].clone()),
                None,
            ),
            // Nobody leads: the standby is simply the best-ranked member.
            (
                vec![None, None, None],
                None,
                None,
                Some(order[0].clone()),
                None,
            ),
        ];
        for (row, leader, epoch, standby, age) in cases {
            let status = shard_status(shard, &row, &members, 1_500);
            assert_eq!(status.leader, leader);
            assert_eq!(status.epoch, epoch);
            assert_eq!(status.standby, standby);
            assert_eq!(status.preferred, Some(order[0].clone()));
            assert_eq!(status.checkpoint_age, age);
        }
    }
}
