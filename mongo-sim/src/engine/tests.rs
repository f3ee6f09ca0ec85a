//! Engine tests against real servers' oplog entries and change events
//! (`mongo-sim/testdata/*.json`, copied from the shared fixtures): the
//! entries the engine writes must have the fixtures' keys in the fixtures'
//! order and the same diff shapes; events fed from fixture entries must equal
//! the fixture events exactly (resume tokens included).

use std::time::{Duration, Instant};

use bson::{Bson, Document, Timestamp, doc, spec::BinarySubtype};

use super::change_stream::{ChangeStreamCursor, ChangeStreamSpec};
use super::*;

const OPLOG_FIXTURES: &str = include_str!("../../testdata/oplog_entries.json");
const EVENT_FIXTURES: &str = include_str!("../../testdata/change_events.json");

/// One fixture item; `entry` is read through bson's own deserializer, which
/// understands extended JSON and (unlike `serde_json::Value`) keeps key order.
#[derive(serde::Deserialize)]
struct FixtureItem {
    id: String,
    entry: Document,
}

fn fixture_from(text: &str, id: &str) -> Document {
    let items: Vec<FixtureItem> = serde_json::from_str(text).expect("fixture JSON");
    let item = items
        .into_iter()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("no fixture {id}"));
    item.entry
}

fn oplog_fixture(id: &str) -> Document {
    fixture_from(OPLOG_FIXTURES, id)
}

fn event_fixture(id: &str) -> Document {
    fixture_from(EVENT_FIXTURES, id)
}

fn engine_with(version: MongoVersion, chunk: usize) -> Arc<Engine> {
    Engine::new(EngineConfig {
        version,
        oplog_capacity_bytes: 64 << 20,
        txn_chunk_ops: chunk,
    })
}

fn engine(version: MongoVersion) -> Arc<Engine> {
    engine_with(version, 1000)
}

fn run(engine: &Engine, db: &str, cmd: Document) -> Document {
    match engine.run_command(db, &cmd) {
        Ok(CommandReply::Document(doc)) => doc,
        Ok(CommandReply::Cursor { documents, .. }) => doc! {"documents": documents},
        Err(e) => panic!("{cmd} failed: {e}"),
    }
}

fn all_entries(engine: &Engine) -> Vec<Document> {
    let everything = OplogFilter::parse(&doc! {}).unwrap();
    let start = engine.oplog_cursor_start(&everything);
    engine.read_oplog(start, &everything, 0).unwrap().entries
}

fn keys(doc: &Document) -> Vec<&str> {
    doc.keys().map(String::as_str).collect()
}

fn sub<'a>(doc: &'a Document, key: &str) -> &'a Document {
    doc.get_document(key)
        .unwrap_or_else(|_| panic!("{key} missing in {doc}"))
}

/// Checks the value types a real entry carries, whatever the version.
fn assert_entry_types(entry: &Document, version: MongoVersion) {
    assert!(
        matches!(entry.get("ts"), Some(Bson::Timestamp(_))),
        "{entry}"
    );
    assert_eq!(entry.get("t"), Some(&Bson::Int64(1)), "{entry}");
    let v = if version == MongoVersion::V4_4 {
        Bson::Int32(2)
    } else {
        Bson::Int64(2)
    };
    assert_eq!(entry.get("v"), Some(&v), "{entry}");
    assert!(
        matches!(entry.get("wall"), Some(Bson::DateTime(_))),
        "{entry}"
    );
    if let Some(ui) = entry.get("ui") {
        assert!(
            matches!(ui, Bson::Binary(b) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16),
            "{entry}"
        );
    }
}

#[test]
fn implicit_create_then_insert_like_a_6_0_server() {
    let e = engine(MongoVersion::V6_0);
    run(
        &e,
        "test",
        doc! {"insert": "mango", "documents": [{"_id": 1, "val": "B", "caseSensitiveColl": false}]},
    );
    let entries = all_entries(&e);
    assert_eq!(entries.len(), 2);
    let (create, insert) = (&entries[0], &entries[1]);
    let want_create = oplog_fixture("oplog-toff-c-create");
    let want_insert = oplog_fixture("oplog-toff-i");
    assert_eq!(keys(create), keys(&want_create));
    assert_eq!(sub(create, "o"), sub(&want_create, "o"));
    assert_eq!(keys(insert), keys(&want_insert));
    assert_eq!(sub(insert, "o"), sub(&want_insert, "o"));
    assert_eq!(
        create.get("ui"),
        insert.get("ui"),
        "one UUID per collection"
    );
    for entry in &entries {
        assert_entry_types(entry, MongoVersion::V6_0);
    }
    assert!(create.get_timestamp("ts").unwrap() < insert.get_timestamp("ts").unwrap());
}

