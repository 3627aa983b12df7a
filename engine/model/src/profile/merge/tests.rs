//! Merging profiles: order independence over many generated profiles, the
//! same result as one profile that saw every touchpoint, and each rule.

use super::*;
use crate::action::{Action, ActionKind, DeliveryChannel, EmotionalState};
use crate::emotion::{update_on_touchpoint, EmotionConfig, EmotionTrack};
use crate::policy::{DeferredAction, Purpose, SentMark};
use crate::seen::SeenEvents;
use crate::testing::tp;
use crate::touchpoint::{Channel, EventType, SurveyKind, Touchpoint};
use crate::window::Windows;

/// 2025-11-24T16:00:00Z.
const T0: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;

/// A small deterministic generator (xorshift64*): the same seed, the same profiles.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Self {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

const CHANNELS: [Channel; 6] = [
    Channel::Web,
    Channel::App,
    Channel::CallCenter,
    Channel::Store,
    Channel::Chat,
    Channel::Email,
];

/// At most [`TRACKED_PRODUCTS`] skus, so no history evicts a product the
/// others still count (eviction has a test of its own).
const SKUS: [&str; 12] = [
    "tv-55", "tv-65", "soundbar", "phone", "case", "charger", "laptop", "mouse", "desk", "chair",
    "lamp", "kettle",
];

/// One touchpoint of a customer's history, of any kind the profile reads.
/// No returns with amounts and no resolved tickets: those clamp at zero, so
/// they depend on which history they land in (documented on `absorb_with`).
fn touchpoint(g: &mut Gen, id: &str, customer: &str, at: i64) -> Touchpoint {
    let channel = g.pick(&CHANNELS);
    let sku = g.pick(&SKUS);
    let t = |e| tp(id, customer, channel, e, at);
    match g.below(14) {
        0..=3 => t(EventType::ProductView).with_sku(sku),
        4 => t(EventType::Purchase)
            .with_sku(sku)
            .with_amount((1 + g.below(500)) as f64),
        5 => t(EventType::Return).with_sku(sku),
        6 => t(EventType::SurveyResponse).with_survey(
            g.pick(&[SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces]),
            g.below(11) as i32,
        ),
        7 => t(EventType::HelpSearch),
        8 => tp(
            id,
            customer,
            Channel::CallCenter,
            EventType::CallStarted,
            at,
        )
        .with_wait(g.below(900) as i32),
        9 => tp(id, customer, Channel::Chat, EventType::ChatMessage, at)
            .with_sentiment(g.below(21) as f64 / 10.0 - 1.0),
        10 => t(EventType::PageView).with_url("https://shop.example/tv-55/reviews"),
        11 => t(EventType::TicketOpened),
        12 => {
            let mut c = t(EventType::ConsentChanged);
            let purpose = g.pick(&["marketing", "survey", "all"]);
            let channel = g.pick(&["email", "sms", "all"]);
            let granted = g.pick(&["true", "false"]);
            for (k, v) in [
                ("purpose", purpose),
                ("channel", channel),
                ("granted", granted),
            ] {
                c.attributes.insert(k.into(), v.into());
            }
            c
        }
        _ => t(EventType::PageView),
    }
}

/// Applies `t` as the engine does: only when admitted, then the emotional state.
fn offer(p: &mut Profile, t: &Touchpoint) {
    if p.admit(t, &SeenLimits::default()) {
        p.apply(t);
        update_on_touchpoint(p, t, &EmotionConfig::default());
    }
}

