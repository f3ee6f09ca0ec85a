//! The scale table: one row per (mode, replicas), the ratios of each row to
//! the one-replica row of its mode, and the verdict on the design's goals.

use serde_json::{Value, json};

/// redtail's cluster mode, or oplogtoredis's model (everyone reads and
/// publishes everything; dedup keeps messages single).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `OTR_CLUSTER=true`.
    Cluster,
    /// `OTR_CLUSTER=false`.
    EveryoneEverything,
}

impl Mode {
    /// The name in the table and the JSON line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Cluster => "cluster",
            Mode::EveryoneEverything => "otr-model",
        }
    }
}

/// What one configuration cost.
#[derive(Debug, Clone)]
pub struct Row {
    pub mode: Mode,
    pub replicas: usize,
    /// Oplog entries written.
    pub writes: u64,
    /// Writes delivered on their collection channel at least once.
    pub delivered: u64,
    /// Deliveries beyond the first per (channel, write).
    pub duplicates: u64,
    /// Shards led per replica when the load started (cluster mode).
    pub leases: Vec<u64>,
    /// Whether the leases had settled (all led, nobody idle) before the load.
    pub settled: bool,
    /// Every Redis command per published message (renewals, heartbeats and
    /// the commands scripts run included).
    pub redis_all: f64,
    /// `EVALSHA` per published message (the publishing round trips).
    pub redis_evalsha: f64,
    /// `PUBLISH` per published message (run inside the script).
    pub redis_publish: f64,
    /// Calls per Redis command name in the window (for the reading).
    pub redis_commands: std::collections::BTreeMap<String, u64>,
    /// Redis commands per second with the replicas idle: leases, heartbeats,
    /// polls (the coordination cost, which does not depend on the load).
    pub redis_idle_per_sec: f64,
    /// `redis_all` minus the idle rate over the window: what publishing costs.
    pub redis_publishing: f64,
    /// Oplog entries Mongo returned per entry written.
    pub mongo_entries: f64,
    /// Oplog bytes Mongo returned per entry written.
    pub mongo_bytes: f64,
    /// `getMore` + `find` per second per replica during the window.
    pub tail_commands_per_sec_per_replica: f64,
    /// Seconds the measured window lasted.
    pub window_secs: f64,
}

impl Row {
    /// Writes never delivered.
    pub fn lost(&self) -> u64 {
        self.writes.saturating_sub(self.delivered)
    }
}

/// The goal ratios of the design (section 3), at the largest replica count.
#[derive(Debug, Clone, Copy)]
pub struct Goals {
    /// Redis cost per message may grow by this factor at most.
    pub redis: f64,
    /// Mongo cost per entry may grow by this factor at most (1 + standbys).
    pub mongo: f64,
}

/// `value / base`, or NaN when there is no base.
pub fn ratio(value: f64, base: Option<f64>) -> f64 {
    match base {
        Some(base) if base > 0.0 => value / base,
        _ => f64::NAN,
    }
}

/// The row of `mode` with one replica.
fn base_of(rows: &[Row], mode: Mode) -> Option<&Row> {
    rows.iter().find(|r| r.mode == mode && r.replicas == 1)
}

/// (redis ratio, mongo ratio) of a row against its mode's one-replica row.
pub fn ratios(rows: &[Row], row: &Row) -> (f64, f64) {
    let base = base_of(rows, row.mode);
    (
        ratio(row.redis_all, base.map(|b| b.redis_all)),
        ratio(row.mongo_entries, base.map(|b| b.mongo_entries)),
    )
}

/// The publishing-only Redis ratio (idle coordination taken out).
pub fn publishing_ratio(rows: &[Row], row: &Row) -> f64 {
    let base = base_of(rows, row.mode);
    ratio(row.redis_publishing, base.map(|b| b.redis_publishing))
}

/// Whether a ratio meets its goal (NaN never does).
pub fn meets(ratio: f64, goal: f64) -> bool {
    ratio <= goal
}

/// The cluster row with the most replicas, if any.
fn largest_cluster(rows: &[Row]) -> Option<&Row> {
    rows.iter()
        .filter(|r| r.mode == Mode::Cluster)
        .max_by_key(|r| r.replicas)
}

/// Prints the table and the verdict.
pub fn print_table(rows: &[Row], goals: Goals) {
    println!(
        "\n{:<10} {:>2} {:>6} {:>5} {:>5} {:>9} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7}  leases",
        "mode",
        "R",
        "deliv",
        "lost",
        "dups",
        "redis/msg",
        "evalsha",
        "publish",
        "idle/s",
        "pub-path",
        "mongo e/e",
        "mongo B/e",
        "tail/s/R",
        "redis x",
        "pub x",
        "mongo x"
    );
    for row in rows {
        let (redis_x, mongo_x) = ratios(rows, row);
        let leases = if row.mode == Mode::Cluster {
            format!(
                "{:?}{}",
                row.leases,
                if row.settled { "" } else { " (unsettled)" }
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<10} {:>2} {:>6} {:>5} {:>5} {:>9.3} {:>7.3} {:>7.3} {:>7.0} {:>8.3} {:>9.3} {:>9.1} {:>8.1} {:>7.2} {:>7.2} {:>7.2}  {leases}",
            row.mode.name(),
            row.replicas,
            row.delivered,
            row.lost(),
            row.duplicates,
            row.redis_all,
            row.redis_evalsha,
            row.redis_publish,
            row.redis_idle_per_sec,
            row.redis_publishing,
            row.mongo_entries,
            row.mongo_bytes,
            row.tail_commands_per_sec_per_replica,
            redis_x,
            publishing_ratio(rows, row),
            mongo_x,
        );
    }
    if let Some(top) = largest_cluster(rows) {
        let (redis_x, mongo_x) = ratios(rows, top);
        let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
        println!(
            "\ngoals at {} replicas (cluster): Redis cost {redis_x:.2}x of 1 replica (goal <= {:.1}x): {} \
             [publishing path alone: {:.2}x]; Mongo cost {mongo_x:.2}x (goal <= {:.1}x): {}",
            top.replicas,
            goals.redis,
            verdict(meets(redis_x, goals.redis)),
            publishing_ratio(rows, top),
            goals.mongo,
            verdict(meets(mongo_x, goals.mongo)),
        );
    }
}

