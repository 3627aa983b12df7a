//! `[emotion]`: windows, weights and thresholds of the emotional states.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::signal::span;
use super::{EmotionTrack, Signal, DAY_MS, HOUR_MS};
use crate::action::EmotionalState;
use crate::duration::parse_duration;
use crate::window::RETENTION_MS;

/// How one state is entered, kept and left, and what it weighs.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRule {
    /// The state.
    pub state: EmotionalState,
    /// Score at or above which the state is entered.
    pub enter: f64,
    /// Score at or above which the state, once entered, is kept (at most `enter`).
    pub leave: f64,
    /// The state is kept at least this long after it was entered, ms.
    pub min_dwell_ms: i64,
    /// Weight per signal, in [`Signal`] order as read from configuration;
    /// signals not listed weigh 0. Any signal may be weighed by any state.
    pub weights: Vec<(Signal, f64)>,
}

impl StateRule {
    /// The score of this state for observations `track`: sum of weight x value.
    pub fn score(&self, track: &EmotionTrack, cfg: &EmotionConfig) -> f64 {
        self.weights
            .iter()
            .map(|&(s, w)| w * s.value(track.observed(s), cfg))
            .sum()
    }

    /// The weight of `signal` (0 when not weighed).
    pub fn weight(&self, signal: Signal) -> f64 {
        self.weights
            .iter()
            .find(|(s, _)| *s == signal)
            .map_or(0.0, |&(_, w)| w)
    }
}

/// Windows, weights and thresholds of the emotional states (`[emotion]` in
/// `rapport.toml`). The defaults work out of the box; see `deploy/rapport.toml`.
///
/// Read from configuration through its TOML shape (durations as `"48h"`,
/// weights by signal name); reading refuses unknown keys and signal names and
/// runs [`EmotionConfig::validate`], so a bad configuration stops the engine at
/// start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawConfig", into = "RawConfig")]
pub struct EmotionConfig {
    /// Window of the browsing signals (views, comparisons, reviews, carts), ms.
    pub browse_window_ms: i64,
    /// Window of the contact signals (help searches, calls, waits, abandons), ms.
    pub contact_window_ms: i64,
    /// How long a survey answer or chat sentiment counts, ms.
    pub feedback_window_ms: i64,
    /// Window of `engagement`, ms.
    pub engagement_window_ms: i64,
    /// Window of `order_frequency`, ms.
    pub order_window_ms: i64,
    /// Lifetime value at which `lifetime_value` is fully present (currency as sent).
    pub lifetime_value_full: f64,
    /// One rule per state, in priority order: detractor, anxious, uncertain, fan,
    /// special.
    pub rules: [StateRule; 5],
}

/// The states in priority order, highest first.
pub const PRIORITY: [EmotionalState; 5] = [
    EmotionalState::InvestedDetractor,
    EmotionalState::Anxious,
    EmotionalState::Uncertain,
    EmotionalState::InvestedFan,
    EmotionalState::WantsToFeelSpecial,
];

