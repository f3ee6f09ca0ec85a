//! mongo-sim: a MongoDB replica-set primary, in memory, for redtail's tests.
//!
//! Start one with [`MongoSim::start`], point a driver at [`MongoSim::url`],
//! and disturb it through [`MongoSim::faults`]. See the README for what it
//! does differently from a real server.

pub mod engine;

mod admin;
mod commands;
pub mod counters;
mod cursors;
pub mod faults;
mod handshake;
mod reply;
mod server;
mod wire;

pub use counters::{Counters, CountersSnapshot, CursorKind, Traffic};
pub use engine::{Engine, MongoVersion};
pub use faults::Faults;
pub use server::{MongoSim, SimError, SimOptions};
