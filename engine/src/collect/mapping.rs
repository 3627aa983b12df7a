//! From a Segment call (track, identify, page, screen) to a canonical touchpoint,
//! by a mapping file the user can change (`deploy/collector/segment-mapping.toml`
//! is the one built in).
//!
//! Two kinds of problem are told apart:
//! - [`check_call`]: the call breaks the Segment spec (no user or anonymous id, a
//!   track without an event name, a timestamp that is not a time). The sender
//!   has a bug; the request is refused with 400 and the reason.
//! - [`Mapping::map`]: the call is well formed but Rapport cannot use it (an
//!   event name the mapping does not know, a group call, a touchpoint that fails
//!   validation). It goes to the dead-letter topic with the reason.

use std::collections::BTreeMap;
use std::path::Path;

use rapport_model::touchpoint::{Commerce, Web};
use rapport_model::{Channel, EventType, Touchpoint};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The mapping built into the collector.
pub const DEFAULT_MAPPING: &str = include_str!("../../../deploy/collector/segment-mapping.toml");

/// The Segment call types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// An action the user did, with an event name.
    Track,
    /// Who the user is.
    Identify,
    /// A web page view.
    Page,
    /// An app screen view.
    Screen,
    /// A user joined a group (account); Rapport has no touchpoint for it.
    Group,
    /// Two user ids are one person; Rapport stitches on identify instead.
    Alias,
}

impl CallKind {
    /// The call type as Segment names it.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Track => "track",
            CallKind::Identify => "identify",
            CallKind::Page => "page",
            CallKind::Screen => "screen",
            CallKind::Group => "group",
            CallKind::Alias => "alias",
        }
    }

    /// Reads a call's `type` field.
    pub fn parse(s: &str) -> Option<CallKind> {
        Some(match s {
            "track" => CallKind::Track,
            "identify" => CallKind::Identify,
            "page" => CallKind::Page,
            "screen" => CallKind::Screen,
            "group" => CallKind::Group,
            "alias" => CallKind::Alias,
            _ => return None,
        })
    }
}

/// The mapping file: how calls become touchpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// What a track event not listed in `events` becomes; `None` dead-letters it.
    #[serde(default)]
    pub unknown_event: Option<EventType>,
    /// The types of identify, page and screen calls.
    #[serde(default)]
    pub calls: Calls,
    /// How a call's channel is chosen.
    #[serde(default)]
    pub channel: ChannelRule,
    /// Where the touchpoint's fields come from.
    #[serde(default)]
    pub fields: Fields,
    /// Track events by name.
    #[serde(default)]
    pub events: BTreeMap<String, EventRule>,
    /// `events` by normalised name (see [`normalise`]).
    #[serde(skip)]
    by_name: BTreeMap<String, EventRule>,
}

/// The touchpoint types of the calls that are not track calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Calls {
    /// Type of an identify call.
    pub identify: EventType,
    /// Type of a page call.
    pub page: EventType,
    /// Type of a screen call.
    pub screen: EventType,
}

impl Default for Calls {
    fn default() -> Self {
        Calls {
            identify: EventType::Identify,
            page: EventType::PageView,
            screen: EventType::PageView,
        }
    }
}

/// How a call's channel is chosen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelRule {
    /// The channel when nothing says app.
    pub default: Channel,
    /// Pointers whose presence makes a call an app call.
    pub app_when: Vec<Pointer>,
}

impl Default for ChannelRule {
    fn default() -> Self {
        ChannelRule {
            default: Channel::Web,
            app_when: vec![Pointer::parse("/context/app").expect("a pointer")],
        }
    }
}

/// Pointers for each touchpoint field; the first present wins.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Fields {
    pub sku: Vec<Pointer>,
    pub order_id: Vec<Pointer>,
    pub amount: Vec<Pointer>,
    pub currency: Vec<Pointer>,
    pub quantity: Vec<Pointer>,
    pub url: Vec<Pointer>,
    pub query: Vec<Pointer>,
    pub referrer: Vec<Pointer>,
    pub store_id: Vec<Pointer>,
}

/// A JSON pointer (RFC 6901), split into its tokens once when the mapping is
/// loaded rather than on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `/a/b~1c`; anything not starting with `/` is refused.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is not a JSON pointer; write it like \"/properties/sku\""
            ));
        }
        let tokens = text[1..]
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Pointer { tokens })
    }

    /// The value it points to in `v`.
    pub fn get<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.tokens.iter().try_fold(v, |v, t| match v {
            Value::Object(m) => m.get(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
    }
}

impl<'de> Deserialize<'de> for Pointer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Pointer::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What one track event becomes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// The touchpoint type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The channel, when not the call's own.
    #[serde(default)]
    pub channel: Option<Channel>,
    /// Touchpoint attributes: name = JSON pointer into the call.
    #[serde(default)]
    pub attributes: BTreeMap<String, Pointer>,
}

