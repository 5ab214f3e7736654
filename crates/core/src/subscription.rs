//! Subscriptions: named readers of a topic, in queue mode or cursor mode.
//!
//! **Queue mode** follows Kafka share groups (KIP-932) and JetStream ack/nak/term. Per
//! partition it keeps a *floor* (every offset below it is finished: acked or dead-lettered) and
//! a window of *slots* for delivered offsets at or above it. A polled event is locked for
//! `lock_ms`; ack finishes it; nack makes it available again after a delay; a lock that expires
//! does the same. Each delivery counts an attempt; an event whose attempts reached
//! `max_attempts` is dead-lettered instead of delivered again. The window holds at most
//! [`IN_FLIGHT_PER_PARTITION_MAX`] slots, which bounds memory and the state file.
//!
//! **Cursor mode** follows a Kafka consumer group: a read position and a committed offset per
//! partition. Commits never go backwards.
//!
//! This module is the state machine only: it says what to deliver, persist and dead-letter.
//! [`crate::broker`] reads the log, appends to dead-letter topics and applies the writes.

use crate::store::{SlotRecord, Write, partition_key, slot_key, sub_key};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Most slots (delivered, unfinished events) per partition of a queue subscription.
pub const IN_FLIGHT_PER_PARTITION_MAX: usize = 1000;
/// Largest `max_attempts`.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;
/// Largest `lock_ms`: 12 hours.
pub const LOCK_MS_LIMIT: u64 = 12 * 3600 * 1000;
/// Largest backoff delay: 24 hours.
pub const BACKOFF_MS_LIMIT: u64 = 24 * 3600 * 1000;

/// How a subscription consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Per-event lock, ack, nack, retries and dead letters.
    Queue,
    /// Per-partition offsets with explicit commits.
    Cursor,
}

/// Where a new subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At each partition's log start.
    Earliest,
    /// At each partition's end.
    Latest,
    /// At the first event ingested at or after this time (ms since the epoch).
    Time(i64),
    /// At this offset in every partition, clamped to each partition's retained range (a replay
    /// of a one-partition topic from a known offset).
    Offset(u64),
}

/// Redelivery delay after a nack without `retry_in_ms`: `initial_ms * multiplier^(attempt-1)`,
/// capped at `max_ms`, with "equal jitter" (half fixed, half random).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Backoff {
    /// The delay before redelivering after `attempt` deliveries; `random` is uniform in [0, 1).
    #[must_use]
    pub fn delay_ms(&self, attempt: u32, random: f64) -> u64 {
        let exp = self
            .multiplier
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let full = (self.initial_ms as f64 * exp).min(self.max_ms as f64);
        let half = full / 2.0;
        (half + half * random.clamp(0.0, 1.0)) as u64
    }
}

/// A subscription's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Queue or cursor.
    pub mode: Mode,
    /// Where it started.
    pub start: Start,
    /// Deliveries before an event is dead-lettered (queue mode).
    pub max_attempts: u32,
    /// How long a delivered event stays locked (queue mode).
    pub lock_ms: u64,
    /// Redelivery delays (queue mode).
    pub backoff: Backoff,
}

impl Settings {
    /// The documented defaults for a mode: 5 attempts, 30 s locks, 1 s backoff doubling to 60 s.
    #[must_use]
    pub fn defaults(mode: Mode) -> Settings {
        Settings {
            mode,
            start: Start::Earliest,
            max_attempts: 5,
            lock_ms: 30_000,
            backoff: Backoff {
                initial_ms: 1000,
                max_ms: 60_000,
                multiplier: 2.0,
            },
        }
    }

