//! The [`Source`] trait: how a connector brings a gear's data in.
//!
//! A source hands the runtime batches of *draft events*: JSON objects in CloudEvents structured
//! form (`id`, `source`, `type`, `data`, extensions), built from what the gear sent. The pipeline's
//! transforms then map and filter them, and the runtime appends the results. The runtime calls
//! [`Source::ack`] only after every event of the batch is appended and acknowledged (or
//! dead-lettered) and the batch's cursor is stored; a source commits anything to its gear (an MQTT
//! PUBACK, a 2xx to a webhook sender) only there. On [`Source::nack`] it must arrange for the batch
//! to be read again (rewind to its last acked cursor, let the gear redeliver, or answer an error).
//!
//! Sources give events deterministic ids (a delivery id, or a business key and version), so a batch
//! read twice after a crash is deduplicated by the log instead of duplicated.

use serde_json::Value;
use std::any::Any;
use std::future::Future;

/// Connector-private state that travels with a batch and comes back in `ack` or `nack` (an MQTT
/// packet to acknowledge, HTTP responders to answer).
pub type AckToken = Box<dyn Any + Send>;

/// One batch read from a gear.
#[derive(Default)]
pub struct SourceBatch {
    /// Draft events, in gear order.
    pub records: Vec<Value>,
    /// The source's position after this batch, stored by the runtime once the batch is appended.
    /// `None` leaves the stored cursor as it is.
    pub cursor: Option<String>,
    /// Handed back in `ack` or `nack`.
    pub token: Option<AckToken>,
    /// Records the source could not read (a malformed CSV line, say): dead-lettered with their
    /// error, which names where each came from (file and line, query row), after `records`.
    pub rejected: Vec<Rejected>,
}

/// A record a source read but could not turn into a draft event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// What was read, as well as it could be represented (the raw line as a string, say).
    pub record: Value,
    /// Why, naming where it came from and the field.
    pub error: String,
}

impl std::fmt::Debug for SourceBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBatch")
            .field("records", &self.records.len())
            .field("cursor", &self.cursor)
            .field("token", &self.token.is_some())
            .field("rejected", &self.rejected.len())
            .finish()
    }
}

/// Where one output event of a record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// Appended (or found to be a duplicate of an earlier append).
    Appended {
        /// The topic.
        topic: String,
        /// The event id.
        id: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// Whether it had been appended before.
        duplicate: bool,
    },
    /// Dead-lettered with this error.
    DeadLettered {
        /// Why.
        error: String,
    },
}

/// What became of one record of a batch: its outputs' landings (none if a transform filtered it
/// out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordOutcome {
    /// One entry per output event.
    pub landings: Vec<Landing>,
}

/// A source failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Worth retrying: the gear is down, slow, or rate limiting (with its `Retry-After`).
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// The gear's own wait hint.
        retry_after_ms: Option<u64>,
    },
    /// Not worth retrying without an operator (bad credentials, a bad config).
    #[error("{message}")]
    Fatal {
        /// What happened.
        message: String,
    },
}

impl SourceError {
    /// A transient error without a hint.
    pub fn transient(message: impl Into<String>) -> SourceError {
        SourceError::Transient {
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Transient { .. } => "transient",
            SourceError::Fatal { .. } => "fatal",
        }
    }
}

/// A connector that reads from a gear.
///
/// The runtime calls `open` once, then `next_batch` and `ack`/`nack` alternately: one batch is in
/// flight at a time, which is the backpressure from the log to the gear.
pub trait Source: Send + 'static {
    /// The connector type, for metrics (`webhook`, `http_poll`, `mqtt`).
    fn kind(&self) -> &'static str;

    /// Starts reading from the stored cursor (`None`: from the configured start).
    fn open(
        &mut self,
        cursor: Option<String>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The next batch of at most `records_max` draft events, waiting until there is one.
    /// `Ok(None)` means the source has ended (finite sources); the pipeline then stops.
    /// The runtime may drop this future at shutdown, so it must be cancel-safe: nothing read may
    /// be lost by dropping it (an unacknowledged read is read again later).
    fn next_batch(
        &mut self,
        records_max: usize,
    ) -> impl Future<Output = Result<Option<SourceBatch>, SourceError>> + Send;

    /// The batch is durable: commit to the gear. `outcomes` has one entry per record, then one
    /// per rejected record.
    fn ack(
        &mut self,
        token: Option<AckToken>,
        outcomes: Vec<RecordOutcome>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The batch could not be appended: arrange for it to be read again.
    fn nack(&mut self, token: Option<AckToken>, error: &str) -> impl Future<Output = ()> + Send;

    /// The connector's own gauges for `/metrics` (a replication slot's lag, say), registered
    /// when the pipeline starts.
    fn gauges(&self) -> Vec<crate::metrics::Gauge> {
        Vec::new()
    }

    /// A scheduled source's run log (history, next run, triggers), shown by the API and the
    /// dashboard; attached to the pipeline's metrics when it starts.
    fn runs(&self) -> Option<std::sync::Arc<crate::schedule::RunLog>> {
        None
    }
}
