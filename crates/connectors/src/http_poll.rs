//! The HTTP poller: a [`Source`] that pulls records from a JSON API (API-first pull).
//!
//! Every `interval_ms` the poller runs a *sync*: it asks the API for the records whose cursor
//! field (`updated_at`, a change token) is at or after the stored lower bound, follows the API's
//! pagination to the last page, and turns each record into a draft CloudEvent whose id is the
//! record's business key and version (`key:version`). Each page is one batch (split further when
//! it holds more than `records_max` records). Rate limiting, retries, the circuit breaker and
//! deduplication belong to the runtime; this module makes at most one HTTP request per
//! [`Source::next_batch`] call so that the runtime's rate limiter sees every request.
//!
//! # The cursor
//!
//! The stored cursor is a small JSON object:
//!
//! ```json
//! {"since": "2025-01-01T00:00:00.000Z", "next": {"page": 3}, "max": "2025-01-02T10:00:00.000Z", "pages": 2}
//! ```
//!
//! - `since`: the sync's lower bound (a string; `null` before anything was read and without
//!   `cursor.initial`). It does not change during a sync.
//! - `next`: the next page of the running sync, `{"url": ...}` (`link_header`),
//!   `{"token": ...}` (`cursor_field`) or `{"page": n}` (`page_number`); `null` between syncs.
//! - `max`: the greatest cursor value read so far in the running sync (for `opaque` cursors: the
//!   last one, in API order). Absent between syncs.
//! - `pages`: pages read so far in the running sync. Absent between syncs.
//!
//! Resume rules: a cursor with a `next` resumes the sync at that page with the same `since`; a
//! cursor without one starts a new sync from `since`. The last page of a sync (even an empty one)
//! is a batch whose cursor is `{"since": max(since, max), "next": null}`. The request's lower
//! bound is `since` minus `cursor.lookback_ms` for timestamp cursors, so a record is read again
//! only within the lookback window, and a record read twice has the same event id, which the
//! log deduplicates.
//!
//! Invariants: a batch carries a cursor only when every record before that position has been
//! handed out in this or an earlier batch; a page split into several batches carries its cursor
//! on the last one only (the others leave the stored cursor as it is, so a crash re-reads the
//! whole page). [`Source::nack`] rewinds to the cursor of the last acknowledged batch (or the one
//! given to [`Source::open`]). Header values are secrets: they never appear in an error or a log
//! line, and a response excerpt that echoes one has it replaced by `***`.
//!
//! Known limit of the API style, not of this module: with offset pagination (`page_number`, or
//! any API whose "next page" is an offset), a record updated during a sync leaves its page and
//! shifts the records after it back by one, so the first record of the next page moves onto a
//! page already read. `cursor.lookback_ms` must cover the cursor range of a sync to re-read it;
//! keyset pagination (`link_header` or `cursor_field` tokens that encode the last key) has no
//! such gap.
//!
//! Limits: a response body is at most [`BODY_BYTES_MAX`] bytes; an error excerpt at most
//! [`ERROR_EXCERPT_BYTES_MAX`]; a stored cursor at most [`CURSOR_BYTES_MAX`]; a sync at most
//! `pagination.pages_max` pages; redirects at most [`REDIRECTS_MAX`], same origin only; a
//! `Retry-After` hint at most [`gearbox_connect::retry::RETRY_DELAY_MS_MAX`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat};
use gearbox_connect::retry::parse_retry_after;
use gearbox_connect::secret::{Secret, SecretError, SecretRef};
use gearbox_connect::source::{AckToken, RecordOutcome, Source, SourceBatch, SourceError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

/// Largest response body read; a larger one is a [`SourceError::Fatal`], because reading the
/// same page again would fail the same way until an operator lowers `pagination.page_size`.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest excerpt of an error response kept in the error message.
pub const ERROR_EXCERPT_BYTES_MAX: usize = 512;
/// Largest encoded cursor; the checkpoint store caps checkpoints at 64 KiB, and a cursor that
/// grows towards that is a sign of an API handing out unbounded page tokens.
pub const CURSOR_BYTES_MAX: usize = 16 * 1024;
/// Redirects followed per request (same origin only).
pub const REDIRECTS_MAX: usize = 10;

/// Default `interval_ms`.
pub const INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Smallest `interval_ms`.
pub const INTERVAL_MS_MIN: u64 = 100;
/// Largest `interval_ms` (7 days).
pub const INTERVAL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Default `timeout_ms`.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Largest `timeout_ms`.
pub const TIMEOUT_MS_MAX: u64 = 300_000;
/// Largest `cursor.lookback_ms` (7 days).
pub const LOOKBACK_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Default `pagination.pages_max`.
pub const PAGES_MAX_DEFAULT: u32 = 1000;
/// Largest `pagination.pages_max`.
pub const PAGES_MAX_BOUND: u32 = 100_000;
/// Largest `pagination.page_size`.
pub const PAGE_SIZE_MAX: u32 = 100_000;

/// The poller's configuration, as written under a pipeline's `source:`.
///
/// Record fields (`cursor.field`, `id.key`, ...) and `records`/`pagination.next_field` name a
/// top-level field, or a JSON Pointer (RFC 6901) when they start with `/` (`/meta/next`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpPollConfig {
    /// The endpoint, `http` or `https`; its own query parameters are kept.
    pub url: String,
    /// Time between the starts of two syncs. Default [`INTERVAL_MS_DEFAULT`].
    #[serde(default = "interval_ms_default")]
    pub interval_ms: u64,
    /// Per request, from sending to the end of the body. Default [`TIMEOUT_MS_DEFAULT`].
    #[serde(default = "timeout_ms_default")]
    pub timeout_ms: u64,
    /// Request headers; every value is a secret reference (`${env:API_TOKEN}`), resolved once
    /// by [`HttpPoll::new`].
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// The body field holding the array of records; `None`: the body is the array.
    #[serde(default)]
    pub records: Option<String>,
    /// The incremental cursor.
    pub cursor: CursorConfig,
    /// How the API pages. Default: no pagination.
    #[serde(default)]
    pub pagination: PaginationConfig,
    /// How event ids are made.
    pub id: IdConfig,
    /// The CloudEvents attributes.
    pub event: EventConfig,
}

/// `cursor:`: the lower bound sent with each request and where records carry it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorConfig {
    /// The query parameter carrying the lower bound (`updated_since`).
    pub param: String,
    /// The record field holding the cursor value (`updated_at`).
    pub field: String,
    /// What the values are.
    pub kind: CursorKind,
    /// The lower bound of the first sync; `None`: no lower bound (read everything).
    #[serde(default)]
    pub initial: Option<String>,
    /// Subtracted from the lower bound of each request (timestamp cursors only). Default 0.
    #[serde(default)]
    pub lookback_ms: u64,
}

