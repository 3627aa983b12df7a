//! Recognising a customer's emotional state from weighted signals, with hysteresis.
//!
//! # The model
//!
//! Each touchpoint updates a handful of **signals** ([`Signal`]): observations
//! such as "help searches within 48h" or "latest NPS answer", each turned into a
//! **value** between 0 (absent) and 1 (fully present) by a fixed, documented
//! rule (see [`Signal::value`]). Each emotional state has a **score**: the sum
//! over the signals it weighs of `weight x value`, with the weights in
//! [`EmotionConfig`]. Every concept has exactly one definition here (what a
//! detractor answer is, what counts as hesitating over a product); journeys,
//! actions and the profile API all read the result instead of re-deriving it.
//!
//! The state is **stored in the profile** ([`EmotionTrack`]) and moved only by
//! [`update`], which the engine calls after applying each touchpoint and before
//! evaluating journeys:
//!
//! - From `neutral`, a state is **entered** when its score reaches its `enter`
//!   threshold. When several qualify, the one of highest priority wins:
//!   `invested_detractor` > `anxious` > `uncertain` > `invested_fan` >
//!   `wants_to_feel_special` (how much each should change our response: an upset
//!   customer first, then one who needs the simplest path and no marketing).
//! - The current state is **kept** while its score stays at or above its lower
//!   `leave` threshold, and in any case until `min_dwell` has passed since it was
//!   entered, so one calm event does not flip an anxious customer back and forth.
//! - It is **left** when its score is below `leave` after the dwell: to the
//!   highest-priority state whose score reaches `enter`, else to `neutral`.
//! - A state of **higher priority** that reaches its `enter` threshold takes over
//!   at once, dwell or not: a hesitating customer who answers NPS 2 is a
//!   detractor now, not in two hours.
//!
//! Time is event time: windows end at the touchpoint's time (never moving
//! backwards for a late event), so replaying history gives the same states as
//! live processing, and signals fade as later events arrive.
//!
//! Every state comes with the signals that produced it ([`current`]), and those
//! reasons travel with any action it shapes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{EmotionalState, Reason};
use crate::duration::{format_duration, parse_duration};
use crate::profile::Profile;
use crate::touchpoint::{Channel, EventType};
use crate::window::RETENTION_MS;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One observable signal of how a customer feels.
///
/// Each signal has an **observation** (a count, a score or an amount, read from
/// the profile at event time) and a **value** from 0 to 1 derived from it by a
/// fixed rule ([`Signal::value`]); a state's score weighs values. The stored
/// observations are indexed by the variant's position, so new signals are only
/// ever appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// Uncertain. Most views of any one product within `browse_window`, counting
    /// only views after the customer's latest purchase of that product. Value:
    /// 0 for one view, 0.5 for two, 1 from three on.
    RepeatViews,
    /// Uncertain. Products viewed within `browse_window` and not bought since
    /// (views after the latest purchase of each, as for `repeat_views`). Value:
    /// 0 for one product, 0.5 for two, 1 from three on.
    ComparedProducts,
    /// Uncertain. Review pages read within `browse_window`: page views, product
    /// views and searches whose `web.url` or `web.query` contains "review" (any
    /// case). Value: 0.5 per read, 1 from two on.
    ReviewsRead,
    /// Uncertain. Add-to-cart events within `browse_window` after the latest
    /// purchase (any product). Value: 1 from one on.
    CartsWithoutPurchase,
    /// Anxious. Help searches within `contact_window`. Value: 0 for one, 0.5 for
    /// two, 1 from three on.
    HelpSearches,
    /// Anxious. Calls started and chat hand-offs within `contact_window`: the
    /// customer reaching a person again and again (Rapport cannot tell which
    /// issue a call is about; repeated contacts in a short window stand for it).
    /// Value: 0 for one, 0.5 for two, 1 from three on.
    RepeatContacts,
    /// Anxious. Longest call wait (seconds) within `contact_window`. Value: 0 up
    /// to 120 s, rising linearly to 1 at 600 s.
    CallWait,
    /// Anxious. Abandoned checkouts (`checkout_abandoned`) within
    /// `contact_window`: a long flow given up. Value: 0.5 per abandon, 1 from two on.
    AbandonedCheckouts,
    /// Detractor. Latest NPS answer within `feedback_window` (-1 when none).
    /// Value: 0 for 7-10 and no answer; 0.5 for a 6 rising to 1 for a 0 (the
    /// NPS definition of a detractor is 0-6).
    NpsDetractor,
    /// Detractor. Latest CSAT answer (1-5) within `feedback_window`. Value: 0.5
    /// for a 2, 1 for a 1, else 0.
    CsatLow,
    /// Detractor. Latest CES answer (1-7, 7 very easy) within `feedback_window`.
    /// Value: 0.5 for a 2, 1 for a 1, else 0.
    CesLow,
    /// Detractor. Chat sentiment trend (-1..1), while the latest chat sentiment is
    /// within `feedback_window` (else 0). Value: how negative it is, `max(0, -s)`.
    NegativeSentiment,
    /// Fan. Latest NPS answer within `feedback_window` (-1 when none). Value: 1
    /// for a promoter (9-10), else 0.
    NpsPromoter,
    /// Fan. Latest CSAT answer within `feedback_window`. Value: 1 for a 5, 0.5 for
    /// a 4, else 0.
    CsatHigh,
    /// Fan. Chat sentiment trend, as for `negative_sentiment`. Value: `max(0, s)`.
    PositiveSentiment,
    /// Fan. Days with at least one touchpoint on a customer channel (every channel
    /// but `system`) within `engagement_window`. Value: linear, 1 from eight days on.
    Engagement,
    /// Special. Lifetime value (purchases minus returns). Value: linear, 1 from
    /// `lifetime_value_full` on.
    LifetimeValue,
    /// Special. Purchases within `order_window`. Value: linear, 1 from six on.
    OrderFrequency,
}

impl Signal {
    /// Every signal, in storage order.
    pub const ALL: [Signal; 18] = [
        Signal::RepeatViews,
        Signal::ComparedProducts,
        Signal::ReviewsRead,
        Signal::CartsWithoutPurchase,
        Signal::HelpSearches,
        Signal::RepeatContacts,
        Signal::CallWait,
        Signal::AbandonedCheckouts,
        Signal::NpsDetractor,
        Signal::CsatLow,
        Signal::CesLow,
        Signal::NegativeSentiment,
        Signal::NpsPromoter,
        Signal::CsatHigh,
        Signal::PositiveSentiment,
        Signal::Engagement,
        Signal::LifetimeValue,
        Signal::OrderFrequency,
    ];

    /// Position in [`Signal::ALL`] and in the stored observations.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True when a touchpoint of type `t` can change this signal's
    /// observation (the others change only as time moves windows on).
    pub fn moved_by(self, t: EventType) -> bool {
        use EventType as E;
        match self {
            Signal::RepeatViews | Signal::ComparedProducts => {
                matches!(t, E::ProductView | E::Purchase)
            }
            Signal::CartsWithoutPurchase => matches!(t, E::AddToCart | E::Purchase),
            Signal::HelpSearches => t == E::HelpSearch,
            Signal::RepeatContacts => matches!(t, E::CallStarted | E::ChatHandoff),
            Signal::AbandonedCheckouts => t == E::CheckoutAbandoned,
            Signal::OrderFrequency => t == E::Purchase,
            // Observed on every touchpoint (cheap).
            _ => true,
        }
    }

