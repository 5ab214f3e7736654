//! The walsender client: a Postgres connection in logical replication mode
//! (`replication=database`), written on a plain [`TcpStream`] with `postgres-protocol`'s message
//! writers, because `tokio-postgres` cannot enter the CopyBoth mode that `START_REPLICATION`
//! answers with.
//!
//! It does what the two sources need and nothing more: startup and authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256; no TLS), simple queries for the replication commands
//! (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`, `DROP_REPLICATION_SLOT`), and the replication
//! stream: [`ReplicationConnection::recv`] yields [`ReplMessage`]s and
//! [`ReplicationConnection::send_status`] writes standby status updates.
//!
//! Invariants and limits:
//! - Reads are cancel-safe: bytes go from the socket into a buffer owned by the connection, and a
//!   message is taken out of the buffer only once it is complete, in a synchronous step. Writes
//!   are queued in a second buffer that is advanced only by what the socket accepted, so a
//!   dropped future leaves at most a tail that the next write sends first.
//! - A backend message longer than [`BACKEND_MESSAGE_BYTES_MAX`] fails with
//!   [`WireError::MessageTooLarge`] naming its size, before its body is buffered.
//! - Connecting (TCP, startup, authentication) takes at most the URL's `connect_timeout` or
//!   [`CONNECT_TIMEOUT_MS`].
//! - An `ErrorResponse` becomes [`WireError::Server`] with its SQLSTATE and message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// Largest backend message accepted, in bytes (a change of a row with large TOASTed values
/// arrives as one message; Postgres caps a field at 1 GiB, far beyond what an event can hold).
pub const BACKEND_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long connecting and authenticating may take when the URL sets no `connect_timeout`.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Rows a simple query may return before it fails (replication commands return one).
pub const QUERY_ROWS_MAX: usize = 10_000;

/// Microseconds from the Unix epoch to Postgres's epoch, 2000-01-01T00:00:00Z.
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A WAL position: a 64-bit byte offset, printed as Postgres does (`16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A string that is not an LSN in the `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers as X/Y")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Lsn, LsnParseError> {
        let bad = || LsnParseError(s.chars().take(40).collect());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hex = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(hex(hi)?) << 32) | u64::from(hex(lo)?)))
    }
}

/// A failure of the walsender connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("postgres connection: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting and authenticating took longer than the connect timeout.
    #[error("postgres connection: no connection within {timeout_ms} ms")]
    ConnectTimeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The server answered with an `ErrorResponse`.
    #[error("postgres error {code}: {message}")]
    Server {
        /// The SQLSTATE (`42704`, `55006` ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// A backend message longer than [`BACKEND_MESSAGE_BYTES_MAX`].
    #[error("a {size}-byte postgres message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Its declared size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The server sent something this client does not expect here.
    #[error("postgres protocol: {0}")]
    Protocol(String),
    /// Authentication could not be done (an unsupported method, a missing password).
    #[error("postgres authentication: {0}")]
    Auth(String),
    /// The URL cannot be used (a Unix socket, no host).
    #[error("postgres url: {0}")]
    Config(String),
}

impl WireError {
    /// Whether reconnecting may help: socket failures, timeouts and server errors of the
    /// connection-exception (`08`), insufficient-resources (`53`), operator-intervention (`57`)
    /// and object-in-use (`55006`, a slot still held by an ended connection) kinds.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            WireError::Io(_) | WireError::ConnectTimeout { .. } => true,
            WireError::Server { code, .. } => {
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("57")
                    || code == "55006"
                    || code == "40001"
            }
            _ => false,
        }
    }
}

/// One message of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    /// A piece of WAL, here one `pgoutput` message.
    XLogData {
        /// The WAL position of the record that produced it.
        wal_start: Lsn,
        /// The end of the WAL the server has sent so far.
        wal_end: Lsn,
        /// The `pgoutput` message.
        data: Bytes,
    },
    /// The server's keepalive.
    Keepalive {
        /// The end of the WAL the server has sent so far.
        wal_end: Lsn,
        /// Whether the server wants a status update now (else it ends the connection after
        /// `wal_sender_timeout`).
        reply_requested: bool,
    },
}