/// A profile with a generated history: touchpoints over ten days, some with
/// event ids other histories share (a source delivering one event twice),
/// journey firings, runs with their timers, entries, sends and deferred actions.
/// Every touchpoint names the profile's time zone (see `timezone_precedence`).
fn profile(g: &mut Gen, id: &str) -> Profile {
    let mut p = Profile::new(id);
    let tz = g.pick(&["Europe/Paris", "Asia/Tokyo", "America/Chicago"]);
    for n in 0..g.below(40) {
        let event_id = if g.below(8) == 0 {
            format!("shared-{}", g.below(10))
        } else {
            format!("{id}-{n}")
        };
        // Coarse times: events of different histories often share one.
        let at = T0 + g.below(48) as i64 * HOUR;
        let mut t = touchpoint(g, &event_id, id, at);
        t.attributes.insert("timezone".into(), tz.into());
        offer(&mut p, &t);
    }
    journey_state(g, &mut p);
    delivery_state(g, &mut p);
    p
}

fn journey_state(g: &mut Gen, p: &mut Profile) {
    for n in 0..g.below(4) {
        let (journey, key) = (g.pick(&["recovery", "guide"]), g.pick(&["", "o-1", "o-2"]));
        let at = T0 + g.below(100) as i64 * HOUR;
        p.mark_journey(journey, key, at);
        let trigger = format!("{}-trigger-{n}", p.id);
        let runs = &mut p.journey_runs;
        runs.retain(|r| !(r.journey == journey && r.key == key));
        runs.push(JourneyRun {
            journey: journey.into(),
            version: 1,
            key: key.into(),
            at: [g.below(3) as u32].into_iter().collect(),
            entered_ms: at,
            trigger_event_id: trigger.as_str().into(),
        });
        p.schedule(Timer {
            journey: journey.into(),
            key: key.into(),
            fire_at_ms: at + g.below(48) as i64 * HOUR,
            trigger_event_id: trigger.as_str().into(),
        });
        match p
            .journey_entries
            .iter_mut()
            .find(|e| e.journey == journey && e.key == key)
        {
            Some(e) => {
                let pos = e.entered_ms.partition_point(|&x| x <= at);
                e.entered_ms.insert(pos, at);
            }
            None => p.journey_entries.push(JourneyEntries {
                journey: journey.into(),
                key: key.into(),
                entered_ms: [at].into_iter().collect(),
            }),
        }
    }
}

fn delivery_state(g: &mut Gen, p: &mut Profile) {
    for _ in 0..g.below(4) {
        let mark = SentMark {
            at_ms: T0 + g.below(100) as i64 * HOUR,
            journey: g.pick(&["recovery", "guide"]).into(),
            purpose: g.pick(&Purpose::ALL),
            channel: g.pick(&[DeliveryChannel::Email, DeliveryChannel::Sms]),
        };
        p.delivery.record_sent(mark, 0);
    }
    for _ in 0..g.below(3) {
        let n = g.below(5);
        let at = T0 + g.below(100) as i64 * HOUR;
        p.delivery
            .deferred
            .push(deferred(&format!("act-{n}"), &p.id, at));
    }
}

fn deferred(action_id: &str, customer: &str, at: i64) -> DeferredAction {
    DeferredAction {
        action: Action {
            action_id: action_id.into(),
            customer_id: customer.into(),
            kind: ActionKind::GuideLink,
            journey: "guide".into(),
            trigger_event_id: "e".into(),
            trigger_event_time: at,
            channel: DeliveryChannel::Email,
            payload: Default::default(),
            reasons: Vec::new(),
            emotional_state: Some(EmotionalState::Uncertain),
        },
        purpose: Purpose::Marketing,
        deferred_ms: at,
        due_ms: at + 8 * HOUR,
    }
}

/// The fields in which two profiles differ, with both values, for a readable failure.
fn differences(a: &Profile, b: &Profile) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(a).unwrap(),
        serde_json::to_value(b).unwrap(),
    );
    let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} != {}", b[k]))
        .collect()
}

fn merged(base: &Profile, others: &[&Profile]) -> Profile {
    let mut p = base.clone();
    for o in others {
        p.absorb(o);
    }
    p
}

