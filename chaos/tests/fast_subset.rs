//! The chaos suite's fast subset for CI: a leader SIGKILL and a rolling
//! restart of 3 cluster-mode instances, each with a few seconds of writes,
//! asserting nothing is lost and the lease and epoch invariants held (and
//! were actually exercised: a run that never saw a lease fails).
//!
//! It runs the workspace's `target/debug/redtail`, which `cargo test
//! --workspace` does not build for this package: build it first with
//! `cargo build -p redtail --bin redtail` (scripts/test.sh does).

use std::time::Duration;

use redtail_chaos::environment::Settings;
use redtail_chaos::report::{self, Verdict};
use redtail_chaos::scenarios;

fn settings() -> Settings {
    let binary = redtail_chaos::redtail_binary("debug").unwrap_or_else(|e| panic!("{e}"));
    Settings {
        binary,
        instances: 3,
        cluster: true,
        shards: 16,
        lease_ttl: Duration::from_secs(2),
        renew_interval: Duration::from_millis(400),
        rate: 200,
        write_for: Duration::from_secs(4),
        collections: 40,
        log_root: redtail_chaos::target_dir().join("chaos-ci"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_rolling_restart_lose_nothing_and_keep_one_leader() {
    let settings = settings();
    let mut reports = Vec::new();
    for name in ["sigkill", "rolling"] {
        let report = scenarios::run(name, &settings)
            .await
            .unwrap_or_else(|e| panic!("{name} could not run: {e:#}"));
        println!("{}", report::checks(&report));
        reports.push(report);
    }
    println!("{}", report::table(&reports));
    for report in &reports {
        assert_eq!(report.findings.lost, 0, "{}: lost writes", report.name);
        assert!(
            report.findings.written > 500,
            "{}: too few writes",
            report.name
        );
        for required in [
            "one holder per shard, epochs and checkpoints forward",
            "no publish from a superseded epoch",
        ] {
            let check = report
                .checks
                .iter()
                .find(|c| c.name == required)
                .unwrap_or_else(|| panic!("{}: no check {required:?}", report.name));
            assert_eq!(
                check.verdict,
                Verdict::Pass,
                "{}: {required}: {}",
                report.name,
                check.detail
            );
        }
        assert!(report.passed(), "{}", report::checks(report));
    }
}
