//! Writing simulated (or imported) touchpoints to a Kafka topic at a steady rate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::simulator::Simulator;

/// Sends `record`, waiting (and serving delivery reports) while the producer's
/// local queue is full; any other error is returned with the record's topic.
pub fn send_when_room<C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C: rdkafka::producer::ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// The producer simulated touchpoints are sent with: idempotent, lz4, and
/// Kafka's Java default partitioner (murmur2), which the engine expects by
/// default.
pub fn producer(bootstrap: &str) -> rdkafka::error::KafkaResult<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "10")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
}

/// Publishes `sim`'s records to `topic` at about `rate` records/s (0 = as fast as
/// possible) until `stop` is set or `limit` records are written. Event times are
/// wall-clock. Returns the number of records acknowledged.
pub fn publish(
    bootstrap: &str,
    topic: &str,
    sim: &mut Simulator,
    rate: u64,
    limit: Option<u64>,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> anyhow::Result<u64> {
    let producer = producer(bootstrap)?;
    let started = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && limit.is_none_or(|l| n < l) {
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                producer.poll(wait.min(Duration::from_millis(50)));
                continue;
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let r = sim.next_record(now_ms);
        send_when_room(
            &producer,
            BaseRecord::to(topic).key(&r.key).payload(&r.value),
        )?;
        n += 1;
        sent.store(n, Ordering::Relaxed);
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(n)
}
