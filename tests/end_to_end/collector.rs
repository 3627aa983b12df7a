//! `rapport collect` with clients we did not write: Segment's and RudderStack's
//! Python SDKs send calls that become touchpoints and then actions; bad write
//! keys, bad bodies and oversized requests get their answers; a stopped broker
//! gets 503s, never a 200 for a record Kafka did not keep; a signed chat
//! webhook becomes a touchpoint and a wrongly signed one is refused.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rapport::collect::config::ChatSource;
use rapport::config::{Config, Partitioner};
use rapport::ingest::route::KeyRule;
use rapport_model::{Channel, EventType, Touchpoint};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::*;

const KEY: &str = "test-write-key";

/// An HTTP client on a runtime of its own.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Http {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Http { rt, client }
    }

    /// POSTs `body` with `headers`; the status and the body as JSON (or as a string).
    pub fn post(&self, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        self.rt.block_on(async {
            let mut req = hyper::Request::post(url);
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            let res = self
                .client
                .request(req.body(Full::new(Bytes::from(body))).unwrap())
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            let v = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            (status, v)
        })
    }

    /// GETs `url`: the status and the body, or `None` when nothing answers.
    pub fn get(&self, url: &str) -> Option<(u16, String)> {
        self.rt.block_on(async {
            let req = hyper::Request::get(url).body(Full::default()).unwrap();
            let res = self.client.request(req).await.ok()?;
            let status = res.status().as_u16();
            let bytes = res.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&bytes).into_owned()))
        })
    }
}

/// The Basic header for write key `key`.
pub fn basic(key: &str) -> (&'static str, String) {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{key}:"));
    ("authorization", format!("Basic {b}"))
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json".into())
}

/// A collector running in this process on `http`'s runtime.
struct InProcess {
    http: Http,
    collector: Option<rapport::collect::Running>,
}

impl InProcess {
    fn start(cfg: &Config, dir: &Path) -> InProcess {
        let http = Http::new();
        let collector = http
            .rt
            .block_on(rapport::collect::start(cfg, &dir.join("rapport.toml")))
            .unwrap_or_else(|e| panic!("collector starts: {e}"));
        InProcess {
            http,
            collector: Some(collector),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.collector.as_ref().unwrap().addr)
    }

    fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        self.http.post(&self.url(path), headers, body)
    }

    fn batch(&self, calls: &[Value]) -> (u16, Value) {
        let body = serde_json::to_vec(&json!({ "batch": calls })).unwrap();
        self.post("/v1/batch", &[basic(KEY), json_type()], body)
    }

    fn metrics(&self) -> String {
        self.collector.as_ref().unwrap().metrics.render()
    }

    fn stop(mut self) {
        let c = self.collector.take().unwrap();
        self.http.rt.block_on(c.stop()).unwrap();
    }
}

/// A collector configuration for `topics`, listening on a free port.
fn collector_config(topics: &Topics, dir: &Path) -> Config {
    let mut cfg = topics.config(&dir.join("state"), &unique("collector"));
    cfg.collector.listen = "127.0.0.1:0".into();
    cfg.collector.write_keys = vec![KEY.into()];
    cfg
}

fn track(id: &str, user: &str, event: &str, sku: &str) -> Value {
    json!({"type": "track", "messageId": id, "userId": user, "event": event,
           "timestamp": "2025-11-24T16:00:00.000Z", "properties": {"sku": sku}})
}

fn touchpoints(topic: &str, bootstrap: &str) -> Vec<(OwnedMessage, Touchpoint)> {
    drain_on(bootstrap, topic)
        .into_iter()
        .map(|m| {
            let tp = serde_json::from_slice(m.payload().unwrap()).expect("a touchpoint");
            (m, tp)
        })
        .collect()
}

fn header(m: &OwnedMessage, k: &str) -> Option<String> {
    m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == k)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Runs the official SDK `sdk` (segment, rudderstack) through
