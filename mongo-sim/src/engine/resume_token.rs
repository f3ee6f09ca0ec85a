//! Change-stream resume tokens in MongoDB's KeyString layout (version 1):
//! `82 <ts> 2B02 <tokenType> <txnOpIndex> <fromInvalidate> [<uuid>] [<documentKey>] 04`,
//! hex-encoded in `{_data}`. Tokens therefore sort by clusterTime like real
//! ones, and tests can decode them the way the research decoded the fixtures.

use bson::{Binary, Bson, Document, Timestamp, doc};

use super::CommandError;

/// tokenType of an event token.
pub(crate) const EVENT_TOKEN: u64 = 128;
/// tokenType of a high-water-mark token (a position, not an event).
pub(crate) const HIGH_WATER_MARK: u64 = 0;

/// What a resume token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    pub cluster_time: Timestamp,
    pub version: u64,
    pub token_type: u64,
    pub txn_op_index: u64,
    pub from_invalidate: bool,
}

/// The fields of a token to mint.
pub(crate) struct TokenParts<'a> {
    pub cluster_time: Timestamp,
    pub token_type: u64,
    pub txn_op_index: u64,
    pub from_invalidate: bool,
    pub uuid: Option<&'a Binary>,
    pub document_key: Option<&'a Document>,
}

/// Builds `{_data: "<hex>"}`.
pub(crate) fn encode(parts: &TokenParts<'_>) -> Document {
    let mut out = vec![0x82];
    out.extend_from_slice(&parts.cluster_time.time.to_be_bytes());
    out.extend_from_slice(&parts.cluster_time.increment.to_be_bytes());
    encode_unsigned(&mut out, 1);
    encode_unsigned(&mut out, parts.token_type);
    encode_unsigned(&mut out, parts.txn_op_index);
    out.push(if parts.from_invalidate { 0x6F } else { 0x6E });
    if let Some(uuid) = parts.uuid {
        encode_value(&mut out, &Bson::Binary(uuid.clone()));
    }
    if let Some(key) = parts.document_key {
        encode_object(&mut out, key);
    }
    out.push(0x04);
    doc! {"_data": hex_upper(&out)}
}

/// A high-water-mark token at `ts`.
pub(crate) fn high_water_mark(ts: Timestamp) -> Document {
    encode(&TokenParts {
        cluster_time: ts,
        token_type: HIGH_WATER_MARK,
        txn_op_index: 0,
        from_invalidate: false,
        uuid: None,
        document_key: None,
    })
}

fn invalid(message: &str) -> CommandError {
    CommandError::new(
        260,
        "InvalidResumeToken",
        format!("Invalid resume token: {message}"),
    )
}

/// Reads the leading fields of a token (`{_data: hex}`).
pub(crate) fn decode(token: &Bson) -> Result<ResumePoint, CommandError> {
    let Bson::Document(token) = token else {
        return Err(invalid("expected an object"));
    };
    let Ok(data) = token.get_str("_data") else {
        return Err(invalid("missing _data string"));
    };
    let bytes = parse_hex(data).ok_or_else(|| invalid("_data is not hex"))?;
    let mut reader = Reader {
        bytes: &bytes,
        at: 0,
    };
    if reader.byte()? != 0x82 {
        return Err(invalid("does not start with a timestamp"));
    }
    let time = u32::from_be_bytes(reader.take(4)?.try_into().expect("4 bytes"));
    let increment = u32::from_be_bytes(reader.take(4)?.try_into().expect("4 bytes"));
    let version = reader.unsigned()?;
    let token_type = reader.unsigned()?;
    let txn_op_index = reader.unsigned()?;
    let from_invalidate = match reader.byte()? {
        0x6E => false,
        0x6F => true,
        _ => return Err(invalid("bad fromInvalidate")),
    };
    Ok(ResumePoint {
        cluster_time: Timestamp { time, increment },
        version,
        token_type,
        txn_op_index,
        from_invalidate,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CommandError> {
        let byte = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| invalid("truncated"))?;
        self.at += 1;
        Ok(byte)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CommandError> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| invalid("truncated"))?;
        self.at += n;
        Ok(slice)
    }

    fn unsigned(&mut self) -> Result<u64, CommandError> {
        match self.byte()? {
            0x29 => Ok(0),
            kind @ 0x2B..=0x32 => {
                let len = usize::from(kind - 0x2A);
                let value = self
                    .take(len)?
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                Ok(value >> 1)
            }
            _ => Err(invalid("expected a non-negative integer")),
        }
    }
}

