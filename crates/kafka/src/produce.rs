//! Produce and InitProducerId.
//!
//! A partition's records must be exactly one uncompressed RecordBatch v2 (Kafka requires one
//! batch per partition for v2 too). It is checked whole (framing, CRC, record decoding, sizes,
//! producer sequence) and then stored as it came: the producer's id, epoch, sequence and
//! timestamps are kept, the base offset is assigned. Every `acks` value answers after the
//! fsync.

use crate::Kafka;
use crate::producers::{Refusal, Sequenced};
use bytes::Bytes;
use gearbox_core::broker::TOPIC_BATCH_BYTES_MAX;
use gearbox_log::batch::{self, BatchHeader};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
    produce_response::{BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse},
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// Most partitions one Produce request may write; more are refused with INVALID_REQUEST.
pub const PRODUCE_PARTITIONS_MAX: usize = 10_000;

/// Checks a partition's records: one whole, non-transactional v2 batch. Returns the batch to
/// store (a compressed one decompressed, see [`crate::compression`]) and its producer fields.
///
/// # Errors
/// A [`Refusal`] with the Kafka error code and a message naming the byte or field.
pub fn check_batch(records: Option<&Bytes>) -> Result<(Bytes, Sequenced), Refusal> {
    let refuse = |e: ResponseError, m: String| Refusal {
        code: e.code(),
        message: m,
    };
    let Some(bytes) = records.filter(|b| !b.is_empty()) else {
        return Err(refuse(ResponseError::InvalidRecord, "no records".into()));
    };
    if bytes.len() > TOPIC_BATCH_BYTES_MAX as usize {
        return Err(refuse(
            ResponseError::MessageTooLarge,
            format!(
                "the batch is {} bytes; the limit is {TOPIC_BATCH_BYTES_MAX}",
                bytes.len()
            ),
        ));
    }
    let header = BatchHeader::parse(bytes)
        .map_err(|e| refuse(ResponseError::CorruptMessage, e.to_string()))?;
    if header.total_len() < bytes.len() {
        return Err(refuse(
            ResponseError::InvalidRecord,
            format!(
                "{} bytes follow the first batch; v2 produce requests carry one batch per partition",
                bytes.len() - header.total_len()
            ),
        ));
    }
    batch::verify(bytes).map_err(|e| refuse(ResponseError::CorruptMessage, e.to_string()))?;
    if header.is_transactional() || header.is_control() {
        return Err(refuse(
            ResponseError::InvalidRecord,
            "transactional and control batches are not supported".into(),
        ));
    }
    if header.producer_id >= 0 && header.base_sequence < 0 {
        return Err(refuse(
            ResponseError::InvalidRecord,
            format!(
                "producer {} sent base sequence {}",
                header.producer_id, header.base_sequence
            ),
        ));
    }
    let stored = match header.compression() {
        0 => bytes.clone(),
        codec => Bytes::from(crate::compression::decompress(bytes, codec)?),
    };
    Ok((stored, Sequenced::of(&header)))
}

/// Produce. `None` for `acks` 0 (no answer is sent).
pub async fn produce(
    kafka: &Arc<Kafka>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let mut work: Vec<(usize, i32, String, Option<Bytes>)> = Vec::new();
    let mut topics: Vec<TopicProduceResponse> = Vec::new();
    for (t, topic) in req.topic_data.into_iter().enumerate() {
        let name = topic.name.0.as_str().to_string();
        for p in topic.partition_data {
            work.push((t, p.index, name.clone(), p.records));
        }
        topics.push(TopicProduceResponse::default().with_name(topic.name));
    }
    let refuse_all = if !matches!(acks, -1..=1) {
        Some(Refusal {
            code: ResponseError::InvalidRequiredAcks.code(),
            message: format!("acks {acks} is not -1, 0 or 1"),
        })
    } else if req.transactional_id.is_some() {
        Some(Refusal {
            code: ResponseError::TransactionalIdAuthorizationFailed.code(),
            message: "transactions are not supported".into(),
        })
    } else if work.len() > PRODUCE_PARTITIONS_MAX {
        Some(Refusal {
            code: ResponseError::InvalidRequest.code(),
            message: format!(
                "{} partitions in one request; the limit is {PRODUCE_PARTITIONS_MAX}",
                work.len()
            ),
        })
    } else {
        None
    };
    // Each partition's append waits for its own fsync: run them side by side.
    let mut pending = Vec::with_capacity(work.len());
    for (t, index, name, records) in work {
        let kafka = kafka.clone();
        let refuse_all = refuse_all.clone();
        pending.push((
            t,
            index,
            tokio::task::spawn_blocking(move || {
                if let Some(r) = refuse_all {
                    return Err(r);
                }
                let (bytes, seq) = check_batch(records.as_ref())?;
                let partition = u32::try_from(index).map_err(|_| Refusal {
                    code: ResponseError::UnknownTopicOrPartition.code(),
                    message: format!("partition {index}"),
                })?;
                let placed = kafka.producers.append(&name, partition, seq, &bytes)?;
                let start = kafka
                    .broker
                    .partition_bounds(&name)
                    .ok()
                    .and_then(|b| b.get(partition as usize).map(|&(s, _)| s as i64))
                    .unwrap_or(-1);
                Ok((placed, start))
            }),
        ));
    }
    for (t, index, task) in pending {
        let outcome = task.await.unwrap_or_else(|e| {
            Err(Refusal {
                code: ResponseError::UnknownServerError.code(),
                message: e.to_string(),
            })
        });
        let mut r = PartitionProduceResponse::default()
            .with_index(index)
            .with_log_append_time_ms(-1);
        match outcome {
            Ok((placed, start)) => {
                r.base_offset = placed.base_offset as i64;
                if version >= 5 {
                    r.log_start_offset = start;
                }
            }
            Err(refusal) => {
                tracing::debug!(partition = index, code = refusal.code, message = %refusal.message, "kafka produce refused");
                kafka.stats.produce_error(refusal.code);
                r.error_code = refusal.code;
                r.base_offset = -1;
                if version >= 8 {
                    r.error_message = Some(StrBytes::from_string(refusal.message.clone()));
                    if refusal.code == ResponseError::InvalidRecord.code() {
                        r.record_errors = vec![
                            BatchIndexAndErrorMessage::default()
                                .with_batch_index(0)
                                .with_batch_index_error_message(Some(StrBytes::from_string(
                                    refusal.message,
                                ))),
                        ];
                    }
                }
            }
        }
        topics[t].partition_responses.push(r);
    }
    if acks == 0 {
        return None;
    }
    Some(ProduceResponse::default().with_responses(topics))
}

/// InitProducerId: a new producer id (epoch 0) for an idempotent producer; an epoch bump when
/// the producer names its id and epoch (v3+, KIP-360). Transactional ids are refused.
pub async fn init_producer_id(
    kafka: &Arc<Kafka>,
    req: &InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    let refused = |e: ResponseError| {
        InitProducerIdResponse::default()
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.is_some() {
        return refused(ResponseError::TransactionalIdAuthorizationFailed);
    }
    if version >= 3 && req.producer_id.0 >= 0 && req.producer_epoch >= 0 {
        let (id, epoch) = (req.producer_id.0, req.producer_epoch);
        if epoch < i16::MAX - 1 {
            kafka.producers.bump(id, epoch + 1);
            return InitProducerIdResponse::default()
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch + 1);
        }
    }
    let k = kafka.clone();
    match tokio::task::spawn_blocking(move || k.producers.allocate()).await {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        _ => refused(ResponseError::CoordinatorNotAvailable),
    }
}
