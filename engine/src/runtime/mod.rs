//! The processing loop: consume in batches, update profiles, evaluate journeys and
//! timers, produce actions, and commit actions, state and offsets together at each
//! commit interval.
//!
//! Records are handled in batches: the processor works on a batch's partitions
//! in parallel (`engine.worker_threads`), each partition's records in order on
//! one thread, then the records' effects go out in the batch's order.
//!
//! One task per assigned input partition ([`task`]): its profiles, timers and
//! offsets are scoped to the partition in RocksDB and in the compacted changelog
//! topic, which has the input's partition count. A partition that arrives (at start
//! or in a rebalance) is restored from the changelog by the main loop before its
//! records are processed ([`restore`]); one that leaves is committed first
//! ([`rebalance`]).
//!
//! Commits ([`commit`]), per guarantee:
//! - `exactly_once`: actions, dead letters and changelog records are produced in a
//!   Kafka transaction that also carries the consumed offsets (with the group's
//!   metadata); RocksDB is written only after the transaction commits. A crash at
//!   any instant leaves RocksDB at or behind the committed changelog, and the next
//!   assignment restores the difference.
//! - `at_least_once`: the same records without a transaction; the changelog is
//!   acknowledged before offsets are committed. After a crash an action may repeat,
//!   always with the same id.
//!
//! In both, each stored profile carries the source offsets it reflects, so a
//! replayed record is never applied twice to a profile.
//!
//! A commit that fails (a rebalance moved the group to a new generation, a broker
//! restarted, a transaction was fenced) does not stop the engine: the interval is
//! aborted, every owned partition is rewound to its last commit (state restored
//! from the changelog, consumer moved back to the committed offsets) and the
//! dropped work is redone, the way Kafka Streams handles a migrated task. Only an
//! instance fenced by another with its `instance_id`, a cluster unreachable for
//! longer than `engine.kafka_unavailable_timeout_ms`, or a local failure (RocksDB)
//! stops it.

mod background;
mod commit;
mod core;
mod emit;
pub mod encode;
mod erasure;
mod hold;
mod identity;
mod order;
mod rebalance;
mod renew;
mod restart;
mod restore;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{Config, Guarantee};
use crate::ingest::route::KeyRule;
use crate::kafka::{self, consumer_config, producer_config, TopicLayout, RECORD_OVERHEAD};
use crate::metrics::Metrics;
use crate::processor::Processor;
use crate::state::StateStore;

use self::commit::{Abort, AtLeastOnce, CommitProtocol, Committer, ExactlyOnce};
use self::core::{Core, PendingOffsets};
use self::rebalance::{lock, EngineContext};
pub use self::restore::{restore_partition, RestoreStatus, Restorer};

/// Records handled together: their partitions are processed in parallel.
const BATCH_RECORDS: usize = 2048;

/// How long the loop consumes before it looks again whether a due commit can
/// start, while the previous one is still in flight.
const OVERDUE_SLICE: Duration = Duration::from_millis(5);

/// Key of the record written to a changelog partition whose restore has
/// stalled (a tombstone, skipped when restored; older versions delete a
/// profile that does not exist). After a broker restart, a transaction was
/// seen left open on a changelog partition although its coordinator had
/// completed it (a hanging transaction): its last stable offset then stays
/// below the end, and a read_committed restore waits forever. A commit
/// marker of the same producer id closes it, and the restoring engine's own
/// producers write one with the next commit that includes the partition,
/// which this record makes happen.
pub const TOUCH_KEY: &[u8] = b"\0rapport.touch";

/// Changelog key that carries a partition's event-time watermark.
pub const WATERMARK_KEY: &[u8] = b"\0rapport.watermark";

