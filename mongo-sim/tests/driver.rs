//! mongo-sim as the official Rust driver sees it: connecting, CRUD, tailing
//! the oplog, change streams, and recovering from every injected fault.
//! Everything goes over TCP to a simulator started by the test.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bson::{Bson, Document, Timestamp, doc};
use futures_util::TryStreamExt;
use mongo_sim::{MongoSim, SimOptions};
use mongodb::Client;
use mongodb::options::{CursorType, FindOptions};
use tokio::time::{Instant, timeout};

const NS_DB: &str = "test";
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn start() -> MongoSim {
    MongoSim::start(SimOptions::default()).expect("start mongo-sim")
}

async fn client(url: &str) -> Result<Client> {
    let url = if url.contains('?') {
        format!("{url}&serverSelectionTimeoutMS=20000")
    } else {
        format!("{url}?serverSelectionTimeoutMS=20000")
    };
    Client::with_uri_str(&url).await.context("client")
}

/// The newest oplog timestamp, read the usual way: newest entry first.
async fn latest_ts(client: &Client) -> Result<Timestamp> {
    let entry = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await?
        .context("the oplog is empty")?;
    Ok(entry.get_timestamp("ts")?)
}

/// Inserts `{_id: i}` for each i, retrying through faults as an application
/// would; a duplicate key on retry means the earlier attempt landed.
async fn write_ids(client: Client, coll: &str, ids: Vec<i32>, pace: Duration) -> Result<()> {
    let coll = client.database(NS_DB).collection::<Document>(coll);
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match coll.insert_one(doc! {"_id": id, "v": "x"}).await {
                Ok(_) => break,
                Err(e) if e.to_string().contains("E11000") || e.to_string().contains("11000") => {
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    note(&format!("insert {id} failed, retrying: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context(format!("insert {id}")),
            }
        }
        tokio::time::sleep(pace).await;
    }
    Ok(())
}

/// Test progress on stderr (shown with `--nocapture`).
fn note(message: &str) {
    eprintln!("[driver test] {message}");
}

/// What an oplog tailer saw.
#[derive(Debug, Default)]
struct Tailed {
    ids: Vec<i32>,
    /// How many times the tailer had to re-issue `find`.
    restarts: usize,
    errors: Vec<String>,
}

/// Tails `local.oplog.rs` for inserts into `ns` after `from` until `want`
/// ids are seen, re-issuing `find` from the last seen ts whenever the cursor
/// dies or errors, as a production tailer does.
async fn tail_oplog(client: &Client, ns: &str, from: Timestamp, want: usize) -> Result<Tailed> {
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut last = from;
    let mut tailed = Tailed::default();
    let mut first_find = true;
    while tailed.ids.len() < want {
        if Instant::now() > deadline {
            bail!("tailer timed out: {tailed:?}");
        }
        if !first_find {
            tailed.restarts += 1;
        }
        first_find = false;
        let options = FindOptions::builder()
            .cursor_type(CursorType::TailableAwait)
            .max_await_time(Duration::from_millis(200))
            .build();
        let mut cursor = match oplog
            .find(doc! {"ts": {"$gt": last}, "ns": ns})
            .with_options(options)
            .await
        {
            Ok(cursor) => cursor,
            Err(e) => {
                tailed.errors.push(format!("find: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while tailed.ids.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, cursor.try_next()).await {
                Ok(Ok(Some(entry))) => {
                    let ts = entry.get_timestamp("ts")?;
                    if ts <= last {
                        bail!("oplog went backwards: {ts:?} after {last:?}");
                    }
                    last = ts;
                    if entry.get_str("op")? == "i" {
                        tailed.ids.push(entry.get_document("o")?.get_i32("_id")?);
                    }
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    tailed.errors.push(format!("getMore: {e}"));
                    break;
                }
                Err(_) => bail!("tailer timed out: {tailed:?}"),
            }
        }
    }
    Ok(tailed)
}

/// What a change-stream follower saw.
#[derive(Debug, Default)]
struct Followed {
    ids: Vec<i32>,
    /// How many times the test itself had to reopen the stream (the driver's
    /// own resumes are invisible here).
    reopens: usize,
    errors: Vec<String>,
}

/// Follows a collection change stream until `want` insert ids are seen. The
/// driver resumes by itself; only if it gives up does this reopen the stream
/// from the last resume token.
async fn follow_stream(
    client: &Client,
    coll: &str,
    mut stream: mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >,
    want: usize,
) -> Result<Followed> {
    let coll = client.database(NS_DB).collection::<Document>(coll);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut followed = Followed::default();
    while followed.ids.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, stream.next_if_any()).await {
            Ok(Ok(Some(event))) => {
                if let Some(key) = event.document_key {
                    followed.ids.push(key.get_i32("_id")?);
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                followed.errors.push(e.to_string());
                followed.reopens += 1;
                let token = stream.resume_token();
                tokio::time::sleep(Duration::from_millis(200)).await;
                loop {
                    if Instant::now() > deadline {
                        bail!("could not reopen the stream: {followed:?}");
                    }
                    match coll
                        .watch()
                        .resume_after(token.clone())
                        .max_await_time(Duration::from_millis(200))
                        .await
                    {
                        Ok(s) => {
                            stream = s;
                            break;
                        }
                        Err(e) => {
                            followed.errors.push(format!("reopen: {e}"));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
            Err(_) => bail!("follower timed out: {followed:?}"),
        }
    }
    Ok(followed)
}

fn assert_exactly(ids: &[i32], expected: &[i32], what: &str) {
    assert_eq!(ids, expected, "{what}: every id once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_over_replica_set_and_direct_urls() -> Result<()> {
    let sim = start();
    for url in [sim.url(), sim.direct_url()] {
        let client = client(&url).await?;
        let admin = client.database("admin");
        let ping = admin.run_command(doc! {"ping": 1}).await?;
        assert_eq!(ping.get_f64("ok")?, 1.0, "{url}");
        let hello = admin.run_command(doc! {"hello": 1}).await?;
        assert!(hello.get_bool("isWritablePrimary")?, "{url}");
        assert_eq!(hello.get_str("setName")?, "rs0");
        assert_eq!(hello.get_str("me")?, sim.host());
        assert_eq!(hello.get_i32("maxWireVersion")?, 21);
        assert!(hello.contains_key("$clusterTime") || hello.contains_key("operationTime"));
        let build = admin.run_command(doc! {"buildInfo": 1}).await?;
        assert!(build.get_str("version")?.starts_with("7.0"));
        let err = admin
            .run_command(doc! {"noSuchCommand": 1})
            .await
            .expect_err("unknown command");
        assert!(
            matches!(*err.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 59),
            "{err}"
        );
        client.shutdown().await;
    }
    let counters = sim.counters().snapshot();
    assert!(counters.command("ping") >= 2, "{counters:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_version_handshakes() -> Result<()> {
    for (version, wire) in [
        (mongo_sim::MongoVersion::V4_4, 9),
        (mongo_sim::MongoVersion::V5_0, 13),
        (mongo_sim::MongoVersion::V6_0, 17),
        (mongo_sim::MongoVersion::V8_0, 25),
    ] {
        let sim = MongoSim::start(SimOptions {
            version,
            ..SimOptions::default()
        })?;
        let client = client(&sim.url()).await?;
        let hello = client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await?;
        assert_eq!(hello.get_i32("maxWireVersion")?, wire);
        let coll = client.database(NS_DB).collection::<Document>("v");
        coll.insert_one(doc! {"_id": 1}).await?;
        let found: Vec<Document> = coll.find(doc! {}).await?.try_collect().await?;
        assert_eq!(found, vec![doc! {"_id": 1}]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_writes_the_oplog() -> Result<()> {
    let sim = start();
    let client = client(&sim.url()).await?;
    let coll = client.database(NS_DB).collection::<Document>("crud");
    coll.insert_many(vec![doc! {"_id": 1, "a": 1}, doc! {"_id": 2, "a": 2}])
        .await?;
    let updated = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"a": 10}})
        .await?;
    assert_eq!(updated.modified_count, 1);
    let deleted = coll.delete_one(doc! {"_id": 2}).await?;
    assert_eq!(deleted.deleted_count, 1);
    let docs: Vec<Document> = coll.find(doc! {}).await?.try_collect().await?;
    assert_eq!(docs, vec![doc! {"_id": 1, "a": 10}]);

    let ops: Vec<String> = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"ns": "test.crud"})
        .await?
        .map_ok(|e| e.get_str("op").unwrap_or("?").to_owned())
        .try_collect()
        .await?;
    assert_eq!(ops, ["i", "i", "u", "d"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_cursors_page_through_batches() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let coll = client.database(NS_DB).collection::<Document>("pages");
    let docs: Vec<Document> = (0..250).map(|i| doc! {"_id": i}).collect();
    coll.insert_many(docs).await?;
    let ids: Vec<i32> = coll
        .find(doc! {})
        .batch_size(40)
        .await?
        .map_ok(|d| d.get_i32("_id").unwrap_or(-1))
        .try_collect()
        .await?;
    assert_eq!(ids, (0..250).collect::<Vec<_>>());
    let snapshot = sim.counters().snapshot();
    assert!(snapshot.command("getMore") >= 6, "{snapshot:?}");
    assert_eq!(snapshot.other.documents, 250);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailable_cursor_sees_new_entries() -> Result<()> {
    let sim = start();
    let client = client(&sim.url()).await?;
    let coll = client.database(NS_DB).collection::<Document>("tail");
    coll.insert_one(doc! {"_id": 0}).await?;
    let from = latest_ts(&client).await?;
    let writer = tokio::spawn(write_ids(
        client.clone(),
        "tail",
        (1..=20).collect(),
        Duration::from_millis(10),
    ));
    let tailed = timeout(TEST_TIMEOUT, tail_oplog(&client, "test.tail", from, 20)).await??;
    writer.await??;
    assert_exactly(&tailed.ids, &(1..=20).collect::<Vec<_>>(), "tailer");
    assert_eq!(tailed.restarts, 0, "{tailed:?}");
    let snapshot = sim.counters().snapshot();
    assert!(snapshot.oplog_tail.documents >= 20, "{snapshot:?}");
    assert!(snapshot.oplog_tail.bytes > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_data_get_more_waits_for_max_time_and_keeps_the_id() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let local = client.database("local");
    client
        .database(NS_DB)
        .collection::<Document>("wait")
        .insert_one(doc! {"_id": 1})
        .await?;
    let from = latest_ts(&client).await?;
    let reply = local
        .run_command(doc! {
            "find": "oplog.rs", "filter": {"ts": {"$gte": from}},
            "tailable": true, "awaitData": true,
        })
        .await?;
    let cursor = reply.get_document("cursor")?;
    let id = cursor.get_i64("id")?;
    assert_ne!(id, 0);
    assert_eq!(
        cursor.get_array("firstBatch")?.len(),
        1,
        "$gte includes the entry"
    );

    for wait_ms in [300_i64, 600] {
        let started = Instant::now();
        let more = local
            .run_command(doc! {"getMore": id, "collection": "oplog.rs", "maxTimeMS": wait_ms})
            .await?;
        let waited = started.elapsed();
        let cursor = more.get_document("cursor")?;
        assert_eq!(cursor.get_i64("id")?, id);
        assert!(cursor.get_array("nextBatch")?.is_empty());
        assert!(
            waited >= Duration::from_millis(wait_ms as u64 - 50)
                && waited < Duration::from_millis(wait_ms as u64 + 1000),
            "waited {waited:?} for maxTimeMS {wait_ms}"
        );
    }

    // An append wakes a waiting getMore long before its maxTimeMS.
    let engine = sim.engine().clone();
    let appender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        engine.append_oplog_entry(doc! {"op": "n", "ns": "", "o": {"msg": "wake"}})
    });
    let started = Instant::now();
    let more = local
        .run_command(doc! {"getMore": id, "collection": "oplog.rs", "maxTimeMS": 5000})
        .await?;
    let appended = appender.await?;
    assert!(started.elapsed() < Duration::from_secs(3));
    let batch = more.get_document("cursor")?.get_array("nextBatch")?;
    assert_eq!(batch.len(), 1);
    let entry = batch[0].as_document().context("entry")?;
    assert_eq!(entry.get_timestamp("ts")?, appended);

    let killed = local
        .run_command(doc! {"killCursors": "oplog.rs", "cursors": [id]})
        .await?;
    assert_eq!(killed.get_array("cursorsKilled")?, &vec![Bson::Int64(id)]);
    let err = local
        .run_command(doc! {"getMore": id, "collection": "oplog.rs"})
        .await
        .expect_err("killed cursor");
    assert!(
        err.to_string().contains("43") || err.to_string().contains("CursorNotFound"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_batch_size_first_batches() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let coll = client.database(NS_DB).collection::<Document>("zero");
    coll.insert_one(doc! {"_id": 1}).await?;
    let local = client.database("local");
    let reply = local
        .run_command(doc! {
            "find": "oplog.rs", "filter": {"ns": "test.zero"},
            "tailable": true, "awaitData": true, "batchSize": 0,
        })
        .await?;
    let cursor = reply.get_document("cursor")?;
    assert!(cursor.get_array("firstBatch")?.is_empty());
    let id = cursor.get_i64("id")?;
    assert_ne!(id, 0);
    let more = local
        .run_command(doc! {"getMore": id, "collection": "oplog.rs", "maxTimeMS": 100})
        .await?;
    assert_eq!(
        more.get_document("cursor")?.get_array("nextBatch")?.len(),
        1
    );

    let reply = client
        .database(NS_DB)
        .run_command(doc! {
            "aggregate": "zero", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": 0},
        })
        .await?;
    let cursor = reply.get_document("cursor")?;
    assert!(
        cursor.get_document("postBatchResumeToken").is_ok(),
        "{reply}"
    );
    assert!(cursor.get_array("firstBatch")?.is_empty());
    assert!(reply.get_timestamp("operationTime").is_ok());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_stream_sees_inserts_updates_and_deletes() -> Result<()> {
    let sim = start();
    let client = client(&sim.url()).await?;
    let coll = client.database(NS_DB).collection::<Document>("cs");
    let mut stream = coll
        .watch()
        .max_await_time(Duration::from_millis(200))
        .await?;
    coll.insert_one(doc! {"_id": 1, "a": 1}).await?;
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 2}})
        .await?;
    coll.delete_one(doc! {"_id": 1}).await?;
    let mut kinds = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while kinds.len() < 3 && Instant::now() < deadline {
        if let Some(event) = timeout(Duration::from_secs(20), stream.next_if_any()).await?? {
            assert!(event.cluster_time.is_some());
            kinds.push(format!("{:?}", event.operation_type));
        }
    }
    assert_eq!(kinds, ["Insert", "Update", "Delete"]);
    assert!(stream.resume_token().is_some());
    let snapshot = sim.counters().snapshot();
    assert!(snapshot.change_stream.documents >= 3, "{snapshot:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_and_cluster_streams() -> Result<()> {
    let sim = start();
    let client = client(&sim.url()).await?;
    let db = client.database(NS_DB);
    let mut db_stream = db
        .watch()
        .max_await_time(Duration::from_millis(200))
        .await?;
    let mut cluster_stream = client
        .watch()
        .max_await_time(Duration::from_millis(200))
        .await?;
    db.collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await?;
    client
        .database("other")
        .collection::<Document>("b")
        .insert_one(doc! {"_id": 2})
        .await?;
    let db_event = timeout(TEST_TIMEOUT, db_stream.next_if_any_loop()).await??;
    assert_eq!(db_event.ns.context("ns")?.coll.as_deref(), Some("a"));
    let mut cluster_dbs = BTreeSet::new();
    while cluster_dbs.len() < 2 {
        let event = timeout(TEST_TIMEOUT, cluster_stream.next_if_any_loop()).await??;
        cluster_dbs.insert(event.ns.context("ns")?.db);
    }
    assert_eq!(
        cluster_dbs,
        BTreeSet::from(["other".to_owned(), NS_DB.to_owned()])
    );
    Ok(())
}

/// Waits for the next event of a change stream (skipping empty batches).
trait NextEvent {
    async fn next_if_any_loop(
        &mut self,
    ) -> Result<mongodb::change_stream::event::ChangeStreamEvent<Document>>;
}

impl NextEvent
    for mongodb::change_stream::ChangeStream<
        mongodb::change_stream::event::ChangeStreamEvent<Document>,
    >
{
    async fn next_if_any_loop(
        &mut self,
    ) -> Result<mongodb::change_stream::event::ChangeStreamEvent<Document>> {
        loop {
            if let Some(event) = self.next_if_any().await? {
                return Ok(event);
            }
        }
    }
}

/// A fault and when to inject it.
#[derive(Debug, Clone, Copy)]
enum Fault {
    StepDown,
    CloseConnections,
    RefuseConnections,
    Latency,
    Pause,
}

fn inject(sim: &MongoSim, fault: Fault) {
    let faults = sim.faults();
    match fault {
        Fault::StepDown => faults.step_down(Duration::from_millis(1500)),
        Fault::CloseConnections => faults.close_connections(),
        Fault::RefuseConnections => {
            faults.refuse_connections(Duration::from_millis(1500));
            faults.close_connections();
        }
        Fault::Latency => faults.set_latency(Duration::from_millis(30)),
        Fault::Pause => faults.pause(Duration::from_millis(1500)),
    }
}

/// Writes 40 ids, injects `fault` after the first 20, and checks that an
/// oplog tailer and a change-stream follower each see all 40 exactly once.
async fn survives(fault: Fault) -> Result<(Tailed, Followed)> {
    let sim = start();
    let client = client(&sim.url()).await?;
    let coll_name = "faulty";
    let coll = client.database(NS_DB).collection::<Document>(coll_name);
    coll.insert_one(doc! {"_id": 0}).await?;
    let from = latest_ts(&client).await?;
    let stream = coll
        .watch()
        .max_await_time(Duration::from_millis(200))
        .await?;

    let tail_client = self::client(&sim.url()).await?;
    let tailer =
        tokio::spawn(async move { tail_oplog(&tail_client, "test.faulty", from, 40).await });
    let follow_client = self::client(&sim.url()).await?;
    let follower =
        tokio::spawn(async move { follow_stream(&follow_client, coll_name, stream, 40).await });

    write_ids(
        client.clone(),
        coll_name,
        (1..=20).collect(),
        Duration::from_millis(5),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    inject(&sim, fault);
    write_ids(
        client.clone(),
        coll_name,
        (21..=40).collect(),
        Duration::from_millis(5),
    )
    .await?;

    let tailed = timeout(TEST_TIMEOUT, tailer).await???;
    let followed = timeout(TEST_TIMEOUT, follower).await???;
    let expected: Vec<i32> = (1..=40).collect();
    assert_exactly(&tailed.ids, &expected, &format!("tailer through {fault:?}"));
    assert_exactly(
        &followed.ids,
        &expected,
        &format!("stream through {fault:?}"),
    );
    sim.faults().clear();
    eprintln!(
        "{fault:?}: tailer restarts {} errors {:?}; stream reopens {} errors {:?}",
        tailed.restarts, tailed.errors, followed.reopens, followed.errors
    );
    Ok((tailed, followed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_step_down() -> Result<()> {
    let (tailed, followed) = survives(Fault::StepDown).await?;
    assert!(
        tailed.restarts >= 1,
        "the step-down must break the tailer: {tailed:?}"
    );
    assert!(
        tailed
            .errors
            .iter()
            .any(|e| e.contains("11602") || e.contains("10107")),
        "{tailed:?}"
    );
    assert_eq!(
        followed.reopens, 0,
        "the driver resumes by itself: {followed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_closed_connections() -> Result<()> {
    let (tailed, followed) = survives(Fault::CloseConnections).await?;
    assert!(tailed.restarts >= 1, "{tailed:?}");
    assert_eq!(
        followed.reopens, 0,
        "the driver resumes by itself: {followed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_refused_connections() -> Result<()> {
    let (tailed, _followed) = survives(Fault::RefuseConnections).await?;
    assert!(tailed.restarts >= 1, "{tailed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_latency() -> Result<()> {
    let (tailed, followed) = survives(Fault::Latency).await?;
    assert_eq!(tailed.restarts, 0, "{tailed:?}");
    assert_eq!(followed.reopens, 0, "{followed:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_pause() -> Result<()> {
    survives(Fault::Pause).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_pause_delay_replies() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let admin = client.database("admin");
    admin.run_command(doc! {"ping": 1}).await?;
    sim.faults().set_latency(Duration::from_millis(300));
    let started = Instant::now();
    admin.run_command(doc! {"ping": 1}).await?;
    assert!(started.elapsed() >= Duration::from_millis(290));
    sim.faults().set_latency(Duration::ZERO);
    sim.faults().pause(Duration::from_millis(500));
    let started = Instant::now();
    admin.run_command(doc! {"ping": 1}).await?;
    assert!(started.elapsed() >= Duration::from_millis(400));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_down_is_visible_and_ends() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let admin = client.database("admin");
    let coll = client.database(NS_DB).collection::<Document>("sd");
    admin
        .run_command(doc! {"mongoSimFault": "stepDown", "seconds": 1})
        .await?;
    let hello = admin.run_command(doc! {"hello": 1}).await?;
    assert!(!hello.get_bool("isWritablePrimary")?);
    assert!(hello.get_bool("secondary")?);
    let err = coll
        .insert_one(doc! {"_id": 1})
        .await
        .expect_err("writes fail on a secondary");
    assert!(
        err.to_string().contains("10107") || err.to_string().contains("NotWritablePrimary"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hello = admin.run_command(doc! {"hello": 1}).await?;
    assert!(hello.get_bool("isWritablePrimary")?);
    coll.insert_one(doc! {"_id": 1}).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_loses_a_lagging_tailer_position() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let local = client.database("local");
    let coll = client.database(NS_DB).collection::<Document>("trunc");
    coll.insert_one(doc! {"_id": 0}).await?;
    let from = latest_ts(&client).await?;
    let reply = local
        .run_command(doc! {
            "find": "oplog.rs", "filter": {"ts": {"$gte": from}},
            "tailable": true, "awaitData": true, "batchSize": 1,
        })
        .await?;
    let id = reply.get_document("cursor")?.get_i64("id")?;
    let docs: Vec<Document> = (1..=20).map(|i| doc! {"_id": i}).collect();
    coll.insert_many(docs).await?;
    client
        .database("admin")
        .run_command(doc! {"mongoSimFault": "truncateOplog", "keep": 5})
        .await?;
    let err = local
        .run_command(doc! {"getMore": id, "collection": "oplog.rs", "maxTimeMS": 100})
        .await
        .expect_err("position lost");
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 136),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_append_and_count() -> Result<()> {
    let sim = start();
    let client = client(&sim.direct_url()).await?;
    let admin = client.database("admin");
    let from = latest_ts(&client).await.ok();
    let appended = admin
        .run_command(doc! {"mongoSimAppendOplog": [
            {"op": "n", "ns": "", "o": {"msg": "one"}},
            {"op": "n", "ns": "", "o": {"msg": "two"}},
        ]})
        .await?;
    let stamps = appended.get_array("ts")?;
    assert_eq!(stamps.len(), 2);
    let newest = latest_ts(&client).await?;
    assert_eq!(Some(&Bson::Timestamp(newest)), stamps.last());
    assert!(from.is_none_or(|f| f < newest));

    let counters = admin
        .run_command(doc! {"mongoSimCounters": 1, "reset": true})
        .await?;
    let commands = counters.get_document("commands")?;
    assert!(commands.get_i64("mongoSimAppendOplog")? >= 1);
    let after = sim.counters().snapshot();
    assert!(
        after.command("mongoSimAppendOplog") == 0,
        "reset: {after:?}"
    );

    let err = client
        .database(NS_DB)
        .run_command(doc! {"mongoSimFault": "clear"})
        .await
        .expect_err("admin only");
    assert!(
        err.to_string().contains("Unauthorized") || err.to_string().contains("13"),
        "{err}"
    );
    Ok(())
}

#[test]
fn library_api_works_from_sync_code() {
    let sim = start();
    let reply = sim.run_command("test", doc! {"insert": "sync", "documents": [{"_id": 1}]});
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0, "{reply}");
    assert_eq!(reply.get_i32("n").unwrap(), 1);
    let reply = sim.run_command("admin", doc! {"nope": 1});
    assert_eq!(reply.get_i32("code").unwrap(), 59, "{reply}");
    let port = sim.port();
    assert!(sim.url().contains(&format!("127.0.0.1:{port}")));
    sim.shutdown();
    // The port is free again soon after shutdown.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(std::time::Instant::now() < deadline, "still listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_one_ready_line_and_serves() -> Result<()> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mongo-sim"))
        .args(["--port", "0", "--mongo-version", "5.0", "--repl-set", "rsX"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Anything more on stdout is a bug: report it too.
        let _ = tx.send(lines.next());
    });
    let outcome = async {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("no ready line")?
            .context("stdout closed")??;
        let url = line
            .strip_prefix("ready ")
            .context("line starts with ready")?;
        assert!(url.starts_with("mongodb://127.0.0.1:"), "{line}");
        assert!(url.ends_with("/?replicaSet=rsX"), "{line}");
        let client = client(url).await?;
        let hello = client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await?;
        assert_eq!(hello.get_i32("maxWireVersion")?, 13);
        assert_eq!(hello.get_str("setName")?, "rsX");
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "more than one line on stdout"
        );
        anyhow::Ok(())
    }
    .await;
    child.kill()?;
    child.wait()?;
    outcome
}

/// Raw wire access, for what drivers never send: the legacy handshake,
/// `moreToCome` and checksums.
mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use bson::Document;

    pub fn header(length: usize, request_id: i32, op: i32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(length as i32).to_le_bytes());
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&op.to_le_bytes());
        out
    }

    pub fn op_msg(request_id: i32, flags: u32, command: &Document, checksum: bool) -> Vec<u8> {
        let body = command.to_vec().unwrap();
        let length = 16 + 4 + 1 + body.len() + if checksum { 4 } else { 0 };
        let mut out = header(length, request_id, 2013);
        out.extend_from_slice(&flags.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&body);
        if checksum {
            let crc = crc32c(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// CRC-32C (Castagnoli), bit by bit: slow but obviously right.
    fn crc32c(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= byte as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    pub fn op_query(request_id: i32, collection: &str, query: &Document) -> Vec<u8> {
        let mut body = 0i32.to_le_bytes().to_vec();
        body.extend_from_slice(collection.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.extend_from_slice(&query.to_vec().unwrap());
        let mut out = header(16 + body.len(), request_id, 2004);
        out.extend_from_slice(&body);
        out
    }

    /// Reads one reply: (responseTo, opCode, the reply document).
    pub fn read_reply(stream: &mut TcpStream) -> (i32, i32, Document) {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).unwrap();
        let length = i32::from_le_bytes(len) as usize;
        let mut rest = vec![0u8; length - 4];
        stream.read_exact(&mut rest).unwrap();
        let field = |at: usize| i32::from_le_bytes(rest[at - 4..at].try_into().unwrap());
        let (response_to, op) = (field(8), field(12));
        let doc_start = match op {
            2013 => 16 + 4 + 1,
            1 => 16 + 20,
            other => panic!("unexpected opcode {other}"),
        };
        let doc = Document::from_reader(&rest[doc_start - 4..]).unwrap();
        (response_to, op, doc)
    }

    pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).unwrap();
    }
}

#[test]
fn raw_wire_legacy_handshake_more_to_come_and_checksums() {
    let sim = start();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", sim.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    raw::send(
        &mut stream,
        &raw::op_query(1, "admin.$cmd", &doc! {"isMaster": 1, "helloOk": true}),
    );
    let (response_to, op, reply) = raw::read_reply(&mut stream);
    assert_eq!((response_to, op), (1, 1), "OP_REPLY to request 1");
    assert!(reply.get_bool("ismaster").unwrap());
    assert!(reply.get_bool("helloOk").unwrap());
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);

    // moreToCome: executed, never answered; the next reply is the ping's.
    let insert = doc! {"insert": "raw", "documents": [{"_id": 1}], "$db": "test"};
    raw::send(&mut stream, &raw::op_msg(2, 1 << 1, &insert, false));
    raw::send(
        &mut stream,
        &raw::op_msg(3, 1, &doc! {"ping": 1, "$db": "admin"}, true),
    );
    let (response_to, op, reply) = raw::read_reply(&mut stream);
    assert_eq!((response_to, op), (3, 2013));
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
    let found = sim.run_command("test", doc! {"find": "raw", "filter": {}});
    let batch = found
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1, "the fire-and-forget insert ran: {found}");

    // A bad checksum closes the connection.
    let mut bad = raw::op_msg(4, 1, &doc! {"ping": 1, "$db": "admin"}, true);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    raw::send(&mut stream, &bad);
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut stream, &mut byte);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "connection should be closed: {read:?}"
    );
}
