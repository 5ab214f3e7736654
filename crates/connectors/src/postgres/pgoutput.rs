//! The decoder of `pgoutput` logical decoding messages, protocol version 1 (Postgres 10 and
//! later; see "Logical Replication Message Formats" in the Postgres manual), and the mapping of
//! text-format column values to JSON.
//!
//! [`decode`] never panics, whatever the bytes: every read is bounds-checked, and a failure is a
//! [`DecodeError`] naming the message type and the byte offset. Counts read from the message
//! (columns, truncated relations) are not trusted for allocation: vectors grow as elements are
//! actually decoded, so a forged count costs at most the bytes that were sent, and each count is
//! also bounded by [`COLUMNS_MAX`] / [`TRUNCATE_RELATIONS_MAX`].
//!
//! Values of `numeric` become JSON strings ([`text_to_json`]), as Debezium does with
//! `decimal.handling.mode=string`: a JSON number would go through an `f64` in most consumers and
//! lose precision.

use bytes::Bytes;
use serde_json::Value;

/// Most columns a relation or tuple may declare (Postgres's own limit is 1,664).
pub const COLUMNS_MAX: usize = 1_664;
/// Most relations one Truncate message may name.
pub const TRUNCATE_RELATIONS_MAX: usize = 65_536;

/// A malformed `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message {message_type:?} at byte {offset}: {reason}")]
pub struct DecodeError {
    /// The message type byte, as a character (`'I'`, `'U'` ...; `'?'` for an empty message).
    pub message_type: char,
    /// Where in the message decoding failed.
    pub offset: usize,
    /// What was wrong.
    pub reason: String,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key).
    pub key: bool,
    /// Its name.
    pub name: String,
    /// Its type OID.
    pub type_oid: u32,
    /// Its type modifier.
    pub type_modifier: i32,
}

/// A table's description, sent before its first change in a session and after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation OID, which the change messages refer to.
    pub id: u32,
    /// The schema (`pg_catalog` is sent as an empty string).
    pub namespace: String,
    /// The table name.
    pub name: String,
    /// The replica identity setting: `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// The columns in table order.
    pub columns: Vec<RelationColumn>,
}

/// One value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change; the server does not send it.
    UnchangedToast,
    /// The value in text format.
    Text(Bytes),
    /// The value in binary format.
    Binary(Bytes),
}

/// A row image.
pub type Tuple = Vec<ColumnValue>;

/// Which old image an Update or Delete carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `K`: the replica identity key columns only (others null).
    Key,
    /// `O`: the whole old row (`REPLICA IDENTITY FULL`).
    Full,
}

/// A decoded `pgoutput` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// A transaction starts.
    Begin {
        /// Its commit LSN.
        final_lsn: u64,
        /// Its commit time, in microseconds since 2000-01-01.
        commit_ts: i64,
        /// Its transaction id.
        xid: u32,
    },
    /// A transaction ended.
    Commit {
        /// Unused flags.
        flags: u8,
        /// The commit record's LSN.
        commit_lsn: u64,
        /// The LSN just past the commit record: where a restart after it begins.
        end_lsn: u64,
        /// The commit time, in microseconds since 2000-01-01.
        commit_ts: i64,
    },
    /// The transaction came from a replication origin.
    Origin {
        /// The origin's commit LSN.
        commit_lsn: u64,
        /// The origin's name.
        name: String,
    },
    /// A table's description.
    Relation(Relation),
    /// A data type's name.
    Type {
        /// The type OID.
        id: u32,
        /// Its schema.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// The relation.
        relation_id: u32,
        /// The new row.
        new: Tuple,
    },
    /// A row was updated.
    Update {
        /// The relation.
        relation_id: u32,
        /// The old key or row, when the replica identity gives one (a changed key, or FULL).
        old: Option<(OldKind, Tuple)>,
        /// The new row.
        new: Tuple,
    },
    /// A row was deleted.
    Delete {
        /// The relation.
        relation_id: u32,
        /// The old key or row.
        old: (OldKind, Tuple),
    },
    /// Tables were truncated.
    Truncate {
        /// Bit 1: CASCADE, bit 2: RESTART IDENTITY.
        options: u8,
        /// The relations.
        relation_ids: Vec<u32>,
    },
    /// A `pg_logical_emit_message` message.
    Message {
        /// Whether it belongs to a transaction.
        transactional: bool,
        /// Its LSN.
        lsn: u64,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Bytes,
    },
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
    message_type: char,
}

