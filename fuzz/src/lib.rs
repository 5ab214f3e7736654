//! Shared harness code for the `gearbox-log` fuzz targets.
//!
//! * [`Bytes`]: a cursor that turns fuzz input into small integers and slices, never failing
//!   (missing bytes read as zero / empty), so every input means *something*.
//! * [`Script`]: the "tiny archive" format of the recovery targets: a mode byte followed by
//!   file operations (write, patch, flip a bit, truncate, remove) on a simulated disk, plus
//!   batches to append and timestamps/offsets to probe once the partition is open.
//! * [`reseal_file`]: recomputes the checksums the log checks (batch CRCs, checkpoint slots,
//!   index files, topic `meta`) so that mutated files get past the checksum gate and reach the
//!   recovery logic behind it.
//! * [`exercise_partition`] / [`check_survivors`]: what is done with a partition once it opens,
//!   and the properties asserted on the way.
//!
//! Everything here is deterministic: the simulated disk and clock have no hidden state, so a
//! crashing input replays exactly with `cargo +nightly fuzz run -s none -a <target> <file>`.

use gearbox_log::batch::{
    self, BATCH_HEADER_BYTES, BATCH_LENGTH_MIN, BATCH_LENGTH_POS, BatchBuilder, CRC_POS,
    LOG_OVERHEAD, RecordHeader, RecordInput,
};
use gearbox_log::io::Storage;
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use gearbox_log::{
    Appended, Log, LogOptions, Partition, PartitionConfig, Retention, SyncMode, TopicConfig,
};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Runs one fuzz iteration. Every panic is a crash: the bugs fuzzing found so far are fixed,
/// and their reproducers in `fuzz/regressions/` guard against their return.
pub fn run(body: impl FnOnce()) {
    body();
}

/// Fixed time of the simulated clock: 2023-11-14T22:13:20Z.
pub const CLOCK_MS: i64 = 1_700_000_000_000;

/// A forgiving reader over fuzz input.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// A reader at the start of `data`.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data, pos: 0 }
    }

    /// Whether every byte has been consumed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes not consumed yet.
    #[must_use]
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }

    /// Up to `n` bytes (fewer at the end of input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let rest = self.rest();
        let n = n.min(rest.len());
        self.pos += n;
        &rest[..n]
    }

    /// One byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    /// A little-endian `u16`, zero-filled past the end.
    pub fn u16(&mut self) -> u16 {
        let mut b = [0u8; 2];
        let got = self.take(2);
        b[..got.len()].copy_from_slice(got);
        u16::from_le_bytes(b)
    }

    /// A little-endian `u64`, zero-filled past the end.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

