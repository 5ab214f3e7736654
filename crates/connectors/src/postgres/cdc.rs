//! The Postgres CDC source: row changes of the tables in a publication, read through a logical
//! replication slot with the `pgoutput` plugin, as Debezium-shaped change events; optionally
//! preceded by a consistent snapshot of the rows that existed when the slot was created.
//!
//! # Delivery contract
//!
//! The replication slot is the authoritative position. Postgres keeps every change after the
//! slot's *confirmed* LSN and streams it again on the next `START_REPLICATION`; the confirmed LSN
//! advances only through a standby status update's `flushed` field, and this source writes a
//! new `flushed` only in [`Source::ack`] (and when idle, see below). It confirms the end LSN of
//! the last transaction **all** of whose events were in acknowledged batches: a batch may end in
//! the middle of a transaction, and then only the previous commit is confirmed, so after a crash
//! the whole transaction is streamed again. Hence:
//! - nothing acknowledged to Postgres is missing from the log (no loss);
//! - after a crash, a lost connection or a [`Source::nack`] (which drops the connection and
//!   restarts replication from the confirmed LSN), the changes after the confirmed LSN arrive
//!   again, with the **same ids**, so the log deduplicates them: the id of a change is
//!   `<commit LSN>/<n>`, the commit LSN of its transaction (carried by the transaction's Begin
//!   message, so known before the first change) and its position within the transaction. Both
//!   are properties of the WAL, identical on every replay.
//!
//! While the source has handed out nothing unacknowledged and is between transactions, it
//! confirms the position of the server's keepalives and of commits that produced no event (WAL
//! of tables outside the publication): everything before them was processed. Without that, the
//! slot would hold all WAL written by unrelated tables until the next change of ours.
//!
//! Status updates go out at least every `status_interval_ms` from a small task that holds the
//! socket's write half ([`super::wire::ReplicationConnection::status_keeper`]), also while the
//! runtime holds a batch and nothing reads the connection (the walsender reads replies even
//! while its own writes wait), so `wal_sender_timeout` never ends a healthy connection; and
//! whenever a keepalive asks for one, and after every `ack`. They carry the last confirmed LSN
//! only.
//!
//! The cursor returned with each batch (`lsn:<X/Y>` during streaming, `snapshot:...` during the
//! snapshot) is informative except for one bit it carries: whether the initial snapshot
//! completed (see below). Resuming always starts at the slot.
//!
//! # The initial snapshot
//!
//! With `snapshot: initial` and a newly created slot, `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`
//! returns the slot's consistent point and a snapshot that sees exactly the transactions that
//! committed before it. A second (ordinary) connection imports that snapshot
//! (`BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT`) and reads each table with a
//! scrollable cursor, one `FETCH` per batch, while the replication connection stays open and
//! idle (it must, for the snapshot to stay importable, and an idle walsender that has not started
//! streaming is not subject to `wal_sender_timeout`). Each row becomes an event with op `r` and the
//! id `<consistent LSN>/r/<schema>.<table>/<row number>`. Streaming then starts at the consistent
//! point, so every committed change is either in the snapshot or in the stream, never in both
//! and never in neither. A `nack` during the snapshot moves the cursor back to the last
//! acknowledged row.
//!
//! Whether the snapshot completed is recorded in the runtime's stored cursor (the runtime stores
//! a batch's cursor before it acknowledges the batch): snapshot batches carry `snapshot:...`, and
//! the batch that ends the snapshot (possibly empty) carries `lsn:<consistent point>`, as does
//! every streaming batch. At [`Source::open`]:
//!
//! | slot | stored cursor | `snapshot` | what happens |
//! |---|---|---|---|
//! | exists | `lsn:...` | any | stream from the slot |
//! | exists | none or `snapshot:...` | `initial` | the snapshot did not complete: drop the slot, create it again, redo the snapshot |
//! | exists | none or `snapshot:...` | `never` | stream from the slot |
//! | missing | none or `snapshot:...` | `initial` | create the slot, snapshot |
//! | missing | none | `never` | create the slot, stream |
//! | missing | `lsn:...` | any | the slot was lost (dropped by hand or by the lag guard): changes since are gone, so warn, create the slot, and snapshot (with `initial`) or stream (with `never`) |
//!
//! Why dropping the slot when a snapshot was interrupted is right: the exported snapshot died with
//! the old replication connection, and no other snapshot matches the old slot's consistent point,
//! so continuing the old snapshot (or streaming from the old slot) could miss rows committed
//! between the two. A fresh slot gives a fresh consistent point and snapshot; rows already
//! appended are sent again under new ids (the consistent LSN is part of a snapshot row's id, so
//! ids of two snapshots never collide): duplicates by content, never a loss. A crash between
//! creating the slot and storing the first cursor lands in the same row (a slot without a
//! cursor), with the same remedy.
//!
//! # Events
//!
//! `id` (above), `source` (default `/gearbox/postgres/<dbname>`),
//! `type: io.debezium.postgresql.datachangeevent`, `subject: <schema>.<table>`, `time` (commit
//! time), `datacontenttype: application/json`, and extensions `pgschema`, `pgtable`, `pgop`
//! (`c`, `u`, `d`, `t`, `r`) and `partitionkey`: the primary-key values (the text of a single key
//! column, a JSON array of the texts for several), so the changes of one row stay in one
//! partition, in order. A table without a primary key uses its replica-identity index columns; a
//! table with neither, and truncations, get no `partitionkey`. `data` is Debezium's envelope:
//! `before`, `after`, `op`, `ts_ms` (commit time), and `source` (`connector: postgresql`, `db`,
//! `schema`, `table`, `lsn` of the change, `txId`, `snapshot`, `ts_ms`).
//!
//! `before` is null for inserts, snapshot rows and truncations. For updates and deletes it is what
//! the old tuple gave: under the default replica identity, the key columns only, and for an update
//! only when the key changed (else null); under `REPLICA IDENTITY FULL`, the whole old row.
//! Values are converted by type ([`super::pgoutput::text_to_json`]: `numeric` as a string). A
//! TOASTed column that an update left unchanged is not sent by Postgres; `after` keeps its key
//! with the string `"__debezium_unavailable_value"`, as Debezium does, unless the old row under
//! `REPLICA IDENTITY FULL` carried the value, which is then used.
//!
//! # The lag guard
//!
//! A slot keeps all WAL after its confirmed LSN: a stalled pipeline fills the database's disk.
//! Every [`LAG_POLL_INTERVAL_MS`] the source reads `pg_current_wal_lsn() - confirmed_flush_lsn`
//! of its slot over an ordinary connection ([`CdcStats::lag_bytes`]). Past `lag_bytes_warn` it
//! logs a warning; past `lag_bytes_max` it applies `on_lag_max`: `warn` logs an error; `pause`
//! hands out what it holds, then stops reading the stream (status updates and lag polls
//! continue) until the lag falls below the limit. Pausing frees no WAL: the confirmed LSN does
//! not move while nothing is read, so the lag falls only when an operator raises the limit (or
//! drops the slot); what it buys is a pipeline that stops visibly (no fresh events, health
//! degrades) instead of one that silently races the disk. `drop_slot` drops the slot, which frees
//! the WAL and loses every change not yet confirmed, and fails the source with a fatal error that
//! says so.
//!
//! # Failures
//!
//! A lost connection or a server error that may pass makes `next_batch` answer
//! [`SourceError::Transient`]; the runtime retries `next_batch` (it does not call `open` again),
//! so the next call reconnects, restarting replication at the confirmed LSN (or, if the snapshot
//! was interrupted, starting over as in the table above). Bad credentials, a missing table, a
//! slot that does not exist while `create_slot` is false, or a slot used by another connection
//! for too long are fatal.
//!
//! Limits: [`super::wire::BACKEND_MESSAGE_BYTES_MAX`] per change message, [`TABLES_MAX`] tables.