/// Live counters shared between the engine thread and its observers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records handled (applied, dead-lettered or skipped).
    pub handled: AtomicU64,
    /// Records whose effects are committed.
    pub committed: AtomicU64,
    /// True once the engine has an assignment, restored, and is consuming.
    pub ready: AtomicBool,
    /// Times the engine dropped uncommitted work and went back to its last commit.
    pub rewinds: AtomicU64,
    /// The restores in progress.
    pub restoring: Mutex<Vec<RestoreStatus>>,
    /// Partitions restored and consuming here.
    pub owned: Mutex<BTreeSet<i32>>,
    /// Since when the consumer has been out of a settled membership of its
    /// group, epoch ms, as its statistics report it; 0 while it is settled
    /// (or before the first report).
    pub out_of_group_since_ms: AtomicI64,
    /// How long it may stay out before the instance calls itself unhealthy
    /// (`engine.out_of_group_timeout_ms`); 0: no limit.
    pub out_of_group_limit_ms: AtomicU64,
    /// When the main loop last polled its consumer, epoch ms (0 before the
    /// first poll).
    pub polled_ms: AtomicI64,
}

impl Progress {
    /// Whether the instance is alive and well at `now_ms` (epoch ms), for
    /// `/healthz`: not when its consumer has been out of a settled group
    /// membership for longer than the limit. An instance that left its group
    /// and does not come back processes nothing, and nothing in it fails;
    /// restarting it joins the group afresh. The message says why.
    pub fn health(&self, now_ms: i64) -> Result<(), String> {
        let since = self.out_of_group_since_ms.load(Ordering::SeqCst);
        let limit = self.out_of_group_limit_ms.load(Ordering::SeqCst);
        let out = u64::try_from(now_ms - since).unwrap_or(0);
        if since == 0 || limit == 0 || out <= limit {
            return Ok(());
        }
        Err(format!(
            "the consumer has been out of its group for {} s, longer than engine.out_of_group_timeout_ms ({} s); a restart joins the group afresh",
            out / 1000,
            limit / 1000
        ))
    }

    /// Seconds since the main loop last polled its consumer, at `now_ms`
    /// (0 before the first poll).
    pub fn poll_age_seconds(&self, now_ms: i64) -> f64 {
        match self.polled_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            at => (now_ms - at).max(0) as f64 / 1000.0,
        }
    }

    /// Notes that the main loop polled its consumer.
    fn polled(&self) {
        self.polled_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Records a report of the group membership at `now_ms`.
    pub(crate) fn group_settled(&self, settled: bool, now_ms: i64) {
        note_since(&self.out_of_group_since_ms, !settled, now_ms);
    }

    /// True when partition `p` is restored and consuming here.
    pub fn owns(&self, p: i32) -> bool {
        self.owned.lock().is_ok_and(|o| o.contains(&p))
    }

    /// True when partition `p` is being restored here.
    pub fn is_restoring(&self, p: i32) -> bool {
        self.restoring
            .lock()
            .is_ok_and(|r| r.iter().any(|s| s.partition == p))
    }
}

/// Keeps in `since` when a condition began (epoch ms): set at `now_ms` when it
/// holds and was not noted yet, 0 when it does not hold.
fn note_since(since: &AtomicI64, holds: bool, now_ms: i64) {
    if holds {
        let _ = since.compare_exchange(0, now_ms.max(1), Ordering::SeqCst, Ordering::SeqCst);
    } else {
        since.store(0, Ordering::SeqCst);
    }
}

/// What went wrong in the loop, and how the engine answers it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoopError {
    /// The uncommitted work must be dropped and redone from the last commit; the
    /// engine carries on.
    #[error("{0}")]
    Rewind(String),
    /// The engine cannot go on.
    #[error(transparent)]
    Fatal(#[from] anyhow::Error),
}

/// A running engine. Dropping it without [`EngineHandle::shutdown`] stops it too.
pub struct EngineHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Live counters.
    pub progress: Arc<Progress>,
    /// How customer keys map to partitions on the running topics.
    pub key_rule: KeyRule,
}

