//! The `redis-streams` peer: `XADD` into Redis Streams with `appendfsync always`.
//!
//! The machine's own Redis (port 6379) keeps nothing on disk, so it is not an equal-durability
//! peer. The bench starts a second `redis-server` of its own on a free loopback port, in the
//! scratch directory, with `appendonly yes` and `appendfsync always`: Redis then writes and
//! fsyncs the append-only file before it answers the commands of an event-loop turn (its form of
//! group commit), so a reply means the entry is on disk, as a 201 from Gearbox does. The bench
//! checks the setting with `CONFIG GET` before it measures.
//!
//! The client speaks RESP2 over a plain TCP connection per producer and pipelines each batch:
//! it writes `batch` `XADD`s in one go, then reads `batch` replies. Each entry carries the same
//! attributes as a Gearbox event (`specversion`, `id`, `source`, `type`, `datacontenttype`,
//! `partitionkey` and the data) as field-value pairs. Producer `i` writes to stream
//! `bench:{i % partitions}`. The produce-to-consume consumer reads one stream through a consumer
//! group (`XREADGROUP ... BLOCK`) and acknowledges each read with `XACK`, as a durable consumer
//! would.

use super::Scratch;
use super::hist::Histogram;
use super::load::{self, E2e, Ingest, Producer, Workload};
use anyhow::{Context as _, bail, ensure};
use std::io::{BufReader, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the bench's Redis may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply element the client accepts (a bulk string or an array length).
const REPLY_ELEMENT_MAX: usize = 64 << 20;
/// Deepest nesting of reply arrays the client accepts (`XREADGROUP` needs 4).
const REPLY_DEPTH_MAX: usize = 8;

/// A `redis-server` child, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    port: u16,
    /// `redis_version` from `INFO server`.
    pub version: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `binary` with `appendfsync always` in `scratch/redis`, or says why not (the reason is
/// reported as a skip).
///
/// # Errors
/// A message for the report: the binary is missing, or the server did not come up.
pub fn start(binary: &Path, scratch: &Scratch) -> Result<Server, String> {
    let dir = scratch.path().join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let child = Command::new(binary)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--daemonize", "no", "--protected-mode", "yes"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{} could not start: {e}", binary.display()))?;
    let mut server = Server {
        child,
        port,
        version: String::new(),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let mut conn = loop {
        match Conn::connect(port) {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "redis-server did not answer in {START_TIMEOUT:?}: {e}"
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let checked = (|| -> anyhow::Result<String> {
        let fsync = conn.call(&[b"CONFIG", b"GET", b"appendfsync"])?;
        ensure!(
            fsync == Reply::Array(vec![bulk("appendfsync"), bulk("always")]),
            "appendfsync is not `always`: {fsync:?}"
        );
        let info = conn.call(&[b"INFO", b"server"])?;
        let Reply::Bulk(info) = info else {
            bail!("INFO answered {info:?}")
        };
        Ok(String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("?")
            .trim()
            .to_string())
    })();
    server.version = checked.map_err(|e| format!("{e:#}"))?;
    Ok(server)
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:1`.
    Int(i64),
    /// `$n` and n bytes.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`.
    Nil,
    /// `*n` and n replies.
    Array(Vec<Reply>),
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// A pipelining RESP2 connection.
#[derive(Debug)]
pub struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects to `127.0.0.1:port`.
    ///
    /// # Errors
    /// If the connection fails.
    pub fn connect(port: u16) -> anyhow::Result<Conn> {
        let writer = TcpStream::connect(("127.0.0.1", port))?;
        writer.set_nodelay(true)?;
        let reader = BufReader::with_capacity(64 << 10, writer.try_clone()?);
        Ok(Conn {
            writer,
            reader,
            out: Vec::new(),
        })
    }

    /// Queues one command (sent by [`Conn::flush`]).
    pub fn queue(&mut self, args: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends everything queued.
    ///
    /// # Errors
    /// A write error.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Sends one command and reads its reply.
    ///
    /// # Errors
    /// I/O errors and malformed replies; an error reply is returned as [`Reply::Error`].
    pub fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.queue(args);
        self.flush()?;
        self.read()
    }

    /// Reads one reply.
    ///
    /// # Errors
    /// I/O errors and malformed or oversized replies.
    pub fn read(&mut self) -> anyhow::Result<Reply> {
        read_reply(&mut self.reader, 0)
    }

    /// Reads one reply and fails on an error reply.
    ///
    /// # Errors
    /// As [`Conn::read`], and for `-ERR` replies.
    pub fn read_ok(&mut self) -> anyhow::Result<Reply> {
        match self.read()? {
            Reply::Error(e) => bail!("redis answered: {e}"),
            r => Ok(r),
        }
    }
}

fn read_reply(r: &mut impl std::io::BufRead, depth: usize) -> anyhow::Result<Reply> {
    ensure!(
        depth <= REPLY_DEPTH_MAX,
        "reply nested deeper than {REPLY_DEPTH_MAX}"
    );
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    ensure!(
        line.len() >= 3 && line.ends_with(b"\r\n"),
        "connection closed or malformed reply line {:?}",
        String::from_utf8_lossy(&line)
    );
    let body = std::str::from_utf8(&line[1..line.len() - 2])?;
    let length = |body: &str| -> anyhow::Result<Option<usize>> {
        let n: i64 = body.parse().context("reply length")?;
        if n < 0 {
            return Ok(None);
        }
        let n = usize::try_from(n)?;
        ensure!(
            n <= REPLY_ELEMENT_MAX,
            "reply element of {n} exceeds {REPLY_ELEMENT_MAX}"
        );
        Ok(Some(n))
    };
    Ok(match line[0] {
        b'+' => Reply::Simple(body.to_string()),
        b'-' => Reply::Error(body.to_string()),
        b':' => Reply::Int(body.parse().context("integer reply")?),
        b'$' => match length(body)? {
            None => Reply::Nil,
            Some(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                ensure!(buf.ends_with(b"\r\n"), "bulk string without its CRLF");
                buf.truncate(n);
                Reply::Bulk(buf)
            }
        },
        b'*' => match length(body)? {
            None => Reply::Nil,
            Some(n) => Reply::Array(
                (0..n)
                    .map(|_| read_reply(r, depth + 1))
                    .collect::<anyhow::Result<_>>()?,
            ),
        },
        other => bail!("unknown reply type {:?}", char::from(other)),
    })
}

/// Queues the `XADD` of event `seq` to `stream`: its attributes and data as field-value pairs,
/// or with `bare` the data alone.
fn queue_xadd(
    c: &mut Conn,
    w: &Workload,
    stream: &[u8],
    (seq, data): (u64, &[u8]),
    sent: Option<u64>,
    bare: bool,
) {
    if bare {
        c.queue(&[b"XADD", stream, b"*", b"data", data]);
        return;
    }
    let (id, key) = (seq.to_string(), w.key(seq));
    let sent = sent.map(|ns| ns.to_string());
    let mut args: Vec<&[u8]> = vec![
        b"XADD",
        stream,
        b"*",
        b"specversion",
        b"1.0",
        b"id",
        id.as_bytes(),
        b"source",
        b"/bench",
        b"type",
        b"bench.event",
        b"datacontenttype",
        b"text/plain",
        b"partitionkey",
        key.as_bytes(),
    ];
    if let Some(s) = &sent {
        args.extend([b"sentns".as_slice(), s.as_bytes()]);
    }
    args.extend([b"data".as_slice(), data]);
    c.queue(&args);
}

/// Pipelined `XADD` ingest of the workload; `bare` sends the data alone.
///
/// # Errors
/// A connection failure or an error reply.
pub fn ingest(server: &Server, w: &Workload, bare: bool) -> anyhow::Result<Ingest> {
    let data = w.data();
    let producers = (0..w.concurrency)
        .map(|i| {
            let mut conn = Conn::connect(server.port)?;
            let stream = format!("bench:{}", i as u64 % u64::from(w.partitions));
            let data = &data;
            Ok(Box::new(move |first: u64, n: usize| {
                for seq in first..first + n as u64 {
                    queue_xadd(
                        &mut conn,
                        w,
                        stream.as_bytes(),
                        (seq, data.as_bytes()),
                        None,
                        bare,
                    );
                }
                conn.flush()?;
                for _ in 0..n {
                    conn.read_ok()?;
                }
                Ok(())
            }) as Producer<'_>)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    load::drive(w, producers)
}

/// Produce-to-consume through one stream and a consumer group.
///
/// # Errors
/// A connection failure or an error reply.
pub fn e2e(server: &Server, w: &Workload) -> anyhow::Result<E2e> {
    let stream: &[u8] = b"latency";
    let mut producer = Conn::connect(server.port)?;
    let mut consumer = Conn::connect(server.port)?;
    let created = consumer.call(&[b"XGROUP", b"CREATE", stream, b"bench", b"$", b"MKSTREAM"])?;
    ensure!(
        created == Reply::Simple("OK".into()),
        "XGROUP CREATE answered {created:?}"
    );
    let data = w.data();
    load::produce_consume(
        w,
        |base, finish| {
            let (mut received, mut hist) = (0u64, Histogram::new());
            while !finish.consumer_may_stop(received) {
                let reply = consumer.call(&[
                    b"XREADGROUP",
                    b"GROUP",
                    b"bench",
                    b"c1",
                    b"COUNT",
                    b"1000",
                    b"BLOCK",
                    b"100",
                    b"STREAMS",
                    stream,
                    b">",
                ])?;
                let now = load::nanos_since(base);
                let entries = match reply {
                    Reply::Nil => continue,
                    Reply::Array(streams) => stream_entries(streams)?,
                    other => bail!("XREADGROUP answered {other:?}"),
                };
                let mut ack: Vec<Vec<u8>> =
                    vec![b"XACK".to_vec(), stream.to_vec(), b"bench".to_vec()];
                for (id, fields) in entries {
                    let sent = fields
                        .chunks(2)
                        .find(|kv| kv[0] == Reply::Bulk(b"sentns".to_vec()))
                        .and_then(|kv| match kv.get(1) {
                            Some(Reply::Bulk(v)) => {
                                std::str::from_utf8(v).ok()?.parse::<u64>().ok()
                            }
                            _ => None,
                        })
                        .context("an entry without its send time")?;
                    hist.record_ns(now.saturating_sub(sent));
                    received += 1;
                    ack.push(id);
                }
                let args: Vec<&[u8]> = ack.iter().map(Vec::as_slice).collect();
                let acked = consumer.call(&args)?;
                ensure!(matches!(acked, Reply::Int(_)), "XACK answered {acked:?}");
            }
            Ok((received, hist))
        },
        |first, n, sent_ns| {
            for seq in first..first + n as u64 {
                queue_xadd(
                    &mut producer,
                    w,
                    stream,
                    (seq, data.as_bytes()),
                    Some(sent_ns),
                    false,
                );
            }
            producer.flush()?;
            for _ in 0..n {
                producer.read_ok()?;
            }
            Ok(())
        },
    )
}

/// The `(id, [field, value, ...])` entries of an `XREADGROUP` reply for one stream.
fn stream_entries(streams: Vec<Reply>) -> anyhow::Result<Vec<(Vec<u8>, Vec<Reply>)>> {
    let mut out = Vec::new();
    for s in streams {
        let Reply::Array(mut pair) = s else {
            bail!("a stream reply that is not [name, entries]")
        };
        ensure!(
            pair.len() == 2,
            "a stream reply that is not [name, entries]"
        );
        let Reply::Array(entries) = pair.swap_remove(1) else {
            bail!("stream entries that are not an array")
        };
        for e in entries {
            match e {
                Reply::Array(mut e) if e.len() == 2 => {
                    let fields = match e.pop() {
                        Some(Reply::Array(f)) => f,
                        other => bail!("entry fields {other:?}"),
                    };
                    let Some(Reply::Bulk(id)) = e.pop() else {
                        bail!("an entry without an id")
                    };
                    out.push((id, fields));
                }
                other => bail!("a stream entry {other:?}"),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> anyhow::Result<Reply> {
        read_reply(&mut std::io::Cursor::new(bytes), 0)
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR x\r\n").unwrap(), Reply::Error("ERR x".into()));
        assert_eq!(parse(b":42\r\n").unwrap(), Reply::Int(42));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Reply::Nil);
        assert_eq!(
            parse(b"*2\r\n$3\r\nabc\r\n*1\r\n:1\r\n").unwrap(),
            Reply::Array(vec![bulk("abc"), Reply::Array(vec![Reply::Int(1)])])
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_hangs() {
        assert!(parse(b"").is_err(), "closed connection");
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$5\r\nab\r\n").is_err(), "short bulk string");
        assert!(parse(b"$99999999999\r\n").is_err(), "oversized bulk string");
        let deep = "*1\r\n".repeat(REPLY_DEPTH_MAX + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err(), "nesting limit");
    }

    #[test]
    fn xreadgroup_entries_are_extracted() {
        let reply = parse(
            b"*1\r\n*2\r\n$7\r\nlatency\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$6\r\nsentns\r\n$2\r\n17\r\n",
        )
        .unwrap();
        let Reply::Array(streams) = reply else {
            panic!()
        };
        let entries = stream_entries(streams).unwrap();
        assert_eq!(
            entries,
            vec![(b"1-0".to_vec(), vec![bulk("sentns"), bulk("17")])]
        );
    }
}
