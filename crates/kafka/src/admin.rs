//! CreateTopics, DeleteTopics and DescribeConfigs.

use crate::Kafka;
use crate::errors::code_for;
use gearbox_core::broker::BrokerError;
use gearbox_log::Retention;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeConfigsRequest, DescribeConfigsResponse,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
};
use kafka_protocol::protocol::StrBytes;
use std::sync::Arc;

/// DescribeConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// DescribeConfigs resource type of a broker.
const RESOURCE_BROKER: i8 = 4;

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The retention a topic's configs ask for; unknown or unsupported configs are refused.
fn retention(configs: &[(String, Option<String>)]) -> Result<Retention, String> {
    let mut r = Retention::FOREVER;
    for (name, value) in configs {
        let value = value.as_deref().unwrap_or("");
        let number = || -> Result<Option<u64>, String> {
            match value.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(n) if n >= 0 => Ok(Some(n as u64)),
                _ => Err(format!(
                    "config {name}: {value:?} is not a number of at least -1"
                )),
            }
        };
        match name.as_str() {
            "retention.ms" => r.ms_max = number()?,
            "retention.bytes" => r.bytes_max = number()?,
            "cleanup.policy" if value == "delete" => {}
            "cleanup.policy" => {
                return Err(format!(
                    "cleanup.policy {value:?}: only \"delete\" is supported"
                ));
            }
            // Settings that have no meaning on one node, accepted as Kafka's defaults.
            "min.insync.replicas" | "unclean.leader.election.enable" => {}
            other => return Err(format!("config {other} is not supported")),
        }
    }
    Ok(r)
}

