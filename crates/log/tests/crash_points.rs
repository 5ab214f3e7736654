//! A crash at every write and sync point of a scripted workload, on a disk that drops whatever
//! was not synced and may tear the last unsynced write at a sector boundary.
//!
//! The workload covers several partitions in two topics, segment rolls, retention and a topic
//! created midway. For crash point `n` the script runs until the disk refuses its `n`-th
//! mutating operation (the process "dies" there). Two images survive each crash: only the
//! synced bytes, and the synced bytes plus a torn prefix of the unsynced ones. Each is
//! recovered, and must hold exactly the acknowledged batches at their acknowledged offsets,
//! plus at most the one batch that was in flight, and nothing else.

use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::io::Clock;
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use gearbox_log::{Log, LogOptions, PartitionConfig, Retention, SyncMode, TopicConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const ROOT: &str = "/data";
const APPENDS: usize = 120;

/// A partition: (topic, partition index).
type Key = (String, u32);
/// The record values of one batch.
type Values = Vec<Vec<u8>>;

/// What the workload was told, in order: the test's model of acknowledged state.
#[derive(Debug, Default, Clone)]
struct History {
    /// Acknowledged batches per (topic, partition): base offset → record values.
    acked: BTreeMap<Key, BTreeMap<u64, Values>>,
    /// The batch whose append was cut short by the crash, if any.
    in_flight: Option<(Key, Values)>,
    /// Topics whose creation was acknowledged.
    topics: Vec<String>,
    /// Lowest log start each partition may recover to (from acknowledged retention).
    log_start_min: BTreeMap<Key, u64>,
    /// Whether the crash hit a retention pass (so the log start may be anywhere above the min).
    retention_in_flight: bool,
}

fn options(disk: &Arc<SimDisk>, clock: &Arc<SimClock>) -> LogOptions {
    LogOptions {
        storage: disk.clone(),
        clock: clock.clone(),
        background: false,
        retention_check_interval_ms: u64::MAX,
    }
}

fn config(partitions: u32) -> TopicConfig {
    let mut partition = PartitionConfig::new(
        SyncMode::Always,
        Retention {
            bytes_max: Some(2000),
            ms_max: None,
        },
    );
    partition.segment_bytes_max = 1024;
    partition.index_interval_bytes = 128;
    partition.checkpoint_interval_ms = 5;
    TopicConfig {
        partitions,
        partition,
    }
}

fn values(i: usize) -> Vec<Vec<u8>> {
    (0..1 + i % 3)
        .map(|r| format!("batch{i}-rec{r}-{}", "x".repeat(40 + 4 * (i % 17))).into_bytes())
        .collect()
}

fn build(values: &[Vec<u8>], ts: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(RecordInput {
            timestamp: ts,
            key: None,
            value: Some(v.clone()),
            headers: vec![],
        });
    }
    b.build().unwrap()
}

/// Runs the workload until it finishes or the disk refuses an operation.
fn run(disk: &Arc<SimDisk>, clock: &Arc<SimClock>) -> History {
    let mut h = History::default();
    let Ok(log) = Log::open(Path::new(ROOT), options(disk, clock)) else {
        return h;
    };
    if log.create_topic("orders", config(3)).is_err() {
        return h;
    }
    h.topics.push("orders".into());
    for i in 0..APPENDS {
        clock.advance(2);
        if i == APPENDS / 2 {
            if log.create_topic("audit", config(1)).is_err() {
                return h;
            }
            h.topics.push("audit".into());
        }
        if i % 12 == 11 {
            h.retention_in_flight = true;
            if log.apply_retention() > 0 && disk.is_crashed() {
                return h;
            }
            for t in log.topics() {
                for (p, part) in t.partitions().iter().enumerate() {
                    h.log_start_min
                        .insert((t.name().to_string(), p as u32), part.log_start_offset());
                }
            }
            if disk.is_crashed() {
                return h;
            }
            h.retention_in_flight = false;
        }
        let (topic, p) = if i >= APPENDS / 2 && i % 4 == 0 {
            ("audit", 0)
        } else {
            ("orders", (i % 3) as u32)
        };
        let vals = values(i);
        let key = (topic.to_string(), p);
        h.in_flight = Some((key.clone(), vals.clone()));
        let part = log.topic(topic).unwrap().partition(p).unwrap().clone();
        match part.append(&build(&vals, clock.now_ms())) {
            Ok(a) => {
                h.acked.entry(key).or_default().insert(a.base_offset, vals);
                h.in_flight = None;
            }
            Err(_) => return h,
        }
    }
    h
}

