//! redtail's scale benchmark (issue 4): `scripts/scale-bench.sh`, or
//! `cargo run --release --example scale` after building the release binary.
//!
//! The design promises that adding replicas keeps the servers' load flat:
//! only a shard's leader publishes (Redis), and each instance reads only the
//! namespaces of its shards (Mongo). This measures both for 1, 2, 3 and 5
//! real `redtail` processes in cluster mode, and the same in oplogtoredis's
//! model (`OTR_CLUSTER=false`: everyone reads and publishes everything) for
//! comparison. Each configuration gets a fresh `redis-server` and a fresh
//! in-process mongo-sim, the same inserts over 100 collections at a steady
//! rate, and a subscriber that checks every write arrived exactly once.
//!
//! Not part of the test suite: the figures depend on the machine. Knobs
//! (environment): `REDTAIL_BIN`, `SCALE_WRITES` (default 20000),
//! `SCALE_RATE` (default 5000/s), `SCALE_REPLICAS` (default `1,2,3,5`),
//! `SCALE_MODES` (default `cluster,otr-model`).

#[path = "bench/knobs.rs"]
mod knobs;
#[path = "scale/load.rs"]
mod load;
#[path = "bench/processes.rs"]
#[allow(dead_code)] // only the Redis server, free_port and http_get are used here
mod processes;
#[path = "scale/replicas.rs"]
mod replicas;
#[path = "scale/report.rs"]
mod report;
#[path = "bench/server_stats.rs"]
#[allow(dead_code)]
mod server_stats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mongo_sim::{MongoSim, SimOptions};

use crate::knobs::{env_number, redtail_bin};
use crate::load::Subscriber;
use crate::processes::RedisServer;
use crate::replicas::{LeaseSpread, Replica};
use crate::report::{Goals, Mode, Row};

/// Where each replica's log goes.
const LOG_DIR: &str = "target/scale";
/// Shards of the cluster (the default).
const SHARDS: u64 = 64;
/// Warm standbys per shard (the default): the Mongo goal is 1 + this.
const STANDBYS: u64 = 1;
/// Bound on the replicas' start (all of them, to `/readyz`).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the wait for every shard to be led and every replica to lead:
/// replicas that joined a moment late get shards only by voluntary handoffs,
/// one per member every 10 s.
const LEASE_TIMEOUT: Duration = Duration::from_secs(45);
/// The idle window that measures the coordination's own Redis rate.
const IDLE_WINDOW: Duration = Duration::from_secs(2);
/// A delivery wait ends after this long without progress.
const STALL: Duration = Duration::from_secs(5);
/// Extra time after the last delivery, so late duplicates are counted.
const LINGER: Duration = Duration::from_millis(700);
/// Probing for the steady state lasts at least this long: redtail learns
/// namespaces from the entries it reads and narrows its oplog query in
/// periodic pushes (at most every 5 s), so a shorter warm-up would measure
/// the discovery, not the steady state.
const PROBE_MIN: Duration = Duration::from_secs(6);
/// And at most this long.
const PROBE_MAX: Duration = Duration::from_secs(15);
/// Pause between probe rounds.
const PROBE_PAUSE: Duration = Duration::from_secs(1);

