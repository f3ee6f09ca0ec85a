//! Figure 1: how many oplog entries per second the pure transform handles,
//! with no I/O at all, so it can be compared with the end-to-end rate.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bson::{Document, RawDocumentBuf};
use redtail::transform::{TransformSettings, Transformer};
use serde::Deserialize;

/// One measured corpus.
#[derive(Debug, Clone)]
pub struct TransformRate {
    /// Which corpus.
    pub corpus: &'static str,
    /// Entries in one pass over the corpus.
    pub corpus_len: usize,
    /// Entries transformed in total.
    pub entries: u64,
    /// Publications those entries produced.
    pub publications: u64,
    /// Wall time spent.
    pub elapsed: Duration,
}

impl TransformRate {
    /// Entries per second.
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Deserialize)]
struct Fixture {
    entry: Document,
}

/// The fixture entries as raw BSON, converted once so the loop measures only
/// the transform. Deserializing straight into `Document` keeps field order.
pub fn load_fixtures(path: &Path) -> Result<Vec<RawDocumentBuf>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let fixtures: Vec<Fixture> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    fixtures.iter().map(|f| to_raw(&f.entry)).collect()
}

/// Converts documents to raw BSON once.
pub fn to_raw(document: &Document) -> Result<RawDocumentBuf> {
    RawDocumentBuf::try_from(document).context("encoding an entry as BSON")
}

/// Transforms the corpus pass after pass until `budget` is spent (or
/// `max_entries` reached). Each pass gets a fresh transformer, as a restarted
/// tail would, so transaction state never carries from one pass to the next.
pub fn measure(
    corpus: &'static str,
    entries: &[RawDocumentBuf],
    budget: Duration,
    max_entries: u64,
) -> TransformRate {
    let started = Instant::now();
    let mut done = 0u64;
    let mut publications = 0u64;
    while started.elapsed() < budget && done < max_entries && !entries.is_empty() {
        let mut transformer = Transformer::new(TransformSettings::default());
        for entry in entries {
            let outcome = transformer.apply(entry);
            publications += outcome.publications.len() as u64;
            black_box(outcome);
        }
        done += entries.len() as u64;
    }
    TransformRate {
        corpus,
        corpus_len: entries.len(),
        entries: done,
        publications,
        elapsed: started.elapsed(),
    }
}
