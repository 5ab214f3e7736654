//! An instrumented [`Storage`] for `--io-breakdown`: the real file system (`OsStorage`) with
//! counters of how many writes and `fdatasync`s the log issues, and how long they take,
//! split into segment files (`*.log`) and everything else (the checkpoint, indexes).
//!
//! It answers "where does an append's time go" without a profiler and without touching the
//! log: if the partition spends nearly all of its wall time inside segment syncs, throughput is
//! bounded by bytes-per-sync ÷ sync latency; if much time goes to checkpoint syncs or to
//! writes, the cost is elsewhere. The overhead is two clock reads and a few relaxed atomic adds
//! per operation, small beside a write of kilobytes or an `fdatasync`.

use gearbox_log::io::{File, OsStorage, Storage};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Live counters for one class of file.
#[derive(Debug, Default)]
struct Counters {
    writes: AtomicU64,
    write_bytes: AtomicU64,
    write_ns: AtomicU64,
    syncs: AtomicU64,
    sync_ns: AtomicU64,
    sync_ns_max: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> IoCounts {
        IoCounts {
            writes: self.writes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            write_ns: self.write_ns.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_ns: self.sync_ns.load(Ordering::Relaxed),
            sync_ns_max: self.sync_ns_max.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of one class's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoCounts {
    /// `write_all_at` calls.
    pub writes: u64,
    /// Bytes passed to them.
    pub write_bytes: u64,
    /// Nanoseconds spent in them.
    pub write_ns: u64,
    /// `sync_data` calls.
    pub syncs: u64,
    /// Nanoseconds spent in them.
    pub sync_ns: u64,
    /// The longest one, in nanoseconds.
    pub sync_ns_max: u64,
}

impl IoCounts {
    /// The counts since `earlier` (the maximum is kept as is: reset counters to measure a
    /// window's maximum).
    #[must_use]
    pub fn since(self, earlier: IoCounts) -> IoCounts {
        IoCounts {
            writes: self.writes - earlier.writes,
            write_bytes: self.write_bytes - earlier.write_bytes,
            write_ns: self.write_ns - earlier.write_ns,
            syncs: self.syncs - earlier.syncs,
            sync_ns: self.sync_ns - earlier.sync_ns,
            sync_ns_max: self.sync_ns_max,
        }
    }
}

/// `OsStorage` with counters; see the module docs.
#[derive(Debug, Default)]
pub struct TracedStorage {
    inner: OsStorage,
    segments: Arc<Counters>,
    other: Arc<Counters>,
}

impl TracedStorage {
    /// Zeroes the maxima, so that they cover only what follows (e.g. not a partition's setup).
    pub fn reset_maxima(&self) {
        self.segments.sync_ns_max.store(0, Ordering::Relaxed);
        self.other.sync_ns_max.store(0, Ordering::Relaxed);
    }

    /// Counters for segment files (`*.log`).
    #[must_use]
    pub fn segments(&self) -> IoCounts {
        self.segments.snapshot()
    }

    /// Counters for every other file (checkpoint, indexes).
    #[must_use]
    pub fn other(&self) -> IoCounts {
        self.other.snapshot()
    }
}

#[derive(Debug)]
struct TracedFile {
    inner: Arc<dyn File>,
    counters: Arc<Counters>,
}

fn elapsed_ns(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl File for TracedFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.inner.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        let t0 = Instant::now();
        let result = self.inner.write_all_at(buf, pos);
        let c = &self.counters;
        c.write_ns.fetch_add(elapsed_ns(t0), Ordering::Relaxed);
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.write_bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        result
    }
    fn sync_data(&self) -> io::Result<()> {
        let t0 = Instant::now();
        let result = self.inner.sync_data();
        let ns = elapsed_ns(t0);
        let c = &self.counters;
        c.sync_ns.fetch_add(ns, Ordering::Relaxed);
        c.sync_ns_max.fetch_max(ns, Ordering::Relaxed);
        c.syncs.fetch_add(1, Ordering::Relaxed);
        result
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl Storage for TracedStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let inner = self.inner.open(path, create)?;
        let is_segment = path.extension().is_some_and(|e| e == "log");
        let counters = Arc::clone(if is_segment {
            &self.segments
        } else {
            &self.other
        });
        Ok(Arc::new(TracedFile { inner, counters }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
}
