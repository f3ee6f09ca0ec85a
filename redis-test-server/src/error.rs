//! What can go wrong starting or controlling a test `redis-server`.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a [`RedisServer`](crate::RedisServer) could not be started or signalled.
///
/// Each variant names the step that failed (and the port), so a failing test
/// says "redis-server exited: Address already in use" rather than "error".
#[derive(Debug, thiserror::Error)]
pub enum RedisServerError {
    /// The per-server directory (working dir, log, Sentinel config) could not be made.
    #[error("could not create a temp dir for redis-server")]
    TempDir(#[source] io::Error),

    /// No free loopback port could be found.
    #[error("could not find a free loopback port")]
    FreePort(#[source] io::Error),

    /// The Sentinel configuration file could not be written.
    #[error("could not write the Sentinel config {}", path.display())]
    SentinelConfig {
        /// Where it was being written.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },

    /// The `redis-server` binary could not be run at all.
    #[error("could not spawn redis-server (is it installed?)")]
    Spawn(#[source] io::Error),

    /// `redis-server` started but exited before it was ready.
    #[error("redis-server on port {port} exited at start ({status}); log: {log_tail}")]
    Exited {
        /// The port it was told to listen on.
        port: u16,
        /// How it exited.
        status: ExitStatus,
        /// The last lines of its log, which usually say why.
        log_tail: String,
    },

    /// `redis-server` kept running but did not answer `PING` in time.
    #[error("redis-server on port {port} did not answer PING within {timeout:?}")]
    NotReady {
        /// The port it was told to listen on.
        port: u16,
        /// How long it was given.
        timeout: Duration,
    },

    /// Every start attempt failed; `last` is the final attempt's error.
    #[error("redis-server did not start in {attempts} attempts")]
    GaveUp {
        /// How many ports were tried.
        attempts: usize,
        /// Why the last attempt failed.
        #[source]
        last: Box<RedisServerError>,
    },

    /// A signal was asked for while no process is running (after `stop`).
    #[error("redis-server is not running")]
    NotRunning,

    /// Sending a signal with `kill` failed.
    #[error("could not send SIG{signal} to redis-server (pid {pid})")]
    Signal {
        /// The signal name, e.g. `STOP`.
        signal: &'static str,
        /// The process it was meant for.
        pid: u32,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
}
