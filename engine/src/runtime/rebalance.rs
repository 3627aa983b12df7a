//! The consumer's rebalance callbacks. They stay short: a revocation commits what
//! is pending (so the partitions leave with their work committed) and releases the
//! partitions; an assignment pauses the new partitions and queues them: the main
//! loop restores them, slice by slice between polls, and resumes each once its
//! state is restored.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::core::Core;

/// The consumer's context, sharing the engine's core with the main loop.
pub(crate) struct EngineContext {
    pub(super) core: Arc<Mutex<Core>>,
}

impl ClientContext for EngineContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each
    /// owned partition, from its last stable offset and the consumer's position.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let core = lock(&self.core);
        for (name, topic) in &statistics.topics {
            if !core.cfg.kafka.touchpoint_topics.contains(name) {
                continue;
            }
            for (p, s) in &topic.partitions {
                if *p < 0 || !s.desired || s.ls_offset < 0 || s.app_offset < 0 {
                    continue;
                }
                core.metrics
                    .lag
                    .with_label_values(&[name.as_str(), &p.to_string()])
                    .set((s.ls_offset - s.app_offset).max(0));
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            let lost = consumer.assignment_lost();
            tracing::info!(
                ?partitions,
                lost,
                "partitions revoked: committing and releasing"
            );
            lock(&self.core).revoke(consumer, &partitions, lost);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned: paused until restored");
                // Nothing of a new partition is processed before its state is
                // restored; the main loop resumes it then.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "pausing newly assigned partitions");
                }
                lock(&self.core).queue_restore(&partitions);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// The distinct partition numbers of `tpl`.
pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let set: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    set.into_iter().collect()
}

/// Locks the core, also after a panic elsewhere (the engine stops then anyway).
pub(super) fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}
