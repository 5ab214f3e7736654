//! `gearbox demo`: `gearbox serve` with a built-in config and simulated gear in the same
//! process, so the dashboard comes alive on the first run. It exercises the four patterns:
//!
//! - **event-driven**: three sensor groups push readings every [`SENSOR_PERIOD_MS`], each
//!   through its own webhook receiver pipeline into topic `sensors` (a plain
//!   `POST /v1/topics/sensors/events` has no pipeline, hence no card and no freshness). Group
//!   `south` goes quiet from [`QUIET_FROM_MS`] to [`QUIET_UNTIL_MS`] of every
//!   [`QUIET_CYCLE_MS`], so its card turns `warn`, then `error`, then `ok` again;
//! - **API-first**: a SaaS posts Standard-Webhooks-signed orders to the `saas-orders` receiver
//!   (topic `orders`); a partner receiver behind the `partner-delivery` HTTP sink fails
//!   [`PARTNER_TRANSIENT_PERCENT`]% of deliveries with 503 and refuses
//!   [`PARTNER_REFUSED_PERCENT`]% of orders with 422 the first time it sees them, so retries
//!   and the DLQ show (and a redrive succeeds);
//! - **batch and scheduled**: the file/cron batch source does not exist yet, so an `http_poll`
//!   pipeline reads an export endpoint that publishes a new batch every [`EXPORT_PERIOD_MS`];
//! - **hybrid**: a fulfilment worker consumes `orders` through a queue subscription over the HTTP
//!   API and publishes a `shipments` event and an `invoices` event per order, each with
//!   `causationid` (the event it follows) and `correlationid` (the order's, or its id).
//!
//! The receivers and the export endpoint are small axum servers on `127.0.0.1:0`; the senders are
//! threads with a blocking HTTP client. The webhook secret is random per run, written to
//! `<data-dir>/demo/webhook-secret` (mode 0600) and referenced as `${file:...}`; it is never
//! printed.

use crate::config::Config;
use crate::serve::{ServeArgs, serve};
use anyhow::Context as _;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use base64::Engine as _;
use gearbox_connectors::webhook::signature::{sign_standard, standard_secret_key};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time between two rounds of sensor readings.
pub const SENSOR_PERIOD_MS: u64 = 2_000;
/// Sensors per group (one reading each per round).
pub const SENSORS_PER_GROUP: u32 = 3;
/// The quiet group's cycle.
pub const QUIET_CYCLE_MS: u64 = 60_000;
/// Where in its cycle the quiet group stops sending.
pub const QUIET_FROM_MS: u64 = 12_000;
/// Where in its cycle the quiet group starts sending again.
pub const QUIET_UNTIL_MS: u64 = 42_000;
/// The sensor pipelines' freshness target: `warn` past it, `error` past twice it.
pub const SENSOR_FRESHNESS_MS: u64 = 8_000;
// The quiet spell is long enough for the card to pass `error` (twice the freshness target).
const _: () = assert!(QUIET_UNTIL_MS - QUIET_FROM_MS > 3 * SENSOR_FRESHNESS_MS);
/// Time between two orders from the SaaS.
pub const ORDER_PERIOD_MS: u64 = 1_500;
/// Freshness target of the order, delivery and export pipelines.
pub const FRESHNESS_MS: u64 = 30_000;
/// Share of partner deliveries answered 503.
pub const PARTNER_TRANSIENT_PERCENT: u128 = 30;
/// Share of orders the partner refuses (422) the first time it sees them.
pub const PARTNER_REFUSED_PERCENT: u128 = 12;
/// Order ids the partner remembers having refused; the set is cleared when full.
pub const PARTNER_REFUSED_KEPT_MAX: usize = 10_000;
/// Time between two export batches.
pub const EXPORT_PERIOD_MS: u64 = 20_000;
/// How often the export pipeline polls.
pub const EXPORT_POLL_MS: u64 = 5_000;
/// Records per export batch.
pub const EXPORT_BATCH_RECORDS: u32 = 8;
/// Delivery attempts to the partner before an order is dead-lettered.
pub const PARTNER_ATTEMPTS_MAX: u32 = 3;
/// The partner delivery's first retry delay; later ones double, up to [`PARTNER_RETRY_MS_MAX`].
pub const PARTNER_RETRY_MS_INITIAL: u64 = 300;
/// The partner delivery's longest retry delay.
pub const PARTNER_RETRY_MS_MAX: u64 = 2_000;
/// Timeout of one delivery to the partner.
pub const PARTNER_TIMEOUT_MS: u64 = 2_000;
/// Export records kept by the export endpoint.
pub const EXPORT_RECORDS_KEPT_MAX: usize = 2_000;
/// Orders the fulfilment worker takes per poll.
pub const WORKER_POLL_EVENTS_MAX: u32 = 50;
/// How long one poll of the fulfilment worker waits.
pub const WORKER_POLL_WAIT_MS: u64 = 5_000;
/// Deliveries of one order to the fulfilment worker before the subscription dead-letters it.
pub const WORKER_ATTEMPTS_MAX: u32 = 5;
/// How long the fulfilment worker holds an order before it is redelivered.
pub const WORKER_LOCK_MS: u64 = 30_000;
/// Pause of a simulated sender after a failed request.
pub const SENDER_BACKOFF_MS: u64 = 1_000;
/// Timeout of every request a simulated sender makes.
pub const SENDER_TIMEOUT_MS: u64 = 10_000;

