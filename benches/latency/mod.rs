//! Event-to-action latency under each guarantee: touchpoints produced at a fixed
//! rate (half the engine's measured maximum unless `RAPPORT_BENCH_RATE` says),
//! with the wall clock as event time, to an engine running the shipped journeys
//! and delivery policy; each action read with `read_committed` is matched to the
//! moment its trigger touchpoint was handed to the producer. Actions a timer
//! fired later (a wait, quiet hours) are left out: their delay is the journey's,
//! not the engine's.
//!
//! Besides the end-to-end figures, each row splits the time in two at the
//! action record's own timestamp (set by the engine's producer when the engine
//! decided the action): "decided" is from the touchpoint handed to the
//! producer to the action decided (the bench producer's batching, the broker,
//! the engine's fetch and processing), "visible" from the action decided to
//! its receipt by the read_committed reader (the engine's producer, the
//! transaction commit, the reader's fetch). Both in wall-clock milliseconds.
//!
//! A third figure leaves the engine out: a plain consumer of one input
//! partition, fetching as eagerly as the engine, measures each touchpoint from
//! its producer timestamp to its receipt. That is the part of the latency the
//! bench producer and the broker add on this machine under the same load, a
//! floor no engine reading the topic could go under.
//!
//! Producing starts once the engine is ready (assigned and restored) and the
//! reader has its partitions, so start-up is not counted as latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod clients;
mod requests;
mod summaries;

use clients::*;
use summaries::*;

use crate::measure::{broker_gc_pauses, local_broker, stolen_ticks, Scheduled, ENGINE_THREADS};
use rapport::config::{Config, Guarantee};
use rapport::kafka::requests::{Counted, Requests};
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::metrics::Metrics;
use rapport::runtime;
use rapport::state::StateStore;
use rapport_connectors::publish::send_when_room;
use rapport_connectors::simulator::{SimConfig, Simulator};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;

/// When each touchpoint was handed to the producer (monotonic and wall-clock
/// ms), and its event time.
type Sent = Arc<Mutex<HashMap<String, (Instant, i64, i64)>>>;

/// The bench producer's `linger.ms`: that of Rapport's collector, the front
/// door of web and app touchpoints (the simulator's publisher waits 10 ms,
/// which is throughput's choice, not latency's).
const PRODUCER_LINGER_MS: u64 = 2;

/// What the bench keeps of a touchpoint it produces (its other fields are
/// skipped, not decoded: the producer thread shares the machine with the
/// engine).
#[derive(serde::Deserialize)]
struct Produced {
    event_id: String,
    event_time: i64,
}

/// One measured action: end to end (µs), and the two halves split at the
/// action record's timestamp (ms).
#[derive(Clone, Copy)]
struct Sample {
    /// When its trigger touchpoint was handed to the producer, epoch ms.
    sent_ms: i64,
    total_us: u64,
    decided_ms: i64,
    visible_ms: i64,
}

/// How long a trial of a rate runs ([`keeps_up`]), after its warm-up.
const TRIAL_SECONDS: u64 = 10;

/// How long after the last touchpoint is produced the engine may take to have
/// committed all of them, besides one commit interval, and still count as
/// keeping up with the rate: about one commit's own duration. (A second let
/// an engine a tenth slower than the rate pass a trial, and then fall behind
/// at half of that rate over the longer latency run.)
const KEPT_UP_WITHIN: Duration = Duration::from_millis(250);

/// What one paced run found.
struct Run {
    /// Touchpoints produced after the warm-up.
    produced: u64,
    /// How long after the last touchpoint was produced the engine had
    /// committed them all (`None`: not within a minute).
    drained: Option<Duration>,
    /// The engine's commit interval.
    commit_ms: u64,
    samples: Vec<Sample>,
    readable: Vec<(i64, i64)>,
    gc: Option<Vec<(i64, f64)>>,
    measured_ms: i64,
    metrics: Metrics,
    /// `rapport_record_latency_seconds` by stage as the warm-up ended:
    /// count, then each bucket's cumulative count.
    warm: Vec<Vec<u64>>,
    /// The share of the run during which a runnable thread waited for a core.
    cpu_waited: Option<f64>,
    /// How the threads of this process and of a local broker were scheduled
    /// over the measured run ([`scheduling`]).
    scheduled: String,
    /// Requests to the broker over the measured run, by client ([`requests::summary`]).
    requests: String,
}

