//! A warm standby's window: the recent publications of one shard this
//! instance stands by for, kept in memory so that taking the shard over
//! publishes from here instead of reading the oplog again.
//!
//! The window is only worth anything if it is *complete*: it must hold every
//! publication of the shard after some position, or a takeover from a
//! checkpoint inside it would skip changes. It becomes complete when the
//! stream is known to carry all of the shard's entries (the source's query
//! stopped leaving its namespaces out) and stays so until they are left out
//! again. Evicting the oldest publication (the window is bounded) or trimming
//! what the leader's checkpoint covers only moves the start of the complete
//! range forward. Pure bookkeeping, no I/O.

use std::collections::VecDeque;

use crate::position::OplogPosition;
use crate::transform::Publication;

/// The window of one standby shard.
#[derive(Debug, Clone)]
pub struct StandbyWindow {
    /// Every publication of the shard after this position, up to
    /// `seen_upto`, is held; `None` while the window is not complete.
    complete_after: Option<OplogPosition>,
    /// The newest stream position read while complete: publications at or
    /// before it are not added again when the source reads again from an
    /// older position.
    seen_upto: Option<OplogPosition>,
    entries: VecDeque<(OplogPosition, Publication)>,
    capacity: usize,
}

/// What a takeover gets from a complete window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTakeover {
    /// The shard's publications after the checkpoint, oldest first: publish
    /// them before anything else of the shard.
    pub publications: Vec<Publication>,
    /// Everything of the shard at or before this position is published
    /// (by the old leader, or with `publications`).
    pub handled_upto: OplogPosition,
}

