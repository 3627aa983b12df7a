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
        Reason::new("views of tv within 72h without buying it >= 3", 3)
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

    // Buying something else is no answer to hesitating about the tv: one
    // definition, the same as the `uncertain` state's (views of a product
    // not bought within the window).
    let events = vec![
        tp("b", "c1", Channel::Store, EventType::Purchase, T0).with_sku("lamp"),
        view("v1", T0 + HOUR_MS, "tv"),
        view("v2", T0 + 2 * HOUR_MS, "tv"),
        view("v3", T0 + 3 * HOUR_MS, "tv"),
    ];
    let a = same_as_builtin("hesitation_guide", "c1", events, T0 + 4 * HOUR_MS);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0].emotional_state, Some(EmotionalState::Uncertain));
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
            "no problem reported since the delivery of order",
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

/// Runs `events` through every shipped journey under the shipped policy
/// (firing what is due before each event and at `end`); returns the sent
/// actions and every decision.
fn with_policy(
    customer: &str,
    events: Vec<Touchpoint>,
    end: i64,
) -> (Vec<Action>, Vec<crate::Decision>) {
    let j = CompiledJourneys::shipped().unwrap_or_else(|e| panic!("{e}"));
    let mut p = Profile::new(customer);
    let (mut actions, mut decisions) = (Vec::new(), Vec::new());
    for t in events {
        for out in [
            super::fire_all(&j, &mut p, t.event_time),
            super::feed_all(&j, &mut p, t),
        ] {
            actions.extend(out.actions);
            decisions.extend(out.decisions);
        }
    }
    let out = super::fire_all(&j, &mut p, end);
    actions.extend(out.actions);
    decisions.extend(out.decisions);
    (actions, decisions)
}

fn opt_in(customer: &str, at: i64) -> Touchpoint {
    let mut t = tp(
        "optin",
        customer,
        Channel::Web,
        EventType::ConsentChanged,
        at,
    );
    for (k, v) in [
        ("purpose", "marketing"),
        ("channel", "email"),
        ("granted", "true"),
    ] {
        t.attributes.insert(k.into(), v.into());
    }
    t
}

fn outcomes(d: &[crate::Decision]) -> Vec<(&str, crate::Outcome)> {
    d.iter().map(|d| (d.journey.as_str(), d.outcome)).collect()
}

/// The first customer ids (`{prefix}0`, `{prefix}1`, ...) in and out of the
/// control group of `journey`.
fn in_and_out(prefix: &str, journey: &str, share_bp: u16) -> (String, String) {
    let ids = (0..).map(|i| format!("{prefix}{i}"));
    let held = |id: &String| crate::policy::held_out(id, journey, share_bp);
    let inside = ids.clone().find(held).expect("someone is held out");
    let outside = ids.clone().find(|id| !held(id)).expect("someone is not");
    (inside, outside)
}

#[test]
fn exclusive_treatment_once_a_month_with_a_fallback_and_a_control_group() {
    use crate::Outcome::*;
    let (held, treated) = in_and_out("vip-", "exclusive_treatment", 1000);
    let buy = |c: &str, id: &str, day: i64| {
        tp(
            id,
            c,
            Channel::Store,
            EventType::Purchase,
            T0 + day * 24 * HOUR_MS,
        )
        .with_amount(400.0)
    };
    let regular = |c: &str| {
        vec![
            opt_in(c, T0 - HOUR_MS),
            buy(c, "b0", 0),
            buy(c, "b1", 1),
            buy(c, "b2", 2),
            buy(c, "b3", 3),
        ]
    };
    let (a, d) = with_policy(&treated, regular(&treated), T0 + 40 * 24 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [
            ("exclusive_treatment", Sent),
            ("exclusive_treatment", Capped)
        ],
        "third purchase of a high-value regular; the fourth is within the month"
    );
    assert_eq!(a[0].kind, ActionKind::ExclusiveOffer);
    assert_eq!(a[0].channel, DeliveryChannel::Email);
    assert_eq!(
        a[0].emotional_state,
        Some(EmotionalState::WantsToFeelSpecial)
    );
    assert!(
        d[1].reason
            .starts_with("journey exclusive_treatment cap 1 per 30d reached"),
        "{}",
        d[1].reason
    );

    // Without email consent a person greets them instead.
    let events = regular(&treated).into_iter().skip(1).take(3).collect();
    let (a, d) = with_policy(&treated, events, T0 + 40 * 24 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [
            ("exclusive_treatment", Fallback),
            ("exclusive_treatment", Sent)
        ]
    );
    assert_eq!(a[0].kind, ActionKind::AlertTicket);
    assert_eq!(a[0].channel, DeliveryChannel::Store);

    // One customer in ten is held out, and the decision says so.
    let (a, d) = with_policy(&held, regular(&held), T0 + 40 * 24 * HOUR_MS);
    assert!(a.is_empty(), "{a:?}");
    assert_eq!(d[0].outcome, HeldOut);
}

