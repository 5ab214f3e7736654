//! `gearbox bench postgres`: the Postgres gear against plain batched `INSERT`s over the same
//! server, in one run.
//!
//! - **insert** (the baseline): `--events` rows in batches of `--batch`, each batch one
//!   transaction holding one multi-row `INSERT … VALUES ($1, $2, …), …` over one connection: the
//!   way an application writes rows, and the fastest plain way to load them row by row.
//! - **upsert-sink (new keys)**: the same rows as `com.company.orders.created` events, published
//!   to an embedded topic first (not timed), then applied by the upsert sink through the runtime
//!   from offset 0: read from the log, one transaction per batch with the positions, until the
//!   stored positions cover every event. Events/s, and the ratio to the baseline.
//! - **upsert-sink (updates)**: a second topic with a newer version of every order, applied over
//!   the existing rows (every row an `ON CONFLICT DO UPDATE` through the version guard).
//!
//! Everything lives in a schema of its own, dropped at the end; the log in a scratch directory.

use super::Scratch;
use anyhow::{Context as _, bail};
use gearbox_connect::backbone::Embedded;
use gearbox_connect::breaker::BreakerConfig;
use gearbox_connect::metrics::Registry;
use gearbox_connect::retry::RetryConfig;
use gearbox_connect::runtime::{Common, Runtime, SinkPipeline};
use gearbox_connect::transform::Chain;
use gearbox_connectors::postgres::upsert::{PostgresUpsert, UpsertConfig};
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::Start;
use gearbox_log::Retention;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;

/// Options of `gearbox bench postgres`.
#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    /// The server (a schema of its own is created and dropped).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    url: String,
    /// Rows / events per case.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Rows per transaction (the baseline) and events per sink batch.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Partitions of the topic the sink reads.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Directory for the scratch log.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// Largest `--batch`: the baseline's statement holds 4 parameters per row, and Postgres allows
/// 65,535 parameters per statement.
pub const BATCH_MAX: usize = 16_000;
/// Longest any case may take.
const CASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the benchmark.
///
/// # Errors
/// The server is unreachable, or a case fails.
pub fn run(args: &PostgresArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > BATCH_MAX {
        bail!("--batch must be 1 to {BATCH_MAX}");
    }
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run_async(args))
}

struct Case {
    name: &'static str,
    events: usize,
    secs: f64,
}

async fn run_async(args: &PostgresArgs) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    tokio::spawn(conn);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let schema = format!("gearbox_bench_{}_{nanos}", std::process::id());
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.plain (order_id text PRIMARY KEY, customer_id text, \
                 amount_cents integer, event_time timestamptz);
             CREATE TABLE {schema}.orders (order_id text PRIMARY KEY, customer_id text, \
                 amount_cents integer, event_time timestamptz)"
        ))
        .await?;
    let result = cases(args, &client, &schema).await;
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await?;
    let cases = result?;
    let version = client
        .query_one("SHOW server_version", &[])
        .await?
        .get::<_, String>(0);
    let baseline = cases[0].events as f64 / cases[0].secs;
    println!(
        "gearbox bench postgres: {} events, batch {}, {} partitions, PostgreSQL {version}",
        args.events, args.batch, args.partitions
    );
    println!(
        "{:<34} {:>12} {:>10} {:>12}",
        "case", "events/s", "seconds", "vs insert"
    );
    for c in &cases {
        let rate = c.events as f64 / c.secs;
        println!(
            "{:<34} {:>12.0} {:>10.2} {:>11.2}x",
            c.name,
            rate,
            c.secs,
            rate / baseline
        );
    }
    Ok(())
}

fn order(n: usize, version: usize) -> (String, String, i32, String) {
    (
        format!("o-{n}"),
        format!("c-{}", n % 1000),
        i32::try_from(n % 1_000_000).unwrap_or(0) * 10 + i32::try_from(version).unwrap_or(0),
        format!("2026-11-23T10:00:{version:02}.000Z"),
    )
}

