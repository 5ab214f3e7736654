//! The Kafka listener's counters on `/metrics`: `gearbox_kafka_requests_total{api}`,
//! `gearbox_kafka_connections`, `gearbox_kafka_connections_refused_total`,
//! `gearbox_kafka_connections_closed_bad_request_total` and
//! `gearbox_kafka_produce_refused_total{error}` (partitions of Produce requests refused, by
//! Kafka error name).

use gearbox_connect::metrics::{Labels, Number, family};
use gearbox_kafka::Kafka;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use std::sync::Arc;

/// Reads the listener's counters at scrape time.
#[derive(Debug)]
pub struct KafkaCollector(pub Arc<Kafka>);

impl prometheus_client::collector::Collector for KafkaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.stats().snapshot();
        let e = &mut encoder;
        let none = || -> Labels { Vec::new() };
        family(
            e,
            "gearbox_kafka_requests",
            "Kafka protocol requests received, by API.",
            s.requests
                .iter()
                .map(|(api, n)| (vec![("api", api.clone())], ConstCounter::new(*n))),
        )?;
        family(
            e,
            "gearbox_kafka_connections",
            "Kafka client connections open.",
            [(none(), Number::Int(s.connections))],
        )?;
        family(
            e,
            "gearbox_kafka_connections_refused",
            "Kafka connections closed at once because the connection limit was reached.",
            [(none(), ConstCounter::new(s.refused_connections))],
        )?;
        family(
            e,
            "gearbox_kafka_connections_closed_bad_request",
            "Kafka connections closed because of a request that cannot be answered (bad size, unknown API or version, undecodable).",
            [(none(), ConstCounter::new(s.closed_bad_request))],
        )?;
        family(
            e,
            "gearbox_kafka_produce_refused",
            "Partitions of Kafka Produce requests refused, by Kafka error.",
            s.produce_errors
                .iter()
                .map(|(error, n)| (vec![("error", error.clone())], ConstCounter::new(*n))),
        )
    }
}
