//! The message string redis-oplog parses: `{"e":E,"d":{"_id":ID},"f":[...]}`.
//!
//! Byte-exact with oplogtoredis for string and ObjectId ids: compact, keys in
//! the order `e`, `d`, `f`, and `f` always an array. Written into one
//! pre-sized `String` with no intermediate values.

use bson::{RawBsonRef, RawDocument};
use thiserror::Error;

use super::ejson::{self, EjsonError, write_json_string, write_json_string_contents};
use super::entry::TransformError;
use super::fields::{FieldSink, changed_fields};

/// The `e` of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `"i"`: a document was inserted.
    Insert,
    /// `"u"`: a document was updated or replaced.
    Update,
    /// `"r"`: a document was removed (the oplog's `d`).
    Remove,
}

impl EventKind {
    /// The one-letter code redis-oplog expects.
    pub fn code(self) -> &'static str {
        match self {
            Self::Insert => "i",
            Self::Update => "u",
            Self::Remove => "r",
        }
    }
}

/// Why no message could be written for an operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// The `_id` holds a type Meteor's EJSON cannot carry (the type's name).
    #[error("unsupported _id type: {0}")]
    UnsupportedId(&'static str),
    /// The entry itself is unreadable.
    #[error(transparent)]
    Malformed(#[from] TransformError),
}

/// A finished message and what it could not express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The exact JSON text to publish.
    pub text: String,
    /// Parts of the update that did not yield a field name.
    pub unprocessable_fields: u32,
}

/// Writes the message for one operation: `event` on the document `id`,
/// with `o` (the oplog entry's `o`) giving the changed fields.
pub fn build_message(
    event: EventKind,
    id: RawBsonRef<'_>,
    o: &RawDocument,
    deep_fields: bool,
) -> Result<Message, MessageError> {
    let mut text = String::with_capacity(96);
    text.push_str(r#"{"e":""#);
    text.push_str(event.code());
    text.push_str(r#"","d":{"_id":"#);
    ejson::write_value(&mut text, id).map_err(|error| match error {
        EjsonError::Unsupported(element_type) => {
            MessageError::UnsupportedId(ejson::type_name(element_type))
        }
        EjsonError::CorruptBson(detail) => {
            MessageError::Malformed(TransformError::CorruptBson(detail))
        }
        EjsonError::TooDeep => MessageError::Malformed(TransformError::TooDeep(ejson::MAX_DEPTH)),
    })?;
    text.push_str(r#"},"f":["#);
    let mut list = JsonFieldList { text, empty: true };
    let unprocessable_fields = changed_fields(event, o, deep_fields, &mut list)?;
    let mut text = list.text;
    text.push_str("]}");
    Ok(Message {
        text,
        unprocessable_fields,
    })
}

/// Appends fields as JSON strings, comma-separated.
struct JsonFieldList {
    text: String,
    empty: bool,
}

impl FieldSink for JsonFieldList {
    fn field(&mut self, prefix: &str, name: &str) {
        if !self.empty {
            self.text.push(',');
        }
        self.empty = false;
        match (prefix.is_empty(), name.is_empty()) {
            (true, _) => write_json_string(&mut self.text, name),
            (false, true) => write_json_string(&mut self.text, prefix),
            (false, false) => {
                // The joined path, escaped in parts to avoid allocating it.
                self.text.push('"');
                write_json_string_contents(&mut self.text, prefix);
                self.text.push('.');
                write_json_string_contents(&mut self.text, name);
                self.text.push('"');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Bson, doc, oid::ObjectId};

    fn message(
        event: EventKind,
        id: Bson,
        o: bson::Document,
        deep: bool,
    ) -> Result<Message, MessageError> {
        let holder = bson::RawDocumentBuf::try_from(&doc! { "_id": id, "o": o }).unwrap();
        let id = holder.get("_id").unwrap().unwrap();
        let o = holder.get_document("o").unwrap();
        build_message(event, id, o, deep)
    }

    #[test]
    fn writes_oplogtoredis_messages_byte_for_byte() {
        let oid = ObjectId::parse_str("5e4fa224a6717632d6ee2e85").unwrap();
        let cases = vec![
            (
                EventKind::Insert,
                Bson::ObjectId(oid),
                doc! { "_id": oid, "kick": 1 },
                r#"{"e":"i","d":{"_id":{"$type":"oid","$value":"5e4fa224a6717632d6ee2e85"}},"f":["_id","kick"]}"#,
            ),
            (
                EventKind::Update,
                Bson::String("someId".into()),
                doc! { "$set": { "one": 1, "four": 4 } },
                r#"{"e":"u","d":{"_id":"someId"},"f":["one","four"]}"#,
            ),
            (
                EventKind::Remove,
                Bson::String("x".into()),
                doc! { "_id": "x" },
                r#"{"e":"r","d":{"_id":"x"},"f":[]}"#,
            ),
        ];
        for (event, id, o, expected) in cases {
            assert_eq!(message(event, id, o, false).unwrap().text, expected);
        }
    }

    #[test]
    fn escapes_field_names_and_joined_paths() {
        let o = doc! { "$v": 2, "diff": { "sa\"b": { "u": { "c\\d": 1 } } } };
        let text = message(EventKind::Update, Bson::Int32(1), o, true)
            .unwrap()
            .text;
        assert_eq!(text, r#"{"e":"u","d":{"_id":1},"f":["a\"b.c\\d"]}"#);
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed["f"][0], "a\"b.c\\d");
    }

    #[test]
    fn refuses_unencodable_ids() {
        let id = Bson::Timestamp(bson::Timestamp {
            time: 1,
            increment: 1,
        });
        let error = message(EventKind::Remove, id, doc! {}, false).unwrap_err();
        assert_eq!(error, MessageError::UnsupportedId("Timestamp"));
        assert_eq!(error.to_string(), "unsupported _id type: Timestamp");
    }
}
