//! Settings that carry credentials: URLs with passwords and bare tokens.
//!
//! Configuration ends up in logs, panics and error messages, so the types
//! here make leaking a password the hard path: their `Debug` and `Display`
//! print a redacted form, and the raw text is only reachable through an
//! explicitly named `expose_secret()` at the point of use (the driver call).

use std::fmt;

/// What replaces a password (or a whole secret) wherever one would be shown.
pub const REDACTED: &str = "***";

/// Query parameters whose values are credentials, matched case-insensitively
/// as substrings of the parameter name.
const SECRET_QUERY_KEYS: [&str; 4] = ["password", "secret", "token", "key"];

/// A secret string such as an API token: prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for comparing or handing to a client; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Why a URL setting was refused. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://` prefix.
    #[error("not a URL: expected {expected}")]
    NotAUrl {
        /// The accepted forms, e.g. `mongodb://host:port`.
        expected: &'static str,
    },
    /// A scheme this setting does not support.
    #[error("unsupported scheme \"{scheme}\": expected {expected}")]
    Scheme {
        /// The scheme found.
        scheme: String,
        /// The accepted forms.
        expected: &'static str,
    },
    /// No host, or an empty entry in a host list.
    #[error("missing host")]
    MissingHost,
    /// A port that is not a number in 1..=65535 (the host is not echoed:
    /// in a malformed URL it may be part of a password).
    #[error("invalid port: expected host:port with a port from 1 to 65535")]
    Port,
    /// More hosts than the scheme allows.
    #[error("{0} takes exactly one host")]
    OneHostOnly(&'static str),
    /// A Redis path that is not a database number.
    #[error("invalid database \"{0}\": expected a number such as /0")]
    Database(String),
    /// The setting holds no URL at all.
    #[error("no URL given")]
    Empty,
}

/// A parsed URL whose password is hidden from `Debug` and `Display`.
///
/// Parsing is done by hand rather than with the `url` crate because MongoDB
/// and Sentinel URLs list several `host:port` pairs separated by commas,
/// which generic URL parsers reject.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl {
    raw: String,
    scheme: String,
    username: Option<String>,
    password: Option<String>,
    hosts: Vec<String>,
    /// Everything after the hosts: `/path?query`, possibly empty.
    tail: String,
}

impl SecretUrl {
    /// Splits `scheme://[user[:password]@]host[:port][,host[:port]...][/path][?query]`.
    pub fn parse(text: &str, expected: &'static str) -> Result<Self, UrlError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(UrlError::Empty);
        }
        let (scheme, rest) = text
            .split_once("://")
            .ok_or(UrlError::NotAUrl { expected })?;
        let scheme_ok = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok {
            return Err(UrlError::NotAUrl { expected });
        }
        // The last '@' before the query ends the credentials, so a password
        // with a raw '/' or '@' is still recognised as one (and redacted).
        let before_query = rest.split('?').next().unwrap_or(rest);
        let (userinfo, after_userinfo) = match before_query.rfind('@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (Some(user.to_owned()), Some(pass.to_owned())),
                None => (Some(info.to_owned()), None),
            },
            None => (None, None),
        };
        let hosts_end = after_userinfo
            .find(['/', '?'])
            .unwrap_or(after_userinfo.len());
        let (host_list, tail) = after_userinfo.split_at(hosts_end);
        let hosts = host_list.split(',').map(str::to_owned).collect::<Vec<_>>();
        for host in &hosts {
            check_host(host)?;
        }
        Ok(Self {
            raw: text.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            username: username.filter(|u| !u.is_empty()),
            password,
            hosts,
            tail: tail.to_owned(),
        })
    }

    /// The full URL, password included, for the driver; never log it.
    pub fn expose_secret(&self) -> &str {
        &self.raw
    }

    /// The URL with its password and credential-like query values as `***`.
    pub fn redacted(&self) -> String {
        let mut out = format!("{}://", self.scheme);
        if let Some(user) = &self.username {
            out.push_str(user);
        }
        if self.password.is_some() {
            out.push(':');
            out.push_str(REDACTED);
        }
        if self.username.is_some() || self.password.is_some() {
            out.push('@');
        }
        out.push_str(&self.hosts.join(","));
        out.push_str(&redact_query(&self.tail));
        out
    }

    /// The lower-cased scheme, e.g. `rediss`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, if the URL has one.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password as written (percent-encoding kept); never log it.
    pub fn expose_password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The `host[:port]` entries, in order.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// The path without its leading `/` (a Redis database number, a Mongo
    /// auth database), if any.
    pub fn path(&self) -> Option<&str> {
        let path = self.tail.split('?').next().unwrap_or("");
        path.strip_prefix('/').filter(|p| !p.is_empty())
    }

    /// The value of a query parameter (`sentinelMasterId`, `replicaSet`, ...).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let query = self.tail.split_once('?')?.1;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Best-effort redaction of text that failed to parse, for error messages:
