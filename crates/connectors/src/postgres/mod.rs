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

/// A connection string, or a secret reference (`${env:PG_URL}`) resolved to one.
///
/// # Errors
/// The reference does not resolve, or the string does not parse (the message never holds it).
pub fn connection_config(url: &str) -> Result<tokio_postgres::Config, String> {
    if gearbox_connect::secret::is_reference(url) {
        let resolved = gearbox_connect::secret::resolve(url).map_err(|e| e.to_string())?;
        resolved
            .expose()
            .parse()
            .map_err(|_| format!("{url} does not resolve to a Postgres connection string"))
    } else {
        url.parse().map_err(|e| format!("{e}"))
    }
}
