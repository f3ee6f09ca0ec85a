//! Synthetic oplog entries shaped like MongoDB 7.0's, and the `_id` scheme
//! that lets the subscriber tell which write a delivery belongs to.
//!
//! The relay only carries `{_id}` in its messages, so the `_id` itself is the
//! key back to the writer's send instant: an ObjectId whose first 4 bytes are
//! the run's tag and whose last 8 are the sequence number.

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{Binary, Bson, DateTime, Document, Timestamp, doc};

/// The database every benchmark entry is written to.
pub const DATABASE: &str = "bench";

/// The `_id` of write `seq` in the run tagged `run`.
pub fn bench_id(run: u32, seq: u64) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&run.to_be_bytes());
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// The sequence number behind a delivered id's hex, if it belongs to `run`.
pub fn seq_of(run: u32, hex: &str) -> Option<u64> {
    if hex.len() != 24 || u32::from_str_radix(&hex[..8], 16).ok()? != run {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

/// Finds the ObjectId hex in a redis-oplog message
/// (`{"e":..,"d":{"_id":{"$type":"oid","$value":"<hex>"}},..}`) without a
/// full JSON parse, so the subscriber stays cheap next to the relay.
pub fn oid_hex_in_message(message: &str) -> Option<&str> {
    const MARKER: &str = "\"$value\":\"";
    let start = message.find(MARKER)? + MARKER.len();
    message.get(start..start + 24)
}

fn collection_uuid() -> Binary {
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: vec![0x5d; 16],
    }
}

/// An insert as a 7.0 primary writes it (`op, ns, ui, o, ts, t, v, wall`);
/// `ts` is left to the simulator unless given.
pub fn insert(ns: &str, id: ObjectId, seq: u64, ts: Option<Timestamp>) -> Document {
    let mut entry = doc! {
        "op": "i",
        "ns": ns,
        "ui": collection_uuid(),
        "o": {
            "_id": id,
            "name": format!("item {seq}"),
            "count": seq as i64,
            "tags": ["alpha", "beta"],
            "owner": { "id": "u42", "team": "core" },
            "createdAt": DateTime::now(),
        },
    };
    finish(&mut entry, ts);
    entry
}

/// A 5.0+ (`$v: 2`) update touching one field and adding another.
pub fn update_v2(ns: &str, id: ObjectId, seq: u64, ts: Option<Timestamp>) -> Document {
    let mut entry = doc! {
        "op": "u",
        "ns": ns,
        "ui": collection_uuid(),
        "o": { "$v": 2, "diff": { "u": { "count": seq as i64 }, "i": { "seen": true } } },
        "o2": { "_id": id },
    };
    finish(&mut entry, ts);
    entry
}

/// A delete: `o` holds only the `_id`.
pub fn delete(ns: &str, id: ObjectId, ts: Option<Timestamp>) -> Document {
    let mut entry = doc! {
        "op": "d",
        "ns": ns,
        "ui": collection_uuid(),
        "o": { "_id": id },
    };
    finish(&mut entry, ts);
    entry
}

fn finish(entry: &mut Document, ts: Option<Timestamp>) {
    if let Some(ts) = ts {
        entry.insert("ts", Bson::Timestamp(ts));
    }
    entry.insert("t", 1i64);
    entry.insert("v", 2i64);
    entry.insert("wall", DateTime::now());
}

/// Inserts, v2 updates and deletes in equal parts, with increasing `ts`,
/// for the transform measurement (which needs `ts` on every entry).
pub fn synthetic_mix(count: u64) -> Vec<Document> {
    let ns = format!("{DATABASE}.mix");
    (0..count)
        .map(|seq| {
            let ts = Some(Timestamp {
                time: 1_700_000_000 + (seq / 1000) as u32,
                increment: (seq % 1000) as u32 + 1,
            });
            let id = bench_id(7, seq / 3);
            match seq % 3 {
                0 => insert(&ns, id, seq, ts),
                1 => update_v2(&ns, id, seq, ts),
                _ => delete(&ns, id, ts),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_their_hex() {
        for (run, seq) in [(1, 0), (9, 1), (u32::MAX, u64::MAX), (3, 123_456_789)] {
            let hex = bench_id(run, seq).to_hex();
            assert_eq!(seq_of(run, &hex), Some(seq));
            assert_eq!(seq_of(run.wrapping_add(1), &hex), None);
        }
        assert_eq!(seq_of(1, "abc"), None);
    }

    #[test]
    fn the_id_is_found_in_a_message() {
        let hex = bench_id(2, 5).to_hex();
        let message =
            format!(r#"{{"e":"i","d":{{"_id":{{"$type":"oid","$value":"{hex}"}}}},"f":["_id"]}}"#);
        assert_eq!(oid_hex_in_message(&message), Some(hex.as_str()));
        assert_eq!(
            oid_hex_in_message(r#"{"e":"i","d":{"_id":"x"},"f":[]}"#),
            None
        );
    }
}
