//! The dashboard in a real headless browser: starts `gearbox demo` (the real binary) and runs
//! `tests/browser/dashboard.mjs` (playwright-core driving Debian's `chromium`) against it. The
//! script checks the pipeline cards, a card changing state on its own, the topic browser, a
//! redrive from the DLQ browser, the lineage search, and that no page logs an error or a CSP
//! violation. With `SCREENSHOT_DIR` set it saves the views there (`docs/img/` in the repo).
//!
//! Chromium, Node and the script's `node_modules` are installed by `.ci/browser-env`; when one
//! is missing this test fails and says so: it never skips.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{GEARBOX, START_TIMEOUT, free_port};

/// The longest the browser script may run (its own waits are bounded well below this).
const BROWSER_RUN_TIMEOUT: Duration = Duration::from_secs(480);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Kills the demo when the test ends, passed or not.
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn start_demo(dir: &Path, port: u16) -> (Demo, String) {
    let log = dir.join("demo.log");
    let child = Command::new(GEARBOX)
        .args(["demo", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--http", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .expect("spawn gearbox demo");
    let mut demo = Demo { child, log };
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + START_TIMEOUT;
    while ureq::get(&format!("{url}/healthz")).call().is_err() {
        if let Some(status) = demo.child.try_wait().unwrap() {
            panic!(
                "gearbox demo exited with {status}; log:\n{}",
                demo.log_text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "gearbox demo not healthy after {START_TIMEOUT:?}; log:\n{}",
            demo.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (demo, url)
}

/// The browser, or a failure that says how to install it.
fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let works = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "{path} is missing or does not run: install it with .ci/browser-env (Debian's chromium)"
    );
    path
}

fn browser_deps_present() {
    let module = repo_root().join("tests/browser/node_modules/playwright-core/package.json");
    assert!(
        module.exists(),
        "{} is missing: run .ci/browser-env (npm ci --prefix tests/browser)",
        module.display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is missing: the browser test needs Node 20 or newer"
    );
}

#[test]
fn the_dashboard_works_in_a_headless_browser() {
    let chromium = chromium();
    browser_deps_present();
    let dir = tempfile::tempdir().unwrap();
    let (mut demo, url) = start_demo(dir.path(), free_port());
    let out_path = dir.path().join("browser.out");
    let mut script = Command::new("node")
        .arg(repo_root().join("tests/browser/dashboard.mjs"))
        .arg(&url)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::from(
            std::fs::File::options()
                .append(true)
                .create(true)
                .open(&out_path)
                .unwrap(),
        ))
        .spawn()
        .expect("spawn node");
    let deadline = Instant::now() + BROWSER_RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = script.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = script.kill();
            let _ = script.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let demo_exited = demo.child.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser script failed ({status:?}; demo exited: {demo_exited:?}):\n{output}\n--- demo log:\n{}",
        demo.log_text()
    );
    assert!(output.contains("dashboard browser test passed"), "{output}");
    println!("{output}");
    secret_never_shown(&demo, &dir.path().join("data"), &url);
}

/// The demo's random webhook secret is a `${file:...}` reference: it must not appear in the
/// demo's output, on the dashboard or in the pipelines API.
fn secret_never_shown(demo: &Demo, data_dir: &Path, url: &str) {
    let secret = std::fs::read_to_string(data_dir.join("demo/webhook-secret")).unwrap();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret:?}"
    );
    let key = secret.trim_start_matches("whsec_");
    let log = demo.log_text();
    assert!(
        log.contains("Gearbox demo is running: open http://"),
        "{log}"
    );
    let mut seen = vec![("the demo's output", log)];
    for path in ["/", "/ui/fragments/overview", "/v1/pipelines"] {
        let body = ureq::get(&format!("{url}{path}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        seen.push((path, body));
    }
    for (what, text) in seen {
        assert!(!text.contains(key), "the webhook secret appears in {what}");
    }
}
