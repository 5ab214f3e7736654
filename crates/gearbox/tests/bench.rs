//! `gearbox bench` as CI runs it: the `--quick` smoke run must give every target a figure or a
//! reasoned skip. It checks that the suite works, not its figures (timing is never asserted).

mod support;

use serde_json::Value;
use std::process::Command;
use support::GEARBOX;

/// Runs `gearbox bench args...`; returns (success, stdout as JSON or null, stderr).
fn bench(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(GEARBOX)
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == name)
        .unwrap_or_else(|| panic!("no result for {name} in {report}"))
}

fn assert_measured(r: &Value, with_e2e: bool) {
    for field in ["events_per_s", "mb_per_s", "p50_ms", "p99_ms", "p999_ms"] {
        let v = r[field].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v > 0.0, "{field} of {r}");
    }
    assert!(r["p50_ms"].as_f64() <= r["p999_ms"].as_f64(), "{r}");
    if with_e2e {
        let p99 = r["e2e_p99_ms"].as_f64().unwrap_or(f64::NAN);
        assert!(p99.is_finite() && p99 > 0.0, "e2e_p99_ms of {r}");
        assert!(r["e2e_sent"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(
            r["e2e_received"], r["e2e_sent"],
            "every event consumed: {r}"
        );
    }
}

#[test]
fn the_quick_run_measures_every_target_here_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("bench.svg");
    let (ok, report, stderr) = bench(&[
        "--quick",
        "--peers",
        "--json",
        "--chart",
        chart.to_str().unwrap(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "bench failed: {stderr}\n{report}");
    for field in ["disk_fdatasync_mb_per_s", "disk_fsync_4k_p50_ms"] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    assert_eq!(report["workload"]["events"], 20_000);
    // The embedded targets and the peers that run on this machine (.ci/services starts NATS;
    // the bench starts its own redis-server) are measured, with produce-to-consume latency.
    for name in [
        "gearbox-log",
        "gearbox-http",
        "gearbox-kafka",
        "nats-jetstream-default",
        "redis-streams",
    ] {
        let r = target(&report, name);
        assert_measured(r, true);
        assert_eq!(r["events"], 20_000, "{name} acknowledged the whole budget");
    }
    for name in ["nats-jetstream-default-bare", "redis-streams-bare"] {
        assert_measured(target(&report, name), false);
    }
    // The Kafka ingest read back with Fetch: a read row, every event.
    let fetch = target(&report, "gearbox-kafka-fetch");
    assert_measured(fetch, false);
    assert_eq!(fetch["kind"], "read", "{fetch}");
    assert_eq!(fetch["events"], 20_000, "{fetch}");
    // Not available here: with its reason.
    let always = target(&report, "nats-jetstream");
    if always["events_per_s"].is_null() {
        assert!(
            always["skipped"].as_str().unwrap().contains("2.10"),
            "{always}"
        );
    }
    assert!(
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["error"].is_null()),
        "{report}"
    );
    // Each product target of product.md §7 is assessed.
    assert_eq!(
        report["product_targets"].as_array().unwrap().len(),
        4,
        "{report}"
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("redis-streams") && svg.contains("skipped"));
    // Nothing is left behind in the directory but the chart.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn unreachable_peers_are_skipped_with_the_reason() {
    let (ok, report, stderr) = bench(&[
        "--peers",
        "--json",
        "--events",
        "2000",
        "--e2e-seconds",
        "1",
        "--nats",
        "127.0.0.1:1",
        "--redis-server",
        "/nonexistent/redis-server",
        "--nats-server",
        "/nonexistent/nats-server",
    ]);
    assert!(ok, "{stderr}");
    let nats = target(&report, "nats-jetstream-default")["skipped"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(nats.contains("127.0.0.1:1"), "{nats}");
    for name in ["nats-jetstream", "redis-streams"] {
        let why = target(&report, name)["skipped"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(why.contains("/nonexistent/"), "{name}: {why}");
    }
    // Ratios and targets against a skipped peer are not invented.
    assert_eq!(
        report["product_targets"].as_array().unwrap().len(),
        2,
        "{report}"
    );
    assert_measured(target(&report, "gearbox-http"), true);
}

#[test]
fn bad_options_are_refused_by_name() {
    for (args, name) in [
        (&["--batch", "0"][..], "--batch"),
        (&["--events", "0"][..], "--events"),
        (&["--batch", "10001"][..], "--batch"),
        (&["--concurrency", "65"][..], "--concurrency"),
        (&["--e2e-seconds", "0"][..], "--e2e-seconds"),
    ] {
        let (ok, _, stderr) = bench(args);
        assert!(!ok, "{args:?} was accepted");
        assert!(stderr.contains(name), "{args:?}: {stderr}");
    }
}
