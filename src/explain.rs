//! `redtail explain [FILE]`: what would redtail publish for these oplog entries?
//!
//! An operator debugging a missed update pastes the entry (from `mongosh`,
//! `mongoexport` or `bsondump`, in canonical or relaxed Extended JSON) and sees
//! the exact channels and message string, or why nothing is published. It
//! runs the same [`Transformer`] as the live pipeline, with no MongoDB or
//! Redis involved, so what it prints is what the service would do.
//!
//! Input is either a JSON array of entries (detected by a leading `[`) or a
//! sequence of entries, one per line or pretty-printed over several lines
//! (an entry ends where its braces balance; a `{` in the first column always
//! starts a new one, so a broken entry cannot swallow the next). Every entry gets at least one output line, in order; a bad
//! entry gets a `skipped` line with its reason and the next one is still read.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::str::FromStr;

use bson::{Document, RawDocumentBuf};
use thiserror::Error;

use crate::transform::{
    EntryOutcome, SkipReason, TransformSettings, Transformer, write_json_string,
};

/// How `explain` prints its findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExplainFormat {
    /// One JSON object per line: `{"channels":[..],"message":".."}` per
    /// publication, `{"skipped":"<reason>"}` for an entry that publishes
    /// nothing. Stable, for scripts and tests.
    Json,
    /// Readable text for people.
    #[default]
    Text,
}

impl FromStr for ExplainFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!("unknown format {other:?} (expected json or text)")),
        }
    }
}

impl fmt::Display for ExplainFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Text => "text",
        })
    }
}

/// Counts over one `explain` run (the CLI may print them or set its exit code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExplainSummary {
    /// Entries read, readable or not.
    pub entries: u64,
    /// Publications printed.
    pub publications: u64,
    /// Entries that publish nothing (malformed ones included).
    pub skipped: u64,
    /// Entries that could not be read at all or failed the transform.
    pub malformed: u64,
    /// Update description parts that yielded no field name.
    pub unprocessable_fields: u64,
    /// Transactions still waiting for their commit at the end of the input.
    pub open_transactions: u64,
}

