//! Lineage: every hop of every event, so an operator can follow one event (or a whole cascade
//! of events sharing a `correlationid`) without a tracing backend.
//!
//! A hop is one thing that happened to an event: appended at a topic, partition and offset (or
//! found to be a duplicate of one), ingested by a source pipeline, delivered to a subscription
//! at an attempt, acked, nacked, dead-lettered, redriven, written by a sink (with its latency)
//! or refused by one. Hops are records of an internal log under `<data_dir>/lineage`: one
//! partition of Kafka record batches, the same format as the topics, with retention by size and
//! age, so the storage is bounded and survives restarts.
//!
//! Recording is off the hot path: callers hand a `Vec<Hop>` to [`Lineage::record`], which only
//! tries to put it on a bounded queue ([`LINEAGE_QUEUE_MAX`] batches); one writer thread drains
//! the queue and appends. A full queue drops the hops and counts them (`dropped`), and never
//! blocks a publish. The lineage log is written, not synced (`SyncMode::Never`: synced when a
//! segment rolls and at close): a process crash loses only what was still queued, a power cut
//! what the OS had not yet written back; never an event. A periodic fsync of the lineage log
//! cost ingest about 6-9% here (it contends with the topics' fdatasyncs on the same disk);
//! without it lineage costs about 1% (`gearbox bench http --observability`).
//!
//! Keys: a hop that knows its event id is stored under that id, with the event's
//! `correlationid` in header `c`. A hop that knows only a position (an ack or a nack names
//! `(partition, offset)`) is stored with header `p` = `topic/partition/offset`; a lookup joins
//! it to the event through the event's `appended` hop, which always comes first in the log.
//!
//! Lookups scan the retained lineage log from its start ([`Lineage::trace`],
//! [`Lineage::correlation`]): the cost is bounded by the retention, and no index has to be kept
//! up to date on the ingest path.

use gearbox_log::batch::{BatchBuilder, Record, RecordHeader, RecordInput};
use gearbox_log::io::{OsStorage, SystemClock};
use gearbox_log::{LogOptions, PartitionConfig, Retention, SyncMode, TopicConfig};
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Batches of hops that may wait for the writer; beyond it, hops are dropped and counted.
pub const LINEAGE_QUEUE_MAX: usize = 1024;
/// How long the writer waits for more hops before an append (fewer, larger appends).
pub const LINEAGE_LINGER_MS: u64 = 20;
/// Most events in one placement record.
pub const PLACED_EVENTS_MAX: usize = 1000;
/// Largest batch the lineage log accepts (a placement record of long ids fits).
const LINEAGE_BATCH_BYTES_MAX: u32 = 16 << 20;
/// Most hops the writer appends at once.
pub const LINEAGE_WRITE_HOPS_MAX: usize = 8192;
/// Default retention of the lineage log by size.
pub const LINEAGE_RETENTION_BYTES_DEFAULT: u64 = 256 << 20;
/// Default retention of the lineage log by age: 7 days.
pub const LINEAGE_RETENTION_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Segment size of the lineage log (retention deletes whole segments).
pub const LINEAGE_SEGMENT_BYTES: u64 = 16 << 20;
/// Most hops a trace returns for one event.
pub const TRACE_HOPS_MAX: usize = 1000;
/// Most events a correlation search returns.
pub const TRACE_EVENTS_MAX: usize = 200;
/// Longest a lookup waits for hops recorded before it to be written.
pub const FLUSH_WAIT_MS_MAX: u64 = 2000;
/// How many unjoined position-keyed hops a scan keeps looking back over.
const LOOKBEHIND_HOPS: usize = 4096;
/// Bytes read per step of a scan.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Most bytes of one batch of hops.
const HOP_BATCH_BYTES_MAX: usize = 512 << 10;
const TOPIC: &str = "hops";

/// What happened to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HopKind {
    /// A source pipeline took it from its gear (after the append was acknowledged).
    Ingested,
    /// Appended at a topic, partition and offset.
    #[default]
    Appended,
    /// Published again; the original position is kept.
    Duplicate,
    /// Handed to a subscription (or a sink) at an attempt.
    Delivered,
    /// Acknowledged by a subscription's consumer.
    Acked,
    /// Negatively acknowledged: retried later.
    Nacked,
    /// Moved to `<topic>.dlq`.
    DeadLettered,
    /// Appended back to its topic from the DLQ.
    Redriven,
    /// Written by a sink.
    Written,
    /// A sink's write failed (transient: retried; permanent: dead-lettered).
    WriteFailed,
}

impl HopKind {
    const ALL: [HopKind; 10] = [
        HopKind::Ingested,
        HopKind::Appended,
        HopKind::Duplicate,
        HopKind::Delivered,
        HopKind::Acked,
        HopKind::Nacked,
        HopKind::DeadLettered,
        HopKind::Redriven,
        HopKind::Written,
        HopKind::WriteFailed,
    ];

