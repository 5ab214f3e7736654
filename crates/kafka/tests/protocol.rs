//! The Kafka listener at the protocol level, through a real TCP socket: framing errors and what
//! they do to the connection, Produce refusals with their per-partition codes, idempotent
//! producers across restarts, long-polling Fetch, ListOffsets, Metadata, the admin APIs, and
//! the listener's bounds. Groups are not tested here (the coordinator has its own tests).
//!
//! Every test runs its own listener over its own broker in a fresh temporary directory; see
//! `common/mod.rs` for the blocking client.

mod common;

use bytes::Bytes;
use common::{Client, Server, batch, encode_request, producer_batch, reseal};
use gearbox_core::broker::{Broker, BrokerConfig, EVENT_BYTES_MAX, TOPIC_BATCH_BYTES_MAX};
use gearbox_kafka::compression::DECOMPRESSED_BYTES_MAX;
use gearbox_kafka::fetch::FETCH_PARTITIONS_MAX;
use gearbox_kafka::produce::{PRODUCE_PARTITIONS_MAX, check_batch};
use gearbox_kafka::producers::{
    PRODUCER_ID_BLOCK, PRODUCERS_PER_PARTITION_MAX, Producers, STATE_SCAN_OFFSETS, Sequenced,
};
use gearbox_kafka::{KafkaConfig, versions};
use gearbox_log::batch::{
    ATTRIBUTES_POS, BATCH_HEADER_BYTES, BATCH_LENGTH_POS, BatchBuilder, LOG_OVERHEAD, MAGIC_POS,
    RecordInput,
};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, ResponseHeader, TopicName, TransactionalId,
    create_topics_request::{CreatableTopic, CreatableTopicConfig},
    describe_configs_request::DescribeConfigsResource,
    fetch_request::{FetchPartition, FetchTopic},
    fetch_response::PartitionData,
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    list_offsets_response::ListOffsetsPartitionResponse,
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
    produce_response::PartitionProduceResponse,
};
use kafka_protocol::protocol::{Decodable as _, StrBytes};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn start() -> (tempfile::TempDir, Server) {
    start_with(Server::config())
}

fn start_with(config: KafkaConfig) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(dir.path(), config);
    (dir, server)
}

fn creatable(topic: &str, partitions: i32) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)
}

fn create_topics(
    c: &mut Client,
    topics: Vec<CreatableTopic>,
    validate_only: bool,
) -> CreateTopicsResponse {
    let req = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(5_000)
        .with_validate_only(validate_only);
    c.call(ApiKey::CreateTopics, 7, &req)
}

fn create_topic(c: &mut Client, topic: &str, partitions: i32) {
    let r = create_topics(c, vec![creatable(topic, partitions)], false);
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}

fn produce_request(
    acks: i16,
    topic: &str,
    partitions: Vec<(i32, Option<Bytes>)>,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(
                    partitions
                        .into_iter()
                        .map(|(index, records)| {
                            PartitionProduceData::default()
                                .with_index(index)
                                .with_records(records)
                        })
                        .collect(),
                ),
        ])
}

/// Produces one partition's records with acks -1 and returns that partition's answer.
fn produce_at(
    c: &mut Client,
    version: i16,
    acks: i16,
    topic: &str,
    partition: i32,
    records: Option<Vec<u8>>,
) -> PartitionProduceResponse {
    let req = produce_request(acks, topic, vec![(partition, records.map(Bytes::from))]);
    let mut r: ProduceResponse = c.call(ApiKey::Produce, version, &req);
    assert_eq!(r.responses.len(), 1);
    let mut t = r.responses.remove(0);
    assert_eq!(t.name, name(topic));
    assert_eq!(t.partition_responses.len(), 1);
    let p = t.partition_responses.remove(0);
    assert_eq!(p.index, partition);
    p
}

fn produce(c: &mut Client, topic: &str, records: Vec<u8>) -> PartitionProduceResponse {
    produce_at(c, 9, -1, topic, 0, Some(records))
}

/// Produces and expects success; returns the base offset.
fn produce_ok(c: &mut Client, topic: &str, records: Vec<u8>) -> i64 {
    let p = produce(c, topic, records);
    assert_eq!(p.error_code, 0, "{:?}", p.error_message);
    p.base_offset
}

fn list_offsets_request(topic: &str, partition: i32, timestamp: i64) -> ListOffsetsRequest {
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(timestamp),
                ]),
        ])
}

fn list_offsets(
    c: &mut Client,
    version: i16,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> ListOffsetsPartitionResponse {
    let r: ListOffsetsResponse = c.call(
        ApiKey::ListOffsets,
        version,
        &list_offsets_request(topic, partition, timestamp),
    );
    r.topics[0].partitions[0].clone()
}

/// The high-water mark of partition 0, by ListOffsets latest.
fn latest(c: &mut Client, topic: &str) -> i64 {
    let p = list_offsets(c, 6, topic, 0, -1);
    assert_eq!(p.error_code, 0);
    p.offset
}

fn fetch_request(
    topic: &str,
    partitions: &[(i32, i64, i32)],
    max_wait_ms: i32,
    min_bytes: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(p, offset, max)| {
                            FetchPartition::default()
                                .with_partition(p)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(max)
                        })
                        .collect(),
                ),
        ])
}

/// Fetch v12 of partition 0 of `topic`.
fn fetch(
    c: &mut Client,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
    partition_max_bytes: i32,
) -> PartitionData {
    let r: FetchResponse = c.call(
        ApiKey::Fetch,
        12,
        &fetch_request(
            topic,
            &[(0, offset, partition_max_bytes)],
            max_wait_ms,
            min_bytes,
        ),
    );
    assert_eq!(r.error_code, 0);
    r.responses[0].partitions[0].clone()
}

fn records_of(p: &PartitionData) -> Vec<u8> {
    p.records.as_ref().map(|b| b.to_vec()).unwrap_or_default()
}

/// `allow_auto` is only sent from v4 on (earlier versions have no flag and always create).
fn metadata_request(topics: Option<&[&str]>, allow_auto: bool) -> MetadataRequest {
    MetadataRequest::default()
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
                .collect()
        }))
        .with_allow_auto_topic_creation(allow_auto)
}

fn metadata(
    c: &mut Client,
    version: i16,
    topics: Option<&[&str]>,
    allow_auto: bool,
) -> MetadataResponse {
    c.call(
        ApiKey::Metadata,
        version,
        &metadata_request(topics, allow_auto || version < 4),
    )
}

