//! `gearbox bench` (no subcommand): every target side by side, in one run, on one workload.
//!
//! In order, in one scratch directory:
//! 1. **disk**: an unmeasured warm-up of 1 MiB write+fdatasync, then the disk's sequential
//!    bandwidth with 1 MiB write+fdatasync, then the latency of a 4 KiB write+fdatasync. This is
//!    the physical limit every durable target shares.
//! 2. **gearbox-log**: the embedded log in this process ([`super::embedded`]).
//! 3. **gearbox-http**: a `gearbox serve` the bench starts, over HTTP ([`super::http`]).
//! 4. **gearbox-kafka**: a `gearbox serve --kafka` the bench starts, over the Kafka wire
//!    protocol ([`super::kafka`]): Produce with `acks` -1 for the ingest, Fetch long polls for
//!    produce-to-consume. Its second row, **gearbox-kafka-fetch**, reads the ingested events
//!    back with Fetch; it is a read, so it stays out of the write ratios and the product targets.
//! 5. With `--peers`: **nats-jetstream-default**, **nats-jetstream** ([`super::nats`]) and
//!    **redis-streams** ([`super::redis`]). A peer that cannot be reached or started is reported
//!    as skipped, with the reason.
//!
//! Each target runs the same [`Workload`]: an ingest of `--events` events and a
//! produce-to-consume run at `--rate`. The report gives events/s, MB/s of event data, batch
//! latency p50/p99/p999 and produce-to-consume p50/p99 per target, the ratios of each Gearbox
//! write target to each peer and of gearbox-kafka to gearbox-http, and the product targets
//! (product.md §7) as met or not. `--json` prints one JSON object instead; `--chart FILE` also
//! writes an SVG picture.

use super::chart::{self, Bar};
use super::disk::{self, WriteSync};
use super::load::{E2e, Ingest, Workload};
use super::{Machine, Scratch, embedded, http, kafka, nats, redis};
use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// Largest `--events`.
pub const EVENTS_MAX: u64 = 100_000_000;
/// Largest `--batch` (the server's request limit).
pub const BATCH_MAX: usize = 10_000;
/// Most `--concurrency`.
pub const CONCURRENCY_MAX: usize = 64;
/// Largest `--event-bytes`.
pub const EVENT_BYTES_MAX: usize = 64 << 10;
/// Longest `--e2e-seconds`.
pub const E2E_SECONDS_MAX: u64 = 120;
/// Most the disk measurements may write.
const DISK_BYTES_CAP: u64 = 8 << 30;
/// The product targets (product.md §7).
const HTTP_VS_NATS_DEFAULT_MIN: f64 = 2.0;
const HTTP_VS_REDIS_MIN: f64 = 1.0;
const LOG_PCT_OF_DISK_MIN: f64 = 75.0;
const E2E_P99_MS_MAX: f64 = 10.0;

/// Options of `gearbox bench` without a subcommand.
#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Also measure the peers: NATS JetStream and Redis Streams.
    #[arg(long)]
    pub peers: bool,
    /// A smoke run of under a minute (20,000 events, 1 s produce-to-consume): checks that every
    /// target works, not its figures.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also write an SVG chart of throughput and p99 per target to this file.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Events per target in the ingest run [default: 1,000,000; 20,000 with --quick].
    #[arg(long)]
    pub events: Option<u64>,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    pub event_bytes: usize,
    /// Events per batch (request, append, pipeline or publish window).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Distinct event keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Partitions (subjects, streams) per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Events per second offered in the produce-to-consume run.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Seconds of the produce-to-consume run [default: 5; 1 with --quick].
    #[arg(long)]
    pub e2e_seconds: Option<u64>,
    /// Longest one ingest run may take, in seconds; a slower target stops there and is flagged.
    #[arg(long, default_value_t = 120)]
    pub seconds_max: u64,
    /// The NATS server for `nats-jetstream-default`.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// The nats-server binary for `nats-jetstream` (started with `sync_interval: always`).
    #[arg(long, default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// The redis-server binary for `redis-streams` (started with `appendfsync always`).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// Parent directory for all data (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    pub keep: bool,
}

