//! Subscriptions over HTTP against the real `gearbox serve`: queue mode (locks, nack and
//! backoff, lock expiry, dead letters, redrive, competing pollers, durability of acks across
//! SIGKILL) and cursor mode (poll, commit, regression, durability of commits).
//!
//! Nothing here sleeps to wait for a condition: waiting is a long poll (`wait_ms`), and every
//! timing assertion compares against a client clock read before the request that started the
//! server-side timer.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Server, event};

/// Slack for comparing a server-side delay (whole milliseconds) with the client's clock.
const SLACK: Duration = Duration::from_millis(5);

fn create_topic(s: &Server, name: &str, partitions: u32) {
    let (status, body) = s.post(
        "/v1/topics",
        &json!({"name": name, "partitions": partitions}),
    );
    assert_eq!(status, 201, "create topic {name}: {body}");
}

/// Publishes a batch; returns each event's (partition, offset).
fn publish(s: &Server, topic: &str, events: &[Value]) -> Vec<(u64, u64)> {
    let (status, body) = s.post_raw(
        &format!("/v1/topics/{topic}/events"),
        "application/cloudevents-batch+json",
        &[],
        Value::Array(events.to_vec()).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "publish: {body}");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["duplicate"], false, "{r}");
            (
                r["partition"].as_u64().unwrap(),
                r["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| event(&format!("{prefix}-{i}"), "/queue-test", json!({"n": i})))
        .collect()
}

fn put_sub(s: &Server, topic: &str, name: &str, settings: &Value) -> (u16, Value) {
    s.put(
        &format!("/v1/topics/{topic}/subscriptions/{name}"),
        settings,
    )
}

fn create_sub(s: &Server, topic: &str, name: &str, settings: &Value) {
    let (status, body) = put_sub(s, topic, name, settings);
    assert_eq!(status, 201, "create subscription {name}: {body}");
}

/// One delivery from a poll.
#[derive(Debug, Clone)]
struct Delivered {
    partition: u64,
    offset: u64,
    attempt: u64,
    event: Value,
}

impl Delivered {
    fn pos(&self) -> (u64, u64) {
        (self.partition, self.offset)
    }
}

fn poll(s: &Server, topic: &str, sub: &str, max: usize, wait_ms: u64) -> Vec<Delivered> {
    let (status, body) = s.post(
        &format!("/v1/topics/{topic}/subscriptions/{sub}/poll"),
        &json!({"max_events": max, "wait_ms": wait_ms}),
    );
    assert_eq!(status, 200, "poll {sub}: {body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Delivered {
            partition: d["partition"].as_u64().unwrap(),
            offset: d["offset"].as_u64().unwrap(),
            attempt: d["attempt"].as_u64().unwrap(),
            event: d["event"].clone(),
        })
        .collect()
}

fn items(positions: &[(u64, u64)]) -> Value {
    json!(
        positions
            .iter()
            .map(|(p, o)| json!({"partition": p, "offset": o}))
            .collect::<Vec<_>>()
    )
}

/// Acks and checks every item was in flight.
fn ack(s: &Server, topic: &str, sub: &str, positions: &[(u64, u64)]) {
    let (status, body) = s.post(
        &format!("/v1/topics/{topic}/subscriptions/{sub}/ack"),
        &json!({"events": items(positions)}),
    );
    assert_eq!(status, 200, "ack: {body}");
    assert_eq!(
        body,
        json!({"acked": positions.len(), "not_in_flight": []}),
        "ack {positions:?}"
    );
}

/// Nacks one event with extra fields (`retry_in_ms`, `reject`, `error`) and checks the reply.
fn nack(s: &Server, topic: &str, sub: &str, pos: (u64, u64), extra: &Value) {
    let mut body = extra.clone();
    body["events"] = items(&[pos]);
    let (status, reply) = s.post(
        &format!("/v1/topics/{topic}/subscriptions/{sub}/nack"),
        &body,
    );
    assert_eq!(status, 200, "nack: {reply}");
    assert_eq!(
        reply,
        json!({"nacked": 1, "not_in_flight": []}),
        "nack {pos:?}"
    );
}

