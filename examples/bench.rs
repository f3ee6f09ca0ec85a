//! redtail's benchmark (issue 3): `scripts/bench.sh`, or
//! `cargo run --release --example bench` after `cargo build --release`.
//!
//! It measures, in one run on this machine: the pure transform's rate; the
//! end-to-end rate at saturation and the latency at a fixed rate, through
//! mongo-sim (in process), the release `redtail` binary and a `redis-server`
//! of its own; redtail's peak memory; what each message costs Redis and
//! Mongo; and the ceiling of redtail's Lua script on the same Redis, from
//! `redis-benchmark`. It prints a table and, last, one JSON line.
//!
//! Not part of the test suite: the figures depend on the machine. Knobs
//! (environment): `REDTAIL_BIN`, `BENCH_WRITES` (saturation writes, default
//! 200000), `BENCH_RATE` (default 5000/s), `BENCH_LATENCY_SECS` (default 10),
//! `BENCH_BATCH_SIZES` (default `1,100`).

#[path = "bench/entries.rs"]
mod entries;
#[path = "bench/knobs.rs"]
mod knobs;
#[path = "bench/processes.rs"]
mod processes;
#[path = "bench/relay_run.rs"]
mod relay_run;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/script_ceiling.rs"]
mod script_ceiling;
#[path = "bench/server_stats.rs"]
mod server_stats;
#[path = "bench/transform_rate.rs"]
mod transform_rate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use mongo_sim::{MongoSim, MongoVersion, SimOptions};
use redtail::transform::{TransformSettings, Transformer};

use crate::knobs::{env_number, redtail_bin};
use crate::processes::{RedisServer, Redtail};
use crate::relay_run::RelayEnv;
use crate::report::{BatchRun, Report};

/// Where redtail's logs of each run go.
const LOG_DIR: &str = "target/bench";

/// The benchmark's knobs, from the environment.
struct Knobs {
    redtail_bin: PathBuf,
    writes: u64,
    rate: f64,
    latency_secs: f64,
    batch_sizes: Vec<usize>,
}

