//! CloudEvents 1.0: validation, the HTTP structured and binary modes, and the Kafka binding.
//!
//! An event is stored as one Kafka record in the CloudEvents Kafka protocol binding's binary
//! content mode: every attribute becomes a `ce_<name>` header, `datacontenttype` becomes the
//! `content-type` header, `data` is the value, and the `partitionkey` extension is the key. A
//! Kafka client therefore reads a standard CloudEvent, and a Kafka record that carries `ce_*`
//! headers reads over HTTP as that CloudEvent. A record with no `ce_*` headers reads with a
//! defined mapping (see [`CloudEvent::from_record`] and `docs/api.md`).
//!
//! Invariants: a [`CloudEvent`] that exists has passed [`CloudEvent::validate`]; every
//! validation error names the attribute it is about.

use base64::Engine as _;
use gearbox_log::batch::{Record, RecordHeader, RecordInput};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The only CloudEvents version accepted.
pub const SPEC_VERSION: &str = "1.0";
/// Longest extension attribute name accepted (the spec says names SHOULD NOT exceed 20).
pub const EXTENSION_NAME_BYTES_MAX: usize = 64;
/// Most extension attributes on one event.
pub const EXTENSIONS_MAX: usize = 64;
/// Longest attribute value accepted, in bytes.
pub const ATTRIBUTE_BYTES_MAX: usize = 4096;

/// The `partitionkey` extension: the record key, and so the partition.
pub const PARTITION_KEY: &str = "partitionkey";

/// Why an event was refused. `field` names the attribute (`source`, `data`, `ce-id`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A required attribute is absent.
    #[error("required attribute `{field}` is missing")]
    Missing {
        /// The attribute.
        field: String,
    },
    /// An attribute is present but not acceptable.
    #[error("attribute `{field}` is invalid: {reason}")]
    Invalid {
        /// The attribute.
        field: String,
        /// Why.
        reason: String,
    },
    /// `specversion` is not `1.0`.
    #[error("specversion {found:?} is not supported; only \"1.0\" is")]
    UnsupportedSpecVersion {
        /// Where it was: `specversion`, or the `ce-specversion` header.
        field: String,
        /// What the event said.
        found: String,
    },
}

impl EventError {
    /// The attribute the error is about.
    #[must_use]
    pub fn field(&self) -> &str {
        match self {
            EventError::Missing { field }
            | EventError::Invalid { field, .. }
            | EventError::UnsupportedSpecVersion { field, .. } => field,
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        EventError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A CloudEvents 1.0 event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// `id`: with `source`, identifies the event (and is what deduplication keys on).
    pub id: String,
    /// `source`: a URI-reference naming the producer context.
    pub source: String,
    /// `type`.
    pub ty: String,
    /// `specversion`: always `1.0` once validated.
    pub specversion: String,
    /// `datacontenttype`, if given.
    pub datacontenttype: Option<String>,
    /// `dataschema`, if given.
    pub dataschema: Option<String>,
    /// `subject`, if given.
    pub subject: Option<String>,
    /// `time` as given (RFC 3339), if given.
    pub time: Option<String>,
    /// Extension attributes, by name; values are kept in their string form.
    pub extensions: BTreeMap<String, String>,
    /// The event payload, as bytes.
    pub data: Option<Vec<u8>>,
}

const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];
const OPTIONAL: [&str; 4] = ["datacontenttype", "dataschema", "subject", "time"];

/// The media type without parameters, lower-cased: `Application/JSON; charset=utf-8` →
/// `application/json`.
#[must_use]
pub fn media_essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a `datacontenttype` means JSON data (absent does: CloudEvents' JSON format default).
#[must_use]
pub fn is_json_type(content_type: Option<&str>) -> bool {
    // `media_essence` without its lower-cased copy: this runs for every ingested event.
    content_type.is_none_or(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().as_bytes();
        essence.eq_ignore_ascii_case(b"application/json")
            || essence.eq_ignore_ascii_case(b"text/json")
            || essence.len() >= 5 && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
    })
}

/// Whether data of this content type is text, and so rendered as a JSON string when it is
/// valid UTF-8 (the CloudEvents JSON format keeps non-binary, non-JSON data in `data`).
fn is_text_type(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let essence = media_essence(ct);
        essence.starts_with("text/")
            || essence.ends_with("+xml")
            || essence.ends_with("+yaml")
            || matches!(
                essence.as_str(),
                "application/xml"
                    | "application/yaml"
                    | "application/x-yaml"
                    | "application/javascript"
                    | "application/x-www-form-urlencoded"
                    | "application/csv"
            )
    })
}

