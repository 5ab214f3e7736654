//! JSON Schema for the registry: parsing with meta-schema validation ([`JsonSchema`]), compiled
//! validation of event data ([`Validator`]), and Confluent's reader/writer compatibility check
//! ([`incompatibilities`]).
//!
//! Dialects: draft-07 and draft 2020-12, picked by the root `$schema` (absent: 2020-12). Any other
//! `$schema` is refused rather than validated under the wrong rules. Formats follow the draft's
//! default, as the `jsonschema` crate applies it: asserted in draft-07, annotations in 2020-12.
//!
//! Invariants:
//! - A [`JsonSchema`] is a JSON object or boolean that passed its draft's meta-schema, whose every
//!   `$ref` resolves inside the document, and that compiles. So [`Validator::new`] on one does not
//!   fail in practice; it returns a `Result` only because compilation is done by another crate.
//! - References are local only: `#/$defs/...`, `#/definitions/...`, `#anchor`, or the root's own
//!   `$id` followed by such a fragment. A remote `$ref` is a [`SchemaError`] at parse, as are
//!   `$dynamicRef`, embedded resources (a non-fragment `$id` below the root) and cycles of bare
//!   `$ref`s, because the compatibility check could not follow them. Validation never touches the
//!   network or the file system (the compiler runs offline).
//! - A [`Validator`] is compiled once per schema version; [`Validator::validate`] and
//!   [`Validator::is_valid`] compile nothing.
//!
//! Limits: [`VIOLATIONS_MAX`] violations reported per document, each message cut to
//! [`VIOLATION_MESSAGE_BYTES_MAX`]; [`SCHEMA_ERRORS_MAX`] meta-schema errors per [`SchemaError`];
//! [`INCOMPATIBILITIES_MAX`] messages per check; a check takes at most [`DIFF_STEPS_MAX`] steps
//! and [`DIFF_DEPTH_MAX`] nested comparisons (past either it fails closed with `TOO_COMPLEX`);
//! [`REF_HOPS_MAX`] hops through a chain of bare `$ref`s. Schema nesting is bounded by
//! `serde_json`'s recursion limit (128), which keeps the recursive walks here shallow.
//!
//! # Compatibility
//!
//! [`incompatibilities`]`(reader, writer)` follows Confluent's JSON Schema diff (`SchemaDiff` in
//! `json-schema-provider`, default STRICT policy): the writer is Confluent's "original", the
//! reader its "update". Each change gets Confluent's name (`PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL`,
//! `MAX_LENGTH_DECREASED`, ...) and is compatible exactly when the name is in
//! [`COMPATIBLE_CHANGES`], which copies Confluent's strict set. Paths are logical JSON pointers
//! into the schema (`#/properties/address/properties/zip`), followed through `$ref`s. The rules,
//! with R the reader and W the writer:
//!
//! - Content model of an object: *closed* (`additionalProperties: false`, or
//!   `unevaluatedProperties: false` without `additionalProperties`), *partially open* (a schema
//!   there, or a matching `patternProperties` entry), otherwise *open*.
//! - A property R declares and W does not: W open: compatible only if R's property schema is
//!   empty (`{}`/`true`), because old data may hold that name with any value; W partially open:
//!   compatible if W's schema for that name fits R's property; W closed or partially open: an
//!   optional property, or a required one with a `default`, is compatible; required without a
//!   default is not.
//! - A property W declares and R does not: R open: compatible; R partially open: compatible if
//!   W's property fits R's schema for that name; R closed: incompatible (unless W's property is
//!   `false`).
//! - `required`: R requiring a property W has but does not require is incompatible unless R's
//!   property has a `default`; dropping a requirement is compatible.
//! - `additionalProperties` / `unevaluatedProperties` / tuple `additionalItems`: opening
//!   (false → anything) and widening (schema → open) are compatible; closing and narrowing
//!   (open → schema) are not; two schemas are compared.
//! - Types: a different type is incompatible unless R accepts anything (`{}`/`true`) or W accepts
//!   nothing (`false`); integer → number is compatible, number → integer is not. A type array is
//!   an `anyOf` of its types, so adding `"null"` to it is compatible and removing one is not.
//! - `enum`: R having a superset is compatible; a subset or a different set is not.
//! - Bounds (`maxLength`, `minLength`, `maximum`, `minimum`, `exclusiveMaximum`,
//!   `exclusiveMinimum`, `maxItems`, `minItems`, `maxProperties`, `minProperties`, `maxContains`,
//!   `minContains`): removing or loosening is compatible; adding or tightening is not.
//!   `multipleOf`: removing it, or R's dividing W's, is compatible. `pattern`: removing is
//!   compatible; adding or changing is not. `uniqueItems`: removing is compatible, adding is not.
//! - Arrays: `items` compared recursively; tuples (`prefixItems`, or draft-07's array `items`)
//!   compared per position, with the extra positions judged by the other side's rest schema like
//!   properties by a content model (an item added to a closed tuple is compatible, one removed
//!   from it is not).
//! - `oneOf`/`anyOf`: W a single schema fits one of R's branches (`SUM_TYPE_EXTENDED`) is
//!   compatible; branches matched one to one (maximum bipartite matching); R with more branches is
//!   compatible, fewer is not. `allOf`: R with fewer is compatible, more is not. `not` compares
//!   its schemas the other way round.
//! - `title`, `description`, `default`, `$id`, `examples`: changes are compatible.
//! - Dependencies (`dependencies`, `dependentRequired`, `dependentSchemas`): removing is
//!   compatible; adding or extending is not.
//! - A `$ref` is compared as the schema it names; recursion through `$ref` is cut where a pair of
//!   schemas is already under comparison (assumed compatible, as Confluent does).
//!
//! Where Gearbox departs from Confluent, by judgement:
//! - `{}`, `true` and an absent `additionalProperties` are the same open model (Confluent calls
//!   `{}` a partially open model, so changing absent to `{}` would be `NARROWED` there).
//! - A name matching no `patternProperties` entry of an object without `additionalProperties` is
//!   open (Confluent treats any object with `patternProperties` as closed for such names).
//! - A name R requires but does not declare in `properties`, and W does not require, is
//!   `REQUIRED_ATTRIBUTE_ADDED` (Confluent ignores undeclared required names).
//! - `const` is a one-value `enum` (Confluent calls const → enum a type change).
//! - `if`/`then`/`else`: any change is `CONDITIONAL_CHANGED`, incompatible (Confluent does not
//!   compare them); `propertyNames` and `contains` are compared like `items`.
//! - `format` is not compared (as in Confluent), even though draft-07 validation asserts it.
//! - Schemas that name no `type` take the type their keywords imply (`properties` → object),
//!   like Confluent's parser; keywords of several types make an `anyOf` of those types.
//! - A check that exceeds its step or depth limit reports `TOO_COMPLEX` (incompatible).

use super::{SchemaError, Violation};
use jsonschema::Draft;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::mem::discriminant;

/// Most violations [`Validator::validate`] reports for one document.
pub const VIOLATIONS_MAX: usize = 100;
/// Longest violation message; longer ones (they quote the offending value) are cut.
pub const VIOLATION_MESSAGE_BYTES_MAX: usize = 512;
/// Most meta-schema errors one [`SchemaError`] lists.
pub const SCHEMA_ERRORS_MAX: usize = 5;
/// Most messages [`incompatibilities`] returns.
pub const INCOMPATIBILITIES_MAX: usize = 100;
/// Most schema-pair comparisons one compatibility check makes (`oneOf` against `oneOf` compares
/// every pair of branches, so nesting multiplies).
pub const DIFF_STEPS_MAX: u32 = 100_000;
/// Deepest nesting of comparisons one compatibility check follows (`$ref`s can nest without
/// nesting the JSON). Each level is a few stack frames, so 96 stays well inside a 2 MiB thread
/// stack.
pub const DIFF_DEPTH_MAX: usize = 96;
/// Longest chain of schemas that are only a `$ref` to the next.
pub const REF_HOPS_MAX: usize = 32;

/// A JSON Schema draft Gearbox accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Draft7,
    Draft202012,
}

impl Dialect {
    /// The dialect a schema's root `$schema` names.
    fn of(value: &Value) -> Result<Dialect, SchemaError> {
        let Some(uri) = value.get("$schema") else {
            return Ok(Dialect::Draft202012);
        };
        let Some(uri) = uri.as_str() else {
            return Err(SchemaError(format!("$schema must be a string, not {uri}")));
        };
        let bare = uri.trim_end_matches('#');
        let bare = bare
            .strip_prefix("https://")
            .or_else(|| bare.strip_prefix("http://"));
        match bare {
            Some("json-schema.org/draft-07/schema") => Ok(Dialect::Draft7),
            Some("json-schema.org/draft/2020-12/schema") => Ok(Dialect::Draft202012),
            _ => Err(SchemaError(format!(
                "$schema {uri:?} is not supported: use draft-07 \
                 (http://json-schema.org/draft-07/schema#) or 2020-12 \
                 (https://json-schema.org/draft/2020-12/schema)"
            ))),
        }
    }

    fn draft(self) -> Draft {
        match self {
            Dialect::Draft7 => Draft::Draft7,
            Dialect::Draft202012 => Draft::Draft202012,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dialect::Draft7 => "draft-07",
            Dialect::Draft202012 => "2020-12",
        }
    }
}

/// A parsed, checked JSON Schema (draft 2020-12 or draft-07; `$schema` picks, default 2020-12).
#[derive(Debug, Clone)]
pub struct JsonSchema {
    value: Value,
    dialect: Dialect,
    /// `$anchor` (and draft-07 `$id: "#name"`) names → JSON pointers, for `#name` references.
    anchors: HashMap<String, String>,
}

impl JsonSchema {
    /// Parses schema text: JSON, then its draft's meta-schema, then its references, then a trial
    /// compilation.
    ///
    /// # Errors
    /// A [`SchemaError`] saying what is wrong and where (`#/properties/age/type`): text that is
    /// not JSON, a document that is not a valid schema for its draft, an unsupported `$schema`,
    /// a remote or unresolvable `$ref`, or a schema the validator cannot compile (a bad regex).
    pub fn parse(text: &str) -> Result<JsonSchema, SchemaError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| SchemaError(format!("schema is not JSON: {e}")))?;
        if !value.is_object() && !value.is_boolean() {
            return Err(SchemaError(format!(
                "a JSON Schema is an object or a boolean, not {}",
                json_kind(&value)
            )));
        }
        let dialect = Dialect::of(&value)?;
        meta_check(&value, dialect)?;
        let mut anchors = HashMap::new();
        walk(&value, "", &mut |node, path| {
            collect_anchor(node, path, dialect, &mut anchors);
            Ok(())
        })?;
        let schema = JsonSchema {
            value,
            dialect,
            anchors,
        };
        walk(&schema.value, "", &mut |node, path| {
            schema.check_references(node, path)
        })?;
        compile(&schema.value, dialect)?;
        Ok(schema)
    }

    /// A canonical text: compact JSON with every object's keys sorted, so two schemas that differ
    /// only in whitespace and key order have the same one. Array order is kept (it matters in
    /// `prefixItems`, and Confluent keeps it everywhere).
    #[must_use]
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        write_canonical(&self.value, &mut out);
        out
    }

    /// The schema document.
    #[must_use]
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Refuses what the compatibility check cannot follow (see the module invariants).
    fn check_references(&self, node: &Value, path: &str) -> Result<(), SchemaError> {
        let Value::Object(m) = node else {
            return Ok(());
        };
        if let Some(id) = m.get("$id").and_then(Value::as_str)
            && !path.is_empty()
            && !id.starts_with('#')
        {
            return Err(SchemaError(format!(
                "$id {id:?} at #{path} embeds another schema resource, which is not supported: \
                 put shared schemas under $defs and reference them with #/$defs/..."
            )));
        }
        if m.contains_key("$dynamicRef") {
            return Err(SchemaError(format!(
                "$dynamicRef at #{path} is not supported; use $ref"
            )));
        }
        let Some(reference) = m.get("$ref").and_then(Value::as_str) else {
            return Ok(());
        };
        if self.fragment(reference).is_none() {
            return Err(SchemaError(format!(
                "remote $ref {reference:?} at #{path} is not supported: references must point \
                 inside the schema (#/$defs/..., #/definitions/...)"
            )));
        }
        if self.target(reference).is_none() {
            return Err(SchemaError(format!(
                "$ref {reference:?} at #{path} does not resolve to a schema in this document"
            )));
        }
        if self.resolve(node).is_none() {
            return Err(SchemaError(format!(
                "$ref {reference:?} at #{path} starts a chain of more than {REF_HOPS_MAX} bare \
                 references (a cycle?)"
            )));
        }
        Ok(())
    }

    /// The `#...` fragment of a local reference, or `None` for a remote one.
    fn fragment<'r>(&self, reference: &'r str) -> Option<&'r str> {
        if reference.starts_with('#') {
            return Some(reference);
        }
        // The root's own absolute `$id` followed by a fragment is local too.
        let id = self.value.get("$id")?.as_str()?.trim_end_matches('#');
        if id.is_empty() {
            return None;
        }
        let rest = reference.strip_prefix(id)?;
        (rest.is_empty() || rest.starts_with('#')).then_some(rest)
    }

    /// The schema a local reference names.
    fn target(&self, reference: &str) -> Option<&Value> {
        let fragment = self.fragment(reference)?;
        let fragment = fragment.strip_prefix('#').unwrap_or(fragment);
        if fragment.is_empty() {
            return Some(&self.value);
        }
        if fragment.starts_with('/') {
            return self.value.pointer(&percent_decode(fragment)?);
        }
        self.value.pointer(self.anchors.get(fragment)?)
    }

    /// Follows a chain of bare `$ref`s (a `$ref` with only annotations beside it; in draft-07
    /// anything beside a `$ref` is ignored) to the schema it ends in. `None`: the chain does not
    /// end within [`REF_HOPS_MAX`] hops or breaks.
    fn resolve<'s>(&'s self, mut node: &'s Value) -> Option<&'s Value> {
        for _ in 0..REF_HOPS_MAX {
            let Value::Object(m) = node else {
                return Some(node);
            };
            let Some(reference) = m.get("$ref").and_then(Value::as_str) else {
                return Some(node);
            };
            let bare = self.dialect == Dialect::Draft7
                || m.keys().all(|k| k == "$ref" || is_annotation(k));
            if !bare {
                return Some(node);
            }
            node = self.target(reference)?;
        }
        None
    }

    /// Whether a property schema (or a schema it references) carries a `default`.
    fn has_default<'s>(&'s self, mut node: &'s Value) -> bool {
        for _ in 0..REF_HOPS_MAX {
            let Value::Object(m) = node else {
                return false;
            };
            if m.contains_key("default") {
                return true;
            }
            match m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| self.target(r))
            {
                Some(next) => node = next,
                None => return false,
            }
        }
        false
    }
}

