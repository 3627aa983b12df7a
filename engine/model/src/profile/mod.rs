//! The 360-degree customer profile (how one touchpoint updates it: `apply`).
//!
//! The profile is the per-customer state every journey reads. It is updated in
//! place for each event and only encoded when a commit interval writes it out,
//! so the per-event cost is a few field updates, never a serialisation.

use std::collections::VecDeque;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::emotion::EmotionTrack;
use crate::policy::DeliveryState;
use crate::seen::SeenEvents;
use crate::touchpoint::{Channel, EventType, SurveyKind};
use crate::window::Windows;

mod apply;
mod encoding;
mod merge;
pub(crate) use encoding::WithRoom;
pub use encoding::{DecodeError, PROFILE_ENCODING_VERSION};

/// How many recent touchpoints a profile keeps, so no agent makes the customer repeat themselves.
pub const RECENT_TOUCHPOINTS: usize = 10;
/// How many products a profile tracks interest in; the least recently viewed is dropped.
pub const TRACKED_PRODUCTS: usize = 16;
/// How many view times per product are kept (enough for any sensible view threshold).
pub const VIEWS_PER_PRODUCT: usize = 8;
/// How many help searches / contacts are kept for the "anxious" signals.
pub const RECENT_CONTACTS: usize = 8;
/// How many review reads and call waits are kept for the emotional signals
/// (enough for any of their saturation points).
pub const RECENT_SIGNALS: usize = 8;

/// Activity on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelActivity {
    /// Touchpoints seen on this channel.
    pub count: u64,
    /// Event time of the latest one, epoch ms (0 when none).
    pub last_ms: i64,
}

/// A survey score and when it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    /// The score on the survey's own scale.
    pub score: i32,
    /// Event time of the answer, epoch ms.
    pub at_ms: i64,
}

/// One recent touchpoint, as shown to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentTouch {
    /// Event id (held inline up to 24 bytes).
    pub event_id: CompactString,
    /// Channel.
    pub channel: Channel,
    /// What happened.
    pub event_type: EventType,
    /// Event time, epoch ms.
    pub at_ms: i64,
}

/// Interest in one product: recent view times and the latest purchase of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductInterest {
    /// Product id (held inline up to 24 bytes: read on every view).
    pub sku: CompactString,
    /// Event times of recent views, oldest first, at most [`VIEWS_PER_PRODUCT`]
    /// (held inline).
    pub views_ms: SmallVec<[i64; VIEWS_PER_PRODUCT]>,
    /// Event time of the latest purchase of this product (0 when none).
    pub purchased_ms: i64,
}

impl ProductInterest {
    /// Views of the product within `[since_ms, now_ms]`, none when it was
    /// bought within that window: Rapport's one definition of looking at a
    /// product again and again without buying it (the `uncertain` emotional
    /// state and `profile.product_views` in journeys both read it). A customer
    /// who just bought it and looks again is checking, not hesitating.
    pub fn unbought_views(&self, since_ms: i64, now_ms: i64) -> usize {
        if self.purchased_ms >= since_ms {
            return 0;
        }
        self.views_since(since_ms).filter(|&t| t <= now_ms).count()
    }

    /// Views at or after `since_ms`.
    pub fn views_since(&self, since_ms: i64) -> impl Iterator<Item = i64> + '_ {
        self.views_ms
            .iter()
            .copied()
            .filter(move |&t| t >= since_ms)
    }
}

/// A call wait and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallWait {
    /// Event time of the call event that reported it, epoch ms.
    pub at_ms: i64,
    /// Seconds the customer waited for an agent.
    pub seconds: i32,
}

/// When a journey last fired for this customer, per journey-specific key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyMark {
    /// Journey name (held inline up to 24 bytes; stored as a string either way).
    pub journey: CompactString,
    /// Journey-specific key (a sku, or empty).
    pub key: CompactString,
    /// Event time of the last firing, epoch ms.
    pub fired_ms: i64,
    /// How many times it fired.
    pub count: u32,
}

/// A durable wait: a journey step due at an event time, kept in the profile so it
/// is committed, restored and replayed with the rest of the customer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The journey that waits.
    pub journey: CompactString,
    /// Journey-specific key (e.g. the order id), so one step per key is pending.
    pub key: CompactString,
    /// When it is due, event time, epoch ms.
    pub fire_at_ms: i64,
    /// The event that started the wait; fired actions are traced (and identified) by it.
    pub trigger_event_id: CompactString,
}

