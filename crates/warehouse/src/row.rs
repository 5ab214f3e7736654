//! One record as a row of the file: the envelope's values, the typed columns' values, and the
//! directory it goes to (`date=YYYY-MM-DD[/<name>=<value>]`).
//!
//! Extraction is pure and deterministic for a record with a `time`, so [`Extractor::check`]
//! refuses exactly the records that [`Extractor::row`] cannot turn into a row. Every refusal
//! names the column (or attribute) and the path.

use crate::config::{
    ColumnType, DATE_KEY, PARTITION_VALUE_BYTES_MAX, ParquetConfig, parse_path,
};
use gearbox_connect::sink::SinkRecord;
use serde_json::Value;

/// What an absent or `null` `partition_by` value becomes in the path.
pub const NULL_VALUE_DIR: &str = "__null__";
/// What an empty string `partition_by` value becomes in the path.
pub const EMPTY_VALUE_DIR: &str = "__empty__";
/// The estimated in-memory cost of one value besides its string bytes.
const VALUE_BYTES: usize = 16;

/// A typed column's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// ms since the epoch, UTC.
    Time(i64),
}

/// One row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub id: String,
    pub source: Option<String>,
    pub kind: Option<String>,
    pub subject: Option<String>,
    pub time_ms: i64,
    pub partition: u32,
    pub offset: u64,
    pub data: Option<String>,
    pub cells: Vec<Cell>,
    /// The directory below the sink's path, `date=…[/name=value]`.
    pub bucket: String,
    /// The estimated bytes it holds in memory.
    pub bytes: usize,
}

/// Turns records into rows, as one config says.
#[derive(Debug, Clone)]
pub(crate) struct Extractor {
    /// `partition_by`: the directory name and the path.
    partition_by: Option<(String, Vec<String>)>,
    /// The typed columns, in file order: name, path, type.
    columns: Vec<(String, String, Vec<String>, ColumnType)>,
    bytes_max: u64,
}

impl Extractor {
    /// # Panics
    /// If the config does not validate (the caller validates first).
    pub fn new(config: &ParquetConfig) -> Extractor {
        let partition_by = config.partition_by.as_ref().map(|p| {
            let segments = parse_path(p).expect("a validated config");
            (segments.last().expect("a path has a segment").clone(), segments)
        });
        let columns = config
            .columns
            .iter()
            .map(|(name, c)| {
                let segments = parse_path(&c.path).expect("a validated config");
                (name.clone(), c.path.clone(), segments, c.kind)
            })
            .collect();
        Extractor {
            partition_by,
            columns,
            bytes_max: config.bytes_max,
        }
    }

    /// The typed columns: (name, type).
    pub fn columns(&self) -> impl Iterator<Item = (&str, ColumnType)> {
        self.columns.iter().map(|(n, _, _, t)| (n.as_str(), *t))
    }

    /// Whether the record can become a row.
    ///
    /// # Errors
    /// What is wrong, naming the column and its path.
    pub fn check(&self, record: &SinkRecord) -> Result<(), String> {
        self.row_at(record, 0).map(|_| ())
    }

    /// The record as a row; `now_ms` is its time if it has none.
    ///
    /// # Errors
    /// As [`Extractor::check`].
    pub fn row_at(&self, record: &SinkRecord, now_ms: i64) -> Result<Row, String> {
        let v = &record.value;
        let text = |name: &str| -> Result<Option<String>, String> {
            match v.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!(
                    "{name}: the {name} column holds strings; the event's {name} is {}",
                    json_kind(other)
                )),
            }
        };
        let id = text("id")?.unwrap_or_else(|| record.id.clone());
        let source = text("source")?;
        let kind = text("type")?;
        let subject = text("subject")?;
        let time_ms = match v.get("time") {
            None | Some(Value::Null) => record.time_ms.unwrap_or(now_ms),
            Some(Value::String(s)) => rfc3339_ms(s)
                .ok_or_else(|| format!("time: {s:?} is not an RFC 3339 timestamp"))?,
            Some(other) => {
                return Err(format!(
                    "time: the time column holds timestamps; the event's time is {}",
                    json_kind(other)
                ));
            }
        };
        let data = match v.get("data") {
            None | Some(Value::Null) => None,
            Some(d) => Some(d.to_string()),
        };
        let mut cells = Vec::with_capacity(self.columns.len());
        for (name, path, segments, kind) in &self.columns {
            let value = lookup(v, segments);
            cells.push(cell(value, *kind).map_err(|why| {
                format!("columns.{name} (path {path}, type {}): {why}", kind.name())
            })?);
        }
        let date = chrono::DateTime::from_timestamp_millis(time_ms)
            .ok_or_else(|| format!("time: {time_ms} ms is out of range"))?
            .format("%Y-%m-%d");
        let mut bucket = format!("{DATE_KEY}={date}");
        if let Some((name, segments)) = &self.partition_by {
            let value = partition_value(lookup(v, segments)).map_err(|why| {
                format!("partition_by ({}): {why}", segments.join("."))
            })?;
            bucket.push('/');
            bucket.push_str(name);
            bucket.push('=');
            bucket.push_str(&value);
        }
        let strings = id.len()
            + source.as_ref().map_or(0, String::len)
            + kind.as_ref().map_or(0, String::len)
            + subject.as_ref().map_or(0, String::len)
            + data.as_ref().map_or(0, String::len)
            + bucket.len()
            + cells
                .iter()
                .map(|c| match c {
                    Cell::Str(s) => s.len(),
                    _ => 0,
                })
                .sum::<usize>();
        let bytes = strings + VALUE_BYTES * (8 + cells.len());
        if bytes as u64 > self.bytes_max {
            return Err(format!(
                "the record takes {bytes} bytes in a micro-batch, more than bytes_max \
                 ({})",
                self.bytes_max
            ));
        }
        Ok(Row {
            id,
            source,
            kind,
            subject,
            time_ms,
            partition: record.partition,
            offset: record.offset,
            data,
            cells,
            bucket,
            bytes,
        })
    }
}

