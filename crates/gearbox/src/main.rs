//! `gearbox`: one binary that integrates sensors, SaaS tools, services and databases through a
//! durable event log.
//!
//! The command line is one tree of verbs, `gearbox <command> [<subcommand>] [options]`, parsed
//! by clap from the types below. Each top-level verb is a variant of [`Command`] and lives in
//! its own module.

mod bench;
mod client;
mod config;
mod demo;
mod kafka_metrics;
mod pipelines;
mod schemas;
mod serve;

use clap::{Parser, Subcommand};

/// The server allocates and frees many small strings per event (headers, attributes); glibc's
/// malloc spent about a quarter of ingest CPU on them, mimalloc much less.
///
/// Wrapped in the Kafka listener's guard against requests that declare absurd array lengths
/// (`gearbox_kafka::alloc`).
#[global_allocator]
static GLOBAL: gearbox_kafka::alloc::ReserveHuge<mimalloc::MiMalloc> =
    gearbox_kafka::alloc::ReserveHuge(mimalloc::MiMalloc);

/// Command-line entry point.
#[derive(Debug, Parser)]
#[command(name = "gearbox", version, propagate_version = true)]
#[command(about = "Gearbox: an event-integration hub built on an embedded durable log")]
struct Cli {
    #[command(flatten)]
    server: client::ServerArg,
    #[command(subcommand)]
    command: Command,
}

/// The top-level verbs.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: the HTTP API over the embedded log (ready when GET /healthz answers 200).
    Serve(serve::ServeArgs),
    /// Run the server with a built-in config and simulated gear, so the dashboard at / comes
    /// alive on the first run.
    Demo(demo::DemoArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topics(client::TopicsCommand),
    /// Publish JSON lines or CloudEvents from stdin or a file.
    Produce(client::ProduceArgs),
    /// Consume through a subscription, acking (queue) or committing (cursor) as it prints.
    Consume(client::ConsumeArgs),
    /// Read a topic from an offset or a time, without a subscription; or (`--into`) make a sink
    /// pipeline re-read its topic from there.
    Replay(client::ReplayArgs),
    /// Show a scheduled pipeline's schedule and run history.
    Runs(client::RunsArgs),
    /// Run a scheduled (batch) pipeline now.
    Run(client::RunArgs),
    /// Run a scheduled (batch) pipeline now from an older watermark.
    Backfill(client::BackfillArgs),
    /// Inspect and redrive dead-lettered events.
    #[command(subcommand)]
    Dlq(client::DlqCommand),
    /// Show an event's path: every hop from ingest to delivery, retries, DLQ and redrive
    /// (`--correlation`: every event of a cascade).
    Trace(client::TraceArgs),
    /// Register, list, show and check schemas in the registry (`/registry`).
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// Check a gearbox.yaml, reporting every problem with its path in the file.
    Validate(pipelines::ValidateArgs),
    /// Run the tests embedded in a gearbox.yaml's pipelines.
    Test(pipelines::TestArgs),
    /// Measure Gearbox side by side with the disk and with peers (NATS JetStream, Redis
    /// Streams), in one run and on one workload; or, with a subcommand, one detailed benchmark.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (plus the server's hint); no backtrace for an operating error.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            init_tracing("info");
            serve::run(args)
        }
        Command::Demo(args) => {
            init_tracing("warn");
            demo::run(args)
        }
        Command::Topics(command) => client::topics(&cli.server.server, command),
        Command::Produce(args) => client::produce(&cli.server.server, args),
        Command::Consume(args) => client::consume(&cli.server.server, args),
        Command::Replay(args) => client::replay(&cli.server.server, args),
        Command::Runs(args) => client::runs(&cli.server.server, args),
        Command::Run(args) => client::run_now(&cli.server.server, &args.pipeline, None),
        Command::Backfill(args) => {
            client::run_now(&cli.server.server, &args.pipeline, Some(&args.from))
        }
        Command::Dlq(command) => client::dlq(&cli.server.server, command),
        Command::Trace(args) => client::trace(&cli.server.server, args),
        Command::Schemas(command) => schemas::run(&cli.server.server, command),
        Command::Validate(args) => pipelines::validate(args),
        Command::Test(args) => pipelines::test(args),
        Command::Bench(args) => {
            // Only what goes wrong: the bench prints its own results.
            init_tracing("warn");
            bench::run(args)
        }
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `level`).
fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    /// clap checks the command tree (unique argument names, valid defaults) only when a
    /// command is parsed; this checks every verb at once.
    #[test]
    fn the_command_tree_is_valid() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