/// Everything Rapport knows about one customer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The id the profile is keyed by (customer id, or anonymous id before identification).
    pub id: String,
    /// Anonymous ids linked to this customer.
    pub anonymous_ids: Vec<String>,
    /// Event time of the first touchpoint, epoch ms.
    pub first_seen_ms: i64,
    /// Latest event time seen, epoch ms (late events do not move it back).
    pub last_seen_ms: i64,
    /// Touchpoints applied.
    pub events: u64,
    /// Activity per channel, indexed by [`Channel::index`].
    pub channels: [ChannelActivity; 7],
    /// Purchases.
    pub orders: u32,
    /// Sum of purchase amounts minus returns (currency as sent; one currency assumed).
    pub lifetime_value: f64,
    /// Returns.
    pub returns: u32,
    /// Event time of the latest purchase (0 when none).
    pub last_purchase_ms: i64,
    /// Latest NPS answer.
    pub nps: Option<Score>,
    /// Latest CSAT answer.
    pub csat: Option<Score>,
    /// Latest CES answer.
    pub ces: Option<Score>,
    /// Open issues: failed deliveries, refund requests and tickets not yet resolved.
    pub open_issues: u32,
    /// Exponentially weighted chat sentiment, -1..=1.
    pub sentiment: f64,
    /// Event times of recent help searches, calls and chats (anxiety signals).
    pub contacts_ms: Vec<i64>,
    /// Longest call wait seen recently, seconds.
    pub max_wait_seconds: i32,
    /// Products the customer looked at.
    pub products: Vec<ProductInterest>,
    /// The last few touchpoints, oldest first.
    #[serde(deserialize_with = "encoding::recent_with_room")]
    pub recent: VecDeque<RecentTouch>,
    /// Journey firings, for cooldowns and caps.
    pub journeys: Vec<JourneyMark>,
    /// Pending waits.
    pub timers: Vec<Timer>,
    // Fields below were added in encoding version 2; a version-1 record decodes
    // with their defaults. New fields go at the end, with a new version.
    /// Event counts per type and channel over sliding windows.
    #[serde(default)]
    pub windows: Windows,
    /// Journey instances in progress (file-defined journeys, `rapport-journeys`).
    #[serde(default)]
    pub journey_runs: Vec<JourneyRun>,
    /// When file-defined journeys were entered, for their re-entry rules.
    #[serde(default)]
    pub journey_entries: Vec<JourneyEntries>,
    // Fields below were added in encoding version 3; older records decode with
    // their defaults (see `ProfileV2`).
    /// Event times of recent review reads, oldest first, at most [`RECENT_SIGNALS`]:
    /// page views, product views and searches whose url or query mentions reviews.
    #[serde(default)]
    pub review_reads_ms: Vec<i64>,
    /// Recent call waits, oldest first, at most [`RECENT_SIGNALS`].
    #[serde(default)]
    pub call_waits: Vec<CallWait>,
    /// Event time of the latest chat sentiment, epoch ms (0 when none), so the
    /// sentiment trend stops counting as a signal once it is old.
    #[serde(default)]
    pub sentiment_ms: i64,
    /// The emotional state, maintained by [`crate::emotion::update`].
    #[serde(default)]
    pub emotion: EmotionTrack,
    /// What the delivery policy keeps: sends counted by caps, consent, time
    /// zone and actions deferred past quiet hours (see [`crate::policy`]).
    #[serde(default)]
    pub delivery: DeliveryState,
    /// The answer before the latest of each survey, indexed by
    /// [`SurveyKind::index`], for the trend ([`Profile::survey_trend`]).
    #[serde(default)]
    pub previous_surveys: [Option<Score>; 3],
    // Added in encoding version 4; older records decode with it empty (see `ProfileV3`).
    /// Ids of recent events, so a repeated event id is not applied twice
    /// ([`crate::seen`]).
    #[serde(default)]
    pub seen_events: SeenEvents,
}

/// A customer inside a journey: where they are and since when. Kept in the
/// profile so a journey resumes after restarts, rebalances and replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyRun {
    /// Journey id.
    pub journey: CompactString,
    /// Version of the journey the customer entered.
    pub version: u32,
    /// Instance key (e.g. an order id); one instance per journey and key.
    pub key: CompactString,
    /// Path of the step the customer waits at (indexes into nested step lists).
    pub at: SmallVec<[u32; 4]>,
    /// Event time of the entry, epoch ms.
    pub entered_ms: i64,
    /// The event that started the instance; later actions are traced to it.
    pub trigger_event_id: CompactString,
}

