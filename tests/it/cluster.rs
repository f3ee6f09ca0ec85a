//! Cluster mode end to end: several real redtail processes share the shards
//! through Redis leases; every change is published once, and a crashed or
//! stopped instance's shards are taken over without losing any.

use std::collections::BTreeMap;
use std::time::Duration;

use bson::doc;

use crate::support::relay::{Relay, metric_value};

/// `OTR_CLUSTER_SHARDS` below.
const SHARDS: f64 = 32.0;

const CLUSTER: [(&str, &str); 5] = [
    ("OTR_CLUSTER", "true"),
    // Enough shards that every member is preferred for some: with 8, one of
    // three members ranks first for none about one run in ten.
    ("OTR_CLUSTER_SHARDS", "32"),
    ("OTR_CLUSTER_LEASE_TTL", "2s"),
    ("OTR_CLUSTER_RENEW_INTERVAL", "400ms"),
    ("OTR_SHUTDOWN_GRACE", "10s"),
];

/// Inserts `n` documents spread over a hundred collections (so every shard gets some), `pace` apart; returns
/// the collection channel and id of each.
async fn write(relay: &Relay, from: usize, n: usize, pace: Duration) -> Vec<(String, String)> {
    let mut written = Vec::new();
    for i in from..from + n {
        let coll = format!("c{}", i % 100);
        let id = format!("d{i:04}");
        relay
            .collection(&coll)
            .insert_one(doc! { "_id": &id })
            .await
            .unwrap();
        written.push((relay.channel(&coll), id));
        tokio::time::sleep(pace).await;
    }
    written
}

/// How often each (collection channel, id) was announced.
fn announced(relay: &Relay) -> BTreeMap<(String, String), usize> {
    let mut seen = BTreeMap::new();
    for (channel, message) in relay.received() {
        if channel.contains("::") {
            continue;
        }
        let id = message
            .split("\"_id\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?");
        *seen.entry((channel, id.to_owned())).or_default() += 1;
    }
    seen
}

