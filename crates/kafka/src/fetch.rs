//! Fetch: stored batches served as they are on disk, with `max_wait_ms`/`min_bytes` long
//! polling woken by publishes. The first batch of a partition may start before the fetch
//! offset (clients skip those records, as with Kafka).
//!
//! Fetch sessions (KIP-227) are not kept: every answer has session id 0, which tells clients
//! to send full requests.

use crate::Kafka;
use crate::errors::code_for;
use bytes::{Bytes, BytesMut};
use gearbox_core::broker::BrokerError;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, TopicName,
    fetch_response::{FetchableTopicResponse, PartitionData},
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most bytes one Fetch answer carries, whatever the request asks (a single batch larger than
/// what is left is still sent whole when it is the answer's first, as Kafka does).
pub const FETCH_BYTES_MAX: usize = 64 << 20;
/// Longest a fetch waits for `min_bytes`.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Most partitions one Fetch may ask for.
pub const FETCH_PARTITIONS_MAX: usize = 10_000;

struct Wanted {
    topic: usize,
    partition: i32,
    offset: i64,
    max_bytes: i32,
}

/// Fetch.
pub async fn fetch(kafka: &Arc<Kafka>, req: FetchRequest, version: i16) -> FetchResponse {
    let started = Instant::now();
    let wait = Duration::from_millis(
        u64::try_from(req.max_wait_ms)
            .unwrap_or(0)
            .min(FETCH_WAIT_MS_MAX),
    );
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(req.max_bytes)
        .unwrap_or(0)
        .min(FETCH_BYTES_MAX);
    let read_committed = req.isolation_level == 1;
    let names: Vec<TopicName> = req.topics.iter().map(|t| t.topic.clone()).collect();
    let wanted: Vec<Wanted> = req
        .topics
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            t.partitions.iter().map(move |p| Wanted {
                topic: i,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
            })
        })
        .collect();
    if wanted.len() > FETCH_PARTITIONS_MAX {
        return FetchResponse::default().with_error_code(ResponseError::InvalidRequest.code());
    }
    let notifies: Vec<Arc<Notify>> = names
        .iter()
        .filter_map(|n| kafka.broker.watch(n.0.as_str()).ok())
        .collect();
    let wanted = Arc::new(wanted);
    let names = Arc::new(names);
    loop {
        // Registered before the read, so a publish between the read and the wait still wakes.
        let mut waits: Vec<_> = notifies.iter().map(|n| Box::pin(n.notified())).collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        let (k, w, n) = (kafka.clone(), wanted.clone(), names.clone());
        let read = tokio::task::spawn_blocking(move || {
            read_all(&k, &w, &n, max_bytes, read_committed, version)
        })
        .await;
        let (topics, bytes, errors) = match read {
            Ok(r) => r,
            Err(_) => {
                return FetchResponse::default()
                    .with_error_code(ResponseError::UnknownServerError.code());
            }
        };
        let left = wait.saturating_sub(started.elapsed());
        // `min_bytes` 0 answers at once, as Kafka does; otherwise wait for that much.
        let enough = min_bytes == 0 || bytes >= min_bytes;
        if enough || errors || left.is_zero() || waits.is_empty() {
            return FetchResponse::default().with_responses(topics);
        }
        tokio::select! {
            _ = futures_util::future::select_all(waits) => {}
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// Reads every wanted partition; returns the answer, its record bytes, and whether any
/// partition answered with an error (which answers at once).
fn read_all(
    kafka: &Kafka,
    wanted: &[Wanted],
    names: &[TopicName],
    max_bytes: usize,
    read_committed: bool,
    version: i16,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut topics: Vec<FetchableTopicResponse> = names
        .iter()
        .map(|n| FetchableTopicResponse::default().with_topic(n.clone()))
        .collect();
    let mut total = 0usize;
    let mut errors = false;
    for w in wanted {
        let name = names[w.topic].0.as_str();
        let mut out = PartitionData::default()
            .with_partition_index(w.partition)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_aborted_transactions(read_committed.then(Vec::new));
        if version >= 11 {
            out.preferred_read_replica = BrokerId(-1);
        }
        let budget = max_bytes.saturating_sub(total);
        let partition_max = usize::try_from(w.max_bytes).unwrap_or(0).min(budget);
        match read_partition(
            kafka,
            name,
            w.partition,
            w.offset,
            partition_max,
            total == 0,
        ) {
            Ok((hw, start, records)) => {
                out.high_watermark = hw;
                out.last_stable_offset = hw;
                out.log_start_offset = start;
                total += records.as_ref().map_or(0, Bytes::len);
                out.records = records;
            }
            Err(code) => {
                errors = true;
                out.error_code = code;
                out.records = Some(Bytes::new());
            }
        }
        topics[w.topic].partitions.push(out);
    }
    (topics, total, errors)
}

fn read_partition(
    kafka: &Kafka,
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    first: bool,
) -> Result<(i64, i64, Option<Bytes>), i16> {
    let p = u32::try_from(partition).map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
    let bounds = kafka
        .broker
        .partition_bounds(topic)
        .map_err(|e| code_for(&e))?;
    let &(start, end) = bounds
        .get(p as usize)
        .ok_or(ResponseError::UnknownTopicOrPartition.code())?;
    let offset = u64::try_from(offset).map_err(|_| ResponseError::OffsetOutOfRange.code())?;
    if offset < start || offset > end {
        return Err(ResponseError::OffsetOutOfRange.code());
    }
    if offset == end || (max_bytes == 0 && !first) {
        return Ok((end as i64, start as i64, Some(Bytes::new())));
    }
    let read = match kafka
        .broker
        .read_batches(topic, p, offset, max_bytes.max(1))
    {
        Ok(r) => r,
        Err(BrokerError::OffsetOutOfRange { .. }) => {
            return Err(ResponseError::OffsetOutOfRange.code());
        }
        Err(e) => return Err(code_for(&e)),
    };
    let mut buf = BytesMut::with_capacity(read.batches.iter().map(|b| b.bytes.len()).sum());
    for b in &read.batches {
        buf.extend_from_slice(&b.bytes);
    }
    Ok((
        read.high_watermark as i64,
        read.log_start_offset as i64,
        Some(buf.freeze()),
    ))
}
