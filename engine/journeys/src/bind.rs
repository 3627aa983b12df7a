//! Binding `event`, `profile`, `now` and `key` for CEL, lazily.
//!
//! Nothing is converted up front: the CEL context asks a [`Bindings`] resolver
//! for the names an expression uses (`event.commerce.sku` arrives as that one
//! dotted name) and gets a value borrowed from the touchpoint or the profile.
//! Profile functions (`profile.count(...)`) are member overloads on a
//! [`ProfileVal`], which answers them through CEL's `Indexer` with a [`Query`]
//! as the index: the only way a plain-`fn` overload can reach borrowed data.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelDouble, CelDuration, CelInt, CelString, CelTimestamp, Type, DURATION_TYPE,
    STRING_TYPE,
};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::context::VariableResolver;
use cel::{Env, ExecutionError, Value};
use rapport_model::emotion::{self, EmotionConfig, Signal};
use rapport_model::profile::Score;
use rapport_model::{Profile, Touchpoint};

use crate::symbols;

/// What an evaluation sees.
pub(crate) struct Bindings<'a> {
    pub event: Option<&'a Touchpoint>,
    pub profile: &'a Profile,
    pub now_ms: i64,
    pub key: &'a str,
    pub emotion: &'a EmotionConfig,
}

impl VariableResolver for Bindings<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        if let Some(rest) = name.strip_prefix("event.") {
            return self.event.and_then(|t| event_field(t, rest));
        }
        if let Some(rest) = name.strip_prefix("profile.") {
            return profile_field(self.profile, rest, self.emotion);
        }
        match name {
            "profile" => Some(CowVal::owned(ProfileVal {
                p: self.profile,
                now_ms: self.now_ms,
            })),
            "now" => Some(timestamp(self.now_ms)),
            "key" => Some(string(self.key)),
            _ => None,
        }
    }
}

fn string<'b>(s: &'b str) -> CowVal<'b, 'b> {
    CowVal::owned(CelString::from(s))
}

fn opt_string<'b>(s: &'b Option<String>) -> CowVal<'b, 'b> {
    string(s.as_deref().unwrap_or(""))
}

fn int<'b>(i: impl Into<i64>) -> CowVal<'b, 'b> {
    CowVal::owned(CelInt::from(i.into()))
}

fn double<'b>(f: f64) -> CowVal<'b, 'b> {
    CowVal::owned(CelDouble::from(f))
}

/// A timestamp value for epoch ms (out-of-range values clamp to the epoch).
pub(crate) fn timestamp<'b>(ms: i64) -> CowVal<'b, 'b> {
    let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
    CowVal::owned(CelTimestamp::from(t.fixed_offset()))
}

fn event_field<'b>(t: &'b Touchpoint, path: &str) -> Option<CowVal<'b, 'b>> {
    let c = t.commerce.as_ref();
    let s = t.survey.as_ref();
    let call = t.call.as_ref();
    let chat = t.chat.as_ref();
    let web = t.web.as_ref();
    Some(match path {
        "event_id" => string(&t.event_id),
        "customer_id" => opt_string(&t.customer_id),
        "anonymous_id" => opt_string(&t.anonymous_id),
        "channel" => string(t.channel.as_str()),
        "event_type" => string(t.event_type.as_str()),
        "event_time" => timestamp(t.event_time),
        "store_id" => opt_string(&t.store_id),
        "commerce.order_id" => string(c.and_then(|c| c.order_id.as_deref()).unwrap_or("")),
        "commerce.sku" => string(c.and_then(|c| c.sku.as_deref()).unwrap_or("")),
        "commerce.amount" => double(c.and_then(|c| c.amount).unwrap_or(0.0)),
        "commerce.currency" => string(c.and_then(|c| c.currency.as_deref()).unwrap_or("")),
        "commerce.quantity" => int(c.and_then(|c| c.quantity).unwrap_or(0)),
        "survey.kind" => string(s.map_or("", |s| s.kind.as_str())),
        "survey.score" => int(s.map_or(0, |s| s.score)),
        "survey.comment" => string(s.and_then(|s| s.comment.as_deref()).unwrap_or("")),
        "call.wait_seconds" => int(call.and_then(|c| c.wait_seconds).unwrap_or(0)),
        "call.duration_seconds" => int(call.and_then(|c| c.duration_seconds).unwrap_or(0)),
        "call.transfers" => int(call.and_then(|c| c.transfers).unwrap_or(0)),
        "call.outcome" => string(call.and_then(|c| c.outcome).map_or("", outcome)),
        "call.agent_notes" => string(call.and_then(|c| c.agent_notes.as_deref()).unwrap_or("")),
        "chat.text" => string(chat.and_then(|c| c.text.as_deref()).unwrap_or("")),
        "chat.sentiment" => double(chat.and_then(|c| c.sentiment).unwrap_or(0.0)),
        "chat.from_bot" => CowVal::owned(CelBool::from(
            chat.and_then(|c| c.from_bot).unwrap_or(false),
        )),
        "web.url" => string(web.and_then(|w| w.url.as_deref()).unwrap_or("")),
        "web.query" => string(web.and_then(|w| w.query.as_deref()).unwrap_or("")),
        "web.referrer" => string(web.and_then(|w| w.referrer.as_deref()).unwrap_or("")),
        "attributes" => {
            let map: HashMap<String, String> = t.attributes.clone().into_iter().collect();
            let boxed: Box<dyn Val> = Value::from(map).try_into().ok()?;
            CowVal::Owned(boxed)
        }
        _ => return None,
    })
}

