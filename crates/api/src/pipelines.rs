//! The pipeline routes: webhook receivers under `/hooks/`, `GET /v1/pipelines` (status and
//! health of each), pause and resume, and `GET /metrics` (Prometheus text).
//!
//! Architecture Invariant: nothing here echoes configuration; a pipeline's secrets never reach
//! a response because the runtime never holds them in anything these routes read.

use crate::error::ApiError;
use crate::{ApiResult, Shared, ok};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use gearbox_connect::metrics::{ComponentMetrics, Kind, Snapshot};
use gearbox_connect::schedule::{Run, RunLog};
use gearbox_connectors::webhook::ReceiveError;
use gearbox_core::subscription::Start;
use serde_json::{Value, json};

fn snapshot_json(s: &Snapshot) -> Value {
    json!({
        "name": s.pipeline,
        "kind": s.kind.as_str(),
        "connector": s.component_type,
        "health": s.health.as_str(),
        "received": s.received,
        "sent": s.sent,
        "discarded": s.discarded,
        "dead_lettered": s.dead_lettered,
        "retries": s.retries,
        "errors": s.errors,
        "last_success": s.last_success_ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        "breaker": s.breaker,
        "failure": s.failure,
        "freshness_ms": s.freshness_ms,
        "error_rate": s.error_rate_permille.map(|p| p as f64 / 1000.0),
        "lag": s.lag,
    })
}

fn time_json(ms: Option<i64>) -> Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .into()
}

fn run_json(r: &Run) -> Value {
    json!({
        "id": r.id,
        "trigger": r.trigger,
        "scheduled": time_json(r.scheduled_ms),
        "started": time_json(Some(r.started_ms)),
        "ended": time_json(r.ended_ms),
        "duration_ms": r.ended_ms.map(|e| e - r.started_ms),
        "rows": r.rows,
        "appended": r.appended,
        "duplicates": r.duplicates,
        "dead_lettered": r.dead_lettered,
        "watermark_before": r.watermark_before,
        "watermark_after": r.watermark_after,
        "outcome": r.outcome,
        "error": r.error,
    })
}

/// A scheduled pipeline's schedule, run in progress and history (newest first).
pub(crate) fn runs_json(log: &RunLog) -> Value {
    let v = log.view();
    json!({
        "cron": v.cron,
        "time_zone": v.time_zone,
        "next_run": time_json(v.next_run_ms),
        "watermark": v.watermark,
        "running": v.running.as_ref().map(run_json),
        "queued": v.queued,
        "runs": v.history.iter().map(run_json).collect::<Vec<_>>(),
    })
}

fn pipeline_json(m: &ComponentMetrics, now: i64) -> Value {
    let mut v = snapshot_json(&m.snapshot(now));
    if let Some(log) = m.runs() {
        let view = log.view();
        v["schedule"] = json!({
            "cron": view.cron,
            "time_zone": view.time_zone,
            "next_run": time_json(view.next_run_ms),
            "watermark": view.watermark,
            "running": view.running.is_some(),
            "last_run": view.history.first().map(run_json),
        });
    }
    v
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) async fn list(crate::State(s): Shared) -> ApiResult {
    let now = now_ms();
    let all: Vec<Value> = s
        .pipelines
        .all()
        .iter()
        .map(|m| pipeline_json(m, now))
        .collect();
    ok(StatusCode::OK, json!({ "pipelines": all }))
}

fn find(
    s: &crate::AppState,
    name: &str,
) -> Result<std::sync::Arc<gearbox_connect::metrics::ComponentMetrics>, ApiError> {
    s.pipelines.get(name).ok_or_else(|| {
        ApiError::new("pipeline_not_found", format!("no pipeline named {name:?}")).field("name")
    })
}

pub(crate) async fn get(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    ok(StatusCode::OK, pipeline_json(&m, now_ms()))
}

fn scheduled(m: &ComponentMetrics) -> Result<&std::sync::Arc<RunLog>, ApiError> {
    m.runs().ok_or_else(|| {
        ApiError::new(
            "pipeline_not_scheduled",
            format!(
                "pipeline {:?} has no schedule (only batch sources do)",
                m.pipeline
            ),
        )
        .field("name")
    })
}

/// `GET /v1/pipelines/{name}/runs`: the schedule and the bounded run history.
pub(crate) async fn runs(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    ok(StatusCode::OK, runs_json(scheduled(&m)?))
}

