//! Durable timers: a wait with an exit condition, in replay (event time) and live
//! (wall-clock time on an idle partition), and across a restart while pending.

use std::time::{Duration, Instant};

use rapport_model::action::action_id;
const SURVEY: &str = "post_delivery_survey";
use rapport_model::testing::tp;
use rapport_model::{Action, ActionKind, Channel, EventType};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Waits until `topic` holds `n` actions.
fn wait_for_actions(topic: &str, n: usize, engine: &rapport::runtime::EngineHandle) -> Vec<Action> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = actions(topic);
        if got.len() >= n {
            return got;
        }
        assert!(!engine.is_finished(), "engine stopped");
        assert!(
            Instant::now() < deadline,
            "only {} of {n} actions arrived: {got:?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn replay_fires_the_survey_on_event_time_unless_the_exit_came_first() {
    let topics = Topics::new("timer-replay", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &unique("timer-replay"));
    let events = [
        tp("d1", "c-exit", Channel::System, EventType::Delivered, T0).with_order("o-1"),
        tp("d2", "c-wait", Channel::System, EventType::Delivered, T0).with_order("o-2"),
        tp(
            "x1",
            "c-exit",
            Channel::CallCenter,
            EventType::TicketOpened,
            T0 + HOUR,
        ),
        // Another customer's later event moves the partition's event time past the wait.
        tp(
            "p1",
            "c-other",
            Channel::Web,
            EventType::PageView,
            T0 + 3 * HOUR,
        ),
    ];
    produce(&topics.input, &events);
    let store = state(&cfg);
    run_engine(&cfg, store.clone(), events.len() as u64);
    let got = actions(&topics.actions);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].kind, ActionKind::SurveyRequest);
    assert_eq!(got[0].customer_id, "c-wait");
    assert_eq!(got[0].trigger_event_time, T0 + 2 * HOUR);
    assert_eq!(got[0].action_id, action_id(SURVEY, "c-wait", "d2", "timer"));
    assert!(
        store
            .find_profile("c-exit")
            .unwrap()
            .unwrap()
            .timers
            .is_empty(),
        "the exit cancelled the wait"
    );
}

#[test]
fn live_mode_fires_on_an_idle_partition_and_survives_a_restart() {
    let topics = Topics::new("timer-live", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("timer-live"));
    cfg.engine.wall_clock_timers = true;
    let journeys = tempfile::tempdir().unwrap();
    with_survey_wait(&mut cfg, journeys.path(), "6s");
    let store = state(&cfg);

    // A wait that is pending when the engine stops.
    let t = now_ms();
    produce(
        &topics.input,
        &[tp("d0", "c-restart", Channel::System, EventType::Delivered, t).with_order("o-0")],
    );
    run_engine(&cfg, store.clone(), 1);
    let pending = store.find_profile("c-restart").unwrap().unwrap();
    assert_eq!(pending.timers.len(), 1, "the wait is in committed state");

    // Restart, and start two more waits, one of which exits at once.
    let metrics = rapport::metrics::Metrics::new();
    let engine = rapport::runtime::start(cfg.clone(), store.clone(), metrics).unwrap();
    let t2 = now_ms();
    produce(
        &topics.input,
        &[
            tp("d1", "c-exit", Channel::System, EventType::Delivered, t2).with_order("o-1"),
            tp("d2", "c-wait", Channel::System, EventType::Delivered, t2).with_order("o-2"),
            tp(
                "x1",
                "c-exit",
                Channel::Web,
                EventType::RefundRequested,
                t2 + 10,
            ),
        ],
    );
    // No further events arrive: the quiet partition fires on wall-clock time.
    let got = wait_for_actions(&topics.actions, 2, &engine);
    engine.shutdown().unwrap();
    let mut customers: Vec<&str> = got.iter().map(|a| a.customer_id.as_str()).collect();
    customers.sort();
    assert_eq!(customers, ["c-restart", "c-wait"], "{got:?}");
    for a in &got {
        assert_eq!(a.kind, ActionKind::SurveyRequest);
    }
    let restarted = got.iter().find(|a| a.customer_id == "c-restart").unwrap();
    assert_eq!(restarted.trigger_event_time, t + 6_000);
    assert_eq!(
        restarted.action_id,
        action_id(SURVEY, "c-restart", "d0", "timer")
    );
    // c-exit's wait was cancelled before it was due, so it can never fire.
    assert!(store
        .find_profile("c-exit")
        .unwrap()
        .unwrap()
        .timers
        .is_empty());
    assert!(
        wall_clock_after(t2 + 6_000),
        "the surveys fired after the wait, not before"
    );
}

fn wall_clock_after(ms: i64) -> bool {
    now_ms() >= ms
}
