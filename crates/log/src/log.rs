//! The log: named topics, each a fixed set of partitions, under one root directory.
//!
//! Layout: `<root>/topics/<name>/meta` (the topic's settings, checksummed) and
//! `<root>/topics/<name>/<partition>/` (see [`crate::partition`]).
//!
//! Invariants:
//! - A topic exists iff its `meta` file is valid. `meta` is written last on create (the commit
//!   point, via write-temp, sync, rename, sync-directory) and removed first on delete, so a crash
//!   at any step leaves either the whole topic or a directory that the next open removes.
//! - Topic settings are fixed at creation in this version.
//!
//! The optional background thread syncs `SyncMode::Interval` partitions on their period and
//! applies retention every `retention_check_interval_ms`. Tests drive both by hand instead.

use crate::config::{PartitionConfig, Retention, SyncMode};
use crate::error::{AppendError, OpenError, TopicError, io_err};
use crate::io::{Clock, Storage};
use crate::partition::Partition;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 4096;
/// Longest topic name, in bytes (Kafka's limit).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Default period of the background retention pass.
pub const RETENTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// How often the background thread wakes to look for due work.
const FLUSHER_TICK_MS: u64 = 5;

const META_FILE: &str = "meta";
const META_MAGIC: u32 = 0x4742_544d; // "GBTM"
const META_VERSION: u16 = 1;
const NONE_U64: u64 = u64::MAX;

/// A topic's shape and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// Number of partitions, 1..=[`PARTITIONS_PER_TOPIC_MAX`].
    pub partitions: u32,
    /// Settings shared by every partition.
    pub partition: PartitionConfig,
}

/// How the log is run.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Where bytes go.
    pub storage: Arc<dyn Storage>,
    /// Where time comes from.
    pub clock: Arc<dyn Clock>,
    /// Start the background flusher and retention thread.
    pub background: bool,
    /// Period of the background retention pass.
    pub retention_check_interval_ms: u64,
}

/// A topic: its settings and partitions.
#[derive(Debug)]
pub struct Topic {
    name: String,
    config: TopicConfig,
    partitions: Vec<Arc<Partition>>,
}

impl Topic {
    /// The topic's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The topic's settings.
    #[must_use]
    pub fn config(&self) -> &TopicConfig {
        &self.config
    }
    /// Partition `p`, if it exists.
    #[must_use]
    pub fn partition(&self, p: u32) -> Option<&Arc<Partition>> {
        self.partitions.get(p as usize)
    }
    /// Every partition, by index.
    #[must_use]
    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    admin: Mutex<()>,
    stop: (Mutex<bool>, Condvar),
}

/// The embedded log. Dropping it without [`Log::close`] is like a crash: nothing more is synced.
#[derive(Debug)]
pub struct Log {
    inner: Arc<Inner>,
    background: Option<JoinHandle<()>>,
}

/// Checks a topic name: 1 to 249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
///
/// # Errors
/// [`TopicError::InvalidName`] saying which rule failed.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("must not be empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("must not be `.` or `..`");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

