//! The signals of how a customer feels: what each observes and how it becomes a value.

use super::{EmotionConfig, DAY_MS};
use crate::duration::format_duration;
use crate::touchpoint::EventType;

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
pub(super) fn span(ms: i64) -> String {
    if ms > 3 * DAY_MS && ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else {
        format_duration(ms)
    }
}

/// 0 at or below `zero`, 1 at or above `full`, linear between.
pub(super) fn ramp(x: f64, zero: f64, full: f64) -> f64 {
    if full <= zero {
        return if x >= full { 1.0 } else { 0.0 };
    }
    ((x - zero) / (full - zero)).clamp(0.0, 1.0)
}
