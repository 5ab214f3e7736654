//! Partition behaviour through the public API, on the real file system and on the simulator.

use gearbox_log::batch::{BatchBuilder, RecordHeader, RecordInput};
use gearbox_log::io::sim::{SimClock, SimDisk};
use gearbox_log::io::{OsStorage, Storage, SystemClock};
use gearbox_log::{
    AppendError, Partition, PartitionConfig, ReadError, Retention, SyncMode, Unavailable,
};
use std::path::Path;
use std::sync::Arc;

fn batch(n: usize, ts: i64, tag: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(RecordInput {
            timestamp: ts + i as i64,
            key: Some(format!("k{i}").into_bytes()),
            value: Some(format!("{tag}-{i}").into_bytes()),
            headers: vec![RecordHeader {
                key: "h".into(),
                value: Some(b"v".to_vec()),
            }],
        });
    }
    b.build().unwrap()
}

fn small(sync: SyncMode) -> PartitionConfig {
    let mut c = PartitionConfig::new(sync, Retention::FOREVER);
    c.segment_bytes_max = 2048;
    c.index_interval_bytes = 256;
    c
}

#[test]
fn append_read_reopen_on_the_real_file_system() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p0");
    let p = Partition::create(
        Arc::new(OsStorage),
        Arc::new(SystemClock),
        &dir,
        small(SyncMode::Always),
    )
    .unwrap();
    let mut expected = Vec::new();
    for i in 0..50 {
        let a = p
            .append(&batch(3, 1000 + i * 10, &format!("b{i}")))
            .unwrap();
        assert_eq!(a.base_offset, i as u64 * 3);
        assert_eq!(a.last_offset, i as u64 * 3 + 2);
        expected.extend((0..3).map(|j| format!("b{i}-{j}")));
    }
    assert!(
        p.segment_count() > 2,
        "segments rolled by size: {} segments, {} bytes, {:?}",
        p.segment_count(),
        p.size_bytes(),
        p.unavailable()
    );
    assert_eq!(p.high_watermark(), 150);
    let values = |p: &Partition, from: u64| -> Vec<String> {
        let mut out = Vec::new();
        let mut next = from;
        while next < p.high_watermark() {
            let recs = p.read_records(next, 700).unwrap();
            assert!(!recs.is_empty());
            for r in recs {
                assert_eq!(r.offset as u64, next, "contiguous offsets");
                next += 1;
                out.push(String::from_utf8(r.value.unwrap()).unwrap());
            }
        }
        out
    };
    assert_eq!(values(&p, 0), expected);
    assert_eq!(values(&p, 77), expected[77..]);
    p.close().unwrap();
    assert!(matches!(
        p.append(&batch(1, 0, "x")),
        Err(AppendError::Unavailable {
            source: Unavailable::Closed,
            ..
        })
    ));

    let p = Partition::open(
        Arc::new(OsStorage),
        Arc::new(SystemClock),
        &dir,
        small(SyncMode::Always),
    )
    .unwrap();
    assert_eq!(p.recovery().truncated_bytes, 0);
    assert_eq!(p.recovery().indexes_rebuilt, 0);
    assert_eq!(values(&p, 0), expected);
    assert_eq!(p.offset_for_timestamp(1000 + 25 * 10).unwrap(), Some(75));
    assert_eq!(
        p.offset_for_timestamp(1000 + 25 * 10 + 1).unwrap(),
        Some(76)
    );
    assert_eq!(p.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(p.offset_for_timestamp(1_000_000).unwrap(), None);
    assert!(matches!(
        p.read(151, 100),
        Err(ReadError::OffsetOutOfRange {
            requested: 151,
            high_watermark: 150,
            ..
        })
    ));
    let a = p.append(&batch(2, 5000, "after")).unwrap();
    assert_eq!(a.base_offset, 150);
}

