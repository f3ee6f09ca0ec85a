//! Prometheus metrics, under oplogtoredis's `otr_*` names where one exists so
//! existing dashboards and alerts keep working after a migration.

use crate::transform::Publication;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Every metric redtail exports, registered in one [`Registry`].
///
/// Cloning is cheap (the handles are reference-counted), so each stage keeps
/// its own copy instead of reaching for a global.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// `otr_oplog_entries_received{database,status}`: entries read, by outcome
    /// (`processed`, `ignored`, `error`).
    pub entries_received: IntCounterVec,
    /// `otr_oplog_entries_received_size{database}`: bytes of entries read.
    pub entries_received_size: IntCounterVec,
    /// `otr_oplog_entries_by_size{database,status}`: entry size distribution.
    pub entries_by_size: HistogramVec,
    /// `otr_oplog_entries_filtered{database}`: entries dropped by the denylist.
    pub entries_filtered: IntCounterVec,
    /// `otr_oplog_last_received_staleness{ordinal}`: age of the last entry read, in
    /// nanoseconds (oplogtoredis's unit).
    pub last_received_staleness: GaugeVec,
    /// `otr_oplog_resume_gap_seconds{status}`: how far back a (re)start resumed.
    pub resume_gap_seconds: HistogramVec,
    /// `otr_oplog_tail_failed_to_start{reason}`: tail attempts that could not start.
    pub tail_failed_to_start: IntCounterVec,
    /// `otr_oplog_unprocessable_changed_fields`: update fields that could not be named.
    pub unprocessable_changed_fields: IntCounter,
    /// `otr_redispub_processed_messages{status}`: publications `sent` or `failed`.
    pub processed_messages: IntCounterVec,
    /// `otr_redispub_temporary_send_failures`: publications whose send was retried.
    pub temporary_send_failures: IntCounter,
    /// `otr_redispub_redis_batch_size{ordinal}`: publications per Redis call.
    pub redis_batch_size: HistogramVec,
    /// `otr_redispub_redis_command_duration_seconds{ordinal}`: Redis call latency.
    pub redis_command_duration: HistogramVec,
    /// `otr_redispub_entry_staleness_seconds{ordinal,status}`: age of an entry when
    /// Redis acknowledged it (`published` or `duplicate`).
    pub entry_staleness: HistogramVec,
    /// `otr_redispub_last_entry_staleness_seconds{ordinal,status}`: the latest such age.
    pub last_entry_staleness: GaugeVec,
    /// `otr_denylist_filter_enabled{db}`: 1 while a database is denylisted.
    pub denylist_filter_enabled: GaugeVec,
    /// `redtail_malformed_entries_total{reason}`: entries skipped because they
    /// could not be decoded.
    pub malformed_entries: IntCounterVec,
    /// `redtail_unencodable_ids_total`: documents whose `_id` type has no encoding.
    pub unencodable_ids: IntCounter,
    /// `redtail_resume_too_old_total{action}`: starts whose stored position was older
    /// than `OTR_MAX_CATCH_UP`, by what was done (`skip_to_end` or `replay`).
    pub resume_too_old: IntCounterVec,
    /// `redtail_source_restarts_total{reason}`: source cursor restarts.
    pub source_restarts: IntCounterVec,
    /// `redtail_oplog_gaps_total`: times the position to resume from had already
    /// been overwritten in the capped oplog, so changes were lost.
    pub oplog_gaps: IntCounter,
    /// `redtail_end_to_end_latency_seconds`: from the entry's `wall` time to
    /// Redis's acknowledgement of its publication.
    pub end_to_end_latency: Histogram,
    /// `redtail_checkpoint_age_seconds`: age of the newest flushed position.
    pub checkpoint_age: Gauge,
    /// `redtail_shard_leases_held`: shards this instance leads (cluster mode).
    pub shard_leases_held: IntGauge,
    /// `redtail_lease_transitions_total{reason}`: shards taken over
    /// (`acquired`), handed off (`released`), or lost (`lost`, `fenced`).
    pub lease_transitions: IntCounterVec,
    /// `redtail_cluster_shards`: the cluster's shard count (cluster mode), so
    /// `max(redtail_cluster_shards) - sum(redtail_shard_leases_held)` counts
    /// shards nobody leads.
    pub cluster_shards: IntGauge,
    /// `redtail_fenced_batches_total`: publish calls refused because the
    /// lease had moved to another instance (their changes are the new
    /// leader's to publish).
    pub fenced_batches: IntCounter,
    /// `redtail_shard_lease_held{shard}`: 1 while this instance leads the
    /// shard, 0 after it stopped (cluster mode), so a dashboard can show
    /// who leads what without asking Redis.
    pub shard_lease_held: IntGaugeVec,
    /// `redtail_takeover_gap_seconds{path}`: from taking a shard over until
    /// its publishing caught up with the stream, by whether the standby
    /// window served it (`window`) or the oplog was read again (`replay`).
    pub takeover_gap: HistogramVec,
    /// `redtail_standby_shards`: shards this instance tails in a window.
    pub standby_shards: IntGauge,
    /// `redtail_standby_window_publications`: publications held in all
    /// standby windows (their memory cost).
    pub standby_window_publications: IntGauge,
    /// `redtail_cluster_stepped_aside`: 1 while this instance stands aside
    /// because MongoDB does not answer it (cluster mode).
    pub stepped_aside: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            entries_received: counter_vec(
                &registry,
                "otr_oplog_entries_received",
                "Oplog entries received, by database and outcome",
                &["database", "status"],
            ),
            entries_received_size: counter_vec(
                &registry,
                "otr_oplog_entries_received_size",
                "Bytes of oplog entries received, by database",
                &["database"],
            ),
            entries_by_size: histogram_vec(
                &registry,
                "otr_oplog_entries_by_size",
                "Size of oplog entries in bytes, by database and outcome",
                &["database", "status"],
                prometheus::exponential_buckets(64.0, 4.0, 10).expect("static buckets"),
            ),
            entries_filtered: counter_vec(
                &registry,
                "otr_oplog_entries_filtered",
                "Oplog entries skipped because their database is denylisted",
                &["database"],
            ),
            last_received_staleness: gauge_vec(
                &registry,
                "otr_oplog_last_received_staleness",
                "Age in nanoseconds of the last oplog entry received",
                &["ordinal"],
            ),
            resume_gap_seconds: histogram_vec(
                &registry,
                "otr_oplog_resume_gap_seconds",
                "How far back in seconds a tail resumed, by whether it could",
                &["status"],
                prometheus::exponential_buckets(0.1, 2.0, 16).expect("static buckets"),
            ),
            tail_failed_to_start: counter_vec(
                &registry,
                "otr_oplog_tail_failed_to_start",
                "Oplog tail attempts that failed to start, by reason",
                &["reason"],
            ),
            unprocessable_changed_fields: counter(
                &registry,
                "otr_oplog_unprocessable_changed_fields",
                "Changed fields of updates that could not be interpreted",
            ),
            processed_messages: counter_vec(
                &registry,
                "otr_redispub_processed_messages",
                "Publications processed by the Redis publisher, by status (sent, failed)",
                &["status"],
            ),
            temporary_send_failures: counter(
                &registry,
                "otr_redispub_temporary_send_failures",
                "Publications whose send to Redis failed and was retried",
            ),
            redis_batch_size: histogram_vec(
                &registry,
                "otr_redispub_redis_batch_size",
                "Publications per Redis script call",
                &["ordinal"],
                prometheus::exponential_buckets(1.0, 2.0, 12).expect("static buckets"),
            ),
            redis_command_duration: histogram_vec(
                &registry,
                "otr_redispub_redis_command_duration_seconds",
                "Duration of Redis publish calls",
                &["ordinal"],
                prometheus::exponential_buckets(0.0001, 2.0, 18).expect("static buckets"),
            ),
            entry_staleness: histogram_vec(
                &registry,
                "otr_redispub_entry_staleness_seconds",
                "Age of oplog entries when Redis acknowledged their publication",
                &["ordinal", "status"],
                prometheus::exponential_buckets(0.0005, 2.0, 18).expect("static buckets"),
            ),
            last_entry_staleness: gauge_vec(
                &registry,
                "otr_redispub_last_entry_staleness_seconds",
                "Age of the last oplog entry acknowledged by Redis",
                &["ordinal", "status"],
            ),
            denylist_filter_enabled: gauge_vec(
                &registry,
                "otr_denylist_filter_enabled",
                "1 while the database is denylisted",
                &["db"],
            ),
            malformed_entries: counter_vec(
                &registry,
                "redtail_malformed_entries_total",
                "Oplog entries skipped because they could not be decoded, by reason",
                &["reason"],
            ),
            unencodable_ids: counter(
                &registry,
                "redtail_unencodable_ids_total",
                "Documents whose _id type has no Meteor EJSON encoding",
            ),
            resume_too_old: counter_vec(
                &registry,
                "redtail_resume_too_old_total",
                "Starts whose stored position was older than OTR_MAX_CATCH_UP, by action",
                &["action"],
            ),
            source_restarts: counter_vec(
                &registry,
                "redtail_source_restarts_total",
                "Restarts of the source cursor, by reason",
                &["reason"],
            ),
            oplog_gaps: counter(
                &registry,
                "redtail_oplog_gaps_total",
                "Resumes whose position had already left the capped oplog (changes lost)",
            ),
            end_to_end_latency: histogram(
                &registry,
                "redtail_end_to_end_latency_seconds",
                "From an oplog entry's wall time to Redis acknowledging its publication",
                prometheus::exponential_buckets(0.0005, 2.0, 18).expect("static buckets"),
            ),
            checkpoint_age: gauge(
                &registry,
                "redtail_checkpoint_age_seconds",
                "Age of the newest position flushed to Redis",
            ),
            shard_leases_held: int_gauge(
                &registry,
                "redtail_shard_leases_held",
                "Shards this instance currently leads (cluster mode)",
            ),
            lease_transitions: counter_vec(
                &registry,
                "redtail_lease_transitions_total",
                "Shard leadership changes of this instance, by reason",
                &["reason"],
            ),
            cluster_shards: int_gauge(
                &registry,
                "redtail_cluster_shards",
                "The cluster's shard count (OTR_CLUSTER_SHARDS), exported by every member",
            ),
            fenced_batches: counter(
                &registry,
                "redtail_fenced_batches_total",
                "Publish calls refused because the shard lease moved to another instance",
            ),
            shard_lease_held: int_gauge_vec(
                &registry,
                "redtail_shard_lease_held",
                "1 while this instance leads the shard (cluster mode)",
                &["shard"],
            ),
            takeover_gap: histogram_vec(
                &registry,
                "redtail_takeover_gap_seconds",
                "From taking a shard over until its publishing caught up, by path (window or replay)",
                &["path"],
                prometheus::exponential_buckets(0.001, 2.0, 16).expect("static buckets"),
            ),
            standby_shards: int_gauge(
                &registry,
                "redtail_standby_shards",
                "Shards this instance stands by for with a window (cluster mode)",
            ),
            standby_window_publications: int_gauge(
                &registry,
                "redtail_standby_window_publications",
                "Publications held in the standby windows",
            ),
            stepped_aside: int_gauge(
                &registry,
                "redtail_cluster_stepped_aside",
                "1 while this instance stands aside because MongoDB does not answer it",
            ),
            registry,
        }
    }

    /// Records publications Redis acknowledged at `now_ms`, each with
    /// whether it was published (`false`: a duplicate its dedup marker
    /// stopped): counts them as sent, observes their staleness for write
    /// lane `lane`, and the end-to-end latency of those published. Shared by
    /// both publishing paths so their figures mean the same.
    pub fn record_acknowledged<'a>(
        &self,
        lane: &str,
        now_ms: i64,
        acknowledged: impl IntoIterator<Item = (&'a Publication, bool)>,
    ) {
        let mut sent = 0;
        for (publication, published) in acknowledged {
            sent += 1;
            let status = if published { "published" } else { "duplicate" };
            let staleness = publication.origin.age_seconds(now_ms);
            self.entry_staleness
                .with_label_values(&[lane, status])
                .observe(staleness);
            self.last_entry_staleness
                .with_label_values(&[lane, status])
                .set(staleness);
            if let (true, Some(wall_ms)) = (published, publication.wall_ms) {
                let latency = (now_ms - wall_ms).max(0) as f64 / 1000.0;
                self.end_to_end_latency.observe(latency);
            }
        }
        self.processed_messages
            .with_label_values(&["sent"])
            .inc_by(sent);
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help).expect("valid metric"))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help).expect("valid metric"))
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, Gauge::new(name, help).expect("valid metric"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(
        registry,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(registry, Histogram::with_opts(opts).expect("valid metric"))
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    register(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_oplogtoredis_names() {
        let m = Metrics::new();
        m.entries_received
            .with_label_values(&["testdb", "processed"])
            .inc();
        m.processed_messages.with_label_values(&["sent"]).inc_by(3);
        let text = m.render();
        assert!(
            text.contains(r#"otr_oplog_entries_received{database="testdb",status="processed"} 1"#)
        );
        assert!(text.contains(r#"otr_redispub_processed_messages{status="sent"} 3"#));
    }
}
