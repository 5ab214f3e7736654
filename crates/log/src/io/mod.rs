//! The one seam between the log and the outside world: files, directories and the clock.
//!
//! Every byte the log reads or writes, and every timestamp it takes, goes through [`Storage`] and
//! [`Clock`]. Production uses [`OsStorage`] and [`SystemClock`]; tests put [`sim::SimDisk`] and
//! [`sim::SimClock`] underneath instead, so that a crash can drop exactly the bytes that were
//! never synced, and a fault can be injected at any write or sync point.
//!
//! The interface is deliberately small and positional (`read_at`/`write_all_at`), with no
//! cursor state, so that a simulated implementation is easy to audit.
//!
//! Invariant: nothing in this crate touches `std::fs` or `std::time` outside this module.

pub mod sim;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A file opened for positional reads and writes.
#[allow(clippy::len_without_is_empty)] // a file of length 0 is not special to the log
pub trait File: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns fewer only at end of file.
    ///
    /// # Errors
    /// Any I/O error from the device.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `pos`, extending the file if needed.
    ///
    /// # Errors
    /// Any I/O error; `ErrorKind::StorageFull` when the device is full.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Makes the file's data (and its length) durable: `fdatasync(2)`.
    ///
    /// # Errors
    /// Any I/O error. Callers treat a failed sync as fatal for the file (see `docs/durability.md`).
    fn sync_data(&self) -> io::Result<()>;

    /// The file's current length in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;

    /// Truncates or extends the file to `len` bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `pos`.
    ///
    /// # Errors
    /// `ErrorKind::UnexpectedEof` if the file ends first, or any I/O error.
    fn read_exact_at(&self, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.read_at(buf, pos)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    pos += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A directory tree of files. Paths are absolute or relative to the process's working directory
/// for [`OsStorage`], and opaque keys for the simulator.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Creates `path` and any missing parents. Not durable until [`Storage::sync_dir`] of the
    /// parent.
    ///
    /// # Errors
    /// Any I/O error.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Names of the entries (files and directories) directly inside `path`, in no set order.
    ///
    /// # Errors
    /// `ErrorKind::NotFound` if `path` does not exist, or any I/O error.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;

    /// Opens `path` for reading and writing, creating it empty when `create` is set and it is
    /// missing. A new file's directory entry is not durable until [`Storage::sync_dir`].
    ///
    /// # Errors
    /// `ErrorKind::NotFound` when missing and `create` is false, or any I/O error.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>>;

    /// Removes a file. Not durable until [`Storage::sync_dir`] of the parent.
    ///
    /// # Errors
    /// Any I/O error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes a directory and everything in it.
    ///
    /// # Errors
    /// Any I/O error.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Atomically renames `from` to `to`, replacing `to`. Not durable until [`Storage::sync_dir`].
    ///
    /// # Errors
    /// Any I/O error.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the entries of directory `path` durable (`fsync` on the directory).
    ///
    /// # Errors
    /// Any I/O error.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Whether `path` exists.
    fn exists(&self, path: &Path) -> bool;
}

/// Wall-clock milliseconds since the Unix epoch. Used for segment age, retention by time and
/// record timestamps that the caller leaves unset.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The real file system, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStorage;

#[derive(Debug)]
struct OsFile(fs::File);

impl File for OsFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.0.read_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Storage for OsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn File>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(OsFile(file)))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fs::File::open(path)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// Whether an I/O error means the device is out of space.
pub(crate) fn is_disk_full(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull || err.kind() == io::ErrorKind::QuotaExceeded
}
