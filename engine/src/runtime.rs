//! The processing loop: consume in batches, update profiles, evaluate journeys,
//! produce actions, and commit state, actions and offsets together each interval.
//!
//! Delivery is at-least-once with deterministic action ids: a commit first waits
//! until every action and dead letter of the interval is acknowledged, then writes
//! the interval's profiles together with the source offsets they reflect in one
//! RocksDB batch, then commits the offsets to Kafka. Records at offsets the state
//! already reflects are skipped on replay, so a restart never applies an event
//! twice and never invents a different action; at worst it repeats one, with the
//! same id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rapport_model::{Action, Journeys, Profile};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::ingest::{Decoder, Rejection};
use crate::kafka::{self, consumer_config, producer_config};
use crate::metrics::Metrics;
use crate::state::{Offsets, StateStore};

/// Live counters shared between the engine thread and its observers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Records handled (applied, dead-lettered or skipped).
    pub handled: AtomicU64,
    /// Records whose effects are committed.
    pub committed: AtomicU64,
    /// True once the engine has an assignment and is consuming.
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

/// Starts the engine on its own thread.
pub fn start(
    cfg: Config,
    state: Arc<StateStore>,
    metrics: Metrics,
) -> anyhow::Result<EngineHandle> {
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

/// Logs rebalances and tracks readiness.
struct EngineContext {
    progress: Arc<Progress>,
}

impl ClientContext for EngineContext {}

impl ConsumerContext for EngineContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.progress.ready.store(true, Ordering::SeqCst);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Counts failed deliveries so a commit never covers a lost action.
#[derive(Default)]
struct DeliveryContext {
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            self.failed.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(format!(
                    "{} to {}: {e}",
                    if m.topic().is_empty() {
                        "record"
                    } else {
                        "delivery"
                    },
                    m.topic()
                ));
            }
        }
    }
}

/// A profile held in memory, and whether it changed since the last commit.
struct Slot {
    profile: Profile,
    dirty: bool,
}

/// The consumer, apart from the processing core so that records borrowed from it
/// can be handed to the core.
struct Worker {
    consumer: BaseConsumer<EngineContext>,
    core: Core,
}

/// Everything but the consumer: profiles, producer, pending offsets.
struct Core {
    cfg: Config,
    producer: BaseProducer<DeliveryContext>,
    decoder: Decoder,
    journeys: Journeys,
    state: Arc<StateStore>,
    metrics: Metrics,
    progress: Arc<Progress>,
    /// Decoded profiles; the dirty ones are written at the next commit.
    cache: HashMap<String, Slot>,
    /// The next offset to apply per partition, as reflected by state plus this interval.
    applied: Offsets,
    /// Offsets advanced in this interval.
    pending: Offsets,
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
        let consumer: BaseConsumer<EngineContext> = consumer_config(&cfg.kafka)
            .create_with_context(EngineContext {
                progress: progress.clone(),
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
        let producer: BaseProducer<DeliveryContext> = producer_config(&cfg.kafka)
            .create_with_context(DeliveryContext::default())
            .context("creating the Kafka producer")?;
        let applied = state
            .offsets()
            .context("reading committed offsets from state")?;
        let core = Core {
            decoder: Decoder::new(cfg.engine.max_record_bytes)?,
            journeys: cfg.journeys.clone(),
            producer,
            state,
            metrics,
            progress,
            cache: HashMap::new(),
            applied,
            pending: Offsets::new(),
            pending_records: 0,
            actions: Vec::new(),
            cfg,
        };
        Ok(Worker { consumer, core })
    }

    fn run(mut self, stop: &AtomicBool) -> anyhow::Result<()> {
        let interval = Duration::from_millis(self.core.cfg.engine.commit_interval_ms);
        let mut last_commit = Instant::now();
        self.core.metrics.ready.set(1);
        let result = (|| {
            while !stop.load(Ordering::SeqCst) {
                // Drain what is already fetched, up to the commit deadline.
                let deadline = last_commit + interval;
                let mut wait = Duration::from_millis(20);
                while Instant::now() < deadline {
                    match self.consumer.poll(wait) {
                        Some(Ok(m)) => self.core.handle(&m)?,
                        Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                        None => break,
                    }
                    wait = Duration::ZERO;
                }
                self.core.producer.poll(Duration::ZERO);
                if last_commit.elapsed() >= interval {
                    self.core.commit(&self.consumer, CommitMode::Async)?;
                    last_commit = Instant::now();
                }
            }
            self.core.commit(&self.consumer, CommitMode::Sync)
        })();
        self.core.metrics.ready.set(0);
        self.core.progress.ready.store(false, Ordering::SeqCst);
        if let Err(e) = &result {
            tracing::error!(error = %format!("{e:#}"), "engine stopped on an error");
        }
        result
    }
}

impl Core {
    fn handle(&mut self, m: &BorrowedMessage<'_>) -> anyhow::Result<()> {
        let key = (m.topic().to_owned(), m.partition());
        self.progress.handled.fetch_add(1, Ordering::Relaxed);
        let next = m.offset() + 1;
        match self.applied.get(&key) {
            // State already reflects this record (replay after a restart): skip it.
            Some(&applied) if m.offset() < applied => self.metrics.skipped.inc(),
            _ => {
                match self.decoder.decode(m.payload().unwrap_or_default()) {
                    Ok(tp) => self.apply(m.topic(), &tp)?,
                    Err(r) => self.dead_letter(m, &r)?,
                }
                self.applied.insert(key.clone(), next);
            }
        }
        let applied = self.applied.get(&key).copied().unwrap_or(next).max(next);
        self.pending.insert(key, applied);
        self.pending_records += 1;
        Ok(())
    }

