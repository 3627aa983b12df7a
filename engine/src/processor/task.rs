//! One owned input partition's state: its cached profiles, timer index, event-time
//! watermark and applied offsets. Everything is keyed by customer within the
//! partition, so two partitions never share a profile.

use std::collections::BTreeSet;

use compact_str::CompactString;
use hashbrown::hash_map::Entry;

use rapport_model::Profile;

use crate::state::{StateError, StateStore, Stored};

/// A profile held in memory, and what is needed to write it back. Slots are
/// boxed so that the cache's table holds small entries (an id and a pointer):
/// a table sized for its peak (tables grow by doubling) then costs a pointer
/// per empty bucket, not a whole profile, and the table of a partition's
/// active customers stays in the CPU's cache.
pub(crate) struct Slot {
    pub stored: Stored,
    pub dirty: bool,
    /// Timer times currently in the persisted index.
    pub persisted_timers: TimerTimes,
}

/// One owned input partition.
pub(crate) struct Task {
    pub partition: i32,
    /// Decoded profiles by customer id; the dirty ones are written at the next
    /// commit. Ids up to 24 bytes are stored in the table itself, so finding a
    /// profile does not chase a pointer to compare its key.
    pub profiles: hashbrown::HashMap<CompactString, Box<Slot>>,
    /// Ids of the profiles changed since the last commit.
    pub dirty: Vec<CompactString>,
    /// Pending timers, `(fire_at, customer id)`.
    pub timers: BTreeSet<(i64, String)>,
    /// Highest event time seen.
    pub watermark: i64,
    pub watermark_dirty: bool,
    /// Next offset to apply, per topic (records below were applied to state); a
    /// partition has one entry per touchpoint topic, a few at most.
    pub applied: Vec<(String, i64)>,
    /// Whether a record arrived since the last idle check.
    pub active: bool,
    /// Whether a record arrived since the assignment.
    pub started: bool,
    /// Buffers and metric handles for this partition's records.
    pub scratch: Scratch,
    /// The suppression list and the erasures waiting for the commit.
    pub privacy: crate::privacy::erasure::TaskPrivacy,
    /// Records decoded ahead of their turn ([`super::ahead`]).
    pub ahead: super::ahead::Ahead,
}

/// What a partition's records are processed with, kept per partition so that
/// partitions can be processed on different threads.
#[derive(Default)]
pub(crate) struct Scratch {
    /// What the journeys and the delivery policy decided for the current record.
    pub output: rapport_journeys::Output,
    /// Decisions not to act (capped, deferred, no consent, suppressed, held out)
    /// since they were last taken.
    pub not_sent: Vec<rapport_journeys::Decision>,
    /// Decision counters by journey and outcome, resolved once.
    pub decision_counters: Vec<((String, rapport_journeys::Outcome), prometheus::IntCounter)>,
    /// Per-topic event counters, resolved once.
    pub event_counters: Vec<(String, prometheus::IntCounter)>,
    /// Identity messages to send to the repartition topic.
    pub outbox: Vec<crate::identity::Outgoing>,
    /// Identity merges, conflicts and refused links, for the identity-events topic.
    pub identity_events: Vec<crate::identity::IdentityEvent>,
}

impl Task {
    /// The task of partition `p` as committed in `state`.
    pub fn load(state: &StateStore, p: i32) -> Result<Task, StateError> {
        Ok(Task {
            partition: p,
            profiles: hashbrown::HashMap::new(),
            dirty: Vec::new(),
            timers: state.timers(p)?.into_iter().collect(),
            watermark: state.watermark(p)?.unwrap_or(i64::MIN),
            watermark_dirty: false,
            applied: state.offsets(p)?.into_iter().collect(),
            active: false,
            started: false,
            scratch: Scratch::default(),
            privacy: crate::privacy::erasure::TaskPrivacy::load(state, p)?,
            ahead: Default::default(),
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
        // One hash lookup; a short id is copied inline, without allocating.
        let slot = match self.profiles.entry(CompactString::from(id)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let stored = state
                    .get(self.partition, id)?
                    .unwrap_or_else(|| Stored::fresh(id));
                let persisted_timers = timer_times(&stored.profile);
                e.insert(Box::new(Slot {
                    stored,
                    dirty: false,
                    persisted_timers,
                }))
            }
        };
        let before = timer_times(&slot.stored.profile);
        if f(&mut slot.stored) && !slot.dirty {
            slot.dirty = true;
            self.dirty.push(CompactString::from(id));
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

    /// Starts loading customer `id`'s profile into the CPU cache, if it is
    /// held here: its boxed record, or with `lists` (once the record is in
    /// cache) the lists each touchpoint reads.
    pub fn prefetch(&self, id: &str, lists: bool) {
        if let Some(slot) = self.profiles.get(id) {
            if lists {
                slot.stored.profile.prefetch_lists();
            } else {
                rapport_model::prefetch::value(&**slot);
            }
        }
    }

    /// Encodes the profiles changed since the last call and marks them clean,
    /// with the timer index entries to remove and add, and the watermark if it
    /// moved: what a commit writes for this partition.
    pub fn take_changes(&mut self) -> Changes {
        let mut profiles = Vec::with_capacity(self.dirty.len());
        for id in std::mem::take(&mut self.dirty) {
            let Some(slot) = self.profiles.get_mut(id.as_str()) else {
                continue;
            };
            let bytes = slot.stored.encode();
            let now = timer_times(&slot.stored.profile);
            let gone: TimerTimes = slot
                .persisted_timers
                .iter()
                .filter(|t| !now.contains(t))
                .copied()
                .collect();
            let new: TimerTimes = now
                .iter()
                .filter(|t| !slot.persisted_timers.contains(t))
                .copied()
                .collect();
            slot.dirty = false;
            slot.persisted_timers = now;
            profiles.push((id, bytes, gone, new));
        }
        let watermark = std::mem::take(&mut self.watermark_dirty).then_some(self.watermark);
        Changes {
            partition: self.partition,
            profiles,
            watermark,
        }
    }

    /// Notes that `topic` is applied up to `offset`.
    pub fn applied_to(&mut self, topic: &str, offset: i64) {
        match self.applied.iter_mut().find(|(t, _)| t == topic) {
            Some((_, n)) => *n = offset + 1,
            None => self.applied.push((topic.to_owned(), offset + 1)),
        }
    }

    /// The next offset of `topic` not applied yet, if any was.
    pub fn next_to_apply(&self, topic: &str) -> Option<i64> {
        self.applied
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, n)| *n)
    }
}

/// What a commit writes for one partition ([`Task::take_changes`]).
pub(crate) struct Changes {
    pub partition: i32,
    /// Changed profiles: id, stored encoding, timer index entries to remove and to add.
    pub profiles: Vec<(CompactString, Vec<u8>, TimerTimes, TimerTimes)>,
    /// The watermark, when it moved.
    pub watermark: Option<i64>,
}

/// Due times of a profile's timers; a profile rarely waits on more than four.
pub(crate) type TimerTimes = smallvec::SmallVec<[i64; 4]>;

/// The due times of a profile's pending timers (no allocation for up to four).
pub(crate) fn timer_times(p: &Profile) -> TimerTimes {
    p.timers.iter().map(|t| t.fire_at_ms).collect()
}
