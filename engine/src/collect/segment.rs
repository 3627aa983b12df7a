//! The Segment HTTP tracking API, as Segment's and RudderStack's SDKs call it:
//! a JSON body (gzip allowed), the write key as the Basic user name.
//!
//! Answers: 200 once every record is acknowledged by Kafka; 400 with `code` and
//! `message` (and `errors` by call index) when the body or a call breaks the
//! spec, and then nothing of the request is produced; 401 for a missing or
//! wrong write key; 413 for a body or batch over the limits; 503 when Kafka did
//! not acknowledge in time (the SDKs retry).

// The helpers return the HTTP answer itself on the refusing path; it is built
// once per refused request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::mapping::{check_call, CallKind};
use super::sink::{DeadLetter, Outgoing};
use super::{now_ms, read_body, refuse, Collector};

/// One of the tracking API's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// One call of the given type.
    Single(CallKind),
    /// `{"batch": [calls]}`.
    Batch,
}

impl Endpoint {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Single(CallKind::Track) => "/v1/track",
            Endpoint::Single(CallKind::Identify) => "/v1/identify",
            Endpoint::Single(CallKind::Page) => "/v1/page",
            Endpoint::Single(CallKind::Screen) => "/v1/screen",
            Endpoint::Single(CallKind::Group) => "/v1/group",
            Endpoint::Single(CallKind::Alias) => "/v1/alias",
            Endpoint::Batch => "/v1/batch",
        }
    }
}

/// Every path and its endpoint, Segment's one-letter aliases included.
pub const ROUTES: [(&str, Endpoint); 14] = [
    ("/v1/track", Endpoint::Single(CallKind::Track)),
    ("/v1/t", Endpoint::Single(CallKind::Track)),
    ("/v1/identify", Endpoint::Single(CallKind::Identify)),
    ("/v1/i", Endpoint::Single(CallKind::Identify)),
    ("/v1/page", Endpoint::Single(CallKind::Page)),
    ("/v1/p", Endpoint::Single(CallKind::Page)),
    ("/v1/screen", Endpoint::Single(CallKind::Screen)),
    ("/v1/s", Endpoint::Single(CallKind::Screen)),
    ("/v1/group", Endpoint::Single(CallKind::Group)),
    ("/v1/g", Endpoint::Single(CallKind::Group)),
    ("/v1/alias", Endpoint::Single(CallKind::Alias)),
    ("/v1/a", Endpoint::Single(CallKind::Alias)),
    ("/v1/batch", Endpoint::Batch),
    ("/v1/b", Endpoint::Batch),
];

/// Handles one request to `endpoint` and counts it.
pub(super) async fn handle(
    State(c): State<Arc<Collector>>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match process(&c, endpoint, &headers, body).await {
        Ok(r) | Err(r) => r,
    };
    c.metrics
        .requests
        .with_label_values(&[endpoint.label(), response.status().as_str()])
        .inc();
    response
}

async fn process(
    c: &Collector,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    authenticate(headers, &c.write_keys)?;
    let bytes = read_body(headers, body, c.cfg.max_body_bytes).await?;
    let value: Value = super::json_body(&bytes)?;
    let (calls, implied) = calls_of(&value, endpoint, c.cfg.max_batch_len)?;
    let kinds = check_all(&calls, implied)?;
    let received = now_ms();
    let mut out = Vec::with_capacity(calls.len());
    let mut dead = Vec::new();
    for (i, (call, kind)) in calls.iter().zip(kinds).enumerate() {
        match c.mapping.map(kind, call, received) {
            Ok(tp) => out.push(Outgoing::Touchpoint(Box::new(tp))),
            Err(reason) => {
                dead.push(json!({"index": i, "reason": reason}));
                out.push(Outgoing::DeadLetter(DeadLetter {
                    source: endpoint.label().to_owned(),
                    key: identity(call),
                    value: serde_json::to_vec(call).unwrap_or_default(),
                    class: "unmapped",
                    reason,
                }));
            }
        }
    }
    super::deliver(c, &out).await?;
    let produced = out.len() - dead.len();
    Ok(Json(json!({
        "success": true,
        "produced": produced,
        "dead_lettered": dead.len(),
        "dead_letters": dead,
    }))
    .into_response())
}

