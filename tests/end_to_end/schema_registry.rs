//! Avro through a real Schema Registry: Apicurio Registry's Confluent-compatible
//! API (started by deploy/registry.sh, or `RAPPORT_SCHEMA_REGISTRY_URL`), with
//! confluent-kafka's Python Avro serde as the client we did not write.
//!
//! A producer whose writer schema has evolved (touchpoint.avsc plus one field
//! with a default) writes touchpoints in the Confluent wire format; the engine
//! resolves them against its reader schema, fires the journeys, dead-letters a
//! record whose schema id the registry does not know, and writes its actions and
//! decisions as Avro under the schemas it registered, which AvroDeserializer reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rapport::config::OutputFormat;
use rapport::ingest::TOUCHPOINT_AVSC;
use rapport::kafka::{DLQ_REASON, DLQ_STAGE};
use rapport::metrics::Metrics;
use rapport::runtime;
use rapport_model::testing::tp;
use rapport_model::{Channel, EventType, Touchpoint};
use rdkafka::message::Headers;
use rdkafka::Message;

use crate::support::*;

const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Confluent-compatible URL of the registry, started once.
fn registry_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("deploy/registry.sh"))
            .arg("start")
            .output()
            .expect("running deploy/registry.sh");
        assert!(
            out.status.success(),
            "deploy/registry.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    })
    .clone()
}

/// Runs tests/end_to_end/schema_registry.py with `args`; its standard output.
fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(root().join("tests/end_to_end/schema_registry.py"))
        .args(args)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "schema_registry.py {} failed (deploy/setup.sh installs confluent-kafka):\n{}",
        args[0],
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// touchpoint.avsc as an evolved producer has it: one more field, with a default.
fn evolved_writer(dir: &Path) -> PathBuf {
    let mut avsc: serde_json::Value = serde_json::from_str(TOUCHPOINT_AVSC).unwrap();
    avsc["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "name": "loyalty_tier", "type": "string", "default": "none",
            "doc": "A field Rapport's reader schema does not have."
        }));
    let path = dir.join("touchpoint-evolved.avsc");
    std::fs::write(&path, avsc.to_string()).unwrap();
    path
}

/// The touchpoints as the producer's records: the reader's fields plus the new one.
fn producer_records(dir: &Path, tps: &[Touchpoint]) -> PathBuf {
    let records: Vec<serde_json::Value> = tps
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap();
            v["loyalty_tier"] = "gold".into();
            v
        })
        .collect();
    let path = dir.join("touchpoints.json");
    std::fs::write(&path, serde_json::to_vec(&records).unwrap()).unwrap();
    path
}

/// A customer outside exclusive_treatment's 10% control group who never gave
/// marketing consent by email (as in tests/replay/policy_consent).
const LOYAL: &str = "c-no-email-consent";

/// A store purchase of 400 by [`LOYAL`]: the third makes exclusive_treatment
/// fall back from an email offer to an in-store greeting, a decision on the
/// decisions topic.
fn purchase(n: i64) -> Touchpoint {
    let mut t = tp(
        &format!("p{n}"),
        LOYAL,
        Channel::Store,
        EventType::Purchase,
        T0 - (3 - n) * 24 * HOUR,
    )
    .with_sku("watch")
    .with_amount(400.0)
    .with_order(&format!("o-{n}"));
    t.store_id = Some("s-lyon".into());
    t
}

fn view(id: &str, customer: &str, hours: i64) -> Touchpoint {
    tp(
        id,
        customer,
        Channel::Web,
        EventType::ProductView,
        T0 + hours * HOUR,
    )
    .with_sku("tv-55")
}

