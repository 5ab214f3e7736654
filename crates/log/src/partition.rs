//! One partition: a directory of segment files, appended with group commit, recovered from a
//! checkpoint, read by offset or by time, trimmed by retention.
//!
//! Files in a partition directory (byte layouts in `docs/format.md`):
//! - `<base>.log`: Kafka RecordBatch v2 bytes, back to back. `<base>` is the first offset, as
//!   20 zero-padded digits.
//! - `<base>.index`, `<base>.timeindex`: derived sparse indexes, written when a segment is
//!   sealed, rebuilt when missing or wrong.
//! - `checkpoint`: two slots holding the durable point and the log start (see [`crate::checkpoint`]).
//!
//! Invariants (checked where the data is written and again where it is read):
//! - Offsets are contiguous: every batch's base offset is the previous batch's last offset + 1,
//!   and each segment's base is the previous segment's next offset.
//! - An append is acknowledged (under `SyncMode::Always`) only after an `fdatasync` that covers
//!   it returned success. After any failed write or sync the partition refuses appends until
//!   recovery runs again (sticky failure): nothing is acknowledged after a failed sync.
//! - Every sealed segment lies entirely below the checkpoint's durable point.
//! - Readers see only acknowledged data under `Always` (the high-water mark is the synced end).
//! - Every batch returned by a read passed its CRC and offset checks after it was read.
//! - Recovery never truncates below the durable point; bad bytes there mark the partition
//!   corrupted.
//!
//! Concurrency: one mutex guards the state. Writes happen under it; `fdatasync` does not. One
//! appender at a time holds the *I/O role* (the `io_busy` flag) to sync, roll, checkpoint or
//! retain; the others wait on a condition variable, which is how their batches come to share
//! one sync (group commit).

use crate::batch::{self, BatchHeader};
use crate::checkpoint::{self, Checkpoint};
use crate::config::{BATCH_BYTES_LIMIT, PartitionConfig, SyncMode};
use crate::error::{AppendError, Corruption, OpenError, ReadError, Unavailable, io_err};
use crate::index::{self, IndexBuilder, Position};
use crate::io::{Clock, File, Storage, is_disk_full};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Bytes read at a time while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Largest offset: Kafka offsets are signed 64-bit.
pub const OFFSET_MAX: u64 = i64::MAX as u64;
/// Largest distance from a segment's base to one of its offsets (index entries are `u32`).
const RELATIVE_OFFSET_MAX: u64 = u32::MAX as u64;
const CHECKPOINT_FILE: &str = "checkpoint";

/// Where an acknowledged batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
}

/// One stored batch, exactly as on disk (its CRC was verified when it was read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Offset of the batch's last record.
    pub last_offset: u64,
    /// The batch's largest record timestamp.
    pub max_timestamp: i64,
    /// The batch bytes: a complete Kafka RecordBatch v2.
    pub bytes: Vec<u8>,
}

/// The answer to a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batches {
    /// Whole batches, starting with the one that holds the requested offset.
    pub batches: Vec<RawBatch>,
    /// One past the last readable offset when the read began.
    pub high_watermark: u64,
    /// The first readable offset when the read began.
    pub log_start_offset: u64,
}

/// What recovery found and did when the partition was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Segments whose indexes were missing or wrong and were rebuilt.
    pub indexes_rebuilt: u32,
    /// Segments below the log start deleted to finish an interrupted retention.
    pub segments_deleted: u32,
    /// Corruption found below the durable point (the partition refuses appends).
    pub corruption: Option<Corruption>,
    /// Human-readable warnings, one per event worth logging.
    pub warnings: Vec<String>,
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    syncs: AtomicU64,
    torn_truncations: AtomicU64,
    corruptions_detected: AtomicU64,
    index_fallbacks: AtomicU64,
}

/// A snapshot of a partition's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionStats {
    /// Batches acknowledged since open.
    pub appends: u64,
    /// Data syncs since open (fewer than appends means group commit shared them).
    pub syncs: u64,
    /// Torn tails truncated by recovery at open.
    pub torn_truncations: u64,
    /// Corrupt batches detected by recovery or reads.
    pub corruptions_detected: u64,
    /// Reads whose index answer was wrong and fell back to a scan.
    pub index_fallbacks: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sealed {
    base: u64,
    next: u64,
    bytes: u64,
    max_timestamp: i64,
}

#[derive(Debug)]
struct Active {
    base: u64,
    file: Arc<dyn File>,
    bytes: u64,
    index: IndexBuilder,
    created_ms: i64,
}

#[derive(Debug)]
struct State {
    unavailable: Option<Unavailable>,
    corruption: Option<Corruption>,
    sealed: Vec<Sealed>,
    active: Active,
    next_offset: u64,
    /// Readers see offsets below `visible_offset`, i.e. bytes of the active segment below
    /// `visible_pos`.
    visible_offset: u64,
    visible_pos: u64,
    durable_offset: u64,
    log_start: u64,
    io_busy: bool,
    checkpoint: Checkpoint,
    checkpoint_ms: i64,
}

/// One partition of a topic. Cheap to share behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Partition {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    config: PartitionConfig,
    checkpoint_file: Arc<dyn File>,
    state: Mutex<State>,
    changed: Condvar,
    counters: Counters,
    recovery: RecoveryReport,
}

fn segment_path(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

fn parse_segment_name(name: &str) -> Option<(u64, &str)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A name beyond Kafka's offset space was never written by the log: not a segment.
    let base: u64 = stem.parse().ok()?;
    (base <= OFFSET_MAX).then_some((base, ext))
}

/// Why a scan stopped early.
enum ScanError {
    Io(io::Error),
    Bad {
        position: u64,
        offset: u64,
        reason: String,
    },
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Reads a segment sequentially through a bounded buffer.
struct Chunked<'a> {
    file: &'a dyn File,
    /// Bytes beyond this are never read, so the buffer never needs to be larger.
    limit: u64,
    buf: Vec<u8>,
    buf_pos: u64,
}

impl<'a> Chunked<'a> {
    fn new(file: &'a dyn File, limit: u64) -> Self {
        Chunked {
            file,
            limit,
            buf: Vec::new(),
            buf_pos: 0,
        }
    }

