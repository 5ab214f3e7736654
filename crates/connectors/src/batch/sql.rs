//! The `sql` batch source: a query over Postgres or MariaDB/MySQL, re-run on a schedule from a
//! watermark, each row an event.
//!
//! # The watermark
//!
//! The query holds `:watermark` (outside string literals and quoted identifiers), which is sent
//! as a bound parameter (`$1` for Postgres, `?` for MariaDB), never spliced into the text:
//!
//! ```sql
//! SELECT id, sku, qty, updated_at FROM stock WHERE updated_at >= :watermark
//! ```
//!
//! `watermark.column` names the result column that moves it, of `kind` `timestamp` (stored as
//! RFC 3339 UTC with microseconds) or `integer`. A run binds `stored - overlap` (the first run
//! binds `initial`, default the epoch or 0), and the watermark it reaches is the largest value of
//! the column it read, never less than where it started. So with `>=`:
//! - rows whose value equals the stored watermark (a second row committed in the same
//!   microsecond, after the run that reached it) are read again;
//! - *late* rows, committed after a run but carrying a value up to `overlap` below its
//!   watermark (a long transaction that took its `now()` early), are read by the next run;
//! - rows read again are the same events (their ids come from the key and version), which the
//!   log drops as duplicates, unless the row changed (a new version is a new event).
//!
//! A row later than `overlap` is missed: the overlap is the bound on lateness the source
//! guarantees, so choose it above the longest transaction that writes the table.
//!
//! # Rows and types
//!
//! Rows are streamed (Postgres: the extended protocol's row stream, which the connection task
//! stops reading while the job's buffer is full; MariaDB: the binary-protocol result set read
//! row by row) through a channel of [`ROWS_BUFFER`] rows, so a run of any size holds a bounded
//! number of rows. Columns become JSON: integers and floats as numbers (a non-finite float as
//! its text), `numeric`/`decimal` as a **string** (exact; a JSON number would lose digits),
//! text as strings, booleans, `timestamp`/`timestamptz`/`datetime` as RFC 3339 UTC (a zoneless
//! value is taken as UTC; MariaDB sessions run in `+00:00`), `date` as `YYYY-MM-DD`, `time` as
//! `HH:MM:SS.ffffff`, `json`/`jsonb` as JSON (MariaDB's `JSON` is text and stays a string),
//! `uuid` as text, `bytea` and binary strings as base64, NULL as null. A Postgres column of
//! another type is a fatal error naming it, before any row is read (cast it in the query).
//!
//! A row whose key or version field is null or missing, whose watermark column is null, or that
//! is longer than [`ROW_BYTES_MAX`] as JSON, is rejected as `query row N` (counted from 1 in the
//! run) with the field, and dead-lettered; the run goes on.
//!
//! # Errors
//!
//! Connection failures, lost connections and server shutdowns are transient (the run is retried
//! from its starting watermark). Bad SQL, a missing column or a bad parameter type is fatal with
//! the server's message: the pipeline stops until the query is fixed.

use super::{default_source, draft, nested, rejected};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use gearbox_connect::batch::{BatchJob, Item, RowShape};
use gearbox_connect::schedule::ScheduleConfig;
use gearbox_connect::source::SourceError;
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use tokio::sync::mpsc;

/// Rows buffered between the reading task and the run.
pub const ROWS_BUFFER: usize = 256;
/// Longest row as JSON, in bytes.
pub const ROW_BYTES_MAX: usize = 1024 * 1024;
/// Longest query text, in bytes.
pub const QUERY_BYTES_MAX: usize = 64 * 1024;
/// Most `:watermark` placeholders in a query.
pub const PLACEHOLDERS_MAX: usize = 16;
/// Largest timestamp overlap, in ms (a week).
pub const OVERLAP_MS_MAX: u64 = 7 * 86_400_000;
/// How long connecting may take, in ms.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The placeholder.
pub const PLACEHOLDER: &str = ":watermark";

/// What the watermark column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkKind {
    /// A timestamp.
    Timestamp,
    /// A 64-bit integer (a sequence, a revision).
    Integer,
}

/// An overlap: `"5s"`, `"250ms"`, `"2m"`, `"1h"`, or a number (ms for timestamps, a count for
/// integers).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Overlap {
    /// Milliseconds, or a count.
    Number(u64),
    /// A duration with its unit.
    Text(String),
}

