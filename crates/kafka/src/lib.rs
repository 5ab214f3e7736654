//! Kafka listener.
