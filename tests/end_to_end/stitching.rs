//! Identity stitching across partitions against the real broker: anonymous
//! views on one partition count for the customer whose profile lives on
//! another, through the repartition topic, also when instances are SIGKILLed
//! while merges are in flight, and in a group of three that loses a member.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rapport::config::{Config, Partitioner};
use rapport::http::AppState;
use rapport::ingest::route::KeyRule;
use rapport::metrics::Metrics;
use rapport::runtime;
use rapport::state::StateStore;
use rapport_model::testing::tp;
use rapport_model::{Action, Channel, EventType, Profile, Touchpoint};
use rdkafka::Message;

use crate::metrics::get;
use crate::support::*;

const T0: i64 = 1_764_000_000_000;

fn anon_view(event: &str, anon: &str, sku: &str, at: i64) -> Touchpoint {
    let mut t = tp(event, anon, Channel::Web, EventType::ProductView, at).with_sku(sku);
    t.customer_id = None;
    t.anonymous_id = Some(anon.into());
    t
}

fn login(event: &str, customer: &str, anon: &str, at: i64) -> Touchpoint {
    let mut t = tp(event, customer, Channel::Web, EventType::Identify, at);
    t.anonymous_id = Some(anon.into());
    t
}

fn view(event: &str, customer: &str, sku: &str, at: i64) -> Touchpoint {
    tp(event, customer, Channel::Web, EventType::ProductView, at).with_sku(sku)
}

/// Customer `c-{n}` and an anonymous id of theirs on a different partition.
fn pair(rule: &KeyRule, n: usize) -> (String, String) {
    let customer = format!("c-{n}");
    let home = rule.partition_of(customer.as_bytes());
    let anon = (0..)
        .map(|i| format!("anon-{n}-{i}"))
        .find(|a| rule.partition_of(a.as_bytes()) != home)
        .unwrap();
    (customer, anon)
}

/// Two anonymous views, the login, one more view as the customer: the
/// scenario of one shopper, an hour of event time apart from the next one.
fn shopper(rule: &KeyRule, n: usize) -> Vec<Touchpoint> {
    let (customer, anon) = pair(rule, n);
    let t = T0 + n as i64 * 1000;
    let sku = format!("sku-{}", n % 7);
    vec![
        anon_view(&format!("{n}-v1"), &anon, &sku, t),
        anon_view(&format!("{n}-v2"), &anon, &sku, t + 100),
        login(&format!("{n}-l"), &customer, &anon, t + 200),
        view(&format!("{n}-v3"), &customer, &sku, t + 300),
    ]
}

fn stitching_config(topics: &Topics, dir: &std::path::Path, group: &str) -> Config {
    let mut cfg = topics.config(dir, group);
    cfg.identity.events_topic = unique("stitch.identity");
    cfg
}

