//! Compressed produce batches: gzip, snappy (Kafka's xerial framing, or raw), lz4 (frame
//! format) and zstd are decompressed and stored as the equivalent uncompressed batch (the same
//! header with the codec bits cleared, the records as they were, a new length and CRC), so
//! every reader (Fetch, HTTP, pipelines) sees plain records. Fetch therefore serves
//! uncompressed batches, which every client accepts.
//!
//! Decompression is bounded: a batch that inflates past [`DECOMPRESSED_BYTES_MAX`] is refused
//! (MESSAGE_TOO_LARGE), so a small request cannot make the server allocate without limit.

use crate::producers::Refusal;
use gearbox_log::batch::{
    ATTRIBUTES_POS, BATCH_HEADER_BYTES, BATCH_LENGTH_POS, CRC_POS, LOG_OVERHEAD,
};
use kafka_protocol::error::ResponseError;
use std::io::Read;

/// Largest decompressed size of one batch's records.
pub const DECOMPRESSED_BYTES_MAX: usize = gearbox_core::broker::TOPIC_BATCH_BYTES_MAX as usize;

const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

fn too_large() -> Refusal {
    Refusal {
        code: ResponseError::MessageTooLarge.code(),
        message: format!("the batch decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes"),
    }
}

fn corrupt(codec: &str, e: impl std::fmt::Display) -> Refusal {
    Refusal {
        code: ResponseError::CorruptMessage.code(),
        message: format!("{codec} records do not decompress: {e}"),
    }
}

/// Reads all of `r`, refusing more than the limit.
fn read_bounded(r: impl Read, codec: &str, limit: usize) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(out)
}

fn snappy(data: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), Refusal> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt("snappy", e))?;
        if out.len() + len > limit {
            return Err(too_large());
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| corrupt("snappy", e))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        raw(data, &mut out)?;
        return Ok(out);
    }
    let mut rest = data
        .get(XERIAL_HEADER_BYTES..)
        .ok_or_else(|| corrupt("snappy", "a short xerial header"))?;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("snappy", "a truncated block length"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        let block = tail
            .get(..len)
            .ok_or_else(|| corrupt("snappy", "a truncated block"))?;
        raw(block, &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

/// The records of a compressed batch, decompressed.
fn records(codec: u8, data: &[u8], limit: usize) -> Result<Vec<u8>, Refusal> {
    match codec {
        1 => read_bounded(flate2::read::MultiGzDecoder::new(data), "gzip", limit),
        2 => snappy(data, limit),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), "lz4", limit),
        4 => {
            let d =
                ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| corrupt("zstd", e))?;
            read_bounded(d, "zstd", limit)
        }
        other => Err(Refusal {
            code: ResponseError::UnsupportedCompressionType.code(),
            message: format!("compression codec {other} does not exist"),
        }),
    }
}

/// The uncompressed equivalent of a verified batch whose codec is `codec` (1 to 4).
///
/// # Errors
/// CORRUPT_MESSAGE if the records do not decompress, MESSAGE_TOO_LARGE past the limit,
/// UNSUPPORTED_COMPRESSION_TYPE for an unknown codec.
pub fn decompress(batch: &[u8], codec: u8) -> Result<Vec<u8>, Refusal> {
    decompress_with_limit(batch, codec, DECOMPRESSED_BYTES_MAX)
}

