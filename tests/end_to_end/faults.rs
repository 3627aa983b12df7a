//! Faults that everyday traffic hits: scale-out under load, a member killed in a
//! rebalance, a broker restart, an oversized record, records off their customer's
//! partition. The engine keeps running through each, and the committed actions and
//! profiles equal a clean single-instance run's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport::config::Partitioner;
use rapport::ingest::route::KeyRule;
use rapport::kafka::{
    TopicSpec, DLQ_ORIGINAL_SIZE, DLQ_REASON, DLQ_SHA256, DLQ_STAGE, DLQ_TRUNCATED,
};
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_model::testing::tp;
use rapport_model::{Channel, EventType};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use sha2::{Digest, Sha256};

use crate::crash::{clean_run_on, feed_from};
use crate::support::*;

const T0: i64 = 1_764_000_000_000;

/// Keeps writing simulated touchpoints (after the first `from`) until `stop` is
/// set, so the group is under load whenever a member joins or dies.
fn feed_while(
    bootstrap: &str,
    topic: &str,
    mut sim: Simulator,
    from: i64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<i64> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    std::thread::spawn(move || {
        let mut next = from;
        while !stop.load(Ordering::SeqCst) {
            feed_from(&bootstrap, &topic, &mut sim, next..next + 5_000);
            next += 5_000;
            std::thread::sleep(Duration::from_millis(50));
        }
        next
    })
}

pub(crate) fn simulator(customers: u64, seed: u64) -> Simulator {
    Simulator::new(SimConfig {
        customers,
        seed,
        malformed_per_mille: 2,
    })
}

/// Compares the group's committed actions and changelog with a clean run.
pub(crate) fn assert_like_a_clean_run(topics: &Topics, group: &str, partitions: i32) {
    let n = end_total_on(&topics.bootstrap, &topics.input) as u64;
    let (clean_actions, clean_profiles) = clean_run_on(&topics.bootstrap, &topics.input, n);
    assert!(
        clean_actions.len() > 1_000,
        "{} actions",
        clean_actions.len()
    );
    assert_same_actions(
        &actions_on(&topics.bootstrap, &topics.actions),
        &clean_actions,
    );
    let profiles = changelog_profiles(&topics.bootstrap, group, partitions);
    assert_eq!(profiles.len(), clean_profiles.len());
    assert!(
        profiles == clean_profiles,
        "profiles in the changelog differ from the clean run"
    );
}

#[test]
fn scale_out_under_load_keeps_every_member_running_and_the_actions_exact() {
    let _serial = heavy();
    let topics = Topics::new("scaleout", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("scaleout"));
    let mut sim = simulator(100_000, 51);
    feed_from(&topics.bootstrap, &topics.input, &mut sim, 0..500_000);
    let mut a = Instance::spawn(
        &group_member(&topics, dir.path(), &group, "a"),
        dir.path(),
        "a",
    );
    a.wait_ready(4);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_while(&topics.bootstrap, &topics.input, sim, 500_000, stop.clone());
    let mut joined = Vec::new();
    for name in ["b", "c"] {
        let mut i = Instance::spawn(
            &group_member(&topics, dir.path(), &group, name),
            dir.path(),
            name,
        );
        i.wait_ready(1);
        a.assert_running();
        let (done, end) = (
            committed_total(&group, &topics.input),
            end_total(&topics.input),
        );
        assert!(
            done < end,
            "{name} joined a busy group ({done} of {end} committed)"
        );
        joined.push(i);
    }
    stop.store(true, Ordering::SeqCst);
    let fed = feeder.join().unwrap();
    let (mut b, mut c) = (joined.remove(0), joined.remove(0));
    wait_caught_up(&group, &topics.input, &mut [&mut a, &mut b, &mut c]);
    assert!(
        a.log_text().contains("partitions revoked"),
        "the busy member gave partitions away"
    );
    for i in [a, b, c] {
        i.terminate();
    }
    eprintln!("scale-out: {fed} touchpoints");
    assert_like_a_clean_run(&topics, &group, 4);
}

