//! Journeys: which actions a touchpoint triggers, given the updated profile.
//!
//! Evaluation is plain, deterministic Rust over event time: replaying the same
//! events gives the same actions with the same ids. Each journey records its
//! firings in the profile, so cooldowns hold across restarts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::action::{action_id, Action, ActionKind, DeliveryChannel, EmotionalState, Reason};
use crate::emotion::{assess, EmotionConfig};
use crate::profile::{Profile, Timer};
use crate::touchpoint::{Channel, EventType, SurveyKind, Touchpoint};

const HOUR_MS: i64 = 3_600_000;

/// "Hesitating customer": several views of the same product within days and no
/// purchase gets a buyer's-guide link (reassurance, not pressure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HesitationConfig {
    /// Whether the journey runs.
    pub enabled: bool,
    /// Views of one product, within the window, that count as hesitation.
    pub min_views: usize,
    /// Window for counting views, hours.
    pub window_hours: u32,
    /// After firing for a product, wait this long before firing for it again, hours.
    pub cooldown_hours: u32,
    /// Guide link; `{sku}` is replaced by the product id.
    pub guide_url: String,
}

impl Default for HesitationConfig {
    fn default() -> Self {
        HesitationConfig {
            enabled: true,
            min_views: 3,
            window_hours: 72,
            cooldown_hours: 168,
            guide_url: "https://shop.example/guides/{sku}".into(),
        }
    }
}

/// "Bad experience": a failed delivery or a detractor score gets an empathetic
/// recovery offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Whether the journey runs.
    pub enabled: bool,
    /// Fire on `delivery_failed`.
    pub on_delivery_failed: bool,
    /// Fire on an NPS answer at or below this (NPS detractors are 0-6).
    pub nps_max: i32,
    /// Fire on a CSAT answer at or below this (1-5 scale).
    pub csat_max: i32,
    /// Fire on a CES answer at or below this (1-7 scale, 7 = very easy).
    pub ces_max: i32,
    /// At most one recovery offer per customer within this many hours.
    pub cooldown_hours: u32,
    /// The offer code put in the payload.
    pub offer_code: String,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            enabled: true,
            on_delivery_failed: true,
            nps_max: 6,
            csat_max: 2,
            ces_max: 2,
            cooldown_hours: 24,
            offer_code: "RECOVERY-10".into(),
        }
    }
}

/// "Measure at the right moment": some time after a delivery, ask for a CSAT
/// survey, unless the customer meanwhile reported a problem (the exit condition,
/// which cancels the wait at once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurveyConfig {
    /// Whether the journey runs.
    pub enabled: bool,
    /// How long after the delivery to ask, seconds.
    pub wait_seconds: u64,
    /// Which survey to ask for.
    pub kind: SurveyKind,
}

impl Default for SurveyConfig {
    fn default() -> Self {
        SurveyConfig {
            enabled: true,
            wait_seconds: 2 * 3600,
            kind: SurveyKind::Csat,
        }
    }
}

/// All journeys and the emotional-state thresholds they use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Journeys {
    /// Buyer's guide for hesitating customers.
    pub hesitation: HesitationConfig,
    /// Recovery offer after a bad experience.
    pub recovery: RecoveryConfig,
    /// Survey request after delivery.
    pub survey: SurveyConfig,
    /// Emotional-state thresholds.
    pub emotion: EmotionConfig,
}

/// Name of the hesitation journey in actions and metrics.
pub const HESITATION: &str = "hesitation_guide";
/// Name of the recovery journey in actions and metrics.
pub const RECOVERY: &str = "recovery_offer";
/// Name of the post-delivery survey journey in actions and metrics.
pub const SURVEY: &str = "post_delivery_survey";

impl Journeys {
    /// Evaluates every journey for touchpoint `t`, already applied to `p`, and
    /// pushes the actions that fire to `out`. Firings are recorded in `p`.
    pub fn evaluate(&self, p: &mut Profile, t: &Touchpoint, out: &mut Vec<Action>) {
        if self.hesitation.enabled && t.event_type == EventType::ProductView {
            self.hesitation(p, t, out);
        }
        if self.recovery.enabled {
            self.recovery(p, t, out);
        }
        if self.survey.enabled {
            self.survey(p, t);
        }
    }