impl Default for EmotionConfig {
    fn default() -> Self {
        use Signal::*;
        let rule = |state, enter, leave, dwell_h: i64, weights: &[(Signal, f64)]| StateRule {
            state,
            enter,
            leave,
            min_dwell_ms: dwell_h * HOUR_MS,
            weights: weights.to_vec(),
        };
        EmotionConfig {
            browse_window_ms: 72 * HOUR_MS,
            contact_window_ms: 48 * HOUR_MS,
            feedback_window_ms: 30 * DAY_MS,
            engagement_window_ms: 30 * DAY_MS,
            order_window_ms: 90 * DAY_MS,
            lifetime_value_full: 1_000.0,
            rules: [
                rule(
                    EmotionalState::InvestedDetractor,
                    0.5,
                    0.25,
                    24,
                    &[
                        (NpsDetractor, 1.0),
                        (CsatLow, 1.0),
                        (CesLow, 1.0),
                        (NegativeSentiment, 1.0),
                    ],
                ),
                rule(
                    EmotionalState::Anxious,
                    1.0,
                    0.5,
                    6,
                    &[
                        (HelpSearches, 1.0),
                        (RepeatContacts, 1.0),
                        (CallWait, 1.0),
                        (AbandonedCheckouts, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::Uncertain,
                    1.0,
                    0.5,
                    2,
                    &[
                        (RepeatViews, 1.0),
                        (ComparedProducts, 0.5),
                        (ReviewsRead, 0.5),
                        (CartsWithoutPurchase, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::InvestedFan,
                    1.0,
                    0.5,
                    24,
                    &[
                        (NpsPromoter, 1.0),
                        (CsatHigh, 0.5),
                        (PositiveSentiment, 0.5),
                        (Engagement, 0.5),
                    ],
                ),
                rule(
                    EmotionalState::WantsToFeelSpecial,
                    1.0,
                    0.75,
                    24,
                    &[(LifetimeValue, 1.0), (OrderFrequency, 1.0)],
                ),
            ],
        }
    }
}

/// Why an emotion configuration is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmotionConfigError {
    /// A weight names no signal.
    #[error("emotion.{state}.weights: unknown signal `{name}`; signals are: {known}")]
    UnknownSignal {
        /// The state section.
        state: &'static str,
        /// The name given.
        name: String,
        /// Every signal name.
        known: String,
    },
    /// A signal weighed twice in one state.
    #[error("emotion.{state}.weights: `{signal}` is weighed twice")]
    DuplicateSignal {
        /// The state section.
        state: &'static str,
        /// The signal.
        signal: &'static str,
    },
    /// A negative or non-finite weight.
    #[error("emotion.{state}.weights.{signal} = {weight}: weights must be finite and >= 0")]
    BadWeight {
        /// The state section.
        state: &'static str,
        /// The signal.
        signal: &'static str,
        /// The weight given.
        weight: f64,
    },
    /// `enter` not a positive number: the state would hold with no signal at all.
    #[error("emotion.{state}.enter = {enter}: must be a finite number > 0")]
    BadEnter {
        /// The state section.
        state: &'static str,
        /// The threshold given.
        enter: f64,
    },
    /// `leave` above `enter`, negative or not finite.
    #[error("emotion.{state}.leave = {leave}: must be between 0 and enter ({enter}), so a state once entered is kept while its score is between the two")]
    BadLeave {
        /// The state section.
        state: &'static str,
        /// The leave threshold given.
        leave: f64,
        /// The enter threshold.
        enter: f64,
    },
    /// A negative dwell.
    #[error("emotion.{state}.min_dwell: must not be negative")]
    BadDwell {
        /// The state section.
        state: &'static str,
    },
    /// A duration that does not parse.
    #[error("emotion.{key}: {message}")]
    BadDuration {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A window of zero, or longer than the profile keeps counts for.
    #[error("emotion.{key} = {value}: windows must be longer than 0 and at most 92d, what the profile keeps")]
    BadWindow {
        /// The key.
        key: &'static str,
        /// The window given.
        value: String,
    },
    /// `lifetime_value_full` not a positive number.
    #[error("emotion.lifetime_value_full = {0}: must be a finite number > 0")]
    BadLifetimeValue(f64),
    /// The rules are not one per state in priority order.
    #[error("emotion: the state rules must be one per state, in the order {expected}")]
    RuleOrder {
        /// The expected order.
        expected: String,
    },
}

impl EmotionConfig {
    /// Checks thresholds, weights and windows, naming the key and what to change.
    pub fn validate(&self) -> Result<(), EmotionConfigError> {
        for (key, ms) in [
            ("browse_window", self.browse_window_ms),
            ("contact_window", self.contact_window_ms),
            ("feedback_window", self.feedback_window_ms),
            ("engagement_window", self.engagement_window_ms),
            ("order_window", self.order_window_ms),
        ] {
            if ms <= 0 || ms > RETENTION_MS {
                return Err(EmotionConfigError::BadWindow {
                    key,
                    value: if ms < 0 { format!("{ms}ms") } else { span(ms) },
                });
            }
        }
        if !(self.lifetime_value_full.is_finite() && self.lifetime_value_full > 0.0) {
            return Err(EmotionConfigError::BadLifetimeValue(
                self.lifetime_value_full,
            ));
        }
        if self.rules.iter().map(|r| r.state).ne(PRIORITY) {
            return Err(EmotionConfigError::RuleOrder {
                expected: PRIORITY.map(EmotionalState::as_str).join(", "),
            });
        }
        for r in &self.rules {
            let state = r.state.as_str();
            if !(r.enter.is_finite() && r.enter > 0.0) {
                return Err(EmotionConfigError::BadEnter {
                    state,
                    enter: r.enter,
                });
            }
            if !(r.leave.is_finite() && r.leave >= 0.0 && r.leave <= r.enter) {
                return Err(EmotionConfigError::BadLeave {
                    state,
                    leave: r.leave,
                    enter: r.enter,
                });
            }
            if r.min_dwell_ms < 0 {
                return Err(EmotionConfigError::BadDwell { state });
            }
            for (i, &(signal, weight)) in r.weights.iter().enumerate() {
                if !(weight.is_finite() && weight >= 0.0) {
                    return Err(EmotionConfigError::BadWeight {
                        state,
                        signal: signal.name(),
                        weight,
                    });
                }
                if r.weights[..i].iter().any(|(s, _)| *s == signal) {
                    return Err(EmotionConfigError::DuplicateSignal {
                        state,
                        signal: signal.name(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The rule of `state` (`None` for `neutral`, which has none).
    pub fn rule(&self, state: EmotionalState) -> Option<&StateRule> {
        self.rules.iter().find(|r| r.state == state)
    }

    /// The rule of `state`, to change it (`None` for `neutral`).
    pub fn rule_mut(&mut self, state: EmotionalState) -> Option<&mut StateRule> {
        self.rules.iter_mut().find(|r| r.state == state)
    }
}

/// `[emotion]` as written in TOML: every key optional, defaults filled in.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    browse_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contact_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feedback_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    engagement_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    order_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lifetime_value_full: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invested_detractor: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    anxious: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncertain: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invested_fan: Option<RawRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wants_to_feel_special: Option<RawRule>,
}

/// One `[emotion.<state>]` section. Weights given replace that state's
/// default weights as a whole.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    enter: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leave: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_dwell: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weights: Option<BTreeMap<String, f64>>,
}

fn duration(key: &str, text: Option<String>, default: i64) -> Result<i64, EmotionConfigError> {
    match text {
        None => Ok(default),
        Some(t) => parse_duration(&t).map_err(|message| EmotionConfigError::BadDuration {
            key: key.to_owned(),
            message,
        }),
    }
}

impl TryFrom<RawConfig> for EmotionConfig {
    type Error = EmotionConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let mut c = EmotionConfig::default();
        c.browse_window_ms = duration("browse_window", raw.browse_window, c.browse_window_ms)?;
        c.contact_window_ms = duration("contact_window", raw.contact_window, c.contact_window_ms)?;
        c.feedback_window_ms =
            duration("feedback_window", raw.feedback_window, c.feedback_window_ms)?;
        c.engagement_window_ms = duration(
            "engagement_window",
            raw.engagement_window,
            c.engagement_window_ms,
        )?;
        c.order_window_ms = duration("order_window", raw.order_window, c.order_window_ms)?;
        if let Some(v) = raw.lifetime_value_full {
            c.lifetime_value_full = v;
        }
        let sections = [
            raw.invested_detractor,
            raw.anxious,
            raw.uncertain,
            raw.invested_fan,
            raw.wants_to_feel_special,
        ];
        for (rule, section) in c.rules.iter_mut().zip(sections) {
            let Some(s) = section else { continue };
            let state = rule.state.as_str();
            if let Some(v) = s.enter {
                rule.enter = v;
            }
            if let Some(v) = s.leave {
                rule.leave = v;
            }
            rule.min_dwell_ms = duration(
                &format!("{state}.min_dwell"),
                s.min_dwell,
                rule.min_dwell_ms,
            )?;
            if let Some(weights) = s.weights {
                rule.weights = weights
                    .into_iter()
                    .map(|(name, w)| match Signal::from_name(&name) {
                        Some(signal) => Ok((signal, w)),
                        None => Err(EmotionConfigError::UnknownSignal {
                            state,
                            name,
                            known: Signal::ALL.map(Signal::name).join(", "),
                        }),
                    })
                    .collect::<Result<_, _>>()?;
                // In signal order, as the defaults are, so equal weights compare equal.
                rule.weights.sort_by_key(|&(signal, _)| signal);
            }
        }
        c.validate()?;
        Ok(c)
    }
}

impl From<EmotionConfig> for RawConfig {
    fn from(c: EmotionConfig) -> Self {
        let d = |ms: i64| Some(span(ms));
        let mut sections = c.rules.into_iter().map(|r| {
            Some(RawRule {
                enter: Some(r.enter),
                leave: Some(r.leave),
                min_dwell: d(r.min_dwell_ms),
                weights: Some(
                    r.weights
                        .into_iter()
                        .map(|(s, w)| (s.name().to_owned(), w))
                        .collect(),
                ),
            })
        });
        let mut next = || sections.next().flatten();
        RawConfig {
            browse_window: d(c.browse_window_ms),
            contact_window: d(c.contact_window_ms),
            feedback_window: d(c.feedback_window_ms),
            engagement_window: d(c.engagement_window_ms),
            order_window: d(c.order_window_ms),
            lifetime_value_full: Some(c.lifetime_value_full),
            invested_detractor: next(),
            anxious: next(),
            uncertain: next(),
            invested_fan: next(),
            wants_to_feel_special: next(),
        }
    }
}
