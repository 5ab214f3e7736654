//! The broker's byte-level side, for the Kafka listener: appending a producer's RecordBatch as
//! it came (its producer id, sequence and timestamps kept), reading stored batches as they are
//! on disk, and consumer-group offsets kept as cursor-mode subscriptions (one model: a Kafka
//! group `g` reading topic `t` is the subscription `t/g`, visible from both sides).

use super::{Broker, BrokerError, lock};
use crate::dedup::{Key, Position};
use crate::event::CloudEvent;
use crate::lineage::{HopKind, PlacementLines};
use crate::registry::Verdict;
use crate::store::{self, Write};
use crate::subscription::{Mode, Settings, Start};
use gearbox_log::Batches;
use gearbox_log::batch::{self, Record};

/// Where a group subscription that the Kafka side creates starts, on partitions it has not
/// committed yet (Kafka clients apply their own `auto.offset.reset` only when a group has no
/// commit at all for the topic; see `docs/kafka.md`).
pub const KAFKA_GROUP_START: Start = Start::Earliest;

/// Marker rows kept with a group's subscription (in the positions table, under partition
/// numbers no topic has: at most `PARTITIONS_PER_TOPIC_MAX` partitions exist): the
/// subscription was created by a group commit, and partition `p` was committed by the group.
const GROUP_CREATED: u32 = u32::MAX;
const COMMITTED: u32 = 1 << 31;
const _: () = assert!(gearbox_log::PARTITIONS_PER_TOPIC_MAX < COMMITTED);

fn mark(topic: &str, group: &str, row: u32) -> Write {
    Write::SetPosition {
        key: store::partition_key(topic, group, row),
        offset: 1,
    }
}