/// One step of a [`Script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Create or replace a file with these bytes.
    Write { file: u8, data: &'a [u8] },
    /// Overwrite bytes at `pos`, extending the file with zeros if needed (creates it if missing).
    Patch { file: u8, pos: u16, data: &'a [u8] },
    /// Flip one bit (taken modulo the file's size in bits); no-op on a missing or empty file.
    FlipBit { file: u8, bit: u16 },
    /// Cut the file to `len` bytes (modulo its length + 1); no-op on a missing file.
    Truncate { file: u8, len: u16 },
    /// Remove the file (durably); no-op on a missing file.
    Remove { file: u8 },
    /// After open, append these bytes (with `batchLength` and CRC made to match) as a batch.
    Append { data: &'a [u8] },
    /// After open, probe `offset_for_timestamp(timestamp)` and `read(offset)`.
    Probe { timestamp: i64, offset: u64 },
}

/// The decoded fuzz input of a recovery target.
#[derive(Debug, Clone)]
pub struct Script<'a> {
    /// Bit 0: start from a directory a real partition wrote; bits 1-2: which one.
    /// Bit 3: reseal checksums after the file operations.
    /// Bit 4: open with `segment_bytes_max` 4096 (else 1024).
    /// Bit 5: open with `index_interval_bytes` 64 (else 4096).
    /// Bit 6: simulate a crash with torn unsynced writes (else a clean close) before reopening.
    /// Bit 7: advance the clock by a day before opening (segment age, retention by time).
    pub mode: u8,
    /// Seed for the torn-write crash image.
    pub seed: u8,
    /// The operations, in input order.
    pub ops: Vec<Op<'a>>,
}

/// Most operations read from one input; keeps a single run cheap.
pub const OPS_MAX: usize = 64;
/// Most appends tried per partition.
pub const APPENDS_MAX: usize = 8;

impl<'a> Script<'a> {
    /// Decodes `data`; never fails (short input just means fewer operations).
    #[must_use]
    pub fn parse(data: &'a [u8]) -> Self {
        let mut b = Bytes::new(data);
        let mode = b.u8();
        let seed = b.u8();
        let mut ops = Vec::new();
        while !b.is_empty() && ops.len() < OPS_MAX {
            let sel = b.u8();
            let file = sel & 0x1f;
            let op = match sel >> 5 {
                0 | 7 => {
                    let len = usize::from(b.u16());
                    Op::Write {
                        file,
                        data: b.take(len),
                    }
                }
                1 => {
                    let pos = b.u16();
                    let len = usize::from(b.u8());
                    Op::Patch {
                        file,
                        pos,
                        data: b.take(len),
                    }
                }
                2 => Op::FlipBit { file, bit: b.u16() },
                3 => Op::Truncate { file, len: b.u16() },
                4 => Op::Remove { file },
                5 => {
                    let len = usize::from(b.u16());
                    Op::Append { data: b.take(len) }
                }
                _ => Op::Probe {
                    timestamp: b.u64() as i64,
                    offset: b.u64(),
                },
            };
            ops.push(op);
        }
        Script { mode, seed, ops }
    }

    /// Whether to start from a directory a real partition wrote.
    #[must_use]
    pub fn seeded(&self) -> bool {
        self.mode & 1 != 0
    }

    /// Which seeded base (0..4).
    #[must_use]
    pub fn base_variant(&self) -> usize {
        usize::from((self.mode >> 1) & 3)
    }

    /// Whether to reseal checksums after the file operations.
    #[must_use]
    pub fn reseal(&self) -> bool {
        self.mode & 8 != 0
    }

    /// Whether to reopen from a torn crash image instead of after a clean close.
    #[must_use]
    pub fn torn_crash(&self) -> bool {
        self.mode & 0x40 != 0
    }

    /// The clock reading to open with.
    #[must_use]
    pub fn clock_ms(&self) -> i64 {
        if self.mode & 0x80 != 0 {
            CLOCK_MS + 24 * 3600 * 1000
        } else {
            CLOCK_MS
        }
    }

    /// The partition config to open with: `SyncMode::Always`, keep forever, small segments.
    #[must_use]
    pub fn config(&self) -> PartitionConfig {
        let mut c = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
        c.segment_bytes_max = if self.mode & 0x10 != 0 { 4096 } else { 1024 };
        c.index_interval_bytes = if self.mode & 0x20 != 0 { 64 } else { 4096 };
        c
    }

    /// The batches to append after open.
    pub fn appends(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.ops.iter().filter_map(|op| match op {
            Op::Append { data } => Some(*data),
            _ => None,
        })
    }

    /// The `(timestamp, offset)` probes to run after open.
    pub fn probes(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.ops.iter().filter_map(|op| match op {
            Op::Probe { timestamp, offset } => Some((*timestamp, *offset)),
            _ => None,
        })
    }
}

/// Applies the file operations of `script` under `root`, choosing file names from `names`.
///
/// `names` are relative to `root`; none may be a directory prefix of another (the simulator's
/// `write_raw` panics if a file is in the way of a directory, which would be a harness bug).
pub fn apply_file_ops(disk: &SimDisk, root: &Path, names: &[String], script: &Script<'_>) {
    for op in &script.ops {
        let pick = |file: &u8| root.join(&names[usize::from(*file) % names.len()]);
        match op {
            Op::Write { file, data } => disk.write_raw(&pick(file), data),
            Op::Patch { file, pos, data } => {
                let path = pick(file);
                let mut content = disk.read_file(&path).unwrap_or_default();
                let start = usize::from(*pos);
                if content.len() < start + data.len() {
                    content.resize(start + data.len(), 0);
                }
                content[start..start + data.len()].copy_from_slice(data);
                disk.write_raw(&path, &content);
            }
            Op::FlipBit { file, bit } => {
                let path = pick(file);
                if let Some(mut content) = disk.read_file(&path)
                    && !content.is_empty()
                {
                    let bit = usize::from(*bit) % (content.len() * 8);
                    content[bit / 8] ^= 1 << (bit % 8);
                    disk.write_raw(&path, &content);
                }
            }
            Op::Truncate { file, len } => {
                let path = pick(file);
                if let Some(mut content) = disk.read_file(&path) {
                    content.truncate(usize::from(*len) % (content.len() + 1));
                    disk.write_raw(&path, &content);
                }
            }
            Op::Remove { file } => {
                let path = pick(file);
                if disk.read_file(&path).is_some() {
                    // Make the removal durable too, so that a crash image agrees with what the
                    // first open saw.
                    let _ = disk.remove_file(&path);
                    if let Some(parent) = path.parent() {
                        let _ = disk.sync_dir(parent);
                    }
                }
            }
            Op::Append { .. } | Op::Probe { .. } => {}
        }
    }
}

/// Recomputes, in place, every checksum of `content` that the log would check for a file called
/// `name`. Fields other than checksums and lengths are left to the fuzzer.
pub fn reseal_file(name: &str, content: &mut [u8]) {
    if name == "checkpoint" {
        // Two 64-byte slots at 0 and 4096: magic "GBCP", version 1, CRC-32C over 60 bytes.
        for pos in [0usize, 4096] {
            if let Some(slot) = content.get_mut(pos..pos + 64) {
                slot[0..4].copy_from_slice(&0x4742_4350u32.to_be_bytes());
                slot[4..6].copy_from_slice(&1u16.to_be_bytes());
                let crc = crc32c::crc32c(&slot[..60]);
                slot[60..64].copy_from_slice(&crc.to_be_bytes());
            }
        }
    } else if name == "meta" {
        // 76 bytes: magic "GBTM", version 1, settings, CRC-32C over the first 72.
        if content.len() == 76 {
            content[0..4].copy_from_slice(&0x4742_544du32.to_be_bytes());
            content[4..6].copy_from_slice(&1u16.to_be_bytes());
            let crc = crc32c::crc32c(&content[..72]);
            content[72..76].copy_from_slice(&crc.to_be_bytes());
        }
    } else if name.ends_with(".log") {
        reseal_batches(content);
    } else if name.ends_with(".index") || name.ends_with(".timeindex") {
        // 48-byte header whose last 4 bytes are a CRC-32C over the first 44 and the entries.
        if content.len() >= 48 {
            let crc = crc32c::crc32c_append(crc32c::crc32c(&content[..44]), &content[48..]);
            content[44..48].copy_from_slice(&crc.to_be_bytes());
        }
    }
}

/// Walks `segment` as back-to-back batches and fixes each one's CRC, stopping at the first
/// length that does not fit.
pub fn reseal_batches(segment: &mut [u8]) {
    let mut pos = 0usize;
    while segment.len() - pos >= BATCH_HEADER_BYTES {
        let len_field = &segment[pos + BATCH_LENGTH_POS..pos + BATCH_LENGTH_POS + 4];
        let batch_length = i32::from_be_bytes(len_field.try_into().expect("4 bytes"));
        if batch_length < BATCH_LENGTH_MIN {
            return;
        }
        let total = LOG_OVERHEAD + batch_length as usize;
        let Some(batch) = segment.get_mut(pos..pos + total) else {
            return;
        };
        reseal_batch(batch);
        pos += total;
    }
}

/// Sets `batchLength` to match the slice and recomputes the CRC (if there is a header).
pub fn reseal_whole(batch: &mut [u8]) {
    if batch.len() < BATCH_HEADER_BYTES {
        return;
    }
    let batch_length = i32::try_from(batch.len() - LOG_OVERHEAD).unwrap_or(i32::MAX);
    batch[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&batch_length.to_be_bytes());
    reseal_batch(batch);
}

/// Recomputes the CRC of one batch whose slice is at least a header long.
pub fn reseal_batch(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[batch::ATTRIBUTES_POS..]);
    batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A small valid batch: one record at the clock's time.
#[must_use]
pub fn small_batch(timestamp: i64, tag: u8) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(RecordInput {
        timestamp,
        key: Some(vec![b'k', tag]),
        value: Some(vec![b'v', tag]),
        headers: vec![RecordHeader {
            key: "h".into(),
            value: None,
        }],
    });
    b.build().expect("one small record always builds")
}

