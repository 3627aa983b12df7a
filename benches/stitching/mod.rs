//! What identity stitching costs: Rapport under exactly_once over one input in
//! which 30% of the customers browse anonymously before they log in, with
//! `identity.stitching` off and on (the same input topic, separate groups and
//! output topics). Each run is a process of its own (this benchmark binary
//! again), so its CPU time and peak RSS are its own. A run is timed like
//! [`super::engine_run`], from its first record until its committed offsets
//! reach the end of the input; with stitching on, also until the group has
//! consumed its repartition topic, so that every merge has arrived and every
//! held touchpoint is applied. The rows say how many merges the on run made and
//! that the off run made none: a run that stitched nothing measures nothing,
//! and the benchmark fails. Both runs use the engine's default settings;
//! `RAPPORT_BENCH_CONSUMER` (see `engine_run`) changes the consumer's for both,
//! e.g. `fetch.wait.max.ms=10`, to see how much of the difference is the
//! consumer waiting on fetches of the repartition topic, which has records only
//! as often as transactions commit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rapport::config::{Guarantee, BOOTSTRAP_ENV};
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport_connectors::publish::send_when_room;
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_model::testing::tp;
use rapport_model::{Channel, EventType, Touchpoint};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

const PARTITIONS: i32 = 4;
const CUSTOMERS: u64 = 100_000;
/// Set in a run's own process: the [`Request`] it carries out, as JSON.
const RUN_ENV: &str = "RAPPORT_BENCH_STITCH_RUN";
/// What a run's process prints before its [`Report`].
const REPORT: &str = "stitching-report ";
const WAIT: Duration = Duration::from_secs(10);

/// True for the customers who browse anonymously before they log in: those
/// whose number ends in 0, 1 or 2 (30%).
fn anonymous_first(i: u64) -> bool {
    i % 10 < 3
}

/// How many touchpoints such a customer sends anonymously before the login (1 to 3).
fn anonymous_visits(i: u64) -> u8 {
    1 + ((i / 10) % 3) as u8
}

/// The anonymous (device) id of customer number `i`.
fn anonymous_id(i: u64) -> String {
    format!("anon-{i:06}")
}

/// The benchmark's input topic and what it holds.
#[derive(Debug)]
struct Input {
    topic: String,
    suffix: String,
    /// Records in the topic.
    events: u64,
    /// Touchpoints carrying only an anonymous id, before their customer's login.
    anonymous: u64,
    /// Identify touchpoints (both ids), one per customer that logged in.
    identifies: u64,
    /// Touchpoints of logged-in customers (both ids), the identify aside.
    after_login: u64,
    /// Of those, carrying only the anonymous id (a tab still logged out).
    late_anonymous: u64,
}

/// One run, as the parent asks a run's process for it.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    stitching: bool,
    input: String,
    events: u64,
    tag: String,
}

/// One run's results, as its process hands them to the parent.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    workers: usize,
    rate: f64,
    cpu_us_per_event: f64,
    cores: f64,
    peak_mib: u64,
    actions: u64,
    dead_letters: u64,
    merged: u64,
    conflicts: u64,
    held: u64,
    released: u64,
    forwarded: u64,
    /// With stitching on: seconds the run went on after its input was
    /// committed, until its repartition topic was consumed.
    tail_secs: Option<f64>,
}

/// The benchmark over `events` touchpoints, off and on in turn
/// (`RAPPORT_BENCH_PASSES` times, 3 unless set); in a run's own process, that run.
pub fn stitching(bootstrap: &str, events: u64) -> anyhow::Result<()> {
    if let Ok(request) = std::env::var(RUN_ENV) {
        return run(bootstrap, &serde_json::from_str(&request)?);
    }
    // The machine is shared: passes alternate off and on, and rows give medians.
    let passes = match std::env::var("RAPPORT_BENCH_PASSES") {
        Ok(n) => n.parse()?,
        Err(_) => 3,
    };
    let input = publish_input(bootstrap, events)?;
    let mut tags = Vec::new();
    let outcome = run_passes(bootstrap, &input, passes, &mut tags);
    delete_topics(bootstrap, &input, &tags);
    let (off, on, failed) = outcome?;
    print_rows(&input, &off, &on);
    failed.map_or(Ok(()), Err)
}

