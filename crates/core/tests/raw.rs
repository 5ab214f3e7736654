//! The broker's byte-level side, as the Kafka listener uses it: producer batches stored as
//! they came, schema checks of produced records, dedup with HTTP publishes, group offsets.

use gearbox_core::broker::{Broker, BrokerConfig, BrokerError};
use gearbox_core::event::CloudEvent;
use gearbox_core::registry::SchemaType;
use gearbox_core::subscription::{Mode, Settings, Start};
use gearbox_log::Retention;
use gearbox_log::batch::{BatchBuilder, RecordHeader, RecordInput};
use serde_json::json;

fn broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::durable();
    config.background = false;
    Broker::open(dir, config).unwrap()
}

fn record(value: &[u8], headers: &[(&'static str, &str)]) -> RecordInput {
    RecordInput {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(value.to_vec()),
        headers: headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: (*k).into(),
                value: Some(v.as_bytes().to_vec()),
            })
            .collect(),
    }
}

fn batch(records: Vec<RecordInput>) -> Vec<u8> {
    let mut b = BatchBuilder::new().producer(42, 3, 100);
    for r in records {
        b.push(r);
    }
    b.build().unwrap()
}

#[test]
fn a_producer_batch_is_stored_byte_for_byte_but_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 1, Retention::FOREVER).unwrap();
    b.publish(
        "t",
        &[CloudEvent::from_json(
            &json!({"specversion": "1.0", "id": "a", "source": "/s", "type": "x"}),
        )
        .unwrap()],
    )
    .unwrap();
    let bytes = batch(vec![record(b"one", &[]), record(b"two", &[])]);
    let a = b.append_batch("t", 0, &bytes).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (1, 2));
    let read = b.read_batches("t", 0, 1, 1 << 20).unwrap();
    let stored = &read.batches[0].bytes;
    // Base offset (bytes 0..8) and partition leader epoch (12..16) are the log's; the rest,
    // producer id, epoch and sequence included, is the producer's.
    assert_eq!(stored[8..12], bytes[8..12]);
    assert_eq!(stored[16..], bytes[16..]);
    assert_eq!(i64::from_be_bytes(stored[..8].try_into().unwrap()), 1);
    let (events, _) = b.read("t", 0, 1, 10).unwrap();
    assert_eq!(events[1].event.data.as_deref(), Some(&b"two"[..]));
    assert_eq!(events[1].event.ty, "kafka.record");
}

#[test]
fn bad_batches_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 1, Retention::FOREVER).unwrap();
    let mut bytes = batch(vec![record(b"one", &[])]);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(matches!(
        b.append_batch("t", 0, &bytes),
        Err(BrokerError::InvalidBatch(m)) if m.contains("CRC")
    ));
    let big = batch(vec![record(
        &vec![b'x'; gearbox_core::broker::EVENT_BYTES_MAX + 1],
        &[],
    )]);
    assert!(matches!(
        b.append_batch("t", 0, &big),
        Err(BrokerError::EventTooLarge { index: 0, .. })
    ));
    assert!(matches!(
        b.append_batch("nope", 0, &batch(vec![record(b"x", &[])])),
        Err(BrokerError::TopicNotFound(_))
    ));
    assert!(matches!(
        b.append_batch("t", 1, &batch(vec![record(b"x", &[])])),
        Err(BrokerError::PartitionNotFound { partition: 1, .. })
    ));
    assert_eq!(b.partition_bounds("t").unwrap(), vec![(0, 0)]);
}

