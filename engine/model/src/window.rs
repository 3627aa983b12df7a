//! Event counts over sliding windows, kept compactly in the profile.
//!
//! Journeys ask "how many product views in the last 168 hours" or "how many
//! calls on the call-center channel in 48 hours". Keeping every event time would
//! grow without bound, so each (event type, channel) series keeps counts in
//! buckets that coarsen with age (a minute wide for recent events, a day wide
//! for old ones) and drop out after [`RETENTION_MS`]. Ages are measured against
//! the newest event of the series, in event time, so replays give the same
//! buckets as live processing and nothing needs a clock or a sweep.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::touchpoint::{Channel, EventType};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// How long counts are kept: the longest window a journey may ask about.
pub const RETENTION_MS: i64 = 92 * DAY_MS;

/// Bucket widths by age: events younger than the first bound are counted per
/// minute, and so on. A window is exact to the bucket width at its boundary's age.
const TIERS: [(i64, i64); 4] = [
    (HOUR_MS, MINUTE_MS),
    (24 * HOUR_MS, 15 * MINUTE_MS),
    (7 * DAY_MS, HOUR_MS),
    (RETENTION_MS, DAY_MS),
];

/// Most buckets one series keeps (the tiers above need at most 60 + 92 + 144 + 86);
/// beyond it the oldest are dropped, so no event source can make a profile large.
pub const MAX_BUCKETS: usize = 384;

/// The events of one bucket: those at or after `start_ms`, before the next bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, epoch ms, aligned to its width.
    pub start_ms: i64,
    /// Events in it.
    pub count: u32,
}

/// The counts of one event type on one channel, as read from [`Windows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series<'a> {
    /// What happened.
    pub event_type: EventType,
    /// Where.
    pub channel: Channel,
    /// Event time of the newest event, epoch ms (exact, for recency).
    pub last_ms: i64,
    /// Buckets, oldest first.
    pub buckets: &'a [Bucket],
}

/// What [`Windows`] keeps of one series besides its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    event_type: EventType,
    channel: Channel,
    last_ms: i64,
    /// How many of the shared buckets are this series'.
    len: u32,
}

/// Windowed event counts per (event type, channel).
///
/// The buckets of every series are kept in one list, each series' together
/// and the series in the order of their heads. A profile's windows are then
/// two allocations however many series it has: decoding, encoding and
/// dropping a profile follow no pointer per series, and a series' buckets sit
/// beside the next one's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows {
    /// One head per (event type, channel) seen within the retention.
    heads: Vec<Head>,
    /// The series' buckets, one series after another, each oldest first.
    buckets: Vec<Bucket>,
}

impl Windows {
    /// The series, each with its buckets, in the order they are kept (and stored).
    pub fn series(&self) -> impl Iterator<Item = Series<'_>> + '_ {
        let mut start = 0;
        self.heads.iter().map(move |h| {
            let end = start + h.len as usize;
            let s = Series {
                event_type: h.event_type,
                channel: h.channel,
                last_ms: h.last_ms,
                buckets: &self.buckets[start..end],
            };
            start = end;
            s
        })
    }

    /// How many series there are.
    pub fn series_len(&self) -> usize {
        self.heads.len()
    }

    /// Starts loading the windows' two lists (see [`crate::prefetch`]).
    pub fn prefetch(&self) {
        crate::prefetch::slice(&self.heads);
        crate::prefetch::slice(&self.buckets);
    }

    /// Appends a series (its head must not be there yet).
    fn push_series(&mut self, s: Series<'_>) {
        self.heads.push(Head {
            event_type: s.event_type,
            channel: s.channel,
            last_ms: s.last_ms,
            len: s.buckets.len() as u32,
        });
        self.buckets.extend_from_slice(s.buckets);
    }

