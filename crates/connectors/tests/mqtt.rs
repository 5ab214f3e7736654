//! The MQTT source against the real Mosquitto on 127.0.0.1:1883 (anonymous).
//!
//! Every test uses its own topic prefix and client ids (process id, clock, counter), so parallel
//! tests and parallel runs never see each other's messages, and removes its persistent session
//! at the end. Conditions are polled with a deadline, never slept on; the one timed wait is the
//! backpressure test's 300 ms window in which reading must *not* pass `inflight_max`, a
//! negative that no condition can signal.

#![cfg(feature = "mqtt")]

use gearbox_connect::source::{RecordOutcome, Source, SourceBatch, SourceError};
use gearbox_connect::testkit::{SourceGear, source_suite};
use gearbox_connectors::mqtt::{INFLIGHT_MAX_BOUND, Mqtt, MqttConfig, TOPICS_MAX};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const HOST: &str = "127.0.0.1";
const PORT: u16 = 1883;
/// How long any one condition may take to come true.
const DEADLINE_MS: u64 = 20_000;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other test or run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("gbt-{}-{nanos}-{n}-{tag}", std::process::id())
}

struct Names {
    prefix: String,
    client_id: String,
}

fn names(tag: &str) -> Names {
    Names {
        prefix: format!("gearbox-test/{}", unique(tag)),
        client_id: unique(tag),
    }
}

fn config(client_id: &str, topics: &[String], extra: Value) -> MqttConfig {
    let mut value = json!({
        "host": HOST,
        "port": PORT,
        "client_id": client_id,
        "topics": topics,
        "event": {"type": "com.example.reading"},
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).expect("test config deserializes")
}

async fn opened(config: MqttConfig) -> Mqtt {
    let mut source = Mqtt::new(config).expect("valid config");
    source.open(None).await.expect("open");
    source
}

/// Publishes every (topic, payload) with QoS 1 in order and returns once the broker PUBACKed
/// all of them.
async fn publish_all(messages: Vec<(String, Vec<u8>)>) {
    let mut options = MqttOptions::new(unique("pub"), HOST, PORT);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let count = messages.len();
    let publisher = tokio::spawn({
        let client = client.clone();
        async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
        }
    });
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    let mut acked = 0;
    while acked < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, eventloop.poll())
            .await
            .expect("publisher timed out")
            .expect("publisher connection");
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            acked += 1;
        }
    }
    publisher.await.unwrap();
    client.disconnect().await.unwrap();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        if event == Event::Outgoing(Outgoing::Disconnect) {
            break;
        }
    }
}

/// Removes a persistent session from the broker: connecting with a clean session discards it.
async fn forget_session(client_id: &str) {
    let mut options = MqttOptions::new(client_id, HOST, PORT);
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    client.disconnect().await.unwrap();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        if event == Event::Outgoing(Outgoing::Disconnect) {
            break;
        }
    }
}

fn numbered(topic: &str, range: std::ops::Range<u64>) -> Vec<(String, Vec<u8>)> {
    range
        .map(|n| (topic.to_string(), json!({"n": n}).to_string().into_bytes()))
        .collect()
}

/// The next batch, within the deadline.
async fn next(source: &mut Mqtt, records_max: usize) -> SourceBatch {
    tokio::time::timeout(
        Duration::from_millis(DEADLINE_MS),
        source.next_batch(records_max),
    )
    .await
    .expect("no batch before the deadline")
    .expect("next_batch")
    .expect("MQTT never ends")
}

async fn ack(source: &mut Mqtt, batch: SourceBatch) {
    let outcomes = vec![RecordOutcome::default(); batch.records.len()];
    source.ack(batch.token, outcomes).await.expect("ack");
}

/// Reads and acks batches until `done` holds for everything read.
async fn read_until(
    source: &mut Mqtt,
    records_max: usize,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut events = Vec::new();
    while !done(&events) {
        let batch = next(source, records_max).await;
        assert!(batch.records.len() <= records_max);
        events.extend(batch.records.iter().cloned());
        ack(source, batch).await;
    }
    events
}

fn n_of(event: &Value) -> u64 {
    event["data"]["n"].as_u64().expect("data.n")
}

fn covers(events: &[Value], range: std::ops::Range<u64>) -> bool {
    let seen: BTreeSet<u64> = events.iter().map(n_of).collect();
    range.into_iter().all(|n| seen.contains(&n))
}