#[test]
fn a_cloudevent_produced_as_a_record_is_a_duplicate_for_a_later_publish() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 1, Retention::FOREVER).unwrap();
    let headers = [
        ("ce_specversion", "1.0"),
        ("ce_id", "order-1"),
        ("ce_source", "/shop"),
        ("ce_type", "order.created"),
        ("content-type", "application/json"),
    ];
    b.append_batch("t", 0, &batch(vec![record(br#"{"n":1}"#, &headers)]))
        .unwrap();
    let (events, _) = b.read("t", 0, 0, 10).unwrap();
    let e = &events[0].event;
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("order-1", "/shop", "order.created")
    );
    let again = CloudEvent::from_json(&json!({
        "specversion": "1.0", "id": "order-1", "source": "/shop", "type": "order.created",
        "data": {"n": 1}
    }))
    .unwrap();
    let published = b.publish("t", &[again]).unwrap();
    assert!(published[0].duplicate);
    assert_eq!(published[0].position.offset, 0);
    assert_eq!(b.partition_bounds("t").unwrap(), vec![(0, 1)]);
}

fn framed(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend((id as u32).to_be_bytes());
    v.extend(payload);
    v
}

#[test]
fn an_enforced_topic_checks_framed_values_and_plain_records() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("orders", 1, Retention::FOREVER).unwrap();
    let schema = r#"{"type":"object","properties":{"qty":{"type":"integer"}},"required":["qty"]}"#;
    let (id, _) = b
        .registry()
        .register("orders-value", SchemaType::Json, schema)
        .unwrap();
    b.registry().set_strict("orders", true).unwrap();

    b.append_batch(
        "orders",
        0,
        &batch(vec![record(&framed(id, br#"{"qty":2}"#), &[])]),
    )
    .unwrap();
    let bad = batch(vec![
        record(&framed(id, br#"{"qty":2}"#), &[]),
        record(&framed(id, br#"{"qty":"two"}"#), &[]),
    ]);
    match b.append_batch("orders", 0, &bad) {
        Err(BrokerError::SchemaViolation { index, subject, .. }) => {
            assert_eq!((index, subject.as_str()), (1, "orders-value"));
        }
        other => panic!("expected a schema violation, got {other:?}"),
    }
    // A plain record on a strict topic is an event of type kafka.record, which has no schema.
    let plain = batch(vec![
        record(&framed(id, br#"{"qty":1}"#), &[]),
        record(b"{\"qty\":1}", &[]),
    ]);
    match b.append_batch("orders", 0, &plain) {
        Err(BrokerError::SchemaRequired { index, subject }) => {
            assert_eq!((index, subject.as_str()), (1, "orders-kafka.record"));
        }
        other => panic!("expected schema_required, got {other:?}"),
    }
    assert_eq!(b.partition_bounds("orders").unwrap(), vec![(0, 1)]);
}

#[test]
fn group_offsets_are_a_cursor_subscription_that_may_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path());
    b.create_topic("t", 2, Retention::FOREVER).unwrap();
    for _ in 0..5 {
        b.append_batch("t", 0, &batch(vec![record(b"x", &[])]))
            .unwrap();
    }
    assert_eq!(b.group_offsets("t", "g").unwrap(), None);
    b.commit_group_offsets("t", "g", &[(0, 4)]).unwrap();
    // Partition 1 was never committed: the client's auto.offset.reset decides.
    assert_eq!(
        b.group_offsets("t", "g").unwrap(),
        Some(vec![Some(4), None])
    );
    b.commit_group_offsets("t", "g", &[(0, 2)]).unwrap();
    assert_eq!(
        b.group_offsets("t", "g").unwrap(),
        Some(vec![Some(2), None])
    );
    let info = b.subscription("t", "g").unwrap();
    assert_eq!(info.positions, vec![2, 0]);
    assert_eq!(info.lag, 3);
    assert!(matches!(
        b.commit_group_offsets("t", "g", &[(0, 99)]),
        Err(BrokerError::OffsetOutOfRange { requested: 99, .. })
    ));
    drop(b);
    let b = broker(dir.path());
    assert_eq!(
        b.group_offsets("t", "g").unwrap(),
        Some(vec![Some(2), None])
    );
    assert!(
        b.subscription_names()
            .contains(&("t".to_string(), "g".to_string()))
    );
    // A subscription made over HTTP answers for every partition; a group commit to it does not
    // hide the others.
    let mut cursor = Settings::defaults(Mode::Cursor);
    cursor.start = Start::Latest;
    b.put_subscription("t", "http", cursor).unwrap();
    assert_eq!(
        b.group_offsets("t", "http").unwrap(),
        Some(vec![Some(5), Some(0)])
    );
    b.commit_group_offsets("t", "http", &[(1, 0)]).unwrap();
    assert_eq!(
        b.group_offsets("t", "http").unwrap(),
        Some(vec![Some(5), Some(0)])
    );
    // A commit over HTTP to a group's subscription counts as the group's.
    b.commit("t", "g", &[(1, 0)]).unwrap();
    assert_eq!(
        b.group_offsets("t", "g").unwrap(),
        Some(vec![Some(2), Some(0)])
    );
    // Deleting the subscription deletes its marks: a new group starts afresh.
    b.delete_subscription("t", "g").unwrap();
    b.commit_group_offsets("t", "g", &[(1, 0)]).unwrap();
    assert_eq!(
        b.group_offsets("t", "g").unwrap(),
        Some(vec![None, Some(0)])
    );
}
