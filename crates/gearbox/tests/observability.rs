//! Observability through the real `gearbox serve` (issue 8, must-show 1 and 2):
//! - a scripted scenario (produce through a webhook source, consume some over HTTP, fail some
//!   deliveries of an HTTP sink, let the source go quiet) with assertions on exact `/metrics`
//!   values and on health transitions, read through `/metrics` and `GET /v1/pipelines`;
//! - `gearbox trace` on an event retried twice, dead-lettered and redriven shows every hop in
//!   order; a correlation search returns a three-event cascade; `traceparent` travels from the
//!   HTTP request into the event and its lineage.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use gearbox_connectors::webhook::signature::{sign_standard, standard_secret_key};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{GEARBOX, Server, free_port};

/// `whsec_` + base64("gearbox-test-signing-key-0123456").
const SECRET: &str = "whsec_Z2VhcmJveC10ZXN0LXNpZ25pbmcta2V5LTAxMjM0NTY=";
/// The webhook source's freshness target.
const FRESHNESS_MS: u64 = 1500;

/// The value of the sample whose name and labels are exactly `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metric_is(server: &Server, series: &str, want: f64) {
    let text = server.metrics();
    assert_eq!(metric(&text, series), Some(want), "{series} in:\n{text}");
}

fn health(server: &Server, pipeline: &str) -> String {
    let (status, body) = server.get(&format!("/v1/pipelines/{pipeline}"));
    assert_eq!(status, 200, "{body}");
    body["health"].as_str().unwrap().to_string()
}

/// The status `/metrics` marks with 1 for `pipeline` (and checks that exactly one is).
fn metrics_health(server: &Server, pipeline: &str) -> String {
    let text = server.metrics();
    let on: Vec<&str> = ["ok", "warn", "error", "paused"]
        .into_iter()
        .filter(|s| {
            metric(
                &text,
                &format!("gearbox_pipeline_health{{pipeline=\"{pipeline}\",status=\"{s}\"}}"),
            ) == Some(1.0)
        })
        .collect();
    assert_eq!(on.len(), 1, "one-hot health for {pipeline}:\n{text}");
    on[0].to_string()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Serves `app` on a free loopback port; returns its `/in` URL.
async fn serve_in(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/in")
}

/// A receiver that answers 400 (a permanent failure) to events whose data has `"fail": true`.
fn start_receiver(rt: &tokio::runtime::Runtime) -> String {
    rt.block_on(async {
        let app = Router::new().route(
            "/in",
            post(|body: Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["data"]["fail"] == json!(true) {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::OK
                }
            }),
        );
        serve_in(app).await
    })
}

fn post_webhook(server: &Server, id: &str, body: &Value) {
    let key = standard_secret_key(SECRET).unwrap();
    let body = body.to_string();
    let ts = chrono::Utc::now().timestamp();
    let sig = sign_standard(&key, id, ts, body.as_bytes());
    let (status, reply) = server.post_raw(
        "/hooks/shop",
        "application/json",
        &[
            ("webhook-id", id),
            ("webhook-timestamp", &ts.to_string()),
            ("webhook-signature", &sig),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{id}: {reply}");
}

#[test]
fn a_scripted_scenario_gives_exact_metrics_and_health_transitions() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = start_receiver(&rt);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: orders, partitions: 1 }}]
pipelines:
  - name: shop
    source:
      webhook: {{ path: /hooks/shop, scheme: standard, secrets: ["${{file:{secret}}}"], source: "urn:shop" }}
    to: orders
    freshness_ms: {FRESHNESS_MS}
  - name: notify
    from: orders
    start: earliest
    sink: {{ http: {{ url: "{url}", timeout_ms: 2000 }} }}
    retry: {{ attempts_max: 3, initial_ms: 50, max_ms: 100, multiplier: 2.0 }}
