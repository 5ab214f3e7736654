//! The broker: topics, publishing with deduplication, reads, subscriptions and dead letters,
//! over the embedded log and the state store.
//!
//! Layout under the data directory: `log/` (the embedded log) and `state.redb` (subscriptions).
//!
//! Invariants:
//! - A publish reply lists positions only for events whose append was acknowledged (durable).
//! - The dedup window only ever points at acknowledged events (it is rebuilt from the log).
//! - Subscription state changes are durable (fsynced) before the call returns.
//! - An event is marked dead-lettered only after its DLQ append was acknowledged.
//!
//! Every method is synchronous and may block on `fdatasync`; async callers run them on a
//! blocking thread.

use crate::appenders::{Appenders, Pending};
use crate::dedup::{self, DedupWindow, Position, Reservation};
use crate::event::CloudEvent;
use crate::lineage::{Hop, HopKind, Lineage, LineageConfig, PlacementLines, Positions};
use crate::partitioner::partition_for;
use crate::registry::{Registry, Target, Verdict};
use crate::store::{self, Store, StoreError, Write};
use crate::subscription::{CommitError, DeadLetter, Mode, Settings, Settled, Start, Subscription};
use crate::telemetry::{EventAges, age_seconds};
use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::io::{Clock, OsStorage, SystemClock};
use gearbox_log::{
    AppendError, Log, LogOptions, Partition, PartitionConfig, ReadError, Retention, SyncMode,
    Topic, TopicConfig, TopicError, Unavailable,
};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use tokio::sync::Notify;

mod raw;
pub use raw::{AppendedBatch, KAFKA_GROUP_START};

/// Suffix of dead-letter topics.
pub const DLQ_SUFFIX: &str = ".dlq";
/// Largest encoded event accepted.
pub const EVENT_BYTES_MAX: usize = 1 << 20;
/// Largest batch the server's topics store (a full HTTP body fits).
pub const TOPIC_BATCH_BYTES_MAX: u32 = 32 << 20;
/// Most events one read or poll returns.
pub const READ_EVENTS_MAX: usize = 1000;
/// Most bytes read from the log per step of a read.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Fewest bytes read from the log per step of a read.
const READ_CHUNK_BYTES_MIN: usize = 16 << 10;
/// What a read assumes an event takes in the log when it sizes its steps (a step that comes up
/// short is followed by another; one too long decodes records that are thrown away).
const READ_BYTES_PER_EVENT_GUESS: usize = 512;

/// Bytes to read from the log for about `events` events.
fn read_chunk_for(events: usize) -> usize {
    events
        .saturating_mul(READ_BYTES_PER_EVENT_GUESS)
        .clamp(READ_CHUNK_BYTES_MIN, READ_CHUNK_BYTES)
}
/// Name of the position that records how far a DLQ was redriven.
const REDRIVE_POSITION: &str = "\u{1}redrive";

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Dedup window size per topic, in events.
    pub dedup_window_events_max: usize,
    /// Dedup window age.
    pub dedup_window_ms: u64,
    /// Sync mode for topics the broker creates. `always` unless chosen otherwise.
    pub sync: SyncMode,
    /// Segment size for topics the broker creates.
    pub segment_bytes_max: u64,
    /// Run the log's background flusher and retention thread.
    pub background: bool,
    /// Lineage recording ([`crate::lineage`]).
    pub lineage: LineageConfig,
}

impl BrokerConfig {
    /// Durable defaults: `always`, a 100,000-event / 24 h dedup window, 1 GiB segments.
    #[must_use]
    pub fn durable() -> Self {
        BrokerConfig {
            dedup_window_events_max: dedup::DEDUP_WINDOW_EVENTS_DEFAULT,
            dedup_window_ms: dedup::DEDUP_WINDOW_MS_DEFAULT,
            sync: SyncMode::Always,
            segment_bytes_max: gearbox_log::config::SEGMENT_BYTES_MAX_DEFAULT,
            background: true,
            lineage: LineageConfig::default(),
        }
    }
}

/// Errors of broker operations, by what a caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// The topic exists already.
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    /// A bad topic name.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No such partition.
    #[error("topic {topic:?} has no partition {partition}")]
    PartitionNotFound {
        /// Topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
    },
    /// No such subscription.
    #[error("topic {topic:?} has no subscription {name:?}")]
    SubscriptionNotFound {
        /// Topic.
        topic: String,
        /// Name.
        name: String,
    },
    /// A subscription exists with other settings.
    #[error("subscription {name:?} exists with different settings")]
    SubscriptionConflict {
        /// Name.
        name: String,
    },
    /// The operation does not fit the subscription's mode.
    #[error("subscription {name:?} is in {mode} mode")]
    WrongMode {
        /// Name.
        name: String,
        /// Its mode.
        mode: &'static str,
    },
    /// A cursor commit below the committed offset.
    #[error(
        "commit of offset {requested} on partition {partition} is below the committed offset {committed}"
    )]
    CommitRegression {
        /// Partition.
        partition: u32,
        /// Committed.
        committed: u64,
        /// Requested.
        requested: u64,
    },
    /// A bad argument.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument {
        /// Which.
        field: String,
        /// Why.
        reason: String,
    },
    /// An event larger than [`EVENT_BYTES_MAX`].
    #[error("event {index} is {size} bytes; the limit is {max}")]
    EventTooLarge {
        /// Index in the request.
        index: usize,
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An event's data does not match its subject's schema.
    #[error("event {index}: data does not match schema {subject} version {version} ({} violations)", violations.len())]
    SchemaViolation {
        /// Index in the request.
        index: usize,
        /// The subject.
        subject: String,
        /// The version checked against.
        version: u32,
        /// Every violation.
        violations: Vec<crate::registry::Violation>,
    },
    /// The topic requires a schema, and the event's type has none.
    #[error("event {index}: topic requires a schema and subject {subject} has none")]
    SchemaRequired {
        /// Index in the request.
        index: usize,
        /// The subject that would apply.
        subject: String,
    },
    /// An offset outside the partition.
    #[error("offset {requested} is outside [{log_start_offset}, {high_watermark}]")]
    OffsetOutOfRange {
        /// Requested.
        requested: u64,
        /// First readable.
        log_start_offset: u64,
        /// End.
        high_watermark: u64,
    },
    /// The disk is full.
    #[error("disk full")]
    DiskFull,
    /// A partition refuses writes after an I/O failure.
    #[error("partition failed: {0}")]
    PartitionFailed(String),
    /// A partition holds corrupt data.
    #[error("partition corrupted: {0}")]
    PartitionCorrupted(String),
    /// A produced RecordBatch was refused before anything was written (framing, CRC, sizes,
    /// a record that does not decode).
    #[error("invalid record batch: {0}")]
    InvalidBatch(String),
    /// Something unexpected (an I/O error opening files, a damaged state store).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        BrokerError::Internal(e.to_string())
    }
}

