//! Avro through a Confluent-compatible Schema Registry.
//!
//! The Confluent wire format frames an Avro binary body with a magic byte `0`
//! and the writer schema's 4-byte big-endian registry id. The engine reads such
//! touchpoints by fetching the writer schema by id (once, then cached for the
//! life of the process) and resolving it against its reader schema,
//! `schemas/v1/touchpoint.avsc`, so producers may evolve their schema
//! compatibly (add a field with a default, drop an optional one).
//!
//! What happens to a record when its schema cannot be had:
//! - the registry cannot be reached (connection refused, timeout, 5xx, 429):
//!   an outage, not bad input. The engine thread waits, retrying with backoff,
//!   up to `schema_registry.unavailable_timeout_ms`, and then stops with
//!   [`RegistryError::Unreachable`] without committing the records it holds;
//!   the next start reads them again. Nothing is dead-lettered for an outage.
//!   A registry that refuses our credentials (401, 403) is treated the same way:
//!   the fault is the engine's configuration, not the record.
//! - the registry answers that the id does not exist (404): the record is bad
//!   input and is dead-lettered (`unknown_schema_id`) with its bytes, like any
//!   record that cannot be decoded. Such an answer is believed for a minute,
//!   then asked again.
//! - the schema is not Avro or does not parse: dead-lettered (`avro_schema`);
//!   one that cannot be resolved to the touchpoint: dead-lettered (`avro`).
//!
//! Fetching happens on the engine thread before a batch is processed
//! ([`WriterSchemas::prefetch`]), never in the per-record path, which only
//! reads the cache. The engine thread is a plain thread, not a tokio worker,
//! so the blocking HTTP client (`ureq`) blocks no async runtime.
//!
//! The client is our own two calls rather than the `schema_registry_converter`
//! crate: its current release (6.0) is built on apache-avro 0.22 and reqwest,
//! and its `Schema` values would not be ours (apache-avro 0.21).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use base64::Engine as _;

use crate::config::SchemaRegistryConfig;

use super::Rejection;

/// The first byte of a Confluent-framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;
/// The content type the Confluent API speaks.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
/// How long a "no such id" answer is believed before the registry is asked again.
const UNKNOWN_ID_TTL: Duration = Duration::from_secs(60);

/// Splits a Confluent-framed value into its schema id and Avro body.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), Rejection> {
    match bytes {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [MAGIC, ..] => Err(Rejection::decode(
            "confluent_header",
            format!(
                "Confluent wire-format value of {} bytes is shorter than its 5-byte header (magic byte 0, 4-byte schema id)",
                bytes.len()
            ),
        )),
        _ => Err(Rejection::decode(
            "confluent_header",
            "not a Confluent wire-format value: the first byte is not 0",
        )),
    }
}

/// Frames an Avro binary body with the Confluent header for schema `id`.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Why the registry could not give a schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No answer, or an answer that says "try later" (5xx, 429): an outage.
    #[error("schema registry {url} is unreachable: {reason}")]
    Unreachable {
        /// The request's URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The registry says it has no schema with this id.
    #[error("schema id {id} is not known to the schema registry at {url}")]
    UnknownId {
        /// The id the record carries.
        id: u32,
        /// The registry asked.
        url: String,
    },
    /// The registry refuses our credentials (401, 403): a configuration
    /// problem on our side, waited out and then stopped on like an outage, so
    /// that no record is dead-lettered for it.
    #[error("schema registry {url} refused the engine's credentials ({status}); check schema_registry.username and password: {body}")]
    Unauthorized {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's explanation.
        body: String,
    },
    /// Any other refusal (409 incompatible, 422 invalid schema, ...).
    #[error("schema registry {url} answered {status}: {body}")]
    Refused {
        /// The request's URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The registry's explanation.
        body: String,
    },
    /// The answer is not what the Confluent API promises, or not Avro.
    #[error("schema registry {url}: {reason}")]
    Unusable {
        /// The request's URL.
        url: String,
        /// What is wrong with the answer.
        reason: String,
    },
}

impl RegistryError {
    /// True for an outage (or our own misconfiguration) worth waiting out,
    /// false for a definite answer about the schema.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            RegistryError::Unreachable { .. } | RegistryError::Unauthorized { .. }
        )
    }

    /// The dead-letter class of a record whose schema got this answer.
    fn class(&self) -> &'static str {
        match self {
            RegistryError::UnknownId { .. } => "unknown_schema_id",
            _ => "avro_schema",
        }
    }
}