fn encode_unsigned(out: &mut Vec<u8>, value: u64) {
    if value == 0 {
        out.push(0x29);
        return;
    }
    let encoded = value << 1;
    let len = (8 - encoded.leading_zeros() as usize / 8).max(1);
    out.push(0x2A + len as u8);
    out.extend_from_slice(&encoded.to_be_bytes()[8 - len..]);
}

fn encode_signed(out: &mut Vec<u8>, value: i64) {
    if value >= 0 {
        encode_unsigned(out, value as u64);
        return;
    }
    let encoded = value.unsigned_abs() << 1;
    let len = (8 - encoded.leading_zeros() as usize / 8).max(1);
    out.push(0x28 - len as u8);
    out.extend(encoded.to_be_bytes()[8 - len..].iter().map(|b| !b));
}

fn encode_cstring(out: &mut Vec<u8>, text: &str) {
    for byte in text.bytes() {
        out.push(byte);
        if byte == 0 {
            out.push(0xFF);
        }
    }
    out.push(0);
}

fn type_byte(value: &Bson) -> u8 {
    match value {
        Bson::MinKey => 0x0A,
        Bson::Undefined => 0x0F,
        Bson::Null => 0x14,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 0x29,
        Bson::String(_) | Bson::Symbol(_) => 0x3C,
        Bson::Document(_) => 0x46,
        Bson::Array(_) => 0x50,
        Bson::Binary(_) => 0x5A,
        Bson::ObjectId(_) => 0x64,
        Bson::Boolean(false) => 0x6E,
        Bson::Boolean(true) => 0x6F,
        Bson::DateTime(_) => 0x78,
        Bson::Timestamp(_) => 0x82,
        Bson::RegularExpression(_) => 0x8C,
        Bson::MaxKey => 0xF0,
        _ => 0x3C,
    }
}

fn encode_object(out: &mut Vec<u8>, doc: &Document) {
    out.push(0x46);
    for (key, value) in doc {
        out.push(type_byte(value));
        encode_cstring(out, key);
        encode_value(out, value);
    }
    out.push(0);
}

