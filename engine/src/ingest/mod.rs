//! Decoding and validating touchpoint records: JSON, Avro in single-object
//! encoding, or (with a schema registry, see [`registry`]) Avro in the Confluent
//! wire format.
//!
//! Anything that cannot become a valid [`Touchpoint`] yields a [`Rejection`] with a
//! reason a person can act on; the runtime sends it to the dead-letter topic.
//! [`route`] holds the key rule: which partition a customer's records belong on.

pub mod registry;
pub mod route;

use std::sync::Arc;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use rapport_model::Touchpoint;

use self::registry::WriterSchemas;

/// The canonical touchpoint schema this build reads.
pub const TOUCHPOINT_AVSC: &str = include_str!("../../../schemas/v1/touchpoint.avsc");
/// The canonical action schema this build writes.
pub const ACTION_AVSC: &str = include_str!("../../../schemas/v1/action.avsc");
/// The delivery policy's decision schema, for decisions written as Avro.
pub const DECISION_AVSC: &str = include_str!("../../../schemas/v1/decision.avsc");

/// The two-byte marker of Avro single-object encoding.
const AVRO_SINGLE_OBJECT: [u8; 2] = [0xC3, 0x01];

/// Which step refused a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The bytes are not a touchpoint in a known encoding.
    Decode,
    /// The touchpoint breaks a rule of the model.
    Validate,
    /// The record's key or partition is not its customer's (see [`route`]).
    Route,
    /// An erasure command that cannot be read, or a touchpoint of an erased
    /// customer (see [`crate::privacy`]).
    Privacy,
}

impl Stage {
    /// Label for headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Validate => "validate",
            Stage::Route => "route",
            Stage::Privacy => "privacy",
        }
    }
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} failed: {reason}", stage.as_str())]
pub struct Rejection {
    /// Where it failed.
    pub stage: Stage,
    /// Short machine-friendly class, used as a metrics label.
    pub class: &'static str,
    /// What is wrong, for the person reading the dead-letter topic.
    pub reason: String,
}

impl Rejection {
    fn decode(class: &'static str, reason: impl Into<String>) -> Self {
        Rejection {
            stage: Stage::Decode,
            class,
            reason: reason.into(),
        }
    }
}

/// Turns record bytes into validated touchpoints.
pub struct Decoder {
    schema: Schema,
    /// Fingerprints accepted in the single-object header: the one the Avro
    /// specification defines (logical types stripped from the canonical form, as
    /// Java and Python write it) and the one the Rust `apache-avro` crate computes.
    fingerprints: [[u8; 8]; 2],
    max_bytes: usize,
    /// Writer schemas of Confluent-framed records; `None`: no registry configured.
    registry: Option<Arc<WriterSchemas>>,
}