/// Whether the engine keeps up with `rate` touchpoints/s under `g`, paced, with
/// the latency run's producer, action reader and input probe beside it on the
/// machine: once the last touchpoint of a short run is produced, it has
/// committed them all within a commit interval and [`KEPT_UP_WITHIN`]. An
/// engine that falls behind measures its backlog, not its latency.
pub fn keeps_up(bootstrap: &str, rate: u64, g: Guarantee) -> anyhow::Result<bool> {
    let within = |commit_ms| Duration::from_millis(commit_ms) + KEPT_UP_WITHIN;
    let run = paced(bootstrap, rate, TRIAL_SECONDS, g, &within)?;
    let within = within(run.commit_ms);
    eprintln!(
        "{g:?} at {rate} events/s: all committed {} after the last was produced",
        run.drained.map_or(
            format!("not within {} ms", within.as_millis()),
            |d| format!("{} ms", d.as_millis())
        )
    );
    Ok(run.drained.is_some_and(|d| d <= within))
}

/// Runs the latency measurement for `seconds` at `rate` events/s under `g`.
pub fn latency(bootstrap: &str, rate: u64, seconds: u64, g: Guarantee) -> anyhow::Result<()> {
    let Run {
        produced,
        drained,
        commit_ms,
        mut samples,
        readable,
        gc,
        measured_ms,
        metrics,
        warm,
        cpu_waited,
        scheduled,
        requests,
    } = paced(bootstrap, rate, seconds, g, &|_| Duration::from_secs(60))?;
    let name = g.as_str();
    let drained = drained.map_or("not within a minute after".into(), |d| {
        format!("{} ms after", d.as_millis())
    });
    crate::report::row!(
        "| event to action latency, {name}, {rate} events/s for {seconds} s after {WARMUP_SECONDS} s of warm-up at that rate ({produced} touchpoints measured, 4 partitions, commit_interval_ms {commit_ms}, bench producer linger.ms {PRODUCER_LINGER_MS}, lz4), the shipped journeys and policy | {}; every touchpoint committed {drained} the last was produced |",
        summary(&mut samples)
    );
    crate::report::row!(
        "| touchpoint produced to readable by a plain consumer, partition 0 of the input, during the {name} run (the broker's part of the latency, the engine left out) | {} |",
        probe_summary(&readable)
    );
    crate::report::row!(
        "| the slowest 1% of actions by touchpoint to decided, {name}, beside the plain consumer | {}; {} |",
        slowest_beside_probe(&samples, &readable),
        cpu_waited.map_or("the machine's CPU pressure not readable".into(), |w| format!(
            "a runnable thread waited for a core {:.0}% of the run (/proc/pressure/cpu)",
            100.0 * w
        ))
    );
    crate::report::row!(
        "| the threads on this machine's cores during the measured {name} run: seconds each ran and seconds it was ready to run but waited for a core (the kernel's scheduler statistics) | {scheduled} |"
    );
    crate::report::row!(
        "| requests to the broker during the measured {name} run, per second, by client (each client's librdkafka statistics, every second: rapport_kafka_requests_total) | {requests} |"
    );
    crate::report::row!(
        "| the local broker's stop-the-world GC pauses during the measured {name} run and its 3 s drain (its GC log) | {} |",
        gc_summary(gc, measured_ms)
    );
    crate::report::row!(
        "| touchpoint timestamp to the engine, {name}: received from its consumer, and its actions decided (rapport_record_latency_seconds after the warm-up: the bucket bound each quantile is under) | {} |",
        record_stages(&metrics, &warm)
    );
    crate::report::row!(
        "| where the engine spent the time, {name} (rapport_commit_phase_seconds: mean, and the bucket bound p99 is under) | {} |",
        phases(&metrics)
    );
    Ok(())
}

