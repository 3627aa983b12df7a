//! Chat webhooks: `POST /v1/webhooks/chat/{source}`. A chat platform posts
//! message events as JSON, signed with HMAC-SHA256 over the raw body with a
//! shared secret; the source's field mapping (JSON pointers) says where the
//! customer, conversation, direction, sentiment, hand-off flag, event id and
//! time are. Each event becomes a `chat_message` (or `chat_handoff`) touchpoint.
//!
//! The message text never reaches a touchpoint or a profile: journeys need
//! counts, sentiment and hand-offs, not what the customer wrote. Only its length
//! is kept, as the attribute `text_length`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rapport_model::touchpoint::Chat;
use rapport_model::{Channel, EventType, Touchpoint};
use serde_json::{json, Value};
use sha2::Sha256;

use super::config::{resolve_secret, ChatSource, SignatureEncoding};
use super::mapping::{number, str_at};
use super::sink::{DeadLetter, Outgoing};
use super::{now_ms, read_body, refuse, Collector};

/// The configured chat sources with their secrets read.
#[derive(Default)]
pub struct ChatSecrets {
    sources: BTreeMap<String, (ChatSource, Vec<u8>)>,
}

impl ChatSecrets {
    /// Reads each source's secret (`env:NAME` from the environment); an error
    /// names the source and what is missing.
    pub fn resolve(cfg: &BTreeMap<String, ChatSource>) -> Result<Self, (String, String)> {
        let mut sources = BTreeMap::new();
        for (name, s) in cfg {
            let secret = resolve_secret(&s.secret).map_err(|m| (name.clone(), m))?;
            sources.insert(name.clone(), (s.clone(), secret.into_bytes()));
        }
        Ok(ChatSecrets { sources })
    }
}

/// Handles one webhook request and counts it.
pub(super) async fn handle(
    State(c): State<Arc<Collector>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let known = c.chat.sources.contains_key(&source);
    let response = match process(&c, &source, &headers, body).await {
        Ok(r) | Err(r) => r,
    };
    // Unknown names share one label, so a scan cannot grow the metrics.
    let label = if known {
        format!("/v1/webhooks/chat/{source}")
    } else {
        "/v1/webhooks/chat/(unknown)".to_owned()
    };
    c.metrics
        .requests
        .with_label_values(&[label.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn process(
    c: &Collector,
    source: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    let Some((src, secret)) = c.chat.sources.get(source) else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no chat source {source:?}; configure [collector.chat.{source}]"),
        ));
    };
    let bytes = read_body(headers, body, c.cfg.max_body_bytes).await?;
    verify(src, secret, headers, &bytes)
        .map_err(|m| refuse(StatusCode::UNAUTHORIZED, "bad_signature", m))?;
    let value: Value = super::json_body(&bytes)?;
    let events =
        events_of(src, &value).map_err(|m| refuse(StatusCode::BAD_REQUEST, "bad_request", m))?;
    let received = now_ms();
    let mut out = Vec::with_capacity(events.len());
    let mut dead = 0;
    for (i, ev) in events.iter().enumerate() {
        match map_chat(source, src, ev, received) {
            Err(m) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("event {i}: {m}; nothing was accepted"),
                ))
            }
            Ok(Ok(tp)) => out.push(Outgoing::Touchpoint(Box::new(tp))),
            Ok(Err(reason)) => {
                dead += 1;
                out.push(Outgoing::DeadLetter(DeadLetter {
                    source: format!("/v1/webhooks/chat/{source}"),
                    key: str_at(ev, &src.customer),
                    value: serde_json::to_vec(ev).unwrap_or_default(),
                    class: "invalid",
                    reason,
                }));
            }
        }
    }
    super::deliver(c, &out).await?;
    Ok(
        Json(json!({"success": true, "produced": out.len() - dead, "dead_lettered": dead}))
            .into_response(),
    )
}

/// The message events of a request: the array at `events`, or the body itself.
fn events_of<'a>(src: &ChatSource, body: &'a Value) -> Result<Vec<&'a Value>, String> {
    if src.events.is_empty() {
        return Ok(vec![body]);
    }
    match body.pointer(&src.events) {
        Some(Value::Array(a)) => Ok(a.iter().collect()),
        _ => Err(format!("no array of events at {}", src.events)),
    }
}

