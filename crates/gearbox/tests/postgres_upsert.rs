//! The upsert sink through SIGKILL, on the seed 003 scenario: `com.company.orders.created`
//! events build `silver.orders` by `order_id` in the real Postgres on 127.0.0.1:5432, while
//! `gearbox serve` is killed with SIGKILL 20 times mid-stream.
//!
//! The stream holds four versions of every order (later `time`, new amounts), late events (an
//! old version sent again, with a new id, after the newest), producer retries (the same ids sent
//! again), and events of another type that the pipeline's transform filters out. The table must
//! end equal to the model (each order at its newest version), with one row per order.
//!
//! Effectively-once is checked directly: an audit trigger records every row write, and no
//! (order, version) may be written twice across the kills. Then the sink's positions are deleted
//! (a full replay from offset 0) and the table must still equal the model.
//!
//! Each run uses its own schema, dropped at the end; the test talks to Postgres with `psql`.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Server, free_port};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const ORDERS: usize = 150;
const VERSIONS: usize = 4;
const KILLS: usize = 20;
const PIPELINE: &str = "orders-silver";

fn psql(sql: &str) -> String {
    support::pg::psql("test", sql).unwrap_or_else(|e| panic!("psql failed on {sql}: {e}"))
}

struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = Command::new("psql")
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
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.0))
            .output();
    }
}

/// Version `v` of order `n`: its time is `v` seconds after a base, its amount `n * 100 + v`.
fn order_event(n: usize, v: usize, id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/shop/orders",
        "type": "com.company.orders.created",
        "time": format!("2026-11-23T10:{:02}:{:02}.000Z", n / 60, (n % 60) / 20 * 20 + v),
        "partitionkey": format!("o-{n}"),
        "datacontenttype": "application/json",
        "data": {"order_id": format!("o-{n}"), "customer_id": format!("c-{}", n % 17), "amount_cents": n * 100 + v},
    })
}

/// The stream, in send order: every version of every order, interleaved across orders, a late
/// copy of version 1 after the newest, and shipped events the transform drops.
fn stream() -> Vec<Value> {
    let mut out = Vec::new();
    for v in 0..VERSIONS {
        for n in 0..ORDERS {
            out.push(order_event(n, v, &format!("o-{n}-v{v}")));
            if v == VERSIONS - 1 {
                out.push(order_event(n, 1, &format!("o-{n}-late")));
                if n % 3 == 0 {
                    let mut shipped = order_event(n, v, &format!("o-{n}-shipped"));
                    shipped["type"] = json!("com.company.orders.shipped");
                    shipped["data"]["amount_cents"] = json!(-1);
                    out.push(shipped);
                }
            }
        }
    }
    out
}

/// order_id → (customer_id, amount_cents, event_time as Postgres prints it in UTC).
fn table(schema: &str) -> BTreeMap<String, (String, i64, String)> {
    psql(&format!(
        "SET TIME ZONE 'UTC'; SELECT order_id, customer_id, amount_cents, \
         to_char(event_time, 'HH24:MI:SS') FROM {schema}.orders"
    ))
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (
            f[0].to_string(),
            (f[1].to_string(), f[2].parse().unwrap(), f[3].to_string()),
        )
    })
    .collect()
}

fn model() -> BTreeMap<String, (String, i64, String)> {
    (0..ORDERS)
        .map(|n| {
            let e = order_event(n, VERSIONS - 1, "x");
            let time = e["time"].as_str().unwrap();
            (
                format!("o-{n}"),
                (
                    format!("c-{}", n % 17),
                    (n * 100 + VERSIONS - 1) as i64,
                    time[11..19].to_string(),
                ),
            )
        })
        .collect()
}

fn wait_for_model(server: &Server, schema: &str, what: &str) {
    let want = model();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = table(schema);
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            let wrong: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .take(5)
                .map(|(k, v)| (k, v, got.get(k)))
                .collect();
            panic!(
                "{what}: the table never matched the model ({} rows, want {}); e.g. (id, want, \
                 got) {wrong:?}\n{}",
                got.len(),
                want.len(),
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_seed_003_table_is_built_effectively_once_across_sigkills() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = Schema(format!("gbx_upsert_{}_{nanos}", std::process::id()));
    let s = &schema.0;
    psql(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.orders (order_id text PRIMARY KEY, customer_id text, \
             amount_cents integer, event_time timestamptz, created_at timestamptz DEFAULT now());
         CREATE TABLE {s}.audit (order_id text, event_time timestamptz);
         CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO {s}.audit VALUES (NEW.order_id, NEW.event_time); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {s}.orders
             FOR EACH ROW EXECUTE FUNCTION {s}.audit();"
    ));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}]
