//! The client verbs: `topics`, `produce`, `consume`, `replay` and `dlq`. Each talks to a
//! running server over its HTTP API (`--server`, default `http://127.0.0.1:7070`), prints
//! events as JSON lines on stdout and diagnostics on stderr, and exits non-zero on an error
//! reply, printing its stable code.

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::time::Duration;

/// Most events `produce` sends per request.
pub const PRODUCE_BATCH_MAX: usize = 10_000;
/// Longest line `produce` reads.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Where the server is.
#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// The server's base URL.
    #[arg(
        long,
        global = true,
        env = "GEARBOX_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub server: String,
}

/// `gearbox topics ...`
#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Create a topic.
    Create {
        /// Topic name: 1-249 of A-Z a-z 0-9 . _ -
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete sealed segments older than this many milliseconds.
        #[arg(long)]
        retention_ms: Option<u64>,
        /// Keep at most this many bytes per partition.
        #[arg(long)]
        retention_bytes: Option<u64>,
    },
    /// List topics.
    List,
    /// Show one topic with its partitions' offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic, its dead-letter topic and its subscriptions.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// `gearbox produce`
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to publish to.
    pub topic: String,
    /// Read from this file instead of stdin. Each line is a CloudEvent (a JSON object with
    /// `specversion`) or a payload (any other JSON, or plain text) to wrap in one.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// `type` for wrapped payloads.
    #[arg(long = "type", default_value = "gearbox.cli.event")]
    pub ty: String,
    /// `source` for wrapped payloads.
    #[arg(long, default_value = "/gearbox/cli")]
    pub source: String,
    /// `partitionkey` for wrapped payloads (events with the same key keep their order).
    #[arg(long)]
    pub key: Option<String>,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// `causationid` for wrapped payloads: the id of the event being handled when these were
    /// produced (lineage links them).
    #[arg(long)]
    pub causation_id: Option<String>,
    /// `correlationid` for wrapped payloads: the id shared by a whole cascade (defaults to the
    /// causation id when that is given).
    #[arg(long)]
    pub correlation_id: Option<String>,
}

/// `gearbox trace`
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// The event id (or, with `--correlation`, the correlation id).
    pub id: String,
    /// Find every event of the cascade whose `correlationid` is ID.
    #[arg(long)]
    pub correlation: bool,
    /// Print the server's JSON instead of one line per hop.
    #[arg(long)]
    pub json: bool,
}

/// `gearbox consume`
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    pub topic: String,
    /// Subscription name (created if missing).
    #[arg(long)]
    pub subscription: String,
    /// Where a new subscription starts: earliest, latest, or an RFC 3339 time.
    #[arg(long, default_value = "earliest")]
    pub from: String,
    /// `queue` (ack each event) or `cursor` (commit offsets).
    #[arg(long, default_value = "queue")]
    pub mode: String,
    /// Keep waiting for new events instead of stopping when caught up.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

/// `gearbox replay`
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Topic to read (with `--into`: the pipeline's own topic is re-read, and this is omitted).
    #[arg(required_unless_present = "into", conflicts_with = "into")]
    pub topic: Option<String>,
    /// Re-read into this sink pipeline instead of printing: it starts over at `--offset`
    /// (in every partition) or `--time` (or the topic's start), while every other pipeline and
    /// subscription carries on untouched.
    #[arg(long)]
    pub into: Option<String>,
    /// Only this partition (default: all, one after another).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Start at this offset.
    #[arg(long, conflicts_with = "time")]
    pub offset: Option<u64>,
    /// Start at the first event ingested at or after this RFC 3339 time.
    #[arg(long)]
    pub time: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<u64>,
}

/// `gearbox dlq ...`
#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered events not yet redriven (one JSON line each).
    List {
        /// The original topic.
        topic: String,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        max: u64,
    },
    /// Show one dead-lettered event in full.
    Show {
        /// The original topic.
        topic: String,
        /// Its partition in the DLQ topic.
        #[arg(long)]
        partition: u32,
        /// Its offset in the DLQ topic.
        #[arg(long)]
        offset: u64,
    },
    /// Append every dead-lettered event not yet redriven back to its original topic.
    Redrive {
        /// The original topic.
        topic: String,
    },
}

