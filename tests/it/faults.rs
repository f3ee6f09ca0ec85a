//! Faults around the relay: Redis and MongoDB outages, crashes, restarts,
//! long gaps, two instances, and entries redtail cannot read. Each test
//! proves delivery from what Redis observably did, never from redtail's word.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::Collection;

use crate::support::redis_server::Subscriber;
use crate::support::relay::{Relay, message};

const N: usize = 100;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc{i:03}")).collect()
}

/// Inserts `ids` one by one, `pace` apart, retrying a failed insert (a
/// step-down or a dropped connection) until it succeeds, bounded. Calls
/// `at(i)` before the i-th insert so a test can inject a fault mid-stream.
async fn insert_paced(
    coll: &Collection<Document>,
    ids: &[String],
    pace: Duration,
    mut at: impl FnMut(usize),
) {
    for (i, id) in ids.iter().enumerate() {
        at(i);
        let mut attempts = 0;
        while let Err(error) = coll.insert_one(doc! { "_id": id, "i": i as i32 }).await {
            // A retried insert may have been applied before the error.
            if error.to_string().contains("E11000") || error.to_string().contains("duplicate key") {
                break;
            }
            attempts += 1;
            assert!(attempts < 100, "insert of {id} kept failing: {error}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(pace).await;
    }
}

/// How many times each id was announced on the collection channel.
fn counts(relay: &Relay, messages: &[(String, String)]) -> BTreeMap<String, usize> {
    let channel = relay.channel("Test");
    let mut counts = BTreeMap::new();
    for (c, m) in messages {
        if *c == channel {
            let id = m
                .split("\"_id\":\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("?");
            *counts.entry(id.to_owned()).or_default() += 1;
        }
    }
    counts
}

/// Waits until every id was heard once on the collection channel (bounded).
async fn wait_all(
    relay: &Relay,
    expected: &[String],
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = counts(relay, &relay.received());
        if expected.iter().all(|id| seen.contains_key(id))
            || tokio::time::Instant::now() >= deadline
        {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_exactly_once(seen: &BTreeMap<String, usize>, expected: &[String]) {
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "published more than once: {duplicated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_two_seconds_loses_nothing() {
    let mut relay = Relay::start("redis_outage", &[]).await;
    let expected = ids(N);
    let coll = relay.collection("Test");
    let writer = {
        let (coll, expected) = (coll.clone(), expected.clone());
        tokio::spawn(async move {
            insert_paced(&coll, &expected, Duration::from_millis(20), |_| {}).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.redis.stop();
    let heard_before = relay.received();
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay
        .redis
        .restart()
        .expect("redis restarts on the same port");
    let after = Subscriber::all(&relay.redis).expect("subscriber reconnects");
    writer.await.unwrap();

    // Delivered = heard before the crash, heard after the restart, or
    // published after the restart while no subscriber listened yet (its
    // dedup key exists on the restarted, empty Redis).
    let ns = format!("{}.Test", relay.db);
    let id_of_ts = oplog_ids(&relay, &ns).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let delivered = loop {
        let mut delivered: BTreeSet<String> = counts(&relay, &heard_before).into_keys().collect();
        delivered.extend(counts(&relay, &after.messages()).into_keys());
        for key in relay.redis.keys("oplogtoredis::processed::*").unwrap() {
            let ts: u64 = key.split("::").nth(2).unwrap().parse().unwrap();
            delivered.extend(id_of_ts.get(&ts).cloned());
        }
        if delivered.len() >= N || tokio::time::Instant::now() >= deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !delivered.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "lost during the outage: {missing:?}\n{}",
        relay.redtail.logs()
    );
    assert_eq!(
        relay.metric(r#"otr_redispub_processed_messages{status="failed"}"#),
        0.0
    );
    assert!(relay.metric("otr_redispub_temporary_send_failures") > 0.0);
}

/// `ts` as (T<<32)|I -> `_id`, read back from the oplog itself.
async fn oplog_ids(relay: &Relay, ns: &str) -> BTreeMap<u64, String> {
    let oplog: Collection<Document> = relay.client.database("local").collection("oplog.rs");
    let entries: Vec<Document> = oplog
        .find(doc! { "ns": ns, "op": "i" })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    entries
        .into_iter()
        .filter_map(|e| {
            let ts = e.get_timestamp("ts").ok()?;
            let id = e.get_document("o").ok()?.get_str("_id").ok()?.to_owned();
            Some(((u64::from(ts.time) << 32) | u64::from(ts.increment), id))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_and_restart_delivers_everything_once() {
    let mut relay = Relay::start("sigkill", &[]).await;
    let expected = ids(N);
    let coll = relay.collection("Test");
    insert_paced(&coll, &expected[..40], Duration::from_millis(10), |_| {}).await;
    wait_all(&relay, &expected[..40], Duration::from_secs(15)).await;
    relay.redtail.kill();
    insert_paced(&coll, &expected[40..], Duration::from_millis(5), |_| {}).await;
    relay.restart_redtail(&[]);
    let seen = wait_all(&relay, &expected, Duration::from_secs(20)).await;
    assert_exactly_once(&seen, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_gap_is_caught_up_and_long_gap_is_skipped_and_reported() {
    let env = [("OTR_MAX_CATCH_UP", "3s")];
    let mut relay = Relay::start("gap", &env).await;
    let coll = relay.collection("Test");
    let stop = |relay: &mut Relay| {
        relay.redtail.signal("TERM");
        let status = relay
            .redtail
            .wait_exit(Duration::from_secs(20))
            .expect("redtail exits on SIGTERM");
        assert!(
            status.success(),
            "SIGTERM must exit 0, got {status}\n{}",
            relay.redtail.logs()
        );
    };
    coll.insert_one(doc! { "_id": "a" }).await.unwrap();
    relay.wait_for(2).await;
    stop(&mut relay);

    coll.insert_one(doc! { "_id": "b" }).await.unwrap();
    relay.restart_redtail(&env);
    let got = relay.wait_for(4).await;
    assert_eq!(
        got[2].1,
        message("i", r#""b""#, &["_id"]),
        "a short gap is caught up"
    );
    stop(&mut relay);

    coll.insert_one(doc! { "_id": "c" }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    relay.restart_redtail(&env);
    coll.insert_one(doc! { "_id": "d" }).await.unwrap();
    let got = relay.wait_for(6).await;
    assert_eq!(
        got[4].1,
        message("i", r#""d""#, &["_id"]),
        "the change in a long gap is skipped: {got:?}"
    );
    assert!(!got.iter().any(|(_, m)| m.contains(r#""c""#)));
    assert!(
        relay.redtail.logs().contains("OTR_MAX_CATCH_UP"),
        "{}",
        relay.redtail.logs()
    );
    assert_eq!(
        relay.metric(r#"redtail_resume_too_old_total{action="skip_to_end"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_gap_is_replayed_when_configured() {
    let env = [
        ("OTR_MAX_CATCH_UP", "2s"),
        ("OTR_CATCH_UP_POLICY", "replay"),
    ];
    let mut relay = Relay::start("replay", &env).await;
    let coll = relay.collection("Test");
    coll.insert_one(doc! { "_id": "a" }).await.unwrap();
    relay.wait_for(2).await;
    relay.redtail.signal("TERM");
    relay
        .redtail
        .wait_exit(Duration::from_secs(20))
        .expect("redtail exits on SIGTERM");
    coll.insert_one(doc! { "_id": "late" }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    relay.restart_redtail(&env);
    let got = relay.wait_for(4).await;
    assert_eq!(
        got.get(2).map(|g| g.1.clone()),
        Some(message("i", r#""late""#, &["_id"]))
    );
    assert_eq!(
        relay.metric(r#"redtail_resume_too_old_total{action="replay"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_step_down_and_dropped_connections_lose_nothing() {
    let relay = Relay::start("stepdown", &[]).await;
    let Some(sim) = relay.mongo.sim() else {
        return crate::support::mongo::skip_without_sim(
            "mongo_step_down_and_dropped_connections_lose_nothing",
        );
    };
    let expected = ids(N);
    let coll = relay.collection("Test");
    insert_paced(&coll, &expected, Duration::from_millis(10), |i| match i {
        30 => sim.faults().step_down(Duration::from_secs(1)),
        60 => sim.faults().close_connections(),
        _ => {}
    })
    .await;
    let seen = wait_all(&relay, &expected, Duration::from_secs(30)).await;
    assert_exactly_once(&seen, &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_publish_each_change_once() {
    let relay = Relay::start("two", &[]).await;
    let _second = relay.start_another(&[]);
    let expected = ids(N);
    insert_paced(&relay.collection("Test"), &expected, Duration::ZERO, |_| {}).await;
    wait_all(&relay, &expected, Duration::from_secs(20)).await;
    let settled = relay
        .subscriber
        .settle(Duration::from_millis(500), Duration::from_secs(5))
        .await;
    assert_exactly_once(&counts(&relay, &settled), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_counted_and_skipped() {
    let relay = Relay::start("malformed", &[]).await;
    let Some(sim) = relay.mongo.sim() else {
        return crate::support::mongo::skip_without_sim(
            "malformed_entries_are_counted_and_skipped",
        );
    };
    let ns = format!("{}.Test", relay.db);
    let bad = [
        doc! { "op": "i", "ns": &ns, "o": { "no_id": 1 } },
        doc! { "op": "u", "ns": &ns, "o": { "$set": { "a": 1 } } },
        doc! { "op": "i", "ns": 5, "o": { "_id": "x" } },
        doc! { "op": "zz", "ns": &ns, "o": { "_id": "y" } },
        doc! { "ns": &ns, "o": { "_id": "z" } },
        doc! { "op": "i", "ns": &ns, "o": { "_id": Bson::Timestamp(bson::Timestamp { time: 1, increment: 1 }) } },
    ];
    relay
        .collection("Test")
        .insert_one(doc! { "_id": "before" })
        .await
        .unwrap();
    for entry in bad {
        sim.engine().append_oplog_entry(entry);
    }
    relay
        .collection("Test")
        .insert_one(doc! { "_id": "after" })
        .await
        .unwrap();
    let got = relay.wait_for(4).await;
    let messages: Vec<_> = got.iter().step_by(2).map(|(_, m)| m.clone()).collect();
    assert_eq!(
        messages,
        vec![
            message("i", r#""before""#, &["_id"]),
            message("i", r#""after""#, &["_id"])
        ]
    );
    let malformed: f64 = relay
        .redtail
        .http_get("/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("redtail_malformed_entries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(malformed, 5.0, "{}", relay.redtail.logs());
    assert_eq!(relay.metric("redtail_unencodable_ids_total"), 1.0);
    assert!(relay.redtail.logs().contains("cannot be read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_flushes_the_position_and_exits_zero() {
    let mut relay = Relay::start("sigterm", &[("OTR_TIMESTAMP_FLUSH_INTERVAL", "1h")]).await;
    let expected = ids(20);
    insert_paced(&relay.collection("Test"), &expected, Duration::ZERO, |_| {}).await;
    wait_all(&relay, &expected, Duration::from_secs(15)).await;
    relay.redtail.signal("TERM");
    let status = relay
        .redtail
        .wait_exit(Duration::from_secs(20))
        .expect("exits within the grace period");
    assert!(status.success(), "{status}\n{}", relay.redtail.logs());
    // With an hourly flush interval, only the shutdown flush can have written it.
    let stored = relay
        .redis
        .get("oplogtoredis::lastProcessedEntry.0")
        .unwrap()
        .expect("position flushed on shutdown");
    let last = oplog_ids(&relay, &format!("{}.Test", relay.db))
        .await
        .into_keys()
        .max()
        .unwrap();
    assert!(
        stored.parse::<u64>().unwrap() >= last,
        "stored {stored} is behind the last insert {last}"
    );
}
