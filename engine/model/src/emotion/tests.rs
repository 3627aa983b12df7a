//! The emotional state's model: each state entered from its signals, kept
//! through noise, left when the signals fade; configuration and encoding.

use super::*;
use crate::testing::tp;
use crate::touchpoint::{SurveyKind, Touchpoint};
use EmotionalState::*;

/// 2025-11-24T16:00:00Z, on a minute boundary.
const T0: i64 = 1_764_000_000_000;
const MIN_MS: i64 = 60_000;

#[test]
fn active_days_are_counted_within_the_window_late_days_included() {
    let mut t = EmotionTrack::default();
    let day = |d: i64| T0 + d * DAY_MS;
    for d in [0, 1, 1, 3, 10] {
        t.note_active(day(d));
    }
    // A late touchpoint for day 2 counts; one 200 days back is forgotten.
    t.note_active(day(2));
    t.note_active(day(-200));
    assert_eq!(t.days_active(day(0), day(10)), 5);
    assert_eq!(t.days_active(day(2), day(10)), 3);
    assert_eq!(t.days_active(day(0), day(3)), 4);
    assert_eq!(t.days_active(day(11), day(20)), 0);
    // Far ahead: the old days fall out of the bitmap.
    t.note_active(day(300));
    assert_eq!(t.days_active(day(0), day(300)), 1);
}

#[test]
fn touchpoints_observe_what_they_move_and_agree_with_a_full_observation() {
    use crate::testing::tp;
    let cfg = EmotionConfig::default();
    let kinds = [
        EventType::PageView,
        EventType::ProductView,
        EventType::AddToCart,
        EventType::HelpSearch,
        EventType::CallStarted,
        EventType::CheckoutAbandoned,
        EventType::Purchase,
        EventType::PageView,
        EventType::ChatHandoff,
    ];
    let (mut fast, mut full) = (Profile::new("c1"), Profile::new("c1"));
    // A touchpoint every 40 s over five hours: many partial observations
    // between refreshes, and windows that move meanwhile.
    for i in 0..450i64 {
        let kind = kinds[(i as usize * 7) % kinds.len()];
        let t = tp(&format!("e{i}"), "c1", Channel::Web, kind, T0 + i * 40_000)
            .with_sku(&format!("sku-{}", i % 3));
        fast.apply(&t);
        full.apply(&t);
        update_on_touchpoint(&mut fast, &t, &cfg);
        full.emotion.note_active(t.event_time);
        update(&mut full, t.event_time, &cfg);
        for s in Signal::ALL {
            // Only window edges may lag, by less than a refresh period:
            // counts of types this touchpoint moves are exact.
            if s == Signal::Engagement || s.moved_by(kind) {
                assert_eq!(
                    fast.emotion.observed(s),
                    full.emotion.observed(s),
                    "{} after {} at step {i}",
                    s.name(),
                    kind.as_str()
                );
            }
        }
    }
    assert_eq!(fast.emotion.state, full.emotion.state);
}

/// Applies `t` and evaluates, as the engine does.
fn feed(p: &mut Profile, t: Touchpoint, cfg: &EmotionConfig) -> Option<Transition> {
    p.apply(&t);
    update_on_touchpoint(p, &t, cfg)
}

fn help(at: i64) -> Touchpoint {
    tp("h", "c1", Channel::Web, EventType::HelpSearch, at)
}

fn calm(at: i64) -> Touchpoint {
    tp("pv", "c1", Channel::Web, EventType::PageView, at)
}

fn view(at: i64, sku: &str) -> Touchpoint {
    tp("v", "c1", Channel::Web, EventType::ProductView, at).with_sku(sku)
}

fn survey(at: i64, kind: SurveyKind, score: i32) -> Touchpoint {
    tp("s", "c1", Channel::Email, EventType::SurveyResponse, at).with_survey(kind, score)
}