/// The calls of a request and the type the endpoint implies (none for a batch).
fn calls_of(
    value: &Value,
    endpoint: Endpoint,
    max_batch_len: usize,
) -> Result<(Vec<&Value>, Option<CallKind>), Response> {
    let bad = |m: String| refuse(StatusCode::BAD_REQUEST, "bad_request", m);
    match endpoint {
        Endpoint::Single(kind) => Ok((vec![value], Some(kind))),
        Endpoint::Batch => {
            let batch = match value.get("batch") {
                Some(Value::Array(b)) => b,
                Some(v) => {
                    return Err(bad(format!(
                        "batch must be an array of calls, not {}",
                        super::mapping::kind_of(v)
                    )))
                }
                None => {
                    return Err(bad(
                        "the body has no batch array: send {\"batch\": [calls]}".into(),
                    ))
                }
            };
            if batch.len() > max_batch_len {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!(
                        "the batch has {} calls, over collector.max_batch_len = {max_batch_len}; send smaller batches",
                        batch.len()
                    ),
                ));
            }
            Ok((batch.iter().collect(), None))
        }
    }
}

/// Checks every call against the spec; any failure refuses the whole request
/// with each problem by index (the SDKs always send valid calls, so this is a
/// sender's bug to fix, not data to keep).
fn check_all(calls: &[&Value], implied: Option<CallKind>) -> Result<Vec<CallKind>, Response> {
    let mut kinds = Vec::with_capacity(calls.len());
    let mut errors = Vec::new();
    for (i, call) in calls.iter().enumerate() {
        match check_call(call, implied) {
            Ok(k) => kinds.push(k),
            Err(e) => errors.push((i, e)),
        }
    }
    let Some((first_index, first)) = errors.first() else {
        return Ok(kinds);
    };
    let message = if implied.is_some() {
        first.clone()
    } else {
        format!(
            "{} of {} calls are not valid Segment calls, nothing was accepted; call {first_index}: {first}",
            errors.len(),
            calls.len()
        )
    };
    let list: Vec<Value> = errors
        .iter()
        .take(100)
        .map(|(i, e)| json!({"index": i, "message": e}))
        .collect();
    Err((
        StatusCode::BAD_REQUEST,
        Json(json!({"success": false, "code": "bad_request", "message": message, "errors": list})),
    )
        .into_response())
}

/// The customer a call is keyed by: userId, else anonymousId.
fn identity(call: &Value) -> Option<String> {
    ["/userId", "/anonymousId"]
        .iter()
        .filter_map(|p| super::mapping::str_at(call, p))
        .find(|s| !s.is_empty())
}

/// Accepts a request whose Basic user name is one of `keys` (compared in
/// constant time); the password is ignored, as Segment does.
fn authenticate(headers: &HeaderMap, keys: &[Vec<u8>]) -> Result<(), Response> {
    let unauthorized = |m: &str| {
        let mut r = refuse(StatusCode::UNAUTHORIZED, "unauthorized", m);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"rapport\""),
        );
        r
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "no Authorization header; send the write key as the Basic user name",
        ));
    };
    let encoded = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.get(..6)
                .filter(|p| p.eq_ignore_ascii_case("basic "))
                .map(|_| &v[6..])
        })
        .ok_or_else(|| {
            unauthorized(
                "the Authorization header is not Basic; send the write key as the Basic user name",
            )
        })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| unauthorized("the Basic credentials are not base64"))?;
    let user = decoded.split(|&b| b == b':').next().unwrap_or_default();
    let mut ok = subtle::Choice::from(0);
    for k in keys {
        ok |= k.as_slice().ct_eq(user);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(unauthorized(
            "the write key is not one this collector accepts",
        ))
    }
}
