//! `gearbox validate` and `gearbox test` (config tooling), and starting the configured pipelines
//! in `gearbox serve`.
//!
//! `gearbox test` runs each pipeline's embedded tests through the same code the running pipeline
//! uses ([`gearbox_connect::runtime::process`] for sources, the transform chain for sinks), with no
//! server, no gear and no secrets resolved, in the manner of Benthos's config tests and Vector's
//! unit tests.

use crate::config::{Config, Pipeline, TestDecl};
use gearbox_connect::backbone::Backbone;
use gearbox_connect::runtime::{Output, Runtime, process};
use gearbox_connectors::webhook::WebhookEndpoint;
use serde_json::Value;
use std::path::PathBuf;

/// Options of `gearbox validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The config file.
    #[arg(short, long)]
    pub config: PathBuf,
}

/// Options of `gearbox test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The config file.
    #[arg(short, long)]
    pub config: PathBuf,
}

/// Checks a config file, printing every problem with its path.
///
/// # Errors
/// The file has problems (all printed first).
pub fn validate(args: &ValidateArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    println!(
        "{}: ok ({} topics, {} pipelines, {} tests)",
        args.config.display(),
        config.topics.len(),
        config.pipelines.len(),
        config
            .pipelines
            .iter()
            .map(|p| tests(p).len())
            .sum::<usize>()
    );
    Ok(())
}

fn tests(p: &Pipeline) -> &[TestDecl] {
    match p {
        Pipeline::Source { tests, .. } | Pipeline::Sink { tests, .. } => tests,
    }
}

/// Runs the tests embedded in a config file.
///
/// # Errors
/// The file has problems, or a test failed (every result printed first).
pub fn test(args: &TestArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let mut failed = 0;
    let mut passed = 0;
    for p in &config.pipelines {
        for t in tests(p) {
            match run_test(p, t) {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {} / {}", p.name(), t.name);
                }
                Err(why) => {
                    failed += 1;
                    println!("FAIL  {} / {}: {why}", p.name(), t.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    anyhow::ensure!(failed == 0, "{failed} test(s) failed");
    Ok(())
}

/// What a test input became: outputs (with `topic` for sources) or a dead letter's error.
fn outcome(p: &Pipeline, input: &Value) -> Result<Vec<Value>, String> {
    match p {
        Pipeline::Source { pipeline, .. } => {
            let mut out = Vec::new();
            for o in process(pipeline, input.clone()) {
                match o {
                    Output::Event { topic, event } => {
                        let mut v = event.to_json();
                        v["topic"] = Value::String(topic);
                        out.push(v);
                    }
                    Output::Dead { error, .. } => return Err(error),
                }
            }
            Ok(out)
        }
        Pipeline::Sink { pipeline, .. } => pipeline
            .common
            .transforms
            .run(input.clone())
            .map_err(|e| format!("transform: {e}")),
    }
}

fn run_test(p: &Pipeline, t: &TestDecl) -> Result<(), String> {
    let got = outcome(p, &t.input);
    match (&t.expect, &t.expect_dlq, got) {
        (Some(expect), _, Ok(got)) => {
            if expect.len() != got.len() {
                return Err(format!(
                    "expected {} output(s), got {}: {}",
                    expect.len(),
                    got.len(),
                    Value::Array(got)
                ));
            }
            for (i, (e, g)) in expect.iter().zip(&got).enumerate() {
                if let Some(path) = mismatch(e, g, String::new()) {
                    return Err(format!("output {i} differs at `{path}`: got {g}"));
                }
            }
            Ok(())
        }
        (Some(_), _, Err(error)) => Err(format!("expected outputs, got a dead letter: {error}")),
        (None, Some(want), Err(error)) if error.contains(want.as_str()) => Ok(()),
        (None, Some(want), Err(error)) => Err(format!(
            "expected a dead letter containing {want:?}, got {error:?}"
        )),
        (None, Some(_), Ok(got)) => Err(format!(
            "expected a dead letter, got outputs: {}",
            Value::Array(got)
        )),
        (None, None, _) => Err("the test has neither `expect` nor `expect_dlq`".into()),
    }
}

/// Where `expect` is not a subset of `got`, if anywhere: objects match key by key (extra keys in
/// `got` are fine), everything else must be equal.
fn mismatch(expect: &Value, got: &Value, path: String) -> Option<String> {
    match (expect, got) {
        (Value::Object(e), Value::Object(g)) => e.iter().find_map(|(k, ev)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            match g.get(k) {
                Some(gv) => mismatch(ev, gv, p),
                None => Some(p),
            }
        }),
        // 68 and 68.0 are the same JSON number to a reader; jq arithmetic yields floats.
        (Value::Number(e), Value::Number(g)) if e.as_f64() == g.as_f64() => None,
        _ if expect == got => None,
        _ => Some(if path.is_empty() { ".".into() } else { path }),
    }
}

/// Starts every configured pipeline; returns the webhook endpoints to mount.
///
/// # Errors
/// A connector that cannot be built (a secret that does not resolve), naming the pipeline and
/// field. Pipelines started before it keep running until the runtime is shut down.
pub fn start<B: Backbone>(
    config: &Config,
    runtime: &mut Runtime<B>,
) -> anyhow::Result<Vec<WebhookEndpoint>> {
    let mut hooks = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        match p {
            Pipeline::Source { pipeline, decl, .. } => {
                let started =
                    gearbox_connectors::registry::start_source(runtime, pipeline.clone(), decl)
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "pipelines[{i}] ({}): source.{}: {e}",
                                p.name(),
                                decl.kind()
                            )
                        })?;
                hooks.extend(started.webhook);
            }
            Pipeline::Sink { pipeline, decl, .. } => {
                gearbox_connectors::registry::start_sink(runtime, pipeline.clone(), decl).map_err(
                    |e| anyhow::anyhow!("pipelines[{i}] ({}): sink.{}: {e}", p.name(), decl.kind()),
                )?;
            }
        }
        tracing::info!(pipeline = %p.name(), "pipeline started");
    }
    Ok(hooks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_matching_names_the_first_difference() {
        let got = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1, 2]});
        assert_eq!(
            mismatch(&serde_json::json!({"a": {"b": 1}}), &got, String::new()),
            None
        );
        assert_eq!(
            mismatch(&serde_json::json!({"a": {"b": 2}}), &got, String::new()),
            Some("a.b".into())
        );
        assert_eq!(
            mismatch(&serde_json::json!({"x": 1}), &got, String::new()),
            Some("x".into())
        );
        assert_eq!(
            mismatch(&serde_json::json!({"d": [1]}), &got, String::new()),
            Some("d".into())
        );
        assert_eq!(
            mismatch(
                &serde_json::json!(68),
                &serde_json::json!(68.0),
                String::new()
            ),
            None
        );
    }
}
