//! The printed table (for people) and the final JSON line (for machines),
//! with the goals next to the figures they judge.

use std::time::Duration;

use serde_json::{Value, json};

use crate::relay_run::{CatchUp, Latency, Saturation};
use crate::script_ceiling::Ceiling;
use crate::server_stats::{MongoCost, RedisCost};
use crate::transform_rate::TransformRate;

/// Goal: redtail at saturation reaches at least this share of the script ceiling.
pub const GOAL_CEILING_SHARE: f64 = 0.5;
/// Goal: p99 delivery latency at the fixed rate, in milliseconds.
pub const GOAL_P99_MS: f64 = 5.0;
/// Goal: redtail's peak resident memory, in MiB.
pub const GOAL_RSS_MIB: f64 = 50.0;

/// Everything measured for one `OTR_REDIS_BATCH_SIZE`.
#[derive(Debug, Clone)]
pub struct BatchRun {
    /// The batch size redtail ran with.
    pub batch_size: usize,
    /// Figure 2 (and 5).
    pub saturation: Saturation,
    /// Figure 2, redtail alone: a backlog drained after a restart.
    pub catch_up: CatchUp,
    /// Figure 3.
    pub latency: Latency,
    /// Figure 4: `VmHWM` after the saturation and latency runs.
    pub peak_rss_kib: u64,
    /// `VmRSS` at the same moment.
    pub rss_kib: u64,
    /// `VmHWM` of the process that drained the catch-up backlog.
    pub catch_up_peak_rss_kib: u64,
}

/// The whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Figure 1.
    pub transform: Vec<TransformRate>,
    /// Figures 2-5 per batch size.
    pub runs: Vec<BatchRun>,
    /// Figure 6 per publications-per-call.
    pub ceilings: Vec<Ceiling>,
    /// Wall time of the whole benchmark.
    pub total: Duration,
}

impl Report {
    fn ceiling(&self, per_call: usize) -> Option<&Ceiling> {
        self.ceilings
            .iter()
            .find(|c| c.publications_per_call == per_call)
    }

    /// Share of the single-publication script ceiling (the goal) and
    /// of the ceiling with as many publications per call as redtail batches.
    fn shares(&self, run: &BatchRun) -> (Option<f64>, Option<f64>) {
        self.shares_of(run.saturation.msgs_per_sec(), run)
    }

    /// The same shares for the catch-up rate.
    fn catch_up_shares(&self, run: &BatchRun) -> (Option<f64>, Option<f64>) {
        self.shares_of(run.catch_up.msgs_per_sec(), run)
    }

    fn shares_of(&self, rate: f64, run: &BatchRun) -> (Option<f64>, Option<f64>) {
        let share = |c: &Ceiling| rate / c.msgs_per_sec();
        (
            self.ceiling(1).map(share),
            self.ceiling(run.batch_size).map(share),
        )
    }