fn sub_info(s: &Server, topic: &str, sub: &str) -> Value {
    let (status, body) = s.get(&format!("/v1/topics/{topic}/subscriptions/{sub}"));
    assert_eq!(status, 200, "get subscription {sub}: {body}");
    body
}

/// (lag, in_flight, dlq_depth) of a subscription.
fn counters(s: &Server, topic: &str, sub: &str) -> (u64, u64, u64) {
    let info = sub_info(s, topic, sub);
    (
        info["lag"].as_u64().unwrap(),
        info["in_flight"].as_u64().unwrap(),
        info["dlq_depth"].as_u64().unwrap(),
    )
}

fn high_watermarks(s: &Server, topic: &str) -> Vec<u64> {
    let (status, body) = s.get(&format!("/v1/topics/{topic}"));
    assert_eq!(status, 200, "describe {topic}: {body}");
    body["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["high_watermark"].as_u64().unwrap())
        .collect()
}

/// The structured event stored at (partition, offset) of `topic`, by a plain read.
fn read_one(s: &Server, topic: &str, p: u64, o: u64) -> Value {
    let (status, body) = s.get(&format!(
        "/v1/topics/{topic}/partitions/{p}/events?offset={o}&max=1"
    ));
    assert_eq!(status, 200, "read {topic}/{p}@{o}: {body}");
    assert_eq!(body["events"][0]["offset"], o, "{body}");
    body["events"][0]["event"].clone()
}

fn dlq_list(s: &Server, topic: &str) -> Vec<Value> {
    let (status, body) = s.get(&format!("/v1/topics/{topic}/dlq?max=100"));
    assert_eq!(status, 200, "dlq of {topic}: {body}");
    body["events"].as_array().unwrap().clone()
}

/// Polls once with `wait_ms` and expects nothing; returns how long it took.
fn poll_nothing(s: &Server, topic: &str, sub: &str, wait_ms: u64) -> Duration {
    let t = Instant::now();
    let got = poll(s, topic, sub, 10, wait_ms);
    assert!(
        got.is_empty(),
        "expected nothing within {wait_ms} ms: {got:?}"
    );
    t.elapsed()
}

/// Polls with a long wait and expects exactly one delivery.
fn poll_one(s: &Server, topic: &str, sub: &str) -> Delivered {
    let got = poll(s, topic, sub, 10, 10_000);
    assert_eq!(got.len(), 1, "expected one delivery: {got:?}");
    got.into_iter().next().unwrap()
}

#[test]
fn a_nack_with_retry_in_ms_is_redelivered_with_attempt_plus_one_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let pos = publish(&s, "t", &events("e", 1))[0];
    create_sub(&s, "t", "w", &json!({"lock_ms": 30_000}));

    let first = poll_one(&s, "t", "w");
    assert_eq!((first.pos(), first.attempt), (pos, 1));
    assert_eq!(first.event["id"], "e-0");

    let nacked_at = Instant::now();
    nack(
        &s,
        "t",
        "w",
        pos,
        &json!({"retry_in_ms": 1000, "error": "later"}),
    );
    assert_eq!(
        counters(&s, "t", "w"),
        (1, 0, 0),
        "(lag, in_flight, dlq_depth)"
    );
    let waited = poll_nothing(&s, "t", "w", 200);
    assert!(
        waited >= Duration::from_millis(200),
        "the poll waited: {waited:?}"
    );
    assert!(
        nacked_at.elapsed() < Duration::from_millis(1000),
        "the empty poll ended before the retry delay, so it proves something"
    );

    let again = poll_one(&s, "t", "w");
    let after = nacked_at.elapsed();
    assert_eq!((again.pos(), again.attempt), (pos, 2));
    assert_eq!(again.event, first.event);
    assert!(
        after + SLACK >= Duration::from_millis(1000),
        "redelivered only after retry_in_ms: {after:?}"
    );
    assert_eq!(counters(&s, "t", "w"), (1, 1, 0));
    ack(&s, "t", "w", &[pos]);
    assert_eq!(counters(&s, "t", "w"), (0, 0, 0));
}

