//! The upsert sink against the real Postgres on 127.0.0.1:5432 (trust auth, database `test`):
//! directly, for the transaction's all-or-nothing and the version guard, and in the runtime, for
//! dead-lettering exactly the bad event of a batch. Each test has its own schema, dropped at the
//! end.

#![cfg(feature = "postgres")]

use gearbox_connect::backbone::Embedded;
use gearbox_connect::breaker::BreakerConfig;
use gearbox_connect::metrics::Registry;
use gearbox_connect::retry::RetryConfig;
use gearbox_connect::runtime::{Common, Runtime, SinkPipeline};
use gearbox_connect::sink::{SinkError, SinkRecord, TransactionalSink};
use gearbox_connect::transform::Chain;
use gearbox_connectors::postgres::upsert::{PostgresUpsert, UpsertConfig};
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_core::event::CloudEvent;
use gearbox_core::subscription::Start;
use gearbox_log::Retention;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
static COUNTER: AtomicU64 = AtomicU64::new(0);

struct Db {
    client: tokio_postgres::Client,
    schema: String,
}

impl Db {
    async fn new() -> Db {
        let (client, conn) = tokio_postgres::connect(URL, NoTls).await.unwrap();
        tokio::spawn(conn);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let schema = format!(
            "gbt_up_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        client
            .batch_execute(&format!(
                "CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders (order_id text PRIMARY KEY, \
                 amount_cents integer, event_time timestamptz)"
            ))
            .await
            .unwrap();
        Db { client, schema }
    }

    async fn rows(&self) -> Vec<(String, i32)> {
        self.client
            .query(
                &format!(
                    "SELECT order_id, amount_cents FROM {}.orders ORDER BY order_id",
                    self.schema
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Drops the schema now (the `Drop` below also does, for a test that panicked first).
    async fn drop(self) {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .await
            .unwrap();
    }

    fn config(&self, extra: Value) -> UpsertConfig {
        let mut v = json!({
            "url": URL,
            "table": format!("{}.orders", self.schema),
            "key": ["order_id"],
            "columns": {"order_id": "data.order_id", "amount_cents": "data.amount_cents", "event_time": "time"},
            "positions_table": format!("{}.positions", self.schema),
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Blocking and best effort: a test that failed still leaves no schema behind.
        let _ = std::process::Command::new("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-c",
            ])
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .output();
    }
}

fn record(order: &str, amount: Value, time: &str, offset: u64) -> SinkRecord {
    SinkRecord {
        id: format!("{order}@{offset}"),
        value: json!({"time": time, "data": {"order_id": order, "amount_cents": amount}}),
        attempt: 1,
        partition: 0,
        offset,
        time_ms: None,
        traceparent: None,
    }
}

#[tokio::test]
async fn a_failed_transaction_moves_neither_rows_nor_positions() {
    let db = Db::new().await;
    let mut sink = PostgresUpsert::new(db.config(json!({})), "p", "orders").unwrap();
    assert_eq!(sink.positions().await.unwrap(), vec![]);
    sink.apply(
        &[record("a", json!(1), "2026-01-01T00:00:00Z", 0)],
        &[(0, 1), (1, 0)],
    )
    .await
    .unwrap();
    let mut positions = sink.positions().await.unwrap();
    positions.sort_unstable();
    assert_eq!(positions, vec![(0, 1), (1, 0)]);

    // "b" is fine, "c" is not an integer: the whole batch and its positions are refused.
    let err = sink
        .apply(
            &[
                record("b", json!(2), "2026-01-01T00:00:00Z", 1),
                record("c", json!("twelve"), "2026-01-01T00:00:00Z", 2),
            ],
            &[(0, 3), (1, 0)],
        )
        .await
        .unwrap_err();
    let SinkError::Permanent { message } = err else {
        panic!("a bad value is permanent: {err:?}")
    };
    assert!(message.contains("twelve"), "{message}");
    let mut positions = sink.positions().await.unwrap();
    positions.sort_unstable();
    assert_eq!(positions, vec![(0, 1), (1, 0)], "positions unchanged");
    assert_eq!(
        db.rows().await,
        vec![("a".to_string(), 1)],
        "no row of the batch"
    );
    db.drop().await;
}

#[tokio::test]
async fn an_older_version_does_not_overwrite_a_newer_row() {
    let db = Db::new().await;
    let mut sink =
        PostgresUpsert::new(db.config(json!({"version": "event_time"})), "p", "orders").unwrap();
    sink.apply(
        &[record("a", json!(2), "2026-01-01T00:00:02Z", 0)],
        &[(0, 1)],
    )
    .await
    .unwrap();
    sink.apply(
        &[record("a", json!(1), "2026-01-01T00:00:01Z", 1)],
        &[(0, 2)],
    )
    .await
    .unwrap();
    assert_eq!(db.rows().await, vec![("a".to_string(), 2)]);
    sink.apply(
        &[record("a", json!(3), "2026-01-01T00:00:03Z", 2)],
        &[(0, 3)],
    )
    .await
    .unwrap();
    assert_eq!(db.rows().await, vec![("a".to_string(), 3)]);
    // `update: []`: the first write wins.
    let mut first = PostgresUpsert::new(db.config(json!({"update": []})), "q", "orders").unwrap();
    first
        .apply(
            &[record("a", json!(9), "2026-01-01T00:00:09Z", 0)],
            &[(0, 1)],
        )
        .await
        .unwrap();
    assert_eq!(db.rows().await, vec![("a".to_string(), 3)]);
    db.drop().await;
}

#[tokio::test]
async fn one_batch_keeps_one_row_per_key_by_the_columns_own_types() {
    let db = Db::new().await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {}.counters (id integer PRIMARY KEY, amount_cents integer, \
             version bigint)",
            db.schema
        ))
        .await
        .unwrap();
    let config: UpsertConfig = serde_json::from_value(json!({
        "url": URL,
        "table": format!("{}.counters", db.schema),
        "key": ["id"],
        "version": "version",
        "columns": {"id": "data.id", "amount_cents": "data.amount_cents", "version": "data.version"},
        "positions_table": format!("{}.positions", db.schema),
    }))
    .unwrap();
    let mut sink = PostgresUpsert::new(config, "p", "counters").unwrap();
    let r = |id: Value, amount: i64, version: Value, offset: u64| SinkRecord {
        id: format!("e{offset}"),
        value: json!({"data": {"id": id, "amount_cents": amount, "version": version}}),
        attempt: 1,
        partition: 0,
        offset,
        time_ms: None,
        traceparent: None,
    };
    // `1` and `"1"` are one integer key; "10" is newer than "9" as a bigint, though not as
    // text; the late version 2 comes last in log order and still loses.
    sink.apply(
        &[
            r(json!(1), 100, json!("9"), 0),
            r(json!("1"), 200, json!("10"), 1),
            r(json!(1), 300, json!(2), 2),
        ],
        &[(0, 3)],
    )
    .await
    .unwrap();
    let rows = db
        .client
        .query(
            &format!(
                "SELECT id, amount_cents, version FROM {}.counters",
                db.schema
            ),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, i32, i64)> = rows
        .iter()
        .map(|x| (x.get(0), x.get(1), x.get(2)))
        .collect();
    assert_eq!(got, vec![(1, 200, 10)]);
    db.drop().await;
}

#[tokio::test]
async fn an_unreachable_server_and_a_missing_table_are_transient() {
    let mut sink = PostgresUpsert::new(
        UpsertConfig {
            url: "postgres://postgres@127.0.0.1:1/test".into(),
            ..Db::new_config_only()
        },
        "p",
        "orders",
    )
    .unwrap();
    assert!(matches!(
        sink.positions().await,
        Err(SinkError::Transient { .. })
    ));
    // A missing table waits for an operator: no event causes it, so none is dead-lettered.
    let mut sink = PostgresUpsert::new(Db::new_config_only(), "p", "orders").unwrap();
    let err = sink.positions().await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Transient { message, .. } if message.contains("does not exist")),
        "{err:?}"
    );
}

impl Db {
    /// A config for a table that does not exist.
    fn new_config_only() -> UpsertConfig {
        serde_json::from_value(json!({
            "url": URL,
            "table": "gbt_no_such_schema.orders",
            "key": ["order_id"],
            "columns": {"order_id": "data.order_id"},
            "positions_table": "gbt_no_such_schema_positions",
        }))
        .unwrap()
    }
}

#[tokio::test]
async fn the_runtime_dead_letters_exactly_the_bad_events_and_applies_the_rest() {
    let db = Db::new().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::durable()).unwrap());
    broker
        .create_topic("orders", 1, Retention::FOREVER)
        .unwrap();
    let mut events = Vec::new();
    for i in 0..12 {
        let amount = match i {
            4 => json!("not a number"),
            _ => json!(i),
        };
        let mut data = json!({"order_id": format!("o-{i}"), "amount_cents": amount});
        if i == 7 {
            data.as_object_mut().unwrap().remove("order_id");
        }
        events.push(
            CloudEvent::from_json(&json!({
                "specversion": "1.0", "id": format!("e-{i}"), "source": "/shop",
                "type": "com.company.orders.created", "time": "2026-01-01T00:00:00Z",
                "datacontenttype": "application/json", "data": data,
            }))
            .unwrap(),
        );
    }
    broker.publish("orders", &events).unwrap();

    let backbone = Arc::new(Embedded::new(broker.clone()));
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(backbone, registry.clone());
    let pipeline = SinkPipeline {
        common: Common {
            name: "silver".into(),
            retry: RetryConfig {
                attempts_max: 3,
                initial_ms: 20,
                max_ms: 100,
                multiplier: 2.0,
                total_ms_max: None,
            },
            breaker: BreakerConfig {
                failures_max: 3,
                open_ms: 300,
                half_open_probes: 1,
            },
            rate_limit: None,
            freshness_ms: None,
            transforms: Chain::new(vec![]),
            batch_records_max: 50,
        },
        from: "orders".into(),
        start: Start::Earliest,
        lock_ms: 30_000,
        pause_after_failures: None,
    };
    let sink = PostgresUpsert::new(db.config(json!({})), "silver", "orders").unwrap();
    runtime.spawn_transactional_sink(pipeline, sink);

    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let dead = broker.dlq("orders", 100).unwrap_or_default();
        if dead.len() >= 2 && db.rows().await.len() == 10 {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "rows {:?}, dead {dead:?}",
            db.rows().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut dead_ids: Vec<&str> = dead.iter().map(|d| d.event.id.as_str()).collect();
    dead_ids.sort_unstable();
    assert_eq!(dead_ids, ["e-4", "e-7"]);
    let errors: Vec<&String> = dead
        .iter()
        .map(|d| &d.event.extensions["dlqerror"])
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not a number")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("order_id")), "{errors:?}");
    let rows = db.rows().await;
    assert!(rows.iter().all(|(id, _)| id != "o-4" && id != "o-7"));
    // Every event is covered by the stored positions.
    let mut check = PostgresUpsert::new(db.config(json!({})), "silver", "orders").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while check.positions().await.unwrap() != vec![(0, 12)] {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Caught up: the lag gauge says so.
    let metrics = registry.get("silver").unwrap();
    while metrics.gauge("lag_events") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "lag_events: {:?}",
            metrics.gauge("lag_events")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // More events are applied, and the gauge is back at 0 once they are.
    let more: Vec<CloudEvent> = (12..20)
        .map(|i| {
            CloudEvent::from_json(&json!({
                "specversion": "1.0", "id": format!("e-{i}"), "source": "/shop",
                "type": "com.company.orders.created", "time": "2026-01-01T00:00:00Z",
                "datacontenttype": "application/json",
                "data": {"order_id": format!("o-{i}"), "amount_cents": i},
            }))
            .unwrap()
        })
        .collect();
    broker.publish("orders", &more).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while check.positions().await.unwrap() != vec![(0, 20)]
        || metrics.gauge("lag_events") != Some(0.0)
    {
        assert!(
            Instant::now() < deadline,
            "lag_events: {:?}",
            metrics.gauge("lag_events")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.rows().await.len(), 18);
    runtime.shutdown(Duration::from_secs(5)).await;
    db.drop().await;
}
