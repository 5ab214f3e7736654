//! A circuit breaker: after `failures_max` consecutive failures a pipeline stops calling its
//! peer for `open_ms`, then lets a few probe calls through, and resumes only when they succeed.
//!
//! States: **Closed** (calls flow; consecutive failures are counted) → **Open** (calls are
//! rejected until `until_ms`) → **HalfOpen** (at most `half_open_probes` probe calls outstanding;
//! `half_open_probes` probe successes close it, any failure opens it again for another `open_ms`).
//!
//! The breaker is pure: time comes in as `now_ms` (Unix milliseconds) and nothing sleeps, so tests
//! and a simulator drive it directly. It is not shared across threads; a pipeline owns one.
//!
//! Results arrive without saying which permit they answer, so results of calls granted before a
//! transition (late results) are told apart by state alone. The rules:
//!
//! - While **Open**, every success and failure is a late result and is ignored: it neither closes
//!   the breaker nor extends `until_ms`.
//! - While **HalfOpen**, a success counts toward closing only while a probe is outstanding (and
//!   it uses up that probe); a success with no probe outstanding is a late result and is ignored.
//!   A late success arriving while a probe is outstanding cannot be told from the probe's own
//!   result and is counted; that is the price of results without tickets.
//! - While **HalfOpen**, every failure re-opens the breaker, a late one included: erring toward
//!   open costs one more `open_ms`, erring toward closed sends full traffic to a failing peer.
//! - A probe that has not reported `open_ms` after the latest probe grant is presumed lost (its
//!   caller was cancelled), and its slot is given to a new probe, so a lost probe cannot hold the
//!   breaker half-open for ever.
//!
//! Limits: [`BREAKER_FAILURES_MAX`], [`BREAKER_OPEN_MS_MAX`], [`BREAKER_HALF_OPEN_PROBES_MAX`] bound
//! the config; a rejected probe is told to come back after at most [`BREAKER_PROBE_WAIT_MS`].

use crate::retry::ConfigError;

/// Largest `failures_max`.
pub const BREAKER_FAILURES_MAX: u32 = 10_000;
/// Largest `open_ms`: 24 hours.
pub const BREAKER_OPEN_MS_MAX: u64 = 86_400_000;
/// Largest `half_open_probes`: a half-open breaker admits a trickle, not a flood.
pub const BREAKER_HALF_OPEN_PROBES_MAX: u32 = 100;
/// Longest wait told to a call rejected while half-open (or `open_ms`, if shorter): probes
/// usually answer quickly, and then the breaker has closed or opened again.
pub const BREAKER_PROBE_WAIT_MS: u64 = 1_000;

/// The `breaker:` section of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker; default 5.
    #[serde(default = "default_failures_max")]
    pub failures_max: u32,
    /// How long it stays open before letting probes through; default 30 000.
    #[serde(default = "default_open_ms")]
    pub open_ms: u64,
    /// Probe calls allowed outstanding while half-open, and probe successes needed to close;
    /// default 1.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
}

fn default_failures_max() -> u32 {
    5
}

fn default_open_ms() -> u64 {
    30_000
}

fn default_half_open_probes() -> u32 {
    1
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures_max: default_failures_max(),
            open_ms: default_open_ms(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

impl BreakerConfig {
    /// Checks every field against its limit.
    ///
    /// # Errors
    /// The first field out of range: `failures_max` outside 1..=[`BREAKER_FAILURES_MAX`],
    /// `open_ms` outside 1..=[`BREAKER_OPEN_MS_MAX`], `half_open_probes` outside
    /// 1..=[`BREAKER_HALF_OPEN_PROBES_MAX`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=BREAKER_FAILURES_MAX).contains(&self.failures_max) {
            return Err(ConfigError::new(
                "failures_max",
                format!("must be 1 to {BREAKER_FAILURES_MAX}"),
            ));
        }
        if !(1..=BREAKER_OPEN_MS_MAX).contains(&self.open_ms) {
            return Err(ConfigError::new(
                "open_ms",
                format!("must be 1 to {BREAKER_OPEN_MS_MAX}"),
            ));
        }
        if !(1..=BREAKER_HALF_OPEN_PROBES_MAX).contains(&self.half_open_probes) {
            return Err(ConfigError::new(
                "half_open_probes",
                format!("must be 1 to {BREAKER_HALF_OPEN_PROBES_MAX}"),
            ));
        }
        Ok(())
    }
}

/// Where the breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls flow.
    Closed,
    /// Calls are rejected until `until_ms`.
    Open {
        /// When probes may start (Unix ms).
        until_ms: i64,
    },
    /// A limited number of probe calls decide between closing and opening again.
    HalfOpen,
}

