//! What this machine allows Rapport's `exactly_once` on the benchmark input:
//! the Kafka work every touchpoint costs (consumed read_committed, the
//! customer's stored profile written to a compacted changelog once per
//! transaction, a transaction with the offsets every commit interval), done by
//! a bare rdkafka loop and measured in CPU on both sides of the connection
//! (the loop's process and the broker's), added to the processor's own CPU per
//! event. Two cores divided by that sum bound the events/s any engine doing
//! this work could reach here, however its threads are arranged.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::state::Stored;
use rapport_connectors::publish::send_when_room;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::measure::{broker_split, cpu_seconds, local_broker, process_cpu_seconds, ThreadCpu};

/// The commit interval Rapport ships with.
const COMMIT_INTERVAL_MS: u64 = 100;
/// The rate the floor asks of `exactly_once`: the loop's transactions
/// each hold one commit interval of touchpoints at it, so as many customers
/// change per transaction as would at that rate (whatever rate the loop
/// itself reaches between its blocking commits).
const FLOOR_RATE: u64 = 350_000;
const PER_TRANSACTION: u64 = FLOOR_RATE * COMMIT_INTERVAL_MS / 1000;

/// The Kafka work of `exactly_once`, measured.
pub struct KafkaWork {
    /// Touchpoints per second the loop moved.
    pub rate: f64,
    /// The loop's process CPU per touchpoint, µs (librdkafka's threads included).
    pub process_us: f64,
    /// The broker's CPU per touchpoint, µs (none when it is not a local process).
    pub broker_us: Option<f64>,
    /// Where the broker's CPU went ([`broker_split`]).
    pub broker_split: Option<String>,
    /// Changelog records written per touchpoint (one per changed customer and transaction).
    pub changelog_per_event: f64,
    /// Transactions committed.
    pub transactions: u64,
}

/// Runs the Kafka work over `input` (`events` records keyed by customer):
/// every record consumed `read_committed` with the settings of the tuned
/// passthrough, each customer changed in an interval written once to a
/// compacted 4-partition changelog with the stored profile `profiles`
/// holds for it (cycled by key hash: the input's sizes and compressibility),
/// LZ4 as Rapport's producer, and the interval's offsets committed in the
/// transaction. Timed from the first record consumed.
pub fn kafka_work(
    bootstrap: &str,
    input: &str,
    events: u64,
    s: &str,
    profiles: &[Vec<u8>],
) -> anyhow::Result<KafkaWork> {
    anyhow::ensure!(!profiles.is_empty(), "no stored profiles to write");
    let changelog = format!("bench.ceiling.changelog.{s}");
    let mut spec = TopicSpec::new(&changelog, 4);
    spec.configs
        .push(("cleanup.policy".into(), "compact".into()));
    crate::rt().block_on(ensure_topics(bootstrap, &[spec]))?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-ceiling-{s}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.queue.backoff.ms", "5")
        .set("queued.min.messages", "1000000")
        .create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("bench-ceiling-{s}"))
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    consumer.subscribe(&[input])?;
    let broker = local_broker(bootstrap);
    let mut changed: HashSet<Vec<u8>> = HashSet::new();
    let mut next: HashMap<i32, i64> = HashMap::new();
    let (mut n, mut written, mut transactions) = (0u64, 0u64, 0u64);
    let mut started = None;
    let commit = |changed: &mut HashSet<Vec<u8>>,
                  next: &HashMap<i32, i64>,
                  written: &mut u64|
     -> anyhow::Result<()> {
        producer.begin_transaction()?;
        for key in changed.drain() {
            let value = &profiles[key_slot(&key, profiles.len())];
            send_when_room(
                &producer,
                BaseRecord::<[u8], [u8]>::to(&changelog)
                    .key(&key[..])
                    .payload(&value[..]),
            )?;
            *written += 1;
        }
        let mut offsets = TopicPartitionList::new();
        for (&p, &o) in next {
            offsets.add_partition_offset(input, p, Offset::Offset(o))?;
        }
        let meta = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
        producer.send_offsets_to_transaction(&offsets, &meta, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(30))?;
        Ok(())
    };
    let mut before = None;
    while n < events {
        if let Some(m) = consumer.poll(Duration::from_millis(20)) {
            let m = m?;
            if started.is_none() {
                started = Some(Instant::now());
                before = Some((
                    cpu_seconds(),
                    broker.and_then(process_cpu_seconds),
                    broker.map(|pid| ThreadCpu::of(&pid.to_string())),
                ));
            }
            changed.insert(m.key().unwrap_or_default().to_vec());
            next.insert(m.partition(), m.offset() + 1);
            n += 1;
        }
        if started.is_some() && !changed.is_empty() && (n % PER_TRANSACTION == 0 || n == events) {
            commit(&mut changed, &next, &mut written)?;
            transactions += 1;
        }
    }
    let secs = started.map_or(f64::NAN, |s| s.elapsed().as_secs_f64());
    let (cpu_before, broker_before, threads_before) = before.unwrap_or_default();
    let process_us = (cpu_seconds() - cpu_before) * 1e6 / events as f64;
    let broker_us = broker
        .and_then(process_cpu_seconds)
        .zip(broker_before)
        .map(|(after, before)| (after - before) * 1e6 / events as f64);
    let broker_split = broker
        .zip(threads_before)
        .map(|(pid, before)| broker_split(&ThreadCpu::of(&pid.to_string()), &before, events));
    crate::scale::delete_topics(bootstrap, &[changelog]);
    Ok(KafkaWork {
        rate: events as f64 / secs,
        process_us,
        broker_us,
        broker_split,
        changelog_per_event: written as f64 / events as f64,
        transactions,
    })
}

