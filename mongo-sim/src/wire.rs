//! MongoDB wire framing: turning bytes from a socket into command documents
//! and reply documents back into bytes.
//!
//! The Rust driver only speaks OP_MSG. PyMongo and mongosh open every
//! connection with a legacy OP_QUERY `isMaster` and expect an OP_REPLY, so
//! that pair is understood too. Compression is never negotiated (the
//! handshake omits `compression`), so OP_COMPRESSED is refused.

use bson::Document;
use tokio::io::{AsyncRead, AsyncReadExt};

/// OP_REPLY: the legacy reply to an OP_QUERY.
pub const OP_REPLY: i32 = 1;
/// OP_QUERY: the legacy query, used only for the first handshake of old-style clients.
pub const OP_QUERY: i32 = 2004;
/// OP_COMPRESSED: only sent after compression was negotiated, which never happens here.
pub const OP_COMPRESSED: i32 = 2012;
/// OP_MSG: every modern command and reply.
pub const OP_MSG: i32 = 2013;

/// The largest message accepted, as advertised in `hello` (`maxMessageSizeBytes`).
pub const MAX_MESSAGE_SIZE: usize = 48_000_000;

const HEADER_LEN: usize = 16;
const FLAG_CHECKSUM_PRESENT: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;

/// Why a message could not be read; the connection is closed on any of these
/// because the byte stream can no longer be trusted to be in sync.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed mid-message.
    #[error("reading a message: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix is smaller than a header or above the advertised limit.
    #[error("message length {0} is out of range")]
    BadLength(i64),
    /// An opcode this server does not implement (e.g. OP_COMPRESSED).
    #[error("unsupported opcode {0}")]
    UnsupportedOpcode(i32),
    /// The body does not follow the opcode's layout.
    #[error("malformed {opcode} message: {detail}")]
    Malformed {
        /// Which message kind was being parsed.
        opcode: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// OP_MSG carried a CRC-32C that does not match its contents.
    #[error("OP_MSG checksum mismatch")]
    Checksum,
}

/// A command as received, with enough framing detail to answer it correctly.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// An OP_MSG command with its kind-1 document sequences merged in as arrays.
    Msg {
        /// The client's `requestID`, echoed as `responseTo`.
        request_id: i32,
        /// Set when the client does not want a reply (unacknowledged writes).
        more_to_come: bool,
        /// The command document.
        command: Document,
    },
    /// A legacy OP_QUERY on `<db>.$cmd` (the handshake of PyMongo and mongosh).
    Query {
        /// The client's `requestID`, echoed as `responseTo`.
        request_id: i32,
        /// `fullCollectionName`, e.g. `admin.$cmd`.
        collection: String,
        /// The query document with any `$query` wrapper removed.
        command: Document,
    },
}

impl Request {
    /// The client's request id, which the reply must name in `responseTo`.
    pub fn request_id(&self) -> i32 {
        match self {
            Request::Msg { request_id, .. } | Request::Query { request_id, .. } => *request_id,
        }
    }
}

/// Reads one whole message. Returns `Ok(None)` when the peer closed the
/// connection cleanly between messages.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Request>, WireError> {
    let mut length_bytes = [0u8; 4];
    match reader.read_exact(&mut length_bytes).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let length = i32::from_le_bytes(length_bytes);
    if (length as i64) < HEADER_LEN as i64 || length as usize > MAX_MESSAGE_SIZE {
        return Err(WireError::BadLength(length as i64));
    }
    let mut message = vec![0u8; length as usize];
    message[..4].copy_from_slice(&length_bytes);
    reader.read_exact(&mut message[4..]).await?;
    verify_checksum(&message)?;
    parse_request(&message).map(Some)
}

/// Parses a complete message (header included).
pub fn parse_request(message: &[u8]) -> Result<Request, WireError> {
    if message.len() < HEADER_LEN {
        return Err(WireError::BadLength(message.len() as i64));
    }
    let declared = read_i32(message, 0) as i64;
    if declared != message.len() as i64 {
        return Err(WireError::BadLength(declared));
    }
    let request_id = read_i32(message, 4);
    let op_code = read_i32(message, 12);
    let body = &message[HEADER_LEN..];
    match op_code {
        OP_MSG => parse_op_msg(request_id, body),
        OP_QUERY => parse_op_query(request_id, body),
        // Compression is never accepted in the handshake, so a client
        // sending this has ignored the reply.
        OP_COMPRESSED => Err(WireError::UnsupportedOpcode(OP_COMPRESSED)),
        other => Err(WireError::UnsupportedOpcode(other)),
    }
}

