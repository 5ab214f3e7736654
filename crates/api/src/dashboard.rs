//! The dashboard at `GET /`: server-rendered HTML over the same broker and pipeline registry
//! the JSON handlers use, embedded in the binary (askama templates compiled in, and one CSS,
//! one JS and one icon file under `/ui/` via `include_str!`).
//!
//! Views: the overview (a card per pipeline, sorted with the ones that need attention first,
//! and a card per topic), the topic browser (the newest events of each partition, as pretty
//! JSON), the DLQ browser with a redrive button, and the lineage search (the broker's lineage
//! lookups, the ones behind `GET /v1/events/{id}/trace` and `GET /v1/traces`). Each live view is a page around a fragment; the script
//! fetches the fragment (`/ui/fragments/...`) every [`REFRESH_MS`] and swaps it in.
//!
//! Security: every response of this router carries [`CSP`], `X-Content-Type-Options: nosniff`
//! and `Referrer-Policy: no-referrer`. No template has an inline script, an inline style or an
//! event-handler attribute, so the CSP needs no `unsafe-inline`. Everything that comes from
//! data (pipeline and topic names, event ids, event JSON, error texts) goes through askama's
//! HTML escaping; the only `|safe` is the page embedding a fragment that askama rendered. The
//! redrive form is a state-changing POST, so it is refused unless the browser says it comes
//! from this origin ([`same_origin`]).
//!
//! Throughput is the change of a counter between samples the server keeps ([`Sampler`]): at
//! most [`SAMPLES_PER_SERIES_MAX`] per pipeline or topic, over [`RATE_WINDOW_MS`].
//!
//! Limits: [`TOPIC_EVENTS_PER_PARTITION`] events per partition and [`PARTITIONS_SHOWN_MAX`]
//! partitions in the topic browser, [`DLQ_EVENTS_SHOWN`] events in the DLQ browser, an event's
//! JSON cut at [`EVENT_JSON_CHARS_MAX`], a DLQ counted up to [`DLQ_COUNT_MAX`] when no
//! subscription reports its depth, [`LINEAGE_QUERY_CHARS_MAX`] characters of a lineage query.

use crate::error::ApiError;
use crate::{AppState, Path, Query, Shared, blocking};
use askama::Template;
use axum::Router;
use axum::extract::Extension;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use gearbox_connect::metrics::{Health, Kind, Snapshot};
use gearbox_connect::schedule::{Outcome, Run, RunLog};
use gearbox_core::broker::{Broker, BrokerError, StoredEvent, SubscriptionInfo, TopicInfo};
use gearbox_core::lineage::{Hop, TRACE_EVENTS_MAX, TRACE_HOPS_MAX};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How often the script refreshes a live fragment.
pub const REFRESH_MS: u64 = 2_000;
/// Newest events shown per partition in the topic browser.
pub const TOPIC_EVENTS_PER_PARTITION: u64 = 10;
/// Most partitions the topic browser shows.
pub const PARTITIONS_SHOWN_MAX: usize = 32;
/// Most events the DLQ browser shows.
pub const DLQ_EVENTS_SHOWN: usize = 50;
/// Most DLQ events counted when no subscription of the topic reports the depth.
pub const DLQ_COUNT_MAX: usize = 1_000;
/// Longest event JSON shown; the rest is cut with a note.
pub const EVENT_JSON_CHARS_MAX: usize = 8_192;
/// Longest lineage query accepted (longer ones are cut).
pub const LINEAGE_QUERY_CHARS_MAX: usize = 512;
/// The window a throughput is computed over.
pub const RATE_WINDOW_MS: i64 = 10_000;
/// The shortest span of samples a throughput is computed from.
pub const RATE_SPAN_MS_MIN: i64 = 1_000;
/// Samples closer together than this are not kept.
pub const SAMPLE_SPACING_MS: i64 = 500;
/// Samples kept per series (`RATE_WINDOW_MS / SAMPLE_SPACING_MS`, plus one).
pub const SAMPLES_PER_SERIES_MAX: usize = (RATE_WINDOW_MS / SAMPLE_SPACING_MS) as usize + 1;
/// Series kept at most; a series not sampled for a window is dropped first.
pub const SERIES_MAX: usize = 10_000;