#[test]
fn v2_updates_match_fixture_diffs() {
    let cases: Vec<(Document, Document, &str)> = vec![
        (
            doc! {"_id": 8, "b": {"c": 1}},
            doc! {"$set": {"b.d": 2}},
            "oplog-jstest-u-v2-nested-set",
        ),
        (
            doc! {"_id": 3, "a": 1, "b": 2},
            doc! {"$unset": {"b": ""}},
            "oplog-jstest-u-v2-unset",
        ),
        (
            doc! {"_id": 8, "b": 1},
            doc! {"$set": {"a": 1}},
            "oplog-toff-u-v2-insert-field",
        ),
    ];
    let shape = oplog_fixture("oplog-toff-u-v2-insert-field");
    for (start, update, fixture) in cases {
        for version in [MongoVersion::V5_0, MongoVersion::V6_0, MongoVersion::V8_0] {
            let e = engine(version);
            run(
                &e,
                "test",
                doc! {"insert": "t1", "documents": [start.clone()]},
            );
            let id = start.get("_id").unwrap().clone();
            let reply = run(
                &e,
                "test",
                doc! {"update": "t1", "updates": [{"q": {"_id": id.clone()}, "u": update.clone()}]},
            );
            assert_eq!(
                (reply.get_i32("n").ok(), reply.get_i32("nModified").ok()),
                (Some(1), Some(1))
            );
            let entry = all_entries(&e).pop().unwrap();
            assert_eq!(keys(&entry), keys(&shape), "{fixture}");
            assert_entry_types(&entry, version);
            let want = oplog_fixture(fixture);
            assert_eq!(
                sub(sub(&entry, "o"), "diff"),
                sub(sub(&want, "o"), "diff"),
                "{fixture}"
            );
            assert_eq!(sub(&entry, "o").get("$v"), Some(&Bson::Int32(2)));
            assert_eq!(sub(&entry, "o2"), &doc! {"_id": id});
        }
    }
}