    /// The name in the API.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            HopKind::Ingested => "ingested",
            HopKind::Appended => "appended",
            HopKind::Duplicate => "duplicate",
            HopKind::Delivered => "delivered",
            HopKind::Acked => "acked",
            HopKind::Nacked => "nacked",
            HopKind::DeadLettered => "dead_lettered",
            HopKind::Redriven => "redriven",
            HopKind::Written => "written",
            HopKind::WriteFailed => "write_failed",
        }
    }

    fn parse(s: &str) -> Option<HopKind> {
        HopKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Order among hops of one event in the same millisecond and attempt.
    fn rank(self) -> u8 {
        match self {
            HopKind::Ingested => 0,
            HopKind::Appended | HopKind::Duplicate => 1,
            HopKind::Delivered => 2,
            HopKind::Written | HopKind::WriteFailed => 3,
            HopKind::Acked | HopKind::Nacked => 4,
            HopKind::DeadLettered => 5,
            HopKind::Redriven => 6,
        }
    }

    /// Whether the hop places the event at its position (later position-keyed hops join to it).
    fn places(self) -> bool {
        matches!(
            self,
            HopKind::Appended | HopKind::Duplicate | HopKind::Redriven
        )
    }
}

/// One hop. Fields that do not apply are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hop {
    /// When, in ms since the Unix epoch.
    pub at_ms: i64,
    /// What happened.
    pub kind: HopKind,
    /// The event id; `None` for a hop that knows only a position.
    pub event_id: Option<String>,
    /// The event's `source`.
    pub source: Option<String>,
    /// Topic.
    pub topic: Option<String>,
    /// Partition.
    pub partition: Option<u32>,
    /// Offset.
    pub offset: Option<u64>,
    /// The pipeline that ingested or wrote it.
    pub pipeline: Option<String>,
    /// The subscription it was delivered to.
    pub subscription: Option<String>,
    /// The delivery attempt (1 = first).
    pub attempt: Option<u32>,
    /// `ok`, `retry`, `permanent`, ...
    pub result: Option<String>,
    /// How long the hop took (a sink's write).
    pub latency_ms: Option<u64>,
    /// An error message or a note.
    pub detail: Option<String>,
    /// The event's `correlationid`.
    pub correlation_id: Option<String>,
    /// The event's `causationid`.
    pub causation_id: Option<String>,
    /// The event's W3C `traceparent`.
    pub traceparent: Option<String>,
}

impl Hop {
    /// A hop of `kind` at `at_ms` for the event `id`.
    #[must_use]
    pub fn event(kind: HopKind, at_ms: i64, id: &str) -> Hop {
        Hop {
            at_ms,
            kind,
            event_id: Some(id.to_string()),
            ..Hop::default()
        }
    }

    /// A hop of `kind` at `at_ms` for whatever event is at `(topic, partition, offset)`.
    #[must_use]
    pub fn at_position(kind: HopKind, at_ms: i64, topic: &str, partition: u32, offset: u64) -> Hop {
        Hop {
            at_ms,
            kind,
            ..Hop::default()
        }
        .position(topic, partition, offset)
    }

    /// With a position.
    #[must_use]
    pub fn position(mut self, topic: &str, partition: u32, offset: u64) -> Hop {
        self.topic = Some(topic.to_string());
        self.partition = Some(partition);
        self.offset = Some(offset);
        self
    }

    /// With the event's own attributes that lineage keeps: `source`, `correlationid`,
    /// `causationid` and `traceparent`.
    #[must_use]
    pub fn attributes(mut self, e: &crate::event::CloudEvent) -> Hop {
        self.source = Some(e.source.clone());
        self.correlation_id = e.extensions.get("correlationid").cloned();
        self.causation_id = e.extensions.get("causationid").cloned();
        self.traceparent = e.extensions.get("traceparent").cloned();
        self
    }

    fn position_key(&self) -> Option<String> {
        Some(position_key(
            self.topic.as_deref()?,
            self.partition?,
            self.offset?,
        ))
    }

    /// The hop as JSON (the API's shape): `at` in RFC 3339 with milliseconds, `hop` the kind,
    /// and every field that is set.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "at".into(),
            json!(
                chrono::DateTime::from_timestamp_millis(self.at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            ),
        );
        m.insert("at_ms".into(), json!(self.at_ms));
        m.insert("hop".into(), json!(self.kind.as_str()));
        let strings = [
            ("event_id", &self.event_id),
            ("source", &self.source),
            ("topic", &self.topic),
            ("pipeline", &self.pipeline),
            ("subscription", &self.subscription),
            ("result", &self.result),
            ("detail", &self.detail),
            ("correlation_id", &self.correlation_id),
            ("causation_id", &self.causation_id),
            ("traceparent", &self.traceparent),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(v) = self.partition {
            m.insert("partition".into(), json!(v));
        }
        if let Some(v) = self.offset {
            m.insert("offset".into(), json!(v));
        }
        if let Some(v) = self.attempt {
            m.insert("attempt".into(), json!(v));
        }
        if let Some(v) = self.latency_ms {
            m.insert("latency_ms".into(), json!(v));
        }
        Value::Object(m)
    }

    fn from_json(v: &Value) -> Option<Hop> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let n = |k: &str| v.get(k).and_then(Value::as_u64);
        Some(Hop {
            at_ms: v.get("at_ms")?.as_i64()?,
            kind: HopKind::parse(v.get("hop")?.as_str()?)?,
            event_id: s("event_id"),
            source: s("source"),
            topic: s("topic"),
            partition: n("partition").and_then(|p| u32::try_from(p).ok()),
            offset: n("offset"),
            pipeline: s("pipeline"),
            subscription: s("subscription"),
            attempt: n("attempt").and_then(|a| u32::try_from(a).ok()),
            result: s("result"),
            latency_ms: n("latency_ms"),
            detail: s("detail"),
            correlation_id: s("correlation_id"),
            causation_id: s("causation_id"),
            traceparent: s("traceparent"),
        })
    }

    fn to_record(&self) -> RecordInput {
        let mut headers = Vec::new();
        if let Some(c) = &self.correlation_id {
            headers.push(RecordHeader {
                key: Cow::Borrowed("c"),
                value: Some(c.as_bytes().to_vec()),
            });
        }
        if self.event_id.is_none()
            && let Some(p) = self.position_key()
        {
            headers.push(RecordHeader {
                key: Cow::Borrowed("p"),
                value: Some(p.into_bytes()),
            });
        }
        // The JSON form minus what the record already says; `at` is derived again on read.
        let mut value = self.to_json();
        if let Some(m) = value.as_object_mut() {
            m.remove("at");
        }
        RecordInput {
            timestamp: self.at_ms,
            key: self.event_id.as_ref().map(|id| id.as_bytes().to_vec()),
            value: Some(value.to_string().into_bytes()),
            headers,
        }
    }
}

