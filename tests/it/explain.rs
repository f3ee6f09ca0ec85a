//! The real `redtail explain` subcommand: `redtail explain [--format json|text] [FILE]`.
//!
//! These tests run the binary on the real fixture entries
//! (`testdata/explain_input.jsonl`, one canonical Extended JSON entry per
//! line, copied from `testdata/oplog_entries.json`) and compare its output
//! line by line with what the hand-written expectations in
//! `testdata/oplog_expected.json` say. No MongoDB or Redis is involved; each
//! run is bounded by a timeout.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const BINARY: &str = env!("CARGO_BIN_EXE_redtail");
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `redtail <args>` with `stdin` as its input and only `env` among the
/// settings variables (the test process's own are removed).
fn run(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Outcome {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars() {
        if name.starts_with("OTR_") || name == "OPLOG_V2_EXTRACT_SUBFIELD_CHANGES" {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn redtail");
    // Feed and drain on threads so a full pipe can never block the test.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let mut err = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for redtail") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redtail {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    Outcome {
        success: status.success(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn read_testdata(name: &str) -> String {
    std::fs::read_to_string(format!("{TESTDATA}/{name}"))
        .unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

include!("../../testdata/expected_explain_lines.rs");

fn expected_fixture_lines() -> Vec<String> {
    expected_explain_lines(
        &read_testdata("oplog_entries.json"),
        &read_testdata("oplog_expected.json"),
    )
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn explain_json_from_a_file_matches_the_fixture_expectations() {
    let path = format!("{TESTDATA}/explain_input.jsonl");
    let outcome = run(&["explain", "--format", "json", &path], &[], "");
    assert!(outcome.success, "stderr: {}", outcome.stderr);
    assert_eq!(lines(&outcome.stdout), expected_fixture_lines());
}

#[test]
fn explain_json_from_stdin_matches_the_file_run() {
    let input = read_testdata("explain_input.jsonl");
    let outcome = run(&["explain", "--format", "json"], &[], &input);
    assert!(outcome.success, "stderr: {}", outcome.stderr);
    assert_eq!(lines(&outcome.stdout), expected_fixture_lines());
}

#[test]
fn explain_reads_a_json_array_too() {
    let input = format!(
        "[\n{}\n]\n",
        read_testdata("explain_input.jsonl")
            .lines()
            .collect::<Vec<_>>()
            .join(",\n")
    );
    let outcome = run(&["explain", "--format", "json"], &[], &input);
    assert!(outcome.success, "stderr: {}", outcome.stderr);
    assert_eq!(lines(&outcome.stdout), expected_fixture_lines());
}

/// `$set: {'b.d': 2}` on a 5.0+ server, from MongoDB's own jstests.
const NESTED_SET: &str = r#"{"ts":{"$timestamp":{"t":1,"i":1}},"op":"u","ns":"test.t1","o":{"$v":{"$numberInt":"2"},"diff":{"sb":{"i":{"d":2}}}},"o2":{"_id":8}}"#;

#[test]
fn explain_honours_the_subfield_setting() {
    let shallow = run(&["explain", "--format", "json"], &[], NESTED_SET);
    let deep = run(
        &["explain", "--format", "json"],
        &[("OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES", "true")],
        NESTED_SET,
    );
    let line = |f: &str| {
        json!({ "channels": ["test.t1", "test.t1::~8"], "message": format!(r#"{{"e":"u","d":{{"_id":8}},"f":[{f}]}}"#) })
            .to_string()
    };
    assert_eq!(
        lines(&shallow.stdout),
        [line(r#""b""#)],
        "stderr: {}",
        shallow.stderr
    );
    assert_eq!(
        lines(&deep.stdout),
        [line(r#""b.d""#)],
        "stderr: {}",
        deep.stderr
    );
}

#[test]
fn explain_reports_bad_lines_and_keeps_going() {
    let input = format!("not json\n{NESTED_SET}\n");
    let outcome = run(&["explain", "--format", "json"], &[], &input);
    let lines = lines(&outcome.stdout);
    assert_eq!(
        lines.len(),
        2,
        "stdout: {} stderr: {}",
        outcome.stdout,
        outcome.stderr
    );
    assert_eq!(lines[0], r#"{"skipped":"malformed: not a JSON object"}"#);
    assert!(lines[1].contains(r#"\"f\":[\"b\"]"#), "{}", lines[1]);
}

#[test]
fn explain_text_format_is_for_people() {
    let outcome = run(&["explain", "--format", "text"], &[], NESTED_SET);
    assert!(outcome.success, "stderr: {}", outcome.stderr);
    assert!(
        outcome
            .stdout
            .contains("publish to test.t1 and test.t1::~8"),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome
            .stdout
            .contains(r#"{"e":"u","d":{"_id":8},"f":["b"]}"#),
        "{}",
        outcome.stdout
    );
}
