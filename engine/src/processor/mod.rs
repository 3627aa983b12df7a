//! The per-record work, with Kafka and RocksDB at arm's length: records and a clock
//! in; actions, rejections and state changes out.
//!
//! decode -> key rule -> profile update -> journeys -> timers. The live engine
//! (`runtime`), `rapport replay`, the tests and the benchmarks all drive this one
//! processor; nothing re-implements the pipeline. Its state is per partition
//! ([`task`]): profiles, timers, watermark and applied offsets keyed by
//! (partition, customer), never by customer alone.

pub(crate) mod task;

use std::sync::Arc;

use rapport_journeys::{CompiledJourneys, Decision, Outcome as Judgement, Output};
use rapport_model::emotion;
use rapport_model::profile::Timer;
use rapport_model::{Action, EventType, Touchpoint};

use crate::ingest::route::KeyRule;
use crate::ingest::{Decoder, Rejection, SchemaError};
use crate::metrics::Metrics;
use crate::runtime::WATERMARK_KEY;
use crate::state::{topic_hash, StateBatch, StateError, StateStore};

use self::task::{timer_times, Task};

/// One input record, wherever it came from.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition; the task that owns the customer.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// The record's key.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
}

/// What became of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to its customer's profile (actions, if any, were pushed).
    Applied,
    /// Already reflected in state (a replay after a restart): nothing done.
    AlreadyApplied,
    /// Refused: the caller dead-letters it with this reason.
    Rejected(Rejection),
    /// Its partition is not owned here (fetched just before a revocation).
    NotOwned,
}

/// Decodes, applies and evaluates records for the partitions it owns.
pub struct Processor {
    decoder: Decoder,
    rule: KeyRule,
    journeys: Arc<CompiledJourneys>,
    state: Arc<StateStore>,
    metrics: Metrics,
    profile_cache: usize,
    tasks: hashbrown::HashMap<i32, Task>,
    /// What the journeys and the delivery policy decided for the current record.
    output: Output,
    /// Decisions not to act (capped, deferred, no consent, suppressed, held out)
    /// since the last [`Processor::take_decisions`].
    not_sent: Vec<Decision>,
    /// Decision counters by journey and outcome, resolved once.
    decision_counters: Vec<((String, Judgement), prometheus::IntCounter)>,
    /// Per-topic event counters, resolved once.
    event_counters: Vec<(String, prometheus::IntCounter)>,
}

/// A profile or watermark record to write to the changelog: partition, key, value.
pub type ChangelogRecord<'a> = (i32, &'a [u8], &'a [u8]);

impl Processor {
    /// A processor reading records up to `max_record_bytes`, checking keys with
    /// `rule`, evaluating `journeys`, with state in `state` and at most about
    /// `profile_cache` clean profiles kept decoded.
    pub fn new(
        max_record_bytes: usize,
        rule: KeyRule,
        journeys: Arc<CompiledJourneys>,
        state: Arc<StateStore>,
        metrics: Metrics,
        profile_cache: usize,
    ) -> Result<Self, SchemaError> {
        Ok(Processor {
            decoder: Decoder::new(max_record_bytes)?,
            rule,
            journeys,
            state,
            metrics,
            profile_cache,
            tasks: hashbrown::HashMap::new(),
            output: Output::new(),
            not_sent: Vec::new(),
            decision_counters: Vec::new(),
            event_counters: Vec::new(),
        })
    }

    /// The state store.
    pub fn state(&self) -> &Arc<StateStore> {
        &self.state
    }

    /// Starts the task of partition `p` from its committed state (restore first).
    pub fn start_partition(&mut self, p: i32) -> Result<usize, StateError> {
        let task = Task::load(&self.state, p)?;
        let timers = task.timers.len();
        self.tasks.insert(p, task);
        Ok(timers)
    }

    /// The event-time watermark of partition `p` (the latest event time applied).
    pub fn watermark(&self, p: i32) -> Option<i64> {
        self.tasks.get(&p).map(|t| t.watermark)
    }

    /// Drops partition `p`'s task and its uncommitted changes.
    pub fn release(&mut self, p: i32) {
        self.tasks.remove(&p);
    }

    /// Drops every task and its uncommitted changes.
    pub fn clear(&mut self) {
        self.tasks.clear();
    }

    /// Whether anything changed since the last [`Processor::changes`].
    pub fn has_changes(&self) -> bool {
        self.tasks
            .values()
            .any(|t| !t.dirty.is_empty() || t.watermark_dirty)
    }

