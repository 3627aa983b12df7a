//! One owned input partition's state: its cached profiles, timer index, event-time
//! watermark and applied offsets. Everything is keyed by customer within the
//! partition, so two partitions never share a profile.

use std::collections::BTreeSet;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::hash_map::Entry;

use rapport_model::Profile;

use crate::state::{StateBatch, StateError, StateStore, Stored};

/// A profile held in memory, and what is needed to write it back. The profile
/// itself is behind a shared pointer, so that the cache's table holds a
/// pointer and a few counts per customer, not a whole profile, and a commit
/// can encode the profiles of its cut on the commit thread while the engine
/// goes on: the engine's next change to a profile a commit still holds copies
/// it first ([`Arc::make_mut`]).
pub(crate) struct Slot {
    pub stored: Arc<Stored>,
    pub dirty: bool,
    /// The memory it takes, estimated ([`slot_bytes`]) from its stored encoding
    /// when it was loaded or last committed.
    pub bytes: u32,
    /// The commit whose cut last took it ([`Task::cut`]); 0 for none.
    pub cut: u64,
    /// Timer times currently in the persisted index.
    pub persisted_timers: TimerTimes,
}

/// One owned input partition.
pub(crate) struct Task {
    pub partition: i32,
    /// Decoded profiles by customer id; the dirty ones are written at the next
    /// commit. Ids up to 24 bytes are stored in the table itself, so finding a
    /// profile does not chase a pointer to compare its key.
    pub profiles: hashbrown::HashMap<CompactString, Slot>,
    /// Ids of the profiles changed since the last commit.
    pub dirty: Vec<CompactString>,
    /// The sum of the cached profiles' [`Slot::bytes`].
    pub cached_bytes: usize,
    /// The part of it taken by the profiles in `dirty`, which stay until the
    /// next commit.
    pub dirty_bytes: usize,
    /// The part taken by profiles cut ahead of the next commit
    /// ([`Task::cut_ahead`]), which stay until it has written them.
    pub ahead_bytes: usize,
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
    /// Encodings of recently committed profiles ([`super::encoded`]).
    pub encoded: super::encoded::EncodedCache,
    /// Where the profiles asked for since the last [`Task::take_lookups`]
    /// were found.
    pub lookups: Lookups,
}

/// Where profiles were found when the engine asked for them: how well the
/// two profile caches cover the customers being seen
/// (`rapport_profile_lookups_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookups {
    /// Held decoded.
    pub decoded: u64,
    /// Decoded from the encoded cache.
    pub encoded: u64,
    /// Read from RocksDB and decoded.
    pub rocksdb: u64,
    /// Not stored anywhere: a customer seen for the first time.
    pub new: u64,
}

