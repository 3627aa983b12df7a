//! `rapport import`: the shipped POS export through the real binary into a real
//! topic gives exactly its good rows as touchpoints and its bad rows in the
//! rejects file; importing it again changes no profile and fires no action,
//! because the engine skips event ids a profile has already seen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rapport::config::Config;
use rapport::ingest::route::KeyRule;
use rapport::state::StateStore;
use rapport_model::touchpoint::Commerce;
use rapport_model::{Channel, EventType, Profile, Touchpoint};
use rdkafka::Message;

use crate::support::*;

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/import")
        .join(name)
}

/// Runs `rapport import` on the shipped POS export; returns its stdout.
fn import_pos(config: &Path, rejects: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["import", "--config"])
        .arg(config)
        .arg("--mapping")
        .arg(shipped("pos-mapping.toml"))
        .arg("--input")
        .arg(shipped("pos-export.csv"))
        .arg("--rejects")
        .arg(rejects)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "rapport import failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The touchpoint a good row of `pos-export.csv` must become.
#[allow(clippy::too_many_arguments)]
fn sale(
    receipt: (&str, &str, &str),
    customer: &str,
    event_type: EventType,
    local: &str,
    amount: f64,
    items: i32,
    cashier: &str,
) -> Touchpoint {
    let (store, till, no) = receipt;
    // Europe/Berlin is UTC+1 in November.
    let at = chrono::DateTime::parse_from_rfc3339(&format!("{local}+01:00"))
        .unwrap()
        .timestamp_millis();
    let name = format!("northwind-pos\u{1e}{store}\u{1e}{till}\u{1e}{no}");
    let ns = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"rapport:import");
    let mut t = rapport_model::testing::tp(
        &uuid::Uuid::new_v5(&ns, name.as_bytes()).to_string(),
        customer,
        Channel::Store,
        event_type,
        at,
    );
    t.store_id = Some(store.to_owned());
    t.commerce = Some(Commerce {
        order_id: Some(format!("{store}-{till}-{no}")),
        sku: None,
        amount: Some(amount),
        currency: Some("EUR".into()),
        quantity: Some(items),
    });
    t.attributes.insert("till".into(), till.into());
    t.attributes.insert("cashier".into(), cashier.into());
    t
}

fn expected_touchpoints() -> Vec<Touchpoint> {
    use EventType::{Purchase, Return};
    let mut v = vec![
        sale(
            ("B01", "2", "100231"),
            "L-100234",
            Purchase,
            "2026-11-20T09:14:03",
            129.90,
            3,
            "Anna",
        ),
        sale(
            ("B01", "2", "100232"),
            "L-100877",
            Purchase,
            "2026-11-20T09:21:47",
            15.49,
            1,
            "Anna",
        ),
        sale(
            ("B01", "3", "200118"),
            "L-100234",
            Purchase,
            "2026-11-21T17:02:11",
            899.00,
            1,
            "Jonas",
        ),
        sale(
            ("H02", "1", "300567"),
            "L-204410",
            Purchase,
            "2026-11-21T18:45:00",
            64.00,
            2,
            "Mira",
        ),
        sale(
            ("B01", "2", "100240"),
            "L-100234",
            Return,
            "2026-11-22T10:05:30",
            29.90,
            1,
            "Anna",
        ),
        sale(
            ("H02", "1", "300571"),
            "L-100877",
            Purchase,
            "2026-11-22T12:30:12",
            249.00,
            1,
            "Mira",
        ),
        sale(
            ("B01", "3", "200131"),
            "L-100234",
            Purchase,
            "2026-11-23T16:48:59",
            349.50,
            2,
            "Jonas",
        ),
        sale(
            ("H02", "4", "410002"),
            "L-330019",
            Purchase,
            "2026-11-24T11:11:11",
            9.99,
            1,
            "Kai",
        ),
    ];
    v.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    v
}

/// The touchpoints in `topic`, each checked to be keyed by its customer and on
/// the partition the engine's key rule gives that key.
fn produced(topic: &str, partitions: i32) -> Vec<Touchpoint> {
    let rule = KeyRule::new(rapport::config::Partitioner::Murmur2, partitions);
    let mut v: Vec<Touchpoint> = drain(topic)
        .iter()
        .map(|m| {
            let t: Touchpoint = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let key = m.key().unwrap();
            assert_eq!(key, t.identity().unwrap().as_bytes(), "keyed by customer");
            assert_eq!(
                m.partition(),
                rule.partition_of(key),
                "the key rule's partition"
            );
            t
        })
        .collect();
    v.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    v
}

/// The rejected rows: line and reason.
fn rejected(path: &Path) -> Vec<(u64, String)> {
    // A row that had more fields than the header keeps them all.
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec[0].parse().unwrap(), rec[1].to_owned())
        })
        .collect()
}

fn profiles(store: &StateStore) -> BTreeMap<String, Profile> {
    let mut out = BTreeMap::new();
    for p in store.partitions().unwrap() {
        for (id, s) in store.profiles(p).unwrap() {
            out.insert(id, s.profile);
        }
    }
    out
}

