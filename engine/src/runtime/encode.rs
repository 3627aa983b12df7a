//! The Schema Registry at the engine's edges: the writer-schema cache that lets
//! the decoder read Confluent-framed Avro touchpoints, and the action topic's
//! format (JSON, or Avro in the Confluent wire format under the action schema
//! registered at start-up).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apache_avro::Schema;
use rapport_model::Action;

use crate::config::{Config, OutputFormat};
use crate::ingest::registry::{self, RegistryClient, WriterSchemas};
use crate::ingest::ACTION_AVSC;

/// How actions are written to the action topic.
#[derive(Debug, Clone)]
pub enum ActionFormat {
    /// JSON, schemas/v1/action.schema.json.
    Json,
    /// Avro binary of schemas/v1/action.avsc, framed with its registry id.
    Avro {
        /// The id the registry gave the action schema.
        id: u32,
        /// The action schema, parsed.
        schema: Box<Schema>,
    },
}

/// An action that does not fit the action schema (a build defect).
#[derive(Debug, thiserror::Error)]
#[error("action {action_id} cannot be written as Avro: {source}")]
pub struct EncodeError {
    /// The action.
    pub action_id: String,
    /// What apache-avro said.
    #[source]
    pub source: apache_avro::Error,
}

impl ActionFormat {
    /// Avro under registry id `id`.
    pub fn avro(id: u32) -> Result<Self, apache_avro::Error> {
        Ok(ActionFormat::Avro {
            id,
            schema: Box::new(Schema::parse_str(ACTION_AVSC)?),
        })
    }

    /// The record value of `a`.
    pub fn encode(&self, a: &Action) -> Result<Vec<u8>, EncodeError> {
        let err = |source| EncodeError {
            action_id: a.action_id.clone(),
            source,
        };
        match self {
            ActionFormat::Json => serde_json::to_vec(a).map_err(|e| {
                err(apache_avro::Error::new(
                    apache_avro::error::Details::SerializeValue(e.to_string()),
                ))
            }),
            ActionFormat::Avro { id, schema } => {
                let value = apache_avro::to_value(a)
                    .and_then(|v| v.resolve(schema))
                    .map_err(err)?;
                let body = apache_avro::to_avro_datum(schema, value).map_err(err)?;
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
    pub actions: ActionFormat,
}

impl RegistryIo {
    /// Connects to the configured registry, if any, and for Avro output
    /// registers the action schema under `<action_topic>-value`
    /// (TopicNameStrategy), waiting out an outage up to the configured patience.
    pub fn connect(cfg: &Config) -> anyhow::Result<Self> {
        let sr = &cfg.schema_registry;
        if !sr.enabled() {
            return Ok(RegistryIo {
                writer_schemas: None,
                actions: ActionFormat::Json,
            });
        }
        let client = RegistryClient::new(sr);
        let patience = Duration::from_millis(sr.unavailable_timeout_ms);
        let actions = match sr.output_format {
            OutputFormat::Json => ActionFormat::Json,
            OutputFormat::Avro => {
                let subject = format!("{}-value", cfg.kafka.action_topic);
                let id =
                    registry::with_patience(patience, || client.register(&subject, ACTION_AVSC))
                        .with_context(|| {
                            format!("registering schemas/v1/action.avsc under subject {subject:?}")
                        })?;
                tracing::info!(
                    subject,
                    schema_id = id,
                    "actions are written as Avro (Confluent wire format)"
                );
                ActionFormat::avro(id).context("schemas/v1/action.avsc")?
            }
        };
        Ok(RegistryIo {
            writer_schemas: Some(Arc::new(WriterSchemas::new(client, patience))),
            actions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::{ActionKind, DeliveryChannel, EmotionalState, Reason};

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

    #[test]
    fn avro_actions_are_framed_and_read_back_with_the_action_schema() {
        let format = ActionFormat::avro(42).unwrap();
        let bytes = format.encode(&action()).unwrap();
        let (id, mut body) = registry::split(&bytes).unwrap();
        assert_eq!(id, 42);
        let schema = Schema::parse_str(ACTION_AVSC).unwrap();
        let value = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
        assert!(body.is_empty());
        let back: Action = apache_avro::from_value(&value).unwrap();
        assert_eq!(back, action());
    }

    #[test]
    fn json_stays_the_default_encoding() {
        let bytes = ActionFormat::Json.encode(&action()).unwrap();
        let back: Action = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, action());
    }
}
