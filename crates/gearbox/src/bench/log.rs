//! `gearbox bench log`: durable append throughput of the embedded log against the disk's own
//! durable-write bandwidth, measured in the same run and the same directory.
//!
//! What runs, in order, each for `--seconds`:
//! 0. A warm-up of `--warmup-seconds` of the same writes as the baseline, not measured.
//! 1. The disk baseline: 1 MiB `write` + `fdatasync`, appending to a new file (MB/s).
//! 2. The disk's 4 KiB `write` + `fdatasync` latency (p50/p99), for at most
//!    [`disk::LATENCY_PROBE_SECONDS_MAX`] seconds: the fixed cost every group commit pays.
//! 3. For each appender count: a fresh [`Partition`] (real file system, `SyncMode::Always`,
//!    keep-forever retention, default 1 GiB segments, so a fast disk rolls a few segments per
//!    case) and that many threads, each appending one prebuilt batch of `--records-per-batch`
//!    records over and over. An append returns only once an `fdatasync` covers it; threads that
//!    arrive while a sync is in flight share the next one (group commit).
//! 4. The same with `--small-records-per-batch`, where the group-commit effect dominates.
//! 5. The disk baseline again, so that drift of the disk during the run shows. The log's
//!    percentage is against the mean of the two baselines.
//!
//! Why a ratio: the target (`docs/benchmarks.md`, product targets §7) is that durable ingest
//! reaches at least 75% of what the disk itself does with 1 MiB write+fdatasync. Absolute MB/s
//! depend on the machine; the ratio shows what the log's own work costs on top of the disk.
//!
//! Nothing is deleted until the run ends, and an unmeasured warm-up comes first. Both keep
//! every measurement in the same, sustained regime. On the VM this was written on, deleting a
//! gigabyte of data made the next gigabyte of write+fdatasync run 3-5× faster than the
//! sustained rate (the page cache reuses the freed memory; growing it into fresh memory makes
//! each `write` several times slower, while `fdatasync` itself stays fast), so deleting each
//! case's data before the next would have handed every case such a burst and made the
//! comparison meaningless. `docs/benchmarks.md` has the measurements behind this.
//!
//! Limits: `--seconds` at most [`SECONDS_MAX`]; batches at most [`BENCH_BATCH_BYTES_MAX`];
//! at most [`APPENDERS_MAX`] threads and [`APPENDER_COUNTS_MAX`] appender counts; the run
//! writes at most `--gib-max` GiB (default [`GIB_MAX_DEFAULT`]), shared evenly between the
//! measurements, so a long run cannot fill the disk (a measurement that reaches its share
//! stops early, its rates use the time it ran, and the output flags it). Latencies go into
//! fixed-size histograms ([`Histogram`]), so memory does not grow with the run.

use super::disk::{self, WriteSync};
use super::hist::Histogram;
use super::traced::{IoCounts, TracedStorage};
use super::{Machine, Scratch, json_num, json_str};
use anyhow::{Context as _, bail};
use gearbox_log::batch::{BatchBuilder, RecordInput};
use gearbox_log::config::{BATCH_BYTES_MAX_DEFAULT, SEGMENT_BYTES_MAX_DEFAULT};
use gearbox_log::io::{Clock as _, OsStorage, Storage, SystemClock};
use gearbox_log::{Partition, PartitionConfig, Retention, SyncMode};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Longest `--seconds`.
pub const SECONDS_MAX: u64 = 120;
/// Largest `--record-bytes`.
pub const RECORD_BYTES_MAX: u32 = 1 << 20;
/// Largest `--records-per-batch` (the log allows up to 2^20, but that batch would not fit
/// [`BENCH_BATCH_BYTES_MAX`] at useful record sizes).
pub const RECORDS_PER_BATCH_MAX: u32 = 65_536;
/// Largest encoded batch the bench builds: 16 MiB (the log's own limit is 64 MiB). Each
/// appender's in-flight copy is one batch, so memory stays under appenders × this.
pub const BENCH_BATCH_BYTES_MAX: usize = 16 << 20;
/// Most appender threads in one case.
pub const APPENDERS_MAX: u32 = 256;
/// Most entries in `--appenders`.
pub const APPENDER_COUNTS_MAX: usize = 16;
/// Default `--warmup-seconds`.
pub const WARMUP_SECONDS_DEFAULT: u64 = 4;
/// Default `--gib-max`: at most this many GiB written by one run (all kept until the end).
pub const GIB_MAX_DEFAULT: u64 = 40;
/// Largest `--gib-max`.
pub const GIB_LIMIT: u64 = 1024;

