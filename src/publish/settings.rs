//! What the publish stage is told by the configuration.

use std::path::PathBuf;
use std::time::Duration;

use super::error::PublishError;
use super::position_store::ResumeReadPolicy;
use super::target::TargetOptions;

/// Publisher settings. Defaults are oplogtoredis's where it has the setting.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Every publication goes to each of these (`OTR_REDIS_URL`, comma-separated).
    pub redis_urls: Vec<String>,
    /// Prefix of every key redtail writes (`OTR_REDIS_METADATA_PREFIX`).
    pub metadata_prefix: String,
    /// TTL of the dedup keys (`OTR_REDIS_DEDUPE_EXPIRATION`, 150 s): longer than
    /// the catch-up window so a replay after a restart is still deduplicated.
    pub dedupe_expiration: Duration,
    /// Most publications per script call (`OTR_REDIS_BATCH_SIZE`).
    pub batch_size: usize,
    /// Script calls sent before the first is answered. Redis runs them in
    /// order, so pipelining keeps order while hiding the round trip.
    pub max_in_flight: usize,
    /// How often the position is written, at most (`OTR_TIMESTAMP_FLUSH_INTERVAL`).
    pub flush_interval: Duration,
    /// How long one call is retried before its publications are dropped and
    /// counted `failed` (oplogtoredis: 30 attempts 1 s apart).
    pub max_outage: Duration,
    /// The write lane: names the position key `lastProcessedEntry.<ordinal>`
    /// and the `ordinal` metric label. 0 while there is one lane.
    pub ordinal: u32,
    /// Batches buffered per destination, so one slow destination does not
    /// stall the others until its buffer is full.
    pub destination_queue: usize,
    /// Bound on connecting to a destination.
    pub connect_timeout: Duration,
    /// Bound on any one reply; a stalled Redis becomes a retried failure.
    pub response_timeout: Duration,
    /// A PEM CA to trust for `rediss://` instead of the public roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Reading the resume position at start (`OTR_RESUME_TS_READ_RETRIES`, `_DELAY`).
    pub resume_read: ResumeReadPolicy,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            redis_urls: Vec::new(),
            metadata_prefix: "oplogtoredis::".to_string(),
            dedupe_expiration: Duration::from_secs(150),
            batch_size: 1,
            max_in_flight: 8,
            flush_interval: Duration::from_secs(1),
            max_outage: Duration::from_secs(30),
            ordinal: 0,
            destination_queue: 1024,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            tls_ca_file: None,
            resume_read: ResumeReadPolicy::default(),
        }
    }
}

impl PublisherSettings {
    /// Rejects settings that cannot work, naming the culprit.
    pub fn validate(&self) -> Result<(), PublishError> {
        let invalid = |what: &str| Err(PublishError::InvalidSettings(what.to_string()));
        if self.redis_urls.is_empty() {
            return invalid("at least one Redis URL is required");
        }
        if self.batch_size == 0 {
            return invalid("the batch size must be at least 1");
        }
        if self.max_in_flight == 0 {
            return invalid("max in-flight calls must be at least 1");
        }
        if self.destination_queue == 0 {
            return invalid("the destination queue must hold at least 1 batch");
        }
        if self.dedupe_expiration < Duration::from_secs(1) {
            return invalid("the dedupe expiration must be at least 1s");
        }
        if self.flush_interval.is_zero() {
            return invalid("the flush interval must be positive");
        }
        Ok(())
    }

    /// Connection options shared by every destination; reads the CA file.
    pub fn target_options(&self) -> Result<TargetOptions, PublishError> {
        let tls_ca_pem = match &self.tls_ca_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| PublishError::ReadFile {
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        Ok(TargetOptions {
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            tls_ca_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_oplogtoredis_defaults() {
        let s = PublisherSettings::default();
        assert_eq!(s.metadata_prefix, "oplogtoredis::");
        assert_eq!(s.dedupe_expiration, Duration::from_secs(150));
        assert_eq!(s.batch_size, 1);
        assert_eq!(s.flush_interval, Duration::from_secs(1));
        assert_eq!(s.max_outage, Duration::from_secs(30));
        assert_eq!(
            s.resume_read,
            ResumeReadPolicy {
                attempts: 5,
                delay: Duration::from_millis(500)
            }
        );
    }

    #[test]
    fn unusable_settings_are_rejected() {
        let good = PublisherSettings {
            redis_urls: vec!["redis://h".into()],
            ..Default::default()
        };
        assert!(good.validate().is_ok());
        let cases: Vec<(PublisherSettings, &str)> = vec![
            (
                PublisherSettings {
                    redis_urls: vec![],
                    ..good.clone()
                },
                "Redis URL",
            ),
            (
                PublisherSettings {
                    batch_size: 0,
                    ..good.clone()
                },
                "batch size",
            ),
            (
                PublisherSettings {
                    max_in_flight: 0,
                    ..good.clone()
                },
                "in-flight",
            ),
            (
                PublisherSettings {
                    destination_queue: 0,
                    ..good.clone()
                },
                "queue",
            ),
            (
                PublisherSettings {
                    dedupe_expiration: Duration::from_millis(10),
                    ..good.clone()
                },
                "dedupe",
            ),
            (
                PublisherSettings {
                    flush_interval: Duration::ZERO,
                    ..good.clone()
                },
                "flush",
            ),
        ];
        for (settings, needle) in cases {
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let s = PublisherSettings {
            tls_ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let Err(err) = s.target_options() else {
            panic!("read a missing file")
        };
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