/// Keywords that annotate and never constrain.
fn is_annotation(keyword: &str) -> bool {
    matches!(
        keyword,
        "$comment"
            | "$id"
            | "$schema"
            | "$anchor"
            | "$defs"
            | "definitions"
            | "$vocabulary"
            | "title"
            | "description"
            | "default"
            | "examples"
            | "deprecated"
            | "readOnly"
            | "writeOnly"
    )
}

/// Validates `value` against its draft's meta-schema.
fn meta_check(value: &Value, dialect: Dialect) -> Result<(), SchemaError> {
    let meta = match dialect {
        Dialect::Draft7 => jsonschema::draft7::meta::validator(),
        Dialect::Draft202012 => jsonschema::draft202012::meta::validator(),
    };
    let errors: Vec<String> = meta
        .iter_errors(value)
        .take(SCHEMA_ERRORS_MAX)
        .map(|e| bounded(format!("at #{}: {e}", e.instance_path().as_str())))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    Err(SchemaError(format!(
        "not a valid {} JSON Schema: {}",
        dialect.name(),
        errors.join("; ")
    )))
}

/// Compiles a validator; offline, so a reference can never reach the network or the disk.
fn compile(value: &Value, dialect: Dialect) -> Result<jsonschema::Validator, SchemaError> {
    jsonschema::options()
        .with_draft(dialect.draft())
        .offline()
        .build(value)
        .map_err(|e| SchemaError(bounded(format!("schema does not compile: {e}"))))
}

/// Records `$anchor` names (2020-12) and fragment `$id`s (draft-07) with their pointers.
fn collect_anchor(
    node: &Value,
    path: &str,
    dialect: Dialect,
    anchors: &mut HashMap<String, String>,
) {
    let name = match dialect {
        Dialect::Draft202012 => node.get("$anchor").and_then(Value::as_str),
        Dialect::Draft7 => node
            .get("$id")
            .and_then(Value::as_str)
            .and_then(|id| id.strip_prefix('#'))
            .filter(|name| !name.is_empty() && !name.starts_with('/')),
    };
    if let Some(name) = name {
        anchors
            .entry(name.to_owned())
            .or_insert_with(|| path.to_owned());
    }
}

/// Calls `visit` on `node` and on every subschema below it, with its JSON pointer.
fn walk<'v>(
    node: &'v Value,
    path: &str,
    visit: &mut dyn FnMut(&'v Value, &str) -> Result<(), SchemaError>,
) -> Result<(), SchemaError> {
    visit(node, path)?;
    let Value::Object(m) = node else {
        return Ok(());
    };
    for (keyword, sub) in m {
        let here = format!("{path}/{}", escape(keyword));
        match (keyword.as_str(), sub) {
            (
                "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas"
                | "dependencies",
                Value::Object(named),
            ) => {
                for (name, s) in named {
                    // `dependencies` mixes schemas with arrays of names.
                    if s.is_object() || s.is_boolean() {
                        walk(s, &format!("{here}/{}", escape(name)), visit)?;
                    }
                }
            }
            ("allOf" | "anyOf" | "oneOf" | "prefixItems" | "items", Value::Array(list)) => {
                for (i, s) in list.iter().enumerate() {
                    walk(s, &format!("{here}/{i}"), visit)?;
                }
            }
            (
                "items"
                | "additionalItems"
                | "additionalProperties"
                | "unevaluatedItems"
                | "unevaluatedProperties"
                | "contains"
                | "propertyNames"
                | "not"
                | "if"
                | "then"
                | "else"
                | "contentSchema",
                Value::Object(_) | Value::Bool(_),
            ) => walk(sub, &here, visit)?,
            _ => {}
        }
    }
    Ok(())
}

/// A compiled validator (compile once per schema version, reuse for every event).
#[derive(Debug)]
pub struct Validator {
    compiled: jsonschema::Validator,
}

impl Validator {
    /// Compiles `schema`.
    ///
    /// # Errors
    /// A [`SchemaError`] if the schema does not compile, which [`JsonSchema::parse`] already
    /// rules out.
    pub fn new(schema: &JsonSchema) -> Result<Validator, SchemaError> {
        let compiled = compile(&schema.value, schema.dialect)?;
        Ok(Validator { compiled })
    }

    /// Every violation (up to [`VIOLATIONS_MAX`]), each with the JSON pointer of the offending
    /// location in `data` (empty for the root) and a message; empty means valid.
    #[must_use]
    pub fn validate(&self, data: &Value) -> Vec<Violation> {
        self.compiled
            .iter_errors(data)
            .take(VIOLATIONS_MAX)
            .map(|e| Violation {
                pointer: e.instance_path().as_str().to_owned(),
                message: bounded(e.to_string()),
            })
            .collect()
    }

    /// Whether `data` is valid: the fast path, which builds no messages.
    #[must_use]
    pub fn is_valid(&self, data: &Value) -> bool {
        self.compiled.is_valid(data)
    }
}

