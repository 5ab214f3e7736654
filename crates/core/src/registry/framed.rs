//! Values in the Confluent wire format, as Confluent's serializers write them to Kafka: a zero
//! magic byte, the 4-byte big-endian id of a registered schema, then the payload (JSON text for
//! JSON Schema, an Avro binary datum for Avro). On a topic whose schemas are enforced, such a
//! value is checked against the schema its id names, and that schema must be registered under
//! one of the topic's subjects (`<topic>-...`, Gearbox's naming; Confluent's default
//! `<topic>-value` is one of them).

use super::{Parsed, Registry, Verdict, Violation};
use std::collections::HashMap;
use std::sync::Arc;

/// The first byte of a framed value.
pub const CONFLUENT_MAGIC: u8 = 0;
/// Bytes before the payload: the magic byte and the schema id.
pub const FRAME_HEADER_BYTES: usize = 5;

/// The schema id of a value in the Confluent wire format, if it is one.
#[must_use]
pub fn schema_id(value: &[u8]) -> Option<u64> {
    match value {
        [CONFLUENT_MAGIC, a, b, c, d, ..] => Some(u64::from(u32::from_be_bytes([*a, *b, *c, *d]))),
        _ => None,
    }
}

/// Checks framed values of one topic, keeping what it parsed for the values after.
#[derive(Debug)]
pub struct FramedChecker<'a> {
    registry: &'a Registry,
    topic: String,
    avro: HashMap<u64, Result<Arc<apache_avro::Schema>, String>>,
}

impl Registry {
    /// A checker for framed values written to `topic`.
    #[must_use]
    pub fn framed(&self, topic: &str) -> FramedChecker<'_> {
        FramedChecker {
            registry: self,
            topic: topic.to_string(),
            avro: HashMap::new(),
        }
    }
}

impl FramedChecker<'_> {
    /// The verdict on `value`, or `None` if it is not in the Confluent wire format.
    pub fn check(&mut self, value: &[u8]) -> Option<Verdict> {
        let id = schema_id(value)?;
        let payload = &value[FRAME_HEADER_BYTES..];
        let fallback = format!("{}-value", self.topic);
        let prefix = format!("{}-", self.topic);
        let invalid = |subject: String, version: u32, message: String| Verdict::Invalid {
            subject,
            version,
            violations: vec![Violation {
                pointer: String::new(),
                message,
            }],
        };
        let Ok(schema) = self.registry.schema(id) else {
            return Some(invalid(
                fallback,
                0,
                format!("schema id {id} (from the value's Confluent header) is not registered"),
            ));
        };
        let Some((subject, version)) = self
            .registry
            .usages(id)
            .into_iter()
            .find(|(s, _)| s.starts_with(&prefix))
        else {
            return Some(invalid(
                fallback,
                0,
                format!(
                    "schema id {id} is not registered under a subject of topic {}",
                    self.topic
                ),
            ));
        };
        let target = super::Target::Schema {
            subject: subject.clone(),
            version,
            schema: schema.clone(),
        };
        Some(match &schema.parsed {
            Parsed::Json(_) => target.check(Some(payload)),
            Parsed::Avro(_) => {
                let parsed = self
                    .avro
                    .entry(id)
                    .or_insert_with(|| {
                        apache_avro::Schema::parse_str(&schema.text)
                            .map(Arc::new)
                            .map_err(|e| e.to_string())
                    })
                    .clone();
                let decoded = parsed.and_then(|s| {
                    let mut rest = payload;
                    let value = apache_avro::reader::datum::GenericDatumReader::builder(&s)
                        .build()
                        .and_then(|r| r.read_value(&mut rest))
                        .map_err(|e| {
                            format!("the payload is not an Avro datum of schema {id}: {e}")
                        })?;
                    // apache-avro reads a string cut short as null; the schema says otherwise.
                    if !value.validate(&s) {
                        return Err(format!(
                            "the payload is not an Avro datum of schema {id}: it ends early"
                        ));
                    }
                    if rest.is_empty() {
                        Ok(())
                    } else {
                        Err(format!(
                            "{} bytes follow the Avro datum of schema {id}",
                            rest.len()
                        ))
                    }
                });
                match decoded {
                    Ok(()) => Verdict::Valid {
                        subject,
                        id,
                        version,
                    },
                    Err(message) => invalid(subject, version, message),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SchemaType;
    use crate::store::Store;

    fn registry(dir: &std::path::Path) -> Registry {
        Registry::open(Arc::new(Store::open(&dir.join("state.redb")).unwrap())).unwrap()
    }

    fn framed(id: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![CONFLUENT_MAGIC];
        v.extend((id as u32).to_be_bytes());
        v.extend(payload);
        v
    }

    /// Avro's zigzag varint of a long.
    fn avro_long(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn framed_values_are_checked_against_the_schema_their_id_names() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let json_schema =
            r#"{"type":"object","properties":{"qty":{"type":"integer"}},"required":["qty"]}"#;
        let (json_id, _) = r
            .register("orders-value", SchemaType::Json, json_schema)
            .unwrap();
        let avro_schema = r#"{"type":"record","name":"Order","fields":[{"name":"qty","type":"long"},{"name":"sku","type":"string"}]}"#;
        let (avro_id, _) = r
            .register("orders-avro", SchemaType::Avro, avro_schema)
            .unwrap();
        let (other_id, _) = r
            .register("invoices-value", SchemaType::Json, r#"{"type":"object"}"#)
            .unwrap();
        let mut c = r.framed("orders");

        assert!(c.check(b"{\"qty\":1}").is_none(), "not framed");
        assert!(matches!(
            c.check(&framed(json_id, br#"{"qty":3}"#)),
            Some(Verdict::Valid { id, .. }) if id == json_id
        ));
        let Some(Verdict::Invalid {
            subject,
            violations,
            ..
        }) = c.check(&framed(json_id, br#"{"qty":"three"}"#))
        else {
            panic!("a bad JSON payload passed");
        };
        assert_eq!(subject, "orders-value");
        assert!(violations[0].pointer.contains("qty"), "{violations:?}");

        let mut datum = avro_long(7);
        datum.extend(avro_long(3));
        datum.extend(b"abc");
        assert!(matches!(
            c.check(&framed(avro_id, &datum)),
            Some(Verdict::Valid { id, .. }) if id == avro_id
        ));
        let truncated = c.check(&framed(avro_id, &datum[..3]));
        let Some(Verdict::Invalid { violations, .. }) = truncated else {
            panic!("a truncated Avro datum passed: {truncated:?}");
        };
        assert!(violations[0].message.contains("Avro"), "{violations:?}");
        let mut long = datum.clone();
        long.push(0);
        let Some(Verdict::Invalid { violations, .. }) = c.check(&framed(avro_id, &long)) else {
            panic!("trailing bytes passed");
        };
        assert!(
            violations[0].message.contains("1 bytes follow"),
            "{violations:?}"
        );

        let Some(Verdict::Invalid { violations, .. }) = c.check(&framed(999, b"{}")) else {
            panic!("an unknown id passed");
        };
        assert!(violations[0].message.contains("999 "), "{violations:?}");
        let Some(Verdict::Invalid { violations, .. }) = c.check(&framed(other_id, b"{}")) else {
            panic!("another topic's schema passed");
        };
        assert!(
            violations[0].message.contains("topic orders"),
            "{violations:?}"
        );
    }
}
