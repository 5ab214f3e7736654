//! The MQTT source: subscribes to topic filters on an MQTT 3.1.1 broker with QoS 1 and a
//! persistent session, and turns every PUBLISH into a draft CloudEvent.
//!
//! # Delivery contract
//!
//! The session is persistent (`clean_session = false` under the configured, stable `client_id`)
//! and acknowledgements are manual: a PUBLISH is PUBACKed only in [`Source::ack`], after the
//! runtime has appended its event durably. Whatever was received but not PUBACKed when Gearbox
//! dies (SIGKILL, a lost connection) stays in flight in the broker's session, and the broker
//! sends it again when the same `client_id` reconnects. Nothing acknowledged to the broker is
//! therefore missing from the log; the price is that a message whose PUBACK had not reached the
//! broker yet arrives twice (flagged `mqttdup`, see "Event ids"). "Reached" means read by the
//! broker, not written to the socket: a process that dies with unread data in its socket has
//! the connection reset, and the broker drops what it had not read yet, so PUBACKs written
//! just before a crash can still be lost (measured here: up to 19 of 20, in 4 of 24 runs under
//! load). [`Mqtt::close`] avoids that by waiting for the broker to close the connection after
//! its DISCONNECT.
//!
//! A background task owns rumqttc's event loop. It forwards PUBLISH packets through a bounded
//! channel to [`Source::next_batch`] and writes the PUBACKs that [`Source::ack`] hands it, in the
//! order the PUBLISHes arrived (MQTT 3.1.1 §4.6 asks for that order; rumqttc itself does not
//! enforce any order for manual acks, it writes a PUBACK for whatever packet id it is given, so
//! the order is kept here: one batch at a time, PUBACKs queued in arrival order). It reconnects
//! by itself with exponential backoff. [`Source::nack`] cannot ask an MQTT 3.1.1 broker to resend
//! one message (there is no negative acknowledgement before MQTT 5, and a broker resends
//! in-flight messages only when a session resumes), so a nack first writes the PUBACKs already
//! queued, then drops the connection and resumes the session: the broker resends everything not
//! acknowledged, the nacked batch first.
//!
//! Invariants:
//! - A PUBACK is written only for a message the runtime acked, and only on the connection that
//!   received it. A PUBACK for an older connection is skipped (counted in
//!   [`MqttStats::acks_stale`]): packet ids belong to a connection, and the broker has resent the
//!   message on the new connection anyway.
//! - Messages received on a connection whose session later resumed (after a nack or a reconnect)
//!   and not yet handed out are dropped before they reach a batch (counted in
//!   [`MqttStats::redeliveries_skipped`]): the broker resends them.
//! - [`Source::next_batch`] is cancel-safe: its only await is the channel receive; once a message
//!   is received the rest of the call is synchronous.
//! - Gearbox holds at most `inflight_max` received and unacknowledged messages per connection;
//!   at that limit the task stops reading the socket, so TCP flow control holds the broker back
//!   instead of memory growing. rumqttc reads at most 10 packets ahead of that into its own
//!   buffer.
//!
//! # Event ids
//!
//! MQTT 3.1.1 gives a message no identity: the packet id is per connection and recycled, and two
//! identical readings are byte for byte the same message. So:
//! - with `id_field`, the id is `<topic>#<payload field>` (for example `plant/s-17/temp#4711`),
//!   deterministic, so a redelivery is deduplicated by the log. The topic is part of the id
//!   because devices commonly number their own messages, and `#` cannot occur in a topic name,
//!   so two topics never produce the same id;
//! - without it, the id is a UUID v7 per received message. A content hash would deduplicate
//!   redeliveries too, but it would also merge two genuine readings with the same payload on the
//!   same topic (a sensor reporting `{"temp":21.5}` every 5 s without a timestamp) inside the
//!   dedup window (100,000 events / 24 h by default) and silently lose them. Adding the packet id
//!   to the hash does not fix that: packet ids wrap every 65,535 messages. Loss is worse than a
//!   duplicate, so redeliveries become duplicates, and they carry `mqttdup: "true"` (the broker's
//!   DUP flag) so a consumer or a transform can tell them apart.
//!
//! # Draft events
//!
//! `specversion`, `id`, `source` (default `mqtt://host:port`), `type`, `subject` (the topic),
//! `time` (when Gearbox read the message), `datacontenttype` and `data`/`data_base64` by the
//! `payload` setting, and extensions (string values): one per `{name}` level of `event.pattern`,
//! `partitionkey` (the `event.key` placeholder, by default the first one), `mqttdup` and
//! `mqttretained` when the broker set those flags. A payload that does not fit its format is not
//! dropped and does not stop the pipeline: the event keeps the raw payload (as text when it is
//! UTF-8, as `data_base64` otherwise) and gets a `payloaderror` extension saying what was wrong,
//! so a transform can dead-letter it. A JSON payload without the `id_field` gets a UUID id and a
//! `payloaderror`; a topic that does not match the pattern gets a `topicerror` and no key.
//!
//! # Limits, including the broker's
//!
//! [`TOPICS_MAX`] filters; placeholder names of at most [`PLACEHOLDER_NAME_BYTES_MAX`]
//! characters; `inflight_max` at most [`INFLIGHT_MAX_BOUND`]; packets of at most
//! `packet_bytes_max` bytes ([`PACKET_BYTES_MAX_DEFAULT`]). A larger message fails the source
//! with a fatal error naming its size, because the broker would resend it forever. Reconnects
//! back off from [`RECONNECT_BACKOFF_MS_MIN`] to [`RECONNECT_BACKOFF_MS_MAX`].
//!
//! The broker's limits decide what survives while Gearbox is down. Mosquitto 2.0.11 is installed
//! here, and `/etc/mosquitto/mosquitto.conf` sets `persistence true` and nothing else, so its
//! defaults hold: per client `max_inflight_messages` 20, `max_queued_messages` 1000,
//! `max_queued_bytes` unlimited. While the source is down, the broker keeps the in-flight
//! messages plus at most 1000 queued ones and **drops the newer ones**, before Gearbox can see
//! them (it logs "Outgoing messages are being dropped for client ..."; the test
//! `mosquitto_drops_what_exceeds_its_queue_while_the_source_is_down` pins this). Raise
//! `max_queued_messages` for gear that must survive long Gearbox outages. The in-flight limit
//! does not protect Gearbox: measured here, Mosquitto held back to 20 only until the first
//! PUBACKs, then sent a 280-message backlog at once without waiting for acknowledgements, so
//! `inflight_max` is what bounds the memory. QoS 0 publications reach an offline session only
//! with `queue_qos0_messages true`, and a message is delivered at the lower of its publisher's
//! QoS and ours, so a QoS 0 publisher gets at-most-once whatever Gearbox does. Mosquitto writes
//! sessions and queues to disk only every `autosave_interval` (1800 s) and at a clean shutdown,
//! so a broker crash loses what it held since. Persistent sessions never expire unless
//! `persistent_client_expiration` is set; a session the broker no longer has resumes as a new
//! one and redelivers nothing.
//!
//! Two consequences of the persistent session: subscriptions outlive the configuration, so a
//! filter removed from `topics` keeps delivering until the session is reset (or the `client_id`
//! changed); and every start of the source subscribes again, which makes the broker resend the
//! retained messages that match (flagged `mqttretained`). A pipeline stalled for longer than
//! 1.5 × `keep_alive_s` stops reading and pinging, so the broker drops the connection; the
//! messages held then are redelivered after it resumes.

