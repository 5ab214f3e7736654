//! The conformance suite every connector passes, run against its real gear.
//!
//! A connector's test implements [`SourceGear`] or [`SinkGear`] (how to make a connector
//! instance, and how to make the gear emit or report records) and calls [`source_suite`] or
//! [`sink_suite`]. The suite runs the connector inside the real runtime on an embedded log in a
//! scratch directory and checks, in order:
//!
//! 1. delivery: every record arrives exactly once;
//! 2. a poison record (the suite's transform raises an error on `data.poison == true`) goes to
//!    the DLQ with its error, and nothing else is lost;
//! 3. nack and replay: the backbone refuses appends (sources) or the gear refuses writes (sinks)
//!    and the records are replayed, retried at most `attempts_max` times, and arrive once;
//! 4. shutdown finishes within its deadline with nothing aborted;
//! 5. restart: a new runtime resumes from the committed cursor (or subscription) without
//!    re-reading what was acknowledged, and what arrived meanwhile is delivered;
//! 6. the component metrics are emitted under their names.
//!
//! Each check panics with a message naming the step, so a failing connector test says what broke.

use crate::backbone::{Backbone, BackboneError, Embedded, Read};
use crate::breaker::BreakerConfig;
use crate::metrics::Registry;
use crate::retry::RetryConfig;
use crate::runtime::{Common, Runtime, SinkPipeline, SourcePipeline};
use crate::sink::Sink;
use crate::source::Source;
use crate::transform::{Chain, Program};
use gearbox_core::broker::{Broker, BrokerConfig, Delivery, Published};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::{Settings, Start};
use gearbox_log::Retention;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// How long the suite waits for any one condition.
pub const WAIT_MS_MAX: u64 = 30_000;
/// The shutdown deadline the suite gives the runtime.
pub const SHUTDOWN_DEADLINE_MS: u64 = 5_000;
/// The transform the suite installs: it rejects records whose data holds, at any depth, an object
/// with `"poison": true`.
pub const POISON_TRANSFORM: &str = r#"if ([.data | .. | objects | select(.poison == true)] | length) > 0 then error("poison record") else . end"#;

/// A backbone that can be told to refuse the next appends, counting the attempts.
#[derive(Debug)]
pub struct Faulty<B> {
    inner: B,
    refuse: AtomicU32,
    attempts: AtomicU32,
}

impl<B: Backbone> Faulty<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Faulty<B> {
        Faulty {
            inner,
            refuse: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
        }
    }

    /// Refuses the next `n` publishes as unavailable.
    pub fn refuse_next_publishes(&self, n: u32) {
        self.attempts.store(0, SeqCst);
        self.refuse.store(n, SeqCst);
    }

    /// Publishes refused since the last [`Faulty::refuse_next_publishes`].
    pub fn refused(&self) -> u32 {
        self.attempts.load(SeqCst)
    }
}

impl<B: Backbone> Backbone for Faulty<B> {
    async fn publish(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> Result<Vec<Published>, BackboneError> {
        let refused = self
            .refuse
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refused {
            self.attempts.fetch_add(1, SeqCst);
            return Err(BackboneError::Unavailable("refused by the test".into()));
        }
        self.inner.publish(topic, events).await
    }

    fn publish_dead(
        &self,
        topic: &str,
        events: Vec<CloudEvent>,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner.publish_dead(topic, events)
    }

    fn checkpoint(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = Result<Option<String>, BackboneError>> + Send {
        self.inner.checkpoint(pipeline)
    }

    fn put_checkpoint(
        &self,
        pipeline: &str,
        cursor: String,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner.put_checkpoint(pipeline, cursor)
    }

    fn ensure_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner.ensure_subscription(topic, name, settings)
    }

    fn restart_subscription(
        &self,
        topic: &str,
        name: &str,
        settings: Settings,
        start: Start,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner
            .restart_subscription(topic, name, settings, start)
    }

    fn poll(
        &self,
        topic: &str,
        name: &str,
        max: usize,
        wait_ms: u64,
    ) -> impl Future<Output = Result<Vec<Delivery>, BackboneError>> + Send {
        self.inner.poll(topic, name, max, wait_ms)
    }

    fn ack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner.ack(topic, name, items)
    }

