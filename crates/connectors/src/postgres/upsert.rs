//! The upsert sink: builds a table from a topic by a business key, effectively-once.
//!
//! # Delivery contract
//!
//! It is a [`TransactionalSink`]: the runtime reads the topic in offset order per partition from
//! the positions this sink stores in Postgres, and every batch is one transaction that upserts
//! the rows *and* stores the positions after the batch (in `positions_table`, one row per sink,
//! topic and partition). A crash before `COMMIT` leaves rows and positions as they were; a crash
//! after it leaves both. So a batch is never lost and never applied twice, whatever the log
//! delivers again (duplicates in the topic, a redelivery after a crash, a replay from offset 0
//! are all just events).
//!
//! # The statement
//!
//! One round trip per batch. The batch goes as one `jsonb` array parameter, unpacked with
//! `jsonb_to_recordset` into the table's own column types (read from the catalog at start), so
//! Postgres does every conversion and a bad value is a data error naming the column:
//!
//! ```sql
//! INSERT INTO silver.orders AS t (order_id, customer_id, amount_cents, event_time)
//! SELECT DISTINCT ON (order_id) order_id, customer_id, amount_cents, event_time
//!   FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS (order_id text, customer_id text, ...))
//!        WITH ORDINALITY AS r(order_id, customer_id, amount_cents, event_time, gearbox_ord)
//!  ORDER BY order_id, event_time DESC NULLS LAST, gearbox_ord DESC  -- `event_time`: `version`
//! ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, ...
//!   WHERE t.event_time <= EXCLUDED.event_time   -- only with `version`
//! ```
//!
//! `INSERT … ON CONFLICT` rather than `MERGE`: it needs a unique index on the key (which an
//! upsert by key wants anyway), works on every supported Postgres, and is atomic against
//! concurrent writers, which `MERGE` on 15 is not (it can fail with a unique violation when two
//! sessions insert the same new key).
//!
//! Within a batch, `DISTINCT ON` keeps one row per key (the newest `version`, then the last in
//! log order), because one `INSERT … ON CONFLICT` may not touch a row twice. Postgres chooses it
//! on the typed values, so keys and versions compare as the columns do (`1` and `"1"` for an
//! integer key are one key; `"10"` is newer than `"9"` for a `bigint` version), exactly as the
//! guard below compares them.
//!
//! # Late and out-of-order events
//!
//! With `version` naming a column (a timestamp or a counter), an event whose version is older
//! than the row's does not overwrite it (`WHERE t.version <= EXCLUDED.version`; equal versions
//! apply, so a replay rewrites the same values). Without it, the last event in log order wins.
//! `update: []` makes the first write win (`DO NOTHING`), the seed's `MERGE … WHEN MATCHED`
//! behaviour for its insert-only columns.
//!
//! # Failures
//!
//! Connection loss, serialization failures, deadlocks and server shutdowns are transient: the
//! runtime retries the same batch with backoff, reconnecting first. So are schema and permission
//! errors (SQLSTATE classes 42 and 28, a missing table or column): no event causes them, and
//! dead-lettering would drain the stream, so the batch waits (breaker open, health `error`)
//! until an operator fixes the table or the grant. Errors one event causes (classes 21, 22, 23:
//! a value that does not convert, a constraint it breaks) are permanent: the runtime narrows the
//! batch down to that event and dead-letters it. An event missing a key field never reaches the
//! database ([`TransactionalSink::check`]).

use gearbox_connect::secret;
use gearbox_connect::sink::{SinkError, SinkRecord, TransactionalSink};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::{Client, NoTls, Statement};

/// Columns a mapping may name.
pub const COLUMNS_MAX: usize = 256;
/// Key columns.
pub const KEY_COLUMNS_MAX: usize = 16;
/// Default name of the positions table.
pub const POSITIONS_TABLE_DEFAULT: &str = "gearbox_sink_positions";
/// How long connecting may take.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The name the statement gives each row's position in the batch; no mapped column may have it.
pub const ORDINAL_COLUMN: &str = "gearbox_ord";

