//! Lease semantics: one holder, compare-and-set renewal and release,
//! growing epochs, expiry, and the release announcement.

use std::time::Duration;

use anyhow::Result;
use cluster::{ClusterKeys, MemberId, ShardId, ShardLease};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::support::{RedisServer, eventually};

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn one_holder_at_a_time_and_epochs_increase() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let (a, b) = (MemberId::generate("a"), MemberId::generate("b"));
    let shard = ShardId(17);

    let lease_a = ShardLease::acquire(&mut conn, &keys, shard, &a, LONG)
        .await?
        .expect("free");
    assert_eq!(lease_a.token().epoch, 1);
    assert!(lease_a.token().token.starts_with("1:"));
    let stored: Option<String> = redis::cmd("GET")
        .arg(&keys.shard(shard).lease)
        .query_async(&mut conn)
        .await?;
    assert_eq!(stored.as_deref(), Some(lease_a.token().token.as_str()));
    let holder: Option<String> = redis::cmd("GET")
        .arg(&keys.shard(shard).holder)
        .query_async(&mut conn)
        .await?;
    assert_eq!(holder.as_deref(), Some(a.as_str()));

    assert!(
        ShardLease::acquire(&mut conn, &keys, shard, &b, LONG)
            .await?
            .is_none(),
        "held"
    );
    assert!(
        ShardLease::acquire(&mut conn, &keys, shard, &a, LONG)
            .await?
            .is_none(),
        "not reentrant"
    );
    assert!(lease_a.renew(&mut conn, LONG).await?);

    assert!(lease_a.release(&mut conn, &keys).await?);
    assert!(
        !lease_a.release(&mut conn, &keys).await?,
        "a second release finds nothing"
    );
    assert!(
        !lease_a.renew(&mut conn, LONG).await?,
        "a released lease cannot be renewed"
    );

    let lease_b = ShardLease::acquire(&mut conn, &keys, shard, &b, LONG)
        .await?
        .expect("released");
    assert_eq!(lease_b.token().epoch, 2);
    assert!(
        !lease_a.release(&mut conn, &keys).await?,
        "A cannot delete B's lease"
    );
    assert!(
        !lease_a.renew(&mut conn, LONG).await?,
        "A cannot extend B's lease"
    );
    let holder: Option<String> = redis::cmd("GET")
        .arg(&keys.shard(shard).holder)
        .query_async(&mut conn)
        .await?;
    assert_eq!(holder.as_deref(), Some(b.as_str()));

    // Other shards are independent, with their own epochs.
    let other = ShardLease::acquire(&mut conn, &keys, ShardId(3), &a, LONG)
        .await?
        .expect("free");
    assert_eq!(other.token().epoch, 1);
    Ok(())
}

#[tokio::test]
async fn renewal_keeps_the_lease_and_expiry_frees_it() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let (a, b) = (MemberId::generate("a"), MemberId::generate("b"));
    let ttl = Duration::from_millis(300);
    let lease_a = ShardLease::acquire(&mut conn, &keys, ShardId(0), &a, ttl)
        .await?
        .expect("free");

    // Renewed every 100 ms for a second (over three TTLs): never free.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert!(lease_a.renew(&mut conn, ttl).await?);
        assert!(
            ShardLease::acquire(&mut conn, &keys, ShardId(0), &b, ttl)
                .await?
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Not renewed: B gets it once the TTL elapsed, and not much later.
    let stopped = Instant::now();
    let lease_b = eventually(Duration::from_secs(3), "expiry", || {
        let mut conn = conn.clone();
        let (keys, b) = (keys.clone(), b.clone());
        async move { Ok(ShardLease::acquire(&mut conn, &keys, ShardId(0), &b, LONG).await?) }
    })
    .await?;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "taken after {waited:?}, before expiry"
    );
    assert_eq!(lease_b.token().epoch, 2);
    assert!(
        !lease_a.renew(&mut conn, ttl).await?,
        "the old holder lost it"
    );
    Ok(())
}

#[tokio::test]
async fn a_release_wakes_a_follower_at_once() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let (a, b) = (MemberId::generate("a"), MemberId::generate("b"));
    let shard = ShardId(9);
    let lease_a = ShardLease::acquire(&mut conn, &keys, shard, &a, LONG)
        .await?
        .expect("free");

    // A follower that only reacts to announcements (it never polls).
    let mut pubsub = server.client().get_async_pubsub().await?;
    pubsub.subscribe(keys.released_channel()).await?;
    let follower = {
        let (mut conn, keys, b) = (conn.clone(), keys.clone(), b.clone());
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            let message = stream.next().await.expect("an announcement");
            let announced: u16 = message.get_payload::<String>().unwrap().parse().unwrap();
            let lease = ShardLease::acquire(&mut conn, &keys, ShardId(announced), &b, LONG)
                .await
                .unwrap();
            (announced, lease, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let released_at = Instant::now();
    assert!(lease_a.release(&mut conn, &keys).await?);
    let (announced, lease_b, taken_at) =
        tokio::time::timeout(Duration::from_secs(2), follower).await??;
    assert_eq!(announced, shard.0);
    let lease_b = lease_b.expect("the follower took the released shard");
    assert_eq!(lease_b.token().epoch, 2);
    let gap = taken_at - released_at;
    // Far under the 1 s poll interval a polling follower would need.
    assert!(gap < Duration::from_millis(200), "takeover took {gap:?}");
    Ok(())
}
