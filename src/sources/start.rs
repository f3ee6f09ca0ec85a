//! Where a tail starts: the stored position, or the end of the oplog.
//!
//! Kept free of I/O so the rules (oplogtoredis's `OTR_MAX_CATCH_UP` cut-off
//! and redtail's replay policy) are table-tested on their own.

use std::time::Duration;

use crate::position::OplogPosition;

/// What to do when the stored position is older than the catch-up limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpPolicy {
    /// Start at the end of the oplog, as oplogtoredis does (changes in the gap
    /// are not published; this is logged and counted).
    SkipToEnd,
    /// Replay from the stored position whatever its age, as far as the oplog
    /// still reaches.
    Replay,
}

/// Where the first cursor of a run begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    /// Resume after this position (`ts > position`).
    After(OplogPosition),
    /// Start after the newest entry currently in the oplog.
    AtEnd(StartReason),
}

/// Why a run starts at the end of the oplog rather than where it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartReason {
    /// No position was stored: a first start.
    NoStoredPosition,
    /// The stored position is older than `OTR_MAX_CATCH_UP` and the policy skips.
    TooFarBehind {
        /// How far behind the stored position was, in seconds.
        gap_seconds: u64,
    },
}

/// Decides where to start from the stored position and the current time.
///
/// `now_secs` is wall-clock seconds since the epoch, comparable with oplog
/// timestamps (both come from wall clocks; the primary's may be skewed, which
/// is why a small negative gap counts as zero).
pub fn plan_start(
    stored: Option<OplogPosition>,
    now_secs: u64,
    max_catch_up: Duration,
    policy: CatchUpPolicy,
) -> StartPlan {
    let Some(position) = stored else {
        return StartPlan::AtEnd(StartReason::NoStoredPosition);
    };
    let gap_seconds = now_secs.saturating_sub(u64::from(position.time));
    if gap_seconds <= max_catch_up.as_secs() || policy == CatchUpPolicy::Replay {
        StartPlan::After(position)
    } else {
        StartPlan::AtEnd(StartReason::TooFarBehind { gap_seconds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn start_plans() {
        let p = |age: u64| OplogPosition::new((NOW - age) as u32, 3);
        let max = Duration::from_secs(120);
        let cases = [
            (
                None,
                CatchUpPolicy::SkipToEnd,
                StartPlan::AtEnd(StartReason::NoStoredPosition),
            ),
            (
                None,
                CatchUpPolicy::Replay,
                StartPlan::AtEnd(StartReason::NoStoredPosition),
            ),
            (Some(p(5)), CatchUpPolicy::SkipToEnd, StartPlan::After(p(5))),
            (
                Some(p(120)),
                CatchUpPolicy::SkipToEnd,
                StartPlan::After(p(120)),
            ),
            (
                Some(p(121)),
                CatchUpPolicy::SkipToEnd,
                StartPlan::AtEnd(StartReason::TooFarBehind { gap_seconds: 121 }),
            ),
            (
                Some(p(3600)),
                CatchUpPolicy::Replay,
                StartPlan::After(p(3600)),
            ),
        ];
        for (stored, policy, expected) in cases {
            assert_eq!(
                plan_start(stored, NOW, max, policy),
                expected,
                "{stored:?} {policy:?}"
            );
        }
    }

    #[test]
    fn clock_skew_counts_as_no_gap() {
        let ahead = OplogPosition::new((NOW + 30) as u32, 1);
        let plan = plan_start(
            Some(ahead),
            NOW,
            Duration::from_secs(0),
            CatchUpPolicy::SkipToEnd,
        );
        assert_eq!(plan, StartPlan::After(ahead));
    }
}