/// An anxious customer: three help searches an hour apart (entered at T0+2h).
fn anxious(cfg: &EmotionConfig) -> Profile {
    let mut p = Profile::new("c1");
    assert_eq!(feed(&mut p, help(T0), cfg), None);
    assert_eq!(feed(&mut p, help(T0 + HOUR_MS), cfg), None);
    assert_eq!(
        feed(&mut p, help(T0 + 2 * HOUR_MS), cfg),
        Some(Transition {
            from: Neutral,
            to: Anxious
        })
    );
    p
}

#[test]
fn repeated_help_searches_enter_anxious_and_say_why() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    feed(&mut p, help(T0), &cfg);
    feed(&mut p, help(T0 + HOUR_MS), &cfg);
    assert_eq!(
        p.emotion.state, Neutral,
        "two searches: score 0.5 < enter 1.0"
    );
    let p = anxious(&cfg);
    let a = current(&p, &cfg);
    assert_eq!(a.state, Anxious);
    assert_eq!(a.since_ms, T0 + 2 * HOUR_MS);
    assert_eq!(a.score, 1.0);
    assert_eq!(a.signals.len(), 1);
    let c = &a.signals[0];
    assert_eq!(
        (c.signal, c.observed, c.value, c.weight, c.contribution),
        (Signal::HelpSearches, 3.0, 1.0, 1.0, 1.0)
    );
    assert_eq!(
        a.reasons,
        vec![Reason::new(
            "help searches within 48h (help_searches, weight 1, contributes 1.00)",
            "3"
        )]
    );
}

#[test]
fn long_call_waits_and_contacts_add_up_to_anxious() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    // One call with a 15-minute wait is enough on its own.
    let call = tp("k", "c1", Channel::CallCenter, EventType::CallStarted, T0).with_wait(900);
    assert_eq!(
        feed(&mut p, call, &cfg).map(|t| t.to),
        Some(Anxious),
        "{:?}",
        current(&p, &cfg)
    );
    // Two help searches (0.5) and two contacts (0.5) together reach 1.0.
    let mut p = Profile::new("c2");
    for (i, t) in [
        EventType::HelpSearch,
        EventType::CallStarted,
        EventType::HelpSearch,
    ]
    .into_iter()
    .enumerate()
    {
        feed(
            &mut p,
            tp("e", "c2", Channel::Web, t, T0 + i as i64 * MIN_MS),
            &cfg,
        );
    }
    assert_eq!(p.emotion.state, Neutral);
    feed(
        &mut p,
        tp(
            "e",
            "c2",
            Channel::Chat,
            EventType::ChatHandoff,
            T0 + 3 * MIN_MS,
        ),
        &cfg,
    );
    assert_eq!(p.emotion.state, Anxious);
    assert_eq!(score(&p, Anxious, &cfg), 1.0);
}

#[test]
fn an_anxious_customer_stays_anxious_through_one_calm_event() {
    let cfg = EmotionConfig::default();
    let mut p = anxious(&cfg);
    assert_eq!(feed(&mut p, calm(T0 + 3 * HOUR_MS), &cfg), None);
    assert_eq!(p.emotion.state, Anxious);
    assert_eq!(p.emotion.since_ms, T0 + 2 * HOUR_MS, "entry time is kept");
}

#[test]
fn a_score_between_leave_and_enter_keeps_the_state_then_fading_leaves_it() {
    let cfg = EmotionConfig::default();
    let mut p = anxious(&cfg);
    // 48h30m after the first search only two are inside the window: 0.5,
    // below enter but not below leave, and the dwell is long over.
    let t = T0 + 48 * HOUR_MS + 30 * MIN_MS;
    assert_eq!(feed(&mut p, calm(t), &cfg), None);
    assert_eq!(p.emotion.observed(Signal::HelpSearches), 2.0);
    assert_eq!(p.emotion.state, Anxious);
    // The same two searches do not make a calm customer anxious.
    let mut fresh = Profile::new("c9");
    feed(&mut fresh, help(T0 + HOUR_MS), &cfg);
    feed(&mut fresh, help(T0 + 2 * HOUR_MS), &cfg);
    assert_eq!(update(&mut fresh, t, &cfg), None);
    assert_eq!(fresh.emotion.state, Neutral);
    // Once only one search is left (0 < leave), the state goes.
    let t = T0 + 49 * HOUR_MS + 30 * MIN_MS;
    assert_eq!(
        feed(&mut p, calm(t), &cfg),
        Some(Transition {
            from: Anxious,
            to: Neutral
        })
    );
    assert_eq!(p.emotion.since_ms, t);
    assert!(current(&p, &cfg).reasons.is_empty());
}