/// The rows that say `offsets`' partitions were committed: written with every cursor commit
/// (over HTTP too), under the subscription's key, so deleting it deletes them.
pub(super) fn commit_marks(topic: &str, name: &str, offsets: &[(u32, u64)]) -> Vec<Write> {
    offsets
        .iter()
        .map(|&(p, _)| mark(topic, name, COMMITTED | p))
        .collect()
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedBatch {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Offset of its last record.
    pub last_offset: u64,
    /// The partition's first readable offset after the append.
    pub log_start_offset: u64,
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

fn record_bytes(r: &Record) -> usize {
    super::size_of_parts(r.key.as_ref(), r.value.as_ref(), &r.headers)
}

impl Broker {
    /// Appends one uncompressed RecordBatch v2 to `partition` of `topic` as it is (producer id,
    /// epoch, sequence and timestamps kept; the base offset assigned), after checking it: the
    /// CRC and framing, every record decodes, every record is at most
    /// [`super::EVENT_BYTES_MAX`], and, on a topic whose schemas are enforced, every record's
    /// event passes its schema. Records that carry `ce_*` headers enter the dedup window, so a
    /// later HTTP publish of the same event is a duplicate; lineage records the placements.
    ///
    /// # Errors
    /// [`BrokerError::InvalidBatch`] (nothing written), [`BrokerError::EventTooLarge`],
    /// [`BrokerError::SchemaViolation`] / [`BrokerError::SchemaRequired`], not found, or a
    /// storage error.
    pub fn append_batch(
        &self,
        topic: &str,
        partition: u32,
        bytes: &[u8],
    ) -> Result<AppendedBatch, BrokerError> {
        let entry = self.require(topic)?;
        let part = self.partition(&entry, partition)?;
        batch::verify(bytes).map_err(|e| BrokerError::InvalidBatch(e.to_string()))?;
        let records = batch::decode(bytes).map_err(|e| BrokerError::InvalidBatch(e.to_string()))?;
        for (index, r) in records.iter().enumerate() {
            let size = record_bytes(r);
            if size > super::EVENT_BYTES_MAX {
                return Err(BrokerError::EventTooLarge {
                    index,
                    size,
                    max: super::EVENT_BYTES_MAX,
                });
            }
        }
        let lineage = self.lineage.enabled();
        let enforced = self.registry.applies_to(topic);
        let events: Vec<CloudEvent> = if lineage || enforced {
            records
                .iter()
                .map(|r| CloudEvent::from_record(r, topic, partition))
                .collect()
        } else {
            Vec::new()
        };
        if enforced {
            self.validate_records(topic, &records, &events)?;
        }
        let appended = part.append(bytes)?;
        let now = self.clock.now_ms();
        let base = appended.base_offset;
        let keys: Vec<(Key, Position)> = records
            .iter()
            .enumerate()
            .filter_map(|(k, r)| {
                let id = header(r, "ce_id")?;
                let source = header(r, "ce_source")?;
                Some((
                    entry.dedup.key(source, id),
                    Position {
                        partition,
                        offset: base + k as u64,
                    },
                ))
            })
            .collect();
        if !keys.is_empty() && !topic.ends_with(super::DLQ_SUFFIX) {
            let stored: Vec<(&Key, Position)> = keys.iter().map(|(k, p)| (k, *p)).collect();
            entry.dedup.store(&stored, now);
        }
        if lineage {
            let dlq = topic.ends_with(super::DLQ_SUFFIX);
            let lines = PlacementLines::of(&events, dlq);
            let kind = if dlq {
                HopKind::DeadLettered
            } else {
                HopKind::Appended
            };
            let indexes: Vec<usize> = (0..events.len()).collect();
            self.lineage
                .record_placement_lines(&lines, kind, now, topic, partition, base, &indexes);
        }
        entry.notify.notify_waiters();
        Ok(AppendedBatch {
            base_offset: base,
            last_offset: appended.last_offset,
            log_start_offset: part.log_start_offset(),
        })
    }

    /// Schema checks of produced records: a value in the Confluent wire format against the
    /// schema its id names ([`crate::registry::framed`]), any other record as its event.
    fn validate_records(
        &self,
        topic: &str,
        records: &[Record],
        events: &[CloudEvent],
    ) -> Result<(), BrokerError> {
        let mut framed = self.registry.framed(topic);
        let mut plain = Vec::new();
        for (index, r) in records.iter().enumerate() {
            match r.value.as_deref().and_then(|v| framed.check(v)) {
                None => plain.push(index),
                Some(Verdict::Invalid {
                    subject,
                    version,
                    violations,
                }) => {
                    return Err(BrokerError::SchemaViolation {
                        index,
                        subject,
                        version,
                        violations,
                    });
                }
                Some(Verdict::Unregistered { subject }) => {
                    return Err(BrokerError::SchemaRequired { index, subject });
                }
                Some(Verdict::Valid { .. } | Verdict::Unchecked) => {}
            }
        }
        let unframed: Vec<CloudEvent> = plain.iter().map(|&i| events[i].clone()).collect();
        self.validate(topic, &unframed, &[]).map_err(|e| match e {
            // Name the record by its index in the batch, not among the unframed ones.
            BrokerError::SchemaViolation {
                index,
                subject,
                version,
                violations,
            } => BrokerError::SchemaViolation {
                index: plain[index],
                subject,
                version,
                violations,
            },
            BrokerError::SchemaRequired { index, subject } => BrokerError::SchemaRequired {
                index: plain[index],
                subject,
            },
            other => other,
        })?;
        Ok(())
    }

    /// Stored batches of `partition` from the one holding `offset`, up to about `max_bytes`
    /// (always one whole batch when `offset` is below the high-water mark), exactly as on disk.
    ///
    /// # Errors
    /// Not found, [`BrokerError::OffsetOutOfRange`], or a storage error.
    pub fn read_batches(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Batches, BrokerError> {
        let entry = self.require(topic)?;
        let part = self.partition(&entry, partition)?;
        Ok(part.read(offset, max_bytes)?)
    }

    /// Each partition's `(log start, high-water mark)`.
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`].
    pub fn partition_bounds(&self, topic: &str) -> Result<Vec<(u64, u64)>, BrokerError> {
        let entry = self.require(topic)?;
        Ok(Self::bounds(&entry))
    }

    /// The committed offsets of the subscription `topic/group`, one per partition, or `None`
    /// when there is none. A partition is `None` when the group has never committed it and the
    /// subscription was created by a group commit (a Kafka client then applies its own
    /// `auto.offset.reset`); a subscription created otherwise answers with its positions for
    /// every partition (a queue-mode one with its floors).
    ///
    /// # Errors
    /// [`BrokerError::TopicNotFound`], or the state store could not be read.
    pub fn group_offsets(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<Vec<Option<u64>>>, BrokerError> {
        self.require(topic)?;
        let Ok(sub) = self.sub(topic, group) else {
            return Ok(None);
        };
        let positions = lock(&sub).positions();
        let by_group = self
            .store
            .position(&store::partition_key(topic, group, GROUP_CREATED))?
            .is_some();
        let mut out = Vec::with_capacity(positions.len());
        for (p, position) in positions.into_iter().enumerate() {
            let committed = !by_group
                || self
                    .store
                    .position(&store::partition_key(topic, group, COMMITTED | p as u32))?
                    .is_some();
            out.push(committed.then_some(position));
        }
        Ok(Some(out))
    }

    /// Commits a consumer group's offsets for `topic`: into the cursor subscription
    /// `topic/group`, created (starting at [`KAFKA_GROUP_START`]) if there is none. Unlike
    /// [`Broker::commit`], an offset below the committed one is accepted (a Kafka consumer may
    /// seek back and commit there). Durable before it returns.
    ///
    /// # Errors
    /// Not found, [`BrokerError::WrongMode`] if `topic/group` is a queue subscription, out of
    /// range (above the high-water mark), or I/O.
    pub fn commit_group_offsets(
        &self,
        topic: &str,
        group: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), BrokerError> {
        let mut marks = Vec::new();
        if self.sub(topic, group).is_err() {
            let mut settings = Settings::defaults(Mode::Cursor);
            settings.start = KAFKA_GROUP_START;
            match self.put_subscription(topic, group, settings) {
                Ok(true) => marks.push(mark(topic, group, GROUP_CREATED)),
                Ok(false) | Err(BrokerError::SubscriptionConflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        marks.extend(commit_marks(topic, group, offsets));
        self.commit_cursor(topic, group, offsets, true, marks)
    }

    /// Names of the subscriptions of every topic, as `(topic, name)` (the Kafka side lists
    /// cursor subscriptions as groups).
    #[must_use]
    pub fn subscription_names(&self) -> Vec<(String, String)> {
        self.subs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}
