//! One complete relay for a test: MongoDB (sim or real), a real
//! `redis-server`, the `redtail` binary between them, and a subscriber
//! listening the way redis-oplog does.

use std::time::Duration;

use bson::Document;
use mongodb::{Client, Collection};

use super::mongo::{TestMongo, unique_db};
use super::redis_server::{RedisServer, Subscriber};
use super::redtail::{Redtail, RedtailOptions};

/// Every piece of a running relay. Fields are public so a test can disturb any of them.
pub struct Relay {
    pub mongo: TestMongo,
    pub redis: RedisServer,
    pub redtail: Redtail,
    pub subscriber: Subscriber,
    pub client: Client,
    /// The test's own database.
    pub db: String,
}

impl Relay {
    /// Starts everything with redtail configured by `env` (extra `OTR_*` variables).
    pub async fn start(test: &str, env: &[(&str, &str)]) -> Relay {
        let mongo = TestMongo::start();
        let redis = RedisServer::start().expect("redis-server starts");
        let subscriber = Subscriber::all(&redis).expect("subscriber connects");
        let redtail = start_redtail(&mongo, &redis, env);
        let client = mongo.client().await;
        Relay {
            mongo,
            redis,
            redtail,
            subscriber,
            client,
            db: unique_db(test),
        }
    }

    /// A collection of the test's database.
    pub fn collection(&self, name: &str) -> Collection<Document> {
        self.client.database(&self.db).collection(name)
    }

    /// The collection channel redis-oplog subscribes to: `<db>.<coll>`.
    pub fn channel(&self, collection: &str) -> String {
        format!("{}.{collection}", self.db)
    }

    /// Messages received on this test's channels, in arrival order, waiting
    /// until `count` arrived (bounded).
    pub async fn wait_for(&self, count: usize) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mine = self.received();
            if mine.len() >= count || tokio::time::Instant::now() >= deadline {
                return mine;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything received so far on this test's channels.
    pub fn received(&self) -> Vec<(String, String)> {
        let prefix = format!("{}.", self.db);
        self.subscriber
            .messages()
            .into_iter()
            .filter(|(channel, _)| channel.starts_with(&prefix))
            .collect()
    }

    /// Starts a second redtail against the same MongoDB and Redis.
    pub fn start_another(&self, env: &[(&str, &str)]) -> Redtail {
        start_redtail(&self.mongo, &self.redis, env)
    }

    /// Replaces the running redtail (already stopped or killed) with a new one.
    pub fn restart_redtail(&mut self, env: &[(&str, &str)]) {
        self.redtail = start_redtail(&self.mongo, &self.redis, env);
    }

    /// A Prometheus sample's value from redtail's `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.redtail, sample)
    }
}

/// Starts redtail against `mongo` and `redis` with extra settings.
pub fn start_redtail(mongo: &TestMongo, redis: &RedisServer, env: &[(&str, &str)]) -> Redtail {
    let mut options = RedtailOptions::new(mongo.url(), redis.url());
    for (key, value) in env {
        options = options.env(key, *value);
    }
    Redtail::start(options)
}

/// Reads one sample, e.g. `otr_redispub_processed_messages{status="sent"}`.
pub fn metric_value(redtail: &Redtail, sample: &str) -> f64 {
    let (status, body) = redtail
        .http_get("/metrics")
        .expect("metrics endpoint answers");
    assert_eq!(status, 200);
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The message redis-oplog expects for a change to a document with a string `_id`.
pub fn message(event: &str, id_json: &str, fields: &[&str]) -> String {
    let fields: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
    format!(
        r#"{{"e":"{event}","d":{{"_id":{id_json}}},"f":[{}]}}"#,
        fields.join(",")
    )
}
