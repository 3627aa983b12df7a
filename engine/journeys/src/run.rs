//! Evaluation: what happens for one event and for one due wait.
//!
//! Deterministic in event time: the same events in the same order give the same
//! actions with the same ids, live or replayed. Journey instances, waits and
//! entry history live in the profile, so they are committed with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use cel::{Context, Value};
use rapport_model::action::action_id;
use rapport_model::profile::{JourneyEntries, JourneyRun, Timer};
use rapport_model::{Action, Channel, DeliveryChannel, Profile, Reason, Touchpoint};

use crate::bind::Bindings;
use crate::journey::*;
use crate::native::NVal;
use crate::policy::{Candidate, Output};
use crate::symbols;
use crate::CompiledJourneys;

/// What one call did, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Journey instances started.
    pub entered: u32,
    /// Instances ended by `exit_when`.
    pub exited: u32,
    /// Instances ended by a wait's `cancel_when`.
    pub cancelled: u32,
    /// Triggers refused by a re-entry rule.
    pub reentry_refused: u32,
    /// Waits fired.
    pub timers_fired: u32,
    /// Instances dropped because their journey was removed or changed version.
    pub orphaned: u32,
    /// Expressions that failed at run time (treated as false / empty).
    pub errors: Vec<EvalError>,
}

/// An expression that failed at run time, e.g. a profile function given an
/// event type computed from data that names none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// Journey id.
    pub journey: String,
    /// The expression.
    pub expression: String,
    /// What went wrong.
    pub message: String,
}

/// Where the customer is when a step list is run.
struct Cursor<'a> {
    journey: &'a Journey,
    key: &'a str,
    event: Option<&'a Touchpoint>,
    now_ms: i64,
    trigger_event_id: &'a str,
}

/// How running steps ended.
enum Flow {
    Done,
    /// Waiting at this step path until this time.
    Wait(Vec<u32>, i64),
}

impl CompiledJourneys {
    /// Evaluates every journey for touchpoint `t`, already applied to `p` (see
    /// [`Profile::apply`]) and with the emotional state updated: exits and
    /// cancelled waits first, then entries; then the delivery policy judges
    /// the actions the journeys decided on. Appends the actions that passed to
    /// `out.actions` and a decision for each judged action to `out.decisions`,
    /// and records instances, waits, entries and the policy's bookkeeping in `p`.
    pub fn on_event(&self, p: &mut Profile, t: &Touchpoint, out: &mut Output) -> Report {
        let mut report = Report::default();
        self.exits(p, t, &mut report);
        out.pending.clear();
        for j in &self.journeys {
            if j.triggered_by(t.event_type, t.channel) {
                self.enter(j, p, t, &mut out.pending, &mut report);
            }
        }
        if !out.pending.is_empty() {
            self.policy.judge_all(p, out, &self.emotion);
        }
        report
    }

    /// Fires what of `p` is due at event time `now_ms`, earliest first: the
    /// journeys' waits (running the steps after them) and actions deferred
    /// past quiet hours, all judged by the delivery policy at their due times.
    /// Appends to `out` as [`CompiledJourneys::on_event`] does. Timers that
    /// belong to no journey instance and no deferred action are left alone.
    pub fn fire_due(&self, p: &mut Profile, now_ms: i64, out: &mut Output) -> Report {
        let mut report = Report::default();
        out.pending.clear();
        self.policy.take_deferred(p, now_ms, out);
        report.timers_fired += out.pending.len() as u32;
        let mut due: Vec<Timer> = Vec::new();
        let runs = &p.journey_runs;
        p.timers.retain(|t| {
            let mine = t.fire_at_ms <= now_ms
                && !crate::policy::is_deferred_timer(t)
                && runs
                    .iter()
                    .any(|r| r.journey == t.journey && r.key == t.key);
            if mine {
                due.push(t.clone());
            }
            !mine
        });
        due.sort_by(|a, b| {
            (a.fire_at_ms, &a.journey, &a.key).cmp(&(b.fire_at_ms, &b.journey, &b.key))
        });
        for timer in due {
            report.timers_fired += 1;
            self.resume(p, &timer, &mut out.pending, &mut report);
        }
        if !out.pending.is_empty() {
            self.policy.judge_all(p, out, &self.emotion);
        }
        report
    }