#[test]
fn the_minimum_dwell_prevents_an_immediate_exit() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    for i in 0..3 {
        feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
    }
    assert_eq!(p.emotion.state, Uncertain);
    // Buying the tv removes the hesitation signal at once ...
    let buy = tp(
        "b",
        "c1",
        Channel::Web,
        EventType::Purchase,
        T0 + 10 * MIN_MS,
    )
    .with_sku("tv")
    .with_amount(500.0);
    assert_eq!(feed(&mut p, buy, &cfg), None);
    assert_eq!(score(&p, Uncertain, &cfg), 0.0);
    assert_eq!(p.emotion.state, Uncertain, "kept for the 2h dwell");
    // ... and the state goes with the first event after the dwell.
    assert_eq!(feed(&mut p, calm(T0 + 2 * HOUR_MS - 1), &cfg), None);
    assert_eq!(
        feed(&mut p, calm(T0 + 2 * HOUR_MS + 2 * MIN_MS), &cfg),
        Some(Transition {
            from: Uncertain,
            to: Neutral
        })
    );
}

#[test]
fn hesitation_is_about_one_product_not_bought_since() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    for i in 0..3 {
        feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
    }
    assert_eq!(p.emotion.state, Uncertain);
    // Buying something else does not end hesitation over the tv.
    let cable = tp(
        "b",
        "c1",
        Channel::Web,
        EventType::Purchase,
        T0 + 5 * MIN_MS,
    )
    .with_sku("cable");
    feed(&mut p, cable, &cfg);
    assert_eq!(p.emotion.observed(Signal::RepeatViews), 3.0);
    assert_eq!(score(&p, Uncertain, &cfg), 1.0);
    // A product bought within the window is no hesitation: none of its
    // views count, before or after the purchase.
    let mut q = Profile::new("c2");
    feed(&mut q, view(T0, "tv"), &cfg);
    feed(&mut q, view(T0 + MIN_MS, "tv"), &cfg);
    let buy = tp(
        "b",
        "c2",
        Channel::Web,
        EventType::Purchase,
        T0 + 2 * MIN_MS,
    )
    .with_sku("tv");
    feed(&mut q, buy, &cfg);
    feed(&mut q, view(T0 + 3 * MIN_MS, "tv"), &cfg);
    assert_eq!(q.emotion.observed(Signal::RepeatViews), 0.0);
    assert_eq!(q.emotion.state, Neutral);
    // Three products viewed once each are a comparison, worth 0.5 alone.
    let mut r = Profile::new("c3");
    for (i, sku) in ["a", "b", "c"].into_iter().enumerate() {
        feed(&mut r, view(T0 + i as i64 * MIN_MS, sku), &cfg);
    }
    assert_eq!(r.emotion.observed(Signal::ComparedProducts), 3.0);
    assert_eq!(score(&r, Uncertain, &cfg), 0.5);
    assert_eq!(r.emotion.state, Neutral);
    // Two views, a review read and a cart without purchase: uncertain.
    let mut s = Profile::new("c4");
    feed(&mut s, view(T0, "tv"), &cfg);
    feed(&mut s, view(T0 + MIN_MS, "tv"), &cfg);
    let reviews = tp(
        "r",
        "c4",
        Channel::Web,
        EventType::PageView,
        T0 + 2 * MIN_MS,
    )
    .with_url("https://shop.example/tv/Reviews");
    feed(&mut s, reviews, &cfg);
    assert_eq!(s.emotion.observed(Signal::ReviewsRead), 1.0);
    assert_eq!(s.emotion.state, Neutral, "0.5 + 0.25 < 1.0");
    let cart = tp(
        "c",
        "c4",
        Channel::Web,
        EventType::AddToCart,
        T0 + 3 * MIN_MS,
    )
    .with_sku("tv");
    assert_eq!(feed(&mut s, cart, &cfg).map(|t| t.to), Some(Uncertain));
}

