//! Test support: the real broker, unique topics, producing, draining topics, and
//! running the engine until it has committed what was produced.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rapport::config::Config;
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport::metrics::Metrics;
use rapport::runtime::{self, EngineHandle};
use rapport::state::StateStore;
use rapport_model::{Action, Touchpoint};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// The broker every test uses: `RAPPORT_KAFKA_BOOTSTRAP`, or the local one (started once).
pub fn bootstrap() -> String {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        rapport::broker::ensure()
            .expect("a Kafka broker for the tests")
            .bootstrap
    })
    .clone()
}

/// A topic or group name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test.{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Topics of one test: touchpoints in, actions and dead letters out.
pub struct Topics {
    /// The cluster they live on.
    pub bootstrap: String,
    pub input: String,
    pub actions: String,
    pub dead_letter: String,
    /// The delivery policy's decisions not to act.
    pub decisions: String,
}

impl Topics {
    pub fn new(name: &str, partitions: i32) -> Topics {
        Topics::on(&bootstrap(), name, partitions)
    }

    /// Topics on the cluster at `bootstrap`.
    pub fn on(bootstrap: &str, name: &str, partitions: i32) -> Topics {
        let t = Topics {
            bootstrap: bootstrap.to_owned(),
            input: unique(&format!("{name}.touchpoints")),
            actions: unique(&format!("{name}.actions")),
            dead_letter: unique(&format!("{name}.dlq")),
            decisions: unique(&format!("{name}.decisions")),
        };
        let specs: Vec<TopicSpec> = [
            (&t.input, partitions),
            (&t.actions, 2),
            (&t.dead_letter, 1),
            (&t.decisions, 2),
        ]
        .into_iter()
        .map(|(n, p)| TopicSpec::new(n, p))
        .collect();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(ensure_topics(bootstrap, &specs))
            .expect("creating test topics");
        t
    }

    /// An engine configuration for these topics, state in `state_dir`, consumer group `group`.
    pub fn config(&self, state_dir: &Path, group: &str) -> Config {
        let mut c = Config::default();
        c.kafka.bootstrap_servers = self.bootstrap.clone();
        c.kafka.group_id = group.to_owned();
        c.kafka.touchpoint_topics = vec![self.input.clone()];
        c.kafka.action_topic = self.actions.clone();
        c.kafka.dead_letter_topic = self.dead_letter.clone();
        c.kafka.decisions_topic = self.decisions.clone();
        c.state.path = state_dir.to_owned();
        c.state.block_cache_mb = 8;
        c.state.write_buffer_mb = 8;
        c.http.listen = String::new();
        // The tests feed recorded history: timers fire on event time only, as in a
        // replay, so results do not depend on when a partition happens to be idle.
        c.engine.wall_clock_timers = false;
        c.validate().expect("valid test config");
        // The journeys Rapport ships, loaded from their files.
        c.journeys = vec![format!("{}/*.toml", journey_dir().display())];
        c.compile_journeys(&journey_dir())
            .unwrap_or_else(|e| panic!("{e}"));
        c
    }
}

/// A record to produce: key, value and headers.
pub type Raw = (String, Vec<u8>, Vec<(&'static str, &'static str)>);

/// Produces `(key, value, headers)` records and waits until all are acknowledged.
pub fn produce_raw(topic: &str, records: &[Raw]) {
    produce_raw_on(&bootstrap(), topic, records)
}

