//! `gearbox bench batch`: the batch layer against the tools a data team would otherwise use, on
//! the same CSV export in one run.
//!
//! - **csv-import (gearbox)**: the `files` source reads the export in one scheduled run into a
//!   topic of the embedded log (fsync on every append, deterministic ids, the watermark stored
//!   at the end), through the real runtime; timed from the run's start to its stored end.
//! - **COPY into Postgres** (baseline): `COPY … FROM STDIN (FORMAT csv, HEADER)` of the same
//!   file over one connection into a fresh table: the fastest way to load a CSV into Postgres.
//! - **DuckDB read_csv** (baseline): `CREATE TABLE … AS SELECT * FROM read_csv(…)` in DuckDB, in
//!   process, from the test virtualenv's Python (`--python`): an analytical engine reading the
//!   file with every core, no durability.
//! - **parquet-sink (gearbox)**: the topic the import filled, written by the Parquet sink into
//!   date-partitioned files (micro-batches of `--micro-batch` records, each file fsynced and
//!   renamed), timed until the committed files cover every event.
//! - **DuckDB COPY … TO parquet** (baseline): DuckDB writing the same CSV as one Parquet file.
//!
//! Rows/s and MB/s (of the CSV's bytes) for each, and each Gearbox case as a ratio to its
//! baselines.

use super::Scratch;
use anyhow::{Context as _, bail};
use futures_util::SinkExt as _;
use gearbox_connect::backbone::Embedded;
use gearbox_connect::breaker::BreakerConfig;
use gearbox_connect::metrics::Registry;
use gearbox_connect::retry::RetryConfig;
use gearbox_connect::runtime::{Common, Runtime, SinkPipeline, SourcePipeline};
use gearbox_connect::schedule::{Outcome, ScheduleConfig, Scheduled};
use gearbox_connect::topic::Template;
use gearbox_connect::transform::Chain;
use gearbox_connectors::batch::files::{FilesConfig, FilesJob};
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_core::subscription::Start;
use gearbox_log::Retention;
use gearbox_warehouse::ParquetSink;
use serde_json::json;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `gearbox bench batch`.
#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Rows in the CSV export.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Records per Parquet micro-batch.
    #[arg(long, default_value_t = 50_000)]
    micro_batch: usize,
    /// The Postgres server for the COPY baseline (a schema of its own, dropped afterwards).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    url: String,
    /// A Python with the `duckdb` package, for the DuckDB baselines (skipped when absent).
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Directory for the scratch data.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Most rows `--rows` may ask for.
pub const ROWS_MAX: usize = 20_000_000;
/// Longest any case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(900);

struct Case {
    name: &'static str,
    secs: Option<f64>,
    /// What it is compared with: names of earlier cases.
    against: &'static [&'static str],
}