/// Cuts `s` to at most [`VIOLATION_MESSAGE_BYTES_MAX`] bytes, on a character boundary.
fn bounded(mut s: String) -> String {
    const ELLIPSIS: &str = "…";
    if s.len() <= VIOLATION_MESSAGE_BYTES_MAX {
        return s;
    }
    let mut end = VIOLATION_MESSAGE_BYTES_MAX - ELLIPSIS.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(ELLIPSIS);
    s
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Decodes `%XX` escapes in a URI fragment; `None` if they do not make UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Compatibility.

/// Confluent's names for schema changes, plus Gearbox's own three at the end.
mod kind {
    macro_rules! kinds {
        ($($name:ident),* $(,)?) => { $(pub const $name: &str = stringify!($name);)* };
    }
    kinds!(
        TYPE_CHANGED,
        TYPE_EXTENDED,
        TYPE_NARROWED,
        SCHEMA_ADDED,
        SCHEMA_REMOVED,
        MAX_LENGTH_ADDED,
        MAX_LENGTH_REMOVED,
        MAX_LENGTH_INCREASED,
        MAX_LENGTH_DECREASED,
        MIN_LENGTH_ADDED,
        MIN_LENGTH_REMOVED,
        MIN_LENGTH_INCREASED,
        MIN_LENGTH_DECREASED,
        PATTERN_ADDED,
        PATTERN_REMOVED,
        PATTERN_CHANGED,
        MAXIMUM_ADDED,
        MAXIMUM_REMOVED,
        MAXIMUM_INCREASED,
        MAXIMUM_DECREASED,
        MINIMUM_ADDED,
        MINIMUM_REMOVED,
        MINIMUM_INCREASED,
        MINIMUM_DECREASED,
        EXCLUSIVE_MAXIMUM_ADDED,
        EXCLUSIVE_MAXIMUM_REMOVED,
        EXCLUSIVE_MAXIMUM_INCREASED,
        EXCLUSIVE_MAXIMUM_DECREASED,
        EXCLUSIVE_MINIMUM_ADDED,
        EXCLUSIVE_MINIMUM_REMOVED,
        EXCLUSIVE_MINIMUM_INCREASED,
        EXCLUSIVE_MINIMUM_DECREASED,
        MULTIPLE_OF_ADDED,
        MULTIPLE_OF_REMOVED,
        MULTIPLE_OF_EXPANDED,
        MULTIPLE_OF_REDUCED,
        MULTIPLE_OF_CHANGED,
        REQUIRED_ATTRIBUTE_ADDED,
        REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED,
        REQUIRED_ATTRIBUTE_REMOVED,
        MAX_PROPERTIES_ADDED,
        MAX_PROPERTIES_REMOVED,
        MAX_PROPERTIES_INCREASED,
        MAX_PROPERTIES_DECREASED,
        MIN_PROPERTIES_ADDED,
        MIN_PROPERTIES_REMOVED,
        MIN_PROPERTIES_INCREASED,
        MIN_PROPERTIES_DECREASED,
        ADDITIONAL_PROPERTIES_ADDED,
        ADDITIONAL_PROPERTIES_REMOVED,
        ADDITIONAL_PROPERTIES_EXTENDED,
        ADDITIONAL_PROPERTIES_NARROWED,
        UNEVALUATED_PROPERTIES_ADDED,
        UNEVALUATED_PROPERTIES_REMOVED,
        UNEVALUATED_PROPERTIES_EXTENDED,
        UNEVALUATED_PROPERTIES_NARROWED,
        DEPENDENCY_ARRAY_ADDED,
        DEPENDENCY_ARRAY_REMOVED,
        DEPENDENCY_ARRAY_EXTENDED,
        DEPENDENCY_ARRAY_NARROWED,
        DEPENDENCY_ARRAY_CHANGED,
        DEPENDENCY_SCHEMA_ADDED,
        DEPENDENCY_SCHEMA_REMOVED,
        REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
        REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL,
        OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
        PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
        REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
        REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL,
        OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
        PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
        PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
        PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
        PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        MAX_ITEMS_ADDED,
        MAX_ITEMS_REMOVED,
        MAX_ITEMS_INCREASED,
        MAX_ITEMS_DECREASED,
        MIN_ITEMS_ADDED,
        MIN_ITEMS_REMOVED,
        MIN_ITEMS_INCREASED,
        MIN_ITEMS_DECREASED,
        MAX_CONTAINS_ADDED,
        MAX_CONTAINS_REMOVED,
        MAX_CONTAINS_INCREASED,
        MAX_CONTAINS_DECREASED,
        MIN_CONTAINS_ADDED,
        MIN_CONTAINS_REMOVED,
        MIN_CONTAINS_INCREASED,
        MIN_CONTAINS_DECREASED,
        UNIQUE_ITEMS_ADDED,
        UNIQUE_ITEMS_REMOVED,
        ADDITIONAL_ITEMS_ADDED,
        ADDITIONAL_ITEMS_REMOVED,
        ADDITIONAL_ITEMS_EXTENDED,
        ADDITIONAL_ITEMS_NARROWED,
        ITEM_ADDED_TO_OPEN_CONTENT_MODEL,
        ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
        ITEM_ADDED_TO_CLOSED_CONTENT_MODEL,
        ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL,
        ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
        ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL,
        ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
        ENUM_ARRAY_EXTENDED,
        ENUM_ARRAY_NARROWED,
        ENUM_ARRAY_CHANGED,
        COMBINED_TYPE_EXTENDED,
        COMBINED_TYPE_CHANGED,
        PRODUCT_TYPE_EXTENDED,
        PRODUCT_TYPE_NARROWED,
        SUM_TYPE_EXTENDED,
        SUM_TYPE_NARROWED,
        COMBINED_TYPE_SUBSCHEMAS_CHANGED,
        NOT_TYPE_EXTENDED,
        NOT_TYPE_NARROWED,
        // Gearbox's: `if`/`then`/`else` differ; a `$ref` that cannot be followed; a limit hit.
        CONDITIONAL_CHANGED,
        REF_UNRESOLVED,
        TOO_COMPLEX,
    );
}

use kind::*;

/// The changes a reader tolerates: Confluent's `COMPATIBLE_CHANGES_STRICT`. Every other change
/// is an incompatibility.
pub const COMPATIBLE_CHANGES: &[&str] = &[
    TYPE_EXTENDED,
    SCHEMA_REMOVED,
    MAX_LENGTH_INCREASED,
    MAX_LENGTH_REMOVED,
    MIN_LENGTH_DECREASED,
    MIN_LENGTH_REMOVED,
    PATTERN_REMOVED,
    MAXIMUM_INCREASED,
    MAXIMUM_REMOVED,
    MINIMUM_DECREASED,
    MINIMUM_REMOVED,
    EXCLUSIVE_MAXIMUM_INCREASED,
    EXCLUSIVE_MAXIMUM_REMOVED,
    EXCLUSIVE_MINIMUM_DECREASED,
    EXCLUSIVE_MINIMUM_REMOVED,
    MULTIPLE_OF_REDUCED,
    MULTIPLE_OF_REMOVED,
    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED,
    REQUIRED_ATTRIBUTE_REMOVED,
    DEPENDENCY_ARRAY_NARROWED,
    DEPENDENCY_ARRAY_REMOVED,
    DEPENDENCY_SCHEMA_REMOVED,
    MAX_PROPERTIES_INCREASED,
    MAX_PROPERTIES_REMOVED,
    MIN_PROPERTIES_DECREASED,
    MIN_PROPERTIES_REMOVED,
    ADDITIONAL_PROPERTIES_ADDED,
    ADDITIONAL_PROPERTIES_EXTENDED,
    UNEVALUATED_PROPERTIES_ADDED,
    UNEVALUATED_PROPERTIES_EXTENDED,
    PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
    REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL,
    OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
    PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
    PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
    PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
    PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
    MAX_ITEMS_INCREASED,
    MAX_ITEMS_REMOVED,
    MIN_ITEMS_DECREASED,
    MIN_ITEMS_REMOVED,
    MAX_CONTAINS_INCREASED,
    MAX_CONTAINS_REMOVED,
    MIN_CONTAINS_DECREASED,
    MIN_CONTAINS_REMOVED,
    UNIQUE_ITEMS_REMOVED,
    ADDITIONAL_ITEMS_ADDED,
    ADDITIONAL_ITEMS_EXTENDED,
    ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
    ITEM_ADDED_TO_CLOSED_CONTENT_MODEL,
    ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
    ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL,
    ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
    ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
    ENUM_ARRAY_EXTENDED,
    COMBINED_TYPE_EXTENDED,
    PRODUCT_TYPE_NARROWED,
    SUM_TYPE_EXTENDED,
    NOT_TYPE_NARROWED,
];

/// Compatibility: can a consumer using `reader` read every document valid under `writer`?
/// Returns the incompatibilities (at most [`INCOMPATIBILITIES_MAX`]), each
/// `"<schema pointer>: <CHANGE_NAME>: <explanation>"`; empty means compatible. See the module
/// documentation for the rules.
#[must_use]
pub fn incompatibilities(reader: &JsonSchema, writer: &JsonSchema) -> Vec<String> {
    let mut differ = Differ::default();
    let mut diffs = Vec::new();
    differ.compare(&mut diffs, "#", Node::root(writer), Node::root(reader));
    let mut out: Vec<String> = diffs
        .iter()
        .filter(|d| !d.compatible())
        .map(Diff::message)
        .collect();
    if differ.exhausted {
        // The diffs gathered so far are incomplete, so an empty list would be a guess.
        out.push(format!(
            "#: {TOO_COMPLEX}: the comparison needs more than {DIFF_STEPS_MAX} steps or \
             {DIFF_DEPTH_MAX} levels of nesting; simplify the schemas (fewer nested \
             oneOf/anyOf, shallower $ref chains)"
        ));
    }
    out.dedup();
    out.truncate(INCOMPATIBILITIES_MAX);
    out
}

/// One change between the writer's schema and the reader's.
#[derive(Debug)]
struct Diff {
    path: String,
    kind: &'static str,
    detail: String,
}

impl Diff {
    fn compatible(&self) -> bool {
        COMPATIBLE_CHANGES.contains(&self.kind)
    }

    fn message(&self) -> String {
        format!("{}: {}: {}", self.path, self.kind, self.detail)
    }
}

fn push(out: &mut Vec<Diff>, path: &str, kind: &'static str, detail: impl Into<String>) {
    out.push(Diff {
        path: path.to_owned(),
        kind,
        detail: detail.into(),
    });
}

fn all_compatible(diffs: &[Diff]) -> bool {
    diffs.iter().all(Diff::compatible)
}

/// A schema inside one of the two documents.
#[derive(Clone, Copy)]
struct Node<'a> {
    doc: &'a JsonSchema,
    value: &'a Value,
}

impl<'a> Node<'a> {
    fn root(doc: &'a JsonSchema) -> Node<'a> {
        Node {
            doc,
            value: &doc.value,
        }
    }

    fn at(self, value: &'a Value) -> Node<'a> {
        Node {
            doc: self.doc,
            value,
        }
    }

    /// Whether this schema accepts any value (`true`, `{}`, annotations only).
    fn accepts_anything(self) -> bool {
        self.doc
            .resolve(self.value)
            .is_some_and(|v| matches!(shape(self.doc, v), Shape::Any))
    }

    fn is_false(self) -> bool {
        matches!(self.doc.resolve(self.value), Some(Value::Bool(false)))
    }
}

/// What a schema is, for comparison: Confluent's schema classes, built from keywords.
#[derive(Clone)]
enum Shape<'a> {
    /// `true`, `{}`: anything.
    Any,
    /// `false`: nothing.
    Never,
    /// A `$ref` that cannot be followed; never compatible.
    Unresolved,
    Null,
    Boolean,
    String(&'a Map<String, Value>),
    Number {
        keywords: &'a Map<String, Value>,
        integer: bool,
    },
    Object(&'a Map<String, Value>),
    Array(&'a Map<String, Value>),
    /// `enum`, or `const` as a one-value enum.
    Enum {
        keyword: &'static str,
        values: Vec<&'a Value>,
    },
    /// `allOf`/`anyOf`/`oneOf`, a type array (`anyOf` of its types, keyword `type`), or the
    /// implicit `allOf` of several kinds of keywords in one schema (keyword empty).
    Combined {
        criterion: Criterion,
        keyword: &'static str,
        members: Vec<Member<'a>>,
    },
    Not(&'a Value),
    Conditional(&'a Map<String, Value>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Criterion {
    All,
    Any,
    One,
}

/// A branch of a combined shape: a schema in the document, or a part of one schema's keywords.
#[derive(Clone)]
enum Member<'a> {
    Schema(&'a Value),
    Part(Shape<'a>),
}

impl Shape<'_> {
    fn describe(&self) -> &'static str {
        match self {
            Shape::Any => "any value",
            Shape::Never => "no value (false)",
            Shape::Unresolved => "an unresolvable $ref",
            Shape::Null => "null",
            Shape::Boolean => "boolean",
            Shape::String(_) => "string",
            Shape::Number { integer: true, .. } => "integer",
            Shape::Number { .. } => "number",
            Shape::Object(_) => "object",
            Shape::Array(_) => "array",
            Shape::Enum { .. } => "enum",
            Shape::Combined { keyword: "", .. } => "combination of keywords",
            Shape::Combined {
                keyword: "type", ..
            } => "type array",
            Shape::Combined {
                criterion: Criterion::All,
                ..
            } => "allOf",
            Shape::Combined {
                criterion: Criterion::Any,
                ..
            } => "anyOf",
            Shape::Combined { .. } => "oneOf",
            Shape::Not(_) => "not",
            Shape::Conditional(_) => "if/then/else",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Null,
    Boolean,
    String,
    Integer,
    Number,
    Object,
    Array,
}

const STRING_KEYWORDS: &[&str] = &["maxLength", "minLength", "pattern"];
const NUMBER_KEYWORDS: &[&str] = &[
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "multipleOf",
];
const OBJECT_KEYWORDS: &[&str] = &[
    "properties",
    "required",
    "additionalProperties",
    "patternProperties",
    "unevaluatedProperties",
    "minProperties",
    "maxProperties",
    "dependencies",
    "dependentRequired",
    "dependentSchemas",
    "propertyNames",
];
const ARRAY_KEYWORDS: &[&str] = &[
    "items",
    "prefixItems",
    "additionalItems",
    "unevaluatedItems",
    "minItems",
    "maxItems",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
];

/// The types a schema constrains: its `type`, or the types its keywords imply.
fn families(m: &Map<String, Value>) -> Vec<Family> {
    let named: Vec<&str> = match m.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => {
            let mut implied = Vec::new();
            let has = |keywords: &[&str]| keywords.iter().any(|k| m.contains_key(*k));
            for (keywords, family) in [
                (STRING_KEYWORDS, Family::String),
                (NUMBER_KEYWORDS, Family::Number),
                (OBJECT_KEYWORDS, Family::Object),
                (ARRAY_KEYWORDS, Family::Array),
            ] {
                if has(keywords) {
                    implied.push(family);
                }
            }
            return implied;
        }
    };
    let mut out = Vec::new();
    for name in named {
        let family = match name {
            "null" => Family::Null,
            "boolean" => Family::Boolean,
            "string" => Family::String,
            "integer" => Family::Integer,
            "number" => Family::Number,
            "object" => Family::Object,
            _ => Family::Array,
        };
        if !out.contains(&family) {
            out.push(family);
        }
    }
    // "number" already admits every integer.
    if out.contains(&Family::Number) {
        out.retain(|f| *f != Family::Integer);
    }
    out
}

fn typed(family: Family, m: &Map<String, Value>) -> Shape<'_> {
    match family {
        Family::Null => Shape::Null,
        Family::Boolean => Shape::Boolean,
        Family::String => Shape::String(m),
        Family::Integer => Shape::Number {
            keywords: m,
            integer: true,
        },
        Family::Number => Shape::Number {
            keywords: m,
            integer: false,
        },
        Family::Object => Shape::Object(m),
        Family::Array => Shape::Array(m),
    }
}

/// The shape of a schema already resolved past bare `$ref`s.
fn shape<'a>(doc: &'a JsonSchema, value: &'a Value) -> Shape<'a> {
    let m = match value {
        Value::Bool(true) => return Shape::Any,
        Value::Bool(false) => return Shape::Never,
        Value::Object(m) => m,
        // Ruled out by the meta-schema.
        _ => return Shape::Unresolved,
    };
    let mut parts: Vec<Member<'a>> = Vec::new();
    match families(m).as_slice() {
        [] => {}
        [family] => parts.push(Member::Part(typed(*family, m))),
        several => parts.push(Member::Part(Shape::Combined {
            criterion: Criterion::Any,
            keyword: "type",
            members: several.iter().map(|f| Member::Part(typed(*f, m))).collect(),
        })),
    }
    if let Some(Value::Array(values)) = m.get("enum") {
        parts.push(Member::Part(Shape::Enum {
            keyword: "enum",
            values: values.iter().collect(),
        }));
    }
    if let Some(value) = m.get("const") {
        parts.push(Member::Part(Shape::Enum {
            keyword: "const",
            values: vec![value],
        }));
    }
    for (keyword, criterion) in [
        ("allOf", Criterion::All),
        ("anyOf", Criterion::Any),
        ("oneOf", Criterion::One),
    ] {
        if let Some(Value::Array(list)) = m.get(keyword) {
            // Duplicate branches collapse, as in Confluent.
            let mut members: Vec<&Value> = Vec::new();
            for s in list {
                if !members.contains(&s) {
                    members.push(s);
                }
            }
            parts.push(Member::Part(Shape::Combined {
                criterion,
                keyword,
                members: members.into_iter().map(Member::Schema).collect(),
            }));
        }
    }
    if let Some(not) = m.get("not") {
        parts.push(Member::Part(Shape::Not(not)));
    }
    if m.contains_key("if") {
        parts.push(Member::Part(Shape::Conditional(m)));
    }
    // A `$ref` with constraining keywords beside it (2020-12): one more part.
    if let Some(reference) = m.get("$ref").and_then(Value::as_str) {
        parts.push(match doc.target(reference) {
            Some(target) => Member::Schema(target),
            None => Member::Part(Shape::Unresolved),
        });
    }
    match parts.len() {
        0 => Shape::Any,
        1 if matches!(parts[0], Member::Part(_)) => match parts.pop() {
            Some(Member::Part(s)) => s,
            _ => Shape::Unresolved,
        },
        _ => Shape::Combined {
            criterion: Criterion::All,
            keyword: "",
            members: parts,
        },
    }
}

/// Where a property or item not declared by name goes.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Open,
    Schema(&'a Value),
    Closed,
}

impl Slot<'_> {
    fn describe(self) -> &'static str {
        match self {
            Slot::Open => "open",
            Slot::Schema(_) => "a schema",
            Slot::Closed => "closed",
        }
    }
}

/// A keyword that is open, closed or a schema.
fn slot<'a>(doc: &'a JsonSchema, value: Option<&'a Value>) -> Slot<'a> {
    let Some(value) = value else {
        return Slot::Open;
    };
    let node = Node { doc, value };
    if node.is_false() {
        Slot::Closed
    } else if node.accepts_anything() {
        Slot::Open
    } else {
        Slot::Schema(value)
    }
}

/// Where an object puts property `name` when `properties` does not declare it.
fn property_slot<'a>(doc: &'a JsonSchema, m: &'a Map<String, Value>, name: &str) -> Slot<'a> {
    if let Some(Value::Object(patterns)) = m.get("patternProperties") {
        for (pattern, schema) in patterns {
            if pattern_matches(pattern, name) {
                return slot(doc, Some(schema));
            }
        }
    }
    match slot(doc, m.get("additionalProperties")) {
        Slot::Open => slot(doc, m.get("unevaluatedProperties")),
        declared => declared,
    }
}

/// Whether an ECMA-262 `pattern` finds a match in `name`, by the same engine validation uses.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    let probe = serde_json::json!({ "pattern": pattern });
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&probe)
        .is_ok_and(|v| v.is_valid(&Value::String(name.to_owned())))
}

/// An array's positional items (`prefixItems`, or draft-07's array `items`) and the schema for
/// the items after them.
fn items_of<'a>(doc: &JsonSchema, m: &'a Map<String, Value>) -> (&'a [Value], Option<&'a Value>) {
    let (tuple, rest) = match (doc.dialect, m.get("items")) {
        (Dialect::Draft7, Some(Value::Array(tuple))) => {
            (tuple.as_slice(), m.get("additionalItems"))
        }
        (Dialect::Draft7, items) => (&[][..], items),
        (Dialect::Draft202012, items) => (
            m.get("prefixItems")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice),
            items,
        ),
    };
    let rest = rest.or_else(|| match doc.dialect {
        Dialect::Draft202012 => m.get("unevaluatedItems"),
        Dialect::Draft7 => None,
    });
    (tuple, rest)
}

