//! Pseudonymization and the profile API's token, with `rapport run` against the
//! real broker: with `[pseudonymize]` on, no clear email or phone number reaches
//! the changelog, action, decisions or dead-letter topics (their raw bytes are
//! searched) or the profile API; the profile API answers only with the bearer
//! token when it listens beyond loopback; and `rapport run` refuses to start
//! beyond loopback without a token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rapport::pseudonym::Pseudonymizer;
use rapport_model::testing::tp;
use rapport_model::{Channel, EventType, SurveyKind, Touchpoint};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;
const SECRET: &str = "a-test-secret-of-32-random-bytes";
const TOKEN: &str = "a-profile-api-token-for-tests";
const FIELDS: [&str; 4] = [
    "customer_id",
    "anonymous_id",
    "attributes.email",
    "attributes.phone",
];

/// GET `path` from `addr` with extra request header lines: status and body.
fn get(addr: &str, path: &str, headers: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// The shipped journeys, with the hesitation guide's payload also carrying the
/// customer's phone attribute (as a journey author might write it), in `dir`.
fn journeys_rendering_the_phone(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(journey_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap().replace(
                "payload = { sku = \"{{ event.commerce.sku }}\"",
                "payload = { phone = \"{{ event.attributes['phone'] }}\", sku = \"{{ event.commerce.sku }}\"",
            );
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    format!("{}/*.toml", dir.display())
}

/// Starts `rapport run` on `conf`, logging beside it.
fn spawn(conf: &Path) -> Instance {
    let log = conf.with_extension("log");
    let file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["run", "--config"])
        .arg(conf)
        .env("RAPPORT_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("rapport run starts");
    Instance { child, log }
}

/// Where `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Every byte of every record of `topic`: key, value and headers.
fn raw_bytes(topic: &str) -> (usize, Vec<u8>) {
    use rdkafka::message::{Headers, Message};
    let records = drain(topic);
    let mut bytes = Vec::new();
    for m in &records {
        bytes.extend(m.key().unwrap_or_default());
        bytes.extend(m.payload().unwrap_or_default());
        if let Some(h) = m.headers() {
            for header in h.iter() {
                bytes.extend(header.key.as_bytes());
                bytes.extend(header.value.unwrap_or_default());
            }
        }
        bytes.push(b'\n');
    }
    (records.len(), bytes)
}

struct Customer {
    email: String,
    phone: String,
}

/// Three views of one product (the hesitation guide fires, its payload
/// rendering the phone), a promoter answer by email, and a device id linked by
/// the first event; the customer id is the email, the attributes carry both.
fn events(c: &Customer, n: usize) -> Vec<Touchpoint> {
    let with_contact = |mut t: Touchpoint| {
        t.attributes.insert("email".into(), c.email.clone());
        t.attributes.insert("phone".into(), c.phone.clone());
        t
    };
    let view = |i: i64| {
        with_contact(
            tp(
                &format!("v{n}-{i}"),
                &c.email,
                Channel::Web,
                EventType::ProductView,
                T0 + i * HOUR,
            )
            .with_sku("tv-55"),
        )
    };
    let mut first = view(0);
    first.anonymous_id = Some(format!("device-{n}"));
    vec![
        first,
        view(1),
        view(2),
        with_contact(
            tp(
                &format!("s{n}"),
                &c.email,
                Channel::Email,
                EventType::SurveyResponse,
                T0 + 3 * HOUR,
            )
            .with_survey(SurveyKind::Nps, 10),
        ),
    ]
}

/// Three help searches (the customer turns anxious), then three views of one
/// product: the hesitation guide is held back as `suppressed_state`, a record
/// of the decisions topic naming the customer.
fn anxious_events(c: &Customer) -> Vec<Touchpoint> {
    let at = |i: i64| T0 + i * 300_000;
    let mut out: Vec<Touchpoint> = (0..3)
        .map(|i| {
            tp(
                &format!("anx-h{i}"),
                &c.email,
                Channel::Web,
                EventType::HelpSearch,
                at(i),
            )
            .with_url("https://shop.example/help")
        })
        .chain((3..6).map(|i| {
            tp(
                &format!("anx-v{i}"),
                &c.email,
                Channel::Web,
                EventType::ProductView,
                at(i),
            )
            .with_sku("kettle")
        }))
        .collect();
    for t in &mut out {
        t.attributes.insert("email".into(), c.email.clone());
        t.attributes.insert("phone".into(), c.phone.clone());
    }
    out
}

#[test]
fn pseudonymized_identifiers_never_reach_topics_or_the_profile_api_in_clear() {
    let topics = Topics::new("privacy", 2);
    let dir = tempfile::tempdir().unwrap();
    let group = unique("privacy");
    let mut cfg = topics.config(&dir.path().join("state"), &group);
    cfg.engine.instance_id = "privacy-a".into();
    cfg.journeys = vec![journeys_rendering_the_phone(&dir.path().join("journeys"))];
    let addr = format!("127.0.0.1:{}", free_port());
    let port = addr.rsplit(':').next().unwrap().to_owned();
    cfg.http.listen = format!("0.0.0.0:{port}");
    let conf = dir.path().join("rapport.toml");
    write_config(&cfg, &conf);
    // write_config ends with the [http] table: the token goes there; both
    // secrets are files beside the configuration (relative paths).
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(&format!(
        "token_file = \"token\"\n\n[pseudonymize]\nfields = {FIELDS:?}\nsecret_file = \"secret\"\n"
    ));
    std::fs::write(&conf, text).unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();

    let tag = std::process::id();
    let customers: Vec<Customer> = (0..4)
        .map(|n| Customer {
            email: format!("ada.{tag}.{n}@example.com"),
            phone: format!("+44 20 7946 {tag}{n}"),
        })
        .collect();
    let anxious = Customer {
        email: format!("ada.{tag}.anxious@example.com"),
        phone: format!("+44 20 7946 {tag}9"),
    };
    let mut records: Vec<Raw> = customers
        .iter()
        .enumerate()
        .flat_map(|(n, c)| events(c, n))
        .chain(anxious_events(&anxious))
        .map(|t| {
            // Producers key by the clear id, as they know it.
            (
                t.identity().unwrap().to_owned(),
                serde_json::to_vec(&t).unwrap(),
                vec![],
            )
        })
        .collect();
    // A malformed record without personal data: the dead-letter topic is read too.
    records.push(("k".into(), b"{not json".to_vec(), vec![]));
    produce_raw(&topics.input, &records);

    let mut engine = spawn(&conf);
    wait_caught_up(&group, &topics.input, &mut [&mut engine]);
    // Each customer's first view links a device id: the merge goes through
    // the repartition topic, and the customer's next touchpoints are held
    // until it is back, so the actions come after the input is committed.
    wait_stitched(&bootstrap(), &group, &topics.input);

    let p = Pseudonymizer::with_secret(SECRET.as_bytes(), &FIELDS);
    let hashed: Vec<String> = customers.iter().map(|c| p.pseudonym(&c.email)).collect();

    // Every byte of every output topic: no clear email or phone, the pseudonyms present.
    let changelog = format!("{group}-profiles-changelog");
    let mut seen_hashed = 0;
    for topic in [
        &changelog,
        &topics.actions,
        &topics.decisions,
        &topics.dead_letter,
    ] {
        let (n, bytes) = raw_bytes(topic);
        for c in customers.iter().chain([&anxious]) {
            for clear in [&c.email, &c.phone, &format!("ada.{tag}")] {
                assert!(
                    !contains(&bytes, clear),
                    "{clear:?} in clear in {topic} ({n} records)"
                );
            }
        }
        seen_hashed += hashed.iter().filter(|h| contains(&bytes, h)).count();
        if topic == &changelog || topic == &topics.actions {
            assert!(
                hashed.iter().all(|h| contains(&bytes, h)),
                "every customer's pseudonym is in {topic}"
            );
        }
        if topic == &topics.decisions {
            let h = p.pseudonym(&anxious.email);
            assert!(
                n >= 1 && contains(&bytes, &h),
                "the held-back guide names {h}"
            );
        }
        if topic == &topics.dead_letter {
            assert_eq!(n, 1, "the malformed record is dead-lettered");
        }
    }
    assert!(seen_hashed >= 2 * customers.len());

    // Actions carry the pseudonym as customer id, and the phone only hashed.
    let actions = actions(&topics.actions);
    let guides: Vec<_> = actions
        .iter()
        .filter(|a| a.journey == "hesitation_guide")
        .collect();
    assert_eq!(guides.len(), customers.len(), "{actions:?}");
    for (c, h) in customers.iter().zip(&hashed) {
        let a = guides
            .iter()
            .find(|a| &a.customer_id == h)
            .unwrap_or_else(|| panic!("no guide for {h}: {guides:?}"));
        assert_eq!(a.payload["phone"], p.pseudonym(&c.phone), "{a:?}");
    }

    // The profile API: open probes, the profile only with the token, asked by
    // the clear id, answering with no clear personal data.
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&addr, "/readyz", "").0 != 200 {
        assert!(Instant::now() < deadline, "ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&addr, "/healthz", "").0, 200);
    assert_eq!(get(&addr, "/metrics", "").0, 200);
    let c = &customers[0];
    let path = format!("/v1/profiles/{}", c.email);
    assert_eq!(get(&addr, &path, "").0, 401);
    let wrong = "Authorization: Bearer not-the-token-at-all\r\n";
    assert_eq!(get(&addr, &path, wrong).0, 401);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, body) = get(&addr, &path, &auth);
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(view["customer_id"], hashed[0].as_str(), "{body}");
    assert_eq!(view["anonymous_ids"][0], p.pseudonym("device-0").as_str());
    for clear in [&c.email, &c.phone, &format!("ada.{tag}")] {
        assert!(!body.contains(clear.as_str()), "{clear} in {body}");
    }
    let (status, body) = get(&addr, "/v1/profiles/nobody@example.com", &auth);
    assert_eq!(status, 404);
    assert!(!body.contains("nobody@example.com"), "{body}");
    engine.terminate();
}

/// `rapport run` with `conf_text` exits at once with an error naming the
/// configuration file and a line.
fn refused(conf_text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rapport.toml");
    std::fs::write(&conf, conf_text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["run", "--config"])
        .arg(&conf)
        .env_remove("RAPPORT_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "rapport run started on:\n{conf_text}"
    );
    String::from_utf8_lossy(&out.stderr).replace(&conf.display().to_string(), "rapport.toml")
}

#[test]
fn rapport_run_refuses_an_open_profile_api_or_a_missing_secret() {
    let state = "[state]\npath = \"/nonexistent/rapport-state\"\n\n";
    let err = refused(&format!("{state}[http]\nlisten = \"0.0.0.0:9464\"\n"));
    assert!(err.contains("rapport.toml:5: http.listen"), "{err}");
    assert!(err.contains("token_file"), "{err}");

    let err = refused(&format!(
        "{state}[http]\nlisten = \"0.0.0.0:9464\"\ntoken_env = \"RAPPORT_TEST_UNSET_SECRET\"\n"
    ));
    assert!(err.contains("rapport.toml:6: http.token_env"), "{err}");

    let err = refused(&format!(
        "{state}[pseudonymize]\nfields = [\"customer_id\"]\nsecret = \"in the file\"\n"
    ));
    assert!(err.contains("rapport.toml:6: pseudonymize.secret"), "{err}");

    let err = refused(&format!(
        "{state}[pseudonymize]\nfields = [\"customer_id\"]\nsecret_env = \"RAPPORT_TEST_UNSET_SECRET\"\n"
    ));
    assert!(
        err.contains("rapport.toml:6: pseudonymize.secret_env"),
        "{err}"
    );
    assert!(err.contains("$RAPPORT_TEST_UNSET_SECRET"), "{err}");
}
