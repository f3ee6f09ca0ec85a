//! The changed-field list `f` of a message.
//!
//! redis-oplog reads `f` only for limit+sort queries (to decide whether a
//! change touches a sort field and forces a requery), but it must always be
//! an array. The rules follow oplogtoredis byte for byte in the default mode;
//! the deep v2 mode follows Meteor's own oplog v2 converter, with a
//! deterministic (BSON) order where oplogtoredis's is random.
//!
//! Field names are handed to a [`FieldSink`] as they are found, so the message
//! writer can append them straight into the JSON without collecting them.

use bson::{RawBsonRef, RawDocument};

use super::entry::TransformError;
use super::message::EventKind;

/// Receives changed fields in order. A field is `prefix` and `name` joined
/// by a dot (just `name` when `prefix` is empty, just `prefix` when `name` is).
pub trait FieldSink {
    /// One changed field.
    fn field(&mut self, prefix: &str, name: &str);
}

/// Collects fields as owned strings (tests, `redtail explain`).
impl FieldSink for Vec<String> {
    fn field(&mut self, prefix: &str, name: &str) {
        self.push(join(prefix, name));
    }
}

/// Joins two path parts the way [`FieldSink::field`] defines.
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (false, true) => prefix.to_owned(),
        (false, false) => format!("{prefix}.{name}"),
    }
}

/// How the `o` of an update entry expresses the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateShape {
    /// The whole new document (no `$`-operators): `f` lists its top-level keys.
    Replacement,
    /// Pre-5.0 modifier form (`$set`, `$unset`, optional `$v: 1`).
    Modifier,
    /// 5.0+ delta form: `$v` numerically 2 and a `diff`.
    Diff,
}

/// Classifies an update's `o`.
///
/// A `$v` of 2 only counts as a number (a string "2" does not), as in
/// oplogtoredis. A replacement document cannot have `$`-prefixed top-level
/// fields (MongoDB rejects them), so any such key (`$v` included) means
/// operators.
pub fn update_shape(o: &RawDocument) -> Result<UpdateShape, TransformError> {
    let mut version_two = false;
    let mut has_diff = false;
    let mut has_operator = false;
    for element in o.iter() {
        let (key, value) = element?;
        match key.as_str() {
            "$v" => {
                version_two = is_numeric_two(value);
                has_operator = true;
            }
            "diff" => has_diff = true,
            name if name.starts_with('$') => has_operator = true,
            _ => {}
        }
    }
    Ok(if version_two && has_diff {
        UpdateShape::Diff
    } else if has_operator {
        UpdateShape::Modifier
    } else {
        UpdateShape::Replacement
    })
}

fn is_numeric_two(value: RawBsonRef<'_>) -> bool {
    match value {
        RawBsonRef::Int32(n) => n == 2,
        RawBsonRef::Int64(n) => n == 2,
        RawBsonRef::Double(x) => x == 2.0,
        _ => false,
    }
}

/// Sends the changed fields of an `event` whose oplog `o` is `o` to `sink`,
/// and returns how many parts of `o` could not be turned into fields
/// (oplogtoredis's `otr_oplog_unprocessable_changed_fields`).
pub fn changed_fields(
    event: EventKind,
    o: &RawDocument,
    deep: bool,
    sink: &mut impl FieldSink,
) -> Result<u32, TransformError> {
    match event {
        EventKind::Remove => Ok(0),
        EventKind::Insert => top_level_keys(o, sink).map(|()| 0),
        EventKind::Update => match update_shape(o)? {
            UpdateShape::Replacement => top_level_keys(o, sink).map(|()| 0),
            UpdateShape::Modifier => modifier_fields(o, sink),
            UpdateShape::Diff => match o.get("diff")? {
                Some(RawBsonRef::Document(diff)) if deep => {
                    let mut walk = DeepWalk {
                        sink,
                        unprocessable: 0,
                        prefix: String::new(),
                    };
                    walk.object_diff(diff, 0)?;
                    Ok(walk.unprocessable)
                }
                Some(RawBsonRef::Document(diff)) => shallow_diff_fields(diff, sink),
                _ => Ok(1),
            },
        },
    }
}

