//! Kafka RecordBatch v2 (magic 2): the unit Gearbox stores on disk and ships over the wire.
//!
//! This module encodes uncompressed batches ([`BatchBuilder`]), checks them ([`BatchHeader::parse`],
//! [`verify`]) and decodes their records ([`decode`]). The bytes are identical to what Apache Kafka
//! writes, so a segment file is a plain concatenation of Kafka batches.
//!
//! # Byte layout
//!
//! All fixed-width integers are big-endian. The header is [`BATCH_HEADER_BYTES`] (61) bytes:
//!
//! ```text
//! offset  field                 type
//!      0  baseOffset            int64
//!      8  batchLength           int32   bytes after this field (total length - 12)
//!     12  partitionLeaderEpoch  int32
//!     16  magic                 int8    always 2
//!     17  crc                   uint32  CRC-32C (Castagnoli) over bytes [21, end)
//!     21  attributes            int16   bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control
//!     23  lastOffsetDelta       int32
//!     27  baseTimestamp         int64
//!     35  maxTimestamp          int64
//!     43  producerId            int64
//!     51  producerEpoch         int16
//!     53  baseSequence          int32
//!     57  recordsCount          int32
//!     61  records ...
//! ```
//!
//! Each record uses zigzag LEB128 varints (varint = 32-bit, varlong = 64-bit):
//!
//! ```text
//! length varint            bytes of the record after this field
//! attributes int8          unused, written as 0
//! timestampDelta varlong   relative to baseTimestamp
//! offsetDelta varint       equal to the record's index in the batch
//! keyLength varint, key    -1 means a null key
//! valueLength varint, value  -1 means a null value
//! headersCount varint
//!   headerKeyLength varint, headerKey (UTF-8, never null)
//!   headerValueLength varint, headerValue  -1 means a null value
//! ```
//!
//! # Invariants
//!
//! * `baseOffset` and `partitionLeaderEpoch` sit before the CRC-covered range, so the log can
//!   assign them ([`set_base_offset`], [`set_partition_leader_epoch`]) without re-checksumming.
//! * Everything from `attributes` to the end is covered by the CRC; [`verify`] checks it, and
//!   [`decode`] always calls [`verify`] first, so decoded records come from checksummed bytes.
//! * A decoded batch holds exactly `recordsCount` records whose offset deltas are `0, 1, 2, ...`,
//!   the last one equals `lastOffsetDelta`, and no bytes follow the last record. This is the
//!   shape Kafka's broker demands from producers; compacted batches with offset gaps are rejected.
//!
//! # Limits
//!
//! * Compressed batches (codec != 0) are recognised but not decoded: [`BatchError::Compressed`].
//! * At most [`RECORDS_PER_BATCH_MAX`] records per batch, in both directions, so that a corrupt
//!   count cannot make the decoder do unbounded work.
//! * A batch is at most `12 + i32::MAX` bytes because `batchLength` is an `int32`.
//! * The decoder never panics on arbitrary input and never reserves memory for an element count
//!   it has not seen backed by bytes in the slice; it is meant to be fuzzed.

use std::borrow::Cow;
use thiserror::Error;

/// Size of the fixed batch header, including `recordsCount`.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The only batch format version this module understands.
pub const MAGIC_V2: i8 = 2;
/// Bytes before and including `batchLength` (Kafka's `LOG_OVERHEAD`); they are not counted in it.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - LOG_OVERHEAD) as i32;
/// Decoder sanity bound on `recordsCount`; the builder refuses to exceed it too.
pub const RECORDS_PER_BATCH_MAX: usize = 1 << 20;

/// Byte position of `baseOffset`.
pub const BASE_OFFSET_POS: usize = 0;
/// Byte position of `batchLength`.
pub const BATCH_LENGTH_POS: usize = 8;
/// Byte position of `partitionLeaderEpoch`.
pub const LEADER_EPOCH_POS: usize = 12;
/// Byte position of `magic`.
pub const MAGIC_POS: usize = 16;
/// Byte position of `crc`.
pub const CRC_POS: usize = 17;
/// Byte position of `attributes`; the CRC covers everything from here to the end of the batch.
pub const ATTRIBUTES_POS: usize = 21;
/// Byte position of `lastOffsetDelta`.
pub const LAST_OFFSET_DELTA_POS: usize = 23;
/// Byte position of `baseTimestamp`.
pub const BASE_TIMESTAMP_POS: usize = 27;
/// Byte position of `maxTimestamp`.
pub const MAX_TIMESTAMP_POS: usize = 35;
/// Byte position of `producerId`.
pub const PRODUCER_ID_POS: usize = 43;
/// Byte position of `producerEpoch`.
pub const PRODUCER_EPOCH_POS: usize = 51;
/// Byte position of `baseSequence`.
pub const BASE_SEQUENCE_POS: usize = 53;
/// Byte position of `recordsCount`.
pub const RECORDS_COUNT_POS: usize = 57;
/// Byte position of the first record.
pub const RECORDS_POS: usize = BATCH_HEADER_BYTES;

/// Attribute bits 0-2: compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
pub const COMPRESSION_CODEC_MASK: i16 = 0x07;
/// Attribute bit 3: set for LogAppendTime, clear for CreateTime.
pub const TIMESTAMP_TYPE_MASK: i16 = 0x08;
/// Attribute bit 4: the batch belongs to a transaction.
pub const TRANSACTIONAL_FLAG_MASK: i16 = 0x10;
/// Attribute bit 5: the batch holds control records (transaction markers).
pub const CONTROL_FLAG_MASK: i16 = 0x20;

// The header positions are hand-written; these checks keep them consistent with each other.
const _: () = assert!(RECORDS_COUNT_POS + 4 == BATCH_HEADER_BYTES);
const _: () = assert!(BATCH_LENGTH_POS + 4 == LOG_OVERHEAD);
const _: () = assert!(CRC_POS + 4 == ATTRIBUTES_POS);

/// The smallest possible encoded record: a one-byte length plus six one-byte fields. Used to cap
/// allocations by what the remaining bytes could possibly hold.
const MIN_RECORD_BYTES: usize = 7;
/// The smallest possible encoded header: two one-byte lengths.
const MIN_HEADER_BYTES: usize = 2;
/// Maximum encoded size of a 32-bit varint.
const VARINT_MAX_BYTES: u32 = 5;
/// Maximum encoded size of a 64-bit varlong.
const VARLONG_MAX_BYTES: u32 = 10;