#[test]
fn positional_and_array_updates_write_array_diffs() {
    let e = engine(MongoVersion::V6_0);
    run(
        &e,
        "test",
        doc! {"insert": "c", "documents": [{"_id": 1, "arr": [{"value": 1}, {"value": 2}], "hello": [{"value": 0}, {"value": 0}]}]},
    );
    let updates = [
        (
            doc! {"_id": 1, "arr.value": 2},
            doc! {"$inc": {"arr.$.value": 5}},
            doc! {"sarr": {"a": true, "s1": {"u": {"value": 7}}}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$set": {"hello.1.value": "x"}},
            doc! {"shello": {"a": true, "s1": {"u": {"value": "x"}}}},
        ),
        (
            doc! {"_id": 1},
            doc! {"$push": {"hello": {"value": 9}}},
            doc! {"shello": {"a": true, "u2": {"value": 9}}},
        ),
    ];
    for (q, u, want) in updates {
        run(
            &e,
            "test",
            doc! {"update": "c", "updates": [{"q": q, "u": u.clone()}]},
        );
        let entry = all_entries(&e).pop().unwrap();
        assert_eq!(sub(&entry, "o").get_document("diff").unwrap(), &want, "{u}");
    }
    let doc = e.find_by_id("test.c", &Bson::Int32(1)).unwrap();
    assert_eq!(
        doc.get_array("arr").unwrap()[1],
        Bson::Document(doc! {"value": 7})
    );
    assert_eq!(doc.get_array("hello").unwrap().len(), 3);
}

#[test]
fn v1_updates_replacements_deletes_and_inserts_like_4_4() {
    let e = engine(MongoVersion::V4_4);
    let id = bson::oid::ObjectId::parse_str("5e5384f97dc0f30426f01b79").unwrap();
    run(
        &e,
        "zz",
        doc! {"insert": "test", "documents": [{"_id": id, "kick": 1}]},
    );
    run(
        &e,
        "zz",
        doc! {"update": "test", "updates": [{"q": {"kick": 1}, "u": {"kick": 10, "ok": true}}]},
    );
    run(
        &e,
        "zz",
        doc! {"update": "test", "updates": [{"q": {"_id": id}, "u": {"$set": {"plus_field": 2}, "$unset": {"ok": 1}}}]},
    );
    run(
        &e,
        "zz",
        doc! {"delete": "test", "deletes": [{"q": {"_id": id}, "limit": 1}]},
    );
    let entries = all_entries(&e);
    let ops: Vec<&str> = entries.iter().map(|x| x.get_str("op").unwrap()).collect();
    assert_eq!(ops, vec!["c", "i", "u", "u", "d"]);
    let pairs = [
        (&entries[1], "oplog-mongoshake42-i"),
        (&entries[2], "oplog-mongoshake42-u-replacement"),
        (&entries[3], "oplog-mongoshake42-u-v1-set-unset"),
        (&entries[4], "oplog-mongoshake42-d"),
    ];
    for (entry, fixture) in pairs {
        let want = oplog_fixture(fixture);
        assert_eq!(keys(entry), keys(&want), "{fixture}");
        assert_entry_types(entry, MongoVersion::V4_4);
        match fixture {
            "oplog-mongoshake42-i" => assert_eq!(sub(entry, "o"), &doc! {"_id": id, "kick": 1}),
            "oplog-mongoshake42-d" => assert_eq!(sub(entry, "o"), &doc! {"_id": id}),
            _ => assert_eq!(sub(entry, "o"), sub(&want, "o"), "{fixture}"),
        }
        assert_eq!(entry.get("h"), Some(&Bson::Int64(0)));
    }
}

#[test]
fn ddl_entries_match_fixtures() {
    let e = engine(MongoVersion::V4_4);
    for coll in ["test", "other", "third"] {
        run(
            &e,
            "zz",
            doc! {"insert": coll, "documents": [{"a": 1}, {"a": 2}, {"a": 3}]},
        );
    }
    run(&e, "zz", doc! {"drop": "test"});
    run(
        &e,
        "admin",
        doc! {"renameCollection": "zz.other", "to": "zz.test_collection_rename"},
    );
    run(&e, "zz", doc! {"dropDatabase": 1});
    let entries = all_entries(&e);
    let commands: Vec<&Document> = entries
        .iter()
        .filter(|x| x.get_str("op").ok() == Some("c"))
        .map(|x| sub(x, "o"))
        .collect();
    let names: Vec<&str> = commands
        .iter()
        .map(|o| o.keys().next().unwrap().as_str())
        .collect();
    assert_eq!(
        names,
        vec![
            "create",
            "create",
            "create",
            "drop",
            "renameCollection",
            "drop",
            "drop",
            "dropDatabase"
        ]
    );
    let drop = entries
        .iter()
        .find(|x| sub(x, "o").contains_key("drop"))
        .unwrap();
    let want = oplog_fixture("oplog-mongoshake42-c-drop");
    assert_eq!(keys(drop), keys(&want));
    assert_eq!(sub(drop, "o2"), sub(&want, "o2"), "numRecords");
    let rename = entries
        .iter()
        .find(|x| sub(x, "o").contains_key("renameCollection"))
        .unwrap();
    let want = oplog_fixture("oplog-mongoshake42-c-renameCollection");
    assert_eq!(keys(rename), keys(&want));
    assert_eq!(keys(sub(rename, "o")), keys(sub(&want, "o")));
    assert_eq!(
        sub(rename, "o").get_str("to").ok(),
        Some("zz.test_collection_rename")
    );
    let drop_db = entries.last().unwrap();
    let want = oplog_fixture("oplog-mongoshake42-c-dropDatabase");
    assert_eq!(keys(drop_db), keys(&want));
    assert_eq!(sub(drop_db, "o"), sub(&want, "o"));
    for entry in &entries {
        assert_entry_types(entry, MongoVersion::V4_4);
    }
    let listed = run(&e, "zz", doc! {"listCollections": 1});
    assert!(listed.get_array("documents").unwrap().is_empty());
}

#[test]
fn index_and_create_entries_match_6_0_fixtures() {
    let e = engine(MongoVersion::V6_0);
    run(
        &e,
        "zhongli",
        doc! {"create": "test_create_collection", "changeStreamPreAndPostImages": {"enabled": true}},
    );
    run(
        &e,
        "foo",
        doc! {"createIndexes": "bar", "indexes": [{"key": {"baz": 1}, "name": "baz_1"}]},
    );
    let reply = run(
        &e,
        "foo",
        doc! {"createIndexes": "bar", "indexes": [{"key": {"baz": 1}, "name": "baz_1"}]},
    );
    assert_eq!(reply.get_i32("numIndexesAfter").ok(), Some(2));
    run(&e, "foo", doc! {"dropIndexes": "bar", "index": "baz_1"});
    let entries = all_entries(&e);
    // create (explicit), create (implicit), createIndexes, dropIndexes.
    assert_eq!(entries.len(), 4);
    let want = oplog_fixture("oplog-mongoshake25-c-create-preimages");
    assert_eq!(keys(&entries[0]), keys(&want));
    assert_eq!(sub(&entries[0], "o"), sub(&want, "o"));
    let want = oplog_fixture("oplog-toff-c-createIndexes");
    assert_eq!(keys(&entries[2]), keys(&want));
    assert_eq!(sub(&entries[2], "o"), sub(&want, "o"));
    let want = oplog_fixture("oplog-mongoshake25-c-dropIndexes");
    assert_eq!(keys(&entries[3]), keys(&want));
    assert_eq!(keys(sub(&entries[3], "o")), keys(sub(&want, "o")));
    assert_eq!(
        sub(&entries[3], "o2"),
        &doc! {"v": 2, "key": {"baz": 1}, "name": "baz_1"}
    );
    let indexes = run(&e, "foo", doc! {"listIndexes": "bar"});
    assert_eq!(indexes.get_array("documents").unwrap().len(), 1);
}

fn lsid(byte: u8) -> Document {
    doc! {"id": bson::Binary { subtype: BinarySubtype::Uuid, bytes: vec![byte; 16] }}
}

fn in_txn(mut cmd: Document, session: &Document, number: i64, first: bool) -> Document {
    cmd.insert("lsid", session.clone());
    cmd.insert("txnNumber", number);
    if first {
        cmd.insert("startTransaction", true);
    }
    cmd.insert("autocommit", false);
    cmd
}

#[test]
fn committed_transaction_is_one_apply_ops_entry() {
    let e = engine(MongoVersion::V6_0);
    run(
        &e,
        "test",
        doc! {"insert": "apple", "documents": [{"_id": 19, "old": true}]},
    );
    let before = all_entries(&e).len();
    let s = lsid(1);
    run(
        &e,
        "test",
        in_txn(
            doc! {"delete": "apple", "deletes": [{"q": {"_id": 19}, "limit": 1}]},
            &s,
            5,
            true,
        ),
    );
    run(
        &e,
        "test",
        in_txn(
            doc! {"insert": "apple", "documents": [{"_id": 19, "partIndex": 9, "ticker": "T2", "price": 490}]},
            &s,
            5,
            false,
        ),
    );
    // Invisible outside the transaction until commit.
    assert_eq!(
        e.find_by_id("test.apple", &Bson::Int32(19))
            .unwrap()
            .get_bool("old")
            .ok(),
        Some(true)
    );
    assert_eq!(all_entries(&e).len(), before);
    run(
        &e,
        "admin",
        doc! {"commitTransaction": 1, "lsid": s.clone(), "txnNumber": 5i64, "autocommit": false},
    );
    let entries = all_entries(&e);
    assert_eq!(entries.len(), before + 1);
    let entry = entries.last().unwrap();
    let want = oplog_fixture("oplog-toff-c-applyOps-txn");
    assert_eq!(keys(entry), keys(&want));
    assert_entry_types(entry, MongoVersion::V6_0);
    assert_eq!(entry.get_str("ns").ok(), Some("admin.$cmd"));
    assert_eq!(sub(entry, "prevOpTime"), sub(&want, "prevOpTime"));
    assert_eq!(entry.get("txnNumber"), Some(&Bson::Int64(5)));
    let inner = sub(entry, "o").get_array("applyOps").unwrap();
    let want_inner = sub(&want, "o").get_array("applyOps").unwrap();
    assert_eq!(inner.len(), 2);
    for (got, want) in inner.iter().zip(want_inner) {
        let (got, want) = (got.as_document().unwrap(), want.as_document().unwrap());
        assert_eq!(keys(got), keys(want));
        assert_eq!(got.get("o"), want.get("o"));
    }
    assert_eq!(
        e.find_by_id("test.apple", &Bson::Int32(19))
            .unwrap()
            .get_i32("price")
            .ok(),
        Some(490)
    );
    // A retried commit succeeds without writing again.
    run(
        &e,
        "admin",
        doc! {"commitTransaction": 1, "lsid": s, "txnNumber": 5i64, "autocommit": false},
    );
    assert_eq!(all_entries(&e).len(), before + 1);
}

#[test]
fn large_transaction_is_written_in_linked_partial_chunks() {
    let e = engine_with(MongoVersion::V6_0, 2);
    run(&e, "txntest", doc! {"create": "d"});
    let s = lsid(2);
    for i in 0..6 {
        run(
            &e,
            "txntest",
            in_txn(
                doc! {"insert": "d", "documents": [{"_id": i, "x": i}]},
                &s,
                1,
                i == 0,
            ),
        );
    }
    run(
        &e,
        "admin",
        doc! {"commitTransaction": 1, "lsid": s, "txnNumber": 1i64},
    );
    let entries = all_entries(&e);
    let chunks = &entries[entries.len() - 3..];
    let fixtures = [
        "oplog-mongotools-txn-large-unprepared-1",
        "oplog-mongotools-txn-large-unprepared-2",
        "oplog-mongotools-txn-large-unprepared-3",
    ];
    let mut prev: Option<Timestamp> = None;
    for (chunk, fixture) in chunks.iter().zip(fixtures) {
        let want = oplog_fixture(fixture);
        assert_eq!(keys(sub(chunk, "o")), keys(sub(&want, "o")), "{fixture}");
        assert_eq!(sub(chunk, "o").get_array("applyOps").unwrap().len(), 2);
        let link = sub(chunk, "prevOpTime").get_timestamp("ts").unwrap();
        assert_eq!(
            link,
            prev.unwrap_or(Timestamp {
                time: 0,
                increment: 0
            }),
            "{fixture}"
        );
        prev = Some(chunk.get_timestamp("ts").unwrap());
    }
    assert_eq!(sub(&chunks[2], "o").get("count"), Some(&Bson::Int64(6)));
}

#[test]
fn aborted_transaction_writes_nothing() {
    let e = engine(MongoVersion::V6_0);
    let s = lsid(3);
    run(
        &e,
        "app",
        in_txn(doc! {"insert": "c", "documents": [{"_id": 1}]}, &s, 7, true),
    );
    run(
        &e,
        "admin",
        doc! {"abortTransaction": 1, "lsid": s.clone(), "txnNumber": 7i64, "autocommit": false},
    );
    assert!(all_entries(&e).is_empty());
    assert!(e.find_by_id("app.c", &Bson::Int32(1)).is_none());
    let err = e
        .run_command(
            "admin",
            &doc! {"commitTransaction": 1, "lsid": s, "txnNumber": 7i64},
        )
        .unwrap_err();
    assert_eq!(err.code, 251);
    assert_eq!(err.labels, vec!["TransientTransactionError".to_string()]);
}

#[test]
fn retryable_writes_carry_session_fields_and_are_not_repeated() {
    let e = engine(MongoVersion::V4_4);
    let s = lsid(4);
    let cmd = doc! {"insert": "record", "documents": [{"_id": 1, "sdf": 33}], "lsid": s.clone(), "txnNumber": 0i64};
    assert_eq!(run(&e, "records", cmd.clone()).get_i32("n").ok(), Some(1));
    assert_eq!(
        run(&e, "records", cmd).get_i32("n").ok(),
        Some(1),
        "a retry is answered, not re-executed"
    );
    let entries = all_entries(&e);
    assert_eq!(entries.len(), 2);
    let want = oplog_fixture("oplog-4.2-4.4-i-retryable-h0");
    assert_eq!(keys(&entries[1]), keys(&want));
    assert_eq!(entries[1].get("stmtId"), Some(&Bson::Int32(0)));
    assert_eq!(sub(&entries[1], "prevOpTime"), sub(&want, "prevOpTime"));
}

#[test]
fn crud_replies_are_shaped_like_a_server() {
    let e = engine(MongoVersion::V7_0);
    let reply = run(
        &e,
        "app",
        doc! {"insert": "c", "documents": [{"_id": 1, "n": 1}, {"_id": 1}, {"_id": 2, "n": 2}], "ordered": false},
    );
    assert_eq!(reply.get_i32("n").ok(), Some(2));
    let errors = reply.get_array("writeErrors").unwrap();
    let error = errors[0].as_document().unwrap();
    assert_eq!(
        (error.get_i32("index").ok(), error.get_i32("code").ok()),
        (Some(1), Some(11000))
    );
    let reply = run(
        &e,
        "app",
        doc! {"update": "c", "updates": [{"q": {"_id": 9}, "u": {"$set": {"n": 9}}, "upsert": true}]},
    );
    assert_eq!(
        reply,
        doc! {"n": 1, "nModified": 0, "upserted": [{"index": 0, "_id": 9}]}
    );
    let reply = run(
        &e,
        "app",
        doc! {"update": "c", "updates": [{"q": {"n": {"$gte": 2}}, "u": {"$inc": {"n": 1}}, "multi": true}]},
    );
    assert_eq!(reply, doc! {"n": 2, "nModified": 2});
    let found = run(
        &e,
        "app",
        doc! {"find": "c", "filter": {"n": {"$in": [3, 10]}}, "sort": {"n": -1}, "projection": {"n": 1}},
    );
    assert_eq!(
        found.get_array("documents").unwrap(),
        &vec![
            Bson::Document(doc! {"_id": 9, "n": 10}),
            Bson::Document(doc! {"_id": 2, "n": 3})
        ]
    );
    let counted = run(
        &e,
        "app",
        doc! {"count": "c", "query": {"n": {"$exists": true}}},
    );
    assert_eq!(counted.get_i32("n").ok(), Some(3));
    let modified = run(
        &e,
        "app",
        doc! {"findAndModify": "c", "query": {"_id": 1}, "update": {"$set": {"n": 100}}, "new": true},
    );
    assert_eq!(sub(&modified, "value"), &doc! {"_id": 1, "n": 100});
    let reply = run(
        &e,
        "app",
        doc! {"delete": "c", "deletes": [{"q": {"$or": [{"_id": 1}, {"_id": 2}]}, "limit": 0}]},
    );
    assert_eq!(reply, doc! {"n": 2});
    let dbs = run(&e, "admin", doc! {"listDatabases": 1, "nameOnly": true});
    assert!(
        dbs.get_array("databases")
            .unwrap()
            .contains(&Bson::Document(doc! {"name": "app"}))
    );
}

#[test]
fn oplog_filters_select_entries() {
    let e = engine(MongoVersion::V6_0);
    for coll in ["a", "b", "c"] {
        run(&e, "app", doc! {"insert": coll, "documents": [{"_id": 1}]});
    }
    let entries = all_entries(&e);
    let third = entries[2].get_timestamp("ts").unwrap();
    let cases: Vec<(Document, usize)> = vec![
        (doc! {"op": "i"}, 3),
        (doc! {"ns": {"$in": ["app.a", "app.c"]}}, 2),
        (doc! {"ns": {"$nin": ["app.a"]}, "op": {"$ne": "c"}}, 2),
        (doc! {"ns": {"$regex": "^app\\.[ab]$"}}, 2),
        (
            doc! {"ns": bson::Regex { pattern: "^app\\.\\$cmd".try_into().unwrap(), options: "".try_into().unwrap() }},
            3,
        ),
        (doc! {"ts": {"$gt": third}}, 3),
        (doc! {"ts": {"$gte": third}}, 4),
        (
            doc! {"$or": [{"ns": "app.a"}, {"$and": [{"op": "c"}, {"ts": {"$lte": third}}]}]},
            3,
        ),
    ];
    for (filter, want) in cases {
        let parsed = OplogFilter::parse(&filter).unwrap();
        let start = e.oplog_cursor_start(&parsed);
        let read = e.read_oplog(start, &parsed, 100).unwrap();
        assert_eq!(read.entries.len(), want, "{filter}");
    }
    // A $gte start includes the entry exactly at that ts.
    let from = OplogFilter::parse(&doc! {"ts": {"$gte": third}}).unwrap();
    let first = e.read_oplog(e.oplog_cursor_start(&from), &from, 1).unwrap();
    assert_eq!(first.entries[0].get_timestamp("ts").unwrap(), third);
    for bad in [doc! {"ts": {"$where": 1}}, doc! {"$expr": {}}] {
        assert_eq!(OplogFilter::parse(&bad).unwrap_err().code, 2, "{bad}");
    }
}

#[test]
fn capped_oplog_reports_lost_positions() {
    let e = engine(MongoVersion::V6_0);
    let everything = OplogFilter::parse(&doc! {}).unwrap();
    let start = e.oplog_cursor_start(&everything);
    for _ in 0..10 {
        e.append_noop();
    }
    let (bytes, count) = e.oplog_stats();
    assert_eq!(count, 10);
    let read = e.read_oplog(start, &everything, 4).unwrap();
    assert_eq!(read.entries.len(), 4);
    e.truncate_oplog(3);
    assert_eq!(
        e.read_oplog(read.next, &everything, 4).unwrap_err().code,
        136
    );
    e.set_oplog_capacity(bytes / 10);
    assert_eq!(e.oplog_stats().1, 1);
    let noop = all_entries(&e).pop().unwrap();
    let want = oplog_fixture("oplog-docs-appendOplogNote-n");
    assert_eq!(keys(&noop), keys(&want));
    assert_eq!(sub(&noop, "o"), &doc! {"msg": "periodic noop"});
}

#[test]
fn appended_entries_advance_the_clock_and_the_watch() {
    let e = engine(MongoVersion::V6_0);
    let mut watch = e.oplog_watch();
    let future = Timestamp {
        time: 4_000_000_000,
        increment: 9,
    };
    let given = e.append_oplog_entry(doc! {"op": "n", "ns": "", "o": {"msg": "x"}, "ts": future});
    assert_eq!(given, future);
    assert!(watch.has_changed().unwrap());
    watch.borrow_and_update();
    assert!(e.append_noop() > future);
    assert!(watch.has_changed().unwrap());
    assert!(e.last_optime() > future);
}

#[test]
fn appending_many_entries_is_fast() {
    let e = Engine::new(EngineConfig {
        version: MongoVersion::V6_0,
        oplog_capacity_bytes: 8 << 20,
        txn_chunk_ops: 100,
    });
    let started = Instant::now();
    for _ in 0..100_000 {
        e.append_noop();
    }
    let elapsed = started.elapsed();
    let (bytes, count) = e.oplog_stats();
    assert!(bytes <= 8 << 20 && count > 1000);
    // Debug builds are ~10x slower than release; release does >100k/s.
    assert!(
        elapsed < Duration::from_secs(20),
        "100k appends took {elapsed:?}"
    );
}

fn cluster_stream(e: &Engine, stage: Document) -> ChangeStreamCursor {
    e.open_change_stream(ChangeStreamSpec {
        scope: None,
        stage,
        rest: Vec::new(),
    })
    .unwrap()
}

#[test]
fn events_from_fixture_entries_equal_fixture_events() {
    let e = engine(MongoVersion::V4_4);
    let mut cursor = cluster_stream(&e, doc! {});
    let pairs = [
        ("oplog-mongoshake42-i", "cs-mongoshake42-insert"),
        (
            "oplog-mongoshake42-u-replacement",
            "cs-mongoshake42-replace",
        ),
        (
            "oplog-mongoshake42-u-v1-set-unset",
            "cs-mongoshake42-update",
        ),
        ("oplog-mongoshake42-d", "cs-mongoshake42-delete"),
        ("oplog-mongoshake42-c-drop", "cs-mongoshake42-drop"),
        (
            "oplog-mongoshake42-c-renameCollection",
            "cs-mongoshake42-rename",
        ),
        (
            "oplog-mongoshake42-c-dropDatabase",
            "cs-mongoshake42-dropDatabase",
        ),
    ];
    for (entry, _) in pairs {
        e.append_oplog_entry(oplog_fixture(entry));
    }
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    assert_eq!(batch.events.len(), pairs.len());
    for (event, (_, fixture)) in batch.events.iter().zip(pairs) {
        assert_eq!(event, &event_fixture(fixture), "{fixture}");
    }
    assert_eq!(
        &batch.post_batch_resume_token,
        sub(batch.events.last().unwrap(), "_id")
    );
}

#[test]
fn engine_writes_produce_events_shaped_like_fixtures() {
    let e = engine(MongoVersion::V6_0);
    let mut cursor = e
        .open_change_stream(ChangeStreamSpec {
            scope: Some("app.c".into()),
            stage: doc! {"fullDocument": "updateLookup"},
            rest: Vec::new(),
        })
        .unwrap();
    run(
        &e,
        "app",
        doc! {"insert": "c", "documents": [{"_id": 1, "a": [1, 2], "b": {"c": 1}}]},
    );
    run(
        &e,
        "app",
        doc! {"insert": "other", "documents": [{"_id": 1}]},
    );
    run(
        &e,
        "app",
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"b.d": 2}, "$unset": {"a": ""}}}]},
    );
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    run(
        &e,
        "app",
        doc! {"delete": "c", "deletes": [{"q": {}, "limit": 0}]},
    );
    run(&e, "app", doc! {"drop": "c"});
    let rest = e.read_change_stream(&mut cursor, 100).unwrap();
    let types: Vec<&str> = batch
        .events
        .iter()
        .chain(&rest.events)
        .map(|x| x.get_str("operationType").unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["insert", "update", "delete", "drop", "invalidate"]
    );
    assert!(cursor.invalidated);
    let update = &batch.events[1];
    let want = event_fixture("cs-2024-update-lookup");
    assert_eq!(keys(update), keys(&want));
    assert_eq!(
        sub(update, "updateDescription"),
        &doc! {"updatedFields": {"b.d": 2}, "removedFields": ["a"], "truncatedArrays": []}
    );
    assert_eq!(
        sub(update, "fullDocument"),
        &doc! {"_id": 1, "b": {"c": 1, "d": 2}}
    );
    let insert_keys = keys(&batch.events[0]);
    assert_eq!(
        insert_keys,
        vec![
            "_id",
            "operationType",
            "clusterTime",
            "wallTime",
            "fullDocument",
            "ns",
            "documentKey"
        ]
    );
    // Tokens sort by clusterTime and carry it.
    let tokens: Vec<&str> = batch
        .events
        .iter()
        .chain(&rest.events)
        .map(|x| sub(x, "_id").get_str("_data").unwrap())
        .collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]));
    for event in batch.events.iter().chain(&rest.events) {
        let ts = event.get_timestamp("clusterTime").unwrap();
        let data = sub(event, "_id").get_str("_data").unwrap();
        assert!(
            data.starts_with(&format!("82{:08X}{:08X}2B02", ts.time, ts.increment)),
            "{data}"
        );
    }
}