/// What cursor values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorKind {
    /// RFC 3339 timestamps, or integers taken as Unix milliseconds. The sync's new lower bound is
    /// the greatest value read; `lookback_ms` applies.
    Timestamp,
    /// Tokens the API hands out and compares itself. The new lower bound is the last value read
    /// (the API returns records in cursor order); no lookback.
    Opaque,
}

/// `pagination:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaginationConfig {
    /// The style. Default `none`.
    #[serde(default)]
    pub style: PaginationStyle,
    /// `cursor_field`: the body field holding the next page's token.
    #[serde(default)]
    pub next_field: Option<String>,
    /// `cursor_field` and `page_number`: the query parameter carrying the token or page number.
    #[serde(default)]
    pub page_param: Option<String>,
    /// The query parameter carrying `page_size`.
    #[serde(default)]
    pub page_size_param: Option<String>,
    /// Records per page; `page_number` also ends a sync at a page shorter than this.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Pages per sync; reaching it with a next page still to read is a
    /// [`SourceError::Fatal`] (an API looping on its next link, or a bound too small for a
    /// backfill). Default [`PAGES_MAX_DEFAULT`].
    #[serde(default = "pages_max_default")]
    pub pages_max: u32,
}

impl Default for PaginationConfig {
    fn default() -> Self {
        PaginationConfig {
            style: PaginationStyle::None,
            next_field: None,
            page_param: None,
            page_size_param: None,
            page_size: None,
            pages_max: PAGES_MAX_DEFAULT,
        }
    }
}

/// How the API pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaginationStyle {
    /// One request per sync.
    #[default]
    None,
    /// Follow `Link: <url>; rel="next"` (RFC 8288), resolved against the request URL; the link
    /// carries every parameter.
    LinkHeader,
    /// Read `next_field` from the body and send it as `page_param`; no token ends the sync.
    CursorField,
    /// Send `page_param` = 1, 2, ...; a page shorter than `page_size` (or empty) ends the sync.
    PageNumber,
}

/// `id:`: the event id is `{key}:{version}` (or the key alone), so re-reads deduplicate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdConfig {
    /// The record field holding the business key.
    pub key: String,
    /// The record field holding the version (`updated_at`, a revision number).
    #[serde(default)]
    pub version: Option<String>,
}

/// `event:`: CloudEvents attributes of the draft events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// The CloudEvent `source` (`https://api.example.com/records`).
    pub source: String,
    /// The CloudEvent `type`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The record field copied to `subject`.
    #[serde(default)]
    pub subject_field: Option<String>,
    /// The record field copied to `partitionkey`; default: the `id.key` field.
    #[serde(default)]
    pub partition_key_field: Option<String>,
}

fn interval_ms_default() -> u64 {
    INTERVAL_MS_DEFAULT
}

fn timeout_ms_default() -> u64 {
    TIMEOUT_MS_DEFAULT
}

fn pages_max_default() -> u32 {
    PAGES_MAX_DEFAULT
}

impl HttpPollConfig {
    /// Checks the named limits and the combinations of fields; each problem is a path
    /// (`cursor.lookback_ms`) and a reason. Empty when the config is usable.
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |path: &str, reason: String| problems.push((path.to_owned(), reason));
        let url = match Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(_) => {
                problem("url", "must be an absolute http or https URL".into());
                None
            }
            Err(e) => {
                problem("url", format!("not a URL: {e}"));
                None
            }
        };
        if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&self.interval_ms) {
            problem(
                "interval_ms",
                format!("must be in {INTERVAL_MS_MIN}..={INTERVAL_MS_MAX}"),
            );
        }
        if !(1..=TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            problem("timeout_ms", format!("must be in 1..={TIMEOUT_MS_MAX}"));
        }
        for name in self.headers.keys() {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problem(&format!("headers.{name}"), "not a valid header name".into());
            }
        }
        check_field(&mut problem, "records", self.records.as_deref());
        self.validate_cursor(&mut problem);
        self.validate_pagination(&mut problem);
        check_field(&mut problem, "id.key", Some(&self.id.key));
        check_field(&mut problem, "id.version", self.id.version.as_deref());
        if self.event.source.is_empty() {
            problem("event.source", "must not be empty".into());
        }
        if self.event.event_type.is_empty() {
            problem("event.type", "must not be empty".into());
        }
        check_field(
            &mut problem,
            "event.subject_field",
            self.event.subject_field.as_deref(),
        );
        check_field(
            &mut problem,
            "event.partition_key_field",
            self.event.partition_key_field.as_deref(),
        );
        if let Some(url) = url {
            // The poller appends these parameters itself; a second copy in the URL would make
            // the API pick one of the two.
            let own = [
                Some(self.cursor.param.as_str()),
                self.pagination.page_param.as_deref(),
                self.pagination.page_size_param.as_deref(),
            ];
            for (name, _) in url.query_pairs() {
                if own.contains(&Some(name.as_ref())) {
                    problem(
                        "url",
                        format!(
                            "must not carry the query parameter {name:?}, which the poller sets"
                        ),
                    );
                }
            }
        }
        problems
    }

    fn validate_cursor(&self, problem: &mut impl FnMut(&str, String)) {
        let cursor = &self.cursor;
        if cursor.param.is_empty() {
            problem("cursor.param", "must not be empty".into());
        }
        check_field(problem, "cursor.field", Some(&cursor.field));
        if cursor.lookback_ms > LOOKBACK_MS_MAX {
            problem(
                "cursor.lookback_ms",
                format!("must be at most {LOOKBACK_MS_MAX} (7 days)"),
            );
        }
        match cursor.kind {
            CursorKind::Timestamp => {
                if let Some(initial) = &cursor.initial
                    && stamp_nanos(initial).is_none()
                {
                    problem(
                        "cursor.initial",
                        "must be an RFC 3339 timestamp or an integer (Unix milliseconds)".into(),
                    );
                }
            }
            CursorKind::Opaque => {
                if cursor.lookback_ms != 0 {
                    problem(
                        "cursor.lookback_ms",
                        "applies only to kind: timestamp (an opaque token cannot be moved back)"
                            .into(),
                    );
                }
            }
        }
        if cursor.initial.as_deref() == Some("") {
            problem(
                "cursor.initial",
                "must not be empty (omit it instead)".into(),
            );
        }
    }

    fn validate_pagination(&self, problem: &mut impl FnMut(&str, String)) {
        let p = &self.pagination;
        if !(1..=PAGES_MAX_BOUND).contains(&p.pages_max) {
            problem(
                "pagination.pages_max",
                format!("must be in 1..={PAGES_MAX_BOUND}"),
            );
        }
        if let Some(size) = p.page_size
            && !(1..=PAGE_SIZE_MAX).contains(&size)
        {
            problem(
                "pagination.page_size",
                format!("must be in 1..={PAGE_SIZE_MAX}"),
            );
        }
        if p.page_size_param.is_some() != p.page_size.is_some() {
            problem(
                "pagination.page_size",
                "page_size and page_size_param go together".into(),
            );
        }
        for (path, value) in [
            ("pagination.page_param", p.page_param.as_deref()),
            ("pagination.page_size_param", p.page_size_param.as_deref()),
        ] {
            if value == Some("") {
                problem(path, "must not be empty".into());
            }
        }
        let needs_page_param = matches!(
            p.style,
            PaginationStyle::CursorField | PaginationStyle::PageNumber
        );
        if needs_page_param != p.page_param.is_some() {
            problem(
                "pagination.page_param",
                "required by styles cursor_field and page_number, and only by them".into(),
            );
        }
        if (p.style == PaginationStyle::CursorField) != p.next_field.is_some() {
            problem(
                "pagination.next_field",
                "required by style cursor_field, and only by it".into(),
            );
        }
        check_field(problem, "pagination.next_field", p.next_field.as_deref());
    }
}