/// Everything that can go wrong while checking, decoding or building a batch.
///
/// Positions are byte offsets from the start of the batch slice, so a message can be matched
/// against a hex dump directly.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a header needs.
    #[error("batch too short: need {needed} bytes, got {got}")]
    TooShort {
        /// Bytes required.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The magic byte is not 2.
    #[error("unsupported batch magic {found} at byte 16 (expected 2)")]
    BadMagic {
        /// The magic byte found.
        found: i8,
    },
    /// A length or count field holds a value that is out of range or points past the data.
    #[error("invalid {field} {value} at byte {position}")]
    BadLength {
        /// Name of the offending field.
        field: &'static str,
        /// The value read (widened so that every field fits).
        value: i64,
        /// Byte position where the field starts.
        position: usize,
    },
    /// The slice is not exactly as long as the header says.
    #[error("batch length mismatch: header says {header} bytes, slice has {actual}")]
    LengthMismatch {
        /// `12 + batchLength` from the header.
        header: usize,
        /// Length of the slice given.
        actual: usize,
    },
    /// The stored CRC does not match the bytes.
    #[error("CRC-32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over bytes `[21, end)`.
        computed: u32,
    },
    /// The batch is compressed, which this module does not decode.
    #[error("compressed batches are not supported (codec {codec})")]
    Compressed {
        /// The compression codec from the attributes (bits 0-2).
        codec: u8,
    },
    /// A record is malformed.
    #[error("record {index} at byte {position}: {reason}")]
    Record {
        /// Index of the record within the batch.
        index: usize,
        /// Byte position of the offending field.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// [`BatchBuilder::build`] was called with no records.
    #[error("cannot build a batch with no records")]
    Empty,
    /// [`BatchBuilder::build`] would exceed a format limit.
    #[error("{field} {value} exceeds the limit of {max}")]
    TooLarge {
        /// What is too large.
        field: &'static str,
        /// Its size.
        value: usize,
        /// The limit.
        max: usize,
    },
}

/// The fixed 61-byte header of a v2 batch, field for field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record; assigned by the log.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch at append time; assigned by the log.
    pub partition_leader_epoch: i32,
    /// Format version, always [`MAGIC_V2`] after a successful parse.
    pub magic: i8,
    /// Stored CRC-32C over bytes `[21, end)`.
    pub crc: u32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: i16,
    /// Offset delta of the last record.
    pub last_offset_delta: i32,
    /// Timestamp of the first record; record timestamps are deltas from it.
    pub base_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the first 61 bytes of `bytes`. Does not check the CRC (see [`verify`]).
    ///
    /// # Errors
    ///
    /// * [`BatchError::TooShort`] if `bytes` is shorter than [`BATCH_HEADER_BYTES`].
    /// * [`BatchError::BadMagic`] if the magic byte is not [`MAGIC_V2`].
    /// * [`BatchError::BadLength`] if `batchLength < 49`, `lastOffsetDelta < 0`, or
    ///   `recordsCount` is negative or above [`RECORDS_PER_BATCH_MAX`].
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        let Some(h) = bytes.first_chunk::<BATCH_HEADER_BYTES>() else {
            return Err(BatchError::TooShort {
                needed: BATCH_HEADER_BYTES,
                got: bytes.len(),
            });
        };
        // The magic decides how the rest is laid out, so it is checked before anything else.
        let magic = i8::from_be_bytes(field(h, MAGIC_POS));
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic { found: magic });
        }
        let header = BatchHeader {
            base_offset: i64::from_be_bytes(field(h, BASE_OFFSET_POS)),
            batch_length: i32::from_be_bytes(field(h, BATCH_LENGTH_POS)),
            partition_leader_epoch: i32::from_be_bytes(field(h, LEADER_EPOCH_POS)),
            magic,
            crc: u32::from_be_bytes(field(h, CRC_POS)),
            attributes: i16::from_be_bytes(field(h, ATTRIBUTES_POS)),
            last_offset_delta: i32::from_be_bytes(field(h, LAST_OFFSET_DELTA_POS)),
            base_timestamp: i64::from_be_bytes(field(h, BASE_TIMESTAMP_POS)),
            max_timestamp: i64::from_be_bytes(field(h, MAX_TIMESTAMP_POS)),
            producer_id: i64::from_be_bytes(field(h, PRODUCER_ID_POS)),
            producer_epoch: i16::from_be_bytes(field(h, PRODUCER_EPOCH_POS)),
            base_sequence: i32::from_be_bytes(field(h, BASE_SEQUENCE_POS)),
            records_count: i32::from_be_bytes(field(h, RECORDS_COUNT_POS)),
        };
        if header.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::BadLength {
                field: "batchLength",
                value: header.batch_length.into(),
                position: BATCH_LENGTH_POS,
            });
        }
        if header.last_offset_delta < 0 {
            return Err(BatchError::BadLength {
                field: "lastOffsetDelta",
                value: header.last_offset_delta.into(),
                position: LAST_OFFSET_DELTA_POS,
            });
        }
        let count_ok =
            usize::try_from(header.records_count).is_ok_and(|count| count <= RECORDS_PER_BATCH_MAX);
        if !count_ok {
            return Err(BatchError::BadLength {
                field: "recordsCount",
                value: header.records_count.into(),
                position: RECORDS_COUNT_POS,
            });
        }
        Ok(header)
    }

    /// Total size of the batch in bytes: `12 + batch_length`.
    ///
    /// A parsed header always has `batch_length >= 49`; a negative length, possible only in a
    /// hand-built header, counts as zero rather than wrapping to a huge size.
    #[must_use]
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD.saturating_add(usize::try_from(self.batch_length).unwrap_or(0))
    }

    /// Compression codec from attribute bits 0-2 (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    #[must_use]
    pub fn compression(&self) -> u8 {
        // The mask keeps only three bits, so the value always fits in a `u8`.
        (self.attributes & COMPRESSION_CODEC_MASK) as u8
    }

    /// Offset of the last record: `base_offset + last_offset_delta`.
    ///
    /// Wraps on overflow, as Kafka's Java arithmetic does, so that a corrupt header can never
    /// cause a panic here.
    #[must_use]
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .wrapping_add(i64::from(self.last_offset_delta))
    }

    /// Whether record timestamps are LogAppendTime (attribute bit 3) rather than CreateTime.
    #[must_use]
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_MASK != 0
    }

    /// Whether the batch is part of a transaction (attribute bit 4).
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG_MASK != 0
    }

    /// Whether the batch holds control records (attribute bit 5).
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG_MASK != 0
    }

    /// Appends the 61 header bytes, in wire order, to `out`.
    fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&self.batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.extend_from_slice(&self.magic.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
        out.extend_from_slice(&self.attributes.to_be_bytes());
        out.extend_from_slice(&self.last_offset_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.records_count.to_be_bytes());
    }
}

