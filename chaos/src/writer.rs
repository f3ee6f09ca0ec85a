//! The load: known documents inserted at a steady rate, round-robin over many
//! collections chosen so that every shard gets traffic, optionally with
//! multi-document transactions that span shards.
//!
//! Every document has a unique string `_id`, so a message names exactly one
//! write and `idstr == id` on the per-document channel. A write counts as
//! written only once Mongo acknowledged it; an uncertain write is retried with
//! the same `_id` and a duplicate-key reply then proves it was written.

use std::time::Duration;

use bson::doc;
use cluster::ShardMap;
use mongodb::Client;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

/// One collection the writer uses, with the shard it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Database.
    pub db: String,
    /// Collection.
    pub coll: String,
    /// Its shard (`xxh3(db.coll) % S`, the cluster's own mapping).
    pub shard: u16,
}

impl Namespace {
    /// `db.coll`, also the collection channel's name.
    pub fn full(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }
}

/// An acknowledged write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The document's `_id`.
    pub id: String,
    /// `db.coll`.
    pub ns: String,
    /// The namespace's shard.
    pub shard: u16,
    /// When Mongo acknowledged it.
    pub at: Instant,
}

/// What to write.
#[derive(Debug, Clone)]
pub struct WriterPlan {
    /// The collections, written round-robin.
    pub namespaces: Vec<Namespace>,
    /// Writes per second.
    pub rate: u32,
    /// How long to write.
    pub duration: Duration,
    /// Every this many writes, a transaction of three inserts over three
    /// shards replaces the single insert.
    pub txn_every: Option<u64>,
}

/// What the writer did.
#[derive(Debug, Default)]
pub struct WriterOutcome {
    /// Acknowledged writes, in acknowledgement order.
    pub written: Vec<Written>,
    /// Ids given up on after every retry failed (not expected anywhere).
    pub failed: Vec<String>,
    /// Committed transactions.
    pub transactions: usize,
}

/// Most attempts per write (50 ms apart, each bounded by `OP_TIMEOUT`).
const MAX_ATTEMPTS: usize = 100;
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// `count` collections over `dbs`, spread so every one of `shards` shards
/// gets `count / shards` (rounded up) collections at most, and each at least
/// one when `count >= shards`.
pub fn plan_namespaces(dbs: &[&str], count: usize, map: ShardMap) -> Vec<Namespace> {
    let per_shard = count.div_ceil(usize::from(map.shards()));
    let mut load = vec![0usize; usize::from(map.shards())];
    let mut chosen = Vec::with_capacity(count);
    for n in 0..count * 1000 {
        if chosen.len() == count {
            break;
        }
        let db = dbs[n % dbs.len()];
        let coll = format!("c{n}");
        let shard = map.shard_of(&format!("{db}.{coll}")).0;
        if load[usize::from(shard)] < per_shard {
            load[usize::from(shard)] += 1;
            chosen.push(Namespace {
                db: db.to_string(),
                coll,
                shard,
            });
        }
    }
    chosen
}

/// Three namespaces of pairwise different shards, starting the search at `start`.
pub fn spanning_namespaces(namespaces: &[Namespace], start: usize) -> Vec<&Namespace> {
    let mut picked: Vec<&Namespace> = Vec::with_capacity(3);
    for k in 0..namespaces.len() {
        let ns = &namespaces[(start + k) % namespaces.len()];
        if picked.iter().all(|p| p.shard != ns.shard) {
            picked.push(ns);
        }
        if picked.len() == 3 {
            break;
        }
    }
    picked
}

