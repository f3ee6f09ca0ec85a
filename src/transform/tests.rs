//! Table tests over real oplog entries (`testdata/oplog_entries.json`,
//! copied from the shared fixtures) against hand-written expectations
//! (`testdata/oplog_expected.json`), plus the stateful cases: transactions,
//! resume positions and hostile bytes.

use bson::{Bson, Document, RawDocumentBuf, Timestamp, doc};
use serde::Deserialize;
use serde_json::Value;

use super::*;

const FIXTURES: &str = include_str!("../../testdata/oplog_entries.json");
const EXPECTED: &str = include_str!("../../testdata/oplog_expected.json");

#[derive(Deserialize)]
struct Fixture {
    id: String,
    /// Deserialized straight into a `Document` to keep field order.
    entry: Document,
}

fn fixtures() -> Vec<Fixture> {
    serde_json::from_str(FIXTURES).expect("testdata/oplog_entries.json parses")
}

fn fixture(id: &str) -> Document {
    fixtures()
        .into_iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no fixture {id}"))
        .entry
}

fn expected() -> Value {
    serde_json::from_str(EXPECTED).expect("testdata/oplog_expected.json parses")
}

fn raw(document: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(document).unwrap()
}

fn position_text(position: Option<OplogPosition>) -> Value {
    position.map_or(Value::Null, |p| {
        Value::String(format!("{}:{}", p.time, p.increment))
    })
}

/// The publications in the shape of the expectations file.
fn publications_as_json(outcome: &EntryOutcome) -> Value {
    Value::Array(
        outcome
            .publications
            .iter()
            .map(|p| {
                serde_json::json!({
                    "channels": p.channels,
                    "message": p.message,
                    "origin": position_text(Some(p.origin)),
                    "tx_index": p.tx_index,
                })
            })
            .collect(),
    )
}

/// Checks one outcome against `{publications}` or `{skipped}` and, when
/// given, `resume`.
fn check(label: &str, outcome: &EntryOutcome, expected: &Value) {
    let publications = publications_as_json(outcome);
    match expected.get("skipped") {
        Some(reason) => {
            assert_eq!(
                publications,
                Value::Array(vec![]),
                "{label}: expected no publication"
            );
            let actual = outcome.skip.as_ref().map(ToString::to_string);
            assert_eq!(actual.as_deref(), reason.as_str(), "{label}: skip reason");
        }
        None => {
            assert_eq!(
                &publications, &expected["publications"],
                "{label}: publications"
            );
            assert!(
                outcome.skip.is_none(),
                "{label}: unexpected skip {:?}",
                outcome.skip
            );
        }
    }
    if let Some(resume) = expected.get("resume") {
        assert_eq!(
            &position_text(outcome.resume_position),
            resume,
            "{label}: resume position"
        );
    }
    assert_eq!(
        outcome.unprocessable_fields, 0,
        "{label}: unprocessable fields"
    );
}

#[test]
fn every_fixture_entry_alone() {
    let expected = expected();
    let entries = expected["entries"].as_object().unwrap();
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), entries.len(), "one expectation per fixture");
    for fixture in &fixtures {
        let want = entries
            .get(&fixture.id)
            .unwrap_or_else(|| panic!("no expectation for {}", fixture.id));
        let outcome = Transformer::new(TransformSettings::default()).apply(&raw(&fixture.entry));
        check(&fixture.id, &outcome, want);

        // Facts every outcome shares, whatever the entry.
        let ts = fixture
            .entry
            .get_timestamp("ts")
            .ok()
            .map(OplogPosition::from);
        assert_eq!(outcome.position, ts, "{}: position", fixture.id);
        if want.get("resume").is_none() {
            assert_eq!(
                outcome.resume_position, ts,
                "{}: resume position",
                fixture.id
            );
        }
        let wall = fixture
            .entry
            .get_datetime("wall")
            .ok()
            .map(|dt| dt.timestamp_millis());
        for publication in &outcome.publications {
            assert_eq!(publication.wall_ms, wall, "{}: wall", fixture.id);
            assert_eq!(
                publication.namespace, publication.channels[0],
                "{}: namespace",
                fixture.id
            );
            let message: Value =
                serde_json::from_str(&publication.message).expect("message is JSON");
            assert!(message["f"].is_array(), "{}: f is an array", fixture.id);
        }
    }
}

