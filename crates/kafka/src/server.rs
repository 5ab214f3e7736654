//! The listener: accepts connections, reads size-prefixed request frames, decodes them with
//! the `kafka-protocol` codecs, dispatches, and writes the responses in order.
//!
//! What closes a connection (as Kafka does): a size prefix below the smallest header or above
//! [`crate::KafkaConfig::request_bytes_max`], an unknown API key, an API or version that is
//! not implemented (except ApiVersions, answered in v0 with UNSUPPORTED_VERSION), and a
//! request that does not decode. Everything else (bad batches, unknown topics, group errors)
//! is an error code in a response, and the connection stays.

use crate::group::ClientMeta;
use crate::{Kafka, admin, fetch, metadata, produce, versions};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
    api_versions_response::ApiVersion,
};
use kafka_protocol::protocol::{Decodable as _, Encodable as _};
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bytes of the fixed part of every request header (api key, version, correlation id).
const HEADER_FIXED_BYTES: usize = 8;

/// What a request comes to.
#[derive(Debug)]
pub enum Outcome {
    /// Send this frame (without its size prefix).
    Reply(BytesMut),
    /// Send nothing (Produce with `acks` 0).
    Silent,
    /// Close the connection, for this reason.
    Close(String),
}

/// Serves Kafka clients on `listener` until `shutdown` completes.
///
/// # Errors
/// Accepting failed in a way that is not about one connection.
pub async fn serve(
    listener: TcpListener,
    kafka: Arc<Kafka>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(kafka.config.connections_max));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "kafka listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            kafka.stats.refused();
            tracing::warn!(%peer, max = kafka.config.connections_max, "kafka listener: too many connections; closing the new one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let kafka = kafka.clone();
        tokio::spawn(async move {
            kafka.stats.opened();
            if let Err(reason) = connection(&kafka, stream, peer).await {
                tracing::debug!(%peer, %reason, "kafka connection closed");
            }
            kafka.stats.closed();
            drop(permit);
        });
    }
}

/// Handles one connection until the client closes it or a request closes it.
async fn connection(
    kafka: &Arc<Kafka>,
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
) -> Result<(), String> {
    let max = kafka.config.request_bytes_max;
    loop {
        let mut prefix = [0u8; 4];
        match stream.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let size = i32::from_be_bytes(prefix);
        if size < HEADER_FIXED_BYTES as i32 || size as usize > max {
            return Err(format!(
                "request size {size} is outside [{HEADER_FIXED_BYTES}, {max}]"
            ));
        }
        let mut frame = BytesMut::zeroed(size as usize);
        stream
            .read_exact(&mut frame)
            .await
            .map_err(|e| e.to_string())?;
        match handle_from(kafka, frame.freeze(), Some(peer)).await {
            Outcome::Reply(body) => {
                let mut out = BytesMut::with_capacity(4 + body.len());
                out.put_i32(body.len() as i32);
                out.extend_from_slice(&body);
                stream.write_all(&out).await.map_err(|e| e.to_string())?;
            }
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                kafka.stats.bad_request();
                return Err(reason);
            }
        }
    }
}

/// Decodes one request frame (without its size prefix), handles it, and encodes the answer.
pub async fn handle(kafka: &Arc<Kafka>, frame: Bytes) -> Outcome {
    handle_from(kafka, frame, None).await
}