    fn exits(&self, p: &mut Profile, t: &Touchpoint, report: &mut Report) {
        let mut ended = Vec::new();
        for (i, run) in p.journey_runs.iter().enumerate() {
            let Some(j) = self.journey(&run.journey) else {
                continue;
            };
            let b = self.bindings(p, Some(t), t.event_time, &run.key);
            if let Some(e) = &j.exit_when {
                if self.test(j, e, &b, report) {
                    ended.push((i, true));
                    continue;
                }
            }
            if let Some(Step::Wait {
                cancel_when: Some(c),
                ..
            }) = j.step_at(&run.at)
            {
                if run.version == j.version && self.test(j, c, &b, report) {
                    ended.push((i, false));
                }
            }
        }
        for &(i, exit) in ended.iter().rev() {
            let run = p.journey_runs.remove(i);
            p.timers
                .retain(|t| !(t.journey == run.journey && t.key == run.key));
            if exit {
                report.exited += 1;
            } else {
                report.cancelled += 1;
            }
        }
    }

    fn enter(
        &self,
        j: &Journey,
        p: &mut Profile,
        t: &Touchpoint,
        out: &mut Vec<Candidate>,
        report: &mut Report,
    ) {
        let key = match &j.key {
            None => String::new(),
            Some(k) => {
                let b = self.bindings(p, Some(t), t.event_time, "");
                self.render_expr(j, k, &b, report)
            }
        };
        if p.journey_runs
            .iter()
            .any(|r| r.journey == j.id && r.key == key)
        {
            return;
        }
        // `when` first: it is cheap and usually false, and a trigger it
        // refuses is not one the re-entry rule refused.
        if let Some(w) = &j.when {
            let b = self.bindings(p, Some(t), t.event_time, &key);
            if !self.test(j, w, &b, report) {
                return;
            }
        }
        if !reentry_allows(j.reentry, entries(p, &j.id, &key), t.event_time) {
            report.reentry_refused += 1;
            return;
        }
        report.entered += 1;
        record_entry(p, j, &key, t.event_time);
        let cursor = Cursor {
            journey: j,
            key: &key,
            event: Some(t),
            now_ms: t.event_time,
            trigger_event_id: &t.event_id,
        };
        let before = out.len();
        let flow = self.run_steps(p, &cursor, &j.steps, None, &mut Vec::new(), out, report);
        self.settle(p, &cursor, flow, out.len() - before);
    }

    fn resume(
        &self,
        p: &mut Profile,
        timer: &Timer,
        out: &mut Vec<Candidate>,
        report: &mut Report,
    ) {
        let Some(i) = p
            .journey_runs
            .iter()
            .position(|r| r.journey == timer.journey && r.key == timer.key)
        else {
            return;
        };
        let run = p.journey_runs.remove(i);
        let Some(j) = self
            .journey(&run.journey)
            .filter(|j| j.version == run.version && j.step_at(&run.at).is_some())
        else {
            report.orphaned += 1;
            return;
        };
        let cursor = Cursor {
            journey: j,
            key: &run.key,
            event: None,
            now_ms: timer.fire_at_ms,
            trigger_event_id: &run.trigger_event_id,
        };
        let before = out.len();
        let flow = self.run_steps(
            p,
            &cursor,
            &j.steps,
            Some(&run.at),
            &mut Vec::new(),
            out,
            report,
        );
        self.settle(p, &cursor, flow, out.len() - before);
    }

