//! `rapport replay` and `rapport validate`: recorded touchpoints through the
//! shipped journeys give the checked-in actions (byte for byte, every time); the
//! live engine gives the same actions as a replay; a broken journey file is
//! refused with every problem's file, line and column.

use std::path::{Path, PathBuf};
use std::process::Command;

use rapport_model::Action;

use crate::support::*;

fn cases() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

/// Runs `rapport replay` and returns its stdout, asserting it succeeded.
pub(crate) fn replay(config: &Path, events: &Path, extra: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["replay", "--config"])
        .arg(config)
        .arg("--events")
        .arg(events)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The shipped journey `name` over `tests/replay/<name>/events.jsonl` gives
/// `expected<suffix>.jsonl`, twice in a row, byte for byte.
fn golden(name: &str, expected: &str, extra: &[&str]) -> Vec<Action> {
    let dir = cases().join(name);
    let (config, events) = (dir.join("rapport.toml"), dir.join("events.jsonl"));
    let first = replay(&config, &events, extra);
    let second = replay(&config, &events, extra);
    assert_eq!(
        first, second,
        "two replays of the same input are byte-identical"
    );
    let want = std::fs::read(dir.join(expected)).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first),
        String::from_utf8_lossy(&want),
        "replay of {name} differs from {expected}"
    );
    parse_actions(&first)
}

fn fired(actions: &[Action]) -> Vec<(&str, &str)> {
    actions
        .iter()
        .map(|a| (a.customer_id.as_str(), a.trigger_event_id.as_str()))
        .collect()
}

#[test]
fn hesitation_guide_replays_to_its_recorded_actions() {
    let a = golden("hesitation_guide", "expected.jsonl", &[]);
    // The third view fires; the fourth waits out the re-entry week; a week later
    // it fires again. Spread views, a recent buyer and a comparer stay silent.
    assert_eq!(fired(&a), [("c-hesitant", "h3"), ("c-hesitant", "h7")]);
    assert_eq!(
        a[0].reasons[0].condition,
        "views of tv-55 within 72h without buying it >= 3"
    );
    assert_eq!(a[0].reasons[0].value, "3");
}

#[test]
fn recovery_offer_replays_to_its_recorded_actions() {
    let a = golden("recovery_offer", "expected.jsonl", &[]);
    // One offer per customer per 24h (f2 is refused, f3 a day later is not);
    // passives, promoters and content customers get nothing.
    assert_eq!(
        fired(&a),
        [
            ("c-failed", "f1"),
            ("c-detractor", "d1"),
            ("c-unhappy", "c1"),
            ("c-effort", "e1"),
            ("c-failed", "f3")
        ]
    );
    assert_eq!(a[1].reasons[0].condition, "nps score <= 6");
    assert_eq!(a[1].reasons[0].value, "3");
}

#[test]
fn post_delivery_survey_replays_to_its_recorded_actions() {
    let a = golden("post_delivery_survey", "expected.jsonl", &[]);
    // A refund request or a ticket cancels the wait; the last delivery's wait is
    // not due by the end of the input...
    assert_eq!(fired(&a), [("c-happy", "d1")]);
    assert_eq!(a[0].trigger_event_time, 1_764_000_000_000 + 7_200_000);
    // ... and fires when the replay flushes the pending waits.
    let flushed = golden("post_delivery_survey", "expected-flush.jsonl", &["--flush"]);
    assert_eq!(fired(&flushed), [("c-happy", "d1"), ("c-late", "d4")]);
}

#[test]
fn closed_loop_alert_replays_to_its_recorded_actions() {
    let a = golden("closed_loop_alert", "expected.jsonl", &[]);
    // Tickets for the strong detractors and the repeated unresolved call; only
    // the unresolved detractor is escalated, after 48 hours and again, to the
    // second level, 24 hours later: a resolved ticket ends the journey
    // (exit_when), and the caller's case has neither open issues nor a score.
    let tickets: Vec<(&str, &str, Option<&str>, Option<&str>)> = a
        .iter()
        .map(|a| {
            (
                a.customer_id.as_str(),
                a.trigger_event_id.as_str(),
                a.payload.get("escalation").map(String::as_str),
                a.payload.get("level").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        tickets,
        [
            ("c-upset", "u1", None, None),
            ("c-resolved", "r1", None, None),
            ("c-calls", "k4", None, None),
            ("c-upset", "u1", Some("sla_breached"), None),
            ("c-upset", "u1", Some("sla_breached"), Some("2")),
        ]
    );
    let hour = 3_600_000;
    assert_eq!(a[3].trigger_event_time - a[0].trigger_event_time, 48 * hour);
    assert_eq!(a[4].trigger_event_time - a[3].trigger_event_time, 24 * hour);
    // The ticket carries what the customer already told us, so no one asks again.
    assert_eq!(
        a[2].payload["recent_event_types"],
        "call_started, call_ended, call_started, call_ended"
    );
}

#[test]
fn the_live_engine_gives_the_actions_a_replay_gives() {
    let topics = Topics::new("live-vs-replay", 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(&dir.path().join("state"), &unique("live-vs-replay"));
    let mut lines = Vec::new();
    for name in [
        "hesitation_guide",
        "recovery_offer",
        "post_delivery_survey",
        "closed_loop_alert",
    ] {
        let text = std::fs::read_to_string(cases().join(name).join("events.jsonl")).unwrap();
        lines.extend(text.lines().map(str::to_owned));
    }
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let records: Vec<Raw> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["customer_id"].as_str().unwrap().to_owned(),
                l.as_bytes().to_vec(),
                vec![],
            )
        })
        .collect();
    produce_raw(&topics.input, &records);
    run_engine(&cfg, state(&cfg), records.len() as u64);
    let live = actions(&topics.actions);

    let config = shipped_journeys_config(dir.path());
    let replayed = parse_actions(&replay(&config, &events, &[]));
    assert!(replayed.len() >= 9, "{} actions", replayed.len());
    assert_same_actions(&live, &replayed);
    // The action topic has two partitions: order holds per customer (per key).
    assert_eq!(
        by_customer(&live),
        by_customer(&replayed),
        "in the same order per customer"
    );
}

