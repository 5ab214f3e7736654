//! The CDC source against the real Postgres 15 on 127.0.0.1:5432 (`wal_level = logical`).
//!
//! Every test uses its own schema, tables, slot and publication (process id, clock, counter),
//! and drops them at the end, also when it fails: the server allows 10 slots in all. Conditions
//! are polled with a deadline, never slept on.

#![cfg(feature = "postgres")]

use gearbox_connect::source::{RecordOutcome, Source, SourceError};
use gearbox_connectors::postgres::cdc::{CdcConfig, PostgresCdc, UNAVAILABLE_VALUE};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// How long any one condition may take to come true.
const DEADLINE_MS: u64 = 20_000;

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One test of this file at a time: the WAL is the server's, shared by every slot, so a test
/// that measures lag or waits for its slot to go idle would see the WAL its neighbours write.
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

fn config(f: &Fixture, tables: &[&str], extra: Value) -> CdcConfig {
    let tables: Vec<String> = tables.iter().map(|t| format!("{}.{t}", f.schema)).collect();
    let mut value = json!({
        "url": URL,
        "slot": f.slot,
        "publication": f.publication,
        "tables": tables,
        "snapshot": "never",
        "status_interval_ms": 500,
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    serde_json::from_value(value).expect("test config deserializes")
}

async fn opened(config: CdcConfig, cursor: Option<String>) -> PostgresCdc {
    let mut source = PostgresCdc::new(config).expect("valid config");
    source.open(cursor).await.expect("open");
    source
}

/// Reads and acks batches until at least `n` events arrived; returns them and the last cursor.
async fn collect(
    source: &mut PostgresCdc,
    n: usize,
    records_max: usize,
) -> (Vec<Value>, Option<String>) {
    let mut events = Vec::new();
    let mut cursor = None;
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    while events.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} events: {events:#?}",
            events.len()
        );
        let batch = read_batch(source, records_max).await;
        assert!(batch.records.len() <= records_max);
        let outcomes = vec![RecordOutcome::default(); batch.records.len()];
        events.extend(batch.records);
        cursor = batch.cursor.or(cursor);
        source.ack(batch.token, outcomes).await.expect("ack");
    }
    (events, cursor)
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn inserts_updates_and_deletes_become_debezium_events() {
    run("changes", |f| async move {
        f.exec(&format!(
            "CREATE TABLE {s}.accounts (id int PRIMARY KEY, name text, balance numeric(30,10), meta jsonb, big text);
             ALTER TABLE {s}.accounts ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE {s}.notes (id int, lang text, body text, ok bool, PRIMARY KEY (id, lang));
             ALTER TABLE {s}.notes REPLICA IDENTITY FULL;",
            s = f.schema
        ))
        .await;
        let mut source = opened(config(&f, &["accounts", "notes"], json!({})), None).await;
        let big = "x".repeat(10_000);
        f.exec(&format!(
            "INSERT INTO {s}.accounts VALUES (1, 'ann', 12345678901234567890.0123456789, '{{\"vip\": true}}', '{big}');
             INSERT INTO {s}.notes VALUES (7, 'en', 'hello', true);
             BEGIN; UPDATE {s}.accounts SET name = 'anne' WHERE id = 1; UPDATE {s}.notes SET body = 'hi' WHERE id = 7; COMMIT;
             UPDATE {s}.accounts SET id = 2 WHERE id = 1;
             DELETE FROM {s}.accounts WHERE id = 2;
             DELETE FROM {s}.notes WHERE id = 7;",
            s = f.schema
        ))
        .await;
        let (events, cursor) = collect(&mut source, 7, 100).await;
        assert!(cursor.unwrap().starts_with("lsn:"));
        let ops: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e["pgtable"].as_str().unwrap(), e["pgop"].as_str().unwrap()))
            .collect();
        assert_eq!(
            ops,
            [
                ("accounts", "c"),
                ("notes", "c"),
                ("accounts", "u"),
                ("notes", "u"),
                ("accounts", "u"),
                ("accounts", "d"),
                ("notes", "d")
            ]
        );
        for e in &events {
            assert_eq!(e["type"], "io.debezium.postgresql.datachangeevent");
            assert_eq!(e["source"], "/gearbox/postgres/test");
            assert_eq!(e["pgschema"], f.schema.as_str());
            assert_eq!(e["subject"], format!("{}.{}", f.schema, e["pgtable"].as_str().unwrap()));
            assert_eq!(e["data"]["op"], e["pgop"]);
            assert_eq!(e["data"]["source"]["connector"], "postgresql");
            assert_eq!(e["data"]["source"]["db"], "test");
            assert_eq!(e["data"]["source"]["table"], e["pgtable"]);
            assert_eq!(e["data"]["source"]["snapshot"], false);
            assert!(e["data"]["source"]["lsn"].as_u64().unwrap() > 0);
            assert!(e["data"]["source"]["txId"].as_u64().is_some());
            assert!(e["data"]["ts_ms"].as_i64().unwrap() > 1_700_000_000_000);
            assert!(e["time"].as_str().unwrap().ends_with('Z'));
        }
        // Insert: no before; numeric as a string, jsonb parsed.
        let c = &events[0]["data"];
        assert_eq!(c["before"], Value::Null);
        assert_eq!(c["after"]["balance"], "12345678901234567890.0123456789");
        assert_eq!(c["after"]["meta"], json!({"vip": true}));
        assert_eq!(c["after"]["big"].as_str().unwrap().len(), 10_000);
        assert_eq!(events[0]["partitionkey"], "1");
        // Default identity, key unchanged: no before; the unchanged TOASTed column is marked.
        let u = &events[2]["data"];
        assert_eq!(u["before"], Value::Null);
        assert_eq!(u["after"]["name"], "anne");
        assert_eq!(u["after"]["big"], UNAVAILABLE_VALUE);
        // FULL identity: the whole old row.
        let n = &events[3]["data"];
        assert_eq!(n["before"], json!({"id": 7, "lang": "en", "body": "hello", "ok": true}));
        assert_eq!(n["after"], json!({"id": 7, "lang": "en", "body": "hi", "ok": true}));
        assert_eq!(events[3]["partitionkey"], r#"["7","en"]"#);
        // A changed key gives the old key only; a delete under the default identity too.
        assert_eq!(events[4]["data"]["before"], json!({"id": 1}));
        assert_eq!(events[4]["partitionkey"], "2");
        assert_eq!(events[5]["data"]["before"], json!({"id": 2}));
        assert_eq!(events[5]["data"]["after"], Value::Null);
        assert_eq!(events[5]["partitionkey"], "2");
        assert_eq!(events[6]["data"]["before"], json!({"id": 7, "lang": "en", "body": "hi", "ok": true}));
        // Ids: <commit LSN>/<n>; the two updates of one transaction share the LSN.
        let ids = ids(&events);
        let (lsn2, n2) = ids[2].rsplit_once('/').unwrap();
        let (lsn3, n3) = ids[3].rsplit_once('/').unwrap();
        assert_eq!(lsn2, lsn3);
        assert_eq!(n2.parse::<u64>().unwrap() + 1, n3.parse::<u64>().unwrap());
        assert_eq!(ids.iter().collect::<std::collections::BTreeSet<_>>().len(), 7);
        let stats = source.stats();
        assert!(stats.events.load(std::sync::atomic::Ordering::Relaxed) >= 7);
        assert!(stats.last_commit_ts_ms.load(std::sync::atomic::Ordering::Relaxed) > 1_700_000_000_000);
        source.close();
    })
    .await;
}