/// The Avro schema could not be loaded (a build defect, not an input problem).
#[derive(Debug, thiserror::Error)]
#[error("touchpoint Avro schema: {0}")]
pub struct SchemaError(#[from] apache_avro::Error);

impl Decoder {
    /// A decoder that refuses records larger than `max_bytes`.
    pub fn new(max_bytes: usize) -> Result<Self, SchemaError> {
        let schema = Schema::parse_str(TOUCHPOINT_AVSC)?;
        let crate_fp = rabin(&schema);
        Ok(Decoder {
            fingerprints: [spec_fingerprint(TOUCHPOINT_AVSC)?, crate_fp],
            schema,
            max_bytes,
            registry: None,
        })
    }

    /// Also reads Avro in the Confluent wire format, with writer schemas from
    /// `schemas` resolved against the touchpoint schema.
    pub fn set_registry(&mut self, schemas: Arc<WriterSchemas>) {
        self.registry = Some(schemas);
    }

    /// Decodes and validates one record value.
    pub fn decode(&self, bytes: &[u8]) -> Result<Touchpoint, Rejection> {
        if bytes.len() > self.max_bytes {
            return Err(Rejection::decode(
                "oversized",
                format!(
                    "record of {} bytes exceeds engine.max_record_bytes = {}",
                    bytes.len(),
                    self.max_bytes
                ),
            ));
        }
        let tp = match bytes {
            [] => return Err(Rejection::decode("empty", "empty record value")),
            [a, b, ..] if [*a, *b] == AVRO_SINGLE_OBJECT => self.decode_avro(bytes)?,
            [registry::MAGIC, ..] if self.registry.is_some() => self.decode_confluent(bytes)?,
            [0, ..] => {
                return Err(Rejection::decode(
                    "unknown_encoding",
                    "starts with byte 0x00 (schema-registry framing?); send JSON or Avro single-object encoding (0xC3 0x01)",
                ))
            }
            _ => decode_json(bytes)?,
        };
        tp.validate().map_err(|e| Rejection {
            stage: Stage::Validate,
            class: "invalid",
            reason: e.to_string(),
        })?;
        Ok(tp)
    }

    fn decode_avro(&self, bytes: &[u8]) -> Result<Touchpoint, Rejection> {
        let Some((fp, mut body)) = bytes[2..].split_first_chunk::<8>() else {
            return Err(Rejection::decode(
                "avro",
                "Avro single-object header is shorter than 10 bytes",
            ));
        };
        if !self.fingerprints.contains(fp) {
            return Err(Rejection::decode(
                "avro_schema",
                format!(
                    "unknown writer schema fingerprint {}; this engine reads rapport.v1.Touchpoint ({})",
                    hex(fp),
                    hex(&self.fingerprints[0])
                ),
            ));
        }
        let value = apache_avro::from_avro_datum(&self.schema, &mut body, None)
            .map_err(|e| Rejection::decode("avro", format!("invalid Avro touchpoint body: {e}")))?;
        if !body.is_empty() {
            return Err(Rejection::decode(
                "avro",
                format!("{} trailing bytes after the Avro touchpoint", body.len()),
            ));
        }
        to_touchpoint(&value)
    }

    /// Reads a Confluent-framed record: the writer schema its id names, resolved
    /// against the touchpoint schema.
    fn decode_confluent(&self, bytes: &[u8]) -> Result<Touchpoint, Rejection> {
        let (id, mut body) = registry::split(bytes)?;
        let writer = match self.registry.as_ref().and_then(|r| r.lookup(id)) {
            Some(Ok(writer)) => writer,
            Some(Err((class, why))) => return Err(Rejection::decode(class, why)),
            None => {
                return Err(Rejection::decode(
                    "unknown_schema_id",
                    format!("writer schema id {id} was not fetched from the schema registry"),
                ))
            }
        };
        let value = apache_avro::from_avro_datum(&writer, &mut body, Some(&self.schema))
            .map_err(|e| {
                Rejection::decode(
                    "avro",
                    format!("Avro touchpoint with writer schema id {id} cannot be read as rapport.v1.Touchpoint: {e}"),
                )
            })?;
        if !body.is_empty() {
            return Err(Rejection::decode(
                "avro",
                format!(
                    "{} trailing bytes after the Avro touchpoint (writer schema id {id})",
                    body.len()
                ),
            ));
        }
        to_touchpoint(&value)
    }
}

/// Maps a decoded Avro value (of the touchpoint schema) to a touchpoint.
fn to_touchpoint(value: &apache_avro::types::Value) -> Result<Touchpoint, Rejection> {
    apache_avro::from_value::<Touchpoint>(value).map_err(|e| {
        Rejection::decode(
            "avro",
            format!("Avro record does not map to a touchpoint: {e}"),
        )
    })
}

/// Decodes a JSON touchpoint, which must be an object: serde would also accept a
/// struct written as an array of its fields, which the published schema does not.
/// A touchpoint from JSON bytes. The record's UTF-8 is checked once, in one
/// pass, and the JSON read as a `str`: a fifth fewer instructions than reading
/// bytes, which checks every string on its own. Bytes that are not UTF-8 are
/// read as bytes, so the error names the position as before.
fn touchpoint_json(bytes: &[u8]) -> Result<Touchpoint, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

fn decode_json(bytes: &[u8]) -> Result<Touchpoint, Rejection> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => touchpoint_json(bytes)
            .map_err(|e| Rejection::decode("json", format!("invalid touchpoint JSON: {e}"))),
        _ if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() => {
            Err(Rejection::decode(
                "json",
                format!(
                    "invalid touchpoint JSON: {}",
                    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                ),
            ))
        }
        first => {
            let got = match first {
                Some(b'[') => "an array",
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                Some(b'n') => "null",
                Some(b'-' | b'0'..=b'9') => "a number",
                _ => "not JSON",
            };
            Err(Rejection::decode(
                "not_object",
                format!("a touchpoint must be a JSON object (schemas/v1/touchpoint.schema.json); this value is {got}"),
            ))
        }
    }
}

