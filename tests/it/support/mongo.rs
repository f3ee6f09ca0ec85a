//! The MongoDB a test writes to: mongo-sim in-process, or the real replica set
//! named by `OTR_TEST_MONGO_URL` (so the same suite checks the real thing).

use std::sync::atomic::{AtomicU32, Ordering};

use mongo_sim::{MongoSim, MongoVersion, SimOptions};
use mongodb::Client;

/// A MongoDB for one test.
pub enum TestMongo {
    /// Our simulator, private to the test.
    Sim(MongoSim),
    /// A real replica set shared by tests; each test uses its own database.
    Real(String),
}

impl TestMongo {
    /// mongo-sim (MongoDB 7.0 behaviour) unless `OTR_TEST_MONGO_URL` is set.
    pub fn start() -> Self {
        Self::start_version(MongoVersion::V7_0)
    }

    /// Like [`TestMongo::start`], imitating a given server version.
    pub fn start_version(version: MongoVersion) -> Self {
        match std::env::var("OTR_TEST_MONGO_URL") {
            Ok(url) if !url.is_empty() => Self::Real(url),
            _ => Self::Sim(
                MongoSim::start(SimOptions {
                    version,
                    ..SimOptions::default()
                })
                .expect("mongo-sim starts on a free port"),
            ),
        }
    }

    /// The connection string redtail and the test's writer use.
    pub fn url(&self) -> String {
        match self {
            Self::Sim(sim) => sim.url(),
            Self::Real(url) => url.clone(),
        }
    }

    /// The simulator, for fault injection; None against a real server, where
    /// tests that need faults say so and skip.
    pub fn sim(&self) -> Option<&MongoSim> {
        match self {
            Self::Sim(sim) => Some(sim),
            Self::Real(_) => None,
        }
    }

    /// A driver client for writing test data.
    pub async fn client(&self) -> Client {
        Client::with_uri_str(self.url())
            .await
            .expect("valid MongoDB URL")
    }
}

/// A database name no other test (or earlier run against a real server) uses.
pub fn unique_db(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("rt_{test}_{}_{n}", std::process::id())
}

/// Prints why a fault-injection test did nothing against a real server.
pub fn skip_without_sim(test: &str) {
    eprintln!("{test}: needs mongo-sim's fault injection; skipped against OTR_TEST_MONGO_URL");
}
