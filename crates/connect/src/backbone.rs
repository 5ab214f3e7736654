//! The [`Backbone`]: the one interface between pipelines and the log. The runtime publishes,
//! dead-letters, stores source checkpoints and consumes through it; [`Embedded`] implements it on
//! Gearbox's own log, and the Kafka and NATS JetStream backbones will implement the same trait.
//!
//! Architecture Invariant: pipelines never see segment files, partitions' internals or the state
//! store; everything they need is here.

use gearbox_core::broker::{Broker, BrokerError, Delivery, Published, StoredEvent};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::{Settings, Start};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest long-poll wait a pipeline asks for.
pub const POLL_WAIT_MS_MAX: u64 = 30_000;

/// A backbone failure, by what a pipeline does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackboneError {
    /// Try again later (I/O, disk full, a partition refusing writes).
    #[error("backbone unavailable: {0}")]
    Unavailable(String),
    /// One event can never be stored (too large); the others were not stored either.
    #[error("event {index} rejected: {message}")]
    Rejected {
        /// Its index in the request.
        index: usize,
        /// Why.
        message: String,
    },
    /// A topic or subscription the pipeline needs does not exist: a configuration error.
    #[error("{0}")]
    NotFound(String),
}

impl From<BrokerError> for BackboneError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::EventTooLarge { index, size, max } => BackboneError::Rejected {
                index,
                message: format!("event of {size} bytes is over the limit of {max}"),
            },
            e @ BrokerError::SchemaViolation { index, .. } => {
                let message = match &e {
                    BrokerError::SchemaViolation { violations, .. } => format!(
                        "{e}: {}",
                        violations
                            .iter()
                            .map(|v| format!(
                                "{} {}",
                                if v.pointer.is_empty() {
                                    "/"
                                } else {
                                    &v.pointer
                                },
                                v.message
                            ))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    _ => e.to_string(),
                };
                BackboneError::Rejected { index, message }
            }
            e @ BrokerError::SchemaRequired { index, .. } => BackboneError::Rejected {
                index,
                message: e.to_string(),
            },
            e @ (BrokerError::TopicNotFound(_)
            | BrokerError::SubscriptionNotFound { .. }
            | BrokerError::InvalidTopicName { .. }
            | BrokerError::SubscriptionConflict { .. }
            | BrokerError::WrongMode { .. }) => BackboneError::NotFound(e.to_string()),
            other => BackboneError::Unavailable(other.to_string()),
        }
    }
}

