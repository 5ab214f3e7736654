//! The transactional-outbox relay: a source that turns the rows applications insert into an
//! outbox table (the seed's `outbox_events`: `id UUID, aggregate_type, aggregate_id, event_type,
//! payload JSONB, created_at, published_at`) into CloudEvents, and marks them published (or
//! deletes them) once Gearbox stored them.
//!
//! # Why logical replication, not polling
//!
//! A relay that polls `WHERE published_at IS NULL ORDER BY created_at` (or by a sequence) and
//! remembers where it stopped skips rows: a transaction that began first, took its `created_at`
//! (or sequence number) early, and committed after a later transaction's rows were already
//! relayed, becomes visible *behind* the relay's position. Polling everything unpublished every
//! time avoids the skip but costs a scan per poll and gives no order across transactions.
//! This relay reads the outbox table through its own publication (`publish = 'insert'`) and
//! slot with the engine of [`super::cdc`]: logical decoding emits a transaction's rows at its
//! commit, in commit order, and the slot's confirmed position moves only past commits already
//! streamed. A transaction that commits late has a commit LSN after everything confirmed so
//! far, so it is streamed when it commits, whatever its `created_at`; a rolled-back transaction
//! is never decoded. Every committed row therefore arrives once in commit order, plus after a
//! crash the unconfirmed window again.
//!
//! # Delivery contract
//!
//! The same as the CDC source's (module docs of [`super::cdc`]): the slot's confirmed LSN
//! advances only in [`Source::ack`], to the last transaction all of whose rows were acknowledged.
//! In `ack` the relay first sets `published_at = now()` (or deletes the rows, with
//! `on_ack: delete`) for the acknowledged ids over an ordinary connection, then confirms the
//! LSN. A crash between the two re-sends rows already marked; they carry their row id as event
//! id, so the log deduplicates them. If the update fails, the LSN is still confirmed (the events
//! are durable in the log, which is what the outbox exists for) and the ids are kept and marked
//! with the next acknowledgement; `ack` reports the failure as transient. Updates and deletes of
//! the table (the relay's own `published_at` updates included) are not published to the slot
//! (`publish = 'insert'`), and an insert whose `published_at` is already set is skipped.
//!
//! On the first start (the slot is created), the rows with `published_at IS NULL` that already
//! exist are read through the slot's exported snapshot, ordered by `created_at`, then the stream
//! starts at the slot's consistent point, so no row is in neither and none in both. An
//! interrupted snapshot is redone as the CDC source does; here the ids are the rows' own, so the
//! redone snapshot deduplicates exactly.
//!
//! # Events
//!
//! `id` = the `id` column, `type` = `event_type`, `source` = `aggregate_type`, `subject` and
//! `partitionkey` = `aggregate_id` (the events of one aggregate stay in order in one partition),
//! extension `aggregatetype` = `aggregate_type` (for topic templates like
//! `outbox.{aggregatetype}`), `time` = `created_at` in RFC 3339 (a `timestamp` without time zone
//! is read as UTC), `datacontenttype: application/json`, `data` = `payload`. A row with a NULL in
//! `id`, `event_type` or `aggregate_type` (a table that lacks the seed's `NOT NULL`s) is not
//! dropped: its event gets the change's LSN id or a placeholder and an `outboxerror` extension
//! saying what is missing, so a transform can dead-letter it.

