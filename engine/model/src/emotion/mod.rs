//! Recognising a customer's emotional state from weighted signals, with hysteresis.
//!
//! # The model
//!
//! Each touchpoint updates a handful of **signals** ([`Signal`]): observations
//! such as "help searches within 48h" or "latest NPS answer", each turned into a
//! **value** between 0 (absent) and 1 (fully present) by a fixed, documented
//! rule (see [`Signal::value`]). Each emotional state has a **score**: the sum
//! over the signals it weighs of `weight x value`, with the weights in
//! [`EmotionConfig`]. Every concept has exactly one definition here (what a
//! detractor answer is, what counts as hesitating over a product); journeys,
//! actions and the profile API all read the result instead of re-deriving it.
//!
//! The state is **stored in the profile** ([`EmotionTrack`]) and moved only by
//! [`update`], which the engine calls after applying each touchpoint and before
//! evaluating journeys:
//!
//! - From `neutral`, a state is **entered** when its score reaches its `enter`
//!   threshold. When several qualify, the one of highest priority wins:
//!   `invested_detractor` > `anxious` > `uncertain` > `invested_fan` >
//!   `wants_to_feel_special` (how much each should change our response: an upset
//!   customer first, then one who needs the simplest path and no marketing).
//! - The current state is **kept** while its score stays at or above its lower
//!   `leave` threshold, and in any case until `min_dwell` has passed since it was
//!   entered, so one calm event does not flip an anxious customer back and forth.
//! - It is **left** when its score is below `leave` after the dwell: to the
//!   highest-priority state whose score reaches `enter`, else to `neutral`.
//! - A state of **higher priority** that reaches its `enter` threshold takes over
//!   at once, dwell or not: a hesitating customer who answers NPS 2 is a
//!   detractor now, not in two hours.
//!
//! Time is event time: windows end at the touchpoint's time (never moving
//! backwards for a late event), so replaying history gives the same states as
//! live processing, and signals fade as later events arrive.
//!
//! Every state comes with the signals that produced it ([`current`]), and those
//! reasons travel with any action it shapes.

mod config;
mod signal;
mod track;

pub use self::config::{EmotionConfig, EmotionConfigError, StateRule, PRIORITY};
pub use self::signal::Signal;
pub use self::track::EmotionTrack;

use crate::action::{EmotionalState, Reason};
use crate::profile::Profile;
use crate::touchpoint::{Channel, EventType};

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

/// A change of emotional state, returned by [`update`] (the engine counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before.
    pub from: EmotionalState,
    /// The state after.
    pub to: EmotionalState,
}

/// One signal's part in a state's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// The signal.
    pub signal: Signal,
    /// What was observed (count, score, seconds, amount; see [`Signal`]).
    pub observed: f64,
    /// Its value, 0 to 1.
    pub value: f64,
    /// Its weight in the state.
    pub weight: f64,
    /// `weight x value`.
    pub contribution: f64,
}

/// The stored state and the signals behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The state.
    pub state: EmotionalState,
    /// Event time it was entered, epoch ms.
    pub since_ms: i64,
    /// Its score at the latest evaluation (0 for `neutral`).
    pub score: f64,
    /// The signals that contribute to the score, largest contribution first.
    pub signals: Vec<Contribution>,
    /// The same signals as reasons, for actions: condition and observed value.
    pub reasons: Vec<Reason>,
}

/// Notes touchpoint `tp` (applied to the profile just before) as a day of
/// customer activity and re-evaluates the state at its event time ([`update`]).
/// The engine calls this after each touchpoint is applied and before journeys
/// evaluate it.
pub fn update_on_touchpoint(
    p: &mut Profile,
    tp: &crate::touchpoint::Touchpoint,
    cfg: &EmotionConfig,
) -> Option<Transition> {
    if tp.channel != Channel::System {
        p.emotion.note_active(tp.event_time);
    }
    evaluate(p, tp.event_time, cfg, Some((tp.event_type, tp.sku())))
}

/// Re-evaluates the customer's signals at event time `now_ms` and moves the
/// stored state by the hysteresis rules (see the module documentation). After
/// a touchpoint, use [`update_on_touchpoint`], which also counts the day as
/// active.
///
/// A `now_ms` earlier than the latest evaluation (a late event) is treated as
/// the latest evaluation's time: state time never runs backwards. Returns the
/// transition when the state changed. Allocates nothing.
pub fn update(p: &mut Profile, now_ms: i64, cfg: &EmotionConfig) -> Option<Transition> {
    evaluate(p, now_ms, cfg, None)
}

/// How long (event time) a touchpoint may re-observe only the signals its
/// type moves before every signal is observed again, so windows that expire
/// are seen within this much of their edge.
pub const REFRESH_MS: i64 = 15 * 60_000;