/// The runs of each pass, off then on, noting each run's tag in `tags`: the
/// reports, and the first run that did not do what it measures.
fn run_passes(
    bootstrap: &str,
    input: &Input,
    passes: usize,
    tags: &mut Vec<String>,
) -> anyhow::Result<(Vec<Report>, Vec<Report>, Option<anyhow::Error>)> {
    let (mut off, mut on, mut failed) = (Vec::new(), Vec::new(), None);
    for pass in 0..passes {
        for stitching in [false, true] {
            let name = if stitching { "on" } else { "off" };
            let request = Request {
                stitching,
                input: input.topic.clone(),
                events: input.events,
                tag: format!("stitch-{name}.{}.{pass}", input.suffix),
            };
            tags.push(request.tag.clone());
            let r = spawn_run(bootstrap, &request)?;
            eprintln!("stitching {name}, pass {pass}: {r:?}");
            if let Err(e) = check(input, stitching, &r) {
                failed.get_or_insert(e);
            }
            match stitching {
                true => on.push(r),
                false => off.push(r),
            }
        }
    }
    Ok((off, on, failed))
}

/// Deletes the input and every run's topics (the broker's disk is shared).
fn delete_topics(bootstrap: &str, input: &Input, tags: &[String]) {
    let mut topics = vec![input.topic.clone()];
    for tag in tags {
        for kind in ["actions", "dlq", "decisions", "identity-events"] {
            topics.push(format!("bench.{kind}.{tag}"));
        }
        for internal in ["profiles-changelog", "identity-repartition"] {
            topics.push(format!("bench-{tag}-{internal}"));
        }
    }
    super::scale::delete_topics(bootstrap, &topics);
}

/// Writes the input: the simulator's touchpoints of 100k customers, reshaped
/// for the anonymous-first customers, each keyed by its identity with the
/// murmur2 partitioner.
fn publish_input(bootstrap: &str, events: u64) -> anyhow::Result<Input> {
    let suffix = super::suffix();
    let topic = format!("bench.stitching.{suffix}");
    super::rt().block_on(ensure_topics(
        bootstrap,
        &[TopicSpec::new(&topic, PARTITIONS)],
    ))?;
    let producer = rapport_connectors::publish::producer(bootstrap)?;
    let mut sim = Simulator::new(SimConfig {
        customers: CUSTOMERS,
        seed: 3,
        malformed_per_mille: 0,
    });
    let mut input = Input {
        topic,
        suffix,
        events: 0,
        anonymous: 0,
        identifies: 0,
        after_login: 0,
        late_anonymous: 0,
    };
    let mut visits = vec![0u8; CUSTOMERS as usize];
    while input.events < events {
        let r = sim.next_record(chrono::Utc::now().timestamp_millis());
        for t in input.shape(serde_json::from_slice(&r.value)?, &mut visits) {
            let key = t.identity().unwrap_or_default().to_owned();
            let body = serde_json::to_vec(&t)?;
            send_when_room(
                &producer,
                BaseRecord::to(&input.topic).key(&key).payload(&body),
            )?;
            producer.poll(Duration::ZERO);
            input.events += 1;
        }
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(input)
}

impl Input {
    /// What a simulated touchpoint of customer `c-<i>` becomes: unchanged for
    /// most customers; for an anonymous-first one, anonymous before the login,
    /// the identify and then the touchpoint at the login, both ids after it
    /// (one in ten of those with the anonymous id alone).
    fn shape(&mut self, mut t: Touchpoint, visits: &mut [u8]) -> Vec<Touchpoint> {
        let number = t.customer_id.as_deref().and_then(|c| c.strip_prefix("c-"));
        let Some(i) = number.and_then(|n| n.parse::<u64>().ok()) else {
            return vec![t];
        };
        if !anonymous_first(i) {
            return vec![t];
        }
        let Some(seen) = visits.get_mut(i as usize) else {
            return vec![t];
        };
        let (before, login) = (*seen, anonymous_visits(i));
        *seen = seen.saturating_add(1);
        t.anonymous_id = Some(anonymous_id(i));
        if before < login {
            t.customer_id = None;
            self.anonymous += 1;
            return vec![t];
        }
        self.after_login += 1;
        if before == login {
            let customer = Simulator::customer_id(i);
            let id = format!("identify-{i}");
            let mut identify = tp(
                &id,
                &customer,
                Channel::Web,
                EventType::Identify,
                t.event_time,
            );
            identify.anonymous_id = t.anonymous_id.clone();
            self.identifies += 1;
            return vec![identify, t];
        }
        if self.after_login.is_multiple_of(10) {
            t.customer_id = None;
            self.late_anonymous += 1;
        }
        vec![t]
    }
}

/// Runs `request` in a process of its own and reads its report.
fn spawn_run(bootstrap: &str, request: &Request) -> anyhow::Result<Report> {
    let out = Command::new(std::env::current_exe()?)
        .arg("stitching")
        .env(RUN_ENV, serde_json::to_string(request)?)
        .env(BOOTSTRAP_ENV, bootstrap)
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "the run {} exited with {}: {stdout}",
        request.tag,
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(REPORT))
        .ok_or_else(|| anyhow::anyhow!("the run {} printed no report", request.tag))?;
    Ok(serde_json::from_str(line)?)
}

