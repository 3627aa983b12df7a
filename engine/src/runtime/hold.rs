//! Holding the input while a commit is in flight and the profiles changed
//! since it fill the profile cache.
//!
//! Changed profiles stay in memory until they are committed, and only one
//! commit runs at a time: with one in flight, taking more records would grow
//! them with whatever the consumer fetched ahead. The main loop waits a second
//! for the commit in flight (most end sooner); when it is held up longer (a
//! slow or absent broker), the engine pauses the partitions it is consuming
//! (librdkafka drops what it fetched ahead for them, and fetches it again
//! after the resume) and goes on polling its
//! consumer (rebalance callbacks, statistics and errors are served, and the
//! commit in flight is finished as soon as it ends), and resumes them once
//! the next commit has taken the changes. A partition started meanwhile joins
//! the held ones instead of resuming.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

use super::core::Core;
use super::rebalance::EngineContext;
use super::LoopError;

/// How long the loop waits for a commit in flight when the changed profiles
/// fill the profile cache, before it holds its input and goes on polling.
const HOLD_AFTER: Duration = Duration::from_secs(1);

impl Core {
    /// With the changed profiles filling the profile cache: finishes the
    /// commit in flight if it ends within [`HOLD_AFTER`] (the next commit
    /// then takes the changes), or holds the input until it has.
    pub(super) fn make_room(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.committer.wait_in_flight(HOLD_AFTER) {
            self.finish_in_flight(consumer)
        } else {
            self.hold_input(consumer)
        }
    }

    /// Pauses the partitions being consumed, if they are not held already.
    fn hold_input(&mut self, consumer: &BaseConsumer<EngineContext>) -> Result<(), LoopError> {
        if self.held.is_some() {
            return Ok(());
        }
        let active = self.consuming();
        consumer
            .pause(&active)
            .map_err(|e| LoopError::Rewind(format!("pausing the input for a commit: {e}")))?;
        self.metrics.input_holds.inc();
        self.held = Some(active);
        Ok(())
    }

    /// Resumes the held partitions once the changes no longer fill the
    /// profile cache (the next commit took them); those revoked meanwhile
    /// stay as they are.
    pub(super) fn release_input(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.held.is_none() || self.processor.changes_fill_cache() {
            return Ok(());
        }
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let assigned = consumer
            .assignment()
            .map_err(|e| LoopError::Rewind(format!("reading the assignment: {e}")))?;
        let mut resume = TopicPartitionList::new();
        for e in held.elements() {
            if assigned.find_partition(e.topic(), e.partition()).is_some() {
                resume.add_partition(e.topic(), e.partition());
            }
        }
        consumer
            .resume(&resume)
            .map_err(|e| LoopError::Rewind(format!("resuming the input after a commit: {e}")))
    }

    /// Resumes `tpl` (a partition just started), or adds it to the held
    /// partitions while the input is held.
    pub(super) fn resume_or_hold(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        tpl: &TopicPartitionList,
    ) -> rdkafka::error::KafkaResult<()> {
        match &mut self.held {
            Some(held) => {
                for e in tpl.elements() {
                    held.add_partition(e.topic(), e.partition());
                }
                Ok(())
            }
            None => consumer.resume(tpl),
        }
    }

    /// The topic partitions being consumed: every input topic of the started
    /// partitions, but the repartition topic of those waiting for their
    /// touchpoints to catch up (see [`Core::hold_identity_messages`]).
    fn consuming(&self) -> TopicPartitionList {
        let topics = super::erasure::input_topics(&self.cfg);
        let mut tpl = TopicPartitionList::new();
        for p in self.processor.partitions() {
            for topic in &topics {
                let waiting = self.identity.as_ref().is_some_and(|i| {
                    *topic == i.repartition && i.catching_up.iter().any(|(q, _)| *q == p)
                });
                if !waiting {
                    tpl.add_partition(topic, p);
                }
            }
        }
        tpl
    }
}
