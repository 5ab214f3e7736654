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

pub mod errors;
pub mod group;