#[test]
fn retention_by_size_and_time_deletes_whole_sealed_segments() {
    let disk = SimDisk::new();
    let clock = Arc::new(SimClock::new(1_000_000));
    let mut cfg = small(SyncMode::Always);
    cfg.retention = Retention {
        bytes_max: Some(3000),
        ms_max: None,
    };
    let dir = Path::new("/d/p");
    let p = Partition::create(disk.clone(), clock.clone(), dir, cfg.clone()).unwrap();
    for i in 0..60 {
        p.append(&batch(2, 1_000_000 + i, "r")).unwrap();
    }
    let before = p.size_bytes();
    let deleted = p.apply_retention().unwrap();
    assert!(
        deleted > 0,
        "{} segments, {} bytes",
        p.segment_count(),
        before
    );
    assert!(
        p.size_bytes() < before && p.size_bytes() >= 3000,
        "never drops below bytes_max"
    );
    let start = p.log_start_offset();
    assert!(start > 0);
    assert!(matches!(
        p.read(0, 100),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    assert_eq!(p.read_records(start, 100).unwrap()[0].offset as u64, start);
    drop(p);
    let p = Partition::open(disk.clone(), clock.clone(), dir, cfg.clone()).unwrap();
    assert_eq!(p.log_start_offset(), start, "log start survives reopen");

    cfg.retention = Retention {
        bytes_max: None,
        ms_max: Some(1000),
    };
    let p = Partition::open(disk, clock.clone(), dir, cfg).unwrap();
    assert_eq!(p.apply_retention().unwrap(), 0, "nothing is old yet");
    clock.advance(10_000);
    assert!(p.apply_retention().unwrap() > 0);
    assert_eq!(p.segment_count(), 1, "only the active segment is left");
}

fn sim() -> (Arc<SimDisk>, Arc<SimClock>) {
    (SimDisk::new(), Arc::new(SimClock::new(1_700_000_000_000)))
}

#[test]
fn a_failed_sync_is_sticky_and_nothing_after_it_is_acknowledged() {
    let (disk, clock) = sim();
    let dir = Path::new("/s/p");
    let p = Partition::create(disk.clone(), clock.clone(), dir, small(SyncMode::Always)).unwrap();
    p.append(&batch(2, 1, "ok")).unwrap();
    disk.fail_next_sync();
    let err = p.append(&batch(2, 1, "lost")).unwrap_err();
    assert!(
        matches!(
            &err,
            AppendError::Unavailable {
                source: Unavailable::Failed { op: "sync", .. },
                ..
            }
        ),
        "{err}"
    );
    // The disk works again, but the partition does not: nothing more is acknowledged.
    for _ in 0..3 {
        assert!(matches!(
            p.append(&batch(1, 1, "later")),
            Err(AppendError::Unavailable { .. })
        ));
    }
    assert_eq!(
        p.high_watermark(),
        2,
        "readers never see the batch whose sync failed"
    );
    // A restart runs recovery and the partition accepts appends again.
    drop(p);
    let p = Partition::open(disk, clock, dir, small(SyncMode::Always)).unwrap();
    let a = p.append(&batch(1, 1, "after")).unwrap();
    assert!(
        a.base_offset == 2 || a.base_offset == 4,
        "the failed batch may or may not have reached the disk"
    );
}

#[test]
fn disk_full_is_a_typed_error_that_keeps_nothing_and_heals() {
    let (disk, clock) = sim();
    let dir = Path::new("/f/p");
    let p = Partition::create(disk.clone(), clock.clone(), dir, small(SyncMode::Always)).unwrap();
    p.append(&batch(2, 1, "before")).unwrap();
    let used: u64 = disk
        .files()
        .iter()
        .map(|f| disk.read_file(f).unwrap().len() as u64)
        .sum();
    disk.set_capacity_bytes(Some(used + 10));
    let err = p.append(&batch(2, 1, "too-big")).unwrap_err();
    assert!(matches!(err, AppendError::DiskFull { .. }), "{err}");
    assert!(p.unavailable().is_none(), "disk full is not sticky");
    assert_eq!(p.high_watermark(), 2);
    disk.set_capacity_bytes(None);
    let a = p.append(&batch(1, 1, "after")).unwrap();
    assert_eq!(a.base_offset, 2, "the rejected batch left no trace");
    let values: Vec<_> = p
        .read_records(0, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(
        values,
        [
            b"before-0".to_vec(),
            b"before-1".to_vec(),
            b"after-0".to_vec()
        ]
    );
}

#[test]
fn a_torn_tail_is_truncated_with_a_warning_and_a_counter() {
    let (disk, clock) = sim();
    let dir = Path::new("/t/p");
    let mut cfg = small(SyncMode::Never);
    cfg.segment_bytes_max = 1 << 20;
    let p = Partition::create(disk.clone(), clock.clone(), dir, cfg.clone()).unwrap();
    p.append(&batch(3, 1, "synced")).unwrap();
    p.flush().unwrap();
    p.append(&batch(3, 1, "unsynced")).unwrap();
    // Keep the unsynced write but cut it mid-batch, as a power cut can.
    let seg = dir.join(format!("{:020}.log", 0));
    let full = disk.read_file(&seg).unwrap();
    let image = disk.crash_image(gearbox_log::io::sim::Torn::None);
    image.write_raw(&seg, &full[..full.len() - 7]);
    let p = Partition::open(image, clock, dir, cfg).unwrap();
    let report = p.recovery();
    assert!(report.truncated_bytes > 0, "{report:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("torn tail")),
        "{report:?}"
    );
    assert!(report.corruption.is_none());
    assert_eq!(p.stats().torn_truncations, 1);
    assert_eq!(p.high_watermark(), 3);
    assert_eq!(p.append(&batch(1, 1, "next")).unwrap().base_offset, 3);
}

#[test]
fn a_bad_batch_below_the_durable_point_is_corruption_not_a_torn_tail() {
    let (disk, clock) = sim();
    let dir = Path::new("/c/p");
    let mut cfg = small(SyncMode::Always);
    cfg.segment_bytes_max = 1 << 20;
    let p = Partition::create(disk.clone(), clock.clone(), dir, cfg.clone()).unwrap();
    for i in 0..5 {
        p.append(&batch(2, 1, &format!("b{i}"))).unwrap();
    }
    p.close().unwrap();
    // Rot in the middle of the active segment, below the checkpoint's durable point.
    let seg = dir.join(format!("{:020}.log", 0));
    let len = disk.read_file(&seg).unwrap().len() as u64;
    disk.flip_bit(&seg, len * 8 / 2);
    let before = disk.read_file(&seg).unwrap();
    let p = Partition::open(disk.clone(), clock, dir, cfg).unwrap();
    let corruption = p
        .recovery()
        .corruption
        .clone()
        .expect("corruption is reported");
    assert_eq!(corruption.segment_base, 0);
    assert_eq!(
        disk.read_file(&seg).unwrap(),
        before,
        "recovery never truncates below the durable point"
    );
    assert!(matches!(
        p.append(&batch(1, 1, "x")),
        Err(AppendError::Unavailable {
            source: Unavailable::Corrupted(_),
            ..
        })
    ));
    let err = p.read_records(corruption.offset, 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            ReadError::OffsetOutOfRange { .. } | ReadError::Corrupted { .. }
        ),
        "{err}"
    );
    // Batches before the damage stay readable.
    assert_eq!(
        p.read_records(0, 1).unwrap()[0].value.as_deref(),
        Some(&b"b0-0"[..])
    );
}

#[test]
fn missing_or_wrong_indexes_are_rebuilt_from_the_segment() {
    let (disk, clock) = sim();
    let dir = Path::new("/i/p");
    let p = Partition::create(disk.clone(), clock.clone(), dir, small(SyncMode::Always)).unwrap();
    for i in 0..40 {
        p.append(&batch(3, i * 5, "x")).unwrap();
    }
    let expected = p.read_records(0, 1 << 20).unwrap();
    p.close().unwrap();
    let indexes: Vec<_> = disk
        .files()
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "index"))
        .collect();
    assert!(indexes.len() >= 2);
    disk.remove_file(&indexes[0]).unwrap();
    disk.write_raw(&indexes[1], b"not an index");
    let p = Partition::open(disk, clock, dir, small(SyncMode::Always)).unwrap();
    assert_eq!(p.recovery().indexes_rebuilt, 2);
    assert_eq!(p.read_records(0, 1 << 20).unwrap(), expected);
    assert_eq!(p.offset_for_timestamp(100).unwrap(), Some(60));
}