use super::cdc::{
    CdcConfigError, CdcStats, Change, Engine, EngineConfig, Mapper, OnLagMax,
    STATUS_INTERVAL_MS_DEFAULT, STATUS_INTERVAL_MS_MAX, STATUS_INTERVAL_MS_MIN, SnapRow,
    check_lag_guard, check_name, check_url, checked_connection, ensure_publication, pg_error,
    split_table,
};
use super::pgoutput::{self, ColumnValue};
use super::wire::quote_ident;
use gearbox_connect::source::{AckToken, RecordOutcome, Source, SourceBatch, SourceError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Most ids marked in one `UPDATE` (a batch is at most 1,000 records; kept ids of a failed
/// update add to the next).
pub const MARK_IDS_MAX: usize = 10_000;

/// What `ack` does with the relayed rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnAck {
    /// `UPDATE ... SET published_at = now()`.
    #[default]
    MarkPublished,
    /// `DELETE`.
    Delete,
}

/// The outbox table's column names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// The event id.
    pub id: String,
    /// The aggregate type (`order`).
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The event type (`OrderPlaced`).
    pub event_type: String,
    /// The JSON payload.
    pub payload: String,
    /// When the row was written.
    pub created_at: String,
    /// When the relay published it (NULL: not yet).
    pub published_at: String,
}

impl Default for OutboxColumns {
    fn default() -> OutboxColumns {
        OutboxColumns {
            id: "id".into(),
            aggregate_type: "aggregate_type".into(),
            aggregate_id: "aggregate_id".into(),
            event_type: "event_type".into(),
            payload: "payload".into(),
            created_at: "created_at".into(),
            published_at: "published_at".into(),
        }
    }
}

/// The outbox relay's configuration.
///
/// ```yaml
/// url: ${env:PG_URL}
/// table: public.outbox_events   # default
/// slot: gearbox_outbox
/// publication: gearbox_outbox   # created FOR TABLE <table> WITH (publish = 'insert') if missing
/// on_ack: mark_published        # default | delete
/// columns: {id: id, aggregate_type: aggregate_type, ...}  # defaults: the seed's names
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// The connection URL; the user needs `REPLICATION` and `UPDATE`/`DELETE` on the table.
    pub url: String,
    /// The outbox table, `schema.table`.
    #[serde(default = "default_table")]
    pub table: String,
    /// The replication slot.
    pub slot: String,
    /// The publication.
    pub publication: String,
    /// Column names.
    #[serde(default)]
    pub columns: OutboxColumns,
    /// What `ack` does with the rows.
    #[serde(default)]
    pub on_ack: OnAck,
    /// Longest time between two standby status updates.
    #[serde(default = "default_status_interval_ms")]
    pub status_interval_ms: u64,
    /// Lag, in bytes, past which a warning is logged.
    #[serde(default)]
    pub lag_bytes_warn: Option<u64>,
    /// Lag, in bytes, past which `on_lag_max` applies (the CDC source's guard).
    #[serde(default)]
    pub lag_bytes_max: Option<u64>,
    /// What happens past `lag_bytes_max`: `warn`, `pause` or `drop_slot`.
    #[serde(default)]
    pub on_lag_max: OnLagMax,
}

fn default_table() -> String {
    "public.outbox_events".into()
}
fn default_status_interval_ms() -> u64 {
    STATUS_INTERVAL_MS_DEFAULT
}

impl OutboxConfig {
    /// Every problem in the configuration, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        check_url(&mut errors, &self.url);
        check_name(&mut errors, "slot", &self.slot);
        check_name(&mut errors, "publication", &self.publication);
        if split_table(&self.table).is_none() {
            errors.push(("table".into(), "must be schema.table".into()));
        }
        let c = &self.columns;
        for (name, value) in [
            ("id", &c.id),
            ("aggregate_type", &c.aggregate_type),
            ("aggregate_id", &c.aggregate_id),
            ("event_type", &c.event_type),
            ("payload", &c.payload),
            ("created_at", &c.created_at),
            ("published_at", &c.published_at),
        ] {
            if value.is_empty() || value.len() > super::cdc::NAME_BYTES_MAX || value.contains('\0')
            {
                errors.push((format!("columns.{name}"), "must be a column name".into()));
            }
        }
        if !(STATUS_INTERVAL_MS_MIN..=STATUS_INTERVAL_MS_MAX).contains(&self.status_interval_ms) {
            errors.push((
                "status_interval_ms".into(),
                format!("must be {STATUS_INTERVAL_MS_MIN} to {STATUS_INTERVAL_MS_MAX}"),
            ));
        }
        check_lag_guard(
            &mut errors,
            self.lag_bytes_warn,
            self.lag_bytes_max,
            self.on_lag_max,
        );
        errors
    }
}