/// Entry times of one journey for one key, newest last, pruned to what the
/// journey's re-entry rule still needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JourneyEntries {
    /// Journey id.
    pub journey: CompactString,
    /// Instance key.
    pub key: CompactString,
    /// Event times of entries, epoch ms, oldest first.
    pub entered_ms: SmallVec<[i64; 4]>,
}

impl Profile {
    /// The latest answer to survey `kind` and its change since the answer
    /// before (`None` before the second answer).
    pub fn survey_trend(&self, kind: SurveyKind) -> (Option<Score>, Option<i32>) {
        let latest = match kind {
            SurveyKind::Nps => self.nps,
            SurveyKind::Csat => self.csat,
            SurveyKind::Ces => self.ces,
        };
        let before = self.previous_surveys[kind.index()];
        (latest, latest.zip(before).map(|(l, b)| l.score - b.score))
    }

    /// Starts loading the lists every touchpoint reads or appends to (see
    /// [`crate::prefetch`]); the processor calls it a record ahead, once the
    /// profile itself is in cache.
    pub fn prefetch_lists(&self) {
        use crate::prefetch::slice;
        slice(&self.products);
        slice(&self.windows.series);
        let (recent, wrapped) = self.recent.as_slices();
        slice(recent);
        slice(wrapped);
        self.seen_events.prefetch();
        slice(&self.timers);
        slice(&self.journey_entries);
        slice(&self.delivery.sent);
    }

    /// Starts loading what encoding the profile reads (see [`crate::prefetch`]):
    /// its lists, or with `nested` (once those are in cache) the lists inside
    /// them. A commit calls it a few profiles ahead of the one it encodes.
    pub fn prefetch_for_encoding(&self, nested: bool) {
        use crate::prefetch::slice;
        if nested {
            for s in &self.windows.series {
                slice(&s.buckets);
            }
            return;
        }
        self.prefetch_lists();
        slice(&self.anonymous_ids);
        slice(&self.contacts_ms);
        slice(&self.journeys);
        slice(&self.journey_runs);
        slice(&self.review_reads_ms);
        slice(&self.call_waits);
        slice(&self.delivery.consent);
        self.seen_events.prefetch_all();
    }

    /// About how many bytes encoding version 5 saves on this profile against
    /// version 4 by packing: 6 per remembered event id and 4 per window bucket
    /// after the first of each list (the first still carries an epoch time).
    /// For estimates calibrated on version 4's sizes, since the decoded
    /// profile did not shrink.
    pub fn packing_savings(&self) -> usize {
        let buckets: usize = self
            .windows
            .series
            .iter()
            .map(|s| s.buckets.len().saturating_sub(1))
            .sum();
        6 * self.seen_events.len().saturating_sub(1) + 4 * buckets
    }

    /// An empty profile for `id`.
    pub fn new(id: &str) -> Self {
        Profile {
            id: id.to_owned(),
            ..Default::default()
        }
    }

    /// Interest in `sku`, if tracked.
    pub fn product_interest(&self, sku: &str) -> Option<&ProductInterest> {
        self.products.iter().find(|p| p.sku == sku)
    }

    /// Contacts (help searches, calls, chat hand-offs) at or after `since_ms`.
    pub fn contacts_since(&self, since_ms: i64) -> usize {
        self.contacts_ms.iter().filter(|&&t| t >= since_ms).count()
    }

    /// The last firing of `journey` for `key`.
    pub fn journey_mark(&self, journey: &str, key: &str) -> Option<&JourneyMark> {
        self.journeys
            .iter()
            .find(|m| m.journey == journey && m.key == key)
    }

    /// When the earliest pending timer is due.
    pub fn next_timer_ms(&self) -> Option<i64> {
        self.timers.iter().map(|t| t.fire_at_ms).min()
    }

    /// Starts (or restarts) the wait of `journey` for `key`.
    pub fn schedule(&mut self, timer: Timer) {
        self.timers
            .retain(|t| !(t.journey == timer.journey && t.key == timer.key));
        self.timers.push(timer);
    }

    /// Cancels every pending wait of `journey`; returns how many there were.
    pub fn cancel(&mut self, journey: &str) -> usize {
        let before = self.timers.len();
        self.timers.retain(|t| t.journey != journey);
        before - self.timers.len()
    }

