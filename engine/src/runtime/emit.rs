//! Carrying the processor's work to Kafka: each consumed record goes through the
//! [`Processor`](crate::processor::Processor); its actions go to the action topic
//! and a refused record to the dead-letter topic, in the current interval.

use std::sync::atomic::Ordering;

use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::BaseRecord;
use rdkafka::Message;
use sha2::{Digest, Sha256};

use crate::ingest::Rejection;
use crate::kafka;
use crate::processor::{Outcome, Record};

use super::core::Core;
use super::LoopError;

impl Core {
    /// Handles a batch of consumed records: the processor applies them (each
    /// partition's in order, the partitions in parallel); then, in the batch's
    /// order, each record's actions are sent, a refused record is
    /// dead-lettered, and its offset joins the interval.
    pub(super) fn handle_batch(&mut self, batch: &[BorrowedMessage<'_>]) -> Result<(), LoopError> {
        let started = std::time::Instant::now();
        let mut latency = self.metrics.batch_latency();
        let records: Vec<Record<'_>> = batch
            .iter()
            .map(|m| Record {
                topic: m.topic(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key(),
                value: m.payload().unwrap_or_default(),
            })
            .collect();
        if let Some(schemas) = &self.writer_schemas {
            // An outage that outlasts schema_registry.unavailable_timeout_ms stops
            // the engine before this batch is applied: nothing of it is committed.
            schemas
                .prefetch(records.iter().map(|r| r.value))
                .map_err(|e| LoopError::Fatal(e.into()))?;
        }
        let processed = self
            .processor
            .process_batch(&records)
            .map_err(|e| LoopError::Fatal(e.into()))?;
        self.progress
            .handled
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.metrics
            .changed_profile_bytes
            .set(self.processor.changed_bytes() as i64);
        for ((m, record), p) in batch.iter().zip(&records).zip(processed) {
            let ts = m.timestamp().to_millis();
            latency.received(ts);
            match p.outcome {
                Outcome::NotOwned => {
                    // Fetched before a revocation took effect; its new owner handles it.
                    tracing::debug!(
                        topic = record.topic,
                        partition = record.partition,
                        offset = record.offset,
                        "record of a partition no longer owned"
                    );
                    continue;
                }
                Outcome::Rejected(r) => self.dead_letter(m, &r)?,
                Outcome::Applied | Outcome::AlreadyApplied | Outcome::Duplicate => {}
            }
            let acts = !p.actions.is_empty();
            self.actions.extend(p.actions);
            self.emit_actions()?;
            if acts {
                latency.decided(ts);
            }
            if let Some(ts) = ts {
                self.oldest_ms = Some(self.oldest_ms.map_or(ts, |o| o.min(ts)));
            }
            self.pending
                .record(record.partition, record.topic, record.offset + 1);
            self.pending_records += 1;
        }
        latency.flush();
        self.emit_identity()?;
        self.metrics.phase_done("process", started);
        Ok(())
    }

    /// Sends the actions decided so far to the action topic, holding back those
    /// of customers whose earlier actions are still committing (see `order`).
    pub(super) fn emit_actions(&mut self) -> Result<(), LoopError> {
        for a in std::mem::take(&mut self.actions) {
            match self.order.admit(a) {
                Some(a) => self.send_action(&a)?,
                None => self.metrics.actions_held.inc(),
            }
        }
        self.emit_decisions()
    }

    /// Sends the delivery policy's decisions not to act to the decisions topic,
    /// keyed by customer, in the interval that holds their profile's change.
    fn emit_decisions(&mut self) -> Result<(), LoopError> {
        let topic = &self.cfg.kafka.decisions_topic;
        for d in self.processor.take_decisions() {
            if topic.is_empty() {
                continue;
            }
            let body = self
                .decision_format
                .encode(&d)
                .map_err(|e| LoopError::Fatal(e.into()))?;
            self.committer.send(
                BaseRecord::to(topic)
                    .key(d.customer_id.as_bytes())
                    .payload(body.as_slice()),
            )?;
        }
        Ok(())
    }

    /// Produces one action in the current interval.
    pub(super) fn send_action(&mut self, a: &rapport_model::Action) -> Result<(), LoopError> {
        let body = self
            .action_format
            .encode(a)
            .map_err(|e| LoopError::Fatal(e.into()))?;
        let headers = OwnedHeaders::new().insert(Header {
            key: kafka::ACTION_ID,
            value: Some(a.action_id.as_bytes()),
        });
        self.committer.send(
            BaseRecord::to(&self.cfg.kafka.action_topic)
                .key(a.customer_id.as_bytes())
                .payload(body.as_slice())
                .headers(headers),
        )?;
        self.metrics
            .actions
            .with_label_values(&[&a.journey, a.kind.as_str()])
            .inc();
        Ok(())
    }

    /// Sends a record the engine could not process to the dead-letter topic: the
    /// original key, bytes and headers, plus headers naming where it came from, why,
    /// its size and hash. A value over the dead-letter topic's limit is cut to fit
    /// (the whole record stays in its source topic at the offset the headers name).
    fn dead_letter(&mut self, m: &BorrowedMessage<'_>, r: &Rejection) -> Result<(), LoopError> {
        tracing::debug!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = %r.reason, "dead-lettered");
        let payload = m.payload().unwrap_or_default();
        let mut headers = OwnedHeaders::new();
        let mut used = m.key().map_or(0, <[u8]>::len) + r.reason.len();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                used += h.key.len() + h.value.map_or(0, <[u8]>::len);
                headers = headers.insert(h);
            }
        }
        let room = self.dead_letter_room.saturating_sub(used);
        let truncated = payload.len() > room;
        let value = &payload[..payload.len().min(room)];
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let size = payload.len().to_string();
        let sha: String = Sha256::digest(payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut extra = vec![
            (kafka::DLQ_TOPIC, m.topic()),
            (kafka::DLQ_PARTITION, &partition),
            (kafka::DLQ_OFFSET, &offset),
            (kafka::DLQ_STAGE, r.stage.as_str()),
            (kafka::DLQ_REASON, &r.reason),
            (kafka::DLQ_ORIGINAL_SIZE, &size),
            (kafka::DLQ_SHA256, &sha),
        ];
        if truncated {
            extra.push((kafka::DLQ_TRUNCATED, "true"));
        }
        for (key, value) in extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.cfg.kafka.dead_letter_topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        self.committer.send(record)?;
        self.metrics
            .dead_letters
            .with_label_values(&[r.stage.as_str(), r.class])
            .inc();
        Ok(())
    }
}
