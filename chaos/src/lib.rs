//! redtail's chaos suite: real redtail processes, a real redis-server and
//! mongo-sim, steady writes, injected faults, and the cluster's invariants
//! checked from the outside (see docs/chaos.md).
//!
//! Observers (subscriber, lease auditor, publish-epoch auditor) talk to
//! redis-server directly; only redtail goes through the fault proxies, so a
//! fault never blinds the suite.

pub mod analysis;
pub mod environment;
pub mod http_probe;
pub mod instance;
pub mod lease_audit;
pub mod proxy;
pub mod publish_audit;
pub mod redis_read;
pub mod redis_server;
pub mod report;
pub mod scenarios;
pub mod subscriber;
pub mod writer;

use std::path::{Path, PathBuf};

/// A port that was free a moment ago on 127.0.0.1 (shared with the test harness).
pub use redis_test_server::free_port;

/// The workspace's `target` directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            workspace.canonicalize().unwrap_or(workspace).join("target")
        }
    }
}

/// `target/<profile>/redtail`, or a clear error saying how to build it.
pub fn redtail_binary(profile: &str) -> anyhow::Result<PathBuf> {
    let path = target_dir().join(profile).join("redtail");
    if path.is_file() {
        Ok(path)
    } else {
        let flag = if profile == "release" {
            " --release"
        } else {
            ""
        };
        anyhow::bail!(
            "{} is missing: build it first with `cargo build{flag} -p redtail --bin redtail`",
            path.display()
        )
    }
}
