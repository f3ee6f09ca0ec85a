//! What this instance knows about one shard it leads: pure bookkeeping,
//! no I/O, so the takeover and replay rules are unit-tested on their own.

use ::cluster::LeaseToken;

use crate::position::OplogPosition;

/// One led shard.
#[derive(Debug, Clone)]
pub struct ShardState {
    /// The lease token every publish of this shard is fenced with.
    pub token: LeaseToken,
    /// Entries at or before this position are done for this shard
    /// (published, or published by an earlier leader: the checkpoint).
    pub handled_upto: Option<OplogPosition>,
    /// Set while the stream is past the checkpoint this shard resumes from:
    /// records are ignored until the source has gone back to it.
    pub awaiting_replay_from: Option<OplogPosition>,
    /// The last checkpoint a publish of this shard carried, so idle shards
    /// are checkpointed only when the stream moved.
    pub checkpointed: Option<OplogPosition>,
}

impl ShardState {
    /// A shard taken over at `checkpoint`. With a checkpoint, it waits for
    /// the source to read again from there: the source may already have read
    /// past it with a query that left this shard's namespaces out (another
    /// instance published them), so what the stream holds is not enough.
    /// Without one (nothing read yet anywhere), it takes everything.
    pub fn taken_over(token: LeaseToken, checkpoint: Option<OplogPosition>) -> Self {
        Self {
            token,
            handled_upto: checkpoint,
            awaiting_replay_from: checkpoint,
            checkpointed: checkpoint,
        }
    }

    /// A shard taken over at `checkpoint` from a complete standby window:
    /// the window's publications cover everything up to `handled_upto`, so
    /// the shard goes on live from there without reading the oplog again.
    pub fn resumed_from_window(
        token: LeaseToken,
        checkpoint: OplogPosition,
        handled_upto: OplogPosition,
    ) -> Self {
        Self {
            token,
            handled_upto: Some(handled_upto.max(checkpoint)),
            awaiting_replay_from: None,
            checkpointed: Some(checkpoint),
        }
    }

    /// Whether the entry at `position` is this shard's to publish now.
    pub fn wants(&self, position: Option<OplogPosition>) -> bool {
        if self.awaiting_replay_from.is_some() {
            return false;
        }
        match (position, self.handled_upto) {
            (Some(position), Some(done)) => position > done,
            _ => true,
        }
    }

    /// The source restarted after `from`: a shard waiting for a replay from
    /// a position at or after it can start.
    pub fn replay_started(&mut self, from: OplogPosition) {
        if self
            .awaiting_replay_from
            .is_some_and(|wanted| from <= wanted)
        {
            self.awaiting_replay_from = None;
        }
    }

    /// Records that the entry at `position` was handled for this shard.
    pub fn handled(&mut self, position: OplogPosition) {
        if self.awaiting_replay_from.is_none() && self.handled_upto.is_none_or(|d| position > d) {
            self.handled_upto = Some(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> LeaseToken {
        LeaseToken {
            epoch: 3,
            token: "3:abc".to_owned(),
        }
    }

    fn p(i: u32) -> Option<OplogPosition> {
        Some(OplogPosition::new(100, i))
    }

    #[test]
    fn a_takeover_waits_for_the_source_to_read_again_from_the_checkpoint() {
        let mut state = ShardState::taken_over(token(), p(5));
        assert!(!state.wants(p(10)), "records before the replay are ignored");
        state.handled(OplogPosition::new(100, 10));
        assert_eq!(state.handled_upto, p(5), "ignored records are not handled");
        state.replay_started(OplogPosition::new(100, 7));
        assert!(
            !state.wants(p(8)),
            "a replay from after the checkpoint does not count"
        );
        state.replay_started(OplogPosition::new(100, 2));
        assert!(!state.wants(p(5)), "what the checkpoint covers is skipped");
        assert!(state.wants(p(6)));
    }

    #[test]
    fn a_replay_starting_exactly_at_the_checkpoint_counts() {
        let mut state = ShardState::taken_over(token(), p(5));
        state.replay_started(OplogPosition::new(100, 5));
        assert!(state.wants(p(6)));
    }

    #[test]
    fn replayed_entries_already_handled_are_skipped() {
        let mut state = ShardState::taken_over(token(), p(1));
        state.replay_started(OplogPosition::new(100, 1));
        for i in 2..=8 {
            state.handled(OplogPosition::new(100, i));
        }
        assert!(
            !state.wants(p(4)),
            "read again after another shard's rewind"
        );
        assert!(state.wants(p(9)));
    }

    #[test]
    fn a_takeover_from_a_window_goes_on_live_after_what_the_window_held() {
        let state = ShardState::resumed_from_window(
            token(),
            OplogPosition::new(100, 5),
            OplogPosition::new(100, 9),
        );
        assert_eq!(state.awaiting_replay_from, None);
        assert!(!state.wants(p(9)), "the window published it");
        assert!(state.wants(p(10)));
        assert_eq!(state.checkpointed, p(5));
    }

    #[test]
    fn no_checkpoint_takes_everything_from_now_on() {
        let state = ShardState::taken_over(token(), None);
        assert_eq!(state.awaiting_replay_from, None);
        assert!(state.wants(p(4)));
    }
}
