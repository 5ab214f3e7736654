//! The disk's own numbers, measured with plain `std::fs` the way a log writes: appending
//! sequentially to a fresh file, each write followed by `fdatasync` (`File::sync_data`).
//!
//! These are the yardstick for the log. Absolute MB/s say little across machines (a laptop
//! NVMe, a cloud volume and a VM's virtio disk differ by 10×), but "the log reaches X% of what
//! this disk does with the same kind of durable writes, measured minutes apart" is comparable.
//! Writing at the end of a growing file matters: overwriting one block would skip the
//! block-allocation and file-size metadata a log's `fdatasync` must also persist, and flatter
//! the disk.

use super::hist::Histogram;
use anyhow::Context as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Write size of the bandwidth baseline: 1 MiB, each followed by `fdatasync`.
pub const BANDWIDTH_WRITE_BYTES: usize = 1 << 20;
/// Write size of the latency probe: one 4 KiB page, each followed by `fdatasync`.
pub const LATENCY_WRITE_BYTES: usize = 4 << 10;
/// Longest the latency probe runs (shorter if `--seconds` is shorter).
pub const LATENCY_PROBE_SECONDS_MAX: u64 = 2;

/// What one write-then-sync loop measured.
#[derive(Debug, Clone)]
pub struct WriteSync {
    /// Bytes per write.
    pub write_bytes: usize,
    /// Writes (each followed by a sync) completed.
    pub ops: u64,
    /// Wall time from the first write to the last sync's return.
    pub elapsed: Duration,
    /// Duration of each write + sync pair.
    pub latency: Histogram,
    /// Whether the loop stopped at the byte cap before its time was up.
    pub capped: bool,
    /// MB/s in consecutive windows of one second or a little more (one entry per second of
    /// `duration` at most): shows
    /// whether the disk ran steadily or fast at first and then slowed down (a virtual disk's
    /// burst allowance or the host's cache filling up).
    pub per_second_mb: Vec<f64>,
}

impl WriteSync {
    /// Bytes written in total.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.ops * self.write_bytes as u64
    }

    /// Throughput in MB/s (10^6 bytes per second).
    #[must_use]
    pub fn mb_per_s(&self) -> f64 {
        self.bytes() as f64 / self.elapsed.as_secs_f64() / 1e6
    }

    /// Slowest and fastest window of [`WriteSync::per_second_mb`], in MB/s (`NaN` if the loop ran under a second).
    #[must_use]
    pub fn per_second_range(&self) -> (f64, f64) {
        let min = self.per_second_mb.iter().copied().reduce(f64::min);
        let max = self.per_second_mb.iter().copied().reduce(f64::max);
        (min.unwrap_or(f64::NAN), max.unwrap_or(f64::NAN))
    }
}

/// Appends `write_bytes` at a time to the new file `path`, syncing after each write, until
/// `duration` has passed or `bytes_cap` would be exceeded (at least one write is made).
///
/// # Errors
/// If `path` exists already, or on any I/O error.
pub fn write_sync_loop(
    path: &Path,
    write_bytes: usize,
    duration: Duration,
    bytes_cap: u64,
) -> anyhow::Result<WriteSync> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    let buf = noise(write_bytes, 0x9e37_79b9_7f4a_7c15);
    let mut latency = Histogram::new();
    let mut ops = 0u64;
    let mut capped = false;
    let mut per_second_mb = Vec::new();
    let mut window_bytes = 0u64;
    let start = Instant::now();
    let deadline = start + duration;
    let mut window_start = start;
    loop {
        let t0 = Instant::now();
        file.write_all(&buf)
            .with_context(|| format!("writing {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", path.display()))?;
        let t1 = Instant::now();
        latency.record(t1 - t0);
        ops += 1;
        // Windows close at the first write that completes a second or more after they opened,
        // so each holds whole writes and its rate uses its exact length.
        window_bytes += write_bytes as u64;
        let window = t1 - window_start;
        if window >= Duration::from_secs(1) {
            per_second_mb.push(window_bytes as f64 / window.as_secs_f64() / 1e6);
            window_bytes = 0;
            window_start = t1;
        }
        if (ops + 1) * write_bytes as u64 > bytes_cap {
            capped = t1 < deadline;
            break;
        }
        if t1 >= deadline {
            break;
        }
    }
    Ok(WriteSync {
        write_bytes,
        ops,
        elapsed: start.elapsed(),
        latency,
        capped,
        per_second_mb,
    })
}

/// `len` pseudo-random bytes (xorshift64), so that nothing on the way can compress or
/// deduplicate them.
#[must_use]
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
