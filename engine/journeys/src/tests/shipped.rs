//! The shipped journeys: each fires for the right customer with the expected
//! payload and reasons, and stays silent otherwise (these files replaced the
//! journeys that were once written in Rust, and emit what those did).

use std::path::PathBuf;

use rapport_model::action::action_id;
use rapport_model::testing::tp;
use rapport_model::{
    Action, ActionKind, Channel, DeliveryChannel, EmotionalState, EventType, Profile, Reason,
    SurveyKind, Touchpoint,
};

use super::{feed, fire, HOUR_MS, T0};
use crate::{CompiledJourneys, Purpose, SHIPPED};

fn shipped(name: &str) -> CompiledJourneys {
    let (file, text) = SHIPPED
        .iter()
        .find(|(f, _)| f.starts_with(name))
        .expect("shipped file");
    CompiledJourneys::from_sources(&[(PathBuf::from(file), (*text).to_owned())])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `events` (and the waits due at each event and at `end`) through the
/// shipped journey `name`; returns its actions.
fn same_as_builtin(name: &str, customer: &str, events: Vec<Touchpoint>, end: i64) -> Vec<Action> {
    let files = shipped(name);
    let mut p = Profile::new(customer);
    let mut out = Vec::new();
    for t in events {
        out.extend(
            fire(&files, &mut p, t.event_time)
                .into_iter()
                .map(|d| d.action),
        );
        out.extend(
            feed(&files, &mut p, t.clone())
                .into_iter()
                .map(|d| d.action),
        );
    }
    out.extend(fire(&files, &mut p, end).into_iter().map(|d| d.action));
    out
}

fn view(id: &str, at: i64, sku: &str) -> Touchpoint {
    tp(id, "c1", Channel::Web, EventType::ProductView, at).with_sku(sku)
}

#[test]
fn hesitation_guide_fires_on_the_third_view_once_per_week() {
    let events = (0..5)
        .map(|i| view(&format!("v{i}"), T0 + i * HOUR_MS, "tv"))
        .collect();
    let a = same_as_builtin("hesitation_guide", "c1", events, T0 + 10 * HOUR_MS);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].kind, ActionKind::GuideLink);
    assert_eq!(a[0].trigger_event_id, "v2");
    assert_eq!(a[0].channel, DeliveryChannel::Web);
    assert_eq!(a[0].payload["guide_url"], "https://shop.example/guides/tv");
    assert_eq!(
        a[0].reasons[0],
        Reason::new("views of tv within 72h >= 3", 3)
    );
    assert_eq!(
        a[0].reasons[1],
        Reason::new("no purchase within 72h", "never")
    );
    assert_eq!(a[0].emotional_state, Some(EmotionalState::Uncertain));
    assert_eq!(
        a[0].action_id,
        action_id("hesitation_guide", "c1", "v2", "tv")
    );

    // A week later the re-entry rule lets it fire again for the same product.
    let week = 168 * HOUR_MS;
    let events = (0..6)
        .map(|i| {
            view(
                &format!("v{i}"),
                T0 + (i / 3) * week + (i % 3) * HOUR_MS,
                "tv",
            )
        })
        .collect();
    let a = same_as_builtin("hesitation_guide", "c1", events, T0 + 2 * week);
    assert_eq!(a.len(), 2, "{a:?}");
}

#[test]
fn hesitation_guide_is_silent_for_spread_views_and_buyers() {
    let spread = (0..4)
        .map(|i| view("v", T0 + i * 48 * HOUR_MS, "tv"))
        .collect();
    assert!(same_as_builtin("hesitation_guide", "c1", spread, T0 + 400 * HOUR_MS).is_empty());
    let bought = vec![
        view("v1", T0, "tv"),
        tp("b", "c1", Channel::Store, EventType::Purchase, T0 + 1).with_sku("tv"),
        view("v2", T0 + 2, "tv"),
        view("v3", T0 + 3, "tv"),
    ];
    assert!(same_as_builtin("hesitation_guide", "c1", bought, T0 + 4).is_empty());
    // Three views of three different products are no hesitation about any.
    let browsing = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, s)| view("v", T0 + i as i64, s))
        .collect();
    assert!(same_as_builtin("hesitation_guide", "c1", browsing, T0 + 4).is_empty());
}

