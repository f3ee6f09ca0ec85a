//! A position in the oplog, in the encoding oplogtoredis stores in Redis.

use std::fmt;

/// A point in MongoDB's oplog: the `ts` Timestamp of an entry.
///
/// oplogtoredis stores positions and dedup keys as the decimal `u64`
/// `(T << 32) | I`; redtail keeps that encoding so both can share Redis keys
/// during a migration. Ordering is the oplog's own order (`T`, then `I`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OplogPosition {
    /// Seconds since the Unix epoch (`Timestamp.t`).
    pub time: u32,
    /// Ordinal of the entry within that second (`Timestamp.i`).
    pub increment: u32,
}

impl OplogPosition {
    /// Builds a position from its two halves.
    pub const fn new(time: u32, increment: u32) -> Self {
        Self { time, increment }
    }

    /// The `(T << 32) | I` encoding used in oplogtoredis's Redis keys.
    pub const fn as_u64(self) -> u64 {
        ((self.time as u64) << 32) | self.increment as u64
    }

    /// Inverse of [`OplogPosition::as_u64`].
    pub const fn from_u64(value: u64) -> Self {
        Self {
            time: (value >> 32) as u32,
            increment: value as u32,
        }
    }

    /// Seconds from this position's oplog time (whole seconds) to `now_ms`
    /// (Unix milliseconds), never negative: how stale a change or a
    /// checkpoint is, for the staleness and checkpoint-age metrics.
    pub fn age_seconds(self, now_ms: i64) -> f64 {
        (now_ms - i64::from(self.time) * 1000).max(0) as f64 / 1000.0
    }

    /// Parses the decimal form stored under `lastProcessedEntry` keys.
    pub fn parse_decimal(text: &str) -> Option<Self> {
        text.trim().parse::<u64>().ok().map(Self::from_u64)
    }
}

impl From<bson::Timestamp> for OplogPosition {
    fn from(ts: bson::Timestamp) -> Self {
        Self {
            time: ts.time,
            increment: ts.increment,
        }
    }
}

impl From<OplogPosition> for bson::Timestamp {
    fn from(p: OplogPosition) -> Self {
        bson::Timestamp {
            time: p.time,
            increment: p.increment,
        }
    }
}

/// Displays the decimal `(T << 32) | I` form, exactly as written to Redis.
impl fmt::Display for OplogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_oplogtoredis() {
        // oplogtoredis's own unit test vector: T=1234, I=5678.
        assert_eq!(OplogPosition::new(1234, 5678).to_string(), "5299989648942");
    }

    #[test]
    fn age_table() {
        let p = OplogPosition::new(1_700_000_000, 9);
        let cases = [
            (1_700_000_000_000, 0.0),
            (1_700_000_002_500, 2.5),
            // A clock behind the primary's reads as no age, not negative.
            (1_699_999_999_000, 0.0),
        ];
        for (now_ms, want) in cases {
            assert_eq!(p.age_seconds(now_ms), want, "{now_ms}");
        }
    }

    #[test]
    fn round_trips_and_orders() {
        let p = OplogPosition::new(1_700_000_000, 42);
        assert_eq!(OplogPosition::from_u64(p.as_u64()), p);
        assert_eq!(OplogPosition::parse_decimal(&p.to_string()), Some(p));
        assert!(OplogPosition::new(5, 1) > OplogPosition::new(4, 9));
        assert!(OplogPosition::new(5, 2) > OplogPosition::new(5, 1));
        assert_eq!(OplogPosition::parse_decimal("x"), None);
    }
}