    /// `len` bytes at `pos`, or `None` if the file ends first.
    fn get(&mut self, pos: u64, len: usize) -> io::Result<Option<&[u8]>> {
        let in_buf =
            pos >= self.buf_pos && pos + len as u64 <= self.buf_pos + self.buf.len() as u64;
        if !in_buf {
            let left = usize::try_from(self.limit.saturating_sub(pos)).unwrap_or(usize::MAX);
            self.buf.resize(len.max(SCAN_CHUNK_BYTES.min(left)), 0);
            let mut filled = 0;
            while filled < self.buf.len() {
                match self
                    .file
                    .read_at(&mut self.buf[filled..], pos + filled as u64)?
                {
                    0 => break,
                    n => filled += n,
                }
            }
            self.buf.truncate(filled);
            self.buf_pos = pos;
            if filled < len {
                return Ok(None);
            }
        }
        let start = usize::try_from(pos - self.buf_pos).expect("in buffer");
        Ok(Some(&self.buf[start..start + len]))
    }
}

/// Checks a batch header against what must be true at its place in the log.
fn check_header(
    bytes: &[u8],
    expected: u64,
    room: u64,
    segment_base: u64,
) -> Result<BatchHeader, String> {
    let h = BatchHeader::parse(bytes).map_err(|e| e.to_string())?;
    if u64::try_from(h.base_offset).ok() != Some(expected) {
        return Err(format!(
            "base offset {} where {expected} was expected",
            h.base_offset
        ));
    }
    if h.partition_leader_epoch != 0 {
        return Err(format!(
            "partition leader epoch {} is not 0",
            h.partition_leader_epoch
        ));
    }
    check_offsets(&h, segment_base)?;
    let total = h.total_len() as u64;
    if total > u64::from(BATCH_BYTES_LIMIT) || total > room {
        return Err(format!(
            "batch length {total} runs past the segment ({room} bytes left)"
        ));
    }
    Ok(h)
}

/// The offset rules every stored batch keeps: one offset per record, contiguous, inside the
/// offset space, and addressable by the segment's `u32` relative index entries.
fn check_offsets(h: &BatchHeader, segment_base: u64) -> Result<(), String> {
    if i64::from(h.records_count) != i64::from(h.last_offset_delta) + 1 {
        return Err(format!(
            "{} records but a last offset delta of {}; offsets must be contiguous",
            h.records_count, h.last_offset_delta
        ));
    }
    let last = (h.base_offset as u64).saturating_add(h.last_offset_delta as u64);
    if last > OFFSET_MAX {
        return Err(format!(
            "last offset {last} is beyond the offset space ({OFFSET_MAX})"
        ));
    }
    if last - segment_base.min(last) > RELATIVE_OFFSET_MAX {
        return Err(format!(
            "last offset {last} is too far from the segment base {segment_base}"
        ));
    }
    Ok(())
}

/// Walks batches of one segment from a known position, checking the offset chain.
struct Cursor<'a> {
    reader: Chunked<'a>,
    pos: u64,
    limit: u64,
    expected: u64,
    segment_base: u64,
}

impl<'a> Cursor<'a> {
    fn new(file: &'a dyn File, segment_base: u64, start: Position, limit: u64) -> Self {
        Cursor {
            reader: Chunked::new(file, limit),
            pos: u64::from(start.position),
            limit,
            expected: start.offset,
            segment_base,
        }
    }

    fn bad(&self, reason: String) -> ScanError {
        ScanError::Bad {
            position: self.pos,
            offset: self.expected,
            reason,
        }
    }

