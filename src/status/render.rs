//! The report as the aligned text table `redtail status` prints.
//!
//! Pure string building, so the layout is pinned by table tests. Member ids
//! are printed whole (never truncated): operators copy them into `kubectl`
//! and log searches.

use std::fmt::Write as _;

use super::report::{ClusterStatusReport, ShardRow};

/// What an absent value (no leader, no checkpoint) prints as.
const NONE: &str = "-";

const HEADER: [&str; 7] = [
    "SHARD",
    "LEADER",
    "STANDBY",
    "EPOCH",
    "CHECKPOINT",
    "LAG",
    "POSITION",
];

/// One line per shard under a header, then the summary line.
pub fn render_table(report: &ClusterStatusReport) -> String {
    let rows: Vec<[String; 7]> = report.shards.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    push_line(&mut out, &HEADER.map(str::to_owned), &widths);
    for row in &rows {
        push_line(&mut out, row, &widths);
    }
    out.push_str(&summary_line(report));
    out.push('\n');
    out
}

/// The last line: shards led and unled (naming the unled ones, which are
/// what an operator acts on), the members, and the worst lag.
pub fn summary_line(report: &ClusterStatusReport) -> String {
    let summary = &report.summary;
    let mut line = format!(
        "{} shards: {} led, {} unled",
        summary.shards, summary.led, summary.unled
    );
    if summary.unled > 0 {
        let unled: Vec<String> = report
            .shards
            .iter()
            .filter(|row| row.leader.is_none())
            .map(|row| row.shard.to_string())
            .collect();
        let _ = write!(line, " ({})", unled.join(", "));
    }
    let _ = write!(line, "; {} members", summary.members);
    if !report.members.is_empty() {
        let _ = write!(line, ": {}", report.members.join(", "));
    }
    if let Some(lag) = summary.max_lag_seconds {
        let _ = write!(line, "; max lag {}", format_lag(lag));
    }
    line
}

/// A lag in at most two units, short enough for a column: `42s`, `3m05s`,
/// `2h07m`, `3d04h`.
pub fn format_lag(seconds: u64) -> String {
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3_600 => format!("{minutes}m{:02}s", seconds % 60),
        3_600..86_400 => format!("{hours}h{:02}m", minutes % 60),
        _ => format!("{days}d{:02}h", hours % 24),
    }
}

fn cells(row: &ShardRow) -> [String; 7] {
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| NONE.to_owned());
    [
        row.shard.to_string(),
        text(&row.leader),
        text(&row.standby),
        row.epoch.map_or_else(|| NONE.to_owned(), |e| e.to_string()),
        text(&row.checkpoint_time),
        row.lag_seconds.map_or_else(|| NONE.to_owned(), format_lag),
        text(&row.checkpoint),
    ]
}

/// Left-aligned columns two spaces apart, without trailing spaces.
fn push_line(out: &mut String, cells: &[String; 7], widths: &[usize; 7]) {
    let mut line = String::new();
    for (cell, width) in cells.iter().zip(widths) {
        let _ = write!(line, "{cell:<width$}  ");
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::report::Summary;

    fn row(shard: u16, leader: Option<&str>, lag: Option<u64>) -> ShardRow {
        ShardRow {
            shard,
            leader: leader.map(str::to_owned),
            standby: Some("b-2".to_owned()),
            preferred: Some("a-1".to_owned()),
            epoch: leader.map(|_| 7),
            checkpoint: lag.map(|_| "7590176156653977607".to_owned()),
            checkpoint_time: lag.map(|_| "2026-01-01T00:00:00Z".to_owned()),
            lag_seconds: lag,
        }
    }

    fn report(shards: Vec<ShardRow>, members: &[&str]) -> ClusterStatusReport {
        let led = shards.iter().filter(|r| r.leader.is_some()).count();
        ClusterStatusReport {
            generated_at: "2026-01-01T00:00:05Z".to_owned(),
            reported_by: None,
            summary: Summary {
                shards: shards.len(),
                led,
                unled: shards.len() - led,
                members: members.len(),
                max_lag_seconds: shards.iter().filter_map(|r| r.lag_seconds).max(),
            },
            shards,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn lag_formats_table() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (185, "3m05s"),
            (3_599, "59m59s"),
            (3_600, "1h00m"),
            (7_620, "2h07m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
            (273_600, "3d04h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(format_lag(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn table_is_aligned_with_one_line_per_shard() {
        let table = render_table(&report(
            vec![
                row(0, Some("a-1"), Some(5)),
                row(1, None, None),
                row(12, Some("longer-member-9"), Some(185)),
            ],
            &["a-1", "longer-member-9"],
        ));
        let want = "\
SHARD  LEADER           STANDBY  EPOCH  CHECKPOINT            LAG    POSITION
0      a-1              b-2      7      2026-01-01T00:00:00Z  5s     7590176156653977607
1      -                b-2      -      -                     -      -
12     longer-member-9  b-2      7      2026-01-01T00:00:00Z  3m05s  7590176156653977607
3 shards: 2 led, 1 unled (1); 2 members: a-1, longer-member-9; max lag 3m05s
";
        assert_eq!(table, want);
    }

    #[test]
    fn summary_lines_table() {
        let cases = [
            (
                report(vec![row(0, Some("a-1"), Some(2))], &["a-1"]),
                "1 shards: 1 led, 0 unled; 1 members: a-1; max lag 2s",
            ),
            (
                report(vec![row(0, None, None), row(1, None, None)], &[]),
                "2 shards: 0 led, 2 unled (0, 1); 0 members",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(summary_line(&input), want);
        }
    }
}
