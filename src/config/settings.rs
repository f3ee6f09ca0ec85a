//! The settings themselves: one clap argument per `OTR_*` variable.
//!
//! Every setting is both an environment variable (what oplogtoredis
//! deployments already set) and a command-line flag (what a person trying
//! things out types). The doc comment on each field is its help text and is
//! also what `docs/configuration.md` is generated from, so it is written for
//! operators.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use super::secret::{RedisUrl, Secret, SecretUrl};
use super::values::{self, RedisUrlList};

/// Help heading of the settings oplogtoredis also reads.
pub const COMPATIBLE: &str = "oplogtoredis settings";
/// Help heading of the settings only redtail has.
pub const REDTAIL: &str = "redtail settings";

/// The command line: `redtail [run] [OPTIONS]`, `redtail explain ...`.
#[derive(Debug, Parser)]
#[command(
    name = "redtail",
    version,
    about = "Tails MongoDB's oplog and publishes every change to Redis for Meteor's redis-oplog.",
    long_about = "Tails MongoDB's oplog and publishes every change to Redis for Meteor's \
                  redis-oplog (a drop-in replacement for oplogtoredis).\n\n\
                  Without a command, redtail runs the relay: `redtail --mongo-url ...` is \
                  `redtail run --mongo-url ...`. Every option is also an OTR_* environment \
                  variable; see `redtail run --help`.",
    propagate_version = true,
    subcommand_required = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Invocation,
}

/// The subcommands; `run` is implied when none is named.
#[derive(Debug, Subcommand)]
pub enum Invocation {
    /// Run the relay (the default).
    Run(Box<Config>),
    /// Show what redtail would publish for oplog entries read from a file.
    Explain(ExplainArgs),
    /// Print the cluster's shard table (leader, standby, epoch, checkpoint,
    /// lag) read from Redis; exit 1 when Redis cannot be read.
    Status(StatusArgs),
}

/// Settings of `redtail status`: only where the cluster's keys live, with
/// the same variables as `run`, so it works in an instance's environment.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Comma-separated Redis URLs, as for `run`; the first one is read
    /// (redis:// or rediss://). Required.
    #[arg(
        long,
        env = "OTR_REDIS_URL",
        value_name = "URLS",
        hide_env_values = true,
        value_parser = values::redis_urls
    )]
    pub redis_url: RedisUrlList,

    /// Prefix of the cluster's Redis keys, as for `run`.
    #[arg(
        long,
        env = "OTR_REDIS_METADATA_PREFIX",
        value_name = "PREFIX",
        default_value = "oplogtoredis::",
        value_parser = values::non_empty
    )]
    pub redis_metadata_prefix: String,

    /// Number of shards to show when the cluster has not stored its count
    /// yet; the count stored in Redis wins (with a note on stderr).
    #[arg(
        long,
        env = "OTR_CLUSTER_SHARDS",
        value_name = "N",
        default_value = "64",
        value_parser = clap::value_parser!(u16).range(1..=4096)
    )]
    pub cluster_shards: u16,

    /// Output format: an aligned table, or the JSON document `/status`
    /// serves.
    #[arg(long, value_enum, default_value_t = StatusFormat::Table)]
    pub format: StatusFormat,
}

/// How `redtail status` prints the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// One line per shard and a summary line, for people.
    Table,
    /// The `/status` JSON document, for scripts.
    Json,
}

/// Settings of `redtail explain`: only what changes the transform, so it
/// runs without any MongoDB or Redis configured.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    pub format: ExplainFormat,
    /// JSON file of oplog entries (one document, an array, or one per line);
    /// standard input when absent or `-`.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The transform settings shared with `run`.
    #[command(flatten)]
    pub transform: TransformSettings,
}

/// How `redtail explain` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// For people.
    Text,
    /// For scripts: one JSON object per publication.
    Json,
}

