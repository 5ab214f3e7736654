//! The webhook receiver in the conformance suite: a sender that signs with Standard Webhooks and
//! retries what the receiver refused, as real senders do.

use gearbox_connect::testkit::{SourceGear, WAIT_MS_MAX, source_suite};
use gearbox_connectors::webhook::signature::{sign_standard, standard_secret_key};
use gearbox_connectors::webhook::{
    ReceiveError, WebhookConfig, WebhookEndpoint, WebhookSource, receiver,
};
use std::time::{Duration, Instant};

/// `whsec_` + base64("gearbox-test-signing-key-0123456").
const SECRET: &str = "whsec_Z2VhcmJveC10ZXN0LXNpZ25pbmcta2V5LTAxMjM0NTY=";

struct Sender {
    secret_ref: String,
    endpoint: Option<WebhookEndpoint>,
}

impl Sender {
    async fn deliver(&self, id: &str, body: &[u8]) {
        let endpoint = self.endpoint.as_ref().expect("connected");
        let key = standard_secret_key(SECRET).unwrap();
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        loop {
            let ts = chrono::Utc::now().timestamp();
            let mut headers = http::HeaderMap::new();
            headers.insert("webhook-id", id.parse().unwrap());
            headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
            headers.insert(
                "webhook-signature",
                sign_standard(&key, id, ts, body).parse().unwrap(),
            );
            match endpoint.receive(&headers, body).await {
                Ok(_) => return,
                Err(ReceiveError::Unavailable(_) | ReceiveError::Busy { .. }) => {
                    assert!(Instant::now() < deadline, "delivery of {id} never accepted");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("delivery of {id} refused: {e}"),
            }
        }
    }
}

impl SourceGear for Sender {
    type Source = WebhookSource;

    async fn connect(&mut self) -> WebhookSource {
        let config: WebhookConfig = serde_json::from_value(serde_json::json!({
            "path": "/hooks/conformance",
            "scheme": "standard",
            "secrets": [self.secret_ref],
            "source": "urn:test:sender",
        }))
        .unwrap();
        let (endpoint, source) = receiver(config).unwrap();
        self.endpoint = Some(endpoint);
        source
    }

    async fn emit(&mut self, keys: &[String], poison: bool) -> Vec<String> {
        for k in keys {
            let body =
                serde_json::to_vec(&serde_json::json!({"key": k, "poison": poison})).unwrap();
            self.deliver(k, &body).await;
        }
        keys.to_vec()
    }

    fn buffers_while_down(&self) -> bool {
        false
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_receiver_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let mut sender = Sender {
        secret_ref: format!("${{file:{}}}", secret_file.display()),
        endpoint: None,
    };
    source_suite(&mut sender, &dir.path().join("log")).await;
}

#[tokio::test]
async fn the_receivers_queue_and_body_limits_refuse_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let config: WebhookConfig = serde_json::from_value(serde_json::json!({
        "path": "/hooks/limits",
        "scheme": "standard",
        "secrets": [format!("${{file:{}}}", secret_file.display())],
        "source": "urn:test:sender",
        "queue_max": 1,
        "body_bytes_max": 64,
        "reply_timeout_ms": 200,
    }))
    .unwrap();
    // No pipeline drains the source: the first delivery waits in the queue (and then times out),
    // the second finds the queue full.
    let (endpoint, _source) = receiver(config).unwrap();
    let key = standard_secret_key(SECRET).unwrap();
    let signed = |id: &str, body: &[u8]| {
        let ts = chrono::Utc::now().timestamp();
        let mut h = http::HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert(
            "webhook-signature",
            sign_standard(&key, id, ts, body).parse().unwrap(),
        );
        h
    };
    // Two deliveries at once into a queue of one: one waits (and times out, 503), the other is
    // refused as busy (429).
    let tasks: Vec<_> = ["m-1", "m-2"]
        .into_iter()
        .map(|id| {
            let endpoint = endpoint.clone();
            let h = signed(id, b"{}");
            tokio::spawn(async move { endpoint.receive(&h, b"{}").await })
        })
        .collect();
    let mut busy = 0;
    let mut timed_out = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(ReceiveError::Busy { max: 1 }) => busy += 1,
            Err(ReceiveError::Unavailable(_)) => timed_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((busy, timed_out), (1, 1));
    let big = vec![b' '; 65];
    assert!(matches!(
        endpoint.receive(&signed("m-3", &big), &big).await,
        Err(ReceiveError::TooLarge { len: 65, max: 64 })
    ));
}
