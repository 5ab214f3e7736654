//! The `gearbox-kafka` target: the server over the Kafka wire protocol, driven by a small
//! blocking client on the `kafka-protocol` crate's codecs.
//!
//! The suite starts a `gearbox serve --kafka` of its own ([`super::http::start_server_with`])
//! and measures three things over it:
//! - **Ingest**: `concurrency` connections, each with one Produce in flight (as the HTTP target
//!   has one request in flight per connection). A request carries `batch` events, grouped by
//!   Kafka's default partitioner on the event key into one RecordBatch v2 per partition, built
//!   with [`BatchBuilder`] from the same CloudEvents the other targets send
//!   ([`super::embedded::event`]) in binary mode (`ce_*` headers, the key as the record key), so
//!   the bytes per event match what an HTTP publish stores. `acks` is -1; every answer means the
//!   batch was fsynced. Afterwards the high watermarks (ListOffsets) must sum to the events
//!   acknowledged, or the run fails.
//! - **Fetch**: one connection reads every partition back from offset 0 with Fetch (the
//!   server's largest answer), decoding each batch (CRC and records) as a consumer would.
//! - **Produce-to-consume**: the paced producer sends Produce requests; one consumer long-polls
//!   Fetch (`max_wait_ms` [`POLL_WAIT_MS`], `min_bytes` 1) on every partition and reads each
//!   event's `ce_sentns` header. Unlike the HTTP consumer it commits nothing (a consumer that
//!   tracks its own offsets is an ordinary Kafka consumer), so its latency has no commit in it;
//!   committing through the group coordinator is left for a later run.
//!
//! Limits: a response frame above [`RESPONSE_BYTES_MAX`] fails the call before anything is
//! allocated for it, and every read and write gives up after [`IO_TIMEOUT`].

use super::embedded;
use super::hist::Histogram;
use super::load::{self, E2e, Ingest, Producer, Workload};
use anyhow::{Context as _, bail, ensure};
use bytes::{BufMut as _, Bytes, BytesMut};
use gearbox_core::partitioner::partition_for;
use gearbox_log::batch::{self, BatchBuilder, BatchHeader, Record};
use gearbox_log::io::{Clock as _, SystemClock};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, CreateTopicsRequest, FetchRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader, ResponseHeader, TopicName,
    create_topics_request::CreatableTopic,
    fetch_request::{FetchPartition, FetchTopic},
    list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Decodable as _, Encodable as _, HeaderVersion, Request, StrBytes};
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The versions the client speaks: each the newest the listener implements for the request
/// shape used here (Fetch v12 is the last that names topics; v13 switches to topic ids).
const API_VERSIONS_VERSION: i16 = 3;
const METADATA_VERSION: i16 = 12;
const CREATE_TOPICS_VERSION: i16 = 7;
const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 6;
/// Every API the client calls, with its version, checked against ApiVersions on connect.
const USED: [(ApiKey, i16); 6] = [
    (ApiKey::ApiVersions, API_VERSIONS_VERSION),
    (ApiKey::Metadata, METADATA_VERSION),
    (ApiKey::CreateTopics, CREATE_TOPICS_VERSION),
    (ApiKey::Produce, PRODUCE_VERSION),
    (ApiKey::Fetch, FETCH_VERSION),
    (ApiKey::ListOffsets, LIST_OFFSETS_VERSION),
];

/// Largest response frame accepted: the listener's largest Fetch answer plus room for the
/// envelope.
pub const RESPONSE_BYTES_MAX: usize = gearbox_kafka::fetch::FETCH_BYTES_MAX + (1 << 20);
/// Longest one socket read or write may block (a long poll answers within [`POLL_WAIT_MS`]).
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the listener may take to accept the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The produce-to-consume consumer's long-poll wait.
pub const POLL_WAIT_MS: i32 = 500;
/// Bytes per partition the produce-to-consume consumer asks for (one tick's events fit).
const POLL_PARTITION_BYTES: i32 = 1 << 20;
/// Bytes per Fetch of the read-back run: the listener's largest answer, for every partition.
const READ_BYTES: i32 = gearbox_kafka::fetch::FETCH_BYTES_MAX as i32;
/// The Produce `timeout_ms` (the listener answers after the fsync, whatever it says).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;
/// The topic of the ingest and read-back runs, and of the produce-to-consume run.
pub const INGEST_TOPIC: &str = "ingest";
pub const LATENCY_TOPIC: &str = "latency";

