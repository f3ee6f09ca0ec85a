//! `mongo-sim`: run the simulator as a standalone server, for manual testing
//! with mongosh/PyMongo or for tests written outside Rust.
//!
//! Prints exactly one line, `ready <url>`, on stdout once it accepts
//! connections, then serves until killed.

use std::io::Write;

use anyhow::{Context, bail};
use clap::Parser;
use mongo_sim::{MongoSim, MongoVersion, SimOptions};

/// A MongoDB replica-set primary, in memory, for tests.
#[derive(Debug, Parser)]
#[command(name = "mongo-sim", version)]
struct Args {
    /// TCP port on 127.0.0.1 (0 picks a free one; the ready line tells which).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// MongoDB release to imitate: 4.4, 5.0, 6.0, 7.0 or 8.0.
    #[arg(long, default_value = "7.0")]
    mongo_version: String,
    /// Replica-set name.
    #[arg(long, default_value = "rs0")]
    repl_set: String,
    /// Capacity of local.oplog.rs in MiB.
    #[arg(long, default_value_t = 64)]
    oplog_size_mb: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(version) = MongoVersion::parse(&args.mongo_version) else {
        bail!(
            "unsupported --mongo-version {:?} (use 4.4, 5.0, 6.0, 7.0 or 8.0)",
            args.mongo_version
        );
    };
    let sim = MongoSim::start(SimOptions {
        version,
        repl_set: args.repl_set,
        oplog_size_mb: args.oplog_size_mb,
        port: args.port,
        ..SimOptions::default()
    })
    .context("starting mongo-sim")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready {}", sim.url()).context("writing the ready line")?;
    stdout.flush().context("writing the ready line")?;
    drop(stdout);
    // Serve until the process is killed; the server runs on its own threads.
    loop {
        std::thread::park();
    }
}
