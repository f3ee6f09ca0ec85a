//! The fenced publish: only the lease holder publishes, dedup works like
//! oplogtoredis's, and the checkpoint only moves forward.

use std::time::Duration;

use anyhow::Result;
use cluster::{
    ClusterError, ClusterKeys, FencedPublisher, LeaseToken, MemberId, PublishItem, ShardId,
    ShardLease, initialize_checkpoint, read_checkpoint,
};

use crate::support::{Recorder, RedisServer, eventually};

const LONG: Duration = Duration::from_secs(10);

fn item(keys: &ClusterKeys, ts: u64, tx: u32, message: &str, channels: &[&str]) -> PublishItem {
    PublishItem {
        dedup_key: keys.dedup_key(ts, tx),
        message: message.to_string(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
    }
}

#[tokio::test]
async fn the_holder_publishes_once_per_change_and_checkpoints() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("oplogtoredis::")?;
    let publisher = FencedPublisher::new(keys.clone(), 150);
    let recorder = Recorder::start(&server).await?;
    let shard = ShardId(5);
    let lease = ShardLease::acquire(&mut conn, &keys, shard, &MemberId::generate("a"), LONG)
        .await?
        .expect("free");
    let position = 7301444403200000001u64; // above 2^53: exact only as text
    let items = [
        item(&keys, position, 0, r#"{"e":"i"}"#, &["db.c", "db.c::x"]),
        item(&keys, position, 1, r#"{"e":"r"}"#, &["db.c"]),
    ];

    let outcome = publisher
        .publish(&mut conn, shard, lease.token(), &items, Some(position))
        .await?;
    assert_eq!(outcome.published, vec![true, true]);
    assert!(outcome.checkpoint_moved);
    assert!(
        recorder
            .wait_until(Duration::from_secs(2), |m| m.len() >= 3)
            .await
    );
    assert_eq!(
        recorder.messages(),
        vec![
            ("db.c".to_string(), r#"{"e":"i"}"#.to_string()),
            ("db.c::x".to_string(), r#"{"e":"i"}"#.to_string()),
            ("db.c".to_string(), r#"{"e":"r"}"#.to_string()),
        ]
    );
    // oplogtoredis's key names, the epoch as the value, its TTL.
    let marker: Option<String> = redis::cmd("GET")
        .arg("oplogtoredis::processed::7301444403200000001::1")
        .query_async(&mut conn)
        .await?;
    assert_eq!(marker.as_deref(), Some("1"));
    let ttl: i64 = redis::cmd("TTL")
        .arg(&items[0].dedup_key)
        .query_async(&mut conn)
        .await?;
    assert!((140..=150).contains(&ttl), "ttl {ttl}");
    assert_eq!(
        read_checkpoint(&mut conn, &keys, shard).await?,
        Some(position)
    );
    let raw: String = redis::cmd("GET")
        .arg(keys.shard(shard).checkpoint)
        .query_async(&mut conn)
        .await?;
    assert_eq!(raw, "07301444403200000001");

    // A replay (a retry, or another instance) publishes nothing.
    let again = publisher
        .publish(&mut conn, shard, lease.token(), &items, Some(position))
        .await?;
    assert_eq!(again.published, vec![false, false]);
    assert!(!again.checkpoint_moved);
    let marker = item(&keys, 1, 0, "marker", &["marker"]);
    publisher
        .publish(&mut conn, shard, lease.token(), &[marker], None)
        .await?;
    assert!(
        recorder
            .wait_until(Duration::from_secs(2), |m| m.len() >= 4)
            .await
    );
    assert_eq!(recorder.messages().len(), 4, "the replay published nothing");
    Ok(())
}

#[tokio::test]
async fn a_deposed_leader_is_fenced_and_changes_nothing() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let publisher = FencedPublisher::new(keys.clone(), 150);
    let recorder = Recorder::start(&server).await?;
    let shard = ShardId(2);
    let old = ShardLease::acquire(
        &mut conn,
        &keys,
        shard,
        &MemberId::generate("old"),
        Duration::from_millis(200),
    )
    .await?
    .expect("free");
    publisher
        .publish(
            &mut conn,
            shard,
            old.token(),
            &[item(&keys, 10, 0, "first", &["c"])],
            Some(10),
        )
        .await?;

    // The old leader "pauses" past its TTL; a new one takes over.
    let new_member = MemberId::generate("new");
    let new = eventually(Duration::from_secs(3), "takeover", || {
        let (mut conn, keys, m) = (conn.clone(), keys.clone(), new_member.clone());
        async move { Ok(ShardLease::acquire(&mut conn, &keys, shard, &m, LONG).await?) }
    })
    .await?;

    // Its late batch: refused as a whole, nothing sent, checkpoint kept.
    let late = [
        item(&keys, 20, 0, "late", &["c"]),
        item(&keys, 21, 0, "late2", &["c"]),
    ];
    let error = publisher
        .publish(&mut conn, shard, old.token(), &late, Some(21))
        .await
        .expect_err("fenced");
    assert!(error.is_fenced(), "{error}");
    assert!(matches!(error, ClusterError::Fenced { shard: 2, .. }));
    // A hand-replayed token of the right epoch but another uuid is refused too.
    let forged = LeaseToken {
        epoch: new.token().epoch,
        token: format!("{}:forged", new.token().epoch),
    };
    let error = publisher
        .publish(&mut conn, shard, &forged, &late, Some(21))
        .await
        .expect_err("fenced");
    assert!(error.is_fenced());

    assert_eq!(read_checkpoint(&mut conn, &keys, shard).await?, Some(10));
    let marker: Option<String> = redis::cmd("GET")
        .arg(&late[0].dedup_key)
        .query_async(&mut conn)
        .await?;
    assert_eq!(marker, None, "no dedup marker written");

    // The new leader's publish goes through (the recorder works), and the
    // late messages never arrived before it.
    let outcome = publisher
        .publish(
            &mut conn,
            shard,
            new.token(),
            &[item(&keys, 20, 0, "new", &["c"])],
            Some(20),
        )
        .await?;
    assert_eq!(outcome.published, vec![true]);
    assert!(
        recorder
            .wait_until(Duration::from_secs(2), |m| m.len() >= 2)
            .await
    );
    assert_eq!(recorder.on("c"), vec!["first", "new"]);
    let marker: Option<String> = redis::cmd("GET")
        .arg(&late[0].dedup_key)
        .query_async(&mut conn)
        .await?;
    assert_eq!(
        marker.as_deref(),
        Some("2"),
        "the new epoch is the marker's value"
    );
    Ok(())
}

#[tokio::test]
async fn the_checkpoint_never_moves_backwards() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let publisher = FencedPublisher::new(keys.clone(), 150);
    let shard = ShardId(0);
    let lease = ShardLease::acquire(&mut conn, &keys, shard, &MemberId::generate("a"), LONG)
        .await?
        .expect("free");
    let big = 1u64 << 53;
    // (offered, moved, stored after) — neighbours above 2^53 differ by one,
    // which a comparison of Lua doubles could not see.
    let cases = [
        (100, true, 100),
        (50, false, 100),
        (100, false, 100),
        (big + 2, true, big + 2),
        (big + 1, false, big + 2),
        (big + 3, true, big + 3),
        (u64::MAX - 1, true, u64::MAX - 1),
        (7, false, u64::MAX - 1),
        (u64::MAX, true, u64::MAX),
    ];
    for (offered, moved, stored) in cases {
        // Idle-shard advance: no items, just the checkpoint.
        let outcome = publisher
            .publish(&mut conn, shard, lease.token(), &[], Some(offered))
            .await?;
        assert_eq!(outcome.checkpoint_moved, moved, "offered {offered}");
        assert_eq!(
            read_checkpoint(&mut conn, &keys, shard).await?,
            Some(stored)
        );
    }
    // Seeding never overwrites.
    assert!(!initialize_checkpoint(&mut conn, &keys, shard, 1).await?);
    assert_eq!(
        read_checkpoint(&mut conn, &keys, shard).await?,
        Some(u64::MAX)
    );
    assert!(initialize_checkpoint(&mut conn, &keys, ShardId(1), 42).await?);
    assert_eq!(
        read_checkpoint(&mut conn, &keys, ShardId(1)).await?,
        Some(42)
    );
    assert_eq!(read_checkpoint(&mut conn, &keys, ShardId(2)).await?, None);
    Ok(())
}

#[tokio::test]
async fn a_corrupt_checkpoint_stops_the_publish_before_anything_is_sent() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let publisher = FencedPublisher::new(keys.clone(), 150);
    let recorder = Recorder::start(&server).await?;
    let shard = ShardId(4);
    let lease = ShardLease::acquire(&mut conn, &keys, shard, &MemberId::generate("a"), LONG)
        .await?
        .expect("free");
    let _: () = redis::cmd("SET")
        .arg(keys.shard(shard).checkpoint)
        .arg("12345")
        .query_async(&mut conn)
        .await?;
    let error = publisher
        .publish(
            &mut conn,
            shard,
            lease.token(),
            &[item(&keys, 1, 0, "m", &["c"])],
            Some(2),
        )
        .await
        .expect_err("corrupt checkpoint");
    assert!(!error.is_fenced());
    assert!(error.to_string().contains("BADCHECKPOINT"), "{error}");
    assert!(
        read_checkpoint(&mut conn, &keys, shard).await.is_err(),
        "reading says so too"
    );
    // Without a checkpoint the batch goes through.
    publisher
        .publish(
            &mut conn,
            shard,
            lease.token(),
            &[item(&keys, 1, 0, "m", &["c"])],
            None,
        )
        .await?;
    assert!(
        recorder
            .wait_until(Duration::from_secs(2), |m| !m.is_empty())
            .await
    );
    assert_eq!(recorder.on("c"), vec!["m"]);
    Ok(())
}
