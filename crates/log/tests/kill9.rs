//! A real child process appending under `SyncMode::Always` is killed with SIGKILL over and over;
//! no acknowledged batch may be lost and offsets must stay contiguous.
//!
//! Each cycle spawns `gearbox-log-writer` (crates/log/src/bin) on the same data directory with
//! 4 threads (two per partition, so group commit is exercised), lets it run for a seeded random
//! 20 to 120 ms, kills it with SIGKILL and records every complete `ack` line it printed. Some
//! extra cycles kill the child at a random point during startup instead (recovery, topic
//! creation). Every few cycles, and at the end, the log is opened in this process and checked
//! Jepsen-style: offsets contiguous from 0, every record well formed, every batch whole and
//! present at most once, and every acknowledged batch present at exactly its acknowledged offsets
//! with the same content hash. Batches that are present but were never acknowledged (written
//! before the kill, ack not yet printed) are allowed and counted.
//!
//! A SIGKILL does not lose the page cache, so bytes written before the kill survive even if they
//! were not synced yet: torn tails (and so recovery truncations) are expected to be rare or zero
//! here. They are not impossible: Linux checks for a fatal signal between the pages of a
//! `pwrite`, so a kill can cut a batch that straddles a page boundary. Power-loss style faults
//! are covered by the simulator tests; this test covers the real process, the real file system
//! and recovery of whatever state a kill leaves, in the child and in this process.
//!
//! Set `GEARBOX_KILL9_SEED` to replay a run's schedule (the seed is printed).

// The writer's value generator and hash, shared with it, so every record read back can be
// checked byte for byte.
#[path = "../src/bin/gearbox-log-writer/payload.rs"]
mod payload;

use gearbox_log::io::{OsStorage, SystemClock};
use gearbox_log::{Log, LogOptions, RETENTION_CHECK_INTERVAL_MS_DEFAULT};
use payload::{batch_values, next, parse_value, values_hash};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WRITER: &str = env!("CARGO_BIN_EXE_gearbox-log-writer");
const TOPIC: &str = "torture";
const PARTITIONS: u32 = 2;
const THREADS: u32 = 4;
/// Kills of a child that was appending: it had acknowledged at least one batch in that cycle.
const APPENDING_KILLS: u32 = 110;
/// Hard cap on cycles of either kind.
const CYCLES_MAX: u32 = 200;
/// One in this many cycles kills the child during startup instead.
const EARLY_KILL_ONE_IN: u64 = 8;
/// The in-process check runs after every this many cycles, and after the last one.
const CHECK_EVERY: u32 = 3;
const RUN_MS_MIN: u64 = 20;
const RUN_MS_MAX: u64 = 120;
const EARLY_KILL_MS_MAX: u64 = 30;
/// The whole test fails if it takes longer than this.
const BUDGET: Duration = Duration::from_secs(120);

/// An acknowledged batch, as the child printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    partition: u32,
    base: u64,
    last: u64,
    hash: u64,
    writer: u64,
    thread: u32,
    seq: u64,
}

/// A whole batch found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    base: u64,
    last: u64,
    hash: u64,
    writer: u64,
    thread: u32,
    seq: u64,
}

#[derive(Debug, Default)]
struct Totals {
    checks: u32,
    acked_verified: usize,
    recovered_unacked: usize,
    records: u64,
    checker_truncations: u32,
    checker_truncated_bytes: u64,
}

