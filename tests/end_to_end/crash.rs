//! Crashes and scale-out: SIGKILL at random points, and a group of three that loses
//! a member, end with the same committed actions and profiles as a clean run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rapport::config::{Config, Guarantee};
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_model::{Action, Profile};

use rdkafka::Message;

use crate::support::*;

const T0: i64 = 1_764_000_000_000;

/// Writes `n` simulated touchpoints for `customers` customers, a tenth of a second apart.
pub(crate) fn feed(topic: &str, n: i64, customers: u64, seed: u64) {
    let mut sim = Simulator::new(SimConfig {
        customers,
        seed,
        malformed_per_mille: 2,
    });
    feed_from(&bootstrap(), topic, &mut sim, 0..n);
}

/// Writes `sim`'s records number `range` (event times a tenth of a second apart)
/// to `topic` on the cluster at `bootstrap`.
pub(crate) fn feed_from(
    bootstrap: &str,
    topic: &str,
    sim: &mut Simulator,
    range: std::ops::Range<i64>,
) {
    for chunk in range.collect::<Vec<_>>().chunks(20_000) {
        let records: Vec<Raw> = chunk
            .iter()
            .map(|i| sim.next_record(T0 + i * 100))
            .map(|r| (r.key, r.value, vec![]))
            .collect();
        produce_raw_on(bootstrap, topic, &records);
    }
}

/// The reference: one uninterrupted in-process run over `input`.
pub(crate) fn clean_run(input: &str, n: u64) -> (Vec<Action>, BTreeMap<String, Profile>) {
    clean_run_on(&bootstrap(), input, n)
}

/// [`clean_run`] on the cluster at `bootstrap`.
pub(crate) fn clean_run_on(
    bootstrap: &str,
    input: &str,
    n: u64,
) -> (Vec<Action>, BTreeMap<String, Profile>) {
    clean_run_with(bootstrap, input, n, None)
}

