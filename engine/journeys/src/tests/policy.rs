//! The delivery policy: caps over rolling windows, quiet hours in the
//! customer's time zone, consent and fallbacks, suppression by emotional
//! state and priority, control groups, and the decisions that explain each.

use std::path::PathBuf;

use rapport_model::testing::tp;
use rapport_model::{ActionKind, Channel, DeliveryChannel, EmotionalState, EventType, Profile};

use super::{feed, feed_all, fire_all, HOUR_MS, T0};
use crate::{CompiledJourneys, Decision, Outcome, Output};

const DAY_MS: i64 = 24 * HOUR_MS;

/// Journeys in `journeys.toml` with the policy in `policy.toml`.
fn with_policy(policy: &str, journeys: &str) -> CompiledJourneys {
    CompiledJourneys::from_sources(&[
        (PathBuf::from("journeys.toml"), journeys.to_owned()),
        (PathBuf::from("policy.toml"), policy.to_owned()),
    ])
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A journey `id` on `event` that emits `kind` on `channel`, with `extra`
/// journey fields (written before the trigger) and `action` fields.
fn journey(id: &str, event: &str, kind: &str, channel: &str, extra: &str, action: &str) -> String {
    format!(
        r#"
[[journey]]
id = "{id}"
version = 1
{extra}
trigger = {{ events = ["{event}"] }}

[[journey.steps]]
action = {{ kind = "{kind}", channel = "{channel}", emotion_reasons = false {action} }}
"#
    )
}

fn event(id: &str, customer: &str, t: EventType, at: i64) -> rapport_model::Touchpoint {
    tp(id, customer, Channel::Web, t, at)
}

fn with_attrs(
    mut t: rapport_model::Touchpoint,
    attrs: &[(&str, &str)],
) -> rapport_model::Touchpoint {
    for (k, v) in attrs {
        t.attributes.insert((*k).into(), (*v).into());
    }
    t
}

fn outcomes(out: &Output) -> Vec<(String, Outcome)> {
    out.decisions
        .iter()
        .map(|d| (d.journey.clone(), d.outcome))
        .collect()
}

fn only(out: &Output) -> &Decision {
    assert_eq!(out.decisions.len(), 1, "{:#?}", out.decisions);
    &out.decisions[0]
}

const MARKETING_CAP: &str = r#"
[[policy.cap]]
purpose = "marketing"
max = 3
window = "7d"
"#;

#[test]
fn a_reached_cap_holds_the_next_action_back_and_says_why() {
    let j = with_policy(
        MARKETING_CAP,
        &(journey("promo", "page_view", "exclusive_offer", "web", "", "")
            + &journey("help", "page_view", "self_service_link", "web", "", "")),
    );
    let mut p = Profile::new("c1");
    for i in 0..3 {
        let out = feed_all(
            &j,
            &mut p,
            event(
                &format!("v{i}"),
                "c1",
                EventType::PageView,
                T0 + i * HOUR_MS,
            ),
        );
        assert_eq!(out.actions.len(), 2, "{:#?}", out.decisions);
    }
    let out = feed_all(
        &j,
        &mut p,
        event("v3", "c1", EventType::PageView, T0 + 3 * HOUR_MS),
    );
    assert_eq!(
        outcomes(&out),
        [
            ("help".into(), Outcome::Sent),
            ("promo".into(), Outcome::Capped)
        ],
        "service actions are exempt from marketing caps"
    );
    let capped = &out.decisions[1];
    assert_eq!(
        capped.reason,
        "marketing cap 3 per 7d reached: 3 sent since 2025-11-24T16:00:00Z; allowed again from 2025-12-01T16:00:00Z"
    );
    assert_eq!(capped.event_id, "v3");
    assert_eq!(capped.kind, ActionKind::ExclusiveOffer);
    assert_eq!(out.actions.len(), 1);
    assert_eq!(out.actions[0].kind, ActionKind::SelfServiceLink);
    assert_eq!(p.delivery.sent.len(), 3, "only sends a cap counts are kept");
}

#[test]
fn cap_windows_roll() {
    let j = with_policy(
        MARKETING_CAP,
        &journey("promo", "page_view", "exclusive_offer", "web", "", ""),
    );
    let mut p = Profile::new("c1");
    let sent_at = |p: &mut Profile, at: i64| {
        !feed(&j, p, event("v", "c1", EventType::PageView, at)).is_empty()
    };
    assert!(sent_at(&mut p, T0));
    assert!(sent_at(&mut p, T0 + HOUR_MS));
    assert!(sent_at(&mut p, T0 + 2 * HOUR_MS));
    assert!(
        !sent_at(&mut p, T0 + 7 * DAY_MS - 1),
        "the first send is still in the window"
    );
    assert!(
        sent_at(&mut p, T0 + 7 * DAY_MS),
        "a week after the first send"
    );
    assert!(
        !sent_at(&mut p, T0 + 7 * DAY_MS + 1),
        "the second and third are still in it"
    );
    assert!(sent_at(&mut p, T0 + 7 * DAY_MS + HOUR_MS));
    assert!(
        p.delivery.sent.iter().all(|s| s.at_ms > T0),
        "sends outside every window are pruned: {:?}",
        p.delivery.sent
    );
}

#[test]
fn a_per_journey_cap_gives_each_journey_its_own_budget() {
    let policy = r#"
[[policy.cap]]
journey = "*"
max = 1
window = "30d"
"#;
    let j = with_policy(
        policy,
        &(journey("a", "page_view", "exclusive_offer", "web", "", "")
            + &journey("b", "search", "guide_link", "web", "", "")),
    );
    let mut p = Profile::new("c1");
    let view = |i: i64| event("v", "c1", EventType::PageView, T0 + i * DAY_MS);
    assert_eq!(feed(&j, &mut p, view(0)).len(), 1);
    let out = feed_all(&j, &mut p, view(29));
    assert_eq!(only(&out).outcome, Outcome::Capped);
    assert!(
        only(&out)
            .reason
            .starts_with("per-journey cap 1 per 30d reached"),
        "{}",
        only(&out).reason
    );
    assert_eq!(
        feed(&j, &mut p, event("s", "c1", EventType::Search, T0 + DAY_MS)).len(),
        1
    );
    assert_eq!(feed(&j, &mut p, view(30)).len(), 1);
}

const QUIET: &str = r#"
[policy.quiet_hours]
start = "21:00"
end = "08:00"
default_timezone = "Europe/London"
"#;

/// 2025-11-24T13:00:00Z: 13:00 in London, 22:00 in Tokyo.
const LONDON_AFTERNOON: i64 = T0 - 3 * HOUR_MS;

#[test]
fn quiet_hours_defer_to_their_end_in_the_customers_time_zone() {
    let j = with_policy(
        QUIET,
        &journey("ask", "delivered", "survey_request", "email", "", ""),
    );
    let delivered = |c: &str, at: i64| {
        let t = tp("d", c, Channel::System, EventType::Delivered, at);
        match c {
            "tokyo" => with_attrs(t, &[("timezone", "Asia/Tokyo")]),
            _ => t,
        }
    };

    // London (the default zone): 13:00 is not quiet.
    let mut london = Profile::new("london");
    let out = feed_all(&j, &mut london, delivered("london", LONDON_AFTERNOON));
    assert_eq!(only(&out).outcome, Outcome::Sent);

    // Tokyo: 22:00 is quiet until 08:00 Tokyo time, 2025-11-24T23:00:00Z.
    let tokyo_morning = T0 + 7 * HOUR_MS;
    let mut tokyo = Profile::new("tokyo");
    let out = feed_all(&j, &mut tokyo, delivered("tokyo", LONDON_AFTERNOON));
    let d = only(&out);
    assert!(out.actions.is_empty());
    assert_eq!(d.outcome, Outcome::DeferredQuietHours);
    assert_eq!(d.deferred_until, Some(tokyo_morning));
    assert_eq!(
        d.reason,
        "22:00 in Asia/Tokyo is within quiet hours 21:00-08:00: deferred to 2025-11-24T23:00:00Z"
    );
    assert_eq!(
        tokyo.next_timer_ms(),
        Some(tokyo_morning),
        "a durable timer in the profile"
    );
    let deferred_id = d.action_id.clone();

    // The timer fires at the end of quiet hours; the policy judges it again.
    assert!(fire_all(&j, &mut tokyo, tokyo_morning - 1)
        .decisions
        .is_empty());
    let out = fire_all(&j, &mut tokyo, tokyo_morning);
    let d = only(&out);
    assert_eq!((d.outcome, d.decided_at), (Outcome::Sent, tokyo_morning));
    assert_eq!(
        out.actions[0].action_id, deferred_id,
        "the same action, not a new one"
    );
    assert!(tokyo.timers.is_empty() && tokyo.delivery.deferred.is_empty());

    // London at 22:30 UTC is quiet too, until 08:00 London the next morning.
    let mut late = Profile::new("late");
    let out = feed_all(
        &j,
        &mut late,
        delivered("late", T0 + 6 * HOUR_MS + HOUR_MS / 2),
    );
    assert_eq!(only(&out).deferred_until, Some(T0 + 16 * HOUR_MS));
    assert!(
        only(&out).reason.contains("(default time zone)"),
        "{}",
        only(&out).reason
    );
}

#[test]
fn a_deferred_action_is_judged_again_when_it_fires() {
    let j = with_policy(
        QUIET,
        &journey("ask", "delivered", "survey_request", "email", "", ""),
    );
    let mut p = Profile::new("c1");
    let t = with_attrs(
        tp(
            "d",
            "c1",
            Channel::System,
            EventType::Delivered,
            LONDON_AFTERNOON,
        ),
        &[("timezone", "Asia/Tokyo")],
    );
    assert_eq!(
        only(&feed_all(&j, &mut p, t)).outcome,
        Outcome::DeferredQuietHours
    );
    // Overnight the customer withdraws survey consent by email.
    let withdraw = with_attrs(
        event("w", "c1", EventType::ConsentChanged, T0),
        &[
            ("purpose", "survey"),
            ("channel", "email"),
            ("granted", "false"),
        ],
    );
    feed(&j, &mut p, withdraw);
    let out = fire_all(&j, &mut p, T0 + 7 * HOUR_MS);
    assert_eq!(only(&out).outcome, Outcome::NoConsent);
    assert!(out.actions.is_empty());
    assert!(
        p.timers.is_empty(),
        "the deferred action is gone either way"
    );
}

#[test]
fn quiet_hours_can_drop_an_action_or_not_apply_to_it() {
    let j = with_policy(
        QUIET,
        &(journey(
            "drop",
            "delivered",
            "survey_request",
            "email",
            "",
            r#", quiet_hours = "drop""#,
        ) + &journey(
            "staff",
            "delivered",
            "survey_request",
            "sms",
            "",
            r#", quiet_hours = "ignore""#,
        )),
    );
    let mut p = Profile::new("c1");
    let night = T0 + 7 * HOUR_MS; // 23:00 in London
    let out = feed_all(
        &j,
        &mut p,
        tp("d", "c1", Channel::System, EventType::Delivered, night),
    );
    assert_eq!(
        outcomes(&out),
        [
            ("drop".into(), Outcome::DroppedQuietHours),
            ("staff".into(), Outcome::Sent)
        ]
    );
    assert!(p.timers.is_empty() && p.delivery.deferred.is_empty());
}

#[test]
fn without_consent_the_fallback_fires_instead() {
    let journeys = r#"
[[journey]]
id = "treat"
version = 1
trigger = { events = ["purchase"] }

[[journey.steps]]
[journey.steps.action]
kind = "exclusive_offer"
channel = "email"
fallback = "personal"

[[journey.fallbacks]]
name = "personal"
kind = "alert_ticket"
channel = "call_center"
payload = { note = "thank {{ profile.id }} in person" }
"#;
    let j = with_policy("[policy]\n", journeys);
    let consent = |granted: &str, at: i64| {
        with_attrs(
            event("c", "c1", EventType::ConsentChanged, at),
            &[
                ("purpose", "marketing"),
                ("channel", "email"),
                ("granted", granted),
            ],
        )
    };
    let buy = |id: &str, at: i64| tp(id, "c1", Channel::Store, EventType::Purchase, at);
    let mut p = Profile::new("c1");
    feed(&j, &mut p, consent("true", T0));
    let a = feed(&j, &mut p, buy("b1", T0 + HOUR_MS));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].action.kind, ActionKind::ExclusiveOffer);

    feed(&j, &mut p, consent("false", T0 + 2 * HOUR_MS));
    let out = feed_all(&j, &mut p, buy("b2", T0 + 3 * HOUR_MS));
    assert_eq!(
        outcomes(&out),
        [
            ("treat".into(), Outcome::Fallback),
            ("treat".into(), Outcome::Sent)
        ]
    );
    let (offer, ticket) = (&out.decisions[0], &out.decisions[1]);
    assert_eq!(
        offer.reason,
        "withdrawn consent for marketing on email at 2025-11-24T18:00:00Z: fallback alert_ticket on call_center instead"
    );
    assert_eq!(offer.fallback_action_id.as_ref(), Some(&ticket.action_id));
    assert_eq!(out.actions.len(), 1);
    assert_eq!(out.actions[0].kind, ActionKind::AlertTicket);
    assert_eq!(out.actions[0].channel, DeliveryChannel::CallCenter);
    assert_eq!(out.actions[0].payload["note"], "thank c1 in person");
    assert_ne!(offer.action_id, ticket.action_id);

    // Without a fallback, nothing goes out, and the decision says why.
    let j = with_policy(
        "[policy]\n",
        &journey("plain", "purchase", "exclusive_offer", "email", "", ""),
    );
    let mut p = Profile::new("c1");
    let out = feed_all(&j, &mut p, buy("b3", T0));
    assert_eq!(only(&out).outcome, Outcome::NoConsent);
    assert_eq!(
        only(&out).reason,
        "no consent given for marketing on email, default denied"
    );
}

