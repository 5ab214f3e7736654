//! The webhook receiver: a source on a path of the HTTP listener.
//!
//! The HTTP layer hands each request to a [`WebhookEndpoint`], which verifies the signature
//! ([`signature`]), builds a draft CloudEvent whose id is the delivery id, and queues it for the
//! pipeline's [`WebhookSource`] on a bounded channel. The request waits for its record's outcome:
//! the sender gets a 2xx only after the event is appended and acknowledged (or dead-lettered with
//! its error), 503 when the append failed (the sender retries), and 429 when the queue is full.
//! A redelivery with the same delivery id is deduplicated by the log and answered 2xx with
//! `duplicate: true`.
//!
//! Limits: [`WebhookConfig::queue_max`] requests waiting for the pipeline,
//! [`WebhookConfig::body_bytes_max`] per body, [`WebhookConfig::reply_timeout_ms`] for the
//! outcome.

pub mod signature;

use gearbox_connect::secret::SecretRef;
use gearbox_connect::source::{AckToken, Landing, RecordOutcome, Source, SourceBatch, SourceError};
use serde::Deserialize;
use serde_json::{Value, json};
use signature::{Scheme, Verifier};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Largest `queue_max`.
pub const QUEUE_MAX_MAX: usize = 10_000;
/// Largest `body_bytes_max`.
pub const BODY_BYTES_MAX_MAX: usize = 16 << 20;

/// A webhook receiver's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The path on the HTTP listener, under `/hooks/`.
    pub path: String,
    /// `standard` (Standard Webhooks), `stripe` or `github`.
    pub scheme: String,
    /// Signing secrets (several during a rotation), as references.
    pub secrets: Vec<SecretRef>,
    /// How old (or how far in the future) a signed timestamp may be.
    #[serde(default = "replay_window_ms")]
    pub replay_window_ms: u64,
    /// The CloudEvent `source` of the events.
    pub source: String,
    /// The CloudEvent `type`; default: `github.<X-GitHub-Event>`, or the body's `type` field
    /// (Stripe, Standard Webhooks), or `webhook`.
    #[serde(default)]
    pub r#type: Option<String>,
    /// Requests waiting for the pipeline at once; more are answered 429.
    #[serde(default = "queue_max")]
    pub queue_max: usize,
    /// Largest body accepted.
    #[serde(default = "body_bytes_max")]
    pub body_bytes_max: usize,
    /// How long a request waits for its outcome before 503.
    #[serde(default = "reply_timeout_ms")]
    pub reply_timeout_ms: u64,
}

fn replay_window_ms() -> u64 {
    signature::REPLAY_WINDOW_MS_DEFAULT
}
fn queue_max() -> usize {
    64
}
fn body_bytes_max() -> usize {
    1 << 20
}
fn reply_timeout_ms() -> u64 {
    10_000
}

impl WebhookConfig {
    /// Every problem, with its field.
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !self.path.starts_with("/hooks/") || self.path.len() <= "/hooks/".len() {
            out.push((
                "path".into(),
                "must start with /hooks/ and name a hook".into(),
            ));
        }
        if self.path.contains(['{', '}', '*', '?', '#']) {
            out.push(("path".into(), "must be a plain path".into()));
        }
        if self.scheme.parse::<Scheme>().is_err() {
            out.push(("scheme".into(), "must be standard, stripe or github".into()));
        }
        if self.secrets.is_empty() || self.secrets.len() > signature::SECRETS_MAX {
            out.push((
                "secrets".into(),
                format!("must list 1 to {} secrets", signature::SECRETS_MAX),
            ));
        }
        if self.replay_window_ms == 0 || self.replay_window_ms > 86_400_000 {
            out.push(("replay_window_ms".into(), "must be 1 to 86400000".into()));
        }
        if self.queue_max == 0 || self.queue_max > QUEUE_MAX_MAX {
            out.push(("queue_max".into(), format!("must be 1 to {QUEUE_MAX_MAX}")));
        }
        if self.body_bytes_max == 0 || self.body_bytes_max > BODY_BYTES_MAX_MAX {
            out.push((
                "body_bytes_max".into(),
                format!("must be 1 to {BODY_BYTES_MAX_MAX}"),
            ));
        }
        if self.reply_timeout_ms == 0 || self.reply_timeout_ms > 120_000 {
            out.push(("reply_timeout_ms".into(), "must be 1 to 120000".into()));
        }
        out
    }
}

/// Why the receiver refused a request; the HTTP layer maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The signature, its headers or its timestamp are wrong: 401.
    #[error(transparent)]
    Signature(#[from] signature::SignatureError),
    /// The body is over the limit: 413.
    #[error("body of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The queue is full: 429.
    #[error("the pipeline has {max} deliveries waiting; retry later")]
    Busy {
        /// The queue limit.
        max: usize,
    },
    /// The append failed or timed out, or the pipeline is stopped: 503, the sender retries.
    #[error("{0}")]
    Unavailable(String),
}

/// A delivery's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The delivery id (the event id).
    pub id: String,
    /// Whether it had been received before.
    pub duplicate: bool,
    /// The error, if the pipeline dead-lettered the event.
    pub dead_lettered: Option<String>,
}

type Reply = oneshot::Sender<Result<RecordOutcome, String>>;

/// The HTTP side of a receiver: clone it into the router.
#[derive(Debug, Clone)]
pub struct WebhookEndpoint {
    verifier: Arc<Verifier>,
    config: Arc<WebhookConfig>,
    queue: mpsc::Sender<(Value, Reply)>,
}

/// The pipeline side of a receiver.
#[derive(Debug)]
pub struct WebhookSource {
    queue: mpsc::Receiver<(Value, Reply)>,
}

