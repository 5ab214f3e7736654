//! Jepsen-style torture test of the real `gearbox serve` binary over HTTP.
//!
//! One server runs on a fixed port over a temporary data directory, with topic `torture`
//! (4 partitions), a cursor subscription `audit` and a queue subscription `work`. While
//! 4 producer threads publish batches of 1 to 20 events (`application/cloudevents-batch+json`,
//! ids `p{producer}-{seq}`, a `partitionkey` from a small set), a consumer commits the cursor
//! subscription and a worker acks the queue subscription, the main thread kills the server with
//! SIGKILL [`KILLS`] times at seeded random intervals and restarts it each time.
//!
//! A request that fails at the transport level, times out, or gets a 5xx has an unknown outcome:
//! its events may or may not be stored. The producer retries the same batch (same ids) until it
//! is acknowledged; deduplication must then report the events that were stored by an earlier
//! attempt as `duplicate: true` at their original position and append only the rest. Some
//! batches also deliberately repeat 1 to 3 events that were acknowledged earlier; those must come
//! back as duplicates at exactly their acknowledged position.
//!
//! At the end the producers stop (finishing their current batch), the server is killed and
//! restarted once more without any writer, every partition is read from offset 0 to its high
//! watermark, and the history is checked:
//! - every acknowledged event is present at exactly its acknowledged partition and offset, with
//!   the content that was sent (0 lost, 0 moved, 0 changed);
//! - offsets are contiguous from 0 (0 gaps) and each offset holds one event (0 double offsets);
//! - no event is stored twice (0 duplicates) and nothing is stored that was never sent
//!   (0 phantoms);
//! - each event is in the partition Kafka's partitioner gives its key, and events of one
//!   producer with the same key are in publish order;
//! - every event the subscriptions delivered is in the final log at the delivered position;
//! - committed cursor positions (and queue floors) never go backwards: every position the
//!   server reports is at least every commit acknowledged, and every position reported, before
//!   the request was sent; an event acked in the queue is never delivered again.
//!
//! Set `GEARBOX_TORTURE_SEED` to replay a run's schedule and batches (the seed is printed;
//! thread timing is not reproducible).

mod support;

use gearbox_core::partitioner::partition_for;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::Server;

const TOPIC: &str = "torture";
const PARTITIONS: u32 = 4;
const PRODUCERS: u32 = 4;
/// SIGKILLs while the producers run (one more follows once they stopped).
const KILLS: u32 = 50;
const RUN_MS_MIN: u64 = 50;
const RUN_MS_MAX: u64 = 300;
const BATCH_EVENTS_MAX: u64 = 20;
/// One batch in this many also repeats 1 to 3 events acknowledged before.
const RESEND_ONE_IN: u64 = 6;
/// Re-sent events are among the producer's last this many (well inside the 100,000-event dedup
/// window, however fast the machine).
const RESEND_RECENT: u64 = 2000;
/// Partition keys; together they cover every partition (checked at the start).
const KEYS: [&str; 8] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
];
/// Timeout of every request of the producers and consumers.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed request before the next one (the server may be restarting).
const RETRY_BACKOFF: Duration = Duration::from_millis(15);
/// The whole test fails if it takes longer than this.
const HARD_CAP: Duration = Duration::from_secs(150);
const EVENTS_PATH: &str = "/v1/topics/torture/events";
const AUDIT: &str = "/v1/topics/torture/subscriptions/audit";
const WORK: &str = "/v1/topics/torture/subscriptions/work";

