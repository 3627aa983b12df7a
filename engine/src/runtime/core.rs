//! The engine's core: the owned partitions' tasks, the interval's pending offsets,
//! and the three things done to them besides processing records: commit, restore
//! (a newly assigned partition) and rewind (drop everything uncommitted and go back
//! to the last commit, after a commit failed).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rapport_model::{Action, Journeys};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::ingest::route::KeyRule;
use crate::ingest::Decoder;
use crate::metrics::Metrics;
use crate::state::{StateBatch, StateStore};

use super::commit::{Committer, Interval};
use super::rebalance::{partitions_of, EngineContext};
use super::restore::{restore_partition, Restorer};
use super::task::{timer_times, Task};
use super::{LoopError, Progress, WATERMARK_KEY};

/// Offsets consumed in the current interval, `(partition, topic) -> next`, looked
/// up without allocating a topic name per record.
#[derive(Default)]
pub(super) struct PendingOffsets(Vec<((i32, String), i64)>);

impl PendingOffsets {
    /// Notes that `topic`'s `partition` is consumed up to (excluding) `next`.
    pub fn record(&mut self, partition: i32, topic: &str, next: i64) {
        match self
            .0
            .iter_mut()
            .find(|((p, t), _)| *p == partition && t == topic)
        {
            Some((_, n)) => *n = next,
            None => self.0.push(((partition, topic.to_owned()), next)),
        }
    }
}

/// Everything but the consumer: tasks, committer, pending offsets.
pub(crate) struct Core {
    pub(super) cfg: Config,
    pub(super) changelog: String,
    pub(super) committer: Committer,
    pub(super) restorer: Restorer,
    pub(super) decoder: Decoder,
    pub(super) rule: KeyRule,
    /// Bytes a dead letter's value, key and headers may take together.
    pub(super) dead_letter_room: usize,
    pub(super) journeys: Journeys,
    pub(super) state: Arc<StateStore>,
    pub(super) metrics: Metrics,
    pub(super) progress: Arc<Progress>,
    pub(super) tasks: HashMap<i32, Task>,
    /// Partitions assigned and not restored yet.
    pub(super) to_restore: BTreeSet<i32>,
    /// Set by a rebalance callback whose commit failed: the main loop answers it.
    pub(super) failure: Option<LoopError>,
    /// Per-topic event counters, resolved once.
    pub(super) event_counters: Vec<(String, prometheus::IntCounter)>,
    pub(super) pending: PendingOffsets,
    pub(super) pending_records: u64,
    pub(super) actions: Vec<Action>,
    /// Intervals committed so far.
    pub(super) commits: u64,
}

