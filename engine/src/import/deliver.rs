//! Producing imported touchpoints: keyed by customer and placed on the partition
//! the engine's key rule gives that key ([`crate::ingest::route::KeyRule`]),
//! through the engine's producer settings ([`crate::kafka::producer_config`]:
//! idempotent, `acks=all`), with every delivery report counted, so the importer
//! reports success only once the broker has every record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use rapport_model::Touchpoint;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::Message;

use crate::config::KafkaConfig;
use crate::ingest::route::KeyRule;
use crate::kafka::producer_config;

/// Counts delivery reports; remembers the failures by input line.
#[derive(Default)]
pub struct Deliveries {
    /// Records the broker acknowledged.
    pub delivered: AtomicU64,
    /// Records that could not be delivered: input line, error and the record's value.
    pub failed: Mutex<Vec<(u64, String, Vec<u8>)>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, line: Box<u64>) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => self.failed.lock().unwrap_or_else(|p| p.into_inner()).push((
                *line,
                e.to_string(),
                m.payload().unwrap_or_default().to_vec(),
            )),
        }
    }
}

/// The producer of one import.
pub struct Sender {
    producer: BaseProducer<Deliveries>,
    topic: String,
    rule: KeyRule,
    /// Records handed to the producer.
    pub sent: u64,
}

impl Sender {
    /// A producer for `topic` on the cluster of `kafka`, which must exist.
    pub fn new(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        let producer: BaseProducer<Deliveries> = producer_config(kafka)
            .create_with_context(Deliveries::default())
            .context("creating the Kafka producer")?;
        let partitions = crate::kafka::topic_partitions(producer.client(), topic)
            .with_context(|| format!("reading the metadata of topic {topic}"))?;
        if partitions == 0 {
            anyhow::bail!("touchpoint topic {topic:?} does not exist on {}; create it (or start the engine once) before importing", kafka.bootstrap_servers);
        }
        Ok(Sender {
            producer,
            topic: topic.to_owned(),
            rule: KeyRule::new(kafka.partitioner, partitions),
            sent: 0,
        })
    }

    /// Sends `tp` (from input line `line`) as JSON, keyed by its identity.
    pub fn send(&mut self, tp: &Touchpoint, line: u64) -> anyhow::Result<()> {
        let key = tp.identity().unwrap_or_default();
        let value = serde_json::to_vec(tp)?;
        let partition = self.rule.partition_of(key.as_bytes());
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(line))
            .key(key)
            .payload(&value)
            .partition(partition);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: let deliveries drain it, then retry.
                    record = r;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(e).context("producing a touchpoint"),
            }
        }
        self.sent += 1;
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Delivery reports so far.
    pub fn deliveries(&self) -> &Deliveries {
        self.producer.context()
    }

    /// Waits until every record sent has been acknowledged or has failed
    /// (librdkafka's `message.timeout.ms` bounds each one).
    pub fn finish(&mut self) -> anyhow::Result<()> {
        loop {
            self.producer.poll(Duration::from_millis(100));
            let ctx = self.producer.context();
            let done = ctx.delivered.load(Ordering::Relaxed)
                + ctx.failed.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
            if done >= self.sent && self.producer.in_flight_count() == 0 {
                return Ok(());
            }
            if let Err(e) = self.producer.flush(Duration::from_secs(1)) {
                if !matches!(e, KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) {
                    return Err(e).context("flushing the producer");
                }
            }
        }
    }
}