fn check_field(problem: &mut impl FnMut(&str, String), path: &str, field: Option<&str>) {
    if field == Some("") {
        problem(
            path,
            "must name a field, or be a JSON Pointer starting with /".into(),
        );
    }
}

/// Why [`HttpPoll::new`] refused a config. Messages name fields and secret references, never
/// secret values.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// [`HttpPollConfig::validate`] found problems.
    #[error("invalid http_poll config: {}", describe(.problems))]
    Invalid {
        /// `(path, reason)` pairs.
        problems: Vec<(String, String)>,
    },
    /// A header's secret did not resolve.
    #[error("headers.{name}: {source}")]
    Secret {
        /// The header name.
        name: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// A header's resolved secret is not a valid header value (a newline, a control byte).
    #[error("headers.{name}: the resolved secret is not a valid HTTP header value")]
    HeaderValue {
        /// The header name.
        name: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("http client: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
}

fn describe(problems: &[(String, String)]) -> String {
    let parts: Vec<String> = problems
        .iter()
        .map(|(path, reason)| format!("{path}: {reason}"))
        .collect();
    parts.join("; ")
}

/// Where the poller stands: the stored cursor, decoded. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    since: Option<String>,
    next: Option<PageState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pages: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Position {
    /// The start of a sync from `since`.
    fn sync_start(since: Option<String>) -> Position {
        Position {
            since,
            next: None,
            max: None,
            pages: 0,
        }
    }

    fn encode(&self) -> Result<String, SourceError> {
        let text = serde_json::to_string(self).map_err(|e| SourceError::Fatal {
            message: format!("encoding the cursor: {e}"),
        })?;
        if text.len() > CURSOR_BYTES_MAX {
            return Err(SourceError::Fatal {
                message: format!(
                    "the cursor would be {} bytes, more than {CURSOR_BYTES_MAX}: the API's page \
                     token or cursor values are too long",
                    text.len()
                ),
            });
        }
        Ok(text)
    }
}

/// The next page of a running sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum PageState {
    /// `link_header`: the absolute URL of the next page.
    Url(String),
    /// `cursor_field`: the token to send as `page_param`.
    Token(String),
    /// `page_number`: the page number to send as `page_param`.
    Page(u64),
}

/// What travels with a batch: the position it commits on ack (`None` for all but the last
/// batch of a page).
struct Ticket {
    position: Option<Position>,
}

/// One page, parsed.
struct Page {
    records: Vec<Value>,
    next: Option<PageState>,
}

/// The HTTP poller source. Build it with [`HttpPoll::new`], then drive it through [`Source`].
pub struct HttpPoll {
    config: HttpPollConfig,
    base: Url,
    client: reqwest::Client,
    /// The resolved header values, kept only to redact them from error excerpts.
    secrets: Vec<Secret>,
    interval: Duration,
    /// The position of the last acknowledged batch (or the one given to `open`).
    committed: Position,
    /// The position of the next request.
    read: Position,
    /// Draft events of the last page not yet handed out.
    pending: VecDeque<Value>,
    /// The position (and its encoding) the last batch of the pending page commits; `Some` while
    /// that batch is still to be handed out, even when the page had no records.
    pending_position: Option<(Position, String)>,
    /// When the running sync started (its first request).
    sync_started: Instant,
    /// `Some` between syncs: when the next one may start.
    next_sync_at: Option<Instant>,
}

impl fmt::Debug for HttpPoll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hand-written so that neither the client's headers nor the secrets can be printed.
        f.debug_struct("HttpPoll")
            .field("url", &self.config.url)
            .field("read", &self.read)
            .field("committed", &self.committed)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl HttpPoll {
    /// Validates the config, resolves the header secrets and builds the HTTP client.
    ///
    /// # Errors
    /// [`BuildError`]: an invalid config (every problem, by path), a header secret that does not
    /// resolve or is not a valid header value, or a client that cannot be built.
    pub fn new(config: HttpPollConfig) -> Result<HttpPoll, BuildError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(BuildError::Invalid { problems });
        }
        let base = Url::parse(&config.url).map_err(|e| BuildError::Invalid {
            problems: vec![("url".into(), e.to_string())],
        })?;
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        for (name, reference) in &config.headers {
            let secret = reference.resolve().map_err(|source| BuildError::Secret {
                name: name.clone(),
                source,
            })?;
            let header_name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| BuildError::Invalid {
                    problems: vec![(format!("headers.{name}"), "not a valid header name".into())],
                })?;
            let mut value = HeaderValue::from_str(secret.expose())
                .map_err(|_| BuildError::HeaderValue { name: name.clone() })?;
            // Keeps the value out of reqwest's and http's Debug output.
            value.set_sensitive(true);
            headers.insert(header_name, value);
            secrets.push(secret);
        }
        crate::install_tls_provider();
        let origin = base.origin();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= REDIRECTS_MAX {
                attempt.error(format!("more than {REDIRECTS_MAX} redirects"))
            } else if attempt.url().origin() == origin {
                attempt.follow()
            } else {
                // Another origin would receive the configured (secret) headers.
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .default_headers(headers)
            .redirect(redirects)
            .user_agent(concat!("gearbox-http-poll/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BuildError::Client {
                reason: error_chain(&e),
            })?;
        let start = Position::sync_start(config.cursor.initial.clone());
        Ok(HttpPoll {
            interval: Duration::from_millis(config.interval_ms),
            config,
            base,
            client,
            secrets,
            committed: start.clone(),
            read: start,
            pending: VecDeque::new(),
            pending_position: None,
            sync_started: Instant::now(),
            next_sync_at: None,
        })
    }

    /// Decodes a stored cursor and checks it against the config.
    fn decode(&self, text: &str) -> Result<Position, SourceError> {
        let position: Position = serde_json::from_str(text).map_err(|e| SourceError::Fatal {
            message: format!("the stored cursor is not an http_poll cursor: {e}"),
        })?;
        if self.config.cursor.kind == CursorKind::Timestamp {
            for value in [&position.since, &position.max].into_iter().flatten() {
                if stamp_nanos(value).is_none() {
                    return Err(SourceError::Fatal {
                        message: format!(
                            "the stored cursor holds {value:?}, which is not a timestamp \
                             (cursor.kind is timestamp)"
                        ),
                    });
                }
            }
        }
        let fits = match (&position.next, self.config.pagination.style) {
            (None, _) => true,
            (Some(PageState::Url(url)), PaginationStyle::LinkHeader) => {
                Url::parse(url).is_ok_and(|url| url.origin() == self.base.origin())
            }
            (Some(PageState::Token(_)), PaginationStyle::CursorField)
            | (Some(PageState::Page(_)), PaginationStyle::PageNumber) => true,
            _ => false,
        };
        if fits {
            return Ok(position);
        }
        // The pagination config changed under a running sync. Starting that sync over from its
        // lower bound reads some records twice (deduplicated by id) and loses none.
        tracing::warn!(
            url = %self.config.url,
            "the stored cursor's page does not fit the pagination config; restarting the sync"
        );
        Ok(Position::sync_start(position.since))
    }

    /// Hands out the next batch of the pending page, if any.
    fn take_batch(&mut self, records_max: usize) -> Option<SourceBatch> {
        self.pending_position.as_ref()?;
        let count = records_max.max(1).min(self.pending.len());
        let records: Vec<Value> = self.pending.drain(..count).collect();
        let (position, cursor) = if self.pending.is_empty() {
            self.pending_position.take().unzip()
        } else {
            (None, None)
        };
        Some(SourceBatch {
            records,
            rejected: Vec::new(),
            cursor,
            token: Some(Box::new(Ticket { position })),
        })
    }

    /// The URL of the request for `position`.
    fn request_url(&self, position: &Position) -> Result<Url, SourceError> {
        if let Some(PageState::Url(url)) = &position.next {
            return Url::parse(url).map_err(|e| SourceError::Fatal {
                message: format!("the next page URL in the cursor is invalid: {e}"),
            });
        }
        let pagination = &self.config.pagination;
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(since) = &position.since {
            pairs.push((&self.config.cursor.param, self.lower_bound(since)));
        }
        if let (Some(param), Some(size)) = (&pagination.page_size_param, pagination.page_size) {
            pairs.push((param, size.to_string()));
        }
        if let Some(param) = &pagination.page_param {
            match &position.next {
                Some(PageState::Token(token)) => pairs.push((param, token.clone())),
                Some(PageState::Page(page)) => pairs.push((param, page.to_string())),
                _ if pagination.style == PaginationStyle::PageNumber => {
                    pairs.push((param, "1".into()));
                }
                _ => {}
            }
        }
        let mut url = self.base.clone();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        Ok(url)
    }

    /// The lower bound sent for `since`: moved back by the lookback for timestamp cursors.
    fn lower_bound(&self, since: &str) -> String {
        let lookback_ms = self.config.cursor.lookback_ms;
        if self.config.cursor.kind == CursorKind::Opaque || lookback_ms == 0 {
            return since.to_owned();
        }
        lower_bound(since, lookback_ms)
    }

    /// Sends one request and reads its body.
    async fn fetch(&self, url: &Url) -> Result<(Vec<u8>, Option<String>, StatusCode), SourceError> {
        let shown = shown_url(url);
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| transport_error(&e, &shown, self.config.timeout_ms))?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.status_error(&shown, response).await);
        }
        let links: Vec<&str> = response
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .collect();
        let link = (!links.is_empty()).then(|| links.join(", "));
        if let Some(length) = response.content_length()
            && length > BODY_BYTES_MAX as u64
        {
            return Err(oversized(&shown));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(&e, &shown, self.config.timeout_ms))?
        {
            if body.len() + chunk.len() > BODY_BYTES_MAX {
                return Err(oversized(&shown));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, link, status))
    }

    /// The error for a non-2xx answer.
    async fn status_error(&self, shown: &str, mut response: reqwest::Response) -> SourceError {
        let status = response.status();
        let retry_after_ms = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, chrono::Utc::now().timestamp_millis()));
        // Read past the excerpt by the longest secret, so that a secret echoed across the cut
        // is redacted whole before the cut, not left half visible.
        let secret_bytes_max = self.secrets.iter().map(|s| s.expose().len()).max();
        let read_bytes_max = ERROR_EXCERPT_BYTES_MAX + secret_bytes_max.unwrap_or(0);
        let mut excerpt = Vec::new();
        // The excerpt is best effort: a body that breaks off still leaves the status.
        while excerpt.len() < read_bytes_max {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                _ => break,
            }
        }
        excerpt.truncate(read_bytes_max);
        let mut excerpt = self.redact(&String::from_utf8_lossy(&excerpt));
        let mut end = ERROR_EXCERPT_BYTES_MAX.min(excerpt.len());
        while !excerpt.is_char_boundary(end) {
            end -= 1;
        }
        excerpt.truncate(end);
        let message = format!("GET {shown} answered {status}: {excerpt:?}");
        let transient = status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error();
        if transient {
            SourceError::Transient {
                message,
                retry_after_ms,
            }
        } else if status.is_redirection() {
            SourceError::Fatal {
                message: format!("{message} (redirects to another origin are not followed)"),
            }
        } else {
            SourceError::Fatal { message }
        }
    }

    /// Replaces every resolved header value in `text` with `***`, and control characters with
    /// spaces (an excerpt is one line).
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.expose(), "***");
        }
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    }

    /// Parses a page: its records and where the next one is.
    fn parse_page(
        &self,
        url: &Url,
        body: &[u8],
        link: Option<&str>,
        status: StatusCode,
    ) -> Result<Page, SourceError> {
        let shown = shown_url(url);
        if status == StatusCode::NO_CONTENT {
            return Ok(Page {
                records: Vec::new(),
                next: None,
            });
        }
        let mut body: Value = serde_json::from_slice(body).map_err(|e| SourceError::Fatal {
            message: format!(
                "GET {shown}: malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        })?;
        let next = self.next_page(url, &shown, &body, link)?;
        let records = match &self.config.records {
            None => body.as_array_mut().map(std::mem::take),
            Some(path) => field_mut(&mut body, path)
                .and_then(Value::as_array_mut)
                .map(std::mem::take),
        };
        let records = records.ok_or_else(|| SourceError::Fatal {
            message: match &self.config.records {
                None => format!(
                    "GET {shown}: the body is not a JSON array (set records: to the field that \
                     holds the array)"
                ),
                Some(path) => format!("GET {shown}: the body has no array at records: {path:?}"),
            },
        })?;
        let next = match next {
            Some(PageState::Page(page)) => {
                let short = self
                    .config
                    .pagination
                    .page_size
                    .is_some_and(|size| records.len() < size as usize);
                (!records.is_empty() && !short).then_some(PageState::Page(page))
            }
            other => other,
        };
        Ok(Page { records, next })
    }

    /// The next page as the API announced it (for `page_number`: the following page, which
    /// [`HttpPoll::parse_page`] drops when this one was the last).
    fn next_page(
        &self,
        url: &Url,
        shown: &str,
        body: &Value,
        link: Option<&str>,
    ) -> Result<Option<PageState>, SourceError> {
        let pagination = &self.config.pagination;
        match pagination.style {
            PaginationStyle::None => Ok(None),
            PaginationStyle::LinkHeader => {
                let Some(target) = link.and_then(next_link) else {
                    return Ok(None);
                };
                let next = url.join(&target).map_err(|e| SourceError::Fatal {
                    message: format!("GET {shown}: the Link rel=\"next\" URL is invalid: {e}"),
                })?;
                if next.origin() != self.base.origin() {
                    return Err(SourceError::Fatal {
                        message: format!(
                            "GET {shown}: the Link rel=\"next\" URL leaves the configured origin; \
                             not followed, because it would receive the configured headers"
                        ),
                    });
                }
                if next == *url {
                    return Err(pagination_loop(shown));
                }
                Ok(Some(PageState::Url(next.into())))
            }
            PaginationStyle::CursorField => {
                let path = pagination.next_field.as_deref().unwrap_or_default();
                let token = field(body, path).and_then(scalar_text);
                match token {
                    Some(token) if !token.is_empty() => {
                        let current = match &self.read.next {
                            Some(PageState::Token(current)) => Some(current),
                            _ => None,
                        };
                        if current == Some(&token) {
                            return Err(pagination_loop(shown));
                        }
                        Ok(Some(PageState::Token(token)))
                    }
                    _ => Ok(None),
                }
            }
            PaginationStyle::PageNumber => {
                let page = match self.read.next {
                    Some(PageState::Page(page)) => page,
                    _ => 1,
                };
                Ok(Some(PageState::Page(page.saturating_add(1))))
            }
        }
    }

    /// Turns a page into pending events and moves the read position past it.
    fn apply_page(&mut self, page: Page) -> Result<(), SourceError> {
        let cursor = &self.config.cursor;
        let mut max = self.read.max.clone();
        let mut events = VecDeque::with_capacity(page.records.len());
        for record in page.records {
            if let Some(value) = field(&record, &cursor.field).and_then(scalar_text) {
                max = advance(cursor.kind, max, value, &cursor.field);
            }
            events.push_back(self.draft_event(record));
        }
        let position = match page.next {
            Some(next) => Position {
                since: self.read.since.clone(),
                next: Some(next),
                max,
                pages: self.read.pages + 1,
            },
            None => {
                let since = match (cursor.kind, max) {
                    (CursorKind::Timestamp, max) => greater(self.read.since.clone(), max),
                    (CursorKind::Opaque, Some(max)) => Some(max),
                    (CursorKind::Opaque, None) => self.read.since.clone(),
                };
                Position::sync_start(since)
            }
        };
        let encoded = position.encode()?;
        tracing::debug!(
            url = %self.config.url,
            records = events.len(),
            sync_done = position.next.is_none(),
            "http_poll page read"
        );
        if position.next.is_none() {
            self.next_sync_at = Some(self.sync_started + self.interval);
        }
        self.read = position.clone();
        self.pending = events;
        self.pending_position = Some((position, encoded));
        Ok(())
    }

    /// A record as a draft CloudEvent. A record without its key (or its configured version)
    /// gets `"id": null`, so the runtime's validation dead-letters it with an error naming `id`
    /// instead of the poller inventing an id that could collide.
    fn draft_event(&self, record: Value) -> Value {
        let config = &self.config;
        let key = field(&record, &config.id.key)
            .and_then(scalar_text)
            .filter(|key| !key.is_empty());
        let version = config
            .id
            .version
            .as_deref()
            .map(|path| field(&record, path).and_then(scalar_text));
        let id = match (&key, version) {
            (Some(key), None) => Some(key.clone()),
            (Some(key), Some(Some(version))) => Some(format!("{}:{version}", escape_key(key))),
            _ => None,
        };
        if id.is_none() {
            tracing::warn!(
                url = %config.url,
                key = %config.id.key,
                "http_poll record without its id fields; emitted with a null id"
            );
        }
        let partition_key = match &config.event.partition_key_field {
            Some(path) => field(&record, path).and_then(scalar_text),
            None => key,
        };
        let time = field(&record, &config.cursor.field)
            .and_then(Value::as_str)
            .filter(|text| DateTime::parse_from_rfc3339(text).is_ok())
            .map(str::to_owned);
        let subject = config
            .event
            .subject_field
            .as_deref()
            .and_then(|path| field(&record, path).and_then(scalar_text));
        let mut event = Map::new();
        event.insert("specversion".into(), "1.0".into());
        event.insert("id".into(), id.map_or(Value::Null, Value::String));
        event.insert("source".into(), config.event.source.clone().into());
        event.insert("type".into(), config.event.event_type.clone().into());
        if let Some(time) = time {
            event.insert("time".into(), time.into());
        }
        if let Some(subject) = subject {
            event.insert("subject".into(), subject.into());
        }
        if let Some(partition_key) = partition_key {
            event.insert("partitionkey".into(), partition_key.into());
        }
        event.insert("data".into(), record);
        Value::Object(event)
    }
}

impl Source for HttpPoll {
    fn kind(&self) -> &'static str {
        "http_poll"
    }

    async fn open(&mut self, cursor: Option<String>) -> Result<(), SourceError> {
        let position = match cursor {
            None => Position::sync_start(self.config.cursor.initial.clone()),
            Some(text) => self.decode(&text)?,
        };
        self.committed = position.clone();
        self.read = position;
        self.pending.clear();
        self.pending_position = None;
        self.sync_started = Instant::now();
        self.next_sync_at = None;
        Ok(())
    }

    async fn next_batch(&mut self, records_max: usize) -> Result<Option<SourceBatch>, SourceError> {
        if let Some(batch) = self.take_batch(records_max) {
            return Ok(Some(batch));
        }
        // Every await below leaves `self` as it was when it is dropped: the state changes only
        // after the request's body is read.
        if let Some(at) = self.next_sync_at {
            tokio::time::sleep_until(at).await;
            self.next_sync_at = None;
            self.sync_started = Instant::now();
        }
        let pages_max = self.config.pagination.pages_max;
        if self.read.next.is_some() && self.read.pages >= pages_max {
            return Err(SourceError::Fatal {
                message: format!(
                    "{pages_max} pages read in one sync and the API still has a next page: raise \
                     pagination.pages_max, or check the API for a pagination loop"
                ),
            });
        }
        let url = self.request_url(&self.read)?;
        let (body, link, status) = self.fetch(&url).await?;
        let page = self.parse_page(&url, &body, link.as_deref(), status)?;
        self.apply_page(page)?;
        Ok(self.take_batch(records_max))
    }

    async fn ack(
        &mut self,
        token: Option<AckToken>,
        _outcomes: Vec<RecordOutcome>,
    ) -> Result<(), SourceError> {
        let position = token
            .and_then(|token| token.downcast::<Ticket>().ok())
            .and_then(|ticket| ticket.position);
        if let Some(position) = position {
            self.committed = position;
        }
        Ok(())
    }

    async fn nack(&mut self, _token: Option<AckToken>, error: &str) {
        tracing::debug!(url = %self.config.url, error, "http_poll batch nacked; rewinding");
        self.pending.clear();
        self.pending_position = None;
        self.read = self.committed.clone();
        self.next_sync_at = None;
    }
}

/// The field at `path`: a top-level field, or a JSON Pointer when `path` starts with `/`.
fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.starts_with('/') {
        value.pointer(path)
    } else {
        value.get(path)
    }
}

