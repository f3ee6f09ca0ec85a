//! A TCP fault proxy between one redtail and one server (Redis or Mongo).
//!
//! Why a proxy and not the server's own faults: the scenarios need to cut ONE
//! instance off while the others (and the suite's own observers) keep a
//! healthy path to the same server. Each redtail therefore connects through
//! its own proxies, which can drop every connection and refuse new ones
//! (`cut`), allow them again (`heal`), or delay every byte (`set_latency`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most connections one proxy accepts over its life.
const MAX_ACCEPTS: usize = 100_000;

/// How long a proxied connection may take to reach its target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running proxy on `127.0.0.1:<port>`; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    accept_task: JoinHandle<()>,
}

struct ProxyState {
    target: SocketAddr,
    cut: AtomicBool,
    latency_ms: AtomicU64,
    /// Bumped by `cut` so every open connection closes itself.
    generation: watch::Sender<u64>,
}

impl ProxyState {
    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            target,
            cut: AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            generation: watch::Sender::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self {
            addr,
            state,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection and refuses new ones until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Delays every byte forwarded from now on by `latency` (each direction).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.latency_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.state.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<ProxyState>) {
    // Ends when the proxy is dropped (the task is aborted), or after
    // MAX_ACCEPTS connections, far more than any scenario opens.
    for _ in 0..MAX_ACCEPTS {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if state.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, state.clone()));
    }
}

/// Forwards one connection both ways until either side closes or the proxy cuts.
async fn relay(client: TcpStream, state: Arc<ProxyState>) {
    let mut generation = state.generation.subscribe();
    generation.borrow_and_update();
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(state.target)).await
    {
        Ok(Ok(server)) => server,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let both = async {
        tokio::join!(
            pump(client_read, server_write, state.clone()),
            pump(server_read, client_write, state.clone())
        )
    };
    tokio::select! {
        _ = both => {}
        _ = generation.changed() => {}
    }
}

/// Copies one direction, holding each chunk back by the latency in force when
/// it was read (so latency delays bytes without limiting throughput).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, state: Arc<ProxyState>) {
    let (chunks, mut due_chunks) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || chunks
                    .send((Instant::now() + state.latency(), buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = due_chunks.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> io::Result<Duration> {
        let started = Instant::now();
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo"))??;
        assert_eq!(&buf, b"ping");
        Ok(started.elapsed())
    }

    #[tokio::test]
    async fn forwards_cuts_heals_and_delays() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        assert!(round_trip(proxy.addr()).await.is_ok());

        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.cut();
        let mut rest = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(2), open.read(&mut rest))
            .await
            .expect("the cut closes open connections");
        assert!(matches!(closed, Ok(0) | Err(_)));
        assert!(round_trip(proxy.addr()).await.is_err(), "cut refuses");

        proxy.heal();
        assert!(round_trip(proxy.addr()).await.is_ok());

        proxy.set_latency(Duration::from_millis(150));
        let delayed = round_trip(proxy.addr()).await.unwrap();
        assert!(delayed >= Duration::from_millis(300), "{delayed:?}");
    }
}
