//! What expressions may refer to: the declared fields of `event.*` and
//! `profile.*`, the variables `now` and `key`, and the profile functions, with
//! their types. The checker, the evaluator and the README all follow this table.

use std::fmt;

/// The type of a CEL expression, as far as the checker tracks it.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `uint`.
    Uint,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `google.protobuf.Duration`.
    Duration,
    /// `google.protobuf.Timestamp`.
    Timestamp,
    /// `null`.
    Null,
    /// A list of one element type.
    List(Box<Ty>),
    /// A map.
    Map(Box<Ty>, Box<Ty>),
    /// Not known before evaluation (e.g. elements of an empty list literal).
    Dyn,
    /// A record of declared fields (`event`, `event.commerce`, `profile`):
    /// usable only to select a field or call a function on.
    Record(&'static str),
}

impl Ty {
    /// Whether the type is a number.
    pub fn is_numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Duration => f.write_str("duration"),
            Ty::Timestamp => f.write_str("timestamp"),
            Ty::Null => f.write_str("null"),
            Ty::List(t) => write!(f, "list({t})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Dyn => f.write_str("dyn"),
            Ty::Record(name) => write!(f, "record {name}"),
        }
    }
}

/// A declared field type, const-friendly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decl {
    /// `bool`.
    Bool,
    /// `int`.
    Int,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `timestamp`.
    Timestamp,
    /// `list(string)`.
    StringList,
    /// `map(string, string)`.
    StringMap,
    /// A record with fields of its own.
    Record,
}

impl Decl {
    /// The checker's type of a field declared `self` at `path`.
    pub fn ty(self, path: &'static str) -> Ty {
        match self {
            Decl::Bool => Ty::Bool,
            Decl::Int => Ty::Int,
            Decl::Double => Ty::Double,
            Decl::String => Ty::String,
            Decl::Timestamp => Ty::Timestamp,
            Decl::StringList => Ty::List(Box::new(Ty::String)),
            Decl::StringMap => Ty::Map(Box::new(Ty::String), Box::new(Ty::String)),
            Decl::Record => Ty::Record(path),
        }
    }
}

/// One declared field: full path, type, meaning.
pub type Field = (&'static str, Decl, &'static str);

/// The fields of `event`: the touchpoint (`schemas/v1/touchpoint.avsc`). An
/// absent optional field reads as its zero value: `""`, `0`, `0.0`, `false`.
pub const EVENT_FIELDS: &[Field] = &[
    ("event", Decl::Record, "the touchpoint being processed"),
    ("event.event_id", Decl::String, "event id"),
    (
        "event.customer_id",
        Decl::String,
        "customer id (\"\" when anonymous)",
    ),
    (
        "event.anonymous_id",
        Decl::String,
        "anonymous id (\"\" when none)",
    ),
    (
        "event.channel",
        Decl::String,
        "channel symbol: web, app, call_center, store, chat, email, system",
    ),
    (
        "event.event_type",
        Decl::String,
        "event type symbol, e.g. product_view, delivered",
    ),
    ("event.event_time", Decl::Timestamp, "event time"),
    ("event.store_id", Decl::String, "store id"),
    (
        "event.commerce",
        Decl::Record,
        "order, product and money details",
    ),
    ("event.commerce.order_id", Decl::String, "order id"),
    ("event.commerce.sku", Decl::String, "product id"),
    ("event.commerce.amount", Decl::Double, "amount"),
    ("event.commerce.currency", Decl::String, "currency code"),
    ("event.commerce.quantity", Decl::Int, "quantity"),
    ("event.survey", Decl::Record, "survey answer"),
    (
        "event.survey.kind",
        Decl::String,
        "nps, csat or ces (\"\" when no survey)",
    ),
    (
        "event.survey.score",
        Decl::Int,
        "score on the survey's scale",
    ),
    ("event.survey.comment", Decl::String, "free-text comment"),
    ("event.call", Decl::Record, "contact-center call details"),
    (
        "event.call.wait_seconds",
        Decl::Int,
        "wait before an agent answered",
    ),
    ("event.call.duration_seconds", Decl::Int, "call duration"),
    ("event.call.transfers", Decl::Int, "transfers"),
    (
        "event.call.outcome",
        Decl::String,
        "resolved, unresolved, escalated, abandoned, callback_scheduled",
    ),
    ("event.call.agent_notes", Decl::String, "agent notes"),
    ("event.chat", Decl::Record, "chat message details"),
    ("event.chat.text", Decl::String, "message text"),
    (
        "event.chat.sentiment",
        Decl::Double,
        "-1.0 very negative .. 1.0 very positive",
    ),
    ("event.chat.from_bot", Decl::Bool, "sent by a bot"),
    ("event.web", Decl::Record, "web and app page details"),
    ("event.web.url", Decl::String, "page url"),
    ("event.web.query", Decl::String, "search query"),
    ("event.web.referrer", Decl::String, "referrer"),
    (
        "event.attributes",
        Decl::StringMap,
        "free-form string attributes",
    ),
];

