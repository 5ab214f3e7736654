//! Idempotent producers: producer ids, and per partition each producer's epoch and recent
//! sequence ranges, so a retried batch is answered with its first offset instead of being
//! stored twice, and a gap in sequences is refused.
//!
//! Producer ids are handed out from blocks reserved durably in the state store, so no id is
//! ever given twice, across restarts too. Sequence state is kept in memory and rebuilt, on the
//! first idempotent produce to a partition after a start, from the batch headers of the
//! partition's last [`STATE_SCAN_OFFSETS`] offsets: a retry of a batch that was acknowledged
//! just before a crash is still recognised after the restart.
//!
//! Invariants: the check of a batch's sequence and its append happen under the producer's own
//! lock (one producer's batches to one partition are appended one at a time; different
//! producers do not wait for each other).

use gearbox_core::broker::{AppendedBatch, Broker, BrokerError};
use gearbox_log::batch::BatchHeader;
use kafka_protocol::error::ResponseError;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Producer ids reserved per write to the state store.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Batches remembered per producer and partition (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence is 5).
pub const RECENT_BATCHES_MAX: usize = 5;
/// Producers remembered per partition; the least recently used is forgotten beyond it.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
/// How far back, in offsets, a partition's producer state is rebuilt from after a start.
pub const STATE_SCAN_OFFSETS: u64 = 100_000;
/// Bytes read per step of that rebuild.
const STATE_SCAN_CHUNK_BYTES: usize = 4 << 20;

const NEXT_ID_CHECKPOINT: &str = "kafka/next-producer-id";

/// One batch a producer has written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    recent: VecDeque<Recent>,
    used: u64,
    /// The epoch was bumped here (InitProducerId): its first batch must start at sequence 0.
    bumped: bool,
}

/// One partition's producers, shared by the requests writing to it.
type Shared = Arc<Mutex<PartitionProducers>>;

#[derive(Debug, Default)]
struct PartitionProducers {
    producers: HashMap<i64, Arc<Mutex<Producer>>>,
    tick: u64,
    /// Rebuilt from the log (done once, on first use, under this partition's own lock).
    loaded: bool,
}

/// A batch's producer fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    /// Producer id (-1: not idempotent).
    pub producer_id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// First sequence number.
    pub first_seq: i32,
    /// Last sequence number (wrapping after `i32::MAX`).
    pub last_seq: i32,
}

impl Sequenced {
    /// The producer fields of a batch header.
    #[must_use]
    pub fn of(h: &BatchHeader) -> Sequenced {
        Sequenced {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            first_seq: h.base_sequence,
            last_seq: add_seq(h.base_sequence, h.last_offset_delta),
        }
    }
}

/// `seq + delta`, wrapping after `i32::MAX` to 0 as Kafka's sequences do.
#[must_use]
pub fn add_seq(seq: i32, delta: i32) -> i32 {
    ((i64::from(seq) + i64::from(delta)) % (i64::from(i32::MAX) + 1)) as i32
}

/// What the check of a batch found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Append it.
    Append,
    /// Already stored at these offsets.
    Duplicate(u64),
}

/// Why a batch was refused, as a Kafka error code with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The Kafka error code.
    pub code: i16,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    fn new(e: ResponseError, message: String) -> Refusal {
        Refusal {
            code: e.code(),
            message,
        }
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Refusal {
        Refusal {
            code: crate::errors::code_for(&e),
            message: e.to_string(),
        }
    }
}

/// The result of an idempotent append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Where the batch's first record is.
    pub base_offset: u64,
    /// Whether it had been stored before (a retry).
    pub duplicate: bool,
}