/// A mapping file that cannot be used, with the line to fix.
#[derive(Debug, thiserror::Error)]
#[error("{}:{}: {message}", file.display(), line.map_or(String::from("?"), |l| l.to_string()))]
pub struct MappingError {
    /// The file (or `<built-in>`).
    pub file: std::path::PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

/// Event names match ignoring case, with `_` and `-` read as spaces.
pub fn normalise(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            '_' | '-' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl Mapping {
    /// The mapping built into the collector.
    pub fn builtin() -> Mapping {
        Mapping::parse(
            DEFAULT_MAPPING,
            Path::new("<built-in segment-mapping.toml>"),
        )
        .expect("the built-in mapping is valid (checked by a unit test)")
    }

    /// Reads a mapping file.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let src = std::fs::read_to_string(path).map_err(|e| MappingError {
            file: path.to_owned(),
            line: None,
            message: format!("cannot read the mapping file: {e}"),
        })?;
        Mapping::parse(&src, path)
    }

    /// Parses and checks mapping text; `file` names it in errors.
    pub fn parse(src: &str, file: &Path) -> Result<Mapping, MappingError> {
        let err = |line, message| MappingError {
            file: file.to_owned(),
            line,
            message,
        };
        let mut m: Mapping = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| crate::config::line_of(src, s.start));
            err(line, e.message().trim().to_owned())
        })?;
        for (name, rule) in &m.events {
            if m.by_name.insert(normalise(name), rule.clone()).is_some() {
                let line = src
                    .lines()
                    .position(|l| l.contains(&format!("\"{name}\"")))
                    .map(|i| i + 1);
                return Err(err(
                    line,
                    format!("event {name:?} is listed twice (names match ignoring case, '_' and '-'); keep one"),
                ));
            }
        }
        Ok(m)
    }

    /// The rule for a track event's name, if the mapping lists it.
    pub fn event(&self, name: &str) -> Option<&EventRule> {
        self.by_name.get(&normalise(name))
    }

    /// Turns a call that passed [`check_call`] into a touchpoint; an error is the
    /// reason to dead-letter it. `received_ms` stands in for a missing timestamp.
    pub fn map(
        &self,
        kind: CallKind,
        call: &Value,
        received_ms: i64,
    ) -> Result<Touchpoint, String> {
        let (event_type, rule) = self.event_type(kind, call)?;
        let tp = Touchpoint {
            event_id: event_id(call),
            customer_id: field(call, "userId").filter(|s| !s.is_empty()),
            anonymous_id: field(call, "anonymousId").filter(|s| !s.is_empty()),
            channel: self.channel_of(kind, call, rule),
            event_type,
            event_time: event_time(call)?.unwrap_or(received_ms),
            store_id: first_str(call, &self.fields.store_id),
            commerce: self.commerce(call)?,
            survey: None,
            call: None,
            chat: None,
            web: self.web(call),
            attributes: attributes(kind, call, rule),
        };
        tp.validate()
            .map_err(|e| format!("the mapped touchpoint is invalid: {e}"))?;
        Ok(tp)
    }

    /// The touchpoint type of a call, and the event's rule for a listed track event.
    fn event_type(
        &self,
        kind: CallKind,
        call: &Value,
    ) -> Result<(EventType, Option<&EventRule>), String> {
        Ok(match kind {
            CallKind::Track => {
                let name = field(call, "event").unwrap_or_default();
                match (self.event(&name), self.unknown_event) {
                    (Some(r), _) => (r.event_type, Some(r)),
                    (None, Some(t)) => (t, None),
                    (None, None) => return Err(format!(
                        "track event {name:?} is not in the collector's mapping and the mapping has no unknown_event; add it under [events] in the mapping file"
                    )),
                }
            }
            CallKind::Identify => (self.calls.identify, None),
            CallKind::Page => (self.calls.page, None),
            CallKind::Screen => (self.calls.screen, None),
            CallKind::Group | CallKind::Alias => {
                return Err(format!(
                    "{} calls have no touchpoint type in Rapport (identify links an anonymous id to a user)",
                    kind.as_str()
                ))
            }
        })
    }

    /// The event's own channel, else `app` for screens and calls with any
    /// `app_when` pointer present, else the default.
    fn channel_of(&self, kind: CallKind, call: &Value, rule: Option<&EventRule>) -> Channel {
        if let Some(c) = rule.and_then(|r| r.channel) {
            return c;
        }
        let app = kind == CallKind::Screen
            || self
                .channel
                .app_when
                .iter()
                .any(|p| p.get(call).is_some_and(|v| !v.is_null()));
        if app {
            Channel::App
        } else {
            self.channel.default
        }
    }

    fn commerce(&self, call: &Value) -> Result<Option<Commerce>, String> {
        let f = &self.fields;
        let amount = match first(call, &f.amount) {
            None => None,
            Some(v) => Some(number(v).ok_or_else(|| format!("amount {v} is not a number"))?),
        };
        let quantity = match first(call, &f.quantity) {
            None => None,
            Some(v) => Some(
                number(v)
                    .filter(|q| q.fract() == 0.0 && q.abs() <= f64::from(i32::MAX))
                    .map(|q| q as i32)
                    .ok_or_else(|| format!("quantity {v} is not a whole number"))?,
            ),
        };
        let c = Commerce {
            order_id: first_str(call, &f.order_id),
            sku: first_str(call, &f.sku),
            amount,
            currency: first_str(call, &f.currency),
            quantity,
        };
        Ok((c != Commerce::default()).then_some(c))
    }

    fn web(&self, call: &Value) -> Option<Web> {
        let f = &self.fields;
        let w = Web {
            url: first_str(call, &f.url),
            query: first_str(call, &f.query),
            referrer: first_str(call, &f.referrer),
        };
        (w != Web::default()).then_some(w)
    }
}

