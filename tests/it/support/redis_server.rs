//! A real `redis-server` per test, on a free loopback port, that the test can
//! stop, restart, pause and resume (the workspace's `redis-test-server`), plus
//! a pub/sub [`Subscriber`] that records what Redis delivers.
//!
//! Everything waits with a bound: a server that does not come up, or messages
//! that do not arrive, fail the test with a message instead of hanging it.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How to start a server: the shared harness's options (password, TLS,
/// Sentinel, extra arguments) under the name these tests use.
pub use redis_test_server::RedisServerOptions as RedisOptions;

/// A running `redis-server`, killed on drop: the shared harness's server plus
/// the synchronous `redis` helpers (commands, keys, commandstats) tests assert with.
pub struct RedisServer {
    inner: redis_test_server::RedisServer,
}

impl RedisServer {
    /// A plain server with no persistence.
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// A server configured by `options`, retrying on a port collision.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let inner = redis_test_server::RedisServer::start_with(options)?;
        Ok(Self { inner })
    }

    /// The plain-TCP port.
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// The TLS port, when started with [`RedisOptions::tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.inner.tls_port()
    }

    /// `redis://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.inner.url()
    }

    /// Kills the server (SIGKILL): its data is gone, as after a crash.
    pub fn stop(&mut self) {
        self.inner.stop();
    }

    /// Starts the server again on the same port(s).
    pub fn restart(&mut self) -> Result<()> {
        Ok(self.inner.restart()?)
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) -> Result<()> {
        Ok(self.inner.pause()?)
    }

    /// Unfreezes a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        Ok(self.inner.resume()?)
    }

    /// A synchronous connection (authenticated when the server has a password).
    pub fn connection(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_connection_with_timeout(Duration::from_secs(5))?)
    }

    /// Runs one command, e.g. `server.command(&["INFO", "commandstats"])`.
    pub fn command<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        Ok(command.query(&mut self.connection()?)?)
    }

    /// `GET key`.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        self.command(&["GET", key])
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self.command(&["KEYS", pattern])?;
        keys.sort();
        Ok(keys)
    }

    /// How many times Redis ran `command` (from `INFO commandstats`), e.g. `evalsha`.
    pub fn calls_of(&self, command: &str) -> Result<u64> {
        let info: String = self.command(&["INFO", "commandstats"])?;
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(Ok(0), str::parse)?)
    }
}

/// A pub/sub connection that records every `(channel, message)` it receives.
pub struct Subscriber {
    stream: TcpStream,
    received: Arc<Mutex<Vec<(String, String)>>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Subscriber {
    /// `PSUBSCRIBE *` on `server`: hears every channel.
    pub fn all(server: &RedisServer) -> Result<Self> {
        Self::connect(server, "PSUBSCRIBE", &["*"])
    }

    /// `SUBSCRIBE` to the given channels.
    pub fn channels(server: &RedisServer, channels: &[&str]) -> Result<Self> {
        Self::connect(server, "SUBSCRIBE", channels)
    }

    fn connect(server: &RedisServer, verb: &str, names: &[&str]) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", server.port()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream.try_clone()?;
        if let Some(password) = &server.inner.options().password {
            writer.write_all(&encode(&["AUTH", password]))?;
            let reply = read_value(&mut reader)?;
            anyhow::ensure!(reply == Resp::Simple("OK".into()), "AUTH failed: {reply:?}");
        }
        let mut request = vec![verb];
        request.extend_from_slice(names);
        writer.write_all(&encode(&request))?;
        // One confirmation per name: after them, nothing published is missed.
        for _ in names {
            read_value(&mut reader)?;
        }
        stream.set_read_timeout(None)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&received);
        let handle = thread::spawn(move || {
            while let Ok(Resp::Array(items)) = read_value(&mut reader) {
                let texts: Vec<String> = items
                    .into_iter()
                    .map(|item| match item {
                        Resp::Bulk(text) | Resp::Simple(text) => text,
                        other => format!("{other:?}"),
                    })
                    .collect();
                match texts.as_slice() {
                    [kind, channel, message] if kind == "message" => {
                        sink.lock()
                            .unwrap()
                            .push((channel.clone(), message.clone()));
                    }
                    [kind, _pattern, channel, message] if kind == "pmessage" => {
                        sink.lock()
                            .unwrap()
                            .push((channel.clone(), message.clone()));
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            stream,
            received,
            reader: Some(handle),
        })
    }

    /// Everything received so far, in arrival order.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `count` messages arrived, or `timeout`; returns
    /// what arrived either way (the caller asserts on it).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count || Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until no message arrived for `quiet` (bounded by `timeout`), and
    /// returns everything: to check that nothing *more* arrives.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + timeout;
        let mut seen = self.messages().len();
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.messages().len();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
        self.messages()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// The RESP2 replies a subscriber meets.
#[derive(Debug, PartialEq, Eq)]
enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(String),
    Nil,
    Array(Vec<Resp>),
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn read_value(reader: &mut impl BufRead) -> Result<Resp> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("connection closed");
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Integer(rest.parse()?),
        "$" => {
            let len: i64 = rest.parse()?;
            if len < 0 {
                Resp::Nil
            } else {
                let mut bytes = vec![0; len as usize + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len as usize);
                Resp::Bulk(String::from_utf8(bytes)?)
            }
        }
        "*" => {
            let len: i64 = rest.parse()?;
            let mut items = Vec::new();
            for _ in 0..len.max(0) {
                items.push(read_value(reader)?);
            }
            Resp::Array(items)
        }
        other => bail!("unexpected RESP type {other:?}"),
    })
}

/// A throwaway CA and a server certificate it signed, valid for 127.0.0.1 and
/// `localhost`, made with the `openssl` command line.
pub struct TestCertificates {
    /// The CA certificate (PEM): what a client must trust.
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Generates the CA and the server certificate in a temp dir.
    pub fn generate() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(
            path("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )?;
        let steps: [&[&str]; 3] = [
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
                "ca.pem",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
            ],
        ];
        let tails: [&[&str]; 3] = [
            &["-days", "2", "-subj", "/CN=redtail test CA"],
            &["-subj", "/CN=localhost"],
            &[
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        ];
        for (step, tail) in steps.iter().zip(tails) {
            let output = Command::new("openssl")
                .args(*step)
                .args(tail)
                .current_dir(dir.path())
                .output()
                .context("running openssl")?;
            anyhow::ensure!(
                output.status.success(),
                "openssl {step:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(Self {
            ca: path("ca.pem"),
            cert: path("server.pem"),
            key: path("server.key"),
            _dir: dir,
        })
    }
}
