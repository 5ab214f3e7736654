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
use std::sync::{Condvar, Mutex, MutexGuard};

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

/// The key for `source` + `id`, unambiguous whatever the strings hold.
#[must_use]
pub fn key(source: &str, id: &str) -> String {
    format!("{}:{source}{id}", source.len())
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Stored keys in insertion order with their position and insertion time, for eviction.
    order: VecDeque<(String, Position, i64)>,
}

/// One topic's window.
#[derive(Debug)]
pub struct DedupWindow {
    events_max: usize,
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

    /// Reserves each key (in order), waiting while another publisher holds one. Returns one
    /// answer per key. Keys repeated inside `keys` must be handled by the caller.
    pub fn reserve(&self, keys: &[&str], now_ms: i64) -> Vec<Reservation> {
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
            .map(|k| match inner.map.get(*k) {
                Some(Entry::Stored(p)) => Reservation::Duplicate(*p),
                Some(Entry::Pending) => unreachable!("waited above until no key was pending"),
                None => {
                    inner.map.insert((*k).to_string(), Entry::Pending);
                    Reservation::Reserved
                }
            })
            .collect()
    }

    /// Records where reserved keys were stored.
    pub fn store(&self, stored: &[(&str, Position)], now_ms: i64) {
        let mut inner = self.lock();
        for (k, p) in stored {
            inner.map.insert((*k).to_string(), Entry::Stored(*p));
            inner.order.push_back(((*k).to_string(), *p, now_ms));
        }
        self.evict(&mut inner, now_ms);
        self.settled.notify_all();
    }

    /// Gives up reserved keys whose events were not stored.
    pub fn release(&self, keys: &[&str]) {
        let mut inner = self.lock();
        for k in keys {
            if matches!(inner.map.get(*k), Some(Entry::Pending)) {
                inner.map.remove(*k);
            }
        }
        self.settled.notify_all();
    }

    /// Adds an entry found while rebuilding from the log (oldest first).
    pub fn load(&self, key: String, position: Position, stored_ms: i64) {
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
            if matches!(inner.map.get(&k), Some(Entry::Stored(q)) if *q == p) {
                inner.map.remove(&k);
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
        let a = key("s", "a");
        assert_eq!(w.reserve(&[&a], 0), [Reservation::Reserved]);
        w.store(&[(&a, P)], 0);
        assert_eq!(w.reserve(&[&a], 10), [Reservation::Duplicate(P)]);
        // Age limit.
        assert_eq!(w.reserve(&[&a], 1001), [Reservation::Reserved]);
        w.release(&[&a]);
        // Count limit: the oldest goes first.
        let keys: Vec<String> = (0..3).map(|i| key("s", &i.to_string())).collect();
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
        let k = key("s", "x");
        assert_eq!(w.reserve(&[&k], 0), [Reservation::Reserved]);
        let (w2, k2) = (w.clone(), k.clone());
        let waiter = std::thread::spawn(move || w2.reserve(&[&k2], 0));
        std::thread::sleep(std::time::Duration::from_millis(20)); // let the waiter block
        w.store(&[(&k, P)], 0);
        assert_eq!(waiter.join().unwrap(), [Reservation::Duplicate(P)]);
    }
}