#[tokio::test]
async fn a_restart_resumes_from_the_slot_and_duplicates_keep_their_ids() {
    run("restart", |f| async move {
        f.exec(&format!(
            "CREATE TABLE {}.t (id int PRIMARY KEY, v text)",
            f.schema
        ))
        .await;
        let cfg = config(&f, &["t"], json!({}));
        let mut source = opened(cfg.clone(), None).await;
        for tx in 0..4 {
            let values: Vec<String> = (0..5).map(|i| format!("({}, 'v')", tx * 5 + i)).collect();
            f.exec(&format!(
                "INSERT INTO {}.t VALUES {}",
                f.schema,
                values.join(",")
            ))
            .await;
        }
        // Ack 7 events (a transaction and a half), then read more without acking and "crash".
        let (acked, cursor) = collect(&mut source, 6, 3).await;
        let unacked = read_batch(&mut source, 3).await;
        assert!(!unacked.records.is_empty());
        drop(unacked);
        source.close();
        drop(source);

        let mut again = opened(cfg, cursor).await;
        let mut seen: BTreeMap<String, Value> = acked
            .iter()
            .map(|e| (e["id"].as_str().unwrap().into(), e.clone()))
            .collect();
        let mut duplicates = 0;
        let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
        let mut rows = std::collections::BTreeSet::new();
        for e in &acked {
            rows.insert(e["data"]["after"]["id"].as_i64().unwrap());
        }
        while rows.len() < 20 {
            assert!(Instant::now() < deadline, "rows {rows:?}");
            let batch = read_batch(&mut again, 100).await;
            for e in &batch.records {
                let id = e["id"].as_str().unwrap().to_string();
                if let Some(before) = seen.get(&id) {
                    assert_eq!(before, e, "a redelivery carries the same id and content");
                    duplicates += 1;
                }
                rows.insert(e["data"]["after"]["id"].as_i64().unwrap());
                seen.insert(id, e.clone());
            }
            let outcomes = vec![RecordOutcome::default(); batch.records.len()];
            again.ack(batch.token, outcomes).await.unwrap();
        }
        // The second transaction was acked only in part, so it comes again from its start.
        assert_eq!(
            duplicates, 1,
            "event 6 (the first of transaction 2) is redelivered"
        );
        assert_eq!(seen.len(), 20);
        again.close();
    })
    .await;
}

