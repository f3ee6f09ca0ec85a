//! redtail: relays every MongoDB change to Redis in the format Meteor's
//! `redis-oplog` consumes.
//!
//! The crate is laid out as a pipeline, one stage per module:
//! [`sources`] read MongoDB, [`transform`] turns what they read into
//! [`transform::Publication`]s without any I/O, and [`publish`] delivers those
//! to Redis. [`config`], [`http`] and [`telemetry`] are the operating surface;
//! the binary's `main` only wires them together through [`pipeline`].

pub mod config;
pub mod denylist;
pub mod explain;
pub mod http;
pub mod pipeline;
pub mod position;
pub mod publish;
pub mod sharding;
pub mod sources;
pub mod status;
pub mod telemetry;
pub mod transform;
