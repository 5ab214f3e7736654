//! The outbox relay through SIGKILL: the seed's `outbox_events` DDL runs verbatim in a fresh
//! database, and concurrent writers insert orders plus outbox rows in transactions, some rolled
//! back, some long-running and committing late, one held open from the start to the end, while
//! `gearbox serve` relays the table and is killed with SIGKILL 20 times.
//!
//! Every committed row must appear exactly once, in commit order per aggregate, in the topic its
//! `aggregate_type` names (`to: "outbox.{aggregatetype}"`); no rolled-back row may appear; and
//! every committed row ends marked `published_at`.

#![cfg(feature = "postgres")]

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::pg::{Database, psql};
use support::{Server, free_port};

const TOPIC: &str = "outbox.order";
const PARTITIONS: u32 = 3;
const KILLS: usize = 20;
const WRITERS: usize = 4;
const AGGREGATES_PER_WRITER: usize = 5;

/// The seed's DDL, verbatim (seeds/002, "Transactional outbox").
const SEED_DDL: &str = "CREATE TABLE outbox_events (
id UUID PRIMARY KEY,
aggregate_type VARCHAR(100) NOT NULL,
aggregate_id VARCHAR(100) NOT NULL,
event_type VARCHAR(100) NOT NULL,
payload JSONB NOT NULL,
created_at TIMESTAMP NOT NULL DEFAULT NOW(),
published_at TIMESTAMP NULL
);";

/// What the writers committed: aggregate → outbox ids in commit order; and the rolled-back ids.
#[derive(Default)]
struct Ledger {
    committed: BTreeMap<String, Vec<String>>,
    rolled_back: BTreeSet<String>,
}