/// a URL keeps its shape, anything else that might hold a credential is hidden.
pub fn redact_text(text: &str) -> String {
    match SecretUrl::parse(text, "") {
        Ok(url) => url.redacted(),
        Err(_) => match text.split_once("://") {
            Some((scheme, _)) if !scheme.contains('@') => format!("{scheme}://{REDACTED}"),
            _ if text.contains('@') || text.contains(':') => REDACTED.to_owned(),
            _ => text.to_owned(),
        },
    }
}

fn check_host(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    let port = if let Some(v6) = host.strip_prefix('[') {
        let (_, after) = v6.split_once(']').ok_or(UrlError::Port)?;
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(UrlError::Port)?),
        }
    } else {
        match host.split_once(':') {
            Some(("", _)) => return Err(UrlError::MissingHost),
            Some((_, port)) => Some(port),
            None => None,
        }
    };
    match port {
        Some(port) if !matches!(port.parse::<u16>(), Ok(p) if p > 0) => Err(UrlError::Port),
        _ => Ok(()),
    }
}

fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let pairs = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => format!("{key}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>();
    format!("{path}?{}", pairs.join("&"))
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_QUERY_KEYS.iter().any(|secret| key.contains(secret))
}

const MONGO_FORMS: &str = "mongodb://host:port or mongodb+srv://host";

/// Parses `OTR_MONGO_URL`: `mongodb://` (one or more hosts) or `mongodb+srv://`
/// (exactly one host name, no port, as the SRV lookup supplies them).
pub fn parse_mongo_url(text: &str) -> Result<SecretUrl, UrlError> {
    let url = SecretUrl::parse(text, MONGO_FORMS)?;
    match url.scheme() {
        "mongodb" => Ok(url),
        "mongodb+srv" if url.hosts().len() != 1 || url.hosts()[0].contains(':') => {
            Err(UrlError::OneHostOnly("mongodb+srv:// (without a port)"))
        }
        "mongodb+srv" => Ok(url),
        other => Err(UrlError::Scheme {
            scheme: other.to_owned(),
            expected: MONGO_FORMS,
        }),
    }
}

/// How to reach one Redis deployment named in `OTR_REDIS_URL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisKind {
    /// `redis://host:port[/db]`.
    Plain,
    /// `rediss://host:port[/db]`: TLS, verified against the system roots.
    Tls,
    /// `redis-sentinel://[pw@]h:p[,h:p...][/db][?sentinelMasterId=name]`.
    Sentinel,
}

/// One entry of `OTR_REDIS_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as given; print it, it is redacted.
    pub url: SecretUrl,
    /// Which client to build for it.
    pub kind: RedisKind,
}