/// The error code and partition count Metadata v12 gives `topic`, without auto-creation.
fn describe(c: &mut Client, topic: &str) -> (i16, usize) {
    let r = metadata(c, 12, Some(&[topic]), false);
    (r.topics[0].error_code, r.topics[0].partitions.len())
}

fn init_producer_id(c: &mut Client) -> (i64, i16) {
    let r: InitProducerIdResponse = c.call(
        ApiKey::InitProducerId,
        4,
        &InitProducerIdRequest::default().with_transactional_id(None),
    );
    assert_eq!(r.error_code, 0);
    (r.producer_id.0, r.producer_epoch)
}

// ---------------------------------------------------------------------------------------------
// Framing

#[test]
fn size_prefixes_outside_the_bounds_close_the_connection() {
    let mut config = Server::config();
    config.request_bytes_max = 4096;
    let (_dir, server) = start_with(config);
    for size in [-1i32, i32::MIN, 0, 4, 7, 4097, i32::MAX] {
        let mut c = server.client();
        c.send_raw(&size.to_be_bytes());
        c.expect_closed();
    }
    // Exactly `request_bytes_max` is read and answered: an ApiVersions v3 padded to 4096 bytes
    // through its client software name.
    let mut c = server.client();
    let padded = |pad: usize| {
        let req = common::api_versions_request().with_client_software_name(text(&"x".repeat(pad)));
        encode_request(ApiKey::ApiVersions, 3, 1, &req)
    };
    // The name's length prefix is a varint, so step down from an estimate until it fits.
    let mut pad = 4096 - padded(0).len();
    while padded(pad).len() > 4096 {
        pad -= 1;
    }
    let frame = padded(pad);
    assert_eq!(frame.len(), 4096);
    c.send_frame(&frame);
    let mut answer = c.recv_frame();
    let header = ResponseHeader::decode(&mut answer, 0).unwrap();
    assert_eq!(header.correlation_id, 1);
    let r = ApiVersionsResponse::decode(&mut answer, 3).unwrap();
    assert_eq!(r.error_code, 0);
    c.expect_open();
}

#[test]
fn the_default_request_size_limit_closes_above_it() {
    let (_dir, server) = start();
    let mut c = server.client();
    let size = i32::try_from(gearbox_kafka::REQUEST_BYTES_MAX_DEFAULT + 1).unwrap();
    c.send_raw(&size.to_be_bytes());
    c.expect_closed();
}

#[test]
fn a_frame_shorter_than_the_fixed_header_closes() {
    let (_dir, server) = start();
    // A valid prefix of 7 bytes followed by those bytes: the prefix check closes first.
    let mut c = server.client();
    c.send_frame(&[0, 18, 0, 3, 0, 0, 0]);
    c.expect_closed();
}

#[test]
fn unknown_unimplemented_and_out_of_range_apis_close_the_connection() {
    let (_dir, server) = start();
    let produce_max = versions::range(ApiKey::Produce).unwrap().max;
    let cases: &[(&str, i16, i16)] = &[
        ("unknown key 999", 999, 0),
        ("negative key", -5, 0),
        (
            "SaslHandshake (not implemented)",
            ApiKey::SaslHandshake as i16,
            1,
        ),
        (
            "Produce above the advertised max",
            ApiKey::Produce as i16,
            produce_max + 1,
        ),
        ("Produce v2 (below the min)", ApiKey::Produce as i16, 2),
        ("Fetch v13 (topic ids)", ApiKey::Fetch as i16, 13),
    ];
    for &(what, key, version) in cases {
        let mut c = server.client();
        c.expect_open();
        let mut frame = Vec::new();
        frame.extend_from_slice(&key.to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&42i32.to_be_bytes());
        // A null client id, then a plausible empty body.
        frame.extend_from_slice(&(-1i16).to_be_bytes());
        frame.extend_from_slice(&[0; 16]);
        c.send_frame(&frame);
        eprintln!("case: {what}");
        c.expect_closed();
    }
}

#[test]
fn api_versions_above_the_implemented_range_answers_v0_with_unsupported_version() {
    let (_dir, server) = start();
    let mut c = server.client();
    // ApiVersions v127 with a body no version defines: the broker must not try to parse it.
    let mut frame = Vec::new();
    frame.extend_from_slice(&(ApiKey::ApiVersions as i16).to_be_bytes());
    frame.extend_from_slice(&127i16.to_be_bytes());
    frame.extend_from_slice(&77i32.to_be_bytes());
    frame.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    c.send_frame(&frame);
    let mut answer = c.recv_frame();
    // Header v0 (no tagged fields), body v0.
    let header = ResponseHeader::decode(&mut answer, 0).unwrap();
    assert_eq!(header.correlation_id, 77);
    let r = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert!(
        bytes::Buf::remaining(&answer) == 0,
        "v0 body has bytes left over"
    );
    assert_eq!(r.error_code, code(ResponseError::UnsupportedVersion));
    assert_eq!(r.error_code, 35);
    assert_table(&r);
    c.expect_open();
}