use super::pgoutput::{self, ColumnValue, LogicalMessage, OldKind, Relation, Tuple};
use super::wire::{
    Lsn, PG_EPOCH_OFFSET_US, ReplMessage, ReplicationConnection, StatusKeeper, WireError,
    quote_ident,
};
use gearbox_connect::source::{AckToken, RecordOutcome, Source, SourceBatch, SourceError};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often the slot's lag is read.
pub const LAG_POLL_INTERVAL_MS: u64 = 2_000;
/// How long starting replication waits for a slot still held by this source's previous,
/// just-closed connection.
pub const SLOT_BUSY_WAIT_MS: u64 = 5_000;
/// How often it tries again meanwhile.
pub const SLOT_BUSY_POLL_MS: u64 = 50;
/// Default for `status_interval_ms`.
pub const STATUS_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Bounds for `status_interval_ms` (Postgres's default `wal_sender_timeout` is 60 s).
pub const STATUS_INTERVAL_MS_MIN: u64 = 100;
/// Upper bound for `status_interval_ms`.
pub const STATUS_INTERVAL_MS_MAX: u64 = 30_000;
/// Most tables one publication may give this source.
pub const TABLES_MAX: usize = 1_000;
/// Longest slot or publication name (Postgres's `NAMEDATALEN - 1`).
pub const NAME_BYTES_MAX: usize = 63;
/// How long dropping a slot waits for the walsender that held it to exit.
pub const SLOT_DROP_WAIT_MS: u64 = 5_000;
/// The `type` of every CDC event.
pub const EVENT_TYPE: &str = "io.debezium.postgresql.datachangeevent";
/// What stands for a TOASTed value that an update did not change.
pub const UNAVAILABLE_VALUE: &str = "__debezium_unavailable_value";

/// Whether the existing rows are read first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot the publication's tables when the slot is created.
    #[default]
    Initial,
    /// Changes only.
    Never,
}

/// What happens when the slot's lag passes `lag_bytes_max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLagMax {
    /// Log an error and carry on.
    #[default]
    Warn,
    /// Stop reading until the lag falls below the limit.
    Pause,
    /// Drop the slot (losing what it held) and fail the source.
    DropSlot,
}

/// The CDC source's configuration.
///
/// ```yaml
/// url: ${env:PG_URL}             # postgres://user:pass@host:5432/db (resolved before `new`)
/// slot: gearbox_orders           # the replication slot
/// publication: gearbox_orders    # used as is if it exists
/// tables: [public.orders, public.order_items]  # to create the publication
/// create_slot: true              # default
/// snapshot: initial              # initial (default) | never
/// source: /gearbox/postgres/shop # default /gearbox/postgres/<dbname>
/// lag_bytes_warn: 1073741824     # optional
/// lag_bytes_max: 10737418240     # optional
/// on_lag_max: warn               # warn (default) | pause | drop_slot
/// status_interval_ms: 10000      # default
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// The connection URL; the user needs the `REPLICATION` attribute.
    pub url: String,
    /// The replication slot's name.
    pub slot: String,
    /// The publication's name.
    pub publication: String,
    /// `schema.table` names for `CREATE PUBLICATION ... FOR TABLE` when it does not exist.
    #[serde(default)]
    pub tables: Vec<String>,
    /// Whether the slot may be created (else it must exist).
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Whether existing rows are read first.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// The CloudEvents `source`.
    #[serde(default)]
    pub source: Option<String>,
    /// Lag, in bytes, past which a warning is logged.
    #[serde(default)]
    pub lag_bytes_warn: Option<u64>,
    /// Lag, in bytes, past which `on_lag_max` applies.
    #[serde(default)]
    pub lag_bytes_max: Option<u64>,
    /// What happens past `lag_bytes_max`.
    #[serde(default)]
    pub on_lag_max: OnLagMax,
    /// Longest time between two standby status updates.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
}

fn default_true() -> bool {
    true
}
fn default_status_interval_ms() -> u64 {
    STATUS_INTERVAL_MS_DEFAULT
}

/// A configuration problem: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct CdcConfigError {
    /// The field's path (`tables[1]`, `lag_bytes_max`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Checks a slot or publication name: Postgres lowercases unquoted names, so only names that are
/// the same quoted and unquoted are accepted.
pub(crate) fn check_name(errors: &mut Vec<(String, String)>, field: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        errors.push((
            field.into(),
            format!("must be 1 to {NAME_BYTES_MAX} characters of a-z, 0-9 and _"),
        ));
    }
}

/// Checks a `schema.table` name.
pub(crate) fn split_table(name: &str) -> Option<(String, String)> {
    let (schema, table) = name.split_once('.')?;
    let part_ok =
        |p: &str| !p.is_empty() && p.len() <= NAME_BYTES_MAX && !p.contains(['"', '.', '\0']);
    (part_ok(schema) && part_ok(table)).then(|| (schema.to_string(), table.to_string()))
}

/// The first validation problem as an error, or the connection the URL (resolved when it is a
/// secret reference) describes. Shared by the CDC source and the outbox relay.
pub(crate) fn checked_connection(
    problems: Vec<(String, String)>,
    url: &str,
) -> Result<tokio_postgres::Config, CdcConfigError> {
    if let Some((field, message)) = problems.into_iter().next() {
        return Err(CdcConfigError { field, message });
    }
    super::connection_config(url).map_err(|message| CdcConfigError {
        field: "url".into(),
        message,
    })
}

/// The WAL-retention guard's settings, shared by the CDC source and the outbox relay.
pub(crate) fn check_lag_guard(
    errors: &mut Vec<(String, String)>,
    warn: Option<u64>,
    max: Option<u64>,
    on_max: OnLagMax,
) {
    if let (Some(w), Some(m)) = (warn, max)
        && w > m
    {
        errors.push((
            "lag_bytes_warn".into(),
            "must not exceed lag_bytes_max".into(),
        ));
    }
    if max == Some(0) {
        errors.push(("lag_bytes_max".into(), "must be positive".into()));
    }
    if on_max != OnLagMax::Warn && max.is_none() {
        errors.push(("on_lag_max".into(), "needs lag_bytes_max".into()));
    }
}

pub(crate) fn check_url(
    errors: &mut Vec<(String, String)>,
    url: &str,
) -> Option<tokio_postgres::Config> {
    if gearbox_connect::secret::is_reference(url) {
        // Resolved when the connector is built, never while validating.
        return None;
    }
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) if c.get_user().is_some() => Some(c),
        // The URL may hold a password: the error names the field, never the value.
        Ok(_) => {
            errors.push(("url".into(), "must name a user".into()));
            None
        }
        Err(_) => {
            errors.push((
                "url".into(),
                "is not a postgres:// URL or key=value string".into(),
            ));
            None
        }
    }
}

impl CdcConfig {
    /// Every problem in the configuration, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        check_url(&mut errors, &self.url);
        check_name(&mut errors, "slot", &self.slot);
        check_name(&mut errors, "publication", &self.publication);
        if self.tables.len() > TABLES_MAX {
            errors.push(("tables".into(), format!("at most {TABLES_MAX} tables")));
        }
        for (i, t) in self.tables.iter().enumerate() {
            if split_table(t).is_none() {
                errors.push((format!("tables[{i}]"), "must be schema.table".into()));
            }
        }
        if !self.create_slot && self.snapshot == SnapshotMode::Initial {
            errors.push((
                "snapshot".into(),
                "initial needs create_slot: true (a snapshot must be taken when the slot is created)".into(),
            ));
        }
        if let Some(s) = &self.source
            && s.trim().is_empty()
        {
            errors.push(("source".into(), "must not be empty".into()));
        }
        check_lag_guard(
            &mut errors,
            self.lag_bytes_warn,
            self.lag_bytes_max,
            self.on_lag_max,
        );
        if !(STATUS_INTERVAL_MS_MIN..=STATUS_INTERVAL_MS_MAX).contains(&self.status_interval_ms) {
            errors.push((
                "status_interval_ms".into(),
                format!("must be {STATUS_INTERVAL_MS_MIN} to {STATUS_INTERVAL_MS_MAX}"),
            ));
        }
        errors
    }
}