/// What pipelines need from the log.
pub trait Backbone: Send + Sync + 'static {
    /// Where pipelines record the hops they see (ingested, written); `None` where the backbone
    /// keeps no lineage.
    fn lineage(&self) -> Option<Arc<gearbox_core::lineage::Lineage>> {
        None
    }

    /// Events of `topic` the subscription `name` has not finished, if the backbone can tell
    /// (health uses it: a sink with nothing to do is fresh).
    fn subscription_lag(
        &self,
        _topic: &str,
        _name: &str,
    ) -> impl Future<Output = Option<u64>> + Send {
        std::future::ready(None)
    }

    /// Appends events durably, deduplicated on `source` and `id`; one result per event.
    fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> impl Future<Output = Result<Vec<Published>, BackboneError>> + Send;

    /// Appends events to `topic`'s dead-letter topic (deduplicated like `publish`).
    fn publish_dead(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;

    /// A pipeline's stored cursor.
    fn checkpoint(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = Result<Option<String>, BackboneError>> + Send;

    /// Stores a pipeline's cursor durably.
    fn put_checkpoint(
        &self,
        pipeline: &str,
        cursor: String,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;

    /// Creates a queue subscription, or checks an existing one has these settings.
    fn ensure_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;

    /// Starts a queue subscription over at `start` (a replay): its positions, locks and attempt
    /// counts are dropped and it is created again with `settings`. Other subscriptions of the
    /// topic are not touched.
    fn restart_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
        start: Start,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;

    /// Up to `max` deliveries, waiting up to `wait_ms` (capped at [`POLL_WAIT_MS_MAX`]) for one.
    fn poll(
        &self,
        topic: &str,
        name: &str,
        max: usize,
        wait_ms: u64,
    ) -> impl Future<Output = Result<Vec<Delivery>, BackboneError>> + Send;

    /// Finishes deliveries.
    fn ack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;

    /// Where a reader that keeps its own positions starts on each partition of `topic`:
    /// `(partition, offset)` for every partition, by `start`.
    fn start_offsets(
        &self,
        topic: &str,
        start: Start,
    ) -> impl Future<Output = Result<Vec<(u32, u64)>, BackboneError>> + Send;

    /// Reads up to `max` events in all from the given `(partition, offset)` positions, in offset
    /// order per partition, waiting up to `wait_ms` (capped at [`POLL_WAIT_MS_MAX`]) for one. A
    /// position below the partition's log start (retention deleted what it points at) reads from
    /// the log start, and the read reports the gap in [`Read::skipped`].
    fn read(
        &self,
        topic: &str,
        from: Vec<(u32, u64)>,
        max: usize,
        wait_ms: u64,
    ) -> impl Future<Output = Result<Read, BackboneError>> + Send;

    /// Returns deliveries for a retry after `retry_in_ms` (default: the subscription's backoff),
    /// or dead-letters them now with `reject`, recording `error`.
    fn nack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
        retry_in_ms: Option<u64>,
        reject: bool,
        error: String,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send;
}

/// What [`Backbone::read`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    /// The events, in offset order per partition.
    pub events: Vec<StoredEvent>,
    /// `(partition, from, to)`: positions below the log start, moved up to it; offsets `from` up
    /// to `to` (excluded) were deleted by retention before they were read.
    pub skipped: Vec<(u32, u64, u64)>,
}

/// Polls a subscription, waiting up to `wait_ms` (capped at [`POLL_WAIT_MS_MAX`]) for
/// deliveries: woken by the topic's publishes, acks and nacks, and by the next retry coming due;
/// it returns early, possibly empty, once `stop` turns true. The one long poll of the embedded
/// log, used by [`Embedded::poll`] and by the HTTP API's `POST .../poll`.
///
/// # Errors
/// Not found, wrong mode, or a storage error.
pub async fn long_poll(
    broker: &Arc<Broker>,
    topic: &str,
    name: &str,
    max: usize,
    wait_ms: u64,
    mut stop: Option<watch::Receiver<bool>>,
) -> Result<Vec<Delivery>, BrokerError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(POLL_WAIT_MS_MAX));
    let notify = broker.watch(topic)?;
    loop {
        // Register for wake-ups before looking, so a publish in between is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (b, t, n) = (broker.clone(), topic.to_string(), name.to_string());
        let (deliveries, next_due) = tokio::task::spawn_blocking(move || b.poll(&t, &n, max))
            .await
            .map_err(|e| BrokerError::Internal(format!("storage task failed: {e}")))??;
        let now = tokio::time::Instant::now();
        let stopped = stop.as_ref().is_some_and(|s| *s.borrow());
        if !deliveries.is_empty() || now >= deadline || stopped {
            return Ok(deliveries);
        }
        let mut wake = deadline;
        if let Some(due) = next_due {
            let in_ms = due
                .saturating_sub(chrono::Utc::now().timestamp_millis())
                .max(0) as u64;
            wake = wake.min(now + Duration::from_millis(in_ms));
        }
        let stopping = async {
            match stop.as_mut() {
                Some(s) => {
                    let _ = s.changed().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(wake) => {}
            () = stopping => {}
        }
    }
}

/// The embedded backbone: Gearbox's own log, in this process.
///
/// Its long polls do not watch for shutdown: the runtime drops a pipeline's poll when it stops.
#[derive(Debug, Clone)]
pub struct Embedded {
    broker: Arc<Broker>,
}

impl Embedded {
    /// A backbone over `broker`.
    #[must_use]
    pub fn new(broker: Arc<Broker>) -> Embedded {
        Embedded { broker }
    }

    /// The broker (for the API and tests).
    #[must_use]
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BackboneError> {
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || f(&broker))
            .await
            .map_err(|e| BackboneError::Unavailable(format!("storage task failed: {e}")))?
            .map_err(BackboneError::from)
    }
}

impl Backbone for Embedded {
    fn lineage(&self) -> Option<Arc<gearbox_core::lineage::Lineage>> {
        Some(self.broker.lineage().clone())
    }