/// The watermark section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlWatermark {
    /// The result column that moves the watermark.
    pub column: String,
    /// Its kind.
    pub kind: WatermarkKind,
    /// Where the first run starts (default the epoch, or 0).
    #[serde(default)]
    pub initial: Option<Value>,
    /// How far below the stored watermark a run starts (default 0).
    #[serde(default)]
    pub overlap: Option<Overlap>,
}

/// The `sql` source's section.
///
/// ```yaml
/// sql:
///   url: ${env:STOCK_DB}     # postgres://, postgresql://, mysql:// or mariadb://
///   query: SELECT id, sku, qty, updated_at FROM stock WHERE updated_at >= :watermark
///   watermark: {column: updated_at, kind: timestamp, overlap: 5s}
///   schedule: {cron: "*/10 * * * * *"}
///   event: {key: [id], version: updated_at, type: stock.level}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The database URL, or a secret reference to one.
    pub url: String,
    /// The query, with `:watermark`.
    pub query: String,
    /// The watermark.
    pub watermark: SqlWatermark,
    /// When runs start.
    pub schedule: ScheduleConfig,
    /// How a row becomes an event.
    pub event: RowShape,
}

/// A watermark value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// A timestamp.
    Ts(DateTime<Utc>),
    /// An integer.
    Int(i64),
}

impl Mark {
    fn parse(kind: WatermarkKind, text: &str) -> Result<Mark, String> {
        match kind {
            WatermarkKind::Timestamp => DateTime::parse_from_rfc3339(text)
                .map(|t| Mark::Ts(t.with_timezone(&Utc)))
                .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp: {e}")),
            WatermarkKind::Integer => text
                .parse()
                .map(Mark::Int)
                .map_err(|_| format!("{text:?} is not an integer")),
        }
    }

    fn of_value(kind: WatermarkKind, v: &Value) -> Result<Mark, String> {
        match (kind, v) {
            (WatermarkKind::Integer, Value::Number(n)) => n
                .as_i64()
                .map(Mark::Int)
                .ok_or_else(|| format!("{n} is not a 64-bit integer")),
            (_, Value::String(s)) => Mark::parse(kind, s),
            (_, other) => Err(format!("{other} is not a {kind:?} watermark")),
        }
    }

    /// The stored form.
    #[must_use]
    pub fn text(&self) -> String {
        match self {
            Mark::Ts(t) => t.to_rfc3339_opts(SecondsFormat::Micros, true),
            Mark::Int(i) => i.to_string(),
        }
    }

    fn minus(self, overlap: u64) -> Mark {
        match self {
            Mark::Ts(t) => Mark::Ts(
                t.checked_sub_signed(chrono::Duration::milliseconds(overlap as i64))
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            ),
            Mark::Int(i) => Mark::Int(i.saturating_sub(overlap as i64)),
        }
    }
}

fn overlap_amount(kind: WatermarkKind, o: Option<&Overlap>) -> Result<u64, String> {
    match (kind, o) {
        (_, None) => Ok(0),
        (WatermarkKind::Timestamp, Some(Overlap::Number(ms))) => Ok(*ms),
        (WatermarkKind::Timestamp, Some(Overlap::Text(t))) => parse_duration_ms(t),
        (WatermarkKind::Integer, Some(Overlap::Number(n))) => Ok(*n),
        (WatermarkKind::Integer, Some(Overlap::Text(_))) => {
            Err("an integer watermark's overlap is a count".into())
        }
    }
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"` in ms.
fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5s or 250ms"))?;
    let scale = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m or h")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Postgres,
    Mysql,
}

fn dialect(url: &str) -> Option<Dialect> {
    let scheme = url.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "postgres" | "postgresql" => Some(Dialect::Postgres),
        "mysql" | "mariadb" => Some(Dialect::Mysql),
        _ => None,
    }
}

