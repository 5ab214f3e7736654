//! Gearbox's HTTP API: routes, request parsing, replies. The contract is `docs/api.md`.
//!
//! Handlers parse and validate, then call the [`Broker`] on a blocking thread (its calls may
//! wait for `fdatasync`). Only this crate knows HTTP and JSON DTOs.
//!
//! Limits: a request body is at most [`BODY_BYTES_MAX`]; a batch at most [`BATCH_EVENTS_MAX`]
//! events; a long poll waits at most [`POLL_WAIT_MS_MAX`]; a read or poll returns at most
//! `READ_EVENTS_MAX` events.

mod dashboard;
pub mod error;
mod ingest;
mod lineage;
mod metrics;
mod pipelines;
mod registry;

use crate::error::ApiError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gearbox_core::broker::{
    Broker, BrokerError, Delivery, READ_EVENTS_MAX, StoredEvent, SubscriptionInfo, TopicInfo,
};
use gearbox_core::event::{CloudEvent, is_json_type, media_essence};
use gearbox_core::subscription::Settings;
use gearbox_log::Retention;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 16 << 20;
/// Most events in one batched request.
pub const BATCH_EVENTS_MAX: usize = 10_000;
/// Default most publish requests handled at once; more are answered `429 overloaded` at once,
/// before their bodies are read, so memory stays bounded (this times `BODY_BYTES_MAX`).
pub const PUBLISH_IN_FLIGHT_MAX_DEFAULT: usize = 32;
/// Longest a poll waits.
pub const POLL_WAIT_MS_MAX: u64 = gearbox_connect::backbone::POLL_WAIT_MS_MAX;
/// Default number of events a read or poll returns.
const EVENTS_DEFAULT: usize = 100;

/// Shared state of the HTTP server.
pub struct AppState {
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
    publish_in_flight_max: usize,
    pipelines: Arc<gearbox_connect::metrics::Registry>,
    hooks: HashMap<String, gearbox_connectors::webhook::WebhookEndpoint>,
    /// What `/metrics` encodes.
    metrics: prometheus_client::registry::Registry,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("publish_in_flight_max", &self.publish_in_flight_max)
            .finish_non_exhaustive()
    }
}

/// The collectors behind `/metrics`.
fn metrics_registry(
    broker: &Arc<Broker>,
    pipelines: &Arc<gearbox_connect::metrics::Registry>,
) -> prometheus_client::registry::Registry {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(gearbox_connect::metrics::Collector(
        pipelines.clone(),
    )));
    r.register_collector(Box::new(metrics::BrokerCollector(broker.clone())));
    r
}

impl AppState {
    /// State over `broker`; long polls end early once `shutdown` turns true; at most
    /// `publish_in_flight_max` publish requests are handled at once.
    #[must_use]
    pub fn new(
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        publish_in_flight_max: usize,
    ) -> Arc<AppState> {
        let pipelines = Arc::default();
        Arc::new(AppState {
            metrics: metrics_registry(&broker, &pipelines),
            broker,
            shutdown,
            publish_in_flight_max: publish_in_flight_max.max(1),
            pipelines,
            hooks: HashMap::new(),
        })
    }

    /// State that also serves the pipelines: their metrics and health, and their webhook
    /// receivers (each on its own path under `/hooks/`).
    #[must_use]
    pub fn with_pipelines(
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        publish_in_flight_max: usize,
        pipelines: Arc<gearbox_connect::metrics::Registry>,
        hooks: Vec<gearbox_connectors::webhook::WebhookEndpoint>,
    ) -> Arc<AppState> {
        Self::with_collectors(
            broker,
            shutdown,
            publish_in_flight_max,
            pipelines,
            hooks,
            Vec::new(),
        )
    }

