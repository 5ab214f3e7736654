//! The HTTP poller under SIGKILL: `gearbox serve` polls a local API that paginates, answers 429
//! with `Retry-After`, fails transiently, and has records updated while a sync is in progress;
//! the server is killed with SIGKILL 20 times at arbitrary moments. Afterwards the topic holds
//! the latest version of every record, and no event id appears twice in it.

mod support;

#[path = "../../connectors/tests/support/poll_api.rs"]
mod poll_api;

use poll_api::{Pagination, PollApi};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::{Server, free_port};

const KILLS: usize = 20;
const TOPIC: &str = "records";
const PARTITIONS: u32 = 3;

/// Every event id in the topic, with its count.
fn topic_ids(server: &Server) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in server.all_events(TOPIC, PARTITIONS) {
        *out.entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

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

#[test]
fn twenty_sigkills_lose_no_record_and_duplicate_none() {
    let seed = std::env::var("GEARBOX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 0x9e37_79b9 + 1);
    eprintln!("poll_crash seed: {seed} (rerun with GEARBOX_TEST_SEED={seed})");
    let mut rng = Rng(seed);

    let api = PollApi::start();
    for i in 0..120 {
        api.upsert(&format!("r{i:04}"), json!({"n": i}));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gearbox.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
topics: [{{ name: {TOPIC}, partitions: {PARTITIONS} }}]
pipelines:
  - name: records
    source:
      http_poll:
        url: "{url}"
        interval_ms: 100
        timeout_ms: 5000
        cursor: {{ param: updated_since, field: updated_at, kind: timestamp }}
        pagination: {{ style: link_header, page_size_param: page_size, page_size: 7 }}
        id: {{ key: id, version: updated_at }}
        event: {{ source: "https://api.test/records", type: test.record }}
    to: {TOPIC}
    batch_records_max: 5
    retry: {{ attempts_max: 5, initial_ms: 20, max_ms: 200, multiplier: 2.0 }}
    breaker: {{ failures_max: 10, open_ms: 200, half_open_probes: 1 }}
"#,
            url = api.url(Pagination::LinkHeader)
        ),
    )
    .unwrap();
    let mut server = Server::start_with(
        &dir.path().join("data"),
        free_port(),
        &["--config", config.to_str().unwrap()],
    );

    let mut next_id = 120;
    let mut stored_at_kill = Vec::new();
    for cycle in 0..KILLS {
        // The API changes while the poller runs: new records, updates, throttling, failures,
        // and records updated in the middle of a sync.
        for _ in 0..rng.below(6) {
            api.upsert(&format!("r{next_id:04}"), json!({"n": next_id}));
            next_id += 1;
        }
        for _ in 0..rng.below(6) {
            let id = format!("r{:04}", rng.below(next_id));
            api.upsert(&id, json!({"updated_in_cycle": cycle}));
        }
        match cycle % 4 {
            1 => api.fail_next(2, 429, Some("0")),
            2 => api.fail_next(1, 500, None),
            3 => {
                let a = format!("r{:04}", rng.below(next_id));
                let b = format!("r{:04}", rng.below(next_id));
                api.update_during_sync(2, &[&a, &b]);
            }
            _ => {}
        }
        // Let it run for an arbitrary while (this is the crash timing, not a wait for a
        // condition), then kill it.
        std::thread::sleep(Duration::from_millis(20 + rng.below(300)));
        server.kill9();
        stored_at_kill.push(topic_ids_after_restart(&mut server));
    }

    // Quiet now: wait until the latest version of every record is in the topic.
    let truth: Vec<String> = api.records().iter().map(|r| r.event_id()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids = loop {
        let ids = topic_ids(&server);
        if truth.iter().all(|id| ids.contains_key(id)) {
            break ids;
        }
        let missing: Vec<&String> = truth.iter().filter(|id| !ids.contains_key(*id)).collect();
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} records never reached the topic, e.g. {:?}\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let duplicated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "seed {seed}: event ids stored more than once: {duplicated:?}"
    );
    // The kills really landed mid-stream: the topic grew across them.
    let grew = stored_at_kill.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        grew >= 3,
        "seed {seed}: the topic barely grew across kills: {stored_at_kill:?}"
    );
    let (_, p) = server.get("/v1/pipelines/records");
    assert_eq!(p["failure"], Value::Null, "{p}");
    eprintln!(
        "poll_crash: {} records, {} events in the topic, {} API requests, {KILLS} SIGKILLs",
        truth.len(),
        ids.len(),
        api.requests()
    );
}

/// Restarts after a kill and returns how many events the topic held.
fn topic_ids_after_restart(server: &mut Server) -> usize {
    server.restart_after_kill9();
    topic_ids(server).values().sum()
}