/// The sink's section: `sink: {postgres_upsert: {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsertConfig {
    /// `postgres://user[:password]@host[:port]/database` (or a key=value connection string).
    pub url: String,
    /// The table, optionally schema-qualified (`silver.orders`).
    pub table: String,
    /// Column → where its value is in the event (after transforms): `id`, `time`, `type`,
    /// `source`, `subject`, an extension, or a path into it such as `data.order_id`.
    pub columns: BTreeMap<String, String>,
    /// The business key: columns with a unique index over exactly them.
    pub key: Vec<String>,
    /// A column that orders versions of a row; an older event does not overwrite a newer row.
    #[serde(default)]
    pub version: Option<String>,
    /// Columns updated when the key exists (default: every mapped non-key column; `[]`: the first
    /// write wins).
    #[serde(default)]
    pub update: Option<Vec<String>>,
    /// Where the positions are stored (created if missing).
    #[serde(default)]
    pub positions_table: Option<String>,
}

impl UpsertConfig {
    /// Problems, as (field, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &str, reason: String| out.push((field.to_string(), reason));
        if !secret::is_reference(&self.url)
            && let Err(e) = self.url.parse::<tokio_postgres::Config>()
        {
            bad("url", format!("not a Postgres connection string: {e}"));
        }
        if let Err(e) = parse_table(&self.table) {
            bad("table", e);
        }
        if self.columns.is_empty() || self.columns.len() > COLUMNS_MAX {
            bad("columns", format!("map 1 to {COLUMNS_MAX} columns"));
        }
        for (column, path) in &self.columns {
            if let Err(e) = ident(column) {
                bad(&format!("columns.{column}"), e);
            }
            if column == ORDINAL_COLUMN {
                bad(
                    &format!("columns.{column}"),
                    format!("{ORDINAL_COLUMN:?} is reserved by the sink's statement"),
                );
            }
            if let Err(e) = parse_path(path) {
                bad(&format!("columns.{column}"), e);
            }
        }
        if self.key.is_empty() || self.key.len() > KEY_COLUMNS_MAX {
            bad("key", format!("name 1 to {KEY_COLUMNS_MAX} key columns"));
        }
        for (i, k) in self.key.iter().enumerate() {
            if !self.columns.contains_key(k) {
                bad(
                    &format!("key[{i}]"),
                    format!("{k:?} is not a mapped column"),
                );
            }
        }
        if let Some(v) = &self.version
            && !self.columns.contains_key(v)
        {
            bad("version", format!("{v:?} is not a mapped column"));
        }
        if let (Some(v), Some(update)) = (&self.version, &self.update)
            && !update.is_empty()
            && !update.contains(v)
        {
            bad(
                "update",
                format!(
                    "must include the version column {v:?}, or the guard keeps comparing \
                     against a version that never moves"
                ),
            );
        }
        for (i, c) in self.update.iter().flatten().enumerate() {
            if !self.columns.contains_key(c) || self.key.contains(c) {
                bad(
                    &format!("update[{i}]"),
                    format!("{c:?} is not a mapped non-key column"),
                );
            }
        }
        if let Some(t) = &self.positions_table
            && let Err(e) = parse_table(t)
        {
            bad("positions_table", e);
        }
        out
    }
}

/// The sink.
pub struct PostgresUpsert {
    config: UpsertConfig,
    pg: tokio_postgres::Config,
    /// This sink's name in the positions table (the pipeline name) and the topic it reads.
    sink: String,
    topic: String,
    paths: Vec<(String, Vec<String>)>,
    conn: Option<Conn>,
}

struct Conn {
    client: Client,
    upsert: Statement,
    positions: Statement,
}