const SENSOR_GROUPS: [&str; 3] = ["north", "south", "east"];
const QUIET_GROUP: &str = "south";

/// Options of `gearbox demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo's log and state live.
    #[arg(long, default_value = "./demo-data")]
    pub data_dir: PathBuf,
    /// The HTTP listener (the dashboard is at its `/`).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub http: SocketAddr,
}

/// Runs the demo until a signal.
///
/// # Errors
/// The data directory cannot be made or opened, or a listener cannot bind.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

async fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    let secret_dir = args.data_dir.join("demo");
    std::fs::create_dir_all(&secret_dir)
        .with_context(|| format!("creating {}", secret_dir.display()))?;
    let secret = random_secret();
    let secret_path = std::path::absolute(secret_dir.join("webhook-secret"))?;
    write_private(&secret_path, &secret)?;
    let partner = start_partner().await?;
    let export = start_export().await?;
    let config = Config::check(&demo_config(partner, export, &secret_path))
        .map_err(anyhow::Error::from)
        .context("the demo's built-in config")?;
    let serve_args = ServeArgs {
        data_dir: args.data_dir.clone(),
        http: args.http,
        config: None,
        publish_in_flight_max: gearbox_api::PUBLISH_IN_FLIGHT_MAX_DEFAULT,
        kafka: None,
        kafka_advertised: None,
    };
    serve(&serve_args, Some(config), move |addr| {
        let base = format!("http://{addr}");
        start_gear(&base, &secret);
        println!("Gearbox demo is running: open http://{addr}/ (Ctrl-C stops it)");
    })
    .await
}

/// A Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
fn random_secret() -> String {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The built-in config, as the tree `gearbox.yaml` parses to.
fn demo_config(partner: SocketAddr, export: SocketAddr, secret_path: &Path) -> Value {
    let secret = format!("${{file:{}}}", secret_path.display());
    let mut pipelines: Vec<Value> = SENSOR_GROUPS
        .iter()
        .map(|group| {
            json!({
                "name": format!("sensors-{group}"),
                "source": {"webhook": {
                    "path": format!("/hooks/sensors/{group}"),
                    "scheme": "standard",
                    "secrets": [secret],
                    "source": format!("urn:demo:sensors:{group}"),
                }},
                "transforms": [".partitionkey = .data.sensor"],
                "to": "sensors",
                "freshness_ms": SENSOR_FRESHNESS_MS,
            })
        })
        .collect();
    pipelines.extend([
        json!({
            "name": "saas-orders",
            "source": {"webhook": {
                "path": "/hooks/saas",
                "scheme": "standard",
                "secrets": [secret],
                "source": "https://saas.example/orders",
            }},
            "transforms": [".partitionkey = .data.customer"],
            "to": "orders",
            "freshness_ms": FRESHNESS_MS,
        }),
        json!({
            "name": "partner-delivery",
            "from": "orders",
            "start": "earliest",
            "sink": {"http": {
                "url": format!("http://{partner}/deliver"),
                "secret": secret,
                "timeout_ms": PARTNER_TIMEOUT_MS,
            }},
            "transforms": ["{id, type, order: .data}"],
            "retry": {
                "attempts_max": PARTNER_ATTEMPTS_MAX,
                "initial_ms": PARTNER_RETRY_MS_INITIAL,
                "max_ms": PARTNER_RETRY_MS_MAX,
                "multiplier": 2.0,
            },
            "freshness_ms": FRESHNESS_MS,
        }),
        json!({
            "name": "warehouse-export",
            "source": {"http_poll": {
                "url": format!("http://{export}/export"),
                "interval_ms": EXPORT_POLL_MS,
                "records": "records",
                "cursor": {"param": "since", "field": "updated_at", "kind": "timestamp"},
                "id": {"key": "sku", "version": "updated_at"},
                "event": {"source": "urn:demo:warehouse", "type": "inventory.level"},
            }},
            "to": "inventory",
            "freshness_ms": FRESHNESS_MS,
        }),
    ]);
    json!({
        "topics": [
            {"name": "sensors", "partitions": 3},
            {"name": "orders", "partitions": 3},
            {"name": "shipments", "partitions": 2},
            {"name": "invoices", "partitions": 1},
            {"name": "inventory", "partitions": 1},
        ],
        "pipelines": pipelines,
    })
}

// ---------------------------------------------------------------------------------------------
// The partner (behind the HTTP delivery sink) and the export endpoint (behind the poller)
// ---------------------------------------------------------------------------------------------

async fn serve_local(app: Router) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "a demo gear server stopped");
        }
    });
    Ok(addr)
}

