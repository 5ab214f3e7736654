//! Broker-side telemetry that `/metrics` reads: the age of events when they are delivered
//! (`gearbox_event_age_seconds`, a histogram per topic and subscription: now minus the event's
//! `time`).
//!
//! Limits: at most [`AGE_SERIES_MAX`] (topic, subscription) series; deliveries beyond it are
//! observed under subscription `other` of their topic, and past that under topic `other`.

use prometheus_client::metrics::histogram::Histogram;
use std::collections::BTreeMap;
use std::sync::RwLock;

/// Most (topic, subscription) series of the event-age histogram.
pub const AGE_SERIES_MAX: usize = 1024;
/// Bucket upper bounds of the event-age histogram, in seconds: 5 ms to a day.
pub const AGE_BUCKETS_SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
    86400.0,
];

/// Event ages at delivery, by (topic, subscription).
#[derive(Debug, Default)]
pub struct EventAges {
    series: RwLock<BTreeMap<(String, String), Histogram>>,
}

impl EventAges {
    /// Observes the ages (seconds) of events of `topic` delivered to `subscription`.
    pub fn observe(&self, topic: &str, subscription: &str, ages: &[f64]) {
        if ages.is_empty() {
            return;
        }
        let key = (topic.to_string(), subscription.to_string());
        let found = self
            .series
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned();
        let h = found.unwrap_or_else(|| {
            let mut all = self
                .series
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = if all.len() < AGE_SERIES_MAX || all.contains_key(&key) {
                key
            } else if all.len() < AGE_SERIES_MAX + 1 {
                (topic.to_string(), "other".to_string())
            } else {
                ("other".to_string(), "other".to_string())
            };
            all.entry(key)
                .or_insert_with(|| Histogram::new(AGE_BUCKETS_SECONDS))
                .clone()
        });
        for &a in ages {
            h.observe(a.max(0.0));
        }
    }

    /// Every series (the histograms share their state with the recorder).
    #[must_use]
    pub fn series(&self) -> Vec<((String, String), Histogram)> {
        self.series
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, h)| (k.clone(), h.clone()))
            .collect()
    }
}

/// Seconds from the event's `time` (RFC 3339) to `now_ms`; `None` without a readable time.
#[must_use]
pub fn age_seconds(time: Option<&str>, now_ms: i64) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(time?).ok()?;
    Some((now_ms - t.timestamp_millis()) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_bounded() {
        let ages = EventAges::default();
        for i in 0..AGE_SERIES_MAX + 10 {
            ages.observe("t", &format!("s{i}"), &[1.0]);
        }
        ages.observe("u", "x", &[1.0]);
        let series = ages.series();
        assert_eq!(series.len(), AGE_SERIES_MAX + 2);
        assert!(series.iter().any(|((t, s), _)| t == "t" && s == "other"));
        assert!(
            series
                .iter()
                .any(|((t, s), _)| t == "other" && s == "other")
        );
    }

    #[test]
    fn age_is_now_minus_time() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(age_seconds(Some("2026-01-01T00:00:07.5Z"), now), Some(2.5));
        assert_eq!(age_seconds(Some("not a time"), now), None);
        assert_eq!(age_seconds(None, now), None);
    }
}
