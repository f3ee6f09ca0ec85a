//! Publishing a batch only while holding the shard's lease.
//!
//! A leader can be paused (GC, CPU starvation, a partition) past its lease
//! and then resume with a batch in hand; no client-side check can rule that
//! out. So the check runs on the server, atomically with the publish: one Lua
//! script compares the lease with the caller's token and refuses with
//! `FENCED` before touching anything. Because the lease and the publish live
//! in the same Redis, this is a true fence, not a best-effort one.
//!
//! In the same script, per publication, oplogtoredis's dedup runs unchanged
//! (`GET <prefix>processed::<ts>::<txIdx>`; if absent `SETEX` it and
//! `PUBLISH` to each channel), so a mixed oplogtoredis/redtail fleet still
//! publishes each change once. The marker's value is the lease epoch instead
//! of oplogtoredis's `1`, so an audit can tell which generation published a
//! change. Finally the shard checkpoint advances to the batch's position,
//! only forward. Since fence, publish and checkpoint are one atomic step, the
//! checkpoint never runs ahead of what a valid leader published.
//!
//! Positions stay text: the checkpoint is compared as two 10-digit halves,
//! each exact as a Lua double (Lua's string `<` would use the locale's
//! collation).
//!
//! Redis Cluster: every key of one call must hash to one slot. The shard keys
//! share a tag, but oplogtoredis's dedup names carry none, so on a Redis
//! Cluster the caller must pass hash-tagged dedup keys (giving up dedup with
//! an oplogtoredis fleet).

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionLike;

use crate::checkpoint::encode_checkpoint;
use crate::error::{ClusterError, FenceError};
use crate::keys::ClusterKeys;
use crate::lease::LeaseToken;
use crate::shard_map::ShardId;

/// `KEYS = {lease, checkpoint, dedup_1..n}`;
/// `ARGV = {token, dedup_expiration_secs, checkpoint or "", then per
/// publication: message, channel count, channels...}`.
/// Returns `{checkpoint_moved, published_1..n}` (1 or 0 each).
static FENCED_PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local token = ARGV[1]
if redis.call('GET', KEYS[1]) ~= token then
  return redis.error_reply('FENCED the lease does not hold this token')
end
local function well_formed(position)
  return string.len(position) == 20 and string.find(position, '^%d+$') ~= nil
end
local function greater(a, b)
  local a_high, b_high = tonumber(string.sub(a, 1, 10)), tonumber(string.sub(b, 1, 10))
  if a_high ~= b_high then return a_high > b_high end
  return tonumber(string.sub(a, 11, 20)) > tonumber(string.sub(b, 11, 20))
end
local checkpoint = ARGV[3]
local current = false
if checkpoint ~= '' then
  if not well_formed(checkpoint) then
    return redis.error_reply('BADCHECKPOINT the new checkpoint is not 20 digits')
  end
  current = redis.call('GET', KEYS[2])
  if current and not well_formed(current) then
    return redis.error_reply('BADCHECKPOINT the stored checkpoint is not 20 digits')
  end
end
local epoch = string.match(token, '^(%d+):') or '1'
local expiration = ARGV[2]
local result = {0}
local next_arg = 4
for i = 3, #KEYS do
  local message = ARGV[next_arg]
  local first_channel = next_arg + 2
  next_arg = first_channel + tonumber(ARGV[next_arg + 1])
  if redis.call('GET', KEYS[i]) then
    result[i - 1] = 0
  else
    redis.call('SETEX', KEYS[i], expiration, epoch)
    for c = first_channel, next_arg - 1 do
      redis.call('PUBLISH', ARGV[c], message)
    end
    result[i - 1] = 1
  end
end
if checkpoint ~= '' and ((not current) or greater(checkpoint, current)) then
  redis.call('SET', KEYS[2], checkpoint)
  result[1] = 1
end
return result
",
    )
});

/// One notification to publish: `message` to each of `channels`, in order,
/// unless `dedup_key` says it was already published. Independent of
/// redtail's types; redtail maps its `Publication` onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishItem {
    /// oplogtoredis's marker name, `<prefix>processed::<ts>::<txIdx>`
    /// (see [`ClusterKeys::dedup_key`]).
    pub dedup_key: String,
    /// The payload, published verbatim.
    pub message: String,
    /// The channels, in publishing order.
    pub channels: Vec<String>,
}

