//! The `sql` batch job against the real Postgres (127.0.0.1:5432, database `test`) and MariaDB
//! (127.0.0.1:3306, database `test`): column types to JSON, the watermark with an overlap
//! (rows equal to the watermark and late rows read again with the same ids), rejected rows
//! naming the query row and field, streaming past the row buffer, and error kinds.

#![cfg(feature = "sql")]

use gearbox_connect::batch::{BatchJob, Item};
use gearbox_connect::source::SourceError;
use gearbox_connectors::batch::sql::{ROWS_BUFFER, SqlConfig, SqlJob};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const MY: &str = "mysql://root@127.0.0.1:3306/test";
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(tag: &str) -> String {
    format!(
        "gbx_{tag}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn psql(sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

/// Drops a table when the test ends, pass or fail.
struct Table(String, fn(&str) -> String);

impl Drop for Table {
    fn drop(&mut self) {
        (self.1)(&format!("DROP TABLE IF EXISTS {}", self.0));
    }
}

fn job(url: &str, query: &str, watermark: Value, key: &str) -> SqlJob {
    let c: SqlConfig = serde_json::from_value(json!({
        "url": url,
        "query": query,
        "watermark": watermark,
        "schedule": {"cron": "* * * * * *"},
        "event": {"key": [key], "version": "updated_at", "type": "stock.level"},
    }))
    .unwrap();
    SqlJob::new(c, "stock").unwrap()
}

async fn run(job: &mut SqlJob, from: Option<&str>, max: usize) -> (Vec<Item>, Option<String>) {
    job.start(from.map(Into::into)).await.unwrap();
    let mut all = Vec::new();
    loop {
        let items = job.next(max).await.unwrap();
        assert!(items.len() <= max);
        if items.is_empty() {
            break;
        }
        all.extend(items);
    }
    (all, job.watermark())
}

fn events(items: &[Item]) -> Vec<&Value> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(e),
            Item::Rejected(_) => None,
        })
        .collect()
}

fn errors(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Rejected(r) => Some(r.error.clone()),
            Item::Event(_) => None,
        })
        .collect()
}

fn ids(items: &[Item]) -> BTreeSet<String> {
    events(items)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn postgres_columns_become_json() {
    let t = Table(unique("types"), psql);
    psql(&format!(
        "CREATE TABLE {0} (id int, b bool, s smallint, big bigint, r real, d double precision, \
         n numeric(12,3), txt text, vc varchar(10), ch char(3), ts timestamp, tz timestamptz, \
         day date, tod time, j json, jb jsonb, u uuid, raw bytea, nothing text, updated_at bigint);
         INSERT INTO {0} VALUES (1, true, -2, 9007199254740993, 1.5, 2.25, -1234.5, 'héllo', 'v', \
         'ab', '2026-11-24 10:00:00.123456', '2026-11-24 12:00:00+02', '2026-11-24', '13:14:15', \
         '{{\"a\": [1]}}', '{{\"b\": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', \
         NULL, 5)",
        t.0
    ));
    let mut j = job(
        PG,
        &format!("SELECT * FROM {} WHERE updated_at >= :watermark", t.0),
        json!({"column": "updated_at", "kind": "integer"}),
        "id",
    );
    let (items, watermark) = run(&mut j, None, 10).await;
    assert_eq!(errors(&items), Vec::<String>::new());
    assert_eq!(
        events(&items)[0]["data"],
        json!({
            "id": 1, "b": true, "s": -2, "big": 9_007_199_254_740_993_i64, "r": 1.5, "d": 2.25,
            "n": "-1234.500", "txt": "héllo", "vc": "v", "ch": "ab ",
            "ts": "2026-11-24T10:00:00.123456Z", "tz": "2026-11-24T10:00:00.000000Z",
            "day": "2026-11-24", "tod": "13:14:15", "j": {"a": [1]}, "jb": {"b": null},
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "raw": "AP8=", "nothing": null,
            "updated_at": 5,
        })
    );
    assert_eq!(events(&items)[0]["origin"], "query row 1");
    assert_eq!(events(&items)[0]["source"], "gearbox/stock");
    assert_eq!(watermark.as_deref(), Some("5"));
}

#[tokio::test]
async fn postgres_overlap_rereads_equal_and_late_rows_with_the_same_ids() {
    let t = Table(unique("stock"), psql);
    psql(&format!(
        "CREATE TABLE {0} (id int PRIMARY KEY, sku text, qty int, updated_at timestamptz);
         INSERT INTO {0} VALUES (1, 'a', 1, '2026-11-24T10:00:00Z'), \
         (2, 'b', 1, '2026-11-24T10:00:05Z'), (3, 'c', 1, '2026-11-24T10:00:05Z')",
        t.0
    ));
    let mut j = job(
        PG,
        &format!(
            "SELECT id, sku, qty, updated_at FROM {} WHERE updated_at >= :watermark ORDER BY id",
            t.0
        ),
        json!({"column": "updated_at", "kind": "timestamp", "overlap": "3s"}),
        "id",
    );
    let (first, w1) = run(&mut j, None, 2).await;
    assert_eq!(events(&first).len(), 3);
    assert_eq!(w1.as_deref(), Some("2026-11-24T10:00:05.000000Z"));

    // After the run: a row with exactly the watermark's time, a late row 2 s behind it (inside
    // the overlap), a late row 10 s behind (outside), and a new version of row 2.
    psql(&format!(
        "INSERT INTO {0} VALUES (4, 'd', 1, '2026-11-24T10:00:05Z'), \
         (5, 'e', 1, '2026-11-24T10:00:03Z'), (6, 'f', 1, '2026-11-24T09:59:55Z');
         UPDATE {0} SET qty = 2, updated_at = '2026-11-24T10:00:07Z' WHERE id = 2",
        t.0
    ));
    let (second, w2) = run(&mut j, w1.as_deref(), 2).await;
    let subjects: BTreeSet<String> = events(&second)
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subjects,
        ["2", "3", "4", "5"].iter().map(|s| s.to_string()).collect(),
        "equal and late rows within the overlap are read; the one 10 s late is not"
    );
    assert_eq!(w2.as_deref(), Some("2026-11-24T10:00:07.000000Z"));
    // Row 3, read again, is the same event; row 2's new version is a new one.
    let again: BTreeSet<_> = ids(&second).intersection(&ids(&first)).cloned().collect();
    assert_eq!(again.len(), 1);
    let row3 = events(&first).iter().find(|e| e["subject"] == "3").unwrap()["id"].clone();
    assert!(again.contains(row3.as_str().unwrap()));

    // A run with nothing new keeps the watermark where it was.
    psql(&format!("DELETE FROM {}", t.0));
    let (none, w3) = run(&mut j, w2.as_deref(), 2).await;
    assert!(none.is_empty());
    assert_eq!(w3, w2);
}