impl Lookups {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Lookups) {
        self.decoded += other.decoded;
        self.encoded += other.encoded;
        self.rocksdb += other.rocksdb;
        self.new += other.new;
    }
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
            cached_bytes: 0,
            dirty_bytes: 0,
            ahead_bytes: 0,
            timers: state.timers(p)?.into_iter().collect(),
            watermark: state.watermark(p)?.unwrap_or(i64::MIN),
            watermark_dirty: false,
            applied: state.offsets(p)?.into_iter().collect(),
            active: false,
            started: false,
            scratch: Scratch::default(),
            privacy: crate::privacy::erasure::TaskPrivacy::load(state, p)?,
            ahead: Default::default(),
            encoded: Default::default(),
            lookups: Lookups::default(),
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
        let lookups = &mut self.lookups;
        let slot = match self.profiles.entry(CompactString::from(id)) {
            Entry::Occupied(e) => {
                lookups.decoded += 1;
                e.into_mut()
            }
            Entry::Vacant(e) => {
                let found = match self.encoded.get(id) {
                    Some(b) => {
                        lookups.encoded += 1;
                        Some((Stored::decode(id, self.partition, b)?, b.len()))
                    }
                    None => {
                        let found = state.get_sized(self.partition, id)?;
                        match found {
                            Some(_) => lookups.rocksdb += 1,
                            None => lookups.new += 1,
                        }
                        found
                    }
                };
                let (stored, len) = found.unwrap_or_else(|| (Stored::fresh(id), 0));
                let persisted_timers = timer_times(&stored.profile);
                let bytes = slot_bytes(&stored.profile, len);
                self.cached_bytes += bytes as usize;
                e.insert(Slot {
                    stored: Arc::new(stored),
                    dirty: false,
                    bytes,
                    cut: 0,
                    persisted_timers,
                })
            }
        };
        let before = timer_times(&slot.stored.profile);
        if f(Arc::make_mut(&mut slot.stored)) && !slot.dirty {
            slot.dirty = true;
            self.dirty_bytes += slot.bytes as usize;
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
    /// held here: its record, or with `lists` (once the record is in cache)
    /// the lists each touchpoint reads.
    pub fn prefetch(&self, id: &str, lists: bool) {
        if let Some(slot) = self.profiles.get(id) {
            if lists {
                slot.stored.profile.prefetch_lists();
            } else {
                rapport_model::prefetch::value(&*slot.stored);
            }
        }
    }

    /// Takes the profiles changed since the last cut, as they are now (shared,
    /// not copied), with the timer index entries to remove and add, and the
    /// watermark if it moved: what commit `commit` writes for this partition.
    /// They are marked clean; [`Cut::encode`] may run on another thread.
    pub fn cut(&mut self, commit: u64) -> Cut {
        let ids = std::mem::take(&mut self.dirty);
        self.dirty_bytes = 0;
        self.ahead_bytes = 0;
        let mut profiles = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(slot) = self.profiles.get_mut(id.as_str()) else {
                continue;
            };
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
            slot.cut = commit;
            slot.persisted_timers = now;
            profiles.push((id, Arc::clone(&slot.stored), gone, new));
        }
        let watermark = std::mem::take(&mut self.watermark_dirty).then_some(self.watermark);
        Cut {
            partition: self.partition,
            profiles,
            watermark,
        }
    }

    /// [`Task::cut`] ahead of commit `commit`, which will end the open
    /// interval: the profiles' memory still counts as changed until it does.
    pub fn cut_ahead(&mut self, commit: u64) -> Cut {
        let held = self.dirty_bytes + self.ahead_bytes;
        let cut = self.cut(commit);
        self.ahead_bytes = held;
        cut
    }

    /// Whether `id`'s cached profile is as commit `commit` wrote it: taken by
    /// that commit's cut and unchanged since (not replaced afresh after an
    /// erasure, not dropped). Returns its slot then.
    fn as_committed(&mut self, id: &str, commit: u64) -> Option<&mut Slot> {
        self.profiles
            .get_mut(id)
            .filter(|s| s.cut == commit && !s.dirty)
    }

    /// Once commit `commit` has ended and wrote `bytes` for `id`, estimated
    /// then at `memory` decoded ([`Written::memory`]): if the cached profile is
    /// still as written, counts it at that and keeps the encoding
    /// ([`super::encoded`], `share` bytes at most).
    pub fn committed(
        &mut self,
        commit: u64,
        id: CompactString,
        bytes: impl Into<Box<[u8]>>,
        memory: u32,
        share: usize,
    ) {
        let Some(slot) = self.as_committed(&id, commit) else {
            return;
        };
        let was = std::mem::replace(&mut slot.bytes, memory);
        self.cached_bytes = self.cached_bytes.saturating_sub(was as usize) + memory as usize;
        self.encoded.insert(id, bytes.into(), share);
    }

    /// [`Task::cut`] and [`Cut::encode`] on this thread, then
    /// [`Task::committed`] with no encoded cache: tests' shortcut.
    #[cfg(test)]
    pub fn take_changes(&mut self) -> Changes {
        let changes = self.cut(1).encode();
        for w in &changes.profiles {
            self.committed(1, w.id.clone(), &w.bytes[..], w.memory, 0);
        }
        changes
    }

    /// The lookups counted since the last call, counting afresh.
    pub fn take_lookups(&mut self) -> Lookups {
        std::mem::take(&mut self.lookups)
    }

    /// Notes that `topic` is applied up to `offset`.
    pub fn applied_to(&mut self, topic: &str, offset: i64) {
        match self.applied.iter_mut().find(|(t, _)| t == topic) {
            Some((_, n)) => *n = offset + 1,
            None => self.applied.push((topic.to_owned(), offset + 1)),
        }
    }

    /// Lets clean profiles leave the cache, those written longest ago first,
    /// until about `excess` bytes have left or only dirty ones, those cut by a
    /// commit after `written` (the last commit whose state is in RocksDB: a
    /// cut written ahead of its commit, [`super::Processor::cut_ahead`]) and
    /// those started afresh after an erasure not yet committed remain (RocksDB
    /// still has the old profile). Returns the bytes that left.
    ///
    /// A profile's [`Slot::cut`] is the commit that last wrote it, so the
    /// oldest cuts are the profiles least recently changed (a profile only
    /// read has none and goes first). Touchpoints come in sessions, so the
    /// customers changed lately are the ones most likely to come back; letting
    /// them go in the table's order instead, measured on 1M touchpoints of
    /// 100k customers (`cargo bench ... -- guarantees`), found fewer profiles
    /// decoded (README, Results).
    pub fn evict(&mut self, excess: usize, written: u64) -> usize {
        let erased = &self.privacy.tombstones;
        let pinned = |id: &CompactString, s: &Slot| {
            s.dirty || s.cut > written || erased.iter().any(|(e, _)| e.as_str() == id.as_str())
        };
        let mut ages: Vec<(u64, u32)> = self
            .profiles
            .iter()
            .filter(|(id, s)| !pinned(id, s))
            .map(|(_, s)| (s.cut, s.bytes))
            .collect();
        ages.sort_unstable_by_key(|&(cut, _)| cut);
        // Every profile cut before `oldest_kept` leaves, and those cut by it
        // while `excess` is not reached.
        let (mut oldest_kept, mut counted) = (0, 0usize);
        for (cut, bytes) in ages {
            if counted >= excess {
                break;
            }
            counted += bytes as usize;
            oldest_kept = cut;
        }
        if counted == 0 {
            return 0;
        }
        let mut freed = 0;
        self.profiles.retain(|id, s| {
            let leaves =
                !pinned(id, s) && (s.cut < oldest_kept || (s.cut == oldest_kept && freed < excess));
            if leaves {
                freed += s.bytes as usize;
            }
            !leaves
        });
        self.cached_bytes -= freed.min(self.cached_bytes);
        // A table left far larger than its profiles (a burst of changes in one
        // interval) gives its memory back.
        if self.profiles.capacity() > 4 * self.profiles.len().max(1024) {
            self.profiles.shrink_to_fit();
        }
        freed
    }

    /// The next offset of `topic` not applied yet, if any was.
    pub fn next_to_apply(&self, topic: &str) -> Option<i64> {
        self.applied
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, n)| *n)
    }
}