/// Copies `N` bytes at `pos` out of a header.
///
/// Only called with the `*_POS` constants, whose ranges all lie inside the 61 bytes (checked by the
/// const assertions above), so the slice index cannot fail.
fn field<const N: usize>(header: &[u8; BATCH_HEADER_BYTES], pos: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&header[pos..pos + N]);
    out
}

/// Checks one complete batch: header, exact length and CRC-32C. Returns the parsed header.
///
/// # Errors
///
/// * Any error of [`BatchHeader::parse`].
/// * [`BatchError::LengthMismatch`] if `batch.len()` differs from the header's total length.
/// * [`BatchError::CrcMismatch`] if the CRC over bytes `[21, end)` differs from the stored one.
pub fn verify(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    let expected = header.total_len();
    if batch.len() != expected {
        return Err(BatchError::LengthMismatch {
            header: expected,
            actual: batch.len(),
        });
    }
    // `parse` succeeded, so the slice is at least 61 bytes long and this range is in bounds.
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_POS..]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Overwrites `baseOffset`. The field is outside the CRC range, so the batch stays valid.
///
/// # Panics
///
/// If `batch` is shorter than a header; callers only pass batches they have verified or built.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "set_base_offset on a {}-byte slice, shorter than a batch header",
        batch.len()
    );
    batch[BASE_OFFSET_POS..BASE_OFFSET_POS + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Overwrites `partitionLeaderEpoch`. The field is outside the CRC range, so the batch stays
/// valid.
///
/// # Panics
///
/// If `batch` is shorter than a header; callers only pass batches they have verified or built.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert!(
        batch.len() >= BATCH_HEADER_BYTES,
        "set_partition_leader_epoch on a {}-byte slice, shorter than a batch header",
        batch.len()
    );
    batch[LEADER_EPOCH_POS..LEADER_EPOCH_POS + 4].copy_from_slice(&epoch.to_be_bytes());
}

/// A record header: a UTF-8 key and an optional byte value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header key; Kafka does not allow null keys. A `Cow` because the keys a producer writes are
    /// mostly fixed names (`ce_id`, `content-type`, ...): encoding a record then allocates nothing
    /// for them. Decoded keys are owned.
    pub key: Cow<'static, str>,
    /// Header value; `None` is encoded as length -1.
    pub value: Option<Vec<u8>>,
}

/// A record to encode with [`BatchBuilder`]. Its offset is implied by its position in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordInput {
    /// CreateTime timestamp in milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Record key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<RecordHeader>,
}

/// A decoded record with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `baseOffset + offsetDelta`.
    pub offset: i64,
    /// `baseTimestamp + timestampDelta`, or the batch's `maxTimestamp` for LogAppendTime batches.
    pub timestamp: i64,
    /// Record key; `None` is a null key.
    pub key: Option<Vec<u8>>,
    /// Record value; `None` is a null value.
    pub value: Option<Vec<u8>>,
    /// Record headers, in order.
    pub headers: Vec<RecordHeader>,
}

/// Idempotent-producer fields, kept together so that "not set" is a single `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProducerFields {
    id: i64,
    epoch: i16,
    base_sequence: i32,
}

/// Builds an uncompressed v2 batch.
///
/// The batch gets base offset 0 and leader epoch 0 (the log assigns the real ones with
/// [`set_base_offset`] and [`set_partition_leader_epoch`]), CreateTime timestamps, and producer
/// id, epoch and base sequence of -1 unless [`BatchBuilder::producer`] sets them.
#[derive(Debug, Default, Clone)]
pub struct BatchBuilder {
    records: Vec<RecordInput>,
    producer: Option<ProducerFields>,
    /// Encoded size of all records so far, length prefixes included. Kept up to date in `push` so
    /// that `encoded_len` is O(1) for callers that check the size after every record.
    records_bytes: usize,
}