/// Encoding `profiles` one by one as a commit does, µs each: the second of
/// two passes, so the first pass's freed memory is reused as in a running
/// engine rather than fresh pages faulted in.
fn encode_us(profiles: &[Stored]) -> f64 {
    let mut secs = 0.0;
    for _ in 0..2 {
        let started = Instant::now();
        let out: Vec<Vec<u8>> = profiles.iter().map(Stored::encode).collect();
        secs = started.elapsed().as_secs_f64();
        drop(out);
    }
    secs * 1e6 / profiles.len().max(1) as f64
}

/// The stored profile a changelog key writes: one of `n`, by a stable hash of the key.
fn key_slot(key: &[u8], n: usize) -> usize {
    (crc32fast::hash(key) as usize) % n
}

/// Customers in the benchmark input, and touchpoints each.
const CUSTOMERS: u64 = 100_000;
const PER_CUSTOMER: usize = 10;

/// Measures the Kafka work over `input` and the processor's CPU on the same
/// shape of input, and reports the events/s they bound `exactly_once` to on
/// this machine. The bound is generous: it leaves out RocksDB writes, the
/// action and decision topics, the profile caches' misses and every wait,
/// and counts every core as Rapport's.
pub fn ceiling(bootstrap: &str, input: &str, events: u64, s: &str) -> anyhow::Result<()> {
    let profiles = crate::inprocess::stored_profiles(CUSTOMERS, PER_CUSTOMER)?;
    let encoded: Vec<Vec<u8>> = profiles.iter().map(Stored::encode).collect();
    let mean = encoded.iter().map(Vec::len).sum::<usize>() / encoded.len().max(1);
    let encode_us = encode_us(&profiles);
    let work = kafka_work(bootstrap, input, events, s, &encoded)?;
    drop(encoded);
    let broker = work.broker_us.map_or(
        "not measured (the broker is not a local process)".into(),
        |us| {
            format!(
                "{us:.1} µs ({})",
                work.broker_split.as_deref().unwrap_or_default()
            )
        },
    );
    crate::report::row!(
        "| the Kafka work of exactly_once alone, a bare rdkafka loop over the same input: {events} touchpoints consumed read_committed, {} transactions each of {PER_TRANSACTION} touchpoints ({COMMIT_INTERVAL_MS} ms at {FLOOR_RATE} events/s) with their offsets, each customer changed in one written once to a compacted 4-partition changelog ({:.2} records per touchpoint; its stored profile from this input's shape, mean {mean} bytes, LZ4) | {:.0} events/s (its commits block it); CPU per touchpoint: the loop's process {:.1} µs (librdkafka's threads included), the broker {broker} |",
        work.transactions,
        work.changelog_per_event,
        work.rate,
        work.process_us,
    );
    let replay_us = crate::inprocess::replay(events as usize, CUSTOMERS)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_event = work.process_us
        + work.broker_us.unwrap_or(0.0)
        + replay_us
        + encode_us * work.changelog_per_event;
    let bound = cores * 1e6 / per_event;
    crate::report::row!(
        "| what this machine allows exactly_once on this input: {cores} cores over the CPU per touchpoint of the Kafka work (process and broker) and the processor (replay above, {:.2} µs, and {encode_us:.2} µs per changed profile encoded, one thread, into memory freed by the encoding before); RocksDB, actions, cache misses and waits left out | at most {bound:.0} events/s ({cores} × 10⁶ / {per_event:.1} µs) |",
        replay_us,
    );
    Ok(())
}
