//! Component telemetry and pipeline health. Every pipeline gets one [`ComponentMetrics`],
//! updated by the runtime (never by connectors), so every connector emits the same metrics under
//! the same names: `gearbox_component_received_events_total`, `..._sent_events_total`,
//! `..._errors_total{error_type,stage}`, `..._discarded_events_total`, plus
//! `gearbox_retries_total`, `gearbox_pipeline_dead_lettered_events_total`, the circuit breaker's
//! state (`gearbox_circuit_breaker_state`) and transitions
//! (`gearbox_circuit_breaker_transitions_total{to}`), `gearbox_pipeline_last_success_timestamp_seconds` and
//! `gearbox_pipeline_health{status}`.
//!
//! Health is derived, not set: paused, then a fatal error or an open breaker (error), then
//! freshness: no success for longer than the freshness target is `warn`, for longer than twice
//! the target is `error`. A pipeline with no target is `ok` unless failing.
//!
//! Limits: the error table holds at most [`ERROR_KINDS_MAX`] distinct (stage, type) pairs per
//! pipeline; further kinds are counted under `error_type="other"`.

use crate::breaker::State as BreakerState;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

/// Most distinct (stage, error type) label pairs kept per pipeline.
pub const ERROR_KINDS_MAX: usize = 64;

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
    pub freshness_ms: Option<u64>,
    started_ms: i64,
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
            freshness_ms,
            started_ms: now_ms,
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
        }
    }

    /// Counts events received.
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Relaxed);
    }

    /// Counts events sent, and marks a success at `now_ms`.
    pub fn sent(&self, n: usize, now_ms: i64) {
        self.sent.fetch_add(n as u64, Relaxed);
        self.success(now_ms);
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
        let Some(target) = self.freshness_ms else {
            return Health::Ok;
        };
        let last = self.last_success_ms.load(Relaxed).max(self.started_ms);
        let age = now_ms.saturating_sub(last).max(0) as u64;
        if age > target.saturating_mul(2) {
            Health::Error
        } else if age > target {
            Health::Warn
        } else {
            Health::Ok
        }
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
        }
    }

    fn render(&self, now_ms: i64, out: &mut String) {
        let labels = format!(
            "component_id=\"{}\",component_kind=\"{}\",component_type=\"{}\"",
            escape(&self.pipeline),
            self.kind.as_str(),
            escape(&self.component_type)
        );
        let p = format!("pipeline=\"{}\"", escape(&self.pipeline));
        for g in self
            .gauges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "gearbox_{}_{}{{{p}}} {}",
                self.kind.as_str(),
                g.name,
                (g.read)()
            );
        }
        for (name, v) in [
            ("gearbox_component_received_events_total", &self.received),
            ("gearbox_component_sent_events_total", &self.sent),
            ("gearbox_component_discarded_events_total", &self.discarded),
        ] {
            let _ = writeln!(out, "{name}{{{labels}}} {}", v.load(Relaxed));
        }
        for ((stage, error_type), n) in self
            .errors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "gearbox_component_errors_total{{{labels},stage=\"{}\",error_type=\"{}\"}} {n}",
                escape(stage),
                escape(error_type)
            );
        }
        let _ = writeln!(
            out,
            "gearbox_retries_total{{{p}}} {}",
            self.retries.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "gearbox_pipeline_dead_lettered_events_total{{{p}}} {}",
            self.dead_lettered.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "gearbox_circuit_breaker_state{{{p}}} {}",
            self.breaker.load(Relaxed)
        );
        for (to, n) in [
            ("open", &self.breaker_opened),
            ("half_open", &self.breaker_half_opened),
            ("closed", &self.breaker_closed),
        ] {
            let _ = writeln!(
                out,
                "gearbox_circuit_breaker_transitions_total{{{p},to=\"{to}\"}} {}",
                n.load(Relaxed)
            );
        }
        let last = self.last_success_ms.load(Relaxed);
        if last > 0 {
            let _ = writeln!(
                out,
                "gearbox_pipeline_last_success_timestamp_seconds{{{p}}} {:.3}",
                last as f64 / 1000.0
            );
        }
        let health = self.health(now_ms);
        for h in Health::ALL {
            let _ = writeln!(
                out,
                "gearbox_pipeline_health{{{p},status=\"{}\"}} {}",
                h.as_str(),
                u8::from(h == health)
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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

    /// Appends the Prometheus text exposition of every pipeline at `now_ms`.
    pub fn render(&self, now_ms: i64, out: &mut String) {
        for m in self.all() {
            m.render(now_ms, out);
        }
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
        let quiet = ComponentMetrics::new("q", Kind::Sink, "http", None, 0);
        assert_eq!(quiet.health(i64::MAX / 2), Health::Ok);
        quiet.fail("boom".into());
        assert_eq!(quiet.health(0), Health::Error);
    }

    #[test]
    fn render_has_the_fields_names_and_bounded_error_kinds() {
        let m = ComponentMetrics::new("orders\"x", Kind::Sink, "http", None, 0);
        m.received(3);
        m.sent(2, 5000);
        for i in 0..ERROR_KINDS_MAX + 10 {
            m.error("write", &format!("e{i}"));
        }
        let registry = Registry::default();
        registry.register(Arc::new(m));
        let mut out = String::new();
        registry.render(6000, &mut out);
        assert!(out.contains("gearbox_component_received_events_total{component_id=\"orders\\\"x\",component_kind=\"sink\",component_type=\"http\"} 3"), "{out}");
        assert!(out.contains(
            "gearbox_pipeline_last_success_timestamp_seconds{pipeline=\"orders\\\"x\"} 5.000"
        ));
        assert!(out.contains("gearbox_pipeline_health{pipeline=\"orders\\\"x\",status=\"ok\"} 1"));
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
