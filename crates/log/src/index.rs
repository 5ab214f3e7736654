//! Sparse offset and time indexes for one segment. Both are *derived* data.
//!
//! The offset index maps a batch's base offset (relative to the segment) to its byte position;
//! the time index maps the largest timestamp seen so far to the batch where it was reached. An
//! entry is added for the first batch and then whenever `index_interval_bytes` have been
//! written since the last entry, as Kafka does.
//!
//! The active segment's index lives in memory ([`IndexBuilder`]). When a segment is sealed its
//! index is written to `<base>.index` and `<base>.timeindex`, each with a 48-byte checksummed
//! header (`docs/format.md`). Sealed lookups binary-search the file with positional reads, so
//! memory does not grow with the log. A file that is missing, fails its checksum, or disagrees
//! with the segment's length or offsets is rebuilt from the segment; a lookup answer is always
//! re-checked against the batch it points at, so an index can slow a read down but never make
//! it wrong.
//!
//! Limits: positions are `u32` (segments are at most `SEGMENT_BYTES_LIMIT`), and an index holds at
//! most `segment_bytes / index_interval_bytes + 1` entries.

use crate::io::File;
use std::io;

/// Bytes in an index file header.
pub const HEADER_BYTES: usize = 48;
/// Bytes in one offset-index entry: `relative_offset u32 | position u32`.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes in one time-index entry: `timestamp i64 | relative_offset u32`.
pub const TIME_ENTRY_BYTES: usize = 12;

const OFFSET_MAGIC: u32 = 0x4742_5849; // "GBXI"
const TIME_MAGIC: u32 = 0x4742_5854; // "GBXT"
const VERSION: u16 = 1;

/// Which of the two index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<base>.index`
    Offset,
    /// `<base>.timeindex`
    Time,
}

impl Kind {
    fn magic(self) -> u32 {
        match self {
            Kind::Offset => OFFSET_MAGIC,
            Kind::Time => TIME_MAGIC,
        }
    }
    fn entry_bytes(self) -> usize {
        match self {
            Kind::Offset => OFFSET_ENTRY_BYTES,
            Kind::Time => TIME_ENTRY_BYTES,
        }
    }
    /// The file extension, without a dot.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Offset => "index",
            Kind::Time => "timeindex",
        }
    }
}

/// What a sealed index file says about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The segment's base offset.
    pub base_offset: u64,
    /// One past the segment's last offset.
    pub next_offset: u64,
    /// The segment's length in bytes when the index was written.
    pub segment_bytes: u64,
    /// The largest record timestamp in the segment (`i64::MIN` if none).
    pub max_timestamp: i64,
    /// Number of entries that follow the header.
    pub entry_count: u32,
}

/// A `(offset, position)` answer from an offset lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Absolute offset of the batch that starts at `position`.
    pub offset: u64,
    /// Byte position in the segment.
    pub position: u32,
}

/// The in-memory index of a segment being written or scanned.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    base_offset: u64,
    interval_bytes: u32,
    bytes_since_entry: u64,
    max_timestamp: i64,
    offsets: Vec<(u32, u32)>,
    times: Vec<(i64, u32)>,
}

impl IndexBuilder {
    /// An empty index for a segment starting at `base_offset`.
    #[must_use]
    pub fn new(base_offset: u64, interval_bytes: u32) -> Self {
        IndexBuilder {
            base_offset,
            interval_bytes,
            bytes_since_entry: 0,
            max_timestamp: i64::MIN,
            offsets: Vec::new(),
            times: Vec::new(),
        }
    }