/// Why a receiver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    /// The config field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Builds both halves of a receiver, resolving its secrets.
///
/// # Errors
/// [`BuildError`] naming the field.
pub fn receiver(config: WebhookConfig) -> Result<(WebhookEndpoint, WebhookSource), BuildError> {
    if let Some((field, message)) = config.validate().into_iter().next() {
        return Err(BuildError { field, message });
    }
    let scheme: Scheme = config.scheme.parse().map_err(|_| BuildError {
        field: "scheme".into(),
        message: "unknown scheme".into(),
    })?;
    let mut secrets = Vec::new();
    for (i, s) in config.secrets.iter().enumerate() {
        let secret = s.resolve().map_err(|e| BuildError {
            field: format!("secrets[{i}]"),
            message: e.to_string(),
        })?;
        secrets.push(secret.expose().to_string());
    }
    let verifier =
        Verifier::new(scheme, &secrets, config.replay_window_ms).map_err(|e| BuildError {
            field: "secrets".into(),
            message: e.to_string(),
        })?;
    let (tx, rx) = mpsc::channel(config.queue_max);
    Ok((
        WebhookEndpoint {
            verifier: Arc::new(verifier),
            config: Arc::new(config),
            queue: tx,
        },
        WebhookSource { queue: rx },
    ))
}

impl WebhookEndpoint {
    /// The path it serves.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.config.path
    }

    /// Largest body accepted (the HTTP layer enforces it while reading).
    #[must_use]
    pub fn body_bytes_max(&self) -> usize {
        self.config.body_bytes_max
    }

    /// Handles one delivery: verify, queue, wait for the outcome.
    ///
    /// # Errors
    /// [`ReceiveError`].
    pub async fn receive(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        if body.len() > self.config.body_bytes_max {
            return Err(ReceiveError::TooLarge {
                len: body.len(),
                max: self.config.body_bytes_max,
            });
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let verified = self.verifier.verify(headers, body, now_ms)?;
        let draft = self.draft(headers, body, &verified);
        let id = draft["id"].as_str().unwrap_or_default().to_string();
        let (reply, outcome) = oneshot::channel();
        self.queue.try_send((draft, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ReceiveError::Busy {
                max: self.config.queue_max,
            },
            mpsc::error::TrySendError::Closed(_) => {
                ReceiveError::Unavailable("the pipeline is not running".into())
            }
        })?;
        let timeout = Duration::from_millis(self.config.reply_timeout_ms);
        let outcome = match tokio::time::timeout(timeout, outcome).await {
            Err(_) => {
                return Err(ReceiveError::Unavailable(
                    "timed out waiting for the append".into(),
                ));
            }
            Ok(Err(_)) => return Err(ReceiveError::Unavailable("the pipeline stopped".into())),
            Ok(Ok(Err(e))) => return Err(ReceiveError::Unavailable(e)),
            Ok(Ok(Ok(outcome))) => outcome,
        };
        let mut received = Received {
            id,
            duplicate: false,
            dead_lettered: None,
        };
        for landing in outcome.landings {
            match landing {
                Landing::Appended { duplicate, .. } => received.duplicate |= duplicate,
                Landing::DeadLettered { error } => received.dead_lettered = Some(error),
            }
        }
        Ok(received)
    }

    fn draft(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        verified: &signature::Verified,
    ) -> Value {
        let data: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let github_event = header("x-github-event");
        let ty = self.config.r#type.clone().unwrap_or_else(|| {
            if let Some(e) = &github_event {
                format!("github.{e}")
            } else if let Some(t) = data.get("type").and_then(Value::as_str) {
                t.to_string()
            } else {
                "webhook".to_string()
            }
        });
        // Without a delivery id (a Stripe body without `id`), the content identifies the
        // delivery, so a resend of the same bytes still deduplicates.
        let id = verified.delivery_id.clone().unwrap_or_else(|| {
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(body);
            format!("sha256-{}", hex(&digest[..16]))
        });
        let mut draft = json!({
            "specversion": "1.0",
            "id": id,
            "source": self.config.source,
            "type": ty,
            "datacontenttype": "application/json",
            "data": data,
        });
        if let Some(t) = verified
            .timestamp_s
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        {
            draft["time"] = json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        if let Some(e) = github_event {
            draft["githubevent"] = json!(e);
        }
        draft
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Source for WebhookSource {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    async fn open(&mut self, _cursor: Option<String>) -> Result<(), SourceError> {
        // A push source has no cursor: the sender holds what is not acknowledged.
        Ok(())
    }

    async fn next_batch(&mut self, records_max: usize) -> Result<Option<SourceBatch>, SourceError> {
        let queue = &mut self.queue;
        let Some(first) = queue.recv().await else {
            return Ok(None);
        };
        let mut items = vec![first];
        while items.len() < records_max {
            match queue.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let (records, replies): (Vec<Value>, Vec<Reply>) = items.into_iter().unzip();
        Ok(Some(SourceBatch {
            records,
            rejected: Vec::new(),
            cursor: None,
            token: Some(Box::new(replies)),
        }))
    }

    async fn ack(
        &mut self,
        token: Option<AckToken>,
        outcomes: Vec<RecordOutcome>,
    ) -> Result<(), SourceError> {
        let Some(replies) = token.and_then(|t| t.downcast::<Vec<Reply>>().ok()) else {
            return Ok(());
        };
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The sender may have given up (timeout); the event is stored either way.
            let _ = reply.send(Ok(outcome));
        }
        Ok(())
    }

    async fn nack(&mut self, token: Option<AckToken>, error: &str) {
        let Some(replies) = token.and_then(|t| t.downcast::<Vec<Reply>>().ok()) else {
            return;
        };
        for reply in *replies {
            let _ = reply.send(Err(error.to_string()));
        }
    }
}
