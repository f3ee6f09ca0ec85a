//! The local demo behind `scripts/demo.sh`: MongoDB (mongo-sim), a real
//! `redis-server` and three `redtail` replicas in cluster mode, with a writer
//! changing documents, a subscriber printing what redis-oplog would hear, and
//! every few seconds which replica leads which shard. Ctrl-C stops it all.
//!
//! Nothing here is part of redtail itself; it only shows it working.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bson::doc;
use futures_util::StreamExt;
use mongo_sim::{MongoSim, SimOptions};
use redis_test_server::{RedisServer, RedisServerOptions, free_port};

const REPLICAS: usize = 3;
const SHARDS: u16 = 8;
const NAMES: [&str; REPLICAS] = ["replica-1", "replica-2", "replica-3"];
const COLLECTIONS: [&str; 4] = ["tasks", "lists", "users", "comments"];

/// One redtail replica of the demo.
struct Replica {
    name: &'static str,
    child: Child,
    http_port: u16,
}

fn start_replica(
    bin: &PathBuf,
    mongo: &str,
    redis: &str,
    n: usize,
    logs: &std::path::Path,
) -> Result<Replica> {
    let name = NAMES[n - 1];
    let http_port = free_port()?;
    let child = Command::new(bin)
        .env("OTR_MONGO_URL", mongo)
        .env("OTR_REDIS_URL", redis)
        .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
        .env("OTR_CLUSTER", "true")
        .env("OTR_CLUSTER_SHARDS", SHARDS.to_string())
        .env("OTR_CLUSTER_LEASE_TTL", "3s")
        .env("OTR_CLUSTER_RENEW_INTERVAL", "500ms")
        // Its own process group: Ctrl-C reaches only the demo, which then
        // stops each replica with SIGTERM (a second signal would cut its drain).
        .process_group(0)
        .stdout(std::fs::File::create(logs.join(format!("{name}.log")))?)
        .stderr(std::fs::File::create(
            logs.join(format!("{name}.stderr.log")),
        )?)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Replica {
        name,
        child,
        http_port,
    })
}

/// Every 5 s: which replica leads which shard, from each replica's `/status`.
async fn print_leaders(ports: Vec<u16>) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut member_names = std::collections::HashMap::new();
        let mut report = None;
        for (port, name) in ports.iter().zip(NAMES) {
            if let Some(body) = http_get(*port, "/status").await {
                let json: serde_json::Value = serde_json::from_str(&body)?;
                if let Some(member) = json["reported_by"].as_str() {
                    member_names.insert(member.to_owned(), name);
                }
                report = Some(json);
            }
        }
        let Some(report) = report else { continue };
        let mut line = String::from("shards:");
        for row in report["shards"].as_array().into_iter().flatten() {
            let leader = row["leader"]
                .as_str()
                .map_or("none", |m| member_names.get(m).copied().unwrap_or("?"));
            line.push_str(&format!(
                "  {}->{}",
                row["shard"],
                leader.trim_start_matches("replica-")
            ));
        }
        println!("{line}   (replica number per shard)");
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let redtail_bin = std::env::var_os("REDTAIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/redtail"));
    if !redtail_bin.exists() {
        bail!(
            "{} not found: run `cargo build --release` first (scripts/demo.sh does)",
            redtail_bin.display()
        );
    }
    let logs = PathBuf::from("target/demo");
    std::fs::create_dir_all(&logs)?;

    let sim = MongoSim::start(SimOptions::default()).context("starting mongo-sim")?;
    println!("mongo-sim     {}", sim.url());
    // Its own process group: Ctrl-C must reach only the demo, which stops
    // redis-server after redtail has drained into it.
    let mut redis = RedisServer::start_with(RedisServerOptions {
        own_process_group: true,
        ..RedisServerOptions::default()
    })
    .context("starting redis-server (run scripts/setup.sh to install it)")?;
    let redis_url = redis.url();
    println!("redis-server  {redis_url}");

    let mut replicas = Vec::new();
    for n in 1..=REPLICAS {
        replicas.push(start_replica(
            &redtail_bin,
            &sim.url(),
            &redis_url,
            n,
            &logs,
        )?);
    }
    for replica in &replicas {
        wait_ready(replica.http_port).await?;
    }
    println!(
        "redtail       {REPLICAS} replicas in cluster mode, {SHARDS} shards; status: http://127.0.0.1:{}/status/page  (logs: {})",
        replicas[0].http_port,
        logs.display()
    );
    println!(
        "\nwriting to demo.* every second; what redis-oplog hears, and every 5 s who leads which shard:\n"
    );

    let subscriber = tokio::spawn(print_messages(redis_url.clone()));
    let writer = tokio::spawn(write_forever(sim.url()));
    let ports: Vec<u16> = replicas.iter().map(|r| r.http_port).collect();
    let leaders = tokio::spawn(print_leaders(ports));

    tokio::signal::ctrl_c().await?;
    println!("\nstopping: writer, redtail (SIGTERM, drains), redis-server, mongo-sim");
    writer.abort();
    leaders.abort();
    for replica in &mut replicas {
        stop_gracefully(&mut replica.child, replica.name);
    }
    subscriber.abort();
    redis.stop();
    sim.shutdown();
    Ok(())
}

/// Changes documents in `demo.tasks`: inserts, updates, deletes, and now and
/// then a transaction, one step a second.
async fn write_forever(url: String) -> Result<()> {
    let client = mongodb::Client::with_uri_str(&url).await?;
    let db = client.database("demo");
    for step in 0u64.. {
        // Several collections, so every shard (and so every replica) gets some.
        let tasks =
            db.collection::<bson::Document>(COLLECTIONS[(step / 3) as usize % COLLECTIONS.len()]);
        let id = format!("task{}", step / 3);
        match step % 3 {
            0 => tasks
                .insert_one(doc! { "_id": &id, "title": format!("Task {step}"), "done": false })
                .await
                .map(drop)?,
            1 => tasks
                .update_one(doc! { "_id": &id }, doc! { "$set": { "done": true } })
                .await
                .map(drop)?,
            _ if step % 9 == 8 => {
                let mut session = client.start_session().await?;
                session.start_transaction().await?;
                tasks
                    .delete_one(doc! { "_id": &id })
                    .session(&mut session)
                    .await?;
                tasks
                    .insert_one(doc! { "_id": format!("{id}-archived"), "from": &id })
                    .session(&mut session)
                    .await?;
                session.commit_transaction().await?;
            }
            _ => tasks.delete_one(doc! { "_id": &id }).await.map(drop)?,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

async fn print_messages(url: String) -> Result<()> {
    let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
    pubsub.psubscribe("demo.*").await?;
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let payload: String = message.get_payload()?;
        println!("{:<28} {payload}", message.get_channel_name());
    }
    Ok(())
}

fn stop_gracefully(child: &mut Child, name: &str) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            println!("{name} exited: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
}

/// The body of a 200 answer, None otherwise.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.ok()?;
    let ok = reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200");
    ok.then(|| {
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    })
}

async fn wait_ready(port: u16) -> Result<()> {
    for _ in 0..200 {
        if http_get(port, "/readyz").await.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("a redtail replica was not ready within 20 s (see target/demo/*.log)")
}
