//! What one touchpoint does to its customer's stored profile, inside the
//! partition task's update ([`super::Lane`]): skipped, routed by identity
//! stitching, refused as a duplicate, or applied with the journeys run on it.

use rapport_model::{emotion, EventType, Touchpoint};

use super::stitch::{Routed, Seed};
use super::{Outcome, Shared};
use crate::metrics::Metrics;

/// A touchpoint on its way into its customer's profile ([`Lane::route_and_apply`]).
pub(super) struct Arriving<'a> {
    /// Read from an input record (not released from the held ones or
    /// forwarded): it advances the profile's record of what it reflects.
    pub from_record: bool,
    pub seed: Seed,
    /// The profile it goes to.
    pub id: &'a str,
    pub tp: &'a Touchpoint,
    pub home: Option<i32>,
    pub follow: bool,
}

/// What a touchpoint does to its customer's stored profile `s`: skipped when
/// the profile already reflects its record, routed by identity stitching,
/// refused as a duplicate event id, or applied (due waits first, then the
/// profile, the emotional state and the journeys, whose decisions go to
/// `output`). Returns whether the profile changed, what became of the
/// touchpoint and where stitching routed it.
pub(super) fn change_profile(
    sh: &Shared,
    s: &mut crate::state::Stored,
    a: &Arriving<'_>,
    output: &mut rapport_journeys::Output,
) -> (bool, Outcome, Routed) {
    let (journeys, metrics, tp, seed) = (&sh.journeys, &sh.metrics, a.tp, a.seed);
    if a.from_record && s.reflects(seed.hash, seed.partition, seed.offset) {
        metrics.skipped.inc();
        return (false, Outcome::AlreadyApplied, Routed::Apply);
    }
    let mut routed = Routed::Apply;
    if let Some(st) = sh.stitch.as_ref() {
        routed = st.route(s, tp, a.home, a.follow, seed);
        match routed {
            Routed::Apply | Routed::Unlinked(_) | Routed::Refused(_) => {}
            Routed::Forward(_) => return (false, Outcome::Applied, routed),
            Routed::Hold | Routed::Link { .. } => {
                if a.from_record {
                    s.advance(seed.hash, seed.partition, seed.offset);
                }
                return (true, Outcome::Applied, routed);
            }
        }
    }
    if !s.profile.admit(tp, &sh.seen) {
        metrics.duplicates.inc();
        return (false, Outcome::Duplicate, routed);
    }
    // The customer's own waits that came due before this event fire first,
    // whatever other customers' events moved the watermark to: an SLA that
    // ran out before the resolution arrived escalates.
    if s.profile
        .timers
        .iter()
        .any(|t| t.fire_at_ms < tp.event_time)
    {
        let due = tp.event_time - 1;
        let fired = journeys.fire_due(&mut s.profile, due, output).timers_fired;
        metrics.timers_fired.inc_by(u64::from(fired));
    }
    s.profile.apply(tp);
    if let Routed::Unlinked(x) | Routed::Refused(x) = &routed {
        s.profile.anonymous_ids.retain(|id| id != x);
    }
    if tp.customer_id.as_deref() == Some(a.id) {
        s.known = true;
    }
    if let Some(t) = emotion::update_on_touchpoint(&mut s.profile, tp, journeys.emotion()) {
        metrics
            .emotion_transitions
            .with_label_values(&[t.from.as_str(), t.to.as_str()])
            .inc();
    }
    let report = journeys.on_event(&mut s.profile, tp, output);
    for e in report.errors {
        tracing::warn!(journey = %e.journey, expression = %e.expression, error = %e.message, "journey expression failed; treated as false");
    }
    if a.from_record {
        s.advance(seed.hash, seed.partition, seed.offset);
    }
    (true, Outcome::Applied, routed)
}

/// Counts a survey answer by kind, class (promoter, passive, detractor and
/// the like), channel and store.
pub(super) fn count_survey_answer(metrics: &Metrics, tp: &Touchpoint) {
    let Some(s) = tp
        .survey
        .as_ref()
        .filter(|_| tp.event_type == EventType::SurveyResponse)
    else {
        return;
    };
    metrics
        .survey_answers
        .with_label_values(&[
            s.kind.as_str(),
            s.kind.classify(s.score),
            tp.channel.as_str(),
            tp.store_id.as_deref().unwrap_or(""),
        ])
        .inc();
}
