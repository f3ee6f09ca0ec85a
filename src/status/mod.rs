//! The operator's view of the cluster: `/status` and `redtail status`.
//!
//! Both read the cluster's state straight from Redis (leases, checkpoints,
//! membership, through the `cluster` crate), never from one instance's
//! memory, so every instance's `/status` and a `redtail status` run from a
//! laptop show the same picture, including shards nobody leads.
//!
//! # Lag and checkpoint age
//!
//! A shard's checkpoint is the oplog position `(T<<32)|I` of the last change
//! its leader published durably. The view shows one number per shard,
//! `lag_seconds` = now (Redis's clock) − `T`, and calls it both "checkpoint
//! age" and "lag": the checkpoint is an oplog time, not a write time, so its
//! age *is* how far behind the oplog the shard's durable position is.
//! Two things to know when reading it:
//! - it measures the durable position, which trails publishing by at most
//!   one batch, so a healthy busy shard shows a second or two;
//! - a shard whose namespaces receive no writes keeps its old checkpoint, so
//!   its lag grows while nothing is actually pending. Alert on a lag that
//!   grows on a shard that is also written to, or on `unled` > 0.
//!
//! Layout: [`report`] turns rows into the serialisable report (pure),
//! [`render`] prints it as a table (pure), [`command`] is `redtail status`,
//! and [`StatusSource`] here does the reading.

pub mod command;
pub mod render;
pub mod report;

use std::time::{Duration, SystemTime};

use ::cluster::{ClusterError, ClusterKeys, MemberId, ShardMap, cluster_status, live_members};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::{REDACTED, Secret};

pub use command::{read_status, run_status_command};
pub use render::render_table;
pub use report::{ClusterStatusReport, ShardRow, Summary};

/// How long one report may take, connection included: `/status` must answer
/// a probe promptly, and `redtail status` must not hang on a dead Redis.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The settings cannot describe a readable cluster (a Sentinel URL, a
    /// prefix with braces): fix the command line.
    #[error("{0}")]
    Settings(String),
    /// Redis failed or answered something unexpected.
    #[error("cannot read the cluster from Redis: {0}")]
    Cluster(#[from] ClusterError),
    /// The stored shard count is not a number this version can use.
    #[error("the shard count stored in Redis ({key} = {value:?}) is not a number from 1 to 65535")]
    StoredShardCount {
        /// The key read.
        key: String,
        /// What it held.
        value: String,
    },
    /// Redis did not answer in time (down, unreachable, or paused).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl StatusError {
    /// `redtail status`'s exit code: 2 for settings (like any bad
    /// argument), 1 when the cluster could not be read.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Settings(_) => 2,
            _ => 1,
        }
    }
}

/// Reads the cluster's status from one Redis. Cheap to clone: clones share
/// one multiplexed connection, which reconnects on its own after an outage.
#[derive(Clone)]
pub struct StatusSource {
    conn: ConnectionManager,
    keys: ClusterKeys,
    map: ShardMap,
    member: Option<MemberId>,
    /// The Redis password, kept only to scrub it from error messages.
    password: Option<Secret>,
}