/// Runs the benchmark.
///
/// # Errors
/// A bad option, Postgres unreachable, or a case that fails.
pub fn run(args: &BatchArgs) -> anyhow::Result<()> {
    if args.rows == 0 || args.rows > ROWS_MAX {
        bail!("--rows must be 1 to {ROWS_MAX}");
    }
    if args.micro_batch == 0 || args.micro_batch > gearbox_warehouse::config::RECORDS_MAX_MAX {
        bail!(
            "--micro-batch must be 1 to {}",
            gearbox_warehouse::config::RECORDS_MAX_MAX
        );
    }
    let scratch = Scratch::create(args.dir.as_deref(), false)?;
    let exports = scratch.path().join("exports");
    std::fs::create_dir(&exports)?;
    let csv = exports.join("stock-00001.csv");
    let bytes = write_csv(&csv, args.rows)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut cases = Vec::new();
    let broker = Arc::new(Broker::open(
        &scratch.path().join("log"),
        BrokerConfig::durable(),
    )?);
    broker.create_topic("stock", args.partitions, Retention::FOREVER)?;
    cases.push(Case {
        name: "csv-import (gearbox, fsync)",
        secs: Some(rt.block_on(import(&broker, &exports, args))?),
        against: &["COPY into Postgres", "DuckDB read_csv"],
    });
    cases.push(Case {
        name: "COPY into Postgres",
        secs: Some(rt.block_on(copy(&args.url, &csv))?),
        against: &[],
    });
    let duck = |sql: &str| duckdb_seconds(&args.python, sql);
    let csv_text = csv.display().to_string();
    cases.push(Case {
        name: "DuckDB read_csv",
        secs: duck(&format!(
            "CREATE TABLE t AS SELECT * FROM read_csv('{csv_text}', header = true)"
        ))?,
        against: &[],
    });
    let lake = scratch.path().join("lake");
    cases.push(Case {
        name: "parquet-sink (gearbox)",
        secs: Some(rt.block_on(parquet(&broker, &lake, args))?),
        against: &["DuckDB COPY TO parquet"],
    });
    let out = scratch.path().join("duck.parquet").display().to_string();
    cases.push(Case {
        name: "DuckDB COPY TO parquet",
        secs: duck(&format!(
            "COPY (SELECT * FROM read_csv('{csv_text}', header = true)) TO '{out}' (FORMAT parquet)"
        ))?,
        against: &[],
    });
    println!(
        "gearbox bench batch: {} rows, {:.1} MB of CSV, {} partitions, micro-batches of {}",
        args.rows,
        bytes as f64 / 1e6,
        args.partitions,
        args.micro_batch
    );
    println!(
        "{:<30} {:>12} {:>8} {:>9}  ratios",
        "case", "rows/s", "MB/s", "seconds"
    );
    for c in &cases {
        let Some(secs) = c.secs else {
            println!(
                "{:<30} {:>12} (skipped: no duckdb at {})",
                c.name,
                "-",
                args.python.display()
            );
            continue;
        };
        let mut ratios = String::new();
        for other in c.against {
            if let Some(o) = cases.iter().find(|x| x.name == *other).and_then(|x| x.secs) {
                ratios.push_str(&format!("{:.2}x {other}  ", o / secs));
            }
        }
        println!(
            "{:<30} {:>12.0} {:>8.1} {:>9.2}  {ratios}",
            c.name,
            args.rows as f64 / secs,
            bytes as f64 / 1e6 / secs,
            secs
        );
    }
    Ok(())
}

/// Writes the export: `store,sku,qty,price,updated_at`; returns its size.
fn write_csv(path: &Path, rows: usize) -> anyhow::Result<u64> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "store,sku,qty,price,updated_at")?;
    for n in 0..rows {
        writeln!(
            f,
            "s{},sku-{:07},{},{}.{:02},2026-11-23T02:{:02}:{:02}Z",
            n % 50,
            n,
            n % 1000,
            n % 500,
            n % 100,
            (n / 60) % 60,
            n % 60
        )?;
    }
    f.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

fn common(name: &str) -> Common {
    Common {
        name: name.into(),
        retry: RetryConfig::default(),
        breaker: BreakerConfig::default(),
        rate_limit: None,
        freshness_ms: None,
        transforms: Chain::default(),
        batch_records_max: gearbox_connect::runtime::BATCH_RECORDS_MAX,
    }
}

