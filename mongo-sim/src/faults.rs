//! Fault injection: the failures a production tailer meets (elections,
//! dropped connections, a slow or frozen server, an oplog that rolled over),
//! switchable from tests while clients are connected.
//!
//! Timed faults end by themselves: each is stored as a deadline, checked when
//! a request arrives, so nothing has to run in the background to undo them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Document, Timestamp};
use tokio::sync::watch;

use crate::engine::Engine;

/// A cloneable handle to the faults of one running simulator.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultState>,
}

struct FaultState {
    engine: Arc<Engine>,
    timed: Mutex<TimedFaults>,
    /// Bumped to make every open connection close itself.
    close_connections: watch::Sender<u64>,
    /// Bumped on every step-down, to interrupt getMores that are waiting.
    state_changes: watch::Sender<u64>,
    /// The election term; a new term after each step-down gives the next
    /// `electionId` a higher value, as a real election does.
    term: AtomicU32,
}

#[derive(Default)]
struct TimedFaults {
    stepped_down_until: Option<Instant>,
    refuse_until: Option<Instant>,
    paused_until: Option<Instant>,
    latency: Duration,
}

fn active(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|until| Instant::now() < until)
}

impl Faults {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self {
            inner: Arc::new(FaultState {
                engine,
                timed: Mutex::new(TimedFaults::default()),
                close_connections: watch::Sender::new(0),
                state_changes: watch::Sender::new(0),
                term: AtomicU32::new(1),
            }),
        }
    }

    fn timed(&self) -> std::sync::MutexGuard<'_, TimedFaults> {
        self.inner.timed.lock().expect("faults lock")
    }

    /// Steps down for `duration`: `hello` reports a secondary, data commands
    /// fail with 10107 NotWritablePrimary, and waiting or new tailing
    /// `getMore`s fail with 11602 InterruptedDueToReplStateChange. The node is
    /// primary again (in a new term) once the duration has passed.
    pub fn step_down(&self, duration: Duration) {
        self.timed().stepped_down_until = Some(Instant::now() + duration);
        self.inner.term.fetch_add(1, Ordering::SeqCst);
        self.inner.state_changes.send_modify(|n| *n += 1);
    }

    /// Closes every connection open right now (connections made afterwards
    /// are served normally), like a network blip or a restarted mongod.
    pub fn close_connections(&self) {
        self.inner.close_connections.send_modify(|n| *n += 1);
    }

    /// Accepts and immediately drops every new connection for `duration`.
    pub fn refuse_connections(&self, duration: Duration) {
        self.timed().refuse_until = Some(Instant::now() + duration);
    }

    /// Delays every reply by `latency` (zero turns it off).
    pub fn set_latency(&self, latency: Duration) {
        self.timed().latency = latency;
    }

    /// Holds every request that arrives during the next `duration` until it ends,
    /// like a mongod frozen by a long lock or a stopped process.
    pub fn pause(&self, duration: Duration) {
        self.timed().paused_until = Some(Instant::now() + duration);
    }

    /// Ends every timed fault at once (step-down, refusal, pause, latency).
    pub fn clear(&self) {
        let mut timed = self.timed();
        let was_down = active(timed.stepped_down_until);
        *timed = TimedFaults::default();
        drop(timed);
        if was_down {
            self.inner.state_changes.send_modify(|n| *n += 1);
        }
    }

    /// Drops the oldest oplog entries, keeping the newest `keep`; tailers
    /// behind that point then get 136 CappedPositionLost.
    pub fn truncate_oplog(&self, keep: usize) {
        self.inner.engine.truncate_oplog(keep);
    }

    /// Changes the oplog capacity in bytes (dropping the oldest entries if needed).
    pub fn set_oplog_capacity(&self, bytes: usize) {
        self.inner.engine.set_oplog_capacity(bytes);
    }

    /// Appends a raw oplog entry as is (see `Engine::append_oplog_entry`).
    pub fn append_oplog_entry(&self, entry: Document) -> Timestamp {
        self.inner.engine.append_oplog_entry(entry)
    }

    /// Whether this node currently acts as the primary.
    pub fn is_primary(&self) -> bool {
        !active(self.timed().stepped_down_until)
    }

    /// The current election term (starts at 1, +1 per step-down).
    pub fn term(&self) -> u32 {
        self.inner.term.load(Ordering::SeqCst)
    }

    pub(crate) fn refusing_connections(&self) -> bool {
        active(self.timed().refuse_until)
    }

    /// When a request arriving now may be served, if a pause is in force.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.timed()
            .paused_until
            .filter(|until| Instant::now() < *until)
    }

    pub(crate) fn latency(&self) -> Duration {
        self.timed().latency
    }

    /// A receiver that changes when `close_connections` is called.
    pub(crate) fn close_signal(&self) -> watch::Receiver<u64> {
        self.inner.close_connections.subscribe()
    }

    /// A receiver that changes when the node steps down.
    pub(crate) fn state_change_signal(&self) -> watch::Receiver<u64> {
        self.inner.state_changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, MongoVersion};

    fn faults() -> Faults {
        Faults::new(Engine::new(EngineConfig {
            version: MongoVersion::V7_0,
            oplog_capacity_bytes: 1 << 20,
            txn_chunk_ops: 1000,
        }))
    }

    #[test]
    fn timed_faults_expire_by_themselves() {
        let f = faults();
        assert!(f.is_primary());
        assert_eq!(f.term(), 1);
        let state = f.state_change_signal();
        f.step_down(Duration::from_millis(50));
        f.refuse_connections(Duration::from_millis(50));
        f.pause(Duration::from_millis(50));
        f.set_latency(Duration::from_millis(5));
        assert!(state.has_changed().unwrap());
        assert!(!f.is_primary());
        assert_eq!(f.term(), 2);
        assert!(f.refusing_connections());
        assert!(f.paused_until().is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(f.is_primary());
        assert!(!f.refusing_connections());
        assert!(f.paused_until().is_none());
        assert_eq!(f.latency(), Duration::from_millis(5));
    }

    #[test]
    fn clear_ends_everything_and_close_signals() {
        let f = faults();
        f.step_down(Duration::from_secs(60));
        f.set_latency(Duration::from_secs(1));
        let state = f.state_change_signal();
        f.clear();
        assert!(f.is_primary());
        assert_eq!(f.latency(), Duration::ZERO);
        assert!(
            state.has_changed().unwrap(),
            "clearing a step-down is a state change"
        );

        let close = f.close_signal();
        assert!(!close.has_changed().unwrap());
        f.close_connections();
        assert!(close.has_changed().unwrap());
    }
}