/// Confluent's names for a numeric bound's changes.
struct Bound {
    keyword: &'static str,
    /// Whether a larger value is looser (`max*`) rather than tighter (`min*`).
    upper: bool,
    added: &'static str,
    removed: &'static str,
    increased: &'static str,
    decreased: &'static str,
}

macro_rules! bound {
    ($keyword:literal, $upper:literal, $added:ident, $removed:ident, $inc:ident, $dec:ident) => {
        Bound {
            keyword: $keyword,
            upper: $upper,
            added: $added,
            removed: $removed,
            increased: $inc,
            decreased: $dec,
        }
    };
}

const STRING_BOUNDS: [Bound; 2] = [
    bound!(
        "maxLength",
        true,
        MAX_LENGTH_ADDED,
        MAX_LENGTH_REMOVED,
        MAX_LENGTH_INCREASED,
        MAX_LENGTH_DECREASED
    ),
    bound!(
        "minLength",
        false,
        MIN_LENGTH_ADDED,
        MIN_LENGTH_REMOVED,
        MIN_LENGTH_INCREASED,
        MIN_LENGTH_DECREASED
    ),
];
const NUMBER_BOUNDS: [Bound; 4] = [
    bound!(
        "maximum",
        true,
        MAXIMUM_ADDED,
        MAXIMUM_REMOVED,
        MAXIMUM_INCREASED,
        MAXIMUM_DECREASED
    ),
    bound!(
        "minimum",
        false,
        MINIMUM_ADDED,
        MINIMUM_REMOVED,
        MINIMUM_INCREASED,
        MINIMUM_DECREASED
    ),
    bound!(
        "exclusiveMaximum",
        true,
        EXCLUSIVE_MAXIMUM_ADDED,
        EXCLUSIVE_MAXIMUM_REMOVED,
        EXCLUSIVE_MAXIMUM_INCREASED,
        EXCLUSIVE_MAXIMUM_DECREASED
    ),
    bound!(
        "exclusiveMinimum",
        false,
        EXCLUSIVE_MINIMUM_ADDED,
        EXCLUSIVE_MINIMUM_REMOVED,
        EXCLUSIVE_MINIMUM_INCREASED,
        EXCLUSIVE_MINIMUM_DECREASED
    ),
];
const OBJECT_BOUNDS: [Bound; 2] = [
    bound!(
        "maxProperties",
        true,
        MAX_PROPERTIES_ADDED,
        MAX_PROPERTIES_REMOVED,
        MAX_PROPERTIES_INCREASED,
        MAX_PROPERTIES_DECREASED
    ),
    bound!(
        "minProperties",
        false,
        MIN_PROPERTIES_ADDED,
        MIN_PROPERTIES_REMOVED,
        MIN_PROPERTIES_INCREASED,
        MIN_PROPERTIES_DECREASED
    ),
];
const ARRAY_BOUNDS: [Bound; 4] = [
    bound!(
        "maxItems",
        true,
        MAX_ITEMS_ADDED,
        MAX_ITEMS_REMOVED,
        MAX_ITEMS_INCREASED,
        MAX_ITEMS_DECREASED
    ),
    bound!(
        "minItems",
        false,
        MIN_ITEMS_ADDED,
        MIN_ITEMS_REMOVED,
        MIN_ITEMS_INCREASED,
        MIN_ITEMS_DECREASED
    ),
    bound!(
        "maxContains",
        true,
        MAX_CONTAINS_ADDED,
        MAX_CONTAINS_REMOVED,
        MAX_CONTAINS_INCREASED,
        MAX_CONTAINS_DECREASED
    ),
    bound!(
        "minContains",
        false,
        MIN_CONTAINS_ADDED,
        MIN_CONTAINS_REMOVED,
        MIN_CONTAINS_INCREASED,
        MIN_CONTAINS_DECREASED
    ),
];

/// Confluent's names for changes to a keyword that is open, closed or a schema.
struct Openness {
    keyword: &'static str,
    /// Closed → open or a schema.
    added: &'static str,
    /// Open or a schema → closed.
    removed: &'static str,
    /// A schema → open.
    extended: &'static str,
    /// Open → a schema.
    narrowed: &'static str,
}

const ADDITIONAL_PROPERTIES: Openness = Openness {
    keyword: "additionalProperties",
    added: ADDITIONAL_PROPERTIES_ADDED,
    removed: ADDITIONAL_PROPERTIES_REMOVED,
    extended: ADDITIONAL_PROPERTIES_EXTENDED,
    narrowed: ADDITIONAL_PROPERTIES_NARROWED,
};
const UNEVALUATED_PROPERTIES: Openness = Openness {
    keyword: "unevaluatedProperties",
    added: UNEVALUATED_PROPERTIES_ADDED,
    removed: UNEVALUATED_PROPERTIES_REMOVED,
    extended: UNEVALUATED_PROPERTIES_EXTENDED,
    narrowed: UNEVALUATED_PROPERTIES_NARROWED,
};
const ADDITIONAL_ITEMS: Openness = Openness {
    keyword: "additionalItems",
    added: ADDITIONAL_ITEMS_ADDED,
    removed: ADDITIONAL_ITEMS_REMOVED,
    extended: ADDITIONAL_ITEMS_EXTENDED,
    narrowed: ADDITIONAL_ITEMS_NARROWED,
};

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".to_owned(), Value::to_string)
}

