//! `gearbox serve`: the server. Opens (and recovers) the data directory, applies the config
//! file (topics, then pipelines), serves the HTTP API, and on SIGTERM or Ctrl-C drains in-flight
//! requests, ends long polls, stops the pipelines within [`PIPELINE_SHUTDOWN_MS`] (each finishes
//! the batch in hand), and syncs every partition before exiting.

use crate::config::Config;
use anyhow::Context as _;
use gearbox_api::{AppState, router};
use gearbox_connect::backbone::Embedded;
use gearbox_connect::metrics::Registry;
use gearbox_connect::runtime::Runtime;
use gearbox_core::broker::{Broker, BrokerConfig, BrokerError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// How long pipelines get to finish their batches at shutdown.
pub const PIPELINE_SHUTDOWN_MS: u64 = 10_000;

/// Options of `gearbox serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the log and the server's state live.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// The HTTP listener.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub http: SocketAddr,
    /// A gearbox.yaml declaring topics (created at start if missing) and pipelines.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Most publish requests handled at once; more are answered 429 overloaded.
    #[arg(long, default_value_t = gearbox_api::PUBLISH_IN_FLIGHT_MAX_DEFAULT)]
    pub publish_in_flight_max: usize,
    /// Serve the Kafka protocol here (e.g. 127.0.0.1:9092); overrides the config's
    /// `kafka.listen` and enables the listener.
    #[arg(long, value_name = "ADDR")]
    pub kafka: Option<SocketAddr>,
    /// The `host:port` Kafka clients are told to connect to (default: the listen address).
    #[arg(long, value_name = "HOST:PORT", requires = "kafka")]
    pub kafka_advertised: Option<String>,
}

/// Splits `host:port`.
pub(crate) fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_string(), port))
}

/// The Kafka listener's address and settings, if it is enabled by the flags or the config.
fn kafka_settings(
    args: &ServeArgs,
    config: Option<&Config>,
) -> anyhow::Result<Option<(SocketAddr, gearbox_kafka::KafkaConfig)>> {
    let decl = config.and_then(|c| c.kafka.as_ref());
    let listen: SocketAddr = match (args.kafka, decl) {
        (Some(addr), _) => addr,
        (None, Some(d)) if d.enabled.unwrap_or(true) => d
            .listen
            .as_deref()
            .unwrap_or(crate::config::KAFKA_LISTEN_DEFAULT)
            .parse()
            .context("kafka.listen must be an IP address and port")?,
        _ => return Ok(None),
    };
    let advertised = args
        .kafka_advertised
        .clone()
        .or_else(|| decl.and_then(|d| d.advertised.clone()));
    let (host, port) = match advertised {
        Some(a) => host_port(&a).with_context(|| format!("advertised address {a:?}"))?,
        None => (listen.ip().to_string(), listen.port()),
    };
    let mut k = gearbox_kafka::KafkaConfig::new(host, port);
    if let Some(d) = decl {
        k.auto_create_topics = d.auto_create_topics.unwrap_or(k.auto_create_topics);
        k.default_partitions = d.default_partitions.unwrap_or(k.default_partitions);
    }
    Ok(Some((listen, k)))
}

/// Runs the server until a signal.
///
/// # Errors
/// A bad config, a data directory that cannot be opened, or a listener that cannot bind.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config.as_deref().map(Config::load).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args, config, |_| {}))
}

