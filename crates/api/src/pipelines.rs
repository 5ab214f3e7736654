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
use gearbox_connect::metrics::Snapshot;
use gearbox_connectors::webhook::ReceiveError;
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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) async fn list(crate::State(s): Shared) -> ApiResult {
    let now = now_ms();
    let all: Vec<Value> = s
        .pipelines
        .all()
        .iter()
        .map(|m| snapshot_json(&m.snapshot(now)))
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
    ok(StatusCode::OK, snapshot_json(&m.snapshot(now_ms())))
}

pub(crate) async fn pause(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    m.set_paused(true);
    ok(StatusCode::OK, snapshot_json(&m.snapshot(now_ms())))
}

pub(crate) async fn resume(
    crate::State(s): Shared,
    crate::Path(name): crate::Path<String>,
) -> ApiResult {
    let m = find(&s, &name)?;
    m.set_paused(false);
    ok(StatusCode::OK, snapshot_json(&m.snapshot(now_ms())))
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