fn decode(value: &[u8]) -> Option<Hop> {
    Hop::from_json(&serde_json::from_slice::<Value>(value).ok()?)
}

/// Adds a hop to the event `id`, within [`TRACE_HOPS_MAX`].
fn push(
    found: &mut BTreeMap<String, Vec<(Hop, u64)>>,
    truncated: &mut bool,
    id: &str,
    mut hop: Hop,
    seq: u64,
) {
    hop.event_id = Some(id.to_string());
    let hops = found.entry(id.to_string()).or_default();
    if hops.len() >= TRACE_HOPS_MAX {
        *truncated = true;
    } else {
        hops.push((hop, seq));
    }
}

fn position_key(topic: &str, partition: u32, offset: u64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// Many position-keyed hops of one kind at once: a poll's deliveries, an ack's or a nack's
/// items. Stored as one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// When.
    pub at_ms: i64,
    /// What happened to each.
    pub kind: HopKind,
    /// Topic.
    pub topic: String,
    /// The subscription.
    pub subscription: String,
    /// An error message (a nack's).
    pub detail: Option<String>,
    /// `(partition, offset, attempt)`.
    pub items: Vec<(u32, u64, u32)>,
}

/// What the queue carries.
#[derive(Debug)]
enum Entry {
    Hops(Vec<Hop>),
    Positions(Positions),
    /// A placement record already encoded, and how many events it holds.
    PlacedText(i64, String, usize),
}

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Hops(h) => h.len(),
            Entry::Positions(p) => p.items.len(),
            Entry::PlacedText(_, _, n) => *n,
        }
    }
}

/// Tab-separated fields, escaped so that a field holds no tab or newline.
fn put_field(out: &mut String, v: Option<&str>) {
    out.push('\t');
    let v = v.unwrap_or_default();
    if !v.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn optional(field: &str) -> Option<String> {
    (!field.is_empty()).then(|| unescape(field).into_owned())
}

fn placed_record(at_ms: i64, body: String) -> RecordInput {
    RecordInput {
        timestamp: at_ms,
        key: None,
        value: Some(body.into_bytes()),
        headers: vec![RecordHeader {
            key: Cow::Borrowed("b"),
            value: Some(b"placed".to_vec()),
        }],
    }
}

/// A publish's placement lines, encoded on the publishing thread before its events become
/// records, in one buffer (no allocation per event); after the append, each partition's lines
/// are copied into one placement record.
///
/// A placement record is a head `kind \t topic \t partition \t first offset \t default source`,
/// then a line per event: `offset \t id \t source \t correlation \t causation \t traceparent \t
/// detail \t pipeline`, where an empty offset is one past the previous one (the first is the
/// head's), an empty source is the default source, and trailing empty fields are dropped.
#[derive(Debug, Default)]
pub struct PlacementLines {
    text: String,
    spans: Vec<std::ops::Range<usize>>,
    default_source: String,
}

impl PlacementLines {
    /// The lines of `events`, in order (`dlq`: take the dead-letter error and pipeline from
    /// their `dlq*` extensions).
    #[must_use]
    pub fn of(events: &[crate::event::CloudEvent], dlq: bool) -> PlacementLines {
        let mut lines = PlacementLines {
            default_source: events.first().map_or("", |e| e.source.as_str()).to_string(),
            ..PlacementLines::default()
        };
        lines.text.reserve(events.len() * 24);
        lines.spans.reserve(events.len());
        for e in events {
            let ext = |k: &str| e.extensions.get(k).map(String::as_str);
            lines.push_line(
                &e.id,
                &e.source,
                [
                    ext("correlationid"),
                    ext("causationid"),
                    ext("traceparent"),
                    if dlq { ext("dlqerror") } else { None },
                    if dlq { ext("dlqpipeline") } else { None },
                ],
            );
        }
        lines
    }

    /// One line, without its offset field: `\t id \t source ...`.
    fn push_line(&mut self, id: &str, source: &str, rest: [Option<&str>; 5]) {
        let start = self.text.len();
        put_field(&mut self.text, Some(id));
        let source = (source != self.default_source).then_some(source);
        let fields = [source, rest[0], rest[1], rest[2], rest[3], rest[4]];
        let used = fields
            .iter()
            .rposition(|f| f.is_some_and(|v| !v.is_empty()))
            .map_or(0, |i| i + 1);
        for f in &fields[..used] {
            put_field(&mut self.text, *f);
        }
        self.spans.push(start..self.text.len());
    }

    fn head(&self, kind: HopKind, topic: &str, partition: u32, first_offset: u64) -> String {
        let mut head = String::with_capacity(self.text.len() / self.spans.len().max(1) * 4 + 64);
        head.push_str(kind.as_str());
        put_field(&mut head, Some(topic));
        head.push_str(&format!("\t{partition}\t{first_offset}"));
        put_field(&mut head, Some(&self.default_source));
        head
    }

    /// The placement record of the events at `indexes` (in order), appended at consecutive
    /// offsets from `base` of `partition`.
    #[must_use]
    fn body(
        &self,
        kind: HopKind,
        topic: &str,
        partition: u32,
        base: u64,
        indexes: &[usize],
    ) -> String {
        let mut body = self.head(kind, topic, partition, base);
        body.reserve(indexes.iter().map(|&i| self.spans[i].len() + 1).sum());
        for &i in indexes {
            body.push('\n');
            body.push_str(&self.text[self.spans[i].clone()]);
        }
        body
    }
}

impl Positions {
    fn to_record(&self) -> RecordInput {
        let mut v = String::with_capacity(64 + self.items.len() * 16);
        v.push_str(self.kind.as_str());
        put_field(&mut v, Some(&self.topic));
        put_field(&mut v, Some(&self.subscription));
        put_field(&mut v, self.detail.as_deref());
        for (p, o, a) in &self.items {
            use std::fmt::Write as _;
            let _ = write!(v, "\n{p}\t{o}\t{a}");
        }
        RecordInput {
            timestamp: self.at_ms,
            key: None,
            value: Some(v.into_bytes()),
            headers: vec![RecordHeader {
                key: Cow::Borrowed("b"),
                value: Some(b"positions".to_vec()),
            }],
        }
    }
}

fn header<'a>(r: &'a Record, key: &str) -> Option<&'a [u8]> {
    r.headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value.as_deref())
}

