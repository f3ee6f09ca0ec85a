//! Figure 6: how fast this Redis can run redtail's own dedup-and-publish
//! script when nothing else is in the way, measured with `redis-benchmark`
//! against the same server in the same run. redtail cannot publish faster
//! than this; the ratio to it says how much redtail itself costs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redtail::publish::dedup_script::DedupScript;
use redtail::transform::Publication;

/// The key prefix and expiration redtail uses by default.
const PREFIX: &str = "oplogtoredis::";
const EXPIRATION_SECS: u64 = 150;

/// One `redis-benchmark` measurement.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Publications per script call.
    pub publications_per_call: usize,
    /// Script calls per second reported by redis-benchmark.
    pub calls_per_sec: f64,
}

impl Ceiling {
    /// Messages per second: calls times publications per call.
    pub fn msgs_per_sec(&self) -> f64 {
        self.calls_per_sec * self.publications_per_call as f64
    }
}

/// Loads the script through redtail's own `SCRIPT LOAD` command (so the
/// text measured is exactly the one redtail runs) and returns its SHA.
pub async fn load_script(redis_url: &str) -> Result<String> {
    let mut conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let sha: String = DedupScript::new(PREFIX, EXPIRATION_SECS)
        .load_command()
        .query_async(&mut conn)
        .await
        .context("SCRIPT LOAD of redtail's dedup script")?;
    Ok(sha)
}

/// The `EVALSHA` arguments of one call carrying `count` copies of
/// `publication`, in the script's layout (`KEYS` = dedup keys, `ARGV[1]` =
/// expiration, then message, channel count and channels per publication).
/// Each dedup key holds `__rand_int__`, which `redis-benchmark -r` replaces
/// per call, so (nearly) every call publishes instead of hitting a duplicate.
pub fn evalsha_args(sha: &str, publication: &Publication, count: usize) -> Vec<String> {
    let mut args = vec!["EVALSHA".to_owned(), sha.to_owned(), count.to_string()];
    args.extend((0..count).map(|i| format!("{PREFIX}processed::__rand_int__::{i}")));
    args.push(EXPIRATION_SECS.to_string());
    for _ in 0..count {
        args.push(publication.message.clone());
        args.push(publication.channels.len().to_string());
        args.extend(publication.channels.iter().cloned());
    }
    args
}

/// Runs `redis-benchmark` (at most `timeout`) and parses its rate. Its
/// output goes to `output` (a file, so a chatty run can never block on a
/// full pipe) and stays there for the record.
pub fn run(
    port: u16,
    args: &[String],
    requests: u64,
    pipeline: u32,
    publications_per_call: usize,
    output: &Path,
    timeout: Duration,
) -> Result<Ceiling> {
    let file =
        || std::fs::File::create(output).with_context(|| format!("creating {}", output.display()));
    let mut child = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-c",
            "50",
            "-q",
            "-r",
            "100000000",
        ])
        .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
        .args(args)
        .stdout(file()?)
        .stderr(Stdio::null())
        .spawn()
        .context(
            "starting redis-benchmark (Debian package redis-tools; scripts/setup.sh installs it)",
        )?;
    let deadline = Instant::now() + timeout;
    let finished = loop {
        if child.try_wait()?.is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(output).unwrap_or_default();
    let tail = text
        .get(text.len().saturating_sub(300)..)
        .unwrap_or("")
        .trim();
    if !finished {
        bail!("redis-benchmark did not finish within {timeout:?}; its output ends with: {tail}");
    }
    let calls_per_sec = parse_requests_per_sec(&text)
        .with_context(|| format!("no rate in redis-benchmark's output: {tail}"))?;
    Ok(Ceiling {
        publications_per_call,
        calls_per_sec,
    })
}

/// The last `<rate> requests per second` in redis-benchmark's `-q` output
/// (progress lines are overwritten with `\r`, the final one comes last).
pub fn parse_requests_per_sec(output: &str) -> Option<f64> {
    let end = output.rfind(" requests per second")?;
    output[..end].split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redtail::position::OplogPosition;

    #[test]
    fn the_final_rate_is_parsed() {
        let cases = [
            (
                "EVALSHA abc 1 k 150 m 2 a b: 81234.56 requests per second, p50=0.5 msec\n",
                Some(81234.56),
            ),
            (
                "EVALSHA x: rps=1000.0 (overall: 900.0) avg_msec=1\rEVALSHA x: 95000.00 requests per second, p50=1 msec\n",
                Some(95000.0),
            ),
            ("ERR unknown command\n", None),
        ];
        for (output, expected) in cases {
            assert_eq!(parse_requests_per_sec(output), expected, "{output}");
        }
    }

    #[test]
    fn the_call_has_the_script_layout() {
        let publication = Publication {
            channels: vec!["db.c".into(), "db.c::x".into()],
            message: "m".into(),
            origin: OplogPosition::new(1, 1),
            tx_index: 0,
            wall_ms: None,
            namespace: "db.c".into(),
        };
        let args = evalsha_args("sha", &publication, 2);
        let expected = [
            "EVALSHA",
            "sha",
            "2",
            "oplogtoredis::processed::__rand_int__::0",
            "oplogtoredis::processed::__rand_int__::1",
            "150",
            "m",
            "2",
            "db.c",
            "db.c::x",
            "m",
            "2",
            "db.c",
            "db.c::x",
        ];
        assert_eq!(args, expected);
    }
}
