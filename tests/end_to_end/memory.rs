//! The profile cache bounds memory whatever the commit interval: the profiles
//! an interval changed stay in memory until they are committed, so when they
//! fill the cache the engine commits before the interval is up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rapport::metrics::Metrics;
use rapport::runtime;
use rapport_connectors::simulator::{SimConfig, Simulator};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

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
    let mut sim = Simulator::new(SimConfig {
        customers: 4_000,
        seed: 5,
        malformed_per_mille: 0,
    });
    let records: Vec<Raw> = (0..16_000)
        .map(|i| sim.next_record(T0 + i * 1_000))
        .map(|r| (r.key, r.value, vec![]))
        .collect();
    produce_raw(&topics.input, &records);

    let metrics = Metrics::new();
    let started = Instant::now();
    let engine = runtime::start(cfg.clone(), state(&cfg), metrics.clone()).expect("engine starts");
    // Well inside the 60 s interval: only early commits can get there.
    let deadline = started + Duration::from_secs(45);
    while engine.progress.committed.load(Ordering::SeqCst) < 16_000 {
        assert!(!engine.is_finished(), "engine stopped early");
        assert!(
            Instant::now() < deadline,
            "committed {} of 16000 records in {:?} with a 60 s commit interval ({} early commits)",
            engine.progress.committed.load(Ordering::SeqCst),
            started.elapsed(),
            metrics.early_commits.get()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let early = metrics.early_commits.get();
    let cached = metrics.profile_cache_bytes.get();
    engine.shutdown().expect("clean shutdown");
    assert!(early >= 2, "several early commits ({early})");
    assert!(
        cached <= 1 << 20,
        "after the last commit the profile cache holds {cached} bytes, over its 1 MiB"
    );
    assert_eq!(committed_total(&cfg.kafka.group_id, &topics.input), 16_000);
}
