//! The delivery policy: the one set of rules every action of every journey
//! passes before it is emitted: consent per purpose and channel, caps over
//! rolling windows, quiet hours in the customer's time zone, suppression by
//! emotional state and by other journeys, priority between journeys firing on
//! one event, and control groups.
//!
//! It runs inside [`crate::CompiledJourneys::on_event`] and
//! [`crate::CompiledJourneys::fire_due`], in the same step that decides the
//! actions, and keeps all its bookkeeping in the profile
//! ([`rapport_model::policy::DeliveryState`]), so the runtime commits it in
//! the same transaction as the actions: a cap holds exactly, even across
//! crashes and replays. Every judgement, sent or not, is a [`Decision`] with
//! its reason.

use std::fmt::Write as _;

use chrono::{NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use rapport_model::action::{Action, ActionKind, DeliveryChannel, EmotionalState};
use rapport_model::emotion::{self, EmotionConfig};
use rapport_model::policy::{
    decision_id, deferred_key, DeferredAction, Purpose, SentMark, DEFERRED_KEY_PREFIX,
};
use rapport_model::profile::Timer;
use rapport_model::Profile;
use serde::{Deserialize, Serialize};

/// What the policy did with one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Emitted.
    Sent,
    /// A cap's rolling window is full.
    Capped,
    /// Held back until quiet hours end in the customer's time zone.
    DeferredQuietHours,
    /// Dropped because it would fall into quiet hours.
    DroppedQuietHours,
    /// No consent for its purpose on its channel, and no fallback.
    NoConsent,
    /// No consent; its fallback action was judged instead (its own decision follows).
    Fallback,
    /// Another journey took precedence (priority on one event, or a suppression rule).
    SuppressedPriority,
    /// The customer's emotional state rules its purpose out (e.g. no marketing while anxious).
    SuppressedState,
    /// The customer is in the journey's control group: nothing sent, for measuring uplift.
    HeldOut,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 9] = [
        Outcome::Sent,
        Outcome::Capped,
        Outcome::DeferredQuietHours,
        Outcome::DroppedQuietHours,
        Outcome::NoConsent,
        Outcome::Fallback,
        Outcome::SuppressedPriority,
        Outcome::SuppressedState,
        Outcome::HeldOut,
    ];

    /// The symbol, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Capped => "capped",
            Outcome::DeferredQuietHours => "deferred_quiet_hours",
            Outcome::DroppedQuietHours => "dropped_quiet_hours",
            Outcome::NoConsent => "no_consent",
            Outcome::Fallback => "fallback",
            Outcome::SuppressedPriority => "suppressed_priority",
            Outcome::SuppressedState => "suppressed_state",
            Outcome::HeldOut => "held_out",
        }
    }
}

/// One judgement of the policy about one action: sent or not, and why.
///
/// Serialises to JSON with the field names below, e.g.
/// `{"decision_id":"…","customer_id":"c1","journey":"exclusive_treatment",
/// "action_id":"…","kind":"exclusive_offer","channel":"email","purpose":"marketing",
/// "outcome":"capped","reason":"marketing cap 3 per 7d reached: …",
/// "event_id":"e9","event_time":1764000000000,"decided_at":1764000000000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Deterministic: [`rapport_model::policy::decision_id`] of the action id,
    /// the outcome and `decided_at`, so replays give the same ids.
    pub decision_id: String,
    /// The customer.
    pub customer_id: String,
    /// The journey whose action it is.
    pub journey: String,
    /// The action's id (the id it has, or would have had, on the action topic).
    pub action_id: String,
    /// What the action does.
    pub kind: ActionKind,
    /// How it would reach the customer.
    pub channel: DeliveryChannel,
    /// What it is for.
    pub purpose: Purpose,
    /// What the policy did.
    pub outcome: Outcome,
    /// Why, in words, with the values the policy observed.
    pub reason: String,
    /// The event the action came from (for actions after a wait: the event that started the journey).
    pub event_id: String,
    /// The action's trigger time, epoch ms (the event's time, or the wait's due time).
    pub event_time: i64,
    /// Event time of this judgement, epoch ms (for a deferred action firing: its due time).
    pub decided_at: i64,
    /// For `deferred_quiet_hours`: when it fires, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred_until: Option<i64>,
    /// For `fallback`: the id of the fallback action judged instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_action_id: Option<String>,
}