/// A thin HTTP client that turns error replies into errors naming their code.
#[derive(Debug)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `server`.
    #[must_use]
    pub fn new(server: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .new_agent();
        Client {
            base: server.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn finish(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp = r.with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            // The registry answers in Confluent's shape, `{"error_code", "message"}`.
            let registry_code = body["error_code"].as_u64().map(|c| c.to_string());
            let code = body["code"]
                .as_str()
                .or(registry_code.as_deref())
                .unwrap_or("unknown");
            let message = body["message"].as_str().unwrap_or("");
            let field = body["field"]
                .as_str()
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            let hint = body["hint"]
                .as_str()
                .map(|h| format!("\nhint: {h}"))
                .unwrap_or_default();
            bail!("{what}: {status} {code}: {message}{field}{hint}");
        }
        Ok(body)
    }

    /// GET a path.
    ///
    /// # Errors
    /// Transport failure or an error reply.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(
            &format!("GET {path}"),
            self.agent.get(&format!("{}{path}", self.base)).call(),
        )
    }

    /// Send a body with a method.
    ///
    /// # Errors
    /// Transport failure or an error reply.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let r = match method {
            "POST" => self
                .agent
                .post(&url)
                .header("content-type", content_type)
                .send(body),
            "PUT" => self
                .agent
                .put(&url)
                .header("content-type", content_type)
                .send(body),
            _ => self.agent.delete(&url).call(),
        };
        self.finish(&format!("{method} {path}"), r)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Runs `gearbox topics ...`.
///
/// # Errors
/// An error reply or transport failure.
pub fn topics(server: &str, command: &TopicsCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match command {
        TopicsCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
        } => {
            let body = json!({"name": name, "partitions": partitions,
                              "retention": {"ms": retention_ms, "bytes": retention_bytes}});
            print_json(&c.post("/v1/topics", &body)?)
        }
        TopicsCommand::List => {
            for t in c.get("/v1/topics")?["topics"]
                .as_array()
                .into_iter()
                .flatten()
            {
                print_json(t)?;
            }
            Ok(())
        }
        TopicsCommand::Describe { name } => print_json(&c.get(&format!("/v1/topics/{name}"))?),
        TopicsCommand::Delete { name } => {
            c.send("DELETE", &format!("/v1/topics/{name}"), "", b"")?;
            eprintln!("deleted topic {name}");
            Ok(())
        }
    }
}

/// Turns one input line into a CloudEvent JSON value.
///
/// # Errors
/// A line longer than [`LINE_BYTES_MAX`].
pub fn line_to_event(line: &str, args: &ProduceArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(
        line.len() <= LINE_BYTES_MAX,
        "a line is longer than {LINE_BYTES_MAX} bytes"
    );
    let parsed: Option<Value> = serde_json::from_str(line).ok();
    if let Some(Value::Object(m)) = &parsed
        && m.contains_key("specversion")
    {
        return Ok(Value::Object(m.clone()));
    }
    let mut e = json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": args.source,
        "type": args.ty,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    match parsed {
        Some(v) => e["data"] = v,
        None => {
            e["datacontenttype"] = json!("text/plain");
            e["data"] = json!(line);
        }
    }
    if let Some(k) = &args.key {
        e["partitionkey"] = json!(k);
    }
    if let Some(c) = &args.causation_id {
        e["causationid"] = json!(c);
    }
    if let Some(c) = args.correlation_id.as_ref().or(args.causation_id.as_ref()) {
        e["correlationid"] = json!(c);
    }
    Ok(e)
}

/// Runs `gearbox produce`: reads lines, sends them in batches, prints one result per event.
///
/// # Errors
/// Unreadable input, a bad line, or an error reply (events sent before it stay sent).
pub fn produce(server: &str, args: &ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=PRODUCE_BATCH_MAX).contains(&args.batch),
        "--batch must be 1 to {PRODUCE_BATCH_MAX}"
    );
    let c = Client::new(server);
    let input: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let (mut batch, mut sent, mut duplicates) = (Vec::new(), 0u64, 0u64);
    let path = format!("/v1/topics/{}/events", args.topic);
    let mut flush = |batch: &mut Vec<Value>| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let body = Value::Array(std::mem::take(batch)).to_string();
        let reply = c.send(
            "POST",
            &path,
            "application/cloudevents-batch+json",
            body.as_bytes(),
        )?;
        for r in reply["results"].as_array().into_iter().flatten() {
            sent += 1;
            duplicates += u64::from(r["duplicate"].as_bool() == Some(true));
            print_json(r)?;
        }
        Ok(())
    };
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(line_to_event(&line, args).with_context(|| format!("line {}", n + 1))?);
        if batch.len() >= args.batch {
            flush(&mut batch)?;
        }
    }
    flush(&mut batch)?;
    eprintln!(
        "produced {sent} events to {} ({duplicates} duplicates)",
        args.topic
    );
    Ok(())
}

