//! The outbox relay against the real Postgres 15 on 127.0.0.1:5432, on the seed's
//! `outbox_events` table, created with the seed's DDL verbatim (read from
//! `/work/shared/seeds/002_*.txt` when present, else the copy below) in a schema of the test's own
//! (`SET search_path`).
//!
//! Every test uses its own schema, slot and publication and drops them at the end, also when it
//! fails. Conditions are polled with a deadline, never slept on.

#![cfg(feature = "postgres")]

use gearbox_connect::source::{RecordOutcome, Source};
use gearbox_connectors::postgres::outbox::{OutboxConfig, PostgresOutbox};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long any one condition may take to come true.
const DEADLINE_MS: u64 = 20_000;

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One test of this file at a time: slots share the server's WAL, and the concurrency these
/// tests build is their own, not their neighbours'.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A lowercase name no other test or run uses.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "gbt_{}_{}_{n}_{tag}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A test's own schema, slot and publication.
#[derive(Clone)]
struct Fixture {
    schema: String,
    slot: String,
    publication: String,
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(URL, tokio_postgres::NoTls)
        .await
        .expect("postgres on 127.0.0.1:5432");
    tokio::spawn(connection);
    client
}

impl Fixture {
    async fn exec(&self, sql: &str) {
        admin()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    async fn slot_exists(&self) -> bool {
        admin()
            .await
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .is_some()
    }

    /// Drops the slot (waiting for a walsender still holding it), the publication, the schema.
    async fn cleanup(&self) {
        let client = admin().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(DEADLINE_MS);
        loop {
            let r = client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                    &[&self.slot],
                )
                .await;
            match r {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("dropping slot {}: {e:?}", self.slot),
            }
        }
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}; DROP SCHEMA IF EXISTS {} CASCADE",
                self.publication, self.schema
            ))
            .await
            .expect("cleanup");
    }
}

/// Runs `body` with a fresh fixture and cleans up afterwards, also when it panics.
async fn run<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let _turn = ONE_AT_A_TIME.lock().await;
    let f = Fixture {
        schema: unique(tag),
        slot: unique(tag),
        publication: unique(tag),
    };
    f.exec(&format!("CREATE SCHEMA {}", f.schema)).await;
    let result = tokio::spawn(body(f.clone())).await;
    f.cleanup().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The next batch, within the deadline.
async fn read_batch<S: gearbox_connect::source::Source>(
    source: &mut S,
    records_max: usize,
) -> gearbox_connect::source::SourceBatch {
    tokio::time::timeout(
        std::time::Duration::from_millis(DEADLINE_MS),
        source.next_batch(records_max),
    )
    .await
    .expect("a batch within the deadline")
    .expect("next_batch")
    .expect("not ended")
}

/// The seed's DDL, verbatim (002_b39d2cd9aa731459.txt, "Transactional outbox").
const SEED_DDL: &str = "CREATE TABLE outbox_events (
id UUID PRIMARY KEY,
aggregate_type VARCHAR(100) NOT NULL,
aggregate_id VARCHAR(100) NOT NULL,
event_type VARCHAR(100) NOT NULL,
payload JSONB NOT NULL,
created_at TIMESTAMP NOT NULL DEFAULT NOW(),
published_at TIMESTAMP NULL
);";

/// The DDL from the seed file itself when it is on this machine, checked against the copy.
fn seed_ddl() -> String {
    let dir = std::path::Path::new("/work/shared/seeds");
    let file = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("002_"))
    });
    if let Some(file) = file {
        let text = std::fs::read_to_string(file.path()).unwrap();
        let start = text
            .find("CREATE TABLE outbox_events (")
            .expect("the seed has the DDL");
        let end = start + text[start..].find(");").unwrap() + 2;
        assert_eq!(&text[start..end], SEED_DDL, "the seed's DDL changed");
    }
    SEED_DDL.to_string()
}

async fn create_outbox(f: &Fixture) {
    f.exec(&format!("SET search_path TO {}; {}", f.schema, seed_ddl()))
        .await;
}

