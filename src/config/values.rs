//! Value parsers for individual settings, in the forms oplogtoredis accepts.
//!
//! Each returns a reason phrased to follow "invalid value ... for OTR_X:"
//! and never echoes secret input back, because the reason is printed.

use std::time::Duration;

use super::duration::parse_go_duration;
use super::secret::{self, RedisUrl, Secret, SecretUrl};

/// A Go duration that is greater than zero (intervals, timeouts, windows).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match parse_go_duration(text).map_err(|e| e.to_string())? {
        Duration::ZERO => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

/// A Go duration, zero allowed (delays).
pub fn duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text).map_err(|e| e.to_string())
}

/// A Go duration of at least one second: Redis `SETEX` takes whole seconds,
/// so anything shorter would round to an invalid zero TTL.
pub fn whole_seconds_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_go_duration(text).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("must be at least 1s (it becomes a Redis TTL in whole seconds)".to_owned());
    }
    Ok(d)
}

/// A whole number of at least 1 (sizes, counts, parallelism).
pub fn count(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".to_owned()),
        Err(_) => Err("expected a whole number such as 1 or 10000".to_owned()),
    }
}

/// A boolean the way Go's `strconv.ParseBool` reads one, which is what
/// oplogtoredis's configuration library uses.
pub fn go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

/// `OTR_LOG_DEBUG`/`OTR_LOG_QUIET` semantics: any non-empty value turns the
/// switch on, even "false", exactly as oplogtoredis checks them.
pub fn non_empty_is_on(text: &str) -> Result<bool, String> {
    Ok(!text.is_empty())
}

/// An address to listen on: `ip:port`, `host:port` or Go's `:port` (all interfaces).
pub fn listen_addr(text: &str) -> Result<String, String> {
    let text = text.trim();
    let bad = || "expected host:port such as 0.0.0.0:9000".to_owned();
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    match host {
        "" => Ok(format!("0.0.0.0:{port}")),
        _ if host.contains(char::is_whitespace) => Err(bad()),
        _ => Ok(text.to_owned()),
    }
}

/// A non-empty string (key prefixes, names).
pub fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(text.to_owned())
}

/// `OTR_MONGO_URL`.
pub fn mongo_url(text: &str) -> Result<SecretUrl, String> {
    secret::parse_mongo_url(text).map_err(|e| e.to_string())
}

/// `OTR_REDIS_URL`: a list, kept whole so clap stores one value.
pub fn redis_urls(text: &str) -> Result<RedisUrlList, String> {
    secret::parse_redis_urls(text)
        .map(RedisUrlList)
        .map_err(|e| e.to_string())
}

/// A secret token or DSN; an empty value is refused because it would make
/// authentication trivially pass.
pub fn secret(text: &str) -> Result<Secret, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(Secret::new(text))
}

/// A free-form secret such as a DSN, empty allowed (it means "not set").
pub fn optional_secret(text: &str) -> Result<Secret, String> {
    Ok(Secret::new(text))
}

/// The parsed `OTR_REDIS_URL` list (clap needs one type per value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrlList(pub Vec<RedisUrl>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let cases: &[(&str, Result<usize, &str>)] = &[
            ("1", Ok(1)),
            ("10000", Ok(10_000)),
            (" 7 ", Ok(7)),
            ("0", Err("must be at least 1")),
            ("-1", Err("expected a whole number such as 1 or 10000")),
            ("abc", Err("expected a whole number such as 1 or 10000")),
            ("1.5", Err("expected a whole number such as 1 or 10000")),
            ("", Err("expected a whole number such as 1 or 10000")),
        ];
        for (text, want) in cases {
            assert_eq!(count(text), want.map_err(str::to_owned), "{text:?}");
        }
    }

    #[test]
    fn go_bools() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(go_bool(text), Ok(true), "{text}");
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(go_bool(text), Ok(false), "{text}");
        }
        for text in ["", "yes", "tRUE", "2", " true"] {
            assert!(go_bool(text).is_err(), "{text}");
        }
    }

    #[test]
    fn log_switches_follow_oplogtoredis() {
        let cases = [
            ("", false),
            ("1", true),
            ("false", true),
            ("0", true),
            ("x", true),
        ];
        for (text, want) in cases {
            assert_eq!(non_empty_is_on(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn durations_with_ranges() {
        assert_eq!(positive_duration("1s"), Ok(Duration::from_secs(1)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("120").is_err());
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(whole_seconds_ttl("150s"), Ok(Duration::from_secs(150)));
        assert!(whole_seconds_ttl("999ms").is_err());
    }

    #[test]
    fn listen_addrs() {
        let cases: &[(&str, Option<&str>)] = &[
            ("0.0.0.0:9000", Some("0.0.0.0:9000")),
            (":9000", Some("0.0.0.0:9000")),
            ("localhost:80", Some("localhost:80")),
            ("[::1]:9000", Some("[::1]:9000")),
            ("127.0.0.1:0", Some("127.0.0.1:0")),
            ("9000", None),
            ("host:http", None),
            ("host:70000", None),
            ("a b:1", None),
        ];
        for (text, want) in cases {
            assert_eq!(listen_addr(text).ok().as_deref(), *want, "{text}");
        }
    }

    #[test]
    fn url_reasons_never_echo_the_password() {
        let err = redis_urls("http://u:s3cr3t@h:1").unwrap_err();
        assert!(err.contains("unsupported scheme \"http\""), "{err}");
        assert!(!err.contains("s3cr3t"));
        let err = mongo_url("mongodb://u:s3cr3t@h:port").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