#[test]
fn a_nack_without_retry_in_ms_follows_the_subscription_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let pos = publish(&s, "t", &events("e", 1))[0];
    // Equal jitter: after attempt 1 the delay is in [200, 400] ms, after attempt 2 in
    // [600, 1200] ms (multiplier 3).
    create_sub(
        &s,
        "t",
        "w",
        &json!({"max_attempts": 5, "backoff": {"initial_ms": 400, "max_ms": 10_000, "multiplier": 3.0}}),
    );
    assert_eq!(poll_one(&s, "t", "w").attempt, 1);

    for (attempt, min_delay, empty_wait) in [(2, 200, 100), (3, 600, 300)] {
        let nacked_at = Instant::now();
        nack(&s, "t", "w", pos, &json!({"error": "not yet"}));
        poll_nothing(&s, "t", "w", empty_wait);
        assert!(
            nacked_at.elapsed() < Duration::from_millis(min_delay),
            "the empty poll ended before the smallest possible backoff"
        );
        let again = poll_one(&s, "t", "w");
        let after = nacked_at.elapsed();
        assert_eq!((again.pos(), again.attempt), (pos, attempt));
        assert!(
            after + SLACK >= Duration::from_millis(min_delay),
            "attempt {attempt} came after {after:?}, before the backoff of at least {min_delay} ms"
        );
    }
    ack(&s, "t", "w", &[pos]);
    assert_eq!(counters(&s, "t", "w"), (0, 0, 0));
}

#[test]
fn an_expired_lock_redelivers_and_nobody_else_gets_the_event_before() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let pos = publish(&s, "t", &events("e", 1))[0];
    create_sub(&s, "t", "w", &json!({"lock_ms": 1000, "max_attempts": 2}));

    let polled_at = Instant::now();
    let first = poll_one(&s, "t", "w");
    assert_eq!((first.pos(), first.attempt), (pos, 1));
    assert_eq!(
        counters(&s, "t", "w"),
        (1, 1, 0),
        "(lag, in_flight, dlq_depth)"
    );

    // A second consumer polling while the lock holds gets nothing.
    poll_nothing(&s, "t", "w", 200);
    assert!(
        polled_at.elapsed() < Duration::from_millis(1000),
        "the competing poll ended before the lock expired"
    );

    let again = poll_one(&s, "t", "w");
    let after = polled_at.elapsed();
    assert_eq!((again.pos(), again.attempt), (pos, 2));
    assert!(
        after + SLACK >= Duration::from_millis(1000),
        "redelivered only once the lock expired: {after:?}"
    );
    assert_eq!(counters(&s, "t", "w"), (1, 1, 0));

    // The second lock expires too: that was the last attempt, so the event is dead-lettered
    // (by the poll that is waiting when the lock runs out) and not delivered again.
    poll_nothing(&s, "t", "w", 1500);
    let dlq = dlq_list(&s, "t");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dead = &dlq[0]["event"];
    assert_eq!(dead["id"], "e-0");
    assert_eq!(dead["dlqattempts"], "2");
    assert_eq!(dead["dlqerror"], "lock expired");
    assert_eq!(dead["dlqsubscription"], "w");
    assert_eq!(counters(&s, "t", "w"), (0, 0, 1));
}

