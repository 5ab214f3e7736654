//! HTTP delivery: the sink that sends events to a URL (webhooks out), signed with Standard
//! Webhooks.
//!
//! Each record is one `POST` of its transformed value as JSON. `webhook-id` is the record's
//! stable id (the event id), the same on every retry and after a restart, so a receiver that
//! deduplicates on it sees each event once. `webhook-timestamp` is the time of this attempt, and
//! `webhook-signature` signs `id.timestamp.body` with the configured secret.
//!
//! Outcomes: 2xx is delivered; 408, 429 and 5xx, timeouts and connection errors are transient
//! (retried on the pipeline's schedule, honoring `Retry-After`, feeding the circuit breaker); any
//! other status is permanent (dead-lettered with the status and a bounded excerpt of the body).
//!
//! Limits: [`HttpDeliveryConfig::concurrency`] requests at once per batch (1 keeps order),
//! [`HttpDeliveryConfig::timeout_ms`] per request, [`RESPONSE_EXCERPT_BYTES_MAX`] of a response
//! kept in an error.

use crate::webhook::signature::{sign_standard, standard_secret_key};
use gearbox_connect::secret::SecretRef;
use gearbox_connect::sink::{Sink, SinkError, SinkRecord};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Longest response excerpt kept in an error.
pub const RESPONSE_EXCERPT_BYTES_MAX: usize = 512;
/// Largest `concurrency`.
pub const CONCURRENCY_MAX: usize = 64;
/// Largest `timeout_ms`.
pub const TIMEOUT_MS_MAX: u64 = 300_000;

/// An HTTP delivery sink's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDeliveryConfig {
    /// Where events are POSTed.
    pub url: String,
    /// The Standard Webhooks signing secret (`whsec_...`), as a reference. Without one, requests
    /// are unsigned (but still carry `webhook-id` and `webhook-timestamp`).
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// Extra headers; values are references (they often carry credentials).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Per-request timeout.
    #[serde(default = "timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight at once within a batch; 1 delivers strictly in order.
    #[serde(default = "concurrency")]
    pub concurrency: usize,
}

fn timeout_ms() -> u64 {
    10_000
}
fn concurrency() -> usize {
    1
}

impl HttpDeliveryConfig {
    /// Every problem, with its field.
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => out.push(("url".into(), "must be an http or https URL".into())),
            Err(e) => out.push(("url".into(), format!("not a URL: {e}"))),
        }
        if self.timeout_ms == 0 || self.timeout_ms > TIMEOUT_MS_MAX {
            out.push((
                "timeout_ms".into(),
                format!("must be 1 to {TIMEOUT_MS_MAX}"),
            ));
        }
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            out.push((
                "concurrency".into(),
                format!("must be 1 to {CONCURRENCY_MAX}"),
            ));
        }
        for name in self.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push((format!("headers.{name}"), "not a valid header name".into()));
            }
        }
        out
    }
}

/// The sink.
#[derive(Debug)]
pub struct HttpDelivery {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<Vec<u8>>,
    headers: http::HeaderMap,
    concurrency: usize,
}

/// Why the sink could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    /// The config field.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn build_error(field: impl Into<String>, message: impl ToString) -> BuildError {
    BuildError {
        field: field.into(),
        message: message.to_string(),
    }
}

impl HttpDelivery {
    /// Builds the sink, resolving its secrets.
    ///
    /// # Errors
    /// [`BuildError`] naming the field.
    pub fn new(config: &HttpDeliveryConfig) -> Result<HttpDelivery, BuildError> {
        if let Some((field, message)) = config.validate().into_iter().next() {
            return Err(build_error(field, message));
        }
        crate::install_tls_provider();
        let key = match &config.secret {
            None => None,
            Some(s) => {
                let secret = s.resolve().map_err(|e| build_error("secret", e))?;
                Some(standard_secret_key(secret.expose()).map_err(|e| build_error("secret", e))?)
            }
        };
        let mut headers = http::HeaderMap::new();
        for (name, value) in &config.headers {
            let field = format!("headers.{name}");
            let secret = value.resolve().map_err(|e| build_error(&field, e))?;
            let mut v = http::HeaderValue::from_str(secret.expose())
                .map_err(|_| build_error(&field, "not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| build_error(&field, "not a valid header name"))?,
                v,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| build_error("url", e))?;
        Ok(HttpDelivery {
            client,
            url: reqwest::Url::parse(&config.url).map_err(|e| build_error("url", e))?,
            key,
            headers,
            concurrency: config.concurrency,
        })
    }

    async fn send(&self, record: &SinkRecord) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&record.value).map_err(|e| SinkError::Permanent {
            message: format!("the event does not serialize: {e}"),
        })?;
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &record.id)
            .header("webhook-timestamp", timestamp.to_string());
        // W3C Trace Context: the event's trace continues at the receiver.
        if let Some(tp) = &record.traceparent {
            request = request.header("traceparent", tp);
        }
        if let Some(key) = &self.key {
            request = request.header(
                "webhook-signature",
                sign_standard(key, &record.id, timestamp, &body),
            );
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::Transient {
                message: format!("request failed: {}", without_url(&e)),
                retry_after_ms: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after_ms = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                gearbox_connect::retry::parse_retry_after(v, chrono::Utc::now().timestamp_millis())
            });
        let excerpt = excerpt(response).await;
        let message = format!(
            "{} answered {status}: {excerpt}",
            self.url.host_str().unwrap_or("?")
        );
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SinkError::Transient {
                message,
                retry_after_ms,
            })
        } else {
            Err(SinkError::Permanent { message })
        }
    }
}

/// A reqwest error's text without the URL (which may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    if e.is_timeout() {
        return format!("timed out ({text})");
    }
    text
}

async fn excerpt(response: reqwest::Response) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    let end = bytes.len().min(RESPONSE_EXCERPT_BYTES_MAX);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Sink for HttpDelivery {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn write(&mut self, batch: &[SinkRecord]) -> Vec<Result<(), SinkError>> {
        let mut results = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(self.concurrency) {
            let sends = chunk.iter().map(|r| self.send(r));
            results.extend(futures_join_all(sends).await);
        }
        results
    }
}

/// Awaits futures concurrently, keeping their order (a chunk is at most `concurrency` long).
async fn futures_join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
