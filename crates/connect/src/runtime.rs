//! The runtime: runs source pipelines (gear → transforms → topic) and sink pipelines (topic →
//! transforms → gear) as tokio tasks, giving each the same retries, circuit breaker, rate limit,
//! dead-lettering, cursor handling, metrics and graceful shutdown.
//!
//! A source pipeline has one batch in flight: read, transform, append (retrying the append while
//! the backbone is unavailable), store the cursor, ack the source. Nothing is committed to the
//! gear before the append is acknowledged, and the cursor never moves past an event that is not
//! in the topic or its DLQ. A transform error dead-letters the record with the error; it never
//! drops it. A record a transform filters out is counted as discarded.
//!
//! A sink pipeline consumes its topic through a queue subscription named after the pipeline, so
//! retries are durable: a transient failure is nacked for a redelivery after the pipeline's
//! backoff, and the subscription dead-letters an event after `retry.attempts_max` deliveries
//! (with the last error). Permanent failures and transform errors are dead-lettered at once.
//! After `pause_after_failures` consecutive failed deliveries the pipeline pauses itself (health
//! `paused`) until resumed.
//!
//! Limits: [`BATCH_RECORDS_MAX`] records per batch; shutdown waits at most the deadline given to
//! [`Runtime::shutdown`], then aborts what is left (an aborted batch was not acked, so it is read
//! again after a restart).

use crate::backbone::{Backbone, BackboneError};
use crate::breaker::{Breaker, BreakerConfig, Permit};
use crate::metrics::{ComponentMetrics, Kind, Registry};
use crate::ratelimit::{RateLimitConfig, RateLimiter};
use crate::retry::{Retry, RetryConfig, jitter};
use crate::sink::{Sink, SinkError, SinkRecord, TransactionalSink};
use crate::source::{Landing, RecordOutcome, Source, SourceBatch, SourceError};
use crate::topic::Template;
use crate::transform::{Chain, Program};
use gearbox_core::broker::StoredEvent;
use gearbox_core::event::CloudEvent;
use gearbox_core::lineage::{Hop, HopKind};
use gearbox_core::subscription::{Mode, Settings, Start};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often a sink pipeline reads its subscription's lag (for health).
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Most records in one batch (source read or sink write).
pub const BATCH_RECORDS_MAX: usize = 1000;
/// Default records per batch.
pub const BATCH_RECORDS_DEFAULT: usize = 100;
/// How long a sink pipeline's long poll waits for events.
pub const SINK_POLL_WAIT_MS: u64 = 1000;
/// How often a paused pipeline looks whether it was resumed.
pub const PAUSE_CHECK_MS: u64 = 200;

/// Settings every pipeline has.
#[derive(Debug, Clone)]
pub struct Common {
    /// The pipeline's name (also its checkpoint key and its sink subscription's name).
    pub name: String,
    /// Retries of reads, appends and deliveries.
    pub retry: RetryConfig,
    /// The circuit breaker around the gear.
    pub breaker: BreakerConfig,
    /// Calls to the gear per second, if limited.
    pub rate_limit: Option<RateLimitConfig>,
    /// The freshness target that health is derived from.
    pub freshness_ms: Option<u64>,
    /// Transforms, applied in order.
    pub transforms: Chain,
    /// Records per batch, 1 to [`BATCH_RECORDS_MAX`].
    pub batch_records_max: usize,
}

/// Content-based routing: the first route whose condition holds picks the topic.
#[derive(Debug, Clone)]
pub struct Route {
    /// The condition (jq; truthy first output).
    pub when: Program,
    /// The topic.
    pub topic: String,
}

/// A gear → topic pipeline.
#[derive(Debug, Clone)]
pub struct SourcePipeline {
    /// Common settings.
    pub common: Common,
    /// The default topic, or a template naming it from each event ([`crate::topic`]).
    pub to: Template,
    /// Routes tried before `to`.
    pub routes: Vec<Route>,
    /// The topic whose DLQ gets rejected records: `to` when that is a plain name.
    pub dead_letter: String,
}

/// A topic → gear pipeline.
#[derive(Debug, Clone)]
pub struct SinkPipeline {
    /// Common settings.
    pub common: Common,
    /// The topic read.
    pub from: String,
    /// Where a new subscription starts.
    pub start: Start,
    /// How long a delivered event stays locked before it is redelivered.
    pub lock_ms: u64,
    /// Consecutive failed deliveries after which the pipeline pauses itself.
    pub pause_after_failures: Option<u32>,
}

/// What became of one draft record after the transforms.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// An event for a topic.
    Event {
        /// The topic.
        topic: String,
        /// The event.
        event: CloudEvent,
    },
    /// Rejected; dead-lettered with the error.
    Dead {
        /// The event as dead-lettered.
        event: CloudEvent,
        /// Why.
        error: String,
    },
}

/// Runs the transforms and routes on one draft record: every output becomes an event for a
/// topic, or a dead letter naming what was wrong. No outputs means the record was filtered out.
/// Pure, so `gearbox test` runs exactly what the pipeline runs.
#[must_use]
pub fn process(pipeline: &SourcePipeline, draft: Value) -> Vec<Output> {
    let name = &pipeline.common.name;
    let outputs = match pipeline.common.transforms.run(draft.clone()) {
        Ok(outputs) => outputs,
        Err(e) => return vec![dead(name, &draft, "transform", &e.to_string())],
    };
    outputs
        .into_iter()
        .map(|value| match CloudEvent::from_json(&value) {
            Err(e) => dead(
                name,
                &value,
                "event",
                &format!("not a valid CloudEvent: {e}"),
            ),
            Ok(event) => match route(pipeline, &event, &value) {
                Ok(topic) => Output::Event { topic, event },
                Err(e) => dead(name, &value, "route", &e),
            },
        })
        .collect()
}

fn route(pipeline: &SourcePipeline, event: &CloudEvent, value: &Value) -> Result<String, String> {
    for r in &pipeline.routes {
        if crate::transform::matches(&r.when, value).map_err(|e| e.to_string())? {
            return Ok(r.topic.clone());
        }
    }
    pipeline.to.render(event)
}

/// A dead letter for a record: the record itself when it is a valid CloudEvent, otherwise a
/// wrapper event carrying it as data. Its id is deterministic (the record's own id, or a hash of
/// its content), so dead-lettering the same record again after a crash stores it once.
fn dead(pipeline: &str, record: &Value, stage: &str, error: &str) -> Output {
    let mut event = CloudEvent::from_json(record).unwrap_or_else(|_| wrap(pipeline, record));
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (k, v) in [
        ("dlqpipeline", pipeline.to_string()),
        ("dlqstage", stage.to_string()),
        ("dlqerror", truncate(error, 1024)),
        ("dlqtime", time),
    ] {
        event.extensions.insert(k.into(), v);
    }
    Output::Dead {
        event,
        error: error.to_string(),
    }
}

