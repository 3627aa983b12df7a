//! The engine inside the test's process: run until it has committed what was
//! produced, and its state store.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport::config::Config;
use rapport::metrics::Metrics;
use rapport::runtime::{self, EngineHandle};
use rapport::state::StateStore;

use super::kafka::wait_stitched;

/// Runs an engine on `cfg` until it has committed `records` records, then stops it cleanly.
pub fn run_engine(cfg: &Config, state: Arc<StateStore>, records: u64) -> Metrics {
    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state, metrics.clone()).expect("engine starts");
    wait_committed(&engine, records);
    if cfg.identity.stitching {
        // Merges the input started finish through the repartition topic.
        for input in &cfg.kafka.touchpoint_topics {
            wait_stitched(&cfg.kafka.bootstrap_servers, &cfg.kafka.group_id, input);
        }
    }
    engine.shutdown().expect("clean shutdown");
    metrics
}

/// Waits until `engine` has committed at least `records` records.
pub fn wait_committed(engine: &EngineHandle, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.progress.committed.load(Ordering::SeqCst) < records {
        assert!(!engine.is_finished(), "engine stopped early");
        assert!(
            Instant::now() < deadline,
            "engine committed only {} of {records} records",
            engine.progress.committed.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a state store in `dir`.
pub fn state(cfg: &Config) -> Arc<StateStore> {
    Arc::new(StateStore::open(&cfg.state).expect("state opens"))
}

/// Serialises the tests that push 100k records through several processes, so
/// they do not fight over the machine's two cores with each other.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}
