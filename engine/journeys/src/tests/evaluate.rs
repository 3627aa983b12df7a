//! The evaluator: exits, waits, branches, re-entry, reasons and profile functions.

use std::path::{Path, PathBuf};

use rapport_model::testing::tp;
use rapport_model::{ActionKind, Channel, DeliveryChannel, EventType, Profile, Reason, SurveyKind};

use super::{feed, fire, journeys, HOUR_MS, T0};
use crate::{CompiledJourneys, Purpose};

/// Waits 1h after a cart add; leaves at once on a purchase; re-enters per `reentry`.
fn cart(reentry: &str) -> CompiledJourneys {
    journeys(&format!(
        r#"[[journey]]
id = "cart_nudge"
version = 1
trigger = {{ events = ["add_to_cart"] }}
when = 'event.channel == "web" && profile.count("add_to_cart", duration("24h")) >= 1'
exit_when = 'event.event_type == "purchase"'
{reentry}

[[journey.steps]]
wait = {{ for = "1h" }}

[[journey.steps]]
action = {{ kind = "guide_link", channel = "web", payload = {{ carts = "{{{{ profile.count('add_to_cart', duration('24h')) }}}}" }} }}
"#
    ))
}

fn add(id: &str, at: i64) -> rapport_model::Touchpoint {
    tp(id, "c1", Channel::Web, EventType::AddToCart, at)
}

#[test]
fn exit_when_ends_the_journey_at_once_and_cancels_its_wait() {
    let j = cart("");
    let mut p = Profile::new("c1");
    feed(&j, &mut p, add("a1", T0));
    assert_eq!(p.journey_runs.len(), 1);
    assert_eq!(p.timers.len(), 1);
    let mut out = crate::Output::new();
    let buy = tp("b", "c1", Channel::Store, EventType::Purchase, T0 + 60_000);
    p.apply(&buy);
    let report = j.on_event(&mut p, &buy, &mut out);
    assert_eq!(report.exited, 1);
    assert!(p.timers.is_empty() && p.journey_runs.is_empty());
    assert!(fire(&j, &mut p, T0 + 5 * HOUR_MS).is_empty());
}

#[test]
fn a_wait_fires_in_event_time_with_what_the_profile_holds_then() {
    let j = cart("");
    let mut p = Profile::new("c1");
    feed(&j, &mut p, add("a1", T0));
    // A second add while inside the journey does not start another instance.
    feed(&j, &mut p, add("a2", T0 + 60_000));
    assert_eq!(p.journey_runs.len(), 1);
    let a = fire(&j, &mut p, T0 + HOUR_MS);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].action.payload["carts"], "2");
    assert_eq!(a[0].action.trigger_event_id, "a1");
    assert_eq!(a[0].purpose, Purpose::Marketing);
    // The `when` conjuncts explain the action with the values they saw... but
    // only when an event is at hand; after a wait, the named reasons remain.
    assert!(a[0].action.reasons.is_empty(), "{:?}", a[0].action.reasons);
}

#[test]
fn reentry_rules_hold_per_rolling_window() {
    let cycle = |j: &CompiledJourneys, p: &mut Profile, at: i64| {
        feed(j, p, add(&format!("a{at}"), at));
        fire(j, p, at + HOUR_MS).len()
    };
    // never: once, ever.
    let j = cart("reentry = { never = true }");
    let mut p = Profile::new("c1");
    assert_eq!(cycle(&j, &mut p, T0), 1);
    assert_eq!(cycle(&j, &mut p, T0 + 1000 * HOUR_MS), 0);

    // after: not within 24h of the last entry.
    let j = cart("reentry = { after = \"24h\" }");
    let mut p = Profile::new("c1");
    assert_eq!(cycle(&j, &mut p, T0), 1);
    assert_eq!(cycle(&j, &mut p, T0 + 2 * HOUR_MS), 0);
    assert_eq!(cycle(&j, &mut p, T0 + 24 * HOUR_MS), 1);

    // at_most 2 per 24h, rolling (not per calendar day).
    let j = cart("reentry = { at_most = 2, per = \"24h\" }");
    let mut p = Profile::new("c1");
    let fired: Vec<usize> = [0, 2, 4, 23, 25]
        .iter()
        .map(|h| cycle(&j, &mut p, T0 + h * HOUR_MS))
        .collect();
    assert_eq!(fired, [1, 1, 0, 0, 1]);
    assert!(
        p.journey_entries[0].entered_ms.len() <= 2,
        "history is pruned"
    );
}