struct OutboxMapper {
    schema: String,
    table: String,
    columns: OutboxColumns,
}

/// Postgres's text of a `timestamp` (as UTC) or `timestamptz`, in RFC 3339.
fn rfc3339(text: &str) -> Option<String> {
    if let Ok(t) = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        );
    }
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| {
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        })
}

impl OutboxMapper {
    /// The event of a row, given its columns by name; `None` for a row already published.
    fn event(
        &self,
        get: &dyn Fn(&str) -> Option<String>,
        fallback_id: &str,
    ) -> Option<(Value, Option<String>)> {
        let c = &self.columns;
        if get(&c.published_at).is_some() {
            return None;
        }
        let mut problems = Vec::new();
        let mut required = |name: &str, fallback: &str| {
            get(name).unwrap_or_else(|| {
                problems.push(format!("{name} is NULL"));
                fallback.to_string()
            })
        };
        let row_id = get(&c.id);
        let id = required(&c.id, fallback_id);
        let ty = required(&c.event_type, "outbox.unknown");
        let aggregate_type = required(&c.aggregate_type, "unknown");
        let mut event = json!({
            "specversion": "1.0",
            "id": id,
            "source": aggregate_type,
            "type": ty,
            "aggregatetype": aggregate_type,
            "datacontenttype": "application/json",
            "data": get(&c.payload).map_or(Value::Null, |p| pgoutput::text_to_json(pgoutput::oid::JSONB, &p)),
        });
        if let Some(agg) = get(&c.aggregate_id) {
            event["subject"] = Value::String(agg.clone());
            event["partitionkey"] = Value::String(agg);
        }
        match get(&c.created_at).map(|t| (rfc3339(&t), t)) {
            Some((Some(time), _)) => event["time"] = Value::String(time),
            Some((None, raw)) => {
                problems.push(format!("{} {raw:?} is not a timestamp", c.created_at))
            }
            None => {}
        }
        if !problems.is_empty() {
            event["outboxerror"] = Value::String(problems.join("; "));
        }
        Some((event, row_id))
    }
}

impl Mapper for OutboxMapper {
    fn change(&self, c: &Change<'_>) -> Option<(Value, Option<String>)> {
        let rel = &c.rel.rel;
        if c.op != 'c' || rel.namespace != self.schema || rel.name != self.table {
            return None;
        }
        let new = c.new?;
        let get = |name: &str| {
            let i = rel.columns.iter().position(|col| col.name == name)?;
            match new.get(i)? {
                ColumnValue::Text(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        };
        self.event(&get, &c.id)
    }

    fn snapshot_sql(&self, qualified_table: &str) -> String {
        format!(
            "SELECT * FROM {qualified_table} WHERE {} IS NULL ORDER BY {}, {}",
            quote_ident(&self.columns.published_at),
            quote_ident(&self.columns.created_at),
            quote_ident(&self.columns.id)
        )
    }

    fn snapshot_row(&self, r: &SnapRow<'_>) -> Option<(Value, Option<String>)> {
        let get = |name: &str| {
            r.columns
                .iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.map(str::to_string))
        };
        self.event(&get, &r.id)
    }
}

/// The outbox relay source.
pub struct PostgresOutbox {
    engine: Engine<OutboxMapper>,
    table: String,
    publication: String,
    on_ack: OnAck,
    /// Ids acknowledged but not yet marked (a failed update).
    unmarked: Vec<String>,
    /// `UPDATE`/`DELETE` statement, built at open (it needs the id column's type).
    mark_sql: Option<String>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("table", &self.table)
            .field("slot", &self.engine.slot())
            .finish_non_exhaustive()
    }
}