impl SuiteArgs {
    fn workload(&self) -> anyhow::Result<Workload> {
        let events = self
            .events
            .unwrap_or(if self.quick { 20_000 } else { 1_000_000 });
        let e2e = self.e2e_seconds.unwrap_or(if self.quick { 1 } else { 5 });
        ensure!(
            (1..=EVENTS_MAX).contains(&events),
            "--events must be 1 to {EVENTS_MAX}"
        );
        ensure!(
            (1..=BATCH_MAX).contains(&self.batch),
            "--batch must be 1 to {BATCH_MAX}"
        );
        ensure!(
            (1..=CONCURRENCY_MAX).contains(&self.concurrency),
            "--concurrency must be 1 to {CONCURRENCY_MAX}"
        );
        ensure!(
            (1..=EVENT_BYTES_MAX).contains(&self.event_bytes),
            "--event-bytes must be 1 to {EVENT_BYTES_MAX}"
        );
        ensure!(self.keys >= 1, "--keys must be at least 1");
        ensure!(
            (1..=64).contains(&self.partitions),
            "--partitions must be 1 to 64"
        );
        ensure!(
            (1..=1_000_000).contains(&self.rate),
            "--rate must be 1 to 1,000,000"
        );
        ensure!(
            (1..=E2E_SECONDS_MAX).contains(&e2e),
            "--e2e-seconds must be 1 to {E2E_SECONDS_MAX}"
        );
        ensure!(
            (1..=3600).contains(&self.seconds_max),
            "--seconds-max must be 1 to 3600"
        );
        Ok(Workload {
            events,
            event_bytes: self.event_bytes,
            batch: self.batch,
            concurrency: self.concurrency,
            keys: self.keys,
            partitions: self.partitions,
            rate: self.rate,
            tick_ms: 10,
            e2e: Duration::from_secs(e2e),
            seconds_max: Duration::from_secs(self.seconds_max),
        })
    }
}

/// What happened to one target.
#[derive(Debug)]
enum Status {
    Measured {
        ingest: Ingest,
        /// `None` where it was not run (the payload-only peer variants).
        e2e: Option<Result<E2e, String>>,
    },
    Skipped(String),
    Failed(String),
}

/// What a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Durable writes (the ingest), with an optional produce-to-consume run.
    Write,
    /// Reading written events back; `Measured::ingest` then counts events read, and its
    /// latency is one read request.
    Read,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Write => "write",
            Kind::Read => "read",
        }
    }
}

#[derive(Debug)]
struct Row {
    target: &'static str,
    kind: Kind,
    /// What an acknowledgement means for this target (for a read: what was read).
    durability: &'static str,
    version: String,
    status: Status,
}

impl Row {
    fn ingest(&self) -> Option<&Ingest> {
        match &self.status {
            Status::Measured { ingest, .. } => Some(ingest),
            _ => None,
        }
    }

    fn e2e(&self) -> Option<&E2e> {
        match &self.status {
            Status::Measured {
                e2e: Some(Ok(e)), ..
            } => Some(e),
            _ => None,
        }
    }

    fn events_per_s(&self) -> Option<f64> {
        self.ingest().map(Ingest::events_per_s)
    }

    /// A problem that makes the run fail: an error, or events lost between producer and
    /// consumer.
    fn problem(&self) -> Option<String> {
        match &self.status {
            Status::Failed(e) => Some(format!("{}: {e}", self.target)),
            Status::Measured {
                e2e: Some(Err(e)), ..
            } => Some(format!("{} produce-to-consume: {e}", self.target)),
            Status::Measured {
                e2e: Some(Ok(e)), ..
            } if e.received < e.sent => Some(format!(
                "{}: the consumer received {} of {} events",
                self.target, e.received, e.sent
            )),
            _ => None,
        }
    }
}

