//! Table tests of the whole configuration surface, run against a command
//! whose environment variables are all switched off, so the machine's
//! environment cannot change the outcome. Reading real variables is covered
//! by the binary tests in `tests/it/cli.rs`.

use std::ffi::OsString;
use std::time::Duration;

use super::*;

const MONGO: &str = "mongodb://localhost:27017";
const REDIS: &str = "redis://localhost:6379";

/// The command with every environment variable ignored.
fn hermetic() -> clap::Command {
    adjust_env(Cli::command(), &|_| Some(OsString::new()))
}

fn parse(args: &[&str]) -> Result<Invocation, ConfigError> {
    let argv = std::iter::once("redtail").chain(args.iter().copied());
    parse_with(hermetic(), argv)
}

/// Parses `extra` as `run` options, adding the required URLs unless given.
fn run(extra: &[&str]) -> Result<Config, ConfigError> {
    let mut args = Vec::new();
    for (flag, value) in [("--mongo-url", MONGO), ("--redis-url", REDIS)] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    match parse(&args)? {
        Invocation::Run(config) => Ok(*config),
        other => panic!("not parsed as run: {other:?}"),
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn defaults_match_oplogtoredis() {
    let c = run(&[]).unwrap();
    assert_eq!(c.mongo_url.expose_secret(), MONGO);
    assert_eq!(c.redis_urls().len(), 1);
    assert_eq!(c.redis_urls()[0].url.expose_secret(), REDIS);
    assert_eq!(c.http_server_addr, "0.0.0.0:9000");
    assert_eq!(c.buffer_size, 10_000);
    assert_eq!(c.timestamp_flush_interval, secs(1));
    assert_eq!(c.max_catch_up, secs(120));
    assert_eq!(c.redis_dedupe_expiration, secs(150));
    assert_eq!(c.redis_metadata_prefix, "oplogtoredis::");
    assert_eq!(c.mongo_connect_timeout, secs(10));
    assert_eq!(c.mongo_query_timeout, secs(5));
    assert!(!c.transform.oplog_v2_extract_subfield_changes);
    assert_eq!(c.transform.id_channel_style, IdChannelStyle::Meteor);
    assert_eq!(c.write_parallelism, 1);
    assert_eq!(c.read_parallelism, 1);
    assert_eq!(c.pg_persistence_url.expose_secret(), "");
    assert!(!c.sentry_enabled);
    assert_eq!(c.sentry_dsn.expose_secret(), "");
    assert_eq!(c.sentry_environment, "unknown");
    assert_eq!(c.sentry_release, "unknown");
    assert_eq!(c.resume_ts_read_retries, 5);
    assert_eq!(c.resume_ts_read_retry_delay, Duration::from_millis(500));
    assert!(!c.resume_from_end_on_failure);
    assert_eq!(c.redis_batch_size, 1);
    assert!(!c.log_debug);
    assert!(!c.log_quiet);
    assert_eq!(c.redis_max_outage, secs(30));
    assert_eq!(c.redis_max_in_flight, 64);
    assert_eq!(c.catch_up_policy, CatchUpPolicy::SkipToEnd);
    assert_eq!(c.shutdown_grace, secs(30));
    assert!(c.http_admin_token.is_none());
    assert!(c.startup_warnings().is_empty());
}

#[test]
fn every_flag_sets_its_setting() {
    type Check = fn(&Config) -> bool;
    let cases: &[(&[&str], Check)] = &[
        (&["--http-server-addr", ":9100"], |c| {
            c.http_server_addr == "0.0.0.0:9100"
        }),
        (&["--buffer-size", "5"], |c| c.buffer_size == 5),
        (&["--timestamp-flush-interval", "250ms"], |c| {
            c.timestamp_flush_interval == Duration::from_millis(250)
        }),
        (&["--max-catch-up", "1m30s"], |c| c.max_catch_up == secs(90)),
        (&["--redis-dedupe-expiration", "2h"], |c| {
            c.redis_dedupe_expiration == secs(7200)
        }),
        (&["--redis-metadata-prefix", "x::"], |c| {
            c.redis_metadata_prefix == "x::"
        }),
        (&["--mongo-connect-timeout", "3s"], |c| {
            c.mongo_connect_timeout == secs(3)
        }),
        (&["--mongo-query-timeout", "7s"], |c| {
            c.mongo_query_timeout == secs(7)
        }),
        (&["--oplog-v2-extract-subfield-changes"], |c| {
            c.transform.oplog_v2_extract_subfield_changes
        }),
        (&["--oplog-v2-extract-subfield-changes=T"], |c| {
            c.transform.oplog_v2_extract_subfield_changes
        }),
        (&["--oplog-v2-extract-subfield-changes=false"], |c| {
            !c.transform.oplog_v2_extract_subfield_changes
        }),
        (&["--id-channel-style", "raw"], |c| {
            c.transform.id_channel_style == IdChannelStyle::Raw
        }),
        (&["--write-parallelism", "4"], |c| c.write_parallelism == 4),
        (&["--read-parallelism", "3"], |c| c.read_parallelism == 3),
        (&["--pg-persistence-url", "postgres://u:p@h/db"], |c| {
            c.startup_warnings()
                .iter()
                .any(|w| w.contains("OTR_PG_PERSISTENCE_URL"))
        }),
        (&["--sentry-enabled"], |c| {
            c.sentry_enabled && c.startup_warnings().len() == 1
        }),
        (&["--sentry-dsn", "https://k@sentry.example/1"], |c| {
            c.sentry_dsn.expose_secret() == "https://k@sentry.example/1"
        }),
        (&["--sentry-environment", "prod"], |c| {
            c.sentry_environment == "prod"
        }),
        (&["--sentry-release", "v1"], |c| c.sentry_release == "v1"),
        (&["--resume-ts-read-retries", "9"], |c| {
            c.resume_ts_read_retries == 9
        }),
        (&["--resume-ts-read-retry-delay", "0s"], |c| {
            c.resume_ts_read_retry_delay.is_zero()
        }),
        (&["--resume-from-end-on-failure=1"], |c| {
            c.resume_from_end_on_failure
        }),
        (&["--redis-batch-size", "100"], |c| {
            c.redis_batch_size == 100
        }),
        (&["--log-debug"], |c| c.log_debug && !c.log_quiet),
        (&["--log-quiet"], |c| c.log_quiet && !c.log_debug),
        (&["--redis-max-outage", "1m"], |c| {
            c.redis_max_outage == secs(60)
        }),
        (&["--redis-max-in-flight", "2"], |c| {
            c.redis_max_in_flight == 2
        }),
        (&["--catch-up-policy", "replay"], |c| {
            c.catch_up_policy == CatchUpPolicy::Replay
        }),
        (&["--shutdown-grace", "45s"], |c| {
            c.shutdown_grace == secs(45)
        }),
        (&["--http-admin-token", "tok"], |c| {
            c.http_admin_token.as_ref().map(Secret::expose_secret) == Some("tok")
        }),
        (&["--redis-url", "redis://a:1, rediss://b:2"], |c| {
            c.redis_urls()
                .iter()
                .map(|u| u.kind)
                .eq([RedisKind::Plain, RedisKind::Tls])
        }),
    ];
    for (args, check) in cases {
        let config = run(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(check(&config), "{args:?} gave {config:?}");
    }
}

#[test]
fn invalid_values_name_the_variable() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--max-catch-up", "abc"],
            "invalid value \"abc\" for OTR_MAX_CATCH_UP (--max-catch-up): expected a duration like 120s",
        ),
        (
            &["--max-catch-up", "120"],
            "for OTR_MAX_CATCH_UP (--max-catch-up): missing unit",
        ),
        (
            &["--max-catch-up=-1s"],
            "OTR_MAX_CATCH_UP (--max-catch-up): must not be negative",
        ),
        (
            &["--timestamp-flush-interval", "0s"],
            "OTR_TIMESTAMP_FLUSH_INTERVAL",
        ),
        (
            &["--redis-dedupe-expiration", "500ms"],
            "OTR_REDIS_DEDUPE_EXPIRATION",
        ),
        (&["--mongo-query-timeout", "5"], "OTR_MONGO_QUERY_TIMEOUT"),
        (
            &["--resume-ts-read-retry-delay", "x"],
            "OTR_RESUME_TS_READ_RETRY_DELAY",
        ),
        (
            &["--redis-batch-size", "ten"],
            "invalid value \"ten\" for OTR_REDIS_BATCH_SIZE",
        ),
        (
            &["--redis-batch-size", "0"],
            "OTR_REDIS_BATCH_SIZE (--redis-batch-size): must be at least 1",
        ),
        (&["--buffer-size=-5"], "OTR_BUFFER_SIZE"),
        (&["--write-parallelism", "0"], "OTR_WRITE_PARALLELISM"),
        (&["--read-parallelism", "x"], "OTR_READ_PARALLELISM"),
        (
            &["--resume-ts-read-retries", "0"],
            "OTR_RESUME_TS_READ_RETRIES",
        ),
        (&["--redis-max-in-flight", "0"], "OTR_REDIS_MAX_IN_FLIGHT"),
        (&["--redis-max-outage", "forever"], "OTR_REDIS_MAX_OUTAGE"),
        (
            &["--shutdown-grace", "1d"],
            "OTR_SHUTDOWN_GRACE (--shutdown-grace): unknown unit \"d\"",
        ),
        (
            &["--http-server-addr", "9000"],
            "OTR_HTTP_SERVER_ADDR (--http-server-addr): expected host:port",
        ),
        (
            &["--redis-metadata-prefix", ""],
            "OTR_REDIS_METADATA_PREFIX",
        ),
        (
            &["--oplog-v2-extract-subfield-changes=yes"],
            "OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES",
        ),
        (
            &["--sentry-enabled=maybe"],
            "OTR_SENTRY_ENABLED (--sentry-enabled): expected true or false",
        ),
        (
            &["--resume-from-end-on-failure=2"],
            "OTR_RESUME_FROM_END_ON_FAILURE",
        ),
        (
            &["--catch-up-policy", "never"],
            "OTR_CATCH_UP_POLICY (--catch-up-policy): expected one of skip-to-end, replay",
        ),
        (&["--id-channel-style", "x"], "OTR_ID_CHANNEL_STYLE"),
        (
            &["--http-admin-token", ""],
            "OTR_HTTP_ADMIN_TOKEN (--http-admin-token): must not be empty",
        ),
        (
            &["--mongo-url", "http://h"],
            "for OTR_MONGO_URL (--mongo-url): unsupported scheme \"http\"",
        ),
        (
            &["--mongo-url", "localhost"],
            "OTR_MONGO_URL (--mongo-url): not a URL",
        ),
        (
            &["--redis-url", "http://h:1"],
            "OTR_REDIS_URL (--redis-url): unsupported scheme \"http\"",
        ),
        (
            &["--redis-url", "redis://h:1/db"],
            "OTR_REDIS_URL (--redis-url): invalid database",
        ),
        (
            &["--redis-url", ""],
            "OTR_REDIS_URL (--redis-url): no URL given",
        ),
    ];
    for (args, want) in cases {
        let err = run(args).expect_err(&format!("{args:?} should fail"));
        assert_eq!(err.exit_code(), 2, "{args:?}");
        let message = err.to_string();
        assert!(
            message.contains(want),
            "{args:?}: {message:?} lacks {want:?}"
        );
    }
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    let secret_cases: &[&[&str]] = &[
        &["--redis-url", "http://u:s3cr3t@h:1"],
        &["--redis-url", "redis://u:s3cr3t@h:port"],
        &["--redis-url", "redis://u:s3cr3t@h:1,mongodb://u:s3cr3t@h"],
        &["--mongo-url", "redis://u:s3cr3t@h:1"],
        &["--mongo-url", "mongodb://u:s3cr3t@"],
        &[
            "--redis-url",
            "redis://u:s3cr3t@h:1",
            "--max-catch-up",
            "abc",
        ],
        &[
            "--redis-url",
            "redis://u:s3cr3t@h:1",
            "--no-such-flag",
            "redis://u:s3cr3t@h",
        ],
        &["--redis-url", "redis://u:s3cr3t@h:1", "stray://u:s3cr3t@h"],
    ];
    for args in secret_cases {
        let err = run(args).expect_err(&format!("{args:?} should fail"));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("s3cr3t"), "{args:?} leaked: {shown}");
        assert_eq!(err.exit_code(), 2);
    }
    let config = run(&[
        "--mongo-url",
        "mongodb://u:s3cr3t@h:1",
        "--redis-url",
        "redis://u:s3cr3t@h:1",
        "--http-admin-token",
        "s3cr3t",
        "--pg-persistence-url",
        "postgres://u:s3cr3t@h",
        "--sentry-dsn",
        "https://s3cr3t@sentry.example/1",
    ])
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cr3t"), "{debug}");
    assert!(debug.contains("mongodb://u:***@h:1"), "{debug}");
}

