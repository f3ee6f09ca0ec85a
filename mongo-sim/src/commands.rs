//! Command routing: the server answers the handshake, server-status
//! commands, cursors (`getMore`, `killCursors`, oplog tailing,
//! `$changeStream`) and its own `mongoSim*` commands, and hands every data
//! command to the engine.

use std::collections::VecDeque;
use std::time::Duration;

use bson::{Bson, DateTime, Document, doc};
use tokio::time::Instant;

use crate::admin::{self, AdminCommand, FaultAction};
use crate::counters::CursorKind;
use crate::cursors::{CursorSource, Fetched, OpenCursor};
use crate::engine::change_stream::ChangeStreamSpec;
use crate::engine::{CommandError, CommandReply, OplogFilter};
use crate::handshake::{self, HelloState};
use crate::reply::{CursorBatch, Response, as_i64};
use crate::server::ServerContext;

/// First-batch size when the client names none (MongoDB's default).
const DEFAULT_FIRST_BATCH: usize = 101;
/// `getMore` batch size when the client names none. MongoDB fills up to
/// 16 MB; a count keeps replies well under the message limit for test data.
const DEFAULT_GET_MORE_BATCH: usize = 5000;
/// How long an awaitData `getMore` waits when the client sends no `maxTimeMS`.
const DEFAULT_AWAIT: Duration = Duration::from_millis(1000);

fn error(code: i32, code_name: &'static str, message: impl Into<String>) -> CommandError {
    CommandError {
        code,
        code_name,
        message: message.into(),
        labels: Vec::new(),
    }
}

fn bad_value(message: impl Into<String>) -> CommandError {
    error(2, "BadValue", message)
}

fn not_writable_primary(command: &Document) -> CommandError {
    let mut err = error(10107, "NotWritablePrimary", "not primary");
    // Real servers label retryable writes so the driver retries them once
    // the new primary is found.
    if command.contains_key("txnNumber") && !command.contains_key("autocommit") {
        err.labels.push("RetryableWriteError".into());
    }
    err
}

fn interrupted_by_step_down() -> CommandError {
    let mut err = error(
        11602,
        "InterruptedDueToReplStateChange",
        "operation was interrupted because the node stepped down",
    );
    err.labels.push("ResumableChangeStreamError".into());
    err
}

/// The name of a command: its first key.
pub(crate) fn command_name(command: &Document) -> &str {
    command.keys().next().map(String::as_str).unwrap_or("")
}

/// Runs one command received on connection `connection_id` against database `db`.
pub(crate) async fn execute(
    ctx: &ServerContext,
    connection_id: i64,
    db: &str,
    command: Document,
) -> Result<Response, CommandError> {
    let name = command_name(&command).to_owned();
    ctx.counters.count_command(&name);
    let reply = match name.as_str() {
        "hello" | "isMaster" | "ismaster" => hello(ctx, connection_id, &name, &command),
        "ping" => Document::new(),
        "buildInfo" | "buildinfo" => build_info(ctx),
        "getParameter" => get_parameter(ctx),
        "serverStatus" => server_status(ctx),
        "replSetGetStatus" => repl_set_status(ctx),
        "hostInfo" => doc! {"system": {"hostname": ctx.identity.host.clone(), "numCores": 1}},
        "whatsmyuri" => doc! {"you": "127.0.0.1"},
        "getCmdLineOpts" => doc! {
            "argv": ["mongod", "--replSet", ctx.identity.set_name.clone()],
            "parsed": {"replication": {"replSet": ctx.identity.set_name.clone()}},
        },
        "getLog" => doc! {"totalLinesWritten": 0, "log": []},
        "connectionStatus" => doc! {
            "authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}
        },
        "endSessions"
        | "refreshSessions"
        | "killSessions"
        | "killAllSessions"
        | "killAllSessionsByPattern" => Document::new(),
        "killCursors" => kill_cursors(ctx, &command)?,
        "getMore" => return get_more(ctx, &command).await,
        other if admin::is_admin_command(other) => run_admin(ctx, db, other, &command)?,
        other => {
            if !ctx.faults.is_primary() {
                return Err(not_writable_primary(&command));
            }
            return match other {
                "find" if db == "local" && command.get_str("find").ok() == Some("oplog.rs") => {
                    find_oplog(ctx, &command)
                }
                "aggregate" if change_stream_stage(&command).is_some() => {
                    open_change_stream(ctx, db, &command)
                }
                _ => engine_command(ctx, db, &command),
            };
        }
    };
    Ok(Response::Document(reply))
}