#[test]
fn no_marketing_while_anxious() {
    let policy = r#"
[[policy.suppress]]
when_state = "anxious"
purposes = ["marketing"]
"#;
    let j = with_policy(
        policy,
        &(journey("offer", "page_view", "exclusive_offer", "web", "", "")
            + &journey("help", "page_view", "self_service_link", "web", "", "")),
    );
    let mut calm = Profile::new("c1");
    let out = feed_all(&j, &mut calm, event("v", "c1", EventType::PageView, T0));
    assert_eq!(out.actions.len(), 2);

    let mut p = Profile::new("c2");
    for i in 0..3 {
        feed(
            &j,
            &mut p,
            event(&format!("h{i}"), "c2", EventType::HelpSearch, T0 + i),
        );
    }
    assert_eq!(
        p.emotion.state,
        EmotionalState::Anxious,
        "set by emotion::update"
    );
    let out = feed_all(&j, &mut p, event("v", "c2", EventType::PageView, T0 + 10));
    assert_eq!(
        outcomes(&out),
        [
            ("help".into(), Outcome::Sent),
            ("offer".into(), Outcome::SuppressedState)
        ]
    );
    assert_eq!(
        out.decisions[1].reason,
        "customer is anxious since 2025-11-24T16:00:00Z: no marketing actions in that state"
    );
}