impl BatchBuilder {
    /// An empty builder.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the idempotent-producer fields.
    #[must_use]
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer = Some(ProducerFields {
            id: producer_id,
            epoch: producer_epoch,
            base_sequence,
        });
        self
    }

    /// Appends a record; it gets the next offset delta.
    pub fn push(&mut self, record: RecordInput) -> &mut Self {
        // The first record's timestamp is the batch's base timestamp, so the delta (and thus the
        // encoded size) of every record is fixed once it is pushed.
        let base_timestamp = self
            .records
            .first()
            .map_or(record.timestamp, |r| r.timestamp);
        let size = record_encoded_len(
            &record,
            record.timestamp.wrapping_sub(base_timestamp),
            self.records.len(),
        );
        self.records_bytes = self.records_bytes.saturating_add(size);
        self.records.push(record);
        self
    }

    /// Number of records pushed so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no records have been pushed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Exact size in bytes of the batch [`BatchBuilder::build`] would produce now.
    ///
    /// Saturates at `usize::MAX` instead of overflowing; such a batch fails to build anyway.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_BYTES.saturating_add(self.records_bytes)
    }

    /// Encodes the records into a batch and computes its CRC.
    ///
    /// `baseTimestamp` is the first record's timestamp (as in Kafka), `maxTimestamp` the largest
    /// one, and each record stores its timestamp as a delta from the base, which may be negative.
    ///
    /// # Errors
    ///
    /// * [`BatchError::Empty`] if no records were pushed.
    /// * [`BatchError::TooLarge`] if there are more than [`RECORDS_PER_BATCH_MAX`] records or the
    ///   batch would not fit the `int32` `batchLength` field.
    pub fn build(&self) -> Result<Vec<u8>, BatchError> {
        let Some(first) = self.records.first() else {
            return Err(BatchError::Empty);
        };
        let count = self.records.len();
        if count > RECORDS_PER_BATCH_MAX {
            return Err(BatchError::TooLarge {
                field: "record count",
                value: count,
                max: RECORDS_PER_BATCH_MAX,
            });
        }
        let total = self.encoded_len();
        // Every inner length is smaller than the batch length, so once this fits in an `i32`,
        // every length and count written below fits as well.
        let batch_length = to_i32(total - LOG_OVERHEAD, "batch length")?;
        let base_timestamp = first.timestamp;
        let max_timestamp = self
            .records
            .iter()
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(base_timestamp);
        let producer = self.producer.unwrap_or(ProducerFields {
            id: -1,
            epoch: -1,
            base_sequence: -1,
        });
        let header = BatchHeader {
            base_offset: 0,
            batch_length,
            partition_leader_epoch: 0,
            magic: MAGIC_V2,
            crc: 0,
            attributes: 0,
            last_offset_delta: to_i32(count - 1, "record count")?,
            base_timestamp,
            max_timestamp,
            producer_id: producer.id,
            producer_epoch: producer.epoch,
            base_sequence: producer.base_sequence,
            records_count: to_i32(count, "record count")?,
        };

        let mut out = Vec::with_capacity(total);
        header.write_to(&mut out);
        for (index, record) in self.records.iter().enumerate() {
            let delta = record.timestamp.wrapping_sub(base_timestamp);
            write_record(&mut out, record, delta, index)?;
        }
        debug_assert_eq!(out.len(), total, "encoded_len disagrees with the encoder");

        let crc = crc32c::crc32c(&out[ATTRIBUTES_POS..]);
        out[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

/// Converts a size to the `int32` the wire format stores, or reports it as too large.
fn to_i32(value: usize, field: &'static str) -> Result<i32, BatchError> {
    i32::try_from(value).map_err(|_| BatchError::TooLarge {
        field,
        value,
        max: i32::MAX as usize,
    })
}

/// Zigzag-encoded size of a non-negative length, or of -1 for `None`.
///
/// Computed in `u64` so that lengths beyond `i32::MAX` still give a sensible (if unbuildable)
/// size instead of overflowing; `build` rejects those batches.
fn length_field_len(len: Option<usize>) -> usize {
    match len {
        None => 1,
        Some(n) => unsigned_varint_len(u64::try_from(n).unwrap_or(u64::MAX).saturating_mul(2)),
    }
}

/// Bytes of an optional byte string: its length field plus its contents.
fn nullable_len(bytes: Option<&[u8]>) -> usize {
    let n = bytes.map(<[u8]>::len);
    length_field_len(n).saturating_add(n.unwrap_or(0))
}

/// Encoded size of a record after its length varint, i.e. the value of that varint.
fn record_body_len(record: &RecordInput, timestamp_delta: i64, index: usize) -> usize {
    let mut body = 1 // attributes
        + unsigned_varint_len(zigzag64(timestamp_delta))
        + length_field_len(Some(index))
        + length_field_len(Some(record.headers.len()));
    body = body
        .saturating_add(nullable_len(record.key.as_deref()))
        .saturating_add(nullable_len(record.value.as_deref()));
    for header in &record.headers {
        body = body
            .saturating_add(nullable_len(Some(header.key.as_bytes())))
            .saturating_add(nullable_len(header.value.as_deref()));
    }
    body
}

/// Encoded size of a record, including its leading length varint.
fn record_encoded_len(record: &RecordInput, timestamp_delta: i64, index: usize) -> usize {
    let body = record_body_len(record, timestamp_delta, index);
    length_field_len(Some(body)).saturating_add(body)
}

/// Appends one record, length prefix first.
fn write_record(
    out: &mut Vec<u8>,
    record: &RecordInput,
    timestamp_delta: i64,
    index: usize,
) -> Result<(), BatchError> {
    let body = record_body_len(record, timestamp_delta, index);
    let start = out.len();
    put_varint(out, to_i32(body, "record length")?);
    out.push(0); // Record attributes are unused in v2 and always written as 0.
    put_varlong(out, timestamp_delta);
    put_varint(out, to_i32(index, "record count")?);
    put_nullable(out, record.key.as_deref(), "key length")?;
    put_nullable(out, record.value.as_deref(), "value length")?;
    put_varint(out, to_i32(record.headers.len(), "headers count")?);
    for header in &record.headers {
        put_nullable(out, Some(header.key.as_bytes()), "header key length")?;
        put_nullable(out, header.value.as_deref(), "header value length")?;
    }
    debug_assert_eq!(
        out.len() - start,
        record_encoded_len(record, timestamp_delta, index),
        "record size disagrees with the encoder"
    );
    Ok(())
}

/// Appends a length-prefixed byte string, writing -1 for `None`.
fn put_nullable(
    out: &mut Vec<u8>,
    bytes: Option<&[u8]>,
    field: &'static str,
) -> Result<(), BatchError> {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, to_i32(b.len(), field)?);
            out.extend_from_slice(b);
        }
    }
    Ok(())
}

/// Zigzag-maps a signed 32-bit value so that small magnitudes encode in few bytes.
fn zigzag32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

/// Zigzag-maps a signed 64-bit value so that small magnitudes encode in few bytes.
fn zigzag64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverse of [`zigzag32`].
fn unzigzag32(raw: u32) -> i32 {
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

/// Inverse of [`zigzag64`].
fn unzigzag64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

/// Number of LEB128 bytes needed for `value` (7 bits per byte, at least one byte).
fn unsigned_varint_len(value: u64) -> usize {
    let bits = 64 - value.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Appends an unsigned LEB128 value: low 7 bits first, high bit set on all but the last byte.
fn put_unsigned_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a zigzag varint, as Kafka's `ByteUtils.writeVarint`.
fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned_varint(out, zigzag32(value).into());
}

/// Appends a zigzag varlong, as Kafka's `ByteUtils.writeVarlong`.
fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned_varint(out, zigzag64(value));
}

/// Decodes every record of one batch.
///
/// Calls [`verify`] first, so the records come from checksummed bytes. For LogAppendTime batches
/// each record's timestamp is the batch's `maxTimestamp`, as in Kafka. Record attributes are read
/// and ignored, as Kafka does, because v2 defines no record-level attribute bits.
///
/// # Errors
///
/// * Any error of [`verify`].
/// * [`BatchError::Compressed`] if the batch's codec is not 0.
/// * [`BatchError::BadLength`] if a record, key, value, header or header-count length is
///   negative (other than -1 where null is allowed) or reaches past the record or batch.
/// * [`BatchError::Record`] for a truncated or overlong varint, an offset delta that is not the
///   record's index, a last offset delta that differs from the header, a non-UTF-8 header key,
///   a record whose length field disagrees with its contents, fewer records than
///   `recordsCount`, or bytes after the last record.
pub fn decode(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
    let header = verify(batch)?;
    let codec = header.compression();
    if codec != 0 {
        return Err(BatchError::Compressed { codec });
    }
    // `parse` has already rejected negative counts; the conversion just states it in types.
    let count = usize::try_from(header.records_count).map_err(|_| BatchError::BadLength {
        field: "recordsCount",
        value: header.records_count.into(),
        position: RECORDS_COUNT_POS,
    })?;
    // The count is untrusted even after the CRC check (a buggy writer can checksum nonsense), so
    // reserve no more records than the remaining bytes could possibly hold.
    let capacity = count.min((batch.len() - RECORDS_POS) / MIN_RECORD_BYTES);
    let mut records = Vec::with_capacity(capacity);
    let mut reader = Reader {
        bytes: batch,
        pos: RECORDS_POS,
        index: 0,
    };
    for index in 0..count {
        reader.index = index;
        if reader.remaining() == 0 {
            return Err(reader.fail(reader.pos, "batch ends before recordsCount records"));
        }
        let is_last = index + 1 == count;
        records.push(decode_record(&mut reader, &header, is_last)?);
    }
    if reader.remaining() != 0 {
        return Err(BatchError::Record {
            index: count,
            position: reader.pos,
            reason: "trailing bytes after the last record",
        });
    }
    Ok(records)
}

