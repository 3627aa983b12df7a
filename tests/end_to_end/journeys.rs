//! The two first journeys fire for the customers who should get them, and only for them.

use std::collections::BTreeSet;

use rapport_model::action::action_id;
const HESITATION: &str = "hesitation_guide";
const RECOVERY: &str = "recovery_offer";
use rapport_model::testing::tp;
use rapport_model::{ActionKind, Channel, EventType, SurveyKind, Touchpoint};

use crate::support::*;

const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;

fn avro_single_object(t: &Touchpoint) -> Vec<u8> {
    rapport::ingest::encode_avro(t).unwrap()
}

#[test]
fn journeys_fire_for_the_right_customers_only() {
    let topics = Topics::new("journeys", 4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &unique("journeys"));
    let view = |id: &str, c: &str, h: i64| {
        tp(id, c, Channel::Web, EventType::ProductView, T0 + h * HOUR).with_sku("tv-55")
    };
    let events = vec![
        // Hesitating: three views of one product within three days, no purchase.
        view("h1", "c-hesitant", 0),
        view("h2", "c-hesitant", 20),
        view("h3", "c-hesitant", 40),
        // Two views only.
        view("t1", "c-two-views", 0),
        view("t2", "c-two-views", 1),
        // Viewed three times but bought in between.
        view("b1", "c-buyer", 0),
        tp(
            "b2",
            "c-buyer",
            Channel::Store,
            EventType::Purchase,
            T0 + HOUR,
        )
        .with_sku("tv-55")
        .with_amount(899.0),
        view("b3", "c-buyer", 2),
        view("b4", "c-buyer", 3),
        // Three views spread over a week: not hesitation within the window.
        view("s1", "c-slow", 0),
        view("s2", "c-slow", 80),
        view("s3", "c-slow", 160),
        // A failed delivery.
        tp(
            "f1",
            "c-failed",
            Channel::System,
            EventType::DeliveryFailed,
            T0,
        )
        .with_order("o-77"),
        // Survey answers: a detractor (sent as Avro below), a promoter, a satisfied CSAT.
        tp(
            "p1",
            "c-promoter",
            Channel::Email,
            EventType::SurveyResponse,
            T0,
        )
        .with_survey(SurveyKind::Nps, 10),
        tp(
            "q1",
            "c-satisfied",
            Channel::Email,
            EventType::SurveyResponse,
            T0,
        )
        .with_survey(SurveyKind::Csat, 4),
    ];
    produce(&topics.input, &events);
    let detractor = tp(
        "d1",
        "c-detractor",
        Channel::Email,
        EventType::SurveyResponse,
        T0,
    )
    .with_survey(SurveyKind::Nps, 3);
    produce_raw(
        &topics.input,
        &[("c-detractor".into(), avro_single_object(&detractor), vec![])],
    );

    let state = state(&cfg);
    let metrics = run_engine(&cfg, state.clone(), events.len() as u64 + 1);

    let actions = actions(&topics.actions);
    let got: BTreeSet<(String, ActionKind, String)> = actions
        .iter()
        .map(|a| (a.customer_id.clone(), a.kind, a.action_id.clone()))
        .collect();
    let want: BTreeSet<(String, ActionKind, String)> = [
        (
            "c-hesitant",
            ActionKind::GuideLink,
            action_id(HESITATION, "c-hesitant", "h3", "tv-55"),
        ),
        (
            "c-failed",
            ActionKind::RecoveryOffer,
            action_id(RECOVERY, "c-failed", "f1", ""),
        ),
        (
            "c-detractor",
            ActionKind::RecoveryOffer,
            action_id(RECOVERY, "c-detractor", "d1", ""),
        ),
        // deploy/journeys/closed_loop_alert.toml, a journey that is only a file.
        (
            "c-detractor",
            ActionKind::AlertTicket,
            action_id("closed_loop_alert", "c-detractor", "d1", "#0"),
        ),
        // Its 48 h escalation and the second level 24 h later: other
        // customers' events on the detractor's partition have already moved
        // event time past both, so they are due at once.
        (
            "c-detractor",
            ActionKind::AlertTicket,
            action_id("closed_loop_alert", "c-detractor", "d1", "escalation"),
        ),
        (
            "c-detractor",
            ActionKind::AlertTicket,
            action_id("closed_loop_alert", "c-detractor", "d1", "escalation_2"),
        ),
    ]
    .into_iter()
    .map(|(c, k, id)| (c.to_owned(), k, id))
    .collect();
    assert_eq!(got, want);
    assert_eq!(actions.len(), 6, "no duplicates: {actions:?}");
    for a in &actions {
        assert!(!a.reasons.is_empty(), "{a:?} says why");
    }
    let guide = actions
        .iter()
        .find(|a| a.kind == ActionKind::GuideLink)
        .unwrap();
    assert_eq!(guide.reasons[0].value, "3");
    assert_eq!(guide.payload["sku"], "tv-55");
    let detractor = actions
        .iter()
        .find(|a| a.customer_id == "c-detractor" && a.kind == ActionKind::RecoveryOffer)
        .unwrap();
    assert_eq!(detractor.reasons[0].condition, "nps score <= 6");
    assert_eq!(detractor.reasons[0].value, "3");

    // The profiles reflect every channel's events.
    let buyer = state
        .find_profile("c-buyer")
        .unwrap()
        .expect("buyer profile");
    assert_eq!(
        (buyer.orders, buyer.lifetime_value, buyer.events),
        (1, 899.0, 4)
    );
    assert_eq!(buyer.channels[Channel::Store.index()].count, 1);
    let det = state.find_profile("c-detractor").unwrap().unwrap();
    assert_eq!(det.nps.map(|s| s.score), Some(3));
    assert_eq!(
        metrics
            .dead_letters
            .with_label_values(&["decode", "json"])
            .get(),
        0
    );
}