fn config(f: &Fixture, extra: Value) -> OutboxConfig {
    let mut value = json!({
        "url": URL,
        "table": format!("{}.outbox_events", f.schema),
        "slot": f.slot,
        "publication": f.publication,
        "status_interval_ms": 500,
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).expect("test config deserializes")
}

/// Inserts one outbox row in `client`'s current transaction and returns its id.
async fn insert(client: &tokio_postgres::Client, schema: &str, aggregate: &str, n: i64) -> String {
    let row = client
        .query_one(
            &format!(
                "INSERT INTO {schema}.outbox_events (id, aggregate_type, aggregate_id, event_type, payload) \
                 VALUES (gen_random_uuid(), 'order', $1, 'OrderPlaced', jsonb_build_object('n', $2::int8)) RETURNING id::text"
            ),
            &[&aggregate, &n],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Reads and acks batches until the `ids` arrived (and returns every event read).
async fn read_until(source: &mut PostgresOutbox, ids: &BTreeSet<String>) -> Vec<Value> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    loop {
        let seen: BTreeSet<String> = events
            .iter()
            .map(|e: &Value| e["id"].as_str().unwrap().to_string())
            .collect();
        if ids.is_subset(&seen) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "missing {:?}",
            ids.difference(&seen).collect::<Vec<_>>()
        );
        let batch = read_batch(source, 7).await;
        let n = batch.records.len();
        events.extend(batch.records);
        source
            .ack(batch.token, vec![RecordOutcome::default(); n])
            .await
            .expect("ack");
    }
}

#[tokio::test]
async fn every_committed_row_once_in_commit_order_none_rolled_back() {
    run("outbox", |f| async move {
        create_outbox(&f).await;
        let mut source = PostgresOutbox::new(config(&f, json!({}))).unwrap();
        source.open(None).await.expect("open");

        // A long transaction begins first (its created_at is the earliest) and commits last.
        let long = admin().await;
        long.batch_execute("BEGIN").await.unwrap();
        let late = insert(&long, &f.schema, "late", 0).await;

        // Concurrent writers: every third transaction rolls back.
        let mut writers = Vec::new();
        for w in 0..4i64 {
            let schema = f.schema.clone();
            writers.push(tokio::spawn(async move {
                let client = admin().await;
                let mut committed = Vec::new();
                let mut rolled_back = Vec::new();
                for i in 0..12i64 {
                    client.batch_execute("BEGIN").await.unwrap();
                    let a = insert(&client, &schema, &format!("w{w}"), i).await;
                    let b = insert(&client, &schema, &format!("w{w}"), i).await;
                    if i % 3 == 2 {
                        client.batch_execute("ROLLBACK").await.unwrap();
                        rolled_back.extend([a, b]);
                    } else {
                        client.batch_execute("COMMIT").await.unwrap();
                        committed.extend([a, b]);
                    }
                }
                (committed, rolled_back)
            }));
        }
        let mut committed = BTreeSet::new();
        let mut rolled_back = BTreeSet::new();
        for w in writers {
            let (c, r) = w.await.unwrap();
            committed.extend(c);
            rolled_back.extend(r);
        }
        // Everything committed so far is relayed while the long transaction is still open.
        let early = read_until(&mut source, &committed).await;
        assert!(early.iter().all(|e| e["id"] != late.as_str()));
        long.batch_execute("COMMIT").await.unwrap();
        committed.insert(late.clone());
        let mut events = early;
        events.extend(read_until(&mut source, &BTreeSet::from([late.clone()])).await);

        let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "no duplicates without a restart");
        assert_eq!(
            unique,
            committed.iter().map(String::as_str).collect(),
            "every committed row, nothing else"
        );
        assert!(rolled_back.iter().all(|r| !unique.contains(r.as_str())));
        assert_eq!(
            *ids.last().unwrap(),
            late,
            "the late commit comes last: commit order"
        );
        // Per aggregate, in the writer's order.
        let mut per_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for e in &events {
            assert_eq!(e["type"], "OrderPlaced");
            assert_eq!(e["source"], "order");
            assert_eq!(e["aggregatetype"], "order");
            assert_eq!(e["subject"], e["partitionkey"]);
            assert!(e["time"].as_str().unwrap().ends_with('Z'));
            per_aggregate
                .entry(e["subject"].as_str().unwrap())
                .or_default()
                .push(e["data"]["n"].as_i64().unwrap());
        }
        for (agg, ns) in &per_aggregate {
            assert!(ns.windows(2).all(|w| w[0] <= w[1]), "{agg}: {ns:?}");
        }
        // Acked rows are marked published.
        let unpublished: i64 = admin()
            .await
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.outbox_events WHERE published_at IS NULL",
                    f.schema
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(unpublished, 0);
        source.close();
    })
    .await;
}

#[tokio::test]
async fn existing_rows_are_snapshotted_in_created_order_and_delete_mode_deletes() {
    run("outboxsnap", |f| async move {
        create_outbox(&f).await;
        let client = admin().await;
        let mut first = Vec::new();
        for n in 0..3 {
            first.push(insert(&client, &f.schema, "a", n).await);
        }
        client
            .batch_execute(&format!(
                "INSERT INTO {s}.outbox_events VALUES (gen_random_uuid(), 'order', 'done', 'OrderPlaced', '{{}}', now(), now())",
                s = f.schema
            ))
            .await
            .unwrap();
        let mut source = PostgresOutbox::new(config(&f, json!({"on_ack": "delete"}))).unwrap();
        source.open(None).await.expect("open");
        let snapshot = read_until(&mut source, &first.iter().cloned().collect()).await;
        let ids: Vec<&str> = snapshot.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, first.iter().map(String::as_str).collect::<Vec<_>>(), "created_at order, published rows skipped");
        let later = insert(&client, &f.schema, "a", 3).await;
        let streamed = read_until(&mut source, &BTreeSet::from([later.clone()])).await;
        assert_eq!(streamed.iter().filter(|e| e["id"] == later.as_str()).count(), 1);
        let left: Vec<String> = client
            .query(&format!("SELECT aggregate_id::text FROM {}.outbox_events", f.schema), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(left, ["done"], "relayed rows are deleted, the published one stays");
        source.close();
    })
    .await;
}

#[tokio::test]
async fn a_restart_resends_unacknowledged_rows_with_their_ids() {
    run("outboxrestart", |f| async move {
        create_outbox(&f).await;
        let cfg = config(&f, json!({}));
        let mut source = PostgresOutbox::new(cfg.clone()).unwrap();
        source.open(None).await.unwrap();
        assert!(f.slot_exists().await, "open creates the slot");
        // The (empty) snapshot's end, acked, stores the streaming cursor.
        let done = read_batch(&mut source, 10).await;
        let cursor = done.cursor.clone();
        assert!(cursor.as_deref().unwrap().starts_with("lsn:"));
        source.ack(done.token, Vec::new()).await.unwrap();
        let client = admin().await;
        let id = insert(&client, &f.schema, "r", 1).await;
        let held = read_batch(&mut source, 10).await;
        assert_eq!(held.records[0]["id"], id.as_str());
        source.close();
        drop(source);
        let mut again = PostgresOutbox::new(cfg).unwrap();
        again.open(cursor).await.unwrap();
        let events = read_until(&mut again, &BTreeSet::from([id.clone()])).await;
        assert_eq!(events.last().unwrap(), &held.records[0]);
        again.close();
    })
    .await;
}