#[test]
fn evolved_avro_touchpoints_in_and_avro_actions_and_decisions_out_through_a_real_registry() {
    let url = registry_url();
    let topics = Topics::new("registry", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = topics.config(dir.path(), &unique("registry"));
    cfg.schema_registry.url = url.clone();
    cfg.schema_registry.output_format = OutputFormat::Avro;
    cfg.validate().unwrap();

    // c-1 views one product three times: hesitation_guide fires. c-2 views it
    // once in Avro and once in JSON: no action. c-3's record names a schema id
    // the registry does not have: dead-lettered.
    let avro = [
        purchase(0),
        purchase(1),
        purchase(2),
        view("v1", "c-1", 0),
        view("v2", "c-2", 1),
        view("v3", "c-1", 2),
        view("v4", "c-1", 3),
    ];
    let inputs = tempfile::tempdir().unwrap();
    let writer_id = python(&[
        "produce",
        &topics.bootstrap,
        &url,
        &topics.input,
        evolved_writer(inputs.path()).to_str().unwrap(),
        producer_records(inputs.path(), &avro).to_str().unwrap(),
    ]);
    let unknown_id = [0u8, 0x7f, 0xff, 0xff, 0x01, 0x04, b'e', b'x'];
    produce_raw(
        &topics.input,
        &[
            (
                "c-2".into(),
                serde_json::to_vec(&view("j1", "c-2", 4)).unwrap(),
                vec![],
            ),
            ("c-3".into(), unknown_id.to_vec(), vec![]),
        ],
    );
    let metrics = run_engine(&cfg, state(&cfg), 9);

    // The writer schema the producer registered is the evolved one.
    let writer = http_get(&format!("{url}/schemas/ids/{}", writer_id.trim()));
    assert!(writer.contains("loyalty_tier"), "{writer}");

    let profiles = all_profiles(&[dir.path()]);
    assert_eq!(profiles["c-1"].events, 3, "all three Avro views applied");
    assert_eq!(
        profiles["c-2"].events, 2,
        "one Avro and one JSON view applied"
    );
    assert!(!profiles.contains_key("c-3"));

    let dead = drain(&topics.dead_letter);
    assert_eq!(dead.len(), 1, "only the unknown schema id is dead-lettered");
    assert_eq!(
        dead[0].payload(),
        Some(&unknown_id[..]),
        "original bytes kept"
    );
    let header = |k: &str| {
        let h = dead[0].headers().unwrap();
        let v = h.iter().find(|h| h.key == k).and_then(|h| h.value).unwrap();
        String::from_utf8_lossy(v).into_owned()
    };
    assert_eq!(header(DLQ_STAGE), "decode");
    let reason = header(DLQ_REASON);
    assert!(
        reason.contains("2147483393") && reason.contains("not known"),
        "{reason}"
    );
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["decode", "unknown_schema_id"])
            .get(),
        1
    );

    // The actions are Avro in the Confluent wire format, under the id of the
    // action schema registered for the action topic.
    let raw = drain(&topics.actions);
    assert_eq!(
        raw.len(),
        2,
        "hesitation_guide for c-1, the in-store fallback for {LOYAL}"
    );
    assert_framed_with_subject_id(&raw, &url, &topics.actions);

    // confluent-kafka's AvroDeserializer reads them with the registered schema.
    let read = python(&["consume", &topics.bootstrap, &url, &topics.actions, "2"]);
    let read: Vec<serde_json::Value> = serde_json::from_str(&read).unwrap();
    assert_eq!(read.len(), 2, "{read:?}");
    let a = read
        .iter()
        .find(|a| a["customer_id"] == "c-1")
        .unwrap_or_else(|| panic!("{read:#?}"));
    assert_eq!(a["customer_id"], "c-1");
    assert_eq!(a["journey"], "hesitation_guide");
    assert_eq!(a["kind"], "guide_link");
    assert_eq!(a["trigger_event_id"], "v4");
    assert_eq!(a["trigger_event_time"], T0 + 3 * HOUR);
    assert_eq!(a["payload"]["sku"], "tv-55");
    assert_eq!(a["emotional_state"], "uncertain");
    let reasons = a["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r["condition"].as_str().unwrap().contains("tv-55") && r["value"] == "3"),
        "{reasons:?}"
    );
    assert_eq!(a["action_id"].as_str().unwrap().len(), 36, "{a}");
    let greeting = read
        .iter()
        .find(|a| a["customer_id"] == LOYAL)
        .unwrap_or_else(|| panic!("{read:#?}"));
    assert_eq!(greeting["kind"], "alert_ticket");
    assert_eq!(greeting["channel"], "store");

    // Decisions too: the fallback, under the decision schema.
    let raw = drain(&topics.decisions);
    assert_eq!(raw.len(), 1, "one decision not to act as decided");
    assert_framed_with_subject_id(&raw, &url, &topics.decisions);
    let read = python(&["consume", &topics.bootstrap, &url, &topics.decisions, "1"]);
    let read: Vec<serde_json::Value> = serde_json::from_str(&read).unwrap();
    let d = &read[0];
    assert_eq!(d["customer_id"], LOYAL);
    assert_eq!(d["journey"], "exclusive_treatment");
    assert_eq!(d["kind"], "exclusive_offer");
    assert_eq!(d["channel"], "email");
    assert_eq!(d["purpose"], "marketing");
    assert_eq!(d["outcome"], "fallback");
    assert_eq!(d["event_id"], "p2");
    assert_eq!(d["event_time"], T0 - 24 * HOUR);
    assert_eq!(d["deferred_until"], serde_json::Value::Null);
    assert_eq!(d["fallback_action_id"], greeting["action_id"]);
    assert!(d["reason"].as_str().unwrap().contains("consent"), "{d}");
}