fn wrap(pipeline: &str, record: &Value) -> CloudEvent {
    use std::hash::{Hash as _, Hasher as _};
    let id = match record.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            let mut h = std::hash::DefaultHasher::new();
            record.to_string().hash(&mut h);
            format!("dlq-{:016x}", h.finish())
        }
    };
    CloudEvent::from_json(&serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("gearbox:pipeline/{pipeline}"),
        "type": "gearbox.dead_letter",
        "datacontenttype": "application/json",
        "data": record,
    }))
    .expect("the wrapper is a valid CloudEvent")
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Sleeps `ms`, or less if `stop` turns true; returns whether it was stopped.
async fn nap(ms: u64, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// How a pipeline task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by shutdown.
    Stopped,
    /// Its source ended.
    Ended,
    /// A fatal error.
    Failed(String),
}

/// What [`Runtime::shutdown`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Pipelines that finished in time, with how they ended.
    pub finished: Vec<(String, Exit)>,
    /// Pipelines aborted at the deadline.
    pub aborted: usize,
}

/// The pipelines of one process.
#[derive(Debug)]
pub struct Runtime<B: Backbone> {
    backbone: Arc<B>,
    registry: Arc<Registry>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(String, Exit)>,
}

impl<B: Backbone> Runtime<B> {
    /// A runtime publishing metrics into `registry`.
    #[must_use]
    pub fn new(backbone: Arc<B>, registry: Arc<Registry>) -> Runtime<B> {
        Runtime {
            backbone,
            registry,
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
        }
    }

    /// The metrics registry.
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Starts a source pipeline.
    pub fn spawn_source<S: Source>(&mut self, pipeline: SourcePipeline, source: S) {
        let metrics = self.metrics(&pipeline.common, Kind::Source, source.kind());
        metrics.add_gauges(source.gauges());
        if let Some(runs) = source.runs() {
            metrics.set_runs(runs);
        }
        let task = SourceTask {
            backbone: self.backbone.clone(),
            metrics,
            stop: self.stop.subscribe(),
            limiter: pipeline.common.rate_limit.map(RateLimiter::new),
            pipeline,
        };
        self.tasks.spawn(async move {
            let name = task.pipeline.common.name.clone();
            (name, task.run(source).await)
        });
    }

    /// Starts a sink pipeline.
    pub fn spawn_sink<K: Sink>(&mut self, pipeline: SinkPipeline, sink: K) {
        let metrics = self.metrics(&pipeline.common, Kind::Sink, sink.kind());
        let task = SinkTask {
            backbone: self.backbone.clone(),
            metrics,
            stop: self.stop.subscribe(),
            limiter: pipeline.common.rate_limit.map(RateLimiter::new),
            pipeline,
        };
        self.tasks.spawn(async move {
            let name = task.pipeline.common.name.clone();
            (name, task.run(sink).await)
        });
    }

    /// Starts a sink pipeline whose sink keeps its read positions at the gear, in the same
    /// transaction as its writes ([`TransactionalSink`]): effectively-once, in offset order per
    /// partition. `start` applies when the sink has no stored positions; `lock_ms` is unused.
    pub fn spawn_transactional_sink<K: TransactionalSink>(
        &mut self,
        pipeline: SinkPipeline,
        sink: K,
    ) {
        let metrics = self.metrics(&pipeline.common, Kind::Sink, sink.kind());
        // Events in the topic the sink has not applied yet, as of its last batch.
        let lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
        metrics.add_gauges(vec![crate::metrics::Gauge {
            name: "lag_events",
            read: Box::new({
                let lag = lag.clone();
                move || lag.load(std::sync::atomic::Ordering::Relaxed) as f64
            }),
        }]);
        let task = TxSinkTask {
            backbone: self.backbone.clone(),
            lag,
            metrics,
            stop: self.stop.subscribe(),
            limiter: pipeline.common.rate_limit.map(RateLimiter::new),
            pipeline,
        };
        self.tasks.spawn(async move {
            let name = task.pipeline.common.name.clone();
            (name, task.run(sink).await)
        });
    }

    fn metrics(&self, common: &Common, kind: Kind, component: &str) -> Arc<ComponentMetrics> {
        let m = Arc::new(ComponentMetrics::new(
            &common.name,
            kind,
            component,
            common.freshness_ms,
            now_ms(),
        ));
        self.registry.register(m.clone());
        m
    }

    /// Waits for the next pipeline to end by itself (a source that ended, or a fatal error).
    /// `None` when no pipeline is running.
    pub async fn next_exit(&mut self) -> Option<(String, Exit)> {
        loop {
            match self.tasks.join_next().await? {
                Ok(done) => return Some(done),
                Err(e) if e.is_panic() => {
                    return Some(("?".into(), Exit::Failed(format!("pipeline panicked: {e}"))));
                }
                Err(_) => {}
            }
        }
    }

    /// Stops every pipeline: each finishes the batch in hand (append, cursor, ack) and exits. What
    /// is still running after `deadline` is aborted.
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let _ = self.stop.send(true);
        let mut finished = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(until, self.tasks.join_next()).await {
                Ok(Some(Ok(done))) => finished.push(done),
                Ok(Some(Err(e))) => {
                    finished.push(("?".into(), Exit::Failed(format!("pipeline panicked: {e}"))));
                }
                Ok(None) => break,
                Err(_) => break,
            }
        }
        let aborted = self.tasks.len();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        ShutdownReport { finished, aborted }
    }
}

struct SourceTask<B> {
    backbone: Arc<B>,
    pipeline: SourcePipeline,
    metrics: Arc<ComponentMetrics>,
    stop: watch::Receiver<bool>,
    limiter: Option<RateLimiter>,
}

/// Why a step did not finish.
enum Halt {
    /// Shutdown.
    Stopped,
    /// The backbone stayed unavailable through the retry budget: the batch is nacked and read
    /// again later.
    Exhausted(String),
    /// A configuration error (a missing topic): the pipeline stops.
    Failed(String),
}

impl Halt {
    fn message(&self) -> String {
        match self {
            Halt::Stopped => "stopped".into(),
            Halt::Exhausted(m) | Halt::Failed(m) => m.clone(),
        }
    }
}

