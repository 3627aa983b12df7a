//! Compiling one parsed journey: triggers, steps, waits, actions, reasons and
//! their CEL expressions checked against the profile and touchpoint schema,
//! every problem recorded at `file:line:column` with what to fix.

use std::ops::Range;

use cel::common::ast::Expr as Ast;
use cel::Env;
use toml::Spanned;

use crate::cel_text::{char_offset, is_comparison, node_text, split_and};
use crate::check::{check, Scope};
use crate::duration::parse_duration;
use crate::error::{Problem, SourceFile};
use crate::format::*;
use crate::journey::*;
use crate::policy::QuietMode;
use crate::schema::Ty;
use crate::symbols;
use rapport_model::ActionKind;

/// The longest wait a journey may declare: waits are always bounded.
pub const MAX_WAIT_MS: i64 = 400 * 86_400_000;

/// Compiles one file's journeys, recording every problem found at its place.
pub(crate) struct Compiler<'a> {
    env: &'a Env,
    file: &'a SourceFile<'a>,
    problems: &'a mut Vec<Problem>,
    /// Path of the step being compiled.
    path: Vec<u32>,
    /// Named actions of the journey being compiled, with where the name is.
    named: Vec<(String, Named, Range<usize>)>,
    /// Fallbacks named by its actions: (the naming action's name, the fallback).
    fallbacks: Vec<(Option<String>, Spanned<String>)>,
}

/// A journey's instance key and entry and exit conditions, compiled.
struct Conditions {
    key: Option<Expr>,
    when: Option<Expr>,
    exit_when: Option<Expr>,
}

/// Where a step list runs: whether an event is at hand (no wait before it).
#[derive(Clone, Copy)]
struct StepCx {
    event: bool,
}

impl<'a> Compiler<'a> {
    /// A compiler for the journeys of `file`, checking expressions with `env`.
    pub(crate) fn new(
        env: &'a Env,
        file: &'a SourceFile<'a>,
        problems: &'a mut Vec<Problem>,
    ) -> Self {
        Compiler {
            env,
            file,
            problems,
            path: Vec::new(),
            named: Vec::new(),
            fallbacks: Vec::new(),
        }
    }

    fn fail(&mut self, span: &Range<usize>, message: String, hint: impl Into<String>) {
        self.problems.push(self.file.at(span, message, hint));
    }

    /// `found`, the symbol the name `s` stands for; when the name is unknown,
    /// records "unknown `what`" with the names there are, `names` (plural
    /// `whats`), at the name's span.
    fn known<T>(
        &mut self,
        s: &Spanned<String>,
        found: Option<T>,
        what: &str,
        whats: &str,
        names: impl FnOnce() -> String,
    ) -> Option<T> {
        if found.is_none() {
            self.fail(
                &s.span(),
                format!("unknown {what} {:?}", s.get_ref()),
                format!("{whats} are: {}", names()),
            );
        }
        found
    }

    /// The journey `raw` compiled, or `None` with its problems recorded.
    pub(crate) fn journey(&mut self, raw: RawJourney) -> Option<Journey> {
        let before = self.problems.len();
        let version = self.id_and_version(&raw);
        let (trigger_events, trigger_channels) = self.trigger(&raw.trigger);
        let Conditions {
            key,
            when,
            exit_when,
        } = self.conditions(&raw);
        let reentry = raw
            .reentry
            .as_ref()
            .map_or(Reentry::Always, |r| self.reentry(r));
        let mut actions = 0;
        let mut after_wait = false;
        let steps = self.steps(
            &raw.steps,
            StepCx { event: true },
            &mut actions,
            &mut after_wait,
        );
        if actions == 0 {
            self.fail(
                &raw.id.span(),
                format!("journey {:?} has no action step", raw.id.get_ref()),
                "add an [[journey.steps]] with an action",
            );
        }
        let fallbacks = self.fallbacks(&raw.fallbacks, after_wait);
        self.check_fallbacks(raw.id.get_ref());
        let named = self
            .named
            .drain(..)
            .map(|(name, at, _)| (name, at))
            .collect();
        let priority = raw.priority.as_ref().map_or(0, |p| *p.get_ref());
        let control_group_bp = raw
            .control_group
            .as_ref()
            .map_or(0, |c| self.control_group(c));
        let (reasons, explain) = self.reasons(&raw, when.is_some(), after_wait);
        (self.problems.len() == before).then(|| Journey {
            id: raw.id.into_inner(),
            version,
            description: raw.description.unwrap_or_default(),
            file: self.file.path.to_path_buf(),
            trigger_events,
            trigger_channels,
            reentry,
            steps,
            priority,
            control_group_bp,
            fallbacks,
            named,
            key,
            when,
            exit_when,
            reasons,
            explain,
            actions,
        })
    }

