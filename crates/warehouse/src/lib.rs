//! The warehouse layer: a topic as Parquet files, committed effectively-once, and the reader
//! that reconciles them against the stream.
//!
//! # Layout
//!
//! ```text
//! <path>/_gearbox_positions.json                  positions stored with no records
//! <path>/date=2026-11-24/part-p0-{first:020}-{last:020}-1of1.parquet
//! <path>/date=2026-11-24/store=s-7/part-p1-…-1of2.parquet   (with partition_by: data.store)
//! <path>/date=2026-11-25/store=s-7/part-p1-…-2of2.parquet
//! ```
//!
//! The date is the event's CloudEvents `time` in UTC (the sink's wall clock for an event
//! without one). Each file holds the envelope (`id`, `source`, `type`, `subject`, `time` as
//! TIMESTAMP(MILLIS, UTC), `partition`, `offset`, `data` as JSON text), then the typed
//! `columns:`, and carries its batch in its key-value metadata (`gearbox.partition`,
//! `gearbox.first_offset`, `gearbox.last_offset`, `gearbox.part`, `gearbox.parts`).
//!
//! # The commit protocol
//!
//! The runtime applies batches in offset order per partition ([`TransactionalSink`]); the sink
//! buffers them (a micro-batch) and commits on its policy: `records_max` records, `bytes_max`
//! bytes, or `interval_ms` since the oldest buffered record (checked on every apply and when the
//! pipeline is idle). A commit writes, for each topic partition with buffered rows, one *group*
//! covering the offsets `first..=last`: `first` is where the previous group (or the stored
//! positions) ended, `last` is one below the position the runtime gave after the buffered rows.
//! So consecutive groups of a partition tile its offsets with no gap and no overlap, and events
//! the pipeline filtered out or dead-lettered are covered by the range without a row. A group
//! is one file per directory (date, `partition_by` value), file `k` of `n` named `…-{k}of{n}`.
//! Each file is written under a hidden temporary name, fsynced, renamed, and its directory
//! fsynced (new directories are fsynced into their parents).
//!
//! Positions that move with nothing buffered (a start at `latest`, a batch wholly filtered out,
//! a retention gap) are written to the positions file, atomically (temporary, fsync, rename,
//! fsync of the directory), after the groups of the same commit.
//!
//! **Recovery** ([`TransactionalSink::positions`], at every start) removes temporary files and
//! every *incomplete* group (fewer than `n` of its files: a crash between its renames), then
//! returns, per partition, the end of its last complete group or the positions file's
//! position, whichever is further. The runtime reads from there.
//!
//! **Why it is effectively-once.** A position is only ever made durable after every row below
//! it is in a complete group: the positions file is written after the groups, and a group's
//! range ends where its rows end. A crash before a group's last rename leaves it incomplete, so
//! recovery removes it and its rows are read again: nothing is lost. A crash after it leaves it
//! complete, and recovery starts after it: nothing is read twice. Buffered rows are in no file,
//! so they are read again. A retried `apply` (after an I/O error) skips rows at offsets already
//! taken, so a row is buffered once. Across the union of complete groups, each (partition,
//! offset) that reached the sink is in exactly one file.
//!
//! Readers must ignore incomplete groups (and [`read::scan`] says which they are); a reader
//! that globs `**/*.parquet` while the sink is writing or before it has recovered from a crash
//! can see the first files of a group whose last ones are not there yet.
//!
//! # Limits
//!
//! The policy's limits are in [`config`]; a micro-batch is bounded by `records_max` and
//! `bytes_max` (memory), and a partition's group by [`config::FILES_PER_BATCH_MAX`] files.
//! A record larger than `bytes_max` on its own is refused by `check` and dead-lettered.
//!
//! [`TransactionalSink`]: gearbox_connect::sink::TransactionalSink
//! [`TransactionalSink::positions`]: gearbox_connect::sink::TransactionalSink::positions

pub mod config;
pub mod files;
pub mod read;
pub mod reconcile;
mod row;
mod sink;

pub use config::{ColumnConfig, ColumnType, Compression, ParquetConfig};
pub use read::{
    Field, ReadError, Select, WarehouseFile, WarehouseRow, committed_positions, read_rows, scan,
};
pub use reconcile::{
    Bucket, Diff, GroupBy, ReconcileError, ReconcileOptions, Report, Side, Status, StreamEvent,
    reconcile,
};
pub use row::{EMPTY_VALUE_DIR, NULL_VALUE_DIR};
pub use sink::{ConfigError, ParquetSink};
