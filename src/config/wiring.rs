//! From the operator's settings to each layer's own settings struct.
//!
//! Every layer defines what it needs in its own terms; this is the one place
//! that knows how `OTR_*` variables map onto them, so a layer never reads
//! the configuration directly.

use super::RedisKind;
use super::settings::{CatchUpPolicy, Config, ExplainFormat};
use crate::publish::{PublisherSettings, ResumeReadPolicy};
use crate::sharding::ClusterSettings;
use crate::sources::oplog::OplogSettings;
use crate::sources::start;

impl Config {
    /// The publisher of write lane `ordinal` (`lastProcessedEntry.<ordinal>`).
    pub fn publisher_settings(&self, ordinal: u32) -> PublisherSettings {
        PublisherSettings {
            redis_urls: self
                .redis_urls()
                .iter()
                .map(|u| u.url.expose_secret().to_owned())
                .collect(),
            metadata_prefix: self.redis_metadata_prefix.clone(),
            dedupe_expiration: self.redis_dedupe_expiration,
            batch_size: self.redis_batch_size,
            max_in_flight: self.redis_max_in_flight,
            flush_interval: self.timestamp_flush_interval,
            max_outage: self.redis_max_outage,
            ordinal,
            // Batches of up to 512 publications: keep the fan-out queues
            // within OTR_BUFFER_SIZE publications too.
            destination_queue: (self.buffer_size / 512).max(2),
            resume_read: ResumeReadPolicy {
                attempts: self.resume_ts_read_retries.max(1) as u32,
                delay: self.resume_ts_read_retry_delay,
            },
            ..PublisherSettings::default()
        }
    }

    /// Cluster mode's settings: the one Redis it coordinates through.
    pub fn cluster_settings(&self) -> Result<ClusterSettings, String> {
        let [url] = self.redis_urls() else {
            return Err(
                "OTR_CLUSTER=true needs exactly one OTR_REDIS_URL (the cluster's \
                        leases, checkpoints and publishing live in one Redis)"
                    .to_owned(),
            );
        };
        if url.kind == RedisKind::Sentinel {
            return Err(
                "OTR_CLUSTER=true does not support redis-sentinel:// OTR_REDIS_URL yet".to_owned(),
            );
        }
        Ok(ClusterSettings {
            redis_url: url.url.expose_secret().to_owned(),
            prefix: self.redis_metadata_prefix.clone(),
            shards: self.cluster_shards,
            lease_ttl: self.cluster_lease_ttl,
            renew_interval: self.cluster_renew_interval,
            standbys: self.cluster_standbys,
            standby_window: self.cluster_standby_window as usize,
            dedupe_expiration: self.redis_dedupe_expiration,
            checkpoint_interval: self.timestamp_flush_interval,
            max_outage: self.redis_max_outage,
        })
    }

    /// The oplog tailer's settings.
    pub fn oplog_settings(&self) -> OplogSettings {
        OplogSettings {
            query_timeout: self.mongo_query_timeout,
            ..OplogSettings::default()
        }
    }
}

impl From<CatchUpPolicy> for start::CatchUpPolicy {
    fn from(policy: CatchUpPolicy) -> Self {
        match policy {
            CatchUpPolicy::SkipToEnd => Self::SkipToEnd,
            CatchUpPolicy::Replay => Self::Replay,
        }
    }
}

impl From<ExplainFormat> for crate::explain::ExplainFormat {
    fn from(format: ExplainFormat) -> Self {
        match format {
            ExplainFormat::Json => Self::Json,
            ExplainFormat::Text => Self::Text,
        }
    }
}