#[test]
fn resume_tokens_high_water_marks_and_lost_history() {
    let e = engine(MongoVersion::V6_0);
    let mut cursor = cluster_stream(&e, doc! {});
    for i in 0..3 {
        run(&e, "app", doc! {"insert": "c", "documents": [{"_id": i}]});
    }
    let first = e.read_change_stream(&mut cursor, 2).unwrap();
    assert_eq!(first.events.len(), 2);
    let token = sub(&first.events[0], "_id").clone();
    let mut resumed = cluster_stream(&e, doc! {"resumeAfter": token.clone()});
    let after = e.read_change_stream(&mut resumed, 100).unwrap();
    let ids: Vec<&Bson> = after
        .events
        .iter()
        .map(|x| sub(x, "documentKey").get("_id").unwrap())
        .collect();
    assert_eq!(ids, vec![&Bson::Int32(1), &Bson::Int32(2)]);
    // Nothing new: an empty batch with a high-water mark past the last event.
    let empty = e.read_change_stream(&mut resumed, 100).unwrap();
    assert!(empty.events.is_empty());
    let hwm = resume_token::decode(&Bson::Document(empty.post_batch_resume_token.clone())).unwrap();
    assert_eq!(hwm.token_type, 0);
    assert_eq!(hwm.cluster_time, e.last_optime());
    let mut from_hwm = cluster_stream(&e, doc! {"resumeAfter": empty.post_batch_resume_token});
    assert!(
        e.read_change_stream(&mut from_hwm, 100)
            .unwrap()
            .events
            .is_empty()
    );
    // startAtOperationTime includes the event at that time.
    let at = first.events[1].get_timestamp("clusterTime").unwrap();
    let mut from_time = cluster_stream(&e, doc! {"startAtOperationTime": at});
    assert_eq!(
        e.read_change_stream(&mut from_time, 100)
            .unwrap()
            .events
            .len(),
        2
    );
    e.truncate_oplog(1);
    let err = e
        .open_change_stream(ChangeStreamSpec {
            scope: None,
            stage: doc! {"resumeAfter": token},
            rest: Vec::new(),
        })
        .unwrap_err();
    assert_eq!(err.code, 286);
    let err = e
        .open_change_stream(ChangeStreamSpec {
            scope: None,
            stage: doc! {"resumeAfter": {"_data": "00"}},
            rest: Vec::new(),
        })
        .unwrap_err();
    assert_eq!(err.code, 260);
}