/// What a cached profile takes besides what its encoding says: its table entry
/// (an id and a [`Slot`], counted twice: tables grow by doubling and are at
/// most 7/8 full), the shared record with the profile's fixed part (about 1
/// KiB) and its two counts, and an allocation's rounding.
const SLOT_FIXED: usize = 2 * (std::mem::size_of::<(CompactString, Slot)>() + 1)
    + std::mem::size_of::<Stored>()
    + 16
    + 64;
/// Decoded bytes on the heap per byte of a profile's stored encoding: lists and
/// strings with their spare capacity, integers widened from their varints.
const DECODED_PER_ENCODED: usize = 3;

/// The memory a cached profile whose encoding is `encoded_len` bytes long takes,
/// estimated (measured with `cargo bench ... -- scale` against the
/// process's RSS, with profile encoding version 4: what version 5's packing
/// saves is counted back, since the decoded profile is as large as before).
pub(crate) fn slot_bytes(profile: &Profile, encoded_len: usize) -> u32 {
    let v4_len = encoded_len + profile.packing_savings();
    u32::try_from(SLOT_FIXED + DECODED_PER_ENCODED * v4_len).unwrap_or(u32::MAX)
}

/// How many profiles ahead of the one being encoded a commit asks for a
/// profile's record; its lists follow one profile later, the lists inside them
/// one more.
const ENCODE_AHEAD: usize = 3;

/// The profiles one partition's commit takes at its cut ([`Task::cut`]),
/// shared with the cache until encoded.
pub(crate) struct Cut {
    pub partition: i32,
    /// Changed profiles: id, profile, timer index entries to remove and to add.
    pub profiles: Vec<(CompactString, Arc<Stored>, TimerTimes, TimerTimes)>,
    /// The watermark, when it moved.
    pub watermark: Option<i64>,
}

