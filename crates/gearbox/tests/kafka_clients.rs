//! The Kafka client matrix: real Kafka clients against `gearbox serve --kafka`.
//!
//! - confluent-kafka 2.16 (librdkafka 2.16): topic creation, an idempotent producer, a consumer
//!   group that grows to three members and shrinks to two, commits, seeking by timestamp; the
//!   group's commits seen over HTTP as its cursor subscription.
//! - The seed 003 consumer loop (`enable.auto.commit: False`, commit after each event) stopped
//!   between processing and committing, then run again.
//! - kcat from Debian (librdkafka 2.0.2, installed by `.ci/kafka-env`): produce with keys,
//!   consume from the beginning, list metadata. An old librdkafka rejects a malformed
//!   ApiVersions answer, so this one guards the version negotiation.
//! - kafka-python 3.0: a producer, and a consumer that subscribes in a group and commits.
//! - CloudEvents across HTTP and Kafka: structured HTTP in, binary-mode Kafka record out, and
//!   back; plain records read over HTTP with the documented mapping.
//! - A SIGKILL loop under an idempotent producer: every acknowledged record is in the topic
//!   exactly once.
//!
//! The Python clients are `tests/kafka/*.py`, run with the repository's `.venv` (made by
//! `.ci/python-env`). Each exits non-zero with a `FAIL:` line when a check fails and prints one
//! `summary {json}` line otherwise; these tests start the server, run them and check their
//! summaries. Every test has its own server, data directory, ports and topics.

mod support;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::{Server, free_port};

/// How long one client script may run; each script also has its own, shorter deadline.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one kcat run may take.
const KCAT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `gearbox serve` with the Kafka listener on its own free port.
struct KafkaServer {
    server: Server,
    bootstrap: String,
    _dir: tempfile::TempDir,
}

impl KafkaServer {
    fn start() -> KafkaServer {
        let dir = tempfile::tempdir().unwrap();
        let bootstrap = format!("127.0.0.1:{}", free_port());
        let server = Server::start_with(
            &dir.path().join("data"),
            free_port(),
            &["--kafka", &bootstrap],
        );
        KafkaServer {
            server,
            bootstrap,
            _dir: dir,
        }
    }
}

fn repo() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    repo.canonicalize().unwrap_or(repo)
}

