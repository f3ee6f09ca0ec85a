//! The oplog source's contract with cluster mode, in process against
//! mongo-sim (or a real replica set): a new namespace exclusion list is
//! announced before the first entry read with it, so a standby knows from
//! which position its window holds every change of a shard; and the
//! reachability probe that steps a cut-off cluster member aside.

use std::sync::Arc;
use std::time::Duration;

use bson::doc;
use redtail::sources::SourceRecord;
use redtail::sources::oplog::{ExcludedNamespaces, OplogSettings, OplogSource};
use redtail::sources::reachability::{ReachabilitySettings, watch_reachability};
use redtail::sources::start::{StartPlan, StartReason};
use redtail::telemetry::metrics::Metrics;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::support::mongo::{TestMongo, unique_db};

/// What the test sees of a record: a marker, or an entry's namespace and id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Rewound,
    Filtered(Vec<String>),
    Insert(String, String),
    Other,
}

fn seen(record: SourceRecord) -> Seen {
    match record {
        SourceRecord::Rewound(_) => Seen::Rewound,
        SourceRecord::Filtered(list) => Seen::Filtered(list.to_vec()),
        SourceRecord::OplogEntry(raw) => {
            let ns = raw.get_str("ns").unwrap_or_default().to_owned();
            let id = raw
                .get_document("o")
                .ok()
                .and_then(|o| o.get_str("_id").ok())
                .map(str::to_owned);
            match (raw.get_str("op"), id) {
                (Ok("i"), Some(id)) => Seen::Insert(ns, id),
                _ => Seen::Other,
            }
        }
    }
}

/// Receives until `done` holds for what was seen (10 s bound).
async fn receive_until(
    records: &mut mpsc::Receiver<SourceRecord>,
    log: &mut Vec<Seen>,
    done: impl Fn(&[Seen]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(log) {
        let record = tokio::time::timeout_at(deadline, records.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; seen so far: {log:?}"))
            .expect("the source keeps running");
        log.push(seen(record));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusion_lists_are_announced_before_the_entries_they_filter() {
    let mongo = TestMongo::start();
    let client = mongo.client().await;
    let db = unique_db("source_filter");
    let (a, b) = (format!("{db}.a"), format!("{db}.b"));
    let (exclude, excluded) = watch::channel::<ExcludedNamespaces>(Arc::default());
    let settings = OplogSettings {
        max_await: Duration::from_millis(200),
        ..OplogSettings::default()
    };
    let source =
        OplogSource::new(&client, settings, Metrics::new()).with_excluded_namespaces(excluded);
    let (out, mut records) = mpsc::channel(10_000);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(source.run(
        StartPlan::AtEnd(StartReason::NoStoredPosition),
        out,
        shutdown.clone(),
    ));
    let insert = |coll: &'static str, id: &'static str| {
        let collection = client.database(&db).collection::<bson::Document>(coll);
        async move { collection.insert_one(doc! { "_id": id }).await.unwrap() }
    };
    let has = |ns: &str, id: &str| {
        let wanted = Seen::Insert(ns.to_owned(), id.to_owned());
        move |log: &[Seen]| log.contains(&wanted)
    };

    let mut log = Vec::new();
    receive_until(&mut records, &mut log, |l| {
        l.contains(&Seen::Filtered(vec![]))
    })
    .await;
    assert_eq!(log.first(), Some(&Seen::Rewound), "{log:?}");
    insert("a", "a1").await;
    insert("b", "b1").await;
    receive_until(&mut records, &mut log, has(&b, "b1")).await;

    // Leave b out: the announcement comes before any entry read without b.
    exclude.send_replace(Arc::new(vec![b.clone()]));
    insert("b", "b2").await;
    insert("a", "a2").await;
    receive_until(&mut records, &mut log, has(&a, "a2")).await;
    let marker = log
        .iter()
        .position(|s| *s == Seen::Filtered(vec![b.clone()]))
        .unwrap_or_else(|| panic!("no announcement of the new list: {log:?}"));
    let b_after = log[marker..]
        .iter()
        .filter(|s| matches!(s, Seen::Insert(ns, _) if *ns == b))
        .count();
    assert_eq!(b_after, 0, "an excluded namespace was returned: {log:?}");

    // Back in: announced again, and b's new entries come through.
    let before = log.len();
    exclude.send_replace(Arc::default());
    insert("b", "b3").await;
    receive_until(&mut records, &mut log, has(&b, "b3")).await;
    assert!(
        log[before..].contains(&Seen::Filtered(vec![])),
        "the empty list was not announced before b3: {:?}",
        &log[before..]
    );

    // Each entry read at most once, whatever the re-queries.
    for id in ["a1", "b1", "a2", "b3"] {
        let times = log
            .iter()
            .filter(|s| matches!(s, Seen::Insert(_, i) if i == id))
            .count();
        assert_eq!(times, 1, "{id} read {times} times: {log:?}");
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

/// Waits until the watch reads `wanted` (bounded), returning how long it took.
async fn until_reads(
    watch: &mut watch::Receiver<bool>,
    wanted: bool,
    within: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    tokio::time::timeout(within, watch.wait_for(|v| *v == wanted))
        .await
        .unwrap_or_else(|_| panic!("reachability did not turn {wanted} within {within:?}"))
        .expect("the probe keeps running");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reachability_turns_false_when_mongo_stops_answering_but_not_in_an_election() {
    let mongo = TestMongo::start();
    let Some(sim) = mongo.sim() else {
        return crate::support::mongo::skip_without_sim("reachability");
    };
    let client = mongo.client().await;
    let settings = ReachabilitySettings {
        interval: Duration::from_millis(100),
        unreachable_after: Duration::from_millis(500),
    };
    let shutdown = CancellationToken::new();
    let mut reachable = watch_reachability(client, settings, shutdown.clone());
    assert!(*reachable.borrow());

    // An election: the nearest member still answers, nothing changes.
    sim.faults().step_down(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(*reachable.borrow(), "a step-down made MongoDB unreachable");
    assert!(!reachable.has_changed().unwrap());

    // Frozen: no answer for longer than the limit.
    sim.faults().pause(Duration::from_secs(2));
    let took = until_reads(&mut reachable, false, Duration::from_secs(2)).await;
    assert!(
        took >= Duration::from_millis(400),
        "turned false after {took:?}"
    );
    // Back once the driver has found the server again (about 5 s after the
    // pause ends against mongo-sim).
    until_reads(&mut reachable, true, Duration::from_secs(15)).await;
    shutdown.cancel();
}
