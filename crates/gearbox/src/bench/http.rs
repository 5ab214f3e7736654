//! `gearbox bench http`: the server over HTTP, as users drive it, with `sync=always`.
//!
//! It starts its own `gearbox serve` (this same binary) on a free loopback port over a scratch
//! directory, then measures two things:
//! - **ingest throughput**: `--producers` threads POST batched CloudEvents
//!   (`application/cloudevents-batch+json`, `--batch` events of `--event-bytes` of data each) for
//!   `--seconds`; it reports events/s, payload MB/s and request latency. Every 201 means the
//!   events were fsynced.
//! - **produce-to-consume latency**: one producer sends `--rate` events/s in batches every
//!   `--tick-ms`, each event carrying its send time; one consumer long-polls a cursor
//!   subscription and commits. It reports the latency from just before the POST to the moment the
//!   poll returned the event, at p50, p99 and max.
//!
//! With `--schema` it also measures what validation at ingest costs: a 10-field JSON Schema is
//! registered for one of two otherwise identical topics, and ingest of the same 10-field JSON
//! events is measured on each in alternating rounds (plain, checked, plain, checked), reported
//! side by side with the ratio.
//!
//! Both run on this 2-core machine with the server, so client CPU competes with the server's: the
//! figures are for this box, not for the server alone.

use super::Scratch;
use super::hist::Histogram;
use super::load::{self, E2e, Ingest, Producer, Workload};
use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest `--seconds` accepted.
const SECONDS_MAX: u64 = 120;
/// Largest `--batch` (the server's `BATCH_EVENTS_MAX`).
const BATCH_MAX: usize = 10_000;
/// Most producer threads.
const PRODUCERS_MAX: usize = 64;
/// How long the server may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of `gearbox bench http`.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Concurrent producers for the throughput run.
    #[arg(long, default_value_t = 4)]
    pub producers: usize,
    /// Events per request in the throughput run.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Bytes of data per event.
    #[arg(long, default_value_t = 256)]
    pub event_bytes: usize,
    /// Distinct partition keys the events cycle through.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Events per second for the latency run.
    #[arg(long, default_value_t = 5000)]
    pub rate: u64,
    /// Milliseconds between the latency run's requests (rate × tick / 1000 events each).
    #[arg(long, default_value_t = 10)]
    pub tick_ms: u64,
    /// Parent directory for the server's data (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep the data directory afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Also measure ingest with a 10-field JSON Schema registered (validation at ingest).
    #[arg(long)]
    pub schema: bool,
    /// Also measure what observability costs ingest: a server with lineage off, the default
    /// (lineage on), and the default while `/metrics` is scraped every
    /// [`SCRAPE_INTERVAL_MS`] ms, in alternating rounds.
    #[arg(long)]
    pub observability: bool,
    /// Rounds of each `--observability` case (more rounds, less noise in the medians).
    #[arg(long, default_value_t = 6)]
    pub rounds: usize,
}

/// How often `--observability` scrapes `/metrics` during its third case (Prometheus' default is
/// every 15 s; this is 150 times as often).
pub const SCRAPE_INTERVAL_MS: u64 = 100;
/// Rounds of each `--observability` case.
const OBSERVABILITY_ROUNDS_MAX: usize = 100;

/// The 10-field order schema of `--schema` (JSON Schema 2020-12).
const ORDER_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"order_id":{"type":"string"},"customer":{"type":"string"},"total":{"type":"number","minimum":0},"currency":{"type":"string","enum":["EUR","USD"]},"items":{"type":"integer","minimum":1},"paid":{"type":"boolean"},"created":{"type":"string"},"channel":{"type":"string","maxLength":32},"coupon":{"type":["string","null"]},"note":{"type":"string"}},"required":["order_id","customer","total","currency"],"additionalProperties":false}"#;
/// An order that matches it (about 230 bytes).
const ORDER_DATA: &str = r#"{"order_id":"o-1001","customer":"c-7","total":42.5,"currency":"EUR","items":3,"paid":true,"created":"2026-11-23T10:00:00Z","channel":"web","coupon":null,"note":"leave at the door, ring twice please"}"#;

/// A `gearbox serve` child process, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess(Child);