/// A small blocking client of the Confluent Schema Registry API: what the engine
/// needs is two calls, get a schema by id and register one under a subject.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client of the registry `cfg` names.
    pub fn new(cfg: &SchemaRegistryConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.request_timeout_ms)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let authorization = (!cfg.username.is_empty()).then(|| {
            let pair = format!("{}:{}", cfg.username, cfg.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        RegistryClient {
            agent,
            base: cfg.url.trim().trim_end_matches('/').to_owned(),
            authorization,
        }
    }

    /// The schema text registered with `id` (`GET /schemas/ids/{id}`).
    pub fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let mut req = self.agent.get(&url).header("Accept", CONTENT_TYPE);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let (status, body) = answer(&url, req.call())?;
        if status == 404 {
            return Err(RegistryError::UnknownId { id, url });
        }
        let json = ok_json(&url, status, &body)?;
        match json.get("schemaType").and_then(|t| t.as_str()) {
            None | Some("AVRO") => {}
            Some(other) => {
                return Err(RegistryError::Unusable {
                    url,
                    reason: format!("schema id {id} is a {other} schema, not Avro"),
                })
            }
        }
        match json.get("schema").and_then(|s| s.as_str()) {
            Some(s) => Ok(s.to_owned()),
            None => Err(RegistryError::Unusable {
                url,
                reason: format!("the answer for schema id {id} has no \"schema\" string"),
            }),
        }
    }

    /// Registers Avro schema `avsc` under `subject` (or finds it registered
    /// already) and returns its id (`POST /subjects/{subject}/versions`).
    pub fn register(&self, subject: &str, avsc: &str) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = serde_json::json!({ "schema": avsc, "schemaType": "AVRO" }).to_string();
        let mut req = self
            .agent
            .post(&url)
            .header("Content-Type", CONTENT_TYPE)
            .header("Accept", CONTENT_TYPE);
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let (status, text) = answer(&url, req.send(body.as_bytes()))?;
        let json = ok_json(&url, status, &text)?;
        json.get("id")
            .and_then(serde_json::Value::as_u64)
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| RegistryError::Unusable {
                url,
                reason: format!("registering under {subject:?} answered no id: {text}"),
            })
    }
}

/// The status and body of an HTTP exchange; transport failures are outages.
fn answer(
    url: &str,
    res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), RegistryError> {
    let unreachable = |reason: String| RegistryError::Unreachable {
        url: url.to_owned(),
        reason,
    };
    let mut res = res.map_err(|e| unreachable(e.to_string()))?;
    let status = res.status().as_u16();
    let body = res
        .body_mut()
        .read_to_string()
        .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
    if status >= 500 || status == 429 {
        return Err(unreachable(format!("HTTP {status}: {}", clip(&body))));
    }
    if status == 401 || status == 403 {
        return Err(RegistryError::Unauthorized {
            url: url.to_owned(),
            status,
            body: clip(&body).to_owned(),
        });
    }
    Ok((status, body))
}

/// The JSON body of a 2xx answer; anything else is a refusal.
fn ok_json(url: &str, status: u16, body: &str) -> Result<serde_json::Value, RegistryError> {
    if !(200..300).contains(&status) {
        return Err(RegistryError::Refused {
            url: url.to_owned(),
            status,
            body: clip(body).to_owned(),
        });
    }
    serde_json::from_str(body).map_err(|e| RegistryError::Unusable {
        url: url.to_owned(),
        reason: format!("the answer is not JSON ({e}): {}", clip(body)),
    })
}

/// At most 500 bytes of a body, for error messages.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(500);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the cache knows of an id.
#[derive(Debug, Clone)]
enum Known {
    /// The writer schema, parsed.
    Schema(Arc<Schema>),
    /// A definite "no" (unknown id, not Avro, unparsable): the dead-letter
    /// class, the reason, and when it was heard.
    Refused(&'static str, String, Instant),
}

/// Writer schemas by registry id: filled on the engine thread by
/// [`WriterSchemas::prefetch`], read by the decoder on any worker thread.
#[derive(Debug)]
pub struct WriterSchemas {
    client: RegistryClient,
    known: RwLock<HashMap<u32, Known>>,
    patience: Duration,
}

impl WriterSchemas {
    /// An empty cache over `client`, waiting out outages up to `patience`.
    pub fn new(client: RegistryClient, patience: Duration) -> Self {
        WriterSchemas {
            client,
            known: RwLock::new(HashMap::new()),
            patience,
        }
    }

