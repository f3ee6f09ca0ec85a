//! oplogtoredis's resume positions: `<prefix>lastProcessedEntry.<ordinal>`.
//!
//! Each destination's publisher writes, to its own Redis, the position of the
//! newest change that it and every earlier change were acknowledged for:
//! a plain `SET` of the decimal `(T << 32) | I`, no TTL, exactly like
//! oplogtoredis, so a fleet switching from oplogtoredis resumes where it stopped
//! (and could switch back). At start the source reads these keys from the
//! first Redis URL only, as oplogtoredis does.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use super::error::PublishError;
use super::target::Target;
use crate::position::OplogPosition;

/// How stubbornly the resume position is read (`OTR_RESUME_TS_READ_RETRIES`,
/// `OTR_RESUME_TS_READ_RETRY_DELAY`): a Redis hiccup at start should not send
/// the tail to the end of the oplog and lose changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeReadPolicy {
    /// Attempts in all (at least one is always made).
    pub attempts: u32,
    /// Attempt `n` (from 0) first sleeps `delay × n`.
    pub delay: Duration,
}

impl Default for ResumeReadPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            delay: Duration::from_millis(500),
        }
    }
}

/// Reads and writes the `lastProcessedEntry` keys of one Redis.
#[derive(Clone)]
pub struct PositionStore {
    target: Arc<Target>,
    key_prefix: String,
    policy: ResumeReadPolicy,
}

impl PositionStore {
    /// A store on `target`, with keys under `metadata_prefix`
    /// (`OTR_REDIS_METADATA_PREFIX`).
    pub fn new(target: Arc<Target>, metadata_prefix: &str, policy: ResumeReadPolicy) -> Self {
        Self {
            target,
            key_prefix: format!("{metadata_prefix}lastProcessedEntry."),
            policy,
        }
    }

    /// The key of write lane `ordinal`, byte-identical to oplogtoredis's.
    pub fn key(&self, ordinal: u32) -> String {
        format!("{}{ordinal}", self.key_prefix)
    }

    /// Records `position` for lane `ordinal` (one attempt).
    pub async fn write(&self, ordinal: u32, position: OplogPosition) -> Result<(), PublishError> {
        let command = self.write_command(ordinal, position);
        self.target
            .query::<()>(&command, "SET lastProcessedEntry")
            .await
    }

    /// The `SET` that records `position` for lane `ordinal`, for a caller that
    /// runs it on a connection of its own (the publisher, mid-pipeline).
    pub fn write_command(&self, ordinal: u32, position: OplogPosition) -> redis::Cmd {
        let mut command = redis::cmd("SET");
        command.arg(self.key(ordinal)).arg(position.to_string());
        command
    }

    /// The position to resume after: the minimum over lanes `ordinals` (the
    /// oldest lane bounds what is safe), or `None` when any lane has none yet
    /// (or `ordinals` is empty). Transient errors are retried per the policy;
    /// a malformed value is returned as an error at once.
    pub async fn read_resume_position(
        &self,
        ordinals: Range<u32>,
    ) -> Result<Option<OplogPosition>, PublishError> {
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 0;
        loop {
            tokio::time::sleep(self.policy.delay * attempt).await;
            match self.read_once(ordinals.clone()).await {
                Ok(position) => return Ok(position),
                Err(e @ PublishError::MalformedPosition { .. }) => return Err(e),
                Err(e) if attempt + 1 >= attempts => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "reading the resume position failed; retrying");
                }
            }
            attempt += 1;
        }
    }

    async fn read_once(&self, ordinals: Range<u32>) -> Result<Option<OplogPosition>, PublishError> {
        let mut oldest: Option<OplogPosition> = None;
        for ordinal in ordinals {
            let key = self.key(ordinal);
            let mut command = redis::cmd("GET");
            command.arg(&key);
            let value: Option<String> = self
                .target
                .query(&command, "GET lastProcessedEntry")
                .await?;
            let Some(value) = value else { return Ok(None) };
            let position = OplogPosition::parse_decimal(&value).ok_or_else(|| {
                PublishError::MalformedPosition {
                    url: self.target.redacted_url().to_string(),
                    key,
                    value,
                }
            })?;
            oldest = Some(oldest.map_or(position, |o| o.min(position)));
        }
        Ok(oldest)
    }
}
