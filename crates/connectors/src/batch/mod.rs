//! Batch sources: gear read in runs on a schedule rather than continuously, as
//! [`gearbox_connect::batch::BatchJob`]s that the registry wraps in
//! [`gearbox_connect::schedule::Scheduled`].
//!
//! | module | what it is |
//! |---|---|
//! | `files` | Export files in a directory (or matching a pattern): CSV, JSONL, Parquet, read in the order of a name or modification-time watermark. |
//! | `sql` | A query over Postgres or MariaDB/MySQL with a `:watermark` parameter (a timestamp or integer column, with an overlap for late rows). |
//!
//! Both turn each row into a draft event with [`gearbox_connect::batch::RowShape`] (the
//! `event:` section: business key, version, type, source), so an event's id depends only on the
//! row's key and version and a rerun is deduplicated by the log. A row that cannot be read is
//! an [`Item::Rejected`] whose record is `{"origin": "<where>", "record": <what was read>}` and
//! whose error names the origin (`/data/a.csv:17`, `query row 4`) and the field; the runtime
//! dead-letters it and the run goes on. The `event:` section is nested rather than flattened
//! into the connector's section because serde's `flatten` does not work with
//! `deny_unknown_fields`, and a misspelt key must be an error.

#[cfg(feature = "files")]
pub mod files;
#[cfg(feature = "sql")]
pub mod sql;

use gearbox_connect::batch::Item;
use gearbox_connect::source::Rejected;
use serde_json::{Value, json};

/// The CloudEvents `source` of a batch pipeline's events when `event.source` is not set.
#[must_use]
pub fn default_source(pipeline: &str) -> String {
    format!("gearbox/{pipeline}")
}

/// Problems of a nested section, with `prefix.` before each path.
pub(crate) fn nested(
    out: &mut Vec<(String, String)>,
    prefix: &str,
    problems: Vec<(String, String)>,
) {
    out.extend(
        problems
            .into_iter()
            .map(|(path, reason)| (format!("{prefix}.{path}"), reason)),
    );
}

/// A rejected row: what was read and where, and why.
pub(crate) fn rejected(origin: &str, record: Value, error: String) -> Item {
    Item::Rejected(Rejected {
        record: json!({"origin": origin, "record": record}),
        error,
    })
}

/// A row as a draft event, or a rejected row when its key or version is unusable. The event
/// carries the `origin` extension (`file:line`, `query row N`) for lineage.
pub(crate) fn draft(
    shape: &gearbox_connect::batch::RowShape,
    row: serde_json::Map<String, Value>,
    origin: &str,
    default_source: &str,
) -> Item {
    let kept = row.clone();
    match shape.draft(row, origin, default_source) {
        Ok(mut event) => {
            event["origin"] = Value::String(origin.to_string());
            Item::Event(event)
        }
        Err(e) => rejected(origin, Value::Object(kept), e),
    }
}
