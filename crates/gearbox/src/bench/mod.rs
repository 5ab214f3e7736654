//! `gearbox bench`: measurements of Gearbox against the machine it runs on, in the same run.
//!
//! Every benchmark here reports a ratio against a baseline it measures itself (the disk's own
//! durable-write bandwidth, later a peer system on loopback), because absolute figures from a
//! VM, a laptop and a server cannot be compared, while "X% of this disk, measured a minute
//! apart" can. `docs/benchmarks.md` records the figures and the commands that produced them.
//!
//! Shared pieces live here: a scratch directory that is always removed (unless `--keep`), the
//! machine facts printed with every result, and small JSON helpers (no serde in this crate).

#[cfg(all(feature = "postgres", feature = "files"))]
mod batch;
mod chart;
pub mod disk;
mod embedded;
pub mod hist;
mod http;
mod kafka;
mod load;
mod log;
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
mod redis;
mod suite;
pub mod traced;

use anyhow::Context as _;
use clap::Subcommand;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `gearbox bench`: the suite of every target side by side, or one detailed benchmark.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    #[command(flatten)]
    suite: suite::SuiteArgs,
}

/// The detailed benchmarks `gearbox bench` can run.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Durable append throughput of the log, as a percentage of the disk's own bandwidth.
    ///
    /// Appends with `SyncMode::Always`: every acknowledgement waits for an `fdatasync` that
    /// covers it, and concurrent appenders share syncs (group commit). The yardstick is the
    /// disk's own 1 MiB write+fdatasync bandwidth, measured in the same run and directory.
    ///
    /// Runs, in a fresh directory that is deleted afterwards: an unmeasured warm-up, the disk
    /// baseline (1 MiB write+fdatasync appends to a new file; then 4 KiB write+fdatasync
    /// latency), one log case per appender count with large batches, the same with small
    /// batches, and the disk baseline again. Takes about (2 + 2 × appender counts) × --seconds
    /// + --warmup-seconds + 2 seconds.
    Log(log::LogArgs),
    /// The server over HTTP with sync=always: batched CloudEvents ingest throughput, and
    /// produce-to-consume latency through long polls at a fixed rate.
    ///
    /// Starts its own `gearbox serve` (this binary) on a free loopback port over a scratch
    /// directory that is deleted afterwards.
    Http(http::HttpArgs),
    /// The Postgres upsert sink against plain batched `INSERT`s over the same server: events/s
    /// for new keys and for updates, side by side with rows/s of the baseline.
    ///
    /// Works in a schema of its own on `--url`, dropped afterwards.
    #[cfg(feature = "postgres")]
    Postgres(postgres::PostgresArgs),
    /// The batch layer on one CSV export: the `files` import into the log and the Parquet sink,
    /// side by side with `COPY` into Postgres and DuckDB reading (and writing Parquet from) the
    /// same file; rows/s, MB/s and ratios.
    ///
    /// Works in a scratch directory and a Postgres schema of its own, both removed afterwards;
    /// the DuckDB cases need `--python` with the `duckdb` package (`.ci/python-env`).
    #[cfg(all(feature = "postgres", feature = "files"))]
    Batch(batch::BatchArgs),
}

/// Runs the suite, or one benchmark.
///
/// # Errors
/// Any I/O or log error, or an invalid combination of options.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.command {
        None => suite::run(&args.suite),
        Some(BenchCommand::Log(args)) => log::run(args),
        Some(BenchCommand::Http(args)) => http::run(args),
        #[cfg(feature = "postgres")]
        Some(BenchCommand::Postgres(args)) => postgres::run(args),
        #[cfg(all(feature = "postgres", feature = "files"))]
        Some(BenchCommand::Batch(args)) => batch::run(args),
    }
}

/// A fresh directory for bench data, removed with everything in it when dropped (on success,
/// error or panic, but not on SIGKILL or Ctrl-C) unless `keep` is set.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    /// Creates `<parent>/gearbox-bench-<pid>-<time>`; `parent` defaults to the system temp dir.
    /// The leaf must not exist, so a run never reuses (or later deletes) anyone else's files.
    ///
    /// # Errors
    /// If the directory cannot be created.
    pub fn create(parent: Option<&Path>, keep: bool) -> anyhow::Result<Scratch> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let parent = fs::canonicalize(&parent)
            .with_context(|| format!("bench directory {} must exist", parent.display()))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = parent.join(format!("gearbox-bench-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a failure leaves a directory in temp, named so that it is clearly ours.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Facts about the machine that belong next to any figure.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: String,
    /// Device, file-system type and mount point holding the bench directory.
    pub device: String,
    /// File-system type.
    pub fs_type: String,
    /// Mount point.
    pub mount: String,
}

impl Machine {
    /// Reads `/proc` (Linux); unknown fields are `"?"`.
    #[must_use]
    pub fn probe(dir: &Path) -> Machine {
        let unknown = || "?".to_string();
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| unknown(), |s| s.trim().to_string());
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        // The mount covering `dir` is the one with the longest matching mount point.
        let best = mounts
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let (dev, mnt, ty) = (f.next()?, unescape_mount(f.next()?), f.next()?);
                dir.starts_with(&mnt)
                    .then(|| (dev.to_string(), mnt, ty.to_string()))
            })
            .max_by_key(|(_, mnt, _)| mnt.len());
        let (device, mount, fs_type) = best.unwrap_or_else(|| (unknown(), unknown(), unknown()));
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel,
            device,
            fs_type,
            mount,
        }
    }
}

/// Undoes the octal escapes (`\040` for a space, ...) of `/proc/self/mounts`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits, the first at most 3 so the value fits a byte.
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` as a JSON string literal.
#[must_use]
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `x` as a JSON number with `decimals` places, or `null` when not finite.
#[must_use]
pub fn json_num(x: f64, decimals: usize) -> String {
    if x.is_finite() {
        format!("{x:.decimals$}")
    } else {
        "null".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
        assert_eq!(json_num(f64::NAN, 1), "null");
        assert_eq!(json_num(1.26, 1), "1.3");
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount("/"), "/");
        assert_eq!(unescape_mount(r"/x\"), r"/x\");
    }
}
