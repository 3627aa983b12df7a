//! The processing loop: consume in batches, update profiles, evaluate journeys and
//! timers, produce actions, and commit actions, state and offsets together at each
//! commit interval.
//!
//! One task per assigned input partition: its profiles, timers and offsets are
//! scoped to the partition in RocksDB and in the compacted changelog topic, which
//! has the input's partition count. A partition that arrives (at start or in a
//! rebalance) is restored from the changelog before its records are processed; one
//! that leaves is committed first and released.
//!
//! Commits, per guarantee:
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
//! replayed record is never applied twice to a profile. Any Kafka error during a
//! commit aborts and stops the engine: a restart recovers through the same path
//! as a crash, which is the path the tests exercise.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rapport_model::{Action, Journeys, Profile, Touchpoint};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::config::{Config, Guarantee};
use crate::ingest::{Decoder, Rejection};
use crate::kafka::{self, consumer_config, producer_config};
use crate::metrics::Metrics;
use crate::state::{topic_hash, StateBatch, StateStore, Stored};

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
}

/// A running engine. Dropping it without [`EngineHandle::shutdown`] stops it too.
pub struct EngineHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
    /// Live counters.
    pub progress: Arc<Progress>,
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
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(kafka::prepare_topics(&cfg.kafka))?;
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker::new(cfg, state, metrics, progress.clone())?;
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("rapport-engine".into())
        .spawn(move || worker.run(&flag))?;
    Ok(EngineHandle {
        stop,
        thread: Some(thread),
        progress,
    })
}

/// The consumer's context: commits revoked partitions and restores assigned ones
/// inside the rebalance, so partitions move without loss.
struct EngineContext {
    core: Arc<Mutex<Core>>,
    progress: Arc<Progress>,
    failed: Mutex<Option<anyhow::Error>>,
}

impl EngineContext {
    fn fail(&self, e: anyhow::Error) {
        tracing::error!(error = %format!("{e:#}"), "rebalance handling failed");
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(e);
        }
    }
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = partitions_of(tpl);
            tracing::info!(?partitions, "partitions revoked: committing and releasing");
            let mut core = lock(&self.core);
            if let Err(e) = core
                .commit(consumer, CommitMode::Sync)
                .and_then(|_| core.release(&partitions))
            {
                self.fail(e);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned: restoring");
                let mut core = lock(&self.core);
                // Commit what is pending first: a restore may wait for a dead
                // instance's transaction to time out, and ours must not time out meanwhile.
                match core
                    .commit(consumer, CommitMode::Sync)
                    .and_then(|_| core.assign(&partitions))
                {
                    Ok(()) => self.progress.ready.store(true, Ordering::SeqCst),
                    Err(e) => self.fail(e),
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    let set: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    set.into_iter().collect()
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts failed deliveries so a commit never covers a lost record, and notes the
/// changelog offsets written, for the restore checkpoint.
#[derive(Default)]
struct DeliveryContext {
    changelog: String,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    changelog_offsets: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) if m.topic() == self.changelog => {
                if let Ok(mut o) = self.changelog_offsets.lock() {
                    let e = o.entry(m.partition()).or_insert(0);
                    *e = (*e).max(m.offset() + 1);
                }
            }
            Ok(_) => {}
            Err((e, m)) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(format!("to {}: {e}", m.topic()));
                }
            }
        }
    }
}

/// Offsets consumed in the current interval, looked up by `(partition, &str)`
/// without allocating a topic name per record.
#[derive(Default)]
struct PendingOffsets(Vec<((i32, String), i64)>);

