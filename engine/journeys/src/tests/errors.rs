//! The loader rejects broken journeys with every problem, each at
//! `file:line:column` with what to do.

use super::{compile, problems};
use crate::Problem;

/// A valid journey whose `when` (line 5) and steps can be replaced.
fn journey(when: &str, step: &str) -> String {
    format!(
        r#"[[journey]]
id = "j"
version = 1
trigger = {{ events = ["product_view"] }}
when = "{when}"

{step}
"#
    )
}

const ACTION: &str = r#"[[journey.steps]]
action = { kind = "guide_link", channel = "web" }"#;

fn only(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

/// The problem is at line 5, `offset` characters into the `when` string.
fn at_when(p: &Problem, offset: usize) {
    assert_eq!((p.line, p.column), (5, 9 + offset), "{p}");
    assert_eq!(p.file.to_str(), Some("test.toml"));
}

#[test]
fn the_base_journey_is_valid() {
    assert!(compile(&journey("profile.orders > 0", ACTION)).is_ok());
}

#[test]
fn a_toml_syntax_error_points_at_the_line() {
    let p = problems("[[journey]]\nid = \"j\"\nversion = \n");
    assert!(!p.is_empty());
    assert_eq!(p[0].line, 3, "{}", p[0]);
    assert!(p[0].message.contains("TOML syntax"), "{}", p[0]);
}

#[test]
fn an_unknown_profile_field_is_rejected_at_its_position() {
    let p = only(&journey("profile.ordrs > 0", ACTION));
    at_when(&p, 7);
    assert!(
        p.message.contains("unknown profile field `profile.ordrs`"),
        "{p}"
    );
    assert!(p.hint.contains("orders"), "the hint lists the fields: {p}");
    assert!(p.to_string().starts_with("test.toml:5:16: "), "{p}");
}

#[test]
fn an_unknown_event_field_is_rejected() {
    let p = only(&journey("event.commerce.colour == 'red'", ACTION));
    at_when(&p, 14);
    assert!(p.message.contains("`event.commerce.colour`"), "{p}");
    assert!(p.hint.contains("sku"), "{p}");
}

#[test]
fn a_string_compared_with_a_number_is_a_type_error() {
    let p = only(&journey("event.commerce.sku > 3", ACTION));
    assert!(p.message.contains("cannot order string against int"), "{p}");
    let p = only(&journey("profile.id == 3", ACTION));
    assert!(p.message.contains("cannot compare string with int"), "{p}");
    at_when(&p, 11);
}

#[test]
fn a_non_boolean_condition_is_rejected() {
    let p = only(&journey("profile.orders + 1", ACTION));
    assert!(p.message.contains("expression is int, not bool"), "{p}");
    at_when(&p, 0);
}

#[test]
fn an_unknown_function_is_rejected() {
    let p = only(&journey("frobnicate(profile.orders)", ACTION));
    assert!(p.message.contains("unknown function `frobnicate`"), "{p}");
    let p = only(&journey("profile.views('tv', duration('72h')) > 2", ACTION));
    assert!(
        p.message
            .contains("unknown profile function `profile.views`"),
        "{p}"
    );
    assert!(p.hint.contains("product_views"), "{p}");
    // Wrong argument types and event-type typos in a known function.
    let p = only(&journey(
        "profile.count('prodct_view', duration('72h')) > 2",
        ACTION,
    ));
    assert!(
        p.message.contains("unknown event type \"prodct_view\""),
        "{p}"
    );
    at_when(&p, 14);
    let p = only(&journey("profile.count(3, duration('72h')) > 2", ACTION));
    assert!(
        p.message
            .contains("takes (string, duration), got (int, duration)"),
        "{p}"
    );
}

#[test]
fn an_unknown_action_kind_is_rejected() {
    let step = "[[journey.steps]]\naction = { kind = \"coupon_spam\", channel = \"web\" }";
    let p = only(&journey("true", step));
    assert!(
        p.message.contains("unknown action kind \"coupon_spam\""),
        "{p}"
    );
    assert!(p.hint.contains("guide_link"), "{p}");
    assert_eq!((p.line, p.column), (8, 19), "{p}");
}

#[test]
fn a_wait_without_a_bound_is_rejected() {
    let step = format!("[[journey.steps]]\nwait = {{ cancel_when = \"true\" }}\n\n{ACTION}");
    let p = only(&journey("true", &step));
    assert!(p.message.contains("wait has no bound"), "{p}");
    assert_eq!(p.line, 8, "{p}");
}

#[test]
fn a_zero_reentry_window_is_rejected() {
    let text = journey("true", ACTION)
        .replace("when =", "reentry = { at_most = 1, per = \"0h\" }\nwhen =");
    let p = only(&text);
    assert!(p.message.contains("re-entry window is zero"), "{p}");
    assert_eq!((p.line, p.column), (5, 32), "{p}");
    let text = journey("true", ACTION).replace("when =", "reentry = { after = \"0s\" }\nwhen =");
    assert!(only(&text).message.contains("cooldown is zero"));
}

#[test]
fn two_journeys_with_one_id_are_rejected() {
    let one = journey("true", ACTION);
    let text = format!("{one}\n{one}");
    let p = only(&text);
    assert!(
        p.message.contains("journey id \"j\" is already used"),
        "{p}"
    );
    assert_eq!(p.line, 11, "{p}");
    assert!(p.hint.contains("test.toml:2:6"), "{p}");
}

#[test]
fn all_problems_are_reported_not_only_the_first() {
    let step = "[[journey.steps]]\naction = { kind = \"nope\", channel = \"pigeon\" }";
    let text = journey("profile.x > 0 && event.y == 1", step);
    let p = problems(&text);
    let messages: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(p.len(), 4, "{messages:#?}");
    // Each is printable as file:line:column: what; what to do.
    for problem in &p {
        let s = problem.to_string();
        assert!(s.starts_with("test.toml:") && s.contains("; "), "{s}");
    }
}

#[test]
fn event_is_not_available_after_a_wait() {
    let step = concat!(
        "[[journey.steps]]\nwait = { for = \"1h\" }\n\n[[journey.steps]]\n",
        "action = { kind = \"guide_link\", channel = \"web\", payload = { sku = \"{{ event.commerce.sku }}\" } }"
    );
    let p = only(&journey("true", step));
    assert!(p.message.contains("`event` is not available here"), "{p}");
}

#[test]
fn invalid_cel_syntax_is_reported_inside_the_expression() {
    let p = problems(&journey("profile.orders >", ACTION));
    assert!(p[0].message.starts_with("invalid CEL"), "{}", p[0]);
    assert_eq!(p[0].line, 5);
}

#[test]
fn a_misspelt_emotional_signal_is_rejected_at_its_position() {
    let p = only(&journey(
        "profile.emotion_signals.help_serches >= 0.5",
        ACTION,
    ));
    at_when(&p, 23);
    assert!(
        p.message
            .contains("unknown profile field `profile.emotion_signals.help_serches`"),
        "{p}"
    );
    assert!(
        p.hint.contains("help_searches"),
        "the hint lists the signals: {p}"
    );
    let p = only(&journey("profile.emotion_scores.angry > 1.0", ACTION));
    assert!(p.message.contains("`profile.emotion_scores.angry`"), "{p}");
    assert!(p.hint.contains("anxious"), "{p}");
    // Scores are doubles: comparing one with a string is a type error.
    let p = only(&journey("profile.emotion_scores.anxious == 'high'", ACTION));
    assert!(
        p.message.contains("cannot compare double with string"),
        "{p}"
    );
}

/// The base journey (lines 1-8) followed by `policy`, from line 9.
fn with_policy(policy: &str) -> String {
    format!("{}{policy}", journey("true", ACTION))
}

#[test]
fn the_base_journey_takes_a_policy() {
    let text = with_policy(
        "[policy]\ncompete = [\"marketing\"]\n[[policy.cap]]\npurpose = \"marketing\"\nmax = 3\nwindow = \"7d\"\n",
    );
    assert!(compile(&text).is_ok());
}

#[test]
fn an_invalid_time_zone_is_rejected() {
    let p = only(&with_policy(
        "[policy.quiet_hours]\nstart = \"21:00\"\nend = \"08:00\"\ndefault_timezone = \"Europe/Lodnon\"\n",
    ));
    assert!(
        p.message.contains("unknown time zone \"Europe/Lodnon\""),
        "{p}"
    );
    assert!(p.hint.contains("IANA"), "{p}");
    assert_eq!((p.line, p.column), (12, 20), "{p}");
    assert!(p.to_string().starts_with("test.toml:12:20: "), "{p}");
}

#[test]
fn a_cap_with_a_zero_window_is_rejected() {
    let p = only(&with_policy(
        "[[policy.cap]]\npurpose = \"marketing\"\nmax = 3\nwindow = \"0d\"\n",
    ));
    assert!(p.message.contains("cap window is zero"), "{p}");
    assert_eq!((p.line, p.column), (12, 10), "{p}");
    let p = only(&with_policy(
        "[[policy.cap]]\npurpose = \"marketing\"\nmax = 0\nwindow = \"7d\"\n",
    ));
    assert!(
        p.message.contains("cap max 0 is not a positive integer"),
        "{p}"
    );
    assert_eq!(p.line, 11, "{p}");
}

#[test]
fn a_suppression_naming_an_unknown_journey_is_rejected() {
    let p = only(&with_policy(
        "[[policy.suppress]]\njourney = \"j\"\nsuppresses = [\"recovery_ofer\"]\n",
    ));
    assert!(
        p.message
            .contains("suppression names unknown journey \"recovery_ofer\""),
        "{p}"
    );
    assert!(p.hint.contains("journeys are: j"), "{p}");
    assert_eq!((p.line, p.column), (11, 15), "{p}");
    let p = only(&with_policy(
        "[[policy.suppress]]\nwhen_state = \"grumpy\"\npurposes = [\"marketing\"]\n",
    ));
    assert!(
        p.message.contains("unknown emotional state \"grumpy\""),
        "{p}"
    );
    assert_eq!(p.line, 10, "{p}");
}

#[test]
fn a_control_share_outside_0_to_100_percent_is_rejected() {
    let text = journey("true", ACTION).replace("when =", "control_group = \"150%\"\nwhen =");
    let p = only(&text);
    assert!(
        p.message
            .contains("control group share \"150%\" is outside 0-100%"),
        "{p}"
    );
    assert_eq!((p.line, p.column), (5, 17), "{p}");
    let text = journey("true", ACTION).replace("when =", "control_group = \"ten\"\nwhen =");
    assert!(only(&text).message.contains("is not a share"));
    let text = journey("true", ACTION).replace("when =", "control_group = \"2.5%\"\nwhen =");
    let j = compile(&text).unwrap();
    assert_eq!(j.journeys()[0].control_group_bp, 250);
}

#[test]
fn a_fallback_that_is_not_an_action_of_the_journey_is_rejected() {
    let step = "[[journey.steps]]\naction = { kind = \"exclusive_offer\", channel = \"email\", fallback = \"agent\" }";
    let p = only(&journey("true", step));
    assert!(
        p.message
            .contains("fallback \"agent\" is not an action of journey \"j\""),
        "{p}"
    );
    assert_eq!((p.line, p.column), (8, 68), "{p}");
    // A named action of the journey is fine; one that leads back to itself is not.
    let named = "[[journey.steps]]\naction = { name = \"offer\", kind = \"exclusive_offer\", channel = \"email\", fallback = \"agent\" }\n\n[[journey.fallbacks]]\nname = \"agent\"\nkind = \"callback\"\nchannel = \"call_center\"\n";
    assert!(compile(&journey("true", named)).is_ok());
    let looped = named.replace(
        "channel = \"call_center\"",
        "channel = \"call_center\"\nfallback = \"offer\"",
    );
    let p = only(&journey("true", &looped));
    assert!(p.message.contains("leads back to action"), "{p}");
}

#[test]
fn a_second_policy_table_and_an_unknown_quiet_hours_mode_are_rejected() {
    assert!(compile(&with_policy("[policy]\ncompete = []\n")).is_ok());
    let two = crate::CompiledJourneys::from_sources(&[
        (
            std::path::PathBuf::from("a.toml"),
            with_policy("[policy]\n"),
        ),
        (
            std::path::PathBuf::from("b.toml"),
            "[policy]\ncompete = [\"survey\"]\n".to_owned(),
        ),
    ]);
    let e = two.unwrap_err();
    let p = e.problems();
    assert_eq!(p.len(), 1, "{e}");
    assert!(p[0].message.contains("a second [policy] table"), "{e}");
    assert!(p[0].hint.contains("a.toml:9:2"), "{e}");
    let step = "[[journey.steps]]\naction = { kind = \"guide_link\", channel = \"web\", quiet_hours = \"later\" }";
    let p = only(&journey("true", step));
    assert!(p.message.contains("unknown quiet_hours \"later\""), "{p}");
}
