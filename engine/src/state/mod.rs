//! Local state in RocksDB, scoped by input partition.
//!
//! Every key starts with a one-byte kind and the partition number, so one task's
//! profiles, timers and offsets can be read, restored or dropped on their own.
//! A commit interval's changes go in one `WriteBatch`: profiles, the timer index,
//! the source offsets they reflect and the changelog checkpoint, so the store is
//! always a consistent snapshot.

use std::collections::HashMap;
use std::path::Path;

use rapport_model::profile::DecodeError;
use rapport_model::Profile;
use rocksdb::{
    BlockBasedOptions, Cache, Direction, IteratorMode, Options, WriteBatch, WriteBufferManager,
    WriteOptions, DB,
};

use crate::config::StateConfig;

mod batch;
mod stored;

pub use batch::StateBatch;
pub use stored::{topic_hash, Sources, Stored};

const PROFILE: u8 = b'p';
const TIMER: u8 = b't';
const OFFSET: u8 = b'o';
const CHECKPOINT: u8 = b'c';
const WATERMARK: u8 = b'w';
/// Suppression-list entries: keyed hashes of erased ids (see `crate::privacy`).
const SUPPRESSED: u8 = b's';
/// A state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// RocksDB refused.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A stored profile is unreadable.
    #[error("stored profile {id:?}: {source}")]
    Profile {
        /// Profile id.
        id: String,
        /// Why.
        source: DecodeError,
    },
    /// A stored record's envelope is malformed.
    #[error("malformed stored record: {0}")]
    Malformed(&'static str),
}

fn key(kind: u8, partition: i32, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + rest.len());
    key_into(&mut k, kind, partition, rest);
    k
}

/// Appends the key of `rest` of `kind` in `partition` to `k`.
fn key_into(k: &mut Vec<u8>, kind: u8, partition: i32, rest: &[u8]) {
    k.push(kind);
    k.extend_from_slice(&(partition as u32).to_be_bytes());
    k.extend_from_slice(rest);
}

fn timer_key(partition: i32, fire_at: i64, id: &str) -> Vec<u8> {
    // Sign-flipped big-endian sorts signed times correctly.
    let t = ((fire_at as u64) ^ (1 << 63)).to_be_bytes();
    key(TIMER, partition, &[&t[..], id.as_bytes()].concat())
}

/// Raw key suffixes and values of one kind and partition.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// What [`StateStore::usage`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Bytes in the block cache (shared by all partitions).
    pub block_cache_bytes: u64,
    /// Bytes in memtables.
    pub memtable_bytes: u64,
    /// Estimated bytes compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
}

/// The RocksDB-backed store.
pub struct StateStore {
    db: DB,
    write: WriteOptions,
}

impl StateStore {
    /// Opens (or creates) the store with memory bounded by configuration: one
    /// shared block cache with the memtables charged to it. The write-ahead log is
    /// off: the changelog topic is the durable log.
    pub fn open(cfg: &StateConfig) -> Result<Self, StateError> {
        Self::open_path(&cfg.path, cfg)
    }

