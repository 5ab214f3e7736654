//! A real client: the Python `cloudevents` SDK from PyPI (pinned in
//! `tests/python/requirements.txt`, installed into `.venv` by `.ci/python-env`) sends events to
//! `gearbox serve` in HTTP structured and binary modes, and reads each back equal.
//!
//! The client is `tests/python/cloudevents_sdk_roundtrip.py`; this test starts the server,
//! creates the topic and runs it.

mod support;

use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use support::Server;

#[test]
fn python_cloudevents_sdk_round_trips_structured_and_binary_events() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let repo = repo.canonicalize().unwrap_or(repo);
    let python = repo.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} does not exist: run `.ci/python-env` first; it creates the virtualenv with the \
         Python CloudEvents SDK this test drives",
        python.display()
    );
    let script = repo.join("tests/python/cloudevents_sdk_roundtrip.py");

    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    let topic = "python-sdk";
    let (status, body) = s.post("/v1/topics", &json!({"name": topic, "partitions": 3}));
    assert_eq!(status, 201, "{body}");

    let out = Command::new(&python)
        .arg(&script)
        .args([s.url.as_str(), topic])
        .current_dir(&repo)
        .output()
        .unwrap_or_else(|e| panic!("running {} {}: {e}", python.display(), script.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success(),
        "{} exited with {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        script.display(),
        out.status,
        s.log_text()
    );
    assert!(
        stdout.contains("read back equal"),
        "no summary line in the output:\n{stdout}"
    );
}