/// Checks an extension attribute name: lower-case ASCII letters and digits only.
///
/// # Errors
/// [`EventError::Invalid`] naming the attribute.
pub fn validate_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty() || name.len() > EXTENSION_NAME_BYTES_MAX {
        return Err(EventError::invalid(
            name,
            format!("names are 1 to {EXTENSION_NAME_BYTES_MAX} characters"),
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::invalid(
            name,
            "names use only lower-case letters a-z and digits 0-9",
        ));
    }
    Ok(())
}

impl CloudEvent {
    /// Checks every attribute's presence and form.
    ///
    /// # Errors
    /// The first problem found, naming its attribute.
    pub fn validate(&self) -> Result<(), EventError> {
        if self.specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion {
                field: "specversion".into(),
                found: self.specversion.clone(),
            });
        }
        for (field, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(EventError::invalid(field, "must be a non-empty string"));
            }
        }
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        for (field, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ]
        .into_iter()
        .chain(
            optional
                .iter()
                .filter_map(|(f, v)| v.as_ref().map(|v| (*f, v))),
        )
        .chain(self.extensions.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if value.len() > ATTRIBUTE_BYTES_MAX {
                return Err(EventError::invalid(
                    field,
                    format!("longer than {ATTRIBUTE_BYTES_MAX} bytes"),
                ));
            }
        }
        if self.dataschema.as_deref() == Some("") {
            return Err(EventError::invalid("dataschema", "must be a non-empty URI"));
        }
        if let Some(time) = &self.time {
            chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
                EventError::invalid("time", format!("not an RFC 3339 timestamp: {e}"))
            })?;
        }
        if self.extensions.len() > EXTENSIONS_MAX {
            return Err(EventError::invalid(
                "extensions",
                format!("more than {EXTENSIONS_MAX} extension attributes"),
            ));
        }
        for name in self.extensions.keys() {
            validate_extension_name(name)?;
            if REQUIRED.contains(&name.as_str())
                || OPTIONAL.contains(&name.as_str())
                || name == "data"
            {
                return Err(EventError::invalid(
                    name,
                    "is a context attribute, not an extension",
                ));
            }
        }
        Ok(())
    }

    /// The record key: the `partitionkey` extension, if any.
    #[must_use]
    pub fn partition_key(&self) -> Option<&str> {
        self.extensions.get(PARTITION_KEY).map(String::as_str)
    }

    /// Parses one event in the structured JSON format (`application/cloudevents+json`).
    ///
    /// # Errors
    /// [`EventError`] naming the first bad attribute.
    pub fn from_json(value: &Value) -> Result<CloudEvent, EventError> {
        let Value::Object(map) = value else {
            return Err(EventError::invalid("event", "must be a JSON object"));
        };
        let string = |name: &str| -> Result<Option<String>, EventError> {
            match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(EventError::invalid(name, "must be a string")),
            }
        };
        let required =
            |name: &str| string(name)?.ok_or_else(|| EventError::Missing { field: name.into() });
        let specversion = required("specversion")?;
        if specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion {
                field: "specversion".into(),
                found: specversion,
            });
        }
        let datacontenttype = string("datacontenttype")?;
        let data = match (map.get("data"), map.get("data_base64")) {
            (Some(d), Some(b)) if !d.is_null() && !b.is_null() => {
                return Err(EventError::invalid(
                    "data_base64",
                    "an event carries `data` or `data_base64`, not both",
                ));
            }
            (_, Some(Value::String(b64))) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| {
                        EventError::invalid("data_base64", format!("not valid base64: {e}"))
                    })?,
            ),
            (_, Some(b)) if !b.is_null() => {
                return Err(EventError::invalid("data_base64", "must be a string"));
            }
            (Some(Value::Null) | None, _) => None,
            (Some(Value::String(s)), _) if !is_json_type(datacontenttype.as_deref()) => {
                Some(s.clone().into_bytes())
            }
            (Some(d), _) => Some(serde_json::to_vec(d).expect("a JSON value serializes")),
        };
        let mut extensions = BTreeMap::new();
        for (name, value) in map {
            if REQUIRED.contains(&name.as_str())
                || OPTIONAL.contains(&name.as_str())
                || name == "data"
                || name == "data_base64"
            {
                continue;
            }
            let text = match value {
                Value::Null => continue,
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => {
                    return Err(EventError::invalid(
                        name,
                        "extension values are strings, numbers or booleans",
                    ));
                }
            };
            extensions.insert(name.clone(), text);
        }
        let event = CloudEvent {
            id: required("id")?,
            source: required("source")?,
            ty: required("type")?,
            specversion,
            datacontenttype,
            dataschema: string("dataschema")?,
            subject: string("subject")?,
            time: string("time")?,
            extensions,
            data,
        };
        event.validate()?;
        Ok(event)
    }

    /// Parses an event in HTTP binary mode: `ce-*` headers, `Content-Type`, and the body as data.
    /// Header names are matched case-insensitively; values are percent-decoded.
    ///
    /// # Errors
    /// [`EventError`] naming the header (`ce-id`, ...).
    pub fn from_http_binary<'a>(
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<CloudEvent, EventError> {
        let mut attrs: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            let Some(attr) = lower.strip_prefix("ce-") else {
                continue;
            };
            let text = percent_decode(value).ok_or_else(|| {
                EventError::invalid(
                    format!("ce-{attr}"),
                    "header value is not valid percent-encoded UTF-8",
                )
            })?;
            attrs.insert(attr.to_string(), text);
        }
        let header_field = |name: &str| format!("ce-{name}");
        let mut take = |name: &str| attrs.remove(name);
        let specversion = take("specversion").ok_or_else(|| EventError::Missing {
            field: header_field("specversion"),
        })?;
        if specversion != SPEC_VERSION {
            return Err(EventError::UnsupportedSpecVersion {
                field: header_field("specversion"),
                found: specversion,
            });
        }
        let mut required = |name: &str| {
            take(name).ok_or_else(|| EventError::Missing {
                field: header_field(name),
            })
        };
        let (id, source, ty) = (required("id")?, required("source")?, required("type")?);
        let mut take = |name: &str| attrs.remove(name);
        let (dataschema, subject, time) = (take("dataschema"), take("subject"), take("time"));
        attrs.remove("datacontenttype");
        let event = CloudEvent {
            id,
            source,
            ty,
            specversion,
            datacontenttype: content_type.map(str::to_string),
            dataschema,
            subject,
            time,
            extensions: attrs,
            // An empty body is no data, even with a Content-Type (SDKs send one regardless).
            data: (!body.is_empty()).then(|| body.to_vec()),
        };
        event.validate().map_err(|e| match e {
            EventError::Invalid { field, reason } if field != "event" => EventError::Invalid {
                field: header_field(&field),
                reason,
            },
            other => other,
        })?;
        Ok(event)
    }

    /// The structured JSON form. JSON data (by content type, or absent content type with bytes
    /// that parse as JSON) is emitted as `data`; text as a `data` string; anything else as
    /// `data_base64`.
    #[must_use]
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert(
            "specversion".into(),
            Value::String(self.specversion.clone()),
        );
        map.insert("id".into(), Value::String(self.id.clone()));
        map.insert("source".into(), Value::String(self.source.clone()));
        map.insert("type".into(), Value::String(self.ty.clone()));
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = value {
                map.insert(name.into(), Value::String(v.clone()));
            }
        }
        for (name, value) in &self.extensions {
            map.insert(name.clone(), Value::String(value.clone()));
        }
        if let Some(data) = &self.data {
            let ct = self.datacontenttype.as_deref();
            let json = is_json_type(ct)
                .then(|| serde_json::from_slice::<Value>(data).ok())
                .flatten();
            let text = || {
                is_text_type(ct)
                    .then(|| std::str::from_utf8(data).ok())
                    .flatten()
            };
            match (json, text()) {
                (Some(v), _) => {
                    map.insert("data".into(), v);
                }
                (None, Some(t)) => {
                    map.insert("data".into(), Value::String(t.to_string()));
                }
                (None, None) => {
                    map.insert(
                        "data_base64".into(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                    );
                }
            }
        }
        Value::Object(map)
    }

    /// The Kafka record for this event (binary content mode). `timestamp` is the record
    /// timestamp: Gearbox uses the ingest time, so that replay by time and retention follow
    /// arrival order; the event's own `time` stays in `ce_time`.
    #[must_use]
    pub fn to_record(&self, timestamp: i64) -> RecordInput {
        self.clone().into_record(timestamp)
    }

    /// [`CloudEvent::to_record`], moving the attributes and data into the record instead of
    /// copying them: at ingest that is one allocation per event instead of a dozen.
    #[must_use]
    pub fn into_record(self, timestamp: i64) -> RecordInput {
        let CloudEvent {
            id,
            source,
            ty,
            specversion,
            datacontenttype,
            dataschema,
            subject,
            time,
            mut extensions,
            data,
        } = self;
        let key = extensions.remove(PARTITION_KEY).map(String::into_bytes);
        let mut headers = Vec::with_capacity(8 + extensions.len());
        let mut push = |key: Cow<'static, str>, value: String| {
            headers.push(RecordHeader {
                key,
                value: Some(value.into_bytes()),
            });
        };
        push("ce_specversion".into(), specversion);
        push("ce_id".into(), id);
        push("ce_source".into(), source);
        push("ce_type".into(), ty);
        for (name, value) in [
            ("ce_dataschema", dataschema),
            ("ce_subject", subject),
            ("ce_time", time),
        ] {
            if let Some(v) = value {
                push(name.into(), v);
            }
        }
        for (name, value) in extensions {
            push(format!("ce_{name}").into(), value);
        }
        if let Some(ct) = datacontenttype {
            push("content-type".into(), ct);
        }
        RecordInput {
            timestamp,
            key,
            value: data,
            headers,
        }
    }

    /// Reads a stored record as a CloudEvent. A record with `ce_*` headers is that event. A
    /// plain Kafka record (no `ce_specversion` header) maps to: `id` =
    /// `<topic>-<partition>-<offset>`, `source` = `/gearbox/topics/<topic>/partitions/<partition>`,
    /// `type` = `kafka.record`, `time` = the record timestamp, `partitionkey` = the key as UTF-8
    /// (when it is), `data` = the value, `datacontenttype` from a `content-type` header if any.
    #[must_use]
    pub fn from_record(record: &Record, topic: &str, partition: u32) -> CloudEvent {
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let key = record
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string);
        let Some(specversion) = header("ce_specversion") else {
            let mut extensions = BTreeMap::new();
            if let Some(k) = key {
                extensions.insert(PARTITION_KEY.to_string(), k);
            }
            return CloudEvent {
                id: format!("{topic}-{partition}-{}", record.offset),
                source: format!("/gearbox/topics/{topic}/partitions/{partition}"),
                ty: "kafka.record".into(),
                specversion: SPEC_VERSION.into(),
                datacontenttype: header("content-type"),
                dataschema: None,
                subject: None,
                time: chrono::DateTime::from_timestamp_millis(record.timestamp)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                extensions,
                data: record.value.clone(),
            };
        };
        let mut extensions: BTreeMap<String, String> = record
            .headers
            .iter()
            .filter_map(|h| {
                let name = h.key.strip_prefix("ce_")?;
                let skip = REQUIRED.contains(&name) || OPTIONAL.contains(&name);
                (!skip).then(|| {
                    (
                        name.to_string(),
                        String::from_utf8_lossy(h.value.as_deref().unwrap_or(&[])).into_owned(),
                    )
                })
            })
            .collect();
        if let Some(k) = key {
            extensions.insert(PARTITION_KEY.to_string(), k);
        }
        CloudEvent {
            id: header("ce_id").unwrap_or_default(),
            source: header("ce_source").unwrap_or_default(),
            ty: header("ce_type").unwrap_or_default(),
            specversion,
            datacontenttype: header("content-type"),
            dataschema: header("ce_dataschema"),
            subject: header("ce_subject"),
            time: header("ce_time"),
            extensions,
            data: record.value.clone(),
        }
    }
}

