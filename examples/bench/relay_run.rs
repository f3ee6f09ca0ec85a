//! Figures 2 and 3: the real relay, end to end. The benchmark writes oplog
//! entries straight into mongo-sim's oplog (no driver in the way), redtail
//! tails them over TCP and publishes to Redis, and a subscriber on the
//! collection channel notes when each write arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bson::{DateTime, Document};
use futures_util::StreamExt;
use mongo_sim::MongoSim;
use tokio::task::JoinHandle;

use crate::entries::{self, DATABASE};
use crate::server_stats::{self, MongoCost, RedisCost};

/// Send and delivery instants per write of one run, shared lock-free by the
/// writer thread and the subscriber task. Instants are nanoseconds since
/// `base`, plus one so that 0 can mean "not yet".
pub struct Ledger {
    run: u32,
    base: Instant,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    last_delivery: AtomicU64,
}

impl Ledger {
    /// Room for writes `0..capacity` of the run tagged `run`.
    pub fn new(run: u32, capacity: u64) -> Self {
        let slots = || (0..capacity).map(|_| AtomicU64::new(0)).collect();
        Self {
            run,
            base: Instant::now(),
            sent: slots(),
            received: slots(),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_delivery: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn mark_sent(&self, seq: u64) {
        self.sent[seq as usize].store(self.now(), Ordering::Relaxed);
    }

    /// Notes a delivery; messages of other runs or repeated ones are ignored.
    fn mark_received(&self, message: &[u8]) {
        let now = self.now();
        let seq = std::str::from_utf8(message)
            .ok()
            .and_then(entries::oid_hex_in_message)
            .and_then(|hex| entries::seq_of(self.run, hex));
        let Some(slot) = seq.and_then(|seq| self.received.get(seq as usize)) else {
            return;
        };
        if slot
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.last_delivery.fetch_max(now, Ordering::Relaxed);
            self.delivered.fetch_add(1, Ordering::Release);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// Delivery latencies in nanoseconds of every delivered write in `range`.
    fn latencies(&self, range: std::ops::Range<u64>) -> Vec<u64> {
        range
            .filter_map(|seq| {
                let sent = self.sent[seq as usize].load(Ordering::Relaxed);
                let received = self.received[seq as usize].load(Ordering::Relaxed);
                (sent > 0 && received > 0).then(|| received.saturating_sub(sent))
            })
            .collect()
    }
}

/// What a run needs: the simulator, Redis, and one redtail already started
/// against them.
pub struct RelayEnv<'a> {
    /// mongo-sim, in this process.
    pub sim: &'a MongoSim,
    /// The benchmark's Redis.
    pub redis_url: String,
    /// Bounds every wait for deliveries.
    pub delivery_timeout: Duration,
}

/// One run's subscriber and ledger.
struct Session {
    ns: String,
    ledger: Arc<Ledger>,
    subscriber: JoinHandle<()>,
}

impl Session {
    /// Subscribes to `bench.<collection>` and proves the path works with one
    /// warm-up write (sequence 0) before anything is measured.
    async fn open(
        env: &RelayEnv<'_>,
        collection: &str,
        run: u32,
        writes: u64,
        warm_up: bool,
    ) -> Result<Self> {
        let ns = format!("{DATABASE}.{collection}");
        let ledger = Arc::new(Ledger::new(run, writes + 1));
        let mut pubsub = redis::Client::open(env.redis_url.as_str())?
            .get_async_pubsub()
            .await?;
        pubsub.subscribe(&ns).await.context("subscribing")?;
        let subscriber = tokio::spawn({
            let ledger = ledger.clone();
            async move {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    ledger.mark_received(message.get_payload_bytes());
                }
            }
        });
        let session = Self {
            ns,
            ledger,
            subscriber,
        };
        if !warm_up {
            return Ok(session);
        }
        session.ledger.mark_sent(0);
        env.sim.engine().append_oplog_entry(entries::insert(
            &session.ns,
            entries::bench_id(run, 0),
            0,
            None,
        ));
        session
            .wait_for(1, Duration::from_secs(15))
            .await
            .context("the warm-up write never arrived")?;
        Ok(session)
    }

    /// The entries of writes `1..=writes`, built before the clock starts.
    fn build(&self, writes: u64) -> Vec<Document> {
        (1..=writes)
            .map(|seq| {
                entries::insert(&self.ns, entries::bench_id(self.ledger.run, seq), seq, None)
            })
            .collect()
    }

    /// Waits until `count` writes were delivered, failing after `timeout` or
    /// after 5 s without progress.
    async fn wait_for(&self, count: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = (self.ledger.delivered(), Instant::now());
        loop {
            let delivered = self.ledger.delivered();
            if delivered >= count {
                return Ok(());
            }
            if delivered != last.0 {
                last = (delivered, Instant::now());
            }
            if Instant::now() > deadline || last.1.elapsed() > Duration::from_secs(5) {
                bail!("{delivered} of {count} writes delivered when the wait ended");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

/// Appends one entry, stamping its send instant and `wall` just before.
fn append(sim: &MongoSim, ledger: &Ledger, seq: u64, mut entry: Document) {
    entry.insert("wall", DateTime::now());
    ledger.mark_sent(seq);
    sim.engine().append_oplog_entry(entry);
}

/// Result of a saturation run.
#[derive(Debug, Clone)]
pub struct Saturation {
    /// Writes measured (after the warm-up).
    pub writes: u64,
    /// Of which delivered before the wait ended.
    pub delivered: u64,
    /// How long appending all writes took (the writer's own speed).
    pub append_time: Duration,
    /// First append to last delivery.
    pub elapsed: Duration,
    /// Redis cost per message.
    pub redis: RedisCost,
    /// Mongo cost per message.
    pub mongo: MongoCost,
    /// Deliveries seen twice (should be 0).
    pub duplicates: u64,
}

impl Saturation {
    /// Delivered messages per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Appends `writes` inserts as fast as the simulator takes them and times
/// their delivery.
pub async fn saturation(
    env: &RelayEnv<'_>,
    collection: &str,
    run: u32,
    writes: u64,
) -> Result<Saturation> {
    let session = Session::open(env, collection, run, writes, true).await?;
    let batch = session.build(writes);
    let redis_before = server_stats::redis_calls(&env.redis_url).await?;
    let mongo_before = env.sim.counters().snapshot();

    let started = Instant::now();
    tokio::task::block_in_place(|| {
        for (seq, entry) in (1..).zip(batch) {
            append(env.sim, &session.ledger, seq, entry);
        }
    });
    let append_time = started.elapsed();
    let waited = session.wait_for(writes + 1, env.delivery_timeout).await;
    if let Err(error) = &waited {
        eprintln!("bench: saturation run {collection}: {error:#}");
    }
    let ledger = &session.ledger;
    let first_sent = ledger.sent[1].load(Ordering::Relaxed);
    let last = ledger.last_delivery.load(Ordering::Relaxed);
    let delivered = ledger.delivered().saturating_sub(1);
    // Let redtail's position write of the last batch land in the counts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let redis_after = server_stats::redis_calls(&env.redis_url).await?;
    let mongo_after = env.sim.counters().snapshot();
    Ok(Saturation {
        writes,
        delivered,
        append_time,
        elapsed: Duration::from_nanos(last.saturating_sub(first_sent)),
        redis: server_stats::redis_cost(&redis_before, &redis_after, delivered),
        mongo: server_stats::mongo_cost(&mongo_before, &mongo_after, delivered),
        duplicates: ledger.duplicates.load(Ordering::Relaxed),
    })
}

/// Result of a fixed-rate latency run.
#[derive(Debug, Clone)]
pub struct Latency {
    /// The rate asked for.
    pub target_rate: f64,
    /// The rate the writer really held.
    pub achieved_rate: f64,
    /// Writes made.
    pub writes: u64,
    /// Writes never delivered within the wait.
    pub lost: u64,
    /// p50, p90, p99, p99.9 and max, in microseconds.
    pub percentiles_us: [f64; 5],
    /// Redis cost per message at this rate.
    pub redis: RedisCost,
}

/// Writes inserts at `rate` per second for `duration` and measures each
/// one's delay from append to delivery.
pub async fn latency(
    env: &RelayEnv<'_>,
    collection: &str,
    run: u32,
    rate: f64,
    duration: Duration,
) -> Result<Latency> {
    let writes = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let session = Session::open(env, collection, run, writes, true).await?;
    let batch = session.build(writes);
    let redis_before = server_stats::redis_calls(&env.redis_url).await?;

    let written =
        tokio::task::block_in_place(|| paced_writes(env.sim, &session.ledger, batch, rate));
    if let Err(error) = session.wait_for(writes + 1, env.delivery_timeout).await {
        eprintln!("bench: latency run {collection}: {error:#}");
    }
    let redis_after = server_stats::redis_calls(&env.redis_url).await?;
    let mut latencies = session.ledger.latencies(1..writes + 1);
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    Ok(Latency {
        target_rate: rate,
        achieved_rate: writes as f64 / written.as_secs_f64().max(1e-9),
        writes,
        lost: writes - delivered,
        percentiles_us: [0.5, 0.9, 0.99, 0.999, 1.0].map(|q| percentile(&latencies, q) / 1000.0),
        redis: server_stats::redis_cost(&redis_before, &redis_after, delivered),
    })
}

/// Appends `batch` on schedule: write `k` is due at `k / rate` seconds, so
/// the writer catches up after a hiccup instead of drifting. Returns how
/// long it took. Bounded: the batch is finite and every write falls due.
fn paced_writes(sim: &MongoSim, ledger: &Ledger, batch: Vec<Document>, rate: f64) -> Duration {
    let started = Instant::now();
    let total = batch.len() as u64;
    let mut entries = (1..).zip(batch).peekable();
    while entries.peek().is_some() {
        let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while let Some((seq, entry)) = entries.next_if(|(seq, _)| *seq <= due) {
            append(sim, ledger, seq, entry);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    started.elapsed()
}

/// Result of a catch-up run.
#[derive(Debug, Clone)]
pub struct CatchUp {
    /// Writes made while redtail was stopped.
    pub writes: u64,
    /// Of which delivered before the wait ended.
    pub delivered: u64,
    /// How long appending them took (redtail stopped: the simulator's own speed).
    pub append_time: Duration,
    /// First delivery to last delivery.
    pub elapsed: Duration,
    /// Redis cost per message.
    pub redis: RedisCost,
}

impl CatchUp {
    /// Delivered messages per second; the first delivery only starts the clock.
    pub fn msgs_per_sec(&self) -> f64 {
        self.delivered.saturating_sub(1) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A backlog appended while redtail is down, drained after `start_redtail`
/// brings it back: redtail alone sets the pace, since the writer is done
/// before anything is read. `start_redtail` must resume from the position the
/// previous process saved (same Redis, no flush) and return once ready.
pub async fn catch_up<T>(
    env: &RelayEnv<'_>,
    collection: &str,
    run: u32,
    writes: u64,
    start_redtail: impl FnOnce() -> Result<T>,
) -> Result<(CatchUp, T)> {
    let session = Session::open(env, collection, run, writes, false).await?;
    let batch = session.build(writes);
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        for (seq, entry) in (1..).zip(batch) {
            append(env.sim, &session.ledger, seq, entry);
        }
    });
    let append_time = started.elapsed();
    let redis_before = server_stats::redis_calls(&env.redis_url).await?;
    let redtail = tokio::task::block_in_place(start_redtail)?;
    if let Err(error) = session.wait_for(writes, env.delivery_timeout).await {
        eprintln!("bench: catch-up run {collection}: {error:#}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let redis_after = server_stats::redis_calls(&env.redis_url).await?;
    let ledger = &session.ledger;
    let delivered = ledger.delivered();
    let first = (1..writes + 1)
        .map(|seq| ledger.received[seq as usize].load(Ordering::Relaxed))
        .filter(|&at| at > 0)
        .min()
        .unwrap_or(0);
    let last = ledger.last_delivery.load(Ordering::Relaxed);
    let result = CatchUp {
        writes,
        delivered,
        append_time,
        elapsed: Duration::from_nanos(last.saturating_sub(first)),
        redis: server_stats::redis_cost(&redis_before, &redis_after, delivered),
    };
    Ok((result, redtail))
}

/// The `q` quantile (nearest rank) of sorted values, 0 when empty.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        let cases = [
            (0.5, 500.0),
            (0.9, 900.0),
            (0.99, 990.0),
            (0.999, 999.0),
            (1.0, 1000.0),
            (0.0, 1.0),
        ];
        for (q, expected) in cases {
            assert_eq!(percentile(&values, q), expected, "q = {q}");
        }
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7], 0.99), 7.0);
    }
}
