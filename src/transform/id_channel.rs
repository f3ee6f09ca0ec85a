//! The per-document channel `<db>.<coll>::<idstr>`.
//!
//! redis-oplog subscribes a query by `_id` to exactly one channel, built with
//! Meteor's `MongoID.idStringify`. A publisher that spells the id any other
//! way publishes into a channel nobody listens to, and by-id subscribers
//! silently miss the change. Both peers append the raw string, so redtail
//! defaults to Meteor's spelling and keeps the raw one only for
//! byte-compatibility tests.

use std::fmt::Write as _;

use bson::RawBsonRef;

use super::ejson::{write_hex, write_js_number};

/// How the `<idstr>` part of the per-document channel is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdChannelStyle {
    /// Meteor's `MongoID.idStringify`: what redis-oplog subscribes to.
    #[default]
    Meteor,
    /// What oplogtoredis and changestream-to-redis publish: the string as-is,
    /// an ObjectId's hex, and no per-document channel for other types.
    Raw,
}

/// Builds `<namespace>::<idstr>`, or `None` when the id has no per-document
/// channel in this style (Meteor cannot subscribe to such ids by id).
pub fn document_channel(
    namespace: &str,
    id: RawBsonRef<'_>,
    style: IdChannelStyle,
) -> Option<String> {
    let mut channel = String::with_capacity(namespace.len() + 2 + 26);
    channel.push_str(namespace);
    channel.push_str("::");
    if write_id_string(&mut channel, id, style) {
        Some(channel)
    } else {
        None
    }
}

/// Appends the `<idstr>` for `id`; returns false (leaving `out` in an
/// unspecified state) when the id has none.
pub fn write_id_string(out: &mut String, id: RawBsonRef<'_>, style: IdChannelStyle) -> bool {
    match (id, style) {
        (RawBsonRef::ObjectId(oid), _) => write_hex(out, &oid.bytes()),
        (RawBsonRef::String(s), IdChannelStyle::Raw) => out.push_str(s),
        (RawBsonRef::String(s), IdChannelStyle::Meteor) => {
            if needs_dash_prefix(s) {
                out.push('-');
            }
            out.push_str(s);
        }
        (_, IdChannelStyle::Raw) => return false,
        // `'~' + JSON.stringify(id)` for numbers, booleans and null.
        (RawBsonRef::Int32(n), IdChannelStyle::Meteor) => {
            let _ = write!(out, "~{n}");
        }
        (RawBsonRef::Int64(n), IdChannelStyle::Meteor) => {
            let _ = write!(out, "~{n}");
        }
        (RawBsonRef::Double(x), IdChannelStyle::Meteor) => {
            out.push('~');
            if x.is_finite() {
                write_js_number(out, x);
            } else {
                // JSON.stringify(NaN) and JSON.stringify(Infinity) are "null".
                out.push_str("null");
            }
        }
        (RawBsonRef::Boolean(b), IdChannelStyle::Meteor) => {
            out.push_str(if b { "~true" } else { "~false" })
        }
        (RawBsonRef::Null, IdChannelStyle::Meteor) => out.push_str("~null"),
        // Dates, binaries, documents, decimals...: idStringify throws.
        _ => return false,
    }
    true
}

/// Meteor escapes strings that would otherwise be mistaken for another id
/// kind when parsed back: ObjectId-looking hex, and the `-`, `~`, `{`
/// prefixes it uses itself. The empty string stays empty.
fn needs_dash_prefix(s: &str) -> bool {
    match s.as_bytes().first() {
        None => false,
        Some(b'-' | b'~' | b'{') => true,
        Some(_) => s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc, oid::ObjectId};

    fn channel(id: Bson, style: IdChannelStyle) -> Option<String> {
        let raw = bson::RawDocumentBuf::try_from(&doc! { "_id": id }).unwrap();
        document_channel("db.coll", raw.get("_id").unwrap().unwrap(), style)
    }

    #[test]
    fn stringifies_ids_like_meteor() {
        let oid = ObjectId::parse_str("5e4fa224a6717632d6ee2e85").unwrap();
        let cases: Vec<(Bson, Option<&str>)> = vec![
            (
                Bson::ObjectId(oid),
                Some("db.coll::5e4fa224a6717632d6ee2e85"),
            ),
            (Bson::String("abc".into()), Some("db.coll::abc")),
            (Bson::String("".into()), Some("db.coll::")),
            (
                Bson::String("5e4fa224a6717632d6ee2e85".into()),
                Some("db.coll::-5e4fa224a6717632d6ee2e85"),
            ),
            // Uppercase hex does not look like an ObjectId to Meteor.
            (
                Bson::String("5E4FA224A6717632D6EE2E85".into()),
                Some("db.coll::5E4FA224A6717632D6EE2E85"),
            ),
            // 23 and 25 hex characters are ordinary strings.
            (
                Bson::String("5e4fa224a6717632d6ee2e8".into()),
                Some("db.coll::5e4fa224a6717632d6ee2e8"),
            ),
            (
                Bson::String("5e4fa224a6717632d6ee2e855".into()),
                Some("db.coll::5e4fa224a6717632d6ee2e855"),
            ),
            (Bson::String("-x".into()), Some("db.coll::--x")),
            (Bson::String("~x".into()), Some("db.coll::-~x")),
            (Bson::String("{x".into()), Some("db.coll::-{x")),
            (Bson::String("a$b".into()), Some("db.coll::a$b")),
            (Bson::Int32(42), Some("db.coll::~42")),
            (Bson::Int64(-7), Some("db.coll::~-7")),
            (Bson::Double(1.5), Some("db.coll::~1.5")),
            (Bson::Double(2.0), Some("db.coll::~2")),
            (Bson::Double(f64::NAN), Some("db.coll::~null")),
            (Bson::Boolean(true), Some("db.coll::~true")),
            (Bson::Boolean(false), Some("db.coll::~false")),
            (Bson::Null, Some("db.coll::~null")),
            (Bson::Document(doc! { "a": 1 }), None),
            (Bson::DateTime(bson::DateTime::from_millis(5)), None),
        ];
        for (id, expected) in cases {
            assert_eq!(
                channel(id.clone(), IdChannelStyle::Meteor).as_deref(),
                expected,
                "{id:?}"
            );
        }
    }

    #[test]
    fn raw_style_reproduces_the_peers() {
        let oid = ObjectId::parse_str("5e4fa224a6717632d6ee2e85").unwrap();
        let cases: Vec<(Bson, Option<&str>)> = vec![
            (
                Bson::ObjectId(oid),
                Some("db.coll::5e4fa224a6717632d6ee2e85"),
            ),
            (
                Bson::String("5e4fa224a6717632d6ee2e85".into()),
                Some("db.coll::5e4fa224a6717632d6ee2e85"),
            ),
            (Bson::String("-x".into()), Some("db.coll::-x")),
            (Bson::Int32(42), None),
            (Bson::Null, None),
        ];
        for (id, expected) in cases {
            assert_eq!(
                channel(id.clone(), IdChannelStyle::Raw).as_deref(),
                expected,
                "{id:?}"
            );
        }
    }
}
