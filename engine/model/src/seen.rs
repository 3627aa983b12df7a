//! Repeated event ids: a touchpoint whose id the profile has already seen is
//! not applied again.
//!
//! Sources deliver some events twice: a file exported and imported again, a
//! collector that retried a request, a connector restarted from an older
//! offset. Kafka's idempotent producer removes only the duplicates of one
//! producer session; these come as new records. So each profile remembers the
//! ids of its recent events, compactly: a 64-bit hash of the id with the
//! event's time, at most [`SeenLimits::max_ids`] of them and none older than
//! [`SeenLimits::max_age_ms`] before the customer's newest event. A repeat
//! inside those bounds is skipped before it changes anything; an id that has
//! been forgotten (pushed out by newer ids, or older than the age bound) is
//! applied like a new event, which is the documented limit of the rule.
//!
//! Checking costs a hash of the id and one cache line of a filter for most
//! events, and a scan of at most `max_ids` entries for the rest; the list is a
//! ring that grows by doubling up to the bound (a customer with a few events
//! holds a few entries, not the bound's worth), so forgetting the oldest moves
//! nothing and a full ring allocates nothing per event.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use siphasher::sip::SipHasher13;

use crate::profile::Profile;
use crate::touchpoint::Touchpoint;
use crate::window::RETENTION_MS;

/// How many event ids a profile remembers by default: more than a customer
/// usually produces between two re-deliveries of the same source.
pub const DEFAULT_MAX_IDS: usize = 64;

/// How far back ids are remembered by default: the profile's longest window
/// ([`RETENTION_MS`], 92 days), so a repeat can never count twice in a window.
pub const DEFAULT_MAX_AGE_MS: i64 = RETENTION_MS;

/// The bounds of a profile's record of seen event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenLimits {
    /// Ids remembered per profile, the newest by event time; 0 turns the check off.
    pub max_ids: usize,
    /// Ids of events older than this before the customer's newest event are
    /// forgotten, ms.
    pub max_age_ms: i64,
}

impl Default for SeenLimits {
    fn default() -> Self {
        SeenLimits {
            max_ids: DEFAULT_MAX_IDS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        }
    }
}

/// One remembered event: the hash of its id and its event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEvent {
    /// [`event_hash`] of the event id.
    pub hash: u64,
    /// Event time, epoch ms.
    pub at_ms: i64,
}

/// The ids of a profile's recent events, oldest event time first.
///
/// Stored as the list of entries; beside it, a one-cache-line filter of the
/// remembered hashes answers "certainly new" for most events without reading
/// the list (rebuilt after a decode and whenever as many ids were forgotten as
/// the bound holds, so forgotten ids do not crowd it).
#[derive(Debug, Clone, Default)]
pub struct SeenEvents {
    entries: VecDeque<SeenEvent>,
    filter: Filter,
}

/// Stored (profile encoding version 5) as each entry's hash in eight bytes
/// and its event time as the milliseconds after the previous entry's (the
/// first one's after the epoch): about 10 bytes an entry where the hash as a
/// varint and the epoch milliseconds took 17.
impl Serialize for SeenEvents {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.entries.len()))?;
        let mut prev = 0i64;
        for e in &self.entries {
            seq.serialize_element(&(e.hash.to_le_bytes(), e.at_ms.wrapping_sub(prev)))?;
            prev = e.at_ms;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SeenEvents {
    /// Reads the entries with room for one more (a profile is mostly decoded
    /// to take a touchpoint, whose id is remembered next), without a list of
    /// the packed pairs first.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut prev = 0i64;
        let unpack = |(hash, gap): ([u8; 8], i64)| {
            prev = prev.wrapping_add(gap);
            SeenEvent {
                hash: u64::from_le_bytes(hash),
                at_ms: prev,
            }
        };
        let entries = d.deserialize_seq(crate::profile::WithRoom::new(ROOM, unpack))?;
        Ok(SeenEvents {
            entries,
            filter: Filter::default(),
        })
    }
}

/// The most entries a decoded list makes room for at once (the bound is
/// configurable; a stored list longer than this grows as it is read).
const ROOM: usize = 1024;

/// [`SeenEvents`] as profile encoding version 4 stored it. Only ever decoded.
#[derive(Deserialize)]
pub(crate) struct SeenEventsV4 {
    entries: VecDeque<SeenEvent>,
}

impl From<SeenEventsV4> for SeenEvents {
    fn from(v: SeenEventsV4) -> Self {
        SeenEvents {
            entries: v.entries,
            filter: Filter::default(),
        }
    }
}

