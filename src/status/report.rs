//! The status report: what `/status` serves and `redtail status` prints.
//!
//! Built from the `cluster` crate's [`ShardStatus`] rows by a pure function,
//! so what an operator sees is decided here, without I/O, and table-tested.
//!
//! Positions are `(T<<32)|I` values that exceed 2^53, so the JSON carries
//! them as decimal strings: a JavaScript client (`jq`, a dashboard) would
//! otherwise round them silently.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::cluster::{MemberId, ShardStatus};
use serde::Serialize;

/// The whole cluster as Redis describes it at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatusReport {
    /// When the report was read (this machine's clock, RFC 3339, UTC).
    pub generated_at: String,
    /// The member that produced the report (`/status` of a running
    /// instance), absent for `redtail status`, which is not a member.
    pub reported_by: Option<String>,
    /// One row per shard, in shard order.
    pub shards: Vec<ShardRow>,
    /// The live members (heartbeat not expired), sorted.
    pub members: Vec<String>,
    /// Counts for a glance and for alerts.
    pub summary: Summary,
}

/// One shard's leadership and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardRow {
    /// The shard number, `0..shards`.
    pub shard: u16,
    /// The member holding the shard's lease; `None`: nobody publishes it.
    pub leader: Option<String>,
    /// Who would take over if the leader went: the best-ranked live member
    /// other than the leader.
    pub standby: Option<String>,
    /// The member the ranking prefers as leader; differs from `leader`
    /// while a voluntary handoff is pending.
    pub preferred: Option<String>,
    /// The epoch of the current lease (incremented on every acquisition).
    pub epoch: Option<u64>,
    /// The shard's durable position `(T<<32)|I`, in decimal; `None` until
    /// the shard has published or been seeded.
    pub checkpoint: Option<String>,
    /// The oplog time `T` of the checkpoint, RFC 3339, UTC.
    pub checkpoint_time: Option<String>,
    /// Seconds from the checkpoint's oplog time to now (Redis's clock). This
    /// is both the checkpoint's age and the shard's lag, see
    /// [`crate::status`].
    pub lag_seconds: Option<u64>,
}

/// The shard and member counts of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// How many shards the cluster has.
    pub shards: usize,
    /// Shards with a lease holder.
    pub led: usize,
    /// Shards nobody publishes right now (alert when this stays above 0).
    pub unled: usize,
    /// How many members are alive.
    pub members: usize,
    /// The largest lag of any shard with a checkpoint.
    pub max_lag_seconds: Option<u64>,
}

impl ClusterStatusReport {
    /// Assembles a report from the shard rows and live members read from
    /// Redis. Pure, so the view is tested without a server.
    pub fn build(
        statuses: &[ShardStatus],
        members: &[MemberId],
        reported_by: Option<&MemberId>,
        generated_at: SystemTime,
    ) -> Self {
        let shards: Vec<ShardRow> = statuses.iter().map(ShardRow::from_status).collect();
        let led = shards.iter().filter(|row| row.leader.is_some()).count();
        let summary = Summary {
            shards: shards.len(),
            led,
            unled: shards.len() - led,
            members: members.len(),
            max_lag_seconds: shards.iter().filter_map(|row| row.lag_seconds).max(),
        };
        Self {
            generated_at: rfc3339(generated_at),
            reported_by: reported_by.map(MemberId::to_string),
            shards,
            members: members.iter().map(MemberId::to_string).collect(),
            summary,
        }
    }
}

impl ShardRow {
    fn from_status(status: &ShardStatus) -> Self {
        Self {
            shard: status.shard.0,
            leader: status.leader.as_ref().map(MemberId::to_string),
            standby: status.standby.as_ref().map(MemberId::to_string),
            preferred: status.preferred.as_ref().map(MemberId::to_string),
            epoch: status.epoch,
            checkpoint: status.checkpoint.map(|position| position.to_string()),
            checkpoint_time: status.checkpoint.map(checkpoint_time),
            lag_seconds: status.checkpoint_age.map(|age| age.as_secs()),
        }
    }
}