#[test]
fn anxious_customers_get_self_service_and_no_marketing() {
    use crate::Outcome::*;
    let mut events: Vec<Touchpoint> = (0..3)
        .map(|i| {
            tp(
                &format!("h{i}"),
                "c1",
                Channel::Web,
                EventType::HelpSearch,
                T0 + i * 60_000,
            )
        })
        .collect();
    events.extend((0..3).map(|i| view(&format!("v{i}"), T0 + HOUR_MS + i * 60_000, "tv")));
    let (a, d) = with_policy("c1", events, T0 + 2 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [
            ("anxious_support", Sent),
            ("hesitation_guide", SuppressedState)
        ],
        "{d:#?}"
    );
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].kind, ActionKind::SelfServiceLink);
    assert_eq!(a[0].channel, DeliveryChannel::Web);
    assert_eq!(a[0].payload["url"], "https://shop.example/help/start");
}

#[test]
fn an_ambassador_invitation_is_never_sent_twice_and_never_at_night() {
    use crate::Outcome::*;
    let promoter = |c: &str, id: &str, at: i64| {
        tp(id, c, Channel::Email, EventType::SurveyResponse, at).with_survey(SurveyKind::Nps, 10)
    };
    let events = vec![
        opt_in("fan", T0 - HOUR_MS),
        promoter("fan", "n1", T0),
        promoter("fan", "n2", T0 + 60 * 24 * HOUR_MS),
    ];
    let (a, d) = with_policy("fan", events, T0 + 61 * 24 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [
            ("ambassador_invitation", Sent),
            ("ambassador_invitation", Capped)
        ]
    );
    assert_eq!(a[0].kind, ActionKind::AmbassadorInvite);
    // 23:00 in London: quiet hours drop it.
    let night = T0 + 7 * HOUR_MS;
    let events = vec![opt_in("owl", T0), promoter("owl", "n1", night)];
    let (a, d) = with_policy("owl", events, night + HOUR_MS);
    assert!(a.is_empty());
    assert_eq!(outcomes(&d), [("ambassador_invitation", DroppedQuietHours)]);
}

#[test]
fn under_the_shipped_policy_surveys_wait_for_the_morning_and_come_once_a_month() {
    use crate::Outcome::*;
    // Delivered at 20:00 London: the survey is due at 22:00, in quiet hours.
    let evening = T0 + 4 * HOUR_MS;
    let morning = T0 + 16 * HOUR_MS;
    let events = vec![
        tp("d1", "c1", Channel::System, EventType::Delivered, evening).with_order("o-1"),
        tp(
            "d2",
            "c1",
            Channel::System,
            EventType::Delivered,
            T0 + 5 * 24 * HOUR_MS,
        )
        .with_order("o-2"),
    ];
    let (a, d) = with_policy("c1", events, T0 + 6 * 24 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [
            ("post_delivery_survey", DeferredQuietHours),
            ("post_delivery_survey", Sent),
            ("post_delivery_survey", Capped)
        ]
    );
    assert_eq!(d[0].deferred_until, Some(morning));
    assert_eq!(d[1].decided_at, morning);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].payload["order_id"], "o-1");
}

#[test]
fn cart_reassurance_follows_hesitation_by_email() {
    use crate::Outcome::*;
    let mut events = vec![opt_in("c1", T0 - HOUR_MS)];
    events.extend((0..3).map(|i| view(&format!("v{i}"), T0 + i * 60_000, "tv")));
    events.push(
        tp(
            "a",
            "c1",
            Channel::Web,
            EventType::AddToCart,
            T0 + 10 * 60_000,
        )
        .with_sku("tv"),
    );
    let (a, d) = with_policy("c1", events, T0 + 2 * HOUR_MS);
    assert_eq!(
        outcomes(&d),
        [("hesitation_guide", Sent), ("cart_reassurance", Sent)],
        "{d:#?}"
    );
    assert_eq!(a[1].channel, DeliveryChannel::Email);
    assert_eq!(
        a[1].payload["reviews_url"],
        "https://shop.example/products/tv/reviews"
    );
    assert!(
        d[1].reason.contains("marketing cap 3 per 7d: 1 used"),
        "{}",
        d[1].reason
    );
}