/// Polls `condition` until it holds.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_levels_become_extensions_and_the_key() {
    let n = names("pattern");
    let filter = format!("{}/sensors/+/+", n.prefix);
    let extra = json!({"event": {
        "type": "com.example.reading",
        "pattern": format!("{}/sensors/{{sensor}}/{{metric}}", n.prefix),
    }});
    let mut source = opened(config(&n.client_id, &[filter], extra)).await;
    let topic = format!("{}/sensors/s-17/temp", n.prefix);
    publish_all(vec![(topic.clone(), br#"{"celsius":21.5}"#.to_vec())]).await;

    let events = read_until(&mut source, 10, |e| !e.is_empty()).await;
    let event = &events[0];
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["source"], format!("mqtt://{HOST}:{PORT}"));
    assert_eq!(event["type"], "com.example.reading");
    assert_eq!(event["subject"], topic);
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"], json!({"celsius": 21.5}));
    assert_eq!(event["sensor"], "s-17");
    assert_eq!(event["metric"], "temp");
    assert_eq!(event["partitionkey"], "s-17");
    assert!(event.get("payloaderror").is_none(), "{event}");
    // A UUID v7: 36 characters, version digit 7.
    let id = event["id"].as_str().unwrap();
    assert_eq!((id.len(), &id[14..15]), (36, "7"), "{id}");

    source.close().await;
    forget_session(&n.client_id).await;
}

/// Runs `phase` on a runtime of its own and drops that runtime, as a process dies: every task
/// of the phase, the source's connection task included, is gone when this returns, and its
/// sockets are closed without a DISCONNECT.
fn in_a_process_that_dies<T: Send + 'static>(
    phase: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let out = runtime.block_on(phase);
        drop(runtime);
        out
    })
    .join()
    .expect("the phase")
}

/// Publishes 0..50, acks exactly the first 20 and reads at least one more without acking it;
/// returns the unacked ones read, once the 20 PUBACKs are on the socket.
async fn ack_twenty_of_fifty(source: &mut Mqtt, topic: &str) -> Vec<u64> {
    publish_all(numbered(topic, 0..50)).await;
    let mut first = Vec::new();
    while first.len() < 20 {
        let batch = next(source, 20 - first.len()).await;
        first.extend(batch.records.iter().map(n_of));
        ack(source, batch).await;
    }
    assert_eq!(first, (0..20).collect::<Vec<_>>());
    let unacked: Vec<u64> = next(source, 100).await.records.iter().map(n_of).collect();
    assert_eq!(unacked.first(), Some(&20));
    eventually("20 PUBACKs written", || {
        source.stats().pubacks_written == 20
    })
    .await;
    assert_eq!(source.stats().pubacks_written, 20);
    unacked
}

/// Counts how often each `data.n` occurs.
fn counts(events: &[Value]) -> BTreeMap<u64, usize> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(n_of(e)).or_default() += 1;
    }
    counts
}

