//! Retries with exponential backoff and equal jitter, the shared retry policy of every pipeline.
//!
//! [`RetryConfig`] is the `retry:` section of a pipeline in `gearbox.yaml`; [`Retry`] is the
//! state of one operation's retries. Both are pure: time comes in as `now_ms` (Unix
//! milliseconds) and randomness as `random` in [0, 1), so tests drive them without sleeps and a
//! simulator can replay them. [`jitter`] supplies the randomness in production.
//!
//! Invariants: an operation makes at most `attempts_max` tries in total (the first included);
//! no single wait exceeds [`RETRY_DELAY_MS_MAX`], not even one a server asked for with
//! `Retry-After`; when `total_ms_max` is set, no try starts later than `total_ms_max` after the
//! first; once [`Retry::failed`] has returned `None` it returns `None` for good.
//!
//! [`ConfigError`] is the one validation error of this crate's policy configs; the breaker and
//! rate-limit configs reuse it.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash, Hasher};

use gearbox_core::subscription::Backoff;

/// Largest `attempts_max`: a config ceiling, so a typo cannot retry for ever.
pub const RETRY_ATTEMPTS_MAX: u32 = 100;
/// Longest single wait, 1 hour, including a server's `Retry-After`.
pub const RETRY_DELAY_MS_MAX: u64 = 3_600_000;
/// Largest `total_ms_max`, 24 hours: an operation retried for longer than a day has failed.
pub const RETRY_TOTAL_MS_MAX: u64 = 86_400_000;
/// Largest `multiplier`: beyond it the backoff reaches `max_ms` after one or two tries anyway.
pub const RETRY_MULTIPLIER_MAX: f64 = 10.0;

/// A config field that failed validation, and why.
///
/// `field` is the name of the field within its section (`attempts_max`, `open_ms`, ...); the
/// caller that knows the section and pipeline adds that context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The offending field, as spelled in the config file.
    pub field: &'static str,
    /// What is wrong with its value, naming the allowed range.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }
}

/// How a pipeline retries a failed operation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total tries including the first; default 5.
    #[serde(default = "default_attempts_max")]
    pub attempts_max: u32,
    /// The wait after the first failure, before jitter; default 200.
    #[serde(default = "default_initial_ms")]
    pub initial_ms: u64,
    /// The longest backoff wait, before jitter; default 30 000.
    #[serde(default = "default_max_ms")]
    pub max_ms: u64,
    /// Growth of the wait per failed try; default 2.0.
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// A time budget across all tries, waits included; `None` (the default) limits only the
    /// count.
    #[serde(default)]
    pub total_ms_max: Option<u64>,
}

fn default_attempts_max() -> u32 {
    5
}

fn default_initial_ms() -> u64 {
    200
}

fn default_max_ms() -> u64 {
    30_000
}

fn default_multiplier() -> f64 {
    2.0
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            attempts_max: default_attempts_max(),
            initial_ms: default_initial_ms(),
            max_ms: default_max_ms(),
            multiplier: default_multiplier(),
            total_ms_max: None,
        }
    }
}