    /// The name used in configuration weights, journey conditions and the
    /// profile API.
    pub fn name(self) -> &'static str {
        match self {
            Signal::RepeatViews => "repeat_views",
            Signal::ComparedProducts => "compared_products",
            Signal::ReviewsRead => "reviews_read",
            Signal::CartsWithoutPurchase => "carts_without_purchase",
            Signal::HelpSearches => "help_searches",
            Signal::RepeatContacts => "repeat_contacts",
            Signal::CallWait => "call_wait",
            Signal::AbandonedCheckouts => "abandoned_checkouts",
            Signal::NpsDetractor => "nps_detractor",
            Signal::CsatLow => "csat_low",
            Signal::CesLow => "ces_low",
            Signal::NegativeSentiment => "negative_sentiment",
            Signal::NpsPromoter => "nps_promoter",
            Signal::CsatHigh => "csat_high",
            Signal::PositiveSentiment => "positive_sentiment",
            Signal::Engagement => "engagement",
            Signal::LifetimeValue => "lifetime_value",
            Signal::OrderFrequency => "order_frequency",
        }
    }

    /// The signal called `name`.
    pub fn from_name(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The observation when there is nothing to observe: no survey answer reads
    /// -1 (a score of 0 is a real NPS answer), everything else 0.
    pub fn absent(self) -> f64 {
        match self {
            Signal::NpsDetractor
            | Signal::CsatLow
            | Signal::CesLow
            | Signal::NpsPromoter
            | Signal::CsatHigh => -1.0,
            _ => 0.0,
        }
    }

    /// The value, 0 (absent) to 1 (fully present), of observation `observed`:
    /// the one rule per signal, documented on each variant.
    pub fn value(self, observed: f64, cfg: &EmotionConfig) -> f64 {
        let o = observed;
        let v = match self {
            Signal::RepeatViews
            | Signal::ComparedProducts
            | Signal::HelpSearches
            | Signal::RepeatContacts => ramp(o, 1.0, 3.0),
            Signal::ReviewsRead | Signal::AbandonedCheckouts => ramp(o, 0.0, 2.0),
            Signal::CartsWithoutPurchase => ramp(o, 0.0, 1.0),
            Signal::CallWait => ramp(o, 120.0, 600.0),
            Signal::NpsDetractor if (0.0..=6.0).contains(&o) => 0.5 + (6.0 - o) / 12.0,
            Signal::CsatLow | Signal::CesLow if (1.0..=2.0).contains(&o) => 0.5 + (2.0 - o) / 2.0,
            Signal::NegativeSentiment => -o,
            Signal::NpsPromoter if o >= 9.0 => 1.0,
            Signal::CsatHigh if o >= 5.0 => 1.0,
            Signal::CsatHigh if o >= 4.0 => 0.5,
            Signal::PositiveSentiment => o,
            Signal::Engagement => ramp(o, 0.0, 8.0),
            Signal::LifetimeValue => ramp(o, 0.0, cfg.lifetime_value_full),
            Signal::OrderFrequency => ramp(o, 0.0, 6.0),
            Signal::NpsDetractor
            | Signal::CsatLow
            | Signal::CesLow
            | Signal::NpsPromoter
            | Signal::CsatHigh => 0.0,
        };
        if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// What is observed, in words, with the configured window: the condition of
    /// the reason an action carries.
    pub fn describe(self, cfg: &EmotionConfig) -> String {
        let w = span;
        match self {
            Signal::RepeatViews => format!(
                "most views of one product within {} since buying it",
                w(cfg.browse_window_ms)
            ),
            Signal::ComparedProducts => format!(
                "products viewed within {} and not bought",
                w(cfg.browse_window_ms)
            ),
            Signal::ReviewsRead => format!("reviews read within {}", w(cfg.browse_window_ms)),
            Signal::CartsWithoutPurchase => format!(
                "add-to-carts within {} without a purchase since",
                w(cfg.browse_window_ms)
            ),
            Signal::HelpSearches => format!("help searches within {}", w(cfg.contact_window_ms)),
            Signal::RepeatContacts => format!(
                "calls and chat hand-offs within {}",
                w(cfg.contact_window_ms)
            ),
            Signal::CallWait => format!(
                "longest call wait within {}, seconds",
                w(cfg.contact_window_ms)
            ),
            Signal::AbandonedCheckouts => {
                format!("abandoned checkouts within {}", w(cfg.contact_window_ms))
            }
            Signal::NpsDetractor => format!(
                "latest nps within {} (detractor 0-6)",
                w(cfg.feedback_window_ms)
            ),
            Signal::CsatLow => format!("latest csat within {} (1-2)", w(cfg.feedback_window_ms)),
            Signal::CesLow => format!("latest ces within {} (1-2)", w(cfg.feedback_window_ms)),
            Signal::NegativeSentiment | Signal::PositiveSentiment => format!(
                "chat sentiment trend, chatted within {}",
                w(cfg.feedback_window_ms)
            ),
            Signal::NpsPromoter => format!(
                "latest nps within {} (promoter 9-10)",
                w(cfg.feedback_window_ms)
            ),
            Signal::CsatHigh => format!("latest csat within {} (4-5)", w(cfg.feedback_window_ms)),
            Signal::Engagement => format!(
                "days with touchpoints within {}",
                w(cfg.engagement_window_ms)
            ),
            Signal::LifetimeValue => "lifetime value".to_owned(),
            Signal::OrderFrequency => format!("purchases within {}", w(cfg.order_window_ms)),
        }
    }

    /// Whether the observation is a whole number (count, score, seconds), as
    /// opposed to a measure (sentiment, money).
    pub fn is_whole(self) -> bool {
        !matches!(
            self,
            Signal::NegativeSentiment | Signal::PositiveSentiment | Signal::LifetimeValue
        )
    }
}

/// A window or dwell as configuration writes it: whole days beyond three days
/// (`"30d"`), else hours and smaller (`"72h"`, `"6h"`).
fn span(ms: i64) -> String {
    if ms > 3 * DAY_MS && ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else {
        format_duration(ms)
    }
}

/// 0 at or below `zero`, 1 at or above `full`, linear between.
fn ramp(x: f64, zero: f64, full: f64) -> f64 {
    if full <= zero {
        return if x >= full { 1.0 } else { 0.0 };
    }
    ((x - zero) / (full - zero)).clamp(0.0, 1.0)
}

/// The emotional state as stored in the profile: what [`update`] decided last,
/// since when, and the observations it decided on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmotionTrack {
    /// The current state.
    pub state: EmotionalState,
    /// Event time the state was entered, epoch ms (0 for the initial `neutral`).
    pub since_ms: i64,
    /// Event time of the latest evaluation, epoch ms (0 when never evaluated).
    pub evaluated_ms: i64,
    /// Observation per signal at the latest evaluation, indexed by
    /// [`Signal::index`] (held inline: read and written on every touchpoint).
    pub observed: [f32; Signal::ALL.len()],
    /// Days with customer touchpoints: bit `i` is day `active_day - i` (days
    /// since the epoch, UTC), so `engagement` is a bit count, not a scan of the
    /// profile's history on every event.
    pub active_days: u128,
    /// The day of bit 0 of `active_days`.
    pub active_day: i64,
    /// Event time every signal was last observed from the profile's history,
    /// epoch ms; in between, a touchpoint re-observes only the signals its type
    /// can move (see [`update_on_touchpoint`]).
    pub refreshed_ms: i64,
}

impl Default for EmotionTrack {
    fn default() -> Self {
        EmotionTrack {
            state: EmotionalState::Neutral,
            since_ms: 0,
            evaluated_ms: 0,
            observed: Signal::ALL.map(|s| s.absent() as f32),
            active_days: 0,
            active_day: 0,
            refreshed_ms: 0,
        }
    }
}

impl EmotionTrack {
    /// Notes a customer touchpoint at `at_ms` (days more than 127 before the
    /// latest are forgotten).
    pub fn note_active(&mut self, at_ms: i64) {
        let day = at_ms.div_euclid(DAY_MS);
        let ahead = day - self.active_day;
        if ahead > 0 {
            self.active_days = match u32::try_from(ahead) {
                Ok(n) if n < 128 => self.active_days << n,
                _ => 0,
            };
            self.active_day = day;
        }
        let back = self.active_day - day;
        if (0..128).contains(&back) {
            self.active_days |= 1 << back;
        }
    }

