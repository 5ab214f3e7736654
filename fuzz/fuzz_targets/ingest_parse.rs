//! The HTTP ingest parser (`POST /v1/topics/{topic}/events`) on arbitrary requests.
//!
//! Input: a mode byte, then the request. Mode 0 is structured JSON, 1 a batch, 2 binary mode
//! (a count byte, then `len name len value` headers, each name prefixed with `ce-` when its
//! first byte is odd), 3 an arbitrary `Content-Type` taken from the input. The rest is the body.
//!
//! Asserted, besides "never panics":
//! * every event the parser accepts passes `CloudEvent::validate`;
//! * an accepted event survives the Kafka binding unchanged: `to_record`, built into a
//!   RecordBatch, decoded, and read back with `from_record`, is equal to it;
//! * its structured JSON form is a fixed point: parsing `to_json` and rendering again gives the
//!   same JSON;
//! * a rejection is an error with a stable code from the table and a non-empty message;
//! * on a batch, the fast path (`crates/api/src/ingest.rs`) agrees with the reference parser:
//!   wherever it accepts, the reference parser accepts too, with equal events and equal data.

#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use gearbox_api::error::ERROR_CODES;
use gearbox_core::event::CloudEvent;
use gearbox_fuzz::Bytes;
use gearbox_log::batch::{BatchBuilder, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let mut input = Bytes::new(data);
    let mut headers = HeaderMap::new();
    match input.u8() % 4 {
        0 => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json"));
        }
        1 => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents-batch+json"));
        }
        2 => {
            for _ in 0..input.u8() % 12 {
                let name_len = usize::from(input.u8() % 24);
                let name = input.take(name_len).to_vec();
                let value_len = usize::from(input.u8());
                let value = input.take(value_len).to_vec();
                let prefixed = if name.first().is_some_and(|b| b % 2 == 1) {
                    [b"ce-".as_slice(), &name[1..]].concat()
                } else {
                    name
                };
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&prefixed), HeaderValue::from_bytes(&value)) {
                    headers.append(n, v);
                }
            }
        }
        _ => {
            let len = usize::from(input.u8() % 64);
            if let Ok(v) = HeaderValue::from_bytes(input.take(len)) {
                headers.insert(header::CONTENT_TYPE, v);
            }
        }
    }
    let body = input.rest();
    if let (Some(fast), reference) = gearbox_api::batch_parsers(body) {
        let reference = reference.expect("the reference parser accepts what the fast path accepts");
        assert_eq!(fast, reference, "the fast batch parser agrees with the reference parser");
    }
    match gearbox_api::parse_ingest(&headers, body) {
        Ok(events) => events.iter().for_each(check_event),
        Err(e) => {
            assert!(ERROR_CODES.iter().any(|(c, _)| *c == e.code), "unknown code {}", e.code);
            assert!(!e.message.is_empty());
        }
    }
}

fn check_event(e: &CloudEvent) {
    e.validate().expect("an accepted event is valid");
    let mut b = BatchBuilder::new();
    b.push(e.to_record(1_700_000_000_000));
    let records = decode(&b.build().expect("one record builds")).expect("our own batch decodes");
    assert_eq!(&CloudEvent::from_record(&records[0], "t", 0), e, "the Kafka binding round-trips");
    let json = e.to_json();
    let again = CloudEvent::from_json(&json).expect("our own JSON form parses");
    assert_eq!(again.to_json(), json, "the JSON form is a fixed point");
}