    /// Checks every field against its limit; returns the offending field and why.
    ///
    /// # Errors
    /// `(field, reason)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(("max_attempts", format!("must be 1 to {MAX_ATTEMPTS_LIMIT}")));
        }
        if !(1..=LOCK_MS_LIMIT).contains(&self.lock_ms) {
            return Err(("lock_ms", format!("must be 1 to {LOCK_MS_LIMIT}")));
        }
        let b = &self.backoff;
        if b.initial_ms > BACKOFF_MS_LIMIT || b.max_ms > BACKOFF_MS_LIMIT || b.initial_ms > b.max_ms
        {
            return Err((
                "backoff",
                format!("delays must satisfy initial_ms <= max_ms <= {BACKOFF_MS_LIMIT}"),
            ));
        }
        if !(1.0..=10.0).contains(&b.multiplier) {
            return Err(("backoff.multiplier", "must be 1.0 to 10.0".into()));
        }
        Ok(())
    }

    /// The JSON form, as stored and as shown by the API.
    #[must_use]
    pub fn to_json(&self) -> Value {
        json!({
            "mode": match self.mode { Mode::Queue => "queue", Mode::Cursor => "cursor" },
            "start": match self.start {
                Start::Earliest => json!("earliest"),
                Start::Latest => json!("latest"),
                Start::Time(ms) => json!(chrono::DateTime::from_timestamp_millis(ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                Start::Offset(o) => json!(o),
            },
            "max_attempts": self.max_attempts,
            "lock_ms": self.lock_ms,
            "backoff": {"initial_ms": self.backoff.initial_ms, "max_ms": self.backoff.max_ms,
                        "multiplier": self.backoff.multiplier},
        })
    }

    /// Parses the JSON form; absent fields take the defaults of the given (or default) mode.
    ///
    /// # Errors
    /// `(field, reason)` for a wrong type or value.
    pub fn from_json(v: &Value) -> Result<Settings, (&'static str, String)> {
        let Value::Object(m) = v else {
            return Err(("body", "must be a JSON object".into()));
        };
        let mode = match m.get("mode").and_then(Value::as_str) {
            None if m.get("mode").is_none() => Mode::Queue,
            Some("queue") => Mode::Queue,
            Some("cursor") => Mode::Cursor,
            _ => return Err(("mode", "must be \"queue\" or \"cursor\"".into())),
        };
        let mut s = Settings::defaults(mode);
        match m.get("start") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "earliest" => s.start = Start::Earliest,
            Some(Value::String(t)) if t == "latest" => s.start = Start::Latest,
            Some(Value::String(t)) => {
                let time = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                    (
                        "start",
                        format!("not \"earliest\", \"latest\" or an RFC 3339 time: {e}"),
                    )
                })?;
                s.start = Start::Time(time.timestamp_millis());
            }
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                s.start = Start::Offset(n.as_u64().unwrap_or_default());
            }
            Some(_) => {
                return Err((
                    "start",
                    "must be \"earliest\", \"latest\", an RFC 3339 time or an offset".into(),
                ));
            }
        }
        let uint = |name: &'static str,
                    v: Option<&Value>|
         -> Result<Option<u64>, (&'static str, String)> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or((name, "must be a non-negative integer".into())),
            }
        };
        if let Some(n) = uint("max_attempts", m.get("max_attempts"))? {
            s.max_attempts =
                u32::try_from(n).map_err(|_| ("max_attempts", "too large".to_string()))?;
        }
        if let Some(n) = uint("lock_ms", m.get("lock_ms"))? {
            s.lock_ms = n;
        }
        match m.get("backoff") {
            None | Some(Value::Null) => {}
            Some(Value::Object(b)) => {
                if let Some(n) = uint("backoff.initial_ms", b.get("initial_ms"))? {
                    s.backoff.initial_ms = n;
                }
                if let Some(n) = uint("backoff.max_ms", b.get("max_ms"))? {
                    s.backoff.max_ms = n;
                }
                match b.get("multiplier") {
                    None | Some(Value::Null) => {}
                    Some(v) => {
                        s.backoff.multiplier = v
                            .as_f64()
                            .ok_or(("backoff.multiplier", "must be a number".to_string()))?;
                    }
                }
            }
            Some(_) => return Err(("backoff", "must be an object".into())),
        }
        s.validate()?;
        Ok(s)
    }
}

/// The state of one delivered event of a queue subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// May be delivered from this time on.
    Available { not_before: i64 },
    /// Delivered and locked until this time.
    Locked { until: i64 },
    /// Acked.
    Acked,
    /// Dead-lettered.
    Dead,
}

#[derive(Debug, Clone)]
struct Slot {
    attempts: u32,
    state: SlotState,
    last_error: Option<String>,
}

impl Slot {
    fn record(&self) -> SlotRecord {
        let (state, not_before) = match self.state {
            SlotState::Available { not_before } => (0, not_before),
            SlotState::Locked { .. } => (0, 0),
            SlotState::Acked => (1, 0),
            SlotState::Dead => (2, 0),
        };
        SlotRecord {
            attempts: self.attempts,
            state,
            not_before,
            last_error: self.last_error.clone(),
        }
    }

