//! Reading a benchmark's knobs from the environment, shared by the bench
//! and scale examples so both refuse a malformed value the same way.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `name` parsed as a number, `default` when unset; a value that does not
/// parse is an error naming the variable (a typo must not silently run the
/// default benchmark).
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .ok()
            .with_context(|| format!("{name}={value:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

/// The redtail binary under test: `REDTAIL_BIN`, else the release build.
pub fn redtail_bin() -> PathBuf {
    std::env::var_os("REDTAIL_BIN")
        .map_or_else(|| PathBuf::from("target/release/redtail"), PathBuf::from)
}