    /// The writer schema of `id`: `None` if never fetched, `Some(Err(_))` with
    /// the dead-letter class and reason when the registry refused it.
    pub fn lookup(&self, id: u32) -> Option<Result<Arc<Schema>, (&'static str, String)>> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        match known.get(&id)? {
            Known::Schema(s) => Some(Ok(s.clone())),
            Known::Refused(class, why, _) => Some(Err((class, why.clone()))),
        }
    }

    /// Puts a writer schema in the cache (for tests and local schemas).
    pub fn insert(&self, id: u32, schema: Schema) {
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Known::Schema(Arc::new(schema)));
    }

    /// Fetches the writer schemas of the Confluent-framed values among `values`
    /// that the cache does not hold yet. Returns an error only for an outage
    /// that lasted longer than the patience; a definite "no" is cached, and the
    /// decoder dead-letters the records that carry that id.
    pub fn prefetch<'a>(
        &self,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), RegistryError> {
        let mut missing: Vec<u32> = values
            .into_iter()
            .filter_map(|v| split(v).ok().map(|(id, _)| id))
            .filter(|id| self.needs_fetch(*id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for id in missing {
            let known = self.fetch_patiently(id)?;
            if let Known::Refused(_, why, _) = &known {
                tracing::warn!(schema_id = id, reason = %why, "writer schema refused; its records are dead-lettered");
            }
            self.known
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, known);
        }
        Ok(())
    }

    fn needs_fetch(&self, id: u32) -> bool {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        match known.get(&id) {
            None => true,
            Some(Known::Schema(_)) => false,
            Some(Known::Refused(_, _, at)) => at.elapsed() >= UNKNOWN_ID_TTL,
        }
    }

    /// Asks for `id` until the registry answers, for at most the patience.
    fn fetch_patiently(&self, id: u32) -> Result<Known, RegistryError> {
        match with_patience(self.patience, || self.fetch(id)) {
            Ok(s) => Ok(Known::Schema(Arc::new(s))),
            Err(e) if e.is_outage() => Err(e),
            Err(e) => Ok(Known::Refused(e.class(), e.to_string(), Instant::now())),
        }
    }

    fn fetch(&self, id: u32) -> Result<Schema, RegistryError> {
        let text = self.client.schema_by_id(id)?;
        Schema::parse_str(&text).map_err(|e| RegistryError::Unusable {
            url: self.client.base.clone(),
            reason: format!("schema id {id} is not a valid Avro schema: {e}"),
        })
    }
}

