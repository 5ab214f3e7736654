//! The registry: the one table of connector types. A pipeline's `source:` or `sink:` in
//! `gearbox.yaml` names its type as the only key (`source: {webhook: {...}}`); this module
//! validates that section, builds the connector, and starts it in the runtime.

use gearbox_connect::backbone::Backbone;
use gearbox_connect::runtime::{Runtime, SinkPipeline, SourcePipeline};
use serde::Deserialize;

/// A source section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceDecl {
    /// Webhooks in.
    #[cfg(feature = "webhook")]
    Webhook(crate::webhook::WebhookConfig),
    /// HTTP polling.
    #[cfg(feature = "http")]
    HttpPoll(crate::http_poll::HttpPollConfig),
    /// MQTT.
    #[cfg(feature = "mqtt")]
    Mqtt(crate::mqtt::MqttConfig),
    /// Postgres logical-replication CDC.
    #[cfg(feature = "postgres")]
    PostgresCdc(crate::postgres::cdc::CdcConfig),
    /// The transactional-outbox relay.
    #[cfg(feature = "postgres")]
    PostgresOutbox(crate::postgres::outbox::OutboxConfig),
    /// Export files (CSV, JSONL, Parquet) on a schedule.
    #[cfg(feature = "files")]
    Files(crate::batch::files::FilesConfig),
    /// A SQL query with a watermark on a schedule.
    #[cfg(feature = "sql")]
    Sql(crate::batch::sql::SqlConfig),
}

/// A sink section.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkDecl {
    /// Webhooks out.
    #[cfg(feature = "http")]
    Http(crate::http_delivery::HttpDeliveryConfig),
    /// A Postgres table built by key, effectively-once.
    #[cfg(feature = "postgres")]
    PostgresUpsert(crate::postgres::upsert::UpsertConfig),
    /// Parquet files, hive-partitioned by date, committed effectively-once.
    #[cfg(feature = "parquet")]
    Parquet(gearbox_warehouse::ParquetConfig),
}

/// Every source type compiled in, for error messages.
pub const SOURCE_TYPES: &[&str] = &[
    #[cfg(feature = "webhook")]
    "webhook",
    #[cfg(feature = "http")]
    "http_poll",
    #[cfg(feature = "mqtt")]
    "mqtt",
    #[cfg(feature = "postgres")]
    "postgres_cdc",
    #[cfg(feature = "postgres")]
    "postgres_outbox",
    #[cfg(feature = "files")]
    "files",
    #[cfg(feature = "sql")]
    "sql",
];

/// Every sink type compiled in.
pub const SINK_TYPES: &[&str] = &[
    #[cfg(feature = "http")]
    "http",
    #[cfg(feature = "postgres")]
    "postgres_upsert",
    #[cfg(feature = "parquet")]
    "parquet",
];

impl SourceDecl {
    /// The type name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "webhook")]
            SourceDecl::Webhook(_) => "webhook",
            #[cfg(feature = "http")]
            SourceDecl::HttpPoll(_) => "http_poll",
            #[cfg(feature = "mqtt")]
            SourceDecl::Mqtt(_) => "mqtt",
            #[cfg(feature = "postgres")]
            SourceDecl::PostgresCdc(_) => "postgres_cdc",
            #[cfg(feature = "postgres")]
            SourceDecl::PostgresOutbox(_) => "postgres_outbox",
            #[cfg(feature = "files")]
            SourceDecl::Files(_) => "files",
            #[cfg(feature = "sql")]
            SourceDecl::Sql(_) => "sql",
        }
    }

    /// Problems with the section, as (path below `source.<type>`, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        match self {
            #[cfg(feature = "webhook")]
            SourceDecl::Webhook(c) => c.validate(),
            #[cfg(feature = "http")]
            SourceDecl::HttpPoll(c) => c.validate(),
            #[cfg(feature = "mqtt")]
            SourceDecl::Mqtt(c) => c.validate(),
            #[cfg(feature = "postgres")]
            SourceDecl::PostgresCdc(c) => c.validate(),
            #[cfg(feature = "postgres")]
            SourceDecl::PostgresOutbox(c) => c.validate(),
            #[cfg(feature = "files")]
            SourceDecl::Files(c) => c.validate(),
            #[cfg(feature = "sql")]
            SourceDecl::Sql(c) => c.validate(),
        }
    }
}