    /// Counts one event.
    pub fn record(&mut self, event_type: EventType, channel: Channel, at_ms: i64) {
        let mut start = 0;
        let found = self.heads.iter().position(|h| {
            let hit = h.event_type == event_type && h.channel == channel;
            if !hit {
                start += h.len as usize;
            }
            hit
        });
        let i = found.unwrap_or_else(|| {
            self.heads.push(Head {
                event_type,
                channel,
                last_ms: at_ms,
                len: 0,
            });
            self.heads.len() - 1
        });
        let before = self.heads[i].last_ms;
        SeriesMut {
            head: &mut self.heads[i],
            all: &mut self.buckets,
            start,
        }
        .record(at_ms);
        // Series whose newest event fell out of the retention of the newest overall
        // go; the retention is in days, so this pass over every series runs when an
        // event starts a new day, not on every event.
        if at_ms > before && before.div_euclid(DAY_MS) != at_ms.div_euclid(DAY_MS) {
            let newest = self.heads.iter().map(|h| h.last_ms).max().unwrap_or(at_ms);
            self.retain(|h| h.last_ms > newest - RETENTION_MS);
        }
    }

    /// Keeps the series `keep` accepts, with their buckets, in their order.
    fn retain(&mut self, keep: impl Fn(&Head) -> bool) {
        let Windows { heads, buckets } = self;
        let (mut read, mut write) = (0, 0);
        heads.retain(|h| {
            let len = h.len as usize;
            let kept = keep(h);
            if kept {
                buckets.copy_within(read..read + len, write);
                write += len;
            }
            read += len;
            kept
        });
        buckets.truncate(write);
    }

    /// Events of `event_type` on any channel in `[since_ms, until_ms]`.
    pub fn count(&self, event_type: EventType, since_ms: i64, until_ms: i64) -> u64 {
        self.series()
            .filter(|s| s.event_type == event_type)
            .map(|s| s.count(since_ms, until_ms))
            .sum()
    }

    /// Events of `event_type` on `channel` in `[since_ms, until_ms]`.
    pub fn count_on(
        &self,
        event_type: EventType,
        channel: Channel,
        since_ms: i64,
        until_ms: i64,
    ) -> u64 {
        self.series()
            .filter(|s| s.event_type == event_type && s.channel == channel)
            .map(|s| s.count(since_ms, until_ms))
            .sum()
    }

    /// Event time of the newest event of `event_type` on any channel (0 when none).
    pub fn last_ms(&self, event_type: EventType) -> i64 {
        self.heads
            .iter()
            .filter(|h| h.event_type == event_type)
            .map(|h| h.last_ms)
            .max()
            .unwrap_or(0)
    }

    /// Adds `other`'s counts into these (identity stitching): per (event type,
    /// channel) the counts of buckets with the same start add and the newest
    /// event time is the later one; buckets of different widths are kept side
    /// by side (a window counts a bucket by its start, so each still counts
    /// where it did). Buckets and series older than [`RETENTION_MS`] before the
    /// newest go, and a series that grows past [`MAX_BUCKETS`] is coarsened as
    /// [`Windows::record`] does. Below that cap the merge is commutative and
    /// associative, so the order histories arrive in does not change the counts.
    pub fn merge(&mut self, other: &Windows) {
        // Stitching is rare: the series are merged one by one, each in a list
        // of its own, and laid out again at the end.
        let mut all: Vec<(Head, Vec<Bucket>)> = self
            .series()
            .map(|s| (self.head_of(&s), s.buckets.to_vec()))
            .collect();
        for theirs in other.series() {
            match all
                .iter_mut()
                .find(|(h, _)| h.event_type == theirs.event_type && h.channel == theirs.channel)
            {
                Some((head, buckets)) => merge_series(head, buckets, &theirs),
                None => all.push((other.head_of(&theirs), theirs.buckets.to_vec())),
            }
        }
        if let Some(newest) = all.iter().map(|(h, _)| h.last_ms).max() {
            let horizon = newest.saturating_sub(RETENTION_MS);
            all.retain(|(h, _)| h.last_ms > horizon);
        }
        all.sort_by_key(|(h, _)| (h.event_type.as_str(), h.channel.index()));
        *self = Windows::default();
        for (h, buckets) in &all {
            self.push_series(Series {
                event_type: h.event_type,
                channel: h.channel,
                last_ms: h.last_ms,
                buckets,
            });
        }
    }

    fn head_of(&self, s: &Series<'_>) -> Head {
        Head {
            event_type: s.event_type,
            channel: s.channel,
            last_ms: s.last_ms,
            len: s.buckets.len() as u32,
        }
    }