impl ServerProcess {
    /// CPU time (user + system) the server has used so far, from `/proc/<pid>/stat`, in clock
    /// ticks (`None` where `/proc` cannot tell).
    #[must_use]
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).ok()?;
        // Fields after the command name (which may hold spaces) start after its ')'.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP client that returns error statuses as answers.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Value)> {
    let mut resp = agent
        .post(url)
        .header("content-type", content_type)
        .send(body)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// POSTs a batch and expects 201. The reply (each event's position) is read, so the connection
/// can be reused, but parsed only to report a failure: a producer that needs no positions
/// should not spend the shared CPU on them.
fn publish(agent: &ureq::Agent, url: &str, body: &[u8]) -> anyhow::Result<()> {
    let mut resp = agent
        .post(url)
        .header("content-type", "application/cloudevents-batch+json")
        .send(body)?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    ensure!(status == 201, "publish answered {status}: {text}");
    Ok(())
}

/// Starts `gearbox serve` (this binary) over `data_dir` on a free loopback port and waits until
/// it is healthy; returns it and its base URL.
///
/// # Errors
/// If it cannot start or does not become healthy within [`START_TIMEOUT`].
pub fn start_server(data_dir: &std::path::Path) -> anyhow::Result<(ServerProcess, String)> {
    start_server_with(data_dir, &[])
}

