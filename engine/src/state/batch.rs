//! A commit's changes to the store, kept in order and written as one RocksDB
//! batch.

use std::borrow::Cow;

use compact_str::CompactString;
use rocksdb::WriteBatch;

use super::{key, key_into, timer_key, CHECKPOINT, OFFSET, PROFILE, SUPPRESSED, WATERMARK};

/// Changes to write atomically, in the order they were made (a later change
/// to a key wins).
///
/// The changes are kept as owned values and turned into one RocksDB batch only
/// when written: building it (copying every profile into one growing buffer)
/// took a sixth of the engine loop's time at commits, and the live engine
/// writes from its commit thread, so the loop only moves the encoded profiles
/// in here.
#[derive(Default)]
pub struct StateBatch {
    ops: Vec<Op>,
    /// Bytes of every key and value, to size the RocksDB batch once.
    bytes: usize,
}

/// A change as written: its key, and its value (none for a delete).
type KeyedChange<'a> = (Cow<'a, [u8]>, Option<&'a [u8]>);

/// One change of a [`StateBatch`].
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// A profile's stored encoding, keyed when written, and its decoded
    /// memory as the caller counts it.
    Profile(i32, CompactString, Vec<u8>, u32),
}

impl StateBatch {
    fn push(&mut self, op: Op) {
        self.bytes += match &op {
            Op::Put(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
            Op::Profile(_, id, v, _) => 5 + id.len() + v.len(),
        } + 16;
        self.ops.push(op);
    }

    /// Stores a profile of `partition`.
    pub fn put_profile(&mut self, partition: i32, id: &str, encoded: &[u8]) {
        self.push(Op::Put(
            key(PROFILE, partition, id.as_bytes()),
            encoded.to_vec(),
        ));
    }

    /// Stores a profile of `partition` from its encoding, without copying it.
    /// `memory` is not written: it is handed back with the encoding by
    /// [`StateBatch::encoded_profiles`] (the profile cache's estimate of the
    /// decoded profile, made while it was encoded).
    pub fn put_profile_encoded(
        &mut self,
        partition: i32,
        id: CompactString,
        encoded: Vec<u8>,
        memory: u32,
    ) {
        self.push(Op::Profile(partition, id, encoded, memory));
    }

    /// Deletes a profile of `partition`.
    pub fn delete_profile(&mut self, partition: i32, id: &str) {
        self.push(Op::Delete(key(PROFILE, partition, id.as_bytes())));
    }

    /// Indexes a pending timer of customer `id`.
    pub fn put_timer(&mut self, partition: i32, fire_at: i64, id: &str) {
        self.push(Op::Put(timer_key(partition, fire_at, id), Vec::new()));
    }

    /// Removes a timer from the index.
    pub fn delete_timer(&mut self, partition: i32, fire_at: i64, id: &str) {
        self.push(Op::Delete(timer_key(partition, fire_at, id)));
    }

    /// Records that `topic`'s `partition` is applied up to (excluding) `next`.
    pub fn set_offset(&mut self, partition: i32, topic: &str, next: i64) {
        self.put_i64(key(OFFSET, partition, topic.as_bytes()), next);
    }

    /// Records the next changelog offset to restore from.
    pub fn set_checkpoint(&mut self, partition: i32, next: i64) {
        self.put_i64(key(CHECKPOINT, partition, &[]), next);
    }

    /// Records the partition's event-time watermark.
    pub fn set_watermark(&mut self, partition: i32, at: i64) {
        self.put_i64(key(WATERMARK, partition, &[]), at);
    }

    /// Adds the keyed hash of an erased id to `partition`'s suppression list.
    pub fn put_suppressed(&mut self, partition: i32, hash: &[u8; 32], erased_at: i64) {
        self.put_i64(key(SUPPRESSED, partition, hash), erased_at);
    }

    /// Lifts a suppression (re-consent after erasure).
    pub fn delete_suppressed(&mut self, partition: i32, hash: &[u8; 32]) {
        self.push(Op::Delete(key(SUPPRESSED, partition, hash)));
    }

    fn put_i64(&mut self, key: Vec<u8>, value: i64) {
        self.push(Op::Put(key, value.to_be_bytes().to_vec()));
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The RocksDB batch, sized once, its changes in key order: RocksDB inserts
    /// a batch into its memtable one key after the other, and a key just after
    /// the previous one is found from where that one went instead of from the
    /// top of the memtable's skip list (with a commit's profiles in the order
    /// they changed, the search took two fifths of the commit thread). The sort
    /// is stable, so of two changes to one key the later still wins.
    pub(super) fn to_write_batch(&self) -> WriteBatch {
        let mut b = WriteBatch::with_capacity_bytes(self.bytes + 64);
        let mut changes: Vec<KeyedChange<'_>> = self
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => (Cow::Borrowed(key.as_slice()), Some(value.as_slice())),
                Op::Delete(key) => (Cow::Borrowed(key.as_slice()), None),
                Op::Profile(partition, id, value, _) => {
                    let mut k = Vec::with_capacity(5 + id.len());
                    key_into(&mut k, PROFILE, *partition, id.as_bytes());
                    (Cow::Owned(k), Some(value.as_slice()))
                }
            })
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in changes {
            match value {
                Some(v) => b.put(key, v),
                None => b.delete(key),
            }
        }
        b
    }

    /// Adds `other`'s changes after this batch's, in their order.
    pub fn append(&mut self, other: StateBatch) {
        self.bytes += other.bytes;
        self.ops.extend(other.ops);
    }

    /// The profiles stored from their encodings
    /// ([`StateBatch::put_profile_encoded`]): partition, id, encoding and
    /// the memory given with it.
    pub fn encoded_profiles(&self) -> impl Iterator<Item = (i32, &str, &[u8], u32)> {
        self.ops.iter().filter_map(|op| match op {
            Op::Profile(p, id, v, m) => Some((*p, id.as_str(), v.as_slice(), *m)),
            _ => None,
        })
    }

    /// [`StateBatch::encoded_profiles`], moved out of the written batch.
    pub fn into_encoded_profiles(self) -> impl Iterator<Item = (i32, CompactString, Vec<u8>, u32)> {
        self.ops.into_iter().filter_map(|op| match op {
            Op::Profile(p, id, v, m) => Some((p, id, v, m)),
            _ => None,
        })
    }
}
