//! The MQTT source in the conformance suite, against the local Mosquitto (QoS 1, persistent
//! session, a unique topic prefix and client id per run).

use gearbox_connect::source::Source;
use gearbox_connect::testkit::{SourceGear, WAIT_MS_MAX, source_suite};
use gearbox_connectors::mqtt::{Mqtt, MqttConfig};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use std::time::{Duration, Instant};

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("gbx-conf-{what}-{}-{nanos}", std::process::id())
}

struct Broker {
    prefix: String,
    client_id: String,
    session_made: bool,
}

impl Broker {
    fn config(&self) -> MqttConfig {
        serde_json::from_value(json!({
            "client_id": self.client_id,
            "topics": [format!("{}/sensors/+/temp", self.prefix)],
            "id_field": "seq",
            "event": {"type": "sensor.reading", "pattern": format!("{}/sensors/{{sensor}}/temp", self.prefix)},
        }))
        .unwrap()
    }
}

impl SourceGear for Broker {
    type Source = Mqtt;

    async fn connect(&mut self) -> Mqtt {
        if !self.session_made {
            // Make the persistent session (and its subscription) exist before anything is
            // published, as an operator's first start does.
            let mut first = Mqtt::new(self.config()).unwrap();
            first.open(None).await.unwrap();
            first.close().await;
            self.session_made = true;
        }
        Mqtt::new(self.config()).unwrap()
    }

    async fn emit(&mut self, keys: &[String], poison: bool) -> Vec<String> {
        let mut options = MqttOptions::new(unique("pub"), "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut ids = Vec::new();
        for k in keys {
            let topic = format!("{}/sensors/s-1/temp", self.prefix);
            client
                .publish(
                    topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    json!({"seq": k, "poison": poison}).to_string(),
                )
                .await
                .unwrap();
            ids.push(format!("{topic}#{k}"));
        }
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        let mut acked = 0;
        while acked < keys.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = tokio::time::timeout(left, eventloop.poll())
                .await
                .expect("the publisher timed out")
                .expect("the publisher's connection");
            if let Event::Incoming(Incoming::PubAck(_)) = event {
                acked += 1;
            }
        }
        client.disconnect().await.unwrap();
        ids
    }

    fn buffers_while_down(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_source_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker {
        prefix: unique("topics"),
        client_id: unique("session"),
        session_made: false,
    };
    source_suite(&mut broker, dir.path()).await;
}
