//! The `gearbox-log` target: the embedded log in this process, without HTTP.
//!
//! - **Ingest** appends to [`Partition`]s directly, with `SyncMode::Always`: every append returns
//!   only once an `fdatasync` covers it, and appenders that arrive during a sync share the next
//!   one (group commit). Each producer appends to one partition (producer `i` to partition
//!   `i % partitions`), the way a Kafka producer batches per partition. Each batch is built anew
//!   from CloudEvents with [`CloudEvent::to_record`], so the records are byte for byte what the
//!   server stores for the same events, and encoding them is part of the cost.
//! - **Produce-to-consume** goes through the in-process [`Broker`] (the same log with topics,
//!   dedup and subscriptions): the producer publishes, one consumer long-polls a cursor
//!   subscription ([`long_poll`]) and commits after each poll, as the HTTP consumer does.

use super::load::{self, E2e, Ingest, Producer, Workload};
use super::{Scratch, hist::Histogram};
use anyhow::Context as _;
use gearbox_connect::backbone::long_poll;
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::{Mode, Settings};
use gearbox_log::batch::BatchBuilder;
use gearbox_log::config::BATCH_BYTES_MAX_DEFAULT;
use gearbox_log::io::{Clock as _, OsStorage, SystemClock};
use gearbox_log::{Partition, PartitionConfig, Retention, SyncMode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The CloudEvent the suite sends as event `seq` (HTTP sends the same attributes as JSON).
pub fn event(w: &Workload, seq: u64, data: &str, sent_ns: Option<u64>) -> CloudEvent {
    let mut extensions = BTreeMap::new();
    extensions.insert("partitionkey".to_string(), w.key(seq));
    if let Some(ns) = sent_ns {
        extensions.insert("sentns".to_string(), ns.to_string());
    }
    CloudEvent {
        id: seq.to_string(),
        source: "/bench".into(),
        ty: "bench.event".into(),
        specversion: "1.0".into(),
        datacontenttype: Some("text/plain".into()),
        dataschema: None,
        subject: None,
        time: None,
        extensions,
        data: Some(data.as_bytes().to_vec()),
    }
}

/// Durable appends of `w.events` events to `w.partitions` partitions under `scratch`.
///
/// # Errors
/// A partition that cannot be created, or a failed append.
pub fn ingest(w: &Workload, scratch: &Scratch) -> anyhow::Result<Ingest> {
    let mut config = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
    // A batch of `batch` events with their headers; the default limit is 1 MiB.
    let estimate = w.batch * (w.event_bytes + 256);
    config.batch_bytes_max = BATCH_BYTES_MAX_DEFAULT.max(u32::try_from(estimate)?);
    let partitions = (0..w.partitions)
        .map(|p| {
            let dir = scratch.path().join(format!("log/{p}"));
            Partition::create(
                Arc::new(OsStorage),
                Arc::new(SystemClock),
                &dir,
                config.clone(),
            )
            .with_context(|| format!("creating partition {}", dir.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = w.data();
    let written = AtomicU64::new(0);
    let producers: Vec<Producer<'_>> = (0..w.concurrency)
        .map(|i| {
            let (partition, data, written) = (&partitions[i % partitions.len()], &data, &written);
            Box::new(move |first: u64, n: usize| {
                let now = SystemClock.now_ms();
                let mut builder = BatchBuilder::new();
                for seq in first..first + n as u64 {
                    builder.push(event(w, seq, data, None).to_record(now));
                }
                let bytes = builder.build()?;
                partition.append(&bytes)?;
                written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }) as Producer<'_>
        })
        .collect();
    let mut out = load::drive(w, producers)?;
    out.bytes_written = Some(written.load(Ordering::Relaxed));
    for p in &partitions {
        p.close().context("closing a partition")?;
    }
    Ok(out)
}

/// Produce-to-consume through the in-process broker, under `scratch`.
///
/// # Errors
/// A broker that cannot open, or a failed publish, poll or commit.
pub fn e2e(w: &Workload, scratch: &Scratch) -> anyhow::Result<E2e> {
    let broker = Arc::new(Broker::open(
        &scratch.path().join("broker"),
        BrokerConfig::durable(),
    )?);
    let (topic, sub) = ("latency", "bench");
    broker.create_topic(topic, w.partitions, Retention::FOREVER)?;
    broker.put_subscription(topic, sub, Settings::defaults(Mode::Cursor))?;
    let data = w.data();
    let outcome = load::produce_consume(
        w,
        |base, finish| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let (mut received, mut hist) = (0u64, Histogram::new());
            while !finish.consumer_may_stop(received) {
                let deliveries = rt.block_on(long_poll(&broker, topic, sub, 1000, 100, None))?;
                let now = load::nanos_since(base);
                let mut next: BTreeMap<u32, u64> = BTreeMap::new();
                for d in &deliveries {
                    let sent: u64 = d.stored.event.extensions["sentns"].parse()?;
                    hist.record_ns(now.saturating_sub(sent));
                    received += 1;
                    next.insert(d.stored.partition, d.stored.offset + 1);
                }
                if !next.is_empty() {
                    let offsets: Vec<(u32, u64)> = next.into_iter().collect();
                    broker.commit(topic, sub, &offsets)?;
                }
            }
            Ok((received, hist))
        },
        |first, n, sent_ns| {
            let events: Vec<CloudEvent> = (first..first + n as u64)
                .map(|seq| event(w, seq, &data, Some(sent_ns)))
                .collect();
            broker.publish(topic, &events)?;
            Ok(())
        },
    );
    broker.close()?;
    outcome
}