/// Decodes `%XX` escapes (the CloudEvents HTTP binding's header encoding) into UTF-8.
fn percent_decode(value: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(value[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearbox_log::batch::{BatchBuilder, decode};
    use serde_json::json;

    fn through_record(e: &CloudEvent) -> CloudEvent {
        let mut b = BatchBuilder::new();
        b.push(e.to_record(1_700_000_000_000));
        let records = decode(&b.build().unwrap()).unwrap();
        CloudEvent::from_record(&records[0], "t", 0)
    }

    #[test]
    fn structured_json_round_trips_through_a_kafka_record() {
        let input = json!({
            "specversion": "1.0", "id": "e-1", "source": "/sensors/7", "type": "reading",
            "time": "2026-11-23T08:00:00+01:00", "subject": "room-3", "partitionkey": "sensor-7",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "data": {"celsius": 21.5}
        });
        let e = CloudEvent::from_json(&input).unwrap();
        assert_eq!(e.partition_key(), Some("sensor-7"));
        let back = through_record(&e);
        assert_eq!(back, e);
        assert_eq!(back.to_json(), input);
    }

    #[test]
    fn json_types_are_recognised_whatever_their_case_and_parameters() {
        for ct in [
            None,
            Some("application/json"),
            Some(" Application/JSON ; charset=utf-8"),
            Some("TEXT/json"),
            Some("application/cloudevents+JSON"),
            Some("+json"),
        ] {
            assert!(is_json_type(ct), "{ct:?}");
        }
        for ct in [
            "text/plain",
            "json",
            "application/jsonx",
            "application/x-json5",
            "",
        ] {
            assert!(!is_json_type(Some(ct)), "{ct}");
        }
    }

    #[test]
    fn the_record_keeps_its_header_order_and_key() {
        let e = CloudEvent::from_json(&json!({
            "specversion": "1.0", "id": "e-1", "source": "/s", "type": "t", "subject": "x",
            "time": "2026-11-23T08:00:00Z", "dataschema": "urn:d", "partitionkey": "pk",
            "zeta": "z", "alpha": "a", "datacontenttype": "text/plain", "data": "hi"
        }))
        .unwrap();
        let r = e.to_record(5);
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|h| (h.key.as_ref(), h.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("ce_specversion", &b"1.0"[..]),
                ("ce_id", b"e-1"),
                ("ce_source", b"/s"),
                ("ce_type", b"t"),
                ("ce_dataschema", b"urn:d"),
                ("ce_subject", b"x"),
                ("ce_time", b"2026-11-23T08:00:00Z"),
                ("ce_alpha", b"a"),
                ("ce_zeta", b"z"),
                ("content-type", b"text/plain"),
            ]
        );
        assert_eq!((r.timestamp, r.key.as_deref()), (5, Some(&b"pk"[..])));
        assert_eq!(r.value.as_deref(), Some(&b"hi"[..]));
        assert_eq!(e.into_record(5), r);
    }

    #[test]
    fn binary_data_uses_base64_and_text_stays_text() {
        let b64 = json!({"specversion":"1.0","id":"1","source":"s","type":"t",
            "datacontenttype":"application/octet-stream","data_base64":"AAEC/w=="});
        let e = CloudEvent::from_json(&b64).unwrap();
        assert_eq!(e.data.as_deref(), Some(&[0, 1, 2, 255][..]));
        assert_eq!(through_record(&e).to_json(), b64);
        let text = json!({"specversion":"1.0","id":"1","source":"s","type":"t",
            "datacontenttype":"text/plain","data":"hello"});
        let e = CloudEvent::from_json(&text).unwrap();
        assert_eq!(e.data.as_deref(), Some(&b"hello"[..]));
        assert_eq!(through_record(&e).to_json(), text);
        let xml = json!({"specversion":"1.0","id":"1","source":"s","type":"t",
            "datacontenttype":"application/xml","data":"<a>x</a>"});
        assert_eq!(
            through_record(&CloudEvent::from_json(&xml).unwrap()).to_json(),
            xml
        );
    }

    #[test]
    fn every_error_names_its_attribute() {
        let base = json!({"specversion":"1.0","id":"1","source":"s","type":"t"});
        let check = |patch: Value, field: &str| {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            let err = CloudEvent::from_json(&v).unwrap_err();
            assert_eq!(err.field(), field, "{patch}: {err}");
        };
        check(json!({"id": null}), "id");
        check(json!({"source": ""}), "source");
        check(json!({"type": 7}), "type");
        check(json!({"specversion": "0.3"}), "specversion");
        check(json!({"time": "yesterday"}), "time");
        check(json!({"Bad-Name": "x"}), "Bad-Name");
        check(json!({"ext": {"a": 1}}), "ext");
        check(json!({"data": 1, "data_base64": "AA=="}), "data_base64");
        check(json!({"data_base64": "not base64!"}), "data_base64");
        assert_eq!(
            CloudEvent::from_json(&json!([1])).unwrap_err().field(),
            "event"
        );
    }

    #[test]
    fn http_binary_mode_reads_headers_and_body() {
        let headers: Vec<(&str, &[u8])> = vec![
            ("ce-specversion", b"1.0"),
            ("CE-ID", b"42"),
            ("ce-source", b"/crm"),
            ("ce-type", b"contact.updated"),
            ("ce-subject", b"caf%C3%A9"),
            ("ce-partitionkey", b"acct-9"),
            ("x-other", b"ignored"),
        ];
        let e =
            CloudEvent::from_http_binary(headers.clone(), Some("application/json"), br#"{"a":1}"#)
                .unwrap();
        assert_eq!(e.id, "42");
        assert_eq!(e.subject.as_deref(), Some("café"));
        assert_eq!(e.partition_key(), Some("acct-9"));
        assert_eq!(through_record(&e), e);
        let missing: Vec<(&str, &[u8])> = headers
            .into_iter()
            .filter(|(n, _)| *n != "ce-source")
            .collect();
        let err = CloudEvent::from_http_binary(missing, None, b"").unwrap_err();
        assert_eq!(err.field(), "ce-source");
    }

    #[test]
    fn a_plain_kafka_record_maps_to_a_defined_event() {
        let record = Record {
            offset: 17,
            timestamp: 0,
            key: Some(b"k".to_vec()),
            value: Some(b"raw".to_vec()),
            headers: vec![],
        };
        let e = CloudEvent::from_record(&record, "orders", 2);
        assert_eq!(e.id, "orders-2-17");
        assert_eq!(e.ty, "kafka.record");
        assert_eq!(e.source, "/gearbox/topics/orders/partitions/2");
        assert_eq!(e.partition_key(), Some("k"));
        assert_eq!(e.time.as_deref(), Some("1970-01-01T00:00:00.000Z"));
        e.validate().unwrap();
    }
}