    /// Days with customer touchpoints in `[since_ms, now_ms]`.
    pub fn days_active(&self, since_ms: i64, now_ms: i64) -> u32 {
        let (first, last) = (since_ms.div_euclid(DAY_MS), now_ms.div_euclid(DAY_MS));
        // Bits for days first..=last: back = active_day - day.
        let lo = (self.active_day - last).max(0);
        let hi = (self.active_day - first).min(127);
        if lo > hi {
            return 0;
        }
        let width = hi - lo + 1;
        let mask = if width >= 128 {
            u128::MAX
        } else {
            ((1u128 << width) - 1) << lo
        };
        (self.active_days & mask).count_ones()
    }

    /// The observation of `signal` at the latest evaluation.
    pub fn observed(&self, signal: Signal) -> f64 {
        f64::from(self.observed[signal.index()])
    }
}

/// How one state is entered, kept and left, and what it weighs.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRule {
    /// The state.
    pub state: EmotionalState,
    /// Score at or above which the state is entered.
    pub enter: f64,
    /// Score at or above which the state, once entered, is kept (at most `enter`).
    pub leave: f64,
    /// The state is kept at least this long after it was entered, ms.
    pub min_dwell_ms: i64,
    /// Weight per signal, in [`Signal`] order as read from configuration;
    /// signals not listed weigh 0. Any signal may be weighed by any state.
    pub weights: Vec<(Signal, f64)>,
}

impl StateRule {
    /// The score of this state for observations `track`: sum of weight x value.
    pub fn score(&self, track: &EmotionTrack, cfg: &EmotionConfig) -> f64 {
        self.weights
            .iter()
            .map(|&(s, w)| w * s.value(track.observed(s), cfg))
            .sum()
    }

    /// The weight of `signal` (0 when not weighed).
    pub fn weight(&self, signal: Signal) -> f64 {
        self.weights
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or(0.0, |&(_, w)| w)
    }
}

/// Windows, weights and thresholds of the emotional states (`[emotion]` in
/// `rapport.toml`). The defaults work out of the box; see `deploy/rapport.toml`.
///
/// Read from configuration through its TOML shape (durations as `"48h"`,
/// weights by signal name); reading refuses unknown keys and signal names and
/// runs [`EmotionConfig::validate`], so a bad configuration stops the engine at
/// start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct EmotionConfig {
    /// Window of the browsing signals (views, comparisons, reviews, carts), ms.
    pub browse_window_ms: i64,
    /// Window of the contact signals (help searches, calls, waits, abandons), ms.
    pub contact_window_ms: i64,
    /// How long a survey answer or chat sentiment counts, ms.
    pub feedback_window_ms: i64,
    /// Window of `engagement`, ms.
    pub engagement_window_ms: i64,
    /// Window of `order_frequency`, ms.
    pub order_window_ms: i64,
    /// Lifetime value at which `lifetime_value` is fully present (currency as sent).
    pub lifetime_value_full: f64,
    /// One rule per state, in priority order: detractor, anxious, uncertain, fan,
    /// special.
    pub rules: [StateRule; 5],
}

/// The states in priority order, highest first.
pub const PRIORITY: [EmotionalState; 5] = [
    EmotionalState::InvestedDetractor,
    EmotionalState::Anxious,
    EmotionalState::Uncertain,
    EmotionalState::InvestedFan,
    EmotionalState::WantsToFeelSpecial,
];

