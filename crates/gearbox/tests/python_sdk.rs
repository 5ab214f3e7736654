//! A real client: the Python `cloudevents` SDK from PyPI (pinned in
//! `tests/python/requirements.txt`, installed into `.venv` by `.ci/python-env`) sends events to
//! `gearbox serve` in HTTP structured and binary modes, and reads each back equal.
//!
//! The client is `tests/python/cloudevents_sdk_roundtrip.py`; this test starts the server,
//! creates the topic and runs it.

mod support;

use serde_json::json;
use support::Server;

#[test]
fn python_cloudevents_sdk_round_trips_structured_and_binary_events() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let topic = "python-sdk";
    let (status, body) = s.post("/v1/topics", &json!({"name": topic, "partitions": 3}));
    assert_eq!(status, 201, "{body}");

    let stdout = support::run_python("cloudevents_sdk_roundtrip.py", &[s.url.as_str(), topic], &s);
    assert!(
        stdout.contains("read back equal"),
        "no summary line in the output:\n{stdout}"
    );
}
