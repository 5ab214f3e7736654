//! MQTT through SIGKILL: a QoS 1 publisher sends sensor readings to the local Mosquitto while
//! `gearbox serve` consumes them on a persistent session and is killed with SIGKILL mid-stream,
//! three times. Every message Mosquitto acknowledged to the publisher ends up in the topic, keyed
//! by sensor; with `id_field` the redeliveries after each kill deduplicate, so none is stored twice.

mod support;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Server, free_port};

const TOPIC: &str = "readings";
const PARTITIONS: u32 = 2;
const MESSAGES: usize = 1200;
const KILLS: usize = 3;

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gbx-{what}-{}-{nanos}", std::process::id())
}

fn stored(server: &Server) -> BTreeMap<String, (usize, String)> {
    let mut out: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for e in server.all_events(TOPIC, PARTITIONS) {
        let id = e["id"].as_str().unwrap().to_string();
        let key = e["partitionkey"].as_str().unwrap_or("").to_string();
        out.entry(id).or_insert((0, key)).0 += 1;
    }
    out
}

/// Publishes `MESSAGES` readings at QoS 1, paced so that the kills land mid-stream: before each
/// of the last `KILLS` quarters it waits until one more kill has happened (`kills`), so a kill
/// never comes after the last message whatever the machine's speed. Returns how many messages
/// Mosquitto acknowledged.
async fn publish(prefix: String, kills: Arc<AtomicUsize>) -> usize {
    let mut options = MqttOptions::new(unique("pub"), "127.0.0.1", 1883);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let sender = tokio::spawn(async move {
        let quarter = MESSAGES / (KILLS + 1);
        for seq in 0..MESSAGES {
            if seq > 0 && seq % quarter == 0 {
                while kills.load(Ordering::SeqCst) < (seq / quarter).min(KILLS) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            let sensor = format!("s-{}", seq % 7);
            let payload = json!({"seq": seq, "temp": 20.0 + (seq % 10) as f64 / 10.0});
            client
                .publish(
                    format!("{prefix}/sensors/{sensor}/temp"),
                    QoS::AtLeastOnce,
                    false,
                    payload.to_string(),
                )
                .await
                .unwrap();
            if seq % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        client
    });
    let mut acked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked < MESSAGES {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, eventloop.poll())
            .await
            .expect("the publisher timed out")
            .expect("the publisher's connection");
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            acked += 1;
        }
    }
    let client = sender.await.unwrap();
    client.disconnect().await.unwrap();
    acked
}

#[test]
fn nothing_mosquitto_acknowledged_is_lost_across_sigkills() {
    let prefix = unique("mqtt-crash");
    let client_id = unique("gearbox");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}]
pipelines:
  - name: sensors
    source:
      mqtt:
        client_id: "{client_id}"
        topics: ["{prefix}/sensors/+/temp"]
        id_field: seq
        event: {{ type: sensor.reading, pattern: "{prefix}/sensors/{{sensor}}/temp", key: sensor }}
    to: {TOPIC}
    batch_records_max: 50
"#
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    // The persistent session must exist (subscribed) before publishing: wait for the pipeline's
    // first message to arrive.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = prefix.clone();
        rt.block_on(async move {
            let mut options = MqttOptions::new(unique("probe"), "127.0.0.1", 1883);
            options.set_keep_alive(Duration::from_secs(5));
            let (client, mut eventloop) = AsyncClient::new(options, 4);
            client
                .publish(
                    format!("{p}/sensors/probe/temp"),
                    QoS::AtLeastOnce,
                    false,
                    json!({"seq": "probe"}).to_string(),
                )
                .await
                .unwrap();
            while !matches!(
                eventloop.poll().await,
                Ok(Event::Incoming(Incoming::PubAck(_)))
            ) {}
        });
        if !stored(&server).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the MQTT pipeline never received a message:\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let kills = Arc::new(AtomicUsize::new(0));
    let publisher = rt.spawn(publish(prefix.clone(), kills.clone()));
    let mut seen_at_kill = Vec::new();
    for _ in 0..KILLS {
        // Kill once more messages have arrived since the last restart (mid-stream).
        let before = stored(&server).len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while stored(&server).len() < before + 100 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        seen_at_kill.push(stored(&server).len());
        server.kill9();
        kills.fetch_add(1, Ordering::SeqCst);
        // Down for a moment while the publisher keeps going: Mosquitto queues for the session.
        std::thread::sleep(Duration::from_millis(100));
        server.restart_after_kill9();
    }
    let acked = rt.block_on(publisher).unwrap();
    assert_eq!(acked, MESSAGES);

    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        let ids = stored(&server);
        let missing: Vec<usize> = (0..MESSAGES)
            .filter(|seq| {
                let sensor = format!("s-{}", seq % 7);
                !ids.contains_key(&format!("{prefix}/sensors/{sensor}/temp#{seq}"))
            })
            .collect();
        if missing.is_empty() {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged messages missing, e.g. {:?}; kills at {seen_at_kill:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let twice: Vec<_> = ids.iter().filter(|(_, (n, _))| *n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    for (id, (_, key)) in &ids {
        if let Some(seq) = id.rsplit('#').next().and_then(|s| s.parse::<usize>().ok()) {
            assert_eq!(key, &format!("s-{}", seq % 7), "{id} keyed by its sensor");
        }
    }
    assert!(
        seen_at_kill.iter().all(|n| *n < MESSAGES),
        "every kill landed mid-stream: {seen_at_kill:?}"
    );
}
