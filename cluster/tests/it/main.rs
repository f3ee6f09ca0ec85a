//! Integration tests of the cluster crate against a real `redis-server`.

mod coordinator;
mod fencing;
mod lease;
mod membership;
mod shard_count;
mod status;
mod support;
