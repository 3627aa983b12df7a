//! The native evaluator against CEL: every expression that has a native form
//! must give what CEL gives, on recorded events and the profiles they build.

use std::collections::HashMap;
use std::path::Path;

use rapport_model::{Profile, Touchpoint};

use crate::journey::{ChannelSpec, Expr, Part, Step, Template};
use crate::run::display;
use crate::CompiledJourneys;

/// Expressions beyond the shipped journeys', one for each native shape.
const EXTRA: &[&str] = &[
    r#"profile.count("purchase", duration("720h")) >= 1"#,
    r#"profile.count_on("call_started", "call_center", duration("168h")) >= 2"#,
    r#"profile.last("purchase") > event.event_time"#,
    r#"profile.last("purchase")"#,
    r#"!(event.channel in ["web", "app"])"#,
    r#"event.commerce.amount >= 50.0 || event.commerce.quantity > 1"#,
    r#"profile.nps <= 6 && profile.nps >= 0"#,
    r#"profile.contacts(duration("24h")) > 1"#,
    r#"now >= profile.first_seen"#,
    r#"profile.emotion_scores.anxious > 0.5"#,
    r#"profile.emotion_signals.help_searches"#,
    r#"event.chat.from_bot == false"#,
    r#"event.survey.score in [0, 1, 2]"#,
    r#"profile.lifetime_value"#,
    r#"profile.max_wait_seconds > 300 ? "long" : "short""#,
    r#"event.web.url < "https://shop.example/p""#,
    r#"duration("1h30m")"#,
    r#"profile.product_views(key, duration("72h"))"#,
    r#"profile.emotional_state_since < now"#,
];

fn exprs_of_template<'a>(t: &'a Template, out: &mut Vec<&'a Expr>) {
    for p in &t.parts {
        if let Part::Expr(e) = p {
            out.push(e);
        }
    }
}

fn exprs_of_steps<'a>(steps: &'a [Step], out: &mut Vec<&'a Expr>) {
    for s in steps {
        match s {
            Step::Wait { cancel_when, .. } => out.extend(cancel_when.iter()),
            Step::Branch {
                cond,
                then,
                otherwise,
            } => {
                out.push(cond);
                exprs_of_steps(then, out);
                exprs_of_steps(otherwise, out);
            }
            Step::Action(a) => {
                for (_, t) in &a.payload {
                    exprs_of_template(t, out);
                }
                if let ChannelSpec::Template(t) = &a.channel {
                    exprs_of_template(t, out);
                }
            }
        }
    }
}

/// Every expression of every journey.
fn all_exprs(j: &CompiledJourneys) -> Vec<&Expr> {
    let mut out = Vec::new();
    for journey in &j.journeys {
        out.extend(journey.key.iter());
        out.extend(journey.when.iter());
        out.extend(journey.exit_when.iter());
        for r in &journey.reasons {
            out.push(&r.value);
            out.extend(r.when.iter());
            exprs_of_template(&r.condition, &mut out);
        }
        exprs_of_steps(&journey.steps, &mut out);
    }
    out
}

/// The recorded events of every replay case, in file order.
fn recorded_events() -> Vec<Touchpoint> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/replay");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/replay")
        .map(|d| d.expect("entry").path())
        .collect();
    dirs.sort();
    let mut events = Vec::new();
    for d in dirs {
        let text = std::fs::read_to_string(d.join("events.jsonl")).expect("events.jsonl");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Ok(t) = serde_json::from_str::<Touchpoint>(line) {
                events.push(t);
            }
        }
    }
    events
}

#[test]
fn native_forms_give_what_cel_gives() {
    let j = CompiledJourneys::shipped().expect("shipped journeys");
    let env = crate::bind::environment();
    let extra: Vec<Expr> = EXTRA
        .iter()
        .map(|src| {
            let program = env.compile(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            Expr::new(program, (*src).to_owned())
        })
        .collect();
    let mut exprs = all_exprs(&j);
    for e in &exprs {
        let shaped = e.source.contains("recent_") || e.source.contains("attributes");
        assert!(
            e.native.is_some() || shaped,
            "shipped expression without a native form: {}",
            e.source
        );
    }
    for e in &extra {
        assert!(e.native.is_some(), "no native form: {}", e.source);
    }
    exprs.extend(extra.iter());

    let events = recorded_events();
    assert!(events.len() > 100, "only {} recorded events", events.len());
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    let (mut compared, mut differing) = (0usize, Vec::new());
    for t in &events {
        let id = t.identity().unwrap_or_default().to_owned();
        let p = profiles
            .entry(id.clone())
            .or_insert_with(|| Profile::new(&id));
        p.apply(t);
        rapport_model::emotion::update(p, t.event_time, j.emotion());
        let key = t
            .commerce
            .as_ref()
            .and_then(|c| c.sku.as_deref())
            .unwrap_or("");
        for with_event in [true, false] {
            let event = with_event.then_some(t);
            let b = j.bindings(p, event, t.event_time, key);
            for e in &exprs {
                let Some(native) = &e.native else { continue };
                let Ok(v) = native.eval(&b) else { continue };
                compared += 1;
                match j.eval(e, &b) {
                    Ok(cel) if display(&cel) == v.display() => {}
                    other => differing.push(format!("{}: native {v:?}, CEL {other:?}", e.source)),
                }
            }
        }
    }
    assert!(differing.is_empty(), "{differing:#?}");
    assert!(compared > 10_000, "only {compared} comparisons");
}
