//! The profile cache bounds memory whatever the commit interval and however
//! slow a commit: the profiles an interval changed stay in memory until they
//! are committed, so when they fill the cache the engine commits before the
//! interval is up, or waits for the commit still in flight.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rapport::metrics::Metrics;
use rapport::runtime;
use rapport_connectors::simulator::{SimConfig, Simulator};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

/// `n` well-formed simulated records of `customers` customers, `step_ms` apart.
fn simulated(customers: u64, seed: u64, n: i64, step_ms: i64) -> Vec<Raw> {
    let mut sim = Simulator::new(SimConfig {
        customers,
        seed,
        malformed_per_mille: 0,
    });
    (0..n)
        .map(|i| sim.next_record(T0 + i * step_ms))
        .map(|r| (r.key, r.value, vec![]))
        .collect()
}

#[test]
fn changes_that_fill_the_profile_cache_are_committed_before_the_interval_is_up() {
    let topics = Topics::new("memory", 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("memory"));
    // An interval far longer than the test may take, and a cache that a few
    // hundred changed profiles fill.
    cfg.engine.commit_interval_ms = 60_000;
    cfg.engine.transaction_timeout_ms = 600_000;
    cfg.state.profile_cache_mb = 1;
    cfg.validate().expect("valid config");
    produce_raw(&topics.input, &simulated(4_000, 5, 16_000, 1_000));

    let metrics = Metrics::new();
    let started = Instant::now();
    let engine = runtime::start(cfg.clone(), state(&cfg), metrics.clone()).expect("engine starts");
    // Well inside the 60 s interval: only early commits can get there. The
    // last changes, fewer than fill the cache, wait for the interval (or the
    // shutdown below), so not every record is asked for: how many records fill
    // the cache depends on how the batches fell.
    let deadline = started + Duration::from_secs(45);
    while engine.progress.committed.load(Ordering::SeqCst) < 12_000 {
        assert!(!engine.is_finished(), "engine stopped early");
        assert!(
            Instant::now() < deadline,
            "committed {} of 16000 records ({} handled) in {:?} with a 60 s commit interval ({} early commits)",
            engine.progress.committed.load(Ordering::SeqCst),
            engine.progress.handled.load(Ordering::SeqCst),
            started.elapsed(),
            metrics.early_commits.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let early = metrics.early_commits.get();
    let progress = engine.progress.clone();
    engine.shutdown().expect("clean shutdown");
    let cached = metrics.profile_cache_bytes.get();
    assert!(early >= 2, "several early commits ({early})");
    assert!(
        cached <= 1 << 20,
        "after the last commit the profile cache holds {cached} bytes, over its 1 MiB"
    );
    // The shutdown committed what was handled by then, and the group agrees.
    assert_eq!(
        committed_total(&cfg.kafka.group_id, &topics.input),
        progress.committed.load(Ordering::SeqCst) as i64
    );
}

/// While a commit cannot end (its broker gone), the engine takes records only
/// until the profiles they change fill the profile cache, then waits for that
/// commit: the changed profiles, which stay in memory until committed, do not
/// grow with what the consumer had fetched ahead. It waits polling its
/// consumer (its partitions paused), not sitting in the wait.
#[test]
fn a_commit_held_up_by_the_broker_stops_changes_at_the_profile_cache() {
    // The engine runs in this process: its log is shown if the test fails
    // (captured per test like its output; librdkafka's own lines left out).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,rapport=info,librdkafka=off,rdkafka=off")
        .with_test_writer()
        .try_init();
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19492) else {
        return;
    };
    let topics = Topics::on(&bootstrap, "memory-held", 4);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("memory-held"));
    cfg.state.profile_cache_mb = 1;
    cfg.validate().expect("valid config");
    // New customers all along: every record changes a profile of its own.
    let records = simulated(1_000_000, 9, 150_000, 100);
    for chunk in records.chunks(30_000) {
        produce_raw_on(&bootstrap, &topics.input, chunk);
    }

    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state(&cfg), metrics.clone()).expect("engine starts");
    wait_committed(&engine, 5_000);
    let handled = engine.progress.handled.load(Ordering::SeqCst);
    assert!(
        handled < 100_000,
        "records left to fetch when the broker goes ({handled} handled)"
    );
    broker.kafka_sh("stop");
    // No commit can end for these seconds (fewer than the transaction
    // timeout: the commit waits rather than fails); what the consumer
    // fetched before is in hand.
    let (mut most, mut poll_age) = (0, 0.0f64);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            !engine.is_finished(),
            "engine stopped while the broker was away"
        );
        most = most.max(metrics.changed_profile_bytes.get());
        let now_ms = chrono::Utc::now().timestamp_millis();
        poll_age = poll_age.max(engine.progress.poll_age_seconds(now_ms));
        std::thread::sleep(Duration::from_millis(5));
    }
    let handled_while_away = engine.progress.handled.load(Ordering::SeqCst) - handled;
    eprintln!("changed profiles peaked at {most} bytes; {handled_while_away} records handled while the broker was away; the main loop polled its consumer at least every {poll_age:.1} s");
    broker.kafka_sh("start");
    wait_committed(&engine, 150_000);
    engine.shutdown().expect("clean shutdown");
    // The cache, one batch of records beyond it (the check is per batch),
    // and the last partial batch.
    let bound = (1 << 20) + 2 * 2048 * 2 * 1024;
    assert!(
        most <= bound,
        "changed profiles took {most} bytes while a commit waited for the broker ({handled_while_away} records handled meanwhile), over the 1 MiB cache and a batch ({bound})"
    );
    assert!(most > 0, "the gauge counts the changed profiles");
    assert!(
        poll_age < 3.0,
        "the main loop went {poll_age:.1} s without polling its consumer while the commit waited"
    );
}