    fn nack(
        &self,
        topic: &str,
        name: &str,
        items: Vec<(u32, u64)>,
        retry_in_ms: Option<u64>,
        reject: bool,
        error: String,
    ) -> impl Future<Output = Result<(), BackboneError>> + Send {
        self.inner
            .nack(topic, name, items, retry_in_ms, reject, error)
    }

    fn start_offsets(
        &self,
        topic: &str,
        start: Start,
    ) -> impl Future<Output = Result<Vec<(u32, u64)>, BackboneError>> + Send {
        self.inner.start_offsets(topic, start)
    }

    fn read(
        &self,
        topic: &str,
        from: Vec<(u32, u64)>,
        max: usize,
        wait_ms: u64,
    ) -> impl Future<Output = Result<Read, BackboneError>> + Send {
        self.inner.read(topic, from, max, wait_ms)
    }
}

/// A source connector's gear, as the suite drives it.
pub trait SourceGear: Send {
    /// The connector.
    type Source: Source;

    /// A new connector instance with the same configuration every time (so a restart resumes).
    fn connect(&mut self) -> impl Future<Output = Self::Source> + Send;

    /// Makes the gear emit one record per key, the way the real gear would (a push gear retries
    /// what the source refused); records with `poison` carry `"poison": true` in an object of
    /// their data.
    /// Returns the CloudEvent ids the records become.
    fn emit(&mut self, keys: &[String], poison: bool) -> impl Future<Output = Vec<String>> + Send;

    /// Whether the gear keeps records emitted while the pipeline is down (pull sources and
    /// persistent sessions); a push gear that needs the receiver up says false.
    fn buffers_while_down(&self) -> bool;
}

/// A sink connector's gear, as the suite drives it.
pub trait SinkGear: Send {
    /// The connector.
    type Sink: Sink;

    /// A new connector instance.
    fn connect(&mut self) -> impl Future<Output = Self::Sink> + Send;

    /// The record ids the gear has accepted so far, with repeats, in arrival order.
    fn accepted(&mut self) -> impl Future<Output = Vec<String>> + Send;

    /// Makes the gear fail every write transiently (`true`) or accept again (`false`). The gear
    /// always rejects, permanently, records whose data says `"reject": true`.
    fn set_down(&mut self, down: bool) -> impl Future<Output = ()> + Send;
}

fn common(name: &str) -> Common {
    Common {
        name: name.into(),
        retry: RetryConfig {
            attempts_max: 3,
            initial_ms: 20,
            max_ms: 100,
            multiplier: 2.0,
            total_ms_max: None,
        },
        breaker: BreakerConfig {
            failures_max: 3,
            open_ms: 300,
            half_open_probes: 1,
        },
        rate_limit: None,
        freshness_ms: Some(60_000),
        transforms: Chain::new(vec![
            Program::compile(POISON_TRANSFORM).expect("the suite's transform compiles"),
        ]),
        batch_records_max: 50,
    }
}

struct Log {
    broker: Arc<Broker>,
    backbone: Arc<Faulty<Embedded>>,
}

fn open(dir: &Path, topic: &str) -> Log {
    let broker = Arc::new(Broker::open(dir, BrokerConfig::durable()).expect("open the log"));
    match broker.create_topic(topic, 2, Retention::FOREVER) {
        Ok(_) | Err(gearbox_core::broker::BrokerError::TopicExists(_)) => {}
        Err(e) => panic!("create topic {topic}: {e}"),
    }
    Log {
        backbone: Arc::new(Faulty::new(Embedded::new(broker.clone()))),
        broker,
    }
}

