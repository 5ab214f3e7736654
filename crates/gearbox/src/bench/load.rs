//! The workload every `gearbox bench` target runs, and the drivers that run it.
//!
//! A comparison is only fair when each system does the same work. So the suite describes the
//! work once ([`Workload`]) and every target (the embedded log, the HTTP server, NATS JetStream,
//! Redis Streams) runs exactly that:
//! - **Ingest**: `concurrency` producers share a budget of `events` events. Each claims the next
//!   `batch` sequence numbers ([`Budget::claim`]), publishes them as one batch (one append, one
//!   HTTP request, one pipeline of `XADD`s, one window of JetStream publishes), and waits until
//!   every event of the batch is acknowledged as durable by the target's own definition. The
//!   batch's latency, from the first byte sent to the last acknowledgement, goes into a
//!   histogram. Event `n` has the id `n` and the key `k{n % keys}`.
//! - **Produce-to-consume**: one producer sends `rate` events a second, `rate × tick_ms / 1000`
//!   every `tick_ms` ([`paced`]), each carrying its send time in nanoseconds since a shared
//!   [`Instant`]. One consumer reads them as they arrive and commits its position the way that
//!   target's consumers do; the latency of each event runs from just before its batch was sent
//!   to the moment the consumer holds it.
//!
//! Every run is bounded: by `events`, by `seconds_max` (a slow target stops early and is flagged
//! `capped`), and the consumer gives up [`DRAIN_TIMEOUT`] after the producer stops.

use super::hist::Histogram;
use anyhow::{Context as _, bail};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a produce-to-consume consumer keeps reading after the producer has stopped.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The work each target does; see the module documentation.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Events per target in the ingest run.
    pub events: u64,
    /// Bytes of data per event.
    pub event_bytes: usize,
    /// Events per batch.
    pub batch: usize,
    /// Concurrent producers (threads or tasks, each with its own connection).
    pub concurrency: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Partitions (streams, for Redis) the keys spread over.
    pub partitions: u32,
    /// Events per second in the produce-to-consume run.
    pub rate: u64,
    /// Milliseconds between the produce-to-consume batches.
    pub tick_ms: u64,
    /// Length of the produce-to-consume run.
    pub e2e: Duration,
    /// Longest an ingest run may take.
    pub seconds_max: Duration,
}

impl Workload {
    /// Events per produce-to-consume batch (at least one).
    #[must_use]
    pub fn per_tick(&self) -> usize {
        usize::try_from((self.rate * self.tick_ms / 1000).max(1)).unwrap_or(usize::MAX)
    }

    /// The key of event `seq`.
    #[must_use]
    pub fn key(&self, seq: u64) -> String {
        format!("k{}", seq % self.keys)
    }

    /// The data of every event: `event_bytes` of printable text, so that it travels unchanged
    /// as a JSON string, an HTTP body, a NATS payload and a Redis bulk string.
    #[must_use]
    pub fn data(&self) -> String {
        "x".repeat(self.event_bytes)
    }
}

/// What an ingest run measured.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Events acknowledged.
    pub events: u64,
    /// Wall time from the first send to the last acknowledgement.
    pub seconds: f64,
    /// Latency of each batch, from its first byte out to its last acknowledgement.
    pub latency: Histogram,
    /// Whether `seconds_max` ran out before the budget did.
    pub capped: bool,
    /// Bytes the target wrote for these events, where the bench can know it (the log's encoded
    /// batches), for a comparison with the disk's bandwidth.
    pub bytes_written: Option<u64>,
}

impl Ingest {
    /// Events per second.
    #[must_use]
    pub fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }
}

/// What a produce-to-consume run measured.
#[derive(Debug, Clone)]
pub struct E2e {
    /// Events the producer had acknowledged.
    pub sent: u64,
    /// Events the consumer received (duplicates included).
    pub received: u64,
    /// Latency of each received event.
    pub latency: Histogram,
}

/// The shared event budget of an ingest run.
#[derive(Debug)]
pub struct Budget {
    next: AtomicU64,
    total: u64,
    batch: u64,
    deadline: Instant,
    capped: AtomicBool,
}

impl Budget {
    /// A budget of `w.events`, to be spent within `w.seconds_max` from now.
    #[must_use]
    pub fn new(w: &Workload) -> Budget {
        Budget {
            next: AtomicU64::new(0),
            total: w.events,
            batch: w.batch as u64,
            deadline: Instant::now() + w.seconds_max,
            capped: AtomicBool::new(false),
        }
    }