#[test]
fn sigkill_torture_over_http_loses_no_acknowledged_event() {
    let seed = std::env::var("GEARBOX_TORTURE_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("GEARBOX_TORTURE_SEED is a u64"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("torture: seed {seed} (replay with GEARBOX_TORTURE_SEED={seed})");
    let started = Instant::now();
    let deadline = started + HARD_CAP;
    let covered: HashSet<u32> = KEYS
        .iter()
        .map(|k| partition_for(k.as_bytes(), PARTITIONS))
        .collect();
    assert_eq!(
        covered.len(),
        PARTITIONS as usize,
        "the keys cover every partition"
    );

    let tmp = KeepOnPanic(Some(tempfile::tempdir().unwrap()));
    let data = tmp.0.as_ref().unwrap().path().join("data");
    let mut server = Server::start_on(&data, support::free_port());
    let (status, body) = server.post(
        "/v1/topics",
        &json!({"name": TOPIC, "partitions": PARTITIONS}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.put(AUDIT, &json!({"mode": "cursor"}));
    assert_eq!(status, 201, "{body}");
    // Events in flight at several kills are redelivered each time; keep them out of the DLQ.
    let (status, body) = server.put(WORK, &json!({"mode": "queue", "max_attempts": 1000}));
    assert_eq!(status, 201, "{body}");

    let shared = Arc::new(Shared {
        url: server.url.clone(),
        seed,
        deadline,
        stop_producers: AtomicBool::new(false),
        stop_consumers: AtomicBool::new(false),
        audit: Floor::new("audit"),
        work: Floor::new("work"),
    });
    let producers: Vec<JoinHandle<ProducerLog>> = (0..PRODUCERS)
        .map(|p| {
            let shared = shared.clone();
            std::thread::spawn(move || produce(&shared, p))
        })
        .collect();
    let consumer = {
        let shared = shared.clone();
        std::thread::spawn(move || consume_cursor(&shared))
    };
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || work_queue(&shared))
    };

    // The kills.
    let main_client = Client::new(&server.url, Duration::from_secs(10));
    let mut rng = seed;
    let mut kills = 0u32;
    let mut restart_ms_max = 0u128;
    while kills < KILLS {
        assert!(
            Instant::now() < deadline,
            "torture (seed {seed}): over the {HARD_CAP:?} cap after {kills} kills"
        );
        let run_ms = RUN_MS_MIN + next(&mut rng) % (RUN_MS_MAX - RUN_MS_MIN + 1);
        // The deliberate run time before the kill.
        std::thread::sleep(Duration::from_millis(run_ms));
        let t = Instant::now();
        server.restart_after_kill9();
        restart_ms_max = restart_ms_max.max(t.elapsed().as_millis());
        kills += 1;
        check_positions(&main_client, &shared, "main after restart");
    }
    let produce_secs = started.elapsed().as_secs_f64();

    // Stop: producers finish (and get acknowledged) their current batch, consumers stop.
    shared.stop_producers.store(true, Ordering::SeqCst);
    let logs: Vec<ProducerLog> = producers
        .into_iter()
        .map(|h| h.join().expect("producer thread"))
        .collect();
    shared.stop_consumers.store(true, Ordering::SeqCst);
    let cursor = consumer.join().expect("consumer thread");
    let queue = worker.join().expect("worker thread");

    // One more kill with no writer, then the final read.
    server.restart_after_kill9();
    kills += 1;
    check_positions(&main_client, &shared, "main after the last restart");
    let log_text = server.log_text();
    let fatal: Vec<String> = logs.iter().flat_map(|l| l.fatal.clone()).collect();
    assert!(
        fatal.is_empty(),
        "torture (seed {seed}): producers failed:\n{}\nserver log (tail):\n{}",
        fatal.join("\n"),
        tail(&log_text, 60)
    );
    let final_log = read_everything(&main_client, seed);
    let report = verify(seed, &logs, &cursor, &queue, &final_log);
    let regressions: Vec<String> = [&shared.audit, &shared.work]
        .iter()
        .flat_map(|f| f.regressions.lock().unwrap().clone())
        .collect();
    let panics = log_text.matches("panicked").count();
    let recovery_warnings = log_text.matches("gearbox::recovery").count();

    let acked: u64 = logs.iter().map(|l| l.acked).sum();
    let acked_dup: u64 = logs.iter().map(|l| l.acked_dup_on_retry).sum();
    let unknown: u64 = logs.iter().map(|l| l.unknown_batches).sum();
    let unknown_attempts: u64 = logs.iter().map(|l| l.unknown_attempts).sum();
    let resent: u64 = logs.iter().map(|l| l.resent).sum();
    let batches: u64 = logs.iter().map(|l| l.batches).sum();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for l in &logs {
        for (s, n) in &l.statuses {
            *statuses.entry(*s).or_default() += n;
        }
    }
    println!(
        "torture: {kills} SIGKILLs, {acked} acked events ({acked_dup} acked as duplicate on \
         retry), {unknown} unknown-outcome batches retried, {} lost, {} moved, {} double \
         offsets, {} gaps, {} duplicates, {} phantoms, {} commits, {} regressions, {:.1} s",
        report.lost.len(),
        report.moved.len(),
        report.double_offsets.len(),
        report.gaps.len(),
        report.duplicates.len(),
        report.phantoms.len(),
        cursor.commits,
        regressions.len(),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "torture: details: {batches} batches, {unknown_attempts} unknown-outcome attempts, \
         5xx replies {statuses:?}, {resent} acked events re-sent on purpose, {} events in the \
         log, {} changed, {} misplaced, {} out of order, {} false duplicates, {} re-appended; \
         audit: {} polled, {} commit conflicts, {} position checks; work: {} delivered, {} \
         acked, {} redelivered after ack, {} position checks; {} delivered events missing \
         from the log; {} server panics, {} recovery warnings; longest restart \
         {restart_ms_max} ms; producing {produce_secs:.1} s",
        final_log.events,
        report.changed.len(),
        report.misplaced.len(),
        report.out_of_order.len(),
        report.false_duplicates.len(),
        report.reappended.len(),
        cursor.delivered,
        cursor.commit_conflicts,
        shared.audit.observations.load(Ordering::SeqCst),
        queue.delivered,
        queue.acked,
        queue.redelivered_after_ack.len(),
        shared.work.observations.load(Ordering::SeqCst),
        report.delivered_missing.len(),
        panics,
        recovery_warnings,
    );

    let mut failures = Vec::new();
    for (what, list) in [
        ("lost", &report.lost),
        ("moved", &report.moved),
        ("changed", &report.changed),
        ("double offsets", &report.double_offsets),
        ("gaps", &report.gaps),
        ("duplicates", &report.duplicates),
        ("phantoms", &report.phantoms),
        ("misplaced", &report.misplaced),
        ("out of order", &report.out_of_order),
        ("false duplicates", &report.false_duplicates),
        ("re-appended", &report.reappended),
        ("delivered but missing", &report.delivered_missing),
        ("position regressions", &regressions),
        ("redelivered after ack", &queue.redelivered_after_ack),
        ("bad replies", &report.bad_replies),
    ] {
        if !list.is_empty() {
            failures.push(format!(
                "{} {what}; the first ones:\n  {}",
                list.len(),
                list.iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ));
        }
    }
    if panics > 0 {
        failures.push(format!("the server panicked {panics} times"));
    }
    assert!(
        failures.is_empty(),
        "torture (seed {seed}, data {}): {}\nserver log (tail):\n{}",
        data.display(),
        failures.join("\n"),
        tail(&log_text, 60)
    );
    assert!(
        acked > 0 && cursor.commits > 0 && queue.acked > 0,
        "the test did work"
    );
    assert!(
        started.elapsed() < HARD_CAP,
        "torture (seed {seed}): took {:?}, over the {HARD_CAP:?} cap",
        started.elapsed()
    );
}

/// State shared by the threads.
#[derive(Debug)]
struct Shared {
    url: String,
    seed: u64,
    deadline: Instant,
    stop_producers: AtomicBool,
    stop_consumers: AtomicBool,
    audit: Floor,
    work: Floor,
}

/// What a subscription's positions must never go below: every commit acknowledged and every
/// position reported so far.
#[derive(Debug)]
struct Floor {
    name: &'static str,
    known: Mutex<Vec<u64>>,
    regressions: Mutex<Vec<String>>,
    observations: AtomicU64,
}

impl Floor {
    fn new(name: &'static str) -> Floor {
        Floor {
            name,
            known: Mutex::new(vec![0; PARTITIONS as usize]),
            regressions: Mutex::new(Vec::new()),
            observations: AtomicU64::new(0),
        }
    }

    /// The floor now; take it before sending the request whose reply is checked against it.
    fn snapshot(&self) -> Vec<u64> {
        self.known.lock().unwrap().clone()
    }

    /// Checks positions the server reported against the floor from before the request, then
    /// raises the floor to them.
    fn observe(&self, before: &[u64], reported: &Value, who: &str) {
        self.observations.fetch_add(1, Ordering::SeqCst);
        let Some(list) = reported.as_array() else {
            self.regressions.lock().unwrap().push(format!(
                "{} ({who}): positions not a list: {reported}",
                self.name
            ));
            return;
        };
        let positions: Vec<Option<u64>> = list.iter().map(Value::as_u64).collect();
        if positions.len() != PARTITIONS as usize || positions.iter().any(Option::is_none) {
            self.regressions.lock().unwrap().push(format!(
                "{} ({who}): malformed positions {reported}",
                self.name
            ));
            return;
        }
        let positions: Vec<u64> = positions.into_iter().flatten().collect();
        for (p, (&now, &was)) in positions.iter().zip(before).enumerate() {
            if now < was {
                self.regressions.lock().unwrap().push(format!(
                    "{} ({who}): partition {p} reported at {now}, below {was} acknowledged or \
                     reported before the request",
                    self.name
                ));
            }
        }
        self.raise(positions.iter().enumerate().map(|(p, &o)| (p as u32, o)));
    }

    fn raise(&self, items: impl IntoIterator<Item = (u32, u64)>) {
        let mut known = self.known.lock().unwrap();
        for (p, o) in items {
            let k = &mut known[p as usize];
            *k = (*k).max(o);
        }
    }
}

/// GETs both subscriptions and checks their positions against the floors (retrying while the
/// server does not answer).
fn check_positions(client: &Client, shared: &Shared, who: &str) {
    for (floor, path) in [(&shared.audit, AUDIT), (&shared.work, WORK)] {
        loop {
            assert!(
                Instant::now() < shared.deadline,
                "torture (seed {}): {who}: no answer to GET {path} before the deadline",
                shared.seed
            );
            let before = floor.snapshot();
            match client.get(path) {
                Ok((200, v)) => {
                    floor.observe(&before, &v["positions"], who);
                    break;
                }
                Ok((status, v)) => panic!(
                    "torture (seed {}): {who}: GET {path} replied {status}: {v}",
                    shared.seed
                ),
                Err(_) => std::thread::sleep(RETRY_BACKOFF),
            }
        }
    }
}

/// A small HTTP client with a timeout on every request.
#[derive(Debug)]
struct Client {
    agent: ureq::Agent,
    url: String,
}

impl Client {
    fn new(url: &str, timeout: Duration) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            agent,
            url: url.to_string(),
        }
    }

    /// GET; `Err` when the outcome is unknown (transport error, timeout, cut reply).
    fn get(&self, path: &str) -> Result<(u16, Value), String> {
        reply(self.agent.get(&format!("{}{path}", self.url)).call())
    }

    /// POST bytes; `Err` when the outcome is unknown.
    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<(u16, Value), String> {
        reply(
            self.agent
                .post(&format!("{}{path}", self.url))
                .header("content-type", content_type)
                .send(body),
        )
    }

    fn post_json(&self, path: &str, body: &Value) -> Result<(u16, Value), String> {
        self.post(path, "application/json", body.to_string().as_bytes())
    }
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, Value), String> {
    let mut resp = r.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    if text.is_empty() {
        return Ok((status, Value::Null));
    }
    let v = serde_json::from_str(&text).map_err(|e| format!("reply is not JSON ({e}): {text}"))?;
    Ok((status, v))
}