/// A property dependency: names that must come along, or a schema the object must then match.
enum Dependency<'a> {
    Names(BTreeSet<&'a str>),
    Schema(&'a Value),
}

/// An object's dependencies by property, with the keyword each came from.
fn dependencies(m: &Map<String, Value>) -> BTreeMap<&str, (&'static str, Dependency<'_>)> {
    let mut out = BTreeMap::new();
    for keyword in ["dependencies", "dependentRequired", "dependentSchemas"] {
        let Some(Value::Object(deps)) = m.get(keyword) else {
            continue;
        };
        for (name, dep) in deps {
            let dep = match dep {
                Value::Array(names) => {
                    Dependency::Names(names.iter().filter_map(Value::as_str).collect())
                }
                schema => Dependency::Schema(schema),
            };
            out.insert(name.as_str(), (keyword, dep));
        }
    }
    out
}

fn string_set(value: Option<&Value>) -> BTreeSet<&str> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Whether `x` is a whole multiple of `y`.
fn is_multiple(x: f64, y: f64) -> bool {
    if y == 0.0 {
        return false;
    }
    let q = x / y;
    (q - q.round()).abs() < 1e-9
}

/// A maximum bipartite matching over `edges[left]` = the right vertices `left` may pair with
/// (Kuhn's augmenting paths; the sides are a schema's branches, so small).
fn max_matching(edges: &[Vec<usize>], right: usize) -> Vec<(usize, usize)> {
    fn augment(
        left: usize,
        edges: &[Vec<usize>],
        seen: &mut [bool],
        owner: &mut [Option<usize>],
    ) -> bool {
        for &r in &edges[left] {
            if seen[r] {
                continue;
            }
            seen[r] = true;
            let current = owner[r];
            if current.is_none_or(|other| augment(other, edges, seen, owner)) {
                owner[r] = Some(left);
                return true;
            }
        }
        false
    }
    let mut owner = vec![None; right];
    for left in 0..edges.len() {
        let mut seen = vec![false; right];
        augment(left, edges, &mut seen, &mut owner);
    }
    owner
        .iter()
        .enumerate()
        .filter_map(|(r, l)| l.map(|l| (l, r)))
        .collect()
}

/// One compatibility check's state.
#[derive(Default)]
struct Differ {
    steps: u32,
    depth: usize,
    exhausted: bool,
    /// Pairs (writer schema, reader schema) under comparison, by address: meeting one again is
    /// recursion through `$ref`, cut as compatible.
    active: HashSet<(usize, usize)>,
}

impl Differ {
    /// Counts a step; false once a limit is hit (the check then winds down and fails closed).
    fn enter(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        self.steps += 1;
        if self.steps > DIFF_STEPS_MAX || self.depth >= DIFF_DEPTH_MAX {
            self.exhausted = true;
            return false;
        }
        self.depth += 1;
        true
    }

    /// Compares two schemas in the documents.
    fn compare<'a>(&mut self, out: &mut Vec<Diff>, path: &str, w: Node<'a>, r: Node<'a>) {
        let (Some(wv), Some(rv)) = (w.doc.resolve(w.value), r.doc.resolve(r.value)) else {
            push(out, path, REF_UNRESOLVED, "a $ref chain does not end");
            return;
        };
        let key = (
            std::ptr::from_ref(wv) as usize,
            std::ptr::from_ref(rv) as usize,
        );
        if !self.active.insert(key) {
            return;
        }
        let (ws, rs) = (shape(w.doc, wv), shape(r.doc, rv));
        self.compare_shapes(out, path, w.at(wv), &ws, r.at(rv), &rs);
        self.active.remove(&key);
    }

    /// Compares two branches of combined shapes.
    fn compare_members<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        w: (Node<'a>, &Member<'a>),
        r: (Node<'a>, &Member<'a>),
    ) {
        match (w.1, r.1) {
            (Member::Schema(a), Member::Schema(b)) => {
                self.compare(out, path, w.0.at(a), r.0.at(b));
            }
            _ => {
                let (wn, ws) = member_shape(w.0, w.1);
                let (rn, rs) = member_shape(r.0, r.1);
                self.compare_shapes(out, path, wn, &ws, rn, &rs);
            }
        }
    }

    fn compare_shapes<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &Shape<'a>,
        rn: Node<'a>,
        r: &Shape<'a>,
    ) {
        if !self.enter() {
            return;
        }
        self.compare_entered(out, path, wn, w, rn, r);
        self.depth -= 1;
    }

    /// Confluent's `SchemaDiff.compare` for one pair of shapes.
    fn compare_entered<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &Shape<'a>,
        rn: Node<'a>,
        r: &Shape<'a>,
    ) {
        if matches!(w, Shape::Unresolved) || matches!(r, Shape::Unresolved) {
            push(out, path, REF_UNRESOLVED, "a $ref does not resolve");
            return;
        }
        if self.one_against_combined(out, path, wn, w, rn, r) {
            return;
        }
        if discriminant(w) != discriminant(r) {
            if matches!(w, Shape::Never) || matches!(r, Shape::Any) {
                return;
            }
            push(
                out,
                path,
                TYPE_CHANGED,
                format!(
                    "the writer's {} is not the reader's {}",
                    w.describe(),
                    r.describe()
                ),
            );
            return;
        }
        match (w, r) {
            (Shape::String(a), Shape::String(b)) => string_diff(out, path, a, b),
            (
                Shape::Number {
                    keywords: a,
                    integer: ai,
                },
                Shape::Number {
                    keywords: b,
                    integer: bi,
                },
            ) => number_diff(out, path, (*a, *ai), (*b, *bi)),
            (Shape::Object(a), Shape::Object(b)) => self.object_diff(out, path, wn, a, rn, b),
            (Shape::Array(a), Shape::Array(b)) => self.array_diff(out, path, wn, a, rn, b),
            (Shape::Enum { keyword, values: a }, Shape::Enum { values: b, .. }) => {
                enum_diff(out, &format!("{path}/{keyword}"), a, b)
            }
            (Shape::Combined { .. }, Shape::Combined { .. }) => {
                self.combined_diff(out, path, wn, w, rn, r);
            }
            (Shape::Not(a), Shape::Not(b)) => {
                // Whatever the reader's `not` excludes must already be excluded by the writer's.
                let here = format!("{path}/not");
                let mut sub = Vec::new();
                self.compare(&mut sub, &here, rn.at(b), wn.at(a));
                if all_compatible(&sub) {
                    push(out, &here, NOT_TYPE_NARROWED, "the reader excludes less");
                } else {
                    push(out, &here, NOT_TYPE_EXTENDED, "the reader excludes more");
                }
            }
            (Shape::Conditional(a), Shape::Conditional(b)) => {
                let same = ["if", "then", "else"]
                    .iter()
                    .all(|k| a.get(*k) == b.get(*k));
                if !same {
                    push(
                        out,
                        &format!("{path}/if"),
                        CONDITIONAL_CHANGED,
                        "if/then/else differ; Gearbox cannot prove the change safe",
                    );
                }
            }
            _ => {}
        }
    }

    /// Confluent's special cases of a single schema against a combined one. True when they
    /// settled the comparison.
    fn one_against_combined<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &Shape<'a>,
        rn: Node<'a>,
        r: &Shape<'a>,
    ) -> bool {
        match (w, r) {
            (Shape::Combined { .. }, Shape::Combined { .. }) => false,
            (
                _,
                Shape::Combined {
                    criterion, members, ..
                },
            ) => {
                // Only a union may match any one of its branches; a singleton gets one try.
                if members.len() > 1 && *criterion == Criterion::All {
                    return false;
                }
                let single = Member::Part(w.clone());
                for member in members {
                    let mut sub = Vec::new();
                    self.compare_members(&mut sub, path, (wn, &single), (rn, member));
                    if all_compatible(&sub) {
                        out.extend(sub);
                        if members.len() > 1 {
                            push(
                                out,
                                path,
                                SUM_TYPE_EXTENDED,
                                "the writer's schema fits one of the reader's branches",
                            );
                        }
                        return true;
                    }
                }
                false
            }
            (
                Shape::Combined {
                    criterion, members, ..
                },
                _,
            ) => {
                if members.len() > 1 && *criterion != Criterion::All {
                    return false;
                }
                let single = Member::Part(r.clone());
                for member in members {
                    let mut sub = Vec::new();
                    self.compare_members(&mut sub, path, (wn, member), (rn, &single));
                    if all_compatible(&sub) {
                        out.extend(sub);
                        if members.len() > 1 {
                            push(
                                out,
                                path,
                                PRODUCT_TYPE_NARROWED,
                                "one of the writer's allOf branches fits the reader",
                            );
                        }
                        return true;
                    }
                }
                false
            }
            _ => false,
        }
    }

    fn combined_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &Shape<'a>,
        rn: Node<'a>,
        r: &Shape<'a>,
    ) {
        let (
            Shape::Combined {
                criterion: wc,
                keyword,
                members: wm,
            },
            Shape::Combined {
                criterion: rc,
                members: rm,
                ..
            },
        ) = (w, r)
        else {
            return;
        };
        if wc != rc {
            let extended = *rc == Criterion::Any
                || (wm.len() == 1 && rm.len() == 1)
                || (wm.len() == 1 && *rc == Criterion::One)
                || (rm.len() == 1 && *wc == Criterion::All);
            if !extended {
                push(
                    out,
                    path,
                    COMBINED_TYPE_CHANGED,
                    format!(
                        "the writer's {} became the reader's {}",
                        w.describe(),
                        r.describe()
                    ),
                );
                return;
            }
            push(
                out,
                path,
                COMBINED_TYPE_EXTENDED,
                "the reader's combination is looser",
            );
        }
        match wm.len().cmp(&rm.len()) {
            std::cmp::Ordering::Less if *rc == Criterion::All => push(
                out,
                path,
                PRODUCT_TYPE_EXTENDED,
                "the reader's allOf has more branches",
            ),
            std::cmp::Ordering::Less => {
                push(out, path, SUM_TYPE_EXTENDED, "the reader has more branches")
            }
            std::cmp::Ordering::Greater if *wc == Criterion::All => push(
                out,
                path,
                PRODUCT_TYPE_NARROWED,
                "the reader's allOf has fewer branches",
            ),
            std::cmp::Ordering::Greater => push(
                out,
                path,
                SUM_TYPE_NARROWED,
                "the reader has fewer branches, so some of the writer's cannot be read",
            ),
            std::cmp::Ordering::Equal => {}
        }
        // Which writer branch fits which reader branch, then a one-to-one pairing of them.
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); wm.len()];
        let mut found: HashMap<(usize, usize), Vec<Diff>> = HashMap::new();
        let mut misfits: HashMap<(usize, usize), Vec<Diff>> = HashMap::new();
        for (i, a) in wm.iter().enumerate() {
            let here = if keyword.is_empty() {
                path.to_owned()
            } else {
                format!("{path}/{keyword}/{i}")
            };
            for (j, b) in rm.iter().enumerate() {
                let mut sub = Vec::new();
                self.compare_members(&mut sub, &here, (wn, a), (rn, b));
                if all_compatible(&sub) {
                    edges[i].push(j);
                    found.insert((i, j), sub);
                } else {
                    misfits.insert((i, j), sub);
                }
            }
        }
        let matching = max_matching(&edges, rm.len());
        let paired = matching.len();
        let (w_paired, r_paired): (BTreeSet<usize>, BTreeSet<usize>) =
            matching.iter().copied().unzip();
        for pair in matching {
            out.extend(found.remove(&pair).unwrap_or_default());
        }
        if paired < wm.len().min(rm.len()) {
            // Say why: an unpaired writer branch against the unpaired reader branch of its kind
            // (for `{"type": "string", "enum": [...]}` that is the enum change itself).
            let class = |node: Node<'a>, m: &Member<'a>| discriminant(&member_shape(node, m).1);
            for i in (0..wm.len()).filter(|i| !w_paired.contains(i)) {
                let same = (0..rm.len())
                    .filter(|j| !r_paired.contains(j))
                    .find(|j| class(wn, &wm[i]) == class(rn, &rm[*j]));
                if let Some(j) = same {
                    out.extend(misfits.remove(&(i, j)).unwrap_or_default());
                }
            }
            push(
                out,
                path,
                COMBINED_TYPE_SUBSCHEMAS_CHANGED,
                format!(
                    "only {paired} of the writer's {} branches fit distinct reader branches",
                    wm.len()
                ),
            );
        }
    }

    fn object_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &'a Map<String, Value>,
        rn: Node<'a>,
        r: &'a Map<String, Value>,
    ) {
        let empty = Map::new();
        let wp = w
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let rp = r
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let w_required = string_set(w.get("required"));
        let r_required = string_set(r.get("required"));
        for (name, b) in rp {
            let now = r_required.contains(name.as_str());
            let before = w_required.contains(name.as_str());
            if !wp.contains_key(name) || now == before {
                continue;
            }
            let here = format!("{path}/required/{}", escape(name));
            if before {
                push(
                    out,
                    &here,
                    REQUIRED_ATTRIBUTE_REMOVED,
                    "the reader no longer requires it",
                );
            } else if rn.doc.has_default(b) {
                push(
                    out,
                    &here,
                    REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED,
                    "the reader requires it and has a default",
                );
            } else {
                push(
                    out,
                    &here,
                    REQUIRED_ATTRIBUTE_ADDED,
                    "the reader requires a property the writer may omit",
                );
            }
        }
        // Gearbox's rule: a required name the reader does not declare is a requirement too.
        for name in &r_required {
            if !rp.contains_key(*name) && !w_required.contains(name) {
                push(
                    out,
                    &format!("{path}/required/{}", escape(name)),
                    REQUIRED_ATTRIBUTE_ADDED,
                    "the reader requires a property the writer may omit",
                );
            }
        }
        let names: BTreeSet<&String> = wp.keys().chain(rp.keys()).collect();
        for name in names {
            let here = format!("{path}/properties/{}", escape(name));
            match (wp.get(name), rp.get(name)) {
                (Some(a), Some(b)) => self.compare(out, &here, wn.at(a), rn.at(b)),
                (Some(a), None) => {
                    self.property_removed(out, &here, wn.at(a), rn, property_slot(rn.doc, r, name));
                }
                (None, Some(b)) => {
                    let required = r_required.contains(name.as_str());
                    let slot = property_slot(wn.doc, w, name);
                    self.property_added(out, &here, wn, slot, rn.at(b), required);
                }
                (None, None) => {}
            }
        }
        self.dependencies_diff(out, path, wn, w, rn, r);
        for openness in [&ADDITIONAL_PROPERTIES, &UNEVALUATED_PROPERTIES] {
            let k = openness.keyword;
            let (a, b) = (slot(wn.doc, w.get(k)), slot(rn.doc, r.get(k)));
            self.openness_diff(out, &format!("{path}/{k}"), openness, (wn, a), (rn, b));
        }
        for bound in &OBJECT_BOUNDS {
            bound_diff(out, path, bound, w, r);
        }
        let k = "propertyNames";
        self.optional_diff(out, &format!("{path}/{k}"), (wn, w.get(k)), (rn, r.get(k)));
    }

    /// The writer declares a property the reader does not.
    fn property_removed<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        w: Node<'a>,
        rn: Node<'a>,
        reader_slot: Slot<'a>,
    ) {
        match reader_slot {
            Slot::Open => push(
                out,
                path,
                PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
                "the reader's open content model accepts it as any value",
            ),
            Slot::Schema(s) => {
                let mut sub = Vec::new();
                self.compare(&mut sub, path, w, rn.at(s));
                let covered = all_compatible(&sub);
                out.extend(sub);
                if covered {
                    push(
                        out,
                        path,
                        PROPERTY_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the reader's schema for undeclared properties accepts it",
                    );
                } else {
                    push(
                        out,
                        path,
                        PROPERTY_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the reader's schema for undeclared properties does not accept the \
                         writer's values",
                    );
                }
            }
            Slot::Closed if w.is_false() => push(
                out,
                path,
                PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                "the writer never wrote it",
            ),
            Slot::Closed => push(
                out,
                path,
                PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                "the reader's closed content model rejects a property the writer may write",
            ),
        }
    }

    /// The reader declares a property the writer does not.
    fn property_added<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        writer_slot: Slot<'a>,
        r: Node<'a>,
        required: bool,
    ) {
        let default = r.doc.has_default(r.value);
        match writer_slot {
            Slot::Open if r.accepts_anything() => push(
                out,
                path,
                PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
                "the reader accepts any value for it",
            ),
            Slot::Open if required && default => push(
                out,
                path,
                REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_OPEN_CONTENT_MODEL,
                "the writer's open content model may have written it with any value",
            ),
            Slot::Open if required => push(
                out,
                path,
                REQUIRED_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
                "the writer's open content model may have written it with any value, or not \
                 at all",
            ),
            Slot::Open => push(
                out,
                path,
                OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
                "the writer's open content model may have written it with any value",
            ),
            Slot::Schema(_) | Slot::Closed => {
                if let Slot::Schema(s) = writer_slot {
                    let mut sub = Vec::new();
                    self.compare(&mut sub, path, wn.at(s), r);
                    let covered = all_compatible(&sub);
                    out.extend(sub);
                    if covered {
                        push(
                            out,
                            path,
                            PROPERTY_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                            "the writer's schema for undeclared properties fits it",
                        );
                    } else {
                        push(
                            out,
                            path,
                            PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                            "the writer's schema for undeclared properties does not fit it",
                        );
                    }
                }
                if required && default {
                    push(
                        out,
                        path,
                        REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL,
                        "required, with a default",
                    );
                } else if required {
                    push(
                        out,
                        path,
                        REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
                        "the reader requires a property the writer never wrote",
                    );
                } else {
                    push(
                        out,
                        path,
                        OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
                        "optional, and the writer's content model is not open",
                    );
                }
            }
        }
    }

    fn dependencies_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &'a Map<String, Value>,
        rn: Node<'a>,
        r: &'a Map<String, Value>,
    ) {
        let (wd, rd) = (dependencies(w), dependencies(r));
        let names: BTreeSet<&str> = wd.keys().chain(rd.keys()).copied().collect();
        for name in names {
            let (a, b) = (wd.get(name), rd.get(name));
            let Some(keyword) = a.or(b).map(|d| d.0) else {
                continue;
            };
            let here = format!("{path}/{keyword}/{}", escape(name));
            match (a.map(|d| &d.1), b.map(|d| &d.1)) {
                (Some(Dependency::Names(x)), Some(Dependency::Names(y))) if x != y => {
                    let kind = if y.is_superset(x) {
                        DEPENDENCY_ARRAY_EXTENDED
                    } else if x.is_superset(y) {
                        DEPENDENCY_ARRAY_NARROWED
                    } else {
                        DEPENDENCY_ARRAY_CHANGED
                    };
                    push(out, &here, kind, "the names that must come along differ");
                }
                (Some(Dependency::Names(_)), Some(Dependency::Names(_))) | (None, None) => {}
                (Some(Dependency::Schema(x)), Some(Dependency::Schema(y))) => {
                    self.compare(out, &here, wn.at(x), rn.at(y));
                }
                (Some(Dependency::Names(_)), None) => {
                    push(
                        out,
                        &here,
                        DEPENDENCY_ARRAY_REMOVED,
                        "the reader dropped it",
                    );
                }
                (Some(Dependency::Schema(_)), None) => {
                    push(
                        out,
                        &here,
                        DEPENDENCY_SCHEMA_REMOVED,
                        "the reader dropped it",
                    );
                }
                (_, Some(Dependency::Names(_))) => {
                    push(out, &here, DEPENDENCY_ARRAY_ADDED, "the reader added it");
                }
                (_, Some(Dependency::Schema(_))) => {
                    push(out, &here, DEPENDENCY_SCHEMA_ADDED, "the reader added it");
                }
            }
        }
    }

    fn openness_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        names: &Openness,
        w: (Node<'a>, Slot<'a>),
        r: (Node<'a>, Slot<'a>),
    ) {
        let detail = format!(
            "{} is {} in the writer and {} in the reader",
            names.keyword,
            w.1.describe(),
            r.1.describe()
        );
        match (w.1, r.1) {
            (Slot::Open, Slot::Open) | (Slot::Closed, Slot::Closed) => {}
            (Slot::Closed, _) => push(out, path, names.added, detail),
            (_, Slot::Closed) => push(out, path, names.removed, detail),
            (Slot::Open, Slot::Schema(_)) => push(out, path, names.narrowed, detail),
            (Slot::Schema(_), Slot::Open) => push(out, path, names.extended, detail),
            (Slot::Schema(a), Slot::Schema(b)) => self.compare(out, path, w.0.at(a), r.0.at(b)),
        }
    }

    /// A keyword whose absence means no constraint (`items` without a tuple, `contains`,
    /// `propertyNames`).
    fn optional_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        w: (Node<'a>, Option<&'a Value>),
        r: (Node<'a>, Option<&'a Value>),
    ) {
        let a = w.1.filter(|v| !w.0.at(v).accepts_anything());
        let b = r.1.filter(|v| !r.0.at(v).accepts_anything());
        match (a, b) {
            (None, None) => {}
            (Some(_), None) => push(
                out,
                path,
                SCHEMA_REMOVED,
                "the reader dropped the constraint",
            ),
            (None, Some(_)) => push(out, path, SCHEMA_ADDED, "the reader added a constraint"),
            (Some(a), Some(b)) => self.compare(out, path, w.0.at(a), r.0.at(b)),
        }
    }

    fn array_diff<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        w: &'a Map<String, Value>,
        rn: Node<'a>,
        r: &'a Map<String, Value>,
    ) {
        let (wt, w_rest) = items_of(wn.doc, w);
        let (rt, r_rest) = items_of(rn.doc, r);
        let tuple = match wn.doc.dialect {
            Dialect::Draft7 => "items",
            Dialect::Draft202012 => "prefixItems",
        };
        let (w_slot, r_slot) = (slot(wn.doc, w_rest), slot(rn.doc, r_rest));
        for (i, a) in wt.iter().enumerate() {
            let here = format!("{path}/{tuple}/{i}");
            match rt.get(i) {
                Some(b) => self.compare(out, &here, wn.at(a), rn.at(b)),
                None => self.item_removed(out, &here, wn.at(a), rn, r_slot),
            }
        }
        for (i, b) in rt.iter().enumerate().skip(wt.len()) {
            let here = format!("{path}/{tuple}/{i}");
            self.item_added(out, &here, wn, w_slot, rn.at(b));
        }
        if wt.is_empty() && rt.is_empty() {
            self.optional_diff(out, &format!("{path}/items"), (wn, w_rest), (rn, r_rest));
        } else {
            let rest = match wn.doc.dialect {
                Dialect::Draft7 => "additionalItems",
                Dialect::Draft202012 => "items",
            };
            let here = format!("{path}/{rest}");
            self.openness_diff(out, &here, &ADDITIONAL_ITEMS, (wn, w_slot), (rn, r_slot));
        }
        for bound in &ARRAY_BOUNDS {
            bound_diff(out, path, bound, w, r);
        }
        let unique = |m: &Map<String, Value>| m.get("uniqueItems") == Some(&Value::Bool(true));
        match (unique(w), unique(r)) {
            (true, false) => push(
                out,
                &format!("{path}/uniqueItems"),
                UNIQUE_ITEMS_REMOVED,
                "the reader allows duplicates",
            ),
            (false, true) => push(
                out,
                &format!("{path}/uniqueItems"),
                UNIQUE_ITEMS_ADDED,
                "the reader rejects duplicates the writer may write",
            ),
            _ => {}
        }
        let k = "contains";
        self.optional_diff(out, &format!("{path}/{k}"), (wn, w.get(k)), (rn, r.get(k)));
    }

    /// The writer has a positional item the reader does not.
    fn item_removed<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        w: Node<'a>,
        rn: Node<'a>,
        reader_slot: Slot<'a>,
    ) {
        match reader_slot {
            Slot::Open => push(
                out,
                path,
                ITEM_REMOVED_FROM_OPEN_CONTENT_MODEL,
                "the reader accepts any further items",
            ),
            Slot::Schema(s) => {
                let mut sub = Vec::new();
                self.compare(&mut sub, path, w, rn.at(s));
                let covered = all_compatible(&sub);
                out.extend(sub);
                if covered {
                    push(
                        out,
                        path,
                        ITEM_REMOVED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the reader's schema for further items accepts it",
                    );
                } else {
                    push(
                        out,
                        path,
                        ITEM_REMOVED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the reader's schema for further items does not accept it",
                    );
                }
            }
            Slot::Closed if w.is_false() => push(
                out,
                path,
                ITEM_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                "the writer never wrote it",
            ),
            Slot::Closed => push(
                out,
                path,
                ITEM_REMOVED_FROM_CLOSED_CONTENT_MODEL,
                "the reader's closed tuple rejects an item the writer may write",
            ),
        }
    }

    /// The reader has a positional item the writer does not.
    fn item_added<'a>(
        &mut self,
        out: &mut Vec<Diff>,
        path: &str,
        wn: Node<'a>,
        writer_slot: Slot<'a>,
        r: Node<'a>,
    ) {
        match writer_slot {
            Slot::Open if r.accepts_anything() => push(
                out,
                path,
                ITEM_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL,
                "the reader accepts any value there",
            ),
            Slot::Open => push(
                out,
                path,
                ITEM_ADDED_TO_OPEN_CONTENT_MODEL,
                "the writer's open tuple may have written any value there",
            ),
            Slot::Schema(s) => {
                let mut sub = Vec::new();
                self.compare(&mut sub, path, wn.at(s), r);
                let covered = all_compatible(&sub);
                out.extend(sub);
                if covered {
                    push(
                        out,
                        path,
                        ITEM_ADDED_IS_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the writer's schema for further items fits it",
                    );
                } else {
                    push(
                        out,
                        path,
                        ITEM_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL,
                        "the writer's schema for further items does not fit it",
                    );
                }
            }
            Slot::Closed => push(
                out,
                path,
                ITEM_ADDED_TO_CLOSED_CONTENT_MODEL,
                "the writer never wrote items there",
            ),
        }
    }
}