/// A percentage drawn at random.
fn percent() -> u128 {
    uuid::Uuid::new_v4().as_u128() % 100
}

/// A stable percentage of a string (FNV-1a), so one order is always refused or never.
fn stable_percent(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h % 100
}

async fn start_partner() -> anyhow::Result<SocketAddr> {
    let refused: Arc<Mutex<HashSet<String>>> = Arc::default();
    let app = Router::new()
        .route("/deliver", post(deliver))
        .with_state(refused);
    serve_local(app).await
}

/// The flaky partner: refuses an order permanently the first time (a redrive then succeeds, as
/// after a fix on its side), and fails a share of deliveries transiently.
async fn deliver(
    State(refused): State<Arc<Mutex<HashSet<String>>>>,
    headers: HeaderMap,
) -> (StatusCode, &'static str) {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if u128::from(stable_percent(&id)) < PARTNER_REFUSED_PERCENT {
        let mut seen = refused.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= PARTNER_REFUSED_KEPT_MAX {
            seen.clear();
        }
        if seen.insert(id) {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                "partner: unknown customer account",
            );
        }
    }
    if percent() < PARTNER_TRANSIENT_PERCENT {
        return (StatusCode::SERVICE_UNAVAILABLE, "partner: try again later");
    }
    (StatusCode::OK, "ok")
}

type Export = Arc<Mutex<Vec<Value>>>;

async fn start_export() -> anyhow::Result<SocketAddr> {
    let records: Export = Arc::default();
    let producer = records.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(EXPORT_PERIOD_MS));
        let mut batch = 0u32;
        loop {
            tick.tick().await;
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let mut all = producer.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..EXPORT_BATCH_RECORDS {
                let n = batch * EXPORT_BATCH_RECORDS + i;
                all.push(json!({
                    "sku": format!("sku-{:03}", n % 40),
                    "warehouse": if n.is_multiple_of(2) { "ams-1" } else { "fra-2" },
                    "on_hand": (n * 37) % 500,
                    "batch": batch,
                    "updated_at": at,
                }));
            }
            let excess = all.len().saturating_sub(EXPORT_RECORDS_KEPT_MAX);
            all.drain(..excess);
            batch += 1;
        }
    });
    let app = Router::new()
        .route("/export", get(export))
        .with_state(records);
    serve_local(app).await
}

