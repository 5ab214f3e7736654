//! Component telemetry and pipeline health. Every pipeline gets one [`ComponentMetrics`],
//! updated by the runtime (never by connectors), so every connector emits the same metrics under
//! the same names: `gearbox_component_received_events_total`, `..._sent_events_total`,
//! `..._errors_total{error_type,stage}`, `..._discarded_events_total`, plus
//! `gearbox_retries_total`, `gearbox_pipeline_dead_lettered_events_total`, the circuit breaker's
//! state (`gearbox_circuit_breaker_state`) and transitions
//! (`gearbox_circuit_breaker_transitions_total{to}`), `gearbox_pipeline_last_success_timestamp_seconds` and
//! `gearbox_pipeline_health{status}`.
//!
//! Health is derived, not set ([`ComponentMetrics::health`]): `paused` if paused; `error` after
//! a fatal error or while the breaker is open; otherwise the worst of three signals:
//! - freshness: no success for longer than the freshness target (default
//!   [`FRESHNESS_MS_DEFAULT`]) is `warn`, for longer than twice the target `error`. A sink whose
//!   lag is known to be zero has nothing to do, so it is fresh however long it idles;
//! - error rate over the last [`ERROR_WINDOW_MS`]: at least [`ERROR_RATE_WARN`] of the outcomes
//!   failed is `warn`, at least [`ERROR_RATE_ERROR`] `error` (once [`ERROR_RATE_MIN_EVENTS`]
//!   outcomes were seen);
//! - lag (events not yet delivered): [`LAG_WARN_EVENTS`] is `warn`, [`LAG_ERROR_EVENTS`] `error`.
//!
//! `/metrics` is encoded by `prometheus-client` (OpenMetrics text): [`Registry`] is a collector.
//!
//! Limits: the error table holds at most [`ERROR_KINDS_MAX`] distinct (stage, type) pairs per
//! pipeline; further kinds are counted under `error_type="other"`.

use crate::breaker::State as BreakerState;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// Most distinct (stage, error type) label pairs kept per pipeline.
pub const ERROR_KINDS_MAX: usize = 64;
/// The freshness target of a pipeline that sets none: one hour.
pub const FRESHNESS_MS_DEFAULT: u64 = 3_600_000;
/// The window the error rate is measured over.
pub const ERROR_WINDOW_MS: i64 = 60_000;
/// Buckets of the error-rate window.
const ERROR_WINDOW_BUCKETS: usize = 6;
/// Outcomes needed in the window before the error rate counts.
pub const ERROR_RATE_MIN_EVENTS: u64 = 10;
/// Error rate that turns a pipeline `warn`.
pub const ERROR_RATE_WARN: f64 = 0.1;
/// Error rate that turns a pipeline `error`.
pub const ERROR_RATE_ERROR: f64 = 0.5;
/// Lag that turns a pipeline `warn`.
pub const LAG_WARN_EVENTS: u64 = 10_000;
/// Lag that turns a pipeline `error`.
pub const LAG_ERROR_EVENTS: u64 = 100_000;

/// Which side of the log a pipeline's connector is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Gear → topic.
    Source,
    /// Topic → gear.
    Sink,
}

impl Kind {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Sink => "sink",
        }
    }
}

/// A pipeline's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Fresh and working.
    Ok,
    /// Past its freshness target.
    Warn,
    /// Past twice its target, failed, or its breaker is open.
    Error,
    /// Stopped by the runtime after too many failures, or by an operator.
    Paused,
}

impl Health {
    /// Every status, in label order.
    pub const ALL: [Health; 4] = [Health::Ok, Health::Warn, Health::Error, Health::Paused];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warn => "warn",
            Health::Error => "error",
            Health::Paused => "paused",
        }
    }
}

