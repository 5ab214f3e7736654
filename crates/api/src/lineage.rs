//! Lineage routes: `GET /v1/events/{id}/trace` (every hop of one event, in order) and
//! `GET /v1/traces?correlation_id=` (every event of a cascade, each with its hops). Lookups scan
//! the retained lineage log on a blocking thread ([`gearbox_core::lineage`]).

use crate::error::ApiError;
use crate::{ApiResult, Path, Query, Shared, ok};
use axum::http::StatusCode;
use gearbox_core::lineage::{Hop, LineageError};
use serde_json::{Value, json};
use std::collections::HashMap;

fn hops_json(hops: &[Hop]) -> Vec<Value> {
    hops.iter().map(Hop::to_json).collect()
}

fn lineage_error(e: LineageError) -> ApiError {
    match e {
        LineageError::Disabled => ApiError::new("lineage_disabled", e.to_string())
            .hint("lineage is turned off in this server's configuration"),
        LineageError::Read(_) => ApiError::new("internal", e.to_string()),
    }
}

/// `GET /v1/events/{id}/trace`.
pub(crate) async fn trace(crate::State(s): Shared, Path(id): Path<String>) -> ApiResult {
    let lineage = s.broker.lineage().clone();
    let lookup = id.clone();
    let (hops, truncated) = tokio::task::spawn_blocking(move || lineage.trace(&lookup))
        .await
        .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))?
        .map_err(lineage_error)?;
    if hops.is_empty() {
        return Err(ApiError::new(
            "event_not_found",
            format!("no hops recorded for event id {id:?}"),
        )
        .field("id")
        .hint("lineage keeps hops within its retention; check the id"));
    }
    ok(
        StatusCode::OK,
        json!({"id": id, "hops": hops_json(&hops), "truncated": truncated}),
    )
}

/// `GET /v1/traces?correlation_id=X`.
pub(crate) async fn traces(
    crate::State(s): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let Some(correlation) = q.get("correlation_id").filter(|c| !c.is_empty()).cloned() else {
        return Err(
            ApiError::new("invalid_argument", "correlation_id is required").field("correlation_id"),
        );
    };
    let lineage = s.broker.lineage().clone();
    let lookup = correlation.clone();
    let found = tokio::task::spawn_blocking(move || lineage.correlation(&lookup))
        .await
        .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))?
        .map_err(lineage_error)?;
    let events: Vec<Value> = found
        .events
        .iter()
        .map(|(id, cause, hops)| json!({"id": id, "causation_id": cause, "hops": hops_json(hops)}))
        .collect();
    ok(
        StatusCode::OK,
        json!({"correlation_id": correlation, "events": events, "truncated": found.truncated}),
    )
}