/// The query with each `:watermark` (outside quotes) replaced by `marker(n)` for the n-th one
/// (from 1); and how many there were.
#[must_use]
pub fn rewrite(query: &str, marker: impl Fn(usize) -> String) -> (String, usize) {
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut n = 0;
    let mut i = 0;
    let mut quote: Option<u8> = None;
    let mut last = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if b == b'\'' || b == b'"' || b == b'`' {
            quote = Some(b);
            i += 1;
            continue;
        }
        if query[i..].starts_with(PLACEHOLDER)
            && (i == 0 || bytes[i - 1] != b':')
            && !bytes
                .get(i + PLACEHOLDER.len())
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            n += 1;
            out.push_str(&query[last..i]);
            out.push_str(&marker(n));
            i += PLACEHOLDER.len();
            last = i;
            continue;
        }
        i += 1;
    }
    out.push_str(&query[last..]);
    (out, n)
}

impl SqlConfig {
    /// Every problem in the section, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !gearbox_connect::secret::is_reference(&self.url) && dialect(&self.url).is_none() {
            out.push((
                "url".into(),
                "must start with postgres://, postgresql://, mysql:// or mariadb:// (or be a \
                 secret reference)"
                    .into(),
            ));
        }
        if self.query.len() > QUERY_BYTES_MAX {
            out.push(("query".into(), format!("at most {QUERY_BYTES_MAX} bytes")));
        }
        let (_, n) = rewrite(&self.query, |_| String::new());
        if n == 0 {
            out.push((
                "query".into(),
                format!("must use {PLACEHOLDER} (bound as a parameter)"),
            ));
        }
        if n > PLACEHOLDERS_MAX {
            out.push((
                "query".into(),
                format!("at most {PLACEHOLDERS_MAX} uses of {PLACEHOLDER}"),
            ));
        }
        let w = &self.watermark;
        if w.column.is_empty() {
            out.push(("watermark.column".into(), "must not be empty".into()));
        }
        if let Some(v) = &w.initial
            && let Err(e) = Mark::of_value(w.kind, v)
        {
            out.push(("watermark.initial".into(), e));
        }
        match overlap_amount(w.kind, w.overlap.as_ref()) {
            Err(e) => out.push(("watermark.overlap".into(), e)),
            Ok(ms) if w.kind == WatermarkKind::Timestamp && ms > OVERLAP_MS_MAX => out.push((
                "watermark.overlap".into(),
                format!("at most {OVERLAP_MS_MAX} ms"),
            )),
            Ok(_) => {}
        }
        nested(&mut out, "schedule", self.schedule.validate());
        nested(&mut out, "event", self.event.validate());
        out
    }
}

/// Why a sql job could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SqlConfigError {
    /// The path below `source.sql`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// Where to connect, resolved.
#[derive(Debug, Clone)]
enum Target {
    Postgres(Box<tokio_postgres::Config>),
    Mysql(Box<mysql_async::Opts>),
}

/// A message from the reading task.
enum Msg {
    Row(Result<Map<String, Value>, String>),
    End,
    Failed(SourceError),
}

/// A run in progress: the reading task and its channel.
struct SqlRun {
    rx: mpsc::Receiver<Msg>,
    task: tokio::task::JoinHandle<()>,
    rows: u64,
    start: Mark,
    reached: Mark,
    done: bool,
}

impl Drop for SqlRun {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `sql` batch job.
pub struct SqlJob {
    config: SqlConfig,
    target: Target,
    query: String,
    placeholders: usize,
    overlap: u64,
    initial: Mark,
    source: String,
    run: Option<SqlRun>,
    reached: Option<Mark>,
}

impl std::fmt::Debug for SqlJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlJob")
            .field("query", &self.query)
            .field("reached", &self.reached)
            .finish_non_exhaustive()
    }
}

