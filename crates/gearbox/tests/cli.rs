//! The client verbs, run as a user would: the real binary against a real server.

mod support;

use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};
use support::{GEARBOX, Server};

/// Runs `gearbox --server URL args...` with `stdin`; returns (success, stdout lines as JSON, stderr).
fn cli(s: &Server, args: &[&str], stdin: &str) -> (bool, Vec<Value>, String) {
    let mut child = Command::new(GEARBOX)
        .args(["--server", &s.url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or(Value::String(l.to_string())))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn topics_produce_consume_replay_and_dlq_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));

    let (ok, out, err) = cli(
        &s,
        &["topics", "create", "sensors", "--partitions", "3"],
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out[0]["partitions"], 3);
    let (ok, out, _) = cli(&s, &["topics", "list"], "");
    assert!(ok);
    assert_eq!(out.len(), 1);

    // JSON payloads and plain text are wrapped; a CloudEvent line is sent as it is.
    let input = "{\"celsius\": 21.5}\n{\"celsius\": 22.0}\nplain text\n\
                 {\"specversion\":\"1.0\",\"id\":\"fixed\",\"source\":\"/s\",\"type\":\"t\",\"data\":1}\n";
    let (ok, out, err) = cli(
        &s,
        &[
            "produce", "sensors", "--type", "reading", "--key", "s-7", "--batch", "2",
        ],
        input,
    );
    assert!(ok, "{err}");
    assert_eq!(out.len(), 4, "one result per event");
    assert!(err.contains("produced 4 events"), "{err}");
    // Same key, same partition, in order.
    assert_eq!(out[0]["partition"], out[1]["partition"]);
    assert_eq!(
        out[1]["offset"].as_u64().unwrap(),
        out[0]["offset"].as_u64().unwrap() + 1
    );
    // Producing the CloudEvent again is a duplicate.
    let (ok, out, _) = cli(
        &s,
        &["produce", "sensors"],
        "{\"specversion\":\"1.0\",\"id\":\"fixed\",\"source\":\"/s\",\"type\":\"t\",\"data\":1}\n",
    );
    assert!(ok);
    assert_eq!(out[0]["duplicate"], true);

    // Queue consumption acks what it prints, so a second run gets nothing new.
    let (ok, out, err) = cli(&s, &["consume", "sensors", "--subscription", "live"], "");
    assert!(ok, "{err}");
    assert_eq!(out.len(), 4);
    assert!(out.iter().any(|e| e["event"]["data"] == "plain text"));
    let (ok, out, _) = cli(&s, &["consume", "sensors", "--subscription", "live"], "");
    assert!(ok);
    assert!(out.is_empty(), "acked events are not delivered again");
    let (_, info) = s.get("/v1/topics/sensors/subscriptions/live");
    assert_eq!(info["lag"], 0);

    // Cursor consumption commits; --max stops early and the next run resumes after it.
    let (ok, out, _) = cli(
        &s,
        &[
            "consume",
            "sensors",
            "--subscription",
            "audit",
            "--mode",
            "cursor",
            "--max",
            "3",
        ],
        "",
    );
    assert!(ok);
    assert_eq!(out.len(), 3);
    let (ok, out, _) = cli(
        &s,
        &[
            "consume",
            "sensors",
            "--subscription",
            "audit",
            "--mode",
            "cursor",
        ],
        "",
    );
    assert!(ok);
    assert_eq!(out.len(), 1);

    // Replay reads without a subscription.
    let (ok, out, _) = cli(&s, &["replay", "sensors"], "");
    assert!(ok);
    assert_eq!(out.len(), 4);
    let p = out[0]["partition"].as_u64().unwrap().to_string();
    let (ok, out2, _) = cli(
        &s,
        &["replay", "sensors", "--partition", &p, "--offset", "1"],
        "",
    );
    assert!(ok);
    assert!(out2.iter().all(|e| e["offset"].as_u64().unwrap() >= 1));

    // Dead letters: reject one event, list it, redrive it.
    s.put(
        "/v1/topics/sensors/subscriptions/strict",
        &serde_json::json!({}),
    );
    let (_, polled) = s.post(
        "/v1/topics/sensors/subscriptions/strict/poll",
        &serde_json::json!({"max_events": 1}),
    );
    let item = serde_json::json!({"partition": polled["events"][0]["partition"], "offset": polled["events"][0]["offset"]});
    s.post(
        "/v1/topics/sensors/subscriptions/strict/nack",
        &serde_json::json!({"events": [item], "reject": true, "error": "bad reading"}),
    );
    let (ok, out, _) = cli(&s, &["dlq", "list", "sensors"], "");
    assert!(ok);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0]["event"]["dlqerror"], "bad reading");
    let dlq_p = out[0]["partition"].as_u64().unwrap().to_string();
    let dlq_o = out[0]["offset"].as_u64().unwrap().to_string();
    let (ok, _, _) = cli(
        &s,
        &[
            "dlq",
            "show",
            "sensors",
            "--partition",
            &dlq_p,
            "--offset",
            &dlq_o,
        ],
        "",
    );
    assert!(ok);
    let (ok, _, err) = cli(&s, &["dlq", "redrive", "sensors"], "");
    assert!(ok, "{err}");
    assert!(err.contains("redrove 1 events"), "{err}");

    // An error reply exits non-zero and names its code.
    let (ok, _, err) = cli(&s, &["topics", "describe", "nope"], "");
    assert!(!ok);
    assert!(err.contains("topic_not_found"), "{err}");
}
