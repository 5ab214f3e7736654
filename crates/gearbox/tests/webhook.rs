//! Webhooks in, through the real `gearbox serve`: a GitHub-signed delivery lands in the topic,
//! a redelivery is deduplicated, bad signatures are refused with 401 and nothing is appended,
//! and the configured secret appears in no log line and no API response.

mod support;

use gearbox_connectors::webhook::signature::{sign_github, sign_standard, standard_secret_key};
use serde_json::{Value, json};
use support::{Server, free_port};

const GITHUB_SECRET: &str = "gh-secret-do-not-leak-7f3a9c";
/// `whsec_` + base64("gearbox-test-signing-key-0123456").
const STANDARD_SECRET: &str = "whsec_Z2VhcmJveC10ZXN0LXNpZ25pbmcta2V5LTAxMjM0NTY=";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let gh = dir.join("github-secret");
    std::fs::write(&gh, format!("{GITHUB_SECRET}\n")).unwrap();
    let std_secret = dir.join("standard-secret");
    std::fs::write(&std_secret, STANDARD_SECRET).unwrap();
    let path = dir.join("gearbox.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
topics:
  - name: github-events
    partitions: 2
  - name: orders
pipelines:
  - name: github
    source:
      webhook:
        path: /hooks/github
        scheme: github
        secrets: ["${{file:{gh}}}"]
        source: "https://github.com"
    transforms: ['.subject = .data.repository']
    to: github-events
    freshness_ms: 60000
  - name: shop
    source:
      webhook:
        path: /hooks/shop
        scheme: standard
        secrets: ["${{file:{std}}}"]
        source: "urn:shop"
    to: orders
"#,
            gh = gh.display(),
            std = std_secret.display()
        ),
    )
    .unwrap();
    path
}

fn events(server: &Server, topic: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for p in 0..2 {
        let (status, body) = server.get(&format!(
            "/v1/topics/{topic}/partitions/{p}/events?offset=0&max=100"
        ));
        if status == 200 {
            out.extend(body["events"].as_array().cloned().unwrap_or_default());
        }
    }
    out
}

fn github(server: &Server, delivery: &str, body: &[u8], signature: &str) -> (u16, Value) {
    server.post_raw(
        "/hooks/github",
        "application/json",
        &[
            ("x-github-delivery", delivery),
            ("x-github-event", "push"),
            ("x-hub-signature-256", signature),
        ],
        body,
    )
}

#[test]
fn webhooks_land_once_bad_signatures_are_refused_and_secrets_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = dir.path().join("data");
    let server = Server::start_with(&data, free_port(), &["--config", config.to_str().unwrap()]);
    let mut responses = Vec::new();

    let body = br#"{"repository":"acme/widgets","ref":"refs/heads/main"}"#;
    let good = sign_github(GITHUB_SECRET.as_bytes(), body);
    let (status, reply) = github(&server, "d-1", body, &good);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["duplicate"], json!(false));
    responses.push(reply);

    // The same delivery again: deduplicated on the delivery id.
    let (status, reply) = github(&server, "d-1", body, &good);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["duplicate"], json!(true));
    responses.push(reply);

    // Refusals: tampered body, wrong secret, missing signature.
    let tampered = br#"{"repository":"evil/widgets","ref":"refs/heads/main"}"#;
    let wrong = sign_github(b"not-the-secret", body);
    for (delivery, b, sig) in [
        ("d-2", &tampered[..], good.as_str()),
        ("d-3", &body[..], wrong.as_str()),
    ] {
        let (status, reply) = github(&server, delivery, b, sig);
        assert_eq!(status, 401, "{reply}");
        assert_eq!(reply["code"], json!("webhook_signature_invalid"));
        responses.push(reply);
    }
    let (status, reply) = server.post_raw(
        "/hooks/github",
        "application/json",
        &[("x-github-delivery", "d-4")],
        body,
    );
    assert_eq!(status, 401, "{reply}");
    responses.push(reply);

    let got = events(&server, "github-events");
    assert_eq!(got.len(), 1, "one event for two deliveries of d-1: {got:?}");
    let e = &got[0]["event"];
    assert_eq!(e["id"], json!("d-1"));
    assert_eq!(e["type"], json!("github.push"));
    assert_eq!(e["subject"], json!("acme/widgets"), "the transform ran");

    // Standard Webhooks: a valid delivery, then one with a stale timestamp.
    let key = standard_secret_key(STANDARD_SECRET).unwrap();
    let order = br#"{"type":"order.created","order":42}"#;
    let now = chrono::Utc::now().timestamp();
    for (id, ts, expect) in [("msg-1", now, 200), ("msg-2", now - 3600, 401)] {
        let sig = sign_standard(&key, id, ts, order);
        let (status, reply) = server.post_raw(
            "/hooks/shop",
            "application/json",
            &[
                ("webhook-id", id),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &sig),
            ],
            order,
        );
        assert_eq!(status, expect, "{id}: {reply}");
        responses.push(reply);
    }
    let orders = events(&server, "orders");
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["event"]["type"], json!("order.created"));

    // Health and metrics through the API.
    let (status, pipelines) = server.get("/v1/pipelines");
    assert_eq!(status, 200);
    let gh = pipelines["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == json!("github"))
        .cloned()
        .unwrap();
    assert_eq!(gh["health"], json!("ok"), "{gh}");
    assert_eq!(
        gh["sent"],
        json!(2),
        "one new event and one duplicate sent: {gh}"
    );
    responses.push(pipelines);
    let metrics = ureq::get(&format!("{}/metrics", server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "gearbox_component_received_events_total{component_id=\"github\",component_kind=\"source\",component_type=\"webhook\"} 2"
        ),
        "{metrics}"
    );

    // The pipeline's topic disappears: the delivery is answered 503 (the sender retries later),
    // and the pipeline reports the failure as its health.
    let (status, reply) = server.delete("/v1/topics/orders");
    assert_eq!(status, 204, "{reply}");
    let now = chrono::Utc::now().timestamp();
    let sig = sign_standard(&key, "msg-3", now, order);
    let (status, reply) = server.post_raw(
        "/hooks/shop",
        "application/json",
        &[
            ("webhook-id", "msg-3"),
            ("webhook-timestamp", &now.to_string()),
            ("webhook-signature", &sig),
        ],
        order,
    );
    assert_eq!(status, 503, "{reply}");
    assert_eq!(reply["code"], json!("pipeline_unavailable"));
    responses.push(reply);
    let (_, shop) = server.get("/v1/pipelines/shop");
    assert_eq!(shop["health"], json!("error"), "{shop}");
    assert!(
        shop["failure"]
            .as_str()
            .unwrap_or_default()
            .contains("orders"),
        "{shop}"
    );
    responses.push(shop);

    // The secrets appear nowhere: not in the log, not in any response.
    let mut texts = vec![server.log_text(), metrics];
    texts.extend(responses.iter().map(Value::to_string));
    for text in &texts {
        assert!(!text.contains(GITHUB_SECRET), "secret leaked: {text}");
        assert!(!text.contains(STANDARD_SECRET), "secret leaked: {text}");
        assert!(!text.contains("Z2VhcmJveC10ZXN0"), "secret leaked: {text}");
    }
}
