//! Kafka edges: client configuration, topic administration, dead-letter headers.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::metadata::Metadata;

use anyhow::Context;

use crate::config::KafkaConfig;

pub mod requests;

/// Header naming the topic a dead-lettered record came from.
pub const DLQ_TOPIC: &str = "rapport.dlq.topic";
/// Header naming its partition.
pub const DLQ_PARTITION: &str = "rapport.dlq.partition";
/// Header naming its offset.
pub const DLQ_OFFSET: &str = "rapport.dlq.offset";
/// Header naming the stage that refused it (`decode`, `validate`).
pub const DLQ_STAGE: &str = "rapport.dlq.stage";
/// Header with the reason, for a person.
pub const DLQ_REASON: &str = "rapport.dlq.reason";
/// Header carrying an action's id, so consumers can de-duplicate without parsing.
pub const ACTION_ID: &str = "rapport.action_id";

/// Header with a dead-lettered record's size before any truncation, bytes.
pub const DLQ_ORIGINAL_SIZE: &str = "rapport.dlq.original_size";
/// Header with the SHA-256 (hex) of a dead-lettered record's original value.
pub const DLQ_SHA256: &str = "rapport.dlq.sha256";
/// Header present (`true`) when a dead letter carries only the start of the value,
/// because the whole value is over the dead-letter topic's size limit.
pub const DLQ_TRUNCATED: &str = "rapport.dlq.truncated";

/// The settings every Kafka client of the engine shares: the bootstrap servers and
/// the `[kafka.client]` section (security and connection settings). Consumers,
/// producers, the changelog restorer and admin clients all start from this, so a
/// secured cluster is reachable by each of them.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers);
    for (key, v) in &k.client {
        c.set(key, v);
    }
    c
}

/// librdkafka's own bookkeeping per prefetched record (its fetch op and
/// message header, about 120 bytes measured), which comes on top of the
/// record's bytes.
pub const PREFETCH_RECORD_OVERHEAD: usize = 128;

/// How `kafka.prefetch_mb` is spent: librdkafka fetches again while the
/// consumer's queue holds less than an eighth of it in records (by bytes, and
/// by count at [`PREFETCH_RECORD_OVERHEAD`] each), and a fetch brings at most a
/// thirty-second of it, compressed. A fetch lands whole on top of the queue,
/// decompressed (JSON touchpoints compress about 6x with lz4), into buffers
/// librdkafka sizes up to twice what they hold and frees only once every record
/// in them is consumed: measured, the prefetch then takes about three quarters
/// of the budget (heaptrack, `cargo bench ... -- scale`).
const PREFETCH_QUEUE_SHARE: usize = 8;
/// See [`PREFETCH_QUEUE_SHARE`].
const PREFETCH_FETCH_SHARE: usize = 32;

/// Consumer settings: manual commits, read_committed, cooperative rebalancing, and
/// deep prefetching (the engine processes faster than one fetch per partition
/// round trip delivers with librdkafka's smaller defaults).
///
/// The prefetch is bounded by `kafka.prefetch_mb`, whatever the number of
/// partitions: every partition's fetch queue is forwarded to the consumer's one
/// queue, which librdkafka's limits (`queued.max.messages.kbytes`,
/// `queued.min.messages`) are checked against, and the size of one fetch
/// (`fetch.max.bytes`, `max.partition.fetch.bytes`) is bounded too, since a
/// fetch is added whole once the queue is below those limits.
///
/// One partition may fill a whole fetch (`max.partition.fetch.bytes` equal to
/// `fetch.max.bytes`), so the engine works through a backlog in long runs of
/// one partition at a time: a run's customers are the partition's, and the
/// profile cache holds more of them. Measured on 1M touchpoints of 100k
/// customers (`cargo bench ... -- guarantees`), a 2 MiB fetch of one
/// partition instead of 1 MiB of each of two found 550k-575k profiles
/// decoded in the cache instead of 360k-373k, looked up 11k-15k in RocksDB
/// instead of 38k-40k, and moved `exactly_once` from 100k to 119k-124k events/s.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let budget = k.prefetch_mb.max(1) << 20;
    let queue = budget / PREFETCH_QUEUE_SHARE;
    // librdkafka refuses a fetch.max.bytes below message.max.bytes (1000000).
    let fetch = (budget / PREFETCH_FETCH_SHARE).clamp(1 << 20, 50 << 20);
    let mut c = client_config(k);
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Keep a deep local queue so processing never waits for a fetch round
        // trip, bounded in bytes (kafka.prefetch_mb).
        .set(
            "queued.min.messages",
            (queue / PREFETCH_RECORD_OVERHEAD).max(1000).to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            (queue / 1024).max(1024).to_string(),
        )
        // When the queue is full, look again soon: librdkafka's default waits
        // a second, which stalls a bounded queue the engine drains faster than
        // that (and adds up to a second of latency).
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.max.bytes", fetch.to_string())
        .set("max.partition.fetch.bytes", fetch.to_string())
        // Per-partition positions and end offsets for rapport_consumer_lag_records,
        // and the requests sent for rapport_kafka_requests_total.
        .set("statistics.interval.ms", requests::STATISTICS_INTERVAL_MS);
    for (key, v) in &k.consumer {
        c.set(key, v);
    }
    c
}

