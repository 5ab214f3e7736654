//! Named limits that protect memory under load, hit through the real server.

mod support;

use serde_json::json;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use support::{Server, event, free_port};

#[test]
fn publishes_beyond_the_in_flight_limit_are_refused_with_429_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--publish-in-flight-max", "1"],
    );
    assert_eq!(s.post("/v1/topics", &json!({"name": "t"})).0, 201);

    // Hold the only slot: send the headers and half of the body, then wait.
    let body = event("slow", "/s", json!({"n": 1})).to_string();
    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
    let hold = || {
        let mut slow = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
        write!(
            slow,
            "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        slow.write_all(head).unwrap();
        slow.flush().unwrap();
        slow
    };
    let mut slow = hold();

    // Another publish is refused at once with the stable code, whatever its size. If a `fast`
    // request held the slot when the slow one's headers arrived, the slow one was itself
    // refused (its 429 is waiting on its socket): then hold the slot again and retry.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // A `fast` that got through before the slot was held is stored once (it is deduplicated).
    let mut fast_accepted = 0;
    let refused = loop {
        let (status, reply) = s.post_raw(
            "/v1/topics/t/events",
            "application/cloudevents+json",
            &[],
            event("fast", "/s", json!(1)).to_string().as_bytes(),
        );
        if status == 429 {
            break reply;
        }
        fast_accepted = 1;
        slow.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 16];
        if matches!(slow.peek(&mut peek), Ok(n) if n > 0) {
            slow = hold();
        }
        slow.set_nonblocking(false).unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "never refused: {status} {reply}"
        );
    };
    assert_eq!(refused["code"], "overloaded");
    // Reads and other routes are not limited.
    assert_eq!(s.get("/v1/topics/t").0, 200);

    // The held request completes normally once its body arrives.
    slow.write_all(tail).unwrap();
    let mut reply = String::new();
    slow.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let (_, topic) = s.get("/v1/topics/t");
    let total: u64 = topic["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total,
        1 + fast_accepted,
        "only the accepted events were appended"
    );
    // With the slot free again, publishing works.
    let (status, _) = s.post_raw(
        "/v1/topics/t/events",
        "application/cloudevents+json",
        &[],
        event("after", "/s", json!(1)).to_string().as_bytes(),
    );
    assert_eq!(status, 201);
}
