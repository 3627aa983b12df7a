//! The `[policy]` table to a checked [`DeliveryPolicy`], or every problem
//! found, each at `file:line:column`.

use std::ops::Range;

use chrono_tz::Tz;
use rapport_model::policy::Purpose;
use rapport_model::DeliveryChannel;
use toml::Spanned;

use crate::duration::parse_duration;
use crate::error::{Problem, SourceFile};
use crate::format::*;
use crate::policy::*;
use crate::symbols;

struct Checker<'a> {
    file: &'a SourceFile<'a>,
    problems: &'a mut Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, span: &Range<usize>, message: String, hint: impl Into<String>) {
        self.problems.push(self.file.at(span, message, hint));
    }

    fn purpose(&mut self, s: &Spanned<String>) -> Option<Purpose> {
        Purpose::parse(s.get_ref()).or_else(|| {
            self.fail(
                &s.span(),
                format!("unknown purpose {:?}", s.get_ref()),
                "purposes are: marketing, survey, service",
            );
            None
        })
    }

    fn purposes(&mut self, list: &[Spanned<String>]) -> [bool; 3] {
        let mut out = [false; 3];
        for p in list {
            if let Some(p) = self.purpose(p) {
                out[p.index()] = true;
            }
        }
        out
    }

    fn channel(&mut self, s: &Spanned<String>) -> Option<DeliveryChannel> {
        DeliveryChannel::parse(s.get_ref()).or_else(|| {
            self.fail(
                &s.span(),
                format!("unknown delivery channel {:?}", s.get_ref()),
                format!(
                    "delivery channels are: {}",
                    symbols::list(&DeliveryChannel::ALL, |c| c.as_str())
                ),
            );
            None
        })
    }

    fn journey(&mut self, s: &Spanned<String>, known: &[&str], what: &str) -> bool {
        if known.contains(&s.get_ref().as_str()) {
            return true;
        }
        self.fail(
            &s.span(),
            format!("{what} names unknown journey {:?}", s.get_ref()),
            format!("journeys are: {}", known.join(", ")),
        );
        false
    }

    fn granted(&mut self, s: &Spanned<String>) -> bool {
        match s.get_ref().as_str() {
            "granted" => true,
            "denied" => false,
            other => {
                self.fail(
                    &s.span(),
                    format!("consent default {other:?} is neither \"granted\" nor \"denied\""),
                    "write \"granted\" or \"denied\"",
                );
                false
            }
        }
    }

    fn cap(&mut self, c: &Spanned<RawCap>, known: &[&str]) -> Option<Cap> {
        let raw = c.get_ref();
        let purpose = match &raw.purpose {
            None => Filter::Any,
            Some(p) if p.get_ref() == "*" => Filter::Each,
            Some(p) => Filter::Is(self.purpose(p)?),
        };
        let journey = match &raw.journey {
            None => Filter::Any,
            Some(j) if j.get_ref() == "*" => Filter::Each,
            Some(j) => {
                if !self.journey(j, known, "cap") {
                    return None;
                }
                Filter::Is(j.get_ref().clone())
            }
        };
        let channel = match &raw.channel {
            None => Filter::Any,
            Some(ch) if ch.get_ref() == "*" => Filter::Each,
            Some(ch) => Filter::Is(self.channel(ch)?),
        };
        let max = match u32::try_from(*raw.max.get_ref()) {
            Ok(m) if m > 0 => m,
            _ => {
                self.fail(
                    &raw.max.span(),
                    format!("cap max {} is not a positive integer", raw.max.get_ref()),
                    "allow at least one action per window; to send none, use consent or [[policy.suppress]]",
                );
                return None;
            }
        };
        let window_ms = match parse_duration(raw.window.get_ref()) {
            Ok(0) => {
                self.fail(
                    &raw.window.span(),
                    "cap window is zero".into(),
                    "a cap counts over a rolling window: give a positive one, e.g. window = \"7d\"",
                );
                return None;
            }
            Ok(ms) => ms,
            Err(e) => {
                self.fail(
                    &raw.window.span(),
                    e,
                    "write windows like \"24h\", \"7d\", \"30d\"",
                );
                return None;
            }
        };
        let label = cap_label(
            raw.name.as_deref(),
            &purpose,
            &journey,
            &channel,
            max,
            raw.window.get_ref().trim(),
        );
        Some(Cap {
            label,
            purpose,
            journey,
            channel,
            max,
            window_ms,
        })
    }

    fn quiet(&mut self, q: &Spanned<RawQuietHours>) -> Option<QuietHours> {
        let raw = q.get_ref();
        let clock = |s: &Spanned<String>, this: &mut Self| {
            parse_clock(s.get_ref().trim()).or_else(|| {
                this.fail(
                    &s.span(),
                    format!("{:?} is not a time of day", s.get_ref()),
                    "write local times as \"HH:MM\", e.g. start = \"21:00\"",
                );
                None
            })
        };
        let start = clock(&raw.start, self);
        let end = clock(&raw.end, self);
        let tz = raw
            .default_timezone
            .get_ref()
            .trim()
            .parse::<Tz>()
            .map_err(|_| {
                self.fail(
                    &raw.default_timezone.span(),
                    format!("unknown time zone {:?}", raw.default_timezone.get_ref()),
                    "use an IANA time zone name such as \"Europe/London\" or \"Asia/Tokyo\"",
                );
            })
            .ok();
        let (start, end) = (start?, end?);
        if start == end {
            self.fail(
                &raw.end.span(),
                "quiet hours start and end at the same time".into(),
                "give a window such as start = \"21:00\", end = \"08:00\", or drop [policy.quiet_hours]",
            );
            return None;
        }
        let purposes = match &raw.purposes {
            None => [true, true, false],
            Some(list) => self.purposes(list),
        };
        let mut channels = [false; 8];
        match &raw.channels {
            None => {
                for c in [
                    DeliveryChannel::Email,
                    DeliveryChannel::Sms,
                    DeliveryChannel::Push,
                    DeliveryChannel::CallCenter,
                ] {
                    channels[c.index()] = true;
                }
            }
            Some(list) => {
                for c in list {
                    if let Some(c) = self.channel(c) {
                        channels[c.index()] = true;
                    }
                }
            }
        }
        Some(QuietHours {
            start,
            end,
            default_tz: tz?,
            purposes,
            channels,
        })
    }

    fn suppress(&mut self, s: &Spanned<RawSuppress>, known: &[&str]) -> Option<Suppress> {
        let raw = s.get_ref();
        match (
            &raw.when_state,
            &raw.purposes,
            &raw.journey,
            &raw.suppresses,
        ) {
            (Some(state), Some(purposes), None, None) => {
                let st = symbols::emotional_state(state.get_ref()).or_else(|| {
                    self.fail(
                        &state.span(),
                        format!("unknown emotional state {:?}", state.get_ref()),
                        format!(
                            "states are: {}",
                            symbols::list(&symbols::EMOTIONAL_STATES, |e| e.as_str())
                        ),
                    );
                    None
                });
                let purposes = self.purposes(purposes);
                Some(Suppress::State {
                    state: st?,
                    purposes,
                })
            }
            (None, None, Some(journey), Some(suppresses)) => {
                let mut ok = self.journey(journey, known, "suppression");
                for j in suppresses {
                    ok &= self.journey(j, known, "suppression");
                }
                ok.then(|| Suppress::Journey {
                    journey: journey.get_ref().clone(),
                    suppresses: suppresses.iter().map(|j| j.get_ref().clone()).collect(),
                })
            }
            _ => {
                self.fail(
                    &s.span(),
                    "a suppression rule needs either when_state and purposes, or journey and suppresses".into(),
                    "write { when_state = \"anxious\", purposes = [\"marketing\"] } or { journey = \"a\", suppresses = [\"b\"] }",
                );
                None
            }
        }
    }
}