/// What one evaluation emits: the actions to send and a decision for every
/// action judged (sent ones included). Owned by the caller and reused between
/// events; the caller drains or clears both vectors after each call.
#[derive(Debug, Default)]
pub struct Output {
    /// Actions that passed the policy, ready for the action topic.
    pub actions: Vec<Action>,
    /// Every decision, in the order made.
    pub decisions: Vec<Decision>,
    /// Actions decided by journeys, before the policy (reused buffer).
    pub(crate) pending: Vec<Candidate>,
}

impl Output {
    /// An empty output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties both vectors, keeping their capacity.
    pub fn clear(&mut self) {
        self.actions.clear();
        self.decisions.clear();
        self.pending.clear();
    }
}

/// What an action does when it would fall into quiet hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuietMode {
    /// Fire at the end of quiet hours (a durable timer in the profile). The default.
    #[default]
    Defer,
    /// Do not send it.
    Drop,
    /// Quiet hours do not apply (e.g. tickets for staff).
    Ignore,
}

impl QuietMode {
    /// The mode named `s` in a journey file.
    pub fn parse(s: &str) -> Option<QuietMode> {
        match s {
            "defer" => Some(QuietMode::Defer),
            "drop" => Some(QuietMode::Drop),
            "ignore" => Some(QuietMode::Ignore),
            _ => None,
        }
    }
}

/// An action a journey decided on, waiting for the policy's judgement.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub action: Action,
    pub purpose: Purpose,
    pub quiet: QuietMode,
    pub priority: i64,
    /// Control-group share of the journey, basis points.
    pub control_bp: u16,
    /// Event time of the judgement.
    pub now_ms: i64,
    /// Judged instead when consent is missing.
    pub fallback: Option<Box<Candidate>>,
    /// A deferred action firing: judged again, but its control group was already decided.
    pub redo: bool,
    /// The emotional state's reasons are still to be appended to the action's:
    /// they are formatted when the action is sent or deferred, not for every
    /// action the policy holds back (the decision does not carry reasons). The
    /// state cannot change in between: the policy judges in the same step.
    pub emotion_reasons: bool,
}

/// A cap filter on one dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter<T> {
    /// Not restricted: every value counts together.
    Any,
    /// `"*"`: each value has its own budget (e.g. per journey).
    Each,
    /// Only this value.
    Is(T),
}

impl<T: PartialEq> Filter<T> {
    fn applies(&self, v: &T) -> bool {
        match self {
            Filter::Is(x) => x == v,
            _ => true,
        }
    }

    fn counts(&self, sent: &T, judged: &T) -> bool {
        match self {
            Filter::Any => true,
            Filter::Each => sent == judged,
            Filter::Is(x) => x == sent,
        }
    }
}

/// At most `max` sends of matching actions within any rolling `window_ms`.
#[derive(Debug, Clone)]
pub(crate) struct Cap {
    pub label: String,
    pub purpose: Filter<Purpose>,
    pub journey: Filter<String>,
    pub channel: Filter<DeliveryChannel>,
    pub max: u32,
    pub window_ms: i64,
}

impl Cap {
    fn applies(&self, a: &Action, purpose: Purpose) -> bool {
        self.purpose.applies(&purpose)
            && self.journey.applies(&a.journey)
            && self.channel.applies(&a.channel)
    }

    fn counts(&self, s: &SentMark, a: &Action, purpose: Purpose) -> bool {
        self.purpose.counts(&s.purpose, &purpose)
            && match &self.journey {
                Filter::Any => true,
                Filter::Each => s.journey == a.journey.as_str(),
                Filter::Is(j) => s.journey == j.as_str(),
            }
            && self.channel.counts(&s.channel, &a.channel)
    }
}

