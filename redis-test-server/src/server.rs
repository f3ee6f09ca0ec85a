//! One `redis-server` process: started on a free loopback port, stopped,
//! restarted empty on the same port, paused and resumed, killed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::RedisServerError;
use crate::{free_port, probe};

/// How long one start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports [`RedisServer::start_with`] tries: a port found free
/// can be taken by another process before redis-server binds it.
const PORT_ATTEMPTS: usize = 5;
/// How often readiness is checked while starting.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The pause between restart attempts while the old listener lets go of the port.
const RESTART_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// How to start a server. The default is a plain server with no password,
/// no TLS and no persistence, which is what most callers want.
#[derive(Debug, Clone, Default)]
pub struct RedisServerOptions {
    /// `requirepass` for the default user: tests of authenticated URLs need a
    /// server that refuses anonymous clients. [`RedisServer::url`] includes it.
    pub password: Option<String>,
    /// Also listen with TLS using this (certificate, key) pair, on a second
    /// free port ([`RedisServer::tls_port`]); clients are not asked for
    /// certificates, as in a typical managed Redis.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Run as a Sentinel with this configuration text (the `port` line is
    /// added), to test discovery of a master through Sentinel.
    pub sentinel_config: Option<String>,
    /// Further command-line arguments, appended last so they override the
    /// defaults (e.g. `--client-output-buffer-limit "pubsub 0 0 0"` for a
    /// benchmark subscriber that must never be disconnected).
    pub extra_args: Vec<String>,
    /// Start redis-server in a process group of its own, so a terminal's
    /// Ctrl-C reaches only the caller, which can then stop things in its own
    /// order (the demo lets redtail drain into Redis before stopping Redis).
    /// Off by default, so that interrupting a test run also ends its servers.
    pub own_process_group: bool,
}

/// A running `redis-server` on 127.0.0.1, without persistence, killed on drop.
///
/// No persistence means a restart really starts empty, as after a crash of a
/// cache-only Redis, and no fork or disk write disturbs a measurement.
pub struct RedisServer {
    options: RedisServerOptions,
    port: u16,
    tls_port: Option<u16>,
    /// Working directory, log file and Sentinel config: removed on drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a plain server (see [`RedisServerOptions::default`]).
    pub fn start() -> Result<Self, RedisServerError> {
        Self::start_with(RedisServerOptions::default())
    }

    /// Starts a server configured by `options` and waits until it answers
    /// `PING`, trying fresh ports when one turns out to be taken.
    pub fn start_with(options: RedisServerOptions) -> Result<Self, RedisServerError> {
        let dir = tempfile::tempdir().map_err(RedisServerError::TempDir)?;
        let mut server = Self {
            options,
            port: 0,
            tls_port: None,
            dir,
            child: None,
        };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port().map_err(RedisServerError::FreePort)?;
            server.tls_port = match server.options.tls {
                Some(_) => Some(free_port().map_err(RedisServerError::FreePort)?),
                None => None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e @ (RedisServerError::Exited { .. } | RedisServerError::NotReady { .. })) => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(RedisServerError::GaveUp {
            attempts: PORT_ATTEMPTS,
            last: Box::new(last.expect("PORT_ATTEMPTS is not zero")),
        })
    }

