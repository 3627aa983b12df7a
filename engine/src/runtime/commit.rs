//! Making an interval's effects durable: the commit protocol of each guarantee as
//! its own type, and the committer that runs one interval's Kafka commit in the
//! background on one of two producers while the next interval is processed on the
//! other.
//!
//! Every failure is classified once, here: an error Kafka may still answer
//! (a timed-out request while a broker restarts) is retried until
//! `engine.kafka_unavailable_timeout_ms`; anything else fails the interval, which
//! the engine then drops and redoes from the last commit (see `Core::rewind`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientContext, Message, TopicPartitionList};

use crate::kafka::requests::Requests;
use crate::metrics::Metrics;
use crate::processor::CommitCut;
use crate::state::{StateBatch, StateStore};

mod abort;
mod watch;
pub(super) use abort::Abort;
use watch::CallWatch;

use super::background::{Background, Job};
use super::rebalance::EngineContext;
use super::LoopError;

/// How long a producer made at start-up may take to prepare.
const INIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one call of an interval's commit into the Kafka client (adding
/// the offsets, committing the transaction) may wait for an answer before it
/// is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Committer::finish`] waits for the commit in flight before it
/// looks again whether the commit's call into the Kafka client is stuck.
const FINISH_STEP: Duration = Duration::from_secs(1);

/// The engine's producers.
pub(super) type Producer = BaseProducer<DeliveryContext>;

/// Counts failed deliveries so a commit never covers a lost record, and notes the
/// changelog offsets written, for the restore checkpoint.
#[derive(Default)]
pub(super) struct DeliveryContext {
    changelog: String,
    failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    changelog_offsets: Mutex<HashMap<i32, i64>>,
    /// The engine's producers' requests to the brokers, from their statistics.
    requests: Option<Arc<Requests>>,
    /// The commit thread's call into this producer, while one runs.
    calls: CallWatch,
}

impl DeliveryContext {
    /// Forgets the outcome of an earlier interval on this producer.
    fn reset(&self) {
        self.failed.store(0, Ordering::SeqCst);
        if let Ok(mut o) = self.changelog_offsets.lock() {
            o.clear();
        }
    }

    fn failure(&self) -> Option<String> {
        let failed = self.failed.load(Ordering::SeqCst);
        (failed > 0).then(|| {
            let last = self.last_error.lock().ok().and_then(|l| l.clone());
            format!(
                "{failed} records could not be delivered ({})",
                last.unwrap_or_default()
            )
        })
    }
}

