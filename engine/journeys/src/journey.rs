//! A checked, compiled journey: what the evaluator runs.

use std::path::PathBuf;
use std::sync::Arc;

use cel::Program;
use rapport_model::{ActionKind, Channel, DeliveryChannel, EmotionalState, EventType};

/// A compiled CEL expression and its source, for messages.
#[derive(Debug)]
pub struct Expr {
    pub(crate) program: Program,
    /// The expression as written.
    pub source: String,
    /// Event types outside of which the expression is certainly false.
    pub(crate) guard: Option<crate::guard::EventTypes>,
    /// The event field it reads, when it only reads one (read without CEL).
    pub(crate) path: Option<String>,
}

impl Expr {
    /// A compiled expression with its guard and field path read from its tree.
    pub(crate) fn new(program: Program, source: String) -> Expr {
        let guard = crate::guard::event_types(program.expression());
        let path = crate::guard::event_path(program.expression());
        Expr {
            program,
            source,
            guard,
            path,
        }
    }
}

/// A string with `{{ cel expression }}` placeholders, e.g.
/// `"https://shop.example/guides/{{ event.commerce.sku }}"`.
#[derive(Debug)]
pub struct Template {
    pub(crate) parts: Vec<Part>,
}

#[derive(Debug)]
pub(crate) enum Part {
    Text(String),
    Expr(Expr),
}

/// When a customer who was in a journey for a key may enter it again for that key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reentry {
    /// Whenever the trigger and `when` hold again (after the previous instance ended).
    Always,
    /// Once per key, ever.
    Never,
    /// Not within this many ms of the previous entry.
    After(i64),
    /// At most `count` entries within any window of `per_ms`.
    AtMost {
        /// Entries allowed per window.
        count: u32,
        /// The rolling window, ms.
        per_ms: i64,
    },
}

/// What an action is for; the policy layer (consent, caps, quiet hours) applies
/// different rules to each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Offers, guides, invitations: needs marketing consent, counts against caps.
    Marketing,
    /// Survey requests: survey throttling applies.
    Survey,
    /// Service to a customer with a problem (recovery, tickets, call-backs).
    Service,
}

impl Purpose {
    /// The symbol used in journey files.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Marketing => "marketing",
            Purpose::Survey => "survey",
            Purpose::Service => "service",
        }
    }

    /// The purpose named `s`.
    pub fn parse(s: &str) -> Option<Purpose> {
        [Purpose::Marketing, Purpose::Survey, Purpose::Service]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The purpose an action kind has unless the journey says otherwise.
    pub fn default_for(kind: ActionKind) -> Purpose {
        match kind {
            ActionKind::SurveyRequest => Purpose::Survey,
            ActionKind::RecoveryOffer
            | ActionKind::AlertTicket
            | ActionKind::SelfServiceLink
            | ActionKind::Callback => Purpose::Service,
            ActionKind::GuideLink | ActionKind::ExclusiveOffer | ActionKind::AmbassadorInvite => {
                Purpose::Marketing
            }
        }
    }
}

/// Policy fields of an action, parsed and kept for the policy layer (caps,
/// quiet hours, consent, control groups). This crate does not enforce them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Cap group the action counts against (e.g. `"marketing"`).
    pub cap: Option<String>,
    /// Whether quiet hours apply (in the customer's time zone).
    pub quiet_hours: Option<bool>,
    /// Consent purpose required, when not the action's purpose.
    pub consent: Option<String>,
    /// Share of customers held out as a control group, 0..=100.
    pub holdout_percent: Option<u8>,
    /// Priority among actions competing for one cap.
    pub priority: Option<i64>,
}

/// How an action picks its delivery channel.
#[derive(Debug)]
pub enum ChannelSpec {
    /// Always this one.
    Fixed(DeliveryChannel),
    /// The channel the customer used (web, app, chat, store, call center; email otherwise).
    Reply,
    /// A template naming a delivery channel; email when it names none.
    Template(Template),
}

/// An `action` step.
#[derive(Debug)]
pub struct ActionStep {
    /// What to do.
    pub kind: ActionKind,
    /// How to reach the customer.
    pub channel: ChannelSpec,
    /// What it is for.
    pub purpose: Purpose,
    /// Policy fields for the policy layer.
    pub policy: Arc<Policy>,
    pub(crate) discriminator: Option<Template>,
    pub(crate) payload: Vec<(String, Template)>,
    pub(crate) emotion_reasons: bool,
    pub(crate) addresses: Option<EmotionalState>,
}

/// One step of a journey.
#[derive(Debug)]
pub enum Step {
    /// A durable wait, fired in event time, ended early by `cancel_when`.
    Wait {
        /// How long, ms.
        for_ms: i64,
        /// Ends the journey instance when it holds on an event during the wait.
        cancel_when: Option<Expr>,
    },
    /// Runs `then` when `cond` holds, else `otherwise`.
    Branch {
        /// The condition.
        cond: Expr,
        /// Steps when it holds.
        then: Vec<Step>,
        /// Steps when it does not.
        otherwise: Vec<Step>,
    },
    /// Emits an action.
    Action(ActionStep),
}

/// A named reason reported with every action of the journey.
#[derive(Debug)]
pub(crate) struct ReasonSpec {
    pub condition: Template,
    pub value: Expr,
    pub when: Option<Expr>,
}

/// A top-level conjunct of `when`, reported with the value it saw.
#[derive(Debug)]
pub(crate) struct Explain {
    pub condition: String,
    pub value: Expr,
}

/// A checked, compiled journey.
#[derive(Debug)]
pub struct Journey {
    /// Stable id: actions and journey state are keyed by it.
    pub id: String,
    /// Version; instances of another version end when their wait fires.
    pub version: u32,
    /// What it does, for people.
    pub description: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Event types that may start it.
    pub trigger_events: Vec<EventType>,
    /// Channels that may start it (any when empty).
    pub trigger_channels: Vec<Channel>,
    /// Re-entry rule.
    pub reentry: Reentry,
    /// The steps.
    pub steps: Vec<Step>,
    pub(crate) key: Option<Expr>,
    pub(crate) when: Option<Expr>,
    pub(crate) exit_when: Option<Expr>,
    pub(crate) reasons: Vec<ReasonSpec>,
    pub(crate) explain: Vec<Explain>,
    pub(crate) actions: usize,
}

impl Journey {
    /// Whether event type `t` on channel `c` may start this journey.
    pub fn triggered_by(&self, t: EventType, c: Channel) -> bool {
        self.trigger_events.contains(&t)
            && (self.trigger_channels.is_empty() || self.trigger_channels.contains(&c))
    }

    /// The step at `path` (indexes into nested step lists; see [`rapport_model::profile::JourneyRun::at`]).
    pub fn step_at(&self, path: &[u32]) -> Option<&Step> {
        let (&first, rest) = path.split_first()?;
        let mut step = self.steps.get(first as usize)?;
        let mut rest = rest;
        while let [arm, i, tail @ ..] = rest {
            let Step::Branch {
                then, otherwise, ..
            } = step
            else {
                return None;
            };
            let list = if *arm == 0 { then } else { otherwise };
            step = list.get(*i as usize)?;
            rest = tail;
        }
        rest.is_empty().then_some(step)
    }
}
