//! Event counts over sliding windows, kept compactly in the profile.
//!
//! Journeys ask "how many product views in the last 168 hours" or "how many
//! calls on the call-center channel in 48 hours". Keeping every event time would
//! grow without bound, so each (event type, channel) series keeps counts in
//! buckets that coarsen with age (a minute wide for recent events, a day wide
//! for old ones) and drop out after [`RETENTION_MS`]. Ages are measured against
//! the newest event of the series, in event time, so replays give the same
//! buckets as live processing and nothing needs a clock or a sweep.

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

/// The counts of one event type on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Series {
    /// What happened.
    pub event_type: EventType,
    /// Where.
    pub channel: Channel,
    /// Event time of the newest event, epoch ms (exact, for recency).
    pub last_ms: i64,
    /// Buckets, oldest first.
    #[serde(with = "packed")]
    pub buckets: Vec<Bucket>,
}

/// How a series' buckets are stored (profile encoding version 5): each
/// bucket's start as the whole minutes and the milliseconds after the previous
/// bucket's start (the first one's after the epoch), then its count. Starts are
/// aligned to whole minutes, so a bucket takes three or four bytes where its
/// epoch milliseconds alone took seven.
mod packed {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Bucket, MINUTE_MS};

    pub fn serialize<S: Serializer>(buckets: &[Bucket], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(buckets.len()))?;
        let mut prev = 0i64;
        for b in buckets {
            let gap = b.start_ms.wrapping_sub(prev);
            let minutes = gap.div_euclid(MINUTE_MS);
            let rest = gap.rem_euclid(MINUTE_MS) as u32;
            seq.serialize_element(&(minutes, rest, b.count))?;
            prev = b.start_ms;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bucket>, D::Error> {
        let packed = Vec::<(i64, u32, u32)>::deserialize(d)?;
        let mut prev = 0i64;
        Ok(packed
            .into_iter()
            .map(|(minutes, rest, count)| {
                prev = prev
                    .wrapping_add(minutes.wrapping_mul(MINUTE_MS))
                    .wrapping_add(i64::from(rest));
                Bucket {
                    start_ms: prev,
                    count,
                }
            })
            .collect())
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
        Windows {
            series: w
                .series
                .into_iter()
                .map(|s| Series {
                    event_type: s.event_type,
                    channel: s.channel,
                    last_ms: s.last_ms,
                    buckets: s.buckets,
                })
                .collect(),
        }
    }
}

/// Windowed event counts per (event type, channel).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// One series per (event type, channel) seen within the retention.
    pub series: Vec<Series>,
}