/// Completes an entry whose source printed only part of it.
fn completed(mut entry: Document) -> Document {
    if !entry.contains_key("ts") {
        entry.insert(
            "ts",
            Timestamp {
                time: 1,
                increment: 1,
            },
        );
    }
    if !entry.contains_key("ns") {
        entry.insert("ns", "test.c");
    }
    if !entry.contains_key("o2") {
        entry.insert("o2", doc! { "_id": 1 });
    }
    entry
}

#[test]
fn v2_fixture_updates_in_both_modes() {
    let expected = expected();
    for (id, want) in expected["completed_updates"].as_object().unwrap() {
        let entry = raw(&completed(fixture(id)));
        for (mode, deep) in [("shallow", false), ("deep", true)] {
            let settings = TransformSettings {
                extract_subfield_changes: deep,
                ..Default::default()
            };
            let outcome = Transformer::new(settings).apply(&entry);
            assert_eq!(outcome.publications.len(), 1, "{id} {mode}: {outcome:?}");
            let message: Value = serde_json::from_str(&outcome.publications[0].message).unwrap();
            assert_eq!(message["e"], "u", "{id} {mode}");
            assert_eq!(message["f"], want[mode], "{id} {mode}");
            assert_eq!(outcome.unprocessable_fields, 0, "{id} {mode}");
        }
    }
}

/// Entries the sequences need beyond the fixtures themselves.
fn sequence_entry(name: &str) -> Document {
    match name {
        "noop-before" => doc! {
            "ts": Timestamp { time: 1515616499, increment: 9 }, "op": "n", "ns": "", "o": { "msg": "periodic noop" },
        },
        // The source's "prepared, aborted" case has the prepared entry's
        // shape with the abort's session: build it that way.
        "derived-prepared-for-abort" => {
            let mut entry = fixture("oplog-mongotools-txn-prepared-applyOps");
            let abort = fixture("oplog-mongotools-txn-abortTransaction");
            entry.insert("lsid", abort.get("lsid").unwrap().clone());
            entry
        }
        id => fixture(id),
    }
}

#[test]
fn transaction_sequences_through_one_transformer() {
    let expected = expected();
    for sequence in expected["sequences"].as_array().unwrap() {
        let name = sequence["name"].as_str().unwrap();
        let mut transformer = Transformer::new(TransformSettings::default());
        for step in sequence["steps"].as_array().unwrap() {
            let entry = step["entry"].as_str().unwrap();
            let outcome = transformer.apply(&raw(&sequence_entry(entry)));
            check(&format!("{name} / {entry}"), &outcome, step);
        }
        assert_eq!(
            transformer.open_transactions(),
            0,
            "{name}: nothing left open"
        );
    }
}

#[test]
fn resume_position_waits_for_the_oldest_open_transaction() {
    let session = |n: i32| doc! { "id": Bson::Int32(n) };
    let chunk = |t: u32, n: i32, partial: bool| {
        let mut o = doc! { "applyOps": [ { "op": "i", "ns": "a.b", "o": { "_id": t as i32 } } ] };
        if partial {
            o.insert("partialTxn", true);
        }
        doc! { "ts": Timestamp { time: t, increment: 0 }, "op": "c", "ns": "admin.$cmd", "o": o,
        "lsid": session(n), "txnNumber": 1_i64 }
    };
    let insert = |t: u32| doc! { "ts": Timestamp { time: t, increment: 0 }, "op": "i", "ns": "a.b", "o": { "_id": 0 } };
    let mut transformer = Transformer::new(TransformSettings::default());
    let mut resume = |entry: Document| {
        transformer
            .apply(&raw(&entry))
            .resume_position
            .map(|p| p.time)
    };
    assert_eq!(resume(insert(1)), Some(1));
    assert_eq!(resume(chunk(2, 1, true)), Some(1)); // A opens
    assert_eq!(resume(insert(3)), Some(1));
    assert_eq!(resume(chunk(4, 2, true)), Some(1)); // B opens
    assert_eq!(resume(chunk(5, 1, false)), Some(3)); // A commits: B still holds at 3
    assert_eq!(resume(chunk(6, 2, false)), Some(6)); // B commits
    // An unreadable entry repeats the last resume position.
    assert_eq!(resume(doc! { "op": "n" }), Some(6));
}

