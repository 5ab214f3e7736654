//! The [`Sink`] trait: how a connector carries events out to a gear.
//!
//! The runtime reads a topic through a queue subscription, transforms each event, and hands the
//! sink a batch. The sink reports a result per record; the runtime acks the successes (only then
//! does the subscription move past them), nacks transient failures for a redelivery after the
//! retry backoff, and dead-letters permanent failures and events out of attempts. A sink must
//! report `Ok` only once its write is durable at the gear, or make the write idempotent on the
//! record's stable [`SinkRecord::id`], because a crash before the ack delivers it again.

use serde_json::Value;
use std::future::Future;

/// One event for a sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// A stable id for this delivery, the same across retries and restarts (the event id, with
    /// `#n` appended for the n-th output when a transform made several).
    pub id: String,
    /// The transformed event (by default the CloudEvent in structured JSON).
    pub value: Value,
    /// Which delivery attempt this is, from 1.
    pub attempt: u32,
    /// The topic partition it came from.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// When it was appended, ms since the epoch, if known (for event age).
    pub time_ms: Option<i64>,
    /// The event's W3C `traceparent` extension, for sinks that propagate trace context.
    pub traceparent: Option<String>,
}

/// A failed write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying (the gear is down, timed out, answered 5xx or 429).
    #[error("{message}")]
    Transient {
        /// What happened.
        message: String,
        /// The gear's own wait hint (`Retry-After`).
        retry_after_ms: Option<u64>,
    },
    /// Never going to work (the gear rejected the event: a 4xx other than 408/429): dead-letter
    /// it now.
    #[error("{message}")]
    Permanent {
        /// What happened.
        message: String,
    },
}

impl SinkError {
    /// A label for metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            SinkError::Transient { .. } => "transient",
            SinkError::Permanent { .. } => "permanent",
        }
    }
}

/// A connector that writes to a gear.
pub trait Sink: Send + 'static {
    /// The connector type, for metrics (`http`, `postgres`, ...).
    fn kind(&self) -> &'static str;

    /// Writes a batch; one result per record, in order.
    fn write(
        &mut self,
        batch: &[SinkRecord],
    ) -> impl Future<Output = Vec<Result<(), SinkError>>> + Send;
}

/// A sink that keeps its own read positions at the gear, written in the same transaction as the
/// rows they cover: effectively-once. A crash before the commit leaves both the rows and the
/// positions as they were, so the batch is read and applied again; a crash after it leaves both,
/// so the batch is not read again. Nothing is applied twice and nothing is skipped.
///
/// The runtime reads the topic from [`TransactionalSink::positions`] in offset order per
/// partition (no queue subscription: there are no per-event acks to lose), transforms each event,
/// dead-letters the ones [`TransactionalSink::check`] refuses or a transform rejects, and calls
/// [`TransactionalSink::apply`] with the rest and the positions after the batch. A transient
/// failure retries the same batch (so order per partition holds); a permanent one is narrowed
/// down to the record that causes it by applying the batch one record at a time.
pub trait TransactionalSink: Send + 'static {
    /// The connector type, for metrics (`postgres_upsert`, ...).
    fn kind(&self) -> &'static str;

    /// The positions stored at the gear: `(partition, next offset to apply)`. Empty before the
    /// first batch.
    fn positions(&mut self) -> impl Future<Output = Result<Vec<(u32, u64)>, SinkError>> + Send;

    /// Whether a record can ever be applied (it has the fields the mapping needs, with usable
    /// values). A refusal dead-letters the record with the message.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    fn check(&self, record: &SinkRecord) -> Result<(), String>;

    /// Applies `batch` and stores `positions`, all in one transaction. `batch` may be empty (only
    /// positions move: the batch was all filtered out or dead-lettered).
    fn apply(
        &mut self,
        batch: &[SinkRecord],
        positions: &[(u32, u64)],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called when the pipeline has caught up with its topic (at most every
    /// [`crate::runtime::SINK_POLL_WAIT_MS`]): a sink that holds applied records back to write
    /// them in larger units (a Parquet micro-batch on a time policy) commits them here once its
    /// policy says so. Such a sink's [`TransactionalSink::positions`] must cover only what it has
    /// committed, so that what it held is read again after a crash.
    fn idle(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}
