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
    #[serde(default)]
    pub priority: Option<Spanned<i64>>,
    #[serde(default)]
    pub control_group: Option<Spanned<String>>,
    #[serde(default)]
    pub fallbacks: Vec<Spanned<RawAction>>,
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
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub quiet_hours: Option<Spanned<String>>,
    #[serde(default)]
    pub fallback: Option<Spanned<String>>,
}

/// The `[policy]` table: the delivery policy over every journey.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPolicy {
    #[serde(default)]
    pub compete: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub cap: Vec<Spanned<RawCap>>,
    #[serde(default)]
    pub quiet_hours: Option<Spanned<RawQuietHours>>,
    #[serde(default)]
    pub consent: BTreeMap<String, Spanned<RawConsent>>,
    #[serde(default)]
    pub suppress: Vec<Spanned<RawSuppress>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCap {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub purpose: Option<Spanned<String>>,
    #[serde(default)]
    pub journey: Option<Spanned<String>>,
    #[serde(default)]
    pub channel: Option<Spanned<String>>,
    pub max: Spanned<i64>,
    pub window: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuietHours {
    pub start: Spanned<String>,
    pub end: Spanned<String>,
    pub default_timezone: Spanned<String>,
    #[serde(default)]
    pub purposes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub channels: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsent {
    pub default: Spanned<String>,
    #[serde(default)]
    pub channels: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSuppress {
    #[serde(default)]
    pub when_state: Option<Spanned<String>>,
    #[serde(default)]
    pub purposes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub journey: Option<Spanned<String>>,
    #[serde(default)]
    pub suppresses: Option<Vec<Spanned<String>>>,
}