#[test]
fn a_member_killed_during_a_rebalance_loses_and_duplicates_nothing() {
    let _serial = heavy();
    let topics = Topics::new("rebalance-kill", 4);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("rebalance-kill"));
    let mut sim = simulator(100_000, 52);
    feed_from(&topics.bootstrap, &topics.input, &mut sim, 0..500_000);
    let mut a = Instance::spawn(
        &group_member(&topics, dir.path(), &group, "a"),
        dir.path(),
        "a",
    );
    a.wait_ready(4);
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_while(&topics.bootstrap, &topics.input, sim, 500_000, stop.clone());
    let mut b = Instance::spawn(
        &group_member(&topics, dir.path(), &group, "b"),
        dir.path(),
        "b",
    );
    // The busy member starts giving partitions away: kill it in the middle of that.
    a.wait_log("partitions revoked", 1);
    a.kill9();
    let mut c = Instance::spawn(
        &group_member(&topics, dir.path(), &group, "c"),
        dir.path(),
        "c",
    );
    c.wait_ready(1);
    b.assert_running();
    stop.store(true, Ordering::SeqCst);
    feeder.join().unwrap();
    wait_caught_up(&group, &topics.input, &mut [&mut b, &mut c]);
    b.terminate();
    c.terminate();
    assert_like_a_clean_run(&topics, &group, 4);
}

#[test]
fn a_broker_restarted_twice_under_load_does_not_stop_the_engine() {
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19192) else {
        return;
    };
    let topics = Topics::on(&bootstrap, "broker-restart", 4);
    let group = unique("broker-restart");
    let dir = tempfile::tempdir().unwrap();
    let mut sim = simulator(100_000, 53);
    feed_from(&bootstrap, &topics.input, &mut sim, 0..500_000);
    let mut cfg = topics.config(&dir.path().join("state"), &group);
    cfg.engine.instance_id = "restart".into();
    // A second of work in hand at any moment: whenever the broker goes, the
    // next commit (at most a second later) runs into the outage.
    cfg.engine.commit_interval_ms = 1000;
    let mut engine = Instance::spawn(&cfg, dir.path(), "engine");
    let end = end_total_on(&bootstrap, &topics.input);
    for fraction in [0.15, 0.55] {
        engine.wait_until(
            &format!("{fraction} of the input committed"),
            Duration::from_secs(180),
            Duration::from_millis(20),
            |_| {
                committed_total_on(&bootstrap, &group, &topics.input) as f64
                    >= end as f64 * fraction
            },
        );
        let done = committed_total_on(&bootstrap, &group, &topics.input);
        assert!(done < end, "the broker stops mid-stream ({done} of {end})");
        broker.kafka_sh("stop");
        std::thread::sleep(Duration::from_secs(5));
        engine.assert_running();
        broker.kafka_sh("start");
    }
    wait_caught_up_on(&bootstrap, &group, &topics.input, &mut [&mut engine]);
    let log = engine.log_text();
    engine.terminate();
    // A commit ran into an outage: it failed and was redone, or it waited
    // for the broker to come back.
    assert!(
        log.contains("commit failed") || log.contains("commit took long"),
        "the restarts did hit a commit; log:\n{log}"
    );
    assert_like_a_clean_run(&topics, &group, 4);
}

/// A broker away for longer than the group session: the consumer's session
/// times out on its side and its partitions are revoked as lost. When the
/// broker is back, the engine must rejoin the group and finish the input, not
/// sit outside the group with nothing assigned.
#[test]
fn a_broker_away_longer_than_the_group_session_does_not_keep_the_engine_out() {
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19192) else {
        return;
    };
    let run = Loaded::start(&bootstrap, "broker-away", 59, 200_000, 5, |_| {});
    broker.kafka_sh("stop");
    // Three sessions long: the consumer gives its assignment up as lost.
    std::thread::sleep(Duration::from_secs(18));
    broker.kafka_sh("start");
    let (log, topics, group) = run.finish(Duration::from_secs(180));
    // The case this test is for did happen: the partitions were lost.
    assert!(
        log.contains("considered this instance gone"),
        "the outage did not cost the engine its assignment; log:\n{log}"
    );
    assert_like_a_clean_run(&topics, &group, 4);
}