#[tokio::test]
async fn a_nack_reads_the_batch_again() {
    run("nack", |f| async move {
        f.exec(&format!("CREATE TABLE {}.t (id int PRIMARY KEY)", f.schema))
            .await;
        let mut source = opened(config(&f, &["t"], json!({})), None).await;
        f.exec(&format!(
            "INSERT INTO {s}.t VALUES (1); INSERT INTO {s}.t VALUES (2)",
            s = f.schema
        ))
        .await;
        let first = read_batch(&mut source, 1).await;
        let first_ids = ids(&first.records);
        source.nack(first.token, "append failed").await;
        let (again, _) = collect(&mut source, 2, 10).await;
        assert_eq!(ids(&again)[..1], first_ids[..]);
        assert_eq!(again[1]["data"]["after"]["id"], 2);
        source.close();
    })
    .await;
}

#[tokio::test]
async fn a_truncate_gives_one_event_per_table() {
    run("truncate", |f| async move {
        f.exec(&format!(
            "CREATE TABLE {s}.a (id int PRIMARY KEY); CREATE TABLE {s}.b (id int PRIMARY KEY)",
            s = f.schema
        ))
        .await;
        let mut source = opened(config(&f, &["a", "b"], json!({})), None).await;
        f.exec(&format!(
            "INSERT INTO {s}.a VALUES (1); TRUNCATE {s}.a, {s}.b",
            s = f.schema
        ))
        .await;
        let (events, _) = collect(&mut source, 3, 10).await;
        let truncs: Vec<(&str, &Value)> = events[1..]
            .iter()
            .map(|e| (e["pgtable"].as_str().unwrap(), &e["data"]["op"]))
            .collect();
        let mut tables: Vec<&str> = truncs.iter().map(|(t, _)| *t).collect();
        tables.sort_unstable();
        assert_eq!(tables, ["a", "b"]);
        for e in &events[1..] {
            assert_eq!(e["pgop"], "t");
            assert_eq!(e["data"]["before"], Value::Null);
            assert_eq!(e["data"]["after"], Value::Null);
            assert!(e.get("partitionkey").is_none());
        }
        source.close();
    })
    .await;
}