#[test]
fn missing_required_settings_are_named() {
    let err = parse(&[]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let message = err.to_string();
    assert!(message.contains("OTR_MONGO_URL (--mongo-url)"), "{message}");
    assert!(message.contains("OTR_REDIS_URL (--redis-url)"), "{message}");
    let err = parse(&["--redis-url", REDIS]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "missing required setting: OTR_MONGO_URL (--mongo-url)"
    );
}

#[test]
fn run_is_the_default_command() {
    for args in [
        vec!["--mongo-url", MONGO, "--redis-url", REDIS],
        vec!["run", "--mongo-url", MONGO, "--redis-url", REDIS],
    ] {
        assert!(matches!(parse(&args), Ok(Invocation::Run(_))), "{args:?}");
    }
    let err = run(&["--bogus"]).unwrap_err();
    assert!(err.to_string().contains("--bogus"), "{err}");
    assert_eq!(err.exit_code(), 2);
}

/// Arguments, then the expected format, file, deep-v2 switch and id style.
type ExplainCase<'a> = (
    &'a [&'a str],
    ExplainFormat,
    Option<&'a str>,
    bool,
    IdChannelStyle,
);

#[test]
fn explain_needs_no_connection_settings() {
    let cases: &[ExplainCase] = &[
        (
            &["explain"],
            ExplainFormat::Text,
            None,
            false,
            IdChannelStyle::Meteor,
        ),
        (
            &["explain", "--format", "json", "entries.json"],
            ExplainFormat::Json,
            Some("entries.json"),
            false,
            IdChannelStyle::Meteor,
        ),
        (
            &[
                "explain",
                "--oplog-v2-extract-subfield-changes",
                "--id-channel-style",
                "raw",
                "-",
            ],
            ExplainFormat::Text,
            Some("-"),
            true,
            IdChannelStyle::Raw,
        ),
    ];
    for (args, format, file, deep, style) in cases {
        let Ok(Invocation::Explain(explain)) = parse(args) else {
            panic!("{args:?} did not parse as explain");
        };
        assert_eq!(explain.format, *format, "{args:?}");
        assert_eq!(
            explain.file.as_deref().and_then(|p| p.to_str()),
            *file,
            "{args:?}"
        );
        assert_eq!(
            explain.transform.oplog_v2_extract_subfield_changes, *deep,
            "{args:?}"
        );
        assert_eq!(explain.transform.id_channel_style, *style, "{args:?}");
    }
    let Ok(Invocation::Explain(raw)) = parse(&["explain", "--id-channel-style=raw"]) else {
        panic!("explain did not parse");
    };
    let settings = raw.transform.to_transform();
    assert_eq!(
        settings.id_channel_style,
        crate::transform::IdChannelStyle::Raw
    );
    assert!(!settings.extract_subfield_changes);
    let err = parse(&["explain", "--format", "xml"]).unwrap_err();
    assert!(err.to_string().contains("--format"), "{err}");
    let err = parse(&["explain", "--mongo-url", MONGO]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
}

#[test]
fn help_and_version_are_not_failures() {
    for args in [
        &["--help"][..],
        &["--version"],
        &["run", "--help"],
        &["explain", "--help"],
    ] {
        let err = parse(args).unwrap_err();
        assert_eq!(err.exit_code(), 0, "{args:?}");
    }
    // Help names each flag's variable (the real command: the hermetic one
    // has its variables switched off), and hides the values of secret ones.
    let Err(ConfigError::Usage(help)) = parse_with(Cli::command(), ["redtail", "run", "--help"])
    else {
        panic!("help is a usage outcome");
    };
    let text = help.render().to_string();
    assert!(text.contains("--max-catch-up"), "{text}");
    assert!(text.contains("[env: OTR_MAX_CATCH_UP"), "{text}");
    assert!(text.contains("[env: OTR_REDIS_URL]"), "{text}");
    assert!(text.contains("[env: OTR_HTTP_ADMIN_TOKEN]"), "{text}");
}

#[test]
fn empty_variables_count_as_unset_and_bare_names_are_fallbacks() {
    let values = [
        ("OTR_MAX_CATCH_UP", ""),
        ("OTR_HTTP_SERVER_ADDR", ""),
        ("HTTP_SERVER_ADDR", ":1234"),
        ("SENTRY_DSN", "https://k@s/1"),
        ("OTR_SENTRY_DSN", "https://other@s/1"),
        ("PG_PERSISTENCE_URL", ""),
        ("OPLOG_V2_EXTRACT_SUBFIELD_CHANGES", "true"),
    ];
    let lookup = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| OsString::from(v))
    };
    let mut changes = env_changes(&Cli::command(), &lookup);
    changes.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let want = [
        (
            "explain",
            "oplog_v2_extract_subfield_changes",
            EnvChange::Fallback("OPLOG_V2_EXTRACT_SUBFIELD_CHANGES"),
        ),
        (
            "run",
            "http_server_addr",
            EnvChange::Fallback("HTTP_SERVER_ADDR"),
        ),
        ("run", "max_catch_up", EnvChange::Ignore),
        (
            "run",
            "oplog_v2_extract_subfield_changes",
            EnvChange::Fallback("OPLOG_V2_EXTRACT_SUBFIELD_CHANGES"),
        ),
    ];
    let got = changes
        .iter()
        .map(|(s, a, c)| (s.as_str(), a.as_str(), c.clone()))
        .collect::<Vec<_>>();
    assert_eq!(got, want);

    // The error for a fallback value names the variable actually read.
    let command = adjust_env(Cli::command(), &lookup);
    let http = command
        .find_subcommand("run")
        .and_then(|run| {
            run.get_arguments()
                .find(|a| a.get_id() == "http_server_addr")
        })
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    assert_eq!(http.as_deref(), Some("HTTP_SERVER_ADDR"));
}

