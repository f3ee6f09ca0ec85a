//! oplogtoredis's acceptance cases, end to end: a driver writes to MongoDB,
//! redtail relays, a subscriber hears what redis-oplog would.

use std::time::Duration;

use bson::{doc, oid::ObjectId};
use mongodb::IndexModel;

use crate::support::redtail::http_request;
use crate::support::relay::{Relay, message};

/// Both channels, collection first, each with the same message.
fn pair(relay: &Relay, coll: &str, id_channel: &str, msg: &str) -> Vec<(String, String)> {
    let channel = relay.channel(coll);
    vec![
        (channel.clone(), msg.to_owned()),
        (format!("{channel}::{id_channel}"), msg.to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_publishes_top_level_fields_on_both_channels() {
    let relay = Relay::start("insert", &[]).await;
    relay
        .collection("Test")
        .insert_one(doc! { "_id": "id1", "hello": "world" })
        .await
        .unwrap();
    let got = relay.wait_for(2).await;
    assert_eq!(
        got,
        pair(
            &relay,
            "Test",
            "id1",
            &message("i", r#""id1""#, &["_id", "hello"])
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_update_names_the_changed_fields() {
    let relay = Relay::start("set", &[]).await;
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "id1", "hello": 0 })
        .await
        .unwrap();
    coll.update_one(
        doc! { "_id": "id1" },
        doc! { "$set": { "hello": 1, "world": 2 } },
    )
    .await
    .unwrap();
    let got = relay.wait_for(4).await;
    assert_eq!(
        got[2..],
        pair(
            &relay,
            "Test",
            "id1",
            &message("u", r#""id1""#, &["hello", "world"])
        )[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_lists_the_new_document_keys() {
    let relay = Relay::start("replace", &[]).await;
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "id1", "hello": 0 })
        .await
        .unwrap();
    coll.replace_one(doc! { "_id": "id1" }, doc! { "world": "x" })
        .await
        .unwrap();
    let got = relay.wait_for(4).await;
    assert_eq!(
        got[2..],
        pair(
            &relay,
            "Test",
            "id1",
            &message("u", r#""id1""#, &["_id", "world"])
        )[..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_inc_gives_dotted_paths_in_deep_mode() {
    let relay = Relay::start("deep", &[("OTR_OPLOG_V2_EXTRACT_SUBFIELD_CHANGES", "true")]).await;
    let coll = relay.collection("Test");
    let items = vec![
        doc! { "value": 1 },
        doc! { "value": 2 },
        doc! { "value": 3 },
    ];
    coll.insert_one(doc! { "_id": "id1", "hello": items })
        .await
        .unwrap();
    coll.update_one(
        doc! { "_id": "id1" },
        doc! { "$inc": { "hello.1.value": 1, "hello.2.value": 1 } },
    )
    .await
    .unwrap();
    let got = relay.wait_for(4).await;
    let expected = message("u", r#""id1""#, &["hello.1.value", "hello.2.value"]);
    assert_eq!(got[2..], pair(&relay, "Test", "id1", &expected)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_delete_many_publish_one_removal_each() {
    let relay = Relay::start("delete", &[]).await;
    let coll = relay.collection("Test");
    coll.insert_many([
        doc! { "_id": "a", "k": 1 },
        doc! { "_id": "b", "k": 1 },
        doc! { "_id": "c", "k": 2 },
    ])
    .await
    .unwrap();
    coll.delete_one(doc! { "_id": "c" }).await.unwrap();
    coll.delete_many(doc! { "k": 1 }).await.unwrap();
    let got = relay.wait_for(12).await;
    assert_eq!(got.len(), 12, "{got:?}");
    let removals: Vec<_> = got[6..].iter().step_by(2).map(|(_, m)| m.clone()).collect();
    let mut expected = vec![message("r", r#""c""#, &[])];
    expected.push(message("r", r#""a""#, &[]));
    expected.push(message("r", r#""b""#, &[]));
    assert_eq!(removals, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_ids_and_escaped_ids_reach_meteor_channels() {
    let relay = Relay::start("ids", &[]).await;
    let coll = relay.collection("Test");
    let oid = ObjectId::new();
    coll.insert_one(doc! { "_id": oid, "a": 1 }).await.unwrap();
    coll.insert_one(doc! { "_id": "-dash", "a": 1 })
        .await
        .unwrap();
    coll.insert_one(doc! { "_id": 42, "a": 1 }).await.unwrap();
    let got = relay.wait_for(6).await;
    let oid_json = format!(r#"{{"$type":"oid","$value":"{}"}}"#, oid.to_hex());
    let mut expected = pair(
        &relay,
        "Test",
        &oid.to_hex(),
        &message("i", &oid_json, &["_id", "a"]),
    );
    expected.extend(pair(
        &relay,
        "Test",
        "--dash",
        &message("i", r#""-dash""#, &["_id", "a"]),
    ));
    expected.extend(pair(
        &relay,
        "Test",
        "~42",
        &message("i", "42", &["_id", "a"]),
    ));
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_builds_publish_nothing() {
    let relay = Relay::start("index", &[]).await;
    let coll = relay.collection("Test");
    coll.create_index(IndexModel::builder().keys(doc! { "k": 1 }).build())
        .await
        .unwrap();
    coll.drop_index("k_1").await.unwrap();
    assert_only_the_marker_follows(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_publishes_one_message_per_operation() {
    let relay = Relay::start("txn", &[]).await;
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "pre", "n": 0 })
        .await
        .unwrap();
    let mut session = relay.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "t1", "n": 1 })
        .session(&mut session)
        .await
        .unwrap();
    coll.update_one(doc! { "_id": "pre" }, doc! { "$set": { "n": 5 } })
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    let got = relay.wait_for(6).await;
    let mut expected = pair(
        &relay,
        "Test",
        "t1",
        &message("i", r#""t1""#, &["_id", "n"]),
    );
    expected.extend(pair(
        &relay,
        "Test",
        "pre",
        &message("u", r#""pre""#, &["n"]),
    ));
    assert_eq!(got[2..], expected[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transaction_publishes_nothing() {
    let relay = Relay::start("abort", &[]).await;
    let coll = relay.collection("Test");
    let mut session = relay.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! { "_id": "never" })
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();
    assert_only_the_marker_follows(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denylisted_database_is_silent_until_removed() {
    let relay = Relay::start("deny", &[]).await;
    let port = relay
        .redtail
        .http_base()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let path = format!("/denylist/{}", relay.db);
    assert_eq!(http_request("PUT", port, &path).map(|r| r.0), Some(201));
    assert_eq!(http_request("PUT", port, &path).map(|r| r.0), Some(204));
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "hidden" }).await.unwrap();
    // A write elsewhere proves the pipeline moved past the hidden insert.
    let other_db = format!("{}_other", relay.db);
    relay
        .client
        .database(&other_db)
        .collection("T")
        .insert_one(doc! { "_id": "x" })
        .await
        .unwrap();
    let other = format!("{other_db}.T");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !relay.subscriber.messages().iter().any(|(c, _)| *c == other) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other database's insert never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        relay
            .received()
            .iter()
            .all(|(c, _)| c.starts_with(&other_db)),
        "{:?}",
        relay.received()
    );
    assert!(
        relay.metric(&format!(
            "otr_oplog_entries_filtered{{database=\"{}\"}}",
            relay.db
        )) >= 1.0
    );

    assert_eq!(http_request("DELETE", port, &path).map(|r| r.0), Some(204));
    coll.insert_one(doc! { "_id": "visible" }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let channel = relay.channel("Test");
    loop {
        let mine: Vec<_> = relay
            .received()
            .into_iter()
            .filter(|(c, _)| *c == channel)
            .collect();
        if !mine.is_empty() {
            assert_eq!(
                mine,
                vec![(channel.clone(), message("i", r#""visible""#, &["_id"]))]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message after the denylist entry was removed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_answer() {
    let relay = Relay::start("health", &[]).await;
    assert_eq!(
        relay.redtail.http_get("/healthz"),
        Some((200, r#"{"mongoOK":true,"redisOK":true}"#.to_owned()))
    );
    relay
        .collection("Test")
        .insert_one(doc! { "_id": "m" })
        .await
        .unwrap();
    relay.wait_for(2).await;
    let sample = format!(
        "otr_oplog_entries_received{{database=\"{}\",status=\"processed\"}}",
        relay.db
    );
    assert_eq!(relay.metric(&sample), 1.0);
    assert!(relay.metric(r#"otr_redispub_processed_messages{status="sent"}"#) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_parallelism_spreads_databases_over_lanes_with_their_own_positions() {
    let relay = Relay::start("lanes", &[("OTR_WRITE_PARALLELISM", "3")]).await;
    let mut expected = Vec::new();
    for n in 0..6 {
        let db = format!("{}{n}", relay.db);
        relay
            .client
            .database(&db)
            .collection("T")
            .insert_one(doc! { "_id": "x" })
            .await
            .unwrap();
        expected.push(format!("{db}.T"));
    }
    let ours = || -> Vec<String> {
        let messages = relay.subscriber.messages().into_iter();
        let collection_channels = messages.map(|(c, _)| c).filter(|c| !c.contains("::"));
        collection_channels
            .filter(|c| c.starts_with(&relay.db))
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ours().len() < expected.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut channels = ours();
    channels.sort();
    assert_eq!(channels, expected);
    // Every lane keeps its own oplogtoredis position key, even a lane that
    // published nothing (it still advances past skipped entries).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for lane in 0..3 {
        let key = format!("oplogtoredis::lastProcessedEntry.{lane}");
        while relay.redis.get(&key).unwrap().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{key} never written"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Inserts a marker document into `Test` and checks that its two messages
/// are all that was published: nothing written before it reached Redis.
async fn assert_only_the_marker_follows(relay: &Relay) {
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "marker" }).await.unwrap();
    let got = relay.wait_for(2).await;
    assert_eq!(
        got,
        pair(
            relay,
            "Test",
            "marker",
            &message("i", r#""marker""#, &["_id"])
        )
    );
}