/// Counters of a running source, shared with whoever reports health.
#[derive(Debug, Default)]
pub struct CdcStats {
    /// The slot's lag at the last poll: `pg_current_wal_lsn() - confirmed_flush_lsn`, in bytes.
    pub lag_bytes: AtomicU64,
    /// Change and snapshot events handed out.
    pub events: AtomicU64,
    /// Commit time of the last transaction read, in Unix milliseconds (0: none yet).
    pub last_commit_ts_ms: AtomicI64,
    /// The LSN this source last confirmed to the slot.
    pub confirmed_lsn: AtomicU64,
    /// Snapshot rows handed out.
    pub snapshot_rows: AtomicU64,
    /// Replication connections made.
    pub connects: AtomicU64,
}

/// One table of the snapshot.
#[derive(Debug, Clone)]
pub(crate) struct SnapTable {
    pub schema: String,
    pub table: String,
    /// Column name → type OID.
    pub types: HashMap<String, u32>,
    /// Primary-key column names, in key order.
    pub pk: Vec<String>,
}

/// A change as the engine hands it to a mapper.
pub(crate) struct Change<'a> {
    pub rel: &'a RelInfo,
    pub op: char,
    pub old: Option<(OldKind, &'a Tuple)>,
    pub new: Option<&'a Tuple>,
    pub id: String,
    pub lsn: Lsn,
    pub xid: u32,
    pub commit_ts_us: i64,
}

/// A relation with the positions of its partition-key columns.
#[derive(Debug, Clone)]
pub(crate) struct RelInfo {
    pub rel: Relation,
    /// Column positions of the key (`None`: not looked up yet).
    pub pk: Option<Vec<usize>>,
}

/// A snapshot row as the engine hands it to a mapper.
pub(crate) struct SnapRow<'a> {
    pub table: &'a SnapTable,
    pub columns: Vec<(&'a str, Option<&'a str>)>,
    pub id: String,
    pub consistent: Lsn,
    pub ts_ms: i64,
}

/// Turns changes and snapshot rows into draft events; the second element is a key handed back
/// in `ack` (the outbox's row id).
pub(crate) trait Mapper: Send + 'static {
    fn change(&self, c: &Change<'_>) -> Option<(Value, Option<String>)>;
    fn snapshot_sql(&self, qualified_table: &str) -> String;
    fn snapshot_row(&self, r: &SnapRow<'_>) -> Option<(Value, Option<String>)>;
}

/// What `open` decided from the slot and the stored cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Stream,
    Create { drop_first: bool, snapshot: bool },
}

/// What a stored cursor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Fresh,
    SnapshotIncomplete,
    Streaming,
}

impl Stored {
    pub(crate) fn parse(cursor: Option<&str>) -> Stored {
        match cursor {
            None => Stored::Fresh,
            Some(c) if c.starts_with("lsn:") => Stored::Streaming,
            Some(_) => Stored::SnapshotIncomplete,
        }
    }
}

/// Decides how to start; see the table in the module docs.
///
/// # Errors
/// A message when the slot is missing and may not be created.
pub(crate) fn plan(
    snapshot: bool,
    create_slot: bool,
    slot_exists: bool,
    stored: Stored,
) -> Result<Plan, String> {
    match (slot_exists, stored) {
        (true, Stored::Streaming) => Ok(Plan::Stream),
        (true, _) if snapshot && create_slot => Ok(Plan::Create {
            drop_first: true,
            snapshot: true,
        }),
        (true, _) => Ok(Plan::Stream),
        (false, _) if !create_slot => {
            Err("the replication slot does not exist and create_slot is false".into())
        }
        (false, s) => {
            if s == Stored::Streaming {
                tracing::warn!(
                    "the replication slot is gone although changes were streamed: changes since its last confirmed position are lost; creating it again"
                );
            }
            Ok(Plan::Create {
                drop_first: false,
                snapshot,
            })
        }
    }
}

/// The token of a batch.
pub(crate) struct EngineToken {
    /// The LSN this batch lets the slot confirm.
    confirm: Lsn,
    /// Snapshot position after this batch: (table index, rows read of that table).
    snapshot_pos: Option<(usize, u64)>,
    /// Keys handed back to the mapper's owner.
    pub keys: Vec<String>,
    /// The connection generation the batch was read on.
    generation: u64,
}

/// Settings the engine needs from either source's config.
pub(crate) struct EngineConfig {
    pub pg: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    pub snapshot: bool,
    pub create_slot: bool,
    pub lag_bytes_warn: Option<u64>,
    pub lag_bytes_max: Option<u64>,
    pub on_lag_max: OnLagMax,
    pub status_interval_ms: u64,
    pub application_name: String,
}

struct Snapshot {
    client: tokio_postgres::Client,
    consistent: Lsn,
    tables: Vec<SnapTable>,
    /// Next table to read and rows read of it (cursor position).
    read: (usize, u64),
    /// Position after the last acknowledged batch.
    acked: (usize, u64),
    /// The table the cursor is declared for.
    declared: Option<usize>,
    ts_ms: i64,
    /// The replication connection, idle while the snapshot is read.
    repl: ReplicationConnection,
}

enum Phase {
    Closed,
    Snapshot(Box<Snapshot>),
    Streaming(Box<ReplicationConnection>),
}

struct Tx {
    final_lsn: u64,
    xid: u32,
    commit_ts_us: i64,
    seq: u64,
}

/// The replication engine both sources run on: the slot, the snapshot, the stream, the
/// confirmation rule and the lag guard. The mapper decides what becomes an event.
pub(crate) struct Engine<M: Mapper> {
    cfg: EngineConfig,
    pub mapper: M,
    pub stats: Arc<CdcStats>,
    phase: Phase,
    /// The ordinary connection (lag, key lookups, the outbox's updates).
    client: Option<tokio_postgres::Client>,
    /// The cursor the runtime stored last (open's, then each acked batch's).
    stored: Option<String>,
    /// The cursor of the batch in flight.
    inflight_cursor: Option<String>,
    unacked: u32,
    /// The LSN confirmed to the slot.
    confirmed: Lsn,
    /// The end of the last transaction (or keepalive position between transactions) processed.
    safe: Lsn,
    /// The streaming position the current batch ends at (for the cursor).
    relations: HashMap<u32, RelInfo>,
    tx: Option<Tx>,
    /// A message taken from the stream whose processing needs an await first.
    peeked: Option<ReplMessage>,
    building: Vec<Value>,
    building_keys: Vec<String>,
    next_status: Instant,
    next_lag_poll: Instant,
    paused: bool,
    warned: bool,
    generation: u64,
    /// Writes status updates while the connection streams, also while nobody reads it.
    keeper: Option<StatusKeeper>,
}

fn transient_wire(e: &WireError) -> SourceError {
    if e.is_transient() {
        SourceError::transient(e.to_string())
    } else {
        SourceError::Fatal {
            message: e.to_string(),
        }
    }
}

pub(crate) fn pg_error(context: &str, e: &tokio_postgres::Error) -> SourceError {
    // tokio-postgres prints a server error as "db error"; the server's words are in the body.
    let message = match e.as_db_error() {
        Some(db) => format!("{context}: {} ({})", db.message(), db.code().code()),
        None => format!("{context}: {e}"),
    };
    match e.code().map(tokio_postgres::error::SqlState::code) {
        None => SourceError::transient(message),
        Some(c)
            if c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57")
                || c == "55006"
                || c == "40001"
                || c == "40P01" =>
        {
            SourceError::transient(message)
        }
        Some(_) => SourceError::Fatal { message },
    }
}

/// Commit time in Unix milliseconds.
pub(crate) fn commit_ms(pg_us: i64) -> i64 {
    (pg_us + PG_EPOCH_OFFSET_US).div_euclid(1000)
}

