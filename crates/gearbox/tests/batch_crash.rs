//! Watermark safety of the `sql` batch source through SIGKILL.
//!
//! Postgres: a table `stock(id, sku, qty, updated_at)` is read every second by a `sql` source
//! (`updated_at >= :watermark`, overlap 3 s) into a topic, and a `postgres_upsert` sink builds
//! `stock_copy` from the topic. While a writer inserts and updates rows, including rows stamped
//! with exactly the newest `updated_at` in the table (the watermark a run reaches) and late rows
//! (stamped up to 1.5 s in the past, or taking `now()` in a transaction that commits 700 ms
//! later), `gearbox serve` is killed with SIGKILL 20 times. At the end: `stock_copy` equals
//! `stock` (no row version lost), and the topic holds each (key, version) at most once (the
//! deterministic ids of the rows that runs re-read were deduplicated).
//!
//! MariaDB: a shorter variant without the sink: after 5 kills the topic holds every row's
//! latest version, each (key, version) once.

#![cfg(all(feature = "sql", feature = "postgres"))]

mod support;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::pg::{Database, psql};
use support::{Server, free_port};

const TOPIC: &str = "stock";
const PARTITIONS: u32 = 3;
const KILLS: usize = 20;
const MARIADB_KILLS: usize = 5;

/// One writer step `n`: an insert, an update, and a row stamped with the newest time in the
/// table, a late update, or a late insert, in turn.
async fn write_step(client: &mut tokio_postgres::Client, n: i32) {
    client
        .execute(
            "INSERT INTO stock VALUES ($1::int, 'sku-' || $1::int::text, 0, clock_timestamp())",
            &[&n],
        )
        .await
        .unwrap();
    // A plain update: a new version.
    client
        .execute(
            "UPDATE stock SET qty = qty + 1, updated_at = clock_timestamp() WHERE id = $1",
            &[&(n / 2)],
        )
        .await
        .unwrap();
    match n % 3 {
        // Exactly the newest time in the table, on a row that is older than it (so its version
        // still moves forward).
        0 => {
            client
                .execute(
                    "UPDATE stock SET qty = qty + 100, \
                     updated_at = (SELECT max(updated_at) FROM stock) \
                     WHERE id = (SELECT id FROM stock WHERE updated_at < \
                     (SELECT max(updated_at) FROM stock) ORDER BY id DESC LIMIT 1)",
                    &[],
                )
                .await
                .unwrap();
        }
        // A late update, 1.5 s in the past, on a row not touched since.
        1 => {
            client
                .execute(
                    "UPDATE stock SET qty = qty + 10, \
                     updated_at = clock_timestamp() - interval '1500 ms' \
                     WHERE id = $1 AND updated_at < clock_timestamp() - interval '1500 ms'",
                    &[&(n / 3)],
                )
                .await
                .unwrap();
        }
        // A late insert.
        _ => {
            client
                .execute(
                    "INSERT INTO stock VALUES ($1, 'late', 0, clock_timestamp() - interval '1 s')",
                    &[&(-n)],
                )
                .await
                .unwrap();
        }
    }
}

/// Transactions that take their time (`now()`) early and commit 700 ms later, until `stop`.
async fn slow_writer(db: String, stop: Arc<AtomicBool>) {
    let (mut client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO stock VALUES ($1, 'slow', 0, now())",
            &[&(1_000_000 + k)],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        tx.commit().await.unwrap();
    }
}

fn table(db: &str, name: &str) -> Vec<String> {
    psql(
        db,
        &format!(
            "SET TIME ZONE 'UTC'; SELECT id || '|' || sku || '|' || qty || '|' || updated_at \
             FROM {name} ORDER BY id"
        ),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.is_empty())
    .map(String::from)
    .collect()
}