#[test]
fn sigkill_loses_no_acknowledged_batch() {
    let seed = std::env::var("GEARBOX_KILL9_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("GEARBOX_KILL9_SEED is a u64"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("kill9: seed {seed} (replay with GEARBOX_KILL9_SEED={seed})");
    let mut rng = seed;
    let tmp = KeepOnPanic(Some(tempfile::tempdir().unwrap()));
    let data = tmp.0.as_ref().unwrap().path().join("data");
    let started = Instant::now();

    // Acks by partition, keyed by base offset.
    let mut acks: Vec<BTreeMap<u64, Ack>> = vec![BTreeMap::new(); PARTITIONS as usize];
    let mut totals = Totals::default();
    let mut appending_kills = 0u32;
    let mut early_kills = 0u32;
    let mut kills_before_first_ack = 0u32;
    let mut child_truncations = 0u32;
    let mut partial_lines = 0u32;
    let mut cycle = 0u32;
    while appending_kills < APPENDING_KILLS {
        assert!(
            cycle < CYCLES_MAX,
            "kill9 (seed {seed}): {CYCLES_MAX} cycles but only {appending_kills} kills of an \
             appending child"
        );
        let elapsed = started.elapsed();
        assert!(
            elapsed < BUDGET,
            "kill9 (seed {seed}): over the {BUDGET:?} budget after {cycle} cycles \
             ({appending_kills} kills of an appending child)"
        );
        let early = next(&mut rng).is_multiple_of(EARLY_KILL_ONE_IN);
        let run_ms = if early {
            next(&mut rng) % (EARLY_KILL_MS_MAX + 1)
        } else {
            RUN_MS_MIN + next(&mut rng) % (RUN_MS_MAX - RUN_MS_MIN + 1)
        };
        let out = run_child(&data, cycle, early, run_ms, BUDGET - elapsed, seed);
        if out.partial_line {
            partial_lines += 1;
        }
        let mut cycle_acks = 0;
        for line in &out.lines {
            let mut f = line.split(' ');
            match f.next() {
                Some("ack") => {
                    let ack = parse_ack(line);
                    assert_eq!(
                        ack.writer,
                        u64::from(cycle),
                        "kill9 (seed {seed}, cycle {cycle}): ack from another writer: {line}"
                    );
                    let prev = acks[ack.partition as usize].insert(ack.base, ack.clone());
                    assert!(
                        prev.is_none(),
                        "kill9 (seed {seed}, cycle {cycle}): offset {} of partition {} \
                         acknowledged twice: {prev:?} and {ack:?}",
                        ack.base,
                        ack.partition
                    );
                    cycle_acks += 1;
                }
                Some("open") => {
                    let truncated: u64 =
                        f.nth(3).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                            panic!("kill9 (seed {seed}, cycle {cycle}): bad line {line:?}")
                        });
                    if truncated > 0 {
                        child_truncations += 1;
                    }
                }
                Some("ready") => {}
                _ => panic!("kill9 (seed {seed}, cycle {cycle}): unexpected line {line:?}"),
            }
        }
        if !out.ready {
            early_kills += 1;
        } else if cycle_acks == 0 {
            kills_before_first_ack += 1;
        } else {
            appending_kills += 1;
        }
        if (cycle + 1).is_multiple_of(CHECK_EVERY) || appending_kills == APPENDING_KILLS {
            check(&data, &acks, seed, cycle, &mut totals);
        }
        cycle += 1;
    }

    let acked: usize = acks.iter().map(BTreeMap::len).sum();
    assert_eq!(totals.acked_verified, acked, "the last check saw every ack");
    println!(
        "kill9: {} SIGKILLs ({appending_kills} while appending after acks, \
         {kills_before_first_ack} after ready but before the first ack, {early_kills} during \
         startup), {acked} acked batches, 0 lost, {} recovered-unacked, {} records, offsets \
         contiguous in {PARTITIONS} partitions; {} checks; recovery truncated a torn tail {} \
         times in checks ({} bytes) and {child_truncations} times in the child; {partial_lines} \
         partial last lines; {:.1} s",
        appending_kills + kills_before_first_ack + early_kills,
        totals.recovered_unacked,
        totals.records,
        totals.checks,
        totals.checker_truncations,
        totals.checker_truncated_bytes,
        started.elapsed().as_secs_f64(),
    );
}

/// Keeps the data directory for inspection if the test fails.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("kill9: kept the data directory {}", dir.keep().display());
        }
    }
}

struct ChildOutput {
    /// Complete lines (a last line without its newline is not here).
    lines: Vec<String>,
    /// Whether the child printed `ready` before it was killed.
    ready: bool,
    /// Whether the output ended in an incomplete line.
    partial_line: bool,
}