    /// [`AppState::with_pipelines`], with more collectors behind `/metrics` (the Kafka
    /// listener's, which this crate does not know).
    #[must_use]
    pub fn with_collectors(
        broker: Arc<Broker>,
        shutdown: watch::Receiver<bool>,
        publish_in_flight_max: usize,
        pipelines: Arc<gearbox_connect::metrics::Registry>,
        hooks: Vec<gearbox_connectors::webhook::WebhookEndpoint>,
        collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Arc<AppState> {
        let mut metrics = metrics_registry(&broker, &pipelines);
        for c in collectors {
            metrics.register_collector(c);
        }
        Arc::new(AppState {
            metrics,
            broker,
            shutdown,
            publish_in_flight_max: publish_in_flight_max.max(1),
            pipelines,
            hooks: hooks
                .into_iter()
                .map(|h| (h.path().to_string(), h))
                .collect(),
        })
    }
}

type Shared = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let sub = "/v1/topics/{topic}/subscriptions/{name}";
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(|| async { axum::Json(json!({"status": "ready"})) }),
        )
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route(
            "/v1/topics/{topic}",
            get(describe_topic).delete(delete_topic),
        )
        .route(
            "/v1/topics/{topic}/events",
            post(publish).route_layer(
                tower::ServiceBuilder::new()
                    .layer(axum::error_handling::HandleErrorLayer::new(
                        |_: tower::BoxError| async {
                            ApiError::new("overloaded", "too many publish requests in flight")
                                .hint("retry after a short backoff")
                        },
                    ))
                    .load_shed()
                    .concurrency_limit(state.publish_in_flight_max),
            ),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/events",
            get(read_events),
        )
        .route("/v1/topics/{topic}/subscriptions", get(list_subscriptions))
        .route(
            sub,
            get(get_subscription)
                .put(put_subscription)
                .delete(delete_subscription),
        )
        .route(&format!("{sub}/poll"), post(poll))
        .route(&format!("{sub}/ack"), post(ack))
        .route(&format!("{sub}/nack"), post(nack))
        .route(&format!("{sub}/commit"), post(commit))
        .route("/v1/topics/{topic}/dlq", get(list_dlq))
        .route("/v1/topics/{topic}/dlq/redrive", post(redrive))
        .route("/v1/pipelines", get(pipelines::list))
        .route("/v1/pipelines/{name}", get(pipelines::get))
        .route("/v1/pipelines/{name}/pause", post(pipelines::pause))
        .route("/v1/pipelines/{name}/resume", post(pipelines::resume))
        .route(
            "/v1/pipelines/{name}/runs",
            get(pipelines::runs).post(pipelines::trigger),
        )
        .route("/v1/pipelines/{name}/replay", post(pipelines::replay))
        .route("/metrics", get(pipelines::metrics))
        .route("/v1/events/{id}/trace", get(lineage::trace))
        .route("/v1/traces", get(lineage::traces))
        .route("/hooks/{*path}", post(pipelines::hook))
        .route(
            "/v1/topics/{topic}/schema-policy",
            get(registry::get_policy).put(registry::put_policy),
        )
        .nest("/registry", registry::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::new("route_not_found", "no such route").field("path") })
        .method_not_allowed_fallback(|| async {
            ApiError::new("method_not_allowed", "this route does not take that method")
        })
        // Bodies are limited by `body()` below with our own error; lift axum's default.
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// `axum::extract::Path`, with rejections (say, a name that is not UTF-8) in the API's shape.
#[derive(Debug)]
struct Path<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::new("invalid_argument", e.body_text()).field("path"))
    }
}

/// `axum::extract::Query`, with rejections in the API's shape.
#[derive(Debug)]
struct Query<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e| ApiError::new("invalid_argument", e.body_text()).field("query"))
    }
}

/// Runs a blocking broker call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))?
        .map_err(ApiError::from)
}

fn body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) => ApiError::new(
            "body_too_large",
            format!("the body exceeds {BODY_BYTES_MAX} bytes"),
        )
        .field("body"),
        other => ApiError::new("malformed_json", other.body_text()),
    })
}

/// Refuses a body whose `Content-Type` says it is not JSON. Absent is fine, and so is
/// `application/x-www-form-urlencoded`, which `curl -d` sends unless told otherwise.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = media_essence(ct.to_str().unwrap_or(""));
    if essence == "application/json"
        || essence.ends_with("+json")
        || essence == "application/x-www-form-urlencoded"
    {
        return Ok(());
    }
    Err(ApiError::new(
        "unsupported_media_type",
        format!("this endpoint takes application/json, not {essence}"),
    )
    .field("content-type"))
}

/// A JSON request body: content type checked, size checked, parsed.
fn json_request(
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    require_json(headers)?;
    json_body(&body(raw)?)
}

fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new("malformed_json", format!("the body is not valid JSON: {e}"))
            .field("body")
            .hint(format!("line {}, column {}", e.line(), e.column()))
    })
}

fn field_u64(v: &Value, name: &str) -> Result<Option<u64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or_else(|| {
            ApiError::new(
                "malformed_json",
                format!("`{name}` must be a non-negative integer"),
            )
            .field(name)
        }),
    }
}

