//! Recognising a customer's emotional state from profile signals.
//!
//! The rules are transparent on purpose: every state comes with the signals and
//! values that produced it, and those reasons travel with any action it shapes.
//! Thresholds are configuration, not code.

use serde::{Deserialize, Serialize};

use crate::action::{EmotionalState, Reason};
use crate::profile::Profile;

const HOUR_MS: i64 = 3_600_000;

/// Thresholds for each emotional state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmotionConfig {
    /// NPS at or below this marks a detractor (0-6 by the NPS definition).
    pub detractor_nps_max: i32,
    /// CSAT at or below this marks a detractor.
    pub detractor_csat_max: i32,
    /// Chat sentiment at or below this marks an upset customer.
    pub upset_sentiment_max: f64,
    /// Contacts (help searches, calls, chat hand-offs) within `contact_window_hours` that mark anxiety.
    pub anxious_contacts_min: usize,
    /// Window for counting contacts.
    pub contact_window_hours: u32,
    /// A call wait at or above this (seconds) marks anxiety.
    pub anxious_wait_seconds: i32,
    /// Views of one product within `uncertain_window_hours`, without purchase, that mark hesitation.
    pub uncertain_views_min: usize,
    /// Window for counting product views.
    pub uncertain_window_hours: u32,
    /// NPS at or above this marks a fan (9-10 by the NPS definition).
    pub fan_nps_min: i32,
    /// Lifetime value at or above this marks a high-value customer.
    pub special_lifetime_value_min: f64,
    /// Orders at or above this mark a loyal customer.
    pub special_orders_min: u32,
}

impl Default for EmotionConfig {
    fn default() -> Self {
        EmotionConfig {
            detractor_nps_max: 6,
            detractor_csat_max: 2,
            upset_sentiment_max: -0.5,
            anxious_contacts_min: 3,
            contact_window_hours: 48,
            anxious_wait_seconds: 600,
            uncertain_views_min: 3,
            uncertain_window_hours: 72,
            fan_nps_min: 9,
            special_lifetime_value_min: 1_000.0,
            special_orders_min: 10,
        }
    }
}

/// The recognised state and the signals behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The state.
    pub state: EmotionalState,
    /// The signals that produced it.
    pub reasons: Vec<Reason>,
}

