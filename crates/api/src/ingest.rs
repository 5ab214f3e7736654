//! The fast path for batched ingest (`application/cloudevents-batch+json`).
//!
//! The reference parser (`parse_events` in `lib.rs`) reads the whole body into a
//! `serde_json::Value` tree and then copies every attribute out of it: a map node, a key string
//! and a value string per member, then a second string per attribute. At a thousand events a
//! request that allocation was most of the server's CPU. This path reads each event object as
//! its member names (borrowed from the body unless escaped) and each member's raw JSON text,
//! and builds the [`CloudEvent`] from those with one allocation per attribute.
//!
//! It only ever *accepts*: it answers `None` for anything it does not handle exactly as the
//! reference parser would (a duplicate member, `data_base64`, a non-string attribute, data nested
//! deeply, an event that fails validation, a body that is not a non-empty array of objects, ...),
//! and the caller then runs the reference parser on the whole request. So a request it accepts
//! gives the same events and parsed data as the reference parser, and every refusal keeps the
//! reference parser's error, including which event and field it names first.

use gearbox_core::event::{CloudEvent, is_json_type};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Most members an event object may have on the fast path: the eight context attributes,
/// `data`, and [`gearbox_core::event::EXTENSIONS_MAX`] extensions. Larger objects (which
/// validation refuses anyway) go to the reference parser, which also keeps the duplicate-name
/// check below from being quadratic in a hostile object.
const MEMBERS_MAX: usize = 9 + gearbox_core::event::EXTENSIONS_MAX;

/// Deepest `data` accepted here, in nested arrays and objects. The reference parser counts depth
/// from the body's root (serde_json's limit is 128), while `data` is parsed here on its own; a
/// bound well under the limit keeps this path from accepting data the reference one refuses.
const DATA_DEPTH_MAX: usize = 100;

