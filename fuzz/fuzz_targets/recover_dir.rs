//! Recovery of one partition directory from arbitrary bytes.
//!
//! The input is a [`Script`]: a mode byte, a seed, then file operations on a simulated disk
//! under `/fuzz/p` (optionally on top of a directory a real partition wrote, and optionally with
//! every checksum resealed afterwards so the fuzzer gets past them). Then `Partition::open`; if
//! it opens, everything is read, times and offsets are probed, batches are appended, and the
//! partition is reopened from a crash image (clean or torn). Errors are fine; a panic is a bug.
//!
//! Asserted (see `gearbox_fuzz::exercise_partition`): reads return verified, contiguous batches
//! holding the requested offset and below the high watermark; `offset_for_timestamp` answers
//! inside `[log start, high watermark)`; an acknowledged append lands at the old high watermark
//! and reads back byte for byte, and still does after a crash (it was synced under
//! `SyncMode::Always`) when the first open found no corruption.

#![no_main]

use gearbox_fuzz::{
    Script, apply_file_ops, check_survivors, exercise_partition, partition_bases, partition_names,
    reseal_dir, restore,
};
use gearbox_log::Partition;
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let script = Script::parse(data);
    let root = Path::new("/fuzz/p");
    let disk = SimDisk::new();
    if script.seeded() {
        restore(&disk, root, &partition_bases()[script.base_variant()]);
    }
    apply_file_ops(&disk, root, partition_names(), &script);
    if script.reseal() {
        reseal_dir(&disk, root);
    }

    let clock = Arc::new(SimClock::new(script.clock_ms()));
    let Ok(p) = Partition::open(disk.clone(), clock.clone(), root, script.config()) else {
        return;
    };
    let probes: Vec<(i64, u64)> = script.probes().collect();
    let appends: Vec<&[u8]> = script.appends().collect();
    let acked = exercise_partition(&p, script.clock_ms(), &probes, &appends);
    let healthy = p.recovery().corruption.is_none();

    let image = if script.torn_crash() {
        drop(p);
        disk.crash_image(Torn::Prefix {
            seed: u64::from(script.seed),
        })
    } else {
        let _ = p.close();
        drop(p);
        disk.crash_image(Torn::None)
    };
    let reopened = Partition::open(image, clock.clone(), root, script.config());
    if healthy {
        let p = match reopened {
            Ok(p) => p,
            Err(e) => panic!("a partition that opened cleanly failed to reopen: {e}"),
        };
        assert_eq!(
            p.recovery().corruption,
            None,
            "a partition that opened cleanly reopened corrupted"
        );
        check_survivors(&p, &acked, "after reopen");
        exercise_partition(&p, script.clock_ms(), &probes, &[]);
    } else if let Ok(p) = reopened {
        exercise_partition(&p, script.clock_ms(), &probes, &[]);
    }
}
