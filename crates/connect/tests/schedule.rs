//! The scheduler: cron in time zones, coalesced catch-up, no overlap, watermark safety, the run
//! history and its bound, triggers; driven through the `Source` interface the runtime uses, and
//! once through the real runtime on an embedded log.

use gearbox_connect::batch::{BatchJob, Item};
use gearbox_connect::schedule::{Outcome, Schedule, ScheduleConfig, Scheduled, Trigger};
use gearbox_connect::source::{Landing, RecordOutcome, Rejected, Source, SourceError};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(cron: &str) -> ScheduleConfig {
    ScheduleConfig {
        cron: cron.into(),
        time_zone: None,
        history_max: 50,
        catch_up: true,
        run_on_start: false,
    }
}

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[test]
fn cron_is_read_in_its_time_zone_across_daylight_saving_time() {
    let mut c = config("0 2 * * *");
    c.time_zone = Some("Europe/Berlin".into());
    let s = Schedule::new(&c).unwrap();
    // Winter: 02:00 CET is 01:00 UTC; summer: 02:00 CEST is 00:00 UTC.
    assert_eq!(
        s.next_after(ms("2026-01-10T12:00:00Z")),
        Some(ms("2026-01-11T01:00:00Z"))
    );
    assert_eq!(
        s.next_after(ms("2026-07-10T12:00:00Z")),
        Some(ms("2026-07-11T00:00:00Z"))
    );
    // The same expression in UTC.
    let utc = Schedule::new(&config("0 2 * * *")).unwrap();
    assert_eq!(
        utc.next_after(ms("2026-07-10T12:00:00Z")),
        Some(ms("2026-07-11T02:00:00Z"))
    );
    assert_eq!(
        utc.last_at_or_before(ms("2026-07-11T02:00:00Z")),
        Some(ms("2026-07-11T02:00:00Z"))
    );
}

#[test]
fn six_fields_mean_seconds_and_bad_sections_name_their_field() {
    let s = Schedule::new(&config("*/5 * * * * *")).unwrap();
    assert_eq!(
        s.next_after(ms("2026-01-10T12:00:01Z")),
        Some(ms("2026-01-10T12:00:05Z"))
    );
    let mut bad = config("61 * * * *");
    bad.time_zone = Some("Mars/Olympus".into());
    bad.history_max = 0;
    let problems = bad.validate();
    let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["cron", "time_zone", "history_max"], "{problems:?}");
    bad.history_max = gearbox_connect::schedule::HISTORY_MAX + 1;
    assert!(bad.validate().iter().any(|(p, _)| p == "history_max"));
}

/// Rows `(version, value)`; a run reads the rows with a version above the watermark.
#[derive(Debug, Clone, Default)]
struct Table {
    rows: Arc<Mutex<Vec<(u64, Value)>>>,
    /// Runs started, with the watermark each started from.
    starts: Arc<Mutex<Vec<Option<String>>>>,
    /// How long each `next` takes.
    slow_ms: u64,
    /// Fail the next `next` call.
    fail_next: Arc<Mutex<bool>>,
}

#[derive(Debug)]
struct Job {
    table: Table,
    pending: Vec<(u64, Value)>,
    reached: Option<u64>,
}

impl BatchJob for Job {
    fn kind(&self) -> &'static str {
        "table"
    }

    async fn start(&mut self, watermark: Option<String>) -> Result<(), SourceError> {
        self.table.starts.lock().unwrap().push(watermark.clone());
        let from: u64 = watermark.map_or(0, |w| w.parse().unwrap());
        self.pending = self
            .table
            .rows
            .lock()
            .unwrap()
            .iter()
            .filter(|(v, _)| *v > from)
            .cloned()
            .collect();
        self.reached = None;
        Ok(())
    }

    async fn next(&mut self, max: usize) -> Result<Vec<Item>, SourceError> {
        tokio::time::sleep(Duration::from_millis(self.table.slow_ms)).await;
        if std::mem::take(&mut *self.table.fail_next.lock().unwrap()) {
            return Err(SourceError::transient("the table went away"));
        }
        let n = max.min(self.pending.len());
        let items = self
            .pending
            .drain(..n)
            .map(|(v, row)| {
                self.reached = Some(self.reached.map_or(v, |r| r.max(v)));
                if row.get("bad").is_some() {
                    Item::Rejected(Rejected {
                        record: row,
                        error: format!("t.csv:{v}: column `qty` is not an integer"),
                    })
                } else {
                    Item::Event(json!({"specversion": "1.0", "id": format!("r{v}"), "source": "t", "type": "row", "data": row}))
                }
            })
            .collect();
        Ok(items)
    }

    fn watermark(&self) -> Option<String> {
        self.reached.map(|r| r.to_string())
    }
}