/// One pipeline's counters and state. Cheap to update from any task.
#[derive(Debug)]
pub struct ComponentMetrics {
    /// Pipeline name.
    pub pipeline: String,
    /// Source or sink.
    pub kind: Kind,
    /// The connector type (`webhook`, `http_poll`, ...).
    pub component_type: String,
    /// Freshness target.
    pub freshness_ms: u64,
    started_ms: i64,
    /// Successes and failures per bucket of the error-rate window: (bucket start, ok, failed).
    window: Mutex<[(i64, u64, u64); ERROR_WINDOW_BUCKETS]>,
    /// Events not yet delivered, when known (-1: unknown).
    lag: AtomicI64,
    received: AtomicU64,
    sent: AtomicU64,
    discarded: AtomicU64,
    dead_lettered: AtomicU64,
    retries: AtomicU64,
    errors: Mutex<BTreeMap<(String, String), u64>>,
    last_success_ms: AtomicI64,
    breaker: AtomicU8,
    breaker_opened: AtomicU64,
    breaker_half_opened: AtomicU64,
    breaker_closed: AtomicU64,
    paused: AtomicBool,
    failed: Mutex<Option<String>>,
    gauges: Mutex<Vec<Gauge>>,
    /// A scheduled source's run log.
    runs: std::sync::OnceLock<std::sync::Arc<crate::schedule::RunLog>>,
    /// A replay asked for by an operator, taken by the sink pipeline's task.
    replay: Mutex<Option<gearbox_core::subscription::Start>>,
}

/// A connector's own gauge, read when `/metrics` renders: `gearbox_<kind>_<name>{pipeline}`, such
/// as `gearbox_source_postgres_slot_lag_bytes`.
pub struct Gauge {
    /// The name after `gearbox_<kind>_`: lowercase letters, digits and `_`.
    pub name: &'static str,
    /// Reads the current value.
    pub read: Box<dyn Fn() -> f64 + Send + Sync>,
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gauge").field("name", &self.name).finish()
    }
}

/// A snapshot of one pipeline, for the API and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Pipeline name.
    pub pipeline: String,
    /// Source or sink.
    pub kind: Kind,
    /// Connector type.
    pub component_type: String,
    /// Derived health.
    pub health: Health,
    /// Events received from the gear or the topic.
    pub received: u64,
    /// Events written to the topic or the gear.
    pub sent: u64,
    /// Events a transform filtered out.
    pub discarded: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Retries.
    pub retries: u64,
    /// Errors, all kinds.
    pub errors: u64,
    /// Last success, ms since the epoch, if any.
    pub last_success_ms: Option<i64>,
    /// Breaker state label.
    pub breaker: &'static str,
    /// The fatal error that stopped it, if any.
    pub failure: Option<String>,
    /// The freshness target health is derived from.
    pub freshness_ms: u64,
    /// Failed share of the outcomes in the error-rate window, once enough were seen.
    pub error_rate_permille: Option<u64>,
    /// Events waiting for it, if known.
    pub lag: Option<u64>,
}

impl ComponentMetrics {
    /// New metrics for a pipeline started at `now_ms`.
    #[must_use]
    pub fn new(
        pipeline: &str,
        kind: Kind,
        component_type: &str,
        freshness_ms: Option<u64>,
        now_ms: i64,
    ) -> ComponentMetrics {
        ComponentMetrics {
            pipeline: pipeline.into(),
            kind,
            component_type: component_type.into(),
            freshness_ms: freshness_ms.unwrap_or(FRESHNESS_MS_DEFAULT),
            started_ms: now_ms,
            window: Mutex::new([(i64::MIN, 0, 0); ERROR_WINDOW_BUCKETS]),
            lag: AtomicI64::new(-1),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            last_success_ms: AtomicI64::new(0),
            breaker: AtomicU8::new(0),
            breaker_opened: AtomicU64::new(0),
            breaker_half_opened: AtomicU64::new(0),
            breaker_closed: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            failed: Mutex::new(None),
            gauges: Mutex::new(Vec::new()),
            runs: std::sync::OnceLock::new(),
            replay: Mutex::new(None),
        }
    }

    /// Attaches a scheduled source's run log (once).
    pub fn set_runs(&self, runs: std::sync::Arc<crate::schedule::RunLog>) {
        let _ = self.runs.set(runs);
    }

    /// The run log, for a scheduled source.
    #[must_use]
    pub fn runs(&self) -> Option<&std::sync::Arc<crate::schedule::RunLog>> {
        self.runs.get()
    }

    /// Asks the pipeline to re-read its topic from `start` (a sink pipeline takes it at its next
    /// batch). A later request replaces one not yet taken.
    pub fn request_replay(&self, start: gearbox_core::subscription::Start) {
        *self
            .replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(start);
    }

