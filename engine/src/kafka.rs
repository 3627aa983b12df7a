//! Kafka edges: client configuration, topic administration, dead-letter headers.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;

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

/// Consumer settings: manual commits, read_committed, cooperative rebalancing.
pub fn consumer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "20000");
    for (key, v) in &k.consumer {
        c.set(key, v);
    }
    c
}

/// Producer settings: idempotent, batched, compressed.
pub fn producer_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000");
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
}

/// Creates the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(bootstrap: &str, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            let mut n = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1));
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