impl From<AppendError> for BrokerError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::DiskFull { .. } => BrokerError::DiskFull,
            AppendError::Unavailable {
                source: Unavailable::Corrupted(c),
                ..
            } => BrokerError::PartitionCorrupted(c.to_string()),
            AppendError::Unavailable { source, .. } => {
                BrokerError::PartitionFailed(source.to_string())
            }
            e @ (AppendError::InvalidBatch(_)
            | AppendError::InvalidOffsets { .. }
            | AppendError::BatchTooLarge { .. }) => BrokerError::InvalidBatch(e.to_string()),
            other => BrokerError::Internal(other.to_string()),
        }
    }
}

impl From<ReadError> for BrokerError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::OffsetOutOfRange {
                requested,
                log_start_offset,
                high_watermark,
            } => BrokerError::OffsetOutOfRange {
                requested,
                log_start_offset,
                high_watermark,
            },
            ReadError::Corrupted { source, .. } => {
                BrokerError::PartitionCorrupted(source.to_string())
            }
            other => BrokerError::Internal(other.to_string()),
        }
    }
}

/// The result for one published event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id.
    pub id: String,
    /// Where it is.
    pub position: Position,
    /// Whether it had been stored before.
    pub duplicate: bool,
}

/// One event read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The event.
    pub event: CloudEvent,
}

/// One event delivered by a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Where it is.
    pub stored: StoredEvent,
    /// Which delivery this is.
    pub attempt: u32,
}

/// What a subscription looks like from outside.
#[derive(Debug, Clone)]
pub struct SubscriptionInfo {
    /// Name.
    pub name: String,
    /// Settings.
    pub settings: Settings,
    /// Events not yet finished or committed.
    pub lag: u64,
    /// Events delivered and not yet finished.
    pub in_flight: u64,
    /// Events in the topic's DLQ not yet redriven.
    pub dlq_depth: u64,
    /// Floors (queue) or committed offsets (cursor), per partition.
    pub positions: Vec<u64>,
}

/// A partition's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Partition.
    pub partition: u32,
    /// First readable offset.
    pub log_start_offset: u64,
    /// One past the last readable offset.
    pub high_watermark: u64,
}

/// A topic as users see it.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partitions.
    pub partitions: u32,
    /// Retention.
    pub retention: Retention,
    /// Per-partition bounds.
    pub offsets: Vec<PartitionOffsets>,
}

#[derive(Debug)]
struct TopicEntry {
    topic: Arc<Topic>,
    dedup: DedupWindow,
    notify: Arc<Notify>,
}

type SubKey = (String, String);

/// The broker.
#[derive(Debug)]
pub struct Broker {
    log: Log,
    store: Arc<Store>,
    registry: Registry,
    clock: Arc<dyn Clock>,
    config: BrokerConfig,
    topics: RwLock<HashMap<String, Arc<TopicEntry>>>,
    subs: RwLock<BTreeMap<SubKey, Arc<Mutex<Subscription>>>>,
    /// Serializes topic administration. Lock order: `admin` before any subscription mutex;
    /// never taken while a subscription mutex is held.
    admin: Mutex<()>,
    /// Serializes creating dead-letter topics; taken while a subscription mutex is held, so
    /// it must never wait for `admin` or a subscription.
    dlq_create: Mutex<()>,
    rng: Mutex<u64>,
    /// Threads for the extra partition appends of a publish ([`crate::appenders`]).
    appenders: Appenders,
    /// Every event's hops ([`crate::lineage`]).
    lineage: Arc<Lineage>,
    /// Event ages at delivery ([`crate::telemetry`]).
    ages: EventAges,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn topic_error(e: TopicError) -> BrokerError {
    match e {
        TopicError::InvalidName { name, reason } => BrokerError::InvalidTopicName {
            name,
            reason: reason.into(),
        },
        TopicError::AlreadyExists(n) => BrokerError::TopicExists(n),
        TopicError::NotFound(n) => BrokerError::TopicNotFound(n),
        TopicError::Open(e) => BrokerError::Internal(e.to_string()),
    }
}

impl Broker {
    /// Opens (recovering) the broker under `data_dir`, rebuilding dedup windows from the log and
    /// loading subscriptions.
    ///
    /// # Errors
    /// [`BrokerError::Internal`] if the log or the state store cannot be opened.
    pub fn open(data_dir: &Path, config: BrokerConfig) -> Result<Broker, BrokerError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        std::fs::create_dir_all(data_dir)
            .map_err(|e| BrokerError::Internal(format!("{}: {e}", data_dir.display())))?;
        let log = Log::open(
            &data_dir.join("log"),
            LogOptions {
                storage: Arc::new(OsStorage),
                clock: clock.clone(),
                background: config.background,
                retention_check_interval_ms: gearbox_log::RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            },
        )
        .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let store = Arc::new(Store::open(&data_dir.join("state.redb"))?);
        let registry =
            Registry::open(store.clone()).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let seed = clock.now_ms() as u64 | 1;
        let lineage = Arc::new(
            Lineage::open(&data_dir.join("lineage"), config.lineage)
                .map_err(BrokerError::Internal)?,
        );
        let broker = Broker {
            log,
            store,
            registry,
            clock,
            config,
            topics: RwLock::new(HashMap::new()),
            subs: RwLock::new(BTreeMap::new()),
            admin: Mutex::new(()),
            dlq_create: Mutex::new(()),
            rng: Mutex::new(seed),
            appenders: Appenders::start()
                .map_err(|e| BrokerError::Internal(format!("starting append threads: {e}")))?,
            lineage,
            ages: EventAges::default(),
        };
        for topic in broker.log.topics() {
            let entry = broker.entry_for(topic)?;
            broker
                .topics
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(entry.0, entry.1);
        }
        broker.load_subscriptions()?;
        Ok(broker)
    }