    fn from_record(r: SlotRecord) -> Slot {
        let state = match r.state {
            1 => SlotState::Acked,
            2 => SlotState::Dead,
            // Delivered before a restart: the lock did not survive, so it is available again.
            _ => SlotState::Available {
                not_before: r.not_before,
            },
        };
        Slot {
            attempts: r.attempts,
            state,
            last_error: r.last_error,
        }
    }

    fn finished(&self) -> bool {
        matches!(self.state, SlotState::Acked | SlotState::Dead)
    }
}

#[derive(Debug, Clone, Default)]
struct QueuePartition {
    floor: u64,
    /// One past the highest offset ever delivered.
    next: u64,
    window: BTreeMap<u64, Slot>,
}

#[derive(Debug, Clone, Default)]
struct CursorPartition {
    committed: u64,
    position: u64,
}

/// One event to hand to a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Which delivery this is (1 for the first).
    pub attempt: u32,
}

/// An event the subscription gives up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Deliveries made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
}

/// What one poll decided.
#[derive(Debug, Default)]
pub struct PollPlan {
    /// Events to deliver, in partition order.
    pub takes: Vec<Take>,
    /// Events to dead-letter before replying.
    pub dead: Vec<DeadLetter>,
    /// Writes to apply (durably) before replying.
    pub writes: Vec<Write>,
    /// The earliest time something becomes deliverable (a lock expiry or a backoff).
    pub next_due_ms: Option<i64>,
}

/// Answer for items of an ack or nack.
#[derive(Debug, Default)]
pub struct Settled {
    /// How many items changed state.
    pub count: usize,
    /// Items that were not in flight (never delivered, already finished, or unknown).
    pub not_in_flight: Vec<(u32, u64)>,
    /// Items that changed state, with the attempt they settle (for lineage).
    pub items: Vec<Take>,
    /// Events that must now be dead-lettered (nack with reject, or out of attempts).
    pub dead: Vec<DeadLetter>,
    /// Writes to apply.
    pub writes: Vec<Write>,
}

/// Why a cursor commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Below the committed offset.
    Regression {
        /// Partition.
        partition: u32,
        /// Committed now.
        committed: u64,
        /// Requested.
        requested: u64,
    },
    /// Beyond the end of the partition, or a partition that does not exist.
    OutOfRange {
        /// Partition.
        partition: u32,
        /// Requested.
        requested: u64,
    },
}

/// A subscription's live state.
#[derive(Debug)]
pub struct Subscription {
    topic: String,
    name: String,
    settings: Settings,
    queue: Vec<QueuePartition>,
    cursor: Vec<CursorPartition>,
    rotation: usize,
    deleted: bool,
}

/// Per-partition offsets a poll needs from the log: (log start, high-water mark).
pub type Bounds = [(u64, u64)];

impl Subscription {
    /// A new subscription starting at `starts` (one offset per partition). Returns it and the
    /// writes that create it.
    #[must_use]
    pub fn create(
        topic: &str,
        name: &str,
        settings: Settings,
        starts: &[u64],
    ) -> (Subscription, Vec<Write>) {
        // Clear any rows a handle held across an earlier delete of this name may have left.
        let mut writes = vec![
            Write::DeleteSubscription {
                key: sub_key(topic, name),
            },
            Write::PutSubscription {
                key: sub_key(topic, name),
                settings: settings.to_json().to_string().into_bytes(),
            },
        ];
        for (p, &start) in starts.iter().enumerate() {
            writes.push(Write::SetPosition {
                key: partition_key(topic, name, p as u32),
                offset: start,
            });
        }
        let sub = Subscription::restore(
            topic,
            name,
            settings,
            starts.iter().map(|&s| (s, Vec::new())).collect(),
        );
        (sub, writes)
    }

