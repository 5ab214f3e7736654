//! A topic template in a source pipeline's `to`, through the real `gearbox serve`: each webhook
//! delivery lands in the topic its `kind` names; a kind whose topic is not declared, and a
//! delivery with no kind, are dead-lettered to the `dead_letter` topic's DLQ with the reason, and
//! the pipeline keeps going.

mod support;

use gearbox_connectors::webhook::signature::sign_github;
use serde_json::{Value, json};
use support::{Server, free_port};

const SECRET: &str = "template-test-secret";

fn ids(server: &Server, topic: &str) -> Vec<String> {
    let (status, body) = server.get(&format!(
        "/v1/topics/{topic}/partitions/0/events?offset=0&max=100"
    ));
    assert_eq!(status, 200, "{topic}: {body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn each_event_goes_to_the_topic_its_attribute_names() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: ev.a }}, {{ name: ev.b }}, {{ name: ev.unrouted }}]
pipelines:
  - name: kinds
    source:
      webhook: {{ path: /hooks/kinds, scheme: github, secrets: ["${{file:{}}}"], source: "urn:k" }}
    transforms: ['if .data.kind then .kind = .data.kind else . end']
    to: "ev.{{kind}}"
    dead_letter: ev.unrouted
"#,
            secret.display()
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let send = |delivery: &str, data: Value| {
        let body = data.to_string();
        let signature = sign_github(SECRET.as_bytes(), body.as_bytes());
        let (status, reply) = server.post_raw(
            "/hooks/kinds",
            "application/json",
            &[
                ("x-github-delivery", delivery),
                ("x-github-event", "push"),
                ("x-hub-signature-256", &signature),
            ],
            body.as_bytes(),
        );
        assert!(status < 300, "{delivery}: {status} {reply}");
    };
    send("d1", json!({"kind": "a"}));
    send("d2", json!({"kind": "b"}));
    send("d3", json!({"kind": "zzz"}));
    send("d4", json!({"other": 1}));
    send("d5", json!({"kind": "a"}));
    assert_eq!(ids(&server, "ev.a"), ["d1", "d5"]);
    assert_eq!(ids(&server, "ev.b"), ["d2"]);
    assert!(ids(&server, "ev.unrouted").is_empty());
    let (status, dlq) = server.get("/v1/topics/ev.unrouted/dlq");
    assert_eq!(status, 200, "{dlq}");
    let dead = dlq["events"].as_array().unwrap();
    let reason = |id: &str| {
        dead.iter()
            .find(|e| e["event"]["id"] == id)
            .map(|e| e["event"]["dlqerror"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {dlq}"))
    };
    assert!(reason("d3").contains("ev.zzz"), "{}", reason("d3"));
    assert!(reason("d4").contains("`kind`"), "{}", reason("d4"));
}
