//! The profile as the profile API shows it to service agents and other services:
//! channels by name, times as RFC 3339, the emotional state with the signals that
//! produced it, journeys and waits in progress. A documented, stable view, not
//! the storage struct (which is free to change between releases).

use std::collections::BTreeMap;

use rapport_model::emotion::{self, EmotionConfig};
use rapport_model::{Channel, Profile, SurveyKind};
use serde::Serialize;

/// `GET /v1/profiles/{id}`.
#[derive(Debug, Serialize, PartialEq)]
pub struct ProfileView {
    /// Customer id (or the anonymous id, before identification).
    pub customer_id: String,
    /// Anonymous ids linked to the customer.
    pub anonymous_ids: Vec<String>,
    /// First and latest touchpoint, RFC 3339.
    pub first_seen: String,
    /// Latest touchpoint, RFC 3339.
    pub last_seen: String,
    /// Touchpoints applied.
    pub events: u64,
    /// Activity on each channel the customer used, by channel name.
    pub channels: BTreeMap<&'static str, ChannelView>,
    /// Purchases, returns and their net value.
    pub orders: u32,
    /// Returns.
    pub returns: u32,
    /// Sum of purchases minus returns.
    pub lifetime_value: f64,
    /// Latest purchase, RFC 3339.
    pub last_purchase: Option<String>,
    /// Latest answer to each survey the customer answered (`nps`, `csat`, `ces`).
    pub surveys: BTreeMap<&'static str, ScoreView>,
    /// Failed deliveries, refund requests and tickets not yet resolved.
    pub open_issues: u32,
    /// Chat sentiment trend, -1 (negative) to 1.
    pub sentiment: f64,
    /// How the customer feels, as of their latest touchpoint, and why.
    pub emotional_state: EmotionView,
    /// The latest touchpoints, oldest first: what no agent should ask again.
    pub recent: Vec<TouchView>,
    /// Journeys the customer is inside, with the step they wait at.
    pub journeys: Vec<JourneyView>,
    /// Pending waits, earliest first.
    pub waits: Vec<WaitView>,
    /// Identity stitching: the anonymous ids the customer's touchpoints named
    /// and what became of each, merges awaited (absent when there are none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityView>,
}

/// What identity stitching recorded on a customer's profile.
#[derive(Debug, Serialize, PartialEq)]
pub struct IdentityView {
    /// Each anonymous id named, when, and what became of it (`merged`,
    /// `requested`, `conflict`, `known_customer`, `limit_exceeded`).
    pub links: Vec<LinkView>,
    /// Merges requested and not received yet.
    pub merges_awaited: usize,
    /// Touchpoints held until they arrive.
    pub held: usize,
}

/// One anonymous id a customer's touchpoint named.
#[derive(Debug, Serialize, PartialEq)]
pub struct LinkView {
    /// The anonymous id.
    pub anonymous_id: String,
    /// What became of it.
    pub state: crate::identity::LinkState,
    /// When a touchpoint first named it, RFC 3339.
    pub at: String,
}

impl IdentityView {
    /// The view of a profile's identity state.
    pub fn of(s: &crate::identity::IdentityState) -> IdentityView {
        IdentityView {
            links: s
                .links
                .iter()
                .map(|l| LinkView {
                    anonymous_id: l.anonymous_id.clone(),
                    state: l.state,
                    at: rfc3339(l.at_ms),
                })
                .collect(),
            merges_awaited: s.awaiting.len(),
            held: s.held.len(),
        }
    }
}

/// Activity on one channel.
#[derive(Debug, Serialize, PartialEq)]
pub struct ChannelView {
    /// Touchpoints.
    pub count: u64,
    /// Latest, RFC 3339.
    pub last: String,
}

/// One survey answer.
#[derive(Debug, Serialize, PartialEq)]
pub struct ScoreView {
    /// The score on the survey's own scale.
    pub score: i32,
    /// What it says: NPS `promoter` / `passive` / `detractor`, CSAT `satisfied`
    /// / `neutral` / `dissatisfied`, CES `easy` / `neutral` / `hard`.
    pub classification: &'static str,
    /// When it was given, RFC 3339.
    pub at: String,
    /// Change since the answer before (absent before the second answer).
    pub trend: Option<i32>,
}

/// The emotional state, since when, and the signals behind it.
#[derive(Debug, Serialize, PartialEq)]
pub struct EmotionView {
    /// The state (`neutral`, `uncertain`, `anxious`, ...).
    pub state: &'static str,
    /// When the customer entered it, RFC 3339 (absent before their first evaluation).
    pub since: Option<String>,
    /// The state's score: the weighted sum of its signals (0 for `neutral`).
    pub score: f64,
    /// Each signal that contributes to the state's score.
    pub signals: Vec<SignalView>,
}

/// One signal and its part in the score.
#[derive(Debug, Serialize, PartialEq)]
pub struct SignalView {
    /// The signal (`help_searches`, `repeat_views`, `nps_detractor`, ...).
    pub signal: &'static str,
    /// What it measures, in words.
    pub description: String,
    /// What was observed (a count, a score, seconds, ...).
    pub observed: f64,
    /// The signal's value, 0 (absent) to 1 (fully present).
    pub value: f64,
    /// Its weight for this state, from `[emotion]`.
    pub weight: f64,
    /// value x weight.
    pub contribution: f64,
}

/// One recent touchpoint.
#[derive(Debug, Serialize, PartialEq)]
pub struct TouchView {
    /// Event id.
    pub event_id: String,
    /// Channel name.
    pub channel: &'static str,
    /// Event type.
    pub event_type: &'static str,
    /// When, RFC 3339.
    pub at: String,
}