    /// The pending replay request, taken.
    pub fn take_replay(&self) -> Option<gearbox_core::subscription::Start> {
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Counts events received.
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Relaxed);
    }

    /// Counts events sent, and marks a success at `now_ms`.
    pub fn sent(&self, n: usize, now_ms: i64) {
        self.sent.fetch_add(n as u64, Relaxed);
        self.outcome(now_ms, n as u64, 0);
        self.success(now_ms);
    }

    /// Adds outcomes to the error-rate window.
    fn outcome(&self, now_ms: i64, ok: u64, failed: u64) {
        if ok == 0 && failed == 0 {
            return;
        }
        let width = ERROR_WINDOW_MS / ERROR_WINDOW_BUCKETS as i64;
        let start = now_ms - now_ms.rem_euclid(width);
        let i = (start / width).rem_euclid(ERROR_WINDOW_BUCKETS as i64) as usize;
        let mut w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if w[i].0 != start {
            w[i] = (start, 0, 0);
        }
        w[i].1 += ok;
        w[i].2 += failed;
    }

    /// The share of failed outcomes over the last [`ERROR_WINDOW_MS`] at `now_ms`, once at
    /// least [`ERROR_RATE_MIN_EVENTS`] were seen.
    #[must_use]
    pub fn error_rate(&self, now_ms: i64) -> Option<f64> {
        let w = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (ok, failed) = w
            .iter()
            .filter(|(start, _, _)| *start > now_ms - ERROR_WINDOW_MS && *start <= now_ms)
            .fold((0, 0), |(o, f), (_, ok, failed)| (o + ok, f + failed));
        (ok + failed >= ERROR_RATE_MIN_EVENTS).then(|| failed as f64 / (ok + failed) as f64)
    }

    /// Sets the number of events waiting for this pipeline (a sink's lag).
    pub fn set_lag(&self, events: u64) {
        self.lag
            .store(i64::try_from(events).unwrap_or(i64::MAX), Relaxed);
    }

    /// Events waiting for this pipeline, if known.
    #[must_use]
    pub fn lag(&self) -> Option<u64> {
        u64::try_from(self.lag.load(Relaxed)).ok()
    }

    /// Marks a success (for a source, a completed read even if it returned nothing).
    pub fn success(&self, now_ms: i64) {
        self.last_success_ms.fetch_max(now_ms, Relaxed);
    }

    /// Counts events filtered out.
    pub fn discarded(&self, n: usize) {
        self.discarded.fetch_add(n as u64, Relaxed);
    }

    /// Counts events dead-lettered.
    pub fn dead_lettered(&self, n: usize) {
        self.dead_lettered.fetch_add(n as u64, Relaxed);
    }

    /// Counts a retry.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// Counts an error at a stage (`receive`, `transform`, `append`, `write`, `checkpoint`).
    pub fn error(&self, stage: &str, error_type: &str) {
        self.error_at(stage, error_type, chrono::Utc::now().timestamp_millis());
    }

    /// [`ComponentMetrics::error`] at `now_ms`.
    pub fn error_at(&self, stage: &str, error_type: &str, now_ms: i64) {
        self.outcome(now_ms, 0, 1);
        let mut errors = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (stage.to_string(), error_type.to_string());
        if errors.len() >= ERROR_KINDS_MAX && !errors.contains_key(&key) {
            *errors.entry((stage.into(), "other".into())).or_default() += 1;
            return;
        }
        *errors.entry(key).or_default() += 1;
    }

    /// Records the breaker's state, counting the transitions into each state.
    pub fn breaker(&self, state: BreakerState) {
        let g = state.gauge();
        let before = self.breaker.swap(g, Relaxed);
        if before == g {
            return;
        }
        let counter = match state {
            BreakerState::Open { .. } => &self.breaker_opened,
            BreakerState::HalfOpen => &self.breaker_half_opened,
            BreakerState::Closed => &self.breaker_closed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Pauses or resumes.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    /// Whether paused.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    /// Records the fatal error that stopped the pipeline.
    pub fn fail(&self, message: String) {
        *self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
    }

    /// Adds the connector's own gauges.
    pub fn add_gauges(&self, gauges: Vec<Gauge>) {
        self.gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(gauges);
    }

    /// The current value of the connector gauge `name`.
    #[must_use]
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|g| g.name == name)
            .map(|g| (g.read)())
    }

    /// The fatal error that stopped the pipeline, if one did.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The derived health at `now_ms`.
    #[must_use]
    pub fn health(&self, now_ms: i64) -> Health {
        if self.paused.load(Relaxed) {
            return Health::Paused;
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if failed || self.breaker.load(Relaxed) == 1 {
            return Health::Error;
        }
        let grade = |value: f64, warn: f64, error: f64| {
            if value >= error {
                Health::Error
            } else if value >= warn {
                Health::Warn
            } else {
                Health::Ok
            }
        };
        let target = self.freshness_ms;
        let idle_sink = self.kind == Kind::Sink && self.lag() == Some(0);
        let last = self.last_success_ms.load(Relaxed).max(self.started_ms);
        let age = now_ms.saturating_sub(last).max(0) as u64;
        let freshness = if idle_sink || age <= target {
            Health::Ok
        } else if age > target.saturating_mul(2) {
            Health::Error
        } else {
            Health::Warn
        };
        let errors = self
            .error_rate(now_ms)
            .map_or(Health::Ok, |r| grade(r, ERROR_RATE_WARN, ERROR_RATE_ERROR));
        let lag = self.lag().map_or(Health::Ok, |l| {
            grade(l as f64, LAG_WARN_EVENTS as f64, LAG_ERROR_EVENTS as f64)
        });
        [freshness, errors, lag]
            .into_iter()
            .max_by_key(|h| match h {
                Health::Ok => 0,
                Health::Warn => 1,
                _ => 2,
            })
            .unwrap_or(Health::Ok)
    }

    /// A snapshot at `now_ms`.
    #[must_use]
    pub fn snapshot(&self, now_ms: i64) -> Snapshot {
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum();
        let last = self.last_success_ms.load(Relaxed);
        Snapshot {
            pipeline: self.pipeline.clone(),
            kind: self.kind,
            component_type: self.component_type.clone(),
            health: self.health(now_ms),
            received: self.received.load(Relaxed),
            sent: self.sent.load(Relaxed),
            discarded: self.discarded.load(Relaxed),
            dead_lettered: self.dead_lettered.load(Relaxed),
            retries: self.retries.load(Relaxed),
            errors,
            last_success_ms: (last > 0).then_some(last),
            breaker: match self.breaker.load(Relaxed) {
                1 => "open",
                2 => "half_open",
                _ => "closed",
            },
            failure: self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            freshness_ms: self.freshness_ms,
            error_rate_permille: self.error_rate(now_ms).map(|r| (r * 1000.0).round() as u64),
            lag: self.lag(),
        }
    }
}