#[test]
fn validate_reports_every_problem_of_every_journey_file_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("journeys")).unwrap();
    let config = dir.path().join("rapport.toml");
    std::fs::write(&config, "journeys = [\"journeys/*.toml\"]\n").unwrap();
    std::fs::write(
        dir.path().join("journeys/a.toml"),
        r#"[[journey]]
id = "welcome"
version = 1
when = "profile.lifetime_valu > 10.0"

[journey.trigger]
events = ["page_view"]

[[journey.steps]]
wait = { cancel_when = "event.event_type == 'purchase'" }

[[journey.steps]]
[journey.steps.action]
kind = "free_lunch"
channel = "email"
"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("journeys/b.toml"),
        "[[journey]]\nid = \"welcome\"\nversion = 1\nwhen = \"event.channel\"\n\n[journey.trigger]\nevents = [\"page_view\"]\n\n[[journey.steps]]\n[journey.steps.action]\nkind = \"guide_link\"\nchannel = \"email\"\n",
    )
    .unwrap();
    let out = validate(&config);
    assert!(!out.status.success(), "a broken journey is refused");
    let err = String::from_utf8_lossy(&out.stderr);
    let a = dir.path().join("journeys/a.toml").display().to_string();
    let b = dir.path().join("journeys/b.toml").display().to_string();
    for (file, line, what) in [
        (&a, 4, "lifetime_valu"),
        (&a, 10, "wait"),
        (&a, 14, "free_lunch"),
        (&b, 4, "bool"),
        (&b, 2, "welcome"),
    ] {
        let hit = err
            .lines()
            .any(|l| l.starts_with(&format!("{file}:{line}:")) && l.contains(what));
        assert!(
            hit,
            "no {file}:{line}:<column> problem about {what:?} in:\n{err}"
        );
    }
}

/// Action ids per customer, in the order they were written.
fn by_customer(actions: &[Action]) -> std::collections::BTreeMap<&str, Vec<&str>> {
    let mut m: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for a in actions {
        m.entry(&a.customer_id).or_default().push(&a.action_id);
    }
    m
}

#[test]
fn actions_of_one_customer_arrive_in_decision_order() {
    // Few customers, many events, short commit intervals: consecutive intervals,
    // committed on alternating producers, often carry actions of one customer.
    let topics = Topics::new("order", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(&dir.path().join("state"), &unique("order"));
    cfg.engine.commit_interval_ms = 10;
    // Producers that send one record per request, one request at a time: an
    // interval still flushing on one producer while the next interval's records
    // go out on the other is then the rule, not a rare race.
    for (k, v) in [
        ("batch.num.messages", "1"),
        ("linger.ms", "0"),
        ("max.in.flight.requests.per.connection", "1"),
    ] {
        cfg.kafka.producer.insert(k.into(), v.into());
    }
    let mut sim =
        rapport_connectors::simulator::Simulator::new(rapport_connectors::simulator::SimConfig {
            customers: 300,
            seed: 61,
            malformed_per_mille: 0,
        });
    let records: Vec<Raw> = (0..80_000i64)
        .map(|i| sim.next_record(1_764_000_000_000 + i * 1_000))
        .map(|r| (r.key, r.value, vec![]))
        .collect();
    produce_raw(&topics.input, &records);
    run_engine(&cfg, state(&cfg), records.len() as u64);
    let live = actions(&topics.actions);

    // The decision order: the same events through `rapport replay`.
    let events = dir.path().join("events.jsonl");
    let mut text = Vec::new();
    for (_, value, _) in &records {
        text.extend_from_slice(value);
        text.push(b'\n');
    }
    std::fs::write(&events, text).unwrap();
    let config = shipped_journeys_config(dir.path());
    let decided = parse_actions(&replay(&config, &events, &[]));
    let repeat = by_customer(&decided)
        .values()
        .filter(|ids| ids.len() >= 3)
        .count();
    assert!(
        repeat >= 100,
        "{repeat} customers with three actions or more"
    );
    assert_same_actions(&live, &decided);
    let (live, decided) = (by_customer(&live), by_customer(&decided));
    let out_of_order: Vec<&&str> = decided
        .keys()
        .filter(|c| live.get(*c) != decided.get(*c))
        .take(5)
        .collect();
    assert!(
        out_of_order.is_empty(),
        "actions out of decision order for {out_of_order:?}"
    );
}

/// The actions of `rapport replay`'s output, one JSON line each.
fn parse_actions(out: &[u8]) -> Vec<Action> {
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// A configuration in `dir` that loads the shipped journey files.
fn shipped_journeys_config(dir: &Path) -> PathBuf {
    let config = dir.join("replay.toml");
    let pattern = format!("{}/*.toml", journey_dir().display());
    std::fs::write(&config, format!("journeys = [{pattern:?}]\n")).unwrap();
    config
}