/// Lineage settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineageConfig {
    /// Record hops at all.
    pub enabled: bool,
    /// Keep at most this many bytes of hops.
    pub retention_bytes: u64,
    /// Keep hops at most this long.
    pub retention_ms: u64,
}

impl Default for LineageConfig {
    fn default() -> Self {
        LineageConfig {
            enabled: true,
            retention_bytes: LINEAGE_RETENTION_BYTES_DEFAULT,
            retention_ms: LINEAGE_RETENTION_MS_DEFAULT,
        }
    }
}

/// Counters of the recorder, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineageStats {
    /// Hops written to the lineage log.
    pub written: u64,
    /// Hops dropped because the queue was full.
    pub dropped: u64,
    /// Hops lost to a failed append.
    pub failed: u64,
    /// Bytes of lineage kept.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct Progress {
    /// Hops handed to the queue.
    queued: AtomicU64,
    /// Hops the writer has finished with (written or failed).
    done: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
}

/// The lineage recorder and its store.
#[derive(Debug)]
pub struct Lineage {
    tx: Option<SyncSender<Entry>>,
    progress: Arc<Progress>,
    partition: Option<Arc<gearbox_log::Partition>>,
    log: Mutex<Option<gearbox_log::Log>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    closing: AtomicBool,
}

/// Errors of a lineage lookup.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    /// Lineage is turned off.
    #[error("lineage recording is disabled")]
    Disabled,
    /// The lineage log could not be read.
    #[error("reading lineage: {0}")]
    Read(String),
}

/// What a correlation search found: each event's hops, in the order its first hop happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cascade {
    /// `(event id, its causation id, its hops)`.
    pub events: Vec<(String, Option<String>, Vec<Hop>)>,
    /// More events matched than [`TRACE_EVENTS_MAX`].
    pub truncated: bool,
}

/// One lookup's pass over the lineage log.
struct Scan<'a> {
    correlation: Option<&'a str>,
    /// The events wanted (grows as a correlation search finds members).
    ids: HashSet<String>,
    /// Where the wanted events were placed: topic → (partition, offset) → id.
    positions: HashMap<String, HashMap<(u32, u64), String>>,
    found: BTreeMap<String, Vec<(Hop, u64)>>,
    /// Position-keyed hops not (yet) joined to an event: a poller can record a delivery a
    /// moment before the publisher records the append, so the join looks back this far.
    recent: VecDeque<(Hop, u64)>,
    truncated: bool,
}

