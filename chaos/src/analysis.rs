//! The verdict on one scenario, computed from what was written, what was
//! heard and which epoch published it. Pure: no I/O, table-tested.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::publish_audit::message_id;
use crate::subscriber::Delivery;
use crate::writer::Written;

/// One change as heard: (first delivered, acknowledged, publishing epoch).
type Heard = (Instant, Instant, Option<u64>);

/// A fault's time and the shards it affected, with the epochs they had.
#[derive(Debug, Clone)]
pub struct FaultMark {
    /// When it was injected.
    pub at: Instant,
    /// Shard -> the epoch its lease had at that moment.
    pub shards: BTreeMap<u16, u64>,
}

/// Delivery figures of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    /// Acknowledged writes.
    pub written: usize,
    /// Writes heard on both their channels.
    pub delivered: usize,
    /// Messages heard more than once (same channel and payload), extra copies.
    pub duplicates: usize,
    /// Some duplicated messages (channel, id, time between the copies).
    pub duplicate_examples: Vec<String>,
    /// Writes missing on at least one channel.
    pub lost: usize,
    /// The lost writes' ids.
    pub lost_ids: Vec<String>,
    /// Some lost writes, for the report.
    pub lost_examples: Vec<String>,
    /// Per shard, the largest extra gap between consecutive deliveries.
    pub gaps: BTreeMap<u16, Duration>,
    /// Epoch regressions in delivery order (cluster mode).
    pub epoch_regressions: Vec<String>,
    /// Delivered changes whose publishing epoch is known.
    pub epochs_known: usize,
    /// Fault to first new-epoch delivery, worst affected shard.
    pub takeover: Option<Duration>,
    /// Affected shards that never saw a new-epoch delivery.
    pub not_taken_over: Vec<u16>,
}

impl Findings {
    /// Largest per-shard gap.
    pub fn max_gap(&self) -> Duration {
        self.gaps.values().copied().max().unwrap_or_default()
    }