/// The value at `segments` in `v`, if any.
pub(crate) fn lookup<'a>(v: &'a Value, segments: &[String]) -> Option<&'a Value> {
    segments.iter().try_fold(v, |at, s| at.get(s.as_str()))
}

/// ms since the epoch of an RFC 3339 timestamp.
pub(crate) fn rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn cell(value: Option<&Value>, kind: ColumnType) -> Result<Cell, String> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Cell::Null);
    };
    let refuse = || format!("{value} ({}) does not fit", json_kind(value));
    Ok(match kind {
        ColumnType::Int64 => Cell::Int(value.as_i64().ok_or_else(refuse)?),
        ColumnType::Float64 => Cell::Float(value.as_f64().ok_or_else(refuse)?),
        ColumnType::String => Cell::Str(value.as_str().ok_or_else(refuse)?.to_string()),
        ColumnType::Bool => Cell::Bool(value.as_bool().ok_or_else(refuse)?),
        ColumnType::Timestamp => Cell::Time(match value {
            Value::String(s) => rfc3339_ms(s).ok_or_else(refuse)?,
            _ => value.as_i64().ok_or_else(refuse)?,
        }),
    })
}

/// A `partition_by` value as a directory name: letters, digits, `_`, `-` and `.` as they are
/// (a leading `.` escaped, so no value is `.` or `..` or hidden), every other byte as `%XX`
/// (Hive's escaping); absent or null is [`NULL_VALUE_DIR`], empty is [`EMPTY_VALUE_DIR`].
fn partition_value(value: Option<&Value>) -> Result<String, String> {
    let raw = match value {
        None | Some(Value::Null) => return Ok(NULL_VALUE_DIR.to_string()),
        Some(Value::String(s)) => s.clone(),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => v.to_string(),
        Some(v) => {
            return Err(format!(
                "the value is {}; a partition value must be a string, number or boolean",
                json_kind(v)
            ));
        }
    };
    if raw.is_empty() {
        return Ok(EMPTY_VALUE_DIR.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    for (i, b) in raw.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    // The reserved names are only ever produced for null and empty values.
    if out.starts_with("__") {
        out.replace_range(0..1, "%5F");
    }
    if out.len() > PARTITION_VALUE_BYTES_MAX {
        return Err(format!(
            "the value is {} bytes as a directory name, more than {PARTITION_VALUE_BYTES_MAX} \
             (PARTITION_VALUE_BYTES_MAX)",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn partition_values_are_safe_directory_names() {
        let check = |v: Value, want: &str| {
            assert_eq!(partition_value(Some(&v)).unwrap(), want, "{v}");
        };
        check(json!("store-7"), "store-7");
        check(json!("a/b"), "a%2Fb");
        check(json!(".."), "%2E.");
        check(json!("x y=z"), "x%20y%3Dz");
        check(json!(""), EMPTY_VALUE_DIR);
        check(json!(null), NULL_VALUE_DIR);
        check(json!("__null__"), "%5F_null__");
        check(json!(42), "42");
        check(json!(true), "true");
        check(json!("é"), "%C3%A9");
        assert_eq!(partition_value(None).unwrap(), NULL_VALUE_DIR);
        assert!(partition_value(Some(&json!({"a": 1}))).is_err());
        let long = "x".repeat(PARTITION_VALUE_BYTES_MAX + 1);
        let e = partition_value(Some(&json!(long))).unwrap_err();
        assert!(e.contains("PARTITION_VALUE_BYTES_MAX"), "{e}");
        let fits = "x".repeat(PARTITION_VALUE_BYTES_MAX);
        assert_eq!(partition_value(Some(&json!(fits))).unwrap(), fits);
    }
}
