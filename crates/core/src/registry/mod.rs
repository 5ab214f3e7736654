//! The schema registry: versioned schemas per subject, Confluent's compatibility modes, and
//! validation of event data at ingest. Its REST face (Confluent's API under `/registry`) is in
//! `crates/api`; the schema types are [`json`] (JSON Schema) and [`avro`].
//!
//! State lives in the server's durable state store (`state.redb`, table `registry`), every change
//! one fsynced transaction, and is loaded into memory at open. Keys:
//! `s/<id:020>` → a schema (`{"type","schema"}`), `v/<subject>\0<version:010>` → a version
//! (`{"id","deleted"}`), `c/<subject>` → a subject's compatibility level (`c/` alone: the global
//! one), `p/<topic>` → a topic's schema policy.
//!
//! Ids are global and reused: the same schema (same type and canonical text) registered under two
//! subjects has one id, as in Confluent's registry. Versions count up per subject, and a
//! soft-deleted version keeps its number.
//!
//! Binding to topics: events of type `T` on topic `X` are validated against subject `X-T` (its
//! latest live version, or the version their `dataschema` names). A topic can require a schema for
//! every type (strict). Compiled validators are cached per schema id.
//!
//! Limits: [`SCHEMA_BYTES_MAX`] per schema, [`SUBJECT_BYTES_MAX`] per subject name,
//! [`VERSIONS_PER_SUBJECT_MAX`] versions per subject.

pub mod avro;
pub mod json;

use crate::store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// Largest schema text accepted.
pub const SCHEMA_BYTES_MAX: usize = 1 << 20;
/// Longest subject name.
pub const SUBJECT_BYTES_MAX: usize = 512;
/// Most versions one subject keeps.
pub const VERSIONS_PER_SUBJECT_MAX: u32 = 10_000;
/// The global compatibility level before anyone sets one (Confluent's default).
pub const COMPATIBILITY_DEFAULT: Compatibility = Compatibility::Backward;

/// One reason a value does not match a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the data, as a JSON pointer (`/items/0/price`; empty for the root).
    pub pointer: String,
    /// What is wrong, for people.
    pub message: String,
}

/// A schema that cannot be used: not parseable, or not a valid schema of its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(pub String);

/// A schema's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaType {
    /// Apache Avro (Confluent's default).
    Avro,
    /// JSON Schema.
    Json,
}

impl SchemaType {
    /// Confluent's name: `AVRO`, `JSON`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::Avro => "AVRO",
            SchemaType::Json => "JSON",
        }
    }

    /// From Confluent's `schemaType` (absent means Avro).
    ///
    /// # Errors
    /// [`RegistryError::InvalidSchema`] for an unknown or unsupported type (Protobuf, for now).
    pub fn parse(name: Option<&str>) -> Result<SchemaType, RegistryError> {
        match name.map(str::to_ascii_uppercase).as_deref() {
            None | Some("AVRO") => Ok(SchemaType::Avro),
            Some("JSON") => Ok(SchemaType::Json),
            Some(other) => Err(RegistryError::InvalidSchema(format!(
                "schemaType {other} is not supported (AVRO and JSON are)"
            ))),
        }
    }
}

/// Confluent's compatibility levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    /// No checks.
    None,
    /// The new schema reads data written with the latest.
    Backward,
    /// ... with every earlier version.
    BackwardTransitive,
    /// The latest schema reads data written with the new one.
    Forward,
    /// Every earlier version reads data written with the new one.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl Compatibility {
    /// Every level.
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    /// Confluent's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// From Confluent's name.
    ///
    /// # Errors
    /// [`RegistryError::InvalidCompatibility`].
    pub fn parse(name: &str) -> Result<Compatibility, RegistryError> {
        Compatibility::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| RegistryError::InvalidCompatibility(name.to_string()))
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }

    fn backward(self) -> bool {
        !matches!(
            self,
            Compatibility::None | Compatibility::Forward | Compatibility::ForwardTransitive
        )
    }

    fn forward(self) -> bool {
        !matches!(
            self,
            Compatibility::None | Compatibility::Backward | Compatibility::BackwardTransitive
        )
    }
}

