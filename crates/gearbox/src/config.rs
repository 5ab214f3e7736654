//! `gearbox.yaml`: the topics and pipelines the server sets up at start, and the tests that
//! `gearbox test` runs against the pipelines' transforms.
//!
//! ```yaml
//! topics:
//!   - name: github-events
//!     partitions: 3
//!     retention: { ms: 604800000 }
//! pipelines:
//!   - name: github
//!     source:
//!       webhook: { path: /hooks/github, scheme: github, secrets: ["${env:GITHUB_SECRET}"], source: "https://github.com" }
//!     transforms: ['.subject = .data.repository.full_name']
//!     to: github-events
//!     freshness_ms: 3600000
//!     tests:
//!       - name: keeps pushes
//!         input: { specversion: "1.0", id: "d1", source: "https://github.com", type: "github.push", data: { repository: { full_name: "a/b" } } }
//!         expect: [ { subject: "a/b" } ]
//! ```
//!
//! Loading is two-phase so that `gearbox validate` reports every error at once: the file is
//! parsed into a tree, then each section is checked on its own, each error carrying its path in
//! the file (`pipelines[1].source.webhook.secrets[0]`). Secrets are references and are resolved
//! only when a pipeline starts, never while validating or testing.

use anyhow::Context as _;
use gearbox_connect::breaker::BreakerConfig;
use gearbox_connect::ratelimit::RateLimitConfig;
use gearbox_connect::retry::RetryConfig;
use gearbox_connect::runtime::{
    BATCH_RECORDS_DEFAULT, BATCH_RECORDS_MAX, Common, Route, SinkPipeline, SourcePipeline,
};
use gearbox_connect::topic::Template;
use gearbox_connect::transform::{Chain, Program};
use gearbox_connectors::registry::{SINK_TYPES, SOURCE_TYPES, SinkDecl, SourceDecl};
use gearbox_core::subscription::Start;
use gearbox_log::Retention;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Largest config file read.
const CONFIG_BYTES_MAX: u64 = 4 << 20;
/// Most pipelines in one file.
pub const PIPELINES_MAX: usize = 256;
/// Most transforms in one pipeline.
pub const TRANSFORMS_MAX: usize = 32;
/// Most routes in one pipeline.
pub const ROUTES_MAX: usize = 64;
/// Most tests in one pipeline.
pub const TESTS_MAX: usize = 256;
/// Largest freshness target (30 days).
pub const FRESHNESS_MS_MAX: u64 = 30 * 86_400_000;
/// Default lock of a sink pipeline's subscription.
pub const SINK_LOCK_MS_DEFAULT: u64 = 60_000;

/// Smallest lineage retention by size (1 MiB).
pub const LINEAGE_RETENTION_BYTES_MIN: u64 = 1 << 20;
/// Largest lineage retention by size (64 GiB).
pub const LINEAGE_RETENTION_BYTES_MAX: u64 = 64 << 30;
/// Smallest lineage retention by age (one minute).
pub const LINEAGE_RETENTION_MS_MIN: u64 = 60_000;
/// Largest lineage retention by age (one year).
pub const LINEAGE_RETENTION_MS_MAX: u64 = 365 * 86_400_000;

/// The `lineage` section: whether hops are recorded, and how much of them is kept.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LineageDecl {
    /// Record hops (default true).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Keep at most this many bytes (default 256 MiB).
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Keep hops at most this long (default 7 days).
    #[serde(default)]
    pub retention_ms: Option<u64>,
}

impl LineageDecl {
    /// The broker's lineage settings.
    #[must_use]
    pub fn config(&self) -> gearbox_core::lineage::LineageConfig {
        let d = gearbox_core::lineage::LineageConfig::default();
        gearbox_core::lineage::LineageConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            retention_bytes: self.retention_bytes.unwrap_or(d.retention_bytes),
            retention_ms: self.retention_ms.unwrap_or(d.retention_ms),
        }
    }
}

