//! The Parquet sink: a [`TransactionalSink`] that buffers records into micro-batches and commits
//! each as a group of files, with the positions in the files' names.
//!
//! [`Batcher`] is the synchronous core (buffer, policy, commit, recovery); [`ParquetSink`] runs
//! it on the blocking pool for the runtime. See the crate's docs for the commit protocol.

use crate::config::{FILES_PER_BATCH_MAX, ParquetConfig};
use crate::files::{self, PartFile, Walk};
use crate::row::{Extractor, Row};
use arrow_schema::SchemaRef;
use gearbox_connect::sink::{SinkError, SinkRecord, TransactionalSink};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a sink could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The field below `sink.parquet`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One topic partition's buffered rows.
#[derive(Debug, Default)]
struct Buffered {
    rows: Vec<Row>,
    bytes: u64,
    /// The directories its rows go to (one file each).
    buckets: BTreeSet<String>,
}

/// The synchronous core of the sink: the buffer, the policy, the commit and the recovery.
///
/// Invariant: every offset below `taken[p]` is in a committed file, in the buffer, or covered
/// by a position the runtime handed over (filtered out, dead-lettered, skipped); `committed[p]`
/// is the position that files and the positions file make durable; the buffer of `p` holds
/// rows at offsets in `committed[p]..taken[p]` only.
#[derive(Debug)]
pub(crate) struct Batcher {
    root: PathBuf,
    config: ParquetConfig,
    schema: SchemaRef,
    committed: BTreeMap<u32, u64>,
    taken: BTreeMap<u32, u64>,
    buffer: BTreeMap<u32, Buffered>,
    records: usize,
    bytes: u64,
    /// When the oldest buffered record arrived.
    oldest: Option<Instant>,
}

/// What one commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Committed {
    /// Files written.
    pub files: usize,
    /// Rows written.
    pub rows: usize,
    /// Whether the positions file was written.
    pub positions_file: bool,
}

impl Batcher {
    /// A batcher for a validated config.
    ///
    /// # Errors
    /// The first problem [`ParquetConfig::validate`] finds.
    pub fn new(config: ParquetConfig) -> Result<Batcher, ConfigError> {
        if let Some((field, reason)) = config.validate().into_iter().next() {
            return Err(ConfigError { field, reason });
        }
        let schema = files::schema(Extractor::new(&config).columns());
        Ok(Batcher {
            root: config.path.clone(),
            config,
            schema,
            committed: BTreeMap::new(),
            taken: BTreeMap::new(),
            buffer: BTreeMap::new(),
            records: 0,
            bytes: 0,
            oldest: None,
        })
    }

    /// Records buffered and not yet committed.
    #[must_use]
    pub fn buffered_records(&self) -> usize {
        self.records
    }

    /// Bytes buffered (estimated).
    #[must_use]
    pub fn buffered_bytes(&self) -> u64 {
        self.bytes
    }

    /// The committed positions.
    #[must_use]
    pub fn committed(&self) -> Vec<(u32, u64)> {
        self.committed.iter().map(|(&p, &o)| (p, o)).collect()
    }

    /// Recovery: forgets the buffer, removes temporary files and incomplete groups (a crash
    /// between the renames of a group), and returns the committed positions: per partition, the
    /// end of its last complete group or the positions file's, whichever is further.
    ///
    /// # Errors
    /// An I/O error (the directory is unreadable, a removal fails).
    pub fn recover(&mut self) -> std::io::Result<Vec<(u32, u64)>> {
        self.buffer.clear();
        self.records = 0;
        self.bytes = 0;
        self.oldest = None;
        let walk = files::walk(&self.root)?;
        let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
        for path in &walk.temporaries {
            std::fs::remove_file(path)?;
            touched.extend(path.parent().map(PathBuf::from));
        }
        for ((p, first, last, n), found) in &walk.groups {
            if Walk::complete(found, *n) {
                continue;
            }
            tracing::warn!(partition = p, first, last, parts = n, present = found.len(),
                "removing an incomplete group of Parquet files (a crash between its renames)");
            for f in found {
                std::fs::remove_file(&f.path)?;
                touched.extend(f.path.parent().map(PathBuf::from));
            }
        }
        for dir in &touched {
            files::sync_dir(dir)?;
        }
        let mut positions = walk.positions();
        for (p, o) in files::read_positions(&self.root)? {
            let e = positions.entry(p).or_insert(0);
            *e = (*e).max(o);
        }
        self.committed = positions.clone();
        self.taken = positions;
        Ok(self.committed())
    }