    /// The next batch's header, or `None` at the limit.
    fn next_header(&mut self) -> Result<Option<BatchHeader>, ScanError> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let room = self.limit - self.pos;
        if room < batch::BATCH_HEADER_BYTES as u64 {
            return Err(self.bad(format!(
                "{room} trailing bytes are too short for a batch header"
            )));
        }
        let Some(bytes) = self.reader.get(self.pos, batch::BATCH_HEADER_BYTES)? else {
            return Err(self.bad("segment ends inside a batch header".into()));
        };
        check_header(bytes, self.expected, room, self.segment_base)
            .map(Some)
            .map_err(|r| self.bad(r))
    }

    /// The whole current batch, CRC-verified, copied out.
    fn body(&mut self, h: &BatchHeader) -> Result<Vec<u8>, ScanError> {
        self.verified(h).map(<[u8]>::to_vec)
    }

    /// The whole current batch, CRC-verified, borrowed from the read buffer.
    fn verified(&mut self, h: &BatchHeader) -> Result<&[u8], ScanError> {
        let (pos, expected) = (self.pos, self.expected);
        let bad = |reason: String| ScanError::Bad {
            position: pos,
            offset: expected,
            reason,
        };
        let Some(bytes) = self.reader.get(pos, h.total_len())? else {
            return Err(bad("segment ends inside a batch".into()));
        };
        match batch::verify(bytes) {
            Ok(v) if v == *h => Ok(bytes),
            Ok(_) => Err(bad("header changed between reads".into())),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    fn advance(&mut self, h: &BatchHeader) {
        self.pos += h.total_len() as u64;
        self.expected = h.last_offset() as u64 + 1;
    }
}

/// What a full scan of a segment found.
struct Scan {
    index: IndexBuilder,
    end_pos: u64,
    next_offset: u64,
    stopped: Option<(u64, u64, String)>,
}

/// Scans a whole segment from its start, checking every batch's header, offsets and CRC. The
/// chunked reader reads every byte anyway, so the CRC adds little to the cost of the scan.
fn scan_segment(file: &dyn File, base: u64, len: u64, interval: u32) -> io::Result<Scan> {
    let mut index = IndexBuilder::new(base, interval);
    let mut cursor = Cursor::new(
        file,
        base,
        Position {
            offset: base,
            position: 0,
        },
        len,
    );
    let stopped = loop {
        let step = cursor.next_header().and_then(|h| match h {
            Some(h) => cursor.verified(&h).map(|_| Some(h)),
            None => Ok(None),
        });
        match step {
            Ok(Some(h)) => {
                index.on_batch(
                    cursor.expected,
                    cursor.pos,
                    h.total_len() as u64,
                    h.max_timestamp,
                );
                cursor.advance(&h);
            }
            Ok(None) => break None,
            Err(ScanError::Io(e)) => return Err(e),
            Err(ScanError::Bad {
                position,
                offset,
                reason,
            }) => break Some((position, offset, reason)),
        }
    };
    Ok(Scan {
        index,
        end_pos: cursor.pos,
        next_offset: cursor.expected,
        stopped,
    })
}

impl Partition {
    /// Creates an empty partition in `dir` (which must not hold one) and opens it. When this
    /// returns, the partition's directory, checkpoint and first segment are durable.
    ///
    /// # Errors
    /// [`OpenError`] on a bad config or any I/O error.
    pub fn create(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        dir: &Path,
        config: PartitionConfig,
    ) -> Result<Partition, OpenError> {
        config.validate()?;
        storage.create_dir_all(dir).map_err(io_err("create", dir))?;
        let cp_path = dir.join(CHECKPOINT_FILE);
        let cp_file = storage
            .open(&cp_path, true)
            .map_err(io_err("create", &cp_path))?;
        let initial = Checkpoint {
            generation: 0,
            durable_offset: 0,
            log_start_offset: 0,
        };
        checkpoint::write(&*cp_file, &initial).map_err(io_err("write checkpoint", &cp_path))?;
        let seg = segment_path(dir, 0, "log");
        storage
            .open(&seg, true)
            .map_err(io_err("create", &seg))?
            .sync_data()
            .map_err(io_err("sync", &seg))?;
        storage
            .sync_dir(dir)
            .map_err(io_err("sync directory", dir))?;
        if let Some(parent) = dir.parent() {
            storage
                .sync_dir(parent)
                .map_err(io_err("sync directory", parent))?;
        }
        Partition::open(storage, clock, dir, config)
    }

    /// Opens an existing partition, running recovery.
    ///
    /// Corruption below the durable point does not fail the open: the partition opens with
    /// appends refused and the corruption in [`Partition::recovery`], so that the rest stays
    /// readable and an operator can see what is wrong.
    ///
    /// # Errors
    /// [`OpenError`] on a bad config or an I/O error.
    pub fn open(
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        dir: &Path,
        config: PartitionConfig,
    ) -> Result<Partition, OpenError> {
        config.validate()?;
        Recovery {
            storage: &*storage,
            clock: &*clock,
            dir,
            config: &config,
        }
        .run()
        .map(|(state, file, report)| Partition {
            dir: dir.to_path_buf(),
            storage,
            clock,
            config,
            checkpoint_file: file,
            counters: Counters {
                torn_truncations: AtomicU64::new(u64::from(report.truncated_bytes > 0)),
                corruptions_detected: AtomicU64::new(u64::from(report.corruption.is_some())),
                ..Counters::default()
            },
            state: Mutex::new(state),
            changed: Condvar::new(),
            recovery: report,
        })
    }

    /// The partition's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition's settings.
    #[must_use]
    pub fn config(&self) -> &PartitionConfig {
        &self.config
    }

    /// What recovery found when this partition was opened.
    #[must_use]
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Counters since open.
    #[must_use]
    pub fn stats(&self) -> PartitionStats {
        let c = &self.counters;
        PartitionStats {
            appends: c.appends.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            torn_truncations: c.torn_truncations.load(Ordering::Relaxed),
            corruptions_detected: c.corruptions_detected.load(Ordering::Relaxed),
            index_fallbacks: c.index_fallbacks.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in this module; the state it guards is still
        // consistent at every await point, so recover the guard rather than cascade panics.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One past the last readable offset.
    #[must_use]
    pub fn high_watermark(&self) -> u64 {
        self.lock().visible_offset
    }

    /// The first offset retention has kept.
    #[must_use]
    pub fn log_start_offset(&self) -> u64 {
        self.lock().log_start
    }

    /// Every offset below this is on stable storage.
    #[must_use]
    pub fn durable_offset(&self) -> u64 {
        self.lock().durable_offset
    }

    /// Why appends are refused, if they are.
    #[must_use]
    pub fn unavailable(&self) -> Option<Unavailable> {
        self.lock().unavailable.clone()
    }

    /// Total bytes in the partition's segments.
    #[must_use]
    pub fn size_bytes(&self) -> u64 {
        let st = self.lock();
        st.sealed.iter().map(|s| s.bytes).sum::<u64>() + st.active.bytes
    }

    /// Number of segment files.
    #[must_use]
    pub fn segment_count(&self) -> usize {
        self.lock().sealed.len() + 1
    }

    fn unavailable_err(&self, source: Unavailable) -> AppendError {
        AppendError::Unavailable {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Marks the partition failed (sticky) and wakes every waiter so none is acknowledged.
    fn fail(&self, st: &mut State, op: &'static str, err: &io::Error) {
        if st.unavailable.is_none() {
            st.unavailable = Some(Unavailable::Failed {
                op,
                reason: err.to_string(),
            });
        }
        self.changed.notify_all();
    }

    fn check_available(&self, st: &State) -> Result<(), AppendError> {
        match &st.unavailable {
            Some(u) => Err(self.unavailable_err(u.clone())),
            None => Ok(()),
        }
    }

    /// Appends one RecordBatch v2 and returns where it landed, after it is durable under
    /// `SyncMode::Always` (or written, under the weaker modes).
    ///
    /// The log assigns the base offset and sets the partition leader epoch to 0; neither is
    /// covered by the batch CRC, which therefore stays valid. Producer id and sequence fields
    /// are stored as given.
    ///
    /// # Errors
    /// - [`AppendError::InvalidBatch`] / [`AppendError::BatchTooLarge`]: nothing written.
    /// - [`AppendError::DiskFull`]: nothing from this batch kept; later appends may succeed.
    /// - [`AppendError::Unavailable`]: the partition failed (now or earlier), is corrupted, or
    ///   is closed. The batch may or may not be on disk, but it was not acknowledged.
    pub fn append(&self, batch_bytes: &[u8]) -> Result<Appended, AppendError> {
        if batch_bytes.len() > self.config.batch_bytes_max as usize {
            return Err(AppendError::BatchTooLarge {
                size: batch_bytes.len(),
                max: self.config.batch_bytes_max,
            });
        }
        let header = batch::verify(batch_bytes)?;
        if i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1 {
            return Err(AppendError::InvalidOffsets {
                reason: format!(
                    "{} records but a last offset delta of {}; offsets must be contiguous",
                    header.records_count, header.last_offset_delta
                ),
            });
        }
        let delta = header.last_offset_delta as u64;
        let mut bytes = batch_bytes.to_vec();
        let len = bytes.len() as u64;

        let mut st = self.lock();
        loop {
            self.check_available(&st)?;
            if st.next_offset.saturating_add(delta) > OFFSET_MAX {
                return Err(AppendError::OffsetsExhausted {
                    next_offset: st.next_offset,
                });
            }
            if !self.needs_roll(&st, len, delta) {
                break;
            }
            st = self.acquire_io(st);
            if self.needs_roll(&st, len, delta) && st.unavailable.is_none() {
                self.roll(&mut st);
            }
            self.release_io(&mut st);
        }

        let base = st.next_offset;
        batch::set_base_offset(&mut bytes, base as i64);
        batch::set_partition_leader_epoch(&mut bytes, 0);
        // Paired assertion: what we are about to write must still verify.
        assert!(
            batch::verify(&bytes).is_ok(),
            "batch corrupted in memory before write"
        );
        let pos = st.active.bytes;
        if let Err(e) = st.active.file.write_all_at(&bytes, pos) {
            return Err(self.write_failed(&mut st, pos, &e));
        }
        let last = base + header.last_offset_delta as u64;
        st.active
            .index
            .on_batch(base, pos, len, header.max_timestamp);
        st.active.bytes += len;
        st.next_offset = last + 1;
        let appended = Appended {
            base_offset: base,
            last_offset: last,
        };
        if self.config.sync != SyncMode::Always {
            st.visible_offset = st.next_offset;
            st.visible_pos = st.active.bytes;
            self.counters.appends.fetch_add(1, Ordering::Relaxed);
            self.changed.notify_all();
            return Ok(appended);
        }
        drop(self.sync_through(st, last + 1)?);
        self.counters.appends.fetch_add(1, Ordering::Relaxed);
        Ok(appended)
    }

    /// A failed write: roll back a full disk, fail the partition on anything else.
    fn write_failed(&self, st: &mut State, pos: u64, e: &io::Error) -> AppendError {
        if is_disk_full(e) && st.active.file.set_len(pos).is_ok() {
            return AppendError::DiskFull {
                dir: self.dir.clone(),
            };
        }
        self.fail(st, "write", e);
        self.unavailable_err(st.unavailable.clone().expect("just set"))
    }

    fn needs_roll(&self, st: &State, len: u64, delta: u64) -> bool {
        let active = &st.active;
        active.bytes > 0
            && (active.bytes + len > self.config.segment_bytes_max
                || st.next_offset + delta - active.base > RELATIVE_OFFSET_MAX
                || self.clock.now_ms().saturating_sub(active.created_ms)
                    >= self.config.segment_age_ms_max as i64)
    }

    /// Waits for, then takes, the I/O role.
    fn acquire_io<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while st.io_busy {
            st = self.wait(st);
        }
        st.io_busy = true;
        st
    }

    fn release_io(&self, st: &mut State) {
        st.io_busy = false;
        self.changed.notify_all();
    }

    /// Blocks until every offset below `end` is durable, syncing if no one else is.
    fn sync_through<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        end: u64,
    ) -> Result<MutexGuard<'a, State>, AppendError> {
        loop {
            if st.durable_offset >= end {
                return Ok(st);
            }
            self.check_available(&st)?;
            if st.io_busy {
                st = self.wait(st);
                continue;
            }
            st.io_busy = true;
            let (target, target_pos, base) = (st.next_offset, st.active.bytes, st.active.base);
            let file = Arc::clone(&st.active.file);
            drop(st);
            let result = file.sync_data();
            st = self.lock();
            match result {
                Ok(()) => {
                    self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                    if target > st.durable_offset {
                        st.durable_offset = target;
                        if st.active.base == base {
                            st.visible_offset = target;
                            st.visible_pos = target_pos;
                        }
                    }
                    // Acknowledge the group before spending time on the checkpoint.
                    self.changed.notify_all();
                    let now = self.clock.now_ms();
                    if now.saturating_sub(st.checkpoint_ms)
                        >= self.config.checkpoint_interval_ms as i64
                    {
                        st = self.write_checkpoint_unlocked(st, now);
                    }
                }
                Err(e) => self.fail(&mut st, "sync", &e),
            }
            self.release_io(&mut st);
        }
    }

    /// Writes a checkpoint without holding the lock during the sync. Caller holds the I/O role.
    fn write_checkpoint_unlocked<'a>(
        &'a self,
        st: MutexGuard<'a, State>,
        now: i64,
    ) -> MutexGuard<'a, State> {
        let cp = Checkpoint {
            generation: st.checkpoint.generation + 1,
            durable_offset: st.durable_offset,
            log_start_offset: st.log_start,
        };
        drop(st);
        let result = checkpoint::write(&*self.checkpoint_file, &cp);
        let mut st = self.lock();
        self.after_checkpoint(&mut st, cp, now, result);
        st
    }

    /// Writes a checkpoint while holding the lock. Caller holds the I/O role.
    fn write_checkpoint_locked(&self, st: &mut State) -> bool {
        let cp = Checkpoint {
            generation: st.checkpoint.generation + 1,
            durable_offset: st.durable_offset,
            log_start_offset: st.log_start,
        };
        let result = checkpoint::write(&*self.checkpoint_file, &cp);
        let ok = result.is_ok();
        self.after_checkpoint(st, cp, self.clock.now_ms(), result);
        ok
    }

    fn after_checkpoint(&self, st: &mut State, cp: Checkpoint, now: i64, result: io::Result<()>) {
        match result {
            Ok(()) => {
                st.checkpoint = cp;
                st.checkpoint_ms = now;
            }
            Err(e) => self.fail(st, "checkpoint", &e),
        }
    }

    /// Seals the active segment and starts a new one. Caller holds the lock and the I/O role.
    /// On error the partition is failed.
    fn roll(&self, st: &mut State) {
        let (base, next, bytes) = (st.active.base, st.next_offset, st.active.bytes);
        if let Err(e) = st.active.file.sync_data() {
            return self.fail(st, "sync", &e);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        st.durable_offset = next;
        // The sealed segment is durable in full, so readers may see all of it.
        st.visible_offset = next;
        self.changed.notify_all();
        for kind in [index::Kind::Offset, index::Kind::Time] {
            let path = segment_path(&self.dir, base, kind.extension());
            let data = st.active.index.encode(kind, next, bytes);
            if let Err(e) = write_file(&*self.storage, &path, &data) {
                return self.fail(st, "index write", &e);
            }
        }
        // Invariant: a sealed segment lies below the checkpoint's durable point.
        if !self.write_checkpoint_locked(st) {
            return;
        }
        let path = segment_path(&self.dir, next, "log");
        let file = match self.storage.open(&path, true) {
            Ok(f) => f,
            Err(e) => return self.fail(st, "create segment", &e),
        };
        if let Err(e) = self.storage.sync_dir(&self.dir) {
            return self.fail(st, "sync directory", &e);
        }
        let old = std::mem::replace(
            &mut st.active,
            Active {
                base: next,
                file,
                bytes: 0,
                index: IndexBuilder::new(next, self.config.index_interval_bytes),
                created_ms: self.clock.now_ms(),
            },
        );
        st.sealed.push(Sealed {
            base,
            next,
            bytes,
            max_timestamp: old.index.max_timestamp(),
        });
        st.visible_pos = 0;
    }

    /// Syncs everything written so far (the interval flusher and `close` use this).
    ///
    /// # Errors
    /// [`AppendError::Unavailable`] if the partition failed, now or before.
    pub fn flush(&self) -> Result<(), AppendError> {
        let st = self.lock();
        let end = st.next_offset;
        self.sync_through(st, end).map(drop)
    }

    /// Whether writes are waiting for a sync.
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        let st = self.lock();
        st.durable_offset < st.next_offset
    }

    /// Syncs, writes a final checkpoint and refuses further appends.
    ///
    /// # Errors
    /// [`AppendError::Unavailable`] if the final sync or checkpoint failed.
    pub fn close(&self) -> Result<(), AppendError> {
        let flushed = self.flush();
        let mut st = self.acquire_io(self.lock());
        let result =
            match flushed {
                // A corrupted partition keeps the checkpoint it had: recovery wrote none, and writing
                // one now would lower the durable point below data it could not verify.
                Ok(()) if st.corruption.is_some() => Ok(()),
                Ok(()) if self.write_checkpoint_locked(&mut st) => Ok(()),
                Ok(()) => Err(self
                    .unavailable_err(st.unavailable.clone().expect("checkpoint failure sets it"))),
                Err(e) => Err(e),
            };
        st.unavailable.get_or_insert(Unavailable::Closed);
        self.release_io(&mut st);
        result
    }

    /// Deletes sealed segments that retention no longer keeps, oldest first. Returns how many
    /// were deleted.
    ///
    /// The checkpoint's log start moves (durably) before any file is removed, so a crash in
    /// between leaves files that the next open deletes.
    ///
    /// # Errors
    /// [`AppendError::Unavailable`] if the checkpoint could not be written (the partition fails).
    pub fn apply_retention(&self) -> Result<usize, AppendError> {
        let now = self.clock.now_ms();
        let mut st = self.acquire_io(self.lock());
        let count = self.retention_count(&st, now);
        if count == 0 || st.unavailable.is_some() {
            self.release_io(&mut st);
            return Ok(0);
        }
        let new_start = st.sealed.get(count).map_or(st.active.base, |s| s.base);
        let previous = st.log_start;
        st.log_start = new_start;
        if !self.write_checkpoint_locked(&mut st) {
            st.log_start = previous;
            self.release_io(&mut st);
            return Err(self.unavailable_err(st.unavailable.clone().expect("set by failure")));
        }
        let doomed: Vec<Sealed> = st.sealed.drain(..count).collect();
        self.release_io(&mut st);
        drop(st);
        for seg in &doomed {
            for ext in ["log", "index", "timeindex"] {
                // A file that fails to go is garbage below the log start; open removes it.
                let _ = self
                    .storage
                    .remove_file(&segment_path(&self.dir, seg.base, ext));
            }
        }
        let _ = self.storage.sync_dir(&self.dir);
        Ok(count)
    }

    fn retention_count(&self, st: &State, now: i64) -> usize {
        let Retention { bytes_max, ms_max } = self.config.retention;
        let mut total: u64 = st.sealed.iter().map(|s| s.bytes).sum::<u64>() + st.active.bytes;
        let mut count = 0;
        for seg in &st.sealed {
            let too_old =
                ms_max.is_some_and(|ms| seg.max_timestamp < now.saturating_sub(ms as i64));
            let too_big = bytes_max.is_some_and(|max| total.saturating_sub(seg.bytes) >= max);
            if !(too_old || too_big) {
                break;
            }
            total -= seg.bytes;
            count += 1;
        }
        count
    }

    /// Reads whole batches starting with the one holding `offset`, up to `max_bytes` (capped by
    /// `read_bytes_max`) but always at least one batch when `offset` is below the high-water
    /// mark. Every returned batch was CRC-checked after it was read.
    ///
    /// # Errors
    /// - [`ReadError::OffsetOutOfRange`] below the log start or above the high-water mark.
    /// - [`ReadError::Corrupted`] if a batch on the way fails its checks (nothing from it is
    ///   returned, and the partition then refuses appends).
    /// - [`ReadError::Io`] on a device error.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Batches, ReadError> {
        let max_bytes = max_bytes.min(self.config.read_bytes_max as usize);
        let plan = self.plan(offset)?;
        let mut out = Batches {
            batches: Vec::new(),
            high_watermark: plan.hw,
            log_start_offset: plan.log_start,
        };
        let mut taken = 0usize;
        for seg in &plan.segments {
            let mut visit = |h: &BatchHeader, cursor: &mut Cursor<'_>| -> Result<Walk, ScanError> {
                if (h.last_offset() as u64) < offset {
                    return Ok(Walk::Skip);
                }
                if !out.batches.is_empty() && taken + h.total_len() > max_bytes {
                    return Ok(Walk::Stop);
                }
                let bytes = cursor.body(h)?;
                taken += bytes.len();
                out.batches.push(RawBatch {
                    base_offset: h.base_offset as u64,
                    last_offset: h.last_offset() as u64,
                    max_timestamp: h.max_timestamp,
                    bytes,
                });
                Ok(if taken >= max_bytes {
                    Walk::Stop
                } else {
                    Walk::Skip
                })
            };
            if self.walk(seg, offset, SeekBy::Offset(offset), &mut visit)? == Walk::Stop {
                break;
            }
        }
        Ok(out)
    }

    /// Reads and decodes records from `offset` on (records below `offset` in the first batch
    /// are dropped), up to `max_bytes` of batches.
    ///
    /// # Errors
    /// As [`Partition::read`], plus [`ReadError::Decode`] for a batch that cannot be decoded.
    pub fn read_records(
        &self,
        offset: u64,
        max_bytes: usize,
    ) -> Result<Vec<batch::Record>, ReadError> {
        let mut records = Vec::new();
        for b in self.read(offset, max_bytes)?.batches {
            let decoded = batch::decode(&b.bytes).map_err(|source| ReadError::Decode {
                offset: b.base_offset,
                source,
            })?;
            records.extend(decoded.into_iter().filter(|r| r.offset as u64 >= offset));
        }
        Ok(records)
    }

    /// The first offset whose record timestamp is at or after `timestamp`, or `None` if every
    /// readable record is older.
    ///
    /// # Errors
    /// As [`Partition::read_records`].
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<u64>, ReadError> {
        let plan = self.plan_all();
        let mut found = None;
        for seg in plan
            .segments
            .iter()
            .filter(|s| s.max_timestamp >= timestamp)
        {
            let mut visit = |h: &BatchHeader, cursor: &mut Cursor<'_>| -> Result<Walk, ScanError> {
                // Verify before trusting the header: a flipped bit in `max_timestamp` would
                // otherwise skip the batch that holds the answer and return a later offset.
                let bytes = cursor.body(h)?;
                if h.max_timestamp < timestamp || (h.last_offset() as u64) < plan.log_start {
                    return Ok(Walk::Skip);
                }
                let records = batch::decode(&bytes).map_err(|e| cursor.bad(e.to_string()))?;
                found = records
                    .iter()
                    .find(|r| r.timestamp >= timestamp && r.offset as u64 >= plan.log_start)
                    .map(|r| r.offset as u64);
                Ok(if found.is_some() {
                    Walk::Stop
                } else {
                    Walk::Skip
                })
            };
            if self.walk(seg, plan.log_start, SeekBy::Time(timestamp), &mut visit)? == Walk::Stop {
                break;
            }
        }
        Ok(found)
    }

    fn plan(&self, offset: u64) -> Result<Plan, ReadError> {
        let plan = self.plan_all();
        if let Some(c) = plan.damaged_tail.as_ref().filter(|c| offset >= c.offset) {
            return Err(ReadError::Corrupted {
                dir: self.dir.clone(),
                source: c.clone(),
            });
        }
        if offset < plan.log_start || offset > plan.hw {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start_offset: plan.log_start,
                high_watermark: plan.hw,
            });
        }
        let segments: Vec<SegRef> = plan
            .segments
            .into_iter()
            .filter(|s| s.next > offset)
            .collect();
        if let Some(first) = segments.first().filter(|s| s.base > offset) {
            // Offsets between the log start and the first segment are missing (recovery found
            // segments gone): a gap, never to be read as if the next batch held them.
            return Err(ReadError::Corrupted {
                dir: self.dir.clone(),
                source: Corruption {
                    segment_base: first.base,
                    position: 0,
                    offset,
                    reason: format!("offsets {offset} to {} are missing", first.base - 1),
                },
            });
        }
        Ok(Plan { segments, ..plan })
    }

    /// A snapshot of what is readable, taken under the lock; reading happens without it.
    fn plan_all(&self) -> Plan {
        let st = self.lock();
        let mut segments: Vec<SegRef> = st
            .sealed
            .iter()
            .filter(|s| s.next > st.log_start)
            .map(|s| SegRef {
                base: s.base,
                next: s.next,
                limit: s.bytes,
                max_timestamp: s.max_timestamp,
                active: None,
            })
            .collect();
        if st.visible_offset > st.active.base {
            let a = &st.active;
            segments.push(SegRef {
                base: a.base,
                next: st.visible_offset,
                limit: st.visible_pos,
                max_timestamp: a.index.max_timestamp(),
                active: Some((Arc::clone(&a.file), a.index.clone())),
            });
        }
        Plan {
            segments,
            hw: st.visible_offset,
            log_start: st.log_start,
            damaged_tail: st
                .corruption
                .clone()
                .filter(|c| c.segment_base == st.active.base),
        }
    }

    /// Walks the batches of one segment from the indexed position for `seek`, calling `visit`
    /// for each batch header until it says stop. A wrong index answer falls back to a scan
    /// from the segment start; a bad batch marks the partition corrupted.
    fn walk(
        &self,
        seg: &SegRef,
        log_start: u64,
        seek: SeekBy,
        visit: &mut dyn FnMut(&BatchHeader, &mut Cursor<'_>) -> Result<Walk, ScanError>,
    ) -> Result<Walk, ReadError> {
        let path = segment_path(&self.dir, seg.base, "log");
        let file = match &seg.active {
            Some((file, _)) => Arc::clone(file),
            None => match self.storage.open(&path, false) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Retention deleted it after the plan was made.
                    let st = self.lock();
                    return Err(ReadError::OffsetOutOfRange {
                        requested: log_start,
                        log_start_offset: st.log_start,
                        high_watermark: st.visible_offset,
                    });
                }
                Err(source) => return Err(ReadError::Io { path, source }),
            },
        };
        let start = self.seek(seg, seek);
        let mut result = self.walk_from(&*file, seg, start, visit);
        if start.position != 0
            && matches!(result, Err(ScanError::Bad { position, .. }) if position == u64::from(start.position))
        {
            // The index pointed somewhere that is not a batch boundary: distrust it.
            self.counters
                .index_fallbacks
                .fetch_add(1, Ordering::Relaxed);
            result = self.walk_from(
                &*file,
                seg,
                Position {
                    offset: seg.base,
                    position: 0,
                },
                visit,
            );
        }
        result.map_err(|e| match e {
            ScanError::Io(source) => ReadError::Io { path, source },
            ScanError::Bad {
                position,
                offset,
                reason,
            } => {
                let corruption = Corruption {
                    segment_base: seg.base,
                    position,
                    offset,
                    reason,
                };
                self.mark_corrupted(&corruption);
                ReadError::Corrupted {
                    dir: self.dir.clone(),
                    source: corruption,
                }
            }
        })
    }

    fn walk_from(
        &self,
        file: &dyn File,
        seg: &SegRef,
        start: Position,
        visit: &mut dyn FnMut(&BatchHeader, &mut Cursor<'_>) -> Result<Walk, ScanError>,
    ) -> Result<Walk, ScanError> {
        let mut cursor = Cursor::new(file, seg.base, start, seg.limit);
        while let Some(h) = cursor.next_header()? {
            if visit(&h, &mut cursor)? == Walk::Stop {
                return Ok(Walk::Stop);
            }
            cursor.advance(&h);
        }
        if cursor.expected != seg.next {
            return Err(cursor.bad(format!(
                "segment ends at offset {} but should end at {}",
                cursor.expected, seg.next
            )));
        }
        Ok(Walk::Skip)
    }

    /// Where to start walking a segment. Index trouble degrades to the segment start.
    fn seek(&self, seg: &SegRef, seek: SeekBy) -> Position {
        let start = Position {
            offset: seg.base,
            position: 0,
        };
        if let Some((_, index)) = &seg.active {
            return match seek {
                SeekBy::Offset(o) => index.lookup_offset(o),
                SeekBy::Time(t) => index.lookup_time(t),
            };
        }
        let open = |kind: index::Kind| {
            self.storage
                .open(&segment_path(&self.dir, seg.base, kind.extension()), false)
                .ok()
        };
        let Some(offsets) = open(index::Kind::Offset) else {
            return start;
        };
        let target = match seek {
            SeekBy::Offset(o) => o,
            SeekBy::Time(t) => {
                match open(index::Kind::Time).map(|f| index::lookup_time_file(&*f, seg.base, t)) {
                    Some(Ok(rel)) => rel,
                    _ => return start,
                }
            }
        };
        match index::lookup_offset_file(&*offsets, seg.base, target) {
            Ok(p)
                if p.offset >= seg.base
                    && p.offset < seg.next
                    && u64::from(p.position) < seg.limit =>
            {
                p
            }
            _ => start,
        }
    }

    fn mark_corrupted(&self, corruption: &Corruption) {
        self.counters
            .corruptions_detected
            .fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        st.corruption.get_or_insert_with(|| corruption.clone());
        if !matches!(st.unavailable, Some(Unavailable::Failed { .. })) {
            st.unavailable = Some(Unavailable::Corrupted(corruption.clone()));
        }
    }
}

