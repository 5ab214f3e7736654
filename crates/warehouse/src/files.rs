//! The files on disk: names, the atomic write, the positions file, and the walk that finds
//! committed groups and removes what a crash left half done.
//!
//! A micro-batch of one topic partition covers the offsets `first..=last` (from the position
//! the previous batch ended at, to the position this one ends at, minus one: events the
//! pipeline filtered out or dead-lettered are covered too). It becomes `n` files, one per
//! directory (date and `partition_by` value), named
//! `part-p{partition}-{first:020}-{last:020}-{k}of{n}.parquet` for `k` in `1..=n`. A group is
//! complete when all `n` names exist; only complete groups are committed.

use crate::row::{Cell, Row};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ColumnType, Compression};

/// The positions file at the root of the sink's directory: positions stored with no records
/// (a start at `latest`, events filtered out or skipped by retention).
pub const POSITIONS_FILE: &str = "_gearbox_positions.json";
/// How deep below the sink's directory the walk looks for files (`date=…/<name>=…/`, with room).
pub const DEPTH_MAX: usize = 4;
/// Files the walk looks at, across the directory tree; more is an error (the directory is not
/// only this sink's).
pub const WALK_FILES_MAX: usize = 10_000_000;
/// The key-value metadata keys each file carries.
pub const META_PARTITION: &str = "gearbox.partition";
/// The batch's first offset.
pub const META_FIRST: &str = "gearbox.first_offset";
/// The batch's last offset.
pub const META_LAST: &str = "gearbox.last_offset";
/// Which file of the group (from 1).
pub const META_PART: &str = "gearbox.part";
/// How many files the group has.
pub const META_PARTS: &str = "gearbox.parts";

/// The name of file `k` of `n` of a group.
#[must_use]
pub fn file_name(partition: u32, first: u64, last: u64, k: usize, n: usize) -> String {
    format!("part-p{partition}-{first:020}-{last:020}-{k}of{n}.parquet")
}

/// A part file's name, parsed: (partition, first, last, k, n).
#[must_use]
pub fn parse_file_name(name: &str) -> Option<(u32, u64, u64, usize, usize)> {
    let rest = name.strip_prefix("part-p")?.strip_suffix(".parquet")?;
    let mut it = rest.split('-');
    let partition = it.next()?.parse().ok()?;
    let first = it.next()?;
    let last = it.next()?;
    let (k, n) = it.next()?.split_once("of")?;
    if it.next().is_some() || first.len() != 20 || last.len() != 20 {
        return None;
    }
    let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
    let (k, n): (usize, usize) = (k.parse().ok()?, n.parse().ok()?);
    (first <= last && (1..=n).contains(&k)).then_some((partition, first, last, k, n))
}

/// The Arrow schema: the envelope, then the typed columns.
pub(crate) fn schema<'a>(columns: impl Iterator<Item = (&'a str, ColumnType)>) -> SchemaRef {
    let time = || DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("subject", DataType::Utf8, true),
        Field::new("time", time(), false),
        Field::new("partition", DataType::Int64, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("data", DataType::Utf8, true),
    ];
    for (name, kind) in columns {
        let t = match kind {
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::String => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::Timestamp => time(),
        };
        fields.push(Field::new(name, t, true));
    }
    Arc::new(Schema::new(fields))
}

