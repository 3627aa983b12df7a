//! Per-partition task state and the per-record work: decode, the key rule,
//! profile update, journeys, timers, and the records they emit.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use rapport_model::Profile;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Message;
use sha2::{Digest, Sha256};

use crate::ingest::Rejection;
use crate::kafka;
use crate::state::{topic_hash, StateError, StateStore, Stored};

use super::core::Core;
use super::LoopError;

/// A profile held in memory, and what is needed to write it back.
pub(super) struct Slot {
    pub stored: Stored,
    pub dirty: bool,
    /// Timer times currently in the persisted index.
    pub persisted_timers: Vec<i64>,
}

/// One owned input partition: its cached profiles, timers, watermark and offsets.
/// Everything here is keyed by customer within this partition, so two partitions
/// never share a profile.
pub(super) struct Task {
    pub partition: i32,
    /// Decoded profiles by customer id; the dirty ones are written at the next commit.
    pub profiles: HashMap<String, Slot>,
    /// Ids of the profiles changed in this interval.
    pub dirty: Vec<String>,
    /// Pending timers, `(fire_at, customer id)`.
    pub timers: BTreeSet<(i64, String)>,
    /// Highest event time seen.
    pub watermark: i64,
    pub watermark_dirty: bool,
    /// Next offset to apply, per topic (records below were applied to state).
    pub applied: HashMap<String, i64>,
    /// Whether a record arrived during the current commit interval.
    pub active: bool,
    /// Whether a record arrived since the assignment.
    pub started: bool,
}

impl Task {
    /// The task of partition `p` as committed in `state`.
    pub fn load(state: &StateStore, p: i32) -> Result<Task, StateError> {
        Ok(Task {
            partition: p,
            profiles: HashMap::new(),
            dirty: Vec::new(),
            timers: state.timers(p)?.into_iter().collect(),
            watermark: state.watermark(p)?.unwrap_or(i64::MIN),
            watermark_dirty: false,
            applied: state.offsets(p)?,
            active: false,
            started: false,
        })
    }

    /// Runs `f` on customer `id`'s stored profile (loaded if needed); marks it dirty
    /// when `f` returns true, and keeps the timer index in step with its timers.
    pub fn update(
        &mut self,
        state: &StateStore,
        id: &str,
        f: impl FnOnce(&mut Stored) -> bool,
    ) -> Result<(), StateError> {
        if !self.profiles.contains_key(id) {
            let stored = state.get(self.partition, id)?.unwrap_or_else(|| Stored {
                sources: Vec::new(),
                profile: Profile::new(id),
            });
            let persisted_timers = timer_times(&stored.profile);
            let slot = Slot {
                stored,
                dirty: false,
                persisted_timers,
            };
            self.profiles.insert(id.to_owned(), slot);
        }
        let Some(slot) = self.profiles.get_mut(id) else {
            return Ok(());
        };
        let before = timer_times(&slot.stored.profile);
        if f(&mut slot.stored) && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(id.to_owned());
        }
        let after = timer_times(&slot.stored.profile);
        if before != after {
            for t in before {
                self.timers.remove(&(t, id.to_owned()));
            }
            for t in after {
                self.timers.insert((t, id.to_owned()));
            }
        }
        Ok(())
    }

    /// Notes that `topic` is applied up to `offset`.
    fn applied_to(&mut self, topic: &str, offset: i64) {
        match self.applied.get_mut(topic) {
            Some(n) => *n = offset + 1,
            None => {
                self.applied.insert(topic.to_owned(), offset + 1);
            }
        }
    }
}

/// The due times of a profile's pending timers (no allocation when there are none).
pub(super) fn timer_times(p: &Profile) -> Vec<i64> {
    p.timers.iter().map(|t| t.fire_at_ms).collect()
}