#[test]
fn the_control_group_is_held_out_deterministically() {
    let j = with_policy(
        "[policy]\n",
        &journey(
            "promo",
            "page_view",
            "exclusive_offer",
            "web",
            "control_group = \"10%\"\nreentry = { never = true }",
            "",
        ),
    );
    let run = || -> Vec<String> {
        let mut held = Vec::new();
        for i in 0..10_000 {
            let id = format!("cust-{i}");
            let mut p = Profile::new(&id);
            let out = feed_all(&j, &mut p, event("v", &id, EventType::PageView, T0));
            match only(&out).outcome {
                Outcome::HeldOut => held.push(id),
                Outcome::Sent => {}
                other => panic!("{other:?}"),
            }
        }
        held
    };
    let held = run();
    assert!(
        (900..=1100).contains(&held.len()),
        "about 10% of 10k held out: {}",
        held.len()
    );
    assert_eq!(held, run(), "the same customers every run");
    assert!(held
        .iter()
        .all(|c| crate::policy::held_out(c, "promo", 1000)));
    // Pinned: the hash is fixed, so other machines and versions agree.
    assert_eq!(&held[..3], pinned_held_out());

    // A held-out customer entered the journey: re-entry rules apply to them.
    let id = &held[0];
    let mut p = Profile::new(id);
    let out = feed_all(&j, &mut p, event("v1", id, EventType::PageView, T0));
    assert!(only(&out)
        .reason
        .starts_with("customer is in the control group of promo (10%, bucket "));
    assert_eq!(p.journey_entries.len(), 1);
    let mut out = Output::new();
    let t = event("v2", id, EventType::PageView, T0 + HOUR_MS);
    p.apply(&t);
    assert_eq!(j.on_event(&mut p, &t, &mut out).reentry_refused, 1);
}