/// A blocking Kafka connection with one request in flight.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    out: BytesMut,
}

impl Client {
    /// Connects to `addr` (retrying until [`CONNECT_TIMEOUT`], as the listener may still be
    /// starting) and checks with ApiVersions that every API the client uses is implemented at
    /// the version it uses.
    ///
    /// # Errors
    /// No connection within the timeout, a failed ApiVersions call, or a missing version.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connecting to {addr}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut client = Client {
            stream,
            correlation_id: 0,
            out: BytesMut::new(),
        };
        let versions = client.call(&ApiVersionsRequest::default(), API_VERSIONS_VERSION)?;
        ensure!(
            versions.error_code == 0,
            "ApiVersions answered error {}",
            versions.error_code
        );
        for (key, version) in USED {
            let offered = versions
                .api_keys
                .iter()
                .find(|k| k.api_key == key as i16)
                .map(|k| (k.min_version, k.max_version));
            ensure!(
                offered.is_some_and(|(min, max)| (min..=max).contains(&version)),
                "the listener does not implement {key:?} v{version} (it offers {offered:?})"
            );
        }
        Ok(client)
    }

    /// Sends `request` at `version` and reads its response.
    ///
    /// # Errors
    /// An I/O error, a frame outside `[4, RESPONSE_BYTES_MAX]`, a response to another request,
    /// or a response that does not decode.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> anyhow::Result<R::Response> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("gearbox-bench")));
        self.out.clear();
        self.out.put_i32(0);
        header.encode(&mut self.out, R::header_version(version))?;
        request.encode(&mut self.out, version)?;
        let size = i32::try_from(self.out.len() - 4).context("a request above 2 GiB")?;
        self.out[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&self.out)?;
        let mut frame = read_frame(&mut self.stream)?;
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))?;
        ensure!(
            header.correlation_id == self.correlation_id,
            "response to request {} where {} was expected",
            header.correlation_id,
            self.correlation_id
        );
        let response = R::Response::decode(&mut frame, version)
            .with_context(|| format!("decoding the API {} v{version} response", R::KEY))?;
        Ok(response)
    }

    /// Creates `topic` with `partitions` partitions and checks with Metadata that all of them
    /// have a leader.
    ///
    /// # Errors
    /// A failed call or an error code in either answer.
    pub fn create_topic(&mut self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        let request = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(topic))
                    .with_num_partitions(i32::try_from(partitions)?)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(PRODUCE_TIMEOUT_MS);
        let created = self.call(&request, CREATE_TOPICS_VERSION)?;
        for t in &created.topics {
            ensure!(
                t.error_code == 0,
                "creating topic {topic} answered error {}: {:?}",
                t.error_code,
                t.error_message
            );
        }
        let request = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
        ]));
        let metadata = self.call(&request, METADATA_VERSION)?;
        let t = metadata.topics.first().context("Metadata named no topic")?;
        ensure!(
            t.error_code == 0,
            "Metadata answered error {}",
            t.error_code
        );
        let led = t
            .partitions
            .iter()
            .filter(|p| p.error_code == 0 && p.leader_id == BrokerId(gearbox_kafka::NODE_ID))
            .count();
        ensure!(
            led == partitions as usize,
            "Metadata shows {led} of {partitions} partitions led"
        );
        Ok(())
    }

    /// Produces `batches` (partition, one RecordBatch) to `topic` with `acks` -1 in one
    /// request, and checks that every partition answered without an error.
    ///
    /// # Errors
    /// A failed call, a missing partition answer, or an error code.
    pub fn produce(&mut self, topic: &str, batches: Vec<(i32, Bytes)>) -> anyhow::Result<()> {
        let sent = batches.len();
        let partitions = batches
            .into_iter()
            .map(|(index, records)| {
                PartitionProduceData::default()
                    .with_index(index)
                    .with_records(Some(records))
            })
            .collect();
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(PRODUCE_TIMEOUT_MS)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(partitions),
            ]);
        let response = self.call(&request, PRODUCE_VERSION)?;
        let mut answered = 0;
        for t in &response.responses {
            for p in &t.partition_responses {
                ensure!(
                    p.error_code == 0,
                    "Produce to {topic}/{} answered error {}: {:?}",
                    p.index,
                    p.error_code,
                    p.error_message
                );
                answered += 1;
            }
        }
        ensure!(
            answered == sent,
            "Produce answered {answered} of {sent} partitions"
        );
        Ok(())
    }

    /// Fetches `topic`'s partitions `0..offsets.len()` from `offsets`: each partition's high
    /// watermark and record bytes (whole batches, the first of which may start before the
    /// offset).
    ///
    /// # Errors
    /// A failed call, or an error code for the request or any partition.
    pub fn fetch(
        &mut self,
        topic: &str,
        offsets: &[i64],
        wait: Poll,
    ) -> anyhow::Result<Vec<(i64, Bytes)>> {
        let partitions = offsets
            .iter()
            .enumerate()
            .map(|(p, &offset)| {
                anyhow::Ok(
                    FetchPartition::default()
                        .with_partition(i32::try_from(p)?)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(wait.partition_bytes),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let request = FetchRequest::default()
            .with_max_wait_ms(wait.max_wait_ms)
            .with_min_bytes(wait.min_bytes)
            .with_max_bytes(wait.max_bytes)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic_name(topic))
                    .with_partitions(partitions),
            ]);
        let response = self.call(&request, FETCH_VERSION)?;
        ensure!(
            response.error_code == 0,
            "Fetch answered error {}",
            response.error_code
        );
        let mut out = vec![(-1, Bytes::new()); offsets.len()];
        for t in response.responses {
            for p in t.partitions {
                ensure!(
                    p.error_code == 0,
                    "Fetch of {topic}/{} answered error {}",
                    p.partition_index,
                    p.error_code
                );
                let slot = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                    .with_context(|| format!("Fetch answered partition {}", p.partition_index))?;
                *slot = (p.high_watermark, p.records.unwrap_or_default());
            }
        }
        Ok(out)
    }

    /// The high watermark of each of `topic`'s partitions `0..partitions` (ListOffsets at
    /// timestamp -1, "latest").
    ///
    /// # Errors
    /// A failed call, an error code, or a missing partition.
    pub fn high_watermarks(&mut self, topic: &str, partitions: u32) -> anyhow::Result<Vec<i64>> {
        let wanted = (0..partitions)
            .map(|p| {
                anyhow::Ok(
                    ListOffsetsPartition::default()
                        .with_partition_index(i32::try_from(p)?)
                        .with_timestamp(-1),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(wanted),
            ]);
        let response = self.call(&request, LIST_OFFSETS_VERSION)?;
        let mut out = vec![None; partitions as usize];
        for t in response.topics {
            for p in t.partitions {
                ensure!(
                    p.error_code == 0,
                    "ListOffsets of {topic}/{} answered error {}",
                    p.partition_index,
                    p.error_code
                );
                if let Some(slot) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                {
                    *slot = Some(p.offset);
                }
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(p, o)| o.with_context(|| format!("ListOffsets left out partition {p}")))
            .collect()
    }
}

/// How a Fetch waits and how much it may bring.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    /// Longest the listener waits for `min_bytes`.
    pub max_wait_ms: i32,
    /// Bytes that end the wait.
    pub min_bytes: i32,
    /// Bytes of the whole answer.
    pub max_bytes: i32,
    /// Bytes per partition.
    pub partition_bytes: i32,
}