#[test]
fn past_max_attempts_an_event_is_dead_lettered_with_its_origin_and_redrive_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "orders", 2);
    let mut original = event("o-1", "/shop", json!({"total": 42}));
    original["subject"] = json!("order/1");
    original["color"] = json!("red");
    publish(&s, "orders", &events("other", 3));
    let (p, o) = publish(&s, "orders", std::slice::from_ref(&original))[0];
    let stored = read_one(&s, "orders", p, o);
    create_sub(
        &s,
        "orders",
        "billing",
        &json!({"max_attempts": 2, "lock_ms": 30_000}),
    );
    // Finish the other events so only o-1 is left.
    let mut rest = poll(&s, "orders", "billing", 100, 5000);
    assert_eq!(rest.len(), 4, "{rest:?}");
    rest.retain(|d| d.pos() != (p, o));
    ack(
        &s,
        "orders",
        "billing",
        &rest.iter().map(Delivered::pos).collect::<Vec<_>>(),
    );

    nack(
        &s,
        "orders",
        "billing",
        (p, o),
        &json!({"retry_in_ms": 0, "error": "boom 1"}),
    );
    assert_eq!(s.get("/v1/topics/orders.dlq").0, 404, "no DLQ topic yet");
    assert!(dlq_list(&s, "orders").is_empty());
    let second = poll_one(&s, "orders", "billing");
    assert_eq!((second.pos(), second.attempt), ((p, o), 2));
    let dead_at = chrono::Utc::now();
    nack(
        &s,
        "orders",
        "billing",
        (p, o),
        &json!({"retry_in_ms": 0, "error": "boom 2"}),
    );

    // The DLQ listing.
    let dlq = dlq_list(&s, "orders");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dead = dlq[0]["event"].clone();
    let mut expected = stored.clone();
    for (k, v) in [
        ("dlqtopic", "orders".to_string()),
        ("dlqpartition", p.to_string()),
        ("dlqoffset", o.to_string()),
        ("dlqattempts", "2".to_string()),
        ("dlqerror", "boom 2".to_string()),
        ("dlqsubscription", "billing".to_string()),
    ] {
        expected[k] = json!(v);
    }
    let dlqtime = dead["dlqtime"]
        .as_str()
        .expect("dlqtime is set")
        .to_string();
    let t = chrono::DateTime::parse_from_rfc3339(&dlqtime).expect("dlqtime is RFC 3339");
    let skew = (t.timestamp_millis() - dead_at.timestamp_millis()).abs();
    assert!(skew < 60_000, "dlqtime {dlqtime} is about now");
    expected["dlqtime"] = json!(dlqtime);
    assert_eq!(
        dead, expected,
        "the original event plus the dlq* extensions"
    );
    assert_eq!(dead["data"], json!({"total": 42}));
    assert_eq!(dead["subject"], "order/1");
    assert_eq!(dead["color"], "red");

    // The same event by a plain read of the DLQ topic, which has the same partition count.
    let (status, dlq_topic) = s.get("/v1/topics/orders.dlq");
    assert_eq!(status, 200, "{dlq_topic}");
    assert_eq!(dlq_topic["partitions"], 2);
    let dp = dlq[0]["partition"].as_u64().unwrap();
    let doff = dlq[0]["offset"].as_u64().unwrap();
    assert_eq!(read_one(&s, "orders.dlq", dp, doff), dead);

    assert_eq!(
        counters(&s, "orders", "billing"),
        (0, 0, 1),
        "(lag, in_flight, dlq_depth)"
    );
    assert!(
        poll(&s, "orders", "billing", 10, 200).is_empty(),
        "a dead-lettered event is not delivered again"
    );

    // Redrive: back in the original topic at a new offset, without dlq* extensions.
    let hw_before = high_watermarks(&s, "orders");
    let (status, body) = s.post("/v1/topics/orders/dlq/redrive", &json!({}));
    assert_eq!((status, body), (200, json!({"redriven": 1})));
    let hw_after = high_watermarks(&s, "orders");
    let grown: Vec<usize> = (0..2).filter(|&i| hw_after[i] != hw_before[i]).collect();
    assert_eq!(grown.len(), 1, "{hw_before:?} -> {hw_after:?}");
    let np = grown[0];
    assert_eq!(hw_after[np], hw_before[np] + 1);
    let new_offset = hw_before[np];
    let back = read_one(&s, "orders", np as u64, new_offset);
    assert_eq!(
        back, stored,
        "the original event, without any dlq* extension"
    );
    assert!((np as u64, new_offset) != (p, o));

    let redelivered = poll_one(&s, "orders", "billing");
    assert_eq!(
        (redelivered.pos(), redelivered.attempt),
        ((np as u64, new_offset), 1)
    );
    assert_eq!(redelivered.event, stored);
    assert_eq!(counters(&s, "orders", "billing"), (1, 1, 0));
    ack(&s, "orders", "billing", &[redelivered.pos()]);
    assert_eq!(counters(&s, "orders", "billing"), (0, 0, 0));

    assert!(dlq_list(&s, "orders").is_empty());
    let (status, body) = s.post("/v1/topics/orders/dlq/redrive", &json!({}));
    assert_eq!(
        (status, body),
        (200, json!({"redriven": 0})),
        "nothing redriven twice"
    );
    assert_eq!(high_watermarks(&s, "orders"), hw_after);
    // The DLQ topic itself keeps the record.
    assert_eq!(read_one(&s, "orders.dlq", dp, doff), dead);
}