#[test]
fn when_conjuncts_are_reported_with_the_values_they_saw() {
    let j = journeys(
        r#"[[journey]]
id = "vip"
version = 1
trigger = { events = ["purchase"] }
when = 'profile.orders >= 2 && profile.lifetime_value > 100.0 && event.channel in ["store", "web"]'

[[journey.reason]]
condition = "customer {{ profile.id }} is loyal"
value = "profile.orders"
when = "profile.orders > 1"

[[journey.steps]]
action = { kind = "exclusive_offer", channel = "reply", emotion_reasons = false, quiet_hours = "drop" }
"#,
    );
    let mut p = Profile::new("c1");
    let buy =
        |id: &str, at: i64| tp(id, "c1", Channel::Store, EventType::Purchase, at).with_amount(80.0);
    assert!(feed(&j, &mut p, buy("p1", T0)).is_empty());
    let a = feed(&j, &mut p, buy("p2", T0 + HOUR_MS));
    assert_eq!(a.len(), 1);
    let d = &a[0];
    assert_eq!(d.action.channel, DeliveryChannel::Store);
    assert_eq!(
        d.action.reasons,
        vec![
            Reason::new("customer c1 is loyal", 2),
            Reason::new("profile.orders >= 2", 2),
            Reason::new("profile.lifetime_value > 100.0", 160),
            Reason::new("event.channel in [\"store\", \"web\"]", true),
        ]
    );
}

#[test]
fn closed_loop_alert_raises_a_ticket_and_escalates_without_resolution() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/journeys");
    let j = CompiledJourneys::load(&base, &["closed_loop_alert.toml"])
        .unwrap_or_else(|e| panic!("{e}"));
    let nps = |id: &str, c: &str, at: i64, score: i32| {
        tp(id, c, Channel::Email, EventType::SurveyResponse, at).with_survey(SurveyKind::Nps, score)
    };
    // A passive customer: nothing.
    let mut p = Profile::new("c0");
    assert!(feed(&j, &mut p, nps("s0", "c0", T0, 5)).is_empty());

    // Resolved in time: one ticket, no escalation.
    let mut p = Profile::new("c1");
    let a = feed(&j, &mut p, nps("s1", "c1", T0, 2));
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].action.kind, ActionKind::AlertTicket);
    assert_eq!(a[0].action.channel, DeliveryChannel::CallCenter);
    assert_eq!(a[0].purpose, Purpose::Service);
    let ticket = &j.journeys()[0].steps[0];
    assert!(
        matches!(ticket, crate::journey::Step::Action(a) if a.quiet_hours == crate::QuietMode::Ignore),
        "tickets are for staff: quiet hours do not hold them back"
    );
    assert_eq!(a[0].action.payload["cause"], "survey_response");
    feed(
        &j,
        &mut p,
        tp(
            "r1",
            "c1",
            Channel::System,
            EventType::TicketResolved,
            T0 + 5 * HOUR_MS,
        ),
    );
    assert!(fire(&j, &mut p, T0 + 100 * HOUR_MS).is_empty());

    // Not resolved: escalated after 48h, with its own id.
    let mut p = Profile::new("c2");
    let first = feed(&j, &mut p, nps("s2", "c2", T0, 1));
    let esc = fire(&j, &mut p, T0 + 48 * HOUR_MS);
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0].action.payload["escalation"], "sla_breached");
    assert_ne!(esc[0].action.action_id, first[0].action.action_id);
    assert_eq!(esc[0].action.trigger_event_time, T0 + 48 * HOUR_MS);
}

