//! The Kafka wire protocol over the embedded broker: existing Kafka clients produce, fetch and
//! use consumer groups against `gearbox serve --kafka` unchanged.
//!
//! The codecs are the `kafka-protocol` crate's; this crate is the broker side. Kafka topics are
//! Gearbox topics; the on-disk unit is Kafka's RecordBatch v2, so Produce stores a producer's
//! batch as it came (after checking it) and Fetch serves stored batches as they are. A
//! consumer group's offsets for a topic are the cursor subscription `topic/group`.
//!
//! Module map: [`server`] (listener, framing, dispatch), [`versions`] (what is advertised),
//! [`produce`], [`fetch`], [`metadata`] (Metadata, FindCoordinator, ListOffsets), [`admin`]
//! (CreateTopics, DeleteTopics, DescribeConfigs), [`producers`] (producer ids and sequences),
//! [`group`] (the classic group coordinator and offsets), [`errors`].
//!
//! Invariants:
//! - A Produce answer with error 0 means the batch is durable (every `acks` value waits for
//!   the fsync; there are no replicas to wait for).
//! - A batch is checked whole (framing, CRC, records, sizes, sequence) before anything is
//!   written; a refused batch writes nothing and gets a Kafka error code, and the connection
//!   stays open.
//! - Responses on one connection are sent in request order (requests are handled one at a
//!   time per connection, as Kafka does).

pub mod admin;
pub mod compression;
pub mod errors;
pub mod fetch;
pub mod group;
pub mod metadata;
pub mod produce;
pub mod producers;
pub mod server;
pub mod stats;
pub mod versions;

use gearbox_core::broker::Broker;
use group::{GroupConfig, Groups};
use producers::Producers;
use std::sync::Arc;

/// Largest request frame accepted; a larger size prefix closes the connection (Kafka's
/// `socket.request.max.bytes`). A full topic batch fits.
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 48 << 20;
/// Most client connections at once; more are closed as they arrive.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// The node id this broker answers with.
pub const NODE_ID: i32 = 0;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// The host clients are told to connect to (Metadata, FindCoordinator).
    pub advertised_host: String,
    /// The port clients are told to connect to.
    pub advertised_port: u16,
    /// Create a topic that Metadata asks for and does not exist (Kafka's
    /// `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, and of CreateTopics with `num_partitions` -1.
    pub default_partitions: u32,
    /// See [`REQUEST_BYTES_MAX_DEFAULT`].
    pub request_bytes_max: usize,
    /// See [`CONNECTIONS_MAX_DEFAULT`].
    pub connections_max: usize,
    /// The group coordinator's settings.
    pub group: GroupConfig,
}

impl KafkaConfig {
    /// Defaults, advertising `host:port`.
    #[must_use]
    pub fn new(advertised_host: impl Into<String>, advertised_port: u16) -> KafkaConfig {
        KafkaConfig {
            advertised_host: advertised_host.into(),
            advertised_port,
            auto_create_topics: true,
            default_partitions: 1,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            group: GroupConfig::default(),
        }
    }
}

/// The listener's shared state.
#[derive(Debug)]
pub struct Kafka {
    broker: Arc<Broker>,
    config: KafkaConfig,
    groups: Arc<Groups>,
    producers: Producers,
    cluster_id: String,
    stats: stats::Stats,
}

impl Kafka {
    /// The listener's state over `broker`.
    ///
    /// # Errors
    /// The state store could not be read or written (the cluster id is kept there).
    pub fn new(
        broker: Arc<Broker>,
        config: KafkaConfig,
    ) -> Result<Arc<Kafka>, gearbox_core::broker::BrokerError> {
        let cluster_id = match broker.checkpoint(CLUSTER_ID_CHECKPOINT)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                broker.put_checkpoint(CLUSTER_ID_CHECKPOINT, id.as_bytes())?;
                id
            }
        };
        Ok(Arc::new(Kafka {
            groups: Groups::new(broker.clone(), config.group.clone()),
            producers: Producers::new(broker.clone()),
            broker,
            config,
            cluster_id,
            stats: stats::Stats::default(),
        }))
    }

    /// The broker underneath.
    #[must_use]
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The listener's counters.
    #[must_use]
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    /// The cluster id Metadata reports (made once per data directory).
    #[must_use]
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }
}

const CLUSTER_ID_CHECKPOINT: &str = "kafka/cluster-id";