/// [`produce_raw`] on the cluster at `bootstrap`.
pub fn produce_raw_on(bootstrap: &str, topic: &str, records: &[Raw]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Kafka's Java default partitioner, which the engine's key rule expects.
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for (k, v, headers) in records {
        let mut h = OwnedHeaders::new();
        for (key, value) in headers {
            h = h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        p.send(BaseRecord::to(topic).key(k).payload(v).headers(h))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Produces touchpoints as JSON, keyed by identity.
pub fn produce(topic: &str, tps: &[Touchpoint]) {
    let records: Vec<_> = tps
        .iter()
        .map(|t| {
            (
                t.identity().unwrap().to_owned(),
                serde_json::to_vec(t).unwrap(),
                vec![],
            )
        })
        .collect();
    produce_raw(topic, &records);
}

/// Reads every committed record currently in `topic`, from the beginning.
pub fn drain(topic: &str) -> Vec<OwnedMessage> {
    drain_on(&bootstrap(), topic)
}

/// [`drain`] on the cluster at `bootstrap`.
pub fn drain_on(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("drain"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let partitions = partition_ids(&c, topic);
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    // The true end (a read_committed client answers with the last stable offset,
    // which stops before any transaction still open); reading stops past it only
    // once every transaction in the partition is decided.
    let uncommitted = read_uncommitted(bootstrap);
    for &p in &partitions {
        let (lo, hi) = watermarks(&uncommitted, topic, p);
        if hi > lo {
            ends.insert(p, hi);
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "timed out draining {topic}");
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if ends
                    .get(&m.partition())
                    .is_some_and(|&hi| m.offset() + 1 >= hi)
                {
                    ends.remove(&m.partition());
                }
                out.push(m.detach());
            }
            Some(Err(e)) => panic!("draining {topic}: {e}"),
            None => {
                // read_committed may stop short of the high watermark (control records).
                for p in ends.keys().copied().collect::<Vec<_>>() {
                    let pos = c
                        .position()
                        .unwrap()
                        .find_partition(topic, p)
                        .map(|e| e.offset());
                    if let Some(Offset::Offset(o)) = pos {
                        if o >= ends[&p] {
                            ends.remove(&p);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The actions currently in `topic`.
pub fn actions(topic: &str) -> Vec<Action> {
    actions_on(&bootstrap(), topic)
}

/// [`actions`] on the cluster at `bootstrap`.
pub fn actions_on(bootstrap: &str, topic: &str) -> Vec<Action> {
    drain_on(bootstrap, topic)
        .iter()
        .map(|m| serde_json::from_slice(m.payload().unwrap()).expect("action JSON"))
        .collect()
}

/// Runs an engine on `cfg` until it has committed `records` records, then stops it cleanly.
pub fn run_engine(cfg: &Config, state: Arc<StateStore>, records: u64) -> Metrics {
    let metrics = Metrics::new();
    let engine = runtime::start(cfg.clone(), state, metrics.clone()).expect("engine starts");
    wait_committed(&engine, records);
    if cfg.identity.stitching {
        // Merges the input started finish through the repartition topic.
        for input in &cfg.kafka.touchpoint_topics {
            wait_stitched(&cfg.kafka.bootstrap_servers, &cfg.kafka.group_id, input);
        }
    }
    engine.shutdown().expect("clean shutdown");
    metrics
}

/// Waits until `engine` has committed at least `records` records.
pub fn wait_committed(engine: &EngineHandle, records: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while engine.progress.committed.load(Ordering::SeqCst) < records {
        assert!(!engine.is_finished(), "engine stopped early");
        assert!(
            Instant::now() < deadline,
            "engine committed only {} of {records} records",
            engine.progress.committed.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a state store in `dir`.
pub fn state(cfg: &Config) -> Arc<StateStore> {
    Arc::new(StateStore::open(&cfg.state).expect("state opens"))
}

/// Serialises the tests that push 100k records through several processes, so
/// they do not fight over the machine's two cores with each other.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sum of the offsets group `group` has committed on `topic`.
pub fn committed_total(group: &str, topic: &str) -> i64 {
    committed_total_on(&bootstrap(), group, topic)
}

/// [`committed_total`] on the cluster at `bootstrap`.
pub fn committed_total_on(bootstrap: &str, group: &str, topic: &str) -> i64 {
    committed_on(bootstrap, group, topic).iter().sum()
}

/// Group `group`'s committed offset of each partition of `topic` (0 where none).
///
/// Read on a thread of its own, which hands the offsets back before it drops
/// its consumer: right after a broker restart, librdkafka's consumer close
/// (which a drop waits for) was seen not to return, and the test waited on it
/// for good. Such a thread is left behind; the answer is not.
pub fn committed_on(bootstrap: &str, group: &str, topic: &str) -> Vec<i64> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    let reader = group.clone();
    std::thread::spawn(move || {
        let c = group_reader(&bootstrap, &reader);
        let _ = tx.send(read_committed_offsets(&c, &reader, &topic));
        drop(c);
    });
    match rx.recv() {
        Ok(offsets) => offsets,
        Err(_) => panic!("reading committed offsets of {group} failed (see above)"),
    }
}

/// A consumer of group `group` that never joins it, to read its offsets.
/// It reads the offsets committed so far (`read_uncommitted`): with
/// librdkafka's default, `read_committed`, an offset fetch waits while a
/// transaction of the group's is open, and an `exactly_once` engine under
/// load nearly always has one.
fn group_reader(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("isolation.level", "read_uncommitted")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// [`committed_on`]'s reading, on `c`.
fn read_committed_offsets(c: &BaseConsumer, group: &str, topic: &str) -> Vec<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in partition_ids(c, topic) {
        tpl.add_partition(topic, p);
    }
    // Right after a broker restart the group coordinator may not be loaded yet.
    let deadline = Instant::now() + Duration::from_secs(60);
    let committed = loop {
        match c.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reading committed offsets of {group}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("reading committed offsets of {group}: {e}"),
        }
    };
    let mut by_partition: Vec<(i32, i64)> = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), o),
            _ => (e.partition(), 0),
        })
        .collect();
    by_partition.sort();
    by_partition.into_iter().map(|(_, o)| o).collect()
}

/// A client that sees the true end of partitions, open transactions included.
fn read_uncommitted(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap()
}

/// Sum of the end offsets of `topic`'s partitions.
pub fn end_total(topic: &str) -> i64 {
    end_total_on(&bootstrap(), topic)
}

/// [`end_total`] on the cluster at `bootstrap`.
pub fn end_total_on(bootstrap: &str, topic: &str) -> i64 {
    ends_on(bootstrap, topic).iter().sum()
}

/// The end offset of each partition of `topic`, open transactions included.
pub fn ends_on(bootstrap: &str, topic: &str) -> Vec<i64> {
    let c = read_uncommitted(bootstrap);
    partition_ids(&c, topic)
        .into_iter()
        .map(|p| watermarks(&c, topic, p).1)
        .collect()
}

/// The partition ids of `topic`, in order. A broker restarted a moment ago, or
/// a topic created a moment ago, may answer without the topic's partitions or
/// with an error for it: ask again for a while, as [`watermarks`] does.
fn partition_ids(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|md| {
                let t = md.topics().first().ok_or("no topic in the answer")?;
                if let Some(e) = t.error() {
                    return Err(format!("{e:?}"));
                }
                let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                ids.sort();
                if ids.is_empty() {
                    return Err("no partitions yet".into());
                }
                Ok(ids)
            });
        match answer {
            Ok(ids) => return ids,
            Err(e) if Instant::now() < deadline => {
                eprintln!("partitions of {topic}: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("partitions of {topic}: {e}"),
        }
    }
}

/// The low and high watermarks of `topic` [`p`]. A broker restarted a moment
/// ago, or a topic created a moment ago, answers NotLeaderForPartition until
/// the partition's leader is known: ask again for a while.
fn watermarks(c: &BaseConsumer, topic: &str, p: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks(topic, p, Duration::from_secs(10)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic} [{p}]: {e}; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("watermarks of {topic} [{p}]: {e}"),
        }
    }
}

/// Writes `cfg` as a TOML file for `rapport run`.
pub fn write_config(cfg: &Config, path: &Path) {
    let topics: Vec<String> = cfg
        .kafka
        .touchpoint_topics
        .iter()
        .map(|t| format!("{t:?}"))
        .collect();
    let consumer: String = cfg
        .kafka
        .consumer
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let client: String = cfg
        .kafka
        .client
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}\n"))
        .collect();
    let guarantee = match cfg.engine.guarantee {
        rapport::config::Guarantee::ExactlyOnce => "exactly_once",
        rapport::config::Guarantee::AtLeastOnce => "at_least_once",
    };
    let journeys: Vec<String> = cfg.journeys.iter().map(|j| format!("{j:?}")).collect();
    let text = format!(
        "journeys = [{}]\n\n[kafka]\nbootstrap_servers = {:?}\ngroup_id = {:?}\ntouchpoint_topics = [{}]\naction_topic = {:?}\ndead_letter_topic = {:?}\ndecisions_topic = {:?}\n\n\
         [kafka.client]\n{client}\n\
         [kafka.consumer]\n{consumer}\n\
         [state]\npath = {:?}\nblock_cache_mb = 16\nwrite_buffer_mb = 16\n\n\
         [engine]\nguarantee = {guarantee:?}\ninstance_id = {:?}\nwall_clock_timers = {}\ncommit_interval_ms = {}\nout_of_group_timeout_ms = {}\n\n\
         [http]\nlisten = {:?}\n",
        journeys.join(", "),
        cfg.kafka.bootstrap_servers,
        cfg.kafka.group_id,
        topics.join(", "),
        cfg.kafka.action_topic,
        cfg.kafka.dead_letter_topic,
        cfg.kafka.decisions_topic,
        cfg.state.path.display().to_string(),
        cfg.engine.instance_id,
        cfg.engine.wall_clock_timers,
        cfg.engine.commit_interval_ms,
        cfg.engine.out_of_group_timeout_ms,
        cfg.http.listen,
    );
    let text = match &cfg.http.advertised_url {
        Some(u) => format!("{text}advertised_url = {u:?}\n"),
        None => text,
    };
    std::fs::write(path, text).unwrap();
}

/// A `rapport run` process.
pub struct Instance {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Instance {
    /// Starts `rapport run` on `cfg`; its log goes to a file beside the config.
    pub fn spawn(cfg: &Config, dir: &Path, name: &str) -> Instance {
        let conf = dir.join(format!("{name}.toml"));
        write_config(cfg, &conf);
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
            .args(["run", "--config"])
            .arg(&conf)
            .env(
                "RAPPORT_LOG",
                std::env::var("RAPPORT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("rapport run starts");
        Instance { child, log }
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "rapport exited with {status} on SIGTERM; log: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Waits until the instance has restored and taken `partitions` partitions.
    pub fn wait_ready(&mut self, partitions: usize) {
        self.wait_log("partition ready", partitions);
    }

    /// The instance's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the instance's log has `times` lines containing `what`.
    pub fn wait_log(&mut self, what: &str, times: usize) {
        let done = |i: &Instance| i.log_text().matches(what).count() >= times;
        self.wait_until(
            &format!("{what:?} logged {times} times"),
            Duration::from_secs(120),
            Duration::from_millis(10),
            done,
        );
    }

    /// Waits until `done` holds, asking `every` so often, failing the test
    /// with `what` and the instance's log if the instance exits or `limit`
    /// passes first, so a stuck engine fails with its log instead of holding
    /// the suite up.
    pub fn wait_until(
        &mut self,
        what: &str,
        limit: Duration,
        every: Duration,
        mut done: impl FnMut(&Instance) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "not within {} s: {what}; log:\n{}",
                limit.as_secs(),
                self.log_text()
            );
            std::thread::sleep(every);
        }
    }

    /// Fails the test if the process has exited (with its log).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "rapport exited early with {status}; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// An instance still running when its test ends, as when the test fails, is
/// stopped, so no `rapport run` outlives its test and loads the machine for
/// the next ones; a failing test also shows the end of its log (a failure in a
/// helper, such as reading the group's offsets, does not print it).
impl Drop for Instance {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("last lines of {}:\n{tail}", self.log.display());
        }
    }
}

/// Waits until group `group` has committed everything in `topic`.
pub fn wait_caught_up(group: &str, topic: &str, instances: &mut [&mut Instance]) {
    wait_caught_up_on(&bootstrap(), group, topic, instances)
}

/// [`wait_caught_up`] on the cluster at `bootstrap`.
pub fn wait_caught_up_on(
    bootstrap: &str,
    group: &str,
    topic: &str,
    instances: &mut [&mut Instance],
) {
    let end = end_total_on(bootstrap, topic);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = committed_total_on(bootstrap, group, topic);
        if done >= end {
            eprintln!("group {group} caught up: committed {done} of {end}");
            return;
        }
        for i in instances.iter_mut() {
            i.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "group {group} committed {done} of {end}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every profile in the stores at `dirs`; where several hold one customer (a
/// partition that moved), the one that has seen the most events is the latest.
pub fn all_profiles(dirs: &[&Path]) -> std::collections::BTreeMap<String, rapport_model::Profile> {
    let mut out: std::collections::BTreeMap<String, rapport_model::Profile> = Default::default();
    for dir in dirs {
        let cfg = rapport::config::StateConfig {
            path: dir.to_path_buf(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        };
        let store = StateStore::open(&cfg).unwrap();
        for p in store.partitions().unwrap() {
            for (id, s) in store.profiles(p).unwrap() {
                match out.get(&id) {
                    Some(old) if old.events >= s.profile.events => {}
                    _ => {
                        out.insert(id, s.profile);
                    }
                }
            }
        }
    }
    out
}

/// The profiles in group `group`'s changelog (of `partitions` partitions), restored
/// into a fresh store as an instance taking over every partition would.
pub fn changelog_profiles(
    bootstrap: &str,
    group: &str,
    partitions: i32,
) -> std::collections::BTreeMap<String, rapport_model::Profile> {
    let restored = tempfile::tempdir().unwrap();
    {
        let cfg = rapport::config::StateConfig {
            path: restored.path().to_owned(),
            ..Default::default()
        };
        let store = StateStore::open(&cfg).unwrap();
        let mut restorer = rapport::runtime::Restorer::new(&rapport::config::KafkaConfig {
            bootstrap_servers: bootstrap.to_owned(),
            group_id: unique("verify"),
            ..Default::default()
        })
        .unwrap();
        for p in 0..partitions {
            rapport::runtime::restore_partition(
                &mut restorer,
                &format!("{group}-profiles-changelog"),
                &store,
                p,
            )
            .unwrap();
        }
        store.flush().unwrap();
    }
    all_profiles(&[restored.path()])
}

/// Asserts that `got` holds exactly the actions of `clean`: every id once, none
/// missing, none invented, each with the same content.
pub fn assert_same_actions(got: &[Action], clean: &[Action]) {
    let clean_by_id: HashMap<&str, &Action> =
        clean.iter().map(|a| (a.action_id.as_str(), a)).collect();
    let got_ids: std::collections::BTreeSet<&str> =
        got.iter().map(|a| a.action_id.as_str()).collect();
    assert_eq!(got.len(), got_ids.len(), "exactly once: no duplicates");
    let missing: Vec<&&Action> = clean_by_id
        .iter()
        .filter(|(id, _)| !got_ids.contains(*id))
        .map(|(_, a)| a)
        .take(3)
        .collect();
    let extra: Vec<&Action> = got
        .iter()
        .filter(|a| !clean_by_id.contains_key(a.action_id.as_str()))
        .take(3)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} actions missing, {} extra; missing e.g. {missing:?}; extra e.g. {extra:?}",
        clean_by_id.len()
            - got_ids
                .iter()
                .filter(|id| clean_by_id.contains_key(*id))
                .count(),
        got_ids
            .iter()
            .filter(|id| !clean_by_id.contains_key(*id))
            .count()
    );
    for a in got {
        assert_eq!(
            clean_by_id[a.action_id.as_str()],
            a,
            "same content as the clean run"
        );
    }
}

/// The shipped journey files, `deploy/journeys/`.
pub fn journey_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys")
}

/// Loads the shipped journeys into `cfg` with the post-delivery survey waiting
/// `wait` (e.g. "6s") instead of two hours; the copies live in `dir`.
/// Surveys are left out of quiet hours here: a test on wall-clock time would
/// otherwise see its survey deferred to the morning whenever it runs in the
/// evening (21:00-08:00 in the policy's default zone).
pub fn with_survey_wait(cfg: &mut Config, dir: &Path, wait: &str) {
    with_edited_journeys(cfg, dir, |text| {
        let quiet = "purposes = [\"marketing\", \"survey\"]\nchannels = [\"email\"";
        assert!(
            !text.contains("[policy.quiet_hours]") || text.contains(quiet),
            "the policy's quiet hours changed; update with_survey_wait"
        );
        text.replace("for = \"2h\"", &format!("for = \"{wait}\""))
            .replace(quiet, "purposes = [\"marketing\"]\nchannels = [\"email\"")
    });
}

/// Loads the shipped journeys and policy into `cfg` with the marketing cap at
/// `max` per 7 days instead of 3; the copies live in `dir`.
pub fn with_marketing_cap(cfg: &mut Config, dir: &Path, max: u32) {
    with_edited_journeys(cfg, dir, |text| {
        text.replace(
            "purpose = \"marketing\"\nmax = 3\n",
            &format!("purpose = \"marketing\"\nmax = {max}\n"),
        )
    });
}

/// Loads copies of the shipped journey files, each passed through `edit`, from `dir`.
fn with_edited_journeys(cfg: &mut Config, dir: &Path, edit: impl Fn(String) -> String) {
    for entry in std::fs::read_dir(journey_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = edit(std::fs::read_to_string(&path).unwrap());
            std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
        }
    }
    cfg.journeys = vec![format!("{}/*.toml", dir.display())];
    cfg.compile_journeys(dir).unwrap_or_else(|e| panic!("{e}"));
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Instance `name` of group `group`, its state in `dir/name`; it notices a dead
/// member within seconds, not the default 45 s.
pub fn group_member(topics: &Topics, dir: &Path, group: &str, name: &str) -> Config {
    let mut cfg = topics.config(&dir.join(name), group);
    cfg.engine.instance_id = name.into();
    cfg.kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    cfg.kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "1000".into());
    cfg
}

/// `rapport validate --config path`.
pub fn validate(path: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// A broker of its own (deploy/kafka.sh on other ports), so stopping and
/// restarting it does not disturb the tests on the suite's broker; stopped
/// when dropped. Each test that uses one picks ports no other test uses.
pub struct OwnBroker {
    port: u16,
}

impl OwnBroker {
    /// Starts the broker on `port` (controller on `port + 1`) from empty
    /// storage; returns it with its bootstrap address. `None`, with a note,
    /// when RAPPORT_KAFKA_BOOTSTRAP names an external cluster: the test is
    /// skipped.
    ///
    /// Empty, because the topics of every earlier run on the machine would
    /// otherwise stay in its storage, and a restart in the test loads them all
    /// before its coordinators answer: with 1589 partitions (18 GB) left by
    /// earlier runs, the test's reader of the group's offsets timed out for a
    /// minute after a restart.
    pub fn start(port: u16) -> Option<(OwnBroker, String)> {
        if std::env::var("RAPPORT_KAFKA_BOOTSTRAP").is_ok_and(|b| !b.is_empty()) {
            eprintln!("skipped: this test stops a local broker of its own, and RAPPORT_KAFKA_BOOTSTRAP names an external cluster");
            return None;
        }
        let b = OwnBroker { port };
        b.kafka_sh("reset");
        let bootstrap = b.kafka_sh("start");
        Some((b, bootstrap))
    }

    /// Runs `deploy/kafka.sh cmd` for this broker; its stdout.
    pub fn kafka_sh(&self, cmd: &str) -> String {
        let out = std::process::Command::new("bash")
            .arg(rapport::broker::script())
            .arg(cmd)
            .env("RAPPORT_KAFKA_PORT", self.port.to_string())
            .env("RAPPORT_KAFKA_CONTROLLER_PORT", (self.port + 1).to_string())
            .env_remove("RAPPORT_KAFKA_BOOTSTRAP")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kafka.sh {cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kafka_sh("stop");
    }
}

/// Waits until group `group` has consumed every record of `input` and of its
/// identity repartition topic (link requests, transfers and forwarded
/// touchpoints, which processing itself keeps adding), so that every merge has
/// arrived and every held touchpoint is applied. The repartition topic is
/// written in transactions, whose markers take offsets no consumer commits:
/// it counts as consumed when the group's offset is past its last committed
/// record in every partition.
pub fn wait_stitched(bootstrap: &str, group: &str, input: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stitched(bootstrap, group, input) {
        assert!(
            Instant::now() < deadline,
            "group {group} did not finish {input} and its repartition topic"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether group `group` has consumed every record of `input` and of its
/// identity repartition topic (see [`wait_stitched`]).
pub fn stitched(bootstrap: &str, group: &str, input: &str) -> bool {
    let repartition = format!("{group}-identity-repartition");
    let input_end = end_total_on(bootstrap, input);
    // The group's offsets first, then the topic: a record committed after this
    // snapshot came with offsets the snapshot does not have yet, so it cannot
    // be missed (what a consumed record produced is committed with its offset).
    let input_done = committed_total_on(bootstrap, group, input) >= input_end;
    let committed = committed_on(bootstrap, group, &repartition);
    if !input_done {
        return false;
    }
    let mut last: HashMap<i32, i64> = HashMap::new();
    for m in drain_on(bootstrap, &repartition) {
        let e = last.entry(m.partition()).or_default();
        *e = (*e).max(m.offset() + 1);
    }
    last.iter()
        .all(|(p, end)| committed.get(*p as usize).is_some_and(|c| c >= end))
}