/// The first held-out customers of `promo` at 10%, as the fixed hash puts them.
fn pinned_held_out() -> [&'static str; 3] {
    ["cust-11", "cust-12", "cust-21"]
}

#[test]
fn the_higher_priority_journey_wins_the_event() {
    let two = |vip: i64, nudge: i64| {
        with_policy(
            "[policy]\ncompete = [\"marketing\"]\n",
            &(journey(
                "nudge",
                "purchase",
                "guide_link",
                "web",
                &format!("priority = {nudge}"),
                "",
            ) + &journey(
                "vip",
                "purchase",
                "exclusive_offer",
                "web",
                &format!("priority = {vip}"),
                "",
            ) + &journey("ticket", "purchase", "alert_ticket", "call_center", "", "")),
        )
    };
    let buy = || tp("b", "c1", Channel::Web, EventType::Purchase, T0);
    let out = feed_all(&two(10, 1), &mut Profile::new("c1"), buy());
    assert_eq!(
        outcomes(&out),
        [
            ("vip".into(), Outcome::Sent),
            ("nudge".into(), Outcome::SuppressedPriority),
            ("ticket".into(), Outcome::Sent),
        ],
        "service does not compete"
    );
    assert_eq!(
        out.decisions[1].reason,
        "journey vip (priority 10) has this event's marketing action; nudge has priority 1"
    );
    let out = feed_all(&two(1, 10), &mut Profile::new("c1"), buy());
    assert_eq!(out.decisions[0].journey, "nudge");
    assert_eq!(out.decisions[1].outcome, Outcome::SuppressedPriority);
}