use base64::Engine as _;
use gearbox_connect::secret::{Secret, SecretRef};
use gearbox_connect::source::{AckToken, RecordOutcome, Source, SourceBatch, SourceError};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    Outgoing, Publish, QoS, StateError, SubAck, SubscribeFilter, SubscribeReasonCode,
};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Most topic filters one source subscribes to.
pub const TOPICS_MAX: usize = 64;
/// Longest topic filter, in bytes (an MQTT string's limit).
pub const TOPIC_FILTER_BYTES_MAX: usize = 65_535;
/// Longest placeholder name in `event.pattern` (CloudEvents extension names are `[a-z0-9]{1,20}`).
pub const PLACEHOLDER_NAME_BYTES_MAX: usize = 20;
/// Upper bound for `inflight_max`.
pub const INFLIGHT_MAX_BOUND: u16 = 1_000;
/// Default for `inflight_max`.
pub const INFLIGHT_MAX_DEFAULT: u16 = 100;
/// Default for `keep_alive_s`.
pub const KEEP_ALIVE_S_DEFAULT: u64 = 30;
/// Upper bound for `keep_alive_s` (MQTT carries it in 16 bits; an hour is already lax).
pub const KEEP_ALIVE_S_MAX: u64 = 3_600;
/// Default for `packet_bytes_max`.
pub const PACKET_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Upper bound for `packet_bytes_max`: MQTT's largest remaining length.
pub const PACKET_BYTES_MAX_BOUND: usize = 268_435_455;
/// First wait before reconnecting after a connection failure; doubled per failure.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 100;
/// Longest wait between reconnection attempts.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 10_000;
/// How long [`Source::open`] waits for the connection and the subscription acknowledgement.
pub const OPEN_TIMEOUT_MS: u64 = 10_000;
/// How long [`Mqtt::close`] waits to write the queued PUBACKs and a DISCONNECT.
pub const CLOSE_TIMEOUT_MS: u64 = 5_000;
/// How long writing PUBACKs to the socket may take before the connection counts as failed.
pub const FLUSH_TIMEOUT_MS: u64 = 5_000;
/// Requests (PUBACKs, SUBSCRIBE, DISCONNECT) rumqttc's request channel holds beyond
/// `inflight_max` PUBACKs.
const REQUESTS_SLACK: usize = 8;
/// Commands (`ack`, `nack`, `close`) queued for the background task; it drains them first.
const COMMANDS_CAPACITY: usize = 16;

/// Extension names this source sets itself, so a placeholder may not use them.
const RESERVED_NAMES: [&str; 14] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "partitionkey",
    "payloaderror",
    "topicerror",
    "mqttdup",
    "mqttretained",
];

const TEXT_TYPE: &str = "text/plain; charset=utf-8";
const BINARY_TYPE: &str = "application/octet-stream";
const JSON_TYPE: &str = "application/json";

/// The source's configuration.
///
/// ```yaml
/// host: 127.0.0.1            # default
/// port: 1883                 # default
/// client_id: gearbox-plant1  # required and stable: it names the persistent session
/// username: gearbox          # optional
/// password: ${env:MQTT_PASSWORD}
/// topics: ["plant1/sensors/+/+"]
/// keep_alive_s: 30           # default
/// inflight_max: 100          # default; received, unacknowledged messages held
/// packet_bytes_max: 1048576  # default
/// payload: json              # json (default) | text | binary
/// id_field: msg_id           # optional; a payload field that identifies the message
/// event:
///   type: com.example.reading
///   source: mqtt://plant1    # default mqtt://host:port
///   pattern: plant1/sensors/{sensor}/{metric}
///   key: sensor              # default: the first placeholder
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker's host name or address.
    #[serde(default = "default_host")]
    pub host: String,
    /// The broker's port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The client id, which names the persistent session: keep it stable, and unique per source.
    pub client_id: String,
    /// A user name, if the broker wants one.
    #[serde(default)]
    pub username: Option<String>,
    /// A password reference (`${env:NAME}` or `${file:/path}`); needs `username`.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Topic filters, with `+` and `#` wildcards, subscribed with QoS 1.
    pub topics: Vec<String>,
    /// The MQTT keep-alive, in seconds.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// Most messages received and not yet acknowledged that Gearbox holds per connection.
    #[serde(default = "default_inflight_max")]
    pub inflight_max: u16,
    /// Largest packet accepted, in bytes.
    #[serde(default = "default_packet_bytes_max")]
    pub packet_bytes_max: usize,
    /// How the payload becomes `data`.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// A top-level field of a JSON payload holding a message id (a string or an integer).
    #[serde(default)]
    pub id_field: Option<String>,
    /// How the draft event is built.
    pub event: EventConfig,
}

/// The draft event's attributes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventConfig {
    /// The CloudEvents `source`; default `mqtt://host:port`.
    #[serde(default)]
    pub source: Option<String>,
    /// The CloudEvents `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Topic levels to extract, like `sensors/{sensor}/{metric}`: each `{name}` level becomes an
    /// extension attribute. `+` matches a level without naming it, and a final `#` the rest.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The placeholder whose value becomes `partitionkey`; default: the first one.
    #[serde(default)]
    pub key: Option<String>,
}

/// How a payload becomes the event's data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Parsed JSON (`application/json`).
    #[default]
    Json,
    /// UTF-8 text (`text/plain`).
    Text,
    /// Bytes, as `data_base64` (`application/octet-stream`).
    Binary,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u16 {
    1883
}
fn default_keep_alive_s() -> u64 {
    KEEP_ALIVE_S_DEFAULT
}
fn default_inflight_max() -> u16 {
    INFLIGHT_MAX_DEFAULT
}
fn default_packet_bytes_max() -> usize {
    PACKET_BYTES_MAX_DEFAULT
}

impl MqttConfig {
    /// Every problem in the configuration, as (path, reason). Paths are relative to this
    /// config (`topics[2]`, `event.pattern`), so the caller prefixes the source's own path.
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        let mut fail = |path: &str, reason: String| errors.push((path.to_string(), reason));
        if self.host.trim().is_empty() {
            fail("host", "must not be empty".into());
        }
        if self.port == 0 {
            fail("port", "must be 1 to 65535".into());
        }
        if self.client_id.is_empty() {
            fail(
                "client_id",
                "must not be empty: it names the persistent session".into(),
            );
        }
        if self.password.is_some() && self.username.is_none() {
            fail(
                "password",
                "needs `username` (MQTT 3.1.1 sends a password only with a user name)".into(),
            );
        }
        validate_topics(&self.topics, &mut fail);
        if !(1..=KEEP_ALIVE_S_MAX).contains(&self.keep_alive_s) {
            fail(
                "keep_alive_s",
                format!("must be 1 to {KEEP_ALIVE_S_MAX} seconds"),
            );
        }
        if !(1..=INFLIGHT_MAX_BOUND).contains(&self.inflight_max) {
            fail("inflight_max", format!("must be 1 to {INFLIGHT_MAX_BOUND}"));
        }
        if !(1..=PACKET_BYTES_MAX_BOUND).contains(&self.packet_bytes_max) {
            fail(
                "packet_bytes_max",
                format!("must be 1 to {PACKET_BYTES_MAX_BOUND} bytes"),
            );
        }
        if let Some(field) = &self.id_field {
            if field.is_empty() {
                fail("id_field", "must not be empty".into());
            }
            if self.payload != PayloadFormat::Json {
                fail(
                    "id_field",
                    "needs `payload: json` (the id is read from a JSON field)".into(),
                );
            }
        }
        if self.event.ty.is_empty() {
            fail("event.type", "must not be empty".into());
        }
        if self.event.source.as_deref() == Some("") {
            fail("event.source", "must not be empty".into());
        }
        match (&self.event.pattern, &self.event.key) {
            (None, Some(_)) => fail("event.key", "needs `event.pattern`".into()),
            (None, None) => {}
            (Some(pattern), key) => match Pattern::parse(pattern) {
                Err(reason) => fail("event.pattern", reason),
                Ok(pattern) => {
                    if let Some(key) = key
                        && !pattern.names().any(|n| n == key)
                    {
                        fail(
                            "event.key",
                            format!("`{key}` is not a placeholder of `event.pattern`"),
                        );
                    }
                }
            },
        }
        errors
    }
}