fn hello(ctx: &ServerContext, connection_id: i64, name: &str, command: &Document) -> Document {
    let state = HelloState {
        primary: ctx.faults.is_primary(),
        term: ctx.faults.term(),
        connection_id,
        legacy: name != "hello",
        hello_ok: command.get_bool("helloOk").unwrap_or(false),
        last_write: ctx.engine.last_optime(),
    };
    handshake::hello_reply(&ctx.identity, &state)
}

fn build_info(ctx: &ServerContext) -> Document {
    let version = ctx.identity.version.version_string();
    let mut version_array: Vec<i32> = version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    version_array.push(0);
    doc! {
        "version": version,
        "gitVersion": "mongo-sim",
        "versionArray": version_array,
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": handshake::MAX_BSON_OBJECT_SIZE,
        "storageEngines": ["inMemory"],
        "modules": [],
        "javascriptEngine": "none",
        "openssl": {"running": "disabled"},
    }
}

fn feature_compatibility_version(ctx: &ServerContext) -> String {
    let version = ctx.identity.version.version_string();
    version
        .rsplit_once('.')
        .map_or(version, |(major_minor, _)| major_minor)
        .to_owned()
}

fn get_parameter(ctx: &ServerContext) -> Document {
    doc! {"featureCompatibilityVersion": {"version": feature_compatibility_version(ctx)}}
}

fn server_status(ctx: &ServerContext) -> Document {
    let uptime = ctx.started.elapsed();
    doc! {
        "host": ctx.identity.host.clone(),
        "version": ctx.identity.version.version_string(),
        "process": "mongod",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64(),
        "uptimeMillis": uptime.as_millis() as i64,
        "localTime": DateTime::now(),
        "connections": {
            "current": ctx.open_connections(),
            "totalCreated": ctx.connections_created(),
        },
        "repl": {
            "setName": ctx.identity.set_name.clone(),
            "isWritablePrimary": ctx.faults.is_primary(),
            "secondary": !ctx.faults.is_primary(),
            "hosts": [ctx.identity.host.clone()],
            "me": ctx.identity.host.clone(),
        },
        "storageEngine": {"name": "inMemory"},
        "metrics": {"cursor": {"open": {"total": ctx.cursors.len() as i64}}},
    }
}

fn repl_set_status(ctx: &ServerContext) -> Document {
    let primary = ctx.faults.is_primary();
    let optime = ctx.engine.last_optime();
    doc! {
        "set": ctx.identity.set_name.clone(),
        "date": DateTime::now(),
        "myState": if primary { 1 } else { 2 },
        "term": ctx.faults.term() as i64,
        "members": [{
            "_id": 0,
            "name": ctx.identity.host.clone(),
            "health": 1.0,
            "state": if primary { 1 } else { 2 },
            "stateStr": if primary { "PRIMARY" } else { "SECONDARY" },
            "uptime": ctx.started.elapsed().as_secs() as i64,
            "optime": {"ts": optime, "t": ctx.faults.term() as i64},
            "optimeDate": DateTime::from_millis(optime.time as i64 * 1000),
            "self": true,
        }],
    }
}

fn kill_cursors(ctx: &ServerContext, command: &Document) -> Result<Document, CommandError> {
    let ids = command
        .get_array("cursors")
        .map_err(|_| bad_value("killCursors needs a cursors array"))?;
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in ids.iter().filter_map(as_i64) {
        if ctx.cursors.remove(id) {
            killed.push(Bson::Int64(id));
        } else {
            not_found.push(Bson::Int64(id));
        }
    }
    Ok(doc! {
        "cursorsKilled": killed,
        "cursorsNotFound": not_found,
        "cursorsAlive": [],
        "cursorsUnknown": [],
    })
}

