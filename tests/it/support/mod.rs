//! Shared harness: real servers on free loopback ports.
#![allow(dead_code)]