/// A batch with `n` records starting at `ts`, a mix of null and non-null fields.
#[must_use]
pub fn mixed_batch(n: usize, ts: i64, tag: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(RecordInput {
            timestamp: ts + (i as i64 % 3),
            key: (i % 4 != 3).then(|| format!("key-{tag}-{i}").into_bytes()),
            value: (i % 5 != 4).then(|| vec![(tag + i) as u8; 10 + (i * 7) % 40]),
            headers: (0..i % 3)
                .map(|h| RecordHeader {
                    key: format!("h{h}").into(),
                    value: (h % 2 == 0).then(|| vec![b'x'; h + 1]),
                })
                .collect(),
        });
    }
    b.build().expect("a small batch always builds")
}

/// What an acknowledged append must read back as.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Where it landed.
    pub at: Appended,
    /// The batch as stored: the appended bytes with base offset and leader epoch assigned.
    pub stored: Vec<u8>,
}

/// Reads everything, probes times and offsets, then appends; asserts what the log promises.
///
/// Returns the acknowledged appends so that the caller can check they survive a reopen.
pub fn exercise_partition(
    p: &Partition,
    clock_ms: i64,
    probes: &[(i64, u64)],
    appends: &[&[u8]],
) -> Vec<Acked> {
    let healthy = p.recovery().corruption.is_none();
    let (log_start, hw) = (p.log_start_offset(), p.high_watermark());
    if healthy {
        assert!(
            log_start <= hw,
            "log start {log_start} above high watermark {hw} without corruption"
        );
        assert_eq!(
            p.durable_offset(),
            hw,
            "open: durable point is the end of the log"
        );
    }
    read_all(p, log_start, hw);

    let mut timestamps = vec![i64::MIN, 0, 1_000, CLOCK_MS, clock_ms, i64::MAX];
    let mut offsets = vec![0, log_start, hw.saturating_sub(1), hw, hw.saturating_add(1)];
    for &(t, o) in probes {
        timestamps.push(t);
        offsets.push(o);
    }
    for t in timestamps {
        if let Ok(Some(o)) = p.offset_for_timestamp(t) {
            let (start, end) = (p.log_start_offset(), p.high_watermark());
            assert!(
                start <= o && o < end,
                "offset_for_timestamp({t}) = {o} outside [{start}, {end})"
            );
        }
    }
    for o in offsets {
        check_read_at(p, o);
    }

    // One known-good batch first, then the fuzzer's.
    let good = small_batch(clock_ms, 0);
    let mut acked = Vec::new();
    for (i, bytes) in std::iter::once(good.as_slice())
        .chain(appends.iter().copied())
        .take(APPENDS_MAX)
        .enumerate()
    {
        let mut batch = bytes.to_vec();
        if i > 0 {
            reseal_whole(&mut batch);
        }
        let before = p.high_watermark();
        let Ok(at) = p.append(&batch) else {
            continue;
        };
        let header = batch::verify(&batch).expect("an accepted batch verifies");
        assert_eq!(
            at.base_offset, before,
            "append lands at the old high watermark"
        );
        assert_eq!(
            at.last_offset,
            at.base_offset + header.last_offset_delta as u64,
            "last offset is base + lastOffsetDelta"
        );
        assert_eq!(
            p.high_watermark(),
            at.last_offset + 1,
            "Always: visible once acked"
        );
        let mut stored = batch;
        batch::set_base_offset(&mut stored, at.base_offset as i64);
        batch::set_partition_leader_epoch(&mut stored, 0);
        acked.push(Acked { at, stored });
    }
    for a in &acked {
        check_acked(p, a, "after append");
    }
    acked
}

