//! The oplog `o` of an operator update: v1 (`{$v:1, $set, $unset}`, 4.4)
//! or a v2 delta (`{$v:2, diff:{...}}`, 5.0+), built from the update's log of
//! modified paths and the document before the update, section by section as
//! the server's diff builder does (`d`, `u`, `i`, then `s<field>` sub-diffs;
//! arrays as `{a:true, l?, u<n>|s<n>...}`).

use bson::{Bson, Document};

use super::path;
use super::update::LogRecord;

/// The v1 form: `$set` and `$unset` sections in the order first used.
pub(crate) fn v1_update(log: &[LogRecord]) -> Document {
    let mut sets = Document::new();
    let mut unsets = Document::new();
    let mut order: Vec<&str> = Vec::new();
    for record in log {
        match record {
            LogRecord::Set(parts, value) => {
                sets.insert(parts.join("."), value.clone());
                if !order.contains(&"$set") {
                    order.push("$set");
                }
            }
            LogRecord::Unset(parts) => {
                unsets.insert(parts.join("."), true);
                if !order.contains(&"$unset") {
                    order.push("$unset");
                }
            }
        }
    }
    let mut o = Document::new();
    o.insert("$v", 1);
    for section in order {
        let body = if section == "$set" {
            sets.clone()
        } else {
            unsets.clone()
        };
        o.insert(section, body);
    }
    o
}

/// The v2 form `{$v: 2, diff: {...}}`.
pub(crate) fn v2_update(old: &Document, new: &Document, log: &[LogRecord]) -> Document {
    let mut root = ObjectDiff::default();
    let old_root = Bson::Document(old.clone());
    let new_root = Bson::Document(new.clone());
    for record in log {
        let (parts, removing) = match record {
            LogRecord::Set(parts, _) => (parts, false),
            LogRecord::Unset(parts) => (parts, true),
        };
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        root.record(Some(&old_root), &new_root, &parts, removing);
    }
    let mut o = Document::new();
    o.insert("$v", 2);
    o.insert("diff", root.to_document());
    o
}

#[derive(Debug, Default)]
struct ObjectDiff {
    deleted: Vec<String>,
    updated: Vec<(String, Bson)>,
    inserted: Vec<(String, Bson)>,
    children: Vec<(String, Node)>,
}

#[derive(Debug, Default)]
struct ArrayDiff {
    entries: Vec<(usize, Entry)>,
}

#[derive(Debug)]
enum Node {
    Object(ObjectDiff),
    Array(ArrayDiff),
}

#[derive(Debug)]
enum Entry {
    Update(Bson),
    Sub(Node),
}

fn upsert_pair(list: &mut Vec<(String, Bson)>, key: &str, value: Bson) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.to_string(), value)),
    }
}

fn node_for(old: &Bson, new: &Bson) -> Option<Node> {
    match (old, new) {
        (Bson::Document(_), Bson::Document(_)) => Some(Node::Object(ObjectDiff::default())),
        (Bson::Array(_), Bson::Array(_)) => Some(Node::Array(ArrayDiff::default())),
        _ => None,
    }
}

impl Node {
    fn record(&mut self, old: Option<&Bson>, new: &Bson, parts: &[&str], removing: bool) {
        match self {
            Node::Object(diff) => diff.record(old, new, parts, removing),
            Node::Array(diff) => diff.record(old, new, parts, removing),
        }
    }

    fn to_document(&self) -> Document {
        match self {
            Node::Object(diff) => diff.to_document(),
            Node::Array(diff) => diff.to_document(),
        }
    }
}

impl ObjectDiff {
    /// Records one modified path below this object (`old`/`new` are this
    /// object before and after the update).
    fn record(&mut self, old: Option<&Bson>, new: &Bson, parts: &[&str], removing: bool) {
        let Some((field, rest)) = parts.split_first() else {
            return;
        };
        let old_child = old.and_then(|o| path::child(o, field));
        let new_child = path::child(new, field);
        if removing && rest.is_empty() {
            if old_child.is_some() {
                self.deleted.push(field.to_string());
            }
            return;
        }
        let Some(new_child) = new_child else {
            return;
        };
        let descend =
            !rest.is_empty() && old_child.is_some_and(|o| node_for(o, new_child).is_some());
        if !descend {
            // A leaf, or a parent created/replaced by this update: log the
            // whole new value at this level.
            if old_child.is_some() {
                upsert_pair(&mut self.updated, field, new_child.clone());
            } else {
                upsert_pair(&mut self.inserted, field, new_child.clone());
            }
            return;
        }
        let old_child = old_child.expect("checked above");
        let index = match self.children.iter().position(|(k, _)| k == field) {
            Some(index) => index,
            None => {
                let node = node_for(old_child, new_child).expect("checked above");
                self.children.push((field.to_string(), node));
                self.children.len() - 1
            }
        };
        self.children[index]
            .1
            .record(Some(old_child), new_child, rest, removing);
    }

    fn to_document(&self) -> Document {
        let mut out = Document::new();
        if !self.deleted.is_empty() {
            out.insert(
                "d",
                self.deleted
                    .iter()
                    .map(|k| (k.clone(), Bson::Boolean(false)))
                    .collect::<Document>(),
            );
        }
        if !self.updated.is_empty() {
            out.insert("u", self.updated.iter().cloned().collect::<Document>());
        }
        if !self.inserted.is_empty() {
            out.insert("i", self.inserted.iter().cloned().collect::<Document>());
        }
        for (field, node) in &self.children {
            out.insert(format!("s{field}"), node.to_document());
        }
        out
    }
}