impl Core {
    /// Makes the interval's effects durable: the changelog records of the changed
    /// profiles and the consumed offsets go to Kafka (committed in the background,
    /// or before returning with `CommitMode::Sync`), then to RocksDB.
    pub(super) fn commit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        mode: CommitMode,
    ) -> Result<(), LoopError> {
        if let Some(f) = self.failure.take() {
            return Err(f);
        }
        // One commit in flight at a time, finished in order.
        self.finish_in_flight(consumer)?;
        let dirty = self
            .tasks
            .values()
            .any(|t| !t.dirty.is_empty() || t.watermark_dirty);
        if self.pending.0.is_empty() && !dirty {
            return Ok(());
        }
        let started = Instant::now();
        let mut batch = StateBatch::default();
        self.write_changelog(&mut batch)?;
        let mut offsets = TopicPartitionList::new();
        for ((partition, topic), next) in self.pending.0.drain(..) {
            offsets
                .add_partition_offset(&topic, partition, Offset::Offset(next))
                .map_err(|e| LoopError::Fatal(e.into()))?;
            batch.set_offset(partition, &topic, next);
        }
        let meta = match self.committer.protocol().wants_group_metadata() && offsets.count() > 0 {
            true => Some(consumer.group_metadata().ok_or_else(|| {
                LoopError::Rewind("the consumer has no group metadata (not in the group)".into())
            })?),
            false => None,
        };
        let records = std::mem::take(&mut self.pending_records);
        let interval = Interval {
            batch,
            offsets,
            records,
            started,
        };
        self.committer.start(interval, meta)?;
        if matches!(mode, CommitMode::Sync) {
            self.finish_in_flight(consumer)?;
        }
        Ok(())
    }

    /// Sends each changed profile (one record per profile, not per event) and each
    /// moved watermark to the changelog, and adds them to `batch`.
    fn write_changelog(&mut self, batch: &mut StateBatch) -> Result<(), LoopError> {
        for task in self.tasks.values_mut() {
            let p = task.partition;
            for id in std::mem::take(&mut task.dirty) {
                let Some(slot) = task.profiles.get_mut(&id) else {
                    continue;
                };
                let bytes = slot.stored.encode();
                self.committer.send(
                    BaseRecord::to(&self.changelog)
                        .partition(p)
                        .key(id.as_bytes())
                        .payload(bytes.as_slice()),
                )?;
                batch.put_profile(p, &id, &bytes);
                let now = timer_times(&slot.stored.profile);
                for t in slot.persisted_timers.iter().filter(|t| !now.contains(t)) {
                    batch.delete_timer(p, *t, &id);
                }
                for t in now.iter().filter(|t| !slot.persisted_timers.contains(t)) {
                    batch.put_timer(p, *t, &id);
                }
                slot.dirty = false;
                slot.persisted_timers = now;
            }
            if task.watermark_dirty {
                task.watermark_dirty = false;
                let bytes = task.watermark.to_be_bytes();
                self.committer.send(
                    BaseRecord::to(&self.changelog)
                        .partition(p)
                        .key(WATERMARK_KEY)
                        .payload(&bytes[..]),
                )?;
                batch.set_watermark(p, task.watermark);
            }
        }
        Ok(())
    }

    /// Waits for the background commit and, once Kafka committed it, writes its
    /// state to RocksDB.
    pub(super) fn finish_in_flight(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if let Some(done) = self.committer.finish()? {
            self.write_committed(consumer, done)?;
        }
        Ok(())
    }

    fn write_committed(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        done: Interval,
    ) -> anyhow::Result<()> {
        self.state.write(done.batch).context("writing state")?;
        self.committer
            .protocol()
            .after_state(consumer, &done.offsets);
        self.commits += 1;
        self.progress
            .committed
            .fetch_add(done.records, Ordering::SeqCst);
        let cached: usize = self.tasks.values().map(|t| t.profiles.len()).sum();
        if cached > self.cfg.state.profile_cache {
            // Only clean profiles may leave: their latest version is now in RocksDB.
            for t in self.tasks.values_mut() {
                t.profiles.retain(|_, s| s.dirty);
            }
        }
        let cached: usize = self.tasks.values().map(|t| t.profiles.len()).sum();
        self.metrics.cached_profiles.set(cached as i64);
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(done.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Revoked partitions: commit what is pending, then release them. When the
    /// assignment was lost, or the commit fails, nothing is committed and the main
    /// loop rewinds the partitions that remain.
    pub(super) fn revoke(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        partitions: &[i32],
        lost: bool,
    ) {
        if lost {
            self.failure.get_or_insert(LoopError::Rewind(
                "the group considered this instance gone and moved its partitions".into(),
            ));
        } else if self.failure.is_none() {
            if let Err(e) = self.commit(consumer, CommitMode::Sync) {
                self.failure = Some(e);
            }
        }
        for p in partitions {
            self.tasks.remove(p);
            self.to_restore.remove(p);
        }
    }

    /// Newly assigned partitions, restored by the main loop before their records.
    pub(super) fn queue_restore(&mut self, partitions: &[i32]) {
        self.to_restore.extend(partitions);
    }

    /// Restores the queued partitions from the changelog and starts their tasks.
    /// Commits first: a restore may wait for a dead instance's transaction to time
    /// out, and this instance's own transaction must not time out meanwhile.
    pub(super) fn restore_queued(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.to_restore.is_empty() {
            return Ok(());
        }
        self.commit(consumer, CommitMode::Sync)?;
        while let Some(p) = self.to_restore.pop_first() {
            if let Err(e) = self.start_task(p) {
                self.to_restore.insert(p);
                return Err(LoopError::Rewind(format!("{e:#}")));
            }
        }
        self.progress.ready.store(true, Ordering::SeqCst);
        self.metrics.ready.set(1);
        Ok(())
    }

    /// Restores partition `p` from the changelog and starts its task.
    fn start_task(&mut self, p: i32) -> anyhow::Result<()> {
        let restored = restore_partition(&self.restorer, &self.changelog, &self.state, p)
            .with_context(|| format!("restoring partition {p} from {}", self.changelog))?;
        self.metrics.restored.inc_by(restored);
        let task = Task::load(&self.state, p)?;
        tracing::info!(
            partition = p,
            restored,
            timers = task.timers.len(),
            "partition ready"
        );
        self.tasks.insert(p, task);
        Ok(())
    }

    /// Drops everything not committed and goes back to the last commit: aborts the
    /// open intervals, forgets the tasks' uncommitted changes, restores every owned
    /// partition from the changelog and moves the consumer back to the committed
    /// offsets. What was dropped is processed again, as after a crash, without one.
    pub(super) fn rewind(&mut self, consumer: &BaseConsumer<EngineContext>) -> anyhow::Result<()> {
        self.progress.ready.store(false, Ordering::SeqCst);
        self.metrics.ready.set(0);
        if let Some(done) = self.committer.abort()? {
            self.write_committed(consumer, done)?;
        }
        self.failure = None;
        self.tasks.clear();
        self.to_restore.clear();
        self.pending.0.clear();
        self.pending_records = 0;
        self.actions.clear();
        let assignment = consumer.assignment().context("reading the assignment")?;
        for p in partitions_of(&assignment) {
            self.start_task(p)?;
        }
        seek_to_committed(consumer)?;
        self.progress.ready.store(true, Ordering::SeqCst);
        self.metrics.ready.set(1);
        Ok(())
    }
}

/// Moves the consumer back to the group's committed offset of every assigned
/// partition (the beginning where nothing was committed yet); records fetched past
/// it are discarded by the client.
fn seek_to_committed(consumer: &BaseConsumer<EngineContext>) -> anyhow::Result<()> {
    let committed = consumer
        .committed(Duration::from_secs(30))
        .context("reading the committed offsets")?;
    let mut to = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        to.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    if to.count() == 0 {
        return Ok(());
    }
    let result = consumer
        .seek_partitions(to, Duration::from_secs(30))
        .context("seeking to the committed offsets")?;
    for e in result.elements() {
        if let Err(err) = e.error() {
            anyhow::bail!(
                "seeking {} [{}] to the committed offset: {err}",
                e.topic(),
                e.partition()
            );
        }
    }
    Ok(())
}