fn assert_table(r: &ApiVersionsResponse) {
    let got: Vec<(i16, i16, i16)> = r
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    let want: Vec<(i16, i16, i16)> = versions::table()
        .iter()
        .map(|(k, v)| (*k as i16, v.min, v.max))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn api_versions_at_every_implemented_version_lists_the_table() {
    let (_dir, server) = start();
    let mut c = server.client();
    for version in 0..=3 {
        let r: ApiVersionsResponse = c.call(
            ApiKey::ApiVersions,
            version,
            &common::api_versions_request(),
        );
        assert_eq!(r.error_code, 0, "v{version}");
        assert_table(&r);
    }
}

#[test]
fn a_truncated_request_body_closes_the_connection() {
    let (_dir, server) = start();
    let mut setup = server.client();
    create_topic(&mut setup, "t", 1);
    let full = encode_request(
        ApiKey::Produce,
        9,
        5,
        &produce_request(-1, "t", vec![(0, Some(Bytes::from(batch(1, &[b"hello"]))))]),
    );
    let metadata = encode_request(
        ApiKey::Metadata,
        12,
        6,
        &metadata_request(Some(&["t"]), false),
    );
    for (frame, cut) in [(&full, 1), (&full, full.len() / 2), (&metadata, 3)] {
        let mut c = server.client();
        c.send_frame(&frame[..frame.len() - cut]);
        c.expect_closed();
    }
    assert_eq!(
        latest(&mut setup, "t"),
        0,
        "a truncated produce wrote nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Produce refusals

/// One refused produce: the records (or the request) and what the broker must answer.
struct Refused {
    what: &'static str,
    topic: &'static str,
    partition: i32,
    acks: i16,
    records: Option<Vec<u8>>,
    code: i16,
    /// A piece of the v8+ error message.
    message: String,
}

fn with_codec(mut b: Vec<u8>, attributes: i16) -> Vec<u8> {
    b[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
    reseal(&mut b);
    b
}

/// A valid batch of just over TOPIC_BATCH_BYTES_MAX, of records that are each allowed.
fn oversized_batch() -> Vec<u8> {
    let value = vec![7u8; EVENT_BYTES_MAX - 64];
    let mut b = BatchBuilder::new();
    while b.encoded_len() <= TOPIC_BATCH_BYTES_MAX as usize {
        b.push(RecordInput {
            timestamp: 1,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        });
    }
    b.build().unwrap()
}

/// `plain` with its records gzip-compressed (codec 1), length and CRC redone.
fn gzip(plain: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&plain[BATCH_HEADER_BYTES..]).unwrap();
    let mut out = plain[..BATCH_HEADER_BYTES].to_vec();
    out.extend_from_slice(&z.finish().unwrap());
    let length = i32::try_from(out.len() - LOG_OVERHEAD).unwrap();
    out[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&length.to_be_bytes());
    with_codec(out, 1)
}

/// A plain batch whose records alone pass DECOMPRESSED_BYTES_MAX (each record is allowed).
fn oversized_plain_records() -> Vec<u8> {
    let value = vec![0u8; EVENT_BYTES_MAX - 64];
    let mut b = BatchBuilder::new();
    while b.encoded_len() - BATCH_HEADER_BYTES <= DECOMPRESSED_BYTES_MAX {
        b.push(RecordInput {
            timestamp: 1,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        });
    }
    b.build().unwrap()
}

fn refusals(oversized: &[u8]) -> Vec<Refused> {
    let good = batch(1_000, &[b"a", b"b", b"c"]);
    let flipped = {
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        b
    };
    let bad_magic = {
        let mut b = good.clone();
        b[MAGIC_POS] = 1;
        b
    };
    let two = [good.clone(), good.clone()].concat();
    let r = |what, records: Option<Vec<u8>>, code: ResponseError, message: &str| Refused {
        what,
        topic: "t",
        partition: 0,
        acks: -1,
        records,
        code: code.code(),
        message: message.to_string(),
    };
    vec![
        r(
            "a flipped record byte",
            Some(flipped),
            ResponseError::CorruptMessage,
            "CRC-32C mismatch",
        ),
        r(
            "magic 1",
            Some(bad_magic),
            ResponseError::CorruptMessage,
            "magic 1",
        ),
        r(
            "a cut batch",
            Some(good[..good.len() - 1].to_vec()),
            ResponseError::CorruptMessage,
            "length mismatch",
        ),
        r(
            "two batches",
            Some(two),
            ResponseError::InvalidRecord,
            "one batch per partition",
        ),
        // Codec bits over records that are not compressed: they do not decompress.
        r(
            "gzip bits, plain records",
            Some(with_codec(good.clone(), 1)),
            ResponseError::CorruptMessage,
            "gzip records do not decompress",
        ),
        r(
            "snappy bits, plain records",
            Some(with_codec(good.clone(), 2)),
            ResponseError::CorruptMessage,
            "snappy records do not decompress",
        ),
        r(
            "lz4 bits, plain records",
            Some(with_codec(good.clone(), 3)),
            ResponseError::CorruptMessage,
            "lz4 records do not decompress",
        ),
        r(
            "zstd bits, plain records",
            Some(with_codec(good.clone(), 4)),
            ResponseError::CorruptMessage,
            "zstd records do not decompress",
        ),
        r(
            "codec 5",
            Some(with_codec(good.clone(), 5)),
            ResponseError::UnsupportedCompressionType,
            "codec 5",
        ),
        r(
            "codec 7",
            Some(with_codec(good.clone(), 7)),
            ResponseError::UnsupportedCompressionType,
            "codec 7",
        ),
        r(
            "a gzip batch inflating past DECOMPRESSED_BYTES_MAX",
            Some(gzip(&oversized_plain_records())),
            ResponseError::MessageTooLarge,
            &format!("more than {DECOMPRESSED_BYTES_MAX} bytes"),
        ),
        r(
            "a transactional batch",
            Some(with_codec(good.clone(), 0x10)),
            ResponseError::InvalidRecord,
            "transactional",
        ),
        r(
            "a control batch",
            Some(with_codec(good.clone(), 0x20)),
            ResponseError::InvalidRecord,
            "control",
        ),
        r(
            "a producer without a sequence",
            Some(producer_batch(7, 0, -1, &[b"x"])),
            ResponseError::InvalidRecord,
            "base sequence -1",
        ),
        r(
            "a batch over TOPIC_BATCH_BYTES_MAX",
            Some(oversized.to_vec()),
            ResponseError::MessageTooLarge,
            &TOPIC_BATCH_BYTES_MAX.to_string(),
        ),
        r(
            "a record over EVENT_BYTES_MAX",
            Some(batch(1, &[&vec![0u8; EVENT_BYTES_MAX + 1]])),
            ResponseError::MessageTooLarge,
            &format!("the limit is {EVENT_BYTES_MAX}"),
        ),
        r(
            "null records",
            None,
            ResponseError::InvalidRecord,
            "no records",
        ),
        r(
            "empty records",
            Some(Vec::new()),
            ResponseError::InvalidRecord,
            "no records",
        ),
        Refused {
            acks: 5,
            ..r(
                "acks 5",
                Some(good.clone()),
                ResponseError::InvalidRequiredAcks,
                "acks 5",
            )
        },
        Refused {
            acks: -2,
            ..r(
                "acks -2",
                Some(good.clone()),
                ResponseError::InvalidRequiredAcks,
                "acks -2",
            )
        },
        Refused {
            topic: "nope",
            ..r(
                "an unknown topic",
                Some(good.clone()),
                ResponseError::UnknownTopicOrPartition,
                "nope",
            )
        },
        Refused {
            partition: 1,
            ..r(
                "partition 1 of 1",
                Some(good.clone()),
                ResponseError::UnknownTopicOrPartition,
                "partition",
            )
        },
        Refused {
            partition: -1,
            ..r(
                "partition -1",
                Some(good),
                ResponseError::UnknownTopicOrPartition,
                "partition -1",
            )
        },
    ]
}

#[test]
fn bad_batches_are_refused_with_their_code_and_nothing_is_written() {
    let oversized = oversized_batch();
    assert!(oversized.len() > TOPIC_BATCH_BYTES_MAX as usize);
    for version in [9, 3] {
        let (_dir, server) = start();
        let mut c = server.client();
        create_topic(&mut c, "t", 1);
        assert_eq!(produce_ok(&mut c, "t", batch(1, &[b"first"])), 0);
        for case in refusals(&oversized) {
            let p = produce_at(
                &mut c,
                version,
                case.acks,
                case.topic,
                case.partition,
                case.records,
            );
            let what = format!("v{version}: {}", case.what);
            assert_eq!(p.error_code, case.code, "{what}: {:?}", p.error_message);
            assert_eq!(p.base_offset, -1, "{what}");
            if version >= 8 {
                let message = p
                    .error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                assert!(
                    message.contains(&case.message),
                    "{what}: message {message:?} lacks {:?}",
                    case.message
                );
            } else {
                assert_eq!(p.error_message, None, "{what}");
            }
            // The connection stays, and nothing was written.
            assert_eq!(latest(&mut c, "t"), 1, "{what}");
        }
        assert_eq!(
            produce_ok(&mut c, "t", batch(2, &[b"second"])),
            1,
            "v{version}"
        );
        // v3 has no log start offset; v9 reports 0.
        let p = produce_at(&mut c, version, -1, "t", 0, Some(batch(3, &[b"third"])));
        assert_eq!((p.error_code, p.base_offset), (0, 2));
        assert_eq!(p.log_start_offset, if version >= 5 { 0 } else { -1 });
    }
}

#[test]
fn a_compressed_batch_is_stored_and_served_as_its_plain_equivalent() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let plain = producer_batch(3, 0, 0, &[b"one", b"two", b"three"]);
    let compressed = gzip(&plain);
    assert_ne!(compressed.len(), plain.len());
    assert_eq!(produce_ok(&mut c, "t", compressed.clone()), 0);
    let got = records_of(&fetch(&mut c, "t", 0, 0, 0, 1 << 20));
    assert_eq!(got.len(), plain.len());
    assert_eq!(got[16..], plain[16..], "the plain batch, CRC included");
    // A retry of the compressed batch is recognised by its sequence.
    assert_eq!(produce_ok(&mut c, "t", compressed), 0);
    assert_eq!(latest(&mut c, "t"), 3);
}

#[test]
fn a_transactional_produce_is_refused_for_every_partition() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 2);
    let req = produce_request(
        -1,
        "t",
        vec![
            (0, Some(batch(1, &[b"a"]).into())),
            (1, Some(batch(1, &[b"b"]).into())),
        ],
    )
    .with_transactional_id(Some(TransactionalId(text("tx"))));
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &req);
    let codes: Vec<i16> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| p.error_code)
        .collect();
    assert_eq!(
        codes,
        [code(ResponseError::TransactionalIdAuthorizationFailed); 2]
    );
    assert_eq!(latest(&mut c, "t"), 0);
}