/// Decodes the record at `reader.pos` and advances past it.
fn decode_record(
    reader: &mut Reader<'_>,
    header: &BatchHeader,
    is_last: bool,
) -> Result<Record, BatchError> {
    let length_pos = reader.pos;
    let length = reader.varint()?;
    let body_len = usize::try_from(length)
        .ok()
        .filter(|&n| n <= reader.remaining())
        .ok_or(BatchError::BadLength {
            field: "record length",
            value: length.into(),
            position: length_pos,
        })?;
    let body_end = reader.pos + body_len;
    // A sub-reader that ends where this record ends, so that no field can spill into the next
    // record; positions stay absolute because the slice still starts at the batch's first byte.
    let mut body = Reader {
        bytes: &reader.bytes[..body_end],
        pos: reader.pos,
        index: reader.index,
    };

    let _attributes = body.byte()?;
    let timestamp_delta = body.varlong()?;
    let offset_delta_pos = body.pos;
    let offset_delta = body.varint()?;
    if usize::try_from(offset_delta).ok() != Some(body.index) {
        return Err(body.fail(offset_delta_pos, "offset delta does not match record index"));
    }
    if is_last && offset_delta != header.last_offset_delta {
        return Err(body.fail(
            offset_delta_pos,
            "last record's offset delta does not match lastOffsetDelta",
        ));
    }
    let key = body.nullable_bytes("key length")?.map(<[u8]>::to_vec);
    let value = body.nullable_bytes("value length")?.map(<[u8]>::to_vec);

    let count_pos = body.pos;
    let header_count = body.varint()?;
    let header_count = usize::try_from(header_count).map_err(|_| BatchError::BadLength {
        field: "headers count",
        value: header_count.into(),
        position: count_pos,
    })?;
    let mut headers = Vec::with_capacity(header_count.min(body.remaining() / MIN_HEADER_BYTES));
    for _ in 0..header_count {
        let key_pos = body.pos;
        // Kafka rejects null header keys, so -1 is a bad length here rather than `None`.
        let Some(key_bytes) = body.nullable_bytes("header key length")? else {
            return Err(BatchError::BadLength {
                field: "header key length",
                value: -1,
                position: key_pos,
            });
        };
        let key = std::str::from_utf8(key_bytes)
            .map_err(|_| body.fail(key_pos, "header key is not valid UTF-8"))?
            .to_owned()
            .into();
        let value = body
            .nullable_bytes("header value length")?
            .map(<[u8]>::to_vec);
        headers.push(RecordHeader { key, value });
    }
    if body.pos != body_end {
        return Err(body.fail(length_pos, "record length does not match its contents"));
    }
    reader.pos = body_end;

    let timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        // Wrapping mirrors the encoder's wrapping subtraction, so every i64 timestamp round-trips.
        header.base_timestamp.wrapping_add(timestamp_delta)
    };
    Ok(Record {
        offset: header.base_offset.wrapping_add(i64::from(offset_delta)),
        timestamp,
        key,
        value,
        headers,
    })
}

/// A bounds-checked cursor over batch bytes. `pos` is absolute within the batch so that errors
/// can name the byte; `bytes` may be cut short to confine reads to one record.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Index of the record being read, for error messages.
    index: usize,
}

impl<'a> Reader<'a> {
    /// Bytes left before the end of the readable range.
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// A [`BatchError::Record`] for the current record.
    fn fail(&self, position: usize, reason: &'static str) -> BatchError {
        BatchError::Record {
            index: self.index,
            position,
            reason,
        }
    }