fn run_admin(
    ctx: &ServerContext,
    db: &str,
    name: &str,
    command: &Document,
) -> Result<Document, CommandError> {
    if db != "admin" {
        return Err(error(
            13,
            "Unauthorized",
            format!("{name} may only be run against the admin database"),
        ));
    }
    let reply = match admin::parse(name, command)? {
        AdminCommand::Fault(action) => {
            let faults = &ctx.faults;
            match action {
                FaultAction::StepDown(d) => faults.step_down(d),
                FaultAction::CloseConnections => faults.close_connections(),
                FaultAction::RefuseConnections(d) => faults.refuse_connections(d),
                FaultAction::Latency(d) => faults.set_latency(d),
                FaultAction::Pause(d) => faults.pause(d),
                FaultAction::TruncateOplog { keep } => faults.truncate_oplog(keep),
                FaultAction::Clear => faults.clear(),
            }
            Document::new()
        }
        AdminCommand::OplogCapacity(bytes) => {
            ctx.engine.set_oplog_capacity(bytes);
            Document::new()
        }
        AdminCommand::AppendOplog(entries) => {
            let stamps: Vec<Bson> = entries
                .into_iter()
                .map(|entry| Bson::Timestamp(ctx.engine.append_oplog_entry(entry)))
                .collect();
            doc! {"ts": stamps}
        }
        AdminCommand::Counters { reset } => {
            let snapshot = ctx.counters.snapshot();
            if reset {
                ctx.counters.reset();
            }
            snapshot.to_document()
        }
    };
    Ok(reply)
}

/// Reads a batch size that must be a non-negative integer.
fn batch_size(value: Option<&Bson>, default: usize) -> Result<usize, CommandError> {
    match value {
        None => Ok(default),
        Some(v) => match as_i64(v) {
            Some(n) if n >= 0 => Ok(n as usize),
            _ => Err(bad_value("batchSize must be a non-negative integer")),
        },
    }
}

/// Serves the first batch of a new cursor and keeps the cursor if more may come.
fn first_batch(
    ctx: &ServerContext,
    mut cursor: OpenCursor,
    limit: usize,
    single_batch: bool,
) -> Result<Response, CommandError> {
    // The engine reads "no limit" for 0, so an empty first batch is made
    // here. A change stream still reads one event, because only a read
    // yields the postBatchResumeToken every reply must carry.
    let limit = match (&cursor.source, limit) {
        (CursorSource::ChangeStream(_), 0) => 1,
        _ => limit,
    };
    let Fetched {
        documents,
        exhausted,
        post_batch_resume_token,
    } = if limit == 0 {
        Fetched::default()
    } else {
        cursor.fetch(&ctx.engine, limit)?
    };
    let ns = cursor.ns.clone();
    let kind = cursor.kind;
    let id = if exhausted || single_batch {
        0
    } else {
        ctx.cursors.register(cursor)
    };
    Ok(Response::Cursor(CursorBatch {
        id,
        ns,
        first: true,
        documents,
        post_batch_resume_token,
        kind,
    }))
}

fn engine_command(
    ctx: &ServerContext,
    db: &str,
    command: &Document,
) -> Result<Response, CommandError> {
    match ctx.engine.run_command(db, command)? {
        CommandReply::Document(reply) => Ok(Response::Document(reply)),
        CommandReply::Cursor { ns, documents } => {
            let requested = if command_name(command) == "find" {
                command.get("batchSize")
            } else {
                command
                    .get_document("cursor")
                    .ok()
                    .and_then(|c| c.get("batchSize"))
            };
            let limit = batch_size(requested, DEFAULT_FIRST_BATCH)?;
            let cursor = OpenCursor {
                ns,
                kind: CursorKind::Other,
                source: CursorSource::Batch(VecDeque::from(documents)),
            };
            let single = command.get_bool("singleBatch").unwrap_or(false);
            first_batch(ctx, cursor, limit, single)
        }
    }
}

/// Whether the oplog is read newest first (`sort: {$natural: -1}`, the usual
/// way to find the latest entry).
fn reverse_natural_order(command: &Document) -> Result<bool, CommandError> {
    let Ok(sort) = command.get_document("sort") else {
        return Ok(false);
    };
    match sort.iter().next() {
        None => Ok(false),
        Some((key, value)) if sort.len() == 1 && (key == "$natural" || key == "ts") => {
            match as_i64(value) {
                Some(1) => Ok(false),
                Some(-1) => Ok(true),
                _ => Err(bad_value("sort direction must be 1 or -1")),
            }
        }
        Some(_) => Err(bad_value(
            "mongo-sim sorts local.oplog.rs only by $natural or ts",
        )),
    }
}