/// Each record is Avro in the Confluent wire format under the id of the schema
/// the engine registered for `topic`.
fn assert_framed_with_subject_id(
    records: &[rdkafka::message::OwnedMessage],
    url: &str,
    topic: &str,
) {
    let subject = http_get(&format!("{url}/subjects/{topic}-value/versions/latest"));
    let subject: serde_json::Value = serde_json::from_str(&subject).unwrap();
    let id = subject["id"].as_u64().unwrap() as u32;
    for m in records {
        let bytes = m.payload().unwrap();
        assert_eq!(bytes[0], 0, "magic byte");
        assert_eq!(
            u32::from_be_bytes(bytes[1..5].try_into().unwrap()),
            id,
            "{topic}"
        );
    }
}

#[test]
fn an_unreachable_registry_stops_the_engine_and_loses_nothing() {
    let url = registry_url();
    let topics = Topics::new("registry-outage", 1);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("registry-outage");
    let mut cfg = topics.config(dir.path(), &group);
    cfg.schema_registry.url = format!("http://127.0.0.1:{}/apis/ccompat/v7", free_port());
    cfg.schema_registry.unavailable_timeout_ms = 1_000;
    cfg.validate().unwrap();
    let inputs = tempfile::tempdir().unwrap();
    python(&[
        "produce",
        &topics.bootstrap,
        &url,
        &topics.input,
        evolved_writer(inputs.path()).to_str().unwrap(),
        producer_records(inputs.path(), &[view("v1", "c-1", 0)])
            .to_str()
            .unwrap(),
    ]);

    // The engine cannot learn the record's writer schema: it waits, then stops.
    let mut engine = runtime::start(cfg.clone(), state(&cfg), Metrics::new()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !engine.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the engine should give up on the registry"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = format!("{:#}", engine.join().unwrap_err());
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(
        committed_total(&group, &topics.input),
        0,
        "nothing committed"
    );
    assert!(
        drain(&topics.dead_letter).is_empty(),
        "an outage is not bad input"
    );

    // With the registry back, the same group reads the record again and applies it.
    cfg.schema_registry.url = url;
    run_engine(&cfg, state(&cfg), 1);
    assert_eq!(all_profiles(&[dir.path()])["c-1"].events, 1);
    assert_eq!(committed_total(&group, &topics.input), 1);
}

/// The body of a GET to the registry.
fn http_get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}