#[test]
fn absorbing_two_histories_in_either_order_gives_the_same_profile() {
    for seed in 0..300 {
        let g = &mut Gen::new(seed);
        let (c, a1, a2) = (
            profile(g, "c-1"),
            profile(g, "anon-1"),
            profile(g, "anon-2"),
        );
        let (x, y) = (merged(&c, &[&a1, &a2]), merged(&c, &[&a2, &a1]));
        assert!(x == y, "seed {seed}: {:#?}", differences(&x, &y));
        assert_consistent(&x, seed);
    }
}

/// What holds of any merged profile: one recent touch per event id, one run
/// and one timer per (journey, key), a run's timer being its own.
fn assert_consistent(p: &Profile, seed: u64) {
    let mut ids: Vec<&str> = p.recent.iter().map(|t| t.event_id.as_str()).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "seed {seed}: a repeated event id in recent");
    for r in &p.journey_runs {
        let same = |j: &str, k: &str| j == r.journey && k == r.key;
        assert_eq!(
            p.journey_runs
                .iter()
                .filter(|o| same(&o.journey, &o.key))
                .count(),
            1
        );
        let timers: Vec<&Timer> = p
            .timers
            .iter()
            .filter(|t| same(&t.journey, &t.key))
            .collect();
        assert_eq!(timers.len(), 1, "seed {seed}");
        assert_eq!(
            timers[0].trigger_event_id, r.trigger_event_id,
            "seed {seed}"
        );
    }
}

#[test]
fn absorbing_two_histories_one_by_one_equals_absorbing_them_merged() {
    for seed in 0..300 {
        let g = &mut Gen::new(seed);
        let (c, a1, a2) = (
            profile(g, "c-1"),
            profile(g, "anon-1"),
            profile(g, "anon-2"),
        );
        let one_by_one = merged(&c, &[&a1, &a2]);
        let together = merged(&c, &[&merged(&a1, &[&a2])]);
        assert!(
            one_by_one == together,
            "seed {seed}: {:#?}",
            differences(&one_by_one, &together)
        );
    }
}

#[test]
fn a_stream_split_between_two_profiles_merges_into_what_one_profile_holds() {
    for seed in 0..300 {
        let g = &mut Gen::new(seed);
        let (mut whole, mut known, mut anon) = (
            Profile::new("c-1"),
            Profile::new("c-1"),
            Profile::new("anon-1"),
        );
        // In time order, distinct times: each part is in order too, so "the
        // latest" and "the last to arrive" agree in both.
        // Several a minute (buckets both parts count into), now and then hours apart.
        let mut at = T0;
        for n in 0..g.below(80) {
            at += 1 + g.below(20_000) as i64 + if g.below(6) == 0 { 2 * HOUR } else { 0 };
            let t = touchpoint(g, &format!("e-{n}"), "c-1", at);
            offer(&mut whole, &t);
            offer(
                if g.below(2) == 0 {
                    &mut known
                } else {
                    &mut anon
                },
                &t,
            );
        }
        known.absorb(&anon);
        assert_same_history(&known, &whole, seed);
    }
}

