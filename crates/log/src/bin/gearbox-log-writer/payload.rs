//! The records `gearbox-log-writer` appends, shared with the kill-9 test (`tests/kill9.rs`
//! includes this file), so the test can regenerate every value and check it byte for byte.
//!
//! A value is `MAGIC | writer u64 | thread u32 | seq u64 | index u32 | count u32 | len u32 |
//! len pseudo-random bytes`, little-endian, all derived from (writer, thread, seq, index).
#![allow(dead_code)] // each includer uses a different subset

/// The first bytes of every value.
pub const MAGIC: &[u8; 4] = b"GBK9";

/// The record values of batch `seq` of `thread` of `writer`.
pub fn batch_values(writer: u64, thread: u32, seq: u64) -> Vec<Vec<u8>> {
    let mut rng = mix(writer ^ mix(u64::from(thread) ^ mix(seq)));
    let count = 1 + (next(&mut rng) % 8) as u32;
    (0..count)
        .map(|idx| {
            let payload_len = 16 + (next(&mut rng) % 185) as u32;
            let mut v = Vec::with_capacity(32 + payload_len as usize);
            v.extend_from_slice(MAGIC);
            v.extend_from_slice(&writer.to_le_bytes());
            v.extend_from_slice(&thread.to_le_bytes());
            v.extend_from_slice(&seq.to_le_bytes());
            v.extend_from_slice(&idx.to_le_bytes());
            v.extend_from_slice(&count.to_le_bytes());
            v.extend_from_slice(&payload_len.to_le_bytes());
            let mut p = mix(writer ^ mix(u64::from(thread) ^ mix(seq ^ mix(u64::from(idx)))));
            v.extend((0..payload_len).map(|_| next(&mut p) as u8));
            v
        })
        .collect()
}

/// SplitMix64's finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64's step.
pub fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix(*state)
}

/// FNV-1a (64-bit) over each value's length (u32, little-endian) and bytes, in order. The
/// kill-9 test computes the same hash over what it reads back.
pub fn values_hash(values: &[Vec<u8>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes();
        for &b in len.iter().chain(v.iter()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// `(writer, thread, sequence, record index)` of a well-formed value.
pub fn parse_value(v: &[u8]) -> Option<(u64, u32, u64, u32)> {
    if v.len() < 36 || &v[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().unwrap());
    Some((u64_at(4), u32_at(12), u64_at(16), u32_at(24)))
}