    /// The journey's instance key (an expression over the event) and its
    /// entry and exit conditions (over the event and the key).
    fn conditions(&mut self, raw: &RawJourney) -> Conditions {
        let full = Scope {
            event: true,
            key: true,
        };
        let key = raw.key.as_ref().and_then(|k| {
            self.expr(
                k,
                Scope {
                    event: true,
                    key: false,
                },
                Some(Ty::String),
            )
        });
        let when = raw
            .when
            .as_ref()
            .and_then(|w| self.expr(w, full, Some(Ty::Bool)));
        let exit_when = raw
            .exit_when
            .as_ref()
            .and_then(|w| self.expr(w, full, Some(Ty::Bool)));
        Conditions {
            key,
            when,
            exit_when,
        }
    }

    /// What an action of the journey says about why it was taken: the
    /// `reason` lines (without the event once a wait came before the
    /// actions) and, when `when` compiled and `explain_when` is not off, the
    /// parts of the entry condition explained.
    fn reasons(
        &mut self,
        raw: &RawJourney,
        when_compiled: bool,
        after_wait: bool,
    ) -> (Vec<ReasonSpec>, Vec<Explain>) {
        let scope = Scope {
            event: !after_wait,
            key: true,
        };
        let reasons = raw
            .reason
            .iter()
            .filter_map(|r| self.reason(r, scope))
            .collect();
        let explain = match (&raw.when, when_compiled, raw.explain_when.unwrap_or(true)) {
            (Some(src), true, true) => self.explain(src),
            _ => Vec::new(),
        };
        (reasons, explain)
    }

    /// The journey's version; an empty id or a negative version is recorded
    /// as a problem.
    fn id_and_version(&mut self, raw: &RawJourney) -> u32 {
        if raw.id.get_ref().trim().is_empty() {
            self.fail(
                &raw.id.span(),
                "journey id is empty".into(),
                "give the journey a stable id such as \"cart_recovery\"",
            );
        }
        u32::try_from(*raw.version.get_ref()).unwrap_or_else(|_| {
            self.fail(
                &raw.version.span(),
                "version must be a non-negative integer".into(),
                "use 1, then 2 when steps change",
            );
            0
        })
    }

    /// The journey's fallback actions, each named; after a wait they cannot
    /// read the event (`after_wait`).
    fn fallbacks(&mut self, raw: &[Spanned<RawAction>], after_wait: bool) -> Vec<ActionStep> {
        let scope = Scope {
            event: !after_wait,
            key: true,
        };
        let mut fallbacks = Vec::with_capacity(raw.len());
        for (i, f) in raw.iter().enumerate() {
            if f.get_ref().name.is_none() {
                self.fail(
                    &f.span(),
                    "a fallback action has no name".into(),
                    "give it a name = \"...\" that actions name in fallback = \"...\"",
                );
            }
            if let Some(a) = self.action(f, scope, Named::Fallback(i)) {
                fallbacks.push(a);
            }
        }
        fallbacks
    }

    /// The control group's share in basis points, from a percentage such as "10%".
    fn control_group(&mut self, c: &Spanned<String>) -> u16 {
        crate::policy::parse_share(c.get_ref()).unwrap_or_else(|e| {
            self.fail(
                &c.span(),
                e,
                "give the share of customers to hold out, 0-100%, e.g. control_group = \"10%\"",
            );
            0
        })
    }