impl RedisUrl {
    /// The database number from the path (`/3`), 0 when absent.
    pub fn database(&self) -> i64 {
        self.url.path().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// For Sentinel URLs, the monitored master's name (`sentinelMasterId`).
    pub fn sentinel_master(&self) -> Option<&str> {
        self.url.query_param("sentinelMasterId")
    }
}

const REDIS_FORMS: &str = "redis://, rediss:// or redis-sentinel://";

/// Parses one Redis URL.
pub fn parse_redis_url(text: &str) -> Result<RedisUrl, UrlError> {
    let url = SecretUrl::parse(text, REDIS_FORMS)?;
    let kind = match url.scheme() {
        "redis" => RedisKind::Plain,
        "rediss" => RedisKind::Tls,
        "redis-sentinel" => RedisKind::Sentinel,
        other => {
            return Err(UrlError::Scheme {
                scheme: other.to_owned(),
                expected: REDIS_FORMS,
            });
        }
    };
    if kind != RedisKind::Sentinel && url.hosts().len() != 1 {
        return Err(UrlError::OneHostOnly("redis:// and rediss://"));
    }
    if let Some(db) = url.path()
        && db.parse::<u32>().is_err()
    {
        return Err(UrlError::Database(db.to_owned()));
    }
    Ok(RedisUrl { url, kind })
}

/// Parses `OTR_REDIS_URL`, a comma-separated list of Redis URLs; every
/// publication goes to each of them.
///
/// Unlike oplogtoredis, whitespace around entries is trimmed (a list written
/// as `a, b` works). A comma followed by text without `://` continues the
/// previous entry's host list, which is how a Sentinel URL names several
/// sentinels: `redis-sentinel://s1:26379,s2:26379?sentinelMasterId=m`.
pub fn parse_redis_urls(text: &str) -> Result<Vec<RedisUrl>, UrlError> {
    let mut entries: Vec<String> = Vec::new();
    for piece in text.split(',').map(str::trim) {
        match entries.last_mut() {
            Some(last) if !piece.contains("://") && !piece.is_empty() => {
                last.push(',');
                last.push_str(piece);
            }
            _ if piece.is_empty() => {}
            _ => entries.push(piece.to_owned()),
        }
    }
    if entries.is_empty() {
        return Err(UrlError::Empty);
    }
    entries.iter().map(|entry| parse_redis_url(entry)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_everywhere() {
        let cases = [
            (
                "redis://u:s3cr3t@127.0.0.1:6379/0",
                "redis://u:***@127.0.0.1:6379/0",
            ),
            ("redis://:s3cr3t@h:1", "redis://:***@h:1"),
            ("redis://u@h:1", "redis://u@h:1"),
            ("rediss://h:6380", "rediss://h:6380"),
            (
                "mongodb://admin:p%40ss@a:27017,b:27017/db?replicaSet=rs&authSource=admin",
                "mongodb://admin:***@a:27017,b:27017/db?replicaSet=rs&authSource=admin",
            ),
            ("mongodb://u:pa/ss@h/db", "mongodb://u:***@h/db"),
            ("mongodb://u:pa@ss@h", "mongodb://u:***@h"),
            (
                "redis://h:1/0?password=s3cr3t&x=1",
                "redis://h:1/0?password=***&x=1",
            ),
            (
                "mongodb+srv://u:s3cr3t@cluster.example.com/",
                "mongodb+srv://u:***@cluster.example.com/",
            ),
        ];
        for (raw, want) in cases {
            let url = SecretUrl::parse(raw, "").unwrap();
            assert_eq!(url.redacted(), want, "{raw}");
            assert_eq!(url.to_string(), want);
            assert_eq!(format!("{url:?}"), format!("{want:?}"));
            assert_eq!(url.expose_secret(), raw);
        }
    }

    #[test]
    fn redact_text_never_shows_a_password() {
        for raw in [
            "http://u:s3cr3t@h",
            "redis://u:s3cr3t@",
            "u:s3cr3t@h",
            "redis://u:s3cr3t@h:99999",
        ] {
            assert!(
                !redact_text(raw).contains("s3cr3t"),
                "{raw} -> {}",
                redact_text(raw)
            );
        }
        assert_eq!(redact_text("abc"), "abc");
    }

    #[test]
    fn secret_prints_stars() {
        let token = Secret::new("tok");
        assert_eq!(format!("{token} {token:?}"), "*** ***");
        assert_eq!(token.expose_secret(), "tok");
    }

    #[test]
    fn mongo_urls() {
        let ok = [
            "mongodb://localhost:27017",
            "mongodb://u:p@a:1,b:2,[::1]:3/db?replicaSet=rs",
            "mongodb://localhost",
            "mongodb+srv://cluster0.example.net/?retryWrites=true",
            " mongodb://h:1 ",
        ];
        for raw in ok {
            assert!(parse_mongo_url(raw).is_ok(), "{raw}");
        }
        let bad = [
            ("", UrlError::Empty),
            (
                "localhost:27017",
                UrlError::NotAUrl {
                    expected: MONGO_FORMS,
                },
            ),
            (
                "redis://h:1",
                UrlError::Scheme {
                    scheme: "redis".into(),
                    expected: MONGO_FORMS,
                },
            ),
            ("mongodb://", UrlError::MissingHost),
            ("mongodb://a:1,,b:2", UrlError::MissingHost),
            ("mongodb://h:abc", UrlError::Port),
            ("mongodb://h:0", UrlError::Port),
            ("mongodb://h:70000", UrlError::Port),
            (
                "mongodb+srv://a,b",
                UrlError::OneHostOnly("mongodb+srv:// (without a port)"),
            ),
            (
                "mongodb+srv://a:1",
                UrlError::OneHostOnly("mongodb+srv:// (without a port)"),
            ),
        ];
        for (raw, want) in bad {
            assert_eq!(parse_mongo_url(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn redis_url_lists() {
        let urls = parse_redis_urls(
            "redis://u:p@h1:6379/2, rediss://h2:6380,redis-sentinel://:pw@s1:26379,s2:26379/1?sentinelMasterId=mymaster",
        )
        .unwrap();
        let kinds = urls.iter().map(|u| u.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds,
            [RedisKind::Plain, RedisKind::Tls, RedisKind::Sentinel]
        );
        assert_eq!(urls[0].database(), 2);
        assert_eq!(urls[0].url.username(), Some("u"));
        assert_eq!(urls[1].database(), 0);
        assert_eq!(urls[2].url.hosts(), ["s1:26379", "s2:26379"]);
        assert_eq!(urls[2].sentinel_master(), Some("mymaster"));
        assert_eq!(urls[2].database(), 1);
        assert_eq!(urls[2].url.expose_password(), Some("pw"));
        assert_eq!(parse_redis_urls("redis://a:1,").unwrap().len(), 1);

        let bad = [
            ("", UrlError::Empty),
            (" , ", UrlError::Empty),
            (
                "http://h:1",
                UrlError::Scheme {
                    scheme: "http".into(),
                    expected: REDIS_FORMS,
                },
            ),
            (
                "redis://a:1,b:2",
                UrlError::OneHostOnly("redis:// and rediss://"),
            ),
            ("redis://h:1/x", UrlError::Database("x".into())),
            ("redis://h:port", UrlError::Port),
            (
                "redis://h:1,mongodb://h:2",
                UrlError::Scheme {
                    scheme: "mongodb".into(),
                    expected: REDIS_FORMS,
                },
            ),
        ];
        for (raw, want) in bad {
            assert_eq!(parse_redis_urls(raw), Err(want), "{raw}");
        }
    }
}