// ---- producers ----

/// What one producer saw.
#[derive(Debug, Default)]
struct ProducerLog {
    producer: u32,
    /// The acknowledged position of each sequence number sent (all of them are acknowledged
    /// by the end: a batch is retried until it is).
    positions: Vec<(u32, u64)>,
    /// Event results in acknowledgements, re-sent events excluded.
    acked: u64,
    /// New events reported as duplicates (stored by an earlier attempt with unknown outcome).
    acked_dup_on_retry: u64,
    /// Batches that needed more than one attempt.
    unknown_batches: u64,
    /// Attempts with an unknown outcome.
    unknown_attempts: u64,
    /// Events re-sent on purpose after they were acknowledged.
    resent: u64,
    batches: u64,
    /// 5xx replies by status.
    statuses: BTreeMap<u16, u64>,
    /// Re-sent events reported at another position than their acknowledgement.
    moved: Vec<String>,
    /// New events reported as duplicates on a batch's first attempt.
    false_duplicates: Vec<String>,
    /// Re-sent events appended again instead of reported as duplicates.
    reappended: Vec<String>,
    /// Replies that do not match the request.
    bad_replies: Vec<String>,
    /// Reasons the producer gave up (a 4xx, the deadline).
    fatal: Vec<String>,
}

/// The id of event `seq` of `producer`.
fn event_id(producer: u32, seq: u64) -> String {
    format!("p{producer}-{seq}")
}

