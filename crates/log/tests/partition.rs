//! Partition behaviour through the public API, on the real file system and on the simulator.

use gearbox_log::batch::{BatchBuilder, RecordHeader, RecordInput};
use gearbox_log::io::sim::{SimClock, SimDisk};
use gearbox_log::io::{OsStorage, SystemClock};
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