fn decompress_with_limit(batch: &[u8], codec: u8, limit: usize) -> Result<Vec<u8>, Refusal> {
    let body = records(codec, &batch[BATCH_HEADER_BYTES..], limit)?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&body);
    let attrs = i16::from_be_bytes([out[ATTRIBUTES_POS], out[ATTRIBUTES_POS + 1]]) & !0x07;
    out[ATTRIBUTES_POS..ATTRIBUTES_POS + 2].copy_from_slice(&attrs.to_be_bytes());
    let length = i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| too_large())?;
    out[BATCH_LENGTH_POS..BATCH_LENGTH_POS + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_POS..]);
    out[CRC_POS..CRC_POS + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearbox_log::batch::{self, BatchBuilder, RecordInput};
    use std::io::Write as _;

    fn plain() -> Vec<u8> {
        let mut b = BatchBuilder::new().producer(9, 1, 40);
        for i in 0..20 {
            b.push(RecordInput {
                timestamp: 1_700_000_000_000 + i,
                key: Some(format!("k{i}").into_bytes()),
                value: Some(vec![b'x'; 300]),
                headers: vec![],
            });
        }
        b.build().unwrap()
    }

    /// `plain` with its records compressed by `f` and the codec set.
    fn compressed(codec: u8, f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let p = plain();
        let mut out = p[..BATCH_HEADER_BYTES].to_vec();
        out.extend(f(&p[BATCH_HEADER_BYTES..]));
        let attrs = i16::from_be_bytes([out[21], out[22]]) | i16::from(codec);
        out[21..23].copy_from_slice(&attrs.to_be_bytes());
        let len = (out.len() - LOG_OVERHEAD) as i32;
        out[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        batch::verify(&out).unwrap();
        out
    }

    fn gzip(d: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    fn xerial(d: &[u8]) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend([0, 0, 0, 1, 0, 0, 0, 1]);
        for chunk in d.chunks(1000) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend((block.len() as u32).to_be_bytes());
            out.extend(block);
        }
        out
    }

    fn lz4(d: &[u8]) -> Vec<u8> {
        let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
        e.write_all(d).unwrap();
        e.finish().unwrap()
    }

    /// A zstd frame of raw (uncompressed) blocks: the format, without an encoder.
    fn zstd_raw(d: &[u8]) -> Vec<u8> {
        let mut out = vec![0x28, 0xB5, 0x2F, 0xFD];
        // Frame header: single segment, 4-byte content size.
        out.push(0b1010_0000);
        out.extend((d.len() as u32).to_le_bytes());
        let chunks: Vec<&[u8]> = d.chunks(1000).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = u32::from(i + 1 == chunks.len());
            let header = last | ((c.len() as u32) << 3);
            out.extend(&header.to_le_bytes()[..3]);
            out.extend(*c);
        }
        out
    }

    #[test]
    fn every_codec_gives_back_the_plain_batch() {
        let p = plain();
        for (codec, batch) in [
            (1, compressed(1, gzip)),
            (2, compressed(2, xerial)),
            (
                2,
                compressed(2, |d| snap::raw::Encoder::new().compress_vec(d).unwrap()),
            ),
            (3, compressed(3, lz4)),
            (4, compressed(4, zstd_raw)),
        ] {
            let out = decompress(&batch, codec).unwrap_or_else(|e| panic!("codec {codec}: {e:?}"));
            assert_eq!(out, p, "codec {codec}");
            batch::verify(&out).unwrap();
        }
    }

    #[test]
    fn a_batch_that_inflates_past_the_limit_is_refused() {
        let batch = compressed(1, gzip);
        let limit = plain().len() - BATCH_HEADER_BYTES - 1;
        let e = decompress_with_limit(&batch, 1, limit).unwrap_err();
        assert_eq!(e.code, ResponseError::MessageTooLarge.code());
        let e = decompress_with_limit(&compressed(2, xerial), 2, limit).unwrap_err();
        assert_eq!(e.code, ResponseError::MessageTooLarge.code());
        assert!(decompress_with_limit(&batch, 1, limit + 1).is_ok());
    }

    #[test]
    fn garbage_is_a_corrupt_message() {
        for codec in 1..=4 {
            let batch = compressed(codec, |_| b"definitely not compressed".to_vec());
            let e = decompress(&batch, codec).unwrap_err();
            assert_eq!(
                e.code,
                ResponseError::CorruptMessage.code(),
                "codec {codec}: {}",
                e.message
            );
        }
        let e = decompress(&plain(), 5).unwrap_err();
        assert_eq!(e.code, ResponseError::UnsupportedCompressionType.code());
    }
}
