//! Whether this instance can reach MongoDB, as a `watch` of `bool`.
//!
//! A cluster leader that cannot read MongoDB holds its shards back for as
//! long as the outage lasts, although its standbys may read fine: its leases
//! stay renewed through Redis. Cluster mode follows this watch and steps the
//! instance aside (its shards go to the standbys) while it reads `false`.
//!
//! The probe is a `ping` to the nearest member, not to the primary: during
//! an election no instance can read the primary's oplog, so stepping
//! everyone aside would only add a rejoin delay to the election's.

use std::time::Duration;

use bson::doc;
use mongodb::Client;
use mongodb::options::{ReadPreference, SelectionCriteria};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the probe runs.
#[derive(Debug, Clone, Copy)]
pub struct ReachabilitySettings {
    /// Time between probes (also each probe's time limit).
    pub interval: Duration,
    /// MongoDB counts as unreachable once no probe succeeded for this long.
    pub unreachable_after: Duration,
}

/// Starts probing `client` until `shutdown`; the watch starts `true` and
/// turns `false` after `unreachable_after` without a successful probe, back
/// to `true` at the next success.
pub fn watch_reachability(
    client: Client,
    settings: ReachabilitySettings,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (reachable, receiver) = watch::channel(true);
    tokio::spawn(async move {
        let mut last_success = Instant::now();
        let mut ticker = tokio::time::interval(settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let answered = tokio::select! {
                _ = shutdown.cancelled() => return,
                answered = ping_nearest(&client, settings.interval) => answered,
            };
            if answered {
                last_success = Instant::now();
            }
            let now_reachable = answered || last_success.elapsed() < settings.unreachable_after;
            reachable.send_if_modified(|current| {
                let changed = *current != now_reachable;
                if changed {
                    log_change(now_reachable, last_success.elapsed());
                }
                *current = now_reachable;
                changed
            });
        }
    });
    receiver
}

/// Whether any member of the deployment answers a `ping` within `timeout`.
async fn ping_nearest(client: &Client, timeout: Duration) -> bool {
    let nearest = SelectionCriteria::ReadPreference(ReadPreference::Nearest { options: None });
    let admin = client.database("admin");
    let ping = admin
        .run_command(doc! { "ping": 1 })
        .selection_criteria(nearest);
    matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_)))
}

fn log_change(reachable: bool, since_success: Duration) {
    if reachable {
        tracing::info!("MongoDB answers again");
    } else {
        tracing::warn!(
            silent_ms = since_success.as_millis() as u64,
            "MongoDB does not answer this instance"
        );
    }
}