fn find_oplog(ctx: &ServerContext, command: &Document) -> Result<Response, CommandError> {
    let filter_doc = command.get_document("filter").cloned().unwrap_or_default();
    let filter = OplogFilter::parse(&filter_doc)?;
    let tailable = command.get_bool("tailable").unwrap_or(false);
    let await_data = tailable && command.get_bool("awaitData").unwrap_or(false);
    let limit = batch_size(command.get("batchSize"), DEFAULT_FIRST_BATCH)?;
    let single = command.get_bool("singleBatch").unwrap_or(false);
    let pos = ctx.engine.oplog_cursor_start(&filter);
    let ns = "local.oplog.rs".to_owned();
    let source = if tailable {
        CursorSource::Oplog {
            filter,
            pos,
            await_data,
        }
    } else {
        let reverse = reverse_natural_order(command)?;
        let skip = command.get("skip").and_then(as_i64).unwrap_or(0).max(0) as usize;
        let max = match command.get("limit").and_then(as_i64) {
            Some(n) if n != 0 => Some(n.unsigned_abs() as usize),
            _ => None,
        };
        let read_limit = match (reverse, max) {
            (false, Some(n)) => n.saturating_add(skip),
            _ => usize::MAX,
        };
        let mut entries = ctx.engine.read_oplog(pos, &filter, read_limit)?.entries;
        if reverse {
            entries.reverse();
        }
        let entries: VecDeque<Document> = entries
            .into_iter()
            .skip(skip)
            .take(max.unwrap_or(usize::MAX))
            .collect();
        CursorSource::Batch(entries)
    };
    let cursor = OpenCursor {
        ns,
        kind: CursorKind::OplogTail,
        source,
    };
    first_batch(ctx, cursor, limit, single)
}

/// The `$changeStream` stage if the pipeline starts with one.
fn change_stream_stage(command: &Document) -> Option<&Document> {
    command
        .get_array("pipeline")
        .ok()?
        .first()?
        .as_document()?
        .get_document("$changeStream")
        .ok()
}

fn open_change_stream(
    ctx: &ServerContext,
    db: &str,
    command: &Document,
) -> Result<Response, CommandError> {
    let stage = change_stream_stage(command)
        .cloned()
        .ok_or_else(|| bad_value("$changeStream must be the first stage"))?;
    let all_changes = stage.get_bool("allChangesForCluster").unwrap_or(false);
    let (scope, ns) = match command.get("aggregate") {
        Some(Bson::String(collection)) if !all_changes => {
            let ns = format!("{db}.{collection}");
            (Some(ns.clone()), ns)
        }
        _ if all_changes => {
            if db != "admin" {
                return Err(bad_value(
                    "allChangesForCluster is only allowed on the admin database",
                ));
            }
            (None, "admin.$cmd.aggregate".to_owned())
        }
        _ if db == "admin" => {
            return Err(bad_value(
                "a database change stream on admin needs allChangesForCluster: true",
            ));
        }
        _ => (Some(db.to_owned()), format!("{db}.$cmd.aggregate")),
    };
    let rest: Vec<Document> = command
        .get_array("pipeline")
        .map(|stages| {
            stages
                .iter()
                .skip(1)
                .filter_map(|s| s.as_document().cloned())
                .collect()
        })
        .unwrap_or_default();
    let spec = ChangeStreamSpec { scope, stage, rest };
    let stream = ctx.engine.open_change_stream(spec)?;
    let limit = batch_size(
        command
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get("batchSize")),
        DEFAULT_FIRST_BATCH,
    )?;
    let cursor = OpenCursor {
        ns,
        kind: CursorKind::ChangeStream,
        source: CursorSource::ChangeStream(Box::new(stream)),
    };
    first_batch(ctx, cursor, limit, false)
}

