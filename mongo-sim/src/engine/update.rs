//! Update operators (`$set`, `$inc`, `$push`, ...) applied to one document.
//! Besides the new document, each application yields the log of modified
//! paths a real server's update driver records; `diff.rs` turns that log into
//! the v1 or v2 oplog form.

use bson::{Bson, Document};

use super::CommandError;
use super::matcher::{Filter, value_matches};
use super::path;
use super::value::{add_numbers, as_i64, compare, is_number, multiply_numbers, values_equal};

/// One modification as the oplog records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LogRecord {
    /// The value at the path was set (created or overwritten).
    Set(Vec<String>, Bson),
    /// The field at the path was removed (an array element becomes null).
    Unset(Vec<String>),
}

/// A document after an update, with what changed.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub doc: Document,
    pub log: Vec<LogRecord>,
}

/// Whether an update document is a replacement (no `$` operators).
pub(crate) fn is_replacement(update: &Document) -> bool {
    !update.keys().any(|k| k.starts_with('$'))
}

fn failed_to_parse(message: String) -> CommandError {
    CommandError::new(9, "FailedToParse", message)
}

fn type_mismatch(message: String) -> CommandError {
    CommandError::new(14, "TypeMismatch", message)
}

/// Replaces a document, keeping its `_id` first as the server stores it.
pub(crate) fn apply_replacement(
    old: &Document,
    replacement: &Document,
) -> Result<Document, CommandError> {
    let id = old.get("_id").cloned().unwrap_or(Bson::Null);
    if let Some(new_id) = replacement.get("_id")
        && !values_equal(new_id, &id)
    {
        return Err(immutable_id());
    }
    let mut doc = Document::new();
    doc.insert("_id", id);
    for (k, v) in replacement {
        if k != "_id" {
            doc.insert(k.clone(), v.clone());
        }
    }
    Ok(doc)
}

fn immutable_id() -> CommandError {
    CommandError::new(
        66,
        "ImmutableField",
        "Performing an update on the path '_id' would modify the immutable field '_id'".into(),
    )
}

/// One operator applied at one path.
struct Step<'a> {
    op: &'a str,
    path: String,
    arg: &'a Bson,
}

/// Applies an operator update to `old`. `inserting` enables `$setOnInsert`;
/// `filter` resolves the positional `$` path component.
pub(crate) fn apply_operators(
    old: &Document,
    update: &Document,
    inserting: bool,
    filter: &Document,
) -> Result<Applied, CommandError> {
    let mut steps = Vec::new();
    for (op, fields) in update {
        let Bson::Document(fields) = fields else {
            return Err(failed_to_parse(format!(
                "Modifiers operate on fields but we found type {} instead",
                fields.element_type() as u8
            )));
        };
        for (field, arg) in fields {
            let path = resolve_positional(field, old, filter)?;
            if path.is_empty() || path.split('.').any(str::is_empty) {
                return Err(CommandError::new(
                    56,
                    "EmptyFieldName",
                    format!("empty field name in '{field}'"),
                ));
            }
            if path.split('.').any(|part| part.starts_with('$')) {
                // `$[]` and `$[<id>]` (arrayFilters) are not simulated: refuse
                // them instead of writing a field literally named `$[]`.
                return Err(bad_value(format!(
                    "mongo-sim does not support the update path '{field}'"
                )));
            }
            steps.push(Step {
                op: op.as_str(),
                path,
                arg,
            });
        }
    }
    // Real servers process fields in lexicographic path order (5.0+ documents
    // this); it fixes both the order of new fields and of the log.
    steps.sort_by(|a, b| a.path.cmp(&b.path));
    check_conflicts(&steps)?;
    let mut state = Applied {
        doc: old.clone(),
        log: Vec::new(),
    };
    for step in &steps {
        apply_step(&mut state, step, inserting)?;
    }
    if let Some(id) = old.get("_id")
        && !state
            .doc
            .get("_id")
            .is_some_and(|new_id| values_equal(new_id, id))
    {
        return Err(immutable_id());
    }
    Ok(state)
}

