//! CDC through SIGKILL: a writer inserts, updates and deletes rows of two tables in a fresh
//! database (`customers` with `REPLICA IDENTITY FULL`, `orders` with the default) while
//! `gearbox serve` streams them over logical replication (`pgoutput`) into one topic per table
//! (`to: "cdc.{pgschema}.{pgtable}"`) and is killed with SIGKILL 20 times.
//!
//! Every change must arrive once (a resent change carries the id it had, so the log
//! deduplicates it), in commit order per row, with the Debezium-shaped `op`, `before` and
//! `after`; rows that existed before the pipeline started arrive as snapshot reads (`op: r`).
//! The slot-lag gauge on `/metrics` must show the WAL written while Gearbox was down, and fall
//! once those changes are acknowledged.

#![cfg(feature = "postgres")]

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::pg::{Database, psql};
use support::{Server, free_port};

const PARTITIONS: u32 = 3;
const KILLS: usize = 20;
const PRE_EXISTING: i32 = 10;

/// One committed change as the model sees it: (op, before, after).
type Change = (&'static str, Value, Value);

/// (table, key) → its changes in commit order.
type Model = BTreeMap<(&'static str, String), Vec<Change>>;

fn customer(id: i32, name: &str) -> Value {
    json!({"id": id, "name": name})
}

fn order(id: i32, customer: i32, total: i32) -> Value {
    json!({"id": id, "customer_id": customer, "total": total})
}

/// Inserts, updates and deletes, one per transaction, until `stop`; records each in `model`.
async fn writer(db: String, stop: Arc<AtomicBool>, model: Arc<Mutex<Model>>) {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut customers: BTreeMap<i32, String> =
        (0..PRE_EXISTING).map(|i| (i, format!("pre-{i}"))).collect();
    let mut orders: BTreeMap<i32, (i32, i32)> = BTreeMap::new();
    let mut n: i32 = 0;
    let record = |table: &'static str, key: i32, change: Change| {
        model
            .lock()
            .unwrap()
            .entry((table, key.to_string()))
            .or_default()
            .push(change);
    };
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let some_customer = *customers.keys().nth(n as usize % customers.len()).unwrap();
        match n % 5 {
            0 | 1 => {
                let id = 1000 + n;
                let total = n * 3;
                client
                    .execute(
                        "INSERT INTO orders (id, customer_id, total) VALUES ($1, $2, $3)",
                        &[&id, &some_customer, &total],
                    )
                    .await
                    .unwrap();
                orders.insert(id, (some_customer, total));
                record(
                    "orders",
                    id,
                    ("c", Value::Null, order(id, some_customer, total)),
                );
            }
            2 => {
                let name = format!("name-{n}");
                client
                    .execute(
                        "UPDATE customers SET name = $2 WHERE id = $1",
                        &[&some_customer, &name],
                    )
                    .await
                    .unwrap();
                let old = customers.insert(some_customer, name.clone()).unwrap();
                record(
                    "customers",
                    some_customer,
                    (
                        "u",
                        customer(some_customer, &old),
                        customer(some_customer, &name),
                    ),
                );
            }
            3 => {
                if let Some((&id, &(c, total))) = orders.iter().next() {
                    client
                        .execute(
                            "UPDATE orders SET total = $2 WHERE id = $1",
                            &[&id, &(total + 1)],
                        )
                        .await
                        .unwrap();
                    orders.insert(id, (c, total + 1));
                    // Default replica identity, key unchanged: no old tuple, `before` null.
                    record("orders", id, ("u", Value::Null, order(id, c, total + 1)));
                }
            }
            _ => {
                if let Some((&id, _)) = orders.iter().next() {
                    client
                        .execute("DELETE FROM orders WHERE id = $1", &[&id])
                        .await
                        .unwrap();
                    orders.remove(&id);
                    // Default replica identity: `before` holds the key only.
                    record("orders", id, ("d", json!({"id": id}), Value::Null));
                } else {
                    let id = 100 + n;
                    let name = format!("new-{n}");
                    client
                        .execute(
                            "INSERT INTO customers (id, name) VALUES ($1, $2)",
                            &[&id, &name],
                        )
                        .await
                        .unwrap();
                    customers.insert(id, name.clone());
                    record("customers", id, ("c", Value::Null, customer(id, &name)));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
}

/// The slot-lag gauge of the `cdc` pipeline, if `/metrics` has it.
fn slot_lag(server: &Server) -> Option<f64> {
    server
        .metrics()
        .lines()
        .find(|l| l.starts_with("gearbox_source_postgres_slot_lag_bytes{pipeline=\"cdc\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn every_change_arrives_once_in_order_across_sigkills() {
    let db = Database::create("cdc");
    psql(
        &db.name,
        &format!(
            "CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL);
             ALTER TABLE customers REPLICA IDENTITY FULL;
             CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, \
                 total integer NOT NULL);
             INSERT INTO customers SELECT i, 'pre-' || i FROM generate_series(0, {}) i;",
            PRE_EXISTING - 1
        ),
    )
    .unwrap();
    let model: Arc<Mutex<Model>> = Arc::new(Mutex::new(
        (0..PRE_EXISTING)
            .map(|i| {
                (
                    ("customers", i.to_string()),
                    vec![("r", Value::Null, customer(i, &format!("pre-{i}")))],
                )
            })
            .collect(),
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics:
  - {{ name: cdc.public.customers, partitions: {PARTITIONS} }}
  - {{ name: cdc.public.orders, partitions: {PARTITIONS} }}
  - {{ name: cdc.unrouted }}
pipelines:
  - name: cdc
    source:
      postgres_cdc:
        url: postgres://postgres@127.0.0.1:5432/{db}
        slot: {slot}
        publication: {slot}
        tables: [public.customers, public.orders]
        status_interval_ms: 1000
    to: "cdc.{{pgschema}}.{{pgtable}}"
    dead_letter: cdc.unrouted
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
    // Changes count from when the slot exists (the snapshot covers what came before).
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.all_events("cdc.public.customers", PARTITIONS).len() < PRE_EXISTING as usize {
        assert!(
            Instant::now() < deadline,
            "the snapshot never arrived\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writing = rt.spawn(writer(db.name.clone(), stop.clone(), model.clone()));
    for i in 0..KILLS {
        std::thread::sleep(Duration::from_millis(200 + (i as u64 * 61) % 250));
        server.restart_after_kill9();
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writing).unwrap();
    let model = model.lock().unwrap().clone();
    let changes: usize = model.values().map(Vec::len).sum();

    // Everything arrives: per row, the topic's changes equal the model's, in order.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut got: Model = BTreeMap::new();
        let mut ids: BTreeMap<String, usize> = BTreeMap::new();
        for table in ["customers", "orders"] {
            for e in server.all_events(&format!("cdc.public.{table}"), PARTITIONS) {
                *ids.entry(e["id"].as_str().unwrap().to_string())
                    .or_default() += 1;
                let data = &e["data"];
                assert_eq!(data["source"]["table"], table, "{e}");
                let op: &'static str = match data["op"].as_str().unwrap() {
                    "c" => "c",
                    "u" => "u",
                    "d" => "d",
                    "r" => "r",
                    other => panic!("unexpected op {other}: {e}"),
                };
                let key = e["partitionkey"].as_str().unwrap().to_string();
                let table: &'static str = if table == "customers" {
                    "customers"
                } else {
                    "orders"
                };
                got.entry((table, key)).or_default().push((
                    op,
                    data["before"].clone(),
                    data["after"].clone(),
                ));
            }
        }
        let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "stored twice: {twice:?}");
        if got == model {
            break;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = model
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(3)
                .map(|(k, v)| (k, v, got.get(k)))
                .collect();
            panic!(
                "the topics never matched the {changes} committed changes; e.g. (row, want, \
                 got): {wrong:?}\n{}",
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The slot-lag gauge: changes written while Gearbox is down are WAL the slot holds; the
    // first poll after the restart shows them, and once they are acknowledged it falls.
    server.kill9();
    let wal = |db: &str| -> u64 {
        let hex = psql(db, "SELECT pg_current_wal_lsn()").unwrap();
        let (hi, lo) = hex.trim().split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    let before = wal(&db.name);
    psql(
        &db.name,
        "INSERT INTO orders SELECT 100000 + i, 0, i FROM generate_series(1, 3000) i",
    )
    .unwrap();
    let written = wal(&db.name) - before;
    server.restart_after_kill9();
    let high = (written / 2) as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = 0.0f64;
    while peak < high {
        peak = peak.max(slot_lag(&server).unwrap_or(0.0));
        assert!(
            Instant::now() < deadline,
            "the slot-lag gauge never showed the {written} bytes written while down (peak {peak})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let low = 64.0 * 1024.0;
    let settled = loop {
        let lag = slot_lag(&server).unwrap_or(f64::MAX);
        if lag < low {
            break lag;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "the slot lag stayed at {lag} after the changes were acknowledged"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "cdc: {changes} changes on {} rows arrived once each across {KILLS} kills; the slot lag \
         rose to {peak} bytes for {written} bytes written while down, then fell to {settled}",
        model.len()
    );
    server.kill9();
}