/// RFC 3339 of Unix milliseconds.
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn connect_client(
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, SourceError> {
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error("connecting to postgres", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl<M: Mapper> Engine<M> {
    pub(crate) fn new(cfg: EngineConfig, mapper: M) -> Engine<M> {
        let now = Instant::now();
        Engine {
            cfg,
            mapper,
            stats: Arc::new(CdcStats::default()),
            phase: Phase::Closed,
            client: None,
            stored: None,
            inflight_cursor: None,
            unacked: 0,
            confirmed: Lsn(0),
            safe: Lsn(0),
            relations: HashMap::new(),
            tx: None,
            peeked: None,
            building: Vec::new(),
            building_keys: Vec::new(),
            next_status: now,
            next_lag_poll: now,
            paused: false,
            warned: false,
            generation: 0,
            keeper: None,
        }
    }

    pub(crate) fn slot(&self) -> &str {
        &self.cfg.slot
    }

    /// The ordinary connection, connecting it if needed.
    pub(crate) async fn client(&mut self) -> Result<&tokio_postgres::Client, SourceError> {
        if self
            .client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            self.client = Some(connect_client(&self.cfg.pg).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    pub(crate) async fn open(&mut self, cursor: Option<String>) -> Result<(), SourceError> {
        self.stored = cursor;
        self.close();
        self.establish().await
    }

    /// Drops the connections and everything read but not handed out.
    fn close(&mut self) {
        self.keeper = None;
        self.phase = Phase::Closed;
        self.relations.clear();
        self.tx = None;
        self.peeked = None;
        self.building.clear();
        self.building_keys.clear();
        self.unacked = 0;
        self.inflight_cursor = None;
        self.generation += 1;
    }

    /// Connects and decides how to start (module docs).
    async fn establish(&mut self) -> Result<(), SourceError> {
        let slot = self.cfg.slot.clone();
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text, plugin::text, database::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error("reading the replication slot", &e))?;
        if let Some(row) = &row {
            let plugin: Option<String> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") {
                return Err(SourceError::Fatal {
                    message: format!(
                        "replication slot {slot} exists but is not a pgoutput logical slot"
                    ),
                });
            }
        }
        let stored = Stored::parse(self.stored.as_deref());
        let plan = plan(
            self.cfg.snapshot,
            self.cfg.create_slot,
            row.is_some(),
            stored,
        )
        .map_err(|message| SourceError::Fatal {
            message: format!("{message} (slot {slot})"),
        })?;
        let mut repl = ReplicationConnection::connect(&self.cfg.pg, &self.cfg.application_name)
            .await
            .map_err(|e| transient_wire(&e))?;
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        match plan {
            Plan::Stream => {
                let confirmed: Option<String> = row.as_ref().and_then(|r| r.get(0));
                let slot_lsn = confirmed
                    .and_then(|c| c.parse::<Lsn>().ok())
                    .unwrap_or_default();
                self.confirmed = self.confirmed.max(slot_lsn);
                self.start_stream(repl).await
            }
            Plan::Create {
                drop_first,
                snapshot,
            } => {
                if drop_first {
                    tracing::warn!(slot = %slot, "the initial snapshot did not complete; dropping the slot and starting over (rows already sent are sent again under new ids)");
                    self.drop_slot_sql().await?;
                }
                let created = repl
                    .create_slot(&slot, snapshot)
                    .await
                    .map_err(|e| transient_wire(&e))?;
                self.confirmed = created.consistent_point;
                self.safe = created.consistent_point;
                let Some(name) = created.snapshot_name.filter(|_| snapshot) else {
                    return self.start_stream(repl).await;
                };
                self.begin_snapshot(repl, created.consistent_point, &name)
                    .await
            }
        }
    }

    async fn start_stream(&mut self, mut repl: ReplicationConnection) -> Result<(), SourceError> {
        // After a nack or a lost connection, the walsender of the connection this source just
        // dropped may hold the slot for a moment more ("active for PID", 55006): wait for it to
        // go, for at most SLOT_BUSY_WAIT_MS, before calling it a failure.
        let deadline = Instant::now() + Duration::from_millis(SLOT_BUSY_WAIT_MS);
        loop {
            match repl
                .start_replication(&self.cfg.slot, self.confirmed, &self.cfg.publication)
                .await
            {
                Ok(()) => break,
                Err(WireError::Server { ref code, .. })
                    if code == "55006" && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(SLOT_BUSY_POLL_MS)).await;
                }
                Err(e) => return Err(transient_wire(&e)),
            }
        }
        self.safe = self.confirmed;
        self.stats
            .confirmed_lsn
            .store(self.confirmed.0, Ordering::Relaxed);
        // The keeper reads the confirmed LSN from the stats, which every confirmation updates.
        let stats = Arc::clone(&self.stats);
        self.keeper = Some(repl.status_keeper(
            move || Lsn(stats.confirmed_lsn.load(Ordering::Relaxed)),
            Duration::from_millis(self.cfg.status_interval_ms),
        ));
        self.phase = Phase::Streaming(Box::new(repl));
        self.next_status = Instant::now();
        Ok(())
    }

    async fn begin_snapshot(
        &mut self,
        repl: ReplicationConnection,
        consistent: Lsn,
        name: &str,
    ) -> Result<(), SourceError> {
        let client = connect_client(&self.cfg.pg).await?;
        let sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            name.replace('\'', "''")
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg_error("importing the snapshot", &e))?;
        let rows = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&self.cfg.publication],
            )
            .await
            .map_err(|e| pg_error("listing the publication's tables", &e))?;
        let mut tables = Vec::new();
        for row in rows.iter().take(TABLES_MAX) {
            let schema: String = row.get(0);
            let table: String = row.get(1);
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
            let types = client
                .query(
                    "SELECT attname::text, atttypid::int8 FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
                    &[&qualified],
                )
                .await
                .map_err(|e| pg_error("reading column types", &e))?
                .iter()
                .map(|r| (r.get::<_, String>(0), u32::try_from(r.get::<_, i64>(1)).unwrap_or(0)))
                .collect();
            let pk = primary_key(&client, &qualified).await?;
            tables.push(SnapTable {
                schema,
                table,
                types,
                pk,
            });
        }
        tracing::info!(slot = %self.cfg.slot, tables = tables.len(), consistent = %consistent, "initial snapshot started");
        self.phase = Phase::Snapshot(Box::new(Snapshot {
            client,
            consistent,
            tables,
            read: (0, 0),
            acked: (0, 0),
            declared: None,
            ts_ms: now_ms(),
            repl,
        }));
        Ok(())
    }

    /// Drops the slot over the ordinary connection, waiting up to [`SLOT_DROP_WAIT_MS`] for a
    /// walsender that still holds it (ours, just disconnected) to exit.
    pub(crate) async fn drop_slot_sql(&mut self) -> Result<(), SourceError> {
        let slot = self.cfg.slot.clone();
        let deadline = Instant::now() + Duration::from_millis(SLOT_DROP_WAIT_MS);
        loop {
            let client = self.client().await?;
            match client
                .execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.code().map(tokio_postgres::error::SqlState::code) == Some("55006") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(pg_error("dropping the replication slot", &e)),
            }
        }
    }

    /// Reads the slot's lag now, updates the stats, and applies the guard.
    pub(crate) async fn poll_lag(&mut self) -> Result<u64, SourceError> {
        let slot = self.cfg.slot.clone();
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_error("reading the slot's lag", &e))?;
        let lag = row
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map_or(0, |l| u64::try_from(l).unwrap_or(0));
        self.stats.lag_bytes.store(lag, Ordering::Relaxed);
        self.next_lag_poll = Instant::now() + Duration::from_millis(LAG_POLL_INTERVAL_MS);
        self.guard(lag).await?;
        Ok(lag)
    }

    async fn guard(&mut self, lag: u64) -> Result<(), SourceError> {
        let slot = self.cfg.slot.clone();
        if let Some(warn) = self.cfg.lag_bytes_warn {
            if lag > warn && !self.warned {
                tracing::warn!(slot = %slot, lag_bytes = lag, lag_bytes_warn = warn, "replication slot lag is high: Postgres keeps the WAL");
            }
            self.warned = lag > warn;
        }
        let Some(max) = self.cfg.lag_bytes_max else {
            return Ok(());
        };
        if lag <= max {
            if self.paused {
                tracing::info!(slot = %slot, lag_bytes = lag, "slot lag back under lag_bytes_max; reading again");
            }
            self.paused = false;
            return Ok(());
        }
        match self.cfg.on_lag_max {
            OnLagMax::Warn => {
                tracing::error!(slot = %slot, lag_bytes = lag, lag_bytes_max = max, "replication slot lag exceeds lag_bytes_max");
                Ok(())
            }
            OnLagMax::Pause => {
                if !self.paused {
                    tracing::error!(slot = %slot, lag_bytes = lag, lag_bytes_max = max, "replication slot lag exceeds lag_bytes_max; pausing");
                }
                self.paused = true;
                Ok(())
            }
            OnLagMax::DropSlot => {
                self.close();
                self.drop_slot_sql().await?;
                let message = format!(
                    "replication slot {slot} lagged {lag} bytes, past lag_bytes_max {max}; it was dropped (on_lag_max: drop_slot) to free the WAL, and changes after LSN {} are lost; a restart creates the slot again",
                    self.confirmed
                );
                tracing::error!(slot = %slot, "{message}");
                Err(SourceError::Fatal { message })
            }
        }
    }

    pub(crate) async fn next_batch(
        &mut self,
        records_max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let records_max = records_max.max(1);
        if matches!(self.phase, Phase::Closed) {
            self.establish().await?;
        }
        match &self.phase {
            Phase::Snapshot(_) => self.snapshot_batch(records_max).await,
            _ => self.stream_batch(records_max).await,
        }
    }

    async fn snapshot_batch(
        &mut self,
        records_max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let result = self.snapshot_batch_inner(records_max).await;
        if let Err(e) = &result {
            // The exported snapshot dies with the connections: start over (module docs).
            tracing::warn!(error = %e, "the snapshot failed; it starts over");
            self.close();
        }
        result
    }

    async fn snapshot_batch_inner(
        &mut self,
        records_max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let Phase::Snapshot(snap) = &mut self.phase else {
            return Err(SourceError::transient("not in a snapshot"));
        };
        loop {
            let (index, pos) = snap.read;
            let Some(table) = snap.tables.get(index) else {
                // Done: commit, then stream from the consistent point. The batch says so.
                let consistent = snap.consistent;
                let cursor = format!("lsn:{consistent}");
                let Phase::Snapshot(snap) = std::mem::replace(&mut self.phase, Phase::Closed)
                else {
                    unreachable!("matched above");
                };
                let Snapshot { client, repl, .. } = *snap;
                client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| pg_error("ending the snapshot", &e))?;
                tracing::info!(slot = %self.cfg.slot, "initial snapshot complete");
                self.confirmed = consistent;
                self.start_stream(repl).await?;
                self.unacked += 1;
                self.inflight_cursor = Some(cursor.clone());
                return Ok(Some(SourceBatch {
                    records: Vec::new(),
                    rejected: Vec::new(),
                    cursor: Some(cursor),
                    token: Some(Box::new(EngineToken {
                        confirm: consistent,
                        snapshot_pos: None,
                        keys: Vec::new(),
                        generation: self.generation,
                    })),
                }));
            };
            let qualified = format!(
                "{}.{}",
                quote_ident(&table.schema),
                quote_ident(&table.table)
            );
            // Every statement here is idempotent, so a call dropped at any await loses
            // nothing: the cursor is declared again (after `CLOSE ALL`) when in doubt, and each
            // FETCH first moves to the position of the last row handed out.
            if snap.declared != Some(index) {
                snap.declared = None;
                let sql = format!(
                    "CLOSE ALL; DECLARE gearbox_snapshot SCROLL CURSOR FOR {}",
                    self.mapper.snapshot_sql(&qualified)
                );
                snap.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| pg_error("declaring the snapshot cursor", &e))?;
                snap.declared = Some(index);
            }
            let messages = snap
                .client
                .simple_query(&format!(
                    "MOVE ABSOLUTE {pos} IN gearbox_snapshot; FETCH FORWARD {records_max} FROM gearbox_snapshot"
                ))
                .await
                .map_err(|e| pg_error("reading the snapshot", &e))?;
            let rows: Vec<_> = messages
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                    _ => None,
                })
                .collect();
            if rows.is_empty() {
                snap.read = (index + 1, 0);
                continue;
            }
            let mut records = Vec::with_capacity(rows.len());
            let mut keys = Vec::new();
            for (i, row) in rows.iter().enumerate() {
                let n = pos + i as u64 + 1;
                let columns = row
                    .columns()
                    .iter()
                    .enumerate()
                    .map(|(c, col)| (col.name(), row.get(c)))
                    .collect();
                let r = SnapRow {
                    table,
                    columns,
                    id: format!("{}/r/{}.{}/{n}", snap.consistent, table.schema, table.table),
                    consistent: snap.consistent,
                    ts_ms: snap.ts_ms,
                };
                if let Some((event, key)) = self.mapper.snapshot_row(&r) {
                    records.push(event);
                    keys.extend(key);
                }
            }
            let after = (index, pos + rows.len() as u64);
            snap.read = after;
            let cursor = format!("snapshot:{}:{}:{}", snap.consistent, after.0, after.1);
            self.stats
                .snapshot_rows
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
            self.stats
                .events
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            self.unacked += 1;
            self.inflight_cursor = Some(cursor.clone());
            return Ok(Some(SourceBatch {
                records,
                rejected: Vec::new(),
                cursor: Some(cursor),
                token: Some(Box::new(EngineToken {
                    confirm: snap.consistent,
                    snapshot_pos: Some(after),
                    keys,
                    generation: self.generation,
                })),
            }));
        }
    }

    fn repl(&mut self) -> Result<&mut ReplicationConnection, SourceError> {
        match &mut self.phase {
            Phase::Streaming(r) => Ok(r),
            _ => Err(SourceError::transient(
                "the replication connection is closed",
            )),
        }
    }

    async fn stream_batch(
        &mut self,
        records_max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        let result = self.stream_batch_inner(records_max).await;
        if let Err(e) = &result {
            if let SourceError::Transient { message, .. } = e {
                tracing::warn!(slot = %self.cfg.slot, error = %message, "replication interrupted; reconnecting on the next read");
            }
            self.close();
        }
        result
    }

    async fn stream_batch_inner(
        &mut self,
        records_max: usize,
    ) -> Result<Option<SourceBatch>, SourceError> {
        loop {
            let now = Instant::now();
            if now >= self.next_lag_poll {
                self.poll_lag().await?;
            }
            if now >= self.next_status {
                self.send_status().await?;
            }
            if self.paused {
                if !self.building.is_empty() {
                    return Ok(Some(self.take_batch()));
                }
                tokio::time::sleep_until(self.next_status.min(self.next_lag_poll)).await;
                continue;
            }
            if self.peeked.is_none() {
                let wake = self.next_status.min(self.next_lag_poll);
                let building = !self.building.is_empty();
                let repl = self.repl()?;
                let message = if building {
                    // A batch in hand goes out as soon as nothing more is buffered.
                    repl.try_recv().map_err(|e| transient_wire(&e))?
                } else {
                    match tokio::time::timeout_at(wake, repl.recv()).await {
                        Ok(m) => Some(m.map_err(|e| transient_wire(&e))?),
                        Err(_) => None,
                    }
                };
                match message {
                    Some(m) => self.peeked = Some(m),
                    None if building => return Ok(Some(self.take_batch())),
                    None => continue,
                }
            }
            self.prepare().await?;
            let Some(message) = self.peeked.take() else {
                continue;
            };
            self.process(message).await?;
            if self.building.len() >= records_max {
                self.absorb_commit()?;
                return Ok(Some(self.take_batch()));
            }
        }
    }

    /// Looks up the key columns of the relation the peeked message announces (an await, done
    /// while the message stays in `peeked`, so a cancelled call loses nothing).
    async fn prepare(&mut self) -> Result<(), SourceError> {
        let Some(ReplMessage::XLogData { data, .. }) = &self.peeked else {
            return Ok(());
        };
        if data.first() != Some(&b'R') {
            return Ok(());
        }
        let LogicalMessage::Relation(rel) =
            pgoutput::decode(data).map_err(|e| SourceError::Fatal {
                message: e.to_string(),
            })?
        else {
            return Ok(());
        };
        let qualified = format!("{}.{}", quote_ident(&rel.namespace), quote_ident(&rel.name));
        let client = self.client().await?;
        let pk_names = primary_key(client, &qualified).await?;
        let pk = if pk_names.is_empty() {
            // No primary key: the replica identity index, unless it is FULL (every column).
            if rel.replica_identity == b'f' {
                Vec::new()
            } else {
                rel.columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.key)
                    .map(|(i, _)| i)
                    .collect()
            }
        } else {
            pk_names
                .iter()
                .filter_map(|n| rel.columns.iter().position(|c| &c.name == n))
                .collect()
        };
        self.relations.insert(rel.id, RelInfo { rel, pk: Some(pk) });
        Ok(())
    }

    /// If the next buffered message is the current transaction's Commit, takes it, so a batch
    /// that ends with a transaction's last change can confirm that transaction.
    fn absorb_commit(&mut self) -> Result<(), SourceError> {
        let repl = self.repl()?;
        let Some(message) = repl.try_recv().map_err(|e| transient_wire(&e))? else {
            return Ok(());
        };
        let is_commit =
            matches!(&message, ReplMessage::XLogData { data, .. } if data.first() == Some(&b'C'));
        if is_commit {
            let ReplMessage::XLogData { data, .. } = &message else {
                unreachable!("matched above")
            };
            if let Ok(LogicalMessage::Commit {
                end_lsn, commit_ts, ..
            }) = pgoutput::decode(data)
            {
                self.commit(end_lsn, commit_ts);
                return Ok(());
            }
        }
        self.peeked = Some(message);
        Ok(())
    }

    fn commit(&mut self, end_lsn: u64, commit_ts: i64) {
        self.tx = None;
        self.safe = self.safe.max(Lsn(end_lsn));
        self.stats
            .last_commit_ts_ms
            .store(commit_ms(commit_ts), Ordering::Relaxed);
        self.confirm_if_idle();
    }

    /// With nothing handed out unacknowledged and no transaction open, everything before `safe`
    /// is processed: confirm it.
    fn confirm_if_idle(&mut self) {
        if self.building.is_empty()
            && self.unacked == 0
            && self.tx.is_none()
            && self.safe > self.confirmed
        {
            self.confirmed = self.safe;
            self.stats
                .confirmed_lsn
                .store(self.confirmed.0, Ordering::Relaxed);
        }
    }

    async fn process(&mut self, message: ReplMessage) -> Result<(), SourceError> {
        let (wal_start, data) = match message {
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
            } => {
                if self.tx.is_none() {
                    self.safe = self.safe.max(wal_end);
                    self.confirm_if_idle();
                }
                if reply_requested {
                    self.send_status().await?;
                }
                return Ok(());
            }
            ReplMessage::XLogData {
                wal_start, data, ..
            } => (wal_start, data),
        };
        let decoded = pgoutput::decode(&data).map_err(|e| SourceError::Fatal {
            message: e.to_string(),
        })?;
        match decoded {
            LogicalMessage::Begin {
                final_lsn,
                commit_ts,
                xid,
            } => {
                self.tx = Some(Tx {
                    final_lsn,
                    xid,
                    commit_ts_us: commit_ts,
                    seq: 0,
                });
            }
            LogicalMessage::Commit {
                end_lsn, commit_ts, ..
            } => self.commit(end_lsn, commit_ts),
            LogicalMessage::Relation(rel) => {
                // `prepare` stored it with its key; a relation it could not see is kept keyless.
                self.relations
                    .entry(rel.id)
                    .or_insert(RelInfo { rel, pk: None });
            }
            LogicalMessage::Insert { relation_id, new } => {
                self.change(wal_start, relation_id, 'c', None, Some(&new))?
            }
            LogicalMessage::Update {
                relation_id,
                old,
                new,
            } => {
                let old = old.as_ref().map(|(k, t)| (*k, t));
                self.change(wal_start, relation_id, 'u', old, Some(&new))?;
            }
            LogicalMessage::Delete { relation_id, old } => {
                self.change(wal_start, relation_id, 'd', Some((old.0, &old.1)), None)?;
            }
            LogicalMessage::Truncate { relation_ids, .. } => {
                for id in relation_ids {
                    self.change(wal_start, id, 't', None, None)?;
                }
            }
            LogicalMessage::Origin { .. }
            | LogicalMessage::Type { .. }
            | LogicalMessage::Message { .. } => {}
        }
        Ok(())
    }

    fn change(
        &mut self,
        lsn: Lsn,
        relation_id: u32,
        op: char,
        old: Option<(OldKind, &Tuple)>,
        new: Option<&Tuple>,
    ) -> Result<(), SourceError> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(SourceError::Fatal {
                message: "pgoutput sent a change outside a transaction".into(),
            });
        };
        let Some(rel) = self.relations.get(&relation_id) else {
            return Err(SourceError::Fatal {
                message: format!(
                    "pgoutput sent a change of relation {relation_id} before describing it"
                ),
            });
        };
        let id = format!("{}/{}", Lsn(tx.final_lsn), tx.seq);
        tx.seq += 1;
        let change = Change {
            rel,
            op,
            old,
            new,
            id,
            lsn,
            xid: tx.xid,
            commit_ts_us: tx.commit_ts_us,
        };
        if let Some((event, key)) = self.mapper.change(&change) {
            self.building.push(event);
            self.building_keys.extend(key);
        }
        Ok(())
    }

    fn take_batch(&mut self) -> SourceBatch {
        let records = std::mem::take(&mut self.building);
        let keys = std::mem::take(&mut self.building_keys);
        self.stats
            .events
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.unacked += 1;
        let cursor = format!("lsn:{}", self.safe.max(self.confirmed));
        self.inflight_cursor = Some(cursor.clone());
        SourceBatch {
            records,
            rejected: Vec::new(),
            cursor: Some(cursor),
            token: Some(Box::new(EngineToken {
                confirm: self.safe,
                snapshot_pos: None,
                keys,
                generation: self.generation,
            })),
        }
    }

    async fn send_status(&mut self) -> Result<(), SourceError> {
        let confirmed = self.confirmed;
        self.next_status = Instant::now() + Duration::from_millis(self.cfg.status_interval_ms);
        if let Phase::Streaming(repl) = &mut self.phase {
            repl.send_status(confirmed, confirmed, confirmed)
                .await
                .map_err(|e| transient_wire(&e))?;
        }
        Ok(())
    }

    /// Recovers the engine's token from a runtime token.
    pub(crate) fn token(token: Option<AckToken>) -> Option<EngineToken> {
        token
            .and_then(|t| t.downcast::<EngineToken>().ok())
            .map(|t| *t)
    }

    pub(crate) async fn ack(&mut self, token: Option<EngineToken>) -> Result<(), SourceError> {
        let Some(token) = token else {
            return Ok(());
        };
        if token.generation != self.generation {
            // Read on a connection that ended since: the server streams it again.
            return Ok(());
        }
        self.unacked = self.unacked.saturating_sub(1);
        if let Some(cursor) = self.inflight_cursor.take() {
            self.stored = Some(cursor);
        }
        if let (Some(pos), Phase::Snapshot(snap)) = (token.snapshot_pos, &mut self.phase) {
            snap.acked = pos;
            return Ok(());
        }
        if token.confirm > self.confirmed {
            self.confirmed = token.confirm;
            self.stats
                .confirmed_lsn
                .store(self.confirmed.0, Ordering::Relaxed);
        }
        self.confirm_if_idle();
        if let Err(e) = self.send_status().await {
            // The confirmation is kept: the next connection starts replication there and its
            // first status update carries it. The events are durable, so the ack succeeded.
            tracing::debug!(error = %e, "the status update after an ack failed; reconnecting on the next read");
            self.close();
        }
        Ok(())
    }

    pub(crate) async fn nack(&mut self, token: Option<EngineToken>) {
        let Some(token) = token else {
            return;
        };
        if token.generation != self.generation {
            return;
        }
        self.unacked = self.unacked.saturating_sub(1);
        self.inflight_cursor = None;
        if let Phase::Snapshot(snap) = &mut self.phase {
            // Move back to the last acknowledged row (the next FETCH moves there first).
            snap.read = snap.acked;
            return;
        }
        // The server streams everything after the confirmed LSN again on a new connection.
        self.close();
    }

    /// Closes the connections; the slot stays.
    pub(crate) fn shutdown(&mut self) {
        self.close();
        self.client = None;
    }
}