/// `GET /export?since=T`: the records updated at or after `T`.
async fn export(
    State(records): State<Export>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<Value> {
    let since = q
        .get("since")
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let all = records.lock().unwrap_or_else(|e| e.into_inner());
    let out: Vec<Value> = all
        .iter()
        .filter(|r| {
            let at = r["updated_at"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            since.is_none_or(|since| at.is_some_and(|at| at > since))
        })
        .cloned()
        .collect();
    axum::Json(json!({ "records": out }))
}

// ---------------------------------------------------------------------------------------------
// The senders: sensors, the SaaS, the fulfilment worker
// ---------------------------------------------------------------------------------------------

fn start_gear(base: &str, secret: &str) {
    let key = standard_secret_key(secret).expect("the demo's own secret decodes");
    let started = Instant::now();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(SENDER_TIMEOUT_MS)))
        .build()
        .new_agent();
    let (b, k, a) = (base.to_string(), key.clone(), agent.clone());
    std::thread::spawn(move || sensors(&a, &b, &k, started));
    let (b, a) = (base.to_string(), agent.clone());
    std::thread::spawn(move || saas(&a, &b, &key));
    let b = base.to_string();
    std::thread::spawn(move || fulfilment(&agent, &b));
}

/// Posts one Standard-Webhooks-signed delivery; returns whether it was accepted.
fn send_webhook(agent: &ureq::Agent, url: &str, key: &[u8], id: &str, body: &Value) -> bool {
    let body = body.to_string();
    let ts = chrono::Utc::now().timestamp();
    let r = agent
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header(
            "webhook-signature",
            sign_standard(key, id, ts, body.as_bytes()),
        )
        .send(body.as_bytes());
    match r {
        Ok(res) if res.status().is_success() => true,
        Ok(res) => {
            tracing::debug!(status = %res.status(), url, "demo webhook refused");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, url, "demo webhook failed");
            false
        }
    }
}

fn quiet(group: &str, since_start: Duration) -> bool {
    let at = since_start.as_millis() as u64 % QUIET_CYCLE_MS;
    group == QUIET_GROUP && (QUIET_FROM_MS..QUIET_UNTIL_MS).contains(&at)
}

fn sensors(agent: &ureq::Agent, base: &str, key: &[u8], started: Instant) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    for round in 0u64.. {
        for (g, group) in SENSOR_GROUPS.iter().enumerate() {
            if quiet(group, started.elapsed()) {
                continue;
            }
            for s in 0..SENSORS_PER_GROUP {
                let sensor = format!("{group}-{s}");
                let wave = ((round as f64 / 10.0) + f64::from(s)).sin();
                let body = json!({
                    "type": "sensor.reading",
                    "sensor": sensor,
                    "celsius": 18.0 + 2.0 * g as f64 + wave,
                    "humidity": 40 + (round + u64::from(s)) % 20,
                });
                let id = format!("{run}-{sensor}-{round}");
                send_webhook(
                    agent,
                    &format!("{base}/hooks/sensors/{group}"),
                    key,
                    &id,
                    &body,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(SENSOR_PERIOD_MS));
    }
}

fn saas(agent: &ureq::Agent, base: &str, key: &[u8]) {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    for n in 0u64.. {
        let id = format!("ord-{run}-{n}");
        let body = json!({
            "type": "order.created",
            "order_id": id,
            "customer": format!("cust-{}", n % 17),
            "total": ((n * 7919) % 20_000) as f64 / 100.0,
            "lines": 1 + n % 4,
        });
        let ok = send_webhook(agent, &format!("{base}/hooks/saas"), key, &id, &body);
        let wait = if ok {
            ORDER_PERIOD_MS
        } else {
            SENDER_BACKOFF_MS
        };
        std::thread::sleep(Duration::from_millis(wait));
    }
}

fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    content_type: &str,
    body: &Value,
) -> Option<Value> {
    let body = body.to_string();
    let r = match method {
        "PUT" => agent
            .put(url)
            .header("content-type", content_type)
            .send(body.as_bytes()),
        _ => agent
            .post(url)
            .header("content-type", content_type)
            .send(body.as_bytes()),
    };
    match r {
        Ok(mut res) if res.status().is_success() => {
            let text = res.body_mut().read_to_string().ok()?;
            serde_json::from_str(&text).ok().or(Some(Value::Null))
        }
        Ok(res) => {
            tracing::debug!(status = %res.status(), url, "demo request refused");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, url, "demo request failed");
            None
        }
    }
}