"#,
            secret = secret.display()
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    // An HTTP consumer's subscription, before anything is produced.
    let (status, body) = server.put(
        "/v1/topics/orders/subscriptions/audit",
        &json!({"mode": "queue", "start": "earliest"}),
    );
    assert!(status == 200 || status == 201, "{body}");

    // Produce: 10 webhook deliveries; two carry data the sink's gear refuses.
    for i in 0..10 {
        let fail = i == 3 || i == 7;
        post_webhook(
            &server,
            &format!("msg-{i}"),
            &json!({"type": "order.created", "n": i, "fail": fail}),
        );
    }
    // The source's last success is at most now.
    let last_post = Instant::now();
    let source = r#"{component_id="shop",component_kind="source",component_type="webhook"}"#;
    metric_is(
        &server,
        &format!("gearbox_component_received_events_total{source}"),
        10.0,
    );
    metric_is(
        &server,
        &format!("gearbox_component_sent_events_total{source}"),
        10.0,
    );
    metric_is(
        &server,
        "gearbox_topic_end_offset{topic=\"orders\",partition=\"0\"}",
        10.0,
    );
    assert_eq!(health(&server, "shop"), "ok");
    assert_eq!(metrics_health(&server, "shop"), "ok");

    // The sink delivers 8 and dead-letters the 2 refused ones (permanent: no retries).
    let sink = r#"{component_id="notify",component_kind="sink",component_type="http"}"#;
    wait_for("the sink finishes", Duration::from_secs(20), || {
        metric(
            &server.metrics(),
            "gearbox_subscription_lag_events{topic=\"orders\",subscription=\"notify\"}",
        ) == Some(0.0)
    });
    metric_is(
        &server,
        &format!("gearbox_component_sent_events_total{sink}"),
        8.0,
    );
    metric_is(
        &server,
        "gearbox_pipeline_dead_lettered_events_total{pipeline=\"notify\"}",
        2.0,
    );
    metric_is(&server, "gearbox_retries_total{pipeline=\"notify\"}", 0.0);
    metric_is(
        &server,
        &format!(
            "gearbox_component_errors_total{}",
            sink.replace('}', ",stage=\"write\",error_type=\"permanent\"}")
        ),
        2.0,
    );
    metric_is(&server, "gearbox_dlq_depth{topic=\"orders\"}", 2.0);
    metric_is(
        &server,
        "gearbox_event_age_seconds_count{topic=\"orders\",subscription=\"notify\"}",
        10.0,
    );
    // 2 failed of 10 outcomes in the window: past the 10% warn threshold, under the 50% error.
    // The pipeline reads its lag when its poll comes back empty.
    wait_for(
        "the sink sees its lag at zero",
        Duration::from_secs(10),
        || server.get("/v1/pipelines/notify").1["lag"] == json!(0),
    );
    assert_eq!(health(&server, "notify"), "warn");
    assert_eq!(metrics_health(&server, "notify"), "warn");
    let (_, notify) = server.get("/v1/pipelines/notify");
    assert_eq!(notify["error_rate"], json!(0.2), "{notify}");
    assert_eq!(notify["lag"], json!(0), "{notify}");

    // Consume some: poll 3, ack 2, reject 1 (to the DLQ); then poll 1 more and hold it.
    let sub = "/v1/topics/orders/subscriptions/audit";
    let (status, polled) = server.post(&format!("{sub}/poll"), &json!({"max_events": 3}));
    assert_eq!(status, 200, "{polled}");
    let got: Vec<(u64, u64)> = polled["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["partition"].as_u64().unwrap(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [(0, 0), (0, 1), (0, 2)]);
    let (status, _) = server.post(
        &format!("{sub}/ack"),
        &json!({"events": [{"partition": 0, "offset": 0}, {"partition": 0, "offset": 1}]}),
    );
    assert_eq!(status, 200);
    let (status, _) = server.post(
        &format!("{sub}/nack"),
        &json!({"events": [{"partition": 0, "offset": 2}], "reject": true}),
    );
    assert_eq!(status, 200);
    let (status, _) = server.post(&format!("{sub}/poll"), &json!({"max_events": 1}));
    assert_eq!(status, 200);
    let audit = "{topic=\"orders\",subscription=\"audit\"}";
    metric_is(
        &server,
        &format!("gearbox_subscription_lag_events{audit}"),
        7.0,
    );
    metric_is(
        &server,
        &format!("gearbox_subscription_in_flight{audit}"),
        1.0,
    );
    metric_is(
        &server,
        &format!("gearbox_event_age_seconds_count{audit}"),
        4.0,
    );
    metric_is(&server, "gearbox_dlq_depth{topic=\"orders\"}", 3.0);

    // Let the source go quiet: ok → warn after the freshness target, → error after twice it.
    let quiet_since = last_post;
    wait_for(
        "the quiet source turns warn",
        Duration::from_secs(10),
        || health(&server, "shop") == "warn",
    );
    assert!(
        quiet_since.elapsed() >= Duration::from_millis(FRESHNESS_MS - 200),
        "warn came early: {:?}",
        quiet_since.elapsed()
    );
    assert_eq!(metrics_health(&server, "shop"), "warn");
    wait_for(
        "the quiet source turns error",
        Duration::from_secs(10),
        || health(&server, "shop") == "error",
    );
    assert!(quiet_since.elapsed() >= Duration::from_millis(2 * FRESHNESS_MS - 200));
    assert_eq!(metrics_health(&server, "shop"), "error");
    // A delivery brings it back.
    post_webhook(
        &server,
        "msg-10",
        &json!({"type": "order.created", "n": 10}),
    );
    assert_eq!(health(&server, "shop"), "ok");
    assert_eq!(metrics_health(&server, "shop"), "ok");
    metric_is(
        &server,
        &format!("gearbox_component_sent_events_total{source}"),
        11.0,
    );
    let text = server.metrics();
    let last = metric(
        &text,
        "gearbox_pipeline_last_success_timestamp_seconds{pipeline=\"shop\"}",
    )
    .unwrap();
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    assert!((now - last).abs() < 5.0, "last success {last} vs now {now}");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
}

