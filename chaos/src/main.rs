//! `redtail-chaos`: runs the chaos scenarios and prints their table.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use redtail_chaos::environment::Settings;
use redtail_chaos::{report, scenarios};

/// Chaos scenarios against real redtail processes.
#[derive(Parser, Debug)]
struct Args {
    /// A scenario name, or `all`.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Instances at the start of each scenario.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// The redtail binary (default: target/release/redtail, else target/debug/redtail).
    #[arg(long)]
    redtail: Option<PathBuf>,
    /// OTR_CLUSTER for the instances (`false`: every instance publishes, dedup absorbs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    cluster: bool,
    /// OTR_CLUSTER_SHARDS.
    #[arg(long, default_value_t = 16)]
    shards: u16,
    /// OTR_CLUSTER_LEASE_TTL in milliseconds.
    #[arg(long, default_value_t = 2000)]
    lease_ttl_ms: u64,
    /// OTR_CLUSTER_RENEW_INTERVAL in milliseconds.
    #[arg(long, default_value_t = 400)]
    renew_ms: u64,
    /// Writes per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Seconds of steady writing after each fault.
    #[arg(long, default_value_t = 8)]
    write_secs: u64,
    /// Collections written to (over 3 databases).
    #[arg(long, default_value_t = 40)]
    collections: usize,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.list {
        for name in scenarios::ALL {
            println!("{name:14} {}", scenarios::describe(name));
        }
        return Ok(());
    }
    let binary = match args.redtail.clone() {
        Some(path) if path.is_file() => path,
        Some(path) => bail!("--redtail {}: no such file", path.display()),
        None => redtail_chaos::redtail_binary("release")
            .or_else(|_| redtail_chaos::redtail_binary("debug"))?,
    };
    let names: Vec<&str> = if args.scenario == "all" {
        scenarios::ALL.to_vec()
    } else {
        args.scenario.split(',').collect()
    };
    let settings = Settings {
        binary,
        instances: args.instances,
        cluster: args.cluster,
        shards: args.shards,
        lease_ttl: Duration::from_millis(args.lease_ttl_ms),
        renew_interval: Duration::from_millis(args.renew_ms),
        rate: args.rate,
        write_for: Duration::from_secs(args.write_secs),
        collections: args.collections,
        log_root: redtail_chaos::target_dir().join("chaos"),
    };
    println!(
        "redtail {} | {} instances | {} | {} writes/s over {} collections in {} databases | instance env: {}",
        settings.binary.display(),
        settings.instances,
        settings.mode(),
        settings.rate,
        settings.collections,
        redtail_chaos::environment::DATABASES.len(),
        settings
            .redtail_env()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let reports = runtime.block_on(async {
        let mut reports = Vec::new();
        for name in names {
            println!("\n== {name}: {}", scenarios::describe(name));
            match scenarios::run(name, &settings).await {
                Ok(r) => {
                    print!("{}", report::checks(&r));
                    reports.push(r);
                }
                Err(e) => {
                    println!("{name}: could not run: {e:#}");
                    reports.push(report::ScenarioReport {
                        name: name.to_string(),
                        mode: settings.mode().to_string(),
                        findings: Default::default(),
                        checks: vec![report::Check::judged(
                            "scenario ran",
                            false,
                            format!("{e:#}"),
                        )],
                        log_dir: String::new(),
                    });
                }
            }
        }
        reports
    });
    println!("\n{}", report::table(&reports));
    if !reports.iter().all(report::ScenarioReport::passed) {
        eprintln!("some scenarios failed");
        std::process::exit(1);
    }
    Ok(())
}