#[test]
fn reject_dead_letters_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let pos = publish(&s, "t", &events("e", 1))[0];
    create_sub(&s, "t", "w", &json!({"max_attempts": 5}));
    let first = poll_one(&s, "t", "w");
    assert_eq!(first.attempt, 1);
    nack(
        &s,
        "t",
        "w",
        pos,
        &json!({"reject": true, "error": "poison"}),
    );

    let dlq = dlq_list(&s, "t");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let dead = &dlq[0]["event"];
    assert_eq!(dead["id"], "e-0");
    assert_eq!(dead["dlqattempts"], "1");
    assert_eq!(dead["dlqerror"], "poison");
    assert_eq!(dead["dlqoffset"], pos.1.to_string());
    assert_eq!(
        counters(&s, "t", "w"),
        (0, 0, 1),
        "(lag, in_flight, dlq_depth)"
    );
    poll_nothing(&s, "t", "w", 300);

    // It is finished: neither ack nor nack find it in flight.
    let (status, body) = s.post(
        "/v1/topics/t/subscriptions/w/nack",
        &json!({"events": items(&[pos])}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"nacked": 0, "not_in_flight": items(&[pos])}));
}

#[test]
fn two_competing_pollers_never_hold_the_same_event() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 3);
    let published: BTreeSet<(u64, u64)> = publish(&s, "t", &events("e", N)).into_iter().collect();
    assert_eq!(published.len(), N);
    // Locks far longer than the test: any second delivery would be a double hold.
    create_sub(&s, "t", "w", &json!({"lock_ms": 600_000}));
    assert_eq!(counters(&s, "t", "w"), (N as u64, 0, 0));

    let acked = AtomicUsize::new(0);
    // (poller, partition, offset, attempt)
    let log: Mutex<Vec<(usize, u64, u64, u64)>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|scope| {
        for poller in 0..2 {
            let (s, acked, log) = (&s, &acked, &log);
            scope.spawn(move || {
                while acked.load(Ordering::SeqCst) < N && Instant::now() < deadline {
                    let got = poll(s, "t", "w", 7, 200);
                    log.lock().unwrap().extend(
                        got.iter()
                            .map(|d| (poller, d.partition, d.offset, d.attempt)),
                    );
                    if got.is_empty() {
                        continue;
                    }
                    let positions: Vec<(u64, u64)> = got.iter().map(Delivered::pos).collect();
                    ack(s, "t", "w", &positions);
                    acked.fetch_add(positions.len(), Ordering::SeqCst);
                }
            });
        }
    });

    let log = log.into_inner().unwrap();
    let mut by_event: BTreeMap<(u64, u64), Vec<(usize, u64)>> = BTreeMap::new();
    for &(poller, p, o, attempt) in &log {
        by_event.entry((p, o)).or_default().push((poller, attempt));
    }
    let doubles: Vec<_> = by_event.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        doubles.is_empty(),
        "delivered more than once while locked: {doubles:?}"
    );
    assert_eq!(
        by_event.keys().copied().collect::<BTreeSet<_>>(),
        published,
        "every event was delivered"
    );
    assert!(
        log.iter().all(|e| e.3 == 1),
        "every delivery was a first attempt"
    );
    assert_eq!(
        acked.load(Ordering::SeqCst),
        N,
        "every event was acked exactly once"
    );
    let per_poller: Vec<usize> = (0..2)
        .map(|p| log.iter().filter(|e| e.0 == p).count())
        .collect();
    eprintln!("deliveries per poller: {per_poller:?}");
    assert_eq!(
        counters(&s, "t", "w"),
        (0, 0, 0),
        "(lag, in_flight, dlq_depth)"
    );
    assert_eq!(
        sub_info(&s, "t", "w")["positions"],
        json!(high_watermarks(&s, "t"))
    );
    poll_nothing(&s, "t", "w", 100);
}

