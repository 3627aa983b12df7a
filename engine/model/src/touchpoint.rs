//! The canonical touchpoint event (`schemas/v1/touchpoint.avsc`) and its validation.
//!
//! A touchpoint is one thing a customer did or experienced on one channel. The Rust
//! types mirror the Avro schema field for field so that JSON and Avro input decode
//! into the same value.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The channel a touchpoint happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Website.
    Web,
    /// Mobile app.
    App,
    /// Contact center (phone).
    CallCenter,
    /// Physical store or point of sale.
    Store,
    /// Chat, human or bot.
    Chat,
    /// Email.
    Email,
    /// Operational systems: delivery, ticketing, consent management.
    System,
}

impl Channel {
    /// Every channel, in the order of their index.
    pub const ALL: [Channel; 7] = [
        Channel::Web,
        Channel::App,
        Channel::CallCenter,
        Channel::Store,
        Channel::Chat,
        Channel::Email,
        Channel::System,
    ];

    /// Dense index, used by per-channel arrays in the profile.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The schema symbol, as used in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Web => "web",
            Channel::App => "app",
            Channel::CallCenter => "call_center",
            Channel::Store => "store",
            Channel::Chat => "chat",
            Channel::Email => "email",
            Channel::System => "system",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EventType {
    PageView,
    ProductView,
    Search,
    AddToCart,
    CheckoutStarted,
    CheckoutAbandoned,
    Purchase,
    Return,
    HelpSearch,
    CallStarted,
    CallEnded,
    ChatMessage,
    ChatHandoff,
    SurveyResponse,
    Delivered,
    DeliveryFailed,
    RefundRequested,
    TicketOpened,
    TicketResolved,
    Identify,
    ConsentChanged,
}

impl EventType {
    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::ProductView => "product_view",
            EventType::Search => "search",
            EventType::AddToCart => "add_to_cart",
            EventType::CheckoutStarted => "checkout_started",
            EventType::CheckoutAbandoned => "checkout_abandoned",
            EventType::Purchase => "purchase",
            EventType::Return => "return",
            EventType::HelpSearch => "help_search",
            EventType::CallStarted => "call_started",
            EventType::CallEnded => "call_ended",
            EventType::ChatMessage => "chat_message",
            EventType::ChatHandoff => "chat_handoff",
            EventType::SurveyResponse => "survey_response",
            EventType::Delivered => "delivered",
            EventType::DeliveryFailed => "delivery_failed",
            EventType::RefundRequested => "refund_requested",
            EventType::TicketOpened => "ticket_opened",
            EventType::TicketResolved => "ticket_resolved",
            EventType::Identify => "identify",
            EventType::ConsentChanged => "consent_changed",
        }
    }
}

/// Order, product and money details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Commerce {
    #[serde(default)]
    pub order_id: Option<String>,
    #[serde(default)]
    pub sku: Option<String>,
    #[serde(default)]
    pub amount: Option<f64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub quantity: Option<i32>,
}

/// Which survey was answered; each has its own scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurveyKind {
    /// Net Promoter Score, 0..=10 (0-6 detractor, 7-8 passive, 9-10 promoter).
    Nps,
    /// Customer satisfaction, 1..=5.
    Csat,
    /// Customer effort score, 1..=7 where 7 means very easy.
    Ces,
}

impl SurveyKind {
    /// The valid score range of this survey.
    pub fn range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            SurveyKind::Nps => 0..=10,
            SurveyKind::Csat => 1..=5,
            SurveyKind::Ces => 1..=7,
        }
    }

    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            SurveyKind::Nps => "nps",
            SurveyKind::Csat => "csat",
            SurveyKind::Ces => "ces",
        }
    }

    /// Every survey, in the order profiles keep them.
    pub const ALL: [SurveyKind; 3] = [SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces];

    /// Position in [`SurveyKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// What an answer of `score` says, by the survey's usual reading: NPS
    /// `promoter` (9-10), `passive` (7-8) or `detractor` (0-6); CSAT `satisfied`
    /// (4-5), `neutral` (3) or `dissatisfied` (1-2); CES `easy` (5-7), `neutral`
    /// (4) or `hard` (1-3).
    pub fn classify(self, score: i32) -> &'static str {
        match self {
            SurveyKind::Nps if score >= 9 => "promoter",
            SurveyKind::Nps if score >= 7 => "passive",
            SurveyKind::Nps => "detractor",
            SurveyKind::Csat if score >= 4 => "satisfied",
            SurveyKind::Csat if score == 3 => "neutral",
            SurveyKind::Csat => "dissatisfied",
            SurveyKind::Ces if score >= 5 => "easy",
            SurveyKind::Ces if score == 4 => "neutral",
            SurveyKind::Ces => "hard",
        }
    }
}

