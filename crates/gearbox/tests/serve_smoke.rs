//! The server starts, answers /healthz, round-trips an event, and stops cleanly on SIGTERM.

mod support;

use serde_json::json;
use support::{Server, event};

#[test]
fn serve_round_trips_an_event_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"));
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.get("/readyz").0, 200);
    assert_eq!(
        s.post("/v1/topics", &json!({"name": "t", "partitions": 2}))
            .0,
        201
    );
    let (status, body) = s.post_raw(
        "/v1/topics/t/events",
        "application/cloudevents+json",
        &[],
        event("e1", "/src", json!({"n": 1})).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let p = body["results"][0]["partition"].as_u64().unwrap();
    let (status, read) = s.get(&format!("/v1/topics/t/partitions/{p}/events?offset=0"));
    assert_eq!(status, 200);
    assert_eq!(
        read["events"][0]["event"],
        event("e1", "/src", json!({"n": 1}))
    );
    assert!(
        s.terminate(),
        "SIGTERM exits with success; log:\n{}",
        s.log_text()
    );
    assert!(s.log_text().contains("stopped cleanly"));
}
