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

mod requests;

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

/// How far before and after a slow action's touchpoint a stall of the plain
/// consumer counts as the same stall.
const BESIDE_MS: i64 = 20;

/// Of the slowest hundredth of actions by touchpoint to decided, how many had
/// their touchpoint handed over within [`BESIDE_MS`] of one the plain consumer
/// (which reads without any engine) received at least 60% as late: the stall
/// was before the engine had the record (the producer, the broker, or the
/// machine's cores), not in the engine.
fn slowest_beside_probe(samples: &[Sample], probe: &[(i64, i64)]) -> String {
    let mut probe: Vec<(i64, i64)> = probe.iter().map(|&(delay, at)| (at, delay)).collect();
    probe.sort_unstable();
    let mut slow: Vec<&Sample> = samples.iter().collect();
    slow.sort_unstable_by_key(|s| std::cmp::Reverse(s.decided_ms));
    slow.truncate(samples.len().div_ceil(100));
    let Some(fastest) = slow.last().map(|s| s.decided_ms) else {
        return "no actions".into();
    };
    let beside = slow
        .iter()
        .filter(|s| {
            let from = probe.partition_point(|p| p.0 < s.sent_ms - BESIDE_MS);
            probe[from..]
                .iter()
                .take_while(|p| p.0 <= s.sent_ms + BESIDE_MS)
                .any(|p| p.1 * 10 >= s.decided_ms * 6)
        })
        .count();
    format!(
        "{} actions, decided {fastest} ms or later: {beside} of them were handed to the producer within {BESIDE_MS} ms of a touchpoint the plain consumer received at least 60% as late (a stall before any engine had the record)",
        slow.len()
    )
}

/// Writes each action's sample (trigger sent, decided, total) and each probe
/// record (produced, delay) to `dir` as CSV, for a look at where the slow ones
/// lie in time (`RAPPORT_BENCH_DUMP=dir`).
fn dump(dir: &str, g: Guarantee, samples: &[Sample], probe: &[(i64, i64)]) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut a = String::from("sent_ms,decided_ms,total_us\n");
    for s in samples {
        let _ = writeln!(a, "{},{},{}", s.sent_ms, s.decided_ms, s.total_us);
    }
    std::fs::write(format!("{dir}/actions.{}.csv", g.as_str()), a)?;
    let mut p = String::from("produced_ms,delay_ms\n");
    for (delay, at) in probe {
        let _ = writeln!(p, "{at},{delay}");
    }
    std::fs::write(format!("{dir}/probe.{}.csv", g.as_str()), p)?;
    Ok(())
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

/// How many GC pauses the broker made, how long in all and at most, and the
/// seconds of the measured run (counted from `measured_ms`) the long ones
/// began in, to set beside the probe's slowest records.
fn gc_summary(pauses: Option<Vec<(i64, f64)>>, measured_ms: i64) -> String {
    let Some(pauses) = pauses else {
        return "not known: the broker is not a local deploy/kafka.sh broker writing a GC log"
            .into();
    };
    let total: f64 = pauses.iter().map(|p| p.1).sum();
    let longest = pauses.iter().map(|p| p.1).fold(0.0, f64::max);
    let long: Vec<i64> = pauses
        .iter()
        .filter(|p| p.1 >= 20.0)
        .map(|p| (p.0 - measured_ms) / 1000)
        .collect();
    format!(
        "{} pauses, {total:.0} ms in all, longest {longest:.1} ms; {} of 20 ms or more, begun in seconds {long:?}",
        pauses.len(),
        long.len()
    )
}

/// Each stage of `rapport_record_latency_seconds` since the warm-up ended
/// (`warm`: its counts then, see [`counts`]): how often, and the smallest
/// bucket bounds that half, 99% and 99.9% of the records are under; where
/// the input's part of the latency ends and the engine's begins.
fn record_stages(metrics: &Metrics, warm: &[Vec<u64>]) -> String {
    let mut i = 0;
    by_label(&metrics.record_latency_seconds, |stage, h| {
        let now = counts(h);
        let before = warm.get(i).cloned().unwrap_or_default();
        i += 1;
        let since: Vec<u64> = now
            .iter()
            .enumerate()
            .map(|(k, c)| c - before.get(k).copied().unwrap_or(0).min(*c))
            .collect();
        let n = since[0];
        let under = |q: f64| {
            let bound = h
                .get_bucket()
                .iter()
                .zip(&since[1..])
                .find(|(_, &c)| c as f64 >= n as f64 * q);
            bound.map_or("more".to_owned(), |(b, _)| {
                format!("{} ms", b.upper_bound() * 1e3)
            })
        };
        format!(
            "{stage} {n}x p50 <= {}, p99 <= {}, p999 <= {}",
            under(0.5),
            under(0.99),
            under(0.999)
        )
    })
    .join("; ")
}