#[test]
fn acks_zero_sends_no_answer_but_stores_the_batch() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    c.send(
        ApiKey::Produce,
        9,
        &produce_request(0, "t", vec![(0, Some(batch(1, &[b"a", b"b"]).into()))]),
    );
    // A refused acks-0 produce is not answered either.
    c.send(
        ApiKey::Produce,
        9,
        &produce_request(0, "t", vec![(0, None)]),
    );
    let id = c.send(ApiKey::ListOffsets, 6, &list_offsets_request("t", 0, -1));
    let (got, r): (i32, ListOffsetsResponse) = c.recv(ApiKey::ListOffsets, 6);
    assert_eq!(
        got, id,
        "the next answer on the connection is the ListOffsets one"
    );
    assert_eq!(r.topics[0].partitions[0].offset, 2);
    let fetched = fetch(&mut c, "t", 0, 0, 0, 1 << 20);
    let records = gearbox_log::batch::decode(&records_of(&fetched)).unwrap();
    assert_eq!(records.len(), 2);
}

#[test]
fn produce_partitions_max_is_enforced() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    // One over the limit: every entry is refused with INVALID_REQUEST, a good one included.
    let mut entries: Vec<(i32, Option<Bytes>)> = vec![(0, Some(batch(1, &[b"a"]).into()))];
    entries.extend((1..=PRODUCE_PARTITIONS_MAX as i32).map(|i| (i, None)));
    assert_eq!(entries.len(), PRODUCE_PARTITIONS_MAX + 1);
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce_request(-1, "t", entries));
    let ps = &r.responses[0].partition_responses;
    assert_eq!(ps.len(), PRODUCE_PARTITIONS_MAX + 1);
    assert!(
        ps.iter()
            .all(|p| p.error_code == code(ResponseError::InvalidRequest))
    );
    assert_eq!(latest(&mut c, "t"), 0);
    // At the limit each entry is judged on its own.
    let mut entries: Vec<(i32, Option<Bytes>)> = vec![(0, Some(batch(1, &[b"a"]).into()))];
    entries.extend((1..PRODUCE_PARTITIONS_MAX as i32).map(|i| (i, None)));
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &produce_request(-1, "t", entries));
    let ps = &r.responses[0].partition_responses;
    assert_eq!(ps.len(), PRODUCE_PARTITIONS_MAX);
    assert_eq!((ps[0].error_code, ps[0].base_offset), (0, 0));
    assert!(
        ps[1..]
            .iter()
            .all(|p| p.error_code == code(ResponseError::InvalidRecord))
    );
}

// ---------------------------------------------------------------------------------------------
// Idempotent producers

#[test]
fn producer_ids_are_distinct_across_calls_blocks_and_restarts() {
    let (_dir, server) = start();
    let mut c = server.client();
    let mut seen = std::collections::HashSet::new();
    // One more than a block, so the second block's reservation is exercised too.
    for _ in 0..=PRODUCER_ID_BLOCK {
        let (id, epoch) = init_producer_id(&mut c);
        assert_eq!(epoch, 0);
        assert!(id >= 0);
        assert!(seen.insert(id), "producer id {id} given twice");
    }
    drop(c);
    let server = server.restart();
    let mut c = server.client();
    for _ in 0..3 {
        let (id, _) = init_producer_id(&mut c);
        assert!(
            seen.insert(id),
            "producer id {id} given again after a restart"
        );
    }
}