    /// Removes and returns the timers due at or before `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<Timer> {
        let mut due: Vec<Timer> = Vec::new();
        self.timers.retain(|t| {
            if t.fire_at_ms <= now_ms {
                due.push(t.clone());
                false
            } else {
                true
            }
        });
        due.sort_by(|a, b| {
            a.fire_at_ms
                .cmp(&b.fire_at_ms)
                .then_with(|| a.key.cmp(&b.key))
        });
        due
    }

    /// Records that `journey` fired for `key` at `at_ms`.
    pub fn mark_journey(&mut self, journey: &str, key: &str, at_ms: i64) {
        match self
            .journeys
            .iter_mut()
            .find(|m| m.journey == journey && m.key == key)
        {
            Some(m) => {
                m.fired_ms = m.fired_ms.max(at_ms);
                m.count += 1;
            }
            None => self.journeys.push(JourneyMark {
                journey: journey.into(),
                key: key.into(),
                fired_ms: at_ms,
                count: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;

    #[test]
    fn survey_answers_keep_their_trend_and_late_answers_do_not_move_it() {
        let t0 = 1_764_000_000_000;
        let answer = |id: &str, at: i64, score: i32| {
            tp(id, "c1", Channel::Email, EventType::SurveyResponse, at)
                .with_survey(SurveyKind::Nps, score)
        };
        let mut p = Profile::new("c1");
        p.apply(&answer("a1", t0, 4));
        assert_eq!(
            p.survey_trend(SurveyKind::Nps).1,
            None,
            "one answer, no trend"
        );
        p.apply(&answer("a2", t0 + 10, 9));
        let (latest, trend) = p.survey_trend(SurveyKind::Nps);
        assert_eq!((latest.map(|s| s.score), trend), (Some(9), Some(5)));
        // An answer older than the latest changes neither.
        p.apply(&answer("a0", t0 - 10, 0));
        assert_eq!(p.survey_trend(SurveyKind::Nps).1, Some(5));
        assert_eq!(p.survey_trend(SurveyKind::Csat), (None, None));
    }

    #[test]
    fn survey_answers_are_classified_by_each_surveys_reading() {
        let nps: Vec<&str> = (0..=10).map(|s| SurveyKind::Nps.classify(s)).collect();
        assert_eq!(nps[6], "detractor");
        assert_eq!((nps[7], nps[8]), ("passive", "passive"));
        assert_eq!((nps[9], nps[10]), ("promoter", "promoter"));
        assert_eq!(SurveyKind::Csat.classify(2), "dissatisfied");
        assert_eq!(SurveyKind::Csat.classify(3), "neutral");
        assert_eq!(SurveyKind::Csat.classify(4), "satisfied");
        assert_eq!(SurveyKind::Ces.classify(3), "hard");
        assert_eq!(SurveyKind::Ces.classify(5), "easy");
    }

    #[test]
    fn counts_channels_orders_and_scores() {
        let mut p = Profile::new("c1");
        p.apply(&tp("e1", "c1", Channel::Web, EventType::ProductView, 1_000).with_sku("s1"));
        p.apply(
            &tp("e2", "c1", Channel::Store, EventType::Purchase, 2_000)
                .with_sku("s1")
                .with_amount(40.0),
        );
        p.apply(
            &tp("e3", "c1", Channel::Email, EventType::SurveyResponse, 3_000)
                .with_survey(SurveyKind::Nps, 4),
        );
        p.apply(
            &tp("e4", "c1", Channel::Email, EventType::SurveyResponse, 2_500)
                .with_survey(SurveyKind::Nps, 10),
        );
        assert_eq!(p.events, 4);
        assert_eq!(p.channels[Channel::Web.index()].count, 1);
        assert_eq!(p.channels[Channel::Store.index()].last_ms, 2_000);
        assert_eq!(p.orders, 1);
        assert_eq!(p.lifetime_value, 40.0);
        assert_eq!(p.first_seen_ms, 1_000);
        assert_eq!(p.last_seen_ms, 3_000);
        // The late NPS answer (2_500) does not replace the newer one (3_000).
        assert_eq!(
            p.nps,
            Some(Score {
                score: 4,
                at_ms: 3_000
            })
        );
        assert_eq!(p.product_interest("s1").unwrap().purchased_ms, 2_000);
        assert_eq!(p.recent.len(), 4);
    }

    #[test]
    fn recent_touchpoints_and_products_are_bounded() {
        let mut p = Profile::new("c1");
        for i in 0..100 {
            p.apply(
                &tp(
                    &format!("e{i}"),
                    "c1",
                    Channel::Web,
                    EventType::ProductView,
                    1_000 + i,
                )
                .with_sku(&format!("s{}", i % 40)),
            );
        }
        assert_eq!(p.recent.len(), RECENT_TOUCHPOINTS);
        assert_eq!(p.recent.back().unwrap().event_id, "e99");
        assert_eq!(p.products.len(), TRACKED_PRODUCTS);
        // The most recently viewed product is still tracked.
        assert!(p.product_interest("s19").is_some());
    }

    #[test]
    fn out_of_order_views_stay_sorted() {
        let mut p = Profile::new("c1");
        for at in [5_000, 1_000, 3_000] {
            p.apply(&tp("e", "c1", Channel::Web, EventType::ProductView, at).with_sku("s"));
        }
        assert_eq!(
            p.product_interest("s").unwrap().views_ms.as_slice(),
            [1_000, 3_000, 5_000].as_slice()
        );
    }

    #[test]
    fn encoding_round_trips_and_refuses_unknown_versions() {
        let mut p = Profile::new("c1");
        p.apply(&tp("e1", "c1", Channel::Chat, EventType::ChatMessage, 1_000).with_sentiment(-0.5));
        p.mark_journey("recovery", "", 1_000);
        // Longer than the pieces encoding copies byte by byte.
        p.anonymous_ids
            .push("anonymous-device-0123456789abcdef".into());
        let mut consent = tp("e2", "c1", Channel::Web, EventType::ConsentChanged, 2_000);
        for (k, v) in [
            ("purpose", "marketing"),
            ("granted", "true"),
            ("timezone", "Asia/Tokyo"),
        ] {
            consent.attributes.insert(k.into(), v.into());
        }
        p.apply(&consent);
        p.delivery.record_sent(
            crate::policy::SentMark {
                at_ms: 2_000,
                journey: "vip".into(),
                purpose: crate::policy::Purpose::Marketing,
                channel: crate::action::DeliveryChannel::Email,
            },
            0,
        );
        assert!(!p.delivery.consent.is_empty() && p.delivery.timezone.is_some());
        let bytes = p.encode();
        assert_eq!(bytes[0], PROFILE_ENCODING_VERSION);
        // Encoding's own output (short pieces copied byte by byte) writes what
        // postcard's writes.
        assert_eq!(&bytes[1..], &postcard::to_allocvec(&p).unwrap()[..]);
        assert_eq!(Profile::decode(&bytes).unwrap(), p);
        let mut newer = bytes.clone();
        newer[0] = PROFILE_ENCODING_VERSION + 1;
        assert!(matches!(
            Profile::decode(&newer),
            Err(DecodeError::UnknownVersion(_))
        ));
        assert!(Profile::decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn a_version_1_record_decodes_with_empty_new_fields() {
        let mut p = Profile::new("c1");
        p.apply(&tp("e1", "c1", Channel::Web, EventType::ProductView, 1_000).with_sku("s"));
        p.mark_journey("recovery", "", 1_000);
        p.schedule(Timer {
            journey: "survey".into(),
            key: "o-1".into(),
            fire_at_ms: 9_000,
            trigger_event_id: "e1".into(),
        });
        // What version 1 wrote: the body without the fields appended in version 2.
        let mut v1 = vec![1u8];
        v1.extend(
            postcard::to_allocvec(&(
                (
                    &p.id,
                    &p.anonymous_ids,
                    p.first_seen_ms,
                    p.last_seen_ms,
                    p.events,
                ),
                (
                    &p.channels,
                    p.orders,
                    p.lifetime_value,
                    p.returns,
                    p.last_purchase_ms,
                ),
                (&p.nps, &p.csat, &p.ces, p.open_issues, p.sentiment),
                (&p.contacts_ms, p.max_wait_seconds, &p.products, &p.recent),
                (&p.journeys, &p.timers),
            ))
            .unwrap(),
        );
        // Appending fields alone would not do: the current struct cannot read it.
        assert!(postcard::from_bytes::<Profile>(&v1[1..]).is_err());
        let old = Profile::decode(&v1).unwrap();
        assert!(old.windows.series.is_empty() && old.journey_runs.is_empty());
        let expected = Profile {
            windows: Windows::default(),
            ..p.clone()
        };
        assert_eq!(old, expected);
        assert_eq!(Profile::decode(&p.encode()).unwrap(), p);
    }

    /// What version 2 wrote for `p`: the body without the fields appended in version 3.
    fn v2_bytes(p: &Profile) -> Vec<u8> {
        // Windows as versions 2 to 4 stored them: buckets not packed.
        let windows: Vec<_> = p
            .windows
            .series
            .iter()
            .map(|s| (s.event_type, s.channel, s.last_ms, &s.buckets))
            .collect();
        let mut v2 = vec![2u8];
        v2.extend(
            postcard::to_allocvec(&(
                (
                    &p.id,
                    &p.anonymous_ids,
                    p.first_seen_ms,
                    p.last_seen_ms,
                    p.events,
                ),
                (
                    &p.channels,
                    p.orders,
                    p.lifetime_value,
                    p.returns,
                    p.last_purchase_ms,
                ),
                (&p.nps, &p.csat, &p.ces, p.open_issues, p.sentiment),
                (&p.contacts_ms, p.max_wait_seconds, &p.products, &p.recent),
                (&p.journeys, &p.timers),
                (&windows, &p.journey_runs, &p.journey_entries),
            ))
            .unwrap(),
        );
        v2
    }

    #[test]
    fn a_version_2_record_decodes_with_a_neutral_emotional_state() {
        let mut p = Profile::new("c1");
        p.apply(&tp("e1", "c1", Channel::Web, EventType::ProductView, 1_000).with_sku("s"));
        p.apply(&tp("e2", "c1", Channel::Chat, EventType::ChatMessage, 2_000).with_sentiment(-0.5));
        p.apply(
            &tp(
                "e3",
                "c1",
                Channel::CallCenter,
                EventType::CallStarted,
                3_000,
            )
            .with_wait(700),
        );
        p.mark_journey("recovery", "", 1_000);
        p.journey_runs.push(JourneyRun {
            journey: "survey".into(),
            version: 1,
            key: "o-1".into(),
            at: SmallVec::from_slice(&[1]),
            entered_ms: 1_000,
            trigger_event_id: "e1".into(),
        });
        crate::emotion::update(&mut p, 3_000, &crate::emotion::EmotionConfig::default());
        assert_ne!(
            p.emotion,
            Default::default(),
            "the test covers the new fields"
        );
        let v2 = v2_bytes(&p);
        assert!(postcard::from_bytes::<Profile>(&v2[1..]).is_err());
        let old = Profile::decode(&v2).unwrap();
        let expected = Profile {
            call_waits: Vec::new(),
            emotion: Default::default(),
            // The sentiment trend is dated by the latest chat touchpoint.
            sentiment_ms: 2_000,
            ..p.clone()
        };
        assert_eq!(old, expected);
        let again = old.encode();
        assert_eq!(again[0], PROFILE_ENCODING_VERSION);
        assert_eq!(Profile::decode(&again).unwrap(), expected);
    }

    /// The profile inside `tests/fixtures/stored-profile-v2.bin`, a record the
    /// engine stored with encoding version 2 (an envelope of source offsets
    /// around the profile), still decodes.
    #[test]
    fn the_stored_version_2_fixture_decodes() {
        let bytes: &[u8] = include_bytes!("../../../../tests/fixtures/stored-profile-v2.bin");
        // Envelope: version, number of sources, 16 bytes per source, the profile.
        let sources = usize::from(bytes[1]);
        let body = &bytes[2 + 16 * sources..];
        assert_eq!(body[0], 2, "a version-2 profile");
        let p = Profile::decode(body).unwrap();
        assert_eq!(p.id, "c-fixture");
        assert_eq!(p.events, 6);
        assert_eq!(p.orders, 1);
        assert_eq!(p.nps.map(|s| s.score), Some(4));
        assert_eq!(
            p.product_interest("tv-55").map(|i| i.views_ms.len()),
            Some(3)
        );
        assert!(!p.timers.is_empty() && !p.journey_entries.is_empty());
        assert_eq!(p.emotion.state, crate::action::EmotionalState::Neutral);
        assert!(p.review_reads_ms.is_empty() && p.call_waits.is_empty());
        assert_eq!(Profile::decode(&p.encode()).unwrap(), p);
    }
}