fn parse_id(id: &str) -> Option<(u32, u64)> {
    let (p, s) = id.strip_prefix('p')?.split_once('-')?;
    Some((p.parse().ok()?, s.parse().ok()?))
}

/// The partition key of event `seq` of `producer`.
fn event_key(seed: u64, producer: u32, seq: u64) -> &'static str {
    let h = mix(seed ^ mix((u64::from(producer) << 48) ^ seq));
    KEYS[(h % KEYS.len() as u64) as usize]
}

/// Event `seq` of `producer`, exactly as sent (and as it must read back).
fn event_json(seed: u64, producer: u32, seq: u64) -> Value {
    let id = event_id(producer, seq);
    let hash = mix(seed ^ mix(u64::from(producer)) ^ mix(seq.wrapping_add(7)));
    json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("/torture/{producer}"),
        "type": "torture.event",
        "partitionkey": event_key(seed, producer, seq),
        "data": {"id": id, "producer": producer, "seq": seq, "hash": format!("{hash:016x}")},
    })
}

fn produce(shared: &Shared, producer: u32) -> ProducerLog {
    let seed = shared.seed;
    let client = Client::new(&shared.url, HTTP_TIMEOUT);
    let mut rng = mix(seed ^ mix(u64::from(producer) + 1));
    let mut log = ProducerLog {
        producer,
        ..ProducerLog::default()
    };
    while !shared.stop_producers.load(Ordering::SeqCst) {
        let first_new = log.positions.len() as u64;
        let count = 1 + next(&mut rng) % BATCH_EVENTS_MAX;
        let mut seqs: Vec<(u64, bool)> =
            (first_new..first_new + count).map(|s| (s, false)).collect();
        if first_new > 0 && next(&mut rng).is_multiple_of(RESEND_ONE_IN) {
            let mut old = HashSet::new();
            for _ in 0..1 + next(&mut rng) % 3 {
                let s = first_new - 1 - next(&mut rng) % first_new.min(RESEND_RECENT);
                if old.insert(s) {
                    let at = (next(&mut rng) % (seqs.len() as u64 + 1)) as usize;
                    seqs.insert(at, (s, true));
                }
            }
        }
        let body = Value::Array(
            seqs.iter()
                .map(|&(s, _)| event_json(seed, producer, s))
                .collect(),
        )
        .to_string();
        log.batches += 1;
        let mut attempts = 0u64;
        let results = loop {
            if Instant::now() >= shared.deadline {
                log.fatal.push(format!(
                    "producer {producer}: batch from seq {first_new} not acknowledged after \
                     {attempts} attempts before the deadline"
                ));
                return log;
            }
            attempts += 1;
            match client.post(
                EVENTS_PATH,
                "application/cloudevents-batch+json",
                body.as_bytes(),
            ) {
                Ok((201, v)) => break v,
                Ok((status, v)) if status >= 500 => {
                    *log.statuses.entry(status).or_default() += 1;
                    log.unknown_attempts += 1;
                    let _ = v;
                }
                Ok((status, v)) => {
                    log.fatal.push(format!(
                        "producer {producer}: batch from seq {first_new} rejected with \
                         {status}: {v}"
                    ));
                    return log;
                }
                Err(_) => log.unknown_attempts += 1,
            }
            std::thread::sleep(RETRY_BACKOFF);
        };
        if attempts > 1 {
            log.unknown_batches += 1;
        }
        record_results(&mut log, &seqs, &results, attempts > 1);
    }
    log
}

