//! The real `redtail` binary as a child process, the way operators run it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `redtail`, killed on drop. Its stderr/stdout go to a log file
/// that [`Redtail::logs`] reads, so failures can show what it said.
pub struct Redtail {
    child: Child,
    http_port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// How to start one.
pub struct RedtailOptions {
    /// `OTR_MONGO_URL`.
    pub mongo_url: String,
    /// `OTR_REDIS_URL`.
    pub redis_url: String,
    /// Extra environment variables (`OTR_*`).
    pub env: Vec<(String, String)>,
}

impl RedtailOptions {
    /// Defaults for tests: the two URLs, fast flushes.
    pub fn new(mongo_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            mongo_url: mongo_url.into(),
            redis_url: redis_url.into(),
            env: Vec::new(),
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_owned(), value.into()));
        self
    }
}

impl Redtail {
    /// Starts redtail and waits until `/readyz` says it is tailing.
    pub fn start(options: RedtailOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("redtail.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let http_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_redtail"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("OTR_MONGO_URL", &options.mongo_url)
            .env("OTR_REDIS_URL", &options.redis_url)
            .env("OTR_HTTP_SERVER_ADDR", format!("127.0.0.1:{http_port}"))
            .env("OTR_TIMESTAMP_FLUSH_INTERVAL", "100ms")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("redtail binary starts");
        let mut redtail = Self {
            child,
            http_port,
            log_path,
            _dir: dir,
        };
        redtail.wait_ready(Duration::from_secs(20));
        redtail
    }

    /// The HTTP base URL (`http://127.0.0.1:<port>`).
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Fetches a path from the HTTP server: (status, body).
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_request("GET", self.http_port, path)
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "redtail exited during start-up ({status}):\n{}",
                    self.logs()
                );
            }
            if let Some((200, _)) = self.http_get("/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redtail was not ready within {timeout:?}:\n{}", self.logs());
    }
}

impl Drop for Redtail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A minimal blocking HTTP/1.0 request, enough for the admin endpoints.
pub fn http_request(method: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