/// What a merge must reproduce of one profile that saw every touchpoint.
fn assert_same_history(m: &Profile, w: &Profile, seed: u64) {
    let ctx = format!("seed {seed}");
    assert_eq!(m.events, w.events, "{ctx}");
    if w.events > 0 {
        assert_eq!(
            (m.first_seen_ms, m.last_seen_ms),
            (w.first_seen_ms, w.last_seen_ms),
            "{ctx}"
        );
    }
    assert_eq!(m.channels, w.channels, "{ctx}");
    assert_eq!(
        (m.orders, m.returns, m.open_issues),
        (w.orders, w.returns, w.open_issues),
        "{ctx}"
    );
    assert_eq!(m.lifetime_value, w.lifetime_value, "{ctx}");
    assert_eq!(m.last_purchase_ms, w.last_purchase_ms, "{ctx}");
    assert_eq!((m.nps, m.csat, m.ces), (w.nps, w.csat, w.ces), "{ctx}");
    assert_eq!(m.previous_surveys, w.previous_surveys, "{ctx}");
    assert_eq!(m.sentiment_ms, w.sentiment_ms, "{ctx}");
    assert_eq!(m.contacts_ms, w.contacts_ms, "{ctx}");
    assert_eq!(m.review_reads_ms, w.review_reads_ms, "{ctx}");
    assert_eq!(m.call_waits, w.call_waits, "{ctx}");
    assert_eq!(m.max_wait_seconds, w.max_wait_seconds, "{ctx}");
    let mut products = w.products.clone();
    products.sort_by(|a, b| a.sku.cmp(&b.sku));
    assert_eq!(m.products, products, "{ctx}");
    assert_eq!(m.recent, w.recent, "{ctx}");
    assert_eq!(
        m.seen_events.iter().collect::<Vec<_>>(),
        w.seen_events.iter().collect::<Vec<_>>(),
        "{ctx}"
    );
    assert_same_windows(&m.windows, &w.windows, &ctx);
    for purpose in Purpose::ALL {
        for channel in DeliveryChannel::ALL {
            assert_eq!(
                m.delivery.consent(purpose, channel),
                w.delivery.consent(purpose, channel),
                "{ctx} {purpose:?} {channel:?}"
            );
        }
    }
    let days = |p: &Profile| {
        p.emotion
            .days_active(T0 - 10 * HOUR * 24, T0 + 10 * HOUR * 24)
    };
    assert_eq!(days(m), days(w), "{ctx}");
}

/// Windowed counts agree for every type and channel over hour-aligned windows
/// (buckets younger than a week are at most an hour wide in both).
fn assert_same_windows(m: &Windows, w: &Windows, ctx: &str) {
    let now = w.series.iter().map(|s| s.last_ms).max().unwrap_or(T0);
    for s in &w.series {
        for hours in [0, 1, 2, 3, 5, 8, 24, 48] {
            let since = now - now.rem_euclid(HOUR) - hours * HOUR;
            assert_eq!(
                m.count_on(s.event_type, s.channel, since, now),
                w.count_on(s.event_type, s.channel, since, now),
                "{ctx}: {:?} on {:?} in {hours}h",
                s.event_type,
                s.channel
            );
        }
        assert_eq!(m.last_ms(s.event_type), w.last_ms(s.event_type), "{ctx}");
    }
    assert_eq!(m.series.len(), w.series.len(), "{ctx}");
}

#[test]
fn the_customer_keeps_its_id_and_gains_the_anonymous_ones() {
    let mut c = Profile::new("c-1");
    c.anonymous_ids = vec!["anon-9".into()];
    let mut a = Profile::new("anon-1");
    a.anonymous_ids = vec!["anon-7".into(), "c-1".into(), "anon-9".into()];
    c.absorb(&a);
    assert_eq!(c.id, "c-1");
    assert_eq!(c.anonymous_ids, ["anon-1", "anon-7", "anon-9"]);
    // The customer's own id is never among its anonymous ids.
    c.absorb(&Profile::new("c-1"));
    assert_eq!(c.anonymous_ids, ["anon-1", "anon-7", "anon-9"]);
}

#[test]
fn the_anonymous_views_count_toward_hesitation_after_the_merge() {
    let view = |id: &str, who: &str, at| {
        tp(id, who, Channel::Web, EventType::ProductView, at).with_sku("tv-55")
    };
    let (mut c, mut a) = (Profile::new("c-1"), Profile::new("anon-1"));
    offer(&mut a, &view("v1", "anon-1", T0));
    offer(&mut a, &view("v2", "anon-1", T0 + HOUR));
    offer(&mut c, &view("v3", "c-1", T0 + 2 * HOUR));
    c.absorb(&a);
    let interest = c.product_interest("tv-55").expect("tracked");
    assert_eq!(interest.unbought_views(T0, T0 + 2 * HOUR), 3);
    assert_eq!(
        c.windows.count(EventType::ProductView, T0, T0 + 2 * HOUR),
        3
    );
    // A repeat of an anonymous event is still refused after the merge.
    assert!(!c.admit(&view("v1", "c-1", T0), &SeenLimits::default()));
}

