//! Dropping what was not committed, one step at a time. Each step waits on
//! Kafka for at most [`STEP`], so the main loop serves its consumer between
//! steps (rebalance callbacks, statistics, errors) however long the cluster
//! stays away, instead of sitting in one call for tens of seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer as _, PurgeConfig};

use super::{create_producer, may_retry, Committer, Interval, Producer};

/// The longest one step waits on Kafka.
pub(in crate::runtime) const STEP: Duration = Duration::from_secs(1);
/// How long the delivery reports of records in flight are awaited (an abort
/// waits for them) before the abort goes ahead regardless.
const DRAIN_FOR: Duration = Duration::from_secs(10);
/// How long a producer's abort is retried before the producer is replaced.
const ABORT_FOR: Duration = Duration::from_secs(10);
/// How long a replacement producer's preparation is retried before the step
/// fails, and the recovery starts again (until the engine's patience ends).
const INIT_FOR: Duration = Duration::from_secs(30);

/// An abort in progress ([`Committer::abort_step`]).
#[derive(Default)]
pub(in crate::runtime) struct Abort {
    stage: Stage,
    /// The background commit's interval, when Kafka committed it after all.
    pub committed: Option<Interval>,
}

#[derive(Default)]
enum Stage {
    /// Waiting for the background commit to end.
    #[default]
    AwaitCommit,
    /// Producer `n`'s unsent records are dropped; the delivery reports of
    /// those in flight are awaited.
    Drain { n: usize, since: Instant },
    /// Producer `n`'s open transaction is aborted.
    Abort { n: usize, since: Instant },
    /// Producer `n` could not abort: a new one with the same transactional id
    /// (which fences the old one and aborts its transaction) is prepared.
    Replace {
        n: usize,
        since: Instant,
        new: Option<Arc<Producer>>,
    },
    /// Both producers' intervals are dropped.
    Done,
}

impl Committer {
    /// Takes the next step of `a`, waiting on Kafka for at most [`STEP`];
    /// true once both producers' intervals are dropped. An error (a
    /// replacement producer that cannot be prepared) leaves the old producer
    /// in place: a new [`Abort`] starts over.
    pub(in crate::runtime) fn abort_step(&mut self, a: &mut Abort) -> anyhow::Result<bool> {
        a.stage = match std::mem::take(&mut a.stage) {
            Stage::AwaitCommit => self.await_commit(a)?,
            Stage::Drain { n, since } => self.drain_step(n, since),
            Stage::Abort { n, since } => self.abort_producer(n, since),
            Stage::Replace { n, since, new } => self.replace_step(n, since, new)?,
            Stage::Done => Stage::Done,
        };
        Ok(matches!(a.stage, Stage::Done))
    }

    /// Waits for the background commit to end (noting in `a` an interval
    /// Kafka committed after all), or gives it up if it is stuck in a call
    /// into the Kafka client; then the first producer's turn.
    fn await_commit(&mut self, a: &mut Abort) -> anyhow::Result<Stage> {
        if self.committing() {
            let Some(why) = self.stuck() else {
                return Ok(Stage::AwaitCommit);
            };
            self.abandon(&why)?;
        }
        a.committed = self.finish().unwrap_or_default();
        // What was written ahead of the dropped interval's commit goes with it.
        self.ahead.clear();
        Ok(self.drain(0))
    }

    /// Serves producer `n`'s delivery reports for up to [`STEP`]; its abort
    /// once none is in flight, or once they have been awaited [`DRAIN_FOR`].
    fn drain_step(&self, n: usize, since: Instant) -> Stage {
        let p = &self.producers[n];
        let started = Instant::now();
        while p.in_flight_count() > 0 && started.elapsed() < STEP {
            p.poll(Duration::from_millis(20));
        }
        match p.in_flight_count() > 0 && since.elapsed() < DRAIN_FOR {
            true => Stage::Drain { n, since },
            false => Stage::Abort {
                n,
                since: Instant::now(),
            },
        }
    }

    /// Aborts producer `n`'s open interval, retrying what Kafka may still
    /// answer for [`ABORT_FOR`]; a producer that cannot abort is replaced.
    fn abort_producer(&mut self, n: usize, since: Instant) -> Stage {
        match self.protocol.abort(&self.producers[n], STEP) {
            Ok(()) => self.aborted(n),
            // Nothing was open on this producer.
            Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::State => {
                self.aborted(n)
            }
            Err(e) if may_retry(&e) && since.elapsed() < ABORT_FOR => Stage::Abort { n, since },
            // Anything else, also records still in flight that will not
            // complete: a new producer with the same transactional id
            // fences this one, and its preparation aborts the transaction.
            Err(e) => {
                tracing::warn!(error = %e, "replacing a producer that cannot abort its transaction");
                Stage::Replace {
                    n,
                    since: Instant::now(),
                    new: None,
                }
            }
        }
    }

    /// Prepares `new`, a replacement for producer `n` (made now if `None`),
    /// for up to [`STEP`], retrying for [`INIT_FOR`]; once prepared it takes
    /// the old one's place.
    fn replace_step(
        &mut self,
        n: usize,
        since: Instant,
        new: Option<Arc<Producer>>,
    ) -> anyhow::Result<Stage> {
        let p = match new {
            Some(p) => p,
            None => Arc::new(create_producer(
                self.protocol.as_ref(),
                &self.config,
                &self.changelog,
                n,
                &self.requests,
            )?),
        };
        match self.protocol.init(&p, STEP) {
            Ok(()) => {
                self.producers[n] = p;
                if self.abandoned == Some(n) {
                    self.abandoned = None;
                }
                Ok(self.aborted(n))
            }
            Err(e) if may_retry(&e) && since.elapsed() < INIT_FOR => Ok(Stage::Replace {
                n,
                since,
                new: Some(p),
            }),
            Err(e) => Err(anyhow::Error::new(e).context("initialising Kafka transactions")),
        }
    }

    /// Drops everything not committed, waiting as long as that takes (see
    /// [`Committer::abort_step`]); returns the background commit's interval if
    /// Kafka committed it after all. For an engine that stops: one that goes
    /// on steps through the abort between polls of its consumer.
    pub fn abort(&mut self) -> anyhow::Result<Option<Interval>> {
        let mut a = Abort::default();
        while !self.abort_step(&mut a)? {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(a.committed)
    }

    /// Producer `n`'s unsent records dropped; the step that awaits the rest.
    /// A producer whose commit was given up, still in its stuck call, is
    /// replaced instead: a new one fences it and aborts its transaction.
    fn drain(&self, n: usize) -> Stage {
        if self.abandoned == Some(n) {
            return Stage::Replace {
                n,
                since: Instant::now(),
                new: None,
            };
        }
        self.producers[n].purge(PurgeConfig::default().queue());
        Stage::Drain {
            n,
            since: Instant::now(),
        }
    }

    /// Producer `n`'s interval is dropped: the next producer's turn, or done.
    fn aborted(&mut self, n: usize) -> Stage {
        self.producers[n].context().reset();
        if n == 0 {
            return self.drain(1);
        }
        self.open = false;
        Stage::Done
    }
}
