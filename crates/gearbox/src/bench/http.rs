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

use crate::bench::Scratch;
use crate::bench::hist::Histogram;
use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
}

/// The 10-field order schema of `--schema` (JSON Schema 2020-12).
const ORDER_SCHEMA: &str = r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","properties":{"order_id":{"type":"string"},"customer":{"type":"string"},"total":{"type":"number","minimum":0},"currency":{"type":"string","enum":["EUR","USD"]},"items":{"type":"integer","minimum":1},"paid":{"type":"boolean"},"created":{"type":"string"},"channel":{"type":"string","maxLength":32},"coupon":{"type":["string","null"]},"note":{"type":"string"}},"required":["order_id","customer","total","currency"],"additionalProperties":false}"#;
/// An order that matches it (about 230 bytes).
const ORDER_DATA: &str = r#"{"order_id":"o-1001","customer":"c-7","total":42.5,"currency":"EUR","items":3,"paid":true,"created":"2026-11-23T10:00:00Z","channel":"web","coupon":null,"note":"leave at the door, ring twice please"}"#;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent() -> ureq::Agent {
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

fn start_server(data_dir: &std::path::Path) -> anyhow::Result<(ServerProcess, String)> {
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

/// A batch of `n` events as JSON text, formatted directly: the client shares the machine with
/// the server, so it should spend as little CPU as a careful producer would.
fn batch_body(ids: &mut u64, n: usize, data: &Data<'_>, sent_ns: Option<u128>) -> String {
    let len = match data {
        Data::Text(d) | Data::Json(d) => d.len(),
    };
    let mut out = String::with_capacity(n * (len + 160) + 2);
    out.push('[');
    for i in 0..n {
        *ids += 1;
        if i > 0 {
            out.push(',');
        }
        let sent = sent_ns
            .map(|ns| format!(r#","sentns":"{ns}""#))
            .unwrap_or_default();
        match data {
            Data::Text(data) => out.push_str(&format!(
                r#"{{"specversion":"1.0","id":"{}","source":"/bench","type":"bench.event","datacontenttype":"text/plain"{sent},"data":"{data}"}}"#,
                ids
            )),
            Data::Json(data) => out.push_str(&format!(
                r#"{{"specversion":"1.0","id":"{}","source":"/bench","type":"bench.order","datacontenttype":"application/json"{sent},"data":{data}}}"#,
                ids
            )),
        }
    }
    out.push(']');
    out
}

/// What an event carries: `--event-bytes` of text, or a JSON document.
enum Data<'a> {
    Text(&'a str),
    Json(&'a str),
}

struct Throughput {
    events: u64,
    requests: u64,
    seconds: f64,
    latency: Histogram,
}

fn throughput(
    url: &str,
    args: &HttpArgs,
    topic: &str,
    json: Option<&'static str>,
) -> anyhow::Result<Throughput> {
    let events_url = format!("{url}/v1/topics/{topic}/events");
    let data = "x".repeat(args.event_bytes);
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..args.producers)
        .map(|p| {
            let (url, data, stop, events) = (
                events_url.clone(),
                data.clone(),
                stop.clone(),
                events.clone(),
            );
            let batch = args.batch;
            std::thread::spawn(move || -> anyhow::Result<(u64, Histogram)> {
                let agent = agent();
                let mut ids = (p as u64) << 40;
                let (mut requests, mut hist) = (0u64, Histogram::new());
                let data = match json {
                    Some(j) => Data::Json(j),
                    None => Data::Text(&data),
                };
                while !stop.load(Ordering::Relaxed) {
                    let body = batch_body(&mut ids, batch, &data, None);
                    let t = Instant::now();
                    let (status, reply) = post(
                        &agent,
                        &url,
                        "application/cloudevents-batch+json",
                        body.as_bytes(),
                    )?;
                    if status != 201 {
                        bail!("publish answered {status}: {reply}");
                    }
                    hist.record(t.elapsed());
                    requests += 1;
                    events.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok((requests, hist))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut out = Throughput {
        events: 0,
        requests: 0,
        seconds: 0.0,
        latency: Histogram::new(),
    };
    for h in handles {
        let (requests, hist) = h
            .join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
        out.requests += requests;
        out.latency.merge(&hist);
    }
    out.seconds = start.elapsed().as_secs_f64();
    out.events = events.load(Ordering::Relaxed);
    Ok(out)
}

struct Latency {
    sent: u64,
    received: u64,
    latency: Histogram,
}

fn latency(url: &str, args: &HttpArgs) -> anyhow::Result<Latency> {
    let base = Instant::now();
    let per_tick = usize::try_from((args.rate * args.tick_ms / 1000).max(1))?;
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
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (stop, sub) = (stop.clone(), sub.clone());
        std::thread::spawn(move || -> anyhow::Result<(u64, Histogram)> {
            let agent = agent();
            let (mut received, mut hist) = (0u64, Histogram::new());
            let mut idle_after_stop = 0;
            while idle_after_stop < 2 {
                let (status, reply) = post(
                    &agent,
                    &format!("{sub}/poll"),
                    "application/json",
                    json!({"max_events": 1000, "wait_ms": 500})
                        .to_string()
                        .as_bytes(),
                )?;
                ensure!(status == 200, "poll answered {status}: {reply}");
                let now = base.elapsed().as_nanos();
                let events = reply["events"].as_array().cloned().unwrap_or_default();
                if events.is_empty() && stop.load(Ordering::Relaxed) {
                    idle_after_stop += 1;
                }
                let mut next = std::collections::BTreeMap::new();
                for e in &events {
                    let sent: u128 = e["event"]["sentns"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(now);
                    hist.record_ns(u64::try_from(now.saturating_sub(sent)).unwrap_or(u64::MAX));
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
                    post(
                        &agent,
                        &format!("{sub}/commit"),
                        "application/json",
                        json!({"offsets": offsets}).to_string().as_bytes(),
                    )?;
                }
            }
            Ok((received, hist))
        })
    };
    let events_url = format!("{url}/v1/topics/latency/events");
    let data = "x".repeat(args.event_bytes);
    let (mut ids, mut sent) = (0u64, 0u64);
    let tick = Duration::from_millis(args.tick_ms);
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut next_tick = Instant::now();
    while Instant::now() < end {
        let body = batch_body(
            &mut ids,
            per_tick,
            &Data::Text(&data),
            Some(base.elapsed().as_nanos()),
        );
        let (status, reply) = post(
            &a,
            &events_url,
            "application/cloudevents-batch+json",
            body.as_bytes(),
        )?;
        ensure!(status == 201, "publish answered {status}: {reply}");
        sent += per_tick as u64;
        next_tick += tick;
        if let Some(wait) = next_tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (received, hist) = consumer
        .join()
        .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    Ok(Latency {
        sent,
        received,
        latency: hist,
    })
}

fn create_topic(a: &ureq::Agent, url: &str, name: &str, partitions: u32) -> anyhow::Result<()> {
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

fn schema_cost(a: &ureq::Agent, url: &str, args: &HttpArgs) -> anyhow::Result<SchemaCost> {
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
        let t = throughput(url, args, "orders-plain", Some(ORDER_DATA))?;
        out.plain.push(t.events as f64 / t.seconds);
        let t = throughput(url, args, "orders-checked", Some(ORDER_DATA))?;
        out.checked.push(t.events as f64 / t.seconds);
    }
    Ok(out)
}

fn report_schema_cost(c: &SchemaCost, args: &HttpArgs) {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
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
    let rounds = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
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
    let t = throughput(&url, args, "ingest", None)?;
    let l = latency(&url, args)?;
    let schema = if args.schema {
        Some(schema_cost(&a, &url, args)?)
    } else {
        None
    };
    drop(server);
    let events_s = t.events as f64 / t.seconds;
    let mb_s = events_s * args.event_bytes as f64 / 1e6;
    if args.json {
        println!(
            "{}",
            json!({
                "throughput": {"producers": args.producers, "batch": args.batch, "event_bytes": args.event_bytes,
                               "partitions": args.partitions, "events": t.events, "seconds": t.seconds,
                               "events_per_s": events_s, "payload_mb_per_s": mb_s, "requests": t.requests,
                               "request_p50_ms": t.latency.quantile_ms(0.5), "request_p99_ms": t.latency.quantile_ms(0.99)},
                "latency": {"rate": args.rate, "tick_ms": args.tick_ms, "sent": l.sent, "received": l.received,
                            "p50_ms": l.latency.quantile_ms(0.5), "p99_ms": l.latency.quantile_ms(0.99),
                            "max_ms": l.latency.quantile_ms(1.0)},
            })
        );
        if let Some(c) = &schema {
            report_schema_cost(c, args);
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
    println!("  requests          {:>12}", t.requests);
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
    ensure!(
        l.received == l.sent,
        "the consumer received {} of {} events",
        l.received,
        l.sent
    );
    Ok(())
}