/// Default Kafka listener address when the `kafka` section enables it without one.
pub const KAFKA_LISTEN_DEFAULT: &str = "127.0.0.1:9092";
/// Most partitions a Kafka auto-created topic may be given.
pub const KAFKA_DEFAULT_PARTITIONS_MAX: u32 = 1024;

/// Most entries in the `reconcile` section.
pub const RECONCILES_MAX: usize = 64;

/// One entry of the `reconcile` section: compare a Parquet sink pipeline's topic with its files
/// on a schedule (`docs/warehouse.md`); the result is exported as `gearbox_reconcile_*` metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileDecl {
    /// The Parquet sink pipeline.
    pub pipeline: String,
    /// When to run.
    pub schedule: gearbox_connect::schedule::ScheduleConfig,
    /// Numeric fields to sum on both sides (`data.qty`).
    #[serde(default)]
    pub sum: Vec<String>,
    /// Buckets: a field (`data.store`), `hour` or `day`.
    #[serde(default)]
    pub by: Option<String>,
    /// Only events of the last `window_ms` (by their `time`); default: everything retained.
    #[serde(default)]
    pub window_ms: Option<u64>,
}

/// The `kafka` section: the Kafka wire-protocol listener (`docs/kafka.md`).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KafkaDecl {
    /// Serve the Kafka protocol (default true when the section is present).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Where to listen (default 127.0.0.1:9092).
    #[serde(default)]
    pub listen: Option<String>,
    /// The `host:port` clients are told to connect to (default: the listen address).
    #[serde(default)]
    pub advertised: Option<String>,
    /// Create topics that clients ask Metadata for (default true, as Kafka).
    #[serde(default)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics (default 1, as Kafka).
    #[serde(default)]
    pub default_partitions: Option<u32>,
}

/// One topic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicDecl {
    /// The name.
    pub name: String,
    /// Partition count.
    #[serde(default = "one")]
    pub partitions: u32,
    /// Retention; absent keeps everything.
    #[serde(default)]
    pub retention: Option<RetentionDecl>,
}

/// Retention limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionDecl {
    /// Keep at most this many milliseconds.
    pub ms: Option<u64>,
    /// Keep at most this many bytes per partition.
    pub bytes: Option<u64>,
}

fn one() -> u32 {
    1
}

impl TopicDecl {
    /// The retention this declaration asks for.
    #[must_use]
    pub fn retention(&self) -> Retention {
        self.retention
            .as_ref()
            .map_or(Retention::FOREVER, |r| Retention {
                bytes_max: r.bytes,
                ms_max: r.ms,
            })
    }
}

/// A pipeline as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineDecl {
    name: String,
    #[serde(default)]
    source: Option<Value>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    dead_letter: Option<String>,
    #[serde(default)]
    routes: Vec<RouteDecl>,
    #[serde(default)]
    sink: Option<Value>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    lock_ms: Option<u64>,
    #[serde(default)]
    pause_after_failures: Option<u32>,
    #[serde(default)]
    transforms: Vec<String>,
    #[serde(default)]
    retry: Option<RetryConfig>,
    #[serde(default)]
    breaker: Option<BreakerConfig>,
    #[serde(default)]
    rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    freshness_ms: Option<u64>,
    #[serde(default)]
    batch_records_max: Option<usize>,
    #[serde(default)]
    tests: Vec<TestDecl>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDecl {
    when: String,
    topic: String,
}

/// A test embedded in a pipeline: an input record, and the events (a subset of each expected
/// event's fields, in order) or the dead letter it must give.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestDecl {
    /// The test's name.
    pub name: String,
    /// The input: a draft event (source pipelines) or an event (sink pipelines).
    pub input: Value,
    /// Expected outputs, each a subset of the output's fields; `topic` (source pipelines)
    /// matches the routed topic.
    #[serde(default)]
    pub expect: Option<Vec<Value>>,
    /// The input must be dead-lettered with an error containing this text.
    #[serde(default)]
    pub expect_dlq: Option<String>,
}