#[test]
fn recovery_offer_fires_once_per_cooldown_for_failures_and_detractors() {
    let events = vec![
        tp("d1", "c1", Channel::System, EventType::DeliveryFailed, T0).with_order("o-9"),
        // Inside the 24h re-entry cooldown: silent.
        tp(
            "s1",
            "c1",
            Channel::Email,
            EventType::SurveyResponse,
            T0 + HOUR_MS,
        )
        .with_survey(SurveyKind::Nps, 2),
        // Two days later: fires again, from a detractor.
        tp(
            "s2",
            "c1",
            Channel::Chat,
            EventType::SurveyResponse,
            T0 + 48 * HOUR_MS,
        )
        .with_survey(SurveyKind::Nps, 2),
    ];
    let a = same_as_builtin("recovery_offer", "c1", events, T0 + 49 * HOUR_MS);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(
        a[0].reasons[0],
        Reason::new("delivery failed for order", "o-9")
    );
    assert_eq!(a[0].payload["order_id"], "o-9");
    assert_eq!(a[0].payload["offer_code"], "RECOVERY-10");
    assert_eq!(a[1].trigger_event_id, "s2");
    assert_eq!(a[1].channel, DeliveryChannel::Chat);
    assert_eq!(a[1].reasons[0], Reason::new("nps score <= 6", 2));
    assert!(
        !a[1].payload.contains_key("order_id"),
        "no order, no order_id"
    );
    assert_eq!(
        a[1].emotional_state,
        Some(EmotionalState::InvestedDetractor)
    );
}

#[test]
fn recovery_offer_is_silent_for_passives_promoters_and_content_customers() {
    let events = [
        (SurveyKind::Nps, 7),
        (SurveyKind::Nps, 10),
        (SurveyKind::Csat, 4),
        (SurveyKind::Ces, 6),
        (SurveyKind::Csat, 3),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (k, s))| {
        tp(
            &format!("s{i}"),
            "c1",
            Channel::Email,
            EventType::SurveyResponse,
            T0 + i as i64,
        )
        .with_survey(k, s)
    })
    .chain([tp("p", "c1", Channel::Web, EventType::Purchase, T0 + 10)])
    .collect();
    assert!(same_as_builtin("recovery_offer", "c1", events, T0 + 20).is_empty());
    let d = shipped("recovery_offer");
    assert_eq!(d.journeys()[0].steps.len(), 1);
}

#[test]
fn post_delivery_survey_waits_two_hours_and_fires_once() {
    let wait = 2 * HOUR_MS;
    let j = shipped("post_delivery_survey");
    let mut p = Profile::new("c1");
    assert!(feed(
        &j,
        &mut p,
        tp("d1", "c1", Channel::System, EventType::Delivered, T0).with_order("o-1")
    )
    .is_empty());
    assert_eq!(
        p.next_timer_ms(),
        Some(T0 + wait),
        "the wait is a profile timer"
    );
    assert!(fire(&j, &mut p, T0 + wait - 1).is_empty());
    let a = fire(&j, &mut p, T0 + wait);
    assert_eq!(a.len(), 1);
    let d = &a[0];
    assert_eq!(d.purpose, Purpose::Survey);
    assert_eq!(d.action.kind, ActionKind::SurveyRequest);
    assert_eq!(d.action.trigger_event_time, T0 + wait);
    assert_eq!(d.action.payload["order_id"], "o-1");
    assert_eq!(d.action.payload["survey"], "csat");
    assert_eq!(
        d.action.action_id,
        action_id("post_delivery_survey", "c1", "d1", "timer")
    );
    assert!(p.timers.is_empty() && p.journey_runs.is_empty());
    assert!(fire(&j, &mut p, T0 + 2 * wait).is_empty(), "fires once");

    let events = vec![tp("d1", "c1", Channel::System, EventType::Delivered, T0).with_order("o-1")];
    let a = same_as_builtin("post_delivery_survey", "c1", events, T0 + 3 * wait);
    assert_eq!(
        a[0].reasons,
        vec![Reason::new(
            "7200s since delivery without a reported problem",
            "o-1"
        )]
    );
}

#[test]
fn post_delivery_survey_wait_is_cancelled_by_a_reported_problem() {
    for (i, problem) in [
        EventType::TicketOpened,
        EventType::DeliveryFailed,
        EventType::RefundRequested,
        EventType::Return,
    ]
    .into_iter()
    .enumerate()
    {
        let events = vec![
            tp("d2", "c2", Channel::System, EventType::Delivered, T0).with_order("o-2"),
            tp(
                &format!("x{i}"),
                "c2",
                Channel::CallCenter,
                problem,
                T0 + HOUR_MS,
            ),
        ];
        let a = same_as_builtin("post_delivery_survey", "c2", events, T0 + 10 * HOUR_MS);
        assert!(a.is_empty(), "{problem:?}: {a:?}");
    }
    // A page view during the wait cancels nothing.
    let j = shipped("post_delivery_survey");
    let mut p = Profile::new("c3");
    feed(
        &j,
        &mut p,
        tp("d3", "c3", Channel::System, EventType::Delivered, T0).with_order("o-3"),
    );
    feed(
        &j,
        &mut p,
        tp("w", "c3", Channel::Web, EventType::PageView, T0 + HOUR_MS),
    );
    assert_eq!(fire(&j, &mut p, T0 + 2 * HOUR_MS).len(), 1);
}