/// The primary-key column names of a table, in key order (empty: none, or the table was
/// dropped since the change being decoded was written: that is not an error, its changes are
/// still streamed, keyed by their replica-identity columns).
async fn primary_key(
    client: &tokio_postgres::Client,
    qualified: &str,
) -> Result<Vec<String>, SourceError> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&qualified],
        )
        .await
        .map_err(|e| pg_error("reading the primary key", &e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Ensures the publication exists: created `FOR TABLE` the given tables (with `WITH` options)
/// if it does not, used as is if it does.
pub(crate) async fn ensure_publication(
    client: &tokio_postgres::Client,
    publication: &str,
    tables: &[String],
    with: &str,
) -> Result<(), SourceError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(|e| pg_error("reading the publication", &e))?
        .is_some();
    if exists {
        return Ok(());
    }
    if tables.is_empty() {
        return Err(SourceError::Fatal {
            message: format!(
                "publication {publication} does not exist and no tables are configured to create it"
            ),
        });
    }
    let list: Vec<String> = tables
        .iter()
        .filter_map(|t| split_table(t))
        .map(|(s, t)| format!("{}.{}", quote_ident(&s), quote_ident(&t)))
        .collect();
    let sql = format!(
        "CREATE PUBLICATION {} FOR TABLE {}{with}",
        quote_ident(publication),
        list.join(", ")
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        // Created concurrently: use it.
        Err(e) if e.code().map(tokio_postgres::error::SqlState::code) == Some("42710") => Ok(()),
        Err(e) => Err(pg_error("creating the publication", &e)),
    }
}

/// The CDC mapper: Debezium-shaped change events.
struct CdcMapper {
    source: String,
    db: String,
}

fn column_json(type_oid: u32, value: &ColumnValue) -> Value {
    match value {
        ColumnValue::Null => Value::Null,
        ColumnValue::UnchangedToast => Value::String(UNAVAILABLE_VALUE.into()),
        ColumnValue::Text(b) => pgoutput::text_to_json(type_oid, &String::from_utf8_lossy(b)),
        ColumnValue::Binary(b) => Value::String(b.iter().fold(String::from("\\x"), |mut s, x| {
            s.push_str(&format!("{x:02x}"));
            s
        })),
    }
}

fn tuple_json(rel: &Relation, tuple: &Tuple, only_keys: bool, fill: Option<&Tuple>) -> Value {
    let mut row = Map::new();
    for (i, (col, value)) in rel.columns.iter().zip(tuple).enumerate() {
        if only_keys && !col.key {
            continue;
        }
        let value = match (value, fill.and_then(|f| f.get(i))) {
            (ColumnValue::UnchangedToast, Some(old @ ColumnValue::Text(_))) => old,
            _ => value,
        };
        row.insert(col.name.clone(), column_json(col.type_oid, value));
    }
    Value::Object(row)
}

fn text_of(value: &ColumnValue) -> Option<String> {
    match value {
        ColumnValue::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// The partition key: one value as is, several as a JSON array of texts.
pub(crate) fn partition_key(values: Vec<Option<String>>) -> Option<String> {
    match values.len() {
        0 => None,
        1 => values.into_iter().next().flatten(),
        _ => Some(
            Value::from(
                values
                    .into_iter()
                    .map(|v| v.map_or(Value::Null, Value::String))
                    .collect::<Vec<_>>(),
            )
            .to_string(),
        ),
    }
}

impl CdcMapper {
    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        id: String,
        schema: &str,
        table: &str,
        op: &str,
        before: Value,
        after: Value,
        ts_ms: i64,
        lsn: u64,
        xid: Value,
        snapshot: bool,
        key: Option<String>,
    ) -> Value {
        let mut event = json!({
            "specversion": "1.0",
            "id": id,
            "source": self.source,
            "type": EVENT_TYPE,
            "subject": format!("{schema}.{table}"),
            "time": rfc3339_ms(ts_ms),
            "datacontenttype": "application/json",
            "data": {
                "before": before,
                "after": after,
                "op": op,
                "ts_ms": ts_ms,
                "source": {
                    "connector": "postgresql",
                    "db": self.db,
                    "schema": schema,
                    "table": table,
                    "lsn": lsn,
                    "txId": xid,
                    "snapshot": snapshot,
                    "ts_ms": ts_ms,
                },
            },
            "pgschema": schema,
            "pgtable": table,
            "pgop": op,
        });
        if let Some(key) = key {
            event["partitionkey"] = Value::String(key);
        }
        event
    }
}

impl Mapper for CdcMapper {
    fn change(&self, c: &Change<'_>) -> Option<(Value, Option<String>)> {
        let rel = &c.rel.rel;
        let full_old = c.old.filter(|(k, _)| *k == OldKind::Full).map(|(_, t)| t);
        let before = match c.old {
            Some((kind, t)) => tuple_json(rel, t, kind == OldKind::Key, None),
            None => Value::Null,
        };
        let after = c
            .new
            .map_or(Value::Null, |t| tuple_json(rel, t, false, full_old));
        let key_tuple = c.new.or(c.old.map(|(_, t)| t));
        let key = match (c.op, key_tuple, &c.rel.pk) {
            ('t', _, _) | (_, None, _) | (_, _, None) => None,
            (_, Some(t), Some(pk)) => {
                partition_key(pk.iter().map(|i| t.get(*i).and_then(text_of)).collect())
            }
        };
        let op = c.op.to_string();
        let ts_ms = commit_ms(c.commit_ts_us);
        Some((
            self.event(
                c.id.clone(),
                &rel.namespace,
                &rel.name,
                &op,
                before,
                after,
                ts_ms,
                c.lsn.0,
                json!(c.xid),
                false,
                key,
            ),
            None,
        ))
    }

    fn snapshot_sql(&self, qualified_table: &str) -> String {
        format!("SELECT * FROM {qualified_table}")
    }

    fn snapshot_row(&self, r: &SnapRow<'_>) -> Option<(Value, Option<String>)> {
        let t = r.table;
        let mut after = Map::new();
        for (name, value) in &r.columns {
            let oid = t.types.get(*name).copied().unwrap_or(0);
            after.insert(
                (*name).to_string(),
                value.map_or(Value::Null, |v| pgoutput::text_to_json(oid, v)),
            );
        }
        let key = partition_key(
            t.pk.iter()
                .map(|k| {
                    r.columns
                        .iter()
                        .find(|(n, _)| n == k)
                        .and_then(|(_, v)| v.map(str::to_string))
                })
                .collect(),
        );
        Some((
            self.event(
                r.id.clone(),
                &t.schema,
                &t.table,
                "r",
                Value::Null,
                Value::Object(after),
                r.ts_ms,
                r.consistent.0,
                Value::Null,
                true,
                key,
            ),
            None,
        ))
    }
}

/// The CDC source.
pub struct PostgresCdc {
    engine: Engine<CdcMapper>,
    tables: Vec<String>,
    publication: String,
}

impl std::fmt::Debug for PostgresCdc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCdc")
            .field("slot", &self.engine.slot())
            .field("publication", &self.publication)
            .finish_non_exhaustive()
    }
}