/// Recovers `image` and checks it against `h`. Returns a description of the first violation.
fn check(image: &Arc<SimDisk>, clock: &Arc<SimClock>, h: &History) -> Result<(), String> {
    let log = Log::open(Path::new(ROOT), options(image, clock))
        .map_err(|e| format!("open failed: {e}"))?;
    for name in &h.topics {
        if log.topic(name).is_none() {
            return Err(format!("acknowledged topic {name} is missing"));
        }
    }
    for topic in log.topics() {
        for (p, part) in topic.partitions().iter().enumerate() {
            let key = (topic.name().to_string(), p as u32);
            if let Some(c) = &part.recovery().corruption {
                return Err(format!("{key:?}: recovery reported corruption: {c}"));
            }
            let empty = BTreeMap::new();
            let acked = h.acked.get(&key).unwrap_or(&empty);
            let start = part.log_start_offset();
            let start_min = h.log_start_min.get(&key).copied().unwrap_or(0);
            if start < start_min {
                return Err(format!(
                    "{key:?}: log start {start} went back below {start_min}"
                ));
            }
            if !h.retention_in_flight && start != start_min {
                return Err(format!(
                    "{key:?}: log start {start} but retention acknowledged {start_min}"
                ));
            }
            // Read everything, checking that offsets are contiguous.
            let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut next = start;
            while next < part.high_watermark() {
                let records = part
                    .read_records(next, 1 << 16)
                    .map_err(|e| format!("{key:?}: read at {next}: {e}"))?;
                for r in records {
                    if r.offset as u64 != next {
                        return Err(format!(
                            "{key:?}: offset {} where {next} was expected",
                            r.offset
                        ));
                    }
                    got.push((next, r.value.unwrap_or_default()));
                    next += 1;
                }
            }
            // Every acknowledged batch at or above the log start is there, at its offsets.
            let mut acked_end = start;
            for (&base, vals) in acked {
                let last = base + vals.len() as u64 - 1;
                if last < start {
                    continue;
                }
                for (i, v) in vals.iter().enumerate() {
                    let offset = base + i as u64;
                    if offset < start {
                        continue;
                    }
                    match got.get((offset - start) as usize) {
                        Some((_, value)) if value == v => {}
                        Some(_) => {
                            return Err(format!(
                                "{key:?}: offset {offset} holds other data than acknowledged"
                            ));
                        }
                        None => return Err(format!("{key:?}: acknowledged offset {offset} lost")),
                    }
                }
                acked_end = last + 1;
            }
            // Beyond the acknowledged end: nothing, or exactly the batch that was in flight.
            let extra: Vec<Vec<u8>> = got
                .iter()
                .filter(|(o, _)| *o >= acked_end)
                .map(|(_, v)| v.clone())
                .collect();
            let allowed = match &h.in_flight {
                Some((k, vals)) if *k == key => extra.is_empty() || extra == *vals,
                _ => extra.is_empty(),
            };
            if !allowed {
                return Err(format!(
                    "{key:?}: {} unexpected records after offset {acked_end}",
                    extra.len()
                ));
            }
            // The recovered partition accepts appends right after what it holds.
            let hw = part.high_watermark();
            let a = part
                .append(&build(&[b"after".to_vec()], 0))
                .map_err(|e| format!("{key:?}: append: {e}"))?;
            if a.base_offset != hw {
                return Err(format!(
                    "{key:?}: append after recovery got offset {} not {hw}",
                    a.base_offset
                ));
            }
        }
    }
    Ok(())
}

/// Whether two images hold different files or bytes.
fn differs(a: &SimDisk, b: &SimDisk) -> bool {
    a.files() != b.files() || a.files().iter().any(|f| a.read_file(f) != b.read_file(f))
}

#[test]
fn recovery_yields_the_acknowledged_prefix_at_every_crash_point() {
    // A dry run counts the workload's mutating operations: each is a crash point.
    let disk = SimDisk::new();
    let clock = Arc::new(SimClock::new(1_700_000_000_000));
    let full = run(&disk, &clock);
    assert_eq!(full.topics.len(), 2, "the workload itself must succeed");
    assert!(full.acked.values().map(BTreeMap::len).sum::<usize>() == APPENDS);
    let total_ops = disk.ops();
    let segments = disk
        .files()
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .count();
    assert!(
        segments > 8,
        "the workload must roll segments (has {segments})"
    );

    let mut checked = 0u64;
    let mut torn_differs = 0u64;
    for n in 1..=total_ops {
        let disk = SimDisk::new();
        let clock = Arc::new(SimClock::new(1_700_000_000_000));
        disk.crash_at_op(n);
        let history = run(&disk, &clock);
        assert!(
            disk.is_crashed() || n > disk.ops(),
            "crash point {n} was not reached"
        );
        for torn in [Torn::None, Torn::Prefix { seed: n }] {
            let image = disk.crash_image(torn);
            if torn != Torn::None && differs(&image, &disk.crash_image(Torn::None)) {
                torn_differs += 1;
            }
            if let Err(violation) = check(&image, &clock, &history) {
                panic!("crash at op {n}/{total_ops} ({torn:?}): {violation}");
            }
            checked += 1;
        }
    }
    println!(
        "crash points: {total_ops} write/sync points x 2 images = {checked} recoveries checked \
         ({segments} segments in the full run, {torn_differs} torn images kept unsynced bytes), 0 violations"
    );
    assert_eq!(checked, total_ops * 2);
}
