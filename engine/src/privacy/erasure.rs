//! A partition's erasure work: its suppression list, and what an erasure leaves
//! for the next commit (tombstones, suppression entries, the receipt).

use hashbrown::HashSet;

use crate::state::{StateBatch, StateError, StateStore};

use super::receipt::Receipt;
use super::suppression::{changelog_key, IdHash};

/// One erased profile key: the id and the timer times its index held in RocksDB.
pub type Erased = (String, Vec<i64>);

/// A committed erasure's work left for after the commit: compaction, then the receipt.
#[derive(Debug)]
pub struct Completed {
    /// The partition.
    pub partition: i32,
    /// Its erased profile keys, to compact.
    pub erased: Vec<Erased>,
    /// The receipt, sent once compaction is done.
    pub receipt: Receipt,
}

/// The erasure state of one owned partition.
#[derive(Debug, Default)]
pub struct TaskPrivacy {
    /// Hashes of erased ids: loaded at partition start, checked for every touchpoint.
    pub suppressed: HashSet<IdHash>,
    /// Profile keys erased since the last commit.
    pub tombstones: Vec<Erased>,
    /// Suppression-list changes since the last commit: added at a time, or lifted.
    pub suppression: Vec<(IdHash, Option<i64>)>,
    /// Erasures since the last commit, with their receipts.
    pub done: Vec<Completed>,
}

/// A changelog record of an erasure: partition, key, value (`None`: a tombstone).
pub type ChangelogWrite<'a> = (i32, &'a [u8], Option<&'a [u8]>);

impl TaskPrivacy {
    /// The suppression list of partition `p` as committed in `state`.
    pub fn load(state: &StateStore, p: i32) -> Result<TaskPrivacy, StateError> {
        Ok(TaskPrivacy {
            suppressed: state.suppressed(p)?.into_iter().collect(),
            ..Default::default()
        })
    }

    /// Adds `hash` to the suppression list at `now`.
    pub fn suppress(&mut self, hash: IdHash, now: i64) {
        if self.suppressed.insert(hash) {
            self.suppression.push((hash, Some(now)));
        }
    }

    /// Lifts the suppression of `hash` (re-consent).
    pub fn lift(&mut self, hash: &IdHash) {
        if self.suppressed.remove(hash) {
            self.suppression.push((*hash, None));
        }
    }

    /// Hands the tombstones and suppression changes since the last call to `emit`
    /// and adds them to `batch`; returns the erasures to finish after the commit.
    pub fn flush<E>(
        &mut self,
        p: i32,
        batch: &mut StateBatch,
        emit: &mut impl FnMut(ChangelogWrite<'_>) -> Result<(), E>,
    ) -> Result<Vec<Completed>, E> {
        for (id, timers) in &self.tombstones {
            emit((p, id.as_bytes(), None))?;
            batch.delete_profile(p, id);
            for t in timers {
                batch.delete_timer(p, *t, id);
            }
        }
        self.tombstones.clear();
        for (hash, at) in self.suppression.drain(..) {
            let key = changelog_key(&hash);
            match at {
                Some(at) => {
                    emit((p, &key, Some(&at.to_be_bytes())))?;
                    batch.put_suppressed(p, &hash, at);
                }
                None => {
                    emit((p, &key, None))?;
                    batch.delete_suppressed(p, &hash);
                }
            }
        }
        Ok(std::mem::take(&mut self.done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressing_twice_writes_once_and_lifting_writes_a_removal() {
        let mut t = TaskPrivacy::default();
        t.suppress([1; 32], 5);
        t.suppress([1; 32], 6);
        t.lift(&[1; 32]);
        t.lift(&[2; 32]);
        assert_eq!(t.suppression, vec![([1; 32], Some(5)), ([1; 32], None)]);
        assert!(t.suppressed.is_empty());
        let mut batch = StateBatch::default();
        let mut seen = Vec::new();
        t.flush(3, &mut batch, &mut |(p, k, v): ChangelogWrite<'_>| {
            seen.push((p, k.to_vec(), v.map(<[u8]>::to_vec)));
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].2, None, "the lift is a tombstone");
        assert_eq!(batch.len(), 2);
    }
}