/// A survey answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Survey {
    pub kind: SurveyKind,
    pub score: i32,
    #[serde(default)]
    pub comment: Option<String>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CallOutcome {
    Resolved,
    Unresolved,
    Escalated,
    Abandoned,
    CallbackScheduled,
}

/// Contact-center call details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Call {
    #[serde(default)]
    pub wait_seconds: Option<i32>,
    #[serde(default)]
    pub duration_seconds: Option<i32>,
    #[serde(default)]
    pub transfers: Option<i32>,
    #[serde(default)]
    pub outcome: Option<CallOutcome>,
    #[serde(default)]
    pub agent_notes: Option<String>,
}

/// Chat message details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Chat {
    #[serde(default)]
    pub text: Option<String>,
    /// -1.0 very negative .. 1.0 very positive.
    #[serde(default)]
    pub sentiment: Option<f64>,
    #[serde(default)]
    pub from_bot: Option<bool>,
}

/// Web and app page details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Web {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub referrer: Option<String>,
}

/// One touchpoint event, as defined by `schemas/v1/touchpoint.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Touchpoint {
    pub event_id: String,
    #[serde(default)]
    pub customer_id: Option<String>,
    #[serde(default)]
    pub anonymous_id: Option<String>,
    pub channel: Channel,
    pub event_type: EventType,
    /// Event time, epoch milliseconds. JSON input may also give an RFC 3339 string.
    #[serde(deserialize_with = "event_time")]
    pub event_time: i64,
    #[serde(default)]
    pub store_id: Option<String>,
    #[serde(default)]
    pub commerce: Option<Commerce>,
    #[serde(default)]
    pub survey: Option<Survey>,
    #[serde(default)]
    pub call: Option<Call>,
    #[serde(default)]
    pub chat: Option<Chat>,
    #[serde(default)]
    pub web: Option<Web>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Reads `event_time` as epoch milliseconds or an RFC 3339 string, straight from
/// the input (an untagged enum would buffer every value first).
fn event_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Time;
    impl serde::de::Visitor<'_> for Time {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("epoch milliseconds or an RFC 3339 time")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("event_time {v} is out of range")))
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<i64, E> {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    E::custom(format!(
                        "event_time {s:?} is neither epoch milliseconds nor RFC 3339: {e}"
                    ))
                })
        }
    }
    d.deserialize_any(Time)
}

/// Why a decoded touchpoint was refused. The message goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The event has no id, so actions could not be traced back to it.
    #[error("event_id is empty")]
    EmptyEventId,
    /// Neither a customer id nor an anonymous id: nobody to attach the event to.
    #[error("neither customer_id nor anonymous_id is set")]
    NoIdentity,
    /// Event time before 2000-01-01 or after 2100: almost certainly seconds, not millis.
    #[error("event_time {0} is out of range (expected epoch milliseconds between 2000 and 2100)")]
    EventTimeOutOfRange(i64),
    /// A survey response without its survey details.
    #[error("survey_response without a survey record")]
    MissingSurvey,
    /// A score outside the scale of its survey.
    #[error("{kind} score {score} is outside {min}..={max}")]
    ScoreOutOfRange {
        /// Survey kind.
        kind: &'static str,
        /// The given score.
        score: i32,
        /// Lowest valid score.
        min: i32,
        /// Highest valid score.
        max: i32,
    },
    /// A chat sentiment outside -1..=1.
    #[error("chat sentiment {0} is outside -1.0..=1.0")]
    SentimentOutOfRange(String),
    /// Money amounts must be finite and non-negative.
    #[error("commerce amount {0} is not a finite non-negative number")]
    BadAmount(String),
    /// A `consent_changed` whose attributes `purpose`, `channel`, `granted`
    /// cannot be read: guessing would risk contacting someone who said no.
    #[error("{0}")]
    BadConsent(String),
}