#[test]
fn init_producer_id_with_a_transactional_id_is_refused() {
    let (_dir, server) = start();
    let mut c = server.client();
    for version in [0, 4] {
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text("tx-1"))))
            .with_transaction_timeout_ms(60_000);
        let r: InitProducerIdResponse = c.call(ApiKey::InitProducerId, version, &req);
        assert_eq!(
            r.error_code,
            code(ResponseError::TransactionalIdAuthorizationFailed),
            "v{version}"
        );
        assert_eq!((r.producer_id.0, r.producer_epoch), (-1, -1));
    }
    c.expect_open();
}

#[test]
fn retries_are_answered_with_the_first_offset_and_gaps_and_old_epochs_are_refused() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let (pid, epoch) = init_producer_id(&mut c);
    let first = producer_batch(pid, epoch, 0, &[b"a", b"b", b"c"]);
    let second = producer_batch(pid, epoch, 3, &[b"d", b"e"]);
    assert_eq!(produce_ok(&mut c, "t", first.clone()), 0);
    assert_eq!(produce_ok(&mut c, "t", second.clone()), 3);
    // Retries (an older one and the last one) answer with their first offsets, store nothing.
    assert_eq!(produce_ok(&mut c, "t", first), 0);
    assert_eq!(produce_ok(&mut c, "t", second), 3);
    assert_eq!(latest(&mut c, "t"), 5);
    // A gap.
    let p = produce(&mut c, "t", producer_batch(pid, epoch, 7, &[b"f"]));
    assert_eq!(
        p.error_code,
        code(ResponseError::OutOfOrderSequenceNumber),
        "{:?}",
        p.error_message
    );
    assert_eq!(latest(&mut c, "t"), 5);
    // The next sequence is still accepted.
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch, 5, &[b"f"])),
        5
    );
    // An epoch bump (KIP-360); the old epoch is fenced, the new one starts at 0.
    let bump = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_producer_id(ProducerId(pid))
        .with_producer_epoch(epoch);
    let r: InitProducerIdResponse = c.call(ApiKey::InitProducerId, 4, &bump);
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (0, pid, epoch + 1)
    );
    // The bumped epoch must start at sequence 0, as with Kafka.
    let p = produce(&mut c, "t", producer_batch(pid, epoch + 1, 3, &[b"g"]));
    assert_eq!(
        p.error_code,
        code(ResponseError::OutOfOrderSequenceNumber),
        "{:?}",
        p.error_message
    );
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch + 1, 0, &[b"g"])),
        6
    );
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch + 1, 1, &[b"g"])),
        7
    );
    let p = produce(&mut c, "t", producer_batch(pid, epoch, 6, &[b"h"]));
    assert_eq!(
        p.error_code,
        code(ResponseError::InvalidProducerEpoch),
        "{:?}",
        p.error_message
    );
    assert_eq!(
        p.error_message.as_ref().map(ToString::to_string),
        Some(format!(
            "producer {pid} epoch {epoch} is older than the current epoch {}",
            epoch + 1
        ))
    );
    assert_eq!(latest(&mut c, "t"), 8);
}

#[test]
fn only_the_last_recent_batches_are_recognised_as_retries() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let (pid, epoch) = init_producer_id(&mut c);
    let n = gearbox_kafka::producers::RECENT_BATCHES_MAX as i32 + 1;
    for seq in 0..n {
        assert_eq!(
            produce_ok(&mut c, "t", producer_batch(pid, epoch, seq, &[b"x"])),
            i64::from(seq)
        );
    }
    // The second batch is still remembered; the first is not, and is then out of order.
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch, 1, &[b"x"])),
        1
    );
    let p = produce(&mut c, "t", producer_batch(pid, epoch, 0, &[b"x"]));
    assert_eq!(p.error_code, code(ResponseError::OutOfOrderSequenceNumber));
    assert_eq!(latest(&mut c, "t"), i64::from(n));
}

#[test]
fn producer_state_is_rebuilt_from_the_log_after_a_restart() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let (pid, epoch) = init_producer_id(&mut c);
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch, 0, &[b"a", b"b"])),
        0
    );
    let last = producer_batch(pid, epoch, 2, &[b"c"]);
    assert_eq!(produce_ok(&mut c, "t", last.clone()), 2);
    drop(c);
    let server = server.restart();
    let mut c = server.client();
    // The last acknowledged batch, retried: a duplicate.
    assert_eq!(produce_ok(&mut c, "t", last), 2);
    assert_eq!(latest(&mut c, "t"), 3);
    // A gap is still a gap (the producer is known, not new).
    let p = produce(&mut c, "t", producer_batch(pid, epoch, 9, &[b"d"]));
    assert_eq!(p.error_code, code(ResponseError::OutOfOrderSequenceNumber));
    assert_eq!(
        produce_ok(&mut c, "t", producer_batch(pid, epoch, 3, &[b"d"])),
        3
    );
}

#[test]
fn producer_state_is_rebuilt_only_from_the_last_state_scan_offsets() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let old = producer_batch(1, 0, 0, &[b"old"]);
    assert_eq!(produce_ok(&mut c, "t", old.clone()), 0);
    // STATE_SCAN_OFFSETS records from producers that are not idempotent, in a few batches.
    let per_batch = 25_000u64;
    assert_eq!(STATE_SCAN_OFFSETS % per_batch, 0);
    for _ in 0..STATE_SCAN_OFFSETS / per_batch {
        let values: Vec<&[u8]> = vec![b"v"; per_batch as usize];
        produce_ok(&mut c, "t", batch(5, &values));
    }
    let recent = producer_batch(2, 0, 0, &[b"recent"]);
    let recent_offset = produce_ok(&mut c, "t", recent.clone());
    drop(c);
    let server = server.restart();
    let mut c = server.client();
    // Within the window: recognised.
    assert_eq!(produce_ok(&mut c, "t", recent), recent_offset);
    // Beyond it: forgotten, so a producer with no state is accepted at any sequence and the
    // retry is stored again (documented: producers.rs, STATE_SCAN_OFFSETS).
    let end = latest(&mut c, "t");
    assert_eq!(produce_ok(&mut c, "t", old), end);
}