impl ArrayDiff {
    fn record(&mut self, old: Option<&Bson>, new: &Bson, parts: &[&str], removing: bool) {
        let Some((first, rest)) = parts.split_first() else {
            return;
        };
        let Some(index) = path::as_index(first) else {
            return;
        };
        let old_child = old.and_then(|o| path::child(o, first));
        let Some(new_child) = path::child(new, first) else {
            return;
        };
        let descend =
            !rest.is_empty() && old_child.is_some_and(|o| node_for(o, new_child).is_some());
        if !descend {
            // Array elements are always logged as updates, even new ones
            // and `$unset` ones (which become null).
            match self.entries.iter_mut().find(|(i, _)| *i == index) {
                Some(slot) => slot.1 = Entry::Update(new_child.clone()),
                None => self.entries.push((index, Entry::Update(new_child.clone()))),
            }
            return;
        }
        let old_child = old_child.expect("checked above");
        let position = match self
            .entries
            .iter()
            .position(|(i, e)| *i == index && matches!(e, Entry::Sub(_)))
        {
            Some(position) => position,
            None => {
                let node = node_for(old_child, new_child).expect("checked above");
                self.entries.push((index, Entry::Sub(node)));
                self.entries.len() - 1
            }
        };
        if let Entry::Sub(node) = &mut self.entries[position].1 {
            node.record(Some(old_child), new_child, rest, removing);
        }
    }

    fn to_document(&self) -> Document {
        let mut out = Document::new();
        out.insert("a", true);
        let mut entries: Vec<&(usize, Entry)> = self.entries.iter().collect();
        entries.sort_by_key(|(index, _)| *index);
        for (index, entry) in entries {
            match entry {
                Entry::Update(value) => out.insert(format!("u{index}"), value.clone()),
                Entry::Sub(node) => out.insert(format!("s{index}"), node.to_document()),
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use bson::doc;

    use super::*;
    use crate::engine::update::apply_operators;

    fn v2(old: Document, update: Document) -> Document {
        let applied = apply_operators(&old, &update, false, &doc! {}).unwrap();
        v2_update(&old, &applied.doc, &applied.log)
    }

    #[test]
    fn v2_diffs_match_real_server_shapes() {
        let cases: Vec<(Document, Document, Document)> = vec![
            // oplog-jstest-u-v2-nested-set
            (
                doc! {"_id": 8, "b": {"c": 1}},
                doc! {"$set": {"b.d": 2}},
                doc! {"sb": {"i": {"d": 2}}},
            ),
            // oplog-jstest-u-v2-unset
            (
                doc! {"_id": 3, "a": 1, "b": 2},
                doc! {"$unset": {"b": ""}},
                doc! {"d": {"b": false}},
            ),
            // oplog-toff-u-v2-insert-field
            (
                doc! {"_id": 1},
                doc! {"$set": {"a": 1}},
                doc! {"i": {"a": 1}},
            ),
            (
                doc! {"_id": 1, "count": 0},
                doc! {"$inc": {"count": 1}},
                doc! {"u": {"count": 1}},
            ),
            // positional $inc on an array element
            (
                doc! {"_id": 1, "arr": [{"value": 1}, {"value": 2}]},
                doc! {"$inc": {"arr.1.value": 1}},
                doc! {"sarr": {"a": true, "s1": {"u": {"value": 3}}}},
            ),
            (
                doc! {"_id": 1, "list": [1, 2, 3]},
                doc! {"$push": {"list": 4}},
                doc! {"slist": {"a": true, "u3": 4}},
            ),
            (
                doc! {"_id": 1},
                doc! {"$set": {"x.y.z": 1}},
                doc! {"i": {"x": {"y": {"z": 1}}}},
            ),
            (
                doc! {"_id": 1, "count": 0},
                doc! {"$inc": {"count": 1}, "$set": {"nested.state": {}}},
                doc! {"u": {"count": 1}, "i": {"nested": {"state": {}}}},
            ),
            (
                doc! {"_id": 1, "a": [1, 2]},
                doc! {"$unset": {"a.0": ""}},
                doc! {"sa": {"a": true, "u0": null}},
            ),
        ];
        for (old, update, want) in cases {
            let o = v2(old, update.clone());
            assert_eq!(o.get_i32("$v").ok(), Some(2), "{update}");
            assert_eq!(o.get_document("diff").unwrap(), &want, "{update}");
        }
    }

    #[test]
    fn v1_form_lists_sections_in_application_order() {
        let old = doc! {"_id": 1, "kick": 10, "ok": true};
        let applied = apply_operators(
            &old,
            &doc! {"$set": {"plus_field": 2}, "$unset": {"ok": 1}},
            false,
            &doc! {},
        )
        .unwrap();
        let o = v1_update(&applied.log);
        // oplog-mongoshake42-u-v1-set-unset
        assert_eq!(
            o,
            doc! {"$v": 1, "$unset": {"ok": true}, "$set": {"plus_field": 2}}
        );
    }
}