/// Reads from `from` to `hw` batch by batch, checking what `read` promises.
fn read_all(p: &Partition, from: u64, hw: u64) {
    let mut next = from;
    for _ in 0..256 {
        if next >= hw {
            break;
        }
        let Ok(got) = p.read(next, 4096) else {
            break;
        };
        assert!(
            !got.batches.is_empty(),
            "read({next}) below the high watermark {hw} returned no batch"
        );
        let mut expected_base = None;
        for b in &got.batches {
            let h = batch::verify(&b.bytes).expect("read returns only verified batches");
            assert_eq!(h.base_offset as u64, b.base_offset, "RawBatch base offset");
            assert_eq!(
                h.last_offset() as u64,
                b.last_offset,
                "RawBatch last offset"
            );
            assert_eq!(h.max_timestamp, b.max_timestamp, "RawBatch max timestamp");
            match expected_base {
                None => assert!(
                    b.base_offset <= next && next <= b.last_offset,
                    "first batch [{}, {}] does not hold requested offset {next}",
                    b.base_offset,
                    b.last_offset
                ),
                Some(e) => assert_eq!(b.base_offset, e, "batches are contiguous"),
            }
            assert!(
                b.last_offset < got.high_watermark,
                "batch ending at {} is above the high watermark {}",
                b.last_offset,
                got.high_watermark
            );
            expected_base = Some(b.last_offset + 1);
        }
        if let Ok(records) = p.read_records(next, 4096) {
            let mut prev = None;
            for r in &records {
                let o = r.offset as u64;
                assert!(o >= next, "read_records({next}) returned offset {o}");
                assert!(prev.is_none_or(|p| o > p), "record offsets increase");
                prev = Some(o);
            }
        }
        next = expected_base.expect("at least one batch");
    }
}

