//! Webhooks out, through the real `gearbox serve`, against a local receiver that fails for a
//! while: retries follow the backoff schedule, the circuit opens and closes again (seen in
//! `/metrics`), a poison event goes to the DLQ with its error, `webhook-id` is stable across
//! retries, and after deduplication on it the receiver has seen every event exactly once. A
//! target that keeps failing pauses its pipeline, which shows in its health until resumed.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Server, event, free_port};

#[derive(Default)]
struct Receiver {
    /// webhook-id → the time of every attempt.
    attempts: Mutex<BTreeMap<String, Vec<Instant>>>,
    /// webhook-ids answered 2xx, in order.
    accepted: Mutex<Vec<String>>,
    /// Requests still to fail with 503.
    failing: AtomicU32,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.attempts
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_default()
        .push(Instant::now());
    if r.failing
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.accepted.lock().unwrap().push(id);
    StatusCode::OK
}

/// Serves `receiver` at `http://127.0.0.1:PORT/in` on `rt`; returns the URL.
fn start_receiver(rt: &tokio::runtime::Runtime, receiver: &Arc<Receiver>) -> String {
    rt.block_on(async {
        let app = Router::new()
            .route("/in", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/in")
    })
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn metrics(server: &Server) -> String {
    ureq::get(&format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap()
}

#[test]
fn delivery_retries_on_schedule_opens_and_closes_the_circuit_and_delivers_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver::default());
    // Fail the first 12 requests: enough to open the breaker (5 failures in a row) a few times.
    receiver.failing.store(12, SeqCst);
    let url = start_receiver(&rt, &receiver);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: orders, partitions: 2 }}]
pipelines:
  - name: notify
    from: orders
    sink: {{ http: {{ url: "{url}", timeout_ms: 2000 }} }}
    transforms: ['if .data.poison then error("poison order") else . end']
    retry: {{ attempts_max: 8, initial_ms: 100, max_ms: 800, multiplier: 2.0 }}
    breaker: {{ failures_max: 5, open_ms: 400, half_open_probes: 1 }}
"#
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );

    let mut ids = Vec::new();
    let mut batch = Vec::new();
    for i in 0..20 {
        let id = format!("order-{i}");
        batch.push(event(&id, "shop", json!({"n": i})));
        ids.push(id);
    }
    batch.push(event("poison-1", "shop", json!({"poison": true})));
    let (status, reply) = server.post_raw(
        "/v1/topics/orders/events",
        "application/cloudevents-batch+json",
        &[],
        Value::Array(batch).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{reply}");

    // Watch the breaker through /metrics until every event is delivered.
    let mut saw_open = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics(&server);
        if metric(&text, "gearbox_circuit_breaker_state{pipeline=\"notify\"}") == Some(1.0) {
            saw_open = true;
        }
        let accepted = receiver.accepted.lock().unwrap().clone();
        if ids.iter().all(|id| accepted.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered in time; accepted {accepted:?}\n{text}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = metrics(&server);
    assert!(
        metric(
            &text,
            "gearbox_circuit_breaker_transitions_total{pipeline=\"notify\",to=\"open\"}"
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    for to in ["half_open", "closed"] {
        let name =
            format!("gearbox_circuit_breaker_transitions_total{{pipeline=\"notify\",to=\"{to}\"}}");
        assert!(metric(&text, &name).unwrap() >= 1.0, "{name}:\n{text}");
    }
    assert!(saw_open, "the open state was visible in /metrics");
    assert_eq!(
        metric(&text, "gearbox_circuit_breaker_state{pipeline=\"notify\"}"),
        Some(0.0),
        "closed again once the receiver recovered:\n{text}"
    );
    assert!(metric(&text, "gearbox_retries_total{pipeline=\"notify\"}").unwrap() >= 1.0);

    // Exactly once after dedup on webhook-id, and no id was invented.
    let accepted = receiver.accepted.lock().unwrap().clone();
    let mut unique = accepted.clone();
    unique.sort();
    unique.dedup();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(unique, expected, "every event exactly once after dedup");

    // Retries of one event reuse its webhook-id, never exceed attempts_max, and are spaced at
    // least by the schedule's lower bound (equal jitter: half the exponential delay).
    let attempts = receiver.attempts.lock().unwrap().clone();
    let mut retried = 0;
    for (id, times) in &attempts {
        assert!(times.len() <= 8, "{id}: {} attempts", times.len());
        for (k, pair) in times.windows(2).enumerate() {
            let delay = (100.0 * 2f64.powi(k as i32)).min(800.0);
            let floor = Duration::from_millis((delay / 2.0) as u64);
            assert!(
                pair[1] - pair[0] >= floor,
                "{id}: retry {} after {:?}, schedule floor {floor:?}",
                k + 1,
                pair[1] - pair[0]
            );
            retried += 1;
        }
    }
    assert!(retried >= 1, "some events were retried: {attempts:?}");

    // The poison event is in the DLQ with its error, and never reached the receiver.
    let (status, dlq) = server.get("/v1/topics/orders/dlq");
    assert_eq!(status, 200, "{dlq}");
    let dead = dlq["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(dead.len(), 1, "{dlq}");
    let e = &dead[0]["event"];
    assert_eq!(e["id"], json!("poison-1"));
    assert!(
        e["dlqerror"]
            .as_str()
            .unwrap_or_default()
            .contains("poison order"),
        "{e}"
    );
    assert!(!attempts.contains_key("poison-1"));
}

#[test]
fn a_target_that_keeps_failing_pauses_the_pipeline_until_resumed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver::default());
    receiver.failing.store(u32::MAX, SeqCst);
    let url = start_receiver(&rt, &receiver);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: orders }}]
pipelines:
  - name: notify
    from: orders
    sink: {{ http: {{ url: "{url}" }} }}
    retry: {{ attempts_max: 100, initial_ms: 10, max_ms: 20, multiplier: 2.0 }}
    breaker: {{ failures_max: 1000, open_ms: 100, half_open_probes: 1 }}
    pause_after_failures: 4
"#
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let (status, reply) = server.post_raw(
        "/v1/topics/orders/events",
        "application/cloudevents+json",
        &[],
        event("o-1", "shop", json!({})).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, p) = server.get("/v1/pipelines/notify");
        if p["health"] == json!("paused") {
            break;
        }
        assert!(Instant::now() < deadline, "never paused: {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Paused means no more attempts.
    let attempts = |r: &Receiver| r.attempts.lock().unwrap().get("o-1").map_or(0, Vec::len);
    let at_pause = attempts(&receiver);
    assert!(at_pause >= 4, "paused after {at_pause} attempts");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        attempts(&receiver) <= at_pause + 1,
        "deliveries continued while paused"
    );
    let text = metrics(&server);
    assert_eq!(
        metric(
            &text,
            "gearbox_pipeline_health{pipeline=\"notify\",status=\"paused\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // The receiver recovers; resuming delivers the event.
    receiver.failing.store(0, SeqCst);
    let (status, p) = server.post("/v1/pipelines/notify/resume", &json!({}));
    assert_eq!(status, 200, "{p}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !receiver
        .accepted
        .lock()
        .unwrap()
        .contains(&"o-1".to_string())
    {
        assert!(Instant::now() < deadline, "not delivered after resume");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, p) = server.get("/v1/pipelines/notify");
    assert_eq!(p["health"], json!("ok"), "{p}");
}