    /// Every bucket, mutable, for tests that set odd counts.
    #[cfg(test)]
    pub(crate) fn buckets_mut(&mut self) -> &mut [Bucket] {
        &mut self.buckets
    }
}

/// Adds `other`'s buckets (same event type and channel) into `ours`.
fn merge_series(head: &mut Head, ours: &mut Vec<Bucket>, other: &Series<'_>) {
    head.last_ms = head.last_ms.max(other.last_ms);
    let mut all: Vec<Bucket> = ours.iter().chain(other.buckets).copied().collect();
    all.sort_by_key(|b| b.start_ms);
    let mut merged: Vec<Bucket> = Vec::with_capacity(all.len());
    for b in all {
        match merged.last_mut() {
            Some(last) if last.start_ms == b.start_ms => {
                last.count = last.count.saturating_add(b.count)
            }
            _ => merged.push(b),
        }
    }
    let horizon = head.last_ms.saturating_sub(RETENTION_MS);
    merged.retain(|b| b.start_ms > horizon);
    *ours = merged;
    head.len = ours.len() as u32;
    if ours.len() > MAX_BUCKETS {
        SeriesMut {
            head,
            all: ours,
            start: 0,
        }
        .coarsen();
    }
}

impl Series<'_> {
    fn count(&self, since_ms: i64, until_ms: i64) -> u64 {
        self.buckets
            .iter()
            .filter(|b| b.start_ms >= since_ms && b.start_ms <= until_ms)
            .map(|b| u64::from(b.count))
            .sum()
    }
}

/// One series being changed: its head and its buckets, those of `all` from
/// `start` on (`head.len` of them), which it grows and shrinks in place.
struct SeriesMut<'a> {
    head: &'a mut Head,
    all: &'a mut Vec<Bucket>,
    start: usize,
}

impl SeriesMut<'_> {
    fn buckets(&mut self) -> &mut [Bucket] {
        let end = self.start + self.head.len as usize;
        &mut self.all[self.start..end]
    }

    /// Inserts `b` as the series' bucket number `at`.
    fn insert(&mut self, at: usize, b: Bucket) {
        self.all.insert(self.start + at, b);
        self.head.len += 1;
    }

    /// Removes the series' buckets numbered `range`.
    fn remove(&mut self, range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        self.head.len -= range.len() as u32;
        self.all
            .drain(self.start + range.start..self.start + range.end);
    }

    fn record(&mut self, at_ms: i64) {
        let before = self.head.last_ms;
        let advanced = at_ms > before;
        self.head.last_ms = before.max(at_ms);
        let start = align(at_ms, width_at(self.head.last_ms - at_ms));
        let len = self.head.len as usize;
        let fresh = Bucket {
            start_ms: start,
            count: 1,
        };
        // Events mostly arrive in order: look at the newest bucket first, which
        // touches one cache line instead of a binary search's several.
        match self.buckets().last_mut() {
            Some(b) if b.start_ms == start => b.count = b.count.saturating_add(1),
            Some(b) if b.start_ms < start => self.insert(len, fresh),
            None => self.insert(len, fresh),
            Some(_) => self.insert_late(fresh),
        }
        if advanced {
            self.expire_and_coarsen(before.div_euclid(DAY_MS) != at_ms.div_euclid(DAY_MS));
        }
    }

    /// Counts an event older than the newest bucket.
    fn insert_late(&mut self, fresh: Bucket) {
        let pos = self
            .buckets()
            .partition_point(|b| b.start_ms < fresh.start_ms);
        match self.buckets().get_mut(pos) {
            Some(b) if b.start_ms == fresh.start_ms => b.count = b.count.saturating_add(1),
            _ => self.insert(pos, fresh),
        }
    }

    /// Widths depend on the age relative to the newest event, so only a newer
    /// newest can make buckets coarser or old. What fell out of the retention goes
    /// when the newest event starts a new day (the oldest come first). Finer buckets than their age calls for only
    /// count more exactly, so coarsening waits until the series has grown to the
    /// next power of two (or its cap): a handful of passes over a series' life
    /// instead of one per event.
    fn expire_and_coarsen(&mut self, new_day: bool) {
        let horizon = self.head.last_ms - RETENTION_MS;
        // The oldest buckets are a day wide: checking once a day is enough.
        if new_day
            && self
                .buckets()
                .first()
                .is_some_and(|b| b.start_ms <= horizon)
        {
            let old = self.buckets().partition_point(|b| b.start_ms <= horizon);
            self.remove(0..old);
        }
        let n = self.head.len as usize;
        if n >= 32 && (n.is_power_of_two() || n >= MAX_BUCKETS) {
            self.coarsen();
        }
    }

    /// Re-aligns buckets to the width their age calls for, merging neighbours
    /// that fall into one bucket, and drops what is too old.
    fn coarsen(&mut self) {
        let newest = self.head.last_ms;
        let buckets = self.buckets();
        let n = buckets.len();
        // In place: `kept` buckets are done, and never overtake the one being read.
        let mut kept = 0;
        for i in 0..n {
            let b = buckets[i];
            if b.start_ms <= newest - RETENTION_MS {
                continue;
            }
            let start = align(b.start_ms, width_at(newest - b.start_ms));
            if kept > 0 && buckets[kept - 1].start_ms == start {
                let last = &mut buckets[kept - 1];
                last.count = last.count.saturating_add(b.count);
            } else {
                buckets[kept] = Bucket {
                    start_ms: start,
                    count: b.count,
                };
                kept += 1;
            }
        }
        self.remove(kept..n);
        self.remove(0..kept.saturating_sub(MAX_BUCKETS));
    }
}

