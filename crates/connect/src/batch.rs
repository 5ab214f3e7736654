//! Batch jobs: gear read in *runs* (a directory of export files, a SQL query with a watermark),
//! started by a schedule ([`crate::schedule::Scheduled`]) instead of read continuously.
//!
//! A job reads everything after a watermark, item by item, and says at the end of the run which
//! watermark it reached. The scheduler stores that watermark only once every item of the run is
//! appended or dead-lettered, so a run cut short (a crash, a failed append) is run again from the
//! watermark before it; deterministic event ids ([`RowShape`]) make the rerun a no-op in the log.

use crate::source::{Rejected, SourceError};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use std::future::Future;

/// One item of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A draft event (CloudEvents structured JSON), usually from [`RowShape::draft`].
    Event(Value),
    /// A row that could not be read; dead-lettered with its error (which names the file and
    /// line, or the query row, and the field).
    Rejected(Rejected),
}

/// A source read in runs.
///
/// The scheduler calls `start`, then `next` until it returns no items, then `watermark`. Any
/// error ends the run; the next run starts again from the last stored watermark.
pub trait BatchJob: Send + 'static {
    /// The connector type, for metrics (`files`, `sql`).
    fn kind(&self) -> &'static str;

    /// Starts a run that reads everything after `watermark` (`None`: from the configured
    /// beginning).
    fn start(
        &mut self,
        watermark: Option<String>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The run's next items, at most `max`, in order; none means the run is complete.
    fn next(&mut self, max: usize) -> impl Future<Output = Result<Vec<Item>, SourceError>> + Send;

    /// The watermark the run reached, once `next` has returned no items (`None`: unchanged).
    fn watermark(&self) -> Option<String>;
}

/// Most fields in a business key.
pub const KEY_FIELDS_MAX: usize = 16;

/// How a row becomes an event: which fields are its business key and version, and the event's
/// type and source. `key: [sku]`, `version: updated_at`, `type: inventory.level`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowShape {
    /// The fields that identify the row's entity, in order; the event's `subject` is their
    /// values joined with `/`.
    pub key: Vec<String>,
    /// The field that tells versions of an entity apart (an `updated_at`, a revision). Without
    /// one, the version is a hash of the whole row, so an unchanged row is the same event.
    #[serde(default)]
    pub version: Option<String>,
    /// The CloudEvents `type` of every event.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The CloudEvents `source` (default `gearbox/<pipeline>`, set by the connector).
    #[serde(default)]
    pub source: Option<String>,
}

impl RowShape {
    /// Problems with the section, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.key.is_empty() {
            problems.push(("key".into(), "name at least one key field".into()));
        }
        if self.key.len() > KEY_FIELDS_MAX {
            problems.push(("key".into(), format!("at most {KEY_FIELDS_MAX} key fields")));
        }
        for (i, k) in self.key.iter().enumerate() {
            if k.is_empty() {
                problems.push((format!("key[{i}]"), "a field name is empty".into()));
            }
        }
        if self.event_type.is_empty() {
            problems.push(("type".into(), "must not be empty".into()));
        }
        problems
    }

    /// The draft event for `row`: id from the key and version, `subject` the key, `data` the
    /// row. `origin` says where the row came from (`exports/a.csv:17`) for the error.
    ///
    /// # Errors
    /// A key or version field is missing, null, or not a scalar: the message names the origin
    /// and the field.
    pub fn draft(
        &self,
        row: Map<String, Value>,
        origin: &str,
        default_source: &str,
    ) -> Result<Value, String> {
        let mut parts = Vec::with_capacity(self.key.len());
        for field in &self.key {
            parts.push(scalar(&row, field).map_err(|why| format!("{origin}: key field {why}"))?);
        }
        let key = parts.join("/");
        let version = match &self.version {
            Some(field) => {
                scalar(&row, field).map_err(|why| format!("{origin}: version field {why}"))?
            }
            None => content_hash(&Value::Object(row.clone())),
        };
        let id = event_id(&self.event_type, &key, &version);
        let mut event = Map::new();
        event.insert("specversion".into(), "1.0".into());
        event.insert("id".into(), id.into());
        event.insert(
            "source".into(),
            self.source.as_deref().unwrap_or(default_source).into(),
        );
        event.insert("type".into(), self.event_type.clone().into());
        event.insert("subject".into(), key.into());
        event.insert("datacontenttype".into(), "application/json".into());
        event.insert("data".into(), Value::Object(row));
        Ok(Value::Object(event))
    }
}