/// One timed run (in a run's own process); prints its report for the parent.
fn run(bootstrap: &str, request: &Request) -> anyhow::Result<()> {
    let group = format!("bench-{}", request.tag);
    let mut drained = Drained::new(bootstrap, &group, &request.input)?;
    let mut done = || match request.stitching {
        true => drained.poll(),
        false => Ok(true),
    };
    let events_topic = format!("bench.identity-events.{}", request.tag);
    let tweak = |cfg: &mut rapport::config::Config| {
        cfg.identity.stitching = request.stitching;
        cfg.identity.events_topic = events_topic.clone();
    };
    let r = super::engine_run_with(
        bootstrap,
        &request.input,
        request.events,
        Guarantee::ExactlyOnce,
        &request.tag,
        None,
        &tweak,
        &mut done,
    )?;
    let kind = |k: &str| r.metrics.identity_events.with_label_values(&[k]).get();
    let route = |k: &str| r.metrics.identity_routed.with_label_values(&[k]).get();
    let report = Report {
        workers: r.workers,
        rate: r.rate,
        cpu_us_per_event: r.cpu_us_per_event,
        cores: r.cores,
        peak_mib: r.peak_mib,
        actions: r.actions,
        dead_letters: super::count_committed(bootstrap, &format!("bench.dlq.{}", request.tag))?,
        merged: kind("merged"),
        conflicts: kind("conflict"),
        held: route("held"),
        released: route("released"),
        forwarded: route("forwarded"),
        tail_secs: drained.tail_secs,
    };
    println!("{REPORT}{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Median, lowest and highest of `f` over `runs`.
fn spread(runs: &[Report], f: impl Fn(&Report) -> f64) -> (f64, f64, f64) {
    median_range(runs.iter().map(f).collect())
}

/// Median, lowest and highest of `v`.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(&lo), Some(&hi)) => (v[v.len() / 2], lo, hi),
        _ => (f64::NAN, f64::NAN, f64::NAN),
    }
}

/// The lowest and highest of a count over `runs`, as `n` or `lo-hi`.
fn range(runs: &[Report], f: impl Fn(&Report) -> u64) -> String {
    let lo = runs.iter().map(&f).min().unwrap_or(0);
    let hi = runs.iter().map(&f).max().unwrap_or(0);
    match lo == hi {
        true => lo.to_string(),
        false => format!("{lo}-{hi}"),
    }
}

