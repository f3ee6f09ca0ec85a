//! One Redis destination, named by a URL, and the connection redtail keeps to it.
//!
//! Accepted URLs (oplogtoredis's set, plus ACL users):
//! - `redis://[user:password@]host[:port][/db]`
//! - `rediss://...`: the same over TLS, verified against the webpki roots (or
//!   only against the CA given in [`TargetOptions::tls_ca_pem`]).
//! - `redis-sentinel://[user:password@ | password@]host:port[,host:port...][/db]?sentinelMasterId=name`:
//!   the master named `name`, found through the listed Sentinels; the
//!   credentials are the master's (the Sentinels are reached without auth).
//!   `password@` without a colon is a password, as in oplogtoredis's docs.
//!
//! A [`Target`] caches one multiplexed connection, shared by whoever uses
//! that `Target`; after a failure it is dropped and the next caller
//! reconnects, which is how a restarted Redis or a Sentinel failover is
//! picked up. Each publisher loop owns a `Target` of its own, so nobody else
//! can swap its connection while it has calls in flight.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, ConnectionAddr, FromRedisValue, TlsCertificates};
use tokio::sync::Mutex;

use super::error::PublishError;

/// Replaces the password in a Redis URL with `***`, so URLs can appear in logs
/// and errors. Works on malformed input too (it never fails): anything between
/// the scheme and the last `@` of the authority that could be a secret is hidden,
/// and so is any `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => (&url[..at + 3], &url[at + 3..]),
        None => ("", url),
    };
    // The last `@` ends the userinfo even when an unencoded `/` or `?` sits in
    // the password: over-redacting a strange URL beats leaking a secret.
    let (user, after_userinfo) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***"),
                None if userinfo.is_empty() => String::new(),
                // `pw@` alone is a password in sentinel URLs; a bare `user@`
                // elsewhere is only a name, but hiding it costs nothing.
                None => "***".to_string(),
            };
            (user, &rest[at..])
        }
        None => (String::new(), rest),
    };
    let hosts_end = after_userinfo
        .find(['/', '?', '#'])
        .unwrap_or(after_userinfo.len());
    let (hosts, tail) = after_userinfo.split_at(hosts_end);
    format!("{scheme}{user}{hosts}{}", redact_query_passwords(tail))
}

fn redact_query_passwords(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("pass") => format!("{name}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

/// How redtail connects to every destination.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// Bound on establishing a connection (TCP, TLS, AUTH, SELECT, Sentinel lookup).
    pub connect_timeout: Duration,
    /// Bound on waiting for any reply. A paused or partitioned Redis must turn
    /// into an error the publisher can retry, never into a hang.
    pub response_timeout: Duration,
    /// PEM of a CA to trust for `rediss://` instead of the webpki roots, for
    /// Redis deployments behind a private CA.
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            tls_ca_pem: None,
        }
    }
}

/// One Redis destination: where it is and the connection currently open to it.
pub struct Target {
    redacted_url: String,
    endpoint: Endpoint,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    cached: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: std::sync::atomic::AtomicU64,
}

enum Endpoint {
    Direct(Client),
    // The client caches the Sentinel connections and needs `&mut` to look up
    // the master, hence the lock.
    Sentinel(Mutex<SentinelClient>),
}

/// A connection handed out by [`Target::connection`], tagged so that a failure
/// on it invalidates exactly that connection and not a newer one.
pub struct Lease {
    /// The connection; clone it freely, it is a handle to a multiplexed pipe.
    pub connection: MultiplexedConnection,
    generation: u64,
}

