//! One owned input partition's state: its cached profiles, timer index, event-time
//! watermark and applied offsets. Everything is keyed by customer within the
//! partition, so two partitions never share a profile.

use std::collections::{BTreeSet, HashMap};

use hashbrown::hash_map::EntryRef;

use rapport_model::Profile;

use crate::state::{StateError, StateStore, Stored};

/// A profile held in memory, and what is needed to write it back.
pub(crate) struct Slot {
    pub stored: Stored,
    pub dirty: bool,
    /// Timer times currently in the persisted index.
    pub persisted_timers: Vec<i64>,
}

/// One owned input partition.
pub(crate) struct Task {
    pub partition: i32,
    /// Decoded profiles by customer id; the dirty ones are written at the next commit.
    pub profiles: hashbrown::HashMap<String, Slot>,
    /// Ids of the profiles changed since the last commit.
    pub dirty: Vec<String>,
    /// Pending timers, `(fire_at, customer id)`.
    pub timers: BTreeSet<(i64, String)>,
    /// Highest event time seen.
    pub watermark: i64,
    pub watermark_dirty: bool,
    /// Next offset to apply, per topic (records below were applied to state).
    pub applied: HashMap<String, i64>,
    /// Whether a record arrived since the last idle check.
    pub active: bool,
    /// Whether a record arrived since the assignment.
    pub started: bool,
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
        // One hash lookup; the id is copied only for a profile not cached yet.
        let slot = match self.profiles.entry_ref(id) {
            EntryRef::Occupied(e) => e.into_mut(),
            EntryRef::Vacant(e) => {
                let stored = state.get(self.partition, id)?.unwrap_or_else(|| Stored {
                    sources: Vec::new(),
                    profile: Profile::new(id),
                });
                let persisted_timers = timer_times(&stored.profile);
                e.insert(Slot {
                    stored,
                    dirty: false,
                    persisted_timers,
                })
            }
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
    pub fn applied_to(&mut self, topic: &str, offset: i64) {
        match self.applied.get_mut(topic) {
            Some(n) => *n = offset + 1,
            None => {
                self.applied.insert(topic.to_owned(), offset + 1);
            }
        }
    }
}

/// The due times of a profile's pending timers (no allocation when there are none).
pub(crate) fn timer_times(p: &Profile) -> Vec<i64> {
    p.timers.iter().map(|t| t.fire_at_ms).collect()
}
