//! Reconcile: the stream against the warehouse, per bucket, with every difference either
//! explained by the sink's lag or reported as unexplained.
//!
//! The two sides are joined on the position, (partition, offset), which both keep. A stream
//! event (in the time window) is
//! - **matched** when a committed row has its position and id (and equal `sum` values);
//! - **lag** when no row has its position and the offset is at or after the sink's committed
//!   position for its partition: it is still in the sink's buffer or not read yet;
//! - **missing** (unexplained) when no row has its position but the offset is below the
//!   committed position: the files claim to cover it;
//! - **differs** (unexplained) when the row at its position has another id or other `sum`
//!   values.
//!
//! A row of a complete group is **extra** (unexplained) when its time is in the window and no
//! stream event has its position, and **duplicated** (unexplained) once for each copy of a
//! position beyond the first. Rows of incomplete groups are not committed and are ignored.
//!
//! Both sides are windowed on their event time: [`StreamEvent::time_ms`] and the files' `time`
//! column, which the sink fills from the CloudEvents `time` (so pass that as `time_ms`).
//! Memory is bounded by `rows_max` rows per side.

use crate::read::{self, Field, ReadError, Select, WarehouseRow};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Sample ids kept per kind of difference and bucket, by default.
pub const SAMPLES_DEFAULT: usize = 10;
/// The most sample ids a report may keep per kind and bucket.
pub const SAMPLES_MAX: usize = 1_000;
/// Rows (per side) a reconcile holds in memory, by default.
pub const ROWS_MAX_DEFAULT: usize = 5_000_000;
/// The largest `rows_max`.
pub const ROWS_MAX_MAX: usize = 100_000_000;
/// Buckets a report may have; more is an error (group by a field with fewer values).
pub const BUCKETS_MAX: usize = 100_000;
/// The bucket's key when `by` is not given.
pub const ALL_BUCKET: &str = "all";
/// The bucket's key for events without the `by` field.
pub const NULL_BUCKET: &str = "__null__";

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// Its id.
    pub id: String,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its time (the CloudEvents `time`, ms since the epoch), for the window and time buckets.
    pub time_ms: i64,
    /// The CloudEvent in structured JSON.
    pub event: Value,
}

/// How to bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// By a field's value (`type`, `data.store`).
    Field(String),
    /// By the hour of the event's time (UTC), `YYYY-MM-DDTHH`.
    Hour,
    /// By the day of the event's time (UTC), `YYYY-MM-DD`.
    Day,
}

impl std::str::FromStr for GroupBy {
    type Err = ReadError;

    fn from_str(s: &str) -> Result<GroupBy, ReadError> {
        Ok(match s {
            "hour" => GroupBy::Hour,
            "day" => GroupBy::Day,
            field => {
                Field::parse(field)?;
                GroupBy::Field(field.to_string())
            }
        })
    }
}

/// What to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// The window's start, ms since the epoch, inclusive.
    pub from_ms: Option<i64>,
    /// The window's end, exclusive.
    pub to_ms: Option<i64>,
    /// Numeric fields to sum on both sides (`data.qty`).
    pub sum: Vec<String>,
    /// Buckets (none: one bucket, [`ALL_BUCKET`]).
    pub by: Option<GroupBy>,
    /// Sample ids per kind and bucket (at most [`SAMPLES_MAX`]).
    pub samples: usize,
    /// Rows per side held in memory (at most [`ROWS_MAX_MAX`]).
    pub rows_max: usize,
}

impl Default for ReconcileOptions {
    fn default() -> ReconcileOptions {
        ReconcileOptions {
            from_ms: None,
            to_ms: None,
            sum: Vec::new(),
            by: None,
            samples: SAMPLES_DEFAULT,
            rows_max: ROWS_MAX_DEFAULT,
        }
    }
}