impl std::fmt::Debug for PostgresUpsert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresUpsert")
            .field("table", &self.config.table)
            .field("sink", &self.sink)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl PostgresUpsert {
    /// A sink for pipeline `sink` reading `topic`.
    ///
    /// # Errors
    /// The first problem [`UpsertConfig::validate`] finds, as `field: reason`.
    pub fn new(config: UpsertConfig, sink: &str, topic: &str) -> Result<PostgresUpsert, String> {
        if let Some((field, reason)) = config.validate().into_iter().next() {
            return Err(format!("{field}: {reason}"));
        }
        let mut pg = super::connection_config(&config.url).map_err(|e| format!("url: {e}"))?;
        pg.connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS));
        pg.application_name("gearbox-upsert");
        let paths = config
            .columns
            .iter()
            .map(|(c, p)| (c.clone(), parse_path(p).expect("validated")))
            .collect();
        Ok(PostgresUpsert {
            config,
            pg,
            sink: sink.to_string(),
            topic: topic.to_string(),
            paths,
            conn: None,
        })
    }

    async fn conn(&mut self) -> Result<&mut Conn, SinkError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let (client, connection) = self.pg.connect(NoTls).await.map_err(classify)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgres upsert connection ended");
                }
            });
            let (upsert, positions) = self.prepare(&client).await?;
            self.conn = Some(Conn {
                client,
                upsert,
                positions,
            });
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Creates the positions table if missing and prepares the two statements, built from the
    /// catalog.
    async fn prepare(&self, client: &Client) -> Result<(Statement, Statement), SinkError> {
        let positions_table = self
            .config
            .positions_table
            .as_deref()
            .unwrap_or(POSITIONS_TABLE_DEFAULT);
        let positions = quote_table(&parse_table(positions_table).map_err(permanent)?);
        let created = client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {positions} (sink text NOT NULL, topic text NOT NULL, \
                 partition integer NOT NULL, next_offset bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (sink, topic, partition))"
            ))
            .await;
        match created {
            Ok(()) => {}
            // Two sinks sharing the table, starting together: `IF NOT EXISTS` is not atomic in
            // Postgres, and the loser of the race gets a unique violation on the catalog (or
            // "already exists"). The table is there either way.
            Err(e)
                if e.as_db_error()
                    .is_some_and(|db| matches!(db.code().code(), "23505" | "42P07")) => {}
            Err(e) => return Err(classify(e)),
        }
        let (schema, name) = parse_table(&self.config.table).map_err(permanent)?;
        let rows = client
            .query(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) \
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relname = $1 AND n.nspname = coalesce($2, current_schema()) \
                   AND a.attnum > 0 AND NOT a.attisdropped",
                &[&name, &schema],
            )
            .await
            .map_err(classify)?;
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        // Schema problems wait for an operator (transient), like the server's errors 42.
        let schema_problem = |message: String| SinkError::Transient {
            message,
            retry_after_ms: None,
        };
        if types.is_empty() {
            return Err(schema_problem(format!(
                "table: {} does not exist (or is not visible to this user)",
                self.config.table
            )));
        }
        let mut defs = Vec::new();
        for column in self.config.columns.keys() {
            let Some(ty) = types.get(column) else {
                return Err(schema_problem(format!(
                    "columns.{column}: {} has no column {column:?}",
                    self.config.table
                )));
            };
            defs.push(format!("{} {ty}", quote(column)));
        }
        let cols: Vec<String> = self.config.columns.keys().map(|c| quote(c)).collect();
        let key: Vec<String> = self.config.key.iter().map(|c| quote(c)).collect();
        let update: Vec<&String> = match &self.config.update {
            Some(u) => u.iter().collect(),
            None => self
                .config
                .columns
                .keys()
                .filter(|c| !self.config.key.contains(c))
                .collect(),
        };
        let action = if update.is_empty() {
            "DO NOTHING".to_string()
        } else {
            let set: Vec<String> = update
                .iter()
                .map(|c| format!("{0} = EXCLUDED.{0}", quote(c)))
                .collect();
            let guard = self.config.version.as_ref().map_or(String::new(), |v| {
                format!(" WHERE t.{0} IS NULL OR t.{0} <= EXCLUDED.{0}", quote(v))
            });
            format!("DO UPDATE SET {}{guard}", set.join(", "))
        };
        // One row per key, chosen by Postgres on the typed values (so `1`, `1.0` and `"1"` for an
        // integer key are one key, and versions compare as the column's type does): the newest
        // version, then the last in log order.
        let newest = self
            .config
            .version
            .as_ref()
            .map_or(String::new(), |v| format!("{} DESC NULLS LAST, ", quote(v)));
        let upsert = format!(
            "INSERT INTO {table} AS t ({cols}) SELECT DISTINCT ON ({key}) {cols} \
             FROM ROWS FROM (jsonb_to_recordset($1::jsonb) AS ({defs})) \
             WITH ORDINALITY AS r({cols}, {ORDINAL_COLUMN}) \
             ORDER BY {key}, {newest}{ORDINAL_COLUMN} DESC \
             ON CONFLICT ({key}) {action}",
            table = quote_table(&(schema, name)),
            cols = cols.join(", "),
            defs = defs.join(", "),
            key = key.join(", "),
        );
        let positions = format!(
            "INSERT INTO {positions} (sink, topic, partition, next_offset) \
             SELECT $1, $2, p, o FROM unnest($3::integer[], $4::bigint[]) AS u(p, o) \
             ON CONFLICT (sink, topic, partition) DO UPDATE \
             SET next_offset = EXCLUDED.next_offset, updated_at = now()"
        );
        // Prepared once per connection: a schema problem shows at start and not mid-stream, and
        // each batch saves the round trips of parsing them again.
        let upsert = client.prepare(&upsert).await.map_err(classify)?;
        let positions = client.prepare(&positions).await.map_err(classify)?;
        Ok((upsert, positions))
    }

    /// The row for a record: column → JSON value.
    fn row(&self, record: &SinkRecord) -> Result<Map<String, Value>, String> {
        let mut row = Map::new();
        for (column, path) in &self.paths {
            let value = lookup(&record.value, path).cloned().unwrap_or(Value::Null);
            if value.is_null() && self.config.key.contains(column) {
                return Err(format!(
                    "key column {column:?}: the event has no `{}`",
                    path.join(".")
                ));
            }
            row.insert(column.clone(), value);
        }
        Ok(row)
    }

    /// The rows of a batch, in log order (Postgres keeps one per key, see `prepare`).
    fn rows(&self, batch: &[SinkRecord]) -> Result<Vec<Value>, SinkError> {
        batch
            .iter()
            .map(|r| self.row(r).map(Value::Object).map_err(permanent))
            .collect()
    }
}