impl Cut {
    /// The number of profiles to encode.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Encodes the cut's profiles, releasing each as it goes.
    pub fn encode(self) -> Changes {
        // Encoding reads every list of a profile, which is rarely in cache when
        // a commit comes: a few profiles ahead, each one's record, then its
        // lists, then the lists inside them are asked for, so the loads overlap
        // with encoding the profiles before it. Measured on 10k profiles of
        // 2.9 KB after `-- replay`: 7.2-7.6 µs -> 4.2 µs per profile.
        let mut cut: Vec<_> = self.profiles.into_iter().map(Some).collect();
        let mut profiles = Vec::with_capacity(cut.len());
        for i in 0..cut.len() {
            let ahead = |level: usize| cut.get(i + ENCODE_AHEAD - level)?.as_ref();
            if let Some((_, s, _, _)) = ahead(0) {
                rapport_model::prefetch::value(&**s);
            }
            if let Some((_, s, _, _)) = ahead(1) {
                s.profile.prefetch_for_encoding(false);
            }
            if let Some((_, s, _, _)) = ahead(2) {
                s.profile.prefetch_for_encoding(true);
            }
            if let Some((id, stored, gone, new)) = cut[i].take() {
                let bytes = stored.encode();
                let memory = slot_bytes(&stored.profile, bytes.len());
                profiles.push(Written {
                    id,
                    bytes,
                    memory,
                    gone,
                    new,
                });
            }
        }
        Changes {
            partition: self.partition,
            profiles,
            watermark: self.watermark,
        }
    }
}

/// One changed profile as a commit writes it ([`Cut::encode`]).
pub(crate) struct Written {
    pub id: CompactString,
    /// The stored encoding.
    pub bytes: Vec<u8>,
    /// The memory the profile takes decoded ([`slot_bytes`]), estimated while
    /// it is encoded and its lists are in the CPU's cache: when the commit
    /// ends, the cache counts it at this without reading the profile again
    /// (reading it then, on the loop, took 3% of the engine threads' time).
    pub memory: u32,
    /// Timer index entries to remove and to add.
    pub gone: TimerTimes,
    pub new: TimerTimes,
}

/// What a commit writes for one partition ([`Cut::encode`]).
pub(crate) struct Changes {
    pub partition: i32,
    /// Changed profiles.
    pub profiles: Vec<Written>,
    /// The watermark, when it moved.
    pub watermark: Option<i64>,
}

impl Changes {
    /// Hands each changed profile and the moved watermark, in order, to `emit`
    /// as changelog records.
    pub fn emit<E>(
        &self,
        emit: impl Fn(super::ChangelogRecord<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let p = self.partition;
        for w in &self.profiles {
            emit((p, w.id.as_bytes(), &w.bytes))?;
        }
        if let Some(w) = self.watermark {
            emit((p, crate::runtime::WATERMARK_KEY, &w.to_be_bytes()))?;
        }
        Ok(())
    }

    /// Moves the changes into `batch` (the encoded profiles are not copied).
    pub fn add_to(self, batch: &mut StateBatch) {
        let p = self.partition;
        for w in self.profiles {
            for t in w.gone {
                batch.delete_timer(p, t, &w.id);
            }
            for t in w.new {
                batch.put_timer(p, t, &w.id);
            }
            batch.put_profile_encoded(p, w.id, w.bytes, w.memory);
        }
        if let Some(w) = self.watermark {
            batch.set_watermark(p, w);
        }
    }
}

/// Due times of a profile's timers; a profile rarely waits on more than four.
pub(crate) type TimerTimes = smallvec::SmallVec<[i64; 4]>;

/// The due times of a profile's pending timers (no allocation for up to four).
pub(crate) fn timer_times(p: &Profile) -> TimerTimes {
    p.timers.iter().map(|t| t.fire_at_ms).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_store as store;

    /// An update that sets the profile's event count to `n`.
    fn events(n: u64) -> impl Fn(&mut Stored) -> bool {
        move |s: &mut Stored| {
            s.profile.events = n;
            true
        }
    }

    /// Eviction frees bytes from clean profiles only: a profile changed since
    /// the last commit stays, whatever the cache's size.
    #[test]
    fn eviction_keeps_uncommitted_profiles_and_counts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut task = Task::load(&state, 0).unwrap();
        for i in 0..10 {
            task.update(&state, &format!("c-{i}"), |_| true).unwrap();
        }
        let changed: usize = task.profiles.values().map(|s| s.bytes as usize).sum();
        assert_eq!(task.dirty_bytes, changed);
        let committed = task.take_changes();
        assert_eq!(committed.profiles.len(), 10);
        assert_eq!(task.dirty_bytes, 0);
        task.update(&state, "c-dirty", |_| true).unwrap();
        // A profile changed again before the commit is counted once.
        task.update(&state, "c-dirty", |_| true).unwrap();
        task.update(&state, "c-0", |_| false).unwrap();
        assert_eq!(task.dirty_bytes, task.profiles["c-dirty"].bytes as usize);
        let sum: usize = task.profiles.values().map(|s| s.bytes as usize).sum();
        assert_eq!(task.cached_bytes, sum);
        assert!(sum >= 11 * std::mem::size_of::<Stored>());

        let freed = task.evict(usize::MAX, u64::MAX);
        assert_eq!(task.profiles.len(), 1);
        assert!(task.profiles["c-dirty"].dirty);
        assert_eq!(task.cached_bytes, task.profiles["c-dirty"].bytes as usize);
        assert_eq!(freed + task.cached_bytes, sum);
    }