/// Producer settings: idempotent, batched, compressed.
pub fn producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(k);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .set(
            "queue.buffering.max.kbytes",
            (k.producer_buffer_mb.max(1) * 1024).to_string(),
        );
    for (key, v) in &k.producer {
        c.set(key, v);
    }
    c
}

/// A topic to create when missing.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic configs, e.g. `cleanup.policy=compact`.
    pub configs: Vec<(String, String)>,
    /// Replication factor; -1 for the broker's default.
    pub replication: i32,
}

impl TopicSpec {
    /// A topic with the broker's default replication and no special configs.
    pub fn new(name: &str, partitions: i32) -> Self {
        TopicSpec {
            name: name.to_owned(),
            partitions,
            configs: Vec::new(),
            replication: -1,
        }
    }
}

/// What the engine learns about its topics before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLayout {
    /// Partition count of the (co-partitioned) touchpoint topics.
    pub partitions: i32,
    /// The largest record the dead-letter topic accepts (`max.message.bytes`).
    pub dead_letter_max_bytes: usize,
}

/// Room for a dead letter's key, headers and batch framing next to its value.
pub const RECORD_OVERHEAD: usize = 64 * 1024;

/// The broker's default `max.message.bytes`, used when a topic does not say.
const BROKER_DEFAULT_MAX_MESSAGE_BYTES: usize = 1_048_588;

/// Checks the topics the engine reads and writes, before it starts: the touchpoint
/// topics exist and are co-partitioned; the changelog is compacted with the same
/// partition count; missing output topics and changelog are created, the
/// dead-letter topic large enough for a whole `max_record_bytes` record.
pub async fn prepare_topics(
    k: &KafkaConfig,
    max_record_bytes: usize,
    max_compaction_lag_ms: u64,
) -> anyhow::Result<TopicLayout> {
    let admin: AdminClient<DefaultClientContext> = client_config(k).create()?;
    let md = metadata_with(&admin, &k.touchpoint_topics).await?;
    let partitions = input_partitions(&md, &k.touchpoint_topics)?;
    let changelog = k.changelog();
    if partitions_of(&md, &changelog).is_some() {
        check_changelog(&admin, &md, &changelog, partitions).await?;
    }
    let create = missing_topics(&md, k, partitions, max_record_bytes, max_compaction_lag_ms);
    create_topics(client_config(k), &create).await?;
    let dead_letter_max_bytes = topic_config(&admin, &k.dead_letter_topic, "max.message.bytes")
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(BROKER_DEFAULT_MAX_MESSAGE_BYTES);
    Ok(TopicLayout {
        partitions,
        dead_letter_max_bytes,
    })
}

/// The cluster's metadata once it lists every one of `topics` with its
/// partitions, or after about five seconds of asking: a topic created a moment
/// ago may not be in every broker's metadata yet.
async fn metadata_with(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[String],
) -> anyhow::Result<Metadata> {
    let timeout = Duration::from_secs(30);
    let fetch = || {
        admin
            .inner()
            .fetch_metadata(None, timeout)
            .context("fetching cluster metadata")
    };
    let mut md = fetch()?;
    for _ in 0..20 {
        let known = |name: &String| {
            md.topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
        };
        if topics.iter().all(known) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        md = fetch()?;
    }
    Ok(md)
}