impl EngineHandle {
    /// Asks the engine to stop, waits for its final commit, and returns its result.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// A flag that stops the engine when set (for signal handlers).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits for the engine to end by itself (after the stop flag, or on a fatal error).
    pub fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("engine thread panicked"))?,
            None => Ok(()),
        }
    }

    /// True when the engine thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.join();
    }
}

/// Prepares the topics (co-partitioning check, changelog and outputs created if
/// missing) and starts the engine on its own thread.
pub fn start(
    cfg: Config,
    state: Arc<StateStore>,
    metrics: Metrics,
) -> anyhow::Result<EngineHandle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let layout = rt.block_on(kafka::prepare_topics(
        &cfg.kafka,
        cfg.engine.max_record_bytes,
        cfg.privacy.changelog_max_compaction_lag_ms,
    ))?;
    let receipts = match cfg.privacy.enabled() {
        true => Some(erasure::Receipts::new(
            cfg.privacy.results(),
            rt.block_on(crate::privacy::topics::prepare(
                &cfg.kafka,
                &cfg.privacy,
                layout.partitions,
            ))?,
        )),
        false => None,
    };
    if cfg.identity.stitching {
        rt.block_on(crate::identity::topics::prepare(
            &cfg.kafka,
            &cfg.identity,
            layout.partitions,
        ))?;
    }
    let progress = Arc::new(Progress::default());
    progress
        .out_of_group_limit_ms
        .store(cfg.engine.out_of_group_timeout_ms, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let key_rule = KeyRule::new(cfg.kafka.partitioner, layout.partitions);
    let worker = Worker::new(cfg, layout, state, metrics, progress.clone(), receipts)?;
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rapport-engine".into())
        .spawn(move || worker.run(&flag))?;
    Ok(EngineHandle {
        stop,
        thread: Some(thread),
        progress,
        key_rule,
    })
}

struct Worker {
    consumer: BaseConsumer<EngineContext>,
    core: Arc<Mutex<Core>>,
    /// The core's progress, for what the loop notes without the core's lock.
    progress: Arc<Progress>,
    interval: Duration,
    /// How long Kafka may stay unreachable before the engine gives up.
    patience: Duration,
    /// Since when every rewind has been followed by another failure, and the
    /// number of commits when that streak started.
    failing: Option<(Instant, u64)>,
    /// Whether to replace a consumer out of its group (see `renew`).
    renewal: renew::Renewal,
}

/// How long a stopping engine waits for its consumer's handle to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Closes `consumer` on a thread of its own, so that a handle the cluster
/// left wedged (seen after a broker restart: the consumer out of its group
/// for good, and one of its broker threads never ending, so closing waited
/// forever) is left to that thread. The receiver hears when it has closed;
/// none when no thread could be started (it closed here).
fn close_aside(consumer: BaseConsumer<EngineContext>) -> Option<mpsc::Receiver<()>> {
    let (done, closed) = mpsc::channel();
    std::thread::Builder::new()
        .name("rapport-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done.send(());
        })
        .ok()
        .map(|_| closed)
}

/// Closes `consumer` aside ([`close_aside`]) and waits for it at most
/// [`CLOSE_WITHIN`]: a wedged handle must not keep the engine from stopping.
fn close(consumer: BaseConsumer<EngineContext>) {
    if close_aside(consumer).is_some_and(|closed| closed.recv_timeout(CLOSE_WITHIN).is_err()) {
        tracing::warn!(
            seconds = CLOSE_WITHIN.as_secs(),
            "the Kafka consumer did not close in time; the engine stops without waiting for it"
        );
    }
}