impl PendingOffsets {
    fn get_mut(&mut self, key: &(i32, &str)) -> Option<&mut i64> {
        self.0
            .iter_mut()
            .find(|((p, t), _)| *p == key.0 && t == key.1)
            .map(|(_, n)| n)
    }
    fn insert(&mut self, key: (i32, String), next: i64) {
        self.0.push((key, next));
    }
    fn iter(&self) -> impl Iterator<Item = (&(i32, String), &i64)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A commit whose Kafka side (waiting for acknowledgements and, under
/// exactly_once, committing the transaction) runs on a background thread while the
/// next interval is processed on the other producer. Its RocksDB writes and offset
/// commit happen only once that succeeded, and before the next commit starts.
struct InFlight {
    job: JoinHandle<anyhow::Result<()>>,
    producer: usize,
    batch: StateBatch,
    offsets: TopicPartitionList,
    records: u64,
    started: Instant,
}

/// A profile held in memory, and what is needed to write it back.
struct Slot {
    partition: i32,
    stored: Stored,
    dirty: bool,
    /// Timer times currently in the persisted index.
    persisted_timers: Vec<i64>,
}

/// One owned input partition.
#[derive(Default)]
struct Task {
    /// Pending timers, `(fire_at, customer id)`.
    timers: BTreeSet<(i64, String)>,
    /// Highest event time seen.
    watermark: i64,
    watermark_dirty: bool,
    /// Next offset to apply, per topic (records below were applied to state).
    applied: HashMap<String, i64>,
    /// Whether a record arrived during the current commit interval.
    active: bool,
    /// Whether a record arrived since the assignment.
    started: bool,
}

struct Worker {
    consumer: BaseConsumer<EngineContext>,
    core: Arc<Mutex<Core>>,
}

/// Everything but the consumer: tasks, profiles, producer, pending offsets.
struct Core {
    cfg: Config,
    changelog: String,
    /// Two producers used in turn (see [`InFlight`]).
    producers: [Arc<BaseProducer<DeliveryContext>>; 2],
    /// The producer of the current interval.
    current: usize,
    /// The previous interval's commit, still running.
    in_flight: Option<InFlight>,
    restorer: Restorer,
    in_transaction: bool,
    /// Set after an error: nothing more may be committed.
    poisoned: bool,
    decoder: Decoder,
    journeys: Journeys,
    state: Arc<StateStore>,
    metrics: Metrics,
    progress: Arc<Progress>,
    tasks: HashMap<i32, Task>,
    /// Decoded profiles by customer id; the dirty ones are written at the next commit.
    cache: HashMap<String, Slot>,
    /// Ids of the profiles changed in this interval.
    dirty: Vec<String>,
    /// Per-topic event counters, resolved once.
    event_counters: Vec<(String, prometheus::IntCounter)>,
    /// Offsets consumed in this interval, `(partition, topic) -> next`.
    pending: PendingOffsets,
    pending_records: u64,
    actions: Vec<Action>,
}

impl Worker {
    fn new(
        cfg: Config,
        state: Arc<StateStore>,
        metrics: Metrics,
        progress: Arc<Progress>,
    ) -> anyhow::Result<Self> {
        let changelog = cfg.kafka.changelog();
        // Two producers take turns: one commits an interval in the background while
        // the other carries the next interval's records.
        let make = |n: usize| -> anyhow::Result<Arc<BaseProducer<DeliveryContext>>> {
            let mut pc = producer_config(&cfg.kafka);
            if cfg.engine.guarantee == Guarantee::ExactlyOnce {
                pc.set(
                    "transactional.id",
                    format!("{}-{}-{n}", cfg.kafka.group_id, cfg.engine.instance_id),
                )
                .set(
                    "transaction.timeout.ms",
                    cfg.engine.transaction_timeout_ms.to_string(),
                );
            }
            let producer: BaseProducer<DeliveryContext> = pc
                .create_with_context(DeliveryContext {
                    changelog: changelog.clone(),
                    ..Default::default()
                })
                .context("creating the Kafka producer")?;
            if cfg.engine.guarantee == Guarantee::ExactlyOnce {
                // Fences a previous incarnation of this instance and aborts its open transaction.
                producer
                    .init_transactions(Duration::from_secs(60))
                    .context("initialising Kafka transactions")?;
            }
            Ok(Arc::new(producer))
        };
        let producers = [make(0)?, make(1)?];
        let restorer = Restorer::new(&cfg.kafka.bootstrap_servers, &cfg.kafka.group_id)?;
        let core = Arc::new(Mutex::new(Core {
            decoder: Decoder::new(cfg.engine.max_record_bytes)?,
            journeys: cfg.journeys.clone(),
            changelog,
            producers,
            current: 0,
            in_flight: None,
            restorer,
            in_transaction: false,
            poisoned: false,
            state,
            metrics,
            progress: progress.clone(),
            tasks: HashMap::new(),
            cache: HashMap::new(),
            dirty: Vec::new(),
            event_counters: Vec::new(),
            pending: PendingOffsets::default(),
            pending_records: 0,
            actions: Vec::new(),
            cfg: cfg.clone(),
        }));
        let mut cc = consumer_config(&cfg.kafka);
        // Static membership: a restarted instance takes its partitions back at once
        // instead of waiting for its old session to time out.
        if !cfg.kafka.consumer.contains_key("group.instance.id") {
            cc.set("group.instance.id", &cfg.engine.instance_id);
        }
        if cfg.kafka.touchpoint_topics.len() > 1 {
            // Co-partitioned topics must be assigned partition-aligned: the range
            // assignor gives partition n of every topic to the same member.
            cc.set("partition.assignment.strategy", "range");
        }
        let consumer: BaseConsumer<EngineContext> = cc
            .create_with_context(EngineContext {
                core: core.clone(),
                progress,
                failed: Mutex::new(None),
            })
            .context("creating the Kafka consumer")?;
        let topics: Vec<&str> = cfg
            .kafka
            .touchpoint_topics
            .iter()
            .map(String::as_str)
            .collect();
        consumer
            .subscribe(&topics)
            .context("subscribing to the touchpoint topics")?;
        Ok(Worker { consumer, core })
    }

    fn run(self, stop: &AtomicBool) -> anyhow::Result<()> {
        let (interval, metrics) = {
            let core = lock(&self.core);
            (
                Duration::from_millis(core.cfg.engine.commit_interval_ms),
                core.metrics.clone(),
            )
        };
        let mut last_commit = Instant::now();
        metrics.ready.set(1);
        let result = (|| {
            while !stop.load(Ordering::SeqCst) {
                let deadline = last_commit + interval;
                let mut wait = Duration::from_millis(20);
                // Drain what is already fetched, up to the commit deadline.
                while Instant::now() < deadline {
                    let polled = self.consumer.poll(wait);
                    self.check_rebalance()?;
                    match polled {
                        Some(Ok(m)) => lock(&self.core).handle(&m)?,
                        Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                        None => break,
                    }
                    wait = Duration::ZERO;
                }
                let mut core = lock(&self.core);
                core.producer().poll(Duration::ZERO);
                if last_commit.elapsed() >= interval {
                    core.fire_idle_timers()?;
                    core.commit(&self.consumer, CommitMode::Async)?;
                    last_commit = Instant::now();
                }
            }
            lock(&self.core).commit(&self.consumer, CommitMode::Sync)
        })();
        metrics.ready.set(0);
        self.consumer
            .context()
            .progress
            .ready
            .store(false, Ordering::SeqCst);
        let result = match result {
            Ok(()) => {
                // Leaving the group revokes (and commits) whatever is left.
                self.consumer.unsubscribe();
                let _ = self.consumer.poll(Duration::from_millis(100));
                self.check_rebalance()
                    .and_then(|_| lock(&self.core).state.flush().map_err(Into::into))
            }
            Err(e) => {
                lock(&self.core).abort();
                Err(e)
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %format!("{e:#}"), "engine stopped on an error");
        }
        result
    }

    fn check_rebalance(&self) -> anyhow::Result<()> {
        match self
            .consumer
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|mut f| f.take())
        {
            Some(e) => Err(e.context("during a rebalance")),
            None => Ok(()),
        }
    }
}

/// The due times of a profile's pending timers (no allocation when there are none).
fn timer_times(p: &Profile) -> Vec<i64> {
    p.timers.iter().map(|t| t.fire_at_ms).collect()
}

/// Moves customer `id`'s entries in the partition's timer index from `before` to `after`.
fn reindex(
    tasks: &mut HashMap<i32, Task>,
    partition: i32,
    id: &str,
    before: &[i64],
    after: &[i64],
) {
    if before == after {
        return;
    }
    let task = tasks.entry(partition).or_default();
    for t in before {
        task.timers.remove(&(*t, id.to_owned()));
    }
    for t in after {
        task.timers.insert((*t, id.to_owned()));
    }
}

/// Sets `map[topic] = next` without allocating when the topic is already there.
fn set_next(map: &mut HashMap<String, i64>, topic: &str, next: i64) {
    match map.get_mut(topic) {
        Some(n) => *n = next,
        None => {
            map.insert(topic.to_owned(), next);
        }
    }
}

/// The slot of customer `id` in `partition`, loaded from state if needed.
fn slot<'a>(
    cache: &'a mut HashMap<String, Slot>,
    state: &StateStore,
    partition: i32,
    id: &str,
) -> anyhow::Result<&'a mut Slot> {
    if !cache.contains_key(id) {
        let stored = state.get(partition, id)?.unwrap_or_else(|| Stored {
            sources: Vec::new(),
            profile: Profile::new(id),
        });
        let persisted_timers = stored.profile.timers.iter().map(|t| t.fire_at_ms).collect();
        cache.insert(
            id.to_owned(),
            Slot {
                partition,
                stored,
                dirty: false,
                persisted_timers,
            },
        );
    }
    Ok(cache.get_mut(id).expect("just inserted"))
}