impl StatusSource {
    /// A source reading the cluster under `metadata_prefix`
    /// (`OTR_REDIS_METADATA_PREFIX`) with `shards` shards
    /// (`OTR_CLUSTER_SHARDS`), reported as seen by `member` (the running
    /// instance's id; `None` outside an instance).
    ///
    /// The connection is made on the first report, not here, so a Redis that
    /// is down at start does not stop the HTTP server from starting. Must be
    /// called inside a Tokio runtime.
    pub fn connect(
        client: redis::Client,
        metadata_prefix: &str,
        shards: u16,
        member: Option<MemberId>,
    ) -> Result<Self, StatusError> {
        let settings = |e: ClusterError| StatusError::Settings(e.to_string());
        let keys = ClusterKeys::new(metadata_prefix).map_err(settings)?;
        let map = ShardMap::new(shards).map_err(settings)?;
        let password = client
            .get_connection_info()
            .redis_settings()
            .password()
            .map(Secret::new);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            StatusError::Settings(format!("cannot create the Redis connection: {e}"))
        })?;
        Ok(Self {
            conn,
            keys,
            map,
            member,
            password,
        })
    }

    /// `text` (an error message meant for an operator) with this source's
    /// Redis password hidden, in case a client error ever quotes it.
    pub fn redact(&self, text: &str) -> String {
        let password = self.password.as_ref().map(Secret::expose_secret);
        hide_secrets(text, password.as_slice())
    }

    /// The number of shards this source reports on.
    pub fn shards(&self) -> u16 {
        self.map.shards()
    }

    /// The same source reporting on `shards` shards (e.g. the count the
    /// cluster stored, which is the truth, rather than a configured one).
    pub fn with_shards(mut self, shards: u16) -> Result<Self, StatusError> {
        self.map = ShardMap::new(shards).map_err(|e| StatusError::Settings(e.to_string()))?;
        Ok(self)
    }

    /// The shard count the cluster's first member stored in Redis, `None`
    /// when no member ever started under this prefix. Read only: a status
    /// query must never be the one that fixes the count.
    pub async fn stored_shard_count(&self) -> Result<Option<u16>, StatusError> {
        let key = self.keys.shard_count();
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let read = get.query_async(&mut conn);
        let value: Option<String> = tokio::time::timeout(REPORT_TIMEOUT, read)
            .await
            .map_err(|_| StatusError::Timeout(REPORT_TIMEOUT))?
            .map_err(|source| ClusterError::Redis {
                context: format!("reading the shard count ({key})"),
                source,
            })?;
        value
            .map(|value| match value.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(StatusError::StoredShardCount { key, value }),
            })
            .transpose()
    }

    /// Reads every shard's lease, checkpoint and ranking, and the live
    /// members, within [`REPORT_TIMEOUT`].
    pub async fn report(&self) -> Result<ClusterStatusReport, StatusError> {
        let mut conn = self.conn.clone();
        let read = async {
            let statuses = cluster_status(&mut conn, &self.keys, self.map).await?;
            let members = live_members(&mut conn, &self.keys).await?;
            Ok::<_, ClusterError>((statuses, members))
        };
        let (statuses, members) = tokio::time::timeout(REPORT_TIMEOUT, read)
            .await
            .map_err(|_| StatusError::Timeout(REPORT_TIMEOUT))??;
        Ok(ClusterStatusReport::build(
            &statuses,
            &members,
            self.member.as_ref(),
            SystemTime::now(),
        ))
    }
}

/// `text` with every occurrence of each non-empty secret replaced by `***`.
/// Pure: the last line of defence before a message is printed or served.
pub fn hide_secrets(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret, REDACTED)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hide_secrets_table() {
        let cases: [(&str, &[&str], &str); 5] = [
            ("auth failed for pw", &["pw"], "auth failed for ***"),
            (
                "a:p%40ss@h and p@ss",
                &["p%40ss", "p@ss"],
                "a:***@h and ***",
            ),
            ("nothing secret", &["pw"], "nothing secret"),
            (
                "empty secrets change nothing",
                &[""],
                "empty secrets change nothing",
            ),
            ("no secrets at all", &[], "no secrets at all"),
        ];
        for (text, secrets, want) in cases {
            assert_eq!(hide_secrets(text, secrets), want, "{text}");
        }
    }

    #[tokio::test]
    async fn a_source_redacts_its_own_password() {
        let client = redis::Client::open("redis://user:s3cr%40t@127.0.0.1:1/0").unwrap();
        let source = StatusSource::connect(client, "p::", 4, None).unwrap();
        assert_eq!(
            source.redact("WRONGPASS s3cr@t rejected"),
            "WRONGPASS *** rejected"
        );
    }
}