impl State {
    /// The state's name for logs and the API: `closed`, `open` or `half_open`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The state as a Prometheus gauge value: 0 closed, 1 open, 2 half-open.
    #[must_use]
    pub fn gauge(&self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen => 2,
        }
    }
}

/// The answer to [`Breaker::permit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Make the call, then report its result with [`Breaker::success`] or [`Breaker::failure`].
    Granted,
    /// Do not call; ask again at `retry_at_ms` (Unix ms).
    Rejected {
        /// The earliest time a permit may be granted.
        retry_at_ms: i64,
    },
}

/// How often the breaker changed state, for metrics counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transitions {
    /// Times it opened, from closed or from half-open.
    pub opened: u64,
    /// Times it went from open to half-open.
    pub half_opened: u64,
    /// Times it went from half-open to closed.
    pub closed: u64,
}

/// A circuit breaker; see the module docs for the cycle and the rules for late results.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Consecutive failures while closed.
    failures: u32,
    /// Probes granted and not yet reported, while half-open.
    probes_outstanding: u32,
    /// Probe successes since it became half-open.
    probe_successes: u32,
    /// When the latest probe was granted, while half-open.
    probe_granted_ms: i64,
    transitions: Transitions,
}

impl Breaker {
    /// A closed breaker.
    ///
    /// # Panics
    /// If `config` fails [`BreakerConfig::validate`]: configs are validated when loaded, and a
    /// breaker with zero probes could never close.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Breaker {
        if let Err(error) = config.validate() {
            panic!("Breaker::new with an invalid config: {error}");
        }
        Breaker {
            config,
            state: State::Closed,
            failures: 0,
            probes_outstanding: 0,
            probe_successes: 0,
            probe_granted_ms: 0,
            transitions: Transitions::default(),
        }
    }

    /// Asks to make a call at `now_ms`. Closed grants. Open rejects until `until_ms`, then turns
    /// half-open. Half-open grants while fewer than `half_open_probes` probes are outstanding and
    /// rejects the rest, telling them to come back after `min(open_ms,`
    /// [`BREAKER_PROBE_WAIT_MS`]`)`.
    pub fn permit(&mut self, now_ms: i64) -> Permit {
        match self.state {
            State::Closed => Permit::Granted,
            State::Open { until_ms } if now_ms < until_ms => Permit::Rejected {
                retry_at_ms: until_ms,
            },
            State::Open { .. } => {
                self.half_open();
                self.probe(now_ms)
            }
            State::HalfOpen => self.probe(now_ms),
        }
    }

    /// Reports a successful call. Closed: resets the consecutive failures. Half-open: counts a
    /// probe success if a probe is outstanding, closing at `half_open_probes` successes. Open:
    /// ignored (a late result). `_now_ms` is taken for symmetry with [`Breaker::failure`]; a
    /// success does not depend on time.
    pub fn success(&mut self, _now_ms: i64) {
        match self.state {
            State::Closed => self.failures = 0,
            State::Open { .. } => {}
            State::HalfOpen if self.probes_outstanding == 0 => {}
            State::HalfOpen => {
                self.probes_outstanding -= 1;
                self.probe_successes += 1;
                if self.probe_successes >= self.config.half_open_probes {
                    self.close();
                }
            }
        }
    }

    /// Reports a failed call at `now_ms`. Closed: counts it, opening until
    /// `now_ms + open_ms` at `failures_max` consecutive failures. Half-open: opens again until
    /// `now_ms + open_ms`. Open: ignored (a late result).
    pub fn failure(&mut self, now_ms: i64) {
        match self.state {
            State::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.config.failures_max {
                    self.open(now_ms);
                }
            }
            State::Open { .. } => {}
            State::HalfOpen => self.open(now_ms),
        }
    }

    /// The state as of the last call; an open breaker whose `until_ms` has passed still reads
    /// `Open` until the next [`Breaker::permit`].
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The transition counters so far.
    #[must_use]
    pub fn transitions(&self) -> Transitions {
        self.transitions
    }

    /// Grants or rejects a probe while half-open.
    fn probe(&mut self, now_ms: i64) -> Permit {
        let open_ms = i64::try_from(self.config.open_ms).unwrap_or(i64::MAX);
        let limit_reached = self.probes_outstanding >= self.config.half_open_probes;
        if limit_reached && now_ms.saturating_sub(self.probe_granted_ms) >= open_ms {
            // The outstanding probes are presumed lost; see the module docs.
            self.probes_outstanding = 0;
        }
        if self.probes_outstanding < self.config.half_open_probes {
            self.probes_outstanding += 1;
            self.probe_granted_ms = now_ms;
            return Permit::Granted;
        }
        let wait_ms = self.config.open_ms.min(BREAKER_PROBE_WAIT_MS);
        Permit::Rejected {
            retry_at_ms: now_ms.saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX)),
        }
    }

    fn open(&mut self, now_ms: i64) {
        let open_ms = i64::try_from(self.config.open_ms).unwrap_or(i64::MAX);
        self.state = State::Open {
            until_ms: now_ms.saturating_add(open_ms),
        };
        self.failures = 0;
        self.probes_outstanding = 0;
        self.probe_successes = 0;
        self.transitions.opened += 1;
    }

    fn half_open(&mut self) {
        self.state = State::HalfOpen;
        self.probes_outstanding = 0;
        self.probe_successes = 0;
        self.transitions.half_opened += 1;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.failures = 0;
        self.probes_outstanding = 0;
        self.probe_successes = 0;
        self.transitions.closed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Failure, Is, Permit as P, Success};

    /// One step of a scripted run and what the breaker must say or be afterwards.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `permit(now)` must return this.
        Permit(i64, Permit),
        Success(i64),
        Failure(i64),
        /// `state()` must be this.
        Is(State),
    }

    const GRANTED: Permit = Permit::Granted;

    fn rejected(retry_at_ms: i64) -> Permit {
        Permit::Rejected { retry_at_ms }
    }

    fn check(config: BreakerConfig, steps: &[Step], transitions: Transitions) {
        let mut b = Breaker::new(config);
        for (i, step) in steps.iter().enumerate() {
            match *step {
                Step::Permit(now, expect) => {
                    assert_eq!(b.permit(now), expect, "step {i}: {step:?}")
                }
                Step::Success(now) => b.success(now),
                Step::Failure(now) => b.failure(now),
                Step::Is(expect) => assert_eq!(b.state(), expect, "step {i}"),
            }
        }
        assert_eq!(b.transitions(), transitions);
    }

    fn config(failures_max: u32, open_ms: u64, half_open_probes: u32) -> BreakerConfig {
        BreakerConfig {
            failures_max,
            open_ms,
            half_open_probes,
        }
    }

    #[test]
    fn breaker_full_cycle() {
        check(
            config(3, 10_000, 1),
            &[
                // Two failures, then a success resets the count.
                P(0, GRANTED),
                Failure(0),
                Failure(1),
                Success(2),
                Is(State::Closed),
                // Failures 1 and 2 of 3 leave it closed.
                Failure(3),
                Failure(4),
                Is(State::Closed),
                P(4, GRANTED),
                // The third consecutive failure opens it until 5 + 10 000.
                Failure(5),
                Is(State::Open { until_ms: 10_005 }),
                P(6, rejected(10_005)),
                P(10_004, rejected(10_005)),
                // At until_ms, one probe is granted and the next call is rejected for 1 s.
                P(10_005, GRANTED),
                Is(State::HalfOpen),
                P(10_006, rejected(11_006)),
                // The probe fails: open again, re-armed from now.
                Failure(10_007),
                Is(State::Open { until_ms: 20_007 }),
                P(20_000, rejected(20_007)),
                // Half-open again; the probe succeeds and closes it.
                P(20_007, GRANTED),
                Is(State::HalfOpen),
                Success(20_008),
                Is(State::Closed),
                P(20_009, GRANTED),
                // The failure count started over on closing.
                Failure(20_010),
                Failure(20_011),
                Is(State::Closed),
            ],
            Transitions {
                opened: 2,
                half_opened: 2,
                closed: 1,
            },
        );
    }

    #[test]
    fn breaker_opens_after_exactly_failures_max() {
        for failures_max in [1, 2, 5, 100] {
            let mut b = Breaker::new(config(failures_max, 1_000, 1));
            for i in 1..failures_max {
                b.failure(i64::from(i));
                assert_eq!(b.state(), State::Closed, "{i} of {failures_max} failures");
            }
            b.failure(1_000);
            assert_eq!(b.state(), State::Open { until_ms: 2_000 }, "{failures_max}");
        }
    }

    #[test]
    fn breaker_late_results_while_open_are_ignored() {
        check(
            config(2, 1_000, 1),
            &[
                P(0, GRANTED),
                P(0, GRANTED),
                P(0, GRANTED),
                Failure(10),
                Failure(20),
                Is(State::Open { until_ms: 1_020 }),
                // The third call's success arrives late: the breaker stays open.
                Success(30),
                Is(State::Open { until_ms: 1_020 }),
                // A late failure does not extend the open window.
                Failure(40),
                Is(State::Open { until_ms: 1_020 }),
                P(1_019, rejected(1_020)),
                P(1_020, GRANTED),
            ],
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 0,
            },
        );
    }

    #[test]
    fn breaker_half_open_success_without_probe_is_ignored() {
        // Half-open with no probe outstanding happens between probes when half_open_probes > 1.
        check(
            config(1, 1_000, 2),
            &[
                Failure(0),
                P(1_000, GRANTED),
                Success(1_001),
                // One probe success of two; no probe outstanding now.
                Is(State::HalfOpen),
                // A late success from before the breaker opened: ignored.
                Success(1_002),
                Is(State::HalfOpen),
                P(1_003, GRANTED),
                Success(1_004),
                Is(State::Closed),
            ],
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 1,
            },
        );
    }

    #[test]
    fn breaker_probe_limit() {
        check(
            config(1, 5_000, 3),
            &[
                Failure(0),
                // Three probes outstanding, the fourth call is rejected for 1 s.
                P(5_000, GRANTED),
                P(5_001, GRANTED),
                P(5_002, GRANTED),
                P(5_003, rejected(6_003)),
                // A success frees a slot but counts only one of three.
                Success(5_004),
                Is(State::HalfOpen),
                P(5_005, GRANTED),
                P(5_006, rejected(6_006)),
                Success(5_007),
                Is(State::HalfOpen),
                // The third success closes it; the last probe's success then finds it closed.
                Success(5_008),
                Is(State::Closed),
                Success(5_009),
                Is(State::Closed),
            ],
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 1,
            },
        );
        // With open_ms under a second, rejected probes wait open_ms.
        check(
            config(1, 200, 1),
            &[Failure(0), P(200, GRANTED), P(201, rejected(401))],
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 0,
            },
        );
    }

    #[test]
    fn breaker_any_half_open_failure_reopens() {
        check(
            config(1, 1_000, 3),
            &[
                Failure(0),
                P(1_000, GRANTED),
                P(1_000, GRANTED),
                Success(1_001),
                Failure(1_002),
                Is(State::Open { until_ms: 2_002 }),
                // The other probe's success arrives while open: ignored.
                Success(1_003),
                Is(State::Open { until_ms: 2_002 }),
                // Half-open starts over: three fresh successes are needed.
                P(2_002, GRANTED),
                Success(2_003),
                P(2_004, GRANTED),
                Success(2_005),
                Is(State::HalfOpen),
            ],
            Transitions {
                opened: 2,
                half_opened: 2,
                closed: 0,
            },
        );
    }

    #[test]
    fn breaker_lost_probe_is_replaced_after_open_ms() {
        check(
            config(1, 1_000, 1),
            &[
                Failure(0),
                P(1_000, GRANTED),
                // The probe never reports.
                P(1_999, rejected(2_999)),
                P(2_000, GRANTED),
                Success(2_001),
                Is(State::Closed),
            ],
            Transitions {
                opened: 1,
                half_opened: 1,
                closed: 1,
            },
        );
    }

    #[test]
    fn breaker_state_names_and_gauge() {
        let table = [
            (State::Closed, "closed", 0),
            (State::Open { until_ms: 5 }, "open", 1),
            (State::HalfOpen, "half_open", 2),
        ];
        for (state, name, gauge) in table {
            assert_eq!((state.as_str(), state.gauge()), (name, gauge));
        }
    }

    #[test]
    fn breaker_validate_names_the_field() {
        let ok = BreakerConfig::default();
        assert_eq!(ok, config(5, 30_000, 1));
        assert_eq!(ok.validate(), Ok(()));
        let edges = [
            config(1, 1, 1),
            config(
                BREAKER_FAILURES_MAX,
                BREAKER_OPEN_MS_MAX,
                BREAKER_HALF_OPEN_PROBES_MAX,
            ),
        ];
        for c in edges {
            assert_eq!(c.validate(), Ok(()), "{c:?}");
        }
        let table = [
            (config(0, 1, 1), "failures_max"),
            (config(BREAKER_FAILURES_MAX + 1, 1, 1), "failures_max"),
            (config(1, 0, 1), "open_ms"),
            (config(1, BREAKER_OPEN_MS_MAX + 1, 1), "open_ms"),
            (config(1, 1, 0), "half_open_probes"),
            (
                config(1, 1, BREAKER_HALF_OPEN_PROBES_MAX + 1),
                "half_open_probes",
            ),
        ];
        for (c, field) in table {
            let err = c.validate().expect_err(field);
            assert_eq!(err.field, field, "{c:?}: {err}");
        }
    }

    #[test]
    #[should_panic(expected = "half_open_probes")]
    fn breaker_new_rejects_invalid_config() {
        let _ = Breaker::new(config(1, 1, 0));
    }

    #[test]
    fn breaker_config_serde() {
        let c: BreakerConfig = serde_json::from_str(r#"{"open_ms": 500}"#).expect("parse");
        assert_eq!(c, config(5, 500, 1));
        let err = serde_json::from_str::<BreakerConfig>(r#"{"failures": 3}"#).expect_err("unknown");
        assert!(
            err.to_string().contains("unknown field `failures`"),
            "{err}"
        );
    }
}