/// Quiet hours: local times (seconds after midnight) in the customer's zone.
#[derive(Debug, Clone)]
pub(crate) struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
    pub default_tz: Tz,
    pub purposes: [bool; 3],
    pub channels: [bool; 8],
}

/// A suppression rule.
#[derive(Debug, Clone)]
pub(crate) enum Suppress {
    /// No actions of these purposes while the customer is in this state.
    State {
        state: EmotionalState,
        purposes: [bool; 3],
    },
    /// While the customer is inside `journey`, or it acted on the same event,
    /// the journeys in `suppresses` send nothing.
    Journey {
        journey: String,
        suppresses: Vec<String>,
    },
}

/// The compiled delivery policy (`[policy]`): immutable, shared across threads.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    pub(crate) caps: Vec<Cap>,
    pub(crate) quiet: Option<QuietHours>,
    /// Consent when the customer never said: `[purpose][channel]`.
    pub(crate) consent_default: [[bool; 8]; 3],
    /// Purposes of which one journey's actions per event win (by priority).
    pub(crate) compete: [bool; 3],
    pub(crate) suppress: Vec<Suppress>,
    pub(crate) longest_window_ms: i64,
}

impl Default for DeliveryPolicy {
    /// The policy without a `[policy]` table: no caps, no quiet hours, no
    /// suppression; one marketing action per event; consent as in
    /// [`DeliveryPolicy::default_consent`].
    fn default() -> Self {
        DeliveryPolicy {
            caps: Vec::new(),
            quiet: None,
            consent_default: Self::default_consent(),
            compete: [true, false, false],
            suppress: Vec::new(),
            longest_window_ms: 0,
        }
    }
}

/// Delivery channels where the customer is present in a session they started.
const IN_SESSION: [DeliveryChannel; 4] = [
    DeliveryChannel::Web,
    DeliveryChannel::App,
    DeliveryChannel::Chat,
    DeliveryChannel::Store,
];

impl DeliveryPolicy {
    /// Consent for a customer who never said: service and surveys granted on
    /// every channel; marketing granted only in the session the customer is
    /// in (web, app, chat, store) and denied for outreach (email, sms, push,
    /// call center) until a `consent_changed` grants it.
    pub fn default_consent() -> [[bool; 8]; 3] {
        let mut t = [[true; 8]; 3];
        for c in DeliveryChannel::ALL {
            t[Purpose::Marketing.index()][c.index()] = IN_SESSION.contains(&c);
        }
        t
    }

    /// Whether the customer consents to `purpose` on `channel`, and what that rests on.
    fn consent(&self, p: &Profile, purpose: Purpose, channel: DeliveryChannel) -> (bool, String) {
        match p.delivery.consent(purpose, channel) {
            Some(m) => (
                m.granted,
                format!(
                    "{} {} for {} on {} at {}",
                    if m.granted { "granted" } else { "withdrawn" },
                    if m.channel.is_some() {
                        "consent"
                    } else {
                        "consent (every channel)"
                    },
                    purpose.as_str(),
                    channel.as_str(),
                    time(m.at_ms)
                ),
            ),
            None => {
                let g = self.consent_default[purpose.index()][channel.index()];
                (
                    g,
                    format!(
                        "no consent given for {} on {}, default {}",
                        purpose.as_str(),
                        channel.as_str(),
                        if g { "granted" } else { "denied" }
                    ),
                )
            }
        }
    }

