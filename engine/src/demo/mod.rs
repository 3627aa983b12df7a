//! `rapport demo`: the whole loop on one machine, live.
//!
//! Starts (or reuses) a broker, creates fresh topics, feeds a simulated population
//! across web, app, call center, store and chat, runs the engine, and prints what
//! it does: events per second, actions by kind, dead letters, and the latest action
//! with its reasons. It ends by itself and stops what it started.
//!
//! The touchpoints come in through each of Rapport's doors: web page and
//! product views through the collector (`rapport collect`) as Segment calls
//! over HTTP, a small store export through the importer (`rapport import`), and
//! the rest straight to the touchpoint topic.

mod web;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rapport_connectors::simulator::{SimConfig, Simulator};
use rapport_model::Action;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::Message;

use crate::config::Config;
use crate::kafka::{ensure_topics, TopicSpec, DLQ_REASON};
use crate::metrics::Metrics;
use crate::state::StateStore;
use crate::{broker, runtime};

/// Demo options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// How long to feed events, seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Simulated customers.
    #[arg(long, default_value_t = 5_000)]
    pub customers: u64,
    /// Touchpoints per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Leave the local broker running afterwards (faster next start).
    #[arg(long)]
    pub keep_broker: bool,
    /// Directory of journey files to run (every `*.toml` in it).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/journeys"))]
    pub journeys: std::path::PathBuf,
}

/// The small store (POS) export the demo imports through `rapport import`'s door.
const DEMO_POS_EXPORT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/import/pos-export.csv");
/// Its mapping.
const DEMO_POS_MAPPING: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/import/pos-mapping.toml"
);

/// Imports the shipped POS export into the demo's touchpoint topic, as
/// `rapport import` would, and shows what became of its rows. A missing file
/// (an installed binary without the sources) only skips this step.
fn import_store_export(cfg: &Config, scratch: &std::path::Path) {
    let result = crate::import::mapping::Mapping::load(std::path::Path::new(DEMO_POS_MAPPING))
        .map_err(anyhow::Error::from)
        .and_then(|mapping| {
            let opts = crate::import::ImportOptions {
                // The demo's configuration is in memory; `import` reads only `cfg.kafka`.
                config: std::path::PathBuf::new(),
                mapping: DEMO_POS_MAPPING.into(),
                input: DEMO_POS_EXPORT.into(),
                rejects: Some(scratch.join("pos-rejects.jsonl")),
                topic: None,
            };
            crate::import::import(&cfg.kafka, &mapping, &opts)
        });
    match result {
        Ok(s) => {
            println!(
                "store export imported (rapport import --mapping deploy/import/pos-mapping.toml --input deploy/import/pos-export.csv): {} rows, {} touchpoints, {} rejected:",
                s.counts.read, s.counts.produced, s.counts.rejected
            );
            for line in std::fs::read_to_string(&s.rejects)
                .unwrap_or_default()
                .lines()
            {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                println!(
                    "  line {}: {}",
                    v["line"],
                    v["reason"].as_str().unwrap_or("")
                );
            }
        }
        Err(e) => println!("store export not imported: {e:#}"),
    }
}

/// The demo's survey wait, instead of the shipped two hours.
const DEMO_SURVEY_WAIT: &str = "5s";

/// Copies the journey files of `from` into `to`, with the post-delivery survey's
/// wait shortened so that it fires while you watch.
fn demo_journeys(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let mut text = std::fs::read_to_string(&path)?;
            if path
                .file_name()
                .is_some_and(|f| f == "post_delivery_survey.toml")
            {
                text = text.replace("for = \"2h\"", &format!("for = \"{DEMO_SURVEY_WAIT}\""));
            }
            std::fs::write(to.join(path.file_name().unwrap_or_default()), text)?;
            n += 1;
        }
    }
    Ok(n)
}

/// What the action and dead-letter readers saw.
#[derive(Default)]
struct Seen {
    by_kind: BTreeMap<String, u64>,
    latest: BTreeMap<String, Action>,
    dead_letters: u64,
    latest_dead_letter: Option<String>,
}

/// Runs the demo.
pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    println!(
        "Rapport demo: {} customers, {} touchpoints/s for {}s\n",
        opts.customers, opts.rate, opts.seconds
    );
    let b = broker::ensure()?;
    let result = run_on(&b.bootstrap, &opts);
    if b.started_here && !opts.keep_broker {
        println!("stopping the local broker");
        broker::stop()?;
    }
    result
}

/// The demo's configuration, with the temporary directories it points at
/// (kept for the demo's life).
struct Setup {
    cfg: Config,
    /// Journey files copied from the demo's journeys directory.
    files: usize,
    _journeys: tempfile::TempDir,
    state: tempfile::TempDir,
}

