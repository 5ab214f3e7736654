//! The producer deduplication window: `source` + `id` → where the event was first stored.
//!
//! The window is bounded by count (`events_max`) and by age (`age_ms`); the oldest entries go
//! first. It is *derived from the log*: at open it is rebuilt by reading the last `events_max`
//! records of each partition, so it survives restarts and crashes without a write of its own.
//! An entry is only ever made for an event whose append was acknowledged.
//!
//! Concurrent publishers of the same key: the first reserves it (`Pending`); others wait on the
//! condition variable until the first either stores it (they then report a duplicate) or fails
//! (they then reserve it themselves).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Default most entries kept per topic.
pub const DEDUP_WINDOW_EVENTS_DEFAULT: usize = 100_000;
/// Default longest time an entry is kept: 24 hours.
pub const DEDUP_WINDOW_MS_DEFAULT: u64 = 24 * 3600 * 1000;

/// Where an event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Pending,
    Stored(Position),
}

/// The text of the key for `source` + `id`, unambiguous whatever the strings hold.
#[must_use]
pub fn key(source: &str, id: &str) -> String {
    format!("{}:{source}{id}", source.len())
}

/// A key with its hash, made by [`DedupWindow::key`].
///
/// Every publish looks each key up several times (the request's own repeats, reserve, store,
/// eviction), and hashing the text each time was a large share of ingest CPU. The hash is taken
/// once, with the window's randomly keyed SipHash (so that producers cannot choose colliding ids),
/// and the text is shared, not copied, between the map and the eviction queue. Equality is still
/// on the full text: two events are duplicates only when their `source` and `id` are equal.
#[derive(Debug, Clone)]
pub struct Key {
    hash: u64,
    text: Arc<str>,
}

impl Key {
    /// The key's text (see [`key`]).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        // The same text is usually the same allocation (the map and the eviction queue share
        // it), and then its cold bytes need not be read.
        self.hash == other.hash && (Arc::ptr_eq(&self.text, &other.text) || self.text == other.text)
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hashes a [`Key`] by the hash it carries; for maps of keys (the request's own repeats, the
/// window).
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// The [`Hasher`] of [`KeyHash`]: it passes the key's own hash through.
#[derive(Debug)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Key` (one `write_u64`) is hashed with this; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry, KeyHash>,
    /// Stored keys in insertion order with their position and insertion time, for eviction.
    order: VecDeque<(Key, Position, i64)>,
}

/// One topic's window.
#[derive(Debug)]
pub struct DedupWindow {
    events_max: usize,
    /// The keyed hash of [`Key`]s, random per window.
    hasher: RandomState,
    age_ms: u64,
    inner: Mutex<Inner>,
    settled: Condvar,
}

/// The outcome of [`DedupWindow::reserve`] for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The caller now owns the key and must [`DedupWindow::store`] or [`DedupWindow::release`] it.
    Reserved,
    /// The event was stored before, here.
    Duplicate(Position),
}

impl DedupWindow {
    /// An empty window.
    #[must_use]
    pub fn new(events_max: usize, age_ms: u64) -> Self {
        DedupWindow {
            events_max,
            hasher: RandomState::new(),
            age_ms,
            inner: Mutex::new(Inner::default()),
            settled: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key for `source` + `id` in this window.
    #[must_use]
    pub fn key(&self, source: &str, id: &str) -> Key {
        // Written into a reused buffer, so that the shared text is the key's one allocation.
        thread_local!(static BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) });
        let text: Arc<str> = BUF.with_borrow_mut(|buf| {
            use std::fmt::Write as _;
            buf.clear();
            let _ = write!(buf, "{}:", source.len());
            buf.push_str(source);
            buf.push_str(id);
            Arc::from(buf.as_str())
        });
        debug_assert_eq!(&*text, key(source, id));
        Key {
            hash: self.hasher.hash_one(&*text),
            text,
        }
    }

    /// Reserves each key (in order), waiting while another publisher holds one. Returns one
    /// answer per key. Keys repeated inside `keys` must be handled by the caller.
    pub fn reserve(&self, keys: &[&Key], now_ms: i64) -> Vec<Reservation> {
        let mut inner = self.lock();
        loop {
            self.evict(&mut inner, now_ms);
            if !keys
                .iter()
                .any(|k| matches!(inner.map.get(*k), Some(Entry::Pending)))
            {
                break;
            }
            inner = self
                .settled
                .wait(inner)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        keys.iter()
            .map(|k| match inner.map.entry((*k).clone()) {
                std::collections::hash_map::Entry::Occupied(e) => match e.get() {
                    Entry::Stored(p) => Reservation::Duplicate(*p),
                    Entry::Pending => unreachable!("waited above until no key was pending"),
                },
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(Entry::Pending);
                    Reservation::Reserved
                }
            })
            .collect()
    }