/// A histogram's sample count, then each bucket's cumulative count.
fn counts(h: &prometheus::proto::Histogram) -> Vec<u64> {
    std::iter::once(h.get_sample_count())
        .chain(h.get_bucket().iter().map(|b| b.cumulative_count()))
        .collect()
}

/// Each phase of `rapport_commit_phase_seconds`: how often, its mean, and the
/// smallest bucket bound that 99% of them are under.
fn phases(metrics: &Metrics) -> String {
    let mut out = by_label(&metrics.commit_phase_seconds, |phase, h| {
        let n = h.get_sample_count();
        let mean_ms = h.get_sample_sum() * 1e3 / n.max(1) as f64;
        format!(
            "{phase} {n}x mean {mean_ms:.1} ms p99 <= {}",
            under(h, 0.99)
        )
    });
    // A commit started early, or the input held, because the changed profiles
    // filled the profile cache: the loop waited for the commit in flight.
    // An action held until the commit of its customer's earlier one.
    out.push(format!(
        "{} commits early, {} input holds, {} actions held for their customer's earlier ones",
        metrics.early_commits.get(),
        metrics.input_holds.get(),
        metrics.actions_held.get()
    ));
    out.join("; ")
}

/// `f` of each label value of histogram `vec` (its first label) and its histogram.
fn by_label<T>(
    vec: &prometheus::HistogramVec,
    mut f: impl FnMut(&str, &prometheus::proto::Histogram) -> T,
) -> Vec<T> {
    use prometheus::core::Collector;
    vec.collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| {
            f(
                m.get_label().first().map_or("", |l| l.value()),
                m.get_histogram(),
            )
        })
        .collect()
}