/// `POST /v1/pipelines/{name}/runs`: a run now, or with `{"watermark": "..."}` a backfill from
/// that (older) watermark. It starts when the run in progress, if any, has finished.
pub(crate) async fn trigger(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = crate::json_request(&headers, raw)?;
    let m = find(&s, &name)?;
    let log = scheduled(&m)?;
    let watermark = match body.get("watermark") {
        None | Some(Value::Null) => None,
        Some(Value::String(w)) => Some(w.clone()),
        Some(_) => {
            return Err(
                ApiError::new("malformed_json", "`watermark` must be a string").field("watermark"),
            );
        }
    };
    let trigger = log
        .trigger(watermark.clone())
        .map_err(|e| ApiError::new("invalid_argument", e.to_string()).field("watermark"))?;
    ok(
        StatusCode::ACCEPTED,
        json!({"queued": trigger, "watermark": watermark, "pipeline": name}),
    )
}

/// `POST /v1/pipelines/{name}/replay`: a sink pipeline re-reads its topic from
/// `{"offset": n}`, `{"time": "<RFC 3339>"}` or `{"start": "earliest"}`; other pipelines and
/// subscriptions are not touched.
pub(crate) async fn replay(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let body = crate::json_request(&headers, raw)?;
    let m = find(&s, &name)?;
    if m.kind != Kind::Sink {
        return Err(ApiError::new(
            "replay_unsupported",
            format!("pipeline {name:?} is a source; replay re-reads a topic into a sink pipeline"),
        )
        .field("name"));
    }
    if m.component_type == "parquet" {
        return Err(ApiError::new(
            "replay_unsupported",
            "a Parquet sink's files are its positions: rewriting a range would duplicate it",
        )
        .field("name")
        .hint("add a new parquet pipeline with `start: earliest` (and its own path) instead"));
    }
    let start = match (body.get("offset"), body.get("time"), body.get("start")) {
        (Some(o), None, None) => Start::Offset(o.as_u64().ok_or_else(|| {
            ApiError::new("malformed_json", "`offset` must be a non-negative integer")
                .field("offset")
        })?),
        (None, Some(t), None) => {
            let t = t.as_str().unwrap_or_default();
            let time = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                ApiError::new("invalid_argument", format!("`time` is not RFC 3339: {e}"))
                    .field("time")
            })?;
            Start::Time(time.timestamp_millis())
        }
        (None, None, Some(Value::String(w))) if w == "earliest" => Start::Earliest,
        (None, None, Some(Value::String(w))) if w == "latest" => Start::Latest,
        _ => {
            return Err(ApiError::new(
                "invalid_argument",
                "give exactly one of `offset`, `time` (RFC 3339) or `start` (earliest, latest)",
            )
            .field("body"));
        }
    };
    m.request_replay(start);
    ok(
        StatusCode::ACCEPTED,
        json!({"pipeline": name, "replay_from": match start {
            Start::Offset(o) => json!({"offset": o}),
            Start::Time(t) => json!({"time": time_json(Some(t))}),
            Start::Earliest => json!("earliest"),
            Start::Latest => json!("latest"),
        }}),
    )
}

pub(crate) async fn pause(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    m.set_paused(true);
    ok(StatusCode::OK, pipeline_json(&m, now_ms()))
}

pub(crate) async fn resume(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    m.set_paused(false);
    ok(StatusCode::OK, pipeline_json(&m, now_ms()))
}

/// `GET /metrics`: encoded on a blocking thread (it reads subscription state).
pub(crate) async fn metrics(crate::State(s): Shared) -> ApiResult {
    let out = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &s.metrics).map(|()| out)
    })
    .await
    .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))?
    .map_err(|e| ApiError::new("internal", format!("encoding metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// `POST /hooks/...`: one webhook delivery.
pub(crate) async fn hook(
    crate::State(s): Shared,
    uri: Uri,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let Some(endpoint) = s.hooks.get(uri.path()) else {
        return Err(
            ApiError::new("route_not_found", "no webhook receiver on this path").field("path"),
        );
    };
    let body = crate::body(raw)?;
    match endpoint.receive(&headers, &body).await {
        Ok(r) => ok(
            StatusCode::OK,
            json!({"id": r.id, "duplicate": r.duplicate, "dead_lettered": r.dead_lettered.is_some()}),
        ),
        Err(ReceiveError::Signature(e)) => {
            tracing::warn!(path = %uri.path(), error = %e, "webhook refused");
            Err(ApiError::new("webhook_signature_invalid", e.to_string()))
        }
        Err(e @ ReceiveError::TooLarge { .. }) => {
            Err(ApiError::new("body_too_large", e.to_string()).field("body"))
        }
        Err(e @ ReceiveError::Busy { .. }) => {
            Err(ApiError::new("overloaded", e.to_string()).hint("retry after a short backoff"))
        }
        Err(e @ ReceiveError::Unavailable(_)) => {
            Err(ApiError::new("pipeline_unavailable", e.to_string()).hint("retry later"))
        }
    }
}