use crate::config::Retention;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Skip,
    Stop,
}

#[derive(Debug, Clone, Copy)]
enum SeekBy {
    Offset(u64),
    Time(i64),
}

struct SegRef {
    base: u64,
    next: u64,
    limit: u64,
    max_timestamp: i64,
    active: Option<(Arc<dyn File>, IndexBuilder)>,
}

struct Plan {
    segments: Vec<SegRef>,
    hw: u64,
    log_start: u64,
    /// Recovery found the active segment damaged from this point on; nothing past it is
    /// known, so reads that reach it fail instead of looking like the end of the log.
    damaged_tail: Option<Corruption>,
}

/// Writes a whole small file (an index) and syncs it.
fn write_file(storage: &dyn Storage, path: &Path, data: &[u8]) -> io::Result<()> {
    let file = storage.open(path, true)?;
    file.set_len(0)?;
    file.write_all_at(data, 0)?;
    file.sync_data()
}

/// Recovery of one partition directory; see `docs/durability.md` for the rules it applies.
struct Recovery<'a> {
    storage: &'a dyn Storage,
    clock: &'a dyn Clock,
    dir: &'a Path,
    config: &'a PartitionConfig,
}

impl Recovery<'_> {
    fn run(&self) -> Result<(State, Arc<dyn File>, RecoveryReport), OpenError> {
        let dir = self.dir;
        let mut report = RecoveryReport::default();
        let cp_path = dir.join(CHECKPOINT_FILE);
        let cp_file = self
            .storage
            .open(&cp_path, false)
            .map_err(io_err("open", &cp_path))?;
        let (checkpoint, stale) = self.read_checkpoint(&*cp_file, &cp_path, &mut report)?;

        let mut bases = self.list_segments(&mut report)?;
        let mut log_start = checkpoint.log_start_offset;
        // Finish a retention that a crash interrupted: whole segments below the log start go.
        while bases.len() > 1 && bases[1] <= log_start {
            self.remove_segment(bases.remove(0))?;
            report.segments_deleted += 1;
        }
        if bases.is_empty() {
            if checkpoint.durable_offset > log_start {
                self.corrupt(
                    &mut report,
                    log_start,
                    0,
                    log_start,
                    "every segment file is missing".into(),
                );
            }
            let path = segment_path(dir, log_start, "log");
            self.storage
                .open(&path, true)
                .map_err(io_err("create", &path))?;
            self.storage
                .sync_dir(dir)
                .map_err(io_err("sync directory", dir))?;
            bases.push(log_start);
        }
        if bases[0] > log_start {
            if stale {
                report.warnings.push(format!(
                    "log start {log_start} from an older checkpoint slot is below the first segment {}; using it",
                    bases[0]
                ));
                log_start = bases[0];
            } else {
                self.corrupt(
                    &mut report,
                    bases[0],
                    0,
                    log_start,
                    format!("segments below offset {} are missing", bases[0]),
                );
            }
        }

        let mut sealed = Vec::with_capacity(bases.len() - 1);
        for pair in bases.windows(2) {
            sealed.push(self.recover_sealed(pair[0], pair[1], &mut report)?);
        }
        let active_base = *bases.last().expect("at least one segment");
        let (active, next_offset) =
            self.recover_active(active_base, checkpoint.durable_offset, &mut report)?;

        if report.corruption.is_none() && next_offset < checkpoint.durable_offset {
            let reason = format!(
                "log ends at offset {next_offset} but offsets below {} were acknowledged",
                checkpoint.durable_offset
            );
            self.corrupt(&mut report, active_base, active.bytes, next_offset, reason);
        }
        let mut state = State {
            unavailable: report.corruption.clone().map(Unavailable::Corrupted),
            corruption: report.corruption.clone(),
            sealed,
            next_offset,
            visible_offset: next_offset,
            visible_pos: active.bytes,
            durable_offset: next_offset,
            log_start,
            io_busy: false,
            checkpoint,
            checkpoint_ms: self.clock.now_ms(),
            active,
        };
        if report.corruption.is_none() {
            // What survived the crash becomes durable before anything is appended after it, and
            // the checkpoint records it.
            state
                .active
                .file
                .sync_data()
                .map_err(io_err("sync", segment_path(dir, active_base, "log")))?;
            state.checkpoint = Checkpoint {
                generation: checkpoint.generation + 1,
                durable_offset: next_offset,
                log_start_offset: log_start,
            };
            checkpoint::write(&*cp_file, &state.checkpoint)
                .map_err(io_err("write checkpoint", &cp_path))?;
        }
        Ok((state, cp_file, report))
    }

    fn read_checkpoint(
        &self,
        file: &dyn File,
        path: &Path,
        report: &mut RecoveryReport,
    ) -> Result<(Checkpoint, bool), OpenError> {
        let best = checkpoint::read(file).map_err(io_err("read checkpoint", path))?;
        let mut slots = 0;
        for pos in [0, checkpoint::SLOT_1_POS] {
            let mut slot = [0u8; checkpoint::SLOT_BYTES];
            let n = file
                .read_at(&mut slot, pos)
                .map_err(io_err("read checkpoint", path))?;
            slots += usize::from(Checkpoint::decode(&slot[..n]).is_some());
        }
        match best {
            Some(cp) => {
                if slots < 2 && cp.generation > 0 {
                    report.warnings.push(format!(
                        "checkpoint slot for generation {} is unreadable; using the other",
                        cp.generation + 1
                    ));
                }
                Ok((cp, slots < 2 && cp.generation > 0))
            }
            None => {
                // Without a durable point nothing can be called a torn tail: treat every bad batch
                // as corruption, and refuse appends.
                self.corrupt(
                    report,
                    0,
                    0,
                    0,
                    "both checkpoint slots are unreadable".into(),
                );
                Ok((
                    Checkpoint {
                        generation: 0,
                        durable_offset: u64::MAX,
                        log_start_offset: 0,
                    },
                    true,
                ))
            }
        }
    }

    fn corrupt(
        &self,
        report: &mut RecoveryReport,
        segment_base: u64,
        position: u64,
        offset: u64,
        reason: String,
    ) {
        report.warnings.push(format!(
            "corruption in segment {segment_base} at byte {position} (offset {offset}): {reason}"
        ));
        report.corruption.get_or_insert(Corruption {
            segment_base,
            position,
            offset,
            reason,
        });
    }

    fn list_segments(&self, report: &mut RecoveryReport) -> Result<Vec<u64>, OpenError> {
        let names = self
            .storage
            .list_dir(self.dir)
            .map_err(io_err("list", self.dir))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .filter(|&(_, ext)| ext == "log")
            .map(|(b, _)| b)
            .collect();
        bases.sort_unstable();
        // Indexes whose segment is gone are leftovers of a retention; remove them.
        for (base, ext) in names.iter().filter_map(|n| parse_segment_name(n)) {
            if ext != "log" && bases.binary_search(&base).is_err() {
                let path = segment_path(self.dir, base, ext);
                self.storage
                    .remove_file(&path)
                    .map_err(io_err("remove", &path))?;
                report
                    .warnings
                    .push(format!("removed orphan index {}", path.display()));
            }
        }
        Ok(bases)
    }

    fn remove_segment(&self, base: u64) -> Result<(), OpenError> {
        for ext in ["log", "index", "timeindex"] {
            let path = segment_path(self.dir, base, ext);
            match self.storage.remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &path)(e));
                }
                _ => {}
            }
        }
        self.storage
            .sync_dir(self.dir)
            .map_err(io_err("sync directory", self.dir))
    }

    /// A sealed segment: trust its index files if they check out, else rebuild them by a full,
    /// CRC-checked scan.
    fn recover_sealed(
        &self,
        base: u64,
        next: u64,
        report: &mut RecoveryReport,
    ) -> Result<Sealed, OpenError> {
        let path = segment_path(self.dir, base, "log");
        let file = self
            .storage
            .open(&path, false)
            .map_err(io_err("open", &path))?;
        let bytes = file.len().map_err(io_err("stat", &path))?;
        let mut headers = [None, None];
        for (slot, kind) in headers
            .iter_mut()
            .zip([index::Kind::Offset, index::Kind::Time])
        {
            let ipath = segment_path(self.dir, base, kind.extension());
            if let Ok(f) = self.storage.open(&ipath, false) {
                *slot = index::validate(&*f, kind, base, bytes)
                    .map_err(io_err("read index", &ipath))?;
            }
        }
        if let [Some(o), Some(t)] = headers
            && o.next_offset == next
            && t.next_offset == next
            && next > base
        {
            return Ok(Sealed {
                base,
                next,
                bytes,
                max_timestamp: o.max_timestamp,
            });
        }
        let scan = scan_segment(&*file, base, bytes, self.config.index_interval_bytes)
            .map_err(io_err("scan", &path))?;
        let sealed = Sealed {
            base,
            next,
            bytes,
            max_timestamp: scan.index.max_timestamp(),
        };
        if let Some((position, offset, reason)) = scan.stopped {
            self.corrupt(report, base, position, offset, reason);
            return Ok(sealed);
        }
        if scan.next_offset != next || next <= base {
            let reason = format!(
                "sealed segment ends at offset {} but the next segment starts at {next}",
                scan.next_offset
            );
            self.corrupt(report, base, scan.end_pos, scan.next_offset, reason);
            return Ok(sealed);
        }
        for kind in [index::Kind::Offset, index::Kind::Time] {
            let ipath = segment_path(self.dir, base, kind.extension());
            write_file(self.storage, &ipath, &scan.index.encode(kind, next, bytes))
                .map_err(io_err("write index", &ipath))?;
        }
        report.indexes_rebuilt += 1;
        Ok(sealed)
    }

    /// The last segment: scan and CRC-check all of it; cut a torn tail above the durable point,
    /// report corruption below it.
    fn recover_active(
        &self,
        base: u64,
        durable: u64,
        report: &mut RecoveryReport,
    ) -> Result<(Active, u64), OpenError> {
        let path = segment_path(self.dir, base, "log");
        let file = self
            .storage
            .open(&path, false)
            .map_err(io_err("open", &path))?;
        let len = file.len().map_err(io_err("stat", &path))?;
        let scan = scan_segment(&*file, base, len, self.config.index_interval_bytes)
            .map_err(io_err("scan", &path))?;
        let mut bytes = len;
        if let Some((position, offset, reason)) = scan.stopped {
            if offset < durable {
                self.corrupt(report, base, position, offset, reason);
                bytes = position;
            } else {
                // A torn tail: bytes that were never acknowledged. Cut them.
                file.set_len(position).map_err(io_err("truncate", &path))?;
                report.truncated_bytes += len - position;
                report.warnings.push(format!(
                    "truncated torn tail of {} at byte {position} (offset {offset}, {} bytes): {reason}",
                    path.display(),
                    len - position
                ));
                bytes = position;
            }
        }
        let first_ts = self
            .first_timestamp(&*file, bytes)
            .unwrap_or_else(|| self.clock.now_ms());
        let active = Active {
            base,
            file,
            bytes,
            index: scan.index,
            created_ms: first_ts,
        };
        Ok((active, scan.next_offset))
    }

    /// The active segment's age is measured from its first batch, as Kafka's `segment.ms` is.
    fn first_timestamp(&self, file: &dyn File, bytes: u64) -> Option<i64> {
        if bytes < batch::BATCH_HEADER_BYTES as u64 {
            return None;
        }
        let mut h = [0u8; batch::BATCH_HEADER_BYTES];
        file.read_exact_at(&mut h, 0).ok()?;
        BatchHeader::parse(&h)
            .ok()
            .map(|h| h.base_timestamp.min(self.clock.now_ms()))
    }
}