/// The reply to `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// Where the slot starts: the first change it streams commits after this point.
    pub consistent_point: Lsn,
    /// The exported snapshot, valid until the next command on this connection or its close.
    pub snapshot_name: Option<String>,
}

/// A connection in `replication=database` mode.
pub struct ReplicationConnection {
    read_half: OwnedReadHalf,
    read: BytesMut,
    /// Messages being composed; [`ReplicationConnection::flush`] moves them to `writer`.
    write: BytesMut,
    /// The socket's write half, shared with a [`StatusKeeper`].
    writer: Arc<Mutex<Writer>>,
    /// Set once `START_REPLICATION` answered with CopyBoth.
    streaming: bool,
}

impl fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

/// A backend message: its tag and body.
struct Frame {
    tag: u8,
    body: Bytes,
}

impl ReplicationConnection {
    /// Connects and authenticates with the URL's host, port, user, password and database.
    ///
    /// # Errors
    /// [`WireError::Config`] for a URL without a TCP host, [`WireError::ConnectTimeout`],
    /// [`WireError::Auth`] for an unsupported method, [`WireError::Server`] for a refusal
    /// (bad password: `28P01`; no replication privilege: `42501`), [`WireError::Io`].
    pub async fn connect(
        config: &tokio_postgres::Config,
        application_name: &str,
    ) -> Result<ReplicationConnection, WireError> {
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_millis(CONNECT_TIMEOUT_MS));
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        tokio::time::timeout(timeout, Self::connect_inner(config, application_name))
            .await
            .map_err(|_| WireError::ConnectTimeout { timeout_ms })?
    }

    async fn connect_inner(
        config: &tokio_postgres::Config,
        application_name: &str,
    ) -> Result<ReplicationConnection, WireError> {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(_) => return Err(WireError::Config("Unix sockets are not supported".into())),
            None => "127.0.0.1".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| WireError::Config("the url names no user".into()))?
            .to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let stream = TcpStream::connect((host.as_str(), port)).await?;
        stream.set_nodelay(true)?;
        let (read_half, write_half) = stream.into_split();
        let mut conn = ReplicationConnection {
            read_half,
            read: BytesMut::with_capacity(64 * 1024),
            write: BytesMut::new(),
            writer: Arc::new(Mutex::new(Writer {
                half: write_half,
                queue: BytesMut::new(),
            })),
            streaming: false,
        };
        let mut params = vec![
            ("user", user.as_str()),
            ("database", dbname.as_str()),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
        ];
        // The URL's `options` (`-c wal_sender_timeout=...`) go to the server as they are.
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.write)?;
        conn.flush().await?;
        conn.authenticate(&user, config.get_password()).await?;
        // ParameterStatus, BackendKeyData, then ReadyForQuery.
        loop {
            let frame = conn.frame().await?;
            match frame.tag {
                b'Z' => return Ok(conn),
                b'E' => return Err(parse_error(&frame.body)),
                b'S' | b'K' | b'N' => {}
                other => return Err(unexpected(other, "after authentication")),
            }
        }
    }

    async fn authenticate(&mut self, user: &str, password: Option<&[u8]>) -> Result<(), WireError> {
        let need_password =
            || WireError::Auth("the server asks for a password; the url has none".into());
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.frame().await?;
            match frame.tag {
                b'R' => {}
                // A refusal: a bad password, no pg_hba.conf entry, no REPLICATION attribute.
                b'E' => return Err(parse_error(&frame.body)),
                b'N' => continue,
                other => return Err(unexpected(other, "during authentication")),
            }
            let mut body = frame.body;
            if body.len() < 4 {
                return Err(WireError::Protocol("short authentication message".into()));
            }
            let kind = body.get_i32();
            match kind {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(
                        password.ok_or_else(need_password)?,
                        &mut self.write,
                    )?;
                }
                5 => {
                    if body.len() < 4 {
                        return Err(WireError::Protocol("short MD5 salt".into()));
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash = md5_hash(user.as_bytes(), password.ok_or_else(need_password)?, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.write)?;
                }
                10 => {
                    let offered = body
                        .split(|b| *b == 0)
                        .any(|m| m == SCRAM_SHA_256.as_bytes());
                    if !offered {
                        return Err(WireError::Auth(
                            "the server offers no SASL mechanism this client supports (SCRAM-SHA-256 without channel binding)".into(),
                        ));
                    }
                    let s = ScramSha256::new(
                        password.ok_or_else(need_password)?,
                        ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.write)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| WireError::Protocol("SASL continue before start".into()))?;
                    s.update(&body)
                        .map_err(|e| WireError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.write)?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| WireError::Protocol("SASL final before start".into()))?;
                    s.finish(&body)
                        .map_err(|e| WireError::Auth(e.to_string()))?;
                    continue;
                }
                other => {
                    return Err(WireError::Auth(format!(
                        "authentication method {other} is not supported (trust, password, md5, scram-sha-256 are)"
                    )));
                }
            }
            self.flush().await?;
        }
    }

    /// Runs one simple query and returns its rows as text (`None` for NULL).
    ///
    /// # Errors
    /// [`WireError::Server`] when the command fails (the connection stays usable),
    /// [`WireError::Protocol`] past [`QUERY_ROWS_MAX`] rows or when streaming, [`WireError::Io`].
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, WireError> {
        if self.streaming {
            return Err(WireError::Protocol(
                "a query on a streaming connection".into(),
            ));
        }
        frontend::query(sql, &mut self.write)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.frame().await?;
            match frame.tag {
                b'D' => {
                    if rows.len() >= QUERY_ROWS_MAX {
                        return Err(WireError::Protocol(format!(
                            "more than {QUERY_ROWS_MAX} rows"
                        )));
                    }
                    rows.push(parse_data_row(frame.body)?);
                }
                b'E' => error = Some(parse_error(&frame.body)),
                b'Z' => break,
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                other => return Err(unexpected(other, "in a query response")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`: the system id, timeline, current WAL flush position and database.
    ///
    /// # Errors
    /// As [`ReplicationConnection::simple_query`]; [`WireError::Protocol`] for an odd reply.
    pub async fn identify_system(
        &mut self,
    ) -> Result<(String, u32, Lsn, Option<String>), WireError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| WireError::Protocol("IDENTIFY_SYSTEM: no row".into()))?;
        let field = |i: usize| row.get(i).cloned().flatten();
        let bad = || WireError::Protocol("IDENTIFY_SYSTEM: malformed row".into());
        let timeline = field(1).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let lsn = field(2).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        Ok((field(0).ok_or_else(bad)?, timeline, lsn, field(3)))
    }

    /// `CREATE_REPLICATION_SLOT <slot> LOGICAL pgoutput`, exporting a snapshot when asked.
    ///
    /// # Errors
    /// [`WireError::Server`] (`42710` when the slot exists), as `simple_query` otherwise.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        export_snapshot: bool,
    ) -> Result<CreatedSlot, WireError> {
        let option = if export_snapshot {
            "EXPORT_SNAPSHOT"
        } else {
            "NOEXPORT_SNAPSHOT"
        };
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {option}",
            quote_ident(slot)
        );
        let rows = self.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| WireError::Protocol("CREATE_REPLICATION_SLOT: no row".into()))?;
        let consistent_point = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                WireError::Protocol("CREATE_REPLICATION_SLOT: no consistent point".into())
            })?;
        Ok(CreatedSlot {
            consistent_point,
            snapshot_name: row.get(2).cloned().flatten(),
        })
    }

    /// `DROP_REPLICATION_SLOT <slot> WAIT`: waits for a connection still holding it to end.
    ///
    /// # Errors
    /// [`WireError::Server`] (`42704` when there is no such slot), as `simple_query` otherwise.
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), WireError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot)))
            .await
            .map(|_| ())
    }

    /// `START_REPLICATION SLOT <slot> LOGICAL <start> (proto_version '1', publication_names ...)`:
    /// the connection then streams until it is dropped.
    ///
    /// # Errors
    /// [`WireError::Server`] when the slot does not exist or is in use (`55006`), as
    /// `simple_query` otherwise.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<(), WireError> {
        let publication = quote_ident(publication).replace('\'', "''");
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', publication_names '{publication}')",
            quote_ident(slot)
        );
        frontend::query(&sql, &mut self.write)?;
        self.flush().await?;
        loop {
            let frame = self.frame().await?;
            match frame.tag {
                b'W' => {
                    self.streaming = true;
                    return Ok(());
                }
                b'E' => {
                    let e = parse_error(&frame.body);
                    // Drain to ReadyForQuery so the connection stays usable.
                    loop {
                        if self.frame().await?.tag == b'Z' {
                            return Err(e);
                        }
                    }
                }
                b'N' | b'S' => {}
                other => return Err(unexpected(other, "after START_REPLICATION")),
            }
        }
    }

    /// The next replication message. Keepalives are returned, not answered: the caller knows
    /// which position to confirm.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    ///
    /// # Errors
    /// [`WireError::Server`] when the server ends replication with an error,
    /// [`WireError::Io`] when the connection fails or the server ends the copy,
    /// [`WireError::Protocol`] for a malformed message.
    pub async fn recv(&mut self) -> Result<ReplMessage, WireError> {
        loop {
            if let Some(message) = self.try_recv()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// A replication message already buffered, without reading the socket.
    ///
    /// # Errors
    /// As [`ReplicationConnection::recv`].
    pub fn try_recv(&mut self) -> Result<Option<ReplMessage>, WireError> {
        loop {
            let Some(frame) = self.try_frame()? else {
                return Ok(None);
            };
            match frame.tag {
                b'd' => return parse_copy_data(frame.body).map(Some),
                b'E' => return Err(parse_error(&frame.body)),
                b'c' => {
                    return Err(WireError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server ended the replication stream",
                    )));
                }
                b'N' | b'S' => {}
                other => return Err(unexpected(other, "in the replication stream")),
            }
        }
    }

    /// Writes a standby status update: `written`, `flushed` (what the slot may forget) and
    /// `applied` positions, timestamped now.
    ///
    /// # Errors
    /// [`WireError::Io`] when the socket fails.
    pub async fn send_status(
        &mut self,
        written: Lsn,
        flushed: Lsn,
        applied: Lsn,
    ) -> Result<(), WireError> {
        status_message(written, flushed, applied)?.write(&mut self.write);
        self.flush().await
    }

    /// Writes whatever is composed. Cancel-safe: the messages move to the writer's queue in
    /// one synchronous step, and the queue advances only by what the socket took, so a dropped
    /// call leaves a tail that the next write sends first.
    async fn flush(&mut self) -> Result<(), WireError> {
        let mut writer = self.writer.lock().await;
        writer.queue.extend_from_slice(&self.write);
        self.write.clear();
        writer.flush().await
    }

    /// Starts a task that writes a standby status update every `interval`, confirming the LSN
    /// `flushed` returns, until the returned keeper is dropped or the socket fails. It keeps the
    /// server's `wal_sender_timeout` from ending the connection while nobody reads it (the
    /// walsender reads replies even while its own writes wait).
    #[must_use]
    pub fn status_keeper<F>(&self, flushed: F, interval: Duration) -> StatusKeeper
    where
        F: Fn() -> Lsn + Send + 'static,
    {
        let writer = Arc::clone(&self.writer);
        StatusKeeper(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let lsn = flushed();
                let mut w = writer.lock().await;
                let Ok(message) = status_message(lsn, lsn, lsn) else {
                    return;
                };
                message.write(&mut w.queue);
                if w.flush().await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Reads once from the socket into the buffer.
    async fn fill(&mut self) -> Result<(), WireError> {
        // A tail queued by a cancelled write goes first.
        if !self.write.is_empty() {
            self.flush().await?;
        }
        self.read.reserve(64 * 1024);
        let n = self.read_half.read_buf(&mut self.read).await?;
        if n == 0 {
            return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(())
    }

    async fn frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    fn try_frame(&mut self) -> Result<Option<Frame>, WireError> {
        if self.read.len() < 5 {
            return Ok(None);
        }
        let tag = self.read[0];
        let len =
            u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]) as usize;
        if len < 4 {
            return Err(WireError::Protocol(format!("message length {len} below 4")));
        }
        if len > BACKEND_MESSAGE_BYTES_MAX {
            return Err(WireError::MessageTooLarge {
                size: len,
                max: BACKEND_MESSAGE_BYTES_MAX,
            });
        }
        if self.read.len() < len + 1 {
            return Ok(None);
        }
        let mut frame = self.read.split_to(len + 1);
        frame.advance(5);
        Ok(Some(Frame {
            tag,
            body: frame.freeze(),
        }))
    }
}

/// The socket's write half and the bytes not yet written to it.
struct Writer {
    half: OwnedWriteHalf,
    queue: BytesMut,
}

impl Writer {
    async fn flush(&mut self) -> Result<(), WireError> {
        while !self.queue.is_empty() {
            let n = self.half.write_buf(&mut self.queue).await?;
            if n == 0 {
                return Err(WireError::Io(std::io::ErrorKind::WriteZero.into()));
            }
        }
        self.half.flush().await?;
        Ok(())
    }
}

/// The task of [`ReplicationConnection::status_keeper`]; dropping it stops the task.
#[derive(Debug)]
pub struct StatusKeeper(tokio::task::JoinHandle<()>);

impl Drop for StatusKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A standby status update ('r'), timestamped now.
fn status_message(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
) -> std::io::Result<frontend::CopyData<Bytes>> {
    let mut body = BytesMut::with_capacity(34);
    body.put_u8(b'r');
    body.put_u64(written.0);
    body.put_u64(flushed.0);
    body.put_u64(applied.0);
    body.put_i64(pg_now_us());
    body.put_u8(0);
    frontend::CopyData::new(body.freeze())
}

/// Now, in microseconds since 2000-01-01, the timestamp of the replication protocol.
#[must_use]
pub fn pg_now_us() -> i64 {
    let unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_us - PG_EPOCH_OFFSET_US
}

/// Quotes an identifier for SQL and replication commands (`"my ""slot"""`).
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn unexpected(tag: u8, at: &str) -> WireError {
    WireError::Protocol(format!("unexpected message {:?} {at}", char::from(tag)))
}

fn parse_copy_data(mut body: Bytes) -> Result<ReplMessage, WireError> {
    let short = || WireError::Protocol("short replication message".into());
    if body.is_empty() {
        return Err(short());
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short());
            }
            let wal_start = Lsn(body.get_u64());
            let wal_end = Lsn(body.get_u64());
            let _server_time = body.get_i64();
            Ok(ReplMessage::XLogData {
                wal_start,
                wal_end,
                data: body,
            })
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short());
            }
            let wal_end = Lsn(body.get_u64());
            let _server_time = body.get_i64();
            Ok(ReplMessage::Keepalive {
                wal_end,
                reply_requested: body.get_u8() == 1,
            })
        }
        other => Err(WireError::Protocol(format!(
            "unknown replication message {:?}",
            char::from(other)
        ))),
    }
}

fn parse_data_row(mut body: Bytes) -> Result<Vec<Option<String>>, WireError> {
    let short = || WireError::Protocol("short DataRow".into());
    if body.len() < 2 {
        return Err(short());
    }
    let count = body.get_u16();
    let mut row = Vec::new();
    for _ in 0..count {
        if body.len() < 4 {
            return Err(short());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short());
        }
        let value = body.split_to(len);
        row.push(Some(String::from_utf8_lossy(&value).into_owned()));
    }
    Ok(row)
}

/// An `ErrorResponse` body: fields of a type byte and a C string, ended by a zero byte.
fn parse_error(body: &[u8]) -> WireError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        let Some((&kind, value)) = field.split_first() else {
            continue;
        };
        match kind {
            b'C' => code = String::from_utf8_lossy(value).into_owned(),
            b'M' => message = String::from_utf8_lossy(value).into_owned(),
            _ => {}
        }
    }
    WireError::Server { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_form() {
        for (text, value) in [
            ("0/0", 0u64),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        for bad in ["", "0", "0/", "/0", "x/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn copy_data_messages_parse_and_short_ones_fail() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(10);
        w.put_u64(20);
        w.put_i64(0);
        w.put_slice(b"B...");
        assert_eq!(
            parse_copy_data(w.freeze()).unwrap(),
            ReplMessage::XLogData {
                wal_start: Lsn(10),
                wal_end: Lsn(20),
                data: Bytes::from_static(b"B...")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(7);
        k.put_i64(0);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).unwrap(),
            ReplMessage::Keepalive {
                wal_end: Lsn(7),
                reply_requested: true
            }
        );
        for short in [&b""[..], b"w", b"k\0\0", b"z"] {
            assert!(parse_copy_data(Bytes::copy_from_slice(short)).is_err());
        }
    }

    #[test]
    fn error_responses_carry_sqlstate_and_message() {
        let body = b"SERROR\0C42704\0Mreplication slot \"x\" does not exist\0\0";
        match parse_error(body) {
            WireError::Server { code, message } => {
                assert_eq!(code, "42704");
                assert!(message.contains("does not exist"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_rows_parse_nulls_and_reject_truncation() {
        let mut d = BytesMut::new();
        d.put_u16(2);
        d.put_i32(2);
        d.put_slice(b"ab");
        d.put_i32(-1);
        assert_eq!(
            parse_data_row(d.freeze()).unwrap(),
            vec![Some("ab".into()), None]
        );
        let mut t = BytesMut::new();
        t.put_u16(1);
        t.put_i32(100);
        t.put_slice(b"ab");
        assert!(parse_data_row(t.freeze()).is_err());
    }

    /// A one-connection fake server: reads the startup message, then runs `script` on the
    /// socket.
    async fn fake<F, Fut>(script: F) -> String
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let len = socket.read_u32().await.unwrap() as usize;
            let mut startup = vec![0; len - 4];
            socket.read_exact(&mut startup).await.unwrap();
            assert!(startup.windows(11).any(|w| w == b"replication"));
            script(socket).await;
        });
        format!("postgres://gb:secret@127.0.0.1:{port}/db?connect_timeout=1")
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    async fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
        let tag = socket.read_u8().await.unwrap();
        let len = socket.read_u32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        socket.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    async fn ready(socket: &mut TcpStream) {
        let mut out = message(b'R', &0i32.to_be_bytes());
        out.extend(message(b'S', b"server_version\x0015.0\x00"));
        out.extend(message(b'Z', b"I"));
        socket.write_all(&out).await.unwrap();
    }

    async fn connect(url: &str) -> Result<ReplicationConnection, WireError> {
        ReplicationConnection::connect(&url.parse().unwrap(), "test").await
    }

    #[tokio::test]
    async fn md5_and_cleartext_passwords_are_sent_as_the_server_asks() {
        let url = fake(|mut socket| async move {
            let mut body = 5i32.to_be_bytes().to_vec();
            body.extend_from_slice(&[1, 2, 3, 4]);
            socket.write_all(&message(b'R', &body)).await.unwrap();
            let (tag, password) = read_message(&mut socket).await;
            assert_eq!(tag, b'p');
            let expect = md5_hash(b"gb", b"secret", [1, 2, 3, 4]);
            assert_eq!(&password[..password.len() - 1], expect.as_bytes());
            ready(&mut socket).await;
        })
        .await;
        connect(&url).await.expect("md5");
        let url = fake(|mut socket| async move {
            socket
                .write_all(&message(b'R', &3i32.to_be_bytes()))
                .await
                .unwrap();
            let (_, password) = read_message(&mut socket).await;
            assert_eq!(password, b"secret\0");
            ready(&mut socket).await;
        })
        .await;
        connect(&url).await.expect("cleartext");
    }

    #[tokio::test]
    async fn refusals_limits_and_timeouts_are_typed() {
        let url = fake(|mut socket| async move {
            let body = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0";
            socket.write_all(&message(b'E', body)).await.unwrap();
        })
        .await;
        match connect(&url).await {
            Err(WireError::Server { code, .. }) => assert_eq!(code, "28P01"),
            other => panic!("{other:?}"),
        }
        let url = fake(|mut socket| async move {
            socket
                .write_all(&message(b'R', &7i32.to_be_bytes()))
                .await
                .unwrap();
        })
        .await;
        assert!(matches!(connect(&url).await, Err(WireError::Auth(_))));
        let url = fake(|mut socket| async move {
            let mut header = vec![b'R'];
            header.extend_from_slice(&(BACKEND_MESSAGE_BYTES_MAX as u32 + 5).to_be_bytes());
            socket.write_all(&header).await.unwrap();
            // Hold the socket open: the client must not wait for the body.
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        match connect(&url).await {
            Err(WireError::MessageTooLarge { size, max }) => {
                assert_eq!(
                    (size, max),
                    (BACKEND_MESSAGE_BYTES_MAX + 5, BACKEND_MESSAGE_BYTES_MAX)
                );
            }
            other => panic!("{other:?}"),
        }
        let url = fake(|socket| async move {
            // Accept, then say nothing.
            let _held = socket;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let started = std::time::Instant::now();
        match connect(&url).await {
            Err(e @ WireError::ConnectTimeout { timeout_ms: 1000 }) => assert!(e.is_transient()),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    /// The server's side of SCRAM-SHA-256 (RFC 5802/7677), to check the client's.
    fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
        use hmac::Mac as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    #[tokio::test]
    async fn scram_sha_256_proves_the_password_and_checks_the_server() {
        use base64::Engine as _;
        use sha2::Digest as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let url = fake(move |mut socket| async move {
            let mut body = 10i32.to_be_bytes().to_vec();
            body.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
            socket.write_all(&message(b'R', &body)).await.unwrap();
            // SASLInitialResponse: mechanism, length, client-first-message.
            let (tag, initial) = read_message(&mut socket).await;
            assert_eq!(tag, b'p');
            let nul = initial.iter().position(|b| *b == 0).unwrap();
            assert_eq!(&initial[..nul], b"SCRAM-SHA-256");
            let client_first = String::from_utf8(initial[nul + 5..].to_vec()).unwrap();
            let client_first_bare = client_first
                .strip_prefix("n,,")
                .expect("no channel binding")
                .to_string();
            let client_nonce = client_first_bare.split("r=").nth(1).unwrap().to_string();
            let salt = b"pepper-salt";
            let iterations = 64u32;
            let server_first = format!("r={client_nonce}srv,s={},i={iterations}", b64.encode(salt));
            let mut cont = 11i32.to_be_bytes().to_vec();
            cont.extend_from_slice(server_first.as_bytes());
            socket.write_all(&message(b'R', &cont)).await.unwrap();
            let (_, client_final) = read_message(&mut socket).await;
            let client_final = String::from_utf8(client_final).unwrap();
            let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
            // PBKDF2-HMAC-SHA-256, one block.
            let mut block = salt.to_vec();
            block.extend_from_slice(&1u32.to_be_bytes());
            let mut u = hmac(b"secret", &block);
            let mut salted = u.clone();
            for _ in 1..iterations {
                u = hmac(b"secret", &u);
                salted.iter_mut().zip(&u).for_each(|(s, x)| *s ^= x);
            }
            let client_key = hmac(&salted, b"Client Key");
            let stored_key = sha2::Sha256::digest(&client_key);
            let auth = format!("{client_first_bare},{server_first},{without_proof}");
            let signature = hmac(&stored_key, auth.as_bytes());
            let expect: Vec<u8> = client_key
                .iter()
                .zip(&signature)
                .map(|(k, s)| k ^ s)
                .collect();
            assert_eq!(
                b64.decode(proof).unwrap(),
                expect,
                "the client proves the password"
            );
            let server_signature = hmac(&hmac(&salted, b"Server Key"), auth.as_bytes());
            let mut fin = 12i32.to_be_bytes().to_vec();
            fin.extend_from_slice(format!("v={}", b64.encode(server_signature)).as_bytes());
            socket.write_all(&message(b'R', &fin)).await.unwrap();
            ready(&mut socket).await;
        })
        .await;
        connect(&url).await.expect("scram");
        // A server that cannot prove it knows the password is refused.
        let url = fake(move |mut socket| async move {
            let mut body = 10i32.to_be_bytes().to_vec();
            body.extend_from_slice(b"SCRAM-SHA-256\0\0");
            socket.write_all(&message(b'R', &body)).await.unwrap();
            let (_, initial) = read_message(&mut socket).await;
            let nul = initial.iter().position(|b| *b == 0).unwrap();
            let client_first = String::from_utf8(initial[nul + 5..].to_vec()).unwrap();
            let nonce = client_first.split("r=").nth(1).unwrap().to_string();
            let mut cont = 11i32.to_be_bytes().to_vec();
            cont.extend_from_slice(format!("r={nonce}x,s=c2FsdA==,i=16").as_bytes());
            socket.write_all(&message(b'R', &cont)).await.unwrap();
            let _ = read_message(&mut socket).await;
            let mut fin = 12i32.to_be_bytes().to_vec();
            fin.extend_from_slice(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            socket.write_all(&message(b'R', &fin)).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        })
        .await;
        assert!(matches!(connect(&url).await, Err(WireError::Auth(_))));
    }
}
