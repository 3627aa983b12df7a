//! The collector's throughput: Segment `/v1/batch` calls of 100 track events
//! each from several concurrent HTTP clients, counted once the collector has
//! answered 200 (every record acknowledged by Kafka).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rapport::config::Config;
use rapport::kafka::{ensure_topics, TopicSpec};

/// Events per `/v1/batch` call.
const BATCH: usize = 100;

/// Sends `events` track events through a collector on the broker at
/// `bootstrap` from `clients` concurrent HTTP clients; prints events/s.
pub fn collector(bootstrap: &str, events: usize, clients: usize) -> anyhow::Result<()> {
    let s = super::suffix();
    let topic = format!("bench.collector.{s}");
    let dead = format!("bench.collector.dlq.{s}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(ensure_topics(
        bootstrap,
        &[TopicSpec::new(&topic, 4), TopicSpec::new(&dead, 1)],
    ))?;
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.to_owned();
    cfg.kafka.touchpoint_topics = vec![topic.clone()];
    cfg.kafka.dead_letter_topic = dead;
    cfg.collector.listen = "127.0.0.1:0".into();
    cfg.collector.write_keys = vec!["bench-key".into()];
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..events.div_ceil(BATCH)).map(body).collect());
    let running = rt.block_on(rapport::collect::start(&cfg, std::path::Path::new(".")))?;
    let url = format!("http://{}/v1/batch", running.addr);
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench-key:")
    );
    let next = Arc::new(AtomicU64::new(0));
    let cpu = super::cpu_seconds();
    let started = Instant::now();
    let refused = rt.block_on(async {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (client, bodies, next) = (client.clone(), bodies.clone(), next.clone());
            let (url, auth) = (url.clone(), auth.clone());
            tasks.push(tokio::spawn(async move {
                let mut refused = 0u64;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(b) = bodies.get(i) else { break };
                    let req = hyper::Request::post(&url)
                        .header("authorization", &auth)
                        .header("content-type", "application/json")
                        .body(Full::new(b.clone()))
                        .expect("request");
                    let res = client.request(req).await.expect("the collector answers");
                    if !res.status().is_success() {
                        refused += 1;
                    }
                    let _ = res.into_body().collect().await;
                }
                refused
            }));
        }
        let mut refused = 0;
        for t in tasks {
            refused += t.await.expect("client task");
        }
        refused
    });
    let secs = started.elapsed().as_secs_f64();
    let cpu = super::cpu_seconds() - cpu;
    rt.block_on(running.stop())?;
    anyhow::ensure!(refused == 0, "{refused} batches were refused");
    let stored = super::count_committed(bootstrap, &topic)?;
    anyhow::ensure!(
        stored as usize == bodies.len() * BATCH,
        "{stored} touchpoints in the topic, {} sent",
        bodies.len() * BATCH
    );
    let sent = bodies.len() * BATCH;
    crate::report::row!(
        "| collector: Segment /v1/batch, {BATCH} track events per call, {clients} HTTP clients, {sent} events, 4 partitions (clients in the same process) | {:.0} events/s acknowledged, {:.1} CPU s per million (collector and clients) |",
        sent as f64 / secs,
        cpu / sent as f64 * 1e6
    );
    Ok(())
}

/// Batch `n`: 100 Product Viewed calls as analytics-python sends them.
fn body(n: usize) -> Bytes {
    let calls: Vec<serde_json::Value> = (0..BATCH)
        .map(|i| {
            let id = n * BATCH + i;
            serde_json::json!({
                "type": "track",
                "messageId": format!("bench-{id}"),
                "userId": format!("u{}", id % 10_000),
                "event": "Product Viewed",
                "timestamp": "2025-11-24T16:00:00.000+00:00",
                "properties": {"sku": format!("sku-{}", id % 500), "price": 19.9, "currency": "EUR"},
                "context": {"library": {"name": "analytics-python", "version": "2.4.0"}},
            })
        })
        .collect();
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "batch": calls })).expect("json"))
}