/// A field's value as text, for keys and versions.
fn scalar(row: &Map<String, Value>, field: &str) -> Result<String, String> {
    match row.get(field) {
        None => Err(format!("`{field}` is missing")),
        Some(Value::Null) => Err(format!("`{field}` is null")),
        Some(Value::String(s)) if s.is_empty() => Err(format!("`{field}` is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(_) => Err(format!("`{field}` is not a scalar")),
    }
}

/// The deterministic event id of version `version` of entity `key` of type `event_type`: 32 hex
/// digits of SHA-256, so a rerun gives the same ids and the log deduplicates them.
#[must_use]
pub fn event_id(event_type: &str, key: &str, version: &str) -> String {
    let mut h = Sha256::new();
    for part in [event_type, key, version] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash of a JSON value that does not depend on object key order.
#[must_use]
pub fn content_hash(value: &Value) -> String {
    fn canonical(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    canonical(&m[k], out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    canonical(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut s = String::new();
    canonical(value, &mut s);
    let digest = Sha256::digest(s.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(version: Option<&str>) -> RowShape {
        RowShape {
            key: vec!["store".into(), "sku".into()],
            version: version.map(Into::into),
            event_type: "inventory.level".into(),
            source: None,
        }
    }

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("an object")
    }

    #[test]
    fn the_id_comes_from_key_and_version_only() {
        let s = shape(Some("updated_at"));
        let a = s
            .draft(
                row(json!({"store": "s1", "sku": 7, "qty": 3, "updated_at": "t1"})),
                "a.csv:2",
                "gearbox/p",
            )
            .unwrap();
        let b = s
            .draft(
                row(json!({"store": "s1", "sku": 7, "qty": 9, "updated_at": "t1"})),
                "b.csv:9",
                "gearbox/p",
            )
            .unwrap();
        let c = s
            .draft(
                row(json!({"store": "s1", "sku": 7, "qty": 3, "updated_at": "t2"})),
                "a.csv:2",
                "gearbox/p",
            )
            .unwrap();
        assert_eq!(a["id"], b["id"]);
        assert_ne!(a["id"], c["id"]);
        assert_eq!(a["subject"], "s1/7");
        assert_eq!(a["source"], "gearbox/p");
        assert_eq!(a["data"]["qty"], 3);
        assert_eq!(a["id"].as_str().unwrap().len(), 32);
    }

    #[test]
    fn without_a_version_an_unchanged_row_is_the_same_event_in_any_key_order() {
        let s = shape(None);
        let a = s
            .draft(
                row(json!({"store": "s1", "sku": "7", "qty": 3})),
                "x",
                "src",
            )
            .unwrap();
        let b = s
            .draft(
                row(json!({"qty": 3, "sku": "7", "store": "s1"})),
                "y",
                "src",
            )
            .unwrap();
        let c = s
            .draft(
                row(json!({"store": "s1", "sku": "7", "qty": 4})),
                "x",
                "src",
            )
            .unwrap();
        assert_eq!(a["id"], b["id"]);
        assert_ne!(a["id"], c["id"]);
    }

    #[test]
    fn a_missing_or_null_key_names_the_origin_and_field() {
        let s = shape(Some("updated_at"));
        let e = s
            .draft(
                row(json!({"store": "s1", "updated_at": "t"})),
                "inv.csv:17",
                "src",
            )
            .unwrap_err();
        assert_eq!(e, "inv.csv:17: key field `sku` is missing");
        let e = s
            .draft(
                row(json!({"store": "s1", "sku": null, "updated_at": "t"})),
                "inv.csv:18",
                "src",
            )
            .unwrap_err();
        assert_eq!(e, "inv.csv:18: key field `sku` is null");
        let e = s
            .draft(row(json!({"store": "s1", "sku": 1})), "q row 3", "src")
            .unwrap_err();
        assert_eq!(e, "q row 3: version field `updated_at` is missing");
    }

    #[test]
    fn key_parts_cannot_run_into_each_other() {
        assert_ne!(event_id("t", "ab", "c"), event_id("t", "a", "bc"));
    }

    #[test]
    fn validation_names_the_fields() {
        let mut s = shape(None);
        s.key.clear();
        s.event_type.clear();
        let problems = s.validate();
        assert!(problems.iter().any(|(p, _)| p == "key"));
        assert!(problems.iter().any(|(p, _)| p == "type"));
    }
}
