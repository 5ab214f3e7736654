//! The `files` batch source: export files dropped in a directory (CSV with a header, JSON Lines,
//! Parquet), each row an event.
//!
//! # Which files a run reads
//!
//! `path` is a directory (every regular file in it) or a pattern whose last component may hold
//! `*` (any run of characters) and `?` (one character): `/data/exports/inventory-*.csv`. Only
//! the file name is matched; subdirectories are not entered. Files whose name is not UTF-8 are
//! skipped.
//!
//! A run lists the files after the stored watermark, in watermark order:
//! - `watermark: name` (default): the file name; a file is new when its name sorts after the
//!   stored one. Exports named by date or sequence (`inventory-2026-11-24.csv`) fit this.
//! - `watermark: mtime`: the modification time in nanoseconds, tie-broken by name, stored as
//!   `"{mtime_ns:020}:{name}"`.
//!
//! A file modified less than `settle_ms` ago is still being written: it and every file after it
//! in watermark order are left for a later run (reading a later file first would move the
//! watermark past the unsettled one and skip it). A run reads at most `files_per_run_max`
//! files; the rest wait for the next run. The watermark a run reaches is the last file it read
//! to the end. A file changed after a run read it is not read again (its position is behind the
//! watermark); deterministic ids make a re-export under a new name harmless.
//!
//! # Formats
//!
//! `format:` (`csv`, `jsonl`, `parquet`), or else each file's extension (`.csv`, `.jsonl`,
//! `.ndjson`, `.parquet`). A file of an unknown format is rejected as a whole (one dead letter
//! naming it) and passed.
//! - CSV: the first record is the header. Values are strings unless `types` names the column
//!   (`integer`, `number`, `boolean`, `string`); a typed empty value is `null`, and a typed value
//!   that does not parse rejects the row, naming `file:line` and the column. Quoted fields may
//!   span lines; a record's line is its first line. A record with a different number of fields
//!   than the header is rejected.
//! - JSONL: one JSON object per line; blank lines are skipped; a line that is not an object is
//!   rejected with `file:line`.
//! - Parquet: rows through the `parquet` crate's record API, rendered as its JSON (timestamps
//!   and decimals as that crate prints them). A row is numbered from 1 (`file#row 17`); a read
//!   error rejects the rest of the file as one dead letter naming the row it stopped at.
//!
//! # Limits
//!
//! Files are read streaming, one record at a time, on a blocking thread: a CSV or JSONL record
//! longer than `record_bytes_max` (default [`RECORD_BYTES_DEFAULT`], at most
//! [`RECORD_BYTES_MAX`]) is rejected with `file:line` and skipped without being held in memory;
//! a Parquet row whose JSON is longer is rejected the same way. A listing keeps only the first
//! `files_per_run_max` files (default [`FILES_PER_RUN_DEFAULT`], at most [`FILES_PER_RUN_MAX`])
//! in watermark order. A CSV header has at most [`CSV_COLUMNS_MAX`] columns.
//!
//! # Errors
//!
//! A directory that cannot be listed, or a file that cannot be read (other than one that
//! vanished after the listing, which is skipped), is a transient error: the run is retried from
//! its starting watermark.

use super::{default_source, draft, nested, rejected};
use gearbox_connect::batch::{BatchJob, Item, RowShape};
use gearbox_connect::schedule::ScheduleConfig;
use gearbox_connect::source::SourceError;
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Default longest CSV/JSONL record (and Parquet row as JSON), in bytes.
pub const RECORD_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most `record_bytes_max` may be.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Default most files read in one run.
pub const FILES_PER_RUN_DEFAULT: usize = 1000;
/// Most `files_per_run_max` may be.
pub const FILES_PER_RUN_MAX: usize = 100_000;
/// Default time since a file's last modification before it is read, in ms.
pub const SETTLE_MS_DEFAULT: u64 = 1000;
/// Most `settle_ms` may be (a day).
pub const SETTLE_MS_MAX: u64 = 86_400_000;
/// Most columns in a CSV header.
pub const CSV_COLUMNS_MAX: usize = 4096;
/// Most entries in `types`.
pub const TYPES_MAX: usize = 4096;
/// Bytes of a too-long record kept in its dead letter.
pub const REJECTED_PREFIX_BYTES: usize = 256;
/// Buffer of each file reader, in bytes.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Comma-separated values with a header.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl Format {
    fn of(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            "parquet" => Some(Format::Parquet),
            _ => None,
        }
    }
}

