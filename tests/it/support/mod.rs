//! Shared harness: real servers on free loopback ports.
#![allow(dead_code)]

pub mod mongo;
pub mod redis_server;
pub mod redtail;
pub mod relay;
pub mod status_server;