/// A journey in progress.
#[derive(Debug, Serialize, PartialEq)]
pub struct JourneyView {
    /// Journey id.
    pub journey: String,
    /// Instance key (e.g. an order id), empty for one instance per customer.
    pub key: String,
    /// Since when, RFC 3339.
    pub since: String,
}

/// A pending wait.
#[derive(Debug, Serialize, PartialEq)]
pub struct WaitView {
    /// Journey id.
    pub journey: String,
    /// Instance key.
    pub key: String,
    /// When it falls due, RFC 3339 (event time).
    pub due: String,
}

/// Epoch milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn score(p: &Profile, kind: SurveyKind) -> Option<ScoreView> {
    let (latest, trend) = p.survey_trend(kind);
    latest.map(|s| ScoreView {
        score: s.score,
        classification: kind.classify(s.score),
        at: rfc3339(s.at_ms),
        trend,
    })
}

impl ProfileView {
    /// The view of `p`, its emotional state assessed with `emotion` as of its
    /// latest touchpoint.
    pub fn of(p: &Profile, emotion: &EmotionConfig) -> ProfileView {
        let surveys = SurveyKind::ALL
            .into_iter()
            .filter_map(|k| score(p, k).map(|v| (k.as_str(), v)))
            .collect();
        ProfileView {
            customer_id: p.id.clone(),
            anonymous_ids: p.anonymous_ids.clone(),
            first_seen: rfc3339(p.first_seen_ms),
            last_seen: rfc3339(p.last_seen_ms),
            events: p.events,
            channels: channels(p),
            orders: p.orders,
            returns: p.returns,
            lifetime_value: p.lifetime_value,
            last_purchase: (p.last_purchase_ms > 0).then(|| rfc3339(p.last_purchase_ms)),
            surveys,
            open_issues: p.open_issues,
            sentiment: p.sentiment,
            emotional_state: EmotionView::of(p, emotion),
            recent: p
                .recent
                .iter()
                .map(|r| TouchView {
                    event_id: r.event_id.to_string(),
                    channel: r.channel.as_str(),
                    event_type: r.event_type.as_str(),
                    at: rfc3339(r.at_ms),
                })
                .collect(),
            journeys: p
                .journey_runs
                .iter()
                .map(|r| JourneyView {
                    journey: r.journey.to_string(),
                    key: r.key.to_string(),
                    since: rfc3339(r.entered_ms),
                })
                .collect(),
            waits: waits(p),
            identity: None,
        }
    }
}

/// The channels the customer used, by name, with how often and when last.
fn channels(p: &Profile) -> BTreeMap<&'static str, ChannelView> {
    Channel::ALL
        .iter()
        .map(|c| (c.as_str(), &p.channels[c.index()]))
        .filter(|(_, a)| a.count > 0)
        .map(|(name, a)| {
            let view = ChannelView {
                count: a.count,
                last: rfc3339(a.last_ms),
            };
            (name, view)
        })
        .collect()
}

/// The journeys' waits, soonest due first.
fn waits(p: &Profile) -> Vec<WaitView> {
    let mut waits: Vec<WaitView> = p
        .timers
        .iter()
        .map(|t| WaitView {
            journey: t.journey.to_string(),
            key: t.key.to_string(),
            due: rfc3339(t.fire_at_ms),
        })
        .collect();
    waits.sort_by(|a, b| a.due.cmp(&b.due));
    waits
}

impl EmotionView {
    /// The customer's emotional state as of their latest touchpoint, with the
    /// signals behind it described by `emotion`.
    fn of(p: &Profile, emotion: &EmotionConfig) -> EmotionView {
        let feeling = emotion::current(p, emotion);
        EmotionView {
            state: feeling.state.as_str(),
            since: (feeling.since_ms > 0).then(|| rfc3339(feeling.since_ms)),
            score: feeling.score,
            signals: feeling
                .signals
                .iter()
                .map(|c| SignalView {
                    signal: c.signal.name(),
                    description: c.signal.describe(emotion),
                    observed: c.observed,
                    value: c.value,
                    weight: c.weight,
                    contribution: c.contribution,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{EventType, SurveyKind};

    #[test]
    fn the_view_names_channels_formats_times_and_explains_the_state() {
        let t0 = 1_764_000_000_000;
        let mut p = Profile::new("c-1");
        p.apply(&tp("e1", "c-1", Channel::Web, EventType::PageView, t0));
        p.apply(&tp(
            "e2",
            "c-1",
            Channel::CallCenter,
            EventType::CallStarted,
            t0 + 1_000,
        ));
        p.apply(
            &tp(
                "e3",
                "c-1",
                Channel::Email,
                EventType::SurveyResponse,
                t0 + 2_000,
            )
            .with_survey(SurveyKind::Nps, 2),
        );
        emotion::update(&mut p, t0 + 2_000, &EmotionConfig::default());
        let v = ProfileView::of(&p, &EmotionConfig::default());
        assert_eq!(v.first_seen, "2025-11-24T16:00:00.000Z");
        assert_eq!(
            v.channels.keys().copied().collect::<Vec<_>>(),
            ["call_center", "email", "web"]
        );
        assert_eq!(v.channels["web"].count, 1);
        assert_eq!(v.surveys["nps"].score, 2);
        assert_eq!(v.surveys["nps"].classification, "detractor");
        assert!(!v.surveys.contains_key("csat"));
        assert_eq!(v.emotional_state.state, "invested_detractor");
        assert!(!v.emotional_state.signals.is_empty());
        assert_eq!(v.recent.len(), 3);
        assert_eq!(v.recent[1].channel, "call_center");
        let json = serde_json::to_value(&v).unwrap();
        assert!(json["channels"]["web"]["last"].is_string());
    }
}