impl Target {
    /// Parses `url` without any I/O: a bad URL fails here, at start.
    pub fn new(url: &str, options: &TargetOptions) -> Result<Self, PublishError> {
        let redacted_url = redact_url(url);
        let invalid = |reason: String| PublishError::InvalidUrl {
            url: redacted_url.clone(),
            reason: scrub(&reason, url),
        };
        let endpoint = if url.starts_with("redis-sentinel://") {
            let parsed = SentinelUrl::parse(url).map_err(&invalid)?;
            Endpoint::Sentinel(Mutex::new(
                parsed.client().map_err(|e| invalid(e.to_string()))?,
            ))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            Endpoint::Direct(direct_client(url, options).map_err(|e| invalid(e.to_string()))?)
        } else {
            return Err(invalid(
                "the scheme must be redis://, rediss:// or redis-sentinel://".to_string(),
            ));
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
        Ok(Self {
            redacted_url,
            endpoint,
            config,
            connect_timeout: options.connect_timeout,
            cached: Mutex::new(None),
            generation: Default::default(),
        })
    }

    /// The URL with its password hidden: the only form that may be logged.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// The cached connection, or a new one when there is none.
    pub async fn connection(&self) -> Result<Lease, PublishError> {
        let mut cached = self.cached.lock().await;
        if let Some((generation, connection)) = cached.as_ref() {
            return Ok(Lease {
                connection: connection.clone(),
                generation: *generation,
            });
        }
        let connection = self.connect().await?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        *cached = Some((generation, connection.clone()));
        Ok(Lease {
            connection,
            generation,
        })
    }

    /// Forgets `lease`'s connection (if it is still the cached one) so the
    /// next [`Target::connection`] reconnects.
    pub async fn invalidate(&self, lease: &Lease) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|(generation, _)| *generation == lease.generation)
        {
            *cached = None;
        }
    }

    /// Wraps a client error with this destination's redacted URL.
    pub fn error(&self, context: &'static str, source: redis::RedisError) -> PublishError {
        PublishError::Redis {
            url: self.redacted_url.clone(),
            context,
            source,
        }
    }

    /// Runs `command` on the cached connection (connecting if needed). Any
    /// failure but `NOSCRIPT` drops that connection: after a timeout, a reset
    /// or a `READONLY` from a demoted master, only a new connection (and a new
    /// Sentinel lookup) helps.
    pub async fn query<T: FromRedisValue>(
        &self,
        command: &Cmd,
        context: &'static str,
    ) -> Result<T, PublishError> {
        let lease = self.connection().await?;
        let result = self.query_on(&lease, command, context).await;
        if result.as_ref().is_err_and(|e| !e.is_noscript()) {
            self.invalidate(&lease).await;
        }
        result
    }

    /// Runs `command` on `lease`'s connection and leaves the connection alone
    /// whatever happens: a caller with several commands in flight decides
    /// itself when reconnecting cannot reorder them (see [`Target::reset`]).
    pub async fn query_on<T: FromRedisValue>(
        &self,
        lease: &Lease,
        command: &Cmd,
        context: &'static str,
    ) -> Result<T, PublishError> {
        let mut connection = lease.connection.clone();
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(context, e))
    }

    /// Drops the cached connection, whichever it is, so the next
    /// [`Target::connection`] reconnects.
    pub async fn reset(&self) {
        *self.cached.lock().await = None;
    }

    /// PINGs the destination: the health probe.
    pub async fn ping(&self) -> Result<(), PublishError> {
        self.query::<String>(&redis::cmd("PING"), "PING")
            .await
            .map(drop)
    }

    async fn connect(&self) -> Result<MultiplexedConnection, PublishError> {
        let attempt = async {
            match &self.endpoint {
                Endpoint::Direct(client) => {
                    client
                        .get_multiplexed_async_connection_with_config(&self.config)
                        .await
                }
                Endpoint::Sentinel(client) => {
                    client
                        .lock()
                        .await
                        .get_async_connection_with_config(&self.config)
                        .await
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(self.error("connect", e)),
            Err(_) => Err(PublishError::Timeout {
                url: self.redacted_url.clone(),
                context: "connect",
            }),
        }
    }
}

fn direct_client(url: &str, options: &TargetOptions) -> redis::RedisResult<Client> {
    match (&options.tls_ca_pem, url.starts_with("rediss://")) {
        (Some(pem), true) => Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            },
        ),
        _ => Client::open(url),
    }
}

/// Removes `url`'s password from a message that might quote it.
fn scrub(message: &str, url: &str) -> String {
    match SentinelUrl::credentials(url).1 {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_string(),
    }
}

/// The parts of a `redis-sentinel://` URL.
#[derive(Debug, PartialEq, Eq)]
struct SentinelUrl {
    sentinels: Vec<(String, u16)>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    master: String,
}

