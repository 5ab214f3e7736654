//! The seed 000 retail story, end to end through `gearbox serve`, the CLI, the real Postgres on
//! 127.0.0.1:5432 and DuckDB (from the test virtualenv):
//!
//! - a nightly-style CSV inventory export, on a cron schedule compressed to every two seconds,
//!   goes into the `inventory` topic (one malformed row goes to the DLQ with its file and line);
//! - live order events flow into `orders` over the HTTP API;
//! - both land by upsert in Postgres and by micro-batch in Parquet (read back with DuckDB);
//! - a rerun of the same export (the same file exported again under a new name, then a
//!   backfill from the start) adds no row anywhere: no event, no Postgres row, no Parquet row;
//! - a changed export adds exactly the changed versions;
//! - the runs show in the API, the CLI and the dashboard; a replay into the Postgres pipeline
//!   leaves the table as it was;
//! - reconciliation reports lag while a micro-batch is pending, then a match, and a Parquet file
//!   deleted by hand as unexplained with the missing ids (exit status 2, and the metric).

mod support;

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{GEARBOX, Server, event, free_port, run_python};

const STORES: usize = 2;
const SKUS: usize = 100;
/// The malformed row's line in the first export (header is line 1).
const BAD_LINE: usize = 57;

fn psql(sql: &str) -> String {
    support::pg::psql("test", sql).unwrap_or_else(|e| panic!("psql failed on {sql}: {e}"))
}

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = support::pg::psql("test", &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0));
    }
}

/// The export: every (store, sku) with a quantity; `changed` skus get a new quantity and a
/// newer `updated_at`. Line `BAD_LINE` of the first export has a quantity that is not a number.
fn export(changed: &BTreeSet<usize>, with_bad_row: bool) -> String {
    let mut out = String::from("store,sku,qty,updated_at\n");
    let mut line = 1;
    for store in 0..STORES {
        for sku in 0..SKUS {
            line += 1;
            let (qty, at) = if changed.contains(&sku) && store == 0 {
                (sku * 3 + 1000, "2026-11-24T02:00:00Z")
            } else {
                (sku * 3 + store, "2026-11-23T02:00:00Z")
            };
            if with_bad_row && line == BAD_LINE {
                out.push_str(&format!("s{store},sku-{sku},lots,{at}\n"));
            } else {
                out.push_str(&format!("s{store},sku-{sku},{qty},{at}\n"));
            }
        }
    }
    out
}

