//! The Schema Registry at the engine's edges: the writer-schema cache that lets
//! the decoder read Confluent-framed Avro touchpoints, and the format of the
//! action and decision topics (JSON, or Avro in the Confluent wire format under
//! the schema registered for the topic at start-up).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apache_avro::Schema;
use serde::Serialize;

use crate::config::{Config, OutputFormat};
use crate::ingest::registry::{self, RegistryClient, WriterSchemas};
use crate::ingest::{ACTION_AVSC, DECISION_AVSC};

/// How records of one output topic are written.
#[derive(Debug, Clone)]
pub enum Encoding {
    /// JSON (the default).
    Json,
    /// Avro binary, framed with the schema's registry id.
    Avro {
        /// The id the registry gave the schema.
        id: u32,
        /// The schema, parsed.
        schema: Box<Schema>,
    },
}

/// A value that does not fit its output schema (a build defect, not input).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON serialisation failed.
    #[error("cannot be written as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The value does not match the Avro schema.
    #[error("cannot be written as Avro: {0}")]
    Avro(#[from] apache_avro::Error),
}

impl Encoding {
    /// Avro with schema text `avsc` under registry id `id`.
    pub fn avro(id: u32, avsc: &str) -> Result<Self, apache_avro::Error> {
        Ok(Encoding::Avro {
            id,
            schema: Box::new(Schema::parse_str(avsc)?),
        })
    }

    /// The record value of `value`.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        match self {
            Encoding::Json => Ok(serde_json::to_vec(value)?),
            Encoding::Avro { id, schema } => {
                let value = apache_avro::to_value(value)?.resolve(schema)?;
                let body = apache_avro::to_avro_datum(schema, value)?;
                Ok(registry::frame(*id, &body))
            }
        }
    }
}

/// What the engine uses of the Schema Registry.
#[derive(Debug)]
pub struct RegistryIo {
    /// Writer schemas for the decoder; `None` without a registry.
    pub writer_schemas: Option<Arc<WriterSchemas>>,
    /// The action topic's format.
    pub actions: Encoding,
    /// The decisions topic's format.
    pub decisions: Encoding,
}

impl RegistryIo {
    /// Connects to the configured registry, if any, and for Avro output
    /// registers the action and decision schemas under `<topic>-value`
    /// (TopicNameStrategy), waiting out an outage up to the configured patience.
    pub fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let sr = &cfg.schema_registry;
        if !sr.enabled() {
            return Ok(RegistryIo {
                writer_schemas: None,
                actions: Encoding::Json,
                decisions: Encoding::Json,
            });
        }
        let client = RegistryClient::new(sr);
        let patience = Duration::from_millis(sr.unavailable_timeout_ms);
        let avro = sr.output_format == OutputFormat::Avro;
        let register = |topic: &str, avsc: &str, file: &str| -> anyhow::Result<Encoding> {
            if !avro || topic.is_empty() {
                return Ok(Encoding::Json);
            }
            let subject = format!("{topic}-value");
            let id = registry::with_patience(patience, || client.register(&subject, avsc))
                .with_context(|| format!("registering {file} under subject {subject:?}"))?;
            tracing::info!(
                subject,
                schema_id = id,
                "written as Avro (Confluent wire format)"
            );
            Encoding::avro(id, avsc).with_context(|| file.to_owned())
        };
        let actions = register(
            &cfg.kafka.action_topic,
            ACTION_AVSC,
            "schemas/v1/action.avsc",
        )?;
        let decisions = register(
            &cfg.kafka.decisions_topic,
            DECISION_AVSC,
            "schemas/v1/decision.avsc",
        )?;
        Ok(RegistryIo {
            writer_schemas: Some(Arc::new(WriterSchemas::new(client, patience))),
            actions,
            decisions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_journeys::policy::{Decision, Outcome};
    use rapport_model::{Action, ActionKind, DeliveryChannel, EmotionalState, Purpose, Reason};

    fn action() -> Action {
        Action {
            action_id: "a-1".into(),
            customer_id: "c-1".into(),
            kind: ActionKind::GuideLink,
            journey: "hesitation_guide".into(),
            trigger_event_id: "e-9".into(),
            trigger_event_time: 1_764_000_000_000,
            channel: DeliveryChannel::Web,
            payload: [("sku".to_owned(), "tv-55".to_owned())].into(),
            reasons: vec![Reason {
                condition: "views of sku within 72h >= 3".into(),
                value: "3".into(),
            }],
            emotional_state: Some(EmotionalState::Uncertain),
        }
    }

    fn decision(outcome: Outcome) -> Decision {
        Decision {
            decision_id: "d-1".into(),
            customer_id: "c-1".into(),
            journey: "exclusive_treatment".into(),
            action_id: "a-1".into(),
            kind: ActionKind::ExclusiveOffer,
            channel: DeliveryChannel::Email,
            purpose: Purpose::Marketing,
            outcome,
            reason: "marketing cap 3 per 7d reached".into(),
            event_id: "e-9".into(),
            event_time: 1_764_000_000_000,
            decided_at: 1_764_000_000_500,
            deferred_until: (outcome == Outcome::DeferredQuietHours).then_some(1_764_030_000_000),
            fallback_action_id: (outcome == Outcome::Fallback).then(|| "a-2".to_owned()),
        }
    }

    /// Decodes a framed value with `avsc`, checking the frame's id.
    fn read_back<T: serde::de::DeserializeOwned>(bytes: &[u8], id: u32, avsc: &str) -> T {
        let (got, mut body) = registry::split(bytes).unwrap();
        assert_eq!(got, id);
        let schema = Schema::parse_str(avsc).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
        assert!(body.is_empty());
        apache_avro::from_value(&value).unwrap()
    }

    #[test]
    fn avro_actions_are_framed_and_read_back_with_the_action_schema() {
        let bytes = Encoding::avro(42, ACTION_AVSC)
            .unwrap()
            .encode(&action())
            .unwrap();
        assert_eq!(read_back::<Action>(&bytes, 42, ACTION_AVSC), action());
    }

    #[test]
    fn every_decision_outcome_fits_the_decision_schema() {
        let encoding = Encoding::avro(7, DECISION_AVSC).unwrap();
        for outcome in Outcome::ALL {
            let bytes = encoding.encode(&decision(outcome)).unwrap();
            assert_eq!(
                read_back::<Decision>(&bytes, 7, DECISION_AVSC),
                decision(outcome),
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn json_stays_the_default_encoding() {
        let bytes = Encoding::Json.encode(&action()).unwrap();
        let back: Action = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, action());
    }
}