/// `segment_event` (the track event's or page's name) and the rule's attributes.
fn attributes(kind: CallKind, call: &Value, rule: Option<&EventRule>) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let label = match kind {
        CallKind::Track => field(call, "event"),
        _ => field(call, "name"),
    };
    if let Some(l) = label {
        attributes.insert("segment_event".to_owned(), l);
    }
    for (name, pointer) in rule.map(|r| &r.attributes).into_iter().flatten() {
        if let Some(v) = pointer.get(call).and_then(text) {
            attributes.insert(name.clone(), v);
        }
    }
    attributes
}

/// Checks a call against the Segment spec; `implied` is the type given by the
/// endpoint (`/v1/track`), `None` for a batch item, which must say its type.
pub fn check_call(call: &Value, implied: Option<CallKind>) -> Result<CallKind, String> {
    let Some(obj) = call.as_object() else {
        return Err(format!(
            "a call must be a JSON object, not {}",
            kind_of(call)
        ));
    };
    let kind = match (implied, obj.get("type")) {
        (Some(k), _) => k,
        (None, Some(Value::String(t))) => CallKind::parse(t).ok_or_else(|| {
            format!("type {t:?} is not a Segment call type (track, identify, page, screen, group, alias)")
        })?,
        (None, Some(v)) => return Err(format!("type must be a string, not {}", kind_of(v))),
        (None, None) => {
            return Err("type is missing; say track, identify, page or screen".into());
        }
    };
    for id in ["userId", "anonymousId"] {
        match obj.get(id) {
            None | Some(Value::Null | Value::String(_) | Value::Number(_)) => {}
            Some(v) => return Err(format!("{id} must be a string, not {}", kind_of(v))),
        }
    }
    if field(call, "userId").filter(|s| !s.is_empty()).is_none()
        && field(call, "anonymousId")
            .filter(|s| !s.is_empty())
            .is_none()
    {
        return Err("neither userId nor anonymousId is set; every call needs one".into());
    }
    if kind == CallKind::Track {
        match obj.get("event") {
            Some(Value::String(e)) if !e.trim().is_empty() => {}
            Some(Value::String(_)) | None => {
                return Err("a track call needs an event name (event)".into())
            }
            Some(v) => return Err(format!("event must be a string, not {}", kind_of(v))),
        }
    }
    match obj.get("messageId") {
        None | Some(Value::Null | Value::String(_)) => {}
        Some(v) => return Err(format!("messageId must be a string, not {}", kind_of(v))),
    }
    for field in ["properties", "traits", "context"] {
        match obj.get(field) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(v) => return Err(format!("{field} must be an object, not {}", kind_of(v))),
        }
    }
    event_time(call)?;
    Ok(kind)
}

/// The call's time: `timestamp`, else `originalTimestamp`, as epoch milliseconds.
fn event_time(call: &Value) -> Result<Option<i64>, String> {
    for field in ["timestamp", "originalTimestamp"] {
        match call.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => {
                return chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.timestamp_millis()))
                    .map_err(|e| {
                        format!("{field} {s:?} is not an ISO 8601 time with a zone, like 2026-11-26T12:00:00.000Z: {e}")
                    })
            }
            Some(v) => {
                return Err(format!(
                    "{field} must be an ISO 8601 string, not {}",
                    kind_of(v)
                ))
            }
        }
    }
    Ok(None)
}

/// The touchpoint's id: the call's `messageId`, else a hash of the call (the
/// same call sent again gets the same id).
fn event_id(call: &Value) -> String {
    match field(call, "messageId").filter(|s| !s.trim().is_empty()) {
        Some(id) => id,
        None => {
            let bytes = serde_json::to_vec(call).unwrap_or_default();
            let hash = Sha256::digest(&bytes);
            let hex: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    }
}

/// The first pointer of `pointers` present (and not null) in `call`.
fn first<'a>(call: &'a Value, pointers: &[Pointer]) -> Option<&'a Value> {
    pointers
        .iter()
        .filter_map(|p| p.get(call))
        .find(|v| !v.is_null())
}

fn first_str(call: &Value, pointers: &[Pointer]) -> Option<String> {
    first(call, pointers).and_then(text)
}

/// A top-level string, number or boolean field of the call, as text.
fn field(call: &Value, name: &str) -> Option<String> {
    call.get(name).and_then(text)
}

/// A string, number or boolean at `pointer`, as text.
pub fn str_at(call: &Value, pointer: &str) -> Option<String> {
    call.pointer(pointer).and_then(text)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A number, or a string holding one.
pub fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// What kind of JSON value `v` is, for messages.
pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
