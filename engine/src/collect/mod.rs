//! `rapport collect`: an HTTP collector for web and app events (the Segment HTTP
//! tracking API, which RudderStack's SDKs speak too) and for chat platforms'
//! webhooks. Each call becomes a canonical touchpoint on the touchpoint topic,
//! keyed by its customer and on the partition the engine's key rule gives it.
//!
//! - [`segment`]: `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
//!   `/v1/batch` (and Segment's short aliases `/v1/t`, `/v1/i`, `/v1/p`,
//!   `/v1/s`, `/v1/b`), write key in the Basic header.
//! - [`chat`]: `POST /v1/webhooks/chat/{source}`, HMAC-SHA256 signed.
//! - [`mapping`]: calls to touchpoints, by a file the user can change.
//! - [`sink`]: the producer; a request is answered 200 only once Kafka has
//!   acknowledged every record it produced, 503 otherwise (the SDK retries).
//! - `/metrics` and `/healthz`.

pub mod chat;
pub mod config;
pub mod mapping;
mod metrics;
pub mod segment;
pub mod sink;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::config::{Config, ConfigError};
use chat::ChatSecrets;
use mapping::{Mapping, MappingError};
pub use metrics::CollectorMetrics;
use sink::Sink;

/// What the handlers share.
pub struct Collector {
    /// Accepted write keys.
    write_keys: Vec<Vec<u8>>,
    /// Calls to touchpoints.
    mapping: Mapping,
    /// Chat sources with their secrets.
    chat: ChatSecrets,
    /// The producer.
    sink: Sink,
    /// Limits and settings.
    cfg: config::CollectorConfig,
    /// The collector's metrics.
    metrics: CollectorMetrics,
}

/// Why the collector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The mapping file is not usable.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// Kafka or the topic cannot be reached.
    #[error(transparent)]
    Kafka(#[from] sink::ConnectError),
    /// Connecting failed in a way the Kafka client does not describe, or the
    /// dead-letter topic is missing and cannot be created.
    #[error("preparing Kafka: {0}")]
    Setup(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running collector.
pub struct Running {
    /// The address it listens on (the real port when configured with port 0).
    pub addr: SocketAddr,
    /// Its metrics.
    pub metrics: CollectorMetrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    shared: Arc<Collector>,
}

impl Running {
    /// Stops accepting requests, lets those in flight finish, and flushes the producer.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        let r = self.task.await.unwrap_or(Ok(()));
        let shared = self.shared.clone();
        let _ =
            tokio::task::spawn_blocking(move || shared.sink.flush(Duration::from_secs(10))).await;
        r
    }
}

/// Starts the collector of `cfg` (loaded from `config_file`, against which the
/// mapping path is resolved): connects to Kafka, binds, and serves in the
/// background of the current Tokio runtime.
pub async fn start(cfg: &Config, config_file: &Path) -> Result<Running, StartError> {
    let c = &cfg.collector;
    let (write_keys, chat) = credentials(cfg, config_file)?;
    let mapping = if c.mapping.is_empty() {
        Mapping::builtin()
    } else {
        let base = config_file.parent().unwrap_or(Path::new("."));
        Mapping::load(&base.join(&c.mapping))?
    };
    let sink = connect(cfg).await?;
    let listen_err = |source| StartError::Listen {
        addr: c.listen.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&c.listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let metrics = CollectorMetrics::new();
    let shared = Arc::new(Collector {
        write_keys,
        mapping,
        chat,
        sink,
        cfg: c.clone(),
        metrics: metrics.clone(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(shared.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, "collector listening");
    Ok(Running {
        addr,
        metrics,
        stop,
        task,
        shared,
    })
}

/// The write keys and chat secrets, `env:NAME` values read from the
/// environment; a missing one is refused with the line of `config_file` that
/// names it.
fn credentials(
    cfg: &Config,
    config_file: &Path,
) -> Result<(Vec<Vec<u8>>, ChatSecrets), StartError> {
    let refuse = |key: &str, message: String| {
        let src = std::fs::read_to_string(config_file).unwrap_or_default();
        ConfigError {
            file: config_file.to_owned(),
            line: crate::config::locate(&src, key),
            message: format!("{key}: {message}"),
        }
    };
    let mut write_keys = Vec::new();
    for k in &cfg.collector.write_keys {
        let key = config::resolve_secret(k).map_err(|m| refuse("collector.write_keys", m))?;
        write_keys.push(key.into_bytes());
    }
    if write_keys.is_empty() {
        return Err(refuse(
            "collector.write_keys",
            "no write key; list the keys your SDKs send, e.g. write_keys = [\"env:RAPPORT_WRITE_KEY\"]".into(),
        )
        .into());
    }
    let chat = ChatSecrets::resolve(&cfg.collector.chat)
        .map_err(|(name, m)| refuse(&format!("collector.chat.{name}.secret"), m))?;
    Ok((write_keys, chat))
}

/// The producer for the touchpoint topic (`collector.topic`, else the first of
/// `kafka.touchpoint_topics`); like the engine, it creates the dead-letter
/// topic when missing, so the first unmapped call does not wait for a topic
/// that never comes.
async fn connect(cfg: &Config) -> Result<Sink, StartError> {
    let topic = match cfg.collector.topic.as_str() {
        "" => cfg.kafka.touchpoint_topics[0].clone(),
        t => t.to_owned(),
    };
    let kafka = cfg.kafka.clone();
    let timeout = Duration::from_millis(cfg.collector.produce_timeout_ms);
    let sink = tokio::task::spawn_blocking(move || Sink::connect(&kafka, &topic, timeout))
        .await
        .map_err(|e| StartError::Setup(format!("the connecting task failed: {e}")))??;
    let mut dlq = crate::kafka::TopicSpec::new(&cfg.kafka.dead_letter_topic, sink.partitions());
    dlq.replication = cfg.kafka.replication_factor;
    crate::kafka::create_topics(crate::kafka::client_config(&cfg.kafka), &[dlq])
        .await
        .map_err(|e| StartError::Setup(format!("creating the dead-letter topic: {e:#}")))?;
    Ok(sink)
}

/// The collector's routes.
fn router(shared: Arc<Collector>) -> Router {
    let mut r = Router::new();
    for (path, endpoint) in segment::ROUTES {
        r = r.route(
            path,
            post(move |state, headers, body| segment::handle(state, endpoint, headers, body)),
        );
    }
    r.route("/v1/webhooks/chat/{source}", post(chat::handle))
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health))
        .with_state(shared)
}

/// Checks the mapping file `cfg` names, if any (`rapport validate`).
pub fn check_mapping(cfg: &Config, config_file: &Path) -> Result<(), MappingError> {
    if !cfg.collector.mapping.is_empty() {
        let base = config_file.parent().unwrap_or(Path::new("."));
        Mapping::load(&base.join(&cfg.collector.mapping))?;
    }
    Ok(())
}

/// 200 while the producer can produce; 503 once it has a fatal error, so
/// that a supervisor restarts the collector.
async fn health(axum::extract::State(c): axum::extract::State<Arc<Collector>>) -> Response {
    match c.sink.fatal_error() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the Kafka producer has a fatal error and produces nothing more; restart the collector: {e}\n"),
        )
            .into_response(),
    }
}

/// `rapport collect`: runs until SIGTERM or SIGINT.
pub fn run(cfg: Config, config_file: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let running = start(&cfg, config_file).await?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("collector stopping");
        running.stop().await?;
        anyhow::Ok(())
    })
}

