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
}

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
fn batch_body(ids: &mut u64, n: usize, data: &str, sent_ns: Option<u128>) -> String {
    let mut out = String::with_capacity(n * (data.len() + 160) + 2);
    out.push('[');
    for i in 0..n {
        *ids += 1;
        if i > 0 {
            out.push(',');
        }
        let sent = sent_ns
            .map(|ns| format!(r#","sentns":"{ns}""#))
            .unwrap_or_default();
        out.push_str(&format!(
            r#"{{"specversion":"1.0","id":"{}","source":"/bench","type":"bench.event","datacontenttype":"text/plain"{sent},"data":"{data}"}}"#,
            ids
        ));
    }
    out.push(']');
    out
}

struct Throughput {
    events: u64,
    requests: u64,
    seconds: f64,
    latency: Histogram,
}

fn throughput(url: &str, args: &HttpArgs) -> anyhow::Result<Throughput> {
    let events_url = format!("{url}/v1/topics/ingest/events");
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
        let body = batch_body(&mut ids, per_tick, &data, Some(base.elapsed().as_nanos()));
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
    for (name, partitions) in [("ingest", args.partitions), ("latency", args.partitions)] {
        let (status, reply) = post(
            &a,
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
    }
    let t = throughput(&url, args)?;
    let l = latency(&url, args)?;
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
    ensure!(
        l.received == l.sent,
        "the consumer received {} of {} events",
        l.received,
        l.sent
    );
    Ok(())
}