impl SqlJob {
    /// A job for `pipeline` (whose name makes the default event source). Resolves a secret URL.
    ///
    /// # Errors
    /// The section does not validate, or the URL does not resolve or parse.
    pub fn new(config: SqlConfig, pipeline: &str) -> Result<SqlJob, SqlConfigError> {
        if let Some((field, reason)) = config.validate().into_iter().next() {
            return Err(SqlConfigError { field, reason });
        }
        let url_error = |reason: String| SqlConfigError {
            field: "url".into(),
            reason,
        };
        let url = if gearbox_connect::secret::is_reference(&config.url) {
            gearbox_connect::secret::resolve(&config.url)
                .map_err(|e| url_error(e.to_string()))?
                .expose()
                .to_string()
        } else {
            config.url.clone()
        };
        // Messages never repeat the URL: it may hold a password.
        let target = match dialect(&url) {
            Some(Dialect::Postgres) => {
                let mut pg: tokio_postgres::Config = url
                    .parse()
                    .map_err(|_| url_error("is not a valid postgres:// URL".into()))?;
                pg.connect_timeout(std::time::Duration::from_millis(CONNECT_TIMEOUT_MS));
                Target::Postgres(Box::new(pg))
            }
            Some(Dialect::Mysql) => {
                let url = match url.strip_prefix("mariadb://") {
                    Some(rest) => format!("mysql://{rest}"),
                    None => url,
                };
                let opts = mysql_async::Opts::from_url(&url)
                    .map_err(|e| url_error(format!("is not a valid mysql:// URL: {e}")))?;
                Target::Mysql(Box::new(opts))
            }
            None => {
                return Err(url_error(
                    "does not resolve to a postgres:// or mysql:// URL".into(),
                ));
            }
        };
        let (query, placeholders) = match target {
            Target::Postgres(_) => rewrite(&config.query, |_| "$1".into()),
            Target::Mysql(_) => rewrite(&config.query, |_| "?".into()),
        };
        let kind = config.watermark.kind;
        let initial = match &config.watermark.initial {
            Some(v) => Mark::of_value(kind, v).map_err(|reason| SqlConfigError {
                field: "watermark.initial".into(),
                reason,
            })?,
            None => match kind {
                WatermarkKind::Timestamp => Mark::Ts(DateTime::<Utc>::UNIX_EPOCH),
                WatermarkKind::Integer => Mark::Int(0),
            },
        };
        let overlap =
            overlap_amount(kind, config.watermark.overlap.as_ref()).map_err(|reason| {
                SqlConfigError {
                    field: "watermark.overlap".into(),
                    reason,
                }
            })?;
        Ok(SqlJob {
            target,
            query,
            placeholders,
            overlap,
            initial,
            source: default_source(pipeline),
            config,
            run: None,
            reached: None,
        })
    }

    /// Turns a read row into an item, moving the run's watermark.
    fn item(&self, run: &mut SqlRun, row: Result<Map<String, Value>, String>) -> Item {
        run.rows += 1;
        let origin = format!("query row {}", run.rows);
        let row = match row {
            Ok(row) => row,
            Err(e) => return rejected(&origin, Value::Null, format!("{origin}: {e}")),
        };
        let column = &self.config.watermark.column;
        let len = serde_json::to_vec(&row).map_or(0, |v| v.len());
        if len > ROW_BYTES_MAX {
            return rejected(
                &origin,
                Value::Null,
                format!("{origin}: the row is longer than {ROW_BYTES_MAX} bytes as JSON"),
            );
        }
        match row.get(column) {
            None | Some(Value::Null) => {
                return rejected(
                    &origin,
                    Value::Object(row),
                    format!("{origin}: watermark column `{column}` is null or missing"),
                );
            }
            Some(v) => match Mark::of_value(self.config.watermark.kind, v) {
                Ok(m) => run.reached = run.reached.max(m),
                Err(e) => {
                    return rejected(
                        &origin,
                        Value::Object(row),
                        format!("{origin}: watermark column `{column}`: {e}"),
                    );
                }
            },
        }
        draft(&self.config.event, row, &origin, &self.source)
    }
}

