//! Test support: the real `gearbox` binary on a free loopback port, and a small HTTP client.
//!
//! Every test gets its own data directory and port, so tests never see each other's data.
#![allow(dead_code)] // each test binary uses a different subset

pub mod pg;

use serde_json::Value;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const GEARBOX: &str = env!("CARGO_BIN_EXE_gearbox");
/// How long a server may take to answer /healthz after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `gearbox serve`.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The data directory.
    pub data_dir: PathBuf,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
    extra_args: Vec<String>,
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// Starts a server on `data_dir` and waits until /healthz answers.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_on(data_dir, free_port())
    }

    /// Starts a server on a given port (reuse the port across restarts).
    pub fn start_on(data_dir: &Path, port: u16) -> Server {
        Server::start_with(data_dir, port, &[])
    }

    /// Starts a server with extra `gearbox serve` options.
    pub fn start_with(data_dir: &Path, port: u16, extra_args: &[&str]) -> Server {
        let log = data_dir.with_extension(format!("{port}.log"));
        let mut s = Server {
            url: format!("http://127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            port,
            child: None,
            log,
            extra_args: extra_args.iter().map(|a| (*a).to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(GEARBOX)
            .args(["serve", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--http", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gearbox serve");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if ureq::get(&format!("{}/healthz", self.url)).call().is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "gearbox serve exited with {status} during start; log:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gearbox serve not healthy after {START_TIMEOUT:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns whether it exited with success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        c.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Kills (SIGKILL) and starts again on the same port and data directory.
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// GET; returns (status, JSON body or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        send(
            ureq::get(&format!("{}{path}", self.url))
                .config()
                .http_status_as_error(false)
                .build()
                .call(),
        )
    }

    /// Every event of a topic's partitions `0..partitions`, read from offset 0 (the `event`
    /// objects, in partition then offset order).
    pub fn all_events(&self, topic: &str, partitions: u32) -> Vec<Value> {
        let mut out = Vec::new();
        for p in 0..partitions {
            let mut offset = 0;
            loop {
                let (status, body) = self.get(&format!(
                    "/v1/topics/{topic}/partitions/{p}/events?offset={offset}&max=1000"
                ));
                assert_eq!(status, 200, "{body}");
                let events = body["events"].as_array().cloned().unwrap_or_default();
                if events.is_empty() {
                    break;
                }
                out.extend(events.into_iter().map(|e| e["event"].clone()));
                offset = body["next_offset"].as_u64().unwrap();
            }
        }
        out
    }

    /// `GET /metrics` as text (empty if it does not answer).
    pub fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .unwrap_or_default()
    }

    /// POST a JSON value.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/json", &[], body.to_string().as_bytes())
    }

    /// POST raw bytes with a content type and extra headers.
    pub fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let mut req = ureq::post(&format!("{}{path}", self.url))
            .config()
            .http_status_as_error(false)
            .build()
            .header("content-type", content_type);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(req.send(body))
    }

    /// PUT a JSON value.
    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        send(
            ureq::put(&format!("{}{path}", self.url))
                .config()
                .http_status_as_error(false)
                .build()
                .header("content-type", "application/json")
                .send(body.to_string().as_bytes()),
        )
    }

    /// DELETE.
    pub fn delete(&self, path: &str) -> (u16, Value) {
        send(
            ureq::delete(&format!("{}{path}", self.url))
                .config()
                .http_status_as_error(false)
                .build()
                .call(),
        )
    }
}

fn send(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut resp = r.expect("HTTP request failed at the transport level");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A structured CloudEvent JSON value.
pub fn event(id: &str, source: &str, data: Value) -> Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": source, "type": "test.event", "data": data})
}

/// Runs `tests/python/<script>` with the repository's `.venv` Python (made by `.ci/python-env`)
/// and `args`, echoes its output, and asserts it exited 0 (printing the server's log if not).
/// Returns its stdout.
pub fn run_python(script: &str, args: &[&str], server: &Server) -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run `.ci/python-env` first; it creates the virtualenv with the \
         pinned Python clients (tests/python/requirements.txt) the tests drive",
        python.display()
    );
    let script = repo.join("tests/python").join(script);
    let out = Command::new(&python)
        .arg(&script)
        .args(args)
        .current_dir(&repo)
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", python.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "{} {args:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        script.display(),
        out.status,
        server.log_text()
    );
    stdout
}
