//! Event-to-action latency under exactly_once: touchpoints produced at a fixed
//! rate (half the engine's measured maximum unless `RAPPORT_BENCH_RATE` says),
//! with the wall clock as event time, to an engine running the shipped journeys
//! and delivery policy; each action read with `read_committed` is matched to the
//! moment its trigger touchpoint was handed to the producer. Actions a timer
//! fired later (a wait, quiet hours) are left out: their delay is the journey's,
//! not the engine's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rapport::config::{Config, Guarantee};
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::metrics::Metrics;
use rapport::runtime;
use rapport::state::StateStore;
use rapport_connectors::publish::send_when_room;
use rapport_connectors::simulator::{SimConfig, Simulator};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::Message;

/// When each touchpoint was handed to the producer, and its event time.
type Sent = Arc<Mutex<HashMap<String, (Instant, i64)>>>;

/// Runs the latency measurement for `seconds` at `rate` events/s.
pub fn latency(bootstrap: &str, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let s = super::suffix();
    let input = format!("bench.latency.{s}");
    let actions = format!("bench.latency.actions.{s}");
    super::rt().block_on(ensure_topics(
        bootstrap,
        &[TopicSpec::new(&input, 4), TopicSpec::new(&actions, 4)],
    ))?;
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.to_owned();
    cfg.kafka.group_id = format!("bench-latency-{s}");
    cfg.kafka.touchpoint_topics = vec![input.clone()];
    cfg.kafka.action_topic = actions.clone();
    cfg.kafka.dead_letter_topic = format!("bench.latency.dlq.{s}");
    cfg.kafka.decisions_topic = format!("bench.latency.decisions.{s}");
    cfg.state.path = dir.path().join("state");
    cfg.http.listen = String::new();
    cfg.engine.guarantee = Guarantee::ExactlyOnce;
    cfg.engine.wall_clock_timers = false;
    let jdir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys");
    cfg.journeys = vec![format!("{}/*.toml", jdir.display())];
    cfg.compile_journeys(&jdir)?;
    let commit_ms = cfg.engine.commit_interval_ms;
    let state = Arc::new(StateStore::open(&cfg.state)?);
    let engine = runtime::start(cfg, state, Metrics::new())?;

    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (bootstrap, sent, stop) = (bootstrap.to_owned(), sent.clone(), stop.clone());
        std::thread::spawn(move || read_actions(&bootstrap, &actions, &sent, &stop))
    };
    let produced = produce(bootstrap, &input, rate, seconds, &sent)?;
    // Let the last commit intervals drain before the reader stops.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let mut micros = reader
        .join()
        .map_err(|_| anyhow::anyhow!("action reader panicked"))??;
    engine.shutdown()?;
    micros.sort_unstable();
    let pct = |q: f64| -> f64 {
        micros
            .get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1)))
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
    };
    println!(
        "| event to action latency, exactly_once, {rate} events/s for {seconds} s ({produced} touchpoints, 4 partitions, commit_interval_ms {commit_ms}, producer linger.ms 10, lz4), the shipped journeys and policy | p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms over {} actions |",
        pct(0.50),
        pct(0.99),
        pct(0.999),
        micros.len()
    );
    Ok(())
}

/// Produces simulated touchpoints at `rate` for `seconds`, noting when each
/// was handed over; returns how many.
fn produce(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    sent: &Sent,
) -> anyhow::Result<u64> {
    let producer = rapport_connectors::publish::producer(bootstrap)?;
    let mut sim = Simulator::new(SimConfig {
        customers: 10_000,
        seed: 7,
        malformed_per_mille: 0,
    });
    let total = rate * seconds;
    let started = Instant::now();
    for n in 0..total {
        let due = Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            producer.poll(wait);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let r = sim.next_record(now_ms);
        if let Ok(t) = serde_json::from_slice::<rapport_model::Touchpoint>(&r.value) {
            let mut map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            map.insert(t.event_id, (Instant::now(), t.event_time));
        }
        send_when_room(
            &producer,
            BaseRecord::to(topic)
                .key(r.key.as_bytes())
                .payload(&r.value),
        )?;
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(total)
}

/// Reads actions with read_committed until `stop`; the latency of each action
/// its trigger touchpoint fired at once, µs.
fn read_actions(
    bootstrap: &str,
    topic: &str,
    sent: &Sent,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<u64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("bench-latency-reader-{}", super::suffix()),
        )
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "1")
        .create()?;
    c.subscribe(&[topic])?;
    let mut micros = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let arrived = Instant::now();
        let m = m?;
        let Ok(a) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or_default())
        else {
            continue;
        };
        let (Some(id), Some(at)) = (
            a["trigger_event_id"].as_str(),
            a["trigger_event_time"].as_i64(),
        ) else {
            continue;
        };
        let map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(&(when, event_time)) = map.get(id) {
            if event_time == at {
                micros.push(arrived.duration_since(when).as_micros() as u64);
            }
        }
    }
    Ok(micros)
}
