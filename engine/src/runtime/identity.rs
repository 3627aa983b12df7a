//! Carrying the identity stage's output to Kafka: link requests, transfers and
//! forwarded touchpoints to the repartition topic (each to the partition that
//! owns its id), and merges, conflicts and refused links to the identity-events
//! topic, in the current interval (see [`crate::identity`]).

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::TopicPartitionList;

use crate::config::Config;

use super::core::Core;
use super::rebalance::EngineContext;
use super::LoopError;

/// The topics of identity stitching.
pub(crate) struct IdentityTopics {
    /// The internal repartition topic.
    pub repartition: String,
    /// The identity-events topic; empty when off.
    pub events: String,
    /// Partitions whose repartition records wait until their touchpoints have
    /// caught up: `(partition, [(touchpoint topic, end offset at the start)])`.
    pub catching_up: Vec<(i32, Vec<(String, i64)>)>,
}

impl IdentityTopics {
    /// The topics `cfg` names, when stitching is on.
    pub fn of(cfg: &Config) -> Option<Self> {
        cfg.identity.stitching.then(|| IdentityTopics {
            repartition: cfg.identity.repartition(&cfg.kafka.group_id),
            events: cfg.identity.events_topic.clone(),
            catching_up: Vec::new(),
        })
    }
}

impl Core {
    /// A partition starting here (after a restore, a restart, a rebalance) may
    /// have a backlog of touchpoints, and link requests for its anonymous ids
    /// behind it that were made after them: the request must find the history
    /// those touchpoints build, as it would have without the interruption. So
    /// the partition's repartition records wait until its touchpoint topics
    /// have been applied up to their end as of now. Returns what to resume now.
    pub(super) fn hold_identity_messages(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        p: i32,
        tpl: TopicPartitionList,
        from: &TopicPartitionList,
    ) -> anyhow::Result<TopicPartitionList> {
        let Some(topics) = &mut self.identity else {
            return Ok(tpl);
        };
        let mut targets = Vec::new();
        for topic in &self.cfg.kafka.touchpoint_topics {
            let (_, end) = consumer
                .fetch_watermarks(topic, p, super::restart::KAFKA_READ)
                .with_context(|| format!("reading the end of {topic} [{p}]"))?;
            let start = match from.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                Some(rdkafka::Offset::End) => end,
                _ => 0,
            };
            if start < end {
                targets.push((topic.clone(), end));
            }
        }
        topics.catching_up.retain(|(q, _)| *q != p);
        if targets.is_empty() {
            return Ok(tpl);
        }
        tracing::debug!(
            partition = p,
            "identity messages wait for the touchpoint backlog"
        );
        topics.catching_up.push((p, targets));
        let mut now = TopicPartitionList::new();
        for e in tpl.elements() {
            if e.topic() != topics.repartition {
                now.add_partition(e.topic(), e.partition());
            }
        }
        Ok(now)
    }

    /// Resumes the repartition records of partitions whose touchpoints have
    /// caught up (see [`Core::hold_identity_messages`]).
    pub(super) fn release_identity_messages(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        let Some(topics) = &mut self.identity else {
            return Ok(());
        };
        if topics.catching_up.is_empty() {
            return Ok(());
        }
        let processor = &self.processor;
        // The next offset the application reads, per owned partition.
        let positions = consumer
            .position()
            .map_err(|e| LoopError::Rewind(format!("reading the consumer's positions: {e}")))?;
        let mut resume = TopicPartitionList::new();
        topics.catching_up.retain(|(p, targets)| {
            let owned = processor.partitions().any(|q| q == *p);
            let caught_up = targets.iter().all(|(topic, end)| {
                let at = positions.find_partition(topic, *p).map(|e| e.offset());
                matches!(at, Some(rdkafka::Offset::Offset(o)) if o >= *end)
            });
            if owned && caught_up {
                resume.add_partition(&topics.repartition, *p);
            }
            owned && !caught_up
        });
        if resume.count() > 0 {
            self.resume_or_hold(consumer, &resume)
                .map_err(|e| LoopError::Rewind(format!("resuming the repartition topic: {e}")))?;
        }
        Ok(())
    }

    /// Sends the identity messages and events the processor made since the last call.
    pub(super) fn emit_identity(&mut self) -> Result<(), LoopError> {
        let Some(topics) = &self.identity else {
            return Ok(());
        };
        for o in self.processor.take_outbox() {
            let body = o.message.encode();
            self.committer.send(
                BaseRecord::to(&topics.repartition)
                    .partition(o.partition)
                    .key(o.key.as_bytes())
                    .payload(body.as_slice()),
            )?;
        }
        for e in self.processor.take_identity_events() {
            if topics.events.is_empty() {
                continue;
            }
            let body = serde_json::to_vec(&e).map_err(|e| LoopError::Fatal(e.into()))?;
            self.committer.send(
                BaseRecord::to(&topics.events)
                    .key(e.customer_id.as_bytes())
                    .payload(body.as_slice()),
            )?;
        }
        Ok(())
    }
}