#[tokio::test]
async fn the_initial_snapshot_reads_existing_rows_then_streams_and_an_interrupted_one_starts_over()
{
    run("snapshot", |f| async move {
        f.exec(&format!(
            "CREATE TABLE {s}.t (id int PRIMARY KEY, v numeric); INSERT INTO {s}.t SELECT g, g * 1.5 FROM generate_series(1, 5) g",
            s = f.schema
        ))
        .await;
        let cfg = config(&f, &["t"], json!({"snapshot": "initial"}));
        // A first run reads one batch of the snapshot, stores its cursor, and dies.
        let mut first = opened(cfg.clone(), None).await;
        let batch = read_batch(&mut first, 2).await;
        assert_eq!(batch.records.len(), 2);
        let cursor = batch.cursor.clone().unwrap();
        assert!(cursor.starts_with("snapshot:"), "{cursor}");
        let first_ids = ids(&batch.records);
        first.ack(batch.token, vec![RecordOutcome::default(); 2]).await.unwrap();
        first.close();
        drop(first);

        // The restart sees an incomplete snapshot: new slot, whole snapshot again, new ids.
        let mut source = opened(cfg, Some(cursor)).await;
        let mut snapshot = Vec::new();
        let mut cursor = None;
        let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
        while cursor.as_deref().is_none_or(|c: &str| !c.starts_with("lsn:")) {
            assert!(Instant::now() < deadline);
            let batch = read_batch(&mut source, 2).await;
            cursor = batch.cursor.clone();
            let n = batch.records.len();
            snapshot.extend(batch.records);
            source.ack(batch.token, vec![RecordOutcome::default(); n]).await.unwrap();
        }
        assert_eq!(snapshot.len(), 5);
        for (i, e) in snapshot.iter().enumerate() {
            assert_eq!(e["pgop"], "r");
            assert_eq!(e["data"]["source"]["snapshot"], true);
            assert_eq!(e["data"]["after"]["id"], i as i64 + 1);
            assert_eq!(e["partitionkey"], (i + 1).to_string());
        }
        assert_eq!(snapshot[1]["data"]["after"]["v"], "3.0");
        for id in &first_ids {
            assert!(!ids(&snapshot).contains(id), "a redone snapshot has new ids");
        }
        f.exec(&format!("INSERT INTO {}.t VALUES (6, 9)", f.schema)).await;
        let (stream, _) = collect(&mut source, 1, 10).await;
        assert_eq!(stream[0]["pgop"], "c");
        assert_eq!(stream[0]["data"]["after"]["id"], 6);
        source.close();
    })
    .await;
}