/// The Content-Security-Policy of every dashboard response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

const APP_CSS: &str = include_str!("../assets/app.css");
const APP_JS: &str = include_str!("../assets/app.js");
const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// The dashboard's routes, merged into [`crate::router`].
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(overview_page))
        .route("/ui/fragments/overview", get(overview_fragment))
        .route("/ui/topics", get(topics_page))
        .route("/ui/topics/{topic}", get(topic_page))
        .route("/ui/fragments/topics/{topic}", get(topic_fragment))
        .route("/ui/dlq", get(dlq_index_page))
        .route("/ui/dlq/{topic}", get(dlq_page))
        .route("/ui/fragments/dlq/{topic}", get(dlq_fragment))
        .route("/ui/dlq/{topic}/redrive", post(redrive))
        .route("/ui/lineage", get(lineage_page))
        .route("/ui/pipelines/{name}/runs", get(runs_page))
        .route("/ui/fragments/pipelines/{name}/runs", get(runs_fragment))
        .route(
            "/ui/app.css",
            get(|| asset("text/css; charset=utf-8", APP_CSS)),
        )
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/favicon.svg",
            get(|| asset("image/svg+xml", FAVICON_SVG)),
        )
        .layer(Extension(Arc::new(Sampler::default())))
        .layer(axum::middleware::map_response(security_headers))
}

/// Adds the CSP and its companions to every dashboard response, errors included.
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// A page around one fragment. `body` is askama output, hence already escaped.
#[derive(Template)]
#[template(path = "page.html")]
struct Page<'a> {
    title: &'a str,
    view: &'a str,
    refresh_ms: u64,
    fragment_url: Option<String>,
    body: String,
}

/// A rendered view: an HTML fragment, or a status with an (escaped) message.
type Html = Result<String, (StatusCode, String)>;

fn render<T: Template>(t: &T) -> Html {
    t.render().map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("render failed: {e}"),
        )
    })
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorView<'a> {
    message: &'a str,
}

fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn error_html(status: StatusCode, message: &str) -> String {
    ErrorView { message }
        .render()
        .unwrap_or_else(|_| format!("error {status}"))
}

/// A fragment alone (for the script).
fn fragment(html: Html) -> Response {
    match html {
        Ok(body) => html_response(StatusCode::OK, body),
        Err((status, message)) => html_response(status, error_html(status, &message)),
    }
}

/// A whole page; `live` names the fragment the script refreshes.
fn page(title: &str, view: &str, live: Option<String>, html: Html) -> Response {
    let (status, body, live) = match html {
        Ok(body) => (StatusCode::OK, body, live),
        Err((status, message)) => (status, error_html(status, &message), None),
    };
    let page = Page {
        title,
        view,
        refresh_ms: REFRESH_MS,
        fragment_url: live,
        body,
    };
    match page.render() {
        Ok(html) => html_response(status, html),
        Err(e) => html_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_html(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        ),
    }
}

fn api_error(e: ApiError) -> (StatusCode, String) {
    (e.status(), format!("{}: {}", e.code, e.message))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn clock_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// Recent samples of counters (a pipeline's `sent`, a topic's summed end offsets), so a card
/// can show events per second without the browser keeping state.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    series: Mutex<HashMap<String, VecDeque<(i64, u64)>>>,
}