impl RetryConfig {
    /// Checks every field against its limit.
    ///
    /// # Errors
    /// The first field out of range: `attempts_max` outside 1..=[`RETRY_ATTEMPTS_MAX`],
    /// `initial_ms` of 0, `max_ms` below `initial_ms` or above [`RETRY_DELAY_MS_MAX`],
    /// `multiplier` not finite or outside [1.0, [`RETRY_MULTIPLIER_MAX`]], `total_ms_max` of 0 or
    /// above [`RETRY_TOTAL_MS_MAX`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=RETRY_ATTEMPTS_MAX).contains(&self.attempts_max) {
            return Err(ConfigError::new(
                "attempts_max",
                format!("must be 1 to {RETRY_ATTEMPTS_MAX}"),
            ));
        }
        if self.initial_ms == 0 {
            return Err(ConfigError::new("initial_ms", "must be at least 1"));
        }
        if !(self.initial_ms..=RETRY_DELAY_MS_MAX).contains(&self.max_ms) {
            return Err(ConfigError::new(
                "max_ms",
                format!(
                    "must be initial_ms ({}) to {RETRY_DELAY_MS_MAX}",
                    self.initial_ms
                ),
            ));
        }
        // `contains` is false for NaN, and the bounds exclude the infinities.
        if !(1.0..=RETRY_MULTIPLIER_MAX).contains(&self.multiplier) {
            return Err(ConfigError::new(
                "multiplier",
                format!("must be a number from 1.0 to {RETRY_MULTIPLIER_MAX:.1}"),
            ));
        }
        if let Some(total_ms_max) = self.total_ms_max
            && !(1..=RETRY_TOTAL_MS_MAX).contains(&total_ms_max)
        {
            return Err(ConfigError::new(
                "total_ms_max",
                format!("must be 1 to {RETRY_TOTAL_MS_MAX}"),
            ));
        }
        Ok(())
    }

    /// The equivalent broker redelivery backoff, for the queue subscription a sink pipeline
    /// consumes from, so a nacked event is redelivered on the same schedule as a retried call.
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        Backoff {
            initial_ms: self.initial_ms,
            max_ms: self.max_ms,
            multiplier: self.multiplier,
        }
    }

    /// The wait before try number `attempt + 1`, after `attempt` failed tries:
    /// `initial_ms * multiplier^(attempt - 1)` capped at `max_ms`, with equal jitter (half fixed,
    /// half scaled by `random`, uniform in [0, 1)). `attempt` 0 is treated as 1. Never more than
    /// [`RETRY_DELAY_MS_MAX`].
    #[must_use]
    pub fn delay_ms(&self, attempt: u32, random: f64) -> u64 {
        // Backoff clamps `random` into [0, 1] but lets NaN through, which would zero the delay.
        let random = if random.is_nan() { 0.0 } else { random };
        self.backoff()
            .delay_ms(attempt, random)
            .min(RETRY_DELAY_MS_MAX)
    }
}

/// The state of one operation's retries: how many tries failed, and whether the budget is spent.
#[derive(Debug, Clone)]
pub struct Retry {
    config: RetryConfig,
    started_ms: i64,
    attempts: u32,
    exhausted: bool,
}

impl Retry {
    /// Starts the retries of an operation whose first try starts at `started_ms`.
    ///
    /// The config should have passed [`RetryConfig::validate`]; an `attempts_max` of 0 behaves
    /// as 1 (no retries).
    #[must_use]
    pub fn new(config: RetryConfig, started_ms: i64) -> Retry {
        Retry {
            config,
            started_ms,
            attempts: 0,
            exhausted: false,
        }
    }

    /// Records a failed try at `now_ms`. Returns the wait before the next try, or `None` when
    /// the budget is spent: `attempts_max` tries made, or the next try would start more than
    /// `total_ms_max` after the first. The wait is the larger of the backoff and the server's
    /// hint `retry_after_ms` (HTTP `Retry-After`), capped at [`RETRY_DELAY_MS_MAX`]; a hint that
    /// does not fit the time budget ends the retries rather than being cut short, since retrying
    /// earlier than the server asked would only fail again. `random` is uniform in [0, 1).
    ///
    /// Once it returned `None`, every later call returns `None` too.
    pub fn failed(&mut self, now_ms: i64, retry_after_ms: Option<u64>, random: f64) -> Option<u64> {
        self.attempts = self.attempts.saturating_add(1);
        if self.exhausted || self.attempts >= self.config.attempts_max {
            self.exhausted = true;
            return None;
        }
        let backoff_ms = self.config.delay_ms(self.attempts, random);
        let delay_ms = backoff_ms
            .max(retry_after_ms.unwrap_or(0))
            .min(RETRY_DELAY_MS_MAX);
        if let Some(total_ms_max) = self.config.total_ms_max {
            // A clock that stepped back counts as no time elapsed.
            let elapsed_ms = u64::try_from(now_ms.saturating_sub(self.started_ms)).unwrap_or(0);
            if elapsed_ms.saturating_add(delay_ms) > total_ms_max {
                self.exhausted = true;
                return None;
            }
        }
        Some(delay_ms)
    }