#[test]
fn waits_of_a_removed_journey_are_dropped_and_foreign_timers_kept() {
    let j = cart("");
    let mut p = Profile::new("c1");
    feed(&j, &mut p, add("a1", T0));
    p.schedule(rapport_model::profile::Timer {
        journey: "post_delivery_survey_builtin".into(),
        key: "o-1".into(),
        fire_at_ms: T0,
        trigger_event_id: "d".into(),
    });
    let other = journeys(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/journeys/recovery_offer.toml"),
        )
        .unwrap(),
    );
    let mut out = crate::Output::new();
    let report = other.fire_due(&mut p, T0 + HOUR_MS, &mut out);
    assert_eq!((report.timers_fired, report.orphaned), (1, 1));
    assert!(out.actions.is_empty() && p.journey_runs.is_empty());
    assert_eq!(
        p.timers.len(),
        1,
        "the built-in journey's timer is not ours to take"
    );
}

#[test]
fn run_time_failures_are_reported_and_count_as_false() {
    let j = journeys(
        r#"[[journey]]
id = "odd"
version = 1
trigger = { events = ["page_view"] }
when = 'profile.count(event.attributes["type"], duration("1h")) > 0'
[[journey.steps]]
action = { kind = "self_service_link", channel = "web" }
"#,
    );
    let mut p = Profile::new("c1");
    let mut t = tp("e", "c1", Channel::Web, EventType::PageView, T0);
    t.attributes.insert("type".into(), "no_such_type".into());
    p.apply(&t);
    let mut out = crate::Output::new();
    let r = j.on_event(&mut p, &t, &mut out);
    assert!(out.actions.is_empty());
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].message.contains("no_such_type"), "{r:?}");
    t.attributes.insert("type".into(), "page_view".into());
    assert_eq!(j.on_event(&mut p, &t, &mut out).errors.len(), 0);
    assert_eq!(out.actions.len(), 1);
    let _ = PathBuf::new();
}

#[test]
fn the_readme_example_loads_and_runs() {
    let readme = include_str!("../../../../deploy/journeys/README.md");
    let start = readme.find("```toml\n").expect("a toml block") + 8;
    let end = start + readme[start..].find("```").expect("closed");
    let j = journeys(&readme[start..end]);
    let mut p = Profile::new("c1");
    // The guide goes out by email: the customer opted in to marketing email.
    let mut opt_in = tp(
        "o",
        "c1",
        Channel::Web,
        EventType::ConsentChanged,
        T0 - HOUR_MS,
    );
    for (k, v) in [
        ("purpose", "marketing"),
        ("channel", "email"),
        ("granted", "true"),
    ] {
        opt_in.attributes.insert(k.into(), v.into());
    }
    feed(&j, &mut p, opt_in);
    feed(
        &j,
        &mut p,
        tp("a", "c1", Channel::Web, EventType::AddToCart, T0).with_sku("tv"),
    );
    let a = fire(&j, &mut p, T0 + HOUR_MS);
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].action.payload["url"], "https://shop.example/guides/tv");
    assert_eq!(
        a[0].action.reasons[0],
        Reason::new("carts in the last 24h", 1)
    );
    // A checkout during the wait cancels it.
    feed(
        &j,
        &mut p,
        tp(
            "b",
            "c1",
            Channel::Web,
            EventType::AddToCart,
            T0 + 200 * HOUR_MS,
        )
        .with_sku("tv"),
    );
    let mut out = crate::Output::new();
    let co = tp(
        "c",
        "c1",
        Channel::Web,
        EventType::CheckoutStarted,
        T0 + 200 * HOUR_MS + 1,
    );
    p.apply(&co);
    assert_eq!(j.on_event(&mut p, &co, &mut out).cancelled, 1);
    assert!(fire(&j, &mut p, T0 + 300 * HOUR_MS).is_empty());
}