/// Settings that change what is published for an oplog entry. Shared by
/// `run` and `explain` so that `explain` shows exactly what `run` would send.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct TransformSettings {
    /// For v2 (MongoDB 5.0+) updates, list full dotted paths of changed
    /// fields (`a.b.0`) instead of top-level names, the way Meteor's oplog
    /// converter computes them.
    ///
    /// Also read from OPLOG_V2_EXTRACT_SUBFIELD_CHANGES when the OTR_ name is unset.
    /// Accepts Go booleans (true/false/1/0/t/f).
    #[arg(
        long,
        env = "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES",
        help_heading = COMPATIBLE,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        value_parser = values::go_bool
    )]
    pub oplog_v2_extract_subfield_changes: bool,

    /// How document ids become per-document channel names.
    ///
    /// `meteor` escapes ids the way Meteor's MongoID.idStringify does, which
    /// is what redis-oplog subscribes to (`~42` for numbers, a leading `-`
    /// for strings that look like ObjectIds). `raw` reproduces oplogtoredis's
    /// unescaped ids, for byte-for-byte comparisons.
    #[arg(
        long,
        env = "OTR_ID_CHANNEL_STYLE",
        help_heading = REDTAIL,
        value_enum,
        default_value_t = IdChannelStyle::Meteor
    )]
    pub id_channel_style: IdChannelStyle,
}

impl TransformSettings {
    /// The transform's own settings type (the transform stays free of clap).
    pub fn to_transform(&self) -> crate::transform::TransformSettings {
        crate::transform::TransformSettings {
            extract_subfield_changes: self.oplog_v2_extract_subfield_changes,
            id_channel_style: self.id_channel_style.into(),
        }
    }
}

/// How a document id is written in its `<db>.<coll>::<id>` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdChannelStyle {
    /// Meteor's `idStringify`: the channel redis-oplog actually listens on.
    Meteor,
    /// The unescaped id, as oplogtoredis and changestream-to-redis publish it.
    Raw,
}

impl From<IdChannelStyle> for crate::transform::IdChannelStyle {
    fn from(style: IdChannelStyle) -> Self {
        match style {
            IdChannelStyle::Meteor => crate::transform::IdChannelStyle::Meteor,
            IdChannelStyle::Raw => crate::transform::IdChannelStyle::Raw,
        }
    }
}

/// What to do when the stored position is older than `OTR_MAX_CATCH_UP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatchUpPolicy {
    /// Start from the end of the oplog, as oplogtoredis does (changes in the
    /// gap are not published).
    SkipToEnd,
    /// Publish everything the oplog still holds from the stored position.
    Replay,
}