/// The fields of `profile`: the 360-degree customer profile.
pub const PROFILE_FIELDS: &[Field] = &[
    (
        "profile",
        Decl::Record,
        "the customer's profile, already updated with the event",
    ),
    ("profile.id", Decl::String, "customer id"),
    ("profile.events", Decl::Int, "touchpoints applied"),
    ("profile.first_seen", Decl::Timestamp, "first touchpoint"),
    ("profile.last_seen", Decl::Timestamp, "latest touchpoint"),
    ("profile.orders", Decl::Int, "purchases"),
    ("profile.returns", Decl::Int, "returns"),
    (
        "profile.lifetime_value",
        Decl::Double,
        "purchases minus returns",
    ),
    (
        "profile.last_purchase",
        Decl::Timestamp,
        "latest purchase (1970-01-01 when none)",
    ),
    (
        "profile.open_issues",
        Decl::Int,
        "failed deliveries, refunds and tickets not resolved",
    ),
    ("profile.nps", Decl::Int, "latest NPS answer, -1 when none"),
    (
        "profile.csat",
        Decl::Int,
        "latest CSAT answer, -1 when none",
    ),
    ("profile.ces", Decl::Int, "latest CES answer, -1 when none"),
    (
        "profile.sentiment",
        Decl::Double,
        "chat sentiment trend (exponentially weighted), -1..1",
    ),
    (
        "profile.max_wait_seconds",
        Decl::Int,
        "longest recent call wait",
    ),
    (
        "profile.emotional_state",
        Decl::String,
        "the stored emotional state, kept with hysteresis: neutral, wants_to_feel_special, uncertain, anxious, invested_fan, invested_detractor",
    ),
    (
        "profile.emotional_state_since",
        Decl::Timestamp,
        "when the customer entered the current emotional state (1970-01-01 for the initial neutral)",
    ),
    (
        "profile.emotion_signals",
        Decl::Record,
        "the value, 0 (absent) to 1 (fully present), of each emotional signal at the latest event",
    ),
    (
        "profile.emotion_signals.repeat_views",
        Decl::Double,
        "uncertain: most views of one product within the browse window since buying it (0 one view, 1 from three)",
    ),
    (
        "profile.emotion_signals.compared_products",
        Decl::Double,
        "uncertain: products viewed within the browse window and not bought (0 one, 1 from three)",
    ),
    (
        "profile.emotion_signals.reviews_read",
        Decl::Double,
        "uncertain: review pages read within the browse window (1 from two)",
    ),
    (
        "profile.emotion_signals.carts_without_purchase",
        Decl::Double,
        "uncertain: add-to-carts within the browse window without a purchase since (1 from one)",
    ),
    (
        "profile.emotion_signals.help_searches",
        Decl::Double,
        "anxious: help searches within the contact window (0 one, 1 from three)",
    ),
    (
        "profile.emotion_signals.repeat_contacts",
        Decl::Double,
        "anxious: calls and chat hand-offs within the contact window (0 one, 1 from three)",
    ),
    (
        "profile.emotion_signals.call_wait",
        Decl::Double,
        "anxious: longest call wait within the contact window (0 to 120s, 1 from 600s)",
    ),
    (
        "profile.emotion_signals.abandoned_checkouts",
        Decl::Double,
        "anxious: abandoned checkouts within the contact window (1 from two)",
    ),
    (
        "profile.emotion_signals.nps_detractor",
        Decl::Double,
        "detractor: latest NPS within the feedback window (0.5 for a 6 up to 1 for a 0)",
    ),
    (
        "profile.emotion_signals.csat_low",
        Decl::Double,
        "detractor: latest CSAT within the feedback window (0.5 for a 2, 1 for a 1)",
    ),
    (
        "profile.emotion_signals.ces_low",
        Decl::Double,
        "detractor: latest CES within the feedback window (0.5 for a 2, 1 for a 1)",
    ),
    (
        "profile.emotion_signals.negative_sentiment",
        Decl::Double,
        "detractor: how negative the recent chat sentiment trend is",
    ),
    (
        "profile.emotion_signals.nps_promoter",
        Decl::Double,
        "fan: latest NPS within the feedback window is 9 or 10",
    ),
    (
        "profile.emotion_signals.csat_high",
        Decl::Double,
        "fan: latest CSAT within the feedback window (0.5 for a 4, 1 for a 5)",
    ),
    (
        "profile.emotion_signals.positive_sentiment",
        Decl::Double,
        "fan: how positive the recent chat sentiment trend is",
    ),
    (
        "profile.emotion_signals.engagement",
        Decl::Double,
        "fan: days with touchpoints within the engagement window (1 from eight)",
    ),
    (
        "profile.emotion_signals.lifetime_value",
        Decl::Double,
        "special: lifetime value (1 from the configured lifetime_value_full)",
    ),
    (
        "profile.emotion_signals.order_frequency",
        Decl::Double,
        "special: purchases within the order window (1 from six)",
    ),
    (
        "profile.emotion_scores",
        Decl::Record,
        "the score (sum of weight x signal value) of each emotional state at the latest event",
    ),
    (
        "profile.emotion_scores.invested_detractor",
        Decl::Double,
        "score of invested_detractor",
    ),
    (
        "profile.emotion_scores.anxious",
        Decl::Double,
        "score of anxious",
    ),
    (
        "profile.emotion_scores.uncertain",
        Decl::Double,
        "score of uncertain",
    ),
    (
        "profile.emotion_scores.invested_fan",
        Decl::Double,
        "score of invested_fan",
    ),
    (
        "profile.emotion_scores.wants_to_feel_special",
        Decl::Double,
        "score of wants_to_feel_special",
    ),
    (
        "profile.recent_event_types",
        Decl::StringList,
        "event types of the last 10 touchpoints, oldest first",
    ),
    (
        "profile.recent_channels",
        Decl::StringList,
        "channels of the last 10 touchpoints, oldest first",
    ),
];

