//! The listener's counters, read at scrape time by `/metrics` (the binary encodes them):
//! requests per API, connections open and refused, connections closed for a bad request, and
//! produce refusals per error code.

use kafka_protocol::messages::ApiKey;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// One more than the largest API key counted (keys above it are counted as `other`).
const API_KEYS: usize = 128;

/// The counters.
#[derive(Debug)]
pub struct Stats {
    requests: Vec<AtomicU64>,
    connections: AtomicI64,
    refused_connections: AtomicU64,
    closed_bad_request: AtomicU64,
    produce_errors: Mutex<BTreeMap<i16, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: (0..=API_KEYS).map(|_| AtomicU64::new(0)).collect(),
            connections: AtomicI64::new(0),
            refused_connections: AtomicU64::new(0),
            closed_bad_request: AtomicU64::new(0),
            produce_errors: Mutex::new(BTreeMap::new()),
        }
    }
}

/// What a scrape reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests handled, by API name (`Produce`, `Fetch`, ...), only those seen.
    pub requests: Vec<(String, u64)>,
    /// Connections open now.
    pub connections: i64,
    /// Connections closed at once because `connections_max` were open.
    pub refused_connections: u64,
    /// Connections closed because of a request Kafka would not answer either.
    pub closed_bad_request: u64,
    /// Partitions of Produce requests refused, by Kafka error name.
    pub produce_errors: Vec<(String, u64)>,
}

impl Stats {
    pub(crate) fn request(&self, key: i16) {
        let i = usize::try_from(key).map_or(API_KEYS, |k| k.min(API_KEYS));
        self.requests[i].fetch_add(1, Relaxed);
    }

    pub(crate) fn opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    pub(crate) fn refused(&self) {
        self.refused_connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn bad_request(&self) {
        self.closed_bad_request.fetch_add(1, Relaxed);
    }

    pub(crate) fn produce_error(&self, code: i16) {
        *self
            .produce_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let requests = self
            .requests
            .iter()
            .enumerate()
            .filter_map(|(k, n)| {
                let n = n.load(Relaxed);
                (n > 0).then(|| {
                    let name = i16::try_from(k)
                        .ok()
                        .filter(|&k| (k as usize) < API_KEYS)
                        .and_then(|k| ApiKey::try_from(k).ok())
                        .map_or_else(|| "other".to_string(), |k| format!("{k:?}"));
                    (name, n)
                })
            })
            .collect();
        let produce_errors = self
            .produce_errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(&code, &n)| {
                let name = kafka_protocol::error::ResponseError::try_from_code(code)
                    .map_or_else(|| "NONE".to_string(), |e| format!("{e:?}"));
                (name, n)
            })
            .collect();
        Snapshot {
            requests,
            connections: self.connections.load(Relaxed),
            refused_connections: self.refused_connections.load(Relaxed),
            closed_bad_request: self.closed_bad_request.load(Relaxed),
            produce_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_by_name() {
        let s = Stats::default();
        s.request(ApiKey::Produce as i16);
        s.request(ApiKey::Produce as i16);
        s.request(ApiKey::Fetch as i16);
        s.request(900);
        s.produce_error(2);
        s.opened();
        s.opened();
        s.closed();
        let snap = s.snapshot();
        assert_eq!(
            snap.requests,
            vec![
                ("Produce".to_string(), 2),
                ("Fetch".to_string(), 1),
                ("other".to_string(), 1)
            ]
        );
        assert_eq!(snap.produce_errors, vec![("CorruptMessage".to_string(), 1)]);
        assert_eq!(snap.connections, 1);
    }
}
