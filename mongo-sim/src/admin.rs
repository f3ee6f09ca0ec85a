//! The simulator's own admin commands (`mongoSim*` on the `admin` database),
//! so tests written in any language, or a shell, can inject faults and read
//! counters over the wire, not only through the Rust library API.
//!
//! Forms accepted:
//! - `{mongoSimFault: "stepDown" | "refuseConnections" | "pause", seconds: N}` (or `ms: N`)
//! - `{mongoSimFault: "latency", ms: N}` (0 turns it off)
//! - `{mongoSimFault: "closeConnections"}`, `{mongoSimFault: "clear"}`
//! - `{mongoSimFault: "truncateOplog", keep: N}`
//! - `{mongoSimOplogCapacity: <bytes>}`
//! - `{mongoSimAppendOplog: <entry> | [<entry>, ...]}`
//! - `{mongoSimCounters: 1, [reset: true]}`

use std::time::Duration;

use bson::{Bson, Document};

use crate::engine::CommandError;

/// A parsed `mongoSim*` command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AdminCommand {
    /// Inject or clear a fault.
    Fault(FaultAction),
    /// Change the oplog capacity in bytes.
    OplogCapacity(usize),
    /// Append raw entries to the oplog.
    AppendOplog(Vec<Document>),
    /// Read the counters, then optionally zero them.
    Counters { reset: bool },
}

/// One fault to inject.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FaultAction {
    StepDown(Duration),
    CloseConnections,
    RefuseConnections(Duration),
    Latency(Duration),
    Pause(Duration),
    TruncateOplog { keep: usize },
    Clear,
}

/// Whether a command name belongs to this module.
pub(crate) fn is_admin_command(name: &str) -> bool {
    matches!(
        name,
        "mongoSimFault" | "mongoSimOplogCapacity" | "mongoSimAppendOplog" | "mongoSimCounters"
    )
}

fn bad_value(message: impl Into<String>) -> CommandError {
    CommandError {
        code: 2,
        code_name: "BadValue",
        message: message.into(),
        labels: Vec::new(),
    }
}

fn number(value: &Bson) -> Option<f64> {
    match value {
        Bson::Int32(n) => Some(*n as f64),
        Bson::Int64(n) => Some(*n as f64),
        Bson::Double(n) => Some(*n),
        _ => None,
    }
}

fn non_negative(command: &Document, key: &str) -> Result<Option<f64>, CommandError> {
    match command.get(key) {
        None => Ok(None),
        Some(value) => match number(value) {
            Some(n) if n >= 0.0 && n.is_finite() => Ok(Some(n)),
            _ => Err(bad_value(format!("{key} must be a non-negative number"))),
        },
    }
}

/// Reads `seconds` or `ms` as a duration; one of them is required.
fn duration(command: &Document) -> Result<Duration, CommandError> {
    if let Some(seconds) = non_negative(command, "seconds")? {
        return Ok(Duration::from_secs_f64(seconds));
    }
    if let Some(ms) = non_negative(command, "ms")? {
        return Ok(Duration::from_secs_f64(ms / 1000.0));
    }
    Err(bad_value("a duration is required: seconds or ms"))
}

