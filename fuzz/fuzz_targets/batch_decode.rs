//! The RecordBatch v2 decoder on arbitrary bytes.
//!
//! Input: one flags byte, then the batch bytes.
//! * Flags bit 0: first make `batchLength` match the slice and recompute the CRC, so that the
//!   fuzzer reaches the record decoder instead of stopping at the checksum.
//! * Flags bit 1: instead of decoding the bytes, read them as record specs, build a batch with
//!   `BatchBuilder`, and check that it decodes back to exactly those records.
//!
//! Asserted, besides "never panics":
//! * `BatchHeader::parse` succeeds only on a well-formed header, and `verify` agrees with it
//!   (same header, or the same error when the header is bad), checks the exact length and the
//!   CRC-32C over bytes `[21, end)`.
//! * If `decode` succeeds then `verify` succeeded, the codec is 0, there are exactly
//!   `recordsCount` records with offsets `base + 0, 1, 2, ...` (the last at `lastOffsetDelta`),
//!   and LogAppendTime batches report `maxTimestamp` for every record.
//! * Re-encoding decoded records with `BatchBuilder` (same timestamps, keys, values, headers,
//!   producer fields) gives a batch that decodes to the same records, whose re-encoding is
//!   byte-identical (a fixed point), and whose `encoded_len` is exact.
//! * Assigning a base offset and leader epoch keeps a batch valid; flipping any one bit in the
//!   CRC-covered range (or the CRC) makes `verify` fail.

#![no_main]

use gearbox_fuzz::{Bytes, reseal_whole};
use gearbox_log::batch::{
    self, BATCH_HEADER_BYTES, BatchBuilder, BatchError, BatchHeader, CRC_POS, MAGIC_V2,
    RECORDS_PER_BATCH_MAX, Record, RecordHeader, RecordInput,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    if flags & 2 != 0 {
        build_and_decode(rest);
        return;
    }
    let mut bytes = rest.to_vec();
    if flags & 1 != 0 {
        reseal_whole(&mut bytes);
    }
    check_bytes(&bytes, flags);
}

fn check_bytes(bytes: &[u8], flags: u8) {
    let parsed = BatchHeader::parse(bytes);
    match &parsed {
        Ok(h) => {
            assert!(bytes.len() >= BATCH_HEADER_BYTES);
            assert_eq!(h.magic, MAGIC_V2);
            assert!(h.batch_length >= batch::BATCH_LENGTH_MIN);
            assert!(h.last_offset_delta >= 0);
            assert!((0..=RECORDS_PER_BATCH_MAX as i64).contains(&i64::from(h.records_count)));
            assert!(h.total_len() >= BATCH_HEADER_BYTES);
            assert!(h.compression() <= 7);
        }
        Err(BatchError::TooShort { needed, got }) => {
            assert_eq!((*needed, *got), (BATCH_HEADER_BYTES, bytes.len()));
        }
        Err(_) => assert!(bytes.len() >= BATCH_HEADER_BYTES),
    }

    let verified = batch::verify(bytes);
    match (&parsed, &verified) {
        (Err(p), Err(v)) => assert_eq!(p, v, "verify reports the header error parse reports"),
        (Err(p), Ok(_)) => panic!("verify accepted a header that parse rejects: {p}"),
        (Ok(p), Ok(v)) => {
            assert_eq!(p, v, "verify returns the parsed header");
            assert_eq!(bytes.len(), v.total_len(), "verified length");
            assert_eq!(
                crc32c::crc32c(&bytes[batch::ATTRIBUTES_POS..]),
                v.crc,
                "verified CRC"
            );
        }
        (Ok(_), Err(e)) => assert!(
            matches!(
                e,
                BatchError::LengthMismatch { .. } | BatchError::CrcMismatch { .. }
            ),
            "verify failed a parsed header with {e:?}"
        ),
    }

    let decoded = batch::decode(bytes);
    if let Err(e) = &decoded
        && let Err(v) = &verified
    {
        assert_eq!(e, v, "decode reports verify's error first");
    }
    let Ok(records) = decoded else {
        return;
    };
    let h = verified.expect("decode succeeded, so verify must have");
    assert_eq!(h.compression(), 0, "decoded a compressed batch");
    assert_eq!(
        records.len(),
        h.records_count as usize,
        "records == recordsCount"
    );
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.offset,
            h.base_offset.wrapping_add(i as i64),
            "record {i} offset"
        );
        if h.is_log_append_time() {
            assert_eq!(r.timestamp, h.max_timestamp, "LogAppendTime record {i}");
        }
        for header in &r.headers {
            // Already a `String`; this is the decoder's UTF-8 promise, restated.
            assert!(std::str::from_utf8(header.key.as_bytes()).is_ok());
        }
    }
    if let Some(last) = records.last() {
        assert_eq!(
            last.offset,
            h.last_offset(),
            "last record at lastOffsetDelta"
        );
    }

    // Base offset and leader epoch are outside the CRC: the log may assign them freely.
    let mut assigned = bytes.to_vec();
    batch::set_base_offset(&mut assigned, 0x0102_0304_0506);
    batch::set_partition_leader_epoch(&mut assigned, 9);
    let moved = batch::decode(&assigned).expect("assigning offset and epoch keeps a batch valid");
    assert_eq!(moved.len(), records.len());
    for (a, b) in moved.iter().zip(&records) {
        assert_eq!(
            a.offset.wrapping_sub(0x0102_0304_0506),
            b.offset.wrapping_sub(h.base_offset)
        );
        assert_eq!(
            (&a.key, &a.value, &a.headers, a.timestamp),
            (&b.key, &b.value, &b.headers, b.timestamp)
        );
    }

    // Any single flipped bit from the CRC field on is caught.
    let bit = (usize::from(flags) * 131 + bytes.len() * 7) % ((bytes.len() - CRC_POS) * 8);
    let mut flipped = bytes.to_vec();
    flipped[CRC_POS + bit / 8] ^= 1 << (bit % 8);
    assert!(
        batch::verify(&flipped).is_err(),
        "flip of bit {bit} after the CRC position went unnoticed"
    );

    if records.is_empty() {
        // BatchBuilder cannot build an empty batch.
        return;
    }
    let mut builder =
        BatchBuilder::new().producer(h.producer_id, h.producer_epoch, h.base_sequence);
    for r in &records {
        builder.push(RecordInput {
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        });
    }
    let rebuilt = builder.build().expect("decoded records re-encode");
    assert_eq!(builder.encoded_len(), rebuilt.len(), "encoded_len is exact");
    let rh = batch::verify(&rebuilt).expect("a built batch verifies");
    assert_eq!(
        (rh.producer_id, rh.producer_epoch, rh.base_sequence),
        (h.producer_id, h.producer_epoch, h.base_sequence),
        "producer fields carried over"
    );
    assert_eq!(rh.records_count, h.records_count);
    assert_eq!(rh.last_offset_delta, h.last_offset_delta);
    let again = batch::decode(&rebuilt).expect("a built batch decodes");
    assert_same_records(&again, &records, h.base_offset);

    // The builder's output is canonical: re-encoding its own decoding changes nothing.
    let mut builder2 =
        BatchBuilder::new().producer(h.producer_id, h.producer_epoch, h.base_sequence);
    for r in &again {
        builder2.push(RecordInput {
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
        });
    }
    assert!(
        builder2.build().expect("re-encode") == rebuilt,
        "re-encoding is a fixed point"
    );
}