fn measure(
    target: &'static str,
    durability: &'static str,
    version: String,
    ingest: impl FnOnce() -> anyhow::Result<Ingest>,
    e2e: Option<Box<dyn FnOnce() -> anyhow::Result<E2e> + '_>>,
) -> Row {
    let status = match ingest() {
        Ok(ingest) => Status::Measured {
            ingest,
            e2e: e2e.map(|run| run().map_err(|e| format!("{e:#}"))),
        },
        Err(e) => Status::Failed(format!("{e:#}")),
    };
    Row {
        target,
        kind: Kind::Write,
        durability,
        version,
        status,
    }
}

fn skipped(target: &'static str, durability: &'static str, reason: String) -> Row {
    Row {
        target,
        kind: Kind::Write,
        durability,
        version: String::new(),
        status: Status::Skipped(reason),
    }
}

const FSYNC_BEFORE_ACK: &str = "fsync before ack";

/// The disk's baseline.
struct Disk {
    bandwidth: WriteSync,
    small: WriteSync,
}

fn measure_disk(scratch: &Scratch, quick: bool) -> anyhow::Result<Disk> {
    let (warm, bw, lat) = if quick {
        (0.2, 0.5, 0.3)
    } else {
        (2.0, 3.0, 2.0)
    };
    let secs = Duration::from_secs_f64;
    disk::write_sync_loop(
        &scratch.path().join("disk-warmup"),
        1 << 20,
        secs(warm),
        DISK_BYTES_CAP,
    )?;
    let bandwidth = disk::write_sync_loop(
        &scratch.path().join("disk-1m"),
        1 << 20,
        secs(bw),
        DISK_BYTES_CAP,
    )?;
    let small = disk::write_sync_loop(
        &scratch.path().join("disk-4k"),
        disk::LATENCY_WRITE_BYTES,
        secs(lat),
        DISK_BYTES_CAP,
    )?;
    Ok(Disk { bandwidth, small })
}

fn gearbox_http(w: &Workload, scratch: &Scratch) -> Row {
    let started = http::start_server(&scratch.path().join("http"));
    let (server, url) = match started {
        Ok(s) => s,
        Err(e) => {
            return Row {
                target: "gearbox-http",
                kind: Kind::Write,
                durability: FSYNC_BEFORE_ACK,
                version: env!("CARGO_PKG_VERSION").into(),
                status: Status::Failed(format!("{e:#}")),
            };
        }
    };
    let a = http::agent();
    let row = measure(
        "gearbox-http",
        FSYNC_BEFORE_ACK,
        env!("CARGO_PKG_VERSION").into(),
        || {
            http::create_topic(&a, &url, "ingest", w.partitions)?;
            http::ingest(&url, w, "ingest", None)
        },
        Some(Box::new(|| {
            http::create_topic(&a, &url, "latency", w.partitions)?;
            http::e2e(&url, w)
        })),
    );
    drop(server);
    row
}

/// What the gearbox-kafka-fetch row reads.
const KAFKA_READ_BACK: &str = "reads the ingest back (Fetch; latency: one Fetch)";