impl PostgresOutbox {
    /// Builds the relay from a resolved configuration.
    ///
    /// # Errors
    /// The first problem [`OutboxConfig::validate`] finds, naming its field.
    pub fn new(config: OutboxConfig) -> Result<PostgresOutbox, CdcConfigError> {
        let pg = checked_connection(config.validate(), &config.url)?;
        let (schema, table) = split_table(&config.table).ok_or_else(|| CdcConfigError {
            field: "table".into(),
            message: "must be schema.table".into(),
        })?;
        let engine = Engine::new(
            EngineConfig {
                pg,
                slot: config.slot.clone(),
                publication: config.publication.clone(),
                snapshot: true,
                create_slot: true,
                lag_bytes_warn: config.lag_bytes_warn,
                lag_bytes_max: config.lag_bytes_max,
                on_lag_max: config.on_lag_max,
                status_interval_ms: config.status_interval_ms,
                application_name: format!("gearbox-outbox-{}", config.slot),
            },
            OutboxMapper {
                schema,
                table,
                columns: config.columns,
            },
        );
        Ok(PostgresOutbox {
            engine,
            table: config.table,
            publication: config.publication,
            on_ack: config.on_ack,
            unmarked: Vec::new(),
            mark_sql: None,
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

    /// Closes the connections. The slot stays, so a later `open` resumes.
    pub fn close(&mut self) {
        self.engine.shutdown();
    }

    fn qualified(&self) -> String {
        let (s, t) = split_table(&self.table).unwrap_or_default();
        format!("{}.{}", quote_ident(&s), quote_ident(&t))
    }

    async fn mark(&mut self) -> Result<(), SourceError> {
        if self.unmarked.is_empty() {
            return Ok(());
        }
        let Some(sql) = self.mark_sql.clone() else {
            return Err(SourceError::transient("the outbox relay is not open"));
        };
        let n = self.unmarked.len().min(MARK_IDS_MAX);
        let ids: Vec<String> = self.unmarked[..n].to_vec();
        let client = self.engine.client().await?;
        client
            .execute(&sql, &[&ids])
            .await
            .map_err(|e| pg_error("marking outbox rows", &e))?;
        self.unmarked.drain(..n);
        Ok(())
    }
}

impl Source for PostgresOutbox {
    fn kind(&self) -> &'static str {
        "postgres_outbox"
    }

    fn gauges(&self) -> Vec<gearbox_connect::metrics::Gauge> {
        super::cdc::stat_gauges(&self.engine.stats)
    }

    async fn open(&mut self, cursor: Option<String>) -> Result<(), SourceError> {
        let qualified = self.qualified();
        let id_column = self.engine.mapper.columns.id.clone();
        let published_column = self.engine.mapper.columns.published_at.clone();
        let client = self.engine.client().await?;
        let id_type: String = client
            .query_opt(
                "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attname = $2 AND NOT attisdropped",
                &[&qualified, &id_column],
            )
            .await
            .map_err(|e| pg_error("reading the outbox table", &e))?
            .ok_or_else(|| SourceError::Fatal {
                message: format!("the outbox table {} has no column {id_column}", self.table),
            })?
            .get(0);
        let id = quote_ident(&id_column);
        self.mark_sql = Some(match self.on_ack {
            OnAck::MarkPublished => format!(
                "UPDATE {qualified} SET {} = now() WHERE {id} = ANY($1::text[]::{id_type}[])",
                quote_ident(&published_column)
            ),
            OnAck::Delete => {
                format!("DELETE FROM {qualified} WHERE {id} = ANY($1::text[]::{id_type}[])")
            }
        });
        ensure_publication(
            client,
            &self.publication,
            std::slice::from_ref(&self.table),
            " WITH (publish = 'insert')",
        )
        .await?;
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
        let mut token = Engine::<OutboxMapper>::token(token);
        if let Some(t) = token.as_mut() {
            self.unmarked.append(&mut t.keys);
        }
        let marked = self.mark().await;
        if let Err(e) = &marked {
            tracing::warn!(error = %e, unmarked = self.unmarked.len(), "marking outbox rows failed; retried with the next acknowledgement");
        }
        self.engine.ack(token).await?;
        marked
    }

    async fn nack(&mut self, token: Option<AckToken>, _error: &str) {
        self.engine.nack(Engine::<OutboxMapper>::token(token)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapper() -> OutboxMapper {
        OutboxMapper {
            schema: "s".into(),
            table: "outbox_events".into(),
            columns: OutboxColumns::default(),
        }
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, Option<String>)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.map(str::to_string)))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        }
    }