#[test]
fn a_pos_export_imports_its_good_rows_once_however_often_it_is_imported() {
    let topics = Topics::new("import", 2);
    let (dir, group) = (tempfile::tempdir().unwrap(), unique("import"));
    let cfg = topics.config(&dir.path().join("state"), &group);
    let conf = dir.path().join("rapport.toml");
    write_config(&cfg, &conf);
    let rejects = dir.path().join("rejects.csv");

    let out = import_pos(&conf, &rejects);
    assert!(
        out.contains("13 rows read, 8 produced")
            && out.contains("5 rejected")
            && out.contains("8 delivered"),
        "{out}"
    );
    assert_eq!(produced(&topics.input, 2), expected_touchpoints());
    let r = rejected(&rejects);
    let lines: Vec<u64> = r.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [4, 5, 8, 10, 13], "{r:?}");
    for ((_, reason), says) in r.iter().zip([
        "\"loyalty_id\" is empty",
        "\"VOID\"",
        "\"12.50\" is not an amount",
        "\"31.11.2026 10:00:00\"",
        "11 fields but the header has 10",
    ]) {
        assert!(reason.contains(says), "{reason:?} should say {says:?}");
    }

    let store = state(&cfg);
    run_engine(&cfg, store.clone(), 8);
    let (once, actions_once) = (profiles(&store), actions(&topics.actions));
    let customer = &once["L-100234"];
    assert_eq!(
        (customer.events, customer.orders, customer.returns),
        (4, 3, 1)
    );
    assert!(
        (customer.lifetime_value - 1348.50).abs() < 1e-6,
        "{}",
        customer.lifetime_value
    );
    assert_eq!(once.len(), 4);

    // The same file again: the same ids reach the topic a second time.
    let out = import_pos(&conf, &rejects);
    assert!(out.contains("8 produced"), "{out}");
    assert_eq!(drain(&topics.input).len(), 16);
    let metrics = run_engine(&cfg, store.clone(), 8);
    assert_eq!(metrics.duplicates.get(), 8, "every repeat is counted");
    assert_eq!(profiles(&store), once, "no profile changed");
    let actions_twice = actions(&topics.actions);
    let ids = |a: &[rapport_model::Action]| {
        a.iter()
            .map(|a| a.action_id.clone())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(actions_twice.len(), actions_once.len(), "no new action");
    assert_eq!(ids(&actions_twice), ids(&actions_once));
    assert!(
        drain(&topics.dead_letter).is_empty(),
        "nothing dead-lettered"
    );
}

/// The engine's side on its own (no broker: `rapport replay`'s pipeline): a call
/// delivered twice must not count as two calls. Two calls in a week and an
/// unresolved end raise an alert ticket (closed_loop_alert), so the repeat
/// would invent one; with the check turned off it does.
#[test]
fn a_repeated_event_id_is_skipped_by_the_engine() {
    let events = [
        r#"{"event_id":"call-1","customer_id":"c-dup","channel":"call_center","event_type":"call_started","event_time":"2026-11-20T09:00:00Z"}"#,
        r#"{"event_id":"call-1","customer_id":"c-dup","channel":"call_center","event_type":"call_started","event_time":"2026-11-20T09:00:00Z"}"#,
        r#"{"event_id":"call-1-end","customer_id":"c-dup","channel":"call_center","event_type":"call_ended","event_time":"2026-11-20T09:20:00Z","call":{"outcome":"unresolved"}}"#,
    ]
    .join("\n");
    let replay = |dedup_ids: usize| {
        let mut cfg = Config::default();
        cfg.engine.dedup_event_ids = dedup_ids;
        cfg.journeys = vec![format!("{}/*.toml", journey_dir().display())];
        cfg.compile_journeys(&journey_dir())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let s = rapport::replay::replay(
            &cfg,
            events.as_bytes(),
            rapport::replay::Until::EndOfInput,
            false,
            &mut out,
        )
        .unwrap();
        let alerts = String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"alert_ticket\""))
            .count();
        (s.applied, s.duplicates, alerts)
    };
    assert_eq!(
        replay(64),
        (2, 1, 0),
        "the repeat is skipped: one call, no alert"
    );
    assert_eq!(
        replay(0),
        (3, 0, 1),
        "without the check the repeat counts as a second call"
    );
}

/// A topic that refuses the records (they are over its `max.message.bytes`):
/// the import exits non-zero and lists every undelivered row in the rejects
/// file with the broker's reason, so none is lost.
#[test]
fn records_the_broker_refuses_fail_the_import_and_are_listed() {
    let topic = unique("import.tiny");
    let mut spec = rapport::kafka::TopicSpec::new(&topic, 1);
    spec.configs
        .push(("max.message.bytes".into(), "128".into()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(rapport::kafka::ensure_topics(&bootstrap(), &[spec]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rapport.toml");
    std::fs::write(
        &conf,
        format!(
            "[kafka]\nbootstrap_servers = {:?}\ngroup_id = \"g\"\ntouchpoint_topics = [{topic:?}]\n",
            bootstrap()
        ),
    )
    .unwrap();
    let rejects = dir.path().join("rejects.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["import", "--config"])
        .arg(&conf)
        .arg("--mapping")
        .arg(shipped("callcenter-mapping.toml"))
        .arg("--input")
        .arg(shipped("callcenter-export.jsonl"))
        .arg("--rejects")
        .arg(&rejects)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("5 records could not be delivered"),
        "{stderr}"
    );
    assert!(
        stdout.contains("5 produced") && stdout.contains("0 delivered"),
        "{stdout}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&rejects)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let undelivered: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["reason"].as_str().unwrap().starts_with("not delivered"))
        .collect();
    assert_eq!(undelivered.len(), 5, "{lines:?}");
    assert_eq!(
        lines.len(),
        9,
        "4 unmappable rows and 5 undelivered: {lines:?}"
    );
    // Each keeps the touchpoint it would have been.
    assert!(undelivered
        .iter()
        .all(|v| v["row"]["channel"] == "call_center" && v["line"].as_u64().is_some()));
}