fn gearbox(server: &Server, args: &[&str]) -> String {
    let out = Command::new(GEARBOX)
        .args(["--server", &server.url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gearbox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn publish(server: &Server, topic: &str, event: &Value, headers: &[(&str, &str)]) {
    let (status, reply) = server.post_raw(
        &format!("/v1/topics/{topic}/events"),
        "application/cloudevents+json",
        headers,
        event.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{reply}");
}

#[test]
fn trace_shows_retries_dead_letter_and_redrive_in_order_and_a_cascade_by_correlation() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (status, _) = server.post("/v1/topics", &json!({"name": "jobs", "partitions": 2}));
    assert_eq!(status, 201);
    let (status, body) = server.put(
        "/v1/topics/jobs/subscriptions/worker",
        &json!({"mode": "queue", "start": "earliest", "max_attempts": 3}),
    );
    assert!(status == 200 || status == 201, "{body}");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    publish(
        &server,
        "jobs",
        &json!({"specversion": "1.0", "id": "job-1", "source": "/tests", "type": "job", "data": {"n": 1}}),
        &[("traceparent", traceparent)],
    );
    let sub = "/v1/topics/jobs/subscriptions/worker";
    // Three deliveries, each nacked: the third runs out of attempts and is dead-lettered.
    for attempt in 1..=3 {
        let (status, polled) = server.post(
            &format!("{sub}/poll"),
            &json!({"max_events": 10, "wait_ms": 2000}),
        );
        assert_eq!(status, 200);
        let e = &polled["events"][0];
        assert_eq!(e["attempt"], json!(attempt), "{polled}");
        assert_eq!(
            e["event"]["traceparent"],
            json!(traceparent),
            "the header became the extension"
        );
        let (status, _) = server.post(
            &format!("{sub}/nack"),
            &json!({"events": [{"partition": e["partition"], "offset": e["offset"]}], "retry_in_ms": 0}),
        );
        assert_eq!(status, 200);
    }
    let (_, dlq) = server.get("/v1/topics/jobs/dlq");
    assert_eq!(dlq["events"].as_array().unwrap().len(), 1, "{dlq}");
    gearbox(&server, &["dlq", "redrive", "jobs"]);
    let (status, polled) = server.post(
        &format!("{sub}/poll"),
        &json!({"max_events": 10, "wait_ms": 2000}),
    );
    assert_eq!(status, 200);
    let e = &polled["events"][0];
    assert_eq!(e["event"]["id"], json!("job-1"), "{polled}");
    let (status, _) = server.post(
        &format!("{sub}/ack"),
        &json!({"events": [{"partition": e["partition"], "offset": e["offset"]}]}),
    );
    assert_eq!(status, 200);

    let out = gearbox(&server, &["trace", "job-1"]);
    let hops: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(
        hops,
        [
            "appended",
            "delivered",
            "nacked",
            "delivered",
            "nacked",
            "delivered",
            "nacked",
            "dead_lettered",
            "redriven",
            "delivered",
            "acked"
        ],
        "{out}"
    );
    let attempts: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("attempt=").nth(1)?.split_whitespace().next())
        .collect();
    assert_eq!(
        attempts,
        ["1", "1", "2", "2", "3", "3", "3", "1", "1"],
        "{out}"
    );
    assert!(
        out.lines().all(|l| l.contains("jobs/")),
        "every hop names its place: {out}"
    );
    // The API has the same hops, with the traceparent.
    let (status, trace) = server.get("/v1/events/job-1/trace");
    assert_eq!(status, 200);
    assert_eq!(trace["hops"].as_array().unwrap().len(), 11);
    assert_eq!(trace["hops"][0]["traceparent"], json!(traceparent));
    assert_eq!(trace["hops"][7]["subscription"], json!("worker"));
    let (status, missing) = server.get("/v1/events/no-such-event/trace");
    assert_eq!(
        (status, missing["code"].clone()),
        (404, json!("event_not_found"))
    );

    // A three-event cascade: A, B caused by A, C caused by B, all correlated to A.
    publish(
        &server,
        "jobs",
        &json!({"specversion": "1.0", "id": "order-A", "source": "/shop", "type": "order.placed"}),
        &[],
    );
    let produce = |cause: &str, extra: &[&str], line: &str| {
        let mut child = Command::new(GEARBOX)
            .args([
                "--server",
                &server.url,
                "produce",
                "jobs",
                "--causation-id",
                cause,
            ])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        reply["id"].as_str().unwrap().to_string()
    };
    let b = produce("order-A", &[], "{\"step\": \"ship\"}\n");
    let c = produce(
        &b,
        &["--correlation-id", "order-A"],
        "{\"step\": \"invoice\"}\n",
    );
    // Unrelated traffic is not part of it.
    publish(
        &server,
        "jobs",
        &json!({"specversion": "1.0", "id": "other", "source": "/shop", "type": "x", "correlationid": "zzz"}),
        &[],
    );
    let (status, cascade) = server.get("/v1/traces?correlation_id=order-A");
    assert_eq!(status, 200, "{cascade}");
    let events: Vec<(Value, Value)> = cascade["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].clone(), e["causation_id"].clone()))
        .collect();
    assert_eq!(
        events,
        [
            (json!("order-A"), Value::Null),
            (json!(b), json!("order-A")),
            (json!(c), json!(b)),
        ],
        "{cascade}"
    );
    let out = gearbox(&server, &["trace", "--correlation", "order-A"]);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("event ")).count(),
        3,
        "{out}"
    );
}

#[test]
fn traceparent_travels_from_the_producer_through_the_log_to_the_http_sink() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let url = rt.block_on(async {
        let seen = seen.clone();
        let app = Router::new().route(
            "/in",
            post(move |headers: axum::http::HeaderMap| async move {
                let tp = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                seen.lock().unwrap().push(tp);
                StatusCode::OK
            }),
        );
        serve_in(app).await
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            "topics: [{{ name: out }}]\npipelines:\n  - name: push\n    from: out\n    start: earliest\n    sink: {{ http: {{ url: \"{url}\" }} }}\n"
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let event = |id: &str| json!({"specversion": "1.0", "id": id, "source": "/t", "type": "t"});
    publish(&server, "out", &event("with"), &[("traceparent", tp)]);
    // A malformed header is not propagated.
    publish(
        &server,
        "out",
        &event("bad"),
        &[("traceparent", "00-zz-yy-01")],
    );
    wait_for("both delivered", Duration::from_secs(10), || {
        seen.lock().unwrap().len() >= 2
    });
    assert_eq!(*seen.lock().unwrap(), [tp.to_string(), "none".to_string()]);
    let (_, trace) = server.get("/v1/events/with/trace");
    let written = trace["hops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hop"] == json!("written"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(written["pipeline"], json!("push"), "{trace}");
    assert_eq!(written["traceparent"], json!(tp), "{trace}");
    assert!(written["latency_ms"].is_u64(), "{trace}");
}
