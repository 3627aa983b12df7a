//! Erasure in the processor: a record of the privacy topic erases its customer
//! in the partition's task; every touchpoint is checked against the partition's
//! suppression list (see [`crate::privacy`]).

use compact_str::CompactString;
use rapport_model::{EventType, Touchpoint};

use crate::ingest::{Rejection, Stage};
use crate::privacy::erasure::{ChangelogWrite, Completed, TaskPrivacy};
use crate::privacy::suppression::hex;
use crate::privacy::{AfterErasure, ErasureCommand, IdHasher, Receipt};
use crate::state::{StateBatch, StateError, Stored};

use super::task::{timer_times, Slot};
use super::{Lane, Outcome, Processor, Record};

/// Linked anonymous ids and the partitions that own them.
type Homes = Vec<(String, i32)>;

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
        // The command names customers as producers do (clear ids); with
        // pseudonymization on, their profiles and suppression entries are
        // under the pseudonyms, and the ids a profile links to are pseudonyms
        // already, whose partition cannot be told: those are erased if held here.
        let pseudonymizer = self.sh.pseudonymizer.clone();
        let stored = |id: &str| match &pseudonymizer {
            Some(ps) => ps.profile_id(id),
            None => id.to_owned(),
        };
        let mut ids: Vec<(Option<String>, String)> =
            vec![(Some(cmd.customer_id.clone()), stored(&cmd.customer_id))];
        for a in &cmd.anonymous_ids {
            ids.push((Some(a.clone()), stored(a)));
        }
        let (linked, homes) = self.linked(&ids[0].1)?;
        for linked in linked {
            let clear = (pseudonymizer.is_none()).then(|| linked.clone());
            ids.push((clear, linked));
        }
        let mut unique = std::collections::HashSet::new();
        ids.retain(|(_, id)| unique.insert(id.clone()));
        let (mut covered, mut elsewhere, mut erased) = (Vec::new(), Vec::new(), Vec::new());
        for (clear, id) in &ids {
            let hash = rules.hasher.hash(id);
            let home = homes.iter().find(|(a, _)| a == id).map(|(_, h)| *h);
            if let Some(home) = home.filter(|h| *h != p && self.sh.stitch.is_some()) {
                // A linked anonymous id on another partition: its removal goes
                // there in this transaction (identity stitching).
                self.task.scratch.outbox.push(crate::identity::Outgoing {
                    partition: home,
                    key: id.clone(),
                    message: crate::identity::Message::Erase {
                        request_id: cmd.request_id.clone(),
                        anonymous_id: id.clone(),
                    },
                });
                covered.push(hex(&hash));
                continue;
            }
            let dropped = match clear {
                Some(c) if !self.sh.rule.owns(c.as_bytes(), p) => None,
                Some(_) => Some(self.drop_profile(id)?),
                None => self.drop_profile(id)?.map(Some),
            };
            let Some(dropped) = dropped else {
                elsewhere.push(hex(&hash));
                continue;
            };
            erased.extend(dropped);
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

    /// The anonymous ids customer `id`'s profile links to it (merged, or named
    /// by a touchpoint and awaited), and the partitions identity stitching
    /// recorded for them.
    fn linked(&self, id: &str) -> Result<(Vec<String>, Homes), StateError> {
        let stored = match self.task.profiles.get(id) {
            Some(slot) => Some(Stored::clone(&slot.stored)),
            None => self.sh.state.get(self.task.partition, id)?,
        };
        let Some(s) = stored else {
            return Ok(Default::default());
        };
        let mut ids = s.profile.anonymous_ids;
        let mut homes = Vec::new();
        for l in s.identity.iter().flat_map(|i| &i.links) {
            if l.state.linked() {
                if !ids.contains(&l.anonymous_id) {
                    ids.push(l.anonymous_id.clone());
                }
                homes.push((l.anonymous_id.clone(), l.home));
            }
        }
        Ok((ids, homes))
    }

    /// On an anonymous id's partition: removes what is kept under an id whose
    /// customer was erased (its profile or link), and suppresses it.
    pub(super) fn erase_link(&mut self, request_id: &str, id: &str) -> Result<Outcome, StateError> {
        let Some(rules) = self.sh.privacy.as_ref() else {
            tracing::warn!(
                request_id,
                "an erasure of a linked anonymous id arrived with erasure off; ignored"
            );
            return Ok(Outcome::Applied);
        };
        let hash = rules.hasher.hash(id);
        let now = chrono::Utc::now().timestamp_millis();
        if let Some(dropped) = self.drop_profile(id)? {
            self.task.privacy.tombstones.push(dropped);
        }
        self.task.privacy.suppress(hash, now);
        tracing::info!(
            request_id,
            partition = self.task.partition,
            "linked anonymous id erased"
        );
        Ok(Outcome::Applied)
    }

    /// Removes profile `id` from the cache, the pending changes and the timers;
    /// returns its key and persisted timer times when it has one to tombstone.
    fn drop_profile(&mut self, id: &str) -> Result<Option<(String, Vec<i64>)>, StateError> {
        let task = &mut *self.task;
        task.dirty.retain(|d| d != id);
        task.timers.retain(|(_, owner)| owner != id);
        task.encoded.remove(id);
        let cached = task.profiles.remove(id);
        if let Some(slot) = &cached {
            task.cached_bytes -= (slot.bytes as usize).min(task.cached_bytes);
            if slot.dirty {
                task.dirty_bytes -= (slot.bytes as usize).min(task.dirty_bytes);
            }
        }
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
                self.start_fresh(id);
            }
            return None;
        }
        self.sh.metrics.erased_touchpoints.inc();
        Some(rejection("erased", "erased".into()))
    }
}