#[test]
fn acks_survive_sigkill_and_in_flight_events_come_back_with_attempt_plus_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let positions = publish(&s, "t", &events("e", 10));
    assert_eq!(positions, (0..10).map(|o| (0, o)).collect::<Vec<_>>());
    create_sub(&s, "t", "w", &json!({"lock_ms": 600_000}));
    let got = poll(&s, "t", "w", 10, 5000);
    assert_eq!(
        got.iter().map(Delivered::pos).collect::<Vec<_>>(),
        positions
    );
    let acked = [(0, 0), (0, 1), (0, 2), (0, 5), (0, 7)];
    ack(&s, "t", "w", &acked);
    assert_eq!(sub_info(&s, "t", "w")["positions"], json!([3]));

    s.restart_after_kill9();
    let info = sub_info(&s, "t", "w");
    assert_eq!(info["positions"], json!([3]), "the floor survived: {info}");
    assert_eq!(info["in_flight"], 0, "locks do not survive a crash: {info}");

    let again = poll(&s, "t", "w", 100, 5000);
    let expected: Vec<(u64, u64)> = [3, 4, 6, 8, 9].iter().map(|&o| (0, o)).collect();
    assert_eq!(
        again.iter().map(Delivered::pos).collect::<Vec<_>>(),
        expected,
        "in-flight events come back; acked ones never do"
    );
    assert!(again.iter().all(|d| d.attempt == 2), "{again:?}");
    for d in &again {
        assert_eq!(d.event["id"], format!("e-{}", d.offset));
    }
    ack(&s, "t", "w", &expected);
    assert_eq!(counters(&s, "t", "w"), (0, 0, 0));

    s.restart_after_kill9();
    assert_eq!(counters(&s, "t", "w"), (0, 0, 0));
    assert_eq!(sub_info(&s, "t", "w")["positions"], json!([10]));
    poll_nothing(&s, "t", "w", 300);
}

