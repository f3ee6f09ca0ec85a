//! The publish stage's one error type.
//!
//! Every variant that mentions a destination names it by its *redacted* URL,
//! so an error can be logged or shown to an operator without leaking the
//! Redis password.

use thiserror::Error;

/// Why the publish stage could not do what it was asked.
#[derive(Debug, Error)]
pub enum PublishError {
    /// A Redis URL from the configuration cannot be used. Raised at start,
    /// before any connection is attempted, so a typo fails fast.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The settings themselves are inconsistent (a zero batch size, no URL...).
    #[error("invalid publisher settings: {0}")]
    InvalidSettings(String),

    /// A file named by the settings (a TLS CA certificate) could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The path from the settings.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },

    /// Talking to a Redis destination failed.
    #[error("Redis {url}: {context}: {source}")]
    Redis {
        /// The destination's redacted URL.
        url: String,
        /// What redtail was doing.
        context: &'static str,
        /// The client's error.
        source: redis::RedisError,
    },

    /// A Redis call did not answer within the configured timeout.
    #[error("Redis {url}: {context}: timed out")]
    Timeout {
        /// The destination's redacted URL.
        url: String,
        /// What redtail was doing.
        context: &'static str,
    },

    /// Redis answered the dedup script with something it cannot return:
    /// another script under the same SHA, or a proxy mangling replies.
    #[error("Redis {url}: unexpected reply to the publish script: {detail}")]
    UnexpectedReply {
        /// The destination's redacted URL.
        url: String,
        /// What was wrong.
        detail: String,
    },

    /// A stored position is not the decimal `(T << 32) | I` redtail and
    /// oplogtoredis write: resuming from a guess could skip changes, so this
    /// is reported instead of retried.
    #[error("Redis {url}: key {key} holds {value:?}, not a decimal oplog position")]
    MalformedPosition {
        /// The destination's redacted URL.
        url: String,
        /// The position key.
        key: String,
        /// What it held.
        value: String,
    },
}

impl PublishError {
    /// Whether Redis answered `NOSCRIPT`: the dedup script must be loaded
    /// (again) before calling it, which is routine after a restart, a
    /// failover or `SCRIPT FLUSH`, not an outage.
    pub fn is_noscript(&self) -> bool {
        matches!(self, Self::Redis { source, .. }
            if source.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    }
}