/// A configuration of fresh topics and group for this run, its journeys
/// compiled with compressed time (so the post-delivery survey fires while you
/// watch) and state in a temporary directory.
fn configure(bootstrap: &str, opts: &DemoOptions) -> anyhow::Result<Setup> {
    let run_id = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let mut cfg = Config::default();
    cfg.kafka.bootstrap_servers = bootstrap.to_owned();
    cfg.kafka.group_id = format!("rapport-demo-{run_id}");
    cfg.kafka.touchpoint_topics = vec![format!("rapport.demo.{run_id}.touchpoints")];
    cfg.kafka.action_topic = format!("rapport.demo.{run_id}.actions");
    cfg.kafka.dead_letter_topic = format!("rapport.demo.{run_id}.dead-letter");
    let journeys = tempfile::tempdir()?;
    let files = demo_journeys(&opts.journeys, journeys.path())?;
    cfg.journeys = vec!["*.toml".into()];
    cfg.compile_journeys(journeys.path())?;
    let state = tempfile::tempdir()?;
    cfg.state.path = state.path().to_owned();
    cfg.validate()
        .map_err(|(k, m)| anyhow::anyhow!("{k}: {m}"))?;
    Ok(Setup {
        cfg,
        files,
        _journeys: journeys,
        state,
    })
}

/// Creates the demo's touchpoint, action and dead-letter topics (four
/// partitions each), in that order.
fn create_topics(bootstrap: &str, cfg: &Config) -> anyhow::Result<Vec<TopicSpec>> {
    let topics: Vec<TopicSpec> = [
        &cfg.kafka.touchpoint_topics[0],
        &cfg.kafka.action_topic,
        &cfg.kafka.dead_letter_topic,
    ]
    .into_iter()
    .map(|name| TopicSpec::new(name, 4))
    .collect();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ensure_topics(bootstrap, &topics))
        .context("creating the demo topics")?;
    Ok(topics)
}

/// Says which journeys run and which topics the demo uses.
fn announce(setup: &Setup, opts: &DemoOptions, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let ids: Vec<String> = setup
        .cfg
        .journeys()?
        .journeys()
        .iter()
        .map(|j| j.id.clone())
        .collect();
    println!(
        "{} journey files from {}: {}",
        setup.files,
        opts.journeys.display(),
        ids.join(", ")
    );
    println!("post-delivery surveys wait {DEMO_SURVEY_WAIT} in the demo (2h as shipped)");
    println!(
        "topics: {} -> {} (+ {})",
        topics[0].name, topics[1].name, topics[2].name
    );
    Ok(())
}

fn run_on(bootstrap: &str, opts: &DemoOptions) -> anyhow::Result<()> {
    let setup = configure(bootstrap, opts)?;
    let cfg = &setup.cfg;
    let topics = create_topics(bootstrap, cfg)?;
    announce(&setup, opts, &topics)?;

    import_store_export(cfg, setup.state.path());

    let state = Arc::new(StateStore::open(&cfg.state)?);
    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state.clone(), metrics.clone())?;
    serve_http(cfg, &engine, state, metrics);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = start_readers(bootstrap, cfg, &seen, &stop_readers);

    let (collector_rt, collector) = start_collector(cfg)?;
    println!(
        "web page and product views go through the collector: http://{}/v1/batch (Segment calls, write key {})",
        collector.addr,
        web::WRITE_KEY
    );
    let stop_sim = Arc::new(AtomicBool::new(false));
    let sim = start_simulator(bootstrap, cfg, opts, collector.addr, &stop_sim);

    watch(&engine, opts.seconds, &seen);
    stop_sim.store(true, Ordering::SeqCst);
    let (published, through_collector, refused) = sim
        .join()
        .map_err(|_| anyhow::anyhow!("simulator panicked"))??;
    let _ = collector_rt.block_on(collector.stop());
    // Let the engine catch up with everything published, then stop it cleanly.
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.progress.committed.load(Ordering::SeqCst) < published
        && Instant::now() < deadline
        && !engine.is_finished()
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    engine.shutdown()?;
    std::thread::sleep(Duration::from_millis(500));
    stop_readers.store(true, Ordering::SeqCst);
    for r in readers {
        let _ = r.join();
    }
    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    print_totals(published, through_collector, refused, &s);
    Ok(())
}

/// Prints what the engine and the readers saw every two seconds, for
/// `seconds` or until the engine stops.
fn watch(engine: &runtime::EngineHandle, seconds: u64, seen: &Mutex<Seen>) {
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_secs(seconds) && !engine.is_finished() {
        std::thread::sleep(Duration::from_secs(2));
        let handled = engine.progress.handled.load(Ordering::Relaxed);
        let rate = (handled - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), handled);
        print_summary(started.elapsed().as_secs(), rate, handled, seen);
    }
}

/// Serves metrics and the profile API of the demo's engine on `http.listen`,
/// on a thread of its own; a busy port only costs the demo its metrics page.
fn serve_http(
    cfg: &Config,
    engine: &runtime::EngineHandle,
    state: Arc<StateStore>,
    metrics: Metrics,
) {
    let Some(addr) = cfg.http.addr() else {
        return;
    };
    let app = crate::http::AppState {
        owners: crate::owners::Owners::new(cfg, engine.key_rule)
            .ok()
            .map(Arc::new),
        ..crate::http::AppState::local(cfg, state, metrics, engine.progress.clone())
    };
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            let _ = rt.block_on(crate::http::serve(addr, app));
        }
    });
    println!("metrics: http://{addr}/metrics   profiles: http://{addr}/v1/profiles/c-000128\n");
}