/// A pipeline, checked and ready to start.
#[derive(Debug)]
pub enum Pipeline {
    /// Gear → topic.
    Source {
        /// Runtime settings.
        pipeline: SourcePipeline,
        /// The connector (boxed: source configs are much larger than sink configs).
        decl: Box<SourceDecl>,
        /// Its tests.
        tests: Vec<TestDecl>,
    },
    /// Topic → gear.
    Sink {
        /// Runtime settings.
        pipeline: SinkPipeline,
        /// The connector.
        decl: SinkDecl,
        /// Its tests.
        tests: Vec<TestDecl>,
    },
}

impl Pipeline {
    /// The pipeline's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Pipeline::Source { pipeline, .. } => &pipeline.common.name,
            Pipeline::Sink { pipeline, .. } => &pipeline.common.name,
        }
    }
}

/// The whole file, checked.
#[derive(Debug)]
pub struct Config {
    /// Topics to create if missing.
    pub topics: Vec<TopicDecl>,
    /// Pipelines to run.
    pub pipelines: Vec<Pipeline>,
    /// Lineage settings.
    pub lineage: LineageDecl,
    /// The Kafka listener, when the section is present.
    pub kafka: Option<KafkaDecl>,
    /// Scheduled stream-versus-warehouse reconciles.
    pub reconcile: Vec<ReconcileDecl>,
}

impl Config {
    /// The Parquet sink pipelines: name → (topic, output directory).
    #[must_use]
    pub fn warehouses(&self) -> std::collections::BTreeMap<String, (String, std::path::PathBuf)> {
        self.pipelines
            .iter()
            .filter_map(|p| match p {
                #[cfg(feature = "parquet")]
                Pipeline::Sink {
                    pipeline,
                    decl: SinkDecl::Parquet(c),
                    ..
                } => Some((
                    pipeline.common.name.clone(),
                    (pipeline.from.clone(), c.path.clone()),
                )),
                _ => None,
            })
            .collect()
    }
}

/// One problem, with its path in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where: `pipelines[0].source.webhook.path`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem in a file.
#[derive(Debug)]
pub struct Invalid(pub Vec<Issue>);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} problem(s):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

fn typed<T: serde::de::DeserializeOwned>(value: &Value, path: &str) -> Result<T, Issue> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let inner = e.path().to_string();
        Issue {
            path: if inner == "." || inner.is_empty() {
                path.to_string()
            } else {
                format!("{path}.{inner}")
            },
            message: e.into_inner().to_string(),
        }
    })
}

