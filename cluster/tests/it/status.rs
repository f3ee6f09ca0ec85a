//! The status view reads leaders, epochs, standbys and checkpoints from Redis.

use std::time::Duration;

use anyhow::Result;
use cluster::{
    ClusterKeys, FencedPublisher, MemberId, Membership, ShardId, ShardLease, ShardMap,
    cluster_status, rank,
};

use crate::support::RedisServer;

#[tokio::test]
async fn status_shows_leaders_standbys_epochs_and_checkpoint_ages() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let map = ShardMap::new(8)?;
    let long = Duration::from_secs(10);
    let (a, b) = (MemberId::generate("a"), MemberId::generate("b"));
    Membership::new(keys.clone(), a.clone(), long)
        .join(&mut conn)
        .await?;
    Membership::new(keys.clone(), b.clone(), long)
        .join(&mut conn)
        .await?;

    let shard = ShardId(3);
    let first = ShardLease::acquire(&mut conn, &keys, shard, &a, long)
        .await?
        .expect("free");
    first.release(&mut conn, &keys).await?;
    let lease = ShardLease::acquire(&mut conn, &keys, shard, &a, long)
        .await?
        .expect("free");
    let time: (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await?;
    let position = ((time.0 - 30) << 32) | 5;
    FencedPublisher::new(keys.clone(), 150)
        .publish(&mut conn, shard, lease.token(), &[], Some(position))
        .await?;

    let rows = cluster_status(&mut conn, &keys, map).await?;
    assert_eq!(rows.len(), 8);
    let row = &rows[3];
    assert_eq!(row.shard, shard);
    assert_eq!(row.leader.as_ref(), Some(&a));
    assert_eq!(row.epoch, Some(2));
    assert_eq!(
        row.standby.as_ref(),
        Some(&b),
        "the other live member stands by"
    );
    assert_eq!(row.checkpoint, Some(position));
    let age = row.checkpoint_age.expect("an age");
    assert!((30..=32).contains(&age.as_secs()), "{age:?}");
    for row in rows.iter().filter(|r| r.shard != shard) {
        assert_eq!(row.leader, None);
        assert_eq!(row.epoch, None);
        assert_eq!(row.checkpoint, None);
        let members = [a.clone(), b.clone()];
        assert_eq!(row.preferred.as_ref(), rank(row.shard, &members).first());
    }
    Ok(())
}