impl Reader<'_> {
    fn fail(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            message_type: self.message_type,
            offset: self.at,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        let Some(end) = end else {
            return Err(self.fail(format!(
                "truncated {what}: {n} bytes wanted, {} left",
                self.data.len() - self.at
            )));
        };
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32, DecodeError> {
        Ok(self.u32(what)? as i32)
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn i64(&mut self, what: &str) -> Result<i64, DecodeError> {
        Ok(self.u64(what)? as i64)
    }
    fn cstr(&mut self, what: &str) -> Result<String, DecodeError> {
        let rest = &self.data[self.at..];
        let Some(nul) = rest.iter().position(|b| *b == 0) else {
            return Err(self.fail(format!("unterminated {what}")));
        };
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| self.fail(format!("{what} is not UTF-8")))?;
        let s = s.to_string();
        self.at += nul + 1;
        Ok(s)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.at == self.data.len() {
            Ok(())
        } else {
            Err(self.fail(format!("{} trailing bytes", self.data.len() - self.at)))
        }
    }

    fn tuple(&mut self, whole: &Bytes) -> Result<Tuple, DecodeError> {
        let count = usize::from(self.u16("column count")?);
        if count > COLUMNS_MAX {
            return Err(self.fail(format!("{count} columns exceed {COLUMNS_MAX}")));
        }
        let mut tuple = Vec::new();
        for _ in 0..count {
            let kind = self.u8("column kind")?;
            let value = match kind {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' | b'b' => {
                    let len = self.i32("value length")?;
                    let len = usize::try_from(len)
                        .map_err(|_| self.fail(format!("negative value length {len}")))?;
                    let start = self.at;
                    self.take(len, "value")?;
                    let bytes = whole.slice(start..start + len);
                    if kind == b't' {
                        ColumnValue::Text(bytes)
                    } else {
                        ColumnValue::Binary(bytes)
                    }
                }
                other => {
                    return Err(self.fail(format!("unknown column kind {:?}", char::from(other))));
                }
            };
            tuple.push(value);
        }
        Ok(tuple)
    }

    fn old_kind(&mut self, byte: u8) -> Result<OldKind, DecodeError> {
        match byte {
            b'K' => Ok(OldKind::Key),
            b'O' => Ok(OldKind::Full),
            other => Err(self.fail(format!("expected K or O, got {:?}", char::from(other)))),
        }
    }
}

