//! The Lua script that publishes a batch exactly once per change, and the
//! command that calls it.
//!
//! Semantics are oplogtoredis's, so an oplogtoredis fleet and redtail running
//! side by side against one Redis publish each change once: per publication,
//! `GET <prefix>processed::<(T<<32)|I>::<txIdx>`; if absent, `SETEX` it to 1
//! for the dedup expiration and `PUBLISH` the message to each channel in order.
//!
//! The argument layout differs from oplogtoredis's (channels are not joined
//! with `$`, so ids containing `$` work):
//! - `KEYS[i]`: the dedup key of publication `i` (keys in `KEYS` so a future
//!   Redis Cluster mode can route and hash-tag them);
//! - `ARGV[1]`: the expiration in whole seconds;
//! - then per publication, in `KEYS` order: the message, the channel count
//!   `n`, and the `n` channels.
//!
//! The script returns one integer per publication: 1 published, 0 duplicate.
//! It never does arithmetic on positions: Lua numbers are doubles, and
//! `(T<<32)|I` exceeds 2^53, so positions only travel inside key strings.

use redis::{Cmd, Script};

use crate::transform::Publication;

const SOURCE: &str = r#"
local expiration = ARGV[1]
local published = {}
local next_arg = 2
for i = 1, #KEYS do
  local message = ARGV[next_arg]
  local first_channel = next_arg + 2
  next_arg = first_channel + tonumber(ARGV[next_arg + 1])
  -- One SET NX EX does oplogtoredis's GET-then-SETEX (same key, value and
  -- TTL, so both still deduplicate each other) in one command.
  if not redis.call('SET', KEYS[i], 1, 'NX', 'EX', expiration) then
    published[i] = 0
  else
    for c = first_channel, next_arg - 1 do
      redis.call('PUBLISH', ARGV[c], message)
    end
    published[i] = 1
  end
end
return published
"#;

/// The dedup-and-publish script, loaded once per Redis and called by SHA.
#[derive(Clone)]
pub struct DedupScript {
    script: std::sync::Arc<Script>,
    key_prefix: String,
    expiration_secs: u64,
}

/// What the script did with one publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dedup key was absent: the message went to every channel.
    Published,
    /// Someone (a retry, another instance) already published this change.
    Duplicate,
}

impl DedupScript {
    /// `metadata_prefix` is oplogtoredis's `OTR_REDIS_METADATA_PREFIX`;
    /// `expiration_secs` its `OTR_REDIS_DEDUPE_EXPIRATION` in seconds (at least 1,
    /// since `SETEX 0` is an error).
    pub fn new(metadata_prefix: &str, expiration_secs: u64) -> Self {
        Self {
            script: std::sync::Arc::new(Script::new(SOURCE)),
            key_prefix: format!("{metadata_prefix}processed::"),
            expiration_secs: expiration_secs.max(1),
        }
    }

    /// The dedup key of `publication`, byte-identical to oplogtoredis's.
    pub fn dedup_key(&self, publication: &Publication) -> String {
        format!(
            "{}{}::{}",
            self.key_prefix, publication.origin, publication.tx_index
        )
    }

    /// `EVALSHA` for `publications`. It fails with `NOSCRIPT` when Redis has not
    /// loaded the script yet; the caller then runs [`DedupScript::load_command`]
    /// and retries, in order with its other calls (a built-in reload-and-retry
    /// inside one call could let a later pipelined call overtake it).
    pub fn call_command<'p>(&self, publications: impl IntoIterator<Item = &'p Publication>) -> Cmd {
        let publications: Vec<&Publication> = publications.into_iter().collect();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(publications.len());
        for publication in &publications {
            cmd.arg(self.dedup_key(publication));
        }
        cmd.arg(self.expiration_secs);
        for publication in &publications {
            cmd.arg(&publication.message)
                .arg(publication.channels.len());
            for channel in &publication.channels {
                cmd.arg(channel);
            }
        }
        cmd
    }

    /// `SCRIPT LOAD` of the script, after a `NOSCRIPT` (a restarted or failed-over
    /// Redis, or a `SCRIPT FLUSH`).
    pub fn load_command(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(SOURCE);
        cmd
    }

    /// Reads the script's reply for a call of `expected` publications.
    pub fn parse_reply(reply: &[i64], expected: usize) -> Result<Vec<Outcome>, String> {
        if reply.len() != expected {
            return Err(format!(
                "the script answered {} results for {expected} publications",
                reply.len()
            ));
        }
        reply
            .iter()
            .map(|flag| match flag {
                1 => Ok(Outcome::Published),
                0 => Ok(Outcome::Duplicate),
                other => Err(format!("the script answered {other}, expected 0 or 1")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::OplogPosition;

    fn publication(channels: &[&str], message: &str, time: u32, inc: u32, tx: u32) -> Publication {
        Publication {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            message: message.to_string(),
            origin: OplogPosition::new(time, inc),
            tx_index: tx,
            wall_ms: None,
            namespace: "db.c".to_string(),
        }
    }

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8(bytes.to_vec()).unwrap(),
                _ => "<not a simple argument>".to_string(),
            })
            .collect()
    }

    #[test]
    fn dedup_keys_match_oplogtoredis() {
        let script = DedupScript::new("oplogtoredis::", 150);
        let cases = [
            (
                (1700000000, 1, 0),
                "oplogtoredis::processed::7301444403200000001::0",
            ),
            ((1234, 5678, 3), "oplogtoredis::processed::5299989648942::3"),
            (
                (u32::MAX, u32::MAX, 0),
                "oplogtoredis::processed::18446744073709551615::0",
            ),
        ];
        for ((time, inc, tx), expected) in cases {
            assert_eq!(
                script.dedup_key(&publication(&["c"], "m", time, inc, tx)),
                expected
            );
        }
        let custom = DedupScript::new("tests.", 150);
        assert_eq!(
            custom.dedup_key(&publication(&["c"], "m", 0, 7, 1)),
            "tests.processed::7::1"
        );
    }

    #[test]
    fn call_layout_keeps_channels_separate() {
        let script = DedupScript::new("p::", 150);
        let a = publication(&["db.c", "db.c::a$b"], r#"{"e":"i"}"#, 0, 1, 0);
        let b = publication(&["db.c"], r#"{"e":"r"}"#, 0, 2, 4);
        let got = args(&script.call_command([&a, &b]));
        let sha = Script::new(SOURCE).get_hash().to_string();
        let expected = [
            "EVALSHA",
            &sha,
            "2",
            "p::processed::1::0",
            "p::processed::2::4",
            "150",
            r#"{"e":"i"}"#,
            "2",
            "db.c",
            "db.c::a$b",
            r#"{"e":"r"}"#,
            "1",
            "db.c",
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn zero_expiration_is_raised_to_one_second() {
        let script = DedupScript::new("p::", 0);
        let got = args(&script.call_command([&publication(&["c"], "m", 0, 1, 0)]));
        assert_eq!(got[4], "1");
    }

    #[test]
    fn replies_are_checked() {
        assert_eq!(
            DedupScript::parse_reply(&[1, 0], 2),
            Ok(vec![Outcome::Published, Outcome::Duplicate])
        );
        assert!(DedupScript::parse_reply(&[1], 2).is_err());
        assert!(DedupScript::parse_reply(&[2], 1).is_err());
    }
}