#[test]
fn rereading_buffered_chunks_after_a_restart_publishes_once() {
    let first = fixture("oplog-mongotools-txn-large-unprepared-1");
    let second = fixture("oplog-mongotools-txn-large-unprepared-2");
    let last = fixture("oplog-mongotools-txn-large-unprepared-3");
    let mut transformer = Transformer::new(TransformSettings::default());
    transformer.apply(&raw(&first));
    transformer.apply(&raw(&second));
    // The tail restarts from the hold and reads the chunks again.
    assert_eq!(
        transformer.apply(&raw(&first)).skip.unwrap().reason,
        SkipReason::DuplicateChunk
    );
    assert_eq!(
        transformer.apply(&raw(&second)).skip.unwrap().reason,
        SkipReason::DuplicateChunk
    );
    assert_eq!(transformer.apply(&raw(&last)).publications.len(), 6);
}

#[test]
fn transaction_operations_are_filtered_one_by_one() {
    let entry = doc! {
        "ts": Timestamp { time: 7, increment: 1 }, "op": "c", "ns": "admin.$cmd", "o": { "applyOps": [
            { "op": "i", "ns": "admin.system.users", "o": { "_id": "u" } },
            { "op": "i", "ns": "a.b", "o": { "_id": Bson::MaxKey } },
            { "op": "c", "ns": "a.$cmd", "o": { "create": "b" } },
            { "op": "u", "ns": "a.b", "o2": { "_id": "x" }, "o": { "$v": 2, "diff": { "q": 1, "u": { "k": 1 } } } },
        ] },
    };
    let outcome = Transformer::new(TransformSettings::default()).apply(&raw(&entry));
    assert_eq!(outcome.publications.len(), 1);
    assert_eq!(
        outcome.publications[0].tx_index, 2,
        "skipped CRUD operations still take an index"
    );
    assert_eq!(
        outcome.publications[0].message,
        r#"{"e":"u","d":{"_id":"x"},"f":["k"]}"#
    );
    assert_eq!(outcome.unprocessable_fields, 1);
    assert_eq!(outcome.skip, None);
    let reasons: Vec<String> = outcome
        .operation_skips
        .iter()
        .map(|s| s.reason.to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "system collection",
            "unsupported _id type: MaxKey",
            "command: create"
        ]
    );
    let indices: Vec<Option<u32>> = outcome.operation_skips.iter().map(|s| s.tx_index).collect();
    assert_eq!(indices, [Some(0), Some(1), None]);
}

#[test]
fn a_transaction_with_nothing_to_publish_says_so() {
    let entry = doc! {
        "ts": Timestamp { time: 7, increment: 1 }, "op": "c", "ns": "admin.$cmd",
        "o": { "applyOps": [ { "op": "i", "ns": "config.x", "o": { "_id": 1 } } ] },
    };
    let outcome = Transformer::new(TransformSettings::default()).apply(&raw(&entry));
    assert_eq!(
        outcome.skip.unwrap().to_string(),
        "nothing to publish in transaction"
    );
    assert_eq!(
        outcome.operation_skips[0].reason,
        SkipReason::InternalDatabase
    );
}