/// Throughput, CPU and memory of a set of runs, for a row.
fn measured(runs: &[Report]) -> String {
    let (rate, lo, hi) = spread(runs, |r| r.rate);
    format!(
        "{rate:.0} events/s median of {} ({lo:.0}-{hi:.0}), {:.1} µs CPU per event, {:.2} cores busy, peak RSS {} MiB, {} actions, {} dead letters",
        runs.len(),
        spread(runs, |r| r.cpu_us_per_event).0,
        spread(runs, |r| r.cores).0,
        range(runs, |r| r.peak_mib),
        range(runs, |r| r.actions),
        runs.iter().map(|r| r.dead_letters).sum::<u64>(),
    )
}

fn print_rows(input: &Input, off: &[Report], on: &[Report]) {
    let workers = off.first().map_or(0, |r| r.workers);
    crate::report::row!(
        "| engine, exactly_once, identity stitching off, {} touchpoints of 100k customers, 4 partitions: 30% browse anonymously first ({} anonymous touchpoints, {} identifies, {} of {} later touchpoints with the anonymous id alone), {workers} worker threads, passes alternating with the next row's | {}; {} merges, {} held in all (none expected: stitching off) |",
        input.events,
        input.anonymous,
        input.identifies,
        input.late_anonymous,
        input.after_login,
        measured(off),
        off.iter().map(|r| r.merged).sum::<u64>(),
        off.iter().map(|r| r.held).sum::<u64>(),
    );
    crate::report::row!(
        "| engine, exactly_once, identity stitching on, the same input, done when the input and the repartition topic are consumed | {} (of each run a median {:.2} s after its input was committed); {} merges for {} identifies, {} conflicts, {} touchpoints held and as many released, {} forwarded |",
        measured(on),
        spread(on, |r| r.tail_secs.unwrap_or(f64::NAN)).0,
        range(on, |r| r.merged),
        input.identifies,
        range(on, |r| r.conflicts),
        range(on, |r| r.held),
        range(on, |r| r.forwarded),
    );
    let (_, lo, hi) = median_range(off.iter().zip(on).map(|(f, n)| n.rate / f.rate).collect());
    crate::report::row!(
        "| identity stitching on against off, exactly_once, the same input | {:.0}% of the throughput (medians; pass by pass {:.0}-{:.0}%), {:.2}× the CPU per event |",
        100.0 * spread(on, |r| r.rate).0 / spread(off, |r| r.rate).0,
        100.0 * lo,
        100.0 * hi,
        spread(on, |r| r.cpu_us_per_event).0 / spread(off, |r| r.cpu_us_per_event).0
    );
}

/// Fails the benchmark when a run did not do what it measures: with stitching
/// on it must have merged every identified history and applied every
/// touchpoint it held by the time it counted as done; off, stitched nothing;
/// and neither may dead-letter anything.
fn check(input: &Input, stitching: bool, r: &Report) -> anyhow::Result<()> {
    anyhow::ensure!(
        input.identifies > 0,
        "the input holds no identify touchpoint"
    );
    anyhow::ensure!(
        r.dead_letters == 0,
        "{} touchpoints were dead-lettered: the input is not what the benchmark says",
        r.dead_letters
    );
    match stitching {
        true => anyhow::ensure!(
            r.merged > 0 && r.merged == input.identifies && r.released == r.held,
            "stitching on ended with {} merges for {} identifies and {} of {} held touchpoints released",
            r.merged,
            input.identifies,
            r.released,
            r.held
        ),
        false => anyhow::ensure!(
            r.merged + r.held + r.forwarded == 0,
            "stitching off still stitched ({} merges, {} held, {} forwarded)",
            r.merged,
            r.held,
            r.forwarded
        ),
    }
    Ok(())
}

