//! Dotted field paths (`a.b.1.c`): reading them the way queries do (arrays
//! are traversed implicitly) and writing them the way update operators do
//! (numeric components index arrays, missing parents become sub-documents).

use bson::{Bson, Document};

/// Splits `a.b.1` into its components.
pub(crate) fn split(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

/// An array index component (`"1"`), as update paths and queries use them.
pub(crate) fn as_index(component: &str) -> Option<usize> {
    if component.is_empty() || !component.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    component.parse().ok()
}

/// The value at an exact path, without implicit array traversal except for
/// numeric components (the update-operator view of a document).
pub(crate) fn get_exact<'a>(doc: &'a Document, parts: &[&str]) -> Option<&'a Bson> {
    let (first, rest) = parts.split_first()?;
    let mut current = doc.get(*first)?;
    for part in rest {
        current = child(current, part)?;
    }
    Some(current)
}

/// One step down from a container value.
pub(crate) fn child<'a>(value: &'a Bson, part: &str) -> Option<&'a Bson> {
    match value {
        Bson::Document(doc) => doc.get(part),
        Bson::Array(items) => as_index(part).and_then(|i| items.get(i)),
        _ => None,
    }
}

fn child_mut<'a>(value: &'a mut Bson, part: &str) -> Option<&'a mut Bson> {
    match value {
        Bson::Document(doc) => doc.get_mut(part),
        Bson::Array(items) => as_index(part).and_then(move |i| items.get_mut(i)),
        _ => None,
    }
}

/// Every value a query sees at `parts`: arrays met on the way are traversed
/// element by element (unless the next component indexes them), so
/// `{"a.b": 1}` matches `{a: [{b: 1}]}`. `None` entries mark paths that are
/// missing along some branch (needed for `$exists:false` and `null` equality).
pub(crate) fn query_values<'a>(value: &'a Bson, parts: &[&str], out: &mut Vec<Option<&'a Bson>>) {
    let Some((first, rest)) = parts.split_first() else {
        out.push(Some(value));
        return;
    };
    match value {
        Bson::Document(doc) => match doc.get(*first) {
            Some(next) => query_values(next, rest, out),
            None => out.push(None),
        },
        Bson::Array(items) => {
            if let Some(next) = as_index(first).and_then(|index| items.get(index)) {
                query_values(next, rest, out);
            }
            for item in items {
                if matches!(item, Bson::Document(_) | Bson::Array(_)) {
                    query_values(item, parts, out);
                }
            }
            if items.is_empty() {
                out.push(None);
            }
        }
        _ => out.push(None),
    }
}

/// Why a path cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathConflict(pub String);

/// Sets the value at `parts`, creating missing sub-documents and padding
/// arrays with nulls as MongoDB does. Fails when a scalar is in the way.
pub(crate) fn set(doc: &mut Document, parts: &[&str], value: Bson) -> Result<(), PathConflict> {
    let (first, rest) = parts
        .split_first()
        .ok_or_else(|| PathConflict("empty path".into()))?;
    if rest.is_empty() {
        doc.insert(*first, value);
        return Ok(());
    }
    if !doc.contains_key(*first) {
        doc.insert(*first, Bson::Document(Document::new()));
    }
    let slot = doc.get_mut(*first).expect("inserted above");
    set_in_value(slot, rest, value, first)
}

fn set_in_value(
    slot: &mut Bson,
    parts: &[&str],
    value: Bson,
    parent: &str,
) -> Result<(), PathConflict> {
    let (first, rest) = parts.split_first().expect("non-empty");
    match slot {
        Bson::Document(doc) => set(doc, parts, value),
        Bson::Array(items) => {
            let index = as_index(first).ok_or_else(|| {
                PathConflict(format!("cannot create field '{first}' in array '{parent}'"))
            })?;
            while items.len() <= index {
                items.push(Bson::Null);
            }
            if rest.is_empty() {
                items[index] = value;
                return Ok(());
            }
            if matches!(items[index], Bson::Null) {
                items[index] = Bson::Document(Document::new());
            }
            set_in_value(&mut items[index], rest, value, first)
        }
        other => Err(PathConflict(format!(
            "Cannot create field '{first}' in element {{{parent}: {other}}}"
        ))),
    }
}

/// Removes the value at `parts`; an array element becomes null (MongoDB
/// never shifts arrays on `$unset`). Returns whether something was there.
pub(crate) fn unset(doc: &mut Document, parts: &[&str]) -> bool {
    let Some((last, parents)) = parts.split_last() else {
        return false;
    };
    if parents.is_empty() {
        return doc.remove(*last).is_some();
    }
    let Some((first, middle)) = parents.split_first() else {
        return false;
    };
    let Some(mut current) = doc.get_mut(*first) else {
        return false;
    };
    for part in middle {
        match child_mut(current, part) {
            Some(next) => current = next,
            None => return false,
        }
    }
    match current {
        Bson::Document(parent) => parent.remove(*last).is_some(),
        Bson::Array(items) => match as_index(last).and_then(|i| items.get_mut(i)) {
            Some(slot) => {
                *slot = Bson::Null;
                true
            }
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;

    #[test]
    fn set_creates_parents_and_indexes_arrays() {
        let cases = [
            (doc! {}, "a.b", doc! {"a": {"b": 1}}),
            (
                doc! {"hello": [{"value": 0}, {"value": 0}]},
                "hello.1.value",
                doc! {"hello": [{"value": 0}, {"value": 1}]},
            ),
            (doc! {"arr": [0]}, "arr.2", doc! {"arr": [0, null, 1]}),
        ];
        for (mut start, path, want) in cases {
            set(&mut start, &split(path), Bson::Int32(1)).unwrap();
            assert_eq!(start, want, "{path}");
        }
        let mut blocked = doc! {"a": 5};
        assert!(set(&mut blocked, &split("a.b"), Bson::Int32(1)).is_err());
    }

    #[test]
    fn unset_nulls_array_elements() {
        let mut doc = doc! {"a": [1, 2], "b": {"c": 1, "d": 2}};
        assert!(unset(&mut doc, &split("a.0")));
        assert!(unset(&mut doc, &split("b.c")));
        assert!(!unset(&mut doc, &split("zz.y")));
        assert_eq!(doc, doc! {"a": [null, 2], "b": {"d": 2}});
    }

    #[test]
    fn query_values_traverse_arrays() {
        let doc = Bson::Document(doc! {"a": [{"b": 1}, {"b": 2}, {"c": 3}]});
        let mut out = Vec::new();
        query_values(&doc, &split("a.b"), &mut out);
        let found: Vec<_> = out.into_iter().flatten().cloned().collect();
        assert_eq!(found, vec![Bson::Int32(1), Bson::Int32(2)]);
    }
}
