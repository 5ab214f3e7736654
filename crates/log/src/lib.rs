//! Gearbox's embedded, durable, partitioned event log.
//!
//! A [`Log`] holds named topics; a topic holds a fixed number of [`Partition`]s; a partition is
//! a directory of segment files holding Kafka RecordBatch v2 bytes exactly as Kafka stores them
//! (see [`batch`]), plus derived indexes and a two-slot checkpoint.
//!
//! What an acknowledgement means, and what recovery does after each kind of fault, is the
//! contract in `docs/durability.md`; the byte layouts are in `docs/format.md`.
//!
//! This crate is synchronous, has no async runtime and no serde, and reaches files and clocks
//! only through [`io`], so tests can run it on a simulated disk that loses unsynced bytes.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod index;
pub mod io;
mod log;
pub mod partition;

pub use crate::config::{PartitionConfig, Retention, SyncMode};
pub use crate::error::{AppendError, Corruption, OpenError, ReadError, TopicError, Unavailable};
pub use crate::log::{
    Log, LogOptions, PARTITIONS_PER_TOPIC_MAX, RETENTION_CHECK_INTERVAL_MS_DEFAULT,
    TOPIC_NAME_BYTES_MAX, Topic, TopicConfig, validate_topic_name,
};
pub use crate::partition::{
    Appended, Batches, Partition, PartitionStats, RawBatch, RecoveryReport,
};