/// Why `explain` stopped before the end of its input.
#[derive(Debug, Error)]
pub enum ExplainError {
    /// The input could not be read.
    #[error("reading the oplog entries: {0}")]
    Read(#[source] io::Error),
    /// The output could not be written (e.g. a closed pipe).
    #[error("writing the explanation: {0}")]
    Write(#[source] io::Error),
}

/// Reads oplog entries from `input`, transforms them with `settings` and
/// writes what would be published to `out` in `format`.
pub fn run_explain(
    mut input: impl BufRead,
    settings: &TransformSettings,
    format: ExplainFormat,
    out: &mut impl Write,
) -> Result<ExplainSummary, ExplainError> {
    let mut run = Explainer {
        transformer: Transformer::new(*settings),
        format,
        summary: ExplainSummary::default(),
        line: String::with_capacity(256),
    };
    if first_meaningful_byte(&mut input)? == Some(b'[') {
        let mut text = String::new();
        input
            .read_to_string(&mut text)
            .map_err(ExplainError::Read)?;
        let (elements, problem) = split_json_array(&text);
        for element in elements {
            run.entry_text(element, out)?;
        }
        if let Some(problem) = problem {
            run.unreadable(&format!("malformed: {problem}"), out)?;
        }
    } else {
        let mut bytes = Vec::new();
        let mut pending = PendingEntry::default();
        loop {
            bytes.clear();
            if input
                .read_until(b'\n', &mut bytes)
                .map_err(ExplainError::Read)?
                == 0
            {
                break;
            }
            let Ok(line) = std::str::from_utf8(&bytes) else {
                if let Some(text) = pending.take() {
                    run.entry_text(&text, out)?;
                }
                run.unreadable("malformed: line is not UTF-8", out)?;
                continue;
            };
            // A `{` in the first column starts a new entry: whatever is
            // still open before it was a broken entry of its own.
            if line.starts_with('{')
                && let Some(text) = pending.take()
            {
                run.entry_text(&text, out)?;
            }
            if pending.is_empty() && line.trim().is_empty() {
                continue;
            }
            if let Some(text) = pending.push(line) {
                run.entry_text(&text, out)?;
            }
        }
        if let Some(text) = pending.take() {
            run.entry_text(&text, out)?;
        }
    }
    run.summary.open_transactions = run.transformer.open_transactions() as u64;
    if format == ExplainFormat::Text {
        run.write_text_summary(out)?;
    }
    out.flush().map_err(ExplainError::Write)?;
    Ok(run.summary)
}

struct Explainer {
    transformer: Transformer,
    format: ExplainFormat,
    summary: ExplainSummary,
    /// Reused output buffer for one line.
    line: String,
}

impl Explainer {
    fn entry_text(&mut self, text: &str, out: &mut impl Write) -> Result<(), ExplainError> {
        match parse_entry(text) {
            Ok(raw) => {
                let outcome = self.transformer.apply(&raw);
                self.outcome(&outcome, out)
            }
            Err(reason) => self.unreadable(&reason, out),
        }
    }

    fn unreadable(&mut self, reason: &str, out: &mut impl Write) -> Result<(), ExplainError> {
        self.summary.entries += 1;
        self.summary.skipped += 1;
        self.summary.malformed += 1;
        self.line.clear();
        match self.format {
            ExplainFormat::Json => push_skipped_json(&mut self.line, reason),
            ExplainFormat::Text => {
                self.line.push_str(&format!(
                    "entry {}: skipped: {reason}\n",
                    self.summary.entries
                ));
            }
        }
        out.write_all(self.line.as_bytes())
            .map_err(ExplainError::Write)
    }

    fn outcome(
        &mut self,
        outcome: &EntryOutcome,
        out: &mut impl Write,
    ) -> Result<(), ExplainError> {
        self.summary.entries += 1;
        self.summary.publications += outcome.publications.len() as u64;
        self.summary.unprocessable_fields += u64::from(outcome.unprocessable_fields);
        if outcome.publications.is_empty() {
            self.summary.skipped += 1;
        }
        if outcome
            .skip
            .as_ref()
            .is_some_and(|skip| matches!(skip.reason, SkipReason::Malformed(_)))
        {
            self.summary.malformed += 1;
        }
        let reason = outcome
            .skip
            .as_ref()
            .map_or_else(|| "nothing to publish".to_owned(), |skip| skip.to_string());
        self.line.clear();
        match self.format {
            ExplainFormat::Json => {
                for publication in &outcome.publications {
                    self.line.push_str(r#"{"channels":["#);
                    for (index, channel) in publication.channels.iter().enumerate() {
                        if index > 0 {
                            self.line.push(',');
                        }
                        write_json_string(&mut self.line, channel);
                    }
                    self.line.push_str(r#"],"message":"#);
                    write_json_string(&mut self.line, &publication.message);
                    self.line.push_str("}\n");
                }
                if outcome.publications.is_empty() {
                    push_skipped_json(&mut self.line, &reason);
                }
            }
            ExplainFormat::Text => self.push_text(outcome, &reason),
        }
        out.write_all(self.line.as_bytes())
            .map_err(ExplainError::Write)
    }

    fn push_text(&mut self, outcome: &EntryOutcome, reason: &str) {
        use std::fmt::Write as _;
        let line = &mut self.line;
        let _ = write!(line, "entry {}", self.summary.entries);
        if let Some(position) = outcome.position {
            let _ = write!(line, " (ts {}:{})", position.time, position.increment);
        }
        if outcome.publications.is_empty() {
            let _ = writeln!(line, ": skipped: {reason}");
        } else {
            let _ = writeln!(line, ": {} publication(s)", outcome.publications.len());
        }
        for publication in &outcome.publications {
            let _ = writeln!(
                line,
                "  publish to {}  [dedup {}::{}]",
                publication.channels.join(" and "),
                publication.origin,
                publication.tx_index
            );
            let _ = writeln!(line, "    {}", publication.message);
        }
        for skip in &outcome.operation_skips {
            match skip.tx_index {
                Some(index) => {
                    let _ = writeln!(line, "  operation {index} skipped: {}", skip.reason);
                }
                None => {
                    let _ = writeln!(line, "  operation skipped: {}", skip.reason);
                }
            }
        }
        if outcome.unprocessable_fields > 0 {
            let _ = writeln!(
                line,
                "  {} update part(s) gave no field name",
                outcome.unprocessable_fields
            );
        }
    }

    fn write_text_summary(&mut self, out: &mut impl Write) -> Result<(), ExplainError> {
        let summary = &self.summary;
        let mut text = format!(
            "{} entries: {} publication(s), {} skipped ({} malformed)\n",
            summary.entries, summary.publications, summary.skipped, summary.malformed
        );
        if summary.open_transactions > 0 {
            text.push_str(&format!(
                "{} transaction(s) still waiting for their commit at the end of the input\n",
                summary.open_transactions
            ));
        }
        out.write_all(text.as_bytes()).map_err(ExplainError::Write)
    }
}

/// Gathers the lines of one entry: a single line usually, several when the
/// entry is pretty-printed (a document whose braces close on a later line).
#[derive(Default)]
struct PendingEntry {
    text: String,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl PendingEntry {
    /// Adds a line; returns the entry's text once its braces balance.
    fn push(&mut self, line: &str) -> Option<String> {
        self.text.push_str(line);
        for byte in line.bytes() {
            if self.in_string {
                match (self.escaped, byte) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        if self.depth == 0 && !self.in_string {
            self.take()
        } else {
            None
        }
    }

    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The text gathered so far, if any, leaving the buffer empty.
    fn take(&mut self) -> Option<String> {
        let text = std::mem::take(&mut self.text);
        *self = Self::default();
        (!text.trim().is_empty()).then_some(text)
    }
}

fn push_skipped_json(line: &mut String, reason: &str) {
    line.push_str(r#"{"skipped":"#);
    write_json_string(line, reason);
    line.push_str("}\n");
}

/// Parses one entry in canonical or relaxed Extended JSON, keeping field
/// order (which `f` depends on). Errors are ready-made skip reasons.
fn parse_entry(text: &str) -> Result<RawDocumentBuf, String> {
    let text = text.trim();
    if !text.starts_with('{') {
        return Err("malformed: not a JSON object".to_owned());
    }
    // Deserializing straight into a bson Document goes through bson's
    // Extended JSON visitor in document order; a serde_json::Value would sort keys.
    let document: Document = serde_json::from_str(text)
        .map_err(|error| format!("malformed: invalid Extended JSON: {error}"))?;
    RawDocumentBuf::try_from(&document)
        .map_err(|error| format!("malformed: not encodable as BSON: {error}"))
}

/// Skips leading whitespace and returns the first other byte, unconsumed.
fn first_meaningful_byte(input: &mut impl BufRead) -> Result<Option<u8>, ExplainError> {
    loop {
        let buffer = input.fill_buf().map_err(ExplainError::Read)?;
        if buffer.is_empty() {
            return Ok(None);
        }
        match buffer.iter().position(|byte| !byte.is_ascii_whitespace()) {
            Some(index) => {
                let byte = buffer[index];
                input.consume(index);
                return Ok(Some(byte));
            }
            None => {
                let length = buffer.len();
                input.consume(length);
            }
        }
    }
}

/// Splits the text of a JSON array into its elements' texts without parsing
/// them, so one bad element does not hide the others. Also returns a problem
/// with the array itself (unterminated, trailing text), if any.
fn split_json_array(text: &str) -> (Vec<&str>, Option<&'static str>) {
    let text = text.trim_start();
    let bytes = text.as_bytes();
    let mut elements = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = 1;
    for (index, &byte) in bytes.iter().enumerate().skip(1) {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b']' if depth == 0 => {
                let last = text[start..index].trim();
                if !last.is_empty() || !elements.is_empty() {
                    elements.push(last);
                }
                let trailing = text[index + 1..].trim();
                return (
                    elements,
                    (!trailing.is_empty()).then_some("text after the end of the JSON array"),
                );
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                elements.push(text[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
    }
    let rest = text.get(start..).unwrap_or("").trim();
    if !rest.is_empty() {
        elements.push(rest);
    }
    (elements, Some("unterminated JSON array"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSERT: &str = r#"{"ts":{"$timestamp":{"t":1582277156,"i":1}},"op":"i","ns":"zz.test","o":{"_id":{"$oid":"5e4fa224a6717632d6ee2e85"},"kick":1}}"#;
    const INSERT_OUT: &str = r#"{"channels":["zz.test","zz.test::5e4fa224a6717632d6ee2e85"],"message":"{\"e\":\"i\",\"d\":{\"_id\":{\"$type\":\"oid\",\"$value\":\"5e4fa224a6717632d6ee2e85\"}},\"f\":[\"_id\",\"kick\"]}"}"#;
    // Relaxed Extended JSON, as mongosh prints it.
    const RELAXED_UPDATE: &str = r#"{"ts":{"$timestamp":{"t":5,"i":1}},"op":"u","ns":"db.c","o2":{"_id":"5e4fa224a6717632d6ee2e85"},"o":{"$v":2,"diff":{"sb":{"i":{"d":2}},"u":{"z":1.5}}},"wall":{"$date":"2023-08-05T18:11:46.936Z"}}"#;
    const NOOP: &str =
        r#"{"op":"n","ns":"","o":{"msg":"periodic noop"},"ts":{"$timestamp":{"t":1,"i":1}}}"#;

    fn explain(
        input: &str,
        settings: TransformSettings,
        format: ExplainFormat,
    ) -> (String, ExplainSummary) {
        let mut out = Vec::new();
        let summary = run_explain(input.as_bytes(), &settings, format, &mut out).unwrap();
        (String::from_utf8(out).unwrap(), summary)
    }

    fn json_lines(input: &str) -> Vec<String> {
        explain(input, TransformSettings::default(), ExplainFormat::Json)
            .0
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn prints_publications_and_skips_one_per_line() {
        let input = format!("{INSERT}\n\n{NOOP}\n");
        assert_eq!(json_lines(&input), [INSERT_OUT, r#"{"skipped":"no-op"}"#]);
    }

    #[test]
    fn reads_pretty_printed_entries() {
        let pretty = "{\n  \"ts\": {\"$timestamp\": {\"t\": 1582277156, \"i\": 1}},\n  \"op\": \"i\",\n  \"ns\": \"zz.test\",\n  \"o\": {\n    \"_id\": {\"$oid\": \"5e4fa224a6717632d6ee2e85\"},\n    \"kick\": 1\n  }\n}\n";
        let input = format!("{pretty}{NOOP}\n{pretty}");
        assert_eq!(
            json_lines(&input),
            [INSERT_OUT, r#"{"skipped":"no-op"}"#, INSERT_OUT]
        );
    }

    #[test]
    fn reads_a_json_array_the_same_way() {
        let input = format!("  [\n{INSERT},\n {NOOP} ]\n");
        assert_eq!(json_lines(&input), [INSERT_OUT, r#"{"skipped":"no-op"}"#]);
        assert!(json_lines("[]").is_empty());
    }

    #[test]
    fn reads_relaxed_extended_json_keeping_field_order() {
        let settings = TransformSettings {
            extract_subfield_changes: true,
            ..Default::default()
        };
        let (out, _) = explain(RELAXED_UPDATE, settings, ExplainFormat::Json);
        let expected = r#"{"channels":["db.c","db.c::-5e4fa224a6717632d6ee2e85"],"message":"{\"e\":\"u\",\"d\":{\"_id\":\"5e4fa224a6717632d6ee2e85\"},\"f\":[\"b.d\",\"z\"]}"}"#;
        assert_eq!(out.trim_end(), expected);
    }

    #[test]
    fn keeps_going_after_bad_entries() {
        // A line that is not an object, an entry cut short (its braces never
        // close before the next entry starts), one without `ts`, a good one.
        let input = format!(
            "not json\n{{\"op\": \n{{\"op\":\"i\",\"ns\":\"a.b\",\"o\":{{\"_id\":1}}}}\n{INSERT}\n"
        );
        let (out, summary) = explain(&input, TransformSettings::default(), ExplainFormat::Json);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert_eq!(lines[0], r#"{"skipped":"malformed: not a JSON object"}"#);
        assert!(
            lines[1].starts_with(r#"{"skipped":"malformed: invalid Extended JSON: "#),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], r#"{"skipped":"malformed: missing field ts"}"#);
        assert_eq!(lines[3], INSERT_OUT);
        assert_eq!(
            summary,
            ExplainSummary {
                entries: 4,
                publications: 1,
                skipped: 3,
                malformed: 3,
                ..Default::default()
            }
        );
    }

    #[test]
    fn reports_a_broken_array_after_its_good_elements() {
        let input = format!("[{INSERT}, {{\"bad\": ]");
        let lines = json_lines(&input);
        assert_eq!(lines[0], INSERT_OUT);
        assert!(
            lines[1].starts_with(r#"{"skipped":"malformed: invalid Extended JSON"#),
            "{}",
            lines[1]
        );
        let lines = json_lines(&format!("[{INSERT}"));
        assert_eq!(
            lines,
            [
                INSERT_OUT,
                r#"{"skipped":"malformed: unterminated JSON array"}"#
            ]
        );
        let lines = json_lines(&format!("[{INSERT}] x"));
        assert_eq!(
            lines,
            [
                INSERT_OUT,
                r#"{"skipped":"malformed: text after the end of the JSON array"}"#
            ]
        );
    }

    #[test]
    fn splits_arrays_without_being_fooled_by_strings() {
        let (elements, problem) = split_json_array(r#"[{"a":"],\"{"}, {"b":[1,{"c":2}]} ,{}]"#);
        assert_eq!(elements, [r#"{"a":"],\"{"}"#, r#"{"b":[1,{"c":2}]}"#, "{}"]);
        assert_eq!(problem, None);
    }

    #[test]
    fn text_format_is_readable() {
        let input = format!("{INSERT}\n{NOOP}\n");
        let (out, summary) = explain(&input, TransformSettings::default(), ExplainFormat::Text);
        assert!(
            out.contains("entry 1 (ts 1582277156:1): 1 publication(s)"),
            "{out}"
        );
        assert!(
            out.contains("publish to zz.test and zz.test::5e4fa224a6717632d6ee2e85"),
            "{out}"
        );
        assert!(out.contains("entry 2 (ts 1:1): skipped: no-op"), "{out}");
        assert!(
            out.contains("2 entries: 1 publication(s), 1 skipped (0 malformed)"),
            "{out}"
        );
        assert_eq!(summary.publications, 1);
    }

    include!("../testdata/expected_explain_lines.rs");

    fn expected_fixture_lines() -> Vec<String> {
        expected_explain_lines(
            include_str!("../testdata/oplog_entries.json"),
            include_str!("../testdata/oplog_expected.json"),
        )
    }

    #[test]
    fn explains_every_fixture_in_one_run() {
        let input = include_str!("../testdata/explain_input.jsonl");
        let (out, summary) = explain(input, TransformSettings::default(), ExplainFormat::Json);
        let lines: Vec<String> = out.lines().map(str::to_owned).collect();
        assert_eq!(lines, expected_fixture_lines());
        assert_eq!(summary.entries, 45);
        assert_eq!(summary.open_transactions, 0);
        // The same entries as one JSON array give the same lines.
        let array = format!("[{}]", input.lines().collect::<Vec<_>>().join(",\n"));
        let (out_array, _) = explain(&array, TransformSettings::default(), ExplainFormat::Json);
        assert_eq!(out_array, out);
    }

    #[test]
    fn parses_formats() {
        assert_eq!("json".parse::<ExplainFormat>(), Ok(ExplainFormat::Json));
        assert_eq!("text".parse::<ExplainFormat>(), Ok(ExplainFormat::Text));
        assert!("xml".parse::<ExplainFormat>().is_err());
    }
}