impl SinkDecl {
    /// The type name.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            #[cfg(feature = "http")]
            SinkDecl::Http(_) => "http",
            #[cfg(feature = "postgres")]
            SinkDecl::PostgresUpsert(_) => "postgres_upsert",
            #[cfg(feature = "parquet")]
            SinkDecl::Parquet(_) => "parquet",
            #[cfg(not(any(feature = "http", feature = "postgres", feature = "parquet")))]
            _ => unreachable!("no sink type is compiled in"),
        }
    }

    /// Problems with the section, as (path below `sink.<type>`, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        match self {
            #[cfg(feature = "http")]
            SinkDecl::Http(c) => c.validate(),
            #[cfg(feature = "postgres")]
            SinkDecl::PostgresUpsert(c) => c.validate(),
            #[cfg(feature = "parquet")]
            SinkDecl::Parquet(c) => c.validate(),
            #[cfg(not(any(feature = "http", feature = "postgres", feature = "parquet")))]
            _ => unreachable!("no sink type is compiled in"),
        }
    }
}

/// What starting a pipeline gives back to the server.
#[derive(Debug, Default)]
pub struct Started {
    /// A webhook endpoint to mount on the HTTP listener.
    #[cfg(feature = "webhook")]
    pub webhook: Option<crate::webhook::WebhookEndpoint>,
}

/// A connector that could not be built: the connector's own error, which names the field below
/// `source.<type>` or `sink.<type>`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BuildError(pub String);

macro_rules! build {
    ($e:expr) => {
        $e.map_err(|e| BuildError(e.to_string()))?
    };
}

/// Builds a source and starts its pipeline.
///
/// # Errors
/// [`BuildError`] (a secret that does not resolve, say).
pub fn start_source<B: Backbone>(
    runtime: &mut Runtime<B>,
    pipeline: SourcePipeline,
    decl: &SourceDecl,
) -> Result<Started, BuildError> {
    let mut started = Started::default();
    match decl {
        #[cfg(feature = "webhook")]
        SourceDecl::Webhook(c) => {
            let (endpoint, source) = build!(crate::webhook::receiver(c.clone()));
            started.webhook = Some(endpoint);
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "http")]
        SourceDecl::HttpPoll(c) => {
            let source = build!(crate::http_poll::HttpPoll::new(c.clone()));
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "mqtt")]
        SourceDecl::Mqtt(c) => {
            let source = build!(crate::mqtt::Mqtt::new(c.clone()));
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "postgres")]
        SourceDecl::PostgresCdc(c) => {
            let source = build!(crate::postgres::cdc::PostgresCdc::new(c.clone()));
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "postgres")]
        SourceDecl::PostgresOutbox(c) => {
            let source = build!(crate::postgres::outbox::PostgresOutbox::new(c.clone()));
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "files")]
        SourceDecl::Files(c) => {
            let job = build!(crate::batch::files::FilesJob::new(
                c.clone(),
                &pipeline.common.name
            ));
            let source = build!(gearbox_connect::schedule::Scheduled::new(job, &c.schedule));
            runtime.spawn_source(pipeline, source);
        }
        #[cfg(feature = "sql")]
        SourceDecl::Sql(c) => {
            let job = build!(crate::batch::sql::SqlJob::new(
                c.clone(),
                &pipeline.common.name
            ));
            let source = build!(gearbox_connect::schedule::Scheduled::new(job, &c.schedule));
            runtime.spawn_source(pipeline, source);
        }
    }
    Ok(started)
}

/// Builds a sink and starts its pipeline.
///
/// # Errors
/// [`BuildError`].
pub fn start_sink<B: Backbone>(
    runtime: &mut Runtime<B>,
    pipeline: SinkPipeline,
    decl: &SinkDecl,
) -> Result<(), BuildError> {
    match decl {
        #[cfg(feature = "http")]
        SinkDecl::Http(c) => {
            let sink = build!(crate::http_delivery::HttpDelivery::new(c));
            runtime.spawn_sink(pipeline, sink);
            Ok(())
        }
        #[cfg(feature = "postgres")]
        SinkDecl::PostgresUpsert(c) => {
            let sink = crate::postgres::upsert::PostgresUpsert::new(
                c.clone(),
                &pipeline.common.name,
                &pipeline.from,
            )
            .map_err(BuildError)?;
            runtime.spawn_transactional_sink(pipeline, sink);
            Ok(())
        }
        #[cfg(feature = "parquet")]
        SinkDecl::Parquet(c) => {
            let sink = build!(gearbox_warehouse::ParquetSink::new(c.clone()));
            runtime.spawn_transactional_sink(pipeline, sink);
            Ok(())
        }
        #[cfg(not(any(feature = "http", feature = "postgres", feature = "parquet")))]
        _ => {
            let _ = (runtime, pipeline);
            unreachable!("no sink type is compiled in")
        }
    }
}