/// Everything `redtail run` needs. Built by [`crate::config::Config::from_env_and_args`].
///
/// `Debug` is safe to log: URLs print with `***` for passwords and tokens
/// print as `***`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// MongoDB connection string whose oplog is tailed (mongodb:// or
    /// mongodb+srv://). Required.
    #[arg(
        long,
        env = "OTR_MONGO_URL",
        help_heading = COMPATIBLE,
        value_name = "URL",
        hide_env_values = true,
        value_parser = values::mongo_url
    )]
    pub mongo_url: SecretUrl,

    /// Comma-separated Redis URLs; every change is published to each.
    /// Required.
    ///
    /// Schemes: redis://, rediss:// (TLS) and
    /// redis-sentinel://[:password@]host:port[,host:port...][/db]?sentinelMasterId=NAME.
    /// Whitespace around entries is trimmed (oplogtoredis does not trim).
    #[arg(
        long,
        env = "OTR_REDIS_URL",
        help_heading = COMPATIBLE,
        value_name = "URLS",
        hide_env_values = true,
        value_parser = values::redis_urls
    )]
    pub redis_url: RedisUrlList,

    /// Address of the HTTP server (/healthz, /readyz, /metrics, /denylist).
    ///
    /// Also read from HTTP_SERVER_ADDR when the OTR_ name is unset. `:9000`
    /// means all interfaces.
    #[arg(
        long,
        env = "OTR_HTTP_SERVER_ADDR",
        help_heading = COMPATIBLE,
        value_name = "HOST:PORT",
        default_value = "0.0.0.0:9000",
        value_parser = values::listen_addr
    )]
    pub http_server_addr: String,

    /// Capacity, in publications, of the queue between the oplog reader and
    /// the Redis publisher (oplogtoredis reads but ignores it).
    #[arg(
        long,
        env = "OTR_BUFFER_SIZE",
        help_heading = COMPATIBLE,
        value_name = "N",
        default_value = "10000",
        value_parser = values::count
    )]
    pub buffer_size: usize,

    /// How often the position of the last published change is written to Redis.
    #[arg(
        long,
        env = "OTR_TIMESTAMP_FLUSH_INTERVAL",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = values::positive_duration
    )]
    pub timestamp_flush_interval: Duration,

    /// How old a stored position may be and still be resumed from; older
    /// positions are handled by OTR_CATCH_UP_POLICY.
    #[arg(
        long,
        env = "OTR_MAX_CATCH_UP",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "120s",
        value_parser = values::positive_duration
    )]
    pub max_catch_up: Duration,

    /// Lifetime of the per-change dedup keys that make concurrent
    /// publishers (and oplogtoredis) publish each change once.
    ///
    /// Keep it longer than OTR_MAX_CATCH_UP. At least 1s.
    #[arg(
        long,
        env = "OTR_REDIS_DEDUPE_EXPIRATION",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "150s",
        value_parser = values::whole_seconds_ttl
    )]
    pub redis_dedupe_expiration: Duration,

    /// Prefix of every Redis key redtail writes (never of channel names).
    ///
    /// Keep oplogtoredis's value to share dedup keys and positions with it.
    #[arg(
        long,
        env = "OTR_REDIS_METADATA_PREFIX",
        help_heading = COMPATIBLE,
        value_name = "PREFIX",
        default_value = "oplogtoredis::",
        value_parser = values::non_empty
    )]
    pub redis_metadata_prefix: String,

    /// Timeout for connecting to MongoDB and for the /healthz Mongo probe.
    #[arg(
        long,
        env = "OTR_MONGO_CONNECT_TIMEOUT",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = values::positive_duration
    )]
    pub mongo_connect_timeout: Duration,

    /// Timeout of each MongoDB query, including each wait for new oplog
    /// entries (an idle timeout simply re-issues the query).
    #[arg(
        long,
        env = "OTR_MONGO_QUERY_TIMEOUT",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = values::positive_duration
    )]
    pub mongo_query_timeout: Duration,

    /// Transform settings, shared with `redtail explain`.
    #[command(flatten)]
    pub transform: TransformSettings,

    /// oplogtoredis's number of Redis publishers, sharded by database
    /// (order is kept within a database).
    #[arg(
        long,
        env = "OTR_WRITE_PARALLELISM",
        help_heading = COMPATIBLE,
        value_name = "N",
        default_value = "1",
        value_parser = values::count
    )]
    pub write_parallelism: usize,

    /// oplogtoredis's number of oplog readers. Accepted for compatibility:
    /// redtail reads the oplog with one cursor, which the transform keeps up
    /// with (see docs/benchmarks.md), so values above 1 only log a warning.
    #[arg(
        long,
        env = "OTR_READ_PARALLELISM",
        help_heading = COMPATIBLE,
        value_name = "N",
        default_value = "1",
        value_parser = values::count
    )]
    pub read_parallelism: usize,

    /// Ignored, with a warning at start: redtail keeps the denylist in Redis,
    /// where every instance shares it, so no Postgres is needed.
    ///
    /// Also read from PG_PERSISTENCE_URL when the OTR_ name is unset.
    #[arg(
        long,
        env = "OTR_PG_PERSISTENCE_URL",
        help_heading = COMPATIBLE,
        value_name = "URL",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "",
        value_parser = values::optional_secret
    )]
    pub pg_persistence_url: Secret,

    /// Accepted for compatibility; redtail has no Sentry integration and
    /// warns at start when this is true (errors go to the logs).
    #[arg(
        long,
        env = "OTR_SENTRY_ENABLED",
        help_heading = COMPATIBLE,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        value_parser = values::go_bool
    )]
    pub sentry_enabled: bool,

    /// Accepted for compatibility (see OTR_SENTRY_ENABLED).
    ///
    /// Also read from SENTRY_DSN when the OTR_ name is unset.
    #[arg(
        long,
        env = "OTR_SENTRY_DSN",
        help_heading = COMPATIBLE,
        value_name = "DSN",
        hide_env_values = true,
        hide_default_value = true,
        default_value = "",
        value_parser = values::optional_secret
    )]
    pub sentry_dsn: Secret,

    /// Accepted for compatibility (see OTR_SENTRY_ENABLED).
    #[arg(
        long,
        env = "OTR_SENTRY_ENVIRONMENT",
        help_heading = COMPATIBLE,
        value_name = "NAME",
        default_value = "unknown"
    )]
    pub sentry_environment: String,

    /// Accepted for compatibility (see OTR_SENTRY_ENABLED).
    #[arg(
        long,
        env = "OTR_SENTRY_RELEASE",
        help_heading = COMPATIBLE,
        value_name = "NAME",
        default_value = "unknown"
    )]
    pub sentry_release: String,

    /// How many times reading the stored position from Redis is attempted
    /// at start before the attempt counts as failed.
    #[arg(
        long,
        env = "OTR_RESUME_TS_READ_RETRIES",
        help_heading = COMPATIBLE,
        value_name = "N",
        default_value = "5",
        value_parser = values::count
    )]
    pub resume_ts_read_retries: usize,

    /// Delay between those attempts, multiplied by the attempt's index.
    #[arg(
        long,
        env = "OTR_RESUME_TS_READ_RETRY_DELAY",
        help_heading = COMPATIBLE,
        value_name = "DURATION",
        default_value = "500ms",
        value_parser = values::duration
    )]
    pub resume_ts_read_retry_delay: Duration,

    /// When the stored position cannot be read, start from the end of the
    /// oplog instead of retrying.
    #[arg(
        long,
        env = "OTR_RESUME_FROM_END_ON_FAILURE",
        help_heading = COMPATIBLE,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        value_parser = values::go_bool
    )]
    pub resume_from_end_on_failure: bool,

    /// Most publications sent to Redis in one call; a batch takes only what
    /// is already queued, so a larger value adds no latency.
    #[arg(
        long,
        env = "OTR_REDIS_BATCH_SIZE",
        help_heading = COMPATIBLE,
        value_name = "N",
        default_value = "1",
        value_parser = values::count
    )]
    pub redis_batch_size: usize,

    /// Human-readable logs at debug level instead of JSON at info level.
    ///
    /// Any non-empty value turns it on, even "false", as in oplogtoredis.
    #[arg(
        long,
        env = "OTR_LOG_DEBUG",
        help_heading = COMPATIBLE,
        action = ArgAction::SetTrue,
        default_value = "",
        value_parser = values::non_empty_is_on
    )]
    pub log_debug: bool,

    /// No logs at all.
    ///
    /// Any non-empty value turns it on, even "false", as in oplogtoredis.
    #[arg(
        long,
        env = "OTR_LOG_QUIET",
        help_heading = COMPATIBLE,
        action = ArgAction::SetTrue,
        default_value = "",
        value_parser = values::non_empty_is_on
    )]
    pub log_quiet: bool,

    /// How long the publisher keeps retrying one batch while Redis is
    /// unreachable before it drops the batch and counts it as failed
    /// (oplogtoredis: 30 attempts 1s apart).
    #[arg(
        long,
        env = "OTR_REDIS_MAX_OUTAGE",
        help_heading = REDTAIL,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = values::positive_duration
    )]
    pub redis_max_outage: Duration,

    /// Most Redis publish calls awaiting an answer at once, per Redis URL.
    #[arg(
        long,
        env = "OTR_REDIS_MAX_IN_FLIGHT",
        help_heading = REDTAIL,
        value_name = "N",
        default_value = "64",
        value_parser = values::count
    )]
    pub redis_max_in_flight: usize,

    /// What to do when the stored position is older than OTR_MAX_CATCH_UP.
    ///
    /// `skip-to-end` starts from the end of the oplog like oplogtoredis (the
    /// changes in between are never published); `replay` publishes what the
    /// oplog still holds. Either way an error is logged and
    /// redtail_resume_too_old_total is incremented.
    #[arg(
        long,
        env = "OTR_CATCH_UP_POLICY",
        help_heading = REDTAIL,
        value_enum,
        default_value_t = CatchUpPolicy::SkipToEnd
    )]
    pub catch_up_policy: CatchUpPolicy,

    /// How long a SIGTERM'd instance may take to drain, checkpoint and hand
    /// its work over before it exits anyway.
    #[arg(
        long,
        env = "OTR_SHUTDOWN_GRACE",
        help_heading = REDTAIL,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = values::positive_duration
    )]
    pub shutdown_grace: Duration,

    /// Run as one member of a sharded cluster.
    ///
    /// On: namespaces are cut into OTR_CLUSTER_SHARDS shards; each shard is
    /// published by the one instance holding its Redis lease, every publish
    /// is fenced by that lease, and each shard keeps its own checkpoint.
    /// Off: every instance publishes every change and dedup keeps each one
    /// single (oplogtoredis's model).
    #[arg(
        long,
        env = "OTR_CLUSTER",
        help_heading = REDTAIL,
        value_name = "BOOL",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value = "false",
        value_parser = values::go_bool
    )]
    pub cluster: bool,

    /// Number of namespace shards. Stored in Redis by the first member; an
    /// instance started with another value refuses to start.
    #[arg(
        long,
        env = "OTR_CLUSTER_SHARDS",
        help_heading = REDTAIL,
        value_name = "N",
        default_value = "64",
        value_parser = clap::value_parser!(u16).range(1..=4096)
    )]
    pub cluster_shards: u16,

    /// How long a shard lease lasts without renewal: a crashed leader's
    /// shards are taken over within this plus the poll interval (1s).
    #[arg(
        long,
        env = "OTR_CLUSTER_LEASE_TTL",
        help_heading = REDTAIL,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = values::positive_duration
    )]
    pub cluster_lease_ttl: Duration,

    /// How often held leases are renewed (with jitter). A leader that could
    /// not renew for 70% of the TTL stops publishing before its lease can
    /// expire.
    #[arg(
        long,
        env = "OTR_CLUSTER_RENEW_INTERVAL",
        help_heading = REDTAIL,
        value_name = "DURATION",
        default_value = "2s",
        value_parser = values::positive_duration
    )]
    pub cluster_renew_interval: Duration,

    /// Warm standbys per shard: the next members in each shard's ranking,
    /// ready to take over.
    #[arg(
        long,
        env = "OTR_CLUSTER_STANDBYS",
        help_heading = REDTAIL,
        value_name = "N",
        default_value = "1",
        value_parser = clap::value_parser!(u16).range(0..=8)
    )]
    pub cluster_standbys: u16,

    /// Publications kept in memory per shard this instance stands by for,
    /// so a takeover publishes from memory instead of reading the oplog
    /// again from the shard's checkpoint. Standby shards are tailed only
    /// when this is above 0; each held publication costs roughly its JSON
    /// plus its channel names (about 0.5 KiB for small documents).
    #[arg(
        long,
        env = "OTR_CLUSTER_STANDBY_WINDOW",
        help_heading = REDTAIL,
        value_name = "N",
        default_value = "10000",
        value_parser = clap::value_parser!(u32).range(0..=10_000_000)
    )]
    pub cluster_standby_window: u32,

    /// Bearer token required by the denylist's PUT and DELETE.
    ///
    /// Unset: those are only accepted from loopback clients (127.0.0.1, ::1).
    /// Set: they need `Authorization: Bearer <token>` from any client. GETs
    /// are always open.
    #[arg(
        long,
        env = "OTR_HTTP_ADMIN_TOKEN",
        help_heading = REDTAIL,
        value_name = "TOKEN",
        hide_env_values = true,
        value_parser = values::secret
    )]
    pub http_admin_token: Option<Secret>,
}

impl Config {
    /// The Redis deployments to publish to, in the order given.
    pub fn redis_urls(&self) -> &[RedisUrl] {
        &self.redis_url.0
    }

    /// Warnings about settings that are accepted but have no effect, for
    /// `main` to log once logging is up (configuration is read before it).
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.pg_persistence_url.expose_secret().is_empty() {
            warnings.push(
                "OTR_PG_PERSISTENCE_URL is set but ignored: redtail keeps the denylist in Redis \
                 (shared by every instance and kept across restarts), so Postgres is not needed"
                    .to_owned(),
            );
        }
        if self.read_parallelism > 1 {
            warnings.push(format!(
                "OTR_READ_PARALLELISM={} is accepted but redtail reads the oplog with one \
                 cursor; write parallelism (OTR_WRITE_PARALLELISM) is honoured",
                self.read_parallelism
            ));
        }
        if self.sentry_enabled {
            warnings.push(
                "OTR_SENTRY_ENABLED is set but ignored: redtail has no Sentry integration; \
                 errors are in the logs and OpenTelemetry traces"
                    .to_owned(),
            );
        }
        warnings
    }
}