fn scheduled(table: &Table, c: &ScheduleConfig) -> Scheduled<Job> {
    Scheduled::new(
        Job {
            table: table.clone(),
            pending: Vec::new(),
            reached: None,
        },
        c,
    )
    .unwrap()
}

fn appended(n: usize) -> Vec<RecordOutcome> {
    (0..n)
        .map(|i| RecordOutcome {
            landings: vec![Landing::Appended {
                topic: "t".into(),
                id: format!("{i}"),
                partition: 0,
                offset: i as u64,
                duplicate: false,
            }],
        })
        .collect()
}

/// Runs one whole run through the Source interface, acking every batch; returns the cursors.
async fn one_run<J: BatchJob>(s: &mut Scheduled<J>, max: usize) -> Vec<Value> {
    let mut cursors = Vec::new();
    loop {
        let b = s.next_batch(max).await.unwrap().unwrap();
        cursors.push(serde_json::from_str(b.cursor.as_deref().unwrap()).unwrap());
        let last = b.records.is_empty() && b.rejected.is_empty();
        let n = b.records.len() + b.rejected.len();
        s.ack(b.token, appended(n)).await.unwrap();
        if last {
            return cursors;
        }
    }
}

fn rows(table: &Table, versions: std::ops::RangeInclusive<u64>) {
    let mut r = table.rows.lock().unwrap();
    for v in versions {
        r.push((v, json!({"v": v})));
    }
}

#[tokio::test]
async fn the_watermark_moves_only_with_the_last_batch_of_a_run() {
    let table = Table::default();
    rows(&table, 1..=5);
    let mut s = scheduled(&table, &config("* * * * * *"));
    s.open(None).await.unwrap();
    let cursors = one_run(&mut s, 2).await;
    // Three batches of rows, then the empty batch that completes the run.
    assert_eq!(cursors.len(), 4);
    for c in &cursors[..3] {
        assert_eq!(c["watermark"], Value::Null, "moved mid-run: {c}");
        assert_eq!(c["run"]["outcome"], "running");
    }
    assert_eq!(cursors[3]["watermark"], "5");
    assert_eq!(cursors[3]["run"], Value::Null);
    assert_eq!(cursors[3]["history"][0]["outcome"], "ok");
    assert_eq!(cursors[3]["history"][0]["rows"], 5);
    let view = s.runs().unwrap().view();
    assert_eq!(view.watermark.as_deref(), Some("5"));
    assert_eq!(view.history[0].appended, 5);
    assert_eq!(view.history[0].watermark_before, None);
    assert_eq!(view.history[0].watermark_after.as_deref(), Some("5"));
    // The next run reads only what came after.
    rows(&table, 6..=7);
    one_run(&mut s, 100).await;
    assert_eq!(
        *table.starts.lock().unwrap(),
        vec![None, Some("5".to_string())]
    );
    assert_eq!(s.runs().unwrap().view().watermark.as_deref(), Some("7"));
}