async fn wait_delivered(
    relay: &Relay,
    written: &[(String, String)],
    timeout: Duration,
) -> BTreeMap<(String, String), usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = announced(relay);
        if written.iter().all(|w| seen.contains_key(w)) || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_once(seen: &BTreeMap<(String, String), usize>, written: &[(String, String)], logs: &str) {
    let lost: Vec<_> = written.iter().filter(|w| !seen.contains_key(*w)).collect();
    assert!(
        lost.is_empty(),
        "lost {} changes, e.g. {:?}\n{logs}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
}

/// Waits until the instances together lead every shard, each at least one.
async fn wait_all_shards_led(instances: &[&crate::support::redtail::Redtail], shards: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held: Vec<f64> = instances
            .iter()
            .map(|r| metric_value(r, "redtail_shard_leases_held"))
            .collect();
        if held.iter().sum::<f64>() == shards && held.iter().all(|h| *h >= 1.0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards never spread over the instances: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cluster settings plus more.
fn cluster_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    CLUSTER.iter().chain(extra).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_the_shards_and_publish_each_change_once() {
    // Without standbys each member reads only the shards it leads, which
    // is what the MongoDB load check at the end measures.
    let env = cluster_with(&[("OTR_CLUSTER_STANDBYS", "0")]);
    let relay = Relay::start("cluster_split", &env).await;
    let second = relay.start_another(&env);
    wait_all_shards_led(&[&relay.redtail, &second], SHARDS).await;
    let written = write(&relay, 0, 100, Duration::ZERO).await;
    let seen = wait_delivered(&relay, &written, Duration::from_secs(20)).await;
    assert_once(&seen, &written, &relay.redtail.logs());
    let published = |r: &crate::support::redtail::Redtail| {
        metric_value(r, r#"otr_redispub_processed_messages{status="sent"}"#)
    };
    assert!(
        published(&relay.redtail) > 0.0 && published(&second) > 0.0,
        "both members publish their shards"
    );
    assert_eq!(
        published(&relay.redtail) + published(&second),
        100.0,
        "only leaders publish: nothing twice"
    );

    // Once each member has learned which namespaces the other publishes, the
    // server returns each entry to one member only: MongoDB's load stays flat.
    let Some(sim) = relay.mongo.sim() else { return };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sim.counters().reset();
    let more = write(&relay, 100, 200, Duration::ZERO).await;
    let seen = wait_delivered(&relay, &more, Duration::from_secs(20)).await;
    assert_once(&seen, &more, &relay.redtail.logs());
    let returned = sim.counters().snapshot().oplog_tail.documents;
    eprintln!("oplog entries returned to 2 members for 200 written: {returned}");
    assert!(
        returned < 300,
        "{returned} oplog entries returned for 200 written to 2 members"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_taken_over_without_loss() {
    let relay = Relay::start("cluster_kill", &CLUSTER).await;
    let mut second = relay.start_another(&CLUSTER);
    wait_all_shards_led(&[&relay.redtail, &second], SHARDS).await;
    let mut written = write(&relay, 0, 50, Duration::from_millis(5)).await;
    wait_delivered(&relay, &written, Duration::from_secs(20)).await;
    second.kill();
    written.extend(write(&relay, 50, 50, Duration::from_millis(20)).await);
    let seen = wait_delivered(&relay, &written, Duration::from_secs(20)).await;
    assert_once(&seen, &written, &relay.redtail.logs());
    assert_eq!(
        metric_value(&relay.redtail, "redtail_shard_leases_held"),
        SHARDS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_hands_its_shards_over_without_loss() {
    let relay = Relay::start("cluster_term", &CLUSTER).await;
    let mut second = relay.start_another(&CLUSTER);
    wait_all_shards_led(&[&relay.redtail, &second], SHARDS).await;
    let writer = {
        let client = relay.client.clone();
        let db = relay.db.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                let coll = client
                    .database(&db)
                    .collection::<bson::Document>(&format!("c{}", i % 10));
                coll.insert_one(doc! { "_id": format!("d{i:04}") })
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.signal("TERM");
    let status = second
        .wait_exit(Duration::from_secs(15))
        .expect("the member exits within its grace period");
    assert!(status.success(), "{status}\n{}", second.logs());
    writer.await.unwrap();
    let written: Vec<(String, String)> = (0..150)
        .map(|i| (relay.channel(&format!("c{}", i % 10)), format!("d{i:04}")))
        .collect();
    let seen = wait_delivered(&relay, &written, Duration::from_secs(20)).await;
    assert_once(&seen, &written, &relay.redtail.logs());
    assert!(
        second.logs().contains("handed a shard back"),
        "{}",
        second.logs()
    );
}

/// One sample summed over several instances.
fn total(instances: &[&crate::support::redtail::Redtail], sample: &str) -> f64 {
    instances.iter().map(|r| metric_value(r, sample)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_its_window_and_reads_only_its_shards() {
    let relay = Relay::start("cluster_window", &CLUSTER).await;
    let second = relay.start_another(&CLUSTER);
    let mut third = relay.start_another(&CLUSTER);
    wait_all_shards_led(&[&relay.redtail, &second, &third], SHARDS).await;
    let mut written = write(&relay, 0, 100, Duration::ZERO).await;
    wait_delivered(&relay, &written, Duration::from_secs(20)).await;

    // With one standby per shard, each entry goes to its leader and its
    // standby: two members of three, where reading everything is three.
    if let Some(sim) = relay.mongo.sim() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sim.counters().reset();
        let more = write(&relay, 100, 150, Duration::ZERO).await;
        wait_delivered(&relay, &more, Duration::from_secs(20)).await;
        written.extend(more);
        let returned = sim.counters().snapshot().oplog_tail.documents;
        eprintln!("oplog entries returned to 3 members (1 standby) for 150 written: {returned}");
        assert!(
            (250..400).contains(&returned),
            "{returned} oplog entries returned for 150 written to 3 members with 1 standby"
        );
    }

    // Kill a member: its shards go to their standbys, which publish what the
    // dead leader left from their windows instead of reading again.
    let survivors = [&relay.redtail, &second];
    let replays = |s: &[&crate::support::redtail::Redtail]| {
        total(s, r#"redtail_takeover_gap_seconds_count{path="replay"}"#)
    };
    let windows = |s: &[&crate::support::redtail::Redtail]| {
        total(s, r#"redtail_takeover_gap_seconds_count{path="window"}"#)
    };
    let (replays_before, windows_before) = (replays(&survivors), windows(&survivors));
    let rewinds_before = total(
        &survivors,
        r#"redtail_source_restarts_total{reason="rewind"}"#,
    );
    let writer = {
        let (client, db) = (relay.client.clone(), relay.db.clone());
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 250..400 {
                let coll = format!("c{}", i % 100);
                let id = format!("d{i:04}");
                client
                    .database(&db)
                    .collection::<bson::Document>(&coll)
                    .insert_one(doc! { "_id": &id })
                    .await
                    .unwrap();
                written.push((format!("{db}.{coll}"), id));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    third.kill();
    written.extend(writer.await.unwrap());
    wait_all_shards_led(&survivors, SHARDS).await;
    let seen = wait_delivered(&relay, &written, Duration::from_secs(20)).await;
    let logs = format!("{}\n{}", relay.redtail.logs(), second.logs());
    assert_once(&seen, &written, &logs);
    assert!(
        windows(&survivors) > windows_before,
        "no takeover was served by a window\n{logs}"
    );
    assert_eq!(
        replays(&survivors),
        replays_before,
        "a takeover after the crash read the oplog again\n{logs}"
    );
    assert_eq!(
        total(
            &survivors,
            r#"redtail_source_restarts_total{reason="rewind"}"#
        ),
        rewinds_before,
        "the source was asked to read again"
    );
    assert!(total(&survivors, "redtail_standby_shards") >= 1.0);
}