impl PartialEq for SeenEvents {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Eq for SeenEvents {}

/// A 512-bit filter over hashes (no false negatives once built), and the
/// bounds of the entries' event times, so that the usual event reads none of
/// the entries themselves.
#[derive(Debug, Clone, Default)]
struct Filter {
    bits: [u64; 8],
    /// Whether the filter covers every entry (false after a decode).
    built: bool,
    /// Entries forgotten since the last rebuild (their bits are still set).
    forgotten: usize,
    /// At most the oldest entry's event time.
    oldest_ms: i64,
    /// The newest entry's event time.
    newest_ms: i64,
}

impl Filter {
    fn slot(hash: u64) -> (usize, u64) {
        let i = (hash >> 55) as usize;
        (i / 64, 1 << (i % 64))
    }

    fn add(&mut self, hash: u64) {
        let (word, bit) = Self::slot(hash);
        self.bits[word] |= bit;
    }

    fn may_contain(&self, hash: u64) -> bool {
        let (word, bit) = Self::slot(hash);
        self.bits[word] & bit != 0
    }
}

/// The stable 64-bit hash an event id is remembered by (SipHash-1-3 with fixed
/// keys: the same in every build, since the hashes are stored with profiles).
pub fn event_hash(event_id: &str) -> u64 {
    SipHasher13::new_with_keys(0x7261_7070_6f72_7421, 0x6576_656e_745f_6964)
        .hash(event_id.as_bytes())
}

impl SeenEvents {
    /// The remembered events, oldest event time first.
    pub fn iter(&self) -> impl Iterator<Item = &SeenEvent> {
        self.entries.iter()
    }

    /// How many events are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no event is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an event whose id hashes to `hash` is remembered.
    pub fn contains(&self, hash: u64) -> bool {
        self.entries.iter().any(|e| e.hash == hash)
    }

    /// Starts loading every remembered id (see [`crate::prefetch`]): encoding
    /// reads them all.
    pub fn prefetch_all(&self) {
        let (older, newer) = self.entries.as_slices();
        crate::prefetch::slice(older);
        crate::prefetch::slice(newer);
    }

    /// Starts loading the newest ids, where the next one is appended (see
    /// [`crate::prefetch`]).
    pub fn prefetch(&self) {
        let (older, newer) = self.entries.as_slices();
        let newest = if newer.is_empty() { older } else { newer };
        crate::prefetch::slice(&newest[newest.len().saturating_sub(4)..]);
    }

    /// Remembers the event `event_id` at `at_ms` unless it is a repeat; returns
    /// whether it is new (to be applied). `newest_ms` is the customer's newest
    /// event time so far, which the age bound counts back from.
    pub fn admit(
        &mut self,
        event_id: &str,
        at_ms: i64,
        newest_ms: i64,
        limits: &SeenLimits,
    ) -> bool {
        if limits.max_ids == 0 {
            return true;
        }
        let hash = event_hash(event_id);
        if !self.filter.built || self.filter.forgotten >= limits.max_ids {
            self.rebuild_filter();
        }
        if self.filter.may_contain(hash) && self.contains(hash) {
            return false;
        }
        let horizon = newest_ms.max(at_ms).saturating_sub(limits.max_age_ms);
        if self.filter.oldest_ms < horizon {
            let expired = self
                .entries
                .iter()
                .take_while(|e| e.at_ms < horizon)
                .count();
            self.forget(expired);
            self.filter.oldest_ms = self.entries.front().map_or(i64::MAX, |e| e.at_ms);
        }
        if at_ms < horizon {
            // Too old to remember: it would be forgotten at once.
            return true;
        }
        // Events mostly arrive in time order: then the new one goes last.
        let mut pos = if self.entries.is_empty() || at_ms >= self.filter.newest_ms {
            self.entries.len()
        } else {
            self.entries.partition_point(|e| e.at_ms <= at_ms)
        };
        if self.entries.len() >= limits.max_ids {
            // Make room by forgetting the oldest (also any surplus from a larger
            // bound before), without growing the list.
            let excess = self.entries.len() + 1 - limits.max_ids;
            if pos < excess {
                // Older than every id the bound keeps.
                self.forget(excess - 1);
                return true;
            }
            self.forget(excess);
            pos -= excess;
        }
        if self.entries.is_empty() {
            self.filter.newest_ms = at_ms;
        }
        self.entries.insert(pos, SeenEvent { hash, at_ms });
        let f = &mut self.filter;
        f.add(hash);
        f.oldest_ms = f.oldest_ms.min(at_ms);
        f.newest_ms = f.newest_ms.max(at_ms);
        true
    }