#[tokio::test]
async fn a_run_cut_short_by_a_crash_is_run_again_from_its_starting_watermark() {
    let table = Table::default();
    rows(&table, 1..=6);
    let mut s = scheduled(&table, &config("* * * * * *"));
    s.open(None).await.unwrap();
    one_run(&mut s, 100).await;
    rows(&table, 7..=12);
    // The second run gets one batch stored, then the process dies.
    let b = s.next_batch(2).await.unwrap().unwrap();
    let stored = b.cursor.clone().unwrap();
    s.ack(b.token, appended(2)).await.unwrap();
    drop(s);

    let mut again = scheduled(&table, &config("0 0 1 1 *"));
    again.open(Some(stored)).await.unwrap();
    // No fire time is due (yearly), yet the interrupted run is retried at once.
    let cursors = tokio::time::timeout(Duration::from_secs(5), one_run(&mut again, 100))
        .await
        .expect("the retry starts at once");
    assert_eq!(cursors.last().unwrap()["watermark"], "12");
    let view = again.runs().unwrap().view();
    assert_eq!(view.history[0].trigger, Trigger::Retry);
    assert_eq!(view.history[0].watermark_before.as_deref(), Some("6"));
    assert_eq!(
        view.history[0].rows, 6,
        "the retry reads the whole run again"
    );
    assert_eq!(view.history[1].outcome, Outcome::Interrupted);
    assert_eq!(
        table.starts.lock().unwrap().last().unwrap().as_deref(),
        Some("6")
    );
}

#[tokio::test]
async fn a_failed_append_or_read_fails_the_run_and_the_retry_starts_from_the_same_watermark() {
    let table = Table::default();
    rows(&table, 1..=3);
    let mut s = scheduled(&table, &config("* * * * * *"));
    s.open(None).await.unwrap();
    one_run(&mut s, 100).await;
    rows(&table, 4..=9);
    let b = s.next_batch(2).await.unwrap().unwrap();
    s.nack(b.token, "the log is full").await;
    *table.fail_next.lock().unwrap() = true;
    // The retry starts at once; its read fails.
    let e = s.next_batch(2).await.unwrap_err();
    assert_eq!(e.to_string(), "the table went away");
    one_run(&mut s, 100).await;
    let view = s.runs().unwrap().view();
    let outcomes: Vec<(Trigger, Outcome, Option<&str>)> = view
        .history
        .iter()
        .map(|r| (r.trigger, r.outcome, r.watermark_before.as_deref()))
        .collect();
    assert_eq!(
        outcomes[..3],
        [
            (Trigger::Retry, Outcome::Ok, Some("3")),
            (Trigger::Retry, Outcome::Failed, Some("3")),
            (Trigger::Schedule, Outcome::Failed, Some("3")),
        ]
    );
    assert_eq!(view.history[2].error.as_deref(), Some("the log is full"));
    assert_eq!(view.watermark.as_deref(), Some("9"));
}

#[tokio::test]
async fn fire_times_missed_while_down_are_caught_up_once() {
    let table = Table::default();
    rows(&table, 1..=2);
    let mut s = scheduled(&table, &config("* * * * *"));
    s.open(None).await.unwrap();
    // A state stored ten minutes ago: ten fire times were missed.
    let stale = json!({"watermark": null, "fired_ms": now_ms() - 600_000, "run": null,
        "history": [], "next_id": 0})
    .to_string();
    let mut s = scheduled(&table, &config("* * * * *"));
    s.open(Some(stale)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), one_run(&mut s, 100))
        .await
        .expect("the catch-up run starts at once");
    assert_eq!(first.last().unwrap()["watermark"], "2");
    let view = s.runs().unwrap().view();
    assert_eq!(view.history.len(), 1);
    assert_eq!(view.history[0].trigger, Trigger::CatchUp);
    // The next one waits for the next minute: not another catch-up.
    let next = view.next_run_ms.unwrap();
    assert!(next > now_ms(), "next run {next} should be in the future");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next_batch(100))
            .await
            .is_err(),
        "a second catch-up run started"
    );
}

#[tokio::test]
async fn missed_fire_times_are_skipped_without_catch_up() {
    let table = Table::default();
    let mut c = config("* * * * *");
    c.catch_up = false;
    let stale = json!({"watermark": null, "fired_ms": now_ms() - 600_000, "run": null,
        "history": [], "next_id": 0})
    .to_string();
    let mut s = scheduled(&table, &c);
    s.open(Some(stale)).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.next_batch(100))
            .await
            .is_err(),
        "a run started for a missed fire time"
    );
    assert!(table.starts.lock().unwrap().is_empty());
}