impl Sampler {
    /// Records `value` of series `key` at `now_ms` and returns its rate per second over the
    /// samples of the last [`RATE_WINDOW_MS`], once they span at least [`RATE_SPAN_MS_MIN`].
    fn rate(&self, key: &str, now_ms: i64, value: u64) -> Option<f64> {
        let mut all = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if all.len() >= SERIES_MAX && !all.contains_key(key) {
            all.retain(|_, s| s.back().is_some_and(|(t, _)| now_ms - t <= RATE_WINDOW_MS));
            if all.len() >= SERIES_MAX {
                return None;
            }
        }
        let s = all.entry(key.to_string()).or_default();
        // A counter that went down (a restart) starts the series again.
        if s.back().is_some_and(|&(_, v)| v > value) {
            s.clear();
        }
        if s.back()
            .is_none_or(|&(t, _)| now_ms - t >= SAMPLE_SPACING_MS)
        {
            s.push_back((now_ms, value));
        }
        while s.len() > SAMPLES_PER_SERIES_MAX
            || (s.len() > 2 && s.front().is_some_and(|&(t, _)| now_ms - t > RATE_WINDOW_MS))
        {
            s.pop_front();
        }
        let &(t0, v0) = s.front()?;
        let span = now_ms - t0;
        (span >= RATE_SPAN_MS_MIN).then(|| value.saturating_sub(v0) as f64 * 1000.0 / span as f64)
    }
}

fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "—".to_string(), |r| format!("{r:.1}"))
}

// ---------------------------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------------------------

struct PipelineCard {
    name: String,
    kind: &'static str,
    connector: String,
    health: &'static str,
    breaker: &'static str,
    last_success: String,
    last_success_at: String,
    rate: String,
    error_rate: String,
    lag: String,
    dlq_label: &'static str,
    dlq: String,
    dlq_href: Option<String>,
    failure: Option<String>,
    schedule: Option<ScheduleCard>,
}

/// A scheduled pipeline's part of its card.
struct ScheduleCard {
    next_run: String,
    last_run: String,
    watermark: String,
    href: String,
}

fn schedule_card(name: &str, log: &RunLog, now_ms: i64) -> ScheduleCard {
    let v = log.view();
    let last_run = match (&v.running, v.history.first()) {
        (Some(r), _) => format!(
            "running since {} ({} rows)",
            age_text(now_ms, Some(r.started_ms)),
            r.rows
        ),
        (None, Some(r)) => format!(
            "{} {} · {} rows",
            outcome_text(r.outcome),
            age_text(now_ms, r.ended_ms),
            r.rows
        ),
        (None, None) => "never".into(),
    };
    ScheduleCard {
        next_run: v
            .next_run_ms
            .map_or_else(|| "—".into(), |t| format!("{} ({})", clock_text(t), v.cron)),
        last_run,
        watermark: v.watermark.unwrap_or_else(|| "—".into()),
        href: format!("/ui/pipelines/{}/runs", query_escape(name)),
    }
}

fn outcome_text(o: Outcome) -> &'static str {
    match o {
        Outcome::Running => "running",
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Interrupted => "interrupted",
    }
}

/// One row of the run history table.
struct RunRow {
    id: u64,
    trigger: String,
    started: String,
    duration: String,
    rows: u64,
    appended: u64,
    duplicates: u64,
    dead_lettered: u64,
    watermark_before: String,
    watermark_after: String,
    outcome: &'static str,
    error: String,
}

