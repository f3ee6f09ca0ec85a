//! The cluster's status view against a real `redis-server`: the cluster is
//! seeded through the `cluster` crate's own API (shard count agreement,
//! membership heartbeats, lease acquisitions, checkpoint seeding), then read
//! back through `/status` on the real HTTP router, through
//! [`redtail::status::read_status`], and through the real binary's
//! `redtail status`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::cluster::{
    ClusterKeys, LeaseToken, MemberId, Membership, ShardId, ShardLease, ShardMap,
    initialize_checkpoint,
};
use anyhow::{Context, Result, ensure};
use redtail::config::{Invocation, StatusArgs, StatusFormat};
use redtail::status::{StatusError, StatusSource, read_status};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::redis_server::{RedisOptions, RedisServer};
use crate::support::status_server::serve_status;

const BINARY: &str = env!("CARGO_BIN_EXE_redtail");
const PREFIX: &str = "st::";
const SHARDS: u16 = 8;
const TTL: Duration = Duration::from_secs(60);
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// What the seeded cluster looks like, for the assertions.
struct Seeded {
    a: MemberId,
    b: MemberId,
    /// Shard 1, led by `a`, checkpoint ~30 s old.
    lease_a: LeaseToken,
    /// Shard 2, led by `b`, checkpoint ~600 s old.
    lease_b: LeaseToken,
    checkpoint_1: u64,
    checkpoint_2: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Two members, shards 1 and 2 led (by different members), both with
/// checkpoints; the other six shards unled. All through the cluster API.
async fn seed(redis: &RedisServer) -> Result<Seeded> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys = ClusterKeys::new(PREFIX)?;
    ShardMap::agree(&mut conn, &keys, SHARDS).await?;
    let a = MemberId::generate("alpha");
    let b = MemberId::generate("beta");
    for member in [&a, &b] {
        Membership::new(keys.clone(), member.clone(), TTL)
            .join(&mut conn)
            .await?;
    }
    // A first lease on shard 2, released, so its epoch is 2 and the epochs
    // in the view are really read, not assumed.
    let first = ShardLease::acquire(&mut conn, &keys, ShardId(2), &a, TTL)
        .await?
        .context("shard 2 is free")?;
    ensure!(first.release(&mut conn, &keys).await?, "release shard 2");
    let lease_a = ShardLease::acquire(&mut conn, &keys, ShardId(1), &a, TTL)
        .await?
        .context("shard 1 is free")?;
    let lease_b = ShardLease::acquire(&mut conn, &keys, ShardId(2), &b, TTL)
        .await?
        .context("shard 2 is free again")?;
    let now = now_secs();
    let checkpoint_1 = ((now - 30) << 32) | 3;
    let checkpoint_2 = ((now - 600) << 32) | 1;
    ensure!(initialize_checkpoint(&mut conn, &keys, ShardId(1), checkpoint_1).await?);
    ensure!(initialize_checkpoint(&mut conn, &keys, ShardId(2), checkpoint_2).await?);
    Ok(Seeded {
        a,
        b,
        lease_a: lease_a.token().clone(),
        lease_b: lease_b.token().clone(),
        checkpoint_1,
        checkpoint_2,
    })
}

async fn get_json(base: &str, path: &str) -> Result<(StatusCode, Value)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let response = client.get(format!("{base}{path}")).send().await?;
    let status = response.status();
    let text = response.text().await?;
    let json = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    Ok((status, json))
}

/// The lag the view should show for a checkpoint, give or take the time
/// the test itself took.
fn lag_is_about(value: &Value, age: u64) -> bool {
    value
        .as_u64()
        .is_some_and(|lag| (age..=age + 10).contains(&lag))
}