    /// Fires the timers of `p` that are due at event time `now_ms`, pushing their
    /// actions to `out`. Returns whether any timer was due.
    pub fn fire_due(&self, p: &mut Profile, now_ms: i64, out: &mut Vec<Action>) -> bool {
        if p.next_timer_ms().is_none_or(|t| t > now_ms) {
            return false;
        }
        for timer in p.take_due(now_ms) {
            if timer.journey == SURVEY && self.survey.enabled {
                let kind = self.survey.kind;
                let reasons = vec![Reason::new(
                    format!(
                        "{}s since delivery without a reported problem",
                        self.survey.wait_seconds
                    ),
                    timer.key.clone(),
                )];
                let mut payload = BTreeMap::new();
                payload.insert("survey".into(), kind.as_str().to_owned());
                payload.insert("order_id".into(), timer.key.clone());
                let feeling = assess(p, timer.fire_at_ms, &self.emotion);
                out.push(Action {
                    action_id: action_id(SURVEY, &p.id, &timer.trigger_event_id, "timer"),
                    customer_id: p.id.clone(),
                    kind: ActionKind::SurveyRequest,
                    journey: SURVEY.to_owned(),
                    trigger_event_id: timer.trigger_event_id,
                    trigger_event_time: timer.fire_at_ms,
                    channel: DeliveryChannel::Email,
                    payload,
                    reasons,
                    emotional_state: Some(feeling.state),
                });
                p.mark_journey(SURVEY, &timer.key, timer.fire_at_ms);
            }
        }
        true
    }

    fn survey(&self, p: &mut Profile, t: &Touchpoint) {
        match t.event_type {
            EventType::Delivered => {
                let key = t
                    .commerce
                    .as_ref()
                    .and_then(|c| c.order_id.clone())
                    .unwrap_or_else(|| t.event_id.clone());
                p.schedule(Timer {
                    journey: SURVEY.to_owned(),
                    key,
                    fire_at_ms: t
                        .event_time
                        .saturating_add(self.survey.wait_seconds.saturating_mul(1000) as i64),
                    trigger_event_id: t.event_id.clone(),
                });
            }
            // Exit conditions: a problem reported before the survey is due.
            EventType::DeliveryFailed
            | EventType::RefundRequested
            | EventType::TicketOpened
            | EventType::Return => {
                p.cancel(SURVEY);
            }
            _ => {}
        }
    }

    fn hesitation(&self, p: &mut Profile, t: &Touchpoint, out: &mut Vec<Action>) {
        let c = &self.hesitation;
        let Some(sku) = t.sku() else { return };
        let since = t.event_time - i64::from(c.window_hours) * HOUR_MS;
        let Some(interest) = p.product_interest(sku) else {
            return;
        };
        let views = interest
            .views_since(since)
            .filter(|&v| v <= t.event_time)
            .count();
        if views < c.min_views || p.last_purchase_ms >= since {
            return;
        }
        if let Some(m) = p.journey_mark(HESITATION, sku) {
            if t.event_time < m.fired_ms + i64::from(c.cooldown_hours) * HOUR_MS {
                return;
            }
        }
        let mut reasons = vec![
            Reason::new(
                format!(
                    "views of {sku} within {}h >= {}",
                    c.window_hours, c.min_views
                ),
                views,
            ),
            Reason::new(
                format!("no purchase within {}h", c.window_hours),
                if p.last_purchase_ms == 0 {
                    "never".to_string()
                } else {
                    p.last_purchase_ms.to_string()
                },
            ),
        ];
        let feeling = assess(p, t.event_time, &self.emotion);
        // Hesitation already is the reason; other states add what they saw.
        if feeling.state != EmotionalState::Uncertain {
            reasons.extend(feeling.reasons);
        }
        let mut payload = BTreeMap::new();
        payload.insert("sku".into(), sku.to_owned());
        payload.insert("guide_url".into(), c.guide_url.replace("{sku}", sku));
        p.mark_journey(HESITATION, sku, t.event_time);
        out.push(action(
            p,
            t,
            HESITATION,
            ActionKind::GuideLink,
            sku,
            reply_channel(t.channel),
            payload,
            reasons,
            feeling.state,
        ));
    }