#[test]
fn cursor_mode_polls_commits_refuses_regressions_and_resumes_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    publish(&s, "t", &events("e", 5));
    create_sub(&s, "t", "c", &json!({"mode": "cursor"}));
    assert_eq!(sub_info(&s, "t", "c")["mode"], "cursor");
    assert_eq!(
        counters(&s, "t", "c"),
        (5, 0, 0),
        "(lag, in_flight, dlq_depth)"
    );

    let commit = |s: &Server, offset: u64| {
        s.post(
            "/v1/topics/t/subscriptions/c/commit",
            &json!({"offsets": [{"partition": 0, "offset": offset}]}),
        )
    };
    let offsets = |d: &[Delivered]| d.iter().map(|d| d.offset).collect::<Vec<_>>();

    let first = poll(&s, "t", "c", 3, 5000);
    assert_eq!(offsets(&first), [0, 1, 2]);
    assert!(first.iter().all(|d| d.attempt == 1));
    assert_eq!(first[0].event["id"], "e-0");
    assert_eq!(
        counters(&s, "t", "c"),
        (5, 3, 0),
        "delivered, not committed"
    );
    assert_eq!(commit(&s, 3), (200, json!({"committed": [3]})));
    assert_eq!(counters(&s, "t", "c"), (2, 0, 0));

    assert_eq!(offsets(&poll(&s, "t", "c", 10, 5000)), [3, 4]);
    assert_eq!(counters(&s, "t", "c"), (2, 2, 0));
    assert_eq!(commit(&s, 4), (200, json!({"committed": [4]})));

    let (status, body) = commit(&s, 2);
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "commit_regression");
    assert_eq!(body["field"], "offsets");
    assert_eq!(sub_info(&s, "t", "c")["positions"], json!([4]), "unchanged");

    for verb in ["ack", "nack"] {
        let (status, body) = s.post(
            &format!("/v1/topics/t/subscriptions/c/{verb}"),
            &json!({"events": [{"partition": 0, "offset": 4}]}),
        );
        assert_eq!(
            (status, &body["code"]),
            (409, &json!("wrong_mode")),
            "{verb}: {body}"
        );
    }

    s.restart_after_kill9();
    assert_eq!(
        sub_info(&s, "t", "c")["positions"],
        json!([4]),
        "committed offset survived"
    );
    let resumed = poll(&s, "t", "c", 10, 5000);
    assert_eq!(
        offsets(&resumed),
        [4],
        "reading resumes at the committed offset"
    );
    assert_eq!(resumed[0].event["id"], "e-4");
    assert_eq!(commit(&s, 5), (200, json!({"committed": [5]})));
    let (status, body) = commit(&s, 4);
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("commit_regression")),
        "{body}"
    );

    s.restart_after_kill9();
    assert_eq!(sub_info(&s, "t", "c")["positions"], json!([5]));
    assert_eq!(counters(&s, "t", "c"), (0, 0, 0));
    poll_nothing(&s, "t", "c", 300);

    publish(&s, "t", &events("f", 1));
    let next = poll(&s, "t", "c", 10, 5000);
    assert_eq!(offsets(&next), [5]);
    assert_eq!(next[0].event["id"], "f-0");
}

#[test]
fn lag_and_in_flight_follow_polls_acks_and_nacks() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    create_sub(&s, "t", "w", &json!({"lock_ms": 600_000}));
    assert_eq!(
        counters(&s, "t", "w"),
        (0, 0, 0),
        "(lag, in_flight, dlq_depth)"
    );
    publish(&s, "t", &events("e", 5));
    assert_eq!(counters(&s, "t", "w"), (5, 0, 0));

    let got = poll(&s, "t", "w", 3, 5000);
    assert_eq!(got.len(), 3);
    assert_eq!(counters(&s, "t", "w"), (5, 3, 0));
    ack(&s, "t", "w", &[(0, 0)]);
    assert_eq!(counters(&s, "t", "w"), (4, 2, 0));
    nack(&s, "t", "w", (0, 1), &json!({"retry_in_ms": 0}));
    assert_eq!(
        counters(&s, "t", "w"),
        (4, 1, 0),
        "a nacked event is not locked"
    );
    let more = poll(&s, "t", "w", 10, 5000);
    assert_eq!(
        more.iter()
            .map(|d| (d.offset, d.attempt))
            .collect::<Vec<_>>(),
        [(1, 2), (3, 1), (4, 1)]
    );
    assert_eq!(counters(&s, "t", "w"), (4, 4, 0));
    ack(&s, "t", "w", &[(0, 1)]);
    assert_eq!(counters(&s, "t", "w"), (3, 3, 0));
    nack(&s, "t", "w", (0, 2), &json!({"reject": true}));
    assert_eq!(
        counters(&s, "t", "w"),
        (2, 2, 1),
        "dead-lettered is finished"
    );
    ack(&s, "t", "w", &[(0, 3), (0, 4)]);
    assert_eq!(counters(&s, "t", "w"), (0, 0, 1));
    publish(&s, "t", &events("f", 2));
    assert_eq!(counters(&s, "t", "w"), (2, 0, 1));
}