/// Options of `gearbox bench log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Directory to make the scratch directory in [default: the system temp dir]. It must be on
    /// the disk you want to measure: the baseline and the log both write there. The scratch
    /// directory (gearbox-bench-<pid>-<time>) is deleted at the end unless --keep.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Seconds per measurement: each of the two disk baselines and each log case [max: 120].
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=SECONDS_MAX))]
    pub seconds: u64,

    /// Bytes of each record's value (no key, no headers) [max: 1048576].
    #[arg(long, value_name = "BYTES", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(RECORD_BYTES_MAX)))]
    pub record_bytes: u32,

    /// Records per batch in the main matrix [max: 65536; the batch must fit 16 MiB].
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(RECORDS_PER_BATCH_MAX)))]
    pub records_per_batch: u32,

    /// Records per batch in the second, small-batch matrix, where sharing syncs (group commit)
    /// matters most; 0 skips it.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(RECORDS_PER_BATCH_MAX)))]
    pub small_records_per_batch: u32,

    /// Concurrent appender threads, one case per entry, comma-separated [each 1..=256, at most
    /// 16 entries].
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "1,4,16",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(APPENDERS_MAX)))]
    pub appenders: Vec<u32>,

    /// Seconds of unmeasured 1 MiB write+fdatasync before the first measurement, so that every
    /// measurement sees the disk's sustained rate rather than a burst (virtual disks often run
    /// fast for the first GB or so, then slow down); 0 skips it [max: 120].
    #[arg(long, value_name = "N", default_value_t = WARMUP_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=SECONDS_MAX))]
    pub warmup_seconds: u64,

    /// Most GiB the whole run may write. Nothing is deleted before the end, so each
    /// measurement gets an equal share and stops early when it reaches it (its rates use the
    /// time it actually ran, and the output flags it) [max: 1024].
    #[arg(long, value_name = "GIB", default_value_t = GIB_MAX_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=GIB_LIMIT))]
    pub gib_max: u64,

    /// Count and time every write and fdatasync the log issues (segments vs checkpoint), to
    /// see where an append's time goes. Costs two clock reads per I/O call.
    #[arg(long)]
    pub io_breakdown: bool,

    /// Keep the scratch directory and all data written (may be many GiB).
    #[arg(long)]
    pub keep: bool,

    /// Print one JSON object on stdout instead of tables (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// One log measurement.
#[derive(Debug)]
struct Case {
    records_per_batch: u32,
    batch_bytes: usize,
    appenders: u32,
    elapsed: Duration,
    appends: u64,
    latency: Histogram,
    /// `PartitionStats::syncs`: data `fdatasync`s of segment files, including the one per roll.
    syncs: u64,
    segments: usize,
    capped: bool,
    /// Fewest and most appends made by one thread (fairness between appenders).
    thread_appends: (u64, u64),
    /// Segment-file and other-file counters, with `--io-breakdown`.
    io: Option<(IoCounts, IoCounts)>,
}

impl Case {
    fn secs(&self) -> f64 {
        self.elapsed.as_secs_f64()
    }
    fn appends_per_s(&self) -> f64 {
        self.appends as f64 / self.secs()
    }
    fn records_per_s(&self) -> f64 {
        self.appends_per_s() * f64::from(self.records_per_batch)
    }
    fn mb_per_s(&self) -> f64 {
        self.appends_per_s() * self.batch_bytes as f64 / 1e6
    }
    fn batches_per_sync(&self) -> f64 {
        self.appends as f64 / self.syncs as f64
    }
}