/// A read at an arbitrary offset: either an error, or batches starting with the one holding it.
fn check_read_at(p: &Partition, offset: u64) {
    if let Ok(got) = p.read(offset, 1024)
        && offset < got.high_watermark
        && let Some(first) = got.batches.first()
    {
        assert!(
            first.base_offset <= offset && offset <= first.last_offset,
            "read({offset}) starts with batch [{}, {}]",
            first.base_offset,
            first.last_offset
        );
    }
    let _ = p.read_records(offset, 1024);
}

/// The acknowledged batch `a` reads back byte for byte.
pub fn check_acked(p: &Partition, a: &Acked, when: &str) {
    let got = match p.read(a.at.base_offset, 1 << 20) {
        Ok(got) => got,
        Err(e) => panic!(
            "{when}: acknowledged batch at {} unreadable: {e}",
            a.at.base_offset
        ),
    };
    let first = got.batches.first().unwrap_or_else(|| {
        panic!(
            "{when}: no batch at acknowledged offset {}",
            a.at.base_offset
        )
    });
    assert_eq!(
        (first.base_offset, first.last_offset),
        (a.at.base_offset, a.at.last_offset),
        "{when}: acknowledged batch moved"
    );
    assert!(
        first.bytes == a.stored,
        "{when}: acknowledged batch bytes changed"
    );
}

/// After a reopen: every acknowledged batch is still there, unchanged.
pub fn check_survivors(p: &Partition, acked: &[Acked], when: &str) {
    if let Some(last) = acked.last() {
        assert!(
            p.high_watermark() > last.at.last_offset,
            "{when}: high watermark {} lost acknowledged offset {} (recovery: {:?})",
            p.high_watermark(),
            last.at.last_offset,
            p.recovery()
        );
    }
    for a in acked {
        check_acked(p, a, when);
    }
}

/// Every file under `root` on `disk`, as (path relative to `root`, bytes), sorted by path.
#[must_use]
pub fn snapshot(disk: &SimDisk, root: &Path) -> Vec<(String, Vec<u8>)> {
    disk.files()
        .into_iter()
        .filter_map(|path| {
            let rel = path.strip_prefix(root).ok()?.to_str()?.to_owned();
            let bytes = disk.read_file(&path)?;
            Some((rel, bytes))
        })
        .collect()
}

/// Reseals every file under `root` (see [`reseal_file`]).
pub fn reseal_dir(disk: &SimDisk, root: &Path) {
    for path in disk.files() {
        if !path.starts_with(root) {
            continue;
        }
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(mut content) = disk.read_file(&path) {
            reseal_file(name, &mut content);
            disk.write_raw(&path, &content);
        }
    }
}

