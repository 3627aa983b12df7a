//! The journey file format as written: TOML tables with spans, before checking.
//!
//! Strings that need checking (kinds, channels, durations, expressions) are
//! kept as `Spanned<String>` so that every problem points at its place in the file.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// One `[[journey]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJourney {
    pub id: Spanned<String>,
    pub version: Spanned<i64>,
    #[serde(default)]
    pub description: Option<String>,
    pub trigger: Spanned<RawTrigger>,
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    #[serde(default)]
    pub exit_when: Option<Spanned<String>>,
    #[serde(default)]
    pub reentry: Option<Spanned<RawReentry>>,
    #[serde(default)]
    pub explain_when: Option<bool>,
    #[serde(default)]
    pub reason: Vec<RawReason>,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    pub events: Vec<Spanned<String>>,
    #[serde(default)]
    pub channels: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReentry {
    #[serde(default)]
    pub never: Option<Spanned<bool>>,
    #[serde(default)]
    pub after: Option<Spanned<String>>,
    #[serde(default)]
    pub at_most: Option<Spanned<i64>>,
    #[serde(default)]
    pub per: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReason {
    pub condition: Spanned<String>,
    pub value: Spanned<String>,
    #[serde(default)]
    pub when: Option<Spanned<String>>,
}

/// A step: exactly one of `wait`, `branch`, `action`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    #[serde(default)]
    pub wait: Option<Spanned<RawWait>>,
    #[serde(default)]
    pub branch: Option<Spanned<RawBranch>>,
    #[serde(default)]
    pub action: Option<Spanned<RawAction>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWait {
    #[serde(default, rename = "for")]
    pub for_: Option<Spanned<String>>,
    #[serde(default)]
    pub cancel_when: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBranch {
    #[serde(rename = "if")]
    pub if_: Spanned<String>,
    #[serde(default)]
    pub then: Vec<RawStep>,
    #[serde(default, rename = "else")]
    pub else_: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAction {
    pub kind: Spanned<String>,
    pub channel: Spanned<String>,
    #[serde(default)]
    pub purpose: Option<Spanned<String>>,
    #[serde(default)]
    pub discriminator: Option<Spanned<String>>,
    #[serde(default)]
    pub payload: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub emotion_reasons: Option<bool>,
    #[serde(default)]
    pub addresses: Option<Spanned<String>>,
    #[serde(default)]
    pub policy: Option<RawPolicy>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    pub cap: Option<String>,
    #[serde(default)]
    pub quiet_hours: Option<bool>,
    #[serde(default)]
    pub consent: Option<String>,
    #[serde(default)]
    pub holdout_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub priority: Option<i64>,
}