#[test]
fn producers_per_partition_are_bounded_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::durable();
    // This test is about memory, not durability: 10,001 fsyncs would only make it slow.
    config.sync = gearbox_log::config::SyncMode::Never;
    let broker = Arc::new(Broker::open(dir.path(), config).unwrap());
    broker
        .create_topic("t", 1, gearbox_log::Retention::FOREVER)
        .unwrap();
    let producers = Producers::new(broker.clone());
    let append = |pid: i64, seq: i32| {
        let b = producer_batch(pid, 0, seq, &[b"x"]);
        let (_, s): (_, Sequenced) = check_batch(Some(&Bytes::from(b.clone()))).unwrap();
        producers.append("t", 0, s, &b).unwrap()
    };
    let first = append(0, 0);
    for pid in 1..PRODUCERS_PER_PARTITION_MAX as i64 {
        append(pid, 0);
    }
    assert_eq!(producers.remembered("t", 0), PRODUCERS_PER_PARTITION_MAX);
    // Producer 0 is used again, so producer 1 is the least recently used one.
    assert!(append(0, 0).duplicate);
    append(PRODUCERS_PER_PARTITION_MAX as i64, 0);
    assert_eq!(producers.remembered("t", 0), PRODUCERS_PER_PARTITION_MAX);
    let again = append(0, 0);
    assert!(again.duplicate);
    assert_eq!(again.base_offset, first.base_offset);
    // Producer 1 was forgotten: its retry is stored again.
    assert!(!append(1, 0).duplicate);
}

// ---------------------------------------------------------------------------------------------
// Fetch

#[test]
fn a_fetch_at_the_high_watermark_waits_max_wait() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    produce_ok(&mut c, "t", batch(1, &[b"a"]));
    let started = Instant::now();
    let p = fetch(&mut c, "t", 1, 300, 1, 1 << 20);
    let waited = started.elapsed();
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 1);
    assert!(records_of(&p).is_empty());
    assert!(
        waited >= Duration::from_millis(250),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
}

#[test]
fn a_waiting_fetch_is_woken_by_a_produce_on_another_connection() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let mut consumer = server.client();
    let started = Instant::now();
    let id = consumer.send(
        ApiKey::Fetch,
        12,
        &fetch_request("t", &[(0, 0, 1 << 20)], 20_000, 1),
    );
    // Give the fetch time to park (not a wait for a condition: either order must answer
    // with the record well before max_wait).
    std::thread::sleep(Duration::from_millis(200));
    produce_ok(&mut c, "t", batch(1, &[b"wake"]));
    let (got, r): (i32, FetchResponse) = consumer.recv(ApiKey::Fetch, 12);
    let waited = started.elapsed();
    assert_eq!(got, id);
    let p = &r.responses[0].partitions[0];
    let records = gearbox_log::batch::decode(&records_of(p)).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"wake"[..]));
    assert!(waited < Duration::from_secs(10), "woken after {waited:?}");
}

#[test]
fn fetch_outside_the_log_is_offset_out_of_range() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    produce_ok(&mut c, "t", batch(1, &[b"a"]));
    for offset in [2, 1_000, -1, i64::MIN] {
        let started = Instant::now();
        let p = fetch(&mut c, "t", offset, 5_000, 1, 1 << 20);
        assert_eq!(
            p.error_code,
            code(ResponseError::OffsetOutOfRange),
            "offset {offset}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "an error answers at once"
        );
    }
    let p = fetch(&mut c, "nope", 0, 0, 0, 1 << 20);
    assert_eq!(p.error_code, code(ResponseError::UnknownTopicOrPartition));
}

#[test]
fn fetched_batches_are_the_produced_bytes_with_offset_and_epoch_assigned() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    produce_ok(&mut c, "t", batch(1, &[b"a", b"b"]));
    let mut b = BatchBuilder::new().producer(9, 3, 0);
    b.push(RecordInput {
        timestamp: 1_700_000_000_123,
        key: Some(b"k".to_vec()),
        value: Some(b"v".to_vec()),
        headers: vec![gearbox_log::batch::RecordHeader {
            key: "h".into(),
            value: Some(b"hv".to_vec()),
        }],
    });
    let sent = b.build().unwrap();
    assert_eq!(produce_ok(&mut c, "t", sent.clone()), 2);
    let got = records_of(&fetch(&mut c, "t", 2, 0, 0, 1 << 20));
    assert_eq!(got.len(), sent.len());
    assert_eq!(i64::from_be_bytes(got[0..8].try_into().unwrap()), 2);
    assert_eq!(got[8..12], sent[8..12], "batch length");
    assert_eq!(got[16..], sent[16..], "magic, CRC and everything after");
}

#[test]
fn partition_max_bytes_returns_whole_batches() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let batches: Vec<Vec<u8>> = (0..3u8)
        .map(|i| batch(1, &[&[i; 100], &[i; 100]]))
        .collect();
    for b in &batches {
        produce_ok(&mut c, "t", b.clone());
    }
    let s: Vec<i32> = batches.iter().map(|b| b.len() as i32).collect();
    let cases = [
        (1, 1), // the first batch is returned whole, over the limit
        (s[0] + s[1] - 1, 1),
        (s[0] + s[1], 2),
        (1 << 20, 3),
    ];
    for (limit, n) in cases {
        let got = records_of(&fetch(&mut c, "t", 0, 0, 0, limit));
        let want: usize = s[..n].iter().map(|&x| x as usize).sum();
        assert_eq!(got.len(), want, "partition_max_bytes {limit}");
    }
    // From the middle of the second batch: the second batch is served whole.
    let got = records_of(&fetch(&mut c, "t", 3, 0, 0, 1));
    assert_eq!(got.len(), s[1] as usize);
    assert_eq!(i64::from_be_bytes(got[0..8].try_into().unwrap()), 2);
}

#[test]
fn max_bytes_lets_only_the_first_partition_exceed_it() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 2);
    let b = batch(1, &[&[1u8; 200]]);
    for p in 0..2 {
        let r = produce_at(&mut c, 9, -1, "t", p, Some(b.clone()));
        assert_eq!(r.error_code, 0);
    }
    // A request limit below two batches: partition 0's batch is returned (the first
    // partition may exceed the limit), partition 1's would pass the limit and is not.
    let req = fetch_request("t", &[(0, 0, 1 << 20), (1, 0, 1 << 20)], 0, 0)
        .with_max_bytes(b.len() as i32 + 10);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
    let sizes: Vec<usize> = r.responses[0]
        .partitions
        .iter()
        .map(|p| records_of(p).len())
        .collect();
    assert_eq!(sizes, [b.len(), 0]);
    // A request limit of 1: still one batch in all.
    let req = fetch_request("t", &[(0, 0, 1 << 20), (1, 0, 1 << 20)], 0, 0).with_max_bytes(1);
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &req);
    let sizes: Vec<usize> = r.responses[0]
        .partitions
        .iter()
        .map(|p| records_of(p).len())
        .collect();
    assert_eq!(sizes, [b.len(), 0]);
}