/// Checks a 201 reply against the batch and records the positions.
fn record_results(log: &mut ProducerLog, seqs: &[(u64, bool)], reply: &Value, retried: bool) {
    let producer = log.producer;
    let Some(results) = reply["results"]
        .as_array()
        .filter(|r| r.len() == seqs.len())
    else {
        log.bad_replies.push(format!(
            "producer {producer}: {} events, reply {reply}",
            seqs.len()
        ));
        // Nothing is known; a later check reports the events as lost or phantom.
        for _ in seqs.iter().filter(|(_, old)| !old) {
            log.positions.push((u32::MAX, u64::MAX));
        }
        return;
    };
    for (&(seq, old), r) in seqs.iter().zip(results) {
        let id = event_id(producer, seq);
        let (Some(p), Some(o), Some(dup)) = (
            r["partition"].as_u64().and_then(|p| u32::try_from(p).ok()),
            r["offset"].as_u64(),
            r["duplicate"].as_bool(),
        ) else {
            log.bad_replies.push(format!("{id}: malformed result {r}"));
            if !old {
                log.positions.push((u32::MAX, u64::MAX));
            }
            continue;
        };
        if r["id"] != json!(id) {
            log.bad_replies
                .push(format!("{id}: result for another id {r}"));
        }
        if old {
            log.resent += 1;
            let acked = log.positions[seq as usize];
            if !dup {
                log.reappended.push(format!(
                    "{id}: acknowledged at {acked:?}, re-sent and appended again at ({p}, {o})"
                ));
            } else if acked != (p, o) {
                log.moved.push(format!(
                    "{id}: acknowledged at {acked:?}, re-sent and reported as a duplicate at \
                     ({p}, {o})"
                ));
            }
            continue;
        }
        log.acked += 1;
        if dup {
            if retried {
                log.acked_dup_on_retry += 1;
            } else {
                log.false_duplicates.push(format!(
                    "{id}: never sent before, reported as a duplicate at ({p}, {o})"
                ));
            }
        }
        debug_assert_eq!(log.positions.len() as u64, seq);
        log.positions.push((p, o));
    }
}