/// What a fenced publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Per item, in order: `true` published, `false` a duplicate (its dedup
    /// marker existed, nothing was sent).
    pub published: Vec<bool>,
    /// Whether the shard checkpoint moved to the given position (it does not
    /// when it already was there or further).
    pub checkpoint_moved: bool,
}

/// Publishes batches of one deployment under the fence.
#[derive(Debug, Clone)]
pub struct FencedPublisher {
    keys: ClusterKeys,
    dedup_expiration_secs: u64,
}

impl FencedPublisher {
    /// `dedup_expiration_secs` is `OTR_REDIS_DEDUPE_EXPIRATION` in seconds
    /// (raised to 1: `SETEX 0` is an error).
    pub fn new(keys: ClusterKeys, dedup_expiration_secs: u64) -> Self {
        Self {
            keys,
            dedup_expiration_secs: dedup_expiration_secs.max(1),
        }
    }

    /// Publishes `items` for `shard` if its lease still holds `token`, then
    /// advances the shard's checkpoint to `checkpoint` (when given and
    /// greater), all atomically. [`FenceError::Fenced`] means nothing was
    /// published and nothing moved: stop this shard's loop, do not retry.
    /// An empty `items` with a checkpoint advances an idle shard.
    pub async fn publish(
        &self,
        conn: &mut impl ConnectionLike,
        shard: ShardId,
        token: &LeaseToken,
        items: &[PublishItem],
        checkpoint: Option<u64>,
    ) -> Result<Outcome, FenceError> {
        let shard_keys = self.keys.shard(shard);
        let mut call = FENCED_PUBLISH.prepare_invoke();
        call.key(&shard_keys.lease).key(&shard_keys.checkpoint);
        for item in items {
            call.key(&item.dedup_key);
        }
        call.arg(&token.token)
            .arg(self.dedup_expiration_secs)
            .arg(checkpoint.map(encode_checkpoint).unwrap_or_default());
        for item in items {
            call.arg(&item.message).arg(item.channels.len());
            for channel in &item.channels {
                call.arg(channel);
            }
        }
        let context = || format!("publishing {} items for shard {shard}", items.len());
        let reply: Vec<i64> = call.invoke_async(conn).await.map_err(|e| {
            if e.code() == Some("FENCED") {
                ClusterError::Fenced {
                    shard: shard.0,
                    token: token.token.clone(),
                }
            } else {
                ClusterError::redis(context(), e)
            }
        })?;
        parse_reply(&reply, items.len()).map_err(|detail| ClusterError::reply(context(), detail))
    }
}

fn parse_reply(reply: &[i64], items: usize) -> Result<Outcome, String> {
    let flag = |value: i64| match value {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(format!("the script answered {other}, expected 0 or 1")),
    };
    let Some((&moved, published)) = reply.split_first() else {
        return Err("the script answered nothing".to_string());
    };
    if published.len() != items {
        return Err(format!(
            "the script answered {} results for {items} items",
            published.len()
        ));
    }
    Ok(Outcome {
        checkpoint_moved: flag(moved)?,
        published: published
            .iter()
            .map(|&v| flag(v))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_table() {
        let ok = |moved, published: Vec<bool>| {
            Ok(Outcome {
                published,
                checkpoint_moved: moved,
            })
        };
        let cases: [(&[i64], usize, Result<Outcome, ()>); 6] = [
            (
                &[1, 1, 0],
                2,
                ok(true, vec![true, false]).map_err(|_: ()| ()),
            ),
            (&[0], 0, ok(false, vec![])),
            (&[0, 1], 1, ok(false, vec![true])),
            (&[], 0, Err(())),
            (&[1, 1], 2, Err(())),
            (&[2, 1], 1, Err(())),
        ];
        for (reply, items, expected) in cases {
            assert_eq!(
                parse_reply(reply, items).map_err(|_| ()),
                expected,
                "{reply:?}"
            );
        }
    }
}