fn ok(status: StatusCode, value: Value) -> ApiResult {
    Ok((status, axum::Json(value)).into_response())
}

fn topic_json(t: &TopicInfo) -> Value {
    json!({
        "name": t.name,
        "partitions": t.partitions,
        "retention": {"ms": t.retention.ms_max, "bytes": t.retention.bytes_max},
        "partition_offsets": t.offsets.iter().map(|o| json!({
            "partition": o.partition, "log_start_offset": o.log_start_offset, "high_watermark": o.high_watermark
        })).collect::<Vec<_>>(),
    })
}

async fn list_topics(State(s): Shared) -> ApiResult {
    let topics = s.broker.topics();
    ok(
        StatusCode::OK,
        json!({"topics": topics.iter().map(topic_json).collect::<Vec<_>>()}),
    )
}

async fn create_topic(
    State(s): Shared,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let v = json_request(&headers, raw)?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::new("malformed_json", "`name` is required and must be a string").field("name")
        })?
        .to_string();
    let partitions = field_u64(&v, "partitions")?.unwrap_or(1);
    let partitions = u32::try_from(partitions).map_err(|_| {
        ApiError::new("invalid_argument", "`partitions` is too large").field("partitions")
    })?;
    let retention = match v.get("retention") {
        None | Some(Value::Null) => Retention::FOREVER,
        Some(r @ Value::Object(_)) => Retention {
            bytes_max: field_u64(r, "bytes")?,
            ms_max: field_u64(r, "ms")?,
        },
        Some(_) => {
            return Err(
                ApiError::new("malformed_json", "`retention` must be an object").field("retention"),
            );
        }
    };
    let broker = s.broker.clone();
    let info = blocking(move || broker.create_topic(&name, partitions, retention)).await?;
    ok(StatusCode::CREATED, topic_json(&info))
}

async fn describe_topic(State(s): Shared, Path(topic): Path<String>) -> ApiResult {
    ok(
        StatusCode::OK,
        topic_json(&s.broker.describe_topic(&topic)?),
    )
}