/// tests/fixtures/collector_sdk.py; its standard output.
fn sdk(sdk: &str, host: &str, key: &str, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/collector_sdk.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([sdk, host, key])
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{sdk} SDK failed (deploy/setup.sh installs segment-analytics-python and rudder-sdk-python): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `rapport collect` process.
struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn segment_and_rudderstack_sdks_send_calls_that_become_touchpoints_and_actions() {
    let topics = Topics::new("collector-sdk", 2);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("rapport.toml");
    std::fs::write(
        &conf,
        format!(
            "[kafka]\nbootstrap_servers = {:?}\ntouchpoint_topics = [{:?}]\naction_topic = {:?}\ndead_letter_topic = {:?}\n\n\
             [collector]\nlisten = \"127.0.0.1:{port}\"\nwrite_keys = [\"env:RAPPORT_TEST_WRITE_KEY\"]\n",
            topics.bootstrap, topics.input, topics.actions, topics.dead_letter
        ),
    )
    .unwrap();
    let log = dir.path().join("collect.log");
    let mut child = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(["collect", "--config"])
            .arg(&conf)
            .env("RAPPORT_TEST_WRITE_KEY", KEY)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let host = format!("http://127.0.0.1:{port}");
    let http = Http::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http.get(&format!("{host}/healthz")).map(|r| r.0) != Some(200) {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "rapport collect exited: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the collector did not answer /healthz"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = sdk("segment", &host, KEY, &["send", "seg-1", "SKU-S", "3"]);
    assert!(out.contains("sent 5"), "{out}");
    let out = sdk("rudderstack", &host, KEY, &["send", "rud-1", "SKU-R", "3"]);
    assert!(out.contains("sent 5"), "{out}");
    for which in ["segment", "rudderstack"] {
        let out = sdk(which, &host, "not-the-key", &["wrong-key", "x-1"]);
        assert!(out.contains("status 401"), "{which}: {out}");
        assert!(out.contains("write key"), "{which}: {out}");
    }
    let (status, metrics) = http.get(&format!("{host}/metrics")).unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics
            .contains(r#"rapport_collector_requests_total{endpoint="/v1/batch",status="401"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"rapport_collector_events_total{event_type="product_view"} 6"#),
        "{metrics}"
    );

    let got = touchpoints(&topics.input, &topics.bootstrap);
    assert_eq!(got.len(), 10, "identify, page and three views per SDK");
    let rule = KeyRule::new(Partitioner::Murmur2, 2);
    for (m, tp) in &got {
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(Some(key), tp.customer_id.as_deref(), "keyed by userId");
        assert_eq!(
            m.partition(),
            rule.partition_of(key.as_bytes()),
            "on the customer's partition"
        );
        assert_eq!(
            tp.event_id.len(),
            36,
            "Segment's messageId (a UUID): {}",
            tp.event_id
        );
        assert_eq!(tp.channel, Channel::Web);
    }
    for user in ["seg-1", "rud-1"] {
        let mine: Vec<&Touchpoint> = got
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.customer_id.as_deref() == Some(user))
            .collect();
        let types: Vec<EventType> = mine.iter().map(|t| t.event_type).collect();
        assert_eq!(
            types,
            [
                EventType::Identify,
                EventType::PageView,
                EventType::ProductView,
                EventType::ProductView,
                EventType::ProductView
            ],
            "{user}"
        );
        assert_eq!(
            mine[0].anonymous_id.as_deref(),
            Some(format!("anon-{user}").as_str())
        );
        assert_eq!(
            mine[1].web.as_ref().and_then(|w| w.url.as_deref()),
            Some("https://shop.example/")
        );
    }

    let cfg = topics.config(&dir.path().join("state"), &unique("collector-sdk"));
    run_engine(&cfg, state(&cfg), 10);
    let guides: BTreeSet<(String, String)> = actions(&topics.actions)
        .into_iter()
        .filter(|a| a.journey == "hesitation_guide")
        .map(|a| (a.customer_id, a.payload["sku"].clone()))
        .collect();
    assert_eq!(
        guides,
        BTreeSet::from([
            ("rud-1".to_owned(), "SKU-R".to_owned()),
            ("seg-1".to_owned(), "SKU-S".to_owned())
        ]),
        "three views of one product from each SDK: a buyer's guide each"
    );

    let pid = child.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "clean stop on SIGTERM: {status}");
}