#[test]
fn anonymous_views_on_one_partition_count_for_the_customer_on_another() {
    let topics = Topics::new("stitch", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("stitch"));
    let cfg = stitching_config(&topics, dir.path(), &group);
    let rule = KeyRule::new(Partitioner::Murmur2, 4);
    let (customer, anon) = pair(&rule, 1);
    // Everything is in the topic before the engine starts: the third view is
    // read long before the anonymous history can arrive, and must wait for it.
    produce(&topics.input, &shopper(&rule, 1));

    let state = Arc::new(StateStore::open(&cfg.state).unwrap());
    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state.clone(), metrics.clone()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let app = AppState::local(
        &cfg,
        state.clone(),
        metrics.clone(),
        engine.progress.clone(),
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let a: std::net::SocketAddr = addr.parse().unwrap();
    rt.spawn(async move { rapport::http::serve_router(a, rapport::http::router(app)).await });
    wait_stitched(&topics.bootstrap, &group, &topics.input);

    let guides: Vec<Action> = actions(&topics.actions)
        .into_iter()
        .filter(|a| a.journey == "hesitation_guide")
        .collect();
    assert_eq!(guides.len(), 1, "{guides:?}");
    assert_eq!(guides[0].customer_id, customer);
    assert_eq!(
        guides[0].trigger_event_id, "1-v3",
        "the third view fires it, counting the two anonymous ones"
    );

    let (status, body) = get(&addr, &format!("/v1/profiles/{customer}"));
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["anonymous_ids"], serde_json::json!([anon]));
    assert_eq!(view["events"], 4);
    assert_eq!(view["identity"]["links"][0]["state"], "merged");
    let (status, body) = get(&addr, &format!("/v1/profiles/{anon}"));
    assert_eq!(status, 404, "the anonymous profile is gone: {body}");
    assert!(
        body.contains(&format!(r#""merged_into":"{customer}""#)),
        "{body}"
    );

    let events: Vec<serde_json::Value> = drain(&cfg.identity.events_topic)
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "merged");
    assert_eq!(events[0]["anonymous_id"], anon.as_str());
    assert_eq!(events[0]["events_moved"], 2);
    assert_eq!(
        metrics.identity_events.with_label_values(&["merged"]).get(),
        1
    );
    engine.shutdown().unwrap();
}

#[test]
fn two_known_customers_on_one_device_and_the_limit_leave_a_record() {
    let topics = Topics::new("stitch-limits", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("stitch-limits"));
    let mut cfg = stitching_config(&topics, dir.path(), &group);
    cfg.identity.max_anonymous_ids = 2;
    // A shared tablet in a store: two customers log in on it, one after the other.
    let mut input = vec![
        anon_view("t1", "tablet-1", "sku-1", T0),
        login("t2", "c-ann", "tablet-1", T0 + 1000),
        login("t3", "c-bob", "tablet-1", T0 + 2000),
    ];
    // A customer who logs in from three devices: the third is over the limit.
    for (i, device) in ["d-1", "d-2", "d-3"].into_iter().enumerate() {
        let at = T0 + 10_000 + i as i64 * 1000;
        input.push(anon_view(&format!("dv{i}"), device, "sku-2", at));
        input.push(login(&format!("dl{i}"), "c-cat", device, at + 10));
    }
    produce(&topics.input, &input);
    let store = state(&cfg);
    let engine = runtime::start(cfg.clone(), store.clone(), Metrics::new()).unwrap();
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    engine.shutdown().unwrap();

    let kinds: BTreeMap<String, Vec<String>> = drain(&cfg.identity.events_topic)
        .iter()
        .map(|m| serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap())
        .fold(BTreeMap::new(), |mut acc, e| {
            acc.entry(e["anonymous_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(e["kind"].as_str().unwrap().to_owned());
            acc
        });
    // The two logins' link requests reach the tablet's partition in either
    // order: the first takes the anonymous view, the second is a conflict.
    let mut tablet = kinds["tablet-1"].clone();
    tablet.sort();
    assert_eq!(tablet, ["conflict", "merged"], "{kinds:?}");
    assert_eq!(kinds["d-3"], ["limit_exceeded"], "{kinds:?}");
    let ann = store.find_profile("c-ann").unwrap().unwrap();
    let bob = store.find_profile("c-bob").unwrap().unwrap();
    assert_eq!(ann.events + bob.events, 3, "one of them has the view");
    assert!(
        ann.events <= 2 && bob.events <= 2,
        "ann and bob are not merged"
    );
    assert!(!bob.anonymous_ids.contains(&"c-ann".to_owned()));
    assert!(!ann.anonymous_ids.contains(&"c-bob".to_owned()));
    // The tablet follows the latest login by event time.
    let link = store.find("tablet-1").unwrap().unwrap();
    assert_eq!(link.link().map(|l| l.customer_id.as_str()), Some("c-bob"));
    let cat = store.find_profile("c-cat").unwrap().unwrap();
    assert_eq!(cat.anonymous_ids, ["d-1", "d-2"]);
    assert_eq!(
        store.find_profile("d-3").unwrap().map(|p| p.events),
        Some(1),
        "the third device keeps its own history"
    );
}

/// The customers' profiles (anonymous ids' stubs left out) in the stores at `dirs`.
fn customers(dirs: &[&std::path::Path]) -> BTreeMap<String, Profile> {
    all_profiles(dirs)
        .into_iter()
        .filter(|(id, p)| id.starts_with("c-") && p.events > 0)
        .collect()
}

/// Many shoppers at once, their merges spread over many intervals.
fn feed_shoppers(topics: &Topics, rule: &KeyRule, n: usize) {
    let all: Vec<Touchpoint> = (0..n).flat_map(|i| shopper(rule, i)).collect();
    produce(&topics.input, &all);
}

/// The reference: one uninterrupted in-process run.
fn clean(topics: &Topics, like: &Config) -> (Vec<Action>, BTreeMap<String, Profile>) {
    let out = Topics::new("stitch-clean", 1);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("stitch-clean"));
    let mut cfg = out.config(dir.path(), &group);
    cfg.identity = like.identity.clone();
    cfg.identity.events_topic = unique("stitch.clean.identity");
    cfg.kafka.touchpoint_topics = vec![topics.input.clone()];
    let engine = runtime::start(cfg.clone(), state(&cfg), Metrics::new()).unwrap();
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    engine.shutdown().unwrap();
    (actions(&out.actions), customers(&[dir.path()]))
}

fn assert_same_as_clean(topics: &Topics, cfg: &Config, dirs: &[&std::path::Path], shoppers: usize) {
    let (clean_actions, clean_profiles) = clean(topics, cfg);
    let guides = clean_actions
        .iter()
        .filter(|a| a.journey == "hesitation_guide")
        .count();
    assert_eq!(
        guides, shoppers,
        "every shopper's third view fires the guide"
    );
    let got_actions = actions(&topics.actions);
    let fired: std::collections::BTreeSet<&str> =
        got_actions.iter().map(|a| a.customer_id.as_str()).collect();
    let missing: Vec<&str> = clean_actions
        .iter()
        .map(|a| a.customer_id.as_str())
        .filter(|c| !fired.contains(c))
        .take(2)
        .collect();
    for c in &missing {
        for d in dirs {
            let st = StateStore::open(&rapport::config::StateConfig {
                path: d.to_path_buf(),
                ..Default::default()
            })
            .unwrap();
            eprintln!("customer {c} without its action, in {}: events, recent, marks, entries, products {:?}", d.display(), st.find(c).unwrap().map(|s| (s.profile.events, s.profile.recent.iter().map(|r| r.event_id.to_string()).collect::<Vec<_>>(), s.profile.journeys.clone(), s.profile.journey_entries.clone(), s.profile.products.clone())));
        }
    }
    assert_same_actions(&got_actions, &clean_actions);
    let got = customers(dirs);
    assert_eq!(got.len(), shoppers);
    for (id, p) in &clean_profiles {
        assert_eq!(
            got.get(id),
            Some(p),
            "profile {id} differs from the clean run"
        );
    }
}

#[test]
fn merges_survive_sigkill_at_random_points() {
    let _serial = heavy();
    let (shoppers, rounds) = (1600, 4);
    let topics = Topics::new("stitch-crash", 4);
    let rule = KeyRule::new(Partitioner::Murmur2, 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("stitch-crash"));
    let mut cfg = stitching_config(&topics, &dir.path().join("state"), &group);
    cfg.engine.instance_id = "stitchy".into();
    let repartition = format!("{group}-identity-repartition");
    let mut rng = SmallRng::seed_from_u64(15);
    let mut mid_merge = 0;
    let per_round = shoppers / rounds;
    for round in 0..rounds {
        // Each round brings shoppers of its own, so it has merges to do when
        // it is killed, whatever the rounds before it finished.
        let batch: Vec<Touchpoint> = (round * per_round..(round + 1) * per_round)
            .flat_map(|i| shopper(&rule, i))
            .collect();
        let before = end_total(&repartition);
        produce(&topics.input, &batch);
        let mut inst = Instance::spawn(&cfg, dir.path(), &format!("run{round}"));
        inst.wait_ready(4);
        // Killed once this round's merges have started, at a random point after.
        while end_total(&repartition) <= before {
            inst.assert_running();
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
        inst.kill9();
        // Once killed, nothing more commits: was a merge in flight?
        if !stitched(&topics.bootstrap, &group, &topics.input) {
            mid_merge += 1;
        }
    }
    assert!(
        mid_merge >= 2,
        "only {mid_merge} of {rounds} kills landed with merges in flight"
    );
    let mut last = Instance::spawn(&cfg, dir.path(), "final");
    last.wait_ready(4);
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    last.terminate();
    assert_same_as_clean(&topics, &cfg, &[&dir.path().join("state")], shoppers);
}

#[test]
fn a_group_of_three_loses_one_in_the_middle_of_merges() {
    let _serial = heavy();
    let shoppers = 1500;
    let topics = Topics::new("stitch-group", 6);
    let rule = KeyRule::new(Partitioner::Murmur2, 6);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("stitch-group"));
    let mut instances = Vec::new();
    let mut cfg = None;
    for name in ["a", "b", "c"] {
        let mut c = group_member(&topics, dir.path(), &group, name);
        c.identity.events_topic = format!("{group}.identity");
        instances.push(Instance::spawn(&c, dir.path(), name));
        cfg = Some(c);
    }
    instances.iter_mut().for_each(|i| i.wait_ready(2));
    feed_shoppers(&topics, &rule, shoppers);
    // Kill "b" once merges are under way and not finished.
    let repartition = format!("{group}-identity-repartition");
    while end_total(&repartition) == 0 {
        instances.iter_mut().for_each(Instance::assert_running);
        std::thread::sleep(Duration::from_millis(10));
    }
    let b = instances.remove(1);
    b.kill9();
    assert!(
        !stitched(&topics.bootstrap, &group, &topics.input),
        "the kill landed after every merge was done"
    );
    let (mut a, mut c) = (instances.remove(0), instances.remove(0));
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    a.assert_running();
    c.assert_running();
    a.terminate();
    c.terminate();
    let dirs = [
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    ];
    let dirs: Vec<&std::path::Path> = dirs.iter().map(|d| d.as_path()).collect();
    assert_same_as_clean(&topics, &cfg.unwrap(), &dirs, shoppers);
}