/// Everything one run measured.
#[derive(Debug)]
struct Report {
    command: String,
    dir: PathBuf,
    machine: Machine,
    seconds: u64,
    record_bytes: u32,
    warmup: Option<WriteSync>,
    before: WriteSync,
    latency_4k: WriteSync,
    after: WriteSync,
    matrices: Vec<Vec<Case>>,
}

impl Report {
    /// The disk bandwidth the log is compared with: the mean of the two baselines.
    fn disk_mb_per_s(&self) -> f64 {
        (self.before.mb_per_s() + self.after.mb_per_s()) / 2.0
    }
    fn pct_of_disk(&self, case: &Case) -> f64 {
        100.0 * case.mb_per_s() / self.disk_mb_per_s()
    }
}

/// Runs `gearbox bench log`.
///
/// # Errors
/// On invalid options, an I/O error, or a log error.
pub fn run(args: &LogArgs) -> anyhow::Result<()> {
    if args.appenders.len() > APPENDER_COUNTS_MAX {
        bail!(
            "--appenders lists {} counts; at most {APPENDER_COUNTS_MAX} are allowed",
            args.appenders.len()
        );
    }
    let mut batch_sizes = vec![args.records_per_batch];
    if args.small_records_per_batch > 0 {
        batch_sizes.push(args.small_records_per_batch);
    }
    let batches = batch_sizes
        .iter()
        .map(|&n| build_batch(n, args.record_bytes).map(|b| (n, b)))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let scratch = Scratch::create(args.dir.as_deref(), args.keep)?;
    let machine = Machine::probe(scratch.path());
    let duration = Duration::from_secs(args.seconds);
    let warmup_steps = usize::from(args.warmup_seconds > 0);
    let steps = 3 + warmup_steps + batches.len() * args.appenders.len();
    // Every measurement's data stays until the end (see the module docs), so the run's byte
    // budget is shared out evenly.
    let cap = (args.gib_max << 30) / steps as u64;
    let mut step = 0;
    let mut progress = |what: &str| {
        step += 1;
        eprintln!("[{step:>2}/{steps}] {what}");
    };
    eprintln!(
        "gearbox bench log: scratch {} on {} ({}), {} s per measurement",
        scratch.path().display(),
        machine.device,
        machine.fs_type,
        args.seconds
    );

    let warmup = if args.warmup_seconds > 0 {
        progress("disk: warm-up, 1 MiB write+fdatasync (not measured)");
        let warm = Duration::from_secs(args.warmup_seconds);
        Some(baseline(
            &scratch,
            "disk-warmup",
            disk::BANDWIDTH_WRITE_BYTES,
            warm,
            cap,
        )?)
    } else {
        None
    };
    progress("disk: 1 MiB write+fdatasync (before)");
    let before = baseline(
        &scratch,
        "disk-1mib-before",
        disk::BANDWIDTH_WRITE_BYTES,
        duration,
        cap,
    )?;
    progress("disk: 4 KiB write+fdatasync latency");
    let probe = duration.min(Duration::from_secs(disk::LATENCY_PROBE_SECONDS_MAX));
    let latency_4k = baseline(&scratch, "disk-4kib", disk::LATENCY_WRITE_BYTES, probe, cap)?;

    let mut matrices = Vec::new();
    for (records, batch) in &batches {
        let mut cases = Vec::new();
        for &appenders in &args.appenders {
            progress(&format!(
                "log: {appenders} appender(s), {records} records × {} B per batch",
                args.record_bytes
            ));
            let dir = scratch.path().join(format!("log-r{records}-a{appenders}"));
            let case = run_case(
                &dir,
                batch,
                *records,
                appenders,
                duration,
                cap,
                args.io_breakdown,
            )
            .with_context(|| format!("log case in {}", dir.display()))?;
            cases.push(case);
        }
        matrices.push(cases);
    }

    progress("disk: 1 MiB write+fdatasync (after)");
    let after = baseline(
        &scratch,
        "disk-1mib-after",
        disk::BANDWIDTH_WRITE_BYTES,
        duration,
        cap,
    )?;

    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        dir: scratch.path().to_path_buf(),
        machine,
        seconds: args.seconds,
        record_bytes: args.record_bytes,
        warmup,
        before,
        latency_4k,
        after,
        matrices,
    };
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", to_text(&report));
    }
    if args.keep {
        eprintln!("kept {}", scratch.path().display());
    }
    Ok(())
}

