//! The scheduler: runs a [`BatchJob`] on a cron schedule, as a [`Source`] the runtime drives like
//! any other.
//!
//! - **Cron with time zones**: five fields (minute granularity) or six (seconds first), `@daily`
//!   and friends, evaluated in an IANA time zone (default UTC) with croner on jiff, so "02:00 in
//!   Europe/Berlin" follows daylight saving time.
//! - **No overlap**: one pipeline has at most one run at a time. Fire times that pass while a run
//!   is going, or while Gearbox is down, are *coalesced*: the next run starts at once, and only
//!   once, however many were missed (`catch_up: false` skips them instead).
//! - **Watermark safety**: the run's batches are appended with the watermark from before the run;
//!   the watermark the run reached is stored only with its last, empty batch, that is after every
//!   event of the run is appended or dead-lettered. A run cut short (a crash, a failed append, a
//!   failed read) is run again from the watermark before it, and deterministic event ids make
//!   the events it had already appended duplicates that the log drops.
//! - **Run history**: every run is recorded (trigger, start, end, rows, watermark before and
//!   after, outcome) in the cursor the runtime stores, bounded by `history_max`; the API and the
//!   dashboard read it from the [`RunLog`].
//! - **Triggers**: an operator can start a run now, or a *backfill* from an older watermark
//!   ([`RunLog::trigger`]); it waits for a running run to finish.

use crate::batch::{BatchJob, Item};
use crate::source::{AckToken, Landing, RecordOutcome, Rejected, Source, SourceBatch, SourceError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// Runs kept in the history by default.
pub const HISTORY_DEFAULT: usize = 50;
/// Most runs kept in the history (each is stored with every checkpoint of the pipeline).
pub const HISTORY_MAX: usize = 500;
/// Longest watermark stored, in bytes.
pub const WATERMARK_BYTES_MAX: usize = 4096;

/// A pipeline's schedule: `schedule: {cron: "0 2 * * *", time_zone: Europe/Berlin}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// A cron expression: five fields, six with seconds first, or `@hourly`, `@daily`, ...
    pub cron: String,
    /// The IANA time zone the expression is read in (default `UTC`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Runs kept in the history, 1 to [`HISTORY_MAX`].
    #[serde(default = "history_default")]
    pub history_max: usize,
    /// After downtime, run once for the fire times that were missed (default), or skip them.
    #[serde(default = "yes")]
    pub catch_up: bool,
    /// Also run once when the pipeline starts for the first time (no stored state).
    #[serde(default)]
    pub run_on_start: bool,
}

fn history_default() -> usize {
    HISTORY_DEFAULT
}

fn yes() -> bool {
    true
}

impl ScheduleConfig {
    /// Problems with the section, as (path, reason).
    #[must_use]
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Err(e) = parse_cron(&self.cron) {
            problems.push(("cron".into(), e));
        }
        if let Err(e) = time_zone(self.time_zone.as_deref()) {
            problems.push(("time_zone".into(), e));
        }
        if !(1..=HISTORY_MAX).contains(&self.history_max) {
            problems.push(("history_max".into(), format!("must be 1 to {HISTORY_MAX}")));
        }
        problems
    }
}

fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| format!("{pattern:?} is not a cron expression: {e}"))
}

fn time_zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, String> {
    match name {
        None => Ok(jiff::tz::TimeZone::UTC),
        Some(n) => jiff::tz::TimeZone::get(n).map_err(|e| format!("unknown time zone {n:?}: {e}")),
    }
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    tz: jiff::tz::TimeZone,
    config: ScheduleConfig,
}

impl Schedule {
    /// Parses a schedule.
    ///
    /// # Errors
    /// A bad expression or an unknown time zone.
    pub fn new(config: &ScheduleConfig) -> Result<Schedule, String> {
        Ok(Schedule {
            cron: parse_cron(&config.cron)?,
            tz: time_zone(config.time_zone.as_deref())?,
            config: config.clone(),
        })
    }