pipelines:
  - name: {PIPELINE}
    from: {TOPIC}
    start: earliest
    transforms: ['select(.type == "com.company.orders.created")']
    batch_records_max: 40
    sink:
      postgres_upsert:
        url: postgres://postgres@127.0.0.1:5432/test
        table: {s}.orders
        key: [order_id]
        version: event_time
        columns:
          order_id: data.order_id
          customer_id: data.customer_id
          amount_cents: data.amount_cents
          event_time: time
        positions_table: {s}.positions
"#
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );

    // A producer that retries each batch until it is acknowledged (the same ids: the log
    // deduplicates), paced so the kills land mid-stream.
    let url = server.url.clone();
    let producer = std::thread::spawn(move || {
        for batch in stream().chunks(25) {
            let body = Value::Array(batch.to_vec()).to_string();
            loop {
                let sent = ureq::post(&format!("{url}/v1/topics/{TOPIC}/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .send(body.as_bytes());
                if matches!(&sent, Ok(r) if r.status() == 201) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(60));
        }
    });
    let mut rows_at_kill = Vec::new();
    for i in 0..KILLS {
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 37) % 200));
        rows_at_kill.push(
            psql(&format!("SELECT count(*) FROM {s}.audit"))
                .trim()
                .to_string(),
        );
        server.restart_after_kill9();
    }
    producer.join().unwrap();
    wait_for_model(&server, s, "after the kills");

    let twice = psql(&format!(
        "SELECT order_id || ' ' || event_time FROM {s}.audit GROUP BY order_id, event_time \
         HAVING count(*) > 1 LIMIT 5"
    ));
    assert!(
        twice.trim().is_empty(),
        "row versions written twice across the kills: {twice}\n(audit rows at each kill: \
         {rows_at_kill:?})"
    );
    let writes: usize = psql(&format!("SELECT count(*) FROM {s}.audit"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        writes >= ORDERS,
        "every order was written at least once ({writes} writes)"
    );
    let progressed = rows_at_kill.iter().filter(|n| n.as_str() != "0").count();
    assert!(
        progressed > 0 && rows_at_kill.first() != rows_at_kill.last(),
        "the kills landed while the sink was writing: {rows_at_kill:?}"
    );
    let positions = psql(&format!(
        "SELECT partition || ':' || next_offset FROM {s}.positions WHERE sink = '{PIPELINE}' \
         ORDER BY partition"
    ));
    let total: u64 = positions
        .lines()
        .filter_map(|l| l.split(':').nth(1)?.parse::<u64>().ok())
        .sum();
    let stored = server.all_events(TOPIC, PARTITIONS).len() as u64;
    assert_eq!(
        total, stored,
        "the stored positions cover every event of the topic: {positions}"
    );

    // Caught up: `/metrics` says the sink has nothing left to apply.
    let metrics = server.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("gearbox_sink_lag_events{{pipeline=\"{PIPELINE}\"}} 0")),
        "no zero lag gauge in:\n{metrics}"
    );

    // A full replay from offset 0: forget the positions, restart. Re-applying everything in
    // log order leaves the table as it was (the version guard keeps the newest).
    psql(&format!(
        "DELETE FROM {s}.positions WHERE sink = '{PIPELINE}'"
    ));
    psql(&format!(
        "UPDATE {s}.orders SET amount_cents = -5 WHERE order_id = 'o-0'"
    ));
    server.restart_after_kill9();
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&format!(
        "SELECT coalesce(sum(next_offset), 0) FROM {s}.positions WHERE sink = '{PIPELINE}'"
    ))
    .trim()
        != stored.to_string()
    {
        assert!(
            Instant::now() < deadline,
            "the replay never finished\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_model(&server, s, "after a replay from offset 0");
    let rows: usize = psql(&format!("SELECT count(*) FROM {s}.orders"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rows, ORDERS, "one row per order");
}