/// Retries `f` while it reports an outage, backing off from 100 ms to 5 s, for
/// at most `patience`.
pub fn with_patience<T>(
    patience: Duration,
    mut f: impl FnMut() -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match f() {
            Err(e) if e.is_outage() && started.elapsed() + backoff <= patience => {
                tracing::warn!(error = %e, "schema registry unreachable; waiting");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Decoder, Stage, TOUCHPOINT_AVSC};
    use apache_avro::types::Value;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType, Touchpoint};

    const T0: i64 = 1_764_000_000_000;

    /// touchpoint.avsc as a producer evolved it: one more field, with a default.
    fn evolved_writer() -> Schema {
        let mut json: serde_json::Value = serde_json::from_str(TOUCHPOINT_AVSC).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!(
                {"name": "loyalty_tier", "type": "string", "default": "none"}
            ));
        Schema::parse(&json).unwrap()
    }

    /// `t` written under the evolved schema, Confluent-framed with `id`.
    fn framed(id: u32, t: &Touchpoint) -> Vec<u8> {
        let reader = Schema::parse_str(TOUCHPOINT_AVSC).unwrap();
        let Value::Record(mut fields) = apache_avro::to_value(t).unwrap().resolve(&reader).unwrap()
        else {
            panic!("a touchpoint is a record")
        };
        fields.push(("loyalty_tier".into(), Value::String("gold".into())));
        let body = apache_avro::to_avro_datum(&evolved_writer(), Value::Record(fields)).unwrap();
        frame(id, &body)
    }

    /// A decoder whose cache holds the evolved writer schema as id 7, over a
    /// registry that is not running (nothing is fetched in these tests).
    fn decoder() -> (Decoder, Arc<WriterSchemas>) {
        let schemas = Arc::new(WriterSchemas::new(
            closed_registry(),
            Duration::from_millis(200),
        ));
        schemas.insert(7, evolved_writer());
        let mut d = Decoder::new(1 << 20).unwrap();
        d.set_registry(schemas.clone());
        (d, schemas)
    }

    fn closed_registry() -> RegistryClient {
        // Port 9 (discard) on loopback: nothing listens there on these machines.
        RegistryClient::new(&SchemaRegistryConfig {
            url: "http://127.0.0.1:9/apis/ccompat/v7".into(),
            request_timeout_ms: 500,
            ..SchemaRegistryConfig::default()
        })
    }

    #[test]
    fn the_header_is_magic_byte_and_big_endian_id() {
        let bytes = frame(0x0102_0304, b"body");
        assert_eq!(&bytes[..5], &[0, 1, 2, 3, 4]);
        assert_eq!(split(&bytes).unwrap(), (0x0102_0304, &b"body"[..]));
        assert_eq!(split(&[0, 0, 0, 0, 9]).unwrap(), (9, &[][..]));
        let r = split(&[0, 0, 1]).unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Decode, "confluent_header"));
        assert!(r.reason.contains("3 bytes"), "{}", r.reason);
        assert_eq!(split(b"{}").unwrap_err().class, "confluent_header");
    }

    #[test]
    fn an_evolved_writer_schema_resolves_to_the_touchpoint() {
        let (d, _) = decoder();
        let t = tp("e1", "c1", Channel::Web, EventType::ProductView, T0).with_sku("tv-55");
        assert_eq!(d.decode(&framed(7, &t)).unwrap(), t);
    }

    #[test]
    fn short_truncated_and_unknown_records_are_refused_with_reasons() {
        let (d, _) = decoder();
        let t = tp("e1", "c1", Channel::Web, EventType::PageView, T0);
        let r = d.decode(&[0, 0, 0]).unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Decode, "confluent_header"));
        let mut cut = framed(7, &t);
        cut.truncate(9);
        let r = d.decode(&cut).unwrap_err();
        assert_eq!(r.class, "avro");
        assert!(r.reason.contains("id 7"), "{}", r.reason);
        let r = d.decode(&framed(8, &t)).unwrap_err();
        assert_eq!(r.class, "unknown_schema_id");
        assert!(r.reason.contains('8'), "{}", r.reason);
        let mut long = framed(7, &t);
        long.push(0);
        assert_eq!(d.decode(&long).unwrap_err().class, "avro");
    }

    #[test]
    fn an_incompatible_writer_schema_is_refused() {
        let (d, schemas) = decoder();
        // A writer whose customer_id is an int cannot be read as the touchpoint.
        let writer = Schema::parse_str(
            r#"{"type":"record","name":"Touchpoint","namespace":"rapport.v1","fields":[{"name":"customer_id","type":"int"}]}"#,
        )
        .unwrap();
        schemas.insert(9, writer);
        let r = d.decode(&frame(9, &[4])).unwrap_err();
        assert_eq!(r.class, "avro");
        assert!(r.reason.contains("rapport.v1.Touchpoint"), "{}", r.reason);
    }

    #[test]
    fn without_a_registry_framed_records_are_refused_as_before() {
        let d = Decoder::new(1 << 20).unwrap();
        let t = tp("e1", "c1", Channel::Web, EventType::PageView, T0);
        assert_eq!(
            d.decode(&framed(7, &t)).unwrap_err().class,
            "unknown_encoding"
        );
    }

    #[test]
    fn an_unreachable_registry_is_an_outage_not_a_refusal() {
        let e = closed_registry().schema_by_id(1).unwrap_err();
        assert!(e.is_outage(), "{e}");
        let schemas = WriterSchemas::new(closed_registry(), Duration::from_millis(300));
        let t = tp("e1", "c1", Channel::Web, EventType::PageView, T0);
        let record = framed(5, &t);
        let e = schemas.prefetch([record.as_slice()]).unwrap_err();
        assert!(matches!(e, RegistryError::Unreachable { .. }), "{e}");
        // Nothing was cached: the record is read again once the registry is back.
        assert!(schemas.lookup(5).is_none());
        // Values that are not Confluent-framed ask nothing of the registry.
        schemas.prefetch([&b"{}"[..], &[0xC3, 1][..]]).unwrap();
    }

    #[test]
    fn only_answers_about_the_schema_dead_letter_records() {
        let url = String::from("http://registry");
        let unauthorized = RegistryError::Unauthorized {
            url: url.clone(),
            status: 401,
            body: String::new(),
        };
        assert!(
            unauthorized.is_outage(),
            "our credentials are not the record's fault"
        );
        let unknown = RegistryError::UnknownId {
            id: 3,
            url: url.clone(),
        };
        assert!(!unknown.is_outage());
        assert_eq!(unknown.class(), "unknown_schema_id");
        let not_avro = RegistryError::Unusable {
            url,
            reason: "schema id 3 is a PROTOBUF schema, not Avro".into(),
        };
        assert!(!not_avro.is_outage());
        assert_eq!(not_avro.class(), "avro_schema");
    }
}