impl Core {
    /// Handles one consumed record: applies it, dead-letters it, or skips it when
    /// state already reflects it.
    pub(super) fn handle(&mut self, m: &BorrowedMessage<'_>) -> Result<(), LoopError> {
        self.progress.handled.fetch_add(1, Ordering::Relaxed);
        let (topic, partition, offset) = (m.topic(), m.partition(), m.offset());
        let Some(task) = self.tasks.get_mut(&partition) else {
            // Fetched before a revocation took effect; its new owner handles it.
            tracing::debug!(
                topic,
                partition,
                offset,
                "record of a partition no longer owned"
            );
            return Ok(());
        };
        task.active = true;
        if !task.started {
            task.started = true;
            tracing::info!(partition, topic, offset, "first record of the assignment");
        }
        if task.applied.get(topic).is_some_and(|&next| offset < next) {
            self.metrics.skipped.inc();
        } else {
            let decoded = self.decoder.decode(m.payload().unwrap_or_default());
            match decoded.and_then(|tp| {
                let id = tp.identity().unwrap_or_default();
                self.rule.check(m.key(), id, partition).map(|()| tp)
            }) {
                Ok(tp) => self.apply(topic, partition, offset, &tp)?,
                Err(r) => self.dead_letter(m, &r)?,
            }
            if let Some(task) = self.tasks.get_mut(&partition) {
                task.applied_to(topic, offset);
            }
        }
        self.pending.record(partition, topic, offset + 1);
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
        tp: &rapport_model::Touchpoint,
    ) -> Result<(), LoopError> {
        let id = tp.identity().unwrap_or_default();
        let hash = topic_hash(topic);
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
        let (journeys, actions, metrics) = (&self.journeys, &mut self.actions, &self.metrics);
        task.update(&self.state, id, |s| {
            if s.reflects(hash, partition, offset) {
                metrics.skipped.inc();
                return false;
            }
            s.profile.apply(tp);
            journeys.evaluate(&mut s.profile, tp, actions);
            s.advance(hash, partition, offset);
            true
        })
        .map_err(|e| LoopError::Fatal(e.into()))?;
        self.count_event(topic);
        self.emit_pending()?;
        let Some(task) = self.tasks.get_mut(&partition) else {
            return Ok(());
        };
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
    /// for an idle partition in live mode).
    pub(super) fn fire_timers(&mut self, partition: i32, now: i64) -> Result<(), LoopError> {
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
            let (journeys, actions) = (&self.journeys, &mut self.actions);
            task.update(&self.state, &id, |s| {
                journeys.fire_due(&mut s.profile, now, actions)
            })
            .map_err(|e| LoopError::Fatal(e.into()))?;
            self.metrics.timers_fired.inc_by(self.actions.len() as u64);
            self.emit_pending()?;
        }
    }

    /// In live mode, partitions that received nothing this interval fire their due
    /// timers on wall-clock time, so a quiet partition is not stuck.
    pub(super) fn fire_idle_timers(&mut self) -> Result<(), LoopError> {
        if !self.cfg.engine.wall_clock_timers {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp_millis();
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
            self.fire_timers(p, now)?;
        }
        Ok(())
    }

    fn emit_pending(&mut self) -> Result<(), LoopError> {
        for a in std::mem::take(&mut self.actions) {
            let body = serde_json::to_vec(&a).map_err(|e| LoopError::Fatal(e.into()))?;
            let headers = OwnedHeaders::new().insert(Header {
                key: kafka::ACTION_ID,
                value: Some(a.action_id.as_bytes()),
            });
            self.committer.send(
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
    /// original key, bytes and headers, plus headers naming where it came from, why,
    /// its size and hash. A value over the dead-letter topic's limit is cut to fit
    /// (the whole record stays in its source topic at the offset the headers name).
    fn dead_letter(&mut self, m: &BorrowedMessage<'_>, r: &Rejection) -> Result<(), LoopError> {
        tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %r.reason, "dead-lettered");
        let payload = m.payload().unwrap_or_default();
        let mut headers = OwnedHeaders::new();
        let mut used = m.key().map_or(0, <[u8]>::len) + r.reason.len();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                used += h.key.len() + h.value.map_or(0, <[u8]>::len);
                headers = headers.insert(h);
            }
        }
        let room = self.dead_letter_room.saturating_sub(used);
        let truncated = payload.len() > room;
        let value = &payload[..payload.len().min(room)];
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let size = payload.len().to_string();
        let sha: String = Sha256::digest(payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut extra = vec![
            (kafka::DLQ_TOPIC, m.topic()),
            (kafka::DLQ_PARTITION, &partition),
            (kafka::DLQ_OFFSET, &offset),
            (kafka::DLQ_STAGE, r.stage.as_str()),
            (kafka::DLQ_REASON, &r.reason),
            (kafka::DLQ_ORIGINAL_SIZE, &size),
            (kafka::DLQ_SHA256, &sha),
        ];
        if truncated {
            extra.push((kafka::DLQ_TRUNCATED, "true"));
        }
        for (key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.cfg.kafka.dead_letter_topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        self.committer.send(record)?;
        self.metrics
            .dead_letters
            .with_label_values(&[r.stage.as_str(), r.class])
            .inc();
        Ok(())
    }
}
