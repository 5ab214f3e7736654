//! A child process for the SIGKILL test (`crates/log/tests/kill9.rs`); not a user tool.
//!
//! Usage: `gearbox-log-writer <data-dir> <writer-id> <threads>`
//!
//! It opens (and so recovers) the log at `<data-dir>`, creates topic `torture` (2 partitions,
//! `SyncMode::Always`, retention forever, 64 KiB segments so that they roll often) if it is
//! missing, and then runs `<threads>` threads that append forever until the process is killed.
//! Thread `t` appends to partition `t % 2`; its `s`-th batch holds 1 to 8 records, every one of
//! whose values is laid out (little-endian) as
//!
//! `"GBK9" | writer-id u64 | thread u32 | sequence u64 | record index u32 | record count u32 |
//! payload length u32 | payload`
//!
//! where the count, the payload length (16 to 200 bytes) and the payload bytes are all derived
//! deterministically from the ids, so a reader can check every record on its own.
//!
//! Lines on stdout, each written with one write of the whole line and flushed:
//! - `open <partition> <high-watermark> <log-start> <truncated-bytes>` once per partition, after
//!   recovery;
//! - `ready` once the topic exists and the append threads are about to start;
//! - `ack <partition> <base-offset> <last-offset> <hash> <writer-id> <thread> <sequence>` only
//!   after `append` returned `Ok`, where `<hash>` is 16 hex digits of `values_hash` over the
//!   batch's record values in order.
//!
//! A line is only an acknowledgement if it is complete (ends in a newline). Any error is
//! printed to stderr as `err ...` and the process exits with a nonzero status (1 at startup, 2
//! on a failed append).

mod payload;

use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::io::{OsStorage, SystemClock};
use gearbox_log::{
    Log, LogOptions, Partition, PartitionConfig, RETENTION_CHECK_INTERVAL_MS_DEFAULT, Retention,
    SyncMode, TopicConfig,
};
use payload::{batch_values, values_hash};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

const TOPIC: &str = "torture";
const PARTITIONS: u32 = 2;
const SEGMENT_BYTES_MAX: u64 = 64 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        fail(
            1,
            &format!(
                "usage: {} <data-dir> <writer-id> <threads>",
                args.first().map_or("gearbox-log-writer", String::as_str)
            ),
        );
    }
    let dir = PathBuf::from(&args[1]);
    let writer: u64 = args[2]
        .parse()
        .unwrap_or_else(|e| fail(1, &format!("bad writer id {:?}: {e}", args[2])));
    let threads: u32 = args[3]
        .parse()
        .unwrap_or_else(|e| fail(1, &format!("bad thread count {:?}: {e}", args[3])));
    if threads == 0 {
        fail(1, "thread count must be at least 1");
    }

    let log = Log::open(
        &dir,
        LogOptions {
            storage: Arc::new(OsStorage),
            clock: Arc::new(SystemClock),
            background: false,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
        },
    )
    .unwrap_or_else(|e| fail(1, &format!("open {}: {e}", dir.display())));
    let topic = match log.topic(TOPIC) {
        Some(t) => t,
        None => {
            let mut partition = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
            partition.segment_bytes_max = SEGMENT_BYTES_MAX;
            log.create_topic(
                TOPIC,
                TopicConfig {
                    partitions: PARTITIONS,
                    partition,
                },
            )
            .unwrap_or_else(|e| fail(1, &format!("create topic {TOPIC}: {e}")))
        }
    };
    if topic.partitions().len() != PARTITIONS as usize {
        fail(
            1,
            &format!(
                "topic {TOPIC} has {} partitions, expected {PARTITIONS}",
                topic.partitions().len()
            ),
        );
    }
    for (p, part) in topic.partitions().iter().enumerate() {
        if let Some(c) = &part.recovery().corruption {
            fail(1, &format!("partition {p} recovered corrupted: {c}"));
        }
        emit(&format!(
            "open {p} {} {} {}\n",
            part.high_watermark(),
            part.log_start_offset(),
            part.recovery().truncated_bytes
        ));
    }
    emit("ready\n");

    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let part = Arc::clone(&topic.partitions()[(t % PARTITIONS) as usize]);
            std::thread::Builder::new()
                .name(format!("writer-{t}"))
                .spawn(move || append_forever(&part, writer, t))
                .unwrap_or_else(|e| fail(1, &format!("spawn thread {t}: {e}")))
        })
        .collect();
    for h in handles {
        // The threads only return by exiting the process; a join error is a panic.
        if h.join().is_err() {
            fail(2, "an append thread panicked");
        }
    }
}

fn append_forever(part: &Partition, writer: u64, thread: u32) {
    let partition = thread % PARTITIONS;
    for seq in 0u64.. {
        let values = batch_values(writer, thread, seq);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let mut builder = BatchBuilder::new();
        for v in &values {
            builder.push(RecordInput {
                timestamp: now,
                key: None,
                value: Some(v.clone()),
                headers: Vec::new(),
            });
        }
        let bytes = builder
            .build()
            .unwrap_or_else(|e| fail(2, &format!("build batch {writer}/{thread}/{seq}: {e}")));
        match part.append(&bytes) {
            Ok(a) => emit(&format!(
                "ack {partition} {} {} {:016x} {writer} {thread} {seq}\n",
                a.base_offset,
                a.last_offset,
                values_hash(&values)
            )),
            Err(e) => fail(
                2,
                &format!("append {writer}/{thread}/{seq} to partition {partition}: {e}"),
            ),
        }
    }
}

/// Writes `line` to stdout in one write and flushes it; exits quietly if stdout is gone.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if out
        .write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(3);
    }
}

fn fail(code: i32, msg: &str) -> ! {
    eprintln!("err {msg}");
    std::process::exit(code);
}