#[tokio::test]
async fn status_endpoint_shows_the_seeded_cluster() -> Result<()> {
    let redis = RedisServer::start()?;
    let seeded = seed(&redis).await?;
    let source = StatusSource::connect(
        redis::Client::open(redis.url())?,
        PREFIX,
        SHARDS,
        Some(seeded.a.clone()),
    )?;
    let (base, stop) = serve_status(Some(source)).await?;
    let (code, body) = get_json(&base, "/status").await?;
    stop.cancel();

    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["cluster"], true);
    assert_eq!(body["reported_by"], seeded.a.as_str());
    let mut members = vec![seeded.a.to_string(), seeded.b.to_string()];
    members.sort();
    assert_eq!(body["members"], serde_json::json!(members));
    let summary = &body["summary"];
    assert_eq!(
        [
            &summary["shards"],
            &summary["led"],
            &summary["unled"],
            &summary["members"]
        ],
        [8, 2, 6, 2],
        "{summary}"
    );
    assert!(
        lag_is_about(&body["summary"]["max_lag_seconds"], 600),
        "{body}"
    );

    let shards = body["shards"].as_array().context("shards array")?;
    assert_eq!(shards.len(), 8);
    for (i, row) in shards.iter().enumerate() {
        assert_eq!(row["shard"], i, "{row}");
    }
    let one = &shards[1];
    assert_eq!(one["leader"], seeded.a.as_str());
    assert_eq!(one["standby"], seeded.b.as_str());
    assert_eq!(one["epoch"], seeded.lease_a.epoch);
    assert_eq!(one["checkpoint"], seeded.checkpoint_1.to_string());
    assert!(lag_is_about(&one["lag_seconds"], 30), "{one}");
    let two = &shards[2];
    assert_eq!(two["leader"], seeded.b.as_str());
    assert_eq!(two["standby"], seeded.a.as_str());
    assert_eq!(two["epoch"], 2);
    assert_eq!(seeded.lease_b.epoch, 2);
    assert_eq!(two["checkpoint"], seeded.checkpoint_2.to_string());
    let time = humantime::format_rfc3339_seconds(
        UNIX_EPOCH + Duration::from_secs(seeded.checkpoint_2 >> 32),
    )
    .to_string();
    assert_eq!(two["checkpoint_time"], time);
    for row in shards.iter().filter(|r| r["shard"] != 1 && r["shard"] != 2) {
        assert_eq!(row["leader"], Value::Null, "{row}");
        assert_eq!(row["epoch"], Value::Null, "{row}");
        assert_eq!(row["checkpoint"], Value::Null, "{row}");
        assert!(row["standby"].is_string(), "a live member stands by: {row}");
    }
    Ok(())
}

#[tokio::test]
async fn status_endpoint_is_404_outside_cluster_mode_and_503_without_redis() -> Result<()> {
    let (base, stop) = serve_status(None).await?;
    let (code, body) = get_json(&base, "/status").await?;
    stop.cancel();
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["cluster"], false);

    let mut redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cr3t-pw".to_owned()),
        ..RedisOptions::default()
    })?;
    let source = StatusSource::connect(redis::Client::open(redis.url())?, PREFIX, SHARDS, None)?;
    redis.stop();
    let (base, stop) = serve_status(Some(source)).await?;
    let started = Instant::now();
    let (code, body) = get_json(&base, "/status").await?;
    stop.cancel();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["cluster"], true);
    assert!(body["error"].is_string(), "{body}");
    assert!(!body.to_string().contains("s3cr3t-pw"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}

/// `redtail status` arguments, through the real command-line parser.
fn args(url: &str, shards: u16, format: &str) -> Result<StatusArgs> {
    let shards = shards.to_string();
    let parsed = redtail::config::parse_invocation([
        "redtail",
        "status",
        "--redis-url",
        url,
        "--redis-metadata-prefix",
        PREFIX,
        "--cluster-shards",
        &shards,
        "--format",
        format,
    ])?;
    let Invocation::Status(args) = parsed else {
        anyhow::bail!("not parsed as status: {parsed:?}");
    };
    Ok(args)
}

#[tokio::test]
async fn read_status_renders_the_table_and_json_and_refuses_what_it_cannot_read() -> Result<()> {
    let mut redis = RedisServer::start()?;
    let seeded = seed(&redis).await?;

    // A wrong OTR_CLUSTER_SHARDS: the stored count wins, with a note.
    let output = read_status(&args(&redis.url(), 64, "table")?).await?;
    let lines: Vec<&str> = output.text.lines().collect();
    assert_eq!(lines.len(), 1 + 8 + 1, "{}", output.text);
    assert!(lines[0].starts_with("SHARD  LEADER"), "{}", lines[0]);
    let row_1: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row_1[0], "1");
    assert_eq!(row_1[1], seeded.a.as_str());
    assert_eq!(row_1[2], seeded.b.as_str());
    assert_eq!(row_1[3], seeded.lease_a.epoch.to_string());
    assert_eq!(row_1[6], seeded.checkpoint_1.to_string());
    assert!(
        ["30s", "31s", "32s", "33s"].contains(&row_1[5]),
        "{}",
        lines[2]
    );
    let row_0: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row_0[1], "-", "shard 0 is unled: {}", lines[1]);
    let summary = lines[9];
    assert!(
        summary.starts_with("8 shards: 2 led, 6 unled (0, 3, 4, 5, 6, 7); 2 members: "),
        "{summary}"
    );
    assert!(summary.contains(seeded.b.as_str()), "{summary}");
    assert_eq!(output.notes.len(), 1, "{:?}", output.notes);
    assert!(
        output.notes[0].contains("uses 8 shards"),
        "{:?}",
        output.notes
    );

    let json_args = args(&redis.url(), 8, "json")?;
    assert_eq!(json_args.format, StatusFormat::Json);
    let json = read_status(&json_args).await?;
    assert!(json.notes.is_empty(), "{:?}", json.notes);
    let body: Value = serde_json::from_str(&json.text)?;
    assert_eq!(body["summary"]["led"], 2);
    assert_eq!(body["shards"][2]["leader"], seeded.b.as_str());
    assert_eq!(body["reported_by"], Value::Null);

    // Another prefix: nothing stored, so the configured count, all unled.
    let mut other = args(&redis.url(), 4, "table")?;
    other.redis_metadata_prefix = "elsewhere::".to_owned();
    let empty = read_status(&other).await?;
    assert!(
        empty
            .text
            .ends_with("4 shards: 0 led, 4 unled (0, 1, 2, 3); 0 members\n"),
        "{}",
        empty.text
    );
    assert!(
        empty.notes[0].contains("no cluster member"),
        "{:?}",
        empty.notes
    );

    redis.stop();
    let started = Instant::now();
    let error = read_status(&args(&redis.url(), 8, "table")?)
        .await
        .expect_err("Redis is down");
    assert_eq!(error.exit_code(), 1, "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let sentinel = args(
        "redis-sentinel://:pw@127.0.0.1:1?sentinelMasterId=m",
        8,
        "table",
    )?;
    let error = read_status(&sentinel).await.expect_err("Sentinel refused");
    assert!(matches!(error, StatusError::Settings(_)), "{error}");
    assert_eq!(error.exit_code(), 2);
    assert!(!error.to_string().contains(":pw@"), "{error}");
    Ok(())
}

