//! The one table of stable error codes, and the error reply every handler returns.
//!
//! A reply is `{"code","message","field"?,"hint"?}`. `code` is stable and each has one HTTP
//! status ([`ERROR_CODES`]); `docs/api.md` lists them and a test checks the two agree.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gearbox_core::broker::BrokerError;
use gearbox_core::event::EventError;
use serde_json::json;

/// Every error code with its HTTP status.
pub const ERROR_CODES: &[(&str, u16)] = &[
    ("malformed_json", 400),
    ("missing_attribute", 400),
    ("invalid_attribute", 400),
    ("unsupported_specversion", 400),
    ("unsupported_media_type", 415),
    ("event_too_large", 413),
    ("body_too_large", 413),
    ("too_many_events", 413),
    ("empty_batch", 400),
    ("invalid_topic_name", 400),
    ("invalid_argument", 400),
    ("topic_not_found", 404),
    ("partition_not_found", 404),
    ("subscription_not_found", 404),
    ("topic_exists", 409),
    ("subscription_conflict", 409),
    ("offset_out_of_range", 416),
    ("commit_regression", 409),
    ("wrong_mode", 409),
    ("disk_full", 507),
    ("partition_failed", 503),
    ("partition_corrupted", 500),
    ("method_not_allowed", 405),
    ("route_not_found", 404),
    ("overloaded", 429),
    ("shutting_down", 503),
    ("webhook_signature_invalid", 401),
    ("schema_violation", 422),
    ("schema_required", 422),
    ("pipeline_not_found", 404),
    ("pipeline_not_scheduled", 409),
    ("replay_unsupported", 409),
    ("event_not_found", 404),
    ("lineage_disabled", 404),
    ("pipeline_unavailable", 503),
    ("internal", 500),
];

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The stable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The field, attribute or parameter at fault.
    pub field: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
    /// Schema violations (`[{"pointer","message"}]`), for `schema_violation`.
    pub violations: Option<Vec<(String, String)>>,
}

impl ApiError {
    /// An error with a code and message.
    ///
    /// # Panics
    /// If `code` is not in [`ERROR_CODES`] (a programmer error, caught by tests).
    #[must_use]
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        assert!(
            ERROR_CODES.iter().any(|(c, _)| *c == code),
            "unknown error code {code}"
        );
        ApiError {
            code,
            message: message.into(),
            field: None,
            hint: None,
            violations: None,
        }
    }

    /// Names the field at fault.
    #[must_use]
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Adds a hint.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The HTTP status for this error's code.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        let code = ERROR_CODES
            .iter()
            .find(|(c, _)| *c == self.code)
            .map_or(500, |(_, s)| *s);
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// An event error, with its attribute prefixed by `prefix` (e.g. `events[3].`).
    #[must_use]
    pub fn from_event(e: &EventError, prefix: &str, what: &str) -> Self {
        let code = match e {
            EventError::Missing { .. } => "missing_attribute",
            EventError::Invalid { .. } => "invalid_attribute",
            EventError::UnsupportedSpecVersion { .. } => "unsupported_specversion",
        };
        ApiError::new(code, format!("{what}{e}")).field(format!("{prefix}{}", e.field()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        if let Some(h) = &self.hint {
            body["hint"] = json!(h);
        }
        if let Some(v) = &self.violations {
            body["violations"] = v
                .iter()
                .map(|(pointer, message)| json!({"pointer": pointer, "message": message}))
                .collect();
        }
        (self.status(), Json(body)).into_response()
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let message = e.to_string();
        match e {
            BrokerError::TopicNotFound(_) => {
                ApiError::new("topic_not_found", message).field("topic")
            }
            BrokerError::TopicExists(_) => ApiError::new("topic_exists", message).field("name"),
            BrokerError::InvalidTopicName { .. } => ApiError::new("invalid_topic_name", message)
                .field("name")
                .hint("use 1 to 249 characters of A-Z a-z 0-9 . _ -"),
            BrokerError::PartitionNotFound { .. } => {
                ApiError::new("partition_not_found", message).field("partition")
            }
            BrokerError::SubscriptionNotFound { .. } => {
                ApiError::new("subscription_not_found", message)
            }
            BrokerError::SubscriptionConflict { .. } => {
                ApiError::new("subscription_conflict", message)
                    .hint("delete the subscription first, or use another name")
            }
            BrokerError::WrongMode { .. } => ApiError::new("wrong_mode", message),
            BrokerError::CommitRegression { .. } => {
                ApiError::new("commit_regression", message).field("offsets")
            }
            BrokerError::InvalidArgument { field, .. } => {
                ApiError::new("invalid_argument", message).field(field)
            }
            BrokerError::EventTooLarge { index, .. } => {
                ApiError::new("event_too_large", message).field(format!("events[{index}]"))
            }
            BrokerError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => ApiError::new("offset_out_of_range", message)
                .field("offset")
                .hint(format!(
                    "readable offsets are {log_start_offset} to {high_watermark}"
                )),
            BrokerError::DiskFull => {
                ApiError::new("disk_full", message).hint("free disk space, then retry")
            }
            BrokerError::PartitionFailed(_) => ApiError::new("partition_failed", message)
                .hint("restart the server to run recovery"),
            BrokerError::PartitionCorrupted(_) => ApiError::new("partition_corrupted", message)
                .hint("see docs/durability.md, \"Corruption\""),
            BrokerError::SchemaViolation {
                index,
                subject,
                version,
                violations,
            } => {
                let mut e = ApiError::new("schema_violation", message)
                    .field(format!("events[{index}].data"))
                    .hint(format!(
                        "see GET /registry/subjects/{subject}/versions/{version}"
                    ));
                e.violations = Some(
                    violations
                        .into_iter()
                        .map(|v| (v.pointer, v.message))
                        .collect(),
                );
                e
            }
            BrokerError::SchemaRequired { index, subject } => {
                ApiError::new("schema_required", message)
                    .field(format!("events[{index}].type"))
                    .hint(format!("register a schema under subject {subject}"))
            }
            // Only the Kafka listener appends raw batches; over HTTP it would be a bug.
            BrokerError::InvalidBatch(_) | BrokerError::Internal(_) => {
                ApiError::new("internal", message)
            }
        }
    }
}
