//! `gearbox schemas`: the schema registry from the command line, over its Confluent-compatible
//! REST API under `/registry`. Subjects are `<topic>-<event type>`.

use crate::client::Client;
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// `gearbox schemas ...`
#[derive(Debug, clap::Subcommand)]
pub enum SchemasCommand {
    /// Register a schema under a subject (prints its id and version; the same schema again
    /// returns the same id). Refused if it breaks the subject's compatibility level.
    Register {
        /// The subject: `<topic>-<event type>`.
        subject: String,
        /// The schema file.
        #[arg(long)]
        file: PathBuf,
        /// `json` or `avro` (default: `avro` for `.avsc` files, else `json`).
        #[arg(long = "type")]
        ty: Option<String>,
    },
    /// List subjects, or one subject's versions.
    List {
        /// A subject.
        subject: Option<String>,
    },
    /// Show one version of a subject.
    Show {
        /// The subject.
        subject: String,
        /// A version number, or `latest`.
        #[arg(value_name = "VERSION", default_value = "latest")]
        at: String,
    },
    /// Check a schema against a subject's compatibility level without registering it; exits
    /// nonzero, listing what breaks, if it is incompatible.
    Check {
        /// The subject.
        subject: String,
        /// The schema file.
        #[arg(long)]
        file: PathBuf,
        /// `json` or `avro` (default: from the file's extension).
        #[arg(long = "type")]
        ty: Option<String>,
        /// Check against this version only (default: every version the level asks for).
        #[arg(long, value_name = "VERSION")]
        against: Option<String>,
    },
}

fn schema_body(file: &Path, ty: Option<&str>) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ty = match ty.map(str::to_ascii_lowercase).as_deref() {
        Some("json") => "JSON",
        Some("avro") => "AVRO",
        Some(other) => bail!("--type {other}: use json or avro"),
        None if file.extension().is_some_and(|e| e == "avsc") => "AVRO",
        None => "JSON",
    };
    Ok(json!({"schema": text, "schemaType": ty}))
}

fn post(c: &Client, path: &str, body: &Value) -> anyhow::Result<Value> {
    c.send(
        "POST",
        path,
        "application/vnd.schemaregistry.v1+json",
        body.to_string().as_bytes(),
    )
}

/// Runs a `schemas` command against `server`.
///
/// # Errors
/// Transport failures, error replies, and an incompatible schema under `check`.
pub fn run(server: &str, command: &SchemasCommand) -> anyhow::Result<()> {
    let c = Client::new(server);
    match command {
        SchemasCommand::Register { subject, file, ty } => {
            let body = schema_body(file, ty.as_deref())?;
            let reply = post(&c, &format!("/registry/subjects/{subject}/versions"), &body)?;
            let id = reply["id"].clone();
            let found = post(&c, &format!("/registry/subjects/{subject}"), &body)?;
            println!(
                "{}",
                json!({"subject": subject, "id": id, "version": found["version"]})
            );
            Ok(())
        }
        SchemasCommand::List { subject: None } => {
            for s in c
                .get("/registry/subjects")?
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{}", s.as_str().unwrap_or_default());
            }
            Ok(())
        }
        SchemasCommand::List {
            subject: Some(subject),
        } => {
            for v in c
                .get(&format!("/registry/subjects/{subject}/versions"))?
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{v}");
            }
            Ok(())
        }
        SchemasCommand::Show { subject, at } => {
            let mut v = c.get(&format!("/registry/subjects/{subject}/versions/{at}"))?;
            // Show the schema as JSON rather than as an escaped string.
            if let Some(parsed) = v["schema"]
                .as_str()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
            {
                v["schema"] = parsed;
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        SchemasCommand::Check {
            subject,
            file,
            ty,
            against,
        } => {
            let body = schema_body(file, ty.as_deref())?;
            let path = match against {
                Some(v) => format!("/registry/compatibility/subjects/{subject}/versions/{v}"),
                None => format!("/registry/compatibility/subjects/{subject}/versions"),
            };
            let reply = post(&c, &format!("{path}?verbose=true"), &body)?;
            if reply["is_compatible"] == json!(true) {
                println!("compatible");
                return Ok(());
            }
            for m in reply["messages"].as_array().into_iter().flatten() {
                println!("{}", m.as_str().unwrap_or_default());
            }
            bail!("incompatible with {subject}")
        }
    }
}