#[test]
fn concurrent_appends_share_syncs_and_stay_contiguous() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
    cfg.segment_bytes_max = 64 << 10;
    let p = Arc::new(
        Partition::create(Arc::new(OsStorage), Arc::new(SystemClock), tmp.path(), cfg).unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| (p.append(&batch(2, 0, &format!("t{t}-{i}"))).unwrap(), t, i))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acks: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acks.sort_by_key(|(a, _, _)| a.base_offset);
    for (i, (a, t, n)) in acks.iter().enumerate() {
        assert_eq!(a.base_offset, i as u64 * 2, "no gaps, no overlaps");
        let got = p.read_records(a.base_offset, 1).unwrap();
        assert_eq!(
            got[0].value.as_deref(),
            Some(format!("t{t}-{n}-0").as_bytes())
        );
    }
    let stats = p.stats();
    assert_eq!(stats.appends, 400);
    assert!(
        stats.syncs < stats.appends,
        "group commit shared syncs: {stats:?}"
    );
}

#[test]
fn limits_and_bad_input_are_typed_errors() {
    let (disk, clock) = sim();
    let mut cfg = small(SyncMode::Always);
    cfg.batch_bytes_max = 300;
    let p = Partition::create(disk, clock, Path::new("/l/p"), cfg.clone()).unwrap();
    let big = batch(20, 0, "big");
    assert!(matches!(
        p.append(&big),
        Err(AppendError::BatchTooLarge { max: 300, .. })
    ));
    let mut bad = batch(1, 0, "bad");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(p.append(&bad), Err(AppendError::InvalidBatch(_))));
    assert!(matches!(
        p.append(&[0u8; 10]),
        Err(AppendError::InvalidBatch(_))
    ));
    assert_eq!(p.high_watermark(), 0, "nothing was appended");
    // A read returns at most read_bytes_max beyond its first batch.
    for _ in 0..10 {
        p.append(&batch(1, 0, "r")).unwrap();
    }
    let one = p.read(0, 1).unwrap();
    assert_eq!(
        one.batches.len(),
        1,
        "at least one whole batch even when it exceeds max_bytes"
    );
    cfg.read_bytes_max = 0;
    assert!(matches!(
        cfg.validate(),
        Err(gearbox_log::OpenError::InvalidConfig {
            field: "read_bytes_max",
            ..
        })
    ));
    cfg.read_bytes_max = 1;
    cfg.segment_bytes_max = 1;
    assert!(matches!(
        cfg.validate(),
        Err(gearbox_log::OpenError::InvalidConfig {
            field: "segment_bytes_max",
            ..
        })
    ));
}

#[test]
fn segments_roll_by_age() {
    let (disk, clock) = sim();
    let mut cfg = small(SyncMode::Always);
    cfg.segment_bytes_max = 1 << 20;
    cfg.segment_age_ms_max = 1000;
    let p = Partition::create(disk, clock.clone(), Path::new("/a/p"), cfg).unwrap();
    p.append(&batch(1, 0, "a")).unwrap();
    p.append(&batch(1, 0, "b")).unwrap();
    assert_eq!(p.segment_count(), 1);
    clock.advance(1000);
    p.append(&batch(1, 0, "c")).unwrap();
    assert_eq!(p.segment_count(), 2);
}
