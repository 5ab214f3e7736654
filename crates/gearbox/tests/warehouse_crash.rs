//! The Parquet warehouse sink through SIGKILL: a producer publishes orders over HTTP without
//! pause while `gearbox serve` is killed with SIGKILL 24 times, mid micro-batch (a small
//! `records_max` and a 300 ms `interval_ms`, so groups of files are committed all the time, and
//! times on both sides of midnight with `partition_by`, so one batch is several files).
//!
//! Afterwards, once the sink has committed the whole topic, DuckDB reads every Parquet file
//! (`tests/python/read_parquet.py`, in the `.venv` of `.ci/python-env`), and the union of the
//! files must equal the topic exactly: every (partition, offset) once, with its event's id; no
//! gap, no duplicate. pyarrow must read the same rows, and the `time` column is a UTC timestamp
//! to both.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{Server, free_port};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const KILLS: usize = 24;
const PIPELINE: &str = "warehouse";

/// A small deterministic generator, so a failing run can be replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn order(n: usize) -> Value {
    // Around midnight: a batch spans two dates.
    let time = if n.is_multiple_of(2) {
        format!("2026-11-23T23:59:{:02}.{:03}Z", n % 60, n % 1000)
    } else {
        format!("2026-11-24T00:00:{:02}.{:03}Z", n % 60, n % 1000)
    };
    json!({
        "specversion": "1.0",
        "id": format!("o-{n}"),
        "source": "/shop",
        "type": "order.created",
        "time": time,
        "partitionkey": format!("k-{}", n % 11),
        "data": {"store": format!("s{}", n % 3), "qty": n % 7},
    })
}

/// The topic's events: (partition, offset) → id.
fn topic(server: &Server) -> BTreeMap<(u32, u64), String> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let (status, body) = server.get(&format!(
                "/v1/topics/{TOPIC}/partitions/{p}/events?offset={offset}&max=1000"
            ));
            assert_eq!(status, 200, "{body}");
            let events = body["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                break;
            }
            for e in events {
                let o = e["offset"].as_u64().unwrap();
                out.insert((p, o), e["event"]["id"].as_str().unwrap().to_string());
            }
            offset = body["next_offset"].as_u64().unwrap();
        }
    }
    out
}

/// The sink's committed positions, from the names of complete groups of files (the file name
/// says `part-p{partition}-{first}-{last}-{k}of{n}.parquet`).
fn committed(dir: &Path) -> BTreeMap<u32, u64> {
    let mut groups: BTreeMap<(u32, u64, u64, usize), usize> = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push(e.path());
                continue;
            }
            let Some(rest) = name
                .strip_prefix("part-p")
                .and_then(|r| r.strip_suffix(".parquet"))
            else {
                continue;
            };
            let f: Vec<&str> = rest.split('-').collect();
            let (_, n) = f[3].split_once("of").unwrap();
            *groups
                .entry((
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    n.parse().unwrap(),
                ))
                .or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for ((p, _, last, n), present) in groups {
        if present == n {
            let e = out.entry(p).or_insert(0);
            *e = (*e).max(last + 1);
        }
    }
    out
}

#[test]
fn sigkills_mid_micro_batch_leave_every_offset_in_exactly_one_file() {
    let started = Instant::now();
    let seed = std::env::var("GEARBOX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9 + 1);
    eprintln!("warehouse_crash seed: {seed} (rerun with GEARBOX_TEST_SEED={seed})");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    let warehouse = dir.path().join("warehouse");
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
    batch_records_max: 20
    sink:
      parquet:
        path: "{path}"
        partition_by: data.store
        records_max: 40
        interval_ms: 300
        columns:
          qty: {{ path: data.qty, type: int64 }}
"#,
            path = warehouse.display()
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );

    // A producer that publishes without pause, retrying each batch until it is acknowledged
    // (the same ids: the log deduplicates them).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let url = server.url.clone();
    let producer = std::thread::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch: Vec<Value> = (n..n + 10).map(order).collect();
                let body = Value::Array(batch).to_string();
                loop {
                    let r = ureq::post(&format!("{url}/v1/topics/{TOPIC}/events"))
                        .header("content-type", "application/cloudevents-batch+json")
                        .send(body.as_bytes());
                    if matches!(&r, Ok(r) if r.status() == 201) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                n += 10;
                sent.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(15));
            }
        }
    });

    let mut committed_at_kill = Vec::new();
    for _ in 0..KILLS {
        // An arbitrary moment (this is the crash timing, not a wait for a condition).
        std::thread::sleep(Duration::from_millis(150 + rng.below(350)));
        server.kill9();
        committed_at_kill.push(committed(&warehouse).values().sum::<u64>());
        server.restart_after_kill9();
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();

    // Quiet now: wait until the sink has committed the whole topic.
    let events = topic(&server);
    let mut ends: BTreeMap<u32, u64> = BTreeMap::new();
    for &(p, o) in events.keys() {
        ends.insert(p, o + 1);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = committed(&warehouse);
        if ends
            .iter()
            .all(|(p, end)| at.get(p).copied().unwrap_or(0) >= *end)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the sink never committed the topic: at {at:?}, ends {ends:?}\n{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, p) = server.get(&format!("/v1/pipelines/{PIPELINE}"));
    assert_eq!(p["failure"], Value::Null, "{p}");

    let out = support::run_python("read_parquet.py", &[warehouse.to_str().unwrap()], &server);
    let files: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let mut rows: BTreeMap<(u32, u64), Vec<String>> = BTreeMap::new();
    for r in files["rows"].as_array().unwrap() {
        let at = (r[0].as_u64().unwrap() as u32, r[1].as_u64().unwrap());
        rows.entry(at)
            .or_default()
            .push(r[2].as_str().unwrap().to_string());
    }
    let duplicated: Vec<_> = rows
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .take(5)
        .collect();
    assert!(
        duplicated.is_empty(),
        "seed {seed}: positions in more than one row: {duplicated:?}"
    );
    let missing: Vec<_> = events
        .keys()
        .filter(|at| !rows.contains_key(at))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "seed {seed}: events in no file: {missing:?}"
    );
    let extra: Vec<_> = rows
        .keys()
        .filter(|at| !events.contains_key(at))
        .take(5)
        .collect();
    assert!(
        extra.is_empty(),
        "seed {seed}: rows the topic does not have: {extra:?}"
    );
    let wrong: Vec<_> = events
        .iter()
        .filter(|(at, id)| rows[at][0] != **id)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "seed {seed}: rows with another id: {wrong:?}"
    );
    assert_eq!(rows.len(), events.len());

    // pyarrow reads the same rows; both see a UTC timestamp; each row is in its UTC day's
    // directory.
    assert_eq!(files["pyarrow_rows"], files["rows"]);
    assert_eq!(files["time_type"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(files["pyarrow_time_type"], "timestamp[ms, tz=UTC]");
    assert_eq!(files["date_mismatches"], 0);

    // The kills landed while the sink was committing: what it had committed grew across them,
    // and the topic holds what the producer sent.
    let grew = committed_at_kill.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        grew >= KILLS / 2,
        "seed {seed}: the files barely grew across kills: {committed_at_kill:?}"
    );
    assert!(events.len() >= sent.load(Ordering::Relaxed));
    // How many kills landed between the renames of a group (recovery removed it), for the log.
    let incomplete = server.log_text().matches("incomplete group").count();
    eprintln!(
        "warehouse_crash: {} events, {} files, {KILLS} SIGKILLs, {incomplete} incomplete groups \
         removed at restarts, {:.1}s",
        events.len(),
        files["files"],
        started.elapsed().as_secs_f64()
    );
}
