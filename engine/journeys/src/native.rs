//! Native evaluation of the common shapes of journey expressions.
//!
//! Most journey conditions compare event and profile fields with literals,
//! call a profile function with literal arguments, and join the results with
//! `&&`, `||`, `!`, `?:` and `in [...]`. Such an expression is compiled here,
//! once at load time, into a small typed tree that reads the touchpoint and
//! the profile directly: no CEL context, no boxed values, no parsing of
//! `duration("72h")` per event. Anything else (arithmetic, macros, lists of
//! profile values, mixed numeric types) has no native form and runs in CEL.
//!
//! The native tree gives the value CEL gives or no value at all: an expression
//! that fails natively (say, an event field read when a wait fires without an
//! event) is run again in CEL, which reports the error in its own words. The
//! differential test in `tests/native.rs` checks every shipped expression both
//! ways over recorded events.

use rapport_model::emotion::{self, Signal};
use rapport_model::EmotionalState;
use rapport_model::{Channel, EventType, Profile, Touchpoint};

use cel::common::ast::{operators as op, Expr as Ast, IdedExpr, LiteralValue};

use crate::bind::Bindings;
use crate::symbols;

/// The static type of a native expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Double,
    Str,
    Duration,
    Timestamp,
}

/// A value computed natively; strings are borrowed from the event, the
/// profile or the compiled tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum NVal<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(&'a str),
    /// Milliseconds.
    Duration(i64),
    /// Epoch milliseconds.
    Timestamp(i64),
}

impl NVal<'_> {
    /// The value as a template shows it (the same text as for CEL's value).
    pub(crate) fn display(self) -> String {
        match self {
            NVal::Bool(b) => b.to_string(),
            NVal::Int(i) => i.to_string(),
            NVal::Double(f) => f.to_string(),
            NVal::Str(s) => s.to_owned(),
            NVal::Duration(ms) => crate::duration::format_duration(ms),
            NVal::Timestamp(0) => "never".into(),
            NVal::Timestamp(ms) => ms.to_string(),
        }
    }
}

/// A literal of the compiled tree.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Duration(i64),
}

impl Lit {
    fn ty(&self) -> Ty {
        match self {
            Lit::Bool(_) => Ty::Bool,
            Lit::Int(_) => Ty::Int,
            Lit::Double(_) => Ty::Double,
            Lit::Str(_) => Ty::Str,
            Lit::Duration(_) => Ty::Duration,
        }
    }