// ---- consumers ----

/// What the cursor consumer saw.
#[derive(Debug, Default)]
struct CursorLog {
    /// Events polled, counting redeliveries.
    delivered: u64,
    /// Commits acknowledged with 200.
    commits: u64,
    /// Commits refused with 409 (with one consumer there should be none; reported).
    commit_conflicts: u64,
    /// (partition, offset) → id, of everything delivered.
    seen: HashMap<(u32, u64), String>,
}

fn consume_cursor(shared: &Shared) -> CursorLog {
    let client = Client::new(&shared.url, HTTP_TIMEOUT);
    let mut log = CursorLog::default();
    let mut need_check = true;
    while !shared.stop_consumers.load(Ordering::SeqCst) && Instant::now() < shared.deadline {
        if need_check {
            let before = shared.audit.snapshot();
            match client.get(AUDIT) {
                Ok((200, v)) => {
                    shared
                        .audit
                        .observe(&before, &v["positions"], "consumer after an error");
                    need_check = false;
                }
                _ => {
                    std::thread::sleep(RETRY_BACKOFF);
                    continue;
                }
            }
        }
        let polled = match client.post_json(
            &format!("{AUDIT}/poll"),
            &json!({"max_events": 500, "wait_ms": 200}),
        ) {
            Ok((200, v)) => v,
            _ => {
                need_check = true;
                std::thread::sleep(RETRY_BACKOFF);
                continue;
            }
        };
        let mut next_offsets: BTreeMap<u32, u64> = BTreeMap::new();
        for e in polled["events"].as_array().into_iter().flatten() {
            let (Some(p), Some(o)) = (e["partition"].as_u64(), e["offset"].as_u64()) else {
                continue;
            };
            log.delivered += 1;
            let id = e["event"]["id"].as_str().unwrap_or("").to_string();
            log.seen.insert((p as u32, o), id);
            let n = next_offsets.entry(p as u32).or_default();
            *n = (*n).max(o + 1);
        }
        if next_offsets.is_empty() {
            continue;
        }
        let offsets: Vec<Value> = next_offsets
            .iter()
            .map(|(p, o)| json!({"partition": p, "offset": o}))
            .collect();
        let before = shared.audit.snapshot();
        match client.post_json(&format!("{AUDIT}/commit"), &json!({"offsets": offsets})) {
            Ok((200, v)) => {
                log.commits += 1;
                shared
                    .audit
                    .observe(&before, &v["committed"], "commit reply");
                // The reply must show at least what was just committed.
                let committed: Vec<u64> = v["committed"]
                    .as_array()
                    .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                    .unwrap_or_default();
                for (&p, &o) in &next_offsets {
                    if committed.get(p as usize).is_none_or(|&c| c < o) {
                        shared.audit.regressions.lock().unwrap().push(format!(
                            "audit: commit of offset {o} on partition {p} acknowledged with \
                             positions {}",
                            v["committed"]
                        ));
                    }
                }
                shared
                    .audit
                    .raise(next_offsets.iter().map(|(&p, &o)| (p, o)));
            }
            Ok((409, _)) => {
                log.commit_conflicts += 1;
                need_check = true;
            }
            _ => {
                need_check = true;
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    }
    log
}

/// What the queue worker saw.
#[derive(Debug, Default)]
struct QueueLog {
    delivered: u64,
    acked: u64,
    acked_set: HashSet<(u32, u64)>,
    redelivered_after_ack: Vec<String>,
    seen: HashMap<(u32, u64), String>,
}

fn work_queue(shared: &Shared) -> QueueLog {
    let client = Client::new(&shared.url, HTTP_TIMEOUT);
    let mut log = QueueLog::default();
    let mut need_check = true;
    while !shared.stop_consumers.load(Ordering::SeqCst) && Instant::now() < shared.deadline {
        if need_check {
            let before = shared.work.snapshot();
            match client.get(WORK) {
                Ok((200, v)) => {
                    shared
                        .work
                        .observe(&before, &v["positions"], "worker after an error");
                    need_check = false;
                }
                _ => {
                    std::thread::sleep(RETRY_BACKOFF);
                    continue;
                }
            }
        }
        let polled = match client.post_json(
            &format!("{WORK}/poll"),
            &json!({"max_events": 200, "wait_ms": 200}),
        ) {
            Ok((200, v)) => v,
            _ => {
                need_check = true;
                std::thread::sleep(RETRY_BACKOFF);
                continue;
            }
        };
        let mut items = Vec::new();
        for e in polled["events"].as_array().into_iter().flatten() {
            let (Some(p), Some(o)) = (e["partition"].as_u64(), e["offset"].as_u64()) else {
                continue;
            };
            let (p, o) = (p as u32, o);
            log.delivered += 1;
            let id = e["event"]["id"].as_str().unwrap_or("").to_string();
            if log.acked_set.contains(&(p, o)) {
                log.redelivered_after_ack.push(format!(
                    "work: ({p}, {o}) {id} delivered again (attempt {}) after its ack was \
                     acknowledged",
                    e["attempt"]
                ));
            }
            log.seen.insert((p, o), id);
            items.push((p, o));
        }
        if items.is_empty() {
            continue;
        }
        let list: Vec<Value> = items
            .iter()
            .map(|(p, o)| json!({"partition": p, "offset": o}))
            .collect();
        match client.post_json(&format!("{WORK}/ack"), &json!({"events": list})) {
            Ok((200, v)) => {
                let missing: HashSet<(u32, u64)> = v["not_in_flight"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| Some((x["partition"].as_u64()? as u32, x["offset"].as_u64()?)))
                    .collect();
                for it in items {
                    if !missing.contains(&it) {
                        log.acked += 1;
                        log.acked_set.insert(it);
                    }
                }
            }
            _ => {
                need_check = true;
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
    }
    log
}

// ---- the final read and the checks ----

/// Everything in the topic after the last restart.
#[derive(Debug, Default)]
struct FinalLog {
    /// Per partition, the events in offset order as (offset, event).
    partitions: Vec<Vec<(u64, Value)>>,
    /// Per partition, the high watermark and log start.
    bounds: Vec<(u64, u64)>,
    events: u64,
}

fn read_everything(client: &Client, seed: u64) -> FinalLog {
    let ctx = format!("torture (seed {seed}): final read");
    let (status, topic) = client
        .get(&format!("/v1/topics/{TOPIC}"))
        .unwrap_or_else(|e| panic!("{ctx}: GET topic: {e}"));
    assert_eq!(status, 200, "{ctx}: {topic}");
    let mut out = FinalLog::default();
    for p in 0..PARTITIONS {
        let o = &topic["partition_offsets"][p as usize];
        let (start, hw) = (
            o["log_start_offset"].as_u64().expect("log_start_offset"),
            o["high_watermark"].as_u64().expect("high_watermark"),
        );
        out.bounds.push((start, hw));
        let mut events = Vec::new();
        let mut offset = start;
        // Bounded: every step makes progress or fails.
        while offset < hw {
            let path = format!("/v1/topics/{TOPIC}/partitions/{p}/events?offset={offset}&max=1000");
            let (status, v) = client
                .get(&path)
                .unwrap_or_else(|e| panic!("{ctx}: GET {path}: {e}"));
            assert_eq!(status, 200, "{ctx}: GET {path}: {v}");
            let next = v["next_offset"].as_u64().expect("next_offset");
            let batch = v["events"].as_array().cloned().unwrap_or_default();
            assert!(
                next > offset && !batch.is_empty(),
                "{ctx}: partition {p}: no progress reading at {offset} below the high watermark \
                 {hw}: {v}"
            );
            for e in batch {
                let at = e["offset"].as_u64().expect("offset");
                assert_eq!(e["partition"], json!(p), "{ctx}: {e}");
                events.push((at, e["event"].clone()));
            }
            offset = next;
        }
        out.events += events.len() as u64;
        out.partitions.push(events);
    }
    out
}

#[derive(Debug, Default)]
struct Report {
    lost: Vec<String>,
    moved: Vec<String>,
    changed: Vec<String>,
    double_offsets: Vec<String>,
    gaps: Vec<String>,
    duplicates: Vec<String>,
    phantoms: Vec<String>,
    misplaced: Vec<String>,
    out_of_order: Vec<String>,
    false_duplicates: Vec<String>,
    reappended: Vec<String>,
    delivered_missing: Vec<String>,
    bad_replies: Vec<String>,
}

fn verify(
    seed: u64,
    logs: &[ProducerLog],
    cursor: &CursorLog,
    queue: &QueueLog,
    final_log: &FinalLog,
) -> Report {
    let mut r = Report::default();
    for l in logs {
        r.moved.extend(l.moved.iter().cloned());
        r.false_duplicates
            .extend(l.false_duplicates.iter().cloned());
        r.reappended.extend(l.reappended.iter().cloned());
        r.bad_replies.extend(l.bad_replies.iter().cloned());
    }
    // Where each id is in the log; offsets contiguous from 0, one event each.
    let mut found: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
    let mut at: HashMap<(u32, u64), &Value> = HashMap::new();
    for (p, events) in final_log.partitions.iter().enumerate() {
        let p = p as u32;
        let (start, hw) = final_log.bounds[p as usize];
        if start != 0 {
            r.gaps.push(format!(
                "partition {p}: log starts at {start}, not 0 (retention is forever)"
            ));
        }
        let mut expected = start;
        for (o, e) in events {
            if *o < expected {
                r.double_offsets.push(format!(
                    "partition {p}: offset {o} read again after {}",
                    expected - 1
                ));
            } else if *o > expected {
                r.gaps
                    .push(format!("partition {p}: offsets {expected}..{o} missing"));
            }
            if at.insert((p, *o), e).is_some() {
                r.double_offsets
                    .push(format!("partition {p}: offset {o} holds two events"));
            }
            expected = expected.max(o + 1);
            let id = e["id"].as_str().unwrap_or("").to_string();
            found.entry(id).or_default().push((p, *o));
        }
        if expected != hw {
            r.gaps.push(format!(
                "partition {p}: read up to {expected}, high watermark {hw}"
            ));
        }
    }
    // Duplicates and phantoms.
    for (id, places) in &found {
        if places.len() > 1 {
            r.duplicates
                .push(format!("{id} stored {} times: {places:?}", places.len()));
        }
        let sent = parse_id(id).is_some_and(|(producer, seq)| {
            logs.get(producer as usize)
                .is_some_and(|l| seq < l.positions.len() as u64)
        });
        if !sent {
            r.phantoms
                .push(format!("{id} at {places:?} was never sent"));
        }
    }
    // Every acknowledged event at its position, unchanged, well placed, in order.
    for l in logs {
        let mut last_by_key: HashMap<&str, (u64, u64)> = HashMap::new();
        for (seq, &(p, o)) in l.positions.iter().enumerate() {
            let seq = seq as u64;
            let id = event_id(l.producer, seq);
            let expected = event_json(seed, l.producer, seq);
            match at.get(&(p, o)) {
                Some(e) if e["id"] == expected["id"] && e["source"] == expected["source"] => {
                    if **e != expected {
                        r.changed
                            .push(format!("{id} at ({p}, {o}): sent {expected}, read {e}"));
                    }
                }
                other => {
                    let elsewhere = found.get(&id);
                    let line = format!(
                        "{id} acknowledged at ({p}, {o}), which holds {}; the id is at \
                         {elsewhere:?}",
                        other.map_or("nothing".to_string(), |e| e["id"].to_string())
                    );
                    if elsewhere.is_some() {
                        r.moved.push(line);
                    } else {
                        r.lost.push(line);
                    }
                }
            }
            let key = event_key(seed, l.producer, seq);
            let want = partition_for(key.as_bytes(), PARTITIONS);
            if p != want {
                r.misplaced
                    .push(format!("{id} (key {key}) in partition {p}, not {want}"));
            }
            if let Some(&(prev_seq, prev_o)) = last_by_key.get(key)
                && o <= prev_o
            {
                r.out_of_order.push(format!(
                    "{id} (key {key}) at offset {o}, not after seq {prev_seq} at {prev_o}"
                ));
            }
            last_by_key.insert(key, (seq, o));
        }
    }
    // Everything delivered by a subscription is in the final log at the same place.
    for (who, seen) in [("audit", &cursor.seen), ("work", &queue.seen)] {
        for (&(p, o), id) in seen {
            let now = at.get(&(p, o)).map(|e| e["id"].as_str().unwrap_or(""));
            if now != Some(id.as_str()) {
                r.delivered_missing.push(format!(
                    "{who} delivered {id} at ({p}, {o}); the log holds {now:?} there"
                ));
            }
        }
    }
    r
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Keeps the data directory for inspection if the test fails.
#[derive(Debug)]
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("torture: kept the data directory {}", dir.keep().display());
        }
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64's step.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    mix(*state)
}
