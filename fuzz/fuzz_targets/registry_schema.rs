//! The registry's schema parsers and validators on arbitrary input: schemas arrive over the
//! REST API from anyone who can reach it.
//!
//! Input: a mode byte, then a schema text and a data document separated by the first NUL byte.
//! Even modes parse the schema as Avro, odd ones as JSON Schema. Asserted, besides "never
//! panics": a parsed schema is compatible with itself in both directions, its canonical form
//! parses again to the same canonical form, and validating the document returns at most the
//! named number of violations.

#![no_main]

use gearbox_core::registry::{avro, json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (schema, doc) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"null"[..]),
    };
    let Ok(schema) = std::str::from_utf8(schema) else {
        return;
    };
    let doc: serde_json::Value = serde_json::from_slice(doc).unwrap_or(serde_json::Value::Null);
    if mode % 2 == 0 {
        let Ok(s) = avro::AvroSchema::parse(schema) else {
            return;
        };
        assert!(avro::incompatibilities(&s, &s).is_empty(), "not self-compatible: {schema}");
        let again = avro::AvroSchema::parse(&s.canonical()).expect("the canonical form parses");
        assert_eq!(again.canonical(), s.canonical());
        assert!(avro::Validator::new(&s).validate(&doc).len() <= avro::VIOLATIONS_MAX);
    } else {
        let Ok(s) = json::JsonSchema::parse(schema) else {
            return;
        };
        assert!(json::incompatibilities(&s, &s).is_empty(), "not self-compatible: {schema}");
        let again = json::JsonSchema::parse(&s.canonical()).expect("the canonical form parses");
        assert_eq!(again.canonical(), s.canonical());
        if let Ok(v) = json::Validator::new(&s) {
            assert!(v.validate(&doc).len() <= json::VIOLATIONS_MAX);
        }
    }
}
