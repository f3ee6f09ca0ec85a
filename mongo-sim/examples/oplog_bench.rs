//! Throughput of mongo-sim, so tests that stress redtail know the simulator
//! is not their bottleneck.
//!
//! Run: `cargo run --release -p mongo-sim --example oplog_bench [-- <entries>]`
//!
//! Prints two figures:
//! - appends/s: raw oplog appends through `Engine::append_oplog_entry`;
//! - tail entries/s: entries read through one Rust driver tailable-await
//!   cursor over TCP, from the start of a pre-filled oplog.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bson::{DateTime, Document, doc, oid::ObjectId};
use futures_util::TryStreamExt;
use mongo_sim::{MongoSim, SimOptions};
use mongodb::Client;
use mongodb::options::{CursorType, FindOptions};

/// An entry shaped like a real insert of a small document.
fn insert_entry(i: i64) -> Document {
    doc! {
        "op": "i",
        "ns": "bench.items",
        "ui": bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7u8; 16] },
        "o": {"_id": ObjectId::new(), "n": i, "name": "item", "tags": ["a", "b"]},
        "v": 2_i64,
        "wall": DateTime::now(),
    }
}

fn measure_appends(entries: i64) -> Result<f64> {
    let sim = MongoSim::start(SimOptions {
        oplog_size_mb: 1024,
        ..SimOptions::default()
    })?;
    let prepared: Vec<Document> = (0..entries).map(insert_entry).collect();
    let engine = sim.engine();
    let started = Instant::now();
    for entry in prepared {
        engine.append_oplog_entry(entry);
    }
    let elapsed = started.elapsed();
    let (_, count) = engine.oplog_stats();
    if (count as i64) < entries {
        bail!("only {count} of {entries} entries are in the oplog");
    }
    Ok(entries as f64 / elapsed.as_secs_f64())
}

async fn measure_tailing(entries: i64) -> Result<(f64, u64)> {
    let sim = MongoSim::start(SimOptions {
        oplog_size_mb: 1024,
        ..SimOptions::default()
    })?;
    let first = sim.engine().append_oplog_entry(insert_entry(-1));
    for i in 0..entries {
        sim.engine().append_oplog_entry(insert_entry(i));
    }
    let client = Client::with_uri_str(sim.url()).await?;
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let options = FindOptions::builder()
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(Duration::from_millis(100))
        .build();
    sim.counters().reset();
    let started = Instant::now();
    let mut cursor = oplog
        .find(doc! {"ts": {"$gt": first}})
        .with_options(options)
        .await?;
    let mut seen = 0i64;
    while seen < entries {
        let next = tokio::time::timeout(Duration::from_secs(60), cursor.try_next())
            .await
            .context("tailing stalled")??;
        if next.is_none() {
            bail!("the tailable cursor died after {seen} entries");
        }
        seen += 1;
    }
    let elapsed = started.elapsed();
    let bytes = sim.counters().snapshot().oplog_tail.bytes;
    // Client::shutdown waits for live cursors, so the cursor goes first.
    drop(cursor);
    client.shutdown().await;
    Ok((seen as f64 / elapsed.as_secs_f64(), bytes))
}

#[tokio::main]
async fn main() -> Result<()> {
    let entries: i64 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("entries must be a number")?,
        None => 200_000,
    };
    let appends = measure_appends(entries)?;
    println!("appends/s: {appends:.0} ({entries} entries via Engine::append_oplog_entry)");
    let (tail_rate, bytes) = measure_tailing(entries).await?;
    println!(
        "tail entries/s: {tail_rate:.0} ({entries} entries, {:.1} MB, one Rust driver tailable cursor)",
        bytes as f64 / 1e6
    );
    if appends < 100_000.0 {
        bail!("appends/s below the 100,000 target");
    }
    Ok(())
}