impl ClientContext for DeliveryContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        if let Some(r) = &self.requests {
            r.observe(&statistics);
        }
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            // A touch is no profile: the partition's checkpoint is where its
            // restore gets to.
            Ok(m) if m.topic() == self.changelog && m.key() != Some(super::TOUCH_KEY) => {
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

/// Why an interval's Kafka commit failed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The interval cannot commit (a rebalance moved the group on, a delivery
    /// failed, the transaction was fenced or must abort): drop it and redo it.
    #[error("{0}")]
    Failed(String),
    /// Kafka did not answer within `engine.kafka_unavailable_timeout_ms`.
    #[error("{0}")]
    Unavailable(String),
    /// Kafka committed the interval but RocksDB could not take its state.
    #[error("writing state: {0}")]
    State(#[from] crate::state::StateError),
}

/// How an interval's records and consumed offsets become durable. One
/// implementation per guarantee, so the processing loop has no `if` on it.
pub(super) trait CommitProtocol: Send + Sync {
    /// Producer settings for producer `n` of this instance.
    fn configure(&self, producer: &mut ClientConfig, n: usize);
    /// Prepares a new producer (under exactly-once: fences an earlier
    /// incarnation), waiting up to `timeout`; a retriable error may be retried.
    fn init(&self, p: &Producer, timeout: Duration) -> KafkaResult<()>;
    /// Opens an interval on `p`.
    fn begin(&self, p: &Producer) -> KafkaResult<()>;
    /// Whether [`CommitProtocol::seal`] needs the consumer group's metadata.
    fn wants_group_metadata(&self) -> bool;
    /// Whether a rewind goes back to this instance's own RocksDB state of its
    /// last commit for the partitions it kept, instead of restoring from the
    /// changelog (which may hold records of the failed interval).
    fn rewinds_from_local_state(&self) -> bool;
    /// Once every record of the interval is sent, while they are on their way:
    /// adds the consumed `offsets` to the interval, noting the phase in
    /// `metrics`. Runs on the commit thread.
    fn add_offsets(
        &self,
        p: &Producer,
        offsets: &TopicPartitionList,
        meta: Option<&ConsumerGroupMetadata>,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Result<(), CommitError>;
    /// Once every record of the interval is acknowledged: makes it durable,
    /// noting the phase in `metrics`. Runs on the commit thread.
    fn seal(&self, p: &Producer, deadline: Instant, metrics: &Metrics) -> Result<(), CommitError>;
    /// After the interval's state is in RocksDB.
    fn after_state(&self, consumer: &BaseConsumer<EngineContext>, offsets: &TopicPartitionList);
    /// Drops an interval that will not commit, waiting up to `timeout`; a
    /// retriable error may be retried.
    fn abort(&self, p: &Producer, timeout: Duration) -> KafkaResult<()>;
}

/// Actions, dead letters, changelog records and the consumed offsets commit in
/// one Kafka transaction per interval (offsets with the group's metadata, KIP-447).
pub(super) struct ExactlyOnce {
    /// `<group_id>-<instance_id>`; producer `n` uses `<this>-<n>`.
    pub transactional_id: String,
    /// `transaction.timeout.ms`.
    pub timeout_ms: u64,
}

impl CommitProtocol for ExactlyOnce {
    fn configure(&self, producer: &mut ClientConfig, n: usize) {
        producer
            .set("transactional.id", format!("{}-{n}", self.transactional_id))
            .set("transaction.timeout.ms", self.timeout_ms.to_string());
    }

    fn init(&self, p: &Producer, timeout: Duration) -> KafkaResult<()> {
        p.init_transactions(timeout)
    }

    fn begin(&self, p: &Producer) -> KafkaResult<()> {
        p.begin_transaction()
    }

    fn wants_group_metadata(&self) -> bool {
        true
    }

    /// Aborted intervals are invisible to the read_committed restore: the
    /// changelog is exactly what was committed.
    fn rewinds_from_local_state(&self) -> bool {
        false
    }

    /// The offsets go to the transaction's coordinator while the records are
    /// in flight to their partitions' leaders: the commit waits for the
    /// longer of the two instead of both in turn. Any of them failing aborts
    /// the transaction, records and offsets alike.
    fn add_offsets(
        &self,
        p: &Producer,
        offsets: &TopicPartitionList,
        meta: Option<&ConsumerGroupMetadata>,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Result<(), CommitError> {
        if let Some(meta) = meta.filter(|_| offsets.count() > 0) {
            let started = Instant::now();
            let calls = &p.context().calls;
            retrying("adding offsets to the transaction", deadline, calls, |t| {
                p.send_offsets_to_transaction(offsets, meta, t)
            })?;
            metrics.phase_done("offsets", started);
        }
        Ok(())
    }

    fn seal(&self, p: &Producer, deadline: Instant, metrics: &Metrics) -> Result<(), CommitError> {
        let started = Instant::now();
        let calls = &p.context().calls;
        retrying("committing the Kafka transaction", deadline, calls, |t| {
            p.commit_transaction(t)
        })?;
        metrics.phase_done("transaction", started);
        Ok(())
    }

    fn after_state(&self, _: &BaseConsumer<EngineContext>, _: &TopicPartitionList) {}

    fn abort(&self, p: &Producer, timeout: Duration) -> KafkaResult<()> {
        p.abort_transaction(timeout)
    }
}

/// No transactions: records are acknowledged before the offsets are committed.
/// After a failure an action may repeat, always with the same id.
pub(super) struct AtLeastOnce;

impl CommitProtocol for AtLeastOnce {
    fn configure(&self, _: &mut ClientConfig, _: usize) {}

    fn init(&self, _: &Producer, _: Duration) -> KafkaResult<()> {
        Ok(())
    }

    fn begin(&self, _: &Producer) -> KafkaResult<()> {
        Ok(())
    }

    fn wants_group_metadata(&self) -> bool {
        false
    }

    /// A failed interval may have its changelog records acknowledged while an
    /// action was not: restoring them would count the interval's records as
    /// applied and never send that action. RocksDB holds the last commit.
    fn rewinds_from_local_state(&self) -> bool {
        true
    }

    fn add_offsets(
        &self,
        _: &Producer,
        _: &TopicPartitionList,
        _: Option<&ConsumerGroupMetadata>,
        _: Instant,
        _: &Metrics,
    ) -> Result<(), CommitError> {
        Ok(())
    }

    fn seal(&self, _: &Producer, _: Instant, _: &Metrics) -> Result<(), CommitError> {
        Ok(())
    }

    fn after_state(&self, consumer: &BaseConsumer<EngineContext>, offsets: &TopicPartitionList) {
        if offsets.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(offsets, CommitMode::Async) {
            // State and changelog already reflect these records; a failed offset
            // commit only means a longer replay, whose records are skipped.
            tracing::warn!(error = %e, "offset commit to Kafka failed");
        }
    }

    fn abort(&self, _: &Producer, _: Duration) -> KafkaResult<()> {
        Ok(())
    }
}

/// Whether a transactional call failed only for now (a request that timed
/// out while a broker was away) and may be made again.
fn may_retry(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(e)
        if e.is_retriable() && !e.txn_requires_abort() && !e.is_fatal())
}

/// Runs `op` until it succeeds, retrying errors Kafka marks retriable (a request
/// that timed out while a broker was away) until `deadline`. Each call is
/// given [`CALL_TIMEOUT`] and watched by `calls`, as `what`.
fn retrying(
    what: &'static str,
    deadline: Instant,
    calls: &CallWatch,
    mut op: impl FnMut(Duration) -> KafkaResult<()>,
) -> Result<(), CommitError> {
    loop {
        let err = match calls.call(what, CALL_TIMEOUT, &mut op) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !may_retry(&err) {
            return Err(CommitError::Failed(format!("{what}: {err}")));
        }
        if Instant::now() >= deadline {
            return Err(CommitError::Unavailable(format!("{what}: {err}")));
        }
        tracing::warn!(error = %err, "{what}: Kafka did not answer; retrying");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The longest a flush serves delivery reports before it looks again whether
/// the last record is acknowledged.
///
/// `BaseProducer::flush(timeout)` serves delivery reports by polling for the
/// rest of its timeout (up to 100 ms at a time) before it looks again, so a
/// flush of records acknowledged within a few milliseconds took 100 ms or more,
/// and every interval's commit with it. Looking after 1, 2, 4, 4, ... ms
/// returns within a few milliseconds of the last acknowledgement, without
/// waking the client's threads every millisecond of a long flush.
const FLUSH_STEP: Duration = Duration::from_millis(4);

/// Asks the brokers to take what lingers on `p` now, without waiting.
fn send_now(p: &Producer) {
    let _ = p.flush(Duration::ZERO);
}

/// Waits until every record sent on `p` is acknowledged.
fn flush(p: &Producer, deadline: Instant) -> Result<(), CommitError> {
    send_now(p);
    let mut step = Duration::from_millis(1);
    loop {
        p.poll(step);
        if let Some(failure) = p.context().failure() {
            return Err(CommitError::Failed(failure));
        }
        let left = p.in_flight_count();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CommitError::Unavailable(format!(
                "waiting for records to be acknowledged: {left} not acknowledged yet"
            )));
        }
        step = (step * 2).min(FLUSH_STEP);
    }
}

/// One interval's offsets and what is finished once it has committed (its
/// state changes go to the commit thread, which writes them).
pub(super) struct Interval {
    /// Consumed offsets (next to read).
    pub offsets: TopicPartitionList,
    /// Records handled in the interval.
    pub records: u64,
    /// When the commit started.
    pub started: Instant,
    /// Timestamp of the interval's oldest record, epoch ms (for the latency).
    pub oldest_ms: Option<i64>,
    /// Erasures to finish once committed (compaction, receipts).
    pub erasures: Vec<crate::privacy::erasure::Completed>,
    /// The processor's number for the commit ([`crate::processor::CommitCut`]).
    pub cut: u64,
    /// The state written to RocksDB, once the commit has ended: the processor
    /// keeps the profiles' encodings from it.
    pub written: StateBatch,
}

/// The interval being committed on the commit thread.
struct InFlight {
    job: Job<Result<StateBatch, CommitError>>,
    interval: Interval,
    /// Set once every record of the interval is acknowledged, before the
    /// interval is sealed: each has its place in its partition, so a record
    /// sent from now on lands after it.
    delivered: Arc<AtomicBool>,
    /// The producer the interval is committed on.
    producer: usize,
    /// Set when the engine gives the commit up ([`Committer::abandon`]): if
    /// its stuck call returns after all, it goes no further.
    given_up: Arc<AtomicBool>,
}

/// Two producers used in turn: one commits an interval in the background while
/// the other carries the next interval's records.
pub(super) struct Committer {
    protocol: Arc<dyn CommitProtocol>,
    config: ClientConfig,
    changelog: String,
    /// The producers' requests to the brokers, counted from their statistics.
    requests: Arc<Requests>,
    producers: [Arc<Producer>; 2],
    current: usize,
    /// Whether the current producer has an interval open.
    open: bool,
    in_flight: Option<InFlight>,
    /// Parts of the current interval's changelog written ahead of its commit
    /// ([`Committer::write_ahead`]): their state changes, once written.
    ahead: Vec<Job<Result<StateBatch, CommitError>>>,
    /// Where commits run, one after the other ([`super::background`]).
    thread: Background,
    /// A producer whose commit was given up with its call into the Kafka
    /// client stuck: it is replaced, not aborted, by the next abort.
    abandoned: Option<usize>,
    /// How long past its timeout a call of the commit in flight may run
    /// before the commit is given up ([`watch::GRACE`]).
    grace: Duration,
    patience: Duration,
    metrics: Metrics,
    state: Arc<StateStore>,
}

impl Committer {
    /// Creates and prepares both producers; the commit phases are timed in
    /// `metrics`, and each committed interval's state goes to `state`.
    pub fn new(
        protocol: Arc<dyn CommitProtocol>,
        config: ClientConfig,
        changelog: String,
        patience: Duration,
        metrics: Metrics,
        state: Arc<StateStore>,
    ) -> anyhow::Result<Self> {
        let requests = Arc::new(Requests::new(&metrics, "producer"));
        let make = |n| make_producer(protocol.as_ref(), &config, &changelog, n, &requests);
        let producers = [make(0)?, make(1)?];
        Ok(Committer {
            protocol,
            config,
            changelog,
            requests,
            producers,
            current: 0,
            open: false,
            in_flight: None,
            ahead: Vec::new(),
            thread: Background::start("rapport-commit")?,
            abandoned: None,
            grace: watch::GRACE,
            patience,
            metrics,
            state,
        })
    }

    /// The commit protocol of the configured guarantee.
    pub fn protocol(&self) -> &dyn CommitProtocol {
        self.protocol.as_ref()
    }

    /// Whether the current interval has anything to commit (a record was sent).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The producer of the current interval.
    pub fn producer(&self) -> &Producer {
        &self.producers[self.current]
    }

    /// Serves the producers' callbacks (delivery reports, statistics) that
    /// no flush is serving: the current producer's, and the other one's while
    /// no commit runs on it (an idle producer's statistics would otherwise
    /// wait for its next interval).
    pub fn serve(&self) {
        self.producer().poll(Duration::ZERO);
        if self.in_flight.is_none() {
            self.producers[1 - self.current].poll(Duration::ZERO);
        }
    }

    fn open(&mut self) -> Result<(), LoopError> {
        if !self.open {
            let p = &self.producers[self.current];
            p.context().reset();
            self.protocol
                .begin(p)
                .map_err(|e| LoopError::Rewind(format!("beginning a Kafka transaction: {e}")))?;
            self.open = true;
        }
        Ok(())
    }

    /// Sends a record as part of the current interval.
    pub fn send(&mut self, record: BaseRecord<'_, [u8], [u8]>) -> Result<(), LoopError> {
        self.open()?;
        let topic = record.topic;
        rapport_connectors::publish::send_when_room(self.producer(), record)
            .map_err(|e| LoopError::Rewind(format!("producing to {topic}: {e}")))
    }

    /// Encodes the profiles of `cut`, changed so far in the current interval,
    /// and sends them to the changelog now, on the commit thread, as part of
    /// the interval: the commit that ends it then has only the later changes
    /// to encode and acknowledge before its transaction commits. A profile
    /// changed again before the commit is written again by it (the changelog
    /// is compacted, and RocksDB takes the later write of the batch).
    pub fn write_ahead(&mut self, cut: CommitCut) -> Result<(), LoopError> {
        self.open()?;
        let producer = self.producers[self.current].clone();
        let (changelog, metrics) = (self.changelog.clone(), self.metrics.clone());
        let job = self.thread.run(move || {
            let encoding = Instant::now();
            let mut batch = StateBatch::default();
            write_changelog(cut, &producer, &changelog, &mut batch)?;
            metrics.phase_done("ahead", encoding);
            Ok(batch)
        });
        self.ahead.push(job);
        Ok(())
    }

    /// Starts committing the current interval in the background and moves on to
    /// the other producer. The commit thread encodes the changed profiles of
    /// `cut` and sends them to the changelog, waits for the interval's records,
    /// commits it in Kafka and then writes its state changes `batch` (with the
    /// profiles and the changelog checkpoints reached) to RocksDB.
    pub fn start(
        &mut self,
        interval: Interval,
        batch: StateBatch,
        cut: CommitCut,
        meta: Option<ConsumerGroupMetadata>,
    ) -> Result<(), LoopError> {
        self.open()?;
        let ahead = std::mem::take(&mut self.ahead);
        let producer = self.producers[self.current].clone();
        let protocol = self.protocol.clone();
        let offsets = interval.offsets.clone();
        let deadline = Instant::now() + self.patience;
        let (metrics, state) = (self.metrics.clone(), self.state.clone());
        let changelog = self.changelog.clone();
        let delivered = Arc::new(AtomicBool::new(false));
        let acknowledged = delivered.clone();
        let given_up = Arc::new(AtomicBool::new(false));
        let abandoned = given_up.clone();
        let go_on = move || match abandoned.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err(CommitError::Failed("the commit was given up".into())),
        };
        let job = self.thread.run(move || {
            // What was written ahead comes first: the interval's later changes
            // (and erasures) follow it.
            let mut written = written_ahead(ahead)?;
            written.append(batch);
            let mut batch = written;
            let encoding = Instant::now();
            write_changelog(cut, &producer, &changelog, &mut batch)?;
            metrics.phase_done("encode", encoding);
            let started = Instant::now();
            send_now(&producer);
            protocol.add_offsets(&producer, &offsets, meta.as_ref(), deadline, &metrics)?;
            flush(&producer, deadline)?;
            metrics.phase_done("flush", started);
            go_on()?;
            acknowledged.store(true, Ordering::SeqCst);
            protocol.seal(&producer, deadline, &metrics)?;
            go_on()?;
            if let Ok(mut o) = producer.context().changelog_offsets.lock() {
                for (p, next) in o.drain() {
                    batch.set_checkpoint(p, next);
                }
            }
            let writing = Instant::now();
            state.write(&batch)?;
            metrics.phase_done("state", writing);
            Ok(batch)
        });
        self.in_flight = Some(InFlight {
            job,
            interval,
            delivered,
            producer: self.current,
            given_up,
        });
        self.current = 1 - self.current;
        self.open = false;
        Ok(())
    }

    /// Whether a background commit, or a part of the changelog written ahead,
    /// is still running.
    pub fn committing(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| !f.job.is_finished())
            || self.ahead.iter().any(|j| !j.is_finished())
    }

    /// Whether every record of the interval being committed in the background
    /// is acknowledged (its commit may still be sealing it).
    pub fn in_flight_delivered(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| f.delivered.load(Ordering::SeqCst))
    }

    /// Whether the background commit has ended (successfully or not), so
    /// [`Committer::finish`] returns without waiting.
    pub fn in_flight_ended(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.job.is_finished())
    }

    /// Waits up to `limit` for the background commit, and the parts of the
    /// changelog written ahead, to end; whether none is running then.
    pub fn wait_in_flight(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.in_flight.as_mut().is_none_or(|f| f.job.wait(left()))
            && self.ahead.iter_mut().all(|j| j.wait(left()))
    }

    /// Why the background commit is given up, if its call into the Kafka
    /// client has overrun its timeout by more than the grace ([`watch`]).
    pub fn stuck(&self) -> Option<String> {
        let f = self.in_flight.as_ref()?;
        let calls = &self.producers[f.producer].context().calls;
        let late = calls.overdue(Instant::now(), self.grace)?;
        Some(format!(
            "the Kafka client has not returned from {} {} s after its timeout (confluentinc/librdkafka#5456): the commit is given up and its producer replaced",
            late.what,
            late.by.as_secs()
        ))
    }

    /// Gives up the background commit, stuck in a call into the Kafka client
    /// (`why`): its thread is left to that call, later commits run on a new
    /// one, and its producer is marked for replacement by the abort under way.
    /// Should the call return after all, the commit goes no further.
    fn abandon(&mut self, why: &str) -> anyhow::Result<()> {
        let Some(f) = self.in_flight.take() else {
            return Ok(());
        };
        f.given_up.store(true, Ordering::SeqCst);
        // The parts of the open interval's changelog queued behind the stuck
        // commit belong to an interval the abort drops: they never run.
        let stuck = std::mem::replace(&mut self.thread, Background::start("rapport-commit")?);
        stuck.abandon();
        self.ahead.clear();
        self.abandoned = Some(f.producer);
        self.metrics.commits_abandoned.inc();
        tracing::warn!(reason = %why, producer = f.producer, "commit given up");
        Ok(())
    }

    /// Waits for the background commit; returns its interval once Kafka has
    /// committed it and its state is in RocksDB. A commit whose call into the
    /// Kafka client is stuck ([`Committer::stuck`]) fails the interval.
    pub fn finish(&mut self) -> Result<Option<Interval>, LoopError> {
        loop {
            let Some(f) = self.in_flight.as_mut() else {
                return Ok(None);
            };
            if f.job.wait(FINISH_STEP) {
                break;
            }
            if let Some(why) = self.stuck() {
                return Err(LoopError::Rewind(why));
            }
        }
        let Some(f) = self.in_flight.take() else {
            return Ok(None);
        };
        match f.job.join() {
            Err(_) => Err(LoopError::Fatal(anyhow::anyhow!("commit thread panicked"))),
            Ok(Err(CommitError::Failed(why))) => Err(LoopError::Rewind(why)),
            Ok(Err(CommitError::Unavailable(why))) => Err(LoopError::Fatal(anyhow::anyhow!(
                "the Kafka cluster did not answer for {} s ({why}); check that it is reachable, or raise engine.kafka_unavailable_timeout_ms",
                self.patience.as_secs()
            ))),
            Ok(Err(e @ CommitError::State(_))) => Err(LoopError::Fatal(e.into())),
            Ok(Ok(written)) => Ok(Some(Interval {
                written,
                ..f.interval
            })),
        }
    }
}