    /// Adds the events `other` remembers (identity stitching): the union by id
    /// hash (an id remembered by both keeps its later time), then the bounds of
    /// `limits` counted back from the newest remembered event: none older than
    /// `max_age_ms`, at most the newest `max_ids` (`max_ids` 0 keeps none, as
    /// the check is off). Commutative and associative, so an event seen in
    /// any merged history is refused afterwards, whatever the merge order.
    pub fn merge(&mut self, other: &SeenEvents, limits: &SeenLimits) {
        let mut all: Vec<SeenEvent> = self.entries.iter().chain(&other.entries).copied().collect();
        // One entry per hash, the latest time first, then back in time order.
        all.sort_by_key(|e| (e.hash, std::cmp::Reverse(e.at_ms)));
        all.dedup_by_key(|e| e.hash);
        all.sort_by_key(|e| (e.at_ms, e.hash));
        if let Some(newest) = all.last().map(|e| e.at_ms) {
            let horizon = newest.saturating_sub(limits.max_age_ms);
            all.retain(|e| e.at_ms >= horizon);
        }
        let excess = all.len().saturating_sub(limits.max_ids);
        all.drain(..excess);
        self.entries = all.into();
        // Rebuilt from the entries before the next check.
        self.filter = Filter::default();
    }

    /// Forgets the `n` oldest events.
    fn forget(&mut self, n: usize) {
        self.entries.drain(..n);
        self.filter.forgotten += n;
    }