/// Encodes a touchpoint in Avro single-object encoding, as Java and Python
/// producers write it (header with the specification's fingerprint), for
/// connectors that publish Avro and for tests.
pub fn encode_avro(t: &Touchpoint) -> Result<Vec<u8>, SchemaError> {
    let schema = Schema::parse_str(TOUCHPOINT_AVSC)?;
    let value = apache_avro::to_value(t)?.resolve(&schema)?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&AVRO_SINGLE_OBJECT);
    out.extend(spec_fingerprint(TOUCHPOINT_AVSC)?);
    out.extend(apache_avro::to_avro_datum(&schema, value)?);
    Ok(out)
}

/// The CRC-64-AVRO fingerprint of a schema's canonical form, in wire order.
fn rabin(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>().bytes;
    fp.try_into().unwrap_or_default()
}

/// The fingerprint the Avro specification defines: its parsing canonical form
/// drops logical types, so `{"type":"long","logicalType":"timestamp-millis"}`
/// becomes `"long"` before hashing.
pub fn spec_fingerprint(avsc: &str) -> Result<[u8; 8], SchemaError> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if m.remove("logicalType").is_some() && m.len() == 1 {
                    if let Some(t @ serde_json::Value::String(_)) = m.remove("type") {
                        *v = t;
                        return;
                    }
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json: serde_json::Value = serde_json::from_str(avsc).map_err(|e| {
        SchemaError(apache_avro::Error::new(
            apache_avro::error::Details::ParseSchemaJson(e),
        ))
    })?;
    strip(&mut json);
    Ok(rabin(&Schema::parse(&json)?))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value;
    use apache_avro::GenericSingleObjectWriter;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType, SurveyKind};

    const T0: i64 = 1_764_000_000_000;

    fn avro_bytes(t: &Touchpoint) -> Vec<u8> {
        encode_avro(t).unwrap()
    }

    #[test]
    fn json_is_read_as_text_and_bytes_that_are_not_utf8_as_bytes() {
        let good = br#"{"event_id":"e\u00e9","customer_id":"c1","channel":"web","event_type":"page_view","event_time":1764000000000}"#;
        assert_eq!(
            touchpoint_json(good).unwrap(),
            serde_json::from_slice::<Touchpoint>(good).unwrap()
        );
        let bad = b"{\"event_id\":\"e\xff\",\"customer_id\":\"c1\"}";
        let e = Decoder::new(1 << 20).unwrap().decode(bad).unwrap_err();
        assert_eq!(e.class, "json");
        assert_eq!(
            e.reason,
            format!(
                "invalid touchpoint JSON: {}",
                serde_json::from_slice::<Touchpoint>(bad).unwrap_err()
            )
        );
        assert!(e.reason.contains("column 15"), "{}", e.reason);
    }

    #[test]
    fn spec_fingerprint_matches_other_implementations() {
        // The value fastavro prints for schemas/v1/touchpoint.avsc (schemas/check_schemas.py).
        assert_eq!(
            hex(&spec_fingerprint(TOUCHPOINT_AVSC).unwrap()),
            "037ed16f13530c8e"
        );
    }

    #[test]
    fn the_rust_crates_own_single_object_writer_is_accepted_too() {
        let schema = Schema::parse_str(TOUCHPOINT_AVSC).unwrap();
        let t = tp("e1", "c1", Channel::Web, EventType::PageView, T0);
        let value: Value = apache_avro::to_value(&t).unwrap().resolve(&schema).unwrap();
        let mut w = GenericSingleObjectWriter::new_with_capacity(&schema, 512).unwrap();
        let mut out = Vec::new();
        w.write_value(value, &mut out).unwrap();
        assert_eq!(Decoder::new(1 << 20).unwrap().decode(&out).unwrap(), t);
    }

    #[test]
    fn json_and_avro_decode_to_the_same_touchpoint() {
        let d = Decoder::new(1 << 20).unwrap();
        let t = tp("e1", "c1", Channel::Store, EventType::SurveyResponse, T0)
            .with_survey(SurveyKind::Csat, 2)
            .with_amount(12.5)
            .with_sku("tv");
        let json = serde_json::to_vec(&t).unwrap();
        assert_eq!(d.decode(&json).unwrap(), t);
        let avro = avro_bytes(&t);
        assert_eq!(&avro[..2], &AVRO_SINGLE_OBJECT);
        assert_eq!(d.decode(&avro).unwrap(), t);
    }

    #[test]
    fn every_example_touchpoint_decodes() {
        let d = Decoder::new(1 << 20).unwrap();
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/v1/examples/touchpoint"
        );
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let t = d
                .decode(&bytes)
                .unwrap_or_else(|r| panic!("{}: {}", path.display(), r.reason));
            assert_eq!(d.decode(&avro_bytes(&t)).unwrap(), t, "{}", path.display());
            n += 1;
        }
        assert!(n >= 10, "only {n} examples");
    }

    #[test]
    fn bad_records_are_rejected_with_reasons() {
        let d = Decoder::new(300).unwrap();
        let r = d.decode(b"{not json").unwrap_err();
        assert_eq!((r.stage, r.class), (Stage::Decode, "json"));
        let r = d
            .decode(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0])
            .unwrap_err();
        assert_eq!(r.class, "avro_schema");
        assert!(r.reason.contains("0102030405060708"), "{}", r.reason);
        let mut truncated = avro_bytes(&tp("e1", "c1", Channel::Web, EventType::PageView, T0));
        truncated.truncate(14);
        assert_eq!(d.decode(&truncated).unwrap_err().class, "avro");
        let r = d.decode(&[0, 0, 0, 0, 1, 2]).unwrap_err();
        assert_eq!(r.class, "unknown_encoding");
        for (value, what) in [
            (
                &br#"["e","c",null,"web","page_view",1764000000000]"#[..],
                "an array",
            ),
            (b" 42", "a number"),
            (br#""text""#, "a string"),
            (b"null", "null"),
        ] {
            let r = d.decode(value).unwrap_err();
            assert_eq!((r.stage, r.class), (Stage::Decode, "not_object"));
            assert!(r.reason.contains(what), "{}", r.reason);
        }
        let r = d.decode(&[b' '; 301]).unwrap_err();
        assert_eq!(r.class, "oversized");
        let r = d.decode(br#"{"event_id":"e","customer_id":"c","channel":"web","event_type":"survey_response","event_time":1764000000000,"survey":{"kind":"nps","score":42}}"#).unwrap_err();
        assert_eq!(r.stage, Stage::Validate);
        assert!(r.reason.contains("42"), "{}", r.reason);
        let r = d.decode(br#"{"event_id":"e","channel":"web","event_type":"page_view","event_time":1764000000000}"#).unwrap_err();
        assert!(r.reason.contains("customer_id"), "{}", r.reason);
    }
}
