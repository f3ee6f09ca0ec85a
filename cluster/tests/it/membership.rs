//! Membership: heartbeats with a TTL on Redis's clock, graceful leave.

use std::time::Duration;

use anyhow::Result;
use cluster::{ClusterKeys, MemberId, Membership, live_members};

use crate::support::{Recorder, RedisServer, eventually};

#[tokio::test]
async fn members_heartbeat_expire_and_leave() -> Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = server.connection().await?;
    let keys = ClusterKeys::new("t::")?;
    let recorder = Recorder::start(&server).await?;
    let (a, b, c) = (
        MemberId::generate("a"),
        MemberId::generate("b"),
        MemberId::generate("c"),
    );
    let long = Duration::from_secs(10);
    let ma = Membership::new(keys.clone(), a.clone(), long);
    let mb = Membership::new(keys.clone(), b.clone(), long);
    let mc = Membership::new(keys.clone(), c.clone(), Duration::from_millis(300));
    ma.join(&mut conn).await?;
    mb.join(&mut conn).await?;
    mc.join(&mut conn).await?;
    let mut expected = vec![a.clone(), b.clone(), c.clone()];
    expected.sort();
    assert_eq!(live_members(&mut conn, &keys).await?, expected);

    // C stops heartbeating: gone after its TTL; A and B keep beating.
    let live = eventually(Duration::from_secs(3), "C to expire", || {
        let (mut conn, keys, ma) = (conn.clone(), keys.clone(), ma.clone());
        async move {
            ma.heartbeat(&mut conn).await?;
            let live = live_members(&mut conn, &keys).await?;
            Ok((live.len() == 2).then_some(live))
        }
    })
    .await?;
    assert!(!live.contains(&c));
    // The heartbeat also trimmed C's entry from the set.
    let stored: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.members())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?;
    assert_eq!(stored.len(), 2, "{stored:?}");

    mb.leave(&mut conn).await?;
    assert_eq!(live_members(&mut conn, &keys).await?, vec![a.clone()]);
    assert!(
        recorder
            .wait_until(Duration::from_secs(2), |m| m.len() >= 4)
            .await
    );
    let announced = recorder.on(&keys.membership_channel());
    assert_eq!(
        announced,
        vec![
            format!("joined:{a}"),
            format!("joined:{b}"),
            format!("joined:{c}"),
            format!("left:{b}")
        ]
    );
    Ok(())
}