/// Tells when a group has consumed all of its input and its identity
/// repartition topic. The repartition topic is written in transactions, whose
/// markers take offsets no consumer commits: a partition counts as consumed
/// when the group's offset is past its last committed record, no transaction
/// is open in it, and nothing was written to it while it was checked.
struct Drained {
    input: String,
    repartition: String,
    input_ends: Vec<i64>,
    /// In the group (never joining it): its committed offsets, and true ends.
    group: BaseConsumer,
    /// Reads the repartition topic's tail with read_committed.
    tail: BaseConsumer,
    checked: Option<Instant>,
    /// When the input was first seen committed.
    input_done: Option<Instant>,
    /// Seconds from then until the repartition topic was consumed too.
    tail_secs: Option<f64>,
}

impl Drained {
    fn new(bootstrap: &str, group: &str, input: &str) -> anyhow::Result<Self> {
        let group_consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?;
        let tail: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("bench-tail-{}", super::suffix()))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            // A check answers at once rather than after a fetch's wait.
            .set("fetch.wait.max.ms", "10")
            .create()?;
        let mut d = Drained {
            input: input.to_owned(),
            repartition: format!("{group}-identity-repartition"),
            input_ends: Vec::new(),
            group: group_consumer,
            tail,
            checked: None,
            input_done: None,
            tail_secs: None,
        };
        d.input_ends = d.ends(input)?;
        Ok(d)
    }

    /// True once everything is consumed (checked at most every 50 ms).
    fn poll(&mut self) -> anyhow::Result<bool> {
        if self
            .checked
            .is_some_and(|at| at.elapsed() < Duration::from_millis(50))
        {
            return Ok(false);
        }
        self.checked = Some(Instant::now());
        let input = self.committed(&self.input)?;
        if input.iter().zip(&self.input_ends).any(|(c, e)| c < e) {
            return Ok(false);
        }
        let input_done = *self.input_done.get_or_insert_with(Instant::now);
        let before = self.ends(&self.repartition)?;
        let committed = self.committed(&self.repartition)?;
        for (p, (&c, &end)) in committed.iter().zip(&before).enumerate() {
            if c >= end {
                continue;
            }
            match self.last_record(p as i32, end)? {
                Some(last) if c > last => {}
                _ => return Ok(false),
            }
        }
        let done = self.ends(&self.repartition)? == before;
        if done {
            self.tail_secs = Some(input_done.elapsed().as_secs_f64());
        }
        Ok(done)
    }

    /// The offset of the last committed record of repartition partition `p`
    /// below `end` (-1 when none); `None` while a transaction is open in it.
    fn last_record(&self, p: i32, end: i64) -> anyhow::Result<Option<i64>> {
        let (lo, stable) = self.tail.fetch_watermarks(&self.repartition, p, WAIT)?;
        if stable < end {
            return Ok(None);
        }
        let mut window = 64;
        loop {
            let from = (end - window).max(lo);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.repartition, p, Offset::Offset(from))?;
            self.tail.assign(&tpl)?;
            if let Some(last) = self.read_to_end(p)? {
                return Ok(Some(last));
            }
            if from == lo {
                return Ok(Some(-1));
            }
            window *= 8;
        }
    }

    /// Reads the assigned partition `p` to its end; the last record's offset.
    fn read_to_end(&self, p: i32) -> anyhow::Result<Option<i64>> {
        let (deadline, mut last) = (Instant::now() + WAIT, None);
        loop {
            match self.tail.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.partition() == p => last = Some(m.offset()),
                Some(Err(KafkaError::PartitionEOF(q))) if q == p => return Ok(last),
                // Left from reading another partition before.
                Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                Some(Err(e)) => return Err(e.into()),
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {} [{p}] timed out",
                self.repartition
            );
        }
    }

    /// The group's committed offset of each partition of `topic` (0 where none).
    fn committed(&self, topic: &str) -> anyhow::Result<Vec<i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let got = self.group.committed_offsets(tpl, WAIT)?;
        Ok((0..PARTITIONS)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect())
    }

    /// The end offset of each partition of `topic`, open transactions included.
    fn ends(&self, topic: &str) -> anyhow::Result<Vec<i64>> {
        (0..PARTITIONS)
            .map(|p| Ok(self.group.fetch_watermarks(topic, p, WAIT)?.1))
            .collect()
    }
}
