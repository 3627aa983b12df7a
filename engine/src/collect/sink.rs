//! Where the collector's records go: touchpoints to the touchpoint topic on their
//! customer's partition, unmappable calls to the dead-letter topic. A request is
//! answered only once Kafka acknowledged every record it produced.

use std::time::{Duration, Instant};

use rapport_model::Touchpoint;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use sha2::{Digest, Sha256};

use crate::config::KafkaConfig;
use crate::ingest::route::KeyRule;
use crate::kafka;

/// One record a request produces.
#[derive(Debug)]
pub enum Outgoing {
    /// A touchpoint, keyed by its identity.
    Touchpoint(Box<Touchpoint>),
    /// A call that could not be mapped, to the dead-letter topic.
    DeadLetter(DeadLetter),
}

/// A call the collector could not turn into a touchpoint.
#[derive(Debug)]
pub struct DeadLetter {
    /// Where it came from (`/v1/batch`, `/v1/webhooks/chat/support`); goes in
    /// the `rapport.dlq.topic` header, where the engine names the source topic.
    pub source: String,
    /// Its customer, when known: the record key.
    pub key: Option<String>,
    /// The call as received (one call of a batch).
    pub value: Vec<u8>,
    /// Short class for metrics, e.g. `unmapped`.
    pub class: &'static str,
    /// What is wrong, for a person.
    pub reason: String,
}

/// Why records were not acknowledged; the request is answered 503.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The producer refused or Kafka did not acknowledge a record.
    #[error("Kafka did not acknowledge the records: {0}")]
    Kafka(#[from] KafkaError),
    /// A record could not be encoded (a defect, not an input problem).
    #[error("encoding a touchpoint: {0}")]
    Encode(#[from] serde_json::Error),
    /// No acknowledgement within `produce_timeout_ms`.
    #[error("Kafka did not acknowledge the records within {0:?}")]
    Timeout(Duration),
    /// The producer dropped a record before delivery (it is shutting down).
    #[error("the producer dropped a record before it was acknowledged")]
    Canceled,
}

/// Why the collector cannot reach its topics at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Creating the producer or reading metadata failed.
    #[error("Kafka at {bootstrap}: {source}")]
    Kafka {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// What went wrong.
        source: KafkaError,
    },
    /// The touchpoint topic does not exist.
    #[error("touchpoint topic {0:?} does not exist; create it (keyed by customer id), or start the engine once, before the collector")]
    NoTopic(String),
}

/// The collector's producer and where its records go.
pub struct Sink {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    rule: KeyRule,
    partitions: i32,
    timeout: Duration,
}

impl Sink {
    /// A producer built from `[kafka]` (idempotent, `acks=all`, `[kafka.client]`
    /// and `[kafka.producer]` applied) that fails a record not acknowledged
    /// within `timeout`; reads the partition count of `topic` for the key rule.
    pub fn connect(k: &KafkaConfig, topic: &str, timeout: Duration) -> Result<Sink, ConnectError> {
        let kafka_err = |source| ConnectError::Kafka {
            bootstrap: k.bootstrap_servers.clone(),
            source,
        };
        let mut c = kafka::producer_config(k);
        c.set("message.timeout.ms", timeout.as_millis().to_string())
            .set("linger.ms", "2");
        let producer: FutureProducer = c.create().map_err(kafka_err)?;
        let partitions = kafka::topic_partitions(producer.client(), topic).map_err(kafka_err)?;
        if partitions == 0 {
            return Err(ConnectError::NoTopic(topic.to_owned()));
        }
        Ok(Sink {
            producer,
            topic: topic.to_owned(),
            dead_letter_topic: k.dead_letter_topic.clone(),
            rule: KeyRule::new(k.partitioner, partitions),
            partitions,
            timeout,
        })
    }

    /// Partitions of the touchpoint topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// Produces `records` and waits until Kafka acknowledged every one of them.
    pub async fn send(&self, records: &[Outgoing]) -> Result<(), SendError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in records {
            pending.push(self.enqueue(r)?);
        }
        let deadline = Instant::now() + self.timeout + Duration::from_secs(1);
        for delivery in pending {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, delivery).await {
                Err(_) => return Err(SendError::Timeout(self.timeout)),
                Ok(Err(_canceled)) => return Err(SendError::Canceled),
                Ok(Ok(Err((e, _)))) => return Err(e.into()),
                Ok(Ok(Ok(_))) => {}
            }
        }
        Ok(())
    }

    /// Hands one record to the producer; its future resolves on acknowledgement.
    fn enqueue(&self, r: &Outgoing) -> Result<DeliveryFuture, SendError> {
        match r {
            Outgoing::Touchpoint(tp) => {
                let key = tp.identity().unwrap_or_default();
                let value = serde_json::to_vec(tp)?;
                let record = FutureRecord::to(&self.topic)
                    .key(key)
                    .payload(&value)
                    .partition(self.rule.partition_of(key.as_bytes()));
                self.producer.send_result(record).map_err(|(e, _)| e.into())
            }
            Outgoing::DeadLetter(d) => {
                let headers = dead_letter_headers(d);
                let mut record = FutureRecord::<str, [u8]>::to(&self.dead_letter_topic)
                    .payload(&d.value)
                    .headers(headers);
                if let Some(k) = &d.key {
                    record = record.key(k.as_str());
                }
                self.producer.send_result(record).map_err(|(e, _)| e.into())
            }
        }
    }

    /// The producer's fatal error, if it has one: it can produce nothing more,
    /// and the collector needs a restart (its `/healthz` says so).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, m)| format!("{code:?}: {m}"))
    }

    /// Waits up to `timeout` for records still in flight (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "collector producer flush at shutdown");
        }
    }
}

/// The engine's dead-letter headers (see `runtime::emit`), for a call that came
/// over HTTP rather than from a topic: the source names the endpoint, and there
/// is no partition or offset.
fn dead_letter_headers(d: &DeadLetter) -> OwnedHeaders {
    let size = d.value.len().to_string();
    let sha: String = Sha256::digest(&d.value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        (kafka::DLQ_TOPIC, d.source.as_str()),
        (kafka::DLQ_STAGE, "collect"),
        (kafka::DLQ_REASON, d.reason.as_str()),
        (kafka::DLQ_ORIGINAL_SIZE, size.as_str()),
        (kafka::DLQ_SHA256, sha.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    headers
}