#[test]
fn beyond_the_tracked_products_the_stalest_go() {
    let (mut c, mut a) = (Profile::new("c-1"), Profile::new("anon-1"));
    for i in 0..TRACKED_PRODUCTS as i64 {
        let at = T0 + i * 2 * HOUR;
        let sku = |side| format!("{side}-{i}");
        let v = |p: &mut Profile, side| {
            let t = tp("e", &p.id.clone(), Channel::Web, EventType::ProductView, at);
            p.apply(&t.with_sku(&sku(side)));
        };
        v(&mut c, "c");
        v(&mut a, "a");
    }
    // A purchase makes an old product fresh.
    a.apply(
        &tp(
            "p",
            "anon-1",
            Channel::Store,
            EventType::Purchase,
            T0 + 99 * HOUR,
        )
        .with_sku("a-0"),
    );
    c.absorb(&a);
    assert_eq!(c.products.len(), TRACKED_PRODUCTS);
    assert!(c.product_interest("a-0").is_some(), "bought latest");
    assert!(c.product_interest("c-15").is_some() && c.product_interest("a-15").is_some());
    assert!(c.product_interest("c-0").is_none() && c.product_interest("a-1").is_none());
}

#[test]
fn the_latest_survey_answers_and_sentiment_win() {
    let answer = |id: &str, at, score| {
        tp(id, "x", Channel::Email, EventType::SurveyResponse, at)
            .with_survey(SurveyKind::Nps, score)
    };
    let (mut c, mut a) = (Profile::new("c-1"), Profile::new("anon-1"));
    c.apply(&answer("n1", T0, 3));
    c.apply(&answer("n3", T0 + 30, 9));
    a.apply(&answer("n2", T0 + 20, 6));
    a.apply(&answer("n4", T0 + 40, 10));
    c.apply(&tp("m1", "c-1", Channel::Chat, EventType::ChatMessage, T0 + 50).with_sentiment(-1.0));
    a.apply(
        &tp(
            "m2",
            "anon-1",
            Channel::Chat,
            EventType::ChatMessage,
            T0 + 10,
        )
        .with_sentiment(1.0),
    );
    let mut m = c.clone();
    m.absorb(&a);
    let (latest, trend) = m.survey_trend(SurveyKind::Nps);
    assert_eq!((latest.map(|s| s.score), trend), (Some(10), Some(1)));
    assert_eq!((m.sentiment, m.sentiment_ms), (c.sentiment, T0 + 50));
}

#[test]
fn one_run_per_journey_and_key_and_its_own_timer() {
    let run = |trigger: &str, entered| JourneyRun {
        journey: "recovery".into(),
        version: 1,
        key: "o-1".into(),
        at: [1].into_iter().collect(),
        entered_ms: entered,
        trigger_event_id: trigger.into(),
    };
    let timer = |trigger: &str, due| Timer {
        journey: "recovery".into(),
        key: "o-1".into(),
        fire_at_ms: due,
        trigger_event_id: trigger.into(),
    };
    let (mut c, mut a) = (Profile::new("c-1"), Profile::new("anon-1"));
    // The anonymous run started first but waits longer: its timer, due as it was.
    c.journey_runs.push(run("t-c", T0 + HOUR));
    c.schedule(timer("t-c", T0 + 2 * HOUR));
    a.journey_runs.push(run("t-a", T0));
    a.schedule(timer("t-a", T0 + 5 * HOUR));
    a.schedule(Timer {
        key: "policy:deferred:act-1".into(),
        ..timer("t-x", T0 + 3 * HOUR)
    });
    c.mark_journey("recovery", "o-1", T0 + HOUR);
    a.mark_journey("recovery", "o-1", T0);
    c.absorb(&a);
    assert_eq!(c.journey_runs, [run("t-a", T0)]);
    let due: Vec<(&str, i64)> = c
        .timers
        .iter()
        .map(|t| (t.trigger_event_id.as_str(), t.fire_at_ms))
        .collect();
    assert_eq!(due, [("t-a", T0 + 5 * HOUR), ("t-x", T0 + 3 * HOUR)]);
    let mark = c.journey_mark("recovery", "o-1").expect("marked");
    assert_eq!((mark.fired_ms, mark.count), (T0 + HOUR, 2));
}

