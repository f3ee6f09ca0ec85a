//! The per-scenario verdict: the figures table and the list of checks, each
//! passed, failed or skipped with the reason, so a skipped check can never be
//! mistaken for a passed one.

use std::fmt::Write as _;
use std::time::Duration;

use crate::analysis::Findings;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Held.
    Pass,
    /// Did not hold.
    Fail,
    /// Not applicable in this run (the detail says why).
    Skip,
    /// Reported, not judged.
    Info,
}

/// One named check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Its outcome.
    pub verdict: Verdict,
    /// Figures or the reason.
    pub detail: String,
}

impl Check {
    /// A check that passes when `ok`.
    pub fn judged(name: &str, ok: bool, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail: detail.into(),
        }
    }

    /// A check with a fixed verdict.
    pub fn with(name: &str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            verdict,
            detail: detail.into(),
        }
    }
}

/// Everything about one scenario run.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// `cluster` or `all-publish`.
    pub mode: String,
    /// Delivery figures.
    pub findings: Findings,
    /// The checks.
    pub checks: Vec<Check>,
    /// Where the instance logs are.
    pub log_dir: String,
}

impl ScenarioReport {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.verdict != Verdict::Fail)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The summary table (Markdown, so docs/chaos.md can hold it verbatim).
pub fn table(reports: &[ScenarioReport]) -> String {
    let mut out = String::from(
        "| scenario | mode | written | delivered | duplicates | lost | max gap | p99 gap | takeover | result |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let f = &r.findings;
        let takeover = match (f.takeover, f.not_taken_over.is_empty()) {
            (Some(t), true) => secs(t),
            (_, false) => format!("none for shards {:?}", f.not_taken_over),
            (None, true) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.mode,
            f.written,
            f.delivered,
            f.duplicates,
            f.lost,
            secs(f.max_gap()),
            secs(f.p99_gap()),
            takeover,
            if r.passed() { "PASS" } else { "FAIL" }
        );
    }
    out
}

/// The checks of one scenario, one per line.
pub fn checks(report: &ScenarioReport) -> String {
    let mut out = format!(
        "{} ({}; logs in {}):\n",
        report.name, report.mode, report.log_dir
    );
    for c in &report.checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
            Verdict::Info => "INFO",
        };
        let _ = writeln!(out, "  [{tag}] {}: {}", c.name, c.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_fails_the_scenario_and_skips_do_not() {
        let report = |verdicts: &[Verdict]| ScenarioReport {
            name: "s".into(),
            mode: "cluster".into(),
            findings: Findings::default(),
            checks: verdicts
                .iter()
                .map(|v| Check::with("c", v.clone(), ""))
                .collect(),
            log_dir: String::new(),
        };
        let cases = [
            (vec![Verdict::Pass, Verdict::Skip, Verdict::Info], true),
            (vec![Verdict::Pass, Verdict::Fail], false),
            (vec![], true),
        ];
        for (verdicts, passed) in cases {
            let r = report(&verdicts);
            assert_eq!(r.passed(), passed);
            assert!(table(&[r]).contains(if passed { "PASS" } else { "FAIL" }));
        }
    }
}
