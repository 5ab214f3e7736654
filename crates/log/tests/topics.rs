//! Topics through the `Log`: durable creation and deletion, reopen, the interval flusher.

use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use gearbox_log::io::{OsStorage, SystemClock};
use gearbox_log::{Log, LogOptions, PartitionConfig, Retention, SyncMode, TopicConfig, TopicError};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn one(value: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    b.push(RecordInput {
        timestamp: 1,
        key: None,
        value: Some(value.as_bytes().to_vec()),
        headers: vec![],
    });
    b.build().unwrap()
}

fn opts(disk: &Arc<SimDisk>) -> LogOptions {
    LogOptions {
        storage: disk.clone(),
        clock: Arc::new(SimClock::new(0)),
        background: false,
        retention_check_interval_ms: u64::MAX,
    }
}

fn cfg(partitions: u32, sync: SyncMode) -> TopicConfig {
    TopicConfig {
        partitions,
        partition: PartitionConfig::new(sync, Retention::FOREVER),
    }
}

#[test]
fn topics_survive_a_crash_once_created_and_stay_gone_once_deleted() {
    let disk = SimDisk::new();
    let root = Path::new("/log");
    let log = Log::open(root, opts(&disk)).unwrap();
    log.create_topic("orders", cfg(3, SyncMode::Always))
        .unwrap();
    log.create_topic("gone", cfg(1, SyncMode::Always)).unwrap();
    log.topic("orders")
        .unwrap()
        .partition(2)
        .unwrap()
        .append(&one("x"))
        .unwrap();
    assert!(matches!(
        log.create_topic("orders", cfg(1, SyncMode::Always)),
        Err(TopicError::AlreadyExists(_))
    ));
    assert!(matches!(
        log.create_topic("bad/name", cfg(1, SyncMode::Always)),
        Err(TopicError::InvalidName { .. })
    ));
    assert!(matches!(
        log.create_topic("zero", cfg(0, SyncMode::Always)),
        Err(TopicError::Open(_))
    ));
    log.delete_topic("gone").unwrap();
    assert!(matches!(
        log.delete_topic("gone"),
        Err(TopicError::NotFound(_))
    ));

    let image = disk.crash_image(Torn::None);
    drop(log);
    let log = Log::open(root, opts(&image)).unwrap();
    let names: Vec<_> = log.topics().iter().map(|t| t.name().to_string()).collect();
    assert_eq!(names, ["orders"]);
    let t = log.topic("orders").unwrap();
    assert_eq!(t.config().partitions, 3);
    assert_eq!(
        t.partition(2).unwrap().read_records(0, 100).unwrap()[0]
            .value
            .as_deref(),
        Some(&b"x"[..])
    );
    // The name is free again.
    log.create_topic("gone", cfg(2, SyncMode::Never)).unwrap();
}

#[test]
fn a_half_created_topic_is_removed_on_open() {
    let disk = SimDisk::new();
    let root = Path::new("/log");
    drop(Log::open(root, opts(&disk)).unwrap());
    // Crash at every step of a creation: the topic is either whole or absent.
    let base_ops = disk.ops();
    let full = {
        let d = disk.crash_image(Torn::None);
        let log = Log::open(root, opts(&d)).unwrap();
        let before = d.ops();
        log.create_topic("t", cfg(2, SyncMode::Always)).unwrap();
        d.ops() - before
    };
    assert!(base_ops > 0 && full > 4);
    for n in 1..=full {
        let d = disk.crash_image(Torn::None);
        let log = Log::open(root, opts(&d)).unwrap();
        d.crash_at_op(d.ops() + n);
        let created = log.create_topic("t", cfg(2, SyncMode::Always)).is_ok();
        let image = d.crash_image(Torn::None);
        let log = Log::open(root, opts(&image)).unwrap();
        match log.topic("t") {
            Some(t) => assert_eq!(t.partitions().len(), 2),
            None => assert!(!created, "crash at step {n}: acknowledged topic missing"),
        }
    }
}

#[test]
fn the_background_flusher_syncs_interval_topics() {
    let tmp = tempfile::tempdir().unwrap();
    let options = LogOptions {
        storage: Arc::new(OsStorage),
        clock: Arc::new(SystemClock),
        background: true,
        retention_check_interval_ms: 1000,
    };
    let log = Log::open(tmp.path(), options).unwrap();
    let topic = log
        .create_topic("fast", cfg(1, SyncMode::Interval { ms: 20 }))
        .unwrap();
    let p = topic.partition(0).unwrap();
    p.append(&one("a")).unwrap();
    assert_eq!(
        p.high_watermark(),
        1,
        "interval mode acknowledges after the write"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.durable_offset() < 1 {
        assert!(Instant::now() < deadline, "the flusher never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
    log.close().unwrap();
}
