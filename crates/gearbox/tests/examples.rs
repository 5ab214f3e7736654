//! Every config in `examples/` passes `gearbox validate` and `gearbox test`, run as a user would.

mod support;

use std::process::Command;

#[test]
fn every_example_validates_and_its_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "an example per connector: {files:?}");
    let mut tests_run = 0;
    for file in &files {
        for verb in ["validate", "test"] {
            let out = Command::new(support::GEARBOX)
                .args([verb, "-c"])
                .arg(file)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "gearbox {verb} -c {}:\n{stdout}\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            if verb == "test" {
                let line = stdout.lines().last().unwrap_or_default();
                let passed: usize = line.split(' ').next().unwrap().parse().unwrap();
                assert!(passed >= 1, "{}: no embedded tests ran", file.display());
                tests_run += passed;
            }
        }
    }
    eprintln!("{} examples, {tests_run} embedded tests", files.len());
}

#[test]
fn validate_reports_every_problem_with_its_path_and_test_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "topics: [{name: t}]\npipelines:\n  - name: a\n    source: {webhook: {path: /x, scheme: github, secrets: [\"${env:S}\"], source: s}}\n    to: nope\n  - name: b\n    from: t\n    sink: {http: {url: \"ftp://x\"}}\n",
    )
    .unwrap();
    let out = Command::new(support::GEARBOX)
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "pipelines[0].source.webhook.path",
        "pipelines[0].to",
        "pipelines[1].sink.http.url",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }

    let failing = dir.path().join("failing.yaml");
    std::fs::write(
        &failing,
        "topics: [{name: t}]\npipelines:\n  - name: a\n    source: {webhook: {path: /hooks/a, scheme: github, secrets: [\"${env:S}\"], source: s}}\n    to: t\n    transforms: ['.type = \"changed\"']\n    tests:\n      - name: wrong expectation\n        input: {specversion: \"1.0\", id: \"1\", source: s, type: t}\n        expect: [{type: unchanged}]\n      - name: right expectation\n        input: {specversion: \"1.0\", id: \"1\", source: s, type: t}\n        expect: [{type: changed, topic: t}]\n",
    )
    .unwrap();
    let out = Command::new(support::GEARBOX)
        .args(["test", "-c"])
        .arg(&failing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL  a / wrong expectation: output 0 differs at `type`"),
        "{stdout}"
    );
    assert!(stdout.contains("ok    a / right expectation"), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}
