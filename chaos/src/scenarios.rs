//! The scenarios. Each builds a fresh [`Environment`], writes steadily,
//! injects its fault at a known instant, keeps writing, and hands over to
//! [`Environment::finish`] for the common checks, adding its own.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::analysis::FaultMark;
use crate::environment::{Environment, Settings};
use crate::report::{Check, ScenarioReport, Verdict};

/// Every scenario, in the order `all` runs them.
pub const ALL: [&str; 10] = [
    "sigkill",
    "sigstop",
    "redis-cut",
    "mongo-cut",
    "redis-latency",
    "redis-restart",
    "step-down",
    "rolling",
    "scale",
    "transaction",
];

/// What scenario `name` does, for `--help`-style listings and the docs.
pub fn describe(name: &str) -> &'static str {
    match name {
        "sigkill" => "SIGKILL the instance leading the most shards",
        "sigstop" => {
            "SIGSTOP the leader for 2x the lease TTL, then SIGCONT: its late batch must be fenced (or never sent)"
        }
        "redis-cut" => "cut the leader off from Redis only (its proxy) for 2x TTL + 1s",
        "mongo-cut" => "cut the leader off from Mongo only (its proxy) for 2x TTL + 1s",
        "redis-latency" => "0.5s, 1s, 2s then 3s of latency on the leader's Redis path, 1.5s each",
        "redis-restart" => {
            "restart redis-server without persistence (leases, epochs, checkpoints, dedup keys gone)"
        }
        "step-down" => "mongo-sim steps down for 3s",
        "rolling" => "SIGTERM each instance in turn, wait for exit 0, start a replacement",
        "scale" => "scale 3 -> 5 -> 3 under load",
        "transaction" => "transactions over 3 shards every 5th write",
        _ => "unknown",
    }
}

