//! The sink's section, `sink: {parquet: {...}}`, its defaults and its limits.
//!
//! Every limit is a named constant: the micro-batch policy (`records_max`, `bytes_max`,
//! `interval_ms`) has a default and a maximum, and the columns, the partition values and the
//! field paths are bounded. [`ParquetConfig::validate`] names the field of every problem.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Records a micro-batch holds before it is written, by default.
pub const RECORDS_MAX_DEFAULT: usize = 10_000;
/// The largest `records_max` allowed.
pub const RECORDS_MAX_MAX: usize = 1_000_000;
/// Bytes (estimated in memory: strings plus a fixed cost per value) a micro-batch holds before
/// it is written, by default: 64 MiB. This bounds the sink's memory.
pub const BYTES_MAX_DEFAULT: u64 = 64 << 20;
/// The largest `bytes_max` allowed: 1 GiB.
pub const BYTES_MAX_MAX: u64 = 1 << 30;
/// How long the oldest buffered record may wait before the micro-batch is written, by default.
pub const INTERVAL_MS_DEFAULT: u64 = 60_000;
/// The largest `interval_ms` allowed: a day.
pub const INTERVAL_MS_MAX: u64 = 86_400_000;
/// The smallest `interval_ms` allowed (below it, files become tiny and numerous).
pub const INTERVAL_MS_MIN: u64 = 10;
/// Typed `columns:` a config may add to the envelope's.
pub const COLUMNS_MAX: usize = 64;
/// Files one topic partition's micro-batch may become (one per date and `partition_by` value).
/// A batch that would need more is written early, before the record that would add one.
pub const FILES_PER_BATCH_MAX: usize = 64;
/// The longest `partition_by` value, in bytes after escaping for the path.
pub const PARTITION_VALUE_BYTES_MAX: usize = 128;
/// The most segments a field path (`data.a.b`) may have.
pub const PATH_SEGMENTS_MAX: usize = 16;

/// The envelope's columns, always present, in file order.
pub const ENVELOPE_COLUMNS: &[&str] = &[
    "id",
    "source",
    "type",
    "subject",
    "time",
    "partition",
    "offset",
    "data",
];

/// The directory key of the date partition (`date=YYYY-MM-DD`).
pub const DATE_KEY: &str = "date";

/// The sink's section: `sink: {parquet: {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// The output directory; the files of the pipeline's topic go under it (one pipeline per
    /// directory).
    pub path: PathBuf,
    /// A field of the event (`type`, `data.store`) whose value adds a `<name>=<value>/`
    /// directory level below the date, `<name>` being the path's last segment.
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Records per micro-batch (at most [`RECORDS_MAX_MAX`]).
    #[serde(default = "records_max_default")]
    pub records_max: usize,
    /// Bytes per micro-batch (at most [`BYTES_MAX_MAX`]).
    #[serde(default = "bytes_max_default")]
    pub bytes_max: u64,
    /// The longest a record waits in a micro-batch, in ms.
    #[serde(default = "interval_ms_default")]
    pub interval_ms: u64,
    /// Typed columns after the envelope's: name → where the value is and its type.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnConfig>,
    /// Page compression.
    #[serde(default)]
    pub compression: Compression,
}

fn records_max_default() -> usize {
    RECORDS_MAX_DEFAULT
}

fn bytes_max_default() -> u64 {
    BYTES_MAX_DEFAULT
}

fn interval_ms_default() -> u64 {
    INTERVAL_MS_DEFAULT
}

/// One typed column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    /// Where the value is in the event: `data.qty`, `subject`, an extension.
    pub path: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
}

/// A typed column's type. A value of another JSON type is refused (the record is
/// dead-lettered); a missing or `null` value is a null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// A JSON integer that fits 64 bits.
    Int64,
    /// Any JSON number.
    Float64,
    /// A JSON string.
    String,
    /// A JSON boolean.
    Bool,
    /// An RFC 3339 string or an integer of ms since the epoch; stored as UTC milliseconds.
    Timestamp,
}