fn field_mut<'a>(value: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.starts_with('/') {
        value.pointer_mut(path)
    } else {
        value.get_mut(path)
    }
}

/// A scalar as text (numbers in their JSON form); `None` for null, arrays and objects.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Percent-encodes `%` and `:` in a key, so that `key:version` splits at its first `:` and two
/// different (key, version) pairs never make the same id.
fn escape_key(key: &str) -> String {
    key.replace('%', "%25").replace(':', "%3A")
}

/// A timestamp cursor value as nanoseconds since the epoch: RFC 3339, or an integer taken as
/// Unix milliseconds.
fn stamp_nanos(text: &str) -> Option<i128> {
    if let Ok(millis) = text.parse::<i64>() {
        return Some(i128::from(millis) * 1_000_000);
    }
    let time = DateTime::parse_from_rfc3339(text).ok()?;
    Some(i128::from(time.timestamp()) * 1_000_000_000 + i128::from(time.timestamp_subsec_nanos()))
}

/// The running max after reading `value`.
fn advance(kind: CursorKind, max: Option<String>, value: String, field: &str) -> Option<String> {
    match kind {
        CursorKind::Opaque => Some(value),
        CursorKind::Timestamp if stamp_nanos(&value).is_none() => {
            // The record is still emitted; it just cannot move the cursor.
            tracing::warn!(
                field,
                "http_poll record's cursor value is not a timestamp; ignored for the cursor"
            );
            max
        }
        CursorKind::Timestamp => greater(max, Some(value)),
    }
}