/// Readers of the action and dead-letter topics, counting into `seen` until `stop`.
fn start_readers(
    bootstrap: &str,
    cfg: &Config,
    seen: &Arc<Mutex<Seen>>,
    stop: &Arc<AtomicBool>,
) -> [std::thread::JoinHandle<anyhow::Result<()>>; 2] {
    [
        cfg.kafka.action_topic.clone(),
        cfg.kafka.dead_letter_topic.clone(),
    ]
    .map(|topic| {
        let (seen, stop, bootstrap) = (seen.clone(), stop.clone(), bootstrap.to_owned());
        let is_actions = topic == cfg.kafka.action_topic;
        std::thread::spawn(move || read_outputs(&bootstrap, &topic, is_actions, &seen, &stop))
    })
}

/// Simulated customers' touchpoints, web page and product views through the
/// collector at `collector` and the rest straight to the touchpoint topic,
/// until `stop`. The thread returns the touchpoints published, those that went
/// through the collector, and those it refused (then sent to Kafka directly).
fn start_simulator(
    bootstrap: &str,
    cfg: &Config,
    opts: &DemoOptions,
    collector: std::net::SocketAddr,
    stop: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<(u64, u64, u64)>> {
    let (stop, bootstrap) = (stop.clone(), bootstrap.to_owned());
    let sent = Arc::new(AtomicU64::new(0));
    let topic = cfg.kafka.touchpoint_topics[0].clone();
    let (customers, rate) = (opts.customers, opts.rate);
    let mut door = web::WebDoor::new(collector);
    std::thread::spawn(move || {
        let mut sim = Simulator::new(SimConfig {
            customers,
            ..SimConfig::default()
        });
        let n = web::feed(&bootstrap, &topic, &mut sim, rate, &stop, &sent, &mut door)?;
        Ok((n, door.sent, door.refused))
    })
}

/// What the demo ends with: touchpoints published, actions by kind and dead letters.
fn print_totals(published: u64, through_collector: u64, refused: u64, s: &Seen) {
    println!(
        "\ndone: {published} touchpoints published ({through_collector} of them through the collector{}), {} actions, {} dead letters",
        if refused > 0 {
            format!(", {refused} it refused sent to Kafka directly")
        } else {
            String::new()
        },
        s.by_kind.values().sum::<u64>(),
        s.dead_letters
    );
    for (kind, n) in &s.by_kind {
        println!("  {kind:<18} {n}");
    }
    if let Some(r) = &s.latest_dead_letter {
        println!("  latest dead-letter reason: {r}");
    }
}

/// Starts the collector for the demo's touchpoint topic on a free local port,
/// on a runtime of its own that lives as long as the returned handle.
fn start_collector(
    cfg: &Config,
) -> anyhow::Result<(tokio::runtime::Runtime, crate::collect::Running)> {
    let mut cfg = cfg.clone();
    cfg.collector.listen = "127.0.0.1:0".into();
    cfg.collector.write_keys = vec![web::WRITE_KEY.into()];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let running = rt
        .block_on(crate::collect::start(
            &cfg,
            std::path::Path::new("rapport.toml"),
        ))
        .context("starting the demo's collector")?;
    Ok((rt, running))
}

fn print_summary(secs: u64, rate: f64, handled: u64, seen: &Mutex<Seen>) {
    let Ok(s) = seen.lock() else { return };
    let kinds: Vec<String> = s.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "[{secs:>3}s] {rate:>8.0} events/s  (total {handled})  actions: {}  dead-letter: {}",
        if kinds.is_empty() {
            "none yet".into()
        } else {
            kinds.join(", ")
        },
        s.dead_letters
    );
    for a in s.latest.values() {
        let state = a.emotional_state.map(|e| e.as_str()).unwrap_or("unknown");
        let _ = writeln!(
            out,
            "       latest {} for {} via {} (feeling {state})",
            a.kind.as_str(),
            a.customer_id,
            a.channel.as_str()
        );
        for r in &a.reasons {
            let _ = writeln!(out, "         because {} = {}", r.condition, r.value);
        }
    }
}

fn read_outputs(
    bootstrap: &str,
    topic: &str,
    actions: bool,
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}.demo-reader"))
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topic])?;
    while !stop.load(Ordering::Relaxed) {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(mut s) = seen.lock() else { break };
        if actions {
            if let Ok(a) = serde_json::from_slice::<Action>(m.payload().unwrap_or_default()) {
                *s.by_kind.entry(a.kind.as_str().to_owned()).or_default() += 1;
                s.latest.insert(a.kind.as_str().to_owned(), a);
            }
        } else {
            s.dead_letters += 1;
            if let Some(h) = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == DLQ_REASON))
            {
                s.latest_dead_letter = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    Ok(())
}
