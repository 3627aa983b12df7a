//! Rapport's benchmarks: the in-process pipeline (`inprocess/`), changelog
//! restore, and Kafka to Kafka throughput under each guarantee against a bare
//! consume-produce loop.
//!
//! ```sh
//! CARGO_TARGET_DIR=~/.cache/rapport/target cargo bench --profile dev --bench pipeline -- all
//! ```
//! (`journeys`, `replay`, `restore`, `guarantees` or `collector` run one part;
//! `peers` runs the side-by-side comparison with the Kafka Streams peer, the
//! latency at half of Rapport's rate under each guarantee and memory and state
//! size at 10k, 1M and 10M customers (with what the machine allows
//! `exactly_once`: the Kafka work alone plus the processor's CPU), and writes
//! its rows into the README's results block with the machine and date;
//! `ceiling` runs that bound alone, `latency` the latency alone,
//! `scale` the memory and state size alone, `stitching` throughput with
//! identity stitching on against off.) The broker is
//! `RAPPORT_KAFKA_BOOTSTRAP`, or the local one from `deploy/kafka.sh`. Numbers are
//! printed as a Markdown table for the README.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport::config::{Config, Guarantee, StateConfig};
use rapport::ingest::Decoder;
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::metrics::Metrics;
use rapport::runtime::{self, restore_partition, Restorer};
use rapport::state::{StateStore, Stored};
use rapport_connectors::publish::send_when_room;
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_journeys::SHIPPED;
use rapport_model::Profile;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use std::path::PathBuf;

#[path = "ceiling/mod.rs"]
mod ceiling;
#[path = "collector/mod.rs"]
mod collector;
#[path = "inprocess/mod.rs"]
mod inprocess;
use inprocess::{breakdown, journey_cost, profile_codec, replay};
#[path = "latency/mod.rs"]
mod latency;
#[path = "measure/mod.rs"]
mod measure;
use measure::{
    cpu_seconds, local_broker, process_cpu_seconds, reset_peak_rss, status_mib, ThreadCpu,
};
#[path = "report/mod.rs"]
mod report;
#[path = "scale/mod.rs"]
mod scale;
#[path = "stitching/mod.rs"]
mod stitching;

/// The allocator the `rapport` binary uses, so the numbers are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const T0: i64 = 1_764_000_000_000;
static BYTES: AtomicU64 = AtomicU64::new(0);

fn main() -> anyhow::Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    println!("| benchmark | result |\n|---|---|");
    if which == "breakdown" {
        // RAPPORT_BENCH_EVENTS shortens both parts (the codec's profiles are
        // a tenth as many, ten touchpoints each), e.g. to count instructions
        // under callgrind.
        let events = bench_events(1_000_000)?;
        breakdown(events as usize)?;
        profile_codec((events / 10).max(20), 10)?;
    }
    if which == "all" || which == "in-process" || which == "replay" {
        let counts = match std::env::var("RAPPORT_BENCH_CUSTOMERS") {
            Ok(n) => vec![n.parse()?],
            Err(_) => vec![10_000, 1_000_000],
        };
        // RAPPORT_BENCH_EVENTS shortens a run, e.g. under callgrind.
        let events = bench_events(1_000_000)?;
        for customers in counts {
            replay(events as usize, customers)?;
        }
    }
    if which == "all" || which == "journeys" {
        for n in [1, 10, 100] {
            journey_cost(n, 200_000)?;
        }
    }
    if which == "peers" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        let machine = report::machine(&bootstrap, local_broker(&bootstrap).is_some());
        let date = report::now();
        peers(&bootstrap, bench_events(ISSUE_INPUT_EVENTS)?)?;
        // Latency at half of Rapport's maximum on its workload, each guarantee.
        for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
            latency::latency(&bootstrap, half_of_max(&bootstrap, g)?, 20, g)?;
        }
        for (customers, events) in scale_counts()? {
            scale::scale(&bootstrap, customers, events)?;
        }
        write_results(&machine, &date)?;
    }
    if which == "ceiling" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        let events = bench_events(ISSUE_INPUT_EVENTS)?;
        let (input, s) = bench_input(&bootstrap, events)?;
        ceiling::ceiling(&bootstrap, &input, events, &s)?;
        scale::delete_topics(&bootstrap, &[input]);
    }
    if which == "latency" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        for g in chosen([Guarantee::ExactlyOnce, Guarantee::AtLeastOnce]) {
            latency::latency(&bootstrap, half_of_max(&bootstrap, g)?, 20, g)?;
        }
    }
    if which == "scale" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        for (customers, events) in scale_counts()? {
            scale::scale(&bootstrap, customers, events)?;
        }
    }
    if which == "stitching" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        stitching::stitching(&bootstrap, 200_000)?;
    }
    if which == "all" || which == "collector" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        for clients in [8, 32] {
            collector::collector(&bootstrap, 200_000, clients)?;
        }
    }
    if which == "all" || which == "restore" || which == "guarantees" {
        let bootstrap = rapport::broker::ensure()?.bootstrap;
        if which != "guarantees" {
            restore(&bootstrap, 200_000)?;
        }
        if which != "restore" {
            guarantees(&bootstrap, bench_events(ISSUE_INPUT_EVENTS)?)?;
        }
    }
    Ok(())
}