/// Runs scenario `name`.
pub async fn run(name: &str, settings: &Settings) -> Result<ScenarioReport> {
    let mut env = Environment::start(settings, name).await?;
    let warm_up = Duration::from_secs(2);
    let ttl = settings.lease_ttl;
    let txn_every = (name == "transaction").then_some(5);
    env.start_writing(txn_every);
    tokio::time::sleep(warm_up).await;
    let mut extra = Vec::new();
    let mut fault = None;
    match name {
        "sigkill" => {
            let (victim, mark) = env.pick_leader().await?;
            env.instances[victim].signal("KILL")?;
            extra.push(victim_check(&env, victim, &mark));
            fault = Some(mark);
            rest(settings).await;
        }
        "sigstop" => {
            let (victim, mark) = env.pick_leader().await?;
            env.instances[victim].signal("STOP")?;
            extra.push(victim_check(&env, victim, &mark));
            let mark_led = mark.shards.len();
            fault = Some(mark);
            tokio::time::sleep(ttl * 2).await;
            env.instances[victim].signal("CONT")?;
            rest(settings).await;
            extra.push(fenced_check(&env, victim, Some(mark_led)).await);
        }
        "redis-cut" | "mongo-cut" => {
            let (victim, mark) = env.pick_leader().await?;
            let instance = &env.instances[victim];
            let proxy = if name == "redis-cut" {
                &instance.redis_proxy
            } else {
                &instance.mongo_proxy
            };
            proxy.cut();
            extra.push(victim_check(&env, victim, &mark));
            fault = Some(mark);
            tokio::time::sleep(ttl * 2 + Duration::from_secs(1)).await;
            env.instances[victim].redis_proxy.heal();
            env.instances[victim].mongo_proxy.heal();
            rest(settings).await;
            extra.push(fenced_check(&env, victim, None).await);
        }
        "redis-latency" => {
            let (victim, mark) = env.pick_leader().await?;
            extra.push(victim_check(&env, victim, &mark));
            fault = Some(mark);
            for ms in [500, 1000, 2000, 3000] {
                env.instances[victim]
                    .redis_proxy
                    .set_latency(Duration::from_millis(ms));
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            env.instances[victim]
                .redis_proxy
                .set_latency(Duration::ZERO);
            rest(settings).await;
            extra.push(fenced_check(&env, victim, None).await);
        }
        "redis-restart" => {
            env.leases.with(|audit| audit.check_checkpoints = false);
            tokio::task::block_in_place(|| env.redis.restart_empty())?;
            env.redis_lost_data();
            extra.push(Check::with(
                "checkpoints forward",
                Verdict::Skip,
                "Redis lost its data: checkpoints may go back here, and epochs restart (audited as a new generation)",
            ));
            rest(settings).await;
        }
        "step-down" => {
            env.sim.faults().step_down(Duration::from_secs(3));
            rest(settings).await;
        }
        "rolling" => {
            let originals = env.instances.len();
            for _ in 0..originals {
                extra.push(graceful_stop(&mut env, 0).await?);
                env.add_instance().await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        "scale" => {
            let originals = env.instances.len();
            for _ in 0..2 {
                env.add_instance().await?;
            }
            tokio::time::sleep(Duration::from_secs(4)).await;
            for _ in 0..(env.instances.len() - originals) {
                extra.push(graceful_stop(&mut env, 0).await?);
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        "transaction" => rest(settings).await,
        other => bail!("unknown scenario {other:?}; known: {}", ALL.join(", ")),
    }
    let report = env.finish(name, fault, extra).await?;
    Ok(report)
}

/// Keeps writing for the rest of the steady period.
async fn rest(settings: &Settings) {
    tokio::time::sleep(settings.write_for).await;
}

fn victim_check(env: &Environment, victim: usize, mark: &FaultMark) -> Check {
    Check::with(
        "victim",
        Verdict::Info,
        format!(
            "{} (pid {}) leading shards {:?}",
            env.instances[victim].name,
            env.instances[victim].pid(),
            mark.shards.keys().collect::<Vec<_>>()
        ),
    )
}

/// The victim's fenced batches (`redtail_fenced_batches_total`, else log
/// lines about fencing). Judged only when `required` (the SIGSTOP scenario):
/// a leader that wakes up after its leases expired must not publish with
/// them. Either its stage sends a late batch first and the script refuses it
/// (`FENCED`), or its coordinator demotes it first and the stage stops each
/// shard before sending anything ("lost the lease"); which comes first is a
/// race between two tasks waking together, and both are correct. So every
/// shard it led must show one of the two. Elsewhere the figure is only
/// reported. The hard check everywhere is the epoch order of what was
/// published.
async fn fenced_check(env: &Environment, victim: usize, required: Option<usize>) -> Check {
    let instance = &env.instances[victim];
    let metric = instance.metric("redtail_fenced_batches_total").await;
    let logs = instance.logs();
    let count = |needle: &str| logs.lines().filter(|l| l.contains(needle)).count();
    let fenced_lines = count("publish FENCED");
    let demoted_lines = count("lost the lease of a shard");
    let detail = format!(
        "{}: redtail_fenced_batches_total = {}, {fenced_lines} shards stopped by FENCED, \
         {demoted_lines} by self-demotion",
        instance.name,
        metric.map_or("unavailable".to_string(), |m| m.to_string())
    );
    let name = "victim's late batches fenced";
    match required {
        _ if !env.settings.cluster => Check::with(
            name,
            Verdict::Skip,
            format!("cluster mode off (no fencing): {detail}"),
        ),
        Some(led) => Check::judged(
            name,
            led > 0 && fenced_lines + demoted_lines >= led,
            format!("{detail} (of {led} led)"),
        ),
        None => Check::with(name, Verdict::Info, detail),
    }
}

/// SIGTERMs instance `index`, requires exit 0 within the grace + 5 s, and
/// removes it.
async fn graceful_stop(env: &mut Environment, index: usize) -> Result<Check> {
    let mut instance = env.instances.remove(index);
    instance.signal("TERM")?;
    let started = tokio::time::Instant::now();
    let status = instance.wait_exit(Duration::from_secs(15)).await;
    let took = started.elapsed();
    let ok = status.is_some_and(|s| s.success());
    Ok(Check::judged(
        &format!("{} exits 0 on SIGTERM", instance.name),
        ok,
        format!("status {status:?} after {took:?}"),
    ))
}