    /// The p99 (nearest rank) of the per-shard gaps.
    pub fn p99_gap(&self) -> Duration {
        let mut gaps: Vec<Duration> = self.gaps.values().copied().collect();
        gaps.sort();
        percentile(&gaps, 0.99)
    }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The first delivery of each (channel, id), the duplicate count and a few
/// duplicated messages.
fn first_deliveries(
    deliveries: &[Delivery],
) -> (HashMap<(String, String), Instant>, usize, Vec<String>) {
    let mut seen: HashMap<(&str, &str), Instant> = HashMap::new();
    let mut duplicates = 0;
    let mut examples = Vec::new();
    let mut first = HashMap::new();
    for d in deliveries {
        let Some(id) = message_id(&d.payload) else {
            continue;
        };
        if let Some(earlier) = seen.get(&(d.channel.as_str(), d.payload.as_str())) {
            duplicates += 1;
            if examples.len() < 5 {
                examples.push(format!(
                    "{} {} again after {:?}",
                    d.channel,
                    d.payload,
                    d.at - *earlier
                ));
            }
        } else {
            seen.insert((d.channel.as_str(), d.payload.as_str()), d.at);
        }
        first.entry((d.channel.clone(), id)).or_insert(d.at);
    }
    (first, duplicates, examples)
}

/// Analyses one scenario. `epochs` maps ids to their dedup values; they are
/// checked only when `cluster` is on (outside it the value is a constant).
/// `generations` are the instants Redis lost its data: epochs restart there,
/// so their order is checked within each generation only.
pub fn analyse(
    written: &[Written],
    deliveries: &[Delivery],
    epochs: &HashMap<String, String>,
    cluster: bool,
    fault: Option<&FaultMark>,
    generations: &[Instant],
) -> Findings {
    let (first, duplicates, duplicate_examples) = first_deliveries(deliveries);
    let mut findings = Findings {
        written: written.len(),
        duplicates,
        duplicate_examples,
        ..Findings::default()
    };
    // (delivered at, written at, epoch) per shard, for gaps and epochs.
    let mut per_shard: BTreeMap<u16, Vec<Heard>> = BTreeMap::new();
    for w in written {
        let on_collection = first.get(&(w.ns.clone(), w.id.clone()));
        let on_document = first.get(&(format!("{}::{}", w.ns, w.id), w.id.clone()));
        match (on_collection, on_document) {
            (Some(&at), Some(_)) => {
                findings.delivered += 1;
                let epoch = epochs.get(&w.id).and_then(|v| v.parse::<u64>().ok());
                per_shard
                    .entry(w.shard)
                    .or_default()
                    .push((at, w.at, epoch));
            }
            _ => {
                findings.lost += 1;
                findings.lost_ids.push(w.id.clone());
                if findings.lost_examples.len() < 5 {
                    findings
                        .lost_examples
                        .push(format!("{} in {} (shard {})", w.id, w.ns, w.shard));
                }
            }
        }
    }
    for (shard, list) in &mut per_shard {
        list.sort_by_key(|(delivered, _, _)| *delivered);
        findings.gaps.insert(*shard, largest_extra_gap(list));
        if cluster {
            check_epochs(*shard, list, generations, &mut findings);
        }
    }
    if let (true, Some(fault)) = (cluster, fault) {
        takeover(&per_shard, fault, &mut findings);
    }
    findings
}

/// The largest `Δdelivery − Δwrite` over consecutive deliveries: how much
/// longer than the writes' own spacing the shard went without a publish (so
/// a pause of the writer, e.g. during a Mongo step-down, is not counted).
fn largest_extra_gap(list: &[Heard]) -> Duration {
    list.windows(2)
        .map(|pair| {
            let delivered = pair[1].0 - pair[0].0;
            let written = pair[1].1.saturating_duration_since(pair[0].1);
            delivered.saturating_sub(written)
        })
        .max()
        .unwrap_or_default()
}

fn check_epochs(shard: u16, list: &[Heard], generations: &[Instant], findings: &mut Findings) {
    let mut highest: Option<u64> = None;
    let mut generation = 0;
    for (at, _, epoch) in list {
        let now_in = generations.iter().filter(|g| **g <= *at).count();
        if now_in != generation {
            generation = now_in;
            highest = None;
        }
        let Some(epoch) = *epoch else { continue };
        findings.epochs_known += 1;
        if let Some(h) = highest.filter(|h| epoch < *h) {
            findings.epoch_regressions.push(format!(
                "shard {shard}: epoch {epoch} published after epoch {h}"
            ));
        }
        highest = Some(highest.unwrap_or(0).max(epoch));
    }
}

fn takeover(per_shard: &BTreeMap<u16, Vec<Heard>>, fault: &FaultMark, findings: &mut Findings) {
    let mut worst = None;
    for (shard, old_epoch) in &fault.shards {
        let first_new = per_shard.get(shard).and_then(|list| {
            list.iter()
                .find(|(at, _, epoch)| *at >= fault.at && epoch.is_some_and(|e| e > *old_epoch))
                .map(|(at, _, _)| *at - fault.at)
        });
        match first_new {
            Some(t) => worst = Some(worst.map_or(t, |w: Duration| w.max(t))),
            None => findings.not_taken_over.push(*shard),
        }
    }
    findings.takeover = worst;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    fn write(id: &str, shard: u16, at: Instant) -> Written {
        Written {
            id: id.to_string(),
            ns: format!("db.c{shard}"),
            shard,
            at,
        }
    }

    fn heard(w: &Written, at: Instant) -> Vec<Delivery> {
        let payload = format!(r#"{{"e":"i","d":{{"_id":"{}"}},"f":["_id"]}}"#, w.id);
        vec![
            Delivery {
                at,
                channel: w.ns.clone(),
                payload: payload.clone(),
            },
            Delivery {
                at,
                channel: format!("{}::{}", w.ns, w.id),
                payload,
            },
        ]
    }

    #[test]
    fn loss_duplicates_and_gaps() {
        let t = Instant::now();
        let w: Vec<Written> = (0..4)
            .map(|i| write(&format!("w{i}"), 0, ms(t, i * 100)))
            .collect();
        let mut d = Vec::new();
        d.extend(heard(&w[0], ms(t, 5)));
        d.extend(heard(&w[1], ms(t, 105)));
        d.extend(heard(&w[1], ms(t, 106))); // duplicates: two extra copies
        d.extend(heard(&w[2], ms(t, 905))); // 700 ms late
        d.push(heard(&w[3], ms(t, 910)).remove(0)); // only one channel: lost
        let f = analyse(&w, &d, &HashMap::new(), false, None, &[]);
        assert_eq!((f.written, f.delivered, f.lost, f.duplicates), (4, 3, 1, 2));
        assert_eq!(f.max_gap(), Duration::from_millis(700));
        assert_eq!(f.lost_examples, vec!["w3 in db.c0 (shard 0)".to_string()]);
        // Only data messages count as duplicates.
        let mut released = d.clone();
        for _ in 0..2 {
            released.push(Delivery {
                at: ms(t, 950),
                channel: "p::cluster:released".into(),
                payload: "3".into(),
            });
        }
        assert_eq!(
            analyse(&w, &released, &HashMap::new(), false, None, &[]).duplicates,
            2
        );
    }

    #[test]
    fn epochs_must_not_go_back_and_takeover_is_timed() {
        let t = Instant::now();
        let w: Vec<Written> = (0..4)
            .map(|i| write(&format!("w{i}"), 1, ms(t, i * 10)))
            .collect();
        let mut d = Vec::new();
        for (i, at) in [0u64, 10, 500, 510].iter().enumerate() {
            d.extend(heard(&w[i], ms(t, *at)));
        }
        let cases = [
            (["1", "1", "2", "2"], 0, Some(Duration::from_millis(400))),
            (["1", "2", "1", "2"], 1, Some(Duration::from_millis(410))),
            (["1", "1", "1", "1"], 0, None),
        ];
        for (values, regressions, takeover) in cases {
            let epochs: HashMap<String, String> = w
                .iter()
                .zip(values)
                .map(|(w, v)| (w.id.clone(), v.to_string()))
                .collect();
            let fault = FaultMark {
                at: ms(t, 100),
                shards: BTreeMap::from([(1, 1)]),
            };
            let f = analyse(&w, &d, &epochs, true, Some(&fault), &[]);
            assert_eq!(f.epoch_regressions.len(), regressions, "{values:?}");
            // A new generation between the 2nd and 3rd delivery forgives a restart.
            let g = analyse(&w, &d, &epochs, true, None, &[ms(t, 200)]);
            assert_eq!(g.epoch_regressions.len(), 0, "{values:?}");
            assert_eq!(f.takeover, takeover, "{values:?}");
            assert_eq!(f.not_taken_over.is_empty(), takeover.is_some());
            assert_eq!(f.epochs_known, 4);
        }
    }

    #[test]
    fn percentiles_table() {
        let d = |n: u64| Duration::from_millis(n);
        let cases = [
            (vec![], 0.99, d(0)),
            (vec![d(1)], 0.99, d(1)),
            ((1..=100).map(d).collect::<Vec<_>>(), 0.99, d(99)),
            ((1..=16).map(d).collect::<Vec<_>>(), 0.5, d(8)),
        ];
        for (values, q, expected) in cases {
            assert_eq!(percentile(&values, q), expected);
        }
    }
}
