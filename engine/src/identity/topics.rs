//! The identity topics: the internal repartition topic, co-partitioned with the
//! touchpoint topics and consumed by the engine's group, and the
//! identity-events topic; created when missing.

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::config::KafkaConfig;
use crate::kafka::{client_config, create_topics, TopicSpec};

use super::IdentityConfig;

/// Checks or creates the identity topics for input topics of `partitions` partitions.
pub async fn prepare(
    k: &KafkaConfig,
    identity: &IdentityConfig,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(k).create()?;
    let md = admin
        .inner()
        // All topics: asking for one by name may auto-create it with the broker's defaults.
        .fetch_metadata(None, std::time::Duration::from_secs(30))
        .context("fetching the identity topics' metadata")?;
    let count = |name: &str| {
        md.topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0)
    };
    let repartition = identity.repartition(&k.group_id);
    if let Some(n) = count(&repartition).filter(|n| *n != partitions) {
        anyhow::bail!(
            "identity repartition topic {repartition:?} has {n} partitions but the touchpoint topics have {partitions}; \
             its records must reach the partition that owns each customer, so delete it (Rapport recreates it) or give it {partitions} partitions"
        );
    }
    let mut specs = Vec::new();
    if count(&repartition).is_none() {
        specs.push(TopicSpec::new(&repartition, partitions));
    }
    if !identity.events_topic.is_empty() && count(&identity.events_topic).is_none() {
        specs.push(TopicSpec::new(&identity.events_topic, partitions));
    }
    for s in &mut specs {
        s.replication = k.replication_factor;
    }
    create_topics(client_config(k), &specs).await
}
