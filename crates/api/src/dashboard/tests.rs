//! The dashboard through the real router, on a broker in a temporary directory: security
//! headers on every response, escaping of everything that comes from data, the redrive form's
//! same-origin check, and the overview's order.

use super::*;
use axum::body::Body;
use axum::http::Request;
use gearbox_connect::metrics::{ComponentMetrics, Registry};
use gearbox_core::broker::BrokerConfig;
use serde_json::json;
use tower::ServiceExt as _;

/// An id and a payload made of everything HTML must not see raw.
const NASTY: &str = "<script>alert(\"x\")</script>\"'&<>";

struct Fixture {
    _dir: tempfile::TempDir,
    broker: Arc<Broker>,
    app: Router,
}

fn fixture(pipelines: Vec<ComponentMetrics>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::durable()).unwrap());
    let registry = Arc::new(Registry::default());
    for p in pipelines {
        registry.register(Arc::new(p));
    }
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let state = AppState::with_pipelines(broker.clone(), rx, 4, registry, Vec::new());
    Fixture {
        _dir: dir,
        broker,
        app: crate::router(state),
    }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 24)
        .await
        .unwrap();
    (status, headers, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn get(app: &Router, path: &str) -> (StatusCode, HeaderMap, String) {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn post_json(app: &Router, path: &str, content_type: &str, body: serde_json::Value) {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, text) = send(app, req).await;
    assert!(status.is_success(), "{path}: {status} {text}");
}

/// What HTML escaping must turn `s` into (askama writes numeric entities).
fn escaped(s: &str) -> String {
    s.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

async fn topic_with_nasty_event(app: &Router) {
    post_json(
        app,
        "/v1/topics",
        "application/json",
        json!({"name": "t", "partitions": 1}),
    )
    .await;
    post_json(
        app,
        "/v1/topics/t/events",
        "application/cloudevents+json",
        json!({"specversion": "1.0", "id": NASTY, "source": "/test", "type": "x.y",
               "data": {"note": NASTY}}),
    )
    .await;
}

#[tokio::test]
async fn every_dashboard_response_carries_the_csp_and_its_companions() {
    let f = fixture(Vec::new());
    for path in [
        "/",
        "/ui/fragments/overview",
        "/ui/topics",
        "/ui/topics/missing",
        "/ui/fragments/topics/missing",
        "/ui/dlq",
        "/ui/dlq/missing",
        "/ui/lineage?q=x",
        "/ui/app.css",
        "/ui/app.js",
        "/ui/favicon.svg",
    ] {
        let (_, h, _) = get(&f.app, path).await;
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{path}");
    }
    assert!(CSP.contains("script-src 'self';") && !CSP.contains("unsafe"));
    // The JSON API is not the dashboard's business.
    let (_, h, _) = get(&f.app, "/v1/topics").await;
    assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());
}

#[tokio::test]
async fn pages_have_no_inline_script_style_or_handler() {
    let f = fixture(vec![ComponentMetrics::new(
        "p",
        Kind::Source,
        "webhook",
        None,
        now_ms(),
    )]);
    topic_with_nasty_event(&f.app).await;
    for path in [
        "/",
        "/ui/topics/t",
        "/ui/dlq/t",
        "/ui/lineage?q=a",
        "/ui/topics",
    ] {
        let (status, _, body) = get(&f.app, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        // The one script is the external file; no style attribute or element; no `on...=`.
        assert_eq!(body.matches("<script").count(), 1, "{path}");
        assert!(body.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(
            !body.contains("<style") && !body.contains("style="),
            "{path}"
        );
        assert!(!body.to_ascii_lowercase().contains(" on"), "{path}: {body}");
    }
}

#[tokio::test]
async fn event_ids_data_and_names_render_escaped() {
    let f = fixture(vec![ComponentMetrics::new(
        NASTY,
        Kind::Source,
        "webhook",
        None,
        now_ms(),
    )]);
    topic_with_nasty_event(&f.app).await;
    let want = escaped(NASTY);
    for path in ["/ui/topics/t", "/ui/fragments/topics/t"] {
        let (status, _, body) = get(&f.app, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        // The id, in the summary and in the data attribute.
        assert!(
            body.contains(&format!(r#"<code class="event-id">{want}</code>"#)),
            "{body}"
        );
        assert!(body.contains(&format!(r#"data-event-id="{want}""#)));
        // The data, inside the pretty JSON (where JSON escaped the quotes first).
        assert!(body.contains(&escaped(r#""note": "<script>alert(\"x\")</script>\"'&<>""#)));
        // The lineage link carries the id percent-encoded.
        assert!(body.contains("/ui/lineage?by=event&#38;q=%3Cscript%3Ealert%28%22x%22%29"));
    }
    let (_, _, body) = get(&f.app, "/ui/fragments/overview").await;
    assert!(!body.contains("<script"), "{body}");
    assert!(body.contains(&format!(r#"<span class="name">{want}</span>"#)));
    assert!(body.contains(&format!(r#"data-pipeline="{want}""#)));
    let (_, _, body) = get(&f.app, "/ui/lineage?q=%3Cscript%3E%22%27%26").await;
    assert!(
        body.contains(r#"value="&#60;script&#62;&#34;&#39;&#38;""#),
        "{body}"
    );
    assert!(body.contains(r#"data-state="not-found""#), "{body}");
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    // A name from the path that is no topic comes back in the error, escaped.
    let (status, _, body) = get(&f.app, "/ui/topics/%3Cscript%3Ex").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(body.contains("&#60;script&#62;x"), "{body}");
}

#[tokio::test]
async fn the_lineage_view_renders_the_trace_and_the_correlation_escaped() {
    let f = fixture(Vec::new());
    topic_with_nasty_event(&f.app).await;
    post_json(
        &f.app,
        "/v1/topics/t/events",
        "application/cloudevents+json",
        json!({"specversion": "1.0", "id": "child", "source": "/test", "type": "x.z",
               "causationid": NASTY, "correlationid": NASTY}),
    )
    .await;
    f.broker.lineage().flush_wait();
    let want = escaped(NASTY);
    let q = query_escape(NASTY);
    let (status, _, body) = get(&f.app, &format!("/ui/lineage?by=event&q={q}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#"data-state="done""#), "{body}");
    assert!(body.contains(&format!(r#"<code class="event-id">{want}</code>"#)));
    assert!(body.contains(r#"<tr class="hop hop-appended">"#), "{body}");
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    let (_, _, body) = get(&f.app, &format!("/ui/lineage?by=correlation&q={q}")).await;
    assert!(body.contains(r#"data-state="done""#), "{body}");
    assert_eq!(body.matches(r#"class="trace-event""#).count(), 2, "{body}");
    // The child names its cause, linked to the cause's own trace.
    assert!(body.contains(&format!(
        r#"<a href="/ui/lineage?by=event&#38;q={q}"><code>{want}</code></a>"#
    )));
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    let (_, _, body) = get(&f.app, "/ui/lineage?by=event&q=nope").await;
    assert!(body.contains(r#"data-state="not-found""#), "{body}");
    let (_, _, body) = get(&f.app, "/ui/lineage").await;
    assert!(body.contains(r#"data-state="empty""#), "{body}");
}

#[tokio::test]
async fn the_overview_puts_pipelines_that_need_attention_first() {
    let stale = now_ms() - 60_000;
    let f = fixture(vec![
        ComponentMetrics::new("a-fine", Kind::Source, "webhook", None, now_ms()),
        ComponentMetrics::new("z-stale", Kind::Source, "http_poll", Some(1_000), stale),
        ComponentMetrics::new("m-late", Kind::Source, "http_poll", Some(40_000), stale),
    ]);
    let (_, _, body) = get(&f.app, "/").await;
    let at = |name: &str| body.find(&format!(r#"data-pipeline="{name}""#)).unwrap();
    assert!(at("z-stale") < at("m-late") && at("m-late") < at("a-fine"));
    assert!(body.contains(r#"class="card pipeline status-error" data-pipeline="z-stale""#));
    assert!(body.contains(r#"class="card pipeline status-warn" data-pipeline="m-late""#));
    assert!(body.contains(r#"<span id="attention-count">2</span>"#));
    assert!(
        body.contains(r#"<span class="dot"></span>1 error</span>"#),
        "{body}"
    );
    assert!(body.contains(r#"<span class="dot"></span>1 warn</span>"#));
    assert!(body.contains(r#"<span class="dot"></span>1 ok</span>"#));
    assert!(!body.contains(" paused</span>"));
    assert!(body.contains(r#"data-fragment="/ui/fragments/overview""#));
    assert!(body.contains(&format!(r#"data-refresh-ms="{REFRESH_MS}""#)));
}

#[tokio::test]
async fn the_redrive_form_is_refused_from_another_site() {
    let f = fixture(Vec::new());
    topic_with_nasty_event(&f.app).await;
    let post = |headers: &[(&str, &str)]| {
        let mut req = Request::post("/ui/dlq/t/redrive");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Body::empty()).unwrap()
    };
    let (status, _, _) = send(&f.app, post(&[("sec-fetch-site", "cross-site")])).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = send(
        &f.app,
        post(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://evil.example"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, h, _) = send(
        &f.app,
        post(&[
            ("host", "127.0.0.1:7070"),
            ("origin", "http://127.0.0.1:7070"),
            ("sec-fetch-site", "same-origin"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(h[header::LOCATION], "/ui/dlq/t?redriven=0");
}

#[test]
fn same_origin_reads_fetch_metadata_then_origin() {
    fn check(headers: &[(&'static str, &'static str)], expect: bool) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        assert_eq!(same_origin(&map), expect, "{headers:?}");
    }
    check(&[], true);
    check(&[("sec-fetch-site", "same-origin")], true);
    check(&[("sec-fetch-site", "same-site")], false);
    check(&[("sec-fetch-site", "none")], false);
    check(&[("sec-fetch-site", "cross-site")], false);
    check(&[("host", "a:1"), ("origin", "http://a:1")], true);
    check(&[("host", "a:1"), ("origin", "https://a:1")], true);
    check(&[("host", "a:1"), ("origin", "http://a:2")], false);
    check(&[("host", "a:1"), ("origin", "null")], false);
    check(&[("origin", "http://a:1")], false);
}

#[test]
fn throughput_is_the_change_over_the_window() {
    let s = Sampler::default();
    assert_eq!(s.rate("k", 0, 100), None);
    assert_eq!(s.rate("k", 600, 150), None, "a span under RATE_SPAN_MS_MIN");
    assert_eq!(s.rate("k", 2_000, 300), Some(100.0));
    // Old samples leave the window.
    let mut t = 2_000;
    while t < 2_000 + 3 * RATE_WINDOW_MS {
        t += SAMPLE_SPACING_MS;
        let _ = s.rate("k", t, 300);
    }
    assert_eq!(s.rate("k", t, 300), Some(0.0));
    let series = s.series.lock().unwrap();
    assert!(series["k"].len() <= SAMPLES_PER_SERIES_MAX);
    drop(series);
    // A counter that goes down starts again.
    assert_eq!(s.rate("k", t + 1_000, 5), None);
}

#[test]
fn long_event_json_is_cut_on_a_char_boundary() {
    let s = "é".repeat(EVENT_JSON_CHARS_MAX + 10);
    let out = cut(s, EVENT_JSON_CHARS_MAX);
    assert!(out.starts_with(&"é".repeat(EVENT_JSON_CHARS_MAX)));
    assert!(out.ends_with("(cut: longer than the dashboard shows)"));
    assert_eq!(cut("short".into(), EVENT_JSON_CHARS_MAX), "short");
}