impl TransactionalSink for PostgresUpsert {
    fn kind(&self) -> &'static str {
        "postgres_upsert"
    }

    async fn positions(&mut self) -> Result<Vec<(u32, u64)>, SinkError> {
        let (sink, topic) = (self.sink.clone(), self.topic.clone());
        let table = quote_table(
            &parse_table(
                self.config
                    .positions_table
                    .as_deref()
                    .unwrap_or(POSITIONS_TABLE_DEFAULT),
            )
            .map_err(permanent)?,
        );
        let conn = self.conn().await?;
        let rows = conn
            .client
            .query(
                &format!(
                    "SELECT partition, next_offset FROM {table} WHERE sink = $1 AND topic = $2"
                ),
                &[&sink, &topic],
            )
            .await
            .map_err(|e| self.drop_on(e))?;
        rows.iter()
            .map(|r| match (r.try_get::<_, i32>(0), r.try_get::<_, i64>(1)) {
                (Ok(p), Ok(o)) if p >= 0 && o >= 0 => Ok((p as u32, o as u64)),
                _ => Err(SinkError::Transient {
                    message: format!(
                        "positions_table: {table} does not have the sink's shape \
                         (partition integer, next_offset bigint, both non-negative)"
                    ),
                    retry_after_ms: None,
                }),
            })
            .collect()
    }

    fn check(&self, record: &SinkRecord) -> Result<(), String> {
        self.row(record).map(drop)
    }

    async fn apply(
        &mut self,
        batch: &[SinkRecord],
        positions: &[(u32, u64)],
    ) -> Result<(), SinkError> {
        let rows = self.rows(batch)?;
        let (sink, topic) = (self.sink.clone(), self.topic.clone());
        let partitions: Vec<i32> = positions.iter().map(|&(p, _)| p as i32).collect();
        let offsets: Vec<i64> = positions.iter().map(|&(_, o)| o as i64).collect();
        let conn = self.conn().await?;
        let result = async {
            let tx = conn.client.transaction().await?;
            if !rows.is_empty() {
                tx.execute(&conn.upsert, &[&Value::Array(rows)]).await?;
            }
            tx.execute(&conn.positions, &[&sink, &topic, &partitions, &offsets])
                .await?;
            tx.commit().await
        }
        .await;
        result.map_err(|e| self.drop_on(e))
    }
}

impl PostgresUpsert {
    /// Classifies an error, dropping the connection when it is not a plain statement error (a
    /// later call reconnects).
    fn drop_on(&mut self, e: tokio_postgres::Error) -> SinkError {
        if e.as_db_error().is_none() {
            self.conn = None;
        }
        classify(e)
    }
}

fn permanent(message: impl Into<String>) -> SinkError {
    SinkError::Permanent {
        message: message.into(),
    }
}