/// [`start_server`] with extra `gearbox serve` options.
///
/// # Errors
/// As [`start_server`].
pub fn start_server_with(
    data_dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(ServerProcess, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe().context("locating the gearbox binary")?;
    let child = Command::new(exe)
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args([
            "--http",
            &format!("127.0.0.1:{port}"),
            "--publish-in-flight-max",
            "256",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting gearbox serve")?;
    let server = ServerProcess(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + START_TIMEOUT;
    while ureq::get(&format!("{url}/healthz")).call().is_err() {
        ensure!(
            Instant::now() < deadline,
            "gearbox serve did not become healthy in {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, url))
}

/// Appends `n` events (`first`, `first + 1`, ...) to `out` as a JSON array, formatted directly:
/// the client shares the machine with the server, so it should spend as little CPU as a careful
/// producer would. Each event has the attributes of [`super::embedded::event`].
fn batch_body(
    out: &mut String,
    w: &Workload,
    first: u64,
    n: usize,
    data: &Data<'_>,
    sent_ns: Option<u64>,
) {
    use std::fmt::Write as _;
    out.clear();
    out.push('[');
    for seq in first..first + n as u64 {
        if seq > first {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"specversion":"1.0","id":"{seq}","source":"/bench","partitionkey":"k{}""#,
            seq % w.keys
        );
        if let Some(ns) = sent_ns {
            let _ = write!(out, r#","sentns":"{ns}""#);
        }
        match data {
            Data::Text(d) => {
                let _ = write!(
                    out,
                    r#","type":"bench.event","datacontenttype":"text/plain","data":"{d}"}}"#
                );
            }
            Data::Json(d) => {
                let _ = write!(
                    out,
                    r#","type":"bench.order","datacontenttype":"application/json","data":{d}}}"#
                );
            }
        }
    }
    out.push(']');
}

/// What an event carries: `--event-bytes` of text, or a JSON document.
enum Data<'a> {
    Text(&'a str),
    Json(&'a str),
}

/// Batched ingest of the workload into `topic` (which must exist), one connection per producer.
///
/// # Errors
/// A request that fails or is answered with anything but 201.
pub fn ingest(url: &str, w: &Workload, topic: &str, json: Option<&str>) -> anyhow::Result<Ingest> {
    let events_url = format!("{url}/v1/topics/{topic}/events");
    let text = w.data();
    let producers: Vec<Producer<'_>> = (0..w.concurrency)
        .map(|_| {
            let (agent, events_url, text) = (agent(), &events_url, &text);
            let mut body = String::new();
            Box::new(move |first: u64, n: usize| {
                let data = match json {
                    Some(j) => Data::Json(j),
                    None => Data::Text(text),
                };
                batch_body(&mut body, w, first, n, &data, None);
                publish(&agent, events_url, body.as_bytes())
            }) as Producer<'_>
        })
        .collect();
    load::drive(w, producers)
}

/// Produce-to-consume over HTTP: the paced producer POSTs batches to topic `latency` (which
/// must exist); one consumer long-polls a cursor subscription (`wait_ms` 500) and commits after
/// each poll.
///
/// # Errors
/// A request that fails or is answered with an unexpected status.
pub fn e2e(url: &str, w: &Workload) -> anyhow::Result<E2e> {
    let sub = format!("{url}/v1/topics/latency/subscriptions/bench");
    let a = agent();
    let mut resp = a
        .put(&sub)
        .header("content-type", "application/json")
        .send(
            json!({"mode": "cursor", "start": "earliest"})
                .to_string()
                .as_bytes(),
        )?;
    ensure!(
        resp.status().as_u16() < 300,
        "creating the subscription answered {}",
        resp.status()
    );
    let _ = resp.body_mut().read_to_string();
    let events_url = format!("{url}/v1/topics/latency/events");
    let text = w.data();
    let mut body = String::new();
    load::produce_consume(
        w,
        |base, finish| {
            let agent = agent();
            let (mut received, mut hist) = (0u64, Histogram::new());
            while !finish.consumer_may_stop(received) {
                let (status, reply) = post(
                    &agent,
                    &format!("{sub}/poll"),
                    "application/json",
                    json!({"max_events": 1000, "wait_ms": 500})
                        .to_string()
                        .as_bytes(),
                )?;
                ensure!(status == 200, "poll answered {status}: {reply}");
                let now = load::nanos_since(base);
                let events = reply["events"].as_array().cloned().unwrap_or_default();
                let mut next = std::collections::BTreeMap::new();
                for e in &events {
                    let sent: u64 = e["event"]["sentns"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .context("an event without its send time")?;
                    hist.record_ns(now.saturating_sub(sent));
                    received += 1;
                    let p = e["partition"].as_u64().unwrap_or(0);
                    let o = e["offset"].as_u64().unwrap_or(0) + 1;
                    next.insert(p, o);
                }
                if !next.is_empty() {
                    let offsets: Vec<Value> = next
                        .iter()
                        .map(|(p, o)| json!({"partition": p, "offset": o}))
                        .collect();
                    let (status, reply) = post(
                        &agent,
                        &format!("{sub}/commit"),
                        "application/json",
                        json!({"offsets": offsets}).to_string().as_bytes(),
                    )?;
                    ensure!(status < 300, "commit answered {status}: {reply}");
                }
            }
            Ok((received, hist))
        },
        |first, n, sent_ns| {
            batch_body(&mut body, w, first, n, &Data::Text(&text), Some(sent_ns));
            publish(&a, &events_url, body.as_bytes())
        },
    )
}

/// Creates a topic.
///
/// # Errors
/// A failed request or any answer but 201.
pub fn create_topic(a: &ureq::Agent, url: &str, name: &str, partitions: u32) -> anyhow::Result<()> {
    let (status, reply) = post(
        a,
        &format!("{url}/v1/topics"),
        "application/json",
        json!({"name": name, "partitions": partitions})
            .to_string()
            .as_bytes(),
    )?;
    ensure!(
        status == 201,
        "creating topic {name} answered {status}: {reply}"
    );
    Ok(())
}

/// Ingest of the same JSON orders into a plain topic and into one whose event type has the
/// 10-field schema registered, in alternating rounds.
struct SchemaCost {
    plain: Vec<f64>,
    checked: Vec<f64>,
}

fn schema_cost(
    a: &ureq::Agent,
    url: &str,
    args: &HttpArgs,
    w: &Workload,
) -> anyhow::Result<SchemaCost> {
    for name in ["orders-plain", "orders-checked"] {
        create_topic(a, url, name, args.partitions)?;
    }
    let (status, reply) = post(
        a,
        &format!("{url}/registry/subjects/orders-checked-bench.order/versions"),
        "application/vnd.schemaregistry.v1+json",
        json!({"schema": ORDER_SCHEMA, "schemaType": "JSON"})
            .to_string()
            .as_bytes(),
    )?;
    ensure!(
        status == 200,
        "registering the schema answered {status}: {reply}"
    );
    let mut out = SchemaCost {
        plain: Vec::new(),
        checked: Vec::new(),
    };
    for _ in 0..2 {
        out.plain
            .push(ingest(url, w, "orders-plain", Some(ORDER_DATA))?.events_per_s());
        out.checked
            .push(ingest(url, w, "orders-checked", Some(ORDER_DATA))?.events_per_s());
    }
    Ok(out)
}

/// The mean of a case's rounds.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// A case's rounds, for the report: `412034, 398112, ...`.
fn rounds(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn report_schema_cost(c: &SchemaCost, args: &HttpArgs) {
    let (plain, checked) = (mean(&c.plain), mean(&c.checked));
    let cost = (1.0 - checked / plain) * 100.0;
    if args.json {
        println!(
            "{}",
            json!({"schema": {"plain_events_per_s": c.plain, "checked_events_per_s": c.checked,
                              "plain_mean": plain, "checked_mean": checked, "cost_percent": cost}})
        );
        return;
    }
    println!();
    println!(
        "validation at ingest (10-field JSON Schema, {} producers x {} events/request, rounds alternate)",
        args.producers, args.batch
    );
    println!(
        "  without schema    {plain:>12.0} events/s  (rounds: {})",
        rounds(&c.plain)
    );
    println!(
        "  with schema       {checked:>12.0} events/s  (rounds: {})",
        rounds(&c.checked)
    );
    println!(
        "  ratio             {:>12.2}  (cost {cost:.1}% of throughput)",
        checked / plain
    );
}

/// Ingest throughput per round for each observability case.
struct ObservabilityCost {
    lineage_off: Vec<f64>,
    lineage_on: Vec<f64>,
    /// The server's CPU ticks per million events acknowledged, per round.
    cpu_off: Vec<f64>,
    cpu_on: Vec<f64>,
    scraped: Vec<f64>,
    /// Scrapes made during the scraped rounds, and their mean time.
    scrapes: u64,
    scrape_ms: f64,
    scrape_bytes: usize,
}

/// Two fresh servers, one with lineage off and one with the defaults, so that neither carries
/// the state of earlier runs.
fn observability_cost(
    scratch: &std::path::Path,
    w: &Workload,
    partitions: u32,
    rounds: usize,
) -> anyhow::Result<ObservabilityCost> {
    let a = agent();
    let config = scratch.join("lineage-off.yaml");
    std::fs::write(&config, "lineage: { enabled: false }\n")?;
    let (off, url_off) = start_server_with(
        &scratch.join("data-lineage-off"),
        &["--config", config.to_str().context("a UTF-8 path")?],
    )?;
    let (on, url_on) = start_server(&scratch.join("data-lineage-on"))?;
    // Events/s, and the server's CPU ticks per million events.
    let measured = |server: &ServerProcess, url: &str| -> anyhow::Result<(f64, f64)> {
        let before = server.cpu_ticks();
        let i = ingest(url, w, "obs", None)?;
        let ticks = match (before, server.cpu_ticks()) {
            (Some(b), Some(a)) => (a - b) as f64 * 1e6 / i.events.max(1) as f64,
            _ => f64::NAN,
        };
        Ok((i.events_per_s(), ticks))
    };
    let url_on = url_on.as_str();
    create_topic(&a, &url_off, "obs", partitions)?;
    create_topic(&a, url_on, "obs", partitions)?;
    let mut out = ObservabilityCost {
        lineage_off: Vec::new(),
        lineage_on: Vec::new(),
        cpu_off: Vec::new(),
        cpu_on: Vec::new(),
        scraped: Vec::new(),
        scrapes: 0,
        scrape_ms: 0.0,
        scrape_bytes: 0,
    };
    let mut scrape_total = Duration::ZERO;
    // The order alternates round by round (off, on, scraped; then scraped, on, off), so a drift
    // of the machine over the run (page cache, the disk's own state) hits every case alike.
    for round in 0..rounds {
        let mut cases = [0u8, 1, 2];
        if round % 2 == 1 {
            cases.reverse();
        }
        for case in cases {
            match case {
                0 => {
                    let (rate, cpu) = measured(&off, &url_off)?;
                    out.lineage_off.push(rate);
                    out.cpu_off.push(cpu);
                }
                1 => {
                    let (rate, cpu) = measured(&on, url_on)?;
                    out.lineage_on.push(rate);
                    out.cpu_on.push(cpu);
                }
                _ => {
                    let (rate, scrapes) = scraped_ingest(url_on, w)?;
                    out.scraped.push(rate);
                    out.scrapes += scrapes.0;
                    scrape_total += scrapes.1;
                    out.scrape_bytes = scrapes.2;
                }
            }
        }
    }
    out.scrape_ms = scrape_total.as_secs_f64() * 1000.0 / out.scrapes.max(1) as f64;
    Ok(out)
}

/// Ingest into `url_on` while a thread scrapes its `/metrics` every [`SCRAPE_INTERVAL_MS`];
/// returns events/s and (scrapes, time spent scraping, bytes of the last scrape).
fn scraped_ingest(url_on: &str, w: &Workload) -> anyhow::Result<(f64, (u64, Duration, usize))> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let scraper = s.spawn(|| -> anyhow::Result<(u64, Duration, usize)> {
            let a = agent();
            let (mut n, mut spent, mut bytes) = (0u64, Duration::ZERO, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let text = a
                    .get(&format!("{url_on}/metrics"))
                    .call()?
                    .body_mut()
                    .read_to_string()?;
                spent += t.elapsed();
                bytes = text.len();
                n += 1;
                std::thread::sleep(Duration::from_millis(SCRAPE_INTERVAL_MS));
            }
            Ok((n, spent, bytes))
        });
        let rate = ingest(url_on, w, "obs", None).map(|i| i.events_per_s());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let scrapes = scraper
            .join()
            .map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        Ok((rate?, scrapes))
    })
}

/// The median of the per-round ratios `a[i] / b[i]` (rounds are paired: they ran back to back).
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    r.sort_by(f64::total_cmp);
    match r.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => r[n / 2],
        n => (r[n / 2 - 1] + r[n / 2]) / 2.0,
    }
}

fn report_observability_cost(c: &ObservabilityCost, args: &HttpArgs) {
    let (off, on, scraped) = (mean(&c.lineage_off), mean(&c.lineage_on), mean(&c.scraped));
    let on_off = median_ratio(&c.lineage_on, &c.lineage_off);
    let scraped_on = median_ratio(&c.scraped, &c.lineage_on);
    let lineage_cost = (1.0 - on_off) * 100.0;
    let cpu_ratio = median_ratio(&c.cpu_on, &c.cpu_off);
    let cpu_cost = (cpu_ratio - 1.0) * 100.0;
    let scrape_cost = (1.0 - scraped_on) * 100.0;
    if args.json {
        println!(
            "{}",
            json!({"observability": {
                "lineage_off_events_per_s": c.lineage_off, "lineage_on_events_per_s": c.lineage_on,
                "scraped_events_per_s": c.scraped, "lineage_cost_percent": lineage_cost,
                "cpu_ticks_per_million_off": c.cpu_off, "cpu_ticks_per_million_on": c.cpu_on,
                "lineage_cpu_cost_percent": cpu_cost,
                "scrape_cost_percent": scrape_cost, "scrape_interval_ms": SCRAPE_INTERVAL_MS,
                "scrapes": c.scrapes, "scrape_mean_ms": c.scrape_ms, "scrape_bytes": c.scrape_bytes}})
        );
        return;
    }
    println!();
    println!(
        "observability cost ({} producers x {} events/request, {} alternating rounds)",
        args.producers, args.batch, args.rounds
    );
    println!(
        "  lineage off              {off:>10.0} events/s  (rounds: {})",
        rounds(&c.lineage_off)
    );
    println!(
        "  lineage on (default)     {on:>10.0} events/s  (rounds: {})",
        rounds(&c.lineage_on)
    );
    println!(
        "  on + /metrics every {SCRAPE_INTERVAL_MS} ms {scraped:>9.0} events/s  (rounds: {})",
        rounds(&c.scraped)
    );
    println!(
        "  lineage cost             {lineage_cost:>9.1}% of ingest (median of per-round on / off = {on_off:.3})"
    );
    println!(
        "  scrape cost              {scrape_cost:>9.1}% of ingest (median of per-round scraped / on = {scraped_on:.3})"
    );
    println!(
        "  server CPU per event     {cpu_cost:>9.1}% more with lineage (median of per-round on / off = {cpu_ratio:.3}; ticks per million events off: {}, on: {})",
        rounds(&c.cpu_off),
        rounds(&c.cpu_on)
    );
    println!(
        "  scrapes                  {:>10}  ({:.2} ms each, {} bytes)",
        c.scrapes, c.scrape_ms, c.scrape_bytes
    );
}

/// Runs `gearbox bench http`.
///
/// # Errors
/// Bad options, a server that does not start, or an unexpected reply.
pub fn run(args: &HttpArgs) -> anyhow::Result<()> {
    ensure!(
        (1..=SECONDS_MAX).contains(&args.seconds),
        "--seconds must be 1 to {SECONDS_MAX}"
    );
    ensure!(
        (1..=OBSERVABILITY_ROUNDS_MAX).contains(&args.rounds),
        "--rounds must be 1 to {OBSERVABILITY_ROUNDS_MAX}"
    );
    ensure!(
        (1..=BATCH_MAX).contains(&args.batch),
        "--batch must be 1 to {BATCH_MAX}"
    );
    ensure!(
        (1..=PRODUCERS_MAX).contains(&args.producers),
        "--producers must be 1 to {PRODUCERS_MAX}"
    );
    ensure!(
        args.rate >= 1 && args.tick_ms >= 1,
        "--rate and --tick-ms must be at least 1"
    );
    let scratch = Scratch::create(args.dir.as_deref(), args.keep)?;
    let (server, url) = start_server(&scratch.path().join("data"))?;
    let a = agent();
    for name in ["ingest", "latency"] {
        create_topic(&a, &url, name, args.partitions)?;
    }
    // A time-bound run: the budget is unlimited and `seconds_max` ends it.
    let w = Workload {
        events: u64::MAX,
        event_bytes: args.event_bytes,
        batch: args.batch,
        concurrency: args.producers,
        keys: args.keys.max(1),
        partitions: args.partitions,
        rate: args.rate,
        tick_ms: args.tick_ms,
        e2e: Duration::from_secs(args.seconds),
        seconds_max: Duration::from_secs(args.seconds),
    };
    let t = ingest(&url, &w, "ingest", None)?;
    let l = e2e(&url, &w)?;
    let schema = if args.schema {
        Some(schema_cost(&a, &url, args, &w)?)
    } else {
        None
    };
    let observability = if args.observability {
        Some(observability_cost(
            scratch.path(),
            &w,
            args.partitions,
            args.rounds,
        )?)
    } else {
        None
    };
    drop(server);
    let events_s = t.events_per_s();
    let requests = t.latency.count();
    let mb_s = events_s * args.event_bytes as f64 / 1e6;
    if args.json {
        println!(
            "{}",
            json!({
                "throughput": {"producers": args.producers, "batch": args.batch, "event_bytes": args.event_bytes,
                               "partitions": args.partitions, "events": t.events, "seconds": t.seconds,
                               "events_per_s": events_s, "payload_mb_per_s": mb_s, "requests": requests,
                               "request_p50_ms": t.latency.quantile_ms(0.5), "request_p99_ms": t.latency.quantile_ms(0.99)},
                "latency": {"rate": args.rate, "tick_ms": args.tick_ms, "sent": l.sent, "received": l.received,
                            "p50_ms": l.latency.quantile_ms(0.5), "p99_ms": l.latency.quantile_ms(0.99),
                            "max_ms": l.latency.quantile_ms(1.0)},
            })
        );
        if let Some(c) = &schema {
            report_schema_cost(c, args);
        }
        if let Some(c) = &observability {
            report_observability_cost(c, args);
        }
        return Ok(());
    }
    println!(
        "gearbox bench http: sync=always, {} partitions, {} B events, loopback, server and clients on this machine",
        args.partitions, args.event_bytes
    );
    println!();
    println!(
        "ingest (batched CloudEvents, {} producers x {} events/request, {:.1} s)",
        args.producers, args.batch, t.seconds
    );
    println!("  events/s          {events_s:>12.0}");
    println!("  payload MB/s      {mb_s:>12.1}");
    println!("  requests          {requests:>12}");
    println!(
        "  request p50 / p99 {:>8.2} / {:.2} ms",
        t.latency.quantile_ms(0.5),
        t.latency.quantile_ms(0.99)
    );
    println!();
    println!(
        "produce-to-consume (long poll, cursor subscription, {} events/s in requests every {} ms)",
        args.rate, args.tick_ms
    );
    println!("  sent / received   {:>8} / {}", l.sent, l.received);
    println!(
        "  latency p50       {:>12.2} ms",
        l.latency.quantile_ms(0.5)
    );
    println!(
        "  latency p99       {:>12.2} ms",
        l.latency.quantile_ms(0.99)
    );
    println!(
        "  latency max       {:>12.2} ms",
        l.latency.quantile_ms(1.0)
    );
    if let Some(c) = &schema {
        report_schema_cost(c, args);
    }
    if let Some(c) = &observability {
        report_observability_cost(c, args);
    }
    ensure!(
        l.received == l.sent,
        "the consumer received {} of {} events",
        l.received,
        l.sent
    );
    Ok(())
}
