//! Avro schemas for the registry: parsing, identity, compatibility between versions, and
//! validation of JSON event data.
//!
//! Parsing is apache-avro's ([`Schema::parse`]), which checks names, defaults and references. The
//! parsed schema is then compiled into a small tree of our own (`Compiled`) in which every
//! named type is defined once and every reference points at its definition by index; logical
//! types are reduced to their underlying types, as Avro's schema resolution ignores them. Both
//! the compatibility checker and the validator walk that tree.
//!
//! Identity has two forms. [`AvroSchema::canonical`] is the full schema as JSON with object keys
//! sorted, whitespace removed and `{"type": "int"}` written as `"int"`; it keeps docs, defaults and
//! aliases, because a changed default changes compatibility, so the registry uses it to decide
//! whether a schema is already registered. [`AvroSchema::fingerprint_form`] is Avro's Parsing
//! Canonical Form, which drops all of those.
//!
//! Compatibility follows Avro's reference checker (Java's `SchemaCompatibility`, which Confluent's
//! registry runs), not apache-avro's own `schema_compatibility`: that one stops at the first
//! problem, reports "partial" compatibility (a writer union with an unreadable branch, an enum
//! losing symbols) where the registry needs a plain no, prints schemas with `Debug` in its
//! messages, and ignores reader aliases of named types. Ours lists every incompatibility with its
//! location in the reader schema (`/fields/address/fields/zip`, `/items`, `/values`, `/1` for a
//! writer union branch, `/symbols`, `/size`, `/name`).
//!
//! Validation reads data in Avro's JSON encoding, with one relaxation: a union value may be given
//! bare (`"bob"`) as well as tagged (`{"string": "bob"}`), as most producers send plain JSON.
//!
//! - `null` is always bare. A single-key object whose key names one of the union's branches (a
//!   primitive name, `array`, `map`, or a named type's full or short name) is the tagged form;
//!   the tagged form wins when both readings are possible.
//! - Any other value is bare. If exactly one branch can hold its JSON kind (number, string,
//!   object, ...), the value is checked against that branch and that branch's violations are
//!   reported. If several can, it must match exactly one of them: matching several (`5` against
//!   `["int", "long"]`) is reported as ambiguous, and the producer has to tag it.
//!
//! Records must carry every field without a default and no field the schema lacks. Enums are
//! strings among the symbols. `bytes` and `fixed` are strings of code points up to U+00FF (one per
//! byte, as Avro's JSON encoding has them), and a `fixed` has exactly its size of them. `int` and
//! `long` are JSON integers in range (`1.0` is not an integer), `float` and `double` any number
//! (a `float` within its range).
//!
//! Invariants: a `Compiled` tree holds no unresolved reference; [`Validator`] and
//! [`AvroSchema`] share one immutable tree behind an [`Arc`], so both are `Send + Sync` and cheap
//! to clone.
//!
//! Limits: at most [`VIOLATIONS_MAX`] violations per document, [`INCOMPATIBILITIES_MAX`]
//! messages per comparison, data nested at most [`DATA_DEPTH_MAX`] levels, and at most
//! [`SYMBOLS_LISTED_MAX`] enum symbols quoted in one message.

use super::{SchemaError, Violation};
use apache_avro::Schema;
use apache_avro::schema::{
    Alias, DecimalSchema, EnumSchema, FixedSchema, InnerDecimalSchema, Name, RecordSchema,
    UuidSchema,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Most violations reported for one document; validation stops looking after that many.
pub const VIOLATIONS_MAX: usize = 100;
/// Most incompatibility messages returned by one [`incompatibilities`] call (the last one says
/// how many more there were).
pub const INCOMPATIBILITIES_MAX: usize = 100;
/// Deepest nesting of data validated: `serde_json`'s own parse limit, so that it only bounds the
/// recursion (and the stack) for values built in code.
pub const DATA_DEPTH_MAX: usize = 128;
/// Most enum symbols quoted in one message (an enum can have thousands).
pub const SYMBOLS_LISTED_MAX: usize = 10;

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

/// A parsed Avro schema.
#[derive(Debug, Clone)]
pub struct AvroSchema {
    compiled: Arc<Compiled>,
    canonical: String,
    fingerprint_form: String,
}

impl AvroSchema {
    /// Parses schema text (JSON: a record, enum, array, map, fixed, union or primitive).
    ///
    /// # Errors
    /// A [`SchemaError`] saying what is wrong: the text is not JSON, or not a valid Avro schema
    /// (an unknown type, a missing name or size, a default that does not fit its field, a name
    /// defined twice, ...).
    pub fn parse(text: &str) -> Result<AvroSchema, SchemaError> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| SchemaError(format!("schema is not JSON: {e}")))?;
        let schema = Schema::parse(&json).map_err(|e| SchemaError(avro_error(&e)))?;
        let compiled = Compiled::build(&schema)?;
        Ok(AvroSchema {
            canonical: normalize_schema(&json).to_string(),
            fingerprint_form: compiled.parsing_canonical_form(),
            compiled: Arc::new(compiled),
        })
    }

    /// The schema as normalized JSON (keys sorted, no whitespace, `{"type": "int"}` as `"int"`),
    /// keeping docs, defaults, aliases and custom attributes: two texts with the same canonical
    /// form are the same schema for the registry.
    #[must_use]
    pub fn canonical(&self) -> String {
        self.canonical.clone()
    }

    /// Avro's Parsing Canonical Form: what decides how binary data is laid out (no docs,
    /// defaults, aliases or logical types; names fully qualified), as Java's
    /// `SchemaNormalization` writes it, so that fingerprints match other registries'.
    #[must_use]
    pub fn fingerprint_form(&self) -> String {
        self.fingerprint_form.clone()
    }
}

