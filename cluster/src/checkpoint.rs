//! A shard's checkpoint: how far its publishing has got.
//!
//! The value is the oplog position `(T<<32)|I` as a 20-digit zero-padded
//! decimal. Lua numbers in Redis are doubles, exact only up to 2^53, and
//! positions reach 7e18, so the fenced publish script must never turn a
//! position into a number; with a fixed width, the order of the text is the
//! order of the positions. Only the fenced publish script advances it (never
//! backwards, only under the lease); this module reads it and seeds it.

use redis::aio::ConnectionLike;

use crate::error::{ClusterError, Result};
use crate::keys::ClusterKeys;
use crate::shard_map::ShardId;

/// The width of an encoded checkpoint: `u64::MAX` has 20 digits.
pub const CHECKPOINT_WIDTH: usize = 20;

/// The stored form of `position`.
pub fn encode_checkpoint(position: u64) -> String {
    format!("{position:0width$}", width = CHECKPOINT_WIDTH)
}

/// Reads a stored checkpoint; `None` unless it is exactly 20 digits.
pub fn decode_checkpoint(text: &str) -> Option<u64> {
    (text.len() == CHECKPOINT_WIDTH && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The checkpoint of `shard`, `None` when the shard never published.
pub async fn read_checkpoint(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
    shard: ShardId,
) -> Result<Option<u64>> {
    let key = keys.shard(shard).checkpoint;
    let value: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| ClusterError::redis(format!("reading checkpoint {key}"), e))?;
    value
        .map(|text| {
            decode_checkpoint(&text).ok_or_else(|| {
                ClusterError::reply(
                    format!("reading checkpoint {key}"),
                    format!("{text:?} is not a 20-digit position"),
                )
            })
        })
        .transpose()
}

/// The checkpoints of `shards` in one `MGET`, in the same order; a missing
/// or malformed value reads as `None` (the caller then knows nothing of that
/// shard, which is always safe for a reader: it never moves anything).
pub async fn read_checkpoints(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
    shards: &[ShardId],
) -> Result<Vec<Option<u64>>> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = shards.iter().map(|&s| keys.shard(s).checkpoint).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(conn)
        .await
        .map_err(|e| ClusterError::redis(format!("reading {} checkpoints", shards.len()), e))?;
    Ok(values
        .iter()
        .map(|value| value.as_deref().and_then(decode_checkpoint))
        .collect())
}

/// Seeds the checkpoint of a shard that has none (e.g. from oplogtoredis's
/// `lastProcessedEntry` on a first start). `SET NX`: an existing checkpoint
/// is never overwritten, so this cannot move one backwards. Returns whether
/// it wrote.
pub async fn initialize_checkpoint(
    conn: &mut impl ConnectionLike,
    keys: &ClusterKeys,
    shard: ShardId,
    position: u64,
) -> Result<bool> {
    let key = keys.shard(shard).checkpoint;
    let written: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg(encode_checkpoint(position))
        .arg("NX")
        .query_async(conn)
        .await
        .map_err(|e| ClusterError::redis(format!("seeding checkpoint {key}"), e))?;
    Ok(written.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_table() {
        let cases = [
            (0, "00000000000000000000"),
            (5299989648942, "00000005299989648942"),
            (7301444403200000001, "07301444403200000001"),
            (u64::MAX, "18446744073709551615"),
        ];
        for (position, text) in cases {
            assert_eq!(encode_checkpoint(position), text);
            assert_eq!(decode_checkpoint(text), Some(position));
        }
    }

    #[test]
    fn text_order_is_position_order() {
        let positions = [
            0u64,
            9,
            10,
            1 << 32,
            (1 << 53) + 1,
            (1 << 53) + 2,
            u64::MAX - 1,
            u64::MAX,
        ];
        for pair in positions.windows(2) {
            assert!(
                encode_checkpoint(pair[0]) < encode_checkpoint(pair[1]),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for text in [
            "",
            "5299989648942",
            "0000000529998964894x",
            "99999999999999999999",
            " 0000000000000000000",
        ] {
            assert_eq!(decode_checkpoint(text), None, "{text:?}");
        }
    }
}