/// The customers (and events) `-- scale` and `-- peers` measure memory and
/// state size at: 10k, 100k (ten events each, the issue's input's shape), 1M
/// and 10M (one each); or `RAPPORT_BENCH_CUSTOMERS` with at least 200k events.
fn scale_counts() -> anyhow::Result<Vec<(u64, u64)>> {
    Ok(match std::env::var("RAPPORT_BENCH_CUSTOMERS") {
        Ok(n) => {
            let n: u64 = n.parse()?;
            vec![(n, bench_events(n.max(200_000))?)]
        }
        Err(_) => [
            (10_000, 200_000),
            (100_000, 1_000_000),
            (1_000_000, 1_000_000),
            (10_000_000, 10_000_000),
        ]
        .into_iter()
        .map(|(c, e)| Ok((c, bench_events(e)?)))
        .collect::<anyhow::Result<_>>()?,
    })
}

/// Writes this run's rows into the README's results block, headed by the
/// machine and the date (`RAPPORT_BENCH_README=off` leaves the README alone).
fn write_results(machine: &str, date: &str) -> anyhow::Result<()> {
    if std::env::var("RAPPORT_BENCH_README").is_ok_and(|v| v == "off") {
        return Ok(());
    }
    let command =
        "CARGO_TARGET_DIR=~/.cache/rapport/target cargo bench --profile dev --bench pipeline -- peers";
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md");
    report::write_readme(
        &readme,
        &report::block(command, machine, date, &report::rows()),
    )?;
    eprintln!("wrote this run's results into {}", readme.display());
    Ok(())
}