/// [`clean_run_on`] with the journeys of `like` (the shipped ones without).
pub(crate) fn clean_run_with(
    bootstrap: &str,
    input: &str,
    n: u64,
    like: Option<&Config>,
) -> (Vec<Action>, BTreeMap<String, Profile>) {
    let out = Topics::on(bootstrap, "clean", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = out.config(dir.path(), &unique("clean"));
    if let Some(like) = like {
        cfg.journeys = like.journeys.clone();
        cfg.compiled = like.compiled.clone();
    }
    cfg.kafka.touchpoint_topics = vec![input.to_owned()];
    run_engine(&cfg, state(&cfg), n);
    let actions = actions_on(bootstrap, &out.actions);
    (actions, all_profiles(&[dir.path()]))
}

pub(crate) fn ids(actions: &[Action]) -> BTreeSet<String> {
    actions.iter().map(|a| a.action_id.clone()).collect()
}

/// Runs `rapport run` over `topics`, killing it with SIGKILL whenever the group's
/// committed progress passes one of `kill_at` (fractions of the input), then lets a
/// last instance finish and stops it with SIGTERM.
fn crashing_run(cfg: &Config, dir: &std::path::Path, kill_at: &[f64], rng: &mut SmallRng) {
    let end = end_total(&cfg.kafka.touchpoint_topics[0]);
    for (round, fraction) in kill_at.iter().enumerate() {
        let mut inst = Instance::spawn(cfg, dir, &format!("run{round}"));
        // Killed only once it has restored and taken its partitions, so every
        // round exercises a restore (of what the previous round left).
        inst.wait_ready(4);
        let target = (end as f64 * fraction) as i64;
        while committed_total(&cfg.kafka.group_id, &cfg.kafka.touchpoint_topics[0]) < target {
            inst.assert_running();
            std::thread::sleep(Duration::from_millis(20));
        }
        // Kill somewhere inside the next commit interval or two, not on a boundary.
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        inst.kill9();
    }
    let mut last = Instance::spawn(cfg, dir, "final");
    // The last instance restores every partition before it finishes the stream.
    last.wait_ready(4);
    wait_caught_up(
        &cfg.kafka.group_id,
        &cfg.kafka.touchpoint_topics[0],
        &mut [&mut last],
    );
    last.terminate();
}

fn crash_test(guarantee: Guarantee, seed: u64) {
    let _serial = heavy();
    let n = 100_000;
    let topics = Topics::new("crash", 4);
    feed(&topics.input, n, 10_000, seed);
    // A tight marketing cap, so that many customers reach it.
    let (dir, journeys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut cfg = topics.config(&dir.path().join("state"), &unique("crash"));
    with_marketing_cap(&mut cfg, journeys.path(), MARKETING_CAP as u32);
    let (clean_actions, clean_profiles) =
        clean_run_with(&topics.bootstrap, &topics.input, n as u64, Some(&cfg));
    assert!(
        clean_actions.len() > 1_000,
        "the stream triggers journeys ({})",
        clean_actions.len()
    );
    assert!(
        clean_profiles.len() >= 9_000,
        "{} profiles",
        clean_profiles.len()
    );

    cfg.engine.guarantee = guarantee;
    cfg.engine.instance_id = "crashy".into();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut points: Vec<f64> = (0..4).map(|_| rng.random_range(0.05..0.9)).collect();
    points.sort_by(f64::total_cmp);
    crashing_run(&cfg, dir.path(), &points, &mut rng);

    let got = actions(&topics.actions);
    match guarantee {
        Guarantee::ExactlyOnce => {
            assert_eq!(got.len(), ids(&got).len(), "exactly once: no duplicates");
            assert_eq!(
                ids(&got),
                ids(&clean_actions),
                "the same actions as a clean run, none missing, none invented"
            );
        }
        Guarantee::AtLeastOnce => {
            assert_eq!(
                ids(&got),
                ids(&clean_actions),
                "the same actions as a clean run, none missing, none invented"
            );
            let clean: HashMap<&str, &Action> = clean_actions
                .iter()
                .map(|a| (a.action_id.as_str(), a))
                .collect();
            for a in &got {
                assert_eq!(
                    clean[a.action_id.as_str()],
                    a,
                    "a repeated action is identical to its original"
                );
            }
        }
    }
    assert_caps_hold(&got, &topics.decisions);
    let profiles = all_profiles(&[&dir.path().join("state")]);
    assert_eq!(profiles.len(), clean_profiles.len());
    for (id, p) in &clean_profiles {
        assert_eq!(
            profiles.get(id),
            Some(p),
            "profile {id} differs from the clean run"
        );
    }
}

/// Marketing actions per customer per 7 days in the crash tests.
const MARKETING_CAP: usize = 1;

/// The policy's caps hold exactly in `actions` (read with read_committed; the
/// whole input spans hours, inside every cap's window): no customer above
/// [`MARKETING_CAP`] marketing actions or one exclusive treatment, and the caps
/// were reached (decisions `capped` on `decisions`), so the check had something
/// to catch.
fn assert_caps_hold(actions: &[Action], decisions: &str) {
    let mut marketing: HashMap<&str, usize> = HashMap::new();
    let mut exclusive: HashMap<&str, usize> = HashMap::new();
    // at_least_once may repeat an action (same id): count each once.
    let mut seen = BTreeSet::new();
    for a in actions.iter().filter(|a| seen.insert(a.action_id.as_str())) {
        let purpose = rapport_journeys::Purpose::default_for(a.kind);
        if a.journey == "exclusive_treatment" {
            *exclusive.entry(&a.customer_id).or_default() += 1;
        } else if purpose == rapport_journeys::Purpose::Marketing {
            *marketing.entry(&a.customer_id).or_default() += 1;
        }
    }
    let most = marketing.values().max().copied().unwrap_or(0);
    assert!(
        most <= MARKETING_CAP,
        "a customer got {most} marketing actions (cap {MARKETING_CAP} per 7 days)"
    );
    let most = exclusive.values().max().copied().unwrap_or(0);
    assert!(
        most <= 1,
        "a customer got {most} exclusive treatments (cap 1 a month)"
    );
    let capped = drain(decisions)
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(m.payload()?).ok())
        .filter(|d| d["outcome"] == "capped")
        .count();
    assert!(capped > 0, "the input reaches the caps");
}

#[test]
fn exactly_once_survives_sigkill_at_random_points() {
    crash_test(Guarantee::ExactlyOnce, 42);
}

/// The local broker's SASL/PLAIN listener (`deploy/kafka.sh sasl-bootstrap`).
fn sasl_bootstrap() -> Option<String> {
    if std::env::var("RAPPORT_KAFKA_BOOTSTRAP").is_ok_and(|b| !b.is_empty()) {
        return None;
    }
    let out = std::process::Command::new("bash")
        .arg(rapport::broker::script())
        .arg("sasl-bootstrap")
        .output()
        .unwrap();
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn every_client_reaches_a_sasl_cluster_through_crashes_and_restores() {
    let Some(sasl) = sasl_bootstrap() else {
        eprintln!("skipped: RAPPORT_KAFKA_BOOTSTRAP names an external cluster without the local SASL listener");
        return;
    };
    let _serial = heavy();
    bootstrap();
    // The listener refuses a client without credentials.
    let anonymous: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &sasl)
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "PLAIN")
        .set("sasl.username", "rapport")
        .set("sasl.password", "wrong")
        .create()
        .unwrap();
    assert!(
        rdkafka::consumer::Consumer::fetch_metadata(&anonymous, None, Duration::from_secs(3))
            .is_err(),
        "the SASL listener refuses wrong credentials"
    );
    let n = 100_000;
    let topics = Topics::new("sasl", 4);
    feed(&topics.input, n, 10_000, 45);
    let (clean_actions, clean_profiles) = clean_run(&topics.input, n as u64);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(&dir.path().join("state"), &unique("sasl"));
    cfg.engine.instance_id = "secured".into();
    // Every client (consumer, producers, restorer, admin) gets these.
    cfg.kafka.bootstrap_servers = sasl;
    for (k, v) in [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanisms", "PLAIN"),
        ("sasl.username", "rapport"),
        ("sasl.password", "rapport-secret"),
    ] {
        cfg.kafka.client.insert(k.into(), v.into());
    }
    let mut rng = SmallRng::seed_from_u64(45);
    // Killed twice mid-stream; each restart restores through the SASL listener.
    crashing_run(&cfg, dir.path(), &[0.3, 0.6], &mut rng);
    let logs: String = ["run0", "run1", "final"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap_or_default())
        .collect();
    assert!(
        logs.matches("partition ready").count() >= 12,
        "every start restored its partitions; logs:\n{logs}"
    );
    assert_same_actions(&actions(&topics.actions), &clean_actions);
    let profiles = all_profiles(&[&dir.path().join("state")]);
    assert!(profiles == clean_profiles, "profiles equal the clean run's");
}

