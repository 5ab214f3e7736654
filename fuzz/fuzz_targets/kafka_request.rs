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
//! process aborts (`rust_oom`): one unauthenticated request takes the listener down. Until the
//! codec bounds `n` by the bytes left, this target serves allocations of [`HUGE_BYTES`] or more
//! from a lazily mapped, unreserved region (never touched, so it costs nothing) and asserts
//! that a request that needed one was refused (the decoder then runs out of bytes and the
//! connection is closed). Everything else is checked as usual.

#![no_main]

use bytes::Bytes;
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_kafka::server::{Outcome, handle};
use gearbox_kafka::{Kafka, KafkaConfig};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Allocations at least this large are served by [`LazyHuge`] and counted.
const HUGE_BYTES: usize = 1 << 30;
/// Page size bound on the alignment `mmap` guarantees.
const PAGE_BYTES: usize = 4096;

static HUGE_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, except that huge allocations are anonymous `MAP_NORESERVE` mappings:
/// the kernel hands out address space without committing memory, so an untouched reservation
/// is free instead of fatal. See the module's FIXME.
struct LazyHuge;

fn is_huge(layout: Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

fn map(size: usize) -> *mut u8 {
    HUGE_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a new private anonymous mapping; no existing memory is involved. Its pages read
    // as zero, and `mmap` returns page-aligned addresses (`is_huge` checked the alignment).
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every pointer comes from `System` or from `map` and goes back to the same one, chosen
// by the same `is_huge(layout)` test on the layout it was allocated with.
unsafe impl GlobalAlloc for LazyHuge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            return map(layout.size());
        }
        // SAFETY: forwarded as the caller gave it.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(layout) {
            // Fresh anonymous pages are already zero.
            return map(layout.size());
        }
        // SAFETY: forwarded as the caller gave it.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(layout) {
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `map`.
            unsafe { libc::munmap(ptr.cast(), layout.size()) };
            return;
        }
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align()).expect("layout");
        if !is_huge(layout) && !is_huge(new) {
            // SAFETY: both sides are the system allocator's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: a fresh allocation, the overlap copied, the old one freed by its own kind.
        unsafe {
            let out = self.alloc(new);
            if !out.is_null() {
                std::ptr::copy_nonoverlapping(ptr, out, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            out
        }
    }
}

#[global_allocator]
static ALLOCATOR: LazyHuge = LazyHuge;

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
    HUGE_ALLOCATIONS.store(0, Ordering::Relaxed);
    let frame = Bytes::copy_from_slice(data);
    let outcome = h.runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_millis(HANDLE_MS_MAX),
            handle(&h.kafka, frame),
        )
        .await
    });
    if let Ok(outcome) = &outcome
        && HUGE_ALLOCATIONS.load(Ordering::Relaxed) > 0
    {
        // KI-6: tolerated only on the way to a refusal.
        assert!(
            matches!(outcome, Outcome::Close(_)),
            "a request that reserved {HUGE_BYTES}+ bytes was not refused: {outcome:?}"
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