/// Produces at `rate` for [`WARMUP_SECONDS`] and then `seconds` to an engine
/// under `g`, with the action reader and the input probe running, and
/// collects what they saw, waiting at most `patience(commit interval in ms)`
/// after the last touchpoint for the engine to commit them all.
fn paced(
    bootstrap: &str,
    rate: u64,
    seconds: u64,
    g: Guarantee,
    patience: &dyn Fn(u64) -> Duration,
) -> anyhow::Result<Run> {
    let s = super::suffix();
    let input = format!("bench.latency.{s}");
    let actions = format!("bench.latency.actions.{s}");
    super::rt().block_on(ensure_topics(
        bootstrap,
        &[TopicSpec::new(&input, 4), TopicSpec::new(&actions, 4)],
    ))?;
    let dir = tempfile::tempdir()?;
    let cfg = config(bootstrap, &s, &input, &actions, dir.path(), g)?;
    let commit_ms = cfg.engine.commit_interval_ms;
    let state = Arc::new(StateStore::open(&cfg.state)?);
    let metrics = Metrics::new();
    let engine = runtime::start(cfg, state, metrics.clone())?;
    // The bench's own clients count their requests here.
    let bench = Metrics::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine.progress.ready.load(Ordering::SeqCst) {
        anyhow::ensure!(!engine.is_finished(), "engine stopped before it was ready");
        anyhow::ensure!(Instant::now() < deadline, "engine not ready after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }

    let sent: Sent = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = reader(bootstrap, &actions, &bench)?;
    let reading = {
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || read_actions(&reader, &sent, &stop))
    };
    let probe = probe(bootstrap, &input, &bench)?;
    let probing = {
        let stop = stop.clone();
        std::thread::spawn(move || read_probe(&probe, &stop))
    };
    let started_ms = chrono::Utc::now().timestamp_millis();
    let pressure = cpu_pressure_us();
    let mut warm = Vec::new();
    let broker = local_broker(bootstrap).map(|pid| pid.to_string());
    let of_broker = || broker.as_deref().map(Scheduled::of);
    let snapshot = || (Scheduled::of("self"), of_broker(), stolen_ticks());
    let mut sched_warm = snapshot();
    let asked = || [&metrics, &bench].map(requests::by_client);
    let mut asked_warm = asked();
    let produced = produce(bootstrap, &input, rate, seconds, &sent, &bench, &mut || {
        warm = by_label(&metrics.record_latency_seconds, |_, h| counts(h));
        sched_warm = snapshot();
        asked_warm = asked();
    })?;
    let sched_end = snapshot();
    let scheduled = scheduling(&sched_warm, &sched_end);
    let broker_ran = sched_warm
        .1
        .as_ref()
        .zip(sched_end.1.as_ref())
        .map(|(b, a)| a.since(b, &[""]).0);
    let requests = requests::summary(&asked_warm, &asked(), seconds, broker_ran);
    let drained = all_committed(
        &engine,
        produced + rate * WARMUP_SECONDS,
        patience(commit_ms),
    );
    // Let the last commit intervals drain before the reader stops.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let cpu_waited = pressure.zip(cpu_pressure_us()).map(|(before, after)| {
        let ms = (chrono::Utc::now().timestamp_millis() - started_ms).max(1);
        after.saturating_sub(before) as f64 / 1000.0 / ms as f64
    });
    let measured_ms = started_ms + 1000 * WARMUP_SECONDS as i64;
    let gc = broker_gc_pauses(
        bootstrap,
        measured_ms,
        chrono::Utc::now().timestamp_millis(),
    );
    let samples = reading
        .join()
        .map_err(|_| anyhow::anyhow!("action reader panicked"))??;
    let readable = probing
        .join()
        .map_err(|_| anyhow::anyhow!("input probe panicked"))??;
    engine.shutdown()?;
    if let Ok(dir) = std::env::var("RAPPORT_BENCH_DUMP") {
        dump(&dir, g, &samples, &readable)?;
    }
    // The broker's disk is shared by the runs.
    super::scale::delete_topics(
        bootstrap,
        &[
            input.clone(),
            actions.clone(),
            format!("bench.latency.dlq.{s}"),
            format!("bench.latency.decisions.{s}"),
            format!("bench-latency-{s}-profiles-changelog"),
            format!("bench-latency-{s}-identity-repartition"),
        ],
    );
    Ok(Run {
        produced,
        drained,
        commit_ms,
        samples,
        readable,
        gc,
        measured_ms,
        metrics,
        warm,
        cpu_waited,
        scheduled,
        requests,
    })
}