async fn cases(
    args: &PostgresArgs,
    client: &tokio_postgres::Client,
    schema: &str,
) -> anyhow::Result<Vec<Case>> {
    let mut out = Vec::new();

    // The baseline: multi-row INSERTs, one transaction per batch.
    let started = Instant::now();
    insert_rows(client, &format!("{schema}.plain"), args.events, args.batch).await?;
    out.push(Case {
        name: "insert (baseline)",
        events: args.events,
        secs: started.elapsed().as_secs_f64(),
    });

    let scratch = Scratch::create(args.dir.as_deref(), false)?;
    out.extend(cdc_cases(args, client, schema, &scratch).await?);
    let broker = Arc::new(Broker::open(scratch.path(), BrokerConfig::durable())?);
    for (topic, version, name) in [
        ("orders-new", 0, "upsert-sink (new keys)"),
        ("orders-update", 1, "upsert-sink (updates)"),
    ] {
        broker.create_topic(topic, args.partitions, Retention::FOREVER)?;
        let events: Vec<CloudEvent> = (0..args.events)
            .map(|n| {
                let (id, customer, amount, time) = order(n, version);
                CloudEvent::from_json(&json!({
                    "specversion": "1.0", "id": format!("{id}-v{version}"), "source": "/bench/shop",
                    "type": "com.company.orders.created", "time": time, "partitionkey": id,
                    "datacontenttype": "application/json",
                    "data": {"order_id": id, "customer_id": customer, "amount_cents": amount},
                }))
                .map_err(|e| anyhow::anyhow!("bench event: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        for chunk in events.chunks(1000) {
            broker.publish(topic, chunk)?;
        }
        let secs = sink_case(args, &broker, topic, schema).await?;
        out.push(Case {
            name,
            events: args.events,
            secs,
        });
    }
    Ok(out)
}

/// The rows of the baseline inserted into `table`, one multi-row `INSERT` per transaction.
async fn insert_rows(
    client: &tokio_postgres::Client,
    table: &str,
    events: usize,
    batch: usize,
) -> anyhow::Result<()> {
    for first in (0..events).step_by(batch) {
        let rows: Vec<_> = (first..(first + batch).min(events))
            .map(|n| order(n, 0))
            .collect();
        let times: Vec<chrono::DateTime<chrono::FixedOffset>> = rows
            .iter()
            .map(|r| chrono::DateTime::parse_from_rfc3339(&r.3))
            .collect::<Result<_, _>>()?;
        let mut sql = format!(
            "INSERT INTO {table} (order_id, customer_id, amount_cents, event_time) VALUES "
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * 4);
        for (i, (r, t)) in rows.iter().zip(&times).enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let b = i * 4;
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}::timestamptz)",
                b + 1,
                b + 2,
                b + 3,
                b + 4
            ));
            params.extend([
                &r.0 as &(dyn ToSql + Sync),
                &r.1 as &(dyn ToSql + Sync),
                &r.2 as &(dyn ToSql + Sync),
                t as &(dyn ToSql + Sync),
            ]);
        }
        client.batch_execute("BEGIN").await?;
        client.execute(&sql, &params).await?;
        client.batch_execute("COMMIT").await?;
    }
    Ok(())
}