async fn delete_topic(State(s): Shared, Path(topic): Path<String>) -> ApiResult {
    let broker = s.broker.clone();
    blocking(move || broker.delete_topic(&topic)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Which CloudEvents HTTP mode a request uses, from its `Content-Type`.
/// Events, and each one's `data` as parsed JSON where the request carried it as JSON (so schema
/// validation need not parse it again).
/// Events and, for each, its `data` parsed as JSON where it is JSON.
pub type Parsed = (Vec<CloudEvent>, Vec<Option<Value>>);

/// Takes `data` out of a parsed event object when the event's stored data is exactly its JSON
/// serialization (see `CloudEvent::from_json`).
fn take_json_data(item: &mut Value, event: &CloudEvent) -> Option<Value> {
    let obj = item.as_object_mut()?;
    match obj.get("data") {
        None | Some(Value::Null) => None,
        Some(Value::String(_)) if !is_json_type(event.datacontenttype.as_deref()) => None,
        Some(_) => obj.remove("data"),
    }
}

/// A batch (`application/cloudevents-batch+json`) through a `Value` tree: the reference parser.
/// `ingest::parse_batch` handles the common requests faster and defers everything else here.
fn parse_batch(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let v = json_body(bytes)?;
    let Value::Array(mut items) = v else {
        return Err(
            ApiError::new("malformed_json", "a batch is a JSON array of events").field("body"),
        );
    };
    if items.is_empty() {
        return Err(ApiError::new("empty_batch", "a batch holds at least one event").field("body"));
    }
    if items.len() > BATCH_EVENTS_MAX {
        return Err(ApiError::new(
            "too_many_events",
            format!(
                "a batch holds at most {BATCH_EVENTS_MAX} events; this one has {}",
                items.len()
            ),
        )
        .field("body"));
    }
    let mut events = Vec::with_capacity(items.len());
    let mut data = Vec::with_capacity(items.len());
    for (i, item) in items.iter_mut().enumerate() {
        if !item.is_object() {
            return Err(
                ApiError::new("malformed_json", format!("event {i} is not a JSON object"))
                    .field(format!("events[{i}]")),
            );
        }
        let event = CloudEvent::from_json(item).map_err(|e| {
            ApiError::from_event(&e, &format!("events[{i}]."), &format!("event {i}: "))
        })?;
        data.push(take_json_data(item, &event));
        events.push(event);
    }
    Ok((events, data))
}

fn parse_events(headers: &HeaderMap, bytes: &[u8]) -> Result<Parsed, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = content_type.map(media_essence);
    match essence.as_deref() {
        Some("application/cloudevents+json") => {
            let mut v = json_body(bytes)?;
            if !v.is_object() {
                return Err(ApiError::new("malformed_json", "a structured event is a JSON object").field("body"));
            }
            let event = CloudEvent::from_json(&v).map_err(|e| ApiError::from_event(&e, "", ""))?;
            let data = take_json_data(&mut v, &event);
            Ok((vec![event], vec![data]))
        }
        Some("application/cloudevents-batch+json") => match ingest::parse_batch(bytes, BATCH_EVENTS_MAX) {
            Some(parsed) => Ok(parsed),
            None => parse_batch(bytes),
        },
        Some(ct) if ct.starts_with("application/cloudevents") => Err(ApiError::new(
            "unsupported_media_type",
            format!("{ct} is not a supported CloudEvents format; use application/cloudevents+json or application/cloudevents-batch+json"),
        )
        .field("content-type")),
        _ if headers.keys().any(|k| k.as_str().starts_with("ce-")) => {
            let pairs: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
            Ok((vec![CloudEvent::from_http_binary(pairs, content_type, bytes).map_err(|e| ApiError::from_event(&e, "", ""))?], Vec::new()))
        }
        _ => Err(ApiError::new(
            "unsupported_media_type",
            "send application/cloudevents+json, application/cloudevents-batch+json, or binary mode with ce-* headers",
        )
        .field("content-type")),
    }
}

/// A batch body through both parsers: the fast path's answer (`None` where it defers) and the
/// reference parser's. Public for differential fuzzing: wherever the fast path accepts, it must
/// give exactly what the reference parser gives.
#[doc(hidden)]
pub fn batch_parsers(bytes: &[u8]) -> (Option<Parsed>, Result<Parsed, ApiError>) {
    (
        ingest::parse_batch(bytes, BATCH_EVENTS_MAX),
        parse_batch(bytes),
    )
}

/// Parses an ingest request into events, exactly as `POST /v1/topics/{topic}/events` does.
/// Public so that the ingest parser can be fuzzed.
///
/// # Errors
/// The [`ApiError`] the endpoint would reply with.
pub fn parse_ingest(headers: &HeaderMap, bytes: &[u8]) -> Result<Vec<CloudEvent>, ApiError> {
    parse_events(headers, bytes).map(|(events, _)| events)
}

async fn publish(
    State(s): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    if *s.shutdown.borrow() {
        return Err(ApiError::new(
            "shutting_down",
            "the server is shutting down",
        ));
    }
    let bytes = body(raw)?;
    let broker = s.broker.clone();
    // Parsing runs on the blocking thread too: a large batch keeps an async worker busy for
    // milliseconds otherwise, and the events are then allocated and freed by one thread.
    tokio::task::spawn_blocking(move || {
        let (mut events, data) = parse_events(&headers, &bytes)?;
        propagate_traceparent(&headers, &mut events);
        let parsed: Vec<Option<&Value>> = data.iter().map(Option::as_ref).collect();
        let results = broker.publish_owned(&topic, events, &parsed)?;
        let results: Vec<PublishedJson<'_>> = results
            .iter()
            .map(|r| PublishedJson {
                duplicate: r.duplicate,
                id: &r.id,
                offset: r.position.offset,
                partition: r.position.partition,
            })
            .collect();
        Ok((StatusCode::CREATED, axum::Json(PublishReply { results })).into_response())
    })
    .await
    .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))?
}

/// W3C Trace Context through the HTTP binding: a request's `traceparent` header becomes the
/// `traceparent` extension (the CloudEvents distributed-tracing extension) of each event that
/// does not carry one, so the trace id travels with the event to lineage and to sinks.
fn propagate_traceparent(headers: &HeaderMap, events: &mut [CloudEvent]) {
    let Some(tp) = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
    else {
        return;
    };
    for e in events {
        e.extensions
            .entry("traceparent".into())
            .or_insert_with(|| tp.to_string());
    }
}

/// `version-traceid-parentid-flags`: `00-` 32 hex, `-` 16 hex, `-` 2 hex, lower case, and an
/// all-zero trace or parent id is invalid (W3C Trace Context §3.2).
fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// The reply to a publish, serialized straight from the results rather than through a `Value`
/// per event. The fields are in the order a `Value` object renders them (sorted by name), so
/// the bytes are what they always were.
#[derive(serde::Serialize)]
struct PublishReply<'a> {
    results: Vec<PublishedJson<'a>>,
}