/// Every event id in a topic, with repeats.
fn ids(broker: &Broker, topic: &str) -> Vec<String> {
    let Ok(info) = broker.describe_topic(topic) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in 0..info.partitions {
        let mut from = 0;
        loop {
            let (events, next) = broker.read(topic, p, from, 1000).expect("read the topic");
            if events.is_empty() {
                break;
            }
            out.extend(events.into_iter().map(|e| e.event.id));
            from = next;
        }
    }
    out
}

/// Dead letters of a topic: id → its `dlqerror`.
fn dead(broker: &Broker, topic: &str) -> BTreeMap<String, (String, String)> {
    broker
        .dlq(topic, 10_000)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let x = &e.event.extensions;
            let error = x.get("dlqerror").cloned().unwrap_or_default();
            let attempts = x.get("dlqattempts").cloned().unwrap_or_default();
            (e.event.id, (error, attempts))
        })
        .collect()
}

async fn until(step: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "conformance step {step:?}: condition not met within {WAIT_MS_MAX} ms"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exactly_once(step: &str, seen: &[String], expected: &[String]) {
    for id in expected {
        let n = seen.iter().filter(|s| *s == id).count();
        assert_eq!(n, 1, "conformance step {step:?}: {id} seen {n} times");
    }
}

fn metrics_text(registry: &Arc<Registry>) -> String {
    crate::metrics::text(registry)
}

fn metric(text: &str, name: &str, pipeline: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            l.contains(&format!("component_id=\"{pipeline}\""))
                || l.contains(&format!("pipeline=\"{pipeline}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Runs the source conformance suite in `dir` (an empty scratch directory).
///
/// # Panics
/// At the first check that fails, naming it.
pub async fn source_suite<G: SourceGear>(gear: &mut G, dir: &Path) {
    let topic = "conformance";
    let name = "conformance-source";
    let pipeline = SourcePipeline {
        common: common(name),
        to: crate::topic::Template::parse(topic).expect("a topic name is a template"),
        routes: Vec::new(),
        dead_letter: topic.into(),
    };
    let log = open(dir, topic);
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(log.backbone.clone(), registry.clone());
    runtime.spawn_source(pipeline.clone(), gear.connect().await);

    // 1. Delivery.
    let first = gear.emit(&keys("a", 5), false).await;
    until("deliver", || {
        let seen = ids(&log.broker, topic);
        first.iter().all(|id| seen.contains(id))
    })
    .await;
    exactly_once("deliver", &ids(&log.broker, topic), &first);

    // 2. Poison.
    let poison = gear.emit(&keys("p", 1), true).await;
    until("poison to the DLQ", || {
        dead(&log.broker, topic).contains_key(&poison[0])
    })
    .await;
    let error = &dead(&log.broker, topic)[&poison[0]].0;
    assert!(
        error.contains("poison record"),
        "conformance step \"poison\": the dead letter carries the error, got {error:?}"
    );
    assert!(
        !ids(&log.broker, topic).contains(&poison[0]),
        "conformance step \"poison\": a poison record must not reach the topic"
    );

    // 3. Nack and replay: refuse as many appends as the retry budget allows.
    let attempts_max = pipeline.common.retry.attempts_max;
    log.backbone.refuse_next_publishes(attempts_max);
    let replayed = gear.emit(&keys("b", 3), false).await;
    until("replay after refused appends", || {
        let seen = ids(&log.broker, topic);
        replayed.iter().all(|id| seen.contains(id))
    })
    .await;
    exactly_once("replay", &ids(&log.broker, topic), &replayed);
    assert_eq!(
        log.backbone.refused(),
        attempts_max,
        "conformance step \"retries bounded\": the runtime tried exactly attempts_max times"
    );
    let text = metrics_text(&registry);
    assert!(
        metric(&text, "gearbox_retries_total", name) >= u64::from(attempts_max - 1),
        "conformance step \"retries counted\":\n{text}"
    );

    // 4. Shutdown within its deadline.
    let started = Instant::now();
    let report = runtime
        .shutdown(Duration::from_millis(SHUTDOWN_DEADLINE_MS))
        .await;
    assert_eq!(
        report.aborted, 0,
        "conformance step \"shutdown\": {report:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(SHUTDOWN_DEADLINE_MS + 1000),
        "conformance step \"shutdown\": took {:?}",
        started.elapsed()
    );

    // 5. Restart and resume.
    let before = ids(&log.broker, topic).len();
    let buffered = gear.buffers_while_down();
    let mut later = if buffered {
        gear.emit(&keys("c", 3), false).await
    } else {
        Vec::new()
    };
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(log.backbone.clone(), registry.clone());
    runtime.spawn_source(pipeline.clone(), gear.connect().await);
    if !buffered {
        later = gear.emit(&keys("c", 3), false).await;
    }
    until("resume after restart", || {
        let seen = ids(&log.broker, topic);
        later.iter().all(|id| seen.contains(id))
    })
    .await;
    let all = ids(&log.broker, topic);
    for group in [&first, &replayed, &later] {
        exactly_once("restart", &all, group);
    }
    assert_eq!(
        all.len(),
        before + later.len(),
        "conformance step \"restart\": only the new records were appended"
    );
    let text = metrics_text(&registry);
    let received = metric(&text, "gearbox_component_received_events_total", name);
    assert!(
        received < (first.len() + replayed.len() + later.len()) as u64,
        "conformance step \"resume from the cursor\": the restarted source re-read {received} records"
    );

    // 6. Metrics.
    for m in [
        "gearbox_component_received_events_total",
        "gearbox_component_sent_events_total",
        "gearbox_pipeline_health",
        "gearbox_pipeline_last_success_timestamp_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(m) && l.contains(name)),
            "conformance step \"metrics\": {m} missing:\n{text}"
        );
    }
    assert!(metric(&text, "gearbox_component_sent_events_total", name) >= later.len() as u64);
    let report = runtime
        .shutdown(Duration::from_millis(SHUTDOWN_DEADLINE_MS))
        .await;
    assert_eq!(report.aborted, 0, "final shutdown: {report:?}");
}

fn publish(broker: &Broker, topic: &str, keys: &[String], data: serde_json::Value) -> Vec<String> {
    let events: Vec<CloudEvent> = keys
        .iter()
        .map(|k| {
            CloudEvent::from_json(&serde_json::json!({
                "specversion": "1.0", "id": k, "source": "conformance", "type": "test",
                "datacontenttype": "application/json", "data": data,
            }))
            .expect("a valid event")
        })
        .collect();
    broker.publish(topic, &events).expect("publish");
    keys.to_vec()
}

/// Runs the sink conformance suite in `dir` (an empty scratch directory).
///
/// # Panics
/// At the first check that fails, naming it.
pub async fn sink_suite<G: SinkGear>(gear: &mut G, dir: &Path) {
    let topic = "conformance";
    let name = "conformance-sink";
    let pipeline = SinkPipeline {
        common: common(name),
        from: topic.into(),
        start: Start::Earliest,
        lock_ms: 10_000,
        pause_after_failures: None,
    };
    let log = open(dir, topic);
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(log.backbone.clone(), registry.clone());
    runtime.spawn_sink(pipeline.clone(), gear.connect().await);
    let ok = serde_json::json!({"n": 1});

    // 1. Delivery.
    let first = publish(&log.broker, topic, &keys("a", 5), ok.clone());
    let accepted = wait_accepted(gear, "deliver", &first).await;
    exactly_once("deliver", &accepted, &first);

    // 2. Poison (the transform fails) and a record the gear rejects.
    let poison = publish(
        &log.broker,
        topic,
        &keys("p", 1),
        serde_json::json!({"poison": true}),
    );
    let rejected = publish(
        &log.broker,
        topic,
        &keys("r", 1),
        serde_json::json!({"reject": true}),
    );
    until("poison and rejected to the DLQ", || {
        let d = dead(&log.broker, topic);
        d.contains_key(&poison[0]) && d.contains_key(&rejected[0])
    })
    .await;
    let d = dead(&log.broker, topic);
    assert!(
        d[&poison[0]].0.contains("poison record"),
        "conformance step \"poison\": {:?}",
        d[&poison[0]]
    );
    assert!(
        !d[&rejected[0]].0.is_empty(),
        "conformance step \"rejected\": the dead letter carries the gear's error"
    );

    // 3. Transient failures: bounded retries, then the DLQ; the breaker opens.
    gear.set_down(true).await;
    let doomed = publish(&log.broker, topic, &keys("t", 1), ok.clone());
    until("retries exhausted to the DLQ", || {
        dead(&log.broker, topic).contains_key(&doomed[0])
    })
    .await;
    let attempts = dead(&log.broker, topic)[&doomed[0]].1.clone();
    assert_eq!(
        attempts,
        pipeline.common.retry.attempts_max.to_string(),
        "conformance step \"retries bounded\": dead-lettered after exactly attempts_max deliveries"
    );
    let text = metrics_text(&registry);
    assert!(
        metric(
            &text,
            "gearbox_circuit_breaker_transitions_total{pipeline=\"conformance-sink\",to=\"open\"}",
            name
        ) >= 1,
        "conformance step \"breaker opens\":\n{text}"
    );
    // Replay: events published while the gear is down arrive once it is back.
    let replayed = publish(&log.broker, topic, &keys("b", 2), ok.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    gear.set_down(false).await;
    let accepted = wait_accepted(gear, "replay after the gear recovers", &replayed).await;
    exactly_once("replay", &accepted, &replayed);
    let text = metrics_text(&registry);
    assert_eq!(
        metric(&text, "gearbox_circuit_breaker_state", name),
        0,
        "conformance step \"breaker closes\":\n{text}"
    );

    // 4. Shutdown.
    let started = Instant::now();
    let report = runtime
        .shutdown(Duration::from_millis(SHUTDOWN_DEADLINE_MS))
        .await;
    assert_eq!(
        report.aborted, 0,
        "conformance step \"shutdown\": {report:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(SHUTDOWN_DEADLINE_MS + 1000));

    // 5. Restart: what was published meanwhile is delivered, nothing acknowledged is resent.
    let later = publish(&log.broker, topic, &keys("c", 3), ok);
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(log.backbone.clone(), registry.clone());
    runtime.spawn_sink(pipeline.clone(), gear.connect().await);
    let accepted = wait_accepted(gear, "resume after restart", &later).await;
    for group in [&first, &replayed, &later] {
        exactly_once("restart", &accepted, group);
    }

    // 6. Metrics.
    let text = metrics_text(&registry);
    assert_eq!(
        metric(&text, "gearbox_component_sent_events_total", name),
        later.len() as u64,
        "conformance step \"metrics\": the restarted sink sent only the new events:\n{text}"
    );
    assert!(text.contains("gearbox_pipeline_health"));
    let report = runtime
        .shutdown(Duration::from_millis(SHUTDOWN_DEADLINE_MS))
        .await;
    assert_eq!(report.aborted, 0, "final shutdown: {report:?}");
}

async fn wait_accepted<G: SinkGear>(gear: &mut G, step: &str, ids: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    loop {
        let accepted = gear.accepted().await;
        if ids.iter().all(|id| accepted.contains(id)) {
            return accepted;
        }
        assert!(
            Instant::now() < deadline,
            "conformance step {step:?}: not all of {ids:?} accepted within {WAIT_MS_MAX} ms"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
