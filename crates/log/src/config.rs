//! Partition settings and their named limits.
//!
//! Durability settings (the sync mode and retention) have no `Default`: whoever creates a topic
//! states them, so that a weaker mode is never chosen by accident. The other fields start from
//! documented defaults and are checked against hard limits by [`PartitionConfig::validate`].

use crate::error::OpenError;

/// Largest segment file, in bytes. Index entries store positions as `u32`.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 31;
/// Smallest segment file, in bytes; smaller only makes files and syncs.
pub const SEGMENT_BYTES_MIN: u64 = 1 << 10;
/// Largest batch the log stores, whatever a topic's `batch_bytes_max` says.
pub const BATCH_BYTES_LIMIT: u32 = 64 << 20;
/// Largest `read_bytes_max` a partition may be configured with.
pub const READ_BYTES_LIMIT: u32 = 64 << 20;

/// Default `segment_bytes_max`: 1 GiB, as Kafka.
pub const SEGMENT_BYTES_MAX_DEFAULT: u64 = 1 << 30;
/// Default `segment_age_ms_max`: 7 days, as Kafka's `segment.ms`.
pub const SEGMENT_AGE_MS_MAX_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Default sparse-index spacing, as Kafka's `index.interval.bytes`.
pub const INDEX_INTERVAL_BYTES_DEFAULT: u32 = 4096;
/// Default `batch_bytes_max`: 1 MiB, as Kafka's `message.max.bytes`.
pub const BATCH_BYTES_MAX_DEFAULT: u32 = 1 << 20;
/// Default `read_bytes_max`: the most one read returns (beyond the first whole batch).
pub const READ_BYTES_MAX_DEFAULT: u32 = 4 << 20;
/// Default `checkpoint_interval_ms`: how stale the checkpoint's durable point may get.
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 10;

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledge after `fdatasync` covers the batch; concurrent appends share one sync.
    Always,
    /// Acknowledge after the write; a background flusher syncs every `ms` milliseconds.
    Interval {
        /// The flush period.
        ms: u64,
    },
    /// Acknowledge after the write; sync only when a segment rolls or the log closes.
    Never,
}

/// How much history a partition keeps. Only whole sealed segments are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Delete the oldest sealed segments while the partition holds more than this many bytes.
    pub bytes_max: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub ms_max: Option<u64>,
}

impl Retention {
    /// Keep everything.
    pub const FOREVER: Retention = Retention {
        bytes_max: None,
        ms_max: None,
    };
}

/// Settings for one partition (every partition of a topic shares them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionConfig {
    /// When appends are acknowledged.
    pub sync: SyncMode,
    /// What history is kept.
    pub retention: Retention,
    /// Roll to a new segment before one would exceed this size.
    pub segment_bytes_max: u64,
    /// Roll to a new segment when the active one is older than this.
    pub segment_age_ms_max: u64,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u32,
    /// Largest batch accepted by `append`.
    pub batch_bytes_max: u32,
    /// Most bytes one read returns, beyond its first whole batch.
    pub read_bytes_max: u32,
    /// Minimum spacing of checkpoint writes after group commits.
    pub checkpoint_interval_ms: u64,
}

impl PartitionConfig {
    /// A config with the given durability settings and the documented defaults for the rest.
    #[must_use]
    pub fn new(sync: SyncMode, retention: Retention) -> Self {
        PartitionConfig {
            sync,
            retention,
            segment_bytes_max: SEGMENT_BYTES_MAX_DEFAULT,
            segment_age_ms_max: SEGMENT_AGE_MS_MAX_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            read_bytes_max: READ_BYTES_MAX_DEFAULT,
            checkpoint_interval_ms: CHECKPOINT_INTERVAL_MS_DEFAULT,
        }
    }

    /// Checks every field against its limit.
    ///
    /// # Errors
    /// [`OpenError::InvalidConfig`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), OpenError> {
        let bad =
            |field: &'static str, reason: String| Err(OpenError::InvalidConfig { field, reason });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return bad(
                "segment_bytes_max",
                format!(
                    "{} is outside [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_LIMIT}]",
                    self.segment_bytes_max
                ),
            );
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes", "must be at least 1".into());
        }
        if self.batch_bytes_max < crate::batch::BATCH_HEADER_BYTES as u32
            || self.batch_bytes_max > BATCH_BYTES_LIMIT
        {
            return bad(
                "batch_bytes_max",
                format!(
                    "{} is outside [{}, {BATCH_BYTES_LIMIT}]",
                    self.batch_bytes_max,
                    crate::batch::BATCH_HEADER_BYTES
                ),
            );
        }
        if self.read_bytes_max == 0 || self.read_bytes_max > READ_BYTES_LIMIT {
            return bad(
                "read_bytes_max",
                format!("{} is outside [1, {READ_BYTES_LIMIT}]", self.read_bytes_max),
            );
        }
        if let SyncMode::Interval { ms: 0 } = self.sync {
            return bad(
                "sync",
                "interval must be at least 1 ms; use `always` to sync every append".into(),
            );
        }
        if self.segment_age_ms_max == 0 {
            return bad("segment_age_ms_max", "must be at least 1".into());
        }
        Ok(())
    }
}
