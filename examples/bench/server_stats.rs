//! Figure 5: what one published message costs the servers, from Redis's
//! `INFO commandstats` and mongo-sim's traffic counters taken around a run.

use std::collections::BTreeMap;

use anyhow::Result;
use mongo_sim::CountersSnapshot;

/// Calls per Redis command name (`cmdstat_<name>:calls=<n>,...`).
pub type CommandCalls = BTreeMap<String, u64>;

/// Reads `INFO commandstats` into calls per command.
pub fn parse_commandstats(info: &str) -> CommandCalls {
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Current command calls of the Redis at `url`.
pub async fn redis_calls(url: &str) -> Result<CommandCalls> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await?;
    Ok(parse_commandstats(&info))
}

/// What Redis executed between two snapshots, per published message.
#[derive(Debug, Clone, Default)]
pub struct RedisCost {
    /// Every command, including those the script runs (Redis counts them too),
    /// except the benchmark's own `INFO`.
    pub all: f64,
    /// `EVALSHA` calls: redtail's round trips that publish.
    pub evalsha: f64,
    /// `EVAL` calls (a fallback; expected 0).
    pub eval: f64,
    /// `PUBLISH` (from inside the script).
    pub publish: f64,
    /// Calls per command name, raw deltas.
    pub deltas: CommandCalls,
}

/// Deltas between `before` and `after`, divided by `messages`.
pub fn redis_cost(before: &CommandCalls, after: &CommandCalls, messages: u64) -> RedisCost {
    let deltas: CommandCalls = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, calls)| {
            (
                name.clone(),
                calls.saturating_sub(before.get(name).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, delta)| *delta > 0)
        .collect();
    let per = |count: u64| count as f64 / messages.max(1) as f64;
    let of = |name: &str| per(deltas.get(name).copied().unwrap_or(0));
    RedisCost {
        all: per(deltas.values().sum()),
        evalsha: of("evalsha"),
        eval: of("eval"),
        publish: of("publish"),
        deltas,
    }
}

/// What mongo-sim answered between two snapshots, per published message.
#[derive(Debug, Clone, Default)]
pub struct MongoCost {
    /// Every command received.
    pub commands: f64,
    /// `getMore` commands (the tail's round trips).
    pub get_mores: f64,
    /// Oplog entries returned (1.0 means nothing was read twice).
    pub oplog_documents: f64,
    /// Oplog bytes returned.
    pub oplog_bytes: f64,
}

/// Deltas between two counter snapshots, divided by `messages`.
pub fn mongo_cost(before: &CountersSnapshot, after: &CountersSnapshot, messages: u64) -> MongoCost {
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / messages.max(1) as f64;
    MongoCost {
        commands: per(
            after.commands.values().sum(),
            before.commands.values().sum(),
        ),
        get_mores: per(after.command("getMore"), before.command("getMore")),
        oplog_documents: per(after.oplog_tail.documents, before.oplog_tail.documents),
        oplog_bytes: per(after.oplog_tail.bytes, before.oplog_tail.bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed_and_differenced() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=5,usec_per_call=0.5\r\ncmdstat_info:calls=1,usec=1\r\n",
        );
        let after = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=110,usec=50\r\ncmdstat_publish:calls=200,usec=9\r\ncmdstat_info:calls=2,usec=1\r\ncmdstat_get:calls=100,usec=1\r\n",
        );
        assert_eq!(before.get("evalsha"), Some(&10));
        let cost = redis_cost(&before, &after, 100);
        assert_eq!(cost.evalsha, 1.0);
        assert_eq!(cost.publish, 2.0);
        assert_eq!(cost.eval, 0.0);
        assert_eq!(cost.all, 4.0);
        assert!(!cost.deltas.contains_key("info"));
    }
}