/// Producer ids and sequence state of every partition.
#[derive(Debug)]
pub struct Producers {
    broker: Arc<Broker>,
    /// `(next id, end of the reserved block)`.
    ids: Mutex<(i64, i64)>,
    partitions: Mutex<HashMap<(String, u32), Shared>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Producers {
    /// Producer state over `broker`.
    #[must_use]
    pub fn new(broker: Arc<Broker>) -> Producers {
        Producers {
            broker,
            ids: Mutex::new((0, 0)),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// A new producer id, never handed out before in this data directory. Blocks on a state
    /// store write once per [`PRODUCER_ID_BLOCK`] ids.
    ///
    /// # Errors
    /// The state store failed.
    pub fn allocate(&self) -> Result<i64, BrokerError> {
        let mut ids = lock(&self.ids);
        if ids.0 >= ids.1 {
            let start = match self.broker.checkpoint(NEXT_ID_CHECKPOINT)? {
                Some(v) => String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0),
                None => 0,
            };
            let end = start + PRODUCER_ID_BLOCK;
            self.broker
                .put_checkpoint(NEXT_ID_CHECKPOINT, end.to_string().as_bytes())?;
            *ids = (start, end);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Forgets `producer_id`'s sequences everywhere (an epoch bump starts them again at 0).
    pub fn bump(&self, producer_id: i64, epoch: i16) {
        let parts: Vec<Shared> = lock(&self.partitions).values().cloned().collect();
        for part in parts {
            if let Some(p) = lock(&part).producers.get(&producer_id) {
                let mut p = lock(p);
                p.epoch = epoch;
                p.recent.clear();
                p.bumped = true;
            }
        }
    }

    /// The partition's producers, rebuilt from the log on first use. The rebuild holds only
    /// this partition's lock, so other partitions' produces do not wait for it.
    fn partition(&self, topic: &str, partition: u32) -> Shared {
        let shared = lock(&self.partitions)
            .entry((topic.to_string(), partition))
            .or_default()
            .clone();
        {
            let mut p = lock(&shared);
            if !p.loaded {
                *p = self.rebuild(topic, partition);
                p.loaded = true;
            }
        }
        shared
    }

    /// The producers of the partition's last [`STATE_SCAN_OFFSETS`] offsets, from the batch
    /// headers. An unreadable range ends the scan (the partition reports it on reads).
    fn rebuild(&self, topic: &str, partition: u32) -> PartitionProducers {
        let mut out = PartitionProducers::default();
        let Ok(bounds) = self.broker.partition_bounds(topic) else {
            return out;
        };
        let Some(&(start, end)) = bounds.get(partition as usize) else {
            return out;
        };
        let mut next = end.saturating_sub(STATE_SCAN_OFFSETS).max(start);
        while next < end {
            let Ok(read) = self
                .broker
                .read_batches(topic, partition, next, STATE_SCAN_CHUNK_BYTES)
            else {
                break;
            };
            let Some(last) = read.batches.last() else {
                break;
            };
            next = last.last_offset + 1;
            for b in &read.batches {
                let Ok(h) = BatchHeader::parse(&b.bytes) else {
                    continue;
                };
                if h.producer_id < 0 {
                    continue;
                }
                let s = Sequenced::of(&h);
                out.tick += 1;
                let tick = out.tick;
                let entry = out.producers.entry(s.producer_id).or_default();
                let mut p = lock(entry);
                p.used = tick;
                p.record(
                    s.epoch,
                    Recent {
                        first_seq: s.first_seq,
                        last_seq: s.last_seq,
                        base_offset: b.base_offset,
                        last_offset: b.last_offset,
                    },
                );
            }
        }
        out
    }

    /// Appends `bytes` (a checked, uncompressed batch whose producer fields are `seq`) to the
    /// partition if its sequence follows the producer's last one; answers a retry of a stored
    /// batch with that batch's offset.
    ///
    /// # Errors
    /// A [`Refusal`]: INVALID_PRODUCER_EPOCH for an old epoch, OUT_OF_ORDER_SEQUENCE_NUMBER for
    /// a gap or a new epoch not starting at 0, or the append's own error.
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        seq: Sequenced,
        bytes: &[u8],
    ) -> Result<Placed, Refusal> {
        if seq.producer_id < 0 {
            let a = self.broker.append_batch(topic, partition, bytes)?;
            return Ok(placed(a, false));
        }
        let part = self.partition(topic, partition);
        let producer = {
            let mut part = lock(&part);
            part.tick += 1;
            let tick = part.tick;
            if !part.producers.contains_key(&seq.producer_id)
                && part.producers.len() >= PRODUCERS_PER_PARTITION_MAX
            {
                evict_oldest(&mut part);
            }
            let producer = part
                .producers
                .entry(seq.producer_id)
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Producer {
                        epoch: seq.epoch,
                        ..Producer::default()
                    }))
                })
                .clone();
            lock(&producer).used = tick;
            producer
        };
        let mut p = lock(&producer);
        match check(&p, seq)? {
            Check::Duplicate(base_offset) => Ok(Placed {
                base_offset,
                duplicate: true,
            }),
            Check::Append => {
                let a = self.broker.append_batch(topic, partition, bytes)?;
                p.record(
                    seq.epoch,
                    Recent {
                        first_seq: seq.first_seq,
                        last_seq: seq.last_seq,
                        base_offset: a.base_offset,
                        last_offset: a.last_offset,
                    },
                );
                Ok(placed(a, false))
            }
        }
    }

    /// Producers remembered for a partition (for tests and stats).
    #[must_use]
    pub fn remembered(&self, topic: &str, partition: u32) -> usize {
        lock(&self.partition(topic, partition)).producers.len()
    }
}

fn placed(a: AppendedBatch, duplicate: bool) -> Placed {
    Placed {
        base_offset: a.base_offset,
        duplicate,
    }
}

impl Producer {
    /// A batch this producer wrote at `epoch`: a new epoch forgets the old one's batches.
    fn record(&mut self, epoch: i16, r: Recent) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.recent.clear();
        }
        self.bumped = false;
        push_recent(self, r);
    }
}

fn push_recent(p: &mut Producer, r: Recent) {
    if p.recent.len() == RECENT_BATCHES_MAX {
        p.recent.pop_front();
    }
    p.recent.push_back(r);
}

