//! The HTTP delivery sink against a real local receiver: the conformance suite, then signing
//! (every request verifies under Standard Webhooks with a `webhook-id` stable across retries).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use gearbox_connect::testkit::{SinkGear, sink_suite};
use gearbox_connectors::http_delivery::{HttpDelivery, HttpDeliveryConfig};
use gearbox_connectors::webhook::signature::{Scheme, Verifier};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

/// `whsec_` + base64("gearbox-test-signing-key-0123456").
const SECRET: &str = "whsec_Z2VhcmJveC10ZXN0LXNpZ25pbmcta2V5LTAxMjM0NTY=";

#[derive(Default)]
struct Seen {
    /// webhook-ids accepted, in order.
    accepted: Mutex<Vec<String>>,
    /// webhook-id → every attempt's signature check result.
    attempts: Mutex<BTreeMap<String, Vec<bool>>>,
    down: AtomicBool,
}

struct Receiver {
    seen: Arc<Seen>,
    verifier: Verifier,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let signed = r
        .verifier
        .verify(&headers, &body, chrono::Utc::now().timestamp_millis())
        .is_ok();
    r.seen
        .attempts
        .lock()
        .unwrap()
        .entry(id.clone())
        .or_default()
        .push(signed);
    if !signed {
        return StatusCode::UNAUTHORIZED;
    }
    if r.seen.down.load(SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if value["data"]["reject"] == serde_json::json!(true) {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    r.seen.accepted.lock().unwrap().push(id);
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let state = Arc::new(Receiver {
        seen: seen.clone(),
        verifier: Verifier::new(
            Scheme::Standard,
            &[SECRET.to_string()],
            gearbox_connectors::webhook::signature::REPLAY_WINDOW_MS_DEFAULT,
        )
        .unwrap(),
    });
    let app = Router::new().route("/in", post(receive)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/in"), seen)
}

struct Gear {
    url: String,
    seen: Arc<Seen>,
    /// A `${file:...}` reference to the signing secret.
    secret_ref: String,
}

impl SinkGear for Gear {
    type Sink = HttpDelivery;

    async fn connect(&mut self) -> HttpDelivery {
        let config: HttpDeliveryConfig = serde_json::from_value(serde_json::json!({
            "url": self.url,
            "secret": self.secret_ref,
            "timeout_ms": 2000,
        }))
        .unwrap();
        HttpDelivery::new(&config).unwrap()
    }

    async fn accepted(&mut self) -> Vec<String> {
        self.seen.accepted.lock().unwrap().clone()
    }

    async fn set_down(&mut self, down: bool) {
        self.seen.down.store(down, SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_delivery_passes_the_conformance_suite_signed_with_stable_ids() {
    let (url, seen) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("signing-secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut gear = Gear {
        url,
        seen: seen.clone(),
        secret_ref: format!("${{file:{}}}", secret_file.display()),
    };
    let log_dir = dir.path().join("log");
    sink_suite(&mut gear, &log_dir).await;

    let attempts = seen.attempts.lock().unwrap().clone();
    assert!(
        attempts.values().flatten().all(|ok| *ok),
        "every attempt verifies under Standard Webhooks: {attempts:?}"
    );
    // The event that exhausted its retries was attempted exactly attempts_max (3) times under
    // one webhook-id, so retries reuse the id.
    assert_eq!(attempts.get("t0").map(Vec::len), Some(3), "{attempts:?}");
}