/// How windows are stored (profile encoding version 5): the series one after
/// another, each as its event type, channel, newest event time and buckets,
/// and each bucket's start as the whole minutes and the milliseconds after the
/// previous bucket's start (the first one's after the epoch), then its count.
/// Starts are aligned to whole minutes, so a bucket takes three or four bytes
/// where its epoch milliseconds alone took seven. Decoding appends every
/// series' buckets to the one list as it reads them.
mod packed {
    use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, SerializeStruct};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Bucket, Head, Series, Windows, MINUTE_MS};

    const SERIES_FIELDS: &[&str] = &["event_type", "channel", "last_ms", "buckets"];

    impl Serialize for Windows {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Windows", 1)?;
            st.serialize_field("series", &List(self))?;
            st.end()
        }
    }

    struct List<'a>(&'a Windows);

    impl Serialize for List<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.series_len()))?;
            for series in self.0.series() {
                seq.serialize_element(&series)?;
            }
            seq.end()
        }
    }

    impl Serialize for Series<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut st = s.serialize_struct("Series", SERIES_FIELDS.len())?;
            st.serialize_field("event_type", &self.event_type)?;
            st.serialize_field("channel", &self.channel)?;
            st.serialize_field("last_ms", &self.last_ms)?;
            st.serialize_field("buckets", &Packed(self.buckets))?;
            st.end()
        }
    }

    struct Packed<'a>(&'a [Bucket]);

    impl Serialize for Packed<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            let mut prev = 0i64;
            for b in self.0 {
                let gap = b.start_ms.wrapping_sub(prev);
                let minutes = gap.div_euclid(MINUTE_MS);
                let rest = gap.rem_euclid(MINUTE_MS) as u32;
                seq.serialize_element(&(minutes, rest, b.count))?;
                prev = b.start_ms;
            }
            seq.end()
        }
    }

    impl<'de> Deserialize<'de> for Windows {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let mut w = Windows::default();
            d.deserialize_struct("Windows", &["series"], Whole(&mut w))?;
            Ok(w)
        }
    }

    /// Reads the windows' one field, the list of series.
    struct Whole<'a>(&'a mut Windows);

    impl<'de> Visitor<'de> for Whole<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("windowed counts")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            seq.next_element_seed(Heads(self.0))?
                .ok_or_else(|| de::Error::invalid_length(0, &"the list of series"))
        }
    }

    /// Reads the list of series into the windows.
    struct Heads<'a>(&'a mut Windows);

    impl<'de> DeserializeSeed<'de> for Heads<'_> {
        type Value = ();

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Heads<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of series")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            // The stored length is trusted only as far as a sensible profile goes.
            self.0.heads.reserve(seq.size_hint().unwrap_or(0).min(64));
            while let Some(head) = seq.next_element_seed(OneSeries(&mut self.0.buckets))? {
                self.0.heads.push(head);
            }
            Ok(())
        }
    }

    /// Reads one series: its head, and its buckets appended to the list.
    struct OneSeries<'a>(&'a mut Vec<Bucket>);

    impl<'de> DeserializeSeed<'de> for OneSeries<'_> {
        type Value = Head;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
            d.deserialize_struct("Series", SERIES_FIELDS, self)
        }
    }

    impl<'de> Visitor<'de> for OneSeries<'_> {
        type Value = Head;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a series")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Head, A::Error> {
            let missing = |i| de::Error::invalid_length(i, &"a series of four fields");
            let event_type = seq.next_element()?.ok_or_else(|| missing(0))?;
            let channel = seq.next_element()?.ok_or_else(|| missing(1))?;
            let last_ms = seq.next_element()?.ok_or_else(|| missing(2))?;
            let len = seq
                .next_element_seed(Buckets(self.0))?
                .ok_or_else(|| missing(3))?;
            Ok(Head {
                event_type,
                channel,
                last_ms,
                len,
            })
        }
    }

    /// Reads one series' packed buckets onto the end of the list; its value
    /// is how many there were.
    struct Buckets<'a>(&'a mut Vec<Bucket>);

    impl<'de> DeserializeSeed<'de> for Buckets<'_> {
        type Value = u32;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Buckets<'_> {
        type Value = u32;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("packed buckets")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
            let before = self.0.len();
            self.0
                .reserve(seq.size_hint().unwrap_or(0).min(super::MAX_BUCKETS));
            let mut prev = 0i64;
            while let Some((minutes, rest, count)) = seq.next_element::<(i64, u32, u32)>()? {
                prev = prev
                    .wrapping_add(minutes.wrapping_mul(MINUTE_MS))
                    .wrapping_add(i64::from(rest));
                self.0.push(Bucket {
                    start_ms: prev,
                    count,
                });
            }
            u32::try_from(self.0.len() - before)
                .map_err(|_| de::Error::custom("a series with more than 2^32 buckets"))
        }
    }
}

