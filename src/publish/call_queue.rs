//! Cutting queued batches into script calls: pure logic, no I/O.
//!
//! The tail hands over [`PublishBatch`]es of any size (one oplog entry, one
//! transaction, or none at all when entries were skipped). Redis is called
//! with up to `batch_size` publications at a time, taken from whatever is
//! already queued: nothing waits for a batch to fill (no linger), so latency
//! stays that of one round trip when traffic is light, and calls grow by
//! themselves when it is heavy.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::PublishBatch;
use crate::position::OplogPosition;
use crate::transform::Publication;

/// One script call's worth of publications, and the position it completes.
#[derive(Debug, Clone)]
pub struct Call {
    segments: Vec<(Arc<PublishBatch>, Range<usize>)>,
    /// Set when this call finishes at least one batch: once this call and every
    /// earlier one are acknowledged, the tail may resume after this position.
    pub resume: Option<OplogPosition>,
}

impl Call {
    /// The publications, in order.
    pub fn publications(&self) -> impl Iterator<Item = &Publication> + Clone {
        self.segments
            .iter()
            .flat_map(|(batch, range)| &batch.publications[range.clone()])
    }

    /// How many publications the call carries (0 for a call that only moves
    /// the position: it is acknowledged without talking to Redis).
    pub fn len(&self) -> usize {
        self.segments.iter().map(|(_, range)| range.len()).sum()
    }

    /// Whether the call carries no publication.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Batches waiting to be cut into calls, oldest first.
#[derive(Debug)]
pub struct CallQueue {
    pending: VecDeque<(Arc<PublishBatch>, usize)>,
    batch_size: usize,
}

impl CallQueue {
    /// `batch_size` is the most publications per call (at least 1).
    pub fn new(batch_size: usize) -> Self {
        Self {
            pending: VecDeque::new(),
            batch_size: batch_size.max(1),
        }
    }

    /// Queues a batch behind the others.
    pub fn push(&mut self, batch: Arc<PublishBatch>) {
        self.pending.push_back((batch, 0));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next call, taking batches from `more` (without waiting) whenever the
    /// queue runs dry. `None` when there is nothing to do.
    pub fn next_call(
        &mut self,
        mut more: impl FnMut() -> Option<Arc<PublishBatch>>,
    ) -> Option<Call> {
        let mut call = Call {
            segments: Vec::new(),
            resume: None,
        };
        let mut taken = 0;
        while taken < self.batch_size {
            if self.pending.is_empty() {
                match more() {
                    Some(batch) => self.push(batch),
                    None => break,
                }
            }
            taken += self.take_from_front(&mut call, self.batch_size - taken);
        }
        // A full call may still close batches that carry no publication.
        loop {
            if self.pending.is_empty() {
                match more() {
                    Some(batch) => self.push(batch),
                    None => break,
                }
            }
            let front_is_done = self
                .pending
                .front()
                .is_some_and(|(batch, next)| *next == batch.publications.len());
            if !front_is_done {
                break;
            }
            self.take_from_front(&mut call, 0);
        }
        (taken > 0 || call.resume.is_some()).then_some(call)
    }

    /// Moves up to `room` publications of the front batch into `call`, and the
    /// batch's resume position too when that finishes it.
    fn take_from_front(&mut self, call: &mut Call, room: usize) -> usize {
        let Some((batch, next)) = self.pending.front_mut() else {
            return 0;
        };
        let end = batch.publications.len().min(*next + room);
        let taken = end - *next;
        if taken > 0 {
            call.segments.push((Arc::clone(batch), *next..end));
        }
        *next = end;
        if end == batch.publications.len() {
            if let Some(position) = batch.resume_position {
                call.resume = Some(position);
            }
            self.pending.pop_front();
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u32, count: u32, resume: Option<u32>) -> Arc<PublishBatch> {
        let publications = (first..first + count)
            .map(|i| Publication {
                channels: vec!["db.c".to_string()],
                message: format!("m{i}"),
                origin: OplogPosition::new(i, 0),
                tx_index: 0,
                wall_ms: None,
                namespace: "db.c".to_string(),
            })
            .collect();
        Arc::new(PublishBatch {
            publications,
            resume_position: resume.map(|t| OplogPosition::new(t, 0)),
        })
    }

    /// A call as (messages, resume time).
    type CallShape = (Vec<String>, Option<u32>);

    /// Drains `batches` through a queue of `batch_size`, feeding one batch per
    /// refill, and describes each call as (messages, resume time).
    fn cut(batch_size: usize, batches: Vec<Arc<PublishBatch>>) -> Vec<CallShape> {
        let mut queue = CallQueue::new(batch_size);
        let mut source = batches.into_iter();
        let mut calls = Vec::new();
        for _ in 0..100 {
            let Some(call) = queue.next_call(|| source.next()) else {
                break;
            };
            let messages = call.publications().map(|p| p.message.clone()).collect();
            calls.push((messages, call.resume.map(|p| p.time)));
        }
        calls
    }

    fn msgs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn calls_are_cut_at_batch_size_across_batches() {
        let cases: Vec<(usize, Vec<Arc<PublishBatch>>, Vec<CallShape>)> = vec![
            // One publication per call (oplogtoredis's default).
            (
                1,
                vec![batch(1, 2, Some(2))],
                vec![(msgs(&["m1"]), None), (msgs(&["m2"]), Some(2))],
            ),
            // Several batches merged into one call; the last finished one's position wins.
            (
                10,
                vec![
                    batch(1, 1, Some(1)),
                    batch(2, 2, Some(3)),
                    batch(4, 1, None),
                ],
                vec![(msgs(&["m1", "m2", "m3", "m4"]), Some(3))],
            ),
            // A batch split across calls completes its position only in the last piece.
            (
                2,
                vec![batch(1, 3, Some(3)), batch(4, 1, Some(4))],
                vec![(msgs(&["m1", "m2"]), None), (msgs(&["m3", "m4"]), Some(4))],
            ),
            // A position-only batch rides along with a full call...
            (
                1,
                vec![batch(1, 1, Some(1)), batch(0, 0, Some(5))],
                vec![(msgs(&["m1"]), Some(5))],
            ),
            // ...or becomes a call of its own.
            (1, vec![batch(0, 0, Some(5))], vec![(vec![], Some(5))]),
            // Empty batches without a position produce nothing.
            (
                3,
                vec![batch(0, 0, None), batch(1, 1, None)],
                vec![(msgs(&["m1"]), None)],
            ),
        ];
        for (batch_size, batches, expected) in cases {
            assert_eq!(
                cut(batch_size, batches),
                expected,
                "batch_size {batch_size}"
            );
        }
    }

    #[test]
    fn nothing_queued_means_no_call() {
        let mut queue = CallQueue::new(4);
        assert!(queue.next_call(|| None).is_none());
        assert!(queue.is_empty());
    }

    #[test]
    fn the_refill_is_only_asked_when_the_queue_runs_dry() {
        let mut queue = CallQueue::new(2);
        queue.push(batch(1, 3, Some(3)));
        let mut asked = 0;
        let call = queue.next_call(|| {
            asked += 1;
            None
        });
        assert_eq!(call.map(|c| c.len()), Some(2));
        assert_eq!(asked, 0);
        assert!(!queue.is_empty());
    }
}