impl Scan<'_> {
    /// Whether the event `id` (with correlation id `corr`) is wanted; adds it when it joins the
    /// cascade, within [`TRACE_EVENTS_MAX`].
    fn wants(&mut self, id: &str, corr: Option<&str>) -> bool {
        if self.ids.contains(id) {
            return true;
        }
        if self.correlation.is_none() || corr != self.correlation {
            return false;
        }
        if self.ids.len() >= TRACE_EVENTS_MAX {
            self.truncated = true;
            return false;
        }
        self.ids.insert(id.to_string());
        true
    }

    fn event_at(&self, topic: &str, partition: u32, offset: u64) -> Option<&String> {
        self.positions.get(topic)?.get(&(partition, offset))
    }

    /// A hop of the wanted event `id`; a placement joins earlier position-keyed hops to it.
    fn add(&mut self, id: &str, hop: Hop, seq: u64) {
        if hop.kind.places()
            && let (Some(t), Some(p), Some(o)) = (&hop.topic, hop.partition, hop.offset)
            && self.event_at(t, p, o).is_none()
        {
            let mut i = 0;
            while i < self.recent.len() {
                let (h, _) = &self.recent[i];
                if h.topic.as_deref() == Some(t) && h.partition == Some(p) && h.offset == Some(o) {
                    let (h, seq) = self.recent.remove(i).expect("in range");
                    push(&mut self.found, &mut self.truncated, id, h, seq);
                } else {
                    i += 1;
                }
            }
            self.positions
                .entry(t.clone())
                .or_default()
                .insert((p, o), id.to_string());
        }
        push(&mut self.found, &mut self.truncated, id, hop, seq);
    }

    /// A position-keyed hop: joined now, or kept in the look-behind.
    fn add_at_position(&mut self, hop: Hop, seq: u64) {
        let (Some(t), Some(p), Some(o)) = (&hop.topic, hop.partition, hop.offset) else {
            return;
        };
        match self.event_at(t, p, o).cloned() {
            Some(id) => push(&mut self.found, &mut self.truncated, &id, hop, seq),
            None => {
                if self.recent.len() >= LOOKBEHIND_HOPS {
                    self.recent.pop_front();
                }
                self.recent.push_back((hop, seq));
            }
        }
    }

    fn record(&mut self, r: &Record) {
        let seq = r.offset as u64;
        let Some(value) = r.value.as_deref() else {
            return;
        };
        match header(r, "b") {
            Some(b"placed") => self.placed(r.timestamp, value, seq),
            Some(b"positions") => self.positions_batch(r.timestamp, value, seq),
            _ => {
                if let Some(k) = r.key.as_deref() {
                    let k = String::from_utf8_lossy(k);
                    let corr = header(r, "c").map(String::from_utf8_lossy);
                    if self.wants(&k, corr.as_deref())
                        && let Some(hop) = decode(value)
                    {
                        self.add(&k, hop, seq);
                    }
                } else if header(r, "p").is_some()
                    && let Some(hop) = decode(value)
                {
                    self.add_at_position(hop, seq);
                }
            }
        }
    }

    fn placed(&mut self, at_ms: i64, value: &[u8], seq: u64) {
        let Ok(text) = std::str::from_utf8(value) else {
            return;
        };
        let mut lines = text.split('\n');
        let Some(head) = lines.next() else { return };
        let head: Vec<&str> = head.split('\t').collect();
        let (Some(kind), Some(topic), Some(partition), Some(first)) = (
            head.first().and_then(|k| HopKind::parse(k)),
            head.get(1).map(|t| unescape(t)),
            head.get(2).and_then(|p| p.parse::<u32>().ok()),
            head.get(3).and_then(|o| o.parse::<u64>().ok()),
        ) else {
            return;
        };
        let default_source = head.get(4).map(|s| unescape(s));
        // See `PlacementLines`: an empty offset is one past the previous one, an empty source
        // the default one.
        let mut prev_offset: Option<u64> = None;
        for line in lines {
            let f: Vec<&str> = line.split('\t').collect();
            let offset = match f.first() {
                Some(o) if !o.is_empty() => o.parse().ok(),
                _ => Some(prev_offset.map_or(first, |o| o + 1)),
            };
            let (Some(offset), Some(id)) = (offset, f.get(1)) else {
                continue;
            };
            prev_offset = Some(offset);
            let source = match f.get(2).filter(|s| !s.is_empty()) {
                Some(src) => Some(unescape(src)),
                None => default_source.clone(),
            };
            let id = unescape(id);
            let corr = f.get(3).and_then(|c| optional(c));
            if !self.wants(&id, corr.as_deref()) {
                continue;
            }
            let field = |i: usize| f.get(i).and_then(|v| optional(v));
            let hop = Hop {
                at_ms,
                kind,
                event_id: Some(id.to_string()),
                source: source.as_deref().map(str::to_string),
                topic: Some(topic.to_string()),
                partition: Some(partition),
                offset: Some(offset),
                correlation_id: corr,
                causation_id: field(4),
                traceparent: field(5),
                detail: field(6),
                pipeline: field(7),
                ..Hop::default()
            };
            self.add(&id, hop, seq);
        }
    }

    fn positions_batch(&mut self, at_ms: i64, value: &[u8], seq: u64) {
        let Ok(text) = std::str::from_utf8(value) else {
            return;
        };
        let mut lines = text.split('\n');
        let Some(head) = lines.next() else { return };
        let head: Vec<&str> = head.split('\t').collect();
        let (Some(kind), Some(topic)) = (
            head.first().and_then(|k| HopKind::parse(k)),
            head.get(1).map(|t| unescape(t)),
        ) else {
            return;
        };
        let subscription = head.get(2).and_then(|s| optional(s));
        let detail = head.get(3).and_then(|d| optional(d));
        for line in lines {
            let mut f = line.split('\t').map(|x| x.parse::<u64>().ok());
            let (Some(Some(p)), Some(Some(o)), Some(Some(a))) = (f.next(), f.next(), f.next())
            else {
                continue;
            };
            let Ok(p) = u32::try_from(p) else { continue };
            let hop = Hop {
                at_ms,
                kind,
                topic: Some(topic.to_string()),
                partition: Some(p),
                offset: Some(o),
                subscription: subscription.clone(),
                attempt: u32::try_from(a).ok(),
                detail: detail.clone(),
                ..Hop::default()
            };
            self.add_at_position(hop, seq);
        }
    }
}

impl Lineage {
    /// A recorder that records nothing (lookups answer [`LineageError::Disabled`]).
    #[must_use]
    pub fn disabled() -> Lineage {
        Lineage {
            tx: None,
            progress: Arc::default(),
            partition: None,
            log: Mutex::new(None),
            writer: Mutex::new(None),
            closing: AtomicBool::new(false),
        }
    }