/// Errors one event causes (data exceptions, 22; integrity violations, 23; cardinality, 21) are
/// permanent: the runtime finds that event and dead-letters it. Everything else is transient,
/// including schema and permission errors (42, 28): no event causes those, so dead-lettering
/// would drain the stream; the batch waits, with backoff and an open breaker, until an operator
/// fixes the table or the grant.
fn classify(e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db)
            if ["21", "22", "23"]
                .iter()
                .any(|c| db.code().code().starts_with(c)) =>
        {
            let mut message = format!("{} ({})", db.message(), db.code().code());
            if let Some(column) = db.column() {
                message.push_str(&format!(", column {column}"));
            }
            if let Some(detail) = db.detail() {
                message.push_str(&format!(": {detail}"));
            }
            permanent(message)
        }
        Some(db) => SinkError::Transient {
            message: format!("{} ({})", db.message(), db.code().code()),
            retry_after_ms: None,
        },
        None => SinkError::Transient {
            message: format!("postgres: {e}"),
            retry_after_ms: None,
        },
    }
}

fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match v {
        Value::Object(m) => m.get(step),
        Value::Array(a) => step.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// `data.order_id` (a leading `.` is allowed, jq style) → its steps.
fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let p = path.strip_prefix('.').unwrap_or(path);
    if p.is_empty() {
        return Err(format!("{path:?} is an empty path"));
    }
    let steps: Vec<String> = p.split('.').map(str::to_owned).collect();
    if steps.iter().any(String::is_empty) {
        return Err(format!("{path:?} has an empty step"));
    }
    Ok(steps)
}

/// A plain SQL identifier: letters, digits and `_`, not starting with a digit, at most 63 bytes.
fn ident(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a plain identifier (letters, digits, `_`, at most 63 bytes)"
        ))
    }
}

fn parse_table(s: &str) -> Result<(Option<String>, String), String> {
    let parts: Vec<&str> = s.split('.').collect();
    match parts.as_slice() {
        [t] => ident(t).map(|()| (None, (*t).to_string())),
        [sc, t] => {
            ident(sc)?;
            ident(t)?;
            Ok((Some((*sc).to_string()), (*t).to_string()))
        }
        _ => Err(format!("{s:?} is not `table` or `schema.table`")),
    }
}

fn quote(s: &str) -> String {
    format!("\"{s}\"")
}

fn quote_table((schema, name): &(Option<String>, String)) -> String {
    match schema {
        Some(s) => format!("{}.{}", quote(s), quote(name)),
        None => quote(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> UpsertConfig {
        let mut v = json!({
            "url": "postgres://postgres@127.0.0.1/test",
            "table": "silver.orders",
            "columns": {"order_id": "data.order_id", "amount_cents": ".data.amount_cents", "event_time": "time"},
            "key": ["order_id"],
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn record(value: Value, offset: u64) -> SinkRecord {
        SinkRecord {
            id: format!("e{offset}"),
            value,
            attempt: 1,
            partition: 0,
            offset,
            time_ms: None,
            traceparent: None,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(config(json!({})).validate().is_empty());
        let fields = |c: UpsertConfig| c.validate().into_iter().map(|(f, _)| f).collect::<Vec<_>>();
        assert_eq!(fields(config(json!({"key": ["nope"]}))), ["key[0]"]);
        assert_eq!(fields(config(json!({"version": "nope"}))), ["version"]);
        assert_eq!(fields(config(json!({"table": "a.b.c"}))), ["table"]);
        assert_eq!(fields(config(json!({"table": "x; drop"}))), ["table"]);
        assert_eq!(
            fields(config(json!({"update": ["order_id"]}))),
            ["update[0]"]
        );
        assert_eq!(
            fields(config(json!({"columns": {"order_id": "data..x"}}))),
            ["columns.order_id"]
        );
        assert_eq!(fields(config(json!({"url": "::nope::"}))), ["url"]);
    }

    #[test]
    fn a_record_without_its_key_is_refused_naming_it() {
        let sink = PostgresUpsert::new(config(json!({})), "p", "t").unwrap();
        let e = sink
            .check(&record(json!({"data": {"amount_cents": 1}}), 0))
            .unwrap_err();
        assert!(e.contains("order_id") && e.contains("data.order_id"), "{e}");
        assert!(
            sink.check(&record(json!({"data": {"order_id": "o1"}}), 0))
                .is_ok()
        );
    }

    #[test]
    fn the_version_column_must_be_updated_when_update_is_listed() {
        let c = config(json!({"version": "event_time", "update": ["amount_cents"]}));
        let fields: Vec<String> = c.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["update"]);
        let c = config(json!({"version": "event_time", "update": ["amount_cents", "event_time"]}));
        assert!(c.validate().is_empty());
        let c = config(json!({"columns": {"order_id": "data.order_id", "gearbox_ord": "id"}}));
        let fields: Vec<String> = c.validate().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["columns.gearbox_ord"]);
    }
}