/// An engine alone in its group on a broker of the test's own (the broker's
/// smallest session, a commit every second), working through simulated
/// touchpoints, for the tests that take the broker away under load.
struct Loaded {
    bootstrap: String,
    topics: Topics,
    group: String,
    engine: Instance,
    /// The input's end offsets, summed.
    end: i64,
    _dir: tempfile::TempDir,
}

impl Loaded {
    /// Feeds `records` touchpoints of 50k customers (simulator `seed`),
    /// starts the engine with `tweak` applied to its configuration, and
    /// returns once a `part`th of the input is committed, but not all of it.
    fn start(
        bootstrap: &str,
        name: &str,
        seed: u64,
        records: i64,
        part: i64,
        tweak: impl FnOnce(&mut rapport::config::Config),
    ) -> Loaded {
        let topics = Topics::on(bootstrap, name, 4);
        let group = unique(name);
        let dir = tempfile::tempdir().unwrap();
        let mut sim = simulator(50_000, seed);
        feed_from(bootstrap, &topics.input, &mut sim, 0..records);
        let mut cfg = group_member(&topics, dir.path(), &group, name);
        cfg.engine.commit_interval_ms = 1000;
        tweak(&mut cfg);
        let mut engine = Instance::spawn(&cfg, dir.path(), "engine");
        let end = end_total_on(bootstrap, &topics.input);
        engine.wait_until(
            &format!("a {part}th of the input committed"),
            Duration::from_secs(180),
            Duration::from_millis(20),
            |_| committed_total_on(bootstrap, &group, &topics.input) >= end / part,
        );
        assert!(committed_total_on(bootstrap, &group, &topics.input) < end);
        Loaded {
            bootstrap: bootstrap.to_owned(),
            topics,
            group,
            engine,
            end,
            _dir: dir,
        }
    }

    /// Waits up to `limit` for the whole input to be committed (the broker
    /// back), stops the engine and returns its log, with the topics and the
    /// group to compare with a clean run.
    fn finish(mut self, limit: Duration) -> (String, Topics, String) {
        let (bootstrap, group, input, end) =
            (&self.bootstrap, &self.group, &self.topics.input, self.end);
        self.engine.wait_until(
            "the whole input committed after the broker's return",
            limit,
            Duration::from_millis(100),
            |_| committed_total_on(bootstrap, group, input) >= end,
        );
        let log = self.engine.log_text();
        self.engine.terminate();
        (log, self.topics, self.group)
    }
}