    /// The next batch: its first sequence number and its length, or `None` when the budget or
    /// the time is spent.
    pub fn claim(&self) -> Option<(u64, usize)> {
        if Instant::now() >= self.deadline {
            self.capped.store(true, Ordering::Relaxed);
            return None;
        }
        let first = self.next.fetch_add(self.batch, Ordering::Relaxed);
        if first >= self.total {
            return None;
        }
        let n = self.batch.min(self.total - first);
        Some((first, usize::try_from(n).unwrap_or(usize::MAX)))
    }

    /// Whether the run stopped at `seconds_max`.
    #[must_use]
    pub fn capped(&self) -> bool {
        self.capped.load(Ordering::Relaxed)
    }
}

/// One producer of a thread-driven ingest run: publishes the batch `(first, n)` and returns once
/// it is acknowledged.
pub type Producer<'a> = Box<dyn FnMut(u64, usize) -> anyhow::Result<()> + Send + 'a>;

/// Runs an ingest with one thread per producer, all started together.
///
/// # Errors
/// The first error of any producer (the others stop at their next batch).
pub fn drive(w: &Workload, producers: Vec<Producer<'_>>) -> anyhow::Result<Ingest> {
    let budget = Budget::new(w);
    let failed = AtomicBool::new(false);
    let barrier = Barrier::new(producers.len() + 1);
    let (outcomes, seconds) = std::thread::scope(|s| {
        let handles: Vec<_> = producers
            .into_iter()
            .map(|mut produce| {
                let (budget, failed, barrier) = (&budget, &failed, &barrier);
                s.spawn(move || -> anyhow::Result<(u64, Histogram)> {
                    let (mut events, mut hist) = (0u64, Histogram::new());
                    barrier.wait();
                    while !failed.load(Ordering::Relaxed)
                        && let Some((first, n)) = budget.claim()
                    {
                        let t = Instant::now();
                        if let Err(e) = produce(first, n) {
                            failed.store(true, Ordering::Relaxed);
                            return Err(e);
                        }
                        hist.record(t.elapsed());
                        events += n as u64;
                    }
                    Ok((events, hist))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let outcomes: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (outcomes, start.elapsed().as_secs_f64())
    });
    let mut out = Ingest {
        events: 0,
        seconds,
        latency: Histogram::new(),
        capped: budget.capped(),
        bytes_written: None,
    };
    for outcome in outcomes {
        let Ok(result) = outcome else {
            bail!("a producer thread panicked");
        };
        let (events, hist) = result?;
        out.events += events;
        out.latency.merge(&hist);
    }
    Ok(out)
}

/// Sends `w.per_tick()` events every `w.tick_ms` for `w.e2e`, through `send(first, n, sent_ns)`,
/// where `sent_ns` is the nanoseconds since `base` just before the send. Returns how many events
/// were sent (each send returns once the target acknowledged it).
///
/// # Errors
/// The first error of `send`.
pub fn paced(
    w: &Workload,
    base: Instant,
    mut send: impl FnMut(u64, usize, u64) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let per_tick = w.per_tick();
    let tick = Duration::from_millis(w.tick_ms);
    let end = Instant::now() + w.e2e;
    let mut sent = 0u64;
    let mut next = Instant::now();
    while Instant::now() < end {
        send(sent, per_tick, nanos_since(base))
            .with_context(|| format!("sending events {sent}.."))?;
        sent += per_tick as u64;
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(sent)
}

/// A produce-to-consume run: `consume(base, finish)` on its own thread, reading until
/// `finish.consumer_may_stop` and returning how many events it received with their latencies,
/// while this thread sends through [`paced`] with `send`. Every target's e2e run is this shape;
/// only its consumer and its send differ.
///
/// # Errors
/// The producer's or the consumer's first error, or a consumer that panicked.
pub fn produce_consume(
    w: &Workload,
    consume: impl FnOnce(Instant, &Finish) -> anyhow::Result<(u64, Histogram)> + Send,
    send: impl FnMut(u64, usize, u64) -> anyhow::Result<()>,
) -> anyhow::Result<E2e> {
    let base = Instant::now();
    let finish = Finish::default();
    let (sent, (received, latency)) = std::thread::scope(|s| {
        let finish = &finish;
        let consumer = s.spawn(move || consume(base, finish));
        let sent = paced(w, base, send);
        finish.producer_done(*sent.as_ref().unwrap_or(&0));
        let consumed = consumer
            .join()
            .map_err(|_| anyhow::anyhow!("the consumer panicked"))?;
        anyhow::Ok((sent?, consumed?))
    })?;
    Ok(E2e {
        sent,
        received,
        latency,
    })
}

/// Nanoseconds from `base` to now.
#[must_use]
pub fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Tells a produce-to-consume consumer when to stop: once the producer is done and every event
/// it sent has arrived, or [`DRAIN_TIMEOUT`] after the producer is done.
#[derive(Debug, Default)]
pub struct Finish {
    sent: AtomicU64,
    done: AtomicBool,
    done_at: std::sync::OnceLock<Instant>,
}

impl Finish {
    /// Marks the producer done after sending `sent` events.
    pub fn producer_done(&self, sent: u64) {
        self.sent.store(sent, Ordering::SeqCst);
        let _ = self.done_at.set(Instant::now());
        self.done.store(true, Ordering::SeqCst);
    }

    /// Whether a consumer that has received `received` events should stop.
    #[must_use]
    pub fn consumer_may_stop(&self, received: u64) -> bool {
        self.done.load(Ordering::SeqCst)
            && (received >= self.sent.load(Ordering::SeqCst)
                || self
                    .done_at
                    .get()
                    .is_some_and(|t| t.elapsed() >= DRAIN_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(events: u64, batch: usize) -> Workload {
        Workload {
            events,
            event_bytes: 8,
            batch,
            concurrency: 3,
            keys: 10,
            partitions: 2,
            rate: 1000,
            tick_ms: 10,
            e2e: Duration::from_millis(50),
            seconds_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn the_budget_hands_out_every_event_once_in_batches() {
        let w = workload(2_500, 1_000);
        let b = Budget::new(&w);
        assert_eq!(b.claim(), Some((0, 1_000)));
        assert_eq!(b.claim(), Some((1_000, 1_000)));
        assert_eq!(b.claim(), Some((2_000, 500)));
        assert_eq!(b.claim(), None);
        assert!(!b.capped());
    }

    #[test]
    fn drive_publishes_the_whole_budget_exactly_once() {
        let w = workload(10_007, 100);
        let seen = std::sync::Mutex::new(vec![0u8; 10_007]);
        let producers: Vec<Producer<'_>> = (0..w.concurrency)
            .map(|_| {
                let seen = &seen;
                Box::new(move |first: u64, n: usize| {
                    let mut s = seen.lock().unwrap();
                    for i in first..first + n as u64 {
                        s[usize::try_from(i).unwrap()] += 1;
                    }
                    Ok(())
                }) as Producer<'_>
            })
            .collect();
        let out = drive(&w, producers).unwrap();
        assert_eq!(out.events, 10_007);
        assert_eq!(out.latency.count(), 101, "one sample per batch");
        assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
    }

    #[test]
    fn a_failing_producer_fails_the_run() {
        let w = workload(1_000, 10);
        let producers: Vec<Producer<'_>> = vec![Box::new(|first, _| {
            if first >= 500 {
                bail!("refused at {first}")
            }
            Ok(())
        })];
        let err = drive(&w, producers).unwrap_err();
        assert!(err.to_string().contains("refused at 500"), "{err}");
    }

    #[test]
    fn paced_sends_at_the_rate_and_counts_events() {
        let w = workload(0, 1);
        let mut batches = Vec::new();
        let sent = paced(&w, Instant::now(), |first, n, _| {
            batches.push((first, n));
            Ok(())
        })
        .unwrap();
        // 50 ms at 10 events every 10 ms: never more than one batch per tick (a slow machine
        // may send fewer; timing is not asserted beyond the pacing itself).
        assert!((1..=6).contains(&batches.len()), "{batches:?}");
        assert_eq!(sent, batches.len() as u64 * 10);
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(*b, (i as u64 * 10, 10));
        }
    }

    #[test]
    fn the_consumer_stops_once_everything_arrived() {
        let f = Finish::default();
        assert!(!f.consumer_may_stop(100));
        f.producer_done(100);
        assert!(!f.consumer_may_stop(99));
        assert!(f.consumer_may_stop(100));
    }
}
