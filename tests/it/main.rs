//! redtail's integration tests: one binary (so the link happens once), one
//! module per area. Each test talks to a real `redis-server` and to
//! `mongo-sim` (or the MongoDB in `OTR_TEST_MONGO_URL`) over TCP.

mod support;

mod cli;
mod cluster;
mod explain;
mod faults;
mod http;
mod publish;
mod relay;
mod source;
mod status;
mod status_page;
mod traces;
