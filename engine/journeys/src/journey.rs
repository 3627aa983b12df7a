//! A checked, compiled journey: what the evaluator runs.

use std::path::PathBuf;

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
    /// Its native form, when it has one (see [`crate::native`]).
    pub(crate) native: Option<crate::native::Native>,
}

impl Expr {
    /// A compiled expression with its guard and field path read from its tree.
    pub(crate) fn new(program: Program, source: String) -> Expr {
        let guard = crate::guard::event_types(program.expression());
        let path = crate::guard::event_path(program.expression());
        let native = crate::native::Native::compile(program.expression());
        Expr {
            program,
            source,
            guard,
            path,
            native,
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

pub use rapport_model::policy::Purpose;

pub use crate::policy::QuietMode;

/// Where a named action is, for fallbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// An action step, at this step path (see [`Journey::step_at`]).
    Step(Vec<u32>),
    /// An entry of the journey's `fallbacks`.
    Fallback(usize),
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
    /// Its name, for fallbacks.
    pub name: Option<String>,
    /// What it does in quiet hours.
    pub quiet_hours: QuietMode,
    /// The named action of the same journey judged instead when consent is missing.
    pub fallback: Option<String>,
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
    /// Priority when journeys compete for one event (higher wins; default 0).
    pub priority: i64,
    /// Share of customers held out as a control group, basis points (1000 = 10%).
    pub control_group_bp: u16,
    /// Actions run only as another action's fallback.
    pub fallbacks: Vec<ActionStep>,
    /// Named actions: step actions with a `name` and the fallbacks.
    pub named: Vec<(String, Named)>,
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

    /// The action named `name` (a named step action or a fallback).
    pub fn named_action(&self, name: &str) -> Option<&ActionStep> {
        match &self.named.iter().find(|(n, _)| n == name)?.1 {
            Named::Step(path) => match self.step_at(path)? {
                Step::Action(a) => Some(a),
                _ => None,
            },
            Named::Fallback(i) => self.fallbacks.get(*i),
        }
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