/// An instance whose consumer stays out of its group longer than
/// `engine.out_of_group_timeout_ms` says so on `/healthz` (503, with the
/// reason), so an orchestrator restarts it; once it is back in the group it
/// is healthy again and processes what arrives. Idle, it has nothing to
/// commit, so nothing in it fails meanwhile: the probe is what notices.
#[test]
fn an_instance_out_of_its_group_too_long_is_unhealthy_until_it_is_back() {
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19192) else {
        return;
    };
    let topics = Topics::on(&bootstrap, "out-of-group", 2);
    let group = unique("out-of-group");
    let dir = tempfile::tempdir().unwrap();
    let mut sim = simulator(1_000, 61);
    feed_from(&bootstrap, &topics.input, &mut sim, 0..2_000);
    let mut cfg = group_member(&topics, dir.path(), &group, "out");
    cfg.engine.out_of_group_timeout_ms = 8_000;
    cfg.kafka
        .consumer
        .insert("statistics.interval.ms".into(), "500".into());
    let addr = format!("127.0.0.1:{}", free_port());
    cfg.http.listen = addr.clone();
    let mut engine = Instance::spawn(&cfg, dir.path(), "engine");
    engine.wait_ready(2);
    wait_caught_up_on(&bootstrap, &group, &topics.input, &mut [&mut engine]);
    assert_eq!(crate::metrics::get(&addr, "/healthz").0, 200);
    // A settled member by its own statistics before the broker goes: the
    // time out of the group must count from the outage, not from the join.
    engine.wait_until(
        "the consumer's statistics reporting a settled member",
        Duration::from_secs(30),
        Duration::from_millis(100),
        |_| {
            let (_, m) = crate::metrics::get(&addr, "/metrics");
            crate::metrics::value(&m, "rapport_consumer_group_member") == 1.0
        },
    );

    // From before the stop: the engine loses the broker while it stops.
    let stopped = Instant::now();
    broker.kafka_sh("stop");
    // The coordinator is gone, then the limit (8 s) passes.
    let mut why = String::new();
    engine.wait_until(
        "/healthz answering 503 in the outage",
        Duration::from_secs(60),
        Duration::from_millis(200),
        |_| {
            let (status, body) = crate::metrics::get(&addr, "/healthz");
            why = body;
            status == 503
        },
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(8),
        "unhealthy before the limit: {why}"
    );
    assert!(why.contains("out of its group"), "{why}");
    assert!(why.contains("engine.out_of_group_timeout_ms"), "{why}");

    broker.kafka_sh("start");
    engine.wait_until(
        "/healthz back to 200 after the broker's return",
        Duration::from_secs(120),
        Duration::from_millis(200),
        |_| crate::metrics::get(&addr, "/healthz").0 == 200,
    );
    feed_from(&bootstrap, &topics.input, &mut sim, 2_000..4_000);
    wait_caught_up_on(&bootstrap, &group, &topics.input, &mut [&mut engine]);
    engine.terminate();
}

/// Headers of a dead letter by name.
fn header(m: &OwnedMessage, k: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == k)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

fn delivery_failed(id: &str, customer: &str) -> Vec<u8> {
    serde_json::to_vec(&tp(
        id,
        customer,
        Channel::System,
        EventType::DeliveryFailed,
        T0,
    ))
    .unwrap()
}

