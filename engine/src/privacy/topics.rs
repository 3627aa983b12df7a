//! The privacy topics: the request topic, co-partitioned with the touchpoint
//! topics, and the results topic, created when missing; and the retention facts
//! receipts report (read from the broker at start-up).

use anyhow::Context as _;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

use crate::config::KafkaConfig;
use crate::kafka::{client_config, create_topics, topic_config, TopicSpec};

use super::receipt::Retention;
use super::PrivacyConfig;

/// Checks or creates the privacy topics for input topics of `partitions`
/// partitions, and reads the retention of the changelog and the input topics.
pub async fn prepare(
    k: &KafkaConfig,
    privacy: &PrivacyConfig,
    partitions: i32,
) -> anyhow::Result<Retention> {
    let admin: AdminClient<DefaultClientContext> = client_config(k).create()?;
    let md = admin
        .inner()
        // All topics: asking for one by name may auto-create it with the broker's defaults.
        .fetch_metadata(None, std::time::Duration::from_secs(30))
        .context("fetching the privacy topic's metadata")?;
    let existing = md
        .topics()
        .iter()
        .find(|t| t.name() == privacy.topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0);
    if let Some(n) = existing.filter(|n| *n != partitions) {
        anyhow::bail!(
            "privacy topic {:?} has {n} partitions but the touchpoint topics have {partitions}; \
             erasure requests must reach the partition that owns the customer, so give it {partitions} partitions",
            privacy.topic
        );
    }
    let mut specs = vec![TopicSpec::new(&privacy.results(), partitions)];
    if existing.is_none() {
        specs.push(TopicSpec::new(&privacy.topic, partitions));
    }
    for s in &mut specs {
        s.replication = k.replication_factor;
    }
    create_topics(client_config(k), &specs).await?;
    retention(&admin, k, privacy).await
}

/// The changelog's compaction lag and the retention of each input topic and of
/// each output topic that may name the customer.
async fn retention(
    admin: &AdminClient<DefaultClientContext>,
    k: &KafkaConfig,
    privacy: &PrivacyConfig,
) -> anyhow::Result<Retention> {
    let changelog = k.changelog();
    let lag = topic_config(admin, &changelog, "max.compaction.lag.ms").await?;
    let mut inputs = Vec::new();
    for t in k.touchpoint_topics.iter().chain([&privacy.topic]) {
        let r = topic_config(admin, t, "retention.ms").await?;
        inputs.push((t.clone(), bounded(r)));
    }
    let mut outputs = Vec::new();
    let outs = [&k.action_topic, &k.decisions_topic, &k.dead_letter_topic];
    for t in outs.into_iter().filter(|t| !t.is_empty()) {
        let r = topic_config(admin, t, "retention.ms").await?;
        outputs.push((t.clone(), bounded(r)));
    }
    Ok(Retention {
        changelog: (changelog, bounded(lag)),
        inputs,
        outputs,
    })
}

/// A duration config in ms; `None` for "forever" (-1, or Long.MAX_VALUE).
fn bounded(v: Option<String>) -> Option<i64> {
    v?.parse::<i64>()
        .ok()
        .filter(|ms| (0..1_000_000_000_000_000).contains(ms))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unbounded_durations_are_none() {
        use super::bounded;
        assert_eq!(bounded(Some("604800000".into())), Some(604_800_000));
        assert_eq!(bounded(Some("-1".into())), None);
        assert_eq!(bounded(Some(i64::MAX.to_string())), None);
        assert_eq!(bounded(None), None);
    }
}
