//! The local demo behind `scripts/demo.sh`: MongoDB (mongo-sim), a real
//! `redis-server` and the `redtail` binary, with a writer changing documents
//! and a subscriber printing what redis-oplog would hear. Ctrl-C stops it all.
//!
//! Nothing here is part of redtail itself; it only shows it working.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bson::doc;
use futures_util::StreamExt;
use mongo_sim::{MongoSim, SimOptions};

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
    let redis_port = free_port()?;
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting redis-server (run scripts/setup.sh to install it)")?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    wait_for_redis(&redis_url).await?;
    println!("redis-server  {redis_url}");

    let http_port = free_port()?;
    let log_path = logs.join("redtail.log");
    let mut redtail = Command::new(&redtail_bin)
        .env("OTR_MONGO_URL", sim.url())
        .env("OTR_REDIS_URL", &redis_url)
        .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
        .stdout(std::fs::File::create(&log_path)?)
        .stderr(std::fs::File::create(logs.join("redtail.stderr.log"))?)
        .spawn()
        .context("starting redtail")?;
    wait_ready(http_port).await?;
    println!(
        "redtail       http://127.0.0.1:{http_port}/metrics  (logs: {})",
        log_path.display()
    );
    println!("\nwriting to demo.tasks every second; what redis-oplog hears:\n");

    let subscriber = tokio::spawn(print_messages(redis_url.clone()));
    let writer = tokio::spawn(write_forever(sim.url()));

    tokio::signal::ctrl_c().await?;
    println!("\nstopping: writer, redtail (SIGTERM, drains), redis-server, mongo-sim");
    writer.abort();
    stop_gracefully(&mut redtail);
    subscriber.abort();
    let _ = redis.kill();
    let _ = redis.wait();
    sim.shutdown();
    Ok(())
}

/// Changes documents in `demo.tasks`: inserts, updates, deletes, and now and
/// then a transaction, one step a second.
async fn write_forever(url: String) -> Result<()> {
    let client = mongodb::Client::with_uri_str(&url).await?;
    let tasks = client
        .database("demo")
        .collection::<bson::Document>("tasks");
    for step in 0u64.. {
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

fn stop_gracefully(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            println!("redtail exited: {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
}

async fn wait_for_redis(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    for _ in 0..100 {
        if let Ok(mut conn) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not answer within 5 s")
}

async fn wait_ready(port: u16) -> Result<()> {
    for _ in 0..200 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            if reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("redtail was not ready within 20 s (see target/demo/redtail.log)")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
