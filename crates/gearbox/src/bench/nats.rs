//! The NATS JetStream peers, driven by the official Rust client (`async-nats`).
//!
//! - `nats-jetstream-default`: the machine's own server (`--nats`, default `127.0.0.1:4222`),
//!   with a file-storage stream the bench creates and deletes. JetStream's default acknowledges
//!   a publish once the message is written to its file, and fsyncs every two minutes
//!   (`sync_interval`), so its acks are weaker than Gearbox's: a power loss can lose acknowledged
//!   messages. It is reported under this name so that nobody mistakes it for an equal.
//! - `nats-jetstream`: the same with `sync_interval: always` (an fsync before each ack), which
//!   needs nats-server 2.10 or later. The bench starts its own server with that setting when
//!   `--nats-server` is new enough, and otherwise reports the target as skipped, with the
//!   version it found.
//!
//! Each producer has its own connection and publishes a batch as `batch` JetStream publishes
//! (the CloudEvents NATS binding: attributes as `ce-*` headers, the data as the payload, and the
//! event id as `Nats-Msg-Id`, so that JetStream deduplicates as Gearbox does), then waits for
//! every publish acknowledgement. Producer `i` publishes to subject `<prefix>.{i % partitions}`.
//! The produce-to-consume consumer is a durable pull consumer with explicit acks, acknowledging
//! each message as it takes it.

use super::Scratch;
use super::hist::Histogram;
use super::load::{self, E2e, Ingest, Producer, Workload};
use anyhow::{Context as _, anyhow, ensure};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use futures_util::StreamExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;

/// How long connecting (and starting the bench's own server) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest stream the bench creates (JetStream refuses publishes beyond it).
const STREAM_BYTES_MAX: i64 = 16 << 30;

/// A JetStream server to measure, with the stream the bench created on it.
#[derive(Debug)]
pub struct Target {
    url: String,
    /// The server's version, as it reports it.
    pub version: String,
    stream: String,
    own: Option<Child>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.own {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A runtime for the client (two worker threads, like the machine).
///
/// # Errors
/// If the runtime cannot start.
pub fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Connects to the server at `url` and creates a fresh file-storage stream on it, or says why
/// not (reported as a skip).
///
/// # Errors
/// A message for the report.
pub fn connect(rt: &Runtime, url: &str, own: Option<Child>) -> Result<Target, String> {
    let name = unique("GEARBOX_BENCH");
    rt.block_on(async {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, async_nats::connect(url))
            .await
            .map_err(|_| format!("no answer from {url} in {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("not reachable at {url}: {e}"))?;
        let version = client.server_info().version;
        let js = async_nats::jetstream::new(client);
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            storage: StorageType::File,
            max_bytes: STREAM_BYTES_MAX,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("creating a JetStream stream on {url}: {e}"))?;
        Ok(Target {
            url: url.to_string(),
            version,
            stream: name,
            own,
        })
    })
}

/// Deletes the bench's stream (best effort: a stream left behind is named as the bench's).
pub fn cleanup(rt: &Runtime, target: &Target) {
    rt.block_on(async {
        if let Ok(client) = async_nats::connect(&target.url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(&target.stream)
                .await;
        }
    });
}

/// `(major, minor)` of a version such as `v2.9.10` or `nats-server: v2.10.4`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let v = version.rsplit(' ').next()?.trim().trim_start_matches('v');
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Starts `binary` with `sync_interval: always` in `scratch/nats` on a free port, if it is 2.10
/// or later; otherwise says why not (reported as a skip).
///
/// # Errors
/// A message for the report.
pub fn start_always(rt: &Runtime, binary: &Path, scratch: &Scratch) -> Result<Target, String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("{} could not run: {e}", binary.display()))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match major_minor(&version) {
        Some(v) if v >= (2, 10) => {}
        _ => {
            return Err(format!(
                "{} is {version:?}; `sync_interval: always` needs 2.10 or later",
                binary.display()
            ));
        }
    }
    let dir = scratch.path().join("nats");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
            dir.join("store")
        ),
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{} could not start: {e}", binary.display()))?;
    let url = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while std::net::TcpStream::connect(&url).is_err() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{} did not listen in {CONNECT_TIMEOUT:?}",
                binary.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    connect(rt, &url, Some(child))
}