/// The state changes of the parts of an interval's changelog written ahead,
/// in order. They ran before the commit on the same thread, so they have
/// ended.
fn written_ahead(
    ahead: Vec<Job<Result<StateBatch, CommitError>>>,
) -> Result<StateBatch, CommitError> {
    let mut batch = StateBatch::default();
    for job in ahead {
        let part = job
            .join()
            .map_err(|_| CommitError::Failed("writing the changelog ahead panicked".into()))??;
        batch.append(part);
    }
    Ok(batch)
}

/// Encodes the changed profiles of `cut` and sends each (one record per profile,
/// not per event, and each moved watermark) to the `changelog` on `p`, the
/// interval's producer, and adds them to `batch`.
fn write_changelog(
    cut: CommitCut,
    p: &Producer,
    changelog: &str,
    batch: &mut StateBatch,
) -> Result<(), CommitError> {
    cut.write(batch, |(partition, key, value)| {
        rapport_connectors::publish::send_when_room(
            p,
            BaseRecord::to(changelog)
                .partition(partition)
                .key(key)
                .payload(value),
        )
        .map_err(|e| CommitError::Failed(format!("producing to {changelog}: {e}")))
    })
}

/// A producer for slot `n`, created and prepared (under exactly-once:
/// fencing an earlier incarnation, waiting up to [`INIT_TIMEOUT`]).
fn make_producer(
    protocol: &dyn CommitProtocol,
    config: &ClientConfig,
    changelog: &str,
    n: usize,
    requests: &Arc<Requests>,
) -> anyhow::Result<Arc<Producer>> {
    use anyhow::Context as _;
    let producer = create_producer(protocol, config, changelog, n, requests)?;
    protocol
        .init(&producer, INIT_TIMEOUT)
        .context("initialising Kafka transactions")?;
    Ok(Arc::new(producer))
}

/// A producer for slot `n`, not prepared yet.
fn create_producer(
    protocol: &dyn CommitProtocol,
    config: &ClientConfig,
    changelog: &str,
    n: usize,
    requests: &Arc<Requests>,
) -> anyhow::Result<Producer> {
    use anyhow::Context as _;
    let mut pc = config.clone();
    protocol.configure(&mut pc, n);
    pc.create_with_context(DeliveryContext {
        changelog: changelog.to_owned(),
        requests: Some(requests.clone()),
        ..Default::default()
    })
    .context("creating the Kafka producer")
}

#[cfg(test)]
mod tests;