/// A member name, borrowed from the body unless it holds escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// One event object: its members in body order, each value as its JSON text.
struct Object<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some(Name(name)) = map.next_key()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Object(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A batch body's events and, for each, its `data` as parsed JSON where the event carries it as
/// JSON; `None` when the reference parser must decide (see the module documentation).
pub(crate) fn parse_batch(
    bytes: &[u8],
    events_max: usize,
) -> Option<(Vec<CloudEvent>, Vec<Option<Value>>)> {
    let objects: Vec<Object<'_>> = serde_json::from_slice(bytes).ok()?;
    if objects.is_empty() || objects.len() > events_max {
        return None;
    }
    let mut events = Vec::with_capacity(objects.len());
    let mut data = Vec::with_capacity(objects.len());
    for object in &objects {
        let (event, parsed) = event(&object.0)?;
        events.push(event);
        data.push(parsed);
    }
    Some((events, data))
}

/// A string or null member, as the reference parser reads an attribute; `None` for any other
/// JSON type (the reference parser then reports it).
fn attribute(raw: &RawValue) -> Option<Option<String>> {
    let text = raw.get();
    match text.as_bytes().first()? {
        b'n' => Some(None),
        b'"' => Some(Some(string(text)?)),
        _ => None,
    }
}

/// The value of a JSON string literal (already checked by the parser).
fn string(text: &str) -> Option<String> {
    match text.get(1..text.len() - 1) {
        Some(inner) if !inner.contains('\\') => Some(inner.to_string()),
        _ => serde_json::from_str(text).ok(),
    }
}

/// How deeply arrays and objects nest in `v` (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// One event, as `CloudEvent::from_json` and `take_json_data` would make it, or `None`.
fn event(members: &[(Cow<'_, str>, &RawValue)]) -> Option<(CloudEvent, Option<Value>)> {
    if members.len() > MEMBERS_MAX {
        return None;
    }
    // `Value` keeps the last of repeated names; leave that to the reference parser.
    for (i, (name, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(other, _)| other == name) {
            return None;
        }
    }
    let (mut specversion, mut id, mut source, mut ty) = (None, None, None, None);
    let (mut datacontenttype, mut dataschema, mut subject, mut time) = (None, None, None, None);
    let mut data_raw = None;
    let mut extensions = BTreeMap::new();
    for (name, raw) in members {
        let slot = match name.as_ref() {
            "specversion" => &mut specversion,
            "id" => &mut id,
            "source" => &mut source,
            "type" => &mut ty,
            "datacontenttype" => &mut datacontenttype,
            "dataschema" => &mut dataschema,
            "subject" => &mut subject,
            "time" => &mut time,
            "data" => {
                data_raw = Some(*raw);
                continue;
            }
            "data_base64" => return None,
            extension => {
                let text = raw.get();
                let value = match text.as_bytes().first()? {
                    b'n' => continue,
                    b'"' => string(text)?,
                    // Numbers and booleans keep the reference parser's rendering.
                    b't' | b'f' | b'-' | b'0'..=b'9' => {
                        match serde_json::from_str::<Value>(text).ok()? {
                            Value::Bool(b) => b.to_string(),
                            Value::Number(n) => n.to_string(),
                            _ => return None,
                        }
                    }
                    _ => return None,
                };
                extensions.insert(extension.to_string(), value);
                continue;
            }
        };
        *slot = attribute(raw)?;
    }
    let (data, parsed) = match data_raw.map(RawValue::get) {
        None | Some("null") => (None, None),
        Some(text) if text.starts_with('"') && !is_json_type(datacontenttype.as_deref()) => {
            (Some(string(text)?.into_bytes()), None)
        }
        Some(text) => {
            let v: Value = serde_json::from_str(text).ok()?;
            if depth(&v) > DATA_DEPTH_MAX {
                return None;
            }
            (Some(serde_json::to_vec(&v).ok()?), Some(v))
        }
    };
    let event = CloudEvent {
        id: id?,
        source: source?,
        ty: ty?,
        specversion: specversion?,
        datacontenttype,
        dataschema,
        subject,
        time,
        extensions,
        data,
    };
    // `validate` also checks `specversion`; any error is the reference parser's to report.
    event.validate().ok()?;
    Some((event, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path on `body`, checked against the reference parser: whatever it accepts, the
    /// reference parser accepts with the same events and data.
    fn fast(body: &str) -> bool {
        let reference = crate::parse_batch(body.as_bytes());
        match parse_batch(body.as_bytes(), crate::BATCH_EVENTS_MAX) {
            Some(fast) => {
                let reference = reference.unwrap_or_else(|e| {
                    panic!("{body}: fast path accepted, reference refused: {e:?}")
                });
                assert_eq!(fast, reference, "{body}");
                true
            }
            None => false,
        }
    }

    fn one(members: &str) -> String {
        format!(r#"[{{"specversion":"1.0","id":"1","source":"/s","type":"t"{members}}}]"#)
    }

    #[test]
    fn common_requests_take_the_fast_path_with_the_reference_result() {
        for members in [
            "",
            r#","datacontenttype":"text/plain","data":"hello""#,
            r#","datacontenttype":"application/json","data":{"b":[1,2.50,{"z":null,"a":true}],"a":"x"}"#,
            r#","data":"a JSON string \"quoted\" \u00e9""#,
            r#","data":12.0e1"#,
            r#","data":null,"subject":null"#,
            r#","subject":"caf\u00e9","time":"2026-11-23T08:00:00Z","dataschema":"urn:x""#,
            r#","partitionkey":"k-1","traceparent":"00-ab","seq":42,"ratio":1.5,"ok":false,"gone":null"#,
            r#","datacontenttype":"application/cloudevents+json; charset=utf-8","data":[]"#,
            r#","data":"text without a type is JSON""#,
        ] {
            assert!(fast(&one(members)), "{members}");
        }
        let batch = format!(
            "[{}]",
            (0..50)
                .map(|i| one(&format!(r#","n":{i}"#))[1..]
                    .trim_end_matches(']')
                    .to_string())
                .collect::<Vec<_>>()
                .join(" , ")
        );
        assert!(fast(&batch));
        // Escaped member names are unescaped as the reference parser does.
        assert!(fast(
            r#"[{"spec\u0076ersion":"1.0","id":"1","source":"/s","type":"t"}]"#
        ));
    }

    #[test]
    fn everything_else_is_left_to_the_reference_parser() {
        for body in [
            "",
            "{}",
            "[]",
            "[1]",
            "[{}]",
            "[{\"id\":\"1\"} , ",
            &one(r#","id":"2""#),
            &one(r#","data_base64":"AAEC""#),
            &one(r#","data":1,"data_base64":"AA==""#),
            &one(r#","subject":7"#),
            &one(r#","ext":{"a":1}"#),
            &one(r#","ext":[1]"#),
            &one(r#","big":1e400"#),
            &one(r#","Bad":"x""#),
            &one(r#","time":"yesterday""#),
            &one(r#","dataschema":"""#),
            &one(r#","subject":"\ud800""#),
            &one(r#","data":"\udfff x","datacontenttype":"text/plain""#),
            &one(r#","data":{"a":"\ud800"}"#),
            &one(&format!(
                r#","data":{}1{}"#,
                "[".repeat(120),
                "]".repeat(120)
            )),
            r#"[{"specversion":"0.3","id":"1","source":"/s","type":"t"}]"#,
            r#"[{"specversion":"1.0","source":"/s","type":"t"}]"#,
            r#"[{"specversion":"1.0","id":"","source":"/s","type":"t"}]"#,
        ] {
            assert!(!fast(body), "{body}");
        }
        let too_many = format!(
            "[{}]",
            vec![one("")[1..].trim_end_matches(']'); crate::BATCH_EVENTS_MAX + 1].join(",")
        );
        assert!(!fast(&too_many));
    }
}
