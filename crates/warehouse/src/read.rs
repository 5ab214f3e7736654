//! Reading the warehouse: which files there are ([`scan`]), what the sink has committed
//! ([`committed_positions`]), and a file's rows with the fields a reconcile needs
//! ([`read_rows`]).
//!
//! Reading never changes the directory: an incomplete group (a crash between renames that the
//! sink has not recovered from yet) is reported with `complete: false` and is not committed.

use crate::config::parse_path;
use crate::files::{self, Walk};
use arrow_array::{Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows per Arrow batch when reading.
pub const READ_BATCH_ROWS: usize = 8_192;

/// A failed read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not a Parquet file this sink wrote (a column is missing or of another type).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A field path a reader cannot resolve in the files (only the envelope's string columns,
    /// `time`, and paths into `data` are stored).
    #[error("{field}: {reason}")]
    Field {
        /// The path as given.
        field: String,
        /// Why.
        reason: String,
    },
}

/// One part file of the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarehouseFile {
    /// Its path.
    pub path: PathBuf,
    /// The topic partition its batch is of.
    pub partition: u32,
    /// The batch's first offset (the files of a batch share the range; each holds the rows of
    /// one directory).
    pub first_offset: u64,
    /// The batch's last offset.
    pub last_offset: u64,
    /// Which file of the batch (from 1).
    pub part: usize,
    /// How many files the batch has.
    pub parts: usize,
    /// Whether all the batch's files are present (only then is it committed).
    pub complete: bool,
    /// Rows in this file (from its footer).
    pub rows: u64,
    /// The `date=` directory it is in (`YYYY-MM-DD`), if any.
    pub date: Option<String>,
}

/// Every part file under `dir`, in (partition, first offset, part) order.
///
/// # Errors
/// [`ReadError::Io`] for an unreadable directory or file, [`ReadError::Format`] for a footer
/// that does not parse.
pub fn scan(dir: &Path) -> Result<Vec<WarehouseFile>, ReadError> {
    let walk = files::walk(dir).map_err(|source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for ((_, _, _, n), found) in &walk.groups {
        let complete = Walk::complete(found, *n);
        let mut found = found.clone();
        found.sort_by_key(|f| f.k);
        for f in found {
            let rows = footer_rows(&f.path)?;
            let date = f
                .path
                .ancestors()
                .filter_map(|a| a.file_name()?.to_str()?.strip_prefix("date="))
                .next()
                .map(str::to_string);
            out.push(WarehouseFile {
                path: f.path,
                partition: f.partition,
                first_offset: f.first,
                last_offset: f.last,
                part: f.k,
                parts: f.n,
                complete,
                rows,
                date,
            });
        }
    }
    Ok(out)
}

/// What the sink has committed under `dir`: per partition, the next offset it would write
/// (the end of its last complete batch, or the positions file's if further). Events at these
/// offsets and after are not in the files yet.
///
/// # Errors
/// [`ReadError::Io`].
pub fn committed_positions(dir: &Path) -> Result<BTreeMap<u32, u64>, ReadError> {
    let io = |source| ReadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = files::walk(dir).map_err(io)?.positions();
    for (p, o) in files::read_positions(dir).map_err(io)? {
        let e = out.entry(p).or_insert(0);
        *e = (*e).max(o);
    }
    Ok(out)
}

fn footer_rows(path: &Path) -> Result<u64, ReadError> {
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| ReadError::Format {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(builder.metadata().file_metadata().num_rows().max(0) as u64)
}

/// A field a reader takes from each row: an envelope string column (`id`, `source`, `type`,
/// `subject`) or a path into the event's `data` (`data.qty`, `data.store.region`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// An envelope column.
    Column(String),
    /// A path below `data`.
    Data(Vec<String>),
}

impl Field {
    /// Parses an event path.
    ///
    /// # Errors
    /// [`ReadError::Field`] for a path the files do not store.
    pub fn parse(path: &str) -> Result<Field, ReadError> {
        let bad = |reason: String| ReadError::Field {
            field: path.to_string(),
            reason,
        };
        let segments = parse_path(path).map_err(bad)?;
        match segments.as_slice() {
            [c] if ["id", "source", "type", "subject"].contains(&c.as_str()) => {
                Ok(Field::Column(c.clone()))
            }
            [d, rest @ ..] if d == "data" => Ok(Field::Data(rest.to_vec())),
            _ => Err(bad(
                "the files store id, source, type, subject, time and data; use one of those or \
                 a path into data (data.qty)"
                    .into(),
            )),
        }
    }

    /// The field's value in an event (a CloudEvent in structured JSON).
    #[must_use]
    pub fn in_event<'a>(&self, event: &'a Value) -> Option<&'a Value> {
        match self {
            Field::Column(c) => event.get(c.as_str()),
            Field::Data(rest) => crate::row::lookup(event.get("data")?, rest),
        }
    }
}