#[test]
fn detractor_answers_and_sentiment_enter_invested_detractor() {
    let cfg = EmotionConfig::default();
    for (kind, score_, expected) in [
        (SurveyKind::Nps, 6, InvestedDetractor),
        (SurveyKind::Nps, 7, Neutral),
        (SurveyKind::Csat, 2, InvestedDetractor),
        (SurveyKind::Csat, 3, Neutral),
        (SurveyKind::Ces, 1, InvestedDetractor),
    ] {
        let mut p = Profile::new("c1");
        feed(&mut p, survey(T0, kind, score_), &cfg);
        assert_eq!(p.emotion.state, expected, "{kind:?} {score_}");
    }
    // NPS 0 is the strongest detractor signal, 6 the weakest.
    let mut p = Profile::new("c1");
    feed(&mut p, survey(T0, SurveyKind::Nps, 0), &cfg);
    assert_eq!(signal_value(&p, Signal::NpsDetractor, &cfg), 1.0);
    // One angry chat message moves the trend to -0.3: not yet; two do.
    let chat = |at| tp("m", "c2", Channel::Chat, EventType::ChatMessage, at).with_sentiment(-1.0);
    let mut q = Profile::new("c2");
    feed(&mut q, chat(T0), &cfg);
    assert_eq!(q.emotion.state, Neutral);
    feed(&mut q, chat(T0 + MIN_MS), &cfg);
    assert_eq!(q.emotion.state, InvestedDetractor);
    let a = current(&q, &cfg);
    assert_eq!(a.signals[0].signal, Signal::NegativeSentiment);
    assert_eq!(a.reasons[0].value, "-0.51");
}

#[test]
fn a_detractor_answer_fades_after_the_feedback_window() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    feed(&mut p, survey(T0, SurveyKind::Nps, 3), &cfg);
    assert_eq!(p.emotion.state, InvestedDetractor);
    // Four weeks later the answer still counts.
    assert_eq!(feed(&mut p, calm(T0 + 29 * 24 * HOUR_MS), &cfg), None);
    assert_eq!(p.emotion.state, InvestedDetractor);
    let t = T0 + 31 * 24 * HOUR_MS;
    assert_eq!(
        feed(&mut p, calm(t), &cfg).map(|t| t.to),
        Some(Neutral),
        "a month-old answer no longer counts"
    );
    assert_eq!(p.emotion.observed(Signal::NpsDetractor), -1.0);
}

#[test]
fn promoters_are_fans_and_big_spenders_feel_special() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    let big = tp("b", "c1", Channel::Store, EventType::Purchase, T0).with_amount(1_500.0);
    assert_eq!(
        feed(&mut p, big, &cfg).map(|t| t.to),
        Some(WantsToFeelSpecial)
    );
    assert_eq!(
        current(&p, &cfg).reasons,
        vec![
            Reason::new(
                "lifetime value (lifetime_value, weight 1, contributes 1.00)",
                "1500.00"
            ),
            Reason::new(
                "purchases within 90d (order_frequency, weight 1, contributes 0.17)",
                "1"
            )
        ]
    );
    // A promoter answer: fans rank above special customers, so it takes over
    // within the special state's dwell.
    assert_eq!(
        feed(&mut p, survey(T0 + MIN_MS, SurveyKind::Nps, 10), &cfg),
        Some(Transition {
            from: WantsToFeelSpecial,
            to: InvestedFan
        })
    );
    // Six orders within 90 days make a regular feel special too.
    let mut q = Profile::new("c2");
    for i in 0..6 {
        let o = tp(
            "o",
            "c2",
            Channel::Web,
            EventType::Purchase,
            T0 + i * 24 * HOUR_MS,
        )
        .with_amount(20.0);
        feed(&mut q, o, &cfg);
    }
    assert_eq!(q.emotion.state, WantsToFeelSpecial);
    assert_eq!(q.emotion.observed(Signal::OrderFrequency), 6.0);
}