    fn val(&self) -> NVal<'_> {
        match self {
            Lit::Bool(b) => NVal::Bool(*b),
            Lit::Int(i) => NVal::Int(*i),
            Lit::Double(f) => NVal::Double(*f),
            Lit::Str(s) => NVal::Str(s),
            Lit::Duration(ms) => NVal::Duration(*ms),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A profile function with its arguments resolved where they are literals.
#[derive(Debug)]
enum Query {
    Count(EventType, i64),
    CountOn(EventType, Channel, i64),
    ProductViews(Box<Native>, i64),
    Contacts(i64),
    Last(EventType),
}

/// An expression compiled to native form.
#[derive(Debug)]
pub(crate) struct Native(Node);

#[derive(Debug)]
enum Node {
    Lit(Lit),
    Event(EventField),
    Profile(ProfileField),
    Key,
    Now,
    Query(Query),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<Lit>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
}

/// Why a native evaluation gave no value; CEL is asked instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NoValue;

impl Native {
    /// The native form of `e`, when it has one.
    pub(crate) fn compile(e: &IdedExpr) -> Option<Native> {
        compile(e).map(|(node, _)| Native(node))
    }

    /// Evaluates the expression against `b`.
    pub(crate) fn eval<'a>(&'a self, b: &Bindings<'a>) -> Result<NVal<'a>, NoValue> {
        eval(&self.0, b)
    }
}

fn compile(e: &IdedExpr) -> Option<(Node, Ty)> {
    match &e.expr {
        Ast::Literal(l) => literal(l).map(|l| {
            let ty = l.ty();
            (Node::Lit(l), ty)
        }),
        Ast::Ident(n) if n == "key" => Some((Node::Key, Ty::Str)),
        Ast::Ident(n) if n == "now" => Some((Node::Now, Ty::Timestamp)),
        Ast::Select(_) => {
            let path = dotted(e)?;
            if let Some(rest) = path.strip_prefix("event.") {
                let (f, ty) = EventField::from_path(rest)?;
                return Some((Node::Event(f), ty));
            }
            let (f, ty) = ProfileField::from_path(path.strip_prefix("profile.")?)?;
            Some((Node::Profile(f), ty))
        }
        Ast::Call(c) => call(&c.func_name, c.target.as_deref(), &c.args),
        _ => None,
    }
}

fn call(name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Option<(Node, Ty)> {
    if let Some(t) = target {
        return query(name, t, args);
    }
    let cmp = match name {
        op::EQUALS => Some(Cmp::Eq),
        op::NOT_EQUALS => Some(Cmp::Ne),
        op::LESS => Some(Cmp::Lt),
        op::LESS_EQUALS => Some(Cmp::Le),
        op::GREATER => Some(Cmp::Gt),
        op::GREATER_EQUALS => Some(Cmp::Ge),
        _ => None,
    };
    match (name, args) {
        (_, [a, b]) if cmp.is_some() => {
            let ((a, ta), (b, tb)) = (compile(a)?, compile(b)?);
            let ordered = matches!(
                ta,
                Ty::Int | Ty::Double | Ty::Str | Ty::Duration | Ty::Timestamp
            );
            let cmp = cmp?;
            (ta == tb && (ordered || matches!(cmp, Cmp::Eq | Cmp::Ne)))
                .then(|| (Node::Cmp(cmp, Box::new(a), Box::new(b)), Ty::Bool))
        }
        (op::LOGICAL_AND | op::LOGICAL_OR, [a, b]) => {
            let (a, b) = (boolean(a)?, boolean(b)?);
            let node = if name == op::LOGICAL_AND {
                Node::And(Box::new(a), Box::new(b))
            } else {
                Node::Or(Box::new(a), Box::new(b))
            };
            Some((node, Ty::Bool))
        }
        (op::LOGICAL_NOT, [a]) => Some((Node::Not(Box::new(boolean(a)?)), Ty::Bool)),
        (op::CONDITIONAL, [c, a, b]) => {
            let c = boolean(c)?;
            let ((a, ta), (b, tb)) = (compile(a)?, compile(b)?);
            (ta == tb).then(|| (Node::Cond(Box::new(c), Box::new(a), Box::new(b)), ta))
        }
        (op::IN, [a, list]) => {
            let (a, ta) = compile(a)?;
            let Ast::List(l) = &list.expr else {
                return None;
            };
            let items: Vec<Lit> = l
                .elements
                .iter()
                .map(|el| match &el.expr {
                    Ast::Literal(v) => literal(v).filter(|v| v.ty() == ta),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            matches!(ta, Ty::Str | Ty::Int).then(|| (Node::In(Box::new(a), items), Ty::Bool))
        }
        ("duration", [arg]) => {
            let Ast::Literal(LiteralValue::String(s)) = &arg.expr else {
                return None;
            };
            let ms = crate::duration::cel_duration_ms(s.inner())?;
            Some((Node::Lit(Lit::Duration(ms)), Ty::Duration))
        }
        _ => None,
    }
}

/// A profile function call, `profile.<name>(args)`.
fn query(name: &str, target: &IdedExpr, args: &[IdedExpr]) -> Option<(Node, Ty)> {
    if !matches!(&target.expr, Ast::Ident(n) if n == "profile") {
        return None;
    }
    let event_type = |a: &IdedExpr| symbols::event_type(lit_str(a)?);
    let window = |a: &IdedExpr| match compile(a)? {
        (Node::Lit(Lit::Duration(ms)), _) => Some(ms),
        _ => None,
    };
    let q = match (name, args) {
        ("count", [t, w]) => Query::Count(event_type(t)?, window(w)?),
        ("count_on", [t, c, w]) => {
            Query::CountOn(event_type(t)?, symbols::channel(lit_str(c)?)?, window(w)?)
        }
        ("product_views", [sku, w]) => {
            let (sku, ty) = compile(sku)?;
            if ty != Ty::Str {
                return None;
            }
            Query::ProductViews(Box::new(Native(sku)), window(w)?)
        }
        ("contacts", [w]) => Query::Contacts(window(w)?),
        ("last", [t]) => return Some((Node::Query(Query::Last(event_type(t)?)), Ty::Timestamp)),
        _ => return None,
    };
    Some((Node::Query(q), Ty::Int))
}

fn boolean(e: &IdedExpr) -> Option<Node> {
    compile(e).and_then(|(n, ty)| (ty == Ty::Bool).then_some(n))
}

fn lit_str(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Ast::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn literal(l: &LiteralValue) -> Option<Lit> {
    Some(match l {
        LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
        LiteralValue::Int(i) => Lit::Int(*i.inner()),
        LiteralValue::Double(d) => Lit::Double(*d.inner()),
        LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
        _ => return None,
    })
}

/// `a.b.c` as one dotted name, when `e` is a chain of plain field selections.
fn dotted(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Ast::Ident(n) => Some(n.clone()),
        Ast::Select(s) if !s.test => Some(format!("{}.{}", dotted(&s.operand)?, s.field)),
        _ => None,
    }
}

fn eval<'a>(n: &'a Node, b: &Bindings<'a>) -> Result<NVal<'a>, NoValue> {
    Ok(match n {
        Node::Lit(l) => l.val(),
        Node::Event(f) => f.get(b.event.ok_or(NoValue)?),
        Node::Profile(f) => f.get(b.profile, b.emotion)?,
        Node::Key => NVal::Str(b.key),
        Node::Now => NVal::Timestamp(b.now_ms),
        Node::Query(q) => q.answer(b)?,
        Node::Not(a) => NVal::Bool(!truth(a, b)?),
        Node::And(x, y) => NVal::Bool(truth(x, b)? && truth(y, b)?),
        Node::Or(x, y) => NVal::Bool(truth(x, b)? || truth(y, b)?),
        Node::Cond(c, x, y) => {
            if truth(c, b)? {
                eval(x, b)?
            } else {
                eval(y, b)?
            }
        }
        Node::Cmp(op, x, y) => NVal::Bool(compare(*op, eval(x, b)?, eval(y, b)?)?),
        Node::In(x, items) => {
            let v = eval(x, b)?;
            NVal::Bool(items.iter().any(|i| i.val() == v))
        }
    })
}

fn truth<'a>(n: &'a Node, b: &Bindings<'a>) -> Result<bool, NoValue> {
    match eval(n, b)? {
        NVal::Bool(v) => Ok(v),
        _ => Err(NoValue),
    }
}

fn compare(op: Cmp, x: NVal<'_>, y: NVal<'_>) -> Result<bool, NoValue> {
    use std::cmp::Ordering;
    // Most string comparisons are (in)equality with a literal: lengths differ
    // for most pairs, so no byte needs comparing.
    if let (NVal::Str(a), NVal::Str(b), Cmp::Eq | Cmp::Ne) = (&x, &y, op) {
        return Ok((a == b) == matches!(op, Cmp::Eq));
    }
    let ord: Option<Ordering> = match (x, y) {
        (NVal::Bool(a), NVal::Bool(b)) => Some(a.cmp(&b)),
        (NVal::Int(a), NVal::Int(b)) => Some(a.cmp(&b)),
        (NVal::Double(a), NVal::Double(b)) => a.partial_cmp(&b),
        (NVal::Str(a), NVal::Str(b)) => Some(a.cmp(b)),
        (NVal::Duration(a), NVal::Duration(b)) | (NVal::Timestamp(a), NVal::Timestamp(b)) => {
            Some(a.cmp(&b))
        }
        _ => return Err(NoValue),
    };
    // NaN compares with nothing: leave it to CEL.
    let ord = ord.ok_or(NoValue)?;
    Ok(match op {
        Cmp::Eq => ord.is_eq(),
        Cmp::Ne => ord.is_ne(),
        Cmp::Lt => ord.is_lt(),
        Cmp::Le => ord.is_le(),
        Cmp::Gt => ord.is_gt(),
        Cmp::Ge => ord.is_ge(),
    })
}

impl Query {
    fn answer<'a>(&'a self, b: &Bindings<'a>) -> Result<NVal<'a>, NoValue> {
        let (p, now) = (b.profile, b.now_ms);
        let n = |c: u64| NVal::Int(i64::try_from(c).unwrap_or(i64::MAX));
        Ok(match self {
            Query::Count(t, w) => n(p.windows.count(*t, now - w, now)),
            Query::CountOn(t, c, w) => n(p.windows.count_on(*t, *c, now - w, now)),
            Query::ProductViews(sku, w) => {
                let NVal::Str(sku) = sku.eval(b)? else {
                    return Err(NoValue);
                };
                n(p.product_interest(sku)
                    .map_or(0, |i| i.unbought_views(now - w, now) as u64))
            }
            Query::Contacts(w) => n(p
                .contacts_ms
                .iter()
                .filter(|&&t| t >= now - w && t <= now)
                .count() as u64),
            Query::Last(t) => NVal::Timestamp(p.windows.last_ms(*t)),
        })
    }
}

/// A field of `event`, read as CEL reads it (`""`, `0` or `false` when absent).
#[derive(Debug, Clone, Copy)]
enum EventField {
    EventId,
    CustomerId,
    AnonymousId,
    Channel,
    EventType,
    EventTime,
    StoreId,
    OrderId,
    Sku,
    Amount,
    Currency,
    Quantity,
    SurveyKind,
    SurveyScore,
    SurveyComment,
    CallWait,
    CallDuration,
    CallTransfers,
    CallOutcome,
    AgentNotes,
    ChatText,
    ChatSentiment,
    ChatFromBot,
    WebUrl,
    WebQuery,
    WebReferrer,
}

impl EventField {
    fn from_path(path: &str) -> Option<(EventField, Ty)> {
        use EventField::*;
        Some(match path {
            "event_id" => (EventId, Ty::Str),
            "customer_id" => (CustomerId, Ty::Str),
            "anonymous_id" => (AnonymousId, Ty::Str),
            "channel" => (Channel, Ty::Str),
            "event_type" => (EventType, Ty::Str),
            "event_time" => (EventTime, Ty::Timestamp),
            "store_id" => (StoreId, Ty::Str),
            "commerce.order_id" => (OrderId, Ty::Str),
            "commerce.sku" => (Sku, Ty::Str),
            "commerce.amount" => (Amount, Ty::Double),
            "commerce.currency" => (Currency, Ty::Str),
            "commerce.quantity" => (Quantity, Ty::Int),
            "survey.kind" => (SurveyKind, Ty::Str),
            "survey.score" => (SurveyScore, Ty::Int),
            "survey.comment" => (SurveyComment, Ty::Str),
            "call.wait_seconds" => (CallWait, Ty::Int),
            "call.duration_seconds" => (CallDuration, Ty::Int),
            "call.transfers" => (CallTransfers, Ty::Int),
            "call.outcome" => (CallOutcome, Ty::Str),
            "call.agent_notes" => (AgentNotes, Ty::Str),
            "chat.text" => (ChatText, Ty::Str),
            "chat.sentiment" => (ChatSentiment, Ty::Double),
            "chat.from_bot" => (ChatFromBot, Ty::Bool),
            "web.url" => (WebUrl, Ty::Str),
            "web.query" => (WebQuery, Ty::Str),
            "web.referrer" => (WebReferrer, Ty::Str),
            _ => return None,
        })
    }

    fn get(self, t: &Touchpoint) -> NVal<'_> {
        use EventField::*;
        fn s(o: Option<&String>) -> NVal<'_> {
            NVal::Str(o.map_or("", String::as_str))
        }
        let c = t.commerce.as_ref();
        let call = t.call.as_ref();
        let chat = t.chat.as_ref();
        let web = t.web.as_ref();
        let int = |o: Option<i64>| NVal::Int(o.unwrap_or(0));
        match self {
            EventId => NVal::Str(&t.event_id),
            CustomerId => s(t.customer_id.as_ref()),
            AnonymousId => s(t.anonymous_id.as_ref()),
            Channel => NVal::Str(t.channel.as_str()),
            EventType => NVal::Str(t.event_type.as_str()),
            EventTime => NVal::Timestamp(t.event_time),
            StoreId => s(t.store_id.as_ref()),
            OrderId => s(c.and_then(|c| c.order_id.as_ref())),
            Sku => s(c.and_then(|c| c.sku.as_ref())),
            Amount => NVal::Double(c.and_then(|c| c.amount).unwrap_or(0.0)),
            Currency => s(c.and_then(|c| c.currency.as_ref())),
            Quantity => int(c.and_then(|c| c.quantity).map(i64::from)),
            SurveyKind => NVal::Str(t.survey.as_ref().map_or("", |s| s.kind.as_str())),
            SurveyScore => int(t.survey.as_ref().map(|s| i64::from(s.score))),
            SurveyComment => s(t.survey.as_ref().and_then(|s| s.comment.as_ref())),
            CallWait => int(call.and_then(|c| c.wait_seconds).map(i64::from)),
            CallDuration => int(call.and_then(|c| c.duration_seconds).map(i64::from)),
            CallTransfers => int(call.and_then(|c| c.transfers).map(i64::from)),
            CallOutcome => NVal::Str(
                call.and_then(|c| c.outcome)
                    .map_or("", crate::bind::outcome),
            ),
            AgentNotes => s(call.and_then(|c| c.agent_notes.as_ref())),
            ChatText => s(chat.and_then(|c| c.text.as_ref())),
            ChatSentiment => NVal::Double(chat.and_then(|c| c.sentiment).unwrap_or(0.0)),
            ChatFromBot => NVal::Bool(chat.and_then(|c| c.from_bot).unwrap_or(false)),
            WebUrl => s(web.and_then(|w| w.url.as_ref())),
            WebQuery => s(web.and_then(|w| w.query.as_ref())),
            WebReferrer => s(web.and_then(|w| w.referrer.as_ref())),
        }
    }
}

/// A field of `profile`, read as CEL reads it.
#[derive(Debug, Clone, Copy)]
enum ProfileField {
    Id,
    Events,
    FirstSeen,
    LastSeen,
    Orders,
    Returns,
    LifetimeValue,
    LastPurchase,
    OpenIssues,
    Nps,
    Csat,
    Ces,
    Sentiment,
    MaxWait,
    EmotionalState,
    EmotionalStateSince,
    Signal(Signal),
    Score(EmotionalState),
}

impl ProfileField {
    fn from_path(path: &str) -> Option<(ProfileField, Ty)> {
        use ProfileField::*;
        if let Some(name) = path.strip_prefix("emotion_signals.") {
            return Some((Signal(emotion::Signal::from_name(name)?), Ty::Double));
        }
        if let Some(name) = path.strip_prefix("emotion_scores.") {
            return Some((Score(symbols::emotional_state(name)?), Ty::Double));
        }
        Some(match path {
            "id" => (Id, Ty::Str),
            "events" => (Events, Ty::Int),
            "first_seen" => (FirstSeen, Ty::Timestamp),
            "last_seen" => (LastSeen, Ty::Timestamp),
            "orders" => (Orders, Ty::Int),
            "returns" => (Returns, Ty::Int),
            "lifetime_value" => (LifetimeValue, Ty::Double),
            "last_purchase" => (LastPurchase, Ty::Timestamp),
            "open_issues" => (OpenIssues, Ty::Int),
            "nps" => (Nps, Ty::Int),
            "csat" => (Csat, Ty::Int),
            "ces" => (Ces, Ty::Int),
            "sentiment" => (Sentiment, Ty::Double),
            "max_wait_seconds" => (MaxWait, Ty::Int),
            "emotional_state" => (EmotionalState, Ty::Str),
            "emotional_state_since" => (EmotionalStateSince, Ty::Timestamp),
            _ => return None,
        })
    }

    fn get<'a>(self, p: &'a Profile, cfg: &emotion::EmotionConfig) -> Result<NVal<'a>, NoValue> {
        use ProfileField::*;
        let score =
            |s: Option<rapport_model::profile::Score>| NVal::Int(s.map_or(-1, |s| s.score.into()));
        Ok(match self {
            Id => NVal::Str(&p.id),
            Events => NVal::Int(i64::try_from(p.events).unwrap_or(i64::MAX)),
            FirstSeen => NVal::Timestamp(p.first_seen_ms),
            LastSeen => NVal::Timestamp(p.last_seen_ms),
            Orders => NVal::Int(p.orders.into()),
            Returns => NVal::Int(p.returns.into()),
            LifetimeValue => NVal::Double(p.lifetime_value),
            LastPurchase => NVal::Timestamp(p.last_purchase_ms),
            OpenIssues => NVal::Int(p.open_issues.into()),
            Nps => score(p.nps),
            Csat => score(p.csat),
            Ces => score(p.ces),
            Sentiment => NVal::Double(p.sentiment),
            MaxWait => NVal::Int(p.max_wait_seconds.into()),
            EmotionalState => NVal::Str(p.emotion.state.as_str()),
            EmotionalStateSince => NVal::Timestamp(p.emotion.since_ms),
            Signal(s) => NVal::Double(emotion::signal_value(p, s, cfg)),
            // CEL has no such field for a state without a rule.
            Score(state) => match cfg.rule(state) {
                Some(_) => NVal::Double(emotion::score(p, state, cfg)),
                None => return Err(NoValue),
            },
        })
    }
}