#[test]
fn scrubs_passwords_from_free_text() {
    let cases = [
        (
            "unexpected 'redis://u:s3cr3t@h:1' found",
            "unexpected 'redis://u:***@h:1' found",
        ),
        (
            "a mongodb://x:y@h b http://h/c",
            "a mongodb://x:***@h b http://h/c",
        ),
        ("no url here", "no url here"),
        ("redis://:pw@h", "redis://:***@h"),
    ];
    for (text, want) in cases {
        assert_eq!(errors::scrub_passwords(text), want);
    }
}

/// docs/configuration.md must be exactly what the code generates.
#[test]
fn docs_configuration_md_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let generated = reference_markdown();
    if std::env::var_os("REDTAIL_UPDATE_DOCS").is_some() {
        std::fs::write(path, &generated).expect("write docs/configuration.md");
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is stale; regenerate it with \
         REDTAIL_UPDATE_DOCS=1 cargo test --lib config::tests::docs"
    );
}

#[test]
fn reference_lists_every_variable() {
    let doc = reference_markdown();
    let run = Cli::command();
    let run = run.find_subcommand("run").unwrap();
    let mut count = 0;
    for arg in run.get_arguments() {
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(
                doc.contains(&format!("`{env}`")),
                "{env} missing from the reference"
            );
            count += 1;
        }
    }
    assert_eq!(
        count, 36,
        "a setting was added or removed: update this count knowingly"
    );
    assert!(doc.contains("`HTTP_SERVER_ADDR`"));
    assert!(
        doc.contains("| `OTR_MONGO_URL` | `--mongo-url <URL>` | required |"),
        "{doc}"
    );
}
