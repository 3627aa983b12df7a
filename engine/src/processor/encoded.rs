//! The encoded profile cache: the stored encodings of a partition's latest
//! committed profiles, kept after their decoded form left the profile cache.
//!
//! A decoded profile takes several times its stored size (lists with their own
//! allocations, integers widened from varints), so the decoded cache holds few
//! of a large working set, and a profile it misses costs a RocksDB lookup
//! (memtables, then table files) before it is decoded. The encodings a commit
//! writes are kept here too, a few times more of them in the same memory; a
//! profile found here is decoded without asking RocksDB.
//!
//! Only what a commit writes enters, when the commit is cut, so an entry is
//! the newest version of its profile that RocksDB has or is about to have once
//! the commit ends. The decoded cache lets a profile go only after a commit
//! ended, so a profile missing there is in RocksDB as it is here: this cache
//! saves the lookup and never changes what is read. Anything that drops
//! uncommitted work drops the partition's task and this cache with it (a
//! rewind, a revoke); an erasure removes the erased profile's entry.

use std::collections::VecDeque;

use compact_str::CompactString;

/// One partition's encoded profiles, the oldest leaving first once they take
/// more than the partition's share of `state.encoded_cache_mb`.
#[derive(Default)]
pub(crate) struct EncodedCache {
    /// Encoding by customer id, with the sequence number of its insertion.
    entries: hashbrown::HashMap<CompactString, (u64, Box<[u8]>)>,
    /// Ids in insertion order, with the sequence number they were inserted
    /// with: an entry inserted again later leaves when its newest one does.
    order: VecDeque<(CompactString, u64)>,
    next: u64,
    /// Bytes the entries take, counted as their encoding plus [`ENTRY_BYTES`].
    bytes: usize,
}

/// What an entry costs besides its encoding: its table slot (counted twice:
/// tables grow by doubling), its place in the order and the allocation's rounding.
const ENTRY_BYTES: usize = 2 * std::mem::size_of::<(CompactString, (u64, Box<[u8]>))>()
    + std::mem::size_of::<(CompactString, u64)>()
    + 16;

impl EncodedCache {
    /// The committed encoding of profile `id`, if kept.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.entries.get(id).map(|(_, b)| &**b)
    }

    /// Keeps `bytes` as profile `id`'s committed encoding, then lets the
    /// oldest entries go until the cache takes at most `cap` bytes. The
    /// engine hands over the encoding its commit wrote (exactly as long as
    /// the bytes it holds, see [`crate::state::Stored::encode`]), so keeping
    /// it neither allocates nor copies on the engine's thread.
    pub fn insert(&mut self, id: CompactString, bytes: Box<[u8]>, cap: usize) {
        if cap == 0 {
            return;
        }
        let seq = self.next;
        self.next += 1;
        self.bytes += bytes.len() + ENTRY_BYTES;
        let entry = (seq, bytes);
        if let Some((_, old)) = self.entries.insert(id.clone(), entry) {
            self.bytes -= old.len() + ENTRY_BYTES;
        }
        self.order.push_back((id, seq));
        while self.bytes > cap {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(old.as_str())
                .is_some_and(|(s, _)| *s == seq)
            {
                self.remove(&old);
            }
        }
        // Entries inserted again leave stale places in the order; drop them
        // before the order outgrows the entries.
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order
                .retain(|(id, seq)| entries.get(id.as_str()).is_some_and(|(s, _)| s == seq));
        }
    }

    /// Forgets profile `id` (an erasure).
    pub fn remove(&mut self, id: &str) {
        if let Some((_, old)) = self.entries.remove(id) {
            self.bytes -= old.len() + ENTRY_BYTES;
        }
    }

    /// Bytes the entries take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Profiles kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> CompactString {
        CompactString::from(s)
    }

    #[test]
    fn the_oldest_leave_first_and_the_bytes_stay_under_the_cap() {
        let mut c = EncodedCache::default();
        let cap = 10 * (100 + ENTRY_BYTES);
        for i in 0..25 {
            c.insert(id(&format!("c-{i}")), Box::new([i as u8; 100]), cap);
            assert!(c.bytes() <= cap, "{} > {cap}", c.bytes());
        }
        assert_eq!(c.len(), 10);
        assert!(c.get("c-14").is_none());
        assert_eq!(c.get("c-15"), Some(&[15u8; 100][..]));
        assert_eq!(c.get("c-24"), Some(&[24u8; 100][..]));
    }

    #[test]
    fn an_entry_inserted_again_holds_its_newest_encoding_and_place() {
        let mut c = EncodedCache::default();
        let cap = 3 * (10 + ENTRY_BYTES);
        c.insert(id("a"), Box::new([1; 10]), cap);
        c.insert(id("b"), Box::new([2; 10]), cap);
        c.insert(id("a"), Box::new([3; 10]), cap);
        c.insert(id("c"), Box::new([4; 10]), cap);
        assert_eq!(c.bytes(), cap);
        // "a" was inserted again after "b": "b" leaves first.
        c.insert(id("d"), Box::new([5; 10]), cap);
        assert!(c.get("b").is_none());
        assert_eq!(c.get("a"), Some(&[3u8; 10][..]));
        // Then "a", whose newest insertion is now the oldest.
        c.insert(id("e"), Box::new([6; 10]), cap);
        assert!(c.get("a").is_none());
        assert_eq!(c.get("c"), Some(&[4u8; 10][..]));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn removed_entries_free_their_bytes_and_the_order_stays_bounded() {
        let mut c = EncodedCache::default();
        let cap = 1 << 20;
        for round in 0..50 {
            for i in 0..100 {
                c.insert(id(&format!("c-{i}")), Box::new([round as u8; 50]), cap);
            }
        }
        assert_eq!(c.len(), 100);
        assert!(c.order.len() <= 2 * 100 + 1024 + 1);
        c.remove("c-7");
        assert_eq!(c.get("c-7"), None);
        assert_eq!(c.bytes(), 99 * (50 + ENTRY_BYTES));
        assert_eq!(c.get("c-8"), Some(&[49u8; 50][..]));
    }

    #[test]
    fn a_cache_of_no_bytes_keeps_nothing() {
        let mut c = EncodedCache::default();
        c.insert(id("a"), Box::new([1; 10]), 0);
        assert_eq!(c.len(), 0);
        assert_eq!(c.bytes(), 0);
    }
}

