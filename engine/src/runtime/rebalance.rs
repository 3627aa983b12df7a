//! The consumer's rebalance callbacks. They stay short: a revocation commits what
//! is pending (so the partitions leave with their work committed) and releases the
//! partitions; an assignment pauses the new partitions and queues them: the main
//! loop restores them, slice by slice between polls, and resumes each once its
//! state is restored.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

use super::core::Core;
use crate::kafka::requests::Requests;

/// The consumer's context, sharing the engine's core with the main loop.
pub(crate) struct EngineContext {
    pub(super) core: Arc<Mutex<Core>>,
    /// How long the consumer has been out of a settled group membership.
    pub(super) group: Mutex<GroupWatch>,
    /// The consumer has been replaced (see `renew`): its last callbacks, as
    /// it closes, leave the core alone.
    retired: AtomicBool,
    /// The consumer's requests to the brokers, from its statistics.
    requests: Requests,
}

impl EngineContext {
    pub(super) fn new(core: Arc<Mutex<Core>>) -> Self {
        let requests = Requests::new(&lock(&core).metrics, "consumer");
        EngineContext {
            requests,
            core,
            group: Mutex::new(GroupWatch::default()),
            retired: AtomicBool::new(false),
        }
    }

    /// Cuts this context's consumer off from the core: it has been replaced.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The group membership as librdkafka's statistics report it: the
    /// metrics, and a warning when the consumer has been out of a settled
    /// membership for long (it processes nothing meanwhile).
    fn group_stats(&self, core: &Core, g: &rdkafka::statistics::ConsumerGroup) {
        let settled = g.state == "up" && g.join_state == "steady";
        let now_ms = chrono::Utc::now().timestamp_millis();
        core.progress.group_settled(settled, now_ms);
        core.metrics.group_member.set(i64::from(settled));
        core.metrics.group_partitions.set(g.assignment_size.into());
        let out = self
            .group
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(settled, Instant::now());
        if let Some(out) = out {
            tracing::warn!(
                seconds = out.as_secs(),
                state = %g.state,
                join_state = %g.join_state,
                last_rebalance = %g.rebalance_reason,
                "not a settled member of the consumer group for a while: no partition is processed meanwhile; check the group's coordinator (kafka-consumer-groups.sh --describe --group {}) and the broker's log",
                core.cfg.kafka.group_id
            );
        }
    }
}

/// Tracks how long the consumer has been out of a settled group membership,
/// from one statistics report to the next.
#[derive(Debug, Default)]
pub(super) struct GroupWatch {
    unsettled_since: Option<Instant>,
    warned_at: Option<Instant>,
}

/// How long the consumer may be out of a settled membership before the
/// engine warns: longer than a rebalance with a restore takes to settle
/// (librdkafka's join and sync, a session timeout of 45 s for a member that
/// left without a word).
const UNSETTLED_WARNING: Duration = Duration::from_secs(60);

impl GroupWatch {
    /// Records one report at `now`; returns how long the consumer has been
    /// out of a settled membership when that is past [`UNSETTLED_WARNING`]
    /// and no warning was given in the last [`UNSETTLED_WARNING`].
    pub(super) fn observe(&mut self, settled: bool, now: Instant) -> Option<Duration> {
        if settled {
            *self = GroupWatch::default();
            return None;
        }
        let out = now.saturating_duration_since(*self.unsettled_since.get_or_insert(now));
        let warned_lately = self
            .warned_at
            .is_some_and(|w| now.saturating_duration_since(w) < UNSETTLED_WARNING);
        if out < UNSETTLED_WARNING || warned_lately {
            return None;
        }
        self.warned_at = Some(now);
        Some(out)
    }
}

impl ClientContext for EngineContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the lag of each
    /// owned partition, from its last stable offset and the consumer's
    /// position, the group membership, and the requests it sent.
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.requests.observe(&statistics);
        if self.retired() {
            return;
        }
        let core = lock(&self.core);
        if let Some(g) = &statistics.cgrp {
            self.group_stats(&core, g);
        }
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
        if self.retired() {
            return;
        }
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
        if self.retired() {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned: paused until restored");
                // Nothing of a new partition is processed before its state is
                // restored; the main loop resumes it then.
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "pausing newly assigned partitions");
                }
                let mut core = lock(&self.core);
                core.queue_restore(&partitions);
                // An assignment is membership, whatever the last statistics
                // said: time out of the group counts afresh from here.
                let now_ms = chrono::Utc::now().timestamp_millis();
                core.progress.group_settled(true, now_ms);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch warns once the consumer has been unsettled for a minute, then
    /// at most once a minute, and starts afresh once it is settled again.
    #[test]
    fn the_group_watch_warns_after_a_minute_out_and_once_a_minute_after() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = GroupWatch::default();
        assert_eq!(w.observe(true, at(0)), None);
        assert_eq!(w.observe(false, at(5)), None);
        assert_eq!(w.observe(false, at(60)), None, "55 s out");
        assert_eq!(w.observe(false, at(65)), Some(Duration::from_secs(60)));
        assert_eq!(w.observe(false, at(70)), None, "warned 5 s ago");
        assert_eq!(w.observe(false, at(124)), None, "warned 59 s ago");
        assert_eq!(w.observe(false, at(125)), Some(Duration::from_secs(120)));
        // Settled again: a later spell out is counted from its own start.
        assert_eq!(w.observe(true, at(130)), None);
        assert_eq!(w.observe(false, at(135)), None);
        assert_eq!(w.observe(false, at(190)), None, "55 s out");
        assert_eq!(w.observe(false, at(195)), Some(Duration::from_secs(60)));
    }
}