/// Recognises the customer's state at event time `now_ms`.
///
/// States are checked in order of how much they should change our response:
/// an upset detractor first, then anxiety (no marketing noise), hesitation,
/// fans, and high-value customers.
pub fn assess(p: &Profile, now_ms: i64, c: &EmotionConfig) -> Assessment {
    let mut reasons = Vec::new();
    if let Some(n) = p.nps.filter(|n| n.score <= c.detractor_nps_max) {
        reasons.push(Reason::new(
            format!("latest nps <= {}", c.detractor_nps_max),
            n.score,
        ));
    }
    if let Some(s) = p.csat.filter(|s| s.score <= c.detractor_csat_max) {
        reasons.push(Reason::new(
            format!("latest csat <= {}", c.detractor_csat_max),
            s.score,
        ));
    }
    if p.sentiment <= c.upset_sentiment_max {
        reasons.push(Reason::new(
            format!("chat sentiment <= {}", c.upset_sentiment_max),
            format!("{:.2}", p.sentiment),
        ));
    }
    if !reasons.is_empty() {
        return Assessment {
            state: EmotionalState::InvestedDetractor,
            reasons,
        };
    }

    let contacts = p.contacts_since(now_ms - i64::from(c.contact_window_hours) * HOUR_MS);
    if contacts >= c.anxious_contacts_min {
        reasons.push(Reason::new(
            format!(
                "contacts within {}h >= {}",
                c.contact_window_hours, c.anxious_contacts_min
            ),
            contacts,
        ));
    }
    if p.max_wait_seconds >= c.anxious_wait_seconds {
        reasons.push(Reason::new(
            format!("call wait seconds >= {}", c.anxious_wait_seconds),
            p.max_wait_seconds,
        ));
    }
    if !reasons.is_empty() {
        return Assessment {
            state: EmotionalState::Anxious,
            reasons,
        };
    }

    let since = now_ms - i64::from(c.uncertain_window_hours) * HOUR_MS;
    if let Some((sku, views)) = p
        .products
        .iter()
        .filter(|pi| pi.purchased_ms < since)
        .map(|pi| (&pi.sku, pi.views_since(since).count()))
        .filter(|&(_, v)| v >= c.uncertain_views_min)
        .max_by_key(|&(_, v)| v)
    {
        reasons.push(Reason::new(
            format!(
                "views of {sku} within {}h without purchase >= {}",
                c.uncertain_window_hours, c.uncertain_views_min
            ),
            views,
        ));
        return Assessment {
            state: EmotionalState::Uncertain,
            reasons,
        };
    }

    if let Some(n) = p.nps.filter(|n| n.score >= c.fan_nps_min) {
        reasons.push(Reason::new(
            format!("latest nps >= {}", c.fan_nps_min),
            n.score,
        ));
        return Assessment {
            state: EmotionalState::InvestedFan,
            reasons,
        };
    }
    if p.lifetime_value >= c.special_lifetime_value_min {
        reasons.push(Reason::new(
            format!("lifetime value >= {}", c.special_lifetime_value_min),
            format!("{:.2}", p.lifetime_value),
        ));
    }
    if p.orders >= c.special_orders_min {
        reasons.push(Reason::new(
            format!("orders >= {}", c.special_orders_min),
            p.orders,
        ));
    }
    if !reasons.is_empty() {
        return Assessment {
            state: EmotionalState::WantsToFeelSpecial,
            reasons,
        };
    }
    Assessment {
        state: EmotionalState::Neutral,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;
    use crate::touchpoint::{Channel, EventType, SurveyKind};

    const T0: i64 = 1_764_000_000_000;

    #[test]
    fn detractor_outranks_everything_and_says_why() {
        let mut p = Profile::new("c1");
        p.apply(&tp("e1", "c1", Channel::Store, EventType::Purchase, T0).with_amount(5_000.0));
        p.apply(
            &tp("e2", "c1", Channel::Email, EventType::SurveyResponse, T0)
                .with_survey(SurveyKind::Nps, 3),
        );
        let a = assess(&p, T0, &EmotionConfig::default());
        assert_eq!(a.state, EmotionalState::InvestedDetractor);
        assert_eq!(a.reasons, vec![Reason::new("latest nps <= 6", 3)]);
    }

    #[test]
    fn repeated_contacts_mean_anxious_but_only_within_the_window() {
        let mut p = Profile::new("c1");
        for i in 0..3 {
            p.apply(&tp(
                "e",
                "c1",
                Channel::Web,
                EventType::HelpSearch,
                T0 + i * HOUR_MS,
            ));
        }
        let c = EmotionConfig::default();
        assert_eq!(
            assess(&p, T0 + 3 * HOUR_MS, &c).state,
            EmotionalState::Anxious
        );
        assert_eq!(
            assess(&p, T0 + 100 * HOUR_MS, &c).state,
            EmotionalState::Neutral
        );
    }

    #[test]
    fn repeated_views_without_purchase_mean_uncertain() {
        let mut p = Profile::new("c1");
        for i in 0..3 {
            p.apply(
                &tp(
                    "e",
                    "c1",
                    Channel::Web,
                    EventType::ProductView,
                    T0 + i * HOUR_MS,
                )
                .with_sku("tv"),
            );
        }
        let c = EmotionConfig::default();
        assert_eq!(
            assess(&p, T0 + 3 * HOUR_MS, &c).state,
            EmotionalState::Uncertain
        );
        p.apply(
            &tp(
                "e",
                "c1",
                Channel::Web,
                EventType::Purchase,
                T0 + 4 * HOUR_MS,
            )
            .with_sku("tv"),
        );
        assert_eq!(
            assess(&p, T0 + 4 * HOUR_MS, &c).state,
            EmotionalState::Neutral
        );
    }

    #[test]
    fn promoters_are_fans_and_big_spenders_feel_special() {
        let c = EmotionConfig::default();
        let mut p = Profile::new("c1");
        p.apply(&tp("e", "c1", Channel::Store, EventType::Purchase, T0).with_amount(1_500.0));
        assert_eq!(assess(&p, T0, &c).state, EmotionalState::WantsToFeelSpecial);
        p.apply(
            &tp("e", "c1", Channel::Email, EventType::SurveyResponse, T0)
                .with_survey(SurveyKind::Nps, 10),
        );
        assert_eq!(assess(&p, T0, &c).state, EmotionalState::InvestedFan);
    }
}
