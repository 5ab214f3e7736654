//! Topic templates: a source pipeline's `to` may name its topic from the event, as
//! `cdc.{pgschema}.{pgtable}` (one topic per table) or `outbox.{aggregatetype}` (one topic per
//! aggregate type). A placeholder is a CloudEvents attribute name (`id`, `source`, `type`,
//! `subject`, `time`, `datacontenttype`, `dataschema`, or an extension), read from the event after
//! the transforms. A plain name is a template with no placeholders.
//!
//! Rendering fails, and the event is dead-lettered with the reason, when an attribute is missing
//! or its value would not make a valid topic name (the rendered name is checked by the log's own
//! rule when it is appended). Templates never create topics: the topics they render to are
//! declared like any other, so a typo in the data cannot make a new topic.

use gearbox_core::event::CloudEvent;
use std::fmt;

/// Placeholders per template.
pub const PLACEHOLDERS_MAX: usize = 8;

/// A parsed `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Attribute(String),
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic template {template:?}: {reason}")]
pub struct TemplateError {
    /// The template.
    pub template: String,
    /// What is wrong, naming the position.
    pub reason: String,
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// An unclosed `{`, a stray `}`, an empty or invalid attribute name (CloudEvents attribute
    /// names are lowercase letters and digits), or more than [`PLACEHOLDERS_MAX`] placeholders.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let fail = |reason: String| TemplateError {
            template: text.to_owned(),
            reason,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        let mut at = 0usize;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    parts.push(Part::Literal(rest.to_owned()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(fail(format!("`}}` at byte {} closes nothing", at + i)));
                }
                Some(i) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_owned()));
                    }
                    let Some(close) = rest[i..].find('}') else {
                        return Err(fail(format!("`{{` at byte {} is never closed", at + i)));
                    };
                    let name = &rest[i + 1..i + close];
                    if name.is_empty()
                        || !name
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    {
                        return Err(fail(format!(
                            "placeholder {{{name}}} at byte {} is not an attribute name \
                             (lowercase letters and digits)",
                            at + i
                        )));
                    }
                    parts.push(Part::Attribute(name.to_owned()));
                    at += i + close + 1;
                    rest = &rest[i + close + 1..];
                }
            }
        }
        let placeholders = parts
            .iter()
            .filter(|p| matches!(p, Part::Attribute(_)))
            .count();
        if placeholders > PLACEHOLDERS_MAX {
            return Err(fail(format!(
                "{placeholders} placeholders; at most {PLACEHOLDERS_MAX}"
            )));
        }
        Ok(Template {
            text: text.to_owned(),
            parts,
        })
    }

    /// Whether the template has no placeholders (it is a topic name).
    #[must_use]
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The template as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic for an event.
    ///
    /// # Errors
    /// The attribute a placeholder names is missing, empty, or holds a character a topic name
    /// cannot (`/`, whitespace, control characters): the message names the attribute.
    pub fn render(&self, event: &CloudEvent) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Literal(s) => out.push_str(s),
                Part::Attribute(name) => {
                    let value = attribute(event, name)
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| {
                            format!("topic template {:?}: the event has no `{name}`", self.text)
                        })?;
                    if let Some(c) = value
                        .chars()
                        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
                    {
                        return Err(format!(
                            "topic template {:?}: `{name}` = {value:?} holds {c:?}, which a \
                             topic name cannot",
                            self.text
                        ));
                    }
                    out.push_str(value);
                }
            }
        }
        if out.ends_with(gearbox_core::broker::DLQ_SUFFIX) {
            // Dead-letter topics live beside the others; data must not name one.
            return Err(format!(
                "topic template {:?}: {out:?} is a dead-letter topic",
                self.text
            ));
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn attribute<'a>(event: &'a CloudEvent, name: &str) -> Option<&'a str> {
    match name {
        "id" => Some(&event.id),
        "source" => Some(&event.source),
        "type" => Some(&event.ty),
        "specversion" => Some(&event.specversion),
        "subject" => event.subject.as_deref(),
        "time" => event.time.as_deref(),
        "datacontenttype" => event.datacontenttype.as_deref(),
        "dataschema" => event.dataschema.as_deref(),
        other => event.extensions.get(other).map(String::as_str),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        let mut e = CloudEvent::from_json(&serde_json::json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "pgschema": "public", "pgtable": "orders", "subject": "a b",
        }))
        .unwrap();
        e.extensions.insert("slash".into(), "x/y".into());
        e.extensions.insert("dlq".into(), "orders.dlq".into());
        e
    }

    #[test]
    fn renders_attributes_and_extensions() {
        let t = Template::parse("cdc.{pgschema}.{pgtable}").unwrap();
        assert!(!t.is_literal());
        assert_eq!(t.render(&event()).unwrap(), "cdc.public.orders");
        let t = Template::parse("{type}-x").unwrap();
        assert_eq!(t.render(&event()).unwrap(), "t-x");
    }

    #[test]
    fn a_plain_name_is_literal() {
        let t = Template::parse("orders").unwrap();
        assert!(t.is_literal());
        assert_eq!(t.render(&event()).unwrap(), "orders");
    }

    #[test]
    fn bad_templates_name_the_position() {
        let e = Template::parse("a.{pgtable").unwrap_err();
        assert!(e.reason.contains("byte 2"), "{e}");
        let e = Template::parse("a}").unwrap_err();
        assert!(e.reason.contains("byte 1"), "{e}");
        let e = Template::parse("a.{}").unwrap_err();
        assert!(e.reason.contains("not an attribute name"), "{e}");
        let e = Template::parse("{Table}").unwrap_err();
        assert!(e.reason.contains("{Table}"), "{e}");
        let many = "{a}".repeat(PLACEHOLDERS_MAX + 1);
        let e = Template::parse(&many).unwrap_err();
        assert!(e.reason.contains("at most"), "{e}");
    }

    #[test]
    fn missing_or_unusable_values_fail_naming_the_attribute() {
        let e = Template::parse("x.{nothere}")
            .unwrap()
            .render(&event())
            .unwrap_err();
        assert!(e.contains("`nothere`"), "{e}");
        let e = Template::parse("x.{subject}")
            .unwrap()
            .render(&event())
            .unwrap_err();
        assert!(e.contains("`subject`"), "{e}");
        let e = Template::parse("x.{slash}")
            .unwrap()
            .render(&event())
            .unwrap_err();
        assert!(e.contains("'/'"), "{e}");
        let e = Template::parse("{dlq}")
            .unwrap()
            .render(&event())
            .unwrap_err();
        assert!(e.contains("dead-letter"), "{e}");
    }
}
