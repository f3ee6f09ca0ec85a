//! mongo-sim: a MongoDB replica-set primary, in memory, for redtail's tests.

pub mod engine;