/// The gearbox-kafka rows: a `gearbox serve --kafka` of its own, ingest and produce-to-consume
/// over the Kafka protocol, then the ingest read back (skipped when the ingest failed).
fn gearbox_kafka(w: &Workload, scratch: &Scratch) -> Vec<Row> {
    let version: String = env!("CARGO_PKG_VERSION").into();
    let started = (|| {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (server, _) = http::start_server_with(
            &scratch.path().join("kafka"),
            &["--kafka", &addr.to_string()],
        )?;
        let mut client = kafka::Client::connect(addr)?;
        client.create_topic(kafka::INGEST_TOPIC, w.partitions)?;
        client.create_topic(kafka::LATENCY_TOPIC, w.partitions)?;
        anyhow::Ok((server, addr))
    })();
    let (server, addr) = match started {
        Ok(s) => s,
        Err(e) => {
            return vec![Row {
                target: "gearbox-kafka",
                kind: Kind::Write,
                durability: FSYNC_BEFORE_ACK,
                version,
                status: Status::Failed(format!("{e:#}")),
            }];
        }
    };
    let write = measure(
        "gearbox-kafka",
        FSYNC_BEFORE_ACK,
        version.clone(),
        || kafka::ingest(addr, w),
        Some(Box::new(|| kafka::e2e(addr, w))),
    );
    let read = if write.ingest().is_some() {
        Row {
            kind: Kind::Read,
            ..measure(
                "gearbox-kafka-fetch",
                KAFKA_READ_BACK,
                version,
                || kafka::read_back(addr, w),
                None,
            )
        }
    } else {
        Row {
            kind: Kind::Read,
            ..skipped(
                "gearbox-kafka-fetch",
                KAFKA_READ_BACK,
                "the ingest failed".into(),
            )
        }
    };
    drop(server);
    vec![write, read]
}

/// The payload-only variant of a peer: the data alone, no attributes and no deduplication. It
/// is the peer's best case, measured so that Gearbox is also compared with the strongest form
/// of each peer; the product targets use the same-workload rows.
const BARE: &str = "; payload only, no attributes, no dedup";

fn peers(args: &SuiteArgs, w: &Workload, scratch: &Scratch) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let rt = nats::runtime()?;
    let lazy = "written, fsync every 2 min (JetStream default)";
    match nats::connect(&rt, &args.nats, None) {
        Ok(t) => {
            rows.push(measure(
                "nats-jetstream-default",
                lazy,
                t.version.clone(),
                || nats::ingest(&rt, &t, w, false),
                Some(Box::new(|| nats::e2e(&rt, &t, w))),
            ));
            rows.push(measure(
                "nats-jetstream-default-bare",
                lazy,
                format!("{}{BARE}", t.version),
                || nats::ingest(&rt, &t, w, true),
                None,
            ));
            nats::cleanup(&rt, &t);
        }
        Err(reason) => rows.push(skipped("nats-jetstream-default", lazy, reason)),
    }
    let always = "fsync before ack (sync_interval: always)";
    match nats::start_always(&rt, &args.nats_server, scratch) {
        Ok(t) => rows.push(measure(
            "nats-jetstream",
            always,
            t.version.clone(),
            || nats::ingest(&rt, &t, w, false),
            Some(Box::new(|| nats::e2e(&rt, &t, w))),
        )),
        Err(reason) => rows.push(skipped("nats-jetstream", always, reason)),
    }
    let aof = "fsync before reply (appendfsync always)";
    match redis::start(&args.redis_server, scratch) {
        Ok(server) => {
            rows.push(measure(
                "redis-streams",
                aof,
                server.version.clone(),
                || redis::ingest(&server, w, false),
                Some(Box::new(|| redis::e2e(&server, w))),
            ));
            rows.push(measure(
                "redis-streams-bare",
                aof,
                format!("{}{BARE}", server.version),
                || redis::ingest(&server, w, true),
                None,
            ));
        }
        Err(reason) => rows.push(skipped("redis-streams", aof, reason)),
    }
    Ok(rows)
}

