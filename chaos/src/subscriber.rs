//! Hears every PUBLISH: `PSUBSCRIBE *` on a raw connection straight to
//! redis-server (never through a proxy), each message timestamped on arrival.
//!
//! A raw RESP reader rather than a client library, so nothing buffers or
//! reorders between the socket and the timestamp. After a Redis restart it
//! reconnects at once (every 10 ms), so it is listening again before redtail,
//! whose reconnects back off, can publish to the new server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One message as heard.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When it arrived.
    pub at: Instant,
    /// The channel it was published on.
    pub channel: String,
    /// The payload.
    pub payload: String,
}

/// The recording subscriber.
pub struct Subscriber {
    heard: Arc<Mutex<Vec<Delivery>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Most frames read on one connection (a scenario hears well under a million).
const MAX_FRAMES: usize = 50_000_000;

/// Most reconnects over a subscriber's life (10 ms apart: ~10 minutes).
const MAX_RECONNECTS: usize = 60_000;

impl Subscriber {
    /// Subscribes to everything on `127.0.0.1:port` and waits until the
    /// subscription is confirmed.
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = watch::channel(false);
        let (ready_tx, mut ready) = watch::channel(false);
        let task = tokio::spawn(listen(port, heard.clone(), stopped, ready_tx));
        tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r))
            .await
            .map_err(|_| anyhow::anyhow!("PSUBSCRIBE was not confirmed within 5s"))??;
        Ok(Self { heard, stop, task })
    }

    /// Everything heard so far.
    pub fn snapshot(&self) -> Vec<Delivery> {
        self.heard.lock().expect("subscriber lock").clone()
    }

    /// How many messages were heard so far.
    pub fn count(&self) -> usize {
        self.heard.lock().expect("subscriber lock").len()
    }

    /// The deliveries from index `from` on.
    pub fn since(&self, from: usize) -> Vec<Delivery> {
        let heard = self.heard.lock().expect("subscriber lock");
        heard
            .get(from..)
            .map(<[Delivery]>::to_vec)
            .unwrap_or_default()
    }

    /// Stops listening.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

async fn listen(
    port: u16,
    heard: Arc<Mutex<Vec<Delivery>>>,
    mut stopped: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
) {
    for _ in 0..MAX_RECONNECTS {
        if *stopped.borrow() {
            return;
        }
        tokio::select! {
            _ = one_connection(port, &heard, &ready) => {}
            _ = stopped.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one connection until it fails.
async fn one_connection(
    port: u16,
    heard: &Mutex<Vec<Delivery>>,
    ready: &watch::Sender<bool>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$1\r\n*\r\n")
        .await?;
    for _ in 0..MAX_FRAMES {
        let frame = read_array(&mut stream).await?;
        let at = Instant::now();
        match frame.first().map(Vec::as_slice) {
            Some(b"psubscribe") => {
                let _ = ready.send(true);
            }
            Some(b"pmessage") if frame.len() == 4 => {
                heard.lock().expect("subscriber lock").push(Delivery {
                    at,
                    channel: String::from_utf8_lossy(&frame[2]).into_owned(),
                    payload: String::from_utf8_lossy(&frame[3]).into_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one push frame: an array of bulk strings or integers (all pub/sub
/// replies have that shape).
async fn read_array(stream: &mut BufReader<TcpStream>) -> std::io::Result<Vec<Vec<u8>>> {
    let header = read_line(stream).await?;
    let count: usize = header
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("expected an array"))?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let line = read_line(stream).await?;
        if let Some(len) = line.strip_prefix('$') {
            let len: usize = len.parse().map_err(|_| invalid("bad bulk length"))?;
            let mut item = vec![0u8; len + 2];
            stream.read_exact(&mut item).await?;
            item.truncate(len);
            items.push(item);
        } else if let Some(number) = line.strip_prefix(':') {
            items.push(number.as_bytes().to_vec());
        } else {
            return Err(invalid("unexpected item in a push frame"));
        }
    }
    Ok(items)
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if stream.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}