impl PostgresCdc {
    /// Builds the source from a resolved configuration.
    ///
    /// # Errors
    /// The first problem [`CdcConfig::validate`] finds, naming its field.
    pub fn new(config: CdcConfig) -> Result<PostgresCdc, CdcConfigError> {
        let pg = checked_connection(config.validate(), &config.url)?;
        let db = pg
            .get_dbname()
            .or(pg.get_user())
            .unwrap_or_default()
            .to_string();
        let mapper = CdcMapper {
            source: config
                .source
                .clone()
                .unwrap_or_else(|| format!("/gearbox/postgres/{db}")),
            db,
        };
        let engine = Engine::new(
            EngineConfig {
                pg,
                slot: config.slot.clone(),
                publication: config.publication.clone(),
                snapshot: config.snapshot == SnapshotMode::Initial,
                create_slot: config.create_slot,
                lag_bytes_warn: config.lag_bytes_warn,
                lag_bytes_max: config.lag_bytes_max,
                on_lag_max: config.on_lag_max,
                status_interval_ms: config.status_interval_ms,
                application_name: format!("gearbox-cdc-{}", config.slot),
            },
            mapper,
        );
        Ok(PostgresCdc {
            engine,
            tables: config.tables,
            publication: config.publication,
        })
    }

    /// The shared counters (lag, events, last commit time).
    #[must_use]
    pub fn stats(&self) -> Arc<CdcStats> {
        Arc::clone(&self.engine.stats)
    }