    /// Records the outcome of running steps: `fired` actions decided (each
    /// judged by the policy next), and the wait if any.
    fn settle(&self, p: &mut Profile, c: &Cursor, flow: Flow, fired: usize) {
        for _ in 0..fired {
            p.mark_journey(&c.journey.id, c.key, c.now_ms);
        }
        if let Flow::Wait(at, due) = flow {
            p.schedule(Timer {
                journey: c.journey.id.as_str().into(),
                key: c.key.into(),
                fire_at_ms: due,
                trigger_event_id: c.trigger_event_id.into(),
            });
            p.journey_runs.push(JourneyRun {
                journey: c.journey.id.as_str().into(),
                version: c.journey.version,
                key: c.key.into(),
                at: at.into(),
                entered_ms: c.now_ms,
                trigger_event_id: c.trigger_event_id.into(),
            });
        }
    }

    /// Runs `steps` from the start, or, with `resume`, after the step at that path.
    #[allow(clippy::too_many_arguments)]
    fn run_steps(
        &self,
        p: &Profile,
        c: &Cursor,
        steps: &[Step],
        resume: Option<&[u32]>,
        path: &mut Vec<u32>,
        out: &mut Vec<Candidate>,
        report: &mut Report,
    ) -> Flow {
        let mut start = 0;
        if let Some(&[i, ref rest @ ..]) = resume {
            start = i as usize + 1;
            if let [arm, inner @ ..] = rest {
                if let Some(Step::Branch {
                    then, otherwise, ..
                }) = steps.get(i as usize)
                {
                    let list = if *arm == 0 { then } else { otherwise };
                    path.extend([i, *arm]);
                    if let Flow::Wait(at, due) =
                        self.run_steps(p, c, list, Some(inner), path, out, report)
                    {
                        return Flow::Wait(at, due);
                    }
                    path.truncate(path.len() - 2);
                }
            }
        }
        for (i, step) in steps.iter().enumerate().skip(start) {
            let i = i as u32;
            match step {
                Step::Wait { for_ms, .. } => {
                    path.push(i);
                    return Flow::Wait(path.clone(), c.now_ms.saturating_add(*for_ms));
                }
                Step::Branch {
                    cond,
                    then,
                    otherwise,
                } => {
                    let b = self.bindings(p, c.event, c.now_ms, c.key);
                    let arm = u32::from(!self.test(c.journey, cond, &b, report));
                    let list = if arm == 0 { then } else { otherwise };
                    path.extend([i, arm]);
                    if let Flow::Wait(at, due) = self.run_steps(p, c, list, None, path, out, report)
                    {
                        return Flow::Wait(at, due);
                    }
                    path.truncate(path.len() - 2);
                }
                Step::Action(a) => {
                    path.push(i);
                    out.push(self.decide(p, c, a, Some(path), report, 0));
                    path.pop();
                }
            }
        }
        Flow::Done
    }

    /// The action of step `a` (at `path`; `None` for a journey's
    /// `fallbacks` entry), with its fallbacks rendered now, while the event is at hand.
    fn decide(
        &self,
        p: &Profile,
        c: &Cursor,
        a: &ActionStep,
        path: Option<&[u32]>,
        report: &mut Report,
        depth: usize,
    ) -> Candidate {
        let j = c.journey;
        let b = self.bindings(p, c.event, c.now_ms, c.key);
        let discriminator = match (&a.discriminator, path) {
            (Some(t), _) => self.render(j, t, &b, report),
            (None, None) => format!("{}#fallback:{}", c.key, a.name.as_deref().unwrap_or("")),
            (None, Some(_)) if j.actions == 1 => c.key.to_owned(),
            (None, Some(path)) => format!(
                "{}#{}",
                c.key,
                path.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(".")
            ),
        };
        let mut payload = BTreeMap::new();
        for (name, t) in &a.payload {
            let v = self.render(j, t, &b, report);
            // An empty value means "not applicable here" (e.g. no order id).
            if !v.is_empty() {
                payload.insert(name.clone(), v);
            }
        }
        // The state's own reasons are formatted only for an action the policy
        // lets out (see `Candidate::emotion_reasons`).
        let state = p.emotion.state;
        let reasons = self.reasons(j, &b, c.event.is_some(), report);
        let action = Action {
            action_id: action_id(&j.id, &p.id, c.trigger_event_id, &discriminator),
            customer_id: p.id.clone(),
            kind: a.kind,
            journey: j.id.clone(),
            trigger_event_id: c.trigger_event_id.to_owned(),
            trigger_event_time: c.now_ms,
            channel: self.channel(j, &a.channel, c.event, &b, report),
            payload,
            reasons,
            emotional_state: Some(state),
        };
        let fallback = match (&a.fallback, depth < j.named.len()) {
            (Some(name), true) => j.named_action(name).map(|f| {
                let at = match j.named.iter().find(|(n, _)| n == name).map(|(_, at)| at) {
                    Some(Named::Step(path)) => Some(path.as_slice()),
                    _ => None,
                };
                Box::new(self.decide(p, c, f, at, report, depth + 1))
            }),
            _ => None,
        };
        Candidate {
            action,
            purpose: a.purpose,
            quiet: a.quiet_hours,
            priority: j.priority,
            control_bp: j.control_group_bp,
            now_ms: c.now_ms,
            fallback,
            redo: false,
            emotion_reasons: a.emotion_reasons && a.addresses != Some(state),
        }
    }