#[test]
fn at_least_once_repeats_only_identical_actions_after_sigkill() {
    crash_test(Guarantee::AtLeastOnce, 43);
}

#[test]
fn a_group_of_three_loses_one_and_the_others_take_over() {
    let _serial = heavy();
    let n = 60_000;
    let topics = Topics::new("group", 6);

    let dir = tempfile::tempdir().unwrap();
    let group = unique("group");
    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        let cfg = group_member(&topics, dir.path(), &group, name);
        instances.push(Instance::spawn(&cfg, dir.path(), name));
    }
    // Every member owns partitions before the stream starts, so the kill is mid-stream.
    instances.iter_mut().for_each(|i| i.wait_ready(1));
    feed(&topics.input, n, 6_000, 44);
    // Kill "b" once the group is a fifth of the way through.
    while committed_total(&group, &topics.input) < n / 5 {
        instances.iter_mut().for_each(Instance::assert_running);
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = instances.remove(1);
    b.kill9();
    let (mut a, mut c) = (instances.remove(0), instances.remove(0));
    wait_caught_up(&group, &topics.input, &mut [&mut a, &mut c]);
    a.terminate();
    c.terminate();
    let (clean_actions, clean_profiles) = clean_run(&topics.input, n as u64);

    let got = actions(&topics.actions);
    assert_eq!(got.len(), ids(&got).len(), "exactly once: no duplicates");
    let (g, c) = (ids(&got), ids(&clean_actions));
    let missing: Vec<&Action> = clean_actions
        .iter()
        .filter(|a| !g.contains(&a.action_id))
        .take(3)
        .collect();
    let extra: Vec<&Action> = got
        .iter()
        .filter(|a| !c.contains(&a.action_id))
        .take(3)
        .collect();
    if !(missing.is_empty() && extra.is_empty()) {
        let keep = std::env::temp_dir().join(format!("rapport-group-{}", std::process::id()));
        std::fs::create_dir_all(&keep).unwrap();
        for n in ["a", "b", "c"] {
            let _ = std::fs::copy(
                dir.path().join(format!("{n}.log")),
                keep.join(format!("{n}.log")),
            );
        }
        eprintln!("instance logs kept in {}", keep.display());
    }
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing, {} extra; missing e.g. {missing:?}; extra e.g. {extra:?}",
        c.difference(&g).count(),
        g.difference(&c).count()
    );
    // The durable state is the changelog: restore all of it into a fresh store, as
    // any instance taking over every partition would, and compare.
    let profiles = changelog_profiles(&bootstrap(), &group, 6);
    assert_eq!(profiles.len(), clean_profiles.len());
    assert!(
        profiles == clean_profiles,
        "restored profiles differ from the clean run"
    );
    let logs: String = ["a", "c"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap())
        .collect();
    assert!(
        logs.contains("partitions assigned"),
        "survivors took over partitions"
    );
}