/// The message of event `seq`: with `bare`, the data alone (no attributes, no `Nats-Msg-Id`, so
/// no deduplication either). Produce-to-consume events (those with a send time) share the
/// stream with the ingest run's, so their ids get a prefix: JetStream would otherwise drop them
/// as duplicates within its two-minute window.
fn message(
    w: &Workload,
    seq: u64,
    data: &bytes::Bytes,
    sent_ns: Option<u64>,
    bare: bool,
) -> PublishMessage {
    if bare {
        return PublishMessage::build().payload(data.clone());
    }
    let id = match sent_ns {
        Some(_) => format!("latency-{seq}"),
        None => seq.to_string(),
    };
    let mut h = HeaderMap::new();
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", id.as_str());
    h.insert("ce-source", "/bench");
    h.insert("ce-type", "bench.event");
    h.insert("ce-partitionkey", w.key(seq).as_str());
    h.insert("content-type", "text/plain");
    if let Some(ns) = sent_ns {
        h.insert("ce-sentns", ns.to_string().as_str());
    }
    h.insert("Nats-Msg-Id", id.as_str());
    PublishMessage::build().payload(data.clone()).headers(h)
}

/// Publishes events `first..first + n` to `subject` and waits for every acknowledgement.
async fn publish_batch(
    js: &async_nats::jetstream::Context,
    w: &Workload,
    subject: &str,
    (first, n): (u64, usize),
    data: &bytes::Bytes,
    sent_ns: Option<u64>,
    bare: bool,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(n);
    for seq in first..first + n as u64 {
        acks.push(
            js.send_publish(subject.to_string(), message(w, seq, data, sent_ns, bare))
                .await?,
        );
    }
    for ack in acks {
        let ack = ack.await?;
        ensure!(
            !ack.duplicate,
            "JetStream saw event {first}.. as a duplicate"
        );
    }
    Ok(())
}

async fn context(url: &str, w: &Workload) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(url).await?;
    Ok(ContextBuilder::new()
        .max_ack_inflight(w.batch.max(1))
        .build(client))
}

/// JetStream ingest of the workload; `bare` publishes the data alone (see [`message`]).
///
/// # Errors
/// A failed connection, publish or acknowledgement.
pub fn ingest(rt: &Runtime, target: &Target, w: &Workload, bare: bool) -> anyhow::Result<Ingest> {
    let data = bytes::Bytes::from(w.data());
    let producers = (0..w.concurrency)
        .map(|i| {
            let js = rt.block_on(context(&target.url, w))?;
            let subject = format!("{}.{}", target.stream, i as u64 % u64::from(w.partitions));
            let (handle, data) = (rt.handle().clone(), &data);
            Ok(Box::new(move |first: u64, n: usize| {
                handle.block_on(publish_batch(
                    &js,
                    w,
                    &subject,
                    (first, n),
                    data,
                    None,
                    bare,
                ))
            }) as Producer<'_>)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    load::drive(w, producers)
}

/// Produce-to-consume through a durable pull consumer with explicit acks.
///
/// # Errors
/// A failed connection, publish, fetch or ack.
pub fn e2e(rt: &Runtime, target: &Target, w: &Workload) -> anyhow::Result<E2e> {
    let subject = format!("{}.latency", target.stream);
    let js = rt.block_on(context(&target.url, w))?;
    let consumer = rt.block_on(async {
        let stream = js.get_stream(&target.stream).await?;
        stream
            .create_consumer(pull::Config {
                durable_name: Some("bench".into()),
                filter_subject: subject.clone(),
                ack_policy: AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .map_err(anyhow::Error::from)
    })?;
    let data = bytes::Bytes::from(w.data());
    load::produce_consume(
        w,
        |base, finish| {
            rt.block_on(async {
                let mut messages = consumer.messages().await?;
                let (mut received, mut hist) = (0u64, Histogram::new());
                while !finish.consumer_may_stop(received) {
                    let next = tokio::time::timeout(Duration::from_millis(100), messages.next());
                    let Ok(Some(message)) = next.await else {
                        continue;
                    };
                    let message = message.map_err(|e| anyhow!("{e}"))?;
                    let now = load::nanos_since(base);
                    let sent: u64 = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("ce-sentns"))
                        .and_then(|v| v.as_str().parse().ok())
                        .context("a message without its send time")?;
                    hist.record_ns(now.saturating_sub(sent));
                    received += 1;
                    message.ack().await.map_err(|e| anyhow!("{e}"))?;
                }
                anyhow::Ok((received, hist))
            })
        },
        |first, n, sent_ns| {
            rt.block_on(publish_batch(
                &js,
                w,
                &subject,
                (first, n),
                &data,
                Some(sent_ns),
                false,
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_are_read() {
        assert_eq!(super::major_minor("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(super::major_minor("v2.10.4"), Some((2, 10)));
        assert_eq!(super::major_minor("garbage"), None);
    }
}