impl ColumnType {
    /// The name used in configs and messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Int64 => "int64",
            ColumnType::Float64 => "float64",
            ColumnType::String => "string",
            ColumnType::Bool => "bool",
            ColumnType::Timestamp => "timestamp",
        }
    }
}

/// Page compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Zstandard at its default level.
    #[default]
    Zstd,
    /// Snappy.
    Snappy,
    /// None.
    None,
}

impl ParquetConfig {
    /// A config with the defaults, writing to `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> ParquetConfig {
        ParquetConfig {
            path: path.into(),
            partition_by: None,
            records_max: RECORDS_MAX_DEFAULT,
            bytes_max: BYTES_MAX_DEFAULT,
            interval_ms: INTERVAL_MS_DEFAULT,
            columns: BTreeMap::new(),
            compression: Compression::Zstd,
        }
    }

    /// Problems, as (field, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &str, reason: String| out.push((field.to_string(), reason));
        if self.path.as_os_str().is_empty() {
            bad("path", "must name a directory".into());
        }
        if let Some(p) = &self.partition_by {
            match parse_path(p) {
                Err(e) => bad("partition_by", e),
                Ok(segments) => {
                    let name = segments.last().map_or("", String::as_str);
                    if name == DATE_KEY {
                        bad(
                            "partition_by",
                            format!("{name:?} is the date level's name; partition by another field"),
                        );
                    }
                }
            }
        }
        if self.records_max == 0 || self.records_max > RECORDS_MAX_MAX {
            bad(
                "records_max",
                format!("must be 1 to {RECORDS_MAX_MAX} (RECORDS_MAX_MAX)"),
            );
        }
        if self.bytes_max == 0 || self.bytes_max > BYTES_MAX_MAX {
            bad(
                "bytes_max",
                format!("must be 1 to {BYTES_MAX_MAX} (BYTES_MAX_MAX)"),
            );
        }
        if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&self.interval_ms) {
            bad(
                "interval_ms",
                format!("must be {INTERVAL_MS_MIN} to {INTERVAL_MS_MAX} (INTERVAL_MS_MAX)"),
            );
        }
        if self.columns.len() > COLUMNS_MAX {
            bad(
                "columns",
                format!("at most {COLUMNS_MAX} columns (COLUMNS_MAX)"),
            );
        }
        let partition_name = self
            .partition_by
            .as_deref()
            .and_then(|p| parse_path(p).ok())
            .and_then(|s| s.last().cloned());
        for (name, column) in &self.columns {
            let field = format!("columns.{name}");
            if let Err(e) = column_name(name) {
                bad(&field, e);
            }
            if ENVELOPE_COLUMNS.contains(&name.as_str()) || name == DATE_KEY {
                bad(
                    &field,
                    format!("{name:?} is an envelope or directory column; choose another name"),
                );
            }
            if partition_name.as_deref() == Some(name.as_str()) {
                bad(
                    &field,
                    format!(
                        "{name:?} is the partition_by directory's name; readers that use Hive \
                         partitioning would see two columns of that name"
                    ),
                );
            }
            if let Err(e) = parse_path(&column.path) {
                bad(&format!("{field}.path"), e);
            }
        }
        out
    }
}

/// A column name: lowercase ASCII letters, digits and `_`, not starting with a digit, at most
/// 63 bytes (so SQL engines need no quoting).
fn column_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a column name (lowercase letters, digits and _, not starting with a \
             digit, at most 63 bytes)"
        ))
    }
}

/// Splits a field path (`data.store`) into its segments.
///
/// # Errors
/// An empty path or segment, or more than [`PATH_SEGMENTS_MAX`] segments.
pub fn parse_path(path: &str) -> Result<Vec<String>, String> {
    let segments: Vec<String> = path.split('.').map(str::to_string).collect();
    if path.is_empty() || segments.iter().any(String::is_empty) {
        return Err(format!(
            "{path:?} is not a field path (attribute names joined by dots, such as data.qty)"
        ));
    }
    if segments.len() > PATH_SEGMENTS_MAX {
        return Err(format!(
            "{path:?} has more than {PATH_SEGMENTS_MAX} segments (PATH_SEGMENTS_MAX)"
        ));
    }
    Ok(segments)
}