impl Config {
    /// Reads, parses and checks a config file.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or [`Invalid`] with every problem found.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let len = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        anyhow::ensure!(
            len <= CONFIG_BYTES_MAX,
            "{} is larger than {CONFIG_BYTES_MAX} bytes",
            path.display()
        );
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let tree: Value =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Config::check(&tree)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("checking {}", path.display()))
    }

    /// Checks a parsed file.
    ///
    /// # Errors
    /// [`Invalid`] with every problem found.
    pub fn check(tree: &Value) -> Result<Config, Invalid> {
        let mut issues = Vec::new();
        let root = match tree {
            Value::Object(map) => map.clone(),
            Value::Null => Default::default(),
            _ => {
                return Err(Invalid(vec![Issue {
                    path: ".".into(),
                    message: "the file must be a mapping with `topics` and `pipelines`".into(),
                }]));
            }
        };
        for key in root.keys() {
            if !["topics", "pipelines", "lineage", "kafka", "reconcile"].contains(&key.as_str()) {
                issues.push(Issue {
                    path: key.clone(),
                    message: "unknown section (expected `topics`, `pipelines`, `lineage`, \
                              `kafka` or `reconcile`)"
                        .into(),
                });
            }
        }
        let kafka = match root.get("kafka") {
            None | Some(Value::Null) => None,
            Some(v) => typed::<KafkaDecl>(v, "kafka")
                .map_err(|e| issues.push(e))
                .ok(),
        };
        if let Some(k) = &kafka {
            if let Some(v) = &k.listen
                && v.parse::<std::net::SocketAddr>().is_err()
            {
                issues.push(Issue {
                    path: "kafka.listen".into(),
                    message: format!("{v:?} is not an IP address and port"),
                });
            }
            if let Some(v) = &k.advertised
                && crate::serve::host_port(v).is_none()
            {
                issues.push(Issue {
                    path: "kafka.advertised".into(),
                    message: format!("{v:?} is not host:port"),
                });
            }
            if let Some(p) = k.default_partitions
                && !(1..=KAFKA_DEFAULT_PARTITIONS_MAX).contains(&p)
            {
                issues.push(Issue {
                    path: "kafka.default_partitions".into(),
                    message: format!("must be 1 to {KAFKA_DEFAULT_PARTITIONS_MAX}"),
                });
            }
        }
        let lineage = match root.get("lineage") {
            None | Some(Value::Null) => LineageDecl::default(),
            Some(v) => typed::<LineageDecl>(v, "lineage")
                .map_err(|e| issues.push(e))
                .unwrap_or_default(),
        };
        if let Some(b) = lineage.retention_bytes
            && !(LINEAGE_RETENTION_BYTES_MIN..=LINEAGE_RETENTION_BYTES_MAX).contains(&b)
        {
            issues.push(Issue {
                path: "lineage.retention_bytes".into(),
                message: format!(
                    "must be {LINEAGE_RETENTION_BYTES_MIN} to {LINEAGE_RETENTION_BYTES_MAX}"
                ),
            });
        }
        if let Some(ms) = lineage.retention_ms
            && !(LINEAGE_RETENTION_MS_MIN..=LINEAGE_RETENTION_MS_MAX).contains(&ms)
        {
            issues.push(Issue {
                path: "lineage.retention_ms".into(),
                message: format!(
                    "must be {LINEAGE_RETENTION_MS_MIN} to {LINEAGE_RETENTION_MS_MAX}"
                ),
            });
        }
        let topics = list(&root, "topics", &mut issues)
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                typed::<TopicDecl>(t, &format!("topics[{i}]"))
                    .map_err(|e| issues.push(e))
                    .ok()
            })
            .collect::<Vec<_>>();
        let declared: BTreeSet<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let raw = list(&root, "pipelines", &mut issues);
        if raw.len() > PIPELINES_MAX {
            issues.push(Issue {
                path: "pipelines".into(),
                message: format!("at most {PIPELINES_MAX} pipelines"),
            });
        }
        let mut names = BTreeSet::new();
        let mut pipelines = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            let at = format!("pipelines[{i}]");
            let decl = match typed::<PipelineDecl>(p, &at) {
                Ok(d) => d,
                Err(e) => {
                    issues.push(e);
                    continue;
                }
            };
            if !names.insert(decl.name.clone()) {
                issues.push(Issue {
                    path: format!("{at}.name"),
                    message: format!("pipeline {:?} is declared twice", decl.name),
                });
            }
            if let Some(p) = pipeline(decl, &at, &declared, &mut issues) {
                pipelines.push(p);
            }
        }
        let raw = list(&root, "reconcile", &mut issues);
        if raw.len() > RECONCILES_MAX {
            issues.push(Issue {
                path: "reconcile".into(),
                message: format!("at most {RECONCILES_MAX} entries"),
            });
        }
        let mut config = Config {
            topics,
            pipelines,
            lineage,
            kafka,
            reconcile: Vec::new(),
        };
        let warehouses = config.warehouses();
        for (i, r) in raw.iter().enumerate() {
            let at = format!("reconcile[{i}]");
            let Ok(decl) = typed::<ReconcileDecl>(r, &at).map_err(|e| issues.push(e)) else {
                continue;
            };
            if !warehouses.contains_key(&decl.pipeline) {
                issues.push(Issue {
                    path: format!("{at}.pipeline"),
                    message: format!(
                        "{:?} is not a pipeline with a `parquet` sink in this file",
                        decl.pipeline
                    ),
                });
            }
            for (path, message) in decl.schedule.validate() {
                issues.push(Issue {
                    path: format!("{at}.schedule.{path}"),
                    message,
                });
            }
            config.reconcile.push(decl);
        }
        if issues.is_empty() {
            Ok(config)
        } else {
            Err(Invalid(issues))
        }
    }
}