/// `got` (decoded from a batch at base offset 0) matches `want` (at base offset `base`).
fn assert_same_records(got: &[Record], want: &[Record], base: i64) {
    assert_eq!(got.len(), want.len(), "record count after re-encoding");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.offset, i as i64, "rebuilt record {i} offset");
        assert_eq!(w.offset, base.wrapping_add(i as i64));
        assert_eq!(g.timestamp, w.timestamp, "record {i} timestamp");
        assert_eq!(g.key, w.key, "record {i} key");
        assert_eq!(g.value, w.value, "record {i} value");
        assert_eq!(g.headers, w.headers, "record {i} headers");
    }
}

/// Reads record specs from `data`, builds a batch, and checks it decodes to the same records.
fn build_and_decode(data: &[u8]) {
    let mut b = Bytes::new(data);
    let producer = (b.u64() as i64, b.u16() as i16, b.u64() as i32);
    let mut inputs = Vec::new();
    while !b.is_empty() && inputs.len() < 64 {
        let ts_kind = b.u8();
        let timestamp = match ts_kind % 4 {
            0 => b.u64() as i64,
            1 => i64::from(b.u16()),
            2 => i64::MIN + i64::from(b.u8()),
            _ => i64::MAX - i64::from(b.u8()),
        };
        let key = nullable(&mut b);
        let value = nullable(&mut b);
        let headers = (0..b.u8() % 4)
            .map(|_| {
                let n = usize::from(b.u8() % 16);
                RecordHeader {
                    key: String::from_utf8_lossy(b.take(n)).into_owned().into(),
                    value: nullable(&mut b),
                }
            })
            .collect();
        inputs.push(RecordInput {
            timestamp,
            key,
            value,
            headers,
        });
    }
    let mut builder = BatchBuilder::new();
    if producer.0 != 0 {
        builder = builder.producer(producer.0, producer.1, producer.2);
    }
    for r in &inputs {
        builder.push(r.clone());
    }
    let built = match builder.build() {
        Ok(built) => built,
        Err(BatchError::Empty) => {
            assert!(inputs.is_empty());
            return;
        }
        Err(e) => panic!("building {} small records failed: {e}", inputs.len()),
    };
    assert_eq!(builder.encoded_len(), built.len(), "encoded_len is exact");
    let h = batch::verify(&built).expect("a built batch verifies");
    assert_eq!(h.records_count as usize, inputs.len());
    assert_eq!(h.last_offset_delta as usize, inputs.len() - 1);
    assert_eq!(
        h.base_timestamp, inputs[0].timestamp,
        "base timestamp is the first record's"
    );
    assert_eq!(
        h.max_timestamp,
        inputs.iter().map(|r| r.timestamp).max().expect("non-empty"),
        "max timestamp"
    );
    assert_eq!(
        (h.base_offset, h.partition_leader_epoch, h.attributes),
        (0, 0, 0)
    );
    let records = batch::decode(&built).expect("a built batch decodes");
    assert_eq!(records.len(), inputs.len());
    for (i, (r, input)) in records.iter().zip(&inputs).enumerate() {
        assert_eq!(r.offset, i as i64);
        assert_eq!(r.timestamp, input.timestamp, "record {i} timestamp");
        assert_eq!(r.key, input.key, "record {i} key");
        assert_eq!(r.value, input.value, "record {i} value");
        assert_eq!(r.headers, input.headers, "record {i} headers");
    }
    check_bytes(&built, 0);
}

fn nullable(b: &mut Bytes<'_>) -> Option<Vec<u8>> {
    match b.u8() {
        0xff => None,
        n => Some(b.take(usize::from(n % 64)).to_vec()),
    }
}
