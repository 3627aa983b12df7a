//! The action Rapport emits (`schemas/v1/action.avsc`): what downstream services act on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the downstream service should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum ActionKind {
    RecoveryOffer,
    GuideLink,
    SurveyRequest,
    AlertTicket,
    ExclusiveOffer,
    AmbassadorInvite,
    SelfServiceLink,
    Callback,
}

impl ActionKind {
    /// The schema symbol, as used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::RecoveryOffer => "recovery_offer",
            ActionKind::GuideLink => "guide_link",
            ActionKind::SurveyRequest => "survey_request",
            ActionKind::AlertTicket => "alert_ticket",
            ActionKind::ExclusiveOffer => "exclusive_offer",
            ActionKind::AmbassadorInvite => "ambassador_invite",
            ActionKind::SelfServiceLink => "self_service_link",
            ActionKind::Callback => "callback",
        }
    }
}

/// The channel the downstream service should use to reach the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum DeliveryChannel {
    Email,
    Sms,
    Push,
    Web,
    App,
    CallCenter,
    Chat,
    Store,
}

impl DeliveryChannel {
    /// Every delivery channel, in the order of their index.
    pub const ALL: [DeliveryChannel; 8] = [
        DeliveryChannel::Email,
        DeliveryChannel::Sms,
        DeliveryChannel::Push,
        DeliveryChannel::Web,
        DeliveryChannel::App,
        DeliveryChannel::CallCenter,
        DeliveryChannel::Chat,
        DeliveryChannel::Store,
    ];

    /// Dense index, for per-channel tables.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The delivery channel named `s` (its schema symbol).
    pub fn parse(s: &str) -> Option<DeliveryChannel> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryChannel::Email => "email",
            DeliveryChannel::Sms => "sms",
            DeliveryChannel::Push => "push",
            DeliveryChannel::Web => "web",
            DeliveryChannel::App => "app",
            DeliveryChannel::CallCenter => "call_center",
            DeliveryChannel::Chat => "chat",
            DeliveryChannel::Store => "store",
        }
    }
}

/// The emotional state Rapport recognised when it decided, see [`crate::emotion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum EmotionalState {
    Neutral,
    WantsToFeelSpecial,
    Uncertain,
    Anxious,
    InvestedFan,
    InvestedDetractor,
}

impl EmotionalState {
    /// The schema symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            EmotionalState::Neutral => "neutral",
            EmotionalState::WantsToFeelSpecial => "wants_to_feel_special",
            EmotionalState::Uncertain => "uncertain",
            EmotionalState::Anxious => "anxious",
            EmotionalState::InvestedFan => "invested_fan",
            EmotionalState::InvestedDetractor => "invested_detractor",
        }
    }
}

/// One condition that held when an action fired, with the value observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    /// The condition, human readable, e.g. `views of sku within 72h >= 3`.
    pub condition: String,
    /// The observed value that satisfied it.
    pub value: String,
}

impl Reason {
    /// A reason from anything printable.
    pub fn new(condition: impl Into<String>, value: impl ToString) -> Self {
        Reason {
            condition: condition.into(),
            value: value.to_string(),
        }
    }
}

/// One triggered action, as defined by `schemas/v1/action.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Deterministic id: the same journey, customer and trigger always give the same
    /// id, across replays and restarts, so consumers can de-duplicate.
    pub action_id: String,
    /// The customer to act for.
    pub customer_id: String,
    /// What to do.
    pub kind: ActionKind,
    /// The journey that fired.
    pub journey: String,
    /// The event that triggered it.
    pub trigger_event_id: String,
    /// Event time of the trigger, epoch milliseconds.
    pub trigger_event_time: i64,
    /// How to reach the customer.
    pub channel: DeliveryChannel,
    /// Kind-specific details (offer code, guide url, sku, ...).
    pub payload: BTreeMap<String, String>,
    /// Why it fired.
    pub reasons: Vec<Reason>,
    /// The emotional state recognised at the time.
    pub emotional_state: Option<EmotionalState>,
}

/// Namespace of Rapport's action ids (UUID v5).
const ACTION_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_bytes([
    0x6b, 0x1e, 0x2d, 0x0a, 0x52, 0x61, 0x70, 0x70, 0x6f, 0x72, 0x74, 0x41, 0x63, 0x74, 0x69, 0x6f,
]);

/// The deterministic action id for a journey firing for a customer on a trigger.
///
/// `discriminator` separates several actions of one journey on the same trigger.
pub fn action_id(
    journey: &str,
    customer_id: &str,
    trigger_id: &str,
    discriminator: &str,
) -> String {
    let mut name = Vec::with_capacity(
        journey.len() + customer_id.len() + trigger_id.len() + discriminator.len() + 3,
    );
    for part in [journey, customer_id, trigger_id, discriminator] {
        name.extend_from_slice(part.as_bytes());
        name.push(0);
    }
    uuid::Uuid::new_v5(&ACTION_ID_NAMESPACE, &name).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_ids_are_stable_and_distinct() {
        let a = action_id("recovery", "c-1", "evt-1", "");
        assert_eq!(a, action_id("recovery", "c-1", "evt-1", ""));
        assert_ne!(a, action_id("recovery", "c-1", "evt-2", ""));
        assert_ne!(a, action_id("recovery", "c-2", "evt-1", ""));
        // Field boundaries matter: ("ab","c") differs from ("a","bc").
        assert_ne!(action_id("ab", "c", "e", ""), action_id("a", "bc", "e", ""));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }
}