fn validate_topics(topics: &[String], fail: &mut impl FnMut(&str, String)) {
    if topics.is_empty() {
        fail("topics", "needs at least one topic filter".into());
    }
    if topics.len() > TOPICS_MAX {
        fail(
            "topics",
            format!("{} filters; at most {TOPICS_MAX} are allowed", topics.len()),
        );
    }
    let mut seen = BTreeSet::new();
    for (i, topic) in topics.iter().enumerate() {
        let path = format!("topics[{i}]");
        if topic.len() > TOPIC_FILTER_BYTES_MAX {
            fail(&path, format!("longer than {TOPIC_FILTER_BYTES_MAX} bytes"));
        } else if !rumqttc::valid_filter(topic) {
            fail(
                &path,
                format!(
                    "`{topic}` is not a valid MQTT topic filter (`+` takes a whole level, `#` only the last)"
                ),
            );
        } else if !seen.insert(topic.as_str()) {
            fail(&path, format!("`{topic}` is listed twice"));
        }
    }
}

/// One level of an `event.pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    AnyOne,
    Rest,
}

/// A compiled `event.pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    levels: Vec<Level>,
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names = BTreeSet::new();
        for (i, part) in parts.iter().enumerate() {
            let level = Self::parse_level(part, i + 1 == parts.len())?;
            if let Level::Capture(name) = &level
                && !names.insert(name.clone())
            {
                return Err(format!("placeholder `{{{name}}}` appears twice"));
            }
            levels.push(level);
        }
        Ok(Pattern { levels })
    }

    fn parse_level(part: &str, last: bool) -> Result<Level, String> {
        if part == "+" {
            return Ok(Level::AnyOne);
        }
        if part == "#" {
            return if last {
                Ok(Level::Rest)
            } else {
                Err("`#` may only be the last level".into())
            };
        }
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            check_placeholder(name)?;
            return Ok(Level::Capture(name.into()));
        }
        if part.contains(['{', '}', '+', '#']) {
            return Err(format!(
                "level `{part}` mixes text with `{{}}`, `+` or `#`; each must be a whole level"
            ));
        }
        Ok(Level::Literal(part.into()))
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// The captured (name, level) pairs, or `None` if the topic does not have this shape.
    fn captures<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let mut out = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            if *level == Level::Rest {
                return Some(out);
            }
            let part = parts.next()?;
            match level {
                Level::Literal(text) if text != part => return None,
                Level::Capture(name) => out.push((name.as_str(), part)),
                _ => {}
            }
        }
        parts.next().is_none().then_some(out)
    }
}

fn check_placeholder(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= PLACEHOLDER_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(format!(
            "placeholder `{{{name}}}`: names are 1 to {PLACEHOLDER_NAME_BYTES_MAX} lower-case letters a-z or digits 0-9 (they become CloudEvents extension names)"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "placeholder `{{{name}}}` would overwrite the `{name}` attribute; choose another name"
        ));
    }
    Ok(())
}

/// Why [`Mqtt::new`] refused a configuration: the first problem, with its path (below the
/// source's section). [`MqttConfig::validate`] lists them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BuildError {
    /// The config field (`topics[2]`, `event.pattern`, `password`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Counters of one source, for metrics and tests. They survive reconnects and reopens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Connections established (CONNACKs received).
    pub connections: u64,
    /// PUBLISH packets received from the broker and passed on.
    pub received: u64,
    /// PUBACKs written to the broker's socket.
    pub pubacks_written: u64,
    /// Acknowledgements not sent because the connection that received the message had ended.
    pub acks_stale: u64,
    /// Messages dropped before reaching a batch because the broker sends them again (after a
    /// nack, a reconnect, or while closing).
    pub redeliveries_skipped: u64,
}

#[derive(Debug, Default)]
struct Shared {
    /// CONNACKs so far, which also numbers the connections.
    connections: AtomicU64,
    received: AtomicU64,
    pubacks_written: AtomicU64,
    acks_stale: AtomicU64,
    redeliveries_skipped: AtomicU64,
    /// Messages of connections below this one were in a session that has since resumed, so the
    /// broker resends them.
    resumed_floor: AtomicU64,
}

impl Shared {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The compiled configuration.
#[derive(Debug)]
struct Settings {
    host: String,
    port: u16,
    client_id: String,
    /// The user name, and the password if there is one.
    credentials: Option<(String, Option<Secret>)>,
    filters: Vec<String>,
    keep_alive: Duration,
    inflight_max: u16,
    packet_bytes_max: usize,
    mapping: Mapping,
}

/// How a PUBLISH becomes a draft event.
#[derive(Debug)]
struct Mapping {
    source: String,
    ty: String,
    pattern: Option<Pattern>,
    key: Option<String>,
    payload: PayloadFormat,
    id_field: Option<String>,
}

impl Mapping {
    /// The draft event for one message. `id` is used unless `id_field` supplies one; `time` is
    /// when the batch was read.
    fn draft(&self, publish: &Publish, id: String, time: String) -> Value {
        let mut event = Map::new();
        let (data_key, data, content_type, payload_error) = self.data(&publish.payload);
        let (id, id_error) = self.id(&publish.topic, data.as_ref(), id);
        event.insert("specversion".into(), "1.0".into());
        event.insert("id".into(), Value::String(id));
        event.insert("source".into(), Value::String(self.source.clone()));
        event.insert("type".into(), Value::String(self.ty.clone()));
        event.insert("subject".into(), Value::String(publish.topic.clone()));
        event.insert("time".into(), Value::String(time));
        event.insert("datacontenttype".into(), content_type.into());
        if let Some(data) = data {
            event.insert(data_key.into(), data);
        }
        if let Some(error) = payload_error.or(id_error) {
            event.insert("payloaderror".into(), Value::String(error));
        }
        self.topic_levels(&publish.topic, &mut event);
        if publish.dup {
            event.insert("mqttdup".into(), "true".into());
        }
        if publish.retain {
            event.insert("mqttretained".into(), "true".into());
        }
        Value::Object(event)
    }

