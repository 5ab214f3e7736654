//! `gearbox replay --into`: a sink pipeline re-reads its topic from an offset or a time while
//! every other pipeline on the same topic carries on untouched; and the errors for pipelines
//! that cannot replay or have no schedule. Through the real `gearbox serve` and the CLI.

mod support;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{GEARBOX, Server, event, free_port};

/// Every event id received, in order, per path.
#[derive(Default)]
struct Receiver {
    seen: Mutex<Vec<(String, String)>>,
}

async fn receive(State(r): State<Arc<Receiver>>, uri: axum::http::Uri, body: Bytes) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = v["id"].as_str().unwrap_or_default().to_string();
    r.seen.lock().unwrap().push((uri.path().to_string(), id));
    StatusCode::OK
}

fn ids(r: &Receiver, path: &str) -> Vec<String> {
    r.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, id)| id.clone())
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish(server: &Server, events: Vec<Value>) -> u16 {
    server
        .post_raw(
            "/v1/topics/orders/events",
            "application/cloudevents-batch+json",
            &[],
            Value::Array(events).to_string().as_bytes(),
        )
        .0
}

fn cli(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(GEARBOX)
        .args(["--server", &server.url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_sink_pipeline_replays_from_an_offset_or_a_time_and_no_other_pipeline_moves() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Arc::new(Receiver::default());
    let base = rt.block_on(async {
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: orders, partitions: 1 }}]
pipelines:
  - name: orders-v2
    from: orders
    start: earliest
    sink: {{ http: {{ url: "{base}/v2" }} }}
  - name: orders-audit
    from: orders
    start: earliest
    sink: {{ http: {{ url: "{base}/audit" }} }}
  - name: orders-in
    source: {{ webhook: {{ path: /hooks/orders, scheme: standard, secrets: ["${{file:{secret}}}"], source: "urn:shop" }} }}
    to: orders
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
    let first: Vec<Value> = (0..30)
        .map(|i| event(&format!("o-{i}"), "/shop", json!({"n": i})))
        .collect();
    assert_eq!(publish(&server, first), 201);
    wait_for("the first delivery", || {
        ids(&receiver, "/v2").len() == 30 && ids(&receiver, "/audit").len() == 30
    });

    // From an offset: events 10..29 again, into orders-v2 only.
    let (ok, out, err) = cli(
        &server,
        &["replay", "--into", "orders-v2", "--offset", "10"],
    );
    assert!(ok, "{out}{err}");
    let reply: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(reply["replay_from"], json!({"offset": 10}));
    wait_for("the replay from offset 10", || {
        ids(&receiver, "/v2").len() == 50
    });
    let v2 = ids(&receiver, "/v2");
    let want: Vec<String> = (0..30)
        .map(|i| format!("o-{i}"))
        .chain((10..30).map(|i| format!("o-{i}")))
        .collect();
    assert_eq!(v2, want);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ids(&receiver, "/audit").len(),
        30,
        "the other pipeline moved"
    );
    let audit = server.get("/v1/topics/orders/subscriptions/orders-audit").1;
    assert_eq!(audit["lag"], 0, "{audit}");

    // From a time: only what was ingested at or after it.
    std::thread::sleep(Duration::from_millis(20));
    let cut = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(Duration::from_millis(20));
    let later: Vec<Value> = (30..35)
        .map(|i| event(&format!("o-{i}"), "/shop", json!({"n": i})))
        .collect();
    assert_eq!(publish(&server, later), 201);
    wait_for("the later events", || ids(&receiver, "/v2").len() == 55);
    let (ok, out, err) = cli(&server, &["replay", "--into", "orders-v2", "--time", &cut]);
    assert!(ok, "{out}{err}");
    wait_for("the replay from a time", || {
        ids(&receiver, "/v2").len() == 60
    });
    let tail: Vec<String> = ids(&receiver, "/v2")[55..].to_vec();
    assert_eq!(tail, (30..35).map(|i| format!("o-{i}")).collect::<Vec<_>>());
    assert_eq!(ids(&receiver, "/audit").len(), 35);

    // What cannot replay says why, and the CLI exits non-zero.
    let (ok, _, err) = cli(&server, &["replay", "--into", "orders-in", "--offset", "0"]);
    assert!(!ok);
    assert!(err.contains("replay_unsupported"), "{err}");
    let (ok, _, err) = cli(&server, &["replay", "--into", "nope", "--offset", "0"]);
    assert!(!ok);
    assert!(err.contains("pipeline_not_found"), "{err}");
    let (status, body) = server.post("/v1/pipelines/orders-v2/replay", &json!({"offset": -1}));
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("offset")),
        "{body}"
    );
    let (status, body) = server.post(
        "/v1/pipelines/orders-v2/replay",
        &json!({"offset": 1, "time": "2026-01-01T00:00:00Z"}),
    );
    assert_eq!(status, 400, "{body}");
    let (ok, _, err) = cli(&server, &["runs", "orders-v2"]);
    assert!(!ok);
    assert!(err.contains("pipeline_not_scheduled"), "{err}");
}