impl Windows {
    /// Counts one event.
    pub fn record(&mut self, event_type: EventType, channel: Channel, at_ms: i64) {
        let i = match self
            .series
            .iter()
            .position(|s| s.event_type == event_type && s.channel == channel)
        {
            Some(i) => i,
            None => {
                self.series.push(Series {
                    event_type,
                    channel,
                    last_ms: at_ms,
                    buckets: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let before = self.series[i].last_ms;
        self.series[i].record(at_ms);
        // Series whose newest event fell out of the retention of the newest overall
        // go; the retention is in days, so this pass over every series runs when an
        // event starts a new day, not on every event.
        if at_ms > before && before.div_euclid(DAY_MS) != at_ms.div_euclid(DAY_MS) {
            let newest = self.series.iter().map(|s| s.last_ms).max().unwrap_or(at_ms);
            self.series.retain(|s| s.last_ms > newest - RETENTION_MS);
        }
    }

    /// Events of `event_type` on any channel in `[since_ms, until_ms]`.
    pub fn count(&self, event_type: EventType, since_ms: i64, until_ms: i64) -> u64 {
        self.series
            .iter()
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
        self.series
            .iter()
            .filter(|s| s.event_type == event_type && s.channel == channel)
            .map(|s| s.count(since_ms, until_ms))
            .sum()
    }

    /// Event time of the newest event of `event_type` on any channel (0 when none).
    pub fn last_ms(&self, event_type: EventType) -> i64 {
        self.series
            .iter()
            .filter(|s| s.event_type == event_type)
            .map(|s| s.last_ms)
            .max()
            .unwrap_or(0)
    }
}

impl Windows {
    /// Adds `other`'s counts into these (identity stitching): per (event type,
    /// channel) the counts of buckets with the same start add and the newest
    /// event time is the later one; buckets of different widths are kept side
    /// by side (a window counts a bucket by its start, so each still counts
    /// where it did). Buckets and series older than [`RETENTION_MS`] before the
    /// newest go, and a series that grows past [`MAX_BUCKETS`] is coarsened as
    /// [`Windows::record`] does. Below that cap the merge is commutative and
    /// associative, so the order histories arrive in does not change the counts.
    pub fn merge(&mut self, other: &Windows) {
        for theirs in &other.series {
            match self
                .series
                .iter_mut()
                .find(|s| s.event_type == theirs.event_type && s.channel == theirs.channel)
            {
                Some(ours) => ours.merge(theirs),
                None => self.series.push(theirs.clone()),
            }
        }
        if let Some(newest) = self.series.iter().map(|s| s.last_ms).max() {
            let horizon = newest.saturating_sub(RETENTION_MS);
            self.series.retain(|s| s.last_ms > horizon);
        }
        self.series
            .sort_by_key(|s| (s.event_type.as_str(), s.channel.index()));
    }
}

impl Series {
    /// Adds `other`'s buckets (same event type and channel) into these.
    fn merge(&mut self, other: &Series) {
        self.last_ms = self.last_ms.max(other.last_ms);
        let mut all: Vec<Bucket> = self.buckets.iter().chain(&other.buckets).copied().collect();
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
        let horizon = self.last_ms.saturating_sub(RETENTION_MS);
        merged.retain(|b| b.start_ms > horizon);
        self.buckets = merged;
        if self.buckets.len() > MAX_BUCKETS {
            self.coarsen();
        }
    }

    fn record(&mut self, at_ms: i64) {
        let before = self.last_ms;
        let advanced = at_ms > before;
        self.last_ms = self.last_ms.max(at_ms);
        let start = align(at_ms, width_at(self.last_ms - at_ms));
        // Events mostly arrive in order: look at the newest bucket first, which
        // touches one cache line instead of a binary search's several.
        match self.buckets.last_mut() {
            Some(b) if b.start_ms == start => b.count = b.count.saturating_add(1),
            Some(b) if b.start_ms < start => self.buckets.push(Bucket {
                start_ms: start,
                count: 1,
            }),
            None => self.buckets.push(Bucket {
                start_ms: start,
                count: 1,
            }),
            Some(_) => self.insert_late(start),
        }
        if advanced {
            self.expire_and_coarsen(before.div_euclid(DAY_MS) != at_ms.div_euclid(DAY_MS));
        }
    }

    /// Counts an event older than the newest bucket.
    fn insert_late(&mut self, start: i64) {
        let pos = self.buckets.partition_point(|b| b.start_ms < start);
        match self.buckets.get_mut(pos) {
            Some(b) if b.start_ms == start => b.count = b.count.saturating_add(1),
            _ => self.buckets.insert(
                pos,
                Bucket {
                    start_ms: start,
                    count: 1,
                },
            ),
        }
    }

    /// Widths depend on the age relative to the newest event, so only a newer
    /// newest can make buckets coarser or old. What fell out of the retention goes
    /// when the newest event starts a new day (the oldest come first). Finer buckets than their age calls for only
    /// count more exactly, so coarsening waits until the series has grown to the
    /// next power of two (or its cap): a handful of passes over a series' life
    /// instead of one per event.
    fn expire_and_coarsen(&mut self, new_day: bool) {
        let horizon = self.last_ms - RETENTION_MS;
        // The oldest buckets are a day wide: checking once a day is enough.
        if new_day && self.buckets.first().is_some_and(|b| b.start_ms <= horizon) {
            let old = self.buckets.partition_point(|b| b.start_ms <= horizon);
            self.buckets.drain(..old);
        }
        let n = self.buckets.len();
        if n >= 32 && (n.is_power_of_two() || n >= MAX_BUCKETS) {
            self.coarsen();
        }
    }

    /// Re-aligns buckets to the width their age calls for, merging neighbours
    /// that fall into one bucket, and drops what is too old.
    fn coarsen(&mut self) {
        let newest = self.last_ms;
        // In place: `kept` buckets are done, and never overtake the one being read.
        let mut kept = 0;
        for i in 0..self.buckets.len() {
            let b = self.buckets[i];
            if b.start_ms <= newest - RETENTION_MS {
                continue;
            }
            let start = align(b.start_ms, width_at(newest - b.start_ms));
            if kept > 0 && self.buckets[kept - 1].start_ms == start {
                let last = &mut self.buckets[kept - 1];
                last.count = last.count.saturating_add(b.count);
            } else {
                self.buckets[kept] = Bucket {
                    start_ms: start,
                    count: b.count,
                };
                kept += 1;
            }
        }
        self.buckets.truncate(kept);
        let excess = kept.saturating_sub(MAX_BUCKETS);
        self.buckets.drain(..excess);
    }

    fn count(&self, since_ms: i64, until_ms: i64) -> u64 {
        self.buckets
            .iter()
            .filter(|b| b.start_ms >= since_ms && b.start_ms <= until_ms)
            .map(|b| u64::from(b.count))
            .sum()
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
        let s = &w.series[0];
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
        assert_eq!(w.series[0].buckets.len(), 1);
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
        assert_eq!(a.series.len(), 1, "the old page views are gone");
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
        let w = Windows {
            series: vec![Series {
                event_type: EventType::ProductView,
                channel: Channel::Web,
                last_ms: T0,
                buckets: starts
                    .iter()
                    .enumerate()
                    .map(|(i, &start_ms)| Bucket {
                        start_ms,
                        count: [1, 0, u32::MAX][i % 3],
                    })
                    .collect(),
            }],
        };
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
        let buckets = w.series[0].buckets.len();
        assert!(buckets > 50, "{buckets}");
        let bytes = postcard::to_allocvec(&w).unwrap();
        assert!(
            bytes.len() <= 16 + 4 * buckets,
            "{} for {buckets}",
            bytes.len()
        );
    }
}