/// Writes `plan` until its duration passes or `stop` turns true.
pub async fn run(
    client: Client,
    plan: WriterPlan,
    mut stop: watch::Receiver<bool>,
) -> WriterOutcome {
    let mut outcome = WriterOutcome::default();
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let ends = Instant::now() + plan.duration;
    let mut seq: u64 = 0;
    while Instant::now() < ends && !*stop.borrow() {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        seq += 1;
        let index = usize::try_from(seq).unwrap_or(0) % plan.namespaces.len();
        if plan
            .txn_every
            .is_some_and(|every| seq.is_multiple_of(every))
        {
            let spanning = spanning_namespaces(&plan.namespaces, index);
            match write_transaction(&client, &spanning, seq).await {
                Some(written) => {
                    outcome.written.extend(written);
                    outcome.transactions += 1;
                }
                None => outcome.failed.push(format!("x{seq}")),
            }
        } else {
            let ns = &plan.namespaces[index];
            let id = format!("w{seq:07}");
            if insert(&client, ns, &id, seq).await {
                outcome.written.push(Written {
                    id,
                    ns: ns.full(),
                    shard: ns.shard,
                    at: Instant::now(),
                });
            } else {
                outcome.failed.push(id);
            }
        }
    }
    outcome
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    error.to_string().contains("11000")
}

async fn insert(client: &Client, ns: &Namespace, id: &str, seq: u64) -> bool {
    let coll = client
        .database(&ns.db)
        .collection::<bson::Document>(&ns.coll);
    let document = doc! { "_id": id, "seq": seq as i64 };
    for _ in 0..MAX_ATTEMPTS {
        match tokio::time::timeout(OP_TIMEOUT, coll.insert_one(document.clone())).await {
            Ok(Ok(_)) => return true,
            Ok(Err(e)) if is_duplicate_key(&e) => return true,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    false
}

/// One transaction inserting `x<seq>-<j>` into each namespace; retried whole.
async fn write_transaction(
    client: &Client,
    spanning: &[&Namespace],
    seq: u64,
) -> Option<Vec<Written>> {
    for _ in 0..MAX_ATTEMPTS {
        match tokio::time::timeout(OP_TIMEOUT, transaction_once(client, spanning, seq)).await {
            Ok(Ok(())) => {
                let at = Instant::now();
                let written = spanning
                    .iter()
                    .enumerate()
                    .map(|(j, ns)| Written {
                        id: format!("x{seq:07}-{j}"),
                        ns: ns.full(),
                        shard: ns.shard,
                        at,
                    })
                    .collect();
                return Some(written);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

/// `Ok` when committed now or earlier (a duplicate key on the first insert
/// means an uncertain earlier commit did succeed: the transaction is atomic).
async fn transaction_once(
    client: &Client,
    spanning: &[&Namespace],
    seq: u64,
) -> mongodb::error::Result<()> {
    let mut session = client.start_session().await?;
    session.start_transaction().await?;
    for (j, ns) in spanning.iter().enumerate() {
        let coll = client
            .database(&ns.db)
            .collection::<bson::Document>(&ns.coll);
        let document = doc! { "_id": format!("x{seq:07}-{j}"), "seq": seq as i64 };
        if let Err(e) = coll.insert_one(document).session(&mut session).await {
            let _ = session.abort_transaction().await;
            return if j == 0 && is_duplicate_key(&e) {
                Ok(())
            } else {
                Err(e)
            };
        }
    }
    session.commit_transaction().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_spread_over_every_shard() {
        let cases = [(40, 16, 3), (16, 16, 1), (64, 16, 4), (10, 4, 3)];
        for (count, shards, most) in cases {
            let map = ShardMap::new(shards).unwrap();
            let plan = plan_namespaces(&["a", "b", "c"], count, map);
            assert_eq!(plan.len(), count);
            let mut load = vec![0; usize::from(shards)];
            for ns in &plan {
                assert_eq!(map.shard_of(&ns.full()).0, ns.shard);
                load[usize::from(ns.shard)] += 1;
            }
            assert!(load.iter().all(|&n| n >= 1 && n <= most), "{load:?}");
        }
    }

    #[test]
    fn transactions_span_distinct_shards() {
        let plan = plan_namespaces(&["a", "b"], 20, ShardMap::new(8).unwrap());
        for start in 0..plan.len() {
            let picked = spanning_namespaces(&plan, start);
            assert_eq!(picked.len(), 3);
            assert!(picked[0].shard != picked[1].shard && picked[1].shard != picked[2].shard);
            assert!(picked[0].shard != picked[2].shard);
        }
    }
}