/// Runs one writer for `run_ms` (counted from `ready`, or from the spawn if `early`), kills it
/// with SIGKILL and returns everything it printed.
fn run_child(
    data: &Path,
    cycle: u32,
    early: bool,
    run_ms: u64,
    budget_left: Duration,
    seed: u64,
) -> ChildOutput {
    let mut child = Command::new(WRITER)
        .arg(data)
        .arg(cycle.to_string())
        .arg(THREADS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gearbox-log-writer");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<Result<String, String>>();
    let out_reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) if buf.last() == Some(&b'\n') => {
                    buf.pop();
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if tx.send(Ok(line)).is_err() {
                        return;
                    }
                }
                // EOF in the middle of a line: the kill cut it; it acknowledges nothing.
                Ok(_) => {
                    let _ = tx.send(Err(String::from_utf8_lossy(&buf).into_owned()));
                    return;
                }
                Err(e) => panic!("read the writer's stdout: {e}"),
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut lines = Vec::new();
    let mut ready = false;
    let mut partial_line = false;
    let mut disconnected = false;
    if !early {
        // Wait (bounded, not by sleeping) for the child to finish recovery and start appending.
        let deadline = Instant::now() + budget_left;
        while !ready {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(line)) => {
                    ready = line == "ready";
                    lines.push(line);
                }
                Ok(Err(_)) => {
                    partial_line = true;
                    disconnected = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kill9 (seed {seed}, cycle {cycle}): the writer did not become ready \
                         within the test's remaining budget of {budget_left:?}"
                    );
                }
            }
        }
    }
    if !disconnected {
        // The deliberate run time before the kill.
        std::thread::sleep(Duration::from_millis(run_ms));
    }
    // SIGKILL. If the child already exited it is a zombie until `wait`, so this still succeeds;
    // its exit status below tells the two apart.
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().expect("wait for the writer");
    for msg in rx {
        match msg {
            Ok(line) => {
                ready |= line == "ready";
                lines.push(line);
            }
            Err(_) => partial_line = true,
        }
    }
    out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    assert_eq!(
        status.signal(),
        Some(9),
        "kill9 (seed {seed}, cycle {cycle}): the writer exited by itself ({status}) before it was \
         killed; stderr:\n{stderr}\nstdout:\n{}",
        lines.join("\n")
    );
    ChildOutput {
        lines,
        ready,
        partial_line,
    }
}

fn parse_ack(line: &str) -> Ack {
    let f: Vec<&str> = line.split(' ').collect();
    let bad = || -> ! { panic!("malformed ack line {line:?}") };
    if f.len() != 8 || f[0] != "ack" {
        bad();
    }
    let ack = Ack {
        partition: f[1].parse().unwrap_or_else(|_| bad()),
        base: f[2].parse().unwrap_or_else(|_| bad()),
        last: f[3].parse().unwrap_or_else(|_| bad()),
        hash: u64::from_str_radix(f[4], 16).unwrap_or_else(|_| bad()),
        writer: f[5].parse().unwrap_or_else(|_| bad()),
        thread: f[6].parse().unwrap_or_else(|_| bad()),
        seq: f[7].parse().unwrap_or_else(|_| bad()),
    };
    if ack.partition >= PARTITIONS
        || ack.last < ack.base
        || ack.thread % PARTITIONS != ack.partition
    {
        bad();
    }
    ack
}