/// One writer: transactions on its own aggregates (so commit order per aggregate is the order
/// it commits them in) until `stop`, every fifth rolled back, every seventh holding its
/// transaction open a while so that others commit past it.
async fn writer(db: String, k: usize, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let (mut client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let aggregate = format!("w{k}-a{}", n % AGGREGATES_PER_WRITER);
        let id = uuid::Uuid::new_v4().to_string();
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO orders (id, total) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET total = EXCLUDED.total",
            &[&aggregate, &(n as i64)],
        )
        .await
        .unwrap();
        tx.execute(
            "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, payload) \
             VALUES ($1::text::uuid, 'order', $2::text, 'OrderPlaced', \
             jsonb_build_object('orderId', $2::text, 'seq', $3::bigint))",
            &[&id, &aggregate, &(n as i64)],
        )
        .await
        .unwrap();
        if n.is_multiple_of(7) {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        if n.is_multiple_of(5) {
            tx.rollback().await.unwrap();
            ledger.lock().unwrap().rolled_back.insert(id);
        } else {
            tx.commit().await.unwrap();
            ledger
                .lock()
                .unwrap()
                .committed
                .entry(aggregate)
                .or_default()
                .push(id);
        }
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
}

fn topic_events(server: &Server) -> Vec<Value> {
    server.all_events(TOPIC, PARTITIONS)
}

#[test]
fn every_committed_row_is_relayed_once_in_order_across_sigkills() {
    let db = Database::create("outbox");
    psql(&db.name, SEED_DDL).expect("the seed's DDL runs verbatim");
    psql(
        &db.name,
        "CREATE TABLE orders (id text PRIMARY KEY, total bigint NOT NULL)",
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}, {{ name: outbox.unrouted }}]
pipelines:
  - name: outbox
    source:
      postgres_outbox:
        url: postgres://postgres@127.0.0.1:5432/{db}
        slot: {slot}
        publication: {slot}
    to: "outbox.{{aggregatetype}}"
    dead_letter: outbox.unrouted
    batch_records_max: 50
"#,
            db = db.name,
            slot = db.slot
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    // The slot exists once the pipeline has started: only then do writes count as "after".
    let deadline = Instant::now() + Duration::from_secs(30);
    while psql(
        "postgres",
        &format!(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}'",
            db.slot
        ),
    )
    .unwrap()
    .trim()
        != "1"
    {
        assert!(
            Instant::now() < deadline,
            "the relay never made its slot\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    // A transaction begun before everything else and committed after everything else.
    let (late_id, late_tx) = {
        let db = db.name.clone();
        let id = uuid::Uuid::new_v4().to_string();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let late = id.clone();
        let handle = rt.spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 user=postgres dbname={db}"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let tx = client.transaction().await.unwrap();
            tx.execute(
                "INSERT INTO outbox_events (id, aggregate_type, aggregate_id, event_type, \
                 payload) VALUES ($1::text::uuid, 'order', 'late', 'OrderPlaced', '{}')",
                &[&late],
            )
            .await
            .unwrap();
            wait.await.unwrap();
            tx.commit().await.unwrap();
        });
        (id, (release, handle))
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|k| rt.spawn(writer(db.name.clone(), k, stop.clone(), ledger.clone())))
        .collect();

    let mut seen_at_kill = Vec::new();
    for i in 0..KILLS {
        std::thread::sleep(Duration::from_millis(200 + (i as u64 * 53) % 250));
        seen_at_kill.push(topic_events(&server).len());
        server.restart_after_kill9();
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        rt.block_on(w).unwrap();
    }
    let (release, handle) = late_tx;
    release.send(()).unwrap();
    rt.block_on(handle).unwrap();

    let ledger = ledger.lock().unwrap();
    let mut expected: BTreeSet<&String> = ledger.committed.values().flatten().collect();
    expected.insert(&late_id);
    let deadline = Instant::now() + Duration::from_secs(90);
    let events = loop {
        let events = topic_events(&server);
        let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        let missing: Vec<_> = expected
            .iter()
            .filter(|id| !ids.contains(id.as_str()))
            .collect();
        if missing.is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} committed rows missing, e.g. {:?}; events at each kill {seen_at_kill:?}\n{}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Exactly once, none rolled back.
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &events {
        *count.entry(e["id"].as_str().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "relayed more than once: {twice:?}");
    let leaked: Vec<_> = ledger
        .rolled_back
        .iter()
        .filter(|id| count.contains_key(id.as_str()))
        .collect();
    assert!(leaked.is_empty(), "rolled-back rows relayed: {leaked:?}");
    assert_eq!(count.len(), expected.len(), "nothing but committed rows");

    // Commit order per aggregate: one aggregate is one partition key, so its events are in one
    // partition, in the order the topic holds them.
    let mut order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in &events {
        order
            .entry(e["partitionkey"].as_str().unwrap())
            .or_default()
            .push(e["id"].as_str().unwrap());
    }
    for (aggregate, ids) in &ledger.committed {
        assert_eq!(
            order.get(aggregate.as_str()).cloned().unwrap_or_default(),
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "aggregate {aggregate}: topic order is not commit order"
        );
    }
    let late = events.iter().find(|e| e["id"] == late_id.as_str()).unwrap();
    assert_eq!(late["type"], "OrderPlaced");
    assert_eq!(late["source"], "order");
    assert!(
        seen_at_kill.iter().any(|n| *n > 0) && seen_at_kill.first() != seen_at_kill.last(),
        "the kills landed mid-stream: {seen_at_kill:?}"
    );

    eprintln!(
        "outbox: {} committed rows relayed once each, {} rolled back, {KILLS} kills; events \
         in the topic at each kill: {seen_at_kill:?}",
        expected.len(),
        ledger.rolled_back.len()
    );

    // Every committed row ends marked published (after its append was acknowledged).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let unpublished = psql(
            &db.name,
            "SELECT count(*) FROM outbox_events WHERE published_at IS NULL",
        )
        .unwrap();
        if unpublished.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} rows never marked published\n{}",
            unpublished.trim(),
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill9();
}
