//! `GET /metrics`: OpenMetrics text, encoded by `prometheus-client` from two collectors read at
//! scrape time: every pipeline's ([`gearbox_connect::metrics::Collector`]) and the broker's
//! ([`BrokerCollector`]: topics, subscriptions, DLQs, event ages at delivery, lineage).
//!
//! Names (product.md §6): `gearbox_topic_end_offset{topic,partition}`,
//! `gearbox_topic_start_offset{topic,partition}`, `gearbox_subscription_lag_events{topic,
//! subscription}`, `gearbox_subscription_in_flight{topic,subscription}`,
//! `gearbox_dlq_depth{topic}`, `gearbox_event_age_seconds{topic,subscription}` (histogram),
//! `gearbox_lineage_hops_total{outcome}` and `gearbox_lineage_bytes`.

use gearbox_connect::metrics::{Labels, Number, family};
use gearbox_core::broker::Broker;
use gearbox_core::broker::DLQ_SUFFIX;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use std::sync::Arc;

/// The broker's metrics, read at scrape time.
#[derive(Debug)]
pub struct BrokerCollector(pub Arc<Broker>);

impl prometheus_client::collector::Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let broker = &self.0;
        let e = &mut encoder;
        let topics = broker.topics();
        let offsets = |pick: fn(&gearbox_core::broker::PartitionOffsets) -> u64| {
            topics
                .iter()
                .flat_map(move |t| {
                    t.offsets.iter().map(move |o| {
                        let labels: Labels = vec![
                            ("topic", t.name.to_string()),
                            ("partition", o.partition.to_string()),
                        ];
                        (
                            labels,
                            Number::Int(i64::try_from(pick(o)).unwrap_or(i64::MAX)),
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            e,
            "gearbox_topic_end_offset",
            "One past the last offset of each partition (its high watermark).",
            offsets(|o| o.high_watermark),
        )?;
        family(
            e,
            "gearbox_topic_start_offset",
            "The first readable offset of each partition.",
            offsets(|o| o.log_start_offset),
        )?;
        let mut lag = Vec::new();
        let mut in_flight = Vec::new();
        let mut dlq = Vec::new();
        for t in topics.iter().filter(|t| !t.name.ends_with(DLQ_SUFFIX)) {
            for s in broker.subscriptions(&t.name).unwrap_or_default() {
                let labels: Labels = vec![
                    ("topic", t.name.to_string()),
                    ("subscription", s.name.to_string()),
                ];
                lag.push((
                    labels.clone(),
                    Number::Int(i64::try_from(s.lag).unwrap_or(i64::MAX)),
                ));
                in_flight.push((
                    labels,
                    Number::Int(i64::try_from(s.in_flight).unwrap_or(i64::MAX)),
                ));
            }
            if let Ok(depth) = broker.dlq_depth(&t.name) {
                let labels: Labels = vec![("topic", t.name.to_string())];
                dlq.push((
                    labels,
                    Number::Int(i64::try_from(depth).unwrap_or(i64::MAX)),
                ));
            }
        }
        family(
            e,
            "gearbox_subscription_lag_events",
            "Events of the topic a subscription has not finished (queue) or committed (cursor).",
            lag,
        )?;
        family(
            e,
            "gearbox_subscription_in_flight",
            "Events delivered and not yet acked or nacked.",
            in_flight,
        )?;
        family(
            e,
            "gearbox_dlq_depth",
            "Events in the topic's dead-letter topic not yet redriven.",
            dlq,
        )?;
        let ages = broker.event_ages().series();
        family(
            e,
            "gearbox_event_age_seconds",
            "Age of events when delivered: now minus the event's time.",
            ages.into_iter().map(|((topic, sub), h)| {
                let labels: Labels = vec![
                    ("topic", topic.to_string()),
                    ("subscription", sub.to_string()),
                ];
                (labels, h)
            }),
        )?;
        let stats = broker.lineage().stats();
        if broker.lineage().enabled() {
            family(
                e,
                "gearbox_lineage_hops",
                "Lineage hops by outcome: written, dropped (queue full), failed (append error).",
                [
                    ("written", stats.written),
                    ("dropped", stats.dropped),
                    ("failed", stats.failed),
                ]
                .map(|(outcome, n)| (vec![("outcome", outcome.to_string())], ConstCounter::new(n))),
            )?;
            family(
                e,
                "gearbox_lineage_bytes",
                "Bytes of lineage kept (bounded by the lineage retention).",
                [(
                    Labels::new(),
                    Number::Int(i64::try_from(stats.bytes).unwrap_or(i64::MAX)),
                )],
            )?;
        }
        Ok(())
    }
}