fn top_level_keys(doc: &RawDocument, sink: &mut impl FieldSink) -> Result<(), TransformError> {
    for element in doc.iter() {
        let (key, _) = element?;
        sink.field("", key.as_str());
    }
    Ok(())
}

/// v1: the keys of every operator document (`$set`, `$unset`, ...), verbatim.
fn modifier_fields(o: &RawDocument, sink: &mut impl FieldSink) -> Result<u32, TransformError> {
    let mut unprocessable = 0;
    for element in o.iter() {
        let (key, value) = element?;
        if key.as_str() == "$v" {
            continue;
        }
        match value {
            RawBsonRef::Document(operator) => top_level_keys(operator, sink)?,
            _ => unprocessable += 1,
        }
    }
    Ok(unprocessable)
}

/// v2, default mode: top-level field names only (oplogtoredis's rules).
fn shallow_diff_fields(
    diff: &RawDocument,
    sink: &mut impl FieldSink,
) -> Result<u32, TransformError> {
    let mut unprocessable = 0;
    for element in diff.iter() {
        let (key, value) = element?;
        match key.as_str() {
            "i" | "u" | "d" => match value {
                RawBsonRef::Document(section) => top_level_keys(section, sink)?,
                _ => unprocessable += 1,
            },
            name if name.starts_with('s') => sink.field("", &name[1..]),
            name if name == "a" || name.starts_with('o') => {}
            _ => unprocessable += 1,
        }
    }
    Ok(unprocessable)
}

/// v2, deep mode: full dotted paths, as Meteor's `oplogV2V1Converter` derives
/// the `$set`/`$unset` keys from a diff, emitted in BSON order.
///
/// Where Meteor's converter drops information, this walk keeps it:
/// - An array diff is recognised by its `a: true` marker alone. Meteor also
///   requires every other key to be `u<n>`/`s<n>`, so an array that was
///   resized (`l: <new length>`) falls through to its object branch and its
///   `u<n>` elements are lost. Here `l` marks the array field itself as
///   changed (the array's length changed, which is a change to the array,
///   the way Meteor handles any replaced array) and the element entries are
///   still listed, so nothing is counted as unprocessable.
/// - An array diff nested directly in an array diff (`s0: {a: true, u1: ..}`)
///   is walked as an array (Meteor walks it as an object and loses it).
/// - `u` values are not flattened (they replace the field whole), `i` values
///   are: an embedded document contributes its leaves, an empty document or
///   any other value is a leaf.
struct DeepWalk<'s, S> {
    sink: &'s mut S,
    unprocessable: u32,
    /// Path of the container being walked, without a trailing dot.
    prefix: String,
}