/// Every field of a profile with every field set changes when it is merged
/// into an empty customer profile. The destructuring lists every field (no
/// `..`), so a new field fails to compile here until a merge rule covers it.
#[test]
fn every_field_is_merged() {
    let g = &mut Gen::new(7);
    let mut a = profile(g, "anon-1");
    a.anonymous_ids.push("anon-0".into());
    a.journey_entries.push(JourneyEntries {
        journey: "guide".into(),
        key: "k".into(),
        entered_ms: [T0].into_iter().collect(),
    });
    for t in [
        tp("x1", "anon-1", Channel::Chat, EventType::ChatMessage, T0).with_sentiment(-0.8),
        tp("x2", "anon-1", Channel::Web, EventType::Purchase, T0).with_amount(5.0),
        tp("x3", "anon-1", Channel::Web, EventType::Return, T0),
        tp("x4", "anon-1", Channel::Web, EventType::HelpSearch, T0),
        tp(
            "x5",
            "anon-1",
            Channel::CallCenter,
            EventType::CallStarted,
            T0,
        )
        .with_wait(60),
        tp("x6", "anon-1", Channel::Web, EventType::PageView, T0).with_url("/reviews"),
        tp("x7", "anon-1", Channel::Web, EventType::TicketOpened, T0),
        tp("x8", "anon-1", Channel::Web, EventType::ProductView, T0).with_sku("tv-55"),
    ]
    .iter()
    {
        offer(&mut a, t);
    }
    for (i, kind) in [SurveyKind::Nps, SurveyKind::Csat, SurveyKind::Ces]
        .into_iter()
        .enumerate()
    {
        for (n, score) in [2, 4].into_iter().enumerate() {
            let at = T0 + (i * 2 + n) as i64;
            a.apply(
                &tp("s", "anon-1", Channel::Email, EventType::SurveyResponse, at)
                    .with_survey(kind, score),
            );
        }
    }
    a.emotion.state = EmotionalState::Anxious;
    a.emotion.since_ms = T0;
    a.delivery.timezone = Some("Asia/Tokyo".into());
    a.delivery.deferred.push(deferred("act-9", "anon-1", T0));
    let mut m = Profile::new("c-1");
    m.absorb(&a);
    let empty = Profile::new("c-1");
    let Profile {
        id,
        anonymous_ids,
        first_seen_ms,
        last_seen_ms,
        events,
        channels,
        orders,
        lifetime_value,
        returns,
        last_purchase_ms,
        nps,
        csat,
        ces,
        open_issues,
        sentiment,
        contacts_ms,
        max_wait_seconds,
        products,
        recent,
        journeys,
        timers,
        windows,
        journey_runs,
        journey_entries,
        review_reads_ms,
        call_waits,
        sentiment_ms,
        emotion,
        delivery,
        previous_surveys,
        seen_events,
    } = &m;
    assert_eq!(id, "c-1", "the id stays");
    assert_eq!(anonymous_ids, &["anon-0", "anon-1"]);
    let changed = [
        *first_seen_ms != empty.first_seen_ms,
        *last_seen_ms != empty.last_seen_ms,
        *events != empty.events,
        *channels != empty.channels,
        *orders != empty.orders,
        *lifetime_value != empty.lifetime_value,
        *returns != empty.returns,
        *last_purchase_ms != empty.last_purchase_ms,
        *nps != empty.nps,
        *csat != empty.csat,
        *ces != empty.ces,
        *open_issues != empty.open_issues,
        *sentiment != empty.sentiment,
        *contacts_ms != empty.contacts_ms,
        *max_wait_seconds != empty.max_wait_seconds,
        *products != empty.products,
        *recent != empty.recent,
        *journeys != empty.journeys,
        *timers != empty.timers,
        *windows != empty.windows,
        *journey_runs != empty.journey_runs,
        *journey_entries != empty.journey_entries,
        *review_reads_ms != empty.review_reads_ms,
        *call_waits != empty.call_waits,
        *sentiment_ms != empty.sentiment_ms,
        emotion.state != EmotionTrack::default().state,
        delivery.timezone.is_some() && !delivery.deferred.is_empty() && !delivery.sent.is_empty(),
        previous_surveys.iter().all(Option::is_some),
        *seen_events != SeenEvents::default(),
    ];
    let unchanged: Vec<usize> = (0..changed.len()).filter(|&i| !changed[i]).collect();
    assert!(
        unchanged.is_empty(),
        "fields left as they were (by position): {unchanged:?}"
    );
}