    fn rebuild_filter(&mut self) {
        self.filter = Filter {
            built: true,
            oldest_ms: i64::MAX,
            newest_ms: i64::MIN,
            ..Filter::default()
        };
        for e in &self.entries {
            let f = &mut self.filter;
            f.add(e.hash);
            f.oldest_ms = f.oldest_ms.min(e.at_ms);
            f.newest_ms = f.newest_ms.max(e.at_ms);
        }
    }
}

impl Profile {
    /// Whether `t` is new to this profile (and so to be applied); a repeat of a
    /// remembered event id is refused. Remembers `t`'s id when new. Called
    /// before [`Profile::apply`].
    pub fn admit(&mut self, t: &Touchpoint, limits: &SeenLimits) -> bool {
        let newest = if self.events == 0 {
            i64::MIN
        } else {
            self.last_seen_ms
        };
        self.seen_events
            .admit(&t.event_id, t.event_time, newest, limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;
    use crate::touchpoint::{Channel, EventType};

    const T0: i64 = 1_764_000_000_000;
    const DAY: i64 = 86_400_000;

    fn purchase(id: &str, at: i64) -> Touchpoint {
        tp(id, "c1", Channel::Store, EventType::Purchase, at).with_amount(10.0)
    }

    /// Applies `t` the way the engine does: only when admitted.
    fn offer(p: &mut Profile, t: &Touchpoint, limits: &SeenLimits) -> bool {
        let new = p.admit(t, limits);
        if new {
            p.apply(t);
        }
        new
    }

    /// A decoded profile has room for its next touchpoint in its recent
    /// touchpoints and remembered ids: taking it allocates no larger lists
    /// (the lists were decoded to their exact length, and the first push grew
    /// each one, a new allocation and a copy, on nearly every event of a
    /// customer whose profile had left the cache). A full list gets none.
    #[test]
    fn a_decoded_profile_has_room_for_its_next_touchpoint() {
        let limits = SeenLimits::default();
        let mut p = Profile::new("c1");
        for i in 0..3 {
            assert!(offer(&mut p, &purchase(&format!("r-{i}"), T0 + i), &limits));
        }
        let mut decoded = Profile::decode(&p.encode()).unwrap();
        assert_eq!(decoded, p);
        assert!(decoded.recent.capacity() > decoded.recent.len());
        assert!(decoded.seen_events.entries.capacity() > decoded.seen_events.len());
        let (recent, seen) = (
            decoded.recent.as_slices().0.as_ptr(),
            decoded.seen_events.entries.as_slices().0.as_ptr(),
        );
        assert!(offer(&mut decoded, &purchase("r-next", T0 + 10), &limits));
        assert_eq!(decoded.recent.as_slices().0.as_ptr(), recent, "not moved");
        assert_eq!(
            decoded.seen_events.entries.as_slices().0.as_ptr(),
            seen,
            "not moved"
        );

        for i in 3..20 {
            assert!(offer(&mut p, &purchase(&format!("r-{i}"), T0 + i), &limits));
        }
        let full = Profile::decode(&p.encode()).unwrap();
        assert_eq!(full.recent.len(), crate::profile::RECENT_TOUCHPOINTS);
        assert_eq!(full.recent.capacity(), full.recent.len());
    }

    #[test]
    fn a_repeated_event_id_is_refused_and_changes_nothing() {
        let limits = SeenLimits::default();
        let mut p = Profile::new("c1");
        assert!(offer(&mut p, &purchase("r-1", T0), &limits));
        assert!(offer(&mut p, &purchase("r-2", T0 + 1_000), &limits));
        let before = p.clone();
        // The same id again, even with another time or content, is the same event.
        assert!(!offer(&mut p, &purchase("r-1", T0), &limits));
        assert!(!offer(&mut p, &purchase("r-1", T0 + 5_000), &limits));
        assert_eq!(p, before, "a repeat changes nothing");
        assert_eq!((p.orders, p.lifetime_value), (2, 20.0));
    }

    #[test]
    fn an_id_older_than_the_age_bound_is_forgotten() {
        let limits = SeenLimits {
            max_ids: 64,
            max_age_ms: 7 * DAY,
        };
        let mut p = Profile::new("c1");
        assert!(offer(&mut p, &purchase("old", T0), &limits));
        assert!(offer(&mut p, &purchase("mid", T0 + 3 * DAY), &limits));
        // Within seven days of the newest event both are remembered.
        assert!(!offer(&mut p, &purchase("old", T0), &limits));
        // Eight days later the first is past the bound; the second is not.
        assert!(offer(&mut p, &purchase("new", T0 + 8 * DAY), &limits));
        assert!(!p.seen_events.contains(event_hash("old")));
        assert!(!offer(&mut p, &purchase("mid", T0 + 3 * DAY), &limits));
        assert!(
            offer(&mut p, &purchase("old", T0), &limits),
            "a forgotten id is applied again"
        );
        assert_eq!(p.orders, 4);
        assert!(p.seen_events.iter().all(|e| e.at_ms >= T0 + DAY));
    }

    #[test]
    fn the_record_is_bounded_by_count_keeping_the_newest() {
        let limits = SeenLimits {
            max_ids: 4,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        };
        let mut p = Profile::new("c1");
        // Arriving out of order: the newest four by event time are kept.
        for (i, at) in [5, 1, 3, 6, 2, 4].into_iter().enumerate() {
            assert!(
                offer(&mut p, &purchase(&format!("e{at}"), T0 + at), &limits),
                "{i}"
            );
        }
        let times: Vec<i64> = p.seen_events.iter().map(|e| e.at_ms - T0).collect();
        assert_eq!(times, [3, 4, 5, 6]);
        assert!(!offer(&mut p, &purchase("e6", T0 + 6), &limits));
        assert!(!offer(&mut p, &purchase("e3", T0 + 3), &limits));
        // e1 and e2 were pushed out: they count again.
        assert!(offer(&mut p, &purchase("e1", T0 + 1), &limits));
        assert_eq!(p.seen_events.len(), 4);
        assert!(
            p.seen_events.entries.capacity() <= 4,
            "never grows past the bound"
        );
    }

    #[test]
    fn the_filter_never_hides_a_remembered_id_through_long_churn() {
        let limits = SeenLimits::default();
        let mut p = Profile::new("c1");
        for i in 0..1_000 {
            assert!(p.admit(&purchase(&format!("e{i}"), T0 + i), &limits));
        }
        // The newest 64 are refused, through a fresh decode too; older ones count again.
        let mut decoded = Profile::decode(&p.encode()).unwrap();
        for i in 936..1_000 {
            let t = purchase(&format!("e{i}"), T0 + i);
            assert!(!p.admit(&t, &limits), "e{i}");
            assert!(!decoded.admit(&t, &limits), "decoded e{i}");
        }
        assert!(p.admit(&purchase("e935", T0 + 935), &limits));
        assert_eq!(p.seen_events.len(), 64);
    }

    #[test]
    fn a_lowered_bound_trims_records_written_under_a_larger_one() {
        let mut p = Profile::new("c1");
        for i in 0..10 {
            assert!(p.admit(&purchase(&format!("e{i}"), T0 + i), &SeenLimits::default()));
        }
        let small = SeenLimits {
            max_ids: 3,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        };
        assert!(p.admit(&purchase("e10", T0 + 10), &small));
        let times: Vec<i64> = p.seen_events.iter().map(|e| e.at_ms - T0).collect();
        assert_eq!(times, [8, 9, 10]);
    }

    #[test]
    fn merged_records_refuse_the_ids_of_both_within_the_bounds() {
        let limits = SeenLimits {
            max_ids: 4,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        };
        let (mut a, mut b) = (Profile::new("c1"), Profile::new("a1"));
        for (p, ats) in [(&mut a, [1, 3, 5]), (&mut b, [2, 4, 6])] {
            for at in ats {
                assert!(offer(p, &purchase(&format!("e{at}"), T0 + at), &limits));
            }
        }
        // e5 is known to both, at different times: one entry, the later time.
        assert!(offer(&mut b, &purchase("e5", T0 + 7), &limits));
        let mut ab = a.seen_events.clone();
        ab.merge(&b.seen_events, &limits);
        let mut ba = b.seen_events.clone();
        ba.merge(&a.seen_events, &limits);
        assert_eq!(ab, ba);
        let times: Vec<i64> = ab.iter().map(|e| e.at_ms - T0).collect();
        assert_eq!(times, [3, 4, 6, 7]);
        a.seen_events = ab;
        assert!(
            !offer(&mut a, &purchase("e4", T0 + 4), &limits),
            "from the other history"
        );
        assert!(!offer(&mut a, &purchase("e3", T0 + 3), &limits), "its own");
        assert!(
            offer(&mut a, &purchase("e1", T0 + 1), &limits),
            "outside the bound"
        );
    }

    #[test]
    fn zero_ids_turns_the_check_off() {
        let limits = SeenLimits {
            max_ids: 0,
            max_age_ms: DEFAULT_MAX_AGE_MS,
        };
        let mut p = Profile::new("c1");
        assert!(offer(&mut p, &purchase("r-1", T0), &limits));
        assert!(offer(&mut p, &purchase("r-1", T0), &limits));
        assert_eq!(p.orders, 2);
        assert!(p.seen_events.is_empty());
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Stored with profiles: a changed hash would let every repeat through.
        assert_eq!(event_hash("r-1"), event_hash("r-1"));
        assert_ne!(event_hash("r-1"), event_hash("r-2"));
        assert_eq!(event_hash("r-1"), 16_333_585_594_920_926_313);
    }

    #[test]
    fn a_version_3_profile_decodes_with_no_ids_and_keeps_them_from_version_4() {
        let limits = SeenLimits::default();
        let mut p = Profile::new("c1");
        assert!(offer(&mut p, &purchase("r-1", T0), &limits));
        let seen = std::mem::take(&mut p.seen_events);
        // Version 3 wrote the same fields without `seen_events` (an empty list is
        // one byte, its length, at the end of the body), and its windows
        // unpacked: with none, the same bytes.
        p.windows = Default::default();
        let mut v3 = p.encode();
        assert_eq!(v3.pop(), Some(0));
        v3[0] = 3;
        let old = Profile::decode(&v3).unwrap();
        assert_eq!(old, p);
        p.seen_events = seen;
        let v4 = p.encode();
        assert_eq!(v4[0], crate::profile::PROFILE_ENCODING_VERSION);
        let back = Profile::decode(&v4).unwrap();
        assert!(back.seen_events.contains(event_hash("r-1")));
        assert!(!back.clone().admit(&purchase("r-1", T0), &limits));
    }

    /// Packed ids read back exactly, with their event times in any order and
    /// at the ends of the range.
    #[test]
    fn packed_ids_read_back_exactly() {
        let times = [T0, T0 - DAY, T0 + 1, i64::MIN, i64::MAX, 0, -5, T0];
        let seen = SeenEvents {
            entries: times
                .iter()
                .enumerate()
                .map(|(i, &at_ms)| SeenEvent {
                    hash: [0, u64::MAX, 1 << 63, 42][i % 4] ^ i as u64,
                    at_ms,
                })
                .collect(),
            filter: Filter::default(),
        };
        let bytes = postcard::to_allocvec(&seen).unwrap();
        let back: SeenEvents = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, seen);
        assert_eq!(
            back.entries.iter().map(|e| e.at_ms).collect::<Vec<_>>(),
            times
        );
    }

    /// Ids remembered seconds apart take about ten bytes each.
    #[test]
    fn packed_ids_are_small() {
        let limits = SeenLimits::default();
        let mut p = Profile::new("c1");
        for i in 0..64 {
            assert!(p.admit(&purchase(&format!("e-{i}"), T0 + i * 3_000), &limits));
        }
        let bytes = postcard::to_allocvec(&p.seen_events).unwrap();
        assert!(bytes.len() <= 2 + 64 * 11, "{}", bytes.len());
    }
}