/// Checks the request's signature header: HMAC-SHA256 of the raw body with the
/// source's secret, compared in constant time.
pub fn verify(
    src: &ChatSource,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let header = &src.signature_header;
    let value = headers
        .get(header.as_str())
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| format!("no {header} header; sign the body with HMAC-SHA256"))?
        .trim();
    let value = value
        .strip_prefix(src.signature_prefix.as_str())
        .unwrap_or(value);
    let signature = match src.signature_encoding {
        SignatureEncoding::Hex => decode_hex(value),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(value).ok(),
    }
    .ok_or_else(|| {
        let enc = format!("{:?}", src.signature_encoding).to_lowercase();
        format!("the {header} header is not a {enc} signature")
    })?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(body);
    mac.verify_slice(&signature).map_err(|_| {
        format!("the {header} signature does not match the body and the shared secret")
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Turns one message event into a touchpoint. The outer error means the event
/// lacks what the source's mapping requires (400); the inner one that the
/// touchpoint is invalid (dead-lettered with the reason).
pub fn map_chat(
    source: &str,
    src: &ChatSource,
    ev: &Value,
    received_ms: i64,
) -> Result<Result<Touchpoint, String>, String> {
    let required = |pointer: &str, what: &str| {
        str_at(ev, pointer)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| format!("no {what} at {pointer}"))
    };
    let customer = required(&src.customer, "customer id")?;
    let id = required(&src.event_id, "event id")?;
    let optional = |pointer: &str| optional_at(ev, pointer);
    let sentiment = sentiment(src, optional(&src.sentiment))?;
    let handoff = optional(&src.handoff).is_some_and(truthy);
    let direction = optional(&src.direction).and_then(|v| v.as_str().map(str::to_owned));
    let attributes = chat_attributes(source, src, ev, direction.as_deref());
    let event_time = match optional(&src.timestamp) {
        None | Some(Value::Null) => received_ms,
        Some(v) => time(v).ok_or_else(|| {
            format!(
                "timestamp {v} at {} is neither RFC 3339 nor epoch seconds or milliseconds",
                src.timestamp
            )
        })?,
    };
    let tp = Touchpoint {
        event_id: format!("{source}:{id}"),
        customer_id: Some(customer),
        anonymous_id: None,
        channel: Channel::Chat,
        event_type: if handoff {
            EventType::ChatHandoff
        } else {
            EventType::ChatMessage
        },
        event_time,
        store_id: None,
        commerce: None,
        survey: None,
        call: None,
        chat: Some(Chat {
            text: None,
            sentiment,
            from_bot: direction.as_deref().map(|d| is_one_of(&src.bot, d)),
        }),
        web: None,
        attributes,
    };
    Ok(tp
        .validate()
        .map(|()| tp)
        .map_err(|e| format!("the chat touchpoint is invalid: {e}")))
}

/// The message's sentiment on the touchpoint's scale (-1..=1), from the
/// source's own scale (`sentiment_range`); absent when the event has none.
fn sentiment(src: &ChatSource, v: Option<&Value>) -> Result<Option<f64>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let x =
        number(v).ok_or_else(|| format!("sentiment {v} at {} is not a number", src.sentiment))?;
    let [lo, hi] = src.sentiment_range;
    Ok(Some(-1.0 + 2.0 * (x - lo) / (hi - lo)))
}

/// The value at `pointer` in the event, where the source maps that field at
/// all (an empty pointer means it does not).
fn optional_at<'a>(ev: &'a Value, pointer: &str) -> Option<&'a Value> {
    (!pointer.is_empty()).then(|| ev.pointer(pointer)).flatten()
}

/// Whether direction `d` is one of `list`, ignoring case.
fn is_one_of(list: &[String], d: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(d))
}

/// The touchpoint's attributes: the source, and where the event has them the
/// conversation, the direction (inbound or outbound) and the text's length
/// (the text itself is not kept).
fn chat_attributes(
    source: &str,
    src: &ChatSource,
    ev: &Value,
    direction: Option<&str>,
) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::from([("source".to_owned(), source.to_owned())]);
    if let Some(conv) = (!src.conversation.is_empty())
        .then(|| str_at(ev, &src.conversation))
        .flatten()
    {
        attributes.insert("conversation_id".into(), conv);
    }
    if let Some(d) = direction {
        let side = if is_one_of(&src.inbound, d) {
            "inbound"
        } else {
            "outbound"
        };
        attributes.insert("direction".into(), side.into());
    }
    if let Some(Value::String(t)) = optional_at(ev, &src.text) {
        attributes.insert("text_length".into(), t.chars().count().to_string());
    }
    attributes
}

/// true, "true", "yes", 1.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => matches!(s.trim().to_ascii_lowercase().as_str(), "true" | "yes" | "1"),
        _ => false,
    }
}