#[tokio::test]
async fn runs_never_overlap_and_fire_times_during_a_long_run_coalesce_into_one() {
    let table = Table {
        slow_ms: 700,
        ..Table::default()
    };
    rows(&table, 1..=3);
    let mut s = scheduled(&table, &config("* * * * * *"));
    s.open(None).await.unwrap();
    // One row per batch at 0.7 s each: the run spans about three fire times.
    let t0 = std::time::Instant::now();
    one_run(&mut s, 1).await;
    assert!(t0.elapsed() >= Duration::from_millis(2000));
    rows(&table, 4..=4);
    // The next run starts at once (fire times passed during the first) and only one does.
    let t1 = std::time::Instant::now();
    one_run(&mut s, 100).await;
    assert!(t1.elapsed() < Duration::from_millis(1500));
    let view = s.runs().unwrap().view();
    assert_eq!(view.history[0].trigger, Trigger::CatchUp);
    assert_eq!(table.starts.lock().unwrap().len(), 2);
    // Every run ended before the next started.
    let h = &view.history;
    assert!(h[1].ended_ms.unwrap() <= h[0].started_ms);
}

#[tokio::test]
async fn the_history_is_bounded() {
    let table = Table::default();
    let mut c = config("* * * * * *");
    c.history_max = 3;
    let mut s = scheduled(&table, &c);
    s.open(None).await.unwrap();
    let log = s.runs().unwrap();
    for _ in 0..5 {
        log.trigger(None).unwrap();
        one_run(&mut s, 10).await;
    }
    let view = log.view();
    assert_eq!(view.history.len(), 3);
    assert_eq!(
        view.history.iter().map(|r| r.id).collect::<Vec<_>>(),
        [4, 3, 2]
    );
    assert!(view.history.iter().all(|r| r.trigger == Trigger::Manual));
}

#[tokio::test]
async fn a_backfill_runs_from_an_older_watermark_and_waits_for_a_running_run() {
    let table = Table::default();
    rows(&table, 1..=10);
    let mut s = scheduled(&table, &config("0 0 1 1 *"));
    s.open(None).await.unwrap();
    let log = s.runs().unwrap();
    log.trigger(None).unwrap();
    // A run is going when the backfill is asked for.
    let b = s.next_batch(4).await.unwrap().unwrap();
    assert_eq!(log.trigger(Some("3".into())).unwrap(), Trigger::Backfill);
    assert_eq!(log.view().queued, Some(Trigger::Backfill));
    s.ack(b.token, appended(4)).await.unwrap();
    one_run(&mut s, 4).await;
    assert_eq!(log.view().watermark.as_deref(), Some("10"));
    one_run(&mut s, 100).await;
    let view = log.view();
    assert_eq!(view.history[0].trigger, Trigger::Backfill);
    assert_eq!(view.history[0].watermark_before.as_deref(), Some("3"));
    assert_eq!(view.history[0].rows, 7);
    assert_eq!(view.watermark.as_deref(), Some("10"));
    assert!(
        log.trigger(Some(
            "x".repeat(gearbox_connect::schedule::WATERMARK_BYTES_MAX + 1)
        ))
        .is_err()
    );
}