/// Why a reconcile could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Reading the warehouse failed, or a field does not resolve.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An option is out of range.
    #[error("{field}: {reason}")]
    Option {
        /// The option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A side has more rows than `rows_max`: narrow the window.
    #[error("the {side} has more than {limit} rows in the window (rows_max); narrow the window")]
    TooManyRows {
        /// `stream` or `warehouse`.
        side: &'static str,
        /// The limit.
        limit: usize,
    },
    /// More than [`BUCKETS_MAX`] buckets.
    #[error("more than {BUCKETS_MAX} buckets (BUCKETS_MAX); group by a field with fewer values")]
    TooManyBuckets,
}

/// A bucket's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Both sides agree.
    Match,
    /// They differ only by events the sink has not committed yet.
    Lag,
    /// Some difference is not explained by lag.
    Unexplained,
}

/// Counts and sums of one side of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Side {
    /// Events (stream) or rows (warehouse).
    pub count: u64,
    /// Sum of each `sum` field (values that are not numbers count as nothing).
    pub sums: BTreeMap<String, f64>,
}

/// One kind of difference: how many, and some ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// How many.
    pub count: u64,
    /// Up to `samples` event ids.
    pub samples: Vec<String>,
}

impl Diff {
    fn add(&mut self, id: &str, samples: usize) {
        self.count += 1;
        if self.samples.len() < samples {
            self.samples.push(id.to_string());
        }
    }
}

/// One bucket of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    /// The bucket's key (a `by` value, an hour or day, or [`ALL_BUCKET`]).
    pub key: String,
    /// The verdict.
    pub status: Status,
    /// The stream's events in the window.
    pub stream: Side,
    /// The warehouse's rows attributed to the bucket (matched rows count in their event's
    /// bucket).
    pub warehouse: Side,
    /// Events in both.
    pub matched: u64,
    /// Explained by lag: not committed yet.
    pub lag: Diff,
    /// Unexplained: below the committed positions, absent from the files.
    pub missing: Diff,
    /// Unexplained: rows in the files at positions the stream does not have.
    pub extra: Diff,
    /// Unexplained: further copies of a position in the files.
    pub duplicated: Diff,
    /// Unexplained: the row at the event's position has another id or other sums.
    pub differs: Diff,
}

impl Bucket {
    fn new(key: String) -> Bucket {
        Bucket {
            key,
            status: Status::Match,
            stream: Side::default(),
            warehouse: Side::default(),
            matched: 0,
            lag: Diff::default(),
            missing: Diff::default(),
            extra: Diff::default(),
            duplicated: Diff::default(),
            differs: Diff::default(),
        }
    }

    /// The differences lag does not explain.
    #[must_use]
    pub fn unexplained(&self) -> u64 {
        self.missing.count + self.extra.count + self.duplicated.count + self.differs.count
    }
}

/// The result of a reconcile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The window's start (inclusive), if any.
    pub from_ms: Option<i64>,
    /// The window's end (exclusive), if any.
    pub to_ms: Option<i64>,
    /// The sink's committed positions: `(partition, next offset)`.
    pub positions: Vec<(u32, u64)>,
    /// Files of complete groups read.
    pub files: usize,
    /// Files of incomplete groups ignored (a crash the sink has not recovered from yet).
    pub files_incomplete: usize,
    /// The overall verdict.
    pub status: Status,
    /// Per bucket, in key order.
    pub buckets: Vec<Bucket>,
}

impl Report {
    /// Differences not explained by lag, across buckets.
    #[must_use]
    pub fn unexplained_total(&self) -> u64 {
        self.buckets.iter().map(Bucket::unexplained).sum()
    }

    /// Events explained by lag, across buckets.
    #[must_use]
    pub fn lag_total(&self) -> u64 {
        self.buckets.iter().map(|b| b.lag.count).sum()
    }
}

/// A stream event, kept.
struct Kept {
    id: String,
    bucket: String,
    numbers: Vec<Option<f64>>,
}