    /// (`data` or `data_base64`, the value, the content type, a payload error).
    fn data(&self, payload: &[u8]) -> (&'static str, Option<Value>, &'static str, Option<String>) {
        let raw = |error: Option<String>| match std::str::from_utf8(payload) {
            Ok(text) => ("data", Some(Value::String(text.into())), TEXT_TYPE, error),
            Err(e) => (
                "data_base64",
                Some(Value::String(
                    base64::engine::general_purpose::STANDARD.encode(payload),
                )),
                BINARY_TYPE,
                error.or_else(|| Some(format!("payload is not UTF-8 text: {e}"))),
            ),
        };
        match self.payload {
            PayloadFormat::Json => match serde_json::from_slice::<Value>(payload) {
                Ok(value) => ("data", Some(value), JSON_TYPE, None),
                Err(e) => raw(Some(format!("payload is not JSON: {e}"))),
            },
            PayloadFormat::Text => raw(None),
            PayloadFormat::Binary => (
                "data_base64",
                Some(Value::String(
                    base64::engine::general_purpose::STANDARD.encode(payload),
                )),
                BINARY_TYPE,
                None,
            ),
        }
    }

    /// The event id and, when `id_field` is configured but unusable, why.
    fn id(&self, topic: &str, data: Option<&Value>, fallback: String) -> (String, Option<String>) {
        let Some(field) = &self.id_field else {
            return (fallback, None);
        };
        let found = match data.and_then(|d| d.get(field)) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        };
        match found {
            Some(value) => (format!("{topic}#{value}"), None),
            None => (
                fallback,
                Some(format!(
                    "id_field `{field}` is missing, empty, or not a string or integer"
                )),
            ),
        }
    }

    fn topic_levels(&self, topic: &str, event: &mut Map<String, Value>) {
        let Some(pattern) = &self.pattern else {
            return;
        };
        let Some(captures) = pattern.captures(topic) else {
            event.insert(
                "topicerror".into(),
                Value::String("topic does not match event.pattern".into()),
            );
            return;
        };
        for (name, value) in &captures {
            event.insert((*name).into(), Value::String((*value).into()));
        }
        let key = self.key.as_deref();
        let key_value = captures
            .iter()
            .find(|(name, _)| key.is_none_or(|k| k == *name))
            .map(|(_, value)| *value);
        if let Some(value) = key_value {
            event.insert("partitionkey".into(), Value::String(value.into()));
        }
    }
}

/// The MQTT source. Dropping it aborts its connection without a DISCONNECT, as a crash would:
/// whatever the broker has not received a PUBACK for is redelivered to the next start.
/// [`Mqtt::close`] ends it cleanly instead.
pub struct Mqtt {
    settings: Arc<Settings>,
    shared: Arc<Shared>,
    link: Option<Link>,
    /// Messages of connections below this one are dropped: the broker resends them (set by a
    /// nack, which resumes the session).
    nacked_floor: u64,
    /// A failure the task reported after some messages; returned by the next `next_batch`.
    failure: Option<SourceError>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("client_id", &self.settings.client_id)
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("open", &self.link.is_some())
            .finish_non_exhaustive()
    }
}

/// The running connection: the background task and its channels.
struct Link {
    messages: mpsc::Receiver<Item>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping the event loop closes the socket without a DISCONNECT: the session keeps
        // every message that was not PUBACKed.
        self.task.abort();
    }
}

/// What the background task passes to `next_batch`.
enum Item {
    Message { conn: u64, publish: Publish },
    Failed(SourceError),
}

/// What `ack`, `nack` and `close` ask of the background task.
enum Command {
    Ack(Vec<Held>),
    Nack { conn: u64 },
    Close { done: oneshot::Sender<()> },
}

/// One message of a batch: the connection it came on, and the packet id to PUBACK (`None` for
/// QoS 0, which has no acknowledgement).
#[derive(Debug, Clone, Copy)]
struct Held {
    conn: u64,
    pkid: Option<u16>,
}

/// The ack token of a batch.
struct Token(Vec<Held>);

impl Mqtt {
    /// Validates the configuration and resolves the password. Connects only in `open`.
    ///
    /// # Errors
    /// [`BuildError`] naming the first invalid field, or `password` when its reference does not
    /// resolve.
    pub fn new(config: MqttConfig) -> Result<Mqtt, BuildError> {
        if let Some((field, message)) = config.validate().into_iter().next() {
            return Err(BuildError { field, message });
        }
        let password = match &config.password {
            // The message names the reference, never a value (see `SecretError`).
            Some(reference) => Some(reference.resolve().map_err(|e| BuildError {
                field: "password".into(),
                message: e.to_string(),
            })?),
            None => None,
        };
        let credentials = config.username.clone().map(|user| (user, password));
        let pattern = config
            .event
            .pattern
            .as_deref()
            .map(Pattern::parse)
            .transpose()
            .map_err(|message| BuildError {
                field: "event.pattern".into(),
                message,
            })?;
        let source = config
            .event
            .source
            .clone()
            .unwrap_or_else(|| format!("mqtt://{}:{}", config.host, config.port));
        let mapping = Mapping {
            source,
            ty: config.event.ty,
            pattern,
            key: config.event.key,
            payload: config.payload,
            id_field: config.id_field,
        };
        let settings = Settings {
            host: config.host,
            port: config.port,
            client_id: config.client_id,
            credentials,
            filters: config.topics,
            keep_alive: Duration::from_secs(config.keep_alive_s),
            inflight_max: config.inflight_max,
            packet_bytes_max: config.packet_bytes_max,
            mapping,
        };
        Ok(Mqtt {
            settings: Arc::new(settings),
            shared: Arc::new(Shared::default()),
            link: None,
            nacked_floor: 0,
            failure: None,
        })
    }

    /// The source's counters.
    #[must_use]
    pub fn stats(&self) -> MqttStats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MqttStats {
            connections: get(&s.connections),
            received: get(&s.received),
            pubacks_written: get(&s.pubacks_written),
            acks_stale: get(&s.acks_stale),
            redeliveries_skipped: get(&s.redeliveries_skipped),
        }
    }

    /// Ends the source cleanly: writes the PUBACKs already acked, sends a DISCONNECT (the
    /// session stays on the broker) and waits until the broker closes the connection, which
    /// proves it handled those PUBACKs; all within [`CLOSE_TIMEOUT_MS`]. Messages received and
    /// not acked stay in the session and are redelivered to the next start.
    pub async fn close(mut self) {
        let Some(link) = self.link.take() else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if link.commands.send(Command::Close { done }).await.is_ok() {
            // A timeout or an ended task both leave only the abort below to do.
            let _ = tokio::time::timeout(Duration::from_millis(CLOSE_TIMEOUT_MS), wait).await;
        }
        drop(link);
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            .set_keep_alive(s.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(s.inflight_max)
            .set_max_packet_size(s.packet_bytes_max, s.packet_bytes_max);
        if let Some((user, password)) = &s.credentials {
            // rumqttc leaves an empty password out of CONNECT, which is how a user name
            // without a password is sent.
            let password = password.as_ref().map_or("", Secret::expose);
            options.set_credentials(user.clone(), password.to_string());
        }
        options
    }
}