#[test]
fn the_time_zone_of_the_history_seen_latest_that_names_one_is_kept() {
    let seen = |id: &str, at, tz: Option<&str>| {
        let mut t = tp("e", id, Channel::App, EventType::PageView, at);
        if let Some(tz) = tz {
            t.attributes.insert("timezone".into(), tz.into());
        }
        let mut p = Profile::new(id);
        p.apply(&t);
        p
    };
    let c = seen("c-1", T0, Some("Europe/Paris"));
    let later = seen("anon-1", T0 + HOUR, Some("Asia/Tokyo"));
    let latest_without = seen("anon-2", T0 + 2 * HOUR, None);
    let tz = |p: &Profile| p.delivery.timezone.as_deref().map(str::to_owned);
    assert_eq!(tz(&merged(&c, &[&later])).as_deref(), Some("Asia/Tokyo"));
    assert_eq!(tz(&merged(&later, &[&c])).as_deref(), Some("Asia/Tokyo"));
    // A history without a zone leaves the zone as it was, however recent.
    assert_eq!(
        tz(&merged(&c, &[&latest_without])).as_deref(),
        Some("Europe/Paris")
    );
    assert_eq!(
        tz(&merged(&latest_without, &[&c])).as_deref(),
        Some("Europe/Paris")
    );
}

#[test]
fn extreme_times_and_counts_merge_without_panicking() {
    let mut odd = Profile::new("anon-1");
    (odd.events, odd.first_seen_ms, odd.last_seen_ms) = (u64::MAX, i64::MIN, i64::MAX);
    odd.channels[0].count = u64::MAX;
    (odd.orders, odd.returns, odd.open_issues) = (u32::MAX, u32::MAX, u32::MAX);
    odd.emotion.active_day = i64::MIN;
    odd.emotion.active_days = u128::MAX;
    odd.windows.record(EventType::Search, Channel::Web, T0);
    odd.windows.series[0].buckets[0].count = u32::MAX;
    let mut c = merged(&odd, &[&odd]);
    c.absorb(&Profile::new("anon-2"));
    let mut far = Profile::new("c-1");
    far.emotion.active_day = i64::MAX;
    far.absorb(&c);
    c.absorb(&far);
    assert_eq!((c.events, c.orders), (u64::MAX, u32::MAX));
    assert_eq!((c.first_seen_ms, c.last_seen_ms), (i64::MIN, i64::MAX));
    assert_eq!(c.windows.series[0].buckets[0].count, u32::MAX);
}
