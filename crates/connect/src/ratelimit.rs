//! A pipeline's rate limit: at most `per_second` calls a second on average, with bursts of up to
//! `burst` calls after an idle spell. It wraps governor's GCRA limiter (a leaky bucket kept as
//! one timestamp), which is lock-free, so one [`RateLimiter`] is shared by all of a pipeline's
//! tasks through `&self`.
//!
//! Invariant: over any window of `t` seconds, at most `burst + per_second * t` calls are
//! granted. [`RateLimiter::acquire`] consumes nothing until it returns, so dropping it (a
//! shutdown `select!`) leaves the limit as it was.
//!
//! Limits: `per_second` is at most [`RATE_PER_SECOND_MAX`]; `burst` is at most
//! [`RATE_BURST_SECONDS_MAX`] seconds' worth of calls.
//!
//! Unlike the retry and breaker state machines this one reads a clock, governor's monotonic
//! clock by default; [`RateLimiter::with_clock`] takes another (governor's
//! `FakeRelativeClock` in tests and simulations).

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::retry::ConfigError;

/// Largest `per_second`.
pub const RATE_PER_SECOND_MAX: u32 = 1_000_000;
/// Largest `burst`, in seconds' worth of calls at `per_second`. A larger burst would let a
/// pipeline that idled for a minute fire more than that minute's calls at once, and a peer that
/// limits per minute would reject them: the limit would no longer limit.
pub const RATE_BURST_SECONDS_MAX: u32 = 60;

/// The `rate_limit:` section of a pipeline. There is no default rate: a pipeline without the
/// section is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "RateLimitConfigFile")]
pub struct RateLimitConfig {
    /// Calls per second on average.
    pub per_second: u32,
    /// Calls allowed at once after an idle spell; defaults to `per_second` (one second's worth).
    pub burst: u32,
}

/// The config as written, where `burst` may be left out; serde cannot default one field from
/// another, so this shape is read and converted.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitConfigFile {
    per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

impl From<RateLimitConfigFile> for RateLimitConfig {
    fn from(file: RateLimitConfigFile) -> RateLimitConfig {
        RateLimitConfig {
            per_second: file.per_second,
            burst: file.burst.unwrap_or(file.per_second),
        }
    }
}

impl RateLimitConfig {
    /// Checks every field against its limit.
    ///
    /// # Errors
    /// The first field out of range: `per_second` outside 1..=[`RATE_PER_SECOND_MAX`], `burst`
    /// outside 1..=`per_second *` [`RATE_BURST_SECONDS_MAX`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=RATE_PER_SECOND_MAX).contains(&self.per_second) {
            return Err(ConfigError::new(
                "per_second",
                format!("must be 1 to {RATE_PER_SECOND_MAX}"),
            ));
        }
        let burst_max = u64::from(self.per_second) * u64::from(RATE_BURST_SECONDS_MAX);
        if !(1..=burst_max).contains(&u64::from(self.burst)) {
            return Err(ConfigError::new(
                "burst",
                format!(
                    "must be 1 to {burst_max} ({RATE_BURST_SECONDS_MAX} seconds at per_second)"
                ),
            ));
        }
        Ok(())
    }
}