/// The rows as one Arrow batch of `schema`.
fn batch(schema: &SchemaRef, rows: &[&Row]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let ints = |f: &dyn Fn(&Row) -> i64| -> ArrayRef {
        let mut b = Int64Builder::new();
        for r in rows {
            b.append_value(f(r));
        }
        Arc::new(b.finish())
    };
    let mut time = TimestampMillisecondBuilder::new().with_timezone("UTC");
    for r in rows {
        time.append_value(r.time_ms);
    }
    let mut columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.id.as_str())),
        strings(&|r| r.source.as_deref()),
        strings(&|r| r.kind.as_deref()),
        strings(&|r| r.subject.as_deref()),
        Arc::new(time.finish()),
        ints(&|r| i64::from(r.partition)),
        ints(&|r| r.offset as i64),
        strings(&|r| r.data.as_deref()),
    ];
    let typed = schema.fields().len() - columns.len();
    for i in 0..typed {
        let kind = schema.field(columns.len()).data_type().clone();
        let column: ArrayRef = match kind {
            DataType::Int64 => {
                let mut b = Int64Builder::new();
                for r in rows {
                    b.append_option(match &r.cells[i] {
                        Cell::Int(v) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Float64 => {
                let mut b = Float64Builder::new();
                for r in rows {
                    b.append_option(match &r.cells[i] {
                        Cell::Float(v) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Boolean => {
                let mut b = BooleanBuilder::new();
                for r in rows {
                    b.append_option(match &r.cells[i] {
                        Cell::Bool(v) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            DataType::Timestamp(..) => {
                let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                for r in rows {
                    b.append_option(match &r.cells[i] {
                        Cell::Time(v) => Some(*v),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::new();
                for r in rows {
                    b.append_option(match &r.cells[i] {
                        Cell::Str(v) => Some(v.as_str()),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        };
        columns.push(column);
    }
    RecordBatch::try_new(schema.clone(), columns)
}

/// One file to write: where, what, and the group it belongs to.
pub(crate) struct PartFile<'a> {
    pub dir: PathBuf,
    pub name: String,
    pub rows: Vec<&'a Row>,
    pub meta: Vec<(&'static str, String)>,
}

/// Writes a file atomically: a hidden temporary name in the same directory, fsync, rename,
/// fsync of the directory. Creates the directory (and fsyncs its parents) if needed.
///
/// # Errors
/// Any I/O or encoding failure; the temporary file is removed (best effort).
pub(crate) fn write_part(
    root: &Path,
    schema: &SchemaRef,
    compression: Compression,
    part: &PartFile<'_>,
) -> std::io::Result<()> {
    create_dirs(root, &part.dir)?;
    let tmp = part.dir.join(format!(".{}.tmp", part.name));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let compression = match compression {
            Compression::Zstd => parquet::basic::Compression::ZSTD(Default::default()),
            Compression::Snappy => parquet::basic::Compression::SNAPPY,
            Compression::None => parquet::basic::Compression::UNCOMPRESSED,
        };
        let meta = part
            .meta
            .iter()
            .map(|(k, v)| KeyValue::new((*k).to_string(), v.clone()))
            .collect();
        let props = WriterProperties::builder()
            .set_compression(compression)
            .set_key_value_metadata(Some(meta))
            .set_created_by(format!("gearbox {}", env!("CARGO_PKG_VERSION")))
            .build();
        let batch = batch(schema, &part.rows).map_err(std::io::Error::other)?;
        let mut writer = ArrowWriter::try_new(&mut file, schema.clone(), Some(props))
            .map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
        writer.close().map_err(std::io::Error::other)?;
        file.flush()?;
        file.sync_all()?;
        std::fs::rename(&tmp, part.dir.join(&part.name))?;
        sync_dir(&part.dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` below `root` level by level, fsyncing the parent of each level it creates, so
/// a file renamed into it is not lost with its directory.
fn create_dirs(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(root);
    if dir != root {
        create_dirs(root, parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync of a directory (its entries: a rename, a create, a delete).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes the positions file atomically.
pub(crate) fn write_positions(root: &Path, positions: &BTreeMap<u32, u64>) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let tmp = root.join(format!(".{POSITIONS_FILE}.tmp"));
    let list: Vec<(u32, u64)> = positions.iter().map(|(&p, &o)| (p, o)).collect();
    let body = serde_json::json!({"version": 1, "positions": list}).to_string();
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, root.join(POSITIONS_FILE))?;
    sync_dir(root)
}

/// The positions file's positions (empty if there is none).
///
/// # Errors
/// An unreadable or malformed file.
pub(crate) fn read_positions(root: &Path) -> std::io::Result<BTreeMap<u32, u64>> {
    let text = match std::fs::read_to_string(root.join(POSITIONS_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    #[derive(serde::Deserialize)]
    struct Stored {
        positions: Vec<(u32, u64)>,
    }
    let stored: Stored = serde_json::from_str(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{POSITIONS_FILE}: {e}"),
        )
    })?;
    Ok(stored.positions.into_iter().collect())
}

/// A part file found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub path: PathBuf,
    pub partition: u32,
    pub first: u64,
    pub last: u64,
    pub k: usize,
    pub n: usize,
}

/// What the walk found: part files by group, and leftover temporary files.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// (partition, first, last, n) → the files present.
    pub groups: BTreeMap<(u32, u64, u64, usize), Vec<Found>>,
    pub temporaries: Vec<PathBuf>,
}

impl Walk {
    /// Whether a group has all its files.
    pub fn complete(files: &[Found], n: usize) -> bool {
        let ks: BTreeSet<usize> = files.iter().map(|f| f.k).collect();
        ks.len() == n && ks.iter().copied().eq(1..=n)
    }

    /// Per partition, the position after the last complete group.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for ((p, _, last, n), files) in &self.groups {
            if Walk::complete(files, *n) {
                let e = out.entry(*p).or_insert(0);
                *e = (*e).max(last + 1);
            }
        }
        out
    }
}

/// Walks `root` (missing: nothing) for part files and temporaries.
///
/// # Errors
/// An I/O error, or more than [`WALK_FILES_MAX`] entries.
pub(crate) fn walk(root: &Path) -> std::io::Result<Walk> {
    let mut out = Walk::default();
    let mut seen = 0usize;
    walk_into(root, 0, &mut out, &mut seen)?;
    Ok(out)
}

fn walk_into(dir: &Path, depth: usize, out: &mut Walk, seen: &mut usize) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        *seen += 1;
        if *seen > WALK_FILES_MAX {
            return Err(std::io::Error::other(format!(
                "more than {WALK_FILES_MAX} entries under {} (WALK_FILES_MAX)",
                dir.display()
            )));
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if depth < DEPTH_MAX && name.contains('=') {
                walk_into(&path, depth + 1, out, seen)?;
            }
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            out.temporaries.push(path);
        } else if let Some((partition, first, last, k, n)) = parse_file_name(&name) {
            out.groups
                .entry((partition, first, last, n))
                .or_default()
                .push(Found {
                    path,
                    partition,
                    first,
                    last,
                    k,
                    n,
                });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_offset() {
        let n = file_name(3, 7, 1_000, 2, 5);
        assert_eq!(
            n,
            "part-p3-00000000000000000007-00000000000000001000-2of5.parquet"
        );
        assert_eq!(parse_file_name(&n), Some((3, 7, 1_000, 2, 5)));
        assert!(file_name(0, 9, 10, 1, 1) < file_name(0, 11, 12, 1, 1));
        for bad in [
            "part-p3-7-1000-2of5.parquet",
            "part-p3-00000000000000000007-00000000000000001000-6of5.parquet",
            "part-p3-00000000000000000007-00000000000000001000-0of5.parquet",
            "part-p3-00000000000000001000-00000000000000000007-1of1.parquet",
            "part-px-00000000000000000007-00000000000000001000-1of1.parquet",
            ".part-p3-00000000000000000007-00000000000000001000-1of1.parquet.tmp",
            "part-p3-00000000000000000007-00000000000000001000-1of1.parquet.crc",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
