//! Erasure in the processor: a record of the privacy topic erases its customer
//! in the partition's task; every touchpoint is checked against the partition's
//! suppression list (see [`crate::privacy`]).

use rapport_model::{EventType, Touchpoint};

use crate::ingest::{Rejection, Stage};
use crate::privacy::erasure::{ChangelogWrite, Completed, TaskPrivacy};
use crate::privacy::suppression::hex;
use crate::privacy::{AfterErasure, ErasureCommand, IdHasher, Receipt};
use crate::state::{StateBatch, StateError};

use super::task::timer_times;
use super::{Lane, Outcome, Processor, Record};

/// How the processor treats erasure: the privacy topic, the hasher of the
/// suppression list, and what happens to an erased customer's touchpoints.
#[derive(Debug, Clone)]
pub struct PrivacyRules {
    /// Records of this topic are erasure commands.
    pub topic: String,
    /// Keyed hash of erased ids.
    pub hasher: IdHasher,
    /// Dead-letter, or start afresh after consent.
    pub after: AfterErasure,
}

impl Processor {
    /// Reads erasure commands from `rules.topic` and enforces the suppression list.
    pub fn with_privacy(mut self, rules: PrivacyRules) -> Self {
        self.shared.privacy = Some(rules);
        self
    }

    /// Hands every erasure's tombstones and suppression changes since the last
    /// call to `emit` and adds them to `batch` (call before [`Processor::changes`],
    /// so that a profile started afresh after the erasure is written after its
    /// tombstone); returns the erasures to finish once committed.
    pub fn erasures<E>(
        &mut self,
        batch: &mut StateBatch,
        mut emit: impl FnMut(ChangelogWrite<'_>) -> Result<(), E>,
    ) -> Result<Vec<Completed>, E> {
        let mut done = Vec::new();
        for task in self.tasks.values_mut() {
            done.extend(task.privacy.flush(task.partition, batch, &mut emit)?);
        }
        Ok(done)
    }
}

fn rejection(class: &'static str, reason: String) -> Rejection {
    Rejection {
        stage: Stage::Privacy,
        class,
        reason,
    }
}

impl Lane<'_> {
    /// When `r` is on the privacy topic: erases its customer (or refuses the record).
    pub(super) fn erasure_record(&mut self, r: &Record<'_>) -> Result<Option<Outcome>, StateError> {
        let Some(rules) = self.sh.privacy.as_ref().filter(|p| p.topic == r.topic) else {
            return Ok(None);
        };
        let cmd = match ErasureCommand::parse(r.value) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Some(Outcome::Rejected(rejection(
                    "bad_command",
                    e.to_string(),
                ))))
            }
        };
        if let Err(rej) = self.sh.rule.check(r.key, &cmd.customer_id, r.partition) {
            return Ok(Some(Outcome::Rejected(rej)));
        }
        let receipt = self.erase(rules, &cmd)?;
        tracing::info!(request_id = %cmd.request_id, partition = r.partition, ids = receipt.ids.len(), "erasure applied; committing");
        self.sh.metrics.erasures.inc();
        Ok(Some(Outcome::Applied))
    }

    /// Erases the customer of `cmd` and the anonymous ids linked to them that
    /// this partition holds; the receipt waits for the commit.
    fn erase(&mut self, rules: &PrivacyRules, cmd: &ErasureCommand) -> Result<Receipt, StateError> {
        let now = chrono::Utc::now().timestamp_millis();
        let p = self.task.partition;
        let mut ids = vec![cmd.customer_id.clone()];
        for a in cmd
            .anonymous_ids
            .iter()
            .chain(&self.linked(&cmd.customer_id)?)
        {
            if !ids.contains(a) {
                ids.push(a.clone());
            }
        }
        let (mut covered, mut elsewhere, mut erased) = (Vec::new(), Vec::new(), Vec::new());
        for id in &ids {
            let hash = rules.hasher.hash(id);
            if !self.sh.rule.owns(id.as_bytes(), p) {
                elsewhere.push(hex(&hash));
                continue;
            }
            if let Some(e) = self.drop_profile(id)? {
                erased.push(e);
            }
            self.task.privacy.suppress(hash, now);
            covered.push(hex(&hash));
        }
        let mut receipt = Receipt::pending(&cmd.request_id, now, covered);
        receipt.not_covered = elsewhere;
        let privacy = &mut self.task.privacy;
        privacy.tombstones.extend(erased.iter().cloned());
        privacy.done.push(Completed {
            partition: p,
            erased,
            receipt: receipt.clone(),
        });
        Ok(receipt)
    }

    /// The anonymous ids customer `id`'s profile links to it.
    fn linked(&self, id: &str) -> Result<Vec<String>, StateError> {
        if let Some(slot) = self.task.profiles.get(id) {
            return Ok(slot.stored.profile.anonymous_ids.clone());
        }
        let stored = self.sh.state.get(self.task.partition, id)?;
        Ok(stored.map(|s| s.profile.anonymous_ids).unwrap_or_default())
    }

    /// Removes profile `id` from the cache, the pending changes and the timers;
    /// returns its key and persisted timer times when it has one to tombstone.
    fn drop_profile(&mut self, id: &str) -> Result<Option<(String, Vec<i64>)>, StateError> {
        let task = &mut *self.task;
        task.dirty.retain(|d| d != id);
        task.timers.retain(|(_, owner)| owner != id);
        let cached = task.profiles.remove(id);
        let stored = self.sh.state.get(task.partition, id)?;
        let timers: Vec<i64> = match (&cached, &stored) {
            (Some(slot), _) => slot.persisted_timers.to_vec(),
            (None, Some(s)) => timer_times(&s.profile).to_vec(),
            (None, None) => Vec::new(),
        };
        Ok((cached.is_some() || stored.is_some()).then(|| (id.to_owned(), timers)))
    }

    /// A touchpoint of an erased customer: refused with reason `erased`, unless
    /// the configuration lets a consent grant start them afresh.
    pub(super) fn suppressed(&mut self, tp: &Touchpoint) -> Option<Rejection> {
        let rules = self.sh.privacy.as_ref()?;
        let privacy: &mut TaskPrivacy = &mut self.task.privacy;
        if privacy.suppressed.is_empty() {
            return None;
        }
        let ids = [tp.customer_id.as_deref(), tp.anonymous_id.as_deref()];
        let hit = ids
            .into_iter()
            .flatten()
            .filter(|id| !id.is_empty())
            .map(|id| rules.hasher.hash(id))
            .find(|h| privacy.suppressed.contains(h))?;
        if rules.after == AfterErasure::FreshAfterConsent && grants_consent(tp) {
            privacy.lift(&hit);
            if let Some(id) = tp.identity() {
                privacy.lift(&rules.hasher.hash(id));
            }
            return None;
        }
        self.sh.metrics.erased_touchpoints.inc();
        Some(rejection("erased", "erased".into()))
    }
}

/// A `consent_changed` touchpoint that grants consent.
fn grants_consent(tp: &Touchpoint) -> bool {
    tp.event_type == EventType::ConsentChanged
        && rapport_model::policy::consent_change(tp).is_ok_and(|c| c.is_some_and(|c| c.granted))
}