/// Through the real runtime on an embedded log: events land, rejected rows go to the DLQ with
/// their error, and the stored cursor carries the watermark.
#[tokio::test]
async fn in_the_runtime_rows_land_and_rejected_rows_are_dead_lettered() {
    use gearbox_connect::backbone::{Backbone, Embedded};
    use gearbox_connect::metrics::Registry;
    use gearbox_connect::runtime::{Common, Runtime, SourcePipeline};
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(
        gearbox_core::broker::Broker::open(
            dir.path(),
            gearbox_core::broker::BrokerConfig::durable(),
        )
        .unwrap(),
    );
    broker
        .create_topic("rows", 1, gearbox_log::Retention::FOREVER)
        .unwrap();
    let backbone = Arc::new(Embedded::new(broker.clone()));
    let table = Table::default();
    rows(&table, 1..=4);
    table
        .rows
        .lock()
        .unwrap()
        .push((5, json!({"v": 5, "bad": true})));
    let mut c = config("0 0 1 1 *");
    c.run_on_start = true;
    let mut runtime = Runtime::new(backbone.clone(), Arc::new(Registry::default()));
    runtime.spawn_source(
        SourcePipeline {
            common: Common {
                name: "import".into(),
                retry: gearbox_connect::retry::RetryConfig::default(),
                breaker: gearbox_connect::breaker::BreakerConfig::default(),
                rate_limit: None,
                freshness_ms: None,
                transforms: gearbox_connect::transform::Chain::default(),
                batch_records_max: 100,
            },
            to: gearbox_connect::topic::Template::parse("rows").unwrap(),
            routes: Vec::new(),
            dead_letter: "rows".into(),
        },
        scheduled(&table, &c),
    );
    let registry = runtime.registry().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let view = registry
            .get("import")
            .and_then(|m| m.runs().map(|r| r.view()));
        if view.is_some_and(|v| v.history.first().is_some_and(|r| r.outcome == Outcome::Ok)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the run did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let view = registry.get("import").unwrap().runs().unwrap().view();
    assert_eq!(view.history[0].trigger, Trigger::Start);
    assert_eq!(view.history[0].appended, 4);
    assert_eq!(view.history[0].dead_lettered, 1);
    assert_eq!(view.watermark.as_deref(), Some("5"));
    let dlq = broker.dlq("rows", 10).unwrap();
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].event.extensions.get("dlqerror").map(String::as_str),
        Some("t.csv:5: column `qty` is not an integer")
    );
    let stored = backbone.checkpoint("import").await.unwrap().unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["watermark"], "5");
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A job whose watermarks must be numbers: a backfill from a word is refused at start.
#[tokio::test]
async fn a_backfill_from_a_watermark_the_job_refuses_fails_that_run_only() {
    #[derive(Debug)]
    struct Strict(Job);
    impl BatchJob for Strict {
        fn kind(&self) -> &'static str {
            "strict"
        }
        async fn start(&mut self, watermark: Option<String>) -> Result<(), SourceError> {
            if watermark
                .as_deref()
                .is_some_and(|w| w.parse::<u64>().is_err())
            {
                return Err(SourceError::Fatal {
                    message: format!("{watermark:?} is not a number"),
                });
            }
            self.0.start(watermark).await
        }
        async fn next(&mut self, max: usize) -> Result<Vec<Item>, SourceError> {
            self.0.next(max).await
        }
        fn watermark(&self) -> Option<String> {
            self.0.watermark()
        }
    }
    let table = Table::default();
    rows(&table, 1..=4);
    let mut s = Scheduled::new(
        Strict(Job {
            table: table.clone(),
            pending: Vec::new(),
            reached: None,
        }),
        &config("0 0 1 1 *"),
    )
    .unwrap();
    s.open(None).await.unwrap();
    let log = s.runs().unwrap();
    log.trigger(None).unwrap();
    one_run(&mut s, 10).await;
    log.trigger(Some("yesterday".into())).unwrap();
    let e = s.next_batch(10).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::Transient { message, .. } if message.contains("backfill refused")),
        "{e:?}"
    );
    let view = log.view();
    assert_eq!(view.history[0].trigger, Trigger::Backfill);
    assert_eq!(view.history[0].outcome, Outcome::Failed);
    assert_eq!(
        view.watermark.as_deref(),
        Some("4"),
        "the stored watermark stays"
    );
    // No retry of the refused backfill; "" backfills from the beginning.
    log.trigger(Some(String::new())).unwrap();
    one_run(&mut s, 10).await;
    let view = log.view();
    assert_eq!(view.history[0].trigger, Trigger::Backfill);
    assert_eq!(view.history[0].watermark_before, None);
    assert_eq!(view.history[0].rows, 4);
    assert_eq!(view.history[0].outcome, Outcome::Ok);
}
