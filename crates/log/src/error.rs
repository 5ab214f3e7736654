//! Typed errors, split by operation so callers can branch on what they can act on.
//!
//! Operating errors (disk full, a bad batch from a client, an offset out of range, corruption on
//! disk) are values. Programmer errors are assertions. Errors carry the partition directory,
//! offsets and byte positions so that a message alone is enough to find the problem.

use crate::batch::BatchError;
use std::io;
use std::path::PathBuf;

/// Why a partition refuses to accept appends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// A write or sync failed earlier. Nothing is acknowledged after a failed sync, and the
    /// partition stays failed until the process restarts and recovery runs (see
    /// `docs/durability.md`, "sticky errors").
    #[error("partition failed after an I/O error during {op}: {reason}")]
    Failed {
        /// The operation that failed (`write`, `sync`, `checkpoint`, ...).
        op: &'static str,
        /// The I/O error's text.
        reason: String,
    },
    /// Data below the durable point failed verification; an operator must act.
    #[error("partition corrupted: {0}")]
    Corrupted(Corruption),
    /// The partition was closed.
    #[error("partition closed")]
    Closed,
}

/// Where corruption was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment_base} at byte {position} (offset {offset}): {reason}")]
pub struct Corruption {
    /// Base offset of the segment holding the bad bytes.
    pub segment_base: u64,
    /// Byte position of the bad batch in that segment.
    pub position: u64,
    /// The offset the bad batch should have started at.
    pub offset: u64,
    /// What check failed.
    pub reason: String,
}

/// Errors from [`crate::Partition::append`].
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The bytes are not one valid RecordBatch v2; nothing was written.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// The batch's offsets are not one per record (`recordsCount` must be `lastOffsetDelta + 1`);
    /// nothing was written.
    #[error("invalid record batch offsets: {reason}")]
    InvalidOffsets {
        /// What is wrong.
        reason: String,
    },
    /// The partition's offsets would pass `i64::MAX`, Kafka's offset space; nothing was written.
    #[error("offsets exhausted: the next offset {next_offset} leaves no room for this batch")]
    OffsetsExhausted {
        /// The partition's next offset.
        next_offset: u64,
    },
    /// The batch exceeds the partition's `batch_bytes_max`; nothing was written.
    #[error("batch of {size} bytes exceeds batch_bytes_max {max}")]
    BatchTooLarge {
        /// Size of the rejected batch.
        size: usize,
        /// The configured limit.
        max: u32,
    },
    /// The device is full. Nothing from this batch was kept, and the partition still accepts
    /// appends once space is freed.
    #[error("disk full while appending to {dir}")]
    DiskFull {
        /// The partition directory.
        dir: PathBuf,
    },
    /// The partition does not accept appends (sticky failure, corruption, or closed).
    #[error("{dir}: {source}")]
    Unavailable {
        /// The partition directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Unavailable,
    },
}

/// Errors from reads.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The offset is below the log start or above the high-water mark.
    #[error("offset {requested} is out of range [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// The requested offset.
        requested: u64,
        /// The first readable offset.
        log_start_offset: u64,
        /// One past the last readable offset.
        high_watermark: u64,
    },
    /// The bytes on disk failed verification; nothing from the bad batch was returned.
    #[error("{dir}: {source}")]
    Corrupted {
        /// The partition directory.
        dir: PathBuf,
        /// Where and why.
        #[source]
        source: Corruption,
    },
    /// A verified batch could not be decoded into records (for example, it is compressed).
    #[error("batch at offset {offset} cannot be decoded: {source}")]
    Decode {
        /// Base offset of the batch.
        offset: u64,
        /// Why.
        #[source]
        source: BatchError,
    },
    /// The device failed a read.
    #[error("I/O error reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Errors from opening (recovering) or creating a partition or a log.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// An I/O error during recovery.
    #[error("I/O error during {op} of {path}: {source}")]
    Io {
        /// What recovery was doing.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A configuration value is out of its allowed range.
    #[error("invalid config `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
}

/// Errors from topic administration.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The name is not a valid topic name.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The topic exists already.
    #[error("topic {0:?} already exists")]
    AlreadyExists(String),
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    NotFound(String),
    /// Creating or opening the topic's files failed.
    #[error(transparent)]
    Open(#[from] OpenError),
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> OpenError {
    let path = path.into();
    move |source| OpenError::Io { op, path, source }
}