    fn reasons(
        &self,
        j: &Journey,
        b: &Bindings,
        with_event: bool,
        report: &mut Report,
    ) -> Vec<Reason> {
        let mut out = Vec::new();
        for r in &j.reasons {
            if r.when.as_ref().is_some_and(|w| !self.test(j, w, b, report)) {
                continue;
            }
            out.push(Reason::new(
                self.render(j, &r.condition, b, report),
                self.render_expr(j, &r.value, b, report),
            ));
        }
        if with_event {
            for e in &j.explain {
                out.push(Reason::new(
                    e.condition.clone(),
                    self.render_expr(j, &e.value, b, report),
                ));
            }
        }
        out
    }

    fn channel(
        &self,
        j: &Journey,
        spec: &ChannelSpec,
        event: Option<&Touchpoint>,
        b: &Bindings,
        report: &mut Report,
    ) -> DeliveryChannel {
        match spec {
            ChannelSpec::Fixed(c) => *c,
            ChannelSpec::Reply => {
                event.map_or(DeliveryChannel::Email, |t| reply_channel(t.channel))
            }
            ChannelSpec::Template(t) => symbols::delivery_channel(&self.render(j, t, b, report))
                .unwrap_or(DeliveryChannel::Email),
        }
    }

    pub(crate) fn bindings<'a>(
        &'a self,
        p: &'a Profile,
        event: Option<&'a Touchpoint>,
        now_ms: i64,
        key: &'a str,
    ) -> Bindings<'a> {
        Bindings {
            event,
            profile: p,
            now_ms,
            key,
            emotion: &self.emotion,
        }
    }

    pub(crate) fn eval(&self, e: &Expr, b: &Bindings) -> Result<Value, String> {
        let mut ctx = Context::with_env(Arc::clone(&self.env));
        ctx.set_variable_resolver(b);
        e.program.execute(&ctx).map_err(|err| err.to_string())
    }

    /// A condition; a failure counts as false and is reported.
    fn test(&self, j: &Journey, e: &Expr, b: &Bindings, report: &mut Report) -> bool {
        if let (Some(guard), Some(t)) = (e.guard, b.event) {
            if guard & crate::guard::bit(t.event_type) == 0 {
                return false;
            }
        }
        if let Some(Ok(NVal::Bool(v))) = e.native.as_ref().map(|n| n.eval(b)) {
            return v;
        }
        match self.eval(e, b) {
            Ok(Value::Bool(v)) => v,
            Ok(other) => self.error(j, e, format!("not a bool: {other:?}"), report, false),
            Err(msg) => self.error(j, e, msg, report, false),
        }
    }

    fn render_expr(&self, j: &Journey, e: &Expr, b: &Bindings, report: &mut Report) -> String {
        if let (Some(path), Some(t)) = (&e.path, b.event) {
            if let Some(s) = crate::bind::event_str(t, path) {
                return s.to_owned();
            }
        }
        if let Some(Ok(v)) = e.native.as_ref().map(|n| n.eval(b)) {
            return v.display();
        }
        match self.eval(e, b) {
            Ok(v) => display(&v),
            Err(msg) => self.error(j, e, msg, report, String::new()),
        }
    }

    fn render(&self, j: &Journey, t: &Template, b: &Bindings, report: &mut Report) -> String {
        let mut s = String::new();
        for part in &t.parts {
            match part {
                Part::Text(text) => s.push_str(text),
                Part::Expr(e) => s.push_str(&self.render_expr(j, e, b, report)),
            }
        }
        s
    }

    fn error<T>(
        &self,
        j: &Journey,
        e: &Expr,
        message: String,
        report: &mut Report,
        fallback: T,
    ) -> T {
        report.errors.push(EvalError {
            journey: j.id.clone(),
            expression: e.source.clone(),
            message,
        });
        fallback
    }
}