/// One disk loop in a new file `name` in the scratch dir (kept until the run ends).
fn baseline(
    scratch: &Scratch,
    name: &str,
    write_bytes: usize,
    duration: Duration,
    cap: u64,
) -> anyhow::Result<WriteSync> {
    let path = scratch.path().join(name);
    disk::write_sync_loop(&path, write_bytes, duration, cap)
}

/// One batch of `records` records, each with a `record_bytes` value of incompressible bytes.
fn build_batch(records: u32, record_bytes: u32) -> anyhow::Result<Vec<u8>> {
    // Checked before building, so that a huge request fails without allocating it.
    let payload = u64::from(records) * u64::from(record_bytes);
    if payload > BENCH_BATCH_BYTES_MAX as u64 {
        bail!(
            "{records} records × {record_bytes} B = {payload} B per batch exceeds the bench's \
             limit of {BENCH_BATCH_BYTES_MAX} B; lower --records-per-batch or --record-bytes"
        );
    }
    let value = disk::noise(record_bytes as usize, 0x5eed_6ea7_b0c5_0001);
    let now = SystemClock.now_ms();
    let mut builder = BatchBuilder::new();
    for _ in 0..records {
        builder.push(RecordInput {
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Vec::new(),
        });
    }
    if builder.encoded_len() > BENCH_BATCH_BYTES_MAX {
        bail!(
            "a batch of {records} records × {record_bytes} B encodes to {} B, over the bench's \
             limit of {BENCH_BATCH_BYTES_MAX} B",
            builder.encoded_len()
        );
    }
    Ok(builder.build()?)
}