    /// Tries so far: the number of [`Retry::failed`] calls.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

thread_local! {
    /// The xorshift64* state of this thread; never 0, which is xorshift's only fixed point.
    static JITTER_STATE: Cell<u64> = Cell::new(jitter_seed());
}

/// A per-thread seed: std's `RandomState` is randomly keyed per thread, and hashing the time and
/// thread id in as well keeps two threads with equal keys apart.
fn jitter_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish() | 1
}

/// A uniform random number in [0, 1) for jitter, from a cheap per-thread xorshift64* generator.
/// Not for cryptography: it only spreads retries out so that clients do not retry in lockstep.
#[must_use]
pub fn jitter() -> f64 {
    let bits = JITTER_STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    });
    // The top 53 bits fill an f64 mantissa exactly, so the result is below 1.0.
    (bits >> 11) as f64 / (1_u64 << 53) as f64
}

/// Parses an HTTP `Retry-After` value relative to `now_ms`: delta-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`, read as RFC 2822). Returns the wait in
/// milliseconds: 0 for a date in the past, at most [`RETRY_DELAY_MS_MAX`] (also for a number of
/// seconds too large for `u64`), `None` if the value is neither form. The obsolete RFC 850 and
/// asctime date forms are not accepted.
#[must_use]
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the parse fails only by overflow: that is a huge wait, capped.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(seconds.saturating_mul(1000).min(RETRY_DELAY_MS_MAX));
    }
    let at_ms = chrono::DateTime::parse_from_rfc2822(value)
        .ok()?
        .timestamp_millis();
    let wait_ms = u64::try_from(at_ms.saturating_sub(now_ms)).unwrap_or(0);
    Some(wait_ms.min(RETRY_DELAY_MS_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RetryConfig {
        RetryConfig {
            attempts_max: 10,
            initial_ms: 100,
            max_ms: 1000,
            multiplier: 2.0,
            total_ms_max: None,
        }
    }

    #[test]
    fn retry_delays_grow_and_cap() {
        // (attempt, delay with random = 0, delay with random = 0.999)
        let table: &[(u32, u64, u64)] = &[
            (0, 50, 99),
            (1, 50, 99),
            (2, 100, 199),
            (3, 200, 399),
            (4, 400, 799),
            (5, 500, 999),
            (6, 500, 999),
            (50, 500, 999),
            (u32::MAX, 500, 999),
        ];
        let c = config();
        for &(attempt, low, high) in table {
            assert_eq!(c.delay_ms(attempt, 0.0), low, "attempt {attempt}, random 0");
            assert_eq!(
                c.delay_ms(attempt, 0.999),
                high,
                "attempt {attempt}, random 0.999"
            );
        }
        assert_eq!(c.delay_ms(1, f64::NAN), 50, "NaN random counts as 0");
    }

    #[test]
    fn retry_delay_matches_the_broker_backoff() {
        let c = RetryConfig::default();
        let b = c.backoff();
        assert_eq!((b.initial_ms, b.max_ms, b.multiplier), (200, 30_000, 2.0));
        for attempt in 0..20 {
            assert_eq!(c.delay_ms(attempt, 0.5), b.delay_ms(attempt, 0.5));
        }
    }

    #[test]
    fn retry_attempts_max_is_total_tries() {
        for attempts_max in [1, 2, 3, 5, RETRY_ATTEMPTS_MAX] {
            let mut r = Retry::new(
                RetryConfig {
                    attempts_max,
                    ..config()
                },
                0,
            );
            // Tries 1 ..= attempts_max - 1 failing each leave a try to make.
            for tried in 1..attempts_max {
                assert!(
                    r.failed(0, None, 0.0).is_some(),
                    "attempts_max {attempts_max}: try {tried} failed, one more is allowed"
                );
                assert_eq!(r.attempts(), tried);
            }
            // The attempts_max-th failure ends it.
            assert_eq!(r.failed(0, None, 0.0), None, "attempts_max {attempts_max}");
            assert_eq!(r.attempts(), attempts_max);
            assert_eq!(r.failed(0, None, 0.0), None, "stays exhausted");
        }
    }

    #[test]
    fn retry_first_waits_follow_the_backoff() {
        let mut r = Retry::new(config(), 1_000);
        let waits: Vec<Option<u64>> = (0..10).map(|_| r.failed(1_000, None, 0.0)).collect();
        let expect = [50, 100, 200, 400, 500, 500, 500, 500, 500]
            .map(Some)
            .into_iter()
            .chain([None])
            .collect::<Vec<_>>();
        assert_eq!(waits, expect);
    }

    #[test]
    fn retry_total_ms_max_budget() {
        let c = RetryConfig {
            total_ms_max: Some(1_000),
            ..config()
        };
        let started = 10_000;
        let mut r = Retry::new(c, started);
        // elapsed 0 + wait 50 fits.
        assert_eq!(r.failed(started, None, 0.0), Some(50));
        // elapsed 900 + wait 100 = 1000 still fits: the next try starts at the budget's end.
        assert_eq!(r.failed(started + 900, None, 0.0), Some(100));
        // elapsed 901 + wait 100 > 1000.
        let mut r2 = Retry::new(c, started);
        assert_eq!(r2.failed(started, None, 0.0), Some(50));
        assert_eq!(r2.failed(started + 901, None, 0.0), None);
        assert_eq!(r2.failed(started + 901, None, 0.0), None, "stays exhausted");
        // Elapsed alone past the budget.
        assert_eq!(r.failed(started + 5_000, None, 0.0), None);
        // A clock that stepped back counts as no time elapsed.
        let mut r3 = Retry::new(c, started);
        assert_eq!(r3.failed(started - 60_000, None, 0.0), Some(50));
    }

    #[test]
    fn retry_after_hint_raises_and_is_capped() {
        // (hint, expected wait for the first failure, backoff being 50)
        let table: &[(Option<u64>, u64)] = &[
            (None, 50),
            (Some(10), 50),
            (Some(5_000), 5_000),
            (Some(RETRY_DELAY_MS_MAX), RETRY_DELAY_MS_MAX),
            (Some(RETRY_DELAY_MS_MAX + 1), RETRY_DELAY_MS_MAX),
            (Some(u64::MAX), RETRY_DELAY_MS_MAX),
        ];
        for &(hint, expect) in table {
            let mut r = Retry::new(config(), 0);
            assert_eq!(r.failed(0, hint, 0.0), Some(expect), "hint {hint:?}");
        }
        // A hint that does not fit the time budget ends the retries.
        let mut r = Retry::new(
            RetryConfig {
                total_ms_max: Some(10_000),
                ..config()
            },
            0,
        );
        assert_eq!(r.failed(0, Some(20_000), 0.0), None);
    }

    #[test]
    fn retry_parse_retry_after() {
        const DATE: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
        const DATE_MS: i64 = 1_445_412_480_000;
        let table: &[(&str, i64, Option<u64>)] = &[
            ("120", 0, Some(120_000)),
            ("0", 0, Some(0)),
            (" 7 ", 0, Some(7_000)),
            ("3600", 0, Some(RETRY_DELAY_MS_MAX)),
            ("3601", 0, Some(RETRY_DELAY_MS_MAX)),
            ("99999999999999999999999999", 0, Some(RETRY_DELAY_MS_MAX)),
            (DATE, DATE_MS - 30_000, Some(30_000)),
            (DATE, DATE_MS, Some(0)),
            (DATE, DATE_MS + 1, Some(0)),
            (DATE, DATE_MS + 86_400_000, Some(0)),
            (DATE, 0, Some(RETRY_DELAY_MS_MAX)),
            (
                "Wed, 21 Oct 2015 07:28:00 +0100",
                DATE_MS - 3_600_000,
                Some(0),
            ),
            ("", 0, None),
            ("soon", 0, None),
            ("-5", 0, None),
            ("+5", 0, None),
            ("1.5", 0, None),
            ("12 s", 0, None),
            ("Sunday, 06-Nov-94 08:49:37 GMT", 0, None),
            ("Wed, 32 Oct 2015 07:28:00 GMT", 0, None),
        ];
        for &(value, now_ms, expect) in table {
            assert_eq!(
                parse_retry_after(value, now_ms),
                expect,
                "{value:?} at {now_ms}"
            );
        }
    }

    #[test]
    fn retry_validate_names_the_field() {
        let ok = RetryConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let with = |change: fn(&mut RetryConfig)| {
            let mut config = ok;
            change(&mut config);
            config
        };
        let table = [
            (with(|c| c.attempts_max = 0), "attempts_max"),
            (
                with(|c| c.attempts_max = RETRY_ATTEMPTS_MAX + 1),
                "attempts_max",
            ),
            (with(|c| c.initial_ms = 0), "initial_ms"),
            (with(|c| (c.initial_ms, c.max_ms) = (500, 499)), "max_ms"),
            (with(|c| c.max_ms = RETRY_DELAY_MS_MAX + 1), "max_ms"),
            (
                with(|c| {
                    (c.initial_ms, c.max_ms) = (RETRY_DELAY_MS_MAX + 1, RETRY_DELAY_MS_MAX + 1)
                }),
                "max_ms",
            ),
            (with(|c| c.multiplier = 0.99), "multiplier"),
            (with(|c| c.multiplier = 10.01), "multiplier"),
            (with(|c| c.multiplier = f64::NAN), "multiplier"),
            (with(|c| c.multiplier = f64::INFINITY), "multiplier"),
            (with(|c| c.total_ms_max = Some(0)), "total_ms_max"),
            (
                with(|c| c.total_ms_max = Some(RETRY_TOTAL_MS_MAX + 1)),
                "total_ms_max",
            ),
        ];
        for (config, field) in table {
            let err = config.validate().expect_err(field);
            assert_eq!(err.field, field, "{config:?}: {err}");
            assert!(err.to_string().starts_with(field), "{err}");
        }
        // The limits themselves are allowed.
        let edges = [
            RetryConfig {
                attempts_max: 1,
                initial_ms: 1,
                max_ms: 1,
                multiplier: 1.0,
                total_ms_max: Some(1),
            },
            RetryConfig {
                attempts_max: RETRY_ATTEMPTS_MAX,
                initial_ms: RETRY_DELAY_MS_MAX,
                max_ms: RETRY_DELAY_MS_MAX,
                multiplier: RETRY_MULTIPLIER_MAX,
                total_ms_max: Some(RETRY_TOTAL_MS_MAX),
            },
        ];
        for config in edges {
            assert_eq!(config.validate(), Ok(()), "{config:?}");
        }
    }

    #[test]
    fn retry_jitter_is_in_range_and_varies() {
        let samples: Vec<f64> = (0..10_000).map(|_| jitter()).collect();
        assert!(samples.iter().all(|r| (0.0..1.0).contains(r)));
        let first = samples[0];
        assert!(samples.iter().any(|&r| r != first), "jitter is constant");
        // Both halves of the range are hit: a crude check that it is spread out.
        assert!(samples.iter().any(|&r| r < 0.5) && samples.iter().any(|&r| r >= 0.5));
        // Another thread gets its own generator.
        let other = std::thread::spawn(jitter).join().expect("thread");
        assert!((0.0..1.0).contains(&other));
    }

    #[test]
    fn retry_config_serde() {
        let c: RetryConfig = serde_json::from_str(r#"{"attempts_max": 3}"#).expect("parse");
        assert_eq!(
            c,
            RetryConfig {
                attempts_max: 3,
                ..RetryConfig::default()
            }
        );
        let c: RetryConfig = serde_json::from_str("{}").expect("parse");
        assert_eq!(c, RetryConfig::default());
        let c: RetryConfig =
            serde_json::from_str(r#"{"total_ms_max": 60000, "multiplier": 1.5}"#).expect("parse");
        assert_eq!((c.total_ms_max, c.multiplier), (Some(60_000), 1.5));
        let err = serde_json::from_str::<RetryConfig>(r#"{"attempts": 3}"#).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown field `attempts`"),
            "{err}"
        );
    }
}