/// The encoded cache in the processor: profiles that left the decoded cache
/// come back from it, as they were committed.
#[cfg(test)]
mod in_the_processor {
    use rapport_connectors::simulator::{SimConfig, Simulator};

    use crate::processor::{test_processor, Record};
    use crate::state::StateBatch;

    /// Outcomes and actions of 3000 simulated records of 200 customers, a
    /// commit every 100 records and a decoded cache of a few profiles; with
    /// `encoded` bytes of encoded cache, and the commits' state written to
    /// RocksDB or not.
    fn run(encoded: usize, write_state: bool) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut p = test_processor(dir.path(), 20_000).with_encoded_cache(encoded);
        let state = p.state().clone();
        let mut sim = Simulator::new(SimConfig {
            customers: 200,
            seed: 3,
            malformed_per_mille: 0,
        });
        let mut seen = Vec::new();
        for i in 0..3000 {
            let value = sim.next_record(1_764_000_000_000 + i * 60_000).value;
            let r = Record {
                topic: "touch",
                partition: 0,
                offset: i,
                key: None,
                value: &value,
            };
            let mut actions = Vec::new();
            let outcome = p.process(&r, &mut actions).unwrap();
            seen.push(format!(
                "{i} {outcome:?} {}",
                serde_json::to_string(&actions).unwrap()
            ));
            if i % 100 == 99 {
                let mut batch = StateBatch::default();
                p.changes(&mut batch, |_| Ok::<(), ()>(())).unwrap();
                if write_state {
                    state.write(&batch).unwrap();
                }
                let usage = p.trim_cache();
                assert!(
                    usage.profiles < 50,
                    "the decoded cache holds few ({})",
                    usage.profiles
                );
            }
        }
        seen
    }

    #[test]
    fn evicted_profiles_come_back_from_the_encoded_cache_as_committed() {
        let from_rocksdb = run(0, true);
        assert!(
            from_rocksdb
                .iter()
                .filter(|s| s.contains("action_id"))
                .count()
                > 30,
            "the stream triggers journeys that depend on history"
        );
        // With the state never written, only the encoded cache has the
        // evicted profiles: the outcomes are the same only if it serves them.
        let from_memory = run(1 << 30, false);
        assert_eq!(from_rocksdb, from_memory);
        // And it must: without either, profiles start afresh after eviction.
        assert_ne!(from_rocksdb, run(0, false));
    }
}