/// File names the partition target can address: the usual files of segments 0 and 7, the
/// files of the seeded bases, and names meant to trip the directory listing (a segment at the
/// largest `i64` and `u64` offsets, one too large for `u64`, non-digits, leftovers).
pub const PARTITION_NAMES: &[&str] = &[
    "checkpoint",
    "00000000000000000000.log",
    "00000000000000000000.index",
    "00000000000000000000.timeindex",
    "00000000000000000007.log",
    "00000000000000000007.index",
    "00000000000000000007.timeindex",
    "00000000000000000016.log",
    "00000000000000000016.index",
    "00000000000000000016.timeindex",
    "00000000000000000032.log",
    "00000000000000000032.index",
    "00000000000000000032.timeindex",
    "00000000000000000048.log",
    "00000000000000000048.index",
    "00000000000000000048.timeindex",
    "00000000000000000100.log",
    "00000000000000000100.index",
    "00000000000000000100.timeindex",
    "09223372036854775807.log",
    "18446744073709551615.log",
    "18446744073709551615.index",
    "18446744073709551615.timeindex",
    "99999999999999999999.log",
    "0000000000000000000a.log",
    "00000000000000000007.index.tmp",
    "0000000000000000007.log",
    "checkpoint.tmp",
    "00000000000000000013.log",
    "00000000000000000060.log",
    "00000000000000000064.log",
    "README",
];

/// [`PARTITION_NAMES`] followed by any file of the seeded bases it lacks.
#[must_use]
pub fn partition_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = PARTITION_NAMES.iter().map(|s| (*s).to_owned()).collect();
        for base in partition_bases() {
            for (name, _) in base {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    })
}

/// One directory image: (path relative to its root, bytes).
pub type Image = Vec<(String, Vec<u8>)>;

/// The config the seeded bases are written with: tiny segments, dense indexes.
#[must_use]
pub fn base_config() -> PartitionConfig {
    let mut c = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
    c.segment_bytes_max = 1024;
    c.index_interval_bytes = 128;
    c
}

/// Partition directories written by the real code, for the seeded modes:
/// 0. one segment, cleanly closed;
/// 1. several sealed segments with their index files, cleanly closed;
/// 2. as 1, then retention moved the log start, and more appends were never checkpointed;
/// 3. many one-record batches under `SyncMode::Never`, then a crash that tore unsynced writes.
#[must_use]
pub fn partition_bases() -> &'static [Image] {
    static BASES: OnceLock<Vec<Image>> = OnceLock::new();
    BASES.get_or_init(|| (0..4).map(build_partition_base).collect())
}

fn build_partition_base(variant: usize) -> Image {
    let disk = SimDisk::new();
    let clock = Arc::new(SimClock::new(CLOCK_MS - 3_600_000));
    let dir = Path::new("/b/p");
    let mut cfg = base_config();
    if variant == 2 {
        cfg.retention.bytes_max = Some(2000);
    }
    if variant == 3 {
        // Unsynced appends, so that the crash below has writes to tear.
        cfg.sync = SyncMode::Never;
    }
    let p = Partition::create(disk.clone(), clock.clone(), dir, cfg).expect("create base");
    let append = |bytes: &[u8]| {
        p.append(bytes).expect("append to base");
        // Past the checkpoint interval, so group commits also write checkpoints.
        clock.advance(20);
    };
    let image = match variant {
        0 => {
            append(&mixed_batch(3, CLOCK_MS - 5_000, 0));
            append(&small_batch(CLOCK_MS - 4_000, 1));
            p.close().expect("close base");
            disk
        }
        1 | 2 => {
            for i in 0..14 {
                append(&mixed_batch(4, CLOCK_MS - 100_000 + i as i64 * 1_000, i));
            }
            if variant == 1 {
                p.close().expect("close base");
            } else {
                assert!(
                    p.apply_retention().expect("retention") > 0,
                    "base 2 retained"
                );
                // Without clock movement no checkpoint follows these: a lagging durable point.
                for i in 0..2 {
                    p.append(&small_batch(CLOCK_MS - 50_000 + i, i as u8))
                        .expect("append to base");
                }
            }
            disk
        }
        _ => {
            for i in 0..24 {
                p.append(&small_batch(CLOCK_MS - 10_000 + i * 7, i as u8))
                    .expect("append to base");
            }
            disk.crash_image(Torn::Prefix { seed: 7 })
        }
    };
    drop(p);
    snapshot(&image, dir)
}