    /// Reads one byte.
    fn byte(&mut self) -> Result<u8, BatchError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.fail(self.pos, "truncated record attributes"))?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads an unsigned LEB128 value of at most `max_bytes` bytes whose value must fit in `bits`.
    ///
    /// Kafka gives up after 5 (varint) or 10 (varlong) bytes; we do the same, and additionally
    /// reject set bits beyond the target width in the final byte, which Kafka would silently
    /// drop, because no correct encoder produces them.
    fn unsigned_varint(
        &mut self,
        max_bytes: u32,
        bits: u32,
        truncated: &'static str,
        overlong: &'static str,
    ) -> Result<u64, BatchError> {
        let start = self.pos;
        let mut value = 0u64;
        for i in 0..max_bytes {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.fail(start, truncated));
            };
            self.pos += 1;
            if i + 1 == max_bytes && b & 0x80 != 0 {
                return Err(self.fail(start, overlong));
            }
            let shift = 7 * i;
            let payload = u64::from(b & 0x7f);
            if shift + 7 > bits && payload >> (bits - shift) != 0 {
                return Err(self.fail(start, "varint value out of range"));
            }
            value |= payload << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        // Unreachable: the last iteration either returns a value or reports an overlong varint.
        Err(self.fail(start, overlong))
    }

    /// Reads a zigzag varint (at most 5 bytes).
    fn varint(&mut self) -> Result<i32, BatchError> {
        let raw =
            self.unsigned_varint(VARINT_MAX_BYTES, 32, "truncated varint", "overlong varint")?;
        // The range check above guarantees `raw` fits in 32 bits.
        Ok(unzigzag32(raw as u32))
    }

    /// Reads a zigzag varlong (at most 10 bytes).
    fn varlong(&mut self) -> Result<i64, BatchError> {
        let raw = self.unsigned_varint(
            VARLONG_MAX_BYTES,
            64,
            "truncated varlong",
            "overlong varlong",
        )?;
        Ok(unzigzag64(raw))
    }

    /// Reads a varint length and that many bytes; -1 means `None`.
    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<&'a [u8]>, BatchError> {
        let position = self.pos;
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        // A negative length, an overflowing end, or an end past the readable range all mean the
        // bytes are not there; none of them may reach an allocation or a slice index.
        let Some((bytes, end)) = usize::try_from(len)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| Some((self.bytes.get(self.pos..end)?, end)))
        else {
            return Err(BatchError::BadLength {
                field,
                value: len.into(),
                position,
            });
        };
        self.pos = end;
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recomputes `batchLength` and the CRC after a test has edited the bytes, so that the edit
    /// reaches the record decoder instead of being caught by `verify`.
    fn reseal(batch: &mut [u8]) {
        let len = i32::try_from(batch.len() - LOG_OVERHEAD).unwrap();
        batch[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_POS..]);
        batch[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// A sealed batch with the given header counts and raw record bytes.
    fn craft(records_count: i32, last_offset_delta: i32, records: &[u8]) -> Vec<u8> {
        let header = BatchHeader {
            base_offset: 0,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: MAGIC_V2,
            crc: 0,
            attributes: 0,
            last_offset_delta,
            base_timestamp: 1000,
            max_timestamp: 1000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count,
        };
        let mut out = Vec::new();
        header.write_to(&mut out);
        out.extend_from_slice(records);
        reseal(&mut out);
        out
    }

    /// A record: its body prefixed by the body's length as a varint.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, i32::try_from(body.len()).unwrap());
        out.extend_from_slice(body);
        out
    }

    /// Minimal valid record body for `index`: null key, null value, no headers.
    fn minimal_body(index: u8) -> Vec<u8> {
        vec![0, 0, index * 2, 0x01, 0x01, 0x00]
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn header(key: &str, value: Option<&[u8]>) -> RecordHeader {
        RecordHeader {
            key: key.to_owned().into(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn input(timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> RecordInput {
        RecordInput {
            timestamp,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }

    fn build(records: &[RecordInput]) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for r in records {
            builder.push(r.clone());
        }
        builder.build().unwrap()
    }

    fn two_record_batch() -> Vec<u8> {
        let mut first = input(1_700_000_000_000, None, Some(b"hello"));
        first.headers.push(header("trace", Some(b"abc")));
        build(&[first, input(1_700_000_000_005, Some(b"k1"), Some(b"v"))])
    }

    #[test]
    fn golden_two_records_match_hand_encoding() {
        // Record 0: null key, value "hello", one header trace=abc, at the base timestamp.
        let mut body0 = vec![
            0x00, // attributes
            0x00, // timestampDelta 0
            0x00, // offsetDelta 0
            0x01, // keyLength -1 (zigzag 1): null key
            0x0a, // valueLength 5 (zigzag 10)
        ];
        body0.extend_from_slice(b"hello");
        body0.push(0x02); // headersCount 1
        body0.push(0x0a); // headerKeyLength 5
        body0.extend_from_slice(b"trace");
        body0.push(0x06); // headerValueLength 3
        body0.extend_from_slice(b"abc");
        assert_eq!(body0.len(), 21);
        // Record 1: key "k1", value "v", no headers, 5 ms after the base timestamp.
        let mut body1 = vec![0x00, 0x0a, 0x02, 0x04];
        body1.extend_from_slice(b"k1");
        body1.push(0x02);
        body1.extend_from_slice(b"v");
        body1.push(0x00);
        assert_eq!(body1.len(), 9);
        let mut records = vec![0x2a]; // length 21 (zigzag 42)
        records.extend_from_slice(&body0);
        records.push(0x12); // length 9 (zigzag 18)
        records.extend_from_slice(&body1);

        let base: i64 = 1_700_000_000_000;
        let mut expected = Vec::new();
        expected.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        expected.extend_from_slice(&(49 + 32i32).to_be_bytes()); // batchLength
        expected.extend_from_slice(&0i32.to_be_bytes()); // partitionLeaderEpoch
        expected.push(2); // magic
        expected.extend_from_slice(&[0; 4]); // crc, filled in below
        expected.extend_from_slice(&0i16.to_be_bytes()); // attributes
        expected.extend_from_slice(&1i32.to_be_bytes()); // lastOffsetDelta
        expected.extend_from_slice(&base.to_be_bytes()); // baseTimestamp
        expected.extend_from_slice(&(base + 5).to_be_bytes()); // maxTimestamp
        expected.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        expected.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        expected.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        expected.extend_from_slice(&2i32.to_be_bytes()); // recordsCount
        expected.extend_from_slice(&records);
        let crc = crc32c::crc32c(&expected[21..]);
        expected[17..21].copy_from_slice(&crc.to_be_bytes());

        let built = two_record_batch();
        assert_eq!(built, expected);
        assert_eq!(built.len(), 93);
        assert_eq!(built[17..21], crc32c::crc32c(&built[21..]).to_be_bytes());
        // Computed by a separate bitwise CRC-32C implementation, not by the `crc32c` crate.
        assert_eq!(crc, 0x7982_af0a);
        assert_eq!(verify(&built).unwrap().crc, 0x7982_af0a);
    }

    #[test]
    fn golden_regression_hex_vector() {
        // Hand-encoded from the spec: producer 42/3/7, an empty value with a null-valued header,
        // a record 10 ms before the base timestamp with null key and value, and two headers.
        const EXPECTED: &str = "00000000000000000000005a0000000002ae0d1ccc0000000000020000000000\
                                0003e800000000000f4240000000000000002a00030000000700000003140000\
                                00026100020268010c0013020101002c00b0f97904066b65790a76616c756504\
                                027802310000";
        let mut first = input(1000, Some(b"a"), Some(b""));
        first.headers.push(header("h", None));
        let mut third = input(1_000_000, Some(b"key"), Some(b"value"));
        third.headers.push(header("x", Some(b"1")));
        third.headers.push(header("", Some(b"")));
        let mut builder = BatchBuilder::new().producer(42, 3, 7);
        builder.push(first).push(input(990, None, None)).push(third);
        let built = builder.build().unwrap();
        assert_eq!(built, from_hex(EXPECTED));

        let h = verify(&built).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, 7)
        );
        assert_eq!((h.base_timestamp, h.max_timestamp), (1000, 1_000_000));
        assert_eq!(
            (h.records_count, h.last_offset_delta, h.last_offset()),
            (3, 2, 2)
        );
    }

    #[test]
    fn round_trip_preserves_records() {
        let mut with_headers = input(500, Some(b"k"), Some(b""));
        with_headers.headers = vec![
            header("a", None),
            header("b", Some(b"")),
            header("c", Some(b"xyz")),
        ];
        let inputs = vec![
            input(1_000, None, Some(b"no key")),
            input(900, Some(b"earlier"), None), // negative timestamp delta and a tombstone
            with_headers,
            input(2_000, None, None),
            input(1_000, Some(&[0u8; 300]), Some(&[0xff; 200])),
        ];
        let batch = build(&inputs);
        let decoded = decode(&batch).unwrap();
        assert_eq!(decoded.len(), inputs.len());
        for (i, (record, input)) in decoded.iter().zip(&inputs).enumerate() {
            assert_eq!(record.offset, i64::try_from(i).unwrap());
            assert_eq!(record.timestamp, input.timestamp);
            assert_eq!(record.key, input.key);
            assert_eq!(record.value, input.value);
            assert_eq!(record.headers, input.headers);
        }
        let h = verify(&batch).unwrap();
        assert_eq!((h.base_timestamp, h.max_timestamp), (1_000, 2_000));
    }

    #[test]
    fn round_trip_extreme_timestamps() {
        // The deltas overflow i64 and wrap; decoding wraps back, so the timestamps survive.
        let inputs = [
            input(i64::MAX, None, None),
            input(i64::MIN, None, None),
            input(0, None, None),
            input(-1, None, None),
        ];
        let decoded = decode(&build(&inputs)).unwrap();
        let timestamps: Vec<i64> = decoded.iter().map(|r| r.timestamp).collect();
        assert_eq!(timestamps, [i64::MAX, i64::MIN, 0, -1]);
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut builder = BatchBuilder::new();
        assert!(builder.is_empty());
        assert_eq!(builder.encoded_len(), BATCH_HEADER_BYTES);
        // Value sizes cross the one-to-two and two-to-three byte varint boundaries of both the
        // value length and the record length; timestamps cross varlong boundaries.
        for (i, size) in [
            0usize, 1, 50, 57, 58, 63, 64, 65, 127, 128, 8_180, 8_191, 8_192, 9_000,
        ]
        .into_iter()
        .enumerate()
        {
            let mut record = input(1 << (i * 4), Some(&vec![1; size / 2]), Some(&vec![2; size]));
            record
                .headers
                .push(header("h", (i % 2 == 0).then_some(&[3u8; 70][..])));
            builder.push(record);
            let built = builder.build().unwrap();
            assert_eq!(
                builder.encoded_len(),
                built.len(),
                "after {} records",
                i + 1
            );
            assert_eq!(builder.len(), i + 1);
        }
    }

    #[test]
    fn build_rejects_empty_builder() {
        assert_eq!(BatchBuilder::new().build(), Err(BatchError::Empty));
    }

    #[test]
    fn set_base_offset_and_epoch_keep_crc_valid() {
        let mut batch = two_record_batch();
        set_base_offset(&mut batch, 1_000);
        set_partition_leader_epoch(&mut batch, 7);
        let h = verify(&batch).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (1_000, 7));
        assert_eq!(h.last_offset(), 1_001);
        let offsets: Vec<i64> = decode(&batch).unwrap().iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [1_000, 1_001]);
    }

    #[test]
    #[should_panic(expected = "shorter than a batch header")]
    fn set_base_offset_panics_on_short_slice() {
        set_base_offset(&mut [0u8; 60], 1);
    }

    #[test]
    fn every_bit_flip_in_checked_range_fails_verify() {
        let batch = two_record_batch();
        for byte in CRC_POS..batch.len() {
            for bit in 0..8 {
                let mut flipped = batch.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    verify(&flipped).is_err(),
                    "flip of byte {byte} bit {bit} went unnoticed"
                );
                assert!(decode(&flipped).is_err());
            }
        }
    }

    #[test]
    fn truncation_at_every_length_fails() {
        let batch = two_record_batch();
        for len in 0..batch.len() {
            assert!(
                decode(&batch[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
            // Resealing makes the header agree with the short slice, so the record decoder itself
            // must notice the missing bytes.
            if len >= BATCH_HEADER_BYTES {
                let mut short = batch[..len].to_vec();
                reseal(&mut short);
                assert!(
                    decode(&short).is_err(),
                    "resealed prefix of {len} bytes decoded"
                );
            }
        }
    }

    #[test]
    fn header_parse_errors() {
        let batch = two_record_batch();
        assert_eq!(
            BatchHeader::parse(&batch[..60]),
            Err(BatchError::TooShort {
                needed: 61,
                got: 60
            })
        );

        let mut bad = batch.clone();
        bad[MAGIC_POS] = 1;
        assert_eq!(verify(&bad), Err(BatchError::BadMagic { found: 1 }));

        let mut bad = batch.clone();
        bad[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&48i32.to_be_bytes());
        assert_eq!(
            BatchHeader::parse(&bad),
            Err(BatchError::BadLength {
                field: "batchLength",
                value: 48,
                position: 8
            })
        );

        let cases = [
            (LAST_OFFSET_DELTA_POS, -1i32, "lastOffsetDelta"),
            (RECORDS_COUNT_POS, -1, "recordsCount"),
            (
                RECORDS_COUNT_POS,
                (RECORDS_PER_BATCH_MAX + 1) as i32,
                "recordsCount",
            ),
        ];
        for (position, value, field) in cases {
            let mut bad = batch.clone();
            bad[position..position + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(
                BatchHeader::parse(&bad),
                Err(BatchError::BadLength {
                    field,
                    value: value.into(),
                    position
                })
            );
        }

        let mut at_limit = batch.clone();
        at_limit[RECORDS_COUNT_POS..RECORDS_COUNT_POS + 4]
            .copy_from_slice(&(RECORDS_PER_BATCH_MAX as i32).to_be_bytes());
        assert!(BatchHeader::parse(&at_limit).is_ok());
        // The huge count must not turn into a huge allocation.
        reseal(&mut at_limit);
        assert!(matches!(
            decode(&at_limit),
            Err(BatchError::Record { index: 2, .. })
        ));
    }

    #[test]
    fn verify_rejects_length_and_crc_mismatch() {
        let mut batch = two_record_batch();
        batch.push(0);
        assert_eq!(
            verify(&batch),
            Err(BatchError::LengthMismatch {
                header: 93,
                actual: 94
            })
        );
        batch.pop();
        let stored = u32::from_be_bytes(batch[17..21].try_into().unwrap());
        batch[92] ^= 0x01;
        let computed = crc32c::crc32c(&batch[21..]);
        assert_eq!(
            verify(&batch),
            Err(BatchError::CrcMismatch { stored, computed })
        );
    }

    #[test]
    fn malformed_records_report_the_expected_error() {
        let valid = framed(&minimal_body(0));
        let record_err = |index, position, reason| BatchError::Record {
            index,
            position,
            reason,
        };

        // A record length varint that never terminates within 5 bytes.
        let batch = craft(1, 0, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
        assert_eq!(decode(&batch), Err(record_err(0, 61, "overlong varint")));

        // A 5-byte varint whose last byte carries bits beyond 32.
        let batch = craft(1, 0, &[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(
            decode(&batch),
            Err(record_err(0, 61, "varint value out of range"))
        );

        // A timestamp delta varlong that never terminates within 10 bytes.
        let mut body = vec![0u8];
        body.extend_from_slice(&[0xff; 10]);
        body.extend_from_slice(&[0, 1, 1, 0]);
        assert_eq!(
            decode(&craft(1, 0, &framed(&body))),
            Err(record_err(0, 63, "overlong varlong"))
        );

        // A varint cut off by the end of its record.
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 1, 1, 0x80]))),
            Err(record_err(0, 67, "truncated varint"))
        );

        // recordsCount says two, only one is present.
        assert_eq!(
            decode(&craft(2, 1, &valid)),
            Err(record_err(1, 68, "batch ends before recordsCount records"))
        );

        // A stray byte after the last record.
        let mut trailing = valid.clone();
        trailing.push(0);
        assert_eq!(
            decode(&craft(1, 0, &trailing)),
            Err(record_err(1, 68, "trailing bytes after the last record"))
        );

        // A key length pointing past the end of the record.
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 100, b'k', 1, 0]))),
            Err(BatchError::BadLength {
                field: "key length",
                value: 50,
                position: 65
            })
        );

        // A value length below -1.
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 1, 3, 0]))),
            Err(BatchError::BadLength {
                field: "value length",
                value: -2,
                position: 66
            })
        );

        // A record length pointing past the end of the batch, and a negative one.
        let mut long = valid.clone();
        long[0] = 14;
        assert_eq!(
            decode(&craft(1, 0, &long)),
            Err(BatchError::BadLength {
                field: "record length",
                value: 7,
                position: 61
            })
        );
        long[0] = 1;
        assert_eq!(
            decode(&craft(1, 0, &long)),
            Err(BatchError::BadLength {
                field: "record length",
                value: -1,
                position: 61
            })
        );

        // A record length larger than what the fields consume.
        let mut padded = minimal_body(0);
        padded.push(0);
        assert_eq!(
            decode(&craft(1, 0, &framed(&padded))),
            Err(record_err(
                0,
                61,
                "record length does not match its contents"
            ))
        );

        // Offset delta 1 for the first record.
        assert_eq!(
            decode(&craft(1, 1, &framed(&minimal_body(1)))),
            Err(record_err(
                0,
                64,
                "offset delta does not match record index"
            ))
        );

        // lastOffsetDelta disagreeing with the last record.
        let mut two = valid.clone();
        two.extend_from_slice(&framed(&minimal_body(1)));
        assert!(decode(&craft(2, 1, &two)).is_ok());
        assert_eq!(
            decode(&craft(2, 5, &two)),
            Err(record_err(
                1,
                71,
                "last record's offset delta does not match lastOffsetDelta"
            ))
        );

        // A header key that is not UTF-8, a null header key, and a negative header count.
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 1, 1, 2, 2, 0xff, 1]))),
            Err(record_err(0, 68, "header key is not valid UTF-8"))
        );
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 1, 1, 2, 1, 1]))),
            Err(BatchError::BadLength {
                field: "header key length",
                value: -1,
                position: 68
            })
        );
        assert_eq!(
            decode(&craft(1, 0, &framed(&[0, 0, 0, 1, 1, 1]))),
            Err(BatchError::BadLength {
                field: "headers count",
                value: -1,
                position: 67
            })
        );
    }

    #[test]
    fn compressed_batches_are_rejected() {
        for codec in 1..=7u8 {
            let mut batch = two_record_batch();
            batch[ATTRIBUTES_POS + 1] = codec;
            reseal(&mut batch);
            assert_eq!(verify(&batch).unwrap().compression(), codec);
            assert_eq!(decode(&batch), Err(BatchError::Compressed { codec }));
        }
    }

    #[test]
    fn attribute_flags_and_log_append_time() {
        let mut batch = two_record_batch();
        let attributes = TIMESTAMP_TYPE_MASK | TRANSACTIONAL_FLAG_MASK | CONTROL_FLAG_MASK;
        batch[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attributes.to_be_bytes());
        reseal(&mut batch);
        let h = verify(&batch).unwrap();
        assert!(h.is_log_append_time() && h.is_transactional() && h.is_control());
        assert_eq!(h.compression(), 0);
        // Kafka reports the batch's maxTimestamp for every record of a LogAppendTime batch.
        for record in decode(&batch).unwrap() {
            assert_eq!(record.timestamp, h.max_timestamp);
        }
    }

    #[test]
    fn empty_batch_decodes_to_no_records() {
        assert_eq!(decode(&craft(0, 0, &[])), Ok(Vec::new()));
    }

    #[test]
    fn error_messages_name_the_position() {
        let err = BatchError::Record {
            index: 3,
            position: 118,
            reason: "truncated varint",
        };
        assert_eq!(err.to_string(), "record 3 at byte 118: truncated varint");
        let err = BatchError::BadLength {
            field: "key length",
            value: 50,
            position: 65,
        };
        assert_eq!(err.to_string(), "invalid key length 50 at byte 65");
    }

    #[test]
    fn varint_edge_values_round_trip() {
        let cases: [(i32, &[u8]); 7] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "varint {value}");
            assert_eq!(unsigned_varint_len(zigzag32(value).into()), bytes.len());
            let mut reader = Reader {
                bytes: &out,
                pos: 0,
                index: 0,
            };
            assert_eq!(reader.varint(), Ok(value));
            assert_eq!(reader.pos, out.len());
        }

        let mut max = vec![0xfe];
        max.extend_from_slice(&[0xff; 8]);
        max.push(0x01);
        let mut min = vec![0xff; 9];
        min.push(0x01);
        let cases: [(i64, &[u8]); 5] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (i64::MAX, &max),
            (i64::MIN, &min),
        ];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, bytes, "varlong {value}");
            assert_eq!(unsigned_varint_len(zigzag64(value)), bytes.len());
            let mut reader = Reader {
                bytes: &out,
                pos: 0,
                index: 0,
            };
            assert_eq!(reader.varlong(), Ok(value));
            assert_eq!(reader.pos, out.len());
        }

        // A tenth byte with bits beyond 64 is rejected rather than silently truncated.
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        let mut reader = Reader {
            bytes: &too_big,
            pos: 0,
            index: 0,
        };
        assert!(reader.varlong().is_err());
    }

    #[test]
    fn decoder_survives_mutated_input() {
        // A small deterministic fuzz pass: corrupt bytes, reseal so the CRC passes, and make sure
        // the decoder returns rather than panicking. cargo-fuzz covers this far more thoroughly.
        let batch = two_record_batch();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut mutated = batch.clone();
            for _ in 0..=next() % 3 {
                let at = RECORDS_POS + (next() as usize) % (batch.len() - RECORDS_POS);
                mutated[at] = next() as u8;
            }
            let cut = RECORDS_POS + (next() as usize) % (batch.len() - RECORDS_POS + 1);
            mutated.truncate(cut);
            reseal(&mut mutated);
            let _ = decode(&mutated);
        }
    }
}
