//! The engine's core: the owned partitions' tasks, the interval's pending offsets,
//! and the three things done to them besides processing records: commit, restore
//! (a newly assigned partition) and rewind (drop everything uncommitted and go back
//! to the last commit, after a commit failed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rapport_model::Action;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::processor::Processor;
use crate::state::{StateBatch, StateStore};

use super::commit::{Abort, Committer, Interval};
use super::order::ActionOrder;
use super::rebalance::{partitions_of, EngineContext};
use super::restart::{lock_owned, KafkaWait};
use super::restore::Restorer;
use super::{LoopError, Progress};

/// A commit slower than this is logged: Kafka was slow or away while it ran.
const SLOW_COMMIT: Duration = Duration::from_secs(2);

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

/// Everything but the consumer: the processor, the committer, pending offsets.
pub(crate) struct Core {
    pub(super) cfg: Config,
    pub(super) changelog: String,
    pub(super) processor: Processor,
    pub(super) committer: Committer,
    pub(super) restorer: Restorer,
    /// Bytes a dead letter's value, key and headers may take together.
    pub(super) dead_letter_room: usize,
    pub(super) state: Arc<StateStore>,
    pub(super) metrics: Metrics,
    pub(super) progress: Arc<Progress>,
    /// Partitions assigned and not restored yet.
    pub(super) to_restore: BTreeSet<i32>,
    /// Of those, the ones a rewind takes back from this instance's own RocksDB
    /// state instead of the changelog (see `CommitProtocol::rewinds_from_local_state`).
    pub(super) from_local: BTreeSet<i32>,
    /// Partitions whose state is ready, waiting to be moved to their committed
    /// offsets and resumed, with the changelog records their restore applied.
    pub(super) to_start: BTreeMap<i32, u64>,
    /// Restarts waiting on a Kafka that does not answer.
    pub(super) kafka_wait: KafkaWait,
    /// The partitions paused while a commit is in flight and the changed
    /// profiles fill the profile cache (see `hold`).
    pub(super) held: Option<TopicPartitionList>,
    /// Set by a rebalance callback whose commit failed: the main loop answers it.
    pub(super) failure: Option<LoopError>,
    pub(super) pending: PendingOffsets,
    pub(super) pending_records: u64,
    pub(super) actions: Vec<Action>,
    /// Per-customer action order across the alternating producers.
    pub(super) order: ActionOrder,
    /// Intervals committed so far.
    pub(super) commits: u64,
    /// Timestamp of the current interval's oldest record, epoch ms.
    pub(super) oldest_ms: Option<i64>,
    /// Whether the group has given this instance an assignment (maybe empty).
    pub(super) assigned: bool,
    /// Writer schemas of Confluent-framed touchpoints, fetched before a batch
    /// is processed; `None` without a schema registry.
    pub(super) writer_schemas: Option<Arc<crate::ingest::registry::WriterSchemas>>,
    /// How actions are written to the action topic.
    pub(super) action_format: super::encode::Encoding,
    /// How decisions are written to the decisions topic.
    pub(super) decision_format: super::encode::Encoding,
    /// Erasure receipts; `None` with erasure off.
    pub(super) receipts: Option<super::erasure::Receipts>,
    /// The identity stitching topics; `None` with stitching off.
    pub(super) identity: Option<super::identity::IdentityTopics>,
    /// When a part of the open interval's changelog was last written ahead
    /// of its commit ([`Core::write_ahead`]).
    pub(super) written_ahead: Option<Instant>,
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
        let waited = Instant::now();
        self.finish_in_flight(consumer)?;
        self.metrics.phase_done("wait", waited);
        if self.pending.0.is_empty() && !self.processor.has_changes() && !self.committer.is_open() {
            return Ok(());
        }
        let started = Instant::now();
        let mut batch = StateBatch::default();
        // Tombstones first: a profile started afresh after an erasure follows them.
        let erasures = self.write_erasures(&mut batch)?;
        // The changed profiles as they are now; the commit thread encodes them.
        let cut = self.processor.cut();
        self.metrics.changed_profile_bytes.set(0);
        self.metrics.phase_done("prepare", started);
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
            offsets,
            records,
            started,
            oldest_ms: self.oldest_ms.take(),
            erasures,
            cut: cut.commit(),
            written: StateBatch::default(),
        };
        self.committer.start(interval, batch, cut, meta)?;
        self.order.interval_committing();
        if matches!(mode, CommitMode::Sync) {
            self.finish_in_flight(consumer)?;
        }
        Ok(())
    }

    /// Starts the commit that is due: the interval is up, or the changed
    /// profiles fill the profile cache (early). Only one commit runs at a
    /// time: a due one starts once the one in flight has ended instead of
    /// stopping the loop until it does (the interval grows by the wait).
    pub(super) fn commit_when_due(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        interval: Duration,
        last_commit: &mut Instant,
    ) -> Result<(), LoopError> {
        let up = last_commit.elapsed() >= interval;
        let early = !up && self.processor.changes_fill_cache();
        if !(up || early) || self.committer.committing() {
            return Ok(());
        }
        if early {
            self.metrics.early_commits.inc();
        }
        self.fire_idle_timers()?;
        self.touch_stalled_changelogs()?;
        self.commit(consumer, CommitMode::Async)?;
        *last_commit = Instant::now();
        Ok(())
    }

    /// Writes the interval's changes so far to the changelog ahead of its
    /// commit ([`Committer::write_ahead`]) when the engine has caught up with
    /// its input (`step` calls this then), the commit thread is idle and a
    /// quarter of `interval` has passed since the interval began or its last
    /// part was written. The commit that ends the interval then encodes and
    /// waits for a quarter of its changes, not all of them. Under
    /// exactly-once that wait is part of every action's latency (an action is
    /// readable once its transaction commits); under both guarantees, part of
    /// the latency of an action held for its customer's earlier one
    /// ([`ActionOrder`](super::order)). Under load the engine is never caught
    /// up, and each changed profile is encoded once per commit, as before.
    pub(super) fn write_ahead(
        &mut self,
        interval: Duration,
        last_commit: Instant,
    ) -> Result<(), LoopError> {
        let since = self
            .written_ahead
            .filter(|&t| t > last_commit)
            .unwrap_or(last_commit);
        if since.elapsed() < interval / 4
            || last_commit.elapsed() >= interval
            || self.committer.committing()
            || !self.processor.has_changes()
        {
            return Ok(());
        }
        let cut = self.processor.cut_ahead();
        self.committer.write_ahead(cut)?;
        self.written_ahead = Some(Instant::now());
        Ok(())
    }

    /// In live mode, partitions that received nothing this interval fire their due
    /// timers on wall-clock time, so a quiet partition is not stuck.
    pub(super) fn fire_idle_timers(&mut self) -> Result<(), LoopError> {
        if !self.cfg.engine.wall_clock_timers {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        self.processor
            .fire_idle(now, &mut self.actions)
            .map_err(|e| LoopError::Fatal(e.into()))?;
        self.emit_actions()
    }

    /// Finishes the background commit if it has ended, without waiting: its
    /// state goes to RocksDB. The actions held for it go out as soon as its
    /// records are acknowledged, not at the end of the current interval. A
    /// commit stuck in a call into the Kafka client fails the interval.
    pub(super) fn finish_ended(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.committer.in_flight_ended() {
            return self.finish_in_flight(consumer);
        }
        if let Some(why) = self.committer.stuck() {
            return Err(LoopError::Rewind(why));
        }
        if self.committer.in_flight_delivered() {
            self.release_held()?;
        }
        Ok(())
    }

    /// Sends the actions held for the customers of the interval committing,
    /// whose records are acknowledged ([`ActionOrder`](super::order)).
    fn release_held(&mut self) -> Result<(), LoopError> {
        for a in self.order.delivered() {
            self.send_action(&a)?;
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
            self.release_held()?;
        }
        self.send_receipts()
    }

    fn write_committed(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        mut done: Interval,
    ) -> anyhow::Result<()> {
        let erasures = std::mem::take(&mut done.erasures);
        self.finish_erasures(erasures);
        self.committer
            .protocol()
            .after_state(consumer, &done.offsets);
        self.commits += 1;
        let ending = Instant::now();
        let written = std::mem::take(&mut done.written);
        self.processor.committed(done.cut, written);
        let cached = self.processor.trim_cache();
        self.metrics.phase_done("end", ending);
        self.publish_memory(&cached);
        self.metrics.commits.inc();
        let took = done.started.elapsed();
        self.metrics.commit_seconds.observe(took.as_secs_f64());
        if took >= SLOW_COMMIT {
            tracing::warn!(
                seconds = took.as_secs_f64(),
                "commit took long: Kafka was slow or away, and the commit waited for it"
            );
        }
        if let Some(oldest) = done.oldest_ms {
            let now = chrono::Utc::now().timestamp_millis();
            self.metrics
                .commit_latency_seconds
                .observe((now - oldest).max(0) as f64 / 1000.0);
        }
        // Last: whoever watches the progress sees the commit's bookkeeping
        // (the trimmed cache and its metrics) done.
        self.progress
            .committed
            .fetch_add(done.records, Ordering::SeqCst);
        Ok(())
    }

    /// After a commit: what RocksDB, the profile caches and the waits hold,
    /// and where the profiles asked for since the last commit were found.
    fn publish_memory(&self, cached: &crate::processor::CacheUsage) {
        let usage = self.state.usage();
        for (kind, bytes) in [
            ("block_cache", usage.block_cache_bytes),
            ("memtables", usage.memtable_bytes),
            ("pending_compaction", usage.pending_compaction_bytes),
        ] {
            self.metrics
                .state_bytes
                .with_label_values(&[kind])
                .set(bytes as i64);
        }
        self.metrics.cached_profiles.set(cached.profiles as i64);
        self.metrics.profile_cache_bytes.set(cached.bytes as i64);
        self.metrics
            .encoded_profiles
            .set(cached.encoded_profiles as i64);
        self.metrics
            .encoded_cache_bytes
            .set(cached.encoded_bytes as i64);
        self.metrics.pending_waits.set(cached.waits as i64);
        let l = cached.lookups;
        for (found, n) in [
            ("decoded", l.decoded),
            ("encoded", l.encoded),
            ("rocksdb", l.rocksdb),
            ("new", l.new),
        ] {
            self.metrics
                .profile_lookups
                .with_label_values(&[found])
                .inc_by(n);
        }
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
            lock_owned(&self.progress).remove(p);
            self.processor.release(*p);
            self.forget_restart(*p);
            if let Err(e) = self.restorer.cancel(&self.state, *p) {
                self.failure = Some(LoopError::Fatal(e));
            }
            // Its restore, if any, is the next owner's now.
            let _ = self
                .metrics
                .restore_remaining
                .remove_label_values(&[&p.to_string()]);
        }
        self.publish_readiness();
    }

    /// Drops everything not committed and goes back to the last commit, one
    /// step of `abort` at a time (each waits on Kafka for at most a second, so
    /// the main loop serves its consumer in between): aborts the open
    /// intervals, then forgets the tasks' uncommitted changes and pauses every
    /// owned partition until the main loop has restored it from the changelog
    /// and moved the consumer back to its committed offsets. What was dropped
    /// is processed again, as after a crash, without one. True once done.
    pub(super) fn rewind_step(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        abort: &mut Abort,
    ) -> anyhow::Result<bool> {
        self.progress.ready.store(false, Ordering::SeqCst);
        self.metrics.ready.set(0);
        if !self.committer.abort_step(abort)? {
            return Ok(false);
        }
        if let Some(done) = abort.committed.take() {
            self.write_committed(consumer, done)?;
        }
        self.failure = None;
        let kept: BTreeSet<i32> = match self.committer.protocol().rewinds_from_local_state() {
            true => self.processor.partitions().collect(),
            false => BTreeSet::new(),
        };
        self.processor.clear();
        lock_owned(&self.progress).clear();
        self.restorer.cancel_all(&self.state)?;
        self.pending.0.clear();
        self.pending_records = 0;
        self.oldest_ms = None;
        self.actions.clear();
        self.order.clear();
        let assignment = consumer.assignment().context("reading the assignment")?;
        consumer
            .pause(&assignment)
            .context("pausing the partitions")?;
        self.to_restore = partitions_of(&assignment).into_iter().collect();
        self.from_local = kept.intersection(&self.to_restore).copied().collect();
        self.to_start.clear();
        self.kafka_wait = KafkaWait::default();
        // Every partition is paused above; each resumes once restarted.
        self.held = None;
        Ok(true)
    }
}