/// How the engine's threads, the bench's own and a local broker's were
/// scheduled between `before` and `after` (this process, the broker, the
/// machine's [`stolen_ticks`]): seconds on a core and seconds waiting for
/// one, by part, of the threads alive at both ends (the engine starts none in
/// between), and the share of the machine's CPU time the hypervisor took.
fn scheduling(
    before: &(Scheduled, Option<Scheduled>, (u64, u64)),
    after: &(Scheduled, Option<Scheduled>, (u64, u64)),
) -> String {
    let part = |label: &str, (ran, waited): (f64, f64)| {
        format!("{label} ran {ran:.1} s, waited {waited:.1} s")
    };
    let (b, a) = (&before.0, &after.0);
    let mut parts = Vec::new();
    let mut named = (0.0, 0.0);
    for (prefixes, label) in [
        (ENGINE_THREADS, "engine loop and workers"),
        (&["rapport-commit"], "commit thread"),
        (
            &["rdk:"],
            "librdkafka (the engine's clients and the bench's)",
        ),
        (&["rocksdb:"], "RocksDB"),
    ] {
        let (r, w) = a.since(b, prefixes);
        named = (named.0 + r, named.1 + w);
        parts.push(part(label, (r, w)));
    }
    let (r, w) = a.since(b, &[""]);
    parts.push(part(
        "the bench's producer, reader and probe",
        (r - named.0, w - named.1),
    ));
    if let (Some(b), Some(a)) = (&before.1, &after.1) {
        parts.push(part("the broker", a.since(b, &[""])));
    }
    let stolen = after.2 .0.saturating_sub(before.2 .0);
    let all = after.2 .1.saturating_sub(before.2 .1);
    parts.push(format!(
        "the hypervisor took {:.0}% of the machine's CPU time (steal)",
        100.0 * stolen as f64 / all.max(1) as f64
    ));
    parts.join("; ")
}

/// Microseconds during which some runnable thread of the machine waited for
/// a core, since boot (Linux's pressure stall information), if readable.
fn cpu_pressure_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// How long the engine takes from now to have committed `records` records
/// (`None`: not within `patience`).
fn all_committed(
    engine: &runtime::EngineHandle,
    records: u64,
    patience: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while engine.progress.committed.load(Ordering::SeqCst) < records {
        if started.elapsed() > patience || engine.is_finished() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Some(started.elapsed())
}

/// The engine's configuration for a run under `g`.
fn config(
    bootstrap: &str,
    s: &str,
    input: &str,
    actions: &str,
    dir: &std::path::Path,
    g: Guarantee,
) -> anyhow::Result<Config> {
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.to_owned();
    cfg.kafka.group_id = format!("bench-latency-{s}");
    cfg.kafka.touchpoint_topics = vec![input.to_owned()];
    cfg.kafka.action_topic = actions.to_owned();
    cfg.kafka.dead_letter_topic = format!("bench.latency.dlq.{s}");
    cfg.kafka.decisions_topic = format!("bench.latency.decisions.{s}");
    cfg.state.path = dir.join("state");
    cfg.http.listen = String::new();
    cfg.engine.guarantee = g;
    cfg.engine.wall_clock_timers = false;
    for client in [&mut cfg.kafka.consumer, &mut cfg.kafka.producer] {
        client.insert("statistics.interval.ms".into(), STATISTICS_MS.into());
    }
    workload(&mut cfg)?;
    Ok(cfg)
}

/// The touchpoints the latency is measured on (and the maximum rate it is
/// measured at half of): 10k simulated customers.
pub fn simulation() -> SimConfig {
    SimConfig {
        customers: 10_000,
        seed: 7,
        malformed_per_mille: 0,
    }
}

/// The engine's work in the latency run: the shipped journeys and delivery
/// policy (`deploy/journeys`), `RAPPORT_BENCH_COMMIT_MS` as the commit
/// interval, `RAPPORT_BENCH_PROFILE_CACHE` as the profile cache's MiB and
/// `RAPPORT_BENCH_PRODUCER` / `RAPPORT_BENCH_CONSUMER` as client settings.
pub fn workload(cfg: &mut Config) -> anyhow::Result<()> {
    super::client_overrides(cfg);
    if let Some(ms) = std::env::var("RAPPORT_BENCH_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.engine.commit_interval_ms = ms;
    }
    // RAPPORT_BENCH_PROFILE_CACHE overrides state.profile_cache_mb, as in the
    // other engine runs.
    if let Some(mb) = std::env::var("RAPPORT_BENCH_PROFILE_CACHE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.state.profile_cache_mb = mb;
    }
    let jdir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys");
    cfg.journeys = vec![format!("{}/*.toml", jdir.display())];
    cfg.compile_journeys(&jdir)?;
    Ok(())
}

/// Seconds of production at the measured rate before measuring starts: the
/// bench producer's connections, metadata and producer id, and the engine's
/// first fetches, are set up during it (the first second otherwise carried
/// most of the tail: 450-550 of its 1500 actions took over 100 ms, against a
/// handful in any later second).
pub const WARMUP_SECONDS: u64 = 2;
