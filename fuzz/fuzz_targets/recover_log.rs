//! `Log::open` over an arbitrary log root: topic `meta` files and partition directories.
//!
//! The input is a [`Script`] as for `recover_dir`, addressing files under `/fuzz/log` (topic
//! `meta` and `meta.tmp` files, partition files of topics `t` and `u`, invalid topic names,
//! stray files), optionally on top of a root a real `Log` wrote (mode bit 0; bit 1 picks a clean
//! or a torn one). If the log opens, every partition (up to four per topic) is exercised as in
//! `recover_dir`, a topic is created and appended to, and the log is reopened from a crash image.
//!
//! Asserted: a log that opened reopens; acknowledged appends survive the reopen when they were
//! synced (`SyncMode::Always`, or any mode after a successful `close`) and their partition had
//! no corruption; everything `exercise_partition` checks.

#![no_main]

use gearbox_fuzz::{
    Acked, Script, apply_file_ops, check_survivors, exercise_partition, log_bases, log_names,
    log_options, make_durable_dir, reseal_dir, restore, small_batch,
};
use gearbox_log::io::sim::{SimClock, SimDisk, Torn};
use gearbox_log::{Log, SyncMode, TopicConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;

/// Partitions exercised per topic.
const PARTITIONS_EXERCISED: usize = 4;

fuzz_target!(|data: &[u8]| gearbox_fuzz::run(|| one(data)));

fn one(data: &[u8]) {
    let script = Script::parse(data);
    let root = Path::new("/fuzz/log");
    let disk = SimDisk::new();
    make_durable_dir(&disk, root);
    if script.seeded() {
        restore(&disk, root, &log_bases()[script.base_variant() & 1]);
    }
    apply_file_ops(&disk, root, log_names(), &script);
    if script.reseal() {
        reseal_dir(&disk, root);
    }

    let clock = Arc::new(SimClock::new(script.clock_ms()));
    let Ok(log) = Log::open(root, log_options(&disk, &clock)) else {
        return;
    };
    let probes: Vec<(i64, u64)> = script.probes().collect();
    let appends: Vec<&[u8]> = script.appends().collect();

    // (topic, partition, synced on ack, healthy at open, acknowledged appends)
    let mut checks: Vec<(String, u32, bool, bool, Vec<Acked>)> = Vec::new();
    for topic in log.topics() {
        let always = topic.config().partition.sync == SyncMode::Always;
        for (i, p) in topic
            .partitions()
            .iter()
            .enumerate()
            .take(PARTITIONS_EXERCISED)
        {
            let healthy = p.recovery().corruption.is_none();
            let acked = exercise_partition(p, script.clock_ms(), &probes, &appends);
            checks.push((topic.name().to_owned(), i as u32, always, healthy, acked));
        }
    }
    let created = log.create_topic(
        "n",
        TopicConfig {
            partitions: 1,
            partition: script.config(),
        },
    );
    if let Ok(topic) = &created {
        let p = &topic.partitions()[0];
        let acked = exercise_partition(p, script.clock_ms(), &[], &[&small_batch(0, 9)]);
        assert!(!acked.is_empty(), "a new topic accepts an append");
        checks.push(("n".into(), 0, true, true, acked));
    }

    let (image, closed) = if script.torn_crash() {
        drop(log);
        let seed = u64::from(script.seed);
        (disk.crash_image(Torn::Prefix { seed }), false)
    } else {
        let closed = log.close().is_ok();
        (disk.crash_image(Torn::None), closed)
    };
    let log = match Log::open(root, log_options(&image, &clock)) {
        Ok(log) => log,
        Err(e) => panic!("a log that opened failed to reopen: {e}"),
    };
    for (name, partition, always, healthy, acked) in &checks {
        if !(*healthy && (*always || closed)) {
            continue;
        }
        let topic = log
            .topic(name)
            .unwrap_or_else(|| panic!("topic {name} lost on reopen"));
        let p = topic
            .partition(*partition)
            .unwrap_or_else(|| panic!("partition {name}/{partition} lost on reopen"));
        check_survivors(p, acked, &format!("{name}/{partition} after reopen"));
    }
    log.apply_retention();
    for topic in log.topics().iter().take(2) {
        if let Some(p) = topic.partition(0) {
            exercise_partition(p, script.clock_ms(), &probes, &[]);
        }
    }
    let _ = log.delete_topic("t");
    let _ = log.close();
}
