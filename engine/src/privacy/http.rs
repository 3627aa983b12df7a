//! `POST /privacy/erasure`: an authenticated request that writes an erasure
//! command to the privacy topic, keyed by the customer and on the customer's
//! partition, and answers `202 Accepted` with the request id. The erasure itself
//! happens in the engine, in order with the customer's touchpoints; its receipt
//! arrives on the results topic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::ingest::route::KeyRule;

use super::ErasureCommand;

/// What the endpoint needs: the producer, the topic, the token, the key rule.
pub struct ErasureEndpoint {
    producer: FutureProducer,
    topic: String,
    token: String,
    rule: KeyRule,
}

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    customer_id: String,
    #[serde(default)]
    anonymous_ids: Vec<String>,
    #[serde(default)]
    request_id: Option<String>,
}

impl ErasureEndpoint {
    /// The endpoint of `cfg`, when erasure is on and `privacy.token_env` names a
    /// token; `None` when either is unset. A token variable that is named but
    /// empty or missing is an error: the endpoint is never open without one.
    pub fn from_config(cfg: &Config, rule: KeyRule) -> anyhow::Result<Option<Arc<Self>>> {
        let p = &cfg.privacy;
        if !p.enabled() {
            return Ok(None);
        }
        if p.token_env.is_empty() {
            tracing::info!("POST /privacy/erasure is off: set privacy.token_env to enable it");
            return Ok(None);
        }
        let token = std::env::var(&p.token_env)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .with_context(|| {
                format!("privacy.token_env names {:?}, which is not set; set it to the bearer token of POST /privacy/erasure", p.token_env)
            })?;
        let producer = crate::kafka::producer_config(&cfg.kafka)
            .create()
            .context("creating the erasure request producer")?;
        Ok(Some(Arc::new(ErasureEndpoint {
            producer,
            topic: p.topic.clone(),
            token,
            rule,
        })))
    }

    /// The route, to merge into the engine's router.
    pub fn routes(self: Arc<Self>) -> Router {
        Router::new()
            .route("/privacy/erasure", post(erase))
            .with_state(self)
    }
}

/// True when `headers` carry `Authorization: Bearer <token>` (compared in constant time).
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| bool::from(given.trim().as_bytes().ct_eq(token.as_bytes())))
}

/// The command a request body asks for; a request id is made up when absent.
pub fn command(body: &[u8], now_ms: i64) -> Result<ErasureCommand, String> {
    let b: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let request_id = b.request_id.unwrap_or_else(|| {
        let name = format!("{}:{now_ms}:{}", b.customer_id, std::process::id());
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
    });
    let cmd = ErasureCommand {
        request_id,
        customer_id: b.customer_id,
        anonymous_ids: b.anonymous_ids,
        requested_at: Some(now_ms),
    };
    let bytes = serde_json::to_vec(&cmd).map_err(|e| e.to_string())?;
    ErasureCommand::parse(&bytes).map_err(|e| e.to_string())
}

async fn erase(
    State(ep): State<Arc<ErasureEndpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&headers, &ep.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response();
    }
    let cmd = match command(&body, chrono::Utc::now().timestamp_millis()) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let payload = serde_json::to_vec(&cmd).unwrap_or_default();
    let record = FutureRecord::to(&ep.topic)
        .key(cmd.customer_id.as_bytes())
        .partition(ep.rule.partition_of(cmd.customer_id.as_bytes()))
        .payload(&payload);
    match ep.producer.send(record, Duration::from_secs(10)).await {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "request_id": cmd.request_id })),
        )
            .into_response(),
        Err((e, _)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("the erasure request could not be written to Kafka: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_is_accepted() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorized(&h, "s3cret"));
    }

    #[test]
    fn a_body_becomes_a_command_with_a_request_id() {
        let c = command(br#"{"customer_id":"c1","anonymous_ids":["a1"]}"#, 7).unwrap();
        assert_eq!((c.customer_id.as_str(), c.requested_at), ("c1", Some(7)));
        assert!(!c.request_id.is_empty());
        let given = command(br#"{"customer_id":"c1","request_id":"r9"}"#, 7).unwrap();
        assert_eq!(given.request_id, "r9");
        assert!(command(br#"{"customer_id":""}"#, 7).is_err());
        assert!(command(b"nope", 7).is_err());
    }
}