/// The oplog time `T` of a `(T<<32)|I` position, as RFC 3339.
fn checkpoint_time(position: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_secs(position >> 32))
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use ::cluster::ShardId;

    use super::*;

    fn member(id: &str) -> MemberId {
        MemberId::from_stored(id).unwrap()
    }

    fn status(shard: u16, leader: Option<&str>, checkpoint: Option<u64>, age: u64) -> ShardStatus {
        ShardStatus {
            shard: ShardId(shard),
            leader: leader.map(member),
            epoch: leader.map(|_| u64::from(shard) + 10),
            standby: Some(member("b-2")),
            preferred: Some(member("a-1")),
            checkpoint,
            checkpoint_age: checkpoint.map(|_| Duration::from_secs(age)),
        }
    }

    #[test]
    fn rows_table() {
        // 2026-01-01T00:00:00Z = 1767225600, increment 7.
        let position = (1_767_225_600u64 << 32) | 7;
        let cases = [
            (
                status(0, Some("a-1"), Some(position), 42),
                Some("a-1"),
                Some(10),
                Some("7590176156653977607"),
                Some("2026-01-01T00:00:00Z"),
                Some(42),
            ),
            (status(3, None, None, 0), None, None, None, None, None),
            (
                status(5, None, Some(1u64 << 32), 9),
                None,
                None,
                Some("4294967296"),
                Some("1970-01-01T00:00:01Z"),
                Some(9),
            ),
        ];
        for (input, leader, epoch, checkpoint, time, lag) in cases {
            let row = ShardRow::from_status(&input);
            assert_eq!(row.shard, input.shard.0);
            assert_eq!(row.leader.as_deref(), leader, "{input:?}");
            assert_eq!(row.epoch, epoch, "{input:?}");
            assert_eq!(row.checkpoint.as_deref(), checkpoint, "{input:?}");
            assert_eq!(row.checkpoint_time.as_deref(), time, "{input:?}");
            assert_eq!(row.lag_seconds, lag, "{input:?}");
            assert_eq!(row.standby.as_deref(), Some("b-2"));
            assert_eq!(row.preferred.as_deref(), Some("a-1"));
        }
    }

    #[test]
    fn summary_counts_led_unled_and_the_worst_lag() {
        let statuses = [
            status(0, Some("a-1"), Some(1 << 32), 30),
            status(1, None, Some(2 << 32), 90),
            status(2, Some("b-2"), None, 0),
        ];
        let members = [member("a-1"), member("b-2"), member("c-3")];
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let report = ClusterStatusReport::build(&statuses, &members, Some(&members[0]), at);
        assert_eq!(
            report.summary,
            Summary {
                shards: 3,
                led: 2,
                unled: 1,
                members: 3,
                max_lag_seconds: Some(90),
            }
        );
        assert_eq!(report.generated_at, "2026-01-01T00:00:00Z");
        assert_eq!(report.reported_by.as_deref(), Some("a-1"));
        assert_eq!(report.members, ["a-1", "b-2", "c-3"]);

        let empty = ClusterStatusReport::build(&[], &[], None, at);
        assert_eq!(empty.summary.unled, 0);
        assert_eq!(empty.summary.max_lag_seconds, None);
        assert_eq!(empty.reported_by, None);
    }

    #[test]
    fn json_shape_keeps_positions_exact() {
        let position = u64::MAX - 1;
        let report = ClusterStatusReport::build(
            &[status(0, Some("a-1"), Some(position), 1)],
            &[member("a-1")],
            None,
            UNIX_EPOCH,
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["shards"][0]["checkpoint"],
            serde_json::json!(position.to_string())
        );
        assert_eq!(json["shards"][0]["leader"], "a-1");
        assert_eq!(json["summary"]["led"], 1);
        assert_eq!(json["reported_by"], serde_json::Value::Null);
        assert_eq!(json["generated_at"], "1970-01-01T00:00:00Z");
    }
}