impl Default for EmotionConfig {
    fn default() -> Self {
        use Signal::*;
        let rule = |state, enter, leave, dwell_h: i64, weights: &[(Signal, f64)]| StateRule {
            state,
            enter,
            leave,
            min_dwell_ms: dwell_h * HOUR_MS,
            weights: weights.to_vec(),
        };
        EmotionConfig {
            browse_window_ms: 72 * HOUR_MS,
            contact_window_ms: 48 * HOUR_MS,
            feedback_window_ms: 30 * DAY_MS,
            engagement_window_ms: 30 * DAY_MS,
            order_window_ms: 90 * DAY_MS,
            lifetime_value_full: 1_000.0,
            rules: [
                rule(
                    EmotionalState::InvestedDetractor,
                    0.5,
                    0.25,
                    24,
                    &[
                        (NpsDetractor, 1.0),
                        (CsatLow, 1.0),
                        (CesLow, 1.0),
                        (NegativeSentiment, 1.0),
                    ],
                ),
                rule(
                    EmotionalState::Anxious,
                    1.0,
                    0.5,
                    6,
                    &[
                        (HelpSearches, 1.0),
                        (RepeatContacts, 1.0),
                        (CallWait, 1.0),
                        (AbandonedCheckouts, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::Uncertain,
                    1.0,
                    0.5,
                    2,
                    &[
                        (RepeatViews, 1.0),
                        (ComparedProducts, 0.5),
                        (ReviewsRead, 0.5),
                        (CartsWithoutPurchase, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::InvestedFan,
                    1.0,
                    0.5,
                    24,
                    &[
                        (NpsPromoter, 1.0),
                        (CsatHigh, 0.5),
                        (PositiveSentiment, 0.5),
                        (Engagement, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::WantsToFeelSpecial,
                    1.0,
                    0.75,
                    24,
                    &[(LifetimeValue, 1.0), (OrderFrequency, 1.0)],
                ),
            ],
        }
    }
}

/// Why an emotion configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmotionConfigError {
    /// A weight names no signal.
    #[error("emotion.{state}.weights: unknown signal `{name}`; signals are: {known}")]
    UnknownSignal {
        /// The state section.
        state: &'static str,
        /// The name given.
        name: String,
        /// Every signal name.
        known: String,
    },
    /// A signal weighed twice in one state.
    #[error("emotion.{state}.weights: `{signal}` is weighed twice")]
    DuplicateSignal {
        /// The state section.
        state: &'static str,
        /// The signal.
        signal: &'static str,
    },
    /// A negative or non-finite weight.
    #[error("emotion.{state}.weights.{signal} = {weight}: weights must be finite and >= 0")]
    BadWeight {
        /// The state section.
        state: &'static str,
        /// The signal.
        signal: &'static str,
        /// The weight given.
        weight: f64,
    },
    /// `enter` not a positive number: the state would hold with no signal at all.
    #[error("emotion.{state}.enter = {enter}: must be a finite number > 0")]
    BadEnter {
        /// The state section.
        state: &'static str,
        /// The threshold given.
        enter: f64,
    },
    /// `leave` above `enter`, negative or not finite.
    #[error("emotion.{state}.leave = {leave}: must be between 0 and enter ({enter}), so a state once entered is kept while its score is between the two")]
    BadLeave {
        /// The state section.
        state: &'static str,
        /// The leave threshold given.
        leave: f64,
        /// The enter threshold.
        enter: f64,
    },
    /// A negative dwell.
    #[error("emotion.{state}.min_dwell: must not be negative")]
    BadDwell {
        /// The state section.
        state: &'static str,
    },
    /// A duration that does not parse.
    #[error("emotion.{key}: {message}")]
    BadDuration {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A window of zero, or longer than the profile keeps counts for.
    #[error("emotion.{key} = {value}: windows must be longer than 0 and at most 92d, what the profile keeps")]
    BadWindow {
        /// The key.
        key: &'static str,
        /// The window given.
        value: String,
    },
    /// `lifetime_value_full` not a positive number.
    #[error("emotion.lifetime_value_full = {0}: must be a finite number > 0")]
    BadLifetimeValue(f64),
    /// The rules are not one per state in priority order.
    #[error("emotion: the state rules must be one per state, in the order {expected}")]
    RuleOrder {
        /// The expected order.
        expected: String,
    },
}

impl EmotionConfig {
    /// Checks thresholds, weights and windows, naming the key and what to change.
    pub fn validate(&self) -> Result<(), EmotionConfigError> {
        for (key, ms) in [
            ("browse_window", self.browse_window_ms),
            ("contact_window", self.contact_window_ms),
            ("feedback_window", self.feedback_window_ms),
            ("engagement_window", self.engagement_window_ms),
            ("order_window", self.order_window_ms),
        ] {
            if ms <= 0 || ms > RETENTION_MS {
                return Err(EmotionConfigError::BadWindow {
                    key,
                    value: if ms < 0 { format!("{ms}ms") } else { span(ms) },
                });
            }
        }
        if !(self.lifetime_value_full.is_finite() && self.lifetime_value_full > 0.0) {
            return Err(EmotionConfigError::BadLifetimeValue(
                self.lifetime_value_full,
            ));
        }
        if self.rules.iter().map(|r| r.state).ne(PRIORITY) {
            return Err(EmotionConfigError::RuleOrder {
                expected: PRIORITY.map(EmotionalState::as_str).join(", "),
            });
        }
        for r in &self.rules {
            let state = r.state.as_str();
            if !(r.enter.is_finite() && r.enter > 0.0) {
                return Err(EmotionConfigError::BadEnter {
                    state,
                    enter: r.enter,
                });
            }
            if !(r.leave.is_finite() && r.leave >= 0.0 && r.leave <= r.enter) {
                return Err(EmotionConfigError::BadLeave {
                    state,
                    leave: r.leave,
                    enter: r.enter,
                });
            }
            if r.min_dwell_ms < 0 {
                return Err(EmotionConfigError::BadDwell { state });
            }
            for (i, &(signal, weight)) in r.weights.iter().enumerate() {
                if !(weight.is_finite() && weight >= 0.0) {
                    return Err(EmotionConfigError::BadWeight {
                        state,
                        signal: signal.name(),
                        weight,
                    });
                }
                if r.weights[..i].iter().any(|(s, _)| *s == signal) {
                    return Err(EmotionConfigError::DuplicateSignal {
                        state,
                        signal: signal.name(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The rule of `state` (`None` for `neutral`, which has none).
    pub fn rule(&self, state: EmotionalState) -> Option<&StateRule> {
        self.rules.iter().find(|r| r.state == state)
    }

    /// The rule of `state`, to change it (`None` for `neutral`).
    pub fn rule_mut(&mut self, state: EmotionalState) -> Option<&mut StateRule> {
        self.rules.iter_mut().find(|r| r.state == state)
    }
}

/// `[emotion]` as written in TOML: every key optional, defaults filled in.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    browse_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contact_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feedback_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engagement_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime_value_full: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invested_detractor: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anxious: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertain: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invested_fan: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wants_to_feel_special: Option<RawRule>,
}

/// One `[emotion.<state>]` section. Weights given replace that state's
/// default weights as a whole.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leave: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_dwell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weights: Option<BTreeMap<String, f64>>,
}

fn duration(key: &str, text: Option<String>, default: i64) -> Result<i64, EmotionConfigError> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|message| EmotionConfigError::BadDuration {
            key: key.to_owned(),
            message,
        }),
    }
}

impl TryFrom<RawConfig> for EmotionConfig {
    type Error = EmotionConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let mut c = EmotionConfig::default();
        c.browse_window_ms = duration("browse_window", raw.browse_window, c.browse_window_ms)?;
        c.contact_window_ms = duration("contact_window", raw.contact_window, c.contact_window_ms)?;
        c.feedback_window_ms =
            duration("feedback_window", raw.feedback_window, c.feedback_window_ms)?;
        c.engagement_window_ms = duration(
            "engagement_window",
            raw.engagement_window,
            c.engagement_window_ms,
        )?;
        c.order_window_ms = duration("order_window", raw.order_window, c.order_window_ms)?;
        if let Some(v) = raw.lifetime_value_full {
            c.lifetime_value_full = v;
        }
        let sections = [
            raw.invested_detractor,
            raw.anxious,
            raw.uncertain,
            raw.invested_fan,
            raw.wants_to_feel_special,
        ];
        for (rule, section) in c.rules.iter_mut().zip(sections) {
            let Some(s) = section else { continue };
            let state = rule.state.as_str();
            if let Some(v) = s.enter {
                rule.enter = v;
            }
            if let Some(v) = s.leave {
                rule.leave = v;
            }
            rule.min_dwell_ms = duration(
                &format!("{state}.min_dwell"),
                s.min_dwell,
                rule.min_dwell_ms,
            )?;
            if let Some(weights) = s.weights {
                rule.weights = weights
                    .into_iter()
                    .map(|(name, w)| match Signal::from_name(&name) {
                        Some(signal) => Ok((signal, w)),
                        None => Err(EmotionConfigError::UnknownSignal {
                            state,
                            name,
                            known: Signal::ALL.map(Signal::name).join(", "),
                        }),
                    })
                    .collect::<Result<_, _>>()?;
                // In signal order, as the defaults are, so equal weights compare equal.
                rule.weights.sort_by_key(|&(signal, _)| signal);
            }
        }
        c.validate()?;
        Ok(c)
    }
}

impl From<EmotionConfig> for RawConfig {
    fn from(c: EmotionConfig) -> Self {
        let d = |ms: i64| Some(span(ms));
        let mut sections = c.rules.into_iter().map(|r| {
            Some(RawRule {
                enter: Some(r.enter),
                leave: Some(r.leave),
                min_dwell: d(r.min_dwell_ms),
                weights: Some(
                    r.weights
                        .into_iter()
                        .map(|(s, w)| (s.name().to_owned(), w))
                        .collect(),
                ),
            })
        });
        let mut next = || sections.next().flatten();
        RawConfig {
            browse_window: d(c.browse_window_ms),
            contact_window: d(c.contact_window_ms),
            feedback_window: d(c.feedback_window_ms),
            engagement_window: d(c.engagement_window_ms),
            order_window: d(c.order_window_ms),
            lifetime_value_full: Some(c.lifetime_value_full),
            invested_detractor: next(),
            anxious: next(),
            uncertain: next(),
            invested_fan: next(),
            wants_to_feel_special: next(),
        }
    }
}

/// A change of emotional state, returned by [`update`] (the engine counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: EmotionalState,
    /// The state after.
    pub to: EmotionalState,
}

/// One signal's part in a state's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// The signal.
    pub signal: Signal,
    /// What was observed (count, score, seconds, amount; see [`Signal`]).
    pub observed: f64,
    /// Its value, 0 to 1.
    pub value: f64,
    /// Its weight in the state.
    pub weight: f64,
    /// `weight x value`.
    pub contribution: f64,
}

/// The stored state and the signals behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The state.
    pub state: EmotionalState,
    /// Event time it was entered, epoch ms.
    pub since_ms: i64,
    /// Its score at the latest evaluation (0 for `neutral`).
    pub score: f64,
    /// The signals that contribute to the score, largest contribution first.
    pub signals: Vec<Contribution>,
    /// The same signals as reasons, for actions: condition and observed value.
    pub reasons: Vec<Reason>,
}

/// Notes touchpoint `tp` (applied to the profile just before) as a day of
/// customer activity and re-evaluates the state at its event time ([`update`]).
/// The engine calls this after each touchpoint is applied and before journeys
/// evaluate it.
pub fn update_on_touchpoint(
    p: &mut Profile,
    tp: &crate::touchpoint::Touchpoint,
    cfg: &EmotionConfig,
) -> Option<Transition> {
    if tp.channel != Channel::System {
        p.emotion.note_active(tp.event_time);
    }
    evaluate(p, tp.event_time, cfg, Some((tp.event_type, tp.sku())))
}

/// Re-evaluates the customer's signals at event time `now_ms` and moves the
/// stored state by the hysteresis rules (see the module documentation). After
/// a touchpoint, use [`update_on_touchpoint`], which also counts the day as
/// active.
///
/// A `now_ms` earlier than the latest evaluation (a late event) is treated as
/// the latest evaluation's time: state time never runs backwards. Returns the
/// transition when the state changed. Allocates nothing.
pub fn update(p: &mut Profile, now_ms: i64, cfg: &EmotionConfig) -> Option<Transition> {
    evaluate(p, now_ms, cfg, None)
}

/// How long (event time) a touchpoint may re-observe only the signals its
/// type moves before every signal is observed again, so windows that expire
/// are seen within this much of their edge.
pub const REFRESH_MS: i64 = 15 * 60_000;

/// [`update`], observing every signal, or with `event` (the type and product
/// of the touchpoint just applied) only the cheap ones and those `event` can
/// move, until [`REFRESH_MS`] has passed since every signal was last observed.
fn evaluate(
    p: &mut Profile,
    now_ms: i64,
    cfg: &EmotionConfig,
    event: Option<(EventType, Option<&str>)>,
) -> Option<Transition> {
    let now = now_ms.max(p.emotion.evaluated_ms);
    let track = &p.emotion;
    let full = event.is_none() || track.evaluated_ms == 0 || now - track.refreshed_ms >= REFRESH_MS;
    let mut observed = Signal::ALL.map(|s| track.observed(s));
    observe(&mut observed, p, now, cfg, if full { None } else { event });
    let track = &mut p.emotion;
    track.observed = observed.map(|v| v as f32);
    track.evaluated_ms = now;
    if full {
        track.refreshed_ms = now;
    }
    let from = track.state;
    let to = next_state(track, now, cfg);
    if to == from {
        return None;
    }
    track.state = to;
    track.since_ms = now;
    Some(Transition { from, to })
}

/// The stored state with its contributing signals and their values, for the
/// profile API, action reasons and journey conditions. Nothing is recomputed
/// from the profile's history: it reads what the latest [`update`] observed.
pub fn current(p: &Profile, cfg: &EmotionConfig) -> Assessment {
    let track = &p.emotion;
    let mut signals = Vec::new();
    if let Some(rule) = cfg.rule(track.state) {
        for &(signal, weight) in &rule.weights {
            let observed = track.observed(signal);
            let value = signal.value(observed, cfg);
            let contribution = weight * value;
            if contribution > 0.0 {
                signals.push(Contribution {
                    signal,
                    observed,
                    value,
                    weight,
                    contribution,
                });
            }
        }
    }
    signals.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    let reasons = signals
        .iter()
        .map(|c| {
            Reason::new(
                format!(
                    "{} ({}, weight {}, contributes {:.2})",
                    c.signal.describe(cfg),
                    c.signal.name(),
                    c.weight,
                    c.contribution
                ),
                show(c.signal, c.observed),
            )
        })
        .collect();
    Assessment {
        state: track.state,
        since_ms: track.since_ms,
        score: signals.iter().map(|c| c.contribution).sum(),
        signals,
        reasons,
    }
}

/// The score of `state` at the latest evaluation (0 for `neutral`).
pub fn score(p: &Profile, state: EmotionalState, cfg: &EmotionConfig) -> f64 {
    cfg.rule(state).map_or(0.0, |r| r.score(&p.emotion, cfg))
}

/// The value (0 to 1) of `signal` at the latest evaluation.
pub fn signal_value(p: &Profile, signal: Signal, cfg: &EmotionConfig) -> f64 {
    signal.value(p.emotion.observed(signal), cfg)
}

/// An observation as reasons show it: whole numbers without decimals.
fn show(signal: Signal, observed: f64) -> String {
    if signal.is_whole() {
        format!("{observed:.0}")
    } else {
        format!("{observed:.2}")
    }
}

/// The state after an evaluation whose observations are in `track`.
fn next_state(track: &EmotionTrack, now: i64, cfg: &EmotionConfig) -> EmotionalState {
    let qualifying = cfg
        .rules
        .iter()
        .position(|r| r.score(track, cfg) >= r.enter);
    let best = qualifying.map_or(EmotionalState::Neutral, |i| cfg.rules[i].state);
    let Some(held) = cfg.rules.iter().position(|r| r.state == track.state) else {
        return best;
    };
    match qualifying {
        // A state of higher priority takes over at once.
        Some(i) if i < held => best,
        _ => {
            let rule = &cfg.rules[held];
            let dwelling = now.saturating_sub(track.since_ms) < rule.min_dwell_ms;
            if dwelling || rule.score(track, cfg) >= rule.leave {
                rule.state
            } else {
                best
            }
        }
    }
}

/// Observes the signals at event time `now` into `o` (indexed by
/// [`Signal::index`]): every signal, or with `only` the cheap ones and those a
/// touchpoint of that type can move (the scans of products and windows are
/// the costly part, and most touchpoints are page views).
fn observe(
    o: &mut [f64; Signal::ALL.len()],
    p: &Profile,
    now: i64,
    cfg: &EmotionConfig,
    only: Option<(EventType, Option<&str>)>,
) {
    use EventType as E;
    let moves = |s: Signal| only.is_none_or(|(t, _)| s.moved_by(t));
    let (most_before, compared_before) = (
        o[Signal::RepeatViews.index()],
        o[Signal::ComparedProducts.index()],
    );
    let mut set = |s: Signal, v: f64| o[s.index()] = v;
    let count = |t: EventType, since: i64| p.windows.count(t, since, now) as f64;

    // Browsing: views of each product after its latest purchase, within the window.
    let browse = now - cfg.browse_window_ms;
    let views_of = |pi: &crate::profile::ProductInterest| pi.unbought_views(browse, now);
    if let Some((E::ProductView, Some(sku))) = only {
        // One more view of one product: only its count moved.
        if let Some(views) = p.products.iter().find(|pi| pi.sku == sku).map(views_of) {
            set(Signal::RepeatViews, most_before.max(views as f64));
            if views == 1 {
                set(Signal::ComparedProducts, compared_before + 1.0);
            }
        }
    } else if moves(Signal::RepeatViews) {
        let (mut most, mut products) = (0usize, 0usize);
        for pi in &p.products {
            let views = views_of(pi);
            most = most.max(views);
            products += usize::from(views > 0);
        }
        set(Signal::RepeatViews, most as f64);
        set(Signal::ComparedProducts, products as f64);
    }
    let reviews = p
        .review_reads_ms
        .iter()
        .filter(|&&t| t >= browse && t <= now)
        .count();
    set(Signal::ReviewsRead, reviews as f64);
    if moves(Signal::CartsWithoutPurchase) {
        set(
            Signal::CartsWithoutPurchase,
            count(
                E::AddToCart,
                browse.max(p.last_purchase_ms.saturating_add(1)),
            ),
        );
    }

    // Contacts.
    let contact = now - cfg.contact_window_ms;
    if moves(Signal::HelpSearches) {
        set(Signal::HelpSearches, count(E::HelpSearch, contact));
    }
    if moves(Signal::RepeatContacts) {
        set(
            Signal::RepeatContacts,
            count(E::CallStarted, contact) + count(E::ChatHandoff, contact),
        );
    }
    let wait = p
        .call_waits
        .iter()
        .filter(|w| w.at_ms >= contact && w.at_ms <= now)
        .map(|w| w.seconds)
        .max()
        .unwrap_or(0);
    set(Signal::CallWait, f64::from(wait.max(0)));
    if moves(Signal::AbandonedCheckouts) {
        set(
            Signal::AbandonedCheckouts,
            count(E::CheckoutAbandoned, contact),
        );
    }

    // Feedback: survey answers and chat sentiment while recent enough.
    let feedback = now - cfg.feedback_window_ms;
    let recent = |s: Option<crate::profile::Score>| {
        s.filter(|s| s.at_ms >= feedback)
            .map_or(-1.0, |s| f64::from(s.score))
    };
    let nps = recent(p.nps);
    let csat = recent(p.csat);
    set(Signal::NpsDetractor, nps);
    set(Signal::NpsPromoter, nps);
    set(Signal::CsatLow, csat);
    set(Signal::CsatHigh, csat);
    set(Signal::CesLow, recent(p.ces));
    let sentiment = if p.sentiment_ms > 0 && p.sentiment_ms >= feedback {
        p.sentiment
    } else {
        0.0
    };
    set(Signal::NegativeSentiment, sentiment);
    set(Signal::PositiveSentiment, sentiment);

    // Engagement: distinct days with customer touchpoints.
    set(Signal::Engagement, f64::from(active_days(p, now, cfg)));

    // Value.
    set(Signal::LifetimeValue, p.lifetime_value);
    if moves(Signal::OrderFrequency) {
        set(
            Signal::OrderFrequency,
            count(E::Purchase, now - cfg.order_window_ms),
        );
    }
}

/// Days (counted back from `now`'s day) with at least one touchpoint on a
/// channel other than `system`, within the engagement window.
fn active_days(p: &Profile, now: i64, cfg: &EmotionConfig) -> u32 {
    p.emotion.days_active(now - cfg.engagement_window_ms, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;
    use crate::touchpoint::{SurveyKind, Touchpoint};
    use EmotionalState::*;

    /// 2025-11-24T16:00:00Z, on a minute boundary.
    const T0: i64 = 1_764_000_000_000;
    const MIN_MS: i64 = 60_000;

    #[test]
    fn active_days_are_counted_within_the_window_late_days_included() {
        let mut t = EmotionTrack::default();
        let day = |d: i64| T0 + d * DAY_MS;
        for d in [0, 1, 1, 3, 10] {
            t.note_active(day(d));
        }
        // A late touchpoint for day 2 counts; one 200 days back is forgotten.
        t.note_active(day(2));
        t.note_active(day(-200));
        assert_eq!(t.days_active(day(0), day(10)), 5);
        assert_eq!(t.days_active(day(2), day(10)), 3);
        assert_eq!(t.days_active(day(0), day(3)), 4);
        assert_eq!(t.days_active(day(11), day(20)), 0);
        // Far ahead: the old days fall out of the bitmap.
        t.note_active(day(300));
        assert_eq!(t.days_active(day(0), day(300)), 1);
    }

    #[test]
    fn touchpoints_observe_what_they_move_and_agree_with_a_full_observation() {
        use crate::testing::tp;
        let cfg = EmotionConfig::default();
        let kinds = [
            EventType::PageView,
            EventType::ProductView,
            EventType::AddToCart,
            EventType::HelpSearch,
            EventType::CallStarted,
            EventType::CheckoutAbandoned,
            EventType::Purchase,
            EventType::PageView,
            EventType::ChatHandoff,
        ];
        let (mut fast, mut full) = (Profile::new("c1"), Profile::new("c1"));
        // A touchpoint every 40 s over five hours: many partial observations
        // between refreshes, and windows that move meanwhile.
        for i in 0..450i64 {
            let kind = kinds[(i as usize * 7) % kinds.len()];
            let t = tp(&format!("e{i}"), "c1", Channel::Web, kind, T0 + i * 40_000)
                .with_sku(&format!("sku-{}", i % 3));
            fast.apply(&t);
            full.apply(&t);
            update_on_touchpoint(&mut fast, &t, &cfg);
            full.emotion.note_active(t.event_time);
            update(&mut full, t.event_time, &cfg);
            for s in Signal::ALL {
                // Only window edges may lag, by less than a refresh period:
                // counts of types this touchpoint moves are exact.
                if s == Signal::Engagement || s.moved_by(kind) {
                    assert_eq!(
                        fast.emotion.observed(s),
                        full.emotion.observed(s),
                        "{} after {} at step {i}",
                        s.name(),
                        kind.as_str()
                    );
                }
            }
        }
        assert_eq!(fast.emotion.state, full.emotion.state);
    }

    /// Applies `t` and evaluates, as the engine does.
    fn feed(p: &mut Profile, t: Touchpoint, cfg: &EmotionConfig) -> Option<Transition> {
        p.apply(&t);
        update_on_touchpoint(p, &t, cfg)
    }

    fn help(at: i64) -> Touchpoint {
        tp("h", "c1", Channel::Web, EventType::HelpSearch, at)
    }

    fn calm(at: i64) -> Touchpoint {
        tp("pv", "c1", Channel::Web, EventType::PageView, at)
    }

    fn view(at: i64, sku: &str) -> Touchpoint {
        tp("v", "c1", Channel::Web, EventType::ProductView, at).with_sku(sku)
    }

    fn survey(at: i64, kind: SurveyKind, score: i32) -> Touchpoint {
        tp("s", "c1", Channel::Email, EventType::SurveyResponse, at).with_survey(kind, score)
    }

    /// An anxious customer: three help searches an hour apart (entered at T0+2h).
    fn anxious(cfg: &EmotionConfig) -> Profile {
        let mut p = Profile::new("c1");
        assert_eq!(feed(&mut p, help(T0), cfg), None);
        assert_eq!(feed(&mut p, help(T0 + HOUR_MS), cfg), None);
        assert_eq!(
            feed(&mut p, help(T0 + 2 * HOUR_MS), cfg),
            Some(Transition {
                from: Neutral,
                to: Anxious
            })
        );
        p
    }

    #[test]
    fn repeated_help_searches_enter_anxious_and_say_why() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        feed(&mut p, help(T0), &cfg);
        feed(&mut p, help(T0 + HOUR_MS), &cfg);
        assert_eq!(
            p.emotion.state, Neutral,
            "two searches: score 0.5 < enter 1.0"
        );
        let p = anxious(&cfg);
        let a = current(&p, &cfg);
        assert_eq!(a.state, Anxious);
        assert_eq!(a.since_ms, T0 + 2 * HOUR_MS);
        assert_eq!(a.score, 1.0);
        assert_eq!(a.signals.len(), 1);
        let c = &a.signals[0];
        assert_eq!(
            (c.signal, c.observed, c.value, c.weight, c.contribution),
            (Signal::HelpSearches, 3.0, 1.0, 1.0, 1.0)
        );
        assert_eq!(
            a.reasons,
            vec![Reason::new(
                "help searches within 48h (help_searches, weight 1, contributes 1.00)",
                "3"
            )]
        );
    }

    #[test]
    fn long_call_waits_and_contacts_add_up_to_anxious() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        // One call with a 15-minute wait is enough on its own.
        let call = tp("k", "c1", Channel::CallCenter, EventType::CallStarted, T0).with_wait(900);
        assert_eq!(
            feed(&mut p, call, &cfg).map(|t| t.to),
            Some(Anxious),
            "{:?}",
            current(&p, &cfg)
        );
        // Two help searches (0.5) and two contacts (0.5) together reach 1.0.
        let mut p = Profile::new("c2");
        for (i, t) in [
            EventType::HelpSearch,
            EventType::CallStarted,
            EventType::HelpSearch,
        ]
        .into_iter()
        .enumerate()
        {
            feed(
                &mut p,
                tp("e", "c2", Channel::Web, t, T0 + i as i64 * MIN_MS),
                &cfg,
            );
        }
        assert_eq!(p.emotion.state, Neutral);
        feed(
            &mut p,
            tp(
                "e",
                "c2",
                Channel::Chat,
                EventType::ChatHandoff,
                T0 + 3 * MIN_MS,
            ),
            &cfg,
        );
        assert_eq!(p.emotion.state, Anxious);
        assert_eq!(score(&p, Anxious, &cfg), 1.0);
    }

    #[test]
    fn an_anxious_customer_stays_anxious_through_one_calm_event() {
        let cfg = EmotionConfig::default();
        let mut p = anxious(&cfg);
        assert_eq!(feed(&mut p, calm(T0 + 3 * HOUR_MS), &cfg), None);
        assert_eq!(p.emotion.state, Anxious);
        assert_eq!(p.emotion.since_ms, T0 + 2 * HOUR_MS, "entry time is kept");
    }

    #[test]
    fn a_score_between_leave_and_enter_keeps_the_state_then_fading_leaves_it() {
        let cfg = EmotionConfig::default();
        let mut p = anxious(&cfg);
        // 48h30m after the first search only two are inside the window: 0.5,
        // below enter but not below leave, and the dwell is long over.
        let t = T0 + 48 * HOUR_MS + 30 * MIN_MS;
        assert_eq!(feed(&mut p, calm(t), &cfg), None);
        assert_eq!(p.emotion.observed(Signal::HelpSearches), 2.0);
        assert_eq!(p.emotion.state, Anxious);
        // The same two searches do not make a calm customer anxious.
        let mut fresh = Profile::new("c9");
        feed(&mut fresh, help(T0 + HOUR_MS), &cfg);
        feed(&mut fresh, help(T0 + 2 * HOUR_MS), &cfg);
        assert_eq!(update(&mut fresh, t, &cfg), None);
        assert_eq!(fresh.emotion.state, Neutral);
        // Once only one search is left (0 < leave), the state goes.
        let t = T0 + 49 * HOUR_MS + 30 * MIN_MS;
        assert_eq!(
            feed(&mut p, calm(t), &cfg),
            Some(Transition {
                from: Anxious,
                to: Neutral
            })
        );
        assert_eq!(p.emotion.since_ms, t);
        assert!(current(&p, &cfg).reasons.is_empty());
    }

    #[test]
    fn the_minimum_dwell_prevents_an_immediate_exit() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        for i in 0..3 {
            feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
        }
        assert_eq!(p.emotion.state, Uncertain);
        // Buying the tv removes the hesitation signal at once ...
        let buy = tp(
            "b",
            "c1",
            Channel::Web,
            EventType::Purchase,
            T0 + 10 * MIN_MS,
        )
        .with_sku("tv")
        .with_amount(500.0);
        assert_eq!(feed(&mut p, buy, &cfg), None);
        assert_eq!(score(&p, Uncertain, &cfg), 0.0);
        assert_eq!(p.emotion.state, Uncertain, "kept for the 2h dwell");
        // ... and the state goes with the first event after the dwell.
        assert_eq!(feed(&mut p, calm(T0 + 2 * HOUR_MS - 1), &cfg), None);
        assert_eq!(
            feed(&mut p, calm(T0 + 2 * HOUR_MS + 2 * MIN_MS), &cfg),
            Some(Transition {
                from: Uncertain,
                to: Neutral
            })
        );
    }

    #[test]
    fn hesitation_is_about_one_product_not_bought_since() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        for i in 0..3 {
            feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
        }
        assert_eq!(p.emotion.state, Uncertain);
        // Buying something else does not end hesitation over the tv.
        let cable = tp(
            "b",
            "c1",
            Channel::Web,
            EventType::Purchase,
            T0 + 5 * MIN_MS,
        )
        .with_sku("cable");
        feed(&mut p, cable, &cfg);
        assert_eq!(p.emotion.observed(Signal::RepeatViews), 3.0);
        assert_eq!(score(&p, Uncertain, &cfg), 1.0);
        // A product bought within the window is no hesitation: none of its
        // views count, before or after the purchase.
        let mut q = Profile::new("c2");
        feed(&mut q, view(T0, "tv"), &cfg);
        feed(&mut q, view(T0 + MIN_MS, "tv"), &cfg);
        let buy = tp(
            "b",
            "c2",
            Channel::Web,
            EventType::Purchase,
            T0 + 2 * MIN_MS,
        )
        .with_sku("tv");
        feed(&mut q, buy, &cfg);
        feed(&mut q, view(T0 + 3 * MIN_MS, "tv"), &cfg);
        assert_eq!(q.emotion.observed(Signal::RepeatViews), 0.0);
        assert_eq!(q.emotion.state, Neutral);
        // Three products viewed once each are a comparison, worth 0.5 alone.
        let mut r = Profile::new("c3");
        for (i, sku) in ["a", "b", "c"].into_iter().enumerate() {
            feed(&mut r, view(T0 + i as i64 * MIN_MS, sku), &cfg);
        }
        assert_eq!(r.emotion.observed(Signal::ComparedProducts), 3.0);
        assert_eq!(score(&r, Uncertain, &cfg), 0.5);
        assert_eq!(r.emotion.state, Neutral);
        // Two views, a review read and a cart without purchase: uncertain.
        let mut s = Profile::new("c4");
        feed(&mut s, view(T0, "tv"), &cfg);
        feed(&mut s, view(T0 + MIN_MS, "tv"), &cfg);
        let reviews = tp(
            "r",
            "c4",
            Channel::Web,
            EventType::PageView,
            T0 + 2 * MIN_MS,
        )
        .with_url("https://shop.example/tv/Reviews");
        feed(&mut s, reviews, &cfg);
        assert_eq!(s.emotion.observed(Signal::ReviewsRead), 1.0);
        assert_eq!(s.emotion.state, Neutral, "0.5 + 0.25 < 1.0");
        let cart = tp(
            "c",
            "c4",
            Channel::Web,
            EventType::AddToCart,
            T0 + 3 * MIN_MS,
        )
        .with_sku("tv");
        assert_eq!(feed(&mut s, cart, &cfg).map(|t| t.to), Some(Uncertain));
    }

    #[test]
    fn detractor_answers_and_sentiment_enter_invested_detractor() {
        let cfg = EmotionConfig::default();
        for (kind, score_, expected) in [
            (SurveyKind::Nps, 6, InvestedDetractor),
            (SurveyKind::Nps, 7, Neutral),
            (SurveyKind::Csat, 2, InvestedDetractor),
            (SurveyKind::Csat, 3, Neutral),
            (SurveyKind::Ces, 1, InvestedDetractor),
        ] {
            let mut p = Profile::new("c1");
            feed(&mut p, survey(T0, kind, score_), &cfg);
            assert_eq!(p.emotion.state, expected, "{kind:?} {score_}");
        }
        // NPS 0 is the strongest detractor signal, 6 the weakest.
        let mut p = Profile::new("c1");
        feed(&mut p, survey(T0, SurveyKind::Nps, 0), &cfg);
        assert_eq!(signal_value(&p, Signal::NpsDetractor, &cfg), 1.0);
        // One angry chat message moves the trend to -0.3: not yet; two do.
        let chat =
            |at| tp("m", "c2", Channel::Chat, EventType::ChatMessage, at).with_sentiment(-1.0);
        let mut q = Profile::new("c2");
        feed(&mut q, chat(T0), &cfg);
        assert_eq!(q.emotion.state, Neutral);
        feed(&mut q, chat(T0 + MIN_MS), &cfg);
        assert_eq!(q.emotion.state, InvestedDetractor);
        let a = current(&q, &cfg);
        assert_eq!(a.signals[0].signal, Signal::NegativeSentiment);
        assert_eq!(a.reasons[0].value, "-0.51");
    }

    #[test]
    fn a_detractor_answer_fades_after_the_feedback_window() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        feed(&mut p, survey(T0, SurveyKind::Nps, 3), &cfg);
        assert_eq!(p.emotion.state, InvestedDetractor);
        // Four weeks later the answer still counts.
        assert_eq!(feed(&mut p, calm(T0 + 29 * 24 * HOUR_MS), &cfg), None);
        assert_eq!(p.emotion.state, InvestedDetractor);
        let t = T0 + 31 * 24 * HOUR_MS;
        assert_eq!(
            feed(&mut p, calm(t), &cfg).map(|t| t.to),
            Some(Neutral),
            "a month-old answer no longer counts"
        );
        assert_eq!(p.emotion.observed(Signal::NpsDetractor), -1.0);
    }