#[test]
fn skips_and_malformed_entries_have_clear_reasons() {
    let ts = Timestamp {
        time: 1,
        increment: 1,
    };
    let cases: Vec<(Document, &str)> = vec![
        (
            doc! { "ts": ts, "op": "i", "ns": "local.x", "o": { "_id": 1 } },
            "config/local database",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "config.x", "o": { "_id": 1 } },
            "config/local database",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "db.system.js", "o": { "_id": 1 } },
            "system collection",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "a.b", "o": { "_id": ts } },
            "unsupported _id type: Timestamp",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "a.b", "o": { "_id": Bson::MinKey } },
            "unsupported _id type: MinKey",
        ),
        (
            doc! { "ts": ts, "op": "db", "ns": "a" },
            "unsupported op: db",
        ),
        (
            doc! { "ts": ts, "ns": "a.b", "o": { "_id": 1 } },
            "malformed: missing field op",
        ),
        (
            doc! { "ts": ts, "op": "i", "o": { "_id": 1 } },
            "malformed: missing field ns",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "ab", "o": { "_id": 1 } },
            "malformed: namespace \"ab\" has no collection part",
        ),
        (
            doc! { "ts": ts, "op": "i", "ns": "a.b", "o": { "x": 1 } },
            "malformed: missing field o._id",
        ),
        (
            doc! { "ts": ts, "op": "u", "ns": "a.b", "o": { "$set": { "x": 1 } } },
            "malformed: missing field o2",
        ),
        (
            doc! { "ts": ts, "op": "d", "ns": "a.b", "o": "x" },
            "malformed: field o is String, expected Document",
        ),
        (
            doc! { "ts": 5, "op": "i", "ns": "a.b", "o": { "_id": 1 } },
            "malformed: field ts is Int32, expected Timestamp",
        ),
        (
            doc! { "ts": ts, "op": 1 },
            "malformed: field op is Int32, expected String",
        ),
        (
            doc! { "ts": ts, "op": "c", "ns": "admin.$cmd", "o": { "applyOps": 3 } },
            "malformed: field o.applyOps is Int32, expected Array",
        ),
        (
            doc! { "ts": ts, "op": "c", "ns": "admin.$cmd", "o": { "shutdown": 1 } },
            "command: shutdown",
        ),
    ];
    for (entry, reason) in cases {
        let outcome = Transformer::new(TransformSettings::default()).apply(&raw(&entry));
        assert!(outcome.publications.is_empty(), "{entry}");
        assert_eq!(
            outcome.skip.map(|s| s.to_string()).as_deref(),
            Some(reason),
            "{entry}"
        );
    }
}

#[test]
fn raw_style_matches_the_peers_channels() {
    let settings = TransformSettings {
        id_channel_style: IdChannelStyle::Raw,
        ..Default::default()
    };
    let ts = Timestamp {
        time: 1,
        increment: 1,
    };
    let cases = [
        (
            Bson::String("5e4fa224a6717632d6ee2e85".into()),
            vec!["a.b", "a.b::5e4fa224a6717632d6ee2e85"],
        ),
        (Bson::Int32(1), vec!["a.b"]),
    ];
    for (id, channels) in cases {
        let entry = doc! { "ts": ts, "op": "d", "ns": "a.b", "o": { "_id": id.clone() } };
        let outcome = Transformer::new(settings).apply(&raw(&entry));
        assert_eq!(outcome.publications[0].channels, channels, "{id}");
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Flip every byte of a real entry (keeping the length header and the
    // final NUL that RawDocument checks) to a few values: each mutation must
    // give an outcome, never a panic.
    let original = raw(&fixture("oplog-mongotools-txn-small-unprepared")).into_bytes();
    let mut outcomes = 0;
    for index in 4..original.len() - 1 {
        for value in [0x00, 0x01, 0x03, 0x7f, 0xff] {
            let mut bytes = original.clone();
            bytes[index] = value;
            if let Ok(doc) = bson::RawDocument::from_bytes(&bytes) {
                let outcome = Transformer::new(TransformSettings::default()).apply(doc);
                assert!(outcome.skip.is_some() || !outcome.publications.is_empty());
                outcomes += 1;
            }
        }
    }
    assert!(outcomes > 1000, "only {outcomes} mutations were tried");
}