    /// Records a batch appended at `position`.
    ///
    /// # Panics
    /// If offsets or positions do not fit the index's `u32` fields: the caller bounds segments by
    /// `SEGMENT_BYTES_LIMIT`, so this is a programmer error.
    pub fn on_batch(&mut self, base_offset: u64, position: u64, len: u64, max_timestamp: i64) {
        let relative =
            u32::try_from(base_offset - self.base_offset).expect("relative offset fits u32");
        let position = u32::try_from(position).expect("segment position fits u32");
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
        if self.offsets.is_empty() || self.bytes_since_entry >= u64::from(self.interval_bytes) {
            self.offsets.push((relative, position));
            if self
                .times
                .last()
                .is_none_or(|&(t, _)| self.max_timestamp > t)
            {
                self.times.push((self.max_timestamp, relative));
            }
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
    }

    /// The largest timestamp seen.
    #[must_use]
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// The last entry at or below `offset`, or the segment start.
    #[must_use]
    pub fn lookup_offset(&self, offset: u64) -> Position {
        let target = offset.saturating_sub(self.base_offset);
        let i = self
            .offsets
            .partition_point(|&(rel, _)| u64::from(rel) <= target);
        match i.checked_sub(1) {
            Some(i) => Position {
                offset: self.base_offset + u64::from(self.offsets[i].0),
                position: self.offsets[i].1,
            },
            None => Position {
                offset: self.base_offset,
                position: 0,
            },
        }
    }

    /// Where to start scanning for the first record with a timestamp at or after `timestamp`.
    #[must_use]
    pub fn lookup_time(&self, timestamp: i64) -> Position {
        let i = self.times.partition_point(|&(t, _)| t < timestamp);
        match i.checked_sub(1) {
            Some(i) => self.lookup_offset(self.base_offset + u64::from(self.times[i].1)),
            None => Position {
                offset: self.base_offset,
                position: 0,
            },
        }
    }

    /// Encodes the index file of `kind` for a sealed segment.
    #[must_use]
    pub fn encode(&self, kind: Kind, next_offset: u64, segment_bytes: u64) -> Vec<u8> {
        let count = match kind {
            Kind::Offset => self.offsets.len(),
            Kind::Time => self.times.len(),
        };
        let mut out = Vec::with_capacity(HEADER_BYTES + count * kind.entry_bytes());
        out.extend_from_slice(&kind.magic().to_be_bytes());
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(kind.entry_bytes() as u16).to_be_bytes());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&next_offset.to_be_bytes());
        out.extend_from_slice(&segment_bytes.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&(u32::try_from(count).expect("entry count fits u32")).to_be_bytes());
        out.extend_from_slice(&[0; 4]); // CRC, filled below
        match kind {
            Kind::Offset => {
                for &(rel, pos) in &self.offsets {
                    out.extend_from_slice(&rel.to_be_bytes());
                    out.extend_from_slice(&pos.to_be_bytes());
                }
            }
            Kind::Time => {
                for &(t, rel) in &self.times {
                    out.extend_from_slice(&t.to_be_bytes());
                    out.extend_from_slice(&rel.to_be_bytes());
                }
            }
        }
        let crc = index_crc(&out);
        out[HEADER_BYTES - 4..HEADER_BYTES].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

fn index_crc(file: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&file[..HEADER_BYTES - 4]);
    crc32c::crc32c_append(crc, &file[HEADER_BYTES..])
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Reads and fully validates a sealed index file: magic, version, checksum over header and
/// entries, and that the header describes the expected segment. Returns `None` when the file
/// must be rebuilt.
///
/// # Errors
/// Only I/O errors other than a short file.
pub fn validate(
    file: &dyn File,
    kind: Kind,
    base_offset: u64,
    segment_bytes: u64,
) -> io::Result<Option<Header>> {
    let len = file.len()?;
    if len < HEADER_BYTES as u64
        || len > (HEADER_BYTES as u64) + (segment_bytes + 1) * kind.entry_bytes() as u64
    {
        return Ok(None);
    }
    let mut bytes = vec![0u8; usize::try_from(len).expect("bounded above")];
    file.read_exact_at(&mut bytes, 0)?;
    let header = Header {
        base_offset: be_u64(&bytes[8..16]),
        next_offset: be_u64(&bytes[16..24]),
        segment_bytes: be_u64(&bytes[24..32]),
        max_timestamp: be_u64(&bytes[32..40]) as i64,
        entry_count: be_u32(&bytes[40..44]),
    };
    let ok = be_u32(&bytes[0..4]) == kind.magic()
        && u16::from_be_bytes([bytes[4], bytes[5]]) == VERSION
        && usize::from(u16::from_be_bytes([bytes[6], bytes[7]])) == kind.entry_bytes()
        && be_u32(&bytes[44..48]) == index_crc(&bytes)
        && header.base_offset == base_offset
        && header.segment_bytes == segment_bytes
        && header.next_offset >= base_offset
        && bytes.len() == HEADER_BYTES + header.entry_count as usize * kind.entry_bytes();
    Ok(ok.then_some(header))
}

fn read_offset_entry(file: &dyn File, i: u32) -> io::Result<(u32, u32)> {
    let mut e = [0u8; OFFSET_ENTRY_BYTES];
    file.read_exact_at(
        &mut e,
        (HEADER_BYTES + i as usize * OFFSET_ENTRY_BYTES) as u64,
    )?;
    Ok((be_u32(&e[0..4]), be_u32(&e[4..8])))
}

fn read_time_entry(file: &dyn File, i: u32) -> io::Result<(i64, u32)> {
    let mut e = [0u8; TIME_ENTRY_BYTES];
    file.read_exact_at(
        &mut e,
        (HEADER_BYTES + i as usize * TIME_ENTRY_BYTES) as u64,
    )?;
    Ok((be_u64(&e[0..8]) as i64, be_u32(&e[8..12])))
}

/// Binary search over a sealed offset index file for the last entry at or below `offset`.
///
/// # Errors
/// Any I/O error, including a file shorter than its header claims.
pub fn lookup_offset_file(file: &dyn File, base_offset: u64, offset: u64) -> io::Result<Position> {
    let count = read_count(file)?;
    let target = offset.saturating_sub(base_offset);
    let (mut lo, mut hi) = (0u32, count); // first index whose relative offset > target
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if u64::from(read_offset_entry(file, mid)?.0) <= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Ok(Position {
            offset: base_offset,
            position: 0,
        });
    }
    let (rel, position) = read_offset_entry(file, lo - 1)?;
    Ok(Position {
        offset: base_offset + u64::from(rel),
        position,
    })
}