fn list(root: &serde_json::Map<String, Value>, key: &str, issues: &mut Vec<Issue>) -> Vec<Value> {
    match root.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            issues.push(Issue {
                path: key.into(),
                message: "must be a list".into(),
            });
            Vec::new()
        }
    }
}

fn issue(issues: &mut Vec<Issue>, path: String, message: impl Into<String>) {
    issues.push(Issue {
        path,
        message: message.into(),
    });
}

fn pipeline(
    d: PipelineDecl,
    at: &str,
    declared: &BTreeSet<&str>,
    issues: &mut Vec<Issue>,
) -> Option<Pipeline> {
    let before = issues.len();
    if d.name.is_empty()
        || d.name.len() > 200
        || !d
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        issue(
            issues,
            format!("{at}.name"),
            "must be 1-200 of A-Z a-z 0-9 . _ -",
        );
    }
    let mut programs = Vec::new();
    if d.transforms.len() > TRANSFORMS_MAX {
        issue(
            issues,
            format!("{at}.transforms"),
            format!("at most {TRANSFORMS_MAX} transforms"),
        );
    }
    for (i, t) in d.transforms.iter().enumerate() {
        match Program::compile(t) {
            Ok(p) => programs.push(p),
            Err(e) => issue(issues, format!("{at}.transforms[{i}]"), e.to_string()),
        }
    }
    let retry = d.retry.unwrap_or_default();
    if let Err(e) = retry.validate() {
        issue(issues, format!("{at}.retry.{}", e.field), e.reason);
    }
    let breaker = d.breaker.unwrap_or_default();
    if let Err(e) = breaker.validate() {
        issue(issues, format!("{at}.breaker.{}", e.field), e.reason);
    }
    if let Some(r) = &d.rate_limit
        && let Err(e) = r.validate()
    {
        issue(issues, format!("{at}.rate_limit.{}", e.field), e.reason);
    }
    if let Some(f) = d.freshness_ms
        && (f == 0 || f > FRESHNESS_MS_MAX)
    {
        issue(
            issues,
            format!("{at}.freshness_ms"),
            format!("must be 1 to {FRESHNESS_MS_MAX}"),
        );
    }
    let batch = d.batch_records_max.unwrap_or(BATCH_RECORDS_DEFAULT);
    if batch == 0 || batch > BATCH_RECORDS_MAX {
        issue(
            issues,
            format!("{at}.batch_records_max"),
            format!("must be 1 to {BATCH_RECORDS_MAX}"),
        );
    }
    if d.tests.len() > TESTS_MAX {
        issue(
            issues,
            format!("{at}.tests"),
            format!("at most {TESTS_MAX} tests"),
        );
    }
    for (i, t) in d.tests.iter().enumerate() {
        if t.expect.is_some() == t.expect_dlq.is_some() {
            issue(
                issues,
                format!("{at}.tests[{i}]"),
                "give exactly one of `expect` and `expect_dlq`",
            );
        }
    }
    let common = Common {
        name: d.name.clone(),
        retry,
        breaker,
        rate_limit: d.rate_limit,
        freshness_ms: d.freshness_ms,
        transforms: Chain::new(programs),
        batch_records_max: batch,
    };
    let topic_known = |t: &str, path: String, issues: &mut Vec<Issue>| {
        if !declared.contains(t) {
            issue(
                issues,
                path,
                format!("topic {t:?} is not declared under `topics`"),
            );
        }
    };
    let built = match (d.source, d.sink) {
        (Some(source), None) => {
            for (field, present) in [
                ("from", d.from.is_some()),
                ("start", d.start.is_some()),
                ("lock_ms", d.lock_ms.is_some()),
                ("pause_after_failures", d.pause_after_failures.is_some()),
            ] {
                if present {
                    issue(
                        issues,
                        format!("{at}.{field}"),
                        "only sink pipelines take this",
                    );
                }
            }
            let decl =
                connector::<SourceDecl>(&source, &format!("{at}.source"), SOURCE_TYPES, issues)?;
            for (path, message) in decl.validate() {
                issue(
                    issues,
                    format!("{at}.source.{}.{path}", decl.kind()),
                    message,
                );
            }
            let Some(to) = d.to else {
                issue(
                    issues,
                    format!("{at}.to"),
                    "a source pipeline needs `to: <topic>`",
                );
                return None;
            };
            let to = match Template::parse(&to) {
                Ok(t) => t,
                Err(e) => {
                    issue(issues, format!("{at}.to"), e.reason);
                    return None;
                }
            };
            // A plain `to` must be declared, and is where dead letters go unless `dead_letter`
            // says otherwise; the topics a template renders are checked per event (an undeclared
            // one dead-letters the event), so a template needs `dead_letter`.
            if to.is_literal() {
                topic_known(to.as_str(), format!("{at}.to"), issues);
            }
            let dead_letter = match (d.dead_letter, to.is_literal()) {
                (Some(t), _) => {
                    topic_known(&t, format!("{at}.dead_letter"), issues);
                    t
                }
                (None, true) => to.as_str().to_owned(),
                (None, false) => {
                    issue(
                        issues,
                        format!("{at}.dead_letter"),
                        "a `to` with placeholders needs `dead_letter: <topic>`, the declared \
                         topic whose DLQ gets the events it cannot route",
                    );
                    return None;
                }
            };
            if d.routes.len() > ROUTES_MAX {
                issue(
                    issues,
                    format!("{at}.routes"),
                    format!("at most {ROUTES_MAX} routes"),
                );
            }
            let mut routes = Vec::new();
            for (i, r) in d.routes.into_iter().enumerate() {
                topic_known(&r.topic, format!("{at}.routes[{i}].topic"), issues);
                match Program::compile(&r.when) {
                    Ok(when) => routes.push(Route {
                        when,
                        topic: r.topic,
                    }),
                    Err(e) => issue(issues, format!("{at}.routes[{i}].when"), e.to_string()),
                }
            }
            Pipeline::Source {
                pipeline: SourcePipeline {
                    common,
                    to,
                    routes,
                    dead_letter,
                },
                decl: Box::new(decl),
                tests: d.tests,
            }
        }
        (None, Some(sink)) => {
            if d.to.is_some() || !d.routes.is_empty() || d.dead_letter.is_some() {
                issue(
                    issues,
                    format!("{at}.to"),
                    "sink pipelines read `from` a topic; `to` and `routes` are for sources",
                );
            }
            let decl = connector::<SinkDecl>(&sink, &format!("{at}.sink"), SINK_TYPES, issues)?;
            for (path, message) in decl.validate() {
                issue(issues, format!("{at}.sink.{}.{path}", decl.kind()), message);
            }
            let Some(from) = d.from else {
                issue(
                    issues,
                    format!("{at}.from"),
                    "a sink pipeline needs `from: <topic>`",
                );
                return None;
            };
            topic_known(&from, format!("{at}.from"), issues);
            let start = match d.start.as_deref() {
                None | Some("earliest") => Start::Earliest,
                Some("latest") => Start::Latest,
                Some(other) => {
                    issue(
                        issues,
                        format!("{at}.start"),
                        format!("{other:?}: use earliest or latest"),
                    );
                    Start::Earliest
                }
            };
            Pipeline::Sink {
                pipeline: SinkPipeline {
                    common,
                    from,
                    start,
                    lock_ms: d.lock_ms.unwrap_or(SINK_LOCK_MS_DEFAULT),
                    pause_after_failures: d.pause_after_failures,
                },
                decl,
                tests: d.tests,
            }
        }
        _ => {
            issue(
                issues,
                at.to_string(),
                "a pipeline has exactly one of `source` (with `to`) and `sink` (with `from`)",
            );
            return None;
        }
    };
    (issues.len() == before).then_some(built)
}