/// Runs the suite.
///
/// # Errors
/// Bad options, a scratch directory that cannot be made, or (after the report is printed) a
/// target that failed or lost events.
pub fn run(args: &SuiteArgs) -> anyhow::Result<()> {
    let w = args.workload()?;
    let scratch = Scratch::create(args.dir.as_deref(), args.keep)?;
    let machine = Machine::probe(scratch.path());
    if !args.json {
        eprintln!("measuring the disk ...");
    }
    let disk = measure_disk(&scratch, args.quick)?;
    let mut rows = Vec::new();
    let version = env!("CARGO_PKG_VERSION");
    let say = |t: &str| {
        if !args.json {
            eprintln!("measuring {t} ...");
        }
    };
    say("gearbox-log");
    rows.push(measure(
        "gearbox-log",
        FSYNC_BEFORE_ACK,
        version.into(),
        || embedded::ingest(&w, &scratch),
        Some(Box::new(|| embedded::e2e(&w, &scratch))),
    ));
    say("gearbox-http");
    rows.push(gearbox_http(&w, &scratch));
    say("gearbox-kafka");
    rows.extend(gearbox_kafka(&w, &scratch));
    if args.peers {
        say("the peers");
        rows.extend(peers(args, &w, &scratch)?);
    }
    let report = Report {
        w: &w,
        disk: &disk,
        machine: &machine,
        rows: &rows,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &args.chart {
        std::fs::write(path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
        if !args.json {
            println!("chart written to {}", path.display());
        }
    }
    let problems: Vec<String> = rows.iter().filter_map(Row::problem).collect();
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

struct Report<'a> {
    w: &'a Workload,
    disk: &'a Disk,
    machine: &'a Machine,
    rows: &'a [Row],
}

/// A target of product.md §7 as measured: `(what, measured, goal, met)`.
type Check = (String, String, String, bool);

impl Report<'_> {
    fn row(&self, target: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target)
    }

    fn mb_per_s(&self, ingest: &Ingest) -> f64 {
        ingest.events_per_s() * self.w.event_bytes as f64 / 1e6
    }

    /// The log's written bytes per second as a percentage of the disk's bandwidth.
    fn log_pct_of_disk(&self) -> Option<f64> {
        let i = self.row("gearbox-log")?.ingest()?;
        let written = i.bytes_written? as f64 / i.seconds / 1e6;
        Some(written / self.disk.bandwidth.mb_per_s() * 100.0)
    }

    fn ratio(&self, a: &str, b: &str) -> Option<f64> {
        Some(self.row(a)?.events_per_s()? / self.row(b)?.events_per_s()?)
    }

    /// Ingest over the Kafka protocol against ingest over HTTP, both into one server build.
    fn kafka_vs_http(&self) -> Option<f64> {
        self.ratio("gearbox-kafka", "gearbox-http")
    }

    fn checks(&self) -> Vec<Check> {
        let mut out = Vec::new();
        for (peer, min) in [
            ("nats-jetstream-default", HTTP_VS_NATS_DEFAULT_MIN),
            ("redis-streams", HTTP_VS_REDIS_MIN),
        ] {
            if let Some(r) = self.ratio("gearbox-http", peer) {
                out.push((
                    format!("gearbox-http ingest vs {peer}"),
                    format!("{r:.2}x"),
                    format!(">= {min:.0}x"),
                    r >= min,
                ));
            }
        }
        if let Some(pct) = self.log_pct_of_disk() {
            out.push((
                "gearbox-log written bytes vs disk bandwidth".into(),
                format!("{pct:.0}%"),
                format!(">= {LOG_PCT_OF_DISK_MIN:.0}%"),
                pct >= LOG_PCT_OF_DISK_MIN,
            ));
        }
        if let Some(e) = self.row("gearbox-http").and_then(Row::e2e) {
            let p99 = e.latency.quantile_ms(0.99);
            out.push((
                format!(
                    "gearbox-http produce-to-consume p99 at {} events/s",
                    self.w.rate
                ),
                format!("{p99:.2} ms"),
                format!("<= {E2E_P99_MS_MAX:.0} ms"),
                p99 <= E2E_P99_MS_MAX,
            ));
        }
        out
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let (w, m) = (self.w, self.machine);
        let mut o = String::new();
        let _ = writeln!(
            o,
            "gearbox bench: {} events of {} B per target, batches of {}, {} producers, {} keys, {} partitions",
            w.events, w.event_bytes, w.batch, w.concurrency, w.keys, w.partitions
        );
        let _ = writeln!(
            o,
            "machine: {} CPUs, kernel {}, {} ({}) at {}; every client runs on this machine too",
            m.cpus, m.kernel, m.device, m.fs_type, m.mount
        );
        let _ = writeln!(
            o,
            "disk: 1 MiB write+fdatasync {:.1} MB/s; 4 KiB write+fdatasync p50 {:.3} ms, p99 {:.3} ms\n",
            self.disk.bandwidth.mb_per_s(),
            self.disk.small.latency.quantile_ms(0.5),
            self.disk.small.latency.quantile_ms(0.99)
        );
        let _ = writeln!(
            o,
            "{:<24} {:>11} {:>7} {:>8} {:>8} {:>8}  {:>8} {:>8}  acknowledged means",
            "target", "events/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "e2e p50", "e2e p99",
        );
        for r in self.rows {
            match &r.status {
                Status::Measured { ingest, e2e } => {
                    let (e50, e99) = match e2e {
                        Some(Ok(e)) => (
                            format!("{:.2}", e.latency.quantile_ms(0.5)),
                            format!("{:.2}", e.latency.quantile_ms(0.99)),
                        ),
                        Some(Err(_)) => ("failed".into(), "failed".into()),
                        None => ("-".into(), "-".into()),
                    };
                    let _ = writeln!(
                        o,
                        "{:<24} {:>11.0} {:>7.1} {:>8.2} {:>8.2} {:>8.2}  {:>8} {:>8}  {}{}",
                        r.target,
                        ingest.events_per_s(),
                        self.mb_per_s(ingest),
                        ingest.latency.quantile_ms(0.5),
                        ingest.latency.quantile_ms(0.99),
                        ingest.latency.quantile_ms(0.999),
                        e50,
                        e99,
                        r.durability,
                        if ingest.capped {
                            " (stopped at --seconds-max)"
                        } else {
                            ""
                        }
                    );
                }
                Status::Skipped(why) => {
                    let _ = writeln!(o, "{:<24} skipped: {why}", r.target);
                }
                Status::Failed(why) => {
                    let _ = writeln!(o, "{:<24} FAILED: {why}", r.target);
                }
            }
        }
        let _ = writeln!(
            o,
            "\n(MB/s counts event data; p50/p99/p999: one batch from first byte out to last ack; e2e: \
             produce-to-consume at {} events/s in batches every {} ms)",
            w.rate, w.tick_ms
        );
        let versions: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.version.is_empty())
            .map(|r| format!("{} {}", r.target, r.version))
            .collect();
        let _ = writeln!(o, "versions: {}", versions.join(", "));
        let peers: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.target.starts_with("gearbox") && r.ingest().is_some())
            .collect();
        if !peers.is_empty() {
            let _ = writeln!(o, "\nratios (events/s, gearbox target / peer):");
            for g in self
                .rows
                .iter()
                .filter(|r| r.target.starts_with("gearbox") && r.kind == Kind::Write)
            {
                let parts: Vec<String> = peers
                    .iter()
                    .filter_map(|p| {
                        Some(format!(
                            "{:.2}x {}",
                            self.ratio(g.target, p.target)?,
                            p.target
                        ))
                    })
                    .collect();
                if !parts.is_empty() {
                    let _ = writeln!(o, "  {:<22} {}", g.target, parts.join(", "));
                }
            }
        }
        if let Some(r) = self.kafka_vs_http() {
            let _ = writeln!(
                o,
                "\ngearbox-kafka / gearbox-http (events/s, same run): {r:.2}x"
            );
        }
        let checks = self.checks();
        if !checks.is_empty() {
            let _ = writeln!(o, "\nproduct targets (product.md section 7):");
            for (what, got, goal, met) in checks {
                let _ = writeln!(
                    o,
                    "  {:<58} {:>9}  goal {:<8} {}",
                    what,
                    got,
                    goal,
                    if met { "met" } else { "NOT met" }
                );
            }
        }
        for p in self.rows.iter().filter_map(Row::problem) {
            let _ = writeln!(o, "problem: {p}");
        }
        o
    }

    fn json(&self) -> Value {
        let w = self.w;
        let results: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut v = json!({"target": r.target, "kind": r.kind.name(),
                                   "durability": r.durability, "version": r.version});
                match &r.status {
                    Status::Measured { ingest, e2e } => {
                        let q = |q| ingest.latency.quantile_ms(q);
                        v["events_per_s"] = json!(ingest.events_per_s());
                        v["mb_per_s"] = json!(self.mb_per_s(ingest));
                        v["p50_ms"] = json!(q(0.5));
                        v["p99_ms"] = json!(q(0.99));
                        v["p999_ms"] = json!(q(0.999));
                        v["events"] = json!(ingest.events);
                        v["seconds"] = json!(ingest.seconds);
                        v["capped"] = json!(ingest.capped);
                        if let Some(b) = ingest.bytes_written {
                            v["written_mb_per_s"] = json!(b as f64 / ingest.seconds / 1e6);
                        }
                        match e2e {
                            None => v["e2e_p99_ms"] = Value::Null,
                            Some(Ok(e)) => {
                                v["e2e_p50_ms"] = json!(e.latency.quantile_ms(0.5));
                                v["e2e_p99_ms"] = json!(e.latency.quantile_ms(0.99));
                                v["e2e_sent"] = json!(e.sent);
                                v["e2e_received"] = json!(e.received);
                            }
                            Some(Err(err)) => {
                                v["e2e_p99_ms"] = Value::Null;
                                v["e2e_error"] = json!(err);
                            }
                        }
                    }
                    Status::Skipped(why) => v["skipped"] = json!(why),
                    Status::Failed(why) => v["error"] = json!(why),
                }
                v
            })
            .collect();
        let checks: Vec<Value> = self
            .checks()
            .into_iter()
            .map(|(what, got, goal, met)| json!({"target": what, "measured": got, "goal": goal, "met": met}))
            .collect();
        let m = self.machine;
        json!({
            "disk_fdatasync_mb_per_s": self.disk.bandwidth.mb_per_s(),
            "disk_fsync_4k_p50_ms": self.disk.small.latency.quantile_ms(0.5),
            "disk_fsync_4k_p99_ms": self.disk.small.latency.quantile_ms(0.99),
            "results": results,
            "product_targets": checks,
            "kafka_vs_http_events_per_s": self.kafka_vs_http(),
            "workload": {"events": w.events, "event_bytes": w.event_bytes, "batch": w.batch,
                         "concurrency": w.concurrency, "keys": w.keys, "partitions": w.partitions,
                         "e2e_rate": w.rate, "e2e_tick_ms": w.tick_ms, "e2e_seconds": w.e2e.as_secs_f64()},
            "machine": {"cpus": m.cpus, "kernel": m.kernel, "device": m.device, "fs_type": m.fs_type, "mount": m.mount},
        })
    }

    fn svg(&self) -> String {
        let bars: Vec<Bar> = self
            .rows
            .iter()
            .map(|r| Bar {
                target: r.target.to_string(),
                events_per_s: r.events_per_s(),
                p99_ms: r.ingest().map(|i| i.latency.quantile_ms(0.99)),
                e2e_p99_ms: r.e2e().map(|e| e.latency.quantile_ms(0.99)),
            })
            .collect();
        let w = self.w;
        chart::svg(
            &format!(
                "gearbox bench: {} events of {} B, batches of {}, {} producers, same run",
                w.events, w.event_bytes, w.batch, w.concurrency
            ),
            &format!(
                "disk: 1 MiB write+fdatasync {:.0} MB/s; {} CPUs; produce-to-consume at {} events/s",
                self.disk.bandwidth.mb_per_s(),
                self.machine.cpus,
                w.rate
            ),
            &bars,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::hist::Histogram;

    fn measured(target: &'static str, kind: Kind, events: u64) -> Row {
        let mut latency = Histogram::new();
        latency.record(Duration::from_millis(2));
        Row {
            target,
            kind,
            durability: "d",
            version: "v".into(),
            status: Status::Measured {
                ingest: Ingest {
                    events,
                    seconds: 1.0,
                    latency,
                    capped: false,
                    bytes_written: None,
                },
                e2e: None,
            },
        }
    }

    fn write_sync() -> WriteSync {
        WriteSync {
            write_bytes: 1 << 20,
            ops: 100,
            elapsed: Duration::from_secs(1),
            latency: Histogram::new(),
            capped: false,
            per_second_mb: Vec::new(),
        }
    }

    #[test]
    fn the_fetch_row_is_reported_but_stays_out_of_the_write_ratios() {
        let w = load_workload();
        let disk = Disk {
            bandwidth: write_sync(),
            small: write_sync(),
        };
        let machine = Machine::probe(std::path::Path::new("/"));
        let rows = vec![
            measured("gearbox-http", Kind::Write, 100_000),
            measured("gearbox-kafka", Kind::Write, 150_000),
            measured("gearbox-kafka-fetch", Kind::Read, 900_000),
            measured("redis-streams", Kind::Write, 50_000),
        ];
        let report = Report {
            w: &w,
            disk: &disk,
            machine: &machine,
            rows: &rows,
        };
        let text = report.text();
        let fetch_line = text
            .lines()
            .find(|l| l.starts_with("gearbox-kafka-fetch "))
            .unwrap();
        assert!(fetch_line.contains(" 900000 "), "{fetch_line}");
        assert!(
            fetch_line.contains(" 90.0 "),
            "MB/s of event data: {fetch_line}"
        );
        let ratios: Vec<&str> = text
            .split("ratios (events/s, gearbox target / peer):\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(
            ratios,
            [
                format!("  {:<22} 2.00x redis-streams", "gearbox-http"),
                format!("  {:<22} 3.00x redis-streams", "gearbox-kafka"),
            ]
        );
        assert!(
            text.contains("gearbox-kafka / gearbox-http (events/s, same run): 1.50x"),
            "{text}"
        );
        let json = report.json();
        assert_eq!(json["kafka_vs_http_events_per_s"], 1.5);
        let kinds: Vec<&str> = json["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["write", "write", "read", "write"]);
        assert_eq!(json["results"][2]["events_per_s"], 900_000.0);
        assert!(report.svg().contains("gearbox-kafka-fetch"));
    }

    #[test]
    fn without_both_gearbox_servers_there_is_no_kafka_ratio() {
        let w = load_workload();
        let disk = Disk {
            bandwidth: write_sync(),
            small: write_sync(),
        };
        let machine = Machine::probe(std::path::Path::new("/"));
        let rows = vec![
            measured("gearbox-http", Kind::Write, 100_000),
            skipped("gearbox-kafka", FSYNC_BEFORE_ACK, "why".into()),
        ];
        let report = Report {
            w: &w,
            disk: &disk,
            machine: &machine,
            rows: &rows,
        };
        assert!(!report.text().contains("gearbox-kafka / gearbox-http"));
        assert!(report.json()["kafka_vs_http_events_per_s"].is_null());
    }

    fn load_workload() -> Workload {
        Workload {
            events: 10,
            event_bytes: 100,
            batch: 10,
            concurrency: 1,
            keys: 1,
            partitions: 1,
            rate: 100,
            tick_ms: 10,
            e2e: Duration::from_secs(1),
            seconds_max: Duration::from_secs(10),
        }
    }
}