/// The later of two timestamp cursor values (both already checked to parse).
fn greater(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if stamp_nanos(&b) > stamp_nanos(&a) {
                Some(b)
            } else {
                Some(a)
            }
        }
        (a, b) => a.or(b),
    }
}

/// `since` moved back by `lookback_ms`; an RFC 3339 value keeps its offset, an integer stays an
/// integer. A value that does not parse is sent as it is.
fn lower_bound(since: &str, lookback_ms: u64) -> String {
    let lookback = i64::try_from(lookback_ms).unwrap_or(i64::MAX);
    if let Ok(millis) = since.parse::<i64>() {
        return millis.saturating_sub(lookback).to_string();
    }
    let Ok(time) = DateTime::parse_from_rfc3339(since) else {
        return since.to_owned();
    };
    let earlier: Option<DateTime<FixedOffset>> =
        time.checked_sub_signed(chrono::TimeDelta::milliseconds(lookback));
    earlier.map_or_else(
        || since.to_owned(),
        |earlier| earlier.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

/// The URL as shown in errors: without its query, which may carry page tokens.
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.into()
}

fn oversized(shown: &str) -> SourceError {
    SourceError::Fatal {
        message: format!(
            "GET {shown}: the response body is larger than {BODY_BYTES_MAX} bytes; lower \
             pagination.page_size"
        ),
    }
}

fn pagination_loop(shown: &str) -> SourceError {
    SourceError::Fatal {
        message: format!(
            "GET {shown}: the API's next page is the page just read (a pagination loop)"
        ),
    }
}

/// A request that got no complete answer: always worth retrying.
fn transport_error(error: &reqwest::Error, shown: &str, timeout_ms: u64) -> SourceError {
    if error.is_redirect() {
        return SourceError::Fatal {
            message: format!("GET {shown}: {}", error_chain(error)),
        };
    }
    let message = if error.is_timeout() {
        format!("GET {shown} timed out after {timeout_ms} ms")
    } else {
        format!("GET {shown}: {}", error_chain(error))
    };
    SourceError::transient(message)
}

/// An error and its sources, without the URL (the callers add a query-less one).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The target of the first `rel="next"` link of a `Link` header (RFC 8288), unresolved.
/// Tolerates whitespace, several links, quoted and unquoted parameters, several relation types in
/// one `rel`, and skips malformed entries.
fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return None;
        }
        let Some(after) = rest.strip_prefix('<') else {
            rest = skip_entry(rest)?;
            continue;
        };
        let end = after.find('>')?;
        let target = after[..end].trim();
        rest = &after[end + 1..];
        let mut is_next = false;
        while let Some(params) = rest.trim_start().strip_prefix(';') {
            let (name, value, after_param) = link_param(params);
            rest = after_param;
            if name.eq_ignore_ascii_case("rel")
                && value
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
            {
                is_next = true;
            }
        }
        if is_next {
            return Some(target.to_owned());
        }
        rest = rest.trim_start();
        if !rest.is_empty() && !rest.starts_with(',') {
            rest = skip_entry(rest)?;
        }
    }
}