/// Parses a `mongoSim*` command named `name`.
pub(crate) fn parse(name: &str, command: &Document) -> Result<AdminCommand, CommandError> {
    let value = command.get(name).unwrap_or(&Bson::Null);
    match name {
        "mongoSimFault" => {
            let kind = value
                .as_str()
                .ok_or_else(|| bad_value("mongoSimFault takes the fault name as a string"))?;
            let action = match kind {
                "stepDown" => FaultAction::StepDown(duration(command)?),
                "closeConnections" => FaultAction::CloseConnections,
                "refuseConnections" => FaultAction::RefuseConnections(duration(command)?),
                "latency" => FaultAction::Latency(duration(command)?),
                "pause" => FaultAction::Pause(duration(command)?),
                "truncateOplog" => FaultAction::TruncateOplog {
                    keep: non_negative(command, "keep")?
                        .ok_or_else(|| bad_value("truncateOplog needs keep: <entries>"))?
                        as usize,
                },
                "clear" => FaultAction::Clear,
                other => return Err(bad_value(format!("unknown fault {other:?}"))),
            };
            Ok(AdminCommand::Fault(action))
        }
        "mongoSimOplogCapacity" => match number(value) {
            Some(bytes) if bytes >= 1.0 => Ok(AdminCommand::OplogCapacity(bytes as usize)),
            _ => Err(bad_value(
                "mongoSimOplogCapacity takes a positive byte count",
            )),
        },
        "mongoSimAppendOplog" => {
            let entries = match value {
                Bson::Document(entry) => vec![entry.clone()],
                Bson::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Bson::Document(entry) => Ok(entry.clone()),
                        _ => Err(bad_value("mongoSimAppendOplog entries must be documents")),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(bad_value(
                        "mongoSimAppendOplog takes a document or an array",
                    ));
                }
            };
            Ok(AdminCommand::AppendOplog(entries))
        }
        "mongoSimCounters" => Ok(AdminCommand::Counters {
            reset: command.get_bool("reset").unwrap_or(false),
        }),
        other => Err(bad_value(format!("not a mongoSim command: {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn parses_every_form() {
        let cases = vec![
            (
                doc! {"mongoSimFault": "stepDown", "seconds": 2},
                AdminCommand::Fault(FaultAction::StepDown(Duration::from_secs(2))),
            ),
            (
                doc! {"mongoSimFault": "stepDown", "ms": 1500_i64},
                AdminCommand::Fault(FaultAction::StepDown(Duration::from_millis(1500))),
            ),
            (
                doc! {"mongoSimFault": "refuseConnections", "seconds": 0.5},
                AdminCommand::Fault(FaultAction::RefuseConnections(Duration::from_millis(500))),
            ),
            (
                doc! {"mongoSimFault": "latency", "ms": 20},
                AdminCommand::Fault(FaultAction::Latency(Duration::from_millis(20))),
            ),
            (
                doc! {"mongoSimFault": "pause", "seconds": 1},
                AdminCommand::Fault(FaultAction::Pause(Duration::from_secs(1))),
            ),
            (
                doc! {"mongoSimFault": "closeConnections"},
                AdminCommand::Fault(FaultAction::CloseConnections),
            ),
            (
                doc! {"mongoSimFault": "truncateOplog", "keep": 3},
                AdminCommand::Fault(FaultAction::TruncateOplog { keep: 3 }),
            ),
            (
                doc! {"mongoSimFault": "clear"},
                AdminCommand::Fault(FaultAction::Clear),
            ),
            (
                doc! {"mongoSimOplogCapacity": 4096},
                AdminCommand::OplogCapacity(4096),
            ),
            (
                doc! {"mongoSimAppendOplog": {"op": "n"}},
                AdminCommand::AppendOplog(vec![doc! {"op": "n"}]),
            ),
            (
                doc! {"mongoSimAppendOplog": [{"op": "n"}, {"op": "c"}]},
                AdminCommand::AppendOplog(vec![doc! {"op": "n"}, doc! {"op": "c"}]),
            ),
            (
                doc! {"mongoSimCounters": 1},
                AdminCommand::Counters { reset: false },
            ),
            (
                doc! {"mongoSimCounters": 1, "reset": true},
                AdminCommand::Counters { reset: true },
            ),
        ];
        for (command, expected) in cases {
            let name = command.keys().next().unwrap().clone();
            assert!(is_admin_command(&name));
            assert_eq!(parse(&name, &command).unwrap(), expected, "{command}");
        }
    }

    #[test]
    fn rejects_bad_input_with_bad_value() {
        let cases = vec![
            doc! {"mongoSimFault": "stepDown"},
            doc! {"mongoSimFault": "stepDown", "seconds": -1},
            doc! {"mongoSimFault": "stepDown", "seconds": "3"},
            doc! {"mongoSimFault": "explode"},
            doc! {"mongoSimFault": 1},
            doc! {"mongoSimFault": "truncateOplog"},
            doc! {"mongoSimOplogCapacity": 0},
            doc! {"mongoSimAppendOplog": [1]},
            doc! {"mongoSimAppendOplog": "x"},
        ];
        for command in cases {
            let name = command.keys().next().unwrap().clone();
            let err = parse(&name, &command).unwrap_err();
            assert_eq!(err.code, 2, "{command}");
        }
        assert!(!is_admin_command("find"));
    }
}