impl BatchJob for SqlJob {
    fn kind(&self) -> &'static str {
        "sql"
    }

    async fn start(&mut self, watermark: Option<String>) -> Result<(), SourceError> {
        let kind = self.config.watermark.kind;
        // The first run starts at `initial`; later ones `overlap` below the stored watermark.
        let (start, bound) = match watermark {
            Some(w) => {
                let m = Mark::parse(kind, &w).map_err(|e| SourceError::Fatal {
                    message: format!("the stored watermark does not parse: {e}"),
                })?;
                (m, m.minus(self.overlap))
            }
            None => (self.initial, self.initial),
        };
        let (tx, rx) = mpsc::channel(ROWS_BUFFER);
        let target = self.target.clone();
        let query = self.query.clone();
        let placeholders = self.placeholders;
        let task = tokio::spawn(async move {
            let outcome = match target {
                Target::Postgres(pg) => read_postgres(&pg, &query, bound, &tx).await,
                Target::Mysql(opts) => read_mysql(*opts, &query, placeholders, bound, &tx).await,
            };
            let last = match outcome {
                Ok(()) => Msg::End,
                Err(e) => Msg::Failed(e),
            };
            let _ = tx.send(last).await;
        });
        self.reached = None;
        self.run = Some(SqlRun {
            rx,
            task,
            rows: 0,
            start,
            reached: start,
            done: false,
        });
        Ok(())
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Item>, SourceError> {
        let Some(mut run) = self.run.take() else {
            return Err(SourceError::transient("the run was interrupted"));
        };
        let mut items = Vec::new();
        let mut failed = None;
        while !run.done && items.len() < max.max(1) {
            // Wait for the first row; take what is already buffered after it.
            let msg = if items.is_empty() {
                match run.rx.recv().await {
                    Some(m) => m,
                    None => Msg::Failed(SourceError::transient("the query's reader stopped")),
                }
            } else {
                match run.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            match msg {
                Msg::Row(row) => {
                    let item = self.item(&mut run, row);
                    items.push(item);
                }
                Msg::End => {
                    run.done = true;
                    self.reached = Some(run.reached.max(run.start));
                }
                Msg::Failed(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        self.run = Some(run);
        Ok(items)
    }

    fn watermark(&self) -> Option<String> {
        self.reached.map(|m| m.text())
    }
}

// ---------------------------------------------------------------------------------------------
// Postgres

use crate::postgres::cdc::pg_error;

async fn read_postgres(
    pg: &tokio_postgres::Config,
    query: &str,
    bound: Mark,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), SourceError> {
    use futures_util::StreamExt as _;
    use tokio_postgres::types::{ToSql, Type};
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error("connecting to postgres", &e))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    let _abort = AbortOnDrop(conn);
    let stmt = client
        .prepare(query)
        .await
        .map_err(|e| pg_error("preparing the query", &e))?;
    let columns: Vec<(String, Type)> = stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect();
    for (name, ty) in &columns {
        if !pg_supported(ty) {
            return Err(SourceError::Fatal {
                message: format!(
                    "query column `{name}` has type {ty}, which the sql source does not \
                     convert; cast it in the query ({name}::text)"
                ),
            });
        }
    }
    let param_type = stmt.params().first().cloned().unwrap_or(Type::TEXT);
    let param: Box<dyn ToSql + Sync + Send> = match (bound, &param_type) {
        (Mark::Ts(t), &Type::TIMESTAMPTZ) => Box::new(t),
        (Mark::Ts(t), &Type::TIMESTAMP) => Box::new(t.naive_utc()),
        (Mark::Int(i), &Type::INT8) => Box::new(i),
        (Mark::Int(i), &Type::INT4) => {
            Box::new(i32::try_from(i).unwrap_or(if i < 0 { i32::MIN } else { i32::MAX }))
        }
        (Mark::Int(i), &Type::INT2) => {
            Box::new(i16::try_from(i).unwrap_or(if i < 0 { i16::MIN } else { i16::MAX }))
        }
        (m, &Type::TEXT | &Type::VARCHAR) => Box::new(m.text()),
        (_, other) => {
            return Err(SourceError::Fatal {
                message: format!(
                    "{PLACEHOLDER} is compared with a {other} here; the watermark binds as \
                     timestamptz, timestamp, an integer or text (cast it, e.g. \
                     {PLACEHOLDER}::timestamptz)"
                ),
            });
        }
    };
    let params: Vec<&(dyn ToSql + Sync)> = stmt
        .params()
        .iter()
        .map(|_| &*param as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query_raw(&stmt, params)
        .await
        .map_err(|e| pg_error("running the query", &e))?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| pg_error("reading the query's rows", &e))?;
        let converted = pg_row(&row, &columns);
        if tx.send(Msg::Row(converted)).await.is_err() {
            // The run was dropped.
            return Ok(());
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn pg_supported(ty: &tokio_postgres::types::Type) -> bool {
    use tokio_postgres::types::Type;
    [
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::OID,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::DATE,
        Type::TIME,
        Type::JSON,
        Type::JSONB,
        Type::UUID,
        Type::BYTEA,
    ]
    .contains(ty)
}

/// Any value's wire bytes, for the types decoded here (numeric, uuid).
struct Raw<'a>(&'a [u8]);

impl<'a> tokio_postgres::types::FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

fn pg_row(
    row: &tokio_postgres::Row,
    columns: &[(String, tokio_postgres::types::Type)],
) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (i, (name, ty)) in columns.iter().enumerate() {
        let v = pg_value(row, i, ty).map_err(|e| format!("column `{name}`: {e}"))?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}

fn pg_value(
    row: &tokio_postgres::Row,
    i: usize,
    ty: &tokio_postgres::types::Type,
) -> Result<Value, String> {
    use base64::Engine as _;
    use tokio_postgres::types::Type;
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a tokio_postgres::Row,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get::<_, Option<T>>(i).map_err(|e| {
            let mut m = e.to_string();
            if let Some(s) = std::error::Error::source(&e) {
                m = format!("{m}: {s}");
            }
            m
        })
    }
    let v = match *ty {
        Type::BOOL => get::<bool>(row, i)?.map(Value::Bool),
        Type::INT2 => get::<i16>(row, i)?.map(Value::from),
        Type::INT4 => get::<i32>(row, i)?.map(Value::from),
        Type::INT8 => get::<i64>(row, i)?.map(Value::from),
        Type::OID => get::<u32>(row, i)?.map(Value::from),
        Type::FLOAT4 => get::<f32>(row, i)?.map(|f| float(f64::from(f))),
        Type::FLOAT8 => get::<f64>(row, i)?.map(float),
        Type::NUMERIC => match get::<Raw<'_>>(row, i)? {
            Some(raw) => Some(Value::String(numeric_text(raw.0)?)),
            None => None,
        },
        Type::TIMESTAMP => get::<NaiveDateTime>(row, i)?
            .map(|t| Value::String(t.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true))),
        Type::TIMESTAMPTZ => get::<DateTime<Utc>>(row, i)?
            .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Micros, true))),
        Type::DATE => get::<NaiveDate>(row, i)?.map(|d| Value::String(d.to_string())),
        Type::TIME => get::<NaiveTime>(row, i)?.map(|t| Value::String(t.to_string())),
        Type::JSON | Type::JSONB => get::<Value>(row, i)?,
        Type::UUID => match get::<Raw<'_>>(row, i)? {
            Some(raw) => Some(Value::String(
                uuid::Uuid::from_slice(raw.0)
                    .map_err(|e| e.to_string())?
                    .to_string(),
            )),
            None => None,
        },
        Type::BYTEA => get::<Vec<u8>>(row, i)?
            .map(|b| Value::String(base64::engine::general_purpose::STANDARD.encode(b))),
        _ => get::<String>(row, i)?.map(Value::String),
    };
    Ok(v.unwrap_or(Value::Null))
}