/// RFC 3339 text, or epoch seconds (below 10^11) or milliseconds.
fn time(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.timestamp_millis())
            .or_else(|| number(v).and_then(|f| time(&json!(f)))),
        Value::Number(n) => {
            let f = n.as_f64()?;
            Some(if f.abs() < 1e11 {
                (f * 1000.0) as i64
            } else {
                f as i64
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> ChatSource {
        ChatSource {
            secret: "s3cret".into(),
            customer: "/user/id".into(),
            event_id: "/id".into(),
            conversation: "/conversation".into(),
            direction: "/from".into(),
            text: "/text".into(),
            sentiment: "/nlp/score".into(),
            sentiment_range: [0.0, 1.0],
            handoff: "/handoff".into(),
            timestamp: "/ts".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_message_becomes_a_chat_touchpoint_without_its_text() {
        let ev = json!({"id": "m1", "user": {"id": "c-1"}, "conversation": "conv-9", "from": "user",
            "text": "where is my parcel?", "nlp": {"score": 0.25}, "ts": 1764000000});
        let tp = map_chat("support", &source(), &ev, 0).unwrap().unwrap();
        assert_eq!(tp.event_id, "support:m1");
        assert_eq!(tp.customer_id.as_deref(), Some("c-1"));
        assert_eq!(
            (tp.channel, tp.event_type),
            (Channel::Chat, EventType::ChatMessage)
        );
        assert_eq!(
            tp.event_time, 1_764_000_000_000,
            "epoch seconds read as such"
        );
        let chat = tp.chat.as_ref().unwrap();
        assert_eq!(chat.sentiment, Some(-0.5), "0..1 rescaled to -1..1");
        assert_eq!(chat.from_bot, Some(false));
        assert_eq!(chat.text, None);
        assert_eq!(tp.attributes["text_length"], "19");
        assert_eq!(tp.attributes["direction"], "inbound");
        assert_eq!(tp.attributes["conversation_id"], "conv-9");
        let json = serde_json::to_string(&tp).unwrap();
        assert!(!json.contains("parcel"), "no text anywhere: {json}");
    }

    #[test]
    fn a_handoff_flag_makes_a_chat_handoff() {
        let ev = json!({"id": "m2", "user": {"id": "c-1"}, "from": "bot", "handoff": "true", "ts": "2025-11-24T16:00:00Z"});
        let tp = map_chat("support", &source(), &ev, 0).unwrap().unwrap();
        assert_eq!(tp.event_type, EventType::ChatHandoff);
        assert_eq!(tp.chat.unwrap().from_bot, Some(true));
        assert_eq!(tp.attributes["direction"], "outbound");
        assert_eq!(tp.event_time, 1_764_000_000_000);
    }

    #[test]
    fn missing_ids_are_refused_and_out_of_range_sentiment_dead_lettered() {
        let e = map_chat("s", &source(), &json!({"id": "m"}), 0).unwrap_err();
        assert!(e.contains("customer id at /user/id"), "{e}");
        let e = map_chat("s", &source(), &json!({"user": {"id": "c"}}), 0).unwrap_err();
        assert!(e.contains("event id"), "{e}");
        let ev =
            json!({"id": "m", "user": {"id": "c"}, "nlp": {"score": 7}, "ts": 1764000000000_i64});
        let dlq = map_chat("s", &source(), &ev, 0).unwrap().unwrap_err();
        assert!(dlq.contains("sentiment"), "{dlq}");
    }

    #[test]
    fn signatures_are_checked_against_the_raw_body() {
        let src = source();
        let body = br#"{"id":"m1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut h = HeaderMap::new();
        h.insert("x-signature", format!("sha256={hex}").parse().unwrap());
        assert_eq!(verify(&src, b"s3cret", &h, body), Ok(()));
        assert!(verify(&src, b"other", &h, body).is_err());
        assert!(verify(&src, b"s3cret", &h, br#"{"id":"m2"}"#).is_err());
        h.insert("x-signature", "sha256=zz".parse().unwrap());
        assert!(verify(&src, b"s3cret", &h, body)
            .unwrap_err()
            .contains("not a hex"));
        assert!(verify(&src, b"s3cret", &HeaderMap::new(), body)
            .unwrap_err()
            .contains("no x-signature"));
    }

    #[test]
    fn base64_signatures_without_a_prefix_are_read_too() {
        let src = ChatSource {
            signature_header: "x-platform-signature".into(),
            signature_prefix: String::new(),
            signature_encoding: SignatureEncoding::Base64,
            ..source()
        };
        let body = br#"{"id":"m1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert("x-platform-signature", b64.parse().unwrap());
        assert_eq!(verify(&src, b"s3cret", &h, body), Ok(()));
        assert!(verify(&src, b"s3cret!", &h, body).is_err());
    }
}
