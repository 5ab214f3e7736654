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
pub mod framed;
pub mod json;

use crate::store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, RwLock};

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
#[derive(Debug)]
pub struct StoredSchema {
    /// Its global id.
    pub id: u64,
    /// Its type.
    pub ty: SchemaType,
    /// The text as registered.
    pub text: String,
    canonical: String,
    parsed: Parsed,
    compiled: OnceLock<Result<Compiled, SchemaError>>,
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

#[derive(Debug)]
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
                        compiled: OnceLock::new(),
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
        let messages = Self::compatibility(&s, &live, &parsed, s.level(subject));
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
                    compiled: OnceLock::new(),
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
        live: &[Version],
        parsed: &Parsed,
        level: Compatibility,
    ) -> Vec<String> {
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
        Ok(Self::compatibility(&s, &against, &parsed, level))
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

    /// What validates events of `event_type` on `topic`: subject `<topic>-<type>` at its latest
    /// live version, or at the version `dataschema` names (a URI ending in `/versions/<n>` or
    /// `/schemas/ids/<id>`). Resolve once per event type of a request, then
    /// [`Target::check`] each event.
    #[must_use]
    pub fn resolve(&self, topic: &str, event_type: &str, dataschema: Option<&str>) -> Target {
        let subject = format!("{topic}-{event_type}");
        let s = self.read();
        let named = dataschema.and_then(|d| named_version(&s, &subject, d));
        let found = named.or_else(|| s.find_version(&subject, VersionRef::Latest, false).ok());
        match found.and_then(|v| Some((v, s.schemas.get(&v.id)?.clone()))) {
            Some((v, schema)) => Target::Schema {
                subject,
                version: v.version,
                schema,
            },
            None if s.strict_topics.contains(topic) => Target::Unregistered { subject },
            None => Target::Open,
        }
    }

    /// Validates one event's data (see [`Registry::resolve`]).
    #[must_use]
    pub fn check(
        &self,
        topic: &str,
        event_type: &str,
        dataschema: Option<&str>,
        data: Option<&[u8]>,
    ) -> Verdict {
        self.resolve(topic, event_type, dataschema).check(data)
    }
}

/// What an event type's events are validated against.
#[derive(Debug, Clone)]
pub enum Target {
    /// No schema, and the topic is open.
    Open,
    /// No schema, and the topic is strict.
    Unregistered {
        /// The subject that would apply.
        subject: String,
    },
    /// A schema version.
    Schema {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
        /// The schema, with its compiled validator.
        schema: Arc<StoredSchema>,
    },
}

impl Target {
    /// Validates one event's data given as JSON bytes (absent data is `null`).
    #[must_use]
    pub fn check(&self, data: Option<&[u8]>) -> Verdict {
        self.check_with(data, None)
    }

    /// Validates one event's data, already parsed (`None`: absent, which is `null`).
    #[must_use]
    pub fn check_value(&self, data: Option<&Value>) -> Verdict {
        self.check_with(None, Some(data.unwrap_or(&Value::Null)))
    }

    fn check_with(&self, data: Option<&[u8]>, parsed: Option<&Value>) -> Verdict {
        let (subject, version, schema) = match self {
            Target::Open => return Verdict::Unchecked,
            Target::Unregistered { subject } => {
                return Verdict::Unregistered {
                    subject: subject.clone(),
                };
            }
            Target::Schema {
                subject,
                version,
                schema,
            } => (subject, *version, schema),
        };
        let invalid = |violations| Verdict::Invalid {
            subject: subject.clone(),
            version,
            violations,
        };
        let owned: Value;
        let value: &Value = match (parsed, data.map(serde_json::from_slice::<Value>)) {
            (Some(v), _) => v,
            (None, None) => &Value::Null,
            (None, Some(Ok(v))) => {
                owned = v;
                &owned
            }
            (None, Some(Err(e))) => {
                return invalid(vec![Violation {
                    pointer: String::new(),
                    message: format!("data is not JSON: {e}"),
                }]);
            }
        };
        let violations = match schema.validator() {
            // The fast path: most events are valid, and `is_valid` stops at the first problem
            // without building messages.
            Ok(Compiled::Json(v)) if v.is_valid(value) => Vec::new(),
            Ok(v) => v.validate(value),
            Err(e) => vec![Violation {
                pointer: String::new(),
                message: format!("schema {} cannot validate: {e}", schema.id),
            }],
        };
        if violations.is_empty() {
            Verdict::Valid {
                subject: subject.clone(),
                id: schema.id,
                version,
            }
        } else {
            invalid(violations)
        }
    }
}