/// What to read from each row besides its position.
#[derive(Debug, Clone, Default)]
pub struct Select {
    /// Numeric fields (their values as `f64`; anything else is `None`).
    pub numbers: Vec<Field>,
    /// A field to group by (as text: a string as it is, other values as JSON).
    pub group: Option<Field>,
}

/// One row, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct WarehouseRow {
    /// The event id.
    pub id: String,
    /// The topic partition.
    pub partition: u32,
    /// The offset.
    pub offset: u64,
    /// The `time` column, ms since the epoch.
    pub time_ms: i64,
    /// The selected numbers, in [`Select::numbers`] order.
    pub numbers: Vec<Option<f64>>,
    /// The selected group field.
    pub group: Option<String>,
}

/// A value as a group key: a string as it is, others as JSON text.
#[must_use]
pub fn group_key(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads the rows of one file, with the selected fields.
///
/// # Errors
/// [`ReadError::Io`], or [`ReadError::Format`] for a file without the envelope's columns.
pub fn read_rows(path: &Path, select: &Select) -> Result<Vec<WarehouseRow>, ReadError> {
    let format = |reason: String| ReadError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| format(e.to_string()))?;
    let needs_data = select
        .numbers
        .iter()
        .chain(select.group.iter())
        .any(|f| matches!(f, Field::Data(_)));
    let mut wanted: Vec<&str> = vec!["id", "partition", "offset", "time"];
    for f in select.numbers.iter().chain(select.group.iter()) {
        if let Field::Column(c) = f
            && !wanted.contains(&c.as_str())
        {
            wanted.push(c);
        }
    }
    if needs_data {
        wanted.push("data");
    }
    let arrow = builder.schema().clone();
    let mut roots = Vec::new();
    for name in &wanted {
        roots.push(
            arrow
                .index_of(name)
                .map_err(|_| format(format!("no column {name:?}")))?,
        );
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| format(e.to_string()))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| format(e.to_string()))?;
        read_batch(&batch, select, &mut out).map_err(format)?;
    }
    Ok(out)
}

fn read_batch(
    batch: &RecordBatch,
    select: &Select,
    out: &mut Vec<WarehouseRow>,
) -> Result<(), String> {
    fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| format!("column {name:?} is missing or of another type"))
    }
    let ids = column::<StringArray>(batch, "id")?;
    let partitions = column::<Int64Array>(batch, "partition")?;
    let offsets = column::<Int64Array>(batch, "offset")?;
    let times = column::<TimestampMillisecondArray>(batch, "time")?;
    let data = batch
        .column_by_name("data")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let text = |name: &str, i: usize| -> Result<Option<String>, String> {
        let c = column::<StringArray>(batch, name)?;
        Ok((!c.is_null(i)).then(|| c.value(i).to_string()))
    };
    for i in 0..batch.num_rows() {
        let parsed: Option<Value> = data
            .filter(|d| !d.is_null(i))
            .and_then(|d| serde_json::from_str(d.value(i)).ok());
        let value_of = |f: &Field| -> Result<Option<Value>, String> {
            Ok(match f {
                Field::Column(c) => text(c, i)?.map(Value::String),
                Field::Data(rest) => parsed
                    .as_ref()
                    .and_then(|d| crate::row::lookup(d, rest))
                    .cloned(),
            })
        };
        let mut numbers = Vec::with_capacity(select.numbers.len());
        for f in &select.numbers {
            numbers.push(value_of(f)?.and_then(|v| v.as_f64()));
        }
        let group = match &select.group {
            Some(f) => group_key(value_of(f)?.as_ref()),
            None => None,
        };
        out.push(WarehouseRow {
            id: ids.value(i).to_string(),
            partition: u32::try_from(partitions.value(i))
                .map_err(|_| format!("partition {} out of range", partitions.value(i)))?,
            offset: u64::try_from(offsets.value(i))
                .map_err(|_| format!("offset {} out of range", offsets.value(i)))?,
            time_ms: times.value(i),
            numbers,
            group,
        });
    }
    Ok(())
}