/// Writes `image` under `root`.
pub fn restore(disk: &SimDisk, root: &Path, image: &Image) {
    for (name, bytes) in image {
        disk.write_raw(&root.join(name), bytes);
    }
}

/// Paths (relative to the log root) the log target can address. No name is a directory prefix
/// of another.
pub const LOG_NAMES: &[&str] = &[
    "topics/t/meta",
    "topics/t/meta.tmp",
    "topics/t/0/checkpoint",
    "topics/t/0/00000000000000000000.log",
    "topics/t/0/00000000000000000000.index",
    "topics/t/0/00000000000000000000.timeindex",
    "topics/t/0/00000000000000000007.log",
    "topics/t/1/checkpoint",
    "topics/t/1/00000000000000000000.log",
    "topics/t/1/00000000000000000007.log",
    "topics/t/2/checkpoint",
    "topics/t/2/00000000000000000000.log",
    "topics/t/junk",
    "topics/u/meta",
    "topics/u/0/checkpoint",
    "topics/u/0/00000000000000000000.log",
    "topics/bad name/meta",
    "topics/.hidden/meta",
    "topics/x",
    "stray",
];

/// [`LOG_NAMES`] followed by any file of the seeded log bases it lacks.
#[must_use]
pub fn log_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names: Vec<String> = LOG_NAMES.iter().map(|s| (*s).to_owned()).collect();
        for base in log_bases() {
            for (name, _) in base {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    })
}

/// Log roots written by the real code: topic `t` with two partitions and topic `u` with one,
/// 0. cleanly closed; 1. crashed with torn unsynced writes (`u` syncs only on its interval).
#[must_use]
pub fn log_bases() -> &'static [Image] {
    static BASES: OnceLock<Vec<Image>> = OnceLock::new();
    BASES.get_or_init(|| (0..2).map(build_log_base).collect())
}

fn build_log_base(variant: usize) -> Image {
    let disk = SimDisk::new();
    let clock = Arc::new(SimClock::new(CLOCK_MS - 3_600_000));
    let root = Path::new("/b/log");
    make_durable_dir(&disk, root);
    let log = Log::open(root, log_options(&disk, &clock)).expect("open base log");
    let t = log
        .create_topic(
            "t",
            TopicConfig {
                partitions: 2,
                partition: base_config(),
            },
        )
        .expect("create t");
    let mut u_config = base_config();
    u_config.sync = SyncMode::Interval { ms: 50 };
    let u = log
        .create_topic(
            "u",
            TopicConfig {
                partitions: 1,
                partition: u_config,
            },
        )
        .expect("create u");
    for i in 0..6 {
        for p in t.partitions() {
            p.append(&mixed_batch(3, CLOCK_MS - 20_000 + i as i64 * 100, i))
                .expect("append t");
        }
        u.partitions()[0]
            .append(&small_batch(CLOCK_MS - 10_000 + i as i64, i as u8))
            .expect("append u");
        clock.advance(20);
    }
    let image = if variant == 0 {
        log.close().expect("close base log");
        disk
    } else {
        drop(log);
        disk.crash_image(Torn::Prefix { seed: 3 })
    };
    snapshot(&image, root)
}

/// Creates `dir` and makes its entry durable. `Log::open` creates a missing root but syncs only
/// the root itself, not the entry in its parent, so a root made by the log would not survive a
/// simulated crash; the targets give the log a durable root up front.
pub fn make_durable_dir(disk: &SimDisk, dir: &Path) {
    disk.create_dir_all(dir)
        .expect("create a directory on the simulator");
    let mut cur = dir;
    while let Some(parent) = cur.parent() {
        disk.sync_dir(parent)
            .expect("sync a directory on the simulator");
        cur = parent;
    }
}

/// Options for a log on the simulator, without the background thread.
#[must_use]
pub fn log_options(disk: &Arc<SimDisk>, clock: &Arc<SimClock>) -> LogOptions {
    LogOptions {
        storage: disk.clone(),
        clock: clock.clone(),
        background: false,
        retention_check_interval_ms: 60_000,
    }
}
