//! Restarting the engine never re-emits an action with a new id.

use std::collections::{BTreeSet, HashSet};

use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_model::Action;

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

fn simulated(sim: &mut Simulator, from: i64, n: i64) -> Vec<Raw> {
    (from..from + n)
        .map(|i| sim.next_record(T0 + i * 1_000))
        .map(|r| (r.key, r.value, vec![]))
        .collect()
}

fn ids(actions: &[Action]) -> BTreeSet<String> {
    actions.iter().map(|a| a.action_id.clone()).collect()
}

#[test]
fn restarts_and_replays_never_re_emit_actions_with_new_ids() {
    let topics = Topics::new("restart", 4);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("restart");
    let cfg = topics.config(dir.path(), &group);
    let mut sim = Simulator::new(SimConfig {
        customers: 300,
        seed: 11,
        malformed_per_mille: 5,
    });

    // First run: the first half of the stream.
    produce_raw(&topics.input, &simulated(&mut sim, 0, 3_000));
    let store = state(&cfg);
    run_engine(&cfg, store.clone(), 3_000);
    let first = actions(&topics.actions);
    assert!(
        first.len() > 20,
        "the simulated stream triggers journeys ({} actions)",
        first.len()
    );

    // Restart on the same state and group: only the second half is processed.
    produce_raw(&topics.input, &simulated(&mut sim, 3_000, 3_000));
    run_engine(&cfg, store.clone(), 3_000);
    let both = actions(&topics.actions);
    let unique_ids: HashSet<&str> = both.iter().map(|a| a.action_id.as_str()).collect();
    assert_eq!(unique_ids.len(), both.len(), "no action emitted twice");
    assert!(ids(&first).is_subset(&ids(&both)));
    assert!(
        both.len() > first.len(),
        "the second half triggers journeys too"
    );

    // Kafka offsets lost (as after a crash before the offset commit): a new group
    // replays the whole topic, and state skips what it already reflects.
    let replay_cfg = topics.config(dir.path(), &unique("restart-replay"));
    let metrics = run_engine(&replay_cfg, store.clone(), 6_000);
    assert_eq!(metrics.skipped.get(), 6_000);
    assert_eq!(
        actions(&topics.actions).len(),
        both.len(),
        "nothing re-emitted"
    );
    drop(store);

    // A replay from scratch into a fresh action topic gives exactly the same ids.
    let fresh = Topics::new("restart-fresh", 1);
    let fresh_dir = tempfile::tempdir().unwrap();
    let mut fresh_cfg = topics.config(fresh_dir.path(), &unique("restart-fresh"));
    fresh_cfg.kafka.action_topic = fresh.actions.clone();
    fresh_cfg.kafka.dead_letter_topic = fresh.dead_letter.clone();
    let m = run_engine(&fresh_cfg, state(&fresh_cfg), 6_000);
    let emitted = m.actions_total();
    let fresh_actions = actions(&fresh.actions);
    assert_eq!(
        emitted as usize,
        fresh_actions.len(),
        "every emitted action is readable"
    );
    assert_eq!(ids(&fresh_actions), ids(&both));
}