/// The produce-to-consume consumer's long poll.
pub const LONG_POLL: Poll = Poll {
    max_wait_ms: POLL_WAIT_MS,
    min_bytes: 1,
    max_bytes: READ_BYTES,
    partition_bytes: POLL_PARTITION_BYTES,
};

/// The read-back run's Fetch: no wait, as much as the listener sends.
const READ_ALL: Poll = Poll {
    max_wait_ms: 0,
    min_bytes: 1,
    max_bytes: READ_BYTES,
    partition_bytes: READ_BYTES,
};

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Reads one size-prefixed frame; the size is checked before anything is allocated for it.
fn read_frame(stream: &mut impl std::io::Read) -> anyhow::Result<Bytes> {
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .context("reading a response size")?;
    let size = i32::from_be_bytes(prefix);
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    ensure!(
        (4..=RESPONSE_BYTES_MAX).contains(&len),
        "response size {size} is outside [4, {RESPONSE_BYTES_MAX}]"
    );
    let mut frame = BytesMut::zeroed(len);
    stream
        .read_exact(&mut frame)
        .context("reading a response frame")?;
    Ok(frame.freeze())
}

/// The batches of one Produce request for events `first..first + n`: the events of
/// [`embedded::event`] as binary-mode records, grouped by Kafka's default partitioner on their
/// key into one batch per partition, partitions in ascending order.
///
/// # Errors
/// A batch that cannot be built (too large).
pub fn batches(
    w: &Workload,
    first: u64,
    n: usize,
    data: &str,
    sent_ns: Option<u64>,
) -> anyhow::Result<Vec<(i32, Bytes)>> {
    let now = SystemClock.now_ms();
    let mut builders: Vec<BatchBuilder> = vec![BatchBuilder::new(); w.partitions as usize];
    for seq in first..first + n as u64 {
        let p = partition_for(w.key(seq).as_bytes(), w.partitions);
        builders[p as usize].push(embedded::event(w, seq, data, sent_ns).into_record(now));
    }
    let mut out = Vec::new();
    for (p, b) in builders.iter().enumerate() {
        if !b.is_empty() {
            out.push((i32::try_from(p)?, Bytes::from(b.build()?)));
        }
    }
    Ok(out)
}