/// (subject, version) pairs of the topic that appear more than once.
fn repeated_versions(events: &[Value]) -> Vec<(String, String)> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in events {
        let key = (
            e["subject"].as_str().unwrap_or_default().to_string(),
            e["data"]["updated_at"].to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn postgres_no_row_version_is_lost_or_duplicated_across_sigkills() {
    let started = Instant::now();
    let db = Database::create("batch");
    psql(
        &db.name,
        "CREATE TABLE stock (id int PRIMARY KEY, sku text NOT NULL, qty int NOT NULL, \
         updated_at timestamptz NOT NULL);
         CREATE TABLE stock_copy (id int PRIMARY KEY, sku text, qty int, updated_at timestamptz);",
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}]
pipelines:
  - name: stock-in
    source:
      sql:
        url: postgres://postgres@127.0.0.1:5432/{db}
        query: SELECT id, sku, qty, updated_at FROM stock WHERE updated_at >= :watermark
        watermark: {{column: updated_at, kind: timestamp, overlap: 3s}}
        schedule: {{cron: "* * * * * *"}}
        event: {{key: [id], version: updated_at, type: stock.level}}
    to: {TOPIC}
    batch_records_max: 20
  - name: stock-out
    from: {TOPIC}
    start: earliest
    batch_records_max: 50
    sink:
      postgres_upsert:
        url: postgres://postgres@127.0.0.1:5432/{db}
        table: public.stock_copy
        key: [id]
        version: updated_at
        columns: {{id: data.id, sku: data.sku, qty: data.qty, updated_at: data.updated_at}}
"#,
            db = db.name
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let steps = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (db, stop, steps) = (db.name.clone(), stop.clone(), steps.clone());
        rt.spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 user=postgres dbname={db}"),
                tokio_postgres::NoTls,
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                write_step(&mut client, n).await;
                steps.fetch_add(1, Ordering::Relaxed);
                n += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };

    let slow = rt.spawn(slow_writer(db.name.clone(), stop.clone()));

    let mut seen_at_kill = Vec::new();
    for i in 0..KILLS {
        // Runs start every second and take a fraction of it: kill at varied points.
        std::thread::sleep(Duration::from_millis(700 + (i as u64 * 137) % 900));
        seen_at_kill.push(server.all_events(TOPIC, PARTITIONS).len());
        server.restart_after_kill9();
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();
    rt.block_on(slow).unwrap();

    let source = table(&db.name, "stock");
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let copy = table(&db.name, "stock_copy");
        if copy == source {
            break;
        }
        if Instant::now() > deadline {
            let copy: BTreeSet<&String> = copy.iter().collect();
            let missing: Vec<_> = source
                .iter()
                .filter(|r| !copy.contains(r))
                .take(5)
                .collect();
            panic!(
                "stock_copy never matched stock ({} rows, want {}); e.g. missing {missing:?}; \
                 events at each kill {seen_at_kill:?}\n{}",
                copy.len(),
                source.len(),
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let events = server.all_events(TOPIC, PARTITIONS);
    let twice = repeated_versions(&events);
    assert!(
        twice.is_empty(),
        "(key, version) in the topic more than once: {:?}",
        &twice[..twice.len().min(5)]
    );
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "every event id once");
    assert!(
        seen_at_kill.first() != seen_at_kill.last() && seen_at_kill.iter().any(|n| *n > 0),
        "the kills landed while rows flowed: {seen_at_kill:?}"
    );
    eprintln!(
        "batch_crash postgres: {} rows, {} writer steps, {} events ({} versions), {KILLS} \
         kills, {:?}; events at each kill {seen_at_kill:?}",
        source.len(),
        steps.load(Ordering::Relaxed),
        events.len(),
        ids.len(),
        started.elapsed()
    );
    server.kill9();
}

fn mysql(sql: &str) -> String {
    let out = Command::new("mysql")
        .args([
            "-h",
            "127.0.0.1",
            "-P",
            "3306",
            "-u",
            "root",
            "-N",
            "-B",
            "test",
            "-e",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct MyTable(String);

impl Drop for MyTable {
    fn drop(&mut self) {
        let _ = Command::new("mysql")
            .args(["-h", "127.0.0.1", "-u", "root", "test", "-e"])
            .arg(format!("DROP TABLE IF EXISTS {}", self.0))
            .output();
    }
}

#[test]
fn mariadb_every_latest_version_arrives_once_across_sigkills() {
    let t = MyTable(format!("gbx_batch_crash_{}", std::process::id()));
    let name = &t.0;
    mysql(&format!(
        "CREATE TABLE {name} (id int PRIMARY KEY, sku varchar(40) NOT NULL, qty int NOT NULL, \
         updated_at datetime(6) NOT NULL)"
    ));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}]
pipelines:
  - name: stock-in
    source:
      sql:
        url: mariadb://root@127.0.0.1:3306/test
        query: SELECT id, sku, qty, updated_at FROM {name} WHERE updated_at >= :watermark
        watermark: {{column: updated_at, kind: timestamp, overlap: 3s}}
        schedule: {{cron: "* * * * * *"}}
        event: {{key: [id], version: updated_at, type: stock.level}}
    to: {TOPIC}
    batch_records_max: 20
"#
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, name) = (stop.clone(), name.clone());
        std::thread::spawn(move || {
            let mut n = 1;
            while !stop.load(Ordering::Relaxed) {
                // An insert, an update, a row at the newest time, a late row, in one client call.
                mysql(&format!(
                    "INSERT INTO {name} VALUES ({n}, 'sku-{n}', 0, NOW(6));
                     UPDATE {name} SET qty = qty + 1, updated_at = NOW(6) WHERE id = {h};
                     UPDATE {name} t JOIN (SELECT max(updated_at) m FROM {name}) x \
                         SET t.qty = t.qty + 100, t.updated_at = x.m \
                         WHERE t.id = {q} AND t.updated_at < x.m;
                     INSERT INTO {name} VALUES ({late}, 'late', 0, NOW(6) - INTERVAL 1 SECOND);",
                    h = n / 2,
                    q = n / 3,
                    late = -n
                ));
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for i in 0..MARIADB_KILLS {
        std::thread::sleep(Duration::from_millis(900 + (i as u64 * 211) % 700));
        server.restart_after_kill9();
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Every row's current version, as the source renders it.
    let want: BTreeSet<(String, String)> = mysql(&format!(
        "SELECT id, DATE_FORMAT(updated_at, '%Y-%m-%dT%H:%i:%s.%fZ') FROM {name}"
    ))
    .lines()
    .filter_map(|l| {
        let (id, t) = l.split_once('\t')?;
        Some((id.to_string(), format!("\"{t}\"")))
    })
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = server.all_events(TOPIC, PARTITIONS);
        let have: BTreeSet<(String, String)> = events
            .iter()
            .map(|e| {
                (
                    e["subject"].as_str().unwrap_or_default().to_string(),
                    e["data"]["updated_at"].to_string(),
                )
            })
            .collect();
        let missing: Vec<_> = want.difference(&have).take(5).collect();
        if missing.is_empty() {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "latest versions missing from the topic, e.g. {missing:?}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let twice = repeated_versions(&events);
    assert!(twice.is_empty(), "(key, version) more than once: {twice:?}");
    eprintln!(
        "batch_crash mariadb: {} rows, {} events, {MARIADB_KILLS} kills",
        want.len(),
        events.len()
    );
    server.kill9();
}
