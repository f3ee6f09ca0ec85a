//! The running simulator: a TCP listener on 127.0.0.1, one task per
//! connection, and the handle tests hold to inspect and disturb it.
//!
//! The server runs on its own small Tokio runtime. That keeps it usable from
//! plain `#[test]` functions as well as from async tests, and keeps a test's
//! single-threaded runtime from starving the server it talks to.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bson::Document;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::commands;
use crate::counters::Counters;
use crate::cursors::CursorRegistry;
use crate::engine::{CommandError, Engine, EngineConfig, MongoVersion};
use crate::faults::Faults;
use crate::handshake::Identity;
use crate::reply;
use crate::wire::{self, Request};

/// How to start a simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Which MongoDB release to imitate (wire version, oplog format).
    pub version: MongoVersion,
    /// The replica-set name (`setName`, `replicaSet=` in the URL).
    pub repl_set: String,
    /// Capacity of `local.oplog.rs` in MiB.
    pub oplog_size_mb: usize,
    /// TCP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Operations per `applyOps` entry above which a transaction is split
    /// into `partialTxn` chunks (a real server splits at 16 MB).
    pub txn_chunk_ops: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            version: MongoVersion::V7_0,
            repl_set: "rs0".to_owned(),
            oplog_size_mb: 64,
            port: 0,
            txn_chunk_ops: 1_000_000,
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The port is taken or not allowed.
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// The server's runtime could not be created.
    #[error("starting the server runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// State shared by the accept loop and every connection task.
pub(crate) struct ServerContext {
    pub engine: Arc<Engine>,
    pub faults: Faults,
    pub counters: Arc<Counters>,
    pub cursors: CursorRegistry,
    pub identity: Identity,
    pub started: Instant,
    /// `MONGO_SIM_DEBUG` was set: print every request and outcome to stderr.
    debug: bool,
    connections_created: AtomicI64,
    connections_open: AtomicI64,
    next_reply_id: AtomicI32,
}

impl ServerContext {
    pub fn open_connections(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    pub fn connections_created(&self) -> i64 {
        self.connections_created.load(Ordering::Relaxed)
    }
}

/// A running simulator. Dropping it (or calling `shutdown`) stops the server.
pub struct MongoSim {
    ctx: Arc<ServerContext>,
    port: u16,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl MongoSim {
    /// Binds the port and starts serving. When this returns, connections are
    /// accepted (the listening socket exists; the accept loop picks them up).
    /// Works from sync and async code alike: it never blocks on the runtime.
    pub fn start(options: SimOptions) -> Result<MongoSim, SimError> {
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", options.port)).map_err(|source| {
                SimError::Bind {
                    port: options.port,
                    source,
                }
            })?;
        let bind_error = |source| SimError::Bind {
            port: options.port,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();

        let engine = Engine::new(EngineConfig {
            version: options.version,
            oplog_capacity_bytes: options.oplog_size_mb.max(1) * 1024 * 1024,
            txn_chunk_ops: options.txn_chunk_ops.max(1),
        });
        let ctx = Arc::new(ServerContext {
            faults: Faults::new(engine.clone()),
            engine,
            counters: Arc::new(Counters::default()),
            cursors: CursorRegistry::new(),
            identity: Identity {
                set_name: options.repl_set.clone(),
                host: format!("127.0.0.1:{port}"),
                version: options.version,
            },
            started: Instant::now(),
            debug: std::env::var_os("MONGO_SIM_DEBUG").is_some(),
            connections_created: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            next_reply_id: AtomicI32::new(1),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mongo-sim")
            .enable_all()
            .build()
            .map_err(SimError::Runtime)?;
        let (stop, stop_rx) = watch::channel(false);
        runtime.spawn(accept_loop(listener, ctx.clone(), stop_rx));
        Ok(MongoSim {
            ctx,
            port,
            stop,
            runtime: Some(runtime),
        })
    }

    /// The port the server listens on (useful after asking for port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the one member of the replica set.
    pub fn host(&self) -> String {
        self.ctx.identity.host.clone()
    }

    /// `mongodb://127.0.0.1:<port>/?replicaSet=<name>`: clients discover a
    /// one-member replica set.
    pub fn url(&self) -> String {
        format!(
            "mongodb://{}/?replicaSet={}",
            self.ctx.identity.host, self.ctx.identity.set_name
        )
    }

    /// `mongodb://127.0.0.1:<port>/?directConnection=true`: clients talk to
    /// this server whatever its state.
    pub fn direct_url(&self) -> String {
        format!(
            "mongodb://{}/?directConnection=true",
            self.ctx.identity.host
        )
    }

    /// The storage engine, for direct inspection and raw oplog appends.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.ctx.engine
    }

    /// The fault-injection handle (cloneable, usable from any thread).
    pub fn faults(&self) -> &Faults {
        &self.ctx.faults
    }

    /// The traffic counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.ctx.counters
    }

