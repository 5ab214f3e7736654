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