    #[test]
    fn rows_map_to_cloudevents() {
        let get = row(&[
            ("id", Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")),
            ("aggregate_type", Some("order")),
            ("aggregate_id", Some("o-1")),
            ("event_type", Some("OrderPlaced")),
            ("payload", Some(r#"{"total": 12.5}"#)),
            ("created_at", Some("2026-01-02 03:04:05.123456")),
            ("published_at", None),
        ]);
        let (event, key) = mapper().event(&get, "x").unwrap();
        assert_eq!(
            event,
            json!({
                "specversion": "1.0", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "source": "order",
                "type": "OrderPlaced", "aggregatetype": "order", "subject": "o-1", "partitionkey": "o-1",
                "time": "2026-01-02T03:04:05.123456Z", "datacontenttype": "application/json",
                "data": {"total": 12.5},
            })
        );
        assert_eq!(key.as_deref(), Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert!(
            mapper()
                .event(&row(&[("published_at", Some("2026-01-01 00:00:00"))]), "x")
                .is_none()
        );
        let (bad, key) = mapper()
            .event(&row(&[("aggregate_type", Some("order"))]), "0/1/0")
            .unwrap();
        assert_eq!(bad["id"], "0/1/0");
        assert!(key.is_none());
        assert!(
            bad["outboxerror"]
                .as_str()
                .unwrap()
                .contains("event_type is NULL")
        );
    }

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(
            rfc3339("2026-01-02 03:04:05").as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert_eq!(
            rfc3339("2026-01-02 03:04:05.5+02").as_deref(),
            Some("2026-01-02T01:04:05.500Z")
        );
        assert_eq!(rfc3339("yesterday"), None);
    }

    #[test]
    fn validation_names_fields() {
        let c: OutboxConfig = serde_json::from_value(json!({
            "url": "postgres://postgres@h/db", "slot": "s", "publication": "p",
            "table": "nodot", "columns": {"id": ""}
        }))
        .unwrap();
        let paths: Vec<String> = c.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["table", "columns.id"]);
        assert_eq!(PostgresOutbox::new(c).unwrap_err().field, "table");
        let e = serde_json::from_value::<OutboxConfig>(
            json!({"url": "u", "slot": "s", "publication": "p", "on_ack": "archive"}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("archive"));
        // The lag guard is the CDC source's, checked the same way.
        let guard = |v: serde_json::Value| {
            let mut c = json!({"url": "postgres://postgres@h/db", "slot": "s", "publication": "p"});
            for (k, x) in v.as_object().unwrap() {
                c[k] = x.clone();
            }
            let c: OutboxConfig = serde_json::from_value(c).unwrap();
            c.validate().into_iter().map(|(p, _)| p).collect::<Vec<_>>()
        };
        assert_eq!(guard(json!({"on_lag_max": "pause"})), ["on_lag_max"]);
        assert_eq!(
            guard(json!({"lag_bytes_warn": 10, "lag_bytes_max": 5})),
            ["lag_bytes_warn"]
        );
        assert!(guard(json!({"lag_bytes_max": 1000, "on_lag_max": "drop_slot"})).is_empty());
    }
}