impl StoredSchema {
    /// The compiled validator, built on first use and kept with the schema.
    fn validator(&self) -> Result<&Compiled, SchemaError> {
        self.compiled
            .get_or_init(|| match &self.parsed {
                Parsed::Avro(s) => Ok(Compiled::Avro(avro::Validator::new(s))),
                Parsed::Json(s) => json::Validator::new(s).map(Compiled::Json),
            })
            .as_ref()
            .map_err(Clone::clone)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &std::path::Path) -> Registry {
        let store = Arc::new(Store::open(&dir.join("state.redb")).unwrap());
        Registry::open(store).unwrap()
    }

    /// A record with the given fields (each `(name, default)`; a default makes it optional for
    /// readers).
    fn record(fields: &[(&str, Option<i64>)]) -> String {
        let fields: Vec<Value> = fields
            .iter()
            .map(|(name, default)| match default {
                Some(d) => json!({"name": name, "type": "long", "default": d}),
                None => json!({"name": name, "type": "long"}),
            })
            .collect();
        json!({"type": "record", "name": "R", "fields": fields}).to_string()
    }

    #[test]
    fn each_level_checks_the_right_versions_in_the_right_direction() {
        // v1 {a}; v2 {a, b=0}; v3 {b=0}: v3 drops `a` (no default).
        //   v3 reads v2 data: yes (a ignored). v3 reads v1 data: yes (b defaulted).
        //   v2 reads v3 data: no (a missing, no default).
        // v4 {a, c}: reads v3 data? no (a missing); v3 reads v4 data? yes.
        let v1 = record(&[("a", None)]);
        let v2 = record(&[("a", None), ("b", Some(0))]);
        let v3 = record(&[("b", Some(0))]);
        let v4 = record(&[("a", None), ("c", None)]);
        // (level, schemas to register in order, which registrations succeed)
        let cases: [(Compatibility, [&str; 4], [bool; 4]); 7] = [
            (
                Compatibility::None,
                [&v1, &v2, &v3, &v4],
                [true, true, true, true],
            ),
            (
                Compatibility::Backward,
                [&v1, &v2, &v3, &v4],
                [true, true, true, false],
            ),
            (
                Compatibility::Forward,
                [&v1, &v2, &v3, &v4],
                [true, true, false, true],
            ),
            (
                Compatibility::Full,
                [&v1, &v2, &v3, &v4],
                [true, true, false, false],
            ),
            (
                Compatibility::BackwardTransitive,
                [&v1, &v2, &v3, &v4],
                [true, true, true, false],
            ),
            (
                Compatibility::ForwardTransitive,
                [&v1, &v2, &v1, &v2],
                [true, true, true, true],
            ),
            (
                Compatibility::FullTransitive,
                [&v1, &v2, &v4, &v3],
                [true, true, false, false],
            ),
        ];
        for (level, schemas, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let r = registry(dir.path());
            r.set_level(Some("s"), level).unwrap();
            for (i, (schema, ok)) in schemas.iter().zip(want).enumerate() {
                let got = r.register("s", SchemaType::Avro, schema);
                assert_eq!(got.is_ok(), ok, "{level:?} registration {i}: {got:?}");
                if !ok {
                    assert!(matches!(got, Err(RegistryError::Incompatible { .. })));
                }
            }
        }
    }