    /// Rebuilds a subscription from stored state: per partition, its position (floor or
    /// commit) and its slots.
    #[must_use]
    pub fn restore(
        topic: &str,
        name: &str,
        settings: Settings,
        parts: Vec<(u64, Vec<(u64, SlotRecord)>)>,
    ) -> Subscription {
        let queue = parts
            .iter()
            .map(|(floor, slots)| {
                let window: BTreeMap<u64, Slot> = slots
                    .iter()
                    .filter(|(o, _)| o >= floor)
                    .map(|(o, r)| (*o, Slot::from_record(r.clone())))
                    .collect();
                let next = window.keys().next_back().map_or(*floor, |o| o + 1);
                let mut q = QueuePartition {
                    floor: *floor,
                    next,
                    window,
                };
                // Offsets between the floor and the last slot without a slot of their own were
                // never delivered; give them fresh slots so nothing is skipped.
                for o in q.floor..q.next {
                    q.window.entry(o).or_insert(Slot {
                        attempts: 0,
                        state: SlotState::Available { not_before: 0 },
                        last_error: None,
                    });
                }
                q
            })
            .collect();
        let cursor = parts
            .iter()
            .map(|(committed, _)| CursorPartition {
                committed: *committed,
                position: *committed,
            })
            .collect();
        Subscription {
            topic: topic.to_string(),
            name: name.to_string(),
            settings,
            queue,
            cursor,
            rotation: 0,
            deleted: false,
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn slot_write(&self, p: u32, o: u64, slot: &Slot) -> Write {
        Write::PutSlot {
            key: slot_key(&self.topic, &self.name, p, o),
            slot: slot.record(),
        }
    }

    /// Plans a poll of up to `max` events at time `now`. `bounds` gives each partition's log
    /// start and high-water mark.
    pub fn poll(&mut self, now: i64, max: usize, bounds: &Bounds) -> PollPlan {
        match self.settings.mode {
            Mode::Queue => self.poll_queue(now, max, bounds),
            Mode::Cursor => self.poll_cursor(max, bounds),
        }
    }

    fn order(&mut self) -> Vec<usize> {
        let n = self.queue.len().max(1);
        self.rotation = (self.rotation + 1) % n;
        (0..n).map(|i| (self.rotation + i) % n).collect()
    }

    fn poll_cursor(&mut self, max: usize, bounds: &Bounds) -> PollPlan {
        let mut plan = PollPlan::default();
        for p in self.order() {
            let c = &mut self.cursor[p];
            let (log_start, hw) = bounds[p];
            c.position = c.position.max(log_start);
            while plan.takes.len() < max && c.position < hw {
                plan.takes.push(Take {
                    partition: p as u32,
                    offset: c.position,
                    attempt: 1,
                });
                c.position += 1;
            }
        }
        plan
    }

    fn poll_queue(&mut self, now: i64, max: usize, bounds: &Bounds) -> PollPlan {
        let mut plan = PollPlan::default();
        let (max_attempts, lock_ms) = (self.settings.max_attempts, self.settings.lock_ms);
        for p in self.order() {
            let (log_start, hw) = bounds[p];
            self.skip_retained(p, log_start, &mut plan);
            let mut changed: Vec<u64> = Vec::new();
            let q = &mut self.queue[p];
            for (&o, slot) in &mut q.window {
                if let SlotState::Locked { until } = slot.state {
                    if until > now {
                        plan.next_due_ms = Some(plan.next_due_ms.map_or(until, |d| d.min(until)));
                        continue;
                    }
                    slot.state = SlotState::Available { not_before: until };
                    // The expiry is now the most recent failure of this event.
                    slot.last_error = Some("lock expired".into());
                }
                let SlotState::Available { not_before } = slot.state else {
                    continue;
                };
                if not_before > now {
                    plan.next_due_ms =
                        Some(plan.next_due_ms.map_or(not_before, |d| d.min(not_before)));
                    continue;
                }
                if slot.attempts >= max_attempts {
                    // Dying: not deliverable, not finished. finish_dead makes it Dead once the
                    // DLQ append succeeded; undo_dead makes it available again otherwise.
                    slot.state = SlotState::Available {
                        not_before: i64::MAX,
                    };
                    let error = slot
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "out of attempts".into());
                    plan.dead.push(DeadLetter {
                        partition: p as u32,
                        offset: o,
                        attempts: slot.attempts,
                        error,
                    });
                    continue;
                }
                if plan.takes.len() >= max {
                    continue;
                }
                slot.attempts += 1;
                slot.state = SlotState::Locked {
                    until: now + lock_ms as i64,
                };
                plan.takes.push(Take {
                    partition: p as u32,
                    offset: o,
                    attempt: slot.attempts,
                });
                changed.push(o);
            }
            while plan.takes.len() < max
                && q.window.len() < IN_FLIGHT_PER_PARTITION_MAX
                && q.next < hw
            {
                let o = q.next;
                q.window.insert(
                    o,
                    Slot {
                        attempts: 1,
                        state: SlotState::Locked {
                            until: now + lock_ms as i64,
                        },
                        last_error: None,
                    },
                );
                q.next += 1;
                plan.takes.push(Take {
                    partition: p as u32,
                    offset: o,
                    attempt: 1,
                });
                changed.push(o);
            }
            for o in changed {
                let slot = self.queue[p].window[&o].clone();
                plan.writes.push(self.slot_write(p as u32, o, &slot));
            }
        }
        plan
    }

    /// Retention deleted events this subscription had not finished: move past them.
    fn skip_retained(&mut self, p: usize, log_start: u64, plan: &mut PollPlan) {
        let (topic, name) = (self.topic.clone(), self.name.clone());
        let q = &mut self.queue[p];
        if q.floor >= log_start {
            return;
        }
        let gone: Vec<u64> = q.window.range(..log_start).map(|(o, _)| *o).collect();
        for o in gone {
            q.window.remove(&o);
            plan.writes.push(Write::DeleteSlot {
                key: slot_key(&topic, &name, p as u32, o),
            });
        }
        q.floor = log_start;
        q.next = q.next.max(log_start);
        plan.writes.push(Write::SetPosition {
            key: partition_key(&topic, &name, p as u32),
            offset: log_start,
        });
    }

    /// Marks dead-lettered events finished (after the DLQ append succeeded) and advances floors.
    pub fn finish_dead(&mut self, dead: &[DeadLetter]) -> Vec<Write> {
        let mut writes = Vec::new();
        for d in dead {
            if let Some(slot) = self.queue[d.partition as usize].window.get_mut(&d.offset) {
                slot.state = SlotState::Dead;
                slot.last_error = Some(d.error.clone());
                // Durably dead, also when it sits above an event still in flight (the floor
                // does not reach it yet), so a restart does not dead-letter it again.
                let slot = slot.clone();
                writes.push(self.slot_write(d.partition, d.offset, &slot));
            }
        }
        let parts: Vec<u32> = dead.iter().map(|d| d.partition).collect();
        for p in parts {
            writes.extend(self.advance_floor(p));
        }
        writes
    }

    /// Gives back what a poll took when its events could not be read: a cursor's position
    /// returns to the first offset taken, so nothing is skipped. (Queue locks simply expire.)
    pub fn undo_takes(&mut self, takes: &[Take]) {
        if self.settings.mode != Mode::Cursor {
            return;
        }
        for t in takes {
            let c = &mut self.cursor[t.partition as usize];
            c.position = c.position.min(t.offset);
        }
    }

    /// Marks the subscription deleted: later operations through a handle taken before the
    /// delete must not write state for it again.
    pub fn mark_deleted(&mut self) {
        self.deleted = true;
    }

    /// Whether [`Subscription::mark_deleted`] was called.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Puts dead letters whose DLQ append failed back, to be tried again by a later poll.
    pub fn undo_dead(&mut self, dead: &[DeadLetter]) {
        for d in dead {
            if let Some(slot) = self.queue[d.partition as usize].window.get_mut(&d.offset) {
                slot.state = SlotState::Available { not_before: 0 };
            }
        }
    }

    fn advance_floor(&mut self, p: u32) -> Vec<Write> {
        let (topic, name) = (self.topic.clone(), self.name.clone());
        let q = &mut self.queue[p as usize];
        let mut writes = Vec::new();
        let before = q.floor;
        while let Some((&o, slot)) = q.window.first_key_value() {
            if !slot.finished() {
                break;
            }
            q.window.remove(&o);
            q.floor = o + 1;
            writes.push(Write::DeleteSlot {
                key: slot_key(&topic, &name, p, o),
            });
        }
        if q.floor != before {
            writes.push(Write::SetPosition {
                key: partition_key(&topic, &name, p),
                offset: q.floor,
            });
        }
        writes
    }

    fn in_flight_slot(&mut self, p: u32, o: u64) -> Option<&mut Slot> {
        self.queue
            .get_mut(p as usize)?
            .window
            .get_mut(&o)
            .filter(|s| !s.finished() && s.attempts > 0)
    }

    /// Acks events (queue mode).
    pub fn ack(&mut self, items: &[(u32, u64)]) -> Settled {
        let mut out = Settled::default();
        let mut touched = Vec::new();
        for &(p, o) in items {
            match self.in_flight_slot(p, o) {
                Some(slot) => {
                    slot.state = SlotState::Acked;
                    let slot = slot.clone();
                    out.items.push(Take {
                        partition: p,
                        offset: o,
                        attempt: slot.attempts,
                    });
                    out.writes.push(self.slot_write(p, o, &slot));
                    out.count += 1;
                    touched.push(p);
                }
                None => out.not_in_flight.push((p, o)),
            }
        }
        touched.dedup();
        for p in touched {
            out.writes.extend(self.advance_floor(p));
        }
        out
    }

    /// Nacks events (queue mode): redelivery after `retry_in_ms` or the backoff, or dead-letter
    /// at once when `reject` is set or attempts are used up.
    pub fn nack(
        &mut self,
        items: &[(u32, u64)],
        now: i64,
        retry_in_ms: Option<u64>,
        reject: bool,
        error: Option<&str>,
        random: &mut dyn FnMut() -> f64,
    ) -> Settled {
        let mut out = Settled::default();
        let (max_attempts, backoff) = (self.settings.max_attempts, self.settings.backoff);
        for &(p, o) in items {
            let Some(slot) = self.in_flight_slot(p, o) else {
                out.not_in_flight.push((p, o));
                continue;
            };
            slot.last_error = Some(
                error
                    .unwrap_or(if reject { "rejected" } else { "nacked" })
                    .to_string(),
            );
            out.items.push(Take {
                partition: p,
                offset: o,
                attempt: slot.attempts,
            });
            if reject || slot.attempts >= max_attempts {
                // Finished once the DLQ append succeeds (finish_dead).
                slot.state = SlotState::Available {
                    not_before: i64::MAX,
                };
                let error = slot.last_error.clone().unwrap_or_default();
                out.dead.push(DeadLetter {
                    partition: p,
                    offset: o,
                    attempts: slot.attempts,
                    error,
                });
            } else {
                let delay =
                    retry_in_ms.unwrap_or_else(|| backoff.delay_ms(slot.attempts, random()));
                slot.state = SlotState::Available {
                    not_before: now.saturating_add(delay.min(BACKOFF_MS_LIMIT) as i64),
                };
                let slot = slot.clone();
                out.writes.push(self.slot_write(p, o, &slot));
            }
            out.count += 1;
        }
        out
    }

    /// Commits cursor offsets (the next offset to read per partition).
    ///
    /// # Errors
    /// [`CommitError`] for the first bad item; nothing is changed then.
    pub fn commit(
        &mut self,
        offsets: &[(u32, u64)],
        bounds: &Bounds,
    ) -> Result<Vec<Write>, CommitError> {
        self.commit_checked(offsets, bounds, false)
    }

    /// [`Subscription::commit`], where `rewind` allows an offset below the committed one (a
    /// Kafka consumer group may seek back and commit there).
    ///
    /// # Errors
    /// As [`Subscription::commit`].
    pub fn commit_checked(
        &mut self,
        offsets: &[(u32, u64)],
        bounds: &Bounds,
        rewind: bool,
    ) -> Result<Vec<Write>, CommitError> {
        for &(p, o) in offsets {
            let Some(c) = self.cursor.get(p as usize) else {
                return Err(CommitError::OutOfRange {
                    partition: p,
                    requested: o,
                });
            };
            if o < c.committed && !rewind {
                return Err(CommitError::Regression {
                    partition: p,
                    committed: c.committed,
                    requested: o,
                });
            }
            if o > bounds[p as usize].1 {
                return Err(CommitError::OutOfRange {
                    partition: p,
                    requested: o,
                });
            }
        }
        let mut writes = Vec::new();
        for &(p, o) in offsets {
            let c = &mut self.cursor[p as usize];
            c.committed = o;
            c.position = if rewind { o } else { c.position.max(o) };
            writes.push(Write::SetPosition {
                key: partition_key(&self.topic, &self.name, p),
                offset: o,
            });
        }
        Ok(writes)
    }

    /// Events not yet finished (queue) or not yet committed (cursor), given the high-water marks.
    #[must_use]
    pub fn lag(&self, bounds: &Bounds) -> u64 {
        match self.settings.mode {
            Mode::Queue => self
                .queue
                .iter()
                .zip(bounds)
                // Slots finished out of order (above the floor) are not lag.
                .map(|(q, (_, hw))| {
                    let finished = q.window.values().filter(|s| s.finished()).count() as u64;
                    hw.saturating_sub(q.floor).saturating_sub(finished)
                })
                .sum(),
            Mode::Cursor => self
                .cursor
                .iter()
                .zip(bounds)
                .map(|(c, (_, hw))| hw.saturating_sub(c.committed))
                .sum(),
        }
    }

    /// Events locked now (queue), or delivered but not committed (cursor).
    #[must_use]
    pub fn in_flight(&self, now: i64) -> u64 {
        match self.settings.mode {
            Mode::Queue => self
                .queue
                .iter()
                .flat_map(|q| q.window.values())
                .filter(|s| matches!(s.state, SlotState::Locked { until } if until > now))
                .count() as u64,
            Mode::Cursor => self.cursor.iter().map(|c| c.position - c.committed).sum(),
        }
    }

    /// Committed offsets (cursor) or floors (queue), per partition.
    #[must_use]
    pub fn positions(&self) -> Vec<u64> {
        match self.settings.mode {
            Mode::Queue => self.queue.iter().map(|q| q.floor).collect(),
            Mode::Cursor => self.cursor.iter().map(|c| c.committed).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(max_attempts: u32) -> Subscription {
        let mut s = Settings::defaults(Mode::Queue);
        s.max_attempts = max_attempts;
        s.lock_ms = 100;
        s.backoff = Backoff {
            initial_ms: 10,
            max_ms: 1000,
            multiplier: 2.0,
        };
        Subscription::create("t", "s", s, &[0, 0]).0
    }

    const BOUNDS: [(u64, u64); 2] = [(0, 3), (0, 0)];

    #[test]
    fn ack_finishes_and_advances_the_floor() {
        let mut s = queue(3);
        let plan = s.poll(0, 10, &BOUNDS);
        assert_eq!(plan.takes.len(), 3);
        assert!(plan.takes.iter().all(|t| t.attempt == 1));
        assert!(
            s.poll(1, 10, &BOUNDS).takes.is_empty(),
            "locked events are not delivered twice"
        );
        let settled = s.ack(&[(0, 1), (0, 9)]);
        assert_eq!(
            (settled.count, settled.not_in_flight.as_slice()),
            (1, &[(0, 9)][..])
        );
        assert_eq!(s.positions(), [0, 0], "offset 0 is still in flight");
        s.ack(&[(0, 0)]);
        assert_eq!(s.positions(), [2, 0]);
        assert_eq!(s.lag(&BOUNDS), 1);
    }

    #[test]
    fn nack_redelivers_after_backoff_and_dead_letters_after_max_attempts() {
        let mut s = queue(2);
        s.poll(0, 1, &[(0, 1), (0, 0)]);
        let mut half = || 0.5;
        let n = s.nack(&[(0, 0)], 0, None, false, Some("boom"), &mut half);
        assert!(n.dead.is_empty());
        let plan = s.poll(1, 1, &[(0, 1), (0, 0)]);
        assert!(plan.takes.is_empty());
        let due = plan.next_due_ms.unwrap();
        assert!(
            (5..=10).contains(&due),
            "backoff of 10 ms with equal jitter: {due}"
        );
        let plan = s.poll(due, 1, &[(0, 1), (0, 0)]);
        assert_eq!(
            plan.takes,
            [Take {
                partition: 0,
                offset: 0,
                attempt: 2
            }]
        );
        let n = s.nack(&[(0, 0)], due, None, false, Some("boom again"), &mut half);
        assert_eq!(
            n.dead,
            [DeadLetter {
                partition: 0,
                offset: 0,
                attempts: 2,
                error: "boom again".into()
            }]
        );
        s.finish_dead(&n.dead);
        assert_eq!(s.positions()[0], 1);
    }

    #[test]
    fn an_expired_lock_redelivers_then_dead_letters() {
        let mut s = queue(2);
        s.poll(0, 1, &[(0, 1), (0, 0)]);
        assert_eq!(s.poll(100, 1, &[(0, 1), (0, 0)]).takes[0].attempt, 2);
        let plan = s.poll(200, 1, &[(0, 1), (0, 0)]);
        assert!(plan.takes.is_empty());
        assert_eq!(plan.dead[0].error, "lock expired");
    }

    #[test]
    fn restore_redelivers_in_flight_and_keeps_acked() {
        let mut s = queue(5);
        let plan = s.poll(0, 10, &BOUNDS);
        let ack = s.ack(&[(0, 1)]);
        let mut slots: BTreeMap<u64, SlotRecord> = BTreeMap::new();
        for w in plan.writes.iter().chain(&ack.writes) {
            if let Write::PutSlot { key, slot } = w {
                slots.insert(
                    u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap()),
                    slot.clone(),
                );
            }
        }
        let mut r = Subscription::restore(
            "t",
            "s",
            s.settings().clone(),
            vec![(0, slots.into_iter().collect()), (0, vec![])],
        );
        let takes = r.poll(0, 10, &BOUNDS).takes;
        assert_eq!(
            takes,
            [
                Take {
                    partition: 0,
                    offset: 0,
                    attempt: 2
                },
                Take {
                    partition: 0,
                    offset: 2,
                    attempt: 2
                }
            ],
            "in-flight events come back with attempt + 1; acked ones do not"
        );
    }

    #[test]
    fn a_dead_letter_above_an_event_in_flight_stays_dead_after_a_restart() {
        let mut s = queue(5);
        let plan = s.poll(0, 10, &BOUNDS);
        let mut half = || 0.5;
        let n = s.nack(&[(0, 1)], 0, None, true, Some("poison"), &mut half);
        assert_eq!(n.dead.len(), 1);
        let finished = s.finish_dead(&n.dead);
        assert_eq!(
            s.positions()[0],
            0,
            "offset 0 is still in flight, so the floor stays"
        );
        let mut slots: BTreeMap<u64, SlotRecord> = BTreeMap::new();
        for w in plan.writes.iter().chain(&n.writes).chain(&finished) {
            if let Write::PutSlot { key, slot } = w {
                slots.insert(
                    u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap()),
                    slot.clone(),
                );
            }
        }
        let mut r = Subscription::restore(
            "t",
            "s",
            s.settings().clone(),
            vec![(0, slots.into_iter().collect()), (0, vec![])],
        );
        let offsets: Vec<u64> = r
            .poll(0, 10, &BOUNDS)
            .takes
            .iter()
            .map(|t| t.offset)
            .collect();
        assert_eq!(
            offsets,
            [0, 2],
            "the dead-lettered offset 1 is not delivered again"
        );
    }

    #[test]
    fn a_cursor_rewinds_when_its_events_could_not_be_read() {
        let (mut s, _) = Subscription::create("t", "c", Settings::defaults(Mode::Cursor), &[0]);
        let bounds = [(0, 5)];
        let takes = s.poll(0, 3, &bounds).takes;
        s.undo_takes(&takes);
        assert_eq!(
            s.poll(0, 1, &bounds).takes[0].offset,
            0,
            "nothing was skipped"
        );
    }

    #[test]
    fn cursor_commits_never_go_backwards() {
        let (mut s, _) = Subscription::create("t", "c", Settings::defaults(Mode::Cursor), &[0]);
        let bounds = [(0, 5)];
        assert_eq!(s.poll(0, 3, &bounds).takes.len(), 3);
        s.commit(&[(0, 3)], &bounds).unwrap();
        assert_eq!(
            s.commit(&[(0, 2)], &bounds).unwrap_err(),
            CommitError::Regression {
                partition: 0,
                committed: 3,
                requested: 2
            }
        );
        assert_eq!(
            s.commit(&[(0, 6)], &bounds).unwrap_err(),
            CommitError::OutOfRange {
                partition: 0,
                requested: 6
            }
        );
        assert_eq!(s.positions(), [3]);
        assert_eq!(s.in_flight(0), 0);
    }

    #[test]
    fn the_window_is_bounded() {
        let mut s = queue(5);
        let bounds = [(0, 5000), (0, 0)];
        let plan = s.poll(0, 5000, &bounds);
        assert_eq!(plan.takes.len(), IN_FLIGHT_PER_PARTITION_MAX);
    }

    #[test]
    fn settings_parse_with_defaults_and_name_bad_fields() {
        let s = Settings::from_json(&json!({"mode": "cursor"})).unwrap();
        assert_eq!(s, Settings::defaults(Mode::Cursor));
        assert_eq!(Settings::from_json(&s.to_json()).unwrap(), s);
        for (body, field) in [
            (json!({"mode": "x"}), "mode"),
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"lock_ms": -1}), "lock_ms"),
            (json!({"start": "tomorrow"}), "start"),
            (
                json!({"backoff": {"initial_ms": 10, "max_ms": 5}}),
                "backoff",
            ),
        ] {
            assert_eq!(Settings::from_json(&body).unwrap_err().0, field, "{body}");
        }
    }
}