    /// Every fallback names another action of the journey, and no chain of
    /// fallbacks comes back to where it started.
    fn check_fallbacks(&mut self, journey: &str) {
        let fallbacks = std::mem::take(&mut self.fallbacks);
        let mut looped: Vec<String> = Vec::new();
        for (from, to) in &fallbacks {
            let name = to.get_ref();
            if !self.named.iter().any(|(n, _, _)| n == name) {
                let names: Vec<&str> = self.named.iter().map(|(n, _, _)| n.as_str()).collect();
                self.fail(
                    &to.span(),
                    format!("fallback {name:?} is not an action of journey {journey:?}"),
                    if names.is_empty() {
                        "name an action of this journey: give it name = \"...\", in its steps or in [[journey.fallbacks]]".to_owned()
                    } else {
                        format!("named actions of this journey are: {}", names.join(", "))
                    },
                );
                continue;
            }
            // Follow the chain from this action: it must end. A loop is
            // reported once, at the first action in it.
            let Some(start) = from else { continue };
            if looped.contains(start) {
                continue;
            }
            let mut at = name.as_str();
            let mut chain = vec![start.as_str()];
            for _ in 0..=fallbacks.len() {
                if at == start {
                    self.fail(
                        &to.span(),
                        format!("fallback {name:?} leads back to action {start:?}"),
                        "fallbacks must end: the last one names no fallback",
                    );
                    looped.extend(chain.iter().map(|c| (*c).to_owned()));
                    break;
                }
                chain.push(at);
                match fallbacks.iter().find(|(f, _)| f.as_deref() == Some(at)) {
                    Some((_, next)) => at = next.get_ref(),
                    None => break,
                }
            }
        }
    }

    fn trigger(
        &mut self,
        t: &Spanned<RawTrigger>,
    ) -> (Vec<rapport_model::EventType>, Vec<rapport_model::Channel>) {
        let raw = t.get_ref();
        if raw.events.is_empty() {
            self.fail(
                &t.span(),
                "trigger has no events".into(),
                "list the event types that start the journey, e.g. events = [\"delivered\"]",
            );
        }
        let mut events = Vec::new();
        for e in &raw.events {
            let found = symbols::event_type(e.get_ref());
            events.extend(self.known(e, found, "event type", "event types", || {
                symbols::list(&symbols::EVENT_TYPES, |e| e.as_str())
            }));
        }
        let mut channels = Vec::new();
        for c in &raw.channels {
            let found = symbols::channel(c.get_ref());
            channels.extend(self.known(c, found, "channel", "channels", || {
                symbols::list(&rapport_model::Channel::ALL, |c| c.as_str())
            }));
        }
        (events, channels)
    }

    fn reentry(&mut self, r: &Spanned<RawReentry>) -> Reentry {
        let raw = r.get_ref();
        let hint = "write reentry = { never = true }, { after = \"24h\" } or { at_most = 2, per = \"7d\" }";
        match (&raw.never, &raw.after, &raw.at_most, &raw.per) {
            (Some(n), None, None, None) if *n.get_ref() => Reentry::Never,
            (Some(_), None, None, None) => Reentry::Always,
            (None, Some(after), None, None) => {
                Reentry::After(self.window(after, "re-entry cooldown"))
            }
            (None, None, Some(count), Some(per)) => {
                let per_ms = self.window(per, "re-entry window");
                let count = u32::try_from(*count.get_ref())
                    .ok()
                    .filter(|&c| c > 0)
                    .unwrap_or_else(|| {
                        self.fail(
                            &count.span(),
                            "at_most must be a positive integer".into(),
                            "allow at least one entry per window, or use never = true",
                        );
                        1
                    });
                Reentry::AtMost { count, per_ms }
            }
            _ => {
                self.fail(
                    &r.span(),
                    "re-entry rule is incomplete or mixes rules".into(),
                    hint,
                );
                Reentry::Always
            }
        }
    }

    /// A positive duration.
    fn window(&mut self, d: &Spanned<String>, what: &str) -> i64 {
        match parse_duration(d.get_ref()) {
            Ok(0) => {
                self.fail(
                    &d.span(),
                    format!("{what} is zero"),
                    format!(
                        "a zero {what} means no rule: give a positive duration, or drop the rule"
                    ),
                );
                1
            }
            Ok(ms) => ms,
            Err(e) => {
                self.fail(
                    &d.span(),
                    e,
                    "write durations like \"90s\", \"30m\", \"2h\", \"7d\"",
                );
                1
            }
        }
    }

