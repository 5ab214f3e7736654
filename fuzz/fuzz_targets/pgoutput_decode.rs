//! The `pgoutput` decoder (`gearbox_connectors::postgres::pgoutput::decode`) and the text-to-JSON
//! mapping on arbitrary bytes.
//!
//! Input: the whole input is one `pgoutput` message (the data of an XLogData message).
//!
//! Asserted, besides "never panics":
//! * an error names the message's first byte as its type (`'?'` for empty input) and an offset
//!   inside the input;
//! * a decoded message respects the limits (`COLUMNS_MAX` columns per relation or tuple,
//!   `TRUNCATE_RELATIONS_MAX` relations), and its values are slices of the input (no value is
//!   longer than the input);
//! * every text value maps to JSON under every type OID the mapping knows, without panicking.

#![no_main]

use bytes::Bytes;
use gearbox_connectors::postgres::pgoutput::{
    COLUMNS_MAX, ColumnValue, LogicalMessage, TRUNCATE_RELATIONS_MAX, decode, oid, text_to_json,
};
use libfuzzer_sys::fuzz_target;

const OIDS: [u32; 11] = [
    oid::BOOL,
    oid::INT2,
    oid::INT4,
    oid::INT8,
    oid::OID,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::NUMERIC,
    oid::JSON,
    oid::JSONB,
    25,
];

fn check_tuple(tuple: &[ColumnValue], input_len: usize) {
    assert!(tuple.len() <= COLUMNS_MAX);
    for value in tuple {
        if let ColumnValue::Text(b) | ColumnValue::Binary(b) = value {
            assert!(b.len() <= input_len);
            let text = String::from_utf8_lossy(b);
            for oid in OIDS {
                let _ = text_to_json(oid, &text);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    match decode(&input) {
        Err(e) => {
            let first = data.first().map_or('?', |b| char::from(*b));
            assert_eq!(e.message_type, first);
            assert!(e.offset <= data.len());
        }
        Ok(LogicalMessage::Relation(rel)) => assert!(rel.columns.len() <= COLUMNS_MAX),
        Ok(LogicalMessage::Insert { new, .. }) => check_tuple(&new, data.len()),
        Ok(LogicalMessage::Update { old, new, .. }) => {
            if let Some((_, old)) = old {
                check_tuple(&old, data.len());
            }
            check_tuple(&new, data.len());
        }
        Ok(LogicalMessage::Delete { old, .. }) => check_tuple(&old.1, data.len()),
        Ok(LogicalMessage::Truncate { relation_ids, .. }) => {
            assert!(relation_ids.len() <= TRUNCATE_RELATIONS_MAX)
        }
        Ok(LogicalMessage::Message { content, .. }) => assert!(content.len() <= data.len()),
        Ok(_) => {}
    }
});