    /// Opens the store at `path` with the memory limits of `cfg`.
    pub fn open_path(path: &Path, cfg: &StateConfig) -> Result<Self, StateError> {
        let cache = Cache::new_lru_cache((cfg.block_cache_mb + cfg.write_buffer_mb) << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        let mut opts = Options::default();
        // A profile the cache misses is looked up in the memtables first, and
        // their skip lists were a third of a lookup's cost (perf, 1M events of
        // 100k customers). A bloom filter over whole keys, 5% of a memtable's
        // size, answers "not here" for the profiles not written lately.
        opts.set_memtable_whole_key_filtering(true);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.create_if_missing(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager_with_cache(
            cfg.write_buffer_mb << 20,
            false,
            cache,
        ));
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        let mut write = WriteOptions::default();
        write.disable_wal(cfg.disable_wal);
        Ok(StateStore {
            db: DB::open(&opts, path)?,
            write,
        })
    }

    /// The stored profile `id` of `partition`.
    pub fn get(&self, partition: i32, id: &str) -> Result<Option<Stored>, StateError> {
        Ok(self.get_sized(partition, id)?.map(|(s, _)| s))
    }

    /// The stored profile `id` of `partition` and the length of its encoding,
    /// which the profile cache sizes it by.
    pub fn get_sized(
        &self,
        partition: i32,
        id: &str,
    ) -> Result<Option<(Stored, usize)>, StateError> {
        match self.db.get_pinned(key(PROFILE, partition, id.as_bytes()))? {
            None => Ok(None),
            Some(bytes) => Stored::decode(id, partition, &bytes).map(|s| Some((s, bytes.len()))),
        }
    }

    /// The committed profile `id`, whichever partition holds it (for the profile API).
    pub fn find_profile(&self, id: &str) -> Result<Option<Profile>, StateError> {
        Ok(self
            .find(id)?
            .filter(|s| s.link().is_none())
            .map(|s| s.profile))
    }

    /// The stored record of `id` on whichever partition holds it: a profile, or
    /// the link left by an anonymous id whose history moved to a customer.
    pub fn find(&self, id: &str) -> Result<Option<Stored>, StateError> {
        for p in self.partitions()? {
            if let Some(s) = self.get(p, id)? {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// Partitions that have any profile stored.
    pub fn partitions(&self) -> Result<Vec<i32>, StateError> {
        let mut out = Vec::new();
        let mut next = key(PROFILE, 0, &[]);
        loop {
            let mut it = self
                .db
                .iterator(IteratorMode::From(&next, Direction::Forward));
            match it.next() {
                Some(Ok((k, _))) if k.first() == Some(&PROFILE) && k.len() >= 5 => {
                    let p = u32::from_be_bytes(k[1..5].try_into().unwrap_or_default());
                    out.push(p as i32);
                    if p == u32::MAX {
                        break;
                    }
                    next = key(PROFILE, (p + 1) as i32, &[]);
                }
                Some(Err(e)) => return Err(e.into()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Every profile of `partition`.
    pub fn profiles(&self, partition: i32) -> Result<Vec<(String, Stored)>, StateError> {
        let mut out = Vec::new();
        for (k, v) in self.scan(PROFILE, partition)? {
            let id = String::from_utf8_lossy(&k).into_owned();
            let s = Stored::decode(&id, partition, &v)?;
            out.push((id, s));
        }
        Ok(out)
    }

    /// The pending timers of `partition`, as `(fire_at, customer id)`.
    pub fn timers(&self, partition: i32) -> Result<Vec<(i64, String)>, StateError> {
        self.scan(TIMER, partition)?
            .into_iter()
            .map(|(k, _)| {
                if k.len() < 8 {
                    return Err(StateError::Malformed("timer key"));
                }
                let (t, id) = k.split_at(8);
                let t = (u64::from_be_bytes(t.try_into().unwrap_or_default()) ^ (1 << 63)) as i64;
                Ok((t, String::from_utf8_lossy(id).into_owned()))
            })
            .collect()
    }

    /// Applied source offsets of `partition`, by topic.
    pub fn offsets(&self, partition: i32) -> Result<HashMap<String, i64>, StateError> {
        self.scan(OFFSET, partition)?
            .into_iter()
            .map(|(k, v)| Ok((String::from_utf8_lossy(&k).into_owned(), be_i64(&v)?)))
            .collect()
    }

    /// The next changelog offset to restore `partition` from.
    pub fn checkpoint(&self, partition: i32) -> Result<Option<i64>, StateError> {
        self.db
            .get_pinned(key(CHECKPOINT, partition, &[]))?
            .map(|v| be_i64(&v))
            .transpose()
    }

    /// The event-time watermark of `partition`.
    pub fn watermark(&self, partition: i32) -> Result<Option<i64>, StateError> {
        self.db
            .get_pinned(key(WATERMARK, partition, &[]))?
            .map(|v| be_i64(&v))
            .transpose()
    }

    /// The suppression list of `partition`: keyed hashes of erased ids.
    pub fn suppressed(&self, partition: i32) -> Result<Vec<[u8; 32]>, StateError> {
        self.scan(SUPPRESSED, partition)?
            .into_iter()
            .map(|(k, _)| {
                k.as_slice()
                    .try_into()
                    .map_err(|_| StateError::Malformed("suppression key"))
            })
            .collect()
    }

    /// Compacts the ranges that held erased profiles and their timer index
    /// entries, so the deleted values do not linger in RocksDB's files.
    pub fn compact_erased(&self, partition: i32, erased: &[(String, Vec<i64>)]) {
        for (id, timers) in erased {
            let k = key(PROFILE, partition, id.as_bytes());
            self.db.compact_range(Some(&k), Some(&k));
            for t in timers {
                let k = timer_key(partition, *t, id);
                self.db.compact_range(Some(&k), Some(&k));
            }
        }
    }

    /// Writes a batch atomically.
    pub fn write(&self, batch: &StateBatch) -> Result<(), StateError> {
        self.db.write_opt(batch.to_write_batch(), &self.write)?;
        Ok(())
    }

    /// Deletes everything stored for `partition`.
    pub fn drop_partition(&self, partition: i32) -> Result<(), StateError> {
        let mut b = WriteBatch::default();
        for kind in [PROFILE, TIMER, OFFSET, CHECKPOINT, WATERMARK, SUPPRESSED] {
            b.delete_range(
                key(kind, partition, &[]),
                key(kind, partition.wrapping_add(1), &[]),
            );
        }
        self.db.write(b)?;
        Ok(())
    }

    /// RocksDB's memory and compaction figures, for metrics: block cache in use,
    /// memtables, and bytes waiting for compaction.
    pub fn usage(&self) -> StoreUsage {
        let int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        StoreUsage {
            block_cache_bytes: int("rocksdb.block-cache-usage"),
            memtable_bytes: int("rocksdb.cur-size-all-mem-tables"),
            pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes"),
        }
    }

    /// Makes everything written so far durable on disk (used at shutdown, since the WAL is off).
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush()?;
        Ok(())
    }

    fn scan(&self, kind: u8, partition: i32) -> Result<Entries, StateError> {
        let prefix = key(kind, partition, &[]);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn be_i64(v: &[u8]) -> Result<i64, StateError> {
    Ok(i64::from_be_bytes(
        v.try_into()
            .map_err(|_| StateError::Malformed("offset value"))?,
    ))
}

/// A small store in `dir`, for tests.
#[cfg(test)]
pub(crate) fn test_store(dir: &Path) -> StateStore {
    StateStore::open(&StateConfig {
        path: dir.to_owned(),
        block_cache_mb: 8,
        write_buffer_mb: 8,
        ..Default::default()
    })
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rapport_model::testing::tp;
    use rapport_model::{Channel, EventType};

    use crate::state::test_store as store;

    #[test]
    fn partitions_are_separate_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Profile::new("c-1");
        p.apply(&tp(
            "e1",
            "c-1",
            Channel::Web,
            EventType::PageView,
            1_764_000_000_000,
        ));
        let mut stored = Stored {
            sources: Sources::new(),
            profile: p,
            ..Default::default()
        };
        stored.advance(topic_hash("touch"), 3, 41);
        {
            let s = store(dir.path());
            let mut b = StateBatch::default();
            b.put_profile(3, "c-1", &stored.encode());
            b.put_timer(3, -5, "c-1");
            b.put_timer(3, 1_000, "c-9");
            b.set_offset(3, "touch", 42);
            b.set_checkpoint(3, 7);
            b.put_profile(4, "c-2", &stored.encode());
            s.write(&b).unwrap();
            s.flush().unwrap();
        }
        let s = store(dir.path());
        assert_eq!(s.get(3, "c-1").unwrap(), Some(stored.clone()));
        assert_eq!(s.get(4, "c-1").unwrap(), None);
        assert_eq!(
            s.timers(3).unwrap(),
            vec![(-5, "c-1".to_owned()), (1_000, "c-9".to_owned())]
        );
        assert_eq!(
            s.offsets(3).unwrap(),
            HashMap::from([("touch".to_owned(), 42)])
        );
        assert_eq!(s.checkpoint(3).unwrap(), Some(7));
        assert_eq!(s.partitions().unwrap(), vec![3, 4]);
        assert!(stored.reflects(topic_hash("touch"), 3, 41));
        assert!(!stored.reflects(topic_hash("touch"), 3, 42));
        assert!(!stored.reflects(topic_hash("touch"), 2, 0));
        assert!(!stored.reflects(topic_hash("other"), 3, 0));

        s.drop_partition(3).unwrap();
        assert_eq!(s.get(3, "c-1").unwrap(), None);
        assert!(s.timers(3).unwrap().is_empty());
        assert_eq!(s.checkpoint(3).unwrap(), None);
        assert_eq!(s.find_profile("c-2").unwrap(), Some(stored.profile));
    }

    #[test]
    fn suppression_entries_are_per_partition_and_erased_profiles_compact_away() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let stored = Stored {
            sources: Sources::new(),
            profile: Profile::new("c-1"),
            ..Default::default()
        };
        let mut b = StateBatch::default();
        b.put_profile(1, "c-1", &stored.encode());
        b.put_timer(1, 50, "c-1");
        b.put_suppressed(1, &[7; 32], 5);
        b.put_suppressed(2, &[8; 32], 5);
        s.write(&b).unwrap();
        assert_eq!(s.suppressed(1).unwrap(), vec![[7; 32]]);
        let mut b = StateBatch::default();
        b.delete_profile(1, "c-1");
        b.delete_timer(1, 50, "c-1");
        b.delete_suppressed(2, &[8; 32]);
        s.write(&b).unwrap();
        s.compact_erased(1, &[("c-1".to_owned(), vec![50])]);
        assert_eq!(s.get(1, "c-1").unwrap(), None);
        assert!(s.timers(1).unwrap().is_empty());
        assert!(s.suppressed(2).unwrap().is_empty());
        s.drop_partition(1).unwrap();
        assert!(s.suppressed(1).unwrap().is_empty());
    }

    /// A batch is written in key order; of two changes to one key the later
    /// one wins, whichever keys come between them.
    #[test]
    fn the_later_change_to_a_key_wins_in_a_sorted_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let stored = |id: &str| Stored {
            sources: Sources::new(),
            profile: Profile::new(id),
            ..Default::default()
        };
        let mut b = StateBatch::default();
        b.put_profile(1, "c-kept", &stored("c-kept").encode());
        b.put_profile(1, "c-9", &stored("c-9").encode());
        b.put_profile(1, "c-erased", &stored("c-erased").encode());
        s.write(&b).unwrap();
        let mut b = StateBatch::default();
        // Erased, then started afresh: the fresh profile stays.
        b.delete_profile(1, "c-kept");
        b.put_profile(1, "c-0", &stored("c-0").encode());
        b.put_profile_encoded(1, "c-kept".into(), stored("c-kept").encode(), 0);
        // Written, then erased in the same commit: gone.
        b.put_profile_encoded(1, "c-erased".into(), stored("c-erased").encode(), 0);
        b.put_profile(0, "c-erased", &stored("c-erased").encode());
        b.delete_profile(1, "c-erased");
        b.put_timer(1, 9, "c-0");
        b.delete_timer(1, 9, "c-0");
        b.delete_timer(1, 8, "c-0");
        b.put_timer(1, 8, "c-0");
        s.write(&b).unwrap();
        assert_eq!(s.get(1, "c-kept").unwrap(), Some(stored("c-kept")));
        assert_eq!(s.get(1, "c-erased").unwrap(), None);
        assert_eq!(s.get(0, "c-erased").unwrap(), Some(stored("c-erased")));
        assert_eq!(s.get(1, "c-0").unwrap(), Some(stored("c-0")));
        assert_eq!(s.get(1, "c-9").unwrap(), Some(stored("c-9")));
        assert_eq!(s.timers(1).unwrap(), vec![(8, "c-0".to_owned())]);
    }
}