/// Runs `gearbox consume`: polls a subscription, prints each event, then acks (queue) or
/// commits (cursor) what it printed.
///
/// # Errors
/// An error reply or transport failure.
pub fn consume(server: &str, args: &ConsumeArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let sub = format!(
        "/v1/topics/{}/subscriptions/{}",
        args.topic, args.subscription
    );
    let settings = json!({"mode": args.mode, "start": args.from});
    match c.send(
        "PUT",
        &sub,
        "application/json",
        settings.to_string().as_bytes(),
    ) {
        Ok(_) => {}
        // An existing subscription with other settings is fine to consume from as it is.
        Err(e) if e.to_string().contains("subscription_conflict") => {}
        Err(e) => return Err(e),
    }
    let mode = c.get(&sub)?["mode"].as_str().unwrap_or("queue").to_string();
    let mut printed = 0u64;
    loop {
        let want = args.max.map_or(100, |m| m.saturating_sub(printed).min(100));
        if want == 0 {
            break;
        }
        let wait_ms = if args.follow { 10_000 } else { 1000 };
        let reply = c.post(
            &format!("{sub}/poll"),
            &json!({"max_events": want, "wait_ms": wait_ms}),
        )?;
        let events = reply["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            if args.follow {
                continue;
            }
            break;
        }
        let mut next: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for e in &events {
            print_json(e)?;
            printed += 1;
            let (p, o) = (
                e["partition"].as_u64().unwrap_or(0),
                e["offset"].as_u64().unwrap_or(0),
            );
            let slot = next.entry(p).or_insert(0);
            *slot = (*slot).max(o + 1);
        }
        if mode == "cursor" {
            let offsets: Vec<Value> = next
                .iter()
                .map(|(p, o)| json!({"partition": p, "offset": o}))
                .collect();
            c.post(&format!("{sub}/commit"), &json!({"offsets": offsets}))?;
        } else {
            let items: Vec<Value> = events
                .iter()
                .map(|e| json!({"partition": e["partition"], "offset": e["offset"]}))
                .collect();
            c.post(&format!("{sub}/ack"), &json!({"events": items}))?;
        }
    }
    eprintln!(
        "consumed {printed} events from {} as {}",
        args.topic, args.subscription
    );
    Ok(())
}

/// Runs `gearbox replay`: reads partitions from an offset or a time to their end.
///
/// # Errors
/// An error reply or transport failure.
pub fn replay(server: &str, args: &ReplayArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    if let Some(pipeline) = &args.into {
        let body = match (&args.offset, &args.time) {
            (Some(o), _) => json!({ "offset": o }),
            (None, Some(t)) => json!({ "time": t }),
            (None, None) => json!({ "start": "earliest" }),
        };
        let reply = c.post(&format!("/v1/pipelines/{pipeline}/replay"), &body)?;
        return print_json(&reply);
    }
    let topic_name = args.topic.as_deref().unwrap_or_default();
    let topic = c.get(&format!("/v1/topics/{topic_name}"))?;
    let partitions: Vec<u64> = match args.partition {
        Some(p) => vec![u64::from(p)],
        None => (0..topic["partitions"].as_u64().unwrap_or(0)).collect(),
    };
    let mut printed = 0u64;
    for p in partitions {
        let hw = topic["partition_offsets"][p as usize]["high_watermark"]
            .as_u64()
            .unwrap_or(0);
        let mut query = match (&args.offset, &args.time) {
            (Some(o), _) => format!("offset={o}"),
            (None, Some(t)) => format!("time={}", t.replace('+', "%2B")),
            (None, None) => String::new(),
        };
        loop {
            let want = args
                .max
                .map_or(1000, |m| m.saturating_sub(printed).min(1000));
            if want == 0 {
                return Ok(());
            }
            let reply = c.get(&format!(
                "/v1/topics/{topic_name}/partitions/{p}/events?{query}&max={want}"
            ))?;
            let events = reply["events"].as_array().cloned().unwrap_or_default();
            for e in &events {
                print_json(e)?;
                printed += 1;
            }
            let next = reply["next_offset"].as_u64().unwrap_or(hw);
            if events.is_empty() || next >= hw {
                break;
            }
            query = format!("offset={next}");
        }
    }
    Ok(())
}

/// Runs `gearbox dlq ...`.
///
/// # Errors
/// An error reply or transport failure.
pub fn dlq(server: &str, command: &DlqCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match command {
        DlqCommand::List { topic, max } => {
            for e in c.get(&format!("/v1/topics/{topic}/dlq?max={max}"))?["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                print_json(e)?;
            }
            Ok(())
        }
        DlqCommand::Show {
            topic,
            partition,
            offset,
        } => {
            let reply = c.get(&format!(
                "/v1/topics/{topic}.dlq/partitions/{partition}/events?offset={offset}&max=1"
            ))?;
            match reply["events"].as_array().and_then(|e| e.first()) {
                Some(e) => {
                    println!("{}", serde_json::to_string_pretty(e)?);
                    Ok(())
                }
                None => bail!("no dead-lettered event at partition {partition}, offset {offset}"),
            }
        }
        DlqCommand::Redrive { topic } => {
            let reply = c.post(&format!("/v1/topics/{topic}/dlq/redrive"), &json!({}))?;
            eprintln!("redrove {} events to {topic}", reply["redriven"]);
            Ok(())
        }
    }
}

