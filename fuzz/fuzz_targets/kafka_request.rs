//! The Kafka listener's request path (`gearbox_kafka::server::handle`) on arbitrary bytes.
//!
//! Input: the whole input is one request frame without its size prefix (api key, version,
//! correlation id, the rest of the header, the body), as the listener hands it to `handle`.
//!
//! One broker is opened per process in a temporary directory (`SyncMode::Never`: this target
//! is about decoding and dispatch, not durability) and served by a current-thread tokio
//! runtime; the state that requests leave behind (topics, batches, producer ids) carries over
//! from one input to the next, as on a real listener. To keep that state bounded, every topic
//! is deleted once there are more than [`TOPICS_KEPT_MAX`].
//!
//! Asserted, besides "never panics":
//! * a reply starts with the request's correlation id (every response header does), and
//!   ApiVersions is always answered;
//! * nothing but Produce with `acks` 0 is silent.
//!
//! A valid Fetch may wait up to `FETCH_WAIT_MS_MAX` for data; such an input is cut off after
//! [`HANDLE_MS_MAX`] (long polling is not what this target looks at).
//!
//! FIXME(KI-6, docs/testing.md): kafka-protocol 0.18 decodes an array by reserving
//! `Vec::with_capacity(n)` for the element count `n` read off the wire, before decoding any
//! element, so a ~100-byte request declaring 2^31 elements asks for hundreds of GB and the
//! process would abort (`rust_oom`). Until the codec bounds `n` by the bytes left, processes
//! that serve the listener install `gearbox_kafka::alloc::ReserveHuge` (huge allocations are
//! lazily reserved, never touched), as this target does; it asserts that a request that needed
//! such a reservation was refused (the decoder runs out of bytes and the connection is
//! closed). Everything else is checked as usual.

#![no_main]

use bytes::Bytes;
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_kafka::server::{Outcome, handle};
use gearbox_kafka::{Kafka, KafkaConfig};
use libfuzzer_sys::fuzz_target;
use gearbox_kafka::alloc::{ReserveHuge, huge_allocations};
use std::alloc::System;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The listener's own guard (`gearbox_kafka::alloc`), as `gearbox` installs it.
#[global_allocator]
static ALLOCATOR: ReserveHuge<System> = ReserveHuge(System);

/// Topics left in place between inputs; beyond it all are deleted.
const TOPICS_KEPT_MAX: usize = 16;
/// Longest one input may take in `handle` (a long-polling Fetch would otherwise wait).
const HANDLE_MS_MAX: u64 = 50;

struct Harness {
    runtime: tokio::runtime::Runtime,
    kafka: Arc<Kafka>,
    broker: Arc<Broker>,
    // Kept so the directory lives as long as the process.
    _dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = BrokerConfig::durable();
        config.sync = gearbox_log::SyncMode::Never;
        config.background = false;
        let broker = Arc::new(Broker::open(dir.path(), config).expect("open broker"));
        let kafka = Kafka::new(broker.clone(), KafkaConfig::new("127.0.0.1", 9092)).expect("kafka");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Harness {
            runtime,
            kafka,
            broker,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let huge_before = huge_allocations();
    let frame = Bytes::copy_from_slice(data);
    let outcome = h.runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(HANDLE_MS_MAX),
            handle(&h.kafka, frame),
        )
        .await
    });
    if let Ok(outcome) = &outcome
        && huge_allocations() > huge_before
    {
        // KI-6: tolerated only on the way to a refusal.
        assert!(
            matches!(outcome, Outcome::Close(_)),
            "a request that needed a huge reservation was not refused: {outcome:?}"
        );
    }
    if let Ok(outcome) = outcome {
        let key = data.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
        match outcome {
            Outcome::Reply(body) => {
                assert!(body.len() >= 4, "a reply without a correlation id");
                assert_eq!(body[..4], data[4..8], "the reply's correlation id");
            }
            Outcome::Silent => assert_eq!(key, Some(0), "only Produce (acks 0) is silent"),
            Outcome::Close(_) => {
                if key == Some(18) && data.len() >= 8 {
                    // ApiVersions is answered at any version; only a frame whose header or
                    // body does not decode closes.
                    let version = i16::from_be_bytes([data[2], data[3]]);
                    assert!(
                        (0..=gearbox_kafka::versions::API_VERSIONS.max).contains(&version),
                        "ApiVersions v{version} closed instead of answering in v0"
                    );
                }
            }
        }
    }
    let topics = h.broker.topics();
    if topics.len() > TOPICS_KEPT_MAX {
        for t in topics {
            let _ = h.broker.delete_topic(&t.name);
        }
    }
});