    /// Eviction lets the profiles written longest ago go first: those changed
    /// in the latest commit stay while older ones leave.
    #[test]
    fn eviction_lets_the_profiles_written_longest_ago_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut task = Task::load(&state, 0).unwrap();
        // Ids chosen so that the table's own order is not the commit order.
        let rounds: Vec<Vec<String>> = (0..4)
            .map(|r| {
                (0..25)
                    .map(|i| format!("c-{}", (i * 7 + r * 13) % 97 + r * 100))
                    .collect()
            })
            .collect();
        for (commit, ids) in rounds.iter().enumerate() {
            for id in ids {
                task.update(&state, id, |_| true).unwrap();
            }
            let commit = commit as u64 + 1;
            let written = task.cut(commit).encode();
            for w in &written.profiles {
                task.committed(commit, w.id.clone(), &w.bytes[..], w.memory, 0);
            }
        }
        let of = |task: &Task, ids: &[String]| -> usize {
            ids.iter()
                .map(|id| task.profiles[id.as_str()].bytes as usize)
                .sum()
        };
        // Exactly the two oldest commits' profiles.
        let excess = of(&task, &rounds[0]) + of(&task, &rounds[1]);
        let freed = task.evict(excess, u64::MAX);
        assert_eq!(freed, excess);
        for (r, ids) in rounds.iter().enumerate() {
            for id in ids {
                assert_eq!(
                    task.profiles.contains_key(id.as_str()),
                    r >= 2,
                    "{id} of commit {}",
                    r + 1
                );
            }
        }
        assert_eq!(
            task.cached_bytes,
            of(&task, &rounds[2]) + of(&task, &rounds[3])
        );
    }

    /// Each lookup is counted by where the profile was: new, held decoded,
    /// in the encoded cache after a commit let it go, or only in RocksDB (a
    /// partition's task started afresh).
    #[test]
    fn lookups_say_where_each_profile_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut task = Task::load(&state, 0).unwrap();
        task.update(&state, "c-1", |_| true).unwrap();
        task.update(&state, "c-1", |_| true).unwrap();
        let written = task.cut(1).encode();
        for w in &written.profiles {
            task.committed(1, w.id.clone(), &w.bytes[..], w.memory, 1 << 20);
        }
        let mut batch = StateBatch::default();
        written.add_to(&mut batch);
        state.write(&batch).unwrap();
        task.evict(usize::MAX, u64::MAX);
        assert!(task.profiles.is_empty());
        task.update(&state, "c-1", |_| false).unwrap();
        let counted = Lookups {
            decoded: 1,
            encoded: 1,
            rocksdb: 0,
            new: 1,
        };
        assert_eq!(task.take_lookups(), counted);
        assert_eq!(task.take_lookups(), Lookups::default());

        let mut fresh = Task::load(&state, 0).unwrap();
        fresh.update(&state, "c-1", |_| false).unwrap();
        let counted = Lookups {
            rocksdb: 1,
            ..Default::default()
        };
        assert_eq!(fresh.take_lookups(), counted);
    }

    /// A commit's cut is encoded as the profiles were when it was taken, while
    /// the engine goes on changing them; a profile changed after the cut waits
    /// for the next commit, and only the ones left as written are counted and
    /// kept in the encoded cache as committed.
    #[test]
    fn a_cut_is_written_as_taken_and_later_changes_go_to_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut task = Task::load(&state, 0).unwrap();
        for id in ["c-1", "c-2", "c-3"] {
            task.update(&state, id, events(1)).unwrap();
        }
        let cut = task.cut(7);
        assert!(task.dirty.is_empty());
        // While the commit thread encodes the cut, the engine changes c-1 and
        // an erasure starts c-3 afresh.
        task.update(&state, "c-1", events(2)).unwrap();
        task.profiles.get_mut("c-3").unwrap().cut = 0;
        let written = cut.encode();
        let decoded: Vec<(String, u64)> = written
            .profiles
            .iter()
            .map(|w| {
                (
                    w.id.to_string(),
                    Stored::decode(&w.id, 0, &w.bytes).unwrap().profile.events,
                )
            })
            .collect();
        assert_eq!(
            decoded,
            vec![("c-1".into(), 1), ("c-2".into(), 1), ("c-3".into(), 1)]
        );
        for w in &written.profiles {
            task.committed(7, w.id.clone(), &w.bytes[..], w.memory, 1 << 20);
        }
        assert!(task.encoded.get("c-1").is_none());
        assert!(task.encoded.get("c-2").is_some());
        // The one taken is counted at the memory estimated while encoding it.
        let c2 = &task.profiles["c-2"];
        let len = task.encoded.get("c-2").unwrap().len();
        assert_eq!(c2.bytes, slot_bytes(&c2.stored.profile, len));
        assert!(task.encoded.get("c-3").is_none());
        // A late answer of an older commit is not taken either.
        task.committed(6, "c-2".into(), &b"older"[..], 1000, 1 << 20);
        assert_ne!(task.encoded.get("c-2"), Some(&b"older"[..]));
        let next = task.cut(8).encode();
        let ids: Vec<&str> = next.profiles.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, vec!["c-1"]);
        let bytes = &next.profiles[0].bytes;
        assert_eq!(Stored::decode("c-1", 0, bytes).unwrap().profile.events, 2);
    }

    /// A cut taken ahead of commit 2 marks its profiles clean, but they stay
    /// counted as changed and cannot leave the cache until commit 2 has
    /// written them; a profile changed again after it goes to commit 2's own
    /// cut, and once the commit's batch (ahead part first) is handed back the
    /// encoded cache keeps the later encoding.
    #[test]
    fn a_cut_ahead_stays_changed_and_cached_until_its_commit_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = store(dir.path());
        let mut task = Task::load(&state, 0).unwrap();
        task.update(&state, "c-old", events(1)).unwrap();
        for w in task.cut(1).encode().profiles {
            task.committed(1, w.id, w.bytes, w.memory, 1 << 20);
        }
        for id in ["c-1", "c-2"] {
            task.update(&state, id, events(1)).unwrap();
        }
        let changed = task.dirty_bytes;
        let ahead = task.cut_ahead(2);
        assert!(task.dirty.is_empty());
        assert_eq!(task.dirty_bytes + task.ahead_bytes, changed);
        // Commit 1 is the last one written: the cut-ahead profiles stay.
        task.evict(usize::MAX, 1);
        assert!(task.profiles.contains_key("c-1") && task.profiles.contains_key("c-2"));
        assert!(!task.profiles.contains_key("c-old"));

        task.update(&state, "c-1", events(2)).unwrap();
        let rest = task.cut(2);
        assert_eq!(task.dirty_bytes + task.ahead_bytes, 0);
        let (ahead, rest) = (ahead.encode(), rest.encode());
        let ids: Vec<&str> = rest.profiles.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, vec!["c-1"]);
        for w in ahead.profiles.iter().chain(&rest.profiles) {
            task.committed(2, w.id.clone(), &w.bytes[..], w.memory, 1 << 20);
        }
        let kept = task.encoded.get("c-1").unwrap();
        assert_eq!(Stored::decode("c-1", 0, kept).unwrap().profile.events, 2);
        assert!(task.encoded.get("c-2").is_some());
        task.evict(usize::MAX, 2);
        assert!(task.profiles.is_empty());
    }
}