    fn steps(
        &mut self,
        raw: &[RawStep],
        cx: StepCx,
        actions: &mut usize,
        after_wait: &mut bool,
    ) -> Vec<Step> {
        let mut cx = cx;
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            self.path.push(i as u32);
            let step = self.step(s, cx, actions, after_wait);
            self.path.pop();
            if let Some(step) = step {
                if matches!(step, Step::Wait { .. }) {
                    cx.event = false;
                }
                out.push(step);
            }
        }
        out
    }

    fn step(
        &mut self,
        s: &RawStep,
        cx: StepCx,
        actions: &mut usize,
        after_wait: &mut bool,
    ) -> Option<Step> {
        let scope = Scope {
            event: cx.event,
            key: true,
        };
        match (&s.wait, &s.branch, &s.action) {
            (Some(w), None, None) => Some(self.wait(w)),
            (None, Some(b), None) => {
                let raw = b.get_ref();
                let cond = self.expr(&raw.if_, scope, Some(Ty::Bool));
                self.path.push(0);
                let then = self.steps(&raw.then, cx, actions, after_wait);
                self.path.pop();
                self.path.push(1);
                let otherwise = self.steps(&raw.else_, cx, actions, after_wait);
                self.path.pop();
                Some(Step::Branch {
                    cond: cond?,
                    then,
                    otherwise,
                })
            }
            (None, None, Some(a)) => {
                *actions += 1;
                *after_wait |= !cx.event;
                let at = Named::Step(self.path.clone());
                self.action(a, scope, at).map(Step::Action)
            }
            _ => {
                let span = [
                    s.wait.as_ref().map(|w| w.span()),
                    s.branch.as_ref().map(|b| b.span()),
                    s.action.as_ref().map(|a| a.span()),
                ]
                .into_iter()
                .flatten()
                .next()
                .unwrap_or(0..0);
                self.fail(
                    &span,
                    "a step needs exactly one of wait, branch, action".into(),
                    "split it into separate [[journey.steps]] entries",
                );
                None
            }
        }
    }

    fn wait(&mut self, w: &Spanned<RawWait>) -> Step {
        let raw = w.get_ref();
        let for_ms = match &raw.for_ {
            None => {
                self.fail(&w.span(), "wait has no bound".into(), "every wait needs `for`, e.g. wait = { for = \"2h\" }; waits never run unbounded");
                0
            }
            Some(d) => {
                let ms = self.window(d, "wait");
                if ms > MAX_WAIT_MS {
                    self.fail(
                        &d.span(),
                        format!("wait {:?} is longer than 400 days", d.get_ref()),
                        "use a shorter wait",
                    );
                }
                ms
            }
        };
        let scope = Scope {
            event: true,
            key: true,
        };
        let cancel_when = raw
            .cancel_when
            .as_ref()
            .and_then(|c| self.expr(c, scope, Some(Ty::Bool)));
        Step::Wait {
            for_ms,
            cancel_when,
        }
    }

    fn action(&mut self, a: &Spanned<RawAction>, scope: Scope, at: Named) -> Option<ActionStep> {
        let raw = a.get_ref();
        let name = raw.name.as_ref().map(|n| self.action_name(n, at));
        if let Some(f) = &raw.fallback {
            self.fallbacks.push((name.clone(), f.clone()));
        }
        let quiet_hours = self.quiet_hours(raw.quiet_hours.as_ref());
        let kind = self.action_kind(&raw.kind);
        let channel = self.channel(&raw.channel, scope);
        let purpose = self.purpose(raw.purpose.as_ref(), kind);
        let addresses = raw.addresses.as_ref().and_then(|s| {
            let found = symbols::emotional_state(s.get_ref());
            self.known(s, found, "emotional state", "states", || {
                symbols::list(&symbols::EMOTIONAL_STATES, |e| e.as_str())
            })
        });
        let discriminator = raw
            .discriminator
            .as_ref()
            .and_then(|d| self.template(d, scope));
        let mut payload = Vec::with_capacity(raw.payload.len());
        for (name, t) in &raw.payload {
            if let Some(t) = self.template(t, scope) {
                payload.push((name.clone(), t));
            }
        }
        Some(ActionStep {
            kind: kind?,
            channel: channel?,
            purpose: purpose?,
            name,
            quiet_hours,
            fallback: raw.fallback.as_ref().map(|f| f.get_ref().clone()),
            discriminator,
            payload,
            emotion_reasons: raw.emotion_reasons.unwrap_or(true),
            addresses,
        })
    }

    /// An action's name: not empty, and unique in its journey (fallbacks and
    /// explanations refer to actions by it).
    fn action_name(&mut self, n: &Spanned<String>, at: Named) -> String {
        let s = n.get_ref().trim();
        if s.is_empty() {
            self.fail(
                &n.span(),
                "action name is empty".into(),
                "name it, e.g. name = \"offer\"",
            );
        } else if let Some((_, _, first)) = self.named.iter().find(|(x, _, _)| x == s) {
            let first = self.file.at(first, String::new(), "");
            self.fail(
                &n.span(),
                format!("action name {s:?} is already used in this journey"),
                format!(
                    "names are unique per journey; the first is at line {}",
                    first.line
                ),
            );
        } else {
            self.named.push((s.to_owned(), at, n.span()));
        }
        s.to_owned()
    }

    /// What an action does in the customer's quiet hours; `defer` when not given.
    fn quiet_hours(&mut self, q: Option<&Spanned<String>>) -> QuietMode {
        let Some(q) = q else {
            return QuietMode::Defer;
        };
        QuietMode::parse(q.get_ref()).unwrap_or_else(|| {
            self.fail(
                &q.span(),
                format!("unknown quiet_hours {:?}", q.get_ref()),
                "write quiet_hours = \"defer\" (the default), \"drop\" or \"ignore\"",
            );
            QuietMode::Defer
        })
    }

    /// The action kind, one of the action schema's symbols.
    fn action_kind(&mut self, k: &Spanned<String>) -> Option<ActionKind> {
        let found = symbols::action_kind(k.get_ref());
        self.known(
            k,
            found,
            "action kind",
            "action kinds (schemas/v1/action.avsc)",
            || symbols::list(&symbols::ACTION_KINDS, |k| k.as_str()),
        )
    }

    /// The consent purpose an action is sent under; by default the one its
    /// kind implies.
    fn purpose(
        &mut self,
        p: Option<&Spanned<String>>,
        kind: Option<ActionKind>,
    ) -> Option<Purpose> {
        match p {
            None => kind.map(Purpose::default_for),
            Some(p) => Purpose::parse(p.get_ref()).or_else(|| {
                self.fail(
                    &p.span(),
                    format!("unknown purpose {:?}", p.get_ref()),
                    "purposes are: marketing, survey, service",
                );
                None
            }),
        }
    }

    fn channel(&mut self, c: &Spanned<String>, scope: Scope) -> Option<ChannelSpec> {
        let s = c.get_ref();
        if s == "reply" {
            if !scope.event {
                self.fail(&c.span(), "channel \"reply\" needs the customer's event, but this action runs after a wait".into(), "name a delivery channel, e.g. \"email\"");
            }
            return Some(ChannelSpec::Reply);
        }
        if s.contains("{{") {
            return self.template(c, scope).map(ChannelSpec::Template);
        }
        symbols::delivery_channel(s)
            .map(ChannelSpec::Fixed)
            .or_else(|| {
                self.fail(
                    &c.span(),
                    format!("unknown delivery channel {s:?}"),
                    format!(
                        "use \"reply\", a template, or one of: {}",
                        symbols::list(&symbols::DELIVERY_CHANNELS, |c| c.as_str())
                    ),
                );
                None
            })
    }

    fn reason(&mut self, r: &RawReason, scope: Scope) -> Option<ReasonSpec> {
        let condition = self.template(&r.condition, scope);
        let value = self.expr(&r.value, scope, None);
        let when = match &r.when {
            Some(w) => Some(self.expr(w, scope, Some(Ty::Bool))?),
            None => None,
        };
        Some(ReasonSpec {
            condition: condition?,
            value: value?,
            when,
        })
    }

    /// Compiles and checks one expression; `want` is the type it must have.
    fn expr(&mut self, s: &Spanned<String>, scope: Scope, want: Option<Ty>) -> Option<Expr> {
        self.expr_at(s, 0, s.get_ref(), scope, want)
    }

    /// Like [`Self::expr`] for `source`, found `offset` characters into the string `s`.
    fn expr_at(
        &mut self,
        s: &Spanned<String>,
        offset: usize,
        source: &str,
        scope: Scope,
        want: Option<Ty>,
    ) -> Option<Expr> {
        let program = match self.env.compile(source) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors.errors {
                    let at = offset + char_offset(source, e.pos.0, e.pos.1);
                    let p = self.file.in_string(
                        &s.span(),
                        at,
                        format!("invalid CEL: {}", e.msg),
                        "fix the expression (see https://cel.dev for the syntax)",
                    );
                    self.problems.push(p);
                }
                return None;
            }
        };
        match check(&program, scope) {
            Err(errors) => {
                for e in errors {
                    let p = self
                        .file
                        .in_string(&s.span(), offset + e.offset, e.message, e.hint);
                    self.problems.push(p);
                }
                None
            }
            Ok(ty) => {
                let ok = match &want {
                    Some(Ty::Bool) => matches!(ty, Ty::Bool | Ty::Dyn),
                    Some(Ty::String) => matches!(ty, Ty::String | Ty::Dyn),
                    _ => !matches!(ty, Ty::Record(_)),
                };
                if !ok {
                    let want = want.map_or("a value".to_owned(), |w| w.to_string());
                    let hint = if matches!(ty, Ty::Record(_)) {
                        "select one of its fields".to_owned()
                    } else {
                        format!("make the expression a {want}, e.g. compare it: `... > 0`")
                    };
                    let p = self.file.in_string(
                        &s.span(),
                        offset,
                        format!("expression is {ty}, not {want}"),
                        hint,
                    );
                    self.problems.push(p);
                    return None;
                }
                Some(Expr::new(program, source.to_owned()))
            }
        }
    }

    /// Compiles a template: text with `{{ expression }}` placeholders.
    fn template(&mut self, s: &Spanned<String>, scope: Scope) -> Option<Template> {
        let text = s.get_ref();
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        let mut ok = true;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                let at = text.len() - rest.len() + open;
                let p = self.file.in_string(
                    &s.span(),
                    text[..at].chars().count(),
                    "`{{` without a closing `}}`".into(),
                    "close the placeholder: {{ event.commerce.sku }}",
                );
                self.problems.push(p);
                return None;
            };
            let source = &after[..close];
            let start = text.len() - after.len();
            match self.expr_at(s, text[..start].chars().count(), source, scope, None) {
                Some(e) => parts.push(Part::Expr(e)),
                None => ok = false,
            }
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        ok.then_some(Template { parts })
    }

    /// The top-level `&&` conjuncts of `when`, each compiled with the value it observes.
    fn explain(&mut self, src: &Spanned<String>) -> Vec<Explain> {
        let Ok(program) = self.env.compile(src.get_ref()) else {
            return Vec::new();
        };
        let chars: Vec<char> = src.get_ref().chars().collect();
        let mut conjuncts = Vec::new();
        split_and(program.expression(), &mut conjuncts);
        let scope = Scope {
            event: true,
            key: true,
        };
        let mut out = Vec::new();
        for c in conjuncts {
            let Some(text) = node_text(&program, c, &chars) else {
                continue;
            };
            let observed = match &c.expr {
                Ast::Call(call) if is_comparison(&call.func_name) && call.target.is_none() => {
                    node_text(&program, &call.args[0], &chars)
                }
                _ => None,
            };
            let value_src = observed.unwrap_or_else(|| text.clone());
            let Ok(value) = self.env.compile(&value_src) else {
                continue;
            };
            if check(&value, scope).is_ok() {
                out.push(Explain {
                    condition: text,
                    value: Expr::new(value, value_src),
                });
            }
        }
        out
    }
}