    /// Judges every pending candidate of `out` for the customer of `p`,
    /// pushing actions and decisions to `out`. Candidates judged at one event
    /// time compete by journey priority (higher first; equal priorities in
    /// journey id order).
    pub(crate) fn judge_all(&self, p: &mut Profile, out: &mut Output, emotion: &EmotionConfig) {
        let mut pending = std::mem::take(&mut out.pending);
        // Stable: journeys are already in id order.
        pending.sort_by(|a, b| {
            a.now_ms
                .cmp(&b.now_ms)
                .then_with(|| b.priority.cmp(&a.priority))
        });
        let mut round = Round::default();
        for c in pending.drain(..) {
            if round.at != Some(c.now_ms) {
                round = Round {
                    at: Some(c.now_ms),
                    ..Round::default()
                };
            }
            self.judge(p, c, &mut round, out, (emotion, 0));
        }
        out.pending = pending;
    }

    /// Judges one candidate, step by step: a suppression rule, consent (with
    /// the journey's fallback), frequency caps, the event's competition by
    /// priority, the control group, quiet hours; an action that passes them
    /// all is sent. Every outcome is a decision with its reason.
    fn judge(
        &self,
        p: &mut Profile,
        mut c: Candidate,
        round: &mut Round,
        out: &mut Output,
        (emotion, depth): (&EmotionConfig, u32),
    ) {
        if let Some((outcome, reason)) = self.suppressed(p, &c, round) {
            return decide(out, &c, outcome, reason);
        }
        let (granted, consent) = self.consent(p, c.purpose, c.action.channel);
        if !granted {
            return match c.fallback.take() {
                Some(fb) if depth < 8 => {
                    let reason = format!(
                        "{consent}: fallback {} on {} instead",
                        fb.action.kind.as_str(),
                        fb.action.channel.as_str()
                    );
                    let mut d = decision(&c, Outcome::Fallback, reason);
                    d.fallback_action_id = Some(fb.action.action_id.clone());
                    out.decisions.push(d);
                    self.judge(p, *fb, round, out, (emotion, depth + 1))
                }
                _ => decide(out, &c, Outcome::NoConsent, consent),
            };
        }
        let caps_note = match self.caps_used(p, &c) {
            Ok(note) => note,
            Err(reason) => return decide(out, &c, Outcome::Capped, reason),
        };
        // A deferred action already won its event's competition when it was
        // decided; at the end of quiet hours it only passes consent and caps.
        let competes = self.compete[c.purpose.index()] && !c.redo;
        if let Some(reason) = competes.then(|| outranked(round, &c)).flatten() {
            return decide(out, &c, Outcome::SuppressedPriority, reason);
        }
        if let Some(reason) = control_group(&c) {
            round.take(&c, competes);
            return decide(out, &c, Outcome::HeldOut, reason);
        }
        if let Some((mode, window, end)) = self.quiet_hours(p, &c) {
            if mode == QuietMode::Drop {
                return decide(out, &c, Outcome::DroppedQuietHours, window);
            }
            round.take(&c, competes);
            let reason = format!("{window}: deferred to {}", time(end));
            let mut d = decision(&c, Outcome::DeferredQuietHours, reason);
            d.deferred_until = Some(end);
            out.decisions.push(d);
            add_emotion_reasons(p, &mut c, emotion);
            return defer(p, c, end);
        }
        if self.caps.iter().any(|k| k.applies(&c.action, c.purpose)) {
            p.delivery.record_sent(
                SentMark {
                    at_ms: c.now_ms,
                    journey: c.action.journey.as_str().into(),
                    purpose: c.purpose,
                    channel: c.action.channel,
                },
                c.now_ms.saturating_sub(self.longest_window_ms),
            );
        }
        round.take(&c, competes);
        let reason = format!("{consent}{caps_note}");
        out.decisions.push(decision(&c, Outcome::Sent, reason));
        add_emotion_reasons(p, &mut c, emotion);
        out.actions.push(c.action);
    }