/// CreateTopics. `num_partitions` -1 is the default; a replication factor other than -1 or 1
/// is refused (one node); `retention.ms`, `retention.bytes` and `cleanup.policy=delete` are
/// understood.
pub async fn create_topics(
    kafka: &Arc<Kafka>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let k = kafka.clone();
    let default_partitions = kafka.config.default_partitions;
    let results = tokio::task::spawn_blocking(move || {
        req.topics
            .into_iter()
            .map(|t| {
                let name = t.name.0.as_str().to_string();
                let mut out = CreatableTopicResult::default().with_name(t.name.clone());
                let partitions = if t.num_partitions == -1 {
                    Ok(default_partitions)
                } else {
                    // Kafka answers INVALID_PARTITIONS for 0 too; the broker's own bound would
                    // otherwise come back as INVALID_REQUEST.
                    u32::try_from(t.num_partitions)
                        .ok()
                        .filter(|p| (1..=gearbox_log::PARTITIONS_PER_TOPIC_MAX).contains(p))
                        .ok_or_else(|| {
                            (
                                ResponseError::InvalidPartitions,
                                format!(
                                    "num_partitions {} must be -1 (the default) or 1 to {}",
                                    t.num_partitions,
                                    gearbox_log::PARTITIONS_PER_TOPIC_MAX
                                ),
                            )
                        })
                };
                let configs: Vec<(String, Option<String>)> = t
                    .configs
                    .iter()
                    .map(|c| {
                        (
                            c.name.as_str().to_string(),
                            c.value.as_ref().map(|v| v.as_str().to_string()),
                        )
                    })
                    .collect();
                let outcome = partitions
                    .and_then(|p| {
                        if !matches!(t.replication_factor, -1 | 1) {
                            return Err((
                                ResponseError::InvalidReplicationFactor,
                                format!(
                                    "replication factor {} is not available on one node; use 1",
                                    t.replication_factor
                                ),
                            ));
                        }
                        if !t.assignments.is_empty() {
                            return Err((
                                ResponseError::InvalidReplicaAssignment,
                                "manual replica assignments are not supported".into(),
                            ));
                        }
                        let r =
                            retention(&configs).map_err(|m| (ResponseError::InvalidConfig, m))?;
                        Ok((p, r))
                    })
                    .and_then(|(p, r)| {
                        if req.validate_only {
                            return match k.broker.describe_topic(&name) {
                                Ok(_) => Err((
                                    ResponseError::TopicAlreadyExists,
                                    format!("topic {name:?} already exists"),
                                )),
                                Err(_) => Ok(p),
                            };
                        }
                        match k.broker.create_topic(&name, p, r) {
                            Ok(_) => Ok(p),
                            Err(e) => Err((
                                ResponseError::try_from_code(code_for(&e))
                                    .unwrap_or(ResponseError::UnknownServerError),
                                e.to_string(),
                            )),
                        }
                    });
                match outcome {
                    Ok(p) => {
                        // Null on success, as Kafka answers (the codec's default is empty).
                        out.error_message = None;
                        if version >= 5 {
                            out.num_partitions = p as i32;
                            out.replication_factor = 1;
                        }
                    }
                    Err((code, message)) => {
                        out.error_code = code.code();
                        out.error_message = Some(StrBytes::from_string(message));
                        if version >= 5 {
                            out.num_partitions = -1;
                            out.replication_factor = -1;
                        }
                    }
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    CreateTopicsResponse::default().with_topics(results)
}

/// DeleteTopics (by name; with its dead-letter topic and subscriptions, as every delete).
pub async fn delete_topics(
    kafka: &Arc<Kafka>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let k = kafka.clone();
    let responses = tokio::task::spawn_blocking(move || {
        req.topic_names
            .into_iter()
            .map(|name| {
                let outcome = k.broker.delete_topic(name.0.as_str());
                let mut out = DeletableTopicResult::default().with_name(Some(name));
                if let Err(e) = outcome {
                    out.error_code = code_for(&e);
                    if version >= 5 {
                        out.error_message = Some(StrBytes::from_string(e.to_string()));
                    }
                }
                out
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    DeleteTopicsResponse::default().with_responses(responses)
}

/// DescribeConfigs: a topic's retention and limits; a broker's few settings that clients ask
/// about. Read-only.
#[must_use]
pub fn describe_configs(
    kafka: &Kafka,
    req: &DescribeConfigsRequest,
    _version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .iter()
        .map(|res| {
            let out = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let entries: Result<Vec<(&str, String)>, BrokerError> = match res.resource_type {
                RESOURCE_TOPIC => {
                    kafka
                        .broker
                        .describe_topic(res.resource_name.as_str())
                        .map(|t| {
                            let n = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
                            vec![
                                ("cleanup.policy", "delete".to_string()),
                                ("retention.ms", n(t.retention.ms_max)),
                                ("retention.bytes", n(t.retention.bytes_max)),
                                (
                                    "max.message.bytes",
                                    gearbox_core::broker::TOPIC_BATCH_BYTES_MAX.to_string(),
                                ),
                                ("compression.type", "producer".to_string()),
                            ]
                        })
                }
                RESOURCE_BROKER => Ok(vec![
                    (
                        "auto.create.topics.enable",
                        kafka.config.auto_create_topics.to_string(),
                    ),
                    (
                        "num.partitions",
                        kafka.config.default_partitions.to_string(),
                    ),
                    ("default.replication.factor", "1".to_string()),
                    (
                        "message.max.bytes",
                        gearbox_core::broker::TOPIC_BATCH_BYTES_MAX.to_string(),
                    ),
                ]),
                other => {
                    return out
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(text(&format!(
                            "resource type {other} is not supported; topics (2) and brokers (4) are"
                        ))));
                }
            };
            match entries {
                Err(e) => out
                    .with_error_code(code_for(&e))
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                Ok(entries) => out.with_configs(
                    entries
                        .into_iter()
                        .filter(|(name, _)| {
                            res.configuration_keys
                                .as_ref()
                                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == *name))
                        })
                        .map(|(name, value)| {
                            DescribeConfigsResourceResult::default()
                                .with_name(text(name))
                                .with_value(Some(StrBytes::from_string(value)))
                                .with_read_only(true)
                                // 5: the default config of the broker; 1: a topic config.
                                .with_config_source(if res.resource_type == RESOURCE_TOPIC {
                                    1
                                } else {
                                    5
                                })
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}