/// A string field of the event by path, read directly (what CEL would give for
/// `event.<path>`, with `""` for an absent optional field); `None` for a path
/// that is not a string field.
pub(crate) fn event_str<'b>(t: &'b Touchpoint, path: &str) -> Option<&'b str> {
    let c = t.commerce.as_ref();
    let s = t.survey.as_ref();
    let opt = |o: Option<&'b String>| o.map_or("", String::as_str);
    Some(match path {
        "event_id" => &t.event_id,
        "customer_id" => opt(t.customer_id.as_ref()),
        "anonymous_id" => opt(t.anonymous_id.as_ref()),
        "channel" => t.channel.as_str(),
        "event_type" => t.event_type.as_str(),
        "store_id" => opt(t.store_id.as_ref()),
        "commerce.order_id" => opt(c.and_then(|c| c.order_id.as_ref())),
        "commerce.sku" => opt(c.and_then(|c| c.sku.as_ref())),
        "commerce.currency" => opt(c.and_then(|c| c.currency.as_ref())),
        "survey.kind" => s.map_or("", |s| s.kind.as_str()),
        _ => return None,
    })
}

pub(crate) fn outcome(o: rapport_model::touchpoint::CallOutcome) -> &'static str {
    use rapport_model::touchpoint::CallOutcome::*;
    match o {
        Resolved => "resolved",
        Unresolved => "unresolved",
        Escalated => "escalated",
        Abandoned => "abandoned",
        CallbackScheduled => "callback_scheduled",
    }
}

fn score<'b>(s: Option<Score>) -> CowVal<'b, 'b> {
    int(s.map_or(-1, |s| s.score))
}

fn profile_field<'b>(
    p: &'b Profile,
    path: &str,
    emotion: &EmotionConfig,
) -> Option<CowVal<'b, 'b>> {
    if let Some(name) = path.strip_prefix("emotion_signals.") {
        let signal = Signal::from_name(name)?;
        return Some(double(emotion::signal_value(p, signal, emotion)));
    }
    if let Some(name) = path.strip_prefix("emotion_scores.") {
        let state = crate::symbols::emotional_state(name)?;
        return emotion
            .rule(state)
            .map(|_| double(emotion::score(p, state, emotion)));
    }
    Some(match path {
        "id" => string(&p.id),
        "events" => int(i64::try_from(p.events).unwrap_or(i64::MAX)),
        "first_seen" => timestamp(p.first_seen_ms),
        "last_seen" => timestamp(p.last_seen_ms),
        "orders" => int(p.orders),
        "returns" => int(p.returns),
        "lifetime_value" => double(p.lifetime_value),
        "last_purchase" => timestamp(p.last_purchase_ms),
        "open_issues" => int(p.open_issues),
        "nps" => score(p.nps),
        "csat" => score(p.csat),
        "ces" => score(p.ces),
        "sentiment" => double(p.sentiment),
        "max_wait_seconds" => int(p.max_wait_seconds),
        "emotional_state" => string(p.emotion.state.as_str()),
        "emotional_state_since" => timestamp(p.emotion.since_ms),
        "recent_event_types" => string_list(p.recent.iter().map(|r| r.event_type.as_str())),
        "recent_channels" => string_list(p.recent.iter().map(|r| r.channel.as_str())),
        _ => return None,
    })
}

fn string_list<'b>(items: impl Iterator<Item = &'static str>) -> CowVal<'b, 'b> {
    let v: Vec<Box<dyn Val + 'b>> = items
        .map(|s| Box::new(CelString::from(s)) as Box<dyn Val + 'b>)
        .collect();
    CowVal::owned(cel::common::types::CelList::from(v))
}

/// The CEL type of `profile`.
const PROFILE: Type = Type::new_unspecified_type("rapport.Profile");
static PROFILE_TYPE: Type = PROFILE;
/// The CEL type of a profile query (internal).
static QUERY_TYPE: Type = Type::new_unspecified_type("rapport.ProfileQuery");

/// `profile`: the customer's profile as seen at `now_ms`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProfileVal<'a> {
    p: &'a Profile,
    now_ms: i64,
}

impl Val for ProfileVal<'_> {
    fn get_type(&self) -> &Type {
        &PROFILE_TYPE
    }

    fn cel_type() -> &'static Type {
        &PROFILE_TYPE
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
}