impl Source for Mqtt {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    /// Connects, subscribes, and returns once the broker acknowledged the subscription. MQTT
    /// has no cursor: the broker's session is the position, so `cursor` is ignored.
    async fn open(&mut self, _cursor: Option<String>) -> Result<(), SourceError> {
        self.link = None;
        self.failure = None;
        let capacity = usize::from(self.settings.inflight_max);
        let (client, eventloop) = AsyncClient::new(self.options(), capacity + REQUESTS_SLACK);
        let (messages_tx, messages) = mpsc::channel(capacity);
        let (commands, commands_rx) = mpsc::channel(COMMANDS_CAPACITY);
        let (opened_tx, opened) = oneshot::channel();
        let task = Task {
            eventloop,
            client,
            filters: self.settings.filters.clone(),
            packet_bytes_max: self.settings.packet_bytes_max,
            inflight_max: capacity,
            messages: messages_tx,
            commands: commands_rx,
            shared: Arc::clone(&self.shared),
            conn: 0,
            held: 0,
            outbox: None,
            acks: VecDeque::new(),
            acks_unwritten: 0,
            pubacks_buffered: 0,
            mode: Mode::Running,
            retry_at: None,
            backoff_ms: RECONNECT_BACKOFF_MS_MIN,
            opened: Some(opened_tx),
            subscribed: false,
            fatal: None,
        };
        let link = Link {
            messages,
            commands,
            task: tokio::spawn(task.run()),
        };
        let outcome = tokio::time::timeout(Duration::from_millis(OPEN_TIMEOUT_MS), opened).await;
        match outcome {
            Ok(Ok(Ok(()))) => {
                self.link = Some(link);
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(SourceError::transient(
                "the MQTT connection task ended while connecting",
            )),
            Err(_) => Err(SourceError::transient(format!(
                "no CONNACK and SUBACK from {}:{} within {OPEN_TIMEOUT_MS} ms",
                self.settings.host, self.settings.port
            ))),
        }
    }

    async fn next_batch(&mut self, records_max: usize) -> Result<Option<SourceBatch>, SourceError> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let Some(link) = self.link.as_mut() else {
            return Err(SourceError::Fatal {
                message: "next_batch before a successful open".into(),
            });
        };
        let mut taken: Vec<(u64, Publish)> = Vec::new();
        // The only await: a channel receive, which is cancel-safe. Once a message is taken,
        // nothing below awaits, so a dropped call loses nothing.
        while taken.is_empty() {
            match link.messages.recv().await {
                None => {
                    return Err(SourceError::Fatal {
                        message: "the MQTT connection has stopped".into(),
                    });
                }
                Some(Item::Failed(e)) => return Err(e),
                Some(Item::Message { conn, publish }) => {
                    if redelivered(conn, self.nacked_floor, &self.shared) {
                        Shared::add(&self.shared.redeliveries_skipped, 1);
                    } else {
                        taken.push((conn, publish));
                    }
                }
            }
        }
        while taken.len() < records_max.max(1) {
            match link.messages.try_recv() {
                Ok(Item::Message { conn, publish }) => {
                    if redelivered(conn, self.nacked_floor, &self.shared) {
                        Shared::add(&self.shared.redeliveries_skipped, 1);
                    } else {
                        taken.push((conn, publish));
                    }
                }
                Ok(Item::Failed(e)) => {
                    self.failure = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mapping = &self.settings.mapping;
        let records = taken
            .iter()
            .map(|(_, p)| mapping.draft(p, uuid::Uuid::now_v7().to_string(), time.clone()))
            .collect();
        let held = taken
            .iter()
            .map(|(conn, p)| Held {
                conn: *conn,
                pkid: (p.qos != QoS::AtMostOnce).then_some(p.pkid),
            })
            .collect();
        Ok(Some(SourceBatch {
            records,
            rejected: Vec::new(),
            cursor: None,
            token: Some(Box::new(Token(held))),
        }))
    }

    /// Queues the batch's PUBACKs, in arrival order, for the background task to write. Returns
    /// before they are on the wire: a crash in between makes the broker redeliver them.
    async fn ack(
        &mut self,
        token: Option<AckToken>,
        _outcomes: Vec<RecordOutcome>,
    ) -> Result<(), SourceError> {
        let Some(held) = take_token(token)? else {
            return Ok(());
        };
        let Some(link) = &self.link else {
            return Err(SourceError::transient(
                "ack after the MQTT connection closed; the broker redelivers the batch",
            ));
        };
        link.commands
            .send(Command::Ack(held))
            .await
            .map_err(|_| SourceError::transient("the MQTT connection task has ended"))
    }

    /// Does not PUBACK the batch, and resumes the session so the broker resends it (and what
    /// followed it).
    async fn nack(&mut self, token: Option<AckToken>, error: &str) {
        let held = match take_token(token) {
            Ok(Some(held)) => held,
            Ok(None) | Err(_) => return,
        };
        let Some(conn) = held.iter().map(|h| h.conn).max() else {
            return;
        };
        tracing::warn!(client_id = %self.settings.client_id, error, messages = held.len(),
            "batch nacked; reconnecting so the broker redelivers it");
        // Whatever this connection delivered after the batch is resent too, so it must not
        // reach a batch now.
        self.nacked_floor = self.nacked_floor.max(conn + 1);
        if let Some(link) = &self.link {
            let _ = link.commands.send(Command::Nack { conn }).await;
        }
    }
}

/// Whether a message of connection `conn` is resent by the broker (its session resumed after a
/// nack or a reconnect), so it must not reach a batch now.
fn redelivered(conn: u64, nacked_floor: u64, shared: &Shared) -> bool {
    conn < nacked_floor.max(shared.resumed_floor.load(Ordering::Acquire))
}

fn take_token(token: Option<AckToken>) -> Result<Option<Vec<Held>>, SourceError> {
    let Some(token) = token else {
        return Ok(None);
    };
    match token.downcast::<Token>() {
        Ok(token) => Ok(Some(token.0)),
        Err(_) => Err(SourceError::Fatal {
            message: "ack token is not an MQTT token".into(),
        }),
    }
}

/// What the background task is doing about its connection.
enum Mode {
    Running,
    /// Writing the queued PUBACKs, then dropping the connection so the session resumes.
    DrainingToReconnect,
    /// Writing the queued PUBACKs, then a DISCONNECT.
    DrainingToClose(oneshot::Sender<()>),
    /// The DISCONNECT is queued; the task ends when the broker closes the connection, which it
    /// does after handling every packet before the DISCONNECT, the PUBACKs included. Ending
    /// when the DISCONNECT is merely written would let a quick restart take the session over
    /// while PUBACKs still sit unread in the broker's socket buffer, to be discarded with it.
    Closing(oneshot::Sender<()>),
}

/// What woke the background task.
enum Wake {
    Command(Option<Command>),
    Event(Result<Event, ConnectionError>),
    /// `next_batch`'s side of the channel is gone.
    Closed,
    Nothing,
}

/// Whether the task goes on.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The background task: owns the event loop, so it alone knows which connection is current,
/// and so alone decides whether a PUBACK may be written.
struct Task {
    eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    packet_bytes_max: usize,
    inflight_max: usize,
    messages: mpsc::Sender<Item>,
    commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    /// The current connection's number, 0 while disconnected. Connections are numbered from 1
    /// by [`Shared::connections`], across reopens, so a number is never reused.
    conn: u64,
    /// Messages of the current connection passed on and not yet acked by the runtime.
    held: usize,
    /// A message or failure waiting for room in the channel.
    outbox: Option<Item>,
    /// PUBACKs to hand to rumqttc, in arrival order.
    acks: VecDeque<u16>,
    /// PUBACKs handed to rumqttc and not yet written.
    acks_unwritten: usize,
    /// PUBACKs rumqttc reported in its write buffer, not yet flushed by `flush_pubacks`.
    pubacks_buffered: usize,
    mode: Mode,
    retry_at: Option<Instant>,
    backoff_ms: u64,
    /// Answers `open` once the first connection is subscribed, or failed.
    opened: Option<oneshot::Sender<Result<(), SourceError>>>,
    /// Whether this process has subscribed at least once (the configuration may have changed
    /// since the session was created, so the first connection always subscribes).
    subscribed: bool,
    /// A fatal error to report before ending.
    fatal: Option<SourceError>,
}

impl Task {
    async fn run(mut self) {
        loop {
            if let Some(e) = self.fatal.take() {
                self.report_fatal(e).await;
                return;
            }
            self.push_acks();
            if self.drain_step() == Flow::Stop {
                return;
            }
            let draining = !matches!(self.mode, Mode::Running);
            let can_poll = self.retry_at.is_none()
                && (draining || (self.outbox.is_none() && self.held < self.inflight_max));
            let retry_at = self.retry_at.unwrap_or_else(Instant::now);
            let wake = tokio::select! {
                biased;
                command = self.commands.recv() => Wake::Command(command),
                permit = self.messages.reserve(), if self.outbox.is_some() => match permit {
                    Err(_) => Wake::Closed,
                    Ok(permit) => {
                        if let Some(item) = self.outbox.take() {
                            permit.send(item);
                        }
                        Wake::Nothing
                    }
                },
                () = tokio::time::sleep_until(retry_at), if self.retry_at.is_some() => {
                    self.retry_at = None;
                    Wake::Nothing
                },
                // Dropping this poll when a command wins is safe for this use (rumqttc 0.25.1):
                // reads are buffered by its framed codec and its event queue, manual acks make
                // reading write nothing, and a request is in the write buffer (and its event
                // queued) before the only await that can pend, the flush, which
                // `flush_pubacks` then completes.
                event = self.eventloop.poll(), if can_poll => Wake::Event(event),
            };
            let mut flow = match wake {
                Wake::Command(None) | Wake::Closed => Flow::Stop,
                Wake::Command(Some(command)) => self.command(command),
                Wake::Event(event) => self.event(event),
                Wake::Nothing => Flow::Continue,
            };
            if flow == Flow::Continue && self.pubacks_buffered > 0 {
                flow = self.flush_pubacks().await;
            }
            if flow == Flow::Stop {
                return;
            }
        }
    }

    /// Puts buffered PUBACKs on the socket. rumqttc reports a PUBACK once it is in its write
    /// buffer; its own flush follows, but a poll dropped for a command can leave the bytes
    /// there until the next write. A PUBACK counts as written (and a drain may finish) only
    /// after this flush.
    async fn flush_pubacks(&mut self) -> Flow {
        let Some(network) = self.eventloop.network.as_mut() else {
            // The connection is gone, and its unwritten PUBACKs with it (see `disconnected`).
            self.pubacks_buffered = 0;
            return Flow::Continue;
        };
        let flushed =
            tokio::time::timeout(Duration::from_millis(FLUSH_TIMEOUT_MS), network.flush()).await;
        let error = match flushed {
            Ok(Ok(())) => {
                let n = std::mem::take(&mut self.pubacks_buffered);
                self.acks_unwritten = self.acks_unwritten.saturating_sub(n);
                Shared::add(&self.shared.pubacks_written, n as u64);
                return Flow::Continue;
            }
            Ok(Err(e)) => ConnectionError::MqttState(e),
            Err(_) => ConnectionError::FlushTimeout,
        };
        self.eventloop.clean();
        self.failed(&error)
    }

    /// Hands queued PUBACKs to rumqttc while its request channel has room.
    fn push_acks(&mut self) {
        while let Some(&pkid) = self.acks.front() {
            let mut stub = Publish::new("", QoS::AtLeastOnce, Vec::new());
            stub.pkid = pkid;
            if self.client.try_ack(&stub).is_err() {
                break;
            }
            self.acks.pop_front();
            self.acks_unwritten += 1;
        }
    }

    /// Finishes a drain once every queued PUBACK is written.
    fn drain_step(&mut self) -> Flow {
        if !self.acks.is_empty() || self.acks_unwritten > 0 {
            return Flow::Continue;
        }
        match std::mem::replace(&mut self.mode, Mode::Running) {
            Mode::Running => Flow::Continue,
            Mode::DrainingToReconnect => {
                // Closing the socket without a DISCONNECT; the next poll reconnects, and the
                // resumed session resends everything not acknowledged.
                self.eventloop.clean();
                self.disconnected();
                Flow::Continue
            }
            Mode::DrainingToClose(done) => {
                if self.conn == 0 || self.client.try_disconnect().is_err() {
                    let _ = done.send(());
                    return Flow::Stop;
                }
                self.mode = Mode::Closing(done);
                Flow::Continue
            }
            closing @ Mode::Closing(_) => {
                self.mode = closing;
                Flow::Continue
            }
        }
    }

    fn command(&mut self, command: Command) -> Flow {
        match command {
            Command::Ack(held) => {
                for h in held {
                    if h.conn != self.conn || self.conn == 0 {
                        Shared::add(&self.shared.acks_stale, u64::from(h.pkid.is_some()));
                        continue;
                    }
                    self.held = self.held.saturating_sub(1);
                    if let Some(pkid) = h.pkid {
                        self.acks.push_back(pkid);
                    }
                }
                Flow::Continue
            }
            Command::Nack { conn } => {
                if conn == self.conn && conn != 0 && matches!(self.mode, Mode::Running) {
                    self.mode = Mode::DrainingToReconnect;
                    self.skip_outbox();
                }
                Flow::Continue
            }
            Command::Close { done } => {
                if self.conn == 0 {
                    let _ = done.send(());
                    return Flow::Stop;
                }
                self.skip_outbox();
                self.mode = Mode::DrainingToClose(done);
                Flow::Continue
            }
        }
    }

    /// Drops a message waiting for the channel: the connection is about to end without
    /// acknowledging it, so the broker resends it.
    fn skip_outbox(&mut self) {
        if let Some(Item::Message { .. }) = self.outbox {
            self.outbox = None;
            Shared::add(&self.shared.redeliveries_skipped, 1);
        }
    }

    fn event(&mut self, event: Result<Event, ConnectionError>) -> Flow {
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                self.connected(connack.session_present)
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => self.publish(publish),
            Ok(Event::Incoming(Incoming::SubAck(suback))) => self.suback(&suback),
            Ok(Event::Outgoing(Outgoing::PubAck(_))) => {
                // In rumqttc's buffer; counted once `flush_pubacks` has it on the socket.
                self.pubacks_buffered += 1;
                Flow::Continue
            }
            Ok(_) => Flow::Continue,
            Err(e) => self.failed(&e),
        }
    }

    fn connected(&mut self, session_present: bool) -> Flow {
        self.conn = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.held = 0;
        self.backoff_ms = RECONNECT_BACKOFF_MS_MIN;
        if session_present {
            // The broker resends whatever earlier connections delivered and nobody acked.
            self.shared
                .resumed_floor
                .store(self.conn, Ordering::Release);
        }
        tracing::debug!(conn = self.conn, session_present, "MQTT connected");
        // A resumed session still has its subscriptions; subscribing again would make the
        // broker resend retained messages, so only a new session (or a new process, whose
        // configuration may have changed) subscribes.
        if self.subscribed && session_present {
            return Flow::Continue;
        }
        let filters = self
            .filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            self.fatal = Some(SourceError::Fatal {
                message: format!("could not queue the MQTT subscription: {e}"),
            });
        }
        Flow::Continue
    }

    fn suback(&mut self, suback: &SubAck) -> Flow {
        let refused: Vec<&str> = suback
            .return_codes
            .iter()
            .zip(&self.filters)
            .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
            .map(|(_, filter)| filter.as_str())
            .collect();
        if !refused.is_empty() {
            let error = SourceError::Fatal {
                message: format!(
                    "the broker refused the subscription to {}",
                    refused.join(", ")
                ),
            };
            match self.opened.take() {
                Some(opened) => {
                    let _ = opened.send(Err(error));
                    return Flow::Stop;
                }
                None => self.fatal = Some(error),
            }
            return Flow::Continue;
        }
        self.subscribed = true;
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(Ok(()));
        }
        Flow::Continue
    }