/// [`update`], observing every signal, or with `event` (the type and product
/// of the touchpoint just applied) only the cheap ones and those `event` can
/// move, until [`REFRESH_MS`] has passed since every signal was last observed.
fn evaluate(
    p: &mut Profile,
    now_ms: i64,
    cfg: &EmotionConfig,
    event: Option<(EventType, Option<&str>)>,
) -> Option<Transition> {
    let now = now_ms.max(p.emotion.evaluated_ms);
    let track = &p.emotion;
    let full = event.is_none() || track.evaluated_ms == 0 || now - track.refreshed_ms >= REFRESH_MS;
    let mut observed = Signal::ALL.map(|s| track.observed(s));
    observe(&mut observed, p, now, cfg, if full { None } else { event });
    let track = &mut p.emotion;
    track.observed = observed.map(|v| v as f32);
    track.evaluated_ms = now;
    if full {
        track.refreshed_ms = now;
    }
    let from = track.state;
    let to = next_state(track, now, cfg);
    if to == from {
        return None;
    }
    track.state = to;
    track.since_ms = now;
    Some(Transition { from, to })
}

/// The stored state with its contributing signals and their values, for the
/// profile API, action reasons and journey conditions. Nothing is recomputed
/// from the profile's history: it reads what the latest [`update`] observed.
pub fn current(p: &Profile, cfg: &EmotionConfig) -> Assessment {
    let track = &p.emotion;
    let mut signals = Vec::new();
    if let Some(rule) = cfg.rule(track.state) {
        for &(signal, weight) in &rule.weights {
            let observed = track.observed(signal);
            let value = signal.value(observed, cfg);
            let contribution = weight * value;
            if contribution > 0.0 {
                signals.push(Contribution {
                    signal,
                    observed,
                    value,
                    weight,
                    contribution,
                });
            }
        }
    }
    signals.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    let reasons = signals
        .iter()
        .map(|c| {
            Reason::new(
                format!(
                    "{} ({}, weight {}, contributes {:.2})",
                    c.signal.describe(cfg),
                    c.signal.name(),
                    c.weight,
                    c.contribution
                ),
                show(c.signal, c.observed),
            )
        })
        .collect();
    Assessment {
        state: track.state,
        since_ms: track.since_ms,
        score: signals.iter().map(|c| c.contribution).sum(),
        signals,
        reasons,
    }
}

/// The score of `state` at the latest evaluation (0 for `neutral`).
pub fn score(p: &Profile, state: EmotionalState, cfg: &EmotionConfig) -> f64 {
    cfg.rule(state).map_or(0.0, |r| r.score(&p.emotion, cfg))
}

/// The value (0 to 1) of `signal` at the latest evaluation.
pub fn signal_value(p: &Profile, signal: Signal, cfg: &EmotionConfig) -> f64 {
    signal.value(p.emotion.observed(signal), cfg)
}

/// An observation as reasons show it: whole numbers without decimals.
fn show(signal: Signal, observed: f64) -> String {
    if signal.is_whole() {
        format!("{observed:.0}")
    } else {
        format!("{observed:.2}")
    }
}

/// The state after an evaluation whose observations are in `track`.
fn next_state(track: &EmotionTrack, now: i64, cfg: &EmotionConfig) -> EmotionalState {
    let qualifying = cfg
        .rules
        .iter()
        .position(|r| r.score(track, cfg) >= r.enter);
    let best = qualifying.map_or(EmotionalState::Neutral, |i| cfg.rules[i].state);
    let Some(held) = cfg.rules.iter().position(|r| r.state == track.state) else {
        return best;
    };
    match qualifying {
        // A state of higher priority takes over at once.
        Some(i) if i < held => best,
        _ => {
            let rule = &cfg.rules[held];
            let dwelling = now.saturating_sub(track.since_ms) < rule.min_dwell_ms;
            if dwelling || rule.score(track, cfg) >= rule.leave {
                rule.state
            } else {
                best
            }
        }
    }
}

/// Observes the signals at event time `now` into `o` (indexed by
/// [`Signal::index`]): every signal, or with `only` the cheap ones and those a
/// touchpoint of that type can move (the scans of products and windows are
/// the costly part, and most touchpoints are page views).
fn observe(
    o: &mut Observed,
    p: &Profile,
    now: i64,
    cfg: &EmotionConfig,
    only: Option<(EventType, Option<&str>)>,
) {
    let look = Look { p, now, only };
    browsing(o, &look, cfg);
    contacts(o, &look, cfg);
    feedback(o, &look, cfg);
    // Engagement: distinct days with customer touchpoints.
    o[Signal::Engagement.index()] = f64::from(active_days(p, now, cfg));
    value(o, &look, cfg);
}

/// The value of each signal, indexed by [`Signal::index`].
type Observed = [f64; Signal::ALL.len()];

/// What an observation reads: the profile at `now`, and the event that moved
/// it (`None`: every signal is observed afresh).
struct Look<'a> {
    p: &'a Profile,
    now: i64,
    only: Option<(EventType, Option<&'a str>)>,
}