/// Registry failures, with Confluent's error codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {version} not found.")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// 40403.
    #[error("Schema not found")]
    SchemaNotFound,
    /// 40404.
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    /// 40405.
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    /// 40407.
    #[error(
        "Subject '{subject}' Version {version} was not deleted first before being permanently deleted"
    )]
    VersionNotSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40408.
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectCompatibilityNotConfigured(String),
    /// 409: the schema breaks the subject's compatibility level.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\", details: {}", .messages.join("; "))]
    Incompatible {
        /// The subject.
        subject: String,
        /// What breaks.
        messages: Vec<String>,
    },
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error(
        "Invalid compatibility level. Valid values are none, backward, forward, full, backward_transitive, forward_transitive, and full_transitive (got {0:?})"
    )]
    InvalidCompatibility(String),
    /// 42204 (Gearbox's use: a subject name over the limit or empty).
    #[error("Invalid subject: {0}")]
    InvalidSubject(String),
    /// 50001.
    #[error("Error in the backend data store: {0}")]
    Store(String),
}

impl RegistryError {
    /// Confluent's `error_code`.
    #[must_use]
    pub fn code(&self) -> u32 {
        match self {
            RegistryError::SubjectNotFound(_) => 40401,
            RegistryError::VersionNotFound { .. } => 40402,
            RegistryError::SchemaNotFound => 40403,
            RegistryError::SubjectSoftDeleted(_) => 40404,
            RegistryError::SubjectNotSoftDeleted(_) => 40405,
            RegistryError::VersionNotSoftDeleted { .. } => 40407,
            RegistryError::SubjectCompatibilityNotConfigured(_) => 40408,
            RegistryError::Incompatible { .. } => 409,
            RegistryError::InvalidSchema(_) => 42201,
            RegistryError::InvalidVersion(_) => 42202,
            RegistryError::InvalidCompatibility(_) => 42203,
            RegistryError::InvalidSubject(_) => 42204,
            RegistryError::Store(_) => 50001,
        }
    }

    /// The HTTP status: the first three digits of the code.
    #[must_use]
    pub fn status(&self) -> u16 {
        let code = self.code();
        if code < 1000 {
            code as u16
        } else {
            (code / 100) as u16
        }
    }
}

impl From<crate::store::StoreError> for RegistryError {
    fn from(e: crate::store::StoreError) -> Self {
        RegistryError::Store(e.to_string())
    }
}

/// A version reference: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionRef {
    /// The highest live version.
    Latest,
    /// A number.
    Number(u32),
}

impl VersionRef {
    /// From a path segment (`latest`, `-1` or a positive number).
    ///
    /// # Errors
    /// [`RegistryError::InvalidVersion`].
    pub fn parse(text: &str) -> Result<VersionRef, RegistryError> {
        if text == "latest" || text == "-1" {
            return Ok(VersionRef::Latest);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
            _ => Err(RegistryError::InvalidVersion(text.to_string())),
        }
    }
}

#[derive(Debug, Clone)]
enum Parsed {
    Avro(avro::AvroSchema),
    Json(json::JsonSchema),
}

impl Parsed {
    fn parse(ty: SchemaType, text: &str) -> Result<Parsed, RegistryError> {
        if text.len() > SCHEMA_BYTES_MAX {
            return Err(RegistryError::InvalidSchema(format!(
                "the schema is {} bytes, over the limit of {SCHEMA_BYTES_MAX}",
                text.len()
            )));
        }
        let parsed = match ty {
            SchemaType::Avro => avro::AvroSchema::parse(text).map(Parsed::Avro),
            SchemaType::Json => json::JsonSchema::parse(text).map(Parsed::Json),
        };
        parsed.map_err(|e| RegistryError::InvalidSchema(e.0))
    }