impl Knobs {
    fn from_env() -> Result<Self> {
        let batch_sizes = std::env::var("BENCH_BATCH_SIZES").unwrap_or_else(|_| "1,100".to_owned());
        let knobs = Self {
            redtail_bin: redtail_bin(),
            writes: env_number("BENCH_WRITES", 200_000u64)?.clamp(1, 2_000_000),
            rate: env_number("BENCH_RATE", 5_000f64)?.clamp(1.0, 1_000_000.0),
            latency_secs: env_number("BENCH_LATENCY_SECS", 10f64)?.clamp(0.1, 120.0),
            batch_sizes: batch_sizes
                .split(',')
                .map(|size| size.trim().parse().ok().filter(|size| *size > 0))
                .collect::<Option<Vec<usize>>>()
                .with_context(|| {
                    format!("BENCH_BATCH_SIZES={batch_sizes:?} is not a list of positive numbers")
                })?,
        };
        if !knobs.redtail_bin.exists() {
            bail!(
                "{} not found: run `cargo build --release` first (scripts/bench.sh does)",
                knobs.redtail_bin.display()
            );
        }
        Ok(knobs)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let knobs = Knobs::from_env()?;
    let started = Instant::now();
    let mut report = Report::default();

    eprintln!("bench: 1/4 transform");
    report.transform = tokio::task::block_in_place(measure_transform)?;

    eprintln!("bench: starting redis-server");
    let redis = RedisServer::start()?;
    for (index, &batch_size) in knobs.batch_sizes.iter().enumerate() {
        eprintln!(
            "bench: {:.1} s: 2-3/4 relay runs with OTR_REDIS_BATCH_SIZE={batch_size}",
            started.elapsed().as_secs_f64()
        );
        // A fresh mongo-sim per column: each redtail starts on a small oplog,
        // and no column inherits the previous one's cursors or memory.
        let sim = MongoSim::start(SimOptions {
            version: MongoVersion::V7_0,
            oplog_size_mb: 1024,
            ..SimOptions::default()
        })
        .context("starting mongo-sim")?;
        let env = RelayEnv {
            sim: &sim,
            redis_url: redis.url(),
            delivery_timeout: Duration::from_secs(60),
        };
        // One failed column must not throw away the others.
        match relay_runs(&knobs, &env, batch_size, index as u32).await {
            Ok(run) => report.runs.push(run),
            Err(error) => eprintln!("bench: batch size {batch_size} not measured: {error:#}"),
        }
        sim.shutdown();
    }

    eprintln!(
        "bench: {:.1} s: 4/4 script ceiling with redis-benchmark",
        started.elapsed().as_secs_f64()
    );
    match measure_ceilings(&redis, &knobs.batch_sizes).await {
        Ok(ceilings) => report.ceilings = ceilings,
        Err(error) => eprintln!("bench: script ceiling not measured: {error:#}"),
    }
    report.total = started.elapsed();

    report.print_table();
    println!("{}", report.json_line());
    Ok(())
}

/// Figure 1, over the fixtures and over a synthetic insert/update/delete mix.
fn measure_transform() -> Result<Vec<transform_rate::TransformRate>> {
    let budget = Duration::from_secs(2);
    let fixtures = transform_rate::load_fixtures(Path::new("testdata/oplog_entries.json"))?;
    let mix = entries::synthetic_mix(3_000)
        .iter()
        .map(transform_rate::to_raw)
        .collect::<Result<Vec<_>>>()?;
    Ok(vec![
        transform_rate::measure(
            "fixtures (testdata/oplog_entries.json)",
            &fixtures,
            budget,
            50_000_000,
        ),
        transform_rate::measure(
            "synthetic insert/update-v2/delete",
            &mix,
            budget,
            50_000_000,
        ),
    ])
}

/// Figures 2-5 for one batch size: one redtail process, a saturation run,
/// then a fixed-rate latency run, then its memory high-water mark.
async fn relay_runs(
    knobs: &Knobs,
    env: &RelayEnv<'_>,
    batch_size: usize,
    index: u32,
) -> Result<BatchRun> {
    let mut conn = redis::Client::open(env.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    // A fresh Redis state: redtail starts at the end of the oplog instead of
    // resuming the previous run's position.
    redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await?;
    let start = || {
        Redtail::start(
            &knobs.redtail_bin,
            &env.sim.url(),
            &env.redis_url,
            &[("OTR_REDIS_BATCH_SIZE", batch_size.to_string())],
            Path::new(LOG_DIR),
            Duration::from_secs(60),
        )
    };
    let redtail = tokio::task::block_in_place(start)?;
    let saturation = relay_run::saturation(
        env,
        &format!("saturation_b{batch_size}"),
        100 + index,
        knobs.writes,
    )
    .await?;
    let latency = relay_run::latency(
        env,
        &format!("latency_b{batch_size}"),
        200 + index,
        knobs.rate,
        Duration::from_secs_f64(knobs.latency_secs),
    )
    .await?;
    let (peak_rss_kib, rss_kib) = redtail.memory_kib()?;
    if let Some(metrics) = redtail.metrics() {
        let path = Path::new(LOG_DIR).join(format!("metrics-batch{batch_size}.txt"));
        std::fs::write(&path, metrics).with_context(|| format!("writing {}", path.display()))?;
    }
    // SIGTERM: redtail saves its position, so the next one resumes there.
    tokio::task::block_in_place(|| redtail.stop());
    let (catch_up, redtail) = relay_run::catch_up(
        env,
        &format!("catch_up_b{batch_size}"),
        300 + index,
        knobs.writes,
        start,
    )
    .await?;
    let (catch_up_peak_rss_kib, _) = redtail.memory_kib()?;
    tokio::task::block_in_place(|| redtail.stop());
    Ok(BatchRun {
        batch_size,
        saturation,
        catch_up,
        latency,
        peak_rss_kib,
        rss_kib,
        catch_up_peak_rss_kib,
    })
}

/// Figure 6: the script ceiling with one publication per call, and with as
/// many per call as each batch size run above.
async fn measure_ceilings(
    redis: &RedisServer,
    batch_sizes: &[usize],
) -> Result<Vec<script_ceiling::Ceiling>> {
    let port = redis.port();
    let sha = script_ceiling::load_script(&redis.url()).await?;
    // The very message and channels redtail publishes for a benchmark insert.
    let entry = entries::insert(
        &format!("{}.ceiling", entries::DATABASE),
        entries::bench_id(999, 1),
        1,
        Some(bson::Timestamp {
            time: 1,
            increment: 1,
        }),
    );
    let publication = Transformer::new(TransformSettings::default())
        .apply(&transform_rate::to_raw(&entry)?)
        .publications
        .pop()
        .context("the transform published nothing for a benchmark insert")?;
    // A subscriber on the collection channel, as in the relay runs, so each
    // PUBLISH has the same fan-out to pay for.
    let mut pubsub = redis::Client::open(redis.url())?.get_async_pubsub().await?;
    pubsub.subscribe(&publication.channels[0]).await?;
    let drain = tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = pubsub.into_on_message();
        while messages.next().await.is_some() {}
    });
    // One publication per call is always measured: the goal compares with it.
    let mut sizes: Vec<usize> = [1].iter().chain(batch_sizes).copied().collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut ceilings = Vec::new();
    for per_call in sizes {
        let args = script_ceiling::evalsha_args(&sha, &publication, per_call);
        // About 200,000 publications each; fewer and unpipelined for big calls.
        let (requests, pipeline) = if per_call == 1 {
            (200_000, 16)
        } else {
            ((200_000 / per_call as u64).max(1_000), 1)
        };
        let ceiling = tokio::task::block_in_place(|| {
            let output =
                Path::new(LOG_DIR).join(format!("redis-benchmark-{per_call}-per-call.txt"));
            script_ceiling::run(
                port,
                &args,
                requests,
                pipeline,
                per_call,
                &output,
                Duration::from_secs(60),
            )
        })?;
        ceilings.push(ceiling);
    }
    drain.abort();
    Ok(ceilings)
}
