//! A local JSON API to poll: the gear behind the HTTP poller's tests.
//!
//! It holds records `{id, updated_at, value}` and answers `GET .../records?updated_since=...`
//! with the records whose `updated_at` is at or after the bound, sorted by `(updated_at, id)`, in
//! one of four pagination styles chosen by path (see [`Pagination`]). `updated_at` is RFC 3339
//! UTC with milliseconds from a strictly increasing server clock, so every version of a record
//! has its own timestamp and `id:updated_at` names one version.
//!
//! Switches: inject failures ([`PollApi::fail_next`]), move records while a sync is paging
//! ([`PollApi::update_during_sync`]) and demand a header ([`PollApi::require_header`]).
//!
//! It runs on its own thread and runtime, so it works under any test runtime (or none), and
//! stops when dropped. Another test crate includes it with
//! `#[path = "../../connectors/tests/support/poll_api.rs"] mod poll_api;`; it needs only
//! `axum`, `tokio`, `serde_json` and `chrono`.
//!
//! Limits: `page_size` defaults to [`PAGE_SIZE_DEFAULT`] and is at most [`PAGE_SIZE_MAX`].
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Records per page when the request does not say.
pub const PAGE_SIZE_DEFAULT: usize = 100;
/// Largest `page_size` accepted.
pub const PAGE_SIZE_MAX: usize = 10_000;

/// The pagination styles, one path each. Every style takes `updated_since` (RFC 3339) and
/// `page_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pagination {
    /// `/records`: the body is the array of all matching records.
    None,
    /// `/link/records`: the body is an array; a `Link` header carries a relative
    /// `rel="next"` URL (keyset: it names the last record read).
    LinkHeader,
    /// `/cursor/records?cursor=...`: the body is `{"records": [...], "next": token | null}`
    /// (keyset).
    CursorField,
    /// `/paged/records?page=n` (from 1): the body is `{"records": [...]}` (offset: an update
    /// during a sync shifts later records onto earlier pages).
    PageNumber,
}

impl Pagination {
    /// Every style.
    pub const ALL: [Pagination; 4] = [
        Pagination::None,
        Pagination::LinkHeader,
        Pagination::CursorField,
        Pagination::PageNumber,
    ];

    /// The style's name in the poller's config (`pagination.style`).
    pub fn style(self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::LinkHeader => "link_header",
            Pagination::CursorField => "cursor_field",
            Pagination::PageNumber => "page_number",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Pagination::None => "/records",
            Pagination::LinkHeader => "/link/records",
            Pagination::CursorField => "/cursor/records",
            Pagination::PageNumber => "/paged/records",
        }
    }
}

/// One record, as the API serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRecord {
    /// The business key.
    pub id: String,
    /// The version: RFC 3339 UTC with milliseconds.
    pub updated_at: String,
    /// The payload.
    pub value: Value,
    updated_ms: i64,
}

impl ApiRecord {
    /// The record as JSON, as served.
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "updated_at": self.updated_at, "value": self.value})
    }

    /// `id:updated_at`: the event id the poller gives this version (with `id.version:
    /// updated_at`; ids here contain no `:` or `%`, so no escaping applies).
    pub fn event_id(&self) -> String {
        format!("{}:{}", self.id, self.updated_at)
    }
}

#[derive(Debug, Default)]
struct Failure {
    remaining: u32,
    status: u16,
    retry_after: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<String, ApiRecord>,
    clock_ms: i64,
    requests: u64,
    failure: Failure,
    update_during_sync: Option<(u32, Vec<String>)>,
    required_header: Option<(String, String)>,
}

impl Inner {
    /// The next server timestamp: wall-clock milliseconds, but strictly after the last one.
    fn stamp(&mut self) -> i64 {
        self.clock_ms = chrono::Utc::now().timestamp_millis().max(self.clock_ms + 1);
        self.clock_ms
    }

    fn upsert(&mut self, id: &str, value: Option<Value>) -> ApiRecord {
        let updated_ms = self.stamp();
        let value = value
            .or_else(|| self.records.get(id).map(|r| r.value.clone()))
            .unwrap_or(Value::Null);
        let record = ApiRecord {
            id: id.to_owned(),
            updated_at: format_ms(updated_ms),
            value,
            updated_ms,
        };
        self.records.insert(id.to_owned(), record.clone());
        record
    }

    fn sorted(&self) -> Vec<ApiRecord> {
        let mut records: Vec<ApiRecord> = self.records.values().cloned().collect();
        records.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        records
    }
}