    fn zoned(&self, ms: i64) -> Option<jiff::Zoned> {
        Some(
            jiff::Timestamp::from_millisecond(ms)
                .ok()?
                .to_zoned(self.tz.clone()),
        )
    }

    /// The first fire time strictly after `ms` (ms since the epoch), if there is one.
    #[must_use]
    pub fn next_after(&self, ms: i64) -> Option<i64> {
        let at = self.zoned(ms)?;
        let next = self.cron.find_next_occurrence(&at, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The last fire time at or before `ms`, if there is one.
    #[must_use]
    pub fn last_at_or_before(&self, ms: i64) -> Option<i64> {
        let at = self.zoned(ms)?;
        let prev = self.cron.find_previous_occurrence(&at, true).ok()?;
        Some(prev.timestamp().as_millisecond())
    }

    /// The time zone's name.
    #[must_use]
    pub fn time_zone(&self) -> &str {
        self.config.time_zone.as_deref().unwrap_or("UTC")
    }
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its fire time came.
    Schedule,
    /// Fire times were missed (downtime, or a long run before it): one run for all of them.
    CatchUp,
    /// The first start of the pipeline (`run_on_start`).
    Start,
    /// An operator asked for a run now.
    Manual,
    /// An operator asked for a run from an older watermark.
    Backfill,
    /// The run before it was cut short (a crash, a failed append or read); this one starts again
    /// from that run's starting watermark.
    Retry,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still going.
    Running,
    /// Every event appended or dead-lettered; the watermark moved to `watermark_after`.
    Ok,
    /// A read or an append failed; the watermark stayed.
    Failed,
    /// Gearbox stopped (or crashed) during the run; the watermark stayed.
    Interrupted,
}

/// One run, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Counts up per pipeline.
    pub id: u64,
    /// Why it ran.
    pub trigger: Trigger,
    /// The fire time it ran for, ms since the epoch (none for manual runs).
    pub scheduled_ms: Option<i64>,
    /// When it started.
    pub started_ms: i64,
    /// When it ended.
    pub ended_ms: Option<i64>,
    /// Rows read (events and rejected rows).
    pub rows: u64,
    /// Events appended for the first time.
    pub appended: u64,
    /// Events the log already had (a rerun of the same data).
    pub duplicates: u64,
    /// Rows dead-lettered (malformed, or rejected by a transform).
    pub dead_lettered: u64,
    /// The watermark it started from.
    pub watermark_before: Option<String>,
    /// The watermark it reached (stored when `outcome` is `ok`).
    pub watermark_after: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
}

/// What the runtime stores as the pipeline's cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The stored watermark.
    watermark: Option<String>,
    /// The latest fire time handled (run, or skipped without catch-up).
    fired_ms: Option<i64>,
    /// The run in progress when this was stored.
    run: Option<Run>,
    /// Finished runs, oldest first.
    history: VecDeque<Run>,
    /// The next run's id.
    next_id: u64,
}

/// A pending operator request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    trigger: Trigger,
    watermark: Option<String>,
}

/// A scheduled pipeline's runs: the history, the run in progress, the next fire time, and
/// operator triggers. Shared between the pipeline's task and the API.
#[derive(Debug)]
pub struct RunLog {
    schedule: ScheduleConfig,
    inner: Mutex<LogInner>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct LogInner {
    watermark: Option<String>,
    next_ms: Option<i64>,
    running: Option<Run>,
    history: VecDeque<Run>,
    pending: Option<Request>,
}

/// What the API shows of a scheduled pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct RunsView {
    /// The cron expression.
    pub cron: String,
    /// Its time zone.
    pub time_zone: String,
    /// The next fire time, ms since the epoch.
    pub next_run_ms: Option<i64>,
    /// The stored watermark.
    pub watermark: Option<String>,
    /// The run in progress.
    pub running: Option<Run>,
    /// Finished runs, newest first.
    pub history: Vec<Run>,
    /// A triggered run waiting for the current one.
    pub queued: Option<Trigger>,
}

