//! What ops watch: a running engine's `/metrics` shows lag, latency, commits and
//! restores moving, and `rapport_ready` agrees with `/readyz`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rdkafka::Message;

use crate::crash::feed;
use crate::support::*;

/// GET `path` from `addr`: status code and body (an empty body while the server
/// is not up yet).
pub(crate) fn get(addr: &str, path: &str) -> (u16, String) {
    let (status, _, body) = get_with_headers(addr, path);
    (status, body)
}

/// GET `path` from `addr`: status code, response headers and body.
pub(crate) fn get_with_headers(addr: &str, path: &str) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// The sum of every sample of metric `name` (all label sets).
pub(crate) fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_show_lag_latency_commits_and_restores_and_ready_agrees_with_readyz() {
    let _serial = heavy();
    let topics = Topics::new("metrics", 2);
    let group = unique("metrics");
    let dir = tempfile::tempdir().unwrap();
    let mut n = 150_000;
    feed(&topics.input, n, 20_000, 71);
    // High-value regulars, some of whom exclusive_treatment's control group
    // holds out (the recorded case of tests/replay/policy_control_group).
    let regulars = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/replay/policy_control_group/events.jsonl"),
    )
    .unwrap();
    let records: Vec<Raw> = regulars
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let key = v["customer_id"].as_str().unwrap().to_owned();
            (key, l.as_bytes().to_vec(), vec![])
        })
        .collect();
    n += records.len() as i64;
    produce_raw(&topics.input, &records);
    let mut cfg = topics.config(&dir.path().join("a"), &group);
    cfg.engine.instance_id = "metrics".into();
    for client in [&mut cfg.kafka.consumer, &mut cfg.kafka.producer] {
        client.insert("statistics.interval.ms".into(), "200".into());
    }
    let addr = format!("127.0.0.1:{}", free_port());
    cfg.http.listen = addr.clone();
    let mut a = Instance::spawn(&cfg, dir.path(), "a");

    // While it works through the backlog: lag seen above zero, and readiness the
    // same from the gauge and from /readyz at every look.
    let (mut max_lag, mut looks) = (0.0f64, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        a.assert_running();
        assert!(Instant::now() < deadline, "engine did not catch up");
        let (status, m) = get(&addr, "/metrics");
        if status == 200 {
            let (ready_status, _) = get(&addr, "/readyz");
            let (m2_status, m2) = get(&addr, "/metrics");
            // The gauge read just before and just after /readyz bracket it.
            if m2_status == 200 && value(&m, "rapport_ready") == value(&m2, "rapport_ready") {
                assert_eq!(
                    value(&m, "rapport_ready") == 1.0,
                    ready_status == 200,
                    "rapport_ready disagrees with /readyz ({ready_status})"
                );
                looks += 1;
            }
            max_lag = max_lag.max(value(&m, "rapport_consumer_lag_records"));
        }
        if committed_total(&group, &topics.input) >= end_total(&topics.input) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(looks > 0, "/metrics and /readyz answered");
    assert!(
        max_lag > 0.0,
        "lag was seen while the backlog was processed"
    );
    // Caught up: the lag comes down to zero once the statistics refresh.
    let settled = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (_, m) = get(&addr, "/metrics");
        if value(&m, "rapport_consumer_lag_records") == 0.0 || Instant::now() > settled {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        value(&m, "rapport_consumer_lag_records"),
        0.0,
        "lag back to zero"
    );
    assert!(value(&m, "rapport_commits_total") > 0.0);
    assert!(
        m.lines()
            .any(|l| l.starts_with("rapport_state_bytes{kind=\"memtables\"}") && !l.ends_with(" 0")),
        "memtable bytes reported"
    );
    assert!(value(&m, "rapport_commit_latency_seconds_count") > 0.0);
    assert!(
        m.lines().any(
            |l| l.starts_with("rapport_emotion_transitions_total{from=\"neutral\"")
                && !l.ends_with(" 0")
        ),
        "customers left the neutral state"
    );
    // Live NPS: answers counted by survey, classification and channel.
    assert!(
        m.lines()
            .any(|l| l.starts_with("rapport_survey_answers_total{")
                && l.contains("classification=\"detractor\"")
                && l.contains("survey=\"nps\"")
                && !l.ends_with(" 0")),
        "NPS detractors counted"
    );
    // The delivery policy's decisions: counted by journey and outcome, and the
    // decisions not to act written to the decisions topic with their reasons.
    let withheld: f64 = m
        .lines()
        .filter(|l| l.starts_with("rapport_decisions_total{") && !l.contains("outcome=\"sent\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(value(&m, "rapport_decisions_total") > withheld && withheld > 0.0);
    // Held out vs acted, per journey: what uplift is measured from.
    for outcome in ["held_out", "sent"] {
        let label = format!(
            "rapport_decisions_total{{journey=\"exclusive_treatment\",outcome=\"{outcome}\"}}"
        );
        assert!(
            m.lines()
                .any(|l| l.starts_with(&label) && !l.ends_with(" 0")),
            "{label} counted"
        );
    }
    let decisions = drain(&topics.decisions);
    assert_eq!(
        decisions.len() as f64,
        withheld,
        "one record per decision not to act"
    );
    for d in &decisions {
        let v: serde_json::Value = serde_json::from_slice(d.payload().unwrap()).unwrap();
        assert_ne!(v["outcome"], "sent");
        assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    }
    assert!(value(&m, "rapport_commit_latency_seconds_sum") > 0.0);
    // Every touchpoint timed as the engine received it, and each one with
    // actions as they were decided; the backlog waited for the engine.
    let stage = |name: &str, stage: &str| {
        let prefix = format!("{name}{{stage=\"{stage}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let received = stage("rapport_record_latency_seconds_count", "received");
    assert!(received >= n as f64, "{received} of {n} received");
    let decided = stage("rapport_record_latency_seconds_count", "decided");
    assert!(
        decided > 0.0 && decided <= value(&m, "rapport_actions_total"),
        "{decided} touchpoints with actions decided"
    );
    assert!(
        stage("rapport_record_latency_seconds_sum", "received") / received > 0.001,
        "a touchpoint produced before the engine started waited for it"
    );
    assert_eq!(
        value(&m, "rapport_events_total"),
        n as f64 - value(&m, "rapport_dead_letters_total")
    );
    assert_eq!(value(&m, "rapport_ready"), 1.0);
    // A settled member of its group, holding the input's two partitions
    // (librdkafka counts the internal topics' too), once the consumer's
    // statistics (every 5 s) have said so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (_, m) = get(&addr, "/metrics");
        if value(&m, "rapport_consumer_group_member") == 1.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&m, "rapport_consumer_group_member"), 1.0, "{m}");
    assert!(value(&m, "rapport_consumer_group_partitions") >= 2.0, "{m}");
    // What the clients asked of the broker, from their statistics: the
    // consumer's fetches and the bytes they brought, the producers' records
    // and a transaction ended for every commit so far.
    let commits = value(&m, "rapport_commits_total");
    let requests = |m: &str, client: &str, request: &str| {
        let prefix =
            format!("rapport_kafka_requests_total{{client=\"{client}\",request=\"{request}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let m = loop {
        let (_, m) = get(&addr, "/metrics");
        let counted = requests(&m, "consumer", "Fetch") > 0.0
            && requests(&m, "producer", "Produce") > 0.0
            && requests(&m, "producer", "EndTxn") >= commits;
        if counted || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(requests(&m, "consumer", "Fetch") > 0.0, "{m}");
    assert!(requests(&m, "producer", "Produce") > 0.0, "{m}");
    assert!(
        requests(&m, "producer", "EndTxn") >= commits,
        "{commits} commits: {m}"
    );
    assert!(
        m.lines().any(|l| l
            .starts_with("rapport_kafka_bytes_total{client=\"consumer\",direction=\"received\"}")
            && !l.ends_with(" 0")),
        "{m}"
    );
    a.terminate();

    // A new instance with an empty disk restores the changelog, and says so.
    cfg.state.path = dir.path().join("b");
    let mut b = Instance::spawn(&cfg, dir.path(), "b");
    b.wait_ready(2);
    let (_, m) = get(&addr, "/metrics");
    assert!(
        value(&m, "rapport_restored_records_total") >= 10_000.0,
        "restored {}",
        value(&m, "rapport_restored_records_total")
    );
    assert_eq!(get(&addr, "/readyz").0, 200);
    // The profile API shows the documented view of a restored profile.
    let (status, body) = get(&addr, "/v1/profiles/c-000042");
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(view["customer_id"], "c-000042");
    assert!(
        view["channels"].as_object().is_some_and(|c| !c.is_empty()),
        "{view}"
    );
    assert!(
        view["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{view}"
    );
    assert!(view["emotional_state"]["state"].is_string(), "{view}");
    assert_eq!(get(&addr, "/v1/profiles/nobody").0, 404);
    b.terminate();
}