    fn canonical(&self) -> String {
        match self {
            Parsed::Avro(s) => s.canonical(),
            Parsed::Json(s) => s.canonical(),
        }
    }

    /// What stops `reader` reading data written with `writer`.
    fn incompatibilities(reader: &Parsed, writer: &Parsed) -> Vec<String> {
        match (reader, writer) {
            (Parsed::Avro(r), Parsed::Avro(w)) => avro::incompatibilities(r, w),
            (Parsed::Json(r), Parsed::Json(w)) => json::incompatibilities(r, w),
            _ => vec!["the schema type differs from the earlier version's".into()],
        }
    }
}

/// A registered schema.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// Its global id.
    pub id: u64,
    /// Its type.
    pub ty: SchemaType,
    /// The text as registered.
    pub text: String,
    canonical: String,
    parsed: Parsed,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The version number.
    pub version: u32,
    /// The schema id.
    pub id: u64,
    /// Soft-deleted.
    pub deleted: bool,
}

#[derive(Debug, Default)]
struct State {
    schemas: BTreeMap<u64, Arc<StoredSchema>>,
    subjects: BTreeMap<String, Vec<Version>>,
    global: Option<Compatibility>,
    subject_levels: HashMap<String, Compatibility>,
    strict_topics: BTreeSet<String>,
}

impl State {
    fn live(&self, subject: &str) -> Vec<Version> {
        self.subjects
            .get(subject)
            .map(|v| v.iter().copied().filter(|v| !v.deleted).collect())
            .unwrap_or_default()
    }

    fn level(&self, subject: &str) -> Compatibility {
        self.subject_levels
            .get(subject)
            .copied()
            .or(self.global)
            .unwrap_or(COMPATIBILITY_DEFAULT)
    }

    fn find_version(
        &self,
        subject: &str,
        version: VersionRef,
        deleted: bool,
    ) -> Result<Version, RegistryError> {
        let all = self
            .subjects
            .get(subject)
            .filter(|v| deleted || v.iter().any(|x| !x.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.into()))?;
        let found = match version {
            VersionRef::Latest => all.iter().rev().find(|v| deleted || !v.deleted),
            VersionRef::Number(n) => all
                .iter()
                .find(|v| v.version == n && (deleted || !v.deleted)),
        };
        found
            .copied()
            .ok_or_else(|| RegistryError::VersionNotFound {
                subject: subject.into(),
                version: match version {
                    VersionRef::Latest => "latest".into(),
                    VersionRef::Number(n) => n.to_string(),
                },
            })
    }
}

/// What ingest validation found for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No schema applies (and the topic is not strict).
    Unchecked,
    /// Valid against this schema.
    Valid {
        /// The subject.
        subject: String,
        /// The schema id.
        id: u64,
        /// The version.
        version: u32,
    },
    /// Invalid: every violation.
    Invalid {
        /// The subject.
        subject: String,
        /// The version checked against.
        version: u32,
        /// What is wrong, each with its JSON pointer.
        violations: Vec<Violation>,
    },
    /// The topic is strict and no schema is registered for this event type.
    Unregistered {
        /// The subject that would apply.
        subject: String,
    },
}

enum Compiled {
    Avro(avro::Validator),
    Json(json::Validator),
}

impl Compiled {
    fn validate(&self, data: &Value) -> Vec<Violation> {
        match self {
            Compiled::Avro(v) => v.validate(data),
            Compiled::Json(v) => v.validate(data),
        }
    }
}

/// The registry.
pub struct Registry {
    store: Arc<Store>,
    state: RwLock<State>,
    validators: Mutex<HashMap<u64, Arc<Compiled>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.read();
        f.debug_struct("Registry")
            .field("schemas", &s.schemas.len())
            .field("subjects", &s.subjects.len())
            .finish_non_exhaustive()
    }
}

fn schema_key(id: u64) -> String {
    format!("s/{id:020}")
}