    fn publish(&mut self, publish: Publish) -> Flow {
        if !matches!(self.mode, Mode::Running) {
            // Not acknowledged, and the connection is about to end: the broker resends it.
            Shared::add(&self.shared.redeliveries_skipped, 1);
            return Flow::Continue;
        }
        self.held += 1;
        let item = Item::Message {
            conn: self.conn,
            publish,
        };
        match self.messages.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => self.outbox = Some(item),
            Err(mpsc::error::TrySendError::Closed(_)) => return Flow::Stop,
        }
        Shared::add(&self.shared.received, 1);
        Flow::Continue
    }

    fn failed(&mut self, e: &ConnectionError) -> Flow {
        let error = classify(e, self.packet_bytes_max);
        if let Some(opened) = self.opened.take() {
            let _ = opened.send(Err(error));
            return Flow::Stop;
        }
        self.disconnected();
        match std::mem::replace(&mut self.mode, Mode::Running) {
            Mode::DrainingToClose(done) | Mode::Closing(done) => {
                tracing::debug!(error = %e, "MQTT connection closed");
                let _ = done.send(());
                return Flow::Stop;
            }
            Mode::Running | Mode::DrainingToReconnect => {}
        }
        let SourceError::Transient { message, .. } = error else {
            self.fatal = Some(error);
            return Flow::Continue;
        };
        let wait = self.backoff_ms;
        tracing::warn!(error = %e, wait_ms = wait, "MQTT connection failed; reconnecting");
        self.backoff_ms = (self.backoff_ms * 2).min(RECONNECT_BACKOFF_MS_MAX);
        self.retry_at = Some(Instant::now() + Duration::from_millis(wait));
        // A report, not a handover: when the channel is full the runtime is busy reading, and
        // the next failure reports again.
        let _ = self.messages.try_send(Item::Failed(SourceError::Transient {
            message,
            retry_after_ms: Some(wait),
        }));
        Flow::Continue
    }

    /// Forgets the ended connection's state. rumqttc dropped the PUBACKs it had not written
    /// (its `clean` discards them), so the ones queued here go too: their packet ids meant
    /// something only on that connection. rumqttc's `clean` keeps the packets it had read ahead,
    /// and would return them after the next CONNACK as if they came on the new connection; they
    /// go too, since the broker resends them.
    fn disconnected(&mut self) {
        let read_ahead = self
            .eventloop
            .state
            .events
            .drain(..)
            .filter(|e| matches!(e, Event::Incoming(Incoming::Publish(_))))
            .count();
        Shared::add(&self.shared.redeliveries_skipped, read_ahead as u64);
        self.conn = 0;
        self.held = 0;
        self.acks.clear();
        self.acks_unwritten = 0;
        self.pubacks_buffered = 0;
    }

    async fn report_fatal(&mut self, error: SourceError) {
        tracing::error!(error = %error, "MQTT source stopped");
        if let Some(item) = self.outbox.take()
            && self.messages.send(item).await.is_err()
        {
            return;
        }
        let _ = self.messages.send(Item::Failed(error)).await;
    }
}