fn evict_oldest(part: &mut PartitionProducers) {
    // Producers whose lock is held are appending right now; never pick those.
    let oldest = part
        .producers
        .iter()
        .filter_map(|(id, p)| p.try_lock().ok().map(|p| (p.used, *id)))
        .min();
    if let Some((_, id)) = oldest {
        part.producers.remove(&id);
    }
}

fn check(p: &Producer, seq: Sequenced) -> Result<Check, Refusal> {
    if seq.epoch < p.epoch {
        return Err(Refusal::new(
            ResponseError::InvalidProducerEpoch,
            format!(
                "producer {} epoch {} is older than the current epoch {}",
                seq.producer_id, seq.epoch, p.epoch
            ),
        ));
    }
    if seq.epoch > p.epoch || p.recent.is_empty() {
        // A new epoch starts at 0. A producer with no state here (new, or forgotten) is
        // accepted at any sequence, as Kafka does since KIP-360.
        let known = !p.recent.is_empty() || (p.bumped && seq.epoch == p.epoch);
        if (seq.epoch > p.epoch || p.bumped) && seq.first_seq != 0 && known {
            return Err(Refusal::new(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {} epoch {} must start at sequence 0, not {}",
                    seq.producer_id, seq.epoch, seq.first_seq
                ),
            ));
        }
        return Ok(Check::Append);
    }
    if let Some(r) = p
        .recent
        .iter()
        .find(|r| r.first_seq == seq.first_seq && r.last_seq == seq.last_seq)
    {
        return Ok(Check::Duplicate(r.base_offset));
    }
    let last = p.recent.back().map_or(-1, |r| r.last_seq);
    let expected = add_seq(last, 1);
    if seq.first_seq != expected {
        return Err(Refusal::new(
            ResponseError::OutOfOrderSequenceNumber,
            format!(
                "producer {} sent sequence {} but {} was expected",
                seq.producer_id, seq.first_seq, expected
            ),
        ));
    }
    Ok(Check::Append)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(epoch: i16, first: i32, count: i32) -> Sequenced {
        Sequenced {
            producer_id: 7,
            epoch,
            first_seq: first,
            last_seq: add_seq(first, count - 1),
        }
    }

    fn with(recent: &[(i32, i32, u64)], epoch: i16) -> Producer {
        let mut p = Producer {
            epoch,
            ..Producer::default()
        };
        for &(f, l, o) in recent {
            push_recent(
                &mut p,
                Recent {
                    first_seq: f,
                    last_seq: l,
                    base_offset: o,
                    last_offset: o + (l - f) as u64,
                },
            );
        }
        p
    }

    #[test]
    fn sequences_follow_on_and_retries_are_recognised() {
        let p = with(&[(0, 4, 10), (5, 9, 15)], 0);
        assert_eq!(check(&p, seq(0, 10, 3)), Ok(Check::Append));
        assert_eq!(check(&p, seq(0, 5, 5)), Ok(Check::Duplicate(15)));
        assert_eq!(check(&p, seq(0, 0, 5)), Ok(Check::Duplicate(10)));
        let gap = check(&p, seq(0, 12, 1)).unwrap_err();
        assert_eq!(gap.code, ResponseError::OutOfOrderSequenceNumber.code());
        assert!(
            gap.message.contains("12") && gap.message.contains("10"),
            "{}",
            gap.message
        );
    }

    #[test]
    fn epochs_fence_and_restart_at_zero() {
        let p = with(&[(0, 4, 10)], 3);
        let old = check(&p, seq(2, 5, 1)).unwrap_err();
        assert_eq!(old.code, ResponseError::InvalidProducerEpoch.code());
        assert_eq!(check(&p, seq(4, 0, 1)), Ok(Check::Append));
        let bad = check(&p, seq(4, 5, 1)).unwrap_err();
        assert_eq!(bad.code, ResponseError::OutOfOrderSequenceNumber.code());
        // No state: any sequence is accepted.
        assert_eq!(check(&with(&[], 0), seq(0, 42, 1)), Ok(Check::Append));
        // Bumped here: the bumped epoch starts at 0.
        let mut bumped = with(&[], 5);
        bumped.bumped = true;
        let e = check(&bumped, seq(5, 3, 1)).unwrap_err();
        assert_eq!(e.code, ResponseError::OutOfOrderSequenceNumber.code());
        assert_eq!(check(&bumped, seq(5, 0, 1)), Ok(Check::Append));
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        assert_eq!(add_seq(i32::MAX, 1), 0);
        assert_eq!(add_seq(i32::MAX - 1, 3), 1);
        let p = with(&[(i32::MAX - 4, i32::MAX, 0)], 0);
        assert_eq!(check(&p, seq(0, 0, 2)), Ok(Check::Append));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut p = Producer::default();
        for i in 0..(RECENT_BATCHES_MAX as i32 + 2) {
            push_recent(
                &mut p,
                Recent {
                    first_seq: i,
                    last_seq: i,
                    base_offset: i as u64,
                    last_offset: i as u64,
                },
            );
        }
        assert_eq!(p.recent.len(), RECENT_BATCHES_MAX);
        assert_eq!(p.recent.front().map(|r| r.first_seq), Some(2));
    }
}