/// [`Windows`] as profile encoding versions 2 to 4 stored it (each bucket's
/// start in epoch milliseconds). Only ever decoded.
#[derive(Deserialize)]
pub(crate) struct WindowsV4 {
    series: Vec<SeriesV4>,
}

#[derive(Deserialize)]
struct SeriesV4 {
    event_type: EventType,
    channel: Channel,
    last_ms: i64,
    buckets: Vec<Bucket>,
}

impl From<WindowsV4> for Windows {
    fn from(w: WindowsV4) -> Self {
        let mut windows = Windows::default();
        for s in &w.series {
            windows.push_series(Series {
                event_type: s.event_type,
                channel: s.channel,
                last_ms: s.last_ms,
                buckets: &s.buckets,
            });
        }
        windows
    }
}

/// The bucket width for an event `age_ms` older than the newest of its series.
fn width_at(age_ms: i64) -> i64 {
    TIERS
        .iter()
        .find(|(bound, _)| age_ms < *bound)
        .map_or(DAY_MS, |&(_, w)| w)
}

fn align(at_ms: i64, width: i64) -> i64 {
    at_ms - at_ms.rem_euclid(width)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000;

    #[test]
    fn counts_per_type_and_channel_within_the_window() {
        let mut w = Windows::default();
        for i in 0..5 {
            w.record(EventType::ProductView, Channel::Web, T0 + i * HOUR_MS);
        }
        w.record(EventType::ProductView, Channel::App, T0 + 5 * HOUR_MS);
        w.record(
            EventType::CallStarted,
            Channel::CallCenter,
            T0 + 5 * HOUR_MS,
        );
        let now = T0 + 5 * HOUR_MS;
        assert_eq!(w.count(EventType::ProductView, now - 168 * HOUR_MS, now), 6);
        assert_eq!(
            w.count_on(
                EventType::ProductView,
                Channel::Web,
                now - 168 * HOUR_MS,
                now
            ),
            5
        );
        // The last two hours hold the views at +3h (boundary), +4h and +5h.
        assert_eq!(w.count(EventType::ProductView, now - 2 * HOUR_MS, now), 3);
        assert_eq!(w.count(EventType::Purchase, 0, now), 0);
        assert_eq!(w.last_ms(EventType::CallStarted), now);
    }

    #[test]
    fn old_buckets_coarsen_and_expire_so_a_series_stays_small() {
        let mut w = Windows::default();
        // One event a minute for ten days.
        for i in 0..(10 * 24 * 60) {
            w.record(EventType::PageView, Channel::Web, T0 + i * MINUTE_MS);
        }
        let s = w.series().next().unwrap();
        assert!(s.buckets.len() <= MAX_BUCKETS, "{}", s.buckets.len());
        let now = s.last_ms;
        // Recent minutes stay exact.
        assert_eq!(w.count(EventType::PageView, now - 30 * MINUTE_MS, now), 31);
        // A much later event expires everything older than the retention.
        w.record(
            EventType::PageView,
            Channel::Web,
            now + RETENTION_MS + DAY_MS,
        );
        assert_eq!(w.series().next().unwrap().buckets.len(), 1);
        assert_eq!(w.count(EventType::PageView, 0, i64::MAX), 1);
    }

    #[test]
    fn merged_windows_add_counts_and_keep_the_newest_time() {
        let (mut a, mut b) = (Windows::default(), Windows::default());
        for i in 0..5 {
            a.record(EventType::ProductView, Channel::Web, T0 + i * HOUR_MS);
            b.record(
                EventType::ProductView,
                Channel::Web,
                T0 + i * HOUR_MS + 30 * MINUTE_MS,
            );
        }
        // In the same minute as one of `a`'s: one bucket, both counted.
        b.record(
            EventType::ProductView,
            Channel::Web,
            T0 + 4 * HOUR_MS + 1_000,
        );
        b.record(
            EventType::CallStarted,
            Channel::CallCenter,
            T0 + 9 * HOUR_MS,
        );
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba, "the order of the merge does not matter");
        let now = T0 + 9 * HOUR_MS;
        assert_eq!(ab.count(EventType::ProductView, 0, now), 11);
        assert_eq!(ab.count(EventType::ProductView, T0 + 3 * HOUR_MS, now), 5);
        assert_eq!(ab.count(EventType::ProductView, T0 + 4 * HOUR_MS, now), 3);
        assert_eq!(
            ab.last_ms(EventType::ProductView),
            T0 + 4 * HOUR_MS + 30 * MINUTE_MS
        );
        assert_eq!(
            ab.count_on(EventType::CallStarted, Channel::CallCenter, 0, now),
            1
        );
    }

    #[test]
    fn a_merge_drops_what_the_newer_history_puts_out_of_retention() {
        let (mut a, mut b) = (Windows::default(), Windows::default());
        a.record(EventType::Search, Channel::Web, T0);
        a.record(EventType::PageView, Channel::Web, T0);
        b.record(EventType::Search, Channel::Web, T0 + RETENTION_MS + DAY_MS);
        a.merge(&b);
        assert_eq!(a.series_len(), 1, "the old page views are gone");
        assert_eq!(a.count(EventType::Search, 0, i64::MAX), 1);
    }

    #[test]
    fn late_events_land_in_their_own_bucket() {
        let mut w = Windows::default();
        w.record(EventType::HelpSearch, Channel::Web, T0 + 10 * HOUR_MS);
        w.record(EventType::HelpSearch, Channel::Web, T0);
        assert_eq!(
            w.count(EventType::HelpSearch, T0 + HOUR_MS, T0 + 10 * HOUR_MS),
            1
        );
        assert_eq!(w.count(EventType::HelpSearch, T0, T0 + 10 * HOUR_MS), 2);
        assert_eq!(w.last_ms(EventType::HelpSearch), T0 + 10 * HOUR_MS);
    }

    /// Packed buckets read back exactly, whatever their starts: aligned or
    /// not, before the epoch, at the ends of the range, out of order.
    #[test]
    fn packed_buckets_read_back_exactly() {
        let starts = [
            T0,
            T0 + MINUTE_MS,
            T0 + 15 * MINUTE_MS + 7,
            T0 - DAY_MS,
            -123_456_789,
            0,
            i64::MIN,
            i64::MAX,
            i64::MIN + 1,
            T0,
        ];
        let buckets: Vec<Bucket> = starts
            .iter()
            .enumerate()
            .map(|(i, &start_ms)| Bucket {
                start_ms,
                count: [1, 0, u32::MAX][i % 3],
            })
            .collect();
        let mut w = Windows::default();
        for (event_type, buckets) in [
            (EventType::ProductView, &buckets[..]),
            (EventType::Search, &[]),
            (EventType::PageView, &buckets[3..5]),
        ] {
            w.push_series(Series {
                event_type,
                channel: Channel::Web,
                last_ms: T0,
                buckets,
            });
        }
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert_eq!(postcard::from_bytes::<Windows>(&bytes).unwrap(), w);
    }

    /// A busy series' aligned buckets take at most four bytes each.
    #[test]
    fn packed_buckets_are_small() {
        let mut w = Windows::default();
        for i in 0..200 {
            w.record(EventType::PageView, Channel::Web, T0 + i * 7 * MINUTE_MS);
        }
        let buckets = w.series().next().unwrap().buckets.len();
        assert!(buckets > 50, "{buckets}");
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert!(
            bytes.len() <= 16 + 4 * buckets,
            "{} for {buckets}",
            bytes.len()
        );
    }

    /// Series share one list of buckets: however events of several series
    /// interleave (late ones, new days, coarsening, expiry), each series
    /// holds exactly what it would hold alone.
    #[test]
    fn interleaved_series_keep_their_own_buckets() {
        let kinds = [
            (EventType::PageView, Channel::Web),
            (EventType::ProductView, Channel::App),
            (EventType::CallStarted, Channel::CallCenter),
        ];
        let mut together = Windows::default();
        let mut alone: Vec<Windows> = kinds.iter().map(|_| Windows::default()).collect();
        let mut x: u64 = 7;
        let mut at = T0;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) as usize % kinds.len();
            // Mostly forward by up to ten minutes, sometimes hours back, now
            // and then a jump of days (expiry, coarsening).
            let step = match (x >> 40) % 100 {
                0 => 40 * DAY_MS,
                1..=9 => -((x >> 20) as i64 % (30 * HOUR_MS)),
                _ => (x >> 24) as i64 % (10 * MINUTE_MS),
            };
            at += step.max(-at);
            let (event_type, channel) = kinds[k];
            together.record(event_type, channel, at);
            alone[k].record(event_type, channel, at);
        }
        let expected: Vec<Series> = alone.iter().flat_map(|w| w.series()).collect();
        let mut got: Vec<Series> = together.series().collect();
        // Together, a series that expired and came back sits at the end.
        let order = |s: &Series| kinds.iter().position(|&k| k == (s.event_type, s.channel));
        got.sort_by_key(order);
        assert_eq!(got, expected);
        assert!(
            got.iter().any(|s| s.buckets.len() > 32),
            "coarsening was reached"
        );
        let bytes = postcard::to_allocvec(&together).unwrap();
        assert_eq!(postcard::from_bytes::<Windows>(&bytes).unwrap(), together);
    }

    /// The layout stored since profile encoding version 5 is unchanged by how
    /// the buckets are held: a list of series, each its event type, channel,
    /// newest time and packed buckets.
    #[test]
    fn windows_are_stored_as_a_list_of_series() {
        let mut w = Windows::default();
        w.record(EventType::PageView, Channel::Web, T0);
        w.record(EventType::Search, Channel::App, T0 + HOUR_MS);
        w.record(EventType::PageView, Channel::Web, T0 + 2 * MINUTE_MS + 5);
        let minute = T0.div_euclid(MINUTE_MS);
        let layout = vec![
            (
                EventType::PageView,
                Channel::Web,
                T0 + 2 * MINUTE_MS + 5,
                vec![(minute, 0u32, 1u32), (2, 0, 1)],
            ),
            (
                EventType::Search,
                Channel::App,
                T0 + HOUR_MS,
                vec![(minute + 60, 0, 1)],
            ),
        ];
        assert_eq!(T0.rem_euclid(MINUTE_MS), 0);
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&layout).unwrap());
        assert_eq!(postcard::from_bytes::<Windows>(&bytes).unwrap(), w);
    }
}