#[test]
fn match_stage_and_database_scope() {
    let e = engine(MongoVersion::V6_0);
    let spec = ChangeStreamSpec {
        scope: Some("app".into()),
        stage: doc! {},
        rest: vec![
            doc! {"$match": {"$or": [{"ns.coll": "keep"}, {"operationType": {"$in": ["dropDatabase"]}}], "documentKey._id": {"$nin": [2]}}},
        ],
    };
    let mut cursor = e.open_change_stream(spec).unwrap();
    run(
        &e,
        "app",
        doc! {"insert": "keep", "documents": [{"_id": 1}, {"_id": 2}]},
    );
    run(
        &e,
        "app",
        doc! {"insert": "skip", "documents": [{"_id": 3}]},
    );
    run(
        &e,
        "elsewhere",
        doc! {"insert": "keep", "documents": [{"_id": 4}]},
    );
    run(&e, "app", doc! {"dropDatabase": 1});
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    let seen: Vec<(String, Option<Bson>)> = batch
        .events
        .iter()
        .map(|x| {
            (
                x.get_str("operationType").unwrap().to_string(),
                x.get_document("documentKey")
                    .ok()
                    .and_then(|k| k.get("_id").cloned()),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("insert".into(), Some(Bson::Int32(1))),
            ("drop".into(), None),
            ("dropDatabase".into(), None),
            ("invalidate".into(), None)
        ]
    );
}

#[test]
fn transactions_expand_to_events_with_session_fields() {
    let e = engine_with(MongoVersion::V6_0, 2);
    run(&e, "app", doc! {"create": "c"});
    let mut cursor = cluster_stream(&e, doc! {});
    let s = lsid(9);
    for i in 0..5 {
        run(
            &e,
            "app",
            in_txn(
                doc! {"insert": "c", "documents": [{"_id": i}]},
                &s,
                3,
                i == 0,
            ),
        );
    }
    run(
        &e,
        "admin",
        doc! {"commitTransaction": 1, "lsid": s.clone(), "txnNumber": 3i64},
    );
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    assert_eq!(
        batch.events.len(),
        5,
        "partial chunks expand once, at the commit entry"
    );
    let commit_ts = batch.events[0].get_timestamp("clusterTime").unwrap();
    for (index, event) in batch.events.iter().enumerate() {
        assert_eq!(event.get_timestamp("clusterTime").unwrap(), commit_ts);
        assert_eq!(event.get("txnNumber"), Some(&Bson::Int64(3)));
        assert_eq!(event.get_document("lsid").ok(), Some(&s));
        let point = resume_token::decode(event.get("_id").unwrap()).unwrap();
        assert_eq!(point.txn_op_index, index as u64);
    }
    // Resuming inside the transaction continues with the next op.
    let mut resumed = cluster_stream(
        &e,
        doc! {"resumeAfter": sub(&batch.events[2], "_id").clone()},
    );
    assert_eq!(
        e.read_change_stream(&mut resumed, 100)
            .unwrap()
            .events
            .len(),
        2
    );
}

#[test]
fn pre_and_post_images() {
    let e = engine(MongoVersion::V6_0);
    run(
        &e,
        "test",
        doc! {"create": "images", "changeStreamPreAndPostImages": {"enabled": true}},
    );
    run(&e, "test", doc! {"create": "plain"});
    let stage = doc! {"fullDocument": "whenAvailable", "fullDocumentBeforeChange": "whenAvailable"};
    let mut cursor = cluster_stream(&e, stage);
    for coll in ["images", "plain"] {
        run(
            &e,
            "test",
            doc! {"insert": coll, "documents": [{"_id": "x", "foo": "bar"}]},
        );
        run(
            &e,
            "test",
            doc! {"update": coll, "updates": [{"q": {"_id": "x"}, "u": {"$set": {"foo": "baz"}}}]},
        );
        run(
            &e,
            "test",
            doc! {"delete": coll, "deletes": [{"q": {"_id": "x"}, "limit": 1}]},
        );
    }
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    assert_eq!(batch.events.len(), 6);
    let update = &batch.events[1];
    let want = event_fixture("cs-jstest-update-pre-and-post-image");
    assert_eq!(sub(update, "fullDocument"), sub(&want, "fullDocument"));
    assert_eq!(
        sub(update, "fullDocumentBeforeChange"),
        sub(&want, "fullDocumentBeforeChange")
    );
    assert_eq!(
        sub(&batch.events[2], "fullDocumentBeforeChange"),
        sub(
            &event_fixture("cs-jstest-delete-pre-image"),
            "fullDocumentBeforeChange"
        )
    );
    assert_eq!(
        batch.events[4].get("fullDocumentBeforeChange"),
        Some(&Bson::Null),
        "no images recorded"
    );
    let mut strict = cluster_stream(
        &e,
        doc! {"startAtOperationTime": batch.events[4].get_timestamp("clusterTime").unwrap(), "fullDocumentBeforeChange": "required"},
    );
    assert_eq!(
        e.read_change_stream(&mut strict, 100).unwrap_err().code,
        280
    );
}

#[test]
fn retryable_entries_on_6_0_put_session_fields_around_the_op() {
    let e = engine(MongoVersion::V6_0);
    let s = lsid(5);
    run(&e, "db", doc! {"create": "c"});
    run(
        &e,
        "db",
        doc! {"insert": "c", "documents": [{"_id": 1}, {"_id": 2}], "lsid": s, "txnNumber": 14i64},
    );
    let entries = all_entries(&e);
    let want = oplog_fixture("oplog-toff-i-retryable-internal-db");
    assert_eq!(keys(&entries[1]), keys(&want));
    assert_eq!(entries[2].get("stmtId"), Some(&Bson::Int32(1)));
    let link = sub(&entries[2], "prevOpTime").get_timestamp("ts").unwrap();
    assert_eq!(
        link,
        entries[1].get_timestamp("ts").unwrap(),
        "statements are chained"
    );
}

#[test]
fn start_after_an_invalidate_continues_the_stream() {
    let e = engine(MongoVersion::V6_0);
    let spec = |stage: Document| ChangeStreamSpec {
        scope: Some("app.c".into()),
        stage,
        rest: Vec::new(),
    };
    let mut cursor = e.open_change_stream(spec(doc! {})).unwrap();
    run(&e, "app", doc! {"insert": "c", "documents": [{"_id": 1}]});
    run(&e, "app", doc! {"drop": "c"});
    let batch = e.read_change_stream(&mut cursor, 100).unwrap();
    let invalidate = batch.events.last().unwrap();
    assert_eq!(invalidate.get_str("operationType").ok(), Some("invalidate"));
    let token = sub(invalidate, "_id").clone();
    assert!(
        resume_token::decode(&Bson::Document(token.clone()))
            .unwrap()
            .from_invalidate
    );
    let err = e
        .open_change_stream(spec(doc! {"resumeAfter": token.clone()}))
        .unwrap_err();
    assert_eq!(err.code, 260);
    let mut after = e
        .open_change_stream(spec(doc! {"startAfter": token}))
        .unwrap();
    run(&e, "app", doc! {"insert": "c", "documents": [{"_id": 2}]});
    let events = e.read_change_stream(&mut after, 100).unwrap().events;
    let types: Vec<&str> = events
        .iter()
        .map(|x| x.get_str("operationType").unwrap())
        .collect();
    assert_eq!(
        types,
        vec!["insert"],
        "the recreated collection's insert, not the old drop"
    );
}