/// The smallest bucket bound of `h` that a share `q` of its samples are under.
fn under(h: &prometheus::proto::Histogram, q: f64) -> String {
    let n = h.get_sample_count() as f64;
    h.get_bucket()
        .iter()
        .find(|b| b.cumulative_count() as f64 >= n * q)
        .map_or("more".to_owned(), |b| {
            format!("{} ms", b.upper_bound() * 1e3)
        })
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

/// p50, p99 and p999 end to end, and p50 and p99 of each half.
fn summary(samples: &mut [Sample]) -> String {
    let n = samples.len();
    let at = |q: f64| ((n as f64 * q) as usize).min(n.saturating_sub(1));
    samples.sort_unstable_by_key(|s| s.total_us);
    let total = |q: f64| {
        samples
            .get(at(q))
            .map_or(f64::NAN, |s| s.total_us as f64 / 1e3)
    };
    let (p50, p99, p999) = (total(0.50), total(0.99), total(0.999));
    samples.sort_unstable_by_key(|s| s.decided_ms);
    let decided = |q: f64| samples.get(at(q)).map_or(-1, |s| s.decided_ms);
    let (d50, d99) = (decided(0.50), decided(0.99));
    samples.sort_unstable_by_key(|s| s.visible_ms);
    let visible = |q: f64| samples.get(at(q)).map_or(-1, |s| s.visible_ms);
    format!(
        "p50 {p50:.1} ms, p99 {p99:.1} ms, p999 {p999:.1} ms over {n} actions (touchpoint to action decided p50 {d50} ms, p99 {d99} ms; decided to read_committed receipt p50 {} ms, p99 {} ms)",
        visible(0.50),
        visible(0.99)
    )
}

/// Seconds of production at the measured rate before measuring starts: the
/// bench producer's connections, metadata and producer id, and the engine's
/// first fetches, are set up during it (the first second otherwise carried
/// most of the tail: 450-550 of its 1500 actions took over 100 ms, against a
/// handful in any later second).
pub const WARMUP_SECONDS: u64 = 2;

/// Produces simulated touchpoints at `rate` for [`WARMUP_SECONDS`] and then
/// `seconds`, noting when each of the latter was handed over; returns how many
/// were noted.
///
/// The touchpoints are made before the first is sent ([`prepare`]) and only
/// get their event time when they go out: made while sending, the simulator
/// and the JSON round trip took the bench's producer thread about 8 µs a
/// touchpoint, a sixth of a core at 23k touchpoints/s on a machine whose two
/// cores the engine and the broker already fill.
fn produce(
    bootstrap: &str,
    topic: &str,
    rate: u64,
    seconds: u64,
    sent: &Sent,
    bench: &Metrics,
    warmed_up: &mut dyn FnMut(),
) -> anyhow::Result<u64> {
    // The simulator's producer settings (murmur2, idempotent, lz4) but for linger.
    let producer: BaseProducer<Counted> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", PRODUCER_LINGER_MS.to_string())
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("statistics.interval.ms", STATISTICS_MS)
        .create_with_context(Counted(Requests::new(bench, "bench producer")))?;
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let warmup = rate * WARMUP_SECONDS;
    let total = warmup + rate * seconds;
    let mut sim = Simulator::new(simulation());
    let mut records: Vec<Prepared> = (0..total)
        .map(|n| Prepared::next(&mut sim, n >= warmup))
        .collect::<anyhow::Result<_>>()?;
    // Sized once: growing a table of a million entries took tens of
    // milliseconds under the lock the reader also takes, a pause in the input.
    // And its memory touched before the run: left to the first inserts of
    // the measured run, each landing on a page not yet mapped (huge pages
    // zeroed 2 MiB at a time), they held the producer for 150 ms and the
    // records due meanwhile reached the engine as one burst, which carried
    // most of the slowest hundredth of actions.
    let measured = (rate * seconds) as usize;
    let mut map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    map.reserve(measured);
    let now = (Instant::now(), 0, 0);
    for i in 0..measured {
        map.insert(format!("evt-warm-{i}"), now);
    }
    map.clear();
    drop(map);
    let started = Instant::now();
    for (n, r) in records.iter_mut().enumerate() {
        if n as u64 == warmup {
            warmed_up();
        }
        let due = Duration::from_secs_f64(n as f64 / rate as f64);
        // Sleep until this record is due, serving delivery reports, when it is
        // a millisecond or more away; records due sooner go out together.
        // Waiting in poll() instead spun a core the engine and the broker
        // need: it waits in whole milliseconds and retries until its deadline.
        loop {
            let ahead = due.saturating_sub(started.elapsed());
            if ahead < Duration::from_millis(1) {
                break;
            }
            producer.poll(Duration::ZERO);
            std::thread::sleep(ahead.min(Duration::from_millis(2)));
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        r.set_event_time(now_ms)?;
        if let Some(id) = r.event_id.take() {
            let mut map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            map.insert(id, (Instant::now(), now_ms, now_ms));
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
    Ok(total - warmup)
}

/// A simulated touchpoint made before the run, its event time written in
/// as it is sent.
struct Prepared {
    key: String,
    value: Vec<u8>,
    /// Where the 13 digits of the event time are in `value` (a malformed
    /// touchpoint may have none).
    time_at: Option<usize>,
    /// The event id of a measured touchpoint.
    event_id: Option<String>,
}

impl Prepared {
    /// The event time the simulator is given: 13 digits, as every epoch
    /// millisecond until the year 2286, so the real one fits in its place.
    const TIME: i64 = 9_999_999_999_999;
    const TIME_FIELD: &'static [u8] = b"\"event_time\":9999999999999";

    /// The simulator's next touchpoint; `measured` keeps its event id.
    fn next(sim: &mut Simulator, measured: bool) -> anyhow::Result<Prepared> {
        let r = sim.next_record(Self::TIME);
        let time_at = r
            .value
            .windows(Self::TIME_FIELD.len())
            .position(|w| w == Self::TIME_FIELD)
            .map(|at| at + Self::TIME_FIELD.len() - 13);
        let event_id = match measured {
            true => serde_json::from_slice::<Produced>(&r.value)
                .ok()
                .filter(|t| t.event_time == Self::TIME)
                .map(|t| t.event_id),
            false => None,
        };
        anyhow::ensure!(
            time_at.is_some() || r.malformed,
            "the simulator's touchpoint has no event time to fill in: {}",
            String::from_utf8_lossy(&r.value)
        );
        Ok(Prepared {
            key: r.key,
            value: r.value,
            time_at,
            event_id,
        })
    }

    /// Writes `ms` as the event time.
    fn set_event_time(&mut self, ms: i64) -> anyhow::Result<()> {
        let Some(at) = self.time_at else {
            return Ok(());
        };
        anyhow::ensure!(
            (1_000_000_000_000..=Self::TIME).contains(&ms),
            "event time {ms} is not 13 digits"
        );
        let mut rest = ms;
        for d in self.value[at..at + 13].iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        Ok(())
    }
}

/// Settings of the bench's own consumers (`role` names the group): no
/// commits, and fetches answered and taken as soon as a record is there.
fn eager(bootstrap: &str, role: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("bench-latency-{role}-{}", super::suffix()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.queue.backoff.ms", "1")
        .set("statistics.interval.ms", STATISTICS_MS);
    c
}

/// How often the bench's clients and the engine's report their statistics
/// (the requests they sent), ms: the measured run's counts are within a
/// second of its ends.
const STATISTICS_MS: &str = "1000";

/// A read_committed consumer of `topic` that has its partitions.
fn reader(bootstrap: &str, topic: &str, bench: &Metrics) -> anyhow::Result<BaseConsumer<Counted>> {
    let c: BaseConsumer<Counted> = eager(bootstrap, "reader")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Counted(Requests::new(bench, "action reader")))?;
    c.subscribe(&[topic])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.assignment()?.count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "reader not assigned after 30 s");
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            m?;
        }
    }
    Ok(c)
}

/// Reads actions with read_committed until `stop`; one sample for each action
/// its trigger touchpoint fired at once.
fn read_actions(
    c: &BaseConsumer<Counted>,
    sent: &Sent,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let arrived = Instant::now();
        let arrived_ms = chrono::Utc::now().timestamp_millis();
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
        let decided = m.timestamp().to_millis().unwrap_or(arrived_ms);
        let map = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(&(when, wall, event_time)) = map.get(id) {
            if event_time == at {
                samples.push(Sample {
                    sent_ms: wall,
                    total_us: arrived.duration_since(when).as_micros() as u64,
                    decided_ms: decided - wall,
                    visible_ms: arrived_ms - decided,
                });
            }
        }
    }
    Ok(samples)
}