impl<S: FieldSink> DeepWalk<'_, S> {
    fn object_diff(&mut self, diff: &RawDocument, depth: usize) -> Result<(), TransformError> {
        check_depth(depth)?;
        for element in diff.iter() {
            let (key, value) = element?;
            match (key.as_str(), value) {
                ("d" | "u", RawBsonRef::Document(section)) => {
                    for element in section.iter() {
                        let (name, _) = element?;
                        self.sink.field(&self.prefix, name.as_str());
                    }
                }
                ("i", RawBsonRef::Document(section)) => self.flatten(section, depth + 1)?,
                ("a", _) => {}
                (name, RawBsonRef::Document(sub)) if name.len() > 1 && name.starts_with('s') => {
                    self.nested(&name[1..], sub, depth + 1)?;
                }
                _ => self.unprocessable += 1,
            }
        }
        Ok(())
    }

    fn array_diff(&mut self, diff: &RawDocument, depth: usize) -> Result<(), TransformError> {
        check_depth(depth)?;
        for element in diff.iter() {
            let (key, value) = element?;
            let key = key.as_str();
            let index = key
                .get(1..)
                .filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
            match (key.as_bytes().first(), index, value) {
                _ if key == "a" => {}
                _ if key == "l" => self.sink.field("", &self.prefix),
                (Some(b'u'), Some(index), _) => self.sink.field(&self.prefix, index),
                (Some(b's'), Some(index), RawBsonRef::Document(sub)) => {
                    self.nested(index, sub, depth + 1)?
                }
                _ => self.unprocessable += 1,
            }
        }
        Ok(())
    }

    /// Walks a sub-diff for the field (or array element) `name`.
    fn nested(
        &mut self,
        name: &str,
        sub: &RawDocument,
        depth: usize,
    ) -> Result<(), TransformError> {
        let saved = self.prefix.len();
        if !self.prefix.is_empty() {
            self.prefix.push('.');
        }
        self.prefix.push_str(name);
        let result = if is_array_diff(sub)? {
            self.array_diff(sub, depth)
        } else {
            self.object_diff(sub, depth)
        };
        self.prefix.truncate(saved);
        result
    }

    /// Leaves of an inserted (`i`) section, like Meteor's `flattenObjectInto`.
    fn flatten(&mut self, section: &RawDocument, depth: usize) -> Result<(), TransformError> {
        check_depth(depth)?;
        for element in section.iter() {
            let (key, value) = element?;
            match value {
                RawBsonRef::Document(inner) if !inner.is_empty() => {
                    let saved = self.prefix.len();
                    if !self.prefix.is_empty() {
                        self.prefix.push('.');
                    }
                    self.prefix.push_str(key.as_str());
                    let result = self.flatten(inner, depth + 1);
                    self.prefix.truncate(saved);
                    result?;
                }
                _ => self.sink.field(&self.prefix, key.as_str()),
            }
        }
        Ok(())
    }
}

fn is_array_diff(diff: &RawDocument) -> Result<bool, TransformError> {
    Ok(matches!(diff.get("a")?, Some(RawBsonRef::Boolean(true))))
}

const MAX_DIFF_DEPTH: usize = super::ejson::MAX_DEPTH;