/// A Postgres `numeric` in its binary form, as decimal text with its display scale.
///
/// # Errors
/// The bytes are not a numeric.
pub fn numeric_text(raw: &[u8]) -> Result<String, String> {
    let word = |k: usize| -> Result<u16, String> {
        raw.get(k * 2..k * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a truncated numeric".to_string())
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        0x0000 | 0x4000 => {}
        _ => return Err("a numeric with a bad sign".into()),
    }
    let mut digits = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        let d = word(4 + k)?;
        if d > 9999 {
            return Err("a numeric with a bad digit".into());
        }
        digits.push(d);
    }
    let digit = |p: i32| -> u16 {
        usize::try_from(p)
            .ok()
            .and_then(|p| digits.get(p).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for p in 0..=weight {
            if p == 0 {
                out.push_str(&digit(p).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(p)));
            }
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut frac = String::new();
        let mut p = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(p)));
            p += 1;
        }
        frac.truncate(dscale);
        out.push_str(&frac);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// MariaDB / MySQL

fn my_error(context: &str, e: &mysql_async::Error) -> SourceError {
    match e {
        mysql_async::Error::Server(s) => {
            let message = format!("{context}: {} ({} {})", s.message, s.code, s.state);
            // Connection errors, too many connections, lock waits, deadlocks, shutdowns.
            if s.state.starts_with("08") || [1040, 1053, 1205, 1213, 1927].contains(&s.code) {
                SourceError::transient(message)
            } else {
                SourceError::Fatal { message }
            }
        }
        mysql_async::Error::Url(u) => SourceError::Fatal {
            message: format!("{context}: {u}"),
        },
        other => SourceError::transient(format!("{context}: {other}")),
    }
}