/// The type of a CSV column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// Text (the default).
    String,
    /// A 64-bit signed integer.
    Integer,
    /// A finite floating-point number.
    Number,
    /// `true`/`false` (any case), `1`/`0`.
    Boolean,
}

/// What the watermark follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileWatermark {
    /// The file name.
    #[default]
    Name,
    /// The modification time, then the name.
    Mtime,
}

/// The `files` source's section.
///
/// ```yaml
/// files:
///   path: /data/exports/inventory-*.csv
///   format: csv                 # default: from each file's extension
///   delimiter: ";"              # CSV only, default ","
///   types: {qty: integer, price: number, active: boolean}   # CSV only
///   watermark: name             # or mtime
///   settle_ms: 1000
///   files_per_run_max: 1000
///   record_bytes_max: 1048576
///   schedule: {cron: "*/5 * * * *"}
///   event: {key: [sku], version: updated_at, type: inventory.level}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// A directory, or a pattern in the last component.
    pub path: String,
    /// The format of every file (default: from the extension).
    #[serde(default)]
    pub format: Option<Format>,
    /// The CSV delimiter, one ASCII character.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// CSV column types.
    #[serde(default)]
    pub types: BTreeMap<String, ColumnType>,
    /// Name or modification-time order.
    #[serde(default)]
    pub watermark: FileWatermark,
    /// How long a file must be unmodified before it is read, in ms.
    #[serde(default = "settle_default")]
    pub settle_ms: u64,
    /// Most files one run reads.
    #[serde(default = "files_per_run_default")]
    pub files_per_run_max: usize,
    /// Longest record, in bytes.
    #[serde(default = "record_bytes_default")]
    pub record_bytes_max: usize,
    /// When runs start.
    pub schedule: ScheduleConfig,
    /// How a row becomes an event.
    pub event: RowShape,
}

fn settle_default() -> u64 {
    SETTLE_MS_DEFAULT
}
fn files_per_run_default() -> usize {
    FILES_PER_RUN_DEFAULT
}
fn record_bytes_default() -> usize {
    RECORD_BYTES_DEFAULT
}

impl FilesConfig {
    /// Every problem in the section, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(e) = split_path(&self.path) {
            out.push(("path".into(), e));
        }
        let csv = self.format.is_none_or(|f| f == Format::Csv);
        if let Some(d) = &self.delimiter {
            if !csv {
                out.push(("delimiter".into(), "only for CSV".into()));
            } else if d.len() != 1 || !d.is_ascii() || d == "\"" || d == "\n" || d == "\r" {
                out.push((
                    "delimiter".into(),
                    "must be one ASCII character other than a quote or a line break".into(),
                ));
            }
        }
        if !self.types.is_empty() && !csv {
            out.push(("types".into(), "only for CSV".into()));
        }
        if self.types.len() > TYPES_MAX {
            out.push(("types".into(), format!("at most {TYPES_MAX} columns")));
        }
        if self.settle_ms > SETTLE_MS_MAX {
            out.push(("settle_ms".into(), format!("at most {SETTLE_MS_MAX}")));
        }
        if !(1..=FILES_PER_RUN_MAX).contains(&self.files_per_run_max) {
            out.push((
                "files_per_run_max".into(),
                format!("must be 1 to {FILES_PER_RUN_MAX}"),
            ));
        }
        if !(1..=RECORD_BYTES_MAX).contains(&self.record_bytes_max) {
            out.push((
                "record_bytes_max".into(),
                format!("must be 1 to {RECORD_BYTES_MAX}"),
            ));
        }
        nested(&mut out, "schedule", self.schedule.validate());
        nested(&mut out, "event", self.event.validate());
        out
    }
}