/// Compares the stream (a topic's events; those outside the window are skipped) with the
/// warehouse under `dir`.
///
/// # Errors
/// [`ReconcileError`]: an option out of range, a field that does not resolve, an unreadable
/// file, or more rows or buckets than the limits.
pub fn reconcile<I: IntoIterator<Item = StreamEvent>>(
    stream: I,
    dir: &Path,
    options: &ReconcileOptions,
) -> Result<Report, ReconcileError> {
    if options.samples > SAMPLES_MAX {
        return Err(ReconcileError::Option {
            field: "samples",
            reason: format!("at most {SAMPLES_MAX} (SAMPLES_MAX)"),
        });
    }
    if options.rows_max == 0 || options.rows_max > ROWS_MAX_MAX {
        return Err(ReconcileError::Option {
            field: "rows_max",
            reason: format!("must be 1 to {ROWS_MAX_MAX} (ROWS_MAX_MAX)"),
        });
    }
    let sums: Vec<Field> = options
        .sum
        .iter()
        .map(|s| Field::parse(s))
        .collect::<Result<_, _>>()?;
    let by_field = match &options.by {
        Some(GroupBy::Field(f)) => Some(Field::parse(f)?),
        _ => None,
    };
    let in_window = |t: i64| {
        options.from_ms.is_none_or(|f| t >= f) && options.to_ms.is_none_or(|e| t < e)
    };
    let bucket_of_time = |t: i64| -> String {
        let at = chrono::DateTime::from_timestamp_millis(t).unwrap_or_default();
        match options.by {
            Some(GroupBy::Hour) => at.format("%Y-%m-%dT%H").to_string(),
            Some(GroupBy::Day) => at.format("%Y-%m-%d").to_string(),
            _ => ALL_BUCKET.to_string(),
        }
    };
    let samples = options.samples;
    let mut buckets: BTreeMap<String, Bucket> = BTreeMap::new();

    // The stream side, in the window.
    let mut events: BTreeMap<(u32, u64), Kept> = BTreeMap::new();
    for e in stream {
        if !in_window(e.time_ms) {
            continue;
        }
        if events.len() >= options.rows_max {
            return Err(ReconcileError::TooManyRows {
                side: "stream",
                limit: options.rows_max,
            });
        }
        let key = match &by_field {
            Some(f) => read::group_key(f.in_event(&e.event)).unwrap_or_else(|| NULL_BUCKET.into()),
            None => bucket_of_time(e.time_ms),
        };
        let numbers: Vec<Option<f64>> = sums
            .iter()
            .map(|f| f.in_event(&e.event).and_then(Value::as_f64))
            .collect();
        let b = bucket(&mut buckets, &key)?;
        b.stream.count += 1;
        add_sums(&mut b.stream, &options.sum, &numbers);
        events.insert(
            (e.partition, e.offset),
            Kept {
                id: e.id,
                bucket: key,
                numbers,
            },
        );
    }

    // The warehouse side: rows of complete groups at a stream position or in the window.
    let positions = read::committed_positions(dir)?;
    let files = read::scan(dir)?;
    let select = Select {
        numbers: sums.clone(),
        group: by_field.clone(),
    };
    let mut rows: BTreeMap<(u32, u64), Vec<WarehouseRow>> = BTreeMap::new();
    let mut held = 0usize;
    let mut files_read = 0;
    for f in files.iter().filter(|f| f.complete) {
        files_read += 1;
        for r in read::read_rows(&f.path, &select)? {
            let at = (r.partition, r.offset);
            if !events.contains_key(&at) && !in_window(r.time_ms) {
                continue;
            }
            held += 1;
            if held > options.rows_max {
                return Err(ReconcileError::TooManyRows {
                    side: "warehouse",
                    limit: options.rows_max,
                });
            }
            rows.entry(at).or_default().push(r);
        }
    }

    // Events against rows.
    for (&(p, o), e) in &events {
        let b = bucket(&mut buckets, &e.bucket)?;
        match rows.get(&(p, o)) {
            None if positions.get(&p).is_none_or(|&c| o >= c) => b.lag.add(&e.id, samples),
            None => b.missing.add(&e.id, samples),
            Some(copies) => {
                let first = &copies[0];
                b.warehouse.count += copies.len() as u64;
                for c in copies {
                    add_sums(&mut b.warehouse, &options.sum, &c.numbers);
                }
                if first.id == e.id && first.numbers == e.numbers {
                    b.matched += 1;
                } else {
                    b.differs.add(&e.id, samples);
                }
                for c in &copies[1..] {
                    b.duplicated.add(&c.id, samples);
                }
            }
        }
    }
    // Rows the stream does not have.
    for (at, copies) in &rows {
        if events.contains_key(at) {
            continue;
        }
        for (i, r) in copies.iter().enumerate() {
            let key = match &by_field {
                Some(_) => r.group.clone().unwrap_or_else(|| NULL_BUCKET.into()),
                None => bucket_of_time(r.time_ms),
            };
            let b = bucket(&mut buckets, &key)?;
            b.warehouse.count += 1;
            add_sums(&mut b.warehouse, &options.sum, &r.numbers);
            if i == 0 {
                b.extra.add(&r.id, samples);
            } else {
                b.duplicated.add(&r.id, samples);
            }
        }
    }

    let mut buckets: Vec<Bucket> = buckets.into_values().collect();
    for b in &mut buckets {
        b.status = verdict(b.unexplained(), b.lag.count);
    }
    let unexplained: u64 = buckets.iter().map(Bucket::unexplained).sum();
    let lag: u64 = buckets.iter().map(|b| b.lag.count).sum();
    Ok(Report {
        from_ms: options.from_ms,
        to_ms: options.to_ms,
        positions: positions.into_iter().collect(),
        files: files_read,
        files_incomplete: files.iter().filter(|f| !f.complete).count(),
        status: verdict(unexplained, lag),
        buckets,
    })
}