    /// Opens (or creates) the lineage log under `dir` and starts the writer thread.
    ///
    /// # Errors
    /// The log cannot be opened or created.
    pub fn open(dir: &Path, config: LineageConfig) -> Result<Lineage, String> {
        if !config.enabled {
            return Ok(Lineage::disabled());
        }
        let log = gearbox_log::Log::open(
            dir,
            LogOptions {
                storage: Arc::new(OsStorage),
                clock: Arc::new(SystemClock),
                background: true,
                retention_check_interval_ms: gearbox_log::RETENTION_CHECK_INTERVAL_MS_DEFAULT,
            },
        )
        .map_err(|e| format!("opening lineage log {}: {e}", dir.display()))?;
        let topic = match log.topic(TOPIC) {
            Some(t) => t,
            None => {
                let mut partition = PartitionConfig::new(
                    SyncMode::Never,
                    Retention {
                        bytes_max: Some(config.retention_bytes),
                        ms_max: Some(config.retention_ms),
                    },
                );
                partition.segment_bytes_max = LINEAGE_SEGMENT_BYTES.min(config.retention_bytes);
                partition.segment_bytes_max = partition
                    .segment_bytes_max
                    .max(gearbox_log::config::SEGMENT_BYTES_MIN);
                partition.batch_bytes_max = LINEAGE_BATCH_BYTES_MAX;
                log.create_topic(
                    TOPIC,
                    TopicConfig {
                        partitions: 1,
                        partition,
                    },
                )
                .map_err(|e| format!("creating lineage log: {e}"))?
            }
        };
        let partition = topic
            .partition(0)
            .cloned()
            .ok_or("the lineage log has no partition")?;
        let (tx, rx) = sync_channel(LINEAGE_QUEUE_MAX);
        let progress = Arc::new(Progress::default());
        let writer = {
            let partition = partition.clone();
            let progress = progress.clone();
            std::thread::Builder::new()
                .name("gearbox-lineage".into())
                .spawn(move || write_loop(&rx, &partition, &progress))
                .map_err(|e| format!("starting the lineage writer: {e}"))?
        };
        Ok(Lineage {
            tx: Some(tx),
            progress,
            partition: Some(partition),
            log: Mutex::new(Some(log)),
            writer: Mutex::new(Some(writer)),
            closing: AtomicBool::new(false),
        })
    }

    /// Whether hops are recorded.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues hops for the writer. Never blocks: a full queue drops them (and counts them).
    pub fn record(&self, hops: Vec<Hop>) {
        self.queue(Entry::Hops(hops));
    }

    /// Queues the placement record of a publish's events at `indexes` of `lines`, appended at
    /// consecutive offsets from `base` (see [`PlacementLines`]), in records of at most
    /// [`PLACED_EVENTS_MAX`] events.
    #[allow(clippy::too_many_arguments)]
    pub fn record_placement_lines(
        &self,
        lines: &PlacementLines,
        kind: HopKind,
        at_ms: i64,
        topic: &str,
        partition: u32,
        base: u64,
        indexes: &[usize],
    ) {
        for (k, chunk) in indexes.chunks(PLACED_EVENTS_MAX).enumerate() {
            let first = base + (k * PLACED_EVENTS_MAX) as u64;
            let body = lines.body(kind, topic, partition, first, chunk);
            self.queue(Entry::PlacedText(at_ms, body, chunk.len()));
        }
    }

    /// Queues a batch of position-keyed hops (see [`Positions`]).
    pub fn record_positions(&self, positions: Positions) {
        self.queue(Entry::Positions(positions));
    }