/// How a value reads in payloads and reasons. Timestamps are epoch ms like
/// every time in Rapport's schemas, and the epoch itself (a profile's "never")
/// reads `never`.
pub(crate) fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) if t.timestamp_millis() == 0 => "never".into(),
        Value::Timestamp(t) => t.timestamp_millis().to_string(),
        Value::Duration(d) => crate::duration::format_duration(d.num_milliseconds()),
        Value::Null => String::new(),
        // A list reads as its items, comma-separated (e.g. recent touchpoints).
        Value::List(items) => items.iter().map(display).collect::<Vec<_>>().join(", "),
        other => format!("{other:?}"),
    }
}

/// The channel to answer on, given the channel the customer used.
fn reply_channel(c: Channel) -> DeliveryChannel {
    match c {
        Channel::Web => DeliveryChannel::Web,
        Channel::App => DeliveryChannel::App,
        Channel::Chat => DeliveryChannel::Chat,
        Channel::Store => DeliveryChannel::Store,
        Channel::CallCenter => DeliveryChannel::CallCenter,
        Channel::Email | Channel::System => DeliveryChannel::Email,
    }
}

fn entries<'a>(p: &'a Profile, journey: &str, key: &str) -> &'a [i64] {
    p.journey_entries
        .iter()
        .find(|e| e.journey == journey && e.key == key)
        .map_or(&[], |e| &e.entered_ms)
}

/// Whether a re-entry rule lets a customer with these past entries enter at `at`.
/// Entries after `at` (late events) are not held against it.
fn reentry_allows(rule: Reentry, entered: &[i64], at: i64) -> bool {
    match rule {
        Reentry::Always => true,
        Reentry::Never => entered.is_empty(),
        Reentry::After(cooldown) => !entered.iter().any(|&e| e <= at && at < e + cooldown),
        Reentry::AtMost { count, per_ms } => {
            entered
                .iter()
                .filter(|&&e| e <= at && at < e + per_ms)
                .count()
                < count as usize
        }
    }
}

/// Records an entry, keeping only what the rule can still need.
fn record_entry(p: &mut Profile, j: &Journey, key: &str, at: i64) {
    let keep = |e: &mut i64| match j.reentry {
        Reentry::Always => false,
        Reentry::Never => true,
        Reentry::After(ms) | Reentry::AtMost { per_ms: ms, .. } => *e + ms > at,
    };
    if j.reentry == Reentry::Always {
        return;
    }
    let i = match p
        .journey_entries
        .iter()
        .position(|e| e.journey == j.id && e.key == key)
    {
        Some(i) => i,
        None => {
            p.journey_entries.push(JourneyEntries {
                journey: j.id.as_str().into(),
                key: key.into(),
                entered_ms: Default::default(),
            });
            p.journey_entries.len() - 1
        }
    };
    let e = &mut p.journey_entries[i].entered_ms;
    e.retain(keep);
    let pos = e.partition_point(|&x| x <= at);
    e.insert(pos, at);
    if j.reentry == Reentry::Never {
        e.truncate(1);
    }
}