    /// The suppression rule that holds `c` back, if one does: the customer's
    /// emotional state, or a suppressing journey in progress or acting on
    /// this event.
    fn suppressed(&self, p: &Profile, c: &Candidate, round: &Round) -> Option<(Outcome, String)> {
        let (purpose, journey) = (c.purpose, c.action.journey.as_str());
        self.suppress.iter().find_map(|rule| match rule {
            Suppress::State { state, purposes }
                if *state == p.emotion.state && purposes[purpose.index()] =>
            {
                let reason = format!(
                    "customer is {} since {}: no {} actions in that state",
                    state.as_str(),
                    time(p.emotion.since_ms),
                    purpose.as_str()
                );
                Some((Outcome::SuppressedState, reason))
            }
            Suppress::Journey {
                journey: by,
                suppresses,
            } if suppresses.iter().any(|s| s == journey) => {
                let inside = p.journey_runs.iter().any(|r| r.journey == by.as_str());
                let acted = round.acted.iter().any(|j| j == by);
                (inside || acted).then(|| {
                    let reason = format!(
                        "journey {by} {} and suppresses {journey}",
                        if acted {
                            "acted on this event"
                        } else {
                            "is in progress for this customer"
                        }
                    );
                    (Outcome::SuppressedPriority, reason)
                })
            }
            _ => None,
        })
    }

    /// What the caps that apply to `c` have used (for the decision's reason),
    /// or why one of them is reached.
    fn caps_used(&self, p: &Profile, c: &Candidate) -> Result<String, String> {
        let mut note = String::new();
        for cap in self.caps.iter().filter(|k| k.applies(&c.action, c.purpose)) {
            let since = c.now_ms.saturating_sub(cap.window_ms);
            let mut count = 0u32;
            let mut oldest = i64::MAX;
            for s in p.delivery.sent.iter().filter(|s| s.at_ms > since) {
                if cap.counts(s, &c.action, c.purpose) {
                    count += 1;
                    oldest = oldest.min(s.at_ms);
                }
            }
            if count >= cap.max {
                return Err(format!(
                    "{} reached: {count} sent since {}; allowed again from {}",
                    cap.label,
                    time(oldest),
                    time(oldest.saturating_add(cap.window_ms))
                ));
            }
            let _ = write!(note, "; {}: {count} used", cap.label);
        }
        Ok(note)
    }

    /// When `c` falls in quiet hours: how they apply to it, the reason, and
    /// when they end.
    fn quiet_hours(&self, p: &Profile, c: &Candidate) -> Option<(QuietMode, String, i64)> {
        let q = self.quiet.as_ref()?;
        let mode = if c.redo { QuietMode::Defer } else { c.quiet };
        if mode == QuietMode::Ignore
            || !q.purposes[c.purpose.index()]
            || !q.channels[c.action.channel.index()]
        {
            return None;
        }
        let (tz, tz_note) = customer_zone(p, q.default_tz);
        let end = quiet_until(q, tz, c.now_ms)?;
        let window = format!(
            "{} in {}{tz_note} is within quiet hours {}-{}",
            local_time(tz, c.now_ms),
            tz.name(),
            q.start.format("%H:%M"),
            q.end.format("%H:%M")
        );
        Some((mode, window, end))
    }

    /// Takes the deferred actions of `p` due at `now_ms` (and their timers),
    /// as candidates to judge again at their due times.
    pub(crate) fn take_deferred(&self, p: &mut Profile, now_ms: i64, out: &mut Output) {
        if p.delivery.deferred.is_empty() {
            return;
        }
        let due: Vec<DeferredAction> = {
            let mut due = Vec::new();
            p.delivery.deferred.retain(|d| {
                let mine = d.due_ms <= now_ms;
                if mine {
                    due.push(d.clone());
                }
                !mine
            });
            due
        };
        for d in due {
            let key = deferred_key(&d.action.action_id);
            p.timers
                .retain(|t| !(t.key == key && t.journey == d.action.journey.as_str()));
            out.pending.push(Candidate {
                action: d.action,
                purpose: d.purpose,
                quiet: QuietMode::Defer,
                priority: 0,
                control_bp: 0,
                now_ms: d.due_ms,
                fallback: None,
                redo: true,
                emotion_reasons: false,
            });
        }
    }
}

/// Whether a timer belongs to a deferred action.
pub(crate) fn is_deferred_timer(t: &Timer) -> bool {
    t.key.starts_with(DEFERRED_KEY_PREFIX)
}