    /// The slot's lag at the last poll, in bytes.
    #[must_use]
    pub fn slot_lag_bytes(&self) -> u64 {
        self.engine.stats.lag_bytes.load(Ordering::Relaxed)
    }

    /// Reads the slot's lag now (it is also read every [`LAG_POLL_INTERVAL_MS`] while
    /// `next_batch` runs) and applies the lag guard.
    ///
    /// # Errors
    /// [`SourceError::Transient`] when Postgres cannot be reached; [`SourceError::Fatal`] when
    /// the guard dropped the slot.
    pub async fn poll_lag(&mut self) -> Result<u64, SourceError> {
        self.engine.poll_lag().await
    }

    /// Closes the connections. The slot stays, so a later `open` resumes.
    pub fn close(&mut self) {
        self.engine.shutdown();
    }
}

/// The slot's gauges for `/metrics`, from the shared counters.
pub(crate) fn stat_gauges(stats: &Arc<CdcStats>) -> Vec<gearbox_connect::metrics::Gauge> {
    use gearbox_connect::metrics::Gauge;
    let gauge = |name: &'static str, read: fn(&CdcStats) -> f64| {
        let stats = Arc::clone(stats);
        Gauge {
            name,
            read: Box::new(move || read(&stats)),
        }
    };
    vec![
        gauge("postgres_slot_lag_bytes", |s| {
            s.lag_bytes.load(Ordering::Relaxed) as f64
        }),
        gauge("postgres_confirmed_lsn", |s| {
            s.confirmed_lsn.load(Ordering::Relaxed) as f64
        }),
        gauge("postgres_last_commit_timestamp_seconds", |s| {
            s.last_commit_ts_ms.load(Ordering::Relaxed) as f64 / 1000.0
        }),
        gauge("postgres_snapshot_rows", |s| {
            s.snapshot_rows.load(Ordering::Relaxed) as f64
        }),
    ]
}