    fn recovery(&self, p: &mut Profile, t: &Touchpoint, out: &mut Vec<Action>) {
        let c = &self.recovery;
        let trigger = match (t.event_type, &t.survey) {
            (EventType::DeliveryFailed, _) if c.on_delivery_failed => {
                let order = t
                    .commerce
                    .as_ref()
                    .and_then(|c| c.order_id.as_deref())
                    .unwrap_or("unknown");
                Reason::new("delivery failed for order", order)
            }
            (EventType::SurveyResponse, Some(s)) => {
                let max = match s.kind {
                    SurveyKind::Nps => c.nps_max,
                    SurveyKind::Csat => c.csat_max,
                    SurveyKind::Ces => c.ces_max,
                };
                if s.score > max {
                    return;
                }
                Reason::new(format!("{} score <= {max}", s.kind.as_str()), s.score)
            }
            _ => return,
        };
        if let Some(m) = p.journey_mark(RECOVERY, "") {
            if t.event_time < m.fired_ms + i64::from(c.cooldown_hours) * HOUR_MS
                && t.event_time >= m.fired_ms
            {
                return;
            }
        }
        let feeling = assess(p, t.event_time, &self.emotion);
        let mut reasons = vec![trigger];
        reasons.extend(feeling.reasons);
        let mut payload = BTreeMap::new();
        payload.insert("offer_code".into(), c.offer_code.clone());
        payload.insert("tone".into(), "personal_outreach".into());
        if let Some(order) = t.commerce.as_ref().and_then(|c| c.order_id.clone()) {
            payload.insert("order_id".into(), order);
        }
        // Upset customers hear from a person on the channel they used, not a bulk email.
        let channel = match t.channel {
            Channel::CallCenter => DeliveryChannel::CallCenter,
            Channel::Chat => DeliveryChannel::Chat,
            Channel::App => DeliveryChannel::App,
            _ => DeliveryChannel::Email,
        };
        p.mark_journey(RECOVERY, "", t.event_time);
        out.push(action(
            p,
            t,
            RECOVERY,
            ActionKind::RecoveryOffer,
            "",
            channel,
            payload,
            reasons,
            feeling.state,
        ));
    }
}

/// The channel to answer on, given the channel the customer used.
fn reply_channel(c: Channel) -> DeliveryChannel {
    match c {
        Channel::Web => DeliveryChannel::Web,
        Channel::App => DeliveryChannel::App,
        Channel::Chat => DeliveryChannel::Chat,
        Channel::Store => DeliveryChannel::Store,
        Channel::CallCenter => DeliveryChannel::CallCenter,
        Channel::Email | Channel::System => DeliveryChannel::Email,
    }
}