#[test]
fn put_of_identical_settings_is_200_and_of_different_settings_409() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 2);
    let settings = json!({"mode": "queue", "max_attempts": 3, "lock_ms": 5000,
        "backoff": {"initial_ms": 100, "max_ms": 1000, "multiplier": 2.0}});
    let (status, created) = put_sub(&s, "t", "w", &settings);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "w");
    assert_eq!(created["lock_ms"], 5000);
    assert_eq!(created["start"], "earliest");
    let (status, again) = put_sub(&s, "t", "w", &settings);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, created);
    // The same settings spelled differently (defaults left out) are identical.
    let (status, body) = put_sub(
        &s,
        "t",
        "w",
        &json!({"max_attempts": 3, "lock_ms": 5000, "backoff": {"initial_ms": 100, "max_ms": 1000}}),
    );
    assert_eq!(status, 200, "{body}");

    for different in [
        json!({"mode": "queue", "max_attempts": 4, "lock_ms": 5000,
            "backoff": {"initial_ms": 100, "max_ms": 1000, "multiplier": 2.0}}),
        json!({"mode": "cursor"}),
        json!({}),
    ] {
        let (status, body) = put_sub(&s, "t", "w", &different);
        assert_eq!(status, 409, "{different}: {body}");
        assert_eq!(body["code"], "subscription_conflict", "{body}");
    }
    assert_eq!(sub_info(&s, "t", "w")["max_attempts"], 3, "unchanged");

    let (status, body) = put_sub(&s, "t", "c", &json!({"mode": "cursor"}));
    assert_eq!(status, 201, "{body}");
    let (status, body) = put_sub(
        &s,
        "t",
        "c",
        &json!({"mode": "cursor", "start": "earliest"}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_sub(&s, "t", "c", &json!({"mode": "cursor", "start": "latest"}));
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("subscription_conflict")),
        "{body}"
    );
}

/// `docs/api.md`: `lag` is "events not yet finished". An event acked out of order is finished.
#[test]
fn lag_counts_events_acked_out_of_order_as_finished() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    publish(&s, "t", &events("e", 5));
    create_sub(&s, "t", "w", &json!({"lock_ms": 600_000}));
    assert_eq!(poll(&s, "t", "w", 3, 5000).len(), 3);
    // Offset 0 stays in flight; 1 and 2 are acked: 3 events (0, 3, 4) are not finished.
    ack(&s, "t", "w", &[(0, 1), (0, 2)]);
    let info = sub_info(&s, "t", "w");
    assert_eq!(info["in_flight"], 1, "{info}");
    assert_eq!(
        info["lag"], 3,
        "lag is the number of events not yet finished: {info}"
    );
}

/// `docs/api.md`: `dlqerror` is "the last error". Here the last attempt failed by its lock
/// expiring, after an earlier attempt was nacked with an error.
#[test]
fn dlqerror_is_the_last_error_when_the_last_attempt_expired() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    create_topic(&s, "t", 1);
    let pos = publish(&s, "t", &events("e", 1))[0];
    create_sub(&s, "t", "w", &json!({"lock_ms": 500, "max_attempts": 2}));
    assert_eq!(poll_one(&s, "t", "w").attempt, 1);
    nack(
        &s,
        "t",
        "w",
        pos,
        &json!({"retry_in_ms": 0, "error": "boom"}),
    );
    assert_eq!(poll_one(&s, "t", "w").attempt, 2);
    // The second (last) attempt is neither acked nor nacked: its lock expires.
    poll_nothing(&s, "t", "w", 1000);
    let dlq = dlq_list(&s, "t");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0]["event"]["dlqattempts"], "2");
    assert_eq!(
        dlq[0]["event"]["dlqerror"], "lock expired",
        "the last error was the expired lock of attempt 2, not attempt 1's nack"
    );
}