impl<B: Backbone> SourceTask<B> {
    async fn run<S: Source>(mut self, mut source: S) -> Exit {
        match self.open(&mut source).await {
            Ok(()) => {}
            Err(Halt::Stopped) => return Exit::Stopped,
            Err(Halt::Failed(e) | Halt::Exhausted(e)) => return self.fail(e),
        }
        let mut breaker = Breaker::new(self.pipeline.common.breaker);
        let mut retry: Option<Retry> = None;
        loop {
            if *self.stop.borrow() {
                return Exit::Stopped;
            }
            if let Permit::Rejected { retry_at_ms } = breaker.permit(now_ms()) {
                self.metrics.breaker(breaker.state());
                let wait = retry_at_ms.saturating_sub(now_ms()).max(1) as u64;
                if nap(wait, &mut self.stop).await {
                    return Exit::Stopped;
                }
                continue;
            }
            self.metrics.breaker(breaker.state());
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    () = limiter.acquire() => {}
                    _ = self.stop.changed() => return Exit::Stopped,
                }
            }
            let read = tokio::select! {
                read = source.next_batch(self.pipeline.common.batch_records_max) => read,
                _ = self.stop.changed() => return Exit::Stopped,
            };
            match read {
                Ok(None) => return Exit::Ended,
                Ok(Some(batch)) => {
                    breaker.success(now_ms());
                    self.metrics.breaker(breaker.state());
                    retry = None;
                    match self.deliver(&mut source, batch).await {
                        Ok(()) => {}
                        Err(Halt::Stopped) => return Exit::Stopped,
                        Err(Halt::Failed(e)) => return self.fail(e),
                        Err(Halt::Exhausted(e)) => {
                            // The batch was nacked; the source reads it again after a pause.
                            tracing::error!(pipeline = %self.pipeline.common.name, error = %e,
                                "append failed through the retry budget; the batch will be read again");
                            breaker.failure(now_ms());
                            self.metrics.breaker(breaker.state());
                            if nap(self.pipeline.common.retry.max_ms, &mut self.stop).await {
                                return Exit::Stopped;
                            }
                        }
                    }
                }
                Err(SourceError::Fatal { message }) => {
                    self.metrics.error("receive", "fatal");
                    return self.fail(message);
                }
                Err(SourceError::Transient {
                    message,
                    retry_after_ms,
                }) => {
                    self.metrics.error("receive", "transient");
                    breaker.failure(now_ms());
                    self.metrics.breaker(breaker.state());
                    let now = now_ms();
                    let r =
                        retry.get_or_insert_with(|| Retry::new(self.pipeline.common.retry, now));
                    let wait = match r.failed(now, retry_after_ms, jitter()) {
                        Some(wait) => wait,
                        None => {
                            // Out of retries for this outage: say so, and keep trying at the
                            // slowest pace (the breaker decides when calls are made at all).
                            tracing::error!(pipeline = %self.pipeline.common.name, error = %message,
                                "source still failing after its retry budget");
                            retry = None;
                            self.pipeline.common.retry.max_ms
                        }
                    };
                    tracing::warn!(pipeline = %self.pipeline.common.name, error = %message, wait_ms = wait,
                        "source read failed; retrying");
                    self.metrics.retry();
                    if nap(wait, &mut self.stop).await {
                        return Exit::Stopped;
                    }
                }
            }
        }
    }

    fn fail(&self, message: String) -> Exit {
        tracing::error!(pipeline = %self.pipeline.common.name, error = %message, "pipeline stopped");
        self.metrics.fail(message.clone());
        Exit::Failed(message)
    }

    async fn open<S: Source>(&mut self, source: &mut S) -> Result<(), Halt> {
        let name = self.pipeline.common.name.clone();
        let cursor = self
            .with_retries("checkpoint", || self.backbone.checkpoint(&name))
            .await?;
        let mut retry = Retry::new(self.pipeline.common.retry, now_ms());
        loop {
            match source.open(cursor.clone()).await {
                Ok(()) => return Ok(()),
                Err(SourceError::Fatal { message }) => return Err(Halt::Failed(message)),
                Err(SourceError::Transient {
                    message,
                    retry_after_ms,
                }) => {
                    self.metrics.error("open", "transient");
                    let wait = retry
                        .failed(now_ms(), retry_after_ms, jitter())
                        .unwrap_or(self.pipeline.common.retry.max_ms);
                    tracing::warn!(pipeline = %name, error = %message, wait_ms = wait, "opening the source failed; retrying");
                    if nap(wait, &mut self.stop.clone()).await {
                        return Err(Halt::Stopped);
                    }
                }
            }
        }
    }

    /// Runs `op` until it succeeds, retrying while the backbone is unavailable (within the
    /// retry budget; after it, the pipeline fails so an operator sees it).
    async fn with_retries<T, F, Fut>(&self, stage: &str, mut op: F) -> Result<T, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackboneError>>,
    {
        let mut retry = Retry::new(self.pipeline.common.retry, now_ms());
        let mut stop = self.stop.clone();
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(BackboneError::Unavailable(e)) => {
                    self.metrics.error(stage, "unavailable");
                    let Some(wait) = retry.failed(now_ms(), None, jitter()) else {
                        return Err(Halt::Exhausted(format!("{stage}: {e}")));
                    };
                    self.metrics.retry();
                    tracing::warn!(pipeline = %self.pipeline.common.name, stage, error = %e, wait_ms = wait, "backbone unavailable; retrying");
                    // At shutdown a batch that cannot be appended is given up (nacked): it is
                    // read again after the restart.
                    if nap(wait, &mut stop).await {
                        return Err(Halt::Stopped);
                    }
                }
                Err(e) => {
                    self.metrics.error(stage, "config");
                    return Err(Halt::Failed(format!("{stage}: {e}")));
                }
            }
        }
    }

    async fn deliver<S: Source>(&mut self, source: &mut S, batch: SourceBatch) -> Result<(), Halt> {
        let SourceBatch {
            records,
            cursor,
            token,
            rejected,
        } = batch;
        self.metrics.received(records.len() + rejected.len());
        let name = &self.pipeline.common.name;
        let outputs: Vec<Vec<Output>> = records
            .into_iter()
            .map(|r| process(&self.pipeline, r))
            .chain(
                rejected
                    .iter()
                    .map(|r| vec![dead(name, &r.record, "read", &r.error)]),
            )
            .collect();
        match self.append(&outputs).await {
            Ok(outcomes) => {
                if let Some(cursor) = cursor {
                    let name = self.pipeline.common.name.clone();
                    let stored = self
                        .with_retries("checkpoint", || {
                            self.backbone.put_checkpoint(&name, cursor.clone())
                        })
                        .await;
                    if let Err(e) = stored {
                        source.nack(token, &e.message()).await;
                        return Err(e);
                    }
                }
                self.count(&outcomes);
                self.record_ingested(&outcomes);
                if let Err(e) = source.ack(token, outcomes).await {
                    // The batch is durable and the cursor stored; the gear may deliver it again,
                    // and deduplication absorbs that.
                    self.metrics.error("ack", e.kind());
                    tracing::warn!(pipeline = %self.pipeline.common.name, error = %e, "acknowledging the source failed");
                }
                Ok(())
            }
            Err(halt) => {
                source.nack(token, &halt.message()).await;
                Err(halt)
            }
        }
    }

    /// Lineage: which pipeline brought each appended event in.
    fn record_ingested(&self, outcomes: &[RecordOutcome]) {
        let Some(lineage) = self.backbone.lineage().filter(|l| l.enabled()) else {
            return;
        };
        let now = now_ms();
        let hops = outcomes
            .iter()
            .flat_map(|o| &o.landings)
            .filter_map(|l| match l {
                Landing::Appended {
                    topic,
                    id,
                    partition,
                    offset,
                    duplicate,
                } => {
                    let mut h =
                        Hop::event(HopKind::Ingested, now, id).position(topic, *partition, *offset);
                    h.pipeline = Some(self.pipeline.common.name.clone());
                    h.result = Some(if *duplicate { "duplicate" } else { "ok" }.into());
                    Some(h)
                }
                Landing::DeadLettered { .. } => None,
            })
            .collect();
        lineage.record(hops);
    }

    fn count(&self, outcomes: &[RecordOutcome]) {
        let mut sent = 0;
        let mut dead = 0;
        let mut discarded = 0;
        for o in outcomes {
            if o.landings.is_empty() {
                discarded += 1;
            }
            for l in &o.landings {
                match l {
                    Landing::Appended { .. } => sent += 1,
                    Landing::DeadLettered { .. } => dead += 1,
                }
            }
        }
        self.metrics.sent(sent, now_ms());
        self.metrics.dead_lettered(dead);
        self.metrics.discarded(discarded);
        if dead > 0 {
            self.metrics.error("transform", "rejected");
        }
    }

    /// Appends every output (events by topic, in order; dead letters to the DLQ) and returns
    /// where each landed.
    async fn append(&self, outputs: &[Vec<Output>]) -> Result<Vec<RecordOutcome>, Halt> {
        let mut landings: Vec<Vec<Option<Landing>>> =
            outputs.iter().map(|o| vec![None; o.len()]).collect();
        let mut by_topic: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        let mut dead_letters: Vec<(usize, usize, CloudEvent, String)> = Vec::new();
        for (r, outs) in outputs.iter().enumerate() {
            for (o, out) in outs.iter().enumerate() {
                match out {
                    Output::Event { topic, .. } => by_topic.entry(topic).or_default().push((r, o)),
                    Output::Dead { event, error } => {
                        dead_letters.push((r, o, event.clone(), error.clone()));
                    }
                }
            }
        }
        for (topic, mut items) in by_topic {
            // An event the backbone can never store (too large) is dead-lettered instead, and the
            // rest are appended without it.
            loop {
                let events: Vec<CloudEvent> = items
                    .iter()
                    .map(|&(r, o)| match &outputs[r][o] {
                        Output::Event { event, .. } => event.clone(),
                        Output::Dead { .. } => unreachable!("only events are grouped by topic"),
                    })
                    .collect();
                let result = self
                    .with_retries_keep_rejected("append", topic, || {
                        self.backbone.publish(topic, events.clone())
                    })
                    .await?;
                match result {
                    Ok(published) => {
                        for (&(r, o), p) in items.iter().zip(published) {
                            landings[r][o] = Some(Landing::Appended {
                                topic: topic.to_string(),
                                id: p.id,
                                partition: p.position.partition,
                                offset: p.position.offset,
                                duplicate: p.duplicate,
                            });
                        }
                        break;
                    }
                    Err(Refused::Topic(message)) => {
                        // A topic the template rendered that is not declared: its events are
                        // dead-lettered; the pipeline goes on.
                        let message = format!(
                            "topic {topic:?} (from `to: {}`): {message}",
                            self.pipeline.to
                        );
                        for ((r, o), event) in items.drain(..).zip(events) {
                            let Output::Dead { event, error } = dead(
                                &self.pipeline.common.name,
                                &event.to_json(),
                                "route",
                                &message,
                            ) else {
                                unreachable!("dead() builds a dead letter")
                            };
                            dead_letters.push((r, o, event, error));
                        }
                        break;
                    }
                    Err(Refused::Event(index, message)) => {
                        let (r, o) = items.remove(index);
                        let Output::Dead { event, error } = dead(
                            &self.pipeline.common.name,
                            &events[index].to_json(),
                            "append",
                            &message,
                        ) else {
                            unreachable!("dead() builds a dead letter")
                        };
                        dead_letters.push((r, o, strip_data(event), error));
                        if items.is_empty() {
                            break;
                        }
                    }
                }
            }
        }
        if !dead_letters.is_empty() {
            let events: Vec<CloudEvent> = dead_letters.iter().map(|d| d.2.clone()).collect();
            let to = self.pipeline.dead_letter.clone();
            self.with_retries("dead_letter", || {
                self.backbone.publish_dead(&to, events.clone())
            })
            .await?;
            for (r, o, _, error) in dead_letters {
                landings[r][o] = Some(Landing::DeadLettered { error });
            }
        }
        Ok(landings
            .into_iter()
            .map(|l| RecordOutcome {
                landings: l
                    .into_iter()
                    .map(|x| x.expect("every output landed"))
                    .collect(),
            })
            .collect())
    }

    /// Like `with_retries`, but hands a rejection of one event back to the caller, and, when
    /// `to` is a template, a topic that does not exist.
    async fn with_retries_keep_rejected<T, F, Fut>(
        &self,
        stage: &str,
        topic: &str,
        mut op: F,
    ) -> Result<Result<T, Refused>, Halt>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackboneError>>,
    {
        // Only a topic the template rendered; a route's fixed topic missing is a configuration
        // error, as a plain `to` is.
        let templated = !self.pipeline.to.is_literal()
            && !self.pipeline.routes.iter().any(|r| r.topic == topic);
        self.with_retries(stage, || {
            let fut = op();
            async move {
                match fut.await {
                    Ok(v) => Ok(Ok(v)),
                    Err(BackboneError::Rejected { index, message }) => {
                        Ok(Err(Refused::Event(index, message)))
                    }
                    Err(BackboneError::NotFound(message)) if templated => {
                        Ok(Err(Refused::Topic(message)))
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }
}

/// What the backbone refused in a publish, short of failing the pipeline.
enum Refused {
    /// The event at this index, with the reason.
    Event(usize, String),
    /// The whole topic: it does not exist (only for topics a template rendered).
    Topic(String),
}

/// A dead letter for an event too large to store keeps its attributes, not its data.
fn strip_data(mut event: CloudEvent) -> CloudEvent {
    event.data = None;
    event
}

struct SinkTask<B> {
    backbone: Arc<B>,
    pipeline: SinkPipeline,
    metrics: Arc<ComponentMetrics>,
    stop: watch::Receiver<bool>,
    limiter: Option<RateLimiter>,
}

impl<B: Backbone> SinkTask<B> {
    fn settings(&self) -> Settings {
        let mut s = Settings::defaults(Mode::Queue);
        s.start = self.pipeline.start;
        s.max_attempts = self.pipeline.common.retry.attempts_max;
        s.lock_ms = self.pipeline.lock_ms;
        s.backoff = self.pipeline.common.retry.backoff();
        s
    }

    async fn run<K: Sink>(mut self, mut sink: K) -> Exit {
        let name = self.pipeline.common.name.clone();
        let from = self.pipeline.from.clone();
        if let Err(e) = self
            .backbone
            .ensure_subscription(&from, &name, self.settings())
            .await
        {
            self.metrics.fail(e.to_string());
            return Exit::Failed(e.to_string());
        }
        let mut breaker = Breaker::new(self.pipeline.common.breaker);
        let mut failures_in_a_row: u32 = 0;
        let mut lag_checked: Option<std::time::Instant> = None;
        loop {
            if *self.stop.borrow() {
                return Exit::Stopped;
            }
            if self.metrics.is_paused() {
                if nap(PAUSE_CHECK_MS, &mut self.stop).await {
                    return Exit::Stopped;
                }
                failures_in_a_row = 0;
                continue;
            }
            if let Some(start) = self.metrics.take_replay() {
                // Between batches nothing is in flight: start the subscription over.
                match self
                    .backbone
                    .restart_subscription(&from, &name, self.settings(), start)
                    .await
                {
                    Ok(()) => tracing::info!(pipeline = %name, ?start, "replaying the topic"),
                    Err(e) => {
                        self.metrics.error("replay", "failed");
                        tracing::error!(pipeline = %name, error = %e, "the replay could not start");
                    }
                }
            }
            let permit = breaker.permit(now_ms());
            self.metrics.breaker(breaker.state());
            if let Permit::Rejected { retry_at_ms } = permit {
                let wait = retry_at_ms.saturating_sub(now_ms()).max(1) as u64;
                if nap(wait, &mut self.stop).await {
                    return Exit::Stopped;
                }
                continue;
            }
            // While half-open, one probe event at a time.
            let max = if matches!(breaker.state(), crate::breaker::State::HalfOpen) {
                1
            } else {
                self.pipeline.common.batch_records_max
            };
            let polled = tokio::select! {
                p = self.backbone.poll(&from, &name, max, SINK_POLL_WAIT_MS) => p,
                _ = self.stop.changed() => return Exit::Stopped,
            };
            let deliveries = match polled {
                Ok(d) => d,
                Err(BackboneError::Unavailable(e)) => {
                    self.metrics.error("poll", "unavailable");
                    tracing::warn!(pipeline = %name, error = %e, "polling the topic failed");
                    if nap(self.pipeline.common.retry.initial_ms, &mut self.stop).await {
                        return Exit::Stopped;
                    }
                    continue;
                }
                Err(e) => {
                    self.metrics.fail(e.to_string());
                    return Exit::Failed(e.to_string());
                }
            };
            // The lag, for health: whenever idle (an empty poll), else at most once a second.
            if deliveries.is_empty()
                || lag_checked.is_none_or(|t| t.elapsed() >= LAG_CHECK_INTERVAL)
            {
                lag_checked = Some(std::time::Instant::now());
                if let Some(lag) = self.backbone.subscription_lag(&from, &name).await {
                    self.metrics.set_lag(lag);
                }
            }
            if deliveries.is_empty() {
                continue;
            }
            self.metrics.received(deliveries.len());
            let failed = self.deliver(&mut sink, &mut breaker, deliveries).await;
            failures_in_a_row = if failed == 0 {
                0
            } else {
                failures_in_a_row.saturating_add(failed)
            };
            if let Some(limit) = self.pipeline.pause_after_failures
                && failures_in_a_row >= limit
            {
                tracing::error!(pipeline = %name, failures = failures_in_a_row,
                    "sink keeps failing; pausing the pipeline");
                self.metrics.set_paused(true);
            }
        }
    }

    /// Transforms and writes one polled batch, then acks, nacks or dead-letters each event.
    /// Returns how many deliveries failed.
    async fn deliver<K: Sink>(
        &mut self,
        sink: &mut K,
        breaker: &mut Breaker,
        deliveries: Vec<gearbox_core::broker::Delivery>,
    ) -> u32 {
        let name = self.pipeline.common.name.clone();
        let from = self.pipeline.from.clone();
        let mut records: Vec<SinkRecord> = Vec::new();
        // For each delivery: the range of its records in `records`.
        let mut spans: Vec<(u32, u64, std::ops::Range<usize>)> = Vec::new();
        let mut acks: Vec<(u32, u64)> = Vec::new();
        let mut rejects: Vec<((u32, u64), String)> = Vec::new();
        for d in &deliveries {
            let at = (d.stored.partition, d.stored.offset);
            match sink_records(&self.pipeline.common.transforms, &d.stored, d.attempt) {
                Err(e) => {
                    self.metrics.error("transform", "rejected");
                    rejects.push((at, e));
                }
                Ok(values) if values.is_empty() => {
                    self.metrics.discarded(1);
                    acks.push(at);
                }
                Ok(values) => {
                    let start = records.len();
                    records.extend(values);
                    spans.push((at.0, at.1, start..records.len()));
                }
            }
        }
        if let Some(limiter) = &self.limiter
            && !records.is_empty()
        {
            limiter.acquire().await;
        }
        let started = std::time::Instant::now();
        let results = if records.is_empty() {
            Vec::new()
        } else {
            sink.write(&records).await
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let lineage = self.backbone.lineage().filter(|l| l.enabled());
        let by_position: std::collections::HashMap<(u32, u64), &gearbox_core::broker::Delivery> =
            if lineage.is_some() {
                deliveries
                    .iter()
                    .map(|d| ((d.stored.partition, d.stored.offset), d))
                    .collect()
            } else {
                std::collections::HashMap::new()
            };
        let mut hops = Vec::new();
        let mut retries: Vec<((u32, u64), Option<u64>, String)> = Vec::new();
        let mut failed = 0;
        for (partition, offset, span) in spans {
            let mut outcome: Result<(), SinkError> = Ok(());
            for i in span {
                let r = results.get(i).cloned().unwrap_or_else(|| {
                    Err(SinkError::Transient {
                        message: "the sink returned no result for this record".into(),
                        retry_after_ms: None,
                    })
                });
                // A permanent failure of any output outranks a transient one.
                match (&outcome, r) {
                    (_, Ok(())) => {}
                    (Err(SinkError::Permanent { .. }), Err(_)) => {}
                    (_, Err(e)) => outcome = Err(e),
                }
            }
            let at = (partition, offset);
            if let Some(d) = by_position.get(&at) {
                let (kind, result, detail) = match &outcome {
                    Ok(()) => (HopKind::Written, "ok", None),
                    Err(SinkError::Permanent { message }) => {
                        (HopKind::WriteFailed, "permanent", Some(message.clone()))
                    }
                    Err(SinkError::Transient { message, .. }) => {
                        (HopKind::WriteFailed, "transient", Some(message.clone()))
                    }
                };
                let mut h = Hop::event(kind, now_ms(), &d.stored.event.id)
                    .attributes(&d.stored.event)
                    .position(&from, partition, offset);
                h.pipeline = Some(name.clone());
                h.attempt = Some(d.attempt);
                h.latency_ms = Some(latency_ms);
                h.result = Some(result.into());
                h.detail = detail;
                hops.push(h);
            }
            match outcome {
                Ok(()) => {
                    breaker.success(now_ms());
                    acks.push(at);
                }
                Err(SinkError::Permanent { message }) => {
                    // The gear answered: it is up, the event is bad.
                    breaker.success(now_ms());
                    self.metrics.error("write", "permanent");
                    rejects.push((at, message));
                    failed += 1;
                }
                Err(SinkError::Transient {
                    message,
                    retry_after_ms,
                }) => {
                    breaker.failure(now_ms());
                    self.metrics.error("write", "transient");
                    failed += 1;
                    retries.push((at, retry_after_ms, message));
                }
            }
        }
        if let Some(lineage) = &lineage {
            lineage.record(hops);
        }
        self.metrics.breaker(breaker.state());
        let sent = acks.len();
        if !acks.is_empty()
            && let Err(e) = self.backbone.ack(&from, &name, acks).await
        {
            // Unacked events are redelivered after their lock expires; the sink is idempotent
            // on the record id.
            self.metrics.error("ack", "unavailable");
            tracing::warn!(pipeline = %name, error = %e, "acking delivered events failed");
        }
        self.metrics.sent(sent, now_ms());
        for (at, error) in rejects {
            self.metrics.dead_lettered(1);
            if let Err(e) = self
                .backbone
                .nack(&from, &name, vec![at], None, true, error)
                .await
            {
                self.metrics.error("dead_letter", "unavailable");
                tracing::warn!(pipeline = %name, error = %e, "dead-lettering failed");
            }
        }
        let attempts_max = self.pipeline.common.retry.attempts_max;
        for (at, retry_after_ms, error) in retries {
            let attempt = deliveries
                .iter()
                .find(|d| (d.stored.partition, d.stored.offset) == at)
                .map_or(1, |d| d.attempt);
            if attempt >= attempts_max {
                self.metrics.dead_lettered(1);
            } else {
                self.metrics.retry();
            }
            // The schedule's delay, stretched by the gear's Retry-After and, while the breaker
            // is open, until it half-opens.
            let open_until = match breaker.state() {
                crate::breaker::State::Open { until_ms } => {
                    until_ms.saturating_sub(now_ms()).max(0) as u64
                }
                _ => 0,
            };
            let scheduled = self.pipeline.common.retry.delay_ms(attempt, jitter());
            let retry_in = Some(
                scheduled
                    .max(retry_after_ms.unwrap_or(0))
                    .max(open_until)
                    .min(crate::retry::RETRY_DELAY_MS_MAX),
            );
            if let Err(e) = self
                .backbone
                .nack(&from, &name, vec![at], retry_in, false, error)
                .await
            {
                self.metrics.error("nack", "unavailable");
                tracing::warn!(pipeline = %name, error = %e, "nacking failed");
            }
        }
        failed
    }
}

struct TxSinkTask<B> {
    backbone: Arc<B>,
    /// The `lag_events` gauge: the topic's end minus the positions, after each batch.
    lag: Arc<std::sync::atomic::AtomicU64>,
    pipeline: SinkPipeline,
    metrics: Arc<ComponentMetrics>,
    stop: watch::Receiver<bool>,
    limiter: Option<RateLimiter>,
}

/// Events read for a transactional sink, with each one's transform outputs as sink records
/// (none: filtered out; an error: rejected by the transforms).
struct Prepared {
    read: crate::backbone::Read,
    outputs: Vec<Result<Vec<SinkRecord>, String>>,
}

impl Prepared {
    fn new(transforms: &Chain, read: crate::backbone::Read) -> Prepared {
        let outputs = read
            .events
            .iter()
            .map(|e| sink_records(transforms, e, 1))
            .collect();
        Prepared { read, outputs }
    }
}

/// A read running ahead of the batch being applied; aborted if the pipeline stops first.
struct PrefetchGuard(tokio::task::JoinHandle<Result<Prepared, BackboneError>>);

impl Drop for PrefetchGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for PrefetchGuard {
    type Output = Result<Result<Prepared, BackboneError>, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// A call to a [`TransactionalSink`], retried as a whole.
#[derive(Clone, Copy)]
enum Call<'a> {
    Positions,
    Apply(&'a [SinkRecord], &'a [(u32, u64)]),
}

enum Answer {
    Positions(Vec<(u32, u64)>),
    Applied,
}

impl Call<'_> {
    async fn run<K: TransactionalSink>(self, sink: &mut K) -> Result<Answer, SinkError> {
        match self {
            Call::Positions => sink.positions().await.map(Answer::Positions),
            Call::Apply(records, at) => sink.apply(records, at).await.map(|()| Answer::Applied),
        }
    }
}

/// Why a transactional sink step ended early.
enum TxHalt {
    Stopped,
    Failed(String),
}

impl<B: Backbone> TxSinkTask<B> {
    async fn run<K: TransactionalSink>(mut self, mut sink: K) -> Exit {
        match self.serve(&mut sink).await {
            Ok(()) | Err(TxHalt::Stopped) => Exit::Stopped,
            Err(TxHalt::Failed(e)) => {
                self.metrics.fail(e.clone());
                Exit::Failed(e)
            }
        }
    }

    async fn serve<K: TransactionalSink>(&mut self, sink: &mut K) -> Result<(), TxHalt> {
        let name = self.pipeline.common.name.clone();
        let from = self.pipeline.from.clone();
        let mut breaker = Breaker::new(self.pipeline.common.breaker);
        let Answer::Positions(stored) = self
            .gear("positions", &mut breaker, sink, Call::Positions)
            .await?
        else {
            unreachable!("a positions call answers positions")
        };
        let start = self
            .backbone
            .start_offsets(&from, self.pipeline.start)
            .await
            .map_err(|e| TxHalt::Failed(format!("start: {e}")))?;
        let mut positions: BTreeMap<u32, u64> = start.into_iter().collect();
        let fresh = stored.is_empty();
        let mut prefetched: Option<PrefetchGuard> = None;
        let mut round: usize = 0;
        positions.extend(stored);
        if fresh {
            // Store where `start` put us before reading, so a restart resumes there and not at
            // a `latest` that has moved on.
            let at: Vec<(u32, u64)> = positions.iter().map(|(&p, &o)| (p, o)).collect();
            self.gear("apply", &mut breaker, sink, Call::Apply(&[], &at))
                .await?;
        }
        loop {
            if *self.stop.borrow() {
                return Err(TxHalt::Stopped);
            }
            if self.metrics.is_paused() {
                if nap(PAUSE_CHECK_MS, &mut self.stop).await {
                    return Err(TxHalt::Stopped);
                }
                continue;
            }
            if let Some(start) = self.metrics.take_replay() {
                // Rewind: the read ahead is dropped, and the positions at the gear move back
                // with an empty apply, so a restart resumes the replay too.
                match self.backbone.start_offsets(&from, start).await {
                    Ok(offsets) => {
                        prefetched = None;
                        positions = offsets.into_iter().collect();
                        let at: Vec<(u32, u64)> = positions.iter().map(|(&p, &o)| (p, o)).collect();
                        self.gear("apply", &mut breaker, sink, Call::Apply(&[], &at))
                            .await?;
                        tracing::info!(pipeline = %name, ?start, "replaying the topic");
                    }
                    Err(e) => {
                        self.metrics.error("replay", "failed");
                        tracing::error!(pipeline = %name, error = %e, "the replay could not start");
                    }
                }
            }
            // Each read starts at the next partition, so that with more partitions than room in a
            // batch none waits behind the others for ever.
            round = round.wrapping_add(1);
            let mut from_positions: Vec<(u32, u64)> =
                positions.iter().map(|(&p, &o)| (p, o)).collect();
            let turn = round % from_positions.len().max(1);
            from_positions.rotate_left(turn);
            let max = self.pipeline.common.batch_records_max;
            let prepared = match prefetched.take() {
                // The read the previous batch started while it was being applied, from the
                // positions that batch stored, already transformed.
                Some(handle) => match handle.await {
                    Ok(Ok(p)) if !p.read.events.is_empty() || !p.read.skipped.is_empty() => p,
                    _ => continue,
                },
                None => {
                    let read = tokio::select! {
                        r = self.backbone.read(&from, from_positions, max, SINK_POLL_WAIT_MS) => r,
                        _ = self.stop.changed() => return Err(TxHalt::Stopped),
                    };
                    match read {
                        Ok(read) => Prepared::new(&self.pipeline.common.transforms, read),
                        Err(BackboneError::Unavailable(e)) => {
                            self.metrics.error("read", "unavailable");
                            tracing::warn!(pipeline = %name, error = %e, "reading the topic failed");
                            if nap(self.pipeline.common.retry.initial_ms, &mut self.stop).await {
                                return Err(TxHalt::Stopped);
                            }
                            continue;
                        }
                        Err(e) => return Err(TxHalt::Failed(format!("read: {e}"))),
                    }
                }
            };
            let Prepared { read, outputs } = prepared;
            let mut next = positions.clone();
            for &(partition, gap_from, gap_to) in &read.skipped {
                self.metrics.error("read", "retention_gap");
                tracing::error!(pipeline = %name, partition, from = gap_from, to = gap_to,
                    "retention deleted events this sink had not applied; they are skipped");
                next.insert(partition, gap_to);
            }
            if read.events.is_empty() && read.skipped.is_empty() {
                // Nothing after the positions: caught up. A sink that batches writes (on a time
                // policy) gets the chance to commit what it holds.
                self.lag.store(0, std::sync::atomic::Ordering::Relaxed);
                self.metrics.set_lag(0);
                if let Err(e) = sink.idle().await {
                    self.metrics.error("idle", e.kind());
                    tracing::warn!(pipeline = %name, error = %e, "the sink's idle flush failed; it is tried again");
                }
                continue;
            }
            self.metrics.received(read.events.len());
            let mut records: Vec<SinkRecord> = Vec::new();
            let mut dead: Vec<(&StoredEvent, String)> = Vec::new();
            for (e, output) in read.events.iter().zip(outputs) {
                next.insert(e.partition, e.offset + 1);
                match output {
                    Err(error) => {
                        self.metrics.error("transform", "rejected");
                        dead.push((e, error));
                    }
                    Ok(rs) if rs.is_empty() => self.metrics.discarded(1),
                    Ok(rs) => match rs.iter().find_map(|r| sink.check(r).err()) {
                        Some(error) => {
                            self.metrics.error("check", "permanent");
                            dead.push((e, error));
                        }
                        None => records.extend(rs),
                    },
                }
            }
            self.dead_letter(&dead).await?;
            let at: Vec<(u32, u64)> = next.iter().map(|(&p, &o)| (p, o)).collect();
            // Read the next batch while this one is applied: it starts where this one ends,
            // whatever happens to it (it is retried until it commits, or narrowed down and
            // committed event by event). At most one read ahead.
            prefetched = Some(PrefetchGuard(tokio::spawn({
                let mut at = at.clone();
                let turn = (round + 1) % at.len().max(1);
                at.rotate_left(turn);
                let (backbone, from) = (self.backbone.clone(), from.clone());
                let transforms = self.pipeline.common.transforms.clone();
                async move {
                    let read = backbone.read(&from, at, max, 0).await?;
                    tokio::task::spawn_blocking(move || Prepared::new(&transforms, read))
                        .await
                        .map_err(|e| BackboneError::Unavailable(format!("transform task: {e}")))
                }
            })));
            if let Some(limiter) = &self.limiter
                && !records.is_empty()
            {
                tokio::select! {
                    () = limiter.acquire() => {}
                    _ = self.stop.changed() => return Err(TxHalt::Stopped),
                }
            }
            let started = std::time::Instant::now();
            match self.apply(sink, &mut breaker, &records, &at).await? {
                Ok(()) => self.record_written(&records, &read.events, started),
                Err(message) => {
                    // Permanent: find the record(s) that cause it, one event at a time, each
                    // committed with its own position so none is applied twice.
                    tracing::warn!(pipeline = %name, error = %message,
                        "a batch failed permanently; applying it one event at a time");
                    let mut done = positions.clone();
                    let mut i = 0;
                    while i < records.len() {
                        let (p, o) = (records[i].partition, records[i].offset);
                        let j = records[i..]
                            .iter()
                            .position(|r| (r.partition, r.offset) != (p, o))
                            .map_or(records.len(), |k| i + k);
                        done.insert(p, o + 1);
                        let at: Vec<(u32, u64)> = done.iter().map(|(&p, &o)| (p, o)).collect();
                        let started = std::time::Instant::now();
                        if let Err(error) =
                            self.apply(sink, &mut breaker, &records[i..j], &at).await?
                        {
                            self.metrics.error("write", "permanent");
                            let event = read
                                .events
                                .iter()
                                .find(|e| (e.partition, e.offset) == (p, o))
                                .expect("every record comes from a read event");
                            self.dead_letter(&[(event, error)]).await?;
                            self.gear("apply", &mut breaker, sink, Call::Apply(&[], &at))
                                .await?;
                        } else {
                            self.metrics.sent(j - i, now_ms());
                            self.record_written(&records[i..j], &read.events, started);
                        }
                        i = j;
                    }
                    let at: Vec<(u32, u64)> = next.iter().map(|(&p, &o)| (p, o)).collect();
                    self.gear("apply", &mut breaker, sink, Call::Apply(&[], &at))
                        .await?;
                    positions = next;
                    self.measure_lag(&positions).await;
                    continue;
                }
            }
            self.metrics.sent(records.len(), now_ms());
            positions = next;
            self.measure_lag(&positions).await;
        }
    }

    /// Lineage: the events behind `records` were applied (in one transaction that began at
    /// `started`).
    fn record_written(
        &self,
        records: &[SinkRecord],
        events: &[StoredEvent],
        started: std::time::Instant,
    ) {
        let Some(lineage) = self.backbone.lineage().filter(|l| l.enabled()) else {
            return;
        };
        let latency_ms = started.elapsed().as_millis() as u64;
        let now = now_ms();
        let mut hops: Vec<Hop> = Vec::new();
        // Records come from the events in order: one forward walk finds each record's event.
        let mut next = 0;
        let mut last = None;
        for r in records {
            let at = (r.partition, r.offset);
            if last == Some(at) {
                continue;
            }
            last = Some(at);
            let Some(k) = events[next..]
                .iter()
                .position(|e| (e.partition, e.offset) == at)
            else {
                continue;
            };
            let e = &events[next + k];
            next += k + 1;
            let mut h = Hop::event(HopKind::Written, now, &e.event.id)
                .attributes(&e.event)
                .position(&self.pipeline.from, e.partition, e.offset);
            h.pipeline = Some(self.pipeline.common.name.clone());
            h.latency_ms = Some(latency_ms);
            h.result = Some("ok".into());
            hops.push(h);
        }
        lineage.record(hops);
    }

    /// Sets the `lag_events` gauge from the topic's end and `positions` (best effort: a failed
    /// lookup leaves the last value).
    async fn measure_lag(&self, positions: &BTreeMap<u32, u64>) {
        if let Ok(ends) = self
            .backbone
            .start_offsets(&self.pipeline.from, Start::Latest)
            .await
        {
            let lag: u64 = ends
                .iter()
                .map(|(p, end)| end.saturating_sub(positions.get(p).copied().unwrap_or(0)))
                .sum();
            self.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
            self.metrics.set_lag(lag);
        }
    }

    /// Applies a batch, retrying transient failures with backoff (never giving the batch up:
    /// order per partition must hold). `Ok(Err(message))` is a permanent failure.
    async fn apply<K: TransactionalSink>(
        &mut self,
        sink: &mut K,
        breaker: &mut Breaker,
        records: &[SinkRecord],
        at: &[(u32, u64)],
    ) -> Result<Result<(), String>, TxHalt> {
        let result = self
            .gear_keep_permanent("write", breaker, sink, Call::Apply(records, at))
            .await?;
        Ok(result.map(drop))
    }

    /// Runs a gear call until it succeeds or fails permanently (then the pipeline fails).
    async fn gear<K: TransactionalSink>(
        &mut self,
        stage: &str,
        breaker: &mut Breaker,
        sink: &mut K,
        call: Call<'_>,
    ) -> Result<Answer, TxHalt> {
        match self.gear_keep_permanent(stage, breaker, sink, call).await? {
            Ok(v) => Ok(v),
            Err(message) => Err(TxHalt::Failed(format!("{stage}: {message}"))),
        }
    }

    /// Runs a gear call, retrying transient failures with the pipeline's backoff (stretched by
    /// the gear's `Retry-After` and the breaker), forever: an ordered sink cannot skip a batch.
    /// Past `pause_after_failures` consecutive failures the pipeline pauses itself.
    async fn gear_keep_permanent<K: TransactionalSink>(
        &mut self,
        stage: &str,
        breaker: &mut Breaker,
        sink: &mut K,
        call: Call<'_>,
    ) -> Result<Result<Answer, String>, TxHalt> {
        let name = self.pipeline.common.name.clone();
        let mut attempt: u32 = 0;
        loop {
            if let Permit::Rejected { retry_at_ms } = breaker.permit(now_ms()) {
                self.metrics.breaker(breaker.state());
                let wait = retry_at_ms.saturating_sub(now_ms()).max(1) as u64;
                if nap(wait, &mut self.stop).await {
                    return Err(TxHalt::Stopped);
                }
                continue;
            }
            let outcome = tokio::select! {
                r = call.run(sink) => r,
                _ = self.stop.changed() => return Err(TxHalt::Stopped),
            };
            match outcome {
                Ok(v) => {
                    breaker.success(now_ms());
                    self.metrics.breaker(breaker.state());
                    return Ok(Ok(v));
                }
                Err(SinkError::Permanent { message }) => {
                    breaker.success(now_ms());
                    self.metrics.breaker(breaker.state());
                    return Ok(Err(message));
                }
                Err(SinkError::Transient {
                    message,
                    retry_after_ms,
                }) => {
                    breaker.failure(now_ms());
                    self.metrics.breaker(breaker.state());
                    self.metrics.error(stage, "transient");
                    self.metrics.retry();
                    attempt = attempt.saturating_add(1);
                    if let Some(limit) = self.pipeline.pause_after_failures
                        && attempt >= limit
                    {
                        tracing::error!(pipeline = %name, failures = attempt, error = %message,
                            "sink keeps failing; pausing the pipeline");
                        self.metrics.set_paused(true);
                        while self.metrics.is_paused() {
                            if nap(PAUSE_CHECK_MS, &mut self.stop).await {
                                return Err(TxHalt::Stopped);
                            }
                        }
                        attempt = 0;
                        continue;
                    }
                    let wait = self
                        .pipeline
                        .common
                        .retry
                        .delay_ms(attempt, jitter())
                        .max(retry_after_ms.unwrap_or(0))
                        .min(crate::retry::RETRY_DELAY_MS_MAX);
                    tracing::warn!(pipeline = %name, stage, error = %message, wait_ms = wait,
                        "sink failed; retrying");
                    if nap(wait, &mut self.stop).await {
                        return Err(TxHalt::Stopped);
                    }
                }
            }
        }
    }

    /// Dead-letters events to the topic's DLQ, retrying while the backbone is unavailable.
    async fn dead_letter(&mut self, dead: &[(&StoredEvent, String)]) -> Result<(), TxHalt> {
        if dead.is_empty() {
            return Ok(());
        }
        let name = self.pipeline.common.name.clone();
        let mut events: Vec<CloudEvent> = dead
            .iter()
            .map(
                |(e, error)| match self::dead(&name, &e.event.to_json(), "sink", error) {
                    Output::Dead { event, .. } => event,
                    Output::Event { .. } => unreachable!("dead() builds a dead letter"),
                },
            )
            .collect();
        loop {
            match self
                .backbone
                .publish_dead(&self.pipeline.from, events.clone())
                .await
            {
                Ok(()) => {
                    self.metrics.dead_lettered(events.len());
                    return Ok(());
                }
                // An event near the size limit that its `dlq*` attributes pushed over it: its
                // dead letter keeps the attributes, not the data (as a source's does).
                Err(BackboneError::Rejected { index, .. })
                    if events.get(index).is_some_and(|e| e.data.is_some()) =>
                {
                    events[index] = strip_data(events[index].clone());
                }
                Err(BackboneError::Unavailable(e)) => {
                    self.metrics.error("dead_letter", "unavailable");
                    tracing::warn!(pipeline = %name, error = %e, "dead-lettering failed; retrying");
                    if nap(self.pipeline.common.retry.initial_ms, &mut self.stop).await {
                        return Err(TxHalt::Stopped);
                    }
                }
                Err(e) => return Err(TxHalt::Failed(format!("dead_letter: {e}"))),
            }
        }
    }
}

/// A topic event as sink records: one per transform output (none when the transforms filtered
/// it out). Each keeps a stable id: the event id, with `#n` for the n-th of several outputs.
///
/// # Errors
/// The transforms rejected the event (the message says why).
fn sink_records(
    transforms: &Chain,
    stored: &StoredEvent,
    attempt: u32,
) -> Result<Vec<SinkRecord>, String> {
    let values = transforms
        .run(stored.event.to_json())
        .map_err(|e| format!("transform: {e}"))?;
    let several = values.len() > 1;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| SinkRecord {
            id: if several {
                format!("{}#{i}", stored.event.id)
            } else {
                stored.event.id.clone()
            },
            value,
            attempt,
            partition: stored.partition,
            offset: stored.offset,
            time_ms: event_time_ms(&stored.event),
            traceparent: stored.event.extensions.get("traceparent").cloned(),
        })
        .collect())
}

fn event_time_ms(e: &CloudEvent) -> Option<i64> {
    e.time
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
}