#[test]
fn fetch_partitions_max_is_enforced() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let over: Vec<(i32, i64, i32)> = (0..=FETCH_PARTITIONS_MAX as i32)
        .map(|p| (p, 0, 1024))
        .collect();
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &fetch_request("t", &over, 0, 0));
    assert_eq!(r.error_code, code(ResponseError::InvalidRequest));
    // At the limit, each partition is answered (all but partition 0 do not exist).
    let at: Vec<(i32, i64, i32)> = (0..FETCH_PARTITIONS_MAX as i32)
        .map(|p| (p, 0, 1024))
        .collect();
    let r: FetchResponse = c.call(ApiKey::Fetch, 12, &fetch_request("t", &at, 0, 0));
    assert_eq!(r.error_code, 0);
    let ps = &r.responses[0].partitions;
    assert_eq!(ps.len(), FETCH_PARTITIONS_MAX);
    assert_eq!(ps[0].error_code, 0);
    assert!(
        ps[1..]
            .iter()
            .all(|p| p.error_code == code(ResponseError::UnknownTopicOrPartition))
    );
}

#[test]
fn a_fetch_never_waits_longer_than_fetch_wait_ms_max() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    let started = Instant::now();
    let p = fetch(&mut c, "t", 0, i32::MAX, 1, 1024);
    let waited = started.elapsed();
    assert_eq!(p.error_code, 0);
    let max = Duration::from_millis(gearbox_kafka::fetch::FETCH_WAIT_MS_MAX);
    assert!(
        waited >= max - Duration::from_millis(50),
        "answered after {waited:?}"
    );
    assert!(
        waited < max + Duration::from_secs(10),
        "answered after {waited:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// ListOffsets

#[test]
fn list_offsets_earliest_latest_and_by_timestamp() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "t", 1);
    // Offsets 0-1 at 1000-1001, 2 at 2000, 3-4 at 3000-3001.
    produce_ok(&mut c, "t", batch(1_000, &[b"a", b"b"]));
    produce_ok(&mut c, "t", batch(2_000, &[b"c"]));
    produce_ok(&mut c, "t", batch(3_000, &[b"d", b"e"]));
    for version in [1, 4, 6] {
        let cases: &[(i64, i64, i64)] = &[
            (-2, 0, -1),
            (-1, 5, -1),
            (0, 0, 1_000),
            (1_000, 0, 1_000),
            (1_001, 1, 1_001),
            (1_500, 2, 2_000),
            (2_000, 2, 2_000),
            (3_001, 4, 3_001),
            (3_002, -1, -1),
            (i64::MAX, -1, -1),
        ];
        for &(timestamp, offset, ts) in cases {
            let p = list_offsets(&mut c, version, "t", 0, timestamp);
            assert_eq!(p.error_code, 0, "v{version} at {timestamp}");
            assert_eq!(
                (p.offset, p.timestamp),
                (offset, ts),
                "v{version} at {timestamp}"
            );
        }
        let p = list_offsets(&mut c, version, "t", 1, -1);
        assert_eq!(p.error_code, code(ResponseError::UnknownTopicOrPartition));
        let p = list_offsets(&mut c, version, "nope", 0, -1);
        assert_eq!(p.error_code, code(ResponseError::UnknownTopicOrPartition));
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

#[test]
fn metadata_auto_creates_topics_with_the_default_partitions() {
    let mut config = Server::config();
    config.default_partitions = 3;
    let (_dir, server) = start_with(config);
    let mut c = server.client();
    // v4+ asks for it with the flag; when the flag is off nothing is created.
    let r = metadata(&mut c, 12, Some(&["no-auto"]), false);
    assert_eq!(
        r.topics[0].error_code,
        code(ResponseError::UnknownTopicOrPartition)
    );
    let r = metadata(&mut c, 12, Some(&["auto"]), true);
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 3);
    assert_eq!(r.brokers.len(), 1);
    assert_eq!(r.brokers[0].port, i32::from(server.addr.port()));
    // v1 has no flag and creates.
    let r = metadata(&mut c, 1, Some(&["auto-v1"]), false);
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(describe(&mut c, "auto-v1"), (0, 3));
    assert_eq!(
        describe(&mut c, "no-auto").0,
        code(ResponseError::UnknownTopicOrPartition)
    );
}

#[test]
fn metadata_without_auto_creation_reports_unknown_topics() {
    let mut config = Server::config();
    config.auto_create_topics = false;
    let (_dir, server) = start_with(config);
    let mut c = server.client();
    for version in [0, 1, 4, 12] {
        let r = metadata(&mut c, version, Some(&["missing"]), true);
        assert_eq!(
            r.topics[0].error_code,
            code(ResponseError::UnknownTopicOrPartition),
            "v{version}"
        );
    }
    let r = metadata(&mut c, 12, None, true);
    assert!(r.topics.is_empty());
}

#[test]
fn metadata_for_all_topics() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "a", 1);
    create_topic(&mut c, "b", 2);
    let names = |r: &MetadataResponse| {
        let mut v: Vec<(String, usize)> = r
            .topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.partitions.len()))
            .collect();
        v.sort();
        v
    };
    let want = vec![("a".to_string(), 1), ("b".to_string(), 2)];
    // A null list (v1+) and an empty one in v0 mean every topic.
    for version in [1, 9, 12] {
        assert_eq!(
            names(&metadata(&mut c, version, None, false)),
            want,
            "v{version} null"
        );
    }
    assert_eq!(
        names(&metadata(&mut c, 0, Some(&[]), false)),
        want,
        "v0 empty"
    );
    // From v1 on, an empty list means none.
    assert!(metadata(&mut c, 12, Some(&[]), false).topics.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Admin

fn retention_ms(c: &mut Client, topic: &str) -> (i16, Option<String>) {
    let req = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(text(topic))
            .with_configuration_keys(Some(vec![text("retention.ms")])),
    ]);
    let r: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, 4, &req);
    let res = &r.results[0];
    (
        res.error_code,
        res.configs
            .first()
            .and_then(|e| e.value.as_ref().map(|v| v.to_string())),
    )
}