/// The benchmark's knobs, from the environment.
struct Knobs {
    redtail_bin: PathBuf,
    writes: u64,
    rate: f64,
    replicas: Vec<usize>,
    modes: Vec<Mode>,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let replicas = std::env::var("SCALE_REPLICAS").unwrap_or_else(|_| "1,2,3,5".to_owned());
        let modes = std::env::var("SCALE_MODES").unwrap_or_else(|_| "cluster,otr-model".to_owned());
        let knobs = Self {
            redtail_bin: redtail_bin(),
            writes: env_number("SCALE_WRITES", 20_000u64)?.clamp(1, 1_000_000),
            rate: env_number("SCALE_RATE", 5_000f64)?.clamp(1.0, 100_000.0),
            replicas: replicas
                .split(',')
                .map(|r| r.trim().parse().ok().filter(|r| (1..=16).contains(r)))
                .collect::<Option<_>>()
                .with_context(|| format!("SCALE_REPLICAS={replicas:?} is not a list of 1..=16"))?,
            modes: modes
                .split(',')
                .map(|m| match m.trim() {
                    "cluster" => Some(Mode::Cluster),
                    "otr-model" => Some(Mode::EveryoneEverything),
                    _ => None,
                })
                .collect::<Option<_>>()
                .with_context(|| format!("SCALE_MODES={modes:?}: use cluster and/or otr-model"))?,
        };
        if !knobs.redtail_bin.exists() {
            bail!(
                "{} not found: run `cargo build --release -p redtail --bin redtail` first \
                 (scripts/scale-bench.sh does)",
                knobs.redtail_bin.display()
            );
        }
        Ok(knobs)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for &mode in &knobs.modes {
        for &replicas in &knobs.replicas {
            eprintln!(
                "scale: {:.1} s: {} with {replicas} replica(s)",
                started.elapsed().as_secs_f64(),
                mode.name()
            );
            let row = measure(&knobs, mode, replicas)
                .await
                .with_context(|| format!("{} with {replicas} replicas", mode.name()))?;
            eprintln!(
                "scale:   delivered {}/{}, {} duplicates, {:.3} Redis cmds/msg, {:.3} Mongo entries/entry",
                row.delivered, row.writes, row.duplicates, row.redis_all, row.mongo_entries
            );
            rows.push(row);
        }
    }
    let goals = Goals {
        redis: 1.1,
        mongo: 1.0 + STANDBYS as f64,
    };
    report::print_table(&rows, goals);
    println!(
        "{}",
        report::json_line(
            &rows,
            goals,
            knobs.writes,
            knobs.rate,
            started.elapsed().as_secs_f64()
        )
    );
    Ok(())
}

/// The settings that make a replica a cluster member or an oplogtoredis-style one.
fn settings_of(mode: Mode) -> Vec<(&'static str, String)> {
    match mode {
        Mode::Cluster => vec![
            ("OTR_CLUSTER", "true".to_owned()),
            ("OTR_CLUSTER_SHARDS", SHARDS.to_string()),
            ("OTR_CLUSTER_LEASE_TTL", "3s".to_owned()),
            ("OTR_CLUSTER_RENEW_INTERVAL", "500ms".to_owned()),
            ("OTR_CLUSTER_STANDBYS", STANDBYS.to_string()),
        ],
        Mode::EveryoneEverything => vec![("OTR_CLUSTER", "false".to_owned())],
    }
}