impl StandbyWindow {
    /// A window that is not complete yet: it holds nothing until
    /// [`StandbyWindow::complete_from`].
    pub fn incomplete(capacity: usize) -> Self {
        Self {
            complete_after: None,
            seen_upto: None,
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A window complete from `stream_at`: every entry after it will be read.
    pub fn complete_from(stream_at: OplogPosition, capacity: usize) -> Self {
        let mut window = Self::incomplete(capacity);
        window.restart_at(stream_at);
        window
    }

    /// Whether the window holds every publication after some position.
    pub fn is_complete(&self) -> bool {
        self.complete_after.is_some()
    }

    /// Publications held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The stream is complete again from `stream_at` (its namespaces are
    /// back in the query); an already complete window is left as it is.
    pub fn include_from(&mut self, stream_at: OplogPosition) {
        if !self.is_complete() {
            self.restart_at(stream_at);
        }
    }

    /// The source's query leaves the shard's namespaces out: the stream no
    /// longer carries all of its entries.
    pub fn invalidate(&mut self) {
        self.complete_after = None;
        self.seen_upto = None;
        self.entries.clear();
    }

    fn restart_at(&mut self, stream_at: OplogPosition) {
        self.complete_after = Some(stream_at);
        self.seen_upto = Some(stream_at);
        self.entries.clear();
    }

    /// A publication of the shard from the entry at `position`. Call
    /// [`StandbyWindow::advance`] once the entry's publications are recorded.
    pub fn record(&mut self, position: OplogPosition, publication: Publication) {
        if !self.is_complete() || self.seen_upto.is_some_and(|seen| position <= seen) {
            return;
        }
        self.entries.push_back((position, publication));
        while self.entries.len() > self.capacity {
            if let Some((evicted, _)) = self.entries.pop_front() {
                self.complete_after = self.complete_after.max(Some(evicted));
            }
        }
    }

    /// The stream has read every entry up to `position`.
    pub fn advance(&mut self, position: OplogPosition) {
        if self.is_complete() {
            self.seen_upto = self.seen_upto.max(Some(position));
        }
    }

    /// Drops what the leader's `checkpoint` covers: it will never be needed.
    pub fn trim(&mut self, checkpoint: OplogPosition) {
        if !self.is_complete() {
            return;
        }
        while self
            .entries
            .front()
            .is_some_and(|(position, _)| *position <= checkpoint)
        {
            self.entries.pop_front();
        }
        self.complete_after = self.complete_after.max(Some(checkpoint));
    }

    /// Takes the shard over from `checkpoint`: the publications after it,
    /// if the window holds all of them, or `None` when the oplog must be
    /// read again (the window is incomplete or starts after the checkpoint).
    pub fn take_over(self, checkpoint: OplogPosition) -> Option<WindowTakeover> {
        let (complete_after, seen_upto) = (self.complete_after?, self.seen_upto?);
        if complete_after > checkpoint {
            return None;
        }
        let publications = self
            .entries
            .into_iter()
            .filter(|(position, _)| *position > checkpoint)
            .map(|(_, publication)| publication)
            .collect();
        Some(WindowTakeover {
            publications,
            handled_upto: seen_upto.max(checkpoint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(i: u32) -> OplogPosition {
        OplogPosition::new(100, i)
    }

    fn publication(i: u32) -> Publication {
        Publication {
            channels: vec!["db.c".to_owned(), format!("db.c::{i}")],
            message: format!(r#"{{"e":"i","d":{{"_id":"{i}"}}}}"#),
            origin: p(i),
            tx_index: 0,
            wall_ms: None,
            namespace: "db.c".to_owned(),
        }
    }

    /// Feeds entries `positions` in order, each with one publication.
    fn feed(window: &mut StandbyWindow, positions: impl IntoIterator<Item = u32>) {
        for i in positions {
            window.record(p(i), publication(i));
            window.advance(p(i));
        }
    }

    fn published(takeover: Option<WindowTakeover>) -> Option<(Vec<u32>, u32)> {
        takeover.map(|t| {
            let ids = t
                .publications
                .iter()
                .map(|pb| pb.origin.increment)
                .collect();
            (ids, t.handled_upto.increment)
        })
    }

    #[test]
    fn takeovers_table() {
        // (capacity, entries fed, trimmed at, checkpoint) -> (published, handled_upto)
        type Case = (usize, u32, Option<u32>, u32, Option<(Vec<u32>, u32)>);
        let cases: [Case; 7] = [
            (10, 6, None, 3, Some((vec![4, 5, 6], 6))),
            (10, 6, None, 0, Some((vec![1, 2, 3, 4, 5, 6], 6))),
            (10, 6, None, 6, Some((vec![], 6))),
            // The old leader got further than this standby has read.
            (10, 6, None, 9, Some((vec![], 9))),
            // Evicted 1 and 2: a checkpoint at 1 needs 2, which is gone.
            (4, 6, None, 1, None),
            (4, 6, None, 2, Some((vec![3, 4, 5, 6], 6))),
            // Trimmed at the leader's checkpoint 4; it later reached 5.
            (10, 6, Some(4), 5, Some((vec![6], 6))),
        ];
        for (capacity, fed, trimmed, checkpoint, want) in cases {
            let mut window = StandbyWindow::complete_from(p(0), capacity);
            feed(&mut window, 1..=fed);
            if let Some(at) = trimmed {
                window.trim(p(at));
            }
            assert_eq!(
                published(window.take_over(p(checkpoint))),
                want,
                "capacity {capacity}, fed {fed}, trimmed {trimmed:?}, checkpoint {checkpoint}"
            );
        }
    }

    #[test]
    fn a_checkpoint_older_than_a_trim_needs_the_oplog() {
        // Only after a Redis data loss can the checkpoint go backwards.
        let mut window = StandbyWindow::complete_from(p(0), 10);
        feed(&mut window, 1..=6);
        window.trim(p(4));
        assert_eq!(window.len(), 2);
        assert_eq!(published(window.take_over(p(2))), None);
    }

    #[test]
    fn a_window_complete_from_after_the_checkpoint_needs_the_oplog() {
        let mut window = StandbyWindow::complete_from(p(5), 10);
        feed(&mut window, 6..=8);
        assert_eq!(published(window.clone().take_over(p(4))), None);
        assert_eq!(published(window.take_over(p(5))), Some((vec![6, 7, 8], 8)));
    }

    #[test]
    fn an_incomplete_window_holds_nothing_until_included() {
        let mut window = StandbyWindow::incomplete(10);
        feed(&mut window, 1..=3);
        assert!(window.is_empty());
        assert_eq!(published(window.clone().take_over(p(9))), None);
        window.include_from(p(3));
        feed(&mut window, 4..=5);
        assert_eq!(published(window.take_over(p(3))), Some((vec![4, 5], 5)));
    }

    #[test]
    fn excluded_namespaces_invalidate_and_inclusion_restarts() {
        let mut window = StandbyWindow::complete_from(p(0), 10);
        feed(&mut window, 1..=3);
        window.invalidate();
        feed(&mut window, 4..=5);
        assert!(!window.is_complete());
        window.include_from(p(5));
        feed(&mut window, 6..=7);
        assert_eq!(published(window.clone().take_over(p(3))), None);
        assert_eq!(published(window.take_over(p(5))), Some((vec![6, 7], 7)));
    }

    #[test]
    fn entries_read_again_after_a_rewind_are_not_added_twice() {
        let mut window = StandbyWindow::complete_from(p(0), 10);
        feed(&mut window, 1..=4);
        // Another shard's takeover made the source read again from 2.
        feed(&mut window, 3..=6);
        assert_eq!(
            published(window.take_over(p(0))),
            Some((vec![1, 2, 3, 4, 5, 6], 6))
        );
    }

    #[test]
    fn a_transaction_publishes_several_changes_at_one_position() {
        let mut window = StandbyWindow::complete_from(p(0), 10);
        window.record(p(1), publication(1));
        let mut second = publication(1);
        second.tx_index = 1;
        window.record(p(1), second);
        window.advance(p(1));
        let takeover = window.take_over(p(0)).expect("complete");
        let indexes: Vec<u32> = takeover.publications.iter().map(|pb| pb.tx_index).collect();
        assert_eq!(indexes, vec![0, 1]);
    }

    #[test]
    fn including_a_complete_window_keeps_what_it_holds() {
        let mut window = StandbyWindow::complete_from(p(0), 10);
        feed(&mut window, 1..=2);
        window.include_from(p(2));
        assert_eq!(published(window.take_over(p(0))), Some((vec![1, 2], 2)));
    }
}