/// Creates a partition in `dir` and appends `batch` from `appenders` threads until `duration`
/// passes or `cap` bytes are written.
fn run_case(
    dir: &Path,
    batch: &[u8],
    records_per_batch: u32,
    appenders: u32,
    duration: Duration,
    cap: u64,
    io_breakdown: bool,
) -> anyhow::Result<Case> {
    let traced = io_breakdown.then(|| Arc::new(TracedStorage::default()));
    let storage: Arc<dyn Storage> = match &traced {
        Some(t) => Arc::clone(t) as Arc<dyn Storage>,
        None => Arc::new(OsStorage),
    };
    let mut config = PartitionConfig::new(SyncMode::Always, Retention::FOREVER);
    // Big batches need a larger limit than the 1 MiB default; `build_batch` keeps them ≤ 16 MiB.
    config.batch_bytes_max = BATCH_BYTES_MAX_DEFAULT.max(u32::try_from(batch.len())?);
    let partition = Partition::create(storage, Arc::new(SystemClock), dir, config)?;
    // The copies after this are only counter reads; the partition's setup syncs are excluded.
    let io_at_start = traced.as_ref().map(|t| {
        t.reset_maxima();
        (t.segments(), t.other())
    });
    let syncs_at_start = partition.stats().syncs;

    let batch_len = batch.len() as u64;
    let barrier = Barrier::new(appenders as usize + 1);
    let stop = AtomicBool::new(false);
    let capped = AtomicBool::new(false);
    let written = AtomicU64::new(0);
    let (outcomes, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..appenders)
            .map(|_| {
                s.spawn(|| {
                    let mut latency = Histogram::new();
                    let mut appends = 0u64;
                    barrier.wait();
                    let deadline = Instant::now() + duration;
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        if let Err(e) = partition.append(batch) {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        let t1 = Instant::now();
                        latency.record(t1 - t0);
                        appends += 1;
                        let total = written.fetch_add(batch_len, Ordering::Relaxed) + batch_len;
                        if total + batch_len > cap {
                            capped.store(true, Ordering::Relaxed);
                            stop.store(true, Ordering::Relaxed);
                        }
                        if t1 >= deadline {
                            break;
                        }
                    }
                    Ok((appends, latency))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (outcomes, start.elapsed())
    });

    let mut appends = 0;
    let mut latency = Histogram::new();
    let mut thread_appends = (u64::MAX, 0);
    for outcome in outcomes {
        let Ok(result) = outcome else {
            bail!("an appender thread panicked");
        };
        let (n, h) = result.context("append failed")?;
        appends += n;
        thread_appends = (thread_appends.0.min(n), thread_appends.1.max(n));
        latency.merge(&h);
    }
    debug_assert_eq!(latency.count(), appends, "one latency sample per append");
    let syncs = partition.stats().syncs - syncs_at_start;
    let segments = partition.segment_count();
    let io = traced
        .as_ref()
        .zip(io_at_start)
        .map(|(t, (seg0, other0))| (t.segments().since(seg0), t.other().since(other0)));
    partition.close().context("closing the partition")?;
    Ok(Case {
        records_per_batch,
        batch_bytes: batch.len(),
        appenders,
        elapsed,
        appends,
        latency,
        syncs,
        segments,
        capped: capped.load(Ordering::Relaxed),
        thread_appends,
        io,
    })
}

/// `n` with thousands separators.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms_per(ns: u64, count: u64) -> f64 {
    ns as f64 / 1e6 / count as f64
}

fn to_text(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(
        o,
        "gearbox bench log: {} s per measurement; MB = 10^6 bytes; latencies in ms\n\
         dir {} on {} ({}, mounted at {}); {} CPUs; kernel {}",
        r.seconds,
        r.dir.display(),
        m.device,
        m.fs_type,
        m.mount,
        m.cpus,
        m.kernel
    );
    if let Some(w) = &r.warmup {
        let secs: Vec<String> = w.per_second_mb.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            o,
            "\ndisk warm-up (not measured), 1 MiB write + fdatasync, MB/s per second: {}",
            secs.join(" ")
        );
    }
    let _ = writeln!(
        o,
        "\ndisk: 1 MiB write + fdatasync, appending to a new file\n\
         {:<8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "", "MB/s", "p50", "p99", "writes", "min 1s", "max 1s"
    );
    for (label, w) in [("before", &r.before), ("after", &r.after)] {
        let (min, max) = w.per_second_range();
        let _ = writeln!(
            o,
            "{label:<8} {:>9.1} {:>8.2} {:>8.2} {:>8} {:>8.0} {:>8.0}{}",
            w.mb_per_s(),
            w.latency.quantile_ms(0.5),
            w.latency.quantile_ms(0.99),
            grouped(w.ops),
            min,
            max,
            if w.capped {
                "  (stopped at its share of --gib-max)"
            } else {
                ""
            }
        );
    }
    let _ = writeln!(o, "{:<8} {:>9.1}  = 100% below", "mean", r.disk_mb_per_s());
    let l = &r.latency_4k;
    let _ = writeln!(
        o,
        "\ndisk: 4 KiB write + fdatasync: p50 {:.3}  p99 {:.3}  ({} writes in {:.1} s, {:.1} MB/s)",
        l.latency.quantile_ms(0.5),
        l.latency.quantile_ms(0.99),
        grouped(l.ops),
        l.elapsed.as_secs_f64(),
        l.mb_per_s()
    );
    for cases in &r.matrices {
        let Some(first) = cases.first() else { continue };
        let _ = writeln!(
            o,
            "\nlog: SyncMode::Always, {} records × {} B = {} B per batch, {} MiB segments",
            first.records_per_batch,
            r.record_bytes,
            grouped(first.batch_bytes as u64),
            SEGMENT_BYTES_MAX_DEFAULT >> 20
        );
        let _ = writeln!(
            o,
            "{:>9} {:>10} {:>11} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8} {:>5}",
            "appenders",
            "batches/s",
            "records/s",
            "MB/s",
            "% disk",
            "p50",
            "p99",
            "syncs",
            "bat/sync",
            "segs"
        );
        for c in cases {
            let _ = writeln!(
                o,
                "{:>9} {:>10} {:>11} {:>8.1} {:>6.1}% {:>7.2} {:>7.2} {:>8} {:>8.2} {:>5}{}",
                c.appenders,
                grouped(c.appends_per_s().round() as u64),
                grouped(c.records_per_s().round() as u64),
                c.mb_per_s(),
                r.pct_of_disk(c),
                c.latency.quantile_ms(0.5),
                c.latency.quantile_ms(0.99),
                grouped(c.syncs),
                c.batches_per_sync(),
                c.segments,
                if c.capped {
                    "  (stopped at its share of --gib-max)"
                } else {
                    ""
                }
            );
        }
    }
    let traced: Vec<&Case> = r
        .matrices
        .iter()
        .flatten()
        .filter(|c| c.io.is_some())
        .collect();
    if !traced.is_empty() {
        let _ = writeln!(
            o,
            "\nI/O breakdown (--io-breakdown): where the time goes\n\
             {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>8} {:>9} {:>10}",
            "records",
            "appdr",
            "write ms",
            "MB/sync",
            "sync ms",
            "sync max",
            "cp syncs",
            "cp ms",
            "cp max",
            "io busy",
            "append max",
            "per thread"
        );
        for c in traced {
            let Some((seg, other)) = c.io else { continue };
            let busy = (seg.sync_ns + other.sync_ns) as f64 / 1e9 / c.secs();
            let _ = writeln!(
                o,
                "{:>7} {:>5} {:>8.3} {:>8.3} {:>8.2} {:>8.1} {:>8} {:>6.2} {:>7.1} {:>7.1}% {:>9.1} {:>10}",
                c.records_per_batch,
                c.appenders,
                ms_per(seg.write_ns, seg.writes),
                seg.write_bytes as f64 / 1e6 / seg.syncs as f64,
                ms_per(seg.sync_ns, seg.syncs),
                seg.sync_ns_max as f64 / 1e6,
                grouped(other.syncs),
                ms_per(other.sync_ns, other.syncs),
                other.sync_ns_max as f64 / 1e6,
                100.0 * busy,
                c.latency.quantile_ms(1.0),
                format!("{}-{}", c.thread_appends.0, c.thread_appends.1),
            );
        }
        let _ = writeln!(
            o,
            "write ms, sync ms, cp ms: mean per call (segment write, segment fdatasync, checkpoint\n\
             or index fdatasync); MB/sync: segment bytes per segment fdatasync; io busy: share of\n\
             wall time inside any fdatasync; per thread: fewest-most appends by one appender."
        );
    }
    let _ = writeln!(
        o,
        "\n% disk = log MB/s (whole batch bytes) ÷ mean disk MB/s; bat/sync = batches \
         acknowledged per segment fdatasync (group commit; rolls count as syncs)."
    );
    o
}

