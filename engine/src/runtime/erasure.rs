//! Erasure in the commit cycle: an interval's tombstones and suppression entries
//! go to the changelog in its transaction; once committed, RocksDB is compacted
//! over the erased keys and each receipt goes to the results topic in the next
//! transaction (see [`crate::privacy`]).

use rdkafka::producer::BaseRecord;

use crate::config::Config;
use crate::privacy::erasure::Completed;
use crate::privacy::receipt::Retention;
use crate::privacy::Receipt;
use crate::state::StateBatch;

use super::core::Core;
use super::LoopError;

/// Where receipts go, what they report as residual copies, and the receipts
/// of committed erasures not sent yet.
pub(crate) struct Receipts {
    topic: String,
    retention: Retention,
    ready: Vec<Receipt>,
}

impl Receipts {
    /// Receipts to `topic`, reporting `retention`.
    pub fn new(topic: String, retention: Retention) -> Receipts {
        Receipts {
            topic,
            retention,
            ready: Vec::new(),
        }
    }
}

/// The topics the engine consumes: the touchpoint topics and, with erasure on,
/// the privacy topic (co-partitioned with them).
pub(super) fn input_topics(cfg: &Config) -> Vec<String> {
    let mut topics = cfg.kafka.touchpoint_topics.clone();
    if cfg.privacy.enabled() {
        topics.push(cfg.privacy.topic.clone());
    }
    if cfg.identity.stitching {
        topics.push(cfg.identity.repartition(&cfg.kafka.group_id));
    }
    topics
}

impl Core {
    /// Sends the interval's erasure tombstones and suppression entries to the
    /// changelog and adds them to `batch`; returns the erasures to finish.
    pub(super) fn write_erasures(
        &mut self,
        batch: &mut StateBatch,
    ) -> Result<Vec<Completed>, LoopError> {
        let (committer, changelog) = (&mut self.committer, &self.changelog);
        self.processor.erasures(batch, |(p, key, value)| {
            let record = BaseRecord::to(changelog).partition(p).key(key);
            committer.send(match value {
                Some(v) => record.payload(v),
                None => record,
            })
        })
    }

    /// After the commit of `erasures`: compacts their keys out of RocksDB and
    /// readies their receipts.
    pub(super) fn finish_erasures(&mut self, erasures: Vec<Completed>) {
        let Some(receipts) = self.receipts.as_mut() else {
            return;
        };
        for mut c in erasures {
            self.state.compact_erased(c.partition, &c.erased);
            let now = chrono::Utc::now().timestamp_millis();
            c.receipt.complete(now, &receipts.retention);
            receipts.ready.push(c.receipt);
        }
    }

    /// Sends the ready receipts in the current interval, keyed by request id.
    pub(super) fn send_receipts(&mut self) -> Result<(), LoopError> {
        let Some(receipts) = self.receipts.as_mut() else {
            return Ok(());
        };
        // A receipt leaves the list once sent: a failed send keeps the rest.
        while let Some(r) = receipts.ready.first() {
            let body = serde_json::to_vec(r).map_err(|e| LoopError::Fatal(e.into()))?;
            self.committer.send(
                BaseRecord::to(&receipts.topic)
                    .key(r.request_id.as_bytes())
                    .payload(body.as_slice()),
            )?;
            tracing::info!(request_id = %r.request_id, "erasure receipt sent");
            receipts.ready.remove(0);
        }
        Ok(())
    }
}