impl Source for PostgresCdc {
    fn kind(&self) -> &'static str {
        "postgres_cdc"
    }

    fn gauges(&self) -> Vec<gearbox_connect::metrics::Gauge> {
        stat_gauges(&self.engine.stats)
    }

    async fn open(&mut self, cursor: Option<String>) -> Result<(), SourceError> {
        let client = self.engine.client().await?;
        ensure_publication(client, &self.publication, &self.tables, "").await?;
        self.engine.open(cursor).await
    }

    async fn next_batch(&mut self, records_max: usize) -> Result<Option<SourceBatch>, SourceError> {
        self.engine.next_batch(records_max).await
    }

    async fn ack(
        &mut self,
        token: Option<AckToken>,
        _outcomes: Vec<RecordOutcome>,
    ) -> Result<(), SourceError> {
        self.engine.ack(Engine::<CdcMapper>::token(token)).await
    }

    async fn nack(&mut self, token: Option<AckToken>, _error: &str) {
        self.engine.nack(Engine::<CdcMapper>::token(token)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: Value) -> CdcConfig {
        serde_json::from_value(value).expect("config deserializes")
    }

    fn base() -> Value {
        json!({"url": "postgres://postgres@127.0.0.1:5432/test", "slot": "s1", "publication": "p1", "tables": ["public.t"]})
    }

    fn paths(value: Value) -> Vec<String> {
        config(value)
            .validate()
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn defaults_and_validation() {
        let c = config(base());
        assert!(c.create_slot);
        assert_eq!(c.snapshot, SnapshotMode::Initial);
        assert_eq!(c.status_interval_ms, STATUS_INTERVAL_MS_DEFAULT);
        assert!(c.validate().is_empty());
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            b
        };
        assert_eq!(paths(with("slot", json!("Bad-Slot"))), ["slot"]);
        assert_eq!(paths(with("publication", json!(""))), ["publication"]);
        assert_eq!(
            paths(with("tables", json!(["ok.t", "nodot"]))),
            ["tables[1]"]
        );
        assert_eq!(paths(with("url", json!("http://x"))), ["url"]);
        assert_eq!(paths(with("create_slot", json!(false))), ["snapshot"]);
        assert_eq!(
            paths(with("on_lag_max", json!("drop_slot"))),
            ["on_lag_max"]
        );
        assert_eq!(
            paths(with("status_interval_ms", json!(1))),
            ["status_interval_ms"]
        );
        let mut lag = with("lag_bytes_warn", json!(10));
        lag["lag_bytes_max"] = json!(5);
        assert_eq!(paths(lag), ["lag_bytes_warn"]);
        let e = serde_json::from_value::<CdcConfig>(with("slots", json!(1))).unwrap_err();
        assert!(e.to_string().contains("slots"));
        let e = PostgresCdc::new(config(with("slot", json!("")))).unwrap_err();
        assert_eq!(e.field, "slot");
    }

    #[test]
    fn url_errors_do_not_echo_the_url() {
        let mut b = base();
        b["url"] = json!("postgres://u:hunter2@[bad");
        let errors = config(b).validate();
        assert!(!format!("{errors:?}").contains("hunter2"));
    }

    #[test]
    fn plans_follow_the_table() {
        use Stored::*;
        let create = |drop_first, snapshot| {
            Ok(Plan::Create {
                drop_first,
                snapshot,
            })
        };
        assert_eq!(plan(true, true, true, Streaming), Ok(Plan::Stream));
        assert_eq!(plan(true, true, true, Fresh), create(true, true));
        assert_eq!(
            plan(true, true, true, SnapshotIncomplete),
            create(true, true)
        );
        assert_eq!(plan(false, true, true, Fresh), Ok(Plan::Stream));
        assert_eq!(plan(true, true, false, Fresh), create(false, true));
        assert_eq!(plan(false, true, false, Fresh), create(false, false));
        assert_eq!(plan(true, true, false, Streaming), create(false, true));
        assert!(plan(false, false, false, Fresh).is_err());
        assert_eq!(Stored::parse(Some("lsn:0/1")), Streaming);
        assert_eq!(Stored::parse(Some("snapshot:0/1:0:5")), SnapshotIncomplete);
    }

    #[test]
    fn partition_keys_and_times() {
        assert_eq!(partition_key(vec![]), None);
        assert_eq!(partition_key(vec![Some("7".into())]), Some("7".into()));
        assert_eq!(
            partition_key(vec![Some("a".into()), None]),
            Some(r#"["a",null]"#.into())
        );
        assert_eq!(commit_ms(0), 946_684_800_000);
        assert_eq!(rfc3339_ms(946_684_800_000), "2000-01-01T00:00:00.000Z");
    }
}
