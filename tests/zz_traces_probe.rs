//! TEMPORARY harness (helper-owned, deleted after use): runs tests/it/traces.rs alone.
#[path = "it/support/mod.rs"]
mod support;
#[path = "it/traces.rs"]
mod traces;
