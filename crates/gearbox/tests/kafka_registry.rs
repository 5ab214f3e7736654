//! Confluent's serializers against Gearbox: confluent-kafka's `AvroSerializer` registers its
//! schema in Gearbox's registry (`/registry`) and writes records in the Confluent wire format
//! through `gearbox serve --kafka` to a topic whose schemas are enforced; an
//! `AvroDeserializer` reads them back; values that are not datums of their schema, plain values
//! and unknown schema ids are refused with INVALID_RECORD and nothing of them is stored
//! (`tests/python/kafka_schema_serializers.py`).

mod support;

use support::{Server, free_port};

const CHECKS: &[&str] = &[
    "AvroSerializer records are acknowledged",
    "AvroDeserializer reads every record back equal",
    "a framed value that is not a datum of its schema is INVALID_RECORD",
    "a plain value on an enforced topic is INVALID_RECORD",
    "an unregistered schema id is INVALID_RECORD",
    "nothing refused was stored",
];

#[test]
fn confluent_serializers_write_framed_values_that_the_registry_checks() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("127.0.0.1:{}", free_port());
    let s = Server::start_with(&dir.path().join("data"), free_port(), &["--kafka", &kafka]);
    let registry = format!("{}/registry", s.url);
    let stdout = support::run_python(
        "kafka_schema_serializers.py",
        &[&kafka, &registry, &s.url, "stock"],
        &s,
    );
    let ok: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ok "))
        .filter(|l| !l.starts_with("the serializer registered"))
        .collect();
    assert_eq!(ok, CHECKS, "stdout:\n{stdout}");
    assert!(
        stdout.contains("ok the serializer registered stock-value"),
        "{stdout}"
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
    // The three refusals are counted by their Kafka error on /metrics.
    let metrics = s.metrics();
    assert!(
        metrics.contains("gearbox_kafka_produce_refused_total{error=\"InvalidRecord\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gearbox_kafka_requests_total{api=\"InitProducerId\"} 1\n"),
        "{metrics}"
    );
}