/// A pipeline's rate limiter; see the module docs.
pub struct RateLimiter<C: Clock = DefaultClock> {
    config: RateLimitConfig,
    limiter: governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The governor state is one opaque timestamp; the config says what matters.
        f.debug_struct("RateLimiter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on the monotonic clock, with a full burst available.
    ///
    /// # Panics
    /// If `config` fails [`RateLimitConfig::validate`]: configs are validated when loaded, and a
    /// rate or burst of zero has no meaning.
    #[must_use]
    pub fn new(config: RateLimitConfig) -> RateLimiter {
        RateLimiter::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// A limiter on `clock`, with a full burst available. [`RateLimiter::acquire`] sleeps in
    /// tokio time for as long as `clock` says to wait, so with a clock that tokio does not drive
    /// (a fake one) it is meant for [`RateLimiter::try_acquire`].
    ///
    /// # Panics
    /// If `config` fails [`RateLimitConfig::validate`], as for [`RateLimiter::new`].
    #[must_use]
    pub fn with_clock(config: RateLimitConfig, clock: C) -> RateLimiter<C> {
        if let Err(error) = config.validate() {
            panic!("RateLimiter with an invalid config: {error}");
        }
        let per_second = NonZeroU32::new(config.per_second).expect("validated: per_second >= 1");
        let burst = NonZeroU32::new(config.burst).expect("validated: burst >= 1");
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimiter {
            config,
            limiter: governor::RateLimiter::direct_with_clock(quota, clock),
        }
    }

    /// The config it was built from.
    #[must_use]
    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Waits (a tokio sleep) until one call is allowed, and takes it. Cancel-safe: a call is
    /// taken only when this returns.
    pub async fn acquire(&self) {
        while let Err(wait) = self.check() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one call if it is allowed now.
    ///
    /// # Errors
    /// The milliseconds to wait before a call will be allowed (at least 1, rounded up), when none
    /// is allowed now; nothing is taken then.
    pub fn try_acquire(&self) -> Result<(), u64> {
        self.check().map_err(|wait| {
            let wait_ms = wait.as_nanos().div_ceil(1_000_000);
            u64::try_from(wait_ms).unwrap_or(u64::MAX).max(1)
        })
    }

    /// Takes one call, or says how long until one is allowed.
    fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::sync::Arc;

    fn config(per_second: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig { per_second, burst }
    }

    #[test]
    fn ratelimit_burst_then_wait_on_a_fake_clock() {
        // (per_second, burst, expected wait once the burst is spent)
        let table: &[(u32, u32, u64)] = &[
            (1, 1, 1_000),
            (3, 3, 334),
            (50, 5, 20),
            (50, 50, 20),
            (1_000, 3, 1),
            (RATE_PER_SECOND_MAX, 10, 1),
            (2, 120, 500),
        ];
        for &(per_second, burst, wait_ms) in table {
            let clock = FakeRelativeClock::default();
            let limiter = RateLimiter::with_clock(config(per_second, burst), clock.clone());
            for i in 0..burst {
                assert_eq!(limiter.try_acquire(), Ok(()), "{per_second}/s: call {i}");
            }
            assert_eq!(
                limiter.try_acquire(),
                Err(wait_ms),
                "{per_second}/s after {burst}"
            );
            // One interval later exactly one more call is allowed.
            clock.advance(Duration::from_secs(1) / per_second);
            assert_eq!(
                limiter.try_acquire(),
                Ok(()),
                "{per_second}/s after one interval"
            );
            assert!(limiter.try_acquire().is_err(), "{per_second}/s: only one");
            // A long idle spell refills the burst, never more.
            clock.advance(Duration::from_secs(3_600));
            for i in 0..burst {
                assert_eq!(limiter.try_acquire(), Ok(()), "{per_second}/s: refill {i}");
            }
            assert!(
                limiter.try_acquire().is_err(),
                "{per_second}/s: refill capped"
            );
        }
    }

    #[test]
    fn ratelimit_try_acquire_on_the_real_clock() {
        // One call a second, so the test would have to stall a second to see a refill.
        let limiter = RateLimiter::new(config(1, 3));
        for _ in 0..3 {
            assert_eq!(limiter.try_acquire(), Ok(()));
        }
        let wait_ms = limiter.try_acquire().expect_err("burst spent");
        assert!((1..=1_000).contains(&wait_ms), "{wait_ms}");
    }

    #[tokio::test]
    async fn ratelimit_acquire_paces_concurrent_callers() {
        // tokio's paused clock needs the test-util feature, which the crate does not enable, and
        // governor reads its own clock anyway: measure real time, with a lower bound the GCRA
        // guarantees and a generous upper bound.
        const TASKS: u32 = 4;
        const CALLS_PER_TASK: u32 = 5;
        const BURST: u32 = 5;
        let limiter = Arc::new(RateLimiter::new(config(50, BURST)));
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    for _ in 0..CALLS_PER_TASK {
                        limiter.acquire().await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let elapsed = started.elapsed();
        // 20 calls: 5 from the burst, then 15 at 20 ms each.
        let floor = Duration::from_millis(20 * u64::from(TASKS * CALLS_PER_TASK - BURST));
        assert!(
            elapsed >= floor - Duration::from_millis(5),
            "{elapsed:?} < {floor:?}"
        );
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        // The limiter is drained: the next call must wait.
        assert!(limiter.try_acquire().is_err());
    }

    #[test]
    fn ratelimit_validate_names_the_field() {
        let edges = [
            config(1, 1),
            config(1, RATE_BURST_SECONDS_MAX),
            config(
                RATE_PER_SECOND_MAX,
                RATE_PER_SECOND_MAX * RATE_BURST_SECONDS_MAX,
            ),
        ];
        for c in edges {
            assert_eq!(c.validate(), Ok(()), "{c:?}");
        }
        let table = [
            (config(0, 1), "per_second"),
            (config(RATE_PER_SECOND_MAX + 1, 1), "per_second"),
            (config(10, 0), "burst"),
            (config(10, 10 * RATE_BURST_SECONDS_MAX + 1), "burst"),
            (config(1, u32::MAX), "burst"),
        ];
        for (c, field) in table {
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field, "{c:?}: {err}");
        }
    }

    #[test]
    #[should_panic(expected = "per_second")]
    fn ratelimit_new_rejects_invalid_config() {
        let _ = RateLimiter::new(config(0, 1));
    }

    #[test]
    fn ratelimit_config_serde() {
        let c: RateLimitConfig = serde_json::from_str(r#"{"per_second": 20}"#).expect("parse");
        assert_eq!(c, config(20, 20));
        let c: RateLimitConfig =
            serde_json::from_str(r#"{"per_second": 20, "burst": 3}"#).expect("parse");
        assert_eq!(c, config(20, 3));
        let err = serde_json::from_str::<RateLimitConfig>(r#"{"per_second": 1, "rate": 2}"#)
            .expect_err("unknown");
        assert!(err.to_string().contains("unknown field `rate`"), "{err}");
        let err = serde_json::from_str::<RateLimitConfig>(r#"{"burst": 2}"#).expect_err("missing");
        assert!(
            err.to_string().contains("missing field `per_second`"),
            "{err}"
        );
    }

    #[test]
    fn ratelimit_debug_shows_the_config() {
        let limiter = RateLimiter::new(config(7, 2));
        assert_eq!(
            format!("{limiter:?}"),
            "RateLimiter { config: RateLimitConfig { per_second: 7, burst: 2 }, .. }"
        );
    }
}