/// Half of the engine's maximum rate under `g` on the latency run's own
/// workload (its simulated customers, the shipped journeys and delivery
/// policy): the rate latency is measured at. Or `RAPPORT_BENCH_RATE`.
///
/// The maximum is the highest rate the engine keeps up with while the
/// latency run's producer, action reader and probe share the machine with it
/// ([`latency::keeps_up`]): tried from its rate over a backlog of 600k
/// touchpoints (no producer beside it) down, a fifth less each time. On two
/// cores the producer's share is large enough that half of the backlog rate
/// is more than the engine keeps up with paced, and latency measured there
/// is the growing backlog's.
fn half_of_max(bootstrap: &str, g: Guarantee) -> anyhow::Result<u64> {
    if let Ok(r) = std::env::var("RAPPORT_BENCH_RATE") {
        return Ok(r.parse()?);
    }
    const EVENTS: u64 = 600_000;
    let (input, s) = simulated_input(bootstrap, EVENTS, latency::simulation())?;
    let run = engine_run_with(
        bootstrap,
        &input,
        EVENTS,
        g,
        &format!("latency-max.{s}"),
        None,
        &|cfg| latency::workload(cfg).expect("the shipped journeys compile"),
        &mut || Ok(true),
    )?;
    let mut rate = run.rate as u64;
    let mut tried = Vec::new();
    while rate > 1000 && !latency::keeps_up(bootstrap, rate, g)? {
        tried.push(rate);
        rate = rate * 4 / 5;
    }
    report::row!(
        "| Rapport's maximum on the latency workload, {} | {:.0} events/s over a backlog of {EVENTS} touchpoints; paced with the latency run's producer, reader and probe beside it, kept up at {rate} events/s (not at {tried:?}): latency is measured at half of that |",
        g.as_str(),
        run.rate
    );
    Ok(rate / 2)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn suffix() -> String {
    format!(
        "{}.{}",
        std::process::id(),
        chrono::Utc::now().timestamp_millis()
    )
}

/// Restore rate from a compacted changelog into a fresh RocksDB.
fn restore(bootstrap: &str, profiles: u64) -> anyhow::Result<()> {
    let topic = format!("bench.restore.{}", suffix());
    let mut spec = TopicSpec::new(&topic, 4);
    spec.configs
        .push(("cleanup.policy".into(), "compact".into()));
    rt().block_on(ensure_topics(bootstrap, &[spec]))?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut sim = Simulator::new(SimConfig {
        customers: profiles,
        seed: 2,
        malformed_per_mille: 0,
    });
    let decoder = Decoder::new(1 << 20)?;
    for i in 0..profiles {
        let id = Simulator::customer_id(i);
        let mut p = Profile::new(&id);
        for k in 0..5 {
            // Realistic bodies: a few simulated touchpoints applied to each profile.
            let r = sim.next_record(T0 + k * 1000);
            let mut tp = decoder.decode(&r.value)?;
            tp.customer_id = Some(id.clone());
            p.apply(&tp);
        }
        let bytes = Stored {
            sources: [(1, (i % 4) as i32, i as i64)].into_iter().collect(),
            profile: p,
            ..Default::default()
        }
        .encode();
        if i < 1000 {
            BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        let rec = BaseRecord::<str, [u8]>::to(&topic)
            .key(&id)
            .payload(&bytes)
            .partition((i % 4) as i32);
        send_when_room(&producer, rec)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let dir = tempfile::tempdir()?;
    let state = StateStore::open(&StateConfig {
        path: dir.path().to_owned(),
        ..Default::default()
    })?;
    let mut consumer = Restorer::new(&rapport::config::KafkaConfig {
        bootstrap_servers: bootstrap.to_owned(),
        group_id: format!("bench-{}", suffix()),
        ..Default::default()
    })?;
    let started = Instant::now();
    let mut n = 0;
    for p in 0..4 {
        n += restore_partition(&mut consumer, &topic, &state, p)?;
    }
    let secs = started.elapsed().as_secs_f64();
    report::row!(
        "| changelog restore, {n} profile records (about {} bytes each) into a fresh RocksDB | {:.0} profiles/s |",
        BYTES.load(Ordering::Relaxed) / 1000,
        n as f64 / secs
    );
    Ok(())
}

/// Touchpoints in the input of the engine runs (guarantees, peers): 1M, ten
/// per customer on average, so a run covers the cold start of every customer
/// and their steady state. `RAPPORT_BENCH_EVENTS` shortens it.
const ISSUE_INPUT_EVENTS: u64 = 1_000_000;

/// `RAPPORT_BENCH_EVENTS`, or `default`.
fn bench_events(default: u64) -> anyhow::Result<u64> {
    Ok(match std::env::var("RAPPORT_BENCH_EVENTS") {
        Ok(n) => n.parse()?,
        Err(_) => default,
    })
}

/// Customers in the input of the engine runs (guarantees, peers, and the
/// maximum rate the latency is measured at half of).
const BENCH_CUSTOMERS: u64 = 100_000;

/// Kafka to Kafka: a bare consume-produce loop, then the engine under each guarantee.
/// A fresh 4-partition input topic holding `events` simulated touchpoints of
/// 100k customers (no malformed records); returns its name and a run suffix.
fn bench_input(bootstrap: &str, events: u64) -> anyhow::Result<(String, String)> {
    simulated_input(
        bootstrap,
        events,
        SimConfig {
            customers: BENCH_CUSTOMERS,
            seed: 3,
            malformed_per_mille: 0,
        },
    )
}

/// A fresh 4-partition input topic holding `events` touchpoints simulated
/// with `sim`; returns its name and a run suffix.
fn simulated_input(
    bootstrap: &str,
    events: u64,
    sim: SimConfig,
) -> anyhow::Result<(String, String)> {
    let s = suffix();
    let input = format!("bench.touchpoints.{s}");
    rt().block_on(ensure_topics(bootstrap, &[TopicSpec::new(&input, 4)]))?;
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let mut sim = Simulator::new(sim);
    rapport_connectors::publish::publish(
        bootstrap,
        &input,
        &mut sim,
        0,
        Some(events),
        &stop,
        &sent,
    )?;
    Ok((input, s))
}

/// The guarantees of `all` a run measures: `RAPPORT_BENCH_ONLY=exactly_once`
/// (or `at_least_once`) picks one, in `-- guarantees` and `-- latency`.
fn chosen(all: [Guarantee; 2]) -> Vec<Guarantee> {
    let only = std::env::var("RAPPORT_BENCH_ONLY").ok();
    all.into_iter()
        .filter(|g| only.as_deref().is_none_or(|o| o == g.as_str()))
        .collect()
}

fn guarantees(bootstrap: &str, events: u64) -> anyhow::Result<()> {
    let (input, s) = bench_input(bootstrap, events)?;
    let secs = passthrough(bootstrap, &input, events, &s, &[])?;
    let bare = events as f64 / secs;
    report::row!("| bare rdkafka consume-produce passthrough, {events} records, 4 partitions | {bare:.0} records/s |");
    for g in chosen([Guarantee::AtLeastOnce, Guarantee::ExactlyOnce]) {
        let name = g.as_str();
        let run = engine_run(bootstrap, &input, events, g, &format!("{name}.{s}"), None)?;
        let found = |f: &str| run.metrics.profile_lookups.with_label_values(&[f]).get();
        report::row!(
            "| engine, {name}, {events} touchpoints, 100k customers, 4 partitions, {} worker threads | {:.0} events/s ({:.0}% of passthrough), {:.1} µs CPU per event ({}), {:.2} cores busy, peak RSS {} MiB; profiles found decoded {}, encoded {}, in RocksDB {}, new {}; {} commits, {} of them early, {} changelog parts written ahead; {}; the machine {:.0}% idle |",
            run.workers,
            run.rate,
            100.0 * run.rate / bare,
            run.cpu_us_per_event,
            run.cpu_split,
            run.cores,
            run.peak_mib,
            found("decoded"),
            found("encoded"),
            found("rocksdb"),
            found("new"),
            run.metrics.commits.get(),
            run.metrics.early_commits.get(),
            run.metrics
                .commit_phase_seconds
                .with_label_values(&["ahead"])
                .get_sample_count(),
            run.broker_us_per_event.map_or("the broker is not a local process".into(), |us| format!(
                "the broker beside it {us:.1} µs CPU per event ({})",
                run.broker_split.as_deref().unwrap_or_default()
            )),
            100.0 * run.machine_idle,
        );
    }
    delete_input(bootstrap, &input, &s);
    Ok(())
}

/// Deletes the input topic `bench_input` made and the passthroughs' output:
/// a gigabyte or so a run, which the broker would otherwise keep, and carry
/// into every later run's measurements.
fn delete_input(bootstrap: &str, input: &str, s: &str) {
    scale::delete_topics(
        bootstrap,
        &[input.to_owned(), format!("bench.passthrough.{s}")],
    );
}

/// `RAPPORT_BENCH_PRODUCER="linger.ms=1,..."` and `RAPPORT_BENCH_CONSUMER`
/// add librdkafka settings to the engine's producers and consumer.
fn client_overrides(cfg: &mut Config) {
    for (var, map) in [
        ("RAPPORT_BENCH_PRODUCER", &mut cfg.kafka.producer),
        ("RAPPORT_BENCH_CONSUMER", &mut cfg.kafka.consumer),
    ] {
        if let Ok(extra) = std::env::var(var) {
            for kv in extra.split(',').filter(|s| !s.is_empty()) {
                if let Some((k, v)) = kv.split_once('=') {
                    map.insert(k.into(), v.into());
                }
            }
        }
    }
}

/// One timed engine run.
struct EngineRun {
    workers: usize,
    rate: f64,
    cpu_us_per_event: f64,
    cores: f64,
    peak_mib: u64,
    /// Where the CPU went, µs per event by thread group ([`ThreadCpu`]).
    cpu_split: String,
    /// CPU the local broker's JVM used meanwhile, µs per event (none when
    /// the broker is not a process on this machine).
    broker_us_per_event: Option<f64>,
    /// Where the local broker's CPU went, µs per event by thread group
    /// ([`measure::broker_split`]).
    broker_split: Option<String>,
    /// The share of the machine's CPU nobody used during the run.
    machine_idle: f64,
    /// Actions on the run's action topic, read with read_committed.
    actions: u64,
    /// The engine's metrics at the end of the run.
    metrics: Metrics,
}

/// Runs the engine in this process over `input` under `g` until all of it is
/// committed, timed from its first record; with `journeys`, only those shipped
/// journey files (and no delivery policy). The run's topics are deleted
/// afterwards (its actions counted): the broker's disk is shared by the runs.
fn engine_run(
    bootstrap: &str,
    input: &str,
    events: u64,
    g: Guarantee,
    tag: &str,
    journeys: Option<&[&str]>,
) -> anyhow::Result<EngineRun> {
    let mut done = || Ok(true);
    let run = engine_run_with(
        bootstrap,
        input,
        events,
        g,
        tag,
        journeys,
        &|_| {},
        &mut done,
    );
    let mut topics: Vec<String> = ["actions", "dlq", "decisions"]
        .iter()
        .map(|kind| format!("bench.{kind}.{tag}"))
        .collect();
    for internal in ["profiles-changelog", "identity-repartition"] {
        topics.push(format!("bench-{tag}-{internal}"));
    }
    scale::delete_topics(bootstrap, &topics);
    run
}

/// [`engine_run`] with `tweak` applied to the configuration last, and `done`
/// polled once `events` records are committed: the run ends when it answers
/// true (work that follows the input, such as a repartition topic).
#[allow(clippy::too_many_arguments)]
fn engine_run_with(
    bootstrap: &str,
    input: &str,
    events: u64,
    g: Guarantee,
    tag: &str,
    journeys: Option<&[&str]>,
    tweak: &dyn Fn(&mut Config),
    done: &mut dyn FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<EngineRun> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.to_owned();
    cfg.kafka.group_id = format!("bench-{tag}");
    cfg.kafka.touchpoint_topics = vec![input.to_owned()];
    cfg.kafka.action_topic = format!("bench.actions.{tag}");
    cfg.kafka.dead_letter_topic = format!("bench.dlq.{tag}");
    cfg.kafka.decisions_topic = format!("bench.decisions.{tag}");
    cfg.state.path = dir.path().join("state");
    cfg.http.listen = String::new();
    cfg.engine.guarantee = g;
    cfg.engine.wall_clock_timers = false;
    if let Some(files) = journeys {
        let jdir = dir.path().join("journeys");
        std::fs::create_dir_all(&jdir)?;
        for (file, text) in SHIPPED.iter().filter(|(f, _)| files.contains(f)) {
            std::fs::write(jdir.join(file), text)?;
        }
        cfg.journeys = vec![format!("{}/*.toml", jdir.display())];
        cfg.compile_journeys(&jdir)?;
    }
    if let Some(n) = std::env::var("RAPPORT_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.engine.worker_threads = n;
    }
    // RAPPORT_BENCH_PROFILE_CACHE overrides state.profile_cache_mb, as in `-- scale`.
    if let Some(mb) = std::env::var("RAPPORT_BENCH_PROFILE_CACHE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.state.profile_cache_mb = mb;
    }
    // RAPPORT_BENCH_ROCKSDB="block_cache_mb=32,write_buffer_mb=16" overrides those
    // memory settings, to compare splits of one budget.
    for kv in std::env::var("RAPPORT_BENCH_ROCKSDB")
        .unwrap_or_default()
        .split(',')
    {
        match kv.split_once('=') {
            Some(("block_cache_mb", v)) => cfg.state.block_cache_mb = v.parse()?,
            Some(("write_buffer_mb", v)) => cfg.state.write_buffer_mb = v.parse()?,
            Some(("encoded_cache_mb", v)) => cfg.state.encoded_cache_mb = v.parse()?,
            _ => {}
        }
    }
    let workers = cfg.engine.workers();
    client_overrides(&mut cfg);
    if let Some(ms) = std::env::var("RAPPORT_BENCH_COMMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.engine.commit_interval_ms = ms;
    }
    tweak(&mut cfg);
    let action_topic = cfg.kafka.action_topic.clone();
    let state = Arc::new(StateStore::open(&cfg.state)?);
    let metrics = Metrics::new();
    let engine = runtime::start(cfg, state, metrics.clone())?;
    // Timed from the first record, like the passthrough loop.
    while engine.progress.handled.load(Ordering::SeqCst) == 0 {
        anyhow::ensure!(!engine.is_finished(), "engine stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let threads_before = ThreadCpu::now();
    let broker = local_broker(bootstrap);
    let broker_before = broker.and_then(process_cpu_seconds);
    let broker_threads = broker.map(|pid| ThreadCpu::of(&pid.to_string()));
    let machine_before = measure::machine_ticks();
    reset_peak_rss();
    while engine.progress.committed.load(Ordering::SeqCst) < events || !done()? {
        anyhow::ensure!(!engine.is_finished(), "engine stopped");
        std::thread::sleep(Duration::from_millis(2));
    }
    let peak = status_mib("VmHWM:");
    let machine_idle = measure::idle_share(machine_before, measure::machine_ticks());
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let cpu_split = ThreadCpu::now().split_since(&threads_before, cpu, events);
    let broker_us_per_event = broker
        .and_then(process_cpu_seconds)
        .zip(broker_before)
        .map(|(after, before)| (after - before) * 1e6 / events as f64);
    let broker_split = broker.zip(broker_threads).map(|(pid, before)| {
        measure::broker_split(&ThreadCpu::of(&pid.to_string()), &before, events)
    });
    engine.shutdown()?;
    Ok(EngineRun {
        workers,
        rate: events as f64 / secs,
        cpu_us_per_event: cpu * 1e6 / events as f64,
        cores: cpu / secs,
        peak_mib: peak,
        cpu_split,
        broker_us_per_event,
        broker_split,
        machine_idle,
        actions: count_committed(bootstrap, &action_topic)?,
        metrics,
    })
}

/// Records in `topic` visible to read_committed readers.
fn count_committed(bootstrap: &str, topic: &str) -> anyhow::Result<u64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-count-{}", suffix()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let ends: u64 = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .map_or(0, |(_, hi)| hi.max(0) as u64)
        })
        .sum();
    c.subscribe(&[topic])?;
    let (mut n, mut idle) = (0u64, Instant::now());
    // Transaction markers take offsets too: read until nothing arrives for a while.
    while idle.elapsed() < Duration::from_secs(3) && n < ends {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            m?;
            n += 1;
            idle = Instant::now();
        }
    }
    Ok(n)
}

/// The peers side by side on one broker and one input topic, one after the
/// other: the bare rdkafka passthrough with librdkafka's defaults and tuned,
/// the Kafka Streams peer (`benches/peer.sh`) under exactly_once_v2 and
/// at_least_once, and Rapport under exactly_once and at_least_once running the
/// same three journeys as the peer (no delivery policy), with the actions each
/// produced and the ratios between them.
fn peers(bootstrap: &str, events: u64) -> anyhow::Result<()> {
    let (input, s) = bench_input(bootstrap, events)?;
    // The last passthrough is the tuned one: the real ceiling.
    let mut tuned = f64::NAN;
    for (label, extra) in [
        ("librdkafka defaults", &[][..]),
        (
            "tuned (fetch.queue.backoff.ms=5, queued.min.messages=1000000)",
            &[
                ("fetch.queue.backoff.ms", "5"),
                ("queued.min.messages", "1000000"),
            ][..],
        ),
    ] {
        let secs = passthrough(
            bootstrap,
            &input,
            events,
            &format!("{s}.{}", extra.len()),
            extra,
        )?;
        report::row!(
            "| bare rdkafka passthrough, {label}, {events} records, 4 partitions | {:.0} records/s |",
            events as f64 / secs
        );
        tuned = events as f64 / secs;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/peer.sh");
    // The peer's action counts (read_committed), from its report on stderr:
    // `peer.actions.<guarantee>.<run>: N records {...}`.
    let mut counts: Vec<u64> = Vec::new();
    let mut peer: Vec<PeerRow> = Vec::new();
    match std::process::Command::new("bash")
        .arg(&script)
        .args([bootstrap, &input, &events.to_string()])
        .output()
    {
        Ok(out) if out.status.success() => {
            let err = String::from_utf8_lossy(&out.stderr);
            eprint!("{err}");
            counts = err
                .lines()
                .filter(|l| l.starts_with("peer.actions."))
                .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
                .collect();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(m) = PeerRow::parse(line) {
                    peer.push(m);
                }
                report::push(line.to_owned());
            }
        }
        Ok(out) => {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            report::row!(
                "| Kafka Streams peer | not run: benches/peer.sh exited with {} |",
                out.status
            );
        }
        Err(e) => report::row!("| Kafka Streams peer | not run: {e} |"),
    }
    let mut rapport: Vec<(f64, f64)> = Vec::new();
    let three = [
        "hesitation_guide.toml",
        "recovery_offer.toml",
        "post_delivery_survey.toml",
    ];
    for g in [Guarantee::ExactlyOnce, Guarantee::AtLeastOnce] {
        let name = g.as_str();
        let run = engine_run(
            bootstrap,
            &input,
            events,
            g,
            &format!("peers.{name}.{s}"),
            Some(&three),
        )?;
        report::row!(
            "| Rapport, {name}, {events} touchpoints, 4 partitions, the peer's three journeys, {} worker threads | {:.0} events/s, {:.1} µs CPU per event, {:.2} cores busy, peak RSS {} MiB (the bench's process, which also ran the passthroughs; `rapport run` alone in the rows at the end), {} actions |",
            run.workers, run.rate, run.cpu_us_per_event, run.cores, run.peak_mib, run.actions
        );
        counts.push(run.actions);
        rapport.push((run.rate, run.cpu_us_per_event));
    }
    let agree = counts.len() == 4 && counts.iter().all(|&n| n == counts[0]);
    report::row!(
        "| actions produced, read_committed (peer exactly_once_v2, at_least_once; Rapport exactly_once, at_least_once) | {counts:?}: {} |",
        if agree { "they agree" } else { "they DIFFER" }
    );
    if let ([eos, alos], [peer_eos, peer_alos]) = (&rapport[..], &peer[..]) {
        report::row!(
            "| ratios: Rapport against the Kafka Streams peer, exactly_once / exactly_once_v2 and at_least_once / at_least_once | {:.1}x / {:.1}x the events/s, {:.1}x / {:.1}x less CPU per event; Rapport exactly_once at {:.0}% of the tuned passthrough |",
            eos.0 / peer_eos.rate,
            alos.0 / peer_alos.rate,
            peer_eos.cpu_us / eos.1,
            peer_alos.cpu_us / alos.1,
            100.0 * eos.0 / tuned
        );
    }
    // What the machine allows: the Kafka work alone plus the processor's CPU.
    ceiling::ceiling(bootstrap, &input, events, &s)?;
    delete_input(bootstrap, &input, &s);
    Ok(())
}

/// The numbers of one of the Kafka Streams peer's rows: `| ... | N events/s,
/// X µs CPU per event, ...`.
struct PeerRow {
    rate: f64,
    cpu_us: f64,
}

impl PeerRow {
    fn parse(line: &str) -> Option<PeerRow> {
        let result = line.trim_end_matches('|').rsplit('|').next()?;
        let mut parts = result.split(',').map(str::trim);
        let rate = parts.next()?.strip_suffix(" events/s")?.parse().ok()?;
        let cpu_us = parts
            .next()?
            .strip_suffix(" µs CPU per event")?
            .parse()
            .ok()?;
        Some(PeerRow { rate, cpu_us })
    }
}

fn passthrough(
    bootstrap: &str,
    input: &str,
    events: u64,
    s: &str,
    consumer_settings: &[(&str, &str)],
) -> anyhow::Result<f64> {
    let out = format!("bench.passthrough.{s}");
    rt().block_on(ensure_topics(bootstrap, &[TopicSpec::new(&out, 4)]))?;
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-passthrough-{s}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true");
    for (k, v) in consumer_settings {
        cc.set(*k, *v);
    }
    let consumer: BaseConsumer = cc.create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create()?;
    consumer.subscribe(&[input])?;
    let mut started = None;
    let mut n = 0;
    while n < events {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            started.get_or_insert_with(Instant::now);
            let mut rec =
                BaseRecord::<[u8], [u8]>::to(&out).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            send_when_room(&producer, rec)?;
            producer.poll(Duration::ZERO);
            n += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(started
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(f64::NAN))
}