/// The other variables: `now` (the event time, or the due time of a wait) and
/// `key` (the journey instance's key).
pub const OTHER_VARIABLES: &[Field] = &[
    (
        "now",
        Decl::Timestamp,
        "event time of the event, or due time of the wait being fired",
    ),
    (
        "key",
        Decl::String,
        "the journey instance key (\"\" when the journey has no `key`)",
    ),
];

/// A profile function, called as `profile.NAME(args)`.
pub struct Function {
    /// Name.
    pub name: &'static str,
    /// Argument types.
    pub args: &'static [Decl2],
    /// Result type.
    pub ret: Decl2,
    /// Meaning.
    pub doc: &'static str,
}

/// Argument and result types of profile functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decl2 {
    /// `string` naming an event type.
    EventType,
    /// `string` naming a channel.
    Channel,
    /// Any `string`.
    String,
    /// `duration`, a window of at most 92 days.
    Window,
    /// `int`.
    Int,
    /// `timestamp`.
    Timestamp,
}

impl Decl2 {
    /// The checker's type.
    pub fn ty(self) -> Ty {
        match self {
            Decl2::EventType | Decl2::Channel | Decl2::String => Ty::String,
            Decl2::Window => Ty::Duration,
            Decl2::Int => Ty::Int,
            Decl2::Timestamp => Ty::Timestamp,
        }
    }
}

/// The profile functions.
pub const PROFILE_FUNCTIONS: &[Function] = &[
    Function {
        name: "count",
        args: &[Decl2::EventType, Decl2::Window],
        ret: Decl2::Int,
        doc: "events of a type on any channel within the window before now",
    },
    Function {
        name: "count_on",
        args: &[Decl2::EventType, Decl2::Channel, Decl2::Window],
        ret: Decl2::Int,
        doc: "events of a type on one channel within the window before now",
    },
    Function {
        name: "product_views",
        args: &[Decl2::String, Decl2::Window],
        ret: Decl2::Int,
        doc: "views of one product within the window before now, none when it was bought within the window (counts up to 8)",
    },
    Function {
        name: "contacts",
        args: &[Decl2::Window],
        ret: Decl2::Int,
        doc:
            "help searches, calls and chat hand-offs within the window before now (counts up to 8)",
    },
    Function {
        name: "last",
        args: &[Decl2::EventType],
        ret: Decl2::Timestamp,
        doc: "time of the latest event of a type within the last 92 days (1970-01-01 when none)",
    },
];

/// The longest window a profile function may look back: what the profile keeps.
pub const MAX_WINDOW_MS: i64 = rapport_model::window::RETENTION_MS;

/// The declared field at `path`, if any.
pub fn field(path: &str) -> Option<&'static Field> {
    EVENT_FIELDS
        .iter()
        .chain(PROFILE_FIELDS)
        .chain(OTHER_VARIABLES)
        .find(|f| f.0 == path)
}

/// The names of the fields directly under record `path`, for hints.
pub fn fields_under(path: &str) -> Vec<&'static str> {
    EVENT_FIELDS
        .iter()
        .chain(PROFILE_FIELDS)
        .filter_map(|f| {
            let rest = f.0.strip_prefix(path)?.strip_prefix('.')?;
            (!rest.contains('.')).then_some(rest)
        })
        .collect()
}

/// The profile function `name`, if any.
pub fn profile_function(name: &str) -> Option<&'static Function> {
    PROFILE_FUNCTIONS.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use rapport_model::emotion::{Signal, PRIORITY};

    use super::*;

    #[test]
    fn every_emotional_signal_and_state_is_declared_and_nothing_else() {
        let signals = fields_under("profile.emotion_signals");
        let names: Vec<&str> = Signal::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(signals, names);
        let states = fields_under("profile.emotion_scores");
        let names: Vec<&str> = PRIORITY.iter().map(|s| s.as_str()).collect();
        assert_eq!(states, names);
    }
}