#[test]
fn create_topics_honours_partitions_and_retention_and_refuses_what_it_cannot_do() {
    let (_dir, server) = start();
    let mut c = server.client();
    let with_config = |topic: &str, key: &str, value: &str| {
        creatable(topic, 1).with_configs(vec![
            CreatableTopicConfig::default()
                .with_name(text(key))
                .with_value(Some(text(value))),
        ])
    };
    let r = create_topics(
        &mut c,
        vec![
            with_config("kept", "retention.ms", "60000").with_num_partitions(4),
            creatable("rf3", 1).with_replication_factor(3),
            with_config("odd-config", "segment.jitter.ms", "5"),
            creatable("zero", 0),
            creatable("too-many", gearbox_log::PARTITIONS_PER_TOPIC_MAX as i32 + 1),
        ],
        false,
    );
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(
        codes,
        [
            0,
            code(ResponseError::InvalidReplicationFactor),
            code(ResponseError::InvalidConfig),
            code(ResponseError::InvalidPartitions),
            code(ResponseError::InvalidPartitions),
        ],
        "{:?}",
        r.topics
            .iter()
            .map(|t| &t.error_message)
            .collect::<Vec<_>>()
    );
    assert_eq!(codes[1..3], [38, 40]);
    assert_eq!(
        (r.topics[0].num_partitions, r.topics[0].replication_factor),
        (4, 1)
    );
    assert!(
        r.topics[1]
            .error_message
            .as_ref()
            .unwrap()
            .contains("replication factor 3")
    );
    assert!(
        r.topics[2]
            .error_message
            .as_ref()
            .unwrap()
            .contains("segment.jitter.ms")
    );
    assert_eq!(describe(&mut c, "kept"), (0, 4));
    assert_eq!(retention_ms(&mut c, "kept"), (0, Some("60000".to_string())));
    for refused in ["rf3", "odd-config", "zero", "too-many"] {
        assert_eq!(
            describe(&mut c, refused).0,
            code(ResponseError::UnknownTopicOrPartition),
            "{refused}"
        );
    }
    // Existing.
    let r = create_topics(&mut c, vec![creatable("kept", 1)], false);
    assert_eq!(
        r.topics[0].error_code,
        code(ResponseError::TopicAlreadyExists)
    );
    assert_eq!(describe(&mut c, "kept"), (0, 4));
    // Validate only: answers as if, creates nothing.
    let r = create_topics(
        &mut c,
        vec![creatable("dry", 2), creatable("kept", 1)],
        true,
    );
    let codes: Vec<i16> = r.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, code(ResponseError::TopicAlreadyExists)]);
    assert_eq!(
        describe(&mut c, "dry").0,
        code(ResponseError::UnknownTopicOrPartition)
    );
    // Default partitions (-1).
    let r = create_topics(&mut c, vec![creatable("default", -1)], false);
    assert_eq!((r.topics[0].error_code, r.topics[0].num_partitions), (0, 1));
    // A topic's retention unknown: an error for that resource.
    assert_eq!(
        retention_ms(&mut c, "nope").0,
        code(ResponseError::UnknownTopicOrPartition)
    );
}

#[test]
fn delete_topics_removes_them() {
    let (_dir, server) = start();
    let mut c = server.client();
    create_topic(&mut c, "doomed", 2);
    produce_ok(&mut c, "doomed", batch(1, &[b"a"]));
    let req = DeleteTopicsRequest::default()
        .with_topic_names(vec![name("doomed"), name("never")])
        .with_timeout_ms(5_000);
    let r: DeleteTopicsResponse = c.call(ApiKey::DeleteTopics, 5, &req);
    let codes: Vec<i16> = r.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, [0, code(ResponseError::UnknownTopicOrPartition)]);
    assert_eq!(
        describe(&mut c, "doomed").0,
        code(ResponseError::UnknownTopicOrPartition)
    );
    let p = produce(&mut c, "doomed", batch(1, &[b"a"]));
    assert_eq!(p.error_code, code(ResponseError::UnknownTopicOrPartition));
    // It can be created again, empty.
    create_topic(&mut c, "doomed", 1);
    assert_eq!(latest(&mut c, "doomed"), 0);
}

// ---------------------------------------------------------------------------------------------
// Bounds

#[test]
fn connections_over_connections_max_are_closed() {
    let mut config = Server::config();
    config.connections_max = 2;
    let (_dir, server) = start_with(config);
    let mut a = server.client();
    let mut b = server.client();
    a.expect_open();
    b.expect_open();
    let mut third = server.client();
    third.expect_closed();
    a.expect_open();
    // A freed slot is taken again (the server notices the close asynchronously: poll).
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut next = server.client();
        let id = next.send(ApiKey::ApiVersions, 3, &common::api_versions_request());
        if let Some(got) = next.try_recv_id(ApiKey::ApiVersions, 3) {
            assert_eq!(got, id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed connection slot was never reused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzz seeds

/// The committed seeds of the `kafka_request` fuzz target: valid frames (no size prefix).
fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let produce = produce_request(
        -1,
        "t",
        vec![(0, Some(batch(1_700_000_000_000, &[b"seed"]).into()))],
    );
    vec![
        (
            "api-versions-v3",
            encode_request(ApiKey::ApiVersions, 3, 1, &common::api_versions_request()),
        ),
        (
            "metadata-v12",
            encode_request(
                ApiKey::Metadata,
                12,
                2,
                &metadata_request(Some(&["t"]), true),
            ),
        ),
        (
            "produce-v9",
            encode_request(ApiKey::Produce, 9, 3, &produce),
        ),
        (
            "fetch-v12",
            encode_request(
                ApiKey::Fetch,
                12,
                4,
                &fetch_request("t", &[(0, 0, 1 << 20)], 0, 0),
            ),
        ),
    ]
}

/// The seeds on disk are the frames above (run with `UPDATE_FUZZ_SEEDS=1` to rewrite them),
/// and each is answered with error 0 when sent in order to a fresh listener.
#[test]
fn fuzz_seeds_are_current_and_answered() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/kafka_request");
    let update = std::env::var_os("UPDATE_FUZZ_SEEDS").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let (_tmp, server) = start();
    let mut c = server.client();
    for (file, frame) in fuzz_seeds() {
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &frame).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            committed, frame,
            "{file} is stale; rerun with UPDATE_FUZZ_SEEDS=1"
        );
        c.send_frame(&frame);
        let answer = c.recv_frame();
        assert_eq!(answer[..4], frame[4..8], "{file}: correlation id");
    }
    // The produce and the fetch did what they say.
    let p = fetch(&mut c, "t", 0, 0, 0, 1 << 20);
    assert_eq!(
        gearbox_log::batch::decode(&records_of(&p)).unwrap().len(),
        1
    );
}
