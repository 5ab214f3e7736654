//! Hostile Kafka requests against the real `gearbox serve --kafka` (with the binary's own
//! allocator): KI-6's reproducer (`docs/testing.md`), a ~100-byte Fetch declaring 2^31 topics,
//! is refused with a closed connection and the server keeps serving both protocols.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{Server, free_port};

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// ApiVersions v0, correlation id 7, client id "t".
fn api_versions() -> Vec<u8> {
    framed(&[0, 18, 0, 0, 0, 0, 0, 7, 0, 1, b't'])
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends ApiVersions and reads the answer's correlation id.
fn answers(addr: &str) -> i32 {
    let mut s = connect(addr);
    s.write_all(&api_versions()).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

#[test]
fn a_request_declaring_billions_of_elements_is_refused_and_the_server_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = format!("127.0.0.1:{}", free_port());
    let s = Server::start_with(&dir.path().join("data"), free_port(), &["--kafka", &kafka]);
    assert_eq!(answers(&kafka), 7);
    let repro = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/regressions/kafka_request/fetch-topics-count-2g-reserves-before-decoding"
    ))
    .unwrap();
    for _ in 0..20 {
        let mut c = connect(&kafka);
        c.write_all(&framed(&repro)).unwrap();
        let mut rest = Vec::new();
        // The listener closes the connection without an answer.
        assert_eq!(c.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
    }
    assert_eq!(answers(&kafka), 7, "server log:\n{}", s.log_text());
    let (status, _) = s.get("/healthz");
    assert_eq!(status, 200);
    let metrics = s.metrics();
    assert!(
        metrics.contains("gearbox_kafka_connections_closed_bad_request_total{} 20\n"),
        "{metrics}"
    );
}