#[tokio::test]
async fn postgres_null_keys_are_rejected_by_query_row_and_field() {
    let t = Table(unique("nulls"), psql);
    psql(&format!(
        "CREATE TABLE {0} (id int, updated_at bigint);
         INSERT INTO {0} VALUES (1, 1), (NULL, 2), (3, NULL), (4, 4)",
        t.0
    ));
    let mut j = job(
        PG,
        &format!(
            "SELECT * FROM {} WHERE coalesce(updated_at, 0) >= :watermark ORDER BY coalesce(updated_at, 3)",
            t.0
        ),
        json!({"column": "updated_at", "kind": "integer"}),
        "id",
    );
    let (items, w) = run(&mut j, None, 10).await;
    assert_eq!(
        errors(&items),
        vec![
            "query row 2: key field `id` is null".to_string(),
            "query row 3: watermark column `updated_at` is null or missing".to_string(),
        ]
    );
    let Item::Rejected(r) = &items[1] else {
        panic!("row 2 is rejected")
    };
    assert_eq!(
        r.record,
        json!({"origin": "query row 2", "record": {"id": null, "updated_at": 2}})
    );
    assert_eq!(events(&items).len(), 2);
    assert_eq!(w.as_deref(), Some("4"));
}

#[tokio::test]
async fn postgres_rows_stream_past_the_buffer_in_batches_of_max() {
    let total = ROWS_BUFFER * 8;
    let mut j = job(
        PG,
        &format!(
            "SELECT n AS id, n AS updated_at FROM generate_series(1, {total}) n \
             WHERE n > :watermark::bigint"
        ),
        json!({"column": "updated_at", "kind": "integer"}),
        "id",
    );
    j.start(None).await.unwrap();
    let mut n = 0;
    let mut calls = 0;
    loop {
        let items = j.next(100).await.unwrap();
        assert!(items.len() <= 100);
        if items.is_empty() {
            break;
        }
        n += items.len();
        calls += 1;
    }
    assert_eq!(n, total);
    assert!(calls >= total / 100);
    assert_eq!(j.watermark(), Some(total.to_string()));
}

#[tokio::test]
async fn bad_sql_is_fatal_with_the_servers_message_and_a_dead_server_is_transient() {
    let mut j = job(
        PG,
        "SELECT * FROM gbx_no_such_table WHERE x > :watermark",
        json!({"column": "x", "kind": "integer"}),
        "x",
    );
    j.start(None).await.unwrap();
    match j.next(10).await {
        Err(SourceError::Fatal { message }) => assert!(
            message.contains("relation \"gbx_no_such_table\" does not exist"),
            "{message}"
        ),
        other => panic!("want fatal, got {other:?}"),
    }
    let mut j = job(
        "postgres://postgres@127.0.0.1:1/test",
        "SELECT 1 AS x WHERE 1 > :watermark",
        json!({"column": "x", "kind": "integer"}),
        "x",
    );
    j.start(None).await.unwrap();
    assert!(matches!(
        j.next(10).await,
        Err(SourceError::Transient { .. })
    ));
    let mut j = job(
        "mysql://root@127.0.0.1:1/test",
        "SELECT 1 AS x WHERE 1 > :watermark",
        json!({"column": "x", "kind": "integer"}),
        "x",
    );
    j.start(None).await.unwrap();
    assert!(matches!(
        j.next(10).await,
        Err(SourceError::Transient { .. })
    ));
    let mut j = job(
        MY,
        "SELEKT 1 WHERE :watermark",
        json!({"column": "x", "kind": "integer"}),
        "x",
    );
    j.start(None).await.unwrap();
    match j.next(10).await {
        Err(SourceError::Fatal { message }) => {
            assert!(
                message.contains("You have an error in your SQL syntax"),
                "{message}"
            );
        }
        other => panic!("want fatal, got {other:?}"),
    }
}