    /// Runs a command in-process as if a client on `db` had sent it, with no
    /// network involved, and returns the whole reply (with `ok`). Handy for
    /// seeding data from sync test code. Blocks the calling thread until the
    /// command is done, so don't use it for a waiting `getMore`.
    pub fn run_command(&self, db: &str, command: Document) -> Document {
        let ctx = self.ctx.clone();
        let db = db.to_owned();
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        // The reply comes back over a plain channel, so a sync caller (or an
        // async test on another runtime) can wait for it.
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let outcome = commands::execute(&ctx, 0, &db, command).await;
            let (body, _) = reply::render(outcome, ctx.engine.last_optime());
            let _ = tx.send(Document::try_from(body).unwrap_or_default());
        });
        rx.recv().unwrap_or_else(|_| {
            reply::error_document(&CommandError {
                code: 1,
                code_name: "InternalError",
                message: "the command panicked".into(),
                labels: Vec::new(),
            })
        })
    }

    /// Stops accepting, closes every connection and stops the runtime.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        self.ctx.faults.close_connections();
        if let Some(runtime) = self.runtime.take() {
            // shutdown_background never blocks, so this is safe in async code.
            runtime.shutdown_background();
        }
    }
}

impl Drop for MongoSim {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn accept_loop(
    listener: std::net::TcpListener,
    ctx: Arc<ServerContext>,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "mongo-sim cannot listen");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Usually out of file descriptors; back off instead of spinning.
                tracing::warn!(error = %e, "mongo-sim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ctx.faults.refusing_connections() {
            drop(stream);
            continue;
        }
        let id = ctx.connections_created.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(serve_connection(ctx.clone(), stream, id));
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection<'a>(&'a ServerContext);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(ctx: Arc<ServerContext>, stream: TcpStream, connection_id: i64) {
    ctx.connections_open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenConnection(&ctx);
    let _ = stream.set_nodelay(true);
    let mut close = ctx.faults.close_signal();
    close.borrow_and_update();
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read_half);
    loop {
        let request = tokio::select! {
            biased;
            _ = close.changed() => return,
            request = wire::read_request(&mut reader) => request,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(connection_id, error = %e, "closing connection");
                return;
            }
        };
        // The request is answered first when it completes together with a
        // close signal (e.g. the `closeConnections` command itself).
        let reply = tokio::select! {
            biased;
            reply = handle_request(&ctx, connection_id, request) => reply,
            _ = close.changed() => return,
        };
        if let Some(bytes) = reply
            && write_half.write_all(&bytes).await.is_err()
        {
            return;
        }
    }
}

/// Runs one request through pause, command, latency and framing; `None`
/// when the client asked for no reply.
async fn handle_request(
    ctx: &ServerContext,
    connection_id: i64,
    request: Request,
) -> Option<Vec<u8>> {
    while let Some(until) = ctx.faults.paused_until() {
        tokio::time::sleep_until(until.into()).await;
    }
    let request_id = request.request_id();
    if ctx.debug {
        eprintln!("[mongo-sim] conn {connection_id} <- {request:?}");
    }
    let (outcome, legacy, reply_expected) = match request {
        Request::Msg {
            more_to_come,
            command,
            ..
        } => {
            let outcome = match command.get_str("$db") {
                Ok(db) => {
                    let db = db.to_owned();
                    commands::execute(ctx, connection_id, &db, command).await
                }
                Err(_) => Err(CommandError {
                    code: 40571,
                    code_name: "Location40571",
                    message: "OP_MSG requests require a $db argument".into(),
                    labels: Vec::new(),
                }),
            };
            (outcome, false, !more_to_come)
        }
        Request::Query {
            collection,
            command,
            ..
        } => {
            let outcome = match collection.strip_suffix(".$cmd") {
                Some(db) => commands::execute(ctx, connection_id, db, command).await,
                None => Err(CommandError {
                    code: 352,
                    code_name: "UnsupportedOpQueryCommand",
                    message: format!(
                        "OP_QUERY is only supported for commands, not on {collection}"
                    ),
                    labels: Vec::new(),
                }),
            };
            (outcome, true, true)
        }
    };
    if ctx.debug {
        eprintln!("[mongo-sim] conn {connection_id} -> {outcome:?}");
    }
    let latency = ctx.faults.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (body, returned) = reply::render(outcome, ctx.engine.last_optime());
    if let Some(r) = returned {
        ctx.counters.count_returned(r.kind, r.documents, r.bytes);
    }
    if !reply_expected {
        return None;
    }
    let reply_id = ctx.next_reply_id.fetch_add(1, Ordering::Relaxed);
    let bytes = body.as_bytes();
    Some(if legacy {
        wire::encode_op_reply(reply_id, request_id, bytes)
    } else {
        wire::encode_op_msg(reply_id, request_id, bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_across_tasks() {
        fn shareable<T: Send + Sync>() {}
        shareable::<MongoSim>();
        shareable::<Faults>();
        shareable::<Arc<Counters>>();
    }

    #[test]
    fn urls_name_the_bound_port() {
        let sim = MongoSim::start(SimOptions {
            repl_set: "setA".into(),
            ..SimOptions::default()
        })
        .unwrap();
        let port = sim.port();
        assert_ne!(port, 0);
        assert_eq!(sim.host(), format!("127.0.0.1:{port}"));
        assert_eq!(
            sim.url(),
            format!("mongodb://127.0.0.1:{port}/?replicaSet=setA")
        );
        assert_eq!(
            sim.direct_url(),
            format!("mongodb://127.0.0.1:{port}/?directConnection=true")
        );
        // The same port cannot be bound twice.
        let taken = MongoSim::start(SimOptions {
            port,
            ..SimOptions::default()
        });
        assert!(matches!(taken, Err(SimError::Bind { .. })));
    }
}