    fn queue(&self, entry: Entry) {
        let Some(tx) = &self.tx else { return };
        if entry.len() == 0 || self.closing.load(Relaxed) {
            return;
        }
        let n = entry.len() as u64;
        self.progress.queued.fetch_add(n, Relaxed);
        match tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.progress.dropped.fetch_add(n, Relaxed);
                self.progress.done.fetch_add(n, Relaxed);
            }
        }
    }

    /// The recorder's counters.
    #[must_use]
    pub fn stats(&self) -> LineageStats {
        LineageStats {
            written: self.progress.written.load(Relaxed),
            dropped: self.progress.dropped.load(Relaxed),
            failed: self.progress.failed.load(Relaxed),
            bytes: self.partition.as_ref().map_or(0, |p| p.size_bytes()),
        }
    }

    /// Waits (at most [`FLUSH_WAIT_MS_MAX`]) until every hop queued before the call is written,
    /// so a lookup sees what happened before it.
    pub fn flush_wait(&self) {
        let target = self.progress.queued.load(Relaxed);
        let deadline = Instant::now() + Duration::from_millis(FLUSH_WAIT_MS_MAX);
        let mut guard = self
            .progress
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while self.progress.done.load(Relaxed) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = self
                .progress
                .cv
                .wait_timeout(guard, left.min(Duration::from_millis(50)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Every recorded hop of the event `id`, in order.
    ///
    /// # Errors
    /// [`LineageError`].
    pub fn trace(&self, id: &str) -> Result<(Vec<Hop>, bool), LineageError> {
        let found = self.scan(None, [id.to_string()].into())?;
        Ok(found
            .events
            .into_iter()
            .find(|(e, _, _)| e == id)
            .map(|(_, _, hops)| (hops, found.truncated))
            .unwrap_or_default())
    }

    /// Every event whose `correlationid` is `correlation_id` (and the event whose id it is),
    /// each with its hops.
    ///
    /// # Errors
    /// [`LineageError`].
    pub fn correlation(&self, correlation_id: &str) -> Result<Cascade, LineageError> {
        self.scan(Some(correlation_id), [correlation_id.to_string()].into())
    }

    /// One pass over the retained hops, collecting those of `ids`, of events whose correlation
    /// id is `correlation`, and of the positions where those events were placed.
    fn scan(
        &self,
        correlation: Option<&str>,
        ids: HashSet<String>,
    ) -> Result<Cascade, LineageError> {
        let Some(partition) = &self.partition else {
            return Err(LineageError::Disabled);
        };
        self.flush_wait();
        let mut scan = Scan {
            correlation,
            ids,
            positions: HashMap::new(),
            found: BTreeMap::new(),
            recent: VecDeque::new(),
            truncated: false,
        };
        let mut offset = partition.log_start_offset();
        let end = partition.high_watermark();
        while offset < end {
            let records = match partition.read_records(offset, SCAN_CHUNK_BYTES) {
                Ok(r) => r,
                // Retention deleted what we were about to read: go on from the new start.
                Err(gearbox_log::ReadError::OffsetOutOfRange { .. }) => {
                    let start = partition.log_start_offset();
                    if start > offset {
                        offset = start;
                        continue;
                    }
                    break;
                }
                Err(e) => return Err(LineageError::Read(e.to_string())),
            };
            let Some(last) = records.last() else { break };
            offset = last.offset as u64 + 1;
            for r in &records {
                scan.record(r);
            }
        }
        let mut events: Vec<(String, Option<String>, Vec<Hop>)> = scan
            .found
            .into_iter()
            .map(|(id, mut hops)| {
                hops.sort_by_key(|(h, seq)| (h.at_ms, h.attempt.unwrap_or(0), h.kind.rank(), *seq));
                let hops: Vec<Hop> = hops.into_iter().map(|(h, _)| h).collect();
                let cause = hops.iter().find_map(|h| h.causation_id.clone());
                (id, cause, hops)
            })
            .collect();
        events
            .sort_by_key(|(id, _, hops)| (hops.first().map_or(i64::MAX, |h| h.at_ms), id.clone()));
        Ok(Cascade {
            events,
            truncated: scan.truncated,
        })
    }

    /// Writes what is queued, stops the writer and syncs the lineage log.
    pub fn close(&self) {
        if self.closing.swap(true, Relaxed) {
            return;
        }
        if let Some(tx) = &self.tx {
            // The empty batch tells the writer to finish; it may wait behind a full queue.
            let _ = tx.send(Entry::Hops(Vec::new()));
        }
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = w.join();
        }
        if let Some(log) = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            && let Err(e) = log.close()
        {
            tracing::warn!(error = %e, "closing the lineage log");
        }
    }
}

impl Drop for Lineage {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(rx: &Receiver<Entry>, partition: &gearbox_log::Partition, progress: &Progress) {
    let mut warned = false;
    while let Ok(first) = rx.recv() {
        let mut stop = first.len() == 0;
        let mut n = first.len();
        let mut entries = vec![first];
        // Linger a moment so that many small batches become one append.
        let deadline = Instant::now() + Duration::from_millis(LINEAGE_LINGER_MS);
        while n < LINEAGE_WRITE_HOPS_MAX && !stop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(more) if more.len() == 0 => stop = true,
                Ok(more) => {
                    n += more.len();
                    entries.push(more);
                }
                Err(_) => break,
            }
        }
        if n > 0 {
            match append(partition, &entries) {
                Ok(()) => {
                    progress.written.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    progress.failed.fetch_add(n as u64, Relaxed);
                    if !warned {
                        tracing::warn!(error = %e, "lineage hops could not be written; counting losses");
                        warned = true;
                    }
                }
            }
            progress.done.fetch_add(n as u64, Relaxed);
            let _guard = progress
                .lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            progress.cv.notify_all();
        }
        if stop {
            break;
        }
    }
}