/// The committer for the configured guarantee.
fn committer(
    cfg: &Config,
    changelog: &str,
    metrics: &Metrics,
    state: &Arc<StateStore>,
) -> anyhow::Result<Committer> {
    let protocol: Arc<dyn CommitProtocol> = match cfg.engine.guarantee {
        Guarantee::ExactlyOnce => Arc::new(ExactlyOnce {
            transactional_id: format!("{}-{}", cfg.kafka.group_id, cfg.engine.instance_id),
            timeout_ms: cfg.engine.transaction_timeout_ms,
        }),
        Guarantee::AtLeastOnce => Arc::new(AtLeastOnce),
    };
    let mut pc = producer_config(&cfg.kafka);
    // Room for a whole dead-lettered record of max_record_bytes with its headers.
    let max = (cfg.engine.max_record_bytes + RECORD_OVERHEAD).clamp(1_000_000, 1_000_000_000);
    if !cfg.kafka.producer.contains_key("message.max.bytes") {
        pc.set("message.max.bytes", max.to_string());
    }
    // The producers' requests to the brokers (`rapport_kafka_requests_total`).
    if !cfg.kafka.producer.contains_key("statistics.interval.ms") {
        pc.set(
            "statistics.interval.ms",
            crate::kafka::requests::STATISTICS_INTERVAL_MS,
        );
    }
    Committer::new(
        protocol,
        pc,
        changelog.to_owned(),
        Duration::from_millis(cfg.engine.kafka_unavailable_timeout_ms),
        metrics.clone(),
        state.clone(),
    )
}

/// The processor the configuration asks for: its journeys, state and caches,
/// worker threads, and the optional parts (writer schemas from a registry,
/// privacy rules, identity stitching).
fn processor(
    cfg: &Config,
    layout: &TopicLayout,
    state: &Arc<StateStore>,
    metrics: &Metrics,
    registry: &encode::RegistryIo,
) -> anyhow::Result<Processor> {
    let mut processor = Processor::new(
        cfg.engine.max_record_bytes,
        KeyRule::new(cfg.kafka.partitioner, layout.partitions),
        cfg.journeys()?,
        state.clone(),
        metrics.clone(),
        cfg.state.profile_cache_mb << 20,
    )?
    .with_workers(cfg.engine.workers())?
    .with_encoded_cache(cfg.state.encoded_cache_mb << 20)
    .with_seen_limits(cfg.engine.seen_limits())
    .with_pseudonymizer(cfg.pseudonymizer.clone());
    if let Some(schemas) = &registry.writer_schemas {
        processor = processor.with_registry(schemas.clone());
    }
    if cfg.privacy.enabled() {
        processor = processor.with_privacy(crate::processor::PrivacyRules {
            topic: cfg.privacy.topic.clone(),
            hasher: cfg
                .privacy
                .hasher(&cfg.kafka.group_id)
                .map_err(anyhow::Error::msg)?,
            after: cfg.privacy.after_erasure,
        });
    }
    processor = processor.with_stitching(crate::processor::StitchRules::of(
        &cfg.identity,
        cfg.identity.repartition(&cfg.kafka.group_id),
    )?);
    Ok(processor)
}