    /// Records where reserved keys were stored.
    pub fn store(&self, stored: &[(&Key, Position)], now_ms: i64) {
        let mut inner = self.lock();
        for (k, p) in stored {
            match inner.map.get_mut(*k) {
                Some(entry) => *entry = Entry::Stored(*p),
                None => {
                    inner.map.insert((*k).clone(), Entry::Stored(*p));
                }
            }
            inner.order.push_back(((*k).clone(), *p, now_ms));
        }
        self.evict(&mut inner, now_ms);
        self.settled.notify_all();
    }

    /// Gives up reserved keys whose events were not stored.
    pub fn release(&self, keys: &[&Key]) {
        let mut inner = self.lock();
        for k in keys {
            if matches!(inner.map.get(*k), Some(Entry::Pending)) {
                inner.map.remove(*k);
            }
        }
        self.settled.notify_all();
    }

    /// Adds an entry found while rebuilding from the log (oldest first).
    pub fn load(&self, key: Key, position: Position, stored_ms: i64) {
        let mut inner = self.lock();
        inner.map.insert(key.clone(), Entry::Stored(position));
        inner.order.push_back((key, position, stored_ms));
    }

    /// Number of stored entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether the window is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops entries beyond the count limit or older than the age limit.
    pub fn trim(&self, now_ms: i64) {
        let mut inner = self.lock();
        self.evict(&mut inner, now_ms);
    }

    fn evict(&self, inner: &mut Inner, now_ms: i64) {
        let oldest_kept = now_ms.saturating_sub(i64::try_from(self.age_ms).unwrap_or(i64::MAX));
        while let Some((_, _, at)) = inner.order.front() {
            if inner.order.len() <= self.events_max && *at >= oldest_kept {
                break;
            }
            let (k, p, _) = inner.order.pop_front().expect("front exists");
            // The log can hold a key twice (a redrive, or a repeat after the window passed);
            // only the entry that the map still points at removes it.
            if let std::collections::hash_map::Entry::Occupied(e) = inner.map.entry(k)
                && matches!(e.get(), Entry::Stored(q) if *q == p)
            {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Position = Position {
        partition: 1,
        offset: 9,
    };

    #[test]
    fn a_stored_key_is_a_duplicate_until_it_ages_or_counts_out() {
        let w = DedupWindow::new(2, 1000);
        let a = w.key("s", "a");
        assert_eq!(w.reserve(&[&a], 0), [Reservation::Reserved]);
        w.store(&[(&a, P)], 0);
        assert_eq!(w.reserve(&[&a], 10), [Reservation::Duplicate(P)]);
        // Age limit.
        assert_eq!(w.reserve(&[&a], 1001), [Reservation::Reserved]);
        w.release(&[&a]);
        // Count limit: the oldest goes first.
        let keys: Vec<Key> = (0..3).map(|i| w.key("s", &i.to_string())).collect();
        for k in &keys {
            w.reserve(&[k], 2000);
            w.store(&[(k, P)], 2000);
        }
        assert_eq!(w.len(), 2, "bounded by events_max");
        assert_eq!(w.reserve(&[&keys[0]], 2000), [Reservation::Reserved]);
        assert_eq!(w.reserve(&[&keys[2]], 2000), [Reservation::Duplicate(P)]);
    }

    #[test]
    fn keys_do_not_collide_across_the_source_id_boundary() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
    }

    #[test]
    fn a_second_publisher_waits_for_the_first() {
        let w = std::sync::Arc::new(DedupWindow::new(10, 10_000));
        let k = w.key("s", "x");
        assert_eq!(w.reserve(&[&k], 0), [Reservation::Reserved]);
        let (w2, k2) = (w.clone(), k.clone());
        let waiter = std::thread::spawn(move || w2.reserve(&[&k2], 0));
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the waiter block
        w.store(&[(&k, P)], 0);
        assert_eq!(waiter.join().unwrap(), [Reservation::Duplicate(P)]);
    }
}