/// One JSON line with every row and the verdict, for scripts.
pub fn json_line(rows: &[Row], goals: Goals, writes: u64, rate: f64, total_secs: f64) -> String {
    let rows_json: Vec<Value> = rows
        .iter()
        .map(|row| {
            let (redis_x, mongo_x) = ratios(rows, row);
            json!({
                "mode": row.mode.name(),
                "replicas": row.replicas,
                "writes": row.writes,
                "delivered": row.delivered,
                "lost": row.lost(),
                "duplicates": row.duplicates,
                "leases": row.leases,
                "leases_settled": row.settled,
                "redis_cmds_per_msg": finite(row.redis_all),
                "redis_evalsha_per_msg": finite(row.redis_evalsha),
                "redis_publish_per_msg": finite(row.redis_publish),
                "redis_idle_cmds_per_sec": finite(row.redis_idle_per_sec),
                "redis_publishing_cmds_per_msg": finite(row.redis_publishing),
                "redis_publishing_ratio_vs_1": finite(publishing_ratio(rows, row)),
                "mongo_entries_per_entry": finite(row.mongo_entries),
                "mongo_bytes_per_entry": finite(row.mongo_bytes),
                "tail_cmds_per_sec_per_replica": finite(row.tail_commands_per_sec_per_replica),
                "window_secs": finite(row.window_secs),
                "redis_commands": row.redis_commands,
                "redis_ratio_vs_1": finite(redis_x),
                "mongo_ratio_vs_1": finite(mongo_x),
            })
        })
        .collect();
    let verdict = largest_cluster(rows).map(|top| {
        let (redis_x, mongo_x) = ratios(rows, top);
        json!({
            "replicas": top.replicas,
            "redis_ratio": finite(redis_x),
            "redis_goal": goals.redis,
            "redis_met": meets(redis_x, goals.redis),
            "redis_publishing_ratio": finite(publishing_ratio(rows, top)),
            "mongo_ratio": finite(mongo_x),
            "mongo_goal": goals.mongo,
            "mongo_met": meets(mongo_x, goals.mongo),
        })
    });
    json!({
        "scale": {
            "writes": writes,
            "rate_per_sec": rate,
            "total_secs": total_secs,
            "rows": rows_json,
            "goals": verdict,
        }
    })
    .to_string()
}

/// JSON has no NaN: an unknown figure is `null`.
fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!((value * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: Mode, replicas: usize, redis_all: f64, mongo_entries: f64) -> Row {
        Row {
            mode,
            replicas,
            writes: 10,
            delivered: 9,
            duplicates: 0,
            leases: vec![],
            settled: true,
            redis_all,
            redis_evalsha: 0.0,
            redis_publish: 0.0,
            redis_commands: Default::default(),
            redis_idle_per_sec: 0.0,
            redis_publishing: 0.0,
            mongo_entries,
            mongo_bytes: 0.0,
            tail_commands_per_sec_per_replica: 0.0,
            window_secs: 1.0,
        }
    }

    #[test]
    fn ratios_are_taken_against_the_one_replica_row_of_the_same_mode() {
        let rows = vec![
            row(Mode::Cluster, 1, 2.0, 1.0),
            row(Mode::Cluster, 5, 2.1, 2.5),
            row(Mode::EveryoneEverything, 1, 4.0, 1.0),
            row(Mode::EveryoneEverything, 5, 20.0, 5.0),
        ];
        let cases = [(1, (1.05, 2.5)), (3, (5.0, 5.0)), (0, (1.0, 1.0))];
        for (index, (redis_x, mongo_x)) in cases {
            let (r, m) = ratios(&rows, &rows[index]);
            assert!(
                (r - redis_x).abs() < 1e-9 && (m - mongo_x).abs() < 1e-9,
                "row {index}"
            );
        }
        assert!(meets(1.05, 1.1));
        assert!(!meets(2.5, 2.0));
        assert!(!meets(f64::NAN, 2.0));
    }

    #[test]
    fn a_missing_base_gives_no_ratio_and_null_in_json() {
        let rows = vec![row(Mode::Cluster, 2, 2.0, 1.0)];
        let (r, _) = ratios(&rows, &rows[0]);
        assert!(r.is_nan());
        let line = json_line(
            &rows,
            Goals {
                redis: 1.1,
                mongo: 2.0,
            },
            10,
            5.0,
            1.0,
        );
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["scale"]["rows"][0]["redis_ratio_vs_1"], Value::Null);
        assert_eq!(parsed["scale"]["rows"][0]["lost"], 1);
        assert_eq!(parsed["scale"]["goals"]["redis_met"], false);
    }
}