    /// The plain-TCP port, fixed for the server's life (also across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port, when started with [`RedisServerOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `redis://[:password@]127.0.0.1:<port>`, ready to hand to a client.
    pub fn url(&self) -> String {
        match &self.options.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The options it was started with, for helpers built on top (e.g. a
    /// subscriber that must authenticate with the same password).
    pub fn options(&self) -> &RedisServerOptions {
        &self.options
    }

    /// The process id, or `None` after [`RedisServer::stop`]: for callers that
    /// inspect or signal the process themselves.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and reaps it: its data is gone, as after a
    /// crash. Does nothing when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process is killed too, but continuing it first lets
            // it be reaped at once.
            let _ = send_signal(child.id(), "CONT");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts an empty one on the same port(s) with the
    /// same options, so clients see a crashed and recreated Redis at the
    /// address they already know. Retries (bounded) while the port is released.
    pub fn restart(&mut self) -> Result<(), RedisServerError> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(RedisServerError::Exited { .. } | RedisServerError::NotReady { .. }) => {
                    thread::sleep(RESTART_RETRY_INTERVAL);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing
    /// answers, like a Redis stuck in a long command or a network stall.
    pub fn pause(&self) -> Result<(), RedisServerError> {
        self.signal("STOP")
    }

    /// Unfreezes a paused server (SIGCONT); what was sent meanwhile is then
    /// processed.
    pub fn resume(&self) -> Result<(), RedisServerError> {
        self.signal("CONT")
    }

    fn signal(&self, signal: &'static str) -> Result<(), RedisServerError> {
        let pid = self.pid().ok_or(RedisServerError::NotRunning)?;
        send_signal(pid, signal).map_err(|source| RedisServerError::Signal {
            signal,
            pid,
            source,
        })
    }

    /// Runs redis-server on the current port(s) and waits until it is ready;
    /// on failure nothing is left running.
    fn spawn(&mut self) -> Result<(), RedisServerError> {
        let log = self.dir.path().join("redis.log");
        // A previous run's "ready" line must not count for this one.
        let _ = std::fs::remove_file(&log);
        let mut command = self.command(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(RedisServerError::Spawn)?;
        self.child = Some(child);
        let ready = self.wait_until_ready(&log);
        if ready.is_err() {
            self.stop();
        }
        ready
    }

    /// The command line: loopback only, no RDB or AOF, logging to the temp
    /// dir so a failed start can say why.
    fn command(&self, log: &Path) -> Result<Command, RedisServerError> {
        let mut command = Command::new("redis-server");
        if let Some(config) = &self.options.sentinel_config {
            let path = self.dir.path().join("sentinel.conf");
            std::fs::write(&path, format!("port {}\n{config}\n", self.port)).map_err(|source| {
                RedisServerError::SentinelConfig {
                    path: path.clone(),
                    source,
                }
            })?;
            command.arg(&path).arg("--sentinel");
        } else {
            command.args(["--port", &self.port.to_string()]).args([
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(log);
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        if let (Some((cert, key)), Some(tls_port)) = (&self.options.tls, self.tls_port) {
            command
                .args([
                    "--tls-port",
                    &tls_port.to_string(),
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key);
        }
        command.args(&self.options.extra_args);
        if self.options.own_process_group {
            command.process_group(0);
        }
        Ok(command)
    }

    /// Ready means our process logged that it accepts connections *and* the
    /// port answers `PING`: the log line rules out another server that
    /// grabbed the port first, the `PING` that the listener is really up.
    fn wait_until_ready(&mut self, log: &Path) -> Result<(), RedisServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let password = self.options.password.clone();
        while Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(RedisServerError::Exited {
                    port: self.port,
                    status,
                    log_tail: last_lines(&std::fs::read_to_string(log).unwrap_or_default()),
                });
            }
            if logged_ready(log) && probe::answers_ping(self.port, password.as_deref()) {
                return Ok(());
            }
            thread::sleep(POLL_INTERVAL);
        }
        Err(RedisServerError::NotReady {
            port: self.port,
            timeout: START_TIMEOUT,
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the log says the server (or Sentinel) finished starting.
fn logged_ready(log: &Path) -> bool {
    std::fs::read_to_string(log).is_ok_and(|text| {
        text.contains("Ready to accept connections") || text.contains("Sentinel ID is")
    })
}

/// `kill -<signal> <pid>`: std has no way to send SIGSTOP/SIGCONT, and the
/// `kill` utility is everywhere redis-server is.
fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill exited with {status}")))
    }
}

/// The last few log lines, joined on one line for an error message.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_at_most_five_in_order() {
        let cases = [
            ("", ""),
            ("a", "a"),
            ("1\n2\n3\n4\n5\n6\n7", "3 | 4 | 5 | 6 | 7"),
        ];
        for (text, expected) in cases {
            assert_eq!(last_lines(text), expected, "{text:?}");
        }
    }
}
