//! Bringing partitions into processing: after an assignment or a rewind, each
//! owned partition is restored (from the changelog, or taken as it is in local
//! state), then moved to the group's committed offsets and resumed.
//!
//! Every step that asks Kafka something (the end of a changelog partition, the
//! committed offsets, the ends of the touchpoint topics) waits at most
//! [`KAFKA_READ`]. When Kafka does not answer, the partition stays queued and
//! the main loop tries again after [`RETRY_AFTER`], polling its consumer in
//! between, so a broker or group coordinator that is away does not stop the
//! loop for tens of seconds (its group session, statistics and rebalances are
//! served meanwhile). Only when Kafka has not answered for the engine's
//! patience (`engine.kafka_unavailable_timeout_ms`) does the engine give up.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::core::Core;
use super::rebalance::EngineContext;
use super::{LoopError, Progress};

/// How long one Kafka read of a restart may wait for an answer.
pub(super) const KAFKA_READ: Duration = Duration::from_secs(2);

/// How long after a Kafka read went unanswered the restart tries again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// How long a restore may make no progress before its changelog partition is
/// touched (see [`super::TOUCH_KEY`]).
const STALLED_AFTER: Duration = Duration::from_secs(5);

/// How long one restore slice may take before the main loop polls the group again.
const RESTORE_SLICE: Duration = Duration::from_millis(100);

/// Restarts waiting on a Kafka that does not answer: since when, and when to
/// try again.
#[derive(Debug, Default)]
pub(super) struct KafkaWait {
    since: Option<Instant>,
    next: Option<Instant>,
}

impl KafkaWait {
    /// Whether a restart may ask Kafka again at `now`.
    fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|next| now >= next)
    }

    /// Notes that Kafka did not answer `e` at `now`: the restart is tried
    /// again after [`RETRY_AFTER`], unless Kafka has not answered for
    /// `patience`, which is fatal.
    fn failed(
        &mut self,
        now: Instant,
        patience: Duration,
        e: anyhow::Error,
    ) -> Result<(), LoopError> {
        let since = *self.since.get_or_insert_with(|| {
            tracing::warn!(error = %format!("{e:#}"), "restarting partitions waits for Kafka; retrying between polls");
            now
        });
        if now.saturating_duration_since(since) >= patience {
            return Err(LoopError::Fatal(e.context(format!(
                "Kafka has not answered the partitions' restart for {} s; check that the cluster is reachable, or raise engine.kafka_unavailable_timeout_ms",
                now.saturating_duration_since(since).as_secs()
            ))));
        }
        self.next = Some(now + RETRY_AFTER);
        Ok(())
    }

    /// Notes that Kafka answered.
    fn answered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                seconds = since.elapsed().as_secs_f64(),
                "Kafka answers again: restarting partitions"
            );
        }
        self.next = None;
    }
}

/// Whether `e` is Kafka not answering (or answering with an error), which a
/// restart retries, rather than a failure of local state.
fn from_kafka(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<KafkaError>().is_some())
}

impl Core {
    /// Newly assigned partitions (paused by the callback), restored by the main
    /// loop before their records.
    pub(super) fn queue_restore(&mut self, partitions: &[i32]) {
        self.assigned = true;
        self.to_restore.extend(partitions);
    }

    /// Forgets the restart of `p` (revoked), wherever it stands.
    pub(super) fn forget_restart(&mut self, p: i32) {
        self.to_restore.remove(&p);
        self.from_local.remove(&p);
        self.to_start.remove(&p);
    }

    /// Begins the restores of the queued partitions (a partition whose local
    /// state is already current goes straight to starting), and starts the
    /// partitions whose state is ready.
    pub(super) fn start_restores(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.to_restore.is_empty() && self.to_start.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if !self.kafka_wait.due(now) {
            return Ok(());
        }
        while let Some(&p) = self.to_restore.first() {
            if self.from_local.remove(&p) {
                self.to_restore.remove(&p);
                self.to_start.insert(p, 0);
                continue;
            }
            match self.restorer.begin(&self.changelog, &self.state, p) {
                Ok(true) => {
                    tracing::info!(partition = p, "restoring partition from the changelog")
                }
                Ok(false) => {
                    self.to_start.insert(p, 0);
                }
                Err(e) if from_kafka(&e) => return self.kafka_wait.failed(now, self.patience(), e),
                Err(e) => return Err(rewind(e)),
            }
            self.to_restore.remove(&p);
            self.kafka_wait.answered();
        }
        self.start_ready(consumer, now)?;
        self.publish_readiness();
        Ok(())
    }

    /// One slice of the restores in progress; partitions whose restore completes
    /// start their tasks and resume consuming.
    pub(super) fn restore_slice(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
    ) -> Result<(), LoopError> {
        if self.restorer.is_idle() {
            return Ok(());
        }
        let done = self
            .restorer
            .step(&self.state, RESTORE_SLICE)
            .with_context(|| format!("restoring from {}", self.changelog))
            .map_err(rewind)?;
        self.metrics.restored.inc_by(self.restorer.take_applied());
        self.to_start.extend(done);
        let now = Instant::now();
        if self.kafka_wait.due(now) {
            self.start_ready(consumer, now)?;
        }
        self.publish_readiness();
        Ok(())
    }