/// Serves until a signal; `on_ready` gets the bound address once requests are accepted (the
/// demo starts its simulated gear there).
pub(crate) async fn serve(
    args: &ServeArgs,
    config: Option<Config>,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let data_dir = args.data_dir.clone();
    let mut broker_config = BrokerConfig::durable();
    if let Some(c) = &config {
        broker_config.lineage = c.lineage.config();
    }
    let broker = tokio::task::spawn_blocking(move || Broker::open(&data_dir, broker_config))
        .await?
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    let broker = Arc::new(broker);
    for warning in broker.recovery_warnings() {
        tracing::warn!(target: "gearbox::recovery", "{warning}");
    }
    if let Some(config) = &config {
        for t in &config.topics {
            match broker.create_topic(&t.name, t.partitions, t.retention()) {
                Ok(_) => {
                    tracing::info!(topic = %t.name, partitions = t.partitions, "created topic from config")
                }
                Err(BrokerError::TopicExists(_)) => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating topic {} from the config", t.name));
                }
            }
        }
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let registry = Arc::new(Registry::default());
    let mut runtime = Runtime::new(Arc::new(Embedded::new(broker.clone())), registry.clone());
    let hooks = match &config {
        Some(config) => crate::pipelines::start(config, &mut runtime)?,
        None => Vec::new(),
    };
    let kafka = match kafka_settings(args, config.as_ref())? {
        None => None,
        Some((addr, settings)) => {
            let kafka_listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the Kafka listener {addr}"))?;
            let advertised = format!("{}:{}", settings.advertised_host, settings.advertised_port);
            let state = gearbox_kafka::Kafka::new(broker.clone(), settings)
                .context("starting the Kafka listener")?;
            tracing::info!(kafka = %kafka_listener.local_addr()?, %advertised, "serving the Kafka protocol");
            Some((kafka_listener, state))
        }
    };
    let collectors: Vec<Box<dyn prometheus_client::collector::Collector>> = kafka
        .iter()
        .map(|(_, state)| {
            Box::new(crate::kafka_metrics::KafkaCollector(state.clone()))
                as Box<dyn prometheus_client::collector::Collector>
        })
        .collect();
    let warehouses = Arc::new(gearbox_api::reconcile::Warehouses::new(
        config
            .as_ref()
            .map(|c| {
                c.warehouses()
                    .into_iter()
                    .map(|(name, (topic, path))| {
                        (name, gearbox_api::reconcile::Warehouse { topic, path })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    ));
    if let Some(config) = &config {
        for decl in &config.reconcile {
            tokio::spawn(scheduled_reconcile(
                broker.clone(),
                warehouses.clone(),
                decl.clone(),
                shutdown_tx.subscribe(),
            ));
        }
    }
    let app = router(AppState::with_collectors(
        broker.clone(),
        shutdown_rx,
        args.publish_in_flight_max,
        registry,
        hooks,
        collectors,
        warehouses,
    ));
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding the HTTP listener {}", args.http))?;
    let kafka = kafka.map(|(kafka_listener, state)| {
        let mut stop = shutdown_tx.subscribe();
        tokio::spawn(gearbox_kafka::server::serve(
            kafka_listener,
            state,
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ))
    });
    tracing::info!(
        http = %listener.local_addr()?,
        data_dir = %args.data_dir.display(),
        recovery_ms = started.elapsed().as_millis() as u64,
        "gearbox is ready"
    );
    on_ready(listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: draining requests");
            let _ = shutdown_tx.send(true);
        })
        .await?;
    if let Some(kafka) = kafka {
        // The listener stopped accepting with the signal; its connections end with the runtime.
        let _ = kafka.await;
    }
    let report = runtime
        .shutdown(std::time::Duration::from_millis(PIPELINE_SHUTDOWN_MS))
        .await;
    if report.aborted > 0 {
        tracing::warn!(
            aborted = report.aborted,
            "pipelines did not finish within the deadline; their batches will be read again"
        );
    }
    let closing = broker.clone();
    tokio::task::spawn_blocking(move || closing.close())
        .await?
        .context("syncing the log at shutdown")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// Runs one `reconcile:` entry on its schedule until shutdown; each result updates the
/// `gearbox_reconcile_*` metrics, and unexplained differences are logged as errors.
async fn scheduled_reconcile(
    broker: Arc<Broker>,
    warehouses: Arc<gearbox_api::reconcile::Warehouses>,
    decl: crate::config::ReconcileDecl,
    mut stop: watch::Receiver<bool>,
) {
    let schedule = match gearbox_connect::schedule::Schedule::new(&decl.schedule) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(pipeline = %decl.pipeline, error = %e, "reconcile schedule");
            return;
        }
    };
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let Some(next) = schedule.next_after(now) else {
            return;
        };
        let wait = std::time::Duration::from_millis((next - now).max(0) as u64);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let to = chrono::Utc::now();
        let request = gearbox_api::reconcile::Request {
            pipeline: decl.pipeline.clone(),
            from: decl.window_ms.map(|w| {
                (to - chrono::Duration::milliseconds(w as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
            to: None,
            sum: decl.sum.clone(),
            by: decl.by.clone(),
            samples: None,
        };
        let (b, w) = (broker.clone(), warehouses.clone());
        let result =
            tokio::task::spawn_blocking(move || gearbox_api::reconcile::run(&b, &w, &request))
                .await;
        match result {
            Ok(Ok(report)) if report.unexplained_total() > 0 => {
                tracing::error!(pipeline = %decl.pipeline, unexplained = report.unexplained_total(),
                    lag = report.lag_total(), "reconcile: the warehouse differs from the topic");
            }
            Ok(Ok(report)) => {
                tracing::info!(pipeline = %decl.pipeline, lag = report.lag_total(), "reconcile: match");
            }
            Ok(Err(e)) => {
                tracing::error!(pipeline = %decl.pipeline, error = %e.message, "reconcile failed");
            }
            Err(e) => tracing::error!(pipeline = %decl.pipeline, error = %e, "reconcile panicked"),
        }
    }
}