/// A member's shape, with the node it lives in (for a `Schema` member, resolved).
fn member_shape<'a>(node: Node<'a>, member: &Member<'a>) -> (Node<'a>, Shape<'a>) {
    match member {
        Member::Part(s) => (node, s.clone()),
        Member::Schema(v) => match node.doc.resolve(v) {
            Some(v) => (node.at(v), shape(node.doc, v)),
            None => (node, Shape::Unresolved),
        },
    }
}

fn string_diff(out: &mut Vec<Diff>, path: &str, w: &Map<String, Value>, r: &Map<String, Value>) {
    for bound in &STRING_BOUNDS {
        bound_diff(out, path, bound, w, r);
    }
    let (a, b) = (w.get("pattern"), r.get("pattern"));
    let kind = match (a, b) {
        (None, Some(_)) => PATTERN_ADDED,
        (Some(_), None) => PATTERN_REMOVED,
        (Some(x), Some(y)) if x != y => PATTERN_CHANGED,
        _ => return,
    };
    push(
        out,
        &format!("{path}/pattern"),
        kind,
        format!(
            "pattern is {} in the writer and {} in the reader",
            show(a),
            show(b)
        ),
    );
}

fn number_diff(
    out: &mut Vec<Diff>,
    path: &str,
    (w, w_integer): (&Map<String, Value>, bool),
    (r, r_integer): (&Map<String, Value>, bool),
) {
    for bound in &NUMBER_BOUNDS {
        bound_diff(out, path, bound, w, r);
    }
    let (a, b) = (w.get("multipleOf"), r.get("multipleOf"));
    let kind = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (None, None) => None,
        (None, Some(_)) => Some(MULTIPLE_OF_ADDED),
        (Some(_), None) => Some(MULTIPLE_OF_REMOVED),
        (Some(x), Some(y)) if x == y => None,
        (Some(x), Some(y)) if is_multiple(x, y) => Some(MULTIPLE_OF_REDUCED),
        (Some(x), Some(y)) if is_multiple(y, x) => Some(MULTIPLE_OF_EXPANDED),
        (Some(_), Some(_)) => Some(MULTIPLE_OF_CHANGED),
    };
    if let Some(kind) = kind {
        push(
            out,
            &format!("{path}/multipleOf"),
            kind,
            format!(
                "multipleOf is {} in the writer and {} in the reader",
                show(a),
                show(b)
            ),
        );
    }
    match (w_integer, r_integer) {
        (true, false) => push(
            out,
            path,
            TYPE_EXTENDED,
            "the writer's integer is the reader's number",
        ),
        (false, true) => push(
            out,
            path,
            TYPE_NARROWED,
            "the writer's number is the reader's integer, which rejects fractions",
        ),
        _ => {}
    }
}

