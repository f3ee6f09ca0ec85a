//! The real `redtail` binary refusing bad configuration: exit code 2, a
//! message naming the variable, and never a password on any output.
//!
//! Every case is invalid, so the binary exits during configuration; none
//! needs MongoDB or Redis, and each run is bounded by a timeout.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_redtail");
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const MONGO: &str = "mongodb://127.0.0.1:1";
const REDIS: &str = "redis://127.0.0.1:1";

/// What one run of the binary produced.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with exactly `env` as `OTR_*`-relevant environment (the
/// test process's own OTR_ variables are removed) and `args`.
fn run(env: &[(&str, &str)], args: &[&str]) -> Outcome {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        let bare_fallback = [
            "HTTP_SERVER_ADDR",
            "PG_PERSISTENCE_URL",
            "SENTRY_DSN",
            "OPLOG_V2_EXTRACT_SUBFIELD_CHANGES",
        ];
        if name.starts_with("OTR_") || bare_fallback.contains(&name.as_str()) {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied()).args(args);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redtail");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redtail") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Outcome {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// Environment variables of one case.
type Env<'a> = &'a [(&'a str, &'a str)];

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let cases: &[(Env, &[&str], &str)] = &[
        (&[("OTR_REDIS_URL", REDIS)], &[], "OTR_MONGO_URL"),
        (&[("OTR_MONGO_URL", MONGO)], &[], "OTR_REDIS_URL"),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("OTR_MAX_CATCH_UP", "abc"),
            ],
            &[],
            "invalid value \"abc\" for OTR_MAX_CATCH_UP",
        ),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("OTR_TIMESTAMP_FLUSH_INTERVAL", "5"),
            ],
            &[],
            "OTR_TIMESTAMP_FLUSH_INTERVAL",
        ),
        (
            &[
                ("OTR_MONGO_URL", "http://127.0.0.1:1"),
                ("OTR_REDIS_URL", REDIS),
            ],
            &[],
            "OTR_MONGO_URL",
        ),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", "http://127.0.0.1:1"),
            ],
            &[],
            "OTR_REDIS_URL",
        ),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("OTR_REDIS_BATCH_SIZE", "many"),
            ],
            &[],
            "OTR_REDIS_BATCH_SIZE",
        ),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("OTR_CATCH_UP_POLICY", "sometimes"),
            ],
            &[],
            "OTR_CATCH_UP_POLICY",
        ),
        // The unprefixed fallback is read, and named, when the OTR_ name is unset.
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("HTTP_SERVER_ADDR", "nonsense"),
            ],
            &[],
            "HTTP_SERVER_ADDR",
        ),
        // Flags are named too.
        (
            &[],
            &[
                "--mongo-url",
                MONGO,
                "--redis-url",
                REDIS,
                "--write-parallelism",
                "0",
            ],
            "OTR_WRITE_PARALLELISM",
        ),
    ];
    for (env, args, named) in cases {
        let outcome = run(env, args);
        assert_eq!(
            outcome.code,
            Some(2),
            "{env:?} {args:?}: stderr {}",
            outcome.stderr
        );
        assert!(
            outcome.stderr.contains(named),
            "{env:?} {args:?}: stderr {:?} lacks {named:?}",
            outcome.stderr
        );
    }
}

#[test]
fn empty_variables_count_as_unset() {
    // OTR_MAX_CATCH_UP="" would be invalid if parsed; it must fall back to
    // the default, so the only error left is the deliberately bad batch size.
    let outcome = run(
        &[
            ("OTR_MONGO_URL", MONGO),
            ("OTR_REDIS_URL", REDIS),
            ("OTR_MAX_CATCH_UP", ""),
            ("OTR_REDIS_BATCH_SIZE", "0"),
        ],
        &[],
    );
    assert_eq!(outcome.code, Some(2));
    assert!(
        !outcome.stderr.contains("OTR_MAX_CATCH_UP"),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.contains("OTR_REDIS_BATCH_SIZE"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn passwords_never_reach_any_output() {
    let secret = "s3cr3t";
    let cases: &[(Env, &[&str])] = &[
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", "redis://u:s3cr3t@127.0.0.1:1"),
                ("OTR_MAX_CATCH_UP", "abc"),
            ],
            &[],
        ),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", "http://u:s3cr3t@127.0.0.1:1"),
            ],
            &[],
        ),
        (
            &[
                ("OTR_MONGO_URL", "mongodb://u:s3cr3t@127.0.0.1:port"),
                ("OTR_REDIS_URL", REDIS),
            ],
            &[],
        ),
        (&[("OTR_REDIS_URL", "redis://u:s3cr3t@127.0.0.1:1")], &[]),
        (
            &[
                ("OTR_MONGO_URL", MONGO),
                ("OTR_REDIS_URL", REDIS),
                ("OTR_HTTP_ADMIN_TOKEN", secret),
                ("OTR_BUFFER_SIZE", "x"),
            ],
            &[],
        ),
        (
            &[],
            &[
                "--redis-url",
                "redis://u:s3cr3t@127.0.0.1:1",
                "--unknown-flag",
                "redis://u:s3cr3t@h",
            ],
        ),
        (
            &[
                ("OTR_REDIS_URL", "redis://u:s3cr3t@127.0.0.1:1"),
                ("OTR_MONGO_URL", MONGO),
            ],
            &["--help"],
        ),
    ];
    for (env, args) in cases {
        let outcome = run(env, args);
        assert!(
            !outcome.stderr.contains(secret) && !outcome.stdout.contains(secret),
            "{env:?} {args:?} leaked: stdout {:?} stderr {:?}",
            outcome.stdout,
            outcome.stderr
        );
        let expected = if args.contains(&"--help") { 0 } else { 2 };
        assert_eq!(
            outcome.code,
            Some(expected),
            "{env:?} {args:?}: {}",
            outcome.stderr
        );
    }
}

#[test]
fn explain_needs_no_mongo_url() {
    // `explain` reads only the transform settings: a bad connection setting
    // in the environment must not stop it, a bad transform setting must.
    let outcome = run(
        &[
            ("OTR_MAX_CATCH_UP", "abc"),
            ("OTR_ID_CHANNEL_STYLE", "fancy"),
        ],
        &["explain", "-"],
    );
    assert_eq!(outcome.code, Some(2), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("OTR_ID_CHANNEL_STYLE"),
        "{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("OTR_MONGO_URL"),
        "{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains("OTR_MAX_CATCH_UP"),
        "{}",
        outcome.stderr
    );
}