/// Which journeys acted at one event time, and which took a competing purpose.
#[derive(Default)]
struct Round {
    at: Option<i64>,
    /// Per purpose: the journey that has it, and its priority.
    slot: [Option<(String, i64)>; 3],
    /// Journeys that sent, deferred or held out an action.
    acted: Vec<String>,
}

impl Round {
    fn take(&mut self, c: &Candidate, competes: bool) {
        let j = &c.action.journey;
        if competes && self.slot[c.purpose.index()].is_none() {
            self.slot[c.purpose.index()] = Some((j.clone(), c.priority));
        }
        if !self.acted.iter().any(|a| a == j) {
            self.acted.push(j.clone());
        }
    }
}

/// Why `c` loses its event's competition for its purpose, if another
/// journey already has it.
fn outranked(round: &Round, c: &Candidate) -> Option<String> {
    let journey = c.action.journey.as_str();
    let (winner, prio) = round.slot[c.purpose.index()]
        .as_ref()
        .filter(|(w, _)| w != journey)?;
    Some(format!(
        "journey {winner} (priority {prio}) has this event's {} action; {journey} has priority {}",
        c.purpose.as_str(),
        c.priority
    ))
}

/// Why the customer of `c` is held out of its journey, if they are in the
/// journey's control group (never for a deferred action judged again).
fn control_group(c: &Candidate) -> Option<String> {
    let journey = c.action.journey.as_str();
    (!c.redo && c.control_bp > 0 && held_out(&c.action.customer_id, journey, c.control_bp)).then(
        || {
            format!(
                "customer is in the control group of {journey} ({}, bucket {} of 10000)",
                share(c.control_bp),
                control_bucket(&c.action.customer_id, journey)
            )
        },
    )
}

fn decision(c: &Candidate, outcome: Outcome, reason: String) -> Decision {
    let a = &c.action;
    Decision {
        decision_id: decision_id(&a.action_id, outcome.as_str(), c.now_ms),
        customer_id: a.customer_id.clone(),
        journey: a.journey.clone(),
        action_id: a.action_id.clone(),
        kind: a.kind,
        channel: a.channel,
        purpose: c.purpose,
        outcome,
        reason,
        event_id: a.trigger_event_id.clone(),
        event_time: a.trigger_event_time,
        decided_at: c.now_ms,
        deferred_until: None,
        fallback_action_id: None,
    }
}

/// Appends the emotional state's reasons to an action that goes out, if its
/// journey asked for them ([`Candidate::emotion_reasons`]).
fn add_emotion_reasons(p: &Profile, c: &mut Candidate, cfg: &EmotionConfig) {
    if std::mem::take(&mut c.emotion_reasons) {
        c.action.reasons.extend(emotion::current(p, cfg).reasons);
    }
}

fn decide(out: &mut Output, c: &Candidate, outcome: Outcome, reason: String) {
    out.decisions.push(decision(c, outcome, reason));
}

/// Keeps `c` in the profile with a timer due at `end`.
fn defer(p: &mut Profile, c: Candidate, end: i64) {
    p.schedule(Timer {
        journey: c.action.journey.as_str().into(),
        key: deferred_key(&c.action.action_id),
        fire_at_ms: end,
        trigger_event_id: c.action.trigger_event_id.as_str().into(),
    });
    p.delivery
        .deferred
        .retain(|d| d.action.action_id != c.action.action_id);
    p.delivery.deferred.push(DeferredAction {
        action: c.action,
        purpose: c.purpose,
        deferred_ms: c.now_ms,
        due_ms: end,
    });
}

/// The customer's time zone, or the default (with a note when theirs is unknown).
fn customer_zone(p: &Profile, default: Tz) -> (Tz, &'static str) {
    match p.delivery.timezone.as_deref() {
        None => (default, " (default time zone)"),
        Some(name) => match name.parse::<Tz>() {
            Ok(tz) => (tz, ""),
            Err(_) => (default, " (default: the customer's time zone is unknown)"),
        },
    }
}