/// One event's result in [`PublishReply`].
#[derive(serde::Serialize)]
struct PublishedJson<'a> {
    duplicate: bool,
    id: &'a str,
    offset: u64,
    partition: u32,
}

fn stored_json(e: &StoredEvent) -> Value {
    json!({"partition": e.partition, "offset": e.offset, "event": e.event.to_json()})
}

fn query_u64(q: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    q.get(name)
        .map(|v| {
            v.parse().map_err(|_| {
                ApiError::new(
                    "invalid_argument",
                    format!("`{name}` must be a non-negative integer"),
                )
                .field(name)
            })
        })
        .transpose()
}

async fn read_events(
    State(s): Shared,
    Path((topic, partition)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let partition: u32 = partition.parse().map_err(|_| {
        ApiError::new(
            "invalid_argument",
            "the partition must be a non-negative integer",
        )
        .field("partition")
    })?;
    let max = query_u64(&q, "max")?.map_or(EVENTS_DEFAULT, |m| m as usize);
    if max == 0 || max > READ_EVENTS_MAX {
        return Err(ApiError::new(
            "invalid_argument",
            format!("`max` must be 1 to {READ_EVENTS_MAX}"),
        )
        .field("max"));
    }
    let offset = query_u64(&q, "offset")?;
    let time = q
        .get("time")
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    ApiError::new("invalid_argument", format!("`time` is not RFC 3339: {e}"))
                        .field("time")
                })
        })
        .transpose()?;
    let broker = s.broker.clone();
    let (events, next) = blocking(move || {
        let from = match (offset, time) {
            (Some(o), _) => o,
            (None, Some(ms)) => broker.offset_for_time(&topic, partition, ms)?,
            (None, None) => broker
                .describe_topic(&topic)?
                .offsets
                .get(partition as usize)
                .map_or(0, |o| o.log_start_offset),
        };
        broker.read(&topic, partition, from, max)
    })
    .await?;
    ok(
        StatusCode::OK,
        json!({"events": events.iter().map(stored_json).collect::<Vec<_>>(), "next_offset": next}),
    )
}

fn subscription_json(info: &SubscriptionInfo) -> Value {
    let mut v = info.settings.to_json();
    v["name"] = json!(info.name);
    v["lag"] = json!(info.lag);
    v["in_flight"] = json!(info.in_flight);
    v["dlq_depth"] = json!(info.dlq_depth);
    v["positions"] = json!(info.positions);
    v
}

async fn put_subscription(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let v = json_request(&headers, raw)?;
    let settings = Settings::from_json(&v).map_err(|(field, reason)| {
        ApiError::new(
            if field == "body" {
                "malformed_json"
            } else {
                "invalid_argument"
            },
            format!("`{field}` {reason}"),
        )
        .field(field)
    })?;
    let broker = s.broker.clone();
    let (created, info) = blocking(move || {
        let created = broker.put_subscription(&topic, &name, settings)?;
        Ok((created, broker.subscription(&topic, &name)?))
    })
    .await?;
    ok(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        subscription_json(&info),
    )
}

async fn get_subscription(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
) -> ApiResult {
    ok(
        StatusCode::OK,
        subscription_json(&s.broker.subscription(&topic, &name)?),
    )
}

async fn list_subscriptions(State(s): Shared, Path(topic): Path<String>) -> ApiResult {
    let subs = s.broker.subscriptions(&topic)?;
    ok(
        StatusCode::OK,
        json!({"subscriptions": subs.iter().map(subscription_json).collect::<Vec<_>>()}),
    )
}