/// Decodes one `pgoutput` message (the data of an XLogData message).
///
/// # Errors
/// [`DecodeError`] for an unknown type, a truncated field, a bad count or trailing bytes.
pub fn decode(data: &Bytes) -> Result<LogicalMessage, DecodeError> {
    let message_type = data.first().map_or('?', |b| char::from(*b));
    let mut r = Reader {
        data,
        at: 0,
        message_type,
    };
    let tag = r.u8("message type")?;
    let message = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_ts: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_ts: r.i64("commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: r.u64("origin LSN")?,
            name: r.cstr("origin name")?,
        },
        b'R' => {
            let id = r.u32("relation id")?;
            let namespace = r.cstr("namespace")?;
            let name = r.cstr("relation name")?;
            let replica_identity = r.u8("replica identity")?;
            let count = usize::from(r.u16("column count")?);
            if count > COLUMNS_MAX {
                return Err(r.fail(format!("{count} columns exceed {COLUMNS_MAX}")));
            }
            let mut columns = Vec::new();
            for _ in 0..count {
                let flags = r.u8("column flags")?;
                columns.push(RelationColumn {
                    key: flags & 1 == 1,
                    name: r.cstr("column name")?,
                    type_oid: r.u32("type OID")?,
                    type_modifier: r.i32("type modifier")?,
                });
            }
            LogicalMessage::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => LogicalMessage::Type {
            id: r.u32("type OID")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation id")?;
            let n = r.u8("tuple marker")?;
            if n != b'N' {
                return Err(r.fail(format!("expected N, got {:?}", char::from(n))));
            }
            LogicalMessage::Insert {
                relation_id,
                new: r.tuple(data)?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let mut marker = r.u8("tuple marker")?;
            let mut old = None;
            if marker != b'N' {
                let kind = r.old_kind(marker)?;
                old = Some((kind, r.tuple(data)?));
                marker = r.u8("tuple marker")?;
                if marker != b'N' {
                    return Err(r.fail(format!("expected N, got {:?}", char::from(marker))));
                }
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new: r.tuple(data)?,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let marker = r.u8("tuple marker")?;
            let kind = r.old_kind(marker)?;
            LogicalMessage::Delete {
                relation_id,
                old: (kind, r.tuple(data)?),
            }
        }
        b'T' => {
            let count = r.u32("relation count")? as usize;
            if count > TRUNCATE_RELATIONS_MAX {
                return Err(r.fail(format!("{count} relations exceed {TRUNCATE_RELATIONS_MAX}")));
            }
            let options = r.u8("options")?;
            let mut relation_ids = Vec::new();
            for _ in 0..count {
                relation_ids.push(r.u32("relation id")?);
            }
            LogicalMessage::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstr("prefix")?;
            let len = r.u32("content length")? as usize;
            let start = r.at;
            r.take(len, "content")?;
            LogicalMessage::Message {
                transactional: flags & 1 == 1,
                lsn,
                prefix,
                content: data.slice(start..start + len),
            }
        }
        other => {
            r.at = 0;
            return Err(r.fail(format!("unknown message type {:?}", char::from(other))));
        }
    };
    r.end()?;
    Ok(message)
}

/// Type OIDs with a JSON mapping of their own.
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `int8`.
    pub const INT8: u32 = 20;
    /// `int2`.
    pub const INT2: u32 = 21;
    /// `int4`.
    pub const INT4: u32 = 23;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `float4`.
    pub const FLOAT4: u32 = 700;
    /// `float8`.
    pub const FLOAT8: u32 = 701;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// Converts a value as Postgres printed it (text format) to JSON by its type:
/// `bool` → boolean; `int2`/`int4`/`int8`/`oid` → number; `float4`/`float8` → number, except
/// `NaN` and `±Infinity`, which stay strings; `numeric` → string (no precision is lost);
/// `json`/`jsonb` → the parsed value; anything else (text, uuid, timestamps, dates, `bytea` in
/// hex, arrays, ranges ...) → the string unchanged. A value that does not parse as its type says
/// (it cannot happen with a real server) falls back to the string.
#[must_use]
pub fn text_to_json(type_oid: u32, text: &str) -> Value {
    let string = || Value::String(text.to_string());
    match type_oid {
        oid::BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => string(),
        },
        oid::INT2 | oid::INT4 | oid::INT8 => {
            text.parse::<i64>().map_or_else(|_| string(), Value::from)
        }
        oid::OID => text.parse::<u64>().map_or_else(|_| string(), Value::from),
        oid::FLOAT4 | oid::FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(string, Value::Number),
        oid::JSON | oid::JSONB => serde_json::from_str(text).unwrap_or_else(|_| string()),
        _ => string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn text_col(out: &mut Vec<u8>, s: &str) {
        out.push(b't');
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn d(bytes: Vec<u8>) -> Result<LogicalMessage, DecodeError> {
        decode(&Bytes::from(bytes))
    }

    #[test]
    fn begin_commit_and_origin() {
        let mut b = vec![b'B'];
        b.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&77u32.to_be_bytes());
        assert_eq!(
            d(b).unwrap(),
            LogicalMessage::Begin {
                final_lsn: 0x1_0000_0010,
                commit_ts: 5,
                xid: 77
            }
        );
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&10u64.to_be_bytes());
        c.extend_from_slice(&11u64.to_be_bytes());
        c.extend_from_slice(&12i64.to_be_bytes());
        assert_eq!(
            d(c).unwrap(),
            LogicalMessage::Commit {
                flags: 0,
                commit_lsn: 10,
                end_lsn: 11,
                commit_ts: 12
            }
        );
        let mut o = vec![b'O'];
        o.extend_from_slice(&3u64.to_be_bytes());
        cstr(&mut o, "east");
        assert_eq!(
            d(o).unwrap(),
            LogicalMessage::Origin {
                commit_lsn: 3,
                name: "east".into()
            }
        );
    }

    fn relation_bytes() -> Vec<u8> {
        let mut r = vec![b'R'];
        r.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut r, "public");
        cstr(&mut r, "orders");
        r.push(b'd');
        r.extend_from_slice(&2u16.to_be_bytes());
        r.push(1);
        cstr(&mut r, "id");
        r.extend_from_slice(&23u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r.push(0);
        cstr(&mut r, "note");
        r.extend_from_slice(&25u32.to_be_bytes());
        r.extend_from_slice(&(-1i32).to_be_bytes());
        r
    }

    #[test]
    fn relations_and_types() {
        let LogicalMessage::Relation(rel) = d(relation_bytes()).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(
            (rel.id, rel.namespace.as_str(), rel.name.as_str()),
            (16384, "public", "orders")
        );
        assert_eq!(rel.replica_identity, b'd');
        assert_eq!(rel.columns.len(), 2);
        assert!(rel.columns[0].key && !rel.columns[1].key);
        assert_eq!(rel.columns[1].type_oid, 25);
        let mut y = vec![b'Y'];
        y.extend_from_slice(&9u32.to_be_bytes());
        cstr(&mut y, "public");
        cstr(&mut y, "mood");
        assert!(matches!(d(y).unwrap(), LogicalMessage::Type { id: 9, .. }));
    }

    #[test]
    fn insert_update_delete_with_every_column_kind() {
        let mut i = vec![b'I'];
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&4u16.to_be_bytes());
        text_col(&mut i, "42");
        i.push(b'n');
        i.push(b'u');
        i.push(b'b');
        i.extend_from_slice(&2i32.to_be_bytes());
        i.extend_from_slice(&[0xde, 0xad]);
        assert_eq!(
            d(i).unwrap(),
            LogicalMessage::Insert {
                relation_id: 1,
                new: vec![
                    ColumnValue::Text(Bytes::from_static(b"42")),
                    ColumnValue::Null,
                    ColumnValue::UnchangedToast,
                    ColumnValue::Binary(Bytes::from_static(&[0xde, 0xad])),
                ]
            }
        );

        let mut u = vec![b'U'];
        u.extend_from_slice(&1u32.to_be_bytes());
        u.push(b'O');
        u.extend_from_slice(&1u16.to_be_bytes());
        text_col(&mut u, "old");
        u.push(b'N');
        u.extend_from_slice(&1u16.to_be_bytes());
        text_col(&mut u, "new");
        let LogicalMessage::Update { old, new, .. } = d(u).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap().0, OldKind::Full);
        assert_eq!(new, vec![ColumnValue::Text(Bytes::from_static(b"new"))]);

        let mut u2 = vec![b'U'];
        u2.extend_from_slice(&1u32.to_be_bytes());
        u2.push(b'N');
        u2.extend_from_slice(&0u16.to_be_bytes());
        assert!(matches!(
            d(u2).unwrap(),
            LogicalMessage::Update { old: None, .. }
        ));

        let mut del = vec![b'D'];
        del.extend_from_slice(&1u32.to_be_bytes());
        del.push(b'K');
        del.extend_from_slice(&1u16.to_be_bytes());
        text_col(&mut del, "7");
        let LogicalMessage::Delete { old, .. } = d(del).unwrap() else {
            panic!()
        };
        assert_eq!(old.0, OldKind::Key);
    }

    #[test]
    fn truncate_and_message() {
        let mut t = vec![b'T'];
        t.extend_from_slice(&2u32.to_be_bytes());
        t.push(1);
        t.extend_from_slice(&5u32.to_be_bytes());
        t.extend_from_slice(&6u32.to_be_bytes());
        assert_eq!(
            d(t).unwrap(),
            LogicalMessage::Truncate {
                options: 1,
                relation_ids: vec![5, 6]
            }
        );
        let mut m = vec![b'M', 1];
        m.extend_from_slice(&9u64.to_be_bytes());
        cstr(&mut m, "app");
        m.extend_from_slice(&3u32.to_be_bytes());
        m.extend_from_slice(b"abc");
        assert!(matches!(
            d(m).unwrap(),
            LogicalMessage::Message {
                transactional: true,
                lsn: 9,
                ..
            }
        ));
    }

    #[test]
    fn malformed_messages_name_type_and_offset() {
        let e = d(vec![]).unwrap_err();
        assert_eq!(e.message_type, '?');
        let e = d(vec![b'Z']).unwrap_err();
        assert_eq!((e.message_type, e.offset), ('Z', 0));
        let e = d(vec![b'B', 0, 0]).unwrap_err();
        assert_eq!((e.message_type, e.offset), ('B', 1));
        // A huge declared value length is refused without allocating it.
        let mut i = vec![b'I'];
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&1u16.to_be_bytes());
        i.push(b't');
        i.extend_from_slice(&i32::MAX.to_be_bytes());
        let e = d(i).unwrap_err();
        assert_eq!((e.message_type, e.offset), ('I', 13));
        assert!(e.reason.contains("truncated value"), "{e}");
        // A forged column count with no columns behind it.
        let mut r = relation_bytes();
        r.truncate(r.len() - 10);
        assert!(d(r).is_err());
        let mut trailing = relation_bytes();
        trailing.push(0);
        assert!(d(trailing).unwrap_err().reason.contains("trailing"));
        let mut t = vec![b'T'];
        t.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(d(t).unwrap_err().reason.contains("exceed"));
    }

    #[test]
    fn every_prefix_of_valid_messages_fails_cleanly() {
        for msg in [relation_bytes()] {
            for n in 0..msg.len() {
                assert!(d(msg[..n].to_vec()).is_err());
            }
        }
    }

    /// A fixed-seed stand-in for the fuzz target (`fuzz/fuzz_targets/pgoutput_decode.rs`):
    /// valid messages with random bytes overwritten, truncated or extended never panic, and
    /// errors point inside the input.
    #[test]
    fn mutated_messages_never_panic() {
        let mut insert = vec![b'I', 0, 0, 0, 1, b'N', 0, 2];
        text_col(&mut insert, "42");
        insert.push(b'n');
        let valid = [relation_bytes(), insert];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let mut m = valid[(next() % 2) as usize].clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            match next() % 3 {
                0 => m.truncate((next() as usize) % (m.len() + 1)),
                1 => m.extend((0..next() % 8).map(|_| next() as u8)),
                _ => {}
            }
            if let Err(e) = d(m.clone()) {
                assert!(e.offset <= m.len(), "{e}");
            }
        }
    }

    #[test]
    fn text_values_map_to_json_by_type() {
        let cases: &[(u32, &str, Value)] = &[
            (oid::BOOL, "t", json!(true)),
            (oid::BOOL, "f", json!(false)),
            (oid::INT2, "-3", json!(-3)),
            (
                oid::INT8,
                "9223372036854775807",
                json!(9_223_372_036_854_775_807i64),
            ),
            (oid::OID, "4294967295", json!(4_294_967_295u64)),
            (oid::FLOAT8, "1.5", json!(1.5)),
            (oid::FLOAT4, "NaN", json!("NaN")),
            (oid::FLOAT8, "-Infinity", json!("-Infinity")),
            (
                oid::NUMERIC,
                "12345678901234567890.000000001",
                json!("12345678901234567890.000000001"),
            ),
            (oid::JSONB, r#"{"a": [1, 2]}"#, json!({"a": [1, 2]})),
            (oid::JSON, "not json", json!("not json")),
            (25, "hello", json!("hello")),
            (
                2950,
                "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
            (17, "\\xdead", json!("\\xdead")),
        ];
        for (oid, text, expect) in cases {
            assert_eq!(&text_to_json(*oid, text), expect, "{oid} {text}");
        }
    }
}