/// 2000-01-01T00:00:00Z in epoch milliseconds.
const MIN_EVENT_TIME: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z in epoch milliseconds.
const MAX_EVENT_TIME: i64 = 4_102_444_800_000;

impl Touchpoint {
    /// Checks the rules the schema cannot express.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.event_id.trim().is_empty() {
            return Err(Invalid::EmptyEventId);
        }
        if self.identity().is_none() {
            return Err(Invalid::NoIdentity);
        }
        if !(MIN_EVENT_TIME..MAX_EVENT_TIME).contains(&self.event_time) {
            return Err(Invalid::EventTimeOutOfRange(self.event_time));
        }
        if self.event_type == EventType::SurveyResponse && self.survey.is_none() {
            return Err(Invalid::MissingSurvey);
        }
        if let Some(s) = &self.survey {
            let r = s.kind.range();
            if !r.contains(&s.score) {
                return Err(Invalid::ScoreOutOfRange {
                    kind: s.kind.as_str(),
                    score: s.score,
                    min: *r.start(),
                    max: *r.end(),
                });
            }
        }
        if let Some(s) = self.chat.as_ref().and_then(|c| c.sentiment) {
            if !(-1.0..=1.0).contains(&s) {
                return Err(Invalid::SentimentOutOfRange(s.to_string()));
            }
        }
        if let Some(a) = self.commerce.as_ref().and_then(|c| c.amount) {
            if !a.is_finite() || a < 0.0 {
                return Err(Invalid::BadAmount(a.to_string()));
            }
        }
        crate::policy::consent_change(self).map_err(Invalid::BadConsent)?;
        Ok(())
    }

    /// The id the event's profile is keyed by: the customer id, else the anonymous id.
    pub fn identity(&self) -> Option<&str> {
        self.customer_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or_else(|| self.anonymous_id.as_deref().filter(|s| !s.is_empty()))
    }

    /// The product this event is about, if any.
    pub fn sku(&self) -> Option<&str> {
        self.commerce.as_ref().and_then(|c| c.sku.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Touchpoint, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn accepts_millis_and_rfc3339_event_time() {
        let a = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"page_view","event_time":1764000000000}"#).unwrap();
        let b = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"page_view","event_time":"2025-11-24T16:00:00Z"}"#).unwrap();
        assert_eq!(a.event_time, b.event_time);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn unknown_event_type_and_fields_are_rejected() {
        let e = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"teleport","event_time":1764000000000}"#).unwrap_err();
        assert!(e.to_string().contains("teleport"), "{e}");
        let e = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"page_view","event_time":1764000000000,"colour":"red"}"#).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }

    #[test]
    fn validation_catches_what_the_schema_cannot() {
        let base = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"survey_response","event_time":1764000000000,"survey":{"kind":"nps","score":11}}"#).unwrap();
        assert!(matches!(
            base.validate(),
            Err(Invalid::ScoreOutOfRange { score: 11, .. })
        ));
        let mut t = base.clone();
        t.survey = None;
        assert_eq!(t.validate(), Err(Invalid::MissingSurvey));
        let mut t = base.clone();
        t.customer_id = None;
        assert_eq!(t.validate(), Err(Invalid::NoIdentity));
        let mut t = base.clone();
        t.event_time = 1_764_000_000; // seconds, not millis
        assert_eq!(
            t.validate(),
            Err(Invalid::EventTimeOutOfRange(1_764_000_000))
        );
        let mut t = base;
        t.survey.as_mut().unwrap().score = 3;
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn an_unreadable_consent_change_is_refused() {
        let t = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"consent_changed","event_time":1764000000000,"attributes":{"purpose":"marketing","granted":"perhaps"}}"#).unwrap();
        assert!(matches!(t.validate(), Err(Invalid::BadConsent(m)) if m.contains("perhaps")));
        let t = parse(r#"{"event_id":"e1","customer_id":"c1","channel":"web","event_type":"consent_changed","event_time":1764000000000,"attributes":{"purpose":"marketing","channel":"email","granted":"false"}}"#).unwrap();
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn anonymous_id_is_the_fallback_identity() {
        let t = parse(r#"{"event_id":"e1","anonymous_id":"a9","channel":"web","event_type":"page_view","event_time":1764000000000}"#).unwrap();
        assert_eq!(t.identity(), Some("a9"));
    }
}
