//! Stream-versus-warehouse reconciliation: `POST /v1/reconcile`, the scheduled reconciles of
//! `gearbox serve`, and their metrics.
//!
//! A reconcile compares a Parquet sink pipeline's topic (the stream layer) with the files it
//! wrote (the warehouse layer) over a time window: counts and sums per bucket, what only lag
//! explains (events after the sink's committed positions), and what nothing explains (missing,
//! extra, duplicated or differing rows), with sample event ids
//! ([`gearbox_warehouse::reconcile`]). The last result per pipeline is exported as
//! `gearbox_reconcile_unexplained{pipeline}`, `gearbox_reconcile_lag_events{pipeline}`,
//! `gearbox_reconcile_matched_events{pipeline}` and `gearbox_reconcile_last_run_seconds{pipeline}`.

use crate::error::ApiError;
use crate::{ApiResult, Shared, ok};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use gearbox_connect::metrics::{Labels, Number, family};
use gearbox_core::broker::Broker;
use gearbox_warehouse::reconcile::{
    GroupBy, ReconcileError, ReconcileOptions, Report, StreamEvent, reconcile,
};
use prometheus_client::collector::Collector as PromCollector;
use prometheus_client::encoding::DescriptorEncoder;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Most `sum` fields in one reconcile.
pub const SUM_FIELDS_MAX: usize = 16;

/// A Parquet sink pipeline: the topic it reads and the directory it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warehouse {
    /// The topic (stream layer).
    pub topic: String,
    /// The sink's output directory (warehouse layer).
    pub path: PathBuf,
}

/// The last reconcile of a pipeline, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Last {
    unexplained: u64,
    lag: u64,
    matched: u64,
    at_s: f64,
}

/// The Parquet sink pipelines of this server, and their last reconcile.
#[derive(Debug, Default)]
pub struct Warehouses {
    by_pipeline: BTreeMap<String, Warehouse>,
    last: Mutex<HashMap<String, Last>>,
}

impl Warehouses {
    /// The pipelines that can be reconciled.
    #[must_use]
    pub fn new(by_pipeline: BTreeMap<String, Warehouse>) -> Warehouses {
        Warehouses {
            by_pipeline,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// A pipeline's warehouse.
    #[must_use]
    pub fn get(&self, pipeline: &str) -> Option<&Warehouse> {
        self.by_pipeline.get(pipeline)
    }

    fn record(&self, pipeline: &str, report: &Report) {
        let matched = report.buckets.iter().map(|b| b.matched).sum();
        let last = Last {
            unexplained: report.unexplained_total(),
            lag: report.lag_total(),
            matched,
            at_s: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        };
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pipeline.to_string(), last);
    }
}

/// What to reconcile, as the API and the config give it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The Parquet sink pipeline.
    pub pipeline: String,
    /// The window's start (RFC 3339), inclusive.
    pub from: Option<String>,
    /// The window's end (RFC 3339), exclusive.
    pub to: Option<String>,
    /// Numeric fields to sum (`data.qty`).
    pub sum: Vec<String>,
    /// A field, `hour` or `day`.
    pub by: Option<String>,
    /// Sample ids per kind of difference and bucket.
    pub samples: Option<usize>,
}

fn time_ms(field: &'static str, t: Option<&str>) -> Result<Option<i64>, ApiError> {
    t.map(|t| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.timestamp_millis())
            .map_err(|e| {
                ApiError::new(
                    "invalid_argument",
                    format!("`{field}` is not RFC 3339: {e}"),
                )
                .field(field)
            })
    })
    .transpose()
}

impl Request {
    /// Parses the JSON body of `POST /v1/reconcile`.
    ///
    /// # Errors
    /// A field of the wrong type, named.
    pub fn from_json(v: &Value) -> Result<Request, ApiError> {
        let text = |name: &'static str| -> Result<Option<String>, ApiError> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::new(
                    "malformed_json",
                    format!("`{name}` must be a string"),
                )
                .field(name)),
            }
        };
        let pipeline = text("pipeline")?.ok_or_else(|| {
            ApiError::new("invalid_argument", "name the Parquet sink `pipeline`").field("pipeline")
        })?;
        let sum = match v.get("sum") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|f| f.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ApiError::new("malformed_json", "`sum` must be a list of field paths")
                        .field("sum")
                })?,
            Some(_) => {
                return Err(
                    ApiError::new("malformed_json", "`sum` must be a list of field paths")
                        .field("sum"),
                );
            }
        };
        Ok(Request {
            pipeline,
            from: text("from")?,
            to: text("to")?,
            sum,
            by: text("by")?,
            samples: crate::field_u64(v, "samples")?.map(|n| n as usize),
        })
    }

    fn options(&self) -> Result<ReconcileOptions, ApiError> {
        if self.sum.len() > SUM_FIELDS_MAX {
            return Err(ApiError::new(
                "invalid_argument",
                format!("at most {SUM_FIELDS_MAX} `sum` fields (SUM_FIELDS_MAX)"),
            )
            .field("sum"));
        }
        let by = self
            .by
            .as_deref()
            .map(str::parse::<GroupBy>)
            .transpose()
            .map_err(|e| ApiError::new("invalid_argument", e.to_string()).field("by"))?;
        let mut o = ReconcileOptions {
            from_ms: time_ms("from", self.from.as_deref())?,
            to_ms: time_ms("to", self.to.as_deref())?,
            sum: self.sum.clone(),
            by,
            ..ReconcileOptions::default()
        };
        if let Some(n) = self.samples {
            o.samples = n;
        }
        Ok(o)
    }
}