/// [`handle`], for a request from `peer` (group members show their host).
pub async fn handle_from(
    kafka: &Arc<Kafka>,
    frame: Bytes,
    peer: Option<std::net::SocketAddr>,
) -> Outcome {
    if frame.len() < HEADER_FIXED_BYTES {
        return Outcome::Close(format!("a {}-byte request has no header", frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    kafka.stats.request(raw_key);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Outcome::Close(format!("unknown API key {raw_key}"));
    };
    if key == ApiKey::ApiVersions && !versions::supported(key, version) {
        // KIP-511: answer in v0, whatever was asked, so the client can pick a version.
        let mut response = api_versions(0);
        response.error_code = ResponseError::UnsupportedVersion.code();
        return encode(key, 0, correlation_id, &ResponseKind::ApiVersions(response));
    }
    if !versions::supported(key, version) {
        return Outcome::Close(format!("{key:?} v{version} is not implemented"));
    }
    let mut body = frame;
    let header = match RequestHeader::decode(&mut body, key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Outcome::Close(format!("{key:?} v{version}: bad header: {e}")),
    };
    let request = match RequestKind::decode(key, &mut body, version) {
        Ok(r) => r,
        Err(e) => return Outcome::Close(format!("{key:?} v{version}: bad request: {e}")),
    };
    let response = match dispatch(kafka, request, version, &header, peer).await {
        Ok(Some(r)) => r,
        Ok(None) => return Outcome::Silent,
        Err(reason) => return Outcome::Close(reason),
    };
    encode(key, version, correlation_id, &response)
}

fn encode(key: ApiKey, version: i16, correlation_id: i32, response: &ResponseKind) -> Outcome {
    let mut out = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    if let Err(e) = header.encode(&mut out, key.response_header_version(version)) {
        return Outcome::Close(format!("encoding the {key:?} response header: {e}"));
    }
    match response.encode(&mut out, version) {
        Ok(()) => Outcome::Reply(out),
        // A response field the version cannot carry is a bug here, not the client's; closing
        // makes the client retry elsewhere or report it, instead of reading garbage.
        Err(e) => {
            tracing::error!(?key, version, error = %e, "kafka listener: cannot encode a response");
            Outcome::Close(format!("encoding the {key:?} v{version} response: {e}"))
        }
    }
}

/// The ApiVersions answer at `version`.
#[must_use]
pub fn api_versions(version: i16) -> ApiVersionsResponse {
    let _ = version;
    ApiVersionsResponse::default().with_api_keys(
        versions::table()
            .iter()
            .map(|(k, r)| {
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(r.min)
                    .with_max_version(r.max)
            })
            .collect(),
    )
}

async fn dispatch(
    kafka: &Arc<Kafka>,
    request: RequestKind,
    version: i16,
    header: &RequestHeader,
    peer: Option<std::net::SocketAddr>,
) -> Result<Option<ResponseKind>, String> {
    let groups = &kafka.groups;
    Ok(Some(match request {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(api_versions(version)),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(metadata::metadata(kafka, r, version).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(metadata::find_coordinator(kafka, &r, version))
        }
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(metadata::list_offsets(kafka, r, version).await)
        }
        RequestKind::Produce(r) => {
            let Some(response) = produce::produce(kafka, r, version).await else {
                return Ok(None);
            };
            ResponseKind::Produce(response)
        }
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(kafka, r, version).await),
        RequestKind::InitProducerId(r) => {
            ResponseKind::InitProducerId(produce::init_producer_id(kafka, &r, version).await)
        }
        RequestKind::CreateTopics(r) => {
            ResponseKind::CreateTopics(admin::create_topics(kafka, r, version).await)
        }
        RequestKind::DeleteTopics(r) => {
            ResponseKind::DeleteTopics(admin::delete_topics(kafka, r, version).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(admin::describe_configs(kafka, &r, version))
        }
        RequestKind::JoinGroup(r) => {
            let client = ClientMeta {
                client_id: header
                    .client_id
                    .as_ref()
                    .map_or_else(String::new, |c| c.as_str().to_string()),
                client_host: peer.map_or_else(String::new, |p| format!("/{}", p.ip())),
            };
            ResponseKind::JoinGroup(groups.join_as(r, version, client).await)
        }
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(groups.sync(r, version).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(groups.heartbeat(r, version)),
        RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(groups.leave(r, version)),
        RequestKind::OffsetCommit(r) => {
            ResponseKind::OffsetCommit(groups.offset_commit(r, version).await)
        }
        RequestKind::OffsetFetch(r) => {
            ResponseKind::OffsetFetch(groups.offset_fetch(r, version).await)
        }
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(groups.describe(r, version)),
        RequestKind::ListGroups(r) => ResponseKind::ListGroups(groups.list(r, version)),
        _ => {
            // `versions::supported` admitted it, so the table and this match disagree.
            return Err(format!(
                "API key {} is advertised but has no handler",
                header.request_api_key
            ));
        }
    }))
}