impl Worker {
    fn new(
        cfg: Config,
        layout: TopicLayout,
        state: Arc<StateStore>,
        metrics: Metrics,
        progress: Arc<Progress>,
        receipts: Option<erasure::Receipts>,
    ) -> anyhow::Result<Self> {
        let changelog = cfg.kafka.changelog();
        let committer = committer(&cfg, &changelog, &metrics, &state)?;
        let producer_max = (cfg.engine.max_record_bytes + RECORD_OVERHEAD).max(1_000_000);
        let registry = encode::RegistryIo::connect(&cfg)?;
        let processor = processor(&cfg, &layout, &state, &metrics, &registry)?;
        let core = Arc::new(Mutex::new(Core {
            processor,
            dead_letter_room: layout.dead_letter_max_bytes.min(producer_max) - 8 * 1024,
            restorer: Restorer::new(&cfg.kafka)?,
            changelog,
            committer,
            state,
            metrics,
            progress,
            to_restore: Default::default(),
            from_local: Default::default(),
            to_start: Default::default(),
            kafka_wait: Default::default(),
            held: None,
            failure: None,
            pending: PendingOffsets::default(),
            pending_records: 0,
            actions: Vec::new(),
            order: Default::default(),
            commits: 0,
            oldest_ms: None,
            assigned: false,
            writer_schemas: registry.writer_schemas,
            action_format: registry.actions,
            decision_format: registry.decisions,
            receipts,
            identity: identity::IdentityTopics::of(&cfg),
            written_ahead: None,
            cfg: cfg.clone(),
        }));
        let consumer = subscribe(&cfg, core.clone())?;
        let progress = lock(&core).progress.clone();
        Ok(Worker {
            consumer,
            core,
            progress,
            interval: Duration::from_millis(cfg.engine.commit_interval_ms),
            patience: Duration::from_millis(cfg.engine.kafka_unavailable_timeout_ms),
            failing: None,
            renewal: Default::default(),
        })
    }

    fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let result = self.run_until(stop);
        let metrics = lock(&self.core).metrics.clone();
        metrics.ready.set(0);
        lock(&self.core)
            .progress
            .ready
            .store(false, Ordering::SeqCst);
        let result = result.and_then(|()| {
            // Leaving the group revokes (and commits) whatever is left.
            self.consumer.unsubscribe();
            let _ = self.consumer.poll(Duration::from_millis(100));
            let mut core = lock(&self.core);
            if let Some(LoopError::Rewind(why)) = core.failure.take() {
                tracing::warn!(reason = %why, "the last interval was not committed; the partitions' next owner redoes it");
            }
            core.state.flush().map_err(Into::into)
        });
        if let Err(e) = &result {
            let _ = lock(&self.core).committer.abort();
            tracing::error!(error = %format!("{e:#}"), "engine stopped on an error");
        }
        close(self.consumer);
        result
    }

    fn run_until(&mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut last_commit = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.renew_stuck_consumer()?;
            match self.step(&mut last_commit) {
                Ok(()) => {}
                Err(LoopError::Rewind(why)) => self.recover(&why)?,
                Err(LoopError::Fatal(e)) => return Err(e),
            }
        }
        match lock(&self.core).commit(&self.consumer, CommitMode::Sync) {
            Err(LoopError::Rewind(why)) => {
                tracing::warn!(reason = %why, "the last interval could not be committed; the partitions' next owner redoes it");
                Ok(())
            }
            other => other.map_err(|e| anyhow::anyhow!(e)),
        }
    }

    /// Processes what arrives until the commit interval is up, restores a slice
    /// of the partitions being restored, and commits when the interval is up.
    fn step(&mut self, last_commit: &mut Instant) -> Result<(), LoopError> {
        let (deadline, wait) = self.slice(*last_commit);
        // Noted once a step, not once a record: a step polls within
        // milliseconds of its start, and a step held up shows as it should.
        self.progress.polled();
        let caught_up = self.drain(deadline, wait)?;
        let mut core = lock(&self.core);
        core.finish_ended(&self.consumer)?;
        core.restore_slice(&self.consumer)?;
        core.release_identity_messages(&self.consumer)?;
        core.committer.serve();
        core.commit_when_due(&self.consumer, self.interval, last_commit)?;
        if caught_up {
            core.write_ahead(self.interval, *last_commit)?;
        }
        core.release_input(&self.consumer)
    }

    /// Until when this step takes records, and how long its first poll may
    /// wait for one. A commit that is due waits for the one still in flight:
    /// meanwhile the loop goes on consuming, a slice at a time, into the open
    /// interval, until the changed profiles fill the profile cache.
    fn slice(&self, last_commit: Instant) -> (Instant, Duration) {
        let (restoring, committing) = {
            let core = lock(&self.core);
            (!core.restorer.is_idle(), core.committer.committing())
        };
        let mut deadline = last_commit + self.interval;
        if committing {
            deadline = deadline.max(Instant::now() + OVERDUE_SLICE);
        }
        let wait = match (restoring, committing) {
            (true, _) => Duration::ZERO,
            (false, true) => OVERDUE_SLICE,
            (false, false) => Duration::from_millis(20),
        };
        (deadline, wait)
    }

    /// Takes what the consumer has fetched, up to `deadline`, in batches whose
    /// partitions are processed in parallel; stops once the changed profiles
    /// fill the profile cache (see `hold`). Whether it stopped because nothing
    /// more had arrived: the engine has caught up with its input.
    fn drain(&mut self, deadline: Instant, mut wait: Duration) -> Result<bool, LoopError> {
        let mut batch = Vec::with_capacity(BATCH_RECORDS);
        let mut caught_up = false;
        while Instant::now() < deadline {
            let polled = self.consumer.poll(wait);
            self.settle_rebalance()?;
            match polled {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => consumer_error(e)?,
                None => {
                    caught_up = true;
                    break;
                }
            }
            if batch.len() >= BATCH_RECORDS {
                let mut core = lock(&self.core);
                core.handle_batch(&batch)?;
                core.finish_ended(&self.consumer)?;
                batch.clear();
                if core.processor.changes_fill_cache() {
                    core.make_room(&self.consumer)?;
                    break;
                }
            }
            wait = Duration::ZERO;
        }
        if !batch.is_empty() {
            lock(&self.core).handle_batch(&batch)?;
        }
        Ok(caught_up)
    }

    /// Answers what the rebalance callbacks left: a failed commit, or partitions to restore.
    fn settle_rebalance(&self) -> Result<(), LoopError> {
        let mut core = lock(&self.core);
        if let Some(f) = core.failure.take() {
            return Err(f);
        }
        core.start_restores(&self.consumer)
    }

    /// Rewinds to the last commit after `why`, a step at a time with the
    /// consumer served in between (`Core::rewind_step`), retrying while Kafka
    /// is unreachable, and gives up when commits have failed for longer than
    /// the configured patience.
    fn recover(&mut self, why: &str) -> anyhow::Result<()> {
        let commits = lock(&self.core).commits;
        let (since, _) = match self.failing {
            Some((since, at)) if at == commits => (since, at),
            _ => *self.failing.insert((Instant::now(), commits)),
        };
        // Restores that keep failing (the cluster unreachable) leave the engine
        // unready through every rewind: as fatal as commits failing that long.
        let ready = lock(&self.core).progress.ready.load(Ordering::SeqCst);
        if !ready && since.elapsed() >= self.patience {
            anyhow::bail!(
                "Kafka has been failing for {} s (latest: {why}); check that the cluster is reachable, or raise engine.kafka_unavailable_timeout_ms",
                since.elapsed().as_secs()
            );
        }
        tracing::warn!(reason = %why, "commit failed: dropping uncommitted work and redoing it from the last commit");
        // Until the rewind is done, a revocation commits nothing (its work is
        // being dropped), and no more records are fetched.
        lock(&self.core)
            .failure
            .get_or_insert_with(|| LoopError::Rewind(why.to_owned()));
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        let mut abort = Abort::default();
        let mut backoff = Duration::from_millis(100);
        loop {
            let step = lock(&self.core).rewind_step(&self.consumer, &mut abort);
            match step {
                Ok(true) => {
                    let core = lock(&self.core);
                    core.progress.rewinds.fetch_add(1, Ordering::SeqCst);
                    core.metrics.rewinds.inc();
                    return Ok(());
                }
                Ok(false) => self.serve_consumer(SERVE_WHILE_REWINDING)?,
                Err(e) if since.elapsed() >= self.patience => {
                    return Err(e).with_context(|| {
                        format!(
                            "Kafka commits have failed for {} s (first: {why}); check that the cluster is reachable, or raise engine.kafka_unavailable_timeout_ms",
                            since.elapsed().as_secs()
                        )
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "rewind failed; retrying");
                    abort = Abort::default();
                    self.serve_consumer(backoff)?;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Polls the consumer for `wait` while a rewind is under way, so that its
    /// rebalance callbacks, statistics (the group metrics, `/healthz`) and
    /// errors are served. Records it returns are dropped: once the rewind is
    /// done, every partition restarts from its committed offset.
    fn serve_consumer(&self, wait: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let polled = self.consumer.poll(left.min(Duration::from_millis(100)));
            self.progress.polled();
            if let Some(Err(e)) = polled {
                consumer_error(e).map_err(|e| anyhow::anyhow!(e))?;
            }
            if Instant::now() >= until {
                return Ok(());
            }
        }
    }
}

/// How long the consumer is polled between two steps of a rewind.
const SERVE_WHILE_REWINDING: Duration = Duration::from_millis(20);

/// A consumer error: another instance with this instance's id is fatal; anything
/// else (a broker away for a moment) the client recovers from by itself.
fn consumer_error(e: KafkaError) -> Result<(), LoopError> {
    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId) {
        return Err(LoopError::Fatal(anyhow::anyhow!(
            "another Rapport instance joined the group with this engine.instance_id; give every instance a distinct, stable instance_id ({e})"
        )));
    }
    tracing::warn!(error = %e, "consumer error");
    Ok(())
}

/// Creates the consumer and subscribes to the touchpoint topics.
fn subscribe(cfg: &Config, core: Arc<Mutex<Core>>) -> anyhow::Result<BaseConsumer<EngineContext>> {
    let mut cc = consumer_config(&cfg.kafka);
    // Static membership: a restarted instance takes its partitions back at once
    // instead of waiting for its old session to time out.
    if !cfg.kafka.consumer.contains_key("group.instance.id") {
        cc.set("group.instance.id", &cfg.engine.instance_id);
    }
    let topics = erasure::input_topics(cfg);
    if topics.len() > 1 {
        // Co-partitioned topics must be assigned partition-aligned: the range
        // assignor gives partition n of every topic to the same member.
        cc.set("partition.assignment.strategy", "range");
    }
    let consumer: BaseConsumer<EngineContext> = cc
        .create_with_context(EngineContext::new(core))
        .context("creating the Kafka consumer")?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .context("subscribing to the touchpoint topics")?;
    Ok(consumer)
}

#[cfg(test)]
mod health_tests {
    use super::*;

    /// Healthy while settled, before any report, and within the limit out of
    /// the group; unhealthy past it, and healthy again once settled.
    #[test]
    fn out_of_the_group_past_the_limit_is_unhealthy() {
        let p = Progress::default();
        p.out_of_group_limit_ms.store(10_000, Ordering::SeqCst);
        let t0 = 1_764_000_000_000;
        assert!(p.health(t0).is_ok(), "no report yet");
        p.group_settled(true, t0);
        assert!(p.health(t0 + 60_000).is_ok(), "settled");
        p.group_settled(false, t0 + 1_000);
        // A later report while still out keeps the first time.
        p.group_settled(false, t0 + 8_000);
        assert!(p.health(t0 + 11_000).is_ok(), "10 s out");
        let e = p.health(t0 + 12_000).unwrap_err();
        assert!(e.contains("out of its group for 11 s"), "{e}");
        assert!(e.contains("engine.out_of_group_timeout_ms (10 s)"), "{e}");
        p.group_settled(true, t0 + 13_000);
        assert!(p.health(t0 + 30_000).is_ok(), "settled again");
        // No limit: never unhealthy.
        p.out_of_group_limit_ms.store(0, Ordering::SeqCst);
        p.group_settled(false, t0 + 31_000);
        assert!(p.health(t0 + 10_000_000).is_ok());
    }
}