fn check_depth(depth: usize) -> Result<(), TransformError> {
    if depth > MAX_DIFF_DEPTH {
        Err(TransformError::TooDeep(MAX_DIFF_DEPTH))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, Document, doc};

    fn fields(event: EventKind, o: Document, deep: bool) -> (Vec<String>, u32) {
        let raw = bson::RawDocumentBuf::try_from(&o).unwrap();
        let mut names = Vec::new();
        let unprocessable = changed_fields(event, &raw, deep, &mut names).unwrap();
        (names, unprocessable)
    }

    fn update(o: Document, deep: bool) -> (Vec<String>, u32) {
        fields(EventKind::Update, o, deep)
    }

    #[test]
    fn insert_replacement_and_delete() {
        let document = doc! { "_id": 1, "b": 2, "a": { "x": 1 } };
        assert_eq!(
            fields(EventKind::Insert, document.clone(), false),
            (vec!["_id".into(), "b".into(), "a".into()], 0)
        );
        assert_eq!(
            update(document.clone(), true),
            (vec!["_id".into(), "b".into(), "a".into()], 0)
        );
        assert_eq!(fields(EventKind::Remove, document, false), (vec![], 0));
    }

    #[test]
    fn v1_modifiers_keep_dotted_paths_and_count_oddities() {
        let o = doc! { "$v": 1, "$set": { "one.two.three": 1, "four": 4 }, "$unset": { "hello.1.value": true } };
        assert_eq!(
            update(o, false).0,
            ["one.two.three", "four", "hello.1.value"]
        );
        // Missing $v is v1 too; a non-document operator value is unprocessable.
        assert_eq!(
            update(doc! { "$set": { "d": 4 }, "$bogus": 5 }, false),
            (vec!["d".into()], 1)
        );
        // A string "2" is not v2: the entry is read as modifiers, `diff` as one.
        assert_eq!(
            update(doc! { "$v": "2", "diff": { "u": { "a": 1 } } }, true),
            (vec!["u".into()], 0)
        );
    }

    #[test]
    fn classifies_updates() {
        let shape =
            |o: Document| update_shape(&bson::RawDocumentBuf::try_from(&o).unwrap()).unwrap();
        assert_eq!(shape(doc! { "$v": 2, "diff": {} }), UpdateShape::Diff);
        assert_eq!(shape(doc! { "$v": 2_i64, "diff": {} }), UpdateShape::Diff);
        assert_eq!(shape(doc! { "$v": 2.0, "diff": {} }), UpdateShape::Diff);
        assert_eq!(shape(doc! { "$v": "2", "diff": {} }), UpdateShape::Modifier);
        assert_eq!(shape(doc! { "$set": { "a": 1 } }), UpdateShape::Modifier);
        assert_eq!(shape(doc! { "_id": 1, "a": 1 }), UpdateShape::Replacement);
    }

    #[test]
    fn v2_shallow_follows_oplogtoredis() {
        let o = doc! { "$v": 2, "diff": {
            "i": { "new": 1 }, "u": { "count": 1 }, "d": { "gone": false },
            "sarr": { "a": true, "u0": 1 }, "a": true, "oWhatever": 1, "x": 1, "u2": 5,
        } };
        assert_eq!(
            update(o, false),
            (
                vec!["new".into(), "count".into(), "gone".into(), "arr".into()],
                2
            )
        );
    }

    #[test]
    fn v2_deep_meets_meteor_vectors() {
        let cases: Vec<(Document, Vec<&str>)> = vec![
            (doc! { "sasd": { "a": true, "u0": 2 } }, vec!["asd.0"]),
            (doc! { "i": { "a": { "b": 2 } } }, vec!["a.b"]),
            (
                doc! { "sarray": { "a": true, "s2": { "u": { "a": 1 } } } },
                vec!["array.2.a"],
            ),
            (doc! { "u": { "a": { "b": 1 } } }, vec!["a"]),
            (doc! { "i": { "e": {}, "arr": [1, 2] } }, vec!["e", "arr"]),
            (
                doc! { "sx": { "sy": { "d": { "z": false } } } },
                vec!["x.y.z"],
            ),
            (
                doc! { "sarr": { "a": true, "s0": { "a": true, "u1": 2 } } },
                vec!["arr.0.1"],
            ),
            (
                doc! { "sarr": { "a": true, "l": 1, "u0": 5 } },
                vec!["arr", "arr.0"],
            ),
        ];
        for (diff, expected) in cases {
            let o = doc! { "$v": 2, "diff": diff.clone() };
            assert_eq!(
                update(o, true),
                (expected.iter().map(|s| s.to_string()).collect(), 0),
                "{diff}"
            );
        }
    }

    #[test]
    fn v2_deep_counts_what_it_cannot_read() {
        let o = doc! { "$v": 2, "diff": { "x": 1, "u": 5, "s": { "u": { "a": 1 } }, "sarr": { "a": true, "q1": 1 } } };
        assert_eq!(update(o, true), (vec![], 4));
        // A diff that is not a document is one unprocessable part.
        assert_eq!(
            update(doc! { "$v": 2, "diff": Bson::Int32(3) }, true),
            (vec![], 1)
        );
    }

    #[test]
    fn v2_deep_survives_absurd_nesting() {
        let mut diff = doc! { "u": { "a": 1 } };
        for _ in 0..(MAX_DIFF_DEPTH + 5) {
            diff = doc! { "sx": diff };
        }
        let raw = bson::RawDocumentBuf::try_from(&doc! { "$v": 2, "diff": diff }).unwrap();
        let error = changed_fields(EventKind::Update, &raw, true, &mut Vec::new()).unwrap_err();
        assert_eq!(error, TransformError::TooDeep(MAX_DIFF_DEPTH));
    }
}