impl Look<'_> {
    /// Whether signal `s` may have moved since it was last observed.
    fn moves(&self, s: Signal) -> bool {
        self.only.is_none_or(|(t, _)| s.moved_by(t))
    }

    /// Events of type `t` from `since` to now.
    fn count(&self, t: EventType, since: i64) -> f64 {
        self.p.windows.count(t, since, self.now) as f64
    }
}

/// Browsing: views of each product after its latest purchase, reviews read and
/// carts left, within the browse window.
fn browsing(o: &mut Observed, l: &Look<'_>, cfg: &EmotionConfig) {
    use EventType as E;
    let (p, now) = (l.p, l.now);
    let browse = now - cfg.browse_window_ms;
    let views_of = |pi: &crate::profile::ProductInterest| pi.unbought_views(browse, now);
    if let Some((E::ProductView, Some(sku))) = l.only {
        // One more view of one product: only its count moved.
        if let Some(views) = p.products.iter().find(|pi| pi.sku == sku).map(views_of) {
            let most = &mut o[Signal::RepeatViews.index()];
            *most = most.max(views as f64);
            if views == 1 {
                o[Signal::ComparedProducts.index()] += 1.0;
            }
        }
    } else if l.moves(Signal::RepeatViews) {
        let (mut most, mut products) = (0usize, 0usize);
        for pi in &p.products {
            let views = views_of(pi);
            most = most.max(views);
            products += usize::from(views > 0);
        }
        o[Signal::RepeatViews.index()] = most as f64;
        o[Signal::ComparedProducts.index()] = products as f64;
    }
    let reviews = p
        .review_reads_ms
        .iter()
        .filter(|&&t| t >= browse && t <= now)
        .count();
    o[Signal::ReviewsRead.index()] = reviews as f64;
    if l.moves(Signal::CartsWithoutPurchase) {
        o[Signal::CartsWithoutPurchase.index()] = l.count(
            E::AddToCart,
            browse.max(p.last_purchase_ms.saturating_add(1)),
        );
    }
}

/// Contacts: help searches, repeated calls and chats, call waits and
/// abandoned checkouts within the contact window.
fn contacts(o: &mut Observed, l: &Look<'_>, cfg: &EmotionConfig) {
    use EventType as E;
    let contact = l.now - cfg.contact_window_ms;
    if l.moves(Signal::HelpSearches) {
        o[Signal::HelpSearches.index()] = l.count(E::HelpSearch, contact);
    }
    if l.moves(Signal::RepeatContacts) {
        o[Signal::RepeatContacts.index()] =
            l.count(E::CallStarted, contact) + l.count(E::ChatHandoff, contact);
    }
    let wait =
        l.p.call_waits
            .iter()
            .filter(|w| w.at_ms >= contact && w.at_ms <= l.now)
            .map(|w| w.seconds)
            .max()
            .unwrap_or(0);
    o[Signal::CallWait.index()] = f64::from(wait.max(0));
    if l.moves(Signal::AbandonedCheckouts) {
        o[Signal::AbandonedCheckouts.index()] = l.count(E::CheckoutAbandoned, contact);
    }
}

/// Feedback: survey answers and chat sentiment while recent enough.
fn feedback(o: &mut Observed, l: &Look<'_>, cfg: &EmotionConfig) {
    let p = l.p;
    let feedback = l.now - cfg.feedback_window_ms;
    let recent = |s: Option<crate::profile::Score>| {
        s.filter(|s| s.at_ms >= feedback)
            .map_or(-1.0, |s| f64::from(s.score))
    };
    let nps = recent(p.nps);
    let csat = recent(p.csat);
    let sentiment = if p.sentiment_ms > 0 && p.sentiment_ms >= feedback {
        p.sentiment
    } else {
        0.0
    };
    for (s, v) in [
        (Signal::NpsDetractor, nps),
        (Signal::NpsPromoter, nps),
        (Signal::CsatLow, csat),
        (Signal::CsatHigh, csat),
        (Signal::CesLow, recent(p.ces)),
        (Signal::NegativeSentiment, sentiment),
        (Signal::PositiveSentiment, sentiment),
    ] {
        o[s.index()] = v;
    }
}

/// Value: lifetime value and purchases within the order window.
fn value(o: &mut Observed, l: &Look<'_>, cfg: &EmotionConfig) {
    o[Signal::LifetimeValue.index()] = l.p.lifetime_value;
    if l.moves(Signal::OrderFrequency) {
        o[Signal::OrderFrequency.index()] =
            l.count(EventType::Purchase, l.now - cfg.order_window_ms);
    }
}

/// Days (counted back from `now`'s day) with at least one touchpoint on a
/// channel other than `system`, within the engagement window.
fn active_days(p: &Profile, now: i64, cfg: &EmotionConfig) -> u32 {
    p.emotion.days_active(now - cfg.engagement_window_ms, now)
}

#[cfg(test)]
mod tests;