/// One configuration, on its own Redis and mongo-sim.
async fn measure(knobs: &Knobs, mode: Mode, count: usize) -> Result<Row> {
    let redis = RedisServer::start()?;
    let sim = MongoSim::start(SimOptions {
        oplog_size_mb: 256,
        ..SimOptions::default()
    })
    .context("starting mongo-sim")?;
    let settings = settings_of(mode);
    let logs = Path::new(LOG_DIR);
    let replicas = tokio::task::block_in_place(|| {
        replicas::start_all(
            count,
            |index| {
                Replica::spawn(
                    &knobs.redtail_bin,
                    &sim.url(),
                    &redis.url(),
                    &settings,
                    logs,
                    &format!("{}-{count}-{index}", mode.name()),
                )
            },
            READY_TIMEOUT,
        )
    })?;
    let spread = match mode {
        Mode::Cluster => tokio::task::block_in_place(|| {
            replicas::wait_for_leases(&replicas, SHARDS, LEASE_TIMEOUT)
        }),
        Mode::EveryoneEverything => LeaseSpread {
            settled: true,
            ..LeaseSpread::default()
        },
    };
    if !spread.settled {
        eprintln!(
            "scale:   leases not settled after {:?}: {:?} (measuring anyway)",
            spread.waited, spread.per_replica
        );
    }
    let subscriber = Subscriber::start(&redis.url()).await?;
    let probe = probe_steady_state(&sim, &subscriber, knobs.writes).await;
    eprintln!(
        "scale:   steady after {} probe rounds: Mongo returned {:?} entries per round of {}",
        probe.rounds,
        probe.returned_per_round,
        load::COLLECTIONS
    );

    // The coordination's own rate, with nothing to publish.
    let idle_before = server_stats::redis_calls(&redis.url()).await?;
    let idle_started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_after = server_stats::redis_calls(&redis.url()).await?;
    let idle_secs = idle_started.elapsed().as_secs_f64();
    let idle_per_sec = server_stats::redis_cost(&idle_before, &idle_after, 1).all / idle_secs;

    let before = server_stats::redis_calls(&redis.url()).await?;
    sim.counters().reset();
    let window = Instant::now();
    let write_time =
        tokio::task::block_in_place(|| load::write_steadily(&sim, knobs.writes, knobs.rate));
    let deadline = Instant::now() + Duration::from_secs(30);
    subscriber
        .wait_for(knobs.writes + probe.written, deadline, STALL, LINGER)
        .await;
    let after = server_stats::redis_calls(&redis.url()).await?;
    let mongo = sim.counters().snapshot();
    let window_secs = window.elapsed().as_secs_f64();
    let tally = subscriber.finish();
    if write_time.as_secs_f64() > 1.2 * knobs.writes as f64 / knobs.rate {
        eprintln!("scale:   the writer fell behind its rate ({write_time:?})");
    }

    let delivered = tally.delivered_of(knobs.writes);
    let redis_cost = server_stats::redis_cost(&before, &after, delivered);
    let per_entry = |value: u64| value as f64 / knobs.writes as f64;
    let tail_commands = mongo.command("getMore") + mongo.command("find");
    let row = Row {
        mode,
        replicas: count,
        writes: knobs.writes,
        delivered,
        duplicates: tally.duplicates(),
        leases: spread.per_replica,
        settled: spread.settled,
        redis_all: redis_cost.all,
        redis_evalsha: redis_cost.evalsha + redis_cost.eval,
        redis_publish: redis_cost.publish,
        redis_commands: redis_cost.deltas.clone(),
        redis_idle_per_sec: idle_per_sec,
        redis_publishing: redis_cost.all - idle_per_sec * window_secs / delivered.max(1) as f64,
        mongo_entries: per_entry(mongo.oplog_tail.documents),
        mongo_bytes: per_entry(mongo.oplog_tail.bytes),
        tail_commands_per_sec_per_replica: tail_commands as f64 / window_secs / count as f64,
        window_secs,
    };
    drop(replicas);
    sim.shutdown();
    drop(redis);
    Ok(row)
}

/// What the warm-up found.
struct Probe {
    /// Probe entries written (their writes are numbered from the load's end).
    written: u64,
    rounds: usize,
    /// Oplog entries Mongo returned (to all replicas) per round.
    returned_per_round: Vec<u64>,
}

/// Writes one insert per collection per round, waits for its delivery, and
/// notes what Mongo returned for it, until the figure stops changing (after
/// `PROBE_MIN`) or `PROBE_MAX` passes. Every replica thereby knows every
/// namespace, and the load is measured in the steady state a long-running
/// deployment is in.
async fn probe_steady_state(sim: &MongoSim, subscriber: &Subscriber, writes: u64) -> Probe {
    let started = Instant::now();
    let mut probe = Probe {
        written: 0,
        rounds: 0,
        returned_per_round: Vec::new(),
    };
    let round = load::COLLECTIONS as u64;
    loop {
        let before = sim.counters().snapshot().oplog_tail.documents;
        for seq in writes + probe.written..writes + probe.written + round {
            sim.engine().append_oplog_entry(load::insert_entry(seq));
        }
        probe.written += round;
        probe.rounds += 1;
        subscriber
            .wait_for(
                probe.written,
                Instant::now() + Duration::from_secs(5),
                STALL,
                PROBE_PAUSE,
            )
            .await;
        let returned = sim.counters().snapshot().oplog_tail.documents - before;
        probe.returned_per_round.push(returned);
        let last_two =
            &probe.returned_per_round[probe.returned_per_round.len().saturating_sub(2)..];
        let stable = last_two.len() == 2 && last_two[0] == last_two[1];
        if (stable && started.elapsed() >= PROBE_MIN) || started.elapsed() >= PROBE_MAX {
            return probe;
        }
    }
}