/// The partition count of `name` in `md`; `None` when the topic is not there.
fn partitions_of(md: &Metadata, name: &str) -> Option<i32> {
    md.topics()
        .iter()
        .find(|t| t.name() == name && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
}

/// The touchpoint topics' one partition count: each must exist, and all must
/// have the same count (a customer's records meet in one partition task).
fn input_partitions(md: &Metadata, topics: &[String]) -> anyhow::Result<i32> {
    let mut counts = Vec::new();
    for t in topics {
        match partitions_of(md, t) {
            Some(n) if n > 0 => counts.push((t.as_str(), n)),
            _ => anyhow::bail!("touchpoint topic {t:?} does not exist; create it (keyed by customer id) before starting Rapport"),
        }
    }
    let Some(&(first, partitions)) = counts.first() else {
        anyhow::bail!(
            "no touchpoint topics are configured; name at least one in kafka.touchpoint_topics"
        );
    };
    if let Some((t, n)) = counts.iter().find(|(_, n)| *n != partitions) {
        anyhow::bail!(
            "touchpoint topics are not co-partitioned: {first:?} has {partitions} partitions but {t:?} has {n}; give every touchpoint topic the same partition count"
        );
    }
    Ok(partitions)
}

/// Refuses an existing changelog that is not partitioned like the input or
/// not compacted.
async fn check_changelog(
    admin: &AdminClient<DefaultClientContext>,
    md: &Metadata,
    changelog: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    if let Some(n) = partitions_of(md, changelog).filter(|n| *n != partitions) {
        anyhow::bail!(
            "changelog topic {changelog:?} has {n} partitions but the touchpoint topics have {partitions}; \
             state is partitioned like the input, so recreate the changelog with {partitions} partitions"
        );
    }
    let policy = topic_config(admin, changelog, "cleanup.policy")
        .await?
        .unwrap_or_default();
    if !policy.contains("compact") {
        anyhow::bail!("changelog topic {changelog:?} has cleanup.policy={policy}; it must be compacted (cleanup.policy=compact)");
    }
    Ok(())
}

/// The topics to create, partitioned like the input: the changelog
/// (compacted, with erased values bounded in age by `max_compaction_lag_ms`)
/// and the action, dead-letter and decisions topics, whichever are missing.
/// The dead-letter topic takes a whole `max_record_bytes` record.
fn missing_topics(
    md: &Metadata,
    k: &KafkaConfig,
    partitions: i32,
    max_record_bytes: usize,
    max_compaction_lag_ms: u64,
) -> Vec<TopicSpec> {
    let mut create = Vec::new();
    let changelog = k.changelog();
    if partitions_of(md, &changelog).is_none() {
        let mut spec = TopicSpec::new(&changelog, partitions);
        spec.replication = k.replication_factor;
        spec.configs
            .push(("cleanup.policy".into(), "compact".into()));
        // Bounds how long an erased profile's old values survive compaction.
        spec.configs.push((
            "max.compaction.lag.ms".into(),
            max_compaction_lag_ms.to_string(),
        ));
        create.push(spec);
    }
    let decisions = Some(&k.decisions_topic).filter(|t| !t.is_empty());
    for out in [&k.action_topic, &k.dead_letter_topic]
        .into_iter()
        .chain(decisions)
    {
        if partitions_of(md, out).is_none() {
            let mut spec = TopicSpec::new(out, partitions);
            spec.replication = k.replication_factor;
            if out == &k.dead_letter_topic {
                let max =
                    (max_record_bytes + RECORD_OVERHEAD).max(BROKER_DEFAULT_MAX_MESSAGE_BYTES);
                spec.configs
                    .push(("max.message.bytes".into(), max.to_string()));
            }
            create.push(spec);
        }
    }
    create
}

/// The effective value of one config of `topic` (its own setting or the broker's default).
pub(crate) async fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &opts)
        .await
        .with_context(|| format!("describing topic {topic}"))?;
    Ok(described
        .into_iter()
        .flatten()
        .flat_map(|r| r.entries)
        .find(|e| e.name == name)
        .and_then(|e| e.value))
}

/// Creates the topics that do not exist yet on the cluster at `bootstrap`.
pub async fn ensure_topics(bootstrap: &str, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    create_topics(c, topics).await
}

/// Creates the topics that do not exist yet with an admin client made from
/// `client`; existing ones are left as they are.
pub async fn create_topics(client: ClientConfig, topics: &[TopicSpec]) -> anyhow::Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(t.replication),
            );
            for (k, v) in &t.configs {
                n = n.set(k, v);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// The partition count of `topic` as `client` sees it, 0 when it does not
/// exist. A topic created a moment ago may not be in the cluster's metadata
/// yet, or have no leader yet: it is asked about again for up to fifteen seconds
/// before it counts as missing.
pub fn topic_partitions<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> rdkafka::error::KafkaResult<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let md = client.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let partitions = md
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions > 0 || std::time::Instant::now() >= deadline {
            return Ok(partitions);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(c: &ClientConfig, key: &str) -> usize {
        c.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} set to a number"))
    }

    #[test]
    fn one_partition_may_fill_a_fetch_and_a_fetch_stays_a_share_of_the_prefetch() {
        for mb in [1, 16, 64, 512, 4096] {
            let k = KafkaConfig {
                prefetch_mb: mb,
                ..KafkaConfig::default()
            };
            let c = consumer_config(&k);
            let fetch = setting(&c, "fetch.max.bytes");
            assert_eq!(
                setting(&c, "max.partition.fetch.bytes"),
                fetch,
                "prefetch_mb {mb}"
            );
            // A thirty-second of the budget, within librdkafka's own bounds.
            let share = (mb << 20) / PREFETCH_FETCH_SHARE;
            assert_eq!(fetch, share.clamp(1 << 20, 50 << 20), "prefetch_mb {mb}");
        }
    }
}