async fn get_more(ctx: &ServerContext, command: &Document) -> Result<Response, CommandError> {
    let id = command
        .get("getMore")
        .and_then(as_i64)
        .ok_or_else(|| error(14, "TypeMismatch", "getMore takes a cursor id"))?;
    let handle = ctx
        .cursors
        .get(id)
        .ok_or_else(|| error(43, "CursorNotFound", format!("cursor id {id} not found")))?;
    // A second getMore on the same cursor waits for the first, rather than
    // racing it for the read position.
    let mut cursor = handle.lock().await;
    if cursor.follows_oplog() && !ctx.faults.is_primary() {
        return Err(interrupted_by_step_down());
    }
    let limit = match batch_size(command.get("batchSize"), 0)? {
        0 => DEFAULT_GET_MORE_BATCH,
        n => n,
    };
    let outcome = if cursor.awaits_data() {
        let wait = match command.get("maxTimeMS").and_then(as_i64) {
            Some(ms) if ms > 0 => Duration::from_millis(ms as u64),
            _ => DEFAULT_AWAIT,
        };
        await_batch(ctx, &mut cursor, limit, wait).await
    } else {
        cursor.fetch(&ctx.engine, limit)
    };
    let fetched = match outcome {
        Ok(fetched) => fetched,
        Err(err) => {
            // A step-down interrupts the wait but leaves the cursor usable,
            // as on a real server; any other failure (136
            // CappedPositionLost, ...) kills it.
            if err.code != 11602 {
                ctx.cursors.remove(id);
            }
            return Err(err);
        }
    };
    if fetched.exhausted {
        ctx.cursors.remove(id);
    }
    Ok(Response::Cursor(CursorBatch {
        id: if fetched.exhausted { 0 } else { id },
        ns: cursor.ns.clone(),
        first: false,
        documents: fetched.documents,
        post_batch_resume_token: fetched.post_batch_resume_token,
        kind: cursor.kind,
    }))
}

/// Reads a batch, waiting up to `wait` for the oplog to grow while it is
/// empty; a step-down during the wait interrupts it.
async fn await_batch(
    ctx: &ServerContext,
    cursor: &mut OpenCursor,
    limit: usize,
    wait: Duration,
) -> Result<Fetched, CommandError> {
    let deadline = Instant::now() + wait;
    let mut appended = ctx.engine.oplog_watch();
    let mut state_changes = ctx.faults.state_change_signal();
    state_changes.borrow_and_update();
    loop {
        if !ctx.faults.is_primary() {
            return Err(interrupted_by_step_down());
        }
        // Mark the current oplog version seen before reading, so an append
        // racing with the read still wakes the wait below.
        appended.borrow_and_update();
        let fetched = cursor.fetch(&ctx.engine, limit)?;
        if !fetched.documents.is_empty() || fetched.exhausted || Instant::now() >= deadline {
            return Ok(fetched);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(fetched),
            changed = appended.changed() => {
                if changed.is_err() {
                    // The engine is gone; nothing more will arrive.
                    tokio::time::sleep_until(deadline).await;
                    return Ok(fetched);
                }
            }
            _ = state_changes.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oplog_sort_orders() {
        let cases = [
            (doc! {}, Ok(false)),
            (doc! {"sort": {"$natural": 1}}, Ok(false)),
            (doc! {"sort": {"$natural": -1}}, Ok(true)),
            (doc! {"sort": {"ts": -1_i64}}, Ok(true)),
            (doc! {"sort": {}}, Ok(false)),
            (doc! {"sort": {"ns": 1}}, Err(2)),
            (doc! {"sort": {"$natural": 2}}, Err(2)),
        ];
        for (command, expected) in cases {
            let got = reverse_natural_order(&command).map_err(|e| e.code);
            assert_eq!(got, expected, "{command}");
        }
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size(None, 101).unwrap(), 101);
        assert_eq!(batch_size(Some(&Bson::Int32(0)), 101).unwrap(), 0);
        assert_eq!(batch_size(Some(&Bson::Int64(7)), 101).unwrap(), 7);
        assert_eq!(batch_size(Some(&Bson::Int32(-1)), 101).unwrap_err().code, 2);
        assert_eq!(
            batch_size(Some(&Bson::Boolean(true)), 101)
                .unwrap_err()
                .code,
            2
        );
    }

    #[test]
    fn step_down_errors_carry_the_labels_drivers_act_on() {
        let write = not_writable_primary(&doc! {"insert": "c", "txnNumber": 1_i64});
        assert_eq!(write.code, 10107);
        assert_eq!(write.labels, vec!["RetryableWriteError".to_owned()]);
        let in_txn =
            not_writable_primary(&doc! {"insert": "c", "txnNumber": 1_i64, "autocommit": false});
        assert!(in_txn.labels.is_empty());
        let read = not_writable_primary(&doc! {"find": "c"});
        assert!(read.labels.is_empty());
        let interrupted = interrupted_by_step_down();
        assert_eq!(interrupted.code, 11602);
        assert_eq!(
            interrupted.labels,
            vec!["ResumableChangeStreamError".to_owned()]
        );
    }

    #[test]
    fn command_names() {
        assert_eq!(command_name(&doc! {"find": "c", "filter": {}}), "find");
        assert_eq!(command_name(&doc! {}), "");
    }
}