/// Checks a `source:` or `sink:` section names one known connector type, then parses it.
fn connector<T: serde::de::DeserializeOwned>(
    value: &Value,
    at: &str,
    known: &[&str],
    issues: &mut Vec<Issue>,
) -> Option<T> {
    let kind = match value {
        Value::Object(m) if m.len() == 1 => m.keys().next().cloned().unwrap_or_default(),
        _ => {
            issue(
                issues,
                at.to_string(),
                format!("name one connector type: {}", known.join(", ")),
            );
            return None;
        }
    };
    if !known.contains(&kind.as_str()) {
        issue(
            issues,
            format!("{at}.{kind}"),
            format!("unknown connector type (known: {})", known.join(", ")),
        );
        return None;
    }
    typed::<T>(value, at).map_err(|e| issues.push(e)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(yaml: &str) -> Vec<String> {
        let tree: Value = serde_saphyr::from_str(yaml).unwrap();
        match Config::check(&tree) {
            Ok(_) => Vec::new(),
            Err(Invalid(list)) => list.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_kafka_section_is_checked() {
        let tree: Value = serde_saphyr::from_str(
            "kafka: { listen: 127.0.0.1:9093, advertised: kafka.local:19093, default_partitions: 3 }",
        )
        .unwrap();
        let k = Config::check(&tree).unwrap().kafka.unwrap();
        assert_eq!(k.listen.as_deref(), Some("127.0.0.1:9093"));
        assert_eq!(k.default_partitions, Some(3));
        assert!(
            Config::check(&serde_saphyr::from_str("topics: []").unwrap())
                .unwrap()
                .kafka
                .is_none()
        );
        assert_eq!(
            issues("kafka: { listen: nowhere, advertised: 'h:x', default_partitions: 0, tls: true }"),
            vec!["kafka.tls: unknown field `tls`, expected one of `enabled`, `listen`, `advertised`, `auto_create_topics`, `default_partitions`".to_string()]
        );
        assert_eq!(
            issues("kafka: { listen: nowhere, advertised: 'h:x', default_partitions: 0 }"),
            vec![
                "kafka.listen: \"nowhere\" is not an IP address and port".to_string(),
                "kafka.advertised: \"h:x\" is not host:port".to_string(),
                format!("kafka.default_partitions: must be 1 to {KAFKA_DEFAULT_PARTITIONS_MAX}"),
            ]
        );
    }

    #[test]
    fn the_lineage_section_is_checked_and_defaults_apply() {
        let tree: Value =
            serde_saphyr::from_str("lineage: { enabled: false, retention_bytes: 2097152 }")
                .unwrap();
        let c = Config::check(&tree).unwrap().lineage.config();
        assert!(!c.enabled);
        assert_eq!(c.retention_bytes, 2 << 20);
        assert_eq!(
            c.retention_ms,
            gearbox_core::lineage::LINEAGE_RETENTION_MS_DEFAULT
        );
        assert_eq!(
            issues("lineage: { retention_bytes: 5, retention_ms: 1, colour: red }"),
            [
                "lineage.colour: unknown field `colour`, expected one of `enabled`, `retention_bytes`, `retention_ms`"
            ]
        );
        assert_eq!(
            issues("lineage: { retention_bytes: 5, retention_ms: 1 }"),
            [
                format!(
                    "lineage.retention_bytes: must be {LINEAGE_RETENTION_BYTES_MIN} to {LINEAGE_RETENTION_BYTES_MAX}"
                ),
                format!(
                    "lineage.retention_ms: must be {LINEAGE_RETENTION_MS_MIN} to {LINEAGE_RETENTION_MS_MAX}"
                ),
            ]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let got = issues(
            r#"
topics:
  - name: t
pipelines:
  - name: a
    source: { webhook: { path: /nothooks, scheme: nope, secrets: ["${env:X}"], source: s } }
    to: missing
    transforms: ['.x | nosuchfn']
    retry: { attempts_max: 0 }
  - name: b
    sink: { http: { url: "http://127.0.0.1:1/x", timeout_ms: 0 } }
    from: t
    start: sometime
  - name: c
    source: { ftp: {} }
    to: t
  - name: d
    source: { webhook: { path: /hooks/d, scheme: github, secrets: ["literal-secret"], source: s } }
    to: t
extra: 1
"#,
        );
        let expect = [
            "extra: unknown section",
            "pipelines[0].source.webhook.path: must start with /hooks/",
            "pipelines[0].source.webhook.scheme: must be standard, stripe or github",
            "pipelines[0].to: topic \"missing\" is not declared",
            "pipelines[0].transforms[0]:",
            "pipelines[0].retry.attempts_max:",
            "pipelines[1].sink.http.timeout_ms: must be 1 to",
            "pipelines[1].start: \"sometime\"",
            "pipelines[2].source.ftp: unknown connector type",
            "pipelines[3].source.webhook.secrets[0]: secrets must be references",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in:\n{}",
                got.join("\n")
            );
        }
        assert!(
            got.iter().all(|g| !g.contains("literal-secret")),
            "a literal secret must not be echoed:\n{}",
            got.join("\n")
        );
    }

    #[test]
    fn a_topic_template_needs_a_dead_letter_topic_and_a_valid_shape() {
        let got = issues(
            r#"
topics: [{ name: t }]
pipelines:
  - name: a
    source: { webhook: { path: /hooks/a, scheme: standard, secrets: ["${env:X}"], source: s } }
    to: "cdc.{pgtable}"
  - name: b
    source: { webhook: { path: /hooks/b, scheme: standard, secrets: ["${env:X}"], source: s } }
    to: "cdc.{pgtable"
  - name: c
    source: { webhook: { path: /hooks/c, scheme: standard, secrets: ["${env:X}"], source: s } }
    to: "cdc.{pgtable}"
    dead_letter: nope
  - name: d
    source: { webhook: { path: /hooks/d, scheme: standard, secrets: ["${env:X}"], source: s } }
    to: "cdc.{pgtable}"
    dead_letter: t
"#,
        );
        let expect = [
            "pipelines[0].dead_letter: a `to` with placeholders needs",
            "pipelines[1].to: `{` at byte 4 is never closed",
            "pipelines[2].dead_letter: topic \"nope\" is not declared",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in:\n{}",
                got.join("\n")
            );
        }
        assert_eq!(got.len(), expect.len(), "{}", got.join("\n"));
    }

    #[test]
    fn a_good_file_checks() {
        let got = issues(
            r#"
topics: [{ name: t }, { name: u }]
pipelines:
  - name: hooks
    source: { webhook: { path: /hooks/x, scheme: standard, secrets: ["${env:X}"], source: "urn:x" } }
    to: t
    routes: [{ when: '.type == "u"', topic: u }]
    transforms: ['select(.data.ok)']
    freshness_ms: 60000
    tests:
      - name: routes
        input: { specversion: "1.0", id: "1", source: s, type: u, data: { ok: true } }
        expect: [{ topic: u }]
"#,
        );
        assert_eq!(got, Vec::<String>::new());
    }
}