/// Skips to the next top-level `,` of a `Link` header (or `None` at the end).
fn skip_entry(rest: &str) -> Option<&str> {
    rest.find(',').map(|at| &rest[at..])
}

/// One `name=value` (or `name="quoted"`, or a bare `name`) parameter: name, value, rest.
fn link_param(text: &str) -> (&str, String, &str) {
    let text = text.trim_start();
    let name_end = text
        .find(|c: char| c == '=' || c == ';' || c == ',' || c.is_whitespace())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    let rest = text[name_end..].trim_start();
    let Some(rest) = rest.strip_prefix('=') else {
        return (name, String::new(), rest);
    };
    let rest = rest.trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut escaped = false;
        for (at, c) in quoted.char_indices() {
            if escaped {
                value.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                return (name, value, &quoted[at + 1..]);
            } else {
                value.push(c);
            }
        }
        return (name, value, "");
    }
    let end = rest.find([';', ',']).unwrap_or(rest.len());
    (name, rest[..end].trim().to_owned(), &rest[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> HttpPollConfig {
        let mut base = json!({
            "url": "http://127.0.0.1:1/records",
            "cursor": {"param": "updated_since", "field": "updated_at", "kind": "timestamp"},
            "id": {"key": "id", "version": "updated_at"},
            "event": {"source": "https://api.example.com/records", "type": "com.example.record"},
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut Value, extra: Value) {
        match (base, extra) {
            (Value::Object(base), Value::Object(extra)) => {
                for (key, value) in extra {
                    merge(base.entry(key).or_insert(Value::Null), value);
                }
            }
            (base, extra) => *base = extra,
        }
    }

    fn poll(extra: Value) -> HttpPoll {
        HttpPoll::new(config(extra)).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(json!({}));
        assert_eq!(c.interval_ms, INTERVAL_MS_DEFAULT);
        assert_eq!(c.timeout_ms, TIMEOUT_MS_DEFAULT);
        assert_eq!(c.pagination.style, PaginationStyle::None);
        assert_eq!(c.pagination.pages_max, PAGES_MAX_DEFAULT);
        assert_eq!(c.cursor.lookback_ms, 0);
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let mut raw = json!({
            "url": "http://x/", "cursor": {"param": "p", "field": "f", "kind": "opaque", "lookbak_ms": 1},
            "id": {"key": "id"}, "event": {"source": "s", "type": "t"},
        });
        let err = serde_json::from_value::<HttpPollConfig>(raw.clone()).unwrap_err();
        assert!(err.to_string().contains("lookbak_ms"), "{err}");
        raw["cursor"].as_object_mut().unwrap().remove("lookbak_ms");
        raw["extra"] = json!(1);
        assert!(serde_json::from_value::<HttpPollConfig>(raw).is_err());
    }

    #[test]
    fn validate_names_each_limit() {
        let check = |extra: Value, path: &str| {
            let problems = config(extra.clone()).validate();
            assert!(
                problems.iter().any(|(p, _)| p == path),
                "{extra} -> {problems:?}, expected {path}"
            );
        };
        check(json!({"url": "ftp://x/"}), "url");
        check(json!({"url": "not a url"}), "url");
        check(json!({"url": "http://x/r?updated_since=1"}), "url");
        check(json!({"interval_ms": INTERVAL_MS_MIN - 1}), "interval_ms");
        check(json!({"timeout_ms": 0}), "timeout_ms");
        check(json!({"timeout_ms": TIMEOUT_MS_MAX + 1}), "timeout_ms");
        check(
            json!({"cursor": {"lookback_ms": LOOKBACK_MS_MAX + 1}}),
            "cursor.lookback_ms",
        );
        check(
            json!({"cursor": {"kind": "opaque", "lookback_ms": 1}}),
            "cursor.lookback_ms",
        );
        check(
            json!({"cursor": {"initial": "yesterday"}}),
            "cursor.initial",
        );
        check(
            json!({"pagination": {"pages_max": PAGES_MAX_BOUND + 1}}),
            "pagination.pages_max",
        );
        check(
            json!({"pagination": {"pages_max": 0}}),
            "pagination.pages_max",
        );
        check(
            json!({"pagination": {"style": "cursor_field", "page_param": "c"}}),
            "pagination.next_field",
        );
        check(
            json!({"pagination": {"style": "page_number"}}),
            "pagination.page_param",
        );
        check(
            json!({"pagination": {"page_size": 10}}),
            "pagination.page_size",
        );
        check(
            json!({"pagination": {"page_size": 0, "page_size_param": "n"}}),
            "pagination.page_size",
        );
        check(json!({"id": {"key": ""}}), "id.key");
        check(json!({"event": {"type": ""}}), "event.type");
        let ok = config(json!({
            "cursor": {"initial": "2025-01-01T00:00:00Z", "lookback_ms": 60000},
            "pagination": {"style": "page_number", "page_param": "page", "page_size_param": "n", "page_size": 50},
        }));
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    }

    #[test]
    fn build_errors_name_the_header_not_the_value() {
        let err = HttpPoll::new(config(json!({
            "headers": {"Authorization": "${env:GEARBOX_HTTP_POLL_SURELY_UNSET}"}
        })))
        .unwrap_err();
        assert!(matches!(&err, BuildError::Secret { name, .. } if name == "Authorization"));
        assert!(
            err.to_string().starts_with("headers.Authorization:"),
            "{err}"
        );
        let err = HttpPoll::new(config(json!({"interval_ms": 1}))).unwrap_err();
        assert!(err.to_string().contains("interval_ms"), "{err}");
    }

    #[test]
    fn cursor_round_trips_and_stays_small() {
        let position = Position {
            since: Some("2025-01-01T00:00:00.000Z".into()),
            next: Some(PageState::Page(3)),
            max: Some("2025-01-02T00:00:00.000Z".into()),
            pages: 2,
        };
        let text = position.encode().unwrap();
        assert_eq!(
            text,
            r#"{"since":"2025-01-01T00:00:00.000Z","next":{"page":3},"max":"2025-01-02T00:00:00.000Z","pages":2}"#
        );
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), position);
        let idle = Position::sync_start(None).encode().unwrap();
        assert_eq!(idle, r#"{"since":null,"next":null}"#);
        let huge = Position {
            next: Some(PageState::Token("x".repeat(CURSOR_BYTES_MAX))),
            ..position
        };
        assert!(matches!(huge.encode(), Err(SourceError::Fatal { .. })));
    }

    #[tokio::test]
    async fn open_checks_the_stored_cursor() {
        let mut source = poll(json!({}));
        assert!(matches!(
            source.open(Some("not json".into())).await,
            Err(SourceError::Fatal { .. })
        ));
        assert!(matches!(
            source
                .open(Some(r#"{"since":"yesterday","next":null}"#.into()))
                .await,
            Err(SourceError::Fatal { .. })
        ));
        // A page of another pagination style restarts the sync from its lower bound.
        source
            .open(Some(
                r#"{"since":"2025-01-01T00:00:00Z","next":{"token":"t"},"max":"2025-01-03T00:00:00Z","pages":4}"#.into(),
            ))
            .await
            .unwrap();
        assert_eq!(
            source.read,
            Position::sync_start(Some("2025-01-01T00:00:00Z".into()))
        );
    }

    #[test]
    fn lookback_moves_the_lower_bound_back() {
        assert_eq!(
            lower_bound("2025-01-01T00:00:10.500Z", 1_000),
            "2025-01-01T00:00:09.500Z"
        );
        assert_eq!(
            lower_bound("2025-01-01T00:00:00+02:00", 60_000),
            "2024-12-31T23:59:00+02:00"
        );
        assert_eq!(lower_bound("1700000000000", 500), "1699999999500");
        assert_eq!(lower_bound("opaque", 500), "opaque");
        let opaque = poll(json!({"cursor": {"kind": "opaque"}}));
        assert_eq!(opaque.lower_bound("42"), "42");
    }

    #[test]
    fn request_urls_carry_the_cursor_and_the_page() {
        let source = poll(json!({
            "url": "http://127.0.0.1:1/records?fixed=1",
            "cursor": {"lookback_ms": 1000},
            "pagination": {"style": "page_number", "page_param": "page", "page_size_param": "n", "page_size": 5},
        }));
        let mut position = Position::sync_start(Some("2025-01-01T00:00:01Z".into()));
        assert_eq!(
            source.request_url(&position).unwrap().as_str(),
            "http://127.0.0.1:1/records?fixed=1&updated_since=2025-01-01T00%3A00%3A00Z&n=5&page=1"
        );
        position.next = Some(PageState::Page(7));
        assert!(
            source
                .request_url(&position)
                .unwrap()
                .as_str()
                .ends_with("&page=7")
        );
        let plain = poll(json!({}));
        assert_eq!(
            plain
                .request_url(&Position::sync_start(None))
                .unwrap()
                .as_str(),
            "http://127.0.0.1:1/records"
        );
    }

    #[test]
    fn timestamps_compare_as_instants() {
        assert_eq!(
            greater(
                Some("2025-01-01T01:00:00+02:00".into()),
                Some("2025-01-01T00:00:00Z".into())
            ),
            Some("2025-01-01T00:00:00Z".into())
        );
        assert_eq!(
            advance(
                CursorKind::Timestamp,
                Some("2025-01-01T00:00:00Z".into()),
                "garbage".into(),
                "updated_at"
            ),
            Some("2025-01-01T00:00:00Z".into())
        );
        assert_eq!(
            advance(CursorKind::Opaque, Some("b".into()), "a".into(), "seq"),
            Some("a".into())
        );
        assert_eq!(stamp_nanos("1000"), stamp_nanos("1970-01-01T00:00:01Z"));
    }

    #[test]
    fn events_have_deterministic_ids() {
        let source = poll(json!({"event": {"subject_field": "name"}}));
        let record = json!({"id": "a:1%", "updated_at": "2025-01-01T00:00:00.123Z", "name": "n"});
        let event = source.draft_event(record.clone());
        assert_eq!(
            event,
            json!({
                "specversion": "1.0",
                "id": "a%3A1%25:2025-01-01T00:00:00.123Z",
                "source": "https://api.example.com/records",
                "type": "com.example.record",
                "time": "2025-01-01T00:00:00.123Z",
                "subject": "n",
                "partitionkey": "a:1%",
                "data": record,
            })
        );
        assert_eq!(source.draft_event(record.clone()), event);
        let numeric = source.draft_event(json!({"id": 7, "updated_at": 1700000000000_i64}));
        assert_eq!(numeric["id"], "7:1700000000000");
        assert!(numeric.get("time").is_none());
        let keyless = source.draft_event(json!({"updated_at": "2025-01-01T00:00:00Z"}));
        assert_eq!(keyless["id"], Value::Null);
        let versionless = source.draft_event(json!({"id": "a"}));
        assert_eq!(versionless["id"], Value::Null);
        let key_only = poll(json!({"id": {"key": "/meta/key", "version": null}}));
        let event = key_only.draft_event(json!({"meta": {"key": "k:1"}}));
        assert_eq!(event["id"], "k:1");
        assert_eq!(event["partitionkey"], "k:1");
    }

    #[test]
    fn link_headers_parse_robustly() {
        let check = |header: &str, expect: Option<&str>| {
            assert_eq!(next_link(header).as_deref(), expect, "{header}");
        };
        check(
            r#"<https://a/x?page=2>; rel="next""#,
            Some("https://a/x?page=2"),
        );
        check(
            r#"<https://a/x?page=1>; rel="prev", <https://a/x?page=3>; rel="next""#,
            Some("https://a/x?page=3"),
        );
        check(r#"</x?p=2>;rel=next"#, Some("/x?p=2"));
        check(r#"< /x?p=2 > ; REL = "last Next""#, Some("/x?p=2"));
        check(
            r#"<https://a/?a=1,2>; title="a, \"b\"; c"; rel="next""#,
            Some("https://a/?a=1,2"),
        );
        check(r#"garbage, <https://a/n>; rel="next""#, Some("https://a/n"));
        check(r#"<https://a/l>; rel="last""#, None);
        check(r#"<https://a/l>; rel="nextpage""#, None);
        check("", None);
        check("<unterminated; rel=next", None);
        check(r#"<a>; rel="next"#, Some("a"));
        check(";;;,,,<<>>", None);
    }

    #[test]
    fn link_parsing_never_panics() {
        // Every string of up to five characters over the header's syntax characters (and one
        // multi-byte character, to catch slicing off a char boundary).
        let alphabet = ['<', '>', ';', ',', '=', '"', '\\', ' ', 'n', 'é'];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut longer = Vec::with_capacity(frontier.len() * alphabet.len());
            for text in &frontier {
                for c in alphabet {
                    let mut next = text.clone();
                    next.push(c);
                    let _ = next_link(&next);
                    longer.push(next);
                }
            }
            frontier = longer;
        }
        assert_eq!(frontier.len(), 100_000);
    }

    #[test]
    fn excerpts_redact_secrets_and_control_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "Bearer s3cr3t\n").unwrap();
        let source = poll(json!({
            "headers": {"Authorization": format!("${{file:{}}}", path.display())}
        }));
        assert_eq!(
            source.redact("bad token Bearer s3cr3t\nhere"),
            "bad token *** here"
        );
        assert!(!format!("{source:?}").contains("s3cr3t"));
    }
}
