//! A tiny blocking Kafka test client and a listener on its own runtime, for the protocol tests.
//!
//! The server runs `gearbox_kafka::server::serve` on a private multi-thread tokio runtime, so a
//! test is plain blocking code over `std::net::TcpStream` and can stop the whole listener (its
//! tasks and their `Arc<Kafka>`) by dropping the runtime, then reopen the broker on the same
//! directory. Every socket read and write has a deadline ([`IO_TIMEOUT`]), so a server that
//! never answers fails the test instead of hanging it.

#![allow(dead_code)] // Each test binary uses a different part of the helpers.

use bytes::{Buf as _, Bytes, BytesMut};
use gearbox_core::broker::{Broker, BrokerConfig};
use gearbox_kafka::{Kafka, KafkaConfig};
use gearbox_log::batch::{BatchBuilder, RecordInput};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Longest any one socket read or write may block (above `FETCH_WAIT_MS_MAX`, which one test
/// waits for).
pub const IO_TIMEOUT: Duration = Duration::from_secs(45);

/// A running listener over a broker in `dir`.
pub struct Server {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub dir: PathBuf,
    config: KafkaConfig,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Opens a broker in `dir` and serves it on 127.0.0.1:0 with `config` (its advertised port
    /// is replaced by the real one).
    pub fn start(dir: &Path, config: KafkaConfig) -> Server {
        let broker = Arc::new(Broker::open(dir, BrokerConfig::durable()).expect("open broker"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut config = config;
        config.advertised_port = addr.port();
        let kafka = Kafka::new(broker.clone(), config.clone()).expect("kafka state");
        runtime.spawn(async move {
            let _ = gearbox_kafka::server::serve(listener, kafka, std::future::pending()).await;
        });
        Server {
            addr,
            broker,
            dir: dir.to_path_buf(),
            config,
            runtime: Some(runtime),
        }
    }

    /// Defaults, advertising 127.0.0.1.
    pub fn config() -> KafkaConfig {
        KafkaConfig::new("127.0.0.1", 0)
    }

    /// A new client connection.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Stops the listener (every connection with it), closes the broker, and opens a new
    /// broker and listener on the same directory.
    pub fn restart(mut self) -> Server {
        self.stop();
        let (dir, config) = (self.dir.clone(), self.config.clone());
        drop(self);
        Server::start(&dir, config)
    }

    fn stop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(10));
        }
        self.broker.close().expect("close broker");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(10));
        }
    }
}

/// One blocking client connection.
pub struct Client {
    stream: TcpStream,
    next_correlation_id: i32,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Writes raw bytes (size prefix included, if any).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Writes `frame` behind its size prefix.
    pub fn send_frame(&mut self, frame: &[u8]) {
        let mut out = (frame.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(frame);
        self.send_raw(&out);
    }

    /// Sends a request; returns its correlation id.
    pub fn send<R: Encodable>(&mut self, key: ApiKey, version: i16, request: &R) -> i32 {
        let id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let frame = encode_request(key, version, id, request);
        self.send_frame(&frame);
        id
    }

    /// Reads one response frame (without its size prefix).
    pub fn recv_frame(&mut self) -> Bytes {
        let mut prefix = [0u8; 4];
        self.stream
            .read_exact(&mut prefix)
            .expect("read a response size");
        let size = i32::from_be_bytes(prefix);
        assert!(size >= 4, "response size {size}");
        let mut frame = vec![0u8; size as usize];
        self.stream.read_exact(&mut frame).expect("read a response");
        Bytes::from(frame)
    }

    /// Reads one response of `key` at `version`; returns its correlation id and body. The body
    /// must use the whole frame.
    pub fn recv<R: Decodable>(&mut self, key: ApiKey, version: i16) -> (i32, R) {
        let mut frame = self.recv_frame();
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .expect("decode the response header");
        let body = R::decode(&mut frame, version)
            .unwrap_or_else(|e| panic!("decode the {key:?} v{version} response: {e}"));
        assert_eq!(frame.remaining(), 0, "{key:?} v{version}: bytes left over");
        (header.correlation_id, body)
    }

    /// Reads one response's correlation id, or `None` if the server closed the connection
    /// instead of answering.
    pub fn try_recv_id(&mut self, key: ApiKey, version: i16) -> Option<i32> {
        let mut prefix = [0u8; 4];
        match self.stream.read_exact(&mut prefix) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                ) =>
            {
                return None;
            }
            Err(e) => panic!("read a response size: {e}"),
        }
        let size = i32::from_be_bytes(prefix);
        let mut frame = vec![0u8; usize::try_from(size).expect("response size")];
        self.stream.read_exact(&mut frame).expect("read a response");
        let header = ResponseHeader::decode(
            &mut Bytes::from(frame),
            key.response_header_version(version),
        )
        .expect("decode the response header");
        Some(header.correlation_id)
    }

    /// Sends a request and reads its response, checking the correlation id.
    pub fn call<Q: Encodable, R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Q,
    ) -> R {
        let id = self.send(key, version, request);
        let (got, response) = self.recv(key, version);
        assert_eq!(got, id, "{key:?} v{version}: correlation id");
        response
    }

    /// Asserts that the server closed the connection: a read sees EOF (or a reset) before
    /// [`IO_TIMEOUT`], with no bytes.
    pub fn expect_closed(&mut self) {
        let mut buf = [0u8; 64];
        match self.stream.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "expected the connection closed; got {n} bytes: {:?}",
                &buf[..n]
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => panic!("expected the connection closed; got {e}"),
        }
    }

    /// Asserts that the connection still works: an ApiVersions v3 is answered with error 0.
    pub fn expect_open(&mut self) {
        let r: ApiVersionsResponse = self.call(ApiKey::ApiVersions, 3, &api_versions_request());
        assert_eq!(r.error_code, 0);
        assert!(!r.api_keys.is_empty());
    }
}

/// A request frame (header and body, no size prefix).
pub fn encode_request<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("gearbox-test")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("encode the request header");
    request
        .encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("encode {key:?} v{version}: {e}"));
    buf.to_vec()
}

pub fn api_versions_request() -> ApiVersionsRequest {
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("gearbox-test"))
        .with_client_software_version(StrBytes::from_static_str("1"))
}

/// An uncompressed batch of `values`, all with CreateTime `timestamp` (+ index).
pub fn batch(timestamp: i64, values: &[&[u8]]) -> Vec<u8> {
    builder(BatchBuilder::new(), timestamp, values)
}

/// An idempotent producer's batch.
pub fn producer_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    values: &[&[u8]],
) -> Vec<u8> {
    builder(
        BatchBuilder::new().producer(producer_id, epoch, base_sequence),
        1_700_000_000_000,
        values,
    )
}

fn builder(mut b: BatchBuilder, timestamp: i64, values: &[&[u8]]) -> Vec<u8> {
    for (i, v) in values.iter().enumerate() {
        b.push(RecordInput {
            timestamp: timestamp + i as i64,
            key: None,
            value: Some(v.to_vec()),
            headers: Vec::new(),
        });
    }
    b.build().expect("build a batch")
}

/// Rewrites a batch's CRC-32C over bytes [21, end), after a test changed covered bytes.
pub fn reseal(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[gearbox_log::batch::ATTRIBUTES_POS..]);
    batch[gearbox_log::batch::CRC_POS..gearbox_log::batch::CRC_POS + 4]
        .copy_from_slice(&crc.to_be_bytes());
}