    /// Processes one record; the actions it triggers (its own and those of timers
    /// its event time makes due) are pushed to `out`.
    pub fn process(
        &mut self,
        r: &Record<'_>,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        let Some(task) = self.tasks.get_mut(&r.partition) else {
            return Ok(Outcome::NotOwned);
        };
        task.active = true;
        if !task.started {
            task.started = true;
            tracing::info!(
                partition = r.partition,
                topic = r.topic,
                offset = r.offset,
                "first record of the assignment"
            );
        }
        if task
            .next_to_apply(r.topic)
            .is_some_and(|next| r.offset < next)
        {
            self.metrics.skipped.inc();
            return Ok(Outcome::AlreadyApplied);
        }
        task.applied_to(r.topic, r.offset);
        let rule = self.rule;
        let checked = self.decoder.decode(r.value).and_then(|tp| {
            let id = tp.identity().unwrap_or_default();
            rule.check(r.key, id, r.partition).map(|()| tp)
        });
        match checked {
            Ok(tp) => self.apply(r, &tp, out),
            Err(rejection) => Ok(Outcome::Rejected(rejection)),
        }
    }

    /// Updates the customer's profile with `tp`, evaluates the journeys, and fires
    /// the timers the new watermark makes due.
    fn apply(
        &mut self,
        r: &Record<'_>,
        tp: &Touchpoint,
        out: &mut Vec<Action>,
    ) -> Result<Outcome, StateError> {
        let id = tp.identity().unwrap_or_default();
        let (hash, partition, offset) = (topic_hash(r.topic), r.partition, r.offset);
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(Outcome::NotOwned);
        };
        let (journeys, output, metrics) = (&self.journeys, &mut self.output, &self.metrics);
        let mut outcome = Outcome::Applied;
        task.update(&self.state, id, |s| {
            if s.reflects(hash, partition, offset) {
                metrics.skipped.inc();
                outcome = Outcome::AlreadyApplied;
                return false;
            }
            // The customer's own waits that came due before this event fire
            // first, whatever other customers' events moved the watermark to:
            // an SLA that ran out before the resolution arrived escalates.
            if s.profile.timers.iter().any(|t| t.fire_at_ms < tp.event_time) {
                let due = tp.event_time - 1;
                let fired = journeys.fire_due(&mut s.profile, due, output).timers_fired;
                metrics.timers_fired.inc_by(u64::from(fired));
            }
            s.profile.apply(tp);
            if let Some(t) = emotion::update_on_touchpoint(&mut s.profile, tp, journeys.emotion()) {
                metrics
                    .emotion_transitions
                    .with_label_values(&[t.from.as_str(), t.to.as_str()])
                    .inc();
            }
            let report = journeys.on_event(&mut s.profile, tp, output);
            for e in report.errors {
                tracing::warn!(journey = %e.journey, expression = %e.expression, error = %e.message, "journey expression failed; treated as false");
            }
            s.advance(hash, partition, offset);
            true
        })?;
        if outcome == Outcome::Applied {
            self.count_event(r.topic);
            if let Some(s) = tp
                .survey
                .as_ref()
                .filter(|_| tp.event_type == EventType::SurveyResponse)
            {
                self.metrics
                    .survey_answers
                    .with_label_values(&[
                        s.kind.as_str(),
                        s.kind.classify(s.score),
                        tp.channel.as_str(),
                        tp.store_id.as_deref().unwrap_or(""),
                    ])
                    .inc();
            }
        }
        self.collect(out);
        let task = self.tasks.get_mut(&partition).expect("task checked above");
        if tp.event_time > task.watermark {
            task.watermark = tp.event_time;
            task.watermark_dirty = true;
        }
        // Also a wait that a late event scheduled already in the past fires now,
        // so live processing and a replay's end-of-input agree.
        let wm = task.watermark;
        if task.timers.first().is_some_and(|(at, _)| *at <= wm) {
            self.fire_timers(partition, wm, out)?;
        }
        Ok(outcome)
    }

    fn count_event(&mut self, topic: &str) {
        match self.event_counters.iter().find(|(t, _)| t == topic) {
            Some((_, c)) => c.inc(),
            None => {
                let c = self.metrics.events.with_label_values(&[topic]);
                c.inc();
                self.event_counters.push((topic.to_owned(), c));
            }
        }
    }

    /// Fires every timer of `partition` due at `now` (event time, or wall-clock time
    /// for an idle partition in live mode), pushing their actions to `out`.
    pub fn fire_timers(
        &mut self,
        partition: i32,
        now: i64,
        out: &mut Vec<Action>,
    ) -> Result<(), StateError> {
        loop {
            let Some(task) = self.tasks.get_mut(&partition) else {
                return Ok(());
            };
            let Some((at, id)) = task.timers.pop_first() else {
                return Ok(());
            };
            if at > now {
                task.timers.insert((at, id));
                return Ok(());
            }
            let (journeys, output) = (&self.journeys, &mut self.output);
            let mut fired = 0;
            task.update(&self.state, &id, |s| {
                let was_due: Vec<Timer> = s
                    .profile
                    .timers
                    .iter()
                    .filter(|t| t.fire_at_ms <= now)
                    .cloned()
                    .collect();
                fired = journeys.fire_due(&mut s.profile, now, output).timers_fired;
                // A due timer no journey claimed (its journey was removed) is
                // dropped, so it cannot come due again and again. Waits the firing
                // scheduled (a journey's next step) stay, also when already due: a
                // flushed replay runs time on to the end, through every step.
                s.profile
                    .timers
                    .retain(|t| t.fire_at_ms > now || !was_due.contains(t));
                true
            })?;
            self.metrics.timers_fired.inc_by(fired as u64);
            self.collect(out);
        }
    }

    /// Moves the record's actions to `out` and keeps its decisions not to act;
    /// counts every decision by journey and outcome.
    fn collect(&mut self, out: &mut Vec<Action>) {
        out.append(&mut self.output.actions);
        for d in self.output.decisions.drain(..) {
            let counter = match self
                .decision_counters
                .iter()
                .find(|((j, o), _)| *o == d.outcome && *j == d.journey)
            {
                Some((_, c)) => c.clone(),
                None => {
                    let c = self
                        .metrics
                        .decisions
                        .with_label_values(&[d.journey.as_str(), d.outcome.as_str()]);
                    self.decision_counters
                        .push(((d.journey.to_string(), d.outcome), c.clone()));
                    c
                }
            };
            counter.inc();
            if d.outcome != Judgement::Sent {
                self.not_sent.push(d);
            }
        }
    }

    /// The decisions not to act since the last call (for the decisions topic and
    /// `rapport replay --decisions`), in decision order.
    pub fn take_decisions(&mut self) -> std::vec::Drain<'_, Decision> {
        self.not_sent.drain(..)
    }

    /// Fires the due timers of every partition that received nothing since the
    /// last call, at wall-clock time `now` (live mode: quiet partitions still fire).
    pub fn fire_idle(&mut self, now: i64, out: &mut Vec<Action>) -> Result<(), StateError> {
        let idle: Vec<i32> = self
            .tasks
            .values_mut()
            .filter_map(|t| {
                let idle = !t.active && t.timers.first().is_some_and(|(at, _)| *at <= now);
                t.active = false;
                idle.then_some(t.partition)
            })
            .collect();
        for p in idle {
            self.fire_timers(p, now, out)?;
        }
        Ok(())
    }

    /// Fires every timer due at `now` in every partition (the end of a replay).
    pub fn fire_all(&mut self, now: i64, out: &mut Vec<Action>) -> Result<(), StateError> {
        let mut partitions: Vec<i32> = self.tasks.keys().copied().collect();
        partitions.sort_unstable();
        for p in partitions {
            self.fire_timers(p, now, out)?;
        }
        Ok(())
    }

    /// Hands every change since the last call to `emit` as changelog records (one
    /// per changed profile, not per event, and each moved watermark) and adds them
    /// to `batch`, with the applied offsets of `offsets` (`(partition, topic, next)`).
    pub fn changes<E>(
        &mut self,
        batch: &mut StateBatch,
        mut emit: impl FnMut(ChangelogRecord<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        for task in self.tasks.values_mut() {
            let p = task.partition;
            for id in std::mem::take(&mut task.dirty) {
                let Some(slot) = task.profiles.get_mut(id.as_str()) else {
                    continue;
                };
                let bytes = slot.stored.encode();
                emit((p, id.as_bytes(), &bytes))?;
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
                emit((p, WATERMARK_KEY, &task.watermark.to_be_bytes()))?;
                batch.set_watermark(p, task.watermark);
            }
        }
        Ok(())
    }

    /// After a commit: lets clean profiles leave memory when the cache is over its
    /// size. Returns the number of profiles still cached.
    pub fn trim_cache(&mut self) -> usize {
        let cached: usize = self.tasks.values().map(|t| t.profiles.len()).sum();
        if cached <= self.profile_cache {
            return cached;
        }
        // Only clean profiles may leave: their latest version is in RocksDB.
        for t in self.tasks.values_mut() {
            t.profiles.retain(|_, s| s.dirty);
        }
        self.tasks.values().map(|t| t.profiles.len()).sum()
    }
}
