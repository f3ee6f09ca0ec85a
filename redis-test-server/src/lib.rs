//! A real `redis-server` for tests, benchmarks, the chaos suite and the demo:
//! on a free loopback port, without persistence, ready once it answers `PING`,
//! and killed when dropped.
//!
//! redtail's behaviour depends on what a real Redis does (Lua scripts, pub/sub
//! ordering, `NOAUTH`, a crash that loses data), so nothing here fakes Redis;
//! this crate only makes starting and controlling one cheap and bounded. Every
//! wait has a limit: a server that does not come up fails with an error that
//! names what went wrong instead of hanging the caller.
//!
//! Synchronous and std-only on purpose: the callers range from plain `#[test]`s
//! to Tokio programs, and starting a server takes milliseconds.

mod error;
mod probe;
mod server;

pub use error::RedisServerError;
pub use server::{RedisServer, RedisServerOptions};

/// A loopback port nobody listens on right now.
///
/// The OS picks it, so parallel tests do not collide by choosing the same
/// number; another process may still take it before ours binds, which is why
/// [`RedisServer::start_with`] retries with a fresh port.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