    #[test]
    fn promoters_are_fans_and_big_spenders_feel_special() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        let big = tp("b", "c1", Channel::Store, EventType::Purchase, T0).with_amount(1_500.0);
        assert_eq!(
            feed(&mut p, big, &cfg).map(|t| t.to),
            Some(WantsToFeelSpecial)
        );
        assert_eq!(
            current(&p, &cfg).reasons,
            vec![
                Reason::new(
                    "lifetime value (lifetime_value, weight 1, contributes 1.00)",
                    "1500.00"
                ),
                Reason::new(
                    "purchases within 90d (order_frequency, weight 1, contributes 0.17)",
                    "1"
                )
            ]
        );
        // A promoter answer: fans rank above special customers, so it takes over
        // within the special state's dwell.
        assert_eq!(
            feed(&mut p, survey(T0 + MIN_MS, SurveyKind::Nps, 10), &cfg),
            Some(Transition {
                from: WantsToFeelSpecial,
                to: InvestedFan
            })
        );
        // Six orders within 90 days make a regular feel special too.
        let mut q = Profile::new("c2");
        for i in 0..6 {
            let o = tp(
                "o",
                "c2",
                Channel::Web,
                EventType::Purchase,
                T0 + i * 24 * HOUR_MS,
            )
            .with_amount(20.0);
            feed(&mut q, o, &cfg);
        }
        assert_eq!(q.emotion.state, WantsToFeelSpecial);
        assert_eq!(q.emotion.observed(Signal::OrderFrequency), 6.0);
    }

    #[test]
    fn frequent_engagement_with_good_feedback_makes_a_fan() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        // A visit a day for eight days: engagement 1.0 x 0.5.
        for d in 0..8 {
            feed(&mut p, calm(T0 + d * 24 * HOUR_MS), &cfg);
        }
        assert_eq!(p.emotion.observed(Signal::Engagement), 8.0);
        assert_eq!(p.emotion.state, Neutral, "0.5 < 1.0");
        // A CSAT 5 on top (0.5): a fan.
        let t = T0 + 8 * 24 * HOUR_MS;
        assert_eq!(
            feed(&mut p, survey(t, SurveyKind::Csat, 5), &cfg).map(|t| t.to),
            Some(InvestedFan)
        );
    }

    #[test]
    fn a_higher_priority_state_takes_over_during_the_dwell() {
        let cfg = EmotionConfig::default();
        let mut p = Profile::new("c1");
        for i in 0..3 {
            feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
        }
        assert_eq!(p.emotion.state, Uncertain);
        assert_eq!(
            feed(&mut p, survey(T0 + 5 * MIN_MS, SurveyKind::Nps, 2), &cfg),
            Some(Transition {
                from: Uncertain,
                to: InvestedDetractor
            })
        );
        // A lower one does not: three help searches leave the detractor as is.
        for i in 0..3 {
            feed(&mut p, help(T0 + (10 + i) * MIN_MS), &cfg);
        }
        assert!(score(&p, Anxious, &cfg) >= 1.0);
        assert_eq!(p.emotion.state, InvestedDetractor);
    }

    #[test]
    fn late_events_do_not_turn_the_clock_back() {
        let cfg = EmotionConfig::default();
        let mut p = anxious(&cfg);
        let late = help(T0 - 10 * HOUR_MS);
        assert_eq!(feed(&mut p, late, &cfg), None);
        assert_eq!(p.emotion.evaluated_ms, T0 + 2 * HOUR_MS);
        assert_eq!(p.emotion.state, Anxious);
    }

    #[test]
    fn the_state_survives_encoding() {
        let cfg = EmotionConfig::default();
        let p = anxious(&cfg);
        let back = Profile::decode(&p.encode()).unwrap();
        assert_eq!(back.emotion, p.emotion);
        assert_eq!(current(&back, &cfg), current(&p, &cfg));
    }

    #[test]
    fn the_default_configuration_is_valid_and_round_trips() {
        let d = EmotionConfig::default();
        assert_eq!(d.validate(), Ok(()));
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""min_dwell":"6h""#), "{json}");
        let back: EmotionConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        let empty: EmotionConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, d);
        // A section given in part keeps the other defaults of that state.
        let c: EmotionConfig =
            serde_json::from_str(r#"{"anxious": {"enter": 2.0, "min_dwell": "1d"}}"#).unwrap();
        let r = c.rule(Anxious).unwrap();
        assert_eq!((r.enter, r.leave, r.min_dwell_ms), (2.0, 0.5, 24 * HOUR_MS));
        assert_eq!(r.weights, d.rule(Anxious).unwrap().weights);
        // Weights given replace that state's weights.
        let c: EmotionConfig =
            serde_json::from_str(r#"{"anxious": {"weights": {"help_searches": 0.34}}}"#).unwrap();
        assert_eq!(
            c.rule(Anxious).unwrap().weights,
            vec![(Signal::HelpSearches, 0.34)]
        );
    }

    #[test]
    fn a_bad_configuration_is_refused_with_the_key_to_fix() {
        let mut c = EmotionConfig::default();
        c.rule_mut(Anxious).unwrap().leave = 1.5;
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                EmotionConfigError::BadLeave {
                    state: "anxious",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("emotion.anxious.leave = 1.5"),
            "{e}"
        );

        let mut c = EmotionConfig::default();
        c.rule_mut(Uncertain).unwrap().weights[0].1 = -1.0;
        assert_eq!(
            c.validate(),
            Err(EmotionConfigError::BadWeight {
                state: "uncertain",
                signal: "repeat_views",
                weight: -1.0
            })
        );

        let mut c = EmotionConfig::default();
        c.rule_mut(InvestedFan).unwrap().enter = 0.0;
        assert!(matches!(
            c.validate(),
            Err(EmotionConfigError::BadEnter { .. })
        ));

        let c = EmotionConfig {
            contact_window_ms: 100 * 24 * HOUR_MS,
            ..EmotionConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(EmotionConfigError::BadWindow {
                key: "contact_window",
                ..
            })
        ));

        let mut c = EmotionConfig::default();
        c.rules.swap(0, 1);
        assert!(matches!(
            c.validate(),
            Err(EmotionConfigError::RuleOrder { .. })
        ));

        // What configuration files get wrong is refused when they are read.
        let parse = |s: &str| {
            serde_json::from_str::<EmotionConfig>(s)
                .unwrap_err()
                .to_string()
        };
        let e = parse(r#"{"anxious": {"weights": {"help_serches": 0.5}}}"#);
        assert!(
            e.contains("emotion.anxious.weights: unknown signal `help_serches`")
                && e.contains("help_searches"),
            "{e}"
        );
        let e = parse(r#"{"uncertain": {"enter": 0.4}}"#);
        assert!(e.contains("emotion.uncertain.leave = 0.5"), "{e}");
        let e = parse(r#"{"anxious": {"min_dwell": "6 hours"}}"#);
        assert!(e.contains("emotion.anxious.min_dwell"), "{e}");
        let e = parse(r#"{"anxious": {"enter": 1.0, "exit": 0.5}}"#);
        assert!(e.contains("exit"), "{e}");
        let e = parse(r#"{"detractor_nps_max": 6}"#);
        assert!(e.contains("detractor_nps_max"), "{e}");
    }
}
