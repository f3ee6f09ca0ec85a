//! Durations in Go's `time.ParseDuration` syntax.
//!
//! oplogtoredis reads its durations with Go, so deployments carry values such
//! as `1s`, `500ms`, `1m30s` or `1.5h`. redtail accepts exactly that language
//! (instead of humantime's, which differs on fractions and unit spellings) so
//! an existing environment file keeps its meaning. Two deliberate departures:
//! negative durations are refused (no setting has a use for them) and a bare
//! number other than Go's special `0` is an error, as in Go.

use std::time::Duration;

/// Why a text is not a duration; shown to the operator after the setting's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not in Go's syntax at all.
    #[error("expected a duration like 120s, 500ms or 1m30s")]
    Syntax,
    /// A number without a unit, which Go rejects (except `0`).
    #[error("missing unit: expected a duration like 120s, 500ms or 1m30s")]
    MissingUnit,
    /// A unit Go does not know.
    #[error("unknown unit {0:?}: use ns, us, ms, s, m or h")]
    UnknownUnit(String),
    /// Starts with `-`.
    #[error("must not be negative")]
    Negative,
    /// Does not fit in a duration.
    #[error("too large")]
    Overflow,
}

const NANOS_PER_UNIT: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),  // micro sign
    ("\u{3bc}s", 1_000), // Greek small letter mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration (`300ms`, `1.5h`, `2h45m`, `0`) that is not negative.
pub fn parse_go_duration(text: &str) -> Result<Duration, DurationError> {
    let rest = match text.as_bytes().first() {
        Some(b'-') => return Err(DurationError::Negative),
        Some(b'+') => &text[1..],
        Some(_) => text,
        None => return Err(DurationError::Syntax),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u128 = 0;
    let mut remaining = rest;
    while !remaining.is_empty() {
        let (nanos, tail) = parse_term(remaining)?;
        total = total.checked_add(nanos).ok_or(DurationError::Overflow)?;
        remaining = tail;
    }
    // Go caps durations at i64 nanoseconds; staying inside keeps values portable.
    if total > i64::MAX as u128 {
        return Err(DurationError::Overflow);
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Parses one `<number><unit>` term, returning its nanoseconds and the rest.
fn parse_term(text: &str) -> Result<(u128, &str), DurationError> {
    let int_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (int_part, after_int) = text.split_at(int_end);
    let (frac_part, after_number) = match after_int.strip_prefix('.') {
        Some(after_dot) => {
            let end = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            after_dot.split_at(end)
        }
        None => ("", after_int),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(DurationError::Syntax);
    }
    let unit_end = after_number
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(after_number.len());
    let (unit, rest) = after_number.split_at(unit_end);
    if unit.is_empty() {
        return Err(DurationError::MissingUnit);
    }
    let scale = NANOS_PER_UNIT
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, scale)| *scale)
        .ok_or_else(|| DurationError::UnknownUnit(unit.to_owned()))?;
    let whole: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| DurationError::Overflow)?
    };
    let mut nanos = whole.checked_mul(scale).ok_or(DurationError::Overflow)?;
    // Fractions are truncated at nanosecond precision, like Go.
    let mut place = scale;
    for digit in frac_part.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        nanos += u128::from(digit - b'0') * place;
    }
    Ok((nanos, rest))
}

/// Formats a duration the way Go's `Duration.String` would for whole units,
/// so defaults in help and docs read like the values operators write.
pub fn format_go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn accepts_go_syntax() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1s", ms(1_000)),
            ("120s", ms(120_000)),
            ("500ms", ms(500)),
            ("1m30s", ms(90_000)),
            ("2h", ms(7_200_000)),
            ("2h45m", ms(9_900_000)),
            ("1.5h", ms(5_400_000)),
            (".5s", ms(500)),
            ("1.s", ms(1_000)),
            ("1.0001s", Duration::from_micros(1_000_100)),
            ("300us", Duration::from_micros(300)),
            ("300\u{b5}s", Duration::from_micros(300)),
            ("300\u{3bc}s", Duration::from_micros(300)),
            ("7ns", Duration::from_nanos(7)),
            ("1h1m1s1ms1us1ns", Duration::from_nanos(3_661_001_001_001)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("0.0000000019s", Duration::from_nanos(1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), Ok(*want), "{text:?}");
        }
    }

    #[test]
    fn rejects_what_go_rejects_and_negatives() {
        let cases: &[(&str, DurationError)] = &[
            ("", DurationError::Syntax),
            ("+", DurationError::Syntax),
            ("s", DurationError::Syntax),
            (".s", DurationError::Syntax),
            ("abc", DurationError::Syntax),
            ("120", DurationError::MissingUnit),
            ("1.5", DurationError::MissingUnit),
            ("1s5", DurationError::MissingUnit),
            ("10 s", DurationError::UnknownUnit(" s".into())),
            ("5sec", DurationError::UnknownUnit("sec".into())),
            ("3d", DurationError::UnknownUnit("d".into())),
            ("1S", DurationError::UnknownUnit("S".into())),
            ("-1s", DurationError::Negative),
            ("-0", DurationError::Negative),
            ("9999999999999h", DurationError::Overflow),
            (
                "99999999999999999999999999999999999999999h",
                DurationError::Overflow,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text).as_ref(), Err(want), "{text:?}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["1s", "120s", "150s", "500ms", "1m30s", "2h", "0s", "7ns"] {
            let parsed = parse_go_duration(text).unwrap();
            assert_eq!(
                parse_go_duration(&format_go_duration(parsed)),
                Ok(parsed),
                "{text}"
            );
        }
        assert_eq!(format_go_duration(ms(90_000)), "1m30s");
        assert_eq!(format_go_duration(ms(500)), "500ms");
    }
}
