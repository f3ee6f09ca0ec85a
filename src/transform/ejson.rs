//! Meteor EJSON, written straight from raw BSON into a `String`.
//!
//! redis-oplog runs every message through Meteor's `EJSON.parse`, so an `_id`
//! (or a whole document in full-document mode) must come out in the shapes
//! Meteor's EJSON registers: `{"$type":"oid","$value":..}` for ObjectIds,
//! `{"$date":ms}`, `{"$binary":b64}`, `{"$InfNaN":sign}`... Writing the JSON by
//! hand keeps BSON field order (serde_json's map would sort it) and avoids
//! building an intermediate tree on the hot path.

use std::fmt::Write as _;

use base64::Engine as _;
use bson::spec::ElementType;
use bson::{RawBsonRef, RawDocument};
use thiserror::Error;

/// How deep documents and arrays may nest before encoding gives up.
///
/// MongoDB itself refuses documents nested deeper than 100 levels (plus a few
/// for its own wrappers); the bound only exists so hostile input can never
/// exhaust the stack.
pub const MAX_DEPTH: usize = 200;

/// Why a value could not be written as Meteor EJSON.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EjsonError {
    /// Meteor's EJSON has no representation for this BSON type (Timestamp,
    /// MinKey, MaxKey, regex, JavaScript, Symbol, Undefined, DBPointer).
    #[error("unsupported type {}", type_name(*.0))]
    Unsupported(ElementType),
    /// The BSON bytes themselves are corrupt.
    #[error("corrupt BSON: {0}")]
    CorruptBson(String),
    /// Nesting deeper than `MAX_DEPTH` (200) levels.
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// A short, stable, human name for a BSON type, used in skip reasons and logs.
pub fn type_name(element_type: ElementType) -> &'static str {
    match element_type {
        ElementType::Double => "Double",
        ElementType::String => "String",
        ElementType::EmbeddedDocument => "Document",
        ElementType::Array => "Array",
        ElementType::Binary => "Binary",
        ElementType::Undefined => "Undefined",
        ElementType::ObjectId => "ObjectId",
        ElementType::Boolean => "Boolean",
        ElementType::DateTime => "DateTime",
        ElementType::Null => "Null",
        ElementType::RegularExpression => "RegularExpression",
        ElementType::DbPointer => "DBPointer",
        ElementType::JavaScriptCode => "JavaScriptCode",
        ElementType::Symbol => "Symbol",
        ElementType::JavaScriptCodeWithScope => "JavaScriptCodeWithScope",
        ElementType::Int32 => "Int32",
        ElementType::Timestamp => "Timestamp",
        ElementType::Int64 => "Int64",
        ElementType::Decimal128 => "Decimal128",
        ElementType::MaxKey => "MaxKey",
        ElementType::MinKey => "MinKey",
    }
}

/// Appends `value` as Meteor EJSON.
pub fn write_value(out: &mut String, value: RawBsonRef<'_>) -> Result<(), EjsonError> {
    write_value_at(out, value, 0)
}

/// Appends `doc` as a Meteor EJSON object, keys in BSON order.
pub fn write_document(out: &mut String, doc: &RawDocument) -> Result<(), EjsonError> {
    write_document_at(out, doc, 0)
}

