//! Rapport's journey language: journeys written as TOML files with CEL
//! conditions, loaded and type-checked once, then evaluated per event and per
//! due wait against the customer's profile.
//!
//! Every action a journey decides passes the delivery policy ([`policy`]:
//! consent, caps, quiet hours, suppression, priority, control groups) in the
//! same call, and every judgement is a [`Decision`] with its reason.
//!
//! The crate is pure: no Kafka, no RocksDB, no clock. Journey state (who is in
//! which journey, waits, re-entry history) and the policy's bookkeeping live in
//! [`rapport_model::Profile`], so the runtime commits, restores and replays
//! them with the rest of the customer's state. See `deploy/journeys/README.md` for the language reference.
#![warn(missing_docs)]

mod bind;
mod cel_text;
mod check;
mod compile;
pub mod duration;
pub mod error;
mod format;
pub mod guard;
pub mod journey;
mod load;
mod load_policy;
mod native;
pub mod policy;
pub mod run;
pub mod schema;
pub mod symbols;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rapport_model::emotion::EmotionConfig;

pub use duration::cel_duration_ms;
pub use error::{LoadError, Problem};
pub use journey::{Journey, Purpose, QuietMode, Reentry};
pub use policy::{Decision, DeliveryPolicy, Outcome, Output};
pub use run::{EvalError, Report};

/// The journey files shipped with Rapport (`deploy/journeys/`), embedded so
/// they can be loaded without the source tree: (file name, contents). One
/// set, with the delivery policy (`policy.toml`) that names its journeys.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "policy.toml",
        include_str!("../../../deploy/journeys/policy.toml"),
    ),
    (
        "hesitation_guide.toml",
        include_str!("../../../deploy/journeys/hesitation_guide.toml"),
    ),
    (
        "recovery_offer.toml",
        include_str!("../../../deploy/journeys/recovery_offer.toml"),
    ),
    (
        "post_delivery_survey.toml",
        include_str!("../../../deploy/journeys/post_delivery_survey.toml"),
    ),
    (
        "closed_loop_alert.toml",
        include_str!("../../../deploy/journeys/closed_loop_alert.toml"),
    ),
    (
        "exclusive_treatment.toml",
        include_str!("../../../deploy/journeys/exclusive_treatment.toml"),
    ),
    (
        "cart_reassurance.toml",
        include_str!("../../../deploy/journeys/cart_reassurance.toml"),
    ),
    (
        "anxious_support.toml",
        include_str!("../../../deploy/journeys/anxious_support.toml"),
    ),
    (
        "ambassador_invitation.toml",
        include_str!("../../../deploy/journeys/ambassador_invitation.toml"),
    ),
];

/// A set of checked, compiled journeys, ready to evaluate. Shareable across
/// threads: compiled programs are immutable.
pub struct CompiledJourneys {
    journeys: Vec<Journey>,
    env: Arc<cel::Env>,
    emotion: EmotionConfig,
    policy: DeliveryPolicy,
}

impl std::fmt::Debug for CompiledJourneys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledJourneys")
            .field(
                "journeys",
                &self.journeys.iter().map(|j| &j.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl CompiledJourneys {
    /// Loads the journey files matching `patterns`, globs relative to `base`
    /// (e.g. `["journeys/*.toml"]`). Returns every problem of every file.
    pub fn load(base: &Path, patterns: &[&str]) -> Result<Self, LoadError> {
        let env = bind::environment();
        let loaded = load::load_globs(&env, base, patterns)?;
        Ok(Self::new(loaded, env))
    }

    /// Compiles journey files given as (path for messages, contents).
    pub fn from_sources(sources: &[(PathBuf, String)]) -> Result<Self, LoadError> {
        let env = bind::environment();
        let loaded = load::load_sources(&env, sources)?;
        Ok(Self::new(loaded, env))
    }

    /// The journeys shipped with Rapport ([`SHIPPED`]).
    pub fn shipped() -> Result<Self, LoadError> {
        let sources: Vec<(PathBuf, String)> = SHIPPED
            .iter()
            .map(|(name, text)| (Path::new("shipped").join(name), (*text).to_owned()))
            .collect();
        Self::from_sources(&sources)
    }

    fn new(loaded: load::Loaded, env: Arc<cel::Env>) -> Self {
        CompiledJourneys {
            journeys: loaded.journeys,
            env,
            emotion: EmotionConfig::default(),
            policy: loaded.policy,
        }
    }

    /// The delivery policy every action passes: the `[policy]` table of the
    /// files, or [`DeliveryPolicy::default`] when they have none.
    pub fn policy(&self) -> &DeliveryPolicy {
        &self.policy
    }

    /// Uses this emotional-state configuration: the weights behind
    /// `profile.emotion_signals.*` and `profile.emotion_scores.*`, and the
    /// reasons each action carries. The state itself is read from the profile,
    /// where [`rapport_model::emotion::update`] keeps it; pass the same
    /// configuration there ([`CompiledJourneys::emotion`]).
    pub fn with_emotion(mut self, emotion: EmotionConfig) -> Self {
        self.emotion = emotion;
        self
    }

    /// The emotional-state configuration these journeys read signals with.
    pub fn emotion(&self) -> &EmotionConfig {
        &self.emotion
    }

    /// The journeys, ordered by id (the order they are evaluated in).
    pub fn journeys(&self) -> &[Journey] {
        &self.journeys
    }

    /// The journey with id `id`.
    pub fn journey(&self, id: &str) -> Option<&Journey> {
        self.journeys.iter().find(|j| j.id == id)
    }
}

#[cfg(test)]
mod tests;
