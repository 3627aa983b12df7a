//! Unit tests: the loader's errors, the evaluator, and the shipped journeys.

mod errors;
mod evaluate;
mod native;
mod policy;
mod shipped;

use std::path::PathBuf;

use rapport_model::{Action, Profile, Touchpoint};

use crate::{CompiledJourneys, LoadError, Outcome, Output, Problem, Purpose};

/// 2025-11-24T16:00:00Z.
pub(crate) const T0: i64 = 1_764_000_000_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// Compiles one file named `test.toml`.
pub(crate) fn compile(text: &str) -> Result<CompiledJourneys, LoadError> {
    CompiledJourneys::from_sources(&[(PathBuf::from("test.toml"), text.to_owned())])
}

/// Compiles and expects it to work.
pub(crate) fn journeys(text: &str) -> CompiledJourneys {
    match compile(text) {
        Ok(j) => j,
        Err(e) => panic!("{e}"),
    }
}

/// The problems of a file that must not load.
pub(crate) fn problems(text: &str) -> Vec<Problem> {
    match compile(text) {
        Ok(_) => panic!("loaded, but should not have"),
        Err(e) => e.problems().to_vec(),
    }
}

/// An action that passed the policy, with its purpose.
#[derive(Debug)]
pub(crate) struct Sent {
    pub action: Action,
    pub purpose: Purpose,
}

/// The sent actions of `out`, each with the purpose its decision names.
fn sent(out: Output) -> Vec<Sent> {
    let purposes: Vec<Purpose> = out
        .decisions
        .iter()
        .filter(|d| d.outcome == Outcome::Sent)
        .map(|d| d.purpose)
        .collect();
    assert_eq!(purposes.len(), out.actions.len(), "{:?}", out.decisions);
    out.actions
        .into_iter()
        .zip(purposes)
        .map(|(action, purpose)| Sent { action, purpose })
        .collect()
}

/// Applies `t` to `p`, updates the emotional state and evaluates, as the
/// runtime does; returns the actions and every decision.
pub(crate) fn feed_all(j: &CompiledJourneys, p: &mut Profile, t: Touchpoint) -> Output {
    p.apply(&t);
    rapport_model::emotion::update(p, t.event_time, j.emotion());
    let mut out = Output::new();
    let report = j.on_event(p, &t, &mut out);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    out
}

/// Like [`feed_all`], returning the actions that were sent.
pub(crate) fn feed(j: &CompiledJourneys, p: &mut Profile, t: Touchpoint) -> Vec<Sent> {
    sent(feed_all(j, p, t))
}

/// Fires what is due; returns the actions and every decision.
pub(crate) fn fire_all(j: &CompiledJourneys, p: &mut Profile, now: i64) -> Output {
    let mut out = Output::new();
    let report = j.fire_due(p, now, &mut out);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    out
}

/// Fires due waits; returns the actions that were sent.
pub(crate) fn fire(j: &CompiledJourneys, p: &mut Profile, now: i64) -> Vec<Sent> {
    sent(fire_all(j, p, now))
}

#[test]
fn shipped_and_example_journeys_load() {
    let j = CompiledJourneys::shipped().unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = j.journeys().iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "ambassador_invitation",
            "anxious_support",
            "cart_reassurance",
            "closed_loop_alert",
            "exclusive_treatment",
            "hesitation_guide",
            "post_delivery_survey",
            "recovery_offer"
        ]
    );
    assert_eq!(j.policy().caps.len(), 4, "the shipped policy is loaded");
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/journeys");
    let all = CompiledJourneys::load(&base, &["*.toml"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.journeys().len(), 8);
    // Every file in the directory is shipped.
    let mut files: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".toml"))
        .collect();
    files.sort();
    let mut shipped: Vec<&str> = crate::SHIPPED.iter().map(|(f, _)| *f).collect();
    shipped.sort();
    assert_eq!(files, shipped);
}

/// The `[emotion]` section of the example configuration spells out the
/// defaults, and a misspelt signal there is refused with its key.
#[test]
fn the_example_emotion_configuration_is_the_default() {
    use rapport_model::emotion::EmotionConfig;
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/rapport.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let emotion = table["emotion"].clone();
    assert_eq!(
        EmotionConfig::deserialize(emotion).unwrap(),
        EmotionConfig::default()
    );
    let bad = "[emotion.anxious]\nweights = { help_serches = 1.0 }\n";
    let e = toml::from_str::<toml::Table>(bad).unwrap()["emotion"].clone();
    let e = EmotionConfig::deserialize(e).unwrap_err().to_string();
    assert!(e.contains("unknown signal `help_serches`"), "{e}");
}
