//! Erasure everywhere: a request through the authenticated HTTP endpoint
//! removes a customer (inside post_delivery_survey's 2-hour wait) and the
//! anonymous id linked to them; the profile API answers 404, the changelog ends
//! every key of theirs with a tombstone, the wait never fires, replayed
//! touchpoints are dead-lettered as `erased`, a receipt confirms every
//! component, and all of it holds after a restart restored from the changelog.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rapport::config::Config;
use rapport::http::AppState;
use rapport::metrics::Metrics;
use rapport::privacy::http::ErasureEndpoint;
use rapport::privacy::suppression::{changelog_key, hex};
use rapport::privacy::Receipt;
use rapport::runtime::{self, EngineHandle};
use rapport::state::StateStore;
use rapport_model::testing::tp;
use rapport_model::{ActionKind, Channel, EventType, Touchpoint};
use rdkafka::message::Headers;
use rdkafka::Message;

use crate::metrics::get;
use crate::support::*;

const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;
const TOKEN: &str = "erasure-test-token";

/// The erased customer's history: an anonymous visit, the identify that links
/// it, and a delivery that starts the survey's 2-hour wait.
fn history() -> Vec<Touchpoint> {
    let mut anon = tp(
        "h1",
        "a-erase",
        Channel::Web,
        EventType::PageView,
        T0 - 60_000,
    );
    anon.customer_id = None;
    anon.anonymous_id = Some("a-erase".into());
    let mut identify = tp(
        "h2",
        "c-erase",
        Channel::Web,
        EventType::Identify,
        T0 - 30_000,
    );
    identify.anonymous_id = Some("a-erase".into());
    vec![
        anon,
        identify,
        tp("h3", "c-erase", Channel::System, EventType::Delivered, T0).with_order("o-1"),
        tp("k1", "c-keep", Channel::System, EventType::Delivered, T0).with_order("o-2"),
    ]
}

/// An engine configuration with erasure on, its endpoint's token in the environment.
fn privacy_config(topics: &Topics, dir: &std::path::Path, group: &str) -> Config {
    let mut cfg = topics.config(dir, group);
    cfg.privacy.topic = unique("erasure.privacy");
    cfg.privacy.results_topic = unique("erasure.results");
    cfg.privacy.token_env = "RAPPORT_TEST_ERASURE_TOKEN".into();
    cfg.privacy.hash_salt = "test-salt".into();
    // SAFETY of the test: the variable is only read by this test's endpoint.
    std::env::set_var("RAPPORT_TEST_ERASURE_TOKEN", TOKEN);
    cfg.validate().expect("valid privacy config");
    cfg
}

/// Starts the engine and serves its profile API and erasure endpoint on a free port.
fn start(cfg: &Config, rt: &tokio::runtime::Runtime) -> (EngineHandle, Metrics, String) {
    let state = Arc::new(StateStore::open(&cfg.state).unwrap());
    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state.clone(), metrics.clone()).unwrap();
    let endpoint = ErasureEndpoint::from_config(cfg, engine.key_rule)
        .unwrap()
        .expect("the endpoint is on with a token");
    let app = AppState::local(cfg, state, metrics.clone(), engine.progress.clone());
    let router = rapport::http::router(app).merge(endpoint.routes());
    let addr = format!("127.0.0.1:{}", free_port());
    let a: std::net::SocketAddr = addr.parse().unwrap();
    rt.spawn(async move { rapport::http::serve_router(a, router).await });
    (engine, metrics, addr)
}

/// POSTs `body` to `/privacy/erasure` with `token`: status and body.
fn post_erasure(addr: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "connecting to {addr}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST /privacy/erasure HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned(),
    )
}