async fn delete_subscription(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
) -> ApiResult {
    let broker = s.broker.clone();
    blocking(move || broker.delete_subscription(&topic, &name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn delivery_json(d: &Delivery) -> Value {
    json!({"partition": d.stored.partition, "offset": d.stored.offset, "attempt": d.attempt, "event": d.stored.event.to_json()})
}

async fn poll(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let v = json_request(&headers, raw)?;
    let max = field_u64(&v, "max_events")?.map_or(EVENTS_DEFAULT, |m| m as usize);
    if max == 0 || max > READ_EVENTS_MAX {
        return Err(ApiError::new(
            "invalid_argument",
            format!("`max_events` must be 1 to {READ_EVENTS_MAX}"),
        )
        .field("max_events"));
    }
    let wait_ms = field_u64(&v, "wait_ms")?.unwrap_or(0);
    if wait_ms > POLL_WAIT_MS_MAX {
        return Err(ApiError::new(
            "invalid_argument",
            format!("`wait_ms` must be at most {POLL_WAIT_MS_MAX}"),
        )
        .field("wait_ms"));
    }
    let deliveries = gearbox_connect::backbone::long_poll(
        &s.broker,
        &topic,
        &name,
        max,
        wait_ms,
        Some(s.shutdown.clone()),
    )
    .await?;
    ok(
        StatusCode::OK,
        json!({"events": deliveries.iter().map(delivery_json).collect::<Vec<_>>()}),
    )
}

fn items(v: &Value, key: &str) -> Result<Vec<(u32, u64)>, ApiError> {
    let Some(Value::Array(list)) = v.get(key) else {
        return Err(
            ApiError::new("malformed_json", format!("`{key}` must be an array")).field(key),
        );
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let p = item
                .get("partition")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok());
            let o = item.get("offset").and_then(Value::as_u64);
            p.zip(o).ok_or_else(|| {
                ApiError::new(
                    "malformed_json",
                    "each item needs integer `partition` and `offset`",
                )
                .field(format!("{key}[{i}]"))
            })
        })
        .collect()
}

fn pairs_json(items: &[(u32, u64)]) -> Value {
    json!(
        items
            .iter()
            .map(|(p, o)| json!({"partition": p, "offset": o}))
            .collect::<Vec<_>>()
    )
}

async fn ack(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let list = items(&json_request(&headers, raw)?, "events")?;
    let broker = s.broker.clone();
    let (n, missing) = blocking(move || broker.ack(&topic, &name, &list)).await?;
    ok(
        StatusCode::OK,
        json!({"acked": n, "not_in_flight": pairs_json(&missing)}),
    )
}

async fn nack(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let v = json_request(&headers, raw)?;
    let list = items(&v, "events")?;
    let retry_in_ms = field_u64(&v, "retry_in_ms")?;
    let reject = match v.get("reject") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(
                ApiError::new("malformed_json", "`reject` must be a boolean").field("reject"),
            );
        }
    };
    let error = v.get("error").and_then(Value::as_str).map(str::to_string);
    let broker = s.broker.clone();
    let (n, missing) =
        blocking(move || broker.nack(&topic, &name, &list, retry_in_ms, reject, error.as_deref()))
            .await?;
    ok(
        StatusCode::OK,
        json!({"nacked": n, "not_in_flight": pairs_json(&missing)}),
    )
}

async fn commit(
    State(s): Shared,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let list = items(&json_request(&headers, raw)?, "offsets")?;
    let broker = s.broker.clone();
    let (t, n) = (topic.clone(), name.clone());
    let info = blocking(move || {
        broker.commit(&t, &n, &list)?;
        broker.subscription(&t, &n)
    })
    .await?;
    ok(StatusCode::OK, json!({"committed": info.positions}))
}

async fn list_dlq(
    State(s): Shared,
    Path(topic): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let max = query_u64(&q, "max")?
        .map_or(EVENTS_DEFAULT, |m| m as usize)
        .clamp(1, READ_EVENTS_MAX);
    let broker = s.broker.clone();
    let events = blocking(move || broker.dlq(&topic, max)).await?;
    ok(
        StatusCode::OK,
        json!({"events": events.iter().map(stored_json).collect::<Vec<_>>()}),
    )
}

async fn redrive(State(s): Shared, Path(topic): Path<String>) -> ApiResult {
    let broker = s.broker.clone();
    let n = blocking(move || broker.redrive(&topic)).await?;
    ok(StatusCode::OK, json!({"redriven": n}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_reply_renders_as_the_value_it_replaced() {
        let results = vec![
            PublishedJson {
                duplicate: false,
                id: "e-\"1\"",
                offset: 7,
                partition: 3,
            },
            PublishedJson {
                duplicate: true,
                id: "é",
                offset: u64::MAX,
                partition: 0,
            },
        ];
        let value = json!({"results": results.iter().map(|r| json!({
            "id": r.id, "partition": r.partition, "offset": r.offset, "duplicate": r.duplicate
        })).collect::<Vec<_>>()});
        assert_eq!(
            serde_json::to_string(&PublishReply { results }).unwrap(),
            value.to_string()
        );
    }
}