#[test]
fn profile_functions_count_per_channel_and_know_recency() {
    let j = journeys(
        r#"[[journey]]
id = "busy_caller"
version = 1
trigger = { events = ["call_started"] }
when = '''profile.count_on("call_started", "call_center", duration("48h")) >= 3
  && profile.count("help_search", duration("48h")) == 0
  && profile.last("call_started") == now
  && profile.contacts(duration("1h")) >= 1
  && profile.emotional_state == "anxious"'''
[[journey.steps]]
action = { kind = "callback", channel = "call_center" }
"#,
    );
    let mut p = Profile::new("c1");
    let call = |i: i64, ch: Channel| {
        tp(
            &format!("k{i}"),
            "c1",
            ch,
            EventType::CallStarted,
            T0 + i * HOUR_MS,
        )
    };
    assert!(feed(&j, &mut p, call(0, Channel::CallCenter)).is_empty());
    assert!(
        feed(&j, &mut p, call(1, Channel::App)).is_empty(),
        "an app call is not on call_center"
    );
    assert!(feed(&j, &mut p, call(2, Channel::CallCenter)).is_empty());
    let a = feed(&j, &mut p, call(3, Channel::CallCenter));
    assert_eq!(a.len(), 1, "three call-center calls within 48h");
    assert_eq!(a[0].purpose, Purpose::Service);
    assert_eq!(
        a[0].action.reasons.len(),
        5 + 1,
        "five conjuncts and the anxious signal"
    );
    // Two days later the first calls are out of the window.
    assert!(feed(&j, &mut p, call(60, Channel::CallCenter)).is_empty());
}

/// Offers a call-back to an anxious customer, saying which signals and score
/// it saw.
fn anxious_callback() -> CompiledJourneys {
    journeys(
        r#"[[journey]]
id = "calm_down"
version = 1
trigger = { events = ["help_search", "page_view"] }
when = '''profile.emotional_state == "anxious"
  && profile.emotion_scores.anxious >= 0.5
  && profile.emotion_signals.help_searches > 0.0'''
[[journey.reason]]
condition = "help searches signal"
value = "profile.emotion_signals.help_searches"
[[journey.reason]]
condition = "anxious since"
value = "profile.emotional_state_since"
[[journey.steps]]
action = { kind = "callback", channel = "call_center" }
"#,
    )
}

#[test]
fn conditions_read_the_stored_state_its_signals_and_scores() {
    let j = anxious_callback();
    let mut p = Profile::new("c1");
    let help = |i: i64| {
        tp(
            &format!("h{i}"),
            "c1",
            Channel::Web,
            EventType::HelpSearch,
            T0 + i * HOUR_MS,
        )
    };
    assert!(feed(&j, &mut p, help(0)).is_empty());
    assert!(
        feed(&j, &mut p, help(1)).is_empty(),
        "two searches: not anxious"
    );
    let a = feed(&j, &mut p, help(2));
    assert_eq!(a.len(), 1);
    let action = &a[0].action;
    assert_eq!(
        action.emotional_state,
        Some(rapport_model::EmotionalState::Anxious)
    );
    assert_eq!(
        action.reasons,
        vec![
            Reason::new("help searches signal", "1"),
            Reason::new("anxious since", (T0 + 2 * HOUR_MS).to_string()),
            Reason::new(r#"profile.emotional_state == "anxious""#, "anxious"),
            Reason::new("profile.emotion_scores.anxious >= 0.5", "1"),
            Reason::new("profile.emotion_signals.help_searches > 0.0", "1"),
            Reason::new(
                "help searches within 48h (help_searches, weight 1, contributes 1.00)",
                "3"
            ),
        ],
        "journey reasons, the conditions that held, then the signals behind the state"
    );
    // A calm page view an hour later: the stored state is still anxious
    // (hysteresis), and the signal is still there.
    let calm = tp(
        "pv",
        "c1",
        Channel::Web,
        EventType::PageView,
        T0 + 3 * HOUR_MS,
    );
    assert_eq!(feed(&j, &mut p, calm).len(), 1);
}

#[test]
fn the_emotional_state_is_read_from_the_profile_not_recomputed() {
    let j = anxious_callback();
    let mut p = Profile::new("c1");
    // Signals that would make anyone anxious, but the state was never updated:
    // journeys see what the profile stores.
    for i in 0..3 {
        p.apply(&tp("h", "c1", Channel::Web, EventType::HelpSearch, T0 + i));
    }
    let t = tp("h4", "c1", Channel::Web, EventType::HelpSearch, T0 + 3);
    p.apply(&t);
    let mut out = crate::Output::new();
    j.on_event(&mut p, &t, &mut out);
    assert!(out.actions.is_empty(), "stored state is neutral: {out:?}");
    // Once the engine updates it, the same event is judged anxious.
    rapport_model::emotion::update(&mut p, t.event_time, j.emotion());
    j.on_event(&mut p, &t, &mut out);
    assert_eq!(out.actions.len(), 1);
}