/// The events an order causes: a shipment that follows the order, an invoice that follows the
/// shipment, all in the order's correlation.
fn cascade(order: &Value) -> Option<(Value, Value)> {
    let order_id = order["id"].as_str()?;
    let correlation = order["correlationid"].as_str().unwrap_or(order_id);
    let customer = order["data"]["customer"].clone();
    let shipment_id = format!("ship-{order_id}");
    let shipment = json!({
        "specversion": "1.0",
        "id": shipment_id,
        "source": "urn:demo:fulfilment",
        "type": "shipment.created",
        "partitionkey": customer,
        "causationid": order_id,
        "correlationid": correlation,
        "data": {"order_id": order_id, "carrier": "dhl", "customer": customer},
    });
    let invoice = json!({
        "specversion": "1.0",
        "id": format!("inv-{order_id}"),
        "source": "urn:demo:billing",
        "type": "invoice.issued",
        "causationid": shipment_id,
        "correlationid": correlation,
        "data": {"order_id": order_id, "amount": order["data"]["total"].clone()},
    });
    Some((shipment, invoice))
}

fn fulfilment(agent: &ureq::Agent, base: &str) {
    let sub = format!("{base}/v1/topics/orders/subscriptions/fulfilment");
    let settings = json!({
        "mode": "queue",
        "start": "earliest",
        "max_attempts": WORKER_ATTEMPTS_MAX,
        "lock_ms": WORKER_LOCK_MS,
    });
    while call(agent, "PUT", &sub, "application/json", &settings).is_none() {
        std::thread::sleep(Duration::from_millis(SENDER_BACKOFF_MS));
    }
    let ce = "application/cloudevents+json";
    loop {
        let poll = json!({"max_events": WORKER_POLL_EVENTS_MAX, "wait_ms": WORKER_POLL_WAIT_MS});
        let Some(reply) = call(
            agent,
            "POST",
            &format!("{sub}/poll"),
            "application/json",
            &poll,
        ) else {
            std::thread::sleep(Duration::from_millis(SENDER_BACKOFF_MS));
            continue;
        };
        let mut done = Vec::new();
        for d in reply["events"].as_array().into_iter().flatten() {
            let Some((shipment, invoice)) = cascade(&d["event"]) else {
                continue;
            };
            let shipped = call(
                agent,
                "POST",
                &format!("{base}/v1/topics/shipments/events"),
                ce,
                &shipment,
            );
            let invoiced = shipped.is_some()
                && call(
                    agent,
                    "POST",
                    &format!("{base}/v1/topics/invoices/events"),
                    ce,
                    &invoice,
                )
                .is_some();
            if invoiced {
                done.push(json!({"partition": d["partition"], "offset": d["offset"]}));
            }
        }
        if !done.is_empty() {
            // Unacked orders come back after their lock; the cascade's ids make that a no-op.
            let _ = call(
                agent,
                "POST",
                &format!("{sub}/ack"),
                "application/json",
                &json!({"events": done}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_config_is_valid() {
        let tree = demo_config(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            Path::new("/tmp/x"),
        );
        Config::check(&tree).unwrap();
    }

    #[test]
    fn only_the_quiet_group_goes_quiet_and_only_in_its_window() {
        let at = |ms| Duration::from_millis(ms);
        assert!(!quiet(QUIET_GROUP, at(QUIET_FROM_MS - 1)));
        assert!(quiet(QUIET_GROUP, at(QUIET_FROM_MS)));
        assert!(quiet(QUIET_GROUP, at(QUIET_CYCLE_MS + QUIET_UNTIL_MS - 1)));
        assert!(!quiet(QUIET_GROUP, at(QUIET_UNTIL_MS)));
        assert!(!quiet("north", at(QUIET_FROM_MS)));
    }

    #[test]
    fn the_cascade_links_cause_and_correlation() {
        let order = json!({"id": "o-1", "data": {"customer": "c", "total": 3.5}});
        let (s, i) = cascade(&order).unwrap();
        assert_eq!(
            (s["causationid"].as_str(), s["correlationid"].as_str()),
            (Some("o-1"), Some("o-1"))
        );
        assert_eq!(
            (i["causationid"].as_str(), i["correlationid"].as_str()),
            (Some("ship-o-1"), Some("o-1"))
        );
        let order = json!({"id": "o-2", "correlationid": "k", "data": {}});
        let (s, i) = cascade(&order).unwrap();
        assert_eq!(
            (s["correlationid"].as_str(), i["correlationid"].as_str()),
            (Some("k"), Some("k"))
        );
    }
}