#[test]
fn frequent_engagement_with_good_feedback_makes_a_fan() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    // A visit a day for eight days: engagement 1.0 x 0.5.
    for d in 0..8 {
        feed(&mut p, calm(T0 + d * 24 * HOUR_MS), &cfg);
    }
    assert_eq!(p.emotion.observed(Signal::Engagement), 8.0);
    assert_eq!(p.emotion.state, Neutral, "0.5 < 1.0");
    // A CSAT 5 on top (0.5): a fan.
    let t = T0 + 8 * 24 * HOUR_MS;
    assert_eq!(
        feed(&mut p, survey(t, SurveyKind::Csat, 5), &cfg).map(|t| t.to),
        Some(InvestedFan)
    );
}

#[test]
fn a_higher_priority_state_takes_over_during_the_dwell() {
    let cfg = EmotionConfig::default();
    let mut p = Profile::new("c1");
    for i in 0..3 {
        feed(&mut p, view(T0 + i * MIN_MS, "tv"), &cfg);
    }
    assert_eq!(p.emotion.state, Uncertain);
    assert_eq!(
        feed(&mut p, survey(T0 + 5 * MIN_MS, SurveyKind::Nps, 2), &cfg),
        Some(Transition {
            from: Uncertain,
            to: InvestedDetractor
        })
    );
    // A lower one does not: three help searches leave the detractor as is.
    for i in 0..3 {
        feed(&mut p, help(T0 + (10 + i) * MIN_MS), &cfg);
    }
    assert!(score(&p, Anxious, &cfg) >= 1.0);
    assert_eq!(p.emotion.state, InvestedDetractor);
}

#[test]
fn late_events_do_not_turn_the_clock_back() {
    let cfg = EmotionConfig::default();
    let mut p = anxious(&cfg);
    let late = help(T0 - 10 * HOUR_MS);
    assert_eq!(feed(&mut p, late, &cfg), None);
    assert_eq!(p.emotion.evaluated_ms, T0 + 2 * HOUR_MS);
    assert_eq!(p.emotion.state, Anxious);
}

#[test]
fn the_state_survives_encoding() {
    let cfg = EmotionConfig::default();
    let p = anxious(&cfg);
    let back = Profile::decode(&p.encode()).unwrap();
    assert_eq!(back.emotion, p.emotion);
    assert_eq!(current(&back, &cfg), current(&p, &cfg));
}