/// Appends entries in batches of at most [`HOP_BATCH_BYTES_MAX`] (one record per placement or
/// positions batch, one per single hop).
fn append(partition: &gearbox_log::Partition, entries: &[Entry]) -> Result<(), String> {
    let mut batch = BatchBuilder::new();
    let push = |batch: &mut BatchBuilder, record: RecordInput| -> Result<(), String> {
        batch.push(record);
        if batch.encoded_len() >= HOP_BATCH_BYTES_MAX {
            let bytes = batch.build().map_err(|e| e.to_string())?;
            partition.append(&bytes).map_err(|e| e.to_string())?;
            *batch = BatchBuilder::new();
        }
        Ok(())
    };
    for entry in entries {
        match entry {
            Entry::Hops(hops) => {
                for hop in hops {
                    push(&mut batch, hop.to_record())?;
                }
            }
            Entry::Positions(p) => push(&mut batch, p.to_record())?,
            Entry::PlacedText(at_ms, body, _) => {
                push(&mut batch, placed_record(*at_ms, body.clone()))?
            }
        }
    }
    if !batch.is_empty() {
        let bytes = batch.build().map_err(|e| e.to_string())?;
        partition.append(&bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Lineage {
        Lineage::open(dir, LineageConfig::default()).unwrap()
    }

    #[test]
    fn a_trace_joins_position_hops_to_the_event_and_orders_them() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path());
        let appended = Hop::event(HopKind::Appended, 10, "e1").position("t", 0, 7);
        // Recorded out of order (a poller can beat the publisher to the recorder).
        let mut delivered = Hop::at_position(HopKind::Delivered, 10, "t", 0, 7);
        delivered.attempt = Some(1);
        delivered.subscription = Some("s".into());
        let mut acked = Hop::at_position(HopKind::Acked, 12, "t", 0, 7);
        acked.attempt = Some(1);
        l.record(vec![delivered.clone()]);
        l.record(vec![appended, acked]);
        // Another event's hops at another position are not included.
        l.record(vec![
            Hop::event(HopKind::Appended, 11, "e2").position("t", 0, 8),
            Hop::at_position(HopKind::Acked, 13, "t", 0, 8),
        ]);
        let (hops, truncated) = l.trace("e1").unwrap();
        assert!(!truncated);
        let kinds: Vec<&str> = hops.iter().map(|h| h.kind.as_str()).collect();
        assert_eq!(kinds, ["appended", "delivered", "acked"]);
        assert!(hops.iter().all(|h| h.event_id.as_deref() == Some("e1")));
        assert_eq!(hops[1].subscription.as_deref(), Some("s"));
        assert!(l.trace("nope").unwrap().0.is_empty());
    }

    #[test]
    fn a_correlation_search_finds_the_cascade_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = open(dir.path());
            let mut hops = Vec::new();
            for (i, (id, cause)) in [("a", None), ("b", Some("a")), ("c", Some("b"))]
                .into_iter()
                .enumerate()
            {
                let mut h =
                    Hop::event(HopKind::Appended, 100 + i as i64, id).position("t", 0, i as u64);
                h.correlation_id = cause.map(|_| "a".to_string());
                h.causation_id = cause.map(str::to_string);
                hops.push(h);
            }
            hops.push(Hop::event(HopKind::Appended, 1, "unrelated").position("t", 0, 9));
            l.record(hops);
            l.close();
        }
        let l = open(dir.path());
        let found = l.correlation("a").unwrap();
        let ids: Vec<&str> = found.events.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(found.events[2].1.as_deref(), Some("b"));
        assert_eq!(l.stats().dropped, 0);
    }

    #[test]
    fn placements_and_positions_round_trip_through_their_compact_records() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path());
        let ev = |id: &str, source: &str, ext: &[(&str, &str)]| crate::event::CloudEvent {
            id: id.into(),
            source: source.into(),
            ty: "t".into(),
            specversion: "1.0".into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            time: None,
            extensions: ext
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            data: None,
        };
        let odd = ev(
            "tab\there\nnew\\line",
            "/b",
            &[("correlationid", "c\t1"), ("traceparent", "00-aa-bb-01")],
        );
        let events = [
            ev("a", "/a", &[]),
            ev("b", "/a", &[]),
            odd.clone(),
            ev("d", "/b", &[("dlqerror", "boom")]),
        ];
        // The default source (the first event's) is left out of a line; another one is not. The
        // escaped fields come back as they were.
        let lines = PlacementLines::of(&events, true);
        l.record_placement_lines(&lines, HopKind::Appended, 5, "t", 2, 3, &[0, 1]);
        l.record_placement_lines(&lines, HopKind::Appended, 5, "t", 2, 9, &[2, 3]);
        l.record_positions(Positions {
            at_ms: 6,
            kind: HopKind::Delivered,
            topic: "t".into(),
            subscription: "s".into(),
            detail: None,
            items: vec![(2, 4, 1), (2, 9, 2), (1, 4, 1)],
        });
        let (b, _) = l.trace("b").unwrap();
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(
            (b[0].offset, b[0].partition, b[0].source.as_deref()),
            (Some(4), Some(2), Some("/a"))
        );
        assert_eq!((b[1].kind, b[1].attempt), (HopKind::Delivered, Some(1)));
        let (o, _) = l.trace(&odd.id).unwrap();
        assert_eq!(o[0].offset, Some(9));
        assert_eq!(o[0].source.as_deref(), Some("/b"));
        assert_eq!(o[0].correlation_id.as_deref(), Some("c\t1"));
        assert_eq!(o[0].traceparent.as_deref(), Some("00-aa-bb-01"));
        assert_eq!(o[1].attempt, Some(2));
        let (d, _) = l.trace("d").unwrap();
        assert_eq!(
            (d[0].offset, d[0].source.as_deref(), d[0].detail.as_deref()),
            (Some(10), Some("/b"), Some("boom"))
        );
        assert_eq!(d.len(), 1, "a delivery at another partition is not d's");
        assert_eq!(l.correlation("c\t1").unwrap().events.len(), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // A recorder whose writer never runs: its queue fills at LINEAGE_QUEUE_MAX batches.
        let (tx, _rx) = sync_channel(LINEAGE_QUEUE_MAX);
        let l = Lineage {
            tx: Some(tx),
            progress: Arc::default(),
            partition: None,
            log: Mutex::new(None),
            writer: Mutex::new(None),
            closing: AtomicBool::new(false),
        };
        for i in 0..LINEAGE_QUEUE_MAX + 5 {
            l.record(vec![Hop::event(HopKind::Appended, i as i64, "x")]);
        }
        assert_eq!(l.stats().dropped, 5);
        // close() must not wait on the never-draining queue forever: mark closing first.
        l.closing.store(true, Relaxed);
    }

    #[test]
    fn disabled_lineage_records_nothing_and_says_so() {
        let l = Lineage::disabled();
        l.record(vec![Hop::event(HopKind::Appended, 1, "x")]);
        assert!(matches!(l.trace("x"), Err(LineageError::Disabled)));
    }
}