/// apache-avro's error with its causes, which hold the useful part (the serde error, the
/// offending name).
fn avro_error(e: &apache_avro::Error) -> String {
    let mut message = format!("invalid Avro schema: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Can a consumer using `reader` read data written with `writer`, by Avro's schema resolution
/// rules? Returns the incompatibilities, each naming its location in the reader schema (for
/// example `/fields/age: reader field without default not present in writer`); empty means
/// compatible. At most [`INCOMPATIBILITIES_MAX`] messages.
#[must_use]
pub fn incompatibilities(reader: &AvroSchema, writer: &AvroSchema) -> Vec<String> {
    let mut checker = Checker {
        writer: &writer.compiled,
        reader: &reader.compiled,
        memo: HashMap::new(),
    };
    let issues = checker.check(&writer.compiled.root, &reader.compiled.root);
    let mut seen = HashSet::new();
    let mut out: Vec<String> = issues
        .into_iter()
        .map(|i| {
            let path = if i.path.is_empty() { "/" } else { &i.path };
            format!("{path}: {}", i.message)
        })
        .filter(|line| seen.insert(line.clone()))
        .collect();
    if out.len() > INCOMPATIBILITIES_MAX {
        let more = out.len() - (INCOMPATIBILITIES_MAX - 1);
        out.truncate(INCOMPATIBILITIES_MAX - 1);
        out.push(format!("... and {more} more incompatibilities"));
    }
    out
}

/// Validates JSON event data against one schema version. Built once per version and shared.
#[derive(Debug, Clone)]
pub struct Validator {
    compiled: Arc<Compiled>,
}

impl Validator {
    /// A validator for `schema` (sharing its compiled form).
    #[must_use]
    pub fn new(schema: &AvroSchema) -> Validator {
        Validator {
            compiled: schema.compiled.clone(),
        }
    }

    /// The violations of `data` (empty: valid), each with a JSON pointer into `data`; at most
    /// [`VIOLATIONS_MAX`].
    #[must_use]
    pub fn validate(&self, data: &Value) -> Vec<Violation> {
        let mut walk = Walk {
            schema: &self.compiled,
            trials: HashMap::new(),
        };
        let mut sink = Sink {
            out: Vec::new(),
            max: VIOLATIONS_MAX,
        };
        walk.value(&self.compiled.root, data, &mut String::new(), 0, &mut sink);
        sink.out
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled tree.

/// A schema with every named type defined once in `named` and referred to by index.
#[derive(Debug)]
struct Compiled {
    root: Type,
    named: Vec<Named>,
}

#[derive(Debug)]
enum Type {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(Box<Type>),
    Map(Box<Type>),
    Union(Vec<Type>),
    /// An index into [`Compiled::named`].
    Named(usize),
}

#[derive(Debug)]
struct Named {
    fullname: String,
    /// Full names.
    aliases: Vec<String>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Record(Vec<Field>),
    Enum {
        symbols: Vec<String>,
        default: Option<String>,
    },
    Fixed {
        size: usize,
    },
}

#[derive(Debug)]
struct Field {
    name: String,
    aliases: Vec<String>,
    has_default: bool,
    ty: Type,
}

impl Type {
    /// The type's name as Avro's JSON encoding tags union values with (named types excepted).
    fn word(&self) -> &'static str {
        match self {
            Type::Null => "null",
            Type::Boolean => "boolean",
            Type::Int => "int",
            Type::Long => "long",
            Type::Float => "float",
            Type::Double => "double",
            Type::Bytes => "bytes",
            Type::String => "string",
            Type::Array(_) => "array",
            Type::Map(_) => "map",
            Type::Union(_) => "union",
            Type::Named(_) => "named",
        }
    }
}

impl Named {
    fn name(&self) -> &str {
        self.fullname.rsplit('.').next().unwrap_or(&self.fullname)
    }
}

impl Kind {
    fn word(&self) -> &'static str {
        match self {
            Kind::Record(_) => "record",
            Kind::Enum { .. } => "enum",
            Kind::Fixed { .. } => "fixed",
        }
    }
}

impl Compiled {
    fn build(schema: &Schema) -> Result<Compiled, SchemaError> {
        let mut builder = Builder {
            defs: Vec::new(),
            index: HashMap::new(),
        };
        builder.collect(schema)?;
        let root = builder.convert(schema)?;
        let named = builder
            .defs
            .iter()
            .map(|def| builder.named(def))
            .collect::<Result<_, _>>()?;
        Ok(Compiled { root, named })
    }

    /// For messages: `int`, `array`, `record com.example.User`.
    fn describe(&self, ty: &Type) -> String {
        match ty {
            Type::Named(i) => {
                let n = &self.named[*i];
                format!("{} {}", n.kind.word(), n.fullname)
            }
            other => other.word().to_string(),
        }
    }

    /// Written from the compiled tree rather than taken from apache-avro's `canonical_form`,
    /// which keeps logical types (`{"type":"int","logicalType":"date"}` becomes
    /// `{"type":"int"}`, and a decimal keeps its precision) where the specification strips them
    /// to `"int"` and `"bytes"`.
    fn parsing_canonical_form(&self) -> String {
        let mut out = String::new();
        let mut defined = vec![false; self.named.len()];
        self.write_pcf(&self.root, &mut defined, &mut out);
        out
    }

    /// Each named type is written in full where it first occurs, and by name after that.
    fn write_pcf(&self, ty: &Type, defined: &mut [bool], out: &mut String) {
        match ty {
            Type::Array(items) => {
                out.push_str(r#"{"type":"array","items":"#);
                self.write_pcf(items, defined, out);
                out.push('}');
            }
            Type::Map(values) => {
                out.push_str(r#"{"type":"map","values":"#);
                self.write_pcf(values, defined, out);
                out.push('}');
            }
            Type::Union(branches) => {
                out.push('[');
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    self.write_pcf(branch, defined, out);
                }
                out.push(']');
            }
            Type::Named(i) => {
                let n = &self.named[*i];
                let name = json_string(&n.fullname);
                if std::mem::replace(&mut defined[*i], true) {
                    out.push_str(&name);
                    return;
                }
                out.push_str(&format!(r#"{{"name":{name},"type":"{}""#, n.kind.word()));
                match &n.kind {
                    Kind::Record(fields) => {
                        out.push_str(r#","fields":["#);
                        for (i, f) in fields.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            out.push_str(&format!(r#"{{"name":{},"type":"#, json_string(&f.name)));
                            self.write_pcf(&f.ty, defined, out);
                            out.push('}');
                        }
                        out.push(']');
                    }
                    Kind::Enum { symbols, .. } => {
                        let symbols: Vec<String> = symbols.iter().map(|s| json_string(s)).collect();
                        out.push_str(&format!(r#","symbols":[{}]"#, symbols.join(",")));
                    }
                    Kind::Fixed { size } => out.push_str(&format!(r#","size":{size}"#)),
                }
                out.push('}');
            }
            primitive => {
                out.push('"');
                out.push_str(primitive.word());
                out.push('"');
            }
        }
    }

    fn describe_all(&self, types: &[Type]) -> String {
        types
            .iter()
            .map(|t| self.describe(t))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// A named type's definition in apache-avro's tree.
enum Def<'a> {
    Record(&'a RecordSchema),
    Enum(&'a EnumSchema),
    Fixed(&'a FixedSchema),
}

/// Compiles in two passes: `collect` numbers every named definition (so that references,
/// including a record's references to itself, resolve), then `convert` builds the tree.
struct Builder<'a> {
    defs: Vec<Def<'a>>,
    /// Full names and full aliases to indexes into `defs`.
    index: HashMap<String, usize>,
}

impl<'a> Builder<'a> {
    fn collect(&mut self, schema: &'a Schema) -> Result<(), SchemaError> {
        match schema {
            Schema::Record(r) => {
                self.define(Def::Record(r), &r.name, r.aliases.as_deref())?;
                for f in &r.fields {
                    self.collect(&f.schema)?;
                }
            }
            Schema::Enum(e) => self.define(Def::Enum(e), &e.name, e.aliases.as_deref())?,
            Schema::Fixed(f)
            | Schema::Duration(f)
            | Schema::Uuid(UuidSchema::Fixed(f))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(f),
                ..
            }) => self.define(Def::Fixed(f), &f.name, f.aliases.as_deref())?,
            Schema::Array(a) => self.collect(&a.items)?,
            Schema::Map(m) => self.collect(&m.types)?,
            Schema::Union(u) => {
                for v in u.variants() {
                    self.collect(v)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn define(
        &mut self,
        def: Def<'a>,
        name: &Name,
        aliases: Option<&[Alias]>,
    ) -> Result<(), SchemaError> {
        let fullname = name.fullname(None);
        if self.index.contains_key(&fullname) {
            return Err(SchemaError(format!(
                "invalid Avro schema: the name {fullname} is defined twice"
            )));
        }
        let i = self.defs.len();
        self.defs.push(def);
        self.index.insert(fullname, i);
        for alias in aliases.unwrap_or_default() {
            self.index.entry(alias.fullname(None)).or_insert(i);
        }
        Ok(())
    }

    fn lookup(&self, name: &Name) -> Result<Type, SchemaError> {
        let fullname = name.fullname(None);
        self.index
            .get(&fullname)
            .map(|&i| Type::Named(i))
            .ok_or_else(|| SchemaError(format!("invalid Avro schema: unknown type {fullname}")))
    }

    fn convert(&self, schema: &Schema) -> Result<Type, SchemaError> {
        Ok(match schema {
            Schema::Null => Type::Null,
            Schema::Boolean => Type::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Type::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Type::Long,
            Schema::Float => Type::Float,
            Schema::Double => Type::Double,
            Schema::Bytes
            | Schema::BigDecimal
            | Schema::Uuid(UuidSchema::Bytes)
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Bytes,
                ..
            }) => Type::Bytes,
            Schema::String | Schema::Uuid(UuidSchema::String) => Type::String,
            Schema::Array(a) => Type::Array(Box::new(self.convert(&a.items)?)),
            Schema::Map(m) => Type::Map(Box::new(self.convert(&m.types)?)),
            Schema::Union(u) => Type::Union(
                u.variants()
                    .iter()
                    .map(|v| self.convert(v))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Record(RecordSchema { name, .. })
            | Schema::Enum(EnumSchema { name, .. })
            | Schema::Fixed(FixedSchema { name, .. })
            | Schema::Duration(FixedSchema { name, .. })
            | Schema::Uuid(UuidSchema::Fixed(FixedSchema { name, .. }))
            | Schema::Decimal(DecimalSchema {
                inner: InnerDecimalSchema::Fixed(FixedSchema { name, .. }),
                ..
            })
            | Schema::Ref { name } => self.lookup(name)?,
        })
    }

    fn named(&self, def: &Def<'a>) -> Result<Named, SchemaError> {
        let (name, aliases, kind) = match def {
            Def::Record(r) => {
                let fields = r
                    .fields
                    .iter()
                    .map(|f| {
                        Ok(Field {
                            name: f.name.clone(),
                            aliases: f.aliases.clone(),
                            has_default: f.default.is_some(),
                            ty: self.convert(&f.schema)?,
                        })
                    })
                    .collect::<Result<_, SchemaError>>()?;
                (&r.name, &r.aliases, Kind::Record(fields))
            }
            Def::Enum(e) => (
                &e.name,
                &e.aliases,
                Kind::Enum {
                    symbols: e.symbols.clone(),
                    default: e.default.clone(),
                },
            ),
            Def::Fixed(f) => (&f.name, &f.aliases, Kind::Fixed { size: f.size }),
        };
        Ok(Named {
            fullname: name.fullname(None),
            aliases: aliases.iter().flatten().map(|a| a.fullname(None)).collect(),
            kind,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical text.

/// The schema JSON with keys sorted and `{"type": "<primitive>"}` collapsed. Keys are sorted
/// explicitly (rather than relying on `serde_json`'s map order) so that enabling its
/// `preserve_order` feature anywhere in the build cannot change identities. Only schema positions
/// are collapsed, never values inside `default`s.
fn normalize_schema(schema: &Value) -> Value {
    match schema {
        Value::Array(branches) => Value::Array(branches.iter().map(normalize_schema).collect()),
        Value::Object(m) => {
            if m.len() == 1
                && let Some(Value::String(t)) = m.get("type")
                && PRIMITIVES.contains(&t.as_str())
            {
                return Value::String(t.clone());
            }
            sorted_object(m, |key, value| match key {
                "type" | "items" | "values" => normalize_schema(value),
                "fields" => match value {
                    Value::Array(fields) => {
                        Value::Array(fields.iter().map(normalize_field).collect())
                    }
                    other => sorted(other),
                },
                _ => sorted(value),
            })
        }
        other => other.clone(),
    }
}

fn normalize_field(field: &Value) -> Value {
    match field {
        Value::Object(m) => sorted_object(m, |key, value| match key {
            "type" => normalize_schema(value),
            _ => sorted(value),
        }),
        other => sorted(other),
    }
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        Value::Object(m) => sorted_object(m, |_, v| sorted(v)),
        other => other.clone(),
    }
}

fn sorted_object(m: &Map<String, Value>, mut f: impl FnMut(&str, &Value) -> Value) -> Value {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = Map::new();
    for key in keys {
        out.insert(key.clone(), f(key, &m[key]));
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Compatibility.

/// One incompatibility, its path relative to where the check started.
#[derive(Debug, Clone)]
struct Issue {
    path: String,
    message: String,
}

fn issue(message: String) -> Vec<Issue> {
    vec![Issue {
        path: String::new(),
        message,
    }]
}

fn prefixed(segment: &str, issues: Vec<Issue>) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|i| Issue {
            path: format!("{segment}{}", i.path),
            message: i.message,
        })
        .collect()
}

/// Java's `SchemaCompatibility`, collecting every incompatibility.
struct Checker<'a> {
    writer: &'a Compiled,
    reader: &'a Compiled,
    /// Results per (writer, reader) named-type pair: `None` while the pair is being checked. A
    /// recursive type meets its own pair again; that pair is taken as compatible there, as its
    /// problems are reported where the check began. Memoizing also keeps the work polynomial.
    memo: HashMap<(usize, usize), Option<Vec<Issue>>>,
}

impl<'a> Checker<'a> {
    fn check(&mut self, w: &'a Type, r: &'a Type) -> Vec<Issue> {
        // Every branch the writer may have written must be readable.
        if let Type::Union(branches) = w {
            let mut out = Vec::new();
            for (i, branch) in branches.iter().enumerate() {
                out.extend(prefixed(&format!("/{i}"), self.check(branch, r)));
            }
            return out;
        }
        if let Type::Union(branches) = r {
            return self.reader_union(w, branches);
        }
        match (w, r) {
            (Type::Array(wi), Type::Array(ri)) => prefixed("/items", self.check(wi, ri)),
            (Type::Map(wv), Type::Map(rv)) => prefixed("/values", self.check(wv, rv)),
            (Type::Named(wi), Type::Named(ri)) => self.named(*wi, *ri),
            _ if promotes(w, r) => Vec::new(),
            _ => issue(format!(
                "reader type {} cannot read writer type {}",
                self.reader.describe(r),
                self.writer.describe(w)
            )),
        }
    }

    /// A non-union writer against a reader union: some branch must read it. When none does and
    /// exactly one branch is of the same kind (the optional record `["null", Address]`), that
    /// branch's problems are the useful report.
    fn reader_union(&mut self, w: &'a Type, branches: &'a [Type]) -> Vec<Issue> {
        let mut closest = Vec::new();
        let mut similar = 0;
        for branch in branches {
            let issues = self.check(w, branch);
            if issues.is_empty() {
                return issues;
            }
            if self.similar(w, branch) {
                similar += 1;
                closest = issues;
            }
        }
        if similar == 1 {
            return closest;
        }
        issue(format!(
            "reader union ({}) has no branch that can read writer type {}",
            self.reader.describe_all(branches),
            self.writer.describe(w)
        ))
    }

    fn similar(&self, w: &Type, r: &Type) -> bool {
        match (w, r) {
            (Type::Named(wi), Type::Named(ri)) => {
                let (wn, rn) = (&self.writer.named[*wi], &self.reader.named[*ri]);
                wn.kind.word() == rn.kind.word() && names_match(wn, rn)
            }
            _ => w.word() == r.word(),
        }
    }

    fn named(&mut self, wi: usize, ri: usize) -> Vec<Issue> {
        match self.memo.get(&(wi, ri)) {
            Some(None) => return Vec::new(),
            Some(Some(done)) => return done.clone(),
            None => {}
        }
        self.memo.insert((wi, ri), None);
        let issues = self.named_uncached(wi, ri);
        self.memo.insert((wi, ri), Some(issues.clone()));
        issues
    }

    fn named_uncached(&mut self, wi: usize, ri: usize) -> Vec<Issue> {
        let (writer, reader) = (self.writer, self.reader);
        let (w, r) = (&writer.named[wi], &reader.named[ri]);
        if w.kind.word() != r.kind.word() {
            return issue(format!(
                "reader type {} {} cannot read writer type {} {}",
                r.kind.word(),
                r.fullname,
                w.kind.word(),
                w.fullname
            ));
        }
        let mut out = Vec::new();
        if !names_match(w, r) {
            out.push(Issue {
                path: "/name".into(),
                message: format!(
                    "reader name {} does not match writer name {}, and no reader alias names it",
                    r.fullname, w.fullname
                ),
            });
        }
        match (&w.kind, &r.kind) {
            (Kind::Record(wf), Kind::Record(rf)) => out.extend(self.fields(wf, rf)),
            (Kind::Enum { symbols: ws, .. }, Kind::Enum { symbols, default }) => {
                let missing: Vec<&String> = ws.iter().filter(|s| !symbols.contains(s)).collect();
                if !missing.is_empty() && default.is_none() {
                    out.push(Issue {
                        path: "/symbols".into(),
                        message: format!(
                            "writer symbols {} are not in the reader enum, which has no default",
                            listed(&missing)
                        ),
                    });
                }
            }
            (Kind::Fixed { size: ws }, Kind::Fixed { size }) if ws != size => out.push(Issue {
                path: "/size".into(),
                message: format!("reader fixed size {size} differs from writer size {ws}"),
            }),
            _ => {}
        }
        out
    }

    /// Each reader field is read from the writer field of its name (or, failing that, of one of
    /// its aliases) or else takes its default. Writer fields the reader lacks are skipped.
    fn fields(&mut self, writer: &'a [Field], reader: &'a [Field]) -> Vec<Issue> {
        let mut out = Vec::new();
        for rf in reader {
            let segment = format!("/fields/{}", rf.name);
            let found = std::iter::once(&rf.name)
                .chain(&rf.aliases)
                .find_map(|n| writer.iter().find(|wf| &wf.name == n));
            match found {
                Some(wf) => out.extend(prefixed(&segment, self.check(&wf.ty, &rf.ty))),
                None if rf.has_default => {}
                None => out.push(Issue {
                    path: segment,
                    message: "reader field without default not present in writer".into(),
                }),
            }
        }
        out
    }
}

/// Java's `schemaNameEquals`: the same unqualified name, or a reader alias naming the writer.
fn names_match(w: &Named, r: &Named) -> bool {
    r.name() == w.name() || r.aliases.contains(&w.fullname)
}

/// Same types, and Avro's promotions: int to long, float or double; long to float or double;
/// float to double; string and bytes either way.
fn promotes(w: &Type, r: &Type) -> bool {
    use Type as T;
    matches!(
        (w, r),
        (T::Null, T::Null)
            | (T::Boolean, T::Boolean)
            | (T::Int, T::Int | T::Long | T::Float | T::Double)
            | (T::Long, T::Long | T::Float | T::Double)
            | (T::Float, T::Float | T::Double)
            | (T::Double, T::Double)
            | (T::String | T::Bytes, T::String | T::Bytes)
    )
}

fn listed(symbols: &[&String]) -> String {
    let mut text = symbols
        .iter()
        .take(SYMBOLS_LISTED_MAX)
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if symbols.len() > SYMBOLS_LISTED_MAX {
        text.push_str(&format!(", ... ({} in all)", symbols.len()));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Sink {
    out: Vec<Violation>,
    max: usize,
}

impl Sink {
    fn report(&mut self, pointer: &str, message: String) {
        if self.out.len() < self.max {
            self.out.push(Violation {
                pointer: pointer.to_string(),
                message,
            });
        }
    }

    fn full(&self) -> bool {
        self.out.len() >= self.max
    }
}

struct Walk<'a> {
    schema: &'a Compiled,
    /// Whether a value matches a union branch, by (type address, value address), for the
    /// lifetime of one `validate` call. Without it, unions of recursive records would try each
    /// branch at every level again: exponential in the depth.
    trials: HashMap<(usize, usize), bool>,
}

impl<'a> Walk<'a> {
    fn value(&mut self, ty: &'a Type, v: &Value, ptr: &mut String, depth: usize, out: &mut Sink) {
        if depth > DATA_DEPTH_MAX {
            out.report(
                ptr,
                format!("data is nested deeper than {DATA_DEPTH_MAX} levels"),
            );
            return;
        }
        match ty {
            Type::Array(items) => match v {
                Value::Array(elements) => {
                    for (i, element) in elements.iter().enumerate() {
                        if out.full() {
                            break;
                        }
                        let len = push_token(ptr, &i.to_string());
                        self.value(items, element, ptr, depth + 1, out);
                        ptr.truncate(len);
                    }
                }
                other => out.report(ptr, format!("expected an array, found {}", kind(other))),
            },
            Type::Map(values) => match v {
                Value::Object(m) => {
                    for (key, value) in m {
                        if out.full() {
                            break;
                        }
                        let len = push_token(ptr, key);
                        self.value(values, value, ptr, depth + 1, out);
                        ptr.truncate(len);
                    }
                }
                other => out.report(
                    ptr,
                    format!("expected an object (a map), found {}", kind(other)),
                ),
            },
            Type::Union(branches) => self.union(branches, v, ptr, depth, out),
            Type::Named(i) => self.named(&self.schema.named[*i], v, ptr, depth, out),
            primitive => {
                if let Some(message) = primitive_violation(primitive, v) {
                    out.report(ptr, message);
                }
            }
        }
    }

    fn named(&mut self, n: &'a Named, v: &Value, ptr: &mut String, depth: usize, out: &mut Sink) {
        match &n.kind {
            Kind::Record(fields) => self.record(n, fields, v, ptr, depth, out),
            Kind::Enum { symbols, .. } => match v {
                Value::String(s) if symbols.contains(s) => {}
                Value::String(s) => {
                    let all: Vec<&String> = symbols.iter().collect();
                    out.report(
                        ptr,
                        format!(
                            "\"{s}\" is not a symbol of enum {} ({})",
                            n.fullname,
                            listed(&all)
                        ),
                    );
                }
                other => out.report(
                    ptr,
                    format!(
                        "expected a string (enum {}), found {}",
                        n.fullname,
                        kind(other)
                    ),
                ),
            },
            Kind::Fixed { size } => {
                if let Some(message) = fixed_violation(*size, &n.fullname, v) {
                    out.report(ptr, message);
                }
            }
        }
    }

    fn record(
        &mut self,
        n: &'a Named,
        fields: &'a [Field],
        v: &Value,
        ptr: &mut String,
        depth: usize,
        out: &mut Sink,
    ) {
        let Value::Object(m) = v else {
            out.report(
                ptr,
                format!(
                    "expected an object (record {}), found {}",
                    n.fullname,
                    kind(v)
                ),
            );
            return;
        };
        for field in fields {
            if out.full() {
                return;
            }
            let len = push_token(ptr, &field.name);
            match m.get(&field.name) {
                Some(value) => self.value(&field.ty, value, ptr, depth + 1, out),
                None if field.has_default => {}
                None => out.report(
                    ptr,
                    format!("missing field \"{}\", which has no default", field.name),
                ),
            }
            ptr.truncate(len);
        }
        for key in m.keys() {
            if !fields.iter().any(|f| &f.name == key) {
                let len = push_token(ptr, key);
                out.report(
                    ptr,
                    format!(
                        "unknown field \"{key}\": record {} has no such field",
                        n.fullname
                    ),
                );
                ptr.truncate(len);
            }
        }
    }

    fn union(
        &mut self,
        branches: &'a [Type],
        v: &Value,
        ptr: &mut String,
        depth: usize,
        out: &mut Sink,
    ) {
        if v.is_null() {
            if !branches.iter().any(|b| matches!(b, Type::Null)) {
                out.report(
                    ptr,
                    format!(
                        "null is not allowed: the union ({}) has no null branch",
                        self.schema.describe_all(branches)
                    ),
                );
            }
            return;
        }
        if let Value::Object(m) = v
            && m.len() == 1
            && let Some((tag, inner)) = m.iter().next()
            && let Some(branch) = branches.iter().find(|b| self.tags(b, tag))
        {
            let len = push_token(ptr, tag);
            self.value(branch, inner, ptr, depth + 1, out);
            ptr.truncate(len);
            return;
        }
        let candidates: Vec<&'a Type> = branches.iter().filter(|b| self.holds(b, v)).collect();
        match candidates.as_slice() {
            [] => out.report(
                ptr,
                format!(
                    "expected one of the union's types ({}), found {}",
                    self.schema.describe_all(branches),
                    kind(v)
                ),
            ),
            [only] => self.value(only, v, ptr, depth, out),
            several => {
                let matching: Vec<&'a Type> = several
                    .iter()
                    .copied()
                    .filter(|b| self.matches(b, v, depth))
                    .collect();
                match matching.as_slice() {
                    [_] => {}
                    [] => out.report(
                        ptr,
                        format!(
                            "matches none of the union's types ({})",
                            self.schema.describe_all(branches)
                        ),
                    ),
                    [first, ..] => out.report(
                        ptr,
                        format!(
                            "ambiguous union value: it matches {}; tag it, as in {{\"{}\": ...}}",
                            matching
                                .iter()
                                .map(|t| self.schema.describe(t))
                                .collect::<Vec<_>>()
                                .join(" and "),
                            self.tag(first)
                        ),
                    ),
                }
            }
        }
    }

    /// Does the union tag `tag` name this branch?
    fn tags(&self, branch: &Type, tag: &str) -> bool {
        match branch {
            Type::Named(i) => {
                let n = &self.schema.named[*i];
                n.fullname == tag || n.name() == tag
            }
            other => other.word() == tag,
        }
    }

    fn tag(&self, branch: &Type) -> String {
        match branch {
            Type::Named(i) => self.schema.named[*i].fullname.clone(),
            other => other.word().to_string(),
        }
    }

    /// Can this (non-null) branch hold a value of `v`'s JSON kind at all?
    fn holds(&self, branch: &Type, v: &Value) -> bool {
        match (branch, v) {
            (Type::Boolean, Value::Bool(_))
            | (Type::Int | Type::Long | Type::Float | Type::Double, Value::Number(_))
            | (Type::Bytes | Type::String, Value::String(_))
            | (Type::Array(_), Value::Array(_))
            | (Type::Map(_), Value::Object(_)) => true,
            (Type::Named(i), _) => matches!(
                (&self.schema.named[*i].kind, v),
                (Kind::Record(_), Value::Object(_))
                    | (Kind::Enum { .. } | Kind::Fixed { .. }, Value::String(_))
            ),
            _ => false,
        }
    }

    fn matches(&mut self, branch: &'a Type, v: &Value, depth: usize) -> bool {
        let key = (
            std::ptr::from_ref(branch).addr(),
            std::ptr::from_ref(v).addr(),
        );
        if let Some(&known) = self.trials.get(&key) {
            return known;
        }
        let mut sink = Sink {
            out: Vec::new(),
            max: 1,
        };
        self.value(branch, v, &mut String::new(), depth, &mut sink);
        let ok = sink.out.is_empty();
        self.trials.insert(key, ok);
        ok
    }
}

/// Appends one JSON pointer token (escaped per RFC 6901); returns the length to truncate back to.
fn push_token(ptr: &mut String, token: &str) -> usize {
    let len = ptr.len();
    ptr.push('/');
    for c in token.chars() {
        match c {
            '~' => ptr.push_str("~0"),
            '/' => ptr.push_str("~1"),
            c => ptr.push(c),
        }
    }
    len
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn primitive_violation(ty: &Type, v: &Value) -> Option<String> {
    let expected = |what: &str| Some(format!("expected {what}, found {}", kind(v)));
    match (ty, v) {
        (Type::Null, Value::Null)
        | (Type::Boolean, Value::Bool(_))
        | (Type::Double, Value::Number(_))
        | (Type::String, Value::String(_)) => None,
        (Type::Int, _) => integer_violation(v, i64::from(i32::MIN), i64::from(i32::MAX), "int"),
        (Type::Long, _) => integer_violation(v, i64::MIN, i64::MAX, "long"),
        (Type::Float, Value::Number(n)) => match n.as_f64() {
            Some(x) if x.abs() > f64::from(f32::MAX) => {
                Some(format!("{n} is out of range for float"))
            }
            _ => None,
        },
        (Type::Bytes, Value::String(s)) => byte_string_violation(s, "bytes"),
        (Type::Null, _) => expected("null"),
        (Type::Boolean, _) => expected("a boolean"),
        (Type::Float | Type::Double, _) => expected("a number"),
        (Type::Bytes | Type::String, _) => expected("a string"),
        // Containers, unions and named types are walked by the caller.
        _ => None,
    }
}

fn integer_violation(v: &Value, min: i64, max: i64, name: &str) -> Option<String> {
    let out_of_range = |n: &dyn std::fmt::Display| {
        Some(format!("{n} is out of range for {name} ({min} to {max})"))
    };
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(x) if (min..=max).contains(&x) => None,
            Some(x) => out_of_range(&x),
            None if n.is_u64() => out_of_range(n),
            None => Some(format!("expected an integer ({name}), found {n}")),
        },
        other => Some(format!(
            "expected an integer ({name}), found {}",
            kind(other)
        )),
    }
}

/// Avro's JSON encoding writes each byte as the code point of the same value.
fn byte_string_violation(s: &str, what: &str) -> Option<String> {
    s.chars().position(|c| u32::from(c) > 0xFF).map(|at| {
        format!("{what} must be a string of code points U+0000 to U+00FF (one per byte); character {at} is not")
    })
}

fn fixed_violation(size: usize, name: &str, v: &Value) -> Option<String> {
    let Value::String(s) = v else {
        return Some(format!(
            "expected a string (fixed {name}), found {}",
            kind(v)
        ));
    };
    if let Some(message) = byte_string_violation(s, &format!("fixed {name}")) {
        return Some(message);
    }
    let len = s.chars().count();
    (len != size).then(|| format!("fixed {name} needs exactly {size} bytes, found {len}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // -----------------------------------------------------------------------------------------
    // Compatibility.

    struct Row {
        name: &'static str,
        old: String,
        new: String,
        backward: bool,
        forward: bool,
    }

    fn row(name: &'static str, old: &str, new: &str, backward: bool, forward: bool) -> Row {
        Row {
            name,
            old: old.to_string(),
            new: new.to_string(),
            backward,
            forward,
        }
    }

    /// A record `User` with these fields.
    fn user(fields: &str) -> String {
        format!(
            r#"{{"type":"record","name":"User","namespace":"com.example","fields":[{fields}]}}"#
        )
    }

    fn color(symbols: &str, default: Option<&str>) -> String {
        let default = default.map_or(String::new(), |d| format!(r#","default":"{d}""#));
        user(&format!(
            r#"{{"name":"color","type":{{"type":"enum","name":"Color","symbols":[{symbols}]{default}}}}}"#
        ))
    }

    fn table() -> Vec<Row> {
        let id = r#"{"name":"id","type":"long"}"#;
        let address = |zip: &str| {
            format!(
                r#"{{"type":"record","name":"Address","fields":[{{"name":"street","type":"string"}}{zip}]}}"#
            )
        };
        let zip = r#",{"name":"zip","type":"string"}"#;
        let zip_default = r#",{"name":"zip","type":"string","default":""}"#;
        let item = |extra: &str| {
            format!(
                r#"{{"type":"record","name":"Item","fields":[{{"name":"sku","type":"string"}}{extra}]}}"#
            )
        };
        let qty = r#",{"name":"qty","type":"int"}"#;
        let list = |extra: &str| {
            format!(
                r#"{{"type":"record","name":"Node","fields":[{{"name":"value","type":"int"}},{{"name":"next","type":["null","Node"],"default":null}}{extra}]}}"#
            )
        };
        vec![
            row("identical", &user(id), &user(id), true, true),
            row(
                "add a field with a default",
                &user(id),
                &user(&format!(
                    r#"{id},{{"name":"age","type":"int","default":0}}"#
                )),
                true,
                true,
            ),
            row(
                "add a field without default",
                &user(id),
                &user(&format!(r#"{id},{{"name":"age","type":"int"}}"#)),
                false,
                true,
            ),
            row(
                "add an optional field (null union, null default)",
                &user(id),
                &user(&format!(
                    r#"{id},{{"name":"email","type":["null","string"],"default":null}}"#
                )),
                true,
                true,
            ),
            row(
                "remove a field with a default",
                &user(&format!(
                    r#"{id},{{"name":"age","type":"int","default":0}}"#
                )),
                &user(id),
                true,
                true,
            ),
            row(
                "remove a field without default",
                &user(&format!(r#"{id},{{"name":"age","type":"int"}}"#)),
                &user(id),
                true,
                false,
            ),
            row(
                "add a default to an existing field",
                &user(r#"{"name":"age","type":"int"}"#),
                &user(r#"{"name":"age","type":"int","default":18}"#),
                true,
                true,
            ),
            row(
                "change a type int to string",
                &user(r#"{"name":"age","type":"int"}"#),
                &user(r#"{"name":"age","type":"string"}"#),
                false,
                false,
            ),
            row(
                "promote int to long",
                &user(r#"{"name":"n","type":"int"}"#),
                &user(r#"{"name":"n","type":"long"}"#),
                true,
                false,
            ),
            row(
                "promote float to double",
                &user(r#"{"name":"n","type":"float"}"#),
                &user(r#"{"name":"n","type":"double"}"#),
                true,
                false,
            ),
            row(
                "promote long to float",
                &user(r#"{"name":"n","type":"long"}"#),
                &user(r#"{"name":"n","type":"float"}"#),
                true,
                false,
            ),
            row(
                "demote long to int",
                &user(r#"{"name":"n","type":"long"}"#),
                &user(r#"{"name":"n","type":"int"}"#),
                false,
                true,
            ),
            row(
                "string to bytes (interchangeable)",
                &user(r#"{"name":"s","type":"string"}"#),
                &user(r#"{"name":"s","type":"bytes"}"#),
                true,
                true,
            ),
            row(
                "widen an enum without default",
                &color(r#""RED","GREEN""#, None),
                &color(r#""RED","GREEN","BLUE""#, None),
                true,
                false,
            ),
            row(
                "narrow an enum without default",
                &color(r#""RED","GREEN","BLUE""#, None),
                &color(r#""RED","GREEN""#, None),
                false,
                true,
            ),
            row(
                "narrow an enum, the new one with a default",
                &color(r#""RED","GREEN","BLUE""#, None),
                &color(r#""RED","GREEN""#, Some("RED")),
                true,
                true,
            ),
            row(
                "widen an enum that had a default",
                &color(r#""RED","GREEN""#, Some("RED")),
                &color(r#""RED","GREEN","BLUE""#, Some("RED")),
                true,
                true,
            ),
            row(
                "union: add a branch",
                &user(r#"{"name":"v","type":["null","string"]}"#),
                &user(r#"{"name":"v","type":["null","string","int"]}"#),
                true,
                false,
            ),
            row(
                "union: remove a branch",
                &user(r#"{"name":"v","type":["null","string","int"]}"#),
                &user(r#"{"name":"v","type":["null","string"]}"#),
                false,
                true,
            ),
            row(
                "make a field optional (string to null union)",
                &user(r#"{"name":"v","type":"string"}"#),
                &user(r#"{"name":"v","type":["null","string"],"default":null}"#),
                true,
                false,
            ),
            row(
                "union branch promoted (int to long inside the union)",
                &user(r#"{"name":"v","type":["null","int"]}"#),
                &user(r#"{"name":"v","type":["null","long"]}"#),
                true,
                false,
            ),
            row(
                "rename a field, new name with the old one as alias",
                &user(r#"{"name":"name","type":"string"}"#),
                &user(r#"{"name":"full_name","type":"string","aliases":["name"]}"#),
                true,
                false,
            ),
            row(
                "rename a field without alias",
                &user(r#"{"name":"name","type":"string"}"#),
                &user(r#"{"name":"full_name","type":"string"}"#),
                false,
                false,
            ),
            row(
                "rename the record, new name with the old one as alias",
                &user(id),
                &format!(
                    r#"{{"type":"record","name":"Person","namespace":"com.example","aliases":["User"],"fields":[{id}]}}"#
                ),
                true,
                false,
            ),
            row(
                "rename the record without alias",
                &user(id),
                &format!(
                    r#"{{"type":"record","name":"Person","namespace":"com.example","fields":[{id}]}}"#
                ),
                false,
                false,
            ),
            row(
                "change only the namespace (names compare unqualified)",
                &user(id),
                &format!(
                    r#"{{"type":"record","name":"User","namespace":"org.other","fields":[{id}]}}"#
                ),
                true,
                true,
            ),
            row(
                "nested record: add a field without default",
                &user(&format!(r#"{{"name":"address","type":{}}}"#, address(""))),
                &user(&format!(r#"{{"name":"address","type":{}}}"#, address(zip))),
                false,
                true,
            ),
            row(
                "nested record: add a field with a default",
                &user(&format!(r#"{{"name":"address","type":{}}}"#, address(""))),
                &user(&format!(
                    r#"{{"name":"address","type":{}}}"#,
                    address(zip_default)
                )),
                true,
                true,
            ),
            row(
                "optional nested record: remove a field without default",
                &user(&format!(
                    r#"{{"name":"address","type":["null",{}],"default":null}}"#,
                    address(zip)
                )),
                &user(&format!(
                    r#"{{"name":"address","type":["null",{}],"default":null}}"#,
                    address("")
                )),
                true,
                false,
            ),
            row(
                "array of records: add a field without default",
                &user(&format!(
                    r#"{{"name":"items","type":{{"type":"array","items":{}}}}}"#,
                    item("")
                )),
                &user(&format!(
                    r#"{{"name":"items","type":{{"type":"array","items":{}}}}}"#,
                    item(qty)
                )),
                false,
                true,
            ),
            row(
                "map of records: remove a field without default",
                &user(&format!(
                    r#"{{"name":"byId","type":{{"type":"map","values":{}}}}}"#,
                    item(qty)
                )),
                &user(&format!(
                    r#"{{"name":"byId","type":{{"type":"map","values":{}}}}}"#,
                    item("")
                )),
                true,
                false,
            ),
            row(
                "array items int to long",
                r#"{"type":"array","items":"int"}"#,
                r#"{"type":"array","items":"long"}"#,
                true,
                false,
            ),
            row(
                "array to map",
                r#"{"type":"array","items":"string"}"#,
                r#"{"type":"map","values":"string"}"#,
                false,
                false,
            ),
            row(
                "fixed size change",
                r#"{"type":"fixed","name":"Hash","size":16}"#,
                r#"{"type":"fixed","name":"Hash","size":32}"#,
                false,
                false,
            ),
            row(
                "recursive record: add a field with a default",
                &list(""),
                &list(r#",{"name":"label","type":"string","default":""}"#),
                true,
                true,
            ),
            row(
                "recursive record: add a field without default",
                &list(""),
                &list(r#",{"name":"label","type":"string"}"#),
                false,
                true,
            ),
        ]
    }

    #[test]
    fn compatibility_table() {
        let rows = table();
        let mut failures = Vec::new();
        for r in &rows {
            let old = AvroSchema::parse(&r.old).unwrap_or_else(|e| panic!("{}: old: {e}", r.name));
            let new = AvroSchema::parse(&r.new).unwrap_or_else(|e| panic!("{}: new: {e}", r.name));
            let backward = incompatibilities(&new, &old);
            let forward = incompatibilities(&old, &new);
            if backward.is_empty() != r.backward {
                failures.push(format!(
                    "{}: backward expected {}, got {backward:?}",
                    r.name, r.backward
                ));
            }
            if forward.is_empty() != r.forward {
                failures.push(format!(
                    "{}: forward expected {}, got {forward:?}",
                    r.name, r.forward
                ));
            }
            let full = backward.is_empty() && forward.is_empty();
            assert_eq!(full, r.backward && r.forward, "{}: full", r.name);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The table must keep exercising both outcomes in both directions.
        let count = |f: fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count();
        assert!(count(|r| r.backward) >= 5 && count(|r| !r.backward) >= 5);
        assert!(count(|r| r.forward) >= 5 && count(|r| !r.forward) >= 5);
        assert!(count(|r| r.backward && r.forward) >= 5);
    }

    /// apache-avro's checker against ours on the same table: they agree except where its rules
    /// differ from Avro's reference checker (listed, with the reason).
    #[test]
    fn apache_avro_checker_agrees_except_where_noted() {
        // Its name check ignores reader aliases of named types.
        let differs = ["rename the record, new name with the old one as alias"];
        for r in table() {
            let old = Schema::parse_str(&r.old).expect("old parses");
            let new = Schema::parse_str(&r.new).expect("new parses");
            let full = |w: &Schema, rd: &Schema| {
                apache_avro::schema_compatibility::SchemaCompatibility::can_read(w, rd)
                    == Ok(apache_avro::schema_compatibility::Compatibility::Full)
            };
            let theirs = (full(&old, &new), full(&new, &old));
            // Without logical types, both write the same Parsing Canonical Form.
            let ours = AvroSchema::parse(&r.old)
                .expect("old parses")
                .fingerprint_form();
            assert_eq!(ours, old.canonical_form(), "{}", r.name);
            if differs.contains(&r.name) {
                assert_ne!(theirs, (r.backward, r.forward), "{}: now agrees", r.name);
            } else {
                assert_eq!(theirs, (r.backward, r.forward), "{}", r.name);
            }
        }
    }

    fn check_messages(reader: &str, writer: &str, expect: &[&str]) {
        let reader = AvroSchema::parse(reader).expect("reader parses");
        let writer = AvroSchema::parse(writer).expect("writer parses");
        assert_eq!(incompatibilities(&reader, &writer), expect);
    }

    #[test]
    fn compatibility_messages() {
        check_messages(
            &user(r#"{"name":"id","type":"long"},{"name":"age","type":"int"}"#),
            &user(r#"{"name":"id","type":"long"}"#),
            &["/fields/age: reader field without default not present in writer"],
        );
        // Every problem is listed, not only the first.
        check_messages(
            &user(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#),
            &user(r#"{"name":"a","type":"int"}"#),
            &[
                "/fields/a: reader type string cannot read writer type int",
                "/fields/b: reader field without default not present in writer",
            ],
        );
        check_messages(
            &color(r#""RED""#, None),
            &color(r#""RED","GREEN","BLUE""#, None),
            &[
                "/fields/color/symbols: writer symbols GREEN, BLUE are not in the reader enum, which has no default",
            ],
        );
        check_messages(
            r#"{"type":"fixed","name":"Hash","size":16}"#,
            r#"{"type":"fixed","name":"Hash","size":32}"#,
            &["/size: reader fixed size 16 differs from writer size 32"],
        );
        check_messages(
            r#"{"type":"record","name":"A","fields":[]}"#,
            r#"{"type":"record","name":"B","fields":[]}"#,
            &["/name: reader name A does not match writer name B, and no reader alias names it"],
        );
        check_messages(
            r#"["null","string"]"#,
            r#"["null","string","int"]"#,
            &["/2: reader union (null, string) has no branch that can read writer type int"],
        );
        check_messages(
            r#""string""#,
            r#"["null","string"]"#,
            &["/0: reader type string cannot read writer type null"],
        );
        // An optional record: the problem inside the one record branch is the useful report.
        check_messages(
            r#"["null",{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}]"#,
            r#"{"type":"record","name":"A","fields":[]}"#,
            &["/fields/x: reader field without default not present in writer"],
        );
        check_messages(
            r#"{"type":"map","values":{"type":"array","items":"int"}}"#,
            r#"{"type":"map","values":{"type":"array","items":"double"}}"#,
            &["/values/items: reader type int cannot read writer type double"],
        );
    }

    #[test]
    fn incompatibilities_are_bounded() {
        let fields: Vec<String> = (0..INCOMPATIBILITIES_MAX + 50)
            .map(|i| format!(r#"{{"name":"f{i}","type":"int"}}"#))
            .collect();
        let reader = AvroSchema::parse(&user(&fields.join(","))).expect("parses");
        let writer = AvroSchema::parse(&user("")).expect("parses");
        let messages = incompatibilities(&reader, &writer);
        assert_eq!(messages.len(), INCOMPATIBILITIES_MAX);
        assert_eq!(
            messages[0],
            "/fields/f0: reader field without default not present in writer"
        );
        assert_eq!(
            messages[INCOMPATIBILITIES_MAX - 1],
            "... and 51 more incompatibilities"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Parsing and identity.

    #[test]
    fn parse_errors() {
        let cases: &[(&str, &str)] = &[
            ("{", "schema is not JSON"),
            ("42", "invalid Avro schema"),
            (r#""strin""#, "invalid Avro schema"),
            (r#"{"type":"record","name":"A"}"#, "invalid Avro schema"),
            (r#"{"type":"record","fields":[]}"#, "invalid Avro schema"),
            (r#"{"type":"fixed","name":"F"}"#, "invalid Avro schema"),
            (
                r#"{"type":"enum","name":"E","symbols":["A","A"]}"#,
                "invalid Avro schema",
            ),
            (
                r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int","default":"no"}]}"#,
                "invalid Avro schema",
            ),
            (
                r#"{"type":"record","name":"A","fields":[{"name":"x","type":"B"}]}"#,
                "invalid Avro schema",
            ),
            (r#"["int","int"]"#, "invalid Avro schema"),
            (
                r#"{"type":"record","name":"A","fields":[{"name":"x","type":{"type":"fixed","name":"F","size":1}},{"name":"y","type":{"type":"fixed","name":"F","size":2}}]}"#,
                "defined twice",
            ),
        ];
        for (text, expect) in cases {
            match AvroSchema::parse(text) {
                Ok(_) => panic!("{text}: parsed, expected an error containing {expect:?}"),
                Err(SchemaError(message)) => {
                    assert!(message.contains(expect), "{text}: {message}");
                }
            }
        }
    }

    #[test]
    fn canonical_identity() {
        let canonical = |text: &str| AvroSchema::parse(text).expect("parses").canonical();
        let fingerprint = |text: &str| AvroSchema::parse(text).expect("parses").fingerprint_form();
        let a = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]}"#;
        let b = "{ \"fields\" : [ { \"type\" : { \"type\": \"int\" }, \"name\" : \"x\" } ],\n  \"name\": \"A\", \"type\": \"record\" }";
        assert_eq!(canonical(a), canonical(b));
        assert_eq!(
            canonical(a),
            r#"{"fields":[{"name":"x","type":"int"}],"name":"A","type":"record"}"#
        );
        // Field order is meaningful and kept.
        let two = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int"},{"name":"y","type":"int"}]}"#;
        let swapped = r#"{"type":"record","name":"A","fields":[{"name":"y","type":"int"},{"name":"x","type":"int"}]}"#;
        assert_ne!(canonical(two), canonical(swapped));
        // A default or a doc is part of the identity, not of the fingerprint form.
        let with_default =
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int","default":1}]}"#;
        let other_default =
            r#"{"type":"record","name":"A","fields":[{"name":"x","type":"int","default":2}]}"#;
        let with_doc = r#"{"type":"record","name":"A","doc":"hi","fields":[{"name":"x","type":"int","default":1}]}"#;
        assert_ne!(canonical(with_default), canonical(other_default));
        assert_ne!(canonical(with_default), canonical(with_doc));
        assert_eq!(fingerprint(with_default), fingerprint(other_default));
        assert_eq!(fingerprint(with_default), fingerprint(with_doc));
        assert_eq!(
            fingerprint(a),
            r#"{"name":"A","type":"record","fields":[{"name":"x","type":"int"}]}"#
        );
        // Logical types are not part of the Parsing Canonical Form; a named type is written in
        // full once, then by its full name.
        assert_eq!(
            fingerprint(r#"{"type":"int","logicalType":"date"}"#),
            r#""int""#
        );
        assert_eq!(
            fingerprint(r#"{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}"#),
            r#""bytes""#
        );
        assert_eq!(
            fingerprint(
                r#"{"type":"record","name":"L","namespace":"n","fields":[{"name":"v","type":{"type":"enum","name":"E","symbols":["A"]}},{"name":"w","type":"E"},{"name":"next","type":["null","L"]}]}"#
            ),
            r#"{"name":"n.L","type":"record","fields":[{"name":"v","type":{"name":"n.E","type":"enum","symbols":["A"]}},{"name":"w","type":"n.E"},{"name":"next","type":["null","n.L"]}]}"#
        );
        // A default's own content is never collapsed as if it were a schema.
        let record_default = r#"{"type":"record","name":"A","fields":[{"name":"r","type":{"type":"record","name":"R","fields":[{"name":"type","type":"string"}]},"default":{"type":"int"}}]}"#;
        assert!(canonical(record_default).contains(r#""default":{"type":"int"}"#));
    }

    // -----------------------------------------------------------------------------------------
    // Validation.

    const PERSON: &str = r#"{
      "type": "record", "name": "Person", "namespace": "com.example",
      "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "age", "type": "int"},
        {"name": "score", "type": "float"},
        {"name": "active", "type": "boolean", "default": true},
        {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "attrs", "type": {"type": "map", "values": "long"}, "default": {}},
        {"name": "address", "type": ["null", {"type": "record", "name": "Address", "fields": [
          {"name": "street", "type": "string"}, {"name": "zip", "type": "string"}]}], "default": null},
        {"name": "digest", "type": {"type": "fixed", "name": "Digest", "size": 4}, "default": "\u0000\u0000\u0000\u0000"}
      ]
    }"#;

    fn person() -> Value {
        json!({
            "id": 1, "name": "Ada", "age": 36, "score": 9.5, "active": true, "color": "RED",
            "tags": ["a", "b"], "attrs": {"x": 1},
            "address": {"street": "Main", "zip": "12345"},
            "digest": "\u{00}\u{ff}ab"
        })
    }

    /// `person()` with these top-level keys replaced (a null value removes the key).
    fn person_with(changes: Value) -> Value {
        let mut p = person();
        for (k, v) in changes.as_object().expect("an object") {
            let m = p.as_object_mut().expect("an object");
            if v.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), v.clone());
            }
        }
        p
    }

    /// Validates `data` against `schema`: the violations' pointers must be `pointers`, and each
    /// message must contain the matching entry of `messages` (when given).
    fn check(schema: &str, data: &Value, pointers: &[&str], messages: &[&str]) {
        let validator = Validator::new(&AvroSchema::parse(schema).expect("schema parses"));
        let violations = validator.validate(data);
        let got: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(got, pointers, "{data}: {violations:#?}");
        for (v, m) in violations.iter().zip(messages) {
            assert!(
                v.message.contains(m),
                "{}: {:?} lacks {m:?}",
                v.pointer,
                v.message
            );
        }
    }

    #[test]
    fn validate_records() {
        check(PERSON, &person(), &[], &[]);
        check(
            PERSON,
            &person_with(
                json!({"age": "forty", "address": {"street": "Main", "zip": 12345}, "tags": ["a", 2]}),
            ),
            &["/age", "/tags/1", "/address/zip"],
            &[
                "expected an integer (int), found a string",
                "expected a string, found a number",
                "expected a string, found a number",
            ],
        );
        check(
            PERSON,
            &person_with(json!({"name": null})),
            &["/name"],
            &["missing field \"name\", which has no default"],
        );
        // Fields with defaults may be absent.
        check(
            PERSON,
            &person_with(
                json!({"active": null, "tags": null, "attrs": null, "address": null, "digest": null}),
            ),
            &[],
            &[],
        );
        check(
            PERSON,
            &person_with(json!({"nickname": "A"})),
            &["/nickname"],
            &["unknown field \"nickname\""],
        );
        check(
            PERSON,
            &json!([1]),
            &[""],
            &["expected an object (record com.example.Person), found an array"],
        );
        check(PERSON, &Value::Null, &[""], &["expected an object"]);
    }

    #[test]
    fn validate_primitives_enums_fixed_maps() {
        check(
            PERSON,
            &person_with(json!({"color": "PURPLE"})),
            &["/color"],
            &["\"PURPLE\" is not a symbol of enum com.example.Color (RED, GREEN, BLUE)"],
        );
        check(
            PERSON,
            &person_with(json!({"color": 1})),
            &["/color"],
            &["expected a string (enum com.example.Color)"],
        );
        check(
            PERSON,
            &person_with(json!({"age": 2_147_483_648_i64})),
            &["/age"],
            &["2147483648 is out of range for int"],
        );
        check(
            PERSON,
            &person_with(json!({"age": -2_147_483_648_i64})),
            &[],
            &[],
        );
        check(
            PERSON,
            &person_with(json!({"id": 9_223_372_036_854_775_808_u64})),
            &["/id"],
            &["out of range for long"],
        );
        check(
            PERSON,
            &person_with(json!({"id": 1.5})),
            &["/id"],
            &["expected an integer (long), found 1.5"],
        );
        check(
            PERSON,
            &person_with(json!({"score": 1e300})),
            &["/score"],
            &["out of range for float"],
        );
        check(PERSON, &person_with(json!({"score": 3})), &[], &[]);
        check(
            PERSON,
            &person_with(json!({"active": "yes"})),
            &["/active"],
            &["expected a boolean"],
        );
        check(
            PERSON,
            &person_with(json!({"digest": "abc"})),
            &["/digest"],
            &["needs exactly 4 bytes, found 3"],
        );
        check(
            PERSON,
            &person_with(json!({"digest": "ab\u{65e5}d"})),
            &["/digest"],
            &["code points U+0000 to U+00FF"],
        );
        check(
            PERSON,
            &person_with(json!({"attrs": {"a/b": "x", "ok": 2}})),
            &["/attrs/a~1b"],
            &["expected an integer (long)"],
        );
        check(
            PERSON,
            &person_with(json!({"attrs": []})),
            &["/attrs"],
            &["expected an object (a map)"],
        );
        check(r#""bytes""#, &json!("\u{00}\u{ff}"), &[], &[]);
        check(r#""bytes""#, &json!("\u{100}"), &[""], &["code points"]);
        check(r#""null""#, &json!(0), &[""], &["expected null"]);
    }

    #[test]
    fn validate_unions() {
        let optional = r#"["null","string"]"#;
        check(optional, &Value::Null, &[], &[]);
        check(optional, &json!("bob"), &[], &[]);
        check(optional, &json!({"string": "bob"}), &[], &[]);
        check(
            optional,
            &json!({"string": 5}),
            &["/string"],
            &["expected a string"],
        );
        check(
            optional,
            &json!(5),
            &[""],
            &["expected one of the union's types (null, string), found a number"],
        );
        check(optional, &json!({"int": 5}), &[""], &["found an object"]);
        check(
            r#""string""#,
            &Value::Null,
            &[""],
            &["expected a string, found null"],
        );
        check(
            r#"["int","string"]"#,
            &Value::Null,
            &[""],
            &["no null branch"],
        );
        // Bare values must match exactly one branch.
        let numbers = r#"["int","long","string"]"#;
        check(
            numbers,
            &json!(5),
            &[""],
            &["ambiguous union value: it matches int and long; tag it, as in {\"int\": ...}"],
        );
        check(numbers, &json!({"long": 5}), &[], &[]);
        check(numbers, &json!(5_000_000_000_i64), &[], &[]);
        check(
            numbers,
            &json!(1.5),
            &[""],
            &["matches none of the union's types"],
        );
        // Named branches: tagged by full or short name, or bare.
        let address = r#"["null",{"type":"record","name":"Address","namespace":"com.example","fields":[{"name":"zip","type":"string"}]}]"#;
        check(
            address,
            &json!({"com.example.Address": {"zip": "1"}}),
            &[],
            &[],
        );
        check(address, &json!({"Address": {"zip": "1"}}), &[], &[]);
        check(address, &json!({"zip": "1"}), &[], &[]);
        check(
            address,
            &json!({"zip": 1}),
            &["/zip"],
            &["expected a string"],
        );
        check(
            address,
            &json!({"Address": {"zip": 1}}),
            &["/Address/zip"],
            &["expected a string"],
        );
        check(
            PERSON,
            &person_with(json!({"address": {"com.example.Address": {"street": "s", "zip": "z"}}})),
            &[],
            &[],
        );
        // Two record branches: decided by which one the value matches.
        let two = r#"[{"type":"record","name":"A","fields":[{"name":"a","type":"int"}]},{"type":"record","name":"B","fields":[{"name":"b","type":"int"}]}]"#;
        check(two, &json!({"b": 1, "x": 2}), &[""], &["matches none"]);
        check(two, &json!({"a": 1}), &[], &[]);
        check(two, &json!({"b": 1}), &[], &[]);
    }

    #[test]
    fn listed_symbols_are_bounded() {
        let symbols: Vec<String> = (0..SYMBOLS_LISTED_MAX + 5)
            .map(|i| format!(r#""S{i}""#))
            .collect();
        let schema = format!(
            r#"{{"type":"enum","name":"E","symbols":[{}]}}"#,
            symbols.join(",")
        );
        check(&schema, &json!("S3"), &[], &[]);
        check(
            &schema,
            &json!("X"),
            &[""],
            &["(S0, S1, S2, S3, S4, S5, S6, S7, S8, S9, ... (15 in all))"],
        );
    }

    #[test]
    fn violations_are_bounded() {
        let data = Value::Array((0..VIOLATIONS_MAX * 3).map(|i| json!(i)).collect());
        let validator = Validator::new(
            &AvroSchema::parse(r#"{"type":"array","items":"string"}"#).expect("parses"),
        );
        let violations = validator.validate(&data);
        assert_eq!(violations.len(), VIOLATIONS_MAX);
        assert_eq!(
            violations[VIOLATIONS_MAX - 1].pointer,
            format!("/{}", VIOLATIONS_MAX - 1)
        );
    }

    fn nest(levels: usize, leaf: Value) -> Value {
        (0..levels).fold(leaf, |inner, _| json!({"next": inner}))
    }

    #[test]
    fn recursive_unions_stay_fast() {
        // Both record branches hold `{"next": ...}` and are tried at every level (B fails only
        // after its `next`, at its missing `b`): 2^100 steps without the trial memo.
        let schema = AvroSchema::parse(
            r#"{"type":"record","name":"A","fields":[{"name":"next","type":["null","A",
               {"type":"record","name":"B","fields":[{"name":"next","type":["null","A","B"]},{"name":"b","type":"int"}]}]}]}"#,
        )
        .expect("parses");
        let validator = Validator::new(&schema);
        assert!(validator.validate(&nest(100, Value::Null)).is_empty());
        let bad = validator.validate(&nest(100, json!(5)));
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert_eq!(bad[0].pointer, "/next", "{bad:?}");
    }

    #[test]
    fn depth_is_bounded() {
        let schema = AvroSchema::parse(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        )
        .expect("parses");
        let validator = Validator::new(&schema);
        assert!(
            validator
                .validate(&nest(DATA_DEPTH_MAX, Value::Null))
                .is_empty()
        );
        let deep = validator.validate(&nest(DATA_DEPTH_MAX + 10, Value::Null));
        assert_eq!(deep.len(), 1, "{deep:?}");
        assert!(deep[0].message.contains("nested deeper than"), "{deep:?}");
        assert_eq!(deep[0].pointer.matches("/next").count(), DATA_DEPTH_MAX + 1);
    }

    #[test]
    fn shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Validator>();
        send_sync::<AvroSchema>();
    }
}
