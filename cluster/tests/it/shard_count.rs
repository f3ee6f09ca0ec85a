//! The shard count is agreed once through Redis; another count is refused.

use std::time::Duration;

use anyhow::Result;
use cluster::{ClusterError, ClusterKeys, Coordinator, CoordinatorSettings, MemberId, ShardMap};

use crate::support::RedisServer;

#[tokio::test]
async fn another_shard_count_is_refused_clearly() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("oplogtoredis::")?;

    let map = ShardMap::agree(&mut conn, &keys, 64).await?;
    assert_eq!(map.shards(), 64);
    assert_eq!(
        ShardMap::agree(&mut conn, &keys, 64).await?.shards(),
        64,
        "agreeing twice"
    );

    let error = ShardMap::agree(&mut conn, &keys, 32)
        .await
        .expect_err("mismatch");
    assert!(matches!(
        error,
        ClusterError::ShardCountMismatch { configured: 32, .. }
    ));
    let text = error.to_string();
    assert!(
        text.starts_with("OTR_CLUSTER_SHARDS=32 but the cluster in Redis uses 64 shards"),
        "{text}"
    );
    assert!(
        text.contains("oplogtoredis::{oplogtoredis::cluster}:shards"),
        "{text}"
    );

    // A coordinator started with another count refuses to start.
    let settings = CoordinatorSettings {
        shards: 32,
        request_timeout: Duration::from_millis(500),
        ..CoordinatorSettings::default()
    };
    let refused = Coordinator::start(server.client(), MemberId::generate("x"), settings).await;
    assert!(matches!(
        refused,
        Err(ClusterError::ShardCountMismatch { .. })
    ));

    // Another deployment (prefix) in the same Redis has its own count.
    let other = ClusterKeys::new("other::")?;
    assert_eq!(ShardMap::agree(&mut conn, &other, 32).await?.shards(), 32);
    Ok(())
}
