//! Bit rot at rest: random single-bit flips in sealed segments are always detected and never
//! served; flips in derived indexes and in one checkpoint slot lose nothing.

use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use gearbox_log::{Partition, PartitionConfig, RawBatch, ReadError, Retention, SyncMode};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const DIR: &str = "/rot/p";
const FLIPS: usize = 1000;

/// splitmix64: a seeded, dependency-free PRNG so a failure names its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config() -> PartitionConfig {
    let mut c = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
    c.segment_bytes_max = 4096;
    c.index_interval_bytes = 512;
    c
}

/// A cleanly closed partition with several sealed segments, and every batch it holds.
fn base_image() -> (Arc<SimDisk>, Vec<RawBatch>) {
    let disk = SimDisk::new();
    let clock = Arc::new(SimClock::new(1_700_000_000_000));
    let p = Partition::create(disk.clone(), clock, Path::new(DIR), config()).unwrap();
    for i in 0..120u32 {
        let mut b = BatchBuilder::new();
        for r in 0..1 + i % 4 {
            b.push(RecordInput {
                timestamp: 1_700_000_000_000 + i64::from(i),
                key: Some(format!("key-{r}").into_bytes()),
                value: Some(vec![(i % 251) as u8; 20 + (i as usize * 7) % 90]),
                headers: vec![],
            });
        }
        p.append(&b.build().unwrap()).unwrap();
    }
    let all = read_all(&p).expect("the clean image reads");
    p.close().unwrap();
    (disk, all)
}

fn read_all(p: &Partition) -> Result<Vec<RawBatch>, ReadError> {
    let mut out = Vec::new();
    let mut next = p.log_start_offset();
    while next < p.high_watermark() {
        let got = p.read(next, 1 << 20)?;
        next = got
            .batches
            .last()
            .expect("a read below the high-water mark returns a batch")
            .last_offset
            + 1;
        out.extend(got.batches);
    }
    Ok(out)
}

fn files_with_ext(disk: &SimDisk, ext: &str) -> Vec<PathBuf> {
    disk.files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == ext))
        .collect()
}

/// Reads every batch one read at a time from each batch's base offset, so that one bad batch
/// does not hide the others. Returns (batches served that differ from the original, whether
/// corruption was reported).
fn audit(p: &Partition, original: &[RawBatch]) -> (usize, bool) {
    let mut wrong = 0;
    let mut reported = false;
    for orig in original {
        match p.read(orig.base_offset, 1) {
            Ok(got) => wrong += got.batches.iter().filter(|b| !original.contains(b)).count(),
            Err(ReadError::Corrupted { .. }) => reported = true,
            Err(e) => panic!("unexpected read error: {e}"),
        }
    }
    (wrong, reported)
}

#[test]
fn every_bit_flip_in_a_sealed_segment_is_detected_and_never_served() {
    let (disk, original) = base_image();
    let sealed: Vec<PathBuf> = {
        let mut logs = files_with_ext(&disk, "log");
        logs.pop(); // the newest segment is the active one
        logs
    };
    assert!(
        sealed.len() >= 5,
        "need several sealed segments, have {}",
        sealed.len()
    );
    let seed = 0x6765_6172_626f_7821;
    let mut rng = Rng(seed);
    let (mut detected_at_open, mut detected_by_read, mut served_wrong) = (0, 0, 0);
    for i in 0..FLIPS {
        let image = disk.crash_image(Torn::None); // a full copy: everything was synced
        let file = &sealed[rng.below(sealed.len() as u64) as usize];
        let len_bits = image.read_file(file).unwrap().len() as u64 * 8;
        let bit = rng.below(len_bits);
        image.flip_bit(file, bit);
        let clock = Arc::new(SimClock::new(1_700_000_000_000));
        let p = Partition::open(image, clock, Path::new(DIR), config()).unwrap();
        let at_open = p.recovery().corruption.is_some();
        let (wrong, by_read) = audit(&p, &original);
        served_wrong += wrong;
        assert_eq!(
            wrong,
            0,
            "flip {i} (seed {seed:#x}, {} bit {bit}) served corrupt data",
            file.display()
        );
        assert!(
            at_open || by_read,
            "flip {i} (seed {seed:#x}, {} bit {bit}) went undetected",
            file.display()
        );
        if by_read {
            assert!(
                p.unavailable().is_some(),
                "a partition with detected corruption must refuse appends"
            );
        }
        detected_at_open += usize::from(at_open);
        detected_by_read += usize::from(by_read && !at_open);
    }
    println!(
        "bit flips: {FLIPS} flips in {} sealed segments, {} detected ({detected_at_open} at open, \
         {detected_by_read} by reads), {served_wrong} served as data",
        sealed.len(),
        detected_at_open + detected_by_read
    );
}

#[test]
fn flips_in_indexes_and_one_checkpoint_slot_lose_nothing() {
    let (disk, original) = base_image();
    let mut rng = Rng(42);
    let indexes: Vec<PathBuf> = files_with_ext(&disk, "index")
        .into_iter()
        .chain(files_with_ext(&disk, "timeindex"))
        .collect();
    assert!(!indexes.is_empty());
    let checkpoint = Path::new(DIR).join("checkpoint");
    for i in 0..300 {
        let image = disk.crash_image(Torn::None);
        let (file, bit) = if i % 3 == 0 {
            // Only the first 64 bytes of a slot are checked; flip inside the slot.
            let slot = if rng.below(2) == 0 { 0 } else { 4096 * 8 };
            (checkpoint.clone(), slot + rng.below(64 * 8))
        } else {
            let f = indexes[rng.below(indexes.len() as u64) as usize].clone();
            let bits = image.read_file(&f).unwrap().len() as u64 * 8;
            (f, rng.below(bits))
        };
        image.flip_bit(&file, bit);
        let clock = Arc::new(SimClock::new(1_700_000_000_000));
        let p = Partition::open(image, clock, Path::new(DIR), config()).unwrap();
        assert!(
            p.recovery().corruption.is_none(),
            "{} bit {bit}: {:?}",
            file.display(),
            p.recovery()
        );
        assert_eq!(
            read_all(&p).unwrap(),
            original,
            "{} bit {bit}: data changed",
            file.display()
        );
        assert!(p.unavailable().is_none());
    }
}