impl Core {
    fn exactly_once(&self) -> bool {
        self.cfg.engine.guarantee == Guarantee::ExactlyOnce
    }

    fn handle(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        self.progress.handled.fetch_add(1, Ordering::Relaxed);
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        let Some(task) = self.tasks.get_mut(&partition) else {
            // A record fetched before a revocation took effect; its new owner handles it.
            return Ok(());
        };
        task.active = true;
        if !task.started {
            task.started = true;
            tracing::info!(partition, topic, offset, "first record of the assignment");
        }
        let already = task.applied.get(topic).is_some_and(|&next| offset < next);
        if already {
            self.metrics.skipped.inc();
        } else {
            match self.decoder.decode(m.payload().unwrap_or_default()) {
                Ok(tp) => self.apply(topic, partition, offset, &tp)?,
                Err(r) => self.dead_letter(m, &r)?,
            }
            if let Some(task) = self.tasks.get_mut(&partition) {
                set_next(&mut task.applied, topic, offset + 1);
            }
        }
        match self.pending.get_mut(&(partition, topic)) {
            Some(next) => *next = offset + 1,
            None => {
                self.pending
                    .insert((partition, topic.to_owned()), offset + 1);
            }
        }
        self.pending_records += 1;
        Ok(())
    }

    /// Updates the customer's profile with `tp`, emits the actions it triggers, and
    /// fires timers the new watermark makes due.
    fn apply(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        tp: &Touchpoint,
    ) -> anyhow::Result<()> {
        let id = tp.identity().unwrap_or_default();
        let hash = topic_hash(topic);
        let slot = slot(&mut self.cache, &self.state, partition, id)?;
        if slot.stored.reflects(hash, offset) {
            self.metrics.skipped.inc();
            return Ok(());
        }
        let before = timer_times(&slot.stored.profile);
        slot.stored.profile.apply(tp);
        self.journeys
            .evaluate(&mut slot.stored.profile, tp, &mut self.actions);
        slot.stored.advance(hash, offset);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id.to_owned());
        }
        let after = timer_times(&slot.stored.profile);
        reindex(&mut self.tasks, partition, id, &before, &after);
        match self.event_counters.iter().find(|(t, _)| t == topic) {
            Some((_, c)) => c.inc(),
            None => {
                let c = self.metrics.events.with_label_values(&[topic]);
                c.inc();
                self.event_counters.push((topic.to_owned(), c));
            }
        }
        self.emit_pending()?;
        let task = self.tasks.entry(partition).or_default();
        if tp.event_time > task.watermark {
            task.watermark = tp.event_time;
            task.watermark_dirty = true;
            let wm = task.watermark;
            if task.timers.first().is_some_and(|(at, _)| *at <= wm) {
                self.fire_timers(partition, wm)?;
            }
        }
        Ok(())
    }

    /// Fires every timer of `partition` due at `now` (event time, or wall-clock time
    /// for an idle partition in live mode).
    fn fire_timers(&mut self, partition: i32, now: i64) -> anyhow::Result<()> {
        loop {
            let Some(task) = self.tasks.get_mut(&partition) else {
                return Ok(());
            };
            let Some((at, id)) = task.timers.first().cloned() else {
                return Ok(());
            };
            if at > now {
                return Ok(());
            }
            task.timers.remove(&(at, id.clone()));
            let slot = slot(&mut self.cache, &self.state, partition, &id)?;
            let before = timer_times(&slot.stored.profile);
            if self
                .journeys
                .fire_due(&mut slot.stored.profile, now, &mut self.actions)
                && !slot.dirty
            {
                slot.dirty = true;
                self.dirty.push(id.clone());
            }
            let after = timer_times(&slot.stored.profile);
            reindex(&mut self.tasks, partition, &id, &before, &after);
            self.metrics.timers_fired.inc_by(self.actions.len() as u64);
            self.emit_pending()?;
        }
    }

    /// In live mode, partitions that received nothing this interval fire their due
    /// timers on wall-clock time, so a quiet partition is not stuck.
    fn fire_idle_timers(&mut self) -> anyhow::Result<()> {
        if !self.cfg.engine.wall_clock_timers {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
        let idle: Vec<i32> = self
            .tasks
            .iter_mut()
            .filter_map(|(p, t)| {
                let idle = !t.active && t.timers.first().is_some_and(|(at, _)| *at <= now);
                t.active = false;
                idle.then_some(*p)
            })
            .collect();
        for p in idle {
            self.fire_timers(p, now)?;
        }
        Ok(())
    }

    fn begin(&mut self) -> anyhow::Result<()> {
        if self.exactly_once() && !self.in_transaction {
            self.producer()
                .begin_transaction()
                .context("beginning a Kafka transaction")?;
            self.in_transaction = true;
        }
        Ok(())
    }

    fn emit_pending(&mut self) -> anyhow::Result<()> {
        if self.actions.is_empty() {
            return Ok(());
        }
        self.begin()?;
        for a in std::mem::take(&mut self.actions) {
            let body = serde_json::to_vec(&a)?;
            let headers = OwnedHeaders::new().insert(Header {
                key: kafka::ACTION_ID,
                value: Some(a.action_id.as_bytes()),
            });
            self.send(
                BaseRecord::to(&self.cfg.kafka.action_topic)
                    .key(a.customer_id.as_bytes())
                    .payload(body.as_slice())
                    .headers(headers),
            )?;
            self.metrics
                .actions
                .with_label_values(&[&a.journey, a.kind.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Sends a record the engine could not process to the dead-letter topic: the
    /// original key, bytes and headers, plus headers naming where it came from and why.
    fn dead_letter(&mut self, m: &BorrowedMessage<'_>, r: &Rejection) -> anyhow::Result<()> {
        tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %r.reason, "dead-lettered");
        self.begin()?;
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers = headers.insert(h);
            }
        }
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        for (key, value) in [
            (kafka::DLQ_TOPIC, m.topic()),
            (kafka::DLQ_PARTITION, &partition),
            (kafka::DLQ_OFFSET, &offset),
            (kafka::DLQ_STAGE, r.stage.as_str()),
            (kafka::DLQ_REASON, &r.reason),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.cfg.kafka.dead_letter_topic)
            .payload(m.payload().unwrap_or_default())
            .headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        self.send(record)?;
        self.metrics
            .dead_letters
            .with_label_values(&[r.stage.as_str(), r.class])
            .inc();
        Ok(())
    }

    fn send(&self, record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        let topic = record.topic;
        rapport_connectors::publish::send_when_room(self.producer(), record)
            .with_context(|| format!("producing to {topic}"))
    }

    /// Makes the interval's effects durable (see the module docs for the order).
    fn commit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        if self.poisoned {
            bail!("not committing after an earlier error");
        }
        // One commit in flight at a time, finished in order.
        self.finish_in_flight(consumer, mode)?;
        if self.pending.is_empty() && self.dirty.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.begin()?;
        // Changelog: one record per changed profile, not per event.
        let mut batch = StateBatch::default();
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            let slot = &self.cache[id];
            let bytes = slot.stored.encode();
            self.send(
                BaseRecord::to(&self.changelog)
                    .partition(slot.partition)
                    .key(id.as_bytes())
                    .payload(bytes.as_slice()),
            )?;
            batch.put_profile(slot.partition, id, &bytes);
            let now: Vec<i64> = slot
                .stored
                .profile
                .timers
                .iter()
                .map(|t| t.fire_at_ms)
                .collect();
            for t in slot.persisted_timers.iter().filter(|t| !now.contains(t)) {
                batch.delete_timer(slot.partition, *t, id);
            }
            for t in now.iter().filter(|t| !slot.persisted_timers.contains(t)) {
                batch.put_timer(slot.partition, *t, id);
            }
        }
        let watermarks: Vec<(i32, i64)> = self
            .tasks
            .iter_mut()
            .filter(|(_, t)| t.watermark_dirty)
            .map(|(p, t)| {
                t.watermark_dirty = false;
                (*p, t.watermark)
            })
            .collect();
        for (p, wm) in watermarks {
            let bytes = wm.to_be_bytes();
            self.send(
                BaseRecord::to(&self.changelog)
                    .partition(p)
                    .key(WATERMARK_KEY)
                    .payload(&bytes[..]),
            )?;
            batch.set_watermark(p, wm);
        }
        let mut tpl = TopicPartitionList::new();
        for ((partition, topic), next) in self.pending.iter() {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            batch.set_offset(*partition, topic, *next);
        }
        tracing::debug!(offsets = ?self.pending.0, profiles = dirty.len(), "committing");
        let meta = if self.exactly_once() && tpl.count() > 0 {
            Some(
                consumer
                    .group_metadata()
                    .context("consumer group metadata")?,
            )
        } else {
            None
        };
        let (producer, offsets, eos) = (
            self.producers[self.current].clone(),
            tpl.clone(),
            self.exactly_once(),
        );
        let job = std::thread::Builder::new()
            .name("rapport-commit".into())
            .spawn(move || -> anyhow::Result<()> {
                producer
                    .flush(Duration::from_secs(60))
                    .context("waiting for records to be acknowledged")?;
                let ctx = producer.context();
                if ctx.failed.load(Ordering::SeqCst) > 0 {
                    let last = ctx
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|l| l.clone())
                        .unwrap_or_default();
                    bail!(
                        "{} records could not be delivered ({last}); stopping without committing",
                        ctx.failed.load(Ordering::SeqCst)
                    );
                }
                if eos {
                    let timeout = Duration::from_secs(30);
                    if let Some(meta) = meta {
                        producer
                            .send_offsets_to_transaction(&offsets, &meta, timeout)
                            .context("adding offsets to the transaction")?;
                    }
                    producer
                        .commit_transaction(timeout)
                        .context("committing the Kafka transaction")?;
                }
                Ok(())
            })?;
        for id in &dirty {
            if let Some(s) = self.cache.get_mut(id) {
                s.dirty = false;
                s.persisted_timers = timer_times(&s.stored.profile);
            }
        }
        self.in_flight = Some(InFlight {
            job,
            producer: self.current,
            batch,
            offsets: tpl,
            records: self.pending_records,
            started,
        });
        self.pending.clear();
        self.pending_records = 0;
        self.current = 1 - self.current;
        self.in_transaction = false;
        if matches!(mode, CommitMode::Sync) {
            self.finish_in_flight(consumer, mode)?;
        }
        Ok(())
    }

    /// Waits for the background commit, then writes its state to RocksDB and (under
    /// at_least_once) commits its offsets.
    fn finish_in_flight(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        let Some(mut f) = self.in_flight.take() else {
            return Ok(());
        };
        f.job
            .join()
            .map_err(|_| anyhow::anyhow!("commit thread panicked"))??;
        if let Ok(mut offsets) = self.producers[f.producer]
            .context()
            .changelog_offsets
            .lock()
        {
            for (p, next) in offsets.drain() {
                f.batch.set_checkpoint(p, next);
            }
        }
        self.state.write(f.batch).context("writing state")?;
        if !self.exactly_once() && f.offsets.count() > 0 {
            if let Err(e) = consumer.commit(&f.offsets, mode) {
                // State and changelog already reflect these records; a failed offset
                // commit only means a longer replay, whose records are skipped.
                tracing::warn!(error = %e, "offset commit to Kafka failed");
            }
        }
        self.progress
            .committed
            .fetch_add(f.records, Ordering::SeqCst);
        if self.cache.len() > self.cfg.state.profile_cache {
            // Only clean profiles may leave: their latest version is now in RocksDB.
            self.cache.retain(|_, s| s.dirty);
        }
        self.metrics.cached_profiles.set(self.cache.len() as i64);
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(f.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The producer of the current interval.
    fn producer(&self) -> &BaseProducer<DeliveryContext> {
        &self.producers[self.current]
    }

    /// After an error: aborts an open transaction (best effort) and forgets everything
    /// uncommitted, so nothing after the error can be committed. The process stops;
    /// a restart recovers from the last commit.
    fn abort(&mut self) {
        self.poisoned = true;
        self.pending.clear();
        self.dirty.clear();
        self.cache.clear();
        self.tasks.clear();
        if let Some(f) = self.in_flight.take() {
            let _ = f.job.join();
        }
        if self.exactly_once() {
            for p in &self.producers {
                // Fails harmlessly when that producer has no open transaction.
                let _ = p.abort_transaction(Duration::from_secs(10));
            }
        }
        self.in_transaction = false;
    }

    /// Releases revoked partitions: their committed state stays in RocksDB for a
    /// cheap return, their cached profiles and timers leave memory.
    fn release(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let gone: HashSet<i32> = partitions.iter().copied().collect();
        self.cache.retain(|_, s| !gone.contains(&s.partition));
        let cache = &self.cache;
        self.dirty.retain(|id| cache.contains_key(id));
        for p in partitions {
            self.tasks.remove(p);
        }
        Ok(())
    }

    /// Restores assigned partitions from the changelog, then loads their timers.
    fn assign(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        for &p in partitions {
            let restored = self
                .restore(p)
                .with_context(|| format!("restoring partition {p} from {}", self.changelog))?;
            let task = Task {
                timers: self.state.timers(p)?.into_iter().collect(),
                watermark: self.state.watermark(p)?.unwrap_or(i64::MIN),
                watermark_dirty: false,
                applied: self.state.offsets(p)?,
                active: false,
                started: false,
            };
            tracing::info!(
                partition = p,
                restored,
                timers = task.timers.len(),
                "partition ready"
            );
            self.tasks.insert(p, task);
        }
        Ok(())
    }

    /// Replays changelog partition `p` into RocksDB before the task starts.
    fn restore(&mut self, p: i32) -> anyhow::Result<u64> {
        let n = restore_partition(&self.restorer, &self.changelog, &self.state, p)?;
        self.metrics.restored.inc_by(n);
        Ok(n)
    }
}

/// The clients that restore changelog partitions: a read_committed reader, and a
/// read_uncommitted one that asks for the true end of a partition (a read_committed
/// client would answer with the last stable offset, which stops short of a
/// transaction a dead instance left in the middle of committing).
pub struct Restorer {
    reader: BaseConsumer,
    ends: BaseConsumer,
}

impl Restorer {
    /// Clients for the cluster at `bootstrap`.
    pub fn new(bootstrap: &str, group_id: &str) -> anyhow::Result<Restorer> {
        let base = |isolation: &str| {
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("{group_id}-restore"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", isolation)
                .set("enable.partition.eof", "true")
                .set("auto.offset.reset", "earliest")
                .set("fetch.max.bytes", "104857600")
                .set("max.partition.fetch.bytes", "16777216")
                .set("fetch.wait.max.ms", "10")
                .create::<BaseConsumer>()
                .context("creating the changelog restore consumer")
        };
        Ok(Restorer {
            reader: base("read_committed")?,
            ends: base("read_uncommitted")?,
        })
    }
}

/// Replays changelog partition `p` from the local checkpoint to its end into
/// RocksDB with `restorer`, waiting for transactions still open at the end of the
/// partition to be decided.
/// Returns the number of records applied.
pub fn restore_partition(
    restorer: &Restorer,
    changelog: &str,
    state: &StateStore,
    p: i32,
) -> anyhow::Result<u64> {
    let checkpoint = state.checkpoint(p)?;
    // Without a checkpoint this partition has no local state: nothing old to replace.
    let fresh = checkpoint.is_none();
    let from = checkpoint.unwrap_or(0);
    let (low, high) = restorer
        .ends
        .fetch_watermarks(changelog, p, Duration::from_secs(30))?;
    if high <= from.max(low) {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(changelog, p, Offset::Offset(from.max(low)))?;
    restorer.reader.assign(&tpl)?;
    let started = Instant::now();
    let (mut n, mut next) = (0u64, from);
    let mut batch = StateBatch::default();
    let start = from.max(low);
    loop {
        let mut check_position = false;
        match restorer.reader.poll(Duration::from_millis(200)) {
            // Left over from an earlier restore (of another partition, or of this one).
            Some(Ok(m)) if m.partition() != p || m.offset() < start => {}
            Some(Ok(m)) => {
                next = m.offset() + 1;
                let key = m.key().unwrap_or_default();
                if key == WATERMARK_KEY {
                    if let Some(v) = m.payload().and_then(|v| <[u8; 8]>::try_from(v).ok()) {
                        batch.set_watermark(p, i64::from_be_bytes(v));
                    }
                } else {
                    let id = String::from_utf8_lossy(key);
                    // The timer index follows the profile: drop the old entries, add the new.
                    if let Some(old) = if fresh { None } else { state.get(p, &id)? } {
                        for t in &old.profile.timers {
                            batch.delete_timer(p, t.fire_at_ms, &id);
                        }
                    }
                    match m.payload() {
                        Some(v) => {
                            let stored = Stored::decode(&id, v)?;
                            for t in &stored.profile.timers {
                                batch.put_timer(p, t.fire_at_ms, &id);
                            }
                            batch.put_profile(p, &id, v);
                        }
                        None => batch.delete_profile(p, &id),
                    }
                }
                n += 1;
                if batch.len() >= 10_000 {
                    batch.set_checkpoint(p, next);
                    state.write(std::mem::take(&mut batch))?;
                }
            }
            // End-of-partition events may be stale; the position below decides.
            Some(Err(KafkaError::PartitionEOF(_))) | None => check_position = true,
            Some(Err(e)) => return Err(e.into()),
        }
        if next >= high {
            break;
        }
        if check_position {
            // Aborted records and transaction markers are never returned, but the
            // position moves past them once their transaction is decided (a dead
            // instance's open transaction is aborted after transaction.timeout.ms).
            let pos = restorer
                .reader
                .position()?
                .find_partition(changelog, p)
                .map(|e| e.offset());
            if let Some(Offset::Offset(o)) = pos {
                if o >= high {
                    next = next.max(o);
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("changelog restore stuck below offset {high} for 300 s");
            }
        }
    }
    batch.set_checkpoint(p, next);
    state.write(batch)?;
    restorer.reader.unassign()?;
    Ok(n)
}