#[test]
fn a_2_mib_record_is_dead_lettered_and_the_records_behind_it_processed() {
    let topics = Topics::new("oversized", 1);
    // The input topic takes records up to 4 MiB, as a producer's topic may.
    let mut spec = TopicSpec::new(&topics.input, 1);
    spec.configs
        .push(("max.message.bytes".into(), "4194304".into()));
    let big_topic = unique("oversized.big-input");
    spec.name = big_topic.clone();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(rapport::kafka::ensure_topics(&bootstrap(), &[spec]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("oversized"));
    cfg.kafka.touchpoint_topics = vec![big_topic.clone()];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap();
    let big: Vec<u8> = {
        let mut t = tp("big", "c-big", Channel::Web, EventType::PageView, T0);
        t.attributes.insert("blob".into(), "x".repeat(2 << 20));
        serde_json::to_vec(&t).unwrap()
    };
    let send = |key: &str, value: &[u8]| {
        producer
            .send(BaseRecord::to(&big_topic).key(key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    };
    for round in 0..2 {
        // The second round is processed by a restarted engine on the same state.
        let (first, second) = (format!("c-{round}a"), format!("c-{round}b"));
        send(&first, &delivery_failed(&format!("g{round}a"), &first));
        send("c-big", &big);
        send(&second, &delivery_failed(&format!("g{round}b"), &second));
        run_engine(&cfg, state(&cfg), 3);
        let served: Vec<String> = actions(&topics.actions)
            .into_iter()
            .map(|a| a.customer_id)
            .collect();
        assert!(
            served.contains(&first) && served.contains(&second),
            "round {round}: records around the big one are processed: {served:?}"
        );
        let dead = drain(&topics.dead_letter);
        assert_eq!(dead.len(), round + 1, "one dead letter per big record");
        let m = &dead[round];
        assert_eq!(header(m, DLQ_STAGE).as_deref(), Some("decode"));
        let reason = header(m, DLQ_REASON).unwrap();
        assert!(reason.contains("max_record_bytes"), "{reason}");
        assert_eq!(header(m, DLQ_ORIGINAL_SIZE), Some(big.len().to_string()));
        let sha: String = Sha256::digest(&big)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(header(m, DLQ_SHA256), Some(sha));
        assert_eq!(header(m, DLQ_TRUNCATED).as_deref(), Some("true"));
        let kept = m.payload().unwrap();
        assert!(
            kept.len() > 900_000,
            "as much as fits is kept ({} bytes)",
            kept.len()
        );
        assert_eq!(kept, &big[..kept.len()]);
    }
}

#[test]
fn records_off_their_customers_partition_are_accounted_for() {
    let topics = Topics::new("routing", 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &unique("routing"));
    let rule = KeyRule::new(Partitioner::Murmur2, 2);
    let home = rule.partition_of(b"c-split");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let view = |i: usize| {
        serde_json::to_vec(
            &tp(
                &format!("v{i}"),
                "c-split",
                Channel::Web,
                EventType::ProductView,
                T0 + i as i64 * 1000,
            )
            .with_sku("tv"),
        )
        .unwrap()
    };
    // (key, partition, value): 3 at home, 3 on the other partition, 2 keyless,
    // 1 keyed by someone else.
    let mut records: Vec<(Option<&str>, i32)> = Vec::new();
    records.extend([(Some("c-split"), home); 3]);
    records.extend([(Some("c-split"), 1 - home); 3]);
    records.extend([(None, home), (None, 1 - home)]);
    records.push((Some("someone-else"), home));
    for (i, (key, partition)) in records.iter().enumerate() {
        let value = view(i);
        let mut r = BaseRecord::<str, [u8]>::to(&topics.input)
            .partition(*partition)
            .payload(&value);
        if let Some(k) = key {
            r = r.key(*k);
        }
        producer.send(r).map_err(|(e, _)| e).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let metrics = run_engine(&cfg, state(&cfg), records.len() as u64);

    let profile = state(&cfg).get(home, "c-split").unwrap().unwrap().profile;
    assert_eq!(profile.events, 3, "the records on the customer's partition");
    assert!(
        state(&cfg).get(1 - home, "c-split").unwrap().is_none(),
        "no second profile"
    );
    let dead = drain(&topics.dead_letter);
    let reasons: Vec<String> = dead.iter().filter_map(|m| header(m, DLQ_REASON)).collect();
    let count = |what: &str| reasons.iter().filter(|r| r.contains(what)).count();
    assert_eq!(
        count(&format!("belongs on partition {home}")),
        3,
        "{reasons:#?}"
    );
    assert_eq!(count("has no key"), 2, "{reasons:#?}");
    assert_eq!(count("\"someone-else\""), 1, "{reasons:#?}");
    assert_eq!(
        profile.events as usize + dead.len(),
        records.len(),
        "the profile and the dead-letter topic account for every record"
    );
    assert_eq!(metrics.skipped.get(), 0, "nothing skipped silently");
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["route", "wrong_partition"])
            .get(),
        3
    );
}

/// Sets `topic`'s `max.message.bytes` on the cluster at `bootstrap`.
fn set_max_message_bytes(bootstrap: &str, topic: &str, bytes: usize) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let value = bytes.to_string();
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("max.message.bytes", &value);
    let results = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(admin.alter_configs(&[alter], &AdminOptions::new()))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|e| panic!("altering {topic}: {e:?}"));
    }
}