fn write_value_at(out: &mut String, value: RawBsonRef<'_>, depth: usize) -> Result<(), EjsonError> {
    match value {
        RawBsonRef::String(s) => write_json_string(out, s),
        RawBsonRef::ObjectId(oid) => {
            out.push_str(r#"{"$type":"oid","$value":""#);
            write_hex(out, &oid.bytes());
            out.push_str("\"}");
        }
        RawBsonRef::Int32(n) => write_display(out, n),
        RawBsonRef::Int64(n) => write_display(out, n),
        RawBsonRef::Double(x) => write_double(out, x),
        RawBsonRef::Boolean(b) => out.push_str(if b { "true" } else { "false" }),
        RawBsonRef::Null => out.push_str("null"),
        RawBsonRef::DateTime(dt) => {
            out.push_str(r#"{"$date":"#);
            write_display(out, dt.timestamp_millis());
            out.push('}');
        }
        RawBsonRef::Binary(bin) => {
            // Meteor's EJSON binary is a plain byte array: the BSON subtype
            // (UUID or generic) has no EJSON counterpart and is dropped.
            out.push_str(r#"{"$binary":""#);
            base64::engine::general_purpose::STANDARD.encode_string(bin.bytes, out);
            out.push_str("\"}");
        }
        RawBsonRef::Decimal128(d) => {
            // The `Decimal` type registered by Meteor's mongo-decimal package.
            out.push_str(r#"{"$type":"Decimal","$value":"#);
            write_json_string(out, &d.to_string());
            out.push('}');
        }
        RawBsonRef::Document(doc) => write_document_at(out, doc, depth + 1)?,
        RawBsonRef::Array(array) => {
            if depth + 1 > MAX_DEPTH {
                return Err(EjsonError::TooDeep);
            }
            out.push('[');
            for (index, item) in array.into_iter().enumerate() {
                let item = item.map_err(corrupt)?;
                if index > 0 {
                    out.push(',');
                }
                write_value_at(out, item, depth + 1)?;
            }
            out.push(']');
        }
        other => return Err(EjsonError::Unsupported(other.element_type())),
    }
    Ok(())
}

fn write_document_at(out: &mut String, doc: &RawDocument, depth: usize) -> Result<(), EjsonError> {
    if depth > MAX_DEPTH {
        return Err(EjsonError::TooDeep);
    }
    // An object that looks like one of EJSON's own type wrappers must be
    // escaped, or Meteor's EJSON.parse would turn it into that type.
    let escape = looks_like_ejson_type(doc)?;
    if escape {
        out.push_str(r#"{"$escape":"#);
    }
    out.push('{');
    for (index, element) in doc.iter().enumerate() {
        let (key, value) = element.map_err(corrupt)?;
        if index > 0 {
            out.push(',');
        }
        write_json_string(out, key.as_str());
        out.push(':');
        write_value_at(out, value, depth)?;
    }
    out.push('}');
    if escape {
        out.push('}');
    }
    Ok(())
}

/// Meteor's `$escape` rule: an object with one or two keys that matches one
/// of EJSON's built-in JSON shapes (`$date`, `$InfNaN`, `$binary`, `$escape`
/// alone; `$regexp`+`$flags` or `$type`+`$value` together).
fn looks_like_ejson_type(doc: &RawDocument) -> Result<bool, EjsonError> {
    let mut keys: [&str; 2] = ["", ""];
    let mut count = 0;
    for element in doc.iter() {
        let (key, _) = element.map_err(corrupt)?;
        if count == 2 {
            return Ok(false);
        }
        keys[count] = key.as_str();
        count += 1;
    }
    let has = |name: &str| keys[..count].contains(&name);
    Ok(match count {
        1 => matches!(keys[0], "$date" | "$InfNaN" | "$binary" | "$escape"),
        2 => (has("$regexp") && has("$flags")) || (has("$type") && has("$value")),
        _ => false,
    })
}

fn corrupt(error: bson::error::Error) -> EjsonError {
    EjsonError::CorruptBson(error.to_string())
}

fn write_display(out: &mut String, value: impl std::fmt::Display) {
    // Writing into a String cannot fail.
    let _ = write!(out, "{value}");
}

/// Appends lowercase hex, the form Meteor and redis-oplog use for ObjectIds.
pub fn write_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
}

/// A double as Meteor's EJSON writes it: finite numbers as JavaScript prints
/// them, NaN and the infinities as `{"$InfNaN":sign}`.
fn write_double(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str(r#"{"$InfNaN":0}"#);
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 {
            r#"{"$InfNaN":1}"#
        } else {
            r#"{"$InfNaN":-1}"#
        });
    } else {
        write_js_number(out, x);
    }
}

/// Appends a finite `f64` exactly as JavaScript's `Number.prototype.toString`
/// (and so `JSON.stringify`) prints it: `2` for 2.0, `1.5`, `1e+21`, `1e-7`.
///
/// This matters for channel names: Meteor subscribes to `~` followed by
/// `JSON.stringify(id)`, so a number must be spelled the JavaScript way to
/// match. Rust's shortest round-trip digits are the same digits JavaScript
/// picks; only the layout (ECMAScript Number::toString) differs.
pub fn write_js_number(out: &mut String, x: f64) {
    if x == 0.0 {
        // JSON.stringify(-0) is "0".
        out.push('0');
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    // `{:e}` yields the shortest round-trip digits: "1.2345e-7", "5e0".
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    // ECMAScript's n: the value is 0.d1d2..dk × 10^n.
    let n = exponent + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n >= 1 { '+' } else { '-' });
        write_display(out, (n - 1).abs());
    }
}

/// Appends `s` as a JSON string literal, escaped the way `JSON.stringify`
/// and serde_json do (quote, backslash and control characters only).
pub fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    write_json_string_contents(out, s);
    out.push('"');
}

/// Appends `s` escaped for the inside of a JSON string literal, without the
/// quotes, so a path can be written in parts.
pub fn write_json_string_contents(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &str = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..index]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escape);
        }
        start = index + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{
        Binary, Bson, DateTime, Decimal128, Timestamp, doc, oid::ObjectId, spec::BinarySubtype,
    };

    fn encode(value: Bson) -> Result<String, EjsonError> {
        // Wrap in a document so the test goes through raw BSON like production.
        let raw = bson::RawDocumentBuf::try_from(&doc! { "v": value }).unwrap();
        let mut out = String::new();
        write_value(&mut out, raw.get("v").unwrap().unwrap())?;
        Ok(out)
    }

    #[test]
    fn encodes_every_supported_type_like_meteor() {
        let oid = ObjectId::parse_str("5e4fa224a6717632d6ee2e85").unwrap();
        let cases: Vec<(Bson, &str)> = vec![
            (
                Bson::ObjectId(oid),
                r#"{"$type":"oid","$value":"5e4fa224a6717632d6ee2e85"}"#,
            ),
            (Bson::String("abc".into()), r#""abc""#),
            (
                Bson::String("a\"b\\c\n\u{1}é".into()),
                r#""a\"b\\c\n\u0001é""#,
            ),
            (Bson::Int32(-7), "-7"),
            (Bson::Int64(6704884522506256385), "6704884522506256385"),
            (Bson::Double(2.0), "2"),
            (Bson::Double(1.5), "1.5"),
            (Bson::Double(-0.0), "0"),
            (Bson::Double(f64::NAN), r#"{"$InfNaN":0}"#),
            (Bson::Double(f64::INFINITY), r#"{"$InfNaN":1}"#),
            (Bson::Double(f64::NEG_INFINITY), r#"{"$InfNaN":-1}"#),
            (Bson::Boolean(true), "true"),
            (Bson::Null, "null"),
            (
                Bson::DateTime(DateTime::from_millis(1582277156570)),
                r#"{"$date":1582277156570}"#,
            ),
            (
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: vec![0xff, 0, 1],
                }),
                r#"{"$binary":"/wAB"}"#,
            ),
            (
                Bson::Decimal128("1.5".parse::<Decimal128>().unwrap()),
                r#"{"$type":"Decimal","$value":"1.5"}"#,
            ),
            (
                Bson::Array(vec![Bson::Int32(1), Bson::String("x".into())]),
                r#"[1,"x"]"#,
            ),
            (
                Bson::Document(doc! { "db": "test", "coll": "melon", "docID": 1 }),
                r#"{"db":"test","coll":"melon","docID":1}"#,
            ),
            (Bson::Document(doc! {}), "{}"),
        ];
        for (value, expected) in cases {
            assert_eq!(encode(value.clone()).unwrap(), expected, "{value:?}");
        }
    }

    #[test]
    fn escapes_objects_that_look_like_ejson_types() {
        let cases: Vec<(Bson, &str)> = vec![
            (
                Bson::Document(doc! { "$date": 5 }),
                r#"{"$escape":{"$date":5}}"#,
            ),
            (
                Bson::Document(doc! { "$value": "x", "$type": "oid" }),
                r#"{"$escape":{"$value":"x","$type":"oid"}}"#,
            ),
            (
                Bson::Document(doc! { "$date": 5, "other": 1 }),
                r#"{"$date":5,"other":1}"#,
            ),
            (
                Bson::Document(doc! { "$type": "a", "$value": 1, "x": 2 }),
                r#"{"$type":"a","$value":1,"x":2}"#,
            ),
        ];
        for (value, expected) in cases {
            assert_eq!(encode(value.clone()).unwrap(), expected, "{value:?}");
        }
    }

    #[test]
    fn refuses_types_meteor_cannot_represent() {
        let cases = vec![
            (
                Bson::Timestamp(Timestamp {
                    time: 1,
                    increment: 2,
                }),
                "Timestamp",
            ),
            (Bson::MinKey, "MinKey"),
            (Bson::MaxKey, "MaxKey"),
            (
                Bson::RegularExpression(bson::Regex {
                    pattern: "a".try_into().unwrap(),
                    options: "i".try_into().unwrap(),
                }),
                "RegularExpression",
            ),
            (Bson::Document(doc! { "inner": Bson::MaxKey }), "MaxKey"),
        ];
        for (value, name) in cases {
            let error = encode(value.clone()).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("unsupported type {name}"),
                "{value:?}"
            );
        }
    }

    #[test]
    fn prints_numbers_the_javascript_way() {
        let cases = [
            (1.0, "1"),
            (123456789.0, "123456789"),
            (0.1, "0.1"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1e21, "1e+21"),
            (1.2345e21, "1.2345e+21"),
            (1e20, "100000000000000000000"),
            (-2.5, "-2.5"),
            (123.456, "123.456"),
            (5e-324, "5e-324"),
        ];
        for (x, expected) in cases {
            let mut out = String::new();
            write_js_number(&mut out, x);
            assert_eq!(out, expected, "{x}");
        }
    }

    #[test]
    fn refuses_absurd_nesting_without_overflowing() {
        let mut value = Bson::Int32(1);
        for _ in 0..(MAX_DEPTH + 5) {
            value = Bson::Document(doc! { "a": value });
        }
        assert_eq!(encode(value), Err(EjsonError::TooDeep));
    }
}
