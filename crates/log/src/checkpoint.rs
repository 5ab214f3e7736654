//! The per-partition durable checkpoint: two checksummed slots, written alternately.
//!
//! The checkpoint records the partition's *durable point* (every offset below it was synced
//! before it was written) and its *log start offset* (retention's low mark). Recovery uses the
//! durable point to tell a torn tail (a bad batch at or above it: truncate, warn, count) from
//! corruption (a bad batch below it: refuse, never truncate).
//!
//! Layout (`docs/format.md`): two 64-byte slots at byte 0 and byte 4096, so that a torn write of
//! one slot can never damage the other. Each slot is big-endian:
//! `magic u32 | version u16 | reserved u16 | generation u64 | durable_offset u64 |
//!  log_start_offset u64 | reserved [u8; 24] | crc32c u32` (CRC over the first 60 bytes).
//!
//! Invariants: a write goes to the slot *not* holding the newest valid generation, and is
//! followed by `fdatasync` before the caller relies on it. Reading picks the valid slot with the
//! highest generation; if neither slot is valid the partition is corrupt.

use crate::io::File;
use std::io;

/// Size of one slot in bytes.
pub const SLOT_BYTES: usize = 64;
/// Byte position of the second slot; a page apart from the first.
pub const SLOT_1_POS: u64 = 4096;
/// Total file size once both slots exist.
pub const CHECKPOINT_FILE_BYTES: u64 = SLOT_1_POS + SLOT_BYTES as u64;

const MAGIC: u32 = 0x4742_4350; // "GBCP"
/// Generations at or above this are refused: 2^62 checkpoint writes cannot happen, so such a
/// slot is damage, and refusing it keeps `generation + 1` from overflowing.
const GENERATION_MAX: u64 = 1 << 62;
const VERSION: u16 = 1;

/// One decoded checkpoint slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Monotonic write counter; the newest valid slot wins.
    pub generation: u64,
    /// Every offset below this was durable when the checkpoint was written.
    pub durable_offset: u64,
    /// The first offset retention has not deleted.
    pub log_start_offset: u64,
}

impl Checkpoint {
    /// Encodes one slot.
    #[must_use]
    pub fn encode(&self) -> [u8; SLOT_BYTES] {
        let mut slot = [0u8; SLOT_BYTES];
        slot[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        slot[4..6].copy_from_slice(&VERSION.to_be_bytes());
        slot[8..16].copy_from_slice(&self.generation.to_be_bytes());
        slot[16..24].copy_from_slice(&self.durable_offset.to_be_bytes());
        slot[24..32].copy_from_slice(&self.log_start_offset.to_be_bytes());
        let crc = crc32c::crc32c(&slot[..SLOT_BYTES - 4]);
        slot[SLOT_BYTES - 4..].copy_from_slice(&crc.to_be_bytes());
        slot
    }

    /// Decodes one slot, or `None` if its magic, version or CRC is wrong.
    #[must_use]
    pub fn decode(slot: &[u8]) -> Option<Checkpoint> {
        if slot.len() < SLOT_BYTES {
            return None;
        }
        let slot = &slot[..SLOT_BYTES];
        let crc = u32::from_be_bytes(slot[SLOT_BYTES - 4..].try_into().ok()?);
        if crc != crc32c::crc32c(&slot[..SLOT_BYTES - 4])
            || u32::from_be_bytes(slot[0..4].try_into().ok()?) != MAGIC
            || u16::from_be_bytes(slot[4..6].try_into().ok()?) != VERSION
        {
            return None;
        }
        let checkpoint = Checkpoint {
            generation: u64::from_be_bytes(slot[8..16].try_into().ok()?),
            durable_offset: u64::from_be_bytes(slot[16..24].try_into().ok()?),
            log_start_offset: u64::from_be_bytes(slot[24..32].try_into().ok()?),
        };
        // A slot that claims retention passed its own durable point, offsets beyond Kafka's
        // signed 64-bit space, or a generation no log could reach, was never written by us.
        let sane = checkpoint.log_start_offset <= checkpoint.durable_offset
            && checkpoint.durable_offset <= i64::MAX as u64
            && checkpoint.generation < GENERATION_MAX;
        sane.then_some(checkpoint)
    }

    /// The byte position of the slot this generation is written to.
    #[must_use]
    pub fn slot_pos(generation: u64) -> u64 {
        if generation.is_multiple_of(2) {
            0
        } else {
            SLOT_1_POS
        }
    }
}

/// Reads both slots and returns the valid one with the highest generation.
///
/// # Errors
/// Any I/O error from reading the file. A missing or short slot is not an error; it is just
/// invalid.
pub fn read(file: &dyn File) -> io::Result<Option<Checkpoint>> {
    let mut best: Option<Checkpoint> = None;
    for pos in [0, SLOT_1_POS] {
        let mut slot = [0u8; SLOT_BYTES];
        let n = file.read_at(&mut slot, pos)?;
        if let Some(c) = Checkpoint::decode(&slot[..n])
            && best.is_none_or(|b| c.generation > b.generation)
        {
            best = Some(c);
        }
    }
    Ok(best)
}

/// Writes `checkpoint` into its slot (by generation parity) and syncs the file.
///
/// # Errors
/// Any I/O error. A failed sync must be treated as fatal by the caller.
pub fn write(file: &dyn File, checkpoint: &Checkpoint) -> io::Result<()> {
    file.write_all_at(
        &checkpoint.encode(),
        Checkpoint::slot_pos(checkpoint.generation),
    )?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_bit_flip_is_detected() {
        let c = Checkpoint {
            generation: 7,
            durable_offset: 1234,
            log_start_offset: 17,
        };
        let slot = c.encode();
        assert_eq!(Checkpoint::decode(&slot), Some(c));
        for bit in 0..SLOT_BYTES * 8 {
            let mut bad = slot;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                Checkpoint::decode(&bad),
                None,
                "bit {bit} flip went unnoticed"
            );
        }
    }

    #[test]
    fn generations_alternate_slots() {
        assert_eq!(Checkpoint::slot_pos(0), 0);
        assert_eq!(Checkpoint::slot_pos(1), SLOT_1_POS);
        assert_eq!(Checkpoint::slot_pos(2), 0);
    }

    #[test]
    fn log_start_beyond_durable_is_rejected() {
        let c = Checkpoint {
            generation: 1,
            durable_offset: 5,
            log_start_offset: 6,
        };
        assert_eq!(Checkpoint::decode(&c.encode()), None);
    }
}