/// The directory and the file-name pattern (`None`: every file).
fn split_path(path: &str) -> Result<(PathBuf, Option<String>), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let p = Path::new(path);
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let parent = p.parent().map(Path::to_path_buf).unwrap_or_default();
    if parent.to_string_lossy().contains(['*', '?']) {
        return Err("a pattern may use * and ? in the last component only".into());
    }
    if name.contains(['*', '?']) {
        let dir = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent
        };
        Ok((dir, Some(name.to_string())))
    } else {
        Ok((p.to_path_buf(), None))
    }
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
#[must_use]
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`: linear in practice.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// A file a run will read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// The watermark it sets once read (also the sort key: `name`, or `mtime:name` padded).
    key: String,
    path: PathBuf,
    settled: bool,
}

fn watermark_key(kind: FileWatermark, name: &str, mtime_ns: u128) -> String {
    match kind {
        FileWatermark::Name => name.to_string(),
        FileWatermark::Mtime => format!("{mtime_ns:020}:{name}"),
    }
}

/// The files after `after`, in watermark order, at most `max`, cut before the first unsettled
/// one.
fn list(
    config: &FilesConfig,
    after: Option<&str>,
    now: SystemTime,
) -> Result<VecDeque<Candidate>, SourceError> {
    let (dir, pattern) = split_path(&config.path).map_err(|e| SourceError::Fatal {
        message: format!("path: {e}"),
    })?;
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| SourceError::transient(format!("listing {}: {e}", dir.display())))?;
    // A max-heap of the first `max` candidates in watermark order: bounded memory however many
    // files the directory holds.
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| SourceError::transient(format!("listing {}: {e}", dir.display())))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if pattern.as_deref().is_some_and(|p| !matches(p, &name)) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(SourceError::transient(format!(
                    "reading {}: {e}",
                    entry.path().display()
                )));
            }
        };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let mtime_ns = mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let key = watermark_key(config.watermark, &name, mtime_ns);
        if after.is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        let age_ms = now.duration_since(mtime).map_or(0, |d| d.as_millis());
        let settled = age_ms >= u128::from(config.settle_ms);
        heap.push(Candidate {
            key,
            path: entry.path(),
            settled,
        });
        if heap.len() > config.files_per_run_max {
            heap.pop();
        }
    }
    let mut files: VecDeque<Candidate> = heap.into_sorted_vec().into();
    if let Some(i) = files.iter().position(|c| !c.settled) {
        files.truncate(i);
    }
    Ok(files)
}

/// One physical line, read with a bound.
#[derive(Debug, Default)]
struct Line {
    /// The bytes kept (without the line break), at most the bound.
    bytes: Vec<u8>,
    /// The line's full length.
    len: usize,
    /// Quote characters in the whole line (for CSV records that span lines).
    quotes: usize,
}

/// Reads one line into `line`, keeping at most `max` bytes of it; false at the end of input.
fn read_line(r: &mut impl BufRead, line: &mut Line, max: usize) -> std::io::Result<bool> {
    line.bytes.clear();
    line.len = 0;
    line.quotes = 0;
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let ended = done > chunk.len();
        line.quotes += chunk.iter().filter(|b| **b == b'"').count();
        let room = (max + 1).saturating_sub(line.bytes.len());
        line.bytes
            .extend_from_slice(&chunk[..chunk.len().min(room)]);
        line.len += chunk.len();
        r.consume(done);
        if ended {
            break;
        }
    }
    if line.bytes.last() == Some(&b'\r') && line.len <= max + 1 {
        line.bytes.pop();
        line.len -= 1;
    }
    Ok(any)
}

fn prefix(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(&bytes[..bytes.len().min(REJECTED_PREFIX_BYTES)]).into())
}

fn io_error(path: &Path, e: &std::io::Error) -> SourceError {
    SourceError::transient(format!("reading {}: {e}", path.display()))
}

/// A CSV file being read.
struct CsvFile {
    reader: BufReader<File>,
    path: String,
    delimiter: u8,
    /// The next physical line's number.
    line_no: u64,
    header: Option<Result<Vec<String>, String>>,
    line: Line,
    record: Vec<u8>,
}

/// A JSONL file being read.
struct JsonlFile {
    reader: BufReader<File>,
    path: String,
    line_no: u64,
    line: Line,
}

/// A Parquet file being read.
struct ParquetFile {
    rows: parquet::record::reader::RowIter<'static>,
    path: String,
    row_no: u64,
    done: bool,
}

enum Reader {
    Csv(Box<CsvFile>),
    Jsonl(JsonlFile),
    Parquet(Box<ParquetFile>),
    /// A file that cannot be read as rows (no known format, not Parquet): one dead letter, then
    /// done.
    Whole {
        path: String,
        error: String,
        done: bool,
    },
}

/// What a run shares with its readers.
struct Ctx {
    shape: RowShape,
    source: String,
    types: BTreeMap<String, ColumnType>,
    record_bytes_max: usize,
}

impl Reader {
    fn open(path: &Path, config: &FilesConfig) -> Result<Option<Reader>, SourceError> {
        let shown = path.display().to_string();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let format = config.format.or_else(|| Format::of(name));
        let file = match File::open(path) {
            Ok(f) => f,
            // Gone since the listing: nothing to read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, &e)),
        };
        Ok(Some(match format {
            None => Reader::Whole {
                error: format!(
                    "{shown}: unknown format (set `format`, or name it .csv, .jsonl, .ndjson or \
                     .parquet)"
                ),
                path: shown,
                done: false,
            },
            Some(Format::Csv) => Reader::Csv(Box::new(CsvFile {
                reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
                path: shown,
                delimiter: config
                    .delimiter
                    .as_deref()
                    .map_or(b',', |d| d.as_bytes()[0]),
                line_no: 1,
                header: None,
                line: Line::default(),
                record: Vec::new(),
            })),
            Some(Format::Jsonl) => Reader::Jsonl(JsonlFile {
                reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
                path: shown,
                line_no: 0,
                line: Line::default(),
            }),
            Some(Format::Parquet) => {
                match parquet::file::reader::SerializedFileReader::new(file) {
                    Ok(r) => Reader::Parquet(Box::new(ParquetFile {
                        rows: r.into_iter(),
                        path: shown,
                        row_no: 0,
                        done: false,
                    })),
                    // Not a Parquet file (or a torn one): the whole file is one dead letter.
                    Err(e) => Reader::Whole {
                        error: format!("{shown}: not a readable Parquet file: {e}"),
                        path: shown,
                        done: false,
                    },
                }
            }
        }))
    }

    /// The file's next item; `None` at its end.
    fn next(&mut self, ctx: &Ctx) -> Result<Option<Item>, SourceError> {
        match self {
            Reader::Csv(f) => f.next(ctx),
            Reader::Jsonl(f) => f.next(ctx),
            Reader::Parquet(f) => Ok(f.next(ctx)),
            Reader::Whole { path, error, done } => {
                if *done {
                    return Ok(None);
                }
                *done = true;
                Ok(Some(rejected(path, Value::Null, error.clone())))
            }
        }
    }
}

impl CsvFile {
    /// Reads the next logical record (quoted fields may span lines) into `self.record`; its
    /// first line's number and whether it fit, or `None` at the end.
    fn read_record(&mut self, max: usize) -> Result<Option<(u64, bool)>, SourceError> {
        let path = PathBuf::from(&self.path);
        loop {
            self.record.clear();
            let first = self.line_no;
            let mut quotes = 0usize;
            let mut len = 0usize;
            let mut any = false;
            loop {
                let more = read_line(&mut self.reader, &mut self.line, max)
                    .map_err(|e| io_error(&path, &e))?;
                if !more {
                    break;
                }
                any = true;
                self.line_no += 1;
                if len > 0 || !self.record.is_empty() {
                    len += 1;
                    if self.record.len() <= max {
                        self.record.push(b'\n');
                    }
                }
                len += self.line.len;
                let room = (max + 1).saturating_sub(self.record.len());
                let take = self.line.bytes.len().min(room);
                self.record.extend_from_slice(&self.line.bytes[..take]);
                quotes += self.line.quotes;
                if quotes.is_multiple_of(2) {
                    break;
                }
            }
            if !any {
                return Ok(None);
            }
            if len == 0 {
                // A blank line.
                continue;
            }
            return Ok(Some((first, len <= max)));
        }
    }

    fn fields(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .buffer_capacity(bytes.len().max(64))
            .from_reader(bytes);
        let mut record = csv::ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(_) => Ok(record.iter().map(<[u8]>::to_vec).collect()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn next(&mut self, ctx: &Ctx) -> Result<Option<Item>, SourceError> {
        loop {
            let Some((line, fits)) = self.read_record(ctx.record_bytes_max)? else {
                return Ok(None);
            };
            let origin = format!("{}:{line}", self.path);
            if !fits {
                return Ok(Some(rejected(
                    &origin,
                    prefix(&self.record),
                    format!(
                        "{origin}: the record is longer than record_bytes_max ({} bytes)",
                        ctx.record_bytes_max
                    ),
                )));
            }
            if line == 1 && self.record.starts_with(b"\xEF\xBB\xBF") {
                self.record.drain(..3);
            }
            let raw = prefix_all(&self.record);
            let fields = match self.fields(&self.record) {
                Ok(f) => f,
                Err(e) => {
                    return Ok(Some(rejected(&origin, raw, format!("{origin}: {e}"))));
                }
            };
            let Some(header) = &self.header else {
                self.header = Some(header_of(fields, &origin));
                if let Some(Err(e)) = &self.header {
                    return Ok(Some(rejected(&origin, raw, e.clone())));
                }
                continue;
            };
            let header = match header {
                Ok(h) => h,
                Err(_) => {
                    return Ok(Some(rejected(
                        &origin,
                        raw,
                        format!("{origin}: the file's header (line 1) is invalid"),
                    )));
                }
            };
            if fields.len() != header.len() {
                return Ok(Some(rejected(
                    &origin,
                    raw,
                    format!(
                        "{origin}: {} fields, but the header has {}",
                        fields.len(),
                        header.len()
                    ),
                )));
            }
            let row = match typed_row(header, fields, &ctx.types) {
                Ok(row) => row,
                Err(e) => return Ok(Some(rejected(&origin, raw, format!("{origin}: {e}")))),
            };
            return Ok(Some(draft(&ctx.shape, row, &origin, &ctx.source)));
        }
    }
}

fn prefix_all(bytes: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(bytes).into_owned())
}

fn header_of(fields: Vec<Vec<u8>>, origin: &str) -> Result<Vec<String>, String> {
    if fields.len() > CSV_COLUMNS_MAX {
        return Err(format!(
            "{origin}: the header has more than {CSV_COLUMNS_MAX} columns"
        ));
    }
    let mut names: Vec<String> = Vec::with_capacity(fields.len());
    for (i, f) in fields.into_iter().enumerate() {
        let name = String::from_utf8(f)
            .map_err(|_| format!("{origin}: header column {} is not UTF-8", i + 1))?;
        if name.is_empty() {
            return Err(format!("{origin}: header column {} is empty", i + 1));
        }
        if names.contains(&name) {
            return Err(format!("{origin}: header column `{name}` appears twice"));
        }
        names.push(name);
    }
    Ok(names)
}

/// A CSV record as a JSON object, values typed by `types`.
fn typed_row(
    header: &[String],
    fields: Vec<Vec<u8>>,
    types: &BTreeMap<String, ColumnType>,
) -> Result<Map<String, Value>, String> {
    let mut row = Map::new();
    for (name, bytes) in header.iter().zip(fields) {
        let text = String::from_utf8(bytes).map_err(|_| format!("column `{name}` is not UTF-8"))?;
        let ty = types.get(name).copied().unwrap_or(ColumnType::String);
        row.insert(name.clone(), typed(name, text, ty)?);
    }
    Ok(row)
}

fn typed(name: &str, text: String, ty: ColumnType) -> Result<Value, String> {
    if ty != ColumnType::String && text.trim().is_empty() {
        return Ok(Value::Null);
    }
    let t = text.trim();
    match ty {
        ColumnType::String => Ok(Value::String(text)),
        ColumnType::Integer => t
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| format!("column `{name}` is not an integer: {t:?}")),
        ColumnType::Number => t
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("column `{name}` is not a finite number: {t:?}")),
        ColumnType::Boolean => match t.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" => Ok(Value::Bool(false)),
            _ => Err(format!("column `{name}` is not a boolean: {t:?}")),
        },
    }
}

impl JsonlFile {
    fn next(&mut self, ctx: &Ctx) -> Result<Option<Item>, SourceError> {
        loop {
            let more = read_line(&mut self.reader, &mut self.line, ctx.record_bytes_max)
                .map_err(|e| io_error(Path::new(&self.path), &e))?;
            if !more {
                return Ok(None);
            }
            self.line_no += 1;
            let origin = format!("{}:{}", self.path, self.line_no);
            if self.line.len > ctx.record_bytes_max {
                return Ok(Some(rejected(
                    &origin,
                    prefix(&self.line.bytes),
                    format!(
                        "{origin}: the line is longer than record_bytes_max ({} bytes)",
                        ctx.record_bytes_max
                    ),
                )));
            }
            if self.line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(
                match serde_json::from_slice::<Value>(&self.line.bytes) {
                    Ok(Value::Object(row)) => draft(&ctx.shape, row, &origin, &ctx.source),
                    Ok(_) => rejected(
                        &origin,
                        prefix_all(&self.line.bytes),
                        format!("{origin}: the line is not a JSON object"),
                    ),
                    Err(e) => rejected(
                        &origin,
                        prefix_all(&self.line.bytes),
                        format!("{origin}: not JSON: {e}"),
                    ),
                },
            ));
        }
    }
}

impl ParquetFile {
    fn next(&mut self, ctx: &Ctx) -> Option<Item> {
        if self.done {
            return None;
        }
        let row = self.rows.next()?;
        self.row_no += 1;
        let origin = format!("{}#row {}", self.path, self.row_no);
        match row {
            Ok(row) => {
                let value = row.to_json_value();
                let Value::Object(map) = value else {
                    return Some(rejected(
                        &origin,
                        value,
                        format!("{origin}: the row is not a record"),
                    ));
                };
                let len = serde_json::to_vec(&map).map_or(0, |v| v.len());
                if len > ctx.record_bytes_max {
                    return Some(rejected(
                        &origin,
                        Value::Null,
                        format!(
                            "{origin}: the row is longer than record_bytes_max ({} bytes) as JSON",
                            ctx.record_bytes_max
                        ),
                    ));
                }
                Some(draft(&ctx.shape, map, &origin, &ctx.source))
            }
            Err(e) => {
                // The record reader does not resume after an error: the rest of the file is one
                // dead letter that says where reading stopped.
                self.done = true;
                Some(rejected(
                    &origin,
                    Value::Null,
                    format!("{origin}: reading stopped here, the rest of the file is unread: {e}"),
                ))
            }
        }
    }
}

/// A run in progress.
struct RunState {
    files: VecDeque<Candidate>,
    current: Option<(Candidate, Reader)>,
    /// The last file read to the end.
    reached: Option<String>,
}

/// The `files` batch job.
pub struct FilesJob {
    config: FilesConfig,
    ctx: std::sync::Arc<Ctx>,
    run: Option<Box<RunState>>,
    reached: Option<String>,
}

impl std::fmt::Debug for FilesJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesJob")
            .field("path", &self.config.path)
            .field("reached", &self.reached)
            .finish_non_exhaustive()
    }
}

/// Why a files job could not be built: the first problem of its section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FilesConfigError {
    /// The path below `source.files`.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl FilesJob {
    /// A job for `pipeline` (whose name makes the default event source).
    ///
    /// # Errors
    /// The section does not validate.
    pub fn new(config: FilesConfig, pipeline: &str) -> Result<FilesJob, FilesConfigError> {
        if let Some((field, reason)) = config.validate().into_iter().next() {
            return Err(FilesConfigError { field, reason });
        }
        let ctx = Ctx {
            shape: config.event.clone(),
            source: default_source(pipeline),
            types: config.types.clone(),
            record_bytes_max: config.record_bytes_max,
        };
        Ok(FilesJob {
            config,
            ctx: std::sync::Arc::new(ctx),
            run: None,
            reached: None,
        })
    }
}

impl RunState {
    fn read(
        &mut self,
        max: usize,
        config: &FilesConfig,
        ctx: &Ctx,
    ) -> Result<Vec<Item>, SourceError> {
        let mut items = Vec::new();
        while items.len() < max {
            if self.current.is_none() {
                let Some(next) = self.files.pop_front() else {
                    break;
                };
                match Reader::open(&next.path, config)? {
                    Some(reader) => self.current = Some((next, reader)),
                    None => {
                        self.reached = Some(next.key);
                        continue;
                    }
                }
            }
            let (file, reader) = self.current.as_mut().expect("a file is open");
            match reader.next(ctx)? {
                Some(item) => items.push(item),
                None => {
                    self.reached = Some(file.key.clone());
                    self.current = None;
                }
            }
        }
        Ok(items)
    }
}

impl BatchJob for FilesJob {
    fn kind(&self) -> &'static str {
        "files"
    }

    async fn start(&mut self, watermark: Option<String>) -> Result<(), SourceError> {
        let config = self.config.clone();
        let files = tokio::task::spawn_blocking(move || {
            list(&config, watermark.as_deref(), SystemTime::now())
        })
        .await
        .map_err(|e| SourceError::transient(format!("listing files: {e}")))??;
        self.reached = None;
        self.run = Some(Box::new(RunState {
            files,
            current: None,
            reached: None,
        }));
        Ok(())
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Item>, SourceError> {
        let Some(mut run) = self.run.take() else {
            // Dropped mid-read (a shutdown): the run is retried from its starting watermark.
            return Err(SourceError::transient("the run was interrupted"));
        };
        let config = self.config.clone();
        let ctx = self.ctx.clone();
        let (run, items) = tokio::task::spawn_blocking(move || {
            let items = run.read(max.max(1), &config, &ctx);
            (run, items)
        })
        .await
        .map_err(|e| SourceError::transient(format!("reading files: {e}")))?;
        self.reached.clone_from(&run.reached);
        let items = items?;
        self.run = Some(run);
        Ok(items)
    }

    fn watermark(&self) -> Option<String> {
        self.reached.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names() {
        for (p, n, want) in [
            ("inventory-*.csv", "inventory-2026.csv", true),
            ("inventory-*.csv", "inventory-.csv", true),
            ("inventory-*.csv", "inventory-2026.csv.tmp", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "x", true),
            ("*a*b", "xxaxxb", true),
            ("*a*b", "xxaxxbx", false),
        ] {
            assert_eq!(matches(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn a_pattern_only_in_the_last_component() {
        assert!(split_path("/data/*/x.csv").is_err());
        assert_eq!(
            split_path("/data/x-*.csv").unwrap(),
            (PathBuf::from("/data"), Some("x-*.csv".into()))
        );
        assert_eq!(split_path("/data").unwrap(), (PathBuf::from("/data"), None));
    }

    #[test]
    fn a_long_line_is_cut_to_the_bound_but_counted_whole() {
        let mut r = std::io::Cursor::new(b"0123456789\nab\n".to_vec());
        let mut line = Line::default();
        assert!(read_line(&mut r, &mut line, 4).unwrap());
        assert_eq!(line.len, 10);
        assert_eq!(line.bytes.len(), 5);
        assert!(read_line(&mut r, &mut line, 4).unwrap());
        assert_eq!(line.bytes, b"ab");
        assert!(!read_line(&mut r, &mut line, 4).unwrap());
    }

    #[test]
    fn typed_values() {
        assert_eq!(
            typed("q", " 7 ".into(), ColumnType::Integer),
            Ok(Value::from(7))
        );
        assert_eq!(typed("q", "".into(), ColumnType::Integer), Ok(Value::Null));
        assert_eq!(
            typed("q", "x".into(), ColumnType::Integer),
            Err("column `q` is not an integer: \"x\"".into())
        );
        assert_eq!(
            typed("a", "TRUE".into(), ColumnType::Boolean),
            Ok(Value::Bool(true))
        );
        assert!(typed("p", "NaN".into(), ColumnType::Number).is_err());
        assert_eq!(
            typed("s", " x ".into(), ColumnType::String),
            Ok(Value::from(" x "))
        );
    }
}
