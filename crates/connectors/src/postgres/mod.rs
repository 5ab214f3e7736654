//! Postgres gear: the transactional-outbox relay and logical-replication CDC (sources, over a
//! walsender connection speaking `pgoutput`), and the effectively-once upsert sink (over
//! `tokio-postgres`).
//!
//! | module | what it is |
//! |---|---|
//! | `wire` | The walsender client: startup with `replication=database`, authentication, replication commands, the CopyBoth stream and standby status updates. |
//! | `pgoutput` | The decoder of the `pgoutput` logical decoding messages (protocol version 1). |
//! | `cdc` | The CDC source: a publication and a slot, an optional consistent snapshot, Debezium-shaped change events. |
//! | `outbox` | The outbox relay: the seed's `outbox_events` table read through its own slot, in commit order. |
//! | `upsert` | The upsert sink: rows from events by a business key, the checkpoint in the same transaction. |

pub mod cdc;
pub mod outbox;
pub mod pgoutput;
pub mod upsert;
pub mod wire;