/// One run of the real binary, with the test's own `OTR_*` variables
/// removed.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_binary(env: &[(&str, &str)], args: &[&str]) -> Result<Outcome> {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTR_") {
            command.env_remove(name);
        }
    }
    let child = command
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn redtail")?;
    let pid = child.id();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = match wait.recv_timeout(RUN_TIMEOUT) {
        Ok(output) => output?,
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            anyhow::bail!("redtail status did not exit within {RUN_TIMEOUT:?}");
        }
    };
    Ok(Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[tokio::test]
async fn redtail_status_command_prints_the_table_and_exits_by_outcome() -> Result<()> {
    let mut redis = RedisServer::start_with(RedisOptions {
        password: Some("s3cr3t-pw".to_owned()),
        ..RedisOptions::default()
    })?;
    let seeded = seed(&redis).await?;
    let url = redis.url();
    let env = [
        ("OTR_REDIS_URL", url.as_str()),
        ("OTR_REDIS_METADATA_PREFIX", PREFIX),
        ("OTR_CLUSTER_SHARDS", "8"),
    ];

    let table = run_binary(&env, &["status"])?;
    assert_eq!(table.code, Some(0), "stderr: {}", table.stderr);
    assert_eq!(table.stdout.lines().count(), 10, "{}", table.stdout);
    let row_2 = table.stdout.lines().nth(3).unwrap_or_default();
    assert!(row_2.starts_with("2 "), "{row_2}");
    assert!(row_2.contains(seeded.b.as_str()), "{row_2}");
    assert!(row_2.contains(" 10m0"), "600 s of lag: {row_2}");
    assert!(
        table.stdout.contains("8 shards: 2 led, 6 unled"),
        "{}",
        table.stdout
    );

    let json = run_binary(&env, &["status", "--format", "json"])?;
    assert_eq!(json.code, Some(0), "stderr: {}", json.stderr);
    let body: Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(body["shards"][1]["leader"], seeded.a.as_str());
    assert_eq!(
        body["shards"][1]["checkpoint"],
        seeded.checkpoint_1.to_string()
    );

    let bad = run_binary(&env, &["status", "--format", "xml"])?;
    assert_eq!(bad.code, Some(2), "stderr: {}", bad.stderr);
    let bad = run_binary(&env, &["status", "--cluster-shards", "0"])?;
    assert_eq!(bad.code, Some(2), "stderr: {}", bad.stderr);

    redis.stop();
    let down = run_binary(&env, &["status"])?;
    assert_eq!(down.code, Some(1), "stdout: {}", down.stdout);
    assert!(down.stderr.contains("redtail status:"), "{}", down.stderr);
    assert!(down.stdout.is_empty(), "{}", down.stdout);
    for output in [&table, &json, &down] {
        assert!(!output.stdout.contains("s3cr3t-pw"));
        assert!(!output.stderr.contains("s3cr3t-pw"), "{}", output.stderr);
    }
    Ok(())
}