fn check_conflicts(steps: &[Step<'_>]) -> Result<(), CommandError> {
    for pair in steps.windows(2) {
        let (a, b) = (&pair[0].path, &pair[1].path);
        if a == b || b.starts_with(&format!("{a}.")) {
            return Err(CommandError::new(
                40,
                "ConflictingUpdateOperators",
                format!("Updating the path '{b}' would create a conflict at '{a}'"),
            ));
        }
    }
    Ok(())
}

/// Replaces a `$` component with the index of the first array element the
/// query matched, as the positional operator does.
fn resolve_positional(
    field: &str,
    doc: &Document,
    filter: &Document,
) -> Result<String, CommandError> {
    let parts = path::split(field);
    let Some(dollar) = parts.iter().position(|p| *p == "$") else {
        return Ok(field.to_string());
    };
    let array_path = parts[..dollar].join(".");
    let no_match = || {
        CommandError::new(
            2,
            "BadValue",
            "The positional operator did not find the match needed from the query.".into(),
        )
    };
    let Some(Bson::Array(items)) = path::get_exact(doc, &path::split(&array_path)) else {
        return Err(no_match());
    };
    let prefix = format!("{array_path}.");
    for (index, item) in items.iter().enumerate() {
        let mut constrained = false;
        let mut all_match = true;
        for (key, condition) in filter {
            let element_condition = if *key == array_path {
                Some(Bson::Document(bson::doc! {"v": condition.clone()}))
            } else {
                key.strip_prefix(&prefix)
                    .map(|rest| Bson::Document(bson::doc! {format!("v.{rest}"): condition.clone()}))
            };
            if let Some(Bson::Document(sub)) = element_condition {
                constrained = true;
                let wrapped = bson::doc! {"v": item.clone()};
                if !Filter::parse(&sub)?.matches(&wrapped) {
                    all_match = false;
                }
            }
        }
        if constrained && all_match {
            let mut resolved: Vec<String> = parts.iter().map(|p| p.to_string()).collect();
            resolved[dollar] = index.to_string();
            return Ok(resolved.join("."));
        }
    }
    Err(no_match())
}

fn owned(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

fn apply_step(state: &mut Applied, step: &Step<'_>, inserting: bool) -> Result<(), CommandError> {
    let parts = path::split(&step.path);
    let current = path::get_exact(&state.doc, &parts).cloned();
    let new_value = match step.op {
        "$set" => Some(step.arg.clone()),
        "$setOnInsert" if inserting => Some(step.arg.clone()),
        "$setOnInsert" => None,
        "$unset" => {
            if path::unset(&mut state.doc, &parts) {
                state.log.push(LogRecord::Unset(owned(&parts)));
            }
            None
        }
        "$inc" | "$mul" => Some(arithmetic(step, current.as_ref())?),
        "$min" | "$max" => match &current {
            None => Some(step.arg.clone()),
            Some(value) => {
                let order = compare(step.arg, value);
                let replace = if step.op == "$min" {
                    order.is_lt()
                } else {
                    order.is_gt()
                };
                replace.then(|| step.arg.clone())
            }
        },
        "$currentDate" => Some(current_date(step.arg)),
        "$rename" => {
            let Bson::String(target) = step.arg else {
                return Err(bad_value("$rename target must be a string".into()));
            };
            if let Some(value) = current.clone() {
                path::unset(&mut state.doc, &parts);
                state.log.push(LogRecord::Unset(owned(&parts)));
                let target_parts = path::split(target);
                write(state, &target_parts, value)?;
            }
            None
        }
        "$push" | "$addToSet" | "$pull" | "$pullAll" | "$pop" => {
            return apply_array_step(state, step, &parts, current.as_ref());
        }
        other => {
            return Err(failed_to_parse(format!(
                "Unknown modifier: {other}. Expected a valid update modifier"
            )));
        }
    };
    if let Some(value) = new_value {
        if current.as_ref().is_some_and(|c| same_bytes(c, &value)) {
            return Ok(());
        }
        write(state, &parts, value)?;
    }
    Ok(())
}

fn bad_value(message: String) -> CommandError {
    CommandError::new(2, "BadValue", message)
}

/// Whether two values are identical including their BSON types (a real
/// server skips a `$set` only when the bytes would not change).
fn same_bytes(a: &Bson, b: &Bson) -> bool {
    a == b
}

fn write(state: &mut Applied, parts: &[&str], value: Bson) -> Result<(), CommandError> {
    path::set(&mut state.doc, parts, value.clone())
        .map_err(|conflict| CommandError::new(28, "PathNotViable", conflict.0))?;
    state.log.push(LogRecord::Set(owned(parts), value));
    Ok(())
}

fn arithmetic(step: &Step<'_>, current: Option<&Bson>) -> Result<Bson, CommandError> {
    if !is_number(step.arg) {
        return Err(type_mismatch(format!(
            "Cannot {} with non-numeric argument: {{{}: {}}}",
            &step.op[1..],
            step.path,
            step.arg
        )));
    }
    let zero = Bson::Int32(0);
    let base = match current {
        None => {
            return Ok(if step.op == "$inc" {
                step.arg.clone()
            } else {
                multiply_numbers(&zero, step.arg).unwrap_or(zero)
            });
        }
        Some(value) if is_number(value) => value,
        Some(value) => {
            return Err(type_mismatch(format!(
                "Cannot apply {} to a value of non-numeric type. {{_id: ...}} has the field '{}' of non-numeric type {:?}",
                step.op,
                step.path,
                value.element_type()
            )));
        }
    };
    let result = if step.op == "$inc" {
        add_numbers(base, step.arg)
    } else {
        multiply_numbers(base, step.arg)
    };
    result.ok_or_else(|| {
        CommandError::new(
            2,
            "BadValue",
            format!("Failed to apply {} operations to current value", step.op),
        )
    })
}

fn current_date(arg: &Bson) -> Bson {
    let wants_timestamp =
        matches!(arg, Bson::Document(spec) if spec.get_str("$type").ok() == Some("timestamp"));
    if wants_timestamp {
        let now = bson::DateTime::now().timestamp_millis() / 1000;
        Bson::Timestamp(bson::Timestamp {
            time: u32::try_from(now).unwrap_or(0),
            increment: 1,
        })
    } else {
        Bson::DateTime(bson::DateTime::now())
    }
}

/// What `$push`/`$addToSet` are asked to add.
struct Additions {
    items: Vec<Bson>,
    position: Option<i64>,
    slice: Option<i64>,
}

fn parse_additions(step: &Step<'_>) -> Result<Additions, CommandError> {
    let each_form = matches!(step.arg, Bson::Document(d) if d.contains_key("$each"));
    if !each_form {
        return Ok(Additions {
            items: vec![step.arg.clone()],
            position: None,
            slice: None,
        });
    }
    let Bson::Document(spec) = step.arg else {
        unreachable!()
    };
    let Some(Bson::Array(items)) = spec.get("$each") else {
        return Err(bad_value("The argument to $each must be an array".into()));
    };
    let position = spec
        .get("$position")
        .map(|p| as_i64(p).ok_or_else(|| bad_value("$position must be an integer".into())))
        .transpose()?;
    let slice = spec
        .get("$slice")
        .map(|p| as_i64(p).ok_or_else(|| bad_value("$slice must be an integer".into())))
        .transpose()?;
    for key in spec.keys() {
        if !matches!(key.as_str(), "$each" | "$position" | "$slice") {
            return Err(bad_value(format!(
                "Unrecognized clause in {}: {key}",
                step.op
            )));
        }
    }
    Ok(Additions {
        items: items.clone(),
        position,
        slice,
    })
}

fn apply_array_step(
    state: &mut Applied,
    step: &Step<'_>,
    parts: &[&str],
    current: Option<&Bson>,
) -> Result<(), CommandError> {
    let existing = match current {
        None => None,
        Some(Bson::Array(items)) => Some(items.clone()),
        Some(other) => {
            return Err(bad_value(format!(
                "The field '{}' must be an array but is of type {:?}",
                step.path,
                other.element_type()
            )));
        }
    };
    let old_items = existing.clone().unwrap_or_default();
    let (new_items, appended_only) = match step.op {
        "$push" => push(&old_items, parse_additions(step)?),
        "$addToSet" => {
            let mut items = old_items.clone();
            for item in parse_additions(step)?.items {
                if !items.iter().any(|x| values_equal(x, &item)) {
                    items.push(item);
                }
            }
            (items, true)
        }
        "$pull" => {
            let mut kept = Vec::with_capacity(old_items.len());
            for item in &old_items {
                if !value_matches(item, step.arg)? {
                    kept.push(item.clone());
                }
            }
            (kept, false)
        }
        "$pullAll" => {
            let Bson::Array(remove) = step.arg else {
                return Err(bad_value("$pullAll requires an array argument".into()));
            };
            let kept = old_items
                .iter()
                .filter(|x| !remove.iter().any(|r| values_equal(x, r)))
                .cloned()
                .collect();
            (kept, false)
        }
        _ => {
            // $pop: 1 removes the last element, -1 the first.
            let mut items = old_items.clone();
            if !items.is_empty() {
                if as_i64(step.arg) == Some(-1) {
                    items.remove(0);
                } else {
                    items.pop();
                }
            }
            (items, false)
        }
    };
    if existing.is_none() && matches!(step.op, "$pull" | "$pullAll" | "$pop") {
        return Ok(());
    }
    if existing.as_ref() == Some(&new_items) {
        return Ok(());
    }
    path::set(&mut state.doc, parts, Bson::Array(new_items.clone()))
        .map_err(|conflict| CommandError::new(28, "PathNotViable", conflict.0))?;
    // An append to an existing array is logged element by element
    // (`arr.3`), anything else as the whole array, like the server does.
    if appended_only && existing.is_some() {
        for (index, item) in new_items.iter().enumerate().skip(old_items.len()) {
            let mut element_path = owned(parts);
            element_path.push(index.to_string());
            state.log.push(LogRecord::Set(element_path, item.clone()));
        }
    } else {
        state
            .log
            .push(LogRecord::Set(owned(parts), Bson::Array(new_items)));
    }
    Ok(())
}

/// `$push` with `$each`/`$position`/`$slice`; returns the array and whether
/// it only grew at the end.
fn push(old: &[Bson], additions: Additions) -> (Vec<Bson>, bool) {
    let len = old.len() as i64;
    let at = match additions.position {
        None => len,
        Some(p) if p < 0 => (len + p).max(0),
        Some(p) => p.min(len),
    } as usize;
    let mut items = old.to_vec();
    let appended_at_end = at == old.len();
    for (offset, item) in additions.items.into_iter().enumerate() {
        items.insert(at + offset, item);
    }
    let mut appended_only = appended_at_end;
    if let Some(slice) = additions.slice {
        let keep = slice.unsigned_abs() as usize;
        if items.len() > keep {
            appended_only = false;
            if slice >= 0 {
                items.truncate(keep);
            } else {
                items.drain(..items.len() - keep);
            }
        }
    }
    (items, appended_only)
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    fn run(old: Document, update: Document) -> Applied {
        apply_operators(&old, &update, false, &doc! {}).unwrap()
    }

    #[test]
    fn operators_produce_documents_and_logs() {
        let cases: Vec<(Document, Document, Document, Vec<LogRecord>)> = vec![
            (
                doc! {"_id": 1, "a": 1},
                doc! {"$set": {"b": 2}, "$inc": {"a": 5}},
                doc! {"_id": 1, "a": 6, "b": 2},
                vec![
                    LogRecord::Set(vec!["a".into()], Bson::Int32(6)),
                    LogRecord::Set(vec!["b".into()], Bson::Int32(2)),
                ],
            ),
            (
                doc! {"_id": 1, "hello": [{"value": 1}, {"value": 2}]},
                doc! {"$inc": {"hello.1.value": 3}},
                doc! {"_id": 1, "hello": [{"value": 1}, {"value": 5}]},
                vec![LogRecord::Set(
                    vec!["hello".into(), "1".into(), "value".into()],
                    Bson::Int32(5),
                )],
            ),
            (
                doc! {"_id": 1, "l": [1, 2]},
                doc! {"$push": {"l": 3}},
                doc! {"_id": 1, "l": [1, 2, 3]},
                vec![LogRecord::Set(vec!["l".into(), "2".into()], Bson::Int32(3))],
            ),
            (
                doc! {"_id": 1, "l": [1, 2]},
                doc! {"$push": {"l": {"$each": [0], "$position": 0}}},
                doc! {"_id": 1, "l": [0, 1, 2]},
                vec![LogRecord::Set(
                    vec!["l".into()],
                    Bson::Array(vec![0.into(), 1.into(), 2.into()]),
                )],
            ),
            (
                doc! {"_id": 1, "l": [1, 2, 1]},
                doc! {"$pull": {"l": 1}},
                doc! {"_id": 1, "l": [2]},
                vec![LogRecord::Set(
                    vec!["l".into()],
                    Bson::Array(vec![2.into()]),
                )],
            ),
            (
                doc! {"_id": 1, "l": [1]},
                doc! {"$addToSet": {"l": {"$each": [1, 2]}}},
                doc! {"_id": 1, "l": [1, 2]},
                vec![LogRecord::Set(vec!["l".into(), "1".into()], Bson::Int32(2))],
            ),
            (
                doc! {"_id": 1, "a": 1, "b": 2},
                doc! {"$unset": {"a": "", "zz": ""}},
                doc! {"_id": 1, "b": 2},
                vec![LogRecord::Unset(vec!["a".into()])],
            ),
            (
                doc! {"_id": 1, "a": 1},
                doc! {"$set": {"a": 1}},
                doc! {"_id": 1, "a": 1},
                vec![],
            ),
        ];
        for (old, update, want_doc, want_log) in cases {
            let applied = run(old, update.clone());
            assert_eq!(applied.doc, want_doc, "{update}");
            assert_eq!(applied.log, want_log, "{update}");
        }
    }

    #[test]
    fn positional_operator_uses_the_query_match() {
        let old = doc! {"_id": 1, "arr": [{"k": "a", "value": 1}, {"k": "b", "value": 2}]};
        let applied = apply_operators(
            &old,
            &doc! {"$inc": {"arr.$.value": 10}},
            false,
            &doc! {"arr.k": "b"},
        )
        .unwrap();
        assert_eq!(
            applied.doc,
            doc! {"_id": 1, "arr": [{"k": "a", "value": 1}, {"k": "b", "value": 12}]}
        );
    }

    #[test]
    fn errors_have_mongodb_codes() {
        let cases = [
            (doc! {"$inc": {"s": 1}}, 14),
            (doc! {"$set": {"_id": 2}}, 66),
            (doc! {"$bogus": {"a": 1}}, 9),
            (doc! {"$set": {"a": 1, "a.b": 2}}, 40),
            (doc! {"$set": {"arr.$[].x": 1}}, 2),
        ];
        for (update, code) in cases {
            let err =
                apply_operators(&doc! {"_id": 1, "s": "x"}, &update, false, &doc! {}).unwrap_err();
            assert_eq!(err.code, code, "{update}");
        }
    }
}
