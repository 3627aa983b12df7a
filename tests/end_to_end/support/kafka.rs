//! The broker and its topics: unique names, producing, reading topics to their
//! end, committed and end offsets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rapport::config::Config;
use rapport::kafka::{ensure_topics, TopicSpec};
use rapport_model::{Action, Touchpoint};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::journeys::journey_dir;

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

/// The partition ids of `topic`, in order; none when there is no such topic.
/// A broker restarted a moment ago, or a topic created a moment ago, may
/// answer with an error for it (no leader yet), or not at all: ask again for
/// a while, as [`watermarks`] does.
fn partition_ids(c: &BaseConsumer, topic: &str) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| e.to_string())
            .and_then(|md| {
                let t = md.topics().first().ok_or("no topic in the answer")?;
                match t.error() {
                    // No such topic (yet): no partitions, as callers that
                    // wait for a topic to appear expect.
                    Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {
                        return Ok(Vec::new())
                    }
                    Some(e) => return Err(format!("{e:?}")),
                    None => {}
                }
                let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
                ids.sort();
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
