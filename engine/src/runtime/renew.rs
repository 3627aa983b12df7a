//! Replacing a group consumer that no longer finds its way into its group.
//!
//! After a broker restart, a consumer has been seen to stay in librdkafka's
//! coordinator query for minutes while the same broker answered every other
//! client (the group's committed offsets, the producers' transactions), and
//! another to stay out of its group for good while the coordinator listed the
//! group with no member at all (its handle then never finished closing):
//! out of its group, it processes nothing, and nothing fails. When the
//! consumer's statistics have shown it out of a settled membership (no
//! coordinator, or a join that does not settle) for [`RENEW_AFTER`] and a
//! fresh client gets answers from the cluster, the main loop replaces it with
//! a new consumer: the uncommitted work is dropped (as after any failure), and
//! the new consumer joins the group under the same static member id and takes
//! the partitions back. A rebalance settles within seconds; a member that
//! died leaves the others settled until its session ends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::Config;
use crate::kafka::client_config;

use super::rebalance::lock;
use super::{close_aside, subscribe, LoopError, Worker};

/// How long the consumer may be out of a settled group membership before the
/// engine looks into replacing it.
const RENEW_AFTER: Duration = Duration::from_secs(45);

/// How long the cluster must have been answering, with the consumer still
/// out of its group, before it is replaced: a consumer whose broker has just
/// come back finds its group by itself within seconds.
const ANSWERING_FOR: Duration = Duration::from_secs(15);

/// How often the cluster is asked meanwhile.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How long the cluster has to answer one check.
const CLUSTER_CHECK: Duration = Duration::from_secs(2);

/// Whether to replace a consumer out of its group: it has been out for
/// [`RENEW_AFTER`], and meanwhile a client of its own has had answers from
/// the cluster for [`ANSWERING_FOR`], asking every [`CHECK_EVERY`].
#[derive(Debug, Default)]
pub(super) struct Renewal {
    checked_ms: Option<i64>,
    answering_since_ms: Option<i64>,
    /// When the consumer was last replaced: the next replacement is counted
    /// from here, while the time out of the group (for `/healthz`) still
    /// runs from when the first consumer left it.
    renewed_ms: Option<i64>,
}

impl Renewal {
    /// At `now_ms`, with the consumer out of its group since
    /// `missing_since_ms` (0: it is a settled member), asks `cluster_answers`
    /// when a check is due; true when the consumer is to be replaced.
    pub(super) fn due(
        &mut self,
        missing_since_ms: i64,
        now_ms: i64,
        cluster_answers: impl FnOnce() -> bool,
    ) -> bool {
        let ms = |d: Duration| d.as_millis() as i64;
        if missing_since_ms == 0 {
            *self = Renewal::default();
            return false;
        }
        let since = missing_since_ms.max(self.renewed_ms.unwrap_or(0));
        if now_ms - since < ms(RENEW_AFTER) {
            self.checked_ms = None;
            self.answering_since_ms = None;
            return false;
        }
        if self
            .checked_ms
            .is_some_and(|at| now_ms - at < ms(CHECK_EVERY))
        {
            return false;
        }
        self.checked_ms = Some(now_ms);
        if !cluster_answers() {
            self.answering_since_ms = None;
            return false;
        }
        let since = *self.answering_since_ms.get_or_insert(now_ms);
        if now_ms - since < ms(ANSWERING_FOR) {
            return false;
        }
        *self = Renewal {
            renewed_ms: Some(now_ms),
            ..Renewal::default()
        };
        true
    }
}

impl Worker {
    /// Replaces the consumer when it has been out of its group for
    /// [`RENEW_AFTER`] while the cluster answers (see the module's doc).
    pub(super) fn renew_stuck_consumer(&mut self) -> anyhow::Result<()> {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let since = self.progress.out_of_group_since_ms.load(Ordering::SeqCst);
        let core = &self.core;
        let answers = || {
            // Not under the core's lock: the check may wait for seconds.
            let cfg = lock(core).cfg.clone();
            match cluster_answers(&cfg) {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "the cluster does not answer either");
                    false
                }
            }
        };
        if !self.renewal.due(since, now_ms, answers) {
            return Ok(());
        }
        let cfg = lock(&self.core).cfg.clone();
        tracing::warn!(
            seconds = (now_ms - since) / 1000,
            "the consumer has been out of its group for a while, though the cluster answers: replacing it (the uncommitted work is redone)"
        );
        // The work in hand was consumed under the old consumer's assignment:
        // the loop drops it and goes back to the last commit before it takes
        // the new consumer's assignment.
        lock(&self.core)
            .failure
            .get_or_insert_with(|| LoopError::Rewind("the consumer was replaced".into()));
        let fresh = subscribe(&cfg, self.core.clone())?;
        let old = std::mem::replace(&mut self.consumer, fresh);
        old.context().retire();
        // Closing serves the old consumer's queue until its group handle has
        // terminated, which a stuck handle may never do: aside, so the main
        // loop goes on.
        let _ = close_aside(old);
        Ok(())
    }
}

/// Asks the cluster for the metadata of the first touchpoint topic with a
/// client of its own (not the consumer's connections).
fn cluster_answers(cfg: &Config) -> anyhow::Result<()> {
    let client: BaseConsumer = client_config(&cfg.kafka).create()?;
    let topic = cfg.kafka.touchpoint_topics.first().map(String::as_str);
    client.fetch_metadata(topic, CLUSTER_CHECK)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000;
    const S: i64 = 1_000;

    /// Nothing is asked of a settled member, or within 45 s of leaving.
    #[test]
    fn a_consumer_in_its_group_or_out_of_it_briefly_is_kept() {
        let mut r = Renewal::default();
        let never = || -> bool { panic!("the cluster is not asked") };
        assert!(!r.due(0, T0 + 3_600 * S, never));
        assert!(!r.due(T0, T0 + 44 * S, never));
    }

    /// Replaced once the cluster has answered for 15 s with the consumer
    /// still out of its group, asked every 5 s; an unanswered check starts
    /// the 15 s over; after a replacement, the next one is counted from it.
    #[test]
    fn a_consumer_is_replaced_after_the_cluster_answers_for_a_while_with_it_out_of_its_group() {
        let mut r = Renewal::default();
        let mut asked = 0;
        let mut at = |t: i64, answers: bool, r: &mut Renewal| {
            r.due(T0, T0 + t * S, || {
                asked += 1;
                answers
            })
        };
        assert!(!at(45, true, &mut r), "answering since 45 s");
        assert!(!at(47, true, &mut r), "not asked again within 5 s");
        assert!(!at(50, false, &mut r), "no answer: starts over");
        assert!(!at(55, true, &mut r), "answering since 55 s");
        assert!(!at(65, true, &mut r));
        assert!(at(70, true, &mut r), "15 s of answers");
        assert!(!at(114, true, &mut r), "44 s after the replacement");
        assert!(!at(115, true, &mut r), "answering since 115 s");
        assert!(at(130, true, &mut r), "15 s of answers again");
        assert_eq!(asked, 7);
        // Back in its group meanwhile: nothing pending.
        assert!(!r.due(0, T0 + 75 * S, || true));
        assert!(!r.due(T0, T0 + 85 * S, || true), "answering since 85 s");
    }
}