/// An error answer in the shape Segment's SDKs read (`code`, `message`).
pub(crate) fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = Json(json!({"success": false, "code": code, "message": message.into()}));
    (status, body).into_response()
}

/// The request body as JSON, or a 400 saying why it is not (an answer, as
/// the handlers' other refusals are).
#[allow(clippy::result_large_err)]
pub(crate) fn json_body(bytes: &[u8]) -> Result<serde_json::Value, Response> {
    serde_json::from_slice(bytes).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the body is not JSON: {e}"),
        )
    })
}

/// Reads a request body of at most `limit` bytes, gunzipping it when its
/// Content-Encoding says gzip (the decompressed size is limited too).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, Response> {
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is over collector.max_body_bytes = {limit} bytes; send smaller batches"
            ),
        )
    };
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the body: {e}"),
            ))
        }
    };
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(bytes.to_vec()),
        "gzip" | "x-gzip" => gunzip(&bytes, limit).map_err(|e| match e {
            Gunzip::TooLarge => too_large(),
            Gunzip::Bad(m) => refuse(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("Content-Encoding is gzip but the body is not gzip: {m}"),
            ),
        }),
        other => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; send gzip or no encoding"),
        )),
    }
}

enum Gunzip {
    TooLarge,
    Bad(String),
}

fn gunzip(bytes: &[u8], limit: usize) -> Result<Vec<u8>, Gunzip> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Gunzip::Bad(e.to_string()))?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge);
    }
    Ok(out)
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Produces a request's records and waits until Kafka acknowledged them all;
/// counts them. Anything short of that is answered 503, so the sender retries.
pub(crate) async fn deliver(c: &Collector, out: &[sink::Outgoing]) -> Result<(), Response> {
    let started = std::time::Instant::now();
    if let Err(e) = c.sink.send(out).await {
        tracing::warn!(error = %e, records = out.len(), "records not acknowledged; answering 503");
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{e}; nothing of this request is acknowledged, retry it"),
        ));
    }
    c.metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    for r in out {
        match r {
            sink::Outgoing::Touchpoint(tp) => c
                .metrics
                .events
                .with_label_values(&[tp.event_type.as_str()])
                .inc(),
            sink::Outgoing::DeadLetter(d) => {
                c.metrics.dead_letters.with_label_values(&[d.class]).inc()
            }
        }
    }
    Ok(())
}