/// Whether retrying can help.
fn classify(e: &ConnectionError, packet_bytes_max: usize) -> SourceError {
    use rumqttc::mqttbytes::Error as Bytes;
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId
            | ConnectReturnCode::RefusedProtocolVersion),
        ) => SourceError::Fatal {
            message: format!("the MQTT broker refused the connection: {code:?}"),
        },
        ConnectionError::MqttState(StateError::Deserialization(
            Bytes::PayloadSizeLimitExceeded(size),
        )) => SourceError::Fatal {
            message: format!(
                "a {size}-byte MQTT packet exceeds packet_bytes_max ({packet_bytes_max}); the broker resends it on every reconnect, so raise packet_bytes_max or remove the message"
            ),
        },
        other => SourceError::transient(format!("MQTT connection failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(value: Value) -> MqttConfig {
        serde_json::from_value(value).expect("config deserializes")
    }

    fn base() -> Value {
        json!({
            "client_id": "gearbox-test",
            "topics": ["plant/sensors/+/+"],
            "event": {"type": "reading", "pattern": "plant/sensors/{sensor}/{metric}"},
        })
    }

    fn with(mut value: Value, path: &[&str], new: Value) -> Value {
        let mut at = &mut value;
        for p in &path[..path.len() - 1] {
            at = at.get_mut(*p).expect("path exists");
        }
        at[path[path.len() - 1]] = new;
        value
    }

    /// Validates `value` and compares the reported paths.
    fn check_paths(value: Value, expect: &[&str]) {
        let errors = config(value).validate();
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, expect, "{errors:?}");
    }

    #[test]
    fn defaults_are_documented_values() {
        let c = config(base());
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 1883);
        assert_eq!(c.keep_alive_s, 30);
        assert_eq!(c.inflight_max, 100);
        assert_eq!(c.packet_bytes_max, 1024 * 1024);
        assert_eq!(c.payload, PayloadFormat::Json);
        assert!(c.validate().is_empty());
    }

    #[test]
    fn validation_names_paths() {
        check_paths(with(base(), &["topics"], json!([])), &["topics"]);
        let many: Vec<String> = (0..=TOPICS_MAX).map(|i| format!("t/{i}")).collect();
        check_paths(with(base(), &["topics"], json!(many)), &["topics"]);
        check_paths(
            with(base(), &["topics"], json!(["ok/#", "a/#/b", "ok/#", "x+"])),
            &["topics[1]", "topics[2]", "topics[3]"],
        );
        check_paths(with(base(), &["client_id"], json!("")), &["client_id"]);
        check_paths(with(base(), &["keep_alive_s"], json!(0)), &["keep_alive_s"]);
        check_paths(with(base(), &["inflight_max"], json!(0)), &["inflight_max"]);
        check_paths(
            with(base(), &["inflight_max"], json!(INFLIGHT_MAX_BOUND + 1)),
            &["inflight_max"],
        );
        check_paths(
            with(base(), &["password"], json!("${env:X}")),
            &["password"],
        );
        check_paths(
            with(
                with(base(), &["payload"], json!("text")),
                &["id_field"],
                json!("id"),
            ),
            &["id_field"],
        );
        check_paths(with(base(), &["event", "type"], json!("")), &["event.type"]);
        for bad in [
            "a/{Sensor}",
            "a/{}",
            "a/{sensor_id}",
            "a/{abcdefghijklmnopqrstu}",
            "a/{id}",
            "a/{x}/{x}",
            "a/x{y}",
            "a/#/b",
            "",
        ] {
            check_paths(
                with(base(), &["event", "pattern"], json!(bad)),
                &["event.pattern"],
            );
        }
        check_paths(
            with(base(), &["event", "key"], json!("nope")),
            &["event.key"],
        );
        let mut no_pattern = base();
        no_pattern["event"] = json!({"type": "t", "key": "sensor"});
        check_paths(no_pattern, &["event.key"]);
    }

    #[test]
    fn unknown_fields_and_literal_passwords_are_refused() {
        let unknown = with(base(), &["qos"], json!(2));
        let e = serde_json::from_value::<MqttConfig>(unknown).unwrap_err();
        assert!(e.to_string().contains("qos"), "{e}");
        let literal = with(
            with(base(), &["username"], json!("u")),
            &["password"],
            json!("hunter2"),
        );
        let e = serde_json::from_value::<MqttConfig>(literal).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn patterns_capture_levels() {
        let check = |pattern: &str, topic: &str, expect: Option<Vec<(&str, &str)>>| {
            let p = Pattern::parse(pattern).unwrap();
            assert_eq!(p.captures(topic), expect, "{pattern} on {topic}");
        };
        check(
            "s/{sensor}/{metric}",
            "s/a-1/temp",
            Some(vec![("sensor", "a-1"), ("metric", "temp")]),
        );
        check("s/{sensor}/{metric}", "s/a-1", None);
        check("s/{sensor}/{metric}", "s/a-1/temp/x", None);
        check("s/{sensor}/{metric}", "t/a-1/temp", None);
        check("s/+/{metric}", "s/a/b", Some(vec![("metric", "b")]));
        check("s/{sensor}/#", "s/a/b/c", Some(vec![("sensor", "a")]));
        check("s/{sensor}/#", "s/a", Some(vec![("sensor", "a")]));
        check("s/{sensor}", "s/", Some(vec![("sensor", "")]));
    }

    fn mapping(payload: PayloadFormat, id_field: Option<&str>, key: Option<&str>) -> Mapping {
        Mapping {
            source: "mqtt://b:1883".into(),
            ty: "reading".into(),
            pattern: Some(Pattern::parse("s/{sensor}/{metric}").unwrap()),
            key: key.map(str::to_string),
            payload,
            id_field: id_field.map(str::to_string),
        }
    }

    fn draft(m: &Mapping, topic: &str, payload: &[u8]) -> Value {
        let publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        m.draft(&publish, "uuid-1".into(), "2026-01-01T00:00:00.000Z".into())
    }

    #[test]
    fn json_payloads_become_data_and_levels_become_extensions() {
        let m = mapping(PayloadFormat::Json, None, None);
        let event = draft(&m, "s/s-17/temp", br#"{"c":21.5}"#);
        assert_eq!(
            event,
            json!({
                "specversion": "1.0", "id": "uuid-1", "source": "mqtt://b:1883",
                "type": "reading", "subject": "s/s-17/temp",
                "time": "2026-01-01T00:00:00.000Z", "datacontenttype": "application/json",
                "data": {"c": 21.5}, "sensor": "s-17", "metric": "temp", "partitionkey": "s-17",
            })
        );
        let keyed = mapping(PayloadFormat::Json, None, Some("metric"));
        assert_eq!(draft(&keyed, "s/s-17/temp", b"1")["partitionkey"], "temp");
        let other = draft(&m, "elsewhere", b"1");
        assert!(other.get("partitionkey").is_none());
        assert!(other["topicerror"].is_string());
    }

    #[test]
    fn payloads_that_do_not_fit_keep_their_bytes_and_say_why() {
        let m = mapping(PayloadFormat::Json, None, None);
        let text = draft(&m, "s/a/b", b"21.5 C");
        assert_eq!(text["data"], "21.5 C");
        assert_eq!(text["datacontenttype"], TEXT_TYPE);
        assert!(text["payloaderror"].as_str().unwrap().contains("not JSON"));
        let bytes = draft(&m, "s/a/b", &[0xff, 0x00]);
        assert_eq!(bytes["data_base64"], "/wA=");
        assert_eq!(bytes["datacontenttype"], BINARY_TYPE);
        assert!(bytes["payloaderror"].is_string());

        let t = mapping(PayloadFormat::Text, None, None);
        let ok = draft(&t, "s/a/b", b"hello");
        assert_eq!(ok["data"], "hello");
        assert!(ok.get("payloaderror").is_none());
        assert!(draft(&t, "s/a/b", &[0xc3]).get("payloaderror").is_some());

        let b = mapping(PayloadFormat::Binary, None, None);
        let bin = draft(&b, "s/a/b", b"{}");
        assert_eq!(bin["data_base64"], "e30=");
        assert!(bin.get("payloaderror").is_none());
    }

    #[test]
    fn id_field_gives_deterministic_ids_per_topic() {
        let m = mapping(PayloadFormat::Json, Some("msg"), None);
        assert_eq!(draft(&m, "s/a/b", br#"{"msg":"m-1"}"#)["id"], "s/a/b#m-1");
        assert_eq!(draft(&m, "s/a/b", br#"{"msg":42}"#)["id"], "s/a/b#42");
        assert_eq!(draft(&m, "s/c/b", br#"{"msg":42}"#)["id"], "s/c/b#42");
        let missing = draft(&m, "s/a/b", br#"{"other":1}"#);
        assert_eq!(missing["id"], "uuid-1");
        assert!(missing["payloaderror"].as_str().unwrap().contains("msg"));
        assert_eq!(draft(&m, "s/a/b", br#"{"msg":1.5}"#)["id"], "uuid-1");
    }

    #[test]
    fn broker_flags_become_extensions() {
        let m = mapping(PayloadFormat::Json, None, None);
        let mut publish = Publish::new("s/a/b", QoS::AtLeastOnce, b"1".to_vec());
        publish.dup = true;
        publish.retain = true;
        let event = m.draft(&publish, "i".into(), "t".into());
        assert_eq!(event["mqttdup"], "true");
        assert_eq!(event["mqttretained"], "true");
    }

    #[test]
    fn new_names_the_first_invalid_field_and_unresolved_passwords() {
        let c = config(with(
            with(base(), &["topics"], json!([])),
            &["event", "key"],
            json!("x"),
        ));
        let e = Mqtt::new(c).unwrap_err();
        assert_eq!(e.field, "topics");
        let unset = with(
            with(base(), &["username"], json!("u")),
            &["password"],
            json!("${env:GEARBOX_TEST_SURELY_UNSET_MQTT}"),
        );
        let e = Mqtt::new(config(unset)).unwrap_err();
        assert_eq!(e.field, "password");
        assert!(e.message.contains("GEARBOX_TEST_SURELY_UNSET_MQTT"), "{e}");
    }
}
