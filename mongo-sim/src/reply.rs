//! Turning a command's outcome into the reply document clients parse
//! strictly: numeric `ok`, `code` on errors, Int64 cursor ids, dotted `ns`,
//! and `$clusterTime`/`operationTime` on every reply.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, RawArrayBuf, RawDocumentBuf, Timestamp, cstr, doc};

use crate::counters::CursorKind;
use crate::engine::CommandError;

/// What a command produced, before the envelope is added.
#[derive(Debug)]
pub(crate) enum Response {
    /// A plain reply body (without `ok`).
    Document(Document),
    /// One batch of a cursor.
    Cursor(CursorBatch),
}

/// One batch of a cursor, as the `cursor` sub-document of a reply.
#[derive(Debug)]
pub(crate) struct CursorBatch {
    /// The cursor id, 0 once exhausted.
    pub id: i64,
    /// `db.collection`, from which drivers derive the getMore `collection`.
    pub ns: String,
    /// `firstBatch` (find/aggregate) or `nextBatch` (getMore).
    pub first: bool,
    /// The documents of the batch.
    pub documents: Vec<Document>,
    /// Change streams only: where a client should resume after this batch.
    pub post_batch_resume_token: Option<Document>,
    /// Which counters the documents go to.
    pub kind: CursorKind,
}

/// What a rendered cursor batch returned, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Returned {
    pub kind: CursorKind,
    pub documents: u64,
    pub bytes: u64,
}

/// `$clusterTime` as an unauthenticated server sends it: both subfields are
/// required by drivers, and the all-zero hash is what they accept unsigned.
pub(crate) fn cluster_time(ts: Timestamp) -> Document {
    doc! {
        "clusterTime": ts,
        "signature": {
            "hash": Binary { subtype: BinarySubtype::Generic, bytes: vec![0u8; 20] },
            "keyId": 0_i64,
        },
    }
}

/// Renders an error as MongoDB does (`ok: 0`, `errmsg`, `code`, `codeName`, labels).
pub(crate) fn error_document(error: &CommandError) -> Document {
    let mut reply = doc! {
        "ok": 0.0,
        "errmsg": error.message.clone(),
        "code": error.code,
        "codeName": error.code_name,
    };
    if !error.labels.is_empty() {
        reply.insert("errorLabels", error.labels.clone());
    }
    reply
}

/// Renders the whole reply, adding `ok`, `$clusterTime` and `operationTime`.
pub(crate) fn render(
    outcome: Result<Response, CommandError>,
    operation_time: Timestamp,
) -> (RawDocumentBuf, Option<Returned>) {
    let (mut body, returned) = match outcome {
        Ok(Response::Document(mut reply)) => {
            reply.insert("ok", 1.0);
            (to_raw(&reply), None)
        }
        Ok(Response::Cursor(batch)) => {
            let (cursor, returned) = render_cursor(batch);
            let mut body = RawDocumentBuf::new();
            body.append(cstr!("cursor"), cursor);
            body.append(cstr!("ok"), 1.0);
            (body, Some(returned))
        }
        Err(error) => (to_raw(&error_document(&error)), None),
    };
    body.append(cstr!("$clusterTime"), to_raw(&cluster_time(operation_time)));
    body.append(cstr!("operationTime"), operation_time);
    (body, returned)
}

fn render_cursor(batch: CursorBatch) -> (RawDocumentBuf, Returned) {
    let mut documents = RawArrayBuf::new();
    let mut bytes = 0u64;
    let count = batch.documents.len() as u64;
    for document in &batch.documents {
        let raw = to_raw(document);
        bytes += raw.as_bytes().len() as u64;
        documents.push(raw);
    }
    let mut cursor = RawDocumentBuf::new();
    cursor.append(cstr!("id"), batch.id);
    cursor.append(cstr!("ns"), batch.ns.as_str());
    if batch.first {
        cursor.append(cstr!("firstBatch"), documents);
    } else {
        cursor.append(cstr!("nextBatch"), documents);
    }
    if let Some(token) = &batch.post_batch_resume_token {
        cursor.append(cstr!("postBatchResumeToken"), to_raw(token));
    }
    let returned = Returned {
        kind: batch.kind,
        documents: count,
        bytes,
    };
    (cursor, returned)
}

