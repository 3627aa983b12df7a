//! The schema symbols journey files name: event types, channels, action kinds,
//! delivery channels and emotional states, as written in `schemas/v1/*.avsc`.

use rapport_model::{ActionKind, Channel, DeliveryChannel, EmotionalState, EventType};

/// Every event type.
pub const EVENT_TYPES: [EventType; 21] = [
    EventType::PageView,
    EventType::ProductView,
    EventType::Search,
    EventType::AddToCart,
    EventType::CheckoutStarted,
    EventType::CheckoutAbandoned,
    EventType::Purchase,
    EventType::Return,
    EventType::HelpSearch,
    EventType::CallStarted,
    EventType::CallEnded,
    EventType::ChatMessage,
    EventType::ChatHandoff,
    EventType::SurveyResponse,
    EventType::Delivered,
    EventType::DeliveryFailed,
    EventType::RefundRequested,
    EventType::TicketOpened,
    EventType::TicketResolved,
    EventType::Identify,
    EventType::ConsentChanged,
];

/// Every action kind.
pub const ACTION_KINDS: [ActionKind; 8] = [
    ActionKind::RecoveryOffer,
    ActionKind::GuideLink,
    ActionKind::SurveyRequest,
    ActionKind::AlertTicket,
    ActionKind::ExclusiveOffer,
    ActionKind::AmbassadorInvite,
    ActionKind::SelfServiceLink,
    ActionKind::Callback,
];

/// Every delivery channel.
pub const DELIVERY_CHANNELS: [DeliveryChannel; 8] = DeliveryChannel::ALL;

/// Every emotional state.
pub const EMOTIONAL_STATES: [EmotionalState; 6] = [
    EmotionalState::Neutral,
    EmotionalState::WantsToFeelSpecial,
    EmotionalState::Uncertain,
    EmotionalState::Anxious,
    EmotionalState::InvestedFan,
    EmotionalState::InvestedDetractor,
];

/// The event type named `s`.
pub fn event_type(s: &str) -> Option<EventType> {
    EVENT_TYPES.into_iter().find(|e| e.as_str() == s)
}

/// The channel named `s`.
pub fn channel(s: &str) -> Option<Channel> {
    Channel::ALL.into_iter().find(|c| c.as_str() == s)
}

/// The action kind named `s`.
pub fn action_kind(s: &str) -> Option<ActionKind> {
    ACTION_KINDS.into_iter().find(|k| k.as_str() == s)
}

/// The delivery channel named `s`.
pub fn delivery_channel(s: &str) -> Option<DeliveryChannel> {
    DELIVERY_CHANNELS.into_iter().find(|c| c.as_str() == s)
}

/// The emotional state named `s`.
pub fn emotional_state(s: &str) -> Option<EmotionalState> {
    EMOTIONAL_STATES.into_iter().find(|e| e.as_str() == s)
}

/// `names` joined for a hint: `a, b, c`.
pub fn list<T: Copy>(items: &[T], name: impl Fn(T) -> &'static str) -> String {
    items
        .iter()
        .map(|&i| name(i))
        .collect::<Vec<_>>()
        .join(", ")
}