/// Under `at_least_once`, an action topic that refuses every record for a while
/// (here: a record-size limit below any action's size) makes intervals fail
/// after their changelog records were acknowledged; the engine redoes them, and
/// no action of a clean run is missing once the topic takes records again.
#[test]
fn at_least_once_loses_no_action_when_the_action_topic_refuses_records_for_a_while() {
    let _serial = heavy();
    let topics = Topics::new("refused", 2);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("refused"));
    let mut sim = simulator(2_000, 53);
    feed_from(&topics.bootstrap, &topics.input, &mut sim, 0..40_000);
    let n = end_total_on(&topics.bootstrap, &topics.input) as u64;
    let (clean, _) = clean_run_on(&topics.bootstrap, &topics.input, n);
    assert!(clean.len() > 500, "{} actions", clean.len());

    set_max_message_bytes(&topics.bootstrap, &topics.actions, 64);
    let mut cfg = group_member(&topics, dir.path(), &group, "a");
    cfg.engine.guarantee = rapport::config::Guarantee::AtLeastOnce;
    let addr = format!("127.0.0.1:{}", free_port());
    cfg.http.listen = addr.clone();
    let mut a = Instance::spawn(&cfg, dir.path(), "a");
    // Intervals fail while the topic refuses actions, and are redone.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        a.assert_running();
        let (_, m) = crate::metrics::get(&addr, "/metrics");
        if crate::metrics::value(&m, "rapport_rewinds_total") >= 3.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no interval failed");
        std::thread::sleep(Duration::from_millis(100));
    }
    set_max_message_bytes(&topics.bootstrap, &topics.actions, 1_048_588);
    wait_caught_up_on(&topics.bootstrap, &group, &topics.input, &mut [&mut a]);
    a.terminate();

    let got: std::collections::BTreeSet<String> = actions_on(&topics.bootstrap, &topics.actions)
        .into_iter()
        .map(|a| a.action_id)
        .collect();
    let missing: Vec<&rapport_model::Action> = clean
        .iter()
        .filter(|c| !got.contains(&c.action_id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} actions lost, e.g. {:?}",
        missing.len(),
        clean.len(),
        missing.first()
    );
}

/// Under load, a broker that goes away for longer than the group session
/// fails the commit in flight, and the engine rewinds while the cluster is
/// still away: aborting the transactions and replacing a producer each wait on
/// the broker. Meanwhile the main loop must go on polling its consumer (which
/// serves its rebalance callbacks, statistics and errors), not sit in one call
/// for tens of seconds: `rapport_consumer_poll_age_seconds` stays low through
/// the outage.
#[test]
fn the_consumer_is_polled_while_the_engine_rewinds_without_its_broker() {
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19192) else {
        return;
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let run = Loaded::start(&bootstrap, "polled", 67, 300_000, 10, |cfg| {
        cfg.http.listen = addr.clone();
    });
    let poll_age = || {
        let (_, text) = crate::metrics::get(&addr, "/metrics");
        assert!(text.contains("rapport_consumer_poll_age_seconds"), "{text}");
        crate::metrics::value(&text, "rapport_consumer_poll_age_seconds")
    };
    broker.kafka_sh("stop");
    // Five sessions: the assignment is lost, the commit fails, and the
    // rewind runs into the outage.
    let stopped = Instant::now();
    let mut ages = Vec::new();
    while stopped.elapsed() < Duration::from_secs(30) {
        ages.push(poll_age());
        std::thread::sleep(Duration::from_millis(250));
    }
    broker.kafka_sh("start");
    let (log, topics, group) = run.finish(Duration::from_secs(240));
    // The case this test is for did happen: the engine rewound.
    assert!(
        log.contains("commit failed: dropping uncommitted work"),
        "no rewind during the outage; log:\n{log}"
    );
    let longest = ages.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "longest the main loop went without polling its consumer in the outage: {longest:.1} s"
    );
    assert!(
        longest < 15.0,
        "the main loop went {longest:.1} s without polling its consumer during the outage (every 250 ms: {ages:?}); log:\n{log}"
    );
    assert_like_a_clean_run(&topics, &group, 4);
}