impl SentinelUrl {
    const DEFAULT_PORT: u16 = 26379;

    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis-sentinel://")
            .ok_or("not a redis-sentinel:// URL")?;
        let rest = rest
            .rsplit_once('@')
            .map_or(rest, |(_, after_userinfo)| after_userinfo);
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (hosts, path) = before_query.split_once('/').unwrap_or((before_query, ""));
        let sentinels = hosts
            .split(',')
            .map(parse_host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let db = match path.trim_end_matches('/') {
            "" => 0,
            db => db
                .parse()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        };
        let master = query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(name, _)| *name == "sentinelMasterId")
            .map(|(_, value)| percent_decode(value))
            .filter(|name| !name.is_empty())
            .ok_or("sentinelMasterId=<master name> is required")?;
        let (username, password) = Self::credentials(url);
        Ok(Self {
            sentinels,
            username,
            password,
            db,
            master,
        })
    }

    /// `(username, password)` from the userinfo of any Redis URL.
    fn credentials(url: &str) -> (Option<String>, Option<String>) {
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        let Some((userinfo, _)) = rest.rsplit_once('@') else {
            return (None, None);
        };
        match userinfo.split_once(':') {
            Some((user, password)) => {
                let user = Some(percent_decode(user)).filter(|u| !u.is_empty());
                (user, Some(percent_decode(password)))
            }
            None => (None, Some(percent_decode(userinfo))),
        }
    }

    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let addrs = self
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(addrs, &self.master, SentinelServerType::Master)?
                .set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    if text.is_empty() {
        return Err("empty Sentinel address".to_string());
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse()
                .map_err(|_| format!("port {port:?} is not a number"))?;
            Ok((host.to_string(), port))
        }
        None => Ok((text.to_string(), SentinelUrl::DEFAULT_PORT)),
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_passwords() {
        let cases = [
            ("redis://localhost:6379", "redis://localhost:6379"),
            (
                "redis://:secret@localhost:6379/2",
                "redis://:***@localhost:6379/2",
            ),
            (
                "rediss://app:s3cr%40t@cache.example:6380",
                "rediss://app:***@cache.example:6380",
            ),
            ("redis://user:pa:ss@h/0", "redis://user:***@h/0"),
            ("redis://user:p@ss@h:1", "redis://user:***@h:1"),
            ("redis://user@h", "redis://***@h"),
            (
                "redis-sentinel://pw@s1:26379,s2:26379/1?sentinelMasterId=m",
                "redis-sentinel://***@s1:26379,s2:26379/1?sentinelMasterId=m",
            ),
            (
                "redis://h/0?password=x&protocol=resp3",
                "redis://h/0?password=***&protocol=resp3",
            ),
            ("not a url:secret@x", "not a url:***@x"),
            ("redis://:pa/ss?@h:1/0", "redis://:***@h:1/0"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn redacted_output_never_contains_the_password() {
        for url in [
            "redis://u:hunter2@h",
            "rediss://:hunter2@h:1/3",
            "redis-sentinel://hunter2@h:1",
        ] {
            assert!(!redact_url(url).contains("hunter2"), "{url}");
        }
    }

    #[test]
    fn sentinel_urls_parse() {
        let parsed = SentinelUrl::parse(
            "redis-sentinel://app:p%40ss@10.0.0.1:26379,sentinel-b/3?sentinelMasterId=mymaster",
        )
        .unwrap();
        assert_eq!(
            parsed,
            SentinelUrl {
                sentinels: vec![("10.0.0.1".into(), 26379), ("sentinel-b".into(), 26379)],
                username: Some("app".into()),
                password: Some("p@ss".into()),
                db: 3,
                master: "mymaster".into(),
            }
        );
        let bare = SentinelUrl::parse("redis-sentinel://pw@h:1?sentinelMasterId=m").unwrap();
        assert_eq!(
            (bare.username, bare.password, bare.db),
            (None, Some("pw".into()), 0)
        );
    }

    #[test]
    fn bad_sentinel_urls_are_rejected() {
        let cases = [
            ("redis-sentinel://h:1", "sentinelMasterId"),
            ("redis-sentinel://h:x?sentinelMasterId=m", "port"),
            ("redis-sentinel://h:1/db?sentinelMasterId=m", "database"),
            ("redis-sentinel://h:1,?sentinelMasterId=m", "empty"),
        ];
        for (url, needle) in cases {
            let err = SentinelUrl::parse(url).unwrap_err();
            assert!(err.contains(needle), "{url}: {err}");
        }
    }

    #[test]
    fn bad_urls_fail_with_the_password_redacted() {
        let options = TargetOptions::default();
        for url in [
            "http://:hunter2@h:1",
            "redis-sentinel://:hunter2@h:1",
            "redis://:hunter2@h:notaport",
        ] {
            let Err(err) = Target::new(url, &options) else {
                panic!("{url} was accepted");
            };
            let text = err.to_string();
            assert!(text.contains("invalid Redis URL"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn good_urls_are_accepted_without_io() {
        let options = TargetOptions::default();
        for url in [
            "redis://127.0.0.1:1",
            "rediss://u:p@cache.example:6380/2",
            "redis-sentinel://h1:1,h2:2/0?sentinelMasterId=m",
        ] {
            let target = Target::new(url, &options).unwrap();
            assert!(!target.redacted_url().contains(":p@"));
        }
    }
}