/// Decodes the batches of one partition's Fetch answer (checking each CRC) and returns the
/// records at or after `from`. A partial batch at the end (Kafka may cut one at the size
/// limit) is left out.
///
/// # Errors
/// A batch that does not decode.
pub fn records_from(bytes: &[u8], from: i64) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= batch::BATCH_HEADER_BYTES {
        let len = BatchHeader::parse(rest)?.total_len();
        if rest.len() < len {
            break;
        }
        let (one, tail) = rest.split_at(len);
        out.extend(batch::decode(one)?.into_iter().filter(|r| r.offset >= from));
        rest = tail;
    }
    Ok(out)
}

/// Ingest of the workload into [`INGEST_TOPIC`] (which must exist with `w.partitions`
/// partitions), one connection per producer, then the check that the high watermarks sum to
/// the events acknowledged.
///
/// # Errors
/// A failed connection or request, an error code, or a sum that differs.
pub fn ingest(addr: SocketAddr, w: &Workload) -> anyhow::Result<Ingest> {
    let data = w.data();
    let producers = (0..w.concurrency)
        .map(|_| {
            let mut client = Client::connect(addr)?;
            let data = &data;
            Ok(Box::new(move |first: u64, n: usize| {
                let b = batches(w, first, n, data, None)?;
                client.produce(INGEST_TOPIC, b)
            }) as Producer<'_>)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out = load::drive(w, producers)?;
    let stored: i64 = Client::connect(addr)?
        .high_watermarks(INGEST_TOPIC, w.partitions)?
        .iter()
        .sum();
    ensure!(
        u64::try_from(stored).ok() == Some(out.events),
        "the high watermarks sum to {stored}; {} events were acknowledged",
        out.events
    );
    Ok(out)
}

/// Reads [`INGEST_TOPIC`] back from offset 0 to its high watermarks on one connection, every
/// partition in each Fetch. The latency histogram holds one sample per Fetch.
///
/// # Errors
/// A failed request, a batch that does not decode, a gap in the offsets, or a read that does
/// not end within `w.seconds_max`.
pub fn read_back(addr: SocketAddr, w: &Workload) -> anyhow::Result<Ingest> {
    let mut client = Client::connect(addr)?;
    let ends = client.high_watermarks(INGEST_TOPIC, w.partitions)?;
    let mut next = vec![0i64; ends.len()];
    let (mut events, mut latency) = (0u64, Histogram::new());
    let start = Instant::now();
    let deadline = start + w.seconds_max;
    while next.iter().zip(&ends).any(|(n, e)| n < e) {
        ensure!(
            Instant::now() < deadline,
            "reading back stopped at {next:?} of {ends:?} after --seconds-max"
        );
        let t = Instant::now();
        let answer = client.fetch(INGEST_TOPIC, &next, READ_ALL)?;
        for (p, (_, bytes)) in answer.iter().enumerate() {
            for r in records_from(bytes, next[p])? {
                ensure!(
                    r.offset == next[p],
                    "partition {p}: offset {} where {} was next",
                    r.offset,
                    next[p]
                );
                next[p] += 1;
                events += 1;
            }
        }
        latency.record(t.elapsed());
    }
    Ok(Ingest {
        events,
        seconds: start.elapsed().as_secs_f64(),
        latency,
        capped: false,
        bytes_written: None,
    })
}

/// Produce-to-consume over the Kafka protocol into [`LATENCY_TOPIC`] (which must exist with
/// `w.partitions` partitions); see the module documentation.
///
/// # Errors
/// A failed request, an error code, or a record without its send time.
pub fn e2e(addr: SocketAddr, w: &Workload) -> anyhow::Result<E2e> {
    let mut producer = Client::connect(addr)?;
    let mut consumer = Client::connect(addr)?;
    let data = w.data();
    load::produce_consume(
        w,
        |base, finish| {
            let mut next = vec![0i64; w.partitions as usize];
            let (mut received, mut hist) = (0u64, Histogram::new());
            while !finish.consumer_may_stop(received) {
                let answer = consumer.fetch(LATENCY_TOPIC, &next, LONG_POLL)?;
                let now = load::nanos_since(base);
                for (p, (_, bytes)) in answer.iter().enumerate() {
                    for r in records_from(bytes, next[p])? {
                        hist.record_ns(now.saturating_sub(sent_ns(&r)?));
                        received += 1;
                        next[p] = r.offset + 1;
                    }
                }
            }
            Ok((received, hist))
        },
        |first, n, sent_ns| {
            producer.produce(LATENCY_TOPIC, batches(w, first, n, &data, Some(sent_ns))?)
        },
    )
}

/// The `ce_sentns` header of a produce-to-consume record.
fn sent_ns(r: &Record) -> anyhow::Result<u64> {
    let Some(h) = r.headers.iter().find(|h| h.key == "ce_sentns") else {
        bail!("record {} has no ce_sentns header", r.offset);
    };
    let text = std::str::from_utf8(h.value.as_deref().unwrap_or_default())?;
    text.parse()
        .with_context(|| format!("record {}: ce_sentns {text:?}", r.offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gearbox_core::broker::{Broker, BrokerConfig};
    use std::sync::Arc;

    /// A Kafka listener over a fresh broker, served in-process on a loopback port until
    /// dropped.
    struct Listener {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
        _dir: tempfile::TempDir,
    }

    impl Listener {
        fn start() -> Listener {
            let dir = tempfile::tempdir().unwrap();
            let broker = Arc::new(Broker::open(dir.path(), BrokerConfig::durable()).unwrap());
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let config = gearbox_kafka::KafkaConfig::new("127.0.0.1", addr.port());
            let kafka = gearbox_kafka::Kafka::new(broker, config).unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    gearbox_kafka::server::serve(listener, kafka, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
                });
            });
            Listener {
                addr,
                stop: Some(stop),
                thread: Some(thread),
                _dir: dir,
            }
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn workload(events: u64, batch: usize, partitions: u32) -> Workload {
        Workload {
            events,
            event_bytes: 16,
            batch,
            concurrency: 2,
            keys: 7,
            partitions,
            rate: 2000,
            tick_ms: 10,
            e2e: Duration::from_millis(200),
            seconds_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn produced_events_come_back_with_their_headers_in_their_key_partition() {
        let server = Listener::start();
        let w = workload(50, 50, 3);
        let mut c = Client::connect(server.addr).unwrap();
        c.create_topic(INGEST_TOPIC, 3).unwrap();
        c.produce(INGEST_TOPIC, batches(&w, 0, 50, "hello", Some(42)).unwrap())
            .unwrap();
        let ends = c.high_watermarks(INGEST_TOPIC, 3).unwrap();
        assert_eq!(ends.iter().sum::<i64>(), 50, "{ends:?}");
        let answer = c.fetch(INGEST_TOPIC, &[0, 0, 0], READ_ALL).unwrap();
        let mut seen = Vec::new();
        for (p, (hw, bytes)) in answer.iter().enumerate() {
            assert_eq!(*hw, ends[p]);
            let records = records_from(bytes, 0).unwrap();
            assert_eq!(records.len() as i64, ends[p]);
            for r in records {
                let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
                assert_eq!(partition_for(key.as_bytes(), 3) as usize, p, "{key}");
                let header = |k: &str| {
                    r.headers
                        .iter()
                        .find(|h| h.key == k)
                        .and_then(|h| h.value.clone())
                        .map(|v| String::from_utf8(v).unwrap())
                };
                let id: u64 = header("ce_id").unwrap().parse().unwrap();
                assert_eq!(key, w.key(id));
                assert_eq!(header("ce_source").as_deref(), Some("/bench"));
                assert_eq!(header("content-type").as_deref(), Some("text/plain"));
                assert_eq!(sent_ns(&r).unwrap(), 42);
                assert_eq!(r.value.as_deref(), Some(&b"hello"[..]));
                seen.push(id);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<u64>>());
    }

    #[test]
    fn a_refused_produce_is_an_error_not_an_ack() {
        let server = Listener::start();
        let mut c = Client::connect(server.addr).unwrap();
        c.create_topic(INGEST_TOPIC, 1).unwrap();
        let w = workload(1, 1, 1);
        let (_, good) = batches(&w, 0, 1, "x", None).unwrap().remove(0);
        let mut bad = good.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let err = c
            .produce(INGEST_TOPIC, vec![(0, Bytes::from(bad))])
            .unwrap_err();
        assert!(err.to_string().contains("answered error"), "{err}");
        // The connection stays usable, and nothing was stored.
        assert_eq!(c.high_watermarks(INGEST_TOPIC, 1).unwrap(), vec![0]);
        let err = c.produce("no-such-topic", vec![(0, good)]).unwrap_err();
        assert!(err.to_string().contains("answered error"), "{err}");
    }

    #[test]
    fn ingest_read_back_and_e2e_account_for_every_event() {
        let server = Listener::start();
        let w = workload(1_003, 100, 4);
        let mut c = Client::connect(server.addr).unwrap();
        c.create_topic(INGEST_TOPIC, 4).unwrap();
        c.create_topic(LATENCY_TOPIC, 4).unwrap();
        let i = ingest(server.addr, &w).unwrap();
        assert_eq!(i.events, 1_003);
        assert_eq!(i.latency.count(), 11, "one sample per request");
        let r = read_back(server.addr, &w).unwrap();
        assert_eq!(r.events, 1_003);
        let e = e2e(server.addr, &w).unwrap();
        assert!(e.sent > 0);
        assert_eq!(e.received, e.sent);
        assert_eq!(e.latency.count(), e.sent);
    }

    #[test]
    fn ingest_fails_when_the_topic_has_fewer_partitions_than_the_workload() {
        let server = Listener::start();
        let mut c = Client::connect(server.addr).unwrap();
        c.create_topic(INGEST_TOPIC, 2).unwrap();
        let err = ingest(server.addr, &workload(100, 10, 4)).unwrap_err();
        assert!(format!("{err:#}").contains("answered error"), "{err:#}");
    }

    #[test]
    fn records_before_the_offset_and_a_cut_batch_are_left_out() {
        let w = workload(10, 10, 1);
        let (_, one) = batches(&w, 0, 10, "d", None).unwrap().remove(0);
        let mut second = one.to_vec();
        batch::set_base_offset(&mut second, 10);
        let mut bytes = one.to_vec();
        bytes.extend_from_slice(&second);
        let offsets = |rs: Vec<Record>| rs.iter().map(|r| r.offset).collect::<Vec<_>>();
        assert_eq!(
            offsets(records_from(&bytes, 7).unwrap()),
            (7..20).collect::<Vec<_>>()
        );
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            offsets(records_from(cut, 0).unwrap()),
            (0..10).collect::<Vec<_>>()
        );
        let mut corrupt = bytes.clone();
        corrupt[batch::RECORDS_POS + 2] ^= 1;
        assert!(records_from(&corrupt, 0).is_err());
    }

    #[test]
    fn frames_are_checked_before_they_are_read() {
        let frame = |size: i32, body: &[u8]| {
            let mut v = size.to_be_bytes().to_vec();
            v.extend_from_slice(body);
            v
        };
        let ok = read_frame(&mut &frame(5, b"hello")[..]).unwrap();
        assert_eq!(&ok[..], b"hello");
        let too_big = i32::try_from(RESPONSE_BYTES_MAX + 1).unwrap();
        for bad in [frame(-1, b""), frame(3, b"abc"), frame(too_big, b"")] {
            let err = read_frame(&mut &bad[..]).unwrap_err();
            assert!(err.to_string().contains("is outside"), "{err}");
        }
        assert!(read_frame(&mut &frame(8, b"short")[..]).is_err());
    }

    #[test]
    fn a_response_to_another_request_is_refused() {
        // A fake broker that answers every request with correlation id 99.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut request = read_frame(&mut s).unwrap();
            let _ = RequestHeader::decode(&mut request, 2).unwrap();
            let mut body = BytesMut::new();
            ResponseHeader::default()
                .with_correlation_id(99)
                .encode(&mut body, 0)
                .unwrap();
            kafka_protocol::messages::ApiVersionsResponse::default()
                .encode(&mut body, API_VERSIONS_VERSION)
                .unwrap();
            let mut out = i32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            s.write_all(&out).unwrap();
        });
        let err = Client::connect(addr).unwrap_err();
        assert!(err.to_string().contains("response to request 99"), "{err}");
        fake.join().unwrap();
    }
}