/// The relative offset to start a time search from: the last time entry below `timestamp`.
///
/// # Errors
/// Any I/O error.
pub fn lookup_time_file(file: &dyn File, base_offset: u64, timestamp: i64) -> io::Result<u64> {
    let count = read_count(file)?;
    let (mut lo, mut hi) = (0u32, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if read_time_entry(file, mid)?.0 < timestamp {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Ok(base_offset);
    }
    Ok(base_offset + u64::from(read_time_entry(file, lo - 1)?.1))
}

fn read_count(file: &dyn File) -> io::Result<u32> {
    let mut h = [0u8; 4];
    file.read_exact_at(&mut h, 40)?;
    Ok(be_u32(&h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Storage;
    use crate::io::sim::SimDisk;
    use std::path::Path;

    fn built() -> IndexBuilder {
        let mut b = IndexBuilder::new(100, 100);
        // Batches of 60 bytes with 5 records each; timestamps rise then dip.
        let ts = [10, 20, 15, 40, 40, 50, 45, 60];
        for (i, t) in ts.iter().enumerate() {
            b.on_batch(100 + 5 * i as u64, 60 * i as u64, 60, *t);
        }
        b
    }

    #[test]
    fn memory_and_file_lookups_agree() {
        let b = built();
        let disk = SimDisk::new();
        let f = disk.open(Path::new("/x.index"), true).unwrap();
        let bytes = b.encode(Kind::Offset, 140, 480);
        f.write_all_at(&bytes, 0).unwrap();
        let t = disk.open(Path::new("/x.timeindex"), true).unwrap();
        t.write_all_at(&b.encode(Kind::Time, 140, 480), 0).unwrap();
        assert!(validate(&*f, Kind::Offset, 100, 480).unwrap().is_some());
        assert!(validate(&*t, Kind::Time, 100, 480).unwrap().is_some());
        assert!(
            validate(&*f, Kind::Offset, 100, 481).unwrap().is_none(),
            "length mismatch must invalidate"
        );
        for offset in 90..150 {
            assert_eq!(
                b.lookup_offset(offset),
                lookup_offset_file(&*f, 100, offset).unwrap(),
                "offset {offset}"
            );
        }
        for ts in 0..70 {
            let mem = b.lookup_time(ts);
            let rel = lookup_time_file(&*t, 100, ts).unwrap();
            assert_eq!(mem, lookup_offset_file(&*f, 100, rel).unwrap(), "ts {ts}");
            assert!(mem.offset <= 100 || b.times.iter().any(|&(t, _)| t < ts));
        }
    }

    #[test]
    fn every_bit_flip_invalidates_the_file() {
        let b = built();
        let bytes = b.encode(Kind::Offset, 140, 480);
        let disk = SimDisk::new();
        let f = disk.open(Path::new("/x.index"), true).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            f.set_len(0).unwrap();
            f.write_all_at(&bad, 0).unwrap();
            assert!(
                validate(&*f, Kind::Offset, 100, 480).unwrap().is_none(),
                "bit {bit}"
            );
        }
    }
}