impl Log {
    /// Opens (and recovers) the log under `root`, creating it if missing.
    ///
    /// # Errors
    /// [`OpenError`] on an I/O error or an unreadable topic configuration.
    pub fn open(root: &Path, options: LogOptions) -> Result<Log, OpenError> {
        let topics_dir = root.join("topics");
        let storage = Arc::clone(&options.storage);
        if !storage.exists(&topics_dir) {
            // Make every level durable: a root created here is useless if its own entry in
            // its parent can vanish in a power cut, taking acknowledged topics with it.
            let fresh_root = !storage.exists(root);
            storage
                .create_dir_all(&topics_dir)
                .map_err(io_err("create", &topics_dir))?;
            storage
                .sync_dir(root)
                .map_err(io_err("sync directory", root))?;
            if let Some(parent) = root
                .parent()
                .filter(|p| fresh_root && !p.as_os_str().is_empty())
            {
                storage
                    .sync_dir(parent)
                    .map_err(io_err("sync directory", parent))?;
            }
        }
        let mut topics = BTreeMap::new();
        let mut names = storage
            .list_dir(&topics_dir)
            .map_err(io_err("list", &topics_dir))?;
        names.sort();
        for name in names {
            let dir = topics_dir.join(&name);
            match read_meta(&*storage, &dir)? {
                Some(config) if validate_topic_name(&name).is_ok() => {
                    let mut partitions = Vec::with_capacity(config.partitions as usize);
                    for p in 0..config.partitions {
                        let pdir = dir.join(p.to_string());
                        let part = Partition::open(
                            Arc::clone(&storage),
                            Arc::clone(&options.clock),
                            &pdir,
                            config.partition.clone(),
                        )?;
                        partitions.push(Arc::new(part));
                    }
                    topics.insert(
                        name.clone(),
                        Arc::new(Topic {
                            name,
                            config,
                            partitions,
                        }),
                    );
                }
                // No valid meta: a create or delete that a crash interrupted. Finish it.
                _ => {
                    storage
                        .remove_dir_all(&dir)
                        .map_err(io_err("remove", &dir))?;
                    storage
                        .sync_dir(&topics_dir)
                        .map_err(io_err("sync directory", &topics_dir))?;
                }
            }
        }
        let inner = Arc::new(Inner {
            root: root.to_path_buf(),
            storage,
            clock: options.clock,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let background = options.background.then(|| {
            let inner = Arc::clone(&inner);
            let retention_ms = options.retention_check_interval_ms;
            std::thread::Builder::new()
                .name("gearbox-log-flusher".into())
                .spawn(move || background_loop(&inner, retention_ms))
                .expect("spawn the log's background thread")
        });
        Ok(Log { inner, background })
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// A topic by name.
    #[must_use]
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every topic, by name.
    #[must_use]
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Creates a topic durably: when this returns, the topic survives a crash.
    ///
    /// # Errors
    /// [`TopicError`] for a bad name or config, an existing topic, or an I/O error.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>, TopicError> {
        validate_topic_name(name)?;
        if config.partitions == 0 || config.partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(TopicError::Open(OpenError::InvalidConfig {
                field: "partitions",
                reason: format!(
                    "{} is outside [1, {PARTITIONS_PER_TOPIC_MAX}]",
                    config.partitions
                ),
            }));
        }
        config.partition.validate()?;
        let inner = &self.inner;
        let _admin = inner
            .admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.topic(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let topics_dir = inner.root.join("topics");
        let dir = topics_dir.join(name);
        let storage = &*inner.storage;
        if storage.exists(&dir) {
            storage
                .remove_dir_all(&dir)
                .map_err(io_err("remove", &dir))?;
        }
        storage
            .create_dir_all(&dir)
            .map_err(io_err("create", &dir))?;
        storage
            .sync_dir(&topics_dir)
            .map_err(io_err("sync directory", &topics_dir))?;
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let pdir = dir.join(p.to_string());
            let part = Partition::create(
                Arc::clone(&inner.storage),
                Arc::clone(&inner.clock),
                &pdir,
                config.partition.clone(),
            )?;
            partitions.push(Arc::new(part));
        }
        write_meta(storage, &dir, &config)?;
        let topic = Arc::new(Topic {
            name: name.to_string(),
            config,
            partitions,
        });
        inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), Arc::clone(&topic));
        Ok(topic)
    }

    /// Deletes a topic and its data. Appends in flight on it fail.
    ///
    /// # Errors
    /// [`TopicError::NotFound`], or an I/O error (the topic is gone from the log once its
    /// `meta` file is removed, even if its data could not all be deleted yet).
    pub fn delete_topic(&self, name: &str) -> Result<(), TopicError> {
        let inner = &self.inner;
        let _admin = inner
            .admin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let topic = inner
            .topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name)
            .ok_or_else(|| TopicError::NotFound(name.to_string()))?;
        for p in topic.partitions() {
            // The data is going away; a failed final sync does not matter.
            let _ = p.close();
        }
        let dir = inner.root.join("topics").join(name);
        let meta = dir.join(META_FILE);
        inner
            .storage
            .remove_file(&meta)
            .map_err(io_err("remove", &meta))?;
        inner
            .storage
            .sync_dir(&dir)
            .map_err(io_err("sync directory", &dir))?;
        inner
            .storage
            .remove_dir_all(&dir)
            .map_err(io_err("remove", &dir))?;
        let topics_dir = inner.root.join("topics");
        inner
            .storage
            .sync_dir(&topics_dir)
            .map_err(io_err("sync directory", &topics_dir))?;
        Ok(())
    }

    /// Applies retention to every partition; returns how many segments were deleted.
    pub fn apply_retention(&self) -> usize {
        apply_retention(&self.inner)
    }

    /// Syncs every partition, writes final checkpoints and stops the background thread.
    ///
    /// # Errors
    /// The first partition that failed to flush; the others are still closed.
    pub fn close(mut self) -> Result<(), AppendError> {
        self.stop_background();
        let mut first_err = None;
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.close() {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn stop_background(&mut self) {
        if let Some(handle) = self.background.take() {
            let (lock, cv) = &self.inner.stop;
            *lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            cv.notify_all();
            let _ = handle.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.stop_background();
    }
}

fn apply_retention(inner: &Inner) -> usize {
    let topics: Vec<Arc<Topic>> = inner
        .topics
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    // A partition whose checkpoint cannot be written is failed (sticky) by apply_retention
    // itself; there is nothing more to do with the error here.
    topics
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| p.apply_retention().unwrap_or(0))
        .sum()
}

fn background_loop(inner: &Inner, retention_interval_ms: u64) {
    let mut last_flush: BTreeMap<(String, u32), i64> = BTreeMap::new();
    let mut last_retention = inner.clock.now_ms();
    let (lock, cv) = &inner.stop;
    loop {
        {
            let stopped = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (stopped, _) = cv
                .wait_timeout(stopped, Duration::from_millis(FLUSHER_TICK_MS))
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *stopped {
                return;
            }
        }
        let now = inner.clock.now_ms();
        let topics: Vec<Arc<Topic>> = inner
            .topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for topic in &topics {
            let SyncMode::Interval { ms } = topic.config.partition.sync else {
                continue;
            };
            for (p, part) in topic.partitions().iter().enumerate() {
                let key = (topic.name.clone(), p as u32);
                let last = last_flush.entry(key).or_insert(now);
                if now.saturating_sub(*last) >= ms as i64 && part.is_dirty() {
                    // A failed flush is sticky inside the partition and reported on its next append.
                    let _ = part.flush();
                    *last = now;
                }
            }
        }
        if now.saturating_sub(last_retention) >= retention_interval_ms as i64 {
            apply_retention(inner);
            last_retention = now;
        }
    }
}

fn opt(v: Option<u64>) -> u64 {
    v.unwrap_or(NONE_U64)
}
fn unopt(v: u64) -> Option<u64> {
    (v != NONE_U64).then_some(v)
}

/// Encodes a topic's `meta` file (layout in `docs/format.md`).
fn encode_meta(config: &TopicConfig) -> Vec<u8> {
    let p = &config.partition;
    let (sync_kind, sync_ms) = match p.sync {
        SyncMode::Always => (0u8, 0u64),
        SyncMode::Interval { ms } => (1, ms),
        SyncMode::Never => (2, 0),
    };
    let mut out = Vec::with_capacity(80);
    out.extend_from_slice(&META_MAGIC.to_be_bytes());
    out.extend_from_slice(&META_VERSION.to_be_bytes());
    out.push(sync_kind);
    out.push(0);
    out.extend_from_slice(&config.partitions.to_be_bytes());
    for v in [
        sync_ms,
        opt(p.retention.bytes_max),
        opt(p.retention.ms_max),
        p.segment_bytes_max,
        p.segment_age_ms_max,
        p.checkpoint_interval_ms,
    ] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for v in [p.index_interval_bytes, p.batch_bytes_max, p.read_bytes_max] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

const META_BYTES: usize = 4 + 2 + 2 + 4 + 6 * 8 + 3 * 4 + 4;

fn decode_meta(b: &[u8]) -> Option<TopicConfig> {
    if b.len() != META_BYTES {
        return None;
    }
    let (body, crc) = b.split_at(META_BYTES - 4);
    if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if u32_at(0) != META_MAGIC || u16::from_be_bytes([b[4], b[5]]) != META_VERSION {
        return None;
    }
    let sync = match (b[6], u64_at(12)) {
        (0, _) => SyncMode::Always,
        (1, ms) => SyncMode::Interval { ms },
        (2, _) => SyncMode::Never,
        _ => return None,
    };
    let retention = Retention {
        bytes_max: unopt(u64_at(20)),
        ms_max: unopt(u64_at(28)),
    };
    let mut partition = PartitionConfig::new(sync, retention);
    partition.segment_bytes_max = u64_at(36);
    partition.segment_age_ms_max = u64_at(44);
    partition.checkpoint_interval_ms = u64_at(52);
    partition.index_interval_bytes = u32_at(60);
    partition.batch_bytes_max = u32_at(64);
    partition.read_bytes_max = u32_at(68);
    Some(TopicConfig {
        partitions: u32_at(8),
        partition,
    })
}

fn read_meta(storage: &dyn Storage, dir: &Path) -> Result<Option<TopicConfig>, OpenError> {
    let path = dir.join(META_FILE);
    let Ok(file) = storage.open(&path, false) else {
        return Ok(None);
    };
    let len = file.len().map_err(io_err("stat", &path))?;
    if len != META_BYTES as u64 {
        return Ok(None);
    }
    let mut bytes = vec![0u8; META_BYTES];
    file.read_exact_at(&mut bytes, 0)
        .map_err(io_err("read", &path))?;
    Ok(decode_meta(&bytes).filter(|c| {
        (1..=PARTITIONS_PER_TOPIC_MAX).contains(&c.partitions) && c.partition.validate().is_ok()
    }))
}

fn write_meta(storage: &dyn Storage, dir: &Path, config: &TopicConfig) -> Result<(), OpenError> {
    let tmp = dir.join("meta.tmp");
    let path = dir.join(META_FILE);
    let file = storage.open(&tmp, true).map_err(io_err("create", &tmp))?;
    file.set_len(0).map_err(io_err("truncate", &tmp))?;
    file.write_all_at(&encode_meta(config), 0)
        .map_err(io_err("write", &tmp))?;
    file.sync_data().map_err(io_err("sync", &tmp))?;
    storage
        .rename(&tmp, &path)
        .map_err(io_err("rename", &tmp))?;
    storage.sync_dir(dir).map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_every_sync_mode() {
        for sync in [
            SyncMode::Always,
            SyncMode::Interval { ms: 25 },
            SyncMode::Never,
        ] {
            let mut partition = PartitionConfig::new(
                sync,
                Retention {
                    bytes_max: Some(1 << 20),
                    ms_max: None,
                },
            );
            partition.segment_bytes_max = 4096;
            let config = TopicConfig {
                partitions: 3,
                partition,
            };
            let bytes = encode_meta(&config);
            assert_eq!(bytes.len(), META_BYTES);
            assert_eq!(decode_meta(&bytes), Some(config));
        }
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["orders", "a.b-c_d", "X1", &"n".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"n".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