#[test]
fn unacked_messages_are_redelivered_after_a_crash() {
    let n = names("crash");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    let unacked = in_a_process_that_dies({
        let cfg = cfg.clone();
        async move {
            let mut source = opened(cfg).await;
            let unacked = ack_twenty_of_fifty(&mut source, &topic).await;
            // Not closed: the runtime's end takes the connection down mid-stream.
            std::mem::forget(source);
            unacked
        }
    });

    in_a_process_that_dies(async move {
        let mut source = opened(cfg).await;
        let events = read_until(&mut source, 100, |e| covers(e, 20..50)).await;
        let counts = counts(&events);
        // No loss, and nothing twice within the run.
        assert!((20..50).all(|k| counts.contains_key(&k)), "{counts:?}");
        assert!(counts.values().all(|&c| c == 1), "{counts:?}");
        // Everything that comes back is the broker's redelivery, flagged as such: what the
        // crash caught unacked, and acked messages whose PUBACK the broker had not read yet
        // (a socket closed with unread data is reset, and the broker drops what it had not
        // read from it). Those are the duplicates an id_field deduplicates.
        for e in &events {
            let k = n_of(e);
            if k < 20 || unacked.contains(&k) {
                assert_eq!(e["mqttdup"], "true", "{e}");
            }
        }
        let duplicates = counts.keys().filter(|&&k| k < 20).count();
        eprintln!("acked before the crash and redelivered: {duplicates} of 20");
        source.close().await;
        forget_session(&n.client_id).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_not_redelivered_after_a_clean_close() {
    let n = names("close");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    let mut source = opened(cfg.clone()).await;
    let unacked = ack_twenty_of_fifty(&mut source, &topic).await;
    source.close().await;

    let mut source = opened(cfg).await;
    let events = read_until(&mut source, 100, |e| covers(e, 20..50)).await;
    let ns: Vec<u64> = events.iter().map(n_of).collect();
    assert_eq!(ns, (20..50).collect::<Vec<_>>());
    for e in events.iter().filter(|e| unacked.contains(&n_of(e))) {
        assert_eq!(e["mqttdup"], "true", "{e}");
    }

    source.close().await;
    forget_session(&n.client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_while_stopped_arrive_after_the_start() {
    let n = names("offline");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    // The first start creates the session and its subscription; a clean close keeps both.
    opened(cfg.clone()).await.close().await;

    publish_all(numbered(&topic, 0..10)).await;

    let mut source = opened(cfg).await;
    let events = read_until(&mut source, 100, |e| covers(e, 0..10)).await;
    let ns: Vec<u64> = events.iter().map(n_of).collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());

    source.close().await;
    forget_session(&n.client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_messages_come_back() {
    let n = names("nack");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    let mut source = opened(cfg).await;
    publish_all(numbered(&topic, 0..8)).await;
    eventually("8 messages received", || source.stats().received >= 8).await;

    let batch = next(&mut source, 3).await;
    let nacked: Vec<u64> = batch.records.iter().map(n_of).collect();
    assert_eq!(nacked, [0, 1, 2]);
    source.nack(batch.token, "append refused").await;

    let events = read_until(&mut source, 100, |e| covers(e, 0..8)).await;
    let ns: Vec<u64> = events.iter().map(n_of).collect();
    // Everything comes back once, in order: the nacked batch and what had followed it.
    assert_eq!(ns, (0..8).collect::<Vec<_>>());
    for e in events.iter().filter(|e| n_of(e) < 3) {
        assert_eq!(e["mqttdup"], "true", "{e}");
    }
    let stats = source.stats();
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.redeliveries_skipped, 5, "{stats:?}");

    // Acked means acked: after a fence message, nothing of the above comes again.
    publish_all(numbered(&topic, 100..101)).await;
    let after = read_until(&mut source, 100, |e| covers(e, 100..101)).await;
    let ns: Vec<u64> = after.iter().map(n_of).collect();
    assert_eq!(ns, [100]);

    source.close().await;
    forget_session(&n.client_id).await;
}

/// Connects as `client_id` to the persistent session (which makes the broker drop the other
/// connection using it), acknowledges nothing, and disconnects.
async fn take_over_session(client_id: &str) {
    let mut options = MqttOptions::new(client_id, HOST, PORT);
    options.set_clean_session(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let deadline = Duration::from_millis(DEADLINE_MS);
    loop {
        let event = tokio::time::timeout(deadline, eventloop.poll()).await;
        if let Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) = event {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while let Ok(Ok(event)) = tokio::time::timeout(deadline, eventloop.poll()).await {
        if event == Event::Outgoing(Outgoing::Disconnect) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_reconnects_and_loses_nothing() {
    let n = names("reconnect");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    let mut source = opened(cfg).await;
    publish_all(numbered(&topic, 0..10)).await;
    eventually("10 messages received", || source.stats().received >= 10).await;
    let batch = next(&mut source, 5).await;
    assert_eq!(
        batch.records.iter().map(n_of).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );

    // Another connection takes the session over; the broker closes ours, and the source
    // reconnects and takes it back.
    take_over_session(&n.client_id).await;
    eventually("the reconnect", || source.stats().connections >= 2).await;

    // The batch came on the lost connection: its PUBACKs would name packet ids of a
    // connection that no longer exists, so they are skipped, and the broker resends it.
    ack(&mut source, batch).await;
    let mut events = Vec::new();
    while !covers(&events, 0..10) {
        match tokio::time::timeout(Duration::from_millis(DEADLINE_MS), source.next_batch(100))
            .await
            .expect("no batch before the deadline")
        {
            // The lost connection is reported once; the source reconnects by itself.
            Err(SourceError::Transient { .. }) => continue,
            Err(e) => panic!("{e}"),
            Ok(batch) => {
                let batch = batch.unwrap();
                events.extend(batch.records.iter().cloned());
                ack(&mut source, batch).await;
            }
        }
    }
    let ns: Vec<u64> = events.iter().map(n_of).collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["mqttdup"] == "true"), "{events:?}");
    // The five messages the lost connection had queued behind the batch were not handed out.
    assert_eq!(
        source.stats().redeliveries_skipped,
        5,
        "{:?}",
        source.stats()
    );
    // `ack` only queues the command; the task counts it when it runs.
    eventually("the stale acks counted", || source.stats().acks_stale == 5).await;

    source.close().await;
    forget_session(&n.client_id).await;
}

/// Mosquitto's own limit, asserted as it is: while the source is down, the broker queues at
/// most `max_queued_messages` (1000 by default, and /etc/mosquitto/mosquitto.conf keeps the
/// default) for the session and drops the newer ones. Gearbox cannot get them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_drops_what_exceeds_its_queue_while_the_source_is_down() {
    let n = names("queue-limit");
    let topic = format!("{}/t", n.prefix);
    let cfg = config(&n.client_id, &[format!("{}/#", n.prefix)], json!({}));
    opened(cfg.clone()).await.close().await;
    publish_all(numbered(&topic, 0..1050)).await;

    let mut source = opened(cfg).await;
    // A fence published while connected is not queued, so it arrives after what was kept.
    publish_all(numbered(&topic, 5000..5001)).await;
    let events = read_until(&mut source, 1000, |e| covers(e, 5000..5001)).await;
    let ns: Vec<u64> = events.iter().map(n_of).collect();
    let kept: Vec<u64> = (0..1000).chain(5000..5001).collect();
    assert_eq!(
        ns, kept,
        "Mosquitto's max_queued_messages is no longer 1000?"
    );

    source.close().await;
    forget_session(&n.client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_filters_select_topics() {
    let n = names("wild");
    let p = &n.prefix;
    let filters = [format!("{p}/a/+/temp"), format!("{p}/b/#")];
    let mut source = opened(config(&n.client_id, &filters, json!({"payload": "text"}))).await;
    let topics = [
        format!("{p}/a/x/temp"),
        format!("{p}/a/y/hum"),
        format!("{p}/a/x/y/temp"),
        format!("{p}/b"),
        format!("{p}/b/1"),
        format!("{p}/b/1/2/3"),
        format!("{p}/c/1"),
        // The fence: published last, so everything matching was delivered before it.
        format!("{p}/b/end"),
    ];
    publish_all(topics.iter().map(|t| (t.clone(), b"x".to_vec())).collect()).await;

    let fence = topics[7].clone();
    let events = read_until(&mut source, 100, |e| {
        e.iter().any(|e| e["subject"] == fence.as_str())
    })
    .await;
    let subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    // `p/b/#` matches `p/b` itself too (MQTT 3.1.1 §4.7.1.2).
    assert_eq!(
        subjects,
        [&topics[0], &topics[3], &topics[4], &topics[5], &topics[7]]
    );
    assert!(events.iter().all(|e| e["data"] == "x"));

    source.close().await;
    forget_session(&n.client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_stops_at_inflight_max_and_nothing_is_lost() {
    let n = names("backpressure");
    let topic = format!("{}/t", n.prefix);
    let inflight_max = 5;
    let cfg = config(
        &n.client_id,
        &[format!("{}/#", n.prefix)],
        json!({"inflight_max": inflight_max}),
    );
    let mut source = opened(cfg).await;
    publish_all(numbered(&topic, 0..40)).await;

    // Nobody calls next_batch: the task takes `inflight_max` messages and stops reading,
    // although the broker may send up to its own window (20 by default).
    eventually("the first messages", || {
        source.stats().received >= inflight_max
    })
    .await;
    let window = tokio::time::timeout(Duration::from_millis(300), async {
        while source.stats().received <= inflight_max {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        window.is_err(),
        "read past inflight_max: {:?}",
        source.stats()
    );

    // Reading resumes with the runtime, and every message arrives exactly once.
    let mut largest = 0;
    let mut ns = Vec::new();
    while ns.len() < 40 {
        let batch = next(&mut source, 100).await;
        largest = largest.max(batch.records.len());
        ns.extend(batch.records.iter().map(n_of));
        ack(&mut source, batch).await;
    }
    assert_eq!(ns, (0..40).collect::<Vec<_>>());
    assert!(largest <= inflight_max as usize, "batch of {largest}");

    source.close().await;
    forget_session(&n.client_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_transient_open_error() {
    let mut cfg = config(&unique("down"), &["x/#".into()], json!({}));
    // Port 9 (discard) has no MQTT broker on this machine.
    cfg.port = 9;
    let mut source = Mqtt::new(cfg).unwrap();
    match source.open(None).await {
        Err(SourceError::Transient { .. }) => {}
        other => panic!("expected a transient error, got {other:?}"),
    }
}

#[test]
fn invalid_configs_name_their_paths() {
    let check = |topics: Vec<String>, event: Value, expect: &[&str]| {
        let cfg = config("id", &topics, json!({ "event": event }));
        let errors = cfg.validate();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, expect, "{errors:?}");
        match (Mqtt::new(cfg), errors.first()) {
            (Ok(_), None) => {}
            (Err(e), Some((field, message))) => {
                assert_eq!((&e.field, &e.message), (field, message));
            }
            (Ok(_), Some(_)) => panic!("built an invalid config"),
            (Err(e), None) => panic!("{e}"),
        }
    };
    let event = |pattern: &str| json!({"type": "t", "pattern": pattern});
    check(vec!["a/#".into()], event("a/{sensor}"), &[]);
    check(vec![], event("a/{sensor}"), &["topics"]);
    let too_many: Vec<String> = (0..=TOPICS_MAX).map(|i| format!("a/{i}")).collect();
    check(too_many, event("a/{sensor}"), &["topics"]);
    check(vec!["a/#/b".into()], event("a/{sensor}"), &["topics[0]"]);
    check(vec!["a/#".into()], event("a/{Sensor}"), &["event.pattern"]);
    check(
        vec!["a/#".into()],
        event("a/{sensor-id}"),
        &["event.pattern"],
    );
    check(vec!["a/#".into()], event("a/{type}"), &["event.pattern"]);
    check(
        vec!["a/#".into()],
        json!({"type": "t", "pattern": "a/{sensor}", "key": "metric"}),
        &["event.key"],
    );
    let cfg = config(
        "id",
        &["a/#".into()],
        json!({"inflight_max": INFLIGHT_MAX_BOUND + 1}),
    );
    assert_eq!(cfg.validate()[0].0, "inflight_max");
    let err = serde_json::from_value::<MqttConfig>(json!({
        "client_id": "id", "topics": ["a"], "event": {"type": "t"}, "qos": 1,
    }))
    .unwrap_err();
    assert!(err.to_string().contains("unknown field `qos`"), "{err}");
}

/// A sensor fleet publishing `{"key": k, "poison": p}` with QoS 1; `id_field: key` makes the
/// event ids deterministic, which the suite needs to count exact deliveries.
struct Fleet {
    names: Names,
    session_created: bool,
}

impl Fleet {
    fn config(&self) -> MqttConfig {
        config(
            &self.names.client_id,
            &[format!("{}/#", self.names.prefix)],
            json!({"id_field": "key"}),
        )
    }

    fn topic(&self) -> String {
        format!("{}/fleet", self.names.prefix)
    }
}

impl SourceGear for Fleet {
    type Source = Mqtt;

    async fn connect(&mut self) -> Mqtt {
        // The runtime opens the source in its own task, so the session and its subscription
        // are created here first: what the fleet publishes before that open is queued for it.
        if !self.session_created {
            opened(self.config()).await.close().await;
            self.session_created = true;
        }
        Mqtt::new(self.config()).expect("valid config")
    }

    async fn emit(&mut self, keys: &[String], poison: bool) -> Vec<String> {
        let topic = self.topic();
        let messages = keys
            .iter()
            .map(|k| {
                let body = json!({"key": k, "poison": poison}).to_string();
                (topic.clone(), body.into_bytes())
            })
            .collect();
        publish_all(messages).await;
        keys.iter().map(|k| format!("{topic}#{k}")).collect()
    }

    fn buffers_while_down(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_source_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = Fleet {
        names: names("conformance"),
        session_created: false,
    };
    source_suite(&mut fleet, &dir.path().join("log")).await;
    forget_session(&fleet.names.client_id).await;
}