/// Reads every retained event of `topic` (the window is applied by the comparison), at most
/// `rows_max` + 1 of them so the comparison can say the window is too large.
fn stream(broker: &Broker, topic: &str, rows_max: usize) -> Result<Vec<StreamEvent>, ApiError> {
    let info = broker.describe_topic(topic).map_err(ApiError::from)?;
    let mut out = Vec::new();
    for p in &info.offsets {
        let mut at = p.log_start_offset;
        while at < p.high_watermark && out.len() <= rows_max {
            let (events, next) = broker
                .read(topic, p.partition, at, 1000)
                .map_err(ApiError::from)?;
            if events.is_empty() || next <= at {
                break;
            }
            for e in events {
                let time_ms = e
                    .event
                    .time
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0, |t| t.timestamp_millis());
                out.push(StreamEvent {
                    id: e.event.id.clone(),
                    partition: e.partition,
                    offset: e.offset,
                    time_ms,
                    event: e.event.to_json(),
                });
            }
            at = next;
        }
    }
    Ok(out)
}

/// Runs one reconcile and records it for `/metrics`.
///
/// # Errors
/// An unknown pipeline, a bad option (named), an unreadable warehouse, or a window too large.
pub fn run(
    broker: &Broker,
    warehouses: &Warehouses,
    request: &Request,
) -> Result<Report, ApiError> {
    let Some(w) = warehouses.get(&request.pipeline) else {
        return Err(ApiError::new(
            "pipeline_not_found",
            format!(
                "no Parquet sink pipeline named {:?} (reconcile compares one with its topic)",
                request.pipeline
            ),
        )
        .field("pipeline"));
    };
    let options = request.options()?;
    let events = stream(broker, &w.topic, options.rows_max)?;
    let report = reconcile(events, &w.path, &options).map_err(|e| match e {
        ReconcileError::Option { field, reason } => {
            ApiError::new("invalid_argument", reason).field(field)
        }
        ReconcileError::Read(e) => ApiError::new("invalid_argument", e.to_string()),
        e @ (ReconcileError::TooManyRows { .. } | ReconcileError::TooManyBuckets) => {
            ApiError::new("invalid_argument", e.to_string()).field("from")
        }
    })?;
    warehouses.record(&request.pipeline, &report);
    Ok(report)
}

/// `POST /v1/reconcile`.
pub(crate) async fn handle(
    crate::State(s): Shared,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let request = Request::from_json(&crate::json_request(&headers, raw)?)?;
    let broker = s.broker.clone();
    let warehouses = s.warehouses.clone();
    let report = tokio::task::spawn_blocking(move || run(&broker, &warehouses, &request))
        .await
        .map_err(|e| ApiError::new("internal", format!("worker failed: {e}")))??;
    let mut v = serde_json::to_value(&report)
        .map_err(|e| ApiError::new("internal", format!("encoding the report: {e}")))?;
    v["unexplained"] = json!(report.unexplained_total());
    v["lag"] = json!(report.lag_total());
    ok(StatusCode::OK, v)
}

/// The `gearbox_reconcile_*` gauges.
#[derive(Debug)]
pub(crate) struct Collector(pub Arc<Warehouses>);

impl PromCollector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let last = self
            .0
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut by_name: Vec<(String, Last)> = last.into_iter().collect();
        by_name.sort_by(|a, b| a.0.cmp(&b.0));
        type Pick = fn(&Last) -> f64;
        let families: [(&str, &str, Pick); 4] = [
            (
                "gearbox_reconcile_unexplained",
                "Differences between a topic and its Parquet files that lag does not explain, at the last reconcile.",
                |l| l.unexplained as f64,
            ),
            (
                "gearbox_reconcile_lag_events",
                "Events not yet in a committed Parquet file, at the last reconcile.",
                |l| l.lag as f64,
            ),
            (
                "gearbox_reconcile_matched_events",
                "Events found in the Parquet files as in the topic, at the last reconcile.",
                |l| l.matched as f64,
            ),
            (
                "gearbox_reconcile_last_run_seconds",
                "When the last reconcile ran, seconds since the epoch.",
                |l| l.at_s,
            ),
        ];
        for (name, help, pick) in families {
            family(
                &mut encoder,
                name,
                help,
                by_name.iter().map(|(pipeline, l)| {
                    let labels: Labels = vec![("pipeline", pipeline.clone())];
                    (labels, Number::of(pick(l)))
                }),
            )?;
        }
        Ok(())
    }
}