impl Indexer for ProfileVal<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let q = idx
            .downcast_ref::<Query>()
            .ok_or_else(|| ExecutionError::function_error("profile", "not a profile query"))?;
        Ok(CowVal::Owned(q.answer(self.p, self.now_ms)))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError> {
        let q = idx
            .downcast_ref::<Query>()
            .ok_or_else(|| ExecutionError::function_error("profile", "not a profile query"))?;
        Ok(q.answer(self.p, self.now_ms))
    }
}

/// A profile function call, resolved against the profile by [`ProfileVal`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Query {
    Count(rapport_model::EventType, i64),
    CountOn(rapport_model::EventType, rapport_model::Channel, i64),
    ProductViews(String, i64),
    Contacts(i64),
    Last(rapport_model::EventType),
}

impl Query {
    fn answer(&self, p: &Profile, now: i64) -> Box<dyn Val + 'static> {
        let n = |c: u64| -> Box<dyn Val> {
            Box::new(CelInt::from(i64::try_from(c).unwrap_or(i64::MAX)))
        };
        match self {
            Query::Count(t, w) => n(p.windows.count(*t, now - w, now)),
            Query::CountOn(t, c, w) => n(p.windows.count_on(*t, *c, now - w, now)),
            Query::ProductViews(sku, w) => n(p
                .product_interest(sku)
                .map_or(0, |i| i.unbought_views(now - w, now) as u64)),
            Query::Contacts(w) => n(p
                .contacts_ms
                .iter()
                .filter(|&&t| t >= now - w && t <= now)
                .count() as u64),
            Query::Last(t) => timestamp(p.windows.last_ms(*t)).into_owned(),
        }
    }
}

impl Val for Query {
    fn get_type(&self) -> &Type {
        &QUERY_TYPE
    }

    fn cel_type() -> &'static Type {
        &QUERY_TYPE
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Query>() == Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for Query {}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;

fn str_arg<'a>(args: &'a [CowVal<'_, '_>], i: usize) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| {
            ExecutionError::function_error("profile", format!("argument {i} is not a string"))
        })
}

fn event_type_arg(
    args: &[CowVal<'_, '_>],
    i: usize,
) -> Result<rapport_model::EventType, ExecutionError> {
    let s = str_arg(args, i)?;
    symbols::event_type(s).ok_or_else(|| {
        ExecutionError::function_error("profile", format!("unknown event type {s:?}"))
    })
}

fn window_arg(args: &[CowVal<'_, '_>], i: usize) -> Result<i64, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelDuration>())
        .map(|d| d.inner().num_milliseconds())
        .ok_or_else(|| {
            ExecutionError::function_error("profile", format!("argument {i} is not a duration"))
        })
}

/// Asks `args[0]` (the profile) for `q`.
fn ask<'b, 'v>(args: Args<'b, 'v>, q: Query) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let profile = args[0].as_indexer().ok_or_else(|| {
        ExecutionError::function_error("profile", "called on something other than profile")
    })?;
    let answer = profile.get(&q)?.into_owned();
    Ok(CowVal::Owned(answer))
}

fn count<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = Query::Count(event_type_arg(&args, 1)?, window_arg(&args, 2)?);
    ask(args, q)
}

fn count_on<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let ch = str_arg(&args, 2)?;
    let ch = symbols::channel(ch).ok_or_else(|| {
        ExecutionError::function_error("profile", format!("unknown channel {ch:?}"))
    })?;
    let q = Query::CountOn(event_type_arg(&args, 1)?, ch, window_arg(&args, 3)?);
    ask(args, q)
}

fn product_views<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = Query::ProductViews(str_arg(&args, 1)?.to_owned(), window_arg(&args, 2)?);
    ask(args, q)
}

fn contacts<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = Query::Contacts(window_arg(&args, 1)?);
    ask(args, q)
}

fn last<'b, 'v>(args: Args<'b, 'v>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let q = Query::Last(event_type_arg(&args, 1)?);
    ask(args, q)
}

/// The CEL environment journeys compile and run in: the standard library plus
/// the profile functions.
pub(crate) fn environment() -> Arc<Env> {
    let mut env = Env::stdlib();
    let s = || STRING_TYPE;
    let d = || DURATION_TYPE;
    let p = || PROFILE;
    let declared = [
        env.add_member_overload("count", "rapport_profile_count", p(), vec![s(), d()], count),
        env.add_member_overload(
            "count_on",
            "rapport_profile_count_on",
            p(),
            vec![s(), s(), d()],
            count_on,
        ),
        env.add_member_overload(
            "product_views",
            "rapport_profile_product_views",
            p(),
            vec![s(), d()],
            product_views,
        ),
        env.add_member_overload(
            "contacts",
            "rapport_profile_contacts",
            p(),
            vec![d()],
            contacts,
        ),
        env.add_member_overload("last", "rapport_profile_last", p(), vec![s()], last),
    ];
    for r in declared {
        r.expect("profile functions have distinct names and ids");
    }
    Arc::new(env)
}