async fn import(broker: &Arc<Broker>, exports: &Path, args: &BatchArgs) -> anyhow::Result<f64> {
    let config: FilesConfig = serde_json::from_value(json!({
        "path": format!("{}/stock-*.csv", exports.display()),
        "settle_ms": 0,
        "types": {"qty": "integer", "price": "number"},
        "schedule": {"cron": "0 0 1 1 *", "run_on_start": true},
        "event": {"key": ["store", "sku"], "version": "updated_at", "type": "bench.stock.level"},
    }))?;
    let schedule: ScheduleConfig = config.schedule.clone();
    let job = FilesJob::new(config, "bench-import").map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = Scheduled::new(job, &schedule).map_err(|e| anyhow::anyhow!(e))?;
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
    runtime.spawn_source(
        SourcePipeline {
            common: common("bench-import"),
            to: Template::parse("stock").map_err(|e| anyhow::anyhow!("{e}"))?,
            routes: Vec::new(),
            dead_letter: "stock".into(),
        },
        source,
    );
    let started = Instant::now();
    let secs = loop {
        let view = registry
            .get("bench-import")
            .and_then(|m| m.runs().map(|r| r.view()));
        if let Some(run) = view.as_ref().and_then(|v| v.history.first()) {
            match run.outcome {
                Outcome::Ok => {
                    if run.appended != args.rows as u64 {
                        bail!("the import appended {} of {} rows", run.appended, args.rows);
                    }
                    break (run.ended_ms.unwrap_or(run.started_ms) - run.started_ms) as f64
                        / 1000.0;
                }
                _ => bail!("the import run ended {:?}: {:?}", run.outcome, run.error),
            }
        }
        if started.elapsed() > CASE_TIMEOUT {
            bail!("the import did not finish in {CASE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(secs)
}

async fn copy(url: &str, csv: &Path) -> anyhow::Result<f64> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let schema = format!("gearbox_bench_batch_{}_{nanos}", std::process::id());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.stock (store text, sku text, qty bigint, price numeric, \
                 updated_at timestamptz)"
        ))
        .await?;
    let data = std::fs::read(csv)?;
    let started = Instant::now();
    let result: anyhow::Result<()> = async {
        let sink = client
            .copy_in(&format!(
                "COPY {schema}.stock FROM STDIN (FORMAT csv, HEADER true)"
            ))
            .await?;
        futures_util::pin_mut!(sink);
        for chunk in data.chunks(1 << 20) {
            sink.send(bytes::Bytes::copy_from_slice(chunk)).await?;
        }
        sink.finish().await?;
        Ok(())
    }
    .await;
    let secs = started.elapsed().as_secs_f64();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    result?;
    Ok(secs)
}

/// Times `sql` inside DuckDB (not the interpreter's start); `None` without DuckDB.
fn duckdb_seconds(python: &Path, sql: &str) -> anyhow::Result<Option<f64>> {
    let script = "import sys, time, duckdb\n\
                  con = duckdb.connect()\n\
                  t = time.perf_counter()\n\
                  con.execute(sys.argv[1])\n\
                  print(time.perf_counter() - t)\n";
    let out = match std::process::Command::new(python)
        .args(["-c", script, sql])
        .output()
    {
        Ok(out) => out,
        Err(_) => return Ok(None),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'duckdb'") {
            return Ok(None);
        }
        bail!("DuckDB failed: {err}");
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(Some(secs))
}

async fn parquet(broker: &Arc<Broker>, lake: &Path, args: &BatchArgs) -> anyhow::Result<f64> {
    let config: gearbox_warehouse::ParquetConfig = serde_json::from_value(json!({
        "path": lake,
        "records_max": args.micro_batch,
        "interval_ms": 1000,
        "columns": {"store": {"path": "data.store", "type": "string"},
                    "qty": {"path": "data.qty", "type": "int64"},
                    "price": {"path": "data.price", "type": "float64"}},
    }))?;
    let sink = ParquetSink::new(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
    let started = Instant::now();
    runtime.spawn_transactional_sink(
        SinkPipeline {
            common: common("bench-lake"),
            from: "stock".into(),
            start: Start::Earliest,
            lock_ms: 30_000,
            pause_after_failures: None,
        },
        sink,
    );
    let total = args.rows as u64;
    loop {
        let done: u64 = gearbox_warehouse::read::committed_positions(lake)
            .unwrap_or_default()
            .values()
            .sum();
        if done >= total {
            break;
        }
        if let Some(failure) = registry.get("bench-lake").and_then(|m| m.failure()) {
            bail!("the Parquet sink failed: {failure}");
        }
        if started.elapsed() > CASE_TIMEOUT {
            bail!("the Parquet sink wrote {done} of {total} rows in {CASE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(secs)
}