async fn read_mysql(
    opts: mysql_async::Opts,
    query: &str,
    placeholders: usize,
    bound: Mark,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), SourceError> {
    use futures_util::StreamExt as _;
    use mysql_async::prelude::Queryable as _;
    let connect = mysql_async::Conn::new(opts);
    let mut conn = tokio::time::timeout(
        std::time::Duration::from_millis(CONNECT_TIMEOUT_MS),
        connect,
    )
    .await
    .map_err(|_| SourceError::transient("connecting to mysql: timed out"))?
    .map_err(|e| my_error("connecting to mysql", &e))?;
    conn.query_drop("SET time_zone = '+00:00'")
        .await
        .map_err(|e| my_error("setting the session time zone", &e))?;
    let param = match bound {
        Mark::Ts(t) => {
            use chrono::{Datelike as _, Timelike as _};
            let n = t.naive_utc();
            mysql_async::Value::Date(
                u16::try_from(n.year()).unwrap_or(0),
                n.month() as u8,
                n.day() as u8,
                n.hour() as u8,
                n.minute() as u8,
                n.second() as u8,
                n.nanosecond() / 1000,
            )
        }
        Mark::Int(i) => mysql_async::Value::Int(i),
    };
    let params = mysql_async::Params::Positional(vec![param; placeholders]);
    let outcome = async {
        let mut stream = conn
            .exec_stream::<mysql_async::Row, _, _>(query, params)
            .await
            .map_err(|e| my_error("running the query", &e))?;
        while let Some(row) = stream.next().await {
            let row = row.map_err(|e| my_error("reading the query's rows", &e))?;
            let converted = my_row(row)?;
            if tx.send(Msg::Row(converted)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    // Best effort: the server drops the session when the socket closes anyway.
    let _ = conn.disconnect().await;
    outcome
}

/// A MariaDB row as JSON; an unsupported column type is fatal, a value that does not convert
/// rejects the row.
fn my_row(row: mysql_async::Row) -> Result<Result<Map<String, Value>, String>, SourceError> {
    use mysql_async::consts::ColumnType as T;
    let columns = row.columns();
    let values = row.unwrap_raw();
    let mut out = Map::new();
    for (col, value) in columns.iter().zip(values) {
        let name = col.name_str().into_owned();
        let ty = col.column_type();
        let binary = col.character_set() == 63;
        let supported = matches!(
            ty,
            T::MYSQL_TYPE_NULL
                | T::MYSQL_TYPE_TINY
                | T::MYSQL_TYPE_SHORT
                | T::MYSQL_TYPE_LONG
                | T::MYSQL_TYPE_INT24
                | T::MYSQL_TYPE_LONGLONG
                | T::MYSQL_TYPE_YEAR
                | T::MYSQL_TYPE_FLOAT
                | T::MYSQL_TYPE_DOUBLE
                | T::MYSQL_TYPE_DECIMAL
                | T::MYSQL_TYPE_NEWDECIMAL
                | T::MYSQL_TYPE_VARCHAR
                | T::MYSQL_TYPE_VAR_STRING
                | T::MYSQL_TYPE_STRING
                | T::MYSQL_TYPE_ENUM
                | T::MYSQL_TYPE_SET
                | T::MYSQL_TYPE_TINY_BLOB
                | T::MYSQL_TYPE_MEDIUM_BLOB
                | T::MYSQL_TYPE_LONG_BLOB
                | T::MYSQL_TYPE_BLOB
                | T::MYSQL_TYPE_JSON
                | T::MYSQL_TYPE_DATE
                | T::MYSQL_TYPE_DATETIME
                | T::MYSQL_TYPE_DATETIME2
                | T::MYSQL_TYPE_TIMESTAMP
                | T::MYSQL_TYPE_TIMESTAMP2
                | T::MYSQL_TYPE_TIME
                | T::MYSQL_TYPE_TIME2
                | T::MYSQL_TYPE_BIT
        );
        if !supported {
            return Err(SourceError::Fatal {
                message: format!(
                    "query column `{name}` has type {ty:?}, which the sql source does not \
                     convert; cast it in the query"
                ),
            });
        }
        let v = match my_value(ty, binary, value) {
            Ok(v) => v,
            Err(e) => return Ok(Err(format!("column `{name}`: {e}"))),
        };
        out.insert(name, v);
    }
    Ok(Ok(out))
}

fn my_value(
    ty: mysql_async::consts::ColumnType,
    binary: bool,
    value: Option<mysql_async::Value>,
) -> Result<Value, String> {
    use base64::Engine as _;
    use mysql_async::Value as V;
    use mysql_async::consts::ColumnType as T;
    let Some(value) = value else {
        return Ok(Value::Null);
    };
    Ok(match value {
        V::NULL => Value::Null,
        V::Int(i) => Value::from(i),
        V::UInt(u) => Value::from(u),
        V::Float(f) => float(f64::from(f)),
        V::Double(f) => float(f),
        V::Bytes(b) => match ty {
            T::MYSQL_TYPE_BIT => {
                let mut n: u64 = 0;
                for byte in b.iter().take(8) {
                    n = (n << 8) | u64::from(*byte);
                }
                Value::from(n)
            }
            T::MYSQL_TYPE_JSON => {
                serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}"))?
            }
            // Decimals come as text in the binary charset.
            T::MYSQL_TYPE_DECIMAL | T::MYSQL_TYPE_NEWDECIMAL => {
                Value::String(String::from_utf8(b).map_err(|_| "not UTF-8".to_string())?)
            }
            _ if binary => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            _ => Value::String(String::from_utf8(b).map_err(|_| "not UTF-8".to_string())?),
        },
        V::Date(y, m, d, h, mi, s, us) => {
            let date = NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d))
                .ok_or_else(|| format!("{y:04}-{m:02}-{d:02} is not a date"))?;
            if ty == T::MYSQL_TYPE_DATE {
                Value::String(date.to_string())
            } else {
                let t = date
                    .and_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us)
                    .ok_or_else(|| "not a time of day".to_string())?;
                Value::String(t.and_utc().to_rfc3339_opts(SecondsFormat::Micros, true))
            }
        }
        V::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if neg { "-" } else { "" };
            Value::String(format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_becomes_a_parameter_outside_quotes_only() {
        let (q, n) = rewrite(
            "SELECT ':watermark', \":watermark\" FROM t WHERE a >= :watermark AND b::text = \
             :watermark::text AND c = :watermarks",
            |i| format!("${i}"),
        );
        assert_eq!(n, 2);
        assert_eq!(
            q,
            "SELECT ':watermark', \":watermark\" FROM t WHERE a >= $1 AND b::text = \
             $2::text AND c = :watermarks"
        );
    }

    #[test]
    fn numerics_print_exactly() {
        fn enc(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
            let mut v = Vec::new();
            for w in [ndigits, weight as u16, sign, dscale] {
                v.extend_from_slice(&w.to_be_bytes());
            }
            for d in digits {
                v.extend_from_slice(&d.to_be_bytes());
            }
            v
        }
        // 12345.678 = [1, 2345, 6780], weight 1, dscale 3.
        assert_eq!(
            numeric_text(&enc(3, 1, 0, 3, &[1, 2345, 6780])).unwrap(),
            "12345.678"
        );
        // -0.0012 = [12], weight -1, dscale 4.
        assert_eq!(
            numeric_text(&enc(1, -1, 0x4000, 4, &[12])).unwrap(),
            "-0.0012"
        );
        // 0.00000001 = [1], weight -2, dscale 8.
        assert_eq!(
            numeric_text(&enc(1, -2, 0, 8, &[100])).unwrap(),
            "0.00000100"
        );
        // 10000 = [1], weight 1, dscale 0.
        assert_eq!(numeric_text(&enc(1, 1, 0, 0, &[1])).unwrap(), "10000");
        assert_eq!(numeric_text(&enc(0, 0, 0, 2, &[])).unwrap(), "0.00");
        assert_eq!(numeric_text(&enc(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
    }

    #[test]
    fn durations_and_marks() {
        assert_eq!(parse_duration_ms("5s"), Ok(5000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("5 days").is_err());
        let m = Mark::parse(WatermarkKind::Timestamp, "2026-11-24T10:00:00Z").unwrap();
        assert_eq!(m.minus(1500).text(), "2026-11-24T09:59:58.500000Z");
        assert_eq!(Mark::Int(10).minus(3), Mark::Int(7));
    }
}