impl Lane<'_> {
    /// Caches an empty profile for `id`, so that a re-consent in the interval of
    /// the erasure (not yet committed to RocksDB) does not read the old profile back.
    fn start_fresh(&mut self, id: &str) {
        let stored = Stored::fresh(id);
        let slot = Slot {
            bytes: super::task::slot_bytes(&stored.profile, 0),
            stored: std::sync::Arc::new(stored),
            dirty: false,
            cut: 0,
            persisted_timers: Default::default(),
        };
        let task = &mut *self.task;
        task.encoded.remove(id);
        task.cached_bytes += slot.bytes as usize;
        if let Some(old) = task.profiles.insert(CompactString::from(id), slot) {
            task.cached_bytes -= (old.bytes as usize).min(task.cached_bytes);
        }
    }
}

/// A `consent_changed` touchpoint that grants consent.
fn grants_consent(tp: &Touchpoint) -> bool {
    tp.event_type == EventType::ConsentChanged
        && rapport_model::policy::consent_change(tp).is_ok_and(|c| c.is_some_and(|c| c.granted))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rapport_model::testing::tp;
    use rapport_model::Channel;

    use super::*;
    use crate::config::{Partitioner, StateConfig};
    use crate::ingest::route::KeyRule;
    use crate::metrics::Metrics;
    use crate::state::StateStore;

    const PRIVACY: &str = "privacy";

    fn processor(dir: &std::path::Path, after: AfterErasure) -> Processor {
        let cfg = StateConfig {
            path: dir.to_owned(),
            block_cache_mb: 8,
            write_buffer_mb: 8,
            ..Default::default()
        };
        let journeys = Arc::new(rapport_journeys::CompiledJourneys::shipped().unwrap());
        let state = Arc::new(StateStore::open(&cfg).unwrap());
        let rule = KeyRule::new(Partitioner::Murmur2, 1);
        let mut p = Processor::new(1 << 20, rule, journeys, state, Metrics::new(), 1 << 20)
            .unwrap()
            .with_privacy(PrivacyRules {
                topic: PRIVACY.into(),
                hasher: IdHasher::new(b"k"),
                after,
            });
        p.start_partition(0).unwrap();
        p
    }

    /// Processes `value` keyed `key` at `offset` of `topic`.
    fn feed(p: &mut Processor, topic: &str, offset: i64, key: &str, value: &[u8]) -> Outcome {
        let r = Record {
            topic,
            partition: 0,
            offset,
            key: Some(key.as_bytes()),
            value,
        };
        p.process(&r, &mut Vec::new()).unwrap()
    }

    fn touch(p: &mut Processor, offset: i64, t: &Touchpoint) -> Outcome {
        let bytes = serde_json::to_vec(t).unwrap();
        feed(p, "touch", offset, t.identity().unwrap(), &bytes)
    }

    fn erase(p: &mut Processor, offset: i64, id: &str) -> Outcome {
        let cmd = format!(r#"{{"request_id":"r{offset}","customer_id":"{id}"}}"#);
        feed(p, PRIVACY, offset, id, cmd.as_bytes())
    }

    fn consent(id: &str, at: i64) -> Touchpoint {
        let mut t = tp("g1", id, Channel::Web, EventType::ConsentChanged, at);
        t.attributes.insert("purpose".into(), "all".into());
        t.attributes.insert("granted".into(), "true".into());
        t
    }

    /// The changelog records of the next commit, in order: (key, has value).
    fn changelog(p: &mut Processor) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut batch = StateBatch::default();
        p.erasures(&mut batch, |(_, k, v)| {
            out.push((k.to_vec(), v.is_some()));
            Ok::<_, ()>(())
        })
        .unwrap();
        let changed = std::sync::Mutex::new(Vec::new());
        p.changes(&mut batch, |(_, k, _)| {
            changed.lock().unwrap().push((k.to_vec(), true));
            Ok::<_, ()>(())
        })
        .unwrap();
        out.extend(changed.into_inner().unwrap());
        out.retain(|(k, _)| !k.starts_with(b"\0rapport.w"));
        out
    }

    #[test]
    fn an_erased_customer_is_refused_until_a_consent_starts_them_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(dir.path(), AfterErasure::FreshAfterConsent);
        let t0 = 1_764_000_000_000;
        let view = tp("v1", "c1", Channel::Web, EventType::PageView, t0);
        assert_eq!(touch(&mut p, 0, &view), Outcome::Applied);
        // Committed, so the old profile is in RocksDB until the erasure commits.
        let mut committed = StateBatch::default();
        p.changes(&mut committed, |_| Ok::<_, ()>(())).unwrap();
        p.state().write(&committed).unwrap();
        assert_eq!(erase(&mut p, 0, "c1"), Outcome::Applied);
        let again = tp("v2", "c1", Channel::Web, EventType::PageView, t0 + 1);
        match touch(&mut p, 1, &again) {
            Outcome::Rejected(r) => {
                assert_eq!((r.stage, r.reason.as_str()), (Stage::Privacy, "erased"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(touch(&mut p, 2, &consent("c1", t0 + 2)), Outcome::Applied);
        let log = changelog(&mut p);
        let keys: Vec<(&[u8], bool)> = log.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
        // The tombstone, the suppression added then lifted, then the fresh profile.
        assert_eq!(keys[0], (b"c1".as_slice(), false));
        assert!(keys[1].1 && !keys[2].1, "{keys:?}");
        assert_eq!(keys[3], (b"c1".as_slice(), true));
        let task = &p.tasks[&0];
        assert_eq!(
            task.profiles["c1"].stored.profile.events, 1,
            "a fresh profile"
        );
    }

    #[test]
    fn with_pseudonyms_an_erasure_by_the_clear_id_removes_the_pseudonymous_profile() {
        let dir = tempfile::tempdir().unwrap();
        let ps =
            crate::pseudonym::Pseudonymizer::with_secret(b"0123456789abcdef", &["customer_id"]);
        let stored = ps.profile_id("ann@example.com");
        let mut p =
            processor(dir.path(), AfterErasure::DeadLetter).with_pseudonymizer(Some(Arc::new(ps)));
        let t0 = 1_764_000_000_000;
        let view = tp(
            "v1",
            "ann@example.com",
            Channel::Web,
            EventType::PageView,
            t0,
        );
        assert_eq!(touch(&mut p, 0, &view), Outcome::Applied);
        assert!(p.tasks[&0].profiles.contains_key(stored.as_str()));
        assert_eq!(erase(&mut p, 0, "ann@example.com"), Outcome::Applied);
        assert!(!p.tasks[&0].profiles.contains_key(stored.as_str()));
        let again = tp(
            "v2",
            "ann@example.com",
            Channel::Web,
            EventType::PageView,
            t0 + 1,
        );
        match touch(&mut p, 1, &again) {
            Outcome::Rejected(r) => assert_eq!(r.reason, "erased"),
            other => panic!("a replayed touchpoint is refused: {other:?}"),
        }
    }

    #[test]
    fn by_default_a_consent_does_not_bring_an_erased_customer_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = processor(dir.path(), AfterErasure::DeadLetter);
        assert_eq!(erase(&mut p, 0, "c1"), Outcome::Applied);
        let outcome = touch(&mut p, 0, &consent("c1", 1_764_000_000_000));
        assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
        let bad = feed(&mut p, PRIVACY, 1, "c1", b"{}");
        assert!(matches!(bad, Outcome::Rejected(r) if r.stage == Stage::Privacy));
    }
}
