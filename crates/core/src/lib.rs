//! Gearbox's domain core, above the embedded log: topics as users see them, CloudEvents stored
//! as Kafka records, Kafka-compatible placement, producer deduplication, and subscriptions in
//! queue and cursor mode with dead-letter topics.
//!
//! This crate knows nothing of HTTP or JSON DTOs (that is `gearbox-api`), and it never touches
//! segment files: it reaches storage only through `gearbox-log`'s types.

pub mod appenders;
pub mod broker;
pub mod dedup;
pub mod event;
pub mod lineage;
pub mod partitioner;
pub mod registry;
pub mod store;
pub mod subscription;
pub mod telemetry;