fn encode_value(out: &mut Vec<u8>, value: &Bson) {
    match value {
        Bson::Int32(v) => encode_signed(out, i64::from(*v)),
        Bson::Int64(v) => encode_signed(out, *v),
        Bson::Double(v) => encode_signed(out, *v as i64),
        Bson::String(s) | Bson::Symbol(s) => {
            out.push(0x3C);
            encode_cstring(out, s);
        }
        Bson::Document(doc) => encode_object(out, doc),
        Bson::Array(items) => {
            out.push(0x50);
            for item in items {
                encode_value(out, item);
            }
            out.push(0);
        }
        Bson::Binary(bin) => {
            out.push(0x5A);
            let len = bin.bytes.len();
            if len < 0xFF {
                out.push(len as u8);
            } else {
                out.push(0xFF);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
            out.push(u8::from(bin.subtype));
            out.extend_from_slice(&bin.bytes);
        }
        Bson::ObjectId(oid) => {
            out.push(0x64);
            out.extend_from_slice(&oid.bytes());
        }
        Bson::DateTime(dt) => {
            out.push(0x78);
            let flipped = (dt.timestamp_millis() as u64) ^ (1 << 63);
            out.extend_from_slice(&flipped.to_be_bytes());
        }
        Bson::Timestamp(ts) => {
            out.push(0x82);
            out.extend_from_slice(&ts.time.to_be_bytes());
            out.extend_from_slice(&ts.increment.to_be_bytes());
        }
        other => out.push(type_byte(other)),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use bson::spec::BinarySubtype;

    use super::*;

    fn uuid(hex: &str) -> Binary {
        Binary {
            subtype: BinarySubtype::Uuid,
            bytes: parse_hex(hex).unwrap(),
        }
    }

    #[test]
    fn reproduces_real_tokens_byte_for_byte() {
        // cs-mongoshake42-insert / -drop / -dropDatabase.
        let insert_uuid = uuid("20D9F949CFC7496EA80E32BA633701A8");
        let oid = bson::oid::ObjectId::parse_str("5e4fa224a6717632d6ee2e85").unwrap();
        let key = doc! {"_id": oid};
        let drop_uuid = uuid("EE9B60D8845F42FF989D09018A730D60");
        let cases: Vec<(TokenParts<'_>, &str)> = vec![
            (
                TokenParts {
                    cluster_time: Timestamp {
                        time: 1582277156,
                        increment: 1,
                    },
                    token_type: EVENT_TOKEN,
                    txn_op_index: 0,
                    from_invalidate: false,
                    uuid: Some(&insert_uuid),
                    document_key: Some(&key),
                },
                "825E4FA224000000012B022C0100296E5A100420D9F949CFC7496EA80E32BA633701A846645F696400645E4FA224A6717632D6EE2E850004",
            ),
            (
                TokenParts {
                    cluster_time: Timestamp {
                        time: 1582534135,
                        increment: 1,
                    },
                    token_type: EVENT_TOKEN,
                    txn_op_index: 0,
                    from_invalidate: false,
                    uuid: Some(&drop_uuid),
                    document_key: None,
                },
                "825E538DF7000000012B022C0100296E5A1004EE9B60D8845F42FF989D09018A730D6004",
            ),
            (
                TokenParts {
                    cluster_time: Timestamp {
                        time: 1582535589,
                        increment: 4,
                    },
                    token_type: EVENT_TOKEN,
                    txn_op_index: 0,
                    from_invalidate: false,
                    uuid: None,
                    document_key: None,
                },
                "825E5393A5000000042B022C0100296E04",
            ),
        ];
        for (parts, want) in cases {
            assert_eq!(encode(&parts).get_str("_data").unwrap(), want);
        }
    }

    #[test]
    fn decodes_what_it_encodes_and_rejects_garbage() {
        let token = encode(&TokenParts {
            cluster_time: Timestamp {
                time: 1700000000,
                increment: 300,
            },
            token_type: EVENT_TOKEN,
            txn_op_index: 5,
            from_invalidate: true,
            uuid: None,
            document_key: Some(&doc! {"_id": -3}),
        });
        let point = decode(&Bson::Document(token)).unwrap();
        assert_eq!(
            point.cluster_time,
            Timestamp {
                time: 1700000000,
                increment: 300
            }
        );
        assert_eq!(
            (
                point.version,
                point.token_type,
                point.txn_op_index,
                point.from_invalidate
            ),
            (1, 128, 5, true)
        );
        for bad in [doc! {"_data": "zz"}, doc! {"_data": "41"}, doc! {"x": 1}] {
            assert_eq!(decode(&Bson::Document(bad)).unwrap_err().code, 260);
        }
    }

    #[test]
    fn tokens_sort_by_cluster_time() {
        let a = high_water_mark(Timestamp {
            time: 5,
            increment: 9,
        });
        let b = high_water_mark(Timestamp {
            time: 6,
            increment: 1,
        });
        assert!(a.get_str("_data").unwrap() < b.get_str("_data").unwrap());
    }
}