    async fn subscription_lag(&self, topic: &str, name: &str) -> Option<u64> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.blocking(move |b| b.subscription(&topic, &name))
            .await
            .ok()
            .map(|s| s.lag)
    }

    async fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> Result<Vec<Published>, BackboneError> {
        let topic = topic.to_string();
        self.blocking(move |b| b.publish(&topic, &events)).await
    }

    async fn publish_dead(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> Result<(), BackboneError> {
        let topic = topic.to_string();
        self.blocking(move |b| b.publish_dead(&topic, &events).map(drop))
            .await
    }

    async fn checkpoint(&self, pipeline: &str) -> Result<Option<String>, BackboneError> {
        let name = pipeline.to_string();
        let raw = self.blocking(move |b| b.checkpoint(&name)).await?;
        raw.map(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                BackboneError::Unavailable(format!("checkpoint of {pipeline:?} is not UTF-8"))
            })
        })
        .transpose()
    }

    async fn put_checkpoint(&self, pipeline: &str, cursor: String) -> Result<(), BackboneError> {
        let name = pipeline.to_string();
        self.blocking(move |b| b.put_checkpoint(&name, cursor.as_bytes()))
            .await
    }

    async fn ensure_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
    ) -> Result<(), BackboneError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.blocking(move |b| b.put_subscription(&topic, &name, settings).map(drop))
            .await
    }

    async fn restart_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
        start: Start,
    ) -> Result<(), BackboneError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.blocking(move |b| {
            match b.delete_subscription(&topic, &name) {
                Ok(()) | Err(gearbox_core::broker::BrokerError::SubscriptionNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            b.put_subscription_from(&topic, &name, settings, Some(start))
                .map(drop)
        })
        .await
    }

    async fn poll(
        &self,
        topic: &str,
        name: &str,
        max: usize,
        wait_ms: u64,
    ) -> Result<Vec<Delivery>, BackboneError> {
        Ok(long_poll(&self.broker, topic, name, max, wait_ms, None).await?)
    }

    async fn ack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
    ) -> Result<(), BackboneError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.blocking(move |b| b.ack(&topic, &name, &items).map(drop))
            .await
    }

    async fn start_offsets(
        &self,
        topic: &str,
        start: Start,
    ) -> Result<Vec<(u32, u64)>, BackboneError> {
        let topic = topic.to_string();
        self.blocking(move |b| {
            let info = b.describe_topic(&topic)?;
            info.offsets
                .iter()
                .map(|p| {
                    let offset = match start {
                        Start::Earliest => p.log_start_offset,
                        Start::Latest => p.high_watermark,
                        Start::Time(ms) => b.offset_for_time(&topic, p.partition, ms)?,
                        Start::Offset(o) => o.clamp(p.log_start_offset, p.high_watermark),
                    };
                    Ok((p.partition, offset))
                })
                .collect()
        })
        .await
    }

    async fn read(
        &self,
        topic: &str,
        from: Vec<(u32, u64)>,
        max: usize,
        wait_ms: u64,
    ) -> Result<Read, BackboneError> {
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(POLL_WAIT_MS_MAX));
        let notify = self.broker.watch(topic).map_err(BackboneError::from)?;
        loop {
            // Registered before the read, so a publish between the read and the wait wakes it.
            let woken = notify.notified();
            let (t, from2) = (topic.to_string(), from.clone());
            let broker = self.broker.clone();
            let read =
                tokio::task::spawn_blocking(move || read_positions(&broker, &t, &from2, max))
                    .await
                    .map_err(|e| {
                        BackboneError::Unavailable(format!("storage task failed: {e}"))
                    })??;
            if !read.events.is_empty() || !read.skipped.is_empty() {
                return Ok(read);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Ok(read);
            }
        }
    }

    async fn nack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
        retry_in_ms: Option<u64>,
        reject: bool,
        error: String,
    ) -> Result<(), BackboneError> {
        let (topic, name) = (topic.to_string(), name.to_string());
        self.blocking(move |b| {
            b.nack(&topic, &name, &items, retry_in_ms, reject, Some(&error))
                .map(drop)
        })
        .await
    }
}

/// One pass of [`Embedded::read`]: up to `max` events from the positions, shared out so that one
/// busy partition cannot starve the others (each gets at least `max / positions`).
fn read_positions(
    broker: &Broker,
    topic: &str,
    from: &[(u32, u64)],
    max: usize,
) -> Result<Read, BackboneError> {
    let mut out = Read::default();
    let share = (max / from.len().max(1)).max(1);
    for &(partition, offset) in from {
        let room = max.saturating_sub(out.events.len()).min(share);
        if room == 0 {
            break;
        }
        let events = match broker.read(topic, partition, offset, room) {
            Ok((events, _)) => events,
            Err(BrokerError::OffsetOutOfRange {
                log_start_offset, ..
            }) if offset < log_start_offset => {
                out.skipped.push((partition, offset, log_start_offset));
                broker
                    .read(topic, partition, log_start_offset, room)
                    .map_err(BackboneError::from)?
                    .0
            }
            Err(BrokerError::OffsetOutOfRange { high_watermark, .. }) => {
                // Past the end: the topic was recreated, or the positions come from another log.
                // Waiting cannot fix that.
                return Err(BackboneError::NotFound(format!(
                    "position {offset} of {topic}/{partition} is past its end ({high_watermark}): \
                     the topic was recreated, or the stored positions belong to another log"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        out.events.extend(events);
    }
    Ok(out)
}
