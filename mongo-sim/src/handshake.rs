//! The `hello`/`isMaster` reply: what makes a client see one replica-set
//! member that is the primary (or, during a step-down, a secondary).
//!
//! `topologyVersion` is deliberately absent: with it, drivers switch to
//! streaming monitoring and expect the server to hold `hello` replies, and an
//! immediate answer makes them poll in a tight loop. Without it they poll
//! every `heartbeatFrequencyMS`, which is all a test needs.

use bson::{DateTime, Document, Timestamp, doc, oid::ObjectId};

use crate::engine::MongoVersion;

/// The largest BSON document accepted (`maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: i32 = 16 * 1024 * 1024;
/// The largest write batch (`maxWriteBatchSize`).
pub const MAX_WRITE_BATCH_SIZE: i32 = 100_000;
/// The version of the replica-set configuration; constant since members never change.
pub const SET_VERSION: i32 = 1;

/// Who this server is: fixed for its lifetime.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The replica-set name clients must ask for (`replicaSet=`).
    pub set_name: String,
    /// `127.0.0.1:<port>`, the only member in `hosts`.
    pub host: String,
    /// Which server release to imitate.
    pub version: MongoVersion,
}

/// What varies between two `hello` replies.
#[derive(Debug, Clone)]
pub(crate) struct HelloState {
    /// Primary, or secondary during a step-down.
    pub primary: bool,
    /// The election term, which `electionId` and `lastWrite` carry.
    pub term: u32,
    /// The connection's number, reported as `connectionId`.
    pub connection_id: i64,
    /// The client used the legacy `isMaster` name, so the reply says `ismaster`.
    pub legacy: bool,
    /// The client sent `helloOk: true`, so it may use `hello` from now on.
    pub hello_ok: bool,
    /// The newest oplog timestamp.
    pub last_write: Timestamp,
}

/// The `electionId` of a term: real servers put the term in the low bytes
/// after a `7fffffff` prefix, so it grows with each election.
pub(crate) fn election_id(term: u32) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    bytes[8..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// The reply body (without `ok`, `$clusterTime` and `operationTime`, which
/// every reply gets).
pub(crate) fn hello_reply(identity: &Identity, state: &HelloState) -> Document {
    let primary_key = if state.legacy {
        "ismaster"
    } else {
        "isWritablePrimary"
    };
    let op_time = doc! {"ts": state.last_write, "t": state.term as i64};
    let write_date = DateTime::from_millis(state.last_write.time as i64 * 1000);
    let mut reply = Document::new();
    if state.hello_ok {
        reply.insert("helloOk", true);
    }
    reply.insert(primary_key, state.primary);
    reply.insert("secondary", !state.primary);
    reply.insert("setName", identity.set_name.clone());
    reply.insert("setVersion", SET_VERSION);
    reply.insert("hosts", vec![identity.host.clone()]);
    reply.insert("me", identity.host.clone());
    if state.primary {
        reply.insert("primary", identity.host.clone());
        reply.insert("electionId", election_id(state.term));
    }
    reply.insert(
        "lastWrite",
        doc! {
            "opTime": op_time.clone(),
            "lastWriteDate": write_date,
            "majorityOpTime": op_time,
            "majorityWriteDate": write_date,
        },
    );
    reply.insert("maxBsonObjectSize", MAX_BSON_OBJECT_SIZE);
    reply.insert("maxMessageSizeBytes", crate::wire::MAX_MESSAGE_SIZE as i32);
    reply.insert("maxWriteBatchSize", MAX_WRITE_BATCH_SIZE);
    reply.insert("localTime", DateTime::now());
    reply.insert("logicalSessionTimeoutMinutes", 30);
    reply.insert("connectionId", state.connection_id);
    reply.insert("minWireVersion", 0);
    reply.insert("maxWireVersion", identity.version.max_wire_version());
    reply.insert("readOnly", false);
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(version: MongoVersion) -> Identity {
        Identity {
            set_name: "rs0".into(),
            host: "127.0.0.1:4000".into(),
            version,
        }
    }

    fn state(primary: bool, legacy: bool) -> HelloState {
        HelloState {
            primary,
            term: 3,
            connection_id: 12,
            legacy,
            hello_ok: legacy,
            last_write: Timestamp {
                time: 1_700_000_000,
                increment: 4,
            },
        }
    }

    #[test]
    fn replies_as_primary_or_secondary() {
        // (version, primary, legacy, primary field, expected wire version)
        let cases = [
            (MongoVersion::V4_4, true, true, "ismaster", 9),
            (MongoVersion::V7_0, true, false, "isWritablePrimary", 21),
            (MongoVersion::V8_0, false, false, "isWritablePrimary", 25),
            (MongoVersion::V5_0, false, true, "ismaster", 13),
        ];
        for (version, primary, legacy, key, wire) in cases {
            let reply = hello_reply(&identity(version), &state(primary, legacy));
            assert_eq!(reply.get_bool(key).unwrap(), primary);
            assert_eq!(reply.get_bool("secondary").unwrap(), !primary);
            assert_eq!(reply.get_i32("maxWireVersion").unwrap(), wire);
            assert_eq!(reply.get_i32("minWireVersion").unwrap(), 0);
            assert_eq!(reply.get_str("setName").unwrap(), "rs0");
            assert_eq!(reply.get_str("me").unwrap(), "127.0.0.1:4000");
            assert_eq!(
                reply.get_array("hosts").unwrap(),
                &vec![bson::Bson::String("127.0.0.1:4000".into())]
            );
            assert_eq!(reply.get_str("primary").is_ok(), primary);
            assert_eq!(reply.get_object_id("electionId").is_ok(), primary);
            assert_eq!(reply.get_bool("helloOk").is_ok(), legacy);
            assert_eq!(reply.get_i32("maxBsonObjectSize").unwrap(), 16_777_216);
            assert_eq!(reply.get_i32("maxMessageSizeBytes").unwrap(), 48_000_000);
            assert_eq!(reply.get_i32("logicalSessionTimeoutMinutes").unwrap(), 30);
            assert_eq!(reply.get_i64("connectionId").unwrap(), 12);
            assert!(!reply.contains_key("topologyVersion"));
            assert!(!reply.contains_key("compression"));
            let last_write = reply.get_document("lastWrite").unwrap();
            assert_eq!(
                last_write
                    .get_datetime("lastWriteDate")
                    .unwrap()
                    .timestamp_millis(),
                1_700_000_000_000
            );
        }
    }

    #[test]
    fn election_ids_grow_with_the_term() {
        assert!(election_id(2).bytes() > election_id(1).bytes());
        assert_eq!(election_id(1).to_hex(), "7fffffff0000000000000001");
    }
}