    /// The human-readable table.
    pub fn print_table(&self) {
        println!();
        println!(
            "redtail benchmark: 127.0.0.1 only; mongo-sim (7.0) in process, redis-server and redtail as processes"
        );
        println!(
            "machine: {} cores available",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!();
        println!("1. transform, no I/O                               entries/s   publications/s");
        for t in &self.transform {
            let pubs = t.publications as f64 / t.elapsed.as_secs_f64();
            let name = format!("{} [{} entries]", t.corpus, t.corpus_len);
            println!(
                "   {name:<46} {:>12} {:>16}",
                thousands(t.entries_per_sec()),
                thousands(pubs)
            );
        }
        println!();
        let header: String = self
            .runs
            .iter()
            .map(|r| format!("{:>16}", format!("batch {}", r.batch_size)))
            .collect();
        println!("   OTR_REDIS_BATCH_SIZE                         {header}   goal");
        let row = |label: &str, cell: &dyn Fn(&BatchRun) -> String, goal: &str| {
            let cells: String = self
                .runs
                .iter()
                .map(|r| format!("{:>16}", cell(r)))
                .collect();
            println!("   {label:<44} {cells}   {goal}");
        };
        println!("2. saturation");
        row(
            "msgs/s (N / first append..last delivery)",
            &|r| thousands(r.saturation.msgs_per_sec()),
            "",
        );
        row(
            "delivered / written",
            &|r| format!("{}/{}", r.saturation.delivered, r.saturation.writes),
            "all",
        );
        row(
            "writer's own append rate, entries/s",
            &|r| thousands(r.saturation.writes as f64 / r.saturation.append_time.as_secs_f64()),
            "",
        );
        let goal = format!(">= {GOAL_CEILING_SHARE}");
        row(
            "share of script ceiling (1 publication/call)",
            &|r| opt(self.shares(r).0, 2),
            &goal,
        );
        row(
            "share of script ceiling (same publications/call)",
            &|r| opt(self.shares(r).1, 2),
            "",
        );
        println!("2b. catch-up: backlog written while redtail was stopped, then drained");
        row(
            "msgs/s (first..last delivery)",
            &|r| thousands(r.catch_up.msgs_per_sec()),
            "",
        );
        row(
            "delivered / written",
            &|r| format!("{}/{}", r.catch_up.delivered, r.catch_up.writes),
            "all",
        );
        row(
            "mongo-sim append rate, redtail stopped",
            &|r| thousands(r.catch_up.writes as f64 / r.catch_up.append_time.as_secs_f64()),
            "",
        );
        row(
            "share of script ceiling (1 publication/call)",
            &|r| opt(self.catch_up_shares(r).0, 2),
            "",
        );
        row(
            "share of script ceiling (same publications/call)",
            &|r| opt(self.catch_up_shares(r).1, 2),
            "",
        );
        println!("3. latency, oplog append -> subscriber");
        let p99_goal = format!("p99 < {GOAL_P99_MS} ms");
        row(
            "rate held, msgs/s",
            &|r| thousands(r.latency.achieved_rate),
            "",
        );
        for (index, label) in ["p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"]
            .iter()
            .enumerate()
        {
            let goal = if index == 2 { p99_goal.as_str() } else { "" };
            row(
                label,
                &|r| format!("{:.2}", r.latency.percentiles_us[index] / 1000.0),
                goal,
            );
        }
        row("not delivered", &|r| r.latency.lost.to_string(), "0");
        println!("4. memory of the redtail process");
        let rss_goal = format!("< {GOAL_RSS_MIB} MiB");
        row(
            "peak RSS (VmHWM) MiB",
            &|r| format!("{:.1}", r.peak_rss_kib as f64 / 1024.0),
            &rss_goal,
        );
        row(
            "RSS at the end (VmRSS) MiB",
            &|r| format!("{:.1}", r.rss_kib as f64 / 1024.0),
            "",
        );
        row(
            "peak RSS draining the catch-up backlog MiB",
            &|r| format!("{:.1}", r.catch_up_peak_rss_kib as f64 / 1024.0),
            &rss_goal,
        );
        println!("5. cost per published message (saturation run)");
        row(
            "Redis commands, all (script's inner ones too)",
            &|r| format!("{:.3}", r.saturation.redis.all),
            "",
        );
        row(
            "Redis EVALSHA",
            &|r| format!("{:.3}", r.saturation.redis.evalsha),
            "",
        );
        row(
            "Redis EVAL",
            &|r| format!("{:.3}", r.saturation.redis.eval),
            "",
        );
        row(
            "Redis PUBLISH",
            &|r| format!("{:.3}", r.saturation.redis.publish),
            "",
        );
        row(
            "Redis EVALSHA at the fixed rate",
            &|r| format!("{:.3}", r.latency.redis.evalsha),
            "",
        );
        row(
            "Redis EVALSHA in the catch-up",
            &|r| format!("{:.3}", r.catch_up.redis.evalsha),
            "",
        );
        row(
            "Mongo commands",
            &|r| format!("{:.4}", r.saturation.mongo.commands),
            "",
        );
        row(
            "Mongo getMore",
            &|r| format!("{:.4}", r.saturation.mongo.get_mores),
            "",
        );
        row(
            "Mongo oplog entries returned",
            &|r| format!("{:.3}", r.saturation.mongo.oplog_documents),
            "",
        );
        row(
            "Mongo oplog bytes returned",
            &|r| format!("{:.0}", r.saturation.mongo.oplog_bytes),
            "",
        );
        println!("6. script ceiling (redis-benchmark, 50 clients, same Redis)");
        for c in &self.ceilings {
            println!(
                "   {:<44} {:>16} calls/s = {} msgs/s",
                format!("{} publication(s) per EVALSHA", c.publications_per_call),
                thousands(c.calls_per_sec),
                thousands(c.msgs_per_sec())
            );
        }
        println!();
        println!("goals: {}", self.verdicts().join("; "));
        println!(
            "total time {:.1} s; redtail logs and /metrics in target/bench/",
            self.total.as_secs_f64()
        );
        println!();
    }

    /// One line per goal, with the best batch size's figure.
    fn verdicts(&self) -> Vec<String> {
        let best_share = self
            .runs
            .iter()
            .filter_map(|r| self.shares(r).0)
            .fold(f64::NAN, f64::max);
        let best_p99 = self
            .runs
            .iter()
            .map(|r| r.latency.percentiles_us[2] / 1000.0)
            .fold(f64::NAN, f64::min);
        let best_catch_up = self
            .runs
            .iter()
            .filter_map(|r| self.catch_up_shares(r).0)
            .fold(f64::NAN, f64::max);
        let peak = self
            .runs
            .iter()
            .map(|r| r.peak_rss_kib.max(r.catch_up_peak_rss_kib) as f64 / 1024.0)
            .fold(f64::NAN, f64::max);
        // NaN (nothing measured) compares false everywhere, hence the first arm.
        let verdict = |value: f64, met: bool| match (value.is_nan(), met) {
            (true, _) => "not measured",
            (false, true) => "met",
            (false, false) => "MISSED",
        };
        vec![
            format!(
                "saturation {best_share:.2} x the 1-publication script ceiling (best batch size) {} \
                 (catch-up: {best_catch_up:.2} x)",
                verdict(best_share, best_share >= GOAL_CEILING_SHARE)
            ),
            format!(
                "p99 {best_p99:.2} ms (best batch size) {}",
                verdict(best_p99, best_p99 < GOAL_P99_MS)
            ),
            format!(
                "peak RSS {peak:.1} MiB (worst run) {}",
                verdict(peak, peak < GOAL_RSS_MIB)
            ),
        ]
    }

    /// Everything above as one JSON object on one line, prefixed so it can be grepped.
    pub fn json_line(&self) -> String {
        let transform: Vec<Value> = self
            .transform
            .iter()
            .map(|t| {
                json!({
                    "corpus": t.corpus, "corpus_entries": t.corpus_len, "entries": t.entries,
                    "publications": t.publications, "seconds": t.elapsed.as_secs_f64(),
                    "entries_per_sec": t.entries_per_sec(),
                })
            })
            .collect();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|r| {
                let (share_single, share_same) = self.shares(r);
                let s = &r.saturation;
                let l = &r.latency;
                json!({
                    "batch_size": r.batch_size,
                    "saturation": {
                        "writes": s.writes, "delivered": s.delivered, "duplicates": s.duplicates,
                        "seconds": s.elapsed.as_secs_f64(), "append_seconds": s.append_time.as_secs_f64(),
                        "msgs_per_sec": s.msgs_per_sec(),
                        "share_of_ceiling_1_per_call": share_single,
                        "share_of_ceiling_same_per_call": share_same,
                        "redis_per_msg": redis_json(&s.redis), "mongo_per_msg": mongo_json(&s.mongo),
                    },
                    "latency": {
                        "target_rate": l.target_rate, "achieved_rate": l.achieved_rate,
                        "writes": l.writes, "lost": l.lost,
                        "p50_ms": l.percentiles_us[0] / 1000.0, "p90_ms": l.percentiles_us[1] / 1000.0,
                        "p99_ms": l.percentiles_us[2] / 1000.0, "p999_ms": l.percentiles_us[3] / 1000.0,
                        "max_ms": l.percentiles_us[4] / 1000.0,
                        "redis_per_msg": redis_json(&l.redis),
                    },
                    "catch_up": {
                        "writes": r.catch_up.writes, "delivered": r.catch_up.delivered,
                        "seconds": r.catch_up.elapsed.as_secs_f64(),
                        "append_seconds": r.catch_up.append_time.as_secs_f64(),
                        "msgs_per_sec": r.catch_up.msgs_per_sec(),
                        "share_of_ceiling_1_per_call": self.catch_up_shares(r).0,
                        "share_of_ceiling_same_per_call": self.catch_up_shares(r).1,
                        "redis_per_msg": redis_json(&r.catch_up.redis),
                        "peak_rss_kib": r.catch_up_peak_rss_kib,
                    },
                    "peak_rss_kib": r.peak_rss_kib, "rss_kib": r.rss_kib,
                })
            })
            .collect();
        let ceilings: Vec<Value> = self
            .ceilings
            .iter()
            .map(|c| json!({"publications_per_call": c.publications_per_call, "calls_per_sec": c.calls_per_sec, "msgs_per_sec": c.msgs_per_sec()}))
            .collect();
        let line = json!({
            "bench": "redtail",
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "transform": transform,
            "runs": runs,
            "script_ceiling": ceilings,
            "goals": {"ceiling_share": GOAL_CEILING_SHARE, "p99_ms": GOAL_P99_MS, "rss_mib": GOAL_RSS_MIB},
            "total_seconds": self.total.as_secs_f64(),
        });
        format!("BENCH_JSON {line}")
    }
}

fn redis_json(cost: &RedisCost) -> Value {
    json!({"all": cost.all, "evalsha": cost.evalsha, "eval": cost.eval, "publish": cost.publish, "calls": cost.deltas})
}

fn mongo_json(cost: &MongoCost) -> Value {
    json!({"commands": cost.commands, "get_more": cost.get_mores, "oplog_documents": cost.oplog_documents, "oplog_bytes": cost.oplog_bytes})
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `1234567.8` -> `1,234,568`.
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        let cases = [
            (0.0, "0"),
            (999.4, "999"),
            (1000.0, "1,000"),
            (1234567.8, "1,234,568"),
            (f64::NAN, "-"),
        ];
        for (value, expected) in cases {
            assert_eq!(thousands(value), expected);
        }
    }
}