    /// Takes `rows` (in offset order per partition) and the positions after them, and commits
    /// when the policy says so. Rows at offsets already taken are skipped, so a retried call
    /// does not buffer them twice. Positions with nothing buffered are stored at once.
    ///
    /// # Errors
    /// An I/O error while committing; what was not committed stays buffered, and the next call
    /// (or [`Batcher::idle`]) commits it.
    pub fn apply(
        &mut self,
        rows: Vec<Row>,
        positions: &[(u32, u64)],
        now: Instant,
    ) -> std::io::Result<()> {
        let mut last: Option<(u32, u64)> = None;
        for row in rows {
            let at = (row.partition, row.offset);
            if last != Some(at) {
                // A new event: the rows of one event are never split across commits.
                if let Some((p, o)) = last {
                    self.taken.insert(p, o + 1);
                }
                last = Some(at);
                if self.taken.get(&row.partition).is_some_and(|&t| row.offset < t) {
                    last = None;
                    continue;
                }
                if self.full_with(&row) {
                    self.commit()?;
                }
            }
            self.push(row, now);
        }
        if let Some((p, o)) = last {
            self.taken.insert(p, o + 1);
        }
        for &(p, o) in positions {
            let t = self.taken.entry(p).or_insert(o);
            *t = (*t).max(o);
        }
        if self.records == 0 || self.due(now) {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits the buffer if its oldest record has waited `interval_ms`.
    ///
    /// # Errors
    /// As [`Batcher::apply`].
    pub fn idle(&mut self, now: Instant) -> std::io::Result<()> {
        if self.due(now) {
            self.commit()?;
        }
        Ok(())
    }

    fn due(&self, now: Instant) -> bool {
        self.oldest.is_some_and(|t| {
            now.saturating_duration_since(t) >= Duration::from_millis(self.config.interval_ms)
        })
    }

    /// Whether taking `row` would pass a limit: records, bytes, or files per batch.
    fn full_with(&self, row: &Row) -> bool {
        if self.records == 0 {
            return false;
        }
        let buckets = self
            .buffer
            .get(&row.partition)
            .map_or(0, |b| b.buckets.len() + usize::from(!b.buckets.contains(&row.bucket)));
        self.records + 1 > self.config.records_max
            || self.bytes + row.bytes as u64 > self.config.bytes_max
            || buckets > FILES_PER_BATCH_MAX
    }

    fn push(&mut self, row: Row, now: Instant) {
        self.records += 1;
        self.bytes += row.bytes as u64;
        self.oldest.get_or_insert(now);
        let b = self.buffer.entry(row.partition).or_default();
        b.bytes += row.bytes as u64;
        b.buckets.insert(row.bucket.clone());
        b.rows.push(row);
    }

    /// Commits everything taken: each partition's rows as one group of files, then, if some
    /// position is still ahead of what the files say, the positions file.
    ///
    /// # Errors
    /// An I/O error; partitions committed before it are out of the buffer, the rest stay.
    pub fn commit(&mut self) -> std::io::Result<Committed> {
        let mut done = Committed::default();
        let partitions: Vec<u32> = self.buffer.keys().copied().collect();
        for p in partitions {
            let (files, rows) = self.commit_partition(p)?;
            done.files += files;
            done.rows += rows;
        }
        self.oldest = None;
        if self.taken.iter().any(|(p, t)| self.committed.get(p) < Some(t)) {
            let mut all = self.committed.clone();
            for (&p, &t) in &self.taken {
                let e = all.entry(p).or_insert(t);
                *e = (*e).max(t);
            }
            files::write_positions(&self.root, &all)?;
            self.committed = all;
            done.positions_file = true;
        }
        Ok(done)
    }

    fn commit_partition(&mut self, p: u32) -> std::io::Result<(usize, usize)> {
        let Some(b) = self.buffer.get(&p) else {
            return Ok((0, 0));
        };
        let end = self.taken[&p];
        let low = b.rows.iter().map(|r| r.offset).min().expect("a buffer has rows");
        let first = self.committed.get(&p).copied().unwrap_or(low);
        let last = end - 1;
        // The data guard: a group covers exactly the offsets after the previous one.
        assert!(
            first <= low && b.rows.iter().all(|r| r.offset <= last),
            "partition {p}: rows outside the batch range {first}..={last}"
        );
        let mut by_bucket: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
        for r in &b.rows {
            by_bucket.entry(r.bucket.as_str()).or_default().push(r);
        }
        let n = by_bucket.len();
        for (k, (bucket, rows)) in by_bucket.into_iter().enumerate() {
            let part = PartFile {
                dir: self.root.join(bucket),
                name: files::file_name(p, first, last, k + 1, n),
                rows,
                meta: vec![
                    (files::META_PARTITION, p.to_string()),
                    (files::META_FIRST, first.to_string()),
                    (files::META_LAST, last.to_string()),
                    (files::META_PART, (k + 1).to_string()),
                    (files::META_PARTS, n.to_string()),
                ],
            };
            files::write_part(&self.root, &self.schema, self.config.compression, &part)?;
        }
        let rows = b.rows.len();
        self.records -= rows;
        self.bytes -= b.bytes;
        self.buffer.remove(&p);
        self.committed.insert(p, end);
        Ok((n, rows))
    }
}

/// The sink: `sink: {parquet: {...}}`.
#[derive(Debug)]
pub struct ParquetSink {
    extractor: Extractor,
    batcher: Arc<Mutex<Batcher>>,
}

impl ParquetSink {
    /// A sink for `config`. Nothing is touched on disk until the runtime asks for the
    /// positions.
    ///
    /// # Errors
    /// The first problem with the config, naming its field.
    pub fn new(config: ParquetConfig) -> Result<ParquetSink, ConfigError> {
        let extractor = Extractor::new_checked(&config)?;
        Ok(ParquetSink {
            extractor,
            batcher: Arc::new(Mutex::new(Batcher::new(config)?)),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Batcher) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, SinkError> {
        let batcher = self.batcher.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut b = batcher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut b)
        })
        .await
        .map_err(|e| SinkError::Transient {
            message: format!("parquet {what}: the blocking task failed: {e}"),
            retry_after_ms: None,
        })?;
        out.map_err(|e| SinkError::Transient {
            message: format!("parquet {what}: {e}"),
            retry_after_ms: None,
        })
    }
}

impl Extractor {
    fn new_checked(config: &ParquetConfig) -> Result<Extractor, ConfigError> {
        if let Some((field, reason)) = config.validate().into_iter().next() {
            return Err(ConfigError { field, reason });
        }
        Ok(Extractor::new(config))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl TransactionalSink for ParquetSink {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn positions(&mut self) -> Result<Vec<(u32, u64)>, SinkError> {
        self.blocking("recovery", Batcher::recover).await
    }

    fn check(&self, record: &SinkRecord) -> Result<(), String> {
        self.extractor.check(record)
    }

    async fn apply(
        &mut self,
        batch: &[SinkRecord],
        positions: &[(u32, u64)],
    ) -> Result<(), SinkError> {
        let now = now_ms();
        let rows = batch
            .iter()
            .map(|r| self.extractor.row_at(r, now))
            .collect::<Result<Vec<Row>, String>>()
            .map_err(|message| SinkError::Permanent { message })?;
        let positions = positions.to_vec();
        self.blocking("commit", move |b| b.apply(rows, &positions, Instant::now()))
            .await
    }

    async fn idle(&mut self) -> Result<(), SinkError> {
        self.blocking("commit", |b| b.idle(Instant::now())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ColumnConfig, ColumnType};
    use crate::read::{self, Select};
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    fn record(partition: u32, offset: u64, time: &str, data: Value) -> SinkRecord {
        SinkRecord {
            id: format!("e-{partition}-{offset}"),
            value: json!({"specversion": "1.0", "id": format!("e-{partition}-{offset}"),
                "source": "/t", "type": "t.created", "time": time, "data": data}),
            attempt: 1,
            partition,
            offset,
            time_ms: None,
            traceparent: None,
        }
    }

    fn rows(config: &ParquetConfig, records: &[SinkRecord]) -> Vec<Row> {
        let x = Extractor::new(config);
        records.iter().map(|r| x.row_at(r, 0).unwrap()).collect()
    }

    const T: &str = "2026-11-24T10:00:00Z";

    /// Every (partition, offset) in the complete groups under `dir`, with its count.
    fn committed_rows(dir: &std::path::Path) -> BTreeMap<(u32, u64), usize> {
        let mut out = BTreeMap::new();
        for f in read::scan(dir).unwrap().into_iter().filter(|f| f.complete) {
            for r in read::read_rows(&f.path, &Select::default()).unwrap() {
                *out.entry((r.partition, r.offset)).or_default() += 1;
            }
        }
        out
    }

    fn batcher(config: &ParquetConfig) -> Batcher {
        let mut b = Batcher::new(config.clone()).unwrap();
        b.recover().unwrap();
        b
    }

    #[test]
    fn records_max_commits_before_the_record_that_would_pass_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.records_max = 3;
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0)], now).unwrap();
        let rs: Vec<SinkRecord> = (0..4).map(|o| record(0, o, T, json!({"n": o}))).collect();
        b.apply(rows(&config, &rs[..2]), &[(0, 2)], now).unwrap();
        assert_eq!(b.buffered_records(), 2);
        assert!(read::scan(dir.path()).unwrap().is_empty());
        b.apply(rows(&config, &rs[2..]), &[(0, 4)], now).unwrap();
        assert_eq!(b.buffered_records(), 1, "the fourth waits in the next batch");
        let files = read::scan(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].first_offset, files[0].last_offset, files[0].rows),
            (0, 2, 3)
        );
        assert_eq!(b.committed(), vec![(0, 3)]);
        // A crash now: the buffered fourth is read again from the committed position.
        let mut again = Batcher::new(config).unwrap();
        assert_eq!(again.recover().unwrap(), vec![(0, 3)]);
    }

    #[test]
    fn bytes_max_bounds_the_buffer_and_a_bigger_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.bytes_max = 2_000;
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0)], now).unwrap();
        let payload = "x".repeat(400);
        for o in 0..20 {
            let r = record(0, o, T, json!({"p": payload}));
            b.apply(rows(&config, &[r]), &[(0, o + 1)], now).unwrap();
            assert!(b.buffered_bytes() <= config.bytes_max, "{}", b.buffered_bytes());
        }
        assert!(read::scan(dir.path()).unwrap().len() >= 4);
        let sink = ParquetSink::new(config.clone()).unwrap();
        let big = record(0, 99, T, json!({"p": "y".repeat(2_000)}));
        let e = sink.check(&big).unwrap_err();
        assert!(e.contains("bytes_max"), "{e}");
    }

    #[test]
    fn the_interval_commits_on_idle_and_on_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.interval_ms = 500;
        let mut b = batcher(&config);
        let t0 = Instant::now();
        b.apply(Vec::new(), &[(0, 0), (1, 0)], t0).unwrap();
        b.apply(rows(&config, &[record(0, 0, T, json!(1))]), &[(0, 1), (1, 0)], t0)
            .unwrap();
        b.idle(t0 + Duration::from_millis(499)).unwrap();
        assert_eq!(b.buffered_records(), 1);
        b.idle(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(b.buffered_records(), 0);
        assert_eq!(b.committed(), vec![(0, 1), (1, 0)]);
        // On apply too, when the pipeline never idles.
        let t1 = t0 + Duration::from_secs(1);
        b.apply(rows(&config, &[record(1, 0, T, json!(1))]), &[(0, 1), (1, 1)], t1)
            .unwrap();
        assert_eq!(b.buffered_records(), 1);
        let t2 = t1 + Duration::from_millis(600);
        b.apply(rows(&config, &[record(1, 1, T, json!(1))]), &[(0, 1), (1, 2)], t2)
            .unwrap();
        assert_eq!(b.buffered_records(), 0);
        assert_eq!(b.committed(), vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn a_batch_spanning_dates_and_values_is_one_group_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.partition_by = Some("data.store".into());
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0)], now).unwrap();
        let rs = vec![
            record(0, 0, "2026-11-23T23:59:59.999Z", json!({"store": "a/b"})),
            record(0, 1, "2026-11-24T00:00:00Z", json!({"store": "a/b"})),
            record(0, 2, "2026-11-24T01:00:00+02:00", json!({})),
            // Offsets 3 and 4 were filtered out: the range covers them with no row.
        ];
        b.apply(rows(&config, &rs), &[(0, 5)], now).unwrap();
        b.commit().unwrap();
        let files = read::scan(dir.path()).unwrap();
        let names: BTreeSet<String> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let range = "part-p0-00000000000000000000-00000000000000000004";
        assert_eq!(
            names,
            BTreeSet::from([
                format!("date=2026-11-23/store=__null__/{range}-1of3.parquet"),
                format!("date=2026-11-23/store=a%2Fb/{range}-2of3.parquet"),
                format!("date=2026-11-24/store=a%2Fb/{range}-3of3.parquet"),
            ])
        );
        assert!(files.iter().all(|f| f.complete));
        assert_eq!(b.committed(), vec![(0, 5)]);
        assert_eq!(committed_rows(dir.path()).len(), 3);
    }

    #[test]
    fn files_per_batch_max_commits_before_one_more_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.partition_by = Some("data.k".into());
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0)], now).unwrap();
        let n = FILES_PER_BATCH_MAX as u64;
        let rs: Vec<SinkRecord> = (0..=n).map(|o| record(0, o, T, json!({"k": o}))).collect();
        b.apply(rows(&config, &rs), &[(0, n + 1)], now).unwrap();
        let files = read::scan(dir.path()).unwrap();
        assert_eq!(files.len(), FILES_PER_BATCH_MAX);
        assert!(files.iter().all(|f| f.parts == FILES_PER_BATCH_MAX && f.complete));
        assert_eq!(b.buffered_records(), 1);
    }

    #[test]
    fn recovery_removes_incomplete_groups_and_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.partition_by = Some("data.s".into());
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0), (1, 0)], now).unwrap();
        let first: Vec<SinkRecord> = (0..3).map(|o| record(0, o, T, json!({"s": o % 2}))).collect();
        b.apply(rows(&config, &first), &[(0, 3), (1, 0)], now).unwrap();
        b.commit().unwrap();
        let second: Vec<SinkRecord> = (3..6).map(|o| record(0, o, T, json!({"s": o % 2}))).collect();
        b.apply(rows(&config, &second), &[(0, 6), (1, 0)], now).unwrap();
        b.commit().unwrap();
        // A crash between the renames of the second group: its second file never appeared, and
        // a temporary was left behind.
        let files = read::scan(dir.path()).unwrap();
        assert_eq!(files.len(), 4);
        let lost = files
            .iter()
            .find(|f| f.first_offset == 3 && f.part == 2)
            .unwrap();
        let tmp = lost
            .path
            .with_file_name(format!(".{}.tmp", lost.path.file_name().unwrap().to_string_lossy()));
        std::fs::rename(&lost.path, &tmp).unwrap();
        assert_eq!(
            read::scan(dir.path())
                .unwrap()
                .iter()
                .filter(|f| !f.complete)
                .count(),
            1
        );

        let mut b = Batcher::new(config.clone()).unwrap();
        assert_eq!(b.recover().unwrap(), vec![(0, 3), (1, 0)]);
        assert!(!tmp.exists());
        let left = read::scan(dir.path()).unwrap();
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|f| f.complete && f.first_offset == 0));
        // The runtime reads from 3 again: every offset ends up in exactly one file.
        b.apply(rows(&config, &second), &[(0, 6), (1, 0)], now).unwrap();
        b.commit().unwrap();
        let got = committed_rows(dir.path());
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), (0..6).map(|o| (0, o)).collect::<Vec<_>>());
        assert!(got.values().all(|&n| n == 1), "{got:?}");
    }

    #[test]
    fn positions_with_nothing_buffered_are_stored_and_the_furthest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetConfig::new(dir.path());
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 100), (1, 7)], now).unwrap();
        assert_eq!(Batcher::new(config.clone()).unwrap().recover().unwrap(), vec![(0, 100), (1, 7)]);
        // A group past the positions file: the group's end wins.
        b.apply(rows(&config, &[record(1, 7, T, json!(1))]), &[(0, 100), (1, 8)], now)
            .unwrap();
        b.commit().unwrap();
        let mut again = Batcher::new(config.clone()).unwrap();
        assert_eq!(again.recover().unwrap(), vec![(0, 100), (1, 8)]);
        // Positions held while rows are buffered are not stored before the rows.
        again.apply(rows(&config, &[record(1, 8, T, json!(1))]), &[(0, 100), (1, 9)], now)
            .unwrap();
        again.apply(Vec::new(), &[(0, 150), (1, 9)], now).unwrap();
        assert_eq!(Batcher::new(config.clone()).unwrap().recover().unwrap(), vec![(0, 100), (1, 8)]);
        again.commit().unwrap();
        assert_eq!(Batcher::new(config).unwrap().recover().unwrap(), vec![(0, 150), (1, 9)]);
    }

    #[test]
    fn a_retried_apply_buffers_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = ParquetConfig::new(dir.path());
        let mut b = batcher(&config);
        let now = Instant::now();
        b.apply(Vec::new(), &[(0, 0)], now).unwrap();
        // Two outputs of one event (a transform made both) and a second event.
        let mut two = record(0, 0, T, json!(1));
        two.id = "e-0-0#1".into();
        let batch = vec![record(0, 0, T, json!(1)), two, record(0, 1, T, json!(2))];
        b.apply(rows(&config, &batch), &[(0, 2)], now).unwrap();
        b.apply(rows(&config, &batch), &[(0, 2)], now).unwrap();
        assert_eq!(b.buffered_records(), 3);
        b.commit().unwrap();
        let got = committed_rows(dir.path());
        assert_eq!(got, BTreeMap::from([((0, 0), 2), ((0, 1), 1)]));
    }

    #[test]
    fn check_names_the_column_and_path_of_a_value_that_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        for (name, path, kind) in [
            ("qty", "data.qty", ColumnType::Int64),
            ("price", "data.price", ColumnType::Float64),
            ("ok", "data.ok", ColumnType::Bool),
            ("at", "data.at", ColumnType::Timestamp),
            ("store", "data.store", ColumnType::String),
        ] {
            config.columns.insert(
                name.into(),
                ColumnConfig {
                    path: path.into(),
                    kind,
                },
            );
        }
        let sink = ParquetSink::new(config).unwrap();
        let good = json!({"qty": 3, "price": 1.5, "ok": true, "at": "2026-01-01T00:00:00Z", "store": "s"});
        sink.check(&record(0, 0, T, good.clone())).unwrap();
        sink.check(&record(0, 0, T, json!({}))).unwrap();
        for (field, value, column) in [
            ("qty", json!("3"), "columns.qty (path data.qty, type int64)"),
            ("qty", json!(1.5), "columns.qty (path data.qty, type int64)"),
            ("price", json!("x"), "columns.price (path data.price, type float64)"),
            ("ok", json!(1), "columns.ok (path data.ok, type bool)"),
            ("at", json!("yesterday"), "columns.at (path data.at, type timestamp)"),
            ("store", json!(7), "columns.store (path data.store, type string)"),
        ] {
            let mut data = good.clone();
            data[field] = value;
            let e = sink.check(&record(0, 0, T, data)).unwrap_err();
            assert!(e.starts_with(column), "{e}");
        }
        let e = sink.check(&record(0, 0, "noon", json!({}))).unwrap_err();
        assert!(e.starts_with("time:"), "{e}");
    }

    #[test]
    fn validate_names_each_field_and_limit() {
        let check = |edit: &dyn Fn(&mut ParquetConfig), field: &str| {
            let mut c = ParquetConfig::new("/tmp/x");
            edit(&mut c);
            let problems = c.validate();
            assert!(
                problems.iter().any(|(f, _)| f == field),
                "{field}: {problems:?}"
            );
            let e = ParquetSink::new(c).unwrap_err();
            assert_eq!(e.field, field);
        };
        use crate::config::*;
        check(&|c| c.records_max = 0, "records_max");
        check(&|c| c.records_max = RECORDS_MAX_MAX + 1, "records_max");
        check(&|c| c.bytes_max = BYTES_MAX_MAX + 1, "bytes_max");
        check(&|c| c.interval_ms = INTERVAL_MS_MAX + 1, "interval_ms");
        check(&|c| c.interval_ms = INTERVAL_MS_MIN - 1, "interval_ms");
        check(&|c| c.path = PathBuf::new(), "path");
        check(&|c| c.partition_by = Some("data..x".into()), "partition_by");
        check(&|c| c.partition_by = Some("data.date".into()), "partition_by");
        let column = |path: &str| ColumnConfig {
            path: path.into(),
            kind: ColumnType::Int64,
        };
        check(
            &|c| {
                for i in 0..=COLUMNS_MAX {
                    c.columns.insert(format!("c{i}"), column("data.x"));
                }
            },
            "columns",
        );
        check(&|c| {
            c.columns.insert("offset".into(), column("data.x"));
        }, "columns.offset");
        check(&|c| {
            c.columns.insert("Qty".into(), column("data.x"));
        }, "columns.Qty");
        check(&|c| {
            c.columns.insert("qty".into(), column(""));
        }, "columns.qty.path");
        let deep = vec!["a"; PATH_SEGMENTS_MAX + 1].join(".");
        check(&|c| {
            c.columns.insert("qty".into(), column(&deep));
        }, "columns.qty.path");
        let mut fine = ParquetConfig::new("/tmp/x");
        fine.records_max = RECORDS_MAX_MAX;
        fine.bytes_max = BYTES_MAX_MAX;
        fine.interval_ms = INTERVAL_MS_MAX;
        assert!(fine.validate().is_empty());
    }

    #[test]
    fn the_yaml_section_parses_with_defaults_and_refuses_unknown_fields() {
        let c: ParquetConfig = serde_json::from_value(json!({
            "path": "/w", "columns": {"qty": {"path": "data.qty", "type": "int64"}},
            "compression": "snappy"
        }))
        .unwrap();
        assert_eq!(c.records_max, crate::config::RECORDS_MAX_DEFAULT);
        assert_eq!(c.bytes_max, crate::config::BYTES_MAX_DEFAULT);
        assert_eq!(c.interval_ms, crate::config::INTERVAL_MS_DEFAULT);
        assert_eq!(c.compression, crate::config::Compression::Snappy);
        assert!(serde_json::from_value::<ParquetConfig>(json!({"path": "/w", "recods_max": 1})).is_err());
    }

    #[tokio::test]
    async fn the_sink_round_trips_through_the_trait() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ParquetConfig::new(dir.path());
        config.interval_ms = 10;
        config.compression = crate::config::Compression::None;
        let mut sink = ParquetSink::new(config).unwrap();
        assert!(sink.positions().await.unwrap().is_empty());
        sink.apply(&[], &[(0, 0)]).await.unwrap();
        let rs: Vec<SinkRecord> = (0..5).map(|o| record(0, o, T, json!({"n": o}))).collect();
        sink.apply(&rs, &[(0, 5)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        sink.idle().await.unwrap();
        let mut sink = ParquetSink::new(ParquetConfig::new(dir.path())).unwrap();
        assert_eq!(sink.positions().await.unwrap(), vec![(0, 5)]);
        let rows = read::read_rows(
            &read::scan(dir.path()).unwrap()[0].path,
            &Select {
                numbers: vec![read::Field::parse("data.n").unwrap()],
                group: Some(read::Field::parse("type").unwrap()),
            },
        )
        .unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[4].id, "e-0-4");
        assert_eq!(rows[4].numbers, vec![Some(4.0)]);
        assert_eq!(rows[4].group.as_deref(), Some("t.created"));
        assert_eq!(rows[4].time_ms, 1_795_514_400_000);
    }
}
