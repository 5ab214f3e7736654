//! Metadata, FindCoordinator and ListOffsets: this node leads every partition and coordinates
//! every group.

use crate::errors::code_for;
use crate::{Kafka, NODE_ID};
use gearbox_core::broker::{BrokerError, TopicInfo};
use gearbox_log::Retention;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, FindCoordinatorResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, TopicName,
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// ListOffsets timestamp for the end of the partition.
pub const LATEST: i64 = -1;
/// ListOffsets timestamp for the start of the partition.
pub const EARLIEST: i64 = -2;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// Metadata: the one broker, and the topics asked for (every topic when the list is null, or
/// empty in v0), creating missing ones when auto-creation is on and the request allows it.
pub async fn metadata(kafka: &Arc<Kafka>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let broker = kafka.broker.clone();
    let requested: Option<Vec<String>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(
            t.into_iter()
                .filter_map(|t| t.name.map(|n| n.0.as_str().to_string()))
                .collect(),
        ),
    };
    // Before v4 there is no flag, and Kafka then creates.
    let allow = kafka.config.auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let partitions = kafka.config.default_partitions;
    let topics =
        tokio::task::spawn_blocking(move || -> Vec<(String, Result<TopicInfo, BrokerError>)> {
            match requested {
            None => broker
                .topics()
                .into_iter()
                .map(|t| (t.name.clone(), Ok(t)))
                .collect(),
            Some(names) => names
                .into_iter()
                .map(|name| {
                    let mut info = broker.describe_topic(&name);
                    if allow && matches!(info, Err(BrokerError::TopicNotFound(_))) {
                        info = match broker.create_topic(&name, partitions, Retention::FOREVER) {
                            Err(BrokerError::TopicExists(_)) => broker.describe_topic(&name),
                            other => other,
                        };
                        if info.is_ok() {
                            tracing::info!(topic = %name, partitions, "kafka: auto-created topic");
                        }
                    }
                    (name, info)
                })
                .collect(),
        }
        })
        .await
        .unwrap_or_default();
    let mut response = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(NODE_ID))
                .with_host(str_bytes(&kafka.config.advertised_host))
                .with_port(i32::from(kafka.config.advertised_port)),
        ])
        .with_topics(
            topics
                .into_iter()
                .map(|(name, info)| topic_metadata(&name, info))
                .collect(),
        );
    if version >= 1 {
        response.controller_id = BrokerId(NODE_ID);
    }
    if version >= 2 {
        response.cluster_id = Some(str_bytes(&kafka.cluster_id));
    }
    if version >= 8 {
        response.cluster_authorized_operations = i32::MIN;
    }
    response
}

fn topic_metadata(name: &str, info: Result<TopicInfo, BrokerError>) -> MetadataResponseTopic {
    let t = MetadataResponseTopic::default().with_name(Some(topic_name(name)));
    match info {
        Err(e) => t.with_error_code(code_for(&e)),
        Ok(info) => t.with_partitions(
            (0..info.partitions as i32)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_leader_id(BrokerId(NODE_ID))
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![BrokerId(NODE_ID)])
                        .with_isr_nodes(vec![BrokerId(NODE_ID)])
                })
                .collect(),
        ),
    }
}

/// FindCoordinator: this node, for groups (key type 0); transactions (key type 1) are not
/// supported.
#[must_use]
pub fn find_coordinator(
    kafka: &Kafka,
    req: &FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = str_bytes(&kafka.config.advertised_host);
    let port = i32::from(kafka.config.advertised_port);
    if req.key_type != 0 {
        let mut r = FindCoordinatorResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1);
        if version >= 1 {
            r.error_message = Some(str_bytes("transactions are not supported"));
        }
        return r;
    }
    FindCoordinatorResponse::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(host)
        .with_port(port)
}

/// ListOffsets: earliest (-2), latest (-1), or the first offset at or after a timestamp (with
/// that record's timestamp; -1 and -1 when every record is older).
pub async fn list_offsets(
    kafka: &Arc<Kafka>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let broker = kafka.broker.clone();
    let topics = tokio::task::spawn_blocking(move || {
        req.topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.as_str().to_string();
                let bounds = broker.partition_bounds(&name);
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let out = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index);
                        let answer = match &bounds {
                            Err(e) => Err(code_for(e)),
                            Ok(b) => match usize::try_from(p.partition_index)
                                .ok()
                                .and_then(|i| b.get(i))
                            {
                                None => Err(ResponseError::UnknownTopicOrPartition.code()),
                                Some(&(start, end)) => lookup(
                                    &broker,
                                    &name,
                                    p.partition_index as u32,
                                    p.timestamp,
                                    start,
                                    end,
                                ),
                            },
                        };
                        match answer {
                            Ok((offset, timestamp)) => out
                                .with_offset(offset)
                                .with_timestamp(timestamp)
                                .with_leader_epoch(if version >= 4 { 0 } else { -1 }),
                            Err(code) => {
                                out.with_error_code(code).with_offset(-1).with_timestamp(-1)
                            }
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    ListOffsetsResponse::default().with_topics(topics)
}

fn lookup(
    broker: &gearbox_core::broker::Broker,
    topic: &str,
    partition: u32,
    timestamp: i64,
    start: u64,
    end: u64,
) -> Result<(i64, i64), i16> {
    match timestamp {
        LATEST => Ok((end as i64, -1)),
        EARLIEST => Ok((start as i64, -1)),
        t if t < 0 => Err(ResponseError::InvalidRequest.code()),
        t => {
            let offset = broker
                .offset_for_time(topic, partition, t)
                .map_err(|e| code_for(&e))?;
            if offset >= end {
                return Ok((-1, -1));
            }
            // The record's own timestamp, as Kafka answers.
            let found = broker
                .read_batches(topic, partition, offset, 1)
                .map_err(|e| code_for(&e))?
                .batches
                .into_iter()
                .flat_map(|b| gearbox_log::batch::decode(&b.bytes).unwrap_or_default())
                .find(|r| r.offset as u64 == offset)
                .map_or(t, |r| r.timestamp);
            Ok((offset as i64, found))
        }
    }
}