#[test]
fn bad_requests_are_answered_with_what_is_wrong_and_unmapped_calls_dead_lettered() {
    let topics = Topics::new("collector-bad", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = collector_config(&topics, dir.path());
    // A dead-letter topic that does not exist yet: the collector creates it.
    cfg.kafka.dead_letter_topic = unique("collector-bad.new-dlq");
    cfg.collector.max_batch_len = 5;
    cfg.collector.max_body_bytes = 4096;
    let c = InProcess::start(&cfg, dir.path());
    let ok = [basic(KEY), json_type()];

    let (status, body) = c.post("/v1/batch", &ok, b"{\"batch\": [".to_vec());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not JSON"),
        "{body}"
    );
    assert_eq!(body["code"], "bad_json");

    let gz = [basic(KEY), json_type(), ("content-encoding", "gzip".into())];
    let (status, body) = c.post("/v1/batch", &gz, b"{\"batch\": []}".to_vec());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not gzip"),
        "{body}"
    );

    let no_id = json!({"type": "track", "event": "Product Viewed"});
    let (status, body) = c.batch(&[track("m1", "u1", "Product Viewed", "A"), no_id]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["index"], 1, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("userId nor anonymousId") && message.contains("nothing was accepted"),
        "{message}"
    );

    let (status, body) = c.post(
        "/v1/track",
        &ok,
        serde_json::to_vec(&json!({"userId": "u1"})).unwrap(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("event name"),
        "{body}"
    );

    let (status, _) = c.post("/v1/batch", &[json_type()], b"{\"batch\": []}".to_vec());
    assert_eq!(status, 401, "no write key");
    let (status, body) = c.post(
        "/v1/batch",
        &[basic("nope"), json_type()],
        b"{\"batch\": []}".to_vec(),
    );
    assert_eq!(status, 401, "{body}");

    let calls: Vec<Value> = (0..6)
        .map(|i| track(&format!("m{i}"), "u1", "Cart Viewed", "A"))
        .collect();
    let (status, body) = c.batch(&calls);
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_batch_len = 5"),
        "{body}"
    );
    let big = json!({"batch": [{"type": "page", "userId": "u1", "properties": {"pad": "x".repeat(5000)}}]});
    let (status, _) = c.post("/v1/batch", &ok, serde_json::to_vec(&big).unwrap());
    assert_eq!(status, 413);
    // A small gzip body that inflates past the limit.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&serde_json::to_vec(&big).unwrap()).unwrap();
    let (status, _) = c.post("/v1/batch", &gz, enc.finish().unwrap());
    assert_eq!(status, 413, "the limit holds after decompression");

    let (status, body) = c.batch(&[
        track("m-ok", "u1", "Product Viewed", "A"),
        track("m-unknown", "u2", "Wishlist Shared", "A"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["produced"].as_u64(), body["dead_lettered"].as_u64()),
        (Some(1), Some(1))
    );
    let got = touchpoints(&topics.input, &topics.bootstrap);
    let ids: Vec<&str> = got.iter().map(|(_, t)| t.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["m-ok"],
        "nothing of the refused requests was produced"
    );
    let dead = drain(&cfg.kafka.dead_letter_topic);
    assert_eq!(dead.len(), 1);
    let reason = header(&dead[0], rapport::kafka::DLQ_REASON).unwrap();
    assert!(reason.contains("\"Wishlist Shared\""), "{reason}");
    assert_eq!(
        header(&dead[0], rapport::kafka::DLQ_TOPIC).as_deref(),
        Some("/v1/batch")
    );
    assert_eq!(dead[0].key(), Some(&b"u2"[..]));
    let value: Value = serde_json::from_slice(dead[0].payload().unwrap()).unwrap();
    assert_eq!(value["messageId"], "m-unknown", "the call as received");
    let metrics = c.metrics();
    assert!(
        metrics.contains(r#"rapport_collector_dead_letters_total{class="unmapped"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"rapport_collector_requests_total{endpoint="/v1/batch",status="413"} 3"#),
        "{metrics}"
    );
    c.stop();
}

#[test]
fn with_its_broker_stopped_the_collector_refuses_and_loses_nothing_it_acknowledged() {
    let _serial = heavy();
    let Some((broker, bootstrap)) = OwnBroker::start(19392) else {
        return;
    };
    let topics = Topics::on(&bootstrap, "collector-outage", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = collector_config(&topics, dir.path());
    cfg.collector.produce_timeout_ms = 3_000;
    let c = InProcess::start(&cfg, dir.path());
    let calls = |batch: &str| -> Vec<Value> {
        (0..20)
            .map(|i| {
                track(
                    &format!("{batch}-{i}"),
                    &format!("u{i}"),
                    "Product Viewed",
                    "A",
                )
            })
            .collect()
    };
    let mut acknowledged = BTreeSet::new();
    let (status, body) = c.batch(&calls("before"));
    assert_eq!(status, 200, "{body}");
    acknowledged.extend(
        calls("before")
            .iter()
            .map(|v| v["messageId"].as_str().unwrap().to_owned()),
    );

    broker.kafka_sh("stop");
    let (status, body) = c.batch(&calls("during"));
    assert_eq!(status, 503, "no 200 while Kafka cannot acknowledge: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("retry"),
        "{body}"
    );
    broker.kafka_sh("start");

    // As an SDK does: retry the refused batch until it is acknowledged.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = c.batch(&calls("during"));
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the collector never recovered: {body}"
        );
    }
    acknowledged.extend(
        calls("during")
            .iter()
            .map(|v| v["messageId"].as_str().unwrap().to_owned()),
    );
    let metrics = c.metrics();
    assert!(
        metrics.contains(r#"endpoint="/v1/batch",status="503""#),
        "{metrics}"
    );
    assert_eq!(
        c.http.get(&c.url("/healthz")).map(|r| r.0),
        Some(200),
        "the producer came through the outage without a fatal error"
    );
    c.stop();

    let stored: BTreeSet<String> = touchpoints(&topics.input, &bootstrap)
        .into_iter()
        .map(|(_, t)| t.event_id)
        .collect();
    assert_eq!(
        stored, acknowledged,
        "every acknowledged call is in the topic, and nothing else"
    );
}

/// The hex HMAC-SHA256 of `body` with `secret`.
fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_signed_chat_event_becomes_a_touchpoint_and_a_wrongly_signed_one_is_refused() {
    let topics = Topics::new("collector-chat", 2);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = collector_config(&topics, dir.path());
    cfg.collector.chat.insert(
        "support".into(),
        ChatSource {
            secret: "whsec-1".into(),
            signature_header: "x-hub-signature-256".into(),
            events: "/events".into(),
            customer: "/customer/id".into(),
            event_id: "/id".into(),
            conversation: "/conversation".into(),
            direction: "/author".into(),
            text: "/message/text".into(),
            sentiment: "/message/sentiment".into(),
            handoff: "/handoff".into(),
            timestamp: "/at".into(),
            ..Default::default()
        },
    );
    let c = InProcess::start(&cfg, dir.path());
    let body = serde_json::to_vec(&json!({"events": [
        {"id": "e1", "customer": {"id": "c-chat"}, "conversation": "conv-1", "author": "customer",
         "message": {"text": "my order never came", "sentiment": -0.6}, "at": "2025-11-24T16:00:00Z"},
        {"id": "e2", "customer": {"id": "c-chat"}, "conversation": "conv-1", "author": "bot",
         "handoff": true, "at": "2025-11-24T16:00:05Z"}
    ]}))
    .unwrap();
    let path = "/v1/webhooks/chat/support";
    let signed = |sig: String| [json_type(), ("x-hub-signature-256", sig)];

    let (status, resp) = c.post(
        path,
        &signed(format!("sha256={}", sign(b"other", &body))),
        body.clone(),
    );
    assert_eq!(status, 401, "{resp}");
    assert!(
        resp["message"].as_str().unwrap().contains("does not match"),
        "{resp}"
    );
    let (status, _) = c.post(path, &[json_type()], body.clone());
    assert_eq!(status, 401, "unsigned");
    let (status, _) = c.post(
        "/v1/webhooks/chat/other",
        &signed(sign(b"whsec-1", &body)),
        body.clone(),
    );
    assert_eq!(status, 404, "unknown source");
    assert!(
        drain(&topics.input).is_empty(),
        "nothing of the refused requests was produced"
    );

    let (status, resp) = c.post(
        path,
        &signed(format!("sha256={}", sign(b"whsec-1", &body))),
        body.clone(),
    );
    assert_eq!(status, 200, "{resp}");
    let got = touchpoints(&topics.input, &topics.bootstrap);
    assert_eq!(got.len(), 2);
    let (m, message) = &got[0];
    assert_eq!(m.key(), Some(&b"c-chat"[..]));
    assert_eq!(message.event_id, "support:e1");
    assert_eq!(
        (message.channel, message.event_type),
        (Channel::Chat, EventType::ChatMessage)
    );
    assert_eq!(message.event_time, 1_764_000_000_000);
    assert_eq!(message.chat.as_ref().unwrap().sentiment, Some(-0.6));
    assert_eq!(message.attributes["conversation_id"], "conv-1");
    assert_eq!(got[1].1.event_type, EventType::ChatHandoff);
    assert_eq!(got[1].1.chat.as_ref().unwrap().from_bot, Some(true));
    for (m, _) in &got {
        let raw = String::from_utf8_lossy(m.payload().unwrap());
        assert!(!raw.contains("never came"), "the text is not kept: {raw}");
    }
    c.stop();
}

#[test]
fn a_bad_collector_config_is_refused_at_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |text: &str| {
        let conf = dir.path().join("rapport.toml");
        std::fs::write(&conf, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(["collect", "--config"])
            .arg(&conf)
            .env_remove("RAPPORT_WRITE_KEY")
            .output()
            .unwrap();
        assert!(!out.status.success(), "refused");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("[kafka]\ngroup_id = \"g\"\n\n[collector]\nmax_body_bytes = 10\n");
    assert!(
        err.contains("rapport.toml:5: collector.max_body_bytes"),
        "{err}"
    );
    let err = run("[collector]\nwrite_keys = [\"env:RAPPORT_WRITE_KEY\"]\n");
    assert!(
        err.contains("rapport.toml:2: collector.write_keys")
            && err.contains("RAPPORT_WRITE_KEY is not set"),
        "{err}"
    );
    let err = run(
        "[collector]\nlisten = \"127.0.0.1:0\"\nwrite_keys = [\"k\"]\nmapping = \"mine.toml\"\n",
    );
    assert!(
        err.contains("mine.toml") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("mine.toml"),
        "[events.\"Product Viewed\"]\ntype = \"product_seen\"\n",
    )
    .unwrap();
    let out = validate(&dir.path().join("rapport.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("mine.toml:2:") && err.contains("product_seen"),
        "rapport validate checks the mapping: {err}"
    );
}