fn bound_diff(
    out: &mut Vec<Diff>,
    path: &str,
    bound: &Bound,
    w: &Map<String, Value>,
    r: &Map<String, Value>,
) {
    let (a, b) = (w.get(bound.keyword), r.get(bound.keyword));
    let kind = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
        (None, None) => return,
        (None, Some(_)) => bound.added,
        (Some(_), None) => bound.removed,
        (Some(x), Some(y)) if x < y => bound.increased,
        (Some(x), Some(y)) if x > y => bound.decreased,
        (Some(_), Some(_)) => return,
    };
    let looser = if bound.upper { "larger" } else { "smaller" };
    push(
        out,
        &format!("{path}/{}", bound.keyword),
        kind,
        format!(
            "{} is {} in the writer and {} in the reader (only removing it or making it \
             {looser} is compatible)",
            bound.keyword,
            show(a),
            show(b)
        ),
    );
}

fn enum_diff(out: &mut Vec<Diff>, path: &str, w: &[&Value], r: &[&Value]) {
    let r_has_all = w.iter().all(|v| r.contains(v));
    let w_has_all = r.iter().all(|v| w.contains(v));
    let kind = match (r_has_all, w_has_all) {
        (true, true) => return,
        (true, false) => ENUM_ARRAY_EXTENDED,
        (false, true) => ENUM_ARRAY_NARROWED,
        (false, false) => ENUM_ARRAY_CHANGED,
    };
    let missing: Vec<String> = w
        .iter()
        .filter(|v| !r.contains(v))
        .map(|v| v.to_string())
        .collect();
    let detail = if missing.is_empty() {
        "the reader accepts more values".to_owned()
    } else {
        format!("the reader lacks {}", missing.join(", "))
    };
    push(out, path, kind, detail);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(value: &Value) -> JsonSchema {
        JsonSchema::parse(&value.to_string())
            .unwrap_or_else(|e| panic!("{value} should parse: {e}"))
    }

    fn obj(properties: Value) -> Value {
        json!({"type": "object", "properties": properties})
    }

    fn closed(properties: Value) -> Value {
        json!({"type": "object", "properties": properties, "additionalProperties": false})
    }

    /// One row: a schema change from `old` to `new`, and whether it is backward compatible (the
    /// new schema reads the old one's data) and forward compatible (the old reads the new's).
    struct Case {
        name: &'static str,
        old: Value,
        new: Value,
        backward: bool,
        forward: bool,
    }

    fn case(name: &'static str, old: Value, new: Value, backward: bool, forward: bool) -> Case {
        Case {
            name,
            old,
            new,
            backward,
            forward,
        }
    }

    #[allow(clippy::too_many_lines)]
    fn compatibility_table() -> Vec<Case> {
        let defs = |zip: &str| {
            json!({
                "$defs": {"address": closed(json!({"zip": {"type": zip}}))},
                "type": "object",
                "properties": {"home": {"$ref": "#/$defs/address"}}
            })
        };
        let tree = |extra: Value| {
            let mut node = json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                },
                "additionalProperties": false
            });
            if let (Some(p), Value::Object(extra)) = (node["properties"].as_object_mut(), extra) {
                p.extend(extra);
            }
            json!({"$defs": {"node": node}, "$ref": "#/$defs/node"})
        };
        let nested = |zip: Value| obj(json!({"address": obj(json!({"zip": zip}))}));
        vec![
            case(
                "identical",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}})),
                true,
                true,
            ),
            case(
                "add optional property to open model",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                false,
                true,
            ),
            case(
                "add optional property to closed model",
                closed(json!({"a": {"type": "string"}})),
                closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                true,
                false,
            ),
            case(
                "add property with empty schema to open model",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}, "b": {}})),
                true,
                true,
            ),
            case(
                "add property covered by partially open model",
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "additionalProperties": {"type": "string"}}),
                json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                       "additionalProperties": {"type": "string"}}),
                true,
                true,
            ),
            case(
                "add property not covered by partially open model",
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "additionalProperties": {"type": "string"}}),
                json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}},
                       "additionalProperties": {"type": "string"}}),
                false,
                false,
            ),
            case(
                "add required property to closed model",
                closed(json!({"a": {"type": "string"}})),
                json!({"type": "object", "additionalProperties": false, "required": ["b"],
                       "properties": {"a": {"type": "string"}, "b": {"type": "string"}}}),
                false,
                false,
            ),
            case(
                "add required property with default to closed model",
                closed(json!({"a": {"type": "string"}})),
                json!({"type": "object", "additionalProperties": false, "required": ["b"],
                       "properties": {"a": {"type": "string"}, "b": {"type": "string", "default": "x"}}}),
                true,
                false,
            ),
            case(
                "remove property from open model",
                obj(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                obj(json!({"a": {"type": "string"}})),
                true,
                false,
            ),
            case(
                "remove property from closed model",
                closed(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                closed(json!({"a": {"type": "string"}})),
                false,
                true,
            ),
            case(
                "change type string to boolean",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "boolean"}})),
                false,
                false,
            ),
            case(
                "widen integer to number",
                obj(json!({"a": {"type": "integer"}})),
                obj(json!({"a": {"type": "number"}})),
                true,
                false,
            ),
            case(
                "narrow number to integer",
                obj(json!({"a": {"type": "number"}})),
                obj(json!({"a": {"type": "integer"}})),
                false,
                true,
            ),
            case(
                "make type nullable",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": ["string", "null"]}})),
                true,
                false,
            ),
            case(
                "widen enum",
                obj(json!({"a": {"type": "string", "enum": ["x", "y"]}})),
                obj(json!({"a": {"type": "string", "enum": ["x", "y", "z"]}})),
                true,
                false,
            ),
            case(
                "narrow enum",
                obj(json!({"a": {"enum": ["x", "y", "z"]}})),
                obj(json!({"a": {"enum": ["x", "y"]}})),
                false,
                true,
            ),
            case(
                "add default",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string", "default": "x"}})),
                true,
                true,
            ),
            case(
                "title and description changed",
                json!({"title": "A", "type": "object", "properties": {"a": {"type": "string"}}}),
                json!({"title": "B", "description": "d", "type": "object",
                       "properties": {"a": {"type": "string", "description": "the a"}}}),
                true,
                true,
            ),
            case(
                "make property required",
                obj(json!({"a": {"type": "string"}})),
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
                false,
                true,
            ),
            case(
                "make property optional",
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
                obj(json!({"a": {"type": "string"}})),
                true,
                false,
            ),
            case(
                "close an open model",
                obj(json!({"a": {"type": "string"}})),
                closed(json!({"a": {"type": "string"}})),
                false,
                true,
            ),
            case(
                "open a closed model",
                closed(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}})),
                true,
                false,
            ),
            case(
                "additionalProperties true is the open model",
                obj(json!({"a": {"type": "string"}})),
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "additionalProperties": true}),
                true,
                true,
            ),
            case(
                "additionalProperties schema on an open model",
                obj(json!({"a": {"type": "string"}})),
                json!({"type": "object", "properties": {"a": {"type": "string"}},
                       "additionalProperties": {"type": "string"}}),
                false,
                true,
            ),
            case(
                "nested object: property type changed",
                nested(json!({"type": "string"})),
                nested(json!({"type": "integer"})),
                false,
                false,
            ),
            case(
                "nested object: maxLength loosened",
                nested(json!({"type": "string", "maxLength": 5})),
                nested(json!({"type": "string", "maxLength": 10})),
                true,
                false,
            ),
            case(
                "array items type changed",
                obj(json!({"tags": {"type": "array", "items": {"type": "string"}}})),
                obj(json!({"tags": {"type": "array", "items": {"type": "integer"}}})),
                false,
                false,
            ),
            case(
                "array items widened integer to number",
                obj(json!({"tags": {"type": "array", "items": {"type": "integer"}}})),
                obj(json!({"tags": {"type": "array", "items": {"type": "number"}}})),
                true,
                false,
            ),
            case(
                "array minItems added",
                obj(json!({"tags": {"type": "array", "items": {"type": "string"}}})),
                obj(json!({"tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}})),
                false,
                true,
            ),
            case(
                "draft-07 tuple: item added to closed tuple",
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                       "items": [{"type": "string"}], "additionalItems": false}),
                json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array",
                       "items": [{"type": "string"}, {"type": "integer"}], "additionalItems": false}),
                true,
                false,
            ),
            case(
                "maxLength tightened",
                obj(json!({"a": {"type": "string", "maxLength": 100}})),
                obj(json!({"a": {"type": "string", "maxLength": 50}})),
                false,
                true,
            ),
            case(
                "maximum loosened",
                obj(json!({"a": {"type": "integer", "maximum": 100}})),
                obj(json!({"a": {"type": "integer", "maximum": 200}})),
                true,
                false,
            ),
            case(
                "minimum added",
                obj(json!({"a": {"type": "integer"}})),
                obj(json!({"a": {"type": "integer", "minimum": 0}})),
                false,
                true,
            ),
            case(
                "pattern added",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string", "pattern": "^[a-z]+$"}})),
                false,
                true,
            ),
            case(
                "multipleOf reduced",
                obj(json!({"a": {"type": "integer", "multipleOf": 10}})),
                obj(json!({"a": {"type": "integer", "multipleOf": 5}})),
                true,
                false,
            ),
            case(
                "oneOf grows",
                obj(json!({"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}})),
                obj(
                    json!({"a": {"oneOf": [{"type": "string"}, {"type": "integer"}, {"type": "boolean"}]}}),
                ),
                true,
                false,
            ),
            case(
                "oneOf shrinks",
                obj(json!({"a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}})),
                obj(json!({"a": {"oneOf": [{"type": "string"}]}})),
                false,
                true,
            ),
            case(
                "single type becomes anyOf branch",
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"anyOf": [{"type": "string"}, {"type": "integer"}]}})),
                true,
                false,
            ),
            case(
                "$ref'd definition: property widened",
                defs("integer"),
                defs("number"),
                true,
                false,
            ),
            case(
                "$ref'd definition: property type changed",
                defs("integer"),
                defs("string"),
                false,
                false,
            ),
            case(
                "$ref inlined, same meaning",
                defs("string"),
                json!({"type": "object",
                       "properties": {"home": closed(json!({"zip": {"type": "string"}}))}}),
                true,
                true,
            ),
            case(
                "draft-07 definitions: maxLength loosened",
                json!({"$schema": "http://json-schema.org/draft-07/schema#",
                       "definitions": {"name": {"type": "string", "maxLength": 10}},
                       "type": "object", "properties": {"n": {"$ref": "#/definitions/name"}}}),
                json!({"$schema": "http://json-schema.org/draft-07/schema#",
                       "definitions": {"name": {"type": "string", "maxLength": 20}},
                       "type": "object", "properties": {"n": {"$ref": "#/definitions/name"}}}),
                true,
                false,
            ),
            case(
                "recursive $ref, unchanged",
                tree(json!({})),
                tree(json!({})),
                true,
                true,
            ),
            case(
                "recursive $ref, optional property added to closed node",
                tree(json!({})),
                tree(json!({"size": {"type": "integer"}})),
                true,
                false,
            ),
            case(
                "const changed",
                obj(json!({"kind": {"const": "a"}})),
                obj(json!({"kind": {"const": "b"}})),
                false,
                false,
            ),
            case(
                "uniqueItems added",
                obj(json!({"tags": {"type": "array", "items": {"type": "string"}}})),
                obj(
                    json!({"tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": true}}),
                ),
                false,
                true,
            ),
        ]
    }

    /// Checks one direction of one row; returns a failure description, if any.
    fn check(
        mode: &str,
        name: &str,
        reader: &JsonSchema,
        writer: &JsonSchema,
        expect_ok: bool,
    ) -> Option<String> {
        let found = incompatibilities(reader, writer);
        (found.is_empty() != expect_ok)
            .then(|| format!("{mode} {name:?}: expected compatible={expect_ok}, got {found:#?}"))
    }

    #[test]
    fn compatibility_modes_follow_the_table() {
        let table = compatibility_table();
        let mut failures = Vec::new();
        for c in &table {
            let (old, new) = (schema(&c.old), schema(&c.new));
            // BACKWARD: the new schema reads the old one's data.
            failures.extend(check("BACKWARD", c.name, &new, &old, c.backward));
            // FORWARD: the old schema reads the new one's data.
            failures.extend(check("FORWARD", c.name, &old, &new, c.forward));
            // FULL: both.
            let full = incompatibilities(&new, &old).is_empty()
                && incompatibilities(&old, &new).is_empty();
            if full != (c.backward && c.forward) {
                failures.push(format!(
                    "FULL {:?}: expected {}",
                    c.name,
                    c.backward && c.forward
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn compatibility_table_has_a_mix_in_every_mode() {
        let table = compatibility_table();
        let names: BTreeSet<&str> = table.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), table.len(), "row names are unique");
        assert!(table.len() >= 25);
        let count = |f: fn(&Case) -> bool| table.iter().filter(|c| f(c)).count();
        let backward_ok = count(|c| c.backward);
        let forward_ok = count(|c| c.forward);
        let full_ok = count(|c| c.backward && c.forward);
        for (mode, ok) in [
            ("backward", backward_ok),
            ("forward", forward_ok),
            ("full", full_ok),
        ] {
            assert!(
                ok >= 5 && table.len() - ok >= 5,
                "{mode}: {ok} of {} compatible",
                table.len()
            );
        }
    }

    #[test]
    fn incompatibility_messages_name_the_pointer_and_the_change() {
        let cases = [
            (
                closed(json!({"a": {"type": "string"}, "age": {"type": "integer"}})),
                closed(json!({"a": {"type": "string"}})),
                vec![
                    "#/properties/age: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL: the reader's \
                     closed content model rejects a property the writer may write",
                ],
            ),
            (
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "string"}, "b": {"type": "integer"}})),
                vec![
                    "#/properties/b: OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL: the writer's \
                     open content model may have written it with any value",
                ],
            ),
            (
                obj(json!({"a": {"type": "number"}, "s": {"type": "string", "maxLength": 9}})),
                obj(json!({"a": {"type": "integer"}, "s": {"type": "string", "maxLength": 3}})),
                vec![
                    "#/properties/a: TYPE_NARROWED: the writer's number is the reader's \
                     integer, which rejects fractions",
                    "#/properties/s/maxLength: MAX_LENGTH_DECREASED: maxLength is 9 in the writer \
                     and 3 in the reader (only removing it or making it larger is compatible)",
                ],
            ),
            (
                obj(json!({"a": {"type": "string"}})),
                obj(json!({"a": {"type": "boolean"}})),
                vec![
                    "#/properties/a: TYPE_CHANGED: the writer's string is not the reader's boolean",
                ],
            ),
        ];
        for (old, new, expect) in cases {
            assert_eq!(incompatibilities(&schema(&new), &schema(&old)), expect);
        }
    }

    #[test]
    fn compatible_changes_are_confluents_strict_set() {
        // A few spot checks that the table says what the module documentation says.
        for kind in [
            OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL,
            PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL,
            REQUIRED_ATTRIBUTE_REMOVED,
            TYPE_EXTENDED,
            SUM_TYPE_EXTENDED,
            ENUM_ARRAY_EXTENDED,
        ] {
            assert!(COMPATIBLE_CHANGES.contains(&kind), "{kind}");
        }
        for kind in [
            OPTIONAL_PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL,
            PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL,
            REQUIRED_ATTRIBUTE_ADDED,
            TYPE_NARROWED,
            SUM_TYPE_NARROWED,
            ENUM_ARRAY_NARROWED,
            CONDITIONAL_CHANGED,
            TOO_COMPLEX,
        ] {
            assert!(!COMPATIBLE_CHANGES.contains(&kind), "{kind}");
        }
    }

    #[test]
    fn comparison_past_its_step_limit_fails_closed() {
        // Nested oneOf of distinct branches: every level compares every pair of branches, so
        // the work is width^(2 * depth) and passes DIFF_STEPS_MAX.
        fn level(depth: u32, tag: u32) -> Value {
            if depth == 0 {
                return json!({"type": "integer", "minimum": tag});
            }
            let branches: Vec<Value> = (0..6).map(|i| level(depth - 1, tag * 6 + i)).collect();
            json!({"oneOf": branches, "title": tag.to_string()})
        }
        let s = schema(&level(4, 0));
        let found = incompatibilities(&s, &s);
        assert!(found.iter().any(|m| m.contains(TOO_COMPLEX)), "{found:?}");
    }

    #[test]
    fn comparison_past_its_depth_limit_fails_closed() {
        // A chain of definitions, each an object holding the next: nesting without JSON depth.
        let count = DIFF_DEPTH_MAX + 10;
        let mut defs = Map::new();
        for i in 0..count {
            let next = if i + 1 == count {
                json!({"type": "string"})
            } else {
                json!({"$ref": format!("#/$defs/d{}", i + 1)})
            };
            defs.insert(format!("d{i}"), obj(json!({"next": next})));
        }
        let s = schema(&json!({"$defs": defs, "$ref": "#/$defs/d0"}));
        let found = incompatibilities(&s, &s);
        assert!(found.iter().any(|m| m.contains(TOO_COMPLEX)), "{found:?}");
    }

    fn parse_error(text: &str) -> String {
        match JsonSchema::parse(text) {
            Ok(_) => panic!("{text} should not parse"),
            Err(SchemaError(message)) => message,
        }
    }

    #[test]
    fn parse_errors_say_what_and_where() {
        let cases: [(&str, &[&str]); 9] = [
            ("{\"type\": ", &["not JSON", "line 1"]),
            ("[1, 2]", &["an object or a boolean", "an array"]),
            (
                r#"{"type": "strin"}"#,
                &["not a valid 2020-12 JSON Schema", "at #/type"],
            ),
            (
                r#"{"type": "object", "properties": {"age": {"type": "int"}}}"#,
                &["at #/properties/age/type"],
            ),
            (
                r#"{"$schema": "http://json-schema.org/draft-07/schema#", "minLength": -1}"#,
                &["not a valid draft-07 JSON Schema", "at #/minLength"],
            ),
            (
                r#"{"properties": {"a": {"$ref": "https://example.com/a.json"}}}"#,
                &[
                    "remote $ref",
                    "https://example.com/a.json",
                    "at #/properties/a",
                ],
            ),
            (
                r##"{"properties": {"a": {"$ref": "#/$defs/missing"}}}"##,
                &["does not resolve", "#/$defs/missing"],
            ),
            (
                r#"{"$schema": "http://json-schema.org/draft-04/schema#"}"#,
                &["not supported", "draft-04"],
            ),
            (r#"{"pattern": "(unclosed"}"#, &["does not compile"]),
        ];
        for (text, fragments) in cases {
            let message = parse_error(text);
            for fragment in fragments {
                assert!(
                    message.contains(fragment),
                    "{text}: {message:?} lacks {fragment:?}"
                );
            }
        }
    }

    #[test]
    fn parse_accepts_local_references_and_refuses_what_the_diff_cannot_follow() {
        let ok = [
            json!({"$defs": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a"}}}),
            json!({"$defs": {"a b": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/a%20b"}}}),
            json!({"$defs": {"a": {"$anchor": "name", "type": "string"}}, "properties": {"x": {"$ref": "#name"}}}),
            json!({"$id": "https://example.com/p.json", "$defs": {"a": {"type": "string"}},
                   "properties": {"x": {"$ref": "https://example.com/p.json#/$defs/a"}}}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#",
                   "definitions": {"a": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/a"}}}),
            json!(true),
        ];
        for value in ok {
            schema(&value);
        }
        let refused = [
            (
                json!({"$defs": {"a": {"$id": "https://other.example/a", "type": "string"}}}),
                "embeds",
            ),
            (
                json!({"$defs": {"a": {"$dynamicRef": "#x"}}}),
                "$dynamicRef",
            ),
            (
                json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}),
                "chain",
            ),
        ];
        for (value, fragment) in refused {
            let message = parse_error(&value.to_string());
            assert!(message.contains(fragment), "{value}: {message}");
        }
    }

    #[test]
    fn canonical_ignores_whitespace_and_key_order_only() {
        let a = JsonSchema::parse(
            r#"{"type":"object","properties":{"b":{"type":"string"},"a":{"enum":[2,1]}}}"#,
        );
        let b = JsonSchema::parse(
            "{\n  \"properties\": {\n    \"a\": { \"enum\": [2, 1] },\n    \"b\": {\"type\": \"string\"}\n  },\n  \"type\": \"object\"\n}",
        );
        let c = JsonSchema::parse(
            r#"{"type":"object","properties":{"b":{"type":"string"},"a":{"enum":[1,2]}}}"#,
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), c.canonical(), "array order is kept");
        assert_eq!(
            a.canonical(),
            r#"{"properties":{"a":{"enum":[2,1]},"b":{"type":"string"}},"type":"object"}"#
        );
        assert_eq!(a.value()["type"], "object");
    }

    fn person() -> Value {
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string", "minLength": 1},
                "age": {"type": "integer", "minimum": 0},
                "email": {"type": "string"},
                "active": {"type": "boolean"},
                "score": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "address": {
                    "type": "object",
                    "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["zip"]
                },
                "kind": {"enum": ["a", "b"]},
                "note": {"type": ["string", "null"]}
            },
            "required": ["id", "name", "age"],
            "additionalProperties": false
        })
    }

    fn person_doc() -> Value {
        json!({
            "id": "2b1f0bd2-6a46-4bd4-9d6e-8f0a4f3c8b11",
            "name": "Ada",
            "age": 36,
            "email": "ada@example.com",
            "active": true,
            "score": 9.5,
            "tags": ["x", "y"],
            "address": {"zip": "12345"},
            "kind": "a",
            "note": null
        })
    }

    #[test]
    fn validate_reports_every_violation_with_its_data_pointer() {
        let v = Validator::new(&schema(&person())).unwrap();
        assert!(v.validate(&person_doc()).is_empty());
        assert!(v.is_valid(&person_doc()));
        let mut bad = person_doc();
        bad["age"] = json!("thirty");
        bad["address"]["zip"] = json!("12");
        bad["tags"][1] = json!(7);
        let violations = v.validate(&bad);
        let pointers: BTreeSet<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            BTreeSet::from(["/age", "/address/zip", "/tags/1"]),
            "{violations:#?}"
        );
        assert_eq!(violations.len(), 3, "{violations:#?}");
        assert!(violations.iter().all(|v| !v.message.is_empty()));
        assert!(!v.is_valid(&bad));
        let root = v.validate(&json!({"name": "x"}));
        assert!(root.iter().all(|v| v.pointer.is_empty()), "{root:#?}");
    }

    #[test]
    fn validate_reports_at_most_violations_max() {
        let v = Validator::new(&schema(
            &json!({"type": "array", "items": {"type": "integer"}}),
        ))
        .unwrap();
        let data = Value::Array(vec![json!("x"); VIOLATIONS_MAX * 3]);
        let violations = v.validate(&data);
        assert_eq!(violations.len(), VIOLATIONS_MAX);
        assert_eq!(violations[0].pointer, "/0");
    }

    #[test]
    fn violation_messages_are_bounded() {
        let v = Validator::new(&schema(&json!({"type": "integer"}))).unwrap();
        let huge = Value::String("é".repeat(VIOLATION_MESSAGE_BYTES_MAX * 4));
        let violations = v.validate(&huge);
        assert_eq!(violations.len(), 1);
        let message = &violations[0].message;
        assert!(
            message.len() <= VIOLATION_MESSAGE_BYTES_MAX,
            "{}",
            message.len()
        );
        assert!(message.ends_with('…'));
    }

    #[test]
    fn draft_07_and_2020_12_both_validate_by_their_own_rules() {
        // The same tuple in each draft's words: draft-07 array `items`, 2020-12 `prefixItems`.
        let draft7 = schema(&json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "array",
            "items": [{"type": "string"}, {"type": "integer"}],
            "additionalItems": false
        }));
        let draft2020 = schema(&json!({
            "type": "array",
            "prefixItems": [{"type": "string"}, {"type": "integer"}],
            "items": false
        }));
        for s in [&draft7, &draft2020] {
            let v = Validator::new(s).unwrap();
            assert!(v.is_valid(&json!(["a", 1])));
            let wrong = v.validate(&json!([1, "a"]));
            let pointers: BTreeSet<&str> = wrong.iter().map(|v| v.pointer.as_str()).collect();
            assert_eq!(pointers, BTreeSet::from(["/0", "/1"]), "{wrong:#?}");
            assert!(!v.is_valid(&json!(["a", 1, 2])));
        }
        // Draft-07 asserts formats by default; 2020-12 treats them as annotations.
        let format = |dialect: Value| {
            let mut s = json!({"type": "string", "format": "email"});
            if !dialect.is_null() {
                s["$schema"] = dialect;
            }
            Validator::new(&schema(&s))
                .unwrap()
                .is_valid(&json!("not an email"))
        };
        assert!(!format(json!("http://json-schema.org/draft-07/schema#")));
        assert!(format(Value::Null));
        // The tuple diff reads each draft's keywords too.
        assert!(incompatibilities(&draft7, &draft2020).is_empty());
    }

    #[test]
    fn validator_and_schema_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Validator>();
        send_sync::<JsonSchema>();
    }
}