/// Why a trigger was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// The watermark is too long.
    #[error("the watermark is longer than {WATERMARK_BYTES_MAX} bytes")]
    WatermarkTooLong,
}

impl RunLog {
    fn new(schedule: ScheduleConfig) -> RunLog {
        RunLog {
            schedule,
            inner: Mutex::new(LogInner::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The schedule, the run in progress and the history.
    #[must_use]
    pub fn view(&self) -> RunsView {
        let inner = self.lock();
        RunsView {
            cron: self.schedule.cron.clone(),
            time_zone: self
                .schedule
                .time_zone
                .clone()
                .unwrap_or_else(|| "UTC".into()),
            next_run_ms: inner.next_ms,
            watermark: inner.watermark.clone(),
            running: inner.running.clone(),
            history: inner.history.iter().rev().cloned().collect(),
            queued: inner.pending.as_ref().map(|r| r.trigger),
        }
    }

    /// Asks for a run now: from the stored watermark, or (a backfill) from `watermark`, which
    /// may be older. A run in progress finishes first; a second request before the first one
    /// started replaces it.
    ///
    /// # Errors
    /// [`TriggerError`].
    pub fn trigger(&self, watermark: Option<String>) -> Result<Trigger, TriggerError> {
        if watermark
            .as_ref()
            .is_some_and(|w| w.len() > WATERMARK_BYTES_MAX)
        {
            return Err(TriggerError::WatermarkTooLong);
        }
        let trigger = if watermark.is_some() {
            Trigger::Backfill
        } else {
            Trigger::Manual
        };
        self.lock().pending = Some(Request { trigger, watermark });
        self.wake.notify_one();
        Ok(trigger)
    }
}

/// Where the scheduler is in a run.
#[derive(Debug)]
struct Active {
    run: Run,
    /// `start` succeeded.
    started: bool,
    /// The last, empty batch has been handed out.
    finishing: bool,
}

/// Ack token of a batch of a run.
struct RunToken {
    last: bool,
}

/// A [`BatchJob`] on a schedule, as a [`Source`].
#[derive(Debug)]
pub struct Scheduled<J> {
    job: J,
    schedule: Schedule,
    log: Arc<RunLog>,
    state: State,
    active: Option<Active>,
    /// A run to start at once: after a run was cut short, or for a first start.
    retry: Option<(Trigger, Option<String>)>,
    /// When the source was opened (fire times before it were missed while down).
    opened_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<J: BatchJob> Scheduled<J> {
    /// Schedules `job`.
    ///
    /// # Errors
    /// The schedule does not parse.
    pub fn new(job: J, config: &ScheduleConfig) -> Result<Scheduled<J>, String> {
        let schedule = Schedule::new(config)?;
        Ok(Scheduled {
            job,
            schedule,
            log: Arc::new(RunLog::new(config.clone())),
            state: State::default(),
            active: None,
            retry: None,
            opened_ms: 0,
        })
    }

    fn publish(&self) {
        let mut inner = self.log.lock();
        inner.watermark.clone_from(&self.state.watermark);
        inner.history.clone_from(&self.state.history);
        inner.running = self.active.as_ref().map(|a| a.run.clone());
        inner.next_ms = self.next_due();
    }

    fn next_due(&self) -> Option<i64> {
        match self.state.fired_ms {
            Some(f) => self.schedule.next_after(f),
            None => self.schedule.next_after(self.opened_ms),
        }
    }

    fn remember(&mut self, run: Run) {
        self.state.history.push_back(run);
        while self.state.history.len() > self.schedule.config.history_max {
            self.state.history.pop_front();
        }
    }

    fn cursor(&self) -> String {
        let mut state = self.state.clone();
        state.run = self.active.as_ref().map(|a| a.run.clone());
        serde_json::to_string(&state).expect("the state serializes")
    }

    /// Ends the active run as failed; the next call starts a retry from its starting watermark.
    fn fail_run(&mut self, error: &str) {
        if let Some(mut a) = self.active.take() {
            a.run.outcome = Outcome::Failed;
            a.run.ended_ms = Some(now_ms());
            a.run.error = Some(error.to_string());
            self.retry = Some((Trigger::Retry, a.run.watermark_before.clone()));
            self.remember(a.run);
        }
        self.publish();
    }

    fn begin(&mut self, trigger: Trigger, scheduled_ms: Option<i64>, from: Option<String>) {
        let id = self.state.next_id;
        self.state.next_id += 1;
        self.active = Some(Active {
            run: Run {
                id,
                trigger,
                scheduled_ms,
                started_ms: now_ms(),
                ended_ms: None,
                rows: 0,
                appended: 0,
                duplicates: 0,
                dead_lettered: 0,
                watermark_before: from,
                watermark_after: None,
                outcome: Outcome::Running,
                error: None,
            },
            started: false,
            finishing: false,
        });
        self.publish();
    }

    /// Waits until a run is due (or triggered) and begins it.
    async fn wait_for_run(&mut self) {
        loop {
            if let Some((trigger, from)) = self.retry.take() {
                self.begin(trigger, None, from);
                return;
            }
            let request = self.log.lock().pending.take();
            if let Some(r) = request {
                // A backfill from "" starts from the beginning (the job's configured start).
                let from = match r.watermark {
                    Some(w) if w.is_empty() => None,
                    Some(w) => Some(w),
                    None => self.state.watermark.clone(),
                };
                self.begin(r.trigger, None, from);
                return;
            }
            let now = now_ms();
            let due = self.next_due();
            match due {
                Some(due) if due <= now => {
                    let latest = self.schedule.last_at_or_before(now).unwrap_or(due);
                    if !self.schedule.config.catch_up && due < self.opened_ms {
                        // Missed while down, and catching up is off: skip to now.
                        self.state.fired_ms = Some(latest);
                        self.publish();
                        continue;
                    }
                    let trigger = if latest > due || due < self.opened_ms {
                        Trigger::CatchUp
                    } else {
                        Trigger::Schedule
                    };
                    self.state.fired_ms = Some(latest);
                    self.begin(trigger, Some(latest), self.state.watermark.clone());
                    return;
                }
                _ => {
                    self.publish();
                    let sleep_ms = due.map_or(60_000, |d| (d - now).clamp(1, 60_000));
                    // Cancel-safe: nothing is taken before the sleep ends.
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_millis(sleep_ms as u64)) => {}
                        () = self.log.wake.notified() => {}
                    }
                }
            }
        }
    }
}

impl<J: BatchJob> Source for Scheduled<J> {
    fn kind(&self) -> &'static str {
        self.job.kind()
    }

    async fn open(&mut self, cursor: Option<String>) -> Result<(), SourceError> {
        self.opened_ms = now_ms();
        match cursor {
            Some(c) => {
                let mut state: State =
                    serde_json::from_str(&c).map_err(|e| SourceError::Fatal {
                        message: format!("the stored schedule state does not parse: {e}"),
                    })?;
                if let Some(mut run) = state.run.take() {
                    // Stopped mid-run: the watermark did not move; run again from where that
                    // run started.
                    run.outcome = Outcome::Interrupted;
                    run.ended_ms = Some(self.opened_ms);
                    self.retry = Some((Trigger::Retry, run.watermark_before.clone()));
                    self.state = state;
                    self.remember(run);
                } else {
                    self.state = state;
                }
            }
            None => {
                if self.schedule.config.run_on_start {
                    self.retry = Some((Trigger::Start, None));
                }
            }
        }
        self.publish();
        Ok(())
    }

    async fn next_batch(&mut self, records_max: usize) -> Result<Option<SourceBatch>, SourceError> {
        if self.active.as_ref().is_none_or(|a| a.finishing) {
            self.wait_for_run().await;
        }
        let active = self.active.as_mut().expect("a run is active");
        if !active.started {
            let from = active.run.watermark_before.clone();
            let backfill = active.run.trigger == Trigger::Backfill;
            if let Err(e) = self.job.start(from).await {
                self.fail_run(&e.to_string());
                if backfill && matches!(e, SourceError::Fatal { .. }) {
                    // A watermark the job cannot use (an operator's typo): that run fails, the
                    // stored watermark stays, and the schedule goes on.
                    self.retry = None;
                    self.publish();
                    return Err(SourceError::transient(format!("backfill refused: {e}")));
                }
                return Err(e);
            }
            if let Some(a) = self.active.as_mut() {
                a.started = true;
            }
        }
        let items = match self.job.next(records_max).await {
            Ok(items) => items,
            Err(e) => {
                self.fail_run(&e.to_string());
                return Err(e);
            }
        };
        let active = self.active.as_mut().expect("a run is active");
        if items.is_empty() {
            // The run is complete once this empty batch's cursor is stored: it carries the new
            // watermark and the run in the history.
            let after = self
                .job
                .watermark()
                .or_else(|| active.run.watermark_before.clone());
            if after
                .as_ref()
                .is_some_and(|w| w.len() > WATERMARK_BYTES_MAX)
            {
                let e = SourceError::Fatal {
                    message: format!(
                        "the job's watermark is longer than {WATERMARK_BYTES_MAX} bytes"
                    ),
                };
                self.fail_run(&e.to_string());
                return Err(e);
            }
            active.finishing = true;
            let mut run = active.run.clone();
            run.watermark_after.clone_from(&after);
            run.outcome = Outcome::Ok;
            run.ended_ms = Some(now_ms());
            let mut state = self.state.clone();
            state.watermark = after;
            state.run = None;
            state.history.push_back(run);
            while state.history.len() > self.schedule.config.history_max {
                state.history.pop_front();
            }
            return Ok(Some(SourceBatch {
                records: Vec::new(),
                cursor: Some(serde_json::to_string(&state).expect("the state serializes")),
                token: Some(Box::new(RunToken { last: true })),
                rejected: Vec::new(),
            }));
        }
        let mut records = Vec::with_capacity(items.len());
        let mut rejected: Vec<Rejected> = Vec::new();
        for item in items {
            match item {
                Item::Event(v) => records.push(v),
                Item::Rejected(r) => rejected.push(r),
            }
        }
        active.run.rows += (records.len() + rejected.len()) as u64;
        Ok(Some(SourceBatch {
            records,
            rejected,
            cursor: Some(self.cursor()),
            token: Some(Box::new(RunToken { last: false })),
        }))
    }

    async fn ack(
        &mut self,
        token: Option<AckToken>,
        outcomes: Vec<RecordOutcome>,
    ) -> Result<(), SourceError> {
        let last = token
            .and_then(|t| t.downcast::<RunToken>().ok())
            .is_some_and(|t| t.last);
        if let Some(a) = self.active.as_mut() {
            for l in outcomes.iter().flat_map(|o| &o.landings) {
                match l {
                    Landing::Appended {
                        duplicate: true, ..
                    } => a.run.duplicates += 1,
                    Landing::Appended { .. } => a.run.appended += 1,
                    Landing::DeadLettered { .. } => a.run.dead_lettered += 1,
                }
            }
        }
        if last && let Some(a) = self.active.take() {
            let mut run = a.run;
            run.watermark_after = self
                .job
                .watermark()
                .or_else(|| run.watermark_before.clone());
            run.outcome = Outcome::Ok;
            run.ended_ms = Some(now_ms());
            self.state.watermark.clone_from(&run.watermark_after);
            self.remember(run);
        }
        self.publish();
        Ok(())
    }

    async fn nack(&mut self, _token: Option<AckToken>, error: &str) {
        self.fail_run(error);
    }

    fn runs(&self) -> Option<Arc<RunLog>> {
        Some(self.log.clone())
    }
}

/// A finished run's counts as JSON, for logs and tests.
#[must_use]
pub fn run_json(run: &Run) -> Value {
    serde_json::to_value(run).expect("a run serializes")
}