/// Converts to raw BSON. Documents built from parsed BSON always convert; a
/// key with a NUL byte (impossible on the wire) degrades to an error document
/// rather than a panic.
fn to_raw(document: &Document) -> RawDocumentBuf {
    RawDocumentBuf::try_from(document).unwrap_or_else(|e| {
        let mut fallback = RawDocumentBuf::new();
        fallback.append(cstr!("$mongoSimEncodingError"), e.to_string());
        fallback
    })
}

/// The value of a numeric field sent as int32, int64 or double.
pub(crate) fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(n) => Some(*n as i64),
        Bson::Int64(n) => Some(*n),
        Bson::Double(n) if n.fract() == 0.0 => Some(*n as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: Timestamp = Timestamp {
        time: 100,
        increment: 2,
    };

    fn parse(raw: RawDocumentBuf) -> Document {
        Document::try_from(raw).unwrap()
    }

    #[test]
    fn every_reply_has_the_envelope() {
        let outcomes: Vec<Result<Response, CommandError>> = vec![
            Ok(Response::Document(doc! {"n": 1})),
            Ok(Response::Document(Document::new())),
            Err(CommandError {
                code: 59,
                code_name: "CommandNotFound",
                message: "no such command: 'x'".into(),
                labels: vec![],
            }),
        ];
        for outcome in outcomes {
            let is_err = outcome.is_err();
            let (raw, returned) = render(outcome, TS);
            assert!(returned.is_none());
            let reply = parse(raw);
            assert_eq!(reply.get_f64("ok").unwrap(), if is_err { 0.0 } else { 1.0 });
            assert_eq!(reply.get_timestamp("operationTime").unwrap(), TS);
            let ct = reply.get_document("$clusterTime").unwrap();
            assert_eq!(ct.get_timestamp("clusterTime").unwrap(), TS);
            let sig = ct.get_document("signature").unwrap();
            assert_eq!(sig.get_binary_generic("hash").unwrap(), &vec![0u8; 20]);
            assert_eq!(sig.get_i64("keyId").unwrap(), 0);
            if is_err {
                assert_eq!(reply.get_i32("code").unwrap(), 59);
                assert_eq!(reply.get_str("codeName").unwrap(), "CommandNotFound");
            }
        }
    }

    #[test]
    fn cursor_batches_use_int64_ids_and_count_bytes() {
        let docs = vec![doc! {"a": 1}, doc! {"b": "xyz"}];
        let expected_bytes: u64 = docs.iter().map(|d| d.to_vec().unwrap().len() as u64).sum();
        for (first, key) in [(true, "firstBatch"), (false, "nextBatch")] {
            let batch = CursorBatch {
                id: 42,
                ns: "local.oplog.rs".into(),
                first,
                documents: docs.clone(),
                post_batch_resume_token: first.then(|| doc! {"_data": "82"}),
                kind: CursorKind::OplogTail,
            };
            let (raw, returned) = render(Ok(Response::Cursor(batch)), TS);
            let reply = parse(raw);
            let cursor = reply.get_document("cursor").unwrap();
            assert_eq!(cursor.get_i64("id").unwrap(), 42);
            assert_eq!(cursor.get_str("ns").unwrap(), "local.oplog.rs");
            assert_eq!(cursor.get_array(key).unwrap().len(), 2);
            assert_eq!(cursor.get_document("postBatchResumeToken").is_ok(), first);
            assert_eq!(
                returned,
                Some(Returned {
                    kind: CursorKind::OplogTail,
                    documents: 2,
                    bytes: expected_bytes
                })
            );
        }
    }

    #[test]
    fn errors_carry_labels() {
        let error = CommandError {
            code: 11602,
            code_name: "InterruptedDueToReplStateChange",
            message: "stepped down".into(),
            labels: vec!["ResumableChangeStreamError".into()],
        };
        let reply = error_document(&error);
        assert_eq!(reply.get_f64("ok").unwrap(), 0.0);
        assert_eq!(
            reply.get_array("errorLabels").unwrap(),
            &vec![Bson::String("ResumableChangeStreamError".into())]
        );
    }

    #[test]
    fn numbers_in_any_width() {
        let cases = [
            (Bson::Int32(5), Some(5)),
            (Bson::Int64(1 << 40), Some(1 << 40)),
            (Bson::Double(7.0), Some(7)),
            (Bson::Double(7.5), None),
            (Bson::String("7".into()), None),
        ];
        for (value, expected) in cases {
            assert_eq!(as_i64(&value), expected, "{value}");
        }
    }
}