/// `tests/kafka/<script> args...` under the `.venv` Python, not yet waited for.
fn python(script: &str, args: &[&str]) -> Command {
    let repo = repo();
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run `.ci/python-env` first; it creates the virtualenv with the \
         pinned Kafka clients (tests/python/requirements.txt) these tests drive",
        python.display()
    );
    let mut cmd = Command::new(python);
    cmd.arg(repo.join("tests/kafka").join(script))
        .args(args)
        .current_dir(&repo)
        // No __pycache__ next to the scripts.
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Waits for `child` with a deadline, killing it on overrun; returns its output. Its piped
/// stdout (unless taken) and stderr are drained meanwhile, so a chatty child never blocks on a
/// full pipe.
fn wait_bounded(mut child: Child, what: &str, timeout: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap()),
                String::from_utf8_lossy(&stderr.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The `summary {json}` line of a script's stdout.
fn summary_of(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary "))
        .map(|s| serde_json::from_str(s).expect("the summary line is JSON"))
}

/// Runs a client script to its end, asserts that it succeeded, and returns its summary.
fn run_script(script: &str, args: &[&str], s: &KafkaServer) -> Value {
    let child = python(script, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {script}: {e}"));
    let out = wait_bounded(child, script, SCRIPT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "{script} {args:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        s.server.log_text()
    );
    summary_of(&stdout).unwrap_or_else(|| panic!("{script} printed no summary:\n{stdout}"))
}

/// Runs kcat with `args` (and `stdin`), asserts that it succeeded, and returns its stdout.
fn kcat(args: &[&str], stdin: &str, s: &KafkaServer) -> String {
    let mut child = Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat is not installed: run `.ci/kafka-env` first");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = wait_bounded(child, &format!("kcat {args:?}"), KCAT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kcat {args:?} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        s.server.log_text()
    );
    stdout
}

/// The committed positions of a group's cursor subscription on a topic, over HTTP.
fn subscription_positions(s: &KafkaServer, topic: &str, group: &str) -> Value {
    let (status, body) = s
        .server
        .get(&format!("/v1/topics/{topic}/subscriptions/{group}"));
    assert_eq!(status, 200, "the group's subscription over HTTP: {body}");
    assert_eq!(body["mode"], "cursor", "{body}");
    body["positions"].clone()
}

#[test]
fn confluent_kafka_idempotent_producer_group_rebalances_commits_and_seek_by_time() {
    let s = KafkaServer::start();
    let (topic, group) = ("ck-orders", "ck-group");
    let sum = run_script("confluent_group.py", &[&s.bootstrap, topic, group], &s);

    assert_eq!(sum["records"], 270, "{sum}");
    let phases = sum["assignments"].as_array().unwrap();
    let members: Vec<usize> = phases
        .iter()
        .map(|p| p.as_object().unwrap().len())
        .collect();
    assert_eq!(
        members,
        [2, 3, 2],
        "members per phase (two, m3 joined, m1 left): {sum}"
    );

    // The group's commits are its cursor subscription over HTTP: same offsets.
    let committed = sum["committed"].as_object().unwrap();
    assert_eq!(committed.len(), 3, "{sum}");
    let want: Vec<Value> = (0..3).map(|p| committed[&p.to_string()].clone()).collect();
    assert_eq!(
        subscription_positions(&s, topic, group),
        Value::Array(want),
        "the cursor subscription's positions are not the committed offsets {sum}"
    );
}

#[test]
fn seed_003_consumer_loop_resumes_after_its_last_commit() {
    let s = KafkaServer::start();
    let (topic, group) = ("order-events", "analytics-pipeline-v2");
    let (status, body) = s
        .server
        .post("/v1/topics", &json!({"name": topic, "partitions": 3}));
    assert_eq!(status, 201, "{body}");
    const EVENTS: usize = 60;
    const FIRST_RUN: usize = 25;
    run_script(
        "seed_consumer_loop.py",
        &["produce", &s.bootstrap, topic, &EVENTS.to_string()],
        &s,
    );

    let ids = |sum: &Value| -> Vec<String> {
        sum["processed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    // Run 1 stops after processing its 25th event and before committing it.
    let first = ids(&run_script(
        "seed_consumer_loop.py",
        &[
            "consume",
            &s.bootstrap,
            topic,
            group,
            &FIRST_RUN.to_string(),
        ],
        &s,
    ));
    assert_eq!(first.len(), FIRST_RUN);
    let uncommitted = first.last().unwrap().clone();

    // Run 2 processes the rest: exactly the events after the last commit, which are the one
    // processed but not committed, and every event run 1 never saw.
    let second_expected = EVENTS - FIRST_RUN + 1;
    let second = ids(&run_script(
        "seed_consumer_loop.py",
        &[
            "consume",
            &s.bootstrap,
            topic,
            group,
            &second_expected.to_string(),
        ],
        &s,
    ));
    let again: Vec<&String> = second.iter().filter(|id| first.contains(id)).collect();
    assert_eq!(
        again,
        [&uncommitted],
        "run 2 processed again events that run 1 committed (or skipped the uncommitted one)\n\
         run 1: {first:?}\nrun 2: {second:?}"
    );
    let mut all: Vec<String> = first.iter().chain(&second).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), EVENTS, "some events were never processed");

    // Run 2 also stopped before committing its last event: every other event is committed.
    let positions = subscription_positions(&s, topic, group);
    let committed: u64 = positions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .sum();
    assert_eq!(committed, EVENTS as u64 - 1, "positions {positions}");
}

#[test]
fn kcat_produces_with_keys_consumes_from_the_beginning_and_lists_metadata() {
    let s = KafkaServer::start();
    let topic = "kcat-lines";
    let lines: Vec<String> = (0..20).map(|i| format!("key-{i}:line {i}")).collect();
    let input = lines.join("\n") + "\n";
    // The topic does not exist yet: kcat's Metadata request creates it (one partition).
    kcat(&["-P", "-b", &s.bootstrap, "-t", topic, "-K:"], &input, &s);

    let out = kcat(
        &[
            "-C",
            "-b",
            &s.bootstrap,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k:%s\n",
        ],
        "",
        &s,
    );
    assert_eq!(out.lines().collect::<Vec<_>>(), lines, "kcat -C output");

    let meta = kcat(&["-L", "-b", &s.bootstrap], "", &s);
    let port = s.bootstrap.rsplit(':').next().unwrap();
    assert!(
        meta.contains(&format!("broker 0 at 127.0.0.1:{port}")),
        "kcat -L lists no broker 0 at the advertised address:\n{meta}"
    );
    assert!(
        meta.contains(&format!("topic \"{topic}\" with 1 partitions")),
        "kcat -L does not list the topic:\n{meta}"
    );
}

#[test]
fn kafka_python_producer_and_subscribed_group_consumer_commit() {
    let s = KafkaServer::start();
    let (topic, group) = ("kp-events", "kp-group");
    let sum = run_script(
        "kafka_python_group.py",
        &[&s.bootstrap, topic, group, "200"],
        &s,
    );
    assert_eq!(sum["records"], 200, "{sum}");
    let committed = sum["committed"].as_object().unwrap();
    let total: u64 = committed.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, 200, "{sum}");
    let want: Vec<Value> = (0..committed.len())
        .map(|p| committed[&p.to_string()].clone())
        .collect();
    assert_eq!(
        subscription_positions(&s, topic, group),
        Value::Array(want),
        "{sum}"
    );
}

