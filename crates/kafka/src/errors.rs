//! Broker errors as Kafka error codes.

use gearbox_core::broker::BrokerError;
use kafka_protocol::error::ResponseError;

/// The Kafka error code for a broker error.
#[must_use]
pub fn code_for(e: &BrokerError) -> i16 {
    let code = match e {
        BrokerError::TopicNotFound(_) | BrokerError::PartitionNotFound { .. } => {
            ResponseError::UnknownTopicOrPartition
        }
        BrokerError::TopicExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::InvalidTopicName { .. } => ResponseError::InvalidTopicException,
        BrokerError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        BrokerError::EventTooLarge { .. } => ResponseError::MessageTooLarge,
        BrokerError::InvalidBatch(_) => ResponseError::CorruptMessage,
        BrokerError::SchemaViolation { .. } | BrokerError::SchemaRequired { .. } => {
            ResponseError::InvalidRecord
        }
        BrokerError::DiskFull => ResponseError::KafkaStorageError,
        BrokerError::PartitionFailed(_) | BrokerError::PartitionCorrupted(_) => {
            ResponseError::KafkaStorageError
        }
        BrokerError::InvalidArgument { .. } => ResponseError::InvalidRequest,
        BrokerError::WrongMode { .. } | BrokerError::SubscriptionConflict { .. } => {
            ResponseError::GroupIdNotFound
        }
        BrokerError::SubscriptionNotFound { .. } => ResponseError::GroupIdNotFound,
        BrokerError::CommitRegression { .. } => ResponseError::InvalidCommitOffsetSize,
        BrokerError::Internal(_) => ResponseError::UnknownServerError,
    };
    code.code()
}