    /// Updates the customer's profile with `tp` and emits the actions it triggers.
    fn apply(&mut self, topic: &str, tp: &rapport_model::Touchpoint) -> anyhow::Result<()> {
        let id = tp.identity().unwrap_or_default();
        let slot = match self.cache.get_mut(id) {
            Some(s) => s,
            None => {
                let profile = self.state.profile(id)?.unwrap_or_else(|| Profile::new(id));
                self.cache.entry(id.to_owned()).or_insert(Slot {
                    profile,
                    dirty: false,
                })
            }
        };
        slot.profile.apply(tp);
        slot.dirty = true;
        self.journeys
            .evaluate(&mut slot.profile, tp, &mut self.actions);
        self.metrics.events.with_label_values(&[topic]).inc();
        for a in std::mem::take(&mut self.actions) {
            self.emit(&a)?;
        }
        Ok(())
    }

    fn emit(&self, a: &Action) -> anyhow::Result<()> {
        let body = serde_json::to_vec(a)?;
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
        Ok(())
    }

    /// Sends a record the engine could not process to the dead-letter topic: the
    /// original key, bytes and headers, plus headers naming where it came from and why.
    fn dead_letter(&self, m: &BorrowedMessage<'_>, r: &Rejection) -> anyhow::Result<()> {
        tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %r.reason, "dead-lettered");
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

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> anyhow::Result<()> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing to {}: {e}", record_topic(&self.cfg)),
            }
        }
    }

    /// Makes the interval's effects durable: actions acknowledged, then profiles and
    /// offsets in one RocksDB batch, then offsets committed to Kafka.
    fn commit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        mode: CommitMode,
    ) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.producer
            .flush(Duration::from_secs(60))
            .context("waiting for actions to be acknowledged")?;
        let ctx = self.producer.context();
        if ctx.failed.load(Ordering::SeqCst) > 0 {
            let last = ctx
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            bail!("{} records could not be delivered ({last}); stopping without committing so they are retried", ctx.failed.load(Ordering::SeqCst));
        }
        self.state
            .commit(
                self.cache.values().filter(|s| s.dirty).map(|s| &s.profile),
                &self.pending,
            )
            .context("writing state")?;
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.pending {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            // State already reflects these offsets; a failed Kafka commit only means a
            // longer replay, whose records are skipped.
            tracing::warn!(error = %e, "offset commit to Kafka failed");
        }
        self.pending.clear();
        self.progress
            .committed
            .fetch_add(self.pending_records, Ordering::SeqCst);
        self.pending_records = 0;
        if self.cache.len() > self.cfg.state.profile_cache {
            self.cache.clear();
        } else {
            self.cache.values_mut().for_each(|s| s.dirty = false);
        }
        self.metrics.cached_profiles.set(self.cache.len() as i64);
        self.metrics.commits.inc();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn record_topic(cfg: &Config) -> &str {
    &cfg.kafka.action_topic
}
