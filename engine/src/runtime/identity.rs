//! Carrying the identity stage's output to Kafka: link requests, transfers and
//! forwarded touchpoints to the repartition topic (each to the partition that
//! owns its id), and merges, conflicts and refused links to the identity-events
//! topic, in the current interval (see [`crate::identity`]).

use rdkafka::producer::BaseRecord;

use crate::config::Config;

use super::core::Core;
use super::LoopError;

/// The topics of identity stitching.
pub(crate) struct IdentityTopics {
    /// The internal repartition topic.
    pub repartition: String,
    /// The identity-events topic; empty when off.
    pub events: String,
}

impl IdentityTopics {
    /// The topics `cfg` names, when stitching is on.
    pub fn of(cfg: &Config) -> Option<Self> {
        cfg.identity.stitching.then(|| IdentityTopics {
            repartition: cfg.identity.repartition(&cfg.kafka.group_id),
            events: cfg.identity.events_topic.clone(),
        })
    }
}

impl Core {
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