/// Waits for the receipt of `request_id` on `topic`.
fn wait_receipt(topic: &str, request_id: &str, engine: &EngineHandle) -> Receipt {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = drain(topic)
            .iter()
            .filter_map(|m| serde_json::from_slice::<Receipt>(m.payload()?).ok())
            .find(|r| r.request_id == request_id);
        if let Some(r) = found {
            return r;
        }
        assert!(!engine.is_finished(), "engine stopped");
        assert!(Instant::now() < deadline, "no receipt for {request_id}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Dead letters of `topic` whose reason is `erased`.
fn erased_dead_letters(topic: &str) -> usize {
    drain(topic)
        .iter()
        .filter(|m| {
            m.headers().is_some_and(|h| {
                h.iter()
                    .any(|h| h.key == rapport::kafka::DLQ_REASON && h.value == Some(b"erased"))
            })
        })
        .count()
}

/// The last changelog record of each key.
fn last_changelog_values(changelog: &str) -> std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> {
    drain(changelog)
        .iter()
        .map(|m| {
            (
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            )
        })
        .collect()
}

#[test]
fn an_erased_customer_is_gone_everywhere_and_stays_gone_after_a_restart() {
    let topics = Topics::new("erasure", 1);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("erasure"));
    let cfg = privacy_config(&topics, dir.path(), &group);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let history = history();
    produce(&topics.input, &history);
    let (engine, metrics, addr) = start(&cfg, &rt);
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    for id in ["c-erase", "c-keep"] {
        assert_eq!(
            get(&addr, &format!("/v1/profiles/{id}")).0,
            200,
            "{id} before"
        );
    }
    // The anonymous visit was merged into c-erase's profile.
    let (status, merged) = get(&addr, "/v1/profiles/a-erase");
    assert_eq!(status, 404, "{merged}");
    assert!(merged.contains(r#""merged_into":"c-erase""#), "{merged}");

    // The endpoint refuses a request without the token, and accepts one with it.
    let body = r#"{"customer_id":"c-erase","request_id":"req-1"}"#;
    assert_eq!(post_erasure(&addr, None, body).0, 401);
    assert_eq!(post_erasure(&addr, Some("wrong"), body).0, 401);
    let (status, answer) = post_erasure(&addr, Some(TOKEN), body);
    assert_eq!(status, 202, "{answer}");
    assert!(answer.contains("req-1"), "{answer}");

    let receipt = wait_receipt(&cfg.privacy.results(), "req-1", &engine);
    check_receipt(&cfg, &receipt);
    for id in ["c-erase", "a-erase"] {
        assert_eq!(
            get(&addr, &format!("/v1/profiles/{id}")).0,
            404,
            "{id} erased"
        );
    }
    assert_eq!(get(&addr, "/v1/profiles/c-keep").0, 200);

    // Event time moves past the wait with another customer's event; the old
    // touchpoints are replayed. Only c-keep's survey fires; the replays are refused.
    let later = tp(
        "o1",
        "c-other",
        Channel::Web,
        EventType::PageView,
        T0 + 3 * HOUR,
    );
    let mut input = vec![later];
    input.extend(history[..3].iter().cloned());
    produce(&topics.input, &input);
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    let surveys: Vec<String> = actions(&topics.actions)
        .into_iter()
        .filter(|a| a.kind == ActionKind::SurveyRequest)
        .map(|a| a.customer_id)
        .collect();
    assert_eq!(surveys, ["c-keep"], "no survey for the erased customer");
    assert_eq!(erased_dead_letters(&topics.dead_letter), 3);
    assert_eq!(metrics.erasures.get(), 1);
    assert_eq!(metrics.erased_touchpoints.get(), 3);
    for id in ["c-erase", "a-erase"] {
        assert_eq!(
            get(&addr, &format!("/v1/profiles/{id}")).0,
            404,
            "{id} not recreated"
        );
    }
    engine.shutdown().unwrap();
    check_changelog(&cfg);
    restart_from_changelog(&cfg, &topics, &rt);
}

/// Every component done, both ids covered (hashed), the residual copies named.
fn check_receipt(cfg: &Config, r: &Receipt) {
    assert!(
        r.components.len() == 9 && r.components.iter().all(|c| c.status == "done"),
        "{r:?}"
    );
    let hasher = cfg.privacy.hasher(&cfg.kafka.group_id).unwrap();
    let mut ids = r.ids.clone();
    ids.sort();
    let mut want = vec![hex(&hasher.hash("c-erase")), hex(&hasher.hash("a-erase"))];
    want.sort();
    assert_eq!(ids, want);
    assert!(r.completed_at.unwrap() >= r.received_at);
    let changelog = format!("changelog {}", cfg.kafka.changelog());
    let lag = cfg.privacy.changelog_max_compaction_lag_ms as i64;
    assert!(
        r.residual_copies
            .iter()
            .any(|c| c.location == changelog && c.until == Some(r.completed_at.unwrap() + lag)),
        "{r:?}"
    );
    for location in [
        format!("input topic {}", cfg.kafka.touchpoint_topics[0]),
        format!("input topic {}", cfg.privacy.topic),
        format!("output topic {}", cfg.kafka.action_topic),
    ] {
        let copy = r.residual_copies.iter().find(|c| c.location == location);
        // The test topics have the broker's default retention (7 days).
        assert!(copy.is_some_and(|c| c.until.is_some()), "{location}: {r:?}");
    }
}

/// The last record of every key that held the erased customer is a tombstone;
/// their suppression entries are in the changelog too.
fn check_changelog(cfg: &Config) {
    let last = last_changelog_values(&cfg.kafka.changelog());
    for id in ["c-erase", "a-erase"] {
        assert_eq!(last.get(id.as_bytes()), Some(&None), "{id}: tombstone last");
    }
    assert!(matches!(last.get(b"c-keep".as_slice()), Some(Some(_))));
    let hasher = cfg.privacy.hasher(&cfg.kafka.group_id).unwrap();
    for id in ["c-erase", "a-erase"] {
        let key = changelog_key(&hasher.hash(id));
        assert!(matches!(last.get(&key), Some(Some(_))), "{id}: suppressed");
    }
}

/// A new instance with empty local state restores from the changelog: the
/// customer stays gone and their touchpoints are still refused.
fn restart_from_changelog(cfg: &Config, topics: &Topics, rt: &tokio::runtime::Runtime) {
    let fresh = tempfile::tempdir().unwrap();
    let mut cfg = cfg.clone();
    cfg.state.path = fresh.path().to_owned();
    let (engine, metrics, addr) = start(&cfg, rt);
    let again = tp(
        "h9",
        "c-erase",
        Channel::Web,
        EventType::PageView,
        T0 + 4 * HOUR,
    );
    let keep = tp(
        "k9",
        "c-keep",
        Channel::Web,
        EventType::PageView,
        T0 + 4 * HOUR,
    );
    produce(&topics.input, &[again, keep]);
    wait_committed(&engine, 2);
    assert_eq!(
        metrics.erased_touchpoints.get(),
        1,
        "the suppression list was restored"
    );
    assert_eq!(erased_dead_letters(&topics.dead_letter), 4);
    for id in ["c-erase", "a-erase"] {
        assert_eq!(
            get(&addr, &format!("/v1/profiles/{id}")).0,
            404,
            "{id} after restore"
        );
    }
    assert_eq!(get(&addr, "/v1/profiles/c-keep").0, 200, "others restored");
    engine.shutdown().unwrap();
}

/// The effective value of `name` on `topic`.
fn topic_setting(topic: &str, name: &str) -> Option<String> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let described = rt
        .block_on(admin.describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new()))
        .unwrap();
    described
        .into_iter()
        .flatten()
        .flat_map(|r| r.entries)
        .find(|e| e.name == name)
        .and_then(|e| e.value)
}

#[test]
fn a_privacy_topic_must_be_co_partitioned_and_the_changelog_bounds_compaction_lag() {
    let topics = Topics::new("erasure-layout", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = privacy_config(&topics, dir.path(), &unique("erasure-layout"));
    cfg.privacy.changelog_max_compaction_lag_ms = 3_600_000;
    let mut spec = rapport::kafka::TopicSpec::new(&cfg.privacy.topic, 3);
    spec.replication = -1;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(rapport::kafka::ensure_topics(&bootstrap(), &[spec]))
        .unwrap();
    let e = match runtime::start(cfg.clone(), state(&cfg), Metrics::new()) {
        Ok(_) => panic!("the engine started with a privacy topic of 3 partitions"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("has 3 partitions") && e.contains("give it 2 partitions"),
        "{e}"
    );
    assert_eq!(
        topic_setting(&cfg.kafka.changelog(), "max.compaction.lag.ms").as_deref(),
        Some("3600000"),
        "the changelog Rapport created bounds how long erased values survive"
    );
}

#[test]
fn a_command_on_the_privacy_topic_reaches_the_customers_partition_among_several() {
    let topics = Topics::new("erasure-parts", 3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = privacy_config(&topics, dir.path(), &unique("erasure-parts"));
    let store = state(&cfg);
    let group = cfg.kafka.group_id.clone();
    let engine = runtime::start(cfg.clone(), store.clone(), Metrics::new()).unwrap();
    // An anonymous id whose own key belongs on another partition than c-3's.
    let rule = engine.key_rule;
    let home = rule.partition_of(b"c-3");
    let anon = (0..)
        .map(|n| format!("a-{n}"))
        .find(|a| rule.partition_of(a.as_bytes()) != home)
        .unwrap();
    let mut events: Vec<Touchpoint> = (0..10)
        .map(|n| {
            tp(
                &format!("v{n}"),
                &format!("c-{n}"),
                Channel::Web,
                EventType::PageView,
                T0,
            )
        })
        .collect();
    let mut identify = tp("i3", "c-3", Channel::Web, EventType::Identify, T0 + 1);
    identify.anonymous_id = Some(anon.clone());
    events.push(identify);
    // The anonymous id browsed before the identify linked it to c-3.
    let mut visit = tp("a1", &anon, Channel::Web, EventType::PageView, T0);
    visit.customer_id = None;
    visit.anonymous_id = Some(anon.clone());
    events.insert(0, visit);
    produce(&topics.input, &events);
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    assert!(store.get(home, "c-3").unwrap().is_some());
    let anon_home = rule.partition_of(anon.as_bytes());
    let stub = store
        .get(anon_home, &anon)
        .unwrap()
        .expect("the link is kept");
    assert_eq!(stub.link().map(|l| l.customer_id.as_str()), Some("c-3"));

    let cmd = r#"{"request_id":"req-p","customer_id":"c-3","requested_at":1764000000000}"#;
    produce_raw(
        &cfg.privacy.topic,
        &[("c-3".into(), cmd.as_bytes().to_vec(), vec![])],
    );
    let receipt = wait_receipt(&cfg.privacy.results(), "req-p", &engine);
    let hasher = cfg.privacy.hasher(&cfg.kafka.group_id).unwrap();
    // The linked anonymous id on another partition is erased there, through
    // the identity repartition topic, in the same transaction.
    let mut want = vec![hex(&hasher.hash("c-3")), hex(&hasher.hash(&anon))];
    want.sort();
    let mut ids = receipt.ids.clone();
    ids.sort();
    assert_eq!(ids, want, "{receipt:?}");
    assert!(receipt.not_covered.is_empty(), "{receipt:?}");
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    assert_eq!(store.get(home, "c-3").unwrap(), None);
    assert_eq!(
        store.get(anon_home, &anon).unwrap(),
        None,
        "the link is gone"
    );
    for n in [0, 1, 2, 4, 5, 6, 7, 8, 9] {
        assert!(
            store.find_profile(&format!("c-{n}")).unwrap().is_some(),
            "c-{n} kept"
        );
    }
    let replay = tp("v3b", "c-3", Channel::Web, EventType::PageView, T0 + 2);
    let mut anon_replay = tp("a2", &anon, Channel::Web, EventType::PageView, T0 + 3);
    anon_replay.customer_id = None;
    anon_replay.anonymous_id = Some(anon.clone());
    produce(&topics.input, &[replay, anon_replay]);
    wait_stitched(&topics.bootstrap, &group, &topics.input);
    assert_eq!(erased_dead_letters(&topics.dead_letter), 2);
    assert_eq!(store.get(anon_home, &anon).unwrap(), None);
    assert_eq!(store.get(home, "c-3").unwrap(), None);
    engine.shutdown().unwrap();
}