type Shared = Arc<Mutex<Inner>>;

/// The running API. Dropping it stops the server.
#[derive(Debug)]
pub struct PollApi {
    addr: SocketAddr,
    inner: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PollApi {
    /// Starts the API on `127.0.0.1` on a free port, with no records.
    ///
    /// # Panics
    /// If the port cannot be bound or the runtime cannot start.
    pub fn start() -> PollApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the poll API");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("the poll API's address");
        let inner = Shared::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = axum::Router::new()
            .route(Pagination::None.path(), get(serve_none))
            .route(Pagination::LinkHeader.path(), get(serve_link))
            .route(Pagination::CursorField.path(), get(serve_cursor))
            .route(Pagination::PageNumber.path(), get(serve_paged))
            .with_state(inner.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the poll API's runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                // Dropping the server future and then the runtime ends every connection, so
                // an idle keep-alive connection cannot hold the drop up.
                tokio::select! {
                    _ = axum::serve(listener, app) => {}
                    _ = stopped => {}
                }
            });
        });
        PollApi {
            addr,
            inner,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The endpoint of a pagination style: `http://127.0.0.1:PORT/link/records`.
    pub fn url(&self, style: Pagination) -> String {
        format!("http://{}{}", self.addr, style.path())
    }

    /// Inserts or updates a record; it gets a new `updated_at`. Returns the stored version.
    pub fn upsert(&self, id: &str, value: Value) -> ApiRecord {
        self.lock().upsert(id, Some(value))
    }

    /// Answers the next `n` requests with `status`, a `Retry-After: retry_after` header if
    /// given, and the body `injected failure` (not JSON, so a 200 here is a malformed body).
    pub fn fail_next(&self, n: u32, status: u16, retry_after: Option<&str>) {
        self.lock().failure = Failure {
            remaining: n,
            status,
            retry_after: retry_after.map(str::to_owned),
        };
    }

    /// While serving page number `page` of a sync (counted from 1; without pagination every
    /// request is page 1), after the page's records are chosen, gives the records `ids` a new
    /// `updated_at` (value unchanged), as a writer racing the sync would. Applies once.
    pub fn update_during_sync(&self, page: u32, ids: &[&str]) {
        self.lock().update_during_sync =
            Some((page, ids.iter().map(|id| (*id).to_owned()).collect()));
    }

    /// From now on, answers 401 to requests without `name: value`. The 401 body echoes the
    /// value received, as a careless API might, so tests can check that clients redact it.
    pub fn require_header(&self, name: &str, value: &str) {
        self.lock().required_header = Some((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The ground truth: the current version of every record, sorted by `(updated_at, id)`.
    pub fn records(&self) -> Vec<ApiRecord> {
        self.lock().sorted()
    }

    /// Requests received so far, failed ones included.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for PollApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Params = Query<HashMap<String, String>>;

async fn serve_none(State(inner): State<Shared>, headers: HeaderMap, Query(q): Params) -> Response {
    serve(&inner, Pagination::None, &headers, &q)
}

async fn serve_link(State(inner): State<Shared>, headers: HeaderMap, Query(q): Params) -> Response {
    serve(&inner, Pagination::LinkHeader, &headers, &q)
}

async fn serve_cursor(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(&inner, Pagination::CursorField, &headers, &q)
}

async fn serve_paged(
    State(inner): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    serve(&inner, Pagination::PageNumber, &headers, &q)
}

/// One request, answered under the lock (nothing here awaits).
fn serve(
    inner: &Shared,
    style: Pagination,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Response {
    let mut inner = inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    inner.requests += 1;
    if let Some((name, expected)) = &inner.required_header {
        let got = headers.get(name.as_str()).and_then(|v| v.to_str().ok());
        if got != Some(expected.as_str()) {
            let body = json!({"error": "unauthorized", "received": got});
            return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
    }
    if inner.failure.remaining > 0 {
        inner.failure.remaining -= 1;
        let status = StatusCode::from_u16(inner.failure.status).expect("a valid status");
        let mut response = (status, "injected failure").into_response();
        if let Some(value) = &inner.failure.retry_after {
            let value = HeaderValue::from_str(value).expect("a valid Retry-After");
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    match page(&inner, style, q) {
        Ok((number, response)) => {
            if let Some((at, ids)) = inner.update_during_sync.take() {
                if at == number {
                    for id in ids {
                        inner.upsert(&id, None);
                    }
                } else {
                    inner.update_during_sync = Some((at, ids));
                }
            }
            response
        }
        Err(reason) => (StatusCode::BAD_REQUEST, reason).into_response(),
    }
}

/// The page a request asks for: its number within the sync and the response.
fn page(
    inner: &Inner,
    style: Pagination,
    q: &HashMap<String, String>,
) -> Result<(u32, Response), String> {
    let since_ms = match q.get("updated_since") {
        Some(text) => Some(parse_ms(text).ok_or(format!("bad updated_since {text:?}"))?),
        None => None,
    };
    let size = match q.get("page_size") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_SIZE_MAX).contains(n))
            .ok_or(format!("bad page_size {text:?}"))?,
        None => PAGE_SIZE_DEFAULT,
    };
    let matching: Vec<ApiRecord> = inner
        .sorted()
        .into_iter()
        .filter(|r| since_ms.is_none_or(|since| r.updated_ms >= since))
        .collect();
    let json =
        |records: &[ApiRecord]| -> Vec<Value> { records.iter().map(ApiRecord::to_json).collect() };
    match style {
        Pagination::None => Ok((1, axum::Json(json(&matching)).into_response())),
        Pagination::PageNumber => {
            let number = parse_page_number(q.get("page").map(String::as_str))?;
            let from = (number as usize - 1)
                .saturating_mul(size)
                .min(matching.len());
            let to = from.saturating_add(size).min(matching.len());
            let body = json!({"records": json(&matching[from..to])});
            Ok((number, axum::Json(body).into_response()))
        }
        Pagination::LinkHeader => {
            let number = parse_page_number(q.get("page").map(String::as_str))?;
            let after = q.get("after").map(|a| parse_key(a)).transpose()?;
            let (records, more) = keyset(&matching, after.as_ref(), size);
            let mut response = axum::Json(json(&records)).into_response();
            let mut link = String::from("</link/records>; rel=\"first\"");
            if more {
                let last = records.last().expect("a full page");
                let mut next = format!("/link/records?page_size={size}&page={}", number + 1);
                next.push_str(&format!("&after={}", encode(&key_of(last))));
                if let Some(since) = q.get("updated_since") {
                    next.push_str(&format!("&updated_since={}", encode(since)));
                }
                link.push_str(&format!(", <{next}>; rel=\"next\""));
            }
            let value = HeaderValue::from_str(&link).expect("a valid Link");
            response.headers_mut().insert(header::LINK, value);
            Ok((number, response))
        }
        Pagination::CursorField => {
            let (number, after) = match q.get("cursor") {
                Some(token) => {
                    let (number, key) = token
                        .split_once('~')
                        .ok_or(format!("bad cursor {token:?}"))?;
                    (parse_page_number(Some(number))?, Some(parse_key(key)?))
                }
                None => (1, None),
            };
            let (records, more) = keyset(&matching, after.as_ref(), size);
            let next = more.then(|| {
                let last = records.last().expect("a full page");
                format!("{}~{}", number + 1, key_of(last))
            });
            let body = json!({"records": json(&records), "next": next});
            Ok((number, axum::Json(body).into_response()))
        }
    }
}

/// The records after `after`, at most `size`, and whether more follow.
fn keyset(
    matching: &[ApiRecord],
    after: Option<&(i64, String)>,
    size: usize,
) -> (Vec<ApiRecord>, bool) {
    let rest: Vec<&ApiRecord> = matching
        .iter()
        .filter(|r| after.is_none_or(|(ms, id)| (r.updated_ms, &r.id) > (*ms, id)))
        .collect();
    let more = rest.len() > size;
    (rest.into_iter().take(size).cloned().collect(), more)
}

/// A keyset position: `updated_ms~id`.
fn key_of(record: &ApiRecord) -> String {
    format!("{}~{}", record.updated_ms, record.id)
}

fn parse_key(text: &str) -> Result<(i64, String), String> {
    let (ms, id) = text.split_once('~').ok_or(format!("bad key {text:?}"))?;
    let ms = ms.parse().map_err(|_| format!("bad key {text:?}"))?;
    Ok((ms, id.to_owned()))
}

fn parse_page_number(text: Option<&str>) -> Result<u32, String> {
    match text {
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(format!("bad page {text:?}")),
        None => Ok(1),
    }
}

/// RFC 3339 to Unix milliseconds (rounded down), or an integer taken as milliseconds.
fn parse_ms(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    let time = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(time.timestamp_millis())
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a representable time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for query values.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