/// One hop as a line: time, what, where, and the details that are set.
fn hop_line(h: &Value) -> String {
    let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
    let mut line = format!("{}  {:<13}", s("at"), s("hop"));
    if let (Some(t), Some(p), Some(o)) = (
        h["topic"].as_str(),
        h["partition"].as_u64(),
        h["offset"].as_u64(),
    ) {
        line.push_str(&format!("  {t}/{p}@{o}"));
    }
    for key in [
        "pipeline",
        "subscription",
        "attempt",
        "result",
        "latency_ms",
        "source",
        "detail",
    ] {
        match &h[key] {
            Value::Null => {}
            Value::String(v) => line.push_str(&format!("  {key}={v}")),
            v => line.push_str(&format!("  {key}={v}")),
        }
    }
    line
}

/// Runs `gearbox trace`.
///
/// # Errors
/// An error reply (say, `event_not_found`) or transport failure.
pub fn trace(server: &str, args: &TraceArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    let encoded = percent(&args.id);
    let reply = if args.correlation {
        c.get(&format!("/v1/traces?correlation_id={encoded}"))?
    } else {
        c.get(&format!("/v1/events/{encoded}/trace"))?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    if args.correlation {
        for e in reply["events"].as_array().into_iter().flatten() {
            let cause = e["causation_id"]
                .as_str()
                .map(|c| format!("  (caused by {c})"))
                .unwrap_or_default();
            println!("event {}{cause}", e["id"].as_str().unwrap_or_default());
            for h in e["hops"].as_array().into_iter().flatten() {
                println!("  {}", hop_line(h));
            }
        }
    } else {
        for h in reply["hops"].as_array().into_iter().flatten() {
            println!("{}", hop_line(h));
        }
    }
    if reply["truncated"] == json!(true) {
        eprintln!("(truncated: more hops or events matched than a trace returns)");
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters (an id may hold `/`, `#`, ...).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: Option<&str>) -> ProduceArgs {
        ProduceArgs {
            topic: "t".into(),
            file: None,
            ty: "reading".into(),
            source: "/sensors".into(),
            key: key.map(str::to_string),
            batch: 10,
            causation_id: None,
            correlation_id: None,
        }
    }

    #[test]
    fn lines_become_cloudevents() {
        let e = line_to_event(r#"{"celsius": 21.5}"#, &args(Some("s-7"))).unwrap();
        assert_eq!(e["data"], json!({"celsius": 21.5}));
        assert_eq!(e["type"], "reading");
        assert_eq!(e["source"], "/sensors");
        assert_eq!(e["partitionkey"], "s-7");
        assert!(!e["id"].as_str().unwrap().is_empty());
        let text = line_to_event("plain words", &args(None)).unwrap();
        assert_eq!(text["datacontenttype"], "text/plain");
        assert_eq!(text["data"], "plain words");
        let ce = r#"{"specversion":"1.0","id":"x","source":"/s","type":"t"}"#;
        assert_eq!(
            line_to_event(ce, &args(Some("ignored"))).unwrap(),
            serde_json::from_str::<Value>(ce).unwrap()
        );
        assert!(line_to_event(&"x".repeat(LINE_BYTES_MAX + 1), &args(None)).is_err());
    }
}

/// `gearbox runs PIPELINE`: a scheduled pipeline's schedule and run history.
#[derive(Debug, clap::Args)]
pub struct RunsArgs {
    /// The pipeline.
    pub pipeline: String,
}

/// Prints the schedule, the run in progress and the history (newest first), one JSON document.
///
/// # Errors
/// The server's error (no such pipeline, not scheduled).
pub fn runs(server: &str, args: &RunsArgs) -> anyhow::Result<()> {
    let c = Client::new(server);
    print_json(&c.get(&format!("/v1/pipelines/{}/runs", args.pipeline))?)
}

/// `gearbox run PIPELINE`: run a scheduled pipeline now.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline.
    pub pipeline: String,
}

/// `gearbox backfill PIPELINE --from WATERMARK`: run a scheduled pipeline now from an older
/// watermark (a file name or mtime watermark, a timestamp or id for SQL sources).
#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The pipeline.
    pub pipeline: String,
    /// The watermark to start from, as the pipeline stores it (`gearbox runs` shows it).
    #[arg(long = "from")]
    pub from: String,
}

/// Queues a run (after the one in progress, if any).
///
/// # Errors
/// The server's error.
pub fn run_now(server: &str, pipeline: &str, watermark: Option<&str>) -> anyhow::Result<()> {
    let c = Client::new(server);
    let body = match watermark {
        Some(w) => json!({ "watermark": w }),
        None => json!({}),
    };
    print_json(&c.post(&format!("/v1/pipelines/{pipeline}/runs"), &body)?)
}