#[test]
fn cloudevents_cross_between_http_and_kafka() {
    let s = KafkaServer::start();
    let topic = "ce-interop";
    let (status, body) = s
        .server
        .post("/v1/topics", &json!({"name": topic, "partitions": 2}));
    assert_eq!(status, 201, "{body}");
    let sum = run_script(
        "cloudevents_kafka.py",
        &[&s.server.url, &s.bootstrap, topic],
        &s,
    );
    assert_eq!(
        sum,
        json!({"http_to_kafka": 1, "kafka_to_http": 1, "plain_records": 2})
    );
}

/// Kills (SIGKILL) and restarts the server whenever the producer's acknowledged count passes
/// the next of `kill_at`, then waits for the script; returns its summary.
fn produce_through_kills(s: &mut KafkaServer, topic: &str, records: u32, kill_at: &[u64]) -> Value {
    let mut child = python(
        "idempotent_crash.py",
        &[&s.bootstrap, topic, &records.to_string()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut kills = kill_at.iter().peekable();
    while let Some(&&at) = kills.peek() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the producer stopped reporting before {at} acks; log:\n{}",
                    s.server.log_text()
                )
            });
        let acked = line
            .strip_prefix("acked ")
            .and_then(|n| n.parse::<u64>().ok());
        if acked.is_some_and(|n| n >= at) {
            s.server.restart_after_kill9();
            kills.next();
        }
    }
    let out = wait_bounded(child, "idempotent_crash.py", SCRIPT_TIMEOUT);
    let stdout = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "idempotent_crash.py exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        s.server.log_text()
    );
    summary_of(&stdout).unwrap_or_else(|| panic!("no summary:\n{stdout}"))
}

#[test]
fn idempotent_producer_through_kill9_keeps_every_acknowledged_record_once() {
    let mut s = KafkaServer::start();
    const RECORDS: u32 = 1500;
    for round in 0..2 {
        let topic = format!("crash-{round}");
        let sum = produce_through_kills(&mut s, &topic, RECORDS, &[300, 900]);
        println!("round {round}: {sum}");
        // The script checked that every acknowledged record is present exactly once; here:
        // the kills did not fail the producer outright, and what is present adds up.
        let acked = sum["acked"].as_u64().unwrap();
        let failed = sum["failed"].as_u64().unwrap();
        assert_eq!(acked + failed, u64::from(RECORDS), "{sum}");
        assert!(acked >= 900, "most records should be acknowledged: {sum}");
        assert_eq!(
            sum["present"].as_u64().unwrap(),
            acked + sum["failed_present"].as_u64().unwrap(),
            "{sum}"
        );
    }
}