    /// Starts the partitions whose state is ready, in order, until Kafka does
    /// not answer for one (it is tried again later).
    fn start_ready(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        now: Instant,
    ) -> Result<(), LoopError> {
        while let Some((&p, &restored)) = self.to_start.first_key_value() {
            match self.start_task(consumer, p, restored) {
                Ok(()) => {
                    self.to_start.remove(&p);
                    self.kafka_wait.answered();
                }
                Err(e) if from_kafka(&e) => return self.kafka_wait.failed(now, self.patience(), e),
                Err(e) => return Err(rewind(e)),
            }
        }
        Ok(())
    }

    /// Writes a touch (see [`super::TOUCH_KEY`]) to the changelog partition
    /// of every stalled restore, in the interval about to be committed: each
    /// producer's next commit then ends any transaction of its own left open
    /// there.
    pub(super) fn touch_stalled_changelogs(&mut self) -> Result<(), LoopError> {
        for (p, first) in self.restorer.stalled(STALLED_AFTER) {
            if first {
                tracing::warn!(
                    partition = p,
                    "the changelog restore makes no progress: a transaction may be left open on the partition; writing to it so that the next commits end it"
                );
            }
            self.committer.send(
                BaseRecord::<[u8], [u8]>::to(&self.changelog)
                    .partition(p)
                    .key(super::TOUCH_KEY),
            )?;
        }
        Ok(())
    }

    /// How long Kafka may fail before the engine gives up.
    fn patience(&self) -> Duration {
        Duration::from_millis(self.cfg.engine.kafka_unavailable_timeout_ms)
    }

    /// Says where restores stand (metrics, `/readyz`), and whether the engine is
    /// ready: in the group, with every owned partition restored and consuming.
    pub(super) fn publish_readiness(&self) {
        let status = self.restorer.status();
        for s in &status {
            self.metrics
                .restore_remaining
                .with_label_values(&[&s.partition.to_string()])
                .set(s.remaining);
        }
        let ready = self.assigned
            && self.to_restore.is_empty()
            && self.to_start.is_empty()
            && status.is_empty();
        *self
            .progress
            .restoring
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = status;
        self.progress.ready.store(ready, Ordering::SeqCst);
        self.metrics.ready.set(i64::from(ready));
    }

    /// Moves the consumer to partition `p`'s committed offsets, starts its
    /// task on its restored state and resumes it. Kafka is asked first, so a
    /// read that goes unanswered leaves nothing half started.
    fn start_task(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        p: i32,
        restored: u64,
    ) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for topic in &super::erasure::input_topics(&self.cfg) {
            tpl.add_partition(topic, p);
        }
        let from = seek_to_committed(consumer, tpl.clone(), self.cfg.kafka.starts_at_end())?;
        let resume = self.hold_identity_messages(consumer, p, tpl, &from)?;
        self.metrics
            .restore_remaining
            .with_label_values(&[&p.to_string()])
            .set(0);
        let timers = self.processor.start_partition(p)?;
        self.resume_or_hold(consumer, &resume)
            .context("resuming the partition")?;
        lock_owned(&self.progress).insert(p);
        tracing::info!(partition = p, restored, timers, "partition ready");
        Ok(())
    }
}

/// The partitions restored and consuming, as the profile API sees them.
pub(super) fn lock_owned(progress: &Progress) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
    progress.owned.lock().unwrap_or_else(|p| p.into_inner())
}

/// A failure the engine answers by going back to its last commit.
fn rewind(e: anyhow::Error) -> LoopError {
    LoopError::Rewind(format!("{e:#}"))
}

/// Moves the consumer to the group's committed offsets of `partitions` (where
/// nothing was committed yet, to the beginning, or the end with `at_end`); records
/// fetched past them are discarded by the client.
/// Returns the offsets sought.
fn seek_to_committed(
    consumer: &BaseConsumer<EngineContext>,
    partitions: TopicPartitionList,
    at_end: bool,
) -> anyhow::Result<TopicPartitionList> {
    let committed = consumer
        .committed_offsets(partitions, KAFKA_READ)
        .context("reading the committed offsets")?;
    let mut to = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ if at_end => Offset::End,
            _ => Offset::Beginning,
        };
        to.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    let result = consumer
        .seek_partitions(to.clone(), KAFKA_READ)
        .context("seeking to the committed offsets")?;
    for e in result.elements() {
        if let Err(err) = e.error() {
            return Err(err).with_context(|| {
                format!(
                    "seeking {} [{}] to the committed offset",
                    e.topic(),
                    e.partition()
                )
            });
        }
    }
    Ok(to)
}