/// Every pipeline's metrics.
#[derive(Debug, Default)]
pub struct Registry {
    pipelines: RwLock<Vec<Arc<ComponentMetrics>>>,
}

impl Registry {
    /// Adds a pipeline's metrics (replacing one of the same name).
    pub fn register(&self, metrics: Arc<ComponentMetrics>) {
        let mut all = self
            .pipelines
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|m| m.pipeline != metrics.pipeline);
        all.push(metrics);
    }

    /// One pipeline's metrics.
    #[must_use]
    pub fn get(&self, pipeline: &str) -> Option<Arc<ComponentMetrics>> {
        self.all().into_iter().find(|m| m.pipeline == pipeline)
    }

    /// Every pipeline's metrics, in registration order.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<ComponentMetrics>> {
        self.pipelines
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Reads one counter of a pipeline.
type Field = fn(&ComponentMetrics) -> &AtomicU64;

/// Label pairs of one sample (`prometheus-client` escapes the values).
pub type Labels = Vec<(&'static str, String)>;

/// One metric family: its samples across every pipeline (nothing when there are none).
///
/// # Errors
/// The writer failed.
pub fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge value: integers print as integers.
#[derive(Debug)]
pub enum Number {
    /// A whole number.
    Int(i64),
    /// Anything else.
    Float(f64),
}

impl Number {
    /// `v` as an integer when it is one.
    #[must_use]
    pub fn of(v: f64) -> Number {
        if v.fract() == 0.0 && v.abs() < 9.0e15 {
            Number::Int(v as i64)
        } else {
            Number::Float(v)
        }
    }
}

impl EncodeMetric for Number {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self {
            Number::Int(v) => ConstGauge::new(*v).encode(encoder),
            Number::Float(v) => ConstGauge::new(*v).encode(encoder),
        }
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// The OpenMetrics text of `registry` alone (tests and tools; the server adds the broker's).
#[must_use]
pub fn text(registry: &Arc<Registry>) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(Collector(registry.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// Encodes every pipeline's metrics at the current time, one family at a time.
#[derive(Debug, Clone)]
pub struct Collector(pub Arc<Registry>);

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let all = self.0.all();
        let component = |m: &ComponentMetrics| -> Labels {
            vec![
                ("component_id", m.pipeline.to_string()),
                ("component_kind", m.kind.as_str().to_string()),
                ("component_type", m.component_type.to_string()),
            ]
        };
        let pipeline =
            |m: &ComponentMetrics| -> Labels { vec![("pipeline", m.pipeline.to_string())] };
        let e = &mut encoder;
        let counters: [(&str, &str, Field); 3] = [
            (
                "gearbox_component_received_events",
                "Events a pipeline received from its gear or topic.",
                |m| &m.received,
            ),
            (
                "gearbox_component_sent_events",
                "Events a pipeline wrote to its topic or gear.",
                |m| &m.sent,
            ),
            (
                "gearbox_component_discarded_events",
                "Events a transform filtered out.",
                |m| &m.discarded,
            ),
        ];
        for (name, help, field) in counters {
            family(
                e,
                name,
                help,
                all.iter()
                    .map(|m| (component(m), ConstCounter::new(field(m).load(Relaxed)))),
            )?;
        }
        family(
            e,
            "gearbox_component_errors",
            "Errors by stage and type.",
            all.iter().flat_map(|m| {
                let errors = m
                    .errors
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                errors.into_iter().map(move |((stage, ty), n)| {
                    let mut labels = component(m);
                    labels.push(("stage", stage.to_string()));
                    labels.push(("error_type", ty.to_string()));
                    (labels, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            e,
            "gearbox_retries",
            "Deliveries or appends retried.",
            all.iter()
                .map(|m| (pipeline(m), ConstCounter::new(m.retries.load(Relaxed)))),
        )?;
        family(
            e,
            "gearbox_pipeline_dead_lettered_events",
            "Events a pipeline dead-lettered.",
            all.iter().map(|m| {
                (
                    pipeline(m),
                    ConstCounter::new(m.dead_lettered.load(Relaxed)),
                )
            }),
        )?;
        family(
            e,
            "gearbox_circuit_breaker_state",
            "0 closed, 1 open, 2 half-open.",
            all.iter()
                .map(|m| (pipeline(m), Number::Int(i64::from(m.breaker.load(Relaxed))))),
        )?;
        family(
            e,
            "gearbox_circuit_breaker_transitions",
            "Breaker transitions, by the state entered.",
            all.iter().flat_map(|m| {
                [
                    ("open", &m.breaker_opened),
                    ("half_open", &m.breaker_half_opened),
                    ("closed", &m.breaker_closed),
                ]
                .map(|(to, n)| {
                    let mut labels = pipeline(m);
                    labels.push(("to", to.to_string()));
                    (labels, ConstCounter::new(n.load(Relaxed)))
                })
            }),
        )?;
        family(
            e,
            "gearbox_pipeline_last_success_timestamp_seconds",
            "When the pipeline last succeeded.",
            all.iter().filter_map(|m| {
                let last = m.last_success_ms.load(Relaxed);
                (last > 0).then(|| (pipeline(m), Number::Float(last as f64 / 1000.0)))
            }),
        )?;
        family(
            e,
            "gearbox_pipeline_freshness_target_seconds",
            "The freshness target health is derived from.",
            all.iter()
                .map(|m| (pipeline(m), Number::of(m.freshness_ms as f64 / 1000.0))),
        )?;
        family(
            e,
            "gearbox_pipeline_lag_events",
            "Events waiting for the pipeline, where known.",
            all.iter().filter_map(|m| {
                Some((
                    pipeline(m),
                    Number::Int(i64::try_from(m.lag()?).unwrap_or(i64::MAX)),
                ))
            }),
        )?;
        family(
            e,
            "gearbox_pipeline_health",
            "The pipeline's derived health, one-hot by status.",
            all.iter().flat_map(|m| {
                let health = m.health(now_ms);
                Health::ALL.map(|h| {
                    let mut labels = pipeline(m);
                    labels.push(("status", h.as_str().to_string()));
                    (labels, Number::Int(i64::from(h == health)))
                })
            }),
        )?;
        // Connector gauges: `gearbox_<kind>_<name>{pipeline}`, one family per name.
        let mut gauges: BTreeMap<String, Vec<(Labels, Number)>> = BTreeMap::new();
        for m in &all {
            for g in m
                .gauges
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                gauges
                    .entry(format!("gearbox_{}_{}", m.kind.as_str(), g.name))
                    .or_default()
                    .push((pipeline(m), Number::of((g.read)())));
            }
        }
        for (name, samples) in gauges {
            family(e, &name, "A connector's own gauge.", samples)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_freshness_then_failures() {
        let m = ComponentMetrics::new("p", Kind::Source, "webhook", Some(1000), 0);
        assert_eq!(m.health(1000), Health::Ok);
        assert_eq!(m.health(1001), Health::Warn);
        assert_eq!(m.health(2001), Health::Error);
        m.sent(1, 2000);
        assert_eq!(m.health(2500), Health::Ok);
        m.breaker(BreakerState::Open { until_ms: 9999 });
        assert_eq!(m.health(2500), Health::Error);
        m.breaker(BreakerState::Closed);
        m.set_paused(true);
        assert_eq!(m.health(2500), Health::Paused);
        // No target: the default one applies. A sink with nothing to do stays fresh.
        let quiet = ComponentMetrics::new("q", Kind::Sink, "http", None, 0);
        let past = FRESHNESS_MS_DEFAULT as i64 + 1;
        assert_eq!(quiet.health(past), Health::Warn);
        quiet.set_lag(0);
        assert_eq!(quiet.health(past), Health::Ok);
        quiet.set_lag(LAG_WARN_EVENTS);
        assert_eq!(quiet.health(0), Health::Warn);
        quiet.set_lag(LAG_ERROR_EVENTS);
        assert_eq!(quiet.health(0), Health::Error);
        quiet.set_lag(0);
        quiet.fail("boom".into());
        assert_eq!(quiet.health(0), Health::Error);
    }

    #[test]
    fn the_error_rate_over_the_window_grades_health() {
        let m = ComponentMetrics::new("p", Kind::Sink, "http", Some(1_000_000), 0);
        // Below the minimum number of outcomes the rate does not count.
        for _ in 0..ERROR_RATE_MIN_EVENTS - 1 {
            m.error_at("write", "transient", 1000);
        }
        assert_eq!(m.error_rate(1000), None);
        assert_eq!(m.health(1000), Health::Ok);
        m.sent(9, 1000);
        m.error_at("write", "transient", 1000);
        // 10 failed of 19: over ERROR_RATE_ERROR.
        assert_eq!(m.error_rate(1000), Some(10.0 / 19.0));
        assert_eq!(m.health(1000), Health::Error);
        m.sent(60, 2000);
        // 10 of 79: warn.
        assert_eq!(m.health(2000), Health::Warn);
        // A window later the failures have aged out.
        m.sent(10, 2000 + ERROR_WINDOW_MS);
        assert_eq!(m.error_rate(2000 + ERROR_WINDOW_MS), Some(0.0));
        assert_eq!(m.health(2000 + ERROR_WINDOW_MS), Health::Ok);
    }

    fn render(registry: &Arc<Registry>) -> String {
        text(registry)
    }

    #[test]
    fn render_has_the_fields_names_and_bounded_error_kinds() {
        let m = ComponentMetrics::new("orders\"x", Kind::Sink, "http", None, 0);
        m.received(3);
        m.sent(2, 5000);
        for i in 0..ERROR_KINDS_MAX + 10 {
            m.error("write", &format!("e{i}"));
        }
        let registry = Arc::new(Registry::default());
        registry.register(Arc::new(m));
        let out = render(&registry);
        assert!(out.contains("gearbox_component_received_events_total{component_id=\"orders\\\"x\",component_kind=\"sink\",component_type=\"http\"} 3"), "{out}");
        assert!(
            out.contains(
                "gearbox_pipeline_last_success_timestamp_seconds{pipeline=\"orders\\\"x\"} 5.0"
            ),
            "{out}"
        );
        assert!(out.contains("# TYPE gearbox_component_received_events counter"));
        // 74 errors against 2 successes in the window: `error`.
        assert!(
            out.contains("gearbox_pipeline_health{pipeline=\"orders\\\"x\",status=\"error\"} 1"),
            "{out}"
        );
        let kinds = out
            .lines()
            .filter(|l| l.starts_with("gearbox_component_errors_total"))
            .count();
        assert_eq!(
            kinds,
            ERROR_KINDS_MAX + 1,
            "the overflow is one `other` line"
        );
        assert!(out.contains("error_type=\"other\"} 10"));
    }
}