/// Opens the log in this process (running recovery) and checks everything acknowledged so far.
fn check(data: &Path, acks: &[BTreeMap<u64, Ack>], seed: u64, cycle: u32, totals: &mut Totals) {
    let ctx = format!(
        "kill9 (seed {seed}, after cycle {cycle}, data {})",
        data.display()
    );
    let log = Log::open(
        data,
        LogOptions {
            storage: Arc::new(OsStorage),
            clock: Arc::new(SystemClock),
            background: false,
            retention_check_interval_ms: RETENTION_CHECK_INTERVAL_MS_DEFAULT,
        },
    )
    .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
    let Some(topic) = log.topic(TOPIC) else {
        // Every kill so far came before the topic was created.
        assert!(
            acks.iter().all(BTreeMap::is_empty),
            "{ctx}: topic {TOPIC} is gone but batches were acknowledged"
        );
        return;
    };
    assert_eq!(topic.partitions().len(), PARTITIONS as usize, "{ctx}");
    totals.checks += 1;
    totals.acked_verified = 0;
    totals.recovered_unacked = 0;
    totals.records = 0;
    let mut batch_ids = HashSet::new();
    for (p, part) in topic.partitions().iter().enumerate() {
        let rec = part.recovery();
        assert!(
            rec.corruption.is_none(),
            "{ctx}: partition {p} recovered corrupted: {rec:?}"
        );
        assert!(
            part.unavailable().is_none(),
            "{ctx}: partition {p} refuses appends after recovery: {:?}",
            part.unavailable()
        );
        if rec.truncated_bytes > 0 {
            totals.checker_truncations += 1;
            totals.checker_truncated_bytes += rec.truncated_bytes;
        }
        assert_eq!(part.log_start_offset(), 0, "{ctx}: retention is forever");
        let found = read_partition(part, &ctx, p);
        totals.records += part.high_watermark();

        let acked = &acks[p];
        let mut lost = Vec::new();
        for ack in acked.values() {
            match found.get(&ack.base) {
                Some(f)
                    if f.last == ack.last
                        && f.hash == ack.hash
                        && (f.writer, f.thread, f.seq) == (ack.writer, ack.thread, ack.seq) => {}
                other => lost.push(format!("acked {ack:?}, found {other:?}")),
            }
        }
        assert!(
            lost.is_empty(),
            "{ctx}: partition {p} (high watermark {}, durable {}, recovery {rec:?}) lost {} of {} \
             acknowledged batches; the first ones:\n{}",
            part.high_watermark(),
            part.durable_offset(),
            lost.len(),
            acked.len(),
            lost.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
        totals.acked_verified += acked.len();
        totals.recovered_unacked += found.len() - acked.len();
        for f in found.values() {
            assert!(
                batch_ids.insert((f.writer, f.thread, f.seq)),
                "{ctx}: batch {}/{}/{} is in the log twice (again at partition {p} offset {})",
                f.writer,
                f.thread,
                f.seq,
                f.base
            );
            assert!(
                f.writer <= u64::from(cycle),
                "{ctx}: batch from a writer that never ran: {f:?}"
            );
        }
    }
    // Dropping without `close` leaves the files as recovery left them, like a crash would; the
    // next child opens them itself.
    drop(topic);
    drop(log);
}

/// A batch being reassembled from its records.
struct Partial {
    base: u64,
    writer: u64,
    thread: u32,
    seq: u64,
    expected: Vec<Vec<u8>>,
    seen: usize,
}

impl Partial {
    fn describe(&self) -> String {
        format!(
            "batch {}/{}/{} from offset {} ({} of {} records)",
            self.writer,
            self.thread,
            self.seq,
            self.base,
            self.seen,
            self.expected.len()
        )
    }
}

/// Reads partition `p` from 0 to its high watermark and returns its batches by base offset,
/// checking contiguity, record contents and batch integrity on the way.
fn read_partition(part: &gearbox_log::Partition, ctx: &str, p: usize) -> BTreeMap<u64, Found> {
    let hw = part.high_watermark();
    let mut found = BTreeMap::new();
    let mut open: Option<Partial> = None;
    let mut next_offset = 0u64;
    while next_offset < hw {
        let records = part
            .read_records(next_offset, 1 << 20)
            .unwrap_or_else(|e| panic!("{ctx}: partition {p}: read at {next_offset}: {e}"));
        assert!(
            !records.is_empty(),
            "{ctx}: partition {p}: empty read at {next_offset} below high watermark {hw}"
        );
        for r in records {
            if next_offset >= hw {
                break;
            }
            assert_eq!(
                r.offset as u64, next_offset,
                "{ctx}: partition {p}: offsets not contiguous (gap or duplicate)"
            );
            let value = r.value.unwrap_or_else(|| {
                panic!("{ctx}: partition {p}: null value at offset {next_offset}")
            });
            let (writer, thread, seq, idx) = parse_value(&value).unwrap_or_else(|| {
                panic!("{ctx}: partition {p}: malformed value at {next_offset}")
            });
            assert_eq!(
                thread % PARTITIONS,
                p as u32,
                "{ctx}: partition {p}: offset {next_offset} holds a record meant for another \
                 partition"
            );
            if idx == 0 {
                if let Some(cut) = &open {
                    panic!(
                        "{ctx}: partition {p}: {} cut short at offset {next_offset}",
                        cut.describe()
                    );
                }
                open = Some(Partial {
                    base: next_offset,
                    writer,
                    thread,
                    seq,
                    expected: batch_values(writer, thread, seq),
                    seen: 0,
                });
            }
            let Some(b) = open.as_mut() else {
                panic!("{ctx}: partition {p}: offset {next_offset} starts mid-batch (index {idx})")
            };
            assert!(
                (b.writer, b.thread, b.seq, b.seen) == (writer, thread, seq, idx as usize)
                    && b.expected.get(idx as usize) == Some(&value),
                "{ctx}: partition {p}: offset {next_offset} holds record {writer}/{thread}/{seq}/\
                 {idx} with wrong contents, or inside {}",
                b.describe()
            );
            b.seen += 1;
            if b.seen == b.expected.len() {
                let f = Found {
                    base: b.base,
                    last: next_offset,
                    hash: values_hash(&b.expected),
                    writer,
                    thread,
                    seq,
                };
                found.insert(f.base, f);
                open = None;
            }
            next_offset += 1;
        }
    }
    if let Some(b) = &open {
        panic!(
            "{ctx}: partition {p}: {} is incomplete at the high watermark {hw}",
            b.describe()
        );
    }
    found
}