async fn lag_falls_below(source: &mut PostgresCdc, bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    loop {
        let lag = source.poll_lag().await.unwrap();
        if lag < bytes {
            return lag;
        }
        assert!(Instant::now() < deadline, "lag stays at {lag}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn the_lag_grows_while_unacked_and_falls_after_the_ack() {
    run("lag", |f| async move {
        f.exec(&format!(
            "CREATE TABLE {}.t (id int PRIMARY KEY, v text)",
            f.schema
        ))
        .await;
        f.exec(&format!(
            "ALTER TABLE {}.t ALTER COLUMN v SET STORAGE EXTERNAL",
            f.schema
        ))
        .await;
        let mut source = opened(config(&f, &["t"], json!({})), None).await;
        f.exec(&format!(
            "INSERT INTO {}.t SELECT g, repeat('x', 100000) FROM generate_series(1, 20) g",
            f.schema
        ))
        .await;
        let batch = read_batch(&mut source, 100).await;
        let lag = source.poll_lag().await.unwrap();
        assert!(lag >= 2_000_000, "lag {lag}");
        assert_eq!(source.slot_lag_bytes(), lag);
        let mut read = batch.records.len();
        let mut token = batch.token;
        while read < 20 {
            source.ack(token, Vec::new()).await.unwrap();
            let more = read_batch(&mut source, 100).await;
            read += more.records.len();
            token = more.token;
        }
        source.ack(token, Vec::new()).await.unwrap();
        lag_falls_below(&mut source, 1_000_000).await;
        source.close();
    })
    .await;
}

/// The guard tests' limit: above the WAL the other tests of this file write while they run
/// in parallel (the lag test writes 2 MB), below the 10 MB the guard tests write themselves.
const GUARD_LAG_BYTES_MAX: u64 = 8_000_000;

/// A table whose `v` is stored uncompressed, so `repeat` writes as much WAL as it says.
async fn wide_table(f: &Fixture) {
    f.exec(&format!(
        "CREATE TABLE {s}.t (id int PRIMARY KEY, v text); ALTER TABLE {s}.t ALTER COLUMN v SET STORAGE EXTERNAL",
        s = f.schema
    ))
    .await;
}

#[tokio::test]
async fn the_drop_slot_guard_drops_the_slot_and_fails() {
    run("guard", |f| async move {
        wide_table(&f).await;
        let cfg = config(
            &f,
            &["t"],
            json!({"lag_bytes_max": GUARD_LAG_BYTES_MAX, "on_lag_max": "drop_slot"}),
        );
        let mut source = opened(cfg, None).await;
        assert!(f.slot_exists().await);
        // Hold a batch unacknowledged while WAL piles up.
        f.exec(&format!("INSERT INTO {}.t VALUES (1, 'a')", f.schema))
            .await;
        let _held = read_batch(&mut source, 100).await;
        f.exec(&format!(
            "INSERT INTO {}.t SELECT g, repeat('y', 10000) FROM generate_series(2, 1000) g",
            f.schema
        ))
        .await;
        match source.poll_lag().await {
            Err(SourceError::Fatal { message }) => {
                assert!(message.contains("drop_slot"), "{message}");
                assert!(message.contains(&f.slot), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!f.slot_exists().await);
    })
    .await;
}

#[tokio::test]
async fn bad_configs_name_the_field() {
    let cfg: CdcConfig = serde_json::from_value(json!({
        "url": URL, "slot": "UPPER", "publication": "p", "tables": ["x"],
    }))
    .unwrap();
    assert_eq!(PostgresCdc::new(cfg).unwrap_err().field, "slot");
    let cfg: CdcConfig = serde_json::from_value(json!({
        "url": URL, "slot": "s", "publication": "p", "tables": ["nodot"],
    }))
    .unwrap();
    assert_eq!(PostgresCdc::new(cfg).unwrap_err().field, "tables[0]");
    let e = serde_json::from_value::<CdcConfig>(
        json!({"url": URL, "slot": "s", "publication": "p", "snapshot": "sometimes"}),
    )
    .unwrap_err();
    assert!(e.to_string().contains("sometimes"), "{e}");
}

#[tokio::test]
async fn the_walsender_client_speaks_to_the_real_server() {
    use gearbox_connectors::postgres::pgoutput::{LogicalMessage, decode};
    use gearbox_connectors::postgres::wire::{Lsn, ReplMessage, ReplicationConnection, WireError};
    run("wire", |f| async move {
        let pg: tokio_postgres::Config = URL.parse().unwrap();
        let mut c = ReplicationConnection::connect(&pg, "gearbox-test")
            .await
            .unwrap();
        let (_system, timeline, flushed, db) = c.identify_system().await.unwrap();
        assert!(timeline >= 1 && flushed > Lsn(0), "{timeline} {flushed}");
        assert_eq!(db.as_deref(), Some("test"));
        match c.drop_slot(&f.slot).await {
            Err(WireError::Server { code, message }) => {
                assert_eq!(code, "42704", "{message}");
            }
            other => panic!("{other:?}"),
        }
        // The publication must exist before the slot: pgoutput looks it up as of the WAL it
        // decodes.
        f.exec(&format!(
            "CREATE TABLE {s}.t (id int PRIMARY KEY); CREATE PUBLICATION {p} FOR TABLE {s}.t",
            s = f.schema,
            p = f.publication
        ))
        .await;
        let created = c.create_slot(&f.slot, false).await.unwrap();
        assert!(created.consistent_point > Lsn(0));
        assert_eq!(created.snapshot_name, None);
        c.start_replication(&f.slot, Lsn(0), &f.publication)
            .await
            .unwrap();
        f.exec(&format!("INSERT INTO {}.t VALUES (42)", f.schema))
            .await;
        let mut kinds = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
        while !kinds.contains(&'C') {
            assert!(Instant::now() < deadline, "{kinds:?}");
            let message = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), c.recv())
                .await
                .unwrap()
                .unwrap();
            if let ReplMessage::XLogData { data, .. } = message {
                match decode(&data).unwrap() {
                    LogicalMessage::Begin { .. } => kinds.push('B'),
                    LogicalMessage::Relation(r) => {
                        assert_eq!(r.name, "t");
                        kinds.push('R');
                    }
                    LogicalMessage::Insert { .. } => kinds.push('I'),
                    LogicalMessage::Commit { end_lsn, .. } => {
                        c.send_status(Lsn(end_lsn), Lsn(end_lsn), Lsn(end_lsn))
                            .await
                            .unwrap();
                        kinds.push('C');
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(kinds, ['B', 'R', 'I', 'C']);
        // A command on a streaming connection is refused, not sent.
        assert!(c.simple_query("SELECT 1").await.is_err());
    })
    .await;
}

#[tokio::test]
async fn the_pause_guard_stops_reading_past_the_limit() {
    run("pause", |f| async move {
        wide_table(&f).await;
        let cfg = config(
            &f,
            &["t"],
            json!({"lag_bytes_max": GUARD_LAG_BYTES_MAX, "on_lag_max": "pause"}),
        );
        let mut source = opened(cfg, None).await;
        f.exec(&format!("INSERT INTO {}.t VALUES (1, 'a')", f.schema))
            .await;
        let held = read_batch(&mut source, 100).await;
        f.exec(&format!(
            "INSERT INTO {}.t SELECT g, repeat('y', 10000) FROM generate_series(2, 1000) g",
            f.schema
        ))
        .await;
        assert!(source.poll_lag().await.unwrap() > GUARD_LAG_BYTES_MAX);
        source.ack(held.token, Vec::new()).await.unwrap();
        // Paused: the rows waiting in the slot are not read. A negative, so a fixed window.
        let read = tokio::time::timeout(Duration::from_millis(1_000), source.next_batch(100)).await;
        assert!(
            read.is_err(),
            "paused, yet read {:?}",
            read.map(|r| r.map(|b| b.map(|b| b.records.len())))
        );
        assert!(f.slot_exists().await, "pausing keeps the slot");
        source.close();
    })
    .await;
}

#[tokio::test]
async fn a_missing_slot_without_create_slot_and_a_missing_table_are_fatal() {
    run("fatal", |f| async move {
        f.exec(&format!("CREATE TABLE {}.t (id int PRIMARY KEY)", f.schema))
            .await;
        let cfg = config(&f, &["t"], json!({"create_slot": false}));
        let mut source = PostgresCdc::new(cfg).unwrap();
        match source.open(None).await {
            Err(SourceError::Fatal { message }) => {
                assert!(message.contains("create_slot"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!f.slot_exists().await);
        source.close();
        let mut missing = PostgresCdc::new(config(
            &f,
            &["nope"],
            json!({"publication": format!("{}_x", f.publication)}),
        ))
        .unwrap();
        match missing.open(None).await {
            Err(SourceError::Fatal { message }) => assert!(message.contains("nope"), "{message}"),
            other => panic!("{other:?}"),
        }
        missing.close();
    })
    .await;
}

#[tokio::test]
async fn status_updates_keep_the_connection_while_a_batch_is_held() {
    run("keeper", |f| async move {
        f.exec(&format!("CREATE TABLE {}.t (id int PRIMARY KEY)", f.schema))
            .await;
        // The server ends a walsender that sends no reply for 1 s; the source replies every 200 ms.
        let url = format!("{URL}?options=-c%20wal_sender_timeout%3D1000");
        let cfg = config(&f, &["t"], json!({"url": url, "status_interval_ms": 200}));
        let mut source = opened(cfg, None).await;
        f.exec(&format!("INSERT INTO {}.t VALUES (1)", f.schema))
            .await;
        let held = read_batch(&mut source, 10).await;
        // Held three timeouts long (the runtime appending slowly). A negative, so a fixed wait.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        source.ack(held.token, Vec::new()).await.unwrap();
        f.exec(&format!("INSERT INTO {}.t VALUES (2)", f.schema))
            .await;
        let (events, _) = collect(&mut source, 1, 10).await;
        assert_eq!(
            events[0]["data"]["after"]["id"], 2,
            "no replay: the connection survived"
        );
        let stats = source.stats();
        assert_eq!(stats.connects.load(std::sync::atomic::Ordering::Relaxed), 1);
        source.close();
    })
    .await;
}

#[tokio::test]
async fn changes_of_a_table_dropped_since_still_arrive() {
    run("dropped", |f| async move {
        f.exec(&format!("CREATE TABLE {}.t (id int PRIMARY KEY)", f.schema))
            .await;
        let mut source = opened(config(&f, &["t"], json!({})), None).await;
        f.exec(&format!(
            "INSERT INTO {s}.t VALUES (5); DROP TABLE {s}.t",
            s = f.schema
        ))
        .await;
        let (events, _) = collect(&mut source, 1, 10).await;
        assert_eq!(events[0]["data"]["after"], json!({"id": 5}));
        assert_eq!(
            events[0]["partitionkey"], "5",
            "keyed by the replica identity"
        );
        source.close();
    })
    .await;
}