#[test]
fn the_default_configuration_is_valid_and_round_trips() {
    let d = EmotionConfig::default();
    assert_eq!(d.validate(), Ok(()));
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""min_dwell":"6h""#), "{json}");
    let back: EmotionConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
    let empty: EmotionConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, d);
    // A section given in part keeps the other defaults of that state.
    let c: EmotionConfig =
        serde_json::from_str(r#"{"anxious": {"enter": 2.0, "min_dwell": "1d"}}"#).unwrap();
    let r = c.rule(Anxious).unwrap();
    assert_eq!((r.enter, r.leave, r.min_dwell_ms), (2.0, 0.5, 24 * HOUR_MS));
    assert_eq!(r.weights, d.rule(Anxious).unwrap().weights);
    // Weights given replace that state's weights.
    let c: EmotionConfig =
        serde_json::from_str(r#"{"anxious": {"weights": {"help_searches": 0.34}}}"#).unwrap();
    assert_eq!(
        c.rule(Anxious).unwrap().weights,
        vec![(Signal::HelpSearches, 0.34)]
    );
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_to_fix() {
    let mut c = EmotionConfig::default();
    c.rule_mut(Anxious).unwrap().leave = 1.5;
    let e = c.validate().unwrap_err();
    assert!(
        matches!(
            e,
            EmotionConfigError::BadLeave {
                state: "anxious",
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().starts_with("emotion.anxious.leave = 1.5"),
        "{e}"
    );

    let mut c = EmotionConfig::default();
    c.rule_mut(Uncertain).unwrap().weights[0].1 = -1.0;
    assert_eq!(
        c.validate(),
        Err(EmotionConfigError::BadWeight {
            state: "uncertain",
            signal: "repeat_views",
            weight: -1.0
        })
    );

    let mut c = EmotionConfig::default();
    c.rule_mut(InvestedFan).unwrap().enter = 0.0;
    assert!(matches!(
        c.validate(),
        Err(EmotionConfigError::BadEnter { .. })
    ));

    let c = EmotionConfig {
        contact_window_ms: 100 * 24 * HOUR_MS,
        ..EmotionConfig::default()
    };
    assert!(matches!(
        c.validate(),
        Err(EmotionConfigError::BadWindow {
            key: "contact_window",
            ..
        })
    ));

    let mut c = EmotionConfig::default();
    c.rules.swap(0, 1);
    assert!(matches!(
        c.validate(),
        Err(EmotionConfigError::RuleOrder { .. })
    ));

    // What configuration files get wrong is refused when they are read.
    let parse = |s: &str| {
        serde_json::from_str::<EmotionConfig>(s)
            .unwrap_err()
            .to_string()
    };
    let e = parse(r#"{"anxious": {"weights": {"help_serches": 0.5}}}"#);
    assert!(
        e.contains("emotion.anxious.weights: unknown signal `help_serches`")
            && e.contains("help_searches"),
        "{e}"
    );
    let e = parse(r#"{"uncertain": {"enter": 0.4}}"#);
    assert!(e.contains("emotion.uncertain.leave = 0.5"), "{e}");
    let e = parse(r#"{"anxious": {"min_dwell": "6 hours"}}"#);
    assert!(e.contains("emotion.anxious.min_dwell"), "{e}");
    let e = parse(r#"{"anxious": {"enter": 1.0, "exit": 0.5}}"#);
    assert!(e.contains("exit"), "{e}");
    let e = parse(r#"{"detractor_nps_max": 6}"#);
    assert!(e.contains("detractor_nps_max"), "{e}");
}

#[test]
fn merged_tracks_keep_the_state_entered_latest_and_every_active_day() {
    let day = |d: i64| T0 + d * DAY_MS;
    let (mut a, mut b) = (EmotionTrack::default(), EmotionTrack::default());
    a.note_active(day(0));
    a.note_active(day(5));
    b.note_active(day(2));
    (a.state, a.since_ms, a.evaluated_ms) = (Anxious, day(5), day(5));
    (b.state, b.since_ms, b.evaluated_ms) = (Uncertain, day(2), day(9));
    b.observed[0] = 3.0;
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, ba);
    assert_eq!((ab.state, ab.since_ms), (Anxious, day(5)));
    assert_eq!(ab.observed, a.observed, "the winner's observations");
    assert_eq!(ab.evaluated_ms, day(9), "state time never runs backwards");
    assert_eq!(ab.days_active(day(0), day(9)), 3);
    assert_eq!(
        ab.refreshed_ms, 0,
        "every signal is observed again next time"
    );
    // Days more than 127 before the newest fall out, as in note_active.
    let mut old = EmotionTrack::default();
    old.note_active(day(-200));
    ab.merge(&old);
    assert_eq!(ab.days_active(day(-300), day(9)), 3);
}