#[tokio::test]
async fn mariadb_types_overlap_and_rejected_rows() {
    let t = Table(unique("my"), mysql);
    mysql(&format!(
        "CREATE TABLE {0} (id int, sku varchar(20), qty int unsigned, price decimal(10,2), \
         ok boolean, score double, day date, note text, blob_col varbinary(4), doc json, \
         updated_at datetime(6));
         INSERT INTO {0} VALUES \
         (1, 'a', 3, 12.50, true, 0.5, '2026-11-24', 'n', x'00ff', '{{\"k\": 1}}', '2026-11-24 10:00:00'), \
         (2, NULL, 1, 1.00, false, 1, '2026-11-24', NULL, NULL, NULL, '2026-11-24 10:00:05'), \
         (3, 'c', 1, 1.00, false, 1, '2026-11-24', NULL, NULL, NULL, '2026-11-24 10:00:05')",
        t.0
    ));
    let mut j = job(
        "mariadb://root@127.0.0.1:3306/test",
        &format!(
            "SELECT * FROM {} WHERE updated_at >= :watermark ORDER BY id",
            t.0
        ),
        json!({"column": "updated_at", "kind": "timestamp", "overlap": 3000}),
        "sku",
    );
    let (items, w1) = run(&mut j, None, 10).await;
    assert_eq!(
        errors(&items),
        vec!["query row 2: key field `sku` is null".to_string()]
    );
    let ev = events(&items);
    assert_eq!(
        ev[0]["data"],
        json!({
            "id": 1, "sku": "a", "qty": 3, "price": "12.50", "ok": 1, "score": 0.5,
            "day": "2026-11-24", "note": "n", "blob_col": "AP8=", "doc": "{\"k\": 1}",
            "updated_at": "2026-11-24T10:00:00.000000Z",
        })
    );
    assert_eq!(w1.as_deref(), Some("2026-11-24T10:00:05.000000Z"));

    // An equal-time row and a late row inside the overlap are read next time; row 3 again with
    // the same id.
    mysql(&format!(
        "INSERT INTO {0} VALUES (4, 'd', 1, 1, 0, 1, '2026-11-24', NULL, NULL, NULL, '2026-11-24 10:00:05'), \
         (5, 'e', 1, 1, 0, 1, '2026-11-24', NULL, NULL, NULL, '2026-11-24 10:00:03'), \
         (6, 'f', 1, 1, 0, 1, '2026-11-24', NULL, NULL, NULL, '2026-11-24 09:00:00')",
        t.0
    ));
    let (second, w2) = run(&mut j, w1.as_deref(), 10).await;
    let subjects: Vec<_> = events(&second)
        .iter()
        .map(|e| e["subject"].clone())
        .collect();
    assert_eq!(subjects, vec![json!("c"), json!("d"), json!("e")]);
    assert_eq!(ids(&second).intersection(&ids(&items)).count(), 1);
    assert_eq!(w2, w1);
}

#[test]
fn validation_names_every_field() {
    let c: SqlConfig = serde_json::from_value(json!({
        "url": "http://x",
        "query": "SELECT 1",
        "watermark": {"column": "", "kind": "integer", "initial": "x", "overlap": "5s"},
        "schedule": {"cron": "* * * * * *", "history_max": 0},
        "event": {"key": ["id"], "type": "t"},
    }))
    .unwrap();
    let paths: Vec<String> = c.validate().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        paths,
        vec![
            "url",
            "query",
            "watermark.column",
            "watermark.initial",
            "watermark.overlap",
            "schedule.history_max",
        ]
    );
    let c: SqlConfig = serde_json::from_value(json!({
        "url": PG,
        "query": "SELECT 1 WHERE now() > :watermark",
        "watermark": {"column": "t", "kind": "timestamp", "overlap": "30d"},
        "schedule": {"cron": "* * * * * *"},
        "event": {"key": ["id"], "type": "t"},
    }))
    .unwrap();
    assert_eq!(
        c.validate(),
        vec![(
            "watermark.overlap".to_string(),
            "\"30d\": the unit must be ms, s, m or h".to_string()
        )]
    );
}
