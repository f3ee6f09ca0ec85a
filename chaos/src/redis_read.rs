//! The observers' reads of redis-server: bounded in time and reconnecting
//! lazily, so a slow or restarted Redis costs the auditors a sample, never a
//! hang.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// `MGET keys` on `conn` (connecting first when it is `None`), within
/// `timeout` for the connection and again for the reply. `None` on any
/// failure, after which `conn` is dropped so the next call reconnects (the
/// server may have been restarted).
pub async fn mget_within<K: redis::ToRedisArgs>(
    client: &redis::Client,
    conn: &mut Option<MultiplexedConnection>,
    keys: &[K],
    timeout: Duration,
) -> Option<Vec<Option<String>>> {
    if conn.is_none() {
        *conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .ok()?
            .ok();
    }
    let connection = conn.as_mut()?;
    let mut mget = redis::cmd("MGET");
    mget.arg(keys);
    match tokio::time::timeout(timeout, mget.query_async(connection)).await {
        Ok(Ok(values)) => Some(values),
        _ => {
            *conn = None;
            None
        }
    }
}