#[allow(clippy::too_many_arguments)]
fn action(
    p: &Profile,
    t: &Touchpoint,
    journey: &str,
    kind: ActionKind,
    discriminator: &str,
    channel: DeliveryChannel,
    payload: BTreeMap<String, String>,
    reasons: Vec<Reason>,
    state: EmotionalState,
) -> Action {
    Action {
        action_id: action_id(journey, &p.id, &t.event_id, discriminator),
        customer_id: p.id.clone(),
        kind,
        journey: journey.to_owned(),
        trigger_event_id: t.event_id.clone(),
        trigger_event_time: t.event_time,
        channel,
        payload,
        reasons,
        emotional_state: Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tp;

    const T0: i64 = 1_764_000_000_000;

    fn run(j: &Journeys, p: &mut Profile, t: Touchpoint) -> Vec<Action> {
        p.apply(&t);
        let mut out = Vec::new();
        j.evaluate(p, &t, &mut out);
        out
    }

    #[test]
    fn third_view_within_window_fires_a_guide_once() {
        let j = Journeys::default();
        let mut p = Profile::new("c1");
        let mut fired = Vec::new();
        for i in 0..5 {
            fired.extend(run(
                &j,
                &mut p,
                tp(
                    &format!("v{i}"),
                    "c1",
                    Channel::Web,
                    EventType::ProductView,
                    T0 + i * HOUR_MS,
                )
                .with_sku("tv"),
            ));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        let a = &fired[0];
        assert_eq!(a.kind, ActionKind::GuideLink);
        assert_eq!(a.trigger_event_id, "v2");
        assert_eq!(a.payload["guide_url"], "https://shop.example/guides/tv");
        assert_eq!(a.reasons[0], Reason::new("views of tv within 72h >= 3", 3));
        assert_eq!(a.emotional_state, Some(EmotionalState::Uncertain));
        assert_eq!(a.action_id, action_id(HESITATION, "c1", "v2", "tv"));
    }

    #[test]
    fn views_spread_beyond_the_window_or_followed_by_purchase_do_not_fire() {
        let j = Journeys::default();
        let mut p = Profile::new("c1");
        let mut fired = Vec::new();
        for i in 0..4 {
            fired.extend(run(
                &j,
                &mut p,
                tp(
                    "v",
                    "c1",
                    Channel::Web,
                    EventType::ProductView,
                    T0 + i * 48 * HOUR_MS,
                )
                .with_sku("tv"),
            ));
        }
        assert!(fired.is_empty(), "{fired:?}");

        let mut p = Profile::new("c2");
        fired.extend(run(
            &j,
            &mut p,
            tp("v1", "c2", Channel::Web, EventType::ProductView, T0).with_sku("tv"),
        ));
        fired.extend(run(
            &j,
            &mut p,
            tp("b", "c2", Channel::Store, EventType::Purchase, T0 + 1).with_sku("tv"),
        ));
        fired.extend(run(
            &j,
            &mut p,
            tp("v2", "c2", Channel::Web, EventType::ProductView, T0 + 2).with_sku("tv"),
        ));
        fired.extend(run(
            &j,
            &mut p,
            tp("v3", "c2", Channel::Web, EventType::ProductView, T0 + 3).with_sku("tv"),
        ));
        assert!(fired.is_empty(), "{fired:?}");
    }

    #[test]
    fn failed_delivery_and_detractor_get_one_recovery_offer_per_cooldown() {
        let j = Journeys::default();
        let mut p = Profile::new("c1");
        let a = run(
            &j,
            &mut p,
            tp("d1", "c1", Channel::System, EventType::DeliveryFailed, T0).with_order("o-9"),
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].kind, ActionKind::RecoveryOffer);
        assert_eq!(
            a[0].reasons[0],
            Reason::new("delivery failed for order", "o-9")
        );
        assert_eq!(a[0].payload["order_id"], "o-9");
        // A detractor answer an hour later is inside the cooldown.
        let b = run(
            &j,
            &mut p,
            tp(
                "s1",
                "c1",
                Channel::Email,
                EventType::SurveyResponse,
                T0 + HOUR_MS,
            )
            .with_survey(SurveyKind::Nps, 2),
        );
        assert!(b.is_empty());
        // Two days later it fires again, and says the customer is a detractor.
        let c = run(
            &j,
            &mut p,
            tp(
                "s2",
                "c1",
                Channel::Email,
                EventType::SurveyResponse,
                T0 + 48 * HOUR_MS,
            )
            .with_survey(SurveyKind::Nps, 2),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].emotional_state,
            Some(EmotionalState::InvestedDetractor)
        );
        assert_eq!(c[0].reasons[0], Reason::new("nps score <= 6", 2));
    }

    #[test]
    fn passives_promoters_and_good_csat_get_nothing() {
        let j = Journeys::default();
        let mut p = Profile::new("c1");
        for (i, (kind, score)) in [
            (SurveyKind::Nps, 7),
            (SurveyKind::Nps, 10),
            (SurveyKind::Csat, 4),
            (SurveyKind::Ces, 6),
        ]
        .into_iter()
        .enumerate()
        {
            let a = run(
                &j,
                &mut p,
                tp(
                    &format!("s{i}"),
                    "c1",
                    Channel::Email,
                    EventType::SurveyResponse,
                    T0,
                )
                .with_survey(kind, score),
            );
            assert!(a.is_empty(), "{kind:?} {score}: {a:?}");
        }
    }

    #[test]
    fn survey_waits_after_delivery_and_an_exit_event_cancels_it() {
        let j = Journeys::default();
        let wait = j.survey.wait_seconds as i64 * 1000;
        let mut out = Vec::new();
        // Delivered, nothing else: due after the wait, not before.
        let mut p = Profile::new("c1");
        assert!(run(
            &j,
            &mut p,
            tp("d1", "c1", Channel::System, EventType::Delivered, T0).with_order("o-1")
        )
        .is_empty());
        assert!(!j.fire_due(&mut p, T0 + wait - 1, &mut out));
        assert!(j.fire_due(&mut p, T0 + wait, &mut out));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, ActionKind::SurveyRequest);
        assert_eq!(out[0].trigger_event_time, T0 + wait);
        assert_eq!(out[0].action_id, action_id(SURVEY, "c1", "d1", "timer"));
        assert!(p.timers.is_empty());
        assert!(!j.fire_due(&mut p, T0 + 2 * wait, &mut out), "fires once");

        // A ticket opened during the wait exits the journey at once.
        let mut p = Profile::new("c2");
        run(
            &j,
            &mut p,
            tp("d2", "c2", Channel::System, EventType::Delivered, T0).with_order("o-2"),
        );
        run(
            &j,
            &mut p,
            tp(
                "x2",
                "c2",
                Channel::CallCenter,
                EventType::TicketOpened,
                T0 + HOUR_MS,
            ),
        );
        assert!(p.timers.is_empty());
        out.clear();
        assert!(!j.fire_due(&mut p, T0 + 10 * wait, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn disabled_journeys_do_not_fire() {
        let mut j = Journeys::default();
        j.recovery.enabled = false;
        let mut p = Profile::new("c1");
        assert!(run(
            &j,
            &mut p,
            tp("d1", "c1", Channel::System, EventType::DeliveryFailed, T0)
        )
        .is_empty());
    }
}