    /// Warnings from recovery worth logging (torn tails, corruption), one line each.
    #[must_use]
    pub fn recovery_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.log.topics() {
            for (p, part) in t.partitions().iter().enumerate() {
                out.extend(
                    part.recovery()
                        .warnings
                        .iter()
                        .map(|w| format!("{}/{p}: {w}", t.name())),
                );
            }
        }
        out
    }

    fn entry_for(&self, topic: Arc<Topic>) -> Result<(String, Arc<TopicEntry>), BrokerError> {
        let dedup = DedupWindow::new(
            self.config.dedup_window_events_max,
            self.config.dedup_window_ms,
        );
        if !topic.name().ends_with(DLQ_SUFFIX) {
            self.rebuild_dedup(&topic, &dedup)?;
        }
        let name = topic.name().to_string();
        Ok((
            name,
            Arc::new(TopicEntry {
                topic,
                dedup,
                notify: Arc::new(Notify::new()),
            }),
        ))
    }

    /// Reads the last `dedup_window_events_max` records of each partition back into the window.
    fn rebuild_dedup(&self, topic: &Topic, dedup: &DedupWindow) -> Result<(), BrokerError> {
        let mut found: Vec<(i64, dedup::Key, Position)> = Vec::new();
        let window = self.config.dedup_window_events_max as u64;
        for (p, part) in topic.partitions().iter().enumerate() {
            let hw = part.high_watermark();
            let mut next = hw.saturating_sub(window).max(part.log_start_offset());
            while next < hw {
                let records = match part.read_records(next, READ_CHUNK_BYTES) {
                    Ok(r) if !r.is_empty() => r,
                    // A corrupt or unreadable range is reported by reads; dedup skips it.
                    _ => break,
                };
                for r in &records {
                    let event = CloudEvent::from_record(r, topic.name(), p as u32);
                    let position = Position {
                        partition: p as u32,
                        offset: r.offset as u64,
                    };
                    found.push((r.timestamp, dedup.key(&event.source, &event.id), position));
                }
                next = records.last().map_or(hw, |r| r.offset as u64 + 1);
            }
        }
        found.sort_by_key(|(ts, _, _)| *ts);
        for (ts, key, position) in found {
            dedup.load(key, position, ts);
        }
        dedup.trim(self.clock.now_ms());
        Ok(())
    }

    fn load_subscriptions(&self) -> Result<(), BrokerError> {
        for (key, settings) in self.store.subscriptions()? {
            let Some(split) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            let topic = String::from_utf8_lossy(&key[..split]).into_owned();
            let name = String::from_utf8_lossy(&key[split + 1..]).into_owned();
            let Some(entry) = self.entry(&topic) else {
                continue;
            };
            let settings = serde_json::from_slice(&settings)
                .ok()
                .and_then(|v| Settings::from_json(&v).ok())
                .ok_or_else(|| {
                    BrokerError::Internal(format!(
                        "unreadable settings of subscription {topic}/{name}"
                    ))
                })?;
            let mut parts = Vec::new();
            for p in 0..entry.topic.partitions().len() as u32 {
                let pk = store::partition_key(&topic, &name, p);
                let floor = self.store.position(&pk)?.unwrap_or(0);
                parts.push((floor, self.store.slots(&pk)?));
            }
            let sub = Subscription::restore(&topic, &name, settings, parts);
            self.subs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert((topic, name), Arc::new(Mutex::new(sub)));
        }
        Ok(())
    }

    fn entry(&self, topic: &str) -> Option<Arc<TopicEntry>> {
        self.topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .cloned()
    }

    fn require(&self, topic: &str) -> Result<Arc<TopicEntry>, BrokerError> {
        self.entry(topic)
            .ok_or_else(|| BrokerError::TopicNotFound(topic.to_string()))
    }

    fn partition(&self, entry: &TopicEntry, p: u32) -> Result<Arc<Partition>, BrokerError> {
        entry
            .topic
            .partition(p)
            .cloned()
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: entry.topic.name().to_string(),
                partition: p,
            })
    }

    /// A handle that is notified whenever events are published to `topic` (for long polls).
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    pub fn watch(&self, topic: &str) -> Result<Arc<Notify>, BrokerError> {
        Ok(self.require(topic)?.notify.clone())
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`BrokerError::InvalidTopicName`] (a name ending in `.dlq` is reserved),
    /// [`BrokerError::TopicExists`], [`BrokerError::InvalidArgument`], or an I/O error.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<TopicInfo, BrokerError> {
        if name.ends_with(DLQ_SUFFIX) {
            return Err(BrokerError::InvalidTopicName {
                name: name.into(),
                reason: format!(
                    "names ending in `{DLQ_SUFFIX}` are reserved for dead-letter topics"
                ),
            });
        }
        self.create_topic_unchecked(name, partitions, retention)?;
        self.describe_topic(name)
    }

    fn create_topic_unchecked(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<(), BrokerError> {
        let _admin = lock(&self.admin);
        self.create_topic_in_log(name, partitions, retention)
    }

    /// Creates a topic in the log and registers it. Callers serialize: user topics under
    /// `admin`, dead-letter topics under `dlq_create` (which may be taken while a subscription
    /// is locked, unlike `admin`: see the lock order on [`Broker`]).
    fn create_topic_in_log(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<(), BrokerError> {
        gearbox_log::validate_topic_name(name).map_err(topic_error)?;
        if partitions == 0 || partitions > gearbox_log::PARTITIONS_PER_TOPIC_MAX {
            return Err(BrokerError::InvalidArgument {
                field: "partitions".into(),
                reason: format!("must be 1 to {}", gearbox_log::PARTITIONS_PER_TOPIC_MAX),
            });
        }
        let mut config = PartitionConfig::new(self.config.sync, retention);
        config.segment_bytes_max = self.config.segment_bytes_max;
        config.batch_bytes_max = TOPIC_BATCH_BYTES_MAX;
        let topic = self
            .log
            .create_topic(
                name,
                TopicConfig {
                    partitions,
                    partition: config,
                },
            )
            .map_err(topic_error)?;
        let (name, entry) = self.entry_for(topic)?;
        self.topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, entry);
        Ok(())
    }

    /// Every topic, by name.
    #[must_use]
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.log.topics().iter().map(|t| describe(t)).collect()
    }

    /// One topic.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        Ok(describe(&self.require(name)?.topic))
    }

    /// Deletes a topic, its dead-letter topic and its subscriptions.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`] or an I/O error.
    pub fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = lock(&self.admin);
        self.require(name)?;
        // The topic, its dead-letter topic, that one's, and so on: each may have subscriptions
        // and a redrive cursor of its own.
        let mut cascade = vec![name.to_string()];
        while let Some(next) = cascade
            .last()
            .map(|t| dlq_name(t))
            .filter(|d| self.entry(d).is_some())
        {
            cascade.push(next);
        }
        let doomed: Vec<(SubKey, Arc<Mutex<Subscription>>)> = self
            .subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((t, _), _)| cascade.contains(t))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Lock order: admin, then each subscription (never dlq_create while holding one here).
        // A marked subscription refuses every later call through a handle taken before.
        for (_, sub) in &doomed {
            lock(sub).mark_deleted();
        }
        let mut writes: Vec<Write> = doomed
            .iter()
            .map(|((t, n), _)| Write::DeleteSubscription {
                key: store::sub_key(t, n),
            })
            .collect();
        writes.extend(cascade.iter().map(|t| Write::DeleteSubscription {
            key: store::sub_key(t, REDRIVE_POSITION),
        }));
        self.store.apply(&writes)?;
        {
            let mut subs = self
                .subs
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (k, _) in &doomed {
                subs.remove(k);
            }
        }
        let _creating = lock(&self.dlq_create);
        for t in &cascade {
            if self
                .topics
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(t)
                .is_some()
            {
                self.log.delete_topic(t).map_err(topic_error)?;
            }
        }
        Ok(())
    }

    /// Publishes events to a topic: validated (the caller parsed them), deduplicated on
    /// `source` and `id`, placed by Kafka's partitioner, appended durably. All or nothing on validation;
    /// on an I/O failure the events that were appended stay (and dedup remembers them).
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`], [`BrokerError::EventTooLarge`], or a storage error.
    pub fn publish(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<Vec<Published>, BrokerError> {
        self.publish_parsed(topic, events, &[])
    }

    /// [`Broker::publish`], with each event's `data` already parsed where the caller has it
    /// (`parsed[i]`, when present and `Some`, is event `i`'s data as JSON), so schema validation
    /// does not parse it again.
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub fn publish_parsed(
        &self,
        topic: &str,
        events: &[CloudEvent],
        parsed: &[Option<&serde_json::Value>],
    ) -> Result<Vec<Published>, BrokerError> {
        self.publish_events(topic, Cow::Borrowed(events), parsed)
    }

    /// [`Broker::publish_parsed`] for a caller that gives the events up: their attributes and
    /// data move into the stored records instead of being copied (the HTTP ingest path).
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub fn publish_owned(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
        parsed: &[Option<&serde_json::Value>],
    ) -> Result<Vec<Published>, BrokerError> {
        self.publish_events(topic, Cow::Owned(events), parsed)
    }

    fn publish_events(
        &self,
        topic: &str,
        mut events: Cow<'_, [CloudEvent]>,
        parsed: &[Option<&serde_json::Value>],
    ) -> Result<Vec<Published>, BrokerError> {
        let entry = self.require(topic)?;
        if self.registry.applies_to(topic) {
            let verdicts = self.validate(topic, &events, parsed)?;
            for (e, verdict) in events.to_mut().iter_mut().zip(verdicts) {
                if let Some((id, version)) = verdict {
                    e.extensions.insert("schemaid".into(), id.to_string());
                    e.extensions
                        .insert("schemaversion".into(), version.to_string());
                }
            }
        }
        let now = self.clock.now_ms();
        let partitions = entry.topic.partitions().len() as u32;
        // Everything the publish needs from an event besides its record, taken before the
        // events are turned into records.
        let keys: Vec<dedup::Key> = events
            .iter()
            .map(|e| entry.dedup.key(&e.source, &e.id))
            .collect();
        let placement: Vec<u32> = events
            .iter()
            .map(|e| partition_for(e.partition_key().unwrap_or(&e.id).as_bytes(), partitions))
            .collect();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        // Lineage: each event's placement line, encoded into one buffer before the events
        // become records; after the append, one record per partition ([`PlacementLines`]).
        let lines = self
            .lineage
            .enabled()
            .then(|| PlacementLines::of(&events, topic.ends_with(DLQ_SUFFIX)));
        let records: Vec<RecordInput> = match events {
            Cow::Borrowed(events) => events.iter().map(|e| e.to_record(now)).collect(),
            Cow::Owned(events) => events.into_iter().map(|e| e.into_record(now)).collect(),
        };
        for (index, r) in records.iter().enumerate() {
            let size = record_size(r);
            if size > EVENT_BYTES_MAX {
                return Err(BrokerError::EventTooLarge {
                    index,
                    size,
                    max: EVENT_BYTES_MAX,
                });
            }
        }
        // A key repeated inside the request is a duplicate of its first occurrence.
        let mut first: HashMap<&dedup::Key, usize, dedup::KeyHash> =
            HashMap::with_capacity_and_hasher(keys.len(), dedup::KeyHash);
        // Each event's first occurrence in the request.
        let firsts: Vec<usize> = (0..ids.len())
            .map(|i| *first.entry(&keys[i]).or_insert(i))
            .collect();
        let unique: Vec<usize> = (0..ids.len()).filter(|&i| firsts[i] == i).collect();
        let unique_keys: Vec<&dedup::Key> = unique.iter().map(|&i| &keys[i]).collect();
        let reservations = entry.dedup.reserve(&unique_keys, now);

        let mut by_partition: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut positions: Vec<Option<(Position, bool)>> = vec![None; ids.len()];
        for (&i, reservation) in unique.iter().zip(&reservations) {
            match reservation {
                Reservation::Duplicate(p) => positions[i] = Some((*p, true)),
                Reservation::Reserved => by_partition.entry(placement[i]).or_default().push(i),
            }
        }
        let outcomes = self.append_groups(&entry, &by_partition, records);
        let mut stored = Vec::new();
        let mut released = Vec::new();
        let mut failure = None;
        let mut bases: Vec<(u32, u64)> = Vec::new();
        for ((&p, indexes), outcome) in by_partition.iter().zip(outcomes) {
            match outcome {
                Ok(base) => {
                    bases.push((p, base));
                    for (k, &i) in indexes.iter().enumerate() {
                        let pos = Position {
                            partition: p,
                            offset: base + k as u64,
                        };
                        positions[i] = Some((pos, false));
                        stored.push((&keys[i], pos));
                    }
                }
                Err(e) => {
                    released.extend(indexes.iter().map(|&i| &keys[i]));
                    failure.get_or_insert(e);
                }
            }
        }
        entry.dedup.store(&stored, now);
        entry.dedup.release(&released);
        if let Some(lines) = &lines {
            // Before waking pollers, so an event's placement is usually recorded before its
            // deliveries (lookups also join hops recorded a moment out of order).
            let kind = if topic.ends_with(DLQ_SUFFIX) {
                HopKind::DeadLettered
            } else {
                HopKind::Appended
            };
            for &(p, base) in &bases {
                self.lineage.record_placement_lines(
                    lines,
                    kind,
                    now,
                    topic,
                    p,
                    base,
                    &by_partition[&p],
                );
            }
            let duplicates: Vec<Hop> = (0..ids.len())
                .filter_map(|i| {
                    let (pos, dup) = positions[firsts[i]]?;
                    (dup || firsts[i] != i).then(|| {
                        Hop::event(HopKind::Duplicate, now, &ids[i]).position(
                            topic,
                            pos.partition,
                            pos.offset,
                        )
                    })
                })
                .collect();
            self.lineage.record(duplicates);
        }
        if !stored.is_empty() {
            entry.notify.notify_waiters();
        }
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                let first = firsts[i];
                let (position, duplicate) = positions[first].expect("every event was placed");
                Published {
                    id,
                    position,
                    duplicate: duplicate || first != i,
                }
            })
            .collect())
    }

    /// Appends one batch per partition, concurrently when there are several (each waits for its
    /// own fsync, so doing them one after another would add the sync latencies up). Returns each
    /// batch's base offset.
    fn append_groups(
        &self,
        entry: &TopicEntry,
        groups: &BTreeMap<u32, Vec<usize>>,
        mut records: Vec<RecordInput>,
    ) -> Vec<Result<u64, BrokerError>> {
        // Move each record into its partition's batch once (no copies of the payloads).
        let batches: Vec<(u32, Vec<RecordInput>)> = groups
            .iter()
            .map(|(&p, indexes)| {
                (
                    p,
                    indexes
                        .iter()
                        .map(|&i| std::mem::take(&mut records[i]))
                        .collect(),
                )
            })
            .collect();
        if batches.len() <= 1 {
            return batches
                .into_iter()
                .map(|(p, r)| self.append_records(entry, p, r))
                .collect();
        }
        // Encoded here, so that only the writes and syncs run on the extra threads, and the
        // records are freed by the thread that allocated them (the allocator's fast path).
        let encoded: Vec<(u32, Result<Vec<u8>, BrokerError>)> =
            batches.into_iter().map(|(p, r)| (p, encode(r))).collect();
        let mut encoded = encoded.into_iter();
        // This thread appends the first batch itself; the pool appends the others meanwhile.
        let (first_p, first_bytes) = encoded.next().expect("at least two batches");
        let pending: Vec<Pending> = encoded
            .map(|(p, bytes)| match self.partition(entry, p) {
                Ok(part) => self
                    .appenders
                    .run(move || Ok(part.append(&bytes?)?.base_offset)),
                Err(e) => Pending::Done(Err(e)),
            })
            .collect();
        let first = self
            .partition(entry, first_p)
            .and_then(|part| Ok(part.append(&first_bytes?)?.base_offset));
        std::iter::once(first)
            .chain(pending.into_iter().map(Pending::wait))
            .collect()
    }

    /// Appends `records` to partition `p` as one batch; returns its base offset.
    fn append_records(
        &self,
        entry: &TopicEntry,
        p: u32,
        records: Vec<RecordInput>,
    ) -> Result<u64, BrokerError> {
        let bytes = encode(records)?;
        Ok(self.partition(entry, p)?.append(&bytes)?.base_offset)
    }

    /// Reads up to `max` events from `partition` starting at `offset`. Returns them and the
    /// offset to read next.
    ///
    /// # Errors
    /// Not found, out of range, or a storage error.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max: usize,
    ) -> Result<(Vec<StoredEvent>, u64), BrokerError> {
        let entry = self.require(topic)?;
        let part = self.partition(&entry, partition)?;
        let max = max.min(READ_EVENTS_MAX);
        let mut out = Vec::new();
        let mut next = offset;
        let hw = part.high_watermark();
        if offset > hw || offset < part.log_start_offset() {
            return Err(BrokerError::OffsetOutOfRange {
                requested: offset,
                log_start_offset: part.log_start_offset(),
                high_watermark: hw,
            });
        }
        while out.len() < max && next < hw {
            let records = part.read_records(next, read_chunk_for(max - out.len()))?;
            if records.is_empty() {
                break;
            }
            for r in records.into_iter().take(max - out.len()) {
                next = r.offset as u64 + 1;
                out.push(StoredEvent {
                    partition,
                    offset: r.offset as u64,
                    event: CloudEvent::from_record(&r, topic, partition),
                });
            }
        }
        Ok((out, next))
    }

    /// The first offset of `partition` ingested at or after `time_ms` (the end if none).
    ///
    /// # Errors
    /// Not found, or a storage error.
    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        time_ms: i64,
    ) -> Result<u64, BrokerError> {
        let entry = self.require(topic)?;
        let part = self.partition(&entry, partition)?;
        Ok(part
            .offset_for_timestamp(time_ms)?
            .unwrap_or_else(|| part.high_watermark()))
    }

    fn bounds(entry: &TopicEntry) -> Vec<(u64, u64)> {
        entry
            .topic
            .partitions()
            .iter()
            .map(|p| (p.log_start_offset(), p.high_watermark()))
            .collect()
    }

    fn sub(&self, topic: &str, name: &str) -> Result<Arc<Mutex<Subscription>>, BrokerError> {
        self.subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_string(), name.to_string()))
            .cloned()
            .ok_or_else(|| BrokerError::SubscriptionNotFound {
                topic: topic.into(),
                name: name.into(),
            })
    }

    /// Creates a subscription, or confirms an identical one. Returns whether it was created.
    ///
    /// # Errors
    /// [`BrokerError::SubscriptionConflict`] if it exists with other settings; not found; I/O.
    pub fn put_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
    ) -> Result<bool, BrokerError> {
        self.put_subscription_from(topic, name, settings, None)
    }

    /// [`Broker::put_subscription`], with a new subscription starting at `from` instead of
    /// `settings.start` (a replay keeps the configured settings but starts elsewhere).
    ///
    /// # Errors
    /// As [`Broker::put_subscription`].
    pub fn put_subscription_from(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
        from: Option<Start>,
    ) -> Result<bool, BrokerError> {
        let entry = self.require(topic)?;
        if name.is_empty()
            || name.len() > 249
            || name.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'/')
        {
            return Err(BrokerError::InvalidArgument {
                field: "name".into(),
                reason: "1 to 249 bytes, no `/` and no control characters".into(),
            });
        }
        let _admin = lock(&self.admin);
        if let Ok(existing) = self.sub(topic, name) {
            return if lock(&existing).settings() == &settings {
                Ok(false)
            } else {
                Err(BrokerError::SubscriptionConflict { name: name.into() })
            };
        }
        let mut starts = Vec::new();
        for (p, part) in entry.topic.partitions().iter().enumerate() {
            starts.push(match from.unwrap_or(settings.start) {
                Start::Earliest => part.log_start_offset(),
                Start::Latest => part.high_watermark(),
                Start::Time(ms) => self.offset_for_time(topic, p as u32, ms)?,
                Start::Offset(o) => o.clamp(part.log_start_offset(), part.high_watermark()),
            });
        }
        let (sub, writes) = Subscription::create(topic, name, settings, &starts);
        self.store.apply(&writes)?;
        self.subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((topic.into(), name.into()), Arc::new(Mutex::new(sub)));
        Ok(true)
    }

    /// Deletes a subscription.
    ///
    /// # Errors
    /// Not found, or I/O.
    pub fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), BrokerError> {
        let _admin = lock(&self.admin);
        let sub = self.sub(topic, name)?;
        // Mark it first, so a call through a handle taken before the delete writes nothing after.
        lock(&sub).mark_deleted();
        self.store.apply(&[Write::DeleteSubscription {
            key: store::sub_key(topic, name),
        }])?;
        self.subs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(topic.into(), name.into()));
        Ok(())
    }

    /// A subscription's settings and counters.
    ///
    /// # Errors
    /// Not found.
    pub fn subscription(&self, topic: &str, name: &str) -> Result<SubscriptionInfo, BrokerError> {
        let entry = self.require(topic)?;
        let sub = self.sub(topic, name)?;
        let bounds = Self::bounds(&entry);
        let dlq_depth = self.dlq_depth(topic)?;
        let s = lock(&sub);
        Ok(SubscriptionInfo {
            name: name.into(),
            settings: s.settings().clone(),
            lag: s.lag(&bounds),
            in_flight: s.in_flight(self.clock.now_ms()),
            dlq_depth,
            positions: s.positions(),
        })
    }

    /// Every subscription of a topic.
    ///
    /// # Errors
    /// Not found.
    pub fn subscriptions(&self, topic: &str) -> Result<Vec<SubscriptionInfo>, BrokerError> {
        self.require(topic)?;
        let names: Vec<String> = self
            .subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, n)| n.clone())
            .collect();
        names.iter().map(|n| self.subscription(topic, n)).collect()
    }

    /// Events in `topic`'s DLQ not yet redriven.
    ///
    /// # Errors
    /// The state store could not be read.
    pub fn dlq_depth(&self, topic: &str) -> Result<u64, BrokerError> {
        let Some(dlq) = self.entry(&dlq_name(topic)) else {
            return Ok(0);
        };
        let cursor = self.redrive_cursor(topic, dlq.topic.partitions().len())?;
        Ok(dlq
            .topic
            .partitions()
            .iter()
            .zip(cursor)
            .map(|(p, c)| p.high_watermark().saturating_sub(c))
            .sum())
    }

    fn redrive_cursor(&self, topic: &str, partitions: usize) -> Result<Vec<u64>, BrokerError> {
        (0..partitions as u32)
            .map(|p| {
                Ok(self
                    .store
                    .position(&store::partition_key(&dlq_name(topic), REDRIVE_POSITION, p))?
                    .unwrap_or(0))
            })
            .collect()
    }

    /// Polls a subscription once (no waiting): events to deliver now, and when something next
    /// becomes due if nothing is.
    ///
    /// # Errors
    /// Not found, or a storage error.
    pub fn poll(
        &self,
        topic: &str,
        name: &str,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), BrokerError> {
        let entry = self.require(topic)?;
        let sub = self.sub(topic, name)?;
        let max = max.clamp(1, READ_EVENTS_MAX);
        let now = self.clock.now_ms();
        let mut s = lock(&sub);
        if s.is_deleted() {
            return Err(BrokerError::SubscriptionNotFound {
                topic: topic.into(),
                name: name.into(),
            });
        }
        let plan = s.poll(now, max, &Self::bounds(&entry));
        // Read what is to be delivered before persisting, so a read failure changes nothing
        // durable; in memory, dying events become available again, a cursor rewinds, and queue
        // locks simply expire.
        let cache = match self.read_events(
            &entry,
            topic,
            plan.takes
                .iter()
                .map(|t| (t.partition, t.offset))
                .chain(plan.dead.iter().map(|d| (d.partition, d.offset))),
        ) {
            Ok(cache) => cache,
            Err(e) => {
                s.undo_dead(&plan.dead);
                s.undo_takes(&plan.takes);
                return Err(e);
            }
        };
        if let Err(e) = self.store.apply(&plan.writes) {
            s.undo_dead(&plan.dead);
            s.undo_takes(&plan.takes);
            return Err(e.into());
        }
        // The deliveries are durable now; a failing dead-letter append must not cost them (the
        // dying events are retried by a later poll).
        if let Err(e) = self.dead_letter(&entry, name, &mut s, &plan.dead, &cache) {
            tracing::warn!(topic, subscription = name, error = %e, "dead-lettering failed; will retry");
        }
        if self.lineage.enabled() {
            self.lineage.record_positions(Positions {
                at_ms: now,
                kind: HopKind::Delivered,
                topic: topic.to_string(),
                subscription: name.to_string(),
                detail: None,
                items: plan
                    .takes
                    .iter()
                    .map(|t| (t.partition, t.offset, t.attempt))
                    .collect(),
            });
        }
        let ages: Vec<f64> = plan
            .takes
            .iter()
            .filter_map(|t| age_seconds(cache.get(&(t.partition, t.offset))?.time.as_deref(), now))
            .collect();
        self.ages.observe(topic, name, &ages);
        let deliveries = plan
            .takes
            .iter()
            .filter_map(|t| {
                let event = cache.get(&(t.partition, t.offset))?.clone();
                Some(Delivery {
                    stored: StoredEvent {
                        partition: t.partition,
                        offset: t.offset,
                        event,
                    },
                    attempt: t.attempt,
                })
            })
            .collect();
        Ok((deliveries, plan.next_due_ms))
    }

    /// Reads the events at the given positions (each read also caches its neighbours).
    fn read_events(
        &self,
        entry: &TopicEntry,
        topic: &str,
        positions: impl Iterator<Item = (u32, u64)>,
    ) -> Result<HashMap<(u32, u64), CloudEvent>, BrokerError> {
        let positions: Vec<(u32, u64)> = positions.collect();
        let chunk = read_chunk_for(positions.len());
        let mut cache: HashMap<(u32, u64), CloudEvent> = HashMap::new();
        for t in positions {
            if !cache.contains_key(&t) {
                let part = self.partition(entry, t.0)?;
                for r in part.read_records(t.1, chunk)? {
                    cache.insert(
                        (t.0, r.offset as u64),
                        CloudEvent::from_record(&r, topic, t.0),
                    );
                }
            }
        }
        Ok(cache)
    }

    /// Appends dead letters to `<topic>.dlq` (same partition), then records them finished.
    fn dead_letter(
        &self,
        entry: &TopicEntry,
        sub_name: &str,
        s: &mut Subscription,
        dead: &[DeadLetter],
        cache: &HashMap<(u32, u64), CloudEvent>,
    ) -> Result<(), BrokerError> {
        if dead.is_empty() {
            return Ok(());
        }
        let topic = entry.topic.name();
        let result = self.append_dead(
            topic,
            sub_name,
            entry.topic.partitions().len() as u32,
            dead,
            cache,
        );
        match result {
            Ok(()) => {
                let writes = s.finish_dead(dead);
                self.store.apply(&writes)?;
                Ok(())
            }
            Err(e) => {
                s.undo_dead(dead);
                Err(e)
            }
        }
    }

    fn append_dead(
        &self,
        topic: &str,
        sub_name: &str,
        partitions: u32,
        dead: &[DeadLetter],
        cache: &HashMap<(u32, u64), CloudEvent>,
    ) -> Result<(), BrokerError> {
        let dlq_entry = self.ensure_dlq(topic, partitions)?;
        let now = self.clock.now_ms();
        let time = chrono::DateTime::from_timestamp_millis(now)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let mut groups: BTreeMap<u32, Vec<RecordInput>> = BTreeMap::new();
        let mut hops = Vec::new();
        for d in dead {
            let Some(original) = cache.get(&(d.partition, d.offset)) else {
                continue;
            };
            if self.lineage.enabled() {
                let mut h = Hop::event(HopKind::DeadLettered, now, &original.id)
                    .attributes(original)
                    .position(topic, d.partition, d.offset);
                h.subscription = Some(sub_name.to_string());
                h.attempt = Some(d.attempts);
                h.detail = Some(d.error.clone());
                hops.push(h);
            }
            let mut e = original.clone();
            for (k, v) in [
                ("dlqtopic", topic.to_string()),
                ("dlqpartition", d.partition.to_string()),
                ("dlqoffset", d.offset.to_string()),
                ("dlqsubscription", sub_name.to_string()),
                ("dlqattempts", d.attempts.to_string()),
                ("dlqerror", d.error.clone()),
                ("dlqtime", time.clone()),
            ] {
                e.extensions.insert(k.into(), v);
            }
            groups
                .entry(d.partition)
                .or_default()
                .push(e.to_record(now));
        }
        for (p, records) in groups {
            self.append_records(&dlq_entry, p, records)?;
        }
        self.lineage.record(hops);
        dlq_entry.notify.notify_waiters();
        Ok(())
    }

    /// The DLQ of `topic`, created (with `partitions` partitions, kept forever) if missing.
    fn ensure_dlq(&self, topic: &str, partitions: u32) -> Result<Arc<TopicEntry>, BrokerError> {
        let dlq = dlq_name(topic);
        if self.entry(&dlq).is_none() {
            let _creating = lock(&self.dlq_create);
            if self.entry(&dlq).is_none() {
                match self.create_topic_in_log(&dlq, partitions, Retention::FOREVER) {
                    Ok(()) | Err(BrokerError::TopicExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.require(&dlq)
    }

    /// Dead-letters events that never reached `topic` (a pipeline's transform rejected them):
    /// they are published to `<topic>.dlq`, created if missing, deduplicated on `source` and
    /// `id` like any publish, so dead-lettering the same event twice stores it once. The caller
    /// has put the `dlq*` extensions (the error, the pipeline) on each event.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`] for `topic`, or as [`Broker::publish`].
    pub fn publish_dead(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<Vec<Published>, BrokerError> {
        let entry = self.require(topic)?;
        let dlq = self.ensure_dlq(topic, entry.topic.partitions().len() as u32)?;
        let published = self.publish(dlq.topic.name(), events)?;
        dlq.notify.notify_waiters();
        Ok(published)
    }

    /// The schema registry.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Validates every event's data against its subject (`<topic>-<type>`); all or nothing.
    /// Returns, per event, the schema id and version to record on it (`schemaid` and
    /// `schemaversion`) when it was validated.
    fn validate(
        &self,
        topic: &str,
        events: &[CloudEvent],
        parsed: &[Option<&serde_json::Value>],
    ) -> Result<Vec<Option<(u64, u32)>>, BrokerError> {
        let mut out = Vec::with_capacity(events.len());
        // One resolution per event type (and `dataschema`) of the request, not per event.
        let mut targets: HashMap<(&str, Option<&str>), Target> = HashMap::new();
        for (index, e) in events.iter().enumerate() {
            let target = targets
                .entry((e.ty.as_str(), e.dataschema.as_deref()))
                .or_insert_with(|| self.registry.resolve(topic, &e.ty, e.dataschema.as_deref()));
            let verdict = match parsed.get(index).copied().flatten() {
                Some(v) => target.check_value(Some(v)),
                None => target.check(e.data.as_deref()),
            };
            match verdict {
                Verdict::Unchecked => out.push(None),
                Verdict::Valid { id, version, .. } => out.push(Some((id, version))),
                Verdict::Invalid {
                    subject,
                    version,
                    violations,
                } => {
                    return Err(BrokerError::SchemaViolation {
                        index,
                        subject,
                        version,
                        violations,
                    });
                }
                Verdict::Unregistered { subject } => {
                    return Err(BrokerError::SchemaRequired { index, subject });
                }
            }
        }
        Ok(out)
    }

    /// A source's stored checkpoint (cursor or watermark), if any.
    ///
    /// # Errors
    /// A storage error.
    pub fn checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self.store.checkpoint(name)?)
    }

    /// Stores a source's checkpoint durably. Callers store it only after the events it covers
    /// were appended.
    ///
    /// # Errors
    /// A storage error, or a value over [`store::CHECKPOINT_BYTES_MAX`].
    pub fn put_checkpoint(&self, name: &str, value: &[u8]) -> Result<(), BrokerError> {
        Ok(self.store.put_checkpoint(name, value)?)
    }

    fn queue_sub(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<(Arc<TopicEntry>, Arc<Mutex<Subscription>>), BrokerError> {
        let entry = self.require(topic)?;
        let sub = self.sub(topic, name)?;
        if lock(&sub).settings().mode != Mode::Queue {
            return Err(BrokerError::WrongMode {
                name: name.into(),
                mode: "cursor",
            });
        }
        Ok((entry, sub))
    }

    /// Acks events of a queue subscription. Returns (acked, not in flight).
    ///
    /// # Errors
    /// Not found, wrong mode, or I/O.
    pub fn ack(
        &self,
        topic: &str,
        name: &str,
        items: &[(u32, u64)],
    ) -> Result<(usize, Vec<(u32, u64)>), BrokerError> {
        let (entry, sub) = self.queue_sub(topic, name)?;
        let mut s = lock(&sub);
        Self::not_deleted(&s, topic, name)?;
        let settled = s.ack(items);
        self.store.apply(&settled.writes)?;
        self.record_settled(HopKind::Acked, topic, name, &settled, None);
        // An ack can free a full window: wake long polls waiting for it.
        entry.notify.notify_waiters();
        Ok((settled.count, settled.not_in_flight))
    }

    /// Nacks events of a queue subscription. Returns (nacked, not in flight).
    ///
    /// # Errors
    /// Not found, wrong mode, or I/O.
    pub fn nack(
        &self,
        topic: &str,
        name: &str,
        items: &[(u32, u64)],
        retry_in_ms: Option<u64>,
        reject: bool,
        error: Option<&str>,
    ) -> Result<(usize, Vec<(u32, u64)>), BrokerError> {
        let (entry, sub) = self.queue_sub(topic, name)?;
        let mut s = lock(&sub);
        Self::not_deleted(&s, topic, name)?;
        let mut random = || self.random();
        let settled = s.nack(
            items,
            self.clock.now_ms(),
            retry_in_ms,
            reject,
            error,
            &mut random,
        );
        let positions = settled.dead.iter().map(|d| (d.partition, d.offset));
        let read = self
            .store
            .apply(&settled.writes)
            .map_err(BrokerError::from)
            .and_then(|()| self.read_events(&entry, topic, positions));
        let cache = match read {
            Ok(cache) => cache,
            Err(e) => {
                s.undo_dead(&settled.dead);
                return Err(e);
            }
        };
        // The nacks are durable now (a dead letter's own hop follows its DLQ append).
        self.record_settled(HopKind::Nacked, topic, name, &settled, error);
        self.dead_letter(&entry, name, &mut s, &settled.dead, &cache)?;
        // A nack (say, `retry_in_ms: 0`) can make an event deliverable now.
        entry.notify.notify_waiters();
        Ok((settled.count, settled.not_in_flight))
    }

    /// Records an ack's or a nack's hops.
    fn record_settled(
        &self,
        kind: HopKind,
        topic: &str,
        name: &str,
        settled: &Settled,
        error: Option<&str>,
    ) {
        if !self.lineage.enabled() {
            return;
        }
        self.lineage.record_positions(Positions {
            at_ms: self.clock.now_ms(),
            kind,
            topic: topic.to_string(),
            subscription: name.to_string(),
            detail: error.map(str::to_string),
            items: settled
                .items
                .iter()
                .map(|t| (t.partition, t.offset, t.attempt))
                .collect(),
        });
    }

    /// Event ages at delivery, for `/metrics`.
    #[must_use]
    pub fn event_ages(&self) -> &EventAges {
        &self.ages
    }

    /// The lineage recorder (lookups: [`Lineage::trace`], [`Lineage::correlation`]).
    #[must_use]
    pub fn lineage(&self) -> &Arc<Lineage> {
        &self.lineage
    }

    fn not_deleted(s: &Subscription, topic: &str, name: &str) -> Result<(), BrokerError> {
        if s.is_deleted() {
            return Err(BrokerError::SubscriptionNotFound {
                topic: topic.into(),
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Commits cursor offsets.
    ///
    /// # Errors
    /// Not found, wrong mode, [`BrokerError::CommitRegression`], out of range, or I/O.
    pub fn commit(
        &self,
        topic: &str,
        name: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), BrokerError> {
        self.commit_cursor(
            topic,
            name,
            offsets,
            false,
            raw::commit_marks(topic, name, offsets),
        )
    }

    /// Commits cursor offsets; `also` is written in the same transaction.
    fn commit_cursor(
        &self,
        topic: &str,
        name: &str,
        offsets: &[(u32, u64)],
        rewind: bool,
        also: Vec<Write>,
    ) -> Result<(), BrokerError> {
        let entry = self.require(topic)?;
        let sub = self.sub(topic, name)?;
        let mut s = lock(&sub);
        Self::not_deleted(&s, topic, name)?;
        if s.settings().mode != Mode::Cursor {
            return Err(BrokerError::WrongMode {
                name: name.into(),
                mode: "queue",
            });
        }
        let bounds = Self::bounds(&entry);
        let writes = s
            .commit_checked(offsets, &bounds, rewind)
            .map_err(|e| match e {
                CommitError::Regression {
                    partition,
                    committed,
                    requested,
                } => BrokerError::CommitRegression {
                    partition,
                    committed,
                    requested,
                },
                CommitError::OutOfRange {
                    partition,
                    requested,
                } => match bounds.get(partition as usize) {
                    Some(&(log_start_offset, high_watermark)) => BrokerError::OffsetOutOfRange {
                        requested,
                        log_start_offset,
                        high_watermark,
                    },
                    None => BrokerError::PartitionNotFound {
                        topic: topic.into(),
                        partition,
                    },
                },
            })?;
        let mut writes = writes;
        writes.extend(also);
        self.store.apply(&writes)?;
        Ok(())
    }

    /// DLQ events of `topic` not yet redriven, up to `max`.
    ///
    /// # Errors
    /// Not found, or a storage error.
    pub fn dlq(&self, topic: &str, max: usize) -> Result<Vec<StoredEvent>, BrokerError> {
        self.require(topic)?;
        let Some(dlq) = self.entry(&dlq_name(topic)) else {
            return Ok(Vec::new());
        };
        let cursor = self.redrive_cursor(topic, dlq.topic.partitions().len())?;
        let mut out = Vec::new();
        for (p, from) in cursor.into_iter().enumerate() {
            let remaining = max.saturating_sub(out.len());
            if remaining == 0 {
                break;
            }
            out.extend(self.read(&dlq_name(topic), p as u32, from, remaining)?.0);
        }
        Ok(out)
    }

    /// Appends every DLQ event not yet redriven back to `topic` (without its `dlq*`
    /// extensions, skipping dedup), durably moving the redrive cursor past each appended run.
    /// Returns how many. At-least-once: a crash between an append and its cursor write
    /// redrives that run again.
    ///
    /// # Errors
    /// Not found, or a storage error (events appended before it stay appended, and the cursor
    /// has moved past exactly those).
    pub fn redrive(&self, topic: &str) -> Result<usize, BrokerError> {
        let entry = self.require(topic)?;
        let Some(dlq) = self.entry(&dlq_name(topic)) else {
            return Ok(0);
        };
        let _admin = lock(&self.admin);
        let cursor = self.redrive_cursor(topic, dlq.topic.partitions().len())?;
        let partitions = entry.topic.partitions().len() as u32;
        let mut count = 0;
        for (p, mut from) in cursor.into_iter().enumerate() {
            loop {
                let (events, next) =
                    self.read(&dlq_name(topic), p as u32, from, READ_EVENTS_MAX)?;
                if events.is_empty() {
                    break;
                }
                // Runs of consecutive DLQ events bound for the same partition, in DLQ order: the
                // cursor moves past each run as soon as it is appended, so a failure later in the
                // chunk never appends the earlier runs twice. (A crash between an append and its
                // cursor write can: redrive is at-least-once.)
                let now = self.clock.now_ms();
                let mut run: Option<(u32, BatchBuilder)> = None;
                let mut hops: Vec<Hop> = Vec::new();
                for (i, stored) in events.iter().enumerate() {
                    let mut e = stored.event.clone();
                    e.extensions.retain(|k, _| !k.starts_with("dlq"));
                    if self.lineage.enabled() {
                        hops.push(Hop::event(HopKind::Redriven, now, &e.id).attributes(&e));
                    }
                    let target =
                        partition_for(e.partition_key().unwrap_or(&e.id).as_bytes(), partitions);
                    let (_, batch) = run.get_or_insert_with(|| (target, BatchBuilder::new()));
                    batch.push(e.to_record(now));
                    let run_ends = events.get(i + 1).is_none_or(|n| {
                        let k = n.event.partition_key().unwrap_or(&n.event.id);
                        partition_for(k.as_bytes(), partitions) != target
                    });
                    if run_ends {
                        let (target, batch) = run.take().expect("a run is open");
                        let bytes = batch
                            .build()
                            .map_err(|e| BrokerError::Internal(e.to_string()))?;
                        let base = self.partition(&entry, target)?.append(&bytes)?.base_offset;
                        // This run's hops (the last `batch.len()` of `hops`) get their new places.
                        let from = hops.len().saturating_sub(batch.len());
                        let placed: Vec<Hop> = hops
                            .drain(from..)
                            .enumerate()
                            .map(|(k, h)| h.position(topic, target, base + k as u64))
                            .collect();
                        self.lineage.record(placed);
                        self.store.apply(&[Write::SetPosition {
                            key: store::partition_key(&dlq_name(topic), REDRIVE_POSITION, p as u32),
                            offset: stored.offset + 1,
                        }])?;
                    }
                }
                count += events.len();
                from = next;
            }
        }
        entry.notify.notify_waiters();
        Ok(count)
    }

    /// Syncs every partition and writes final checkpoints; afterwards appends are refused
    /// (graceful shutdown, once requests have drained).
    ///
    /// # Errors
    /// The first partition that failed its final sync (the others are still closed).
    pub fn close(&self) -> Result<(), BrokerError> {
        self.lineage.close();
        let mut first = None;
        for t in self.log.topics() {
            for p in t.partitions() {
                if let Err(e) = p.close() {
                    first.get_or_insert(BrokerError::from(e));
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn random(&self) -> f64 {
        let mut x = lock(&self.rng);
        // xorshift64: jitter only, not security.
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dlq_name(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

fn describe(t: &Topic) -> TopicInfo {
    TopicInfo {
        name: t.name().to_string(),
        partitions: t.partitions().len() as u32,
        retention: t.config().partition.retention,
        offsets: t
            .partitions()
            .iter()
            .enumerate()
            .map(|(p, part)| PartitionOffsets {
                partition: p as u32,
                log_start_offset: part.log_start_offset(),
                high_watermark: part.high_watermark(),
            })
            .collect(),
    }
}

/// `records` as one batch.
fn encode(records: Vec<RecordInput>) -> Result<Vec<u8>, BrokerError> {
    let mut b = BatchBuilder::new();
    for r in records {
        b.push(r);
    }
    b.build().map_err(|e| BrokerError::Internal(e.to_string()))
}

fn record_size(r: &RecordInput) -> usize {
    size_of_parts(r.key.as_ref(), r.value.as_ref(), &r.headers)
}

/// What a record's key, value and headers count against [`EVENT_BYTES_MAX`] (a produced
/// record and a published event alike).
fn size_of_parts(
    key: Option<&Vec<u8>>,
    value: Option<&Vec<u8>>,
    headers: &[gearbox_log::batch::RecordHeader],
) -> usize {
    key.map_or(0, Vec::len)
        + value.map_or(0, Vec::len)
        + headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, Vec::len) + 2)
            .sum::<usize>()
        + 32
}