fn cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(GEARBOX)
        .args(["--server", &server.url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_for(server: &Server, what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(table: &str) -> usize {
    psql(&format!("SELECT count(*) FROM {table}"))
        .trim()
        .parse()
        .unwrap()
}

fn duck(server: &Server, sql: &str) -> Value {
    let out = run_python("duckdb_sql.py", &[sql], server);
    serde_json::from_str(out.trim()).unwrap()
}

fn parquet_glob(dir: &Path) -> String {
    format!("{}/**/*.parquet", dir.display())
}

/// The runs of the export pipeline, newest first.
fn runs(server: &Server) -> Vec<Value> {
    let (status, body) = server.get("/v1/pipelines/inventory-export/runs");
    assert_eq!(status, 200, "{body}");
    body["runs"].as_array().cloned().unwrap_or_default()
}

/// Waits until a run newer than `after` (by id) has read rows and finished ok; returns it. (Runs
/// start every two seconds; one may find nothing new, or a file still settling.)
fn next_ok_run(server: &Server, after: Option<u64>) -> Value {
    let mut found = None;
    wait_for(server, "an export run", 30, || {
        found = runs(server).into_iter().find(|r| {
            r["outcome"] == "ok"
                && r["rows"].as_u64() > Some(0)
                && after.is_none_or(|a| r["id"].as_u64() > Some(a))
        });
        found.is_some()
    });
    found.unwrap()
}

fn end_offsets(server: &Server, topic: &str) -> Vec<u64> {
    let (_, t) = server.get(&format!("/v1/topics/{topic}"));
    t["partition_offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .collect()
}

fn publish_orders(server: &Server, range: std::ops::Range<usize>) {
    let events: Vec<Value> = range
        .map(|n| {
            let mut e = event(
                &format!("order-{n}"),
                "/shop/orders",
                json!({"order_id": format!("o-{n}"), "store": format!("s{}", n % STORES),
                       "sku": format!("sku-{}", n % SKUS), "qty": 1 + n % 3, "amount_cents": 100 + n}),
            );
            e["type"] = json!("retail.order.created");
            e["time"] = json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            e
        })
        .collect();
    let (status, body) = server.post_raw(
        "/v1/topics/orders/events",
        "application/cloudevents-batch+json",
        &[],
        Value::Array(events).to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
}

fn reconcile(server: &Server, pipeline: &str) -> (i32, Value, String) {
    let (code, out, err) = cli(
        server,
        &[
            "reconcile",
            pipeline,
            "--sum",
            "data.qty",
            "--by",
            "data.store",
        ],
    );
    let report = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (code, report, err)
}

#[test]
fn the_retail_story_lands_once_everywhere_and_reconciles() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = Schema(format!("gbx_retail_{}_{nanos}", std::process::id()));
    let s = &schema.0;
    psql(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.inventory (store text, sku text, qty bigint, updated_at timestamptz,
             PRIMARY KEY (store, sku));
         CREATE TABLE {s}.orders (order_id text PRIMARY KEY, store text, sku text, qty bigint,
             amount_cents bigint);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let exports = dir.path().join("exports");
    let lake = dir.path().join("lake");
    std::fs::create_dir_all(&exports).unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics:
  - {{ name: inventory, partitions: 2 }}
  - {{ name: orders, partitions: 2 }}
pipelines:
  - name: inventory-export
    source:
      files:
        path: {exports}/inventory-*.csv
        watermark: name
        settle_ms: 200
        types: {{ qty: integer }}
        schedule: {{ cron: "*/2 * * * * *" }}
        event: {{ key: [store, sku], version: updated_at, type: retail.inventory.level }}
    to: inventory
  - name: inventory-pg
    from: inventory
    start: earliest
    sink:
      postgres_upsert:
        url: postgres://postgres@127.0.0.1:5432/test
        table: {s}.inventory
        key: [store, sku]
        version: updated_at
        columns: {{ store: data.store, sku: data.sku, qty: data.qty, updated_at: data.updated_at }}
        positions_table: {s}.inventory_positions
  - name: orders-pg
    from: orders
    start: earliest
    sink:
      postgres_upsert:
        url: postgres://postgres@127.0.0.1:5432/test
        table: {s}.orders
        key: [order_id]
        columns: {{ order_id: data.order_id, store: data.store, sku: data.sku, qty: data.qty,
                    amount_cents: data.amount_cents }}
        positions_table: {s}.orders_positions
  - name: inventory-lake
    from: inventory
    start: earliest
    sink:
      parquet:
        path: {lake}/inventory
        interval_ms: 300
        columns: {{ store: {{ path: data.store, type: string }}, qty: {{ path: data.qty, type: int64 }} }}
  - name: orders-lake
    from: orders
    start: earliest
    sink:
      parquet:
        path: {lake}/orders
        interval_ms: 2500
        columns: {{ store: {{ path: data.store, type: string }}, qty: {{ path: data.qty, type: int64 }} }}
"#,
            exports = exports.display(),
            lake = lake.display(),
        ),
    )
    .unwrap();
    let server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );
    let rows = STORES * SKUS;

    // The nightly export arrives; live orders flow in.
    std::fs::write(
        exports.join("inventory-20261123.csv"),
        export(&BTreeSet::new(), true),
    )
    .unwrap();
    publish_orders(&server, 0..60);
    let first = next_ok_run(&server, None);
    assert_eq!(first["rows"], rows, "{first}");
    assert_eq!(first["appended"], rows - 1, "{first}");
    assert_eq!(first["dead_lettered"], 1, "{first}");
    assert_eq!(
        first["watermark_after"], "inventory-20261123.csv",
        "{first}"
    );
    let (_, dlq) = server.get("/v1/topics/inventory/dlq");
    let dlq = dlq["events"].as_array().unwrap().clone();
    assert_eq!(dlq.len(), 1);
    let why = dlq[0]["event"]["dlqerror"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains(&format!("inventory-20261123.csv:{BAD_LINE}")) && why.contains("qty"),
        "the DLQ names the file, line and column: {why}"
    );

    wait_for(&server, "the Postgres tables", 30, || {
        count(&format!("{s}.inventory")) == rows - 1 && count(&format!("{s}.orders")) == 60
    });
    let inventory_glob = parquet_glob(&lake.join("inventory"));
    let duck_count = |glob: &str| -> u64 {
        duck(
            &server,
            &format!("SELECT count(*) FROM read_parquet('{glob}')"),
        )[0][0]
            .as_u64()
            .unwrap()
    };
    wait_for(&server, "the inventory Parquet files", 30, || {
        !parquet_files(&lake.join("inventory")).is_empty()
            && duck_count(&inventory_glob) == (rows - 1) as u64
    });
    let pg_sum = psql(&format!("SELECT sum(qty) FROM {s}.inventory"))
        .trim()
        .to_string();
    let lake_sum = duck(
        &server,
        &format!("SELECT sum(qty) FROM read_parquet('{inventory_glob}')"),
    )[0][0]
        .to_string();
    assert_eq!(pg_sum, lake_sum, "Postgres and Parquet agree on the stock");
    let offsets_after_first = end_offsets(&server, "inventory");
    assert_eq!(offsets_after_first.iter().sum::<u64>(), (rows - 1) as u64);

    // The same export again under a new name: every event is a duplicate.
    std::fs::write(
        exports.join("inventory-20261124.csv"),
        export(&BTreeSet::new(), true),
    )
    .unwrap();
    let rerun = next_ok_run(&server, first["id"].as_u64());
    assert_eq!(rerun["appended"], 0, "{rerun}");
    assert_eq!(rerun["duplicates"], rows - 1, "{rerun}");
    // A backfill from the beginning reads both files again: still nothing new.
    let (code, out, err) = cli(&server, &["backfill", "inventory-export", "--from", ""]);
    assert_eq!(code, 0, "{out}{err}");
    let backfill = next_ok_run(&server, rerun["id"].as_u64());
    assert_eq!(backfill["trigger"], "backfill", "{backfill}");
    assert_eq!(backfill["rows"], 2 * rows, "{backfill}");
    assert_eq!(backfill["appended"], 0, "{backfill}");
    assert_eq!(end_offsets(&server, "inventory"), offsets_after_first);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(count(&format!("{s}.inventory")), rows - 1);
    assert_eq!(duck_count(&inventory_glob), (rows - 1) as u64);

    // The next export changes ten quantities: ten new versions, everywhere.
    let changed: BTreeSet<usize> = (0..10).collect();
    std::fs::write(
        exports.join("inventory-20261125.csv"),
        export(&changed, false),
    )
    .unwrap();
    let third = next_ok_run(&server, backfill["id"].as_u64());
    // The bad row of the first export is fixed in this one: it is new too.
    assert_eq!(third["appended"], changed.len() + 1, "{third}");
    wait_for(&server, "the changed stock in Postgres", 30, || {
        psql(&format!(
            "SELECT qty FROM {s}.inventory WHERE store = 's0' AND sku = 'sku-3'"
        ))
        .trim()
            == "1009"
    });
    assert_eq!(count(&format!("{s}.inventory")), rows);
    wait_for(&server, "the changed stock in Parquet", 30, || {
        duck_count(&inventory_glob) == (rows + changed.len()) as u64
    });

    // The runs, through the CLI and the dashboard.
    let (code, out, err) = cli(&server, &["runs", "inventory-export"]);
    assert_eq!(code, 0, "{err}");
    let listed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed["cron"], "*/2 * * * * *");
    assert!(listed["runs"].as_array().unwrap().len() >= 4);
    let page = ureq::get(&format!(
        "{}/ui/pipelines/inventory-export/runs",
        server.url
    ))
    .call()
    .unwrap()
    .body_mut()
    .read_to_string()
    .unwrap();
    assert!(page.contains("backfill") && page.contains("inventory-20261125.csv"));
    let (_, p) = server.get("/v1/pipelines/inventory-export");
    assert_eq!(p["schedule"]["watermark"], "inventory-20261125.csv", "{p}");

    // A replay into the Postgres pipeline changes nothing: the upsert is idempotent.
    let before = psql(&format!(
        "SELECT string_agg(store || sku || qty, ',' ORDER BY store, sku) FROM {s}.inventory"
    ));
    let (code, out, err) = cli(
        &server,
        &["replay", "--into", "inventory-pg", "--offset", "0"],
    );
    assert_eq!(code, 0, "{out}{err}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(store || sku || qty, ',' ORDER BY store, sku) FROM {s}.inventory"
        )),
        before
    );

    // Reconciliation: orders are flushed every 2.5 s; right after a publish the difference is
    // lag, after the flush it is a match.
    wait_for(&server, "the first orders in Parquet", 30, || {
        reconcile(&server, "orders-lake").1["status"] == "match"
    });
    publish_orders(&server, 60..100);
    let (code, report, err) = reconcile(&server, "orders-lake");
    assert_eq!(code, 0, "lag is not an error: {err}");
    assert_eq!(report["status"], "lag", "{report}");
    assert!(report["lag"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["unexplained"], 0);
    wait_for(&server, "the orders flush", 30, || {
        reconcile(&server, "orders-lake").1["status"] == "match"
    });
    let (code, report, _) = reconcile(&server, "orders-lake");
    assert_eq!(code, 0);
    let stream_qty: f64 = report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["stream"]["sums"]["data.qty"].as_f64().unwrap())
        .sum();
    let pg_qty: f64 = psql(&format!("SELECT sum(qty) FROM {s}.orders"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(stream_qty, pg_qty, "{report}");

    // A file deleted by hand: unexplained, with the ids it held.
    // Not the newest file of its partition: that one's end is the sink's committed position.
    let files = parquet_files(&lake.join("orders"));
    let name = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let victim = files
        .iter()
        .find(|f| {
            let prefix = name(f).split('-').take(2).collect::<Vec<_>>().join("-");
            files
                .iter()
                .filter(|g| name(g).starts_with(&format!("{prefix}-")))
                .count()
                >= 2
        })
        .unwrap_or_else(|| panic!("two flushes leave two files in a partition: {files:?}"));
    let lost = duck(
        &server,
        &format!(
            "SELECT id FROM read_parquet('{}') ORDER BY id",
            victim.display()
        ),
    );
    let lost: BTreeSet<String> = lost
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_string())
        .collect();
    assert!(!lost.is_empty());
    std::fs::remove_file(victim).unwrap();
    let (code, report, err) = reconcile(&server, "orders-lake");
    assert_eq!(code, 2, "unexplained differences exit 2: {err}");
    assert_eq!(report["status"], "unexplained", "{report}");
    assert_eq!(report["unexplained"], lost.len(), "{report}");
    let samples: BTreeSet<String> = report["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["missing"]["samples"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert!(
        !samples.is_empty() && samples.is_subset(&lost),
        "sample ids {samples:?} come from the deleted file {lost:?}"
    );
    let metrics = server.metrics();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("gearbox_reconcile_unexplained{pipeline=\"orders-lake\"}"))
        .unwrap_or_else(|| panic!("no reconcile metric in\n{metrics}"));
    assert!(line.ends_with(&format!(" {}", lost.len())), "{line}");
}

/// The Parquet files under `dir` (every date directory), sorted by file name: per partition,
/// in offset order.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| p.file_name().map(std::ffi::OsStr::to_os_string));
    out
}