/// Checks and compiles the `[policy]` table of `file`; `known` are the ids of
/// every journey loaded with it.
pub(crate) fn compile(
    file: &SourceFile,
    raw: RawPolicy,
    known: &[&str],
    problems: &mut Vec<Problem>,
) -> DeliveryPolicy {
    let mut c = Checker { file, problems };
    let mut policy = DeliveryPolicy::default();
    if let Some(list) = &raw.compete {
        policy.compete = c.purposes(list);
    }
    for cap in &raw.cap {
        if let Some(cap) = c.cap(cap, known) {
            policy.longest_window_ms = policy.longest_window_ms.max(cap.window_ms);
            policy.caps.push(cap);
        }
    }
    policy.quiet = raw.quiet_hours.as_ref().and_then(|q| c.quiet(q));
    for (name, table) in &raw.consent {
        let Some(purpose) = Purpose::parse(name) else {
            c.fail(
                &table.span(),
                format!("[policy.consent.{name}] names no purpose"),
                "write [policy.consent.marketing], [policy.consent.survey] or [policy.consent.service]",
            );
            continue;
        };
        let t = table.get_ref();
        let default = c.granted(&t.default);
        let row = &mut policy.consent_default[purpose.index()];
        *row = [default; 8];
        for (channel, value) in &t.channels {
            match DeliveryChannel::parse(channel) {
                Some(ch) => row[ch.index()] = c.granted(value),
                None => c.fail(
                    &value.span(),
                    format!("unknown delivery channel {channel:?}"),
                    format!(
                        "delivery channels are: {}",
                        symbols::list(&DeliveryChannel::ALL, |c| c.as_str())
                    ),
                ),
            }
        }
    }
    for s in &raw.suppress {
        if let Some(s) = c.suppress(s, known) {
            policy.suppress.push(s);
        }
    }
    policy
}