/// A plain read_uncommitted consumer of partition 0 of the touchpoint topic,
/// fetching as eagerly as the engine does: what it sees is the latency the
/// bench producer and the broker add before any engine could have a record.
fn probe(bootstrap: &str, topic: &str, bench: &Metrics) -> anyhow::Result<BaseConsumer<Counted>> {
    let c: BaseConsumer<Counted> = eager(bootstrap, "probe")
        .create_with_context(Counted(Requests::new(bench, "plain consumer")))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::End)?;
    c.assign(&tpl)?;
    Ok(c)
}

/// Milliseconds from each record's producer timestamp (set when the bench
/// handed it over) to its receipt, with that timestamp, until `stop`.
fn read_probe(c: &BaseConsumer<Counted>, stop: &AtomicBool) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(t) = m?.timestamp().to_millis() {
            out.push((now - t, t));
        }
    }
    Ok(out)
}

/// p50, p99 and p999 of the probe's latencies after the warm-up, and the
/// seconds of the run its slowest hundredth was produced in.
fn probe_summary(samples: &[(i64, i64)]) -> String {
    let mut samples = samples.to_vec();
    // The warm-up's records are left out, as they are from the actions'.
    let first = samples.iter().map(|s| s.1).min().unwrap_or(0);
    let measured = first + 1000 * WARMUP_SECONDS as i64;
    samples.retain(|s| s.1 >= measured);
    let n = samples.len();
    if n == 0 {
        return "no records after the warm-up".into();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((n as f64 * q) as usize).min(n - 1)].0;
    let mut slow: Vec<i64> = samples[n - n / 100..]
        .iter()
        .map(|s| (s.1 - measured) / 1000)
        .collect();
    slow.sort_unstable();
    slow.dedup();
    format!(
        "p50 {} ms, p99 {} ms, p999 {} ms over {n} records; the slowest 1% produced in seconds {:?} of the measured run",
        at(0.5),
        at(0.99),
        at(0.999),
        slow
    )
}