fn version_key(subject: &str, version: u32) -> String {
    format!("v/{subject}\0{version:010}")
}

fn level_key(subject: Option<&str>) -> String {
    format!("c/{}", subject.unwrap_or(""))
}

fn policy_key(topic: &str) -> String {
    format!("p/{topic}")
}

fn check_subject(subject: &str) -> Result<(), RegistryError> {
    if subject.is_empty() || subject.len() > SUBJECT_BYTES_MAX || subject.contains('\0') {
        return Err(RegistryError::InvalidSubject(format!(
            "a subject is 1 to {SUBJECT_BYTES_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

impl Registry {
    /// Loads the registry from the state store.
    ///
    /// # Errors
    /// [`RegistryError::Store`] if the store cannot be read or holds a row that does not decode.
    pub fn open(store: Arc<Store>) -> Result<Registry, RegistryError> {
        let mut state = State::default();
        let bad = |k: &str| RegistryError::Store(format!("registry row {k:?} does not decode"));
        for (key, value) in store.registry_rows()? {
            let v: Value = serde_json::from_slice(&value).map_err(|_| bad(&key))?;
            if let Some(id) = key.strip_prefix("s/") {
                let id: u64 = id.parse().map_err(|_| bad(&key))?;
                let ty = SchemaType::parse(v["type"].as_str()).map_err(|_| bad(&key))?;
                let text = v["schema"].as_str().ok_or_else(|| bad(&key))?.to_string();
                let parsed = Parsed::parse(ty, &text).map_err(|_| bad(&key))?;
                state.schemas.insert(
                    id,
                    Arc::new(StoredSchema {
                        id,
                        ty,
                        canonical: parsed.canonical(),
                        text,
                        parsed,
                    }),
                );
            } else if let Some(rest) = key.strip_prefix("v/") {
                let (subject, version) = rest.split_once('\0').ok_or_else(|| bad(&key))?;
                let version: u32 = version.parse().map_err(|_| bad(&key))?;
                let id = v["id"].as_u64().ok_or_else(|| bad(&key))?;
                let deleted = v["deleted"].as_bool().unwrap_or(false);
                state
                    .subjects
                    .entry(subject.to_string())
                    .or_default()
                    .push(Version {
                        version,
                        id,
                        deleted,
                    });
            } else if let Some(subject) = key.strip_prefix("c/") {
                let level =
                    Compatibility::parse(v.as_str().unwrap_or_default()).map_err(|_| bad(&key))?;
                if subject.is_empty() {
                    state.global = Some(level);
                } else {
                    state.subject_levels.insert(subject.to_string(), level);
                }
            } else if let Some(topic) = key.strip_prefix("p/")
                && v.as_str() == Some("strict")
            {
                state.strict_topics.insert(topic.to_string());
            }
        }
        for versions in state.subjects.values_mut() {
            versions.sort_by_key(|v| v.version);
        }
        Ok(Registry {
            store,
            state: RwLock::new(state),
            validators: Mutex::new(HashMap::new()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Subjects with a live version (with `deleted`, also those whose versions are all
    /// soft-deleted).
    #[must_use]
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.read()
            .subjects
            .iter()
            .filter(|(_, v)| deleted || v.iter().any(|x| !x.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A subject's version numbers.
    ///
    /// # Errors
    /// [`RegistryError::SubjectNotFound`].
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let s = self.read();
        let versions: Vec<u32> = s
            .subjects
            .get(subject)
            .map(|v| {
                v.iter()
                    .filter(|x| deleted || !x.deleted)
                    .map(|x| x.version)
                    .collect()
            })
            .unwrap_or_default();
        if versions.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.into()));
        }
        Ok(versions)
    }

    /// One version with its schema.
    ///
    /// # Errors
    /// [`RegistryError::SubjectNotFound`], [`RegistryError::VersionNotFound`].
    pub fn version(
        &self,
        subject: &str,
        version: VersionRef,
        deleted: bool,
    ) -> Result<(Version, Arc<StoredSchema>), RegistryError> {
        let s = self.read();
        let v = s.find_version(subject, version, deleted)?;
        let schema = s
            .schemas
            .get(&v.id)
            .cloned()
            .ok_or(RegistryError::SchemaNotFound)?;
        Ok((v, schema))
    }

    /// A schema by id.
    ///
    /// # Errors
    /// [`RegistryError::SchemaNotFound`].
    pub fn schema(&self, id: u64) -> Result<Arc<StoredSchema>, RegistryError> {
        self.read()
            .schemas
            .get(&id)
            .cloned()
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// The subjects and versions that use schema `id`.
    #[must_use]
    pub fn usages(&self, id: u64) -> Vec<(String, u32)> {
        let s = self.read();
        let mut out = Vec::new();
        for (subject, versions) in &s.subjects {
            for v in versions.iter().filter(|v| v.id == id && !v.deleted) {
                out.push((subject.clone(), v.version));
            }
        }
        out
    }

    /// Registers a schema under a subject: returns the id (the existing one when the subject
    /// already has this schema). Checks the subject's compatibility level first.
    ///
    /// # Errors
    /// [`RegistryError::InvalidSchema`], [`RegistryError::Incompatible`], or a store error.
    pub fn register(
        &self,
        subject: &str,
        ty: SchemaType,
        text: &str,
    ) -> Result<(u64, u32), RegistryError> {
        check_subject(subject)?;
        let parsed = Parsed::parse(ty, text)?;
        let canonical = parsed.canonical();
        let mut s = self.write();
        let live = s.live(subject);
        for v in live.iter().rev() {
            if let Some(existing) = s.schemas.get(&v.id)
                && existing.ty == ty
                && existing.canonical == canonical
            {
                return Ok((existing.id, v.version));
            }
        }
        let messages = Self::compatibility(&s, subject, &live, &parsed, s.level(subject));
        if !messages.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.into(),
                messages,
            });
        }
        let all = s.subjects.get(subject).cloned().unwrap_or_default();
        let version = all.iter().map(|v| v.version).max().unwrap_or(0) + 1;
        if version > VERSIONS_PER_SUBJECT_MAX {
            return Err(RegistryError::InvalidSchema(format!(
                "subject {subject} has {VERSIONS_PER_SUBJECT_MAX} versions, the limit"
            )));
        }
        let reuse = s
            .schemas
            .values()
            .find(|x| x.ty == ty && x.canonical == canonical)
            .map(|x| x.id);
        let id = reuse.unwrap_or_else(|| s.schemas.keys().next_back().copied().unwrap_or(0) + 1);
        let mut rows = vec![(
            version_key(subject, version),
            Some(json!({"id": id, "deleted": false}).to_string().into_bytes()),
        )];
        if reuse.is_none() {
            rows.push((
                schema_key(id),
                Some(
                    json!({"type": ty.as_str(), "schema": text})
                        .to_string()
                        .into_bytes(),
                ),
            ));
        }
        self.store.registry_apply(&rows)?;
        if reuse.is_none() {
            s.schemas.insert(
                id,
                Arc::new(StoredSchema {
                    id,
                    ty,
                    text: text.to_string(),
                    canonical,
                    parsed,
                }),
            );
        }
        s.subjects
            .entry(subject.to_string())
            .or_default()
            .push(Version {
                version,
                id,
                deleted: false,
            });
        Ok((id, version))
    }

    /// What stops `parsed` being registered under `subject` at `level` (empty: nothing).
    fn compatibility(
        s: &State,
        subject: &str,
        live: &[Version],
        parsed: &Parsed,
        level: Compatibility,
    ) -> Vec<String> {
        let _ = subject;
        if level == Compatibility::None || live.is_empty() {
            return Vec::new();
        }
        let against: Vec<&Version> = if level.transitive() {
            live.iter().collect()
        } else {
            live.last().into_iter().collect()
        };
        let mut out = Vec::new();
        for v in against {
            let Some(old) = s.schemas.get(&v.id) else {
                continue;
            };
            if level.backward() {
                for m in Parsed::incompatibilities(parsed, &old.parsed) {
                    out.push(format!("backward (new reads version {}): {m}", v.version));
                }
            }
            if level.forward() {
                for m in Parsed::incompatibilities(&old.parsed, parsed) {
                    out.push(format!("forward (version {} reads new): {m}", v.version));
                }
            }
        }
        out
    }

    /// Tests a schema against one version of a subject at the subject's level, without
    /// registering it. Returns the incompatibilities (empty: compatible).
    ///
    /// # Errors
    /// [`RegistryError::InvalidSchema`], [`RegistryError::SubjectNotFound`],
    /// [`RegistryError::VersionNotFound`].
    pub fn test(
        &self,
        subject: &str,
        version: Option<VersionRef>,
        ty: SchemaType,
        text: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let parsed = Parsed::parse(ty, text)?;
        let s = self.read();
        let level = s.level(subject);
        let against = match version {
            Some(v) => vec![s.find_version(subject, v, false)?],
            None => s.live(subject),
        };
        let level = match (version, level) {
            // One named version: its direction, without transitivity.
            (Some(_), Compatibility::BackwardTransitive) => Compatibility::Backward,
            (Some(_), Compatibility::ForwardTransitive) => Compatibility::Forward,
            (Some(_), Compatibility::FullTransitive) => Compatibility::Full,
            (_, l) => l,
        };
        Ok(Self::compatibility(&s, subject, &against, &parsed, level))
    }

    /// Finds the version of `subject` whose schema is `text`.
    ///
    /// # Errors
    /// [`RegistryError::SubjectNotFound`], [`RegistryError::SchemaNotFound`],
    /// [`RegistryError::InvalidSchema`].
    pub fn lookup(
        &self,
        subject: &str,
        ty: SchemaType,
        text: &str,
        deleted: bool,
    ) -> Result<(Version, Arc<StoredSchema>), RegistryError> {
        let canonical = Parsed::parse(ty, text)?.canonical();
        let s = self.read();
        let versions = s
            .subjects
            .get(subject)
            .filter(|v| deleted || v.iter().any(|x| !x.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.into()))?;
        versions
            .iter()
            .rev()
            .filter(|v| deleted || !v.deleted)
            .find_map(|v| {
                let schema = s.schemas.get(&v.id)?;
                (schema.ty == ty && schema.canonical == canonical).then(|| (*v, schema.clone()))
            })
            .ok_or(RegistryError::SchemaNotFound)
    }

    /// Deletes a subject: soft (versions kept, hidden) or, after a soft delete, permanent.
    /// Returns the versions deleted.
    ///
    /// # Errors
    /// [`RegistryError::SubjectNotFound`], [`RegistryError::SubjectSoftDeleted`] (soft twice),
    /// [`RegistryError::SubjectNotSoftDeleted`] (permanent first), or a store error.
    pub fn delete_subject(
        &self,
        subject: &str,
        permanent: bool,
    ) -> Result<Vec<u32>, RegistryError> {
        let mut s = self.write();
        let versions = s
            .subjects
            .get(subject)
            .cloned()
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.into()))?;
        let all_deleted = versions.iter().all(|v| v.deleted);
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        if permanent {
            if !all_deleted {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.into()));
            }
            let mut rows: Vec<(String, Option<Vec<u8>>)> = numbers
                .iter()
                .map(|&v| (version_key(subject, v), None))
                .collect();
            rows.push((level_key(Some(subject)), None));
            self.store.registry_apply(&rows)?;
            s.subjects.remove(subject);
            s.subject_levels.remove(subject);
            return Ok(numbers);
        }
        if all_deleted {
            return Err(RegistryError::SubjectSoftDeleted(subject.into()));
        }
        // A soft delete answers the versions it deleted now, as Confluent's does: the live ones.
        let numbers: Vec<u32> = versions
            .iter()
            .filter(|v| !v.deleted)
            .map(|v| v.version)
            .collect();
        let rows: Vec<(String, Option<Vec<u8>>)> = versions
            .iter()
            .map(|v| {
                (
                    version_key(subject, v.version),
                    Some(
                        json!({"id": v.id, "deleted": true})
                            .to_string()
                            .into_bytes(),
                    ),
                )
            })
            .collect();
        self.store.registry_apply(&rows)?;
        if let Some(vs) = s.subjects.get_mut(subject) {
            for v in vs.iter_mut() {
                v.deleted = true;
            }
        }
        Ok(numbers)
    }

    /// Deletes one version: soft, or permanent after a soft delete.
    ///
    /// # Errors
    /// Not found, [`RegistryError::VersionNotSoftDeleted`], or a store error.
    pub fn delete_version(
        &self,
        subject: &str,
        version: VersionRef,
        permanent: bool,
    ) -> Result<u32, RegistryError> {
        let mut s = self.write();
        let v = s.find_version(subject, version, permanent)?;
        if permanent {
            if !v.deleted {
                return Err(RegistryError::VersionNotSoftDeleted {
                    subject: subject.into(),
                    version: v.version,
                });
            }
            self.store
                .registry_apply(&[(version_key(subject, v.version), None)])?;
            if let Some(vs) = s.subjects.get_mut(subject) {
                vs.retain(|x| x.version != v.version);
                if vs.is_empty() {
                    s.subjects.remove(subject);
                }
            }
            return Ok(v.version);
        }
        self.store.registry_apply(&[(
            version_key(subject, v.version),
            Some(
                json!({"id": v.id, "deleted": true})
                    .to_string()
                    .into_bytes(),
            ),
        )])?;
        if let Some(x) = s
            .subjects
            .get_mut(subject)
            .and_then(|vs| vs.iter_mut().find(|x| x.version == v.version))
        {
            x.deleted = true;
        }
        Ok(v.version)
    }

    /// The global level, or a subject's (`default_to_global`: fall back instead of 40408).
    ///
    /// # Errors
    /// [`RegistryError::SubjectCompatibilityNotConfigured`].
    pub fn level(
        &self,
        subject: Option<&str>,
        default_to_global: bool,
    ) -> Result<Compatibility, RegistryError> {
        let s = self.read();
        let global = s.global.unwrap_or(COMPATIBILITY_DEFAULT);
        match subject {
            None => Ok(global),
            Some(subject) => match s.subject_levels.get(subject) {
                Some(l) => Ok(*l),
                None if default_to_global => Ok(global),
                None => Err(RegistryError::SubjectCompatibilityNotConfigured(
                    subject.into(),
                )),
            },
        }
    }

    /// Sets the global level or a subject's.
    ///
    /// # Errors
    /// A store error.
    pub fn set_level(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        if let Some(s) = subject {
            check_subject(s)?;
        }
        let mut s = self.write();
        self.store.registry_apply(&[(
            level_key(subject),
            Some(json!(level.as_str()).to_string().into_bytes()),
        )])?;
        match subject {
            None => s.global = Some(level),
            Some(subject) => {
                s.subject_levels.insert(subject.to_string(), level);
            }
        }
        Ok(())
    }

    /// Removes a subject's own level (it follows the global one again); returns the old one.
    ///
    /// # Errors
    /// [`RegistryError::SubjectCompatibilityNotConfigured`], or a store error.
    pub fn delete_level(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let mut s = self.write();
        let old = s
            .subject_levels
            .get(subject)
            .copied()
            .ok_or_else(|| RegistryError::SubjectCompatibilityNotConfigured(subject.into()))?;
        self.store
            .registry_apply(&[(level_key(Some(subject)), None)])?;
        s.subject_levels.remove(subject);
        Ok(old)
    }

    /// Whether a topic requires a schema for every event type.
    #[must_use]
    pub fn strict(&self, topic: &str) -> bool {
        self.read().strict_topics.contains(topic)
    }

    /// Sets whether a topic requires a schema for every event type.
    ///
    /// # Errors
    /// A store error.
    pub fn set_strict(&self, topic: &str, strict: bool) -> Result<(), RegistryError> {
        let mut s = self.write();
        let row = strict.then(|| json!("strict").to_string().into_bytes());
        self.store.registry_apply(&[(policy_key(topic), row)])?;
        if strict {
            s.strict_topics.insert(topic.to_string());
        } else {
            s.strict_topics.remove(topic);
        }
        Ok(())
    }

    /// Whether any subject or policy could apply to `topic` (the fast path of ingest: without
    /// one, events are not parsed at all).
    #[must_use]
    pub fn applies_to(&self, topic: &str) -> bool {
        let s = self.read();
        if s.strict_topics.contains(topic) {
            return true;
        }
        let prefix = format!("{topic}-");
        s.subjects
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .any(|(_, v)| v.iter().any(|x| !x.deleted))
    }

    /// Validates one event's data against subject `<topic>-<type>`: its latest live version, or
    /// the one `dataschema` names (a URI ending in `/versions/<n>` or `/schemas/ids/<id>`).
    #[must_use]
    pub fn check(
        &self,
        topic: &str,
        event_type: &str,
        dataschema: Option<&str>,
        data: Option<&[u8]>,
    ) -> Verdict {
        let subject = format!("{topic}-{event_type}");
        let (version, schema) = {
            let s = self.read();
            let named = dataschema.and_then(|d| named_version(&s, &subject, d));
            let found = named.or_else(|| s.find_version(&subject, VersionRef::Latest, false).ok());
            let Some(v) = found else {
                return if s.strict_topics.contains(topic) {
                    Verdict::Unregistered { subject }
                } else {
                    Verdict::Unchecked
                };
            };
            let Some(schema) = s.schemas.get(&v.id).cloned() else {
                return Verdict::Unchecked;
            };
            (v, schema)
        };
        let value: Value = match data.map(serde_json::from_slice) {
            Some(Ok(v)) => v,
            None => Value::Null,
            Some(Err(e)) => {
                return Verdict::Invalid {
                    subject,
                    version: version.version,
                    violations: vec![Violation {
                        pointer: String::new(),
                        message: format!("data is not JSON: {e}"),
                    }],
                };
            }
        };
        let validator = self.validator(&schema);
        let violations = match validator {
            Ok(v) => v.validate(&value),
            Err(e) => vec![Violation {
                pointer: String::new(),
                message: format!("schema {} cannot validate: {e}", schema.id),
            }],
        };
        if violations.is_empty() {
            Verdict::Valid {
                subject,
                id: schema.id,
                version: version.version,
            }
        } else {
            Verdict::Invalid {
                subject,
                version: version.version,
                violations,
            }
        }
    }

    fn validator(&self, schema: &StoredSchema) -> Result<Arc<Compiled>, SchemaError> {
        let mut cache = self
            .validators
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = cache.get(&schema.id) {
            return Ok(v.clone());
        }
        let compiled = Arc::new(match &schema.parsed {
            Parsed::Avro(s) => Compiled::Avro(avro::Validator::new(s)),
            Parsed::Json(s) => Compiled::Json(json::Validator::new(s)?),
        });
        cache.insert(schema.id, compiled.clone());
        Ok(compiled)
    }
}

/// The version a `dataschema` URI names, if it names one of `subject`'s.
fn named_version(s: &State, subject: &str, dataschema: &str) -> Option<Version> {
    let live = s.live(subject);
    if let Some((_, n)) = dataschema.rsplit_once("/versions/") {
        let n: u32 = n.parse().ok()?;
        return live.into_iter().find(|v| v.version == n);
    }
    if let Some((_, id)) = dataschema.rsplit_once("/schemas/ids/") {
        let id: u64 = id.parse().ok()?;
        return live.into_iter().rev().find(|v| v.id == id);
    }
    None
}