#[test]
fn a_journey_in_progress_suppresses_the_journeys_it_names() {
    let policy = r#"
[[policy.suppress]]
journey = "alert"
suppresses = ["offer"]
"#;
    let alert = r#"
[[journey]]
id = "alert"
version = 1
trigger = { events = ["ticket_opened"] }
exit_when = 'event.event_type == "ticket_resolved"'
[[journey.steps]]
action = { kind = "alert_ticket", channel = "call_center" }
[[journey.steps]]
wait = { for = "48h" }
[[journey.steps]]
action = { kind = "alert_ticket", channel = "call_center", discriminator = "escalation" }
"#;
    let j = with_policy(
        policy,
        &(alert.to_owned() + &journey("offer", "page_view", "exclusive_offer", "web", "", "")),
    );
    let mut p = Profile::new("c1");
    feed(
        &j,
        &mut p,
        tp("t", "c1", Channel::CallCenter, EventType::TicketOpened, T0),
    );
    let out = feed_all(
        &j,
        &mut p,
        event("v", "c1", EventType::PageView, T0 + HOUR_MS),
    );
    assert_eq!(only(&out).outcome, Outcome::SuppressedPriority);
    assert_eq!(
        only(&out).reason,
        "journey alert is in progress for this customer and suppresses offer"
    );
    feed(
        &j,
        &mut p,
        tp(
            "r",
            "c1",
            Channel::CallCenter,
            EventType::TicketResolved,
            T0 + 2 * HOUR_MS,
        ),
    );
    assert_eq!(
        feed(
            &j,
            &mut p,
            event("v2", "c1", EventType::PageView, T0 + 3 * HOUR_MS)
        )
        .len(),
        1
    );
}

#[test]
fn decisions_serialise_to_json_with_stable_ids() {
    let j = with_policy(
        MARKETING_CAP,
        &journey("promo", "page_view", "exclusive_offer", "web", "", ""),
    );
    let run = || {
        let mut p = Profile::new("c1");
        (0..4)
            .flat_map(|i| {
                feed_all(
                    &j,
                    &mut p,
                    event(&format!("v{i}"), "c1", EventType::PageView, T0 + i),
                )
                .decisions
            })
            .collect::<Vec<_>>()
    };
    let decisions = run();
    assert_eq!(decisions, run(), "deterministic, ids included");
    let capped = serde_json::to_value(&decisions[3]).unwrap();
    assert_eq!(capped["outcome"], "capped");
    assert_eq!(capped["kind"], "exclusive_offer");
    assert_eq!(capped["channel"], "web");
    assert_eq!(capped["purpose"], "marketing");
    assert_eq!(capped["customer_id"], "c1");
    assert_eq!(capped["journey"], "promo");
    assert_eq!(capped["event_id"], "v3");
    assert_eq!(capped["event_time"], T0 + 3);
    assert_eq!(capped["decided_at"], T0 + 3);
    assert!(capped.get("deferred_until").is_none());
    let ids: std::collections::BTreeSet<&str> =
        decisions.iter().map(|d| d.decision_id.as_str()).collect();
    assert_eq!(ids.len(), 4);
    let back: Decision = serde_json::from_value(capped).unwrap();
    assert_eq!(back, decisions[3]);
}

#[test]
fn the_readme_policy_example_loads_with_the_shipped_journeys() {
    let readme = include_str!("../../../../deploy/journeys/README.md");
    let section = &readme[readme.find("### `[policy]`").expect("the section")..];
    let start = section.find("```toml\n").expect("a toml block") + 8;
    let end = start + section[start..].find("```").expect("closed");
    let mut sources: Vec<(PathBuf, String)> = crate::SHIPPED
        .iter()
        .filter(|(f, _)| *f != "policy.toml")
        .map(|(f, t)| (PathBuf::from(f), (*t).to_owned()))
        .collect();
    sources.push((PathBuf::from("README.md"), section[start..end].to_owned()));
    let j = CompiledJourneys::from_sources(&sources).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(j.policy().caps.len(), 1);
    assert!(j.policy().quiet.is_some());
}