fn write_sync_json(w: &WriteSync) -> String {
    format!(
        "{{\"write_bytes\": {}, \"writes\": {}, \"seconds\": {}, \"mb_per_s\": {}, \
         \"p50_ms\": {}, \"p99_ms\": {}, \"capped\": {}, \"per_second_mb_per_s\": [{}]}}",
        w.write_bytes,
        w.ops,
        json_num(w.elapsed.as_secs_f64(), 3),
        json_num(w.mb_per_s(), 1),
        json_num(w.latency.quantile_ms(0.5), 3),
        json_num(w.latency.quantile_ms(0.99), 3),
        w.capped,
        w.per_second_mb
            .iter()
            .map(|x| json_num(*x, 1))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn io_json(c: IoCounts) -> String {
    format!(
        "{{\"writes\": {}, \"write_bytes\": {}, \"write_ms\": {}, \"syncs\": {}, \
         \"sync_ms\": {}, \"sync_max_ms\": {}}}",
        c.writes,
        c.write_bytes,
        json_num(c.write_ns as f64 / 1e6, 3),
        c.syncs,
        json_num(c.sync_ns as f64 / 1e6, 3),
        json_num(c.sync_ns_max as f64 / 1e6, 3)
    )
}

fn case_json(r: &Report, c: &Case) -> String {
    let io = c.io.map_or_else(
        || "null".to_string(),
        |(seg, other)| {
            format!(
                "{{\"segments\": {}, \"other\": {}}}",
                io_json(seg),
                io_json(other)
            )
        },
    );
    format!(
        "{{\"records_per_batch\": {}, \"batch_bytes\": {}, \"appenders\": {}, \"seconds\": {}, \
         \"batches\": {}, \"batches_per_s\": {}, \"records_per_s\": {}, \"mb_per_s\": {}, \
         \"pct_of_disk\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}, \"syncs\": {}, \
         \"batches_per_sync\": {}, \"segments\": {}, \"capped\": {}, \
         \"thread_batches_min\": {}, \"thread_batches_max\": {}, \"io\": {}}}",
        c.records_per_batch,
        c.batch_bytes,
        c.appenders,
        json_num(c.secs(), 3),
        c.appends,
        json_num(c.appends_per_s(), 1),
        json_num(c.records_per_s(), 0),
        json_num(c.mb_per_s(), 1),
        json_num(r.pct_of_disk(c), 1),
        json_num(c.latency.quantile_ms(0.5), 3),
        json_num(c.latency.quantile_ms(0.99), 3),
        json_num(c.latency.quantile_ms(1.0), 3),
        c.syncs,
        json_num(c.batches_per_sync(), 2),
        c.segments,
        c.capped,
        c.thread_appends.0,
        c.thread_appends.1,
        io
    )
}

fn to_json(r: &Report) -> String {
    let m = &r.machine;
    let matrices: Vec<String> = r
        .matrices
        .iter()
        .map(|cases| {
            let cases: Vec<String> = cases.iter().map(|c| case_json(r, c)).collect();
            format!("[{}]", cases.join(", "))
        })
        .collect();
    format!(
        "{{\"bench\": \"log\", \"command\": {}, \"dir\": {}, \
         \"machine\": {{\"cpus\": {}, \"kernel\": {}, \"device\": {}, \"fs_type\": {}, \"mount\": {}}}, \
         \"seconds\": {}, \"record_bytes\": {}, \"mb\": 1000000, \
         \"disk\": {{\"mb_per_s\": {}, \"warmup\": {}, \"before\": {}, \"after\": {}, \
         \"latency_4k\": {}}}, \
         \"log\": {{\"sync\": \"always\", \"segment_bytes_max\": {}, \"matrices\": [{}]}}}}",
        json_str(&r.command),
        json_str(&r.dir.to_string_lossy()),
        m.cpus,
        json_str(&m.kernel),
        json_str(&m.device),
        json_str(&m.fs_type),
        json_str(&m.mount),
        r.seconds,
        r.record_bytes,
        json_num(r.disk_mb_per_s(), 1),
        r.warmup
            .as_ref()
            .map_or_else(|| "null".to_string(), write_sync_json),
        write_sync_json(&r.before),
        write_sync_json(&r.after),
        write_sync_json(&r.latency_4k),
        SEGMENT_BYTES_MAX_DEFAULT,
        matrices.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }

    #[test]
    fn oversized_batches_are_refused_before_building() {
        let err = build_batch(RECORDS_PER_BATCH_MAX, RECORD_BYTES_MAX).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        let batch = build_batch(16, 256).unwrap();
        assert!(batch.len() > 16 * 256 && batch.len() < 16 * 300);
    }

    #[test]
    fn a_short_case_appends_and_syncs() {
        let scratch = Scratch::create(None, false).unwrap();
        let dir = scratch.path().join("p");
        let batch = build_batch(4, 100).unwrap();
        let case = run_case(&dir, &batch, 4, 2, Duration::from_millis(50), 1 << 30, true).unwrap();
        assert!(case.appends > 0 && case.syncs > 0 && case.syncs <= case.appends);
        let (seg, _) = case.io.unwrap();
        assert_eq!(seg.write_bytes, case.appends * batch.len() as u64);
    }
}