/// CDC: a slot is made (the pipeline starts once and stops), the baseline's rows are inserted
/// while nothing reads the slot, then the pipeline starts again and drains them into a topic:
/// seconds from that start until every change is appended.
async fn cdc_cases(
    args: &PostgresArgs,
    client: &tokio_postgres::Client,
    schema: &str,
    scratch: &Scratch,
) -> anyhow::Result<Vec<Case>> {
    use gearbox_connect::runtime::SourcePipeline;
    use gearbox_connect::topic::Template;
    use gearbox_connectors::postgres::cdc::{CdcConfig, PostgresCdc};
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.cdc_src (order_id text PRIMARY KEY, customer_id text, \
             amount_cents integer, event_time timestamptz)"
        ))
        .await?;
    let slot = schema.to_string();
    let config: CdcConfig = serde_json::from_value(json!({
        "url": args.url, "slot": slot, "publication": slot,
        "tables": [format!("{schema}.cdc_src")], "snapshot": "never",
    }))?;
    let broker = Arc::new(Broker::open(
        &scratch.path().join("cdc"),
        BrokerConfig::durable(),
    )?);
    broker.create_topic("cdc", args.partitions, Retention::FOREVER)?;
    let pipeline = SourcePipeline {
        common: bench_common("bench-cdc", args.batch),
        to: Template::parse("cdc").map_err(|e| anyhow::anyhow!(e))?,
        routes: Vec::new(),
        dead_letter: "cdc".into(),
    };
    let result = async {
        // Make the slot, then stop reading it.
        let registry = Arc::new(Registry::default());
        let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
        runtime.spawn_source(
            pipeline.clone(),
            PostgresCdc::new(config.clone()).map_err(|e| anyhow::anyhow!(e))?,
        );
        let started = Instant::now();
        while client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .is_none()
        {
            if let Some(f) = registry.get("bench-cdc").and_then(|m| m.failure()) {
                bail!("cdc: {f}");
            }
            if started.elapsed() > CASE_TIMEOUT {
                bail!("cdc: no slot after {CASE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runtime.shutdown(Duration::from_secs(10)).await;

        let started = Instant::now();
        insert_rows(
            client,
            &format!("{schema}.cdc_src"),
            args.events,
            args.batch,
        )
        .await?;
        let insert_secs = started.elapsed().as_secs_f64();

        let registry = Arc::new(Registry::default());
        let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
        let started = Instant::now();
        runtime.spawn_source(
            pipeline.clone(),
            PostgresCdc::new(config.clone()).map_err(|e| anyhow::anyhow!(e))?,
        );
        loop {
            let stored: u64 = broker
                .describe_topic("cdc")?
                .offsets
                .iter()
                .map(|p| p.high_watermark)
                .sum();
            if stored >= args.events as u64 {
                break;
            }
            if let Some(f) = registry.get("bench-cdc").and_then(|m| m.failure()) {
                bail!("cdc: {f}");
            }
            if started.elapsed() > CASE_TIMEOUT {
                bail!(
                    "cdc: {stored} of {} changes in {CASE_TIMEOUT:?}",
                    args.events
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let cdc_secs = started.elapsed().as_secs_f64();
        runtime.shutdown(Duration::from_secs(10)).await;
        Ok(vec![
            Case {
                name: "insert (table in a publication)",
                events: args.events,
                secs: insert_secs,
            },
            Case {
                name: "cdc (drain the slot)",
                events: args.events,
                secs: cdc_secs,
            },
        ])
    }
    .await;
    // The walsender may take a moment to go after the pipeline stops.
    for _ in 0..100 {
        if client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{slot}\""))
        .await?;
    result
}

/// A bench pipeline's settings: no transforms, quick retries, batches of `batch` (at most the
/// runtime's limit).
fn bench_common(name: &str, batch: usize) -> Common {
    Common {
        name: name.to_string(),
        retry: RetryConfig {
            attempts_max: 3,
            initial_ms: 50,
            max_ms: 1000,
            multiplier: 2.0,
            total_ms_max: None,
        },
        breaker: BreakerConfig {
            failures_max: 5,
            open_ms: 1000,
            half_open_probes: 1,
        },
        rate_limit: None,
        freshness_ms: None,
        transforms: Chain::new(vec![]),
        batch_records_max: batch.min(gearbox_connect::runtime::BATCH_RECORDS_MAX),
    }
}

/// Applies `topic` with the upsert sink from offset 0; seconds until the positions cover it.
async fn sink_case(
    args: &PostgresArgs,
    broker: &Arc<Broker>,
    topic: &str,
    schema: &str,
) -> anyhow::Result<f64> {
    let config: UpsertConfig = serde_json::from_value(json!({
        "url": args.url,
        "table": format!("{schema}.orders"),
        "key": ["order_id"],
        "version": "event_time",
        "columns": {"order_id": "data.order_id", "customer_id": "data.customer_id",
                    "amount_cents": "data.amount_cents", "event_time": "time"},
        "positions_table": format!("{schema}.positions"),
    }))?;
    let pipeline = SinkPipeline {
        common: bench_common(&format!("bench-{topic}"), args.batch),
        from: topic.to_string(),
        start: Start::Earliest,
        lock_ms: 30_000,
        pause_after_failures: None,
    };
    let mut probe = PostgresUpsert::new(config.clone(), &pipeline.common.name, topic)
        .map_err(|e| anyhow::anyhow!(e))?;
    let sink = PostgresUpsert::new(config, &pipeline.common.name, topic)
        .map_err(|e| anyhow::anyhow!(e))?;
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
    let name = pipeline.common.name.clone();
    let started = Instant::now();
    runtime.spawn_transactional_sink(pipeline, sink);
    let total = args.events as u64;
    loop {
        use gearbox_connect::sink::TransactionalSink as _;
        let done: u64 = probe
            .positions()
            .await
            .map_err(|e| anyhow::anyhow!("reading positions: {e}"))?
            .iter()
            .map(|&(_, o)| o)
            .sum();
        if done >= total {
            break;
        }
        if let Some(failure) = registry.get(&name).and_then(|m| m.failure()) {
            bail!("{topic}: the sink failed: {failure}");
        }
        if started.elapsed() > CASE_TIMEOUT {
            bail!("{topic}: the sink applied {done} of {total} events in {CASE_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    runtime.shutdown(Duration::from_secs(10)).await;
    Ok(secs)
}