fn parse_op_msg(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let malformed = |detail: String| WireError::Malformed {
        opcode: "OP_MSG",
        detail,
    };
    if body.len() < 4 {
        return Err(malformed("no flag bits".into()));
    }
    let flags = read_i32(body, 0) as u32;
    let mut sections = &body[4..];
    if flags & FLAG_CHECKSUM_PRESENT != 0 {
        if sections.len() < 4 {
            return Err(malformed("checksum flag set but no checksum".into()));
        }
        // The CRC itself is checked by `verify_checksum`, which sees the header.
        sections = &body[4..body.len() - 4];
    }
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<bson::Bson>)> = Vec::new();
    while !sections.is_empty() {
        let kind = sections[0];
        sections = &sections[1..];
        match kind {
            0 => {
                let (doc, rest) = take_document(sections).map_err(malformed)?;
                if command.replace(doc).is_some() {
                    return Err(malformed("more than one kind-0 section".into()));
                }
                sections = rest;
            }
            1 => {
                if sections.len() < 4 {
                    return Err(malformed("truncated kind-1 section".into()));
                }
                let size = read_i32(sections, 0);
                if size < 5 || size as usize > sections.len() {
                    return Err(malformed(format!("kind-1 section size {size}")));
                }
                let (section, rest) = sections.split_at(size as usize);
                sequences.push(parse_sequence(&section[4..]).map_err(malformed)?);
                sections = rest;
            }
            other => return Err(malformed(format!("unknown section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| malformed("no kind-0 section".into()))?;
    for (identifier, documents) in sequences {
        command.insert(identifier, bson::Bson::Array(documents));
    }
    Ok(Request::Msg {
        request_id,
        more_to_come: flags & FLAG_MORE_TO_COME != 0,
        command,
    })
}

/// Verifies an OP_MSG checksum over the whole message; kept separate from
/// parsing because it needs the header bytes.
pub fn verify_checksum(message: &[u8]) -> Result<(), WireError> {
    if message.len() < HEADER_LEN + 4 || read_i32(message, 12) != OP_MSG {
        return Ok(());
    }
    let flags = read_i32(message, HEADER_LEN) as u32;
    if flags & FLAG_CHECKSUM_PRESENT == 0 {
        return Ok(());
    }
    if message.len() < HEADER_LEN + 8 {
        return Err(WireError::Checksum);
    }
    let split = message.len() - 4;
    let expected = u32::from_le_bytes(message[split..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&message[..split]) == expected {
        Ok(())
    } else {
        Err(WireError::Checksum)
    }
}

fn parse_sequence(section: &[u8]) -> Result<(String, Vec<bson::Bson>), String> {
    let (identifier, mut rest) = take_cstring(section)?;
    let mut documents = Vec::new();
    while !rest.is_empty() {
        let (doc, after) = take_document(rest)?;
        documents.push(bson::Bson::Document(doc));
        rest = after;
    }
    Ok((identifier, documents))
}

fn parse_op_query(request_id: i32, body: &[u8]) -> Result<Request, WireError> {
    let malformed = |detail: String| WireError::Malformed {
        opcode: "OP_QUERY",
        detail,
    };
    if body.len() < 4 {
        return Err(malformed("no flags".into()));
    }
    let (collection, rest) = take_cstring(&body[4..]).map_err(malformed)?;
    if rest.len() < 8 {
        return Err(malformed("no skip/return counts".into()));
    }
    let (query, _projection) = take_document(&rest[8..]).map_err(malformed)?;
    let command = match query.get("$query") {
        Some(bson::Bson::Document(inner)) => inner.clone(),
        _ => query,
    };
    Ok(Request::Query {
        request_id,
        collection,
        command,
    })
}

fn take_document(bytes: &[u8]) -> Result<(Document, &[u8]), String> {
    if bytes.len() < 5 {
        return Err("truncated document".into());
    }
    let size = read_i32(bytes, 0);
    if size < 5 || size as usize > bytes.len() {
        return Err(format!("document size {size} exceeds the message"));
    }
    let (doc_bytes, rest) = bytes.split_at(size as usize);
    let doc = Document::from_reader(doc_bytes).map_err(|e| format!("invalid BSON: {e}"))?;
    Ok((doc, rest))
}

fn take_cstring(bytes: &[u8]) -> Result<(String, &[u8]), String> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or("unterminated string")?;
    let text = std::str::from_utf8(&bytes[..end]).map_err(|e| format!("invalid UTF-8: {e}"))?;
    Ok((text.to_owned(), &bytes[end + 1..]))
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Frames a reply document (already BSON) as an OP_MSG with one kind-0 section.
pub fn encode_op_msg(request_id: i32, response_to: i32, document: &[u8]) -> Vec<u8> {
    let length = HEADER_LEN + 4 + 1 + document.len();
    let mut out = Vec::with_capacity(length);
    push_header(&mut out, length, request_id, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(document);
    out
}

/// Frames a reply document as an OP_REPLY holding that single document, the
/// answer to a legacy OP_QUERY command.
pub fn encode_op_reply(request_id: i32, response_to: i32, document: &[u8]) -> Vec<u8> {
    let length = HEADER_LEN + 4 + 8 + 4 + 4 + document.len();
    let mut out = Vec::with_capacity(length);
    push_header(&mut out, length, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(document);
    out
}

fn push_header(out: &mut Vec<u8>, length: usize, request_id: i32, response_to: i32, op: i32) {
    out.extend_from_slice(&(length as i32).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn bson_bytes(doc: &Document) -> Vec<u8> {
        doc.to_vec().unwrap()
    }

    /// Builds an OP_MSG the way a driver does: header, flags, sections, optional CRC.
    fn op_msg(flags: u32, sections: &[Vec<u8>], checksum: bool) -> Vec<u8> {
        let mut body = flags.to_le_bytes().to_vec();
        for section in sections {
            body.extend_from_slice(section);
        }
        let length = HEADER_LEN + body.len() + if checksum { 4 } else { 0 };
        let mut out = Vec::new();
        push_header(&mut out, length, 7, 0, OP_MSG);
        out.extend_from_slice(&body);
        if checksum {
            let crc = crc32c::crc32c(&out);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    fn kind0(doc: &Document) -> Vec<u8> {
        let mut s = vec![0u8];
        s.extend_from_slice(&bson_bytes(doc));
        s
    }

    fn kind1(identifier: &str, docs: &[Document]) -> Vec<u8> {
        let mut payload = identifier.as_bytes().to_vec();
        payload.push(0);
        for d in docs {
            payload.extend_from_slice(&bson_bytes(d));
        }
        let mut s = vec![1u8];
        s.extend_from_slice(&((payload.len() + 4) as i32).to_le_bytes());
        s.extend_from_slice(&payload);
        s
    }

    #[test]
    fn op_msg_cases() {
        let insert = doc! {"insert": "c", "$db": "test"};
        let docs = [doc! {"_id": 1}, doc! {"_id": 2}];
        let merged = doc! {"insert": "c", "$db": "test", "documents": [{"_id": 1}, {"_id": 2}]};
        let cases: Vec<(&str, Vec<u8>, Document, bool)> = vec![
            (
                "kind 0 only",
                op_msg(0, &[kind0(&insert)], false),
                insert.clone(),
                false,
            ),
            (
                "kind 1 merged",
                op_msg(0, &[kind0(&insert), kind1("documents", &docs)], false),
                merged.clone(),
                false,
            ),
            (
                "kind 1 before kind 0",
                op_msg(0, &[kind1("documents", &docs), kind0(&insert)], false),
                merged.clone(),
                false,
            ),
            (
                "checksum present",
                op_msg(1, &[kind0(&insert)], true),
                insert.clone(),
                false,
            ),
            (
                "moreToCome",
                op_msg(2, &[kind0(&insert)], false),
                insert.clone(),
                true,
            ),
        ];
        for (name, bytes, expected, more) in cases {
            verify_checksum(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            match parse_request(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")) {
                Request::Msg {
                    request_id,
                    more_to_come,
                    command,
                } => {
                    assert_eq!(request_id, 7, "{name}");
                    assert_eq!(more_to_come, more, "{name}");
                    assert_eq!(command, expected, "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let ping = doc! {"ping": 1};
        let mut bad_crc = op_msg(1, &[kind0(&ping)], true);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 0xff;
        assert!(matches!(
            verify_checksum(&bad_crc),
            Err(WireError::Checksum)
        ));

        let two_bodies = op_msg(0, &[kind0(&ping), kind0(&ping)], false);
        assert!(matches!(
            parse_request(&two_bodies),
            Err(WireError::Malformed { .. })
        ));
        let no_body = op_msg(0, &[], false);
        assert!(matches!(
            parse_request(&no_body),
            Err(WireError::Malformed { .. })
        ));
        let mut wrong_len = op_msg(0, &[kind0(&ping)], false);
        wrong_len.push(0);
        assert!(matches!(
            parse_request(&wrong_len),
            Err(WireError::BadLength(_))
        ));
        let mut compressed = op_msg(0, &[kind0(&ping)], false);
        compressed[12..16].copy_from_slice(&OP_COMPRESSED.to_le_bytes());
        assert!(matches!(
            parse_request(&compressed),
            Err(WireError::UnsupportedOpcode(OP_COMPRESSED))
        ));
    }

    #[test]
    fn op_query_handshake_is_unwrapped() {
        let cases = [
            (doc! {"isMaster": 1}, doc! {"isMaster": 1}),
            (
                doc! {"$query": {"isMaster": 1}, "$readPreference": {"mode": "primary"}},
                doc! {"isMaster": 1},
            ),
        ];
        for (query, expected) in cases {
            let mut body = 0i32.to_le_bytes().to_vec();
            body.extend_from_slice(b"admin.$cmd\0");
            body.extend_from_slice(&0i32.to_le_bytes());
            body.extend_from_slice(&(-1i32).to_le_bytes());
            body.extend_from_slice(&bson_bytes(&query));
            let mut msg = Vec::new();
            push_header(&mut msg, HEADER_LEN + body.len(), 3, 0, OP_QUERY);
            msg.extend_from_slice(&body);
            assert_eq!(
                parse_request(&msg).unwrap(),
                Request::Query {
                    request_id: 3,
                    collection: "admin.$cmd".into(),
                    command: expected
                }
            );
        }
    }

    #[test]
    fn replies_have_exact_lengths() {
        let reply = bson_bytes(&doc! {"ok": 1.0});
        let msg = encode_op_msg(9, 7, &reply);
        assert_eq!(read_i32(&msg, 0) as usize, msg.len());
        assert_eq!(read_i32(&msg, 8), 7);
        assert_eq!(read_i32(&msg, 12), OP_MSG);
        assert_eq!(&msg[HEADER_LEN + 5..], &reply[..]);

        let legacy = encode_op_reply(9, 3, &reply);
        assert_eq!(read_i32(&legacy, 0) as usize, legacy.len());
        assert_eq!(read_i32(&legacy, 12), OP_REPLY);
        assert_eq!(read_i32(&legacy, HEADER_LEN + 16), 1);
        assert_eq!(&legacy[HEADER_LEN + 20..], &reply[..]);
    }

    #[tokio::test]
    async fn reads_from_a_stream_and_sees_eof() {
        let ping = doc! {"ping": 1, "$db": "admin"};
        let mut bytes = op_msg(0, &[kind0(&ping)], false);
        bytes.extend(op_msg(0, &[kind0(&ping)], false));
        let mut reader = &bytes[..];
        for _ in 0..2 {
            let request = read_request(&mut reader).await.unwrap().unwrap();
            assert_eq!(request.request_id(), 7);
        }
        assert!(read_request(&mut reader).await.unwrap().is_none());
        let huge = (MAX_MESSAGE_SIZE as i32 + 1).to_le_bytes();
        let mut reader = &huge[..];
        assert!(matches!(
            read_request(&mut reader).await,
            Err(WireError::BadLength(_))
        ));
    }
}