fn run_row(r: &Run) -> RunRow {
    RunRow {
        id: r.id,
        trigger: serde_json::to_value(r.trigger)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        started: chrono::DateTime::from_timestamp_millis(r.started_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
        duration: r.ended_ms.map_or_else(
            || "—".into(),
            |e| format!("{:.1} s", (e - r.started_ms) as f64 / 1000.0),
        ),
        rows: r.rows,
        appended: r.appended,
        duplicates: r.duplicates,
        dead_lettered: r.dead_lettered,
        watermark_before: r.watermark_before.clone().unwrap_or_else(|| "—".into()),
        watermark_after: r.watermark_after.clone().unwrap_or_else(|| "—".into()),
        outcome: outcome_text(r.outcome),
        error: r.error.clone().unwrap_or_default(),
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    name: String,
    cron: String,
    time_zone: String,
    next_run: String,
    watermark: String,
    queued: bool,
    running: Option<RunRow>,
    runs: Vec<RunRow>,
    rendered_at: String,
}

async fn render_runs(state: &AppState, name: String) -> Html {
    let m = state.pipelines.get(&name).ok_or_else(|| {
        (
            StatusCode::NOT_FOUND,
            error_html(
                StatusCode::NOT_FOUND,
                &format!("no pipeline named {name:?}"),
            ),
        )
    })?;
    let Some(log) = m.runs() else {
        return Err((
            StatusCode::CONFLICT,
            error_html(
                StatusCode::CONFLICT,
                &format!("pipeline {name:?} has no schedule (only batch sources do)"),
            ),
        ));
    };
    let v = log.view();
    render(&RunsPage {
        name,
        cron: v.cron,
        time_zone: v.time_zone,
        next_run: v.next_run_ms.map_or_else(|| "—".into(), clock_text),
        watermark: v.watermark.unwrap_or_else(|| "—".into()),
        queued: v.queued.is_some(),
        running: v.running.as_ref().map(run_row),
        runs: v.history.iter().map(run_row).collect(),
        rendered_at: clock_text(now_ms()),
    })
}

async fn runs_page(crate::State(s): Shared, Path(name): Path<String>) -> Response {
    let live = format!("/ui/fragments/pipelines/{}/runs", query_escape(&name));
    let title = format!("Runs of {name}");
    page(&title, "overview", Some(live), render_runs(&s, name).await)
}

async fn runs_fragment(crate::State(s): Shared, Path(name): Path<String>) -> Response {
    fragment(render_runs(&s, name).await)
}

struct TopicCard {
    name: String,
    href: String,
    partitions: u32,
    offsets: String,
    rate: String,
    dlq_depth: String,
    dlq_href: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    pipelines: Vec<PipelineCard>,
    topics: Vec<TopicCard>,
    attention: usize,
    /// `(health, pipelines in it)` for each health some pipeline has, worst first.
    by_health: Vec<(&'static str, usize)>,
    rendered_at: String,
}

/// What the overview reads from the broker, on a blocking thread.
struct TopicState {
    info: TopicInfo,
    subscriptions: Vec<SubscriptionInfo>,
    dlq_depth: DlqDepth,
}

#[derive(Clone, Copy)]
enum DlqDepth {
    Exact(u64),
    AtLeast(u64),
}

impl DlqDepth {
    fn text(self) -> String {
        match self {
            DlqDepth::Exact(n) => n.to_string(),
            DlqDepth::AtLeast(n) => format!("{n}+"),
        }
    }
}

const DLQ_SUFFIX: &str = ".dlq";

/// The DLQ depth of `topic`: a subscription reports it exactly; without one, the events not
/// yet redriven are counted up to [`DLQ_COUNT_MAX`].
fn dlq_depth(
    broker: &Broker,
    topic: &str,
    subs: &[SubscriptionInfo],
) -> Result<DlqDepth, BrokerError> {
    if let Some(s) = subs.first() {
        return Ok(DlqDepth::Exact(s.dlq_depth));
    }
    let n = broker.dlq(topic, DLQ_COUNT_MAX)?.len();
    Ok(if n >= DLQ_COUNT_MAX {
        DlqDepth::AtLeast(n as u64)
    } else {
        DlqDepth::Exact(n as u64)
    })
}

/// Every topic that is not some other topic's DLQ, with its subscriptions and DLQ depth.
fn read_topics(broker: &Broker) -> Result<Vec<TopicState>, BrokerError> {
    let all = broker.topics();
    let names: std::collections::HashSet<&str> = all.iter().map(|t| t.name.as_str()).collect();
    let mut out = Vec::new();
    for info in &all {
        let is_dlq = info
            .name
            .strip_suffix(DLQ_SUFFIX)
            .is_some_and(|parent| names.contains(parent));
        if is_dlq {
            continue;
        }
        let subscriptions = broker.subscriptions(&info.name)?;
        let dlq_depth = dlq_depth(broker, &info.name, &subscriptions)?;
        out.push(TopicState {
            info: info.clone(),
            subscriptions,
            dlq_depth,
        });
    }
    Ok(out)
}

fn health_rank(h: Health) -> u8 {
    match h {
        Health::Error => 0,
        Health::Warn => 1,
        Health::Paused => 2,
        Health::Ok => 3,
    }
}

fn age_text(now_ms: i64, at_ms: Option<i64>) -> String {
    let Some(at) = at_ms else {
        return "never".to_string();
    };
    let s = (now_ms - at).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86_400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn pipeline_card(
    s: &Snapshot,
    now_ms: i64,
    sampler: &Sampler,
    subs: &HashMap<&str, (&str, &SubscriptionInfo)>,
) -> PipelineCard {
    let rate = sampler.rate(&format!("pipeline/{}", s.pipeline), now_ms, s.sent);
    // A sink pipeline reads through a queue subscription named after it (see
    // `gearbox_connect::runtime`), whose lag and DLQ are the pipeline's.
    let sub = match s.kind {
        Kind::Sink => subs.get(s.pipeline.as_str()),
        _ => None,
    };
    let (lag, dlq_label, dlq, dlq_href) = match sub {
        Some((topic, info)) => (
            info.lag.to_string(),
            "DLQ depth",
            info.dlq_depth.to_string(),
            Some(format!("/ui/dlq/{topic}")),
        ),
        None => (
            "—".to_string(),
            "dead-lettered",
            s.dead_lettered.to_string(),
            None,
        ),
    };
    // The runtime's own lag (a sink's events waiting) when it has one, else the subscription's.
    let lag = s.lag.map_or(lag, |l| l.to_string());
    let error_rate = s
        .error_rate_permille
        .map_or_else(|| "—".to_string(), |p| format!("{:.1}%", p as f64 / 10.0));
    PipelineCard {
        name: s.pipeline.clone(),
        kind: s.kind.as_str(),
        connector: s.component_type.clone(),
        health: s.health.as_str(),
        breaker: s.breaker,
        last_success: age_text(now_ms, s.last_success_ms),
        last_success_at: s
            .last_success_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default(),
        rate: rate_text(rate),
        error_rate,
        lag,
        dlq_label,
        dlq,
        dlq_href,
        failure: s.failure.clone(),
        schedule: None,
    }
}

fn topic_card(t: &TopicState, now_ms: i64, sampler: &Sampler) -> TopicCard {
    let ends: u64 = t.info.offsets.iter().map(|o| o.high_watermark).sum();
    let rate = sampler.rate(&format!("topic/{}", t.info.name), now_ms, ends);
    let offsets = t
        .info
        .offsets
        .iter()
        .map(|o| o.high_watermark.to_string())
        .collect::<Vec<_>>()
        .join(" · ");
    TopicCard {
        name: t.info.name.clone(),
        href: format!("/ui/topics/{}", t.info.name),
        partitions: t.info.partitions,
        offsets,
        rate: rate_text(rate),
        dlq_depth: t.dlq_depth.text(),
        dlq_href: format!("/ui/dlq/{}", t.info.name),
    }
}

async fn render_overview(state: &AppState, sampler: &Sampler) -> Html {
    let broker = state.broker.clone();
    let topics = blocking(move || read_topics(&broker))
        .await
        .map_err(api_error)?;
    let now = now_ms();
    let subs: HashMap<&str, (&str, &SubscriptionInfo)> = topics
        .iter()
        .flat_map(|t| {
            t.subscriptions
                .iter()
                .map(move |s| (s.name.as_str(), (t.info.name.as_str(), s)))
        })
        .collect();
    let all = state.pipelines.all();
    let mut snapshots: Vec<(Snapshot, Option<&Arc<RunLog>>)> =
        all.iter().map(|m| (m.snapshot(now), m.runs())).collect();
    snapshots.sort_by(|(a, _), (b, _)| {
        (health_rank(a.health), &a.pipeline).cmp(&(health_rank(b.health), &b.pipeline))
    });
    let pipelines: Vec<PipelineCard> = snapshots
        .iter()
        .map(|(s, runs)| {
            let mut card = pipeline_card(s, now, sampler, &subs);
            card.schedule = runs.map(|log| schedule_card(&s.pipeline, log, now));
            card
        })
        .collect();
    let snapshots: Vec<Snapshot> = snapshots.into_iter().map(|(s, _)| s).collect();
    let attention = snapshots.iter().filter(|s| s.health != Health::Ok).count();
    let by_health = [Health::Error, Health::Warn, Health::Paused, Health::Ok]
        .into_iter()
        .map(|h| {
            (
                h.as_str(),
                snapshots.iter().filter(|s| s.health == h).count(),
            )
        })
        .filter(|&(_, n)| n > 0)
        .collect();
    let topics = topics.iter().map(|t| topic_card(t, now, sampler)).collect();
    render(&Overview {
        pipelines,
        topics,
        attention,
        by_health,
        rendered_at: clock_text(now),
    })
}

async fn overview_page(
    crate::State(s): Shared,
    Extension(sampler): Extension<Arc<Sampler>>,
) -> Response {
    let html = render_overview(&s, &sampler).await;
    page(
        "Overview",
        "overview",
        Some("/ui/fragments/overview".into()),
        html,
    )
}

async fn overview_fragment(
    crate::State(s): Shared,
    Extension(sampler): Extension<Arc<Sampler>>,
) -> Response {
    fragment(render_overview(&s, &sampler).await)
}

// ---------------------------------------------------------------------------------------------
// Topic browser and DLQ browser
// ---------------------------------------------------------------------------------------------

struct EventView {
    partition: u32,
    offset: u64,
    id: String,
    ty: String,
    source: String,
    time: Option<String>,
    dlq_error: Option<String>,
    json: String,
    trace_href: String,
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn cut(mut s: String, max_chars: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max_chars) {
        s.truncate(i);
        s.push_str("\n… (cut: longer than the dashboard shows)");
    }
    s
}

fn event_view(e: &StoredEvent) -> EventView {
    let json = serde_json::to_string_pretty(&e.event.to_json()).unwrap_or_default();
    EventView {
        partition: e.partition,
        offset: e.offset,
        id: e.event.id.clone(),
        ty: e.event.ty.clone(),
        source: e.event.source.clone(),
        time: e.event.time.clone(),
        dlq_error: e.event.extensions.get("dlqerror").cloned(),
        json: cut(json, EVENT_JSON_CHARS_MAX),
        trace_href: format!("/ui/lineage?by=event&q={}", query_escape(&e.event.id)),
    }
}

struct PartitionView {
    partition: u32,
    start: u64,
    end: u64,
    events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "topic.html")]
struct TopicView {
    topic: String,
    per_partition: u64,
    partitions: Vec<PartitionView>,
    rendered_at: String,
}

/// The newest events of each partition, newest first.
fn read_newest(broker: &Broker, topic: &str) -> Result<Vec<PartitionView>, BrokerError> {
    let info = broker.describe_topic(topic)?;
    let mut out = Vec::new();
    for o in info.offsets.iter().take(PARTITIONS_SHOWN_MAX) {
        let from = o
            .high_watermark
            .saturating_sub(TOPIC_EVENTS_PER_PARTITION)
            .max(o.log_start_offset);
        let (events, _) = broker.read(
            topic,
            o.partition,
            from,
            TOPIC_EVENTS_PER_PARTITION as usize,
        )?;
        out.push(PartitionView {
            partition: o.partition,
            start: o.log_start_offset,
            end: o.high_watermark,
            events: events.iter().rev().map(event_view).collect(),
        });
    }
    Ok(out)
}

async fn render_topic(state: &AppState, topic: String) -> Html {
    let broker = state.broker.clone();
    let t = topic.clone();
    let partitions = blocking(move || read_newest(&broker, &t))
        .await
        .map_err(api_error)?;
    render(&TopicView {
        topic,
        per_partition: TOPIC_EVENTS_PER_PARTITION,
        partitions,
        rendered_at: clock_text(now_ms()),
    })
}

async fn topic_page(crate::State(s): Shared, Path(topic): Path<String>) -> Response {
    let live = format!("/ui/fragments/topics/{topic}");
    let title = format!("Topic {topic}");
    page(&title, "topics", Some(live), render_topic(&s, topic).await)
}

async fn topic_fragment(crate::State(s): Shared, Path(topic): Path<String>) -> Response {
    fragment(render_topic(&s, topic).await)
}

#[derive(Template)]
#[template(path = "topics.html")]
struct TopicsView {
    topics: Vec<String>,
}

fn topic_names(state: &AppState) -> Vec<String> {
    let all = state.broker.topics();
    let names: std::collections::HashSet<&str> = all.iter().map(|t| t.name.as_str()).collect();
    all.iter()
        .filter(|t| {
            t.name
                .strip_suffix(DLQ_SUFFIX)
                .is_none_or(|parent| !names.contains(parent))
        })
        .map(|t| t.name.clone())
        .collect()
}

async fn topics_page(crate::State(s): Shared) -> Response {
    let html = render(&TopicsView {
        topics: topic_names(&s),
    });
    page("Topics", "topics", None, html)
}

async fn dlq_index_page(crate::State(s): Shared) -> Response {
    let html = render(&TopicsView {
        topics: topic_names(&s),
    });
    page("Dead letters", "dlq", None, html)
}

#[derive(Template)]
#[template(path = "dlq.html")]
struct DlqView {
    topic: String,
    depth: String,
    events: Vec<EventView>,
    shown_max: usize,
    redriven: Option<u64>,
    rendered_at: String,
}

async fn render_dlq(state: &AppState, topic: String, redriven: Option<u64>) -> Html {
    let broker = state.broker.clone();
    let t = topic.clone();
    let (events, depth) = blocking(move || {
        let subs = broker.subscriptions(&t)?;
        let depth = dlq_depth(&broker, &t, &subs)?;
        Ok((broker.dlq(&t, DLQ_EVENTS_SHOWN)?, depth))
    })
    .await
    .map_err(api_error)?;
    render(&DlqView {
        topic,
        depth: depth.text(),
        events: events.iter().map(event_view).collect(),
        shown_max: DLQ_EVENTS_SHOWN,
        redriven,
        rendered_at: clock_text(now_ms()),
    })
}

async fn dlq_page(
    crate::State(s): Shared,
    Path(topic): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let redriven = q.get("redriven").and_then(|v| v.parse().ok());
    let live = format!("/ui/fragments/dlq/{topic}");
    let title = format!("Dead letters of {topic}");
    // The page just after a redrive is not live: the notice would vanish at the first refresh.
    let live = redriven.is_none().then_some(live);
    page(&title, "dlq", live, render_dlq(&s, topic, redriven).await)
}

async fn dlq_fragment(crate::State(s): Shared, Path(topic): Path<String>) -> Response {
    fragment(render_dlq(&s, topic, None).await)
}

/// Whether a state-changing request comes from a page of this origin. Browsers send
/// `Sec-Fetch-Site` (all current ones) or at least `Origin` on a form POST; a request with
/// neither comes from a client that is not a browser, which a cross-site page cannot drive.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(HeaderValue::to_str),
    ) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// `POST /ui/dlq/{topic}/redrive`: the redrive form; answers with a redirect to the DLQ page
/// (POST/redirect/GET), which shows how many events went back.
async fn redrive(
    crate::State(s): Shared,
    Path(topic): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !same_origin(&headers) {
        return html_response(
            StatusCode::FORBIDDEN,
            error_html(
                StatusCode::FORBIDDEN,
                "refused: the redrive form must be sent from this dashboard (cross-site request)",
            ),
        );
    }
    let broker = s.broker.clone();
    let t = topic.clone();
    match blocking(move || broker.redrive(&t)).await {
        Ok(n) => Redirect::to(&format!("/ui/dlq/{topic}?redriven={n}")).into_response(),
        Err(e) => {
            let (status, message) = api_error(e);
            html_response(status, error_html(status, &message))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lineage
// ---------------------------------------------------------------------------------------------

struct HopRow {
    kind: &'static str,
    at: String,
    place: String,
    by: String,
    attempt: String,
    result: String,
    latency_ms: String,
    detail: String,
}

struct TracedEvent {
    id: String,
    causation: Option<String>,
    causation_href: String,
    hops: Vec<HopRow>,
}

#[derive(Template)]
#[template(path = "lineage.html")]
struct LineageView {
    q: String,
    by: &'static str,
    /// `empty` (no query yet), `done` or `not-found`; the browser test reads it.
    state: &'static str,
    message: Option<String>,
    events: Vec<TracedEvent>,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn hop_row(h: &Hop) -> HopRow {
    let place = match (&h.topic, h.partition, h.offset) {
        (Some(t), Some(p), Some(o)) => format!("{t} / {p} / {o}"),
        (Some(t), _, _) => t.clone(),
        _ => String::new(),
    };
    HopRow {
        kind: h.kind.as_str(),
        at: chrono::DateTime::from_timestamp_millis(h.at_ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default(),
        place,
        by: opt(h
            .pipeline
            .as_ref()
            .or(h.subscription.as_ref())
            .or(h.source.as_ref())),
        attempt: opt(h.attempt),
        result: opt(h.result.as_ref()),
        latency_ms: opt(h.latency_ms),
        detail: opt(h.detail.as_ref()),
    }
}

fn traced(id: String, causation: Option<String>, hops: &[Hop]) -> TracedEvent {
    TracedEvent {
        causation_href: causation.as_deref().map_or_else(String::new, |c| {
            format!("/ui/lineage?by=event&q={}", query_escape(c))
        }),
        id,
        causation,
        hops: hops.iter().map(hop_row).collect(),
    }
}

/// Looks `q` up in the broker's lineage log (the same lookups as `GET /v1/events/{id}/trace`
/// and `GET /v1/traces`), on a blocking thread: a lookup scans the retained hops.
async fn lookup(state: &AppState, q: String, by: &'static str) -> LineageView {
    let lineage = state.broker.lineage().clone();
    let key = q.clone();
    let found = tokio::task::spawn_blocking(move || {
        if by == "correlation" {
            lineage.correlation(&key).map(|c| (c.events, c.truncated))
        } else {
            lineage
                .trace(&key)
                .map(|(hops, truncated)| (vec![(key, None, hops)], truncated))
        }
    })
    .await;
    let (state, message, events) = match found {
        Ok(Ok((events, truncated))) => {
            let events: Vec<TracedEvent> = events
                .into_iter()
                .filter(|(_, _, hops)| !hops.is_empty())
                .map(|(id, cause, hops)| traced(id, cause, &hops))
                .collect();
            if events.is_empty() {
                let what = if by == "correlation" {
                    "no events recorded with correlation id"
                } else {
                    "no hops recorded for event id"
                };
                ("not-found", Some(format!("{what} {q:?}")), events)
            } else {
                let note = truncated.then(|| {
                    format!(
                        "More hops or events matched than a lookup returns (at most \
                         {TRACE_HOPS_MAX} hops, {TRACE_EVENTS_MAX} events)."
                    )
                });
                ("done", note, events)
            }
        }
        Ok(Err(e)) => ("not-found", Some(e.to_string()), Vec::new()),
        Err(e) => ("not-found", Some(format!("lookup failed: {e}")), Vec::new()),
    };
    LineageView {
        q,
        by,
        state,
        message,
        events,
    }
}

async fn lineage_page(
    crate::State(s): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query: String = q
        .get("q")
        .map(|s| s.trim().chars().take(LINEAGE_QUERY_CHARS_MAX).collect())
        .unwrap_or_default();
    let by = match q.get("by").map(String::as_str) {
        Some("correlation") => "correlation",
        _ => "event",
    };
    let view = if query.is_empty() {
        LineageView {
            q: query,
            by,
            state: "empty",
            message: None,
            events: Vec::new(),
        }
    } else {
        lookup(&s, query, by).await
    };
    page("Lineage", "lineage", None, render(&view))
}

#[cfg(test)]
mod tests;