fn local_time(tz: Tz, at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|t| t.with_timezone(&tz).format("%H:%M").to_string())
        .unwrap_or_default()
}

/// When quiet hours end, epoch ms, if `now_ms` is within them in zone `tz`.
pub(crate) fn quiet_until(q: &QuietHours, tz: Tz, now_ms: i64) -> Option<i64> {
    let local = chrono::DateTime::from_timestamp_millis(now_ms)?.with_timezone(&tz);
    let t = local.time();
    let overnight = q.start > q.end;
    let quiet = if overnight {
        t >= q.start || t < q.end
    } else {
        q.start <= t && t < q.end
    };
    if !quiet {
        return None;
    }
    let mut day = local.date_naive();
    if overnight && t >= q.start {
        day = day.succ_opt()?;
    }
    let end = day.and_time(q.end);
    // In a daylight-saving gap the end does not exist locally: the first
    // minute after the gap is the end.
    (0..=180)
        .find_map(|m| {
            tz.from_local_datetime(&(end + chrono::Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.timestamp_millis())
}

/// RFC 3339 in UTC, for reasons.
pub(crate) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

/// A share in basis points, as people write it: `10%`, `2.5%`.
pub(crate) fn share(bp: u16) -> String {
    if bp.is_multiple_of(100) {
        format!("{}%", bp / 100)
    } else {
        format!("{}%", f64::from(bp) / 100.0)
    }
}

/// The control-group bucket of a customer for a journey, 0..10 000: FNV-1a
/// (64 bit) of the customer id, a zero byte and the journey id, mixed with
/// the SplitMix64 finaliser. Fixed, so the same customers are held out on
/// every run, machine and version.
pub fn control_bucket(customer_id: &str, journey: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in customer_id.bytes().chain([0]).chain(journey.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % 10_000) as u32
}

/// Whether the customer is in a control group of `share_bp` basis points
/// (1000 = 10%) of `journey`.
pub fn held_out(customer_id: &str, journey: &str, share_bp: u16) -> bool {
    control_bucket(customer_id, journey) < u32::from(share_bp)
}

/// Parses a control-group share such as `"10%"` or `"2.5%"` into basis points.
pub(crate) fn parse_share(s: &str) -> Result<u16, String> {
    let Some(number) = s.trim().strip_suffix('%') else {
        return Err(format!(
            "control group {s:?} is not a share such as \"10%\""
        ));
    };
    let v: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("control group {s:?} is not a share such as \"10%\""))?;
    if !(0.0..=100.0).contains(&v) || !v.is_finite() {
        return Err(format!("control group share {s:?} is outside 0-100%"));
    }
    Ok((v * 100.0).round() as u16)
}

/// Parses `"21:00"` (or `"21:00:30"`).
pub(crate) fn parse_clock(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
        .ok()
        .filter(|t| t.nanosecond() == 0)
}

/// A default label for a cap, e.g. `marketing cap 3 per 7d`.
pub(crate) fn cap_label(
    name: Option<&str>,
    purpose: &Filter<Purpose>,
    journey: &Filter<String>,
    channel: &Filter<DeliveryChannel>,
    max: u32,
    window: &str,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(n) = name {
        parts.push(format!("{n:?}"));
    }
    match purpose {
        Filter::Is(p) => parts.push(p.as_str().into()),
        Filter::Each => parts.push("per-purpose".into()),
        Filter::Any => {}
    }
    match journey {
        Filter::Is(j) => parts.push(format!("journey {j}")),
        Filter::Each => parts.push("per-journey".into()),
        Filter::Any => {}
    }
    match channel {
        Filter::Is(c) => parts.push(c.as_str().into()),
        Filter::Each => parts.push("per-channel".into()),
        Filter::Any => {}
    }
    if parts.is_empty() {
        parts.push("overall".into());
    }
    format!("{} cap {max} per {window}", parts.join(" "))
}