/// The bucket of `key`, made if new.
fn bucket<'a>(
    buckets: &'a mut BTreeMap<String, Bucket>,
    key: &str,
) -> Result<&'a mut Bucket, ReconcileError> {
    if !buckets.contains_key(key) {
        if buckets.len() >= BUCKETS_MAX {
            return Err(ReconcileError::TooManyBuckets);
        }
        buckets.insert(key.to_string(), Bucket::new(key.to_string()));
    }
    Ok(buckets.get_mut(key).expect("just inserted"))
}

fn verdict(unexplained: u64, lag: u64) -> Status {
    if unexplained > 0 {
        Status::Unexplained
    } else if lag > 0 {
        Status::Lag
    } else {
        Status::Match
    }
}

fn add_sums(side: &mut Side, names: &[String], numbers: &[Option<f64>]) {
    for (name, n) in names.iter().zip(numbers) {
        *side.sums.entry(name.clone()).or_insert(0.0) += n.unwrap_or(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ParquetConfig;
    use crate::row::Extractor;
    use crate::sink::Batcher;
    use gearbox_connect::sink::SinkRecord;
    use serde_json::json;
    use std::time::Instant;

    const HOUR_MS: i64 = 3_600_000;
    /// 2026-11-24T00:00:00Z.
    const T0: i64 = 1_795_478_400_000;

    fn event(p: u32, o: u64, hour: i64, store: &str, qty: i64) -> StreamEvent {
        let time_ms = T0 + hour * HOUR_MS;
        let time = chrono::DateTime::from_timestamp_millis(time_ms)
            .unwrap()
            .to_rfc3339();
        StreamEvent {
            id: format!("e-{p}-{o}"),
            partition: p,
            offset: o,
            time_ms,
            event: json!({"specversion": "1.0", "id": format!("e-{p}-{o}"), "source": "/s",
                "type": "sale", "time": time, "data": {"store": store, "qty": qty}}),
        }
    }

    /// The stream: 2 partitions × 6 events over three hours.
    fn stream() -> Vec<StreamEvent> {
        (0..2)
            .flat_map(|p| {
                (0..6).map(move |o| event(p, o, (o / 2) as i64, ["a", "b"][o as usize % 2], 1 + o as i64))
            })
            .collect()
    }

    /// Writes `events` as the sink would, committing partition p up to `upto[p]`.
    fn warehouse(dir: &Path, events: &[StreamEvent], upto: &[(u32, u64)]) {
        let config = ParquetConfig::new(dir);
        let x = Extractor::new(&config);
        let mut b = Batcher::new(config).unwrap();
        b.recover().unwrap();
        let start: Vec<(u32, u64)> = upto.iter().map(|&(p, _)| (p, 0)).collect();
        b.apply(Vec::new(), &start, Instant::now()).unwrap();
        let rows = events
            .iter()
            .filter(|e| upto.iter().any(|&(p, end)| p == e.partition && e.offset < end))
            .map(|e| {
                let r = SinkRecord {
                    id: e.id.clone(),
                    value: e.event.clone(),
                    attempt: 1,
                    partition: e.partition,
                    offset: e.offset,
                    time_ms: None,
                    traceparent: None,
                };
                x.row_at(&r, 0).unwrap()
            })
            .collect();
        b.apply(rows, upto, Instant::now()).unwrap();
        b.commit().unwrap();
    }

    fn options() -> ReconcileOptions {
        ReconcileOptions {
            sum: vec!["data.qty".into()],
            ..ReconcileOptions::default()
        }
    }

    #[test]
    fn equal_sides_match_per_bucket_with_sums() {
        let dir = tempfile::tempdir().unwrap();
        let s = stream();
        warehouse(dir.path(), &s, &[(0, 6), (1, 6)]);
        let mut o = options();
        o.by = Some("data.store".parse().unwrap());
        let r = reconcile(s, dir.path(), &o).unwrap();
        assert_eq!(r.status, Status::Match);
        assert_eq!(r.unexplained_total(), 0);
        assert_eq!(r.positions, vec![(0, 6), (1, 6)]);
        let keys: Vec<&str> = r.buckets.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        let a = &r.buckets[0];
        assert_eq!((a.stream.count, a.warehouse.count, a.matched), (6, 6, 6));
        // qty 1, 3, 5 in each partition.
        assert_eq!(a.stream.sums["data.qty"], 18.0);
        assert_eq!(a.warehouse.sums["data.qty"], 18.0);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["buckets"][1]["status"], "match");
    }

    #[test]
    fn uncommitted_events_are_lag_and_a_window_and_hours_bucket_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = stream();
        // Partition 1 committed up to offset 4: offsets 4 and 5 (hour 2) are buffered or unread.
        warehouse(dir.path(), &s, &[(0, 6), (1, 4)]);
        let mut o = options();
        o.by = Some(GroupBy::Hour);
        let r = reconcile(s.clone(), dir.path(), &o).unwrap();
        assert_eq!(r.status, Status::Lag);
        assert_eq!(r.unexplained_total(), 0);
        assert_eq!(r.lag_total(), 2);
        let last = r.buckets.last().unwrap();
        assert_eq!(last.key, "2026-11-24T02");
        assert_eq!(last.status, Status::Lag);
        assert_eq!(last.lag.samples, ["e-1-4", "e-1-5"]);
        assert_eq!(r.buckets[0].status, Status::Match);
        // A window that ends before hour 2 sees no lag.
        o.to_ms = Some(T0 + 2 * HOUR_MS);
        let r = reconcile(s, dir.path(), &o).unwrap();
        assert_eq!(r.status, Status::Match);
        assert_eq!(r.buckets.len(), 2);
    }

    #[test]
    fn missing_extra_duplicated_and_differing_rows_are_unexplained() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = stream();
        warehouse(dir.path(), &s, &[(0, 6), (1, 6)]);
        // The stream has an event the files should have but do not: a row was lost.
        let files = crate::read::scan(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        // Duplicate: partition 0's file again, as if a group had been committed twice.
        let p0 = files.iter().find(|f| f.partition == 0).unwrap();
        let copy = p0.path.with_file_name(crate::files::file_name(0, 6, 9, 1, 1));
        std::fs::copy(&p0.path, &copy).unwrap();
        // Extra: the stream lacks (1, 5); differs: (1, 4) has another id in the stream.
        s.retain(|e| (e.partition, e.offset) != (1, 5));
        s.iter_mut()
            .find(|e| (e.partition, e.offset) == (1, 4))
            .unwrap()
            .id = "other".into();
        // Missing: an event at (1, 2) whose row is gone — rewrite partition 1 without it.
        let p1 = files.iter().find(|f| f.partition == 1).unwrap();
        std::fs::remove_file(&p1.path).unwrap();
        let rows_p1: Vec<StreamEvent> = stream()
            .into_iter()
            .filter(|e| e.partition == 1 && e.offset != 2)
            .collect();
        let sub = tempfile::tempdir().unwrap();
        warehouse(sub.path(), &rows_p1, &[(1, 6)]);
        let written = crate::read::scan(sub.path()).unwrap();
        std::fs::create_dir_all(p1.path.parent().unwrap()).unwrap();
        std::fs::copy(&written[0].path, &p1.path).unwrap();

        let mut o = options();
        o.samples = 1;
        let r = reconcile(s, dir.path(), &o).unwrap();
        assert_eq!(r.status, Status::Unexplained);
        let b = &r.buckets[0];
        assert_eq!(b.missing.count, 1);
        assert_eq!(b.missing.samples, ["e-1-2"]);
        assert_eq!(b.extra.count, 1);
        assert_eq!(b.extra.samples, ["e-1-5"]);
        assert_eq!(b.differs.count, 1);
        assert_eq!(b.differs.samples, ["other"]);
        assert_eq!(b.duplicated.count, 6);
        assert_eq!(b.duplicated.samples.len(), 1, "samples is the limit");
        assert_eq!(r.unexplained_total(), 1 + 1 + 1 + 6);
    }

    #[test]
    fn limits_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = stream();
        warehouse(dir.path(), &s, &[(0, 6), (1, 6)]);
        let mut o = options();
        o.rows_max = 11;
        let e = reconcile(s.clone(), dir.path(), &o).unwrap_err();
        assert!(matches!(e, ReconcileError::TooManyRows { side: "stream", limit: 11 }), "{e}");
        o.rows_max = 5;
        let partial: Vec<StreamEvent> = s.iter().take(1).cloned().collect();
        let e = reconcile(partial, dir.path(), &o).unwrap_err();
        assert!(matches!(e, ReconcileError::TooManyRows { side: "warehouse", .. }), "{e}");
        o.rows_max = ROWS_MAX_MAX + 1;
        assert!(matches!(
            reconcile(s.clone(), dir.path(), &o).unwrap_err(),
            ReconcileError::Option { field: "rows_max", .. }
        ));
        let mut o = options();
        o.samples = SAMPLES_MAX + 1;
        assert!(matches!(
            reconcile(s.clone(), dir.path(), &o).unwrap_err(),
            ReconcileError::Option { field: "samples", .. }
        ));
        let mut o = options();
        o.sum = vec!["extension.x".into()];
        let e = reconcile(s, dir.path(), &o).unwrap_err();
        assert!(e.to_string().starts_with("extension.x:"), "{e}");
        assert!("data..x".parse::<GroupBy>().is_err());
    }

    #[test]
    fn buckets_max_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let many = (0..=BUCKETS_MAX as u64).map(|o| event(0, o, 0, &o.to_string(), 1));
        let mut o = options();
        o.by = Some("data.store".parse().unwrap());
        let e = reconcile(many, dir.path(), &o).unwrap_err();
        assert!(matches!(e, ReconcileError::TooManyBuckets), "{e}");
    }
}
