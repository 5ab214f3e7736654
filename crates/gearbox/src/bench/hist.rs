//! A fixed-size, log-linear latency histogram.
//!
//! Bench threads record one duration per operation for as long as a case runs, so keeping
//! every sample would grow without bound. This histogram has a fixed number of counters
//! ([`BUCKETS`], 3,776 × 8 bytes ≈ 30 KiB) that covers every `u64` nanosecond value, so it never
//! clamps, and answers percentiles with a relative error below 1/[`SUB_BUCKETS`] (1.6%):
//! values below 64 ns are exact, and each power-of-two range above is split into 64 equal
//! buckets. Each thread fills its own histogram; they are merged when the case ends.

use std::time::Duration;

/// log2 of the sub-buckets per power of two.
const SUB_BITS: u32 = 6;
/// Buckets per power-of-two range; the relative error bound is 1 / this.
pub const SUB_BUCKETS: usize = 1 << SUB_BITS;
/// Total counters: one exact range below [`SUB_BUCKETS`], then one range per remaining bit.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB_BUCKETS;

/// Counts of nanosecond durations.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    #[must_use]
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    /// Records one duration (saturating at `u64::MAX` nanoseconds, about 584 years).
    pub fn record(&mut self, d: Duration) {
        self.record_ns(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one value in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.counts[index(ns)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    /// Adds every count of `other` to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Number of values recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0.0..=1.0), as the upper bound of its bucket (never above the
    /// largest value recorded), or `None` when empty.
    #[must_use]
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // Rank of the wanted sample, 1-based: the smallest rank covering fraction `q`.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_bound(i).min(self.max));
            }
        }
        Some(self.max)
    }

    /// [`Histogram::quantile_ns`] in milliseconds; `NaN` when empty.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.quantile_ns(q).map_or(f64::NAN, |ns| ns as f64 / 1e6)
    }
}

/// The bucket holding `v`.
fn index(v: u64) -> usize {
    if v < SUB_BUCKETS as u64 {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS;
    ((shift as usize + 1) << SUB_BITS) + ((v >> shift) as usize - SUB_BUCKETS)
}

/// The largest value bucket `i` holds.
fn upper_bound(i: usize) -> u64 {
    if i < SUB_BUCKETS {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) as u32 - 1;
    let sub = (i & (SUB_BUCKETS - 1)) as u64;
    ((SUB_BUCKETS as u64 + sub) << shift) + ((1u64 << shift) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_bounds_it_tightly() {
        let mut probes: Vec<u64> = (0..5000).collect();
        for bit in 0..64 {
            let p = 1u64 << bit;
            probes.extend([p - 1, p, p + 1, p.saturating_mul(3) / 2]);
        }
        probes.push(u64::MAX);
        for v in probes {
            let i = index(v);
            assert!(i < BUCKETS, "{v} -> bucket {i} out of range");
            let hi = upper_bound(i);
            let lo = if i == 0 { 0 } else { upper_bound(i - 1) + 1 };
            assert!(lo <= v && v <= hi, "{v} not in bucket {i} [{lo}, {hi}]");
            assert!((hi - lo) as f64 <= v as f64 / SUB_BUCKETS as f64 + 1.0);
        }
        assert_eq!(upper_bound(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile_ns(0.5), None);
        for v in 1..=10_000u64 {
            h.record_ns(v * 1000);
        }
        let p50 = h.quantile_ns(0.5).unwrap() as f64;
        let p99 = h.quantile_ns(0.99).unwrap() as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "p99 {p99}");
        assert_eq!(h.quantile_ns(1.0), Some(10_000_000));
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        a.record_ns(10);
        b.record_ns(1_000_000);
        b.record_ns(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile_ns(0.1), Some(10));
        assert!(a.quantile_ns(0.9).unwrap() >= 1_000_000);
    }
}