    #[test]
    fn transitive_levels_check_every_earlier_version() {
        // v2 adds b with a default; v3 drops the default. Against v2 alone (BACKWARD) v3 can
        // read v2's data (b is there); against v1 too (BACKWARD_TRANSITIVE) it cannot.
        let v1 = record(&[("a", None)]);
        let v2 = record(&[("a", None), ("b", Some(0))]);
        let v3 = record(&[("a", None), ("b", None)]);
        for (level, ok) in [
            (Compatibility::Backward, true),
            (Compatibility::BackwardTransitive, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let r = registry(dir.path());
            r.set_level(None, level).unwrap();
            r.register("s", SchemaType::Avro, &v1).unwrap();
            r.register("s", SchemaType::Avro, &v2).unwrap();
            assert_eq!(
                r.register("s", SchemaType::Avro, &v3).is_ok(),
                ok,
                "{level:?}"
            );
        }
    }

    #[test]
    fn ids_are_global_reused_for_identical_schemas_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = record(&[("a", None)]);
        let spaced = format!(" {v1} \n");
        {
            let r = registry(dir.path());
            assert_eq!(r.register("s", SchemaType::Avro, &v1).unwrap(), (1, 1));
            // The same schema (up to whitespace) under the subject: the same id and version.
            assert_eq!(r.register("s", SchemaType::Avro, &spaced).unwrap(), (1, 1));
            // Under another subject: the same id, that subject's version 1.
            assert_eq!(r.register("t", SchemaType::Avro, &v1).unwrap(), (1, 1));
            let v2 = record(&[("a", None), ("b", Some(1))]);
            assert_eq!(r.register("s", SchemaType::Avro, &v2).unwrap(), (2, 2));
            r.set_strict("orders", true).unwrap();
            r.set_level(Some("t"), Compatibility::Full).unwrap();
            assert_eq!(r.delete_version("s", VersionRef::Number(2), false), Ok(2));
        }
        let r = registry(dir.path());
        assert_eq!(r.versions("s", false).unwrap(), vec![1]);
        assert_eq!(r.versions("s", true).unwrap(), vec![1, 2]);
        assert_eq!(r.schema(2).unwrap().id, 2);
        assert!(r.strict("orders"));
        assert_eq!(r.level(Some("t"), false), Ok(Compatibility::Full));
        assert_eq!(r.usages(1), vec![("s".into(), 1), ("t".into(), 1)]);
        // A version registered after a soft delete takes the next number.
        let v3 = record(&[("a", None), ("c", Some(1))]);
        assert_eq!(r.register("s", SchemaType::Avro, &v3).unwrap().1, 3);
    }

    #[test]
    fn deletes_follow_confluents_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        r.register("s", SchemaType::Avro, &record(&[("a", None)]))
            .unwrap();
        assert_eq!(
            r.delete_subject("s", true),
            Err(RegistryError::SubjectNotSoftDeleted("s".into()))
        );
        assert_eq!(r.delete_subject("s", false), Ok(vec![1]));
        assert_eq!(
            r.delete_subject("s", false),
            Err(RegistryError::SubjectSoftDeleted("s".into()))
        );
        assert_eq!(
            r.versions("s", false),
            Err(RegistryError::SubjectNotFound("s".into()))
        );
        assert_eq!(r.delete_subject("s", true), Ok(vec![1]));
        assert!(r.subjects(true).is_empty());
        let codes: Vec<(u32, u16)> = [
            RegistryError::SubjectNotFound("x".into()),
            RegistryError::SchemaNotFound,
            RegistryError::Incompatible {
                subject: "x".into(),
                messages: vec![],
            },
            RegistryError::InvalidSchema("x".into()),
        ]
        .iter()
        .map(|e| (e.code(), e.status()))
        .collect();
        assert_eq!(
            codes,
            vec![(40401, 404), (40403, 404), (409, 409), (42201, 422)]
        );
    }

    #[test]
    fn ingest_checks_against_the_latest_or_the_named_version() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let v1 = json!({"type": "object", "properties": {"n": {"type": "integer"}}}).to_string();
        let v2 = json!({"type": "object", "properties": {"n": {"type": "number"}}}).to_string();
        r.register("orders-o", SchemaType::Json, &v1).unwrap();
        r.register("orders-o", SchemaType::Json, &v2).unwrap();
        let half = br#"{"n": 1.5}"#;
        assert!(matches!(
            r.check("orders", "o", None, Some(half)),
            Verdict::Valid { version: 2, .. }
        ));
        match r.check(
            "orders",
            "o",
            Some("/registry/subjects/orders-o/versions/1"),
            Some(half),
        ) {
            Verdict::Invalid {
                version: 1,
                violations,
                ..
            } => assert_eq!(violations[0].pointer, "/n"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.check("orders", "o", None, Some(b"not json")),
            Verdict::Invalid { .. }
        ));
        assert_eq!(r.check("orders", "other", None, None), Verdict::Unchecked);
        r.set_strict("orders", true).unwrap();
        assert_eq!(
            r.check("orders", "other", None, None),
            Verdict::Unregistered {
                subject: "orders-other".into()
            }
        );
        assert!(r.applies_to("orders"));
        assert!(!r.applies_to("payments"));
    }
}
